/**
 * The S3 client for R2 (or a local S3-compatible server), with our own retry
 * strategy: exponential backoff with full jitter on throttling, 5xx and
 * transient network errors; no retries on other 4xx.
 */
import { S3Client } from '@aws-sdk/client-s3';
import { Agent as HttpAgent } from 'node:http';
import { Agent as HttpsAgent } from 'node:https';
import type { InjectionToken } from 'tsyringe';
import type { R2Config, RetryConfig } from './config';

export const S3_CLIENT = Symbol('S3Client') as InjectionToken<S3Client>;

/** Delay before retry number `retry` (1-based): full jitter over an exponential cap. */
export function backoffDelayMs(retry: number, cfg: Pick<RetryConfig, 'baseDelayMs' | 'maxDelayMs'>, random: () => number = Math.random): number {
  const cap = Math.min(cfg.maxDelayMs, cfg.baseDelayMs * 2 ** (retry - 1));
  return Math.floor(random() * cap);
}

type ErrorType = 'TRANSIENT' | 'THROTTLING' | 'SERVER_ERROR' | 'CLIENT_ERROR';

interface Token {
  getRetryCount(): number;
  getRetryDelay(): number;
}

/** Observer for retries, e.g. to log or count them. */
export type RetryListener = (info: { attempt: number; delayMs: number; errorType: string; error: unknown }) => void;

/**
 * A RetryStrategyV2 (the SDK's interface, implemented structurally so we need
 * no extra dependency). Throttling gets a higher floor: R2 returns 429/503
 * SlowDown under load, and retrying immediately makes it worse.
 */
export class BackoffRetryStrategy {
  readonly mode = 'standard';
  private readonly listeners: RetryListener[] = [];

  constructor(private readonly cfg: RetryConfig) {}

  onRetry(l: RetryListener): () => void {
    this.listeners.push(l);
    return () => {
      const i = this.listeners.indexOf(l);
      if (i >= 0) this.listeners.splice(i, 1);
    };
  }

  async acquireInitialRetryToken(_scope: string): Promise<Token> {
    return makeToken(0, 0);
  }

  async refreshRetryTokenForRetry(token: Token, info: { errorType: ErrorType; error?: unknown; retryAfterHint?: Date }): Promise<Token> {
    const next = token.getRetryCount() + 1;
    if (info.errorType === 'CLIENT_ERROR' || next >= this.cfg.maxAttempts) {
      throw new Error('no more retries');
    }
    let delay = backoffDelayMs(next, this.cfg);
    if (info.errorType === 'THROTTLING') delay = Math.max(delay, Math.min(this.cfg.maxDelayMs, this.cfg.baseDelayMs * 2));
    if (info.retryAfterHint) {
      const hinted = info.retryAfterHint.getTime() - Date.now();
      if (hinted > delay) delay = Math.min(hinted, this.cfg.maxDelayMs);
    }
    for (const l of this.listeners) l({ attempt: next + 1, delayMs: delay, errorType: info.errorType, error: info.error });
    return makeToken(next, delay);
  }

  recordSuccess(_token: Token): void {
    /* no retry quota: the backoff alone bounds the load we add */
  }
}

function makeToken(count: number, delay: number): Token {
  return { getRetryCount: () => count, getRetryDelay: () => delay };
}

export interface CreatedS3Client extends S3Client {
  /** The retry strategy in use, to observe retries. */
  readonly retryStrategy: BackoffRetryStrategy;
}

export function createS3Client(config: R2Config, opts: { maxSockets?: number; requestTimeoutMs?: number } = {}): CreatedS3Client {
  const retryStrategy = new BackoffRetryStrategy(config.retry);
  const maxSockets = opts.maxSockets ?? 64;
  const client = new S3Client({
    region: config.region,
    endpoint: config.endpoint,
    forcePathStyle: config.forcePathStyle,
    credentials: { accessKeyId: config.credentials.accessKeyId, secretAccessKey: config.credentials.secretAccessKey },
    // R2 and presigned PUTs break with default CRC32 checksums (stack notes 4.1).
    requestChecksumCalculation: 'WHEN_REQUIRED',
    responseChecksumValidation: 'WHEN_REQUIRED',
    maxAttempts: config.retry.maxAttempts,
    retryStrategy,
    requestHandler: {
      httpAgent: new HttpAgent({ keepAlive: true, maxSockets }),
      httpsAgent: new HttpsAgent({ keepAlive: true, maxSockets }),
      connectionTimeout: 10_000,
      requestTimeout: opts.requestTimeoutMs ?? 120_000,
    },
  });
  Object.defineProperty(client, 'retryStrategy', { value: retryStrategy, enumerable: false });
  return client as CreatedS3Client;
}
