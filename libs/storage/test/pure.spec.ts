/** Pure parts: config, redaction, URL parsing, keys, captions, magic bytes, backoff. No services needed. */
import { createHash, createHmac, randomBytes } from 'node:crypto';
import { inspect } from 'node:util';
import {
  ObjectStorage,
  StorageError,
  ThreadPoolSha256,
  autoV2,
  backoffDelayMs,
  createS3Client,
  jobArtifactKey,
  loadStorageConfig,
  loraKey,
  selectCaptions,
  sniffType,
  type PlatformDatasetDoc,
} from '../src';
import { HTML, JPEG, MP4, PNG, WEBP } from './helpers';

const ACCOUNT = '0123456789abcdef0123456789abcdef';
const SECRET = 'super-secret-value-123';
const r2Env = {
  R2_ACCOUNT_ID: ACCOUNT,
  R2_ACCESS_KEY_ID: 'AKIDEXAMPLE',
  R2_SECRET_ACCESS_KEY: SECRET,
  R2_BUCKET_NAME: 'stationthis-uploads',
  R2_PUBLIC_URL: 'https://uploads.miladystation2.net/',
};

describe('loadStorageConfig', () => {
  it('builds the R2 config from the platform variable names', () => {
    const c = loadStorageConfig(r2Env);
    expect(c.mode).toBe('r2');
    expect(c.endpoint).toBe(`https://${ACCOUNT}.r2.cloudflarestorage.com`);
    expect(c.region).toBe('auto');
    expect(c.buckets.uploads).toEqual({ alias: 'uploads', bucket: 'stationthis-uploads', publicBaseUrl: 'https://uploads.miladystation2.net' });
    // datasets CDN derived by swapping the sub-domain, as the platform does
    expect(c.buckets.datasets).toEqual({ alias: 'datasets', bucket: 'datasets', publicBaseUrl: 'https://datasets.miladystation2.net' });
    expect(c.buckets.models).toEqual({ alias: 'models', bucket: 'models', publicBaseUrl: 'https://models.miladystation2.net' });
  });

  it('uses jurisdiction endpoints', () => {
    expect(loadStorageConfig({ ...r2Env, R2_JURISDICTION: 'eu' }).endpoint).toBe(`https://${ACCOUNT}.eu.r2.cloudflarestorage.com`);
    expect(loadStorageConfig({ ...r2Env, R2_JURISDICTION: 'us' }).endpoint).toBe(`https://${ACCOUNT}.us.r2.cloudflarestorage.com`);
    expect(() => loadStorageConfig({ ...r2Env, R2_JURISDICTION: 'mars' })).toThrow(/R2_JURISDICTION/);
  });

  it('names the missing variable, without the secret', () => {
    const env = { ...r2Env, R2_BUCKET_NAME: '' };
    expect(() => loadStorageConfig(env)).toThrow(/R2_BUCKET_NAME is required/);
    expect(() => loadStorageConfig({ NODE_ENV: 'production' })).toThrow(/R2_ACCOUNT_ID/);
  });

  it('has local defaults with path style and bucket-path public URLs', () => {
    const c = loadStorageConfig({});
    expect(c.mode).toBe('local');
    expect(c.endpoint).toBe('http://127.0.0.1:9000');
    expect(c.forcePathStyle).toBe(true);
    expect(c.credentials.accessKeyId).toBe('stationthis');
    expect(c.credentials.secretAccessKey).toBe('stationthis-local-secret');
    expect(c.buckets.uploads.publicBaseUrl).toBe('http://127.0.0.1:9000/uploads');
    expect(c.buckets.models.publicBaseUrl).toBe('http://127.0.0.1:9000/models');
    expect(c.weightCacheDir).toMatch(/\.state\/weights$/);
  });

  it('never prints the secret', () => {
    const c = loadStorageConfig(r2Env);
    expect(c.credentials.secretAccessKey).toBe(SECRET);
    expect(JSON.stringify(c)).not.toContain(SECRET);
    expect(inspect(c, { depth: 10 })).not.toContain(SECRET);
    expect(String(c.credentials)).not.toContain(SECRET);
    expect(`${JSON.stringify({ ...c })}`).not.toContain(SECRET);
  });
});

