/**
 * Storage configuration from the environment.
 *
 * Two modes:
 * - `r2`: the platform's Cloudflare R2 account, with the platform's own
 *   variable names (R2_ACCOUNT_ID, R2_ACCESS_KEY_ID, R2_SECRET_ACCESS_KEY,
 *   R2_BUCKET_NAME, R2_PUBLIC_URL, R2_DATASETS_BUCKET, R2_DATASETS_PUBLIC_URL,
 *   R2_MODELS_BUCKET, R2_MODELS_PUBLIC_URL) plus R2_JURISDICTION (eu|us).
 * - `local`: any S3-compatible server (MinIO in development and tests), chosen
 *   when S3_ENDPOINT is set, or when no R2_ACCOUNT_ID is set outside production.
 *
 * The secret key is held so that it never reaches JSON, toString, util.inspect
 * or an error message.
 */
import { inspect } from 'node:util';
import * as path from 'node:path';
import type { InjectionToken } from 'tsyringe';
import { z } from 'zod';
import { StorageError } from './errors';

/** The bucket aliases the platform uses (`default` is the same bucket as `uploads`). */
export type BucketAlias = 'datasets' | 'models' | 'uploads';
export const BUCKET_ALIASES: readonly BucketAlias[] = ['datasets', 'models', 'uploads'];

export interface BucketConfig {
  alias: BucketAlias;
  /** The real bucket name. */
  bucket: string;
  /** Public (CDN) base URL, no trailing slash; objects are at `${publicBaseUrl}/${key}`. */
  publicBaseUrl: string;
}

/** Access key pair. The secret is non-enumerable and redacted in every printable form. */
export interface S3Credentials {
  readonly accessKeyId: string;
  readonly secretAccessKey: string;
}

export interface RetryConfig {
  /**
   * Total attempts per request (and per resumed transfer), first one included. Env STORAGE_RETRY_MAX_ATTEMPTS.
   * @default 5
   */
  maxAttempts: number;
  /**
   * Base of the exponential backoff, in ms. Env STORAGE_RETRY_BASE_DELAY_MS.
   * @default 200
   */
  baseDelayMs: number;
  /**
   * Cap of one backoff delay, in ms. Env STORAGE_RETRY_MAX_DELAY_MS.
   * @default 10000
   */
  maxDelayMs: number;
}

export interface R2Config {
  mode: 'r2' | 'local';
  /** S3 API endpoint, no trailing slash. */
  endpoint: string;
  region: string;
  forcePathStyle: boolean;
  /** R2 account id (r2 mode only): used to recognise virtual-hosted endpoint URLs. */
  accountId?: string;
  credentials: S3Credentials;
  buckets: Record<BucketAlias, BucketConfig>;
  retry: RetryConfig;
  /**
   * Host names (optionally host:port) that dataset images may be fetched from besides our own buckets. Env DATASET_ALLOWED_HOSTS (comma-separated).
   * @default []
   */
  datasetAllowedHosts: string[];
  /**
   * Host folder of the base-model weight cache. Env WEIGHT_CACHE_DIR.
   * @default `${STATIONTHIS_STATE_DIR ?? '.state'}/weights`
   */
  weightCacheDir: string;
  /**
   * Disk budget of the weight cache, in bytes. Env WEIGHT_CACHE_MAX_BYTES.
   * @default 214748364800 (200 GiB)
   */
  weightCacheMaxBytes: number;
}

export const STORAGE_CONFIG = Symbol('StorageConfig') as InjectionToken<R2Config>;

export const LOCAL_DEFAULTS = {
  endpoint: 'http://127.0.0.1:9000',
  accessKeyId: 'stationthis',
  secretAccessKey: 'stationthis-local-secret',
} as const;

const GiB = 1024 ** 3;

function makeCredentials(accessKeyId: string, secretAccessKey: string): S3Credentials {
  const creds = { accessKeyId } as { accessKeyId: string; secretAccessKey: string };
  Object.defineProperty(creds, 'secretAccessKey', { value: secretAccessKey, enumerable: false });
  Object.defineProperty(creds, 'toJSON', {
    value: () => ({ accessKeyId, secretAccessKey: '[redacted]' }),
    enumerable: false,
  });
  Object.defineProperty(creds, 'toString', { value: () => `S3Credentials(${accessKeyId}, [redacted])`, enumerable: false });
  Object.defineProperty(creds, inspect.custom, {
    value: () => `S3Credentials { accessKeyId: '${accessKeyId}', secretAccessKey: '[redacted]' }`,
    enumerable: false,
  });
  return Object.freeze(creds);
}

