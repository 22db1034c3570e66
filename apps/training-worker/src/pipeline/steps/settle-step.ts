/**
 * settle: the end of a platform attempt. One settle decision per attempt is
 * recorded (a unique insert in `trainingJobSettlements`: the first wins, and
 * everyone, this worker, a later claim or the settlement sweep, follows the
 * decision in force), the points move per that decision through the ledger's
 * keys for the platform attempt (refund of charge − used; contributors
 * credited only for a completed job), and the job's terminal status is
 * written. Then the host's job folder is freed.
 *
 * Completion order (ADR 0002, "Cancel against completion"): the COMPLETED
 * write comes first and is conditional on the job still being ours and not
 * cancelled, so a cancel that lands before it wins (the registered model is
 * withdrawn, the user pays the time trained, nothing is credited); the points
 * are settled after it. A CANCELLED that lands over COMPLETED is undone.
 */
import { rm, stat } from 'node:fs/promises';
import { join } from 'node:path';
import { ObjectId } from 'mongodb';
import { inject, injectable } from 'tsyringe';
import {
  DatasetRepository,
  TrainingAttemptRepository,
  TrainingJobRepository,
  UserCoreReader,
  type AttemptAccounts,
  type AttemptState,
  type JobFailureClass,
  type SettleDecision,
  type SettlementDecisionDoc,
} from '@stationthis/db';
import { POINTS_LEDGER, type PointsLedgerPort } from '@stationthis/points';
import { usedPoints } from '@stationthis/recipes';
import { MODEL_UPLOAD_PORT, attemptLogKey, type ModelUploadPort } from '@stationthis/storage';
import { WORKER_CONFIG } from '../../tokens';
import type { WorkerConfig } from '../../config/worker-config';
import type { Logger } from '../../observability/logger';
import { WorkerMetrics } from '../../observability/metrics';
import { LeaseLost } from '../failures';
import type { JobContext } from '../job-context';
import type { Attempt } from './attempt';

export interface SettledPoints {
  decision: SettlementDecisionDoc;
  /** What the user paid for this platform attempt (the ledger clamps to the charge; 0 when nothing was charged). */
  usedPoints: number;
}

@injectable()
export class SettleStep {
  constructor(
    @inject(WORKER_CONFIG) private readonly config: WorkerConfig,
    private readonly jobs: TrainingJobRepository,
    private readonly attempts: TrainingAttemptRepository,
    private readonly datasets: DatasetRepository,
    private readonly users: UserCoreReader,
    @inject(POINTS_LEDGER) private readonly ledger: PointsLedgerPort,
    @inject(MODEL_UPLOAD_PORT) private readonly uploader: ModelUploadPort,
    private readonly metrics: WorkerMetrics,
  ) {}

  /** Points used by `trainSeconds` of training at the attempt's recorded quote (0 without a quote). */
  static usedFor(state: Pick<AttemptState, 'quote'>, trainSeconds: number): number {
    return state.quote && trainSeconds > 0 ? usedPoints(state.quote, trainSeconds) : 0;
  }

  /**
   * The model is registered: COMPLETED (if still ours and not cancelled), then
   * the completed decision and its points. A cancel that landed first ends the
   * attempt cancelled instead.
   */
  async complete(a: Attempt, triggerWord?: string): Promise<void> {
    const { ctx, state, writer, request } = a;
    const used = SettleStep.usedFor(state, state.trainSeconds ?? 0);
    // A resumed attempt starts in PROVISIONING; COMPLETED is reachable only from FINALIZING.
    await writer.transition('RUNNING');
    await writer.transition('FINALIZING');
    const upload = state.upload!;
    const written = await writer.complete({
      loraModelId: state.loraModelId ? new ObjectId(state.loraModelId) : undefined,
      modelRepoUrl: upload.loraUrl,
      previewImages: upload.sampleUrls,
      // The word the LoRA was trained on (prepare's cleaned one): what the platform shows and its resolver matches.
      ...(triggerWord ? { triggerWord, triggerWords: [triggerWord] } : { triggerWords: request.resultTriggerWords }),
      actualCostPoints: used,
      // Reconciled once the points are settled (recordSettled), right below.
      costReconciled: false,
    });
    if (written === 'cancelled') {
      ctx.log.info('cancel landed before COMPLETED: the model is withdrawn and the job ends cancelled');
      await this.cancel(a, `cancelled after training finished (${state.trainSeconds ?? 0} s trained); the model was withdrawn`, used);
      return;
    }
    await writer.setState({ completedWrittenAt: new Date() });
    const settled = await this.decideAndSettle(a, { outcome: 'completed', usedPoints: used, reason: 'training completed' });
    // A cancel that overwrote COMPLETED after it landed (read-then-write, or a lost update on FerretDB).
    await this.restoreIfCancelledLate(ctx.jobId, ctx.lease.attemptId, ctx.log);
    this.metrics.jobsByState.inc({ state: 'COMPLETED' });
    ctx.log.info({ loraUrl: upload.loraUrl, actualCostPoints: settled.usedPoints }, 'job completed');
    await this.cleanUp(ctx, a.ref.platformAttempt, 'completed');
  }

