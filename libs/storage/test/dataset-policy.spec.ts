/**
 * checkDatasetSourcesOffline: the rules a dataset must pass before anything
 * is charged or fetched. The 17 hostile datasets of issue 12, and more, with
 * no network (a URL that would be fetched would fail these tests by hanging
 * on the reserved .invalid TLD, not by passing).
 */
import {
  DEFAULT_FETCH_LIMITS,
  StorageError,
  assertDatasetSourcesOffline,
  checkDatasetSourcesOffline,
  datasetSourcePolicy,
  loadStorageConfig,
  resolveFetchLimits,
  specialAddressReason,
} from '../src';

const config = loadStorageConfig({
  R2_ACCOUNT_ID: '0123456789abcdef0123456789abcdef',
  R2_ACCESS_KEY_ID: 'AKID',
  R2_SECRET_ACCESS_KEY: 'secret',
  R2_BUCKET_NAME: 'stationthis-uploads',
  R2_PUBLIC_URL: 'https://uploads.miladystation2.net',
  DATASET_ALLOWED_HOSTS: 'images.example.org, mirror.example.org:8443, 10.1.2.3:8080',
});
const policy = datasetSourcePolicy(config);
const own = (key: string) => `https://datasets.miladystation2.net/${key}`;
const problemsOf = (images: unknown[]) => checkDatasetSourcesOffline({ images: images as string[] }, policy);

describe('checkDatasetSourcesOffline', () => {
  it('accepts our buckets (CDN, endpoint) and allow-listed hosts on their allowed ports', () => {
    expect(
      problemsOf([
        own('datasets/web-upload-user/a.png'),
        'https://0123456789abcdef0123456789abcdef.r2.cloudflarestorage.com/datasets/x/b.jpg?X-Amz-Signature=1',
        'https://images.example.org/c.webp',
        'http://images.example.org/d.png',
        'https://mirror.example.org:8443/e.png',
        'http://10.1.2.3:8080/f.png', // a private address an operator listed exactly
      ]),
    ).toEqual([]);
  });

  const hostile: [string, unknown, string, RegExp][] = [
    ['metadata IP', 'http://169.254.169.254/latest/meta-data/iam/', 'disallowed-url', /host '169\.254\.169\.254', the cloud metadata address, which is never fetched/],
    ['metadata IP, decimal spelling', 'http://2852039166/x.png', 'disallowed-url', /cloud metadata address/],
    ['metadata IP, IPv4-mapped IPv6', 'http://[::ffff:169.254.169.254]/x.png', 'disallowed-url', /cloud metadata address/],
    ['AWS IPv6 metadata', 'http://[fd00:ec2::254]/', 'disallowed-url', /cloud metadata address/],
    ['loopback', 'http://127.0.0.1:6379/', 'disallowed-url', /host '127\.0\.0\.1:6379', a loopback address; internal addresses are never fetched/],
    ['loopback elsewhere in 127/8', 'http://127.8.9.10/x.png', 'disallowed-url', /loopback/],
    ['IPv6 loopback', 'http://[::1]:9000/x.png', 'disallowed-url', /loopback/],
    ['localhost', 'http://localhost:27017/', 'disallowed-url', /host 'localhost:27017', this machine/],
    ['0.0.0.0', 'http://0.0.0.0/x.png', 'disallowed-url', /unspecified/],
    ['10/8', 'http://10.0.0.5/x.png', 'disallowed-url', /private address/],
    ['172.16/12', 'http://172.31.255.1/x.png', 'disallowed-url', /private address/],
    ['192.168/16', 'https://192.168.1.1/x.png', 'disallowed-url', /private address/],
    ['fc00::/7', 'http://[fd12:3456::1]/x.png', 'disallowed-url', /unique local/],
    ['fe80::/10', 'http://[fe80::1]/x.png', 'disallowed-url', /link-local/],
    ['listed private IP on another port', 'http://10.1.2.3:9999/x.png', 'disallowed-url', /private address/],
    ['file://', 'file:///etc/passwd', 'disallowed-url', /scheme 'file:'/],
    ['gopher://', 'gopher://images.example.org:70/_x', 'disallowed-url', /scheme 'gopher:'/],
    ['ftp://', 'ftp://images.example.org/x.png', 'disallowed-url', /scheme 'ftp:'/],
    ['data:', 'data:image/png;base64,iVBORw0KGgo=', 'disallowed-url', /scheme 'data:'/],
    ['credentials', 'https://user:pass@images.example.org/x.png', 'disallowed-url', /carries credentials/],
    ['host not listed', 'https://evil.example/x.png', 'disallowed-url', /host 'evil\.example', which is neither one of our buckets nor allow-listed/],
    ['look-alike of our CDN', 'https://datasets.miladystation2.net.evil.example/x.png', 'disallowed-url', /neither one of our buckets/],
    ['listed host, other port', 'https://images.example.org:8080/x.png', 'disallowed-url', /only the default port is allowed for 'images\.example\.org'/],
    ['own-bucket traversal, encoded', own('datasets/..%2F..%2Fmodels/loras/x.safetensors'), 'invalid-name', /points into our 'datasets' bucket with a key that is not allowed/],
    ['own-bucket traversal, raw', own('datasets/a/../../models/x'), 'invalid-name', /key that is not allowed/],
    ['own-bucket dot segment, %2e', own('datasets/%2e%2e/x.png'), 'invalid-name', /key that is not allowed/],
    ['own-bucket absolute key', 'https://datasets.miladystation2.net//etc/passwd', 'invalid-name', /key that is not allowed/],
    ['not a URL', 'not a url', 'disallowed-url', /is not an absolute URL/],
    ['not a string', { $gt: '' }, 'disallowed-url', /is not a URL string/],
  ];
  it.each(hostile)('rejects %s', (_name, url, kind, message) => {
    const problems = problemsOf([own('datasets/ok.png'), url]);
    expect(problems).toHaveLength(1);
    expect(problems[0]).toMatchObject({ index: 1, kind });
    expect(problems[0].message).toMatch(/^Image 2 /);
    expect(problems[0].message).toMatch(message);
  });

  it('never prints the credentials of a URL it rejects', () => {
    const [p] = problemsOf(['https://user:hunter2@images.example.org/x.png']);
    expect(p.message).not.toContain('hunter2');
  });

  it('reports every problem, with its index, and the dataset-level ones', () => {
    const images = Array.from({ length: 1001 }, (_, i) => (i === 3 ? 'file:///x' : own(`datasets/${i}.png`)));
    const problems = checkDatasetSourcesOffline({ images, sizeBytes: 3 * 1024 ** 3 }, policy);
    expect(problems.map((p) => [p.index, p.kind])).toEqual([
      [null, 'too-large'],
      [null, 'too-large'],
      [3, 'disallowed-url'],
    ]);
    expect(problems[0].message).toMatch(/1001 images; the limit is 1000/);
    expect(problems[1].message).toMatch(/declares 3221225472 bytes; the limit is 2147483648/);
    expect(checkDatasetSourcesOffline({ images: 'x' as never }, policy)[0]).toMatchObject({ index: null, kind: 'invalid-argument' });
    expect(checkDatasetSourcesOffline([own('datasets/a.png')], policy)).toEqual([]);
  });

  it('per-call hosts and limits add to the config', () => {
    const p = datasetSourcePolicy(config, { allowedHosts: ['cdn.partner.example'], limits: { maxImages: 2 } });
    expect(checkDatasetSourcesOffline({ images: ['https://cdn.partner.example/a.png'] }, p)).toEqual([]);
    expect(checkDatasetSourcesOffline({ images: [own('a'), own('b'), own('c')] }, p)[0].message).toMatch(/limit is 2/);
  });

  it('assertDatasetSourcesOffline throws the first problem and counts the rest', () => {
    expect(() => assertDatasetSourcesOffline({ images: ['file:///a', 'http://169.254.169.254/', own('ok.png')] }, policy)).toThrow(
      expect.objectContaining({ name: 'StorageError', kind: 'disallowed-url', message: expect.stringMatching(/^Image 1 .*scheme 'file:'.*\(1 more problem in this dataset\)$/) }),
    );
    expect(() => assertDatasetSourcesOffline({ images: [own('ok.png')] }, policy)).not.toThrow();
  });
});

