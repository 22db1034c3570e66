/**
 * One claimed attempt of one training job, top-down as its steps:
 *
 *   prepare → charge → inputs → train → publish → settle
 *
 * Every step is idempotent. Progress that must survive a crash (the quote,
 * the charge, the slug, the uploads, the model id, the training time) is
 * recorded in the attempt record of the job's platform attempt (libs/db
 * `trainingJobAttempts`, fenced by the lease's attemptId), never in the job
 * document, which the platform and its clients write. A re-claim of the same
 * platform attempt resumes where the last one stopped and never moves points
 * twice; a platform Retry (`retryCount + 1`) starts a fresh record. Each step
 * lives in `steps/` with the ports it needs.
 *
 * Training itself resumes too: while it runs, intermediate checkpoints and the
 * engine's newest state are stored and recorded (saves/). A re-claim that finds
 * a state written by the same engine (`<recipe>@<version>#<image>`) continues
 * from its step; its training seconds add to the earlier claims' container time.
 */
import { join } from 'node:path';
import type { ResumeStateRecord } from '@stationthis/db';
import { ObjectStorage } from '@stationthis/storage';
import { inject, injectable } from 'tsyringe';
import { TrainingAttemptRepository, TrainingJobDoc, TrainingJobRepository } from '@stationthis/db';
import { WORKER_CONFIG } from '../tokens';
import type { WorkerConfig } from '../config/worker-config';
import { WorkerMetrics } from '../observability/metrics';
import { AttemptActivity } from './attempt-activity';
import { AttemptWriter } from './attempt-writer';
import { CancelRequested, FAILURE_POLICY, JobFailure, LeaseLost } from './failures';
import { JobContext } from './job-context';
import { platformCostFields, trainingRequestFromJob } from './training-request';
import type { Attempt } from './steps/attempt';
import { AttemptAlreadySettled, ChargeStep } from './steps/charge-step';
import { InputsStep } from './steps/inputs-step';
import { PrepareStep } from './steps/prepare-step';
import { PublishStep } from './steps/publish-step';
import { SettleStep } from './steps/settle-step';
import { testRunOf } from './steps/test-run';
import { TrainStep } from './steps/train-step';

@injectable()
export class JobPipeline {
  constructor(
    @inject(WORKER_CONFIG) private readonly config: WorkerConfig,
    private readonly jobs: TrainingJobRepository,
    private readonly attempts: TrainingAttemptRepository,
    private readonly metrics: WorkerMetrics,
    private readonly prepare: PrepareStep,
    private readonly charge: ChargeStep,
    private readonly inputs: InputsStep,
    private readonly training: TrainStep,
    private readonly publish: PublishStep,
    private readonly settle: SettleStep,
    private readonly storage: ObjectStorage,
    private readonly activity: AttemptActivity,
  ) {}

