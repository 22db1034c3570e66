import { randomUUID } from 'node:crypto';
import type { Collection, Db, Filter, UpdateFilter } from 'mongodb';
import { inject, injectable } from 'tsyringe';
import { idForms, toObjectIdOrString } from '@stationthis/common';
import { ensureNamedIndexes } from '@stationthis/common';
import { CLAIM_SORT, environmentFilter, modelTypeFilter } from './claim-filters';
import { DecisionTokens } from './decision-tokens';
import { JobClaims } from './job-claims';
import {
  allowedFrom,
  InvalidTransitionError,
  isJobStatus,
  LEASED_STATUSES,
  TERMINAL_STATUSES,
  type JobStatus,
} from './job-status';
import { JOB_WRITES } from './job-write-serializer';
import { MONGO_DB } from './mongo';
import {
  attemptKey,
  platformAttemptOf,
  TRAINING_ATTEMPTS_COLLECTION,
  TRAINING_SETTLEMENTS_COLLECTION,
  type TrainingAttemptDoc,
} from './training-attempt';
import { TrainingAttemptRepository } from './training-attempt-repository';
import {
  TRAINING_JOBS_COLLECTION,
  type CancelRequestResult,
  type ClaimOptions,
  type ClaimableModelTypes,
  type EnqueueTrainingJobInput,
  type FailureClass,
  type Lease,
  type ProgressUpdate,
  type RecoveryResult,
  type TrainingEnvironment,
  type TrainingJobDoc,
  type TrainingJobFilter,
} from './training-job';
import { resolveTrainingJobOptions, TRAINING_JOB_OPTIONS, type ResolvedTrainingJobOptions, type TrainingJobRepositoryOptions } from './training-job-options';

export const LOG_TAIL_LINES = 50;
const MAX_LOG_LINE_CHARS = 500;

/** Fields a caller may never set through `fields`: they belong to the lifecycle itself. */
const RESERVED_FIELDS = new Set(['_id', 'status', 'lease', 'attempts', 'cancelRequestedAt', 'refundDue']);

export interface FailInput {
  failureReason: string;
  failureClass: FailureClass;
  [field: string]: unknown;
}

/**
 * The `trainingJobs` queue: claim with a lease, heartbeat, fenced writes,
 * cancel requests and recovery of expired leases. Every write is a single
 * conditional `updateOne`/`findOneAndUpdate` (no transactions, FerretDB-safe),
 * and every write made on behalf of a worker filters on its `lease.attemptId`.
 * How a job is claimed lives in job-claims.ts; the single-winner claim and
 * recovery decisions in decision-tokens.ts.
 */
@injectable()
export class TrainingJobRepository {
  private readonly jobs: Collection<TrainingJobDoc>;
  private readonly options: ResolvedTrainingJobOptions;
  /** Claim strategy and candidate pools: one per repository, so one cache per process. */
  private readonly claims: JobClaims;
  /** Told of each job document our writes leave (the job event outbox, ADR 0010); none by default. */
  private writeObserver: JobWriteObserver | null = null;
  private observedProjection: Record<string, 1> = {};

  /** One tiny document per claim or recovery decision: the unique `_id` makes the decision single-winner. */
  private readonly tokens: DecisionTokens;
  /** Read only here: the worker's attempt records and decisions decide how recovery ends a job. */
  private readonly attemptRecords: Collection<TrainingAttemptDoc>;
  private readonly decisions: Collection<{ _id: string }>;

  /**
   * Options are optional so `new TrainingJobRepository(db)` and a container
   * holding only MONGO_DB both work (every default); registerDb binds them.
   * They are fixed for the repository's lifetime.
   */
  constructor(
    @inject(MONGO_DB) private readonly db: Db,
    @inject(TRAINING_JOB_OPTIONS, { isOptional: true }) options?: TrainingJobRepositoryOptions,
  ) {
    this.options = resolveTrainingJobOptions(options);
    this.jobs = db.collection<TrainingJobDoc>(TRAINING_JOBS_COLLECTION);
    this.tokens = new DecisionTokens(db, this.options.tokenStaleMs);
    this.claims = new JobClaims(db, this.jobs, this.tokens, this.options);
    this.attemptRecords = db.collection<TrainingAttemptDoc>(TRAINING_ATTEMPTS_COLLECTION);
    this.decisions = db.collection(TRAINING_SETTLEMENTS_COLLECTION);
  }

