/**
 * The platform's own writes against a running worker, at every stage, on the
 * real services (FerretDB, MinIO, Docker, the smoke recipe's image):
 *
 * - Cancel (TrainingService.js): `$set: {status: 'CANCELLED', updatedAt}`, nothing else.
 * - Retry (only FAILED): `$set: {status: 'QUEUED', error: null, errorMessage: null,
 *   retryCount: retryCount + 1, progress: 0, currentStep: 0, startedAt: null,
 *   completedAt: null, environment}`.
 *
 * The rule checked by each: the job ends terminal; the user pays at most for
 * what was used, at most once per platform attempt; refunds and credits happen
 * exactly once; a worker that lost its lease writes nothing. Ledger outcomes
 * are asserted exactly, per platform attempt. A stage that lasts only
 * milliseconds is held open by pausing the worker's own repository call at
 * that write (the real adapter runs once the pause is released).
 */
import { ObjectId } from 'mongodb';
import { TrainingAttemptRepository, TrainingJobRepository, type TrainingJobDoc } from '@stationthis/db';
import { usedPoints } from '@stationthis/recipes';
import { createHarness, ensureSmokeImage, Harness, manifestWithSmokeImage } from './harness';

jest.setTimeout(900_000);

const TERMINAL = ['COMPLETED', 'FAILED', 'CANCELLED'];
const CREATOR_SHARE = 0.05;
const TRAINER_SHARE = 0.02;

interface AttemptRecord {
  open: boolean;
  owner: string;
  state: { quote?: { points: number; estimatedSeconds: number; gpuUsdPerHour: number; platformFee?: number }; charged?: boolean; trainSeconds?: number; loraModelId?: string; upload?: unknown; completedWrittenAt?: Date };
}
interface Decision {
  outcome: string;
  usedPoints: number;
  reason: string;
  decidedBy: string;
}

/**
 * Holds the first call of `method` (whose arguments match `when`) until
 * released; `release(value)` returns `value` without calling the adapter.
 */
function pauseBefore<T extends object>(target: T, method: keyof T, when: (...args: unknown[]) => boolean = () => true) {
  const original = (target[method] as unknown as (...args: unknown[]) => Promise<unknown>).bind(target);
  let reached!: () => void;
  const reachedP = new Promise<void>((r) => (reached = r));
  let release!: (value?: unknown) => void;
  const gate = new Promise<unknown>((r) => (release = r));
  let paused = false;
  (target as Record<string, unknown>)[method as string] = async (...args: unknown[]) => {
    if (!paused && when(...args)) {
      paused = true;
      reached();
      const override = await gate;
      if (override !== undefined) return override;
    }
    return original(...args);
  };
  return { reached: reachedP, release };
}

