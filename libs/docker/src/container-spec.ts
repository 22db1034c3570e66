import { randomBytes } from 'node:crypto';
import * as path from 'node:path';
import type Dockerode from 'dockerode';
import type { ContainerRunSpec } from './container-runtime';
import { LABELS, MANAGED_LABEL_VALUE } from './labels';

export const DEFAULT_USER = '1000:1000';
export const DEFAULT_PIDS_LIMIT = 4096;
export const DEFAULT_STOP_GRACE_SECONDS = 30;
/** PyTorch DataLoader workers share tensors through /dev/shm; Docker's 64 MiB default breaks them. */
export const DEFAULT_GPU_SHM_BYTES = 8 * 1024 ** 3;
export const DEFAULT_CPU_SHM_BYTES = 64 * 1024 ** 2;
/** Scratch space on the read-only root. Not noexec: Triton/torch compile and dlopen kernels from /tmp. */
export const DEFAULT_TMP_TMPFS = 'rw,nosuid,nodev,size=2g';
/** NVIDIA NGC's usual `--ulimit memlock=-1 --ulimit stack=67108864`. */
export const GPU_ULIMITS = [
  { Name: 'memlock', Soft: -1, Hard: -1 },
  { Name: 'stack', Soft: 67108864, Hard: 67108864 },
];

export class ContainerSpecError extends Error {
  readonly code = 'DOCKER.INVALID_SPEC';
  constructor(message: string) {
    super(`Invalid container run spec: ${message}`);
    this.name = 'ContainerSpecError';
  }
}

/** Normalised container path without a trailing slash: '/d/' and '/d' are one target. */
function containerTarget(p: string): string {
  const n = path.posix.normalize(p);
  return n.length > 1 ? n.replace(/\/+$/, '') : n;
}

function isRootUser(user: string): boolean {
  const uid = user.split(':')[0].trim();
  return uid === '' || uid === '0' || uid === 'root';
}

/** Throws `ContainerSpecError` naming the first problem found. */
export function validateRunSpec(spec: ContainerRunSpec): void {
  const fail = (m: string): never => {
    throw new ContainerSpecError(m);
  };
  if (!spec.image?.trim()) fail('image is empty');
  if (!Array.isArray(spec.argv) || spec.argv.length === 0 || spec.argv.some((a) => typeof a !== 'string')) {
    fail('argv must be a non-empty array of strings');
  }
  if (!path.posix.isAbsolute(spec.workdir ?? '')) fail(`workdir "${spec.workdir}" must be an absolute container path`);
  const seen = new Set<string>();
  for (const m of spec.mounts ?? []) {
    if (!path.isAbsolute(m.hostPath)) fail(`mount hostPath "${m.hostPath}" must be absolute`);
    const target = containerTarget(m.containerPath ?? '');
    if (!path.posix.isAbsolute(target) || target === '/') fail(`mount containerPath "${m.containerPath}" must be an absolute path other than /`);
    if (seen.has(target)) fail(`two mounts target "${target}"`);
    seen.add(target);
    if (typeof m.readOnly !== 'boolean') fail(`mount "${target}" must say readOnly true or false`);
  }
  if (spec.gpus) {
    const ids = spec.gpus.deviceIds;
    if (!Array.isArray(ids) || ids.length === 0) fail('gpus.deviceIds is empty; pass gpus: null for a CPU-only run');
    if (ids.some((id) => !id || id === 'all')) fail('gpus.deviceIds must name explicit devices (index or UUID), never "all"');
  }
  if (spec.network && !spec.network.reason?.trim()) fail('network was requested without a stated reason');
  if (isRootUser(spec.user ?? DEFAULT_USER)) fail(`user "${spec.user}" is root; training containers run as a non-root uid`);
  const { jobId, attemptId, workerId } = spec.labels ?? ({} as ContainerRunSpec['labels']);
  if (!jobId || !attemptId || !workerId) fail('labels.jobId, labels.attemptId and labels.workerId are all required');
  // Node timers overflow past 2^31-1 ms (~24.8 days) and would fire at once.
  const MAX_TIMER_MS = 2_147_483_647;
  if (!(spec.deadlineMs > 0 && spec.deadlineMs <= MAX_TIMER_MS)) fail(`deadlineMs must be between 1 and ${MAX_TIMER_MS}`);
  if (!(spec.stallTimeoutMs > 0 && spec.stallTimeoutMs <= MAX_TIMER_MS)) fail(`stallTimeoutMs must be between 1 and ${MAX_TIMER_MS}`);
  if (!spec.logFilePath || !path.isAbsolute(spec.logFilePath)) fail(`logFilePath "${spec.logFilePath}" must be an absolute path`);
  for (const n of ['memoryBytes', 'pidsLimit', 'shmSizeBytes', 'stopGraceSeconds'] as const) {
    const v = spec[n];
    if (v !== undefined && !(Number.isInteger(v) && v >= 0)) fail(`${n} must be a non-negative integer`);
  }
}