  get maxAttempts(): number {
    return this.options.maxAttempts;
  }

  /**
   * After each successful write of ours, `observer` gets the job document as
   * that write left it, read before this process's next write of the job (so no
   * status of ours is skipped), plus the claimed document of each claim. The
   * observer must return at once; a failing read is ignored (the event
   * reconciler catches up). Costs one read per write while set.
   */
  observeWrites(observer: JobWriteObserver | null, projection: Record<string, 1> = {}): void {
    this.writeObserver = observer;
    this.observedProjection = projection;
  }

  /** Idempotent; only plain and compound indexes (FerretDB v1 has no partial, sparse or TTL). */
  async ensureIndexes(): Promise<void> {
    await ensureNamedIndexes(this.jobs, [
      // claimNext: equality on status (+ environment $in), then the sort.
      // The whole claim sort, `_id` included, so MongoDB never sorts in memory (a deployment that has the older
      // `st_claim` without `_id` keeps it; it is no longer needed).
      { key: { status: 1, environment: 1, priority: -1, createdAt: 1, _id: 1 }, name: 'st_claim_sort' },
      // recoverExpiredLeases: leased statuses whose lease expired.
      { key: { status: 1, 'lease.expiresAt': 1 }, name: 'st_lease_expiry' },
      // list(): a user's jobs, newest first (the platform sorts in JS; this serves it too).
      { key: { ownerAccountId: 1, createdAt: -1 }, name: 'st_owner_created' },
      // findRefundsDue()
      { key: { refundDue: 1 }, name: 'st_refund_due' },
    ]);
  }

  /** Insert a platform-shaped QUEUED job (what TrainingService.create writes), for the CLI and tests. */
  async enqueue(input: EnqueueTrainingJobInput): Promise<string> {
    const now = new Date();
    const owner = String(input.ownerAccountId);
    const doc: Record<string, unknown> = {
      ...(input.extra ?? {}),
      userId: owner,
      ownerAccountId: owner,
      name: input.name,
      modelName: input.name,
      description: input.description,
      walletAddress: input.walletAddress,
      datasetId: String(input.datasetId),
      datasetImageCount: input.datasetImageCount,
      modelType: input.modelType ?? input.baseModel,
      baseModel: input.baseModel,
      offeringId: '',
      steps: input.steps,
      triggerWord: input.triggerWord,
      triggerWords: input.triggerWord ? [input.triggerWord] : undefined,
      costPoints: input.costPoints,
      environment: input.environment ?? 'production',
      status: 'QUEUED',
      progress: 0,
      priority: input.priority ?? 0,
      attempts: 0,
      // Informational only (the platform's shape); the limit is the worker's configuration.
      maxAttempts: input.maxAttempts,
      createdAt: now,
      updatedAt: now,
    };
    // Like the platform's validateData: never store undefined/null keys on insert.
    for (const key of Object.keys(doc)) if (doc[key] === undefined || doc[key] === null) delete doc[key];
    const result = await this.jobs.insertOne(doc as unknown as TrainingJobDoc);
    return result.insertedId.toHexString();
  }

  /**
   * Atomically take the next QUEUED job of this environment: priority desc,
   * then FIFO. A fresh attemptId fences out whoever held the job before.
   */
  async claimNext(opts: ClaimOptions): Promise<{ job: TrainingJobDoc; lease: Lease } | null> {
    const attemptId = randomUUID();
    const job = await this.claims.claim(opts, attemptId);
    if (!job) return null;
    this.tellObserver(job, 'claim');
    return { job, lease: { jobId: job._id.toHexString(), attemptId, workerId: opts.workerId } };
  }

  /**
   * Extend the lease. `false` means the lease is lost (recovered, or the job was
   * ended by someone else): the worker must stop its container and write nothing
   * more. `updatedAt` is refreshed too, because the platform's stuck-job sweeper
   * (findStuckJobs) judges liveness by `updatedAt`.
   */
  async heartbeat(lease: Lease, leaseMs: number): Promise<boolean> {
    return this.oneWrite(lease.jobId, async () => {
      const now = new Date();
      // Also while the platform's CANCELLED (which leaves our lease in place) is being settled by the owner:
      // a live lease tells the settlement sweep to leave the attempt to its owner.
      const r = await this.jobs.updateOne(this.fenced(lease, [...LEASED_STATUSES, 'CANCELLED']), {
        $set: { 'lease.expiresAt': new Date(now.getTime() + leaseMs), heartbeatAt: now, updatedAt: now },
      });
      return r.matchedCount === 1;
    });
  }

