/**
 * The job event stream (ADR 0010): what happened to a training job, as events
 * the platform can follow from a position without reading our internals.
 *
 * Every event has a deterministic id derived from the documents that imply it
 * (`<jobId>:<platform attempt>:<type>:<discriminator>`), so whoever emits it
 * first (the worker right after its write, or the reconciler later) stores it
 * once, and a consumer deduplicates redeliveries by that id. This module is
 * pure: it only derives events from documents; job-event-store.ts stores and
 * reads them.
 */
import { isJobStatus, type JobStatus } from './job-status';
import { platformAttemptOf, type CheckpointRecord, type SettlementDecisionDoc, type TrainingAttemptDoc } from './training-attempt';
import type { TrainingEnvironment, TrainingJobDoc } from './training-job';

export const TRAINING_JOB_EVENTS_COLLECTION = 'trainingJobEvents';

export const JOB_EVENT_TYPES = ['job.status', 'job.failed', 'checkpoint.stored', 'settlement.settled', 'job.stalled'] as const;
export type JobEventType = (typeof JOB_EVENT_TYPES)[number];

export function isJobEventType(value: unknown): value is JobEventType {
  return typeof value === 'string' && (JOB_EVENT_TYPES as readonly string[]).includes(value);
}

/** An event as consumers see it (and as a webhook body carries it). */
export interface JobEvent {
  /** Unique and deterministic: the deduplication key for at-least-once delivery. */
  id: string;
  /** Dense position in the stream (1, 2, 3, …): read `seq > position` to continue. */
  seq: number;
  type: JobEventType;
  jobId: string;
  /**
   * The job's environment. Dev and prod workers share one trainingJobs
   * collection (and so one outbox) told apart by this field; a job without
   * one is production, as the claim filter reads it.
   */
  environment: TrainingEnvironment;
  /** The platform attempt (the job's `retryCount`; 0 before any Retry). */
  attempt: number;
  /** When the change happened (as recorded on the document that implies it). */
  at: Date;
  payload: Record<string, unknown>;
}

/** An event before it has a position. */
export type JobEventDraft = Omit<JobEvent, 'seq'>;

/** The stored shape: `_id` is the position (FerretDB v1 pushes down only `_id` equality; see the store). */
export interface JobEventDoc {
  _id: number;
  eventId: string;
  type: JobEventType;
  jobId: string;
  /** Absent on events stored before environments were recorded: read as production. */
  environment?: TrainingEnvironment;
  attempt: number;
  at: Date;
  payload: Record<string, unknown>;
  /** When it was stored, and by which path (`worker` right after a write, `reconciler` later). */
  recordedAt: Date;
  source: string;
}

/** The job fields the derivation reads (what a write observer projects). */
export const JOB_EVENT_FIELDS = [
  'status',
  'environment',
  'retryCount',
  'claimSeq',
  'failureClass',
  'failureReason',
  'updatedAt',
  'createdAt',
  'completedAt',
  'cancelledAt',
  'startedAt',
  'currentStep',
  'totalSteps',
  'progress',
  'cancelRequestedBy',
  'cancelRequestedAt',
  'modelRepoUrl',
  'loraModelId',
  'actualCostPoints',
] as const;

export function eventId(jobId: string, attempt: number, type: JobEventType, discriminator: string): string {
  return `${jobId}:${attempt}:${type}:${discriminator}`;
}

/** The environment a job belongs to: production unless it says development (the claim filter's reading). */
export function environmentOf(job: { environment?: unknown } | null | undefined): TrainingEnvironment {
  return job?.environment === 'development' ? 'development' : 'production';
}

function claimSeqOf(job: Partial<TrainingJobDoc>): number {
  return typeof job.claimSeq === 'number' && Number.isSafeInteger(job.claimSeq) ? job.claimSeq : 0;
}

function dateOr(value: unknown, fallback: Date): Date {
  return value instanceof Date ? value : fallback;
}

/**
 * The status event a job document implies. The discriminator is the claim
 * generation (`claimSeq`): QUEUED after the n-th claim, RUNNING of the n-th
 * claim, … are distinct events, and a second writer of the same status in
 * the same generation (the platform's CANCELLED, then ours) is the same event.
 */
export function statusEvent(jobId: string, job: Partial<TrainingJobDoc>, now = new Date()): JobEventDraft | null {
  const status = job.status;
  if (!isJobStatus(status)) return null;
  const attempt = platformAttemptOf(job as Record<string, unknown>);
  const claimSeq = claimSeqOf(job);
  const at =
    status === 'COMPLETED' ? dateOr(job.completedAt, dateOr(job.updatedAt, now)) : status === 'CANCELLED' ? dateOr(job['cancelledAt'], dateOr(job.updatedAt, now)) : dateOr(job.updatedAt, now);
  const payload: Record<string, unknown> = { status, claim: claimSeq };
  if (status === 'COMPLETED' && typeof job.modelRepoUrl === 'string') payload['modelUrl'] = job.modelRepoUrl;
  if (status === 'COMPLETED' || status === 'FAILED' || status === 'CANCELLED') {
    if (typeof job.actualCostPoints === 'number') payload['actualCostPoints'] = job.actualCostPoints;
  }
  if (status === 'CANCELLED' && typeof job.cancelRequestedBy === 'string') payload['cancelledBy'] = job.cancelRequestedBy;
  if ((status === 'CANCELLED' || status === 'FAILED') && typeof job.failureReason === 'string') payload['reason'] = job.failureReason;
  return { id: eventId(jobId, attempt, 'job.status', `${status}:${claimSeq}`), type: 'job.status', jobId, environment: environmentOf(job), attempt, at, payload };
}