function nameSafe(s: string): string {
  return s.replace(/[^a-zA-Z0-9_.-]+/g, '-').slice(0, 40);
}

/** The labels every run's container carries. */
export function containerLabels(spec: ContainerRunSpec, now: Date = new Date()): Record<string, string> {
  const labels: Record<string, string> = {
    [LABELS.managed]: MANAGED_LABEL_VALUE,
    [LABELS.jobId]: spec.labels.jobId,
    [LABELS.attemptId]: spec.labels.attemptId,
    [LABELS.workerId]: spec.labels.workerId,
    [LABELS.createdAt]: now.toISOString(),
  };
  if (spec.labels.step) labels[LABELS.step] = spec.labels.step;
  if (spec.labels.scope) labels[LABELS.scope] = spec.labels.scope;
  if (spec.network) labels[LABELS.networkReason] = spec.network.reason;
  return labels;
}

/**
 * The exact create request for a run: the one place that turns a spec into
 * raw Docker `HostConfig` (GPU device requests, limits, hardening, mounts).
 * Pure; the runtime sends its result unchanged.
 */
export function buildContainerCreateOptions(spec: ContainerRunSpec, now: Date = new Date()): Dockerode.ContainerCreateOptions {
  const gpuIds = spec.gpus ? [...spec.gpus.deviceIds] : null;
  const gpu = gpuIds !== null;
  const tmpfs: Record<string, string> = { '/tmp': DEFAULT_TMP_TMPFS, ...(spec.tmpfs ?? {}) };
  const memory = spec.memoryBytes ?? 0;
  const hostConfig: Dockerode.HostConfig = {
    NetworkMode: spec.network ? 'bridge' : 'none',
    ReadonlyRootfs: true,
    Tmpfs: tmpfs,
    CapDrop: ['ALL'],
    SecurityOpt: ['no-new-privileges'],
    Privileged: false,
    // tini as PID 1: forwards SIGTERM to the trainer and reaps DataLoader zombies.
    Init: true,
    Memory: memory,
    // Equal to Memory: no swap, so an over-limit trainer is OOM-killed, not thrashed.
    MemorySwap: memory > 0 ? memory : 0,
    PidsLimit: spec.pidsLimit ?? DEFAULT_PIDS_LIMIT,
    ShmSize: spec.shmSizeBytes ?? (gpu ? DEFAULT_GPU_SHM_BYTES : DEFAULT_CPU_SHM_BYTES),
    Mounts: (spec.mounts ?? []).map((m) => ({
      Type: 'bind' as const,
      Source: m.hostPath,
      Target: containerTarget(m.containerPath),
      ReadOnly: m.readOnly,
    })),
    // Removal is ours (in `finally`): AutoRemove races with wait/logs.
    AutoRemove: false,
    RestartPolicy: { Name: 'no' },
    // We capture output through attach; the daemon keeps only a small tail for operators.
    LogConfig: { Type: 'json-file', Config: { 'max-size': '10m', 'max-file': '1' } },
  };
  if (gpuIds) {
    hostConfig.DeviceRequests = [{ Driver: 'nvidia', DeviceIDs: gpuIds, Capabilities: [['gpu']] }];
    hostConfig.Ulimits = GPU_ULIMITS.map((u) => ({ ...u }));
  }
  const grace = spec.stopGraceSeconds ?? DEFAULT_STOP_GRACE_SECONDS;
  return {
    name: `st-${nameSafe(spec.labels.jobId)}-${nameSafe(spec.labels.attemptId)}-${randomBytes(3).toString('hex')}`,
    Image: spec.image,
    Cmd: [...spec.argv],
    WorkingDir: spec.workdir,
    // Exactly the spec's variables; never the worker's process env.
    Env: Object.entries(spec.env ?? {}).map(([k, v]) => `${k}=${v}`),
    User: spec.user ?? DEFAULT_USER,
    Labels: containerLabels(spec, now),
    Tty: false,
    OpenStdin: false,
    AttachStdin: false,
    AttachStdout: true,
    AttachStderr: true,
    StopTimeout: grace,
    HostConfig: hostConfig,
  };
}
