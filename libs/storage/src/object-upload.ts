/**
 * Uploads with lib-storage's `Upload`: one PutObject when the body fits a
 * part, else a multipart upload with `queueSize` parts in flight. The object
 * is visible only once the upload completes; on any failure the multipart
 * upload is aborted (and if the abort cannot reach the server, the worker's
 * start-up sweep `abortIncompleteUploads` or R2's 7-day rule removes it).
 */
import { AbortMultipartUploadCommand, ListMultipartUploadsCommand, type S3Client } from '@aws-sdk/client-s3';
import { Upload } from '@aws-sdk/lib-storage';
import { createReadStream, promises as fsp } from 'node:fs';
import { Transform, type Readable } from 'node:stream';
import { StorageError, toStorageError } from './errors';

export interface PutOptions {
  contentType?: string;
  cacheControl?: string;
  metadata?: Record<string, string>;
}

export interface UploadStreamOptions extends PutOptions {
  /**
   * Part size in bytes (at least 5 MiB; raised to a ten-thousandth of the file for huge files).
   * @default 16777216 (16 MiB)
   */
  partSize?: number;
  /**
   * Parts in flight.
   * @default 4
   */
  queueSize?: number;
  onProgress?: (loadedBytes: number) => void;
  signal?: AbortSignal;
}

export interface UploadFileOptions extends UploadStreamOptions {
  /** Sees every byte of the file, in order, as it is read for upload (ModelUploader hashes here). */
  onRead?: (chunk: Buffer) => void;
}

/** Where an object goes: the real bucket name and a checked key. */
export interface ObjectTarget {
  Bucket: string;
  Key: string;
}

const MiB = 1024 ** 2;
const MIN_PART = 5 * MiB;
const MAX_PARTS = 10_000;

function cancelled(t: ObjectTarget, cause?: unknown): StorageError {
  return new StorageError('aborted', `Upload of '${t.Key}' to bucket '${t.Bucket}' was cancelled. Nothing was stored.`, { bucket: t.Bucket, key: t.Key, cause });
}

/**
 * Aborts the multipart upload(s) for a key: lib-storage's own abort runs in
 * the background after done() rejects and can be lost. Each request is
 * retried by the client's strategy; a failure here is left to the sweep.
 */
async function abortMultipart(s3: S3Client, t: ObjectTarget, uploadId: string | undefined): Promise<void> {
  try {
    const ids = new Set<string>(uploadId ? [uploadId] : []);
    const listed = await s3.send(new ListMultipartUploadsCommand({ Bucket: t.Bucket, Prefix: t.Key }));
    for (const u of listed.Uploads ?? []) if (u.Key === t.Key && u.UploadId && (!uploadId || u.UploadId === uploadId)) ids.add(u.UploadId);
    for (const id of ids) {
      await s3.send(new AbortMultipartUploadCommand({ ...t, UploadId: id })).catch((e: { name?: string }) => {
        if (e?.name !== 'NoSuchUpload') throw e;
      });
    }
  } catch {
    /* the server is unreachable: abortIncompleteUploads at the next start, or the bucket's lifecycle rule */
  }
}

/** Streams a body of unknown length to `t`. */
export async function uploadStream(s3: S3Client, t: ObjectTarget, body: Readable, opts: UploadStreamOptions = {}): Promise<{ etag?: string; bytes: number }> {
  const abortController = new AbortController();
  const onAbort = () => abortController.abort();
  opts.signal?.addEventListener('abort', onAbort, { once: true });
  if (opts.signal?.aborted) abortController.abort();
  // A source stream error must fail the upload, not hang it.
  let sourceError: unknown;
  body.on('error', (e: NodeJS.ErrnoException) => {
    // lib-storage destroys the body itself (ABORT_ERR) when an upload fails or is aborted: not a source failure.
    if (e?.code === 'ABORT_ERR' || e?.name === 'AbortError' || abortController.signal.aborted) return;
    sourceError ??= e;
    abortController.abort();
  });
  const upload = new Upload({
    client: s3,
    params: { ...t, Body: body, ContentType: opts.contentType, CacheControl: opts.cacheControl, Metadata: opts.metadata },
    partSize: Math.max(opts.partSize ?? 16 * MiB, MIN_PART),
    queueSize: Math.max(1, opts.queueSize ?? 4),
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
    // An upload refused before it read the body leaves it open (for a file: its descriptor).
    if (!body.destroyed) body.destroy();
    await abortMultipart(s3, t, (upload as unknown as { uploadId?: string }).uploadId);
    if (sourceError) {
      const why = (sourceError as Error).message ?? String(sourceError);
      throw new StorageError('invalid-content', `Could not upload '${t.Key}' to bucket '${t.Bucket}': reading the source failed (${why}). Nothing was stored.`, {
        bucket: t.Bucket,
        key: t.Key,
        cause: sourceError,
      });
    }
    const se = toStorageError(err, 'upload', t.Bucket, t.Key);
    if (se.kind === 'aborted' || opts.signal?.aborted) throw cancelled(t, err);
    throw se;
  } finally {
    opts.signal?.removeEventListener('abort', onAbort);
  }
}

/**
 * Uploads a local file. The file's size is taken at the start; a file that
 * shrinks or grows meanwhile fails the upload before it completes, so a
 * partial file never becomes an object.
 */
export async function uploadFile(s3: S3Client, t: ObjectTarget, filePath: string, opts: UploadFileOptions = {}): Promise<{ etag?: string; bytes: number }> {
  let size: number;
  try {
    size = (await fsp.stat(filePath)).size;
  } catch (err) {
    throw new StorageError('invalid-argument', `Cannot upload ${filePath} to '${t.Key}' in bucket '${t.Bucket}': ${(err as Error).message}. Nothing was sent.`, { bucket: t.Bucket, key: t.Key, cause: err });
  }
  const partSize = Math.max(opts.partSize ?? 16 * MiB, MIN_PART, Math.ceil(size / MAX_PARTS));
  const source = createReadStream(filePath, { highWaterMark: MiB, ...(size > 0 ? { start: 0, end: size - 1 } : {}) });
  let read = 0;
  const counted = new Transform({
    transform(chunk: Buffer, _enc, cb) {
      read += chunk.length;
      opts.onRead?.(chunk);
      cb(null, chunk);
    },
    flush(cb) {
      // Checked before the last part is sent: the upload never completes with a changed file.
      if (read !== size) return cb(new Error(`the file shrank while reading (${read} of ${size} bytes)`));
      fsp.stat(filePath).then(
        (st) => cb(st.size === size ? null : new Error(`the file changed size during the upload (${size} → ${st.size} bytes)`)),
        (e: Error) => cb(e),
      );
    },
  });
  source.on('error', (e) => counted.destroy(e));
  counted.on('close', () => source.destroy());
  source.pipe(counted);
  const out = await uploadStream(s3, t, counted, { ...opts, partSize });
  return { etag: out.etag, bytes: read };
}