  /** Cancelled (ours or the platform's): the time used is paid, the rest refunded, a registered model withdrawn. */
  async cancel(a: Attempt, reason: string, used: number): Promise<void> {
    const { ctx, state, writer } = a;
    if (state.loraModelId && !state.modelWithdrawnAt) {
      await this.attempts.withdrawModel(state.loraModelId, reason);
      state.modelWithdrawnAt = new Date();
      await writer.setState({ modelWithdrawnAt: state.modelWithdrawnAt });
    }
    const settled = await this.decideAndSettle(a, { outcome: 'cancelled', usedPoints: used, reason });
    await this.endAs(a, settled);
    await this.cleanUp(ctx, a.ref.platformAttempt, 'cancelled');
  }

  /**
   * A final failure: full refund (no time is charged for a failure), FAILED
   * with the class and reason. `alreadyEnded`: the repository wrote FAILED
   * itself (worker attempts used up), only the points remain.
   */
  async fail(a: Attempt, reason: string, failureClass: JobFailureClass, opts: { alreadyEnded?: boolean } = {}): Promise<void> {
    const settled = await this.decideAndSettle(a, { outcome: 'failed', usedPoints: 0, reason, failureClass });
    if (opts.alreadyEnded) {
      a.ctx.terminalWritten = true;
      this.metrics.jobsByState.inc({ state: 'FAILED' });
      a.ctx.log.warn({ failureReason: reason, failureClass }, 'job failed: worker attempts used up; points refunded');
    } else {
      await this.endAs(a, settled);
    }
    await this.cleanUp(a.ctx, a.ref.platformAttempt, 'failed');
  }

  /** A claim of an attempt whose outcome is already decided (a crash after the decision): finish it. */
  async finishDecided(a: Attempt, decision: SettlementDecisionDoc): Promise<void> {
    a.ctx.log.info({ outcome: decision.outcome }, 'resuming an attempt whose outcome was already decided');
    const usedPts = await this.settlePoints(a.ref.jobId, a.ref.platformAttempt, a.state, decision);
    if (decision.outcome === 'completed') {
      await a.writer.transition('RUNNING');
      await a.writer.transition('FINALIZING');
      const upload = a.state.upload;
      // The same fields as the first COMPLETED write (whose landing is not known here), the cleaned trigger word included.
      const [triggerWord] = a.request.resultTriggerWords;
      const written = await a.writer.complete({
        actualCostPoints: usedPts,
        costReconciled: true,
        modelRepoUrl: upload?.loraUrl,
        previewImages: upload?.sampleUrls,
        loraModelId: a.state.loraModelId ? new ObjectId(a.state.loraModelId) : undefined,
        ...(triggerWord ? { triggerWord, triggerWords: [triggerWord] } : {}),
      });
      if (written === 'cancelled') await this.restoreIfCancelledLate(a.ctx.jobId, a.ctx.lease.attemptId, a.ctx.log);
      await this.jobs.recordSettled(a.ref.jobId, a.ref.platformAttempt, { actualCostPoints: usedPts });
    } else {
      await this.endAs(a, { decision, usedPoints: usedPts });
    }
    await this.cleanUp(a.ctx, a.ref.platformAttempt, decision.outcome);
  }

  /**
   * Record the decision (the first one wins) and move the points per the
   * decision in force. A worker that no longer owns the attempt record
   * stops here (LeaseLost) without moving anything.
   */
  async decideAndSettle(a: Attempt, decision: SettleDecision): Promise<SettledPoints> {
    const r = await this.attempts.decide(a.ref.jobId, a.ref.platformAttempt, decision, { owner: a.ref.owner });
    if (!r) {
      a.ctx.stop('lease-lost');
      throw new LeaseLost('a newer claim owns this attempt record; its owner settles it');
    }
    if (!r.ours) a.ctx.log.warn({ inForce: r.decision, ours: decision }, 'a settle decision was already recorded for this attempt: following it');
    const used = await this.settlePoints(a.ref.jobId, a.ref.platformAttempt, a.state, r.decision);
    return { decision: r.decision, usedPoints: used };
  }

