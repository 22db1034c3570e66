/**
 * Object keys and URL helpers. Keys never become file paths in this library,
 * but they do become URLs and log lines, so they are checked anyway.
 */
import { StorageError } from './errors';

/** R2's key limit is 1,024 bytes. */
export const MAX_KEY_BYTES = 1024;

/** Throws `invalid-name` for keys that are empty, too long, absolute, or contain `.`/`..` segments or control characters. */
export function assertSafeKey(key: string, bucket?: string): void {
  const why = unsafeKeyReason(key);
  if (why) {
    throw new StorageError('invalid-name', `Object key ${JSON.stringify(key.slice(0, 200))}${bucket ? ` in bucket '${bucket}'` : ''} is not allowed: ${why}.`, {
      bucket,
    });
  }
}

export function unsafeKeyReason(key: string): string | null {
  if (typeof key !== 'string' || key.length === 0) return 'it is empty';
  if (Buffer.byteLength(key, 'utf8') > MAX_KEY_BYTES) return `it is longer than ${MAX_KEY_BYTES} bytes`;
  if (key.startsWith('/')) return 'it starts with a slash';
  if (key.includes('\\')) return 'it contains a backslash';
  // eslint-disable-next-line no-control-regex
  if (/[\u0000-\u001f\u007f]/.test(key)) return 'it contains control characters';
  if (key.split('/').some((s) => s === '..' || s === '.')) return "it contains a '.' or '..' path segment";
  return null;
}

/** Encodes a key for a URL path, keeping the slashes. */
export function encodeKeyForUrl(key: string): string {
  return key.split('/').map(encodeURIComponent).join('/');
}

/** `loras/<slug>.safetensors`: where the platform's ComfyUI tree loads LoRAs from (models bucket). */
export function loraKey(slug: string): string {
  if (!/^[A-Za-z0-9][A-Za-z0-9._-]{0,199}$/.test(slug) || slug.includes('..')) {
    throw new StorageError('invalid-name', `LoRA slug ${JSON.stringify(slug)} is not allowed: use letters, digits, '.', '_' and '-' (max 200), starting with a letter or digit.`);
  }
  return `loras/${slug}.safetensors`;
}

/** `training-jobs/<jobId>/<name>`: the job's artifacts; the per-attempt keys below build on it. `name` may contain sub-folders. */
export function jobArtifactKey(jobId: string, name: string): string {
  if (!/^[A-Za-z0-9][A-Za-z0-9_-]{0,127}$/.test(jobId)) {
    throw new StorageError('invalid-name', `Job id ${JSON.stringify(jobId)} is not allowed in an object key: use letters, digits, '_' and '-'.`);
  }
  const key = `training-jobs/${jobId}/${name}`;
  if (!name || name.split('/').some((s) => s === '' || !/^[A-Za-z0-9._-]+$/.test(s) || s === '.' || s === '..')) {
    throw new StorageError('invalid-name', `Artifact name ${JSON.stringify(name)} is not allowed: use '/'-separated segments of letters, digits, '.', '_' and '-', without '.' or '..'.`);
  }
  assertSafeKey(key);
  return key;
}

/** Steps in keys are zero-padded like the engines' `-step{:08d}` file names, so keys sort by step. */
function stepSegment(step: number): string {
  if (!Number.isSafeInteger(step) || step < 0) throw new StorageError('invalid-name', `Step ${JSON.stringify(step)} is not allowed in an object key: use a whole number ≥ 0.`);
  return `step-${String(step).padStart(8, '0')}`;
}

/** `attempt-<n>`: the platform attempt (the job's retryCount) a key belongs to. */
function platformAttemptSegment(platformAttempt: number): string {
  if (!Number.isSafeInteger(platformAttempt) || platformAttempt < 0) {
    throw new StorageError('invalid-name', `Platform attempt ${JSON.stringify(platformAttempt)} is not allowed in an object key: use a whole number ≥ 0.`);
  }
  return `attempt-${platformAttempt}`;
}

function assertLeaseId(leaseId: string): void {
  if (!/^[A-Za-z0-9][A-Za-z0-9_-]{0,127}$/.test(leaseId)) {
    throw new StorageError('invalid-name', `Lease id ${JSON.stringify(leaseId)} is not allowed in an object key: use letters, digits, '_' and '-'.`);
  }
}

function attemptSegment(platformAttempt: number, leaseId: string): string {
  assertLeaseId(leaseId);
  return platformAttemptSegment(platformAttempt);
}

