/**
 * Promoting a checkpoint of a completed job, and checkpoint retention
 * (ADR 0008), on the real database and object store. Each job is set up as a
 * finished one would be (the publish step's real upload and registration, the
 * attempt record with its checkpoints, their objects), without training.
 *
 * What must hold: after `replace`, the platform's own lookup
 * (test/platform/lora-resolution.ts) turns the job's trigger word into a tag
 * whose file holds checkpoint N's bytes, and nothing else changed (points,
 * other models, the job document); `version` registers a second model with
 * its own trigger word; repeats change nothing and record once; refusals
 * change nothing; retention deletes exactly what no model uses.
 */
import 'reflect-metadata';
import { mkdir, mkdtemp, writeFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Readable } from 'node:stream';
import { execFile } from 'node:child_process';
import { promisify } from 'node:util';
import { ObjectId } from 'mongodb';
import { attemptKey, CheckpointPromotionRepository, CheckpointRetentionRepository, LoraModelRepository, type CheckpointRecord, type TrainingAttemptDoc } from '@stationthis/db';
import { checkpointLoraKey, checkpointSampleKey, ObjectStorage, resumeStateKey } from '@stationthis/storage';
import { getRecipe, sanitizeOutputName, sanitizeTriggerWord } from '@stationthis/recipes';
import { CREDIT_LEDGER_COLLECTION, LOCKS_COLLECTION, MOVEMENTS_COLLECTION } from '@stationthis/points';
import { createLogger } from '../src/observability/logger';
import { PublishStep, type PublishFiles } from '../src/pipeline/steps/publish-step';
import { CheckpointPromotion, PromotionRefused } from '../src/checkpoints/checkpoint-promotion';
import { CheckpointRetention } from '../src/checkpoints/checkpoint-retention';
import { WORKER_CONFIG, ROOT_LOGGER } from '../src/tokens';
import { TrainingWorker } from '../src/training-worker';
import { buildTriggerMap, comfyDeployUpload, publicLoraRecords, resolveLoraTriggers } from './platform/lora-resolution';
import { createHarness, REPO_ROOT, type Harness } from './harness';

/** The built CLI (`nx build training-worker`); TRAINING_WORKER_CLI points elsewhere, e.g. at a build outside the tree. */
const CLI = process.env.TRAINING_WORKER_CLI ?? join(REPO_ROOT, 'apps/training-worker/dist/cli/cli.js');
const run = promisify(execFile);

let h: Harness;
let dir: string;
let storage: ObjectStorage;
let models: LoraModelRepository;
let promotion: CheckpointPromotion;
let retention: CheckpointRetention;
const jobIds: string[] = [];
const DAY = 24 * 3_600_000;
const LEASE = 'lease-1';

beforeAll(async () => {
  h = await createHarness('promote');
  storage = h.app.container.resolve(ObjectStorage);
  models = h.app.container.resolve(LoraModelRepository);
  promotion = h.app.container.resolve(CheckpointPromotion);
  const config = h.app.container.resolve(WORKER_CONFIG);
  // Every record of this suite in one pass; 14 days after completion, 24 h after a promotion (the defaults).
  expect(config.checkpointRetention).toEqual({ afterCompletionMs: 14 * DAY, afterPromotionMs: DAY, batch: 10 });
  retention = new CheckpointRetention({ ...config, checkpointRetention: { ...config.checkpointRetention, batch: 1000 } }, h.app.container.resolve(ROOT_LOGGER), h.app.container.resolve(CheckpointRetentionRepository), storage, h.app.container.resolve(CheckpointPromotionRepository));
  dir = await mkdtemp(join(tmpdir(), 'promote-'));
}, 60_000);

afterAll(async () => {
  for (const id of jobIds) {
    await storage.deletePrefix('models', `training-jobs/${id}/`).catch(() => undefined);
    await storage.deletePrefix('uploads', `training-state/${id}/`).catch(() => undefined);
  }
  for (const key of await storage.listKeys('models', 'loras/').catch(() => [] as string[])) {
    if (ownKeys.has(key)) await storage.deleteObject('models', key).catch(() => undefined);
  }
  await h?.close();
  await rm(dir, { recursive: true, force: true });
});

