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
import {
  BLANK_CONTROL_PNG_BASE64,
  checkControlSizes,
  controlFileNameFor,
  requiredWeights,
  testRunWeights,
  trainingCaption,
  type WeightFile,
} from '@stationthis/recipes';
import { WORKER_CONFIG } from '../../tokens';
import type { WorkerConfig } from '../../config/worker-config';
import { WorkerMetrics } from '../../observability/metrics';
import { JobFailure } from '../failures';
import type { JobContext } from '../job-context';
import type { Prepared, WeightHandle } from './attempt';
import { controlDirBeside, makeReadable } from './files';
import { testRunOf } from './test-run';

/** Storage error kinds caused by the dataset itself, not by our infrastructure. */
const DATASET_ERROR_KINDS = new Set(['disallowed-url', 'invalid-name', 'invalid-content', 'too-large', 'not-found']);

/** The dataset as fetched, plus the control images written beside it (file names relative to the control folder, in dataset order). */
export type FetchedInputs = FetchedDataset & { controlImages?: string[] };

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

  async fetchDataset(ctx: JobContext, p: Prepared, captionSetId: string | undefined): Promise<FetchedInputs> {
    const fetched = await this.fetchImages(ctx, p, captionSetId);
    if (!p.controls) return fetched;
    return { ...fetched, controlImages: await this.fetchControls(ctx, p.controls, fetched) };
  }

  private async fetchImages(ctx: JobContext, p: Prepared, captionSetId: string | undefined): Promise<FetchedDataset> {
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
      throw this.datasetFailure(ctx, e, 'the dataset');
    }
  }

  /**
   * The control images beside the dataset, each named after its target's stem
   * (musubi pairs them by stem): the dataset's own controls (fetched by the
   * same rules as its images, as an image list in dataset order, so the i-th
   * control gets the i-th image's stem), or the blank control for every
   * target. A pair whose shapes differ fails here, before any training.
   */
  private async fetchControls(ctx: JobContext, need: NonNullable<Prepared['controls']>, fetched: FetchedDataset): Promise<string[]> {
    const controlDir = controlDirBeside(this.datasetDir(ctx.jobId));
    await rm(controlDir, { recursive: true, force: true });
    await mkdir(controlDir, { recursive: true });
    const pairing = need.pairing;
    if (need.need.source === 'blank') {
      const blank = Buffer.from(BLANK_CONTROL_PNG_BASE64, 'base64');
      const names = fetched.images.map((img) => controlFileNameFor(img.fileName, 'png'));
      for (const name of names) await writeFile(join(controlDir, name), blank, { mode: 0o644 });
      await makeReadable(controlDir);
      ctx.log.info({ controls: names.length }, 'blank control images written (style/subject mode)');
      return names;
    }
    // The prepare step pairs every concept job before the charge: no pairing here is a worker bug, never a reason for blanks.
    if (!pairing) throw new JobFailure('engine', 'The concept job reached the download without its checked control pairs. This is a worker bug.');
    let controls: FetchedDataset;
    try {
      controls = await this.fetcher.fetch({ images: pairing.pairs.map((x) => x.controlUrl) }, controlDir, { signal: ctx.signal, allowVideo: false });
    } catch (e) {
      throw this.datasetFailure(ctx, e, 'a control image');
    }
    this.metrics.bytesMoved.inc({ direction: 'down', kind: 'dataset' }, controls.totalBytes);
    const names = controls.images.map((c, i) => {
      const expected = controlFileNameFor(fetched.images[i]?.fileName ?? '', c.fileName.slice(c.fileName.lastIndexOf('.') + 1));
      if (expected !== c.fileName) throw new JobFailure('engine', `Control image ${i + 1} was stored as ${c.fileName}, not ${expected}: its target's stem. This is a worker bug.`);
      return c.fileName;
    });
    const mismatched = checkControlSizes(
      pairing.pairs.map((x, i) => ({ index: x.index, target: sizeOf(fetched.images[i]), control: sizeOf(controls.images[i]) })),
    );
    if (mismatched.length > 0) {
      throw new JobFailure(
        'dataset',
        `Each control image must have the same shape as its image (the trainer resizes the control to the image, which would distort it): ${mismatched.join('; ')}. Replace those control images and submit again.`,
      );
    }
    await makeReadable(controlDir);
    ctx.log.info({ controls: names.length, source: pairing.source }, 'control images fetched');
    return names;
  }

  /** A failure fetching user-given files: final when the file is at fault, retried when we are. */
  private datasetFailure(ctx: JobContext, e: unknown, what: 'the dataset' | 'a control image'): JobFailure {
    if (e instanceof JobFailure) return e;
    ctx.throwIfStopped();
    const kind = e instanceof StorageError ? e.kind : 'unavailable';
    // Problems with what the user gave us are final; problems on our side are retried.
    if (DATASET_ERROR_KINDS.has(kind)) {
      const control = what === 'a control image';
      const message = control ? (e as Error).message.replace(/^Image /, 'Control image ') : (e as Error).message;
      return new JobFailure('dataset', `The dataset could not be used: ${message} Fix or remove that ${control ? 'control image' : 'image'} and retry.`, { cause: e });
    }
    return new JobFailure('infrastructure', `Downloading ${what} failed: ${(e as Error).message}`, { cause: e });
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
    // Concept pairs train on the control set's transformation prompt when it has one, as the platform does.
    const conceptPrompt = p.controls?.pairing?.prompt;
    const fetched = await this.fetcher.fetch(p.dataset as unknown as PlatformDatasetDoc, datasetDir, {
      ...opts,
      captionSetId,
      captionFor: (caption) => trainingCaption(conceptPrompt ?? caption, p.triggerWord),
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
    const marker = { images: p.dataset.images, triggerWord: p.triggerWord, conceptPrompt: p.controls?.pairing?.prompt ?? null, captionSetId: null as string | null, fetched };
    await writeFile(`${datasetDir}.json`, JSON.stringify(marker));
  }

  /** A complete earlier fetch of the same image list, or null. */
  private async readPrefetched(datasetDir: string, p: Prepared): Promise<FetchedDataset | null> {
    try {
      const marker = JSON.parse(await readFile(`${datasetDir}.json`, 'utf8')) as { images: unknown; triggerWord?: string; conceptPrompt?: string | null; fetched: FetchedDataset };
      if (JSON.stringify(marker.images) !== JSON.stringify(p.dataset.images) || marker.triggerWord !== p.triggerWord) return null;
      // The captions carry the concept prompt: another prompt (or none) means other captions.
      if ((marker.conceptPrompt ?? null) !== (p.controls?.pairing?.prompt ?? null)) return null;
      for (const img of marker.fetched.images) await stat(join(datasetDir, img.fileName));
      return marker.fetched;
    } catch {
      return null;
    }
  }
}

function sizeOf(img: { width?: number; height?: number } | undefined): { width: number; height: number } | undefined {
  return img && img.width !== undefined && img.height !== undefined ? { width: img.width, height: img.height } : undefined;
}
