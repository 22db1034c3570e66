/**
 * WeightCachePort conformance: the same assertions against the real
 * WeightCache (MinIO, ports.int.spec.ts) and InMemoryWeightCache
 * (ports.spec.ts).
 */
import { createHash, randomBytes } from 'node:crypto';
import { promises as fsp } from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import type { WeightCachePort } from '../../src';

export interface WeightCacheSubject {
  port: WeightCachePort;
  /** Stores `body` in the models bucket at `key`. */
  seed(key: string, body: Buffer): Promise<void>;
  prefix: string;
  close(): Promise<void>;
}

const sha = (b: Buffer) => createHash('sha256').update(b).digest('hex');

export function weightCacheConformance(name: string, open: () => Promise<WeightCacheSubject>): void {
  describe(`WeightCachePort conformance: ${name}`, () => {
    let s: WeightCacheSubject;
    let dir: string;
    const A = randomBytes(200_000);
    beforeAll(async () => {
      s = await open();
      dir = await fsp.mkdtemp(path.join(os.tmpdir(), 'st-weights-conf-'));
      await s.seed(`${s.prefix}base/a.safetensors`, A);
    });
    afterAll(async () => {
      await s?.close();
      await fsp.rm(dir, { recursive: true, force: true });
    });

    it('fetches an R2 weight once, verified, and serves it again from the cache', async () => {
      const spec = { fileName: 'conf-a.safetensors', source: { kind: 'r2' as const, bucketAlias: 'models' as const, key: `${s.prefix}base/a.safetensors` }, sha256: sha(A) };
      const first = await s.port.acquire(spec);
      expect(first.downloaded).toBe(true);
      expect(sha(await fsp.readFile(first.path))).toBe(sha(A));
      const second = await s.port.acquire(spec);
      expect(second.downloaded).toBe(false);
      expect(second.path).toBe(first.path);
      await first.release();
      await second.release();
    });

    it('refuses a download whose sha256 does not match', async () => {
      const spec = { fileName: 'conf-bad.safetensors', source: { kind: 'r2' as const, bucketAlias: 'models' as const, key: `${s.prefix}base/a.safetensors` }, sha256: sha(Buffer.from('other')) };
      await expect(s.port.acquire(spec)).rejects.toMatchObject({ kind: 'invalid-content', message: expect.stringMatching(/failed verification/) });
    });

    it('says which object is missing', async () => {
      const err = await s.port.acquire({ fileName: 'conf-missing.bin', source: { kind: 'r2', bucketAlias: 'models', key: `${s.prefix}base/missing.bin` } }).catch((e) => e);
      expect(err).toMatchObject({ name: 'StorageError', kind: 'not-found' });
      expect(err.message).toContain('missing.bin');
    });

    it('takes a provisioned local file, and refuses a relative path', async () => {
      const local = path.join(dir, 'provisioned.bin');
      await fsp.writeFile(local, A);
      const l = await s.port.acquire({ fileName: 'conf-local.bin', source: { kind: 'local', path: local }, sha256: sha(A) });
      expect(sha(await fsp.readFile(l.path))).toBe(sha(A));
      await l.release();
      await expect(s.port.acquire({ fileName: 'conf-rel.bin', source: { kind: 'local', path: 'relative.bin' } })).rejects.toMatchObject({ kind: 'invalid-argument' });
    });

    it('refuses unsafe names and unverifiable https sources before fetching', async () => {
      await expect(s.port.acquire({ fileName: '../escape', source: { kind: 'local', path: '/etc/passwd' } })).rejects.toMatchObject({ kind: 'invalid-name' });
      await expect(s.port.acquire({ fileName: 'x.bin', source: { kind: 'https', url: 'https://weights.example/x.bin' } })).rejects.toMatchObject({ kind: 'invalid-argument' });
      await expect(s.port.acquire({ fileName: 'y.bin', source: { kind: 'https', url: 'http://weights.example/y.bin' }, sha256: sha(A) })).rejects.toMatchObject({ kind: 'disallowed-url' });
    });
  });
}
