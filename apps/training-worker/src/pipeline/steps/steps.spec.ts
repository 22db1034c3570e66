/**
 * The pipeline steps against in-memory fakes of their ports: no services.
 * The real adapters are covered by their own suites and by the worker's
 * end-to-end tests (test/*.e2e.spec.ts).
 */
import { ObjectId } from 'mongodb';
import { UserCoreReader, type DatasetRepository, type Lease, type ProgressUpdate, type TrainingJobDoc, type TrainingJobRepository } from '@stationthis/db';
import { InMemoryPointsLedger } from '@stationthis/points/testing';
import { loadStorageConfig } from '@stationthis/storage';
import { InMemoryDatasetFetch } from '@stationthis/storage/testing';
import { createLogger } from '../../observability/logger';
import { AttemptWriter } from '../attempt-writer';
import { CancelRequested, JobFailure, LeaseLost } from '../failures';
import { JobContext } from '../job-context';
import { trainingRequestFromJob } from '../training-request';
import type { Attempt } from './attempt';
import { AttemptAlreadySettled, ChargeStep } from './charge-step';
import { PrepareStep } from './prepare-step';
import { deviceOf } from './train-step';

const OWNER = '64b000000000000000000001';
const OTHER = '64b000000000000000000002';
const DATASET = '64b0000000000000000000d1';
const images = (n: number) => Array.from({ length: n }, (_, i) => `https://cdn.example/img-${i}.png`);
const log = createLogger('silent');

function job(over: Partial<TrainingJobDoc> = {}): TrainingJobDoc {
  return { _id: new ObjectId(), status: 'PROVISIONING', modelType: 'SMOKE', ownerAccountId: new ObjectId(OWNER), datasetId: new ObjectId(DATASET), triggerWord: 'sks_dog', attempts: 1, ...over } as unknown as TrainingJobDoc;
}

/** The job repository's fenced writes, in memory; `fence` false plays a lost lease. */
class FakeJobs {
  fence = true;
  state: Record<string, unknown> = {};
  transitions: { to: string; fields: Record<string, unknown> }[] = [];
  progress: ProgressUpdate[] = [];
  refundsCleared: string[] = [];
  async setPipelineState(_l: Lease, patch: Record<string, unknown>) {
    if (this.fence) Object.assign(this.state, patch);
    return this.fence;
  }
  /** The attempt record's fenced state write (same fence in this fake). */
  async setState(_r: unknown, patch: Record<string, unknown>) {
    return this.setPipelineState(null as never, patch);
  }
  async transition(_l: Lease, to: string, fields: Record<string, unknown> = {}) {
    if (this.fence) this.transitions.push({ to, fields });
    return this.fence;
  }
  jobFields: Record<string, unknown> = {};
  cancelled = false;
  async setJobFields(_l: Lease, fields: Record<string, unknown>) {
    if (this.fence) Object.assign(this.jobFields, fields);
    return this.fence;
  }
  async leaseState() {
    return this.cancelled ? 'cancelled' : 'lost';
  }
  async updateProgress(_l: Lease, p: ProgressUpdate) {
    if (this.fence) this.progress.push(p);
    return this.fence;
  }
  async clearRefundDue(id: string) {
    this.refundsCleared.push(id);
  }
}

function attempt(doc: TrainingJobDoc, jobs = new FakeJobs()): Attempt & { jobs: FakeJobs } {
  const ctx = new JobContext(doc, { jobId: String(doc._id), attemptId: 'a1', workerId: 'w1' }, log);
  const ref = { jobId: String(doc._id), platformAttempt: 0, owner: 'a1' };
  return { ctx, ref, jobs, writer: new AttemptWriter(jobs as unknown as TrainingJobRepository, jobs, ctx, ref, 1000), request: trainingRequestFromJob(doc), state: {} };
}

