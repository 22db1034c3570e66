/**
 * @stationthis/storage: the R2 adapter. Datasets in, models out, and the
 * base-model weight cache on the worker host. See README.md.
 */
export const LIB_NAME = '@stationthis/storage';

export {
  BUCKET_ALIASES,
  LOCAL_DEFAULTS,
  STORAGE_CONFIG,
  describeStorageConfig,
  loadStorageConfig,
  r2Endpoint,
  resolveBucketAlias,
  type BucketAlias,
  type BucketConfig,
  type R2Config,
  type RetryConfig,
  type S3Credentials,
} from './config';
export { S3_CLIENT, BackoffRetryStrategy, ThreadPoolSha256, backoffDelayMs, createS3Client, type CreatedS3Client, type RetryListener } from './client';
export { StorageError, redactUrl, toStorageError, type StorageErrorKind } from './errors';
export { MAX_KEY_BYTES, assertSafeKey, encodeKeyForUrl, jobArtifactKey, loraKey, unsafeKeyReason } from './keys';
export {
  MAX_PRESIGN_SECONDS,
  ObjectStorage,
  type DownloadOptions,
  type ObjectInfo,
  type PutOptions,
  type UploadStreamOptions,
} from './object-storage';
export {
  captionCandidates,
  selectCaptions,
  type CaptionCandidate,
  type CaptionSelection,
  type PlatformCaptionSet,
  type PlatformDatasetDoc,
  type PlatformEmbellishment,
} from './captions';
export { SNIFF_BYTES, sniffType, type SniffedType } from './magic';
export {
  DEFAULT_FETCH_LIMITS,
  DatasetFetcher,
  type FetchLimits,
  type FetchOptions,
  type FetchProgress,
  type FetchedDataset,
  type FetchedImage,
} from './dataset-fetcher';
export { ModelUploader, autoV2, type UploadRequest, type UploadedObject } from './model-uploader';
export { WeightCache, sha256File, type AcquireOptions, type CacheEntry, type WeightLease, type WeightSource, type WeightSpec } from './weight-cache';
export { createLease, liveLeases, lockFile, pidAlive, tryLockFile, type HeldLock, type Lease, type LockOptions } from './file-lock';
export { registerStorage } from './register';
