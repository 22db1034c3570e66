/**
 * Image build and push through dockerode, with the two traps of the Engine
 * API handled: build and push failures arrive as `error`/`errorDetail` lines
 * inside an HTTP 200 stream, and a stream may never end (so every call has a
 * timeout that aborts the request, which also cancels the build daemon-side).
 */
import { existsSync, readdirSync, readFileSync } from 'node:fs';
import { join, relative, sep } from 'node:path';
import type { Readable } from 'node:stream';
import type Docker from 'dockerode';
import ignore from '@balena/dockerignore';
import * as tar from 'tar-fs';

/** One JSON line of a build, pull or push stream. */
export interface DockerStreamEvent {
  stream?: string;
  status?: string;
  id?: string;
  progress?: string;
  progressDetail?: { current?: number; total?: number };
  error?: string;
  errorDetail?: { code?: number; message?: string };
  aux?: { ID?: string; Tag?: string; Digest?: string; Size?: number };
  /** A line that was not JSON, kept verbatim. */
  raw?: string;
}

/** Registry credentials as the Engine API wants them in X-Registry-Auth. */
export interface RegistryAuth {
  username?: string;
  password?: string;
  identitytoken?: string;
  serveraddress: string;
}

/** Always sent, whatever .dockerignore says (as `docker build` does). */
const ALWAYS_SENT = new Set(['Dockerfile', '.dockerignore']);

/**
 * The '/'-separated context paths `docker build` would send: every path the
 * .dockerignore rules keep (Docker's own matcher, moby's rules: parents match,
 * the last match wins, '!' re-includes), plus the folders above a kept path.
 * An excluded folder is walked only when the rules have '!' exceptions, and is
 * sent only when it holds a re-included path.
 */
export function buildContextPaths(contextDir: string): Set<string> {
  const ignoreFile = join(contextDir, '.dockerignore');
  const text = existsSync(ignoreFile) ? readFileSync(ignoreFile, 'utf8') : '';
  const rules = ignore().add(text);
  const hasExceptions = text.split(/\r?\n/).some((line) => line.trim().startsWith('!'));
  const kept = new Set<string>();
  const walk = (dirRel: string): void => {
    for (const entry of readdirSync(join(contextDir, dirRel), { withFileTypes: true })) {
      const rel = dirRel === '' ? entry.name : `${dirRel}/${entry.name}`;
      const excluded = !(dirRel === '' && ALWAYS_SENT.has(rel)) && rules.ignores(rel);
      if (!entry.isDirectory()) {
        if (!excluded) kept.add(rel);
      } else if (!excluded) {
        kept.add(rel);
        walk(rel);
      } else if (hasExceptions) {
        const before = kept.size;
        walk(rel);
        if (kept.size > before) kept.add(rel);
      }
    }
  };
  walk('');
  return kept;
}

/**
 * Packs a build context folder the way the Docker CLI does: .dockerignore
 * applied (see `buildContextPaths`), entries sorted, owners and mtimes
 * normalised so the same files give the same archive.
 */
export function packBuildContext(contextDir: string): Readable {
  const kept = buildContextPaths(contextDir);
  // `sort` exists in tar-fs 3 but not in @types/tar-fs 2, hence the cast below.
  const options = {
    sort: true,
    ignore: (absPath: string) => {
      const rel = relative(contextDir, absPath).split(sep).join('/');
      return rel !== '' && !kept.has(rel);
    },
    map: (header: tar.Headers) => {
      const h = header as tar.Headers & { uname?: string; gname?: string };
      h.mtime = new Date(0);
      h.uid = 0;
      h.gid = 0;
      h.uname = '';
      h.gname = '';
      return h;
    },
  };
  return tar.pack(contextDir, options as tar.PackOptions);
}

/** Message of the first error line of a stream, or undefined when it has none. */
export function streamError(events: DockerStreamEvent[]): string | undefined {
  const bad = events.find((e) => e.error || e.errorDetail);
  return bad ? (bad.errorDetail?.message ?? bad.error ?? 'unknown error') : undefined;
}

/**
 * Reads a JSON-lines stream to its end. Non-JSON lines are kept as `raw`
 * instead of throwing (docker-modem's followProgress throws from inside a
 * 'data' handler on such a line).
 */
export function readEventStream(stream: Readable, onEvent: (e: DockerStreamEvent) => void): Promise<DockerStreamEvent[]> {
  return new Promise((resolve, reject) => {
    const events: DockerStreamEvent[] = [];
    let buf = '';
    let done = false;
    const take = (line: string) => {
      const text = line.replace(/\r$/, '');
      if (text.trim() === '') return;
      let ev: DockerStreamEvent;
      try {
        ev = JSON.parse(text) as DockerStreamEvent;
      } catch {
        ev = { raw: text };
      }
      events.push(ev);
      onEvent(ev);
    };
    stream.on('data', (chunk: Buffer | string) => {
      buf += chunk.toString();
      let nl: number;
      while ((nl = buf.indexOf('\n')) >= 0) {
        take(buf.slice(0, nl));
        buf = buf.slice(nl + 1);
      }
    });
    const finish = () => {
      if (done) return;
      done = true;
      take(buf);
      resolve(events);
    };
    stream.on('end', finish);
    stream.on('close', finish);
    stream.on('error', (err) => {
      if (done) return;
      done = true;
      reject(err);
    });
  });
}

