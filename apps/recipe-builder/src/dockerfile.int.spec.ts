/**
 * Generated Dockerfiles, checked on the parse tree of a real Dockerfile parser.
 * Runs over the stand-in fixtures and over every real recipe.
 */
import { mkdtemp, readdir, readFile, rm, stat } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fixtureRecipes, fixtureSdxl, fixtureSmoke } from './__fixtures__/recipes';
import { renderBuildContext } from './build-context';
import { buildStateDirs, renderDockerfile } from './dockerfile';
import { generateBuildContexts } from './generate';
import { checkBuildableRecipe } from './image-spec-check';
import type { BuildableRecipe } from './recipe-types';
import { loadRecipes } from './recipes-source';
import { lintDockerfile, scanForSecrets } from './testing/dockerfile-lint';

const realRecipes = loadRecipes();

const expectationsOf = (r: BuildableRecipe) => ({
  recipeId: r.id,
  recipeVersion: r.version,
  engineCommit: r.engine.commit,
  engineRepository: r.engine.repository,
});

describe.each([
  ...fixtureRecipes.map((r) => [`fixture ${r.id}`, r] as const),
  ...realRecipes.map((r) => [`recipe ${r.id}`, r] as const),
])('generated Dockerfile of %s', (_label, recipe) => {
  const dockerfile = renderDockerfile(recipe);

  it('passes every check (multi-stage, non-root, HEALTHCHECK, labels, no latest, no secrets)', () => {
    expect(lintDockerfile(dockerfile, expectationsOf(recipe))).toEqual([]);
  });

  it('has no credentials anywhere in its build context', () => {
    for (const file of renderBuildContext(recipe).files) {
      expect({ file: file.path, hits: scanForSecrets(file.content) }).toEqual({ file: file.path, hits: [] });
    }
  });

  it('puts slow installs before the fast-changing files', () => {
    const at = (needle: string) => dockerfile.indexOf(needle);
    expect(at('apt-get install')).toBeGreaterThan(0);
    expect(at('apt-get install')).toBeLessThan(at('COPY rootfs/ /'));
    expect(at('-m venv')).toBeLessThan(at('COPY rootfs/ /'));
    if (recipe.image.pipRequirements.length > 0) expect(at('pip install ${PIP_MIRROR_URL')).toBeLessThan(at('COPY rootfs/ /'));
    // Only metadata-only instructions follow the last file copy.
    const tail = dockerfile.slice(at('COPY rootfs/ /')).split('\n').slice(1).filter((l) => /^[A-Z]+ /.test(l));
    expect(tail.map((l) => l.split(' ')[0])).toEqual(['WORKDIR', 'USER', 'HEALTHCHECK', 'ENTRYPOINT']);
  });

  it('keeps extra index URLs and the build CA out of the runtime stage', () => {
    for (const url of recipe.image.pipExtraIndexUrls ?? []) {
      const lines = dockerfile.split('\n').filter((l) => l.includes(url) && !l.startsWith('#'));
      expect(lines.length).toBe(1);
      expect(lines.every((l) => l.startsWith('ARG PIP_EXTRA_INDEX_URLS='))).toBe(true);
    }
    const runtime = dockerfile.slice(dockerfile.lastIndexOf('\nFROM '));
    expect(runtime).not.toMatch(/build-ca|PIP_CERT|SSL_CERT_FILE|REQUESTS_CA_BUNDLE/);
  });

  if (recipe.image.engineSource.kind === 'git') {
    const source = recipe.image.engineSource;
    it('takes the engine from the sha256-checked archive, else from git at the pinned commit', () => {
      expect(dockerfile).toContain(`echo "${source.archive.sha256}  `);
      expect(dockerfile).toContain('sha256sum -c -');
      expect(dockerfile).toContain(`git fetch -q --depth 1 origin ${recipe.engine.commit}`);
      expect(dockerfile).toContain(`printf '%s\\n' ${recipe.engine.commit} > ${recipe.image.workdir}/.stationthis-engine-commit`);
    });
  }

  if ((recipe.image.tokenizers ?? []).length > 0) {
    it('fetches tokenizers without the HF offline switches, then proves they load offline', () => {
      const bake = dockerfile.indexOf('tokenizers_build.py fetch');
      expect(bake).toBeGreaterThan(0);
      const before = dockerfile.slice(0, bake);
      expect(before).not.toMatch(/HF_HUB_OFFLINE|TRANSFORMERS_OFFLINE/);
      const runtime = dockerfile.slice(dockerfile.lastIndexOf('\nFROM '));
      if (recipe.image.env?.HF_HUB_OFFLINE) expect(runtime).toContain('HF_HUB_OFFLINE="1"');
      const script = renderBuildContext(recipe).files.find((f) => f.path === 'build/tokenizers_build.py');
      for (const t of recipe.image.tokenizers ?? []) expect(script?.content).toContain(t.repo);
    });
  }

  it('ships the CUDA-free import hook exactly when the recipe lists modules for it', () => {
    const hook = renderBuildContext(recipe).files.find((f) => f.path === 'build/sitecustomize.py');
    const modules = (recipe.image.cudaFreeImports ?? []).map((m) => m.module);
    expect(hook !== undefined).toBe(modules.length > 0);
    for (const m of modules) expect(hook?.content).toContain(m);
    expect(dockerfile.includes('sitecustomize.py')).toBe(modules.length > 0);
  });
});