function trimSlash(u: string): string {
  return u.replace(/\/+$/, '');
}

function req(env: NodeJS.ProcessEnv, name: string, mode: string): string {
  const v = env[name]?.trim();
  if (!v) {
    throw new StorageError('config', `Storage config: ${name} is required in ${mode} mode but is not set. Set it in the worker's environment.`);
  }
  return v;
}

/** The numeric settings, read from the environment and validated once; each default is documented on R2Config/RetryConfig. */
const numericEnvSchema = z.object({
  STORAGE_RETRY_MAX_ATTEMPTS: z.number().positive().default(5),
  STORAGE_RETRY_BASE_DELAY_MS: z.number().positive().default(200),
  STORAGE_RETRY_MAX_DELAY_MS: z.number().positive().default(10_000),
  WEIGHT_CACHE_MAX_BYTES: z.number().positive().default(200 * GiB),
});
type NumericEnv = z.infer<typeof numericEnvSchema>;

function numericEnv(env: NodeJS.ProcessEnv): NumericEnv {
  const raw: Record<string, number> = {};
  for (const name of Object.keys(numericEnvSchema.shape)) {
    const v = env[name]?.trim();
    if (v) raw[name] = Number(v);
  }
  const r = numericEnvSchema.safeParse(raw);
  if (!r.success) {
    const name = String(r.error.issues[0].path[0]);
    throw new StorageError('config', `Storage config: ${name}='${env[name]?.trim()}' is not a positive number.`);
  }
  const out = { ...r.data };
  for (const k of Object.keys(out) as (keyof NumericEnv)[]) out[k] = Math.floor(out[k]);
  return out;
}

function checkUrl(name: string, value: string): string {
  let u: URL;
  try {
    u = new URL(value);
  } catch {
    throw new StorageError('config', `Storage config: ${name}='${value}' is not an absolute URL (expected e.g. https://models.example.net).`);
  }
  if (u.protocol !== 'https:' && u.protocol !== 'http:') {
    throw new StorageError('config', `Storage config: ${name} must be an http(s) URL, got '${u.protocol}'.`);
  }
  return trimSlash(value);
}

/**
 * The platform derives the datasets CDN from the uploads one by swapping the
 * first host label (uploads.example.net → datasets.example.net).
 */
function swapSubdomain(baseUrl: string, label: string): string {
  const u = new URL(baseUrl);
  const parts = u.hostname.split('.');
  if (parts.length < 3) return trimSlash(baseUrl);
  parts[0] = label;
  u.hostname = parts.join('.');
  return trimSlash(u.toString());
}

export function r2Endpoint(accountId: string, jurisdiction?: string): string {
  if (!/^[a-f0-9]{32}$/i.test(accountId) && !/^[A-Za-z0-9-]{1,64}$/.test(accountId)) {
    throw new StorageError('config', 'Storage config: R2_ACCOUNT_ID does not look like a Cloudflare account id.');
  }
  const j = (jurisdiction ?? '').trim().toLowerCase();
  if (j === '' || j === 'default') return `https://${accountId}.r2.cloudflarestorage.com`;
  if (j === 'eu' || j === 'us' || j === 'fedramp') return `https://${accountId}.${j}.r2.cloudflarestorage.com`;
  throw new StorageError('config', `Storage config: R2_JURISDICTION='${jurisdiction}' is not one of default, eu, us, fedramp.`);
}

