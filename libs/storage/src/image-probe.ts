/**
 * Reads the declared size of dataset images from their first bytes, without
 * downloading them: what the worker checks before it charges anything (e.g.
 * that a Kontext control image has its target's shape).
 *
 * - Each URL is opened by `openDatasetSource`, the dataset fetcher's own
 *   opener: the same URL rules, SSRF guards, redirect rules and per-file
 *   size limit apply.
 * - A ranged GET for the first `maxBytes`; a server that ignores the Range
 *   is cut off there.
 * - The header is read by `identifyMedia`, the fetcher's own reader, so an
 *   image refused here is refused with the message the download would give.
 * - Bounded concurrency, a timeout per file, and the caller's signal.
 *
 * Outcomes: `ok` (the size), `refused` (the file itself is at fault, and the
 * download would fail the same way) or `unread` (network, timeout, a server
 * error, or a header further in than `maxBytes`: not the user's fault, and the
 * download checks it again).
 */
import { inject, injectable } from 'tsyringe';
import type { Readable } from 'node:stream';
import type { SourceCheckOptions } from './dataset-fetch.port';
import { datasetSourcePolicy, identifyMedia, mediaLabel, type DatasetSourcePolicy } from './dataset-policy';
import { openDatasetSource } from './dataset-source';
import { StorageError, type StorageErrorKind } from './errors';
import type { ImageDimensions } from './magic';
import { ObjectStorage } from './object-storage';

/** @default for ProbeOptions.maxBytes: 64 KiB holds the header of nearly every image (JPEGs with large EXIF/ICC blocks excepted). */
export const PROBE_HEADER_BYTES = 64 * 1024;
const DEFAULT_CONCURRENCY = 4;
const DEFAULT_TIMEOUT_MS = 10_000;

/** Kinds of failure that are the file's own: the download would fail the same way. The rest are left to the download. */
const FILE_FAULTS: ReadonlySet<StorageErrorKind> = new Set(['invalid-content', 'too-large', 'disallowed-url', 'invalid-name', 'not-found']);

export interface ImageProbeItem {
  url: string;
  /** 0-based index, for the message's "Image N (url)". */
  index: number;
}

export type ImageProbeResult =
  | { status: 'ok'; dimensions: ImageDimensions }
  /** The file is at fault; `message` names the image, what is wrong and what to do. */
  | { status: 'refused'; kind: StorageErrorKind; message: string }
  /** Could not be read now; the download reads it again. */
  | { status: 'unread'; message: string };

export interface ProbeOptions extends SourceCheckOptions {
  /**
   * Bytes read per file, at most.
   * @default PROBE_HEADER_BYTES (65536)
   */
  maxBytes?: number;
  /**
   * Files read at once.
   * @default 4
   */
  concurrency?: number;
  /**
   * Per-file timeout in ms.
   * @default 10000
   */
  timeoutMs?: number;
  /** Aborts the probes in flight; those not started are `unread`. */
  signal?: AbortSignal;
}

@injectable()
export class ImageHeaderProbe {
  constructor(@inject(ObjectStorage) private readonly storage: ObjectStorage) {}

  /** One result per item, in order. Never rejects for a file's sake. */
  async probe(items: readonly ImageProbeItem[], opts: ProbeOptions = {}): Promise<ImageProbeResult[]> {
    const policy = datasetSourcePolicy(this.storage.config, opts);
    const results: ImageProbeResult[] = new Array(items.length);
    let next = 0;
    const worker = async () => {
      for (;;) {
        const i = next++;
        if (i >= items.length) return;
        results[i] = opts.signal?.aborted ? { status: 'unread', message: 'cancelled' } : await this.probeOne(items[i], policy, opts);
      }
    };
    const n = Math.max(1, Math.min(opts.concurrency ?? DEFAULT_CONCURRENCY, items.length));
    await Promise.all(Array.from({ length: n }, worker));
    return results;
  }

  private async probeOne(item: ImageProbeItem, policy: DatasetSourcePolicy, opts: ProbeOptions): Promise<ImageProbeResult> {
    const maxBytes = opts.maxBytes ?? PROBE_HEADER_BYTES;
    const timeoutMs = opts.timeoutMs ?? DEFAULT_TIMEOUT_MS;
    const timeout = AbortSignal.timeout(timeoutMs);
    const signal = opts.signal ? AbortSignal.any([opts.signal, timeout]) : timeout;
    const label = mediaLabel(item.index, item.url);
    let body: Readable | undefined;
    try {
      body = await openDatasetSource(this.storage, item.url, item.index, label, policy, { signal, range: { start: 0, end: maxBytes - 1 } });
      const dimensions = await readHeader(body, item, maxBytes, policy);
      return dimensions ? { status: 'ok', dimensions } : { status: 'unread', message: `${label}: no image header in the first ${maxBytes} bytes` };
    } catch (err) {
      if (err instanceof StorageError && FILE_FAULTS.has(err.kind)) return { status: 'refused', kind: err.kind, message: err.message };
      if (timeout.aborted) return { status: 'unread', message: `${label}: no header within ${timeoutMs} ms` };
      return { status: 'unread', message: `${label}: ${(err as Error).message ?? String(err)}` };
    } finally {
      body?.destroy();
    }
  }
}

/**
 * The size the header declares, or undefined when `maxBytes` end before the
 * header does. Throws the fetcher's StorageError for a file that is not an
 * accepted image, is damaged or is outside the pixel limits.
 */
async function readHeader(body: Readable, item: ImageProbeItem, maxBytes: number, policy: DatasetSourcePolicy): Promise<ImageDimensions | undefined> {
  const chunks: Buffer[] = [];
  let length = 0;
  for await (const chunk of body as AsyncIterable<Buffer>) {
    // A server that ignored the Range sends the whole file: keep only the first maxBytes, then stop reading.
    const part = chunk.subarray(0, maxBytes - length);
    chunks.push(part);
    length += part.length;
    const head = Buffer.concat(chunks, length);
    const got = identifyMedia(head, false, item.index, item.url, { limits: policy.limits, allowVideo: false });
    if (got) return got.dimensions;
    if (length >= maxBytes) return undefined;
  }
  // The file ended within maxBytes: the whole file was read, so a header that does not fit is damaged.
  return identifyMedia(Buffer.concat(chunks, length), true, item.index, item.url, { limits: policy.limits, allowVideo: false })?.dimensions;
}
