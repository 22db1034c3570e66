import type { Db, Filter, ObjectId } from 'mongodb';
import { inject, injectable } from 'tsyringe';
import { AccountLocks, type HeldLock } from './account-locks';
import { CreditLedgerEntries, normalizeWallet, planSpends } from './credit-ledger';
import { InsufficientPointsError, MovementBusyError, MovementConflictError } from './errors';
import { assertPoints, chargeKey, creditKey, grantKey, ledgerEntryIdFor, refundKey } from './keys';
import { MovementJournal, NO_MOVEMENT_PROBE, type MovementDoc, type MovementProbe } from './movement-journal';
import { parsePointsLedgerOptions, type PointsLedgerOptions, type ResolvedPointsLedgerOptions } from './options';
import type { PointsLedgerPort } from './points-ledger.port';
import { MOVEMENT_PROBE, POINTS_DB, POINTS_LEDGER_OPTIONS } from './tokens';
import type {
  AccountRef,
  ChargeInput,
  ChargeResult,
  CreditInput,
  CreditKind,
  CreditResult,
  GrantInput,
  GrantResult,
  JobPointsSummary,
  LedgerMovement,
  SettleInput,
  SettleOutcome,
  SettleResult,
  Spend,
} from './types';

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
 * Exactly-once training points on the platform's `credit_ledger`, with only
 * single-document atomic writes (no transactions: FerretDB v1 has none).
 *
 * - Every movement has a deterministic key (per job and platform attempt) and
 *   goes through the MovementJournal: journal first, then idempotent writes,
 *   then applied; running the same call again after a crash between any two
 *   writes finishes the movement instead of repeating it.
 * - A charge spends credit_ledger entries with guarded `$inc`s
 *   (`points_remaining >= n` and the key not yet in the entry's marker list),
 *   under per-account locks, so no entry or account goes negative.
 * - Refunds, credits and grants are new CONFIRMED credit_ledger entries,
 *   shaped like the platform's createRewardCreditEntry, with a deterministic
 *   `_id` and `deposit_tx_hash` = key (the platform's unique non-sparse index).
 * See roadmap/training-system/adr/0002-leases-fencing-and-ledger-idempotency.md.
 */
@injectable()
export class PointsLedger implements PointsLedgerPort {
  private readonly options: ResolvedPointsLedgerOptions;
  private readonly journal: MovementJournal;
  private readonly entries: CreditLedgerEntries;
  private readonly locks: AccountLocks;

  /**
   * Options and probe are optional so `new PointsLedger(db)` and a container
   * holding only POINTS_DB both work; registerPoints() binds all three.
   */
  constructor(
    @inject(POINTS_DB) db: Db,
    @inject(POINTS_LEDGER_OPTIONS, { isOptional: true }) options?: PointsLedgerOptions,
    @inject(MOVEMENT_PROBE, { isOptional: true }) probe: MovementProbe = NO_MOVEMENT_PROBE,
  ) {
    this.options = parsePointsLedgerOptions(options);
    this.journal = new MovementJournal(db, probe);
    this.entries = new CreditLedgerEntries(db);
    this.locks = new AccountLocks(db, this.options);
  }

  /** Our journal's indexes, and the platform's two balance indexes. */
  async ensureIndexes(): Promise<void> {
    await this.journal.ensureIndexes();
    await this.entries.ensureIndexes();
  }

  /** Spendable points: CONFIRMED entries with points_remaining > 0, by account (both id forms) or wallet. */
  async balance(account: AccountRef): Promise<number> {
    const entries = await this.entries.spendable(account);
    return entries.reduce((sum, e) => sum + (e.points_remaining ?? 0), 0);
  }

  /**
   * Charge the quote for (jobId, platformAttempt), exactly once. Entries are
   * spent in the platform's order (PointsService._deductFromCreditLedger):
   * entries without `funding_rate_applied` (refunds, rewards) first, then
   * ascending funding rate; oldest first within a rate. Throws
   * InsufficientPointsError, leaving nothing behind, when the balance is short.
   */
  async charge(input: ChargeInput): Promise<ChargeResult> {
    assertPoints(input.points, 'charge');
    const attempt = input.platformAttempt ?? 0;
    const key = chargeKey(input.jobId, attempt);
    // Charges on one account take turns. Besides keeping plans fresh, this is what makes the
    // guarded $inc safe on FerretDB v1, whose conditional updates are not atomic under concurrency.
    const held = await this.locks.acquire(accountLockNames(input));
    try {
      for (let round = 0; round <= this.options.maxChargeRetries; round++) {
        let journal = await this.journal.find(key);
        if (journal && journal.points !== input.points) {
          throw new MovementConflictError(
            `Training job ${input.jobId} (platform attempt ${attempt}) already has a charge of ${journal.points} points; a charge of ${input.points} was asked.`,
          );
        }
        if (journal?.state === 'applied') {
          await this.cleanSpendMarkers(journal);
          return chargeResult(journal, true, await this.journal.exists(refundKey(input.jobId, attempt)));
        }
        if (journal?.state === 'rolling_back') {
          await this.rollBackCharge(journal, held);
          continue;
        }
        if (!journal) {
          if (await this.journal.exists(refundKey(input.jobId, attempt))) {
            throw new MovementConflictError(
              `Training job ${input.jobId} was already settled for platform attempt ${attempt}; it cannot be charged again ` +
                'under the same attempt. A platform Retry charges under the next attempt number.',
            );
          }
          const spendable = await this.entries.spendable(input);
          const balance = spendable.reduce((sum, e) => sum + (e.points_remaining ?? 0), 0);
          if (balance < input.points) throw new InsufficientPointsError(balance, input.points, input.jobId);
          const opened = await this.journal.open({
            ...newMovement(key, input.jobId, attempt, input.reason),
            kind: 'charge',
            accountId: String(input.masterAccountId),
            walletAddress: normalizeWallet(input.walletAddress),
            points: input.points,
            state: 'pending',
            plan: planSpends(spendable, input.points),
          });
          if (!opened.created) continue; // a concurrent caller won; follow it
          journal = opened.journal;
        }
        if (await this.applyCharge(journal, held)) {
          // Applying changes the journal's state only; its key, plan and points are as planned.
          await this.cleanSpendMarkers(journal);
          return chargeResult(journal, false, false);
        }
        // The plan went stale (someone else spent an entry): undo and plan again.
        await this.rollBackCharge({ ...journal, state: 'rolling_back' }, held);
      }
      throw new Error(
        `Charging training job ${input.jobId} found its plan stale ${this.options.maxChargeRetries + 1} times in a row ` +
          '(the balance keeps changing under it); nothing was charged. Retry later.',
      );
    } finally {
      // A process killed before this line leaves its locks; they expire after lockMs.
      await this.locks.release(held).catch(() => undefined);
    }
  }

  /**
   * Reconcile a charged attempt exactly once: refund `charged - usedPoints`
   * (clamped to [0, charged]). Success: usedPoints = actual GPU cost. Platform
   * failure: 0. Cancel: the time used. The first settle wins; a later one,
   * even with other figures, returns the first result. An attempt never
   * charged settles to zero without writing anything; a settle never touches
   * another attempt's charge.
   */
  async settle(input: SettleInput): Promise<SettleResult> {
    const attempt = input.platformAttempt ?? 0;
    const key = refundKey(input.jobId, attempt);
    let charge = await this.journal.find(chargeKey(input.jobId, attempt));
    if (charge && charge.state !== 'applied') {
      // The charger died mid-way: finish (or undo) it first, so the refund is computed from what was taken.
      try {
        await this.charge(chargeInputOf(charge));
      } catch (err) {
        if (!(err instanceof InsufficientPointsError)) throw err;
      }
      charge = await this.journal.find(chargeKey(input.jobId, attempt));
    }
    if (!charge) {
      return { key, jobId: input.jobId, platformAttempt: attempt, charged: 0, usedPoints: 0, refunded: 0, ledgerEntryId: null, replay: false };
    }
    const charged = charge.points;
    const used = Math.min(charged, Math.max(0, Math.round(input.usedPoints)));
    const refund = charged - used;
    const doc: MovementDoc = {
      ...newMovement(key, input.jobId, attempt, input.reason),
      kind: 'refund',
      accountId: charge.accountId,
      walletAddress: charge.walletAddress ?? null,
      points: refund,
      // Nothing to refund: the journal alone records the settlement, already applied.
      state: refund > 0 ? 'pending' : 'applied',
      usedPoints: used,
      chargedPoints: charged,
      outcome: input.outcome ?? (used === 0 ? 'failed' : 'completed'),
      ledgerEntryId: refund > 0 ? ledgerEntryIdFor(key) : null,
    };
    if (refund === 0) doc.appliedAt = doc.createdAt;
    const { journal, replay } = await this.journal.record(doc, (j) =>
      this.insertEntry(j, REFUND_TYPE[j.outcome ?? 'failed'], {
        trainingJobId: j.jobId,
        platformAttempt: j.platformAttempt ?? 0,
        chargedPoints: j.chargedPoints,
        usedPoints: j.usedPoints,
      }),
    );
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
   * Credit a contributor exactly once per (jobId, kind, platformAttempt).
   * Shares are minted like the platform's contributor rewards; the caller
   * decides the amount and whether it applies (e.g. dataset creator ≠ job owner).
   */
  async credit(input: CreditInput): Promise<CreditResult> {
    assertPoints(input.points, 'credit');
    const attempt = input.platformAttempt ?? 0;
    const key = creditKey(input.jobId, input.kind, attempt);
    const { journal, replay } = await this.journal.record(
      {
        ...newMovement(key, input.jobId, attempt, input.reason),
        kind: 'credit',
        creditKind: input.kind,
        accountId: String(input.recipientAccountId),
        walletAddress: normalizeWallet(input.recipientWalletAddress),
        points: input.points,
        state: 'pending',
        ledgerEntryId: ledgerEntryIdFor(key),
      },
      (j) => this.insertEntry(j, CREDIT_TYPE[input.kind], { trainingJobId: j.jobId, platformAttempt: j.platformAttempt ?? 0 }),
    );
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

  /**
   * Give an account points outside any job, once per idempotency key: one
   * CONFIRMED entry (type ADMIN_GIFT unless told), shaped like the platform's
   * reward entries. One insert with a deterministic `_id`, so no journal is
   * needed. The same key with another account or amount is a MovementConflictError.
   */
  async grant(input: GrantInput): Promise<GrantResult> {
    assertPoints(input.points, 'grant');
    const key = grantKey(input.idempotencyKey);
    const entryId = ledgerEntryIdFor(key);
    const accountId = String(input.masterAccountId);
    const inserted = await this.entries.insert({
      _id: entryId,
      key,
      accountId,
      walletAddress: normalizeWallet(input.walletAddress),
      points: input.points,
      type: input.type ?? 'ADMIN_GIFT',
      description: input.reason,
      related: { grantKey: input.idempotencyKey },
    });
    if (!inserted) {
      const existing = await this.entries.findCreated(entryId, key);
      if (!existing || String(existing['master_account_id']) !== accountId || existing['points_credited'] !== input.points) {
        throw new MovementConflictError(
          `Points grant ${input.idempotencyKey} already exists for another account or amount ` +
            `(${existing ? `${String(existing['points_credited'])} points to ${String(existing['master_account_id'])}` : 'entry unreadable'}); use a new key.`,
        );
      }
      return { key, points: input.points, ledgerEntryId: existing._id.toHexString(), replay: true };
    }
    return { key, points: input.points, ledgerEntryId: entryId.toHexString(), replay: false };
  }

  /** Every movement of a job (all its platform attempts), or every movement paid by or to an account, oldest first. */
  async history(query: { jobId: string } | { masterAccountId: string | ObjectId }): Promise<LedgerMovement[]> {
    const filter: Filter<MovementDoc> = 'jobId' in query ? { jobId: query.jobId } : { accountId: String(query.masterAccountId) };
    return (await this.journal.list(filter)).map(toMovement);
  }

  /**
   * Applied movements of a job, summed over every platform attempt, or over
   * one attempt when `platformAttempt` is given.
   */
  async jobSummary(jobId: string, platformAttempt?: number): Promise<JobPointsSummary> {
    const all = await this.journal.list({ jobId, state: 'applied' });
    // Rows from before attempts were keyed have no platformAttempt: they are attempt 0.
    const docs = platformAttempt === undefined ? all : all.filter((d) => (d.platformAttempt ?? 0) === platformAttempt);
    const summary: JobPointsSummary = { jobId, charged: 0, refunded: 0, credited: { 'dataset-creator': 0, trainer: 0 }, totalCredited: 0 };
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
   * (state not applied, not touched for `olderThanMs`), oldest first. Charges
   * are driven to applied or rolled back; refunds and credits are completed,
   * each under its own platform attempt.
   */
  async replayPending(olderThanMs = 60_000): Promise<string[]> {
    const stuck = await this.journal.stuck(new Date(Date.now() - olderThanMs), 100);
    const done: string[] = [];
    for (const m of stuck) {
      const platformAttempt = m.platformAttempt ?? 0;
      try {
        if (m.kind === 'charge') {
          await this.charge(chargeInputOf(m));
        } else if (m.kind === 'refund') {
          await this.settle({ jobId: m.jobId, usedPoints: m.usedPoints ?? 0, reason: m.reason, outcome: m.outcome, platformAttempt });
        } else if (m.creditKind) {
          await this.credit({
            jobId: m.jobId,
            recipientAccountId: m.accountId,
            recipientWalletAddress: m.walletAddress,
            points: m.points,
            kind: m.creditKind,
            reason: m.reason,
            platformAttempt,
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

  // ---------------------------------------------------------------- charge internals

  /** Apply every planned spend, then mark the journal applied; false if one no longer fits (the plan is stale). */
  private async applyCharge(journal: MovementDoc, held: HeldLock[]): Promise<boolean> {
    for (const [i, item] of (journal.plan ?? []).entries()) {
      await this.locks.renew(held);
      const spent = await this.entries.spend(item, journal._id);
      if (spent === 'stale') {
        await this.journal.markRollingBack(journal._id);
        return false;
      }
      if (spent === 'spent') await this.journal.step(`charge:spend:${i}`);
    }
    await this.journal.markApplied(journal);
    return true;
  }

  /** Undo the spends this movement applied, then delete its journal: as if it never happened. */
  private async rollBackCharge(journal: MovementDoc, held: HeldLock[]): Promise<void> {
    for (const [i, item] of (journal.plan ?? []).entries()) {
      await this.locks.renew(held);
      if (await this.entries.unspend(item, journal._id)) await this.journal.step(`charge:undo:${i}`);
      await this.entries.dropEmptyMarker(item.entryId);
    }
    await this.journal.removeRolledBack(journal._id);
  }

  /** After the journal says applied, the markers are no longer needed: remove them (idempotent). */
  private async cleanSpendMarkers(journal: MovementDoc): Promise<void> {
    for (const [i, item] of (journal.plan ?? []).entries()) {
      if (await this.entries.unmark(item.entryId, journal._id)) await this.journal.step(`charge:unmark:${i}`);
      await this.entries.dropEmptyMarker(item.entryId);
    }
  }

  /** A refund's or credit's one effect: its CONFIRMED entry, keyed by the movement. */
  private async insertEntry(journal: MovementDoc, type: string, related: Record<string, unknown>): Promise<void> {
    await this.entries.insert({
      _id: journal.ledgerEntryId ?? ledgerEntryIdFor(journal._id),
      key: journal._id,
      accountId: journal.accountId,
      walletAddress: journal.walletAddress,
      points: journal.points,
      type,
      description: journal.reason,
      related,
    });
  }
}

/** A charge locks the account and, when given, the wallet (entries are matched by either). */
function accountLockNames(account: AccountRef): string[] {
  const names = [`account:${String(account.masterAccountId)}`];
  const wallet = normalizeWallet(account.walletAddress);
  if (wallet) names.push(`wallet:${wallet}`);
  return names;
}

function newMovement(key: string, jobId: string, platformAttempt: number, reason: string) {
  const now = new Date();
  return { _id: key, jobId, platformAttempt, reason, createdAt: now, updatedAt: now };
}

/** Re-run a journaled charge as its caller would have. */
function chargeInputOf(m: MovementDoc): ChargeInput {
  return { jobId: m.jobId, platformAttempt: m.platformAttempt ?? 0, masterAccountId: m.accountId, walletAddress: m.walletAddress, points: m.points, reason: m.reason };
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