/** Runs `work` with an AbortSignal that fires after `timeoutMs`; the timeout error names `what`. */
async function withTimeout<T>(what: string, timeoutMs: number, work: (signal: AbortSignal) => Promise<T>): Promise<T> {
  const controller = new AbortController();
  let timedOut = false;
  const timer = setTimeout(() => {
    timedOut = true;
    controller.abort();
  }, timeoutMs);
  try {
    return await work(controller.signal);
  } catch (err) {
    if (timedOut) {
      throw new Error(`${what} did not finish within ${Math.round(timeoutMs / 1000)} s and was aborted; raise --timeout or check the Docker engine`, { cause: err });
    }
    throw err;
  } finally {
    clearTimeout(timer);
  }
}

export interface BuildImageOptions {
  /** Full references to tag the result with, e.g. '127.0.0.1:5000/stationthis/sdxl-kohya:1.0.0'. */
  tags: string[];
  /** @default {} */
  buildArgs?: Record<string, string>;
  timeoutMs: number;
  /** Build without the layer cache. @default false */
  nocache?: boolean;
  /** Credentials for pulling private base images (X-Registry-Config). */
  registryConfig?: Record<string, { username?: string; password?: string; identitytoken?: string }>;
  onEvent?: (e: DockerStreamEvent) => void;
}

export interface BuildImageResult {
  imageId: string;
  durationMs: number;
  /** Dockerfile steps the builder ran / took from cache (classic builder output). */
  totalSteps: number;
  cachedSteps: number;
  /** Each step's instruction and whether it came from the cache (classic builder output). */
  steps: Array<{ instruction: string; cached: boolean }>;
  events: DockerStreamEvent[];
}

/** Builds one context folder. Rejects on any error line in the stream, on HTTP errors and on timeout. */
export async function buildImage(docker: Docker, contextDir: string, options: BuildImageOptions): Promise<BuildImageResult> {
  const started = Date.now();
  const [firstTag, ...otherTags] = options.tags;
  if (!firstTag) throw new Error('buildImage needs at least one tag');
  const events = await withTimeout(`Build of ${contextDir}`, options.timeoutMs, async (signal) => {
    const stream = (await docker.buildImage(packBuildContext(contextDir), {
      t: firstTag,
      buildargs: options.buildArgs ?? {},
      nocache: options.nocache ?? false,
      rm: true,
      forcerm: true,
      ...(options.registryConfig ? { registryconfig: options.registryConfig } : {}),
      abortSignal: signal,
    } as Docker.ImageBuildOptions)) as unknown as Readable;
    return readEventStream(stream, options.onEvent ?? (() => undefined));
  });
  const failure = streamError(events);
  if (failure) throw new Error(`Build of ${contextDir} failed: ${failure.trim()}`);
  // The tag the daemon applied is the authority: a multi-stage build reports one aux.ID per stage.
  const imageId = (await docker.getImage(firstTag).inspect()).Id;
  for (const ref of otherTags) await tagImage(docker, imageId, ref);
  const steps = parseBuildSteps(events.map((e) => e.stream ?? '').join(''));
  return {
    imageId,
    durationMs: Date.now() - started,
    totalSteps: steps.length,
    cachedSteps: steps.filter((s) => s.cached).length,
    steps,
    events,
  };
}

/** Steps of a classic-builder log ('Step 3/9 : RUN …' … ' ---> Using cache'). */
export function parseBuildSteps(log: string): Array<{ instruction: string; cached: boolean }> {
  const parts = log.split(/^Step \d+\/\d+ : /m).slice(1);
  return parts.map((part) => {
    const nl = part.indexOf('\n');
    return { instruction: (nl >= 0 ? part.slice(0, nl) : part).trim(), cached: part.includes('---> Using cache') };
  });
}

/** Splits 'host:port/ns/name:tag' into repo and tag (the tag after the last ':' past the last '/'). */
export function splitReference(ref: string): { repo: string; tag: string } {
  const colon = ref.lastIndexOf(':');
  if (colon <= ref.lastIndexOf('/')) throw new Error(`Image reference '${ref}' has no tag`);
  return { repo: ref.slice(0, colon), tag: ref.slice(colon + 1) };
}

export async function tagImage(docker: Docker, imageId: string, ref: string): Promise<void> {
  const { repo, tag } = splitReference(ref);
  await docker.getImage(imageId).tag({ repo, tag });
}

export interface PushResult {
  /** Manifest digest the registry stored, 'sha256:…'. */
  digest: string;
  durationMs: number;
}

/** Pushes one tag. Rejects on error lines (a denied push still answers HTTP 200), on timeout, or without a digest. */
export async function pushImage(
  docker: Docker,
  ref: string,
  auth: RegistryAuth | undefined,
  timeoutMs: number,
  onEvent?: (e: DockerStreamEvent) => void,
): Promise<PushResult> {
  const started = Date.now();
  const { repo, tag } = splitReference(ref);
  const events = await withTimeout(`Push of ${ref}`, timeoutMs, async (signal) => {
    // An empty auth object still sends X-Registry-Auth, which some engines require.
    const stream = (await docker.getImage(repo).push({ tag, authconfig: auth ?? {}, abortSignal: signal } as never)) as unknown as Readable;
    return readEventStream(stream, onEvent ?? (() => undefined));
  });
  const failure = streamError(events);
  if (failure) throw new Error(`Push of ${ref} failed: ${failure.trim()}. Check the registry address and REGISTRY_USERNAME/REGISTRY_PASSWORD or ~/.docker/config.json`);
  const fromAux = events.map((e) => e.aux?.Digest).find((d): d is string => typeof d === 'string');
  const fromStatus = events
    .map((e) => /digest: (sha256:[0-9a-f]{64})/.exec(e.status ?? '')?.[1])
    .find((d): d is string => typeof d === 'string');
  const digest = fromAux ?? fromStatus;
  if (!digest) throw new Error(`Push of ${ref} ended without reporting a digest; the registry may have dropped the upload`);
  return { digest, durationMs: Date.now() - started };
}
