/**
 * build-images end to end against the real Docker engine and the local
 * registry (127.0.0.1:5000), with the real recipes:
 * - the smoke image on the local Debian base, then run as a container;
 * - every production image for real, offline: the shared torch layer from
 *   PyPI (pinned), the engines from the pinned source archives (sha256 checked),
 *   tokenizers from a local Hugging Face cache folder, flag checks run;
 * - push, pull back by digest, manifest digests equal the registry's;
 * - a config-only change rebuilds from cache (both durations printed).
 * First run on a fresh engine: ~2 min for the smoke image's python3-torch and
 * several minutes for the torch layer (2.5 GB of wheels); later runs hit the cache.
 */
import { execFileSync } from 'node:child_process';
import { existsSync } from 'node:fs';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import Docker from 'dockerode';
import { serviceEnv } from '../../../tools/testing/support';
import { buildImages, checkImageNamesUnique, type BuildImagesOptions, type BuiltImage } from './build-images';
import { readEventStream, streamError } from './docker-image';
import { readImageManifest } from './image-manifest';
import type { BuildableRecipe } from './recipe-types';
import { loadRecipes } from './recipes-source';

const env = serviceEnv();
const docker = new Docker({ socketPath: env.dockerSocket });
const NAMESPACE = 'recipe-builder-test';
const MANIFEST_ACCEPT = [
  'application/vnd.docker.distribution.manifest.v2+json',
  'application/vnd.oci.image.manifest.v1+json',
  'application/vnd.docker.distribution.manifest.list.v2+json',
  'application/vnd.oci.image.index.v1+json',
].join(', ');

jest.setTimeout(8 * 60_000);

/**
 * The real recipes. Until libs/recipes gives every recipe its own image.name,
 * tags of recipes sharing a name would clash in the registry (build-images
 * refuses that); this suite then suffixes the recipe id so it can still cover
 * the build, and the clash itself is reported by the test at the end.
 */
function recipesForBuild(): { recipes: BuildableRecipe[]; clash?: string } {
  const recipes = loadRecipes();
  try {
    checkImageNamesUnique(recipes);
    return { recipes };
  } catch (err) {
    const shared = (r: BuildableRecipe) => recipes.filter((o) => o.image.name === r.image.name).length > 1;
    return {
      recipes: recipes.map((r) => (shared(r) ? { ...r, image: { ...r.image, name: `${r.image.name}-${r.id}` } } : r)),
      clash: (err as Error).message,
    };
  }
}

async function registryDigest(image: string, tag: string): Promise<string | null> {
  const repo = image.slice(env.registry.length + 1);
  const res = await fetch(`http://${env.registry}/v2/${repo}/manifests/${tag}`, { method: 'HEAD', headers: { Accept: MANIFEST_ACCEPT } });
  if (!res.ok) throw new Error(`registry HEAD ${repo}:${tag} answered ${res.status}`);
  return res.headers.get('docker-content-digest');
}

async function pullByDigest(repoDigest: string): Promise<void> {
  const stream = (await docker.pull(repoDigest)) as NodeJS.ReadableStream;
  const events = await readEventStream(stream as never, () => undefined);
  const failure = streamError(events);
  if (failure) throw new Error(`pull ${repoDigest} failed: ${failure}`);
}

/** Runs argv in the image the way the worker will: read-only root, tmpfs /tmp, no network. */
async function runIn(image: string, cmd: string[]): Promise<{ code: number; output: string }> {
  const c = await docker.createContainer({
    Image: image,
    Cmd: cmd,
    Tty: true,
    Labels: { 'ai.stationthis.test': 'recipe-builder' },
    HostConfig: { ReadonlyRootfs: true, Tmpfs: { '/tmp': 'rw,size=64m' }, NetworkMode: 'none' },
  });
  try {
    await c.start();
    const { StatusCode } = (await c.wait()) as { StatusCode: number };
    const logs: unknown = await c.logs({ stdout: true, stderr: true });
    // docker-modem hands back parsed JSON when the output happens to be JSON.
    const output = Buffer.isBuffer(logs) ? logs.toString('utf8') : typeof logs === 'string' ? logs : JSON.stringify(logs);
    return { code: StatusCode, output };
  } finally {
    await c.remove({ force: true });
  }
}

