import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { findManifestEntry, parseImageManifest, type ImageManifestEntry } from '@stationthis/recipes';
import { readImageManifest, upsertImageManifest } from './image-manifest';

const digest = `sha256:${'b'.repeat(64)}`;
const entry = (recipeId: string, recipeVersion: string, pushed = true): ImageManifestEntry => ({
  recipeId,
  recipeVersion,
  image: `127.0.0.1:5000/stationthis/${recipeId}`,
  tag: recipeVersion,
  gitTag: 'abc1234',
  digest: pushed ? digest : null,
  repoDigest: pushed ? `127.0.0.1:5000/stationthis/${recipeId}@${digest}` : null,
  imageId: `sha256:${'c'.repeat(64)}`,
  engineCommit: 'd'.repeat(40),
});

describe('image manifest', () => {
  let dir: string;
  beforeAll(async () => {
    dir = await mkdtemp(join(tmpdir(), 'rb-manifest-'));
  });
  afterAll(async () => {
    await rm(dir, { recursive: true, force: true });
  });

  it('upserts entries, keeps the others, and reads back what it wrote', async () => {
    const path = join(dir, 'nested', 'image-manifest.json');
    await upsertImageManifest(path, [entry('sdxl-lora', '1.0.0'), entry('smoke-cpu', '0.1.0', false)]);
    await upsertImageManifest(path, [entry('smoke-cpu', '0.1.0')]);
    const m = await readImageManifest(path);
    expect(Object.keys(m.images)).toEqual(['sdxl-lora@1.0.0', 'smoke-cpu@0.1.0']);
    expect(findManifestEntry(m, 'smoke-cpu', '0.1.0')?.repoDigest).toBe(`127.0.0.1:5000/stationthis/smoke-cpu@${digest}`);
    expect(findManifestEntry(m, 'smoke-cpu', '9.9.9')).toBeUndefined();
    // Stable bytes: rewriting the same content changes nothing.
    const before = await readFile(path, 'utf8');
    await upsertImageManifest(path, [entry('sdxl-lora', '1.0.0')]);
    expect(await readFile(path, 'utf8')).toBe(before);
  });

  it('rejects malformed manifests with a message that names the problem', async () => {
    const path = join(dir, 'bad.json');
    await writeFile(path, '{"schemaVersion":1,"images":{"x@1":{"recipeId":"y","recipeVersion":"1","image":"i","tag":"1","imageId":"s","digest":null,"repoDigest":null}}}');
    await expect(readImageManifest(path)).rejects.toThrow(/wrong key/);
    expect(() => parseImageManifest({ schemaVersion: 2, images: {} })).toThrow(/schemaVersion/);
    expect(() => parseImageManifest({ schemaVersion: 1, images: { 'a@1': { ...entry('a', '1'), digest: 'sha256:zz' } } })).toThrow(/malformed digest/);
    await expect(readImageManifest(join(dir, 'missing.json'))).rejects.toThrow(/Cannot read the image manifest/);
  });
});
