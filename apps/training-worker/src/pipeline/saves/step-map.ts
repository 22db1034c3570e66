/**
 * Engine steps ↔ job steps for one container run. A `continues` engine
 * resumed at R reports R+k; a `restarts` engine reports k, so the job's step
 * is k+R (SavePlan.stepsAfterResume). Without a resume both are the same.
 */
import type { ProgressEvent, SavePlan } from '@stationthis/recipes';

export class StepMap {
  /** Added to every engine step (non-zero only for a resumed `restarts` engine). */
  readonly offset: number;

  constructor(
    /** The job step the run resumed from (0: from scratch). */
    readonly resumedAt: number,
    mode: SavePlan['stepsAfterResume'] | undefined,
    /** The job's planned total steps (reported instead of a restarted engine's shorter total). */
    private readonly totalSteps: number | undefined,
  ) {
    this.offset = mode === 'restarts' ? resumedAt : 0;
  }

  toJob(engineStep: number): number {
    return engineStep + this.offset;
  }

  /** The event as the job counts: steps mapped, totals the job's. */
  event(ev: ProgressEvent): ProgressEvent {
    if (ev.kind !== 'step' || this.offset === 0) return ev;
    return { ...ev, step: ev.step + this.offset, totalSteps: this.totalSteps ?? ev.totalSteps + this.offset };
  }
}
