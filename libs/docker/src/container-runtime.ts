import type { InjectionToken } from 'tsyringe';

/** A bind mount from the host into the container. Host paths must be absolute. */
export interface ContainerMount {
  hostPath: string;
  containerPath: string;
  readOnly: boolean;
}

/** Everything needed to run one step of one job attempt in a hardened container. */
export interface ContainerRunSpec {
  image: string;
  /** The command, exactly as exec'd (no shell is added). */
  argv: string[];
  workdir: string;
  /**
   * The container's whole environment: exactly these variables and nothing
   * from the worker's process env. Checked by `assertNoSecrets`.
   */
  env?: Record<string, string>;
  mounts: ContainerMount[];
  /** Explicit device ids (index or UUID) from a `GpuAllocator` allocation; null = CPU only. */
  gpus: { deviceIds: string[] } | null;
  /** Network access is off (`NetworkMode: none`) unless a recipe opts in with a stated reason. */
  network?: { reason: string };
  /** uid:gid; never root. @default '1000:1000' */
  user?: string;
  /** Memory limit in bytes (swap is disabled: MemorySwap = Memory). @default unlimited */
  memoryBytes?: number;
  /** Max processes + threads. @default 4096 */
  pidsLimit?: number;
  /** /dev/shm size. @default 8 GiB with GPUs, 64 MiB without */
  shmSizeBytes?: number;
  /** Extra tmpfs mounts (path -> options). `/tmp` is always added unless given here. */
  tmpfs?: Record<string, string>;
  labels: { jobId: string; attemptId: string; workerId: string; step?: string; scope?: string };
  /** Overall limit from start to exit; the container is stopped when it passes. */
  deadlineMs: number;
  /** Longest allowed gap between progress lines (see `isProgressLine`). */
  stallTimeoutMs: number;
  /** SIGTERM-to-SIGKILL grace when stopping. @default 30 */
  stopGraceSeconds?: number;
  /** The whole raw output (stdout and stderr interleaved) is appended here. */
  logFilePath: string;
  /**
   * Which lines count as progress for the stall deadline. Default: every
   * non-empty line. Pass e.g. a tqdm `steps:` matcher so chatter does not
   * keep a hung trainer alive.
   */
  isProgressLine?: (line: string, stream: LogStreamName) => boolean;
}

export type LogStreamName = 'stdout' | 'stderr';

export interface ContainerRunObserver {
  /** One complete line (split on \n, \r\n and \r; empty lines skipped; capped length). Must not throw. */
  onLine?(line: string, stream: LogStreamName): void;
  /**
   * Called once the container has started. Output lines may already have
   * come (the output is attached before the start, so none is lost).
   */
  onStarted?(containerId: string): void;
}

/**
 * Why a container run failed, as the runtime saw it. Not a job failure class:
 * the worker maps each kind to one of libs/db's JOB_FAILURE_CLASSES.
 */
export type ContainerFailureKind = 'oom' | 'timeout' | 'stall' | 'engine' | 'infrastructure' | 'cancelled';

export interface ContainerRunResult {
  /** '' when the container could not even be created. */
  containerId: string;
  /** null when the engine never reported one (not started, or the engine failed). */
  exitCode: number | null;
  oomKilled: boolean;
  /** null = success (exit 0, nothing else went wrong). */
  failureClass: ContainerFailureKind | null;
  /** What went wrong, in words, when failureClass is not null. */
  failureMessage?: string;
  durationMs: number;
  logFilePath: string;
  /** The last lines of output (both streams), oldest first. */
  lastLines: string[];
  /** Set when writing `logFilePath` failed part-way (e.g. disk full); the run itself went on. */
  logFileError?: string;
}

/** Registry credentials for a pull, sent as `X-Registry-Auth`. Never logged. */
export interface RegistryAuth {
  username: string;
  password: string;
  serveraddress: string;
}

export interface ContainerRuntime {
  /** Make sure `ref` is present locally; pull it (with `auth`) when it is not. */
  ensureImage(ref: string, auth?: RegistryAuth): Promise<void>;
  /**
   * Run one container to completion and remove it. Aborting `signal` stops it
   * (graceful stop, then kill) and the result's failureClass is 'cancelled'.
   * Engine failures come back as failureClass 'infrastructure'; only an
   * invalid spec (e.g. a secret in env) throws.
   */
  run(spec: ContainerRunSpec, observer?: ContainerRunObserver, signal?: AbortSignal): Promise<ContainerRunResult>;
  /**
   * Remove every managed container for which `isOwned(labels)` resolves false
   * (containers of runs active in this process are never touched). Returns the
   * removed container ids.
   */
  sweepOrphans(isOwned: (labels: Record<string, string>) => Promise<boolean>): Promise<string[]>;
}

export const CONTAINER_RUNTIME = Symbol('ContainerRuntime') as InjectionToken<ContainerRuntime>;
