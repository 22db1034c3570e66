import { randomBytes } from 'node:crypto';
import { mkdir, open, type FileHandle } from 'node:fs/promises';
import * as path from 'node:path';
import type {
  ContainerRunObserver,
  ContainerRunResult,
  ContainerRunSpec,
  ContainerRuntime,
  ContainerFailureKind,
  LogStreamName,
  RegistryAuth,
} from '../container-runtime';
import { containerLabels, validateRunSpec } from '../container-spec';
import { DEFAULT_DOCKER_RUNTIME_OPTIONS, ImagePullError } from '../docker-container-runtime';
import { assertNoSecrets } from '../env-guard';
import { LineSplitter, RingBuffer } from '../log-stream';
import { classifyExit, STOP_REASONS, type StopReason } from '../run-outcome';

/** One output line of a scripted container. */
export interface FakeLine {
  text: string;
  /** @default 'stdout' */
  stream?: LogStreamName;
  /** Wait this long before printing the line (a stop cuts the wait short). @default 0 */
  delayMs?: number;
}

/** How a scripted container ends once its lines are printed. */
export type FakeEnd =
  /** The process exits on its own with this code. */
  | { exit: number }
  /** The kernel kills it for memory: exit code 137 and `OOMKilled`. */
  | { oom: true }
  /**
   * It runs until the runtime stops it (deadline, stall or cancel). On the
   * stop's SIGTERM it exits with `onSigterm`, or, with 'ignore', is killed
   * (137) after the grace period.
   * @default onSigterm 143 (a process that keeps the default SIGTERM action)
   */
  | { hang: true; onSigterm?: number | 'ignore' };

/** What one scripted container does, in the order it does it. */
export interface FakeContainerScript {
  /** Side effects of the container once started, before its lines (e.g. write a LoRA into the output mount). */
  effect?: (spec: ContainerRunSpec) => void | Promise<void>;
  lines?: FakeLine[];
  /** @default { exit: 0 } */
  end?: FakeEnd;
  /** The engine refuses to create the container (e.g. no nvidia runtime): the run reports 'infrastructure' with this reason. */
  failToCreate?: string;
}

/** A script, or a function of the run's spec that returns one. */
export type FakeScriptSource = FakeContainerScript | ((spec: ContainerRunSpec) => FakeContainerScript);

/**
 * Options of the fake. Every field is optional.
 */
export interface FakeContainerRuntimeOptions {
  /**
   * Images present on the fake engine. A run of another image is
   * 'infrastructure' (as with a real engine that lacks it); `ensureImage`
   * of another image "pulls" it when it is in `pullableImages`, else fails
   * with `ImagePullError`.
   * @default every image is present
   */
  presentImages?: readonly string[];
  /** Images a pull can fetch. @default none */
  pullableImages?: readonly string[];
  /** Lines kept for `lastLines`. @default 50 (as DockerContainerRuntime) */
  lastLines?: number;
  /** Longest line handed to observers. @default 8192 (as DockerContainerRuntime) */
  maxLineBytes?: number;
}

/** One finished `run()`, as the fake saw it. */
export interface FakeRunRecord {
  spec: ContainerRunSpec;
  result: ContainerRunResult;
}

/** A container that exists on the fake engine. */
export interface FakeContainer {
  id: string;
  labels: Record<string, string>;
  /** True while a `run()` of this process owns it. */
  running: boolean;
}

/**
 * An in-memory `ContainerRuntime` for unit tests of code that runs
 * containers. Each `run()` plays a script (output lines on both streams,
 * then an exit code, an OOM kill, or a hang) and applies the real runtime's
 * rules to it: the same spec validation and secret guard, the same labels,
 * line splitting, `lastLines`, log file, overall and stall deadlines, cancel
 * through the `AbortSignal`, classification and removal after the run. The
 * conformance suite (`describeContainerRuntimeConformance`) runs the same
 * assertions against this fake and the real `DockerContainerRuntime`.
 *
 * What it does not model: real processes, time spent in the stop grace
 * period (a stop takes effect at once), memory limits (OOM is scripted).
 */
export class FakeContainerRuntime implements ContainerRuntime {
  private readonly queued: FakeScriptSource[] = [];
  private readonly rules: Array<{ when: (spec: ContainerRunSpec) => boolean; script: FakeScriptSource }> = [];
  private readonly present: Set<string> | null;
  private readonly pullable: Set<string>;
  private readonly lastLines: number;
  private readonly maxLineBytes: number;
  private readonly existing = new Map<string, FakeContainer>();
  private readonly finished: FakeRunRecord[] = [];
  private readonly pulled: Array<{ ref: string; serveraddress?: string }> = [];

