import { ensureNamedIndexes, idForms, isDuplicateKeyError, toObjectIdOrString } from '@stationthis/common';
import type { Collection, Db, Document, Filter, ObjectId } from 'mongodb';
import type { AccountRef } from './types';

export const CREDIT_LEDGER_COLLECTION = 'credit_ledger';
/** Field we add to a credit_ledger entry while a charge is being applied to it (2PC "pendingTransactions"). */
export const SPEND_MARKER_FIELD = 'training_spend_keys';

/** The fields of a platform credit_ledger entry we read or write; every other field is kept as is. */
export interface LedgerEntryDoc {
  _id: ObjectId;
  status?: string;
  points_remaining?: number;
  funding_rate_applied?: number | null;
  createdAt?: Date;
  [SPEND_MARKER_FIELD]?: string[];
  [extra: string]: unknown;
}

/** A CONFIRMED entry we create (refund, credit, grant), shaped like the platform's createRewardCreditEntry. */
export interface NewEntry {
  _id: ObjectId;
  /** The movement's idempotency key: also `deposit_tx_hash` and `idempotency_key`. */
  key: string;
  accountId: string;
  walletAddress?: string | null;
  points: number;
  type: string;
  description: string;
  related: Record<string, unknown>;
}

export type PlannedSpend = { entryId: ObjectId; points: number };

/**
 * The platform's `credit_ledger`, as this library touches it: spendable
 * entries, guarded spends marked with the movement's key, and new CONFIRMED
 * entries with deterministic ids. Each write is idempotent on its own.
 */
export class CreditLedgerEntries {
  private readonly ledger: Collection<LedgerEntryDoc>;

  constructor(db: Db) {
    this.ledger = db.collection<LedgerEntryDoc>(CREDIT_LEDGER_COLLECTION);
  }

  /**
   * The platform's two balance indexes (scripts/create-credit-ledger-indexes.js).
   * If the platform already made an equivalent index under another name, that one is kept.
   */
  async ensureIndexes(): Promise<void> {
    await ensureNamedIndexes(this.ledger, [
      { key: { master_account_id: 1, status: 1, points_remaining: 1 }, name: 'st_account_balance' },
      { key: { depositor_address: 1, status: 1, points_remaining: 1 }, name: 'st_wallet_balance' },
    ]);
  }

  /** CONFIRMED entries with points left, by account (both id forms) or wallet, in the platform's spend order. */
  async spendable(account: AccountRef): Promise<LedgerEntryDoc[]> {
    const or: Document[] = [{ master_account_id: { $in: idForms(account.masterAccountId) } }];
    const wallet = normalizeWallet(account.walletAddress);
    if (wallet) {
      const forms = account.walletAddress && account.walletAddress !== wallet ? [wallet, account.walletAddress] : [wallet];
      or.push({ depositor_address: { $in: forms } });
    }
    const entries = await this.ledger
      .find({ status: 'CONFIRMED', points_remaining: { $gt: 0 }, $or: or } as Filter<LedgerEntryDoc>)
      .toArray();
    return entries.sort(platformSpendOrder);
  }

  /**
   * One planned spend: `$inc` guarded by `points_remaining >= n` and the key
   * not yet on the entry. 'spent' = done now; 'already' = done before (a
   * replay); 'stale' = the entry no longer has the points (the plan is stale).
   */
  async spend(item: PlannedSpend, key: string): Promise<'spent' | 'already' | 'stale'> {
    const r = await this.ledger.updateOne(
      { _id: item.entryId, status: 'CONFIRMED', points_remaining: { $gte: item.points }, [SPEND_MARKER_FIELD]: { $ne: key } } as Filter<LedgerEntryDoc>,
      { $inc: { points_remaining: -item.points }, $push: { [SPEND_MARKER_FIELD]: key } } as Document,
    );
    if (r.matchedCount === 1) return 'spent';
    const marked = await this.ledger.findOne({ _id: item.entryId, [SPEND_MARKER_FIELD]: key } as Filter<LedgerEntryDoc>, { projection: { _id: 1 } });
    return marked ? 'already' : 'stale';
  }

