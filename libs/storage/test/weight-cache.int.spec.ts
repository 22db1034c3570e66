/**
 * WeightCache: single download under concurrency, resume after a cut,
 * verification, eviction that respects leases, stale-lock recovery, and
 * concurrency across real OS processes.
 */
import { execFileSync, spawn } from 'node:child_process';
import { promises as fsp } from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { StorageError, WeightCache, liveLeases, lockFile, type R2Config, type WeightCacheOptions } from '../src';
import { localConfig, makeStorage, sha256, startHttp, tmpDir, uniquePrefix } from './helpers';

const prefix = uniquePrefix('storage-weights');
const KiB = 1024;
const blob = (n: number, seed: number) => {
  const b = Buffer.alloc(n);
  for (let i = 0; i < n; i += 4) b.writeUInt32LE((i * 2654435761 + seed) >>> 0, i);
  return b;
};
const A = blob(512 * KiB, 1);
const B = blob(256 * KiB, 2);
const C = blob(256 * KiB, 3);

let root: string;
let web: Awaited<ReturnType<typeof startHttp>>;
const requests: { url: string; range?: string }[] = [];
let cutNextAt = 0;

beforeAll(async () => {
  root = await tmpDir('weights');
  web = await startHttp((req, res) => {
    requests.push({ url: req.url ?? '', range: req.headers.range });
    const body = req.url === '/a.bin' ? A : req.url === '/b.bin' ? B : req.url === '/c.bin' ? C : null;
    if (!body) {
      res.statusCode = 404;
      return void res.end();
    }
    let start = 0;
    const m = /^bytes=(\d+)-$/.exec(req.headers.range ?? '');
    if (m) start = Number(m[1]);
    res.writeHead(m ? 206 : 200, {
      'content-length': String(body.length - start),
      ...(m ? { 'content-range': `bytes ${start}-${body.length - 1}/${body.length}` } : {}),
    });
    if (cutNextAt > 0) {
      // Send part of the body slowly enough to be in flight, then drop the connection.
      const n = cutNextAt;
      cutNextAt = 0;
      res.write(body.subarray(start, start + n), () => setTimeout(() => req.socket.destroy(), 20));
      return;
    }
    // Slow enough that concurrent acquires really overlap.
    setTimeout(() => res.end(body.subarray(start)), 100);
  });
});

afterAll(async () => {
  await web.close();
  await fsp.rm(root, { recursive: true, force: true });
});

async function cacheIn(name: string, over: Partial<R2Config> = {}, options: Partial<WeightCacheOptions> = {}) {
  const dir = path.join(root, name);
  const { storage, s3, config } = makeStorage(localConfig({ weightCacheDir: dir, ...over }));
  const cache = new WeightCache(config, storage, { lockStaleMs: 2_000, lockPollMs: 20, ...options });
  return { cache, s3, storage, dir };
}

const spec = (file: string, body: Buffer) => ({
  fileName: file,
  source: { kind: 'https' as const, url: `${web.url}/${file}` },
  sha256: sha256(body),
  bytes: body.length,
});

