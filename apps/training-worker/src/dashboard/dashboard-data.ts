/**
 * Reads what the dashboard shows, read-only, from the platform database, the
 * points journal, the models bucket and this worker's memory (slots, live log
 * lines). Shaping is dashboard-views.ts's.
 */
import { execFile } from 'node:child_process';
import type { Readable } from 'node:stream';
import type { Db, Filter } from 'mongodb';
import {
  environmentFilter,
  LEASED_STATUSES,
  platformAttemptOf,
  TERMINAL_STATUSES,
  TRAINING_JOBS_COLLECTION,
  TrainingAttemptRepository,
  TrainingJobRepository,
  type TrainingJobDoc,
} from '@stationthis/db';
import type { GpuInventory } from '@stationthis/docker';
import type { PointsLedger } from '@stationthis/points';
import { attemptLogPrefix, type ObjectStorage } from '@stationthis/storage';
import type { WorkerConfig } from '../config/worker-config';
import type { JobActivity } from './job-activity';
import { isServableImageKey, jobDetail, jobSummary, queueView, slotsView, type JobDetailView, type OverviewView } from './dashboard-views';

/** Queued jobs listed (the total is counted apart); recent terminal jobs listed. */
const QUEUE_LIST_LIMIT = 100;
const RECENT_LIMIT = 25;
/** A finished job's stored log is read from its end: this many bytes, then its last lines. */
const STORED_LOG_BYTES = 64 * 1024;
const STORED_LOG_LINES = 300;
const FREE_VRAM_CACHE_MS = 5000;

/** The claim order (TrainingJobRepository's CLAIM_SORT): priority first, then oldest, then `_id`. */
const CLAIM_ORDER = { priority: -1, createdAt: 1, _id: 1 } as const;

export interface DashboardSources {
  db: Db;
  jobs: TrainingJobRepository;
  attempts: TrainingAttemptRepository;
  ledger: PointsLedger;
  storage: ObjectStorage;
  inventory: GpuInventory;
  activity: JobActivity;
  config: Pick<WorkerConfig, 'workerId' | 'environment' | 'maxAttempts'>;
  /** Free VRAM per GPU index (nvidia-smi), replaceable in tests. */
  readFreeVram?: () => Promise<Map<number, number> | null>;
}

export class DashboardData {
  private readonly collection;
  private vram: { at: number; value: Promise<Map<number, number> | null> } | null = null;
  /** A finished platform attempt's stored log never changes: read once per job and attempt (bounded). */
  private readonly storedLogs = new Map<string, string[]>();

  constructor(private readonly src: DashboardSources) {
    this.collection = src.db.collection<TrainingJobDoc>(TRAINING_JOBS_COLLECTION);
  }

  async overview(now = new Date()): Promise<OverviewView> {
    const env = environmentFilter(this.src.config.environment);
    const queuedFilter = { status: 'QUEUED', ...env } as Filter<TrainingJobDoc>;
    const [queued, total, leased, recent, freeVram] = await Promise.all([
      this.collection.find(queuedFilter).sort(CLAIM_ORDER).limit(QUEUE_LIST_LIMIT).toArray(),
      this.collection.countDocuments(queuedFilter),
      this.collection.find({ status: { $in: [...LEASED_STATUSES] }, ...env } as Filter<TrainingJobDoc>).sort({ createdAt: 1 }).limit(200).toArray(),
      this.collection.find({ status: { $in: [...TERMINAL_STATUSES] }, ...env } as Filter<TrainingJobDoc>).sort({ updatedAt: -1 }).limit(RECENT_LIMIT).toArray(),
      this.freeVram(),
    ]);
    const mine = leased.filter((j) => j.lease?.workerId === this.src.config.workerId);
    const { slots, preparing } = slotsView(this.src.inventory, mine, freeVram, now);
    return {
      now: now.toISOString(),
      worker: { id: this.src.config.workerId, environment: this.src.config.environment },
      slots,
      preparing,
      queue: queueView(queued, total, now),
      running: leased.map(jobSummary),
      recent: recent.map(jobSummary),
    };
  }

  /** One job as the dashboard shows it, or null when there is no such job. `logSince`: only newer live lines. */
  async job(jobId: string, opts: { logSince?: number; now?: Date } = {}): Promise<JobDetailView | null> {
    const job = await this.src.jobs.findById(jobId).catch(() => null);
    if (!job) return null;
    const id = String(job._id);
    const platformAttempt = typeof job.retryCount === 'number' ? job.retryCount : 0;
    const [records, decision, summary, movements, log] = await Promise.all([
      this.src.attempts.findForJob(id),
      this.src.attempts.findDecision(id, platformAttempt),
      this.src.ledger.jobSummary(id).catch(() => null),
      this.src.ledger.history({ jobId: id }).catch(() => []),
      this.log(job, opts.logSince),
    ]);
    return jobDetail({ job, records, decision, summary, movements, log, workerId: this.src.config.workerId, maxAttempts: this.src.config.maxAttempts, now: opts.now ?? new Date() });
  }

