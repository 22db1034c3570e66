/**
 * Downloads a platform dataset into a job folder:
 * - first the offline checks of `checkDatasetSourcesOffline` (the same
 *   function the worker calls before the charge), so nothing is contacted for
 *   a dataset that breaks a rule;
 * - images from our own buckets / CDN are read through S3 by key;
 * - other URLs only from allow-listed hosts, redirects only within the same
 *   origin (at most 3), each hop checked by the same URL rules;
 * - per-file and per-dataset byte limits, enforced while streaming;
 * - type by magic bytes (jpeg/png/webp; mp4/webm only with allowVideo), and an
 *   image's declared width and height from its header, before it is accepted;
 * - generated names img_0001.<ext> + img_0001.txt: no user-controlled paths;
 * - bounded concurrency; the first failure cancels the rest and removes
 *   everything this call wrote.
 */
import { promises as fsp, createWriteStream } from 'node:fs';
import * as path from 'node:path';
import { Transform, type Readable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { inject, injectable } from 'tsyringe';
import { selectCaptions, type PlatformDatasetDoc } from './captions';
import type { R2Config } from './config';
import type { DatasetFetchPort, FetchOptions, FetchedDataset, FetchedImage, SourceCheckOptions } from './dataset-fetch.port';
import {
  assertDatasetSourcesOffline,
  checkDatasetSourcesOffline,
  datasetSourcePolicy,
  identifyMedia,
  mediaLabel,
  type DatasetSourcePolicy,
  type DatasetSourceProblem,
  type DatasetSources,
} from './dataset-policy';
import { openDatasetSource } from './dataset-source';
import { StorageError } from './errors';
import { MAX_DIMENSION_HEADER_BYTES, type SniffedType } from './magic';
import { ObjectStorage } from './object-storage';

/** @default for FetchOptions.concurrency */
const DEFAULT_CONCURRENCY = 4;
/** @default for FetchOptions.fileTimeoutMs */
const DEFAULT_FILE_TIMEOUT_MS = 120_000;

@injectable()
export class DatasetFetcher implements DatasetFetchPort {
  constructor(@inject(ObjectStorage) private readonly storage: ObjectStorage) {}

  private get config(): R2Config {
    return this.storage.config;
  }

  /** The offline checks, as the worker runs them before the charge. */
  checkSources(dataset: DatasetSources, opts: SourceCheckOptions = {}): DatasetSourceProblem[] {
    return checkDatasetSourcesOffline(dataset, datasetSourcePolicy(this.config, opts));
  }

  async fetch(dataset: PlatformDatasetDoc, destDir: string, opts: FetchOptions = {}): Promise<FetchedDataset> {
    const policy = datasetSourcePolicy(this.config, opts);
    await fsp.mkdir(destDir, { recursive: true });
    assertDatasetSourcesOffline(dataset, policy);
    const images = dataset.images;
    const captions = selectCaptions(dataset, opts.captionSetId);

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
          const got = await this.fetchOne(images[i], i, base, destDir, policy, opts, shared, ctl.signal, written);
          const caption = opts.captionFor ? opts.captionFor(captions.captions[i] ?? '', i) : captions.captions[i];
          let captionFileName = '';
          if (caption) {
            captionFileName = `${base}.txt`;
            const cp = path.join(destDir, captionFileName);
            written.push(cp);
            await fsp.writeFile(cp, caption, 'utf8');
          }
          results[i] = { fileName: got.fileName, captionFileName, sourceUrl: images[i], bytes: got.bytes, mime: got.type.mime, ...(got.dimensions ?? {}) };
          shared.completed++;
          opts.onProgress?.({ completedFiles: shared.completed, totalFiles: images.length, bytes: shared.totalBytes, fileName: got.fileName });
        } catch (err) {
          if (firstError === undefined) firstError = err;
          ctl.abort();
          return;
        }
      }
    };
    const n = Math.max(1, Math.min(opts.concurrency ?? DEFAULT_CONCURRENCY, images.length || 1));
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
    policy: DatasetSourcePolicy,
    opts: FetchOptions,
    shared: { totalBytes: number },
    signal: AbortSignal,
    written: string[],
  ): Promise<{ fileName: string; bytes: number; type: SniffedType; dimensions?: { width: number; height: number } }> {
    const limits = policy.limits;
    const label = mediaLabel(index, String(url));
    const timeoutMs = opts.fileTimeoutMs ?? DEFAULT_FILE_TIMEOUT_MS;
    const timeout = AbortSignal.timeout(timeoutMs);
    const sig = AbortSignal.any([signal, timeout]);
    const body = await this.openSource(String(url), index, label, policy, sig);

    const tmp = path.join(destDir, `.${base}.part`);
    written.push(tmp);
    let bytes = 0;
    let head = Buffer.alloc(0);
    let type: SniffedType | null = null;
    let dimensions: { width: number; height: number } | undefined;
    let identified = false;
    const identify = (final: boolean) => {
      const r = identifyMedia(head, final, index, String(url), { limits, allowVideo: opts.allowVideo });
      if (r) {
        type = r.type;
        dimensions = r.dimensions;
        identified = true;
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
          if (!identified) {
            head = Buffer.concat([head, chunk.subarray(0, MAX_DIMENSION_HEADER_BYTES - head.length)]);
            identify(false);
          }
          cb(null, chunk);
        } catch (e) {
          cb(e as Error);
        }
      },
      flush(cb) {
        try {
          if (!identified) identify(true);
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
      if (timeout.aborted) throw new StorageError('unavailable', `${label} did not download within ${timeoutMs} ms.`, { url, cause: err });
      if (signal.aborted) throw err;
      throw new StorageError('unavailable', `${label} could not be downloaded: ${(err as Error).message}.`, { url, cause: err });
    }
    const t = type as SniffedType | null;
    if (!t) throw new StorageError('invalid-content', `${label} could not be identified.`, { url });
    const fileName = `${base}.${t.ext}`;
    const final = path.join(destDir, fileName);
    written.push(final);
    await fsp.rename(tmp, final);
    return { fileName, bytes, type: t, dimensions };
  }

  /** Opens the body of one image URL under the dataset rules (dataset-source.ts, shared with the header probe). */
  private openSource(url: string, index: number, label: string, policy: DatasetSourcePolicy, signal: AbortSignal): Promise<Readable> {
    return openDatasetSource(this.storage, url, index, label, policy, { signal });
  }
}
