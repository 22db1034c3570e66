/**
 * The job document is input: what a client wrote into it is checked before
 * anything is charged. The paying account is bound from userCore (the real
 * UserCoreReader over an in-memory collection), parameters of the wrong shape
 * are a user error, and a dataset is refused only when the engine cannot
 * train on it. No services: the e2e twin is test/hostile-input.e2e.spec.ts.
 */
import { ObjectId } from 'mongodb';
import { UserCoreReader, type DatasetRepository, type TrainingJobDoc } from '@stationthis/db';
import { datasetSizeCheck, getRecipe } from '@stationthis/recipes';
import { loadStorageConfig } from '@stationthis/storage';
import { InMemoryDatasetFetch } from '@stationthis/storage/testing';
import { JobFailure } from '../failures';
import { platformCostFields, trainingRequestFromJob } from '../training-request';
import { PrepareStep } from './prepare-step';

const ALICE = '64b0000000000000000000a1'; // attacker: 0 points, no dataset of her own
const BOB = '64b0000000000000000000b2'; // victim: points and a private dataset
const BOB_WALLET = '0xB0B0000000000000000000000000000000000B0B';
const ALICE_WALLET = '0xa11ce00000000000000000000000000000000a11';
const BOB_DATASET = '64b0000000000000000000d2';
const images = (n: number) => Array.from({ length: n }, (_, i) => `https://cdn.example/img-${i}.png`);

const userCore = new Map<string, Record<string, unknown>>([
  [ALICE, { _id: new ObjectId(ALICE), wallets: [{ address: ALICE_WALLET, isPrimary: true }] }],
  [BOB, { _id: new ObjectId(BOB), wallets: [{ address: '0xold0000000000000000000000000000000000000' }, { address: BOB_WALLET, isPrimary: true }] }],
]);
const accounts = new UserCoreReader({ collection: () => ({ findOne: async (q: { _id: unknown }) => userCore.get(String(q._id)) ?? null }) } as never);
const bobDataset = { _id: new ObjectId(BOB_DATASET), name: 'bob private', ownerAccountId: new ObjectId(BOB), images: images(6), visibility: 'private' };
const datasets = (doc: Record<string, unknown> = bobDataset) => ({ findById: async () => doc }) as unknown as DatasetRepository;

/** The hyper-parameters TrainingService.create writes into every job (its defaults). */
const PLATFORM_DEFAULTS = { steps: 1000, learningRate: 0.0004, batchSize: 1, resolution: '1024,1024', loraRank: 16, loraAlpha: 32, loraDropout: 0.1 };

/** A job as the platform's TrainingService.create writes it (ids as strings), for Bob; the smoke recipe unless told. */
function platformJob(over: Record<string, unknown> = {}): TrainingJobDoc {
  return {
    _id: new ObjectId(), userId: BOB, ownerAccountId: BOB, name: 'bob style', modelName: 'bob style', walletAddress: BOB_WALLET, datasetId: BOB_DATASET,
    datasetImageCount: 6, modelType: 'SMOKE', baseModel: 'SMOKE', offeringId: '', triggerWord: 'bobstyle', triggerWords: ['bobstyle'], costPoints: 0,
    environment: 'production', status: 'PROVISIONING', parameters: { steps: 10 }, ...over,
  } as unknown as TrainingJobDoc;
}
const gpuJob = (modelType: string, over: Record<string, unknown> = {}) => platformJob({ ...PLATFORM_DEFAULTS, modelType, baseModel: modelType, parameters: undefined, ...over });

/** The storage port's real offline rules (local config: our buckets on 127.0.0.1:9000), cdn.example allow-listed. */
const storageConfig = loadStorageConfig({ DATASET_ALLOWED_HOSTS: 'cdn.example' });
const sources = new InMemoryDatasetFetch(storageConfig);
const prepare = (job: TrainingJobDoc, dataset?: Record<string, unknown>) => new PrepareStep(datasets(dataset), accounts, sources).run(trainingRequestFromJob(job));
async function refusal(job: TrainingJobDoc, dataset?: Record<string, unknown>): Promise<JobFailure> {
  const err = await prepare(job, dataset).then(
    () => new Error('prepare accepted the job'),
    (e: unknown) => e,
  );
  expect(err).toBeInstanceOf(JobFailure);
  return err as JobFailure;
}

