/**
 * train: render the recipe into the attempt's folders, run its command steps
 * in the recipe's image under the worker's sandbox (one container per step,
 * progress parsed from the engine's output), then check the LoRA the engine
 * wrote and stamp our metadata into it.
 *
 * Intermediate saves (SavePlan) are collected while the container runs
 * (saves/save-collector.ts). A re-claimed attempt whose record holds a resume
 * state of the same engine gets it unpacked into its output folder before the
 * recipe renders, renders with `resume`, and counts its steps on from there.
 */
import { chmod, chown, mkdir, rm, writeFile } from 'node:fs/promises';
import { basename, join } from 'node:path';
import { inject, injectable } from 'tsyringe';
import { CONTAINER_RUNTIME, ContainerRuntime, GpuAllocator, type Allocation } from '@stationthis/docker';
import { TrainingAttemptRepository, type ResumeStateRecord } from '@stationthis/db';
import { MODEL_UPLOAD_PORT, ObjectStorage, type ModelUploadPort } from '@stationthis/storage';
import { applyArgvSubstitutions, summarizeDataset, type CommandStep, type RenderedJob, type ResumeFrom, type TestRunProfile } from '@stationthis/recipes';
import { WORKER_CONFIG } from '../../tokens';
import type { WorkerConfig } from '../../config/worker-config';
import { WorkerMetrics } from '../../observability/metrics';
import { ImageResolver } from '../image-resolver';
import { platformCostFields } from '../training-request';
import { containerFailureMessage, JobFailure } from '../failures';
import { mergeSafetensorsMetadata, readSafetensorsHeader } from '../safetensors-file';
import { stepContainerSpec } from '../step-container';
import { ResumeStateStore, UnusableStateError } from '../saves/resume-state-store';
import { SaveCollector } from '../saves/save-collector';
import { StepMap } from '../saves/step-map';
import type { ContainerRun } from '../pipeline-state';
import type { Attempt, Prepared, WeightHandle } from './attempt';
import { controlDirBeside, makeReadable } from './files';
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

/** The rendered job, and the saved state it resumes from (absent: from step 0). */
export interface RenderResult extends RenderedJob {
  resume?: ResumeFrom;
}

/** Seconds of container time in recorded runs (every claim of the platform attempt). */
export function runSeconds(runs: ContainerRun[] | undefined): number {
  let ms = 0;
  for (const r of runs ?? []) ms += Math.max(0, new Date(r.endedAt).getTime() - new Date(r.startedAt).getTime());
  return ms / 1000;
}

@injectable()
export class TrainStep {
  constructor(
    @inject(WORKER_CONFIG) private readonly config: WorkerConfig,
    @inject(CONTAINER_RUNTIME) private readonly runtime: ContainerRuntime,
    private readonly allocator: GpuAllocator,
    private readonly images: ImageResolver,
    private readonly metrics: WorkerMetrics,
    @inject(MODEL_UPLOAD_PORT) private readonly uploader: ModelUploadPort,
    private readonly storage: ObjectStorage,
    private readonly attempts: TrainingAttemptRepository,
    private readonly states: ResumeStateStore,
  ) {}

  /** `<recipe id>@<version>#<image ref>`: the engine a resume state belongs to. */
  async engineId(p: Prepared): Promise<string> {
    return `${p.recipe.id}@${p.recipe.version}#${await this.images.resolve(p.recipe)}`;
  }

  /** The attempt's folders: a fresh one per attempt, beside the job's dataset. */
  folders(jobId: string, attemptId: string): AttemptFolders {
    const workDir = join(this.config.jobsDir, jobId);
    const attemptDir = join(workDir, `attempt-${attemptId}`);
    return { datasetDir: join(workDir, 'dataset'), jobDir: join(attemptDir, 'job'), outputDir: join(attemptDir, 'output'), logFile: join(attemptDir, 'train.log') };
  }

