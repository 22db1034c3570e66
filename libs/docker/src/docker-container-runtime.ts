import Dockerode from 'dockerode';
import { pipeline } from 'node:stream/promises';
import { inject, injectable, type InjectionToken } from 'tsyringe';
import { DOCKER } from './docker-client';
import type {
  ContainerRunObserver,
  ContainerRunResult,
  ContainerRunSpec,
  ContainerRuntime,
  ContainerFailureKind,
  LogStreamName,
  RegistryAuth,
} from './container-runtime';
import { assertNoSecrets } from './env-guard';
import { buildContainerCreateOptions, DEFAULT_STOP_GRACE_SECONDS, validateRunSpec } from './container-spec';
import { MANAGED_LABEL_FILTER } from './labels';
import { LogFile } from './log-file';
import { classifyExit, STOP_REASONS, type StopReason } from './run-outcome';
import { DEFAULT_MAX_LINE_BYTES, DockerStreamDemuxer, LineSplitter, RingBuffer } from './log-stream';

/**
 * Limits of a `DockerContainerRuntime`. Every field is optional; production
 * uses the defaults. Checked once, in the constructor.
 */
export interface DockerRuntimeOptions {
  /** Longest line handed to observers; the log file keeps every byte. @default 8192 */
  maxLineBytes?: number;
  /** Lines kept for `ContainerRunResult.lastLines`. @default 50 */
  lastLines?: number;
  /** How long to wait for the attach stream to end after the container exited. @default 10000 */
  streamEndTimeoutMs?: number;
  /** Upper bound on one image pull. @default 3600000 */
  pullTimeoutMs?: number;
}

/** `DockerRuntimeOptions` with every default filled in. */
export type ResolvedDockerRuntimeOptions = Readonly<Required<DockerRuntimeOptions>>;

export const DEFAULT_DOCKER_RUNTIME_OPTIONS: ResolvedDockerRuntimeOptions = Object.freeze({
  maxLineBytes: DEFAULT_MAX_LINE_BYTES,
  lastLines: 50,
  streamEndTimeoutMs: 10_000,
  pullTimeoutMs: 3_600_000,
});

/**
 * The runtime's options, bound by `registerDocker` to `{}` (the defaults)
 * unless the composition root bound it first.
 */
export const DOCKER_RUNTIME_OPTIONS = Symbol('DockerRuntimeOptions') as InjectionToken<DockerRuntimeOptions>;

/** Fills in the defaults and rejects a value that is not a positive integer, naming the option. */
export function resolveDockerRuntimeOptions(options: DockerRuntimeOptions = {}): ResolvedDockerRuntimeOptions {
  const resolved = { ...DEFAULT_DOCKER_RUNTIME_OPTIONS };
  for (const key of Object.keys(DEFAULT_DOCKER_RUNTIME_OPTIONS) as Array<keyof DockerRuntimeOptions>) {
    const value = options[key];
    if (value === undefined) continue;
    if (!Number.isSafeInteger(value) || value <= 0) {
      throw new RangeError(`DockerContainerRuntime option ${key} must be a positive whole number, got ${String(value)}; leave it out for the default (${DEFAULT_DOCKER_RUNTIME_OPTIONS[key]}).`);
    }
    resolved[key] = value;
  }
  const unknown = Object.keys(options).filter((k) => !(k in DEFAULT_DOCKER_RUNTIME_OPTIONS));
  if (unknown.length) throw new RangeError(`Unknown DockerContainerRuntime option(s): ${unknown.join(', ')}; known: ${Object.keys(DEFAULT_DOCKER_RUNTIME_OPTIONS).join(', ')}.`);
  return Object.freeze(resolved);
}

export class ImagePullError extends Error {
  readonly code = 'DOCKER.IMAGE_PULL_FAILED';
  constructor(readonly ref: string, reason: string, options?: { cause?: unknown }) {
    super(
      `Could not pull image "${ref}": ${reason}. Check that the image reference is right, that the registry is reachable ` +
        `from the Docker engine, and that the registry credentials are valid.`,
      options,
    );
    this.name = 'ImagePullError';
  }
}

function statusCode(err: unknown): number | undefined {
  return (err as { statusCode?: number } | null)?.statusCode;
}

function errorText(err: unknown): string {
  const e = err as { json?: { message?: string }; message?: string } | null;
  return e?.json?.message ?? e?.message ?? String(err);
}

/**
 * Runs one hardened training container per call over dockerode. Every
 * container is labelled, attached before start, watched against an overall
 * and a stall deadline, and removed on every path.
 */
@injectable()
export class DockerContainerRuntime implements ContainerRuntime {
  private readonly options: ResolvedDockerRuntimeOptions;

  /** Containers of runs in progress here; the orphan sweep never touches them. */
  private readonly active = new Set<string>();

  constructor(
    @inject(DOCKER) private readonly docker: Dockerode,
    @inject(DOCKER_RUNTIME_OPTIONS) options: DockerRuntimeOptions = {},
  ) {
    this.options = resolveDockerRuntimeOptions(options);
  }