const ownKeys = new Set<string>();
const weights = (jobId: string, step: number | 'final') => Buffer.from(`weights of job ${jobId} at ${step === 'final' ? 'the end' : `step ${step}`}`);

interface FinishedJob {
  jobId: string;
  owner: string;
  wallet: string;
  slug: string;
  trigger: string;
  modelId: ObjectId;
  checkpoints: CheckpointRecord[];
  stateKeys: string[];
}

/**
 * A COMPLETED, settled job trained by `recipeId` with checkpoints at `steps`
 * (total 30): the final LoRA published and registered by the real publish
 * step, the checkpoints' objects and the attempt record as the worker writes them.
 */
async function finishedJob(rawTrigger: string, steps = [10, 20], recipeId = 'flux-lora'): Promise<FinishedJob> {
  const { owner, wallet } = await h.seedAccount(1000);
  const jobId = new ObjectId().toHexString();
  jobIds.push(jobId);
  const trigger = sanitizeTriggerWord(rawTrigger);
  const recipe = getRecipe(recipeId);
  const jobDir = join(dir, jobId);
  await mkdir(jobDir, { recursive: true });
  const files: PublishFiles = { loraPath: join(jobDir, 'out.safetensors'), outputDir: jobDir, logFile: join(jobDir, 'engine.log'), jobDir };
  await writeFile(files.loraPath, weights(jobId, 'final'));
  await writeFile(files.logFile, 'log\n');
  await writeFile(join(jobDir, 'job-spec.json'), '{}');
  const datasetId = new ObjectId().toHexString();
  await h.db.collection('trainingJobs').insertOne({
    _id: new ObjectId(jobId), userId: owner, ownerAccountId: owner, walletAddress: wallet, name: `${rawTrigger} model`, datasetId, modelType: recipe.family, baseModel: recipe.baseModel,
    triggerWord: trigger, environment: 'development', status: 'COMPLETED', progress: 100, currentStep: 30, totalSteps: 30, currentLoss: 0.05, retryCount: 0,
    createdAt: new Date(), updatedAt: new Date(), completedAt: new Date(),
  });

  // The publish step's own upload and registration (as in lora-resolution.int.spec.ts).
  const state: Record<string, unknown> = {};
  const ctx = { jobId, lease: { jobId, attemptId: LEASE, workerId: 'w1' }, log: createLogger('silent') };
  const writer = { setState: async (patch: Record<string, unknown>) => void Object.assign(state, patch) };
  const ref = { jobId, platformAttempt: 0, owner: LEASE };
  const a = { ctx, ref, writer, request: { jobId, datasetId, ownerAccountId: owner, totalSteps: 30, currentLoss: 0.05 }, state } as never as Parameters<PublishStep['upload']>[0];
  const p = { recipe, parameters: { steps: 30 }, triggerWord: trigger, outputName: sanitizeOutputName(`${rawTrigger} model`), payer: { masterAccountId: owner, walletAddress: wallet } } as never as Parameters<PublishStep['upload']>[1];
  const publish = h.app.container.resolve(PublishStep);
  await publish.upload(a, p, files);
  await publish.register(a, p);
  const slug = String(state['slug']);
  ownKeys.add(`loras/${slug}.safetensors`);
  for (const s of steps) ownKeys.add(`loras/${slug}-s${s}.safetensors`).add(`loras/${slug}-v${s}.safetensors`);
  const modelId = new ObjectId(String(state['loraModelId']));
  await h.db.collection('trainingJobs').updateOne({ _id: new ObjectId(jobId) }, { $set: { loraModelId: modelId, modelRepoUrl: (state['upload'] as { loraUrl: string }).loraUrl } });

  const checkpoints: CheckpointRecord[] = [];
  for (const step of steps) {
    const loraKey = checkpointLoraKey(jobId, 0, step, LEASE);
    const sampleKey = checkpointSampleKey(jobId, 0, step, LEASE, 'sample-0.png');
    const body = weights(jobId, step);
    await storage.putObject('models', loraKey, body);
    await storage.putObject('models', sampleKey, Buffer.from(`sample at ${step}`), { contentType: 'image/png' });
    checkpoints.push({ step, loss: 0.3 - step / 100, loraKey, loraUrl: storage.publicUrl('models', loraKey), sha256: `sha256-of-${step}`, autov2: `av-${step}`, bytes: body.length, sampleKeys: [sampleKey], sampleUrls: [storage.publicUrl('models', sampleKey)], storedAt: new Date() });
  }
  // The newest engine state (recorded) and one a stale worker uploaded but could not record.
  const stateKeys = [resumeStateKey(jobId, 0, 20, LEASE), resumeStateKey(jobId, 0, 25, 'lease-0')];
  for (const key of stateKeys) await storage.putObject('uploads', key, Buffer.from('engine state'));
  const record: TrainingAttemptDoc = {
    _id: attemptKey(jobId, 0), jobId, platformAttempt: 0, owner: LEASE, ownerClaimSeq: 1, baseAttempts: 0, open: false, settledAt: new Date(),
    state: {
      ...(state as object), charged: true, completedWrittenAt: new Date(), trainSeconds: 60, checkpoints,
      resumeState: { step: 20, key: stateKeys[0], bytes: 12, sha256: 's', stateDir: 'state', engine: 'flux-lora@1#img', uploadedBy: LEASE, storedAt: new Date() },
    },
    createdAt: new Date(), updatedAt: new Date(),
  };
  await h.db.collection<TrainingAttemptDoc>('trainingJobAttempts').insertOne(record);
  // The summary the worker mirrors on the job document for the platform.
  const summary = checkpoints.map((c) => ({ step: c.step, loss: c.loss, loraUrl: c.loraUrl, sampleUrls: c.sampleUrls }));
  await h.db.collection('trainingJobs').updateOne({ _id: new ObjectId(jobId) }, { $set: { checkpoints: summary } });
  return { jobId, owner, wallet, slug, trigger, modelId, checkpoints, stateKeys };
}

