import { createHash } from 'node:crypto';
import { ObjectId } from 'mongodb';
import type { CreditKind } from './types';

/**
 * Idempotency keys are per job and platform attempt (the job's `retryCount`).
 * Attempt 0 keeps the original form (`training:<job>:charge`) so rows written
 * before attempts were keyed still match; a Retry's attempt n > 0 gets
 * `training:<job>:r<n>:…`, a new charge with its own refund and credits.
 */
function keyPrefix(jobId: string, platformAttempt: number): string {
  assertPlatformAttempt(platformAttempt);
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

/** Grants are not tied to a job: the caller's key, in its own namespace so it never meets a training key. */
export function grantKey(idempotencyKey: string): string {
  if (!idempotencyKey.trim()) throw new RangeError('A points grant needs a non-empty idempotency key.');
  return `grant:${idempotencyKey}`;
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

export function assertPlatformAttempt(platformAttempt: number): void {
  if (!Number.isSafeInteger(platformAttempt) || platformAttempt < 0) {
    throw new RangeError(`A platform attempt is the job's retryCount, a whole number ≥ 0; got ${platformAttempt}.`);
  }
}

export function assertPoints(points: number, what: string): void {
  if (!Number.isSafeInteger(points) || points <= 0) {
    throw new RangeError(`A ${what} needs a positive whole number of points, got ${points}.`);
  }
}