  /**
   * Move a leased job to `to`. Validity is checked by the filter itself
   * (`status ∈ allowedFrom(to)`), so a concurrent change cannot slip past it.
   * Returns false when the lease is lost or the job is in a state that does not
   * allow `to` (e.g. the platform already set CANCELLED).
   */
  async transition(lease: Lease, to: JobStatus, fields: Record<string, unknown> = {}): Promise<boolean> {
    return this.oneWrite(lease.jobId, async () => {
      if (!isJobStatus(to)) throw new InvalidTransitionError('(leased)', String(to));
      if (to === 'QUEUED') {
        throw new InvalidTransitionError('(leased)', 'QUEUED via transition(); use releaseLease() so attempts stay right');
      }
      const from = allowedFrom(to).filter((s) => LEASED_STATUSES.includes(s));
      if (from.length === 0) throw new InvalidTransitionError('(leased)', `${to} (only a claim enters it)`);
      const now = new Date();
      const set: Record<string, unknown> = { ...ownedFields(fields), status: to, updatedAt: now };
      // The platform's history list sorts by completedAt: every terminal status carries it.
      if (to === 'COMPLETED' || to === 'FAILED' || to === 'CANCELLED') Object.assign(set, { finishedAt: now, completedAt: set['completedAt'] ?? now });
      const r = await this.jobs.updateOne(this.fenced(lease, from), { $set: set } as UpdateFilter<TrainingJobDoc>);
      return r.matchedCount === 1;
    });
  }

  /**
   * Progress fields the UI reads, plus ETA and a bounded log tail. FerretDB
   * ignores `$push: {$slice}`, so the tail is read, trimmed and `$set`; only
   * the lease holder writes it, so there is no lost update. Callers should go
   * through a ProgressThrottle.
   */
  async updateProgress(lease: Lease, p: ProgressUpdate): Promise<boolean> {
    return this.oneWrite(lease.jobId, async () => {
      const set: Record<string, unknown> = { updatedAt: new Date() };
      if (p.progress !== undefined) set['progress'] = clamp(Math.round(p.progress * 10) / 10, 0, 100);
      if (p.currentStep !== undefined) set['currentStep'] = p.currentStep;
      if (p.totalSteps !== undefined) set['totalSteps'] = p.totalSteps;
      if (p.currentLoss !== undefined) set['currentLoss'] = finiteOrNull(p.currentLoss);
      if (p.etaSeconds !== undefined) set['etaSeconds'] = finiteOrNull(p.etaSeconds);
      if (p.logLines && p.logLines.length > 0) {
        const current = await this.jobs.findOne(this.fenced(lease), { projection: { logTail: 1 } });
        if (!current) return false;
        set['logTail'] = [...(current.logTail ?? []), ...p.logLines.map(cleanLogLine)].slice(-LOG_TAIL_LINES);
      }
      const r = await this.jobs.updateOne(this.fenced(lease), { $set: set });
      return r.matchedCount === 1;
    });
  }

  /**
   * Fenced `$set` of fields the platform reads (e.g. estimatedCostPoints,
   * gpuType) on a leased job, without a status change. Lifecycle fields
   * (status, lease, attempts…) are refused. False when the lease is lost or
   * the job is no longer leased (a platform Cancel).
   */
  async setJobFields(lease: Lease, fields: Record<string, unknown>): Promise<boolean> {
    return this.oneWrite(lease.jobId, async () => {
      const set = { ...ownedFields(fields), updatedAt: new Date() };
      const r = await this.jobs.updateOne(this.fenced(lease), { $set: set } as UpdateFilter<TrainingJobDoc>);
      return r.matchedCount === 1;
    });
  }

