/**
 * "Trained models automatically available in ComfyUI": the platform's own
 * lookup (test/platform/lora-resolution.ts, re-expressed from its source)
 * run against what the publish step uploads and registers, on the real
 * database and object store, for SDXL, FLUX, WAN, Kontext and (operator-only)
 * FLUX.2 [klein] 4B. A prompt naming the
 * trigger word must become `<lora:<slug>:1>` for a tool of the model's
 * family (and only for it), and `loras/<slug>.safetensors` (what ComfyUI
 * loads for that tag) must be our file, at the URL the platform's ComfyDeploy
 * upload would fetch. Also: slugs are reserved per job and an object another
 * job (or anyone) stored under a candidate key is never overwritten.
 */
import 'reflect-metadata';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createHash } from 'node:crypto';
import { ObjectId } from 'mongodb';
import { LoraModelRepository, slugify } from '@stationthis/db';
import { ObjectStorage } from '@stationthis/storage';
import { getRecipe, sanitizeOutputName, sanitizeTriggerWord } from '@stationthis/recipes';
import { createLogger } from '../src/observability/logger';
import { PublishStep, TRAINING_JOB_METADATA, type PublishFiles } from '../src/pipeline/steps/publish-step';
import { buildTriggerMap, comfyDeployUpload, publicLoraRecords, resolveLoraTriggers } from './platform/lora-resolution';
import { createHarness, type Harness } from './harness';

let h: Harness;
let dir: string;
let files: PublishFiles;
let publish: PublishStep;
let models: LoraModelRepository;
let storage: ObjectStorage;
const owner = new ObjectId().toHexString();
const jobIds: string[] = [];
const foreignKeys: string[] = [];
const LORA_BYTES = Buffer.from('not really a safetensors file, the platform never opens it here');

beforeAll(async () => {
  h = await createHarness('lora-resolution');
  publish = h.app.container.resolve(PublishStep);
  models = h.app.container.resolve(LoraModelRepository);
  storage = h.app.container.resolve(ObjectStorage);
  dir = await mkdtemp(join(tmpdir(), 'lora-resolution-'));
  files = { loraPath: join(dir, 'out.safetensors'), outputDir: dir, logFile: join(dir, 'engine.log'), jobDir: dir };
  await writeFile(files.loraPath, LORA_BYTES);
  await writeFile(files.logFile, 'log\n');
  await writeFile(join(dir, 'job-spec.json'), '{}');
}, 60_000);

afterAll(async () => {
  for (const id of jobIds) await storage.deletePrefix('models', `training-jobs/${id}/`).catch(() => undefined);
  for (const key of foreignKeys) await storage.deleteObject('models', key).catch(() => undefined);
  await h?.close();
  await rm(dir, { recursive: true, force: true });
});

/** One attempt of a fresh job, its state in memory (the fenced writer's role is not under test here). */
function attemptOf(jobId: string, state: Record<string, unknown> = {}) {
  const ctx = { jobId, lease: { jobId, attemptId: 'a1', workerId: 'w1' }, log: createLogger('silent') };
  const writer = { setState: async (patch: Record<string, unknown>) => void Object.assign(state, patch) };
  const request = { jobId, datasetId: new ObjectId().toHexString(), ownerAccountId: owner, totalSteps: 10, currentLoss: 0.1 };
  const ref = { jobId, platformAttempt: 0, owner: 'a1' };
  return { ctx, ref, writer, request, state } as never as Parameters<PublishStep['upload']>[0] & { state: Record<string, unknown> };
}

function preparedOf(recipeId: string, rawTrigger: string, name: string) {
  return { recipe: getRecipe(recipeId), parameters: { steps: 10 }, triggerWord: sanitizeTriggerWord(rawTrigger), outputName: sanitizeOutputName(name), payer: { masterAccountId: owner, walletAddress: null } } as never as Parameters<PublishStep['upload']>[1];
}

async function publishJob(recipeId: string, rawTrigger: string, name: string, jobId = new ObjectId().toHexString()) {
  jobIds.push(jobId);
  const a = attemptOf(jobId);
  const p = preparedOf(recipeId, rawTrigger, name);
  await publish.upload(a, p, files);
  await publish.register(a, p);
  const model = (await models.findByTrainingJobId(jobId))!;
  return { jobId, slug: String(a.state['slug']), model, trigger: p.triggerWord };
}

async function platformResolves(prompt: string, toolBaseModel: string) {
  const map = buildTriggerMap(await publicLoraRecords(h.db));
  return resolveLoraTriggers(prompt, null, toolBaseModel, map);
}

