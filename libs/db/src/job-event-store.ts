/**
 * The durable job event outbox, `trainingJobEvents` (ADR 0010).
 *
 * Guarantees, for any number of writers in any number of processes:
 * - Positions are dense: 1, 2, 3, … with no gap. Position n+1 is only ever
 *   tried by a writer that has seen position n stored, so n exists (and is
 *   visible) before n+1 can exist.
 * - A reader that asks for `seq > position` and reads up to the first missing
 *   position never misses an event: anything stored later gets a larger
 *   position than every event already visible.
 * - Each event id is stored at most once (a unique index on `eventId`), so
 *   re-emitting an event (a worker and the reconciler, two workers) is a
 *   no-op. Where a server did not enforce that index under concurrency the
 *   same id could appear at two positions; consumers deduplicate by id anyway.
 * - Events are never updated or deleted (density depends on it; a future
 *   retention must delete only below every consumer's position and keep the
 *   newest event).
 *
 * Why `_id` is the position and not the event id: FerretDB v1 pushes down only
 * `_id` equality; every other filter or sort scans the collection (measured on
 * this project's FerretDB: ~400 ms per query at 20,000 events). With dense
 * positions as `_id`, the head is found by O(log n) point reads, a reader walks
 * point reads from its position, and an insert is one point write. On MongoDB a
 * read is one range query on `_id`.
 */
import type { Collection, Db, Filter } from 'mongodb';
import { inject, injectable } from 'tsyringe';
import { ensureNamedIndexes, isDuplicateKeyError } from '@stationthis/common';
import { MONGO_DB } from './mongo';
import type { TrainingEnvironment } from './training-job';
import {
  TRAINING_JOB_EVENTS_COLLECTION,
  type JobEvent,
  type JobEventDoc,
  type JobEventDraft,
  type JobEventType,
} from './job-events';

export interface ReadEventsOptions {
  /** The position already consumed (0 = from the start). */
  after: number;
  /** Most events to return (default 100). */
  limit?: number;
  /** Only these types (the returned `position` still moves past the others). */
  types?: readonly JobEventType[];
  /** Only this job's events. */
  jobId?: string;
  /**
   * Only events of these environments (dev and prod workers share the outbox).
   * Absent or empty: every environment. An event stored without one is production.
   */
  environments?: readonly TrainingEnvironment[];
  /** Most positions to look at in one call when filtering (default 1000). */
  maxScan?: number;
}

export interface ReadEventsResult {
  events: JobEvent[];
  /** The position to pass as `after` next time: every position up to it was looked at. */
  position: number;
}

export interface AppendResult {
  /** Events stored by this call (with their positions). */
  stored: JobEvent[];
  /** Drafts whose id was already stored. */
  duplicates: number;
}

const KNOWN_IDS_MAX = 50_000;
const PROBE_CONCURRENCY = 32;

@injectable()
export class JobEventStore {
  private readonly events: Collection<JobEventDoc>;
  /** The highest position this process has seen stored (a lower bound of the real head). */
  private knownHead: number | null = null;
  /** One append at a time in this process: writers of one process never race each other for a position. */
  private appendTail: Promise<unknown> = Promise.resolve();
  /** Ids known to be stored: re-emitting them costs no round trip. Bounded; forgetting one only costs a write attempt. */
  private readonly knownIds = new Set<string>();
  private ferret: boolean | undefined;

  constructor(@inject(MONGO_DB) private readonly db: Db) {
    this.events = db.collection<JobEventDoc>(TRAINING_JOB_EVENTS_COLLECTION);
  }

  async ensureIndexes(): Promise<void> {
    await ensureNamedIndexes(this.events, [
      { key: { eventId: 1 }, name: 'st_event_id', unique: true },
      // Per-job history on MongoDB (FerretDB scans whatever the index).
      { key: { jobId: 1, _id: 1 }, name: 'st_job_events' },
    ]);
  }