  /** Fenced `$set` of `pipeline.<key>` for each key of `patch`; other pipeline keys are kept. */
  async setPipelineState(lease: Lease, patch: Record<string, unknown>): Promise<boolean> {
    return this.oneWrite(lease.jobId, async () => {
      const set: Record<string, unknown> = { updatedAt: new Date() };
      for (const [key, value] of Object.entries(patch)) {
        if (key.includes('.') || key.startsWith('$')) {
          throw new Error(`Pipeline state key "${key}" contains "." or starts with "$"; use a flat key.`);
        }
        set[`pipeline.${key}`] = value;
      }
      const r = await this.jobs.updateOne(this.fenced(lease), { $set: set });
      return r.matchedCount === 1;
    });
  }

  /**
   * FINALIZING → COMPLETED, only while the job is still ours (our lease, a
   * leased status): a platform CANCELLED is never replaced. `refundDue: true`
   * says the points are not settled yet; whoever settles them clears it
   * (`recordSettled`).
   */
  async complete(lease: Lease, fields: Record<string, unknown> = {}): Promise<boolean> {
    return this.oneWrite(lease.jobId, async () => {
      const now = new Date();
      const set = { progress: 100, ...ownedFields(fields), status: 'COMPLETED', completedAt: now, finishedAt: now, updatedAt: now, refundDue: true };
      // A completed job carries no failure: a Retry leaves the previous attempt's reason on the document.
      const r = await this.jobs.updateOne(this.fenced(lease, allowedFrom('COMPLETED').filter((s) => LEASED_STATUSES.includes(s))), {
        $set: set,
        $unset: { failureReason: '', failureClass: '' },
      } as UpdateFilter<TrainingJobDoc>);
      return r.matchedCount === 1;
    });
  }

  /** Any leased state → FAILED, with the reason the UI shows and our failure class. */
  fail(lease: Lease, input: FailInput): Promise<boolean> {
    return this.transition(lease, 'FAILED', { ...input });
  }

  /**
   * The owner stopped its work after a cancel (ours, or the platform's plain
   * `status: CANCELLED`): → CANCELLED with the settlement fields. Matches a job
   * already CANCELLED by the platform, as long as the lease is still ours.
   */
  async cancelComplete(lease: Lease, fields: Record<string, unknown> = {}): Promise<boolean> {
    return this.oneWrite(lease.jobId, async () => {
      const now = new Date();
      const set = { cancelledAt: now, ...ownedFields(fields), status: 'CANCELLED', completedAt: now, finishedAt: now, updatedAt: now };
      const r = await this.jobs.updateOne(this.fenced(lease, [...LEASED_STATUSES, 'CANCELLED']), { $set: set } as UpdateFilter<TrainingJobDoc>);
      return r.matchedCount === 1;
    });
  }

  /**
   * Where the job stands for the holder of `lease`: `held` (ours, go on),
   * `cancelled` (still our lease, but a cancel was asked or the platform set
   * CANCELLED: stop and settle), or `lost` (another claim, or another writer
   * ended or re-queued it: stop and write nothing).
   */
  async leaseState(lease: Lease): Promise<'held' | 'cancelled' | 'lost'> {
    const job = await this.jobs.findOne({ _id: toObjectIdOrString(lease.jobId) } as Filter<TrainingJobDoc>, {
      projection: { status: 1, lease: 1, cancelRequestedAt: 1 },
    });
    if (!job || job.lease?.attemptId !== lease.attemptId) return 'lost';
    if (job.status === 'CANCELLED' || (LEASED_STATUSES.includes(job.status) && job.cancelRequestedAt != null)) return 'cancelled';
    return LEASED_STATUSES.includes(job.status) ? 'held' : 'lost';
  }

  /**
   * A CANCELLED that landed over our COMPLETED (a read-then-write cancel, or
   * FerretDB losing one of two concurrent updates): the job had already been
   * completed and settled, the model is public. COMPLETED is restored and the
   * late cancel is recorded (ADR 0002, scenario table).
   */
  async restoreCompleted(jobId: string, leaseAttemptId: string, fields: Record<string, unknown> = {}): Promise<boolean> {
    return this.oneWrite(jobId, async () => {
      const now = new Date();
      const r = await this.jobs.updateOne(
        { _id: toObjectIdOrString(jobId), status: 'CANCELLED', 'lease.attemptId': leaseAttemptId } as Filter<TrainingJobDoc>,
        { $set: { ...ownedFields(fields), status: 'COMPLETED', lateCancelAt: now, updatedAt: now } } as UpdateFilter<TrainingJobDoc>,
      );
      return r.matchedCount === 1;
    });
  }

