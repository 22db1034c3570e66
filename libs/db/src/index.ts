export { MONGO_DB, connectMongo } from './mongo';
export { redactUrl } from '@stationthis/common';
export { idForms, isObjectIdHex, toObjectId, toObjectIdOrString, type IdLike } from '@stationthis/common';
export {
  JOB_STATUSES,
  TERMINAL_STATUSES,
  LEASED_STATUSES,
  ACTIVE_STATUSES,
  InvalidTransitionError,
  allowedFrom,
  assertTransition,
  canTransition,
  isJobStatus,
  isTerminal,
  type JobStatus,
} from './job-status';
export * from './training-job';
export { TrainingJobRepository, LOG_TAIL_LINES, type FailInput, type JobWriteObserver } from './training-job-repository';
export {
  DEFAULT_MAX_ATTEMPTS,
  TRAINING_JOB_OPTIONS,
  resolveTrainingJobOptions,
  type ResolvedTrainingJobOptions,
  type TrainingJobRepositoryOptions,
} from './training-job-options';
export { CLAIM_TOKENS_COLLECTION } from './decision-tokens';
export { environmentFilter, modelTypeFilter } from './claim-filters';
export { type ClaimStrategy } from './job-claims';
export { ProgressThrottle, mergeProgress, type ProgressThrottleOptions } from './progress-throttle';
export {
  DatasetRepository,
  DATASETS_COLLECTION,
  type DatasetDoc,
  type DatasetEmbellishment,
  type CreateDatasetInput,
} from './dataset-repository';
export {
  LoraModelRepository,
  LORA_MODELS_COLLECTION,
  LORA_SLUG_RESERVATIONS_COLLECTION,
  checkpointFor,
  modelIdForTrainingJob,
  slugify,
  type LoraModelDoc,
  type RegisterTrainedModelInput,
} from './lora-model-repository';
export { UserCoreReader, UserCoreAccounts, USER_CORE_COLLECTION, type EnsureAccountInput, type UserCoreDoc, type UserWallet } from './user-core-reader';
export { registerDb, type RegisterDbOptions } from './register';
export * from './training-attempt';
export { TrainingAttemptRepository } from './training-attempt-repository';
export * from './checkpoint-promotion';
export { CheckpointRetentionRepository } from './checkpoint-retention';
export * from './job-events';
export { JobEventStore, type ReadEventsOptions, type ReadEventsResult, type AppendResult } from './job-event-store';
export { JobEventRecorder, type ReconcileOptions, type ReconcileResult } from './job-event-recorder';
