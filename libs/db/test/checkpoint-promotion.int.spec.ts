/**
 * The database side of checkpoint promotion and retention (ADR 0008) on the
 * real server: which checkpoint a step names (the final LoRA included), the
 * names a promotion uses, compare-and-set writes to the model, a version
 * registered once, a promotion recorded once, and the retention marks.
 */
import { ObjectId } from 'mongodb';
import {
  CheckpointPromotionRepository,
  CheckpointRetentionRepository,
  LoraModelRepository,
  attemptKey,
  finalStepOf,
  promotableCheckpoints,
  promotedSlug,
  versionModelId,
  versionSlug,
  versionTriggerWord,
  type AttemptState,
  type CheckpointRecord,
  type TrainingAttemptDoc,
} from '../src';
import { openTestDb, type TestDb } from './helpers';

let t: TestDb;
let promotions: CheckpointPromotionRepository;
let retention: CheckpointRetentionRepository;
let models: LoraModelRepository;

beforeAll(async () => {
  t = await openTestDb('db_checkpoint_promotion');
  promotions = new CheckpointPromotionRepository(t.db);
  retention = new CheckpointRetentionRepository(t.db);
  models = new LoraModelRepository(t.db);
  await retention.ensureIndexes();
  await retention.ensureIndexes();
});
afterAll(() => t.drop());

function checkpoint(step: number, extra: Partial<CheckpointRecord> = {}): CheckpointRecord {
  return {
    step, loss: 0.1 + step / 1000, loraKey: `training-jobs/j/checkpoints/attempt-0/step-${step}-l.safetensors`, loraUrl: `https://models.example/ck-${step}`,
    sha256: `sha-${step}`, autov2: `av-${step}`, bytes: 100 + step, sampleKeys: [`s-${step}.png`], sampleUrls: [`https://models.example/s-${step}.png`], storedAt: new Date(), ...extra,
  };
}

const upload = { loraUrl: 'https://models.example/loras/cat-abc123.safetensors', loraKey: 'loras/cat-abc123.safetensors', sha256: 'sha-final', autov2: 'av-final', bytes: 999, sampleUrls: ['https://models.example/final.png'] };

/** A completed job, its model and its attempt record, as the worker leaves them. */
async function completedJob(state: Partial<AttemptState> = {}) {
  const jobId = new ObjectId();
  const id = jobId.toHexString();
  const { model } = await models.registerTrainedModel({
    trainingJobId: id, masterAccountId: new ObjectId().toHexString(), modelName: 'cat', slug: `cat-${id.slice(-6)}`, triggerWord: `cat${id.slice(-6)}`,
    baseModel: 'FLUX.1-dev', modelFileUrl: upload.loraUrl, storageKey: upload.loraKey, steps: 30,
  });
  await t.db.collection('trainingJobs').insertOne({ _id: jobId, status: 'COMPLETED', totalSteps: 30, currentLoss: 0.05, retryCount: 0, loraModelId: model._id, completedAt: new Date(), createdAt: new Date(), updatedAt: new Date() });
  const record: TrainingAttemptDoc = {
    _id: attemptKey(id, 0), jobId: id, platformAttempt: 0, owner: 'lease-1', ownerClaimSeq: 1, baseAttempts: 0, open: false,
    state: { slug: model.slug, upload, loraModelId: String(model._id), checkpoints: [checkpoint(10), checkpoint(20), checkpoint(30)], ...state },
    createdAt: new Date(), updatedAt: new Date(),
  };
  await t.db.collection<TrainingAttemptDoc>('trainingJobAttempts').insertOne(record);
  return { id, model, record };
}

describe('which checkpoint a step names', () => {
  it('lists the saves in step order and the final LoRA at the final step, shadowing a save at that step', () => {
    const state: AttemptState = { upload, checkpoints: [checkpoint(20), checkpoint(10), checkpoint(30)] };
    const list = promotableCheckpoints(state, 30, 0.05);
    expect(list.map((c) => [c.step, c.final])).toEqual([[10, false], [20, false], [30, true]]);
    expect(list[2]).toMatchObject({ loraKey: upload.loraKey, sha256: 'sha-final', sampleUrls: upload.sampleUrls, loss: 0.05 });
    expect(promotableCheckpoints({ checkpoints: [checkpoint(10)] }, 30).map((c) => c.step)).toEqual([10]);
  });

  it('the final step is the job\'s total steps, else the model\'s, else the requested steps', () => {
    expect(finalStepOf({ totalSteps: 40 }, { trainedFrom: { steps: 30 } } as never)).toBe(40);
    expect(finalStepOf({}, { trainedFrom: { steps: 30 } } as never)).toBe(30);
    expect(finalStepOf({ steps: 12 }, null)).toBe(12);
    expect(finalStepOf({}, null)).toBeNull();
  });

  it('names: a promoted checkpoint, a version and its trigger word never equal the job\'s own', () => {
    expect(promotedSlug('cat-abc123', 500)).toBe('cat-abc123-s500');
    expect(versionSlug('cat-abc123', 500)).toBe('cat-abc123-v500');
    expect(versionTriggerWord('mycat', 500)).toBe('mycat_s500');
    const job = new ObjectId().toHexString();
    expect(versionModelId(job, 500)).toEqual(versionModelId(job, 500));
    expect(versionModelId(job, 500)).not.toEqual(versionModelId(job, 501));
  });
});