/**
 * The QUEUED a claim proves: the claim's filter matched QUEUED in the
 * generation before it. Emitted with the claim, so a job claimed before any
 * reconciler pass saw it queued still has its QUEUED event (same id as the
 * reconciler would derive).
 */
export function queuedBeforeClaimEvent(jobId: string, claimed: Partial<TrainingJobDoc>): JobEventDraft | null {
  const claimSeq = claimSeqOf(claimed);
  if (claimSeq < 1) return null;
  const attempt = platformAttemptOf(claimed as Record<string, unknown>);
  const at = dateOr(claimed.createdAt, new Date());
  return {
    id: eventId(jobId, attempt, 'job.status', `QUEUED:${claimSeq - 1}`),
    type: 'job.status',
    jobId,
    environment: environmentOf(claimed),
    attempt,
    at,
    payload: { status: 'QUEUED' satisfies JobStatus, claim: claimSeq - 1, impliedByClaim: true },
  };
}

/** FAILED carries its failure class and the plain-words reason the user sees. */
export function failedEvent(jobId: string, job: Partial<TrainingJobDoc>, now = new Date()): JobEventDraft | null {
  if (job.status !== 'FAILED') return null;
  const attempt = platformAttemptOf(job as Record<string, unknown>);
  const claimSeq = claimSeqOf(job);
  return {
    id: eventId(jobId, attempt, 'job.failed', String(claimSeq)),
    type: 'job.failed',
    jobId,
    environment: environmentOf(job),
    attempt,
    at: dateOr(job.completedAt, dateOr(job.updatedAt, now)),
    payload: { failureClass: job.failureClass ?? 'unknown', reason: job.failureReason ?? 'The job failed; no reason was recorded.', claim: claimSeq },
  };
}

export function checkpointEvent(jobId: string, attempt: number, c: CheckpointRecord, environment: TrainingEnvironment): JobEventDraft {
  return {
    id: eventId(jobId, attempt, 'checkpoint.stored', String(c.step)),
    type: 'checkpoint.stored',
    jobId,
    environment,
    attempt,
    at: c.storedAt instanceof Date ? c.storedAt : new Date(),
    payload: {
      step: c.step,
      ...(c.epoch !== undefined ? { epoch: c.epoch } : {}),
      loss: typeof c.loss === 'number' ? c.loss : null,
      loraUrl: c.loraUrl,
      sha256: c.sha256,
      bytes: c.bytes,
      sampleUrls: c.sampleUrls,
    },
  };
}

/**
 * The points of a platform attempt moved: emitted once the attempt record says
 * settled (the ledger's refund and credits are done), with the decision.
 * `chargedPoints` is the quote the worker charged; the refund is what the
 * ledger gave back of it.
 */
export function settlementEvent(record: TrainingAttemptDoc, decision: SettlementDecisionDoc, environment: TrainingEnvironment): JobEventDraft | null {
  if (!record.settledAt) return null;
  const charged = record.state?.charged && record.state.quote ? record.state.quote.points : 0;
  const used = Math.min(charged, Math.max(0, decision.usedPoints));
  return {
    id: eventId(record.jobId, record.platformAttempt, 'settlement.settled', 'points'),
    type: 'settlement.settled',
    jobId: record.jobId,
    environment,
    attempt: record.platformAttempt,
    at: record.settledAt,
    payload: { outcome: decision.outcome, chargedPoints: charged, usedPoints: used, refundedPoints: charged - used, reason: decision.reason },
  };
}

/**
 * RUNNING with the same step for at least the stall window: once per (claim,
 * step). The reconciler arms it only from step 1: before the first step the
 * engine caches latents and text encoder outputs, which can take longer than
 * the window without anything being wrong.
 */
export function stalledEvent(jobId: string, job: Partial<TrainingJobDoc>, stalledSince: Date, now = new Date()): JobEventDraft {
  const attempt = platformAttemptOf(job as Record<string, unknown>);
  const step = typeof job.currentStep === 'number' ? job.currentStep : 0;
  return {
    id: eventId(jobId, attempt, 'job.stalled', `${claimSeqOf(job)}:${step}`),
    type: 'job.stalled',
    jobId,
    environment: environmentOf(job),
    attempt,
    at: now,
    payload: { step, totalSteps: job.totalSteps ?? null, stalledSince, minutes: Math.round((now.getTime() - stalledSince.getTime()) / 60_000) },
  };
}

/**
 * Every event the documents of one job imply, in the order a consumer should
 * see them: checkpoints of the attempt, the current status, the failure, the
 * settlement. Intermediate statuses that no longer show on the document are
 * not invented (ADR 0010: the worker emits those right after its writes).
 */
export function eventsImpliedBy(
  jobId: string,
  job: Partial<TrainingJobDoc> | null,
  record: TrainingAttemptDoc | null,
  decision: SettlementDecisionDoc | null,
  now = new Date(),
): JobEventDraft[] {
  const out: JobEventDraft[] = [];
  // The attempt record and decision carry no environment: they are the job's.
  const environment = environmentOf(job);
  if (record) for (const c of record.state?.checkpoints ?? []) out.push(checkpointEvent(jobId, record.platformAttempt, c, environment));
  if (job) {
    const status = statusEvent(jobId, job, now);
    if (status) out.push(status);
    const failed = failedEvent(jobId, job, now);
    if (failed) out.push(failed);
  }
  if (record && decision) {
    const settled = settlementEvent(record, decision, environment);
    if (settled) out.push(settled);
  }
  return out;
}
