/**
 * settle: move the points per the recorded intent (charge minus used time
 * refunded; contributors credited on success), then the terminal status
 * write, then the host's job folder is freed. Every ledger call carries the
 * job's idempotency key, so a resumed or replayed settle never moves points
 * twice.
 */
import { rm, stat } from 'node:fs/promises';
import { join } from 'node:path';
import { ObjectId } from 'mongodb';
import { inject, injectable } from 'tsyringe';
import { DatasetRepository, TrainingJobRepository, UserCoreReader, type JobFailureClass } from '@stationthis/db';
import { PointsLedger } from '@stationthis/points';
import { ModelUploader, jobArtifactKey } from '@stationthis/storage';
import { WORKER_CONFIG } from '../../tokens';
import type { WorkerConfig } from '../../config/worker-config';
import { WorkerMetrics } from '../../observability/metrics';
import type { SettleOutcome } from '../pipeline-state';
import type { JobContext } from '../job-context';
import type { Attempt, Prepared } from './attempt';

@injectable()
export class SettleStep {
  constructor(
    @inject(WORKER_CONFIG) private readonly config: WorkerConfig,
    private readonly jobs: TrainingJobRepository,
    private readonly datasets: DatasetRepository,
    private readonly users: UserCoreReader,
    private readonly ledger: PointsLedger,
    private readonly uploader: ModelUploader,
    private readonly metrics: WorkerMetrics,
  ) {}

  /** Settles points per the recorded intent, credits contributors on success, then ends the job. */
  async finish(a: Attempt, outcome: SettleOutcome, reason: string, p?: Prepared, failureClass?: JobFailureClass): Promise<void> {
    const { ctx, state, writer, request } = a;
    const intent = state.settleIntent;
    // The quote is recorded before the charge, so a charge whose flag was lost in a crash is still settled.
    if (state.quote && intent) {
      await this.ledger.settle({ jobId: request.jobId, usedPoints: intent.usedPoints, reason: intent.reason, outcome });
      if (outcome === 'completed' && intent.usedPoints > 0) await this.creditContributors(a, intent.usedPoints, p);
      await writer.setState({ settled: true });
    }
    const actualCostPoints = intent?.usedPoints ?? 0;
    if (outcome === 'completed') {
      // A resumed attempt starts in PROVISIONING; COMPLETED is reachable only from FINALIZING.
      await writer.transition('RUNNING');
      await writer.transition('FINALIZING');
      const upload = state.upload!;
      await writer.terminal('COMPLETED', {
        completedAt: new Date(),
        loraModelId: state.loraModelId ? new ObjectId(state.loraModelId) : undefined,
        modelRepoUrl: upload.loraUrl,
        previewImages: upload.sampleUrls,
        triggerWords: request.resultTriggerWords,
        actualCostPoints,
        costReconciled: true,
        progress: 100,
      });
      this.metrics.jobsByState.inc({ state: 'COMPLETED' });
      ctx.log.info({ loraUrl: upload.loraUrl, actualCostPoints }, 'job completed');
    } else if (outcome === 'cancelled') {
      await writer.terminal('CANCELLED', { cancelledAt: new Date(), actualCostPoints, costReconciled: true, failureReason: reason });
      this.metrics.jobsByState.inc({ state: 'CANCELLED' });
      ctx.log.info({ actualCostPoints }, 'job cancelled');
    } else {
      await writer.terminal('FAILED', { failureReason: reason, failureClass: failureClass ?? 'infrastructure', actualCostPoints, costReconciled: Boolean(state.quote) });
      this.metrics.jobsByState.inc({ state: 'FAILED' });
      ctx.log.warn({ failureReason: reason, failureClass }, 'job failed');
    }
    await this.cleanUp(ctx, outcome);
  }

  /** A re-queue that found the job ended meanwhile (a cancel arrived): settle now rather than waiting for maintenance. */
  async refundEnded(a: Attempt, reason: string): Promise<void> {
    await this.ledger.settle({ jobId: a.request.jobId, usedPoints: 0, reason, outcome: 'failed' });
    await this.jobs.clearRefundDue(a.request.jobId);
  }

  /**
   * The job is terminal: keep the engine log of a failed or cancelled attempt
   * in the job's artifact prefix (operators need it; successful attempts
   * uploaded theirs already), then free the host's job folder.
   */
  private async cleanUp(ctx: JobContext, outcome: SettleOutcome): Promise<void> {
    const workDir = join(this.config.jobsDir, ctx.jobId);
    const logFile = join(workDir, `attempt-${ctx.lease.attemptId}`, 'train.log');
    if (outcome !== 'completed' && (await stat(logFile).catch(() => null))) {
      await this.uploader
        .upload({ filePath: logFile, bucketAlias: 'models', key: jobArtifactKey(ctx.jobId, `logs/attempt-${ctx.lease.attemptId}.log`), contentType: 'text/plain; charset=utf-8' })
        .catch((err) => ctx.log.warn({ err }, 'could not keep the log of the failed attempt'));
    }
    await rm(workDir, { recursive: true, force: true }).catch((err) => ctx.log.warn({ err }, `could not remove ${workDir}`));
  }

  private async creditContributors(a: Attempt, usedPoints: number, p?: Prepared): Promise<void> {
    const { request } = a;
    const owner = request.ownerAccountId;
    const dataset = p?.dataset ?? (request.datasetId ? await this.datasets.findById(request.datasetId) : null);
    const creator = dataset?.ownerAccountId ? String(dataset.ownerAccountId) : undefined;
    const creatorPoints = Math.floor(usedPoints * this.config.shares.datasetCreator);
    if (creator && creator !== owner && creatorPoints > 0) {
      // The wallet makes the credit visible to the platform's wallet-based balance too.
      const wallet = this.users.primaryWallet(await this.users.findById(creator));
      await this.ledger.credit({ jobId: request.jobId, recipientAccountId: creator, recipientWalletAddress: wallet, points: creatorPoints, kind: 'dataset-creator', reason: `dataset used by training ${request.jobId}` });
    }
    const trainerPoints = Math.floor(usedPoints * this.config.shares.trainer);
    if (trainerPoints > 0) {
      const wallet = request.walletAddress ?? this.users.primaryWallet(await this.users.findById(owner));
      await this.ledger.credit({ jobId: request.jobId, recipientAccountId: owner, recipientWalletAddress: wallet, points: trainerPoints, kind: 'trainer', reason: `trainer reward for ${request.jobId}` });
    }
  }
}
