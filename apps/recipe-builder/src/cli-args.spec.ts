import { parseCliArgs } from './cli-args';

const defaults = { outDir: '/w/apps/recipe-builder/build', registry: '127.0.0.1:5000' };

describe('parseCliArgs', () => {
  it('parses generate with --only lists in both spellings', () => {
    expect(parseCliArgs(['generate', '--only', 'a', 'b', '--only=c,d'], defaults)).toEqual({ command: 'generate', only: ['a', 'b', 'c', 'd'], outDir: defaults.outDir });
  });

  it('gives build-images safe defaults: no push, no offline inputs, default registry and namespace', () => {
    const c = parseCliArgs(['build-images'], defaults);
    expect(c).toMatchObject({ command: 'build-images', push: false, dryRun: false, registry: '127.0.0.1:5000', namespace: 'stationthis', timeoutSeconds: 3600 });
    expect(c).toMatchObject({ engineArchiveDir: undefined, tokenizersDir: undefined, caBundle: undefined });
  });

  it('parses every build-images option', () => {
    const c = parseCliArgs(
      [
        'build-images', '--only', 'smoke-cpu', '--push', '--dry-run', '--registry', 'ghcr.io', '--namespace=acme/train',
        '--base-image', 'builder=a/b:1', '--base-image=runtime=c/d:2', '--engine-archives', '/srv/engines', '--tokenizers=/srv/tok', '--ca-bundle', 'none', '--debian-compat',
        '--build-arg', 'PIP_MIRROR_URL=http://m/simple', '--no-cache', '--manifest', 'out/m.json', '--timeout', '90',
      ],
      defaults,
    );
    expect(c).toEqual({
      command: 'build-images', only: ['smoke-cpu'], outDir: defaults.outDir, registry: 'ghcr.io', namespace: 'acme/train', push: true, dryRun: true,
      baseImages: { builder: 'a/b:1', runtime: 'c/d:2' }, engineArchiveDir: '/srv/engines', tokenizersDir: '/srv/tok', caBundle: 'none', debianCompat: true,
      buildArgs: { PIP_MIRROR_URL: 'http://m/simple' }, nocache: true, manifestPath: 'out/m.json', timeoutSeconds: 90,
    });
  });

  it('lets a plain --base-image replace both bases and the last of --push/--no-push win', () => {
    const c = parseCliArgs(['build-images', '--base-image', 'stationthis-local/bookworm-minbase:1', '--push', '--no-push'], defaults);
    expect(c).toMatchObject({ baseImages: { builder: 'stationthis-local/bookworm-minbase:1', runtime: 'stationthis-local/bookworm-minbase:1' }, push: false });
  });

  it.each([
    [['build-images', '--frobnicate'], /Unknown option '--frobnicate'/],
    [['deploy'], /Unknown command 'deploy'/],
    [['build-images', '--only'], /--only needs at least one recipe id/],
    [['build-images', '--registry', '--push'], /--registry needs a value/],
    [['build-images', '--timeout', '-5'], /positive whole number/],
    [['build-images', '--build-arg', 'NOVALUE'], /KEY=VALUE/],
    [['generate', '--push'], /--push is a build-images option/],
  ])('rejects %j', (argv, pattern) => {
    expect(() => parseCliArgs(argv, defaults)).toThrow(pattern);
  });

  it('answers help', () => {
    expect(parseCliArgs([], defaults)).toEqual({ command: 'help' });
    expect(parseCliArgs(['--help'], defaults)).toEqual({ command: 'help' });
  });
});