  constructor(options: FakeContainerRuntimeOptions = {}) {
    this.present = options.presentImages ? new Set(options.presentImages) : null;
    this.pullable = new Set(options.pullableImages ?? []);
    this.lastLines = options.lastLines ?? DEFAULT_DOCKER_RUNTIME_OPTIONS.lastLines;
    this.maxLineBytes = options.maxLineBytes ?? DEFAULT_DOCKER_RUNTIME_OPTIONS.maxLineBytes;
  }

  /** The next runs play these scripts, one each, in order (before any `whenRun` rule). */
  enqueue(...scripts: FakeScriptSource[]): this {
    this.queued.push(...scripts);
    return this;
  }

  /**
   * Every run whose spec matches plays this script (when nothing is queued).
   * Later rules win over earlier ones. Without any: exit 0, no output.
   */
  whenRun(when: (spec: ContainerRunSpec) => boolean, script: FakeScriptSource): this {
    this.rules.unshift({ when, script });
    return this;
  }

  /** Every finished run, oldest first. */
  get runs(): readonly FakeRunRecord[] {
    return [...this.finished];
  }

  /** Images fetched by `ensureImage`, with the registry address of the credentials used (never the password). */
  get pulls(): ReadonlyArray<{ ref: string; serveraddress?: string }> {
    return [...this.pulled];
  }

  /** Containers that exist now (a finished run leaves none). */
  containers(): FakeContainer[] {
    return [...this.existing.values()].map((c) => ({ ...c, labels: { ...c.labels } }));
  }

  /**
   * Leaves a managed container as a worker that crashed mid-run would: it
   * exists, belongs to no run of this process, and carries the run labels.
   * Returns its id.
   */
  plantContainer(labels: ContainerRunSpec['labels']): string {
    const id = randomBytes(32).toString('hex');
    const spec = { labels } as ContainerRunSpec;
    this.existing.set(id, { id, labels: containerLabels(spec), running: false });
    return id;
  }

  async ensureImage(ref: string, auth?: RegistryAuth): Promise<void> {
    if (this.hasImage(ref)) return;
    if (!this.pullable.has(ref)) {
      throw new ImagePullError(ref, `the fake registry has no image "${ref}" (pass it in pullableImages)`);
    }
    this.pulled.push({ ref, ...(auth ? { serveraddress: auth.serveraddress } : {}) });
    this.present?.add(ref);
  }

  async run(spec: ContainerRunSpec, observer: ContainerRunObserver = {}, signal?: AbortSignal): Promise<ContainerRunResult> {
    validateRunSpec(spec);
    assertNoSecrets(spec.env);
    const result = await this.play(spec, observer, signal);
    this.finished.push({ spec, result });
    return result;
  }

  async sweepOrphans(isOwned: (labels: Record<string, string>) => Promise<boolean>): Promise<string[]> {
    const removed: string[] = [];
    for (const c of [...this.existing.values()]) {
      if (c.running) continue;
      let owned: boolean;
      try {
        owned = await isOwned({ ...c.labels });
      } catch {
        continue; // undecided: kept, as the real runtime does
      }
      if (owned) continue;
      this.existing.delete(c.id);
      removed.push(c.id);
    }
    return removed;
  }

  private hasImage(ref: string): boolean {
    return this.present === null || this.present.has(ref);
  }

  private scriptFor(spec: ContainerRunSpec): FakeContainerScript {
    const source = this.queued.shift() ?? this.rules.find((r) => r.when(spec))?.script ?? {};
    return typeof source === 'function' ? source(spec) : source;
  }

