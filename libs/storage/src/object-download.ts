/**
 * Downloads an object to a file, resumable: a body cut mid-transfer is
 * continued with a range request pinned to the first response's ETag. With
 * `concurrency` above 1, large objects come down as concurrent ranges written
 * in place, and finished ranges are recorded so a later call resumes them.
 * The resume loop is `withRetries` (retry.ts), the only one in the library.
 */
import { promises as fsp } from 'node:fs';
import type { FileHandle } from 'node:fs/promises';
import type { Readable } from 'node:stream';
import type { RetryConfig } from './config';
import { StorageError } from './errors';
import { withRetries } from './retry';

export interface ObjectInfo {
  bytes: number;
  contentType?: string;
  cacheControl?: string;
  etag?: string;
  lastModified?: Date;
  metadata: Record<string, string>;
}

export interface DownloadOptions {
  /**
   * Continue an existing partial file at destPath.
   * @default false
   */
  resume?: boolean;
  /** Expected ETag: the download fails (status 412) instead of mixing two versions. */
  ifMatch?: string;
  onProgress?: (bytesWritten: number, totalBytes: number) => void;
  signal?: AbortSignal;
  /**
   * Ranged GETs in flight. 1 streams the object in one request. Above 1,
   * objects larger than two chunks are fetched in `chunkBytes` ranges written
   * in place; finished ranges are recorded in `<destPath>.ranges.json`, so
   * `resume` continues where it stopped.
   * @default 1
   */
  concurrency?: number;
  /**
   * Range size for concurrent downloads.
   * @default 67108864 (64 MiB)
   */
  chunkBytes?: number;
}

export interface DownloadResult {
  bytes: number;
  etag?: string;
  /** The most attempts any one stream or range took. */
  attempts: number;
}

/** What a download needs from the object store. */
export interface ObjectReader {
  getObjectStream(key: string, opts: { range?: { start: number; end?: number }; ifMatch?: string; signal?: AbortSignal }): Promise<{ body: Readable; totalBytes: number; etag?: string }>;
  headObject(key: string): Promise<ObjectInfo | null>;
}

/**
 * Writes a response body to `fh` from `position` on, coalescing the socket's
 * small chunks into 4 MiB writes: far fewer syscalls, and the chunks die young
 * instead of waiting in a write queue (most of the CPU of a naive pipe is GC).
 * Bytes received before an error are flushed before it is rethrown, so a
 * resume starts as late as possible. `onFlushed` gets each flushed count.
 */
async function drainToFile(body: AsyncIterable<Uint8Array>, fh: FileHandle, position: number, maxBytes: number | undefined, onFlushed: (n: number) => void): Promise<void> {
  const buf = Buffer.allocUnsafe(4 * 1024 * 1024);
  let fill = 0;
  let pos = position;
  let total = 0;
  const flush = async () => {
    let off = 0;
    while (off < fill) {
      const { bytesWritten } = await fh.write(buf, off, fill - off, pos + off);
      off += bytesWritten;
    }
    pos += fill;
    const n = fill;
    fill = 0;
    if (n) onFlushed(n);
  };
  try {
    for await (const chunk of body) {
      total += chunk.byteLength;
      if (maxBytes !== undefined && total > maxBytes) throw new Error(`the server sent more than the ${maxBytes} bytes requested`);
      let off = 0;
      while (off < chunk.byteLength) {
        const n = Math.min(chunk.byteLength - off, buf.length - fill);
        buf.set(chunk.subarray(off, off + n), fill);
        fill += n;
        off += n;
        if (fill === buf.length) await flush();
      }
    }
  } catch (err) {
    await flush().catch(() => undefined);
    throw err;
  }
  await flush();
}

const fileSize = (p: string) => fsp.stat(p).then((s) => s.size, () => 0);

export class ObjectDownload {
  constructor(
    private readonly reader: ObjectReader,
    private readonly bucket: string,
    private readonly key: string,
    private readonly retry: RetryConfig,
  ) {}

  private failure(lastErr: unknown, attempts: number, kept: string): StorageError {
    if (this.cancelledBy(lastErr)) return lastErr as StorageError;
    if (lastErr instanceof StorageError && lastErr.kind !== 'unavailable') return lastErr;
    const why = (lastErr as Error)?.message ?? String(lastErr);
    return new StorageError('unavailable', `Could not download '${this.key}' from bucket '${this.bucket}' after ${attempts} attempts: ${why}. ${kept}`, {
      bucket: this.bucket,
      key: this.key,
      cause: lastErr,
      attempts,
    });
  }

  private cancelledBy(err: unknown): boolean {
    return err instanceof StorageError && err.kind === 'aborted';
  }

  private cancelled(cause: unknown, note = ''): StorageError {
    return new StorageError('aborted', `Download of '${this.key}' from bucket '${this.bucket}' was cancelled${note}.`, { bucket: this.bucket, key: this.key, cause });
  }

  async toFile(destPath: string, opts: DownloadOptions = {}): Promise<DownloadResult> {
    const chunkBytes = opts.chunkBytes ?? 64 * 1024 * 1024;
    if ((opts.concurrency ?? 1) > 1) {
      const head = await this.reader.headObject(this.key);
      if (!head) throw new StorageError('not-found', `Could not read '${this.key}' in bucket '${this.bucket}': it does not exist.`, { bucket: this.bucket, key: this.key, status: 404 });
      if (opts.ifMatch && head.etag !== opts.ifMatch) {
        throw new StorageError('invalid-content', `'${this.key}' in bucket '${this.bucket}' changed (ETag no longer ${opts.ifMatch}). Start the download again.`, {
          bucket: this.bucket,
          key: this.key,
          status: 412,
        });
      }
      if (head.bytes > 2 * chunkBytes) return this.ranges(destPath, head, chunkBytes, opts);
    }
    return this.stream(destPath, opts);
  }

