/**
 * Thin adapter over the S3 API, addressed by bucket alias. Every failure
 * becomes a StorageError naming the bucket and key. Request-level retries
 * (throttling, 5xx, network) live in the client's retry strategy; this class
 * adds stream-level retries where the SDK cannot (a body cut mid-download is
 * resumed with a range request).
 */
import {
  AbortMultipartUploadCommand,
  DeleteObjectCommand,
  DeleteObjectsCommand,
  GetObjectCommand,
  HeadObjectCommand,
  ListMultipartUploadsCommand,
  ListObjectsV2Command,
  PutObjectCommand,
  S3Client,
} from '@aws-sdk/client-s3';
import { Upload } from '@aws-sdk/lib-storage';
import { getSignedUrl } from '@aws-sdk/s3-request-presigner';
import { createWriteStream, promises as fsp } from 'node:fs';
import { Readable, Transform } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { inject, injectable } from 'tsyringe';
import { S3_CLIENT, backoffDelayMs } from './client';
import { BUCKET_ALIASES, STORAGE_CONFIG, resolveBucketAlias, type BucketAlias, type BucketConfig, type R2Config } from './config';
import { StorageError, toStorageError } from './errors';
import { assertSafeKey, encodeKeyForUrl, unsafeKeyReason } from './keys';

/** Presigned URLs: R2 accepts 1 s to 7 days. */
export const MAX_PRESIGN_SECONDS = 7 * 24 * 3600;

export interface ObjectInfo {
  bytes: number;
  contentType?: string;
  cacheControl?: string;
  etag?: string;
  lastModified?: Date;
  metadata: Record<string, string>;
}

export interface PutOptions {
  contentType?: string;
  cacheControl?: string;
  metadata?: Record<string, string>;
}

export interface UploadStreamOptions extends PutOptions {
  /** Part size in bytes (min 5 MiB). Default 16 MiB. */
  partSize?: number;
  /** Parts in flight. Default 4. */
  queueSize?: number;
  onProgress?: (loadedBytes: number) => void;
  signal?: AbortSignal;
}

export interface DownloadOptions {
  /** Continue an existing partial file at destPath with a range request. */
  resume?: boolean;
  /** Expected ETag: the download fails instead of mixing two versions. */
  ifMatch?: string;
  onProgress?: (bytesWritten: number, totalBytes: number) => void;
  signal?: AbortSignal;
}

function isRetryableStreamError(err: unknown): boolean {
  const e = err as { name?: string; code?: string; $metadata?: { httpStatusCode?: number } };
  if (e?.name === 'AbortError') return false;
  const s = e?.$metadata?.httpStatusCode;
  if (s !== undefined) return s >= 500 || s === 429;
  if (err instanceof StorageError) return err.kind === 'unavailable';
  // Network-level: ECONNRESET, ECONNREFUSED, EPIPE, premature close, timeouts.
  return true;
}

function sleep(ms: number, signal?: AbortSignal): Promise<void> {
  return new Promise((resolve, reject) => {
    if (signal?.aborted) return reject(Object.assign(new Error('aborted'), { name: 'AbortError' }));
    const t = setTimeout(resolve, ms);
    signal?.addEventListener('abort', () => {
      clearTimeout(t);
      reject(Object.assign(new Error('aborted'), { name: 'AbortError' }));
    }, { once: true });
  });
}

@injectable()
export class ObjectStorage {
  constructor(
    @inject(STORAGE_CONFIG) readonly config: R2Config,
    @inject(S3_CLIENT) readonly s3: S3Client,
  ) {}

  bucket(alias: BucketAlias | 'default'): BucketConfig {
    return this.config.buckets[resolveBucketAlias(alias)];
  }

  private target(alias: BucketAlias | 'default', key: string): { Bucket: string; Key: string } {
    const b = this.bucket(alias);
    assertSafeKey(key, b.bucket);
    return { Bucket: b.bucket, Key: key };
  }

