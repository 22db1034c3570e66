/**
 * The plain-words reasons users see in `failureReason`. The classes and what
 * each means for retries are libs/db's (JOB_FAILURE_CLASSES, FAILURE_POLICY).
 */
import type { JobFailureClass } from '@stationthis/db';

export { FAILURE_POLICY, type JobFailureClass } from '@stationthis/db';

/** An expected pipeline failure: what failed, why, and what the user can do. */
export class JobFailure extends Error {
  override name = 'JobFailure';
  constructor(
    readonly failureClass: JobFailureClass,
    /** Shown to the user as failureReason. */
    readonly userMessage: string,
    options?: { cause?: unknown },
  ) {
    super(userMessage, options);
  }
}

/** Raised when the lease was lost: another worker owns the job now; write nothing. */
export class LeaseLost extends Error {
  override name = 'LeaseLost';
}

/** Raised when the user asked to cancel. */
export class CancelRequested extends Error {
  override name = 'CancelRequested';
}

/** Raised on SIGTERM when the grace period ran out: hand the job back. */
export class ShutdownRequested extends Error {
  override name = 'ShutdownRequested';
}

export function containerFailureMessage(cls: string, stepName: string, lastLines: string[]): JobFailure {
  const tail = lastLines.slice(-3).join(' | ').slice(0, 400);
  switch (cls) {
    case 'oom':
      return new JobFailure('oom', `Training ran out of memory during "${stepName}". Lower the batch size or resolution, or use fewer/lower-resolution images, then retry. Points were refunded.`);
    case 'timeout':
      return new JobFailure('timeout', `Training exceeded its time limit during "${stepName}". Reduce the number of steps and retry. Points were refunded.`);
    case 'stall':
      return new JobFailure('timeout', `Training stopped making progress during "${stepName}" and was stopped. This is usually temporary: retry the job. Points were refunded.`);
    case 'infrastructure':
      return new JobFailure('infrastructure', `The training host had a problem during "${stepName}". The job will be retried automatically when possible; points are refunded if it cannot finish.`);
    default:
      return new JobFailure('engine', `The training engine failed during "${stepName}"${tail ? ` (last output: ${tail})` : ''}. Check the dataset and parameters, then retry. Points were refunded.`);
  }
}
