/**
 * Command-line parsing for `generate` and `build-images`. Pure, so every
 * option is unit tested. Unknown options fail loudly: a typo in CI must not
 * silently build or push the wrong thing.
 */
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
  --only <id...>                      build only these recipes (space or comma separated)
  --push | --no-push                  push both tags and record digests (default: --no-push)
  --dry-run                           render contexts and print the plan; no Docker calls
  --registry <host[:port]>            default: $REGISTRY_URL or 127.0.0.1:5000
  --namespace <ns>                    default: stationthis
  --base-image <ref>                  replace both base images (hosts without CUDA images)
  --base-image builder=<ref>          replace the builder base only (also runtime=, both=)
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

Through Nx, put the options after "--":
  npx nx run recipe-builder:build-images -- --only smoke-cpu --push`;

function fail(message: string): never {
  throw new Error(`${message}\n\n${USAGE}`);
}

export function parseCliArgs(argv: string[], defaults: CliDefaults): CliCommand {
  const [command, ...rest] = argv;
  if (command === undefined || command === 'help' || command === '--help' || command === '-h') return { command: 'help' };
  if (command !== 'generate' && command !== 'build-images') fail(`Unknown command '${command}'`);

  const only: string[] = [];
  const baseImages: BaseImageOverrides = {};
  const buildArgs: Record<string, string> = {};
  let outDir = defaults.outDir;
  let registry = defaults.registry;
  let namespace = 'stationthis';
  let push = false;
  let dryRun = false;
  let engineArchiveDir: string | undefined;
  let tokenizersDir: string | undefined;
  let caBundle: string | undefined;
  let debianCompat = false;
  let nocache = false;
  let manifestPath: string | undefined;
  let timeoutSeconds = 3600;

  // Accept both '--opt value' and '--opt=value'.
  const tokens: string[] = [];
  for (const t of rest) {
    const eq = t.indexOf('=');
    if (t.startsWith('--') && eq > 2) tokens.push(t.slice(0, eq), t.slice(eq + 1));
    else tokens.push(t);
  }
  const buildOnly = new Set(['--registry', '--namespace', '--push', '--no-push', '--dry-run', '--base-image', '--engine-archives', '--tokenizers', '--ca-bundle', '--debian-compat', '--build-arg', '--no-cache', '--manifest', '--timeout']);

  for (let i = 0; i < tokens.length; i++) {
    const t = tokens[i];
    const value = (): string => {
      const v = tokens[++i];
      if (v === undefined || v.startsWith('--')) fail(`${t} needs a value`);
      return v;
    };
    if (command === 'generate' && buildOnly.has(t)) fail(`${t} is a build-images option`);
    switch (t) {
      case '--only': {
        const before = only.length;
        while (tokens[i + 1] !== undefined && !tokens[i + 1].startsWith('--')) {
          only.push(...tokens[++i].split(',').filter((s) => s !== ''));
        }
        if (only.length === before) fail('--only needs at least one recipe id');
        break;
      }
      case '--out':
        outDir = value();
        break;
      case '--registry':
        registry = value();
        break;
      case '--namespace':
        namespace = value();
        break;
      case '--push':
        push = true;
        break;
      case '--no-push':
        push = false;
        break;
      case '--dry-run':
        dryRun = true;
        break;
      case '--engine-archives':
        engineArchiveDir = value();
        break;
      case '--tokenizers':
        tokenizersDir = value();
        break;
      case '--ca-bundle':
        caBundle = value();
        break;
      case '--debian-compat':
        debianCompat = true;
        break;
      case '--no-cache':
        nocache = true;
        break;
      case '--manifest':
        manifestPath = value();
        break;
      case '--timeout': {
        const v = value();
        timeoutSeconds = Number(v);
        if (!Number.isInteger(timeoutSeconds) || timeoutSeconds <= 0) fail(`--timeout must be a positive whole number of seconds, got '${v}'`);
        break;
      }
      case '--build-arg': {
        const v = value();
        const eq = v.indexOf('=');
        if (eq <= 0) fail(`--build-arg needs KEY=VALUE, got '${v}'`);
        buildArgs[v.slice(0, eq)] = v.slice(eq + 1);
        break;
      }
      case '--base-image': {
        const v = value();
        const m = /^(builder|runtime|both)=(.+)$/.exec(v);
        const which = m ? m[1] : 'both';
        const ref = m ? m[2] : v;
        if (which !== 'runtime') baseImages.builder = ref;
        if (which !== 'builder') baseImages.runtime = ref;
        break;
      }
      default:
        fail(`Unknown option '${t}'`);
    }
  }

  if (command === 'generate') return { command, only, outDir };
  return { command, only, outDir, registry, namespace, push, dryRun, baseImages, engineArchiveDir, tokenizersDir, caBundle, debianCompat, buildArgs, nocache, manifestPath, timeoutSeconds };
}
