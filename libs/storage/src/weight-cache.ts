/**
 * Base-model weight cache on the worker host.
 *
 * Layout under config.weightCacheDir:
 *   files/<fileName>            complete, verified weight files
 *   files/<fileName>.partial    an interrupted or running download (resumable)
 *   meta/<fileName>.json        the integrity marker {sha256, bytes, source}; mtime = last use
 *   locks/<fileName>.lock       per-file lock (download, verify, evict)
 *   leases/<fileName>/*.lease   one per acquire() not yet released, with the pid
 *
 * A file is fetched once per host: concurrent acquires (threads or processes)
 * serialise on the per-file lock and all but the first find the marker. The
 * sha256 is checked once, after the download; later acquires trust the
 * marker (plus a size check). Eviction removes least-recently-used files
 * while the total is over budget, skipping any file with a live lease.
 */
import { createHash } from 'node:crypto';
import { createReadStream, createWriteStream, promises as fsp } from 'node:fs';
import * as path from 'node:path';
import { Readable, Transform } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { inject, injectable } from 'tsyringe';
import { STORAGE_CONFIG, type R2Config } from './config';
import { StorageError, redactUrl } from './errors';
import { createLease, liveLeases, lockFile, tryLockFile, type LockOptions } from './file-lock';
import { ObjectStorage } from './object-storage';
import { withRetries } from './retry';
import type { AcquireOptions, WeightCachePort, WeightLease, WeightSource, WeightSpec } from './weight-cache.port';
import { WEIGHT_CACHE_OPTIONS, resolveWeightCacheOptions, validateWeightSpec, type WeightCacheOptions } from './weight-spec';

interface Marker {
  fileName: string;
  sha256: string;
  bytes: number;
  source: string;
  verifiedAt: string;
}

export interface CacheEntry {
  fileName: string;
  bytes: number;
  lastUsedMs: number;
  inUse: boolean;
  complete: boolean;
}

function sourceId(s: WeightSource): string {
  if (s.kind === 'r2') return `r2:${s.bucketAlias}/${s.key}`;
  return s.kind === 'local' ? `local:${s.path}` : `https:${redactUrl(s.url)}`;
}

export async function sha256File(p: string, onBytes?: (n: number) => void): Promise<{ sha256: string; bytes: number }> {
  const h = createHash('sha256');
  let bytes = 0;
  for await (const chunk of createReadStream(p, { highWaterMark: 4 * 1024 * 1024 })) {
    h.update(chunk as Buffer);
    bytes += (chunk as Buffer).length;
    onBytes?.(bytes);
  }
  return { sha256: h.digest('hex'), bytes };
}

@injectable()
export class WeightCache implements WeightCachePort {
  readonly dir: string;
  private readonly options: Readonly<WeightCacheOptions>;
  private readonly lockOptions: LockOptions;

  constructor(
    @inject(STORAGE_CONFIG) private readonly config: R2Config,
    @inject(ObjectStorage) private readonly storage: ObjectStorage,
    @inject(WEIGHT_CACHE_OPTIONS) options: Partial<WeightCacheOptions> = {},
  ) {
    this.dir = config.weightCacheDir;
    this.options = resolveWeightCacheOptions(options);
    this.lockOptions = { staleMs: this.options.lockStaleMs, pollMs: this.options.lockPollMs };
  }

  private p(kind: 'files' | 'meta' | 'locks' | 'leases', name: string): string {
    const suffix = kind === 'meta' ? '.json' : kind === 'locks' ? '.lock' : '';
    return path.join(this.dir, kind, `${name}${suffix}`);
  }