/** What the platform does with a prompt naming `word` for a FLUX tool: the tag, and the bytes of the file ComfyUI loads for it. */
async function platformLoads(word: string): Promise<{ slug: string; bytes: string; warnings: string[] } | null> {
  const r = resolveLoraTriggers(`a photo of ${word}`, null, 'FLUX', buildTriggerMap(await publicLoraRecords(h.db)));
  if (r.appliedLoras.length === 0) return null;
  expect(r.appliedLoras).toHaveLength(1);
  const slug = r.appliedLoras[0].slug;
  const model = await models.findBySlug(slug);
  const upload = comfyDeployUpload(model as never);
  if ('error' in upload) throw new Error(upload.error);
  expect(upload.filename).toBe(`${slug}.safetensors`);
  // ComfyUI loads loras/<slug>.safetensors, pulled from the link: both must be the same object.
  const own = storage.parseOwnUrl(upload.downloadLink);
  expect(own).toEqual({ bucketAlias: 'models', key: `loras/${slug}.safetensors` });
  const { body } = await storage.getObjectStream('models', own!.key);
  return { slug, bytes: (await readAll(body)).toString(), warnings: r.warnings };
}

async function readAll(body: Readable): Promise<Buffer> {
  const chunks: Buffer[] = [];
  for await (const c of body) chunks.push(Buffer.from(c as Buffer));
  return Buffer.concat(chunks);
}

/** Everything that holds points, and the job document: none of it may change. */
async function untouched(jobId: string) {
  const dump = async (name: string) => JSON.stringify(await h.db.collection(name).find({}).sort({ _id: 1 }).toArray());
  return JSON.stringify([await dump(CREDIT_LEDGER_COLLECTION), await dump(MOVEMENTS_COLLECTION), await dump(LOCKS_COLLECTION), await h.db.collection('trainingJobs').findOne({ _id: new ObjectId(jobId) })]);
}