  /**
   * The points of the job's platform attempt are settled: clear `refundDue`,
   * mark the cost reconciled and fill the fields the platform reads on a
   * terminal job (`completedAt`), only while the job is still terminal on that
   * platform attempt (a Retry in between makes this a no-op).
   */
  async recordSettled(jobId: string, platformAttempt: number, fields: { actualCostPoints?: number } = {}): Promise<boolean> {
    return this.oneWrite(jobId, async () => {
      const now = new Date();
      const job = await this.jobs.findOne({ _id: toObjectIdOrString(jobId) } as Filter<TrainingJobDoc>, { projection: { status: 1, retryCount: 1, completedAt: 1 } });
      if (!job || !TERMINAL_STATUSES.includes(job.status) || platformAttemptOf(job) !== platformAttempt) return false;
      const set: Record<string, unknown> = { refundDue: false, refundSettledAt: now, costReconciled: true, updatedAt: now };
      if (!job.completedAt) set['completedAt'] = now;
      if (fields.actualCostPoints !== undefined) set['actualCostPoints'] = fields.actualCostPoints;
      const r = await this.jobs.updateOne({ _id: job._id, status: job.status } as Filter<TrainingJobDoc>, { $set: set });
      return r.matchedCount === 1;
    });
  }

  /**
   * Hand the job back on graceful shutdown. The attempt is given back
   * (`attempts - 1`): the job did nothing wrong, and a rolling deploy must not
   * burn its retries (the BullMQ maxStalledCount lesson). `releases` counts
   * these hand-backs for visibility. When a cancel was requested or the
   * pipeline says a re-run is unsafe, the job is ended instead (with
   * refundDue) because nobody else should pick it up.
   */
  async releaseLease(lease: Lease, reason: string): Promise<boolean> {
    return this.oneWrite(lease.jobId, async () => {
      const job = await this.jobs.findOne(this.fenced(lease));
      if (!job) return false;
      const outcome = await this.giveUp(job, 'release', reason, new Date());
      return outcome !== null;
    });
  }

  /**
   * The attempt failed for a reason worth retrying (infrastructure): re-queue
   * the job, keeping the attempt it used, or end it FAILED (refundDue) when
   * attempts are exhausted. Returns the status the job ended in, or null when
   * the lease was already lost.
   */
  async retryLater(lease: Lease, reason: string): Promise<JobStatus | null> {
    return this.oneWrite(lease.jobId, async () => {
      const job = await this.jobs.findOne(this.fenced(lease));
      if (!job) return null;
      return this.giveUp(job, 'retry', reason, new Date());
    });
  }

  /**
   * Ask for a job to stop. A QUEUED job becomes CANCELLED at once (nothing ran,
   * nothing was charged); a leased job gets `cancelRequestedAt` for its owner
   * to observe.
   */
  async requestCancel(jobId: string, by?: string): Promise<CancelRequestResult> {
    const now = new Date();
    const _id = toObjectIdOrString(jobId);
    const direct = await this.jobs.updateOne({ _id, status: 'QUEUED' } as Filter<TrainingJobDoc>, {
      $set: { status: 'CANCELLED', cancelRequestedAt: now, cancelRequestedBy: by, cancelledAt: now, finishedAt: now, completedAt: now, updatedAt: now },
    });
    if (direct.matchedCount === 1) {
      await this.notifyWritten(jobId);
      return 'cancelled';
    }
    const requested = await this.jobs.updateOne(
      { _id, status: { $in: [...LEASED_STATUSES] }, cancelRequestedAt: null } as Filter<TrainingJobDoc>,
      { $set: { cancelRequestedAt: now, cancelRequestedBy: by, updatedAt: now } },
    );
    if (requested.matchedCount === 1) return 'requested';
    const job = await this.jobs.findOne({ _id } as Filter<TrainingJobDoc>, { projection: { status: 1, cancelRequestedAt: 1 } });
    if (!job) return 'not-found';
    if (LEASED_STATUSES.includes(job.status)) return 'already-requested';
    // QUEUED can only be seen here if it was re-queued between our two writes: try again.
    if (job.status === 'QUEUED') return this.requestCancel(jobId, by);
    return 'terminal';
  }