const datasets = (doc: Record<string, unknown> | null) => ({ findById: async () => doc }) as unknown as DatasetRepository;
/** The storage port's offline checks (real rules, in memory); cdn.example is allow-listed. */
const sources = new InMemoryDatasetFetch(loadStorageConfig({ DATASET_ALLOWED_HOSTS: 'cdn.example' }));
/** The real reader over an in-memory userCore holding OWNER (wallet 0xowner). */
const accounts = new UserCoreReader({ collection: () => ({ findOne: async (q: { _id: unknown }) => (String(q._id) === OWNER ? { _id: new ObjectId(OWNER), wallets: [{ address: '0xOWNER', isPrimary: true }] } : null) }) } as never);

describe('trainingRequestFromJob: the one mapper of platform documents', () => {
  it('reads ObjectId or string ids, legacy userId, and modelType or baseModel', () => {
    const r = trainingRequestFromJob(job({ ownerAccountId: undefined, userId: OTHER, modelType: undefined, baseModel: 'SDXL', walletAddress: '0xABC' } as never));
    expect(r).toMatchObject({ ownerAccountId: OTHER, modelType: 'SDXL', datasetId: DATASET, walletAddress: '0xABC', attempts: 1 });
  });

  it('takes the trigger word from triggerWord, else triggerWords[0]', () => {
    expect(trainingRequestFromJob(job({ triggerWord: undefined, triggerWords: ['tw1', 'tw2'] } as never)).rawTriggerWord).toBe('tw1');
    expect(trainingRequestFromJob(job({ triggerWord: undefined, triggerWords: ['tw1'] } as never)).resultTriggerWords).toEqual(['tw1']);
    expect(trainingRequestFromJob(job({ triggerWord: undefined } as never)).rawTriggerWord).toBe('');
  });
});

describe('PrepareStep', () => {
  const ok = { _id: DATASET, ownerAccountId: new ObjectId(OWNER), images: images(6), visibility: 'private' };
  const prepare = (doc: Record<string, unknown> | null, over: Partial<TrainingJobDoc> = {}) => new PrepareStep(datasets(doc), accounts, sources).run(trainingRequestFromJob(job(over)));

  it('validates and quotes a good job', async () => {
    const p = await prepare(ok, { parameters: { steps: 100 } } as never);
    expect(p.recipe.id).toBe('smoke-cpu');
    expect(p.triggerWord).toBe('sks_dog');
    expect(p.quote.points).toBeGreaterThan(0);
    expect(p.quote.platformFee).toBeGreaterThan(0);
  });

  it.each([
    ['an unknown model type', ok, { modelType: 'NOPE' }, 'user-input', /Unsupported model type "NOPE"/],
    ['invalid parameters', ok, { parameters: { steps: -1 } }, 'user-input', /Invalid training parameters: parameters\.steps: Too small/],
    ['an unusable trigger word', ok, { triggerWord: '!!!' }, 'user-input', /trigger word "!!!" cannot be used/],
    ['no dataset', ok, { datasetId: undefined }, 'user-input', /has no dataset/],
    ['a deleted dataset', null, {}, 'dataset', /does not exist/],
    ["another account's private dataset", { ...ok, ownerAccountId: new ObjectId(OTHER) }, {}, 'dataset', /private to another account/],
    ['too few images', { ...ok, images: [] }, {}, 'dataset', /has 0 images/],
  ] as const)('refuses %s before anything is charged', async (_what, doc, over, cls, message) => {
    const err = await prepare(doc as never, over as never).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(JobFailure);
    expect((err as JobFailure).failureClass).toBe(cls);
    expect((err as JobFailure).userMessage).toMatch(message);
  });

  it('accepts a dataset shared with the owner, public or unlisted', async () => {
    for (const doc of [{ ...ok, ownerAccountId: OTHER, accessControl: [new ObjectId(OWNER)] }, { ...ok, ownerAccountId: OTHER, visibility: 'public' }, { ...ok, ownerAccountId: OTHER, visibility: 'unlisted' }]) {
      await expect(prepare(doc)).resolves.toMatchObject({ recipe: { id: 'smoke-cpu' } });
    }
  });
});