describe('WeightCache', () => {
  it('two concurrent acquires (two cache instances, same dir) download once', async () => {
    const { cache: c1, dir } = await cacheIn('concurrent');
    const { cache: c2 } = await cacheIn('concurrent');
    const before = requests.length;
    const [l1, l2] = await Promise.all([c1.acquire(spec('a.bin', A)), c2.acquire(spec('a.bin', A))]);
    expect(requests.slice(before).filter((r) => r.url === '/a.bin')).toHaveLength(1);
    expect([l1.downloaded, l2.downloaded].sort()).toEqual([false, true]);
    expect(l1.path).toBe(path.join(dir, 'files', 'a.bin'));
    expect(sha256(await fsp.readFile(l1.path))).toBe(sha256(A));
    expect(await liveLeases(path.join(dir, 'leases', 'a.bin'))).toBe(2);
    await l1.release();
    await l2.release();
    expect(await liveLeases(path.join(dir, 'leases', 'a.bin'))).toBe(0);
    // Marker trusted afterwards: no new request.
    const l3 = await c1.acquire(spec('a.bin', A));
    expect(l3.downloaded).toBe(false);
    expect(requests.slice(before).filter((r) => r.url === '/a.bin')).toHaveLength(1);
    await l3.release();
  });

  it('resumes an interrupted download with a range request', async () => {
    const { cache } = await cacheIn('resume');
    const before = requests.length;
    cutNextAt = 100 * KiB;
    const l = await cache.acquire(spec('a.bin', A));
    const mine = requests.slice(before).filter((r) => r.url === '/a.bin');
    expect(mine.length).toBe(2);
    expect(mine[0].range).toBeUndefined();
    expect(mine[1].range).toMatch(/^bytes=\d+-$/);
    expect(Number(/\d+/.exec(mine[1].range ?? '')?.[0])).toBeGreaterThan(0);
    expect(sha256(await fsp.readFile(l.path))).toBe(sha256(A));
    await l.release();
  });

  it('resumes a partial left by an earlier process', async () => {
    const { cache, dir } = await cacheIn('resume-partial');
    await fsp.mkdir(path.join(dir, 'files'), { recursive: true });
    await fsp.writeFile(path.join(dir, 'files', 'b.bin.partial'), B.subarray(0, 100_000));
    await fsp.writeFile(path.join(dir, 'files', 'b.bin.partial.json'), JSON.stringify({ source: `https:${web.url}/b.bin` }));
    const before = requests.length;
    const l = await cache.acquire(spec('b.bin', B));
    expect(requests.slice(before).map((r) => r.range)).toEqual(['bytes=100000-']);
    expect(sha256(await fsp.readFile(l.path))).toBe(sha256(B));
    await l.release();
  });

  it('treats bytes as a size hint, not a check', async () => {
    const { cache } = await cacheIn('approx');
    const l = await cache.acquire({ ...spec('b.bin', B), bytes: 300 * KiB });
    expect(sha256(await fsp.readFile(l.path))).toBe(sha256(B));
    await l.release();
    const again = await cache.acquire({ ...spec('b.bin', B), bytes: 123 });
    expect(again.downloaded).toBe(false);
    await again.release();
  });

  it('rejects a download whose sha256 does not match, and keeps nothing', async () => {
    const { cache, dir } = await cacheIn('badhash');
    const err = await cache.acquire({ ...spec('c.bin', C), sha256: sha256(A) }).catch((e) => e);
    expect(err).toBeInstanceOf(StorageError);
    expect(err.kind).toBe('invalid-content');
    expect(err.message).toMatch(/failed verification/);
    expect(await fsp.readdir(path.join(dir, 'files'))).toEqual([]);
  });

  it('refuses unsafe names and unverifiable https sources', async () => {
    const { cache } = await cacheIn('names');
    await expect(cache.acquire({ ...spec('a.bin', A), fileName: '../x' })).rejects.toMatchObject({ kind: 'invalid-name' });
    await expect(cache.acquire({ ...spec('a.bin', A), sha256: undefined })).rejects.toMatchObject({ kind: 'invalid-argument' });
    await expect(cache.acquire({ fileName: 'x', source: { kind: 'https', url: 'http://example.com/x' }, sha256: sha256(A) })).rejects.toMatchObject({ kind: 'disallowed-url' });
  });

  it('evicts least-recently-used files but never one in use', async () => {
    // Budget fits A (512K) + one 256K file.
    const { cache, dir } = await cacheIn('evict', { weightCacheMaxBytes: 800 * KiB });
    const la = await cache.acquire(spec('a.bin', A)); // held throughout
    const lb = await cache.acquire(spec('b.bin', B));
    await lb.release();
    // Make A the least recently used on paper: it must still survive (in use).
    const old = new Date(Date.now() - 3600_000);
    await fsp.utimes(path.join(dir, 'meta', 'a.bin.json'), old, old);
    const lc = await cache.acquire(spec('c.bin', C));
    const files = (await fsp.readdir(path.join(dir, 'files'))).sort();
    expect(files).toEqual(['a.bin', 'c.bin']);
    const entries = await cache.entries();
    expect(entries.find((e) => e.fileName === 'a.bin')?.inUse).toBe(true);
    await la.release();
    await lc.release();
    // Now A is free and the oldest: an explicit evict under a smaller budget takes it first.
    await fsp.utimes(path.join(dir, 'meta', 'a.bin.json'), old, old);
    const r = await cache.evict({ budgetBytes: 300 * KiB });
    expect(r.evicted).toEqual(['a.bin']);
    expect(await fsp.readdir(path.join(dir, 'files'))).toEqual(['c.bin']);
  });

  it('will not replace a file in use with one from a different source', async () => {
    const { cache } = await cacheIn('conflict');
    const held = await cache.acquire(spec('a.bin', A));
    const other = { fileName: 'a.bin', source: { kind: 'https' as const, url: `${web.url}/b.bin` }, sha256: sha256(B) };
    await expect(cache.acquire(other)).rejects.toMatchObject({ kind: 'invalid-argument' });
    expect(sha256(await fsp.readFile(held.path))).toBe(sha256(A));
    await held.release();
    const l = await cache.acquire(other);
    expect(sha256(await fsp.readFile(l.path))).toBe(sha256(B));
    await l.release();
  });

  it('takes over a lock left by a dead process', async () => {
    const { cache, dir } = await cacheIn('stale');
    await fsp.mkdir(path.join(dir, 'locks'), { recursive: true });
    // A pid that is certainly not running (beyond pid_max on Linux).
    await fsp.writeFile(path.join(dir, 'locks', 'b.bin.lock'), JSON.stringify({ pid: 2 ** 22 + 7, host: os.hostname(), token: 'dead', createdAt: 0 }));
    const l = await cache.acquire(spec('b.bin', B));
    expect(l.downloaded).toBe(true);
    await l.release();
  });

  it('waits for a lock held by a live holder', async () => {
    const { cache, dir } = await cacheIn('live');
    const held = await lockFile(path.join(dir, 'locks', 'b.bin.lock'), { staleMs: 2_000 });
    let done = false;
    const p = cache.acquire(spec('b.bin', B)).then((l) => {
      done = true;
      return l;
    });
    await new Promise((r) => setTimeout(r, 300));
    expect(done).toBe(false);
    await held.release();
    const l = await p;
    expect(done).toBe(true);
    await l.release();
  });

  it('fetches from an R2 key, records the marker, and re-fetches when the source changes', async () => {
    // 64 KiB ranges: exercise the concurrent ranged path (8 ranges).
    const { cache, storage, s3, dir } = await cacheIn('r2', {}, { downloadChunkBytes: 64 * KiB });
    const key = `${prefix}base/model.bin`;
    await storage.putObject('models', key, A);
    try {
      const l = await cache.acquire({ fileName: 'model.bin', source: { kind: 'r2', bucketAlias: 'models', key }, bytes: A.length });
      expect(l.downloaded).toBe(true);
      expect(sha256(await fsp.readFile(l.path))).toBe(sha256(A));
      const marker = JSON.parse(await fsp.readFile(path.join(dir, 'meta', 'model.bin.json'), 'utf8'));
      expect(marker).toMatchObject({ sha256: sha256(A), bytes: A.length, source: `r2:models/${key}` });
      await l.release();
      // A different source under the same name is not trusted from the marker.
      await storage.putObject('models', `${key}.v2`, B);
      const l2 = await cache.acquire({ fileName: 'model.bin', source: { kind: 'r2', bucketAlias: 'models', key: `${key}.v2` } });
      expect(l2.downloaded).toBe(true);
      expect(sha256(await fsp.readFile(l2.path))).toBe(sha256(B));
      await l2.release();
    } finally {
      await storage.deletePrefix('models', prefix).catch(() => undefined);
      s3.destroy();
    }
  });

  it('takes a local file by hard link (no second copy), verifies a pinned hash, and refuses a missing file', async () => {
    const { cache, s3, dir } = await cacheIn('local');
    try {
      const provisioned = path.join(root, 'provisioned-model.bin');
      await fsp.writeFile(provisioned, A);
      const l = await cache.acquire({ fileName: 'local.bin', source: { kind: 'local', path: provisioned } });
      expect(l.downloaded).toBe(true);
      // Same inode: the cache holds a link, not a copy.
      expect((await fsp.stat(l.path)).ino).toBe((await fsp.stat(provisioned)).ino);
      const marker = JSON.parse(await fsp.readFile(path.join(dir, 'meta', 'local.bin.json'), 'utf8'));
      expect(marker).toMatchObject({ bytes: A.length, source: `local:${provisioned}` });
      await l.release();
      const again = await cache.acquire({ fileName: 'local.bin', source: { kind: 'local', path: provisioned } });
      expect(again.downloaded).toBe(false);
      await again.release();
      // A pinned hash is checked, and a wrong one keeps nothing.
      await expect(cache.acquire({ fileName: 'pinned.bin', source: { kind: 'local', path: provisioned }, sha256: sha256(B) })).rejects.toMatchObject({ kind: 'invalid-content' });
      await expect(fsp.stat(path.join(dir, 'files', 'pinned.bin'))).rejects.toThrow();
      const pinned = await cache.acquire({ fileName: 'pinned.bin', source: { kind: 'local', path: provisioned }, sha256: sha256(A) });
      expect(sha256(await fsp.readFile(pinned.path))).toBe(sha256(A));
      await pinned.release();
      await expect(cache.acquire({ fileName: 'gone.bin', source: { kind: 'local', path: path.join(root, 'absent.bin') } })).rejects.toMatchObject({ kind: 'not-found' });
      await expect(cache.acquire({ fileName: 'rel.bin', source: { kind: 'local', path: 'relative.bin' } })).rejects.toBeInstanceOf(StorageError);
    } finally {
      s3.destroy();
    }
  });
});