  async render(
    a: Attempt,
    p: Prepared,
    folders: AttemptFolders,
    fetched: { images: { mime: string }[]; controlImages?: string[] },
    weights: WeightHandle[],
    resumeState?: ResumeStateRecord,
  ): Promise<RenderResult> {
    const { jobDir, outputDir } = folders;
    await rm(join(jobDir, '..'), { recursive: true, force: true });
    await mkdir(jobDir, { recursive: true });
    await mkdir(outputDir, { recursive: true });
    const resume = resumeState ? await this.restoreState(a, resumeState, outputDir) : undefined;
    const rendered = p.recipe.render({
      jobId: a.ctx.jobId,
      parameters: p.parameters,
      triggerWord: p.triggerWord,
      outputName: p.outputName,
      // Videos and images are separate engine datasets (musubi): the split comes from the sniffed types.
      dataset: summarizeDataset(fetched.images),
      baseModelFiles: Object.fromEntries(weights.map((h) => [h.role, h.fileName])),
      ...(fetched.controlImages ? { controlImages: fetched.controlImages } : {}),
      ...(resume ? { resume } : {}),
    });
    for (const f of rendered.files) {
      const target = join(jobDir, f.path);
      if (!target.startsWith(jobDir + '/')) throw new JobFailure('engine', `Recipe rendered a file outside the job folder: ${f.path}`);
      await mkdir(join(target, '..'), { recursive: true });
      await writeFile(target, f.content, { mode: 0o644 });
    }
    await writeFile(join(jobDir, 'job-spec.json'), JSON.stringify({ jobId: a.ctx.jobId, platformAttempt: a.ref.platformAttempt, recipe: p.recipe.id, version: p.recipe.version, parameters: p.parameters, triggerWord: p.triggerWord, outputName: p.outputName }, null, 2));
    await makeReadable(jobDir);
    // The container runs as uid 1000 with a read-only root: only the output folder is writable.
    await chmod(outputDir, 0o777);
    await chown(outputDir, 1000, 1000).catch(() => undefined);
    if (resume && !rendered.outputs.saves?.stateTemplate) {
      // The recipe no longer saves state: it trained from 0 regardless.
      a.ctx.log.warn({ step: resume.step }, 'the recipe rendered no state saves: training starts from step 0');
      return rendered;
    }
    return { ...rendered, ...(resume ? { resume } : {}) };
  }

  /**
   * Unpacks a recorded state into the output folder. A state that can never
   * be resumed (object gone, bytes differ) is dropped: says why and trains
   * from step 0. Any other failure (storage unreachable, disk full) keeps the
   * state and re-queues the job (infrastructure), so a passing outage never
   * throws away the work the state holds.
   */
  private async restoreState(a: Attempt, record: ResumeStateRecord, outputDir: string): Promise<ResumeFrom | undefined> {
    try {
      await this.states.restore(a, record, outputDir, join(outputDir, '..'));
      return { step: record.step, stateDir: record.stateDir };
    } catch (e) {
      a.ctx.throwIfStopped();
      if (!(e instanceof UnusableStateError) && (e as { kind?: string }).kind !== 'not-found') {
        await rm(join(outputDir, record.stateDir), { recursive: true, force: true }).catch(() => undefined);
        throw new JobFailure('infrastructure', `Could not restore the training state saved at step ${record.step} (${(e as Error).message}); the job is retried and resumes from it.`, { cause: e });
      }
      a.ctx.log.warn({ err: e, step: record.step }, 'could not restore the saved training state: training starts from step 0');
      await a.writer.logLines([`[worker] could not restore the training state saved at step ${record.step} (${(e as Error).message}); training starts from step 0`]);
      await rm(join(outputDir, record.stateDir), { recursive: true, force: true }).catch(() => undefined);
      return undefined;
    }
  }