describe('build-step state directories', () => {
  it('carries *_HOME/*_DIR/*_CACHE/*_ROOT paths outside /tmp, the venv and the workdir', () => {
    // Bundled images (no torch layer) create these folders; engine images get HF_HOME from the tokenizer bake.
    const r: BuildableRecipe = {
      ...fixtureSmoke,
      image: {
        ...fixtureSmoke.image,
        env: { HF_HOME: '/opt/hf-home/', TORCH_HOME: '/tmp/torch', X_DIR: '/opt/smoke/cache', MODELS_ROOT: '/srv/models', CONFIG_FILE: '/opt/x.yaml', MY_CACHE: 'relative' },
        buildSteps: [{ description: 'fetch', argv: ['python', '-c', 'pass'] }],
      },
    };
    expect(buildStateDirs(r)).toEqual(['/opt/hf-home', '/srv/models']);
    const dockerfile = renderDockerfile(r);
    expect(dockerfile).toContain('RUN mkdir -p /opt/hf-home /srv/models');
    expect(dockerfile).toContain('COPY --from=builder /opt/hf-home /opt/hf-home');
    // The build steps run with the recipe env, so they write where the runtime reads.
    expect(dockerfile.indexOf('HF_HOME="/opt/hf-home/"')).toBeLessThan(dockerfile.indexOf('# Build step: fetch'));
  });
});

describe('the lint itself catches bad Dockerfiles', () => {
  // The bundled layout has its own base ARGs to tamper with; the engine layout starts FROM the torch image.
  const good = renderDockerfile(fixtureSmoke);
  const expects = expectationsOf(fixtureSmoke);

  it('accepts the generated file', () => {
    expect(lintDockerfile(good, expects)).toEqual([]);
  });
  it('flags a single stage, root user, missing HEALTHCHECK and latest', () => {
    const bad = 'FROM ubuntu:latest\nLABEL ai.stationthis.recipe.version="1.0.0"\nUSER root\n';
    const problems = lintDockerfile(bad, expects).join('\n');
    expect(problems).toMatch(/multi-stage/);
    expect(problems).toMatch(/uses 'latest'/);
    expect(problems).toMatch(/root/);
    expect(problems).toMatch(/HEALTHCHECK/);
    expect(problems).toMatch(/engine.commit/);
  });
  it('flags a missing USER and an untagged base', () => {
    const bad = good.replace('USER 1000:1000\n', '').replace(/^ARG RUNTIME_BASE=.*$/m, 'ARG RUNTIME_BASE=ubuntu');
    const problems = lintDockerfile(bad, expects).join('\n');
    expect(problems).toMatch(/never sets USER/);
    expect(problems).toMatch(/FROM ubuntu has no tag/);
  });
  it('flags secret-looking ARG names and credential shapes', () => {
    const bad = good.replace(
      'ARG GIT_SHA=unknown',
      'ARG GIT_SHA=unknown\nARG HF_TOKEN\nARG R2_SECRET_ACCESS_KEY\nENV MONGO_URL=mongodb://admin:hunter2@db:27017 KEY=AKIAABCDEFGHIJKLMNOP',
    );
    const problems = lintDockerfile(bad, expects).join('\n');
    expect(problems).toMatch(/ARG HF_TOKEN looks like a secret/);
    expect(problems).toMatch(/ARG R2_SECRET_ACCESS_KEY looks like a secret/);
    expect(problems).toMatch(/MongoDB URI with credentials/);
    expect(problems).toMatch(/AWS access key id/);
  });
});

