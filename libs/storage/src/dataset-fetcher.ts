/**
 * Downloads a platform dataset into a job folder:
 * - images from our own buckets / CDN are read through S3 by key;
 * - other URLs only from allow-listed hosts, redirects only within the same
 *   origin (at most 3), never to another host;
 * - per-file and per-dataset byte limits, enforced while streaming;
 * - type by magic bytes (jpeg/png/webp; mp4/webm only with allowVideo);
 * - generated names img_0001.<ext> + img_0001.txt: no user-controlled paths;
 * - bounded concurrency; the first failure cancels the rest and removes
 *   everything this call wrote.
 */
import { promises as fsp, createWriteStream } from 'node:fs';
import * as path from 'node:path';
import { Readable, Transform } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { inject, injectable } from 'tsyringe';
import { selectCaptions, type PlatformDatasetDoc } from './captions';
import { StorageError, redactUrl } from './errors';
import { SNIFF_BYTES, describeHead, sniffType, type SniffedType } from './magic';
import { ObjectStorage } from './object-storage';

export interface FetchLimits {
  /** Bytes per file. Default 50 MiB (the platform's upload limit). */
  maxFileBytes: number;
  /** Bytes for the whole dataset. Default 2 GiB. */
  maxTotalBytes: number;
  /** Number of images. Default 1000. */
  maxImages: number;
}

export const DEFAULT_FETCH_LIMITS: FetchLimits = {
  maxFileBytes: 50 * 1024 ** 2,
  maxTotalBytes: 2 * 1024 ** 3,
  maxImages: 1000,
};

export interface FetchProgress {
  completedFiles: number;
  totalFiles: number;
  /** Bytes written so far, all files. */
  bytes: number;
  /** Set when a file has just completed. */
  fileName?: string;
}

export interface FetchOptions {
  onProgress?: (p: FetchProgress) => void;
  limits?: Partial<FetchLimits>;
  /** Hosts (or host:port) allowed besides our buckets; added to config.datasetAllowedHosts. */
  allowedHosts?: string[];
  captionSetId?: string;
  /**
   * The caption the engine trains on, from the platform's caption ('' when the
   * item has none): the recipes' rule (libs/recipes `trainingCaption`, which
   * adds the trigger word). When given, every item gets a caption file, because
   * musubi-tuner drops uncaptioned images and sd-scripts trains them on its
   * class tokens only; without it, only captioned items get one.
   */
  captionFor?: (caption: string, index: number) => string;
  /** Accept mp4/webm clips (video recipes). */
  allowVideo?: boolean;
  /** Downloads in flight. Default 4. */
  concurrency?: number;
  /** Per-file timeout in ms. Default 120 s. */
  fileTimeoutMs?: number;
  signal?: AbortSignal;
}

export interface FetchedImage {
  fileName: string;
  /** '' when no caption file was written (no caption and no captionFor). */
  captionFileName: string;
  sourceUrl: string;
  bytes: number;
  mime: string;
}

export interface FetchedDataset {
  images: FetchedImage[];
  totalBytes: number;
  /** Which caption set was used, e.g. 'embellishment:<id> (default+completed)', or 'none'. */
  captionSource: string;
  captionedCount: number;
}

const MAX_REDIRECTS = 3;

function hostAllowed(u: URL, allowed: Set<string>): boolean {
  return allowed.has(u.host.toLowerCase()) || allowed.has(u.hostname.toLowerCase());
}

@injectable()
export class DatasetFetcher {
  constructor(@inject(ObjectStorage) private readonly storage: ObjectStorage) {}

