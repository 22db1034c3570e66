/**
 * What one attempt does, told as it happens to in-process listeners (the
 * dashboard's live log, loss series and phase times), beside the attempt's
 * fenced writes. The pipeline owns the calls (AttemptWriter); listeners only
 * observe: each returns at once, and a listener that throws is logged and
 * never fails, delays or changes the attempt.
 */
import { Lifecycle, inject, scoped } from 'tsyringe';
import type { Lease, ProgressUpdate } from '@stationthis/db';
import { ROOT_LOGGER } from '../tokens';
import type { Logger } from '../observability/logger';

export interface AttemptActivityListener {
  /** Every engine and worker line of the attempt, unthrottled (the job document keeps only a throttled tail). */
  lines?(lease: Lease, lines: string[]): void;
  /** A progress write that landed on the job (throttled: at most one per WORKER_PROGRESS_THROTTLE_MS). */
  progress?(lease: Lease, update: ProgressUpdate): void;
  /** The job moved forward to RUNNING or FINALIZING under this lease. */
  phase?(lease: Lease, status: 'RUNNING' | 'FINALIZING', at: Date): void;
}

/** One per container: the pipeline tells it, the listeners added to it hear. */
@scoped(Lifecycle.ContainerScoped)
export class AttemptActivity {
  private readonly listeners = new Set<AttemptActivityListener>();

  constructor(@inject(ROOT_LOGGER) private readonly log: Logger) {}

  /** Returns the function that removes the listener. */
  listen(listener: AttemptActivityListener): () => void {
    this.listeners.add(listener);
    return () => void this.listeners.delete(listener);
  }

  lines(lease: Lease, lines: string[]): void {
    if (lines.length) this.tell((l) => l.lines?.(lease, lines));
  }

  progress(lease: Lease, update: ProgressUpdate): void {
    this.tell((l) => l.progress?.(lease, update));
  }

  phase(lease: Lease, status: 'RUNNING' | 'FINALIZING', at: Date): void {
    this.tell((l) => l.phase?.(lease, status, at));
  }

  private tell(call: (l: AttemptActivityListener) => void): void {
    for (const listener of this.listeners) {
      try {
        call(listener);
      } catch (err) {
        this.log.debug({ err }, 'an attempt activity listener failed (the attempt is unaffected)');
      }
    }
  }
}
