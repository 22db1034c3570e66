/**
 * train: render the recipe into the attempt's folders, run its command steps
 * in the recipe's image under the worker's sandbox (one container per step,
 * progress parsed from the engine's output), then check the LoRA the engine
 * wrote and stamp our metadata into it.
 */
import { chmod, chown, mkdir, rm, writeFile } from 'node:fs/promises';
import { basename, join } from 'node:path';
import { inject, injectable } from 'tsyringe';
import { CONTAINER_RUNTIME, ContainerRuntime, GpuAllocator, type Allocation } from '@stationthis/docker';
import { applyArgvSubstitutions, summarizeDataset, type CommandStep, type RenderedJob, type TestRunProfile } from '@stationthis/recipes';
import { WORKER_CONFIG } from '../../tokens';
import type { WorkerConfig } from '../../config/worker-config';
import { WorkerMetrics } from '../../observability/metrics';
import { ImageResolver } from '../image-resolver';
import { platformCostFields } from '../training-request';
import { containerFailureMessage, JobFailure } from '../failures';
import { mergeSafetensorsMetadata, readSafetensorsHeader } from '../safetensors-file';
import { stepContainerSpec } from '../step-container';
import type { ContainerRun } from '../pipeline-state';
import type { Attempt, Prepared, WeightHandle } from './attempt';
import { makeReadable } from './files';
import { testRunOf } from './test-run';

/** Containers are judged only by workers of the same job store (database and environment). */
export function containerScope(config: Pick<WorkerConfig, 'mongoDbName' | 'environment'>): string {
  return `${config.mongoDbName}/${config.environment}`;
}

/** The device named in the platform's cost row: 'cpu' for a CPU slot, "2x NVIDIA …" for several GPUs. */
export function deviceOf(allocation: Pick<Allocation, 'cpuSlot' | 'devices'>): { name: string } | 'cpu' {
  if (allocation.cpuSlot || allocation.devices.length === 0) return 'cpu';
  const name = allocation.devices[0].name;
  return { name: allocation.devices.length > 1 ? `${allocation.devices.length}x ${name}` : name };
}

export interface AttemptFolders {
  datasetDir: string;
  jobDir: string;
  outputDir: string;
  logFile: string;
}

@injectable()
export class TrainStep {
  constructor(
    @inject(WORKER_CONFIG) private readonly config: WorkerConfig,
    @inject(CONTAINER_RUNTIME) private readonly runtime: ContainerRuntime,
    private readonly allocator: GpuAllocator,
    private readonly images: ImageResolver,
    private readonly metrics: WorkerMetrics,
  ) {}

  /** The attempt's folders: a fresh one per attempt, beside the job's dataset. */
  folders(jobId: string, attemptId: string): AttemptFolders {
    const workDir = join(this.config.jobsDir, jobId);
    const attemptDir = join(workDir, `attempt-${attemptId}`);
    return { datasetDir: join(workDir, 'dataset'), jobDir: join(attemptDir, 'job'), outputDir: join(attemptDir, 'output'), logFile: join(attemptDir, 'train.log') };
  }

  async render(a: Attempt, p: Prepared, folders: AttemptFolders, fetched: { images: { mime: string }[] }, weights: WeightHandle[]): Promise<RenderedJob> {
    const { jobDir, outputDir } = folders;
    await rm(join(jobDir, '..'), { recursive: true, force: true });
    await mkdir(jobDir, { recursive: true });
    await mkdir(outputDir, { recursive: true });
    const rendered = p.recipe.render({
      jobId: a.ctx.jobId,
      parameters: p.parameters,
      triggerWord: p.triggerWord,
      outputName: p.outputName,
      // Videos and images are separate engine datasets (musubi): the split comes from the sniffed types.
      dataset: summarizeDataset(fetched.images),
      baseModelFiles: Object.fromEntries(weights.map((h) => [h.role, h.fileName])),
    });
    for (const f of rendered.files) {
      const target = join(jobDir, f.path);
      if (!target.startsWith(jobDir + '/')) throw new JobFailure('engine', `Recipe rendered a file outside the job folder: ${f.path}`);
      await mkdir(join(target, '..'), { recursive: true });
      await writeFile(target, f.content, { mode: 0o644 });
    }
    await writeFile(join(jobDir, 'job-spec.json'), JSON.stringify({ jobId: a.ctx.jobId, recipe: p.recipe.id, version: p.recipe.version, parameters: p.parameters, triggerWord: p.triggerWord, outputName: p.outputName }, null, 2));
    await makeReadable(jobDir);
    // The container runs as uid 1000 with a read-only root: only the output folder is writable.
    await chmod(outputDir, 0o777);
    await chown(outputDir, 1000, 1000).catch(() => undefined);
    return rendered;
  }