  async acquire(spec: WeightSpec, opts: AcquireOptions = {}): Promise<WeightLease> {
    validateWeightSpec(spec);
    await Promise.all(['files', 'meta', 'locks', 'leases'].map((d) => fsp.mkdir(path.join(this.dir, d), { recursive: true })));
    const lock = await lockFile(this.p('locks', spec.fileName), { ...this.lockOptions, signal: opts.signal });
    let downloaded = false;
    let lease;
    try {
      const file = this.p('files', spec.fileName);
      const marker = await this.readMarker(spec.fileName);
      const size = await fsp.stat(file).then((s) => s.size, () => -1);
      const valid =
        marker !== null &&
        size === marker.bytes &&
        marker.source === sourceId(spec.source) &&
        (!spec.sha256 || marker.sha256 === spec.sha256.toLowerCase());
      if (!valid) {
        if (size >= 0 && (await liveLeases(this.p('leases', spec.fileName))) > 0) {
          throw new StorageError(
            'invalid-argument',
            `Weight ${spec.fileName} is in use by another job with a different source or hash (${marker?.source ?? 'unverified'}); it cannot be replaced now. Give different weights different file names.`,
          );
        }
        await fsp.rm(this.p('meta', spec.fileName), { force: true });
        await fsp.rm(file, { force: true });
        await this.evict({ reserveBytes: spec.bytes ?? 0, skip: spec.fileName });
        await this.download(spec, opts);
        downloaded = true;
      }
      const now = new Date();
      await fsp.utimes(this.p('meta', spec.fileName), now, now);
      lease = await createLease(this.p('leases', spec.fileName));
    } finally {
      await lock.release();
    }
    if (downloaded) await this.evict({ skip: spec.fileName }).catch(() => undefined);
    const metaPath = this.p('meta', spec.fileName);
    const l = lease;
    return {
      path: this.p('files', spec.fileName),
      downloaded,
      async release() {
        const now = new Date();
        await fsp.utimes(metaPath, now, now).catch(() => undefined);
        await l.release();
      },
    };
  }

  private async readMarker(fileName: string): Promise<Marker | null> {
    try {
      return JSON.parse(await fsp.readFile(this.p('meta', fileName), 'utf8')) as Marker;
    } catch {
      return null;
    }
  }

  /** Downloads into .partial (resuming), verifies, then moves into place and writes the marker. Caller holds the lock. */
  private async download(spec: WeightSpec, opts: AcquireOptions): Promise<void> {
    const file = this.p('files', spec.fileName);
    const partial = `${file}.partial`;
    const partialInfo = `${partial}.json`;
    const src = sourceId(spec.source);
    // Only resume a partial of the same source (and same ETag for R2).
    const info = await fsp.readFile(partialInfo, 'utf8').then((s) => JSON.parse(s) as { source: string; etag?: string }, () => null);
    if (!info || info.source !== src) {
      await fsp.rm(partial, { force: true });
      await fsp.writeFile(partialInfo, JSON.stringify({ source: src }));
    }
    const progress = (bytes: number, totalBytes: number) => opts.onProgress?.({ fileName: spec.fileName, bytes, totalBytes, phase: 'download' });

    if (spec.source.kind === 'r2') {
      const s = spec.source;
      try {
        const r = await this.storage.downloadToFile(s.bucketAlias, s.key, partial, {
          resume: true,
          ifMatch: info?.source === src ? info.etag : undefined,
          onProgress: progress,
          signal: opts.signal,
          concurrency: this.options.downloadConcurrency,
          chunkBytes: this.options.downloadChunkBytes,
        });
        await fsp.writeFile(partialInfo, JSON.stringify({ source: src, etag: r.etag }));
      } catch (err) {
        // The object changed since the partial was written: start over once.
        if (err instanceof StorageError && err.status === 412) {
          await fsp.rm(partial, { force: true });
          await this.storage.downloadToFile(s.bucketAlias, s.key, partial, { resume: false, onProgress: progress, signal: opts.signal, concurrency: this.options.downloadConcurrency, chunkBytes: this.options.downloadChunkBytes });
        } else {
          throw err;
        }
      }
    } else if (spec.source.kind === 'local') {
      await this.linkLocal(spec.source.path, partial, spec.fileName);
    } else {
      await this.downloadHttp(spec.source.url, partial, spec, progress, opts.signal);
    }

    // A local file with no pinned hash is the operator's word: hashing 10 GB would prove nothing more.
    const got = spec.source.kind === 'local' && !spec.sha256
      ? { sha256: '', bytes: (await fsp.stat(partial)).size }
      : await sha256File(partial, (n) => opts.onProgress?.({ fileName: spec.fileName, bytes: n, totalBytes: spec.bytes ?? n, phase: 'verify' }));
    const where = `${spec.fileName} from ${src}`;
    if (spec.sha256 && got.sha256 !== spec.sha256.toLowerCase()) {
      await fsp.rm(partial, { force: true });
      await fsp.rm(partialInfo, { force: true });
      await fsp.rm(`${partial}.ranges.json`, { force: true });
      throw new StorageError(
        'invalid-content',
        `Weight ${where} failed verification: got sha256 ${got.sha256} (${got.bytes} bytes), expected ${spec.sha256}. The download was discarded; check the source and the recipe's pinned hash.`,
        spec.source.kind === 'r2' ? { key: spec.source.key } : spec.source.kind === 'https' ? { url: spec.source.url } : {},
      );
    }
    await fsp.rename(partial, file);
    await fsp.rm(partialInfo, { force: true });
    const marker: Marker = { fileName: spec.fileName, sha256: got.sha256, bytes: got.bytes, source: src, verifiedAt: new Date().toISOString() };
    const tmp = `${this.p('meta', spec.fileName)}.tmp`;
    await fsp.writeFile(tmp, JSON.stringify(marker));
    await fsp.rename(tmp, this.p('meta', spec.fileName));
  }

