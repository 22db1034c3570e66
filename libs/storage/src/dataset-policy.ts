/**
 * What a dataset may contain and where its images may come from: one set of
 * rules, used twice. `checkDatasetSourcesOffline` applies them with no network
 * (the worker calls it before charging anything); `DatasetFetcher` calls the
 * same functions again at fetch time, on every URL and every redirect hop, and
 * checks each file's bytes and declared pixel size against the same limits.
 */
import { BlockList, isIP } from 'node:net';
import { z } from 'zod';
import type { R2Config } from './config';
import { StorageError, redactUrl, type StorageErrorKind } from './errors';
import { MAX_DIMENSION_HEADER_BYTES, SNIFF_BYTES, describeHead, readImageDimensions, sniffType, type ImageDimensions, type SniffedType } from './magic';
import { matchOwnUrl, type OwnBuckets, type OwnUrlMatch } from './public-urls';

/** Limits on a dataset, its files and its images. Validated once by `resolveFetchLimits`. */
export interface FetchLimits {
  /**
   * Bytes per file.
   * @default 52428800 (50 MiB, the platform's upload limit)
   */
  maxFileBytes: number;
  /**
   * Bytes for the whole dataset.
   * @default 2147483648 (2 GiB)
   */
  maxTotalBytes: number;
  /**
   * Number of images.
   * @default 1000
   */
  maxImages: number;
  /**
   * Smallest accepted width and height, in pixels. FLUX and WAN turn 16×16
   * pixels into one latent token (VAE /8, then 2×2 patches), so below 16 an
   * image carries nothing the trainers can learn from; above it, sd-scripts
   * and musubi-tuner resize into their buckets. Recipes that want more raise it.
   * @default 16
   */
  minSidePx: number;
  /**
   * Largest accepted width or height, in pixels: libwebp's own limit (16383)
   * rounded up; a wider side is a decompression bomb or a panorama no bucket fits.
   * @default 16384
   */
  maxSidePx: number;
  /**
   * Most pixels per image: Pillow's `Image.MAX_IMAGE_PIXELS`, which both
   * engines keep (neither overrides it). Above it Pillow warns of a
   * decompression bomb; above twice it refuses to open the file, so the job
   * would fail in the trainer after the charge.
   * @default 89478485
   */
  maxPixels: number;
}

const fetchLimitsSchema = z
  .object({
    maxFileBytes: z.number().int().positive().default(50 * 1024 ** 2),
    maxTotalBytes: z.number().int().positive().default(2 * 1024 ** 3),
    maxImages: z.number().int().positive().default(1000),
    minSidePx: z.number().int().min(1).default(16),
    maxSidePx: z.number().int().positive().default(16384),
    maxPixels: z.number().int().positive().default(89_478_485),
  })
  .refine((l) => l.minSidePx <= l.maxSidePx, { message: 'minSidePx must not exceed maxSidePx' });

/** The limits with every default applied. */
export const DEFAULT_FETCH_LIMITS: Readonly<FetchLimits> = Object.freeze(fetchLimitsSchema.parse({}));

/** Applies the defaults to partial limits and validates them; throws `invalid-argument` naming the bad field. */
export function resolveFetchLimits(partial: Partial<FetchLimits> = {}): FetchLimits {
  const r = fetchLimitsSchema.safeParse(partial);
  if (!r.success) {
    const issues = r.error.issues.map((i) => `${i.path.join('.') || 'limits'}: ${i.message}`).join('; ');
    throw new StorageError('invalid-argument', `Dataset limits are not valid (${issues}). Fix the recipe's or the caller's limits.`);
  }
  return r.data;
}

/** Where a dataset's images may come from, and how big it may be. */
export interface DatasetSourcePolicy {
  /** Our buckets: URLs into them are read through S3 by key, never fetched over HTTP. */
  buckets: OwnBuckets;
  /**
   * Other hosts images may be fetched from. `host` allows the scheme's default
   * port only; `host:port` allows that port. Literal private addresses are
   * refused unless listed exactly; the cloud metadata address never.
   */
  allowedHosts: readonly string[];
  limits: FetchLimits;
}

