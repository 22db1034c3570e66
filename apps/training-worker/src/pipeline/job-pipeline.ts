/**
 * One claimed attempt of one training job, top-down as its steps:
 *
 *   prepare → charge → inputs → train → publish → settle
 *
 * Every step is idempotent. Progress that must survive a crash (the quote,
 * the charge, the slug, the uploads, the model id, the settlement intent) is
 * recorded in `job.pipeline` through the attempt's fenced writer, so a
 * re-claimed attempt resumes where the last one stopped and never moves
 * points twice (the ledger's own idempotency keys are the second line of
 * defence). Each step lives in `steps/` with the ports it needs.
 */
import { join } from 'node:path';
import { inject, injectable } from 'tsyringe';
import { TrainingJobDoc, TrainingJobRepository } from '@stationthis/db';
import { usedPoints } from '@stationthis/recipes';
import { WORKER_CONFIG } from '../tokens';
import type { WorkerConfig } from '../config/worker-config';
import { WorkerMetrics } from '../observability/metrics';
import { AttemptWriter } from './attempt-writer';
import { CancelRequested, FAILURE_POLICY, JobFailure, LeaseLost } from './failures';
import { JobContext } from './job-context';
import { pipelineStateOf } from './pipeline-state';
import { trainingRequestFromJob } from './training-request';
import type { Attempt } from './steps/attempt';
import { ChargeStep } from './steps/charge-step';
import { InputsStep } from './steps/inputs-step';
import { PrepareStep } from './steps/prepare-step';
import { PublishStep } from './steps/publish-step';
import { SettleStep } from './steps/settle-step';
import { TrainStep } from './steps/train-step';

@injectable()
export class JobPipeline {
  constructor(
    @inject(WORKER_CONFIG) private readonly config: WorkerConfig,
    private readonly jobs: TrainingJobRepository,
    private readonly metrics: WorkerMetrics,
    private readonly prepare: PrepareStep,
    private readonly charge: ChargeStep,
    private readonly inputs: InputsStep,
    private readonly training: TrainStep,
    private readonly publish: PublishStep,
    private readonly settle: SettleStep,
  ) {}

  /** Runs the attempt to a terminal state, or throws LeaseLost / ShutdownRequested. */
  async run(ctx: JobContext): Promise<void> {
    const a: Attempt = { ctx, writer: new AttemptWriter(this.jobs, ctx, this.config.progressThrottleMs), request: trainingRequestFromJob(ctx.job), state: pipelineStateOf(ctx.job) };
    const { state, writer } = a;
    // A previous attempt already decided the outcome and may have moved points: finish it.
    if (state.settleIntent) {
      await this.settle.finish(a, state.settleIntent.outcome, state.settleIntent.reason);
      return;
    }
    let trainStartedAt: number | undefined;
    try {
      const p = await this.step(a, 'validate', 'n/a', () => this.prepare.run(a.request));
      const recipeId = p.recipe.id;
      await this.step(a, 'charge', recipeId, () => this.charge.run(a, p));
      ctx.throwIfStopped();

      if (!state.upload) {
        const folders = this.training.folders(ctx.jobId, ctx.lease.attemptId);
        const fetched = await this.step(a, 'fetch-dataset', recipeId, () => this.inputs.fetchDataset(ctx, p, a.request.captionSetId));
        const weights = await this.step(a, 'fetch-weights', recipeId, () => this.inputs.fetchWeights(p));
        try {
          ctx.throwIfStopped();
          const rendered = await this.step(a, 'render', recipeId, () => this.training.render(a, p, folders, fetched, weights));
          trainStartedAt = Date.now();
          await this.step(a, 'train', recipeId, () => this.training.train(a, p, folders, rendered.steps, weights));
          state.trainSeconds = Math.round((Date.now() - trainStartedAt) / 1000);
          await writer.setState({ trainSeconds: state.trainSeconds });
          const loraPath = join(folders.outputDir, rendered.outputs.lora);
          await this.step(a, 'check-output', recipeId, () => this.training.checkOutput(a, p, loraPath));
          ctx.throwIfStopped();
          await writer.transition('FINALIZING');
          state.upload = await this.step(a, 'upload', recipeId, () =>
            this.publish.upload(a, p, { loraPath, outputDir: folders.outputDir, logFile: folders.logFile, jobDir: folders.jobDir, samplesDir: rendered.outputs.samplesDir }),
          );
        } finally {
          await Promise.all(weights.map((h) => h.release().catch(() => undefined)));
        }
      } else {
        ctx.log.info({ loraUrl: state.upload.loraUrl }, 'resuming after upload: outputs already stored');
        await writer.transition('RUNNING');
        await writer.transition('FINALIZING');
      }

      ctx.throwIfStopped();
      await this.step(a, 'register', recipeId, () => this.publish.register(a, p));
      state.settleIntent = { outcome: 'completed', usedPoints: usedPoints(state.quote!, state.trainSeconds ?? 0), reason: 'training completed' };
      await writer.setState({ settleIntent: state.settleIntent });
      await this.settle.finish(a, 'completed', 'training completed', p);
    } catch (err) {
      await this.onError(a, err, trainStartedAt);
    }
  }

