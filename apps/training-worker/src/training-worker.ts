/**
 * The worker loop: claims jobs while slots are free, runs each attempt with a
 * heartbeat and a cancel watcher, and shuts down gracefully. Start-up and a
 * periodic maintenance pass recover what crashed workers left behind:
 * orphan containers, expired leases and unsettled points.
 */
import { inject, injectable } from 'tsyringe';
import { LEASED_STATUSES, TERMINAL_STATUSES, TrainingJobRepository, type ClaimableModelTypes } from '@stationthis/db';
import { PointsLedger } from '@stationthis/points';
import { listRecipes, modelTypesOf, recipeForModelType, type Recipe } from '@stationthis/recipes';
import { ObjectStorage } from '@stationthis/storage';
import { CONTAINER_RUNTIME, ContainerRuntime, GpuAllocator, LABELS } from '@stationthis/docker';
import { ROOT_LOGGER, WORKER_CONFIG } from './tokens';
import type { WorkerConfig } from './config/worker-config';
import type { Logger } from './observability/logger';
import { WorkerMetrics } from './observability/metrics';
import { JobContext } from './pipeline/job-context';
import { JobPipeline } from './pipeline/job-pipeline';
import { SettlementSweep } from './pipeline/settlement-sweep';
import { CheckpointRetention } from './checkpoints/checkpoint-retention';
import { containerScope } from './pipeline/steps/train-step';
import { LeaseLost, ShutdownRequested } from './pipeline/failures';
import { JobEventsService } from './events/job-events-service';

/** How long a stopping worker keeps delivering webhooks of events already stored. */
const EVENTS_DRAIN_MS = 5000;

@injectable()
export class TrainingWorker {
  private stopping = false;
  private readonly active = new Map<string, { ctx: JobContext; done: Promise<void> }>();
  private wake: (() => void) | null = null;
  private lastMaintenance = 0;
  private processed = 0;
  private prefetching: Promise<void> | null = null;
  private prefetchingJobId: string | null = null;
  private readonly prefetched = new Set<string>();
  private modelTypes: ClaimableModelTypes | undefined;

  constructor(
    @inject(WORKER_CONFIG) private readonly config: WorkerConfig,
    @inject(ROOT_LOGGER) private readonly log: Logger,
    private readonly jobs: TrainingJobRepository,
    private readonly ledger: PointsLedger,
    @inject(CONTAINER_RUNTIME) private readonly runtime: ContainerRuntime,
    private readonly allocator: GpuAllocator,
    private readonly pipeline: JobPipeline,
    private readonly metrics: WorkerMetrics,
    private readonly storage: ObjectStorage,
    private readonly sweep: SettlementSweep,
    private readonly retention: CheckpointRetention,
    private readonly events: JobEventsService,
  ) {}

  get isStopping(): boolean {
    return this.stopping;
  }

  get jobsProcessed(): number {
    return this.processed;
  }

  /** Runs until stop() (or, with exitWhenIdle, until the queue is empty and nothing runs). */
  async run(): Promise<void> {
    // One job per GPU plus one per CPU slot; a job needing more GPUs waits in the allocator.
    const slots = Math.max(1, this.allocator.capacity() + this.allocator.cpuSlotCapacity());
    this.metrics.slotsTotal.set(slots);
    this.modelTypes = this.claimableModelTypes();
    this.log.info({ workerId: this.config.workerId, environment: this.config.environment, slots, claims: this.modelTypes.runnable }, 'worker started');
    await this.maintenance();
    // Job events and webhooks run beside the loop, never awaited by a job (ADR 0010).
    this.events.start();
    while (!this.stopping) {
      if (Date.now() - this.lastMaintenance > this.config.maintenanceMs) await this.maintenance().catch((err) => this.log.error({ err }, 'maintenance failed'));
      let claimedAny = false;
      while (!this.stopping && this.active.size < slots) {
        const claimed = await this.claim();
        if (!claimed) break;
        claimedAny = true;
      }
      if (this.active.size >= slots) this.prefetchNext();
      if (this.config.exitWhenIdle && !claimedAny && this.active.size === 0 && !(await this.othersHoldJobs())) {
        this.log.info({ processed: this.processed }, 'queue empty and no job running: exiting (WORKER_EXIT_WHEN_IDLE)');
        break;
      }
      await this.sleep(this.config.pollMs);
    }
    await Promise.all([...this.active.values()].map((a) => a.done));
    await this.prefetching;
    // The last jobs' events are stored and given a few seconds to reach the receivers; the next worker delivers the rest.
    await this.events.stop(EVENTS_DRAIN_MS).catch((err) => this.log.warn({ err }, 'job event loops did not stop cleanly'));
  }