describe('the paying account comes from userCore, never from the job', () => {
  it("binds the platform's own job to its account and the job's wallet (case-insensitive)", async () => {
    const p = await prepare(platformJob());
    expect(p.payer).toEqual({ masterAccountId: BOB, walletAddress: BOB_WALLET.toLowerCase() });
    // A wallet the account holds but that is no longer primary is still its own.
    expect((await prepare(platformJob({ walletAddress: '0xOLD0000000000000000000000000000000000000' }))).payer.walletAddress).toBe('0xold0000000000000000000000000000000000000');
  });

  it('without a wallet on the job, pays from the account\'s primary wallet', async () => {
    expect((await prepare(platformJob({ walletAddress: undefined }))).payer).toEqual({ masterAccountId: BOB, walletAddress: BOB_WALLET.toLowerCase() });
  });

  it("attack 1: userId of Alice with Bob's ownerAccountId and wallet is refused before any charge", async () => {
    const e = await refusal(platformJob({ userId: ALICE }));
    expect(e.failureClass).toBe('user-input');
    expect(e.userMessage).toMatch(/two different accounts.*Nothing was charged/);
  });

  it("attack 1b: Alice's account naming Bob's private dataset is refused", async () => {
    const e = await refusal(platformJob({ userId: ALICE, ownerAccountId: ALICE, walletAddress: ALICE_WALLET }));
    expect(e.failureClass).toBe('dataset');
    expect(e.userMessage).toMatch(/private to another account/);
  });

  it("attack 2: a 0-point account putting Bob's wallet on its job is refused", async () => {
    const e = await refusal(platformJob({ userId: ALICE, ownerAccountId: ALICE, walletAddress: BOB_WALLET }), { ...bobDataset, ownerAccountId: new ObjectId(ALICE) });
    expect(e.failureClass).toBe('user-input');
    expect(e.userMessage).toMatch(/wallet "0xb0b00000…0b0b" is not linked to account "64b0000000…00a1".*Nothing was charged/);
  });

  it('an account the platform does not know, or none at all, is refused', async () => {
    const ghost = new ObjectId().toHexString();
    expect((await refusal(platformJob({ userId: ghost, ownerAccountId: ghost }))).userMessage).toMatch(/does not exist on the platform/);
    expect((await refusal(platformJob({ userId: undefined, ownerAccountId: undefined }))).userMessage).toMatch(/names no account/);
    expect((await refusal(platformJob({ userId: { $ne: null }, ownerAccountId: { $ne: null } }))).failureClass).toBe('user-input');
  });
});

describe('parameters of the wrong shape are a user error, named', () => {
  it('parameters: "steps=30" never throws in the mapper and is refused before the charge', async () => {
    const job = platformJob({ parameters: 'steps=30' });
    expect(() => trainingRequestFromJob(job)).not.toThrow();
    const e = await refusal(job);
    expect(e.failureClass).toBe('user-input');
    expect(e.userMessage).toMatch(/Invalid training parameters: .*must be an object.*got "steps=30".*\{"steps": 30\}/);
  });

  it.each([
    ['an array', [1, 2], /got an array/],
    ['a number', 5, /got number/],
  ])('parameters as %s are refused', async (_what, parameters, got) => {
    expect((await refusal(platformJob({ parameters })))?.userMessage).toMatch(got);
  });

  it('a number out of the recipe\'s bounds is named with its allowed range', async () => {
    const e = await refusal(gpuJob('SDXL', { parameters: { steps: 1e9 } }), { ...bobDataset, images: images(20) });
    expect(e.userMessage).toMatch(/parameters\.steps: .*\(allowed: integer 100\.\.10000\)/);
    const lr = await refusal(gpuJob('SDXL', { learningRate: 'fast' }), { ...bobDataset, images: images(20) });
    expect(lr.userMessage).toMatch(/parameters\.learningRate/);
  });

  it("the platform's own default hyper-parameters pass for SDXL, FLUX and WAN", async () => {
    for (const modelType of ['SDXL', 'FLUX', 'KONTEXT', 'WAN']) {
      const p = await prepare(gpuJob(modelType), { ...bobDataset, images: images(20) });
      expect(p.recipe.baseModel).toBe(modelType);
    }
    // A Kontext job from the platform: its own fields override the offering's defaults; the mode comes along.
    const k = await prepare(gpuJob('KONTEXT', { trainingMode: 'style_subject' }), { ...bobDataset, images: images(20) });
    expect(k.parameters).toMatchObject({ trainingMode: 'style_subject', steps: 1000, loraRank: 16, loraAlpha: 32, resolution: 1024 });
  });
});

describe('the trigger word the platform reads is the cleaned one', () => {
  it('records the word the LoRA answers to', async () => {
    const job = platformJob({ triggerWord: 'Bob Style v2.1', triggerWords: ['Bob Style v2.1'] });
    expect(trainingRequestFromJob(job).resultTriggerWords).toEqual(['Bob_Style_v2_1']);
    expect((await prepare(job)).triggerWord).toBe('Bob_Style_v2_1');
  });
});

describe("dataset size: refused only when the engine cannot train on it", () => {
  it.each(['SDXL', 'FLUX', 'WAN'])('%s trains on 1 image with a warning, refuses 0, warns below 20', async (modelType) => {
    const one = await prepare(gpuJob(modelType), { ...bobDataset, images: images(1) });
    expect(one.warnings).toEqual([expect.stringMatching(/has 1 images?( and videos)?; .* about 20 .*Training goes ahead/)]);
    const e = await refusal(gpuJob(modelType), { ...bobDataset, images: [] });
    expect(e.failureClass).toBe('dataset');
    expect(e.userMessage).toMatch(/has 0 .*needs at least 1/);
    expect((await prepare(gpuJob(modelType), { ...bobDataset, images: images(20) })).warnings).toEqual([]);
  });

  it('the limit above is our download limit, said as such', () => {
    const r = datasetSizeCheck(getRecipe('sdxl-lora'), { imageCount: 1001 });
    expect(r.error).toMatch(/downloads at most 1000/);
    expect(datasetSizeCheck(getRecipe('wan-lora'), { imageCount: 1, videoCount: 1 }).warnings[0]).toMatch(/has 2 images and videos/);
  });
});

