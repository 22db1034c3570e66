/**
 * Per-platform-attempt keys (issue 12): the platform's Retry (FAILED → QUEUED)
 * increments the job's retryCount, and each attempt is its own charge with its
 * own refund and credits. Attempt 0 keeps the original keys.
 */
import { ObjectId } from 'mongodb';
import { MovementConflictError, PointsLedger, chargeKey, creditKey, ledgerEntryIdFor, refundKey } from '../src';
import { createPlatformIndexes, openTestDb, platformEntry, resetLedger, snapshot, type TestDb } from './fixtures';

describe('PointsLedger per platform attempt (real server)', () => {
  let t: TestDb;
  let ledger: PointsLedger;
  const account = new ObjectId();
  const WALLET = '0xabcdef0000000000000000000000000000000002';
  const entries = () => t.db.collection('credit_ledger');
  const balance = () => ledger.balance({ masterAccountId: account, walletAddress: WALLET });
  const charge = (platformAttempt: number | undefined, points = 300) =>
    ledger.charge({ jobId: 'job', masterAccountId: account, walletAddress: WALLET, points, reason: 'quote', platformAttempt });

  beforeAll(async () => {
    t = await openTestDb('points_attempts');
    await createPlatformIndexes(t.db);
  });
  beforeEach(async () => {
    await resetLedger(t.db, [platformEntry({ account, wallet: WALLET, points: 1000, rate: 1 })]);
    ledger = new PointsLedger(t.db);
    await ledger.ensureIndexes();
  });
  afterAll(() => t.drop());

  it('keys: attempt 0 (or none) keeps the original form; attempt n adds :r<n>', () => {
    expect(chargeKey('j')).toBe('training:j:charge');
    expect(chargeKey('j', 0)).toBe('training:j:charge');
    expect(refundKey('j', 0)).toBe('training:j:refund');
    expect(creditKey('j', 'trainer', 0)).toBe('training:j:credit:trainer');
    expect(chargeKey('j', 2)).toBe('training:j:r2:charge');
    expect(refundKey('j', 2)).toBe('training:j:r2:refund');
    expect(creditKey('j', 'dataset-creator', 2)).toBe('training:j:r2:credit:dataset-creator');
    expect(() => chargeKey('j', -1)).toThrow(RangeError);
    expect(() => chargeKey('j', 1.5)).toThrow(RangeError);
  });

  it('attempt 0 charged and fully refunded; the Retry (attempt 1) is charged again and settles on its own', async () => {
    expect(await charge(undefined)).toMatchObject({ key: 'training:job:charge', platformAttempt: 0, replay: false });
    expect(await ledger.settle({ jobId: 'job', usedPoints: 0, reason: 'failed', outcome: 'failed' })).toMatchObject({ refunded: 300, platformAttempt: 0 });
    expect(await balance()).toBe(1000);
    // The same attempt again is a replay that says the attempt is already settled: never a free run.
    expect(await charge(0)).toMatchObject({ replay: true, settled: true });
    expect(await balance()).toBe(1000);

    const retry = await charge(1);
    expect(retry).toMatchObject({ key: 'training:job:r1:charge', platformAttempt: 1, points: 300, replay: false, settled: false });
    expect(retry.spends.reduce((s, x) => s + x.points, 0)).toBe(300); // a new entry was debited
    expect(await balance()).toBe(700);

    const s1 = await ledger.settle({ jobId: 'job', usedPoints: 120, reason: 'trained', outcome: 'completed', platformAttempt: 1 });
    expect(s1).toMatchObject({ key: 'training:job:r1:refund', platformAttempt: 1, charged: 300, usedPoints: 120, refunded: 180, replay: false });
    expect(s1.ledgerEntryId).toBe(ledgerEntryIdFor(refundKey('job', 1)).toHexString());
    expect(await balance()).toBe(880);
    expect(await entries().findOne({ deposit_tx_hash: 'training:job:r1:refund' })).toMatchObject({
      points_credited: 180,
      related_items: { trainingJobId: 'job', platformAttempt: 1, chargedPoints: 300, usedPoints: 120 },
    });

    const credit = await ledger.credit({ jobId: 'job', recipientAccountId: account, points: 6, kind: 'trainer', reason: 'share', platformAttempt: 1 });
    expect(credit).toMatchObject({ key: 'training:job:r1:credit:trainer', platformAttempt: 1, replay: false });

    // History by job lists every attempt's movements, each with its attempt.
    expect((await ledger.history({ jobId: 'job' })).map((m) => [m.key, m.platformAttempt])).toEqual([
      ['training:job:charge', 0],
      ['training:job:refund', 0],
      ['training:job:r1:charge', 1],
      ['training:job:r1:refund', 1],
      ['training:job:r1:credit:trainer', 1],
    ]);
    expect(await ledger.jobSummary('job')).toMatchObject({ charged: 600, refunded: 480, totalCredited: 6 });
    expect(await ledger.jobSummary('job', 0)).toMatchObject({ charged: 300, refunded: 300, totalCredited: 0 });
    expect(await ledger.jobSummary('job', 1)).toMatchObject({ charged: 300, refunded: 180, totalCredited: 6 });
  });

  it("a settle for attempt 1 never refunds attempt 0's charge", async () => {
    await charge(0);
    expect(await ledger.settle({ jobId: 'job', usedPoints: 0, reason: 'retry settle', platformAttempt: 1 })).toMatchObject({ charged: 0, refunded: 0 });
    expect(await balance()).toBe(700);
    expect(await ledger.history({ jobId: 'job' })).toHaveLength(1);
    // and attempt 0 is still settled normally afterwards
    expect(await ledger.settle({ jobId: 'job', usedPoints: 100, reason: 'done' })).toMatchObject({ refunded: 200 });
    expect(await balance()).toBe(900);
  });

  it('replays are idempotent per attempt', async () => {
    await charge(0);
    await charge(1, 200);
    const before = await snapshot(t.db);
    expect(await charge(0)).toMatchObject({ replay: true, platformAttempt: 0, points: 300 });
    expect(await charge(1, 200)).toMatchObject({ replay: true, platformAttempt: 1, points: 200 });
    expect(await snapshot(t.db)).toEqual(before);
    await expect(charge(1, 300)).rejects.toThrow(MovementConflictError);

    const r0 = await ledger.settle({ jobId: 'job', usedPoints: 100, reason: 'a0' });
    const r1 = await ledger.settle({ jobId: 'job', usedPoints: 50, reason: 'a1', platformAttempt: 1 });
    expect([r0.refunded, r1.refunded]).toEqual([200, 150]);
    expect(await ledger.settle({ jobId: 'job', usedPoints: 0, reason: 'dup', platformAttempt: 1 })).toMatchObject({ refunded: 150, replay: true });
    expect(await ledger.settle({ jobId: 'job', usedPoints: 0, reason: 'dup' })).toMatchObject({ refunded: 200, replay: true });
    const c1 = await ledger.credit({ jobId: 'job', recipientAccountId: account, points: 4, kind: 'trainer', reason: 's', platformAttempt: 1 });
    const c1again = await ledger.credit({ jobId: 'job', recipientAccountId: account, points: 4, kind: 'trainer', reason: 's', platformAttempt: 1 });
    const c0 = await ledger.credit({ jobId: 'job', recipientAccountId: account, points: 4, kind: 'trainer', reason: 's' });
    expect([c1.replay, c1again.replay, c0.replay]).toEqual([false, true, false]);
    expect(await balance()).toBe(1000 - 300 - 200 + 200 + 150 + 4 + 4);
  });

  it('replayPending finishes a stuck movement under its own attempt', async () => {
    await charge(0);
    // A refund journal for attempt 1's charge, left pending by a crash between the journal and the ledger write.
    await charge(1, 200);
    const now = new Date(Date.now() - 120_000);
    await t.db.collection('training_points_movements').insertOne({
      _id: refundKey('job', 1) as unknown as ObjectId,
      jobId: 'job',
      platformAttempt: 1,
      kind: 'refund',
      accountId: account.toHexString(),
      walletAddress: WALLET,
      points: 200,
      reason: 'crashed refund',
      state: 'pending',
      usedPoints: 0,
      chargedPoints: 200,
      outcome: 'failed',
      ledgerEntryId: ledgerEntryIdFor(refundKey('job', 1)),
      createdAt: now,
      updatedAt: now,
    });
    expect(await ledger.replayPending(60_000)).toEqual([refundKey('job', 1)]);
    expect(await ledger.jobSummary('job', 1)).toMatchObject({ charged: 200, refunded: 200 });
    expect(await ledger.jobSummary('job', 0)).toMatchObject({ charged: 300, refunded: 0 });
    expect(await balance()).toBe(700);
  });
});