describe('PrepareStep: Kontext and operator-only families', () => {
  const ctl = (n: number) => `https://cdn.example/ctl-${n}.png`;
  const base = { _id: DATASET, ownerAccountId: new ObjectId(OWNER), images: images(3), visibility: 'private' };
  const controlSet = (values: (string | null)[], extra: Record<string, unknown> = {}) => ({ _id: 'c1', type: 'control', status: 'completed', results: values.map((v) => (v ? { value: v } : null)), ...extra });
  const kontext = (doc: Record<string, unknown>, over: Record<string, unknown> = {}) =>
    new PrepareStep(datasets(doc), accounts, sources).run(trainingRequestFromJob(job({ modelType: 'KONTEXT', ...over } as never)));

  it('takes a KONTEXT job: style_subject by default, with the blank control', async () => {
    const p = await kontext(base);
    expect(p.recipe.id).toBe('kontext-lora');
    expect(p.parameters).toMatchObject({ trainingMode: 'style_subject', steps: 3000, loraRank: 16 });
    expect(p.controls).toEqual({ need: { source: 'blank' } });
  });

  it('pairs a concept job before the charge, from the requested control set, with its prompt', async () => {
    const doc = { ...base, embellishments: [controlSet([ctl(1), ctl(2), ctl(3)], { config: { prompt: 'turn it to winter' } })] };
    const p = await kontext(doc, { trainingMode: 'concept', controlSetId: 'c1' });
    expect(p.controls?.need).toEqual({ source: 'paired' });
    expect(p.controls?.pairing).toMatchObject({ source: 'embellishment:c1 (requested)', prompt: 'turn it to winter' });
    expect(p.controls?.pairing?.pairs.map((x) => x.controlUrl)).toEqual([ctl(1), ctl(2), ctl(3)]);
  });

  it.each([
    ['no control images', {}, /concept training: Concept training needs a control image for every dataset image.*Nothing was charged\./],
    ['a missing control', { embellishments: [controlSet([ctl(1), null, ctl(3)])] }, /1 of 3 images have no control image .*image 2 \(002\.png\).*Nothing was charged\./],
    ['an extra control', { embellishments: [controlSet([ctl(1), ctl(2), ctl(3), ctl(4)])] }, /has 4 results for 3 images.*Nothing was charged\./],
    ['a control on a host outside the allow-list', { embellishments: [controlSet([ctl(1), 'https://evil.example/x.png', ctl(3)])] }, /A control image cannot be used: Control image 2 .*Nothing was charged\./],
  ] as const)('refuses a concept job with %s before anything is charged', async (_what, extra, message) => {
    const err = await kontext({ ...base, ...extra }, { trainingMode: 'concept' }).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(JobFailure);
    expect((err as JobFailure).failureClass).toBe('dataset');
    expect((err as JobFailure).userMessage).toMatch(message);
  });

  it('refuses a requested control set that is not completed, naming it, before anything is charged', async () => {
    const doc = { ...base, embellishments: [{ ...controlSet([ctl(1), ctl(2), ctl(3)]), _id: 'run', status: 'in_progress' }, controlSet([ctl(4), ctl(5), ctl(6)])] };
    const err = await kontext(doc, { trainingMode: 'concept', controlSetId: 'run' }).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(JobFailure);
    expect((err as JobFailure).failureClass).toBe('dataset');
    expect((err as JobFailure).userMessage).toMatch(/concept training: The requested control set "run" is "in_progress", not completed.*completed control sets: "c1"\..*Nothing was charged\.$/);
  });

  it('trains concept pairs on the linked generation prompt before the set config prompt', async () => {
    const doc = { ...base, embellishments: [controlSet([ctl(1), ctl(2), ctl(3)], { config: { prompt: 'turn it to winter' } })] };
    const read = jest.fn(async () => 'from the generation');
    const p = await new PrepareStep(datasets(doc), accounts, sources, undefined, undefined, { read }).run(trainingRequestFromJob(job({ modelType: 'KONTEXT', trainingMode: 'concept' } as never)));
    expect(read).toHaveBeenCalledWith(doc, undefined);
    expect(p.controls?.pairing).toMatchObject({ prompt: 'from the generation', promptSource: 'generation-output' });
  });

  it('a later claim of a paid attempt neither probes the pairs again nor re-reads the prompt: it keeps the first claim\'s', async () => {
    const doc = { ...base, embellishments: [controlSet([ctl(1), ctl(2), ctl(3)], { config: { prompt: 'turn it to winter' } })] };
    const read = jest.fn(async () => 'changed since the charge');
    const probe = jest.fn(async () => {
      throw new Error('a paid attempt must not probe');
    });
    const step = new PrepareStep(datasets(doc), accounts, sources, undefined, { probe } as never, { read });
    const request = trainingRequestFromJob(job({ modelType: 'KONTEXT', trainingMode: 'concept' } as never));
    const p = await step.run(request, { paid: true, conceptPrompt: { text: 'from the first claim', source: 'generation-output' } });
    expect(probe).not.toHaveBeenCalled();
    expect(read).not.toHaveBeenCalled();
    expect(p.controls?.pairing).toMatchObject({ prompt: 'from the first claim', promptSource: 'generation-output' });
    // A first claim (nothing paid) probes; a stored "no prompt" is kept as none.
    await expect(step.run(request)).rejects.toThrow(/must not probe/);
    const none = await step.run(request, { paid: true, conceptPrompt: { text: null } });
    expect(none.controls?.pairing?.prompt).toBeUndefined();
  });

  it('refuses an operator-only family unless the worker enables it', async () => {
    const run = (enabled: string[]) => new PrepareStep(datasets(base), accounts, sources, { recipesEnabled: enabled }).run(trainingRequestFromJob(job({ modelType: 'FLUX2_KLEIN_4B' } as never)));
    const err = await run([]).catch((e: unknown) => e);
    expect((err as JobFailure).userMessage).toMatch(/Unsupported model type "FLUX2_KLEIN_4B": .*RECIPES_ENABLED=flux2-klein-lora/);
    await expect(run(['flux2-klein-lora'])).resolves.toMatchObject({ recipe: { id: 'flux2-klein-lora' } });
  });
});

