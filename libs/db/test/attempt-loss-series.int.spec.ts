/**
 * The attempt record's loss series and phase times (what the worker's
 * dashboard charts), against the real server: written only by the claim
 * that owns the record, bounded, and a newer claim's phase times replacing
 * an earlier claim's.
 */
import { ObjectId } from 'mongodb';
import { TrainingAttemptRepository, TrainingJobRepository, type Lease } from '../src';
import { openTestDb, type TestDb } from './helpers';

describe('attempt loss series and phase times (real server)', () => {
  let t: TestDb;
  let repo: TrainingJobRepository;
  let attempts: TrainingAttemptRepository;

  const claimed = async (): Promise<Lease> => {
    await repo.enqueue({ ownerAccountId: new ObjectId(), datasetId: new ObjectId(), name: 'lora', baseModel: 'SMOKE', modelType: 'SMOKE' });
    const c = await repo.claimNext({ workerId: 'w1', environment: 'production', leaseMs: 60_000 });
    if (!c) throw new Error('nothing claimed');
    await attempts.open(c.lease, c.job);
    return c.lease;
  };

  beforeAll(async () => {
    t = await openTestDb('db_loss_series');
  });
  beforeEach(async () => {
    for (const c of ['trainingJobs', 'trainingJobAttempts', 'trainingJobClaims']) await t.db.collection(c).deleteMany({});
    repo = new TrainingJobRepository(t.db, { candidateTtlMs: 0 });
    attempts = new TrainingAttemptRepository(t.db);
    await attempts.ensureIndexes();
  });
  afterAll(() => t.drop());

  it('appends points in order, bounded, for the owning claim only', async () => {
    const lease = await claimed();
    expect(await attempts.recordLoss(lease.jobId, lease.attemptId, [{ step: 1, loss: 1.2 }, { step: 2, loss: 1.1 }])).toBe(true);
    expect(await attempts.recordLoss(lease.jobId, lease.attemptId, [{ step: 3, loss: Number.NaN }, { step: 4, loss: 0.9 }])).toBe(true);
    expect(await attempts.recordLoss(lease.jobId, 'another-claim', [{ step: 5, loss: 0.1 }])).toBe(false);
    const rec = await attempts.find(lease.jobId, 0);
    expect(rec?.state.lossSeries).toEqual({ stride: 1, points: [{ step: 1, loss: 1.2 }, { step: 2, loss: 1.1 }, { step: 4, loss: 0.9 }] });

    for (let step = 5; step <= 60; step++) await attempts.recordLoss(lease.jobId, lease.attemptId, [{ step, loss: 1 / step }], 20);
    const bounded = (await attempts.find(lease.jobId, 0))?.state.lossSeries;
    expect(bounded?.points.length).toBeLessThanOrEqual(20);
    expect(bounded?.stride).toBeGreaterThan(1);
    expect(bounded?.points[0].step).toBe(1);
  });

  it("records this claim's RUNNING and FINALIZING times; a newer claim starts its own", async () => {
    const lease = await claimed();
    const t1 = new Date('2026-12-07T10:00:00Z');
    const t2 = new Date('2026-12-07T10:05:00Z');
    expect(await attempts.recordPhase(lease.jobId, lease.attemptId, 'RUNNING', t1)).toBe(true);
    expect(await attempts.recordPhase(lease.jobId, lease.attemptId, 'FINALIZING', t2)).toBe(true);
    expect((await attempts.find(lease.jobId, 0))?.state.phaseTimes).toEqual({ claim: lease.attemptId, RUNNING: t1, FINALIZING: t2 });

    // The lease expires and another claim takes the record over: its RUNNING replaces the earlier claim's times.
    await t.db.collection('trainingJobs').updateOne({ _id: new ObjectId(lease.jobId) }, { $set: { 'lease.expiresAt': new Date(0) } });
    await repo.recoverExpiredLeases();
    const again = await repo.claimNext({ workerId: 'w2', environment: 'production', leaseMs: 60_000 });
    expect(again?.lease.jobId).toBe(lease.jobId);
    await attempts.open(again!.lease, again!.job);
    expect(await attempts.recordPhase(lease.jobId, lease.attemptId, 'RUNNING', t2)).toBe(false);
    const t3 = new Date('2026-12-07T10:09:00Z');
    expect(await attempts.recordPhase(lease.jobId, again!.lease.attemptId, 'RUNNING', t3)).toBe(true);
    expect((await attempts.find(lease.jobId, 0))?.state.phaseTimes).toEqual({ claim: again!.lease.attemptId, RUNNING: t3 });
  });
});
