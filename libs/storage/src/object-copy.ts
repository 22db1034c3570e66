/**
 * Server-side copy of one object (S3 CopyObject; R2 and MinIO implement it):
 * the bytes never pass through this process, which matters for LoRAs of
 * hundreds of MB. The copy gets its own metadata, content type and cache
 * policy (MetadataDirective REPLACE), e.g. when a checkpoint is published
 * under `loras/`. Objects above 5 GiB (one CopyObject's limit) are copied
 * as a multipart upload of UploadPartCopy ranges.
 */
import {
  AbortMultipartUploadCommand,
  CompleteMultipartUploadCommand,
  CopyObjectCommand,
  CreateMultipartUploadCommand,
  UploadPartCopyCommand,
} from '@aws-sdk/client-s3';
import type { BucketAlias } from './config';
import { StorageError, toStorageError } from './errors';
import { assertSafeKey, encodeKeyForUrl } from './keys';
import type { ObjectStorage } from './object-storage';

/** One CopyObject request copies at most 5 GiB (S3 and R2); larger objects are copied in parts. */
export const MAX_SINGLE_COPY_BYTES = 5 * 1024 ** 3;
/** Part size of a multipart copy (S3: 5 MiB to 5 GiB per part, at most 10,000 parts). */
const DEFAULT_COPY_PART_BYTES = 512 * 1024 ** 2;
const MAX_PARTS = 10_000;

export interface CopyTarget {
  alias: BucketAlias | 'default';
  key: string;
}

export interface CopyOptions {
  contentType?: string;
  cacheControl?: string;
  metadata?: Record<string, string>;
  /** Above this size the copy is multipart (default and maximum: MAX_SINGLE_COPY_BYTES). */
  singleCopyLimitBytes?: number;
  /** Part size of a multipart copy (at least 5 MiB; raised when the object would need more than 10,000 parts). */
  partBytes?: number;
}

/**
 * Copies `from` to `to` and checks the copy's size against the source's.
 * Throws `not-found` when the source is missing. Only the version of the
 * source that was inspected is copied (If-Match on its ETag): a source
 * replaced meanwhile fails the copy. Returns the copy's size in bytes.
 */
export async function copyObject(storage: ObjectStorage, from: CopyTarget, to: CopyTarget, opts: CopyOptions = {}): Promise<{ bytes: number; etag?: string }> {
  const src = storage.bucket(from.alias);
  const dst = storage.bucket(to.alias);
  assertSafeKey(from.key, src.bucket);
  assertSafeKey(to.key, dst.bucket);
  const source = await storage.headObject(from.alias, from.key);
  if (!source) {
    throw new StorageError('not-found', `Cannot copy '${from.key}' in bucket '${src.bucket}': the object does not exist (deleted, or never stored).`, { bucket: src.bucket, key: from.key });
  }
  const copySource = `${src.bucket}/${encodeKeyForUrl(from.key)}`;
  const contentType = opts.contentType ?? source.contentType;
  const singleLimit = Math.min(opts.singleCopyLimitBytes ?? MAX_SINGLE_COPY_BYTES, MAX_SINGLE_COPY_BYTES);
  let etag: string | undefined;
  try {
    if (source.bytes <= singleLimit) {
      const out = await storage.s3.send(
        new CopyObjectCommand({
          Bucket: dst.bucket,
          Key: to.key,
          CopySource: copySource,
          CopySourceIfMatch: source.etag,
          MetadataDirective: 'REPLACE',
          ContentType: contentType,
          CacheControl: opts.cacheControl,
          Metadata: opts.metadata,
        }),
      );
      etag = out.CopyObjectResult?.ETag;
    } else {
      etag = await multipartCopy(storage, dst.bucket, to.key, copySource, source, { ...opts, contentType });
    }
  } catch (err) {
    throw toStorageError(err, `copy '${from.key}' (bucket '${src.bucket}') to`, dst.bucket, to.key);
  }
  const copy = await storage.headObject(to.alias, to.key);
  if (!copy || copy.bytes !== source.bytes) {
    throw new StorageError('invalid-content', `The copy of '${from.key}' at '${to.key}' in bucket '${dst.bucket}' has ${copy?.bytes ?? 'no'} bytes, not ${source.bytes}. Copy it again.`, {
      bucket: dst.bucket,
      key: to.key,
    });
  }
  return { bytes: copy.bytes, etag };
}

/** CreateMultipartUpload, one UploadPartCopy per range, Complete; aborted on any failure (nothing visible under the key). */
async function multipartCopy(
  storage: ObjectStorage,
  bucket: string,
  key: string,
  copySource: string,
  source: { bytes: number; etag?: string },
  opts: CopyOptions,
): Promise<string | undefined> {
  const created = await storage.s3.send(new CreateMultipartUploadCommand({ Bucket: bucket, Key: key, ContentType: opts.contentType, CacheControl: opts.cacheControl, Metadata: opts.metadata }));
  const uploadId = created.UploadId;
  if (!uploadId) throw new StorageError('rejected', `The server started no multipart upload for '${key}' in bucket '${bucket}'.`, { bucket, key });
  try {
    const partBytes = Math.max(opts.partBytes ?? DEFAULT_COPY_PART_BYTES, 5 * 1024 ** 2, Math.ceil(source.bytes / MAX_PARTS));
    const parts: { ETag?: string; PartNumber: number }[] = [];
    for (let start = 0, n = 1; start < source.bytes; start += partBytes, n++) {
      const end = Math.min(start + partBytes, source.bytes) - 1;
      const out = await storage.s3.send(
        new UploadPartCopyCommand({ Bucket: bucket, Key: key, UploadId: uploadId, PartNumber: n, CopySource: copySource, CopySourceRange: `bytes=${start}-${end}`, CopySourceIfMatch: source.etag }),
      );
      parts.push({ ETag: out.CopyPartResult?.ETag, PartNumber: n });
    }
    const done = await storage.s3.send(new CompleteMultipartUploadCommand({ Bucket: bucket, Key: key, UploadId: uploadId, MultipartUpload: { Parts: parts } }));
    return done.ETag;
  } catch (err) {
    await storage.s3.send(new AbortMultipartUploadCommand({ Bucket: bucket, Key: key, UploadId: uploadId })).catch(() => undefined);
    throw err;
  }
}