  /** True once a cancel was requested, or the platform's own cancel already set CANCELLED. */
  async isCancelRequested(lease: Lease): Promise<boolean> {
    const job = await this.jobs.findOne(
      { _id: toObjectIdOrString(lease.jobId) } as Filter<TrainingJobDoc>,
      { projection: { status: 1, cancelRequestedAt: 1 } },
    );
    if (!job) return true;
    return job.cancelRequestedAt != null || job.status === 'CANCELLED';
  }

  /**
   * Reclaim jobs whose lease expired (the owner died or hung). Re-queue while
   * worker attempts of the platform attempt remain, or when the attempt is past
   * its point of no return (model registered, outcome decided); else FAILED
   * (infrastructure) with `refundDue: true`. A job with a pending cancel
   * request becomes CANCELLED with `refundDue: true`. Safe to run from every
   * worker at once: each write is conditional on the same expired attemptId.
   * Also adopts legacy QUEUED jobs without `priority` (they would sort last).
   */
  async recoverExpiredLeases(now: Date = new Date()): Promise<RecoveryResult> {
    const result: RecoveryResult = { requeued: [], failed: [], cancelled: [] };
    await this.jobs.updateMany({ status: 'QUEUED', priority: { $exists: false } } as Filter<TrainingJobDoc>, {
      $set: { priority: 0 },
    });
    // Oldest expiry first, every one: the cursor pages through them, so jobs whose token another recoverer
    // holds never hide the rest.
    const expired = this.jobs
      .find({ status: { $in: [...LEASED_STATUSES] }, 'lease.expiresAt': { $lt: now } } as Filter<TrainingJobDoc>)
      .sort({ 'lease.expiresAt': 1, _id: 1 })
      .batchSize(200);
    for await (const job of expired) {
      // One recoverer per expired lease (a heartbeat changes expiresAt, hence the token), even where
      // conditional updates are not atomic (FerretDB v1). A holder that died is taken over after tokenStaleMs.
      const token = `recover:${job.lease?.attemptId ?? job._id.toHexString()}:${job.lease?.expiresAt?.getTime() ?? 0}`;
      if (!(await this.tokens.take(token, {}))) continue; // another recoverer holds it
      const outcome = await this.oneWrite(String(job._id), () => this.giveUp(job, 'expired', 'the worker stopped renewing its lease', now));
      // The write missed (a cancel or a late heartbeat changed the job since the read): hand the token back
      // so the next pass decides again from a fresh read.
      if (outcome === null) await this.tokens.giveBack(token);
      if (outcome === 'QUEUED') result.requeued.push(job._id.toHexString());
      else if (outcome === 'FAILED') result.failed.push(job._id.toHexString());
      else if (outcome === 'CANCELLED') result.cancelled.push(job._id.toHexString());
    }
    return result;
  }

  /**
   * Jobs that read CANCELLED although our COMPLETED write landed (it sets
   * `modelRepoUrl`, which no cancel path writes): a cancel overwrote
   * COMPLETED. The settlement sweep restores them.
   */
  async findCancelledOverCompleted(limit = 100): Promise<TrainingJobDoc[]> {
    return this.jobs.find({ status: 'CANCELLED', modelRepoUrl: { $exists: true } } as Filter<TrainingJobDoc>).limit(limit).toArray();
  }

  /** Jobs the system ended on a worker's behalf; the worker settles points for each, then calls clearRefundDue. */
  async findRefundsDue(limit = 50): Promise<TrainingJobDoc[]> {
    return this.jobs.find({ refundDue: true } as Filter<TrainingJobDoc>).limit(limit).toArray();
  }

  async clearRefundDue(jobId: string): Promise<boolean> {
    return this.oneWrite(jobId, async () => {
      const r = await this.jobs.updateOne({ _id: toObjectIdOrString(jobId), refundDue: true } as Filter<TrainingJobDoc>, {
        $set: { refundDue: false, refundSettledAt: new Date() },
      });
      return r.matchedCount === 1;
    });
  }

