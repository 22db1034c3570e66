/**
 * The S3 client for R2 (or a local S3-compatible server): WHEN_REQUIRED
 * checksums (R2, stack notes 4.1), the SDK's ConfiguredRetryStrategy with our
 * attempts and backoff (retry.ts), keep-alive sockets, and SigV4 hashing off
 * the event loop.
 */
import { S3Client } from '@aws-sdk/client-s3';
import { createHash, createHmac, webcrypto, type Hash } from 'node:crypto';
import { Agent as HttpAgent } from 'node:http';
import { Agent as HttpsAgent } from 'node:https';
import type { InjectionToken } from 'tsyringe';
import type { R2Config } from './config';
import { createRetryStrategy, type RetryListener } from './retry';

export const S3_CLIENT = Symbol('S3Client') as InjectionToken<S3Client>;

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

/** Options of `createS3Client`. */
export interface S3ClientOptions {
  /**
   * Sockets per agent (HTTP and HTTPS each).
   * @default 64
   */
  maxSockets?: number;
  /**
   * Idle time allowed on a request's socket, in ms.
   * @default 120000
   */
  requestTimeoutMs?: number;
  /** Told about each request retry the client makes (to log or count them). */
  onRetry?: RetryListener;
}

export function createS3Client(config: R2Config, opts: S3ClientOptions = {}): S3Client {
  const maxSockets = opts.maxSockets ?? 64;
  return new S3Client({
    region: config.region,
    endpoint: config.endpoint,
    forcePathStyle: config.forcePathStyle,
    credentials: { accessKeyId: config.credentials.accessKeyId, secretAccessKey: config.credentials.secretAccessKey },
    // R2 and presigned PUTs break with default CRC32 checksums (stack notes 4.1).
    requestChecksumCalculation: 'WHEN_REQUIRED',
    responseChecksumValidation: 'WHEN_REQUIRED',
    sha256: ThreadPoolSha256,
    retryStrategy: createRetryStrategy(config.retry, opts.onRetry),
    requestHandler: {
      httpAgent: new HttpAgent({ keepAlive: true, maxSockets }),
      httpsAgent: new HttpsAgent({ keepAlive: true, maxSockets }),
      connectionTimeout: 10_000,
      requestTimeout: opts.requestTimeoutMs ?? 120_000,
    },
  });
}
