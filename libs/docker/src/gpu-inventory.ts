import { execFile } from 'node:child_process';
import type { InjectionToken } from 'tsyringe';

/** One GPU the worker may hand to containers. */
export interface GpuDevice {
  /** nvidia-smi index (or the configured one). */
  index: number;
  /** What goes into `DeviceRequests[].DeviceIDs`: the UUID when known (stable across reordering), else the index. */
  deviceId: string;
  uuid?: string;
  name: string;
  /** Total memory in GiB (nvidia-smi reports MiB; divided by 1024). */
  vramGb: number;
}

/** The devices and CPU slots a `GpuAllocator` hands out. */
export interface GpuInventory {
  gpus: GpuDevice[];
  /** Concurrent CPU-only (gpu count 0) runs allowed. */
  cpuSlots: number;
  source: 'nvidia-smi' | 'config';
}

export const GPU_INVENTORY = Symbol('GpuInventory') as InjectionToken<GpuInventory>;

export interface GpuInventoryEnv {
  /** `0:24,1:24` (index:VRAM GiB), or `none`. With nvidia-smi present it restricts the detected devices to these indices. */
  GPU_DEVICES?: string;
  /** CPU-only slots. @default 1 on a GPU-less host, 0 on a GPU host */
  CPU_SLOTS?: string;
  [key: string]: string | undefined;
}

export class GpuConfigError extends Error {
  readonly code = 'DOCKER.GPU_CONFIG';
  constructor(message: string) {
    super(message);
    this.name = 'GpuConfigError';
  }
}

export const NVIDIA_SMI_ARGS = ['--query-gpu=index,uuid,name,memory.total', '--format=csv,noheader,nounits'];

/** Parses `nvidia-smi --query-gpu=index,uuid,name,memory.total --format=csv,noheader,nounits`. */
export function parseNvidiaSmiCsv(text: string): GpuDevice[] {
  const gpus: GpuDevice[] = [];
  for (const raw of text.split(/\r?\n/)) {
    const line = raw.trim();
    if (!line) continue;
    const cols = line.split(',').map((c) => c.trim());
    if (cols.length < 4) throw new GpuConfigError(`Unexpected nvidia-smi line "${line}": expected index, uuid, name, memory.total`);
    const index = Number(cols[0]);
    const uuid = cols[1];
    const memMiB = Number(cols[cols.length - 1]);
    const name = cols.slice(2, cols.length - 1).join(','); // names may contain commas
    if (!Number.isInteger(index) || !uuid || !Number.isFinite(memMiB)) {
      throw new GpuConfigError(`Unexpected nvidia-smi line "${line}": index or memory is not a number`);
    }
    gpus.push({ index, uuid, deviceId: uuid, name, vramGb: Math.round((memMiB / 1024) * 10) / 10 });
  }
  return gpus;
}

/** Parses `GPU_DEVICES` (`0:24,1:24` or `none`); returns null when unset. */
export function parseGpuDevicesEnv(value: string | undefined): GpuDevice[] | null {
  if (value === undefined || value.trim() === '') return null;
  if (value.trim().toLowerCase() === 'none') return [];
  const seen = new Set<number>();
  return value.split(',').map((item) => {
    const m = /^\s*(\d+)\s*:\s*(\d+(?:\.\d+)?)\s*$/.exec(item);
    if (!m) throw new GpuConfigError(`GPU_DEVICES entry "${item}" is not index:vramGb (e.g. GPU_DEVICES=0:24,1:24, or GPU_DEVICES=none)`);
    const index = Number(m[1]);
    if (seen.has(index)) throw new GpuConfigError(`GPU_DEVICES lists GPU ${index} twice`);
    seen.add(index);
    return { index, deviceId: String(index), name: `configured GPU ${index}`, vramGb: Number(m[2]) };
  });
}

/** Parses `CPU_SLOTS`; undefined when unset (the default then depends on whether the host has GPUs). */
export function parseCpuSlotsEnv(value: string | undefined): number | undefined {
  if (value === undefined || value.trim() === '') return undefined;
  const n = Number(value);
  if (!/^\s*\d+\s*$/.test(value) || !Number.isSafeInteger(n)) throw new GpuConfigError(`CPU_SLOTS="${value}" must be a non-negative integer`);
  return n;
}

/** Runs nvidia-smi; resolves null when it is absent or fails (no driver), so configuration applies. */
export type NvidiaSmiRunner = () => Promise<string | null>;

export const runNvidiaSmi: NvidiaSmiRunner = () =>
  new Promise((resolve) => {
    execFile('nvidia-smi', NVIDIA_SMI_ARGS, { timeout: 15_000 }, (err, stdout) => resolve(err ? null : stdout));
  });

/** The GPU settings of the environment, parsed (see `parseDockerEnv`). */
export interface GpuEnvConfig {
  /** From `GPU_DEVICES`: null when unset, [] for `none`. */
  GPU_DEVICES: GpuDevice[] | null;
  /** From `CPU_SLOTS`: undefined when unset. */
  CPU_SLOTS: number | undefined;
}

/**
 * The worker's GPU inventory: from nvidia-smi when it answers, else from
 * `GPU_DEVICES`. With both, `GPU_DEVICES` names the indices this worker may
 * use (VRAM still comes from nvidia-smi), and `none` disables GPUs.
 */
export async function gpuInventoryFrom(config: GpuEnvConfig, smi: NvidiaSmiRunner = runNvidiaSmi): Promise<GpuInventory> {
  const configured = config.GPU_DEVICES;
  const cpuSlots = (hasGpus: boolean) => config.CPU_SLOTS ?? (hasGpus ? 0 : 1);
  const smiText = configured !== null && configured.length === 0 ? null : await smi();
  if (smiText !== null) {
    let gpus = parseNvidiaSmiCsv(smiText);
    if (configured) {
      const wanted = new Set(configured.map((g) => g.index));
      const missing = [...wanted].filter((i) => !gpus.some((g) => g.index === i));
      if (missing.length) throw new GpuConfigError(`GPU_DEVICES names GPU ${missing.join(', ')}, which nvidia-smi does not report`);
      gpus = gpus.filter((g) => wanted.has(g.index));
    }
    return { gpus, cpuSlots: cpuSlots(gpus.length > 0), source: 'nvidia-smi' };
  }
  const gpus = configured ?? [];
  return { gpus, cpuSlots: cpuSlots(gpus.length > 0), source: 'config' };
}

/** `gpuInventoryFrom` for raw `GPU_DEVICES` / `CPU_SLOTS` values. */
export async function readGpuInventory(env: GpuInventoryEnv = process.env, smi: NvidiaSmiRunner = runNvidiaSmi): Promise<GpuInventory> {
  return gpuInventoryFrom({ GPU_DEVICES: parseGpuDevicesEnv(env.GPU_DEVICES), CPU_SLOTS: parseCpuSlotsEnv(env.CPU_SLOTS) }, smi);
}