  async putObject(alias: BucketAlias | 'default', key: string, body: Buffer | Uint8Array | string, opts: PutOptions = {}): Promise<{ etag?: string }> {
    const t = this.target(alias, key);
    try {
      const out = await this.s3.send(
        new PutObjectCommand({ ...t, Body: body, ContentType: opts.contentType, CacheControl: opts.cacheControl, Metadata: opts.metadata }),
      );
      return { etag: out.ETag };
    } catch (err) {
      throw toStorageError(err, 'upload', t.Bucket, key);
    }
  }

  /**
   * Streams a body of unknown length to a key with a multipart upload. The
   * object becomes visible only when the upload completes; on any failure the
   * multipart upload is aborted (and, if the abort request itself fails, the
   * bucket's lifecycle rule, 7 days on R2, removes the parts).
   */
  async uploadStream(alias: BucketAlias | 'default', key: string, body: Readable, opts: UploadStreamOptions = {}): Promise<{ etag?: string; bytes: number }> {
    const t = this.target(alias, key);
    const abortController = new AbortController();
    const onAbort = () => abortController.abort();
    opts.signal?.addEventListener('abort', onAbort, { once: true });
    // A source stream error must fail the upload, not hang it.
    let sourceError: unknown;
    body.on('error', (e: NodeJS.ErrnoException) => {
      // lib-storage destroys the body itself (ABORT_ERR) when an upload fails or is aborted: not a source failure.
      if (e?.code === 'ABORT_ERR' || e?.name === 'AbortError' || abortController.signal.aborted) return;
      sourceError ??= e;
      abortController.abort();
    });
    const upload = new Upload({
      client: this.s3,
      params: { ...t, Body: body, ContentType: opts.contentType, CacheControl: opts.cacheControl, Metadata: opts.metadata },
      partSize: opts.partSize ?? 16 * 1024 ** 2,
      queueSize: opts.queueSize ?? 4,
      leavePartsOnError: false,
      abortController,
      // No `tags`: R2 does not implement object tagging.
    });
    let loaded = 0;
    upload.on('httpUploadProgress', (p) => {
      if (typeof p.loaded === 'number') {
        loaded = p.loaded;
        opts.onProgress?.(loaded);
      }
    });
    try {
      const out = await upload.done();
      return { etag: (out as { ETag?: string }).ETag, bytes: loaded };
    } catch (err) {
      abortController.abort();
      const uploadId = (upload as unknown as { uploadId?: string }).uploadId;
      await this.abortMultipart(t.Bucket, key, uploadId);
      if (sourceError) {
        throw new StorageError('invalid-content', `Could not upload '${key}' to bucket '${t.Bucket}': reading the source failed (${String((sourceError as Error).message ?? sourceError)}). Nothing was stored.`, {
          bucket: t.Bucket,
          key,
          cause: sourceError,
        });
      }
      const se = toStorageError(err, 'upload', t.Bucket, key);
      if (se.kind === 'aborted' || opts.signal?.aborted) {
        throw new StorageError('aborted', `Upload of '${key}' to bucket '${t.Bucket}' was cancelled. Nothing was stored.`, { bucket: t.Bucket, key, cause: err });
      }
      throw se;
    } finally {
      opts.signal?.removeEventListener('abort', onAbort);
    }
  }

  /**
   * Aborts the multipart upload(s) for a key. lib-storage's own abort runs in
   * the background after done() rejects and can be lost when the server is
   * down, so we do it again here, with retries.
   */
  private async abortMultipart(bucket: string, key: string, uploadId: string | undefined): Promise<void> {
    for (let attempt = 1; attempt <= this.config.retry.maxAttempts; attempt++) {
      try {
        const ids = new Set<string>();
        if (uploadId) ids.add(uploadId);
        const listed = await this.s3.send(new ListMultipartUploadsCommand({ Bucket: bucket, Prefix: key }));
        for (const u of listed.Uploads ?? []) if (u.Key === key && u.UploadId && (!uploadId || u.UploadId === uploadId)) ids.add(u.UploadId);
        for (const id of ids) {
          try {
            await this.s3.send(new AbortMultipartUploadCommand({ Bucket: bucket, Key: key, UploadId: id }));
          } catch (e) {
            if ((e as { name?: string }).name !== 'NoSuchUpload') throw e;
          }
        }
        return;
      } catch {
        await sleep(backoffDelayMs(attempt, this.config.retry));
      }
    }
  }

