/**
 * DatasetFetchPort in memory: own-bucket images come from an InMemoryObjects,
 * other URLs from a map. The URL rules, limits and media checks are the real
 * ones (dataset-policy.ts); only the transport is fake. Passes
 * test/conformance/dataset-fetch.suite.ts.
 */
import { promises as fsp } from 'node:fs';
import * as path from 'node:path';
import { selectCaptions, type PlatformDatasetDoc } from '../captions';
import type { R2Config } from '../config';
import type { DatasetFetchPort, FetchOptions, FetchedDataset, FetchedImage, SourceCheckOptions } from '../dataset-fetch.port';
import { assertDatasetSourcesOffline, checkDatasetSourcesOffline, checkSourceUrl, datasetSourcePolicy, identifyMedia, type DatasetSourceProblem, type DatasetSources } from '../dataset-policy';
import { StorageError, redactUrl } from '../errors';
import { InMemoryObjects } from './in-memory-objects';

export class InMemoryDatasetFetch implements DatasetFetchPort {
  /** Bodies of non-bucket URLs (allow-listed hosts), by URL. */
  readonly web = new Map<string, Buffer>();
  /** URLs read, in order (own-bucket ones as alias/key). */
  readonly reads: string[] = [];

  constructor(
    private readonly config: Pick<R2Config, 'endpoint' | 'buckets' | 'datasetAllowedHosts'>,
    readonly objects: InMemoryObjects = new InMemoryObjects(),
  ) {}

  checkSources(dataset: DatasetSources, opts: SourceCheckOptions = {}): DatasetSourceProblem[] {
    return checkDatasetSourcesOffline(dataset, datasetSourcePolicy(this.config, opts));
  }

  async fetch(dataset: PlatformDatasetDoc, destDir: string, opts: FetchOptions = {}): Promise<FetchedDataset> {
    const policy = datasetSourcePolicy(this.config, opts);
    await fsp.mkdir(destDir, { recursive: true });
    assertDatasetSourcesOffline(dataset, policy);
    const captions = selectCaptions(dataset, opts.captionSetId);
    const width = Math.max(4, String(dataset.images.length).length);
    const written: string[] = [];
    const images: FetchedImage[] = [];
    let totalBytes = 0;
    try {
      for (const [i, url] of dataset.images.entries()) {
        if (opts.signal?.aborted) throw new StorageError('aborted', `Dataset download into ${destDir} was cancelled; partial files were removed.`);
        const label = `Image ${i + 1} (${redactUrl(url)})`;
        const r = checkSourceUrl(url, i, policy);
        if ('problem' in r) throw new StorageError(r.problem.kind, r.problem.message, { url });
        const body = r.own ? this.objects.get(r.own.bucketAlias, r.own.key) : (this.web.get(url) ?? null);
        this.reads.push(r.own ? `${r.own.bucketAlias}/${r.own.key}` : url);
        if (!body) throw new StorageError('not-found', r.own ? `${label}: '${r.own.key}' in bucket '${this.config.buckets[r.own.bucketAlias].bucket}' does not exist.` : `${label}: the server answered HTTP 404.`, { url, status: 404 });
        if (body.length > policy.limits.maxFileBytes) throw new StorageError('too-large', `${label} is ${body.length} bytes, over the per-file limit of ${policy.limits.maxFileBytes}. Use a smaller file.`, { url });
        totalBytes += body.length;
        if (totalBytes > policy.limits.maxTotalBytes) {
          throw new StorageError('too-large', `The dataset is larger than the limit of ${policy.limits.maxTotalBytes} bytes (exceeded while fetching image ${i + 1}). Remove images or use smaller files.`, { url });
        }
        const media = identifyMedia(body, true, i, url, { limits: policy.limits, allowVideo: opts.allowVideo });
        if (!media) throw new StorageError('invalid-content', `${label} could not be identified.`, { url });
        const base = `img_${String(i + 1).padStart(width, '0')}`;
        const fileName = `${base}.${media.type.ext}`;
        written.push(path.join(destDir, fileName));
        await fsp.writeFile(path.join(destDir, fileName), body);
        const caption = opts.captionFor ? opts.captionFor(captions.captions[i] ?? '', i) : captions.captions[i];
        let captionFileName = '';
        if (caption) {
          captionFileName = `${base}.txt`;
          written.push(path.join(destDir, captionFileName));
          await fsp.writeFile(path.join(destDir, captionFileName), caption, 'utf8');
        }
        images.push({ fileName, captionFileName, sourceUrl: url, bytes: body.length, mime: media.type.mime, ...(media.dimensions ?? {}) });
        opts.onProgress?.({ completedFiles: i + 1, totalFiles: dataset.images.length, bytes: totalBytes, fileName });
      }
    } catch (err) {
      await Promise.all(written.map((f) => fsp.rm(f, { force: true })));
      throw err;
    }
    return { images, totalBytes, captionSource: captions.source, captionedCount: images.filter((x) => x.captionFileName).length };
  }
}