  /**
   * A sample image of the job, streamed from the private models bucket; null
   * when the key is not one of the job's recorded images (nothing else of the
   * bucket is reachable through the dashboard).
   */
  async image(jobId: string, key: string): Promise<{ body: Readable; bytes: number; contentType: string } | null> {
    const records = await this.src.attempts.findForJob(jobId);
    if (!isServableImageKey(jobId, key, records)) return null;
    const o = await this.src.storage.getObjectStream('models', key);
    const contentType = /\.png$/i.test(key) ? 'image/png' : /\.webp$/i.test(key) ? 'image/webp' : 'image/jpeg';
    return { body: o.body, bytes: o.bytes, contentType };
  }

  /**
   * The log the dashboard shows: this worker's live lines while it holds the
   * job; for a finished job its stored log (the attempt's train.log in the
   * models bucket); else the job document's short tail.
   */
  private async log(job: TrainingJobDoc, since?: number): Promise<JobDetailView['log']> {
    const id = String(job._id);
    const live = this.src.activity.tail(id, since);
    const terminal = TERMINAL_STATUSES.includes(job.status);
    if (live && !terminal) return { source: 'live', seq: live.seq, lines: live.lines };
    if (terminal) {
      const stored = await this.storedLog(id, platformAttemptOf(job)).catch(() => null);
      if (stored?.length) return { source: 'stored', seq: null, lines: stored };
    }
    if (live) return { source: 'live', seq: live.seq, lines: live.lines };
    const tail = Array.isArray(job.logTail) ? job.logTail.map(String) : [];
    return { source: tail.length ? 'job-document' : 'none', seq: null, lines: tail };
  }

  /** The job's current platform attempt's log: the one its attempt record names, else the newest its claims stored. */
  private async storedLog(jobId: string, platformAttempt: number): Promise<string[] | null> {
    const cacheKey = `${jobId}:${platformAttempt}`;
    const cached = this.storedLogs.get(cacheKey);
    if (cached) return cached;
    const recordedUrl = (await this.src.attempts.find(jobId, platformAttempt))?.state.upload?.logUrl;
    const recorded = recordedUrl ? this.src.storage.matchOwnUrl(recordedUrl) : null;
    // A failed or cancelled attempt records no upload: its claims' logs are listed under the attempt's prefix.
    const keys = recorded?.bucketAlias === 'models' && recorded.key ? [recorded.key] : (await this.src.storage.listKeys('models', attemptLogPrefix(jobId, platformAttempt))).filter((k) => k.endsWith('.log'));
    if (keys.length === 0) return null;
    // Claim logs are named by lease id (no order): the newest is the one most recently written.
    const heads = await Promise.all(keys.map(async (key) => ({ key, info: await this.src.storage.headObject('models', key) })));
    const found = heads.flatMap(({ key, info }) => (info ? [{ key, bytes: info.bytes, at: info.lastModified?.getTime() ?? 0 }] : []));
    const newest = found.sort((a, b) => a.at - b.at).pop();
    if (!newest) return null;
    const start = Math.max(0, newest.bytes - STORED_LOG_BYTES);
    const o = await this.src.storage.getObjectStream('models', newest.key, newest.bytes > 0 ? { range: { start } } : {});
    const chunks: Buffer[] = [];
    for await (const chunk of o.body) chunks.push(Buffer.from(chunk as Buffer));
    let lines = Buffer.concat(chunks).toString('utf8').split(/\r?\n/);
    if (start > 0) lines = lines.slice(1); // the first line was cut by the range
    lines = lines.filter((l, i) => l.length > 0 || i < lines.length - 1).slice(-STORED_LOG_LINES);
    if (this.storedLogs.size >= 32) this.storedLogs.delete(this.storedLogs.keys().next().value as string);
    this.storedLogs.set(cacheKey, lines);
    return lines;
  }

  /** Free VRAM by GPU index from nvidia-smi (cached a few seconds); null where there is no nvidia-smi. */
  private freeVram(): Promise<Map<number, number> | null> {
    if (this.src.inventory.gpus.length === 0) return Promise.resolve(null);
    if (this.src.readFreeVram) return this.src.readFreeVram();
    if (this.src.inventory.source !== 'nvidia-smi') return Promise.resolve(null);
    if (!this.vram || Date.now() - this.vram.at > FREE_VRAM_CACHE_MS) this.vram = { at: Date.now(), value: readFreeVramFromNvidiaSmi() };
    return this.vram.value;
  }
}

export function readFreeVramFromNvidiaSmi(): Promise<Map<number, number> | null> {
  return new Promise((resolve) => {
    execFile('nvidia-smi', ['--query-gpu=index,memory.free', '--format=csv,noheader,nounits'], { timeout: 3000 }, (err, stdout) => {
      if (err) return resolve(null);
      resolve(parseFreeVram(stdout));
    });
  });
}

/** `index, free MiB` lines → GiB per index (one decimal). */
export function parseFreeVram(csv: string): Map<number, number> {
  const out = new Map<number, number>();
  for (const line of csv.split('\n')) {
    const [index, mib] = line.split(',').map((s) => s.trim());
    if (/^\d+$/.test(index ?? '') && /^\d+(\.\d+)?$/.test(mib ?? '')) out.set(Number(index), Math.round((Number(mib) / 1024) * 10) / 10);
  }
  return out;
}
