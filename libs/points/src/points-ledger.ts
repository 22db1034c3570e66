import { ensureNamedIndexes, idForms, isDuplicateKeyError, toObjectIdOrString } from '@stationthis/common';
import { createHash, randomUUID } from 'node:crypto';
import { ObjectId, type Collection, type Db, type Document, type Filter } from 'mongodb';
import { inject, injectable } from 'tsyringe';
import { InsufficientPointsError, MovementBusyError, MovementConflictError, SimulatedCrashError } from './errors';
import { POINTS_DB } from './tokens';
import type {
  AccountRef,
  ChargeInput,
  ChargeResult,
  CreditInput,
  CreditKind,
  CreditResult,
  JobPointsSummary,
  LedgerMovement,
  MovementKind,
  PointsLedgerOptions,
  SettleInput,
  SettleResult,
  SettleOutcome,
  Spend,
} from './types';

export const CREDIT_LEDGER_COLLECTION = 'credit_ledger';
export const MOVEMENTS_COLLECTION = 'training_points_movements';
/** Short-lived per-account locks for charges. */
export const LOCKS_COLLECTION = 'training_points_locks';
/** Field we add to a credit_ledger entry while a charge is being applied to it (2PC "pendingTransactions"). */
export const SPEND_MARKER_FIELD = 'training_spend_keys';

/** The platform's entry types for refund entries; ours for the creator and trainer shares. */
const REFUND_TYPE: Record<SettleOutcome, string> = {
  completed: 'TRAINING_REFUND',
  failed: 'TRAINING_REFUND',
  cancelled: 'TRAINING_REFUND_CANCELLED',
};
const CREDIT_TYPE: Record<CreditKind, string> = {
  'dataset-creator': 'TRAINING_DATASET_CREATOR_SHARE',
  trainer: 'TRAINING_TRAINER_SHARE',
};

/**
 * Idempotency keys are per job and platform attempt (the job's `retryCount`).
 * Attempt 0 keeps the original form (`training:<job>:charge`) so rows written
 * before attempts were keyed still match; a Retry's attempt n > 0 gets
 * `training:<job>:r<n>:…`, a new charge with its own refund and credits.
 */
function keyPrefix(jobId: string, platformAttempt: number): string {
  assertAttempt(platformAttempt);
  return platformAttempt === 0 ? `training:${jobId}` : `training:${jobId}:r${platformAttempt}`;
}
export function chargeKey(jobId: string, platformAttempt = 0): string {
  return `${keyPrefix(jobId, platformAttempt)}:charge`;
}
export function refundKey(jobId: string, platformAttempt = 0): string {
  return `${keyPrefix(jobId, platformAttempt)}:refund`;
}
export function creditKey(jobId: string, kind: CreditKind, platformAttempt = 0): string {
  return `${keyPrefix(jobId, platformAttempt)}:credit:${kind}`;
}

/**
 * A deterministic ObjectId for the credit_ledger entry a movement creates. The
 * platform's code expects ObjectId `_id`s in credit_ledger; deriving it from the
 * idempotency key makes the always-present `_id` index reject a second insert
 * even where the platform's unique `deposit_tx_hash` index was never created.
 */
export function ledgerEntryIdFor(key: string): ObjectId {
  return new ObjectId(createHash('sha256').update(`credit_ledger:${key}`).digest().subarray(0, 12));
}

interface LedgerEntryDoc {
  _id: ObjectId;
  status?: string;
  points_remaining?: number;
  funding_rate_applied?: number | null;
  createdAt?: Date;
  [SPEND_MARKER_FIELD]?: string[];
  [extra: string]: unknown;
}

interface MovementDoc {
  _id: string;
  jobId: string;
  /** Missing on rows written before attempts were keyed: read as 0. */
  platformAttempt?: number;
  kind: MovementKind;
  creditKind?: CreditKind;
  accountId: string;
  walletAddress?: string | null;
  points: number;
  reason: string;
  state: 'pending' | 'applied' | 'rolling_back';
  plan?: Array<{ entryId: ObjectId; points: number }>;
  usedPoints?: number;
  chargedPoints?: number;
  outcome?: SettleOutcome;
  ledgerEntryId?: ObjectId | null;
  createdAt: Date;
  updatedAt: Date;
  appliedAt?: Date;
}

