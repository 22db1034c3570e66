import type { ObjectId } from 'mongodb';
import type { JobStatus } from './job-status';

export const TRAINING_JOBS_COLLECTION = 'trainingJobs';

/** The lease a worker holds while it owns a job. `attemptId` is the fencing token. */
export interface JobLease {
  workerId: string;
  attemptId: string;
  expiresAt: Date;
  claimedAt: Date;
}

/** What a worker keeps in memory and passes to every write. */
export interface Lease {
  jobId: string;
  attemptId: string;
  workerId: string;
}

export type TrainingEnvironment = 'production' | 'development';

/**
 * Why a job failed, as the worker classifies it: `user-input` (bad parameters,
 * insufficient points: nothing charged), `dataset` (unusable or inaccessible
 * dataset), `engine` (trainer crashed, NaN loss, invalid output), `oom`,
 * `timeout` (deadline or stall), `infrastructure` (our side: retried, then a
 * full refund), `operator` (the deployment lacks something, e.g. base weights:
 * not retried, full refund, the message names what to provide). `user` and `insufficient-points` are kept for older documents.
 */
export type FailureClass = JobFailureClass | 'user' | 'insufficient-points';

/** The classes a worker writes today: the one vocabulary of job failures (worker, repository, UI). */
export const JOB_FAILURE_CLASSES = ['user-input', 'dataset', 'engine', 'oom', 'timeout', 'infrastructure', 'operator'] as const;
export type JobFailureClass = (typeof JOB_FAILURE_CLASSES)[number];

export interface FailurePolicy {
  /** Another attempt may succeed (only problems on our side are worth one; the charge is kept for it). */
  retry: boolean;
}

/** What each class means for the job: data the worker consults, not a rule written in code. */
export const FAILURE_POLICY: Readonly<Record<JobFailureClass, FailurePolicy>> = {
  'user-input': { retry: false },
  dataset: { retry: false },
  engine: { retry: false },
  oom: { retry: false },
  timeout: { retry: false },
  infrastructure: { retry: true },
  // A host set up wrongly (e.g. base weights never uploaded): no other attempt on this setup can succeed, so
  // fail at once with a full refund and a message naming what the operator must provide.
  operator: { retry: false },
};

/**
 * A `trainingJobs` document. The first block is the platform's shape
 * (stationthis-platform.md 1.2: ids are strings here); the second block is ours.
 * Unknown platform fields are kept: every update is a `$set` of named fields.
 */
export interface TrainingJobDoc {
  _id: ObjectId;
  // --- platform fields ---
  userId: string;
  ownerAccountId: string;
  name: string;
  modelName?: string;
  description?: string;
  notes?: string;
  walletAddress?: string;
  datasetId: string;
  datasetImageCount?: number;
  modelType?: string;
  baseModel?: string;
  offeringId?: string;
  steps?: number;
  learningRate?: number;
  loraRank?: number;
  triggerWord?: string;
  triggerWords?: string[];
  costPoints?: number;
  estimatedCostPoints?: number;
  actualCostPoints?: number;
  costReconciled?: boolean;
  environment?: TrainingEnvironment | null;
  status: JobStatus;
  progress?: number;
  currentStep?: number;
  totalSteps?: number;
  currentLoss?: number | null;
  failureReason?: string;
  loraModelId?: ObjectId;
  modelRepoUrl?: string;
  createdAt: Date;
  updatedAt: Date;
  startedAt?: Date;
  completedAt?: Date;
  /** Set by the platform's Retry (FAILED → QUEUED): the platform attempt the job is on. */
  retryCount?: number;
  // --- ours ---
  lease?: JobLease | null;
  /** Claims ever made (never decremented): the generation number of the claim token. */
  claimSeq?: number;
  /** Claims so far (a graceful release gives its attempt back). */
  attempts?: number;
  maxAttempts?: number;
  /** Higher first; legacy jobs without it are adopted as 0 by recoverExpiredLeases. */
  priority?: number;
  cancelRequestedAt?: Date | null;
  cancelRequestedBy?: string;
  failureClass?: FailureClass;
  etaSeconds?: number | null;
  logTail?: string[];
  /**
   * Legacy: the worker once kept its resume state here. It is never read for
   * anything that moves points or registers a model (any client can write it):
   * the worker's state is in `trainingJobAttempts` (training-attempt.ts).
   */
  pipeline?: PipelineState;
  /** The points of the job's current platform attempt are not settled yet (cleared by whoever settles them). */
  refundDue?: boolean;
  heartbeatAt?: Date;
  finishedAt?: Date;
  [extra: string]: unknown;
}

/**
 * Pipeline state is free-form, except one convention the repository reads:
 * `retryUnsafe: true` means "re-running from the start is not safe now", so an
 * expired lease fails the job (with refund) instead of re-queueing it.
 */
export interface PipelineState {
  retryUnsafe?: boolean;
  [step: string]: unknown;
}

export interface EnqueueTrainingJobInput {
  ownerAccountId: string | ObjectId;
  datasetId: string | ObjectId;
  name: string;
  baseModel: string;
  modelType?: string;
  walletAddress?: string;
  steps?: number;
  triggerWord?: string;
  description?: string;
  datasetImageCount?: number;
  costPoints?: number;
  environment?: TrainingEnvironment;
  priority?: number;
  maxAttempts?: number;
  /** Any other platform fields (e.g. learningRate, tags); stored as given. */
  extra?: Record<string, unknown>;
}

export interface ProgressUpdate {
  progress?: number;
  currentStep?: number;
  totalSteps?: number;
  currentLoss?: number | null;
  etaSeconds?: number | null;
  logLines?: string[];
}

export interface ClaimOptions {
  workerId: string;
  environment: TrainingEnvironment;
  leaseMs: number;
  /** Claim only jobs of these model types (the worker's hardware); absent: any job. */
  modelTypes?: ClaimableModelTypes;
}

/** Model types a worker can run, and every model type some recipe knows (unknown types are claimed to be failed). */
export interface ClaimableModelTypes {
  runnable: string[];
  known: string[];
}

export interface RecoveryResult {
  requeued: string[];
  /** FAILED with failureClass 'infrastructure' and refundDue: true. */
  failed: string[];
  /** Cancel was requested and the owner died: CANCELLED with refundDue: true. */
  cancelled: string[];
}

export type CancelRequestResult = 'cancelled' | 'requested' | 'already-requested' | 'terminal' | 'not-found';

export interface TrainingJobFilter {
  ownerAccountId?: string | ObjectId;
  status?: JobStatus | JobStatus[];
  environment?: TrainingEnvironment;
  limit?: number;
}
