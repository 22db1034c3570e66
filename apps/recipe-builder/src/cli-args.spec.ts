import { parseCliArgs, USAGE } from './cli-args';

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
    [['build-images', '--frobnicate'], /^Unknown option '--frobnicate'\n/],
    [['build-images', '--frob=1'], /^Unknown option '--frob'\n/],
    [['build-images', '-x'], /^Unknown option '-x'\n/],
    [['generate', '--Only', 'a'], /^Unknown option '--Only'\n/],
    [['deploy'], /Unknown command 'deploy'/],
    [['build-images', 'smoke-cpu'], /Unexpected argument 'smoke-cpu'/],
    [['build-images', '--only'], /--only needs a value/],
    [['build-images', '--only='], /--only needs at least one recipe id/],
    [['build-images', '--registry', '--push'], /--registry needs a value \(to pass a value that starts with '-', write --registry=<value>\)/],
    [['build-images', '--namespace'], /--namespace needs a value/],
    [['build-images', '--timeout', '-5'], /--timeout needs a value/],
    [['build-images', '--timeout=-5'], /positive whole number of seconds, got '-5'/],
    [['build-images', '--timeout', '0'], /positive whole number/],
    [['build-images', '--timeout', '1.5'], /positive whole number/],
    [['build-images', '--build-arg', 'NOVALUE'], /KEY=VALUE/],
    [['build-images', '--push=yes'], /--push takes no value/],
    [['generate', '--push'], /--push is a build-images option/],
    [['generate', '--registry=r'], /--registry is a build-images option/],
  ])('rejects %j', (argv, pattern) => {
    expect(() => parseCliArgs(argv, defaults)).toThrow(pattern);
  });

  it('prints the usage with every error', () => {
    expect(() => parseCliArgs(['build-images', '--frobnicate'], defaults)).toThrow(USAGE);
    expect(() => parseCliArgs(['build-images', '--registry'], defaults)).toThrow(USAGE);
  });

  it('collects repeated list options and keeps the last value of a repeated single-value option', () => {
    const c = parseCliArgs(
      [
        'build-images', '--only', 'a', '--only=b', '--build-arg', 'A=1', '--build-arg', 'B=2', '--build-arg', 'A=3',
        '--base-image', 'x:1', '--base-image', 'runtime=y:2', '--registry', 'r1', '--registry=r2', '--timeout', '10', '--timeout', '20',
      ],
      defaults,
    );
    expect(c).toMatchObject({
      only: ['a', 'b'], buildArgs: { A: '3', B: '2' }, baseImages: { builder: 'x:1', runtime: 'y:2' }, registry: 'r2', timeoutSeconds: 20,
    });
  });

  it('takes a value that starts with a dash only in the --option=value spelling', () => {
    expect(parseCliArgs(['build-images', '--namespace=-odd'], defaults)).toMatchObject({ namespace: '-odd' });
  });

  it('answers help', () => {
    expect(parseCliArgs([], defaults)).toEqual({ command: 'help' });
    expect(parseCliArgs(['--help'], defaults)).toEqual({ command: 'help' });
    expect(parseCliArgs(['build-images', '--push', '-h'], defaults)).toEqual({ command: 'help' });
    expect(parseCliArgs(['generate', '--help'], defaults)).toEqual({ command: 'help' });
  });
});