  /**
   * Store each draft that is not stored yet, in the given order, each at the
   * next free position. Returns what this call stored. Throws only when the
   * database fails (the caller logs it; the reconciler derives the events again).
   */
  append(drafts: readonly JobEventDraft[], source: string): Promise<AppendResult> {
    const run = this.appendTail.then(() => this.appendNow(drafts, source));
    this.appendTail = run.catch(() => undefined);
    return run;
  }

  private async appendNow(drafts: readonly JobEventDraft[], source: string): Promise<AppendResult> {
    const result: AppendResult = { stored: [], duplicates: 0 };
    for (const draft of drafts) {
      if (this.knownIds.has(draft.id)) {
        result.duplicates++;
        continue;
      }
      const stored = await this.insertAtNextPosition(draft, source);
      this.remember(draft.id);
      if (stored) result.stored.push(stored);
      else result.duplicates++;
    }
    return result;
  }

  /**
   * Insert at head+1; a duplicate `_id` means another writer took that
   * position first (move on), a duplicate `eventId` means the event is already
   * stored (done). The two are told apart by reading the position.
   */
  private async insertAtNextPosition(draft: JobEventDraft, source: string): Promise<JobEvent | null> {
    let head = this.knownHead ?? (await this.findHead(0));
    for (let lost = 0; ; lost++) {
      const seq = head + 1;
      const doc: JobEventDoc = {
        _id: seq,
        eventId: draft.id,
        type: draft.type,
        jobId: draft.jobId,
        environment: draft.environment,
        attempt: draft.attempt,
        at: draft.at,
        payload: draft.payload,
        recordedAt: new Date(),
        source,
      };
      try {
        await this.events.insertOne(doc);
        this.knownHead = Math.max(this.knownHead ?? 0, seq);
        return toEvent(doc);
      } catch (err) {
        if (!isDuplicateKeyError(err)) throw err;
      }
      const atSeq = await this.events.findOne({ _id: seq } as Filter<JobEventDoc>, { projection: { eventId: 1 } });
      if (!atSeq) return null; // the position is free, so the refusal was the event id: already stored
      this.knownHead = Math.max(this.knownHead ?? 0, seq);
      if (atSeq.eventId === draft.id) return null;
      // Another writer (maybe several) got ahead: back off a little (random, growing) so racing writers spread
      // out, then skip to the real head instead of walking one by one.
      await new Promise((r) => setTimeout(r, Math.random() * 2 ** Math.min(lost, 5)));
      head = await this.findHead(seq);
    }
  }

  /** The newest position (0 when empty). */
  async head(): Promise<number> {
    const head = await this.findHead(this.knownHead ?? 0);
    this.knownHead = head;
    return head;
  }

  /**
   * The highest stored position, found from a known one by galloping then
   * bisecting over point reads (valid because positions are dense).
   */
  private async findHead(from: number): Promise<number> {
    let lo = from;
    let step = 1;
    while (await this.exists(lo + step)) {
      lo += step;
      step *= 2;
    }
    let hi = lo + step; // known missing
    while (hi - lo > 1) {
      const mid = Math.floor((lo + hi) / 2);
      if (await this.exists(mid)) lo = mid;
      else hi = mid;
    }
    return lo;
  }

  private async exists(seq: number): Promise<boolean> {
    return (await this.events.findOne({ _id: seq } as Filter<JobEventDoc>, { projection: { _id: 1 } })) !== null;
  }

