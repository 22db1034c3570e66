/**
 * The pipeline for one claimed attempt of one training job:
 *
 *   validate → quote + charge → fetch dataset + weights → render → run
 *   container steps → check outputs → upload → register model → settle
 *   points + credits → COMPLETED
 *
 * Every step is idempotent. Progress that must survive a crash (the quote,
 * the charge, the slug, the uploads, the model id, the settlement intent) is
 * recorded in `job.pipeline` through fenced writes, so a re-claimed attempt
 * resumes where the last one stopped and never moves points twice (the
 * ledger's own idempotency keys are the second line of defence).
 */
import { randomBytes } from 'node:crypto';
import { chmod, chown, mkdir, readdir, readFile, rm, stat, writeFile } from 'node:fs/promises';
import { existsSync } from 'node:fs';
import { basename, join } from 'node:path';
import { ObjectId } from 'mongodb';
import { inject, injectable } from 'tsyringe';
import { DatasetRepository, LoraModelRepository, slugify, TrainingJobDoc, TrainingJobRepository, UserCoreReader } from '@stationthis/db';
import { InsufficientPointsError, PointsLedger } from '@stationthis/points';
import { DatasetFetcher, FetchedDataset, ModelUploader, ObjectStorage, PlatformDatasetDoc, StorageError, WeightCache, jobArtifactKey, loraKey } from '@stationthis/storage';
import { CONTAINER_RUNTIME, ContainerRuntime, GpuAllocator } from '@stationthis/docker';
import {
  ProgressEvent,
  Quote,
  Recipe,
  TestRunProfile,
  WeightFile,
  applyArgvSubstitutions,
  jobParametersFromPlatformDoc,
  recipeForModelType,
  requiredWeights,
  sanitizeOutputName,
  sanitizeTriggerWord,
  summarizeDataset,
  testRunWeights,
  trainingCaption,
  usedPoints,
} from '@stationthis/recipes';
import { WORKER_CONFIG } from '../tokens';
import type { WorkerConfig } from '../config/worker-config';
import { WorkerMetrics } from '../observability/metrics';
import { ImageResolver } from './image-resolver';
import { JobContext } from './job-context';
import { stepContainerSpec } from './step-container';
import { mergeSafetensorsMetadata, readSafetensorsHeader } from './safetensors-file';
import { CancelRequested, FAILURE_POLICY, JobFailure, LeaseLost, containerFailureMessage, type JobFailureClass } from './failures';

/** What `job.pipeline` holds. Written step by step, read on resume. */
export interface PipelineState {
  recipeId?: string;
  recipeVersion?: string;
  /** Fixed at the first attempt. platformFee is absent on quotes recorded before recipes 0.3.0 (the fee was 0.2 then too). */
  quote?: { points: number; estimatedSeconds: number; gpuUsdPerHour: number; platformFee?: number };
  charged?: boolean;
  slug?: string;
  trainSeconds?: number;
  /** Wall-clock spans of each container run (benchmarks: orchestration overhead, GPU idle gaps). */
  containerRuns?: { step: string; startedAt: Date; endedAt: Date }[];
  upload?: UploadState;
  loraModelId?: string;
  settleIntent?: { outcome: 'completed' | 'failed' | 'cancelled'; usedPoints: number; reason: string };
  settled?: boolean;
}

interface UploadState {
  loraUrl: string;
  loraKey: string;
  sha256: string;
  autov2: string;
  bytes: number;
  sampleUrls: string[];
  logUrl?: string;
  configUrl?: string;
}

interface WeightHandle {
  role: string;
  fileName: string;
  path: string;
  release(): Promise<void>;
}

interface Prepared {
  recipe: Recipe;
  parameters: Record<string, unknown>;
  triggerWord: string;
  outputName: string;
  dataset: NonNullable<Awaited<ReturnType<DatasetRepository['findById']>>>;
  quote: Quote;
}

const PROGRESS_LOG_TAIL = 20;

/** Storage error kinds caused by the dataset itself, not by our infrastructure. */
const DATASET_ERROR_KINDS = new Set(['disallowed-url', 'invalid-name', 'invalid-content', 'too-large', 'not-found']);

@injectable()
export class JobPipeline {
  constructor(
    @inject(WORKER_CONFIG) private readonly config: WorkerConfig,
    private readonly jobs: TrainingJobRepository,
    private readonly datasets: DatasetRepository,
    private readonly models: LoraModelRepository,
    private readonly users: UserCoreReader,
    private readonly ledger: PointsLedger,
    private readonly fetcher: DatasetFetcher,
    private readonly uploader: ModelUploader,
    private readonly storage: ObjectStorage,
    private readonly weights: WeightCache,
    @inject(CONTAINER_RUNTIME) private readonly runtime: ContainerRuntime,
    private readonly allocator: GpuAllocator,
    private readonly images: ImageResolver,
    private readonly metrics: WorkerMetrics,
  ) {}