describe('build-images against the local registry', () => {
  const { recipes, clash } = recipesForBuild();
  const production = recipes.filter((r) => r.product).map((r) => r.id);
  const smoke = recipes.find((r) => r.id === 'smoke-cpu') as BuildableRecipe;
  // A fixed sha: the next run rebuilds the same images from cache under the same tags,
  // so local images and registry tags do not pile up run after run.
  const gitSha = 'rbtest';
  const cacheTestImages: BuiltImage[] = [];
  const durations: Record<string, number> = {};
  let dir: string;
  let base: Omit<BuildImagesOptions, 'only' | 'recipes'>;
  const log = (line: string) => {
    if (/built sha256|pushed|image manifest|credentials/.test(line)) process.stdout.write(`${line}\n`);
  };

  beforeAll(async () => {
    dir = await mkdtemp(join(tmpdir(), 'rb-images-'));
    base = {
      outDir: join(dir, 'build'),
      registry: env.registry,
      namespace: NAMESPACE,
      push: true,
      dryRun: false,
      baseImages: { builder: env.baseImage, runtime: env.baseImage },
      gitSha,
      manifestPath: join(dir, 'image-manifest.json'),
      timeoutMs: 10 * 60_000,
      docker,
      env: {},
      dockerConfigPath: join(dir, 'no-docker-config.json'),
      log,
    };
  });

  afterAll(async () => {
    // The cache-test images carry one-off versions: remove them and their own layers
    // (shared parents stay, they belong to the kept smoke image).
    for (const img of cacheTestImages) {
      for (const ref of img.tags) await docker.getImage(ref).remove().catch(() => undefined);
    }
    // Pull-by-digest references would keep superseded images alive after a Dockerfile change.
    const manifest = await readImageManifest(base.manifestPath).catch(() => undefined);
    for (const e of Object.values(manifest?.images ?? {})) {
      if (e.repoDigest) await docker.getImage(e.repoDigest).remove({ noprune: true }).catch(() => undefined);
    }
    await rm(dir, { recursive: true, force: true });
    process.stdout.write(`recipe-builder durations: ${JSON.stringify(durations)}\n`);
  });

  it('builds and pushes the smoke image on the local base, and it runs as uid 1000 with its healthcheck passing', async () => {
    const result = await buildImages({ ...base, recipes, only: ['smoke-cpu'] });
    const img = result.images[0];
    durations.smokeBuildMs = img.buildMs ?? -1;
    durations.smokePushMs = img.pushMs ?? -1;
    expect(img.tags).toEqual([`${env.registry}/${NAMESPACE}/${smoke.image.name}:${smoke.version}`, `${env.registry}/${NAMESPACE}/${smoke.image.name}:${gitSha}`]);
    expect(img.digest).toMatch(/^sha256:[0-9a-f]{64}$/);

    const info = await docker.getImage(img.tags[0]).inspect();
    expect(info.Config.User).toBe('1000:1000');
    expect(info.Config.Labels['ai.stationthis.recipe.version']).toBe(smoke.version);
    expect(info.Config.Labels['ai.stationthis.engine.commit']).toBe(smoke.engine.commit);
    expect(info.Config.Labels['org.opencontainers.image.revision']).toBe(gitSha);
    expect(info.Config.Labels['org.opencontainers.image.base.name']).toBe(env.baseImage);

    expect(await runIn(img.tags[0], ['id', '-u'])).toEqual({ code: 0, output: expect.stringMatching(/^1000\s*$/) });
    expect((await runIn(img.tags[0], smoke.image.healthcheck)).code).toBe(0);
    const provenance = JSON.parse((await runIn(img.tags[0], ['cat', '/opt/stationthis/image.json'])).output);
    expect(provenance.recipe).toEqual({ id: smoke.id, version: smoke.version, family: smoke.family });
    const noCommand = await runIn(img.tags[0], []);
    expect(noCommand.code).toBe(64);
  });

  // Opt-in here (RECIPE_BUILDER_REAL_IMAGES=1): tools/conformance/prepare.sh makes the same real builds in every test-all run.
  (process.env['RECIPE_BUILDER_REAL_IMAGES'] === '1' ? it : it.skip)('builds every production image offline from the pinned archives and local tokenizers, and pushes it', async () => {
    const repo = join(__dirname, '../../..');
    const archives = process.env['STATIONTHIS_ENGINE_ARCHIVES'] ?? join(repo, '../shared/engines');
    const tokenizers = process.env['STATIONTHIS_TOKENIZERS_DIR'] ?? join(repo, '.state/conformance/tokenizers');
    if (!existsSync(join(tokenizers, 'hub'))) execFileSync('python3', [join(repo, 'tools/conformance/models/make_tokenizers.py'), tokenizers]);
    const result = await buildImages({ ...base, recipes, only: production, inputs: { engineArchiveDir: archives, tokenizersDir: tokenizers, caBundle: process.env['PIP_CERT'] ?? process.env['SSL_CERT_FILE'] ?? process.env['REQUESTS_CA_BUNDLE'] } });
    expect(result.images.map((i) => i.recipeId).sort()).toEqual([...production].sort());
    for (const img of result.images) {
      durations[`${img.recipeId}BuildMs`] = img.buildMs ?? -1;
      const recipe = recipes.find((r) => r.id === img.recipeId) as BuildableRecipe;
      expect(img.buildArgs.TORCH_BASE).toMatch(/\/torch-py311:[0-9a-f]{16}$/);
      expect(await runIn(img.tags[0], ['id', '-u'])).toEqual({ code: 0, output: expect.stringMatching(/^1000\s*$/) });
      expect((await runIn(img.tags[0], ['python', '-c', 'import torch; print(torch.__version__)'])).output.trim()).toMatch(/^2\.6\.0/);
      // The engine is the pinned commit, from the archive.
      expect((await runIn(img.tags[0], ['cat', `${recipe.image.workdir}/.stationthis-engine-commit`])).output.trim()).toBe(recipe.engine.commit);
      // Every tokenizer loads offline (no network, HF_HUB_OFFLINE from the image) with the engine's loader class.
      for (const t of recipe.image.tokenizers ?? []) {
        const code = `import transformers as t; tok = getattr(t, ${JSON.stringify(t.loader)}).from_pretrained(${JSON.stringify(t.repo)}${t.subfolder ? `, subfolder=${JSON.stringify(t.subfolder)}` : ''}); print(len(tok))`;
        const r = await runIn(img.tags[0], ['python', '-c', code]);
        expect({ repo: t.repo, code: r.code }).toEqual({ repo: t.repo, code: 0 });
      }
      // The build CA never reaches the runtime image.
      expect((await runIn(img.tags[0], ['test', '-e', '/opt/build-ca'])).code).not.toBe(0);
      const config = (await docker.getImage(img.tags[0]).inspect()).Config;
      expect((config.Env ?? []).filter((e: string) => /^(PIP_CERT|SSL_CERT_FILE|REQUESTS_CA_BUNDLE)=/.test(e))).toEqual([]);
      expect(config.Labels['ai.stationthis.recipe.version']).toBe(recipe.version);
      expect(config.Labels['ai.stationthis.engine.commit']).toBe(recipe.engine.commit);
    }
    // One torch layer for all of them.
    expect(new Set(result.images.map((i) => i.buildArgs.TORCH_BASE)).size).toBe(1);
  }, 90 * 60_000);

  it('writes a manifest whose digests equal the registry digests, and every image pulls back by digest', async () => {
    const manifest = await readImageManifest(base.manifestPath);
    expect(Object.keys(manifest.images).length).toBeGreaterThan(0);
    for (const entry of Object.values(manifest.images)) {
      expect(entry.digest).toMatch(/^sha256:/);
      expect(await registryDigest(entry.image, entry.tag)).toBe(entry.digest);
      expect(await registryDigest(entry.image, entry.gitTag)).toBe(entry.digest);
      await pullByDigest(entry.repoDigest as string);
      expect((await docker.getImage(entry.repoDigest as string).inspect()).Id).toBe(entry.imageId);
    }
  });

  it('rebuilds a config-only change from cache', async () => {
    // A recipe version bump changes only the labels and the provenance file.
    const nonce = Date.now().toString(36);
    const bumped = (n: string) => recipes.map((r) => (r.id === 'smoke-cpu' ? { ...r, version: `${r.version}-cache.${n}` } : r));
    const first = await buildImages({ ...base, recipes: bumped(`${nonce}a`), only: ['smoke-cpu'], push: false, manifestPath: join(dir, 'cache-manifest.json') });
    const second = await buildImages({ ...base, recipes: bumped(`${nonce}b`), only: ['smoke-cpu'], push: false, manifestPath: join(dir, 'cache-manifest.json') });
    cacheTestImages.push(...first.images, ...second.images);
    const [a, b] = [first.images[0], second.images[0]];
    durations.smokeConfigChangeFirstMs = a.buildMs ?? -1;
    durations.smokeConfigChangeSecondMs = b.buildMs ?? -1;
    process.stdout.write(
      `cache check: build after config change #1 ${((a.buildMs ?? 0) / 1000).toFixed(1)} s (${a.cachedSteps}/${a.totalSteps} cached), ` +
        `#2 ${((b.buildMs ?? 0) / 1000).toFixed(1)} s (${b.cachedSteps}/${b.totalSteps} cached); smoke image first build this run ${(durations.smokeBuildMs / 1000).toFixed(1)} s\n`,
    );
    expect(b.imageId).not.toBe(a.imageId);
    // Everything before the version LABEL (apt, venv, engine, flag check) came from the cache:
    // the first step that ran (after the FROMs and global ARGs, which never say 'Using cache') is that LABEL.
    const ran = (b.rebuiltSteps ?? []).filter((i) => !/^(FROM|ARG (BUILDER|RUNTIME)_BASE=)/.test(i));
    expect(ran[0]).toMatch(/^LABEL ai\.stationthis\.engine\.commit=/);
    expect(ran.some((i) => /^RUN /.test(i) && /apt-get|venv|flag/.test(i))).toBe(false);
    expect(b.buildMs).toBeLessThan(30_000);
  });

  it('uses distinct image names for the real recipes (else their tags clash in the registry)', () => {
    expect(clash).toBeUndefined();
  });
});
