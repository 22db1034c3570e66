/**
 * Where a rendered job's intermediate saves land in the output folder
 * (SavePlan, libs/recipes contract): which steps save, the checkpoint file and
 * state folder of a step, the sample images of a step, and whether a
 * safetensors file is whole. Paths only; the collector decides what to do.
 */
import { readdir, stat } from 'node:fs/promises';
import { join, normalize, sep } from 'node:path';
import { checkpointFileAt, sampleStepOf, savePlanSteps, stateDirAt, type SavePlan } from '@stationthis/recipes';

export { checkpointFileAt, stateDirAt };
// Whether a checkpoint is whole: the header reader every LoRA check uses.
export { safetensorsComplete } from '../safetensors-file';

/**
 * The engine-numbered steps that save in one container run: multiples of
 * `everySteps` below the run's last step (the final LoRA is `outputs.lora`).
 * A `continues` engine resumed at R counts on from R; a `restarts` engine
 * counts from 0 to totalSteps − R.
 */
export function engineSaveSteps(plan: SavePlan, resumedAt: number): number[] {
  if (plan.stepsAfterResume === 'restarts') return savePlanSteps({ ...plan, totalSteps: plan.totalSteps - resumedAt });
  return savePlanSteps(plan).filter((s) => s > resumedAt);
}

/** Planned saves of the whole job (job steps), for "checkpoint N of M". */
export function plannedSaveCount(plan: SavePlan): number {
  return savePlanSteps(plan).length;
}

/** `rel` under `root`, refusing templates that climb out of the output folder. */
export function inside(root: string, rel: string): string {
  const full = normalize(join(root, rel));
  if (full !== root && !full.startsWith(root.endsWith(sep) ? root : root + sep)) throw new Error(`save path ${JSON.stringify(rel)} leaves the output folder`);
  return full;
}

export async function exists(path: string): Promise<boolean> {
  return (await stat(path).catch(() => null)) !== null;
}

/** Sample images the engine wrote for `engineStep`, as paths under the output folder, sorted. */
export async function samplesAt(outputDir: string, plan: SavePlan, engineStep: number): Promise<string[]> {
  if (!plan.samples) return [];
  const dir = inside(outputDir, plan.samples.dir);
  const names = await readdir(dir).catch(() => [] as string[]);
  return names
    .filter((n) => /\.(png|jpe?g|webp)$/i.test(n) && sampleStepOf(plan, n) === engineStep)
    .sort()
    .map((n) => join(dir, n));
}
