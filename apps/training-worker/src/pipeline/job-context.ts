/**
 * Per-attempt context: the lease, the abort signal that fires on cancel, lost
 * lease or shutdown, and a logger carrying job and attempt ids.
 */
import type { Lease, TrainingJobDoc } from '@stationthis/db';
import type { Logger } from '../observability/logger';
import { CancelRequested, LeaseLost, ShutdownRequested } from './failures';

export type StopReason = 'cancel' | 'lease-lost' | 'shutdown';

export class JobContext {
  private readonly controller = new AbortController();
  private reason: StopReason | null = null;
  /** Set once this attempt wrote the job's terminal status: from then on its lease is expected to fail. */
  terminalWritten = false;

  constructor(
    readonly job: TrainingJobDoc,
    readonly lease: Lease,
    readonly log: Logger,
  ) {}

  get jobId(): string {
    return this.lease.jobId;
  }

  get signal(): AbortSignal {
    return this.controller.signal;
  }

  get stopReason(): StopReason | null {
    return this.reason;
  }

  stop(reason: StopReason): void {
    if (this.reason) return;
    this.reason = reason;
    this.controller.abort(reason);
  }

  /** Throws the matching error when the attempt has been told to stop. Call between steps. */
  throwIfStopped(): void {
    switch (this.reason) {
      case 'cancel':
        throw new CancelRequested('cancel requested');
      case 'lease-lost':
        throw new LeaseLost('lease lost');
      case 'shutdown':
        throw new ShutdownRequested('worker shutting down');
      default:
    }
  }
}