  async getObjectStream(
    alias: BucketAlias | 'default',
    key: string,
    opts: { range?: { start: number; end?: number }; ifMatch?: string; signal?: AbortSignal } = {},
  ): Promise<{ body: Readable; bytes: number; totalBytes: number; contentType?: string; etag?: string }> {
    const t = this.target(alias, key);
    try {
      const out = await this.s3.send(
        new GetObjectCommand({
          ...t,
          Range: opts.range ? `bytes=${opts.range.start}-${opts.range.end ?? ''}` : undefined,
          IfMatch: opts.ifMatch,
        }),
        { abortSignal: opts.signal },
      );
      const bytes = out.ContentLength ?? 0;
      let totalBytes = bytes;
      const cr = out.ContentRange && /\/(\d+)$/.exec(out.ContentRange);
      if (cr) totalBytes = Number(cr[1]);
      return { body: out.Body as Readable, bytes, totalBytes, contentType: out.ContentType, etag: out.ETag };
    } catch (err) {
      if ((err as { $metadata?: { httpStatusCode?: number } }).$metadata?.httpStatusCode === 412) {
        throw new StorageError('invalid-content', `'${key}' in bucket '${t.Bucket}' changed while it was being read (ETag no longer ${opts.ifMatch}). Start the download again.`, {
          bucket: t.Bucket,
          key,
          status: 412,
          cause: err,
        });
      }
      throw toStorageError(err, 'read', t.Bucket, key);
    }
  }

  /** Object metadata, or null when the object does not exist. */
  async headObject(alias: BucketAlias | 'default', key: string): Promise<ObjectInfo | null> {
    const t = this.target(alias, key);
    try {
      const o = await this.s3.send(new HeadObjectCommand(t));
      return {
        bytes: o.ContentLength ?? 0,
        contentType: o.ContentType,
        cacheControl: o.CacheControl,
        etag: o.ETag,
        lastModified: o.LastModified,
        metadata: o.Metadata ?? {},
      };
    } catch (err) {
      const se = toStorageError(err, 'inspect', t.Bucket, key);
      if (se.kind === 'not-found') return null;
      throw se;
    }
  }

  async deleteObject(alias: BucketAlias | 'default', key: string): Promise<void> {
    const t = this.target(alias, key);
    try {
      await this.s3.send(new DeleteObjectCommand(t));
    } catch (err) {
      const se = toStorageError(err, 'delete', t.Bucket, key);
      if (se.kind !== 'not-found') throw se;
    }
  }

  async listKeys(alias: BucketAlias | 'default', prefix: string): Promise<string[]> {
    const b = this.bucket(alias);
    const keys: string[] = [];
    let token: string | undefined;
    try {
      do {
        const out = await this.s3.send(new ListObjectsV2Command({ Bucket: b.bucket, Prefix: prefix, ContinuationToken: token }));
        for (const o of out.Contents ?? []) if (o.Key) keys.push(o.Key);
        token = out.IsTruncated ? out.NextContinuationToken : undefined;
      } while (token);
    } catch (err) {
      throw toStorageError(err, `list prefix '${prefix}' of`, b.bucket);
    }
    return keys;
  }

  /** Deletes every object under `prefix` (which must be non-empty and end in '/'). Returns how many were deleted. */
  async deletePrefix(alias: BucketAlias | 'default', prefix: string): Promise<number> {
    const b = this.bucket(alias);
    if (!prefix.endsWith('/') || prefix.length < 2 || unsafeKeyReason(prefix.slice(0, -1))) {
      throw new StorageError('invalid-argument', `Refusing to delete prefix ${JSON.stringify(prefix)} in bucket '${b.bucket}': it must be a non-empty folder-like prefix ending in '/'.`, {
        bucket: b.bucket,
      });
    }
    const keys = await this.listKeys(alias, prefix);
    for (let i = 0; i < keys.length; i += 1000) {
      const batch = keys.slice(i, i + 1000);
      try {
        const out = await this.s3.send(new DeleteObjectsCommand({ Bucket: b.bucket, Delete: { Objects: batch.map((Key) => ({ Key })), Quiet: true } }));
        if (out.Errors?.length) {
          const e = out.Errors[0];
          throw new StorageError('rejected', `Could not delete '${e.Key}' in bucket '${b.bucket}' (${e.Code}: ${e.Message}); ${out.Errors.length} key(s) under '${prefix}' remain.`, {
            bucket: b.bucket,
            key: e.Key,
          });
        }
      } catch (err) {
        throw toStorageError(err, `delete prefix '${prefix}' of`, b.bucket);
      }
    }
    return keys.length;
  }