  /**
   * The job the next claim in this environment would most likely take (read
   * only, no lease): workers use it to prefetch inputs while their GPUs are busy.
   */
  async peekNextQueued(environment: TrainingEnvironment, modelTypes?: ClaimableModelTypes): Promise<TrainingJobDoc | null> {
    const [job] = await this.jobs
      .find({ status: 'QUEUED', ...environmentFilter(environment), ...modelTypeFilter(modelTypes) } as Filter<TrainingJobDoc>)
      .sort(CLAIM_SORT)
      .limit(1)
      .toArray();
    return job ?? null;
  }

  async findById(id: string): Promise<TrainingJobDoc | null> {
    return this.jobs.findOne({ _id: toObjectIdOrString(id) } as Filter<TrainingJobDoc>);
  }

  async list(filter: TrainingJobFilter = {}): Promise<TrainingJobDoc[]> {
    const q: Record<string, unknown> = {};
    if (filter.ownerAccountId !== undefined) q['ownerAccountId'] = { $in: idForms(filter.ownerAccountId) };
    if (filter.status !== undefined) q['status'] = Array.isArray(filter.status) ? { $in: filter.status } : filter.status;
    if (filter.environment !== undefined) Object.assign(q, environmentFilter(filter.environment));
    return this.jobs
      .find(q as Filter<TrainingJobDoc>)
      .sort({ createdAt: -1 })
      .limit(filter.limit ?? 100)
      .toArray();
  }

  /**
   * This process's writes to one job, one at a time (FerretDB v1 can lose one
   * of two concurrent updates of a document: see job-write-serializer.ts).
   * Never nest: a serialized write that awaits another on the same job waits forever.
   */
  private oneWrite<T>(jobId: string, write: () => Promise<T>): Promise<T> {
    if (!this.writeObserver) return JOB_WRITES.run(`${this.db.databaseName}/${String(jobId)}`, write);
    return JOB_WRITES.run(`${this.db.databaseName}/${String(jobId)}`, async () => {
      const result = await write();
      // A write that matched nothing returns false or null: nothing changed, nothing to tell.
      if (result !== false && result !== null) await this.notifyWritten(jobId);
      return result;
    });
  }

  private async notifyWritten(jobId: string): Promise<void> {
    const observer = this.writeObserver;
    if (!observer) return;
    const job = await this.jobs
      // Bounded: this read holds the job's serialized write slot. On timeout the event is skipped (the reconciler recovers it).
      .findOne({ _id: toObjectIdOrString(jobId) } as Filter<TrainingJobDoc>, { projection: this.observedProjection, maxTimeMS: 2000 })
      .catch(() => null);
    if (job) this.tellObserver(job, 'write');
  }

  /** An observer's failure never fails the write it observes (the event reconciler catches up). */
  private tellObserver(job: TrainingJobDoc, kind: 'write' | 'claim'): void {
    try {
      this.writeObserver?.(job, kind);
    } catch {
      // nothing to do here: see above
    }
  }

  /** The fencing filter: this job, this attempt, and still in a leased state. */
  private fenced(lease: Lease, statuses: readonly JobStatus[] = LEASED_STATUSES): Filter<TrainingJobDoc> {
    return {
      _id: toObjectIdOrString(lease.jobId),
      'lease.attemptId': lease.attemptId,
      status: { $in: [...statuses] },
    } as Filter<TrainingJobDoc>;
  }