describe('ObjectStorage URLs (no network)', () => {
  const c = loadStorageConfig(r2Env);
  const storage = new ObjectStorage(c, createS3Client(c));

  it('builds public URLs with encoded keys', () => {
    expect(storage.publicUrl('models', 'loras/my lora.safetensors')).toBe('https://models.miladystation2.net/loras/my%20lora.safetensors');
    expect(storage.publicUrl('default', 'a/b.png')).toBe('https://uploads.miladystation2.net/a/b.png');
  });

  it('recognises CDN, path-style and virtual-hosted endpoint URLs', () => {
    expect(storage.parseOwnUrl('https://datasets.miladystation2.net/datasets/web-upload-user/abc-img%201.png')).toEqual({
      bucketAlias: 'datasets',
      key: 'datasets/web-upload-user/abc-img 1.png',
    });
    expect(storage.parseOwnUrl(`https://${ACCOUNT}.r2.cloudflarestorage.com/models/loras/x.safetensors?X-Amz-Signature=abc`)).toEqual({
      bucketAlias: 'models',
      key: 'loras/x.safetensors',
    });
    expect(storage.parseOwnUrl(`https://stationthis-uploads.${ACCOUNT}.r2.cloudflarestorage.com/training/a.safetensors`)).toEqual({
      bucketAlias: 'uploads',
      key: 'training/a.safetensors',
    });
    expect(storage.parseOwnUrl('https://evil.example/datasets/x.png')).toBeNull();
    expect(storage.parseOwnUrl('https://datasets.miladystation2.net.evil.example/x.png')).toBeNull();
    expect(storage.parseOwnUrl('https://datasets.miladystation2.net/a/..%2F..%2Fetc/passwd')).toBeNull();
    expect(storage.parseOwnUrl('file:///etc/passwd')).toBeNull();
  });

  it('bounds presigned URL expiry to 1 s .. 7 days', async () => {
    await expect(storage.presignGet('models', 'a', 0)).rejects.toMatchObject({ kind: 'invalid-argument' });
    await expect(storage.presignGet('models', 'a', 7 * 24 * 3600 + 1)).rejects.toMatchObject({ kind: 'invalid-argument' });
    const url = await storage.presignGet('models', 'loras/a.safetensors', 600);
    expect(url).toContain('X-Amz-Expires=600');
    expect(url).not.toContain(SECRET);
  });

  it('rejects unsafe keys before any request', async () => {
    await expect(storage.headObject('models', '../x')).rejects.toMatchObject({ kind: 'invalid-name' });
    await expect(storage.headObject('models', '/abs')).rejects.toMatchObject({ kind: 'invalid-name' });
    await expect(storage.deletePrefix('models', '')).rejects.toMatchObject({ kind: 'invalid-argument' });
    expect(() => storage.bucket('exports' as never)).toThrow(/Unknown bucket alias/);
  });
});

describe('keys and hashes', () => {
  it('places LoRAs and job artifacts', () => {
    expect(loraKey('milady-v2_1')).toBe('loras/milady-v2_1.safetensors');
    expect(() => loraKey('../x')).toThrow(StorageError);
    expect(() => loraKey('a b')).toThrow(/not allowed/);
    expect(jobArtifactKey('665f1c2e9b1d8a0012345678', 'samples/sample_000.png')).toBe('training-jobs/665f1c2e9b1d8a0012345678/samples/sample_000.png');
    expect(() => jobArtifactKey('job1', '../../loras/x.safetensors')).toThrow(/not allowed/);
    expect(() => jobArtifactKey('job/1', 'a')).toThrow(/not allowed/);
  });

  it('AutoV2 is the first 10 hex characters of the full sha256', () => {
    expect(autoV2('E3B0C44298FC1C149AFBF4C8996FB92427AE41E4649B934CA495991B7852B855')).toBe('e3b0c44298');
  });

  it('backoff grows exponentially, is capped, and is jittered', () => {
    const cfg = { baseDelayMs: 100, maxDelayMs: 1000 };
    expect(backoffDelayMs(1, cfg, () => 0.999)).toBe(99);
    expect(backoffDelayMs(3, cfg, () => 0.999)).toBe(399);
    expect(backoffDelayMs(10, cfg, () => 0.999)).toBe(999);
    expect(backoffDelayMs(3, cfg, () => 0)).toBe(0);
  });
});

