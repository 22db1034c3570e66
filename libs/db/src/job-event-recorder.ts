/**
 * Puts job events into the outbox (ADR 0010), two ways:
 *
 * 1. Right after each of our writes: TrainingJobRepository hands every job
 *    write's resulting document to `onJobWritten` (read in the same serialized
 *    slot as the write, so each status this process writes is seen, however
 *    quickly the next one follows). Never awaited by the write's caller.
 * 2. The reconciler (`reconcile`): derives the events that each recently
 *    changed job, its attempt record and its settle decision imply, and stores
 *    the missing ones. It recovers an event lost to a worker killed between its
 *    write and the event, and writes the events of changes made by others (the
 *    platform's Cancel, Retry and sweeper). It sees only the current state of
 *    a document: a status that came and went while nobody emitted is not
 *    invented.
 *
 * Both derive the same deterministic ids, so each event is stored once.
 */
import type { Collection, Db, Filter } from 'mongodb';
import { inject, injectable } from 'tsyringe';
import { ensureNamedIndexes, toObjectIdOrString } from '@stationthis/common';
import { JobEventStore } from './job-event-store';
import { eventsImpliedBy, JOB_EVENT_FIELDS, queuedBeforeClaimEvent, stalledEvent, type JobEvent, type JobEventDraft } from './job-events';
import { TERMINAL_STATUSES } from './job-status';
import { MONGO_DB } from './mongo';
import {
  attemptKey,
  platformAttemptOf,
  TRAINING_ATTEMPTS_COLLECTION,
  TRAINING_SETTLEMENTS_COLLECTION,
  type SettlementDecisionDoc,
  type TrainingAttemptDoc,
} from './training-attempt';
import { TRAINING_JOBS_COLLECTION, type TrainingJobDoc } from './training-job';

export interface ReconcileOptions {
  /** Jobs looked at per pass (default 500): a pass is bounded, the next one continues. */
  batch?: number;
  /** RUNNING with the same step this long emits job.stalled (0 = off; default 0). */
  stallMs?: number;
  now?: Date;
}

export interface ReconcileResult {
  jobsChecked: number;
  stored: JobEvent[];
}

/** How far back the first pass of a process looks, and how much each pass re-reads (clocks of other writers). */
const FIRST_PASS_LOOKBACK_MS = 24 * 3_600_000;
const OVERLAP_MS = 60_000;

const PROJECTION: Record<string, 1> = Object.fromEntries(JOB_EVENT_FIELDS.map((f) => [f, 1] as const));

@injectable()
export class JobEventRecorder {
  private readonly jobs: Collection<TrainingJobDoc>;
  private readonly attempts: Collection<TrainingAttemptDoc>;
  private readonly decisions: Collection<SettlementDecisionDoc>;
  /** Per job, the emissions in flight (a job's events are stored in the order its writes happened). */
  private readonly chains = new Map<string, Promise<void>>();
  private readonly storedListeners: Array<(events: JobEvent[], source: string) => void> = [];
  private errorListener: (err: unknown, jobId: string) => void = () => undefined;
  /** The reconciler's scan position: jobs updated at or after it (minus the overlap) are looked at. */
  private watermark: Date | null = null;
  /** Jobs last seen non-terminal: re-read by `_id` each pass, so a change that did not touch updatedAt is seen too. */
  private readonly watched = new Set<string>();
  /** RUNNING jobs: the step and since when it has not moved (stall detection). */
  private readonly stepSeen = new Map<string, { key: string; since: Date }>();

  constructor(
    @inject(MONGO_DB) db: Db,
    private readonly store: JobEventStore,
  ) {
    this.jobs = db.collection<TrainingJobDoc>(TRAINING_JOBS_COLLECTION);
    this.attempts = db.collection<TrainingAttemptDoc>(TRAINING_ATTEMPTS_COLLECTION);
    this.decisions = db.collection<SettlementDecisionDoc>(TRAINING_SETTLEMENTS_COLLECTION);
  }

  async ensureIndexes(): Promise<void> {
    await this.store.ensureIndexes();
    // The reconciler's scan on MongoDB (FerretDB v1 scans regardless).
    await ensureNamedIndexes(this.jobs, [{ key: { updatedAt: 1 }, name: 'st_updated_at' }]);
  }

  /** Called with each batch this recorder stored (metrics, logs). */
  onStored(listener: (events: JobEvent[], source: string) => void): void {
    this.storedListeners.push(listener);
  }

  /** Called when storing a job's events failed (the reconciler stores them later). */
  onError(listener: (err: unknown, jobId: string) => void): void {
    this.errorListener = listener;
  }

  /** The fields the repository's write observer reads (projection). */
  static readonly observedFields = PROJECTION;