  /**
   * Shared by release and recovery: decide from a snapshot, then write with a
   * filter that fails if any input of the decision changed since the read.
   */
  private async giveUp(
    job: TrainingJobDoc,
    mode: 'release' | 'expired' | 'retry',
    why: string,
    now: Date,
  ): Promise<JobStatus | null> {
    const attemptId = job.lease?.attemptId;
    if (!attemptId) return null;
    // Worker attempts are counted per platform attempt, from the worker's own record (a Retry starts at 0).
    const key = attemptKey(job._id.toHexString(), platformAttemptOf(job));
    const record = await this.attemptRecords.findOne({ _id: key });
    const attempts = TrainingAttemptRepository.attemptsUsed(job, record) - (mode === 'release' ? 1 : 0);
    const maxAttempts = this.options.maxAttempts;
    // Past the point of no return (a registered model, a recorded decision): the next claim only finishes
    // the job (no training, no new charge), so it is re-queued whatever the attempts; failing it would
    // refund a job whose model is public.
    const finishing = Boolean(record?.state?.loraModelId) || Boolean(await this.decisions.findOne({ _id: key }, { projection: { _id: 1 } }));
    const cancelRequested = job.cancelRequestedAt != null;
    const filter: Record<string, unknown> = {
      _id: job._id,
      status: job.status,
      'lease.attemptId': attemptId,
      cancelRequestedAt: cancelRequested ? job.cancelRequestedAt : null,
    };
    if (mode === 'expired') filter['lease.expiresAt'] = { $lt: now };

    let set: Record<string, unknown>;
    let inc: Record<string, number> | undefined;
    let outcome: JobStatus;
    if (cancelRequested) {
      outcome = 'CANCELLED';
      set = { status: outcome, refundDue: true, cancelledAt: now, finishedAt: now, completedAt: now, failureReason: `Cancelled; ${why}.` };
    } else if (!finishing && attempts >= maxAttempts) {
      outcome = 'FAILED';
      const detail = `it has used ${attempts} of ${maxAttempts} attempts`;
      set = {
        status: outcome,
        refundDue: true,
        finishedAt: now,
        completedAt: now,
        failureClass: 'infrastructure' satisfies FailureClass,
        failureReason: `Training stopped because ${why} and ${detail}. Your points are refunded.`,
      };
    } else {
      outcome = 'QUEUED';
      // The platform's UI reads progress and currentStep: a re-queued job starts over, unless a stored engine
      // state lets the next claim resume (then the progress stays where that state was saved).
      const resumeStep = record?.state?.resumeState?.step;
      set =
        typeof resumeStep === 'number' && resumeStep > 0
          ? {
              status: outcome,
              lease: null,
              currentStep: resumeStep,
              etaSeconds: null,
              ...(typeof job.totalSteps === 'number' && job.totalSteps > 0 ? { progress: clamp(Math.round((resumeStep / job.totalSteps) * 1000) / 10, 0, 100) } : {}),
            }
          : { status: outcome, lease: null, progress: 0, currentStep: 0, etaSeconds: null };
      const names = { release: ['lastReleasedAt', 'lastReleaseReason'], expired: ['lastLeaseExpiredAt', 'lastRecoveryReason'], retry: ['lastRetryAt', 'lastRetryReason'] }[mode];
      set[names[0]] = now;
      set[names[1]] = finishing ? `${why}; re-queued to finish (the model is registered or the outcome decided)` : why;
      inc = mode === 'release' ? { attempts: -1, releases: 1 } : mode === 'expired' ? { leaseExpiries: 1 } : { retries: 1 };
    }
    set['updatedAt'] = now;
    const update: UpdateFilter<TrainingJobDoc> = { $set: set };
    if (inc) update.$inc = inc as UpdateFilter<TrainingJobDoc>['$inc'];
    const r = await this.jobs.updateOne(filter as Filter<TrainingJobDoc>, update);
    return r.matchedCount === 1 ? outcome : null;
  }
}

/** See TrainingJobRepository.observeWrites. */
export type JobWriteObserver = (job: TrainingJobDoc, kind: 'write' | 'claim') => void;

function ownedFields(fields: Record<string, unknown>): Record<string, unknown> {
  const out: Record<string, unknown> = {};
  for (const [key, value] of Object.entries(fields)) {
    if (value === undefined) continue;
    const root = key.split('.')[0];
    if (RESERVED_FIELDS.has(root)) {
      throw new Error(`Field "${key}" is managed by the job lifecycle and cannot be set through transition fields.`);
    }
    out[key] = value;
  }
  return out;
}

function clamp(n: number, lo: number, hi: number): number {
  return Math.min(hi, Math.max(lo, n));
}

/** FerretDB rejects NaN and ±Infinity doubles; an engine can print "loss: nan". */
function finiteOrNull(n: number | null): number | null {
  return n !== null && Number.isFinite(n) ? n : null;
}

function cleanLogLine(line: string): string {
  // FerretDB rejects NUL characters in strings; ANSI colour codes are noise in the UI.
  // eslint-disable-next-line no-control-regex
  const clean = line.replace(/\u0000/g, '').replace(/\u001b\[[0-9;]*[A-Za-z]/g, '');
  return clean.length > MAX_LOG_LINE_CHARS ? `${clean.slice(0, MAX_LOG_LINE_CHARS)}…` : clean;
}
