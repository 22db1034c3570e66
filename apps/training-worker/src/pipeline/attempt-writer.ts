/**
 * Every write one attempt makes to its job document, fenced by the lease:
 * pipeline state, forward status transitions, the terminal write, step
 * markers and throttled progress. A write the fence refuses means another
 * worker owns the job now: the attempt is stopped (LeaseLost) and writes
 * nothing more.
 */
import { ACTIVE_STATUSES, ProgressThrottle, type ProgressUpdate, type TrainingJobDoc, type TrainingJobRepository } from '@stationthis/db';
import type { ProgressEvent } from '@stationthis/recipes';
import type { JobContext } from './job-context';
import type { PipelineState } from './pipeline-state';

/** Engine lines kept per progress write (the job document keeps a short tail). */
const PROGRESS_LOG_TAIL = 20;
const MAX_LINE_CHARS = 500;

export type ForwardStatus = 'RUNNING' | 'FINALIZING';
export type TerminalStatus = 'COMPLETED' | 'FAILED' | 'CANCELLED';

export class AttemptWriter {
  constructor(
    private readonly jobs: TrainingJobRepository,
    private readonly ctx: JobContext,
    private readonly progressThrottleMs: number,
  ) {}

  async setState(patch: Partial<PipelineState>): Promise<void> {
    this.fenced(await this.jobs.setPipelineState(this.ctx.lease, patch as Record<string, unknown>));
  }

  /** Moves the job forward only (a resumed attempt replays transitions it already made: no-ops). */
  async transition(to: ForwardStatus, fields: Record<string, unknown> = {}): Promise<void> {
    const at = ACTIVE_STATUSES.indexOf(this.ctx.job.status as (typeof ACTIVE_STATUSES)[number]);
    if (at < 0 || at >= ACTIVE_STATUSES.indexOf(to)) return;
    this.fenced(await this.jobs.transition(this.ctx.lease, to, fields));
    this.ctx.job.status = to as TrainingJobDoc['status'];
  }

  /** The final status write. Losing it means another worker owns the job now. */
  async terminal(to: TerminalStatus, fields: Record<string, unknown>): Promise<void> {
    this.fenced(await this.jobs.transition(this.ctx.lease, to, fields));
  }

  /** A marker line in the job's log tail; best effort (the step runs either way). */
  async stepMarker(name: string): Promise<void> {
    await this.jobs.updateProgress(this.ctx.lease, { logLines: [`[worker] ${new Date().toISOString()} ${name}`] }).catch(() => undefined);
  }

  /** Worker lines in the job's log tail (e.g. test-run argv changes); best effort. */
  async logLines(lines: string[]): Promise<void> {
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
          if (ok === false) this.ctx.stop('lease-lost');
        })
        .catch((e) => this.ctx.log.warn({ err: e }, 'progress write failed'));
    };
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
        write(throttle.offer({ logLines: [line.slice(0, MAX_LINE_CHARS)] }));
      },
      async flush() {
        write(throttle.flush());
        await inFlight;
      },
    };
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