/** The policy from the storage config (own buckets, DATASET_ALLOWED_HOSTS) plus per-call hosts and limits. */
export function datasetSourcePolicy(
  config: Pick<R2Config, 'endpoint' | 'buckets' | 'datasetAllowedHosts'>,
  opts: { allowedHosts?: readonly string[]; limits?: Partial<FetchLimits> } = {},
): DatasetSourcePolicy {
  return {
    buckets: { endpoint: config.endpoint, buckets: config.buckets },
    allowedHosts: [...config.datasetAllowedHosts, ...(opts.allowedHosts ?? [])].map((h) => h.trim().toLowerCase()).filter(Boolean),
    limits: resolveFetchLimits(opts.limits),
  };
}

/**
 * A dataset as the checks read it: the platform's document (only `images`
 * and the optional declared `sizeBytes` are read; any type is accepted, the
 * shape is checked) or just its list of image URLs.
 */
export type DatasetSources = { images?: unknown; sizeBytes?: unknown } | readonly unknown[];

/** One thing wrong with a dataset. `index` is the 0-based image index, null for the dataset as a whole. */
export interface DatasetSourceProblem {
  index: number | null;
  kind: StorageErrorKind;
  /** Says which image, what is wrong and what to do; URLs in it are redacted. */
  message: string;
}

/** Cloud metadata endpoints (AWS/GCP/Azure/OpenStack, AWS IPv6, Alibaba): never fetched, whatever the allow-list says. */
const METADATA_ADDRESSES = new Set(['169.254.169.254', 'fd00:ec2::254', '100.100.100.200']);

const SPECIAL_V4: [string, number, string][] = [
  ['0.0.0.0', 8, 'an unspecified ("this network") address'],
  ['10.0.0.0', 8, 'a private address'],
  ['100.64.0.0', 10, 'a carrier-grade NAT address'],
  ['127.0.0.0', 8, 'a loopback address'],
  ['169.254.0.0', 16, 'a link-local address'],
  ['172.16.0.0', 12, 'a private address'],
  ['192.0.0.0', 24, 'an IETF protocol address'],
  ['192.168.0.0', 16, 'a private address'],
  ['198.18.0.0', 15, 'a benchmarking address'],
  ['224.0.0.0', 4, 'a multicast address'],
  ['240.0.0.0', 4, 'a reserved address'],
];
const SPECIAL_V6: [string, number, string][] = [
  ['::', 128, 'an unspecified address'],
  ['::1', 128, 'a loopback address'],
  ['fc00::', 7, 'a private (unique local) address'],
  ['fe80::', 10, 'a link-local address'],
  ['ff00::', 8, 'a multicast address'],
];
const specialLists = [...SPECIAL_V4.map(([a, p, why]) => ({ why, list: subnet(a, p, 'ipv4') })), ...SPECIAL_V6.map(([a, p, why]) => ({ why, list: subnet(a, p, 'ipv6') }))];

function subnet(address: string, prefix: number, type: 'ipv4' | 'ipv6'): BlockList {
  const l = new BlockList();
  l.addSubnet(address, prefix, type);
  return l;
}

/** The IPv4 address inside an IPv4-mapped (::ffff:a.b.c.d) or NAT64 (64:ff9b::a.b.c.d) IPv6 address. */
function embeddedV4(ip6: string): string | null {
  const m = /^(?:::ffff:|64:ff9b::)(?:(\d+\.\d+\.\d+\.\d+)|([0-9a-f]{1,4}):([0-9a-f]{1,4}))$/i.exec(ip6);
  if (!m) return null;
  if (m[1]) return m[1];
  const hi = parseInt(m[2], 16);
  const lo = parseInt(m[3], 16);
  return `${hi >> 8}.${hi & 255}.${lo >> 8}.${lo & 255}`;
}

/**
 * Why a literal IP must not be fetched ('a loopback address', ...), or null
 * for a public address. `metadata` is set for cloud metadata endpoints.
 */
export function specialAddressReason(ip: string): { why: string; metadata: boolean } | null {
  let addr = ip.replace(/^\[|\]$/g, '').toLowerCase();
  let family = isIP(addr);
  if (family === 0) return null;
  const v4 = family === 6 ? embeddedV4(addr) : null;
  if (v4) {
    addr = v4;
    family = 4;
  }
  if (METADATA_ADDRESSES.has(addr)) return { why: 'the cloud metadata address', metadata: true };
  if (addr === '255.255.255.255') return { why: 'the broadcast address', metadata: false };
  const type = family === 4 ? 'ipv4' : 'ipv6';
  for (const s of specialLists) if (s.list.check(addr, type)) return { why: s.why, metadata: false };
  return null;
}

