/**
 * ObjectStorage: the S3 API addressed by bucket alias, as one facade. Every
 * failure becomes a StorageError naming the bucket and key. The jobs live in
 * their own files: uploads (object-upload.ts, lib-storage), resumable and
 * ranged downloads (object-download.ts), URLs (public-urls.ts); request
 * retries are the client's (retry.ts).
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
import type { Readable } from 'node:stream';
import { inject, injectable } from 'tsyringe';
import { S3_CLIENT } from './client';
import { STORAGE_CONFIG, resolveBucketAlias, type BucketAlias, type BucketConfig, type R2Config } from './config';
import { StorageError, toStorageError } from './errors';
import { assertSafeKey, unsafeKeyReason } from './keys';
import { ObjectDownload, type DownloadOptions, type DownloadResult, type ObjectInfo } from './object-download';
import { uploadFile, uploadStream, type ObjectTarget, type PutOptions, type UploadFileOptions, type UploadStreamOptions } from './object-upload';
import { matchOwnUrl, presignGetUrl, publicUrlOf, type OwnUrlMatch } from './public-urls';

type Alias = BucketAlias | 'default';

@injectable()
export class ObjectStorage {
  constructor(
    @inject(STORAGE_CONFIG) readonly config: R2Config,
    @inject(S3_CLIENT) readonly s3: S3Client,
  ) {}

  bucket(alias: Alias): BucketConfig {
    return this.config.buckets[resolveBucketAlias(alias)];
  }

  private target(alias: Alias, key: string): ObjectTarget {
    const b = this.bucket(alias);
    assertSafeKey(key, b.bucket);
    return { Bucket: b.bucket, Key: key };
  }

  async putObject(alias: Alias, key: string, body: Buffer | Uint8Array | string, opts: PutOptions = {}): Promise<{ etag?: string }> {
    const t = this.target(alias, key);
    try {
      const out = await this.s3.send(new PutObjectCommand({ ...t, Body: body, ContentType: opts.contentType, CacheControl: opts.cacheControl, Metadata: opts.metadata }));
      return { etag: out.ETag };
    } catch (err) {
      throw toStorageError(err, 'upload', t.Bucket, key);
    }
  }

  /** Streams a body of unknown length to a key (multipart); visible only when complete, aborted on failure. */
  uploadStream(alias: Alias, key: string, body: Readable, opts: UploadStreamOptions = {}): Promise<{ etag?: string; bytes: number }> {
    return uploadStream(this.s3, this.target(alias, key), body, opts);
  }

  /** Uploads a local file; `onRead` sees every byte in order. A file that changes size meanwhile stores nothing. */
  uploadFile(alias: Alias, key: string, filePath: string, opts: UploadFileOptions = {}): Promise<{ etag?: string; bytes: number }> {
    return uploadFile(this.s3, this.target(alias, key), filePath, opts);
  }

  async getObjectStream(
    alias: Alias,
    key: string,
    opts: { range?: { start: number; end?: number }; ifMatch?: string; signal?: AbortSignal } = {},
  ): Promise<{ body: Readable; bytes: number; totalBytes: number; contentType?: string; etag?: string }> {
    const t = this.target(alias, key);
    try {
      const out = await this.s3.send(
        new GetObjectCommand({ ...t, Range: opts.range ? `bytes=${opts.range.start}-${opts.range.end ?? ''}` : undefined, IfMatch: opts.ifMatch }),
        { abortSignal: opts.signal },
      );
      const bytes = out.ContentLength ?? 0;
      const cr = out.ContentRange && /\/(\d+)$/.exec(out.ContentRange);
      return { body: out.Body as Readable, bytes, totalBytes: cr ? Number(cr[1]) : bytes, contentType: out.ContentType, etag: out.ETag };
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

  /** Downloads an object to a file, resuming cut streams; see DownloadOptions for ranges and resume. */
  downloadToFile(alias: Alias, key: string, destPath: string, opts: DownloadOptions = {}): Promise<DownloadResult> {
    const t = this.target(alias, key);
    const reader = { getObjectStream: (k: string, o: Parameters<ObjectStorage['getObjectStream']>[2]) => this.getObjectStream(alias, k, o), headObject: (k: string) => this.headObject(alias, k) };
    return new ObjectDownload(reader, t.Bucket, key, this.config.retry).toFile(destPath, opts);
  }

  /** Object metadata, or null when the object does not exist. */
  async headObject(alias: Alias, key: string): Promise<ObjectInfo | null> {
    const t = this.target(alias, key);
    try {
      const o = await this.s3.send(new HeadObjectCommand(t));
      return { bytes: o.ContentLength ?? 0, contentType: o.ContentType, cacheControl: o.CacheControl, etag: o.ETag, lastModified: o.LastModified, metadata: o.Metadata ?? {} };
    } catch (err) {
      const se = toStorageError(err, 'inspect', t.Bucket, key);
      if (se.kind === 'not-found') return null;
      throw se;
    }
  }

  async deleteObject(alias: Alias, key: string): Promise<void> {
    const t = this.target(alias, key);
    try {
      await this.s3.send(new DeleteObjectCommand(t));
    } catch (err) {
      const se = toStorageError(err, 'delete', t.Bucket, key);
      if (se.kind !== 'not-found') throw se;
    }
  }

  async listKeys(alias: Alias, prefix: string): Promise<string[]> {
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
  async deletePrefix(alias: Alias, prefix: string): Promise<number> {
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

  /** Incomplete multipart uploads under a prefix. */
  async listMultipartUploads(alias: Alias, prefix: string): Promise<{ key: string; uploadId: string; initiated?: Date }[]> {
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
  async abortIncompleteUploads(alias: Alias, prefix: string, olderThanMs = 0): Promise<number> {
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

  /** A presigned GET on the S3 endpoint (presigned URLs do not work on R2 custom domains); 1 s to 7 days. */
  presignGet(alias: Alias, key: string, expiresInSeconds = 3600): Promise<string> {
    return presignGetUrl(this.s3, this.bucket(alias).bucket, key, expiresInSeconds);
  }

  /** The public CDN URL of an object. */
  publicUrl(alias: Alias, key: string): string {
    return publicUrlOf(this.config, alias, key);
  }

  /** The bucket and key of a URL into our buckets (CDN, path-style or virtual-hosted), or null; unsafe keys give null. */
  parseOwnUrl(url: string): { bucketAlias: BucketAlias; key: string } | null {
    const m = matchOwnUrl(this.config, url);
    return m && m.key !== null ? { bucketAlias: m.bucketAlias, key: m.key } : null;
  }

  /** Like parseOwnUrl, but also reports URLs into our buckets whose key is unsafe (key: null). */
  matchOwnUrl(url: string): OwnUrlMatch | null {
    return matchOwnUrl(this.config, url);
  }
}
