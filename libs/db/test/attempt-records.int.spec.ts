/**
 * Attempt records, settle decisions, and the recovery and claim paths that
 * depend on them, against the real server: the platform's own writes (Cancel:
 * `status: CANCELLED` only; Retry: `status: QUEUED, retryCount + 1`) at each
 * stage, a one-time token whose write missed, a claim token without its job
 * update, and the hardware scope of a claim.
 */
import { ObjectId } from 'mongodb';
import {
  attemptKey,
  CLAIM_TOKENS_COLLECTION,
  platformAttemptOf,
  TrainingAttemptRepository,
  TrainingJobRepository,
  type ClaimStrategy,
  type Lease,
} from '../src';
import { openTestDb, type TestDb } from './helpers';

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

describe('attempt records and recovery (real server)', () => {
  let t: TestDb;
  let repo: TrainingJobRepository;
  let attempts: TrainingAttemptRepository;
  const jobs = () => t.db.collection('trainingJobs');
  const enqueue = (extra: Record<string, unknown> = {}) =>
    repo.enqueue({ ownerAccountId: new ObjectId(), datasetId: new ObjectId(), name: 'lora', baseModel: 'SMOKE', modelType: 'SMOKE', extra });
  const claim = (workerId: string, leaseMs = 60_000) => repo.claimNext({ workerId, environment: 'production', leaseMs });
  const platformCancel = (id: string) => jobs().updateOne({ _id: new ObjectId(id) }, { $set: { status: 'CANCELLED', updatedAt: new Date() } });
  const platformRetry = async (id: string) => {
    const job = await repo.findById(id);
    await jobs().updateOne(
      { _id: new ObjectId(id), status: 'FAILED' },
      { $set: { status: 'QUEUED', error: null, errorMessage: null, retryCount: platformAttemptOf(job!) + 1, progress: 0, currentStep: 0, startedAt: null, completedAt: null, environment: 'production' } },
    );
  };

  // Short token staleness so the take-over tests wait seconds, not 30 s.
  const options = { candidateTtlMs: 0, maxAttempts: 2, tokenStaleMs: 2500 } as const;

  beforeAll(async () => {
    t = await openTestDb('db_attempts');
  });
  beforeEach(async () => {
    for (const c of ['trainingJobs', 'trainingJobAttempts', 'trainingJobSettlements', CLAIM_TOKENS_COLLECTION]) await t.db.collection(c).deleteMany({});
    repo = new TrainingJobRepository(t.db, options);
    attempts = new TrainingAttemptRepository(t.db);
    await repo.ensureIndexes();
    await attempts.ensureIndexes();
  });
  afterAll(() => t.drop());

  it('setJobFields writes the platform-read fields only under our lease, and refuses lifecycle fields', async () => {
    const id = await enqueue();
    const { lease } = (await claim('w-fields'))!;
    const cost = { estimatedCostPoints: 42, gpuType: 'CPU', gpuHourlyRate: 0.12 };
    expect(await repo.setJobFields(lease, cost)).toBe(true);
    expect(await repo.findById(id)).toMatchObject({ ...cost, status: 'PROVISIONING' });
    // Status, lease and the like belong to the lifecycle writes, never to a plain field write.
    await expect(repo.setJobFields(lease, { status: 'COMPLETED' })).rejects.toThrow(/managed by the job lifecycle/);
    expect((await repo.findById(id))!.status).toBe('PROVISIONING');
    // A stale lease (another attempt id) writes nothing.
    expect(await repo.setJobFields({ ...lease, attemptId: 'not-mine' }, { estimatedCostPoints: 1 })).toBe(false);
    // After the platform's Cancel the job is no longer ours to describe.
    await platformCancel(id);
    expect(await repo.setJobFields(lease, { estimatedCostPoints: 7 })).toBe(false);
    expect((await repo.findById(id))!.estimatedCostPoints).toBe(42);
  });

  it('one record per platform attempt: a Retry opens a new one, counts worker attempts from 0, and never sees the old state', async () => {
    const id = await enqueue({ pipeline: { charged: true, settleIntent: { outcome: 'completed', usedPoints: 1e6 } } });
    const first = (await claim('A', 30))!;
    const rec0 = (await attempts.open(first.lease, first.job))!;
    expect(rec0).toMatchObject({ _id: attemptKey(id, 0), platformAttempt: 0, owner: first.lease.attemptId, baseAttempts: 0, state: {} });
    expect(await attempts.setState({ jobId: id, platformAttempt: 0, owner: first.lease.attemptId }, { charged: true, slug: 's0' }, { open: true })).toBe(true);
    // Two expiries use both attempts: FAILED with refundDue.
    await sleep(60);
    expect((await repo.recoverExpiredLeases()).requeued).toEqual([id]);
    const second = (await claim('B', 30))!;
    expect((await attempts.open(second.lease, second.job))!.state).toMatchObject({ charged: true });
    await sleep(60);
    expect((await repo.recoverExpiredLeases()).failed).toEqual([id]);
    expect(await repo.findById(id)).toMatchObject({ status: 'FAILED', refundDue: true, failureReason: expect.stringMatching(/2 of 2 attempts/) });

    await platformRetry(id);
    const third = (await claim('C', 30))!;
    expect(third.job.attempts).toBe(3);
    const rec1 = (await attempts.open(third.lease, third.job))!;
    expect(rec1).toMatchObject({ _id: attemptKey(id, 1), platformAttempt: 1, baseAttempts: 2, state: {} });
    // Attempts are counted per platform attempt: one expiry re-queues (1 of 2 used), it does not fail at once.
    await sleep(60);
    expect((await repo.recoverExpiredLeases()).requeued).toEqual([id]);
    const old = (await attempts.find(id, 0))!.state;
    expect(old).toMatchObject({ charged: true });
    expect(old.slug).toBeUndefined(); // dropped at B's takeover: never uploaded under it
  });

  it('a newer claim takes the record over: the stale owner can no longer write or decide, and its unrecorded slug is dropped', async () => {
    const id = await enqueue();
    const a = (await claim('A', 30))!;
    await attempts.open(a.lease, a.job);
    const refA = { jobId: id, platformAttempt: 0, owner: a.lease.attemptId };
    expect(await attempts.setState(refA, { quote: { points: 50, estimatedSeconds: 1, gpuUsdPerHour: 1 }, slug: 'slug-a' }, { open: true })).toBe(true);
    await sleep(60);
    await repo.recoverExpiredLeases();
    const b = (await claim('B', 60_000))!;
    const recB = (await attempts.open(b.lease, b.job))!;
    expect(recB.owner).toBe(b.lease.attemptId);
    expect(recB.state.slug).toBeUndefined(); // never two uploads to one key
    expect(recB.state.quote).toMatchObject({ points: 50 }); // the charge plan carries over
    expect(await attempts.setState(refA, { slug: 'late' })).toBe(false);
    expect(await attempts.decide(id, 0, { outcome: 'completed', usedPoints: 50, reason: 'stale' }, { owner: a.lease.attemptId })).toBeNull();
    // The stale claim cannot take the record back either.
    expect(await attempts.open(a.lease, { ...a.job, claimSeq: 1 })).toBeNull();
  });

  it('checkpoints are recorded once per step, in order, and only by the owner', async () => {
    const id = await enqueue();
    const a = (await claim('A', 30))!;
    await attempts.open(a.lease, a.job);
    const refA = { jobId: id, platformAttempt: 0, owner: a.lease.attemptId };
    const cp = (step: number, loraKey = `k-${step}`) => ({ step, loss: 0.5, loraKey, loraUrl: `u/${loraKey}`, sha256: 'a'.repeat(64), autov2: 'aaaaaaaaaa', bytes: 10, sampleKeys: [], sampleUrls: [], storedAt: new Date() });
    expect(await attempts.recordCheckpoint(refA, cp(10))).toBe('recorded');
    expect(await attempts.recordCheckpoint(refA, cp(20))).toBe('recorded');
    expect(await attempts.recordCheckpoint(refA, cp(10, 'again'))).toBe('duplicate');
    // A resumed attempt (a newer claim) sees the earlier checkpoints and cannot record a step twice either.
    await sleep(60);
    await repo.recoverExpiredLeases();
    const b = (await claim('B', 60_000))!;
    await attempts.open(b.lease, b.job);
    const refB = { jobId: id, platformAttempt: 0, owner: b.lease.attemptId };
    expect(await attempts.recordCheckpoint(refA, cp(30, 'stale'))).toBe('not-owner');
    expect(await attempts.recordCheckpoint(refB, cp(20, 'again'))).toBe('duplicate');
    expect(await attempts.recordCheckpoint(refB, cp(30))).toBe('recorded');
    const rec = (await attempts.find(id, 0))!;
    expect(rec.state.checkpoints!.map((c) => [c.step, c.loraKey])).toEqual([[10, 'k-10'], [20, 'k-20'], [30, 'k-30']]);
  });

  it('resume state: only the owner records it, and only over a lower step', async () => {
    const id = await enqueue();
    const a = (await claim('A', 30))!;
    await attempts.open(a.lease, a.job);
    const refA = { jobId: id, platformAttempt: 0, owner: a.lease.attemptId };
    const st = (step: number, by = a.lease.attemptId) => ({ step, key: `s-${step}-${by}`, bytes: 1, sha256: 'b'.repeat(64), stateDir: `st-${step}`, engine: 'smoke-cpu@1#img', uploadedBy: by, storedAt: new Date() });
    expect(await attempts.recordResumeState(refA, st(20))).toBe(true);
    expect(await attempts.recordResumeState(refA, st(10))).toBe(false); // a slower, older upload never wins
    expect(await attempts.recordResumeState(refA, st(20))).toBe(false);
    expect(await attempts.recordResumeState(refA, st(30))).toBe(true);
    await sleep(60);
    await repo.recoverExpiredLeases();
    const b = (await claim('B', 60_000))!;
    expect((await attempts.open(b.lease, b.job))!.state.resumeState).toMatchObject({ step: 30, uploadedBy: a.lease.attemptId });
    expect(await attempts.recordResumeState(refA, st(40))).toBe(false); // the old owner lost the record
    expect(await attempts.recordResumeState({ ...refA, owner: b.lease.attemptId }, st(40, b.lease.attemptId))).toBe(true);
    expect((await attempts.find(id, 0))!.state.resumeState).toMatchObject({ step: 40, uploadedBy: b.lease.attemptId });
  });

  it('the settle decision is recorded once: later deciders (worker or sweep) follow the first', async () => {
    const id = await enqueue();
    const a = (await claim('A'))!;
    await attempts.open(a.lease, a.job);
    const results = await Promise.all([
      attempts.decide(id, 0, { outcome: 'cancelled', usedPoints: 7, reason: 'worker' }, { owner: a.lease.attemptId }),
      attempts.decide(id, 0, { outcome: 'failed', usedPoints: 0, reason: 'sweep' }, { sweep: 'w2' }),
      attempts.decide(id, 0, { outcome: 'failed', usedPoints: 0, reason: 'sweep' }, { sweep: 'w3' }),
    ]);
    expect(results.filter((r) => r?.ours)).toHaveLength(1);
    const inForce = results.find((r) => r?.ours)!.decision;
    for (const r of results) expect(r!.decision).toMatchObject({ outcome: inForce.outcome, reason: inForce.reason });
    expect(await attempts.findDecision(id, 0)).toMatchObject({ outcome: inForce.outcome });
  });

  it('platform Cancel keeps our lease: leaseState says cancelled, the owner can end it CANCELLED; COMPLETED is refused', async () => {
    const id = await enqueue();
    const a = (await claim('A'))!;
    await repo.transition(a.lease, 'RUNNING');
    await repo.transition(a.lease, 'FINALIZING');
    await platformCancel(id);
    expect(await repo.leaseState(a.lease)).toBe('cancelled');
    expect(await repo.complete(a.lease, { actualCostPoints: 9 })).toBe(false);
    expect(await repo.cancelComplete(a.lease, { actualCostPoints: 3, costReconciled: true })).toBe(true);
    const doc = await repo.findById(id);
    expect(doc).toMatchObject({ status: 'CANCELLED', actualCostPoints: 3 });
    expect(doc!.completedAt).toBeInstanceOf(Date);
  });

  it('a CANCELLED written over COMPLETED is restored to COMPLETED with the late cancel recorded', async () => {
    const id = await enqueue();
    const a = (await claim('A'))!;
    await repo.transition(a.lease, 'RUNNING');
    await repo.transition(a.lease, 'FINALIZING');
    expect(await repo.complete(a.lease, { actualCostPoints: 9 })).toBe(true);
    expect(await repo.findById(id)).toMatchObject({ status: 'COMPLETED', refundDue: true });
    await platformCancel(id);
    expect(await repo.restoreCompleted(id, 'someone-else')).toBe(false);
    expect(await repo.restoreCompleted(id, a.lease.attemptId)).toBe(true);
    expect(await repo.recordSettled(id, 0, {})).toBe(true);
    const doc = await repo.findById(id);
    expect(doc).toMatchObject({ status: 'COMPLETED', refundDue: false, costReconciled: true, actualCostPoints: 9 });
    expect(doc!.lateCancelAt).toBeInstanceOf(Date);
  });

  it('recovery re-queues an attempt past its point of no return (model registered) even with no attempts left', async () => {
    repo = new TrainingJobRepository(t.db, { ...options, maxAttempts: 1 });
    const id = await enqueue();
    const a = (await claim('A', 30))!;
    await attempts.open(a.lease, a.job);
    await attempts.setState({ jobId: id, platformAttempt: 0, owner: a.lease.attemptId }, { loraModelId: new ObjectId().toHexString() });
    await sleep(60);
    expect((await repo.recoverExpiredLeases()).requeued).toEqual([id]);
    expect(await repo.findById(id)).toMatchObject({ status: 'QUEUED', lastRecoveryReason: expect.stringMatching(/re-queued to finish/) });
  });

  it('a recovery token whose write missed is handed back, and a dead recoverer\'s token is taken over', async () => {
    const id = await enqueue();
    const a = (await claim('A', 30))!;
    await sleep(60);
    // A recoverer that died after its token: the next pass skips it until the token is stale, then recovers.
    const expiresAt = (await repo.findById(id))!.lease!.expiresAt.getTime();
    await t.db.collection(CLAIM_TOKENS_COLLECTION).insertOne({ _id: `recover:${a.lease.attemptId}:${expiresAt}` as never, at: new Date() });
    expect((await repo.recoverExpiredLeases()).requeued).toEqual([]);
    await sleep(2600);
    expect((await repo.recoverExpiredLeases()).requeued).toEqual([id]);
  });

  it('recovery pages through every expired lease (no batch limit hides jobs)', async () => {
    const ids: string[] = [];
    for (let i = 0; i < 12; i++) ids.push(await enqueue());
    for (let i = 0; i < 12; i++) await claim(`w${i}`, 20);
    await sleep(60);
    expect((await repo.recoverExpiredLeases()).requeued.sort()).toEqual(ids.sort());
  });

  it.each<ClaimStrategy>(['candidate-batch', 'sorted-find-and-modify'])('a claim token without its job update does not wedge the job, and claimNext returns (%s)', async (claimStrategy) => {
    repo = new TrainingJobRepository(t.db, { ...options, claimStrategy });
    const id = await enqueue();
    // A claimer won generation 1 and died before updating the job.
    await t.db.collection(CLAIM_TOKENS_COLLECTION).insertOne({ _id: `claim:${id}:1` as never, at: new Date() });
    const started = Date.now();
    const first = await claim('A');
    expect(Date.now() - started).toBeLessThan(5000);
    if (claimStrategy === 'candidate-batch') {
      expect(first).toBeNull(); // the token is fresh: nothing claimable right now, and the call returns
      await sleep(2600);
    }
    const got = claimStrategy === 'candidate-batch' ? await claim('A') : first;
    expect(got?.lease.jobId).toBe(id);
  });

  it('claims only model types the worker can run, plus unknown types (to fail them)', async () => {
    const sdxl = await repo.enqueue({ ownerAccountId: new ObjectId(), datasetId: new ObjectId(), name: 'x', baseModel: 'SDXL', modelType: 'SDXL' });
    const smoke = await enqueue();
    const legacy = await repo.enqueue({ ownerAccountId: new ObjectId(), datasetId: new ObjectId(), name: 'y', baseModel: 'smoke' });
    await jobs().updateOne({ _id: new ObjectId(legacy) }, { $unset: { modelType: '' } });
    const unknown = await repo.enqueue({ ownerAccountId: new ObjectId(), datasetId: new ObjectId(), name: 'z', baseModel: 'KONTEXT', modelType: 'KONTEXT' });
    const modelTypes = { runnable: ['SMOKE'], known: ['SDXL', 'FLUX', 'WAN', 'SMOKE'] };
    const got: string[] = [];
    for (let c = await repo.claimNext({ workerId: 'cpu', environment: 'production', leaseMs: 60_000, modelTypes }); c; c = await repo.claimNext({ workerId: 'cpu', environment: 'production', leaseMs: 60_000, modelTypes })) got.push(c.lease.jobId);
    expect(got.sort()).toEqual([smoke, legacy, unknown].sort());
    expect((await repo.findById(sdxl))!.status).toBe('QUEUED');
  });

  it('the fenced lease checks: heartbeat keeps a cancelled job alive for its owner only', async () => {
    const id = await enqueue();
    const a = (await claim('A'))!;
    const other: Lease = { ...a.lease, attemptId: 'stale' };
    await platformCancel(id);
    expect(await repo.heartbeat(a.lease, 1000)).toBe(true);
    expect(await repo.heartbeat(other, 1000)).toBe(false);
    expect(await repo.leaseState(other)).toBe('lost');
  });
});