async function recordOf(jobId: string) {
  return (await h.db.collection<TrainingAttemptDoc & { checkpointRetention?: Record<string, unknown> }>('trainingJobAttempts').findOne({ _id: attemptKey(jobId, 0) }))!;
}

describe('promote --step N (replace)', () => {
  it("the job's trigger word now loads checkpoint N's bytes; points, other models and the job are unchanged; promoting the final restores it", async () => {
    const job = await finishedJob('replacecat');
    const other = await finishedJob('othercat');
    const otherModel = await models.findById(other.modelId);
    expect(await platformLoads(job.trigger)).toMatchObject({ slug: job.slug, bytes: weights(job.jobId, 'final').toString() });
    const before = await untouched(job.jobId);
    const balance = await h.balance(job.owner, job.wallet);

    const r = await promotion.promote({ jobId: job.jobId, step: 10, mode: 'replace', promotedBy: 'test' });
    expect(r).toMatchObject({ step: 10, mode: 'replace', final: false, slug: `${job.slug}-s10`, triggerWord: job.trigger, loraModelId: String(job.modelId), changed: true, recorded: true });
    const loads = await platformLoads(job.trigger);
    expect(loads).toEqual({ slug: `${job.slug}-s10`, bytes: weights(job.jobId, 10).toString(), warnings: [] });
    const model = (await models.findById(job.modelId))!;
    expect(model).toMatchObject({ triggerWords: [job.trigger], previewImages: job.checkpoints[0].sampleUrls, sizeBytes: job.checkpoints[0].bytes, hashes: { sha256: job.checkpoints[0].sha256 }, promotedCheckpoint: { step: 10 } });
    expect(await storage.headObject('models', `loras/${job.slug}-s10.safetensors`)).toMatchObject({ cacheControl: 'public, max-age=31536000, immutable', metadata: { 'training-job-id': job.jobId, 'checkpoint-step': '10' } });

    // Nothing else: no points moved, the job document as it was, the other job's model as it was, the final file kept.
    expect(await untouched(job.jobId)).toBe(before);
    expect(await h.balance(job.owner, job.wallet)).toBe(balance);
    expect(await models.findById(other.modelId)).toEqual(otherModel);
    expect(await platformLoads(other.trigger)).toMatchObject({ slug: other.slug, bytes: weights(other.jobId, 'final').toString() });
    expect((await readAll((await storage.getObjectStream('models', `loras/${job.slug}.safetensors`)).body)).toString()).toBe(weights(job.jobId, 'final').toString());
    expect((await recordOf(job.jobId)).state.promotions).toEqual([{ step: 10, mode: 'replace', loraModelId: String(job.modelId), loraUrl: storage.publicUrl('models', `loras/${job.slug}-s10.safetensors`), promotedAt: expect.any(Date), promotedBy: 'test' }]);

    // Idempotent: the same promotion again changes nothing and records nothing.
    const modelAfter = await models.findById(job.modelId);
    expect(await promotion.promote({ jobId: job.jobId, step: 10, mode: 'replace' })).toMatchObject({ changed: false, recorded: false });
    expect(await models.findById(job.modelId)).toEqual(modelAfter);
    expect((await recordOf(job.jobId)).state.promotions).toHaveLength(1);

    // Back to the final (by its step, 30, or by 'final'), then to 10 again (the copy is reused).
    expect(await promotion.promote({ jobId: job.jobId, step: 'final', mode: 'replace' })).toMatchObject({ step: 30, final: true, slug: job.slug, changed: true, recorded: true });
    expect(await platformLoads(job.trigger)).toMatchObject({ slug: job.slug, bytes: weights(job.jobId, 'final').toString() });
    expect(await models.findById(job.modelId)).not.toHaveProperty('promotedCheckpoint');
    expect(await promotion.promote({ jobId: job.jobId, step: 30, mode: 'replace' })).toMatchObject({ changed: false, recorded: false });
    expect(await promotion.promote({ jobId: job.jobId, step: 10, mode: 'replace' })).toMatchObject({ changed: true, recorded: true });
    expect(await platformLoads(job.trigger)).toMatchObject({ bytes: weights(job.jobId, 10).toString() });
    expect((await recordOf(job.jobId)).state.promotions!.map((p) => p.step)).toEqual([10, 30, 10]);
    expect(await untouched(job.jobId)).toBe(before);
  });
});

