import type { InjectionToken } from 'tsyringe';
import type { ClaimStrategy } from './job-claims';

/** Worker attempts per platform attempt when the composition root passes none. */
export const DEFAULT_MAX_ATTEMPTS = 3;

/** Tunables of TrainingJobRepository. Fixed for the repository's lifetime: resolved once, in its constructor. */
export interface TrainingJobRepositoryOptions {
  /**
   * 'auto' asks the server once: MongoDB gets one sorted findOneAndUpdate;
   * FerretDB v1 (which sorts in memory and has no atomic conditional update)
   * gets the candidate-batch claim with insert tokens (see job-claims.ts).
   * @default 'auto'
   */
  claimStrategy?: ClaimStrategy | 'auto';
  /**
   * Worker attempts per platform attempt (the worker's WORKER_MAX_ATTEMPTS,
   * passed in by its composition: the one place it is read). A job document's
   * own `maxAttempts` is never read: any client can write it.
   * @default DEFAULT_MAX_ATTEMPTS (3)
   */
  maxAttempts?: number;
  /**
   * A claim or recovery token older than this whose decision never landed may be taken over.
   * @default 30000
   */
  tokenStaleMs?: number;
  /**
   * Candidate ids fetched per scan in the candidate-batch strategy.
   * @default 128
   */
  claimBatch?: number;
  /**
   * Max age of the candidate list before a rescan (0: rescan on every claim, for tests).
   * @default 5000
   */
  candidateTtlMs?: number;
}

export type ResolvedTrainingJobOptions = Readonly<Required<TrainingJobRepositoryOptions>>;

/** The job repository's options (registerDb binds them; unbound means the defaults). */
export const TRAINING_JOB_OPTIONS = Symbol('TrainingJobOptions') as InjectionToken<TrainingJobRepositoryOptions>;

const CLAIM_STRATEGIES: ReadonlyArray<TrainingJobRepositoryOptions['claimStrategy']> = ['auto', 'sorted-find-and-modify', 'candidate-batch'];

/** Fills the documented defaults; throws naming every bad field (an unknown one included). */
export function resolveTrainingJobOptions(options: TrainingJobRepositoryOptions = {}): ResolvedTrainingJobOptions {
  const resolved = {
    claimStrategy: options.claimStrategy ?? 'auto',
    maxAttempts: options.maxAttempts ?? DEFAULT_MAX_ATTEMPTS,
    tokenStaleMs: options.tokenStaleMs ?? 30_000,
    claimBatch: options.claimBatch ?? 128,
    candidateTtlMs: options.candidateTtlMs ?? 5000,
  };
  const problems: string[] = [];
  for (const key of Object.keys(options)) if (!(key in resolved)) problems.push(`${key}: unknown option`);
  if (!CLAIM_STRATEGIES.includes(resolved.claimStrategy)) problems.push(`claimStrategy: expected one of ${CLAIM_STRATEGIES.join(', ')}`);
  if (!isInteger(resolved.maxAttempts, 1)) problems.push('maxAttempts: expected an integer >= 1');
  if (!isInteger(resolved.claimBatch, 1)) problems.push('claimBatch: expected an integer >= 1');
  if (!isInteger(resolved.tokenStaleMs, 0)) problems.push('tokenStaleMs: expected an integer >= 0');
  if (!isInteger(resolved.candidateTtlMs, 0)) problems.push('candidateTtlMs: expected an integer >= 0');
  if (problems.length > 0) {
    throw new RangeError(`Invalid training job options: ${problems.join('; ')}. See TrainingJobRepositoryOptions in @stationthis/db.`);
  }
  return Object.freeze(resolved);
}

function isInteger(value: unknown, min: number): boolean {
  return typeof value === 'number' && Number.isInteger(value) && value >= min;
}