interface LockDoc {
  _id: string;
  token: string;
  until: Date;
}
type HeldLock = Pick<LockDoc, '_id' | 'token'>;

/** A charge locks the account and, when given, the wallet (entries are matched by either). */
function accountLockNames(account: AccountRef): string[] {
  const names = [`account:${String(account.masterAccountId)}`];
  const wallet = normalizeWallet(account.walletAddress);
  if (wallet) names.push(`wallet:${wallet}`);
  return names;
}


/**
 * Exactly-once training points on the platform's `credit_ledger`, with only
 * single-document atomic writes (no transactions: FerretDB v1 has none).
 *
 * - Every movement has a deterministic key and a journal document in
 *   `training_points_movements`, written first; every later write is
 *   idempotent, so running the same call again after a crash between any two
 *   writes finishes the movement instead of repeating it.
 * - A charge spends credit_ledger entries with guarded `$inc`s
 *   (`points_remaining >= n` and the key not yet in the entry's marker list),
 *   so no entry or account goes negative under concurrency.
 * - Refunds and credits are new CONFIRMED credit_ledger entries, shaped like
 *   the platform's createRewardCreditEntry, with a deterministic `_id` and
 *   `deposit_tx_hash` = key (the platform's unique non-sparse index).
 * See roadmap/training-system/adr/0002-leases-fencing-and-ledger-idempotency.md.
 */
@injectable()
export class PointsLedger {
  private readonly ledger: Collection<LedgerEntryDoc>;
  private readonly movements: Collection<MovementDoc>;
  private readonly locks: Collection<LockDoc>;
  private lockMs = 30_000;
  private lockWaitMs = 120_000;
  private maxChargeRetries = 10;
  private faultHook: ((step: string) => void | Promise<void>) | undefined;

  constructor(@inject(POINTS_DB) db: Db) {
    this.ledger = db.collection<LedgerEntryDoc>(CREDIT_LEDGER_COLLECTION);
    this.movements = db.collection<MovementDoc>(MOVEMENTS_COLLECTION);
    this.locks = db.collection<LockDoc>(LOCKS_COLLECTION);
  }

  /** Tunables and the test fault hook; returns `this` so it chains after resolve(). */
  configure(options: PointsLedgerOptions): this {
    if (options.lockMs !== undefined) this.lockMs = options.lockMs;
    if (options.lockWaitMs !== undefined) this.lockWaitMs = options.lockWaitMs;
    if (options.maxChargeRetries !== undefined) this.maxChargeRetries = options.maxChargeRetries;
    if ('faultHook' in options) this.faultHook = options.faultHook;
    return this;
  }

  /**
   * Our journal's indexes, and the platform's two balance indexes (from
   * scripts/create-credit-ledger-indexes.js). If the platform already made an
   * equivalent index under another name, that one is kept.
   */
  async ensureIndexes(): Promise<void> {
    await ensureNamedIndexes(this.movements, [
      { key: { jobId: 1, createdAt: 1 }, name: 'st_job' },
      { key: { accountId: 1, createdAt: 1 }, name: 'st_account' },
      { key: { state: 1, updatedAt: 1 }, name: 'st_state' },
    ]);
    await ensureNamedIndexes(this.ledger, [
      { key: { master_account_id: 1, status: 1, points_remaining: 1 }, name: 'st_account_balance' },
      { key: { depositor_address: 1, status: 1, points_remaining: 1 }, name: 'st_wallet_balance' },
    ]);
  }

  /** Spendable points: CONFIRMED entries with points_remaining > 0, by account (both id forms) or wallet. */
  async balance(account: AccountRef): Promise<number> {
    const entries = await this.spendableEntries(account);
    return entries.reduce((sum, e) => sum + (e.points_remaining ?? 0), 0);
  }

