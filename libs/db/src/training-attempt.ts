/**
 * The worker's own record of one platform attempt of one training job, kept
 * where the platform never writes (ADR 0002, "Attempt records").
 *
 * The `trainingJobs` document is the platform's: its Cancel `$set`s the status
 * only, its Retry re-queues with `retryCount + 1` and leaves every other field,
 * and a client may insert any field it likes. So nothing that moves points or
 * registers a model is read from it. One `trainingJobAttempts` document per
 * (job, platform attempt) holds the quote, the charge, the upload, the model
 * and the training time; one `trainingJobSettlements` document (inserted once,
 * unique `_id`) holds the settle decision. A Retry is a new platform attempt:
 * a new record, a new quote, a new charge key, worker attempts counted from 0.
 */
import type { TrainingJobDoc } from './training-job';

export const TRAINING_ATTEMPTS_COLLECTION = 'trainingJobAttempts';
export const TRAINING_SETTLEMENTS_COLLECTION = 'trainingJobSettlements';

/** The platform attempt a job document is on: its `retryCount` (0 before any Retry). Anything else reads as 0. */
export function platformAttemptOf(job: Pick<TrainingJobDoc, 'retryCount'> | Record<string, unknown>): number {
  const n = (job as { retryCount?: unknown }).retryCount;
  return typeof n === 'number' && Number.isSafeInteger(n) && n >= 0 ? n : 0;
}

/** `_id` of the attempt record and of its settle decision. */
export function attemptKey(jobId: string, platformAttempt: number): string {
  return `${jobId}:${platformAttempt}`;
}

/** Which record a worker writes and with which fencing token (its lease's attemptId). */
export interface AttemptRef {
  jobId: string;
  platformAttempt: number;
  /** The lease attemptId that owns the record; every worker write filters on it. */
  owner: string;
}

export type SettleOutcome = 'completed' | 'failed' | 'cancelled';

/** Who paid and who may be credited: recorded at the charge, so settlement never re-reads the job. */
export interface AttemptAccounts {
  ownerAccountId: string;
  walletAddress?: string;
  datasetId?: string;
  datasetCreatorId?: string;
}

export interface RecordedQuote {
  points: number;
  estimatedSeconds: number;
  gpuUsdPerHour: number;
  /** Absent on quotes recorded before recipes 0.3.0 (the fee was 0.2 then too). */
  platformFee?: number;
}

export interface UploadState {
  loraUrl: string;
  loraKey: string;
  sha256: string;
  autov2: string;
  bytes: number;
  sampleUrls: string[];
  logUrl?: string;
  configUrl?: string;
}

export interface ContainerRun {
  step: string;
  startedAt: Date;
  endedAt: Date;
}

/** One intermediate LoRA checkpoint of an attempt, stored in the models bucket as soon as the engine wrote it. */
export interface CheckpointRecord {
  /** The job's step the checkpoint was saved at (after a resume: continued, never the engine's restarted count). */
  step: number;
  epoch?: number;
  /** The engine's reported (average) loss at that step, when known. */
  loss?: number | null;
  loraKey: string;
  loraUrl: string;
  sha256: string;
  autov2: string;
  bytes: number;
  sampleKeys: string[];
  sampleUrls: string[];
  storedAt: Date;
  /** Set by retention once the checkpoint's objects are deleted from storage. */
  deletedAt?: Date;
}

/** The newest engine training state of a platform attempt, stored for a re-claimed attempt to resume from. */
export interface ResumeStateRecord {
  step: number;
  epoch?: number;
  /** Object key (uploads bucket) of the state folder as a tar archive. */
  key: string;
  bytes: number;
  sha256: string;
  /** The state folder's name relative to the output folder (SavePlan.stateTemplate at `step`). */
  stateDir: string;
  /** `<recipe id>@<recipe version>#<image ref>` that wrote it: a different engine never resumes it. */
  engine: string;
  /** The lease attemptId whose worker uploaded it (attempt-fenced: only the record's owner can record a state). */
  uploadedBy: string;
  storedAt: Date;
  /** Training seconds of the platform attempt up to this state: what a claim resuming from it bills for the earlier work. */
  trainSeconds?: number;
}

/** A checkpoint registered as the job's model after the job completed (ADR 0008). */
export interface PromotionRecord {
  step: number;
  /** `replace`: the job's model now loads this checkpoint; `version`: a second model registered beside it. */
  mode: 'replace' | 'version';
  loraModelId: string;
  loraUrl: string;
  promotedAt: Date;
  promotedBy?: string;
}