  /**
   * Graceful stop: claim nothing more, let running jobs finish within the
   * grace period, then stop their containers and hand the jobs back.
   */
  async stop(): Promise<void> {
    if (this.stopping) return;
    this.stopping = true;
    this.wake?.();
    this.log.info({ running: this.active.size, graceMs: this.config.shutdownGraceMs }, 'stopping: no new claims');
    const all = Promise.all([...this.active.values()].map((a) => a.done));
    const timer = new Promise<'timeout'>((r) => setTimeout(() => r('timeout'), this.config.shutdownGraceMs).unref());
    if ((await Promise.race([all.then(() => 'done' as const), timer])) === 'timeout') {
      for (const { ctx } of this.active.values()) ctx.stop('shutdown');
      await all;
    }
  }

  private async claim(): Promise<boolean> {
    this.modelTypes ??= this.claimableModelTypes();
    const claimed = await this.jobs.claimNext({ workerId: this.config.workerId, environment: this.config.environment, leaseMs: this.config.leaseMs, modelTypes: this.modelTypes });
    if (!claimed) return false;
    const { job, lease } = claimed;
    const ctx = new JobContext(job, lease, this.log.child({ jobId: lease.jobId, attemptId: lease.attemptId }));
    ctx.log.info({ attempt: job.attempts, modelType: job.modelType }, 'job claimed');
    this.metrics.activeJobs.inc();
    // Never fetch into the folder a prefetch of the same job is still writing.
    const prefetch = this.prefetchingJobId === lease.jobId ? this.prefetching : null;
    const done = (prefetch ? prefetch.then(() => this.runAttempt(ctx)) : this.runAttempt(ctx)).finally(() => {
      this.active.delete(lease.jobId);
      this.metrics.activeJobs.dec();
      this.processed++;
      this.wake?.();
    });
    this.active.set(lease.jobId, { ctx, done });
    return true;
  }

  private async runAttempt(ctx: JobContext): Promise<void> {
    // A cancel (ours, or the platform's plain CANCELLED that leaves our lease) stops the attempt to settle it;
    // a lost lease stops it with no further writes. After our own terminal write the lease is expected to go.
    const onLeaseCheck = (state: 'held' | 'cancelled' | 'lost') => {
      if (ctx.terminalWritten || state === 'held') return;
      if (state === 'cancelled') {
        if (!ctx.stopReason) ctx.log.info('cancel requested (by the user or the platform)');
        ctx.stop('cancel');
      } else {
        if (!ctx.stopReason) ctx.log.warn('lease lost: another worker owns this job now, or another writer ended it; stopping without further writes');
        ctx.stop('lease-lost');
      }
    };
    let renewedAt = Date.now();
    const heartbeat = setInterval(() => {
      this.jobs.heartbeat(ctx.lease, this.config.leaseMs).then(
        async (ok) => {
          if (ok) renewedAt = Date.now();
          else onLeaseCheck(await this.jobs.leaseState(ctx.lease));
        },
        (err) => {
          // Cannot reach the database (a one-sided partition): once the lease has surely expired, another
          // worker may own the job. Stop the container and write nothing more.
          ctx.log.warn({ err }, 'heartbeat failed');
          if (Date.now() - renewedAt > this.config.leaseMs * 0.8) onLeaseCheck('lost');
        },
      ).catch(() => undefined);
    }, Math.max(500, Math.floor(this.config.leaseMs / 3)));
    const cancelWatch = setInterval(() => {
      this.jobs.leaseState(ctx.lease).then(onLeaseCheck, () => undefined);
    }, this.config.cancelPollMs);
    try {
      await this.pipeline.run(ctx);
    } catch (err) {
      if (err instanceof ShutdownRequested) {
        await this.jobs.releaseLease(ctx.lease, 'worker shut down; job handed back to the queue').catch((e) => ctx.log.error({ err: e }, 'hand-back failed; lease will expire'));
        ctx.log.info('job handed back to the queue');
      } else if (err instanceof LeaseLost) {
        ctx.log.warn('attempt abandoned after losing the lease');
      } else {
        ctx.log.error({ err }, 'attempt crashed; the lease will expire and recovery will settle the job');
      }
    } finally {
      clearInterval(heartbeat);
      clearInterval(cancelWatch);
    }
  }

  /** Recover what crashed workers left: containers, expired leases, unsettled points. */
  async maintenance(): Promise<void> {
    this.lastMaintenance = Date.now();
    // Leases first: a container whose lease just expired is an orphan in the same pass.
    const recovered = await this.jobs.recoverExpiredLeases(new Date());
    if (recovered.requeued.length || recovered.failed.length) this.log.warn(recovered, 'recovered expired leases');
    const removed = await this.runtime.sweepOrphans(async (labels) => {
      // Another job store's container (other database or environment) is not ours to judge.
      if ((labels[LABELS.scope] ?? '') !== containerScope(this.config)) return true;
      const jobId = labels[LABELS.jobId];
      const attemptId = labels[LABELS.attemptId];
      if (!jobId || !attemptId) return false;
      if ([...this.active.values()].some((a) => a.ctx.lease.attemptId === attemptId)) return true;
      const job = await this.jobs.findById(jobId);
      if (!job || TERMINAL_STATUSES.includes(job.status as never)) return false;
      const lease = job.lease as { attemptId?: string; expiresAt?: Date } | undefined;
      return Boolean(lease && lease.attemptId === attemptId && lease.expiresAt && new Date(lease.expiresAt).getTime() > Date.now());
    });
    if (removed.length) this.log.warn({ containers: removed }, 'removed orphan containers');
    await this.sweep.run().catch((err) => this.log.error({ err }, 'settlement sweep failed; the next pass retries'));
    // Points movements whose caller died mid-way are finished (or undone) from their journal.
    await this.ledger.replayPending(5 * 60_000).catch((err) => this.log.warn({ err }, 'could not replay pending points movements'));
    // Multipart uploads left by crashed attempts (never visible under a final key) are aborted after an hour.
    await this.storage.abortIncompleteUploads('models', '', 3_600_000).catch((err) => this.log.warn({ err }, 'could not abort stale multipart uploads'));
    // Checkpoints past retention and resume states of ended attempts (ADR 0008); bounded per pass.
    await this.retention.run().catch((err) => this.log.warn({ err }, 'checkpoint retention failed; the next pass retries'));
  }

