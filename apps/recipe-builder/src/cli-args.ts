/**
 * Command-line parsing for `generate` and `build-images`, with `node:util`
 * `parseArgs` in strict mode (as the worker CLI does). Pure, so every option
 * is unit tested. Unknown options fail loudly: a typo in CI must not silently
 * build or push the wrong thing.
 */
import { parseArgs, type ParseArgsConfig } from 'node:util';
import type { BaseImageOverrides } from './build-images';

export interface CliDefaults {
  outDir: string;
  registry: string;
}

export interface GenerateCommand {
  command: 'generate';
  only: string[];
  outDir: string;
}

export interface BuildImagesCommand {
  command: 'build-images';
  only: string[];
  outDir: string;
  registry: string;
  namespace: string;
  push: boolean;
  dryRun: boolean;
  baseImages: BaseImageOverrides;
  /** Engine archive folder, tokenizers folder, CA bundle ('none' disables); undefined: from the environment. */
  engineArchiveDir?: string;
  tokenizersDir?: string;
  caBundle?: string;
  debianCompat: boolean;
  buildArgs: Record<string, string>;
  nocache: boolean;
  /** Undefined: `<outDir>/image-manifest.json`. */
  manifestPath?: string;
  timeoutSeconds: number;
}

export interface HelpCommand {
  command: 'help';
}

export type CliCommand = GenerateCommand | BuildImagesCommand | HelpCommand;

export const USAGE = `Usage:
  recipe-builder generate [--only <id...>] [--out <dir>]
  recipe-builder build-images [options]

build-images options:
  --only <id...>                      build only these recipes (space or comma separated; repeatable)
  --push | --no-push                  push both tags and record digests (default: --no-push; the last one wins)
  --dry-run                           render contexts and print the plan; no Docker calls
  --registry <host[:port]>            default: $REGISTRY_URL or 127.0.0.1:5000
  --namespace <ns>                    default: stationthis
  --base-image <ref>                  replace both base images (hosts without CUDA images)
  --base-image builder=<ref>          replace the builder base only (also runtime=, both=; repeatable)
  --engine-archives <dir>             folder with the engines' pinned source archives (sha256
                                      checked); default $STATIONTHIS_ENGINE_ARCHIVES, else git
  --tokenizers <dir>                  HF_HOME-layout folder with the recipes' tokenizers; default
                                      $STATIONTHIS_TOKENIZERS_DIR, else the Hugging Face Hub
  --ca-bundle <file|none>             CA bundle for builder stages only; default: the host's
                                      $PIP_CERT / $SSL_CERT_FILE / $REQUESTS_CA_BUNDLE when set
  --debian-compat                     map python3.X packages to Debian's python3 names
  --build-arg KEY=VALUE               extra non-secret build arg (repeatable)
  --no-cache                          build without the layer cache
  --manifest <path>                   default: <out>/image-manifest.json
  --timeout <seconds>                 per build and per push (default 3600)
  --out <dir>                         build folder (default: apps/recipe-builder/build)

A value given twice for a single-value option: the last one wins.
A value starting with '-' is written --option=-value.

Through Nx, put the options after "--":
  npx nx run recipe-builder:build-images -- --only smoke-cpu --push`;

/** Every option of both commands; `generate` accepts only GENERATE_OPTIONS. */
const OPTIONS = {
  help: { type: 'boolean', short: 'h' },
  only: { type: 'string', multiple: true },
  out: { type: 'string' },
  registry: { type: 'string' },
  namespace: { type: 'string' },
  push: { type: 'boolean' },
  'no-push': { type: 'boolean' },
  'dry-run': { type: 'boolean' },
  'base-image': { type: 'string', multiple: true },
  'engine-archives': { type: 'string' },
  tokenizers: { type: 'string' },
  'ca-bundle': { type: 'string' },
  'debian-compat': { type: 'boolean' },
  'build-arg': { type: 'string', multiple: true },
  'no-cache': { type: 'boolean' },
  manifest: { type: 'string' },
  timeout: { type: 'string' },
} as const satisfies ParseArgsConfig['options'];

type OptionName = keyof typeof OPTIONS;
const GENERATE_OPTIONS: ReadonlySet<OptionName> = new Set(['help', 'only', 'out']);

function fail(message: string): never {
  throw new Error(`${message}\n\n${USAGE}`);
}