/** How errors name a dataset item: its 1-based number and its redacted URL. */
export function mediaLabel(index: number, url: string): string {
  return `Image ${index + 1} (${redactUrl(url)})`;
}

/**
 * Checks one image URL against the policy, with no network. Returns the
 * problem, or the own-bucket match (read by key) / null (fetch over HTTP).
 * The fetcher calls this for the dataset's URLs and again for every redirect.
 */
export function checkSourceUrl(url: unknown, index: number, policy: DatasetSourcePolicy): { problem: DatasetSourceProblem } | { own: OwnUrlMatch & { key: string } } | { own: null } {
  const fail = (kind: StorageErrorKind, why: string) => ({ problem: { index, kind, message: `${mediaLabel(index, String(url))} ${why}` } });
  if (typeof url !== 'string' || url.length === 0) return fail('disallowed-url', 'is not a URL string. Remove it from the dataset.');
  if (url.length > 4096) return fail('disallowed-url', 'is longer than 4096 characters. Remove it from the dataset.');
  let u: URL;
  try {
    u = new URL(url);
  } catch {
    return fail('disallowed-url', 'is not an absolute URL. Remove it from the dataset.');
  }
  if (u.protocol !== 'https:' && u.protocol !== 'http:') {
    return fail('disallowed-url', `uses the scheme '${u.protocol}'; only http(s) URLs are fetched. Upload the image to the dataset instead.`);
  }
  if (u.username || u.password) return fail('disallowed-url', 'carries credentials (user:password@); URLs with credentials are not allowed. Upload the image to the dataset instead.');
  const own = matchOwnUrl(policy.buckets, url);
  if (own) {
    if (own.key === null) {
      return fail('invalid-name', `points into our '${own.bucketAlias}' bucket with a key that is not allowed ('.'/'..' segments, an absolute key, control characters or similar). Upload the image again.`);
    }
    return { own: { bucketAlias: own.bucketAlias, key: own.key } };
  }
  const host = u.host.toLowerCase();
  const listed = policy.allowedHosts.includes(host) || (u.port === '' && policy.allowedHosts.includes(u.hostname.toLowerCase()));
  const special = specialAddressReason(u.hostname);
  if (special?.metadata) return fail('disallowed-url', `is on host '${u.host}', ${special.why}, which is never fetched. Remove it from the dataset.`);
  if (special && !policy.allowedHosts.includes(host)) {
    return fail('disallowed-url', `is on host '${u.host}', ${special.why}; internal addresses are never fetched unless allow-listed exactly. Remove it from the dataset.`);
  }
  if (!special && /(^|\.)localhost\.?$/i.test(u.hostname) && !policy.allowedHosts.includes(host)) {
    return fail('disallowed-url', `is on host '${u.host}', this machine; internal addresses are never fetched unless allow-listed exactly. Remove it from the dataset.`);
  }
  if (!listed) {
    const portNote = u.port !== '' && policy.allowedHosts.includes(u.hostname.toLowerCase()) ? ` on port ${u.port} (only the default port is allowed for '${u.hostname}')` : '';
    return fail('disallowed-url', `is on host '${u.host}'${portNote}, which is neither one of our buckets nor allow-listed (DATASET_ALLOWED_HOSTS). Upload the image to the dataset instead.`);
  }
  return { own: null };
}

/**
 * Every problem with a dataset's sources that can be found without the
 * network: the image list's shape and count, the declared size
 * (`sizeBytes`), and each URL (scheme, credentials, host allow-list, port,
 * internal addresses, own-bucket keys). An empty list means the fetch may
 * start; the fetcher still checks each file's bytes, type and pixel size.
 */
export function checkDatasetSourcesOffline(dataset: DatasetSources, policy: DatasetSourcePolicy): DatasetSourceProblem[] {
  const images: unknown = Array.isArray(dataset) ? dataset : (dataset as { images?: unknown }).images;
  const problems: DatasetSourceProblem[] = [];
  if (!Array.isArray(images)) {
    return [{ index: null, kind: 'invalid-argument', message: 'The dataset has no image list (images is not an array). Add images to the dataset.' }];
  }
  const { limits } = policy;
  if (images.length > limits.maxImages) {
    problems.push({ index: null, kind: 'too-large', message: `The dataset has ${images.length} images; the limit is ${limits.maxImages}. Remove images or raise the recipe's limit.` });
  }
  const declared = Array.isArray(dataset) ? undefined : (dataset as { sizeBytes?: unknown }).sizeBytes;
  if (typeof declared === 'number' && declared > limits.maxTotalBytes) {
    problems.push({ index: null, kind: 'too-large', message: `The dataset declares ${declared} bytes; the limit is ${limits.maxTotalBytes}. Remove images or use smaller files.` });
  }
  images.slice(0, limits.maxImages + 1).forEach((url, i) => {
    const r = checkSourceUrl(url, i, policy);
    if ('problem' in r) problems.push(r.problem);
  });
  return problems;
}

