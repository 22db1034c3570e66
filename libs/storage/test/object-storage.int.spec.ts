/**
 * Against the real MinIO: round trips, a 300 MiB multipart upload, abort,
 * and a server cut mid-transfer (a TCP proxy in front of MinIO is closed).
 */
import { promises as fsp, truncateSync } from 'node:fs';
import * as path from 'node:path';
import { Readable } from 'node:stream';
import { ModelUploader, StorageError, jobArtifactKey, sha256File } from '../src';
import { CuttableProxy, localConfig, makeStorage, minioTarget, sha256, tmpDir, writeBigFile, uniquePrefix } from './helpers';

const MiB = 1024 * 1024;
const prefix = uniquePrefix('storage-objects');
const { storage, s3 } = makeStorage();
let dir: string;
let big: Promise<{ file: string; sha256: string }> | undefined;
/** The 300 MiB test file, written once per run (streamed, never held in memory). */
function bigFile() {
  big ??= (async () => {
    const file = path.join(dir, 'big.safetensors');
    return { file, sha256: await writeBigFile(file, 300 * MiB) };
  })();
  return big;
}

beforeAll(async () => {
  dir = await tmpDir('objects');
});

afterAll(async () => {
  for (const alias of ['models', 'uploads', 'datasets'] as const) {
    await storage.deletePrefix(alias, prefix).catch(() => undefined);
    for (const u of await storage.listMultipartUploads(alias, prefix).catch(() => [])) {
      await storage.abortIncompleteUploads(alias, u.key).catch(() => undefined);
    }
  }
  await fsp.rm(dir, { recursive: true, force: true });
  s3.destroy();
});