describe('ChargeStep', () => {
  const prepared = async () => new PrepareStep(datasets({ ownerAccountId: OWNER, images: images(6) }), accounts, sources).run(trainingRequestFromJob(job()));

  it('records the quote before charging it once, then the charged flag', async () => {
    const a = attempt(job());
    const ledger = new InMemoryPointsLedger().deposit(OWNER, 1000);
    const p = await prepared();
    const order: string[] = [];
    const set = a.jobs.setPipelineState.bind(a.jobs);
    a.jobs.setPipelineState = async (l, patch) => (order.push(Object.keys(patch).join(',')), set(l, patch));
    const charge = ledger.charge.bind(ledger);
    ledger.charge = async (input) => (order.push('ledger.charge'), charge(input));
    await new ChargeStep(ledger).run(a, p);
    expect(order).toEqual(['quote,accounts,recipeId,recipeVersion', 'ledger.charge', 'charged']);
    expect(a.jobs.state).toMatchObject({ quote: { points: p.quote.points, platformFee: p.quote.platformFee }, charged: true });
    expect(ledger.calls[0]).toMatchObject({ op: 'charge', input: { jobId: a.request.jobId, platformAttempt: 0, masterAccountId: OWNER, points: p.quote.points } });
    expect(await ledger.balance({ masterAccountId: OWNER })).toBe(1000 - p.quote.points);
    // A later attempt with the flag set charges nothing.
    await new ChargeStep(ledger).run(a, p);
    expect(ledger.calls.filter((c) => c.op === 'charge')).toHaveLength(1);
    expect(await ledger.balance({ masterAccountId: OWNER })).toBe(1000 - p.quote.points);
  });

  it('a resumed attempt whose flag a crash lost replays the same charge: one movement', async () => {
    const ledger = new InMemoryPointsLedger().deposit(OWNER, 1000);
    const p = await prepared();
    const doc = job();
    await new ChargeStep(ledger).run(attempt(doc), p);
    // The next claim reads the attempt record without `charged` (the crash hit between the charge and its flag).
    const resumed = attempt(doc);
    await new ChargeStep(ledger).run(resumed, p);
    expect(resumed.jobs.state['charged']).toBe(true);
    expect(await ledger.balance({ masterAccountId: OWNER })).toBe(1000 - p.quote.points);
  });

  it('refuses to train an attempt the ledger already settled (training would be free)', async () => {
    const ledger = new InMemoryPointsLedger().deposit(OWNER, 1000);
    const p = await prepared();
    const doc = job();
    await new ChargeStep(ledger).run(attempt(doc), p);
    await ledger.settle({ jobId: String(doc._id), platformAttempt: 0, usedPoints: 0, reason: 'the sweep refunded it', outcome: 'failed' });
    await expect(new ChargeStep(ledger).run(attempt(doc), p)).rejects.toBeInstanceOf(AttemptAlreadySettled);
    expect(await ledger.balance({ masterAccountId: OWNER })).toBe(1000);
  });

  it('turns an insufficient balance into a user error that says nothing was charged', async () => {
    const a = attempt(job());
    const ledger = new InMemoryPointsLedger().deposit(OWNER, 3);
    const err = await new ChargeStep(ledger).run(a, await prepared()).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(JobFailure);
    expect((err as JobFailure).userMessage).toMatch(/balance is 3.*Nothing was charged/);
    expect(a.jobs.state['charged']).toBeUndefined();
    expect(await ledger.balance({ masterAccountId: OWNER })).toBe(3);
  });
});

