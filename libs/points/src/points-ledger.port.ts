import type { InjectionToken } from 'tsyringe';
import type { ChargeInput, ChargeResult, CreditInput, CreditResult, SettleInput, SettleResult } from './types';

/**
 * What a training attempt needs from the points ledger: charge the quote,
 * settle (refund what was not used), credit contributors. Every call is
 * exactly once per (job, platform attempt[, credit kind]): repeating it
 * returns the first result with `replay: true` and moves nothing.
 *
 * Implemented by PointsLedger (the platform's credit_ledger) and by
 * InMemoryPointsLedger from `@stationthis/points/testing`; one conformance
 * suite (libs/points/test/points-ledger.port.conformance.ts) runs against both.
 */
export interface PointsLedgerPort {
  /**
   * Charges `points` once per (jobId, platformAttempt). Throws
   * InsufficientPointsError (nothing charged) when the balance is short, and
   * MovementConflictError for another amount under the same key. A replay of
   * a charge whose attempt was settled says `settled: true`: that attempt's
   * work must not run again (a platform Retry charges the next attempt).
   */
  charge(input: ChargeInput): Promise<ChargeResult>;
  /**
   * Refunds `charged − usedPoints` (clamped to [0, charged]) once per
   * (jobId, platformAttempt); the first settle wins. An attempt never charged
   * settles to zeros and records nothing.
   */
  settle(input: SettleInput): Promise<SettleResult>;
  /** Credits a contributor once per (jobId, kind, platformAttempt); a repeat returns the first credit. */
  credit(input: CreditInput): Promise<CreditResult>;
}

/** Bound by registerPoints() to the singleton PointsLedger; tests bind InMemoryPointsLedger. */
export const POINTS_LEDGER = Symbol('PointsLedgerPort') as InjectionToken<PointsLedgerPort>;
