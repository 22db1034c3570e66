/**
 * DatasetFetcher against the real MinIO (own-bucket URLs) and local HTTP
 * servers on 127.0.0.1 (allow-listed / not allow-listed hosts, redirects).
 */
import { promises as fsp } from 'node:fs';
import * as path from 'node:path';
import { DatasetFetcher, StorageError, type FetchProgress, type PlatformDatasetDoc } from '../src';
import { pngOf } from '../src/testing';
import { HTML, JPEG, MP4, PNG, WEBP, makeStorage, sha256, startHttp, tmpDir, uniquePrefix } from './helpers';

const prefix = uniquePrefix('storage-datasets');
const { storage, s3 } = makeStorage();
const fetcher = new DatasetFetcher(storage);
let root: string;
let web: Awaited<ReturnType<typeof startHttp>>;
let other: Awaited<ReturnType<typeof startHttp>>;
let allowed: string;
const hits: string[] = [];

beforeAll(async () => {
  root = await tmpDir('datasets');
  await storage.putObject('datasets', `${prefix}web-upload-user/u1-cat.png`, PNG);
  await storage.putObject('datasets', `${prefix}web-upload-user/u2-dog.jpg`, JPEG);
  await storage.putObject('datasets', `${prefix}web-upload-user/u3-page.png`, HTML);
  other = await startHttp((req, res) => {
    hits.push(`other ${req.url}`);
    res.end(JPEG);
  });
  web = await startHttp((req, res) => {
    hits.push(`web ${req.url}`);
    const u = req.url ?? '';
    if (u === '/a.webp') return void res.end(WEBP);
    if (u === '/clip.mp4') return void res.end(MP4);
    if (u === '/bomb.png') {
      // A 20000×20000 header, then a slow trickle: the fetcher must stop at the header.
      res.write(pngOf(20000, 20000, 1000));
      const t = setInterval(() => res.write(Buffer.alloc(64 * 1024)), 50);
      res.on('close', () => clearInterval(t));
      return;
    }
    if (u === '/redirect-to-metadata') {
      res.writeHead(302, { location: 'http://169.254.169.254/latest/meta-data/' });
      return void res.end();
    }
    if (u === '/big.jpg') return void res.end(Buffer.concat([JPEG, Buffer.alloc(300_000)]));
    if (u === '/big-chunked.jpg') {
      res.write(JPEG);
      res.write(Buffer.alloc(200_000));
      return void res.end(Buffer.alloc(200_000));
    }
    if (u === '/same-host-redirect') {
      res.writeHead(302, { location: '/a.webp' });
      return void res.end();
    }
    if (u === '/other-host-redirect') {
      res.writeHead(302, { location: `${other.url}/x.jpg` });
      return void res.end();
    }
    if (u === '/localhost-redirect') {
      res.writeHead(301, { location: `http://localhost:${web.port}/a.webp` });
      return void res.end();
    }
    res.statusCode = 404;
    res.end('nope');
  });
  allowed = `127.0.0.1:${web.port}`;
});

afterAll(async () => {
  await storage.deletePrefix('datasets', prefix).catch(() => undefined);
  await web.close();
  await other.close();
  await fsp.rm(root, { recursive: true, force: true });
  s3.destroy();
});

function own(key: string): string {
  return storage.publicUrl('datasets', `${prefix}${key}`);
}

async function fetchInto(name: string, ds: PlatformDatasetDoc, opts: Parameters<DatasetFetcher['fetch']>[2] = {}) {
  const dest = path.join(root, name);
  const r = await fetcher.fetch(ds, dest, { allowedHosts: [allowed], ...opts }).catch((e: unknown) => e);
  return { dest, r };
}