  /**
   * Prefetch the inputs of a job that is still QUEUED (no lease, no charge),
   * so the attempt that claims it later starts training at once. Best effort.
   */
  async prefetch(job: TrainingJobDoc, log: JobContext['log']): Promise<void> {
    const request = trainingRequestFromJob(job);
    const p = await this.prepare.run(request);
    await this.inputs.prefetch(request.jobId, p, request.captionSetId);
    log.info({ jobId: request.jobId }, 'prefetched the next queued job\'s dataset and weights');
  }

  /** Cancel settles the time used; a retryable failure re-queues with the charge kept; anything else fails with a refund. */
  private async onError(a: Attempt, err: unknown, trainStartedAt: number | undefined): Promise<void> {
    const { ctx, state, writer } = a;
    if (err instanceof CancelRequested || ctx.stopReason === 'cancel') {
      const seconds = trainStartedAt ? (Date.now() - trainStartedAt) / 1000 : 0;
      const used = state.quote ? usedPoints(state.quote, seconds) : 0;
      state.settleIntent = { outcome: 'cancelled', usedPoints: used, reason: `cancelled by user after ${Math.round(seconds)} s of training` };
      await writer.setState({ settleIntent: state.settleIntent });
      await this.settle.finish(a, 'cancelled', state.settleIntent.reason);
      return;
    }
    if (ctx.stopReason === 'lease-lost' || ctx.stopReason === 'shutdown') throw err;
    const failure = err instanceof JobFailure ? err : new JobFailure('infrastructure', `The worker hit an internal error (${(err as Error).message}). The job will be retried if attempts remain; otherwise points are refunded.`, { cause: err });
    ctx.log.error({ err, failureClass: failure.failureClass }, 'attempt failed');
    this.metrics.failures.inc({ class: failure.failureClass });
    if (FAILURE_POLICY[failure.failureClass].retry && a.request.attempts < (a.request.maxAttempts ?? this.config.maxAttempts)) {
      // Another attempt may succeed: re-queue, keeping the charge (the next attempt reuses it).
      const outcome = await this.jobs.retryLater(ctx.lease, failure.userMessage);
      if (outcome === 'QUEUED') {
        ctx.log.warn({ attempt: a.request.attempts }, 'infrastructure failure: job re-queued for another attempt');
        return;
      }
      if (outcome === null) throw new LeaseLost('lease lost while re-queueing');
      await this.settle.refundEnded(a, failure.userMessage);
      return;
    }
    state.settleIntent = { outcome: 'failed', usedPoints: 0, reason: failure.userMessage };
    if (state.quote) await writer.setState({ settleIntent: state.settleIntent });
    await this.settle.finish(a, 'failed', failure.userMessage, undefined, failure.failureClass);
  }

  private async step<T>(a: Attempt, name: string, recipe: string, fn: () => Promise<T>): Promise<T> {
    a.ctx.log.info({ step: name }, `step ${name}`);
    await a.writer.stepMarker(name);
    return this.metrics.timed(name, recipe, fn);
  }
}