  /** Runs the attempt to a terminal state, or throws LeaseLost / ShutdownRequested. */
  async run(ctx: JobContext): Promise<void> {
    const state = (ctx.job.pipeline ?? {}) as PipelineState;
    // A previous attempt already decided the outcome and may have moved points: finish it.
    if (state.settleIntent) {
      await this.finish(ctx, state, state.settleIntent.outcome, state.settleIntent.reason);
      return;
    }
    let prepared: Prepared | undefined;
    let trainStartedAt: number | undefined;
    try {
      prepared = await this.step(ctx, 'validate', 'n/a', () => this.validate(ctx));
      const recipeId = prepared.recipe.id;
      await this.step(ctx, 'charge', recipeId, () => this.charge(ctx, state, prepared!));
      ctx.throwIfStopped();

      if (!state.upload) {
        const workDir = join(this.config.jobsDir, ctx.jobId);
        const attemptDir = join(workDir, `attempt-${ctx.lease.attemptId}`);
        const datasetDir = join(workDir, 'dataset');
        const fetched = await this.step(ctx, 'fetch-dataset', recipeId, () => this.fetchDataset(ctx, prepared!, datasetDir));
        const weightHandles = await this.step(ctx, 'fetch-weights', recipeId, () => this.fetchWeights(prepared!));
        try {
          ctx.throwIfStopped();
          const { jobDir, outputDir, rendered } = await this.step(ctx, 'render', recipeId, () =>
            this.render(ctx, prepared!, attemptDir, fetched, weightHandles),
          );
          trainStartedAt = Date.now();
          const logFile = join(attemptDir, 'train.log');
          await this.step(ctx, 'train', recipeId, () =>
            this.train(ctx, prepared!, { datasetDir, jobDir, outputDir, logFile, steps: rendered.steps, weights: weightHandles }),
          );
          state.trainSeconds = Math.round((Date.now() - trainStartedAt) / 1000);
          await this.setState(ctx, { trainSeconds: state.trainSeconds });
          const loraPath = join(outputDir, rendered.outputs.lora);
          await this.step(ctx, 'check-output', recipeId, () => this.checkOutput(ctx, prepared!, loraPath));
          ctx.throwIfStopped();
          await this.transition(ctx, 'FINALIZING');
          state.upload = await this.step(ctx, 'upload', recipeId, () =>
            this.upload(ctx, state, prepared!, { loraPath, outputDir, logFile, jobDir, samplesDir: rendered.outputs.samplesDir }),
          );
        } finally {
          await Promise.all(weightHandles.map((h) => h.release().catch(() => undefined)));
        }
      } else {
        ctx.log.info({ loraUrl: state.upload.loraUrl }, 'resuming after upload: outputs already stored');
        await this.transition(ctx, 'RUNNING');
        await this.transition(ctx, 'FINALIZING');
      }

      ctx.throwIfStopped();
      await this.step(ctx, 'register', recipeId, () => this.register(ctx, state, prepared!));
      const used = usedPoints(state.quote!, state.trainSeconds ?? 0);
      state.settleIntent = { outcome: 'completed', usedPoints: used, reason: 'training completed' };
      await this.setState(ctx, { settleIntent: state.settleIntent });
      await this.finish(ctx, state, 'completed', 'training completed', prepared);
    } catch (err) {
      if (err instanceof CancelRequested || ctx.stopReason === 'cancel') {
        const seconds = trainStartedAt ? (Date.now() - trainStartedAt) / 1000 : 0;
        const used = state.quote ? usedPoints(state.quote, seconds) : 0;
        state.settleIntent = { outcome: 'cancelled', usedPoints: used, reason: `cancelled by user after ${Math.round(seconds)} s of training` };
        await this.setState(ctx, { settleIntent: state.settleIntent });
        await this.finish(ctx, state, 'cancelled', state.settleIntent.reason);
        return;
      }
      if (ctx.stopReason === 'lease-lost' || ctx.stopReason === 'shutdown') throw err;
      const failure = err instanceof JobFailure ? err : new JobFailure('infrastructure', `The worker hit an internal error (${(err as Error).message}). The job will be retried if attempts remain; otherwise points are refunded.`, { cause: err });
      ctx.log.error({ err, failureClass: failure.failureClass }, 'attempt failed');
      this.metrics.failures.inc({ class: failure.failureClass });
      if (FAILURE_POLICY[failure.failureClass].retry && (ctx.job.attempts ?? 1) < (ctx.job.maxAttempts ?? this.config.maxAttempts)) {
        // Another attempt may succeed: re-queue, keeping the charge (the next attempt reuses it).
        const outcome = await this.jobs.retryLater(ctx.lease, failure.userMessage);
        if (outcome === 'QUEUED') {
          ctx.log.warn({ attempt: ctx.job.attempts }, 'infrastructure failure: job re-queued for another attempt');
          return;
        }
        if (outcome === null) throw new LeaseLost('lease lost while re-queueing');
        // Ended instead (a cancel arrived meanwhile): settle now rather than waiting for maintenance.
        await this.ledger.settle({ jobId: ctx.jobId, usedPoints: 0, reason: failure.userMessage, outcome: 'failed' });
        await this.jobs.clearRefundDue(ctx.jobId);
        return;
      }
      state.settleIntent = { outcome: 'failed', usedPoints: 0, reason: failure.userMessage };
      if (state.quote) await this.setState(ctx, { settleIntent: state.settleIntent });
      await this.finish(ctx, state, 'failed', failure.userMessage, undefined, failure.failureClass);
    }
  }

  // ------------------------------------------------------------------ steps

