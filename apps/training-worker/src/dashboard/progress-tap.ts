/**
 * Feeds the dashboard from what the worker's attempts do (pipeline
 * AttemptActivity, told by AttemptWriter after its own writes):
 * - every engine and worker line lands in the in-memory log tail (JobActivity),
 *   unthrottled, so the live view misses no line;
 * - each landed progress write's step/loss goes into the attempt record's
 *   bounded loss series (as fine as the progress writes: one per
 *   WORKER_PROGRESS_THROTTLE_MS at most);
 * - each RUNNING or FINALIZING transition records its time in the attempt record.
 * The extra writes never delay or fail the pipeline's own: they are queued per
 * claim and their errors only logged.
 */
import type { LossPoint, RecordedPhase, TrainingAttemptRepository } from '@stationthis/db';
import type { Logger } from '../observability/logger';
import type { AttemptActivity } from '../pipeline/attempt-activity';
import type { JobActivity } from './job-activity';

type Attempts = Pick<TrainingAttemptRepository, 'recordLoss' | 'recordPhase'>;

/** Listens to the worker's attempts; returns the function that stops listening. */
export function tapJobProgress(hub: Pick<AttemptActivity, 'listen'>, attempts: Attempts, activity: JobActivity, log: Logger): () => void {
  const loss = new LossRecorder(attempts, log);
  return hub.listen({
    lines: (lease, lines) => activity.addLines(lease.jobId, lines),
    progress: (lease, p) => {
      if (typeof p.currentStep === 'number' && typeof p.currentLoss === 'number' && Number.isFinite(p.currentLoss)) {
        loss.add(lease, { step: p.currentStep, loss: p.currentLoss });
      }
    },
    phase: (lease, status, at) => loss.phase(lease, status, at),
  });
}

/** One queue of attempt-record writes per claim: points gathered while a write is in flight go in the next one. */
class LossRecorder {
  private readonly claims = new Map<string, { jobId: string; points: LossPoint[]; phases: [RecordedPhase, Date][]; running: boolean }>();

  constructor(
    private readonly attempts: Attempts,
    private readonly log: Logger,
  ) {}

  add(lease: { jobId: string; attemptId: string }, point: LossPoint): void {
    this.claim(lease).points.push(point);
    this.drain(lease.attemptId);
  }

  phase(lease: { jobId: string; attemptId: string }, phase: RecordedPhase, at: Date): void {
    this.claim(lease).phases.push([phase, at]);
    this.drain(lease.attemptId);
  }

  private claim(lease: { jobId: string; attemptId: string }) {
    let c = this.claims.get(lease.attemptId);
    if (!c) this.claims.set(lease.attemptId, (c = { jobId: lease.jobId, points: [], phases: [], running: false }));
    return c;
  }

  private drain(owner: string): void {
    const c = this.claims.get(owner);
    if (!c || c.running) return;
    c.running = true;
    void (async () => {
      try {
        while (c.points.length || c.phases.length) {
          const phases = c.phases.splice(0);
          for (const [phase, at] of phases) await this.attempts.recordPhase(c.jobId, owner, phase, at);
          const points = c.points.splice(0);
          if (points.length) await this.attempts.recordLoss(c.jobId, owner, points);
        }
      } catch (err) {
        this.log.debug({ err, jobId: c.jobId }, 'dashboard: loss series or phase time not recorded (the job is unaffected)');
        c.points.length = 0;
        c.phases.length = 0;
      } finally {
        c.running = false;
        this.claims.delete(owner);
      }
    })();
  }
}
