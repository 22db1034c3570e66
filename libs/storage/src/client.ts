/**
 * The S3 client for R2 (or a local S3-compatible server), with our own retry
 * strategy: exponential backoff with full jitter on throttling, 5xx and
 * transient network errors; no retries on other 4xx.
 */
import { S3Client } from '@aws-sdk/client-s3';
import { createHash, createHmac, webcrypto, type Hash } from 'node:crypto';
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

type SourceData = string | ArrayBuffer | ArrayBufferView;

function toBytes(d: SourceData): Uint8Array {
  if (typeof d === 'string') return Buffer.from(d, 'utf8');
  if (ArrayBuffer.isView(d)) return new Uint8Array(d.buffer, d.byteOffset, d.byteLength);
  return new Uint8Array(d);
}

/**
 * The SDK's SHA-256 (SigV4 payload hashes), computed on libuv's thread pool
 * through WebCrypto instead of on the event loop. Signing each multipart part
 * then runs in parallel with the rest of the pipeline (notably our own
 * whole-file sha256 in ModelUploader), which roughly halves upload CPU time on
 * the main thread. Small inputs and HMACs (key derivation) stay synchronous.
 */
export class ThreadPoolSha256 {
  private chunks: Uint8Array[] = [];
  private size = 0;
  private sync: Hash | undefined;
  private static readonly ASYNC_MIN = 256 * 1024;
  /** Above this, fold into an incremental hash rather than hold everything. */
  private static readonly HOLD_MAX = 128 * 1024 * 1024;

  constructor(private readonly secret?: SourceData) {}

  update(data: SourceData): void {
    const u = toBytes(data);
    if (this.sync) {
      this.sync.update(u);
      return;
    }
    this.chunks.push(u);
    this.size += u.byteLength;
    if (this.secret === undefined && this.size > ThreadPoolSha256.HOLD_MAX) {
      this.sync = createHash('sha256');
      for (const c of this.chunks) this.sync.update(c);
      this.chunks = [];
    }
  }

  async digest(): Promise<Uint8Array> {
    if (this.secret !== undefined) {
      const h = createHmac('sha256', toBytes(this.secret));
      for (const c of this.chunks) h.update(c);
      return new Uint8Array(h.digest());
    }
    if (this.sync) return new Uint8Array(this.sync.digest());
    if (this.size < ThreadPoolSha256.ASYNC_MIN) {
      const h = createHash('sha256');
      for (const c of this.chunks) h.update(c);
      return new Uint8Array(h.digest());
    }
    const data = this.chunks.length === 1 ? this.chunks[0] : Buffer.concat(this.chunks);
    return new Uint8Array(await webcrypto.subtle.digest('SHA-256', data));
  }

  reset(): void {
    this.chunks = [];
    this.size = 0;
    this.sync = undefined;
  }
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
    sha256: ThreadPoolSha256,
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