  private async validate(ctx: JobContext): Promise<Prepared> {
    const job = ctx.job;
    let recipe: Recipe;
    try {
      recipe = recipeForModelType(String(job.modelType ?? job.baseModel ?? ''));
    } catch (e) {
      throw new JobFailure('user-input', `Unsupported model type "${job.modelType ?? job.baseModel}": ${(e as Error).message}`);
    }
    const validated = recipe.validate(jobParametersFromPlatformDoc(job as unknown as Record<string, unknown>));
    if (!validated.ok) {
      const issues = validated.issues.map((i) => `${i.path}: ${i.message}${i.allowed ? ` (allowed: ${i.allowed})` : ''}`);
      throw new JobFailure('user-input', `Invalid training parameters: ${issues.join('; ')}. Fix them and submit again.`);
    }
    const rawTrigger = String(job.triggerWord ?? (Array.isArray(job.triggerWords) ? job.triggerWords[0] : '') ?? job.name ?? '');
    let triggerWord: string;
    let outputName: string;
    try {
      triggerWord = sanitizeTriggerWord(rawTrigger);
    } catch (e) {
      throw new JobFailure('user-input', `The trigger word "${rawTrigger.slice(0, 40)}" cannot be used: ${(e as Error).message}. Use letters, digits, "_" or "-".`);
    }
    try {
      outputName = sanitizeOutputName(String(job.modelName ?? job.name ?? triggerWord));
    } catch {
      outputName = sanitizeOutputName(triggerWord);
    }

    if (!job.datasetId) throw new JobFailure('user-input', 'The job has no dataset. Choose a dataset and submit again.');
    const dataset = await this.datasets.findById(String(job.datasetId));
    if (!dataset) throw new JobFailure('dataset', `Dataset ${job.datasetId} does not exist (it may have been deleted). Choose another dataset.`);
    const owner = String(job.ownerAccountId ?? job.userId ?? '');
    const datasetOwner = String(dataset.ownerAccountId ?? '');
    const visibility = String(dataset.visibility ?? 'private');
    const granted = Array.isArray(dataset.accessControl) && dataset.accessControl.some((id: unknown) => String(id) === owner);
    if (datasetOwner !== owner && visibility !== 'public' && visibility !== 'unlisted' && !granted) {
      throw new JobFailure('dataset', `Dataset "${dataset.name ?? job.datasetId}" is private to another account. Use your own dataset or ask its owner to share it.`);
    }
    const images: unknown[] = Array.isArray(dataset.images) ? dataset.images : [];
    const req = recipe.datasetRequirements;
    if (images.length < req.minImages || images.length > req.maxImages) {
      throw new JobFailure('dataset', `The dataset has ${images.length} images; ${recipe.displayName} needs ${req.minImages} to ${req.maxImages}. Add or remove images and retry.`);
    }
    const quote = recipe.quote(validated.value as never, summarizeDataset(images.map((url) => ({ url: String(url) }))));
    return { recipe, parameters: validated.value as Record<string, unknown>, triggerWord, outputName, dataset, quote };
  }

  private async charge(ctx: JobContext, state: PipelineState, p: Prepared): Promise<void> {
    if (state.charged) return;
    // The quote is fixed the first time and reused on every later attempt.
    state.quote ??= { points: p.quote.points, estimatedSeconds: p.quote.estimatedSeconds, gpuUsdPerHour: p.quote.gpuUsdPerHour, platformFee: p.quote.platformFee };
    await this.setState(ctx, { quote: state.quote, recipeId: p.recipe.id, recipeVersion: p.recipe.version });
    try {
      await this.ledger.charge({
        jobId: ctx.jobId,
        masterAccountId: String(ctx.job.ownerAccountId ?? ctx.job.userId),
        walletAddress: ctx.job.walletAddress ? String(ctx.job.walletAddress) : undefined,
        points: state.quote.points,
        reason: `${p.recipe.displayName} training quote`,
      });
    } catch (e) {
      if (e instanceof InsufficientPointsError) {
        throw new JobFailure('user-input', `Insufficient points: this training costs up to ${state.quote.points} points but the balance is ${e.balance}. Add points and retry. Nothing was charged.`);
      }
      throw e;
    }
    state.charged = true;
    await this.setState(ctx, { charged: true });
  }

  private async fetchDataset(ctx: JobContext, p: Prepared, datasetDir: string) {
    const reused = await this.readPrefetched(datasetDir, p);
    if (reused) {
      ctx.log.info({ images: reused.images.length }, 'dataset already prefetched while the slot was busy');
      return reused;
    }
    await rm(datasetDir, { recursive: true, force: true });
    await mkdir(datasetDir, { recursive: true });
    try {
      const fetched = await this.fetcher.fetch(p.dataset as unknown as PlatformDatasetDoc, datasetDir, {
        captionSetId: ctx.job.captionSetId ? String(ctx.job.captionSetId) : undefined,
        captionFor: (caption) => trainingCaption(caption, p.triggerWord),
        allowVideo: p.recipe.datasetRequirements.allowVideo,
        signal: ctx.signal,
        onProgress: (pr) => ctx.log.debug({ progress: pr }, 'dataset fetch progress'),
      });
      this.metrics.bytesMoved.inc({ direction: 'down', kind: 'dataset' }, fetched.totalBytes);
      ctx.log.info({ images: fetched.images.length, bytes: fetched.totalBytes }, 'dataset fetched');
      await this.makeReadable(datasetDir);
      await this.writePrefetchMarker(datasetDir, p, fetched);
      return fetched;
    } catch (e) {
      if (e instanceof JobFailure) throw e;
      ctx.throwIfStopped();
      const kind = e instanceof StorageError ? e.kind : 'unavailable';
      // Problems with what the user gave us are final; problems on our side are retried.
      if (DATASET_ERROR_KINDS.has(kind)) {
        throw new JobFailure('dataset', `The dataset could not be used: ${(e as Error).message} Fix or remove that image and retry.`, { cause: e });
      }
      throw new JobFailure('infrastructure', `Downloading the dataset failed: ${(e as Error).message}`, { cause: e });
    }
  }