  /**
   * Charge the quote for `jobId`, exactly once. Entries are spent in the
   * platform's order (PointsService._deductFromCreditLedger): entries without
   * `funding_rate_applied` (refunds, rewards) first, then ascending funding
   * rate; oldest first within a rate. Throws InsufficientPointsError, leaving
   * nothing behind, when the balance is short.
   */
  async charge(input: ChargeInput): Promise<ChargeResult> {
    assertPoints(input.points, 'charge');
    const attempt = input.platformAttempt ?? 0;
    const key = chargeKey(input.jobId, attempt);
    // Charges on one account take turns. Besides keeping plans fresh, this is what makes the
    // guarded $inc safe on FerretDB v1, whose conditional updates are not atomic under concurrency.
    const held = await this.acquireLocks(accountLockNames(input));
    let crashed = false;
    try {
      for (let round = 0; round <= this.maxChargeRetries; round++) {
        let journal = await this.movements.findOne({ _id: key });
        if (journal && journal.points !== input.points) {
          throw new MovementConflictError(
            `Training job ${input.jobId} (platform attempt ${attempt}) already has a charge of ${journal.points} points; a charge of ${input.points} was asked.`,
          );
        }
        if (journal?.state === 'applied') {
          await this.cleanSpendMarkers(journal);
          const settled = Boolean(await this.movements.findOne({ _id: refundKey(input.jobId, attempt) }, { projection: { _id: 1 } }));
          return chargeResult(journal, true, settled);
        }
        if (journal?.state === 'rolling_back') {
          await this.rollBackCharge(journal, held);
          continue;
        }
        if (!journal) {
          if (await this.movements.findOne({ _id: refundKey(input.jobId, attempt) }, { projection: { _id: 1 } })) {
            throw new MovementConflictError(
              `Training job ${input.jobId} was already settled for platform attempt ${attempt}; it cannot be charged again ` +
                'under the same attempt. A platform Retry charges under the next attempt number.',
            );
          }
          const entries = await this.spendableEntries(input);
          const balance = entries.reduce((sum, e) => sum + (e.points_remaining ?? 0), 0);
          if (balance < input.points) throw new InsufficientPointsError(balance, input.points, input.jobId);
          const now = new Date();
          const doc: MovementDoc = {
            _id: key,
            jobId: input.jobId,
            platformAttempt: attempt,
            kind: 'charge',
            accountId: String(input.masterAccountId),
            walletAddress: normalizeWallet(input.walletAddress),
            points: input.points,
            reason: input.reason,
            state: 'pending',
            plan: planSpends(entries, input.points),
            createdAt: now,
            updatedAt: now,
          };
          try {
            await this.movements.insertOne(doc);
          } catch (err) {
            if (isDuplicateKeyError(err)) continue; // a concurrent caller won; follow it
            throw err;
          }
          await this.step('charge:journal');
          journal = doc;
        }
        if (await this.applyCharge(journal, held)) {
          const done = (await this.movements.findOne({ _id: key })) as MovementDoc;
          await this.cleanSpendMarkers(done);
          return chargeResult(done, false, false);
        }
        // The plan went stale (someone else spent an entry): undo and plan again.
        await this.rollBackCharge({ ...journal, state: 'rolling_back' }, held);
      }
      throw new Error(
        `Charging training job ${input.jobId} found its plan stale ${this.maxChargeRetries + 1} times in a row ` +
          '(the balance keeps changing under it); nothing was charged. Retry later.',
      );
    } catch (err) {
      crashed = err instanceof SimulatedCrashError;
      throw err;
    } finally {
      // A simulated crash keeps its locks, as a killed process would; they expire after lockMs.
      if (!crashed) await this.releaseLocks(held).catch(() => undefined);
    }
  }