describe('sniffType', () => {
  it('detects by magic bytes', () => {
    expect(sniffType(JPEG)?.mime).toBe('image/jpeg');
    expect(sniffType(PNG)?.mime).toBe('image/png');
    expect(sniffType(WEBP)?.mime).toBe('image/webp');
    expect(sniffType(MP4)?.mime).toBe('video/mp4');
    expect(sniffType(HTML)).toBeNull();
    expect(sniffType(Buffer.concat([Buffer.from([0, 0, 0, 0x18]), Buffer.from('ftypheic')]))).toBeNull();
  });
});

describe('selectCaptions (platform rules)', () => {
  const images = ['https://x/1.png', 'https://x/2.png', 'https://x/3.png'];
  const legacy = { _id: 'cs1', captions: ['legacy a', '', 'legacy c'], status: 'completed', isDefault: false };
  const emb = (id: string, status: string, isDefault: boolean) => ({
    _id: id,
    type: 'caption',
    status,
    isDefault,
    results: [{ value: `${id} a` }, { value: `  ${id} b  ` }, null],
  });

  it('prefers the explicit id, then default+completed, then first completed, then first', () => {
    const ds: PlatformDatasetDoc = {
      images,
      captionSets: [legacy],
      embellishments: [emb('e1', 'in_progress', true), emb('e2', 'completed', true), { _id: 'c1', type: 'control', status: 'completed', isDefault: true, results: [] }],
    };
    expect(selectCaptions(ds, 'e1').source).toBe('embellishment:e1 (requested)');
    expect(selectCaptions(ds).source).toBe('embellishment:e2 (default+completed)');
    expect(selectCaptions(ds).captions).toEqual(['e2 a', 'e2 b', '']);
    expect(selectCaptions(ds, 'missing').source).toBe('embellishment:e2 (default+completed) (requested missing not found)');
    expect(selectCaptions({ images, captionSets: [legacy], embellishments: [emb('e1', 'in_progress', true)] }).source).toBe('captionSet:cs1 (first completed)');
    expect(selectCaptions({ images, embellishments: [emb('e1', 'in_progress', false), emb('e3', 'failed', true)] }).source).toBe('embellishment:e1 (first)');
    expect(selectCaptions({ images }).source).toBe('none');
    expect(selectCaptions({ images }).captions).toEqual(['', '', '']);
    // control embellishments are never caption candidates
    expect(selectCaptions({ images, embellishments: [{ _id: 'c1', type: 'control', status: 'completed', isDefault: true, results: [{ value: 'x' }] }] }).source).toBe('none');
  });

  it('accepts ObjectId-like ids', () => {
    const oid = { toString: () => '665f00000000000000000001' };
    expect(selectCaptions({ images, captionSets: [{ ...legacy, _id: oid }] }, '665f00000000000000000001').source).toBe('captionSet:665f00000000000000000001 (requested)');
  });
});

describe('ThreadPoolSha256 (SigV4 hashes off the event loop)', () => {
  it('matches node:crypto for small, large, chunked inputs and HMAC', async () => {
    const hex = async (h: ThreadPoolSha256) => Buffer.from(await h.digest()).toString('hex');
    for (const size of [0, 10, 300 * 1024, 3 * 1024 * 1024]) {
      const data = randomBytes(size);
      const h = new ThreadPoolSha256();
      h.update(data.subarray(0, Math.floor(size / 3)));
      h.update(data.subarray(Math.floor(size / 3)));
      expect(await hex(h)).toBe(createHash('sha256').update(data).digest('hex'));
    }
    const mac = new ThreadPoolSha256('key');
    mac.update('message');
    expect(await hex(mac)).toBe(createHmac('sha256', 'key').update('message').digest('hex'));
    const s = new ThreadPoolSha256();
    s.update('abc');
    s.reset();
    s.update('xyz');
    expect(await hex(s)).toBe(createHash('sha256').update('xyz').digest('hex'));
  });
});
