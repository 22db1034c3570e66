/**
 * One conformance suite for PointsLedgerPort, run against the real
 * PointsLedger on the database (points-ledger.port.int.spec.ts) and against
 * InMemoryPointsLedger (in-memory-points-ledger.spec.ts): same assertions, so
 * the fake the pipeline's unit tests use cannot drift from the real ledger.
 */
import { ObjectId } from 'mongodb';
import { InsufficientPointsError, MovementConflictError, chargeKey, creditKey, ledgerEntryIdFor, refundKey, type PointsLedgerPort } from '../src';

export interface PortHarness {
  ledger: PointsLedgerPort;
  /** Gives an account spendable points the way the platform would (a deposit). */
  fund(account: ObjectId, points: number): Promise<void>;
  balance(account: ObjectId): Promise<number>;
}

export interface PortHarnessFactory {
  setUp?(): Promise<void>;
  /** A ledger with no movements yet (accounts and job ids in each test are new anyway). */
  fresh(): Promise<PortHarness>;
  tearDown?(): Promise<void>;
}

export function describePointsLedgerPortConformance(name: string, factory: PortHarnessFactory): void {
  describe(`PointsLedgerPort conformance: ${name}`, () => {
    let h: PortHarness;
    let payer: ObjectId;
    let jobId: string;
    const charge = (points: number, platformAttempt?: number) =>
      h.ledger.charge({ jobId, masterAccountId: payer, points, reason: 'quote', platformAttempt });

    beforeAll(async () => factory.setUp?.());
    afterAll(async () => factory.tearDown?.());
    beforeEach(async () => {
      h = await factory.fresh();
      payer = new ObjectId();
      jobId = new ObjectId().toHexString();
      await h.fund(payer, 1000);
    });

    it('charge debits the quote once; a replay moves nothing; another amount under the same key conflicts', async () => {
      const first = await charge(400);
      expect(first).toMatchObject({ key: chargeKey(jobId), jobId, platformAttempt: 0, points: 400, replay: false, settled: false });
      expect(first.spends.reduce((s, x) => s + x.points, 0)).toBe(400);
      expect(await h.balance(payer)).toBe(600);
      const again = await charge(400);
      expect(again).toMatchObject({ key: first.key, points: 400, replay: true, settled: false, spends: first.spends });
      expect(await h.balance(payer)).toBe(600);
      await expect(charge(401)).rejects.toThrow(MovementConflictError);
      await expect(charge(0)).rejects.toThrow(RangeError);
      expect(await h.balance(payer)).toBe(600);
    });

    it('insufficient balance: a typed error with the figures, nothing charged, nothing to settle', async () => {
      const err = await charge(1001).catch((e: unknown) => e);
      expect(err).toBeInstanceOf(InsufficientPointsError);
      expect(err).toMatchObject({ code: 'INSUFFICIENT_POINTS', balance: 1000, needed: 1001, jobId });
      expect(await h.balance(payer)).toBe(1000);
      expect(await h.ledger.settle({ jobId, usedPoints: 0, reason: 'insufficient' })).toMatchObject({ charged: 0, refunded: 0, ledgerEntryId: null });
      // The same job may be charged once the user has the points.
      await h.fund(payer, 1);
      expect(await charge(1001)).toMatchObject({ replay: false });
      expect(await h.balance(payer)).toBe(0);
    });

    it('settle refunds charged − used exactly once; the first settle wins; used is clamped to [0, charged]', async () => {
      await charge(400);
      const s1 = await h.ledger.settle({ jobId, usedPoints: 150, reason: 'GPU time', outcome: 'completed' });
      expect(s1).toEqual({
        key: refundKey(jobId),
        jobId,
        platformAttempt: 0,
        charged: 400,
        usedPoints: 150,
        refunded: 250,
        ledgerEntryId: ledgerEntryIdFor(refundKey(jobId)).toHexString(),
        replay: false,
      });
      expect(await h.balance(payer)).toBe(850);
      expect(await h.ledger.settle({ jobId, usedPoints: 0, reason: 'late duplicate' })).toEqual({ ...s1, replay: true });
      expect(await h.balance(payer)).toBe(850);

      const over = new ObjectId().toHexString();
      await h.ledger.charge({ jobId: over, masterAccountId: payer, points: 100, reason: 'q' });
      expect(await h.ledger.settle({ jobId: over, usedPoints: 10_000, reason: 'overran' })).toMatchObject({ charged: 100, usedPoints: 100, refunded: 0, ledgerEntryId: null });
      const failed = new ObjectId().toHexString();
      await h.ledger.charge({ jobId: failed, masterAccountId: payer, points: 100, reason: 'q' });
      expect(await h.ledger.settle({ jobId: failed, usedPoints: -5, reason: 'platform failure', outcome: 'failed' })).toMatchObject({ usedPoints: 0, refunded: 100 });
      const rounded = new ObjectId().toHexString();
      await h.ledger.charge({ jobId: rounded, masterAccountId: payer, points: 100, reason: 'q' });
      expect(await h.ledger.settle({ jobId: rounded, usedPoints: 12.6, reason: 'cancelled', outcome: 'cancelled' })).toMatchObject({ usedPoints: 13, refunded: 87 });
      expect(await h.balance(payer)).toBe(850 - 100 - 13);
    });

    it('a replayed charge of a settled attempt says settled, and moves nothing', async () => {
      await charge(300);
      await h.ledger.settle({ jobId, usedPoints: 0, reason: 'failed', outcome: 'failed' });
      expect(await charge(300)).toMatchObject({ replay: true, settled: true, points: 300 });
      expect(await h.balance(payer)).toBe(1000);
    });

    it('credits once per (job, kind, platform attempt)', async () => {
      const creator = new ObjectId();
      const c1 = await h.ledger.credit({ jobId, recipientAccountId: creator, points: 10, kind: 'dataset-creator', reason: 'dataset used' });
      expect(c1).toEqual({
        key: creditKey(jobId, 'dataset-creator'),
        jobId,
        platformAttempt: 0,
        kind: 'dataset-creator',
        points: 10,
        ledgerEntryId: ledgerEntryIdFor(creditKey(jobId, 'dataset-creator')).toHexString(),
        replay: false,
      });
      expect(await h.ledger.credit({ jobId, recipientAccountId: creator, points: 99, kind: 'dataset-creator', reason: 'dup' })).toEqual({ ...c1, replay: true });
      expect(await h.ledger.credit({ jobId, recipientAccountId: creator, points: 5, kind: 'trainer', reason: 'trainer' })).toMatchObject({ replay: false });
      expect(await h.ledger.credit({ jobId, recipientAccountId: creator, points: 7, kind: 'trainer', reason: 'retry', platformAttempt: 1 })).toMatchObject({
        key: creditKey(jobId, 'trainer', 1),
        replay: false,
      });
      expect(await h.balance(creator)).toBe(22);
      await expect(h.ledger.credit({ jobId, recipientAccountId: creator, points: 0, kind: 'trainer', reason: 'x', platformAttempt: 2 })).rejects.toThrow(RangeError);
    });

    it('per platform attempt: a Retry is a new charge under its own key and settles on its own', async () => {
      await charge(300);
      await h.ledger.settle({ jobId, usedPoints: 0, reason: 'attempt 0 failed', outcome: 'failed' });
      expect(await h.balance(payer)).toBe(1000);
      const retry = await charge(300, 1);
      expect(retry).toMatchObject({ key: chargeKey(jobId, 1), platformAttempt: 1, replay: false, settled: false });
      expect(await h.balance(payer)).toBe(700);
      expect(await charge(300, 1)).toMatchObject({ replay: true });
      // A settle of another attempt never touches this one's charge.
      expect(await h.ledger.settle({ jobId, usedPoints: 0, reason: 'wrong attempt', platformAttempt: 2 })).toMatchObject({ charged: 0, refunded: 0 });
      expect(await h.balance(payer)).toBe(700);
      const s = await h.ledger.settle({ jobId, usedPoints: 100, reason: 'trained', outcome: 'completed', platformAttempt: 1 });
      expect(s).toMatchObject({ key: refundKey(jobId, 1), platformAttempt: 1, charged: 300, refunded: 200, replay: false });
      expect(await h.ledger.settle({ jobId, usedPoints: 0, reason: 'dup', platformAttempt: 1 })).toMatchObject({ refunded: 200, replay: true });
      expect(await h.ledger.settle({ jobId, usedPoints: 300, reason: 'dup of attempt 0' })).toMatchObject({ refunded: 300, replay: true });
      expect(await h.balance(payer)).toBe(900);
      expect(() => chargeKey(jobId, -1)).toThrow(RangeError);
    });
  });
}