/** `checkDatasetSourcesOffline`, throwing a StorageError for the first problem (its message counts the others). */
export function assertDatasetSourcesOffline(dataset: Parameters<typeof checkDatasetSourcesOffline>[0], policy: DatasetSourcePolicy): void {
  const problems = checkDatasetSourcesOffline(dataset, policy);
  if (problems.length === 0) return;
  const [first] = problems;
  const more = problems.length > 1 ? ` (${problems.length - 1} more problem${problems.length > 2 ? 's' : ''} in this dataset)` : '';
  throw new StorageError(first.kind, `${first.message}${more}`);
}

/** Null when an image's declared size is within the limits, else what is wrong (naming the image and its size). */
export function imageDimensionsProblem(d: ImageDimensions, index: number, url: string, limits: FetchLimits): DatasetSourceProblem | null {
  const size = `${d.width}×${d.height}`;
  const fail = (why: string): DatasetSourceProblem => ({ index, kind: 'invalid-content', message: `${mediaLabel(index, url)} ${why}` });
  if (d.width < limits.minSidePx || d.height < limits.minSidePx) {
    return fail(`is ${size} pixels; each side must be at least ${limits.minSidePx}. Use a larger image.`);
  }
  if (d.width > limits.maxSidePx || d.height > limits.maxSidePx) {
    return fail(`declares ${size} pixels; each side may be at most ${limits.maxSidePx}. Downscale it and upload it again.`);
  }
  if (d.width * d.height > limits.maxPixels) {
    return fail(`declares ${size} pixels (${((d.width * d.height) / 1e6).toFixed(1)} MP); the limit is ${(limits.maxPixels / 1e6).toFixed(1)} MP. Downscale it and upload it again.`);
  }
  return null;
}

/**
 * Identifies a file from its first bytes: its type by magic bytes and, for
 * an image, its declared width and height checked against the limits.
 * Returns null while more bytes are needed (`final`: the file has ended).
 * Throws an 'invalid-content' StorageError naming the image. The fetcher
 * feeds it the head of each stream; the in-memory fake the whole file.
 */
export function identifyMedia(
  head: Uint8Array,
  final: boolean,
  index: number,
  url: string,
  opts: { limits: FetchLimits; allowVideo?: boolean },
): { type: SniffedType; dimensions?: ImageDimensions } | null {
  // Called for each chunk until the type is known: the URL is redacted only once it is.
  if (head.length < SNIFF_BYTES && !final) return null;
  const name = mediaLabel(index, url);
  const type = sniffType(head);
  if (!type) {
    throw new StorageError('invalid-content', `${name} is not a JPEG, PNG or WebP${opts.allowVideo ? ', MP4 or WebM' : ''} file (starts with ${describeHead(head)}). Remove it from the dataset.`, { url });
  }
  if (type.kind === 'video') {
    if (!opts.allowVideo) throw new StorageError('invalid-content', `${name} is a ${type.mime} video, and this recipe accepts only images. Remove it from the dataset.`, { url });
    return { type };
  }
  const r = readImageDimensions(head);
  if (r.status === 'more' && !final && head.length < MAX_DIMENSION_HEADER_BYTES) return null;
  if (r.status !== 'ok') {
    const why = r.status === 'invalid' ? r.reason : final ? 'the file ends before its header does' : `no frame header in the first ${MAX_DIMENSION_HEADER_BYTES} bytes`;
    throw new StorageError('invalid-content', `${name} is a damaged ${type.mime} image: ${why}. Export it again and upload it.`, { url });
  }
  const problem = imageDimensionsProblem(r.dimensions, index, url, opts.limits);
  if (problem) throw new StorageError(problem.kind, problem.message, { url });
  return { type, dimensions: r.dimensions };
}