function assertFileName(what: string, fileName: string): void {
  if (!/^[A-Za-z0-9][A-Za-z0-9._-]{0,199}$/.test(fileName) || fileName.includes('..')) {
    throw new StorageError('invalid-name', `${what} ${JSON.stringify(fileName)} is not allowed in an object key: use letters, digits, '.', '_' and '-'.`);
  }
}

/*
 * The final outputs of one claim (lease) of one platform attempt. A platform
 * Retry is a new platform attempt and a re-claim is a new lease, so neither
 * overwrites what an earlier attempt or claim stored, and a stale claim
 * cannot overwrite a newer one's files. The model file itself keeps
 * `loraKey` (the platform loads it by slug).
 */

/** `training-jobs/<jobId>/samples/attempt-<n>/<leaseId>/<fileName>` (models bucket): a final sample (a preview of the job's model). */
export function finalSampleKey(jobId: string, platformAttempt: number, leaseId: string, fileName: string): string {
  const folder = attemptSegment(platformAttempt, leaseId);
  assertFileName('Sample file name', fileName);
  return jobArtifactKey(jobId, `samples/${folder}/${leaseId}/${fileName}`);
}

/** `training-jobs/<jobId>/logs/attempt-<n>/<leaseId>.log` (models bucket): the engine log (train.log) of one claim. */
export function attemptLogKey(jobId: string, platformAttempt: number, leaseId: string): string {
  return jobArtifactKey(jobId, `logs/${attemptSegment(platformAttempt, leaseId)}/${leaseId}.log`);
}

/** `training-jobs/<jobId>/logs/attempt-<n>/`: the logs of every claim of one platform attempt (a reader lists it for the newest). */
export function attemptLogPrefix(jobId: string, platformAttempt: number): string {
  return `${jobArtifactKey(jobId, `logs/${platformAttemptSegment(platformAttempt)}`)}/`;
}

/** `training-jobs/<jobId>/config/attempt-<n>/<leaseId>/job-spec.json` (models bucket): the job spec one claim trained with. */
export function jobSpecKey(jobId: string, platformAttempt: number, leaseId: string): string {
  return jobArtifactKey(jobId, `config/${attemptSegment(platformAttempt, leaseId)}/${leaseId}/job-spec.json`);
}

/**
 * `training-jobs/<jobId>/checkpoints/attempt-<n>/step-<00000000>-<leaseId>.safetensors`
 * (models bucket): one intermediate LoRA. The uploading lease is in the name, so a
 * worker that lost its lease can never overwrite the object another claim recorded.
 */
export function checkpointLoraKey(jobId: string, platformAttempt: number, step: number, leaseId: string): string {
  const folder = attemptSegment(platformAttempt, leaseId);
  return jobArtifactKey(jobId, `checkpoints/${folder}/${stepSegment(step)}-${leaseId}.safetensors`);
}

/** `training-jobs/<jobId>/checkpoints/attempt-<n>/step-<00000000>-<leaseId>-samples/<fileName>` (models bucket): a sample image of one checkpoint. */
export function checkpointSampleKey(jobId: string, platformAttempt: number, step: number, leaseId: string, fileName: string): string {
  const folder = attemptSegment(platformAttempt, leaseId);
  assertFileName('Sample file name', fileName);
  return jobArtifactKey(jobId, `checkpoints/${folder}/${stepSegment(step)}-${leaseId}-samples/${fileName}`);
}

/**
 * `training-state/<jobId>/attempt-<n>/step-<00000000>-<leaseId>.tar` (uploads bucket): an
 * engine's full training state, kept only for a re-claim of the same platform attempt to
 * resume from (never public). Step and lease in the name: two claims never write one key.
 */
export function resumeStateKey(jobId: string, platformAttempt: number, step: number, leaseId: string): string {
  if (!/^[A-Za-z0-9][A-Za-z0-9_-]{0,127}$/.test(jobId)) {
    throw new StorageError('invalid-name', `Job id ${JSON.stringify(jobId)} is not allowed in an object key: use letters, digits, '_' and '-'.`);
  }
  const key = `training-state/${jobId}/${attemptSegment(platformAttempt, leaseId)}/${stepSegment(step)}-${leaseId}.tar`;
  assertSafeKey(key);
  return key;
}

/** Prefix of every resume state of one job (all platform attempts), for cleanup. */
export function resumeStatePrefix(jobId: string): string {
  if (!/^[A-Za-z0-9][A-Za-z0-9_-]{0,127}$/.test(jobId)) {
    throw new StorageError('invalid-name', `Job id ${JSON.stringify(jobId)} is not allowed in an object key: use letters, digits, '_' and '-'.`);
  }
  return `training-state/${jobId}/`;
}