  /** Hard link (no second copy of disk), else a copy when the file is on another filesystem. */
  private async linkLocal(source: string, partial: string, fileName: string): Promise<void> {
    await fsp.rm(partial, { force: true });
    const st = await fsp.stat(source).catch((e: NodeJS.ErrnoException) => {
      throw new StorageError('not-found', `Weight ${fileName}: the local file ${source} cannot be read (${e.code}). Provision it there or unset the local weights folder.`);
    });
    if (!st.isFile()) throw new StorageError('invalid-argument', `Weight ${fileName}: ${source} is not a regular file.`);
    try {
      await fsp.link(source, partial);
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code !== 'EXDEV' && (e as NodeJS.ErrnoException).code !== 'EPERM') throw e;
      await fsp.copyFile(source, partial);
    }
  }

  /** HTTPS download, resumed with a range request after a cut (the library's one resume loop, withRetries). */
  private async downloadHttp(url: string, partial: string, spec: WeightSpec, progress: (b: number, t: number) => void, signal?: AbortSignal): Promise<void> {
    let attempts = 0;
    try {
      await withRetries(
        this.config.retry,
        async (attempt) => {
          attempts = attempt;
          let have = await fsp.stat(partial).then((s) => s.size, () => 0);
          const res = await fetch(url, { redirect: 'follow', signal, headers: have > 0 ? { range: `bytes=${have}-` } : {} }).catch((err: unknown) => {
            throw new StorageError('unavailable', `Weight ${spec.fileName}: ${redactUrl(url)} could not be reached (${(err as Error).message}).`, { url, cause: err });
          });
          if (res.status === 416 && have > 0) {
            // We already have everything (size unknown in advance); verification decides.
            await res.body?.cancel().catch(() => undefined);
            return;
          }
          if (!res.ok || !res.body) {
            await res.body?.cancel().catch(() => undefined);
            const kind = res.status >= 500 || res.status === 429 ? 'unavailable' : res.status === 404 ? 'not-found' : 'rejected';
            throw new StorageError(kind, `Weight ${spec.fileName}: ${redactUrl(url)} answered HTTP ${res.status}.`, { url, status: res.status });
          }
          if (have > 0 && res.status !== 206) have = 0; // the server ignored the range: start over
          const len = Number(res.headers.get('content-length') ?? NaN);
          const total = Number.isFinite(len) ? have + len : -1;
          let written = have;
          const counter = new Transform({
            transform(chunk: Buffer, _e, cb) {
              written += chunk.length;
              progress(written, total);
              cb(null, chunk);
            },
          });
          await pipeline(Readable.fromWeb(res.body as import('node:stream/web').ReadableStream), counter, createWriteStream(partial, { flags: have > 0 ? 'a' : 'w' }), { signal });
          if (total >= 0 && written !== total) throw new Error(`stream ended at ${written} of ${total} bytes`);
        },
        { signal },
      );
    } catch (err) {
      const kept = await fsp.stat(partial).then((s) => s.size, () => 0);
      if (signal?.aborted) throw new StorageError('aborted', `Download of weight ${spec.fileName} was cancelled; ${kept} bytes kept for resume.`, { url, cause: err });
      if (err instanceof StorageError && err.kind !== 'unavailable') throw err;
      throw new StorageError(
        'unavailable',
        `Weight ${spec.fileName}: download from ${redactUrl(url)} failed after ${attempts} attempts (${(err as Error)?.message ?? err}). ${kept} bytes are kept and the next acquire resumes from there.`,
        { url, cause: err, attempts },
      );
    }
  }

  /** Every cached file (complete or partial), with size, last use and whether a job holds it. */
  async entries(): Promise<CacheEntry[]> {
    const filesDir = path.join(this.dir, 'files');
    const names = await fsp.readdir(filesDir).catch(() => [] as string[]);
    const out: CacheEntry[] = [];
    for (const n of names) {
      if (n.endsWith('.partial.json') || n.endsWith('.partial.ranges.json')) continue;
      const complete = !n.endsWith('.partial');
      const fileName = complete ? n : n.slice(0, -'.partial'.length);
      const st = await fsp.stat(path.join(filesDir, n)).catch(() => null);
      if (!st) continue;
      const metaSt = complete ? await fsp.stat(this.p('meta', fileName)).catch(() => null) : null;
      out.push({
        fileName,
        bytes: st.size,
        lastUsedMs: Math.max(metaSt?.mtimeMs ?? 0, complete ? 0 : st.mtimeMs),
        inUse: (await liveLeases(this.p('leases', fileName))) > 0,
        complete,
      });
    }
    return out;
  }

  /**
   * Evicts least-recently-used entries until the total plus `reserveBytes`
   * fits the budget. Files with a live lease, or whose lock is held (being
   * downloaded or verified), are never evicted. Returns the evicted names.
   */
  async evict(opts: { reserveBytes?: number; skip?: string; budgetBytes?: number } = {}): Promise<{ evicted: string[]; totalBytes: number }> {
    const budget = (opts.budgetBytes ?? this.config.weightCacheMaxBytes) - (opts.reserveBytes ?? 0);
    const global = await lockFile(path.join(this.dir, 'locks', '__evict.lock'), this.lockOptions);
    const evicted: string[] = [];
    try {
      const entries = await this.entries();
      let total = entries.reduce((s, e) => s + e.bytes, 0);
      const order = entries.filter((e) => e.fileName !== opts.skip).sort((a, b) => a.lastUsedMs - b.lastUsedMs);
      for (const e of order) {
        if (total <= budget) break;
        if (e.inUse) continue;
        const l = await tryLockFile(this.p('locks', e.fileName), this.lockOptions);
        if (!l) continue;
        try {
          // Re-check under the lock: an acquire may have leased it meanwhile.
          if ((await liveLeases(this.p('leases', e.fileName))) > 0) continue;
          const file = this.p('files', e.fileName);
          if (e.complete) {
            await fsp.rm(this.p('meta', e.fileName), { force: true });
            await fsp.rm(file, { force: true });
          } else {
            await fsp.rm(`${file}.partial`, { force: true });
            await fsp.rm(`${file}.partial.json`, { force: true });
            await fsp.rm(`${file}.partial.ranges.json`, { force: true });
          }
          total -= e.bytes;
          evicted.push(e.complete ? e.fileName : `${e.fileName}.partial`);
        } finally {
          await l.release();
        }
      }
      return { evicted, totalBytes: total };
    } finally {
      await global.release();
    }
  }
}
