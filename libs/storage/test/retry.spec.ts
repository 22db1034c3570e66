/** retry.ts: the SDK strategy with our backoff, and the one resume loop (withRetries). No services. */
import { StorageError, backoffDelayMs, createRetryStrategy, loadStorageConfig, resolveWeightCacheOptions, withRetries } from '../src';

const cfg = { maxAttempts: 4, baseDelayMs: 1, maxDelayMs: 5 };

describe('withRetries', () => {
  it('resumes a retryable failure until it succeeds, telling onRetry', async () => {
    const seen: number[] = [];
    const attempts: number[] = [];
    const out = await withRetries(
      cfg,
      async (attempt) => {
        attempts.push(attempt);
        if (attempt < 3) throw Object.assign(new Error('socket hang up'), { code: 'ECONNRESET' });
        return 'done';
      },
      { onRetry: (i) => seen.push(i.attempt) },
    );
    expect(out).toBe('done');
    expect(attempts).toEqual([1, 2, 3]);
    expect(seen).toEqual([2, 3]);
  });

  it('gives up after maxAttempts with the last error as it was', async () => {
    let n = 0;
    const last = new StorageError('unavailable', 'still down');
    await expect(
      withRetries(cfg, async () => {
        n++;
        throw last;
      }),
    ).rejects.toBe(last);
    expect(n).toBe(4);
  });

  it('does not retry what retrying cannot fix', async () => {
    let n = 0;
    const denied = new StorageError('access-denied', 'no');
    await expect(
      withRetries(cfg, async () => {
        n++;
        throw denied;
      }),
    ).rejects.toBe(denied);
    expect(n).toBe(1);
    const s3Like = Object.assign(new Error('gone'), { $metadata: { httpStatusCode: 404 } });
    await expect(withRetries(cfg, async () => Promise.reject(s3Like))).rejects.toBe(s3Like);
  });

  it('a cancel stops the wait for the next attempt at once', async () => {
    // The SDK strategy sleeps inside refreshRetryTokenForRetry; with fake timers that sleep never
    // ends, so only an abort that does not wait for it can settle this promise.
    jest.useFakeTimers({ doNotFake: ['nextTick', 'setImmediate', 'queueMicrotask'] });
    try {
      const ctl = new AbortController();
      const p = withRetries(
        { maxAttempts: 5, baseDelayMs: 60_000, maxDelayMs: 60_000 },
        async () => {
          setImmediate(() => ctl.abort());
          throw new StorageError('unavailable', 'down');
        },
        { signal: ctl.signal },
      );
      await expect(p).rejects.toMatchObject({ name: 'AbortError' });
    } finally {
      jest.useRealTimers();
    }
  });
});

describe('createRetryStrategy (the SDK ConfiguredRetryStrategy)', () => {
  it('grants maxAttempts - 1 retries for transient errors, none for client errors', async () => {
    const s = createRetryStrategy(cfg);
    let t = await s.acquireInitialRetryToken('x');
    for (let i = 1; i < cfg.maxAttempts; i++) t = await s.refreshRetryTokenForRetry(t, { errorType: 'TRANSIENT' });
    await expect(s.refreshRetryTokenForRetry(t, { errorType: 'TRANSIENT' })).rejects.toThrow(/No retry token/);
    const c = createRetryStrategy(cfg);
    await expect(c.refreshRetryTokenForRetry(await c.acquireInitialRetryToken('x'), { errorType: 'CLIENT_ERROR' })).rejects.toThrow();
  });

  it('backs off with full jitter under an exponential cap', () => {
    const c = { baseDelayMs: 100, maxDelayMs: 1000 };
    expect(backoffDelayMs(1, c, () => 0.999)).toBe(99);
    expect(backoffDelayMs(3, c, () => 0.999)).toBe(399);
    expect(backoffDelayMs(10, c, () => 0.999)).toBe(999);
  });
});

describe('options, validated once', () => {
  it('storage env numbers: documented defaults, and a bad value named', () => {
    expect(loadStorageConfig({}).retry).toEqual({ maxAttempts: 5, baseDelayMs: 200, maxDelayMs: 10_000 });
    expect(loadStorageConfig({}).weightCacheMaxBytes).toBe(200 * 1024 ** 3);
    expect(loadStorageConfig({ STORAGE_RETRY_MAX_ATTEMPTS: '7.9' }).retry.maxAttempts).toBe(7);
    expect(() => loadStorageConfig({ STORAGE_RETRY_MAX_ATTEMPTS: 'many' })).toThrow("Storage config: STORAGE_RETRY_MAX_ATTEMPTS='many' is not a positive number.");
    expect(() => loadStorageConfig({ WEIGHT_CACHE_MAX_BYTES: '-1' })).toThrow(/WEIGHT_CACHE_MAX_BYTES='-1'/);
  });

  it('weight cache options: defaults, frozen, and refusals', () => {
    const o = resolveWeightCacheOptions();
    expect(o).toEqual({ lockStaleMs: 60_000, lockPollMs: 100, downloadConcurrency: 4, downloadChunkBytes: 64 * 1024 * 1024 });
    expect(Object.isFrozen(o)).toBe(true);
    expect(() => resolveWeightCacheOptions({ downloadConcurrency: 0 })).toThrow(/downloadConcurrency/);
  });
});