  /**
   * Prefetch the inputs of a job that is still QUEUED (no lease, no charge):
   * its dataset into the job folder and its base weights into the host cache,
   * so the attempt that claims it later starts training at once. Best effort:
   * anything wrong is left for the real attempt to find and report.
   */
  async prefetch(job: TrainingJobDoc, log: JobContext['log']): Promise<void> {
    const ctx = new JobContext(job, { jobId: String(job._id), attemptId: 'prefetch', workerId: this.config.workerId }, log);
    const p = await this.validate(ctx);
    const datasetDir = join(this.config.jobsDir, ctx.jobId, 'dataset');
    if (!(await this.readPrefetched(datasetDir, p))) {
      const fetched = await this.fetcher.fetch(p.dataset as unknown as PlatformDatasetDoc, await this.freshDir(datasetDir), {
        captionSetId: job.captionSetId ? String(job.captionSetId) : undefined,
        captionFor: (caption) => trainingCaption(caption, p.triggerWord),
        allowVideo: p.recipe.datasetRequirements.allowVideo,
      });
      await this.makeReadable(datasetDir);
      await this.writePrefetchMarker(datasetDir, p, fetched);
      this.metrics.bytesMoved.inc({ direction: 'down', kind: 'dataset' }, fetched.totalBytes);
    }
    for (const h of await this.fetchWeights(p)) await h.release();
    log.info({ jobId: ctx.jobId }, 'prefetched the next queued job\'s dataset and weights');
  }

  private async freshDir(dir: string): Promise<string> {
    await rm(dir, { recursive: true, force: true });
    await mkdir(dir, { recursive: true });
    return dir;
  }

  /** The marker sits beside the dataset folder (never inside the container mount). */
  private async writePrefetchMarker(datasetDir: string, p: Prepared, fetched: FetchedDataset): Promise<void> {
    // The caption files carry the trigger word: a changed trigger word invalidates the prefetch.
    const marker = { images: p.dataset.images, triggerWord: p.triggerWord, captionSetId: null as string | null, fetched };
    await writeFile(`${datasetDir}.json`, JSON.stringify(marker));
  }

  /** A complete earlier fetch of the same image list, or null. */
  private async readPrefetched(datasetDir: string, p: Prepared): Promise<FetchedDataset | null> {
    try {
      const marker = JSON.parse(await readFile(`${datasetDir}.json`, 'utf8')) as { images: unknown; triggerWord?: string; fetched: FetchedDataset };
      if (JSON.stringify(marker.images) !== JSON.stringify(p.dataset.images) || marker.triggerWord !== p.triggerWord) return null;
      for (const img of marker.fetched.images) await stat(join(datasetDir, img.fileName));
      return marker.fetched;
    } catch {
      return null;
    }
  }

  /**
   * The recipe's test-run profile when this worker runs GPU recipes as CPU
   * tests (WORKER_CPU_TEST_RUNS): never on a production worker, never for a
   * recipe that has no profile.
   */
  private testRun(recipe: Recipe): TestRunProfile | undefined {
    return this.config.cpuTestRuns && recipe.gpu.count > 0 ? recipe.testRun : undefined;
  }

  /** The weight files this job trains on: only those its parameters need, with test-run overrides. */
  private jobWeights(p: Prepared): WeightFile[] {
    // Only the files these parameters need (WAN 2.1 vs 2.2 experts differ by tens of GB).
    const needed = requiredWeights(p.recipe, p.parameters as never);
    return this.testRun(p.recipe) ? testRunWeights(p.recipe, needed).weights : needed;
  }

  private async fetchWeights(p: Prepared): Promise<WeightHandle[]> {
    const handles: WeightHandle[] = [];
    try {
      for (const w of this.jobWeights(p)) {
        const local = this.config.weightsLocalDir ? join(this.config.weightsLocalDir, w.fileName) : undefined;
        const source = local && existsSync(local) ? ({ kind: 'local', path: local } as const) : ({ kind: 'r2', bucketAlias: 'models', key: w.r2Key } as const);
        // A test-run override is another file than the one the recipe pins a hash for.
        const sha256 = w.fileName === requiredWeights(p.recipe, p.parameters as never).find((x) => x.role === w.role)?.fileName ? w.sha256 : undefined;
        const h = await this.weights.acquire({ fileName: w.fileName, source, sha256, bytes: w.approxBytes });
        handles.push({ role: w.role, fileName: w.fileName, ...h });
      }
      return handles;
    } catch (e) {
      await Promise.all(handles.map((h) => h.release().catch(() => undefined)));
      throw new JobFailure('infrastructure', `Fetching the base-model weights failed: ${(e as Error).message}.`, { cause: e });
    }
  }