describe('what the platform reads about a charged job', () => {
  it("estimatedCostPoints is the quote; the live cost row's rate is the billed one (GPU rate plus fee), the GPU named", async () => {
    const p = await prepare(gpuJob('FLUX'), { ...bobDataset, images: images(20) });
    const fields = platformCostFields(p.quote, p.recipe, { name: 'NVIDIA H100 80GB HBM3' });
    expect(fields).toEqual({ estimatedCostPoints: p.quote.points, gpuType: 'NVIDIA H100 80GB HBM3', gpuHourlyRate: p.quote.gpuUsdPerHour * (1 + p.quote.platformFee) });
    // An hour of training costs, in the UI's "cost so far", what settlement charges for an hour.
    expect(Math.round(fields.gpuHourlyRate / 0.000337)).toBe(Math.round((p.quote.gpuUsdPerHour * 1.2) / 0.000337));
    expect(platformCostFields(p.quote, p.recipe).gpuType).toBe('24 GB GPU');
    expect(platformCostFields(p.quote, p.recipe, 'cpu').gpuType).toBe('CPU');
    expect(platformCostFields((await prepare(platformJob())).quote, getRecipe('smoke-cpu')).gpuType).toBe('CPU');
  });
});

describe('hostile datasets are refused by the offline checks, before the charge', () => {
  const own = `${storageConfig.endpoint}/${storageConfig.buckets.datasets.bucket}`;
  it.each([
    ['the cloud metadata address', 'http://169.254.169.254/latest/meta-data/iam/security-credentials/', /169\.254\.169\.254.*cloud metadata address/],
    ['a loopback port (the database)', 'http://127.0.0.1:27017/x.png', /loopback address/],
    ['localhost', 'http://localhost:5000/v2/_catalog', /this machine/],
    ['a loopback written as a number', 'http://2130706433/x.png', /loopback address/],
    ['IPv6 loopback', 'http://[::1]:9000/x.png', /loopback address/],
    ['a private address', 'http://10.0.0.5/x.png', /private address/],
    ['file://', 'file:///etc/passwd', /scheme 'file:'/],
    ['gopher://', 'gopher://127.0.0.1:6379/_INFO', /scheme 'gopher:'/],
    ['credentials in the URL', 'https://admin:hunter2@cdn.example/x.png', /carries credentials/],
    ['an allow-listed host on another port', 'https://cdn.example:8443/x.png', /port 8443/],
    ['a host nobody allowed', 'https://evil.example/x.png', /neither one of our buckets nor allow-listed/],
    ['a key traversal in our bucket', `${own}/..%2Fmodels%2Floras%2Fx.safetensors`, /key that is not allowed/],
    ['an entry that is not a URL', { url: 'https://cdn.example/x.png' }, /not a URL string/],
  ])('%s', async (_what, url, reason) => {
    const e = await refusal(platformJob(), { ...bobDataset, images: [...images(3), url] });
    expect(e.failureClass).toBe('dataset');
    expect(e.userMessage).toMatch(/^The dataset cannot be used: Image 4 /);
    expect(e.userMessage).toMatch(reason);
    expect(e.userMessage).toMatch(/Nothing was charged\.$/);
    expect(e.userMessage).not.toMatch(/hunter2/);
  });

  it('a concept job whose control image points at the metadata address is refused the same way', async () => {
    const controls = { type: 'control', status: 'completed', results: [...images(3).map((u) => ({ value: u.replace('img', 'ctl') })), { value: 'http://169.254.169.254/latest/meta-data/' }] };
    const e = await refusal(gpuJob('KONTEXT', { trainingMode: 'concept' }), { ...bobDataset, images: images(4), embellishments: [controls] });
    expect(e.failureClass).toBe('dataset');
    expect(e.userMessage).toMatch(/^A control image cannot be used: Control image 4 .*cloud metadata address.*Nothing was charged\.$/);
  });

  it('declared sizes and image lists of the wrong shape', async () => {
    expect((await refusal(platformJob(), { ...bobDataset, sizeBytes: 10 * 1024 ** 4 })).userMessage).toMatch(/declares 10995116277760 bytes; the limit is/);
    expect((await refusal(platformJob(), { ...bobDataset, images: 'https://cdn.example/x.png' })).userMessage).toMatch(/has 0 images/);
  });

  it('counts every problem it found', async () => {
    const e = await refusal(platformJob(), { ...bobDataset, images: ['file:///a', 'file:///b', 'https://cdn.example/ok.png'] });
    expect(e.userMessage).toMatch(/Image 1 .*\(1 more problem after this one\)/);
  });
});
