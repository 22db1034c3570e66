import type { ContainerFailureKind, ContainerRunResult } from './container-runtime';

/** Why the runtime stopped a container itself (it was not the process exiting on its own). */
export interface StopReason {
  cls: Extract<ContainerFailureKind, 'cancelled' | 'timeout' | 'stall'>;
  message: string;
}

/**
 * The stop reasons in words, shared by `DockerContainerRuntime` and the
 * in-memory fake so both report a stop the same way.
 */
export const STOP_REASONS = {
  cancelled: (): StopReason => ({ cls: 'cancelled', message: 'the run was cancelled' }),
  timeout: (deadlineMs: number): StopReason => ({ cls: 'timeout', message: `the overall deadline of ${deadlineMs} ms passed` }),
  stall: (stallTimeoutMs: number): StopReason => ({ cls: 'stall', message: `no progress line for ${stallTimeoutMs} ms` }),
};

/**
 * How a container that ran and exited is classified: a stop we initiated
 * first (it takes precedence over OOM), then OOM, then the exit code.
 */
export function classifyExit(
  stopped: StopReason | null,
  exitCode: number | null,
  oomKilled: boolean,
  memoryBytes: number | undefined,
): Pick<ContainerRunResult, 'failureClass' | 'failureMessage' | 'exitCode' | 'oomKilled'> {
  if (stopped) return { failureClass: stopped.cls, failureMessage: `${stopped.message}; the container was stopped (exit code ${exitCode})`, exitCode, oomKilled };
  if (oomKilled) {
    return {
      failureClass: 'oom',
      failureMessage: `the container ran out of memory (limit ${memoryBytes ?? 'none'} bytes) and was killed (exit code ${exitCode})`,
      exitCode,
      oomKilled: true,
    };
  }
  if (exitCode === 0) return { failureClass: null, exitCode: 0, oomKilled: false };
  return { failureClass: 'engine', failureMessage: `the training process exited with code ${exitCode}`, exitCode, oomKilled: false };
}