describe('recipe checks before rendering', () => {
  const withImage = (patch: Partial<BuildableRecipe['image']>, top: Partial<BuildableRecipe> = {}): BuildableRecipe => ({
    ...fixtureSdxl,
    ...top,
    image: { ...fixtureSdxl.image, ...patch },
  });

  it('accepts the fixtures and the real recipes', () => {
    for (const r of [...fixtureRecipes, ...realRecipes]) expect({ id: r.id, problems: checkBuildableRecipe(r) }).toEqual({ id: r.id, problems: [] });
  });
  it.each([
    ['latest base', withImage({ runtimeBase: { image: 'nvidia/cuda:latest' } }), /latest/],
    ['untagged base', withImage({ builderBase: { image: 'nvidia/cuda' } }), /no tag/],
    ['bad digest', withImage({ builderBase: { image: 'nvidia/cuda:12', digest: 'sha256:abc' } }), /digest/],
    ['short commit', { ...fixtureSdxl, engine: { ...fixtureSdxl.engine, commit: '48d368fa' } }, /40-hex/],
    ['unpinned pip', withImage({ pipRequirements: ['torch>=2'] }), /pinned/],
    ['shell in apt', withImage({ builderAptPackages: ['git;rm -rf /'] }), /apt package/],
    ['secret env', withImage({ env: { HF_TOKEN: 'x' } }), /looks like a secret/],
    ['credential URL', withImage({ pipExtraIndexUrls: ['https://user:pw@example.com/simple'] }), /plain URL/],
    ['newline in build step', withImage({ buildSteps: [{ description: 'x', argv: ['sh', '-c', 'a\nb'] }] }), /line break/],
    ['relative workdir', withImage({ workdir: 'opt/x' }), /absolute/],
  ])('rejects %s', (_name, recipe, pattern) => {
    expect(checkBuildableRecipe(recipe as BuildableRecipe).join('\n')).toMatch(pattern);
    expect(() => renderDockerfile(recipe as BuildableRecipe)).toThrow(/fix the recipe/);
  });
  it('lets TOKENIZERS_PARALLELISM through (not a secret)', () => {
    expect(checkBuildableRecipe(withImage({ env: { TOKENIZERS_PARALLELISM: 'false' } }))).toEqual([]);
  });
});

describe('determinism', () => {
  let dirA: string;
  let dirB: string;
  beforeAll(async () => {
    dirA = await mkdtemp(join(tmpdir(), 'rb-gen-a-'));
    dirB = await mkdtemp(join(tmpdir(), 'rb-gen-b-'));
  });
  afterAll(async () => {
    await rm(dirA, { recursive: true, force: true });
    await rm(dirB, { recursive: true, force: true });
  });

  async function snapshot(root: string): Promise<Record<string, string>> {
    const out: Record<string, string> = {};
    for (const entry of await readdir(root, { recursive: true, withFileTypes: true })) {
      if (!entry.isFile()) continue;
      const abs = join(entry.parentPath ?? (entry as unknown as { path: string }).path, entry.name);
      const rel = abs.slice(root.length + 1);
      out[rel] = `${((await stat(abs)).mode & 0o777).toString(8)} ${(await readFile(abs)).toString('base64')}`;
    }
    return out;
  }

  it('generates byte-identical contexts (content and modes) on repeated runs', async () => {
    const recipes = [...fixtureRecipes, ...realRecipes];
    for (const dir of [dirA, dirB, dirB]) {
      // Fixtures and real recipes share ids, so they go to separate folders; dirB is generated twice (over existing files).
      await generateBuildContexts(fixtureRecipes, join(dir, 'fixtures'));
      await generateBuildContexts(realRecipes, join(dir, 'real'));
    }
    const a = await snapshot(dirA);
    const b = await snapshot(dirB);
    expect(Object.keys(a).length).toBeGreaterThan(recipes.length * 4);
    expect(b).toEqual(a);
  });

  it('does not depend on the insertion order of maps', () => {
    const env = fixtureSmoke.image.env ?? {};
    const files = fixtureSmoke.image.engineSource.kind === 'bundled' ? fixtureSmoke.image.engineSource.files : {};
    const reversed: BuildableRecipe = {
      ...fixtureSmoke,
      image: {
        ...fixtureSmoke.image,
        env: Object.fromEntries(Object.entries({ ...env, ZZ: '1', AA: '2' }).reverse()),
        engineSource: { kind: 'bundled', files: Object.fromEntries(Object.entries(files).reverse()) },
      },
    };
    const forward: BuildableRecipe = { ...fixtureSmoke, image: { ...fixtureSmoke.image, env: { ...env, AA: '2', ZZ: '1' } } };
    expect(renderBuildContext(reversed)).toEqual(renderBuildContext(forward));
  });
});
