/**
 * ModelUploadPort conformance: the same assertions against the real
 * ModelUploader (MinIO, ports.int.spec.ts) and InMemoryModelUpload
 * (ports.spec.ts), so the fake cannot drift from the adapter.
 */
import { createHash, randomBytes } from 'node:crypto';
import { promises as fsp } from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import type { BucketAlias, ModelUploadPort } from '../../src';

export interface ModelUploadSubject {
  port: ModelUploadPort;
  /** The stored bytes of an object, or null. */
  read(alias: BucketAlias, key: string): Promise<Buffer | null>;
  /** The public URL the adapter must report. */
  publicUrl(alias: BucketAlias, key: string): string;
  /** A key prefix unique to this run. */
  prefix: string;
  close(): Promise<void>;
}

export function modelUploadConformance(name: string, open: () => Promise<ModelUploadSubject>): void {
  describe(`ModelUploadPort conformance: ${name}`, () => {
    let s: ModelUploadSubject;
    let dir: string;
    beforeAll(async () => {
      s = await open();
      dir = await fsp.mkdtemp(path.join(os.tmpdir(), 'st-upload-conf-'));
    });
    afterAll(async () => {
      await s?.close();
      await fsp.rm(dir, { recursive: true, force: true });
    });

    it('stores the file and reports its size, sha256, AutoV2 and public URL', async () => {
      const body = randomBytes(300_000);
      const file = path.join(dir, 'model.safetensors');
      await fsp.writeFile(file, body);
      const key = `${s.prefix}loras/conf-model.safetensors`;
      const seen: number[] = [];
      const up = await s.port.upload({ filePath: file, bucketAlias: 'models', key, contentType: 'application/octet-stream', onProgress: (p) => seen.push(p.uploadedBytes) });
      const sha256 = createHash('sha256').update(body).digest('hex');
      expect(up).toEqual({ bucketAlias: 'models', key, bytes: body.length, sha256, autov2: sha256.slice(0, 10), publicUrl: s.publicUrl('models', key) });
      expect(seen[seen.length - 1]).toBe(body.length);
      expect((await s.read('models', key))?.equals(body)).toBe(true);
    });

    it('overwrites an object at the same key', async () => {
      const file = path.join(dir, 'again.bin');
      const key = `${s.prefix}artifacts/again.bin`;
      await fsp.writeFile(file, 'first');
      await s.port.upload({ filePath: file, bucketAlias: 'models', key, contentType: 'text/plain' });
      await fsp.writeFile(file, 'second version');
      const up = await s.port.upload({ filePath: file, bucketAlias: 'models', key, contentType: 'text/plain' });
      expect(up.bytes).toBe(14);
      expect((await s.read('models', key))?.toString()).toBe('second version');
    });

    it('refuses a missing file before anything is stored, naming it', async () => {
      const missing = path.join(dir, 'gone.bin');
      const key = `${s.prefix}gone.bin`;
      const err = await s.port.upload({ filePath: missing, bucketAlias: 'models', key, contentType: 'x/y' }).catch((e) => e);
      expect(err).toMatchObject({ name: 'StorageError', kind: 'invalid-argument' });
      expect(err.message).toContain(missing);
      expect(await s.read('models', key)).toBeNull();
    });

    it('refuses an unsafe key', async () => {
      const file = path.join(dir, 'x.bin');
      await fsp.writeFile(file, 'x');
      await expect(s.port.upload({ filePath: file, bucketAlias: 'models', key: '../escape.bin', contentType: 'x/y' })).rejects.toMatchObject({ kind: 'invalid-name' });
    });

    it('a cancelled upload stores nothing', async () => {
      const file = path.join(dir, 'cancel.bin');
      await fsp.writeFile(file, randomBytes(100_000));
      const key = `${s.prefix}cancel.bin`;
      const ctl = new AbortController();
      ctl.abort();
      await expect(s.port.upload({ filePath: file, bucketAlias: 'models', key, contentType: 'x/y', signal: ctl.signal })).rejects.toMatchObject({ kind: 'aborted' });
      expect(await s.read('models', key)).toBeNull();
    });
  });
}