describe('specialAddressReason', () => {
  it('classifies literal addresses and leaves names and public IPs alone', () => {
    expect(specialAddressReason('169.254.169.254')).toEqual({ why: 'the cloud metadata address', metadata: true });
    expect(specialAddressReason('100.100.100.200')?.metadata).toBe(true);
    expect(specialAddressReason('169.254.1.1')?.why).toBe('a link-local address');
    expect(specialAddressReason('[::ffff:7f00:1]')?.why).toBe('a loopback address');
    expect(specialAddressReason('255.255.255.255')?.why).toBe('the broadcast address');
    expect(specialAddressReason('8.8.8.8')).toBeNull();
    expect(specialAddressReason('2606:4700::1111')).toBeNull();
    expect(specialAddressReason('images.example.org')).toBeNull();
  });
});

describe('resolveFetchLimits', () => {
  it('applies the documented defaults and refuses nonsense once, naming the field', () => {
    expect(resolveFetchLimits()).toEqual(DEFAULT_FETCH_LIMITS);
    expect(DEFAULT_FETCH_LIMITS).toEqual({ maxFileBytes: 52428800, maxTotalBytes: 2147483648, maxImages: 1000, minSidePx: 16, maxSidePx: 16384, maxPixels: 89478485 });
    expect(resolveFetchLimits({ maxImages: 5 }).maxImages).toBe(5);
    expect(() => resolveFetchLimits({ maxImages: -1 })).toThrow(StorageError);
    expect(() => resolveFetchLimits({ maxImages: -1 })).toThrow(/maxImages/);
    expect(() => resolveFetchLimits({ minSidePx: 500, maxSidePx: 100 })).toThrow(/minSidePx must not exceed maxSidePx/);
  });
});
