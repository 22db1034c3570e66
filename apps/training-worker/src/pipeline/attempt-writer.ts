/**
 * Every write one attempt makes, fenced: its state in the attempt record
 * (fenced by the record's owner, the lease attemptId), and on the job
 * document (fenced by the lease) forward status transitions, the terminal
 * write, step markers and throttled progress. A write the fence refuses means
 * another claim owns the job now: the attempt is stopped (LeaseLost) and
 * writes nothing more. The terminal writes tell a lost lease from a cancel
 * (the platform's Cancel sets CANCELLED and leaves our lease in place).
 */
import {
  ACTIVE_STATUSES,
  ProgressThrottle,
  type AttemptRef,
  type ProgressUpdate,
  type TrainingAttemptRepository,
  type TrainingJobDoc,
  type TrainingJobRepository,
} from '@stationthis/db';
import type { ProgressEvent } from '@stationthis/recipes';
import type { AttemptActivity } from './attempt-activity';
import type { JobContext } from './job-context';
import type { PipelineState } from './pipeline-state';

/** Engine lines kept per progress write (the job document keeps a short tail). */
const PROGRESS_LOG_TAIL = 20;
const MAX_LINE_CHARS = 500;

export type ForwardStatus = 'RUNNING' | 'FINALIZING';

export class AttemptWriter {
  constructor(
    private readonly jobs: TrainingJobRepository,
    private readonly attempts: Pick<TrainingAttemptRepository, 'setState'>,
    private readonly ctx: JobContext,
    private readonly ref: AttemptRef,
    private readonly progressThrottleMs: number,
    /** In-process listeners (the dashboard); told after our writes, never awaited. */
    private readonly activity?: Pick<AttemptActivity, 'lines' | 'progress' | 'phase'>,
  ) {}

  /** State into the attempt record (`open` marks it for settlement before a charge). */
  async setState(patch: Partial<PipelineState>, opts: { open?: boolean } = {}): Promise<void> {
    this.fenced(await this.attempts.setState(this.ref, patch, opts));
  }

  /**
   * Fields the platform reads on a leased job (the cost row: estimatedCostPoints,
   * gpuType, gpuHourlyRate), fenced by the lease. Refused: stops the attempt as
   * cancelled when a cancel explains it, else as lease lost.
   */
  async setJobFields(fields: Record<string, unknown>): Promise<void> {
    if (!(await this.jobs.setJobFields(this.ctx.lease, fields))) await this.refusedOnJob();
  }

  /** Moves the job forward only (a resumed attempt replays transitions it already made: no-ops). */
  async transition(to: ForwardStatus, fields: Record<string, unknown> = {}): Promise<void> {
    const at = ACTIVE_STATUSES.indexOf(this.ctx.job.status as (typeof ACTIVE_STATUSES)[number]);
    if (at < 0 || at >= ACTIVE_STATUSES.indexOf(to)) return;
    if (!(await this.jobs.transition(this.ctx.lease, to, fields))) await this.refusedOnJob();
    this.ctx.job.status = to as TrainingJobDoc['status'];
    this.activity?.phase(this.ctx.lease, to, new Date());
  }

  /**
   * COMPLETED, only while the job is still ours and not cancelled. Returns
   * 'cancelled' when a cancel landed first (our lease, status CANCELLED or a
   * cancel request): the caller ends the job cancelled instead.
   */
  async complete(fields: Record<string, unknown>): Promise<'completed' | 'cancelled'> {
    if (await this.jobs.complete(this.ctx.lease, fields)) {
      this.ctx.terminalWritten = true;
      return 'completed';
    }
    return this.refusedBecauseCancelled();
  }

  /** FAILED; a job the platform cancelled meanwhile stays CANCELLED (with the same settlement fields). */
  async failed(fields: Record<string, unknown>): Promise<void> {
    if (await this.jobs.transition(this.ctx.lease, 'FAILED', fields)) {
      this.ctx.terminalWritten = true;
      return;
    }
    if ((await this.refusedBecauseCancelled()) === 'cancelled') await this.cancelled(fields);
  }

  /** CANCELLED (also over the platform's own CANCELLED, as long as the lease is ours). */
  async cancelled(fields: Record<string, unknown>): Promise<void> {
    const { failureClass: _ignored, ...rest } = fields;
    this.fenced(await this.jobs.cancelComplete(this.ctx.lease, rest));
    this.ctx.terminalWritten = true;
  }

