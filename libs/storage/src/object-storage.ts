/**
 * Thin adapter over the S3 API, addressed by bucket alias. Every failure
 * becomes a StorageError naming the bucket and key. Request-level retries
 * (throttling, 5xx, network) live in the client's retry strategy; this class
 * adds stream-level retries where the SDK cannot (a body cut mid-download is
 * resumed with a range request).
 */
import {
  AbortMultipartUploadCommand,
  CompleteMultipartUploadCommand,
  CreateMultipartUploadCommand,
  DeleteObjectCommand,
  DeleteObjectsCommand,
  GetObjectCommand,
  HeadObjectCommand,
  ListMultipartUploadsCommand,
  ListObjectsV2Command,
  PutObjectCommand,
  S3Client,
  UploadPartCommand,
} from '@aws-sdk/client-s3';
import { Upload } from '@aws-sdk/lib-storage';
import { getSignedUrl } from '@aws-sdk/s3-request-presigner';
import { promises as fsp } from 'node:fs';
import type { FileHandle } from 'node:fs/promises';
import { Readable } from 'node:stream';
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
  /**
   * Ranged GETs in flight. 1 (default) streams the object in one request.
   * Above 1, objects larger than two chunks are fetched in `chunkBytes`
   * ranges written in place; finished ranges are recorded in
   * `<destPath>.ranges.json`, so `resume` continues where it stopped.
   */
  concurrency?: number;
  /** Range size for concurrent downloads. Default 64 MiB. */
  chunkBytes?: number;
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

/**
 * Writes a response body to `fh` from `position` on, coalescing the socket's
 * small chunks into 4 MiB writes: far fewer syscalls, and the chunks die young
 * instead of waiting in a write queue (most of the CPU of a naive pipe is GC).
 * Bytes received before an error are flushed before it is rethrown, so a
 * resume starts as late as possible. `onFlushed` gets each flushed count.
 */