  async fetch(dataset: PlatformDatasetDoc, destDir: string, opts: FetchOptions = {}): Promise<FetchedDataset> {
    const limits: FetchLimits = { ...DEFAULT_FETCH_LIMITS, ...opts.limits };
    const images = Array.isArray(dataset.images) ? dataset.images : [];
    if (images.length > limits.maxImages) {
      throw new StorageError('too-large', `Dataset has ${images.length} images; the limit is ${limits.maxImages}. Remove images or raise the recipe's limit.`);
    }
    const allowed = new Set([...this.storage.config.datasetAllowedHosts, ...(opts.allowedHosts ?? [])].map((h) => h.toLowerCase()));
    const captions = selectCaptions(dataset, opts.captionSetId);
    await fsp.mkdir(destDir, { recursive: true });

    const width = Math.max(4, String(images.length).length);
    const written: string[] = [];
    const results: FetchedImage[] = new Array(images.length);
    const ctl = new AbortController();
    const onOuterAbort = () => ctl.abort();
    opts.signal?.addEventListener('abort', onOuterAbort, { once: true });
    const shared = { totalBytes: 0, completed: 0 };
    let firstError: unknown;
    let next = 0;

    const worker = async () => {
      while (!ctl.signal.aborted) {
        const i = next++;
        if (i >= images.length) return;
        const base = `img_${String(i + 1).padStart(width, '0')}`;
        try {
          const got = await this.fetchOne(images[i], i, base, destDir, limits, allowed, opts, shared, ctl.signal, written);
          const caption = opts.captionFor ? opts.captionFor(captions.captions[i] ?? '', i) : captions.captions[i];
          let captionFileName = '';
          if (caption) {
            captionFileName = `${base}.txt`;
            const cp = path.join(destDir, captionFileName);
            written.push(cp);
            await fsp.writeFile(cp, caption, 'utf8');
          }
          results[i] = { fileName: got.fileName, captionFileName, sourceUrl: images[i], bytes: got.bytes, mime: got.type.mime };
          shared.completed++;
          opts.onProgress?.({ completedFiles: shared.completed, totalFiles: images.length, bytes: shared.totalBytes, fileName: got.fileName });
        } catch (err) {
          if (firstError === undefined) firstError = err;
          ctl.abort();
          return;
        }
      }
    };
    const n = Math.max(1, Math.min(opts.concurrency ?? 4, images.length || 1));
    await Promise.all(Array.from({ length: n }, worker));
    opts.signal?.removeEventListener('abort', onOuterAbort);

    if (firstError !== undefined || opts.signal?.aborted) {
      await Promise.all(written.map((f) => fsp.rm(f, { force: true })));
      if (firstError instanceof StorageError) throw firstError;
      if (firstError === undefined || opts.signal?.aborted) {
        throw new StorageError('aborted', `Dataset download into ${destDir} was cancelled; partial files were removed.`, { cause: firstError });
      }
      throw new StorageError('unavailable', `Dataset download failed: ${(firstError as Error).message ?? firstError}`, { cause: firstError });
    }
    return {
      images: results,
      totalBytes: shared.totalBytes,
      captionSource: captions.source,
      captionedCount: results.filter((r) => r.captionFileName).length,
    };
  }

  private async fetchOne(
    url: string,
    index: number,
    base: string,
    destDir: string,
    limits: FetchLimits,
    allowed: Set<string>,
    opts: FetchOptions,
    shared: { totalBytes: number },
    signal: AbortSignal,
    written: string[],
  ): Promise<{ fileName: string; bytes: number; type: SniffedType }> {
    const label = `Image ${index + 1} (${redactUrl(String(url))})`;
    const timeout = AbortSignal.timeout(opts.fileTimeoutMs ?? 120_000);
    const sig = AbortSignal.any([signal, timeout]);
    const body = await this.openSource(String(url), label, limits, allowed, sig);

    const tmp = path.join(destDir, `.${base}.part`);
    written.push(tmp);
    let bytes = 0;
    let head = Buffer.alloc(0);
    let type: SniffedType | null = null;
    const check = () => {
      type = sniffType(head);
      if (!type) {
        throw new StorageError('invalid-content', `${label} is not a JPEG, PNG or WebP${opts.allowVideo ? ', MP4 or WebM' : ''} file (starts with ${describeHead(head)}). Remove it from the dataset.`, { url });
      }
      if (type.kind === 'video' && !opts.allowVideo) {
        throw new StorageError('invalid-content', `${label} is a ${type.mime} video, and this recipe accepts only images. Remove it from the dataset.`, { url });
      }
    };
    const guard = new Transform({
      transform(chunk: Buffer, _enc, cb) {
        try {
          bytes += chunk.length;
          shared.totalBytes += chunk.length;
          if (bytes > limits.maxFileBytes) {
            throw new StorageError('too-large', `${label} is larger than the per-file limit of ${limits.maxFileBytes} bytes. Use a smaller file.`, { url });
          }
          if (shared.totalBytes > limits.maxTotalBytes) {
            throw new StorageError('too-large', `The dataset is larger than the limit of ${limits.maxTotalBytes} bytes (exceeded while fetching image ${index + 1}). Remove images or use smaller files.`, { url });
          }
          if (!type) {
            head = Buffer.concat([head, chunk.subarray(0, SNIFF_BYTES - head.length)]);
            if (head.length >= SNIFF_BYTES) check();
          }
          cb(null, chunk);
        } catch (e) {
          cb(e as Error);
        }
      },
      flush(cb) {
        try {
          if (!type) check();
          cb();
        } catch (e) {
          cb(e as Error);
        }
      },
    });
    try {
      await pipeline(body, guard, createWriteStream(tmp, { flags: 'w', mode: 0o644 }), { signal: sig });
    } catch (err) {
      if (err instanceof StorageError) throw err;
      if (timeout.aborted) throw new StorageError('unavailable', `${label} did not download within ${opts.fileTimeoutMs ?? 120_000} ms.`, { url, cause: err });
      if (signal.aborted) throw err;
      throw new StorageError('unavailable', `${label} could not be downloaded: ${(err as Error).message}.`, { url, cause: err });
    }
    const t = type as SniffedType | null;
    if (!t) throw new StorageError('invalid-content', `${label} could not be identified.`, { url });
    const fileName = `${base}.${t.ext}`;
    const final = path.join(destDir, fileName);
    written.push(final);
    await fsp.rename(tmp, final);
    return { fileName, bytes, type: t };
  }

