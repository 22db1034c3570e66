import type { Collection, Db, Filter, ObjectId, UpdateFilter } from 'mongodb';
import { CLAIM_SORT, environmentFilter, modelTypeFilter } from './claim-filters';
import type { DecisionTokens } from './decision-tokens';
import type { ClaimOptions, TrainingJobDoc } from './training-job';

export type ClaimStrategy = 'sorted-find-and-modify' | 'candidate-batch';

export interface JobClaimsOptions {
  /** 'auto' detects FerretDB via buildInfo, once. */
  claimStrategy: ClaimStrategy | 'auto';
  /** Candidate ids fetched per scan (candidate-batch). */
  claimBatch: number;
  /** Max age of a candidate list before a rescan (candidate-batch). */
  candidateTtlMs: number;
}

interface CandidatePool {
  ids: ObjectId[];
  fetchedAt: number;
  lastScanCount: number;
  loading?: Promise<void>;
}

/**
 * How a QUEUED job is taken: the claim strategy (detected once per instance)
 * and, for FerretDB, this process's candidate pools. Stateful: one instance
 * per TrainingJobRepository, so one cache per process.
 */
export class JobClaims {
  private strategy: ClaimStrategy | undefined;
  private readonly candidates = new Map<string, CandidatePool>();

  constructor(
    private readonly db: Db,
    private readonly jobs: Collection<TrainingJobDoc>,
    private readonly tokens: DecisionTokens,
    private readonly options: JobClaimsOptions,
  ) {
    if (options.claimStrategy !== 'auto') this.strategy = options.claimStrategy;
  }

  /** The claimed job as the claim left it, or null when nothing claimable is QUEUED. */
  async claim(opts: ClaimOptions, attemptId: string): Promise<TrainingJobDoc | null> {
    const strategy = this.strategy ?? (this.strategy = await this.detectStrategy());
    return strategy === 'sorted-find-and-modify' ? this.claimSorted(opts, attemptId) : this.claimFromCandidates(opts, attemptId);
  }

  /** The claim update, shared by both strategies. */
  private claimUpdate(opts: ClaimOptions, attemptId: string, claimSeq?: number): UpdateFilter<TrainingJobDoc> {
    const now = new Date();
    const set: Record<string, unknown> = {
      status: 'PROVISIONING',
      lease: { workerId: opts.workerId, attemptId, expiresAt: new Date(now.getTime() + opts.leaseMs), claimedAt: now },
      startedAt: now,
      heartbeatAt: now,
      updatedAt: now,
    };
    const update: Record<string, unknown> = { $set: set, $inc: { attempts: 1 } };
    if (claimSeq === undefined) (update['$inc'] as Record<string, number>)['claimSeq'] = 1;
    else set['claimSeq'] = claimSeq;
    return update as unknown as UpdateFilter<TrainingJobDoc>;
  }

  /** MongoDB: one atomic sorted findOneAndUpdate served by the st_claim_sort index. */
  private claimSorted(opts: ClaimOptions, attemptId: string): Promise<TrainingJobDoc | null> {
    return this.jobs.findOneAndUpdate(
      { status: 'QUEUED', ...environmentFilter(opts.environment), ...modelTypeFilter(opts.modelTypes) } as Filter<TrainingJobDoc>,
      this.claimUpdate(opts, attemptId),
      { sort: CLAIM_SORT, returnDocument: 'after' },
    );
  }

  /**
   * FerretDB v1. Two of its properties shape this path (both measured, see the
   * ADR): it pushes down only `_id` filters (a sorted claim scans and sorts the
   * whole collection in memory), and a conditional update is NOT atomic under
   * concurrency (read-modify-write: two writers can both pass the filter). The
   * one primitive it does make atomic is a unique `_id` on insert.
   *
   * So: one sorted scan fetches the next `claimBatch` candidates (shared by
   * every claimer in this process); for each, the claimer inserts the token
   * `<jobId>:<claimSeq+1>` into trainingJobClaims. Exactly one claimer per
   * generation can insert it; only that winner then updates the job. The list
   * is refreshed when empty or older than `candidateTtlMs`, which bounds how
   * long a newly queued higher-priority job can wait behind it.
   */
  private async claimFromCandidates(opts: ClaimOptions, attemptId: string): Promise<TrainingJobDoc | null> {
    const filter = { status: 'QUEUED', ...environmentFilter(opts.environment), ...modelTypeFilter(opts.modelTypes) };
    const pool = this.candidatePool(`${opts.environment}|${JSON.stringify(opts.modelTypes ?? null)}`);
    // One scan per call at most: when every candidate of a fresh scan is taken or blocked, report "nothing"
    // instead of rescanning forever (the caller polls again later).
    let scanned = false;
    for (;;) {
      if (pool.ids.length === 0 || (!scanned && Date.now() - pool.fetchedAt > this.options.candidateTtlMs)) {
        if (scanned) return null;
        await this.refreshCandidates(pool, filter);
        scanned = true;
        if (pool.lastScanCount === 0) return null; // nothing QUEUED at all
        continue;
      }
      const id = pool.ids.shift();
      if (!id) continue;
      const current = await this.jobs.findOne({ _id: id } as Filter<TrainingJobDoc>, { projection: { status: 1, claimSeq: 1 } });
      if (current?.status !== 'QUEUED') continue;
      const seq = typeof current['claimSeq'] === 'number' ? (current['claimSeq'] as number) : 0;
      const token = `claim:${id.toHexString()}:${seq + 1}`;
      if (!(await this.tokens.take(token, { workerId: opts.workerId }))) continue;
      const job = await this.jobs.findOneAndUpdate(
        { _id: id, ...filter } as Filter<TrainingJobDoc>,
        this.claimUpdate(opts, attemptId, seq + 1),
        { returnDocument: 'after' },
      );
      if (job) return job;
      // The job changed between our read and our write (cancelled, or someone's write raced it): give the
      // generation back, so the token never blocks a job that is still QUEUED.
      await this.tokens.giveBack(token);
    }
  }

  private candidatePool(key: string): CandidatePool {
    let pool = this.candidates.get(key);
    if (!pool) this.candidates.set(key, (pool = { ids: [], fetchedAt: 0, lastScanCount: -1 }));
    return pool;
  }

  /** One scan at a time per pool; concurrent claimers wait for it. */
  private async refreshCandidates(pool: CandidatePool, filter: Record<string, unknown>): Promise<void> {
    if (!pool.loading) {
      pool.loading = (async () => {
        try {
          const docs = await this.jobs
            .find(filter as Filter<TrainingJobDoc>, { projection: { _id: 1 } })
            .sort(CLAIM_SORT)
            .limit(this.options.claimBatch)
            .toArray();
          pool.ids = docs.map((d) => d._id);
          pool.lastScanCount = docs.length;
          pool.fetchedAt = Date.now();
        } finally {
          pool.loading = undefined;
        }
      })();
    }
    await pool.loading;
  }

  private async detectStrategy(): Promise<ClaimStrategy> {
    try {
      const info = await this.db.admin().command({ buildInfo: 1 });
      return 'ferretdbVersion' in info ? 'candidate-batch' : 'sorted-find-and-modify';
    } catch {
      return 'sorted-find-and-modify';
    }
  }
}
