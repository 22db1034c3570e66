import type { DependencyContainer, InjectionToken } from 'tsyringe';
import { S3_CLIENT, createS3Client, type S3ClientOptions } from './client';
import { STORAGE_CONFIG, loadStorageConfig, type R2Config } from './config';
import { DATASET_FETCH_PORT } from './dataset-fetch.port';
import { DatasetFetcher } from './dataset-fetcher';
import { MODEL_UPLOAD_PORT } from './model-upload.port';
import { ModelUploader } from './model-uploader';
import { ObjectStorage } from './object-storage';
import { WeightCache } from './weight-cache';
import { WEIGHT_CACHE_OPTIONS, resolveWeightCacheOptions, type WeightCacheOptions } from './weight-spec';
import { WEIGHT_CACHE_PORT } from './weight-cache.port';

/** Options of `registerStorage`, beyond the config. */
export interface RegisterStorageOptions {
  /** The S3 client's sockets, timeout and retry observer. @default {} (see S3ClientOptions) */
  client?: S3ClientOptions;
  /** Lock timing and download ranges of the weight cache. @default {} (see WeightCacheOptions) */
  weightCache?: Partial<WeightCacheOptions>;
}

/** What registerStorage binds, for a composition root that checks its bindings at start. */
export const STORAGE_BINDINGS: readonly (readonly [InjectionToken<unknown>, string])[] = [
  [STORAGE_CONFIG, 'STORAGE_CONFIG'],
  [S3_CLIENT, 'S3_CLIENT'],
  [WEIGHT_CACHE_OPTIONS, 'WEIGHT_CACHE_OPTIONS'],
  [ObjectStorage, 'ObjectStorage'],
  [ModelUploader, 'ModelUploader'],
  [DatasetFetcher, 'DatasetFetcher'],
  [WeightCache, 'WeightCache'],
  [MODEL_UPLOAD_PORT, 'MODEL_UPLOAD_PORT'],
  [DATASET_FETCH_PORT, 'DATASET_FETCH_PORT'],
  [WEIGHT_CACHE_PORT, 'WEIGHT_CACHE_PORT'],
];

/**
 * Binds the storage config, the S3 client, the adapters (one instance per
 * container) and the ports to those adapters. Pass a config to skip the env.
 * Options are validated here, once.
 */
export function registerStorage(container: DependencyContainer, config: R2Config = loadStorageConfig(process.env), opts: RegisterStorageOptions = {}): R2Config {
  container.register(STORAGE_CONFIG, { useValue: config });
  container.register(S3_CLIENT, { useValue: createS3Client(config, opts.client) });
  container.register(WEIGHT_CACHE_OPTIONS, { useValue: resolveWeightCacheOptions(opts.weightCache) });
  container.registerSingleton(ObjectStorage);
  container.registerSingleton(ModelUploader);
  container.registerSingleton(DatasetFetcher);
  container.registerSingleton(WeightCache);
  container.register(MODEL_UPLOAD_PORT, { useToken: ModelUploader });
  container.register(DATASET_FETCH_PORT, { useToken: DatasetFetcher });
  container.register(WEIGHT_CACHE_PORT, { useToken: WeightCache });
  return config;
}