  /** Clears multipart uploads left under a prefix (housekeeping; R2 also expires them after 7 days). */
  async listMultipartUploads(alias: BucketAlias | 'default', prefix: string): Promise<{ key: string; uploadId: string; initiated?: Date }[]> {
    const b = this.bucket(alias);
    try {
      const out = await this.s3.send(new ListMultipartUploadsCommand({ Bucket: b.bucket, Prefix: prefix }));
      return (out.Uploads ?? []).map((u) => ({ key: u.Key ?? '', uploadId: u.UploadId ?? '', initiated: u.Initiated }));
    } catch (err) {
      throw toStorageError(err, `list multipart uploads under '${prefix}' of`, b.bucket);
    }
  }

  /**
   * Aborts incomplete multipart uploads under a prefix, e.g. at worker start
   * for uploads whose abort could not reach the server. `olderThanMs` spares
   * uploads another process may still be running. Returns how many.
   */
  async abortIncompleteUploads(alias: BucketAlias | 'default', prefix: string, olderThanMs = 0): Promise<number> {
    const b = this.bucket(alias);
    const cutoff = Date.now() - olderThanMs;
    let n = 0;
    for (const u of await this.listMultipartUploads(alias, prefix)) {
      if (olderThanMs > 0 && u.initiated && u.initiated.getTime() > cutoff) continue;
      try {
        await this.s3.send(new AbortMultipartUploadCommand({ Bucket: b.bucket, Key: u.key, UploadId: u.uploadId }));
        n++;
      } catch (err) {
        if ((err as { name?: string }).name !== 'NoSuchUpload') throw toStorageError(err, 'abort multipart upload of', b.bucket, u.key);
      }
    }
    return n;
  }

  /** A presigned GET on the S3 endpoint (presigned URLs do not work on R2 custom domains). */
  async presignGet(alias: BucketAlias | 'default', key: string, expiresInSeconds = 3600): Promise<string> {
    const t = this.target(alias, key);
    if (!Number.isInteger(expiresInSeconds) || expiresInSeconds < 1 || expiresInSeconds > MAX_PRESIGN_SECONDS) {
      throw new StorageError('invalid-argument', `Presigned URL expiry must be a whole number of seconds from 1 to ${MAX_PRESIGN_SECONDS} (7 days), got ${expiresInSeconds}.`, {
        bucket: t.Bucket,
        key,
      });
    }
    return getSignedUrl(this.s3, new GetObjectCommand(t), { expiresIn: expiresInSeconds });
  }

  /** The public CDN URL of an object. */
  publicUrl(alias: BucketAlias | 'default', key: string): string {
    const b = this.bucket(alias);
    assertSafeKey(key, b.bucket);
    return `${b.publicBaseUrl}/${encodeKeyForUrl(key)}`;
  }

  /**
   * Recognises URLs that point into our buckets: the CDN base of each alias,
   * the path-style endpoint URL, and the virtual-hosted endpoint URL. Query
   * strings (e.g. a presigned signature) are ignored. Returns null for any
   * other URL, and for keys that are not safe.
   */
  parseOwnUrl(url: string): { bucketAlias: BucketAlias; key: string } | null {
    const m = this.matchOwnUrl(url);
    return m && m.key !== null ? { bucketAlias: m.bucketAlias, key: m.key } : null;
  }

