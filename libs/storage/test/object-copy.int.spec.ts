/**
 * copyObject against the real MinIO: a server-side copy with its own metadata
 * and cache policy, the same bytes, and a clear not-found for a missing source.
 */
import { StorageError, copyObject } from '../src';
import { makeStorage, uniquePrefix } from './helpers';

const prefix = uniquePrefix('storage-copy');
const { storage } = makeStorage();

afterAll(async () => {
  await storage.deletePrefix('models', prefix).catch(() => undefined);
});

async function bytesOf(key: string): Promise<Buffer> {
  const chunks: Buffer[] = [];
  for await (const c of (await storage.getObjectStream('models', key)).body) chunks.push(Buffer.from(c as Buffer));
  return Buffer.concat(chunks);
}

describe('copyObject', () => {
  it('copies the bytes server-side and replaces metadata, content type and cache policy', async () => {
    const body = Buffer.from('checkpoint weights at step 500');
    await storage.putObject('models', `${prefix}src.safetensors`, body, { contentType: 'application/x-test', metadata: { origin: 'src' } });
    const out = await copyObject(storage, { alias: 'models', key: `${prefix}src.safetensors` }, { alias: 'models', key: `${prefix}dst.safetensors` }, {
      contentType: 'application/octet-stream',
      cacheControl: 'public, max-age=31536000, immutable',
      metadata: { 'training-job-id': 'job1' },
    });
    expect(out.bytes).toBe(body.length);
    expect(await bytesOf(`${prefix}dst.safetensors`)).toEqual(body);
    const head = await storage.headObject('models', `${prefix}dst.safetensors`);
    expect(head).toMatchObject({ contentType: 'application/octet-stream', cacheControl: 'public, max-age=31536000, immutable', metadata: { 'training-job-id': 'job1' } });
    expect(head?.metadata).not.toHaveProperty('origin');
    // The source is untouched.
    expect(await storage.headObject('models', `${prefix}src.safetensors`)).toMatchObject({ contentType: 'application/x-test', metadata: { origin: 'src' } });
  });

  it('above the single-copy limit it copies in parts (UploadPartCopy), byte for byte', async () => {
    // 12 MiB in 5 MiB parts: three parts, the last one short.
    const body = Buffer.alloc(12 * 1024 ** 2);
    for (let i = 0; i < body.length; i += 4) body.writeUInt32LE(i, i);
    await storage.putObject('models', `${prefix}big.safetensors`, body);
    const out = await copyObject(storage, { alias: 'models', key: `${prefix}big.safetensors` }, { alias: 'models', key: `${prefix}big-copy.safetensors` }, {
      singleCopyLimitBytes: 1,
      partBytes: 5 * 1024 ** 2,
      cacheControl: 'public, max-age=31536000, immutable',
      metadata: { 'training-job-id': 'job2' },
    });
    expect(out.bytes).toBe(body.length);
    expect((await bytesOf(`${prefix}big-copy.safetensors`)).equals(body)).toBe(true);
    expect(await storage.headObject('models', `${prefix}big-copy.safetensors`)).toMatchObject({ etag: expect.stringMatching(/-3"?$/), cacheControl: 'public, max-age=31536000, immutable', metadata: { 'training-job-id': 'job2' } });
    expect(await storage.listMultipartUploads('models', prefix)).toEqual([]);
  });

  it('a missing source is not-found, and nothing is written', async () => {
    const err = await copyObject(storage, { alias: 'models', key: `${prefix}missing` }, { alias: 'models', key: `${prefix}never` }).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(StorageError);
    expect(err).toMatchObject({ kind: 'not-found' });
    expect(await storage.headObject('models', `${prefix}never`)).toBeNull();
  });
});