  /** Undo one spend of `key` if it was applied; true when this call undid it. Then call dropEmptyMarker. */
  async unspend(item: PlannedSpend, key: string): Promise<boolean> {
    const r = await this.ledger.updateOne({ _id: item.entryId, [SPEND_MARKER_FIELD]: key } as Filter<LedgerEntryDoc>, {
      $inc: { points_remaining: item.points },
      $pull: { [SPEND_MARKER_FIELD]: key },
    } as Document);
    return r.matchedCount === 1;
  }

  /** After the journal says applied the marker is no longer needed; true when this call removed it. Then call dropEmptyMarker. */
  async unmark(entryId: ObjectId, key: string): Promise<boolean> {
    const r = await this.ledger.updateOne({ _id: entryId, [SPEND_MARKER_FIELD]: key } as Filter<LedgerEntryDoc>, {
      $pull: { [SPEND_MARKER_FIELD]: key },
    } as Document);
    return r.matchedCount === 1;
  }

  /**
   * Insert a CONFIRMED entry; false when it exists already (inserted before a
   * crash, or by a duplicate call): the deterministic `_id` makes it once only.
   */
  async insert(e: NewEntry): Promise<boolean> {
    const now = new Date();
    const entry: LedgerEntryDoc = {
      _id: e._id,
      master_account_id: toObjectIdOrString(e.accountId) /* new entries use ObjectId like the platform; a legacy string id stays */,
      status: 'CONFIRMED',
      type: e.type,
      description: e.description,
      points_credited: e.points,
      points_remaining: e.points,
      related_items: e.related,
      // The platform's unique, non-sparse index: a missing value would collide with every other
      // entry lacking it, so (like upsertRewardTally) we set a synthetic, unique one.
      deposit_tx_hash: e.key,
      idempotency_key: e.key,
      createdAt: now,
      updatedAt: now,
    };
    if (e.walletAddress) entry['depositor_address'] = e.walletAddress;
    try {
      await this.ledger.insertOne(entry);
      return true;
    } catch (err) {
      if (isDuplicateKeyError(err)) return false;
      throw err;
    }
  }

  /** The entry a key created (by `_id`, or by `deposit_tx_hash` where the platform's index answered first). */
  findCreated(entryId: ObjectId, key: string): Promise<LedgerEntryDoc | null> {
    return this.ledger.findOne({ $or: [{ _id: entryId }, { deposit_tx_hash: key }] } as Filter<LedgerEntryDoc>);
  }

  /** Leave no empty marker array behind on a platform document (a separate write: a crash may fall between). */
  async dropEmptyMarker(entryId: ObjectId): Promise<void> {
    await this.ledger.updateOne({ _id: entryId, [SPEND_MARKER_FIELD]: { $size: 0 } } as Filter<LedgerEntryDoc>, { $unset: { [SPEND_MARKER_FIELD]: '' } });
  }
}

/** Greedy over the ordered entries: take from each until the quote is covered. */
export function planSpends(entries: LedgerEntryDoc[], points: number): PlannedSpend[] {
  const plan: PlannedSpend[] = [];
  let left = points;
  for (const e of entries) {
    if (left <= 0) break;
    const take = Math.min(left, Math.floor(e.points_remaining ?? 0));
    if (take <= 0) continue;
    plan.push({ entryId: e._id, points: take });
    left -= take;
  }
  return plan;
}

/**
 * The platform's order (PointsService._deductFromCreditLedger): entries without
 * funding_rate_applied first, then ascending rate, then oldest, then _id.
 */
export function platformSpendOrder(a: LedgerEntryDoc, b: LedgerEntryDoc): number {
  const ra = a.funding_rate_applied ?? null;
  const rb = b.funding_rate_applied ?? null;
  if (ra === null && rb !== null) return -1;
  if (ra !== null && rb === null) return 1;
  if (ra !== null && rb !== null && ra !== rb) return ra - rb;
  const ta = a.createdAt?.getTime?.() ?? 0;
  const tb = b.createdAt?.getTime?.() ?? 0;
  if (ta !== tb) return ta - tb;
  return a._id.toHexString().localeCompare(b._id.toHexString());
}

/** Deposits store depositor_address lower-cased. */
export function normalizeWallet(wallet: string | null | undefined): string | null {
  return wallet ? wallet.trim().toLowerCase() : null;
}
