/**
 * Collects a training container's intermediate saves while it runs: on the
 * engine's step and checkpoint events and on a timer it looks for the saves
 * the SavePlan names, and once a save is complete (the engine reported a
 * later step, or exited 0: every engine saves synchronously inside its loop)
 * it uploads the checkpoint LoRA and its samples, records a CheckpointRecord
 * (fenced, once per job step), mirrors a summary on the job document, and
 * stores the newest engine state for a resume.
 *
 * Everything runs on one queue beside the container: the log and progress
 * stream never waits for it, and a failed upload is logged, never fatal (the
 * final LoRA is what the job delivers). `finish` waits for the queue.
 */
import { rm } from 'node:fs/promises';
import { basename } from 'node:path';
import type { CheckpointRecord } from '@stationthis/db';
import type { ProgressEvent, SavePlan } from '@stationthis/recipes';
import { checkpointLoraKey, checkpointSampleKey, type ModelUploadPort, type ObjectStorage } from '@stationthis/storage';
import type { TrainingAttemptRepository } from '@stationthis/db';
import { mergeSafetensorsMetadata } from '../safetensors-file';
import type { Attempt, Prepared } from '../steps/attempt';
import { TRAINING_JOB_METADATA } from '../steps/publish-step';
import { checkpointFileAt, engineSaveSteps, exists, inside, plannedSaveCount, safetensorsComplete, samplesAt, stateDirAt } from './save-files';
import type { ResumeStateStore } from './resume-state-store';
import type { StepMap } from './step-map';

/** How often the output folder is looked at besides the engine's events. */
export const SAVE_SCAN_INTERVAL_MS = 2000;
/** Tries per save before it is given up (logged; training goes on). */
const MAX_TRIES = 3;

export interface SaveCollectorDeps {
  uploader: ModelUploadPort;
  storage: ObjectStorage;
  attempts: Pick<TrainingAttemptRepository, 'recordCheckpoint'>;
  states: ResumeStateStore;
}

export interface SaveCollectorInput {
  a: Attempt;
  p: Prepared;
  plan: SavePlan;
  outputDir: string;
  /** Scratch space outside the container's output folder (tar files). */
  scratchDir: string;
  steps: StepMap;
  /** `<recipe id>@<version>#<image ref>`: recorded with each state. */
  engine: string;
  /** Called after each recorded save (the caller records container time). */
  onStored?: () => Promise<void>;
}

export class SaveCollector {
  private lastEngineStep = 0;
  private exitedOk = false;
  private readonly losses = new Map<number, number>();
  private readonly epochs = new Map<number, number>();
  private readonly handled = new Set<number>();
  private readonly tries = new Map<string, number>();
  private readonly saveSteps: number[];
  private queue: Promise<void> = Promise.resolve();
  private scanQueued = false;
  private timer: NodeJS.Timeout | undefined;
  private stopped = false;

  constructor(
    private readonly deps: SaveCollectorDeps,
    private readonly input: SaveCollectorInput,
  ) {
    this.saveSteps = engineSaveSteps(input.plan, input.steps.resumedAt);
    // Steps recorded by earlier claims of this platform attempt are never stored again.
    for (const c of input.a.state.checkpoints ?? []) this.handled.add(c.step);
  }

  start(): void {
    if (this.saveSteps.length === 0) return;
    this.timer = setInterval(() => this.schedule(), SAVE_SCAN_INTERVAL_MS);
    this.timer.unref();
  }

  /** The engine's parsed events (engine-numbered steps). Never waits. */
  onEvent(ev: ProgressEvent): void {
    if (ev.kind === 'step') {
      if (ev.loss !== undefined && Number.isFinite(ev.loss)) this.losses.set(ev.step, ev.loss);
      if (ev.epoch !== undefined) this.epochs.set(ev.step, ev.epoch);
      const crossed = this.saveSteps.some((s) => s >= this.lastEngineStep && s < ev.step);
      this.lastEngineStep = Math.max(this.lastEngineStep, ev.step);
      if (crossed) this.schedule();
    } else if (ev.kind === 'checkpoint') {
      this.schedule();
    }
  }

  /** The container ended: with exit 0 every save on disk is complete. Waits for every upload. */
  async finish(exitedOk: boolean): Promise<void> {
    if (this.timer) clearInterval(this.timer);
    this.exitedOk = exitedOk;
    if (this.saveSteps.length) {
      this.schedule();
      await this.queue;
    }
    this.stopped = true;
  }

