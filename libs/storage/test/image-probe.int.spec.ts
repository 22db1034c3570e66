/**
 * ImageHeaderProbe against the real MinIO (own-bucket URLs, ranged GETs by
 * key) and local HTTP servers on 127.0.0.1: sizes from the first bytes only,
 * a server ignoring Range cut off at the byte limit, the dataset URL rules
 * (no request to a host that is not allow-listed, no cross-host redirect),
 * files at fault refused, network trouble left to the download, and at most
 * `concurrency` reads at once.
 */
import { ImageHeaderProbe, PROBE_HEADER_BYTES, type ImageProbeResult } from '../src';
import { jpegOf, pngOf } from '../src/testing';
import { HTML, makeStorage, startHttp, uniquePrefix } from './helpers';

const prefix = uniquePrefix('storage-probe');
const { storage, s3 } = makeStorage();
const probe = new ImageHeaderProbe(storage);
const BIG = 64 * 1024 * 1024;
let web: Awaited<ReturnType<typeof startHttp>>;
let other: Awaited<ReturnType<typeof startHttp>>;
let allowed: string;
const otherHits: string[] = [];
const ranges = new Map<string, string | undefined>();
/** What the Range-ignoring server managed to send before the client closed, and whether it finished. */
const ignored = { sent: 0, finished: false, closed: Promise.resolve() };
let inFlight = 0;
let maxInFlight = 0;

beforeAll(async () => {
  await storage.putObject('datasets', `${prefix}wide.png`, pngOf(640, 480, 300_000));
  await storage.putObject('datasets', `${prefix}tall.jpg`, jpegOf(300, 600, { extra: 200_000 }));
  await storage.putObject('datasets', `${prefix}exif-heavy.jpg`, jpegOf(64, 64, { metadataBytes: 100_000 }));
  await storage.putObject('datasets', `${prefix}page.png`, HTML);
  await storage.putObject('datasets', `${prefix}cut.png`, pngOf(64, 64).subarray(0, 12));
  await storage.putObject('datasets', `${prefix}tiny.png`, pngOf(8, 8));
  other = await startHttp((req, res) => {
    otherHits.push(req.url ?? '');
    res.end(pngOf(64, 64));
  });
  web = await startHttp((req, res) => {
    const u = req.url ?? '';
    ranges.set(u, req.headers.range);
    if (u === '/ignores-range.png') {
      // Sends the whole (large) file with 200 whatever the Range says: the probe must stop reading at its limit.
      res.writeHead(200, { 'content-type': 'image/png' });
      const head = pngOf(1024, 768, 0);
      ignored.closed = new Promise((resolve) => res.on('close', () => resolve()));
      res.on('finish', () => (ignored.finished = true));
      let sent = 0;
      const pump = () => {
        while (sent < BIG) {
          const chunk = sent === 0 ? Buffer.concat([head, Buffer.alloc(64 * 1024 - head.length)]) : Buffer.alloc(64 * 1024);
          sent += chunk.length;
          ignored.sent = sent;
          if (!res.write(chunk)) return void res.once('drain', pump);
        }
        res.end();
      };
      res.on('close', () => res.removeAllListeners('drain'));
      return pump();
    }
    if (u === '/honours-range.jpg') {
      const body = jpegOf(200, 100, { extra: 500_000 });
      const m = /^bytes=(\d+)-(\d+)$/.exec(req.headers.range ?? '');
      if (!m) return void res.end(body);
      const part = body.subarray(Number(m[1]), Number(m[2]) + 1);
      res.writeHead(206, { 'content-range': `bytes ${m[1]}-${Number(m[1]) + part.length - 1}/${body.length}`, 'content-length': String(part.length) });
      return void res.end(part);
    }
    if (u.startsWith('/slow-')) {
      inFlight++;
      maxInFlight = Math.max(maxInFlight, inFlight);
      setTimeout(() => {
        inFlight--;
        res.end(pngOf(32, 32));
      }, 150);
      return;
    }
    if (u === '/other-host-redirect') {
      res.writeHead(302, { location: `${other.url}/x.png` });
      return void res.end();
    }
    if (u === '/busy.png') {
      res.statusCode = 503;
      return void res.end('busy');
    }
    if (u === '/hangs.png') return; // never answers
    res.statusCode = 404;
    res.end('nope');
  });
  allowed = `127.0.0.1:${web.port}`;
});