describe('ObjectStorage round trips', () => {
  it('puts, heads, reads, lists, presigns and deletes', async () => {
    const key = `${prefix}rt/a.txt`;
    const body = Buffer.from('hello R2');
    await storage.putObject('uploads', key, body, { contentType: 'text/plain', cacheControl: 'public, max-age=60' });
    const head = await storage.headObject('uploads', key);
    expect(head).toMatchObject({ bytes: body.length, contentType: 'text/plain', cacheControl: 'public, max-age=60' });

    const r = await storage.getObjectStream('uploads', key);
    const chunks: Buffer[] = [];
    for await (const c of r.body) chunks.push(c as Buffer);
    expect(Buffer.concat(chunks).toString()).toBe('hello R2');

    const ranged = await storage.getObjectStream('uploads', key, { range: { start: 6 } });
    const rc: Buffer[] = [];
    for await (const c of ranged.body) rc.push(c as Buffer);
    expect(Buffer.concat(rc).toString()).toBe('R2');
    expect(ranged.totalBytes).toBe(body.length);

    await storage.putObject('uploads', `${prefix}rt/b/c.txt`, 'x');
    expect((await storage.listKeys('uploads', `${prefix}rt/`)).sort()).toEqual([`${prefix}rt/a.txt`, `${prefix}rt/b/c.txt`]);

    const url = await storage.presignGet('uploads', key, 60);
    const res = await fetch(url);
    expect(res.status).toBe(200);
    expect(await res.text()).toBe('hello R2');
    expect(storage.publicUrl('uploads', key)).toBe(`http://127.0.0.1:9000/uploads/${prefix}rt/a.txt`);
    expect(storage.parseOwnUrl(storage.publicUrl('uploads', key))).toEqual({ bucketAlias: 'uploads', key });

    expect(await storage.deletePrefix('uploads', `${prefix}rt/`)).toBe(2);
    expect(await storage.headObject('uploads', key)).toBeNull();
  });

  it('uploadStream: multipart from a stream of unknown length; cancelling it leaves nothing', async () => {
    const gen = (mib: number) =>
      Readable.from(
        (function* () {
          for (let i = 0; i < mib; i++) yield Buffer.alloc(MiB, i);
        })(),
      );
    const key = `${prefix}stream/ok.bin`;
    const r = await storage.uploadStream('uploads', key, gen(12), { partSize: 5 * MiB, contentType: 'application/octet-stream' });
    expect(r.bytes).toBe(12 * MiB);
    expect((await storage.headObject('uploads', key))?.etag).toMatch(/-3"$/);
    const ctl = new AbortController();
    const key2 = `${prefix}stream/cancelled.bin`;
    const err = await storage
      .uploadStream('uploads', key2, gen(40), { partSize: 5 * MiB, signal: ctl.signal, onProgress: (n) => n >= 5 * MiB && ctl.abort() })
      .catch((e) => e);
    expect(err.kind).toBe('aborted');
    expect(await storage.headObject('uploads', key2)).toBeNull();
    expect(await storage.listMultipartUploads('uploads', key2)).toEqual([]);
  });

  it('names bucket and key when an object is missing', async () => {
    const key = `${prefix}missing.bin`;
    const err = await storage.getObjectStream('models', key).catch((e) => e);
    expect(err).toBeInstanceOf(StorageError);
    expect(err.kind).toBe('not-found');
    expect(err.message).toContain(`'${key}' in bucket 'models'`);
  });

  it('reports bad credentials as access-denied without the secret', async () => {
    const cfg = localConfig({}, { S3_SECRET_ACCESS_KEY: 'wrong-secret-xyz' });
    const bad = makeStorage(cfg);
    const err = await bad.storage.putObject('models', `${prefix}x`, 'x').catch((e) => e);
    bad.s3.destroy();
    expect(err.kind).toBe('access-denied');
    expect(err.message).not.toContain('wrong-secret-xyz');
  });
});

describe('ModelUploader', () => {
  const uploader = new ModelUploader(storage);

  it('uploads 300 MiB multipart with sha256, AutoV2 and progress, and it downloads back identical', async () => {
    const { file, sha256: expected } = await bigFile();
    const key = jobArtifactKey('rt300', 'model.safetensors').replace('training-jobs/', `${prefix}training-jobs/`);
    const seen: number[] = [];
    const up = await uploader.upload({
      filePath: file,
      bucketAlias: 'models',
      key,
      contentType: 'application/octet-stream',
      cacheControl: 'public, max-age=31536000, immutable',
      onProgress: (p) => seen.push(p.uploadedBytes),
    });
    expect(up).toMatchObject({ bucketAlias: 'models', key, bytes: 300 * MiB, sha256: expected, autov2: expected.slice(0, 10) });
    expect(up.publicUrl).toBe(`http://127.0.0.1:9000/models/${key}`);
    expect(seen.length).toBeGreaterThan(5);
    expect(seen[seen.length - 1]).toBe(300 * MiB);
    const head = await storage.headObject('models', key);
    expect(head?.bytes).toBe(300 * MiB);
    expect(head?.etag).toMatch(/-\d+"$/); // multipart ETag (md5-of-md5s-N)
    expect(head?.cacheControl).toBe('public, max-age=31536000, immutable');

    const back = path.join(dir, 'back.bin');
    const d = await storage.downloadToFile('models', key, back);
    expect(d.bytes).toBe(300 * MiB);
    expect((await sha256File(back)).sha256).toBe(expected);
    await storage.deleteObject('models', key);
    await fsp.rm(back, { force: true });
  }, 240_000);

  it('aborting leaves no object and no dangling multipart upload', async () => {
    const { file } = await bigFile();
    const key = `${prefix}abort/model.safetensors`;
    const ctl = new AbortController();
    const err = await uploader
      .upload({
        filePath: file,
        bucketAlias: 'models',
        key,
        contentType: 'application/octet-stream',
        partSize: 5 * MiB,
        signal: ctl.signal,
        onProgress: (p) => {
          if (p.uploadedBytes >= 10 * MiB) ctl.abort();
        },
      })
      .catch((e) => e);
    expect(err).toBeInstanceOf(StorageError);
    expect(err.kind).toBe('aborted');
    expect(await storage.headObject('models', key)).toBeNull();
    expect(await storage.listMultipartUploads('models', key)).toEqual([]);
  }, 120_000);

  it('a file that shrinks during the upload stores nothing', async () => {
    const file = path.join(dir, 'shrink.bin');
    await writeBigFile(file, 40 * MiB);
    const key = `${prefix}shrink/model.safetensors`;
    let cut = false;
    const err = await uploader
      .upload({
        filePath: file,
        bucketAlias: 'models',
        key,
        contentType: 'application/octet-stream',
        partSize: 5 * MiB,
        queueSize: 1,
        onProgress: (p) => {
          if (!cut && p.uploadedBytes >= 5 * MiB) {
            cut = true;
            truncateSync(file, 12 * MiB);
          }
        },
      })
      .catch((e) => e);
    expect(err).toBeInstanceOf(StorageError);
    expect(err.kind).toBe('invalid-content');
    expect(err.message).toMatch(/shrank|changed size/);
    expect(await storage.headObject('models', key)).toBeNull();
    expect(await storage.listMultipartUploads('models', key)).toEqual([]);
  });

  it('a missing source file is refused before anything is sent', async () => {
    const missing = path.join(dir, 'gone.bin');
    const err = await uploader.upload({ filePath: missing, bucketAlias: 'models', key: `${prefix}gone.bin`, contentType: 'x/y' }).catch((e) => e);
    expect(err.kind).toBe('invalid-argument');
    expect(err.message).toContain(missing);
  });
});

describe('server stopped mid-transfer (TCP proxy in front of MinIO)', () => {
  it('upload: retries, then a clear failure, nothing visible; the dangling upload is swept once the server is back', async () => {
    const proxy = await new CuttableProxy(minioTarget()).start();
    const cfg = localConfig({ endpoint: proxy.endpoint });
    let retries = 0;
    const viaProxy = makeStorage(cfg, { onRetry: () => retries++ });
    const { file } = await bigFile();
    const key = `${prefix}cut/model.safetensors`;
    proxy.cutRule = { up: 40 * MiB, mode: 'stop' };
    const err = await new ModelUploader(viaProxy.storage)
      .upload({ filePath: file, bucketAlias: 'models', key, contentType: 'application/octet-stream', partSize: 8 * MiB })
      .catch((e) => e)
      .finally(() => proxy.stop().catch(() => undefined));
    viaProxy.s3.destroy();
    expect(proxy.cuts).toBe(1);
    expect(err).toBeInstanceOf(StorageError);
    if (err.kind !== 'unavailable') console.log(err, err.cause);
    expect(err.kind).toBe('unavailable');
    expect(err.message).toContain(`'${key}' in bucket 'models'`);
    expect(retries).toBeGreaterThanOrEqual(3);
    // Nothing under the final key, seen directly on MinIO.
    expect(await storage.headObject('models', key)).toBeNull();
    // The server was unreachable, so the abort could not be sent; the sweep cleans up.
    const pending = await storage.listMultipartUploads('models', key);
    expect(pending.length).toBeLessThanOrEqual(1);
    await storage.abortIncompleteUploads('models', `${prefix}cut/`);
    expect(await storage.listMultipartUploads('models', `${prefix}cut/`)).toEqual([]);
  }, 120_000);

  it('download: a cut connection is resumed with a range request', async () => {
    const key = `${prefix}cut/resume.bin`;
    const data = Buffer.alloc(24 * MiB);
    for (let i = 0; i < data.length; i += 4096) data.writeUInt32LE(i, i);
    await storage.putObject('models', key, data);
    const proxy = await new CuttableProxy(minioTarget()).start();
    const viaProxy = makeStorage(localConfig({ endpoint: proxy.endpoint }));
    proxy.cutRule = { down: 6 * MiB, mode: 'once' };
    const out = path.join(dir, 'resume.bin');
    const r = await viaProxy.storage.downloadToFile('models', key, out).finally(() => proxy.stop());
    viaProxy.s3.destroy();
    expect(proxy.cuts).toBe(1);
    expect(r.attempts).toBeGreaterThanOrEqual(2);
    expect(sha256(await fsp.readFile(out))).toBe(sha256(data));
    // Resumed, not restarted: less than the object plus the cut-off part came down.
    expect(proxy.down).toBeLessThan(data.length + 8 * MiB);
  }, 60_000);

  it('concurrent ranged download: survives a cut, and resumes only the missing ranges after the server stops', async () => {
    const key = `${prefix}cut/ranged.bin`;
    const data = Buffer.alloc(40 * MiB);
    for (let i = 0; i < data.length; i += 4096) data.writeUInt32LE(i ^ 0x5a5a5a5a, i);
    await storage.putObject('models', key, data);
    const out = path.join(dir, 'ranged.bin');

    // A one-time cut: the affected ranges are retried, the download completes.
    const p1 = await new CuttableProxy(minioTarget()).start();
    const s1 = makeStorage(localConfig({ endpoint: p1.endpoint }));
    p1.cutRule = { down: 7 * MiB, mode: 'once' };
    const r1 = await s1.storage.downloadToFile('models', key, out, { concurrency: 3, chunkBytes: 4 * MiB }).finally(() => p1.stop());
    s1.s3.destroy();
    expect(p1.cuts).toBe(1);
    expect(r1.attempts).toBeGreaterThanOrEqual(2);
    expect(sha256(await fsp.readFile(out))).toBe(sha256(data));

    // The server stops for good part-way: clear failure, finished ranges recorded.
    const p2 = await new CuttableProxy(minioTarget()).start();
    const s2 = makeStorage(localConfig({ endpoint: p2.endpoint }));
    p2.cutRule = { down: 18 * MiB, mode: 'stop' };
    const err = await s2.storage.downloadToFile('models', key, out, { concurrency: 2, chunkBytes: 4 * MiB }).catch((e) => e);
    s2.s3.destroy();
    await p2.stop();
    expect(err).toBeInstanceOf(StorageError);
    expect(err.kind).toBe('unavailable');
    expect(err.message).toMatch(/ranges are kept/);
    const state = JSON.parse(await fsp.readFile(`${out}.ranges.json`, 'utf8')) as { done: number[] };
    expect(state.done.length).toBeGreaterThan(0);
    expect(state.done.length).toBeLessThan(10);

    // Server back: resume fetches only the missing ranges.
    const p3 = await new CuttableProxy(minioTarget()).start();
    const s3b = makeStorage(localConfig({ endpoint: p3.endpoint }));
    const r3 = await s3b.storage.downloadToFile('models', key, out, { concurrency: 2, chunkBytes: 4 * MiB, resume: true }).finally(() => p3.stop());
    s3b.s3.destroy();
    expect(r3.bytes).toBe(data.length);
    expect(sha256(await fsp.readFile(out))).toBe(sha256(data));
    expect(p3.down).toBeLessThan(data.length - state.done.length * 4 * MiB + 2 * MiB);
    await expect(fsp.stat(`${out}.ranges.json`)).rejects.toThrow();
  }, 60_000);

  it('download: a server that stays down fails clearly and keeps the partial bytes', async () => {
    const key = `${prefix}cut/down.bin`;
    await storage.putObject('models', key, Buffer.alloc(16 * MiB, 7));
    const proxy = await new CuttableProxy(minioTarget()).start();
    const viaProxy = makeStorage(localConfig({ endpoint: proxy.endpoint }));
    proxy.cutRule = { down: 4 * MiB, mode: 'stop' };
    const out = path.join(dir, 'down.bin');
    const err = await viaProxy.storage.downloadToFile('models', key, out).catch((e) => e);
    viaProxy.s3.destroy();
    await proxy.stop().catch(() => undefined);
    expect(err).toBeInstanceOf(StorageError);
    expect(err.kind).toBe('unavailable');
    expect(err.message).toMatch(/'.*down\.bin' from bucket 'models' after 4 attempts/);
    expect((await fsp.stat(out)).size).toBeGreaterThan(0);
  }, 60_000);
});