  /**
   * Reconcile a charged job exactly once: refund `charged - usedPoints`
   * (clamped to [0, charged]). Success: usedPoints = actual GPU cost. Platform
   * failure: 0. Cancel: the time used. The first settle wins; a later one,
   * even with other figures, returns the first result. A job never charged
   * settles to zero without writing anything.
   */
  async settle(input: SettleInput): Promise<SettleResult> {
    const attempt = input.platformAttempt ?? 0;
    const key = refundKey(input.jobId, attempt);
    let charge = await this.movements.findOne({ _id: chargeKey(input.jobId, attempt) });
    if (charge && charge.state !== 'applied') {
      // The charger died mid-way: finish (or undo) it first, so the refund is computed from what was taken.
      try {
        await this.charge({
          jobId: charge.jobId,
          masterAccountId: charge.accountId,
          walletAddress: charge.walletAddress,
          points: charge.points,
          reason: charge.reason,
          platformAttempt: attempt,
        });
      } catch (err) {
        if (!(err instanceof InsufficientPointsError)) throw err;
      }
      charge = await this.movements.findOne({ _id: chargeKey(input.jobId, attempt) });
    }
    if (!charge) {
      return { key, jobId: input.jobId, platformAttempt: attempt, charged: 0, usedPoints: 0, refunded: 0, ledgerEntryId: null, replay: false };
    }
    const charged = charge.points;
    const used = Math.min(charged, Math.max(0, Math.round(input.usedPoints)));
    const refund = charged - used;
    const entryId = ledgerEntryIdFor(key);
    let journal = await this.movements.findOne({ _id: key });
    let replay = true;
    if (!journal) {
      const now = new Date();
      const doc: MovementDoc = {
        _id: key,
        jobId: input.jobId,
        platformAttempt: attempt,
        kind: 'refund',
        accountId: charge.accountId,
        walletAddress: charge.walletAddress ?? null,
        points: refund,
        reason: input.reason,
        state: refund > 0 ? 'pending' : 'applied',
        usedPoints: used,
        chargedPoints: charged,
        outcome: input.outcome ?? (used === 0 ? 'failed' : 'completed'),
        ledgerEntryId: refund > 0 ? entryId : null,
        createdAt: now,
        updatedAt: now,
        ...(refund > 0 ? {} : { appliedAt: now }),
      };
      try {
        await this.movements.insertOne(doc);
        journal = doc;
        replay = false;
        await this.step('settle:journal');
      } catch (err) {
        if (!isDuplicateKeyError(err)) throw err;
        journal = (await this.movements.findOne({ _id: key })) as MovementDoc;
      }
    }
    if (journal.state === 'pending') {
      replay = false;
      await this.insertLedgerEntry(journal, REFUND_TYPE[journal.outcome ?? 'failed'], {
        trainingJobId: journal.jobId,
        platformAttempt: attempt,
        chargedPoints: journal.chargedPoints,
        usedPoints: journal.usedPoints,
      });
      await this.step('settle:ledger');
      await this.markApplied(key);
      await this.step('settle:applied');
    }
    return {
      key,
      jobId: input.jobId,
      platformAttempt: attempt,
      charged: journal.chargedPoints ?? charged,
      usedPoints: journal.usedPoints ?? used,
      refunded: journal.points,
      ledgerEntryId: journal.ledgerEntryId ? journal.ledgerEntryId.toHexString() : null,
      replay,
    };
  }

  /**
   * Credit a contributor for `jobId` exactly once per (jobId, kind). Shares
   * are minted like the platform's contributor rewards; the caller decides the
   * amount and whether it applies (e.g. dataset creator ≠ job owner).
   */
  async credit(input: CreditInput): Promise<CreditResult> {
    assertPoints(input.points, 'credit');
    const attempt = input.platformAttempt ?? 0;
    const key = creditKey(input.jobId, input.kind, attempt);
    let journal = await this.movements.findOne({ _id: key });
    let replay = true;
    if (!journal) {
      const now = new Date();
      const doc: MovementDoc = {
        _id: key,
        jobId: input.jobId,
        platformAttempt: attempt,
        kind: 'credit',
        creditKind: input.kind,
        accountId: String(input.recipientAccountId),
        walletAddress: normalizeWallet(input.recipientWalletAddress),
        points: input.points,
        reason: input.reason,
        state: 'pending',
        ledgerEntryId: ledgerEntryIdFor(key),
        createdAt: now,
        updatedAt: now,
      };
      try {
        await this.movements.insertOne(doc);
        journal = doc;
        replay = false;
        await this.step('credit:journal');
      } catch (err) {
        if (!isDuplicateKeyError(err)) throw err;
        journal = (await this.movements.findOne({ _id: key })) as MovementDoc;
      }
    }
    if (journal.state === 'pending') {
      replay = false;
      await this.insertLedgerEntry(journal, CREDIT_TYPE[input.kind], { trainingJobId: journal.jobId, platformAttempt: attempt });
      await this.step('credit:ledger');
      await this.markApplied(key);
      await this.step('credit:applied');
    }
    return {
      key,
      jobId: input.jobId,
      platformAttempt: attempt,
      kind: input.kind,
      points: journal.points,
      ledgerEntryId: journal.ledgerEntryId ? journal.ledgerEntryId.toHexString() : null,
      replay,
    };
  }