describe('promotion writes', () => {
  it('subject: the job, its current platform attempt\'s record and model', async () => {
    const { id, model } = await completedJob();
    const s = (await promotions.subject(id))!;
    expect(s.platformAttempt).toBe(0);
    expect(s.record?._id).toBe(attemptKey(id, 0));
    expect(s.model?._id).toEqual(model._id);
    expect(await promotions.subject(new ObjectId().toHexString())).toBeNull();
  });

  it('pointModelAt is compare-and-set on the slug and removes the previous file\'s ComfyDeploy fields', async () => {
    const { model } = await completedJob();
    await t.db.collection('loraModels').updateOne({ _id: model._id }, { $set: { 'publishedTo.comfyDeployPath': `loras/${model.slug}.safetensors` } });
    const target = { slug: `${model.slug}-s10`, fileUrl: 'https://models.example/loras/x-s10.safetensors', storageKey: `loras/${model.slug}-s10.safetensors`, sha256: 'sha-10', autov2: 'av-10', bytes: 110, previewImages: ['p'], step: 10, loss: 0.11 };
    expect(await promotions.pointModelAt(model._id, 'not-its-slug', target, new Date())).toBe(false);
    expect((await models.findById(model._id))!.slug).toBe(model.slug);
    expect(await promotions.pointModelAt(model._id, model.slug, target, new Date())).toBe(true);
    const m = (await models.findById(model._id))!;
    expect(m).toMatchObject({ slug: target.slug, hashes: { sha256: 'sha-10', autov2: 'av-10' }, sizeBytes: 110, previewImages: ['p'], promotedCheckpoint: { step: 10, loss: 0.11 } });
    expect(m.publishedTo).toMatchObject({ modelFileUrl: target.fileUrl, cloudflareUrl: target.fileUrl, storageKey: target.storageKey });
    expect(m.publishedTo).not.toHaveProperty('comfyDeployPath');
    expect(m.triggerWords).toEqual(model.triggerWords);
    // Back to the final: no promotedCheckpoint.
    await promotions.pointModelAt(model._id, target.slug, { slug: model.slug, fileUrl: upload.loraUrl, storageKey: upload.loraKey, sha256: 'sha-final', autov2: 'av-final', bytes: 999, previewImages: [] }, new Date());
    expect(await models.findById(model._id)).not.toHaveProperty('promotedCheckpoint');
  });

  it('registerVersion: once per (job, step), its own slug, name and trigger word', async () => {
    const { id, model } = await completedJob();
    const target = { slug: versionSlug(model.slug, 20), fileUrl: 'https://models.example/v20', storageKey: `loras/${versionSlug(model.slug, 20)}.safetensors`, sha256: 'sha-20', autov2: 'av-20', bytes: 120, previewImages: ['s20'], step: 20 };
    const trigger = versionTriggerWord(model.triggerWords[0], 20);
    const first = await promotions.registerVersion(model, id, trigger, target, new Date());
    const again = await promotions.registerVersion(model, id, trigger, target, new Date());
    expect(first.created).toBe(true);
    expect(again).toMatchObject({ created: false });
    expect(again.model._id).toEqual(first.model._id);
    expect(first.model).toMatchObject({ slug: target.slug, name: 'cat (step 20)', triggerWords: [trigger], checkpoint: 'FLUX', visibility: 'public', ownedBy: model.ownedBy, versionOf: { trainingJobId: id, modelId: model._id, step: 20 } });
    expect(await t.db.collection('loraModels').countDocuments({ 'versionOf.trainingJobId': id })).toBe(1);
    expect((await promotions.versionsOf(id)).map((m) => m.slug)).toEqual([target.slug]);
    // The trigger check sees it, in any case, and can leave it out.
    expect((await promotions.otherModelWithTrigger(trigger.toUpperCase(), []))?._id).toEqual(first.model._id);
    expect(await promotions.otherModelWithTrigger(trigger, [first.model._id])).toBeNull();
  });

  it('recordPromotion records a repeated promotion once, and a different one again', async () => {
    const { id, model } = await completedJob();
    const rec = (step: number) => ({ step, mode: 'replace' as const, loraModelId: String(model._id), loraUrl: `u${step}`, promotedAt: new Date() });
    expect(await promotions.recordPromotion(id, 0, rec(10))).toBe(true);
    expect(await promotions.recordPromotion(id, 0, rec(10))).toBe(false);
    expect(await promotions.recordPromotion(id, 0, rec(20))).toBe(true);
    expect(await promotions.recordPromotion(id, 0, rec(10))).toBe(true);
    const doc = await t.db.collection<TrainingAttemptDoc>('trainingJobAttempts').findOne({ _id: attemptKey(id, 0) });
    expect(doc!.state.promotions!.map((p) => p.step)).toEqual([10, 20, 10]);
    // A promotion asks retention to look again.
    expect(doc).toMatchObject({ checkpointRetention: { promotedAt: expect.any(Date), notBefore: expect.any(Date) } });
  });

  it('the promotion lock: one holder per job at a time, even when raced; an expired lock is taken over', async () => {
    const jobId = new ObjectId().toHexString();
    const tokens = await Promise.all(Array.from({ length: 8 }, (_, i) => promotions.lock(jobId, `p${i}`, 60_000)));
    const held = tokens.filter((x): x is string => x !== null);
    expect(held).toHaveLength(1);
    await promotions.unlock(jobId, 'not-the-token');
    expect(await promotions.lock(jobId, 'late', 60_000)).toBeNull();
    await promotions.unlock(jobId, held[0]);
    const short = await promotions.lock(jobId, 'crashes', 1);
    expect(short).not.toBeNull();
    await new Promise((r) => setTimeout(r, 20));
    const next = await promotions.lock(jobId, 'after', 60_000);
    expect(next).not.toBeNull();
    expect(next).not.toBe(short);
    await promotions.unlock(jobId, next!);
  });

  it('holdSlug: a slug is held by one job only', async () => {
    const a = new ObjectId().toHexString();
    const b = new ObjectId().toHexString();
    const slug = `held-${a.slice(-6)}`;
    expect(await promotions.holdSlug(slug, a)).toBe(true);
    expect(await promotions.holdSlug(slug, a)).toBe(true);
    expect(await promotions.holdSlug(slug, b)).toBe(false);
  });
});