async function drainToFile(
  body: AsyncIterable<Uint8Array>,
  fh: FileHandle,
  position: number,
  maxBytes: number | undefined,
  onFlushed: (n: number) => void,
): Promise<void> {
  const buf = Buffer.allocUnsafe(4 * 1024 * 1024);
  let fill = 0;
  let pos = position;
  let total = 0;
  const flush = async () => {
    let off = 0;
    while (off < fill) {
      const { bytesWritten } = await fh.write(buf, off, fill - off, pos + off);
      off += bytesWritten;
    }
    pos += fill;
    const n = fill;
    fill = 0;
    if (n) onFlushed(n);
  };
  try {
    for await (const chunk of body) {
      total += chunk.byteLength;
      if (maxBytes !== undefined && total > maxBytes) throw new Error(`the server sent more than the ${maxBytes} bytes requested`);
      let off = 0;
      while (off < chunk.byteLength) {
        const n = Math.min(chunk.byteLength - off, buf.length - fill);
        buf.set(chunk.subarray(off, off + n), fill);
        fill += n;
        off += n;
        if (fill === buf.length) await flush();
      }
    }
  } catch (err) {
    await flush().catch(() => undefined);
    throw err;
  }
  await flush();
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
   * Uploads a local file: one PutObject up to `partSize`, else a multipart
   * upload with `queueSize` parts in flight. Parts are read in order into a
   * fixed pool of buffers (no per-part allocation or copying, which is most
   * of lib-storage's overhead for streams), and `onRead` sees every byte in
   * order (ModelUploader hashes there). The object is visible only after
   * CompleteMultipartUpload; on any failure the upload is aborted.
   */
  async uploadFile(
    alias: BucketAlias | 'default',
    key: string,
    filePath: string,
    opts: UploadStreamOptions & { onRead?: (chunk: Buffer) => void } = {},
  ): Promise<{ etag?: string; bytes: number }> {
    const t = this.target(alias, key);
    const fh = await fsp.open(filePath, 'r');
    const fail = (why: string, cause?: unknown): StorageError =>
      new StorageError('invalid-content', `Could not upload ${filePath} to '${key}' in bucket '${t.Bucket}': ${why}. Nothing was stored.`, { bucket: t.Bucket, key, cause });
    let uploadId: string | undefined;
    try {
      const size = (await fh.stat()).size;
      const partSize = Math.max(opts.partSize ?? 16 * 1024 ** 2, 5 * 1024 ** 2, Math.ceil(size / 10_000));
      const readFully = async (buf: Buffer, len: number, pos: number) => {
        let got = 0;
        while (got < len) {
          const { bytesRead } = await fh.read(buf, got, len - got, pos + got);
          if (bytesRead === 0) throw fail(`the file shrank while reading (expected ${size} bytes)`);
          got += bytesRead;
        }
      };
      const common = { ...t, ContentType: opts.contentType, CacheControl: opts.cacheControl, Metadata: opts.metadata };
      if (size <= partSize) {
        const buf = Buffer.allocUnsafe(size);
        await readFully(buf, size, 0);
        opts.onRead?.(buf);
        if (opts.signal?.aborted) throw new StorageError('aborted', `Upload of '${key}' to bucket '${t.Bucket}' was cancelled. Nothing was stored.`, { bucket: t.Bucket, key });
        const out = await this.s3.send(new PutObjectCommand({ ...common, Body: buf, ContentLength: size }), { abortSignal: opts.signal });
        opts.onProgress?.(size);
        return { etag: out.ETag, bytes: size };
      }
      const created = await this.s3.send(new CreateMultipartUploadCommand(common));
      uploadId = created.UploadId;
      const ctl = new AbortController();
      const onAbort = () => ctl.abort();
      opts.signal?.addEventListener('abort', onAbort, { once: true });
      if (opts.signal?.aborted) ctl.abort();
      const queueSize = Math.max(1, opts.queueSize ?? 4);
      const free: Buffer[] = Array.from({ length: queueSize }, () => Buffer.allocUnsafe(partSize));
      const waiters: ((b: Buffer) => void)[] = [];
      const take = () => (free.length ? Promise.resolve(free.pop() as Buffer) : new Promise<Buffer>((r) => waiters.push(r)));
      const give = (b: Buffer) => {
        const w = waiters.shift();
        if (w) w(b);
        else free.push(b);
      };
      const parts: { PartNumber: number; ETag?: string }[] = [];
      const inflight = new Set<Promise<void>>();
      let failure: unknown;
      let uploaded = 0;
      try {
        for (let n = 1, pos = 0; pos < size && failure === undefined && !ctl.signal.aborted; n++, pos += partSize) {
          const buf = await take();
          if (failure !== undefined || ctl.signal.aborted) break;
          const len = Math.min(partSize, size - pos);
          await readFully(buf, len, pos);
          const body = buf.subarray(0, len);
          opts.onRead?.(body);
          const partNumber = n;
          const p: Promise<void> = this.s3
            .send(new UploadPartCommand({ ...t, UploadId: uploadId, PartNumber: partNumber, Body: body, ContentLength: len }), { abortSignal: ctl.signal })
            .then((out) => {
              parts.push({ PartNumber: partNumber, ETag: out.ETag });
              uploaded += len;
              opts.onProgress?.(uploaded);
            })
            .catch((err: unknown) => {
              failure ??= err;
              ctl.abort();
            })
            .finally(() => {
              inflight.delete(p);
              give(buf);
            });
          inflight.add(p);
        }
      } catch (err) {
        // A read failure: stop the parts in flight before aborting the upload.
        failure ??= err;
        ctl.abort();
      } finally {
        await Promise.allSettled([...inflight]);
        opts.signal?.removeEventListener('abort', onAbort);
      }
      if (opts.signal?.aborted) throw new StorageError('aborted', `Upload of '${key}' to bucket '${t.Bucket}' was cancelled. Nothing was stored.`, { bucket: t.Bucket, key });
      if (failure !== undefined) throw failure;
      if ((await fh.stat()).size !== size) throw fail('the file changed size during the upload');
      parts.sort((a, b) => a.PartNumber - b.PartNumber);
      const done = await this.s3.send(new CompleteMultipartUploadCommand({ ...t, UploadId: uploadId, MultipartUpload: { Parts: parts } }));
      uploadId = undefined;
      return { etag: done.ETag, bytes: size };
    } catch (err) {
      if (uploadId) await this.abortMultipart(t.Bucket, key, uploadId);
      if (err instanceof StorageError) throw err;
      if ((err as { name?: string }).name === 'AbortError' || opts.signal?.aborted) {
        throw new StorageError('aborted', `Upload of '${key}' to bucket '${t.Bucket}' was cancelled. Nothing was stored.`, { bucket: t.Bucket, key, cause: err });
      }
      if ((err as NodeJS.ErrnoException).code && !(err as { $metadata?: unknown }).$metadata && (err as NodeJS.ErrnoException).syscall) {
        throw fail(`reading the file failed (${(err as Error).message})`, err);
      }
      throw toStorageError(err, 'upload', t.Bucket, key);
    } finally {
      await fh.close();
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
    const chunkBytes = opts.chunkBytes ?? 64 * 1024 * 1024;
    if ((opts.concurrency ?? 1) > 1) {
      const head = await this.headObject(alias, key);
      if (!head) throw new StorageError('not-found', `Could not read '${key}' in bucket '${t.Bucket}': it does not exist.`, { bucket: t.Bucket, key, status: 404 });
      if (opts.ifMatch && head.etag !== opts.ifMatch) {
        throw new StorageError('invalid-content', `'${key}' in bucket '${t.Bucket}' changed (ETag no longer ${opts.ifMatch}). Start the download again.`, { bucket: t.Bucket, key, status: 412 });
      }
      if (head.bytes > 2 * chunkBytes) return this.downloadRanges(alias, key, destPath, head, chunkBytes, opts);
    }
    await fsp.rm(`${destPath}.ranges.json`, { force: true });
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
        const fh = await fsp.open(destPath, written > 0 ? 'r+' : 'w');
        try {
          await drainToFile(r.body, fh, written, undefined, (n) => {
            written += n;
            opts.onProgress?.(written, total);
          });
        } finally {
          await fh.close();
        }
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

  /** Concurrent ranged download into a preallocated file, resumable per range. */
  private async downloadRanges(
    alias: BucketAlias | 'default',
    key: string,
    destPath: string,
    head: ObjectInfo,
    chunkBytes: number,
    opts: DownloadOptions,
  ): Promise<{ bytes: number; etag?: string; attempts: number }> {
    const bucket = this.bucket(alias).bucket;
    const statePath = `${destPath}.ranges.json`;
    const count = Math.ceil(head.bytes / chunkBytes);
    type State = { etag?: string; bytes: number; chunkBytes: number; done: number[] };
    let state: State | null = null;
    if (opts.resume) {
      state = await fsp.readFile(statePath, 'utf8').then((x) => JSON.parse(x) as State, () => null);
      const size = await fsp.stat(destPath).then((st) => st.size, () => -1);
      if (!state || state.etag !== head.etag || state.bytes !== head.bytes || state.chunkBytes !== chunkBytes || size !== head.bytes) state = null;
    }
    const done = new Set<number>(state?.done ?? []);
    if (!state) {
      await fsp.rm(destPath, { force: true });
      const fh0 = await fsp.open(destPath, 'w');
      await fh0.truncate(head.bytes);
      await fh0.close();
    }
    // Several range workers finish at once: writes are chained (never two in flight) and
    // atomic (temp file + rename), so a crash or a concurrent save never leaves torn JSON.
    let saving: Promise<void> = Promise.resolve();
    const saveState = () =>
      (saving = saving.catch(() => undefined).then(async () => {
        const tmp = `${statePath}.tmp`;
        await fsp.writeFile(tmp, JSON.stringify({ etag: head.etag, bytes: head.bytes, chunkBytes, done: [...done] } satisfies State));
        await fsp.rename(tmp, statePath);
      }));
    await saveState();
    const fh = await fsp.open(destPath, 'r+');
    let progress = [...done].reduce((s, i) => s + Math.min(chunkBytes, head.bytes - i * chunkBytes), 0);
    let maxAttempts = 1;
    let next = 0;
    let failure: unknown;
    const ctl = new AbortController();
    const onAbort = () => ctl.abort();
    opts.signal?.addEventListener('abort', onAbort, { once: true });
    const fetchRange = async (i: number) => {
      const start = i * chunkBytes;
      const end = Math.min(head.bytes, start + chunkBytes) - 1;
      for (let attempt = 1; ; attempt++) {
        let pos = start;
        try {
          const r = await this.getObjectStream(alias, key, { range: { start, end }, ifMatch: head.etag, signal: ctl.signal });
          await drainToFile(r.body, fh, start, end + 1 - start, (n) => {
            pos += n;
            progress += n;
            opts.onProgress?.(progress, head.bytes);
          });
          if (pos !== end + 1) throw new Error(`range ${start}-${end} ended at ${pos}`);
          maxAttempts = Math.max(maxAttempts, attempt);
          return;
        } catch (err) {
          progress -= pos - start;
          if (ctl.signal.aborted || !isRetryableStreamError(err) || attempt >= this.config.retry.maxAttempts) {
            maxAttempts = Math.max(maxAttempts, attempt);
            throw err;
          }
          await sleep(backoffDelayMs(attempt, this.config.retry), ctl.signal);
        }
      }
    };
    const worker = async () => {
      while (!ctl.signal.aborted) {
        let i = next++;
        while (i < count && done.has(i)) i = next++;
        if (i >= count) return;
        try {
          await fetchRange(i);
          done.add(i);
          await saveState();
        } catch (err) {
          failure ??= err;
          ctl.abort();
        }
      }
    };
    try {
      await Promise.all(Array.from({ length: Math.min(opts.concurrency ?? 1, count) }, worker));
    } finally {
      opts.signal?.removeEventListener('abort', onAbort);
      await fh.close();
    }
    if (failure !== undefined || done.size !== count) {
      if (opts.signal?.aborted) throw new StorageError('aborted', `Download of '${key}' from bucket '${bucket}' was cancelled; finished ranges are kept for resume.`, { bucket, key, cause: failure });
      if (failure instanceof StorageError && failure.kind !== 'unavailable') throw failure;
      throw new StorageError(
        'unavailable',
        `Could not download '${key}' from bucket '${bucket}' after ${maxAttempts} attempts: ${(failure as Error)?.message ?? failure}. ${done.size} of ${count} ranges are kept in ${destPath} for a resumed retry.`,
        { bucket, key, cause: failure, attempts: maxAttempts },
      );
    }
    await fsp.rm(statePath, { force: true });
    return { bytes: head.bytes, etag: head.etag, attempts: maxAttempts };
  }
}