describe('promote --step N --as-version', () => {
  it('registers checkpoint N as a second model with its own name, slug, file and trigger word; the job trigger word still loads the job model', async () => {
    const job = await finishedJob('versioncat');
    const before = await untouched(job.jobId);
    const r = await promotion.promote({ jobId: job.jobId, step: 20, mode: 'version' });
    expect(r).toMatchObject({ mode: 'version', step: 20, slug: `${job.slug}-v20`, triggerWord: `${job.trigger}_s20`, changed: true, recorded: true });
    expect(r.loraModelId).not.toBe(String(job.modelId));
    const version = (await models.findById(r.loraModelId))!;
    const main = (await models.findById(job.modelId))!;
    expect(version).toMatchObject({ name: `${main.name} (step 20)`, slug: `${job.slug}-v20`, triggerWords: [`${job.trigger}_s20`], checkpoint: main.checkpoint, ownedBy: main.ownedBy, visibility: 'public', versionOf: { trainingJobId: job.jobId, step: 20 } });

    expect(await platformLoads(`${job.trigger}_s20`)).toEqual({ slug: `${job.slug}-v20`, bytes: weights(job.jobId, 20).toString(), warnings: [] });
    expect(await platformLoads(job.trigger)).toEqual({ slug: job.slug, bytes: weights(job.jobId, 'final').toString(), warnings: [] });

    // Idempotent.
    expect(await promotion.promote({ jobId: job.jobId, step: 20, mode: 'version' })).toMatchObject({ loraModelId: r.loraModelId, changed: false, recorded: false });
    expect(await h.db.collection('loraModels').countDocuments({ 'versionOf.trainingJobId': job.jobId })).toBe(1);
    expect((await recordOf(job.jobId)).state.promotions).toEqual([expect.objectContaining({ step: 20, mode: 'version', loraModelId: r.loraModelId })]);
    expect(await untouched(job.jobId)).toBe(before);
  });
});

describe('concurrent promotions of one job', () => {
  it('run one at a time: the others are refused and nothing is recorded twice', async () => {
    const job = await finishedJob('racingcat');
    const results = await Promise.allSettled([10, 10, 20, 10].map((step) => promotion.promote({ jobId: job.jobId, step, mode: 'replace' })));
    const done = results.filter((r): r is PromiseFulfilledResult<Awaited<ReturnType<CheckpointPromotion['promote']>>> => r.status === 'fulfilled').map((r) => r.value);
    const refused = results.filter((r): r is PromiseRejectedResult => r.status === 'rejected').map((r) => r.reason);
    expect(done.length).toBeGreaterThanOrEqual(1);
    for (const e of refused) expect(e).toMatchObject({ reason: 'concurrent-promotion' });
    // The model loads what the record's newest promotion says, and each promotion that changed something is recorded once.
    const promotions = (await recordOf(job.jobId)).state.promotions!;
    expect(promotions).toHaveLength(done.filter((d) => d.recorded).length);
    const loads = await platformLoads(job.trigger);
    expect(loads).toMatchObject({ slug: `${job.slug}-s${promotions[promotions.length - 1].step}`, bytes: weights(job.jobId, promotions[promotions.length - 1].step).toString() });
  });
});