  private async render(ctx: JobContext, p: Prepared, attemptDir: string, fetched: { images: { mime: string }[] }, weights: WeightHandle[]) {
    const jobDir = join(attemptDir, 'job');
    const outputDir = join(attemptDir, 'output');
    await rm(attemptDir, { recursive: true, force: true });
    await mkdir(jobDir, { recursive: true });
    await mkdir(outputDir, { recursive: true });
    const baseModelFiles = Object.fromEntries(weights.map((h) => [h.role, h.fileName]));
    const rendered = p.recipe.render({
      jobId: ctx.jobId,
      parameters: p.parameters,
      triggerWord: p.triggerWord,
      outputName: p.outputName,
      // Videos and images are separate engine datasets (musubi): the split comes from the sniffed types.
      dataset: summarizeDataset(fetched.images),
      baseModelFiles,
    });
    for (const f of rendered.files) {
      const target = join(jobDir, f.path);
      if (!target.startsWith(jobDir + '/')) throw new JobFailure('engine', `Recipe rendered a file outside the job folder: ${f.path}`);
      await mkdir(join(target, '..'), { recursive: true });
      await writeFile(target, f.content, { mode: 0o644 });
    }
    await writeFile(join(jobDir, 'job-spec.json'), JSON.stringify({ jobId: ctx.jobId, recipe: p.recipe.id, version: p.recipe.version, parameters: p.parameters, triggerWord: p.triggerWord, outputName: p.outputName }, null, 2));
    await this.makeReadable(jobDir);
    // The container runs as uid 1000 with a read-only root: only the output folder is writable.
    await chmod(outputDir, 0o777);
    await chown(outputDir, 1000, 1000).catch(() => undefined);
    return { jobDir, outputDir, rendered };
  }

  private async train(
    ctx: JobContext,
    p: Prepared,
    io: { datasetDir: string; jobDir: string; outputDir: string; logFile: string; steps: { name: string; argv: string[]; reportsTrainingProgress: boolean }[]; weights: { fileName: string; path: string }[] },
  ): Promise<void> {
    const image = await this.images.resolve(p.recipe);
    await this.runtime.ensureImage(image).catch((e: Error) => {
      throw new JobFailure('infrastructure', `The training image ${image} is not available: ${e.message}. Build it with "nx run recipe-builder:build-images".`, { cause: e });
    });
    const testRun = this.testRun(p.recipe);
    // A CPU test run takes a CPU slot: the recipe's GPU request does not apply to it.
    const gpuRequest = testRun ? { count: 0, minVramGb: 0 } : { count: p.recipe.gpu.count, minVramGb: p.recipe.gpu.minVramGb };
    const allocation = await this.allocator.allocateWait(gpuRequest, ctx.signal);
    if (!allocation) {
      ctx.throwIfStopped();
      throw new JobFailure('infrastructure', `No GPU with ${p.recipe.gpu.minVramGb} GB VRAM is available on this worker.`);
    }
    this.metrics.slotsBusy.set(this.allocator.busyCount() + this.allocator.cpuSlotsBusy());
    try {
      await this.transition(ctx, 'RUNNING', { estimatedCostPoints: p.quote.points });
      const progress = this.progressWriter(ctx);
      const runs: { step: string; startedAt: Date; endedAt: Date }[] = [];
      for (const rendered of io.steps) {
        ctx.throwIfStopped();
        const step = testRun ? { ...rendered, ...this.applyTestRun(ctx, rendered, testRun) } : rendered;
        const parser = p.recipe.createProgressParser();
        const errors: string[] = [];
        const startedAt = new Date();
        const result = await this.runtime.run(
          stepContainerSpec({
            image,
            recipe: p.recipe,
            step,
            folders: { datasetDir: io.datasetDir, jobDir: io.jobDir, outputDir: io.outputDir, weights: io.weights, logFile: io.logFile },
            jobId: ctx.jobId,
            gpuDeviceIds: allocation.deviceIds,
            memoryBytes: this.config.containerMemoryBytes,
            pidsLimit: this.config.containerPidsLimit,
            labels: { jobId: ctx.jobId, attemptId: ctx.lease.attemptId, workerId: ctx.lease.workerId, scope: containerScope(this.config) },
            deadlineMs: this.config.maxJobMs,
            stallTimeoutMs: this.config.stallTimeoutMs,
          }),
          {
            onLine: (line: string) => {
              for (const ev of parser.feed(line)) {
                if (ev.kind === 'error') errors.push(`${ev.signature}: ${ev.line}`);
                if (step.reportsTrainingProgress) progress.event(ev);
              }
              progress.line(line);
            },
          },
          ctx.signal,
        );
        runs.push({ step: step.name, startedAt, endedAt: new Date() });
        await progress.flush();
        if (result.failureClass === 'cancelled' || ctx.signal.aborted) {
          ctx.throwIfStopped();
          // Stopped by someone else (an operator, another worker's sweep): our side, worth a retry.
          throw new JobFailure('infrastructure', `The training container was stopped from outside during "${step.name}".`);
        }
        // The engine's own words first (NaN, CUDA/host OOM), then what the runtime saw.
        if (errors.some((e) => e.startsWith('nan-loss'))) {
          throw new JobFailure('engine', `Training diverged (loss became NaN) during "${step.name}". Lower the learning rate and retry. Points were refunded.`);
        }
        if (result.failureClass) {
          if (errors.some((e) => e.startsWith('cuda-oom') || e.startsWith('host-oom')) || result.oomKilled) throw containerFailureMessage('oom', step.name, result.lastLines);
          throw containerFailureMessage(result.failureClass, step.name, errors.length ? errors : result.lastLines);
        }
      }
      await this.setState(ctx, { containerRuns: runs });
    } finally {
      allocation.release();
      this.metrics.slotsBusy.set(this.allocator.busyCount() + this.allocator.cpuSlotsBusy());
    }
  }

