/**
 * A weight cache's options and the rules a weight spec must meet: pure, so
 * the in-memory fake (../testing) applies exactly the rules the cache does.
 */
import * as path from 'node:path';
import type { InjectionToken } from 'tsyringe';
import { z } from 'zod';
import { StorageError } from './errors';
import { unsafeKeyReason } from './keys';
import type { WeightSpec } from './weight-cache.port';

/** How the cache locks and downloads. Validated once, by `resolveWeightCacheOptions`. */
export interface WeightCacheOptions {
  /**
   * A per-file lock whose holder's heartbeat is older than this is stale and taken over.
   * @default 60000
   */
  lockStaleMs: number;
  /**
   * How often a waiter polls a held lock, in ms.
   * @default 100
   */
  lockPollMs: number;
  /**
   * Ranged GETs in flight for R2 sources.
   * @default 4
   */
  downloadConcurrency: number;
  /**
   * Range size for R2 sources; each finished range is kept across restarts.
   * @default 67108864 (64 MiB)
   */
  downloadChunkBytes: number;
}

const weightCacheOptionsSchema = z.object({
  lockStaleMs: z.number().int().positive().default(60_000),
  lockPollMs: z.number().int().positive().default(100),
  downloadConcurrency: z.number().int().min(1).max(64).default(4),
  downloadChunkBytes: z.number().int().min(64 * 1024).default(64 * 1024 * 1024),
});

/** Applies the defaults and validates; throws a 'config' StorageError naming the bad field. */
export function resolveWeightCacheOptions(partial: Partial<WeightCacheOptions> = {}): Readonly<WeightCacheOptions> {
  const r = weightCacheOptionsSchema.safeParse(partial);
  if (!r.success) {
    throw new StorageError('config', `Weight cache options are not valid: ${r.error.issues.map((i) => `${i.path.join('.')}: ${i.message}`).join('; ')}.`);
  }
  return Object.freeze(r.data);
}

export const WEIGHT_CACHE_OPTIONS = Symbol('WeightCacheOptions') as InjectionToken<Readonly<WeightCacheOptions>>;

const NAME_RE = /^[A-Za-z0-9][A-Za-z0-9._-]{0,200}$/;

function isLoopback(host: string): boolean {
  return host === '127.0.0.1' || host === 'localhost' || host === '[::1]';
}

/** Refuses a spec before anything is touched: unsafe file name or key, malformed sha256, a relative local path, an https URL without TLS or without a pinned sha256. */
export function validateWeightSpec(spec: WeightSpec): void {
  if (!NAME_RE.test(spec.fileName) || spec.fileName.includes('..') || spec.fileName.endsWith('.partial')) {
    throw new StorageError('invalid-name', `Weight file name ${JSON.stringify(spec.fileName)} is not allowed: use letters, digits, '.', '_' and '-' (no '..').`);
  }
  if (spec.sha256 !== undefined && !/^[a-f0-9]{64}$/i.test(spec.sha256)) {
    throw new StorageError('invalid-argument', `Weight ${spec.fileName}: sha256 must be 64 hex characters.`);
  }
  if (spec.source.kind === 'r2') {
    const why = unsafeKeyReason(spec.source.key);
    if (why) throw new StorageError('invalid-name', `Weight ${spec.fileName}: source key is not allowed: ${why}.`, { key: spec.source.key });
  } else if (spec.source.kind === 'local') {
    if (!path.isAbsolute(spec.source.path)) throw new StorageError('invalid-argument', `Weight ${spec.fileName}: a local source must be an absolute path, got ${JSON.stringify(spec.source.path)}.`);
  } else {
    let u: URL;
    try {
      u = new URL(spec.source.url);
    } catch {
      throw new StorageError('disallowed-url', `Weight ${spec.fileName}: source URL is not an absolute URL.`);
    }
    // Plain http only on loopback (local mirrors and tests); anything else must be TLS.
    if (!(u.protocol === 'https:' || (u.protocol === 'http:' && isLoopback(u.hostname)))) {
      throw new StorageError('disallowed-url', `Weight ${spec.fileName}: source must be an https URL, got ${u.protocol}//${u.host}.`, { url: spec.source.url });
    }
    if (!spec.sha256) {
      throw new StorageError('invalid-argument', `Weight ${spec.fileName}: an https source needs a known sha256 to verify the download against.`, { url: spec.source.url });
    }
  }
}
