/**
 * Port: base-model weights on this host, fetched once and verified, held by a
 * lease while a job uses them. The worker's inputs step uses it.
 * Real adapter: WeightCache. Fake: InMemoryWeightCache (../testing).
 */
import type { InjectionToken } from 'tsyringe';
import type { BucketAlias } from './config';

/**
 * Where a weight file comes from. `local` is a file an operator provisioned on
 * this host (an air-gapped host, the engine demo's random-weight models): it is
 * hard-linked into the cache (copied when on another filesystem), so a 10 GB
 * base model costs no second copy of disk.
 */
export type WeightSource = { kind: 'r2'; bucketAlias: BucketAlias; key: string } | { kind: 'https'; url: string } | { kind: 'local'; path: string };

export interface WeightSpec {
  /** Name of the file in the cache (and in the container's models folder). Letters, digits, '.', '_', '-'. */
  fileName: string;
  source: WeightSource;
  /** Expected lower-case hex sha256. Required for https sources. */
  sha256?: string;
  /**
   * Approximate size in bytes, when known: used only to make room in the
   * budget before downloading. Integrity is checked by sha256 (and, for R2,
   * the server's object size), never by this number.
   */
  bytes?: number;
}

export interface AcquireOptions {
  onProgress?: (p: { fileName: string; bytes: number; totalBytes: number; phase: 'download' | 'verify' }) => void;
  signal?: AbortSignal;
}

export interface WeightLease {
  /** Absolute path of the verified file. Read-only use: do not modify it. */
  path: string;
  /** Whether this call downloaded the file (false: it was already cached). */
  downloaded: boolean;
  release(): Promise<void>;
}

export interface WeightCachePort {
  /**
   * The verified file for `spec`, downloading it if needed. Rejects with a
   * StorageError: 'invalid-name'/'invalid-argument' (bad spec, nothing
   * fetched), 'not-found' (no such object or local file: an operator must
   * provision it), 'invalid-content' (sha256 mismatch; nothing kept),
   * 'disallowed-url', 'unavailable' (partial bytes kept for a resume), 'aborted'.
   */
  acquire(spec: WeightSpec, opts?: AcquireOptions): Promise<WeightLease>;
}

export const WEIGHT_CACHE_PORT = Symbol('WeightCachePort') as InjectionToken<WeightCachePort>;