  /** Opens the body of one image URL, applying the URL policy. */
  private async openSource(url: string, label: string, limits: FetchLimits, allowed: Set<string>, signal: AbortSignal): Promise<Readable> {
    const own = this.storage.matchOwnUrl(url);
    if (own && own.key === null) {
      throw new StorageError('invalid-name', `${label} points into our '${own.bucketAlias}' bucket with a key that is not allowed ('.'/'..' segments, control characters or similar).`, { url });
    }
    if (own && own.key !== null) {
      const key = own.key;
      const r = await this.storage.getObjectStream(own.bucketAlias, key, { signal }).catch((err: unknown) => {
        if (err instanceof StorageError) {
          throw new StorageError(err.kind, `${label}: ${err.message}`, { bucket: err.bucket, key: err.key, status: err.status, cause: err });
        }
        throw err;
      });
      if (r.totalBytes > limits.maxFileBytes) {
        r.body.destroy();
        throw new StorageError('too-large', `${label} is ${r.totalBytes} bytes, over the per-file limit of ${limits.maxFileBytes}. Use a smaller file.`, {
          bucket: this.storage.bucket(own.bucketAlias).bucket,
          key,
        });
      }
      return r.body;
    }
    let u: URL;
    try {
      u = new URL(url);
    } catch {
      throw new StorageError('disallowed-url', `${label} is not an absolute URL.`, { url });
    }
    for (let hop = 0; ; hop++) {
      if (u.protocol !== 'https:' && u.protocol !== 'http:') {
        throw new StorageError('disallowed-url', `${label}: scheme '${u.protocol}' is not allowed; only http(s) URLs are fetched.`, { url });
      }
      if (u.username || u.password) {
        throw new StorageError('disallowed-url', `${label}: URLs with credentials are not allowed.`, { url });
      }
      if (!hostAllowed(u, allowed)) {
        throw new StorageError(
          'disallowed-url',
          `${label}: host '${u.host}' is neither one of our buckets nor allow-listed (DATASET_ALLOWED_HOSTS). Upload the image to the dataset instead.`,
          { url },
        );
      }
      let res: Response;
      try {
        res = await fetch(u, { redirect: 'manual', signal, headers: { accept: 'image/*,video/*;q=0.9,*/*;q=0.1' } });
      } catch (err) {
        throw new StorageError('unavailable', `${label} could not be fetched: ${(err as Error).message}.`, { url, cause: err });
      }
      if (res.status >= 300 && res.status < 400) {
        await res.body?.cancel().catch(() => undefined);
        const loc = res.headers.get('location');
        if (!loc) throw new StorageError('rejected', `${label}: redirect ${res.status} without a Location header.`, { url, status: res.status });
        const nextUrl = new URL(loc, u);
        if (nextUrl.origin !== u.origin) {
          throw new StorageError('disallowed-url', `${label} redirects to another host (${nextUrl.host}); redirects are followed only within the same host.`, {
            url,
            status: res.status,
          });
        }
        if (hop + 1 > MAX_REDIRECTS) throw new StorageError('disallowed-url', `${label}: more than ${MAX_REDIRECTS} redirects.`, { url });
        u = nextUrl;
        continue;
      }
      if (!res.ok || !res.body) {
        await res.body?.cancel().catch(() => undefined);
        throw new StorageError(res.status === 404 ? 'not-found' : res.status >= 500 || res.status === 429 ? 'unavailable' : 'rejected', `${label}: the server answered HTTP ${res.status}.`, {
          url,
          status: res.status,
        });
      }
      const len = Number(res.headers.get('content-length') ?? NaN);
      if (Number.isFinite(len) && len > limits.maxFileBytes) {
        await res.body.cancel().catch(() => undefined);
        throw new StorageError('too-large', `${label} is ${len} bytes, over the per-file limit of ${limits.maxFileBytes}. Use a smaller file.`, { url });
      }
      return Readable.fromWeb(res.body as import('node:stream/web').ReadableStream);
    }
  }
}