  /** Every movement of a job (all its platform attempts), or every movement paid by or to an account, oldest first. */
  async history(query: { jobId: string } | { masterAccountId: string | ObjectId }): Promise<LedgerMovement[]> {
    const filter: Filter<MovementDoc> =
      'jobId' in query ? { jobId: query.jobId } : { accountId: String(query.masterAccountId) };
    const docs = await this.movements.find(filter).sort({ createdAt: 1, _id: 1 }).toArray();
    return docs.map(toMovement);
  }

  /**
   * Applied movements of a job, summed over every platform attempt, or over
   * one attempt when `platformAttempt` is given.
   */
  async jobSummary(jobId: string, platformAttempt?: number): Promise<JobPointsSummary> {
    const all = await this.movements.find({ jobId, state: 'applied' }).toArray();
    // Rows from before attempts were keyed have no platformAttempt: they are attempt 0.
    const docs = platformAttempt === undefined ? all : all.filter((d) => (d.platformAttempt ?? 0) === platformAttempt);
    const summary: JobPointsSummary = {
      jobId,
      charged: 0,
      refunded: 0,
      credited: { 'dataset-creator': 0, trainer: 0 },
      totalCredited: 0,
    };
    for (const d of docs) {
      if (d.kind === 'charge') summary.charged += d.points;
      else if (d.kind === 'refund') summary.refunded += d.points;
      else if (d.kind === 'credit' && d.creditKind) {
        summary.credited[d.creditKind] += d.points;
        summary.totalCredited += d.points;
      }
    }
    return summary;
  }

  /**
   * The 2PC tutorial's recovery sweep: finish movements whose caller died
   * (state not applied, not touched for `olderThanMs`). Charges are driven to
   * applied or rolled back; refunds and credits are completed.
   */
  async replayPending(olderThanMs = 60_000): Promise<string[]> {
    const cutoff = new Date(Date.now() - olderThanMs);
    const stuck = await this.movements
      .find({ state: { $in: ['pending', 'rolling_back'] }, updatedAt: { $lt: cutoff } })
      .limit(100)
      .toArray();
    const done: string[] = [];
    for (const m of stuck) {
      try {
        if (m.kind === 'charge') {
          await this.charge({ jobId: m.jobId, masterAccountId: m.accountId, walletAddress: m.walletAddress, points: m.points, reason: m.reason, platformAttempt: m.platformAttempt ?? 0 });
        } else if (m.kind === 'refund') {
          await this.settle({ jobId: m.jobId, usedPoints: m.usedPoints ?? 0, reason: m.reason, outcome: m.outcome, platformAttempt: m.platformAttempt ?? 0 });
        } else if (m.creditKind) {
          await this.credit({
            jobId: m.jobId,
            recipientAccountId: m.accountId,
            recipientWalletAddress: m.walletAddress,
            points: m.points,
            kind: m.creditKind,
            reason: m.reason,
            platformAttempt: m.platformAttempt ?? 0,
          });
        }
        done.push(m._id);
      } catch (err) {
        if (err instanceof InsufficientPointsError) done.push(m._id); // rolled back: nothing charged
        else if (!(err instanceof MovementBusyError)) throw err;
      }
    }
    return done;
  }

  // ---------------------------------------------------------------- internals

