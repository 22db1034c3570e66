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
 *
 * A pass is bounded (ADR 0010, Implementation Log): at most `batch` changed
 * jobs, paged by (updatedAt, _id); at most `maxWatched` watched jobs re-read by
 * `_id`, rotating through the set; only leased or cancel-pending jobs are
 * watched (a QUEUED job's changes by the platform move its updatedAt); and a
 * job whose status, claim and updatedAt did not change since the last pass is
 * not derived again.
 */
import type { Collection, Db, Filter } from 'mongodb';
import { inject, injectable } from 'tsyringe';
import { ensureNamedIndexes, toObjectIdOrString } from '@stationthis/common';
import { JobEventStore } from './job-event-store';
import { eventsImpliedBy, JOB_EVENT_FIELDS, queuedBeforeClaimEvent, stalledEvent, type JobEvent, type JobEventDraft } from './job-events';
import { LEASED_STATUSES, TERMINAL_STATUSES } from './job-status';
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
  /** RUNNING with the same step (from step 1 on) this long emits job.stalled (0 = off; default 0). */
  stallMs?: number;
  /** Watched jobs re-read per pass (default 200): the rest are read in later passes, in turn. */
  maxWatched?: number;
  now?: Date;
}

export interface ReconcileResult {
  jobsChecked: number;
  stored: JobEvent[];
}

/** How far back the first pass of a process looks, and how much each pass re-reads (clocks of other writers). */
const FIRST_PASS_LOOKBACK_MS = 24 * 3_600_000;
const OVERLAP_MS = 60_000;
/** Point reads of watched jobs in flight at once (each is an `_id` read, pushed down on FerretDB). */
const WATCH_READ_CONCURRENCY = 8;
/** Jobs remembered as "derived in this state" (bounded; forgetting one costs one derivation). */
const LAST_DERIVED_MAX = 20_000;

type ObservedJob = Partial<TrainingJobDoc> & { _id: unknown };