  /**
   * Move the points of one platform attempt per its decision, exactly once
   * (the ledger's keys carry the platform attempt): refund charge − used,
   * credit the dataset creator and the trainer for a completed job only.
   * Returns the points the user paid. Shared with the settlement sweep.
   */
  async settlePoints(jobId: string, platformAttempt: number, state: AttemptState, decision: SettleDecision): Promise<number> {
    const result = await this.ledger.settle({ jobId, platformAttempt, usedPoints: decision.usedPoints, reason: decision.reason, outcome: decision.outcome });
    if (decision.outcome === 'completed' && result.usedPoints > 0 && state.accounts) {
      await this.creditContributors(jobId, platformAttempt, state.accounts, result.usedPoints);
    }
    await this.attempts.markSettled(jobId, platformAttempt);
    await this.jobs.recordSettled(jobId, platformAttempt, decision.outcome === 'completed' ? {} : { actualCostPoints: result.usedPoints });
    return result.usedPoints;
  }

  /** COMPLETED had landed and was overwritten by CANCELLED: restore it, recording the late cancel. */
  async restoreIfCancelledLate(jobId: string, leaseAttemptId: string, log: Logger): Promise<boolean> {
    const job = await this.jobs.findById(jobId);
    if (job?.status !== 'CANCELLED') return false;
    const restored = await this.jobs.restoreCompleted(jobId, leaseAttemptId, { costReconciled: true });
    if (restored) log.warn({ jobId }, 'a cancel landed after the job was COMPLETED and settled: COMPLETED restored (lateCancelAt recorded)');
    return restored;
  }

  /** The job's terminal write for a failed or cancelled decision. */
  private async endAs(a: Attempt, settled: SettledPoints): Promise<void> {
    const { decision, usedPoints: used } = settled;
    const fields = { failureReason: decision.reason, actualCostPoints: used, costReconciled: true };
    if (decision.outcome === 'cancelled') {
      await a.writer.cancelled(fields);
      this.metrics.jobsByState.inc({ state: 'CANCELLED' });
      a.ctx.log.info({ actualCostPoints: used }, 'job cancelled');
    } else {
      const failureClass = (decision.failureClass as JobFailureClass | undefined) ?? 'infrastructure';
      await a.writer.failed({ ...fields, failureClass });
      this.metrics.jobsByState.inc({ state: 'FAILED' });
      a.ctx.log.warn({ failureReason: decision.reason, failureClass }, 'job failed');
    }
  }

  /**
   * The job is terminal: keep the engine log of a failed or cancelled attempt
   * under its platform attempt and claim (operators need it; successful
   * attempts uploaded theirs already), then free the host's job folder.
   */
  private async cleanUp(ctx: JobContext, platformAttempt: number, outcome: string): Promise<void> {
    const workDir = join(this.config.jobsDir, ctx.jobId);
    const logFile = join(workDir, `attempt-${ctx.lease.attemptId}`, 'train.log');
    if (outcome !== 'completed' && (await stat(logFile).catch(() => null))) {
      await this.uploader
        .upload({ filePath: logFile, bucketAlias: 'models', key: attemptLogKey(ctx.jobId, platformAttempt, ctx.lease.attemptId), contentType: 'text/plain; charset=utf-8' })
        .catch((err) => ctx.log.warn({ err }, 'could not keep the log of the failed attempt'));
    }
    await rm(workDir, { recursive: true, force: true }).catch((err) => ctx.log.warn({ err }, `could not remove ${workDir}`));
  }

  private async creditContributors(jobId: string, platformAttempt: number, accounts: AttemptAccounts, used: number): Promise<void> {
    const owner = accounts.ownerAccountId;
    const creator = accounts.datasetCreatorId ?? (accounts.datasetId ? String((await this.datasets.findById(accounts.datasetId))?.ownerAccountId ?? '') || undefined : undefined);
    const creatorPoints = Math.floor(used * this.config.shares.datasetCreator);
    if (creator && creator !== owner && creatorPoints > 0) {
      // The wallet makes the credit visible to the platform's wallet-based balance too.
      const wallet = this.users.primaryWallet(await this.users.findById(creator));
      await this.ledger.credit({ jobId, platformAttempt, recipientAccountId: creator, recipientWalletAddress: wallet, points: creatorPoints, kind: 'dataset-creator', reason: `dataset used by training ${jobId}` });
    }
    const trainerPoints = Math.floor(used * this.config.shares.trainer);
    if (trainerPoints > 0) {
      const wallet = accounts.walletAddress ?? this.users.primaryWallet(await this.users.findById(owner));
      await this.ledger.credit({ jobId, platformAttempt, recipientAccountId: owner, recipientWalletAddress: wallet, points: trainerPoints, kind: 'trainer', reason: `trainer reward for ${jobId}` });
    }
  }
}