describe('retention marks', () => {
  it('candidates, claim, mark a checkpoint deleted (only that slot), clear the resume state, finish', async () => {
    const { id } = await completedJob({ resumeState: { step: 20, key: 'training-state/x/attempt-0/step-20.tar', bytes: 1, sha256: 's', stateDir: 'd', engine: 'e', uploadedBy: 'lease-1', storedAt: new Date() } });
    const key = attemptKey(id, 0);
    const now = new Date();
    expect((await retention.candidates(now, 1000)).map((r) => r._id)).toContain(key);
    expect(await retention.claim(key, 'w1', now, 60_000)).toBe(true);
    expect(await retention.claim(key, 'w2', now, 60_000)).toBe(false);
    expect((await retention.candidates(now, 1000)).map((r) => r._id)).not.toContain(key);
    // A mark names the slot's step and key: a stale index marks nothing.
    expect(await retention.markCheckpointDeleted(key, 1, 10, checkpoint(10).loraKey, now)).toBe(false);
    expect(await retention.markCheckpointDeleted(key, 1, 20, checkpoint(20).loraKey, now)).toBe(true);
    await retention.clearResumeState(key, 'not-the-key', now);
    expect((await retention.record(key))!.state.resumeState).toBeDefined();
    await retention.clearResumeState(key, 'training-state/x/attempt-0/step-20.tar', now);
    const rec = (await retention.record(key))!;
    expect(rec.state.resumeState).toBeUndefined();
    expect(rec.state.checkpoints!.map((c) => Boolean(c.deletedAt))).toEqual([false, true, false]);
    await retention.finish(key, now);
    expect((await retention.candidates(new Date(now.getTime() + 3_600_000), 1000)).map((r) => r._id)).not.toContain(key);
    // A promotion re-opens it.
    await promotions.recordPromotion(id, 0, { step: 10, mode: 'replace', loraModelId: 'm', loraUrl: 'u', promotedAt: new Date(now.getTime() + 1000) });
    expect((await retention.candidates(new Date(now.getTime() + 3_600_000), 1000)).map((r) => r._id)).toContain(key);
  });

  it('defer leaves a record out until its time', async () => {
    const { id } = await completedJob();
    const key = attemptKey(id, 0);
    const now = new Date();
    await retention.claim(key, 'w1', now, 60_000);
    await retention.defer(key, new Date(now.getTime() + 60_000));
    expect((await retention.candidates(now, 1000)).map((r) => r._id)).not.toContain(key);
    expect((await retention.candidates(new Date(now.getTime() + 61_000), 1000)).map((r) => r._id)).toContain(key);
  });
});
