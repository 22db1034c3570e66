/**
 * Where a rendered job's intermediate saves land in the output folder
 * (SavePlan, libs/recipes contract): which steps save, the checkpoint file and
 * state folder of a step, the sample images of a step, and whether a
 * safetensors file is whole. Paths only; the collector decides what to do.
 */
import { open, readdir, stat } from 'node:fs/promises';
import { join, normalize, sep } from 'node:path';
import { checkpointFileAt, sampleStepOf, savePlanSteps, stateDirAt, type SavePlan } from '@stationthis/recipes';

export { checkpointFileAt, stateDirAt };

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

/**
 * True when the safetensors file holds every byte its header promises (an
 * engine still writing, or a torn file after a crash, is shorter). Reads the
 * header only.
 */
export async function safetensorsComplete(path: string): Promise<{ ok: true; bytes: number } | { ok: false; why: string }> {
  const fh = await open(path, 'r').catch(() => null);
  if (!fh) return { ok: false, why: 'the file does not exist' };
  try {
    const size = (await fh.stat()).size;
    const len = Buffer.alloc(8);
    if ((await fh.read(len, 0, 8, 0)).bytesRead < 8) return { ok: false, why: 'it is shorter than the 8-byte header length' };
    const n = Number(len.readBigUInt64LE(0));
    if (n < 2 || n > 100 * 1024 * 1024 || 8 + n > size) return { ok: false, why: `its header length ${n} does not fit its ${size} bytes` };
    const buf = Buffer.alloc(n);
    await fh.read(buf, 0, n, 8);
    let header: Record<string, { data_offsets?: [number, number] }>;
    try {
      header = JSON.parse(buf.toString('utf8')) as typeof header;
    } catch {
      return { ok: false, why: 'its header is not complete JSON' };
    }
    let end = 0;
    for (const [name, t] of Object.entries(header)) {
      if (name === '__metadata__') continue;
      const off = t?.data_offsets;
      if (!Array.isArray(off) || off.length !== 2) return { ok: false, why: `tensor ${name} has no data_offsets` };
      end = Math.max(end, Number(off[1]));
    }
    if (end === 0) return { ok: false, why: 'it holds no tensors' };
    if (8 + n + end !== size) return { ok: false, why: `its tensors need ${8 + n + end} bytes but it has ${size}` };
    return { ok: true, bytes: size };
  } finally {
    await fh.close();
  }
}
