import { ObjectId } from 'mongodb';
import { MovementConflictError, PointsLedger, grantKey, ledgerEntryIdFor } from '../src';
import { createPlatformIndexes, openTestDb, resetLedger, type TestDb } from './fixtures';

describe('PointsLedger.grant (real server)', () => {
  let t: TestDb;
  let ledger: PointsLedger;
  const entries = () => t.db.collection('credit_ledger');

  beforeAll(async () => {
    t = await openTestDb('points_grant');
    await createPlatformIndexes(t.db);
  });
  beforeEach(async () => {
    await resetLedger(t.db, []);
    ledger = new PointsLedger(t.db);
    await ledger.ensureIndexes();
  });
  afterAll(() => t.drop());

  it('adds one platform-shaped CONFIRMED entry per key, visible by account and wallet; a repeat is a replay', async () => {
    const account = new ObjectId();
    const g = await ledger.grant({ idempotencyKey: 'demo-1', masterAccountId: account.toHexString(), walletAddress: '0xABC', points: 500, reason: 'demo top-up' });
    expect(g).toEqual({ key: 'grant:demo-1', points: 500, ledgerEntryId: ledgerEntryIdFor(grantKey('demo-1')).toHexString(), replay: false });
    expect(await entries().findOne({ _id: ledgerEntryIdFor('grant:demo-1') })).toMatchObject({
      master_account_id: account,
      depositor_address: '0xabc',
      status: 'CONFIRMED',
      type: 'ADMIN_GIFT',
      description: 'demo top-up',
      points_credited: 500,
      points_remaining: 500,
      deposit_tx_hash: 'grant:demo-1',
      related_items: { grantKey: 'demo-1' },
    });
    expect(await ledger.balance({ masterAccountId: account })).toBe(500);
    expect(await ledger.balance({ masterAccountId: new ObjectId(), walletAddress: '0xAbc' })).toBe(500);
    expect(await ledger.grant({ idempotencyKey: 'demo-1', masterAccountId: account, points: 500, reason: 'again' })).toMatchObject({ replay: true, ledgerEntryId: g.ledgerEntryId });
    expect(await entries().countDocuments({})).toBe(1);
    await expect(ledger.grant({ idempotencyKey: 'demo-1', masterAccountId: account, points: 600, reason: 'other amount' })).rejects.toThrow(MovementConflictError);
    await expect(ledger.grant({ idempotencyKey: 'demo-1', masterAccountId: new ObjectId(), points: 500, reason: 'other account' })).rejects.toThrow(MovementConflictError);
    await expect(ledger.grant({ idempotencyKey: ' ', masterAccountId: account, points: 5, reason: 'x' })).rejects.toThrow(RangeError);
    await expect(ledger.grant({ idempotencyKey: 'neg', masterAccountId: account, points: -5, reason: 'x' })).rejects.toThrow(RangeError);
    expect(await ledger.balance({ masterAccountId: account })).toBe(500);
  });

  it('granted points are spent by a charge like any platform reward entry', async () => {
    const account = new ObjectId();
    await ledger.grant({ idempotencyKey: 'g2', masterAccountId: account, points: 100, reason: 'gift', type: 'TRAINING_DEMO_GRANT' });
    expect((await entries().findOne({ deposit_tx_hash: 'grant:g2' }))?.['type']).toBe('TRAINING_DEMO_GRANT');
    await ledger.charge({ jobId: 'j', masterAccountId: account, points: 60, reason: 'quote' });
    expect(await ledger.balance({ masterAccountId: account })).toBe(40);
  });
});