  /** Checks the LoRA's header against the recipe, then stamps our metadata into it. */
  private async checkOutput(ctx: JobContext, p: Prepared, loraPath: string): Promise<void> {
    let header;
    try {
      header = await readSafetensorsHeader(loraPath);
    } catch (e) {
      throw new JobFailure('engine', `Training finished but produced no valid LoRA file (${basename(loraPath)}: ${(e as Error).message}). Points were refunded.`, { cause: e });
    }
    const check = p.recipe.checkOutput(header);
    if (!check.ok) throw new JobFailure('engine', `The trained LoRA failed its checks: ${check.problems.join('; ')}. Points were refunded.`);
    await mergeSafetensorsMetadata(loraPath, p.recipe.outputMetadata({ triggerWord: p.triggerWord, baseModel: p.recipe.baseModel, jobId: ctx.jobId, outputName: p.outputName }));
  }

  private async upload(
    ctx: JobContext,
    state: PipelineState,
    p: Prepared,
    files: { loraPath: string; outputDir: string; logFile: string; jobDir: string; samplesDir?: string },
  ): Promise<UploadState> {
    if (!state.slug) {
      // Chosen before the upload because it is the file's key; registration reuses it.
      state.slug = `${slugify(p.outputName)}-${randomBytes(3).toString('hex')}`;
      await this.setState(ctx, { slug: state.slug });
    }
    const key = loraKey(state.slug);
    try {
      const lora = await this.uploader.upload({ filePath: files.loraPath, bucketAlias: 'models', key, contentType: 'application/octet-stream', cacheControl: 'public, max-age=31536000, immutable' });
      this.metrics.bytesMoved.inc({ direction: 'up', kind: 'lora' }, lora.bytes);
      const sampleUrls: string[] = [];
      if (files.samplesDir) {
        const dir = join(files.outputDir, files.samplesDir);
        const names = (await readdir(dir).catch(() => [] as string[])).filter((n) => /\.(png|jpe?g|webp)$/i.test(n)).sort().slice(0, 4);
        for (const name of names) {
          const up = await this.uploader.upload({ filePath: join(dir, name), bucketAlias: 'models', key: jobArtifactKey(ctx.jobId, `samples/${name}`), contentType: name.endsWith('.png') ? 'image/png' : name.endsWith('.webp') ? 'image/webp' : 'image/jpeg' });
          sampleUrls.push(up.publicUrl);
        }
      }
      const log = (await stat(files.logFile).catch(() => null))
        ? await this.uploader.upload({ filePath: files.logFile, bucketAlias: 'models', key: jobArtifactKey(ctx.jobId, `logs/attempt-${ctx.lease.attemptId}.log`), contentType: 'text/plain; charset=utf-8' })
        : undefined;
      const config = await this.uploader.upload({ filePath: join(files.jobDir, 'job-spec.json'), bucketAlias: 'models', key: jobArtifactKey(ctx.jobId, 'config/job-spec.json'), contentType: 'application/json' });
      const upload: UploadState = { loraUrl: lora.publicUrl, loraKey: key, sha256: lora.sha256, autov2: lora.autov2, bytes: lora.bytes, sampleUrls, logUrl: log?.publicUrl, configUrl: config.publicUrl };
      await this.setState(ctx, { upload });
      ctx.log.info({ loraUrl: upload.loraUrl, bytes: upload.bytes, sha256: upload.sha256 }, 'outputs uploaded');
      return upload;
    } catch (e) {
      throw new JobFailure('infrastructure', `Uploading the trained model failed: ${(e as Error).message}.`, { cause: e });
    }
  }

  private async register(ctx: JobContext, state: PipelineState, p: Prepared): Promise<void> {
    if (state.loraModelId) return;
    const upload = state.upload!;
    const { model } = await this.models.registerTrainedModel({
      trainingJobId: ctx.jobId,
      masterAccountId: String(ctx.job.ownerAccountId ?? ctx.job.userId),
      datasetId: String(ctx.job.datasetId),
      modelName: p.outputName,
      slug: state.slug!,
      triggerWord: p.triggerWord,
      baseModel: p.recipe.baseModel,
      modelFileUrl: upload.loraUrl,
      storageKey: upload.loraKey,
      description: ctx.job.description ? String(ctx.job.description) : `Trained LoRA model with trigger word: ${p.triggerWord}`,
      tool: p.recipe.engine.name,
      steps: Number((p.parameters as { steps?: number }).steps ?? ctx.job.totalSteps ?? 0),
      durationSeconds: state.trainSeconds ?? 0,
      finalLoss: typeof ctx.job.currentLoss === 'number' ? ctx.job.currentLoss : null,
      previewImages: upload.sampleUrls,
      extra: {
        // Where the file came from and how to verify it (Civitai/A1111 AutoV2 short hash).
        hashes: { sha256: upload.sha256, autov2: upload.autov2 },
        sizeBytes: upload.bytes,
        recipe: { id: p.recipe.id, version: p.recipe.version, engineCommit: p.recipe.engine.commit },
      },
    });
    state.loraModelId = String(model._id);
    await this.setState(ctx, { loraModelId: state.loraModelId });
  }

