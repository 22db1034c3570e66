import { ObjectId, type Db } from 'mongodb';

export { openTestDb, type TestDb } from '../../../tools/testing/support';

export interface DepositSpec {
  _id?: ObjectId;
  account: ObjectId | string;
  wallet?: string;
  points: number;
  /** null = a platform reward/refund entry (no funding rate, no tx hash) */
  rate?: number | null;
  createdAt?: Date;
  status?: string;
}

/** A credit_ledger document shaped like DepositProcessorService / createRewardCreditEntry write them. */
export function platformEntry(spec: DepositSpec): Record<string, unknown> {
  const createdAt = spec.createdAt ?? new Date('2026-01-01T00:00:00Z');
  const base = {
    _id: spec._id ?? new ObjectId(),
    master_account_id: spec.account,
    points_credited: spec.points,
    points_remaining: spec.points,
    status: spec.status ?? 'CONFIRMED',
    createdAt,
    updatedAt: createdAt,
    legacy_note: { source: 'platform', keep: [1, 2, 3] },
  };
  if (spec.rate === null) {
    return { ...base, type: 'ADMIN_GIFT', description: 'gift', related_items: {}, ...(spec.wallet ? { depositor_address: spec.wallet } : {}) };
  }
  return {
    ...base,
    deposit_tx_hash: `0x${new ObjectId().toHexString()}${new ObjectId().toHexString()}`,
    deposit_log_index: 0,
    deposit_block_number: 123,
    vault_account: '0xvault',
    depositor_address: (spec.wallet ?? '0xdefault').toLowerCase(),
    token_address: '0xtoken',
    deposit_amount_wei: '1000000000000000000',
    chain_id: '1',
    referral_key: null,
    funding_rate_applied: spec.rate ?? 1,
    gross_deposit_usd: spec.points * 0.000337,
    user_credited_usd: spec.points * 0.000337,
  };
}

/** The platform's unique, non-sparse deposit_tx_hash index (scripts/create-credit-ledger-indexes.js). */
export async function createPlatformIndexes(db: Db): Promise<void> {
  await db.collection('credit_ledger').createIndex({ deposit_tx_hash: 1 }, { unique: true, name: 'deposit_tx_hash_1' });
}

export async function resetLedger(db: Db, entries: Array<Record<string, unknown>>): Promise<void> {
  await db.collection('credit_ledger').deleteMany({});
  await db.collection('training_points_movements').deleteMany({});
  if (entries.length) await db.collection('credit_ledger').insertMany(entries.map((e) => ({ ...e })));
}

/** Everything the ledger wrote, without wall-clock fields, for comparing runs. */
export async function snapshot(db: Db): Promise<unknown> {
  const strip = (d: Record<string, unknown>) => {
    const { createdAt, updatedAt, appliedAt, lock, ...rest } = d;
    void createdAt; void updatedAt; void appliedAt; void lock;
    return rest;
  };
  const ledger = await db.collection('credit_ledger').find({}).sort({ _id: 1 }).toArray();
  const movements = await db.collection('training_points_movements').find({}).sort({ _id: 1 }).toArray();
  return { ledger: ledger.map(strip), movements: movements.map(strip) };
}