  async ensureImage(ref: string, auth?: RegistryAuth): Promise<void> {
    if (await this.imageExists(ref)) return;
    let stream: NodeJS.ReadableStream;
    try {
      stream = await this.docker.pull(ref, auth ? { authconfig: auth } : {});
    } catch (err) {
      throw new ImagePullError(ref, errorText(err), { cause: err });
    }
    const events = await new Promise<Array<{ error?: string; errorDetail?: { message?: string } }>>((resolve, reject) => {
      const timer = setTimeout(() => {
        (stream as unknown as { destroy?: () => void }).destroy?.();
        reject(new ImagePullError(ref, `no end of the pull stream after ${this.options.pullTimeoutMs} ms`));
      }, this.options.pullTimeoutMs);
      this.docker.modem.followProgress(stream, (err: Error | null, out: unknown[]) => {
        clearTimeout(timer);
        if (err) reject(new ImagePullError(ref, errorText(err), { cause: err }));
        else resolve(out as Array<{ error?: string; errorDetail?: { message?: string } }>);
      });
    });
    // The daemon reports pull failures inside a stream that still ends with HTTP 200.
    const bad = events.find((e) => e.error || e.errorDetail);
    if (bad) throw new ImagePullError(ref, bad.errorDetail?.message ?? bad.error ?? 'the daemon reported an error');
    if (!(await this.imageExists(ref))) throw new ImagePullError(ref, 'the pull finished but the image is still absent');
  }

  async run(spec: ContainerRunSpec, observer: ContainerRunObserver = {}, signal?: AbortSignal): Promise<ContainerRunResult> {
    validateRunSpec(spec);
    assertNoSecrets(spec.env);
    const startedAt = Date.now();
    const tail = new RingBuffer<string>(this.options.lastLines);
    const grace = spec.stopGraceSeconds ?? DEFAULT_STOP_GRACE_SECONDS;
    const isProgress = spec.isProgressLine ?? (() => true);

    let container: Dockerode.Container | undefined;
    let started = false;
    // A holder object, because closures (timers, abort) set it and TS would otherwise narrow it to null.
    const stop: { reason: StopReason | null } = { reason: null };
    const stopped = (): StopReason | null => stop.reason;
    let stopping: Promise<void> | undefined;
    let attachStream: NodeJS.ReadableStream | undefined;
    let logFile: LogFile | undefined;
    let lastProgressAt = Date.now();
    const timers: NodeJS.Timeout[] = [];

    const result = (failureClass: ContainerFailureKind | null, failureMessage: string | undefined, exitCode: number | null = null, oomKilled = false): ContainerRunResult => ({
      containerId: container?.id ?? '',
      exitCode,
      oomKilled,
      failureClass,
      ...(failureMessage !== undefined ? { failureMessage } : {}),
      durationMs: Date.now() - startedAt,
      logFilePath: spec.logFilePath,
      lastLines: tail.toArray(),
      ...(logFile?.error ? { logFileError: `writing ${spec.logFilePath} failed: ${logFile.error.message}` } : {}),
    });

    const requestStop = (reason: StopReason): void => {
      if (stop.reason) return;
      stop.reason = reason;
      if (container && started) stopping = this.stopContainer(container, grace);
    };
    const onAbort = (): void => requestStop(STOP_REASONS.cancelled());

    const deliver = (line: string, stream: LogStreamName): void => {
      tail.push(line);
      try {
        if (isProgress(line, stream)) lastProgressAt = Date.now();
      } catch {
        // A faulty matcher must not break log streaming.
      }
      try {
        observer.onLine?.(line, stream);
      } catch {
        // Observers must not throw; if one does, streaming goes on.
      }
    };
    const splitters = {
      stdout: new LineSplitter((l) => deliver(l, 'stdout'), this.options.maxLineBytes),
      stderr: new LineSplitter((l) => deliver(l, 'stderr'), this.options.maxLineBytes),
    };

    try {
      if (signal?.aborted) return result('cancelled', 'cancelled before the container was created');
      signal?.addEventListener('abort', onAbort, { once: true });

      try {
        logFile = await LogFile.open(spec.logFilePath);
      } catch (err) {
        return result('infrastructure', `could not open the log file ${spec.logFilePath}: ${errorText(err)}`);
      }
      const log = logFile;

      try {
        container = await this.docker.createContainer(buildContainerCreateOptions(spec));
      } catch (err) {
        const hint = statusCode(err) === 404 ? ' (is the image present? call ensureImage first)' : '';
        return result('infrastructure', `could not create the container from ${spec.image}: ${errorText(err)}${hint}`);
      }
      this.active.add(container.id);

      let piping: Promise<void>;
      try {
        // Attach before start, so no early output is lost.
        attachStream = (await container.attach({ stream: true, stdout: true, stderr: true })) as NodeJS.ReadableStream;
        const demuxer = new DockerStreamDemuxer({
          write: (payload, stream) => {
            splitters[stream].push(payload);
            return log.write(payload);
          },
          drained: () => log.drained(),
        });
        piping = pipeline(attachStream, demuxer);
        piping.catch(() => undefined);
      } catch (err) {
        return result('infrastructure', `could not attach to container ${container.id}: ${errorText(err)}`);
      }

      const early = stopped();
      if (early) return result(early.cls, 'cancelled before the container started');
      try {
        await container.start();
        started = true;
      } catch (err) {
        return result('infrastructure', `could not start container ${container.id}: ${errorText(err)}`);
      }
      lastProgressAt = Date.now();
      try {
        observer.onStarted?.(container.id);
      } catch {
        // see deliver()
      }
      if (stopped()) stopping = this.stopContainer(container, grace);

      timers.push(
        setTimeout(
          () => requestStop(STOP_REASONS.timeout(spec.deadlineMs)),
          spec.deadlineMs,
        ),
      );
      const stallTick = Math.max(50, Math.min(1000, Math.floor(spec.stallTimeoutMs / 5)));
      timers.push(
        setInterval(() => {
          if (Date.now() - lastProgressAt >= spec.stallTimeoutMs) {
            requestStop(STOP_REASONS.stall(spec.stallTimeoutMs));
          }
        }, stallTick),
      );

      let waitStatus: number | null = null;
      try {
        const waited = (await container.wait({ condition: 'not-running' })) as { StatusCode?: number };
        waitStatus = typeof waited?.StatusCode === 'number' ? waited.StatusCode : null;
      } catch (err) {
        return result(stopped()?.cls ?? 'infrastructure', `lost track of container ${container.id}: ${errorText(err)}`);
      } finally {
        for (const t of timers) clearTimeout(t);
      }

      // Let the last output drain into the file and the observers.
      const drainedInTime = await Promise.race([
        piping.then(() => true, () => true),
        new Promise<boolean>((r) => timers.push(setTimeout(() => r(false), this.options.streamEndTimeoutMs))),
      ]);
      if (!drainedInTime) (attachStream as unknown as { destroy?: () => void }).destroy?.();
      splitters.stdout.flush();
      splitters.stderr.flush();

      let exitCode = waitStatus;
      let oomKilled = false;
      try {
        const info = await container.inspect();
        exitCode = info.State.ExitCode ?? exitCode;
        oomKilled = info.State.OOMKilled === true;
      } catch (err) {
        if (exitCode === null) return result('infrastructure', `could not inspect container ${container.id}: ${errorText(err)}`);
      }

      const outcome = classifyExit(stopped(), exitCode, oomKilled, spec.memoryBytes);
      return result(outcome.failureClass, outcome.failureMessage, outcome.exitCode, outcome.oomKilled);
    } finally {
      for (const t of timers) clearTimeout(t);
      signal?.removeEventListener('abort', onAbort);
      if (stopping) await stopping.catch(() => undefined);
      (attachStream as unknown as { destroy?: () => void } | undefined)?.destroy?.();
      if (container) {
        await this.removeContainer(container);
        this.active.delete(container.id);
      }
      if (logFile) await logFile.close();
    }
  }