export function loadStorageConfig(env: NodeJS.ProcessEnv = process.env): R2Config {
  const stateDir = env.STATIONTHIS_STATE_DIR?.trim() || path.resolve('.state');
  const n = numericEnv(env);
  const common = {
    retry: {
      maxAttempts: n.STORAGE_RETRY_MAX_ATTEMPTS,
      baseDelayMs: n.STORAGE_RETRY_BASE_DELAY_MS,
      maxDelayMs: n.STORAGE_RETRY_MAX_DELAY_MS,
    },
    datasetAllowedHosts: (env.DATASET_ALLOWED_HOSTS ?? '')
      .split(',')
      .map((h) => h.trim().toLowerCase())
      .filter(Boolean),
    weightCacheDir: path.resolve(env.WEIGHT_CACHE_DIR?.trim() || path.join(stateDir, 'weights')),
    weightCacheMaxBytes: n.WEIGHT_CACHE_MAX_BYTES,
  };
  const bucketNames = {
    uploads: env.R2_BUCKET_NAME?.trim(),
    datasets: env.R2_DATASETS_BUCKET?.trim() || 'datasets',
    models: env.R2_MODELS_BUCKET?.trim() || 'models',
  };

  const localEndpoint = env.S3_ENDPOINT?.trim();
  const useLocal = !!localEndpoint || (!env.R2_ACCOUNT_ID?.trim() && env.NODE_ENV !== 'production');

  if (useLocal) {
    const endpoint = checkUrl('S3_ENDPOINT', localEndpoint || LOCAL_DEFAULTS.endpoint);
    const buckets = {} as Record<BucketAlias, BucketConfig>;
    const names: Record<BucketAlias, string> = { ...bucketNames, uploads: bucketNames.uploads || 'uploads' };
    const publicEnv: Record<BucketAlias, string | undefined> = {
      uploads: env.R2_PUBLIC_URL,
      datasets: env.R2_DATASETS_PUBLIC_URL,
      models: env.R2_MODELS_PUBLIC_URL,
    };
    for (const alias of BUCKET_ALIASES) {
      const p = publicEnv[alias]?.trim();
      buckets[alias] = { alias, bucket: names[alias], publicBaseUrl: p ? checkUrl(`public URL of ${alias}`, p) : `${endpoint}/${names[alias]}` };
    }
    const forcePathStyle = (env.S3_FORCE_PATH_STYLE ?? 'true').trim().toLowerCase() !== 'false';
    return {
      mode: 'local',
      endpoint,
      region: env.S3_REGION?.trim() || 'us-east-1',
      forcePathStyle,
      credentials: makeCredentials(
        env.S3_ACCESS_KEY_ID?.trim() || LOCAL_DEFAULTS.accessKeyId,
        env.S3_SECRET_ACCESS_KEY?.trim() || LOCAL_DEFAULTS.secretAccessKey,
      ),
      buckets,
      ...common,
    };
  }

  const accountId = req(env, 'R2_ACCOUNT_ID', 'R2');
  const accessKeyId = req(env, 'R2_ACCESS_KEY_ID', 'R2');
  const secret = req(env, 'R2_SECRET_ACCESS_KEY', 'R2');
  const uploadsBucket = req(env, 'R2_BUCKET_NAME', 'R2');
  const uploadsPublic = checkUrl('R2_PUBLIC_URL', req(env, 'R2_PUBLIC_URL', 'R2'));
  const datasetsPublic = env.R2_DATASETS_PUBLIC_URL?.trim()
    ? checkUrl('R2_DATASETS_PUBLIC_URL', env.R2_DATASETS_PUBLIC_URL.trim())
    : swapSubdomain(uploadsPublic, bucketNames.datasets);
  const modelsPublic = checkUrl('R2_MODELS_PUBLIC_URL', env.R2_MODELS_PUBLIC_URL?.trim() || 'https://models.miladystation2.net');
  return {
    mode: 'r2',
    endpoint: r2Endpoint(accountId, env.R2_JURISDICTION),
    region: 'auto',
    // R2 accepts both; path style keeps one TLS host for every bucket.
    forcePathStyle: (env.S3_FORCE_PATH_STYLE ?? 'false').trim().toLowerCase() === 'true',
    accountId,
    credentials: makeCredentials(accessKeyId, secret),
    buckets: {
      uploads: { alias: 'uploads', bucket: uploadsBucket, publicBaseUrl: uploadsPublic },
      datasets: { alias: 'datasets', bucket: bucketNames.datasets, publicBaseUrl: datasetsPublic },
      models: { alias: 'models', bucket: bucketNames.models, publicBaseUrl: modelsPublic },
    },
    ...common,
  };
}

/** Accepts the platform's alias spellings ('default' is 'uploads'). */
export function resolveBucketAlias(alias: string): BucketAlias {
  if (alias === 'default') return 'uploads';
  if ((BUCKET_ALIASES as readonly string[]).includes(alias)) return alias as BucketAlias;
  throw new StorageError('invalid-argument', `Unknown bucket alias '${alias}': use one of ${BUCKET_ALIASES.join(', ')} (or 'default').`);
}

/** A printable, secret-free summary of the config for startup logs. */
export function describeStorageConfig(c: R2Config): string {
  const b = BUCKET_ALIASES.map((a) => `${a}=${c.buckets[a].bucket} (${c.buckets[a].publicBaseUrl})`).join(', ');
  return `storage ${c.mode} ${c.endpoint} region=${c.region} pathStyle=${c.forcePathStyle} key=${c.credentials.accessKeyId} buckets: ${b}`;
}
