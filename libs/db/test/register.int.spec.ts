import { ObjectId } from 'mongodb';
import { container as rootContainer } from 'tsyringe';
import {
  DatasetRepository,
  LoraModelRepository,
  MONGO_DB,
  TrainingAttemptRepository,
  TrainingJobRepository,
  USER_CORE_COLLECTION,
  UserCoreAccounts,
  UserCoreReader,
  registerDb,
} from '../src';
import { openTestDb, type TestDb } from './helpers';

describe('registerDb and UserCoreAccounts (real server)', () => {
  let t: TestDb;
  beforeAll(async () => {
    t = await openTestDb('db_register');
  });
  afterAll(() => t.drop());

  it('binds the Db, one repository of each kind per container, and a transient account writer', () => {
    const c = rootContainer.createChildContainer();
    registerDb(c, { db: t.db });
    expect(c.resolve(MONGO_DB)).toBe(t.db);
    for (const cls of [TrainingJobRepository, TrainingAttemptRepository, DatasetRepository, LoraModelRepository, UserCoreReader] as const) {
      const first = c.resolve(cls as never);
      expect(first).toBeInstanceOf(cls);
      expect(c.resolve(cls as never)).toBe(first);
    }
    expect(c.resolve(UserCoreAccounts)).not.toBe(c.resolve(UserCoreAccounts));
    // another container gets its own singletons
    const other = rootContainer.createChildContainer();
    registerDb(other, { db: t.db });
    expect(other.resolve(TrainingJobRepository)).not.toBe(c.resolve(TrainingJobRepository));
    expect(() => registerDb(c, { db: t.db })).toThrow(/already registered/);
    expect(() => registerDb(rootContainer.createChildContainer(), {} as never)).toThrow(/needs \{ db \}/);
  });

  it('ensureAccount creates a platform-shaped account once and leaves an existing one unchanged', async () => {
    const accounts = new UserCoreAccounts(t.db);
    const reader = new UserCoreReader(t.db);
    const id = new ObjectId();
    const first = await accounts.ensureAccount({ masterAccountId: id.toHexString(), walletAddress: ' 0xAbC0000000000000000000000000000000000001 ' });
    expect(first.created).toBe(true);
    expect(first.user).toMatchObject({ _id: id, status: 'active', wallets: [{ address: '0xabc0000000000000000000000000000000000001', isPrimary: true }] });
    expect(reader.primaryWallet(await reader.findById(id))).toBe('0xabc0000000000000000000000000000000000001');
    const again = await accounts.ensureAccount({ masterAccountId: id, walletAddress: '0xother' });
    expect(again.created).toBe(false);
    expect(again.user.wallets).toEqual(first.user.wallets);
    expect(await t.db.collection(USER_CORE_COLLECTION).countDocuments({ _id: id })).toBe(1);
    await expect(accounts.ensureAccount({ masterAccountId: 'not-an-id', walletAddress: '0x1' })).rejects.toThrow(/not a 24-character hex ObjectId/);
    await expect(accounts.ensureAccount({ masterAccountId: new ObjectId(), walletAddress: '  ' })).rejects.toThrow(/wallet address is empty/);
  });
});