  async train(a: Attempt, p: Prepared, folders: AttemptFolders, job: RenderResult, weights: WeightHandle[], engine: string): Promise<void> {
    const { ctx, writer } = a;
    const { steps, resume } = job;
    const plan = job.outputs.saves;
    const stepMap = new StepMap(resume?.step ?? 0, plan?.stepsAfterResume, plan?.totalSteps);
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
      // Every claim's runs are kept, written as they go: the container time of a killed claim counts up to its last save.
      const runs: ContainerRun[] = [...(a.state.containerRuns ?? [])];
      const recordRuns = async () => {
        a.state.containerRuns = runs;
        await writer.setState({ containerRuns: runs });
      };
      for (const rendered of steps) {
        ctx.throwIfStopped();
        const step = testRun ? { ...rendered, argv: await this.applyTestRun(a, rendered, testRun, resume?.step) } : rendered;
        const parser = p.recipe.createProgressParser();
        const errors: string[] = [];
        const startedAt = new Date();
        const run: ContainerRun = { step: step.name, startedAt, endedAt: startedAt };
        runs.push(run);
        await recordRuns();
        const collector = plan && step.reportsTrainingProgress
          ? new SaveCollector(
              { uploader: this.uploader, storage: this.storage, attempts: this.attempts, states: this.states },
              { a, p, plan, outputDir: folders.outputDir, scratchDir: join(folders.outputDir, '..'), steps: stepMap, engine, onStored: async () => {
                run.endedAt = new Date();
                await recordRuns().catch((e: Error) => ctx.log.warn({ err: e }, 'container time not recorded'));
              } },
            )
          : undefined;
        collector?.start();
        let firstNewStep = resume === undefined || !step.reportsTrainingProgress;
        const result = await this.runtime
          .run(
          stepContainerSpec({
            image,
            recipe: p.recipe,
            step,
            // The control folder beside the dataset, only for recipes that train on control images (inputs step wrote it).
            folders: { ...folders, weights, ...(p.controls ? { controlDir: controlDirBeside(folders.datasetDir) } : {}) },
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
                if (!step.reportsTrainingProgress) continue;
                collector?.onEvent(ev);
                const mapped = stepMap.event(ev);
                progress.event(mapped);
                // The bar redraws the resumed step first: the first new step is the one after it.
                if (!firstNewStep && mapped.kind === 'step' && mapped.step > resume!.step) {
                  firstNewStep = true;
                  this.reportResumed(a, resume!.step, mapped.step);
                }
              }
              progress.line(line);
            },
          },
          ctx.signal,
        )
          .catch(async (e: unknown) => {
            // Uploads in flight finish before the attempt moves on, also on shutdown or failure.
            run.endedAt = new Date();
            await collector?.finish(false);
            throw e;
          });
        run.endedAt = new Date();
        // Exit 0: every save on disk is complete. Waits for the uploads either way.
        await collector?.finish(!result.failureClass && !ctx.signal.aborted);
        await progress.flush();
        await recordRuns();
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
    } finally {
      allocation.release();
      this.metrics.slotsBusy.set(this.allocator.busyCount() + this.allocator.cpuSlotsBusy());
    }
  }

  /** Checks the LoRA's header against the recipe, then stamps our metadata into it. */
  async checkOutput(a: Attempt, p: Prepared, loraPath: string, rendered?: RenderResult): Promise<void> {
    let header;
    try {
      header = await readSafetensorsHeader(loraPath);
    } catch (e) {
      throw new JobFailure('engine', `Training finished but produced no valid LoRA file (${basename(loraPath)}: ${(e as Error).message}). Points were refunded.`, { cause: e });
    }
    const check = p.recipe.checkOutput(header);
    if (!check.ok) throw new JobFailure('engine', `The trained LoRA failed its checks: ${check.problems.join('; ')}. Points were refunded.`);
    // A restarted engine counted from the resumed step: the file says the job's steps.
    const restarted = rendered?.resume && rendered.outputs.saves?.stepsAfterResume === 'restarts' ? rendered.resume.step : 0;
    const steps: Record<string, string> = restarted && header.metadata['ss_steps'] !== undefined ? { ss_steps: String(Number(header.metadata['ss_steps']) + restarted) } : {};
    await mergeSafetensorsMetadata(loraPath, { ...p.recipe.outputMetadata({ triggerWord: p.triggerWord, baseModel: p.recipe.baseModel, jobId: a.ctx.jobId, outputName: p.outputName }), ...steps });
  }

  /** The first step a resumed run reports, with the time since the claim (the resume's cost). */
  private reportResumed(a: Attempt, from: number, first: number): void {
    const seconds = a.openedAt ? (Date.now() - a.openedAt) / 1000 : undefined;
    a.ctx.log.info({ from, first, secondsSinceClaim: seconds }, 'resumed training reported its first step');
    void a.writer.logLines([`[worker] resumed from step ${from}: first new step ${first}${seconds !== undefined ? `, ${seconds.toFixed(1)} s after the claim` : ''}`]);
  }

  /** The step's argv under the test-run profile; every change is written to the job's log with its reason. */
  private async applyTestRun(a: Attempt, step: CommandStep, testRun: TestRunProfile, resumedAtStep?: number): Promise<string[]> {
    // A resumed test run trains only what is left of its steps (substitutions marked minusResumedStep).
    const { argv, applied } = applyArgvSubstitutions(step.argv, testRun.substitutions, resumedAtStep ? { resumedAtStep } : {});
    if (applied.length) {
      a.ctx.log.warn({ step: step.name, changes: applied }, 'CPU test run: argv changed by the recipe test-run profile');
      await a.writer.logLines(applied.map((c) => `[worker] CPU test run, ${step.name}: ${c}`));
    }
    return argv;
  }
}
