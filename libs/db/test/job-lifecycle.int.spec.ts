import { ObjectId } from 'mongodb';
import { LOG_TAIL_LINES, TrainingJobRepository, type ClaimStrategy, type Lease } from '../src';
import { openTestDb, type TestDb } from './helpers';

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

describe('TrainingJobRepository lifecycle (real server)', () => {
  let t: TestDb;
  let repo: TrainingJobRepository;
  const jobs = () => t.db.collection('trainingJobs');
  const enqueue = (extra: Partial<Parameters<TrainingJobRepository['enqueue']>[0]> = {}) =>
    repo.enqueue({ ownerAccountId: new ObjectId(), datasetId: new ObjectId(), name: 'my lora', baseModel: 'FLUX', ...extra });
  const claim = (workerId: string, leaseMs = 60_000, environment: 'production' | 'development' = 'production') =>
    repo.claimNext({ workerId, environment, leaseMs });

  beforeAll(async () => {
    t = await openTestDb('db_lifecycle');
  });
  beforeEach(async () => {
    await jobs().deleteMany({});
    repo = new TrainingJobRepository(t.db, { candidateTtlMs: 0 });
    await repo.ensureIndexes();
  });
  afterAll(() => t.drop());

  it('enqueue writes the platform shape: string ids, no null keys, QUEUED', async () => {
    const owner = new ObjectId();
    const id = await enqueue({ ownerAccountId: owner, triggerWord: 'sks', steps: 1000 });
    const doc = await jobs().findOne({ _id: new ObjectId(id) });
    expect(doc).toMatchObject({
      userId: owner.toHexString(),
      ownerAccountId: owner.toHexString(),
      modelName: 'my lora',
      status: 'QUEUED',
      progress: 0,
      triggerWords: ['sks'],
      environment: 'production',
    });
    expect(typeof doc!['datasetId']).toBe('string');
    expect(Object.values(doc!).every((v) => v !== null && v !== undefined)).toBe(true);
    await repo.ensureIndexes(); // idempotent
  });

  it.each<ClaimStrategy>(['candidate-batch', 'sorted-find-and-modify'])(
    'claims by priority, then FIFO, within the environment (%s)',
    async (claimStrategy) => {
      repo = new TrainingJobRepository(t.db, { candidateTtlMs: 0, claimStrategy });
      const low1 = await enqueue({ name: 'low1' });
      await sleep(5);
      const dev = await enqueue({ name: 'dev', environment: 'development', priority: 100 });
      const low2 = await enqueue({ name: 'low2' });
      const high = await enqueue({ name: 'high', priority: 10 });
      // a platform-created job: no environment, no priority (adopted as 0 by recovery)
      const legacy = await jobs().insertOne({ ownerAccountId: 'x', userId: 'x', status: 'QUEUED', createdAt: new Date(Date.now() + 1000), datasetId: 'd', name: 'legacy' });
      await repo.recoverExpiredLeases();
      const order: string[] = [];
      for (let got = await claim('w'); got; got = await claim('w')) order.push(got.lease.jobId);
      expect(order).toEqual([high, low1, low2, legacy.insertedId.toHexString()]);
      const devClaim = await claim('w', 60_000, 'development');
      expect(devClaim?.lease.jobId).toBe(dev);
    },
  );

  it('each claim gets a new attemptId, increments attempts and sets PROVISIONING with a lease', async () => {
    const id = await enqueue();
    const got = await claim('w1', 30_000);
    expect(got?.job).toMatchObject({ status: 'PROVISIONING', attempts: 1, lease: { workerId: 'w1', attemptId: got?.lease.attemptId } });
    expect(got!.job.lease!.expiresAt.getTime()).toBeGreaterThan(Date.now() + 20_000);
    expect(got!.lease).toEqual({ jobId: id, attemptId: got!.job.lease!.attemptId, workerId: 'w1' });
  });

  it('lease expiry and fencing: a stale worker cannot write, a second worker takes over', async () => {
    const id = await enqueue();
    const a = (await claim('A', 50))!;
    expect(await repo.transition(a.lease, 'RUNNING')).toBe(true);
    await sleep(120);
    const rec = await repo.recoverExpiredLeases();
    expect(rec.requeued).toEqual([id]);
    const b = (await claim('B', 60_000))!;
    expect(b.lease.jobId).toBe(id);
    expect(b.lease.attemptId).not.toBe(a.lease.attemptId);

    // the stale worker A: every write is rejected
    expect(await repo.heartbeat(a.lease, 60_000)).toBe(false);
    expect(await repo.updateProgress(a.lease, { progress: 99, logLines: ['zombie'] })).toBe(false);
    expect(await repo.setPipelineState(a.lease, { uploaded: true })).toBe(false);
    expect(await repo.transition(a.lease, 'FINALIZING')).toBe(false);
    expect(await repo.complete(a.lease, { modelRepoUrl: 'zombie' })).toBe(false);
    expect(await repo.fail(a.lease, { failureReason: 'zombie', failureClass: 'engine' })).toBe(false);
    expect(await repo.releaseLease(a.lease, 'zombie')).toBe(false);

    // worker B owns it
    expect(await repo.heartbeat(b.lease, 60_000)).toBe(true);
    expect(await repo.transition(b.lease, 'RUNNING')).toBe(true);
    expect(await repo.updateProgress(b.lease, { progress: 40, currentStep: 400, totalSteps: 1000 })).toBe(true);
    expect(await repo.transition(b.lease, 'FINALIZING')).toBe(true);
    expect(await repo.complete(b.lease, { modelRepoUrl: 'b' })).toBe(true);
    const doc = await repo.findById(id);
    expect(doc).toMatchObject({ status: 'COMPLETED', progress: 100, modelRepoUrl: 'b', attempts: 2, leaseExpiries: 1 });
    expect(doc!.logTail ?? []).not.toContain('zombie');
    expect(doc!.completedAt).toBeInstanceOf(Date);
  });

  it('a heartbeat keeps the lease: recovery leaves the job alone', async () => {
    await enqueue();
    const a = (await claim('A', 80))!;
    for (let i = 0; i < 3; i++) {
      await sleep(40);
      expect(await repo.heartbeat(a.lease, 80)).toBe(true);
      expect((await repo.recoverExpiredLeases()).requeued).toEqual([]);
    }
  });

  it('fails with refundDue when the worker\'s attempts are used up (a job document\'s maxAttempts is never read)', async () => {
    repo = new TrainingJobRepository(t.db, { candidateTtlMs: 0, maxAttempts: 1 });
    const exhausted = await enqueue({ maxAttempts: 50 });
    const other = await enqueue();
    const a = (await claim('A', 30))!;
    await claim('B', 30);
    await sleep(80);
    const rec = await repo.recoverExpiredLeases();
    expect(rec.failed.sort()).toEqual([exhausted, other].sort());
    expect(a.lease.jobId).toBe(exhausted);
    const doc = await repo.findById(exhausted);
    expect(doc).toMatchObject({ status: 'FAILED', failureClass: 'infrastructure', refundDue: true });
    expect(doc!.completedAt).toBeInstanceOf(Date);
    expect(doc!.failureReason).toMatch(/1 of 1 attempts/);
    expect((await repo.findRefundsDue()).map((j) => j._id.toHexString()).sort()).toEqual([exhausted, other].sort());
    expect(await repo.clearRefundDue(exhausted)).toBe(true);
    expect(await repo.clearRefundDue(exhausted)).toBe(false);
    expect((await repo.findRefundsDue()).map((j) => j._id.toHexString())).toEqual([other]);
  });

  it('cancel: QUEUED becomes CANCELLED at once; a leased job is flagged and its owner finishes it', async () => {
    const queued = await enqueue();
    const running = await enqueue();
    expect(await repo.requestCancel(queued, 'user')).toBe('cancelled');
    expect((await repo.findById(queued))?.status).toBe('CANCELLED');
    const got = (await claim('A'))!;
    expect(got.lease.jobId).toBe(running);
    expect(await repo.isCancelRequested(got.lease)).toBe(false);
    expect(await repo.requestCancel(running, 'user')).toBe('requested');
    expect(await repo.requestCancel(running, 'user')).toBe('already-requested');
    expect(await repo.isCancelRequested(got.lease)).toBe(true);
    expect(await repo.cancelComplete(got.lease, { actualCostPoints: 5 })).toBe(true);
    expect(await repo.findById(running)).toMatchObject({ status: 'CANCELLED', actualCostPoints: 5, cancelRequestedBy: 'user' });
    expect(await repo.requestCancel(running)).toBe('terminal');
    expect(await repo.requestCancel(new ObjectId().toHexString())).toBe('not-found');
  });

  it('the platform cancel (status set to CANCELLED directly) is observed and fences the worker', async () => {
    const id = await enqueue();
    const got = (await claim('A'))!;
    await jobs().updateOne({ _id: new ObjectId(id) }, { $set: { status: 'CANCELLED' } });
    expect(await repo.isCancelRequested(got.lease)).toBe(true);
    expect(await repo.leaseState(got.lease)).toBe('cancelled');
    // The owner keeps its lease alive while it settles the cancel, but can move the job nowhere but CANCELLED.
    expect(await repo.heartbeat(got.lease, 1000)).toBe(true);
    expect(await repo.transition(got.lease, 'RUNNING')).toBe(false);
    expect(await repo.complete(got.lease)).toBe(false);
    expect(await repo.cancelComplete(got.lease, { actualCostPoints: 0 })).toBe(true);
    expect(await repo.findById(id)).toMatchObject({ status: 'CANCELLED', actualCostPoints: 0 });
  });

  it('an expired job with a pending cancel becomes CANCELLED with refundDue', async () => {
    const id = await enqueue();
    await claim('A', 30);
    await repo.requestCancel(id);
    await sleep(80);
    expect((await repo.recoverExpiredLeases()).cancelled).toEqual([id]);
    expect(await repo.findById(id)).toMatchObject({ status: 'CANCELLED', refundDue: true });
  });

  it('releaseLease hands the job back without using up an attempt', async () => {
    const id = await enqueue({ maxAttempts: 1 });
    const a = (await claim('A'))!;
    expect(await repo.releaseLease(a.lease, 'SIGTERM')).toBe(true);
    expect(await repo.findById(id)).toMatchObject({ status: 'QUEUED', attempts: 0, releases: 1, lease: null, lastReleaseReason: 'SIGTERM' });
    const b = (await claim('B'))!;
    expect(b.job.attempts).toBe(1);
    expect(await repo.heartbeat(a.lease, 1000)).toBe(false);
  });

  it('enforces transitions in the filter and protects lifecycle fields', async () => {
    await enqueue();
    const a = (await claim('A'))!;
    expect(await repo.complete(a.lease)).toBe(false); // PROVISIONING → COMPLETED is not allowed
    await expect(repo.transition(a.lease, 'QUEUED')).rejects.toThrow(/releaseLease/);
    await expect(repo.transition(a.lease, 'RUNNING', { status: 'COMPLETED' })).rejects.toThrow(/managed by the job lifecycle/);
    await expect(repo.transition(a.lease, 'RUNNING', { 'lease.attemptId': 'x' })).rejects.toThrow(/managed/);
    expect(await repo.transition(a.lease, 'RUNNING')).toBe(true);
    expect(await repo.transition(a.lease, 'FINALIZING')).toBe(true);
    expect(await repo.transition(a.lease, 'RUNNING')).toBe(false); // no going back
    await expect(repo.transition(a.lease, 'PROVISIONING')).rejects.toThrow(/only a claim/);
  });

  it('progress: bounded log tail, NaN loss stored as null, clamped percentage', async () => {
    await enqueue();
    const a = (await claim('A'))!;
    for (let i = 0; i < 3; i++) {
      await repo.updateProgress(a.lease, { logLines: Array.from({ length: 30 }, (_, j) => `line ${i * 30 + j}\u001b[0m`) });
    }
    expect(await repo.updateProgress(a.lease, { progress: 250, currentLoss: Number.NaN, etaSeconds: 12 })).toBe(true);
    const doc = (await repo.findById(a.lease.jobId))!;
    expect(doc.logTail).toHaveLength(LOG_TAIL_LINES);
    expect(doc.logTail![LOG_TAIL_LINES - 1]).toBe('line 89');
    expect(doc).toMatchObject({ progress: 100, currentLoss: null, etaSeconds: 12 });
  });

  it('pipeline state patches single keys and keeps the others', async () => {
    await enqueue();
    const a = (await claim('A'))!;
    await repo.setPipelineState(a.lease, { charged: true, quote: 100 });
    await repo.setPipelineState(a.lease, { uploadKey: 'k', quote: 120 });
    expect((await repo.findById(a.lease.jobId))!.pipeline).toEqual({ charged: true, quote: 120, uploadKey: 'k' });
    await expect(repo.setPipelineState(a.lease, { 'a.b': 1 })).rejects.toThrow(/flat key/);
  });

  it('platform documents with extra and legacy fields survive a whole lifecycle untouched', async () => {
    const legacy = {
      userId: 'acc1',
      ownerAccountId: 'acc1',
      name: 'legacy',
      datasetId: 'ds1',
      status: 'QUEUED',
      environment: null,
      createdAt: new Date(),
      updatedAt: new Date(),
      exhaustedOfferIds: [1, 2, 3],
      vastaiInstanceId: 'v-9',
      trainingMode: 'concept',
      hyper: { lr: 0.0001, nested: { keep: ['me'] } },
      retryCount: 2,
      error: null,
    };
    const { insertedId } = await jobs().insertOne({ ...legacy });
    const a = (await claim('A'))!;
    expect(a.lease.jobId).toBe(insertedId.toHexString());
    let lease: Lease = a.lease;
    await repo.heartbeat(lease, 1000);
    await repo.transition(lease, 'RUNNING');
    await repo.updateProgress(lease, { progress: 10, logLines: ['x'] });
    await repo.setPipelineState(lease, { step: 'train' });
    await repo.releaseLease(lease, 'deploy');
    lease = (await claim('B'))!.lease;
    await repo.transition(lease, 'RUNNING');
    await repo.transition(lease, 'FINALIZING');
    await repo.complete(lease, { loraModelId: new ObjectId() });
    const doc = (await jobs().findOne({ _id: insertedId }))!;
    for (const key of ['userId', 'ownerAccountId', 'name', 'datasetId', 'exhaustedOfferIds', 'vastaiInstanceId', 'trainingMode', 'hyper', 'retryCount', 'error', 'createdAt', 'environment'] as const) {
      expect(doc[key]).toEqual(legacy[key]);
    }
    expect(doc['status']).toBe('COMPLETED');
  });

  it('list filters by owner (string or ObjectId form) and status', async () => {
    const owner = new ObjectId();
    await enqueue({ ownerAccountId: owner });
    await enqueue({ ownerAccountId: owner.toHexString() });
    await enqueue();
    expect(await repo.list({ ownerAccountId: owner })).toHaveLength(2);
    expect(await repo.list({ ownerAccountId: owner.toHexString(), status: ['QUEUED'] })).toHaveLength(2);
    expect(await repo.list({ status: 'RUNNING' })).toHaveLength(0);
  });
});