  private schedule(): void {
    if (this.scanQueued || this.stopped) return;
    this.scanQueued = true;
    this.queue = this.queue
      .then(async () => {
        this.scanQueued = false;
        await this.scan();
      })
      .catch((e: Error) => this.input.a.ctx.log.warn({ err: e }, 'save scan failed; the next scan tries again'));
  }

  private complete(engineStep: number): boolean {
    return this.exitedOk || this.lastEngineStep > engineStep;
  }

  private async scan(): Promise<void> {
    const { a, steps } = this.input;
    // A lost claim stores nothing more (its records would be refused anyway).
    if (a.ctx.stopReason === 'lease-lost') return;
    for (const s of this.saveSteps) {
      if (!this.complete(s)) break;
      const jobStep = steps.toJob(s);
      if (this.handled.has(jobStep)) continue;
      // Records stay in step order: a save to retry holds back the later ones until the next scan.
      if (!(await this.attempt(`checkpoint:${jobStep}`, () => this.storeCheckpoint(s, jobStep)))) break;
      this.handled.add(jobStep);
    }
    await this.storeNewestState();
  }

  /** Runs one save's work; false while it should be tried again (up to MAX_TRIES). */
  private async attempt(what: string, fn: () => Promise<void>): Promise<boolean> {
    try {
      await fn();
      return true;
    } catch (e) {
      const n = (this.tries.get(what) ?? 0) + 1;
      this.tries.set(what, n);
      const { a } = this.input;
      a.ctx.log.warn({ err: e, what, tries: n }, 'storing an intermediate save failed');
      if (n < MAX_TRIES) return false;
      await a.writer.logLines([`[worker] could not store ${what.replace(':', ' at step ')} (${(e as Error).message}); training continues, the final LoRA is unaffected`]);
      return true;
    }
  }

  private async storeCheckpoint(engineStep: number, jobStep: number): Promise<void> {
    const { a, p, plan, outputDir } = this.input;
    const { ctx, ref } = a;
    const file = inside(outputDir, checkpointFileAt(plan, engineStep));
    const whole = await safetensorsComplete(file);
    if (!whole.ok) {
      if (!(await exists(file))) {
        ctx.log.warn({ step: jobStep, file: basename(file) }, 'the engine wrote no checkpoint for a planned save');
        return;
      }
      throw new Error(`checkpoint ${basename(file)} is incomplete: ${whole.why}`);
    }
    // Our metadata as on the final LoRA (a promoted checkpoint loads like it); a restarted count is mapped to the job's.
    await mergeSafetensorsMetadata(file, {
      ...p.recipe.outputMetadata({ triggerWord: p.triggerWord, baseModel: p.recipe.baseModel, jobId: ctx.jobId, outputName: p.outputName }),
      ...(this.input.steps.offset ? { ss_steps: String(jobStep) } : {}),
    });
    const uploaded: string[] = [];
    try {
      const loraKey = checkpointLoraKey(ctx.jobId, ref.platformAttempt, jobStep, ctx.lease.attemptId);
      const lora = await this.deps.uploader.upload({
        filePath: file,
        bucketAlias: 'models',
        key: loraKey,
        contentType: 'application/octet-stream',
        cacheControl: 'public, max-age=31536000, immutable',
        metadata: { [TRAINING_JOB_METADATA]: ctx.jobId },
      });
      uploaded.push(loraKey);
      const sampleKeys: string[] = [];
      const sampleUrls: string[] = [];
      for (const path of await samplesAt(outputDir, plan, engineStep)) {
        const name = basename(path);
        const key = checkpointSampleKey(ctx.jobId, ref.platformAttempt, jobStep, ctx.lease.attemptId, name);
        const up = await this.deps.uploader.upload({ filePath: path, bucketAlias: 'models', key, contentType: imageType(name), cacheControl: 'public, max-age=31536000, immutable' });
        uploaded.push(key);
        sampleKeys.push(key);
        sampleUrls.push(up.publicUrl);
      }
      const loss = this.lossAt(engineStep);
      const epoch = this.epochAt(engineStep);
      const record: CheckpointRecord = {
        step: jobStep,
        ...(epoch !== undefined ? { epoch } : {}),
        loss: loss ?? null,
        loraKey,
        loraUrl: lora.publicUrl,
        sha256: lora.sha256,
        autov2: lora.autov2,
        bytes: lora.bytes,
        sampleKeys,
        sampleUrls,
        storedAt: new Date(),
      };
      const outcome = await this.deps.attempts.recordCheckpoint(ref, record);
      if (outcome !== 'recorded') {
        await this.deleteAll(uploaded);
        if (outcome === 'not-owner') ctx.stop('lease-lost');
        ctx.log.info({ step: jobStep, outcome }, 'checkpoint not recorded');
        return;
      }
      uploaded.length = 0;
      a.state.checkpoints = [...(a.state.checkpoints ?? []), record].sort((x, y) => x.step - y.step);
      const n = a.state.checkpoints.length;
      const m = plannedSaveCount(plan);
      ctx.log.info({ step: jobStep, bytes: lora.bytes, samples: sampleUrls.length }, 'checkpoint stored');
      await a.writer.setJobFields({ checkpoints: a.state.checkpoints.map((c) => ({ step: c.step, loss: c.loss ?? null, loraUrl: c.loraUrl, sampleUrls: c.sampleUrls })) }).catch((e: Error) => ctx.log.warn({ err: e }, 'checkpoint summary not written on the job'));
      await a.writer.logLines([`[worker] checkpoint ${n} of ${m} stored (step ${jobStep}, loss ${loss === undefined ? 'n/a' : loss.toFixed(4)})`]);
      await this.input.onStored?.();
    } catch (e) {
      await this.deleteAll(uploaded);
      throw e;
    }
  }

