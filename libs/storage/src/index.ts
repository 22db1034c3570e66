/**
 * @stationthis/storage: the R2 adapter. Datasets in, models out, and the
 * base-model weight cache on the worker host. See README.md.
 * In-memory fakes of the ports: '@stationthis/storage/testing'.
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
export { S3_CLIENT, ThreadPoolSha256, createS3Client, type S3ClientOptions } from './client';
export { backoffDelayMs, createRetryStrategy, withRetries, type RetryListener } from './retry';
export { StorageError, redactUrl, toStorageError, type StorageErrorKind } from './errors';
export {
  MAX_KEY_BYTES,
  assertSafeKey,
  attemptLogKey,
  attemptLogPrefix,
  checkpointLoraKey,
  checkpointSampleKey,
  encodeKeyForUrl,
  finalSampleKey,
  jobArtifactKey,
  jobSpecKey,
  loraKey,
  resumeStateKey,
  resumeStatePrefix,
  unsafeKeyReason,
} from './keys';
export { ObjectStorage } from './object-storage';
export type { PutOptions, UploadFileOptions, UploadStreamOptions } from './object-upload';
export type { DownloadOptions, DownloadResult, ObjectInfo } from './object-download';
export { MAX_PRESIGN_SECONDS, matchOwnUrl, publicUrlOf, type OwnBuckets, type OwnUrlMatch } from './public-urls';
export {
  captionCandidates,
  selectCaptions,
  type CaptionCandidate,
  type CaptionSelection,
  type PlatformCaptionSet,
  type PlatformDatasetDoc,
  type PlatformEmbellishment,
} from './captions';
export { MAX_DIMENSION_HEADER_BYTES, SNIFF_BYTES, readImageDimensions, sniffType, type DimensionsRead, type ImageDimensions, type SniffedType } from './magic';
export {
  DEFAULT_FETCH_LIMITS,
  assertDatasetSourcesOffline,
  checkDatasetSourcesOffline,
  checkSourceUrl,
  datasetSourcePolicy,
  imageDimensionsProblem,
  resolveFetchLimits,
  specialAddressReason,
  type DatasetSourcePolicy,
  type DatasetSourceProblem,
  type DatasetSources,
  type FetchLimits,
} from './dataset-policy';
export {
  DATASET_FETCH_PORT,
  type DatasetFetchPort,
  type FetchOptions,
  type FetchProgress,
  type FetchedDataset,
  type FetchedImage,
  type SourceCheckOptions,
} from './dataset-fetch.port';
export { DatasetFetcher } from './dataset-fetcher';
export { MAX_REDIRECTS, openDatasetSource, type OpenSourceOptions } from './dataset-source';
export { ImageHeaderProbe, PROBE_HEADER_BYTES, type ImageProbeItem, type ImageProbeResult, type ProbeOptions } from './image-probe';
export { MODEL_UPLOAD_PORT, autoV2, type ModelUploadPort, type UploadRequest, type UploadedObject } from './model-upload.port';
export { ModelUploader } from './model-uploader';
export { WEIGHT_CACHE_PORT, type AcquireOptions, type WeightCachePort, type WeightLease, type WeightSource, type WeightSpec } from './weight-cache.port';
export { WeightCache, sha256File, type CacheEntry } from './weight-cache';
export { WEIGHT_CACHE_OPTIONS, resolveWeightCacheOptions, validateWeightSpec, type WeightCacheOptions } from './weight-spec';
export { createLease, liveLeases, lockFile, pidAlive, tryLockFile, type HeldLock, type Lease, type LockOptions } from './file-lock';
export { STORAGE_BINDINGS, registerStorage, type RegisterStorageOptions } from './register';
export { MAX_SINGLE_COPY_BYTES, copyObject, type CopyOptions, type CopyTarget } from './object-copy';