describe('training worker: the platform\'s Cancel and Retry at every stage', () => {
  let h: Harness;
  let missingImageManifest: string;
  beforeAll(async () => {
    await ensureSmokeImage();
    h = await createHarness('platform', { WORKER_MAINTENANCE_MS: '1000' });
    missingImageManifest = await manifestWithSmokeImage(h.stateDir, '127.0.0.1:5000/stationthis/no-such-image:missing');
  });
  afterAll(() => h?.close());

  const oid = (id: string) => new ObjectId(id);
  const platformCancel = (id: string) => h.db.collection('trainingJobs').updateOne({ _id: oid(id) }, { $set: { status: 'CANCELLED', updatedAt: new Date() } });
  async function platformRetry(id: string): Promise<void> {
    const job = await h.job(id);
    const r = await h.db.collection('trainingJobs').updateOne(
      { _id: oid(id), status: 'FAILED' },
      { $set: { status: 'QUEUED', error: null, errorMessage: null, retryCount: ((job.retryCount as number | undefined) ?? 0) + 1, progress: 0, currentStep: 0, startedAt: null, completedAt: null, environment: 'development' } },
    );
    expect(r.matchedCount).toBe(1);
  }
  /**
   * The platform's Cancel, sent again while the job still reads as running: on FerretDB (ADR 0002 fact 2) the
   * worker's concurrent progress write can lose it, and a user would click again. Returns how many were sent.
   */
  async function cancelUntilSeen(id: string): Promise<number> {
    return sendUntilSeen(id, () => platformCancel(id), 'CANCELLED', "the platform's Cancel");
  }
  /** A platform write of `status`, sent again (up to 5 times) while the job does not read it yet (FerretDB fact 2, as above). */
  async function sendUntilSeen(id: string, send: () => Promise<unknown>, status: string, what: string): Promise<number> {
    for (let sent = 1; ; sent++) {
      await send();
      await new Promise((r) => setTimeout(r, 1500));
      if ((await h.job(id)).status === status || sent >= 5) {
        if (sent > 1) console.warn(`${what} was lost ${sent - 1} time(s) to a concurrent worker write (FerretDB fact 2)`);
        return sent;
      }
    }
  }
  const record = async (id: string, pa = 0) => (await h.db.collection('trainingJobAttempts').findOne({ _id: `${id}:${pa}` as never })) as unknown as AttemptRecord | null;
  const decision = async (id: string, pa = 0) => (await h.db.collection('trainingJobSettlements').findOne({ _id: `${id}:${pa}` as never })) as unknown as Decision | null;
  async function waitRecord(id: string, pred: (r: AttemptRecord) => boolean, pa = 0, timeoutMs = 180_000): Promise<AttemptRecord> {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      const r = await record(id, pa);
      if (r && pred(r)) return r;
      if (Date.now() > deadline) throw new Error(`timed out waiting for the attempt record ${id}:${pa}; last ${JSON.stringify(r)}`);
      await new Promise((res) => setTimeout(res, 150));
    }
  }
  /** Terminal, and this platform attempt's points settled (by the worker or the sweep). */
  async function waitSettled(id: string, pa = 0, timeoutMs = 180_000): Promise<{ job: TrainingJobDoc; decision: Decision }> {
    await waitRecord(id, (r) => r.open === false && Boolean(r.state.quote), pa, timeoutMs);
    const job = await h.waitFor(id, (j) => TERMINAL.includes(j.status) && !j.refundDue, timeoutMs);
    const d = await decision(id, pa);
    expect(d).toBeTruthy();
    return { job, decision: d! };
  }
  async function summary(id: string, pa = 0) {
    return h.ledger.jobSummary(id, pa);
  }
  async function setup(points = 5000) {
    const user = await h.seedAccount(points);
    const creator = await h.seedAccount(0);
    const datasetId = await h.seedDataset(creator.owner, { visibility: 'public' });
    return { ...user, creator, datasetId };
  }
  const workerRepos = async (app: ReturnType<Harness['startWorker']>['app']) => {
    const c = (await app).container;
    return { jobs: c.resolve(TrainingJobRepository), attempts: c.resolve(TrainingAttemptRepository) };
  };

  it('Cancel in PROVISIONING after the charge: CANCELLED at once, nothing trained, full refund, completedAt set', async () => {
    const a = await setup();
    const jobId = await h.enqueue({ ownerAccountId: a.owner, datasetId: a.datasetId, walletAddress: a.wallet, parameters: { steps: 2000 } } as never);
    const { app, done } = h.startWorker({ WORKER_EXIT_WHEN_IDLE: 'true' });
    const { jobs } = await workerRepos(app);
    // Hold the attempt right after the charge, at the step marker of the dataset fetch.
    const gate = pauseBefore(jobs, 'updateProgress', (_lease, p) => JSON.stringify(p).includes('fetch-dataset'));
    await waitRecord(jobId, (r) => r.state.charged === true);
    await gate.reached;
    expect((await h.job(jobId)).status).toBe('PROVISIONING');
    // The worker notices within WORKER_CANCEL_POLL_MS (250 ms here); cancelUntilSeen waits longer than that.
    await cancelUntilSeen(jobId);
    gate.release();
    const { job, decision: d } = await waitSettled(jobId);
    await done;
    expect(job.status).toBe('CANCELLED');
    expect(job.completedAt).toBeInstanceOf(Date);
    expect(d).toMatchObject({ outcome: 'cancelled', usedPoints: 0 });
    const s = await summary(jobId);
    const quote = (await record(jobId))!.state.quote!.points;
    expect(s).toMatchObject({ charged: quote, refunded: quote, totalCredited: 0 });
    expect(job.actualCostPoints).toBe(0);
    expect(await h.balance(a.owner, a.wallet)).toBe(5000);
    expect(await h.containersFor(jobId)).toEqual([]);
  });

  it('Cancel in RUNNING: the container stops, the time trained is paid, the rest refunded, nothing credited', async () => {
    const a = await setup();
    const jobId = await h.enqueue({ ownerAccountId: a.owner, datasetId: a.datasetId, walletAddress: a.wallet, parameters: { steps: 2000 } } as never);
    const { done } = h.startWorker({ WORKER_EXIT_WHEN_IDLE: 'true' });
    await h.waitFor(jobId, (j) => j.status === 'RUNNING' && (j.currentStep ?? 0) > 0, 180_000);
    const asked = Date.now();
    await cancelUntilSeen(jobId);
    const { job, decision: d } = await waitSettled(jobId);
    await done;
    expect(Date.now() - asked).toBeLessThan(60_000);
    expect(job.status).toBe('CANCELLED');
    expect(job.completedAt).toBeInstanceOf(Date);
    const charged = (await record(jobId))!.state.quote!.points;
    expect(d.outcome).toBe('cancelled');
    expect(d.usedPoints).toBeLessThanOrEqual(charged);
    const s = await summary(jobId);
    expect(s).toMatchObject({ charged, refunded: charged - d.usedPoints, totalCredited: 0 });
    expect(job.actualCostPoints).toBe(d.usedPoints);
    expect(await h.balance(a.owner, a.wallet)).toBe(5000 - d.usedPoints);
    expect(await h.balance(a.creator.owner, a.creator.wallet)).toBe(0);
    expect(await h.containersFor(jobId)).toEqual([]);
  });

  it('Cancel after registration, before COMPLETED: the cancel wins, the model is withdrawn, the time trained is paid, nothing credited', async () => {
    const a = await setup();
    const jobId = await h.enqueue({ ownerAccountId: a.owner, datasetId: a.datasetId, walletAddress: a.wallet } as never);
    const { app, done } = h.startWorker({ WORKER_EXIT_WHEN_IDLE: 'true' });
    const { jobs } = await workerRepos(app);
    const gate = pauseBefore(jobs, 'complete');
    await gate.reached;
    const rec = (await record(jobId))!;
    expect(rec.state.loraModelId).toBeDefined();
    await cancelUntilSeen(jobId);
    gate.release();
    const { job, decision: d } = await waitSettled(jobId);
    await done;
    const used = usedPoints(rec.state.quote!, rec.state.trainSeconds ?? 0);
    expect(job.status).toBe('CANCELLED');
    expect(d).toMatchObject({ outcome: 'cancelled', usedPoints: used });
    const s = await summary(jobId);
    expect(s).toMatchObject({ charged: rec.state.quote!.points, refunded: rec.state.quote!.points - used, totalCredited: 0 });
    expect(job.actualCostPoints).toBe(used);
    expect(await h.balance(a.owner, a.wallet)).toBe(5000 - used);
    const model = await h.db.collection('loraModels').findOne({ _id: oid(rec.state.loraModelId!) });
    expect(model).toMatchObject({ visibility: 'private', moderation: { status: 'withdrawn' } });
    expect(job.loraModelId).toBeUndefined();
  });

  it('Cancel after COMPLETED, before the settle decision: completed stands (late cancel recorded), points settled and credited once', async () => {
    const a = await setup();
    const jobId = await h.enqueue({ ownerAccountId: a.owner, datasetId: a.datasetId, walletAddress: a.wallet } as never);
    const { app, done } = h.startWorker({ WORKER_EXIT_WHEN_IDLE: 'true' });
    const { attempts } = await workerRepos(app);
    const gate = pauseBefore(attempts, 'decide');
    await gate.reached;
    expect((await h.job(jobId)).status).toBe('COMPLETED');
    await platformCancel(jobId);
    gate.release();
    const { job, decision: d } = await waitSettled(jobId);
    await done;
    const rec = (await record(jobId))!;
    const used = usedPoints(rec.state.quote!, rec.state.trainSeconds ?? 0);
    expect(job.status).toBe('COMPLETED');
    expect(job.lateCancelAt).toBeInstanceOf(Date);
    expect(d).toMatchObject({ outcome: 'completed', usedPoints: used });
    const s = await summary(jobId);
    expect(s).toMatchObject({ charged: rec.state.quote!.points, refunded: rec.state.quote!.points - used });
    expect(s.credited).toMatchObject({ 'dataset-creator': Math.floor(used * CREATOR_SHARE), trainer: Math.floor(used * TRAINER_SHARE) });
    expect(await h.balance(a.owner, a.wallet)).toBe(5000 - used + Math.floor(used * TRAINER_SHARE));
    expect(await h.db.collection('loraModels').findOne({ _id: job.loraModelId })).toMatchObject({ visibility: 'public' });
  });

  it('Cancel over a COMPLETED and settled job: the sweep restores COMPLETED, points and model untouched', async () => {
    const a = await setup();
    const jobId = await h.enqueue({ ownerAccountId: a.owner, datasetId: a.datasetId, walletAddress: a.wallet } as never);
    await h.runWorker();
    const before = await summary(jobId);
    const balance = await h.balance(a.owner, a.wallet);
    expect((await h.job(jobId)).status).toBe('COMPLETED');
    await platformCancel(jobId);
    await h.runWorker();
    const job = await h.job(jobId);
    expect(job.status).toBe('COMPLETED');
    expect(job.lateCancelAt).toBeInstanceOf(Date);
    expect(await summary(jobId)).toEqual(before);
    expect(await h.balance(a.owner, a.wallet)).toBe(balance);
  });

  it('Cancel while QUEUED after a hand-back (SIGTERM re-queue): the earlier charge is refunded once', async () => {
    const a = await setup();
    const jobId = await h.enqueue({ ownerAccountId: a.owner, datasetId: a.datasetId, walletAddress: a.wallet, parameters: { steps: 2000 } } as never);
    const { worker, done } = h.startWorker({ WORKER_SHUTDOWN_GRACE_MS: '300' });
    await h.waitFor(jobId, (j) => j.status === 'RUNNING', 180_000);
    await (await worker).stop();
    await done;
    expect((await h.job(jobId)).status).toBe('QUEUED');
    const charged = (await record(jobId))!.state.quote!.points;
    expect((await summary(jobId)).charged).toBe(charged);
    await platformCancel(jobId);
    await h.runWorker();
    const { job, decision: d } = await waitSettled(jobId);
    expect(job.status).toBe('CANCELLED');
    expect(d).toMatchObject({ outcome: 'cancelled', usedPoints: 0 });
    expect(await summary(jobId)).toMatchObject({ charged, refunded: charged, totalCredited: 0 });
    expect(await h.balance(a.owner, a.wallet)).toBe(5000);
    expect(job.completedAt).toBeInstanceOf(Date);
  });

  it('Cancel while QUEUED after an infrastructure re-queue: the earlier charge is refunded once', async () => {
    const a = await setup();
    const jobId = await h.enqueue({ ownerAccountId: a.owner, datasetId: a.datasetId, walletAddress: a.wallet } as never);
    const { app, worker, done } = h.startWorker({ IMAGE_MANIFEST_PATH: missingImageManifest });
    const { jobs } = await workerRepos(app);
    // Claim once only, so the re-queued job stays QUEUED.
    const claimNext = jobs.claimNext.bind(jobs);
    let claims = 0;
    jobs.claimNext = async (o) => (claims++ === 0 ? claimNext(o) : null);
    await h.waitFor(jobId, (j) => j.status === 'QUEUED' && (j.retries as number | undefined) === 1, 180_000);
    await (await worker).stop();
    await done;
    const charged = (await record(jobId))!.state.quote!.points;
    await platformCancel(jobId);
    await h.runWorker();
    const { job, decision: d } = await waitSettled(jobId);
    expect(job.status).toBe('CANCELLED');
    expect(d).toMatchObject({ outcome: 'cancelled', usedPoints: 0 });
    expect(await summary(jobId)).toMatchObject({ charged, refunded: charged, totalCredited: 0 });
    expect(await h.balance(a.owner, a.wallet)).toBe(5000);
  });

  it('Retry after a failure with a full refund: a new charge under the retry\'s key, trained and credited once; the failed attempt stays refunded', async () => {
    const a = await setup();
    const jobId = await h.enqueue({ ownerAccountId: a.owner, datasetId: a.datasetId, walletAddress: a.wallet } as never);
    await h.runWorker({ IMAGE_MANIFEST_PATH: missingImageManifest, WORKER_MAX_ATTEMPTS: '1' });
    const failed = await h.job(jobId);
    expect(failed).toMatchObject({ status: 'FAILED', failureClass: 'infrastructure' });
    const q0 = (await record(jobId, 0))!.state.quote!.points;
    expect(await summary(jobId, 0)).toMatchObject({ charged: q0, refunded: q0, totalCredited: 0 });
    expect(await h.balance(a.owner, a.wallet)).toBe(5000);

    await platformRetry(jobId);
    await h.runWorker();
    const { job, decision: d } = await waitSettled(jobId, 1);
    expect(job.status).toBe('COMPLETED');
    expect(job.failureReason).toBeUndefined();
    expect(job.failureClass).toBeUndefined();
    const rec1 = (await record(jobId, 1))!;
    const used = usedPoints(rec1.state.quote!, rec1.state.trainSeconds ?? 0);
    expect(d).toMatchObject({ outcome: 'completed', usedPoints: used });
    expect(used).toBeGreaterThan(0);
    const s1 = await summary(jobId, 1);
    expect(s1).toMatchObject({ charged: rec1.state.quote!.points, refunded: rec1.state.quote!.points - used });
    expect(s1.credited).toMatchObject({ 'dataset-creator': Math.floor(used * CREATOR_SHARE), trainer: Math.floor(used * TRAINER_SHARE) });
    expect(await summary(jobId, 0)).toMatchObject({ charged: q0, refunded: q0, totalCredited: 0 });
    expect(await h.balance(a.owner, a.wallet)).toBe(5000 - used + Math.floor(used * TRAINER_SHARE));
    expect(await h.balance(a.creator.owner, a.creator.wallet)).toBe(Math.floor(used * CREATOR_SHARE));
    // Each platform attempt has its own keys: the retry's charge and refund never collide with the first's.
    expect((await h.ledger.history({ jobId })).map((m) => m.key)).toEqual(
      expect.arrayContaining([`training:${jobId}:charge`, `training:${jobId}:refund`, `training:${jobId}:r1:charge`, `training:${jobId}:r1:refund`]),
    );
  });

  it('Retry after insufficient points, with a hostile pre-filled pipeline: nothing in the job document is obeyed; the retry quotes and charges anew', async () => {
    const a = await setup(1);
    const hostile = {
      charged: true,
      quote: { points: 1, estimatedSeconds: 1, gpuUsdPerHour: 0 },
      settleIntent: { outcome: 'completed', usedPoints: 1_000_000, reason: 'client says so' },
      upload: { loraUrl: 'http://169.254.169.254/latest/x.safetensors', loraKey: 'loras/x.safetensors', sha256: 'x', autov2: 'x', bytes: 1, sampleUrls: [] },
      slug: 'x',
    };
    const jobId = await h.enqueue({ ownerAccountId: a.owner, datasetId: a.datasetId, walletAddress: a.wallet, pipeline: hostile, attempts: -100, maxAttempts: 1000 } as never);
    await h.runWorker();
    const failed = await h.job(jobId);
    expect(failed).toMatchObject({ status: 'FAILED', failureClass: 'user-input' });
    expect(failed.failureReason).toMatch(/balance is 1\b/);
    expect(await h.ledger.history({ jobId })).toEqual([]);

    // The user adds points, then retries.
    await h.db.collection('credit_ledger').insertOne({
      deposit_tx_hash: `0xtopup${a.owner}`, deposit_log_index: 0, master_account_id: oid(a.owner), depositor_address: a.wallet,
      status: 'CONFIRMED', funding_rate_applied: 1, points_credited: 5000, points_remaining: 5000, createdAt: new Date(), updatedAt: new Date(),
    });
    await platformRetry(jobId);
    await h.runWorker();
    const { job, decision: d } = await waitSettled(jobId, 1);
    expect(job.status).toBe('COMPLETED');
    const rec1 = (await record(jobId, 1))!;
    const used = usedPoints(rec1.state.quote!, rec1.state.trainSeconds ?? 0);
    expect(rec1.state.quote!.points).toBeGreaterThan(1);
    expect(d).toMatchObject({ outcome: 'completed', usedPoints: used });
    expect(await summary(jobId, 1)).toMatchObject({ charged: rec1.state.quote!.points, refunded: rec1.state.quote!.points - used });
    expect(await h.balance(a.owner, a.wallet)).toBe(5001 - used + Math.floor(used * TRAINER_SHARE));
    expect(await h.balance(a.creator.owner, a.creator.wallet)).toBe(Math.floor(used * CREATOR_SHARE));
    expect(await h.db.collection('loraModels').countDocuments({ 'publishedTo.modelFileUrl': /169\.254/ })).toBe(0);
    expect(job.modelRepoUrl).not.toMatch(/169\.254/);
  });

  it('crash after registration on the final attempt: the job completes (never FAILED with a refund), and the stale worker writes nothing', async () => {
    const a = await setup();
    const jobId = await h.enqueue({ ownerAccountId: a.owner, datasetId: a.datasetId, walletAddress: a.wallet } as never);
    const env = { WORKER_MAX_ATTEMPTS: '1', WORKER_LEASE_MS: '3000' };
    const first = h.startWorker(env);
    const { jobs } = await workerRepos(first.app);
    const gate = pauseBefore(jobs, 'complete');
    await gate.reached;
    // The first worker hangs here and stops renewing its lease, as a killed or partitioned one would.
    jobs.heartbeat = async () => true;
    jobs.leaseState = async () => 'held';
    const registered = (await record(jobId))!;
    expect(registered.state.loraModelId).toBeDefined();
    const second = h.startWorker({ ...env, WORKER_EXIT_WHEN_IDLE: 'true' });
    const { job, decision: d } = await waitSettled(jobId);
    await second.done;
    // The stale worker's COMPLETED write is refused now: it stops without writing.
    gate.release(await jobs.complete({ jobId, attemptId: registered.owner, workerId: 'stale' }));
    await (await first.worker).stop();
    await first.done;
    const rec = (await record(jobId))!;
    const used = usedPoints(rec.state.quote!, rec.state.trainSeconds ?? 0);
    expect(job.status).toBe('COMPLETED');
    expect(String(job.loraModelId)).toBe(registered.state.loraModelId);
    expect(d).toMatchObject({ outcome: 'completed', usedPoints: used });
    expect(d.decidedBy).not.toBe(`worker:${registered.owner}`);
    const s = await summary(jobId);
    expect(s).toMatchObject({ charged: rec.state.quote!.points, refunded: rec.state.quote!.points - used });
    expect(s.credited).toMatchObject({ 'dataset-creator': Math.floor(used * CREATOR_SHARE), trainer: Math.floor(used * TRAINER_SHARE) });
    expect(await h.balance(a.owner, a.wallet)).toBe(5000 - used + Math.floor(used * TRAINER_SHARE));
    expect(await h.db.collection('loraModels').findOne({ _id: job.loraModelId })).toMatchObject({ visibility: 'public' });
    expect((await h.job(jobId)).status).toBe('COMPLETED');
  });

  it('a CPU-only worker claims only what it can run: a GPU recipe stays QUEUED and nothing is charged for it', async () => {
    const a = await setup();
    const gpuJob = await h.enqueue({ ownerAccountId: a.owner, datasetId: a.datasetId, walletAddress: a.wallet, modelType: 'SDXL', baseModel: 'SDXL' } as never);
    const smokeJob = await h.enqueue({ ownerAccountId: a.owner, datasetId: a.datasetId, walletAddress: a.wallet } as never);
    await h.runWorker({ WORKER_CPU_TEST_RUNS: '0' });
    expect((await h.job(smokeJob)).status).toBe('COMPLETED');
    expect((await h.job(gpuJob)).status).toBe('QUEUED');
    expect(await h.ledger.history({ jobId: gpuJob })).toEqual([]);
    // Out of the way of later tests.
    await platformCancel(gpuJob);
  });

  it('missing base weights are an operator error: FAILED at once without retries, naming the object to upload; full refund', async () => {
    const a = await setup(1_000_000);
    const jobId = await h.enqueue({ ownerAccountId: a.owner, datasetId: a.datasetId, walletAddress: a.wallet, modelType: 'SDXL', baseModel: 'SDXL', parameters: {} } as never);
    await h.runWorker({ WORKER_CPU_TEST_RUNS: '1', WEIGHTS_LOCAL_DIR: '' });
    const job = await h.job(jobId);
    expect(job).toMatchObject({ status: 'FAILED', failureClass: 'operator', attempts: 1 });
    expect(job.failureReason).toMatch(/base-model file .+ is missing from the models bucket/);
    const charged = (await record(jobId))!.state.quote!.points;
    expect(await summary(jobId)).toMatchObject({ charged, refunded: charged, totalCredited: 0 });
    expect(await h.balance(a.owner, a.wallet)).toBe(1_000_000);
  });

  it('a worker that cannot reach the database stops its container once its lease must have expired, and writes nothing more', async () => {
    const a = await setup();
    const jobId = await h.enqueue({ ownerAccountId: a.owner, datasetId: a.datasetId, walletAddress: a.wallet, parameters: { steps: 2000 } } as never);
    const first = h.startWorker({ WORKER_LEASE_MS: '3000' });
    const { jobs, attempts } = await workerRepos(first.app);
    await h.waitFor(jobId, (j) => j.status === 'RUNNING' && (j.currentStep ?? 0) > 0, 180_000);
    // A one-sided partition: every database call of this worker fails from now on.
    const unreachable = async () => {
      throw new Error('simulated partition: the database is unreachable');
    };
    for (const m of ['heartbeat', 'updateProgress', 'leaseState', 'transition', 'complete', 'cancelComplete', 'retryLater', 'releaseLease', 'recoverExpiredLeases'] as const) (jobs as unknown as Record<string, unknown>)[m] = unreachable;
    jobs.claimNext = async () => null;
    (attempts as unknown as Record<string, unknown>)['setState'] = unreachable;
    (attempts as unknown as Record<string, unknown>)['decide'] = unreachable;
    const cut = Date.now();
    const before = (await record(jobId))!;
    for (let i = 0; (await h.containersFor(jobId)).length > 0; i++) {
      if (Date.now() - cut > 30_000) throw new Error('the partitioned worker kept its container running');
      await new Promise((r) => setTimeout(r, 250));
    }
    expect(Date.now() - cut).toBeLessThan(30_000);
    await (await first.worker).stop();
    await first.done;
    // Nothing of this attempt was written after the cut; the platform then cancels, and the sweep settles it.
    expect((await record(jobId))!.state).toEqual(before.state);
    expect(await decision(jobId)).toBeNull();
    await platformCancel(jobId);
    await h.runWorker();
    const { job, decision: d } = await waitSettled(jobId);
    expect(job.status).toBe('CANCELLED');
    expect(d).toMatchObject({ outcome: 'cancelled', usedPoints: 0 });
    expect(d.decidedBy).toMatch(/^sweep:/);
    expect(await summary(jobId)).toMatchObject({ charged: before.state.quote!.points, refunded: before.state.quote!.points });
    expect(await h.balance(a.owner, a.wallet)).toBe(5000);
  });

  it('the platform deletes a job its earlier attempt charged (re-queued): the sweep refunds the charge once', async () => {
    const a = await setup();
    const jobId = await h.enqueue({ ownerAccountId: a.owner, datasetId: a.datasetId, walletAddress: a.wallet } as never);
    const { app, worker, done } = h.startWorker({ IMAGE_MANIFEST_PATH: missingImageManifest });
    const { jobs } = await workerRepos(app);
    const claimNext = jobs.claimNext.bind(jobs);
    let claims = 0;
    jobs.claimNext = async (o) => (claims++ === 0 ? claimNext(o) : null);
    await h.waitFor(jobId, (j) => j.status === 'QUEUED' && (j.retries as number | undefined) === 1, 180_000);
    await (await worker).stop();
    await done;
    const charged = (await record(jobId))!.state.quote!.points;
    await h.db.collection('trainingJobs').deleteOne({ _id: oid(jobId) });
    await h.runWorker();
    await waitRecord(jobId, (r) => r.open === false);
    expect(await decision(jobId)).toMatchObject({ outcome: 'failed', usedPoints: 0, decidedBy: expect.stringMatching(/^sweep:/) });
    expect(await summary(jobId)).toMatchObject({ charged, refunded: charged, totalCredited: 0 });
    expect(await h.balance(a.owner, a.wallet)).toBe(5000);
  });

  it('the platform fails a running job itself, then the user retries and cancels: the abandoned attempt is refunded once, the worker wrote nothing after', async () => {
    const a = await setup();
    const jobId = await h.enqueue({ ownerAccountId: a.owner, datasetId: a.datasetId, walletAddress: a.wallet, parameters: { steps: 2000 } } as never);
    const { done } = h.startWorker({ WORKER_EXIT_WHEN_IDLE: 'true' });
    await h.waitFor(jobId, (j) => j.status === 'RUNNING' && (j.currentStep ?? 0) > 0, 180_000);
    // The platform's sweeper (markFailed), then the user's Retry and Cancel, all before any worker settles.
    const markFailed = () => h.db.collection('trainingJobs').updateOne({ _id: oid(jobId) }, { $set: { status: 'FAILED', failureReason: 'stuck (platform sweeper)', updatedAt: new Date() } });
    await sendUntilSeen(jobId, markFailed, 'FAILED', "the platform sweeper's FAILED");
    await done; // the worker sees its lease lost, stops the container, writes nothing, and exits idle
    expect(await h.containersFor(jobId)).toEqual([]);
    expect(await decision(jobId)).toBeNull();
    await platformRetry(jobId);
    await platformCancel(jobId);
    await h.runWorker();
    await waitRecord(jobId, (r) => r.open === false);
    // Superseded by the retry (or, had a sweep run between the platform's FAILED and the Retry, failed): refunded either way.
    expect(await decision(jobId)).toMatchObject({ outcome: 'failed', usedPoints: 0, decidedBy: expect.stringMatching(/^sweep:/) });
    const charged = (await record(jobId))!.state.quote!.points;
    expect(await summary(jobId, 0)).toMatchObject({ charged, refunded: charged, totalCredited: 0 });
    expect(await record(jobId, 1)).toBeNull();
    expect(await h.ledger.history({ jobId }).then((m) => m.filter((x) => x.key.includes(':r1:')))).toEqual([]);
    expect(await h.balance(a.owner, a.wallet)).toBe(5000);
    expect((await h.job(jobId)).status).toBe('CANCELLED');
  });

  it('Cancel while QUEUED after an expired-lease re-queue: the earlier charge is refunded once, the stale worker writes nothing', async () => {
    const a = await setup();
    const jobId = await h.enqueue({ ownerAccountId: a.owner, datasetId: a.datasetId, walletAddress: a.wallet } as never);
    const stale = h.startWorker({ WORKER_LEASE_MS: '3000' });
    const staleRepos = await workerRepos(stale.app);
    // The first worker hangs after its charge and stops renewing its lease (a frozen process).
    const gate = pauseBefore(staleRepos.jobs, 'updateProgress', (_lease, p) => JSON.stringify(p).includes('fetch-dataset'));
    await gate.reached;
    staleRepos.jobs.heartbeat = async () => true;
    staleRepos.jobs.leaseState = async () => 'held';
    staleRepos.jobs.recoverExpiredLeases = async () => ({ requeued: [], failed: [], cancelled: [] });
    const charged = (await waitRecord(jobId, (r) => r.state.charged === true)).state.quote!.points;
    // Another worker's maintenance recovers the expired lease: re-queued, charge kept. It claims nothing itself.
    const recoverer = h.startWorker({ WORKER_LEASE_MS: '3000' });
    const recovererRepos = await workerRepos(recoverer.app);
    recovererRepos.jobs.claimNext = async () => null;
    await h.waitFor(jobId, (j) => j.status === 'QUEUED' && (j.leaseExpiries as number | undefined) === 1, 60_000);
    await platformCancel(jobId);
    const { job, decision: d } = await waitSettled(jobId);
    expect(job.status).toBe('CANCELLED');
    expect(d).toMatchObject({ outcome: 'cancelled', usedPoints: 0, decidedBy: expect.stringMatching(/^sweep:/) });
    expect(await summary(jobId)).toMatchObject({ charged, refunded: charged, totalCredited: 0 });
    expect(await h.balance(a.owner, a.wallet)).toBe(5000);
    // The frozen worker wakes up: every job write is refused and it stops; nothing it could write moves points.
    const before = await h.job(jobId);
    gate.release();
    await (await stale.worker).stop();
    await stale.done;
    await (await recoverer.worker).stop();
    await recoverer.done;
    const after = await h.job(jobId);
    expect(after.status).toBe('CANCELLED');
    expect(after.logTail).toEqual(before.logTail);
    expect(await summary(jobId)).toMatchObject({ charged, refunded: charged, totalCredited: 0 });
    expect(await h.containersFor(jobId)).toEqual([]);
  });
});