describe('AttemptWriter', () => {
  it('moves the status forward only', async () => {
    const a = attempt(job({ status: 'RUNNING' } as never));
    await a.writer.transition('RUNNING');
    await a.writer.transition('FINALIZING');
    await a.writer.transition('RUNNING');
    expect(a.jobs.transitions.map((t) => t.to)).toEqual(['FINALIZING']);
  });

  it('stops the attempt with LeaseLost when the fence refuses a write', async () => {
    const a = attempt(job());
    a.jobs.fence = false;
    await expect(a.writer.setState({ slug: 'x' })).rejects.toBeInstanceOf(LeaseLost);
    expect(a.ctx.stopReason).toBe('lease-lost');
    expect(a.ctx.signal.aborted).toBe(true);
  });

  it("writes the platform's fields on the leased job; a refusal by a cancel stops the attempt as cancelled", async () => {
    const a = attempt(job());
    await a.writer.setJobFields({ estimatedCostPoints: 120, gpuType: 'CPU', gpuHourlyRate: 0.6 });
    expect(a.jobs.jobFields).toEqual({ estimatedCostPoints: 120, gpuType: 'CPU', gpuHourlyRate: 0.6 });
    const cancelled = attempt(job());
    cancelled.jobs.fence = false;
    cancelled.jobs.cancelled = true;
    await expect(cancelled.writer.setJobFields({ gpuType: 'CPU' })).rejects.toBeInstanceOf(CancelRequested);
    expect(cancelled.ctx.stopReason).toBe('cancel');
  });

  it('writes progress at most once per interval, always with the latest values', async () => {
    const a = attempt(job());
    const progress = a.writer.progress();
    for (let step = 1; step <= 50; step++) progress.event({ kind: 'step', step, totalSteps: 100, loss: step / 100 });
    progress.line('last line');
    await progress.flush();
    expect(a.jobs.progress).toHaveLength(2); // the first event at once, the rest coalesced into the flush
    expect(a.jobs.progress[1]).toMatchObject({ currentStep: 50, totalSteps: 100, progress: 50, currentLoss: 0.5, logLines: ['last line'] });
  });
});

// SettleStep: see settlement.spec.ts (decision records, completion order, cancel and late-cancel paths).

describe('deviceOf: the GPU named in the platform cost row', () => {
  const gpu = (name: string, index: number) => ({ index, deviceId: String(index), name, vramGb: 80 });
  it('names the CPU slot, one GPU, or several', () => {
    expect(deviceOf({ cpuSlot: true, devices: [] })).toBe('cpu');
    expect(deviceOf({ cpuSlot: false, devices: [gpu('NVIDIA H100 80GB HBM3', 0)] })).toEqual({ name: 'NVIDIA H100 80GB HBM3' });
    expect(deviceOf({ cpuSlot: false, devices: [gpu('NVIDIA H100 80GB HBM3', 0), gpu('NVIDIA H100 80GB HBM3', 1)] })).toEqual({ name: '2x NVIDIA H100 80GB HBM3' });
  });
});
