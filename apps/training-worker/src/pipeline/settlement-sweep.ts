/**
 * The settlement sweep (run by every worker's maintenance): every attempt
 * record that is `open` (a charge may exist) and whose platform attempt has
 * ended without its owner settling it is settled here, exactly once (the
 * decision is a unique insert; the ledger's keys make every movement once).
 *
 * "Ended" does not depend on who wrote the job's status: a platform Cancel
 * (`status: CANCELLED` only), a platform sweeper's FAILED, a deleted job, a
 * Retry that moved the job to a newer platform attempt, or recovery. An
 * attempt whose owner still holds a live lease is left to that owner, and a
 * QUEUED or leased job on the same platform attempt is still running (its
 * next claim reuses the charge).
 */
import { inject, injectable } from 'tsyringe';
import {
  LEASED_STATUSES,
  platformAttemptOf,
  TrainingAttemptRepository,
  TrainingJobRepository,
  type SettleDecision,
  type TrainingAttemptDoc,
  type TrainingJobDoc,
} from '@stationthis/db';
import { ROOT_LOGGER, WORKER_CONFIG } from '../tokens';
import type { WorkerConfig } from '../config/worker-config';
import type { Logger } from '../observability/logger';
import { SettleStep } from './steps/settle-step';

export interface SweepReport {
  settled: Array<{ jobId: string; platformAttempt: number; outcome: string; usedPoints: number }>;
  /** Jobs whose COMPLETED was overwritten by a late cancel and is now restored. */
  restored: string[];
}

@injectable()
export class SettlementSweep {
  constructor(
    @inject(WORKER_CONFIG) private readonly config: WorkerConfig,
    @inject(ROOT_LOGGER) private readonly log: Logger,
    private readonly jobs: TrainingJobRepository,
    private readonly attempts: TrainingAttemptRepository,
    private readonly settle: SettleStep,
  ) {}

  async run(now: Date = new Date()): Promise<SweepReport> {
    const report: SweepReport = { settled: [], restored: [] };
    for await (const record of this.attempts.openAttempts()) {
      try {
        const done = await this.settleOne(record, now);
        if (done) report.settled.push(done);
      } catch (err) {
        this.log.error({ err, jobId: record.jobId, platformAttempt: record.platformAttempt }, 'could not settle an ended attempt; the next sweep tries again');
      }
    }
    // Jobs flagged by recovery whose attempts are all settled (or were never charged): clear the flag.
    for (const job of await this.jobs.findRefundsDue()) {
      const jobId = String(job._id);
      if ((await this.attempts.findForJob(jobId)).some((r) => r.open)) continue;
      if (!(await this.jobs.recordSettled(jobId, platformAttemptOf(job)))) await this.jobs.clearRefundDue(jobId);
    }
    // A cancel that overwrote a COMPLETED, settled job: the points and the public model say completed.
    for (const job of await this.jobs.findCancelledOverCompleted()) {
      const jobId = String(job._id);
      const decision = await this.attempts.findDecision(jobId, platformAttemptOf(job));
      if (decision?.outcome === 'completed' && job.lease?.attemptId) {
        if (await this.settle.restoreIfCancelledLate(jobId, job.lease.attemptId, this.log)) report.restored.push(jobId);
      }
    }
    if (report.settled.length || report.restored.length) this.log.warn(report, 'settled points of attempts that ended without their worker');
    return report;
  }

  private async settleOne(record: TrainingAttemptDoc, now: Date): Promise<SweepReport['settled'][number] | null> {
    const { jobId, platformAttempt } = record;
    const job = await this.jobs.findById(jobId);
    const current = job ? platformAttemptOf(job) : -1;
    if (job && current === platformAttempt) {
      // Still in the queue or leased on this platform attempt: the claim (or recovery) handles it.
      if (job.status === 'QUEUED' || LEASED_STATUSES.includes(job.status)) return null;
      // Ended, but its owner is alive (it settles right after its terminal write or within a cancel poll).
      const lease = job.lease;
      if (lease?.attemptId === record.owner && lease?.expiresAt && new Date(lease.expiresAt).getTime() > now.getTime()) return null;
    }
    // `decide` returns the decision in force when one was already recorded.
    const decided = (await this.attempts.decide(jobId, platformAttempt, this.decisionFor(record, job, current), { sweep: this.config.workerId }))?.decision;
    if (!decided) return null;
    if (decided.outcome === 'cancelled' && record.state.loraModelId && !record.state.modelWithdrawnAt) {
      await this.attempts.withdrawModel(record.state.loraModelId, decided.reason);
    }
    const used = await this.settle.settlePoints(jobId, platformAttempt, record.state, decided);
    if (decided.outcome === 'completed' && job && current === platformAttempt && record.owner) {
      await this.settle.restoreIfCancelledLate(jobId, record.owner, this.log);
    }
    this.log.warn({ jobId, platformAttempt, outcome: decided.outcome, usedPoints: used, reason: decided.reason }, 'settled an ended attempt');
    return { jobId, platformAttempt, outcome: decided.outcome, usedPoints: used };
  }

  /**
   * The decision for an attempt its worker did not settle. The user pays only
   * for training this attempt finished and delivered or cancelled after
   * delivery: a job COMPLETED by us (or overwritten CANCELLED after that) is
   * completed; a job cancelled after its model was registered pays the time
   * trained, the model is withdrawn; anything else (a worker that died
   * mid-way, a platform FAILED, a deleted job, a superseded attempt) is our
   * side's or an abandoned attempt: a full refund.
   */
  private decisionFor(record: TrainingAttemptDoc, job: TrainingJobDoc | null, current: number): SettleDecision {
    const s = record.state;
    const trained = SettleStep.usedFor(s, s.trainSeconds ?? 0);
    if (!job) return { outcome: 'failed', usedPoints: 0, reason: 'the training job was deleted before it was settled; points refunded' };
    if (current !== record.platformAttempt) {
      return { outcome: 'failed', usedPoints: 0, reason: `platform attempt ${record.platformAttempt} was superseded by a retry (attempt ${current}); its points are refunded` };
    }
    switch (job.status) {
      case 'COMPLETED':
        return s.loraModelId
          ? { outcome: 'completed', usedPoints: trained, reason: 'training completed (settled by the sweep)' }
          : { outcome: 'failed', usedPoints: 0, reason: 'the job was marked COMPLETED by another writer before its training finished; points refunded' };
      case 'CANCELLED':
        // Our COMPLETED landed (recorded on the attempt, or visible as the modelRepoUrl it writes) before the cancel.
        if (s.completedWrittenAt || (s.loraModelId && job.modelRepoUrl)) return { outcome: 'completed', usedPoints: trained, reason: 'training completed before the cancel arrived' };
        return s.loraModelId
          ? { outcome: 'cancelled', usedPoints: trained, reason: `cancelled after training finished (${s.trainSeconds ?? 0} s trained); the model was withdrawn` }
          : { outcome: 'cancelled', usedPoints: 0, reason: 'cancelled before training finished; points refunded' };
      default:
        return { outcome: 'failed', usedPoints: 0, reason: String(job.failureReason ?? 'the job failed; points refunded') };
    }
  }
}