  /** Settles points per the recorded intent, credits contributors on success, then ends the job. */
  private async finish(ctx: JobContext, state: PipelineState, outcome: 'completed' | 'failed' | 'cancelled', reason: string, p?: Prepared, failureClass?: JobFailureClass): Promise<void> {
    const intent = state.settleIntent;
    // The quote is recorded before the charge, so a charge whose flag was lost in a crash is still settled.
    if (state.quote && intent) {
      await this.ledger.settle({ jobId: ctx.jobId, usedPoints: intent.usedPoints, reason: intent.reason, outcome });
      if (outcome === 'completed' && intent.usedPoints > 0) await this.creditContributors(ctx, intent.usedPoints, p);
      await this.setState(ctx, { settled: true });
    }
    const actualCostPoints = intent?.usedPoints ?? 0;
    if (outcome === 'completed') {
      // A resumed attempt starts in PROVISIONING; COMPLETED is reachable only from FINALIZING.
      await this.transition(ctx, 'RUNNING');
      await this.transition(ctx, 'FINALIZING');
      const upload = state.upload!;
      await this.terminal(ctx, 'COMPLETED', {
        completedAt: new Date(),
        loraModelId: state.loraModelId ? new ObjectId(state.loraModelId) : undefined,
        modelRepoUrl: upload.loraUrl,
        previewImages: upload.sampleUrls,
        triggerWords: [ctx.job.triggerWord ?? (ctx.job.triggerWords as string[] | undefined)?.[0]].filter(Boolean),
        actualCostPoints,
        costReconciled: true,
        progress: 100,
      });
      this.metrics.jobsByState.inc({ state: 'COMPLETED' });
      ctx.log.info({ loraUrl: upload.loraUrl, actualCostPoints }, 'job completed');
    } else if (outcome === 'cancelled') {
      await this.terminal(ctx, 'CANCELLED', { cancelledAt: new Date(), actualCostPoints, costReconciled: true, failureReason: reason });
      this.metrics.jobsByState.inc({ state: 'CANCELLED' });
      ctx.log.info({ actualCostPoints }, 'job cancelled');
    } else {
      await this.terminal(ctx, 'FAILED', { failureReason: reason, failureClass: failureClass ?? 'infrastructure', actualCostPoints, costReconciled: Boolean(state.quote) });
      this.metrics.jobsByState.inc({ state: 'FAILED' });
      ctx.log.warn({ failureReason: reason, failureClass }, 'job failed');
    }
    await this.cleanUp(ctx, outcome);
  }

  /**
   * The job is terminal: keep the engine log of a failed or cancelled attempt
   * in the job's artifact prefix (operators need it; successful attempts
   * uploaded theirs already), then free the host's job folder.
   */
  private async cleanUp(ctx: JobContext, outcome: 'completed' | 'failed' | 'cancelled'): Promise<void> {
    const workDir = join(this.config.jobsDir, ctx.jobId);
    const logFile = join(workDir, `attempt-${ctx.lease.attemptId}`, 'train.log');
    if (outcome !== 'completed' && (await stat(logFile).catch(() => null))) {
      await this.uploader
        .upload({ filePath: logFile, bucketAlias: 'models', key: jobArtifactKey(ctx.jobId, `logs/attempt-${ctx.lease.attemptId}.log`), contentType: 'text/plain; charset=utf-8' })
        .catch((err) => ctx.log.warn({ err }, 'could not keep the log of the failed attempt'));
    }
    await rm(workDir, { recursive: true, force: true }).catch((err) => ctx.log.warn({ err }, `could not remove ${workDir}`));
  }

  private async creditContributors(ctx: JobContext, usedPoints: number, p?: Prepared): Promise<void> {
    const owner = String(ctx.job.ownerAccountId ?? ctx.job.userId);
    const dataset = p?.dataset ?? (await this.datasets.findById(String(ctx.job.datasetId)));
    const creator = dataset?.ownerAccountId ? String(dataset.ownerAccountId) : undefined;
    const creatorPoints = Math.floor(usedPoints * this.config.shares.datasetCreator);
    if (creator && creator !== owner && creatorPoints > 0) {
      // The wallet makes the credit visible to the platform's wallet-based balance too.
      const wallet = this.users.primaryWallet(await this.users.findById(creator));
      await this.ledger.credit({ jobId: ctx.jobId, recipientAccountId: creator, recipientWalletAddress: wallet, points: creatorPoints, kind: 'dataset-creator', reason: `dataset used by training ${ctx.jobId}` });
    }
    const trainerPoints = Math.floor(usedPoints * this.config.shares.trainer);
    if (trainerPoints > 0) {
      const wallet = ctx.job.walletAddress ? String(ctx.job.walletAddress) : this.users.primaryWallet(await this.users.findById(owner));
      await this.ledger.credit({ jobId: ctx.jobId, recipientAccountId: owner, recipientWalletAddress: wallet, points: trainerPoints, kind: 'trainer', reason: `trainer reward for ${ctx.jobId}` });
    }
  }

