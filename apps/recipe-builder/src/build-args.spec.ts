import { fixtureRecipes, fixtureSdxl, fixtureSmoke } from './__fixtures__/recipes';
import { buildArgsFor, checkImageNamesUnique, debianPackageName } from './build-images';
import { selectRecipes } from './generate';

describe('build args', () => {
  it('maps Ubuntu python3.X packages to Debian names', () => {
    expect(['python3.10', 'python3.10-venv', 'python3.10-dev', 'libpython3.10-dev', 'python3-venv', 'git', 'python3.10x'].map(debianPackageName)).toEqual([
      'python3', 'python3-venv', 'python3-dev', 'libpython3-dev', 'python3-venv', 'git', 'python3.10x',
    ]);
  });

  it('sets only what differs from the Dockerfile defaults, sorted', () => {
    expect(buildArgsFor(fixtureSdxl.image, { gitSha: 'abc1234' })).toEqual({ GIT_SHA: 'abc1234' });
    const args = buildArgsFor(fixtureSdxl.image, {
      gitSha: 'abc1234',
      baseImages: { builder: 'stationthis-local/bookworm-minbase:1', runtime: 'stationthis-local/bookworm-minbase:1' },
      debianCompat: true,
      buildArgs: { PIP_MIRROR_URL: 'http://mirror/simple' },
    });
    expect(Object.keys(args)).toEqual([...Object.keys(args)].sort());
    expect(args).toEqual({
      BUILDER_BASE: 'stationthis-local/bookworm-minbase:1',
      GIT_SHA: 'abc1234',
      PIP_MIRROR_URL: 'http://mirror/simple',
      RUNTIME_BASE: 'stationthis-local/bookworm-minbase:1',
    });
    // On the shared torch layer the engine stages start FROM it: the bases went into the torch image.
    expect(buildArgsFor(fixtureSdxl.image, { gitSha: 'abc1234', baseImages: { builder: 'b:1', runtime: 'r:1' } }, '127.0.0.1:5000/st/torch-py311:abc')).toEqual({
      GIT_SHA: 'abc1234',
      TORCH_BASE: '127.0.0.1:5000/st/torch-py311:abc',
    });
    expect(buildArgsFor(fixtureSmoke.image, { gitSha: 'x', debianCompat: true })).toEqual({ GIT_SHA: 'x' });
  });

  it('refuses secret-looking build args', () => {
    expect(() => buildArgsFor(fixtureSdxl.image, { gitSha: 'x', buildArgs: { HF_TOKEN: 'x' } })).toThrow(/looks like a secret/);
  });
});

describe('recipe selection', () => {
  it('selects by id, sorted, and names unknown ids', () => {
    expect(selectRecipes(fixtureRecipes, ['smoke-cpu', 'sdxl-lora']).map((r) => r.id)).toEqual(['sdxl-lora', 'smoke-cpu']);
    expect(selectRecipes(fixtureRecipes, []).length).toBe(fixtureRecipes.length);
    expect(() => selectRecipes(fixtureRecipes, ['nope'])).toThrow(/Unknown recipe id\(s\) nope; known: sdxl-lora, smoke-cpu, wan-lora/);
  });

  it('refuses two recipes that share an image name (their tags would clash)', () => {
    expect(() => checkImageNamesUnique(fixtureRecipes)).not.toThrow();
    const twin = { ...fixtureSdxl, id: 'flux-lora' };
    expect(() => checkImageNamesUnique([...fixtureRecipes, twin])).toThrow(/'sdxl-kohya' \(sdxl-lora, flux-lora\)/);
    expect(() => checkImageNamesUnique([...fixtureRecipes, twin], ['flux-lora'])).toThrow(/sdxl-kohya/);
    // Building only recipes outside the clash is fine.
    expect(() => checkImageNamesUnique([...fixtureRecipes, twin], ['smoke-cpu'])).not.toThrow();
  });
});