/**
 * parseArgs' own errors, reworded to name the option and what to do. Node's
 * message is kept when its wording is not recognised (it may change between
 * Node releases), so nothing is ever swallowed.
 */
function reword(err: unknown): never {
  const e = err as { code?: string; message?: string };
  const message = e?.message ?? String(err);
  const option = /'(-{1,2}[^' ]+)/.exec(message)?.[1];
  if (e?.code === 'ERR_PARSE_ARGS_UNKNOWN_OPTION' && option) fail(`Unknown option '${option}'`);
  if (e?.code === 'ERR_PARSE_ARGS_INVALID_OPTION_VALUE' && option) {
    if (/does not take an argument/.test(message)) fail(`${option} takes no value`);
    if (/argument missing|ambiguous/.test(message)) {
      fail(`${option} needs a value (to pass a value that starts with '-', write ${option}=<value>)`);
    }
  }
  fail(message.split('\n')[0]);
}

function positiveSeconds(v: string): number {
  const n = Number(v);
  if (!/^\d+$/.test(v.trim()) || !Number.isSafeInteger(n) || n <= 0) fail(`--timeout must be a positive whole number of seconds, got '${v}'`);
  return n;
}

export function parseCliArgs(argv: string[], defaults: CliDefaults): CliCommand {
  const [command, ...rest] = argv;
  if (command === undefined || command === 'help' || command === '--help' || command === '-h') return { command: 'help' };
  if (command !== 'generate' && command !== 'build-images') fail(`Unknown command '${command}'`);

  const parsed = (() => {
    try {
      return parseArgs({ args: rest, options: OPTIONS, strict: true, allowPositionals: true, tokens: true });
    } catch (err) {
      return reword(err);
    }
  })();

  const only: string[] = [];
  const baseImages: BaseImageOverrides = {};
  const buildArgs: Record<string, string> = {};
  let push = false;
  // Walk the tokens in order: `--only a b` takes the words after it, and the last of --push/--no-push wins.
  let onlyOpen = false;
  for (const token of parsed.tokens) {
    if (token.kind === 'positional') {
      if (!onlyOpen) fail(`Unexpected argument '${token.value}'`);
      only.push(...token.value.split(',').filter((s) => s !== ''));
      continue;
    }
    onlyOpen = false;
    if (token.kind !== 'option') fail(`Unexpected '--': ${command} takes options only`);
    const name = token.name as OptionName;
    if (command === 'generate' && !GENERATE_OPTIONS.has(name)) fail(`${token.rawName} is a build-images option`);
    const value = token.value ?? '';
    switch (name) {
      case 'help':
        return { command: 'help' };
      case 'only': {
        const ids = value.split(',').filter((s) => s !== '');
        if (ids.length === 0) fail('--only needs at least one recipe id');
        only.push(...ids);
        // Space-separated ids only after `--only a`, not after `--only=a`.
        onlyOpen = token.inlineValue === false;
        break;
      }
      case 'push':
        push = true;
        break;
      case 'no-push':
        push = false;
        break;
      case 'build-arg': {
        const eq = value.indexOf('=');
        if (eq <= 0) fail(`--build-arg needs KEY=VALUE, got '${value}'`);
        buildArgs[value.slice(0, eq)] = value.slice(eq + 1);
        break;
      }
      case 'base-image': {
        const m = /^(builder|runtime|both)=(.+)$/.exec(value);
        const which = m ? m[1] : 'both';
        const ref = m ? m[2] : value;
        if (which !== 'runtime') baseImages.builder = ref;
        if (which !== 'builder') baseImages.runtime = ref;
        break;
      }
      default:
        // Single-value options and flags: parseArgs already kept the last value.
        break;
    }
  }

  const v = parsed.values;
  const outDir = v.out ?? defaults.outDir;
  if (command === 'generate') return { command, only, outDir };
  return {
    command,
    only,
    outDir,
    registry: v.registry ?? defaults.registry,
    namespace: v.namespace ?? 'stationthis',
    push,
    dryRun: v['dry-run'] ?? false,
    baseImages,
    engineArchiveDir: v['engine-archives'],
    tokenizersDir: v.tokenizers,
    caBundle: v['ca-bundle'],
    debianCompat: v['debian-compat'] ?? false,
    buildArgs,
    nocache: v['no-cache'] ?? false,
    manifestPath: v.manifest,
    timeoutSeconds: v.timeout === undefined ? 3600 : positiveSeconds(v.timeout),
  };
}