  /**
   * The model types this worker claims: recipes its hardware can run (GPU
   * count and VRAM; CPU recipes on CPU slots; GPU recipes on CPU slots only
   * with WORKER_CPU_TEST_RUNS and a test-run profile). Types no recipe knows
   * are claimed by anyone, to fail them with the list of supported types.
   * An operator-only recipe's types are known whether or not this worker
   * enabled it: a worker without RECIPES_ENABLED leaves those jobs to the
   * workers that offer them instead of claiming and failing them.
   */
  private claimableModelTypes(): ClaimableModelTypes {
    const runnable: string[] = [];
    const known: string[] = [];
    const skipped: string[] = [];
    for (const recipe of listRecipes({ includeInternal: true })) {
      const enabledTypes = modelTypesFor(recipe, this.config.recipesEnabled);
      for (const type of modelTypesOf(recipe)) {
        known.push(type);
        if (!enabledTypes.includes(type)) {
          skipped.push(`${type} (operator-only recipe ${recipe.id}; RECIPES_ENABLED does not name it)`);
          continue;
        }
        const why = this.whyCannotRun(recipe);
        if (why) skipped.push(`${type} (${why})`);
        else runnable.push(type);
      }
    }
    if (skipped.length) this.log.info({ skipped }, `this worker does not claim: ${skipped.join('; ')}`);
    return { runnable, known };
  }

  private whyCannotRun(recipe: Recipe): string | null {
    if (recipe.gpu.count === 0) return this.allocator.cpuSlotCapacity() > 0 ? null : 'no CPU slot (CPU_SLOTS=0)';
    if (this.allocator.canEverSatisfy({ count: recipe.gpu.count, minVramGb: recipe.gpu.minVramGb })) return null;
    if (this.config.cpuTestRuns && recipe.testRun && this.allocator.cpuSlotCapacity() > 0) return null;
    return `needs ${recipe.gpu.count} GPU(s) with ${recipe.gpu.minVramGb} GB VRAM; this worker has ${this.allocator.capacity()} GPU(s)${recipe.testRun ? ', and WORKER_CPU_TEST_RUNS is off' : ''}`;
  }

  /**
   * All slots are busy: fetch the inputs of the job most likely claimed next,
   * so the GPU idles as little as possible between jobs. One at a time.
   */
  private prefetchNext(): void {
    if (this.prefetching) return;
    this.prefetching = (async () => {
      const next = await this.jobs.peekNextQueued(this.config.environment, this.modelTypes);
      if (!next || this.prefetched.has(String(next._id))) return;
      this.prefetched.add(String(next._id));
      this.prefetchingJobId = String(next._id);
      if (this.prefetched.size > 1000) this.prefetched.clear();
      await this.pipeline.prefetch(next, this.log.child({ prefetchJobId: String(next._id) }));
    })()
      .catch((err) => this.log.debug({ err }, 'prefetch skipped; the attempt will fetch its own inputs'))
      .finally(() => {
        this.prefetching = null;
        this.prefetchingJobId = null;
      });
  }

  /** With exitWhenIdle: jobs leased by someone else may come back to the queue (expired leases), so stay. */
  private async othersHoldJobs(): Promise<boolean> {
    const leased = await this.jobs.list({ status: [...LEASED_STATUSES], environment: this.config.environment, limit: 1 });
    return leased.length > 0;
  }

  private sleep(ms: number): Promise<void> {
    return new Promise((resolve) => {
      const t = setTimeout(() => {
        this.wake = null;
        resolve();
      }, ms);
      this.wake = () => {
        clearTimeout(t);
        this.wake = null;
        resolve();
      };
    });
  }
}

/** The platform model types that map to `recipe` (none for an operator-only recipe this worker has not enabled). */
function modelTypesFor(recipe: Recipe, enabled: readonly string[]): string[] {
  return modelTypesOf(recipe).filter((type) => {
    try {
      return recipeForModelType(type, { enabled }).id === recipe.id;
    } catch {
      return false;
    }
  });
}
