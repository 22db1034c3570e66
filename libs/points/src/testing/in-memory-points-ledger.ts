import type { ObjectId } from 'mongodb';
import { InsufficientPointsError, MovementConflictError } from '../errors';
import { assertPoints, chargeKey, creditKey, ledgerEntryIdFor, refundKey } from '../keys';
import type { PointsLedgerPort } from '../points-ledger.port';
import type { ChargeInput, ChargeResult, CreditInput, CreditResult, SettleInput, SettleResult } from '../types';

/** One call the fake received, in order (for asserting what a step asked for). */
export type InMemoryLedgerCall =
  | { op: 'charge'; input: ChargeInput }
  | { op: 'settle'; input: SettleInput }
  | { op: 'credit'; input: CreditInput };

/**
 * PointsLedgerPort in memory, for unit tests of code that moves points. One
 * balance per account id (wallets are ignored: the real ledger's wallet
 * matching is tested against the real server). The conformance suite in
 * libs/points/test runs the same assertions against this and PointsLedger.
 */
export class InMemoryPointsLedger implements PointsLedgerPort {
  readonly calls: InMemoryLedgerCall[] = [];
  private readonly balances = new Map<string, number>();
  /** Each charge with its paying account (refunds go back to it). */
  private readonly charges = new Map<string, { result: ChargeResult; payer: string }>();
  private readonly refunds = new Map<string, SettleResult>();
  private readonly credits = new Map<string, CreditResult>();

  /** Adds spendable points to an account (a deposit, as the platform would record it). */
  deposit(account: string | ObjectId, points: number): this {
    this.balances.set(String(account), this.balanceOf(account) + points);
    return this;
  }

  /** Spendable points of an account. */
  async balance(account: { masterAccountId: string | ObjectId }): Promise<number> {
    return this.balanceOf(account.masterAccountId);
  }

  async charge(input: ChargeInput): Promise<ChargeResult> {
    this.calls.push({ op: 'charge', input });
    assertPoints(input.points, 'charge');
    const platformAttempt = input.platformAttempt ?? 0;
    const key = chargeKey(input.jobId, platformAttempt);
    const settled = this.refunds.has(refundKey(input.jobId, platformAttempt));
    const existing = this.charges.get(key)?.result;
    if (existing) {
      if (existing.points !== input.points) {
        throw new MovementConflictError(
          `Training job ${input.jobId} (platform attempt ${platformAttempt}) already has a charge of ${existing.points} points; a charge of ${input.points} was asked.`,
        );
      }
      return { ...existing, spends: existing.spends.map((s) => ({ ...s })), replay: true, settled };
    }
    if (settled) {
      throw new MovementConflictError(`Training job ${input.jobId} was already settled for platform attempt ${platformAttempt}.`);
    }
    const balance = this.balanceOf(input.masterAccountId);
    if (balance < input.points) throw new InsufficientPointsError(balance, input.points, input.jobId);
    this.balances.set(String(input.masterAccountId), balance - input.points);
    const result: ChargeResult = {
      key,
      jobId: input.jobId,
      platformAttempt,
      points: input.points,
      spends: [{ entryId: `in-memory:${String(input.masterAccountId)}`, points: input.points }],
      replay: false,
      settled: false,
    };
    this.charges.set(key, { result, payer: String(input.masterAccountId) });
    return { ...result, spends: result.spends.map((s) => ({ ...s })) };
  }

  async settle(input: SettleInput): Promise<SettleResult> {
    this.calls.push({ op: 'settle', input });
    const platformAttempt = input.platformAttempt ?? 0;
    const key = refundKey(input.jobId, platformAttempt);
    const done = this.refunds.get(key);
    if (done) return { ...done, replay: true };
    const found = this.charges.get(chargeKey(input.jobId, platformAttempt));
    if (!found) return { key, jobId: input.jobId, platformAttempt, charged: 0, usedPoints: 0, refunded: 0, ledgerEntryId: null, replay: false };
    const { result: charge, payer } = found;
    const usedPoints = Math.min(charge.points, Math.max(0, Math.round(input.usedPoints)));
    const refunded = charge.points - usedPoints;
    this.balances.set(payer, this.balanceOf(payer) + refunded);
    const result: SettleResult = {
      key,
      jobId: input.jobId,
      platformAttempt,
      charged: charge.points,
      usedPoints,
      refunded,
      ledgerEntryId: refunded > 0 ? ledgerEntryIdFor(key).toHexString() : null,
      replay: false,
    };
    this.refunds.set(key, result);
    return { ...result };
  }

  async credit(input: CreditInput): Promise<CreditResult> {
    this.calls.push({ op: 'credit', input });
    assertPoints(input.points, 'credit');
    const platformAttempt = input.platformAttempt ?? 0;
    const key = creditKey(input.jobId, input.kind, platformAttempt);
    const done = this.credits.get(key);
    if (done) return { ...done, replay: true };
    this.balances.set(String(input.recipientAccountId), this.balanceOf(input.recipientAccountId) + input.points);
    const result: CreditResult = {
      key,
      jobId: input.jobId,
      platformAttempt,
      kind: input.kind,
      points: input.points,
      ledgerEntryId: ledgerEntryIdFor(key).toHexString(),
      replay: false,
    };
    this.credits.set(key, result);
    return { ...result };
  }

  private balanceOf(account: string | ObjectId): number {
    return this.balances.get(String(account)) ?? 0;
  }
}
