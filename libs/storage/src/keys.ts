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

/** `training-jobs/<jobId>/<name>`: per-job artifacts (samples, logs, rendered config). `name` may contain sub-folders. */
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
