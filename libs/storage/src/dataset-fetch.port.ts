/**
 * Port: a platform dataset into a job folder. The worker's prepare step calls
 * `checkSources` before the charge; its inputs step calls `fetch`.
 * Real adapter: DatasetFetcher. Fake: InMemoryDatasetFetch (../testing).
 */
import type { InjectionToken } from 'tsyringe';
import type { PlatformDatasetDoc } from './captions';
import type { DatasetSourceProblem, DatasetSources, FetchLimits } from './dataset-policy';

export interface FetchProgress {
  completedFiles: number;
  totalFiles: number;
  /** Bytes written so far, all files. */
  bytes: number;
  /** Set when a file has just completed. */
  fileName?: string;
}

/** What the offline checks need besides the storage config. */
export interface SourceCheckOptions {
  /**
   * Limits on the dataset; missing fields take the defaults of `FetchLimits`.
   * @default DEFAULT_FETCH_LIMITS
   */
  limits?: Partial<FetchLimits>;
  /**
   * Hosts (or host:port) allowed besides our buckets; added to DATASET_ALLOWED_HOSTS.
   * @default []
   */
  allowedHosts?: string[];
}

export interface FetchOptions extends SourceCheckOptions {
  onProgress?: (p: FetchProgress) => void;
  /** The caption set or embellishment to use; unset: the platform's selection order. */
  captionSetId?: string;
  /**
   * The caption the engine trains on, from the platform's caption ('' when the
   * item has none): the recipes' rule (libs/recipes `trainingCaption`, which
   * adds the trigger word). When given, every item gets a caption file, because
   * musubi-tuner drops uncaptioned images and sd-scripts trains them on its
   * class tokens only; without it, only captioned items get one.
   */
  captionFor?: (caption: string, index: number) => string;
  /**
   * Accept mp4/webm clips (video recipes).
   * @default false
   */
  allowVideo?: boolean;
  /**
   * Downloads in flight.
   * @default 4
   */
  concurrency?: number;
  /**
   * Per-file timeout in ms.
   * @default 120000
   */
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
  /** Declared pixel size, for images (not set for video clips). */
  width?: number;
  height?: number;
}

export interface FetchedDataset {
  images: FetchedImage[];
  totalBytes: number;
  /** Which caption set was used, e.g. 'embellishment:<id> (default+completed)', or 'none'. */
  captionSource: string;
  captionedCount: number;
}

export interface DatasetFetchPort {
  /** Every problem found without the network (URLs, counts, declared sizes); [] when the fetch may start. */
  checkSources(dataset: DatasetSources, opts?: SourceCheckOptions): DatasetSourceProblem[];
  /**
   * Downloads every image (and caption) into `destDir` as img_0001.<ext>.
   * Rejects with a StorageError whose kind says whose problem it is: the
   * dataset's ('disallowed-url', 'invalid-name', 'invalid-content',
   * 'too-large', 'not-found') or ours ('unavailable'); on any failure,
   * nothing it wrote is left behind.
   */
  fetch(dataset: PlatformDatasetDoc, destDir: string, opts?: FetchOptions): Promise<FetchedDataset>;
}

export const DATASET_FETCH_PORT = Symbol('DatasetFetchPort') as InjectionToken<DatasetFetchPort>;