  private async spendableEntries(account: AccountRef): Promise<LedgerEntryDoc[]> {
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

  /** Apply every planned spend; false if one no longer fits (the plan is stale). */
  private async applyCharge(journal: MovementDoc, held: HeldLock[]): Promise<boolean> {
    const key = journal._id;
    for (const [i, item] of (journal.plan ?? []).entries()) {
      await this.renewLocks(held);
      const r = await this.ledger.updateOne(
        {
          _id: item.entryId,
          status: 'CONFIRMED',
          points_remaining: { $gte: item.points },
          [SPEND_MARKER_FIELD]: { $ne: key },
        } as Filter<LedgerEntryDoc>,
        { $inc: { points_remaining: -item.points }, $push: { [SPEND_MARKER_FIELD]: key } } as Document,
      );
      if (r.matchedCount === 0) {
        const already = await this.ledger.findOne({ _id: item.entryId, [SPEND_MARKER_FIELD]: key } as Filter<LedgerEntryDoc>);
        if (!already) {
          await this.movements.updateOne({ _id: key, state: 'pending' }, { $set: { state: 'rolling_back', updatedAt: new Date() } });
          await this.step('charge:stale-plan');
          return false;
        }
      } else {
        await this.step(`charge:spend:${i}`);
      }
    }
    await this.movements.updateOne(
      { _id: key, state: 'pending' },
      { $set: { state: 'applied', appliedAt: new Date(), updatedAt: new Date() } },
    );
    await this.step('charge:applied');
    return true;
  }

  /** Undo the spends this movement applied, then delete its journal: as if it never happened. */
  private async rollBackCharge(journal: MovementDoc, held: HeldLock[]): Promise<void> {
    const key = journal._id;
    for (const [i, item] of (journal.plan ?? []).entries()) {
      await this.renewLocks(held);
      const r = await this.ledger.updateOne({ _id: item.entryId, [SPEND_MARKER_FIELD]: key } as Filter<LedgerEntryDoc>, {
        $inc: { points_remaining: item.points },
        $pull: { [SPEND_MARKER_FIELD]: key },
      } as Document);
      if (r.matchedCount === 1) await this.step(`charge:undo:${i}`);
      await this.dropEmptyMarker(item.entryId);
    }
    await this.movements.deleteOne({ _id: key, state: 'rolling_back' });
    await this.step('charge:rolled-back');
  }

  /** After the journal says applied, the markers are no longer needed: remove them (idempotent). */
  private async cleanSpendMarkers(journal: MovementDoc): Promise<void> {
    for (const [i, item] of (journal.plan ?? []).entries()) {
      const r = await this.ledger.updateOne(
        { _id: item.entryId, [SPEND_MARKER_FIELD]: journal._id } as Filter<LedgerEntryDoc>,
        { $pull: { [SPEND_MARKER_FIELD]: journal._id } } as Document,
      );
      if (r.matchedCount === 1) await this.step(`charge:unmark:${i}`);
      await this.dropEmptyMarker(item.entryId);
    }
  }

  /** Leave no empty marker array behind on a platform document. */
  private async dropEmptyMarker(entryId: ObjectId): Promise<void> {
    await this.ledger.updateOne(
      { _id: entryId, [SPEND_MARKER_FIELD]: { $size: 0 } } as Filter<LedgerEntryDoc>,
      { $unset: { [SPEND_MARKER_FIELD]: '' } },
    );
  }

  /** Platform-shaped CONFIRMED entry (createRewardCreditEntry), keyed for idempotency. */
  private async insertLedgerEntry(journal: MovementDoc, type: string, related: Record<string, unknown>): Promise<void> {
    const now = new Date();
    const entry: LedgerEntryDoc = {
      _id: journal.ledgerEntryId ?? ledgerEntryIdFor(journal._id),
      master_account_id: toObjectIdOrString(journal.accountId) /* new entries use ObjectId like the platform; a legacy string id stays */,
      status: 'CONFIRMED',
      type,
      description: journal.reason,
      points_credited: journal.points,
      points_remaining: journal.points,
      related_items: related,
      // The platform's unique, non-sparse index: a missing value would collide with every other
      // entry lacking it, so (like upsertRewardTally) we set a synthetic, unique one.
      deposit_tx_hash: journal._id,
      idempotency_key: journal._id,
      createdAt: now,
      updatedAt: now,
    };
    if (journal.walletAddress) entry['depositor_address'] = journal.walletAddress;
    try {
      await this.ledger.insertOne(entry);
    } catch (err) {
      if (!isDuplicateKeyError(err)) throw err; // inserted before a crash: done
    }
  }

  private async markApplied(key: string): Promise<void> {
    const now = new Date();
    await this.movements.updateOne({ _id: key, state: 'pending' }, { $set: { state: 'applied', appliedAt: now, updatedAt: now } });
  }

  /**
   * Insert-based locks: a unique `_id` insert is the one write FerretDB v1
   * makes atomic. Taken in sorted order (no deadlock); an expired lock (its
   * holder died) is deleted by token and the insert retried.
   */
  private async acquireLocks(names: string[]): Promise<HeldLock[]> {
    const held: HeldLock[] = [];
    try {
      for (const name of [...new Set(names)].sort()) held.push(await this.acquireLock(name));
      return held;
    } catch (err) {
      await this.releaseLocks(held).catch(() => undefined);
      throw err;
    }
  }

  private async acquireLock(name: string): Promise<HeldLock> {
    const _id = `lock:${name}`;
    const token = randomUUID();
    const deadline = Date.now() + Math.max(this.lockWaitMs, this.lockMs);
    for (;;) {
      try {
        await this.locks.insertOne({ _id, token, until: new Date(Date.now() + this.lockMs) });
        return { _id, token };
      } catch (err) {
        if (!isDuplicateKeyError(err)) throw err;
      }
      const current = await this.locks.findOne({ _id });
      if (current && current.until.getTime() < Date.now()) {
        await this.locks.deleteOne({ _id, token: current.token });
        continue;
      }
      if (Date.now() > deadline) throw new MovementBusyError(name);
      await sleep(5 + Math.random() * 20);
    }
  }

  /** Before each write to a ledger entry: extend our locks, or stop if one was taken over. */
  private async renewLocks(held: HeldLock[]): Promise<void> {
    for (const lock of held) {
      const r = await this.locks.updateOne(lock, { $set: { until: new Date(Date.now() + this.lockMs) } });
      if (r.matchedCount === 0) throw new MovementBusyError(lock._id);
    }
  }

  private async releaseLocks(held: HeldLock[]): Promise<void> {
    for (const lock of held) await this.locks.deleteOne(lock);
  }

  private async step(name: string): Promise<void> {
    await this.faultHook?.(name);
  }
}

/** Greedy over the ordered entries: take from each until the quote is covered. */
export function planSpends(entries: LedgerEntryDoc[], points: number): Array<{ entryId: ObjectId; points: number }> {
  const plan: Array<{ entryId: ObjectId; points: number }> = [];
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

/** Entries without funding_rate_applied first, then ascending rate, then oldest, then _id. */
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
function normalizeWallet(wallet: string | null | undefined): string | null {
  return wallet ? wallet.trim().toLowerCase() : null;
}

function assertAttempt(platformAttempt: number): void {
  if (!Number.isSafeInteger(platformAttempt) || platformAttempt < 0) {
    throw new RangeError(`A platform attempt is the job's retryCount, a whole number ≥ 0; got ${platformAttempt}.`);
  }
}

function assertPoints(points: number, what: string): void {
  if (!Number.isSafeInteger(points) || points <= 0) {
    throw new RangeError(`A ${what} needs a positive whole number of points, got ${points}.`);
  }
}

function chargeResult(journal: MovementDoc, replay: boolean, settled: boolean): ChargeResult {
  return {
    key: journal._id,
    jobId: journal.jobId,
    platformAttempt: journal.platformAttempt ?? 0,
    points: journal.points,
    spends: planToSpends(journal.plan),
    replay,
    settled,
  };
}

function planToSpends(plan: MovementDoc['plan']): Spend[] {
  return (plan ?? []).map((p) => ({ entryId: p.entryId.toHexString(), points: p.points }));
}

function toMovement(d: MovementDoc): LedgerMovement {
  const m: LedgerMovement = {
    key: d._id,
    jobId: d.jobId,
    platformAttempt: d.platformAttempt ?? 0,
    kind: d.kind,
    accountId: d.accountId,
    walletAddress: d.walletAddress ?? null,
    points: d.points,
    reason: d.reason,
    state: d.state,
    createdAt: d.createdAt,
  };
  if (d.creditKind) m.creditKind = d.creditKind;
  if (d.plan) m.spends = planToSpends(d.plan);
  if (d.usedPoints !== undefined) m.usedPoints = d.usedPoints;
  if (d.chargedPoints !== undefined) m.chargedPoints = d.chargedPoints;
  if (d.ledgerEntryId !== undefined) m.ledgerEntryId = d.ledgerEntryId ? d.ledgerEntryId.toHexString() : null;
  if (d.appliedAt) m.appliedAt = d.appliedAt;
  return m;
}

function sleep(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}
