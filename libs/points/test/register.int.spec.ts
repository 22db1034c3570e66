import { container as rootContainer } from 'tsyringe';
import { MOVEMENT_PROBE, POINTS_DB, POINTS_LEDGER, POINTS_LEDGER_OPTIONS, PointsLedger, registerPoints } from '../src';
import { openTestDb, type TestDb } from './fixtures';

describe('registerPoints', () => {
  let t: TestDb;
  beforeAll(async () => {
    t = await openTestDb('points_register');
  });
  afterAll(() => t.drop());

  it('binds the Db, validated options, a no-op probe and one ledger behind the port', async () => {
    const c = rootContainer.createChildContainer();
    registerPoints(c, { db: t.db, ledger: { lockMs: 5_000 } });
    expect(c.resolve(POINTS_DB)).toBe(t.db);
    expect(c.resolve(POINTS_LEDGER_OPTIONS)).toEqual({ lockMs: 5_000, lockWaitMs: 120_000, maxChargeRetries: 10 });
    expect(await c.resolve(MOVEMENT_PROBE).after('charge:journal')).toBeUndefined();
    const ledger = c.resolve(PointsLedger);
    expect(c.resolve(POINTS_LEDGER)).toBe(ledger);
    expect(c.resolve(PointsLedger)).toBe(ledger);
    await ledger.ensureIndexes();
    expect(await ledger.balance({ masterAccountId: 'nobody' })).toBe(0);
    expect(() => registerPoints(c, { db: t.db })).toThrow(/already registered/);
  });

  it('rejects bad options when registering, naming each field', () => {
    const c = rootContainer.createChildContainer();
    expect(() => registerPoints(c, { db: t.db, ledger: { lockMs: -1, maxChargeRetries: 1.5 } })).toThrow(/Invalid points ledger options: lockMs: .*; maxChargeRetries: /);
    expect(() => registerPoints(rootContainer.createChildContainer(), { db: t.db, ledger: { lockMS: 5 } as never })).toThrow(/lockMS|Unrecognized/);
  });

  it('a container with only POINTS_DB still resolves the ledger with every default', () => {
    const c = rootContainer.createChildContainer();
    c.register(POINTS_DB, { useValue: t.db });
    expect(c.resolve(PointsLedger)).toBeInstanceOf(PointsLedger);
  });
});