describe('across OS processes (compiled dist)', () => {
  const distIndex = path.resolve(__dirname, '../dist/index.js');
  beforeAll(() => {
    // Children cannot use ts-jest: build the library's dist (what `nx build storage` does).
    execFileSync(process.execPath, [require.resolve('typescript/bin/tsc'), '-p', path.resolve(__dirname, '../tsconfig.lib.json')], { stdio: 'inherit' });
  }, 120_000);

  function runChild(script: string): Promise<{ code: number; out: string }> {
    return new Promise((resolve) => {
      const p = spawn(process.execPath, ['-e', `require('reflect-metadata');\n${script}`], { cwd: path.resolve(__dirname, '../../..'), stdio: ['ignore', 'pipe', 'inherit'] });
      let out = '';
      p.stdout.on('data', (d) => (out += d));
      p.on('exit', (code) => resolve({ code: code ?? -1, out }));
    });
  }

  it('three worker processes acquiring one weight file download it once', async () => {
    const dir = path.join(root, 'xproc-cache');
    const s = spec('a.bin', A);
    const script = `
      const lib = require(${JSON.stringify(distIndex)});
      const cfg = lib.loadStorageConfig({ WEIGHT_CACHE_DIR: ${JSON.stringify(dir)} });
      const cache = new lib.WeightCache(cfg, new lib.ObjectStorage(cfg, lib.createS3Client(cfg)), { lockStaleMs: 5000, lockPollMs: 10 });
      cache.acquire(${JSON.stringify(s)}).then(async (l) => {
        process.stdout.write(JSON.stringify({ downloaded: l.downloaded, path: l.path }));
        await l.release();
        process.exit(0);
      }, (e) => { console.error(e); process.exit(1); });`;
    const before = requests.length;
    const results = await Promise.all([0, 1, 2].map(() => runChild(script)));
    expect(results.map((r) => r.code)).toEqual([0, 0, 0]);
    const parsed = results.map((r) => JSON.parse(r.out) as { downloaded: boolean; path: string });
    expect(parsed.filter((p) => p.downloaded)).toHaveLength(1);
    expect(requests.slice(before).filter((r) => r.url === '/a.bin')).toHaveLength(1);
    expect(sha256(await fsp.readFile(path.join(dir, 'files', 'a.bin')))).toBe(sha256(A));
  }, 60_000);

  it('a lock is held by one process at a time', async () => {
    const dir = await tmpDir('xproc');
    const lockPath = path.join(dir, 'x.lock');
    const log = path.join(dir, 'log');
    const script = `
      const { lockFile } = require(${JSON.stringify(distIndex)});
      const fs = require('node:fs');
      (async () => {
        for (let i = 0; i < 5; i++) {
          const l = await lockFile(${JSON.stringify(lockPath)}, { pollMs: 5 });
          fs.appendFileSync(${JSON.stringify(log)}, 'in ' + process.pid + '\\n');
          await new Promise((r) => setTimeout(r, 10));
          fs.appendFileSync(${JSON.stringify(log)}, 'out ' + process.pid + '\\n');
          await l.release();
        }
      })();`;
    const kids = await Promise.all([0, 1, 2].map(() => runChild(script)));
    expect(kids.map((k) => k.code)).toEqual([0, 0, 0]);
    const lines = (await fsp.readFile(log, 'utf8')).trim().split('\n');
    expect(lines).toHaveLength(30);
    for (let i = 0; i < lines.length; i += 2) {
      // Every 'in' is immediately followed by the same process's 'out': no overlap.
      expect(lines[i].startsWith('in ')).toBe(true);
      expect(lines[i + 1]).toBe(lines[i].replace('in ', 'out '));
    }
    await fsp.rm(dir, { recursive: true, force: true });
  }, 30_000);
});
