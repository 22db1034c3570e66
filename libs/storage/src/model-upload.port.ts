/**
 * Port: a trained model or job artifact from a local file to a bucket, with
 * its sha256 and AutoV2 computed while it streams. The worker's publish and
 * settle steps use it. Real adapter: ModelUploader. Fake: InMemoryModelUpload (../testing).
 */
import type { InjectionToken } from 'tsyringe';
import type { BucketAlias } from './config';

export interface UploadRequest {
  filePath: string;
  bucketAlias: BucketAlias;
  key: string;
  contentType: string;
  cacheControl?: string;
  metadata?: Record<string, string>;
  onProgress?: (p: { uploadedBytes: number; hashedBytes: number; totalBytes: number }) => void;
  signal?: AbortSignal;
  /**
   * Multipart part size in bytes.
   * @default 16777216 (16 MiB)
   */
  partSize?: number;
  /**
   * Parts in flight.
   * @default 4
   */
  queueSize?: number;
}

export interface UploadedObject {
  bucketAlias: BucketAlias;
  key: string;
  bytes: number;
  /** Lower-case hex SHA-256 of the whole file. */
  sha256: string;
  /** First 10 hex characters of sha256 (Civitai AutoV2 / A1111 shorthash). */
  autov2: string;
  publicUrl: string;
}

export interface ModelUploadPort {
  /**
   * Uploads `req.filePath` to `req.key`. The object exists only if this
   * resolves; rejects with a StorageError: 'invalid-argument' (no such file,
   * nothing sent), 'invalid-content' (the file changed meanwhile), 'aborted',
   * 'invalid-name' (unsafe key), 'unavailable' or 'access-denied'.
   */
  upload(req: UploadRequest): Promise<UploadedObject>;
}

export const MODEL_UPLOAD_PORT = Symbol('ModelUploadPort') as InjectionToken<ModelUploadPort>;

/** AutoV2 (Civitai) = A1111's shorthash: the first 10 hex characters of the whole file's sha256, lower-case. */
export function autoV2(sha256Hex: string): string {
  return sha256Hex.slice(0, 10).toLowerCase();
}