describe('refusals change nothing', () => {
  async function refusal(p: Promise<unknown>): Promise<PromotionRefused> {
    const err = await p.then(() => null, (e: unknown) => e);
    expect(err).toBeInstanceOf(PromotionRefused);
    return err as PromotionRefused;
  }

  it('a job that is not COMPLETED, an unknown step, a deleted checkpoint, an unknown job', async () => {
    const job = await finishedJob('refusedcat');
    const model = await models.findById(job.modelId);
    const snapshot = async () => JSON.stringify([await untouched(job.jobId), await recordOf(job.jobId), await models.findById(job.modelId)]);
    const before = await snapshot();

    expect(await refusal(promotion.promote({ jobId: job.jobId, step: 15, mode: 'replace' }))).toMatchObject({ reason: 'unknown-step', message: expect.stringContaining('10, 20, 30 (final)') });
    expect(await refusal(promotion.promote({ jobId: new ObjectId().toHexString(), step: 10, mode: 'replace' }))).toMatchObject({ reason: 'job-not-found' });
    expect(await snapshot()).toBe(before);

    await h.db.collection('trainingJobAttempts').updateOne({ _id: attemptKey(job.jobId, 0) } as never, { $set: { 'state.checkpoints.0.deletedAt': new Date() } });
    expect(await refusal(promotion.promote({ jobId: job.jobId, step: 10, mode: 'replace' }))).toMatchObject({ reason: 'checkpoint-deleted' });
    expect(await refusal(promotion.promote({ jobId: job.jobId, step: 10, mode: 'version' }))).toMatchObject({ reason: 'checkpoint-deleted' });
    // A record that still lists the checkpoint but whose file is gone is refused too.
    await storage.deleteObject('models', job.checkpoints[1].loraKey);
    expect(await refusal(promotion.promote({ jobId: job.jobId, step: 20, mode: 'replace' }))).toMatchObject({ reason: 'checkpoint-deleted' });

    for (const status of ['RUNNING', 'FAILED', 'CANCELLED', 'QUEUED']) {
      await h.db.collection('trainingJobs').updateOne({ _id: new ObjectId(job.jobId) }, { $set: { status } });
      expect(await refusal(promotion.promote({ jobId: job.jobId, step: 'final', mode: 'replace' }))).toMatchObject({ reason: 'not-completed', message: expect.stringContaining(status) });
    }
    expect(await models.findById(job.modelId)).toEqual(model);
    expect((await recordOf(job.jobId)).state.promotions).toBeUndefined();
    expect(await h.db.collection('loraModels').countDocuments({ 'versionOf.trainingJobId': job.jobId })).toBe(0);
    expect(await storage.headObject('models', `loras/${job.slug}-s10.safetensors`)).toBeNull();
  });
});

