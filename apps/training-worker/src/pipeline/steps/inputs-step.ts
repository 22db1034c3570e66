/**
 * inputs: the dataset into the job folder (captions carrying the trigger
 * word) and the base-model weights into the host cache. Also the prefetch of
 * a still-QUEUED job's inputs while the slots are busy.
 */
import { existsSync } from 'node:fs';
import { mkdir, readFile, rm, stat, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { inject, injectable } from 'tsyringe';
import {
  DATASET_FETCH_PORT,
  StorageError,
  WEIGHT_CACHE_PORT,
  type DatasetFetchPort,
  type FetchedDataset,
  type FetchOptions,
  type PlatformDatasetDoc,
  type WeightCachePort,
} from '@stationthis/storage';
import { requiredWeights, testRunWeights, trainingCaption, type WeightFile } from '@stationthis/recipes';
import { WORKER_CONFIG } from '../../tokens';
import type { WorkerConfig } from '../../config/worker-config';
import { WorkerMetrics } from '../../observability/metrics';
import { JobFailure } from '../failures';
import type { JobContext } from '../job-context';
import type { Prepared, WeightHandle } from './attempt';
import { makeReadable } from './files';
import { testRunOf } from './test-run';

/** Storage error kinds caused by the dataset itself, not by our infrastructure. */
const DATASET_ERROR_KINDS = new Set(['disallowed-url', 'invalid-name', 'invalid-content', 'too-large', 'not-found']);

@injectable()
export class InputsStep {
  constructor(
    @inject(WORKER_CONFIG) private readonly config: WorkerConfig,
    @inject(DATASET_FETCH_PORT) private readonly fetcher: DatasetFetchPort,
    @inject(WEIGHT_CACHE_PORT) private readonly weights: WeightCachePort,
    private readonly metrics: WorkerMetrics,
  ) {}

  datasetDir(jobId: string): string {
    return join(this.config.jobsDir, jobId, 'dataset');
  }

  async fetchDataset(ctx: JobContext, p: Prepared, captionSetId: string | undefined): Promise<FetchedDataset> {
    // What prepare found worth saying but not worth refusing (e.g. fewer images than recommended).
    for (const warning of p.warnings) ctx.log.warn({ jobId: ctx.jobId }, warning);
    const datasetDir = this.datasetDir(ctx.jobId);
    const reused = await this.readPrefetched(datasetDir, p);
    if (reused) {
      ctx.log.info({ images: reused.images.length }, 'dataset already prefetched while the slot was busy');
      return reused;
    }
    try {
      const fetched = await this.download(datasetDir, p, captionSetId, { signal: ctx.signal, onProgress: (pr) => ctx.log.debug({ progress: pr }, 'dataset fetch progress') });
      ctx.log.info({ images: fetched.images.length, bytes: fetched.totalBytes }, 'dataset fetched');
      return fetched;
    } catch (e) {
      if (e instanceof JobFailure) throw e;
      ctx.throwIfStopped();
      const kind = e instanceof StorageError ? e.kind : 'unavailable';
      // Problems with what the user gave us are final; problems on our side are retried.
      if (DATASET_ERROR_KINDS.has(kind)) {
        throw new JobFailure('dataset', `The dataset could not be used: ${(e as Error).message} Fix or remove that image and retry.`, { cause: e });
      }
      throw new JobFailure('infrastructure', `Downloading the dataset failed: ${(e as Error).message}`, { cause: e });
    }
  }

  async fetchWeights(p: Prepared): Promise<WeightHandle[]> {
    const handles: WeightHandle[] = [];
    // Only the files these parameters need (WAN 2.1 vs 2.2 experts differ by tens of GB), with test-run overrides.
    const needed: WeightFile[] = requiredWeights(p.recipe, p.parameters as never);
    const weights = testRunOf(this.config, p.recipe) ? testRunWeights(p.recipe, needed).weights : needed;
    const pinned = new Map(needed.map((w) => [w.fileName, w.sha256]));
    try {
      for (const w of weights) {
        const local = this.config.weightsLocalDir ? join(this.config.weightsLocalDir, w.fileName) : undefined;
        const source = local && existsSync(local) ? ({ kind: 'local', path: local } as const) : ({ kind: 'r2', bucketAlias: 'models', key: w.r2Key } as const);
        // A test-run override is another file than the one the recipe pins a hash for.
        const h = await this.weights.acquire({ fileName: w.fileName, source, sha256: pinned.get(w.fileName), bytes: w.approxBytes });
        handles.push({ role: w.role, fileName: w.fileName, ...h });
      }
      return handles;
    } catch (e) {
      await Promise.all(handles.map((h) => h.release().catch(() => undefined)));
      throw new JobFailure('infrastructure', `Fetching the base-model weights failed: ${(e as Error).message}.`, { cause: e });
    }
  }

  /**
   * Prefetch the inputs of a job that is still QUEUED (no lease, no charge):
   * its dataset into the job folder and its base weights into the host cache,
   * so the attempt that claims it later starts training at once. Best effort:
   * anything wrong is left for the real attempt to find and report.
   */
  async prefetch(jobId: string, p: Prepared, captionSetId: string | undefined): Promise<void> {
    const datasetDir = this.datasetDir(jobId);
    if (!(await this.readPrefetched(datasetDir, p))) await this.download(datasetDir, p, captionSetId);
    for (const h of await this.fetchWeights(p)) await h.release();
  }

  /** Into a fresh folder, captions carrying the trigger word, readable by the container, with the prefetch marker. */
  private async download(datasetDir: string, p: Prepared, captionSetId: string | undefined, opts: Pick<FetchOptions, 'signal' | 'onProgress'> = {}): Promise<FetchedDataset> {
    await rm(datasetDir, { recursive: true, force: true });
    await mkdir(datasetDir, { recursive: true });
    const fetched = await this.fetcher.fetch(p.dataset as unknown as PlatformDatasetDoc, datasetDir, {
      ...opts,
      captionSetId,
      captionFor: (caption) => trainingCaption(caption, p.triggerWord),
      allowVideo: p.recipe.datasetRequirements.allowVideo,
    });
    this.metrics.bytesMoved.inc({ direction: 'down', kind: 'dataset' }, fetched.totalBytes);
    await makeReadable(datasetDir);
    await this.writePrefetchMarker(datasetDir, p, fetched);
    return fetched;
  }

  /** The marker sits beside the dataset folder (never inside the container mount). */
  private async writePrefetchMarker(datasetDir: string, p: Prepared, fetched: FetchedDataset): Promise<void> {
    // The caption files carry the trigger word: a changed trigger word invalidates the prefetch.
    const marker = { images: p.dataset.images, triggerWord: p.triggerWord, captionSetId: null as string | null, fetched };
    await writeFile(`${datasetDir}.json`, JSON.stringify(marker));
  }

  /** A complete earlier fetch of the same image list, or null. */
  private async readPrefetched(datasetDir: string, p: Prepared): Promise<FetchedDataset | null> {
    try {
      const marker = JSON.parse(await readFile(`${datasetDir}.json`, 'utf8')) as { images: unknown; triggerWord?: string; fetched: FetchedDataset };
      if (JSON.stringify(marker.images) !== JSON.stringify(p.dataset.images) || marker.triggerWord !== p.triggerWord) return null;
      for (const img of marker.fetched.images) await stat(join(datasetDir, img.fileName));
      return marker.fetched;
    } catch {
      return null;
    }
  }
}