  /** The newest complete state folder not yet stored: tar, upload, record; older local folders go. */
  private async storeNewestState(): Promise<void> {
    const { a, plan, outputDir, steps, scratchDir, engine } = this.input;
    if (!plan.stateTemplate) return;
    // A cancelled job never resumes (and a lost lease is another claim's): storing its state would only cost time.
    if (a.ctx.stopReason === 'cancel' || a.ctx.stopReason === 'lease-lost') return;
    const recorded = a.state.resumeState?.step ?? 0;
    const candidates = this.saveSteps.filter((s) => this.complete(s) && steps.toJob(s) > recorded).reverse();
    for (const s of candidates) {
      const dir = inside(outputDir, stateDirAt(plan, s)!);
      if (!(await exists(dir))) continue;
      const jobStep = steps.toJob(s);
      let stored = false;
      const done = await this.attempt(`state:${jobStep}`, async () => {
        const epoch = this.epochAt(s);
        const rec = await this.deps.states.store(a, { step: jobStep, ...(epoch !== undefined ? { epoch } : {}), dir, stateDir: stateDirAt(plan, jobStep)!, engine, scratchDir });
        stored = rec !== null;
        if (rec) a.ctx.log.info({ step: jobStep, bytes: rec.bytes }, 'resume state stored');
      });
      if (!done) return;
      if (stored) {
        await this.input.onStored?.();
        // Older local states are superseded by the stored one.
        const older = this.saveSteps.filter((x) => x < s);
        // The folder a `continues` run was restored into is named by the engine's count too.
        if (steps.resumedAt > 0 && steps.offset === 0) older.push(steps.resumedAt);
        for (const o of older) await rm(inside(outputDir, stateDirAt(plan, o)!), { recursive: true, force: true }).catch(() => undefined);
      }
      return;
    }
  }

  private lossAt(engineStep: number): number | undefined {
    let best: number | undefined;
    let bestStep = -1;
    for (const [step, loss] of this.losses) if (step <= engineStep && step > bestStep) [best, bestStep] = [loss, step];
    return best;
  }

  private epochAt(engineStep: number): number | undefined {
    let best: number | undefined;
    let bestStep = -1;
    for (const [step, epoch] of this.epochs) if (step <= engineStep && step > bestStep) [best, bestStep] = [epoch, step];
    return best;
  }

  private async deleteAll(keys: string[]): Promise<void> {
    for (const key of keys) await this.deps.storage.deleteObject('models', key).catch((e: Error) => this.input.a.ctx.log.warn({ err: e, key }, 'could not delete an unrecorded checkpoint object'));
  }
}

function imageType(name: string): string {
  return name.endsWith('.png') ? 'image/png' : name.endsWith('.webp') ? 'image/webp' : 'image/jpeg';
}

