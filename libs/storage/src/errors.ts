import { redactUrl } from '@stationthis/common';
/**
 * One error type for everything this library refuses or fails to do. `kind`
 * lets callers branch (retry later, fail the job, blame the user's dataset)
 * without parsing messages; the message says what, where and what to do.
 */
export type StorageErrorKind =
  /** Missing or contradictory configuration (env vars). Fix the deployment. */
  | 'config'
  /** The object or bucket does not exist. */
  | 'not-found'
  /** Credentials rejected or access denied. */
  | 'access-denied'
  /** Server unreachable, connection cut, or 5xx/throttling after all retries. */
  | 'unavailable'
  /** Any other rejection by the server (4xx). */
  | 'rejected'
  /** The caller cancelled (AbortSignal). */
  | 'aborted'
  /** A URL is not allowed: scheme, host not allow-listed, redirect to another host. */
  | 'disallowed-url'
  /** A key or file name that could escape its folder or is malformed. */
  | 'invalid-name'
  /** Content failed a check: magic bytes, sha256, size mismatch. */
  | 'invalid-content'
  /** A per-file or per-dataset byte/count limit was exceeded. */
  | 'too-large'
  /** A bad argument (e.g. presign expiry out of range). */
  | 'invalid-argument';

export interface StorageErrorDetails {
  bucket?: string;
  key?: string;
  url?: string;
  cause?: unknown;
  /** HTTP status from the server, when there was one. */
  status?: number;
  /** Number of attempts made before giving up. */
  attempts?: number;
}

export class StorageError extends Error {
  override readonly name = 'StorageError';
  readonly kind: StorageErrorKind;
  readonly bucket?: string;
  readonly key?: string;
  readonly url?: string;
  readonly status?: number;
  readonly attempts?: number;

  constructor(kind: StorageErrorKind, message: string, details: StorageErrorDetails = {}) {
    super(message, details.cause !== undefined ? { cause: details.cause } : undefined);
    this.kind = kind;
    this.bucket = details.bucket;
    this.key = details.key;
    this.url = details.url === undefined ? undefined : redactUrl(details.url);
    this.status = details.status;
    this.attempts = details.attempts;
  }
}

export { redactUrl };

interface SdkLikeError {
  name?: string;
  code?: string;
  message?: string;
  $metadata?: { httpStatusCode?: number; attempts?: number };
}

/**
 * Turns an SDK or network error into a StorageError that names the bucket and
 * key. `op` is a verb phrase such as 'upload' or 'read'.
 */
export function toStorageError(err: unknown, op: string, bucket: string, key?: string): StorageError {
  if (err instanceof StorageError) return err;
  const e = (err ?? {}) as SdkLikeError;
  const status = e.$metadata?.httpStatusCode;
  const attempts = e.$metadata?.attempts;
  const where = key === undefined ? `bucket '${bucket}'` : `'${key}' in bucket '${bucket}'`;
  const what = `${e.name ?? 'Error'}${e.code && e.code !== e.name ? ` (${e.code})` : ''}: ${e.message ?? String(err)}`;
  const tries = attempts && attempts > 1 ? ` after ${attempts} attempts` : '';
  const details = { bucket, key, cause: err, status, attempts };
  if (e.name === 'AbortError') return new StorageError('aborted', `Could not ${op} ${where}: cancelled.`, details);
  if (e.name === 'NoSuchKey' || e.name === 'NotFound' || e.name === 'NoSuchBucket' || status === 404) {
    return new StorageError('not-found', `Could not ${op} ${where}: it does not exist (${what}).`, details);
  }
  if (status === 401 || status === 403 || e.name === 'AccessDenied' || e.name === 'InvalidAccessKeyId' || e.name === 'SignatureDoesNotMatch') {
    return new StorageError(
      'access-denied',
      `Could not ${op} ${where}: access denied (${what}). Check the R2_* / S3_* credentials and the bucket's permissions.`,
      details,
    );
  }
  if (status === undefined || status >= 500 || status === 429 || status === 503) {
    return new StorageError(
      'unavailable',
      `Could not ${op} ${where}${tries}: the storage server is unreachable or failing (${what}). Retry later; check that the endpoint is up.`,
      details,
    );
  }
  return new StorageError('rejected', `Could not ${op} ${where}: the server rejected the request (${what}).`, details);
}