  /**
   * A job document as our write (or claim) left it. Returns at once; the
   * events are stored in the background, in write order per job.
   */
  onJobWritten(job: Partial<TrainingJobDoc> & { _id: unknown }, kind: 'write' | 'claim' = 'write'): void {
    const jobId = String(job._id);
    const snapshot = { ...job };
    const claimed = kind === 'claim' ? queuedBeforeClaimEvent(jobId, snapshot) : null;
    this.enqueue(jobId, async () => {
      const drafts = await this.implied(jobId, snapshot);
      return claimed ? [claimed, ...drafts] : drafts;
    }, 'worker');
  }

  /** Every emission started so far has finished (stored or failed). */
  async flush(): Promise<void> {
    while (this.chains.size > 0) await Promise.all([...this.chains.values()]);
  }

  /**
   * One bounded reconciler pass: jobs updated since the last pass (at most
   * `batch`), plus the jobs seen non-terminal before. Safe on every worker at
   * once (each event id is stored once).
   */
  async reconcile(options: ReconcileOptions = {}): Promise<ReconcileResult> {
    const now = options.now ?? new Date();
    const batch = Math.max(1, options.batch ?? 500);
    const since = this.watermark ?? new Date(now.getTime() - FIRST_PASS_LOOKBACK_MS);
    const recent = await this.jobs
      .find({ updatedAt: { $gte: since } } as Filter<TrainingJobDoc>, { projection: PROJECTION })
      .sort({ updatedAt: 1, _id: 1 })
      .limit(batch)
      .toArray();
    const byId = new Map<string, Partial<TrainingJobDoc> & { _id: unknown }>(recent.map((j) => [String(j._id), j]));
    for (const id of [...this.watched]) {
      if (byId.has(id)) continue;
      const job = await this.jobs.findOne({ _id: toObjectIdOrString(id) } as Filter<TrainingJobDoc>, { projection: PROJECTION });
      if (job) byId.set(id, job);
      else this.watched.delete(id);
    }
    const stored: JobEvent[] = [];
    for (const [jobId, job] of byId) {
      if (TERMINAL_STATUSES.includes(job.status as never)) this.watched.delete(jobId);
      else this.watched.add(jobId);
      const drafts = await this.implied(jobId, job);
      const stalled = this.stallCheck(jobId, job, options.stallMs ?? 0, now);
      if (stalled) drafts.push(stalled);
      const r = await this.store.append(drafts, 'reconciler');
      stored.push(...r.stored);
    }
    // A full batch: page on from the newest seen (never backwards, so a busy minute cannot hold the scan in place).
    // Caught up: the next pass re-reads the last OVERLAP_MS, for writers whose clocks run behind ours.
    const last = recent.at(-1)?.updatedAt;
    if (recent.length < batch) this.watermark = new Date(now.getTime() - OVERLAP_MS);
    else if (last instanceof Date) this.watermark = new Date(Math.max(last.getTime(), since.getTime() + 1));
    if (stored.length) for (const l of this.storedListeners) l(stored, 'reconciler');
    return { jobsChecked: byId.size, stored };
  }

  /** Stores every event the job's documents imply now (one job; tests and the CLI). */
  async syncJob(jobId: string): Promise<JobEvent[]> {
    const job = await this.jobs.findOne({ _id: toObjectIdOrString(jobId) } as Filter<TrainingJobDoc>, { projection: PROJECTION });
    const r = await this.store.append(await this.implied(jobId, job), 'reconciler');
    return r.stored;
  }

  private async implied(jobId: string, job: (Partial<TrainingJobDoc> & { _id?: unknown }) | null): Promise<JobEventDraft[]> {
    if (!job) return [];
    const key = attemptKey(jobId, platformAttemptOf(job as Record<string, unknown>));
    const [record, decision] = await Promise.all([this.attempts.findOne({ _id: key }), this.decisions.findOne({ _id: key })]);
    return eventsImpliedBy(jobId, job, record, decision);
  }

  private stallCheck(jobId: string, job: Partial<TrainingJobDoc>, stallMs: number, now: Date): JobEventDraft | null {
    if (stallMs <= 0 || job.status !== 'RUNNING') {
      this.stepSeen.delete(jobId);
      return null;
    }
    const key = `${job.claimSeq ?? 0}:${job.currentStep ?? 0}`;
    const seen = this.stepSeen.get(jobId);
    if (!seen || seen.key !== key) {
      this.stepSeen.set(jobId, { key, since: now });
      return null;
    }
    return now.getTime() - seen.since.getTime() >= stallMs ? stalledEvent(jobId, job, seen.since, now) : null;
  }

  private enqueue(jobId: string, derive: () => Promise<JobEventDraft[]>, source: string): void {
    const previous = this.chains.get(jobId) ?? Promise.resolve();
    const next = previous.then(async () => {
      try {
        const r = await this.store.append(await derive(), source);
        if (r.stored.length) for (const l of this.storedListeners) l(r.stored, source);
      } catch (err) {
        this.errorListener(err, jobId);
      }
    });
    this.chains.set(jobId, next);
    void next.then(() => {
      if (this.chains.get(jobId) === next) this.chains.delete(jobId);
    });
  }
}