  async sweepOrphans(isOwned: (labels: Record<string, string>) => Promise<boolean>): Promise<string[]> {
    const listed = await this.docker.listContainers({ all: true, filters: { label: [MANAGED_LABEL_FILTER] } });
    const removed: string[] = [];
    for (const info of listed) {
      if (this.active.has(info.Id)) continue;
      let owned: boolean;
      try {
        owned = await isOwned(info.Labels ?? {});
      } catch {
        // When ownership cannot be decided, keep the container: a later sweep retries.
        continue;
      }
      if (owned) continue;
      if (await this.removeContainer(this.docker.getContainer(info.Id))) removed.push(info.Id);
    }
    return removed;
  }

  private async imageExists(ref: string): Promise<boolean> {
    try {
      await this.docker.getImage(ref).inspect();
      return true;
    } catch (err) {
      if (statusCode(err) === 404) return false;
      throw new Error(`Could not check whether image "${ref}" is present: ${errorText(err)}. Is the Docker engine reachable?`, { cause: err });
    }
  }

  /** SIGTERM, `grace` seconds, then SIGKILL (the engine's stop does both); a direct kill if stop fails. */
  private async stopContainer(container: Dockerode.Container, grace: number): Promise<void> {
    try {
      await container.stop({ t: grace });
    } catch (err) {
      const code = statusCode(err);
      if (code === 304 || code === 404) return; // already stopped / already gone
      try {
        await container.kill({ signal: 'SIGKILL' });
      } catch {
        // The forced remove in `finally` kills it anyway.
      }
    }
  }

  /** Forced removal (kills if running), volumes included. True when removed or already gone. */
  private async removeContainer(container: Dockerode.Container): Promise<boolean> {
    for (let attempt = 0; attempt < 3; attempt++) {
      try {
        await container.remove({ force: true, v: true });
        return true;
      } catch (err) {
        const code = statusCode(err);
        if (code === 404) return true;
        // 409: removal already in progress; give the engine a moment.
        await new Promise((r) => setTimeout(r, 250 * (attempt + 1)));
      }
    }
    return false;
  }
}