describe('DatasetFetcher', () => {
  it('downloads own-bucket and allow-listed images with generated names, captions and progress', async () => {
    const progress: FetchProgress[] = [];
    const ds: PlatformDatasetDoc = {
      images: [own('web-upload-user/u1-cat.png'), own('web-upload-user/u2-dog.jpg'), `${web.url}/a.webp`, `${web.url}/same-host-redirect`],
      captionSets: [{ _id: 'legacy', captions: ['old', 'old', 'old', 'old'], status: 'completed' }],
      embellishments: [
        { _id: 'emb1', type: 'caption', status: 'completed', isDefault: true, results: [{ value: 'a cat' }, { value: ' a dog ' }, { value: '' }, { value: 'again' }] },
      ],
    };
    const dest = path.join(root, 'ok');
    const out = await fetcher.fetch(ds, dest, { allowedHosts: [allowed], concurrency: 2, onProgress: (p) => progress.push(p) });
    expect(out.captionSource).toBe('embellishment:emb1 (default+completed)');
    expect(out.images.map((i) => [i.fileName, i.captionFileName, i.mime])).toEqual([
      ['img_0001.png', 'img_0001.txt', 'image/png'],
      ['img_0002.jpg', 'img_0002.txt', 'image/jpeg'],
      ['img_0003.webp', '', 'image/webp'],
      ['img_0004.webp', 'img_0004.txt', 'image/webp'],
    ]);
    expect(out.captionedCount).toBe(3);
    expect(out.totalBytes).toBe(PNG.length + JPEG.length + 2 * WEBP.length);
    expect((await fsp.readdir(dest)).sort()).toEqual(['img_0001.png', 'img_0001.txt', 'img_0002.jpg', 'img_0002.txt', 'img_0003.webp', 'img_0004.txt', 'img_0004.webp']);
    expect(await fsp.readFile(path.join(dest, 'img_0002.txt'), 'utf8')).toBe('a dog');
    expect(sha256(await fsp.readFile(path.join(dest, 'img_0001.png')))).toBe(sha256(PNG));
    expect(progress[progress.length - 1]).toMatchObject({ completedFiles: 4, totalFiles: 4, bytes: out.totalBytes });
    expect(out.images[0].sourceUrl).toBe(ds.images[0]);
  });

  it('with captionFor, writes a caption file for every item, the uncaptioned ones included', async () => {
    const ds: PlatformDatasetDoc = {
      images: [own('web-upload-user/u1-cat.png'), own('web-upload-user/u2-dog.jpg')],
      captionSets: [{ _id: 'cs', captions: ['a cat', ''], status: 'completed' }],
    };
    const dest = path.join(root, 'caption-for');
    const seen: [string, number][] = [];
    const out = await fetcher.fetch(ds, dest, { captionFor: (c, i) => (seen.push([c, i]), c ? `tok, ${c}` : 'tok') });
    expect(seen.sort((a, b) => a[1] - b[1])).toEqual([['a cat', 0], ['', 1]]);
    expect(out.captionedCount).toBe(2);
    expect(await fsp.readFile(path.join(dest, 'img_0001.txt'), 'utf8')).toBe('tok, a cat');
    expect(await fsp.readFile(path.join(dest, 'img_0002.txt'), 'utf8')).toBe('tok');
  });

  it('rejects a host that is not allow-listed, without contacting it', async () => {
    const before = hits.length;
    const { dest, r } = await fetchInto('disallowed', { images: [`${other.url}/x.jpg`] });
    expect(r).toBeInstanceOf(StorageError);
    expect((r as StorageError).kind).toBe('disallowed-url');
    expect((r as StorageError).message).toContain(`host '127.0.0.1:${other.port}'`);
    expect(hits.slice(before).filter((h) => h.startsWith('other'))).toEqual([]);
    expect(await fsp.readdir(dest)).toEqual([]);
  });

  it('rejects redirects to another host (and to another name for the same machine)', async () => {
    const before = hits.length;
    const a = await fetchInto('redirect', { images: [`${web.url}/other-host-redirect`] });
    expect((a.r as StorageError).kind).toBe('disallowed-url');
    expect((a.r as StorageError).message).toMatch(/redirects to another host/);
    expect(hits.slice(before).filter((h) => h.startsWith('other'))).toEqual([]);
    const b = await fetchInto('redirect2', { images: [`${web.url}/localhost-redirect`] });
    expect((b.r as StorageError).kind).toBe('disallowed-url');
  });

  it('rejects traversal-shaped and non-http URLs, and writes nothing outside the folder', async () => {
    const cases = [
      own('web-upload-user/..%2F..%2F..%2Fetc%2Fpasswd'),
      `${storage.bucket('datasets').publicBaseUrl}/${prefix}%2e%2e/x.png`,
      'file:///etc/passwd',
      'not a url',
    ];
    for (const [i, url] of cases.entries()) {
      const { dest, r } = await fetchInto(`trav${i}`, { images: [url] });
      expect(r).toBeInstanceOf(StorageError);
      expect(['invalid-name', 'disallowed-url', 'not-found']).toContain((r as StorageError).kind);
      expect(await fsp.readdir(dest)).toEqual([]);
    }
    expect(await fsp.readdir(root)).not.toContain('etc');
  });

  it('rejects wrong magic bytes and removes what it already wrote', async () => {
    const { dest, r } = await fetchInto('magic', { images: [own('web-upload-user/u1-cat.png'), own('web-upload-user/u3-page.png')] }, { concurrency: 1 });
    expect((r as StorageError).kind).toBe('invalid-content');
    expect((r as StorageError).message).toMatch(/Image 2 .* is not a JPEG, PNG or WebP file \(starts with an HTML page\)/);
    expect(await fsp.readdir(dest)).toEqual([]);
  });

  it('accepts video only when allowed', async () => {
    const a = await fetchInto('video-no', { images: [`${web.url}/clip.mp4`] });
    expect((a.r as StorageError).kind).toBe('invalid-content');
    expect((a.r as StorageError).message).toMatch(/video\/mp4 video/);
    const b = await fetchInto('video-yes', { images: [`${web.url}/clip.mp4`] }, { allowVideo: true });
    expect((b.r as { images: { fileName: string }[] }).images[0].fileName).toBe('img_0001.mp4');
  });

  it('enforces per-file limits (declared and streamed) and the dataset limit', async () => {
    const a = await fetchInto('big', { images: [`${web.url}/big.jpg`] }, { limits: { maxFileBytes: 100_000 } });
    expect((a.r as StorageError).kind).toBe('too-large');
    expect((a.r as StorageError).message).toMatch(/per-file limit of 100000/);
    const b = await fetchInto('big-chunked', { images: [`${web.url}/big-chunked.jpg`] }, { limits: { maxFileBytes: 100_000 } });
    expect((b.r as StorageError).kind).toBe('too-large');
    const c = await fetchInto('own-big', { images: [own('web-upload-user/u1-cat.png')] }, { limits: { maxFileBytes: 10 } });
    expect((c.r as StorageError).kind).toBe('too-large');
    const d = await fetchInto('total', { images: [`${web.url}/a.webp`, `${web.url}/a.webp`, `${web.url}/a.webp`] }, { limits: { maxTotalBytes: WEBP.length * 2 + 10 } });
    expect((d.r as StorageError).kind).toBe('too-large');
    expect((d.r as StorageError).message).toMatch(/dataset is larger than the limit/);
    expect(await fsp.readdir(d.dest)).toEqual([]);
    const e = await fetchInto('count', { images: [`${web.url}/a.webp`, `${web.url}/a.webp`] }, { limits: { maxImages: 1 } });
    expect((e.r as StorageError).kind).toBe('too-large');
  });

  it('reports a missing own-bucket object by bucket and key', async () => {
    const { r } = await fetchInto('missing', { images: [own('web-upload-user/nope.png')] });
    expect((r as StorageError).kind).toBe('not-found');
    expect((r as StorageError).message).toContain(`in bucket 'datasets'`);
  });

  it('rejects an image declaring 20000×20000 from its header, without downloading the rest', async () => {
    const started = Date.now();
    const { dest, r } = await fetchInto('bomb', { images: [own('web-upload-user/u1-cat.png'), `${web.url}/bomb.png`] }, { concurrency: 1 });
    expect(r).toBeInstanceOf(StorageError);
    expect((r as StorageError).kind).toBe('invalid-content');
    expect((r as StorageError).message).toMatch(/^Image 2 \(http:\/\/127\.0\.0\.1:\d+\/bomb\.png\) declares 20000×20000 pixels; each side may be at most 16384/);
    expect(Date.now() - started).toBeLessThan(5_000);
    expect(await fsp.readdir(dest)).toEqual([]);
  });

  it('rejects a redirect to the metadata address', async () => {
    const { r } = await fetchInto('redirect-metadata', { images: [`${web.url}/redirect-to-metadata`] });
    expect((r as StorageError).kind).toBe('disallowed-url');
  });

  it('checkSources finds the same problems with no request made', async () => {
    const before = hits.length;
    const problems = fetcher.checkSources({ images: [own('web-upload-user/u1-cat.png'), `${other.url}/x.jpg`, 'http://169.254.169.254/'] }, { allowedHosts: [allowed] });
    expect(problems.map((p) => [p.index, p.kind])).toEqual([
      [1, 'disallowed-url'],
      [2, 'disallowed-url'],
    ]);
    expect(hits.length).toBe(before);
  });
});