  /** Like parseOwnUrl, but also reports URLs into our buckets whose key is unsafe (key: null). */
  matchOwnUrl(url: string): { bucketAlias: BucketAlias; key: string | null } | null {
    let u: URL;
    try {
      u = new URL(url);
    } catch {
      return null;
    }
    if (u.protocol !== 'https:' && u.protocol !== 'http:') return null;
    const ep = new URL(this.config.endpoint);
    const decode = (p: string): string | null => {
      try {
        const k = p.split('/').map(decodeURIComponent).join('/');
        return unsafeKeyReason(k) ? null : k;
      } catch {
        return null;
      }
    };
    for (const alias of BUCKET_ALIASES) {
      const b = this.config.buckets[alias];
      const candidates: { origin: string; pathPrefix: string }[] = [];
      const pub = new URL(b.publicBaseUrl);
      candidates.push({ origin: pub.origin, pathPrefix: `${pub.pathname.replace(/\/+$/, '')}/` });
      candidates.push({ origin: ep.origin, pathPrefix: `${ep.pathname.replace(/\/+$/, '')}/${b.bucket}/` });
      candidates.push({ origin: `${ep.protocol}//${b.bucket}.${ep.host}`, pathPrefix: '/' });
      for (const c of candidates) {
        if (u.origin === c.origin && u.pathname.startsWith(c.pathPrefix) && u.pathname.length > c.pathPrefix.length) {
          return { bucketAlias: alias, key: decode(u.pathname.slice(c.pathPrefix.length)) };
        }
      }
    }
    return null;
  }

  /**
   * Downloads an object to a file. A body cut mid-transfer is resumed with a
   * range request (pinned to the first response's ETag) after a backoff, up
   * to the configured attempts. With `resume`, an existing file is continued.
   */
  async downloadToFile(alias: BucketAlias | 'default', key: string, destPath: string, opts: DownloadOptions = {}): Promise<{ bytes: number; etag?: string; attempts: number }> {
    const t = this.target(alias, key);
    let written = 0;
    if (opts.resume) {
      written = await fsp.stat(destPath).then((s) => s.size, () => 0);
    } else {
      await fsp.rm(destPath, { force: true });
    }
    let etag = opts.ifMatch;
    let total = -1;
    let lastErr: unknown;
    for (let attempt = 1; attempt <= this.config.retry.maxAttempts; attempt++) {
      if (total >= 0 && written >= total) break;
      try {
        const r = await this.getObjectStream(alias, key, { range: written > 0 ? { start: written } : undefined, ifMatch: etag, signal: opts.signal });
        etag = etag ?? r.etag;
        total = r.totalBytes;
        const counter = new Transform({
          transform(chunk: Buffer, _enc, cb) {
            written += chunk.length;
            opts.onProgress?.(written, total);
            cb(null, chunk);
          },
        });
        await pipeline(r.body, counter, createWriteStream(destPath, { flags: written > 0 ? 'a' : 'w' }), { signal: opts.signal });
        if (written !== total) throw new Error(`stream ended at ${written} of ${total} bytes`);
        return { bytes: written, etag, attempts: attempt };
      } catch (err) {
        lastErr = err;
        if (opts.signal?.aborted) throw new StorageError('aborted', `Download of '${key}' from bucket '${t.Bucket}' was cancelled.`, { bucket: t.Bucket, key, cause: err });
        // Range past the end: a previous attempt already has it all.
        if ((err as StorageError).status === 416 && written > 0) {
          const head = await this.headObject(alias, key);
          if (head && head.bytes === written) return { bytes: written, etag: head.etag, attempts: attempt };
        }
        if (!isRetryableStreamError(err) || attempt === this.config.retry.maxAttempts) break;
        written = await fsp.stat(destPath).then((s) => s.size, () => 0);
        await sleep(backoffDelayMs(attempt, this.config.retry), opts.signal);
      }
    }
    if (lastErr instanceof StorageError && lastErr.kind !== 'unavailable') throw lastErr;
    throw new StorageError(
      'unavailable',
      `Could not download '${key}' from bucket '${t.Bucket}' after ${this.config.retry.maxAttempts} attempts: ${(lastErr as Error)?.message ?? lastErr}. ${written} bytes are kept in ${destPath} for a resumed retry.`,
      { bucket: t.Bucket, key, cause: lastErr, attempts: this.config.retry.maxAttempts },
    );
  }
}
