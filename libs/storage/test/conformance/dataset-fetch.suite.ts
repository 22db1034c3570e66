/**
 * DatasetFetchPort conformance: the same assertions against the real
 * DatasetFetcher (MinIO, ports.int.spec.ts) and InMemoryDatasetFetch
 * (ports.spec.ts). Images are seeded into the datasets bucket and referenced
 * by their public URL, as the platform stores them.
 */
import { promises as fsp } from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import type { DatasetFetchPort } from '../../src';
import { jpegOf, pngOf, webpOf } from '../../src/testing';

export interface DatasetFetchSubject {
  port: DatasetFetchPort;
  /** Stores `body` in the datasets bucket and returns its public URL. */
  seed(key: string, body: Buffer): Promise<string>;
  /** The real name of the datasets bucket. */
  datasetsBucket: string;
  prefix: string;
  close(): Promise<void>;
}

export function datasetFetchConformance(name: string, open: () => Promise<DatasetFetchSubject>): void {
  describe(`DatasetFetchPort conformance: ${name}`, () => {
    let s: DatasetFetchSubject;
    let dir: string;
    const urls: Record<string, string> = {};
    beforeAll(async () => {
      s = await open();
      dir = await fsp.mkdtemp(path.join(os.tmpdir(), 'st-fetch-conf-'));
      const seeds: Record<string, Buffer> = {
        png: pngOf(512, 384),
        jpeg: jpegOf(640, 480, { metadataBytes: 70_000 }),
        webp: webpOf(300, 200, 'VP8L'),
        bomb: pngOf(20000, 20000, 49_000),
        tiny: pngOf(8, 8),
        html: Buffer.from('<!doctype html><html>not an image</html>'.padEnd(200)),
      };
      for (const [k, body] of Object.entries(seeds)) urls[k] = await s.seed(`${s.prefix}web-upload-user/${k}.bin`, body);
    });
    afterAll(async () => {
      await s?.close();
      await fsp.rm(dir, { recursive: true, force: true });
    });

    it('checkSources: [] for our own images; each hostile URL with its index and kind', () => {
      expect(s.port.checkSources({ images: [urls.png, urls.jpeg] })).toEqual([]);
      const problems = s.port.checkSources({ images: [urls.png, 'http://169.254.169.254/x', 'file:///etc/passwd', 'https://u:p@evil.example/x.png'] });
      expect(problems.map((p) => [p.index, p.kind])).toEqual([
        [1, 'disallowed-url'],
        [2, 'disallowed-url'],
        [3, 'disallowed-url'],
      ]);
      expect(s.port.checkSources({ images: [urls.png, urls.png] }, { limits: { maxImages: 1 } })[0]).toMatchObject({ index: null, kind: 'too-large' });
    });

    it('fetches into generated names with type, declared size and captions', async () => {
      const dest = path.join(dir, 'ok');
      const out = await s.port.fetch(
        { images: [urls.png, urls.jpeg, urls.webp], captionSets: [{ _id: 'cs', captions: ['a cat', '', 'a dog'], status: 'completed' }] },
        dest,
        { captionFor: (c) => (c ? `tok, ${c}` : 'tok') },
      );
      expect(out.images.map((i) => [i.fileName, i.captionFileName, i.mime, i.width, i.height])).toEqual([
        ['img_0001.png', 'img_0001.txt', 'image/png', 512, 384],
        ['img_0002.jpg', 'img_0002.txt', 'image/jpeg', 640, 480],
        ['img_0003.webp', 'img_0003.txt', 'image/webp', 300, 200],
      ]);
      expect(out.captionSource).toBe('captionSet:cs (first completed)');
      expect(out.captionedCount).toBe(3);
      expect(await fsp.readFile(path.join(dest, 'img_0002.txt'), 'utf8')).toBe('tok');
      expect((await fsp.readdir(dest)).sort()).toEqual(['img_0001.png', 'img_0001.txt', 'img_0002.jpg', 'img_0002.txt', 'img_0003.txt', 'img_0003.webp']);
    });

    it('rejects a 49 KB PNG declaring 20000×20000, naming it, and keeps nothing', async () => {
      const dest = path.join(dir, 'bomb');
      const err = await s.port.fetch({ images: [urls.png, urls.bomb] }, dest, { concurrency: 1 }).catch((e) => e);
      expect(err).toMatchObject({ name: 'StorageError', kind: 'invalid-content' });
      expect(err.message).toMatch(/^Image 2 \(.*\) declares 20000×20000 pixels; each side may be at most 16384/);
      expect(await fsp.readdir(dest)).toEqual([]);
    });

    it('rejects an image below the minimum size, and a file that is not an image', async () => {
      const tiny = await s.port.fetch({ images: [urls.tiny] }, path.join(dir, 'tiny')).catch((e) => e);
      expect(tiny).toMatchObject({ kind: 'invalid-content', message: expect.stringMatching(/^Image 1 .* is 8×8 pixels; each side must be at least 16/) });
      const html = await s.port.fetch({ images: [urls.html] }, path.join(dir, 'html')).catch((e) => e);
      expect(html).toMatchObject({ kind: 'invalid-content', message: expect.stringMatching(/is not a JPEG, PNG or WebP file \(starts with an HTML page\)/) });
    });

    it('refuses a hostile dataset before reading any of it', async () => {
      const err = await s.port.fetch({ images: [urls.png, 'gopher://evil.example:70/x'] }, path.join(dir, 'hostile')).catch((e) => e);
      expect(err).toMatchObject({ kind: 'disallowed-url', message: expect.stringMatching(/^Image 2 .*scheme 'gopher:'/) });
      expect(await fsp.readdir(path.join(dir, 'hostile'))).toEqual([]);
    });

    it('reports a missing own-bucket image by bucket', async () => {
      const missing = urls.png.replace(/png\.bin$/, 'nope.bin');
      const err = await s.port.fetch({ images: [missing] }, path.join(dir, 'missing')).catch((e) => e);
      expect(err).toMatchObject({ kind: 'not-found' });
      expect(err.message).toContain(`in bucket '${s.datasetsBucket}'`);
    });

    it('enforces the per-file byte limit', async () => {
      const err = await s.port.fetch({ images: [urls.jpeg] }, path.join(dir, 'big'), { limits: { maxFileBytes: 10_000 } }).catch((e) => e);
      expect(err).toMatchObject({ kind: 'too-large', message: expect.stringMatching(/per-file limit of 10000/) });
    });
  });
}