  async train(a: Attempt, p: Prepared, folders: AttemptFolders, steps: CommandStep[], weights: WeightHandle[]): Promise<void> {
    const { ctx, writer } = a;
    const image = await this.images.resolve(p.recipe);
    await this.runtime.ensureImage(image).catch((e: Error) => {
      throw new JobFailure('infrastructure', `The training image ${image} is not available: ${e.message}. Build it with "nx run recipe-builder:build-images".`, { cause: e });
    });
    const testRun = testRunOf(this.config, p.recipe);
    // A CPU test run takes a CPU slot: the recipe's GPU request does not apply to it.
    const gpuRequest = testRun ? { count: 0, minVramGb: 0 } : { count: p.recipe.gpu.count, minVramGb: p.recipe.gpu.minVramGb };
    const allocation = await this.allocator.allocateWait(gpuRequest, ctx.signal);
    if (!allocation) {
      ctx.throwIfStopped();
      throw new JobFailure('infrastructure', `No GPU with ${p.recipe.gpu.minVramGb} GB VRAM is available on this worker.`);
    }
    this.metrics.slotsBusy.set(this.allocator.busyCount() + this.allocator.cpuSlotsBusy());
    try {
      // The cost row names the device this attempt really got.
      await writer.transition('RUNNING', { ...platformCostFields(p.quote, p.recipe, deviceOf(allocation)) });
      const progress = writer.progress();
      const runs: ContainerRun[] = [];
      for (const rendered of steps) {
        ctx.throwIfStopped();
        const step = testRun ? { ...rendered, argv: await this.applyTestRun(a, rendered, testRun) } : rendered;
        const parser = p.recipe.createProgressParser();
        const errors: string[] = [];
        const startedAt = new Date();
        const result = await this.runtime.run(
          stepContainerSpec({
            image,
            recipe: p.recipe,
            step,
            folders: { ...folders, weights },
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
      await writer.setState({ containerRuns: runs });
    } finally {
      allocation.release();
      this.metrics.slotsBusy.set(this.allocator.busyCount() + this.allocator.cpuSlotsBusy());
    }
  }

  /** Checks the LoRA's header against the recipe, then stamps our metadata into it. */
  async checkOutput(a: Attempt, p: Prepared, loraPath: string): Promise<void> {
    let header;
    try {
      header = await readSafetensorsHeader(loraPath);
    } catch (e) {
      throw new JobFailure('engine', `Training finished but produced no valid LoRA file (${basename(loraPath)}: ${(e as Error).message}). Points were refunded.`, { cause: e });
    }
    const check = p.recipe.checkOutput(header);
    if (!check.ok) throw new JobFailure('engine', `The trained LoRA failed its checks: ${check.problems.join('; ')}. Points were refunded.`);
    await mergeSafetensorsMetadata(loraPath, p.recipe.outputMetadata({ triggerWord: p.triggerWord, baseModel: p.recipe.baseModel, jobId: a.ctx.jobId, outputName: p.outputName }));
  }

  /** The step's argv under the test-run profile; every change is written to the job's log with its reason. */
  private async applyTestRun(a: Attempt, step: CommandStep, testRun: TestRunProfile): Promise<string[]> {
    const { argv, applied } = applyArgvSubstitutions(step.argv, testRun.substitutions);
    if (applied.length) {
      a.ctx.log.warn({ step: step.name, changes: applied }, 'CPU test run: argv changed by the recipe test-run profile');
      await a.writer.logLines(applied.map((c) => `[worker] CPU test run, ${step.name}: ${c}`));
    }
    return argv;
  }
}