/** What the worker's pipeline records, step by step, through fenced writes. */
export interface AttemptState {
  recipeId?: string;
  recipeVersion?: string;
  quote?: RecordedQuote;
  accounts?: AttemptAccounts;
  /** The ledger charge finished (the record is `open` from before the charge starts). */
  charged?: boolean;
  slug?: string;
  trainSeconds?: number;
  containerRuns?: ContainerRun[];
  upload?: UploadState;
  loraModelId?: string;
  /** The job's COMPLETED write landed (before the points are settled). */
  completedWrittenAt?: Date;
  /** The registered model was hidden because the job ended cancelled after registration. */
  modelWithdrawnAt?: Date;
  /** Intermediate checkpoints stored so far, in step order. */
  checkpoints?: CheckpointRecord[];
  /** The newest stored engine state (older ones are deleted once this is recorded). */
  resumeState?: ResumeStateRecord;
  /** Each resume of this platform attempt: the step it continued from and the lease that did it. */
  resumes?: { step: number; attemptId: string; at: Date }[];
  /** Checkpoints promoted after completion, newest last. */
  promotions?: PromotionRecord[];
  /** The loss curve of this platform attempt, bounded (see appendLossPoints): what the dashboard charts. */
  lossSeries?: LossSeries;
  /** When the current claim (`claim`: its lease attemptId) moved the job into each phase (the job document keeps only `startedAt`). */
  phaseTimes?: PhaseTimes;
  /**
   * Concept training (Kontext): the transformation prompt the first claim
   * resolved before the charge (`text: null` = none), reused by every later
   * claim of this platform attempt so a resumed training keeps its captions.
   */
  conceptPrompt?: { text: string | null; source?: 'generation-output' | 'control-set-config' };
}

/** Leased phases whose start the attempt record keeps (PROVISIONING is the job's `startedAt`, set by the claim). */
export type RecordedPhase = 'RUNNING' | 'FINALIZING';

export type PhaseTimes = { claim?: string } & Partial<Record<RecordedPhase, Date>>;

/** One point of the loss curve: the job's step (continued across resumes) and the engine's reported loss. */
export interface LossPoint {
  step: number;
  loss: number;
}

/**
 * A loss curve kept to at most `LOSS_SERIES_MAX_POINTS` points at a uniform
 * step spacing: a point is kept only `stride` steps after the previous one,
 * and when the series is full every other point is dropped and the stride
 * doubles. Long trainings keep their whole shape in a small, fixed record.
 */
export interface LossSeries {
  stride: number;
  points: LossPoint[];
}

export const LOSS_SERIES_MAX_POINTS = 500;

/**
 * `series` with `points` appended (pure). Non-finite losses are skipped (FerretDB
 * rejects NaN; the NaN failure is reported elsewhere). A point at or before the
 * last kept step replaces the tail from there: a resumed claim re-trains those
 * steps, and its values are the ones that count.
 */
export function appendLossPoints(series: LossSeries | undefined, points: readonly LossPoint[], max = LOSS_SERIES_MAX_POINTS): LossSeries {
  let stride = series?.stride && series.stride >= 1 ? series.stride : 1;
  let kept = [...(series?.points ?? [])];
  const limit = Math.max(2, Math.floor(max));
  for (const p of points) {
    if (!Number.isFinite(p.loss) || !Number.isSafeInteger(p.step) || p.step < 0) continue;
    const last = kept[kept.length - 1];
    if (last && p.step <= last.step) kept = kept.filter((k) => k.step < p.step);
    const prev = kept[kept.length - 1];
    if (prev && p.step - prev.step < stride) continue;
    kept.push({ step: p.step, loss: p.loss });
    while (kept.length > limit) {
      kept = kept.filter((_, i) => i % 2 === 0);
      stride *= 2;
    }
  }
  return { stride, points: kept };
}

export interface TrainingAttemptDoc {
  _id: string;
  jobId: string;
  platformAttempt: number;
  owner: string | null;
  ownerWorkerId?: string;
  /** The job's claimSeq of the owner: an older claim can never take the record back. */
  ownerClaimSeq: number;
  /** `job.attempts` before this platform attempt's first claim: worker attempts used = job.attempts − this. */
  baseAttempts: number;
  /** True from just before the charge until the points are settled: what the settlement sweep looks for. */
  open: boolean;
  state: AttemptState;
  settledAt?: Date;
  createdAt: Date;
  updatedAt: Date;
}

export interface SettleDecision {
  outcome: SettleOutcome;
  usedPoints: number;
  reason: string;
  /** For a failed outcome: the job failure class to write (a resumed attempt writes the same FAILED). */
  failureClass?: string;
}

export interface SettlementDecisionDoc extends SettleDecision {
  _id: string;
  jobId: string;
  platformAttempt: number;
  /** `worker:<lease attemptId>` or `sweep:<workerId>`. */
  decidedBy: string;
  decidedAt: Date;
}