describe('retention (maintenance)', () => {
  const exists = async (alias: 'models' | 'uploads', key: string) => (await storage.headObject(alias, key)) !== null;

  it('an ended attempt loses its resume state at once; checkpoints stay until promoted (+ grace) or 14 days; then only what a model uses is kept', async () => {
    const promoted = await finishedJob('keptcat', [10, 20, 25]);
    const idle = await finishedJob('idlecat');
    const now = Date.now();

    await retention.run(new Date(now));
    for (const j of [promoted, idle]) {
      for (const key of j.stateKeys) expect(await exists('uploads', key)).toBe(false);
      const rec = await recordOf(j.jobId);
      expect(rec.state.resumeState).toBeUndefined();
      expect(rec.state.checkpoints!.every((c) => !c.deletedAt)).toBe(true);
      for (const c of j.checkpoints) expect(await exists('models', c.loraKey)).toBe(true);
    }

    // Promote 10, then 20 (10's loras/ copy is no longer loaded), and 25 as a version.
    await promotion.promote({ jobId: promoted.jobId, step: 10, mode: 'replace' });
    await promotion.promote({ jobId: promoted.jobId, step: 20, mode: 'replace' });
    await promotion.promote({ jobId: promoted.jobId, step: 25, mode: 'version' });
    await retention.run(new Date(now + 23 * 3_600_000));
    expect((await recordOf(promoted.jobId)).state.checkpoints!.every((c) => !c.deletedAt)).toBe(true);

    const report = await retention.run(new Date(Date.now() + DAY + 60_000));
    expect(report.staleCopiesDeleted).toBe(1);
    const rec = await recordOf(promoted.jobId);
    expect(rec.state.checkpoints!.map((c) => [c.step, Boolean(c.deletedAt)])).toEqual([[10, true], [20, false], [25, false]]);
    expect(await exists('models', promoted.checkpoints[0].loraKey)).toBe(false);
    expect(await exists('models', promoted.checkpoints[0].sampleKeys[0])).toBe(false);
    for (const c of promoted.checkpoints.slice(1)) {
      expect(await exists('models', c.loraKey)).toBe(true);
      expect(await exists('models', c.sampleKeys[0])).toBe(true);
    }
    // The job's summary no longer links to the deleted checkpoint.
    expect(((await h.db.collection('trainingJobs').findOne({ _id: new ObjectId(promoted.jobId) }))?.checkpoints as { step: number }[]).map((c) => c.step)).toEqual([20, 25]);
    expect(await exists('models', `loras/${promoted.slug}-s10.safetensors`)).toBe(false);
    expect(await exists('models', `loras/${promoted.slug}-s20.safetensors`)).toBe(true);
    expect(await exists('models', `loras/${promoted.slug}-v25.safetensors`)).toBe(true);
    expect(await exists('models', `loras/${promoted.slug}.safetensors`)).toBe(true);
    expect(await platformLoads(promoted.trigger)).toMatchObject({ bytes: weights(promoted.jobId, 20).toString() });
    expect(await platformLoads(`${promoted.trigger}_s25`)).toMatchObject({ bytes: weights(promoted.jobId, 25).toString() });
    // Promoting back to the final still works, and a deleted step is refused.
    await expect(promotion.promote({ jobId: promoted.jobId, step: 10, mode: 'replace' })).rejects.toMatchObject({ reason: 'checkpoint-deleted' });
    expect(await promotion.promote({ jobId: promoted.jobId, step: 'final', mode: 'replace' })).toMatchObject({ changed: true });
    expect(await platformLoads(promoted.trigger)).toMatchObject({ bytes: weights(promoted.jobId, 'final').toString() });

    // The job nobody promoted keeps everything until 14 days after completion.
    expect((await recordOf(idle.jobId)).state.checkpoints!.every((c) => !c.deletedAt)).toBe(true);
    await retention.run(new Date(now + 14 * DAY + 60_000));
    expect((await recordOf(idle.jobId)).state.checkpoints!.map((c) => Boolean(c.deletedAt))).toEqual([true, true]);
    for (const c of idle.checkpoints) expect(await exists('models', c.loraKey)).toBe(false);
    expect((await h.db.collection('trainingJobs').findOne({ _id: new ObjectId(idle.jobId) }))?.checkpoints).toEqual([]);
    expect(await platformLoads(idle.trigger)).toMatchObject({ bytes: weights(idle.jobId, 'final').toString() });

    // Idempotent: a later pass finds nothing to do for either.
    const again = await retention.run(new Date(now + 30 * DAY));
    expect(again).toMatchObject({ checkpointsDeleted: 0, staleCopiesDeleted: 0 });
  });

  it('waits while a promotion of the job holds its lock, then deletes from what the promotion left', async () => {
    const job = await finishedJob('lockedcat');
    const locks = h.app.container.resolve(CheckpointPromotionRepository);
    const token = await locks.lock(job.jobId, 'a promotion in flight', 60_000);
    expect(token).not.toBeNull();
    const due = Date.now() + 15 * DAY;
    await retention.run(new Date(due));
    // Nothing of the job's checkpoints was touched while the lock was held.
    expect((await recordOf(job.jobId)).state.checkpoints!.every((c) => !c.deletedAt)).toBe(true);
    for (const c of job.checkpoints) expect(await exists('models', c.loraKey)).toBe(true);
    await locks.unlock(job.jobId, token!);
    // Deferred by a minute, then done.
    await retention.run(new Date(due + 2 * 60_000));
    expect((await recordOf(job.jobId)).state.checkpoints!.every((c) => c.deletedAt)).toBe(true);
    for (const c of job.checkpoints) expect(await exists('models', c.loraKey)).toBe(false);
  });

  it("the worker's maintenance pass runs retention", async () => {
    const job = await finishedJob('maintainedcat');
    await h.app.container.resolve(TrainingWorker).maintenance();
    for (const key of job.stateKeys) expect(await exists('uploads', key)).toBe(false);
    const rec = await recordOf(job.jobId);
    expect(rec.state.resumeState).toBeUndefined();
    expect(rec.checkpointRetention).toMatchObject({ notBefore: expect.any(Date) });
    for (const c of job.checkpoints) expect(await exists('models', c.loraKey)).toBe(true);
  });

  it('a running job keeps its checkpoints and resume state', async () => {
    const job = await finishedJob('runningcat');
    await h.db.collection('trainingJobs').updateOne({ _id: new ObjectId(job.jobId) }, { $set: { status: 'RUNNING' } });
    await retention.run(new Date(Date.now() + 30 * DAY));
    const rec = await recordOf(job.jobId);
    expect(rec.state.resumeState).toBeDefined();
    expect(rec.state.checkpoints!.every((c) => !c.deletedAt)).toBe(true);
    for (const key of job.stateKeys) expect(await exists('uploads', key)).toBe(true);
    for (const c of job.checkpoints) expect(await exists('models', c.loraKey)).toBe(true);
    expect(rec.checkpointRetention).toMatchObject({ notBefore: expect.any(Date) });
  });

  it('many workers at once end in the same state as one', async () => {
    const job = await finishedJob('racecat', [10, 20, 25]);
    const at = new Date(Date.now() + 15 * DAY);
    // FerretDB's conditional updates are not atomic (ADR 0002), so two workers may both work on a record: every step is idempotent.
    await Promise.all([retention.run(at), retention.run(at), retention.run(at)]);
    const rec = await recordOf(job.jobId);
    expect(rec.state.checkpoints!.every((c) => c.deletedAt instanceof Date)).toBe(true);
    for (const c of job.checkpoints) expect(await exists('models', c.loraKey)).toBe(false);
    expect(await exists('models', `loras/${job.slug}.safetensors`)).toBe(true);
  });
});