/** Where the scan of changed jobs continues: after (at, id), or from `at` inclusive when `id` is null. */
interface Watermark {
  at: Date;
  id: unknown;
}

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
  /** The reconciler's scan position, in (updatedAt, _id) order. */
  private watermark: Watermark | null = null;
  /**
   * Jobs last seen leased or with a cancel pending: re-read by `_id` (in turn, at
   * most `maxWatched` a pass), so a change that did not touch updatedAt (the
   * platform's bare `$set status`) is seen too. Insertion order is the rotation.
   */
  private readonly watched = new Set<string>();
  /** Per job, the state its events were last derived from (skip when unchanged). */
  private readonly lastDerived = new Map<string, string>();
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
   * `batch`, paged by (updatedAt, _id)), plus at most `maxWatched` of the jobs
   * seen leased or cancel-pending before. Safe on every worker at once (each
   * event id is stored once).
   */
  async reconcile(options: ReconcileOptions = {}): Promise<ReconcileResult> {
    const now = options.now ?? new Date();
    const batch = Math.max(1, options.batch ?? 500);
    const maxWatched = Math.max(0, options.maxWatched ?? 200);
    const mark = this.watermark ?? { at: new Date(now.getTime() - FIRST_PASS_LOOKBACK_MS), id: null };
    const recent = await this.jobs
      .find(afterWatermark(mark), { projection: PROJECTION })
      .sort({ updatedAt: 1, _id: 1 })
      .limit(batch)
      .toArray();
    const byId = new Map<string, ObservedJob>(recent.map((j) => [String(j._id), j]));
    for (const job of await this.readWatched(byId, maxWatched)) byId.set(String(job._id), job);
    const stored: JobEvent[] = [];
    for (const [jobId, job] of byId) {
      if (isWatchable(job)) this.watched.add(jobId);
      else this.watched.delete(jobId);
      const changed = this.changedSinceLastPass(jobId, job);
      const drafts = changed ? await this.implied(jobId, job) : [];
      const stalled = this.stallCheck(jobId, job, options.stallMs ?? 0, now);
      if (stalled) drafts.push(stalled);
      if (drafts.length) stored.push(...(await this.store.append(drafts, 'reconciler')).stored);
      // Remembered only once stored: a failed append throws before this, and the next pass derives again.
      if (changed) this.rememberDerived(jobId, job);
    }
    // A full batch: page on strictly after the last (updatedAt, _id) seen, so jobs sharing its updatedAt are not skipped.
    // Caught up: the next pass re-reads the last OVERLAP_MS, for writers whose clocks run behind ours.
    const last = recent.at(-1);
    if (recent.length < batch) this.watermark = { at: new Date(now.getTime() - OVERLAP_MS), id: null };
    else if (last && last.updatedAt instanceof Date) this.watermark = { at: last.updatedAt, id: last._id };
    if (stored.length) for (const l of this.storedListeners) l(stored, 'reconciler');
    return { jobsChecked: byId.size, stored };
  }

  /**
   * Up to `max` watched jobs not already in this pass, read by `_id` a few at
   * a time; the ones read move to the back of the rotation.
   */
  private async readWatched(inPass: Map<string, unknown>, max: number): Promise<ObservedJob[]> {
    const ids: string[] = [];
    for (const id of this.watched) {
      if (ids.length >= max) break;
      if (!inPass.has(id)) ids.push(id);
    }
    const out: ObservedJob[] = [];
    for (let i = 0; i < ids.length; i += WATCH_READ_CONCURRENCY) {
      const chunk = ids.slice(i, i + WATCH_READ_CONCURRENCY);
      const docs = await Promise.all(chunk.map((id) => this.jobs.findOne({ _id: toObjectIdOrString(id) } as Filter<TrainingJobDoc>, { projection: PROJECTION })));
      chunk.forEach((id, k) => {
        this.watched.delete(id);
        const doc = docs[k];
        if (!doc) {
          this.lastDerived.delete(id);
          return;
        }
        this.watched.add(id); // to the back of the rotation
        out.push(doc);
      });
    }
    return out;
  }

  private changedSinceLastPass(jobId: string, job: ObservedJob): boolean {
    return this.lastDerived.get(jobId) !== derivedStateKey(job);
  }

  private rememberDerived(jobId: string, job: ObservedJob): void {
    if (this.lastDerived.size >= LAST_DERIVED_MAX) this.lastDerived.clear();
    this.lastDerived.set(jobId, derivedStateKey(job));
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

  /** Armed only from step 1: the pre-training phases (latent and text encoder caching) report step 0 and may be long. */
  private stallCheck(jobId: string, job: Partial<TrainingJobDoc>, stallMs: number, now: Date): JobEventDraft | null {
    const step = typeof job.currentStep === 'number' ? job.currentStep : 0;
    if (stallMs <= 0 || job.status !== 'RUNNING' || step < 1) {
      this.stepSeen.delete(jobId);
      return null;
    }
    const key = `${job.claimSeq ?? 0}:${step}`;
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

/** Jobs whose state can change without their updatedAt moving (a leased job, a cancel the owner has not acted on yet). */
function isWatchable(job: Partial<TrainingJobDoc>): boolean {
  if (TERMINAL_STATUSES.includes(job.status as never)) return false;
  return LEASED_STATUSES.includes(job.status as never) || job.cancelRequestedAt instanceof Date;
}

/**
 * What the derived events depend on. updatedAt is part of it because a
 * checkpoint or settlement of a job moves it without a status change (and a
 * watched job re-read with nothing new keeps it, so it is skipped).
 */
function derivedStateKey(job: Partial<TrainingJobDoc>): string {
  const updated = job.updatedAt instanceof Date ? job.updatedAt.getTime() : 0;
  return `${String(job.status)}:${job.claimSeq ?? 0}:${job.retryCount ?? 0}:${updated}`;
}

/** The changed-jobs scan from a watermark: strictly after (at, id), or from `at` when id is null. */
function afterWatermark(mark: Watermark): Filter<TrainingJobDoc> {
  if (mark.id === null) return { updatedAt: { $gte: mark.at } } as Filter<TrainingJobDoc>;
  return { $or: [{ updatedAt: { $gt: mark.at } }, { updatedAt: mark.at, _id: { $gt: mark.id } }] } as Filter<TrainingJobDoc>;
}
