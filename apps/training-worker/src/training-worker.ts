/**
 * The worker loop: claims jobs while slots are free, runs each attempt with a
 * heartbeat and a cancel watcher, and shuts down gracefully. Start-up and a
 * periodic maintenance pass recover what crashed workers left behind:
 * orphan containers, expired leases and unsettled points.
 */
import { inject, injectable } from 'tsyringe';
import { LEASED_STATUSES, TERMINAL_STATUSES, TrainingJobRepository } from '@stationthis/db';
import { PointsLedger } from '@stationthis/points';
import { ObjectStorage } from '@stationthis/storage';
import { CONTAINER_RUNTIME, ContainerRuntime, GpuAllocator, LABELS } from '@stationthis/docker';
import { ROOT_LOGGER, WORKER_CONFIG } from './tokens';
import type { WorkerConfig } from './config/worker-config';
import type { Logger } from './observability/logger';
import { WorkerMetrics } from './observability/metrics';
import { JobContext } from './pipeline/job-context';
import { pipelineStateOf } from './pipeline/pipeline-state';
import { JobPipeline } from './pipeline/job-pipeline';
import { containerScope } from './pipeline/steps/train-step';
import { LeaseLost, ShutdownRequested } from './pipeline/failures';

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
    this.log.info({ workerId: this.config.workerId, environment: this.config.environment, slots }, 'worker started');
    await this.maintenance();
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
    const claimed = await this.jobs.claimNext({ workerId: this.config.workerId, environment: this.config.environment, leaseMs: this.config.leaseMs });
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
    const heartbeat = setInterval(() => {
      this.jobs.heartbeat(ctx.lease, this.config.leaseMs).then(
        (ok) => {
          if (!ok) {
            ctx.log.warn('lease lost: another worker owns this job now; stopping without further writes');
            ctx.stop('lease-lost');
          }
        },
        (err) => ctx.log.warn({ err }, 'heartbeat failed'),
      );
    }, Math.max(500, Math.floor(this.config.leaseMs / 3)));
    const cancelWatch = setInterval(() => {
      this.jobs.isCancelRequested(ctx.lease).then(
        (yes) => {
          if (yes) {
            ctx.log.info('cancel requested by user');
            ctx.stop('cancel');
          }
        },
        () => undefined,
      );
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
    await this.settleTerminalJobs();
    // Points movements whose caller died mid-way are finished (or undone) from their journal.
    await this.ledger.replayPending(5 * 60_000).catch((err) => this.log.warn({ err }, 'could not replay pending points movements'));
    // Multipart uploads left by crashed attempts (never visible under a final key) are aborted after an hour.
    await this.storage.abortIncompleteUploads('models', '', 3_600_000).catch((err) => this.log.warn({ err }, 'could not abort stale multipart uploads'));
  }

  /**
   * Jobs the system ended on a worker's behalf (expired lease with no attempts
   * left, cancel of an orphaned job) are flagged refundDue: settle their points
   * per the recorded intent (none recorded: full refund), then clear the flag.
   * Settlement is idempotent in the ledger, so a crash between the two is safe.
   */
  private async settleTerminalJobs(): Promise<void> {
    for (const job of await this.jobs.findRefundsDue()) {
      const jobId = String(job._id);
      const intent = pipelineStateOf(job).settleIntent;
      const usedPoints = job.status === 'FAILED' ? 0 : (intent?.usedPoints ?? 0);
      // Settle even without pipeline.charged: a crash can land between the ledger's charge and that flag.
      await this.ledger.settle({ jobId, usedPoints, reason: intent?.reason ?? `settled by recovery after ${job.status}` });
      await this.jobs.clearRefundDue(jobId);
      this.log.warn({ jobId, status: job.status, usedPoints }, 'settled points for a job ended by recovery');
    }
  }

  /**
   * All slots are busy: fetch the inputs of the job most likely claimed next,
   * so the GPU idles as little as possible between jobs. One at a time.
   */
  private prefetchNext(): void {
    if (this.prefetching) return;
    this.prefetching = (async () => {
      const next = await this.jobs.peekNextQueued(this.config.environment);
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