describe('cli promote and show', () => {
  const cli = (...args: string[]) => run(process.execPath, [CLI, ...args], { env: h.env, cwd: REPO_ROOT }).then(
    (r) => ({ code: 0, out: r.stdout, err: r.stderr }),
    (e: { code: number; stdout: string; stderr: string }) => ({ code: e.code, out: e.stdout, err: e.stderr }),
  );

  it('promote --step N [--as-version] prints what the model loads now; show lists the checkpoints and promotions; refusals exit 1', async () => {
    const job = await finishedJob('clicat');
    const replaced = await cli('promote', job.jobId, '--step', '10');
    expect(replaced).toMatchObject({ code: 0, out: expect.stringContaining(`now loads the checkpoint at step 10 (slug ${job.slug}-s10, trigger word "${job.trigger}"`) });
    expect(await platformLoads(job.trigger)).toMatchObject({ bytes: weights(job.jobId, 10).toString() });
    expect(await cli('promote', job.jobId, '--step', '10')).toMatchObject({ code: 0, out: expect.stringMatching(/^already so: .*the promotion was already recorded/) });
    const version = await cli('promote', job.jobId, '--step', '20', '--as-version');
    expect(version).toMatchObject({ code: 0, out: expect.stringContaining(`trigger word "${job.trigger}_s20"`) });

    const refused = await cli('promote', job.jobId, '--step', '15');
    expect(refused.code).toBe(1);
    expect(refused.err).toContain('promotion refused (unknown-step)');
    expect((await cli('promote', job.jobId)).code).toBe(2);

    const shown = await cli('show', job.jobId);
    expect(shown.code).toBe(0);
    expect(shown.out).toMatch(/step +10 +loss 0\.2000 .* loaded by the model/);
    expect(shown.out).toMatch(/step +20 +loss 0\.1000 .* kept/);
    expect(shown.out).toMatch(/step +30 \(final\) .* kept/);
    expect(shown.out).toContain("Promoted: step 10 as the job's model");
    expect(shown.out).toContain('Promoted: step 20 as an additional model');
  });
});