describe.each([
  ['sdxl-lora', 'SDXL', 'sdxlcat'],
  ['flux-lora', 'FLUX', 'fluxcat'],
  ['wan-lora', 'WAN', 'wancat'],
  ['kontext-lora', 'KONTEXT', 'kontextcat'],
  // Operator-only family: its checkpoint is the recipe's registration data, never the platform's "flux" mapping.
  ['flux2-klein-lora', 'KLEIN-4B', 'kleincat'],
])('%s: the platform finds and loads the trained LoRA by its trigger word', (recipeId, toolBaseModel, rawTrigger) => {
  it(`resolves "${rawTrigger}" for a ${toolBaseModel} tool to <lora:slug:1> and ComfyUI loads our file`, async () => {
    const { slug, model, trigger } = await publishJob(recipeId, rawTrigger, `${rawTrigger} model`);
    expect(model).toMatchObject({ slug, checkpoint: toolBaseModel, triggerWords: [trigger], visibility: 'public', defaultWeight: 1 });

    const r = await platformResolves(`a portrait of ${trigger}, oil painting`, toolBaseModel);
    expect(r.appliedLoras).toEqual([expect.objectContaining({ slug, weight: 1, modelId: String(model._id), ownerAccountId: owner })]);
    expect(r.modifiedPrompt).toBe(`a portrait of <lora:${slug}:1>${trigger}, oil painting`);

    // ComfyUI loads loras/<slug>.safetensors: our object, at the link the platform's ComfyDeploy upload fetches.
    const key = `loras/${slug}.safetensors`;
    expect(comfyDeployUpload(model as never)).toEqual({ folderPath: 'loras', filename: `${slug}.safetensors`, downloadLink: storage.publicUrl('models', key) });
    expect(model.publishedTo).toMatchObject({ cloudflareUrl: storage.publicUrl('models', key), modelFileUrl: storage.publicUrl('models', key), storageKey: key });
    const head = await storage.headObject('models', key);
    expect(head).toMatchObject({ bytes: LORA_BYTES.length, metadata: { [TRAINING_JOB_METADATA]: model.trainedFrom!.trainingId.toHexString() } });

    // Tools of another family never get it.
    for (const other of ['SDXL', 'FLUX', 'KONTEXT', 'WAN', 'KLEIN-4B'].filter((b) => b !== toolBaseModel && !(toolBaseModel === 'FLUX' && b === 'KONTEXT'))) {
      expect((await platformResolves(`a portrait of ${trigger}`, other)).appliedLoras).toEqual([]);
    }
  });
});

describe('what makes a LoRA findable', () => {
  it('one trigger word trained on two families: each tool gets its own family\'s LoRA', async () => {
    const sdxl = await publishJob('sdxl-lora', 'twinstyle', 'twin sdxl');
    const flux = await publishJob('flux-lora', 'twinstyle', 'twin flux');
    expect((await platformResolves('twinstyle', 'SDXL')).appliedLoras.map((l) => l.slug)).toEqual([sdxl.slug]);
    expect((await platformResolves('twinstyle', 'FLUX')).appliedLoras.map((l) => l.slug)).toEqual([flux.slug]);
  });

  it('a dotted trigger is cleaned into one the tokenizer keeps whole (the dotted one is never found)', async () => {
    const { slug, trigger } = await publishJob('flux-lora', 'Mila Style v2.1', 'mila');
    expect(trigger).toBe('Mila_Style_v2_1');
    expect((await platformResolves(`photo, ${trigger}!!`, 'FLUX')).appliedLoras).toEqual([expect.objectContaining({ slug, weight: 1.4 })]);
    // Why: registered as typed, the platform splits "mila.v2" on '.', so it would never match.
    const dotted = buildTriggerMap([{ modelId: 'x', slug: 'dotted', triggerWords: ['mila.v2'], cognates: [], defaultWeight: 1, access: 'public', ownerAccountId: null, updatedAt: new Date(), checkpoint: 'FLUX' }]);
    expect(resolveLoraTriggers('photo of mila.v2', null, 'FLUX', dotted).appliedLoras).toEqual([]);
  });
});

describe('slugs are reserved per job and uploads never overwrite another job\'s model', () => {
  /** The slug reserveSlug tries first for this job (its candidate 0). */
  const firstCandidate = (name: string, jobId: string) => `${slugify(sanitizeOutputName(name))}-${createHash('sha256').update(`${jobId}:0`).digest('hex').slice(0, 6)}`;

  it.each([
    ['another job uploaded', { [TRAINING_JOB_METADATA]: new ObjectId().toHexString() }],
    ['no job of ours uploaded (e.g. the platform\'s own upload script)', {}],
  ])('an object %s under the first candidate key is left alone and another slug is taken', async (_what, metadata) => {
    const jobId = new ObjectId().toHexString();
    const taken = firstCandidate('collide', jobId);
    const foreign = Buffer.from('somebody else\'s LoRA');
    foreignKeys.push(`loras/${taken}.safetensors`);
    await storage.putObject('models', `loras/${taken}.safetensors`, foreign, { metadata });
    const { slug } = await publishJob('sdxl-lora', 'collide', 'collide', jobId);
    expect(slug).not.toBe(taken);
    expect(slug).toMatch(/^collide-[0-9a-f]{6}$/);
    expect((await storage.headObject('models', `loras/${taken}.safetensors`))?.bytes).toBe(foreign.length);
  });

  it('a resumed or retried attempt of the same job gets its own slug back and may replace its own file', async () => {
    const first = await publishJob('sdxl-lora', 'again', 'again');
    const a = attemptOf(first.jobId);
    await publish.upload(a, preparedOf('sdxl-lora', 'again', 'again'), files);
    expect(a.state['slug']).toBe(first.slug);
  });

  it('registration refuses a slug another job reserved', async () => {
    const jobA = new ObjectId().toHexString();
    const slug = await models.reserveSlug('shared name', jobA);
    expect(await models.reserveSlug('shared name', jobA)).toBe(slug);
    const jobB = new ObjectId().toHexString();
    expect(await models.reserveSlug('shared name', jobB)).not.toBe(slug);
    await expect(
      models.registerTrainedModel({ trainingJobId: jobB, masterAccountId: owner, modelName: 'shared name', slug, triggerWord: 'x', baseModel: 'SDXL', modelFileUrl: 'https://models.example/x' }),
    ).rejects.toThrow(/reserved by another training job/);
    expect(await models.findBySlug(slug)).toBeNull();
  });
});
