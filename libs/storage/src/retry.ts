/**
 * Retries, in one place, on the AWS SDK's own strategy:
 * - every S3 request is retried by the client's `retryStrategy`
 *   (`createRetryStrategy`: the SDK's ConfiguredRetryStrategy with our
 *   attempts and full-jitter backoff, and its retry quota);
 * - a body cut mid-stream is beyond the SDK (the request had succeeded), so
 *   `withRetries` runs the caller's resumable step again, taking its delays
 *   and its give-up decision from a strategy of the same kind.
 */
import { ConfiguredRetryStrategy } from '@smithy/core/retry';
import type { RetryErrorInfo, StandardRetryToken } from '@smithy/types';
import type { RetryConfig } from './config';
import { StorageError } from './errors';

/** Observer for retries, e.g. to log or count them. */
export type RetryListener = (info: { attempt: number; delayMs: number; errorType: string; error: unknown }) => void;

/** Delay before retry number `retry` (1-based): full jitter over an exponential cap. */
export function backoffDelayMs(retry: number, cfg: Pick<RetryConfig, 'baseDelayMs' | 'maxDelayMs'>, random: () => number = Math.random): number {
  const cap = Math.min(cfg.maxDelayMs, cfg.baseDelayMs * 2 ** (retry - 1));
  return Math.floor(random() * cap);
}

/** The SDK's ConfiguredRetryStrategy, telling `onRetry` about each retry it grants. */
class ObservedRetryStrategy extends ConfiguredRetryStrategy {
  constructor(
    cfg: RetryConfig,
    private readonly onRetry?: RetryListener,
  ) {
    super(cfg.maxAttempts, (attempt: number) => backoffDelayMs(attempt, cfg));
  }

  override async refreshRetryTokenForRetry(token: StandardRetryToken, info: RetryErrorInfo): Promise<StandardRetryToken> {
    const next = await super.refreshRetryTokenForRetry(token, info);
    const delayMs = (next as { $retryLog?: { acquisitionDelay?: number } }).$retryLog?.acquisitionDelay ?? next.getRetryDelay();
    this.onRetry?.({ attempt: next.getRetryCount() + 1, delayMs, errorType: info.errorType, error: info.error });
    return next;
  }
}

/** A retry strategy for an S3 client: `cfg.maxAttempts` in all, full-jitter backoff from `baseDelayMs` capped at `maxDelayMs`. */
export function createRetryStrategy(cfg: RetryConfig, onRetry?: RetryListener): ConfiguredRetryStrategy {
  return new ObservedRetryStrategy(cfg, onRetry);
}

/** Whether a failed transfer is worth resuming: network failures, 5xx and throttling; never a cancel or another 4xx. */
export function isRetryableTransferError(err: unknown): boolean {
  const e = err as { name?: string; code?: string; $metadata?: { httpStatusCode?: number } };
  if (e?.name === 'AbortError') return false;
  if (err instanceof StorageError) return err.kind === 'unavailable';
  const s = e?.$metadata?.httpStatusCode;
  if (s !== undefined) return s >= 500 || s === 429;
  // Network-level: ECONNRESET, ECONNREFUSED, EPIPE, premature close, timeouts.
  return true;
}

function errorTypeOf(err: unknown): RetryErrorInfo['errorType'] {
  const e = err as { status?: number; $metadata?: { httpStatusCode?: number } };
  const s = e?.$metadata?.httpStatusCode ?? e?.status;
  return s === 429 ? 'THROTTLING' : 'TRANSIENT';
}

function abortError(): Error {
  return Object.assign(new Error('aborted'), { name: 'AbortError' });
}

/**
 * Runs `step` until it succeeds, the error is not retryable, the strategy
 * refuses another attempt (attempts or quota spent), or `signal` aborts.
 * `step` gets the attempt number (1-based) and must resume, not restart,
 * where that makes sense. The last error is rethrown as it is.
 */
export async function withRetries<T>(
  cfg: RetryConfig,
  step: (attempt: number) => Promise<T>,
  opts: { signal?: AbortSignal; retryable?: (err: unknown) => boolean; onRetry?: RetryListener } = {},
): Promise<T> {
  const strategy = createRetryStrategy(cfg, opts.onRetry);
  let token = await strategy.acquireInitialRetryToken('storage-transfer');
  for (let attempt = 1; ; attempt++) {
    try {
      const out = await step(attempt);
      strategy.recordSuccess(token);
      return out;
    } catch (err) {
      if (opts.signal?.aborted || !(opts.retryable ?? isRetryableTransferError)(err)) throw err;
      // The strategy waits out the backoff itself; a cancel must not wait with it.
      let onAbort: (() => void) | undefined;
      const aborted = new Promise<never>((_, reject) => {
        onAbort = () => reject(abortError());
        opts.signal?.addEventListener('abort', onAbort, { once: true });
      });
      try {
        token = await Promise.race([strategy.refreshRetryTokenForRetry(token, { errorType: errorTypeOf(err), error: err as never }), aborted]);
      } catch (refused) {
        if ((refused as Error)?.name === 'AbortError') throw refused;
        throw err;
      } finally {
        if (onAbort) opts.signal?.removeEventListener('abort', onAbort);
        aborted.catch(() => undefined);
      }
    }
  }
}