  private async play(spec: ContainerRunSpec, observer: ContainerRunObserver, signal?: AbortSignal): Promise<ContainerRunResult> {
    const startedAt = Date.now();
    const tail = new RingBuffer<string>(this.lastLines);
    let containerId = '';
    let logFile: FileHandle | undefined;
    let logFileError: string | undefined;
    const result = (
      outcome: Pick<ContainerRunResult, 'failureClass' | 'failureMessage'> & Partial<Pick<ContainerRunResult, 'exitCode' | 'oomKilled'>>,
    ): ContainerRunResult => ({
      containerId,
      exitCode: outcome.exitCode ?? null,
      oomKilled: outcome.oomKilled ?? false,
      failureClass: outcome.failureClass,
      ...(outcome.failureMessage !== undefined ? { failureMessage: outcome.failureMessage } : {}),
      durationMs: Date.now() - startedAt,
      logFilePath: spec.logFilePath,
      lastLines: tail.toArray(),
      ...(logFileError ? { logFileError } : {}),
    });
    const fail = (failureClass: ContainerFailureKind, failureMessage: string) => result({ failureClass, failureMessage });

    if (signal?.aborted) return fail('cancelled', 'cancelled before the container was created');
    const script = this.scriptFor(spec);
    try {
      await mkdir(path.dirname(spec.logFilePath), { recursive: true });
      logFile = await open(spec.logFilePath, 'a');
    } catch (err) {
      return fail('infrastructure', `could not open the log file ${spec.logFilePath}: ${(err as Error).message}`);
    }

    // Stops are requested by the deadline, the stall timer and the signal; the first one wins.
    // A holder object, because closures set it and TS would otherwise narrow it to null.
    const stop: { reason: StopReason | null; wake: () => void } = { reason: null, wake: () => undefined };
    const stoppedNow = new Promise<void>((resolve) => (stop.wake = resolve));
    const requestStop = (reason: StopReason): void => {
      if (stop.reason) return;
      stop.reason = reason;
      stop.wake();
    };
    const onAbort = (): void => requestStop(STOP_REASONS.cancelled());
    const timers: NodeJS.Timeout[] = [];
    let stallTimer: NodeJS.Timeout | undefined;
    const armStall = (): void => {
      if (stallTimer) clearTimeout(stallTimer);
      stallTimer = setTimeout(() => requestStop(STOP_REASONS.stall(spec.stallTimeoutMs)), spec.stallTimeoutMs);
    };
    const isProgress = spec.isProgressLine ?? (() => true);
    const deliver = (line: string, stream: LogStreamName): void => {
      tail.push(line);
      try {
        if (isProgress(line, stream)) armStall();
      } catch {
        // A faulty matcher must not break log streaming (as in the real runtime).
      }
      try {
        observer.onLine?.(line, stream);
      } catch {
        // Observers must not throw; if one does, streaming goes on.
      }
    };
    const splitters = {
      stdout: new LineSplitter((l) => deliver(l, 'stdout'), this.maxLineBytes),
      stderr: new LineSplitter((l) => deliver(l, 'stderr'), this.maxLineBytes),
    };

    try {
      signal?.addEventListener('abort', onAbort, { once: true });
      if (!this.hasImage(spec.image)) {
        return fail('infrastructure', `could not create the container from ${spec.image}: No such image: ${spec.image} (is the image present? call ensureImage first)`);
      }
      if (script.failToCreate !== undefined) {
        return fail('infrastructure', `could not create the container from ${spec.image}: ${script.failToCreate}`);
      }
      containerId = randomBytes(32).toString('hex');
      this.existing.set(containerId, { id: containerId, labels: containerLabels(spec), running: true });
      if (stop.reason) return fail(stop.reason.cls, 'cancelled before the container started');

      try {
        observer.onStarted?.(containerId);
      } catch {
        // see deliver()
      }
      timers.push(setTimeout(() => requestStop(STOP_REASONS.timeout(spec.deadlineMs)), spec.deadlineMs));
      armStall();
      await script.effect?.(spec);

      for (const line of script.lines ?? []) {
        if (stop.reason) break;
        if (line.delayMs) {
          await Promise.race([stoppedNow, new Promise<void>((r) => timers.push(setTimeout(r, line.delayMs)))]);
          if (stop.reason) break;
        }
        const bytes = Buffer.from(`${line.text}\n`);
        try {
          await logFile.write(bytes);
        } catch (err) {
          logFileError ??= `writing ${spec.logFilePath} failed: ${(err as Error).message}`;
        }
        splitters[line.stream ?? 'stdout'].push(bytes);
      }

      const end: FakeEnd = script.end ?? { exit: 0 };
      let exitCode: number;
      let oomKilled = false;
      if (!stop.reason && 'exit' in end) {
        exitCode = end.exit;
      } else if (!stop.reason && 'oom' in end) {
        exitCode = 137;
        oomKilled = true;
      } else {
        if (!stop.reason) await stoppedNow; // a hang lasts until a stop
        const onSigterm = 'hang' in end ? (end.onSigterm ?? 143) : 143;
        exitCode = onSigterm === 'ignore' ? 137 : onSigterm;
      }
      splitters.stdout.flush();
      splitters.stderr.flush();
      return result(classifyExit(stop.reason, exitCode, oomKilled, spec.memoryBytes));
    } finally {
      for (const t of timers) clearTimeout(t);
      if (stallTimer) clearTimeout(stallTimer);
      signal?.removeEventListener('abort', onAbort);
      if (containerId) this.existing.delete(containerId);
      await logFile.close().catch(() => undefined);
    }
  }
}
