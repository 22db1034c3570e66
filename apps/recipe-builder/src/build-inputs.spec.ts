/**
 * Offline build inputs: engine archives (sha256-pinned in the recipe), tokenizers
 * in Hugging Face cache layout, and the build CA; plus the shared torch layer's tag.
 */
import { createHash } from 'node:crypto';
import { existsSync } from 'node:fs';
import { mkdir, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fixtureSdxl, fixtureWan } from './__fixtures__/recipes';
import { resolveBuildInputs, stageBuildInputs } from './build-inputs';
import { torchBaseTag } from './dockerfile';
import type { BuildableRecipe } from './recipe-types';
import { loadRecipes } from './recipes-source';

let dir: string;
beforeEach(async () => {
  dir = await mkdtemp(join(tmpdir(), 'rb-inputs-'));
});
afterEach(() => rm(dir, { recursive: true, force: true }));

async function archiveFor(recipe: BuildableRecipe, bytes: Buffer): Promise<{ recipe: BuildableRecipe; archives: string }> {
  const archives = join(dir, 'archives');
  await mkdir(archives, { recursive: true });
  if (recipe.image.engineSource.kind !== 'git') throw new Error('git recipe expected');
  await writeFile(join(archives, recipe.image.engineSource.archive.fileName), bytes);
  const sha256 = createHash('sha256').update(bytes).digest('hex');
  const source = { ...recipe.image.engineSource, archive: { ...recipe.image.engineSource.archive, sha256 } };
  return { recipe: { ...recipe, image: { ...recipe.image, engineSource: source } }, archives };
}

async function tokenizersFor(repos: string[]): Promise<string> {
  const tok = join(dir, 'tok');
  for (const r of repos) {
    const folder = join(tok, 'hub', `models--${r.replace('/', '--')}`, 'snapshots', 'rev');
    await mkdir(folder, { recursive: true });
    await writeFile(join(folder, 'tokenizer_config.json'), '{}');
  }
  return tok;
}

describe('stageBuildInputs', () => {
  it('stages the archive whose sha256 the recipe pins, and the recipe\'s tokenizers', async () => {
    const { recipe, archives } = await archiveFor(fixtureSdxl, Buffer.from('engine source'));
    const ctx = join(dir, 'ctx');
    const staged = await stageBuildInputs(recipe, ctx, { engineArchiveDir: archives, tokenizersDir: await tokenizersFor(['openai/clip-vit-large-patch14']), caBundle: undefined });
    expect(staged).toMatchObject({ engineSource: 'archive', tokenizers: 'local', caBundle: false });
    const src = recipe.image.engineSource.kind === 'git' ? recipe.image.engineSource.archive.fileName : '';
    expect(await readFile(join(ctx, 'engine-archive', src), 'utf8')).toBe('engine source');
    expect(existsSync(join(ctx, 'hf-home', 'hub', 'models--openai--clip-vit-large-patch14', 'snapshots', 'rev', 'tokenizer_config.json'))).toBe(true);
  });

  it('refuses an archive whose sha256 differs from the recipe, naming both hashes', async () => {
    const { recipe, archives } = await archiveFor(fixtureSdxl, Buffer.from('engine source'));
    await writeFile(join(archives, recipe.image.engineSource.kind === 'git' ? recipe.image.engineSource.archive.fileName : 'x'), 'tampered');
    const actual = createHash('sha256').update('tampered').digest('hex');
    const pinned = recipe.image.engineSource.kind === 'git' ? recipe.image.engineSource.archive.sha256 : '';
    await expect(stageBuildInputs(recipe, join(dir, 'ctx'), { engineArchiveDir: archives, caBundle: undefined })).rejects.toThrow(new RegExp(`${actual}.*${pinned}`));
  });

  it('refuses a tokenizers folder that lacks one of the recipe\'s repositories', async () => {
    const { recipe, archives } = await archiveFor(fixtureWan, Buffer.from('musubi'));
    const tok = await tokenizersFor(['openai/clip-vit-large-patch14']);
    await expect(stageBuildInputs(recipe, join(dir, 'ctx'), { engineArchiveDir: archives, tokenizersDir: tok, caBundle: undefined })).rejects.toThrow(/lacks hub\/models--Wan-AI--Wan2\.1-T2V-14B/);
  });

  it('stages the host CA bundle for the builder stages when one is configured', async () => {
    const ca = join(dir, 'ca.crt');
    await writeFile(ca, '-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n');
    const inputs = resolveBuildInputs({}, { PIP_CERT: ca });
    expect(inputs.caBundle).toBe(ca);
    const staged = await stageBuildInputs(fixtureSdxl, join(dir, 'ctx'), { ...inputs, engineArchiveDir: undefined });
    expect(staged.caBundle).toBe(true);
    expect(await readFile(join(dir, 'ctx', 'build-ca', 'ca.crt'), 'utf8')).toContain('BEGIN CERTIFICATE');
    expect(resolveBuildInputs({ caBundle: 'none' }, { PIP_CERT: ca }).caBundle).toBeUndefined();
  });
});

describe('the shared torch layer', () => {
  const real = loadRecipes().filter((r) => r.image.torchBase);

  it('is one image for every engine recipe', () => {
    // Every recipe but the bundled smoke engine: a new family joins the shared layer without a change here.
    expect(real.map((r) => r.id).sort()).toEqual(loadRecipes().filter((r) => r.image.engineSource.kind !== 'bundled').map((r) => r.id).sort());
    expect(real.map((r) => r.id)).toEqual(expect.arrayContaining(['sdxl-lora', 'flux-lora', 'wan-lora', 'kontext-lora']));
    expect(new Set(real.map((r) => torchBaseTag(r))).size).toBe(1);
  });

  it('keeps its tag through a recipe-only change and changes it with a torch pin', () => {
    const r = real[0];
    const recipeOnly: BuildableRecipe = { ...r, version: '9.9.9', image: { ...r.image, pipRequirements: [...r.image.pipRequirements, 'extra==1.0'], flagChecks: [] } };
    expect(torchBaseTag(recipeOnly)).toBe(torchBaseTag(r));
    const torchBase = r.image.torchBase!;
    const newTorch: BuildableRecipe = { ...r, image: { ...r.image, torchBase: { ...torchBase, pipRequirements: torchBase.pipRequirements.map((p) => (p.startsWith('torch==') ? 'torch==2.7.0' : p)) } } };
    expect(torchBaseTag(newTorch)).not.toBe(torchBaseTag(r));
  });
});