  /** Runs the attempt to a terminal state, or throws LeaseLost / ShutdownRequested. */
  async run(ctx: JobContext): Promise<void> {
    const record = await this.attempts.open(ctx.lease, ctx.job);
    if (!record) throw new LeaseLost('a newer claim owns this platform attempt');
    const ref = { jobId: ctx.jobId, platformAttempt: record.platformAttempt, owner: ctx.lease.attemptId };
    const writer = new AttemptWriter(this.jobs, this.attempts, ctx, ref, this.config.progressThrottleMs, this.activity);
    const state0 = record.state ?? {};
    const a: Attempt = { ctx, ref, writer, request: trainingRequestFromJob(ctx.job), state: state0, openedAt: Date.now(), priorTrainSeconds: 0 };
    const { state } = a;
    if (record.platformAttempt > 0) ctx.log.info({ platformAttempt: record.platformAttempt }, 'platform retry: a new attempt with its own quote and charge');
    // An earlier claim of this platform attempt already decided the outcome (and may have moved points): finish it.
    const decided = await this.attempts.findDecision(ref.jobId, ref.platformAttempt);
    if (decided) {
      await this.settle.finishDecided(a, decided);
      return;
    }
    let trainStartedAt: number | undefined;
    try {
      const p = await this.step(a, 'validate', 'n/a', () =>
        this.prepare.run(a.request, { paid: Boolean(state.charged || state.upload), conceptPrompt: state.conceptPrompt }),
      );
      // The concept prompt resolved before the first charge stays this platform attempt's (a resumed training keeps its captions).
      const pairing = p.controls?.pairing;
      if (pairing && !state.conceptPrompt) {
        await a.writer.setState({ conceptPrompt: { text: pairing.prompt ?? null, ...(pairing.promptSource ? { source: pairing.promptSource } : {}) } });
      }
      // What prepare found worth saying but not refusing (e.g. fewer images than recommended), where the user reads it.
      if (p.warnings.length) await a.writer.logLines(p.warnings.map((w) => `[worker] warning: ${w}`));
      const recipeId = p.recipe.id;
      await this.step(a, 'charge', recipeId, () => this.charge.run(a, p));
      // The platform's cost row, as soon as the points are held; the GPU is named once one is allocated (train).
      await a.writer.setJobFields({ ...platformCostFields(p.quote, p.recipe, testRunOf(this.config, p.recipe) ? 'cpu' : undefined) });
      ctx.throwIfStopped();

      if (!state.upload) {
        const folders = this.training.folders(ctx.jobId, ctx.lease.attemptId);
        const fetched = await this.step(a, 'fetch-dataset', recipeId, () => this.inputs.fetchDataset(ctx, p, a.request.captionSetId));
        const weights = await this.step(a, 'fetch-weights', recipeId, () => this.inputs.fetchWeights(p).catch((e) => {
          throw operatorFailureIfWeightsMissing(e);
        }));
        try {
          ctx.throwIfStopped();
          const engine = await this.training.engineId(p);
          const resumeState = await this.resumableState(a, engine);
          const rendered = await this.step(a, 'render', recipeId, () => this.training.render(a, p, folders, fetched, weights, resumeState));
          if (rendered.resume) await this.recordResume(a, rendered.resume.step, rendered.outputs.saves?.totalSteps);
          else if (state.resumeState) await this.dropResumeState(a);
          // Billed: the work the resumed state carries, plus this claim's training (ADR 0008).
          a.priorTrainSeconds = rendered.resume ? (resumeState?.trainSeconds ?? 0) : 0;
          trainStartedAt = Date.now();
          a.trainStartedAt = trainStartedAt;
          await this.step(a, 'train', recipeId, () => this.training.train(a, p, folders, rendered, weights, engine));
          // The resumed state's training time plus this claim's (one job's work, billed once).
          state.trainSeconds = Math.round((a.priorTrainSeconds ?? 0) + (Date.now() - trainStartedAt) / 1000);
          trainStartedAt = undefined;
          await a.writer.setState({ trainSeconds: state.trainSeconds });
          const loraPath = join(folders.outputDir, rendered.outputs.lora);
          await this.step(a, 'check-output', recipeId, () => this.training.checkOutput(a, p, loraPath, rendered));
          ctx.throwIfStopped();
          await a.writer.transition('FINALIZING');
          state.upload = await this.step(a, 'upload', recipeId, () =>
            this.publish.upload(a, p, { loraPath, outputDir: folders.outputDir, logFile: folders.logFile, jobDir: folders.jobDir, samplesDir: rendered.outputs.samplesDir, saves: rendered.outputs.saves }),
          );
          // The final LoRA is stored: the engine state is of no further use.
          if (state.resumeState) await this.storage.deleteObject('uploads', state.resumeState.key).catch((e: Error) => ctx.log.warn({ err: e }, 'could not delete the resume state after the upload'));
        } finally {
          await Promise.all(weights.map((h) => h.release().catch(() => undefined)));
        }
      } else {
        ctx.log.info({ loraUrl: state.upload.loraUrl }, 'resuming after upload: outputs already stored');
        await a.writer.transition('RUNNING');
        await a.writer.transition('FINALIZING');
      }

      ctx.throwIfStopped();
      await this.step(a, 'register', recipeId, () => this.publish.register(a, p));
      ctx.throwIfStopped();
      await this.settle.complete(a, p.triggerWord);
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

  /**
   * Cancel settles the time trained; a retryable failure re-queues with the
   * charge kept (the next claim of this platform attempt reuses it); anything
   * else fails with a full refund. A lost lease writes nothing.
   */
  private async onError(a: Attempt, err: unknown, trainStartedAt: number | undefined): Promise<void> {
    const { ctx } = a;
    if (err instanceof CancelRequested || ctx.stopReason === 'cancel') {
      await this.cancelled(a, trainStartedAt);
      return;
    }
    if (err instanceof LeaseLost || ctx.stopReason === 'lease-lost' || ctx.stopReason === 'shutdown') throw err;
    if (err instanceof AttemptAlreadySettled) {
      // The points of this platform attempt were settled by someone else (the sweep saw the job end): follow
      // that decision rather than train for free.
      ctx.log.warn({ err }, 'this platform attempt was already settled: ending it per the recorded decision');
      await this.settle.fail(a, 'This training attempt had already been settled; nothing more was charged.', 'infrastructure');
      return;
    }
    const failure = err instanceof JobFailure ? err : new JobFailure('infrastructure', `The worker hit an internal error (${(err as Error).message}). The job will be retried if attempts remain; otherwise points are refunded.`, { cause: err });
    ctx.log.error({ err, failureClass: failure.failureClass }, 'attempt failed');
    this.metrics.failures.inc({ class: failure.failureClass });
    if (FAILURE_POLICY[failure.failureClass].retry) {
      // The repository counts worker attempts of this platform attempt against WORKER_MAX_ATTEMPTS.
      const outcome = await this.jobs.retryLater(ctx.lease, failure.userMessage);
      if (outcome === 'QUEUED') {
        ctx.log.warn({ attempt: a.request.attempts }, 'infrastructure failure: job re-queued for another attempt');
        return;
      }
      if (outcome === null) {
        // A cancel raced the re-queue: settle it as a cancel; otherwise the job is someone else's now.
        if ((await this.jobs.leaseState(ctx.lease)) === 'cancelled') return this.cancelled(a, undefined);
        throw new LeaseLost('lease lost while re-queueing');
      }
      // Attempts used up: the repository wrote FAILED; settle the full refund now.
      await this.settle.fail(a, failure.userMessage, failure.failureClass, { alreadyEnded: true });
      return;
    }
    await this.settle.fail(a, failure.userMessage, failure.failureClass);
  }

  /**
   * The recorded resume state, when this claim may continue from it: written
   * by the same engine (recipe, version and image). Otherwise says why and
   * returns nothing (training starts from step 0).
   */
  private async resumableState(a: Attempt, engine: string): Promise<ResumeStateRecord | undefined> {
    const rec = a.state.resumeState;
    if (!rec) return undefined;
    if (rec.engine !== engine) {
      a.ctx.log.warn({ recorded: rec.engine, engine, step: rec.step }, 'not resuming: the saved state was written by another engine');
      await a.writer.logLines([`[worker] not resuming from step ${rec.step}: the saved state was written by ${rec.engine}, this worker runs ${engine}; training starts from step 0`]);
      return undefined;
    }
    return rec;
  }

  /** Appends to `resumes` and moves the job's progress to the resumed step. */
  private async recordResume(a: Attempt, step: number, totalSteps: number | undefined): Promise<void> {
    const resumes = [...(a.state.resumes ?? []), { step, attemptId: a.ctx.lease.attemptId, at: new Date() }];
    a.state.resumes = resumes;
    await a.writer.setState({ resumes });
    a.ctx.log.info({ step, resumes: resumes.length }, 'resuming training from the saved state');
    await a.writer.resumedAt(step, totalSteps, `[worker] resuming training from the state saved at step ${step}${totalSteps ? ` of ${totalSteps}` : ''}`);
  }

  /** Training starts over: the unusable state goes, so the new run's (lower) saves can be recorded. */
  private async dropResumeState(a: Attempt): Promise<void> {
    const old = a.state.resumeState!;
    delete a.state.resumeState;
    await a.writer.setState({ resumeState: null as never });
    await this.storage.deleteObject('uploads', old.key).catch((e: Error) => a.ctx.log.warn({ err: e, key: old.key }, 'could not delete an unusable resume state'));
  }

  /** Time trained in this platform attempt (still running: earlier claims plus until now; finished earlier: the recorded seconds). */
  private async cancelled(a: Attempt, trainStartedAt: number | undefined): Promise<void> {
    const seconds = trainStartedAt ? (a.priorTrainSeconds ?? 0) + (Date.now() - trainStartedAt) / 1000 : (a.state.trainSeconds ?? 0);
    const used = a.state.charged ? SettleStep.usedFor(a.state, seconds) : 0;
    await this.settle.cancel(a, `cancelled by user after ${Math.round(seconds)} s of training`, used);
  }

  private async step<T>(a: Attempt, name: string, recipe: string, fn: () => Promise<T>): Promise<T> {
    a.ctx.log.info({ step: name }, `step ${name}`);
    await a.writer.stepMarker(name);
    return this.metrics.timed(name, recipe, fn);
  }
}


/**
 * Base weights that are not in the bucket are a deployment problem, not the
 * job's: no other attempt on this setup can succeed. The message names the
 * object the operator must upload.
 */
function operatorFailureIfWeightsMissing(e: unknown): unknown {
  if (!(e instanceof JobFailure)) return e;
  type Cause = { kind?: string; key?: string; bucket?: string; message?: string; cause?: unknown };
  let cause = (e as { cause?: Cause }).cause;
  for (let depth = 0; cause && cause.kind !== 'not-found' && depth < 5; depth++) cause = cause.cause as Cause | undefined;
  if (cause?.kind !== 'not-found') return e;
  const where = cause.key ? `${cause.bucket ? `${cause.bucket}/` : ''}${cause.key}` : (cause.message ?? 'a base-model file');
  return new JobFailure(
    'operator',
    `This worker cannot train the job: the base-model file ${where} is missing from the models bucket. An operator must upload it (or set WEIGHTS_LOCAL_DIR); the job was not retried and your points are refunded.`,
    { cause: e },
  );
}