  private async refusedBecauseCancelled(): Promise<'cancelled'> {
    if ((await this.jobs.leaseState(this.ctx.lease)) === 'cancelled') return 'cancelled';
    this.fenced(false);
    throw new Error('unreachable');
  }

  /** A marker line in the job's log tail; best effort (the step runs either way). */
  async stepMarker(name: string): Promise<void> {
    const line = `[worker] ${new Date().toISOString()} ${name}`;
    this.activity?.lines(this.ctx.lease, [line]);
    await this.jobs.updateProgress(this.ctx.lease, { logLines: [line] }).catch(() => undefined);
  }

  /**
   * A resumed attempt's progress starts where the saved state is, not at 0
   * (a re-queue resets the job's step); best effort.
   */
  async resumedAt(step: number, totalSteps: number | undefined, line: string): Promise<void> {
    const update: ProgressUpdate = { currentStep: step, logLines: [line] };
    if (totalSteps) Object.assign(update, { totalSteps, progress: Math.min(99, Math.floor((step / totalSteps) * 100)) });
    this.activity?.lines(this.ctx.lease, [line]);
    await this.jobs.updateProgress(this.ctx.lease, update).catch(() => undefined);
  }

  /** Worker lines in the job's log tail (e.g. test-run argv changes); best effort. */
  async logLines(lines: string[]): Promise<void> {
    this.activity?.lines(this.ctx.lease, lines);
    await this.jobs.updateProgress(this.ctx.lease, { logLines: lines }).catch(() => undefined);
  }

  /**
   * Progress of one container run: step/total/loss/eta from the engine's
   * parsed output and the tail of its lines, at most one write per throttle
   * interval (libs/db ProgressThrottle), always the latest values; `flush`
   * writes what is pending and waits for writes in flight.
   */
  progress(): ProgressWriter {
    const throttle = new ProgressThrottle({ minIntervalMs: this.progressThrottleMs, maxPendingLogLines: PROGRESS_LOG_TAIL });
    let inFlight: Promise<unknown> = Promise.resolve();
    const write = (update: ProgressUpdate | null) => {
      if (!update) return;
      inFlight = inFlight
        .then(() => this.jobs.updateProgress(this.ctx.lease, update))
        .then((ok) => {
          // Refused: a cancel (the platform's CANCELLED keeps our lease) or a lost lease; tell them apart.
          if (ok === false) return this.jobs.leaseState(this.ctx.lease).then((state) => this.ctx.stop(state === 'cancelled' ? 'cancel' : 'lease-lost'));
          this.activity?.progress(this.ctx.lease, update);
          return undefined;
        })
        .catch((e) => this.ctx.log.warn({ err: e }, 'progress write failed'));
    };
    const activity = this.activity;
    const lease = this.ctx.lease;
    return {
      event(ev: ProgressEvent) {
        if (ev.kind !== 'step') return;
        const update: ProgressUpdate = {
          currentStep: ev.step,
          totalSteps: ev.totalSteps,
          progress: Math.min(99, Math.floor((ev.step / Math.max(1, ev.totalSteps)) * 100)),
        };
        if (ev.loss !== undefined && Number.isFinite(ev.loss)) update.currentLoss = ev.loss;
        if (ev.etaSeconds !== undefined) update.etaSeconds = ev.etaSeconds;
        write(throttle.offer(update));
      },
      line(line: string) {
        const clipped = line.slice(0, MAX_LINE_CHARS);
        activity?.lines(lease, [clipped]);
        write(throttle.offer({ logLines: [clipped] }));
      },
      async flush() {
        write(throttle.flush());
        await inFlight;
      },
    };
  }

  /** A job write the fence refused: stop as cancelled when a cancel explains it, else as lease lost. */
  private async refusedOnJob(): Promise<never> {
    this.ctx.stop((await this.jobs.leaseState(this.ctx.lease)) === 'cancelled' ? 'cancel' : 'lease-lost');
    this.ctx.throwIfStopped();
    throw new Error('unreachable');
  }

  private fenced(ok: boolean): void {
    if (ok) return;
    this.ctx.stop('lease-lost');
    this.ctx.throwIfStopped();
  }
}

export interface ProgressWriter {
  event(ev: ProgressEvent): void;
  line(line: string): void;
  flush(): Promise<void>;
}