  // ------------------------------------------------------------------ helpers

  /** The step's argv under the test-run profile; every change is written to the job's log with its reason. */
  private applyTestRun(ctx: JobContext, step: { name: string; argv: string[] }, testRun: TestRunProfile): { argv: string[] } {
    const { argv, applied } = applyArgvSubstitutions(step.argv, testRun.substitutions);
    if (applied.length) {
      ctx.log.warn({ step: step.name, changes: applied }, 'CPU test run: argv changed by the recipe test-run profile');
      void this.jobs.updateProgress(ctx.lease, { logLines: applied.map((a) => `[worker] CPU test run, ${step.name}: ${a}`) }).catch(() => undefined);
    }
    return { argv };
  }

  private async step<T>(ctx: JobContext, name: string, recipe: string, fn: () => Promise<T>): Promise<T> {
    ctx.log.info({ step: name }, `step ${name}`);
    await this.jobs.updateProgress(ctx.lease, { logLines: [`[worker] ${new Date().toISOString()} ${name}`] }).catch(() => undefined);
    return this.metrics.timed(name, recipe, fn);
  }

  private async transition(ctx: JobContext, to: 'RUNNING' | 'FINALIZING', fields: Record<string, unknown> = {}): Promise<void> {
    const order: Record<string, number> = { QUEUED: 0, PROVISIONING: 1, RUNNING: 2, FINALIZING: 3 };
    if ((order[ctx.job.status] ?? 9) >= order[to]) return; // only ever move forward
    const ok = await this.jobs.transition(ctx.lease, to, fields);
    if (!ok) {
      ctx.stop('lease-lost');
      ctx.throwIfStopped();
    }
    ctx.job.status = to as TrainingJobDoc['status'];
  }

  /** The final, fenced status write. Losing it means another worker owns the job now. */
  private async terminal(ctx: JobContext, to: 'COMPLETED' | 'FAILED' | 'CANCELLED', fields: Record<string, unknown>): Promise<void> {
    if (!(await this.jobs.transition(ctx.lease, to, fields))) {
      ctx.stop('lease-lost');
      ctx.throwIfStopped();
    }
  }

  private async setState(ctx: JobContext, patch: Partial<PipelineState>): Promise<void> {
    const ok = await this.jobs.setPipelineState(ctx.lease, patch as Record<string, unknown>);
    if (!ok) {
      ctx.stop('lease-lost');
      ctx.throwIfStopped();
    }
  }

  private async makeReadable(dir: string): Promise<void> {
    await chmod(dir, 0o755);
    for (const entry of await readdir(dir, { withFileTypes: true })) {
      const full = join(dir, entry.name);
      if (entry.isDirectory()) await this.makeReadable(full);
      else await chmod(full, 0o644);
    }
  }

  /** Throttled progress: at most one write per interval, always the latest values. */
  private progressWriter(ctx: JobContext) {
    const throttleMs = this.config.progressThrottleMs;
    let pending: { progress?: number; currentStep?: number; totalSteps?: number; currentLoss?: number; etaSeconds?: number } = {};
    let lines: string[] = [];
    let last = 0;
    let inFlight: Promise<unknown> = Promise.resolve();
    const write = () => {
      const p = pending;
      const l = lines.slice(-PROGRESS_LOG_TAIL);
      pending = {};
      lines = [];
      last = Date.now();
      inFlight = inFlight.then(() => this.jobs.updateProgress(ctx.lease, { ...p, logLines: l }).then((ok) => {
        if (ok === false) ctx.stop('lease-lost');
      })).catch((e) => ctx.log.warn({ err: e }, 'progress write failed'));
    };
    const maybeWrite = () => {
      if (Date.now() - last >= throttleMs) write();
    };
    return {
      event(ev: ProgressEvent) {
        if (ev.kind === 'step') {
          pending.currentStep = ev.step;
          pending.totalSteps = ev.totalSteps;
          pending.progress = Math.min(99, Math.floor((ev.step / Math.max(1, ev.totalSteps)) * 100));
          if (ev.loss !== undefined && Number.isFinite(ev.loss)) pending.currentLoss = ev.loss;
          if (ev.etaSeconds !== undefined) pending.etaSeconds = ev.etaSeconds;
          maybeWrite();
        }
      },
      line(line: string) {
        lines.push(line.slice(0, 500));
        if (lines.length > PROGRESS_LOG_TAIL * 4) lines = lines.slice(-PROGRESS_LOG_TAIL);
        maybeWrite();
      },
      async flush() {
        if (Object.keys(pending).length || lines.length) write();
        await inFlight;
      },
    };
  }
}

/** Containers are judged only by workers of the same job store (database and environment). */
export function containerScope(config: Pick<WorkerConfig, 'mongoDbName' | 'environment'>): string {
  return `${config.mongoDbName}/${config.environment}`;
}
