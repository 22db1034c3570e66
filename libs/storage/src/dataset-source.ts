/**
 * Opens one dataset URL under the dataset rules: the one implementation the
 * dataset fetcher (whole files) and the image header probe (a ranged head)
 * share, so both apply the same URL rules and SSRF guards:
 * - every URL and every redirect hop passes `checkSourceUrl` (scheme,
 *   credentials, host allow-list, internal and metadata addresses);
 * - our own buckets are read through S3 by key, never over HTTP;
 * - redirects only within the same origin, at most MAX_REDIRECTS;
 * - a declared size over the per-file limit is refused before reading.
 * A `range` asks for those bytes only; a server may ignore it and send the
 * whole file, so the caller must still cut the body off at its own limit.
 */
import { Readable } from 'node:stream';
import { checkSourceUrl, type DatasetSourcePolicy, type FetchLimits } from './dataset-policy';
import { StorageError } from './errors';
import type { ObjectStorage } from './object-storage';

export const MAX_REDIRECTS = 3;

export interface OpenSourceOptions {
  /** Bytes start..end (inclusive), as an HTTP Range. @default the whole file */
  range?: { start: number; end: number };
  signal?: AbortSignal;
}

/** The body of one dataset URL. Rejects with a StorageError whose kind says whose fault it is. */
export async function openDatasetSource(
  storage: ObjectStorage,
  url: string,
  index: number,
  label: string,
  policy: DatasetSourcePolicy,
  opts: OpenSourceOptions = {},
): Promise<Readable> {
  const { signal, range } = opts;
  const limits: FetchLimits = policy.limits;
  const first = checkSourceUrl(url, index, policy);
  if ('problem' in first) throw new StorageError(first.problem.kind, first.problem.message, { url });
  if (first.own) {
    const { bucketAlias, key } = first.own;
    const r = await storage.getObjectStream(bucketAlias, key, { signal, ...(range ? { range } : {}) }).catch((err: unknown) => {
      if (err instanceof StorageError) {
        throw new StorageError(err.kind, `${label}: ${err.message}`, { bucket: err.bucket, key: err.key, status: err.status, cause: err });
      }
      throw err;
    });
    // totalBytes is the object's size also for a ranged read (from Content-Range).
    if (r.totalBytes > limits.maxFileBytes) {
      r.body.destroy();
      throw new StorageError('too-large', `${label} is ${r.totalBytes} bytes, over the per-file limit of ${limits.maxFileBytes}. Use a smaller file.`, {
        bucket: storage.bucket(bucketAlias).bucket,
        key,
      });
    }
    return r.body;
  }
  let u = new URL(url);
  const headers: Record<string, string> = { accept: 'image/*,video/*;q=0.9,*/*;q=0.1' };
  if (range) headers['range'] = `bytes=${range.start}-${range.end}`;
  for (let hop = 0; ; hop++) {
    let res: Response;
    try {
      res = await fetch(u, { redirect: 'manual', signal, headers });
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
      const hopCheck = checkSourceUrl(nextUrl.href, index, policy);
      if ('problem' in hopCheck) throw new StorageError(hopCheck.problem.kind, `${hopCheck.problem.message} (reached by a redirect)`, { url });
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
    // A 206's Content-Length is the range's; its Content-Range names the whole file's size.
    const whole = res.status === 206 ? /\/(\d+)$/.exec(res.headers.get('content-range') ?? '')?.[1] : res.headers.get('content-length');
    const len = Number(whole ?? NaN);
    if (Number.isFinite(len) && len > limits.maxFileBytes) {
      await res.body.cancel().catch(() => undefined);
      throw new StorageError('too-large', `${label} is ${len} bytes, over the per-file limit of ${limits.maxFileBytes}. Use a smaller file.`, { url });
    }
    return Readable.fromWeb(res.body as import('node:stream/web').ReadableStream);
  }
}