  /**
   * Events after `after`, in position order, up to the first position not
   * stored yet (nothing after it can be visible without it). With filters, the
   * returned `position` moves past the events that did not match, so a
   * filtered follower never reads them again.
   */
  async readEvents(options: ReadEventsOptions): Promise<ReadEventsResult> {
    const limit = Math.max(1, options.limit ?? 100);
    const filtered = Boolean(options.types?.length || options.jobId || options.environments?.length);
    const maxScan = Math.max(limit, filtered ? (options.maxScan ?? 1000) : limit);
    const matches = (d: JobEventDoc) =>
      (!options.types?.length || options.types.includes(d.type)) &&
      (!options.jobId || d.jobId === options.jobId) &&
      (!options.environments?.length || options.environments.includes(d.environment ?? 'production'));
    const out: JobEvent[] = [];
    let position = Math.max(0, Math.floor(options.after));
    let scanned = 0;
    while (out.length < limit && scanned < maxScan) {
      const wanted = Math.min(PROBE_CONCURRENCY * 4, maxScan - scanned, filtered ? Number.MAX_SAFE_INTEGER : limit - out.length);
      const chunk = await this.readContiguous(position, wanted);
      for (const doc of chunk) {
        if (out.length >= limit) break;
        position = doc._id;
        scanned++;
        if (matches(doc)) out.push(toEvent(doc));
      }
      // Fewer than asked: the next position is not stored yet, so nothing after it is visible.
      if (chunk.length < wanted) break;
    }
    return { events: out, position };
  }

  /** Up to `count` stored events at after+1, after+2, … stopping before the first missing position. */
  private async readContiguous(after: number, count: number): Promise<JobEventDoc[]> {
    if (count <= 0) return [];
    if (!(await this.isFerret())) {
      const docs = await this.events
        .find({ _id: { $gt: after, $lte: after + count } } as Filter<JobEventDoc>)
        .sort({ _id: 1 })
        .toArray();
      return contiguousFrom(after, docs);
    }
    const out: JobEventDoc[] = [];
    for (let start = after + 1; start <= after + count; start += PROBE_CONCURRENCY) {
      const ids = Array.from({ length: Math.min(PROBE_CONCURRENCY, after + count - start + 1) }, (_, i) => start + i);
      const docs = await Promise.all(ids.map((id) => this.events.findOne({ _id: id } as Filter<JobEventDoc>)));
      for (const d of docs) {
        if (!d) return out;
        out.push(d);
      }
    }
    return out;
  }

  /**
   * Follow the stream from `after`: yields each matching event once, in
   * order, polling every `pollMs` when caught up, until `signal` aborts.
   * The caller stores `event.seq` as its position once it has handled it.
   */
  async *follow(options: Omit<ReadEventsOptions, 'limit'> & { pollMs?: number; signal?: AbortSignal; batch?: number }): AsyncGenerator<JobEvent> {
    let after = options.after;
    const pollMs = options.pollMs ?? 1000;
    while (!options.signal?.aborted) {
      const { events, position } = await this.readEvents({ ...options, after, limit: options.batch ?? 100 });
      for (const e of events) yield e;
      const moved = position !== after;
      after = position;
      if (!moved) await sleep(pollMs, options.signal);
    }
  }

  private remember(id: string): void {
    if (this.knownIds.size >= KNOWN_IDS_MAX) this.knownIds.clear();
    this.knownIds.add(id);
  }

  private async isFerret(): Promise<boolean> {
    if (this.ferret === undefined) {
      try {
        const info = await this.db.admin().command({ buildInfo: 1 });
        this.ferret = 'ferretdbVersion' in info;
      } catch {
        this.ferret = false;
      }
    }
    return this.ferret;
  }
}

function contiguousFrom(after: number, docs: JobEventDoc[]): JobEventDoc[] {
  const out: JobEventDoc[] = [];
  let expect = after + 1;
  for (const d of docs) {
    if (d._id !== expect) break;
    out.push(d);
    expect++;
  }
  return out;
}

function toEvent(doc: JobEventDoc): JobEvent {
  return { id: doc.eventId, seq: doc._id, type: doc.type, jobId: doc.jobId, environment: doc.environment ?? 'production', attempt: doc.attempt, at: doc.at, payload: doc.payload };
}

function sleep(ms: number, signal?: AbortSignal): Promise<void> {
  return new Promise((resolve) => {
    if (signal?.aborted) return resolve();
    const t = setTimeout(done, ms);
    function done() {
      clearTimeout(t);
      signal?.removeEventListener('abort', done);
      resolve();
    }
    signal?.addEventListener('abort', done, { once: true });
  });
}
