import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { smokeRecipe } from '@stationthis/recipes';
import { loadWorkerConfig } from '../config/worker-config';
import { ImageResolver } from './image-resolver';

describe('ImageResolver', () => {
  let dir: string;
  beforeAll(async () => {
    dir = await mkdtemp(join(tmpdir(), 'image-resolver-'));
  });
  afterAll(() => rm(dir, { recursive: true, force: true }));
  const resolver = (path: string) => new ImageResolver(loadWorkerConfig({ IMAGE_MANIFEST_PATH: path }));

  it('runs the pinned digest from the manifest', async () => {
    const path = join(dir, 'ok.json');
    const digest = `sha256:${'a'.repeat(64)}`;
    const image = '127.0.0.1:5000/stationthis/smoke-cpu';
    await writeFile(path, JSON.stringify({ schemaVersion: 1, images: { [`smoke-cpu@${smokeRecipe.version}`]: { recipeId: 'smoke-cpu', recipeVersion: smokeRecipe.version, image, tag: smokeRecipe.version, gitTag: 'x', digest, repoDigest: `${image}@${digest}`, imageId: 'sha256:b', engineCommit: 'c' } } }));
    expect(await resolver(path).resolve(smokeRecipe as never)).toBe(`${image}@${digest}`);
  });

  it('uses the conventional tag only when there is no manifest file', async () => {
    expect(await resolver(join(dir, 'absent.json')).resolve(smokeRecipe as never)).toBe(`127.0.0.1:5000/stationthis/${smokeRecipe.image.name}:${smokeRecipe.version}`);
  });

  it('refuses a corrupt manifest instead of silently running a tag', async () => {
    const path = join(dir, 'corrupt.json');
    await writeFile(path, '{"schemaVersion": 1, "images": {"smoke-cpu@1.0.0": {"image": "x"}}}');
    await expect(resolver(path).resolve(smokeRecipe as never)).rejects.toThrow(/image manifest .*corrupt\.json is invalid.*Regenerate/i);
    await writeFile(path, 'not json');
    await expect(resolver(path).resolve(smokeRecipe as never)).rejects.toThrow(/not valid JSON/);
  });
});