  /** One stream, resumed from the bytes already on disk after each cut. */
  private async stream(destPath: string, opts: DownloadOptions): Promise<DownloadResult> {
    await fsp.rm(`${destPath}.ranges.json`, { force: true });
    if (!opts.resume) await fsp.rm(destPath, { force: true });
    let etag = opts.ifMatch;
    let attempts = 0;
    try {
      return await withRetries(
        this.retry,
        async (attempt) => {
          attempts = attempt;
          let written = await fileSize(destPath);
          try {
            const r = await this.reader.getObjectStream(this.key, { range: written > 0 ? { start: written } : undefined, ifMatch: etag, signal: opts.signal });
            etag = etag ?? r.etag;
            const total = r.totalBytes;
            const fh = await fsp.open(destPath, written > 0 ? 'r+' : 'w');
            try {
              await drainToFile(r.body, fh, written, undefined, (n) => {
                written += n;
                opts.onProgress?.(written, total);
              });
            } finally {
              await fh.close();
            }
            if (written !== total) throw new Error(`stream ended at ${written} of ${total} bytes`);
            return { bytes: written, etag, attempts: attempt };
          } catch (err) {
            // Range past the end: an earlier attempt already has it all.
            if ((err as StorageError).status === 416 && written > 0) {
              const head = await this.reader.headObject(this.key);
              if (head && head.bytes === written) return { bytes: written, etag: head.etag, attempts: attempt };
            }
            throw err;
          }
        },
        { signal: opts.signal },
      );
    } catch (err) {
      if (opts.signal?.aborted || (err as Error)?.name === 'AbortError') throw this.cancelled(err);
      throw this.failure(err, attempts, `${await fileSize(destPath)} bytes are kept in ${destPath} for a resumed retry.`);
    }
  }

  /** Concurrent ranged download into a preallocated file, resumable per range. */
  private async ranges(destPath: string, head: ObjectInfo, chunkBytes: number, opts: DownloadOptions): Promise<DownloadResult> {
    const statePath = `${destPath}.ranges.json`;
    const count = Math.ceil(head.bytes / chunkBytes);
    type State = { etag?: string; bytes: number; chunkBytes: number; done: number[] };
    let state: State | null = null;
    if (opts.resume) {
      state = await fsp.readFile(statePath, 'utf8').then((x) => JSON.parse(x) as State, () => null);
      const size = await fsp.stat(destPath).then((st) => st.size, () => -1);
      if (!state || state.etag !== head.etag || state.bytes !== head.bytes || state.chunkBytes !== chunkBytes || size !== head.bytes) state = null;
    }
    const done = new Set<number>(state?.done ?? []);
    if (!state) {
      await fsp.rm(destPath, { force: true });
      const fh0 = await fsp.open(destPath, 'w');
      await fh0.truncate(head.bytes);
      await fh0.close();
    }
    // Several range workers finish at once: writes are chained (never two in flight) and
    // atomic (temp file + rename), so a crash or a concurrent save never leaves torn JSON.
    let saving: Promise<void> = Promise.resolve();
    const saveState = () =>
      (saving = saving.catch(() => undefined).then(async () => {
        const tmp = `${statePath}.tmp`;
        await fsp.writeFile(tmp, JSON.stringify({ etag: head.etag, bytes: head.bytes, chunkBytes, done: [...done] } satisfies State));
        await fsp.rename(tmp, statePath);
      }));
    await saveState();
    const fh = await fsp.open(destPath, 'r+');
    let progress = [...done].reduce((s, i) => s + Math.min(chunkBytes, head.bytes - i * chunkBytes), 0);
    let maxAttempts = 1;
    let next = 0;
    let failure: unknown;
    const ctl = new AbortController();
    const onAbort = () => ctl.abort();
    opts.signal?.addEventListener('abort', onAbort, { once: true });
    const fetchRange = async (i: number) => {
      const start = i * chunkBytes;
      const end = Math.min(head.bytes, start + chunkBytes) - 1;
      await withRetries(
        this.retry,
        async (attempt) => {
          maxAttempts = Math.max(maxAttempts, attempt);
          let pos = start;
          try {
            const r = await this.reader.getObjectStream(this.key, { range: { start, end }, ifMatch: head.etag, signal: ctl.signal });
            await drainToFile(r.body, fh, start, end + 1 - start, (n) => {
              pos += n;
              progress += n;
              opts.onProgress?.(progress, head.bytes);
            });
            if (pos !== end + 1) throw new Error(`range ${start}-${end} ended at ${pos}`);
          } catch (err) {
            progress -= pos - start;
            throw err;
          }
        },
        { signal: ctl.signal },
      );
    };
    const worker = async () => {
      while (!ctl.signal.aborted) {
        let i = next++;
        while (i < count && done.has(i)) i = next++;
        if (i >= count) return;
        try {
          await fetchRange(i);
          done.add(i);
          await saveState();
        } catch (err) {
          failure ??= err;
          ctl.abort();
        }
      }
    };
    try {
      await Promise.all(Array.from({ length: Math.min(opts.concurrency ?? 1, count) }, worker));
    } finally {
      opts.signal?.removeEventListener('abort', onAbort);
      await fh.close();
      await saving.catch(() => undefined);
    }
    if (failure !== undefined || done.size !== count) {
      if (opts.signal?.aborted) throw this.cancelled(failure, '; finished ranges are kept for resume');
      throw this.failure(failure, maxAttempts, `${done.size} of ${count} ranges are kept in ${destPath} for a resumed retry.`);
    }
    await fsp.rm(statePath, { force: true });
    return { bytes: head.bytes, etag: head.etag, attempts: maxAttempts };
  }
}