afterAll(async () => {
  await storage.deletePrefix('datasets', prefix).catch(() => undefined);
  await web.close();
  await other.close();
  s3.destroy();
});

const own = (key: string) => storage.publicUrl('datasets', `${prefix}${key}`);
const one = async (url: string, opts: Parameters<ImageHeaderProbe['probe']>[1] = {}): Promise<ImageProbeResult> => (await probe.probe([{ url, index: 2 }], { allowedHosts: [allowed], ...opts }))[0];

describe('ImageHeaderProbe', () => {
  it('reads sizes from our bucket by key, ranged', async () => {
    const got = await probe.probe([
      { url: own('wide.png'), index: 0 },
      { url: own('tall.jpg'), index: 1 },
    ]);
    expect(got).toEqual([
      { status: 'ok', dimensions: { width: 640, height: 480 } },
      { status: 'ok', dimensions: { width: 300, height: 600 } },
    ]);
  });

  it('sends a Range for the first 64 KiB and reads a 206', async () => {
    expect(await one(`${web.url}/honours-range.jpg`)).toEqual({ status: 'ok', dimensions: { width: 200, height: 100 } });
    expect(ranges.get('/honours-range.jpg')).toBe(`bytes=0-${PROBE_HEADER_BYTES - 1}`);
  });

  it('cuts off a server that ignores the Range at the byte limit', async () => {
    expect(await one(`${web.url}/ignores-range.png`)).toEqual({ status: 'ok', dimensions: { width: 1024, height: 768 } });
    await ignored.closed;
    expect(ignored.finished).toBe(false);
    // Socket buffers on both sides hold a few MiB at most; the file is 64 MiB.
    expect(ignored.sent).toBeLessThan(16 * 1024 * 1024);
  });

  it('refuses a file that is not an image, a cut header and a too-small image with the download messages', async () => {
    expect(await one(own('page.png'))).toMatchObject({ status: 'refused', kind: 'invalid-content', message: expect.stringMatching(/^Image 3 .*is not a JPEG, PNG or WebP file \(starts with an HTML page\)/) });
    expect(await one(own('cut.png'))).toMatchObject({ status: 'refused', kind: 'invalid-content', message: expect.stringMatching(/damaged image\/png image: the file ends before its header does/) });
    expect(await one(own('tiny.png'))).toMatchObject({ status: 'refused', kind: 'invalid-content', message: expect.stringMatching(/is 8×8 pixels; each side must be at least 16/) });
    expect(await one(own('missing.png'))).toMatchObject({ status: 'refused', kind: 'not-found' });
  });

  it('applies the dataset URL rules: no request to a host outside the allow-list, none across a redirect', async () => {
    expect(await one(`${other.url}/direct.png`)).toMatchObject({ status: 'refused', kind: 'disallowed-url', message: expect.stringMatching(/a loopback address; internal addresses are never fetched/) });
    expect(await one('http://169.254.169.254/latest/meta-data/')).toMatchObject({ status: 'refused', kind: 'disallowed-url', message: expect.stringMatching(/cloud metadata address/) });
    expect(await one(`${web.url}/other-host-redirect`)).toMatchObject({ status: 'refused', kind: 'disallowed-url', message: expect.stringMatching(/redirects to another host/) });
    expect(otherHits).toEqual([]);
  });

  it('leaves what it cannot read now to the download: a header past the limit, a 503, a server that hangs', async () => {
    expect(await one(own('exif-heavy.jpg'))).toMatchObject({ status: 'unread', message: expect.stringMatching(/no image header in the first 65536 bytes/) });
    expect(await one(`${web.url}/busy.png`)).toMatchObject({ status: 'unread', message: expect.stringMatching(/HTTP 503/) });
    const t0 = Date.now();
    expect(await one(`${web.url}/hangs.png`, { timeoutMs: 300 })).toMatchObject({ status: 'unread', message: expect.stringMatching(/no header within 300 ms/) });
    expect(Date.now() - t0).toBeLessThan(5_000);
  });

  it('reads at most `concurrency` files at once', async () => {
    const items = Array.from({ length: 12 }, (_, i) => ({ url: `${web.url}/slow-${i}.png`, index: i }));
    const got = await probe.probe(items, { allowedHosts: [allowed], concurrency: 4 });
    expect(got.every((r) => r.status === 'ok')).toBe(true);
    expect(maxInFlight).toBe(4);
  });
});
