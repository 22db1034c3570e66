import { ObjectId } from 'mongodb';
import {
  InsufficientPointsError,
  MovementConflictError,
  PointsLedger,
  SPEND_MARKER_FIELD,
  ledgerEntryIdFor,
  refundKey,
} from '../src';
import { SimulatedCrashError, crashAfterWrite, killableDb } from './crash';
import { createPlatformIndexes, openTestDb, platformEntry, resetLedger, snapshot, type TestDb } from './fixtures';

const WALLET = '0xAbCdEf0000000000000000000000000000000001';
const wallet = WALLET.toLowerCase();

describe('PointsLedger (real server)', () => {
  let t: TestDb;
  let ledger: PointsLedger;
  const account = new ObjectId();
  const entries = () => t.db.collection('credit_ledger');
  const movements = () => t.db.collection('training_points_movements');

  // gift (no rate) → rate 0.8 → rate 1.0 (older) → rate 1.0 (newer); plus entries that must not count
  const gift = new ObjectId();
  const cheap = new ObjectId();
  const oldFull = new ObjectId();
  const newFull = new ObjectId();
  const FIXTURES = [
    platformEntry({ _id: newFull, account, wallet, points: 500, rate: 1, createdAt: new Date('2026-03-01') }),
    platformEntry({ _id: oldFull, account: account.toHexString(), wallet, points: 300, rate: 1, createdAt: new Date('2026-02-01') }),
    platformEntry({ _id: cheap, account, wallet, points: 200, rate: 0.8 }),
    platformEntry({ _id: gift, account, wallet, points: 100, rate: null }),
    platformEntry({ account, wallet, points: 999, rate: 1, status: 'PENDING_CONFIRMATION' }),
    platformEntry({ account: new ObjectId(), wallet: '0xsomeoneelse', points: 777, rate: 1 }),
  ];
  const fixtures = () => FIXTURES;
  const remaining = async (id: ObjectId) => (await entries().findOne({ _id: id }))?.['points_remaining'];

  beforeAll(async () => {
    t = await openTestDb('points');
    await createPlatformIndexes(t.db);
  });
  beforeEach(async () => {
    await resetLedger(t.db, fixtures());
    ledger = new PointsLedger(t.db, { lockMs: 200 });
    await ledger.ensureIndexes();
  });
  afterAll(() => t.drop());

  it('balance: CONFIRMED entries with points left, by account (both id forms) and by wallet', async () => {
    expect(await ledger.balance({ masterAccountId: account })).toBe(1100);
    expect(await ledger.balance({ masterAccountId: account.toHexString(), walletAddress: WALLET })).toBe(1100);
    expect(await ledger.balance({ masterAccountId: new ObjectId(), walletAddress: WALLET })).toBe(1100);
    expect(await ledger.balance({ masterAccountId: new ObjectId() })).toBe(0);
  });

  it('charge spends in the platform order and records one movement; a second delivery is a no-op', async () => {
    const first = await ledger.charge({ jobId: 'job1', masterAccountId: account, walletAddress: WALLET, points: 450, reason: 'quote' });
    expect(first.replay).toBe(false);
    expect(first.spends).toEqual([
      { entryId: gift.toHexString(), points: 100 },
      { entryId: cheap.toHexString(), points: 200 },
      { entryId: oldFull.toHexString(), points: 150 },
    ]);
    expect([await remaining(gift), await remaining(cheap), await remaining(oldFull), await remaining(newFull)]).toEqual([0, 0, 150, 500]);
    const before = await snapshot(t.db);
    const again = await ledger.charge({ jobId: 'job1', masterAccountId: account, walletAddress: WALLET, points: 450, reason: 'quote' });
    expect(again).toMatchObject({ replay: true, points: 450, spends: first.spends });
    expect(await snapshot(t.db)).toEqual(before);
    expect(await entries().countDocuments({ [SPEND_MARKER_FIELD]: { $exists: true } })).toBe(0);
    await expect(
      ledger.charge({ jobId: 'job1', masterAccountId: account, walletAddress: WALLET, points: 451, reason: 'quote' }),
    ).rejects.toThrow(MovementConflictError);
    const history = await ledger.history({ jobId: 'job1' });
    expect(history).toHaveLength(1);
    expect(history[0]).toMatchObject({ key: 'training:job1:charge', kind: 'charge', points: 450, reason: 'quote', state: 'applied' });
  });

  it('insufficient funds: a typed error and no trace at all', async () => {
    const before = await snapshot(t.db);
    const err = await ledger
      .charge({ jobId: 'poor', masterAccountId: account, walletAddress: WALLET, points: 1101, reason: 'quote' })
      .catch((e: unknown) => e);
    expect(err).toBeInstanceOf(InsufficientPointsError);
    expect(err).toMatchObject({ balance: 1100, needed: 1101, code: 'INSUFFICIENT_POINTS' });
    expect(await snapshot(t.db)).toEqual(before);
    expect(await ledger.history({ jobId: 'poor' })).toEqual([]);
  });

  it('concurrent charges on one account never go below zero; losers leave no trace', async () => {
    ledger = new PointsLedger(t.db, { lockMs: 20_000 }); // longer than one charge takes on a loaded server
    const jobs = Array.from({ length: 12 }, (_, i) => `c${i}`);
    const results = await Promise.allSettled(
      jobs.map((jobId) => ledger.charge({ jobId, masterAccountId: account, walletAddress: WALLET, points: 150, reason: 'quote' })),
    );
    const won = results.filter((r) => r.status === 'fulfilled').length;
    const lost = results.filter((r) => r.status === 'rejected');
    for (const r of lost) expect((r as PromiseRejectedResult).reason).toBeInstanceOf(InsufficientPointsError);
    const all = await entries().find({}).toArray();
    expect(all.every((e) => (e['points_remaining'] as number) >= 0)).toBe(true);
    const left = await ledger.balance({ masterAccountId: account, walletAddress: WALLET });
    expect(won * 150 + left).toBe(1100);
    expect(left).toBeLessThan(150);
    expect(won).toBe(7);
    expect(await movements().countDocuments({})).toBe(won);
    expect(await entries().countDocuments({ [SPEND_MARKER_FIELD]: { $exists: true } })).toBe(0);
  });

  it('a stale plan (entry spent by someone else mid-charge) is rolled back and re-planned', async () => {
    let raced = false;
    ledger = new PointsLedger(t.db, { lockMs: 200 }, {
      after: async (step) => {
        if (step === 'charge:journal' && !raced) {
          raced = true;
          // the platform's own generation billing spends the gift entry after our plan was made
          await entries().updateOne({ _id: gift }, { $inc: { points_remaining: -100 } });
        }
      },
    });
    await new Promise((r) => setTimeout(r, 0));
    const res = await ledger.charge({ jobId: 'stale', masterAccountId: account, walletAddress: WALLET, points: 250, reason: 'q' });
    expect(res.points).toBe(250);
    const total = res.spends.reduce((s, x) => s + x.points, 0);
    expect(total).toBe(250);
    expect(await ledger.balance({ masterAccountId: account, walletAddress: WALLET })).toBe(1100 - 100 - 250);
  });

  it('settle refunds charged − used exactly once, never more than charged', async () => {
    await ledger.charge({ jobId: 'j', masterAccountId: account, walletAddress: WALLET, points: 400, reason: 'quote' });
    const s1 = await ledger.settle({ jobId: 'j', usedPoints: 150, reason: 'actual GPU time' });
    expect(s1).toMatchObject({ charged: 400, usedPoints: 150, refunded: 250, replay: false, ledgerEntryId: ledgerEntryIdFor(refundKey('j')).toHexString() });
    const s2 = await ledger.settle({ jobId: 'j', usedPoints: 0, reason: 'duplicate with other figures' });
    expect(s2).toMatchObject({ refunded: 250, usedPoints: 150, replay: true });
    const refund = await entries().findOne({ _id: ledgerEntryIdFor(refundKey('j')) });
    expect(refund).toMatchObject({
      master_account_id: account,
      depositor_address: wallet,
      status: 'CONFIRMED',
      type: 'TRAINING_REFUND',
      points_credited: 250,
      points_remaining: 250,
      deposit_tx_hash: 'training:j:refund',
      related_items: { trainingJobId: 'j', chargedPoints: 400, usedPoints: 150 },
    });
    expect(refund).not.toHaveProperty('funding_rate_applied'); // like the platform's refunds: spent first next time
    expect(await ledger.balance({ masterAccountId: account, walletAddress: WALLET })).toBe(1100 - 150);
    // a late duplicate of the charge is still a no-op
    expect(await ledger.charge({ jobId: 'j', masterAccountId: account, points: 400, reason: 'again' })).toMatchObject({ replay: true });

    await ledger.charge({ jobId: 'k', masterAccountId: account, walletAddress: WALLET, points: 100, reason: 'quote' });
    expect(await ledger.settle({ jobId: 'k', usedPoints: -50, reason: 'platform failure', outcome: 'failed' })).toMatchObject({ refunded: 100 });
    await ledger.charge({ jobId: 'm', masterAccountId: account, walletAddress: WALLET, points: 100, reason: 'quote' });
    expect(await ledger.settle({ jobId: 'm', usedPoints: 10_000, reason: 'overran' })).toMatchObject({ refunded: 0, usedPoints: 100, ledgerEntryId: null });
    await ledger.charge({ jobId: 'c', masterAccountId: account, walletAddress: WALLET, points: 100, reason: 'quote' });
    await ledger.settle({ jobId: 'c', usedPoints: 30, reason: 'cancelled by user', outcome: 'cancelled' });
    expect((await entries().findOne({ deposit_tx_hash: 'training:c:refund' }))?.['type']).toBe('TRAINING_REFUND_CANCELLED');
  });

  it('settle of a job that was never charged writes nothing', async () => {
    const before = await snapshot(t.db);
    expect(await ledger.settle({ jobId: 'never', usedPoints: 0, reason: 'insufficient balance' })).toMatchObject({ charged: 0, refunded: 0 });
    expect(await snapshot(t.db)).toEqual(before);
  });

  it('credits each (job, kind) exactly once; summary and account history', async () => {
    const creator = new ObjectId();
    const trainer = new ObjectId();
    await ledger.charge({ jobId: 'x', masterAccountId: account, walletAddress: WALLET, points: 300, reason: 'quote' });
    await ledger.settle({ jobId: 'x', usedPoints: 200, reason: 'done' });
    const c1 = await ledger.credit({ jobId: 'x', recipientAccountId: creator, recipientWalletAddress: '0xCREATOR', points: 10, kind: 'dataset-creator', reason: 'dataset used' });
    const c2 = await ledger.credit({ jobId: 'x', recipientAccountId: creator, points: 10, kind: 'dataset-creator', reason: 'dup' });
    const c3 = await ledger.credit({ jobId: 'x', recipientAccountId: trainer.toHexString(), points: 5, kind: 'trainer', reason: 'trainer share' });
    expect(c1.replay).toBe(false);
    expect(c2).toMatchObject({ replay: true, points: 10, ledgerEntryId: c1.ledgerEntryId });
    expect(c3.replay).toBe(false);
    expect(await ledger.balance({ masterAccountId: creator })).toBe(10);
    expect(await ledger.balance({ masterAccountId: new ObjectId(), walletAddress: '0xcreator' })).toBe(10);
    expect(await ledger.balance({ masterAccountId: trainer })).toBe(5);
    expect(await entries().findOne({ deposit_tx_hash: 'training:x:credit:dataset-creator' })).toMatchObject({
      type: 'TRAINING_DATASET_CREATOR_SHARE',
      master_account_id: creator,
      depositor_address: '0xcreator',
      status: 'CONFIRMED',
    });
    expect(await ledger.jobSummary('x')).toEqual({
      jobId: 'x',
      charged: 300,
      refunded: 100,
      credited: { 'dataset-creator': 10, trainer: 5 },
      totalCredited: 15,
    });
    expect((await ledger.history({ jobId: 'x' })).map((m) => m.kind)).toEqual(['charge', 'refund', 'credit', 'credit']);
    expect((await ledger.history({ masterAccountId: creator })).map((m) => m.key)).toEqual(['training:x:credit:dataset-creator']);
    expect((await ledger.history({ masterAccountId: account })).map((m) => m.key)).toEqual(['training:x:charge', 'training:x:refund']);
  });

  it('platform entries keep every field we do not own', async () => {
    const before = await entries().find({}).sort({ _id: 1 }).toArray();
    await ledger.charge({ jobId: 'keep', masterAccountId: account, walletAddress: WALLET, points: 700, reason: 'q' });
    await ledger.settle({ jobId: 'keep', usedPoints: 100, reason: 'done' });
    const after = new Map((await entries().find({}).toArray()).map((e) => [e._id.toHexString(), e]));
    for (const b of before) {
      const a = after.get(b._id.toHexString())!;
      const { points_remaining: _r1, ...restBefore } = b;
      const { points_remaining: _r2, ...restAfter } = a;
      void _r1; void _r2;
      expect(restAfter).toEqual(restBefore);
    }
  });

  describe('crash replay: stop after every write, run again from the start', () => {
    const creator = new ObjectId();
    const trainer = new ObjectId();
    const runAll = async (l: PointsLedger) => {
      await l.charge({ jobId: 'cr', masterAccountId: account, walletAddress: WALLET, points: 450, reason: 'quote' });
      await l.settle({ jobId: 'cr', usedPoints: 120, reason: 'actual' });
      await l.credit({ jobId: 'cr', recipientAccountId: creator, points: 20, kind: 'dataset-creator', reason: 'creator share' });
      await l.credit({ jobId: 'cr', recipientAccountId: trainer, points: 7, kind: 'trainer', reason: 'trainer share' });
    };

    it('final balances and records equal a clean single run, for every crash point', async () => {
      await resetLedger(t.db, fixtures());
      await runAll(new PointsLedger(t.db, { lockMs: 100 }));
      const clean = await snapshot(t.db);
      const steps: string[] = [];
      for (let n = 1; n < 100; n++) {
        await resetLedger(t.db, fixtures());
        // A process killed after its n-th write: it writes nothing more and its locks stay held.
        const killable = killableDb(t.db);
        const probe = crashAfterWrite(n, killable);
        const crashing = new PointsLedger(killable.db, { lockMs: 100 }, probe);
        try {
          await runAll(crashing);
        } catch (err) {
          if (!(err instanceof SimulatedCrashError)) throw err;
        }
        const crashedAt = probe.crashedAt;
        if (crashedAt === null) break; // ran to the end: every step has been covered
        steps.push(crashedAt);
        await runAll(new PointsLedger(t.db, { lockMs: 100 })); // the retry, from the start
        expect({ crashedAt, state: await snapshot(t.db) }).toEqual({ crashedAt, state: clean });
      }
      expect(steps).toEqual(
        expect.arrayContaining(['charge:journal', 'charge:spend:0', 'charge:spend:2', 'charge:applied', 'charge:unmark:0', 'settle:journal', 'settle:ledger', 'settle:applied', 'credit:journal', 'credit:ledger', 'credit:applied']),
      );
    }, 120_000);

    it('also for a charge whose plan goes stale (rollback and re-plan)', async () => {
      // After our plan is written, the platform's own billing spends 150 of the 0.8-rate entry,
      // so our second planned spend no longer fits: roll back, re-plan, apply.
      const drainOnce = () => {
        let drained = false;
        return async (step: string) => {
          if (step === 'charge:journal' && !drained) {
            drained = true;
            await entries().updateOne({ _id: cheap }, { $inc: { points_remaining: -150 } });
          }
        };
      };
      const charge = (l: PointsLedger) =>
        l.charge({ jobId: 'st', masterAccountId: account, walletAddress: WALLET, points: 450, reason: 'quote' });

      await resetLedger(t.db, fixtures());
      await charge(new PointsLedger(t.db, { lockMs: 100 }, { after: drainOnce() }));
      const clean = await snapshot(t.db);
      expect(await ledger.balance({ masterAccountId: account, walletAddress: WALLET })).toBe(1100 - 150 - 450);

      const steps: string[] = [];
      for (let n = 1; n < 100; n++) {
        await resetLedger(t.db, fixtures());
        const killable = killableDb(t.db);
        const probe = crashAfterWrite(n, killable, drainOnce());
        const crashing = new PointsLedger(killable.db, { lockMs: 100 }, probe);
        try {
          await charge(crashing);
        } catch (err) {
          if (!(err instanceof SimulatedCrashError)) throw err;
        }
        const crashedAt = probe.crashedAt;
        if (crashedAt === null) break;
        steps.push(crashedAt);
        await charge(new PointsLedger(t.db, { lockMs: 100 }));
        expect({ crashedAt, state: await snapshot(t.db) }).toEqual({ crashedAt, state: clean });
      }
      expect(steps).toEqual(expect.arrayContaining(['charge:stale-plan', 'charge:undo:0', 'charge:rolled-back']));
    }, 120_000);
  });
});
