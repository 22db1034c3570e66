/**
 * URLs of our objects: the public (CDN) URL of a key, presigned GETs, and the
 * reverse, recognising a URL that points into one of our buckets. Pure
 * functions of the config (presigning signs locally, it sends nothing).
 */
import { GetObjectCommand, type S3Client } from '@aws-sdk/client-s3';
import { getSignedUrl } from '@aws-sdk/s3-request-presigner';
import { BUCKET_ALIASES, resolveBucketAlias, type BucketAlias, type R2Config } from './config';
import { StorageError } from './errors';
import { assertSafeKey, encodeKeyForUrl, unsafeKeyReason } from './keys';

/** Presigned URLs: R2 accepts 1 s to 7 days. */
export const MAX_PRESIGN_SECONDS = 7 * 24 * 3600;

/** The parts of the config that say where our buckets are. */
export type OwnBuckets = Pick<R2Config, 'endpoint' | 'buckets'>;

/** A URL into one of our buckets; `key` is null when the key is unsafe ('..' segments, control characters, absolute). */
export interface OwnUrlMatch {
  bucketAlias: BucketAlias;
  key: string | null;
}

/** The public CDN URL of an object. */
export function publicUrlOf(buckets: OwnBuckets, alias: BucketAlias | 'default', key: string): string {
  const b = buckets.buckets[resolveBucketAlias(alias)];
  assertSafeKey(key, b.bucket);
  return `${b.publicBaseUrl}/${encodeKeyForUrl(key)}`;
}

/** Dot segments in the path as written ('/../', '/./', or their %2e spellings), which URL parsing would silently resolve. */
function hasDotSegments(rawUrl: string): boolean {
  const rest = rawUrl.replace(/^[a-z][a-z0-9+.-]*:\/\/[^/?#]*/i, '').split(/[?#]/)[0];
  return rest.split(/\/|%2f/i).some((s) => /^(\.|%2e){1,2}$/i.test(s));
}

/**
 * Recognises URLs that point into our buckets: the CDN base of each alias,
 * the path-style endpoint URL and the virtual-hosted endpoint URL. Query
 * strings (e.g. a presigned signature) are ignored. Returns null for any
 * other URL, and `key: null` for a URL into our buckets whose key is unsafe.
 */
export function matchOwnUrl(buckets: OwnBuckets, url: string): OwnUrlMatch | null {
  let u: URL;
  try {
    u = new URL(url);
  } catch {
    return null;
  }
  if (u.protocol !== 'https:' && u.protocol !== 'http:') return null;
  const ep = new URL(buckets.endpoint);
  const decode = (p: string): string | null => {
    if (hasDotSegments(url)) return null;
    try {
      const k = p.split('/').map(decodeURIComponent).join('/');
      return unsafeKeyReason(k) ? null : k;
    } catch {
      return null;
    }
  };
  for (const alias of BUCKET_ALIASES) {
    const b = buckets.buckets[alias];
    const pub = new URL(b.publicBaseUrl);
    const candidates = [
      { origin: pub.origin, pathPrefix: `${pub.pathname.replace(/\/+$/, '')}/` },
      { origin: ep.origin, pathPrefix: `${ep.pathname.replace(/\/+$/, '')}/${b.bucket}/` },
      { origin: `${ep.protocol}//${b.bucket}.${ep.host}`, pathPrefix: '/' },
    ];
    for (const c of candidates) {
      if (u.origin === c.origin && u.pathname.startsWith(c.pathPrefix) && u.pathname.length > c.pathPrefix.length) {
        return { bucketAlias: alias, key: decode(u.pathname.slice(c.pathPrefix.length)) };
      }
    }
  }
  return null;
}

/** A presigned GET on the S3 endpoint (presigned URLs do not work on R2 custom domains). */
export async function presignGetUrl(s3: S3Client, bucket: string, key: string, expiresInSeconds: number): Promise<string> {
  assertSafeKey(key, bucket);
  if (!Number.isInteger(expiresInSeconds) || expiresInSeconds < 1 || expiresInSeconds > MAX_PRESIGN_SECONDS) {
    throw new StorageError('invalid-argument', `Presigned URL expiry must be a whole number of seconds from 1 to ${MAX_PRESIGN_SECONDS} (7 days), got ${expiresInSeconds}.`, {
      bucket,
      key,
    });
  }
  return getSignedUrl(s3, new GetObjectCommand({ Bucket: bucket, Key: key }), { expiresIn: expiresInSeconds });
}
