/**
 * The optional inputs that let the real images build on a host that reaches
 * only the package registries (PyPI, the Debian mirror): the engines' source
 * archives, tokenizers in Hugging Face cache layout, and the host's CA bundle.
 * build-images copies them into a generated context just before the build;
 * the Dockerfile uses each when present and falls back to GitHub / the Hub.
 */
import { createHash } from 'node:crypto';
import { createReadStream, existsSync, statSync } from 'node:fs';
import { copyFile, cp, mkdir } from 'node:fs/promises';
import { join } from 'node:path';
import type { BuildableRecipe } from './recipe-types';

export interface BuildInputs {
  /** Folder holding the engines' `<name>-<commit>.tar.gz` archives. */
  engineArchiveDir?: string;
  /** An HF_HOME-layout folder (`hub/models--<org>--<name>/...`) holding the recipes' tokenizers. */
  tokenizersDir?: string;
  /** PEM CA bundle for builder stages (PyPI behind a TLS-intercepting proxy). */
  caBundle?: string;
}

/** Environment variables read when the option is not given. */
export const BUILD_INPUT_ENV = {
  engineArchiveDir: 'STATIONTHIS_ENGINE_ARCHIVES',
  tokenizersDir: 'STATIONTHIS_TOKENIZERS_DIR',
  caBundle: 'STATIONTHIS_BUILD_CA_BUNDLE',
} as const;

/**
 * Options win over the environment. The CA bundle defaults to the one the
 * host's own pip uses (PIP_CERT, then SSL_CERT_FILE, REQUESTS_CA_BUNDLE) when
 * that variable is set: a host configured for a TLS proxy passes it on; a host
 * that is not passes nothing. 'none' turns it off.
 */
export function resolveBuildInputs(options: BuildInputs, env: NodeJS.ProcessEnv = process.env): BuildInputs {
  const pick = (v: string | undefined) => (v && v.trim() !== '' ? v : undefined);
  const engineArchiveDir = pick(options.engineArchiveDir) ?? pick(env[BUILD_INPUT_ENV.engineArchiveDir]);
  const tokenizersDir = pick(options.tokenizersDir) ?? pick(env[BUILD_INPUT_ENV.tokenizersDir]);
  let caBundle = pick(options.caBundle) ?? pick(env[BUILD_INPUT_ENV.caBundle]) ?? pick(env.PIP_CERT) ?? pick(env.SSL_CERT_FILE) ?? pick(env.REQUESTS_CA_BUNDLE);
  if (caBundle === 'none') caBundle = undefined;
  const problems: string[] = [];
  if (engineArchiveDir && !isDir(engineArchiveDir)) problems.push(`engine archive folder '${engineArchiveDir}' does not exist`);
  if (tokenizersDir && !isDir(join(tokenizersDir, 'hub'))) problems.push(`tokenizers folder '${tokenizersDir}' has no hub/ subfolder (Hugging Face cache layout expected: hub/models--<org>--<name>/...)`);
  if (caBundle && !(existsSync(caBundle) && statSync(caBundle).isFile())) problems.push(`CA bundle '${caBundle}' is not a file (set --ca-bundle none to build without one)`);
  if (problems.length > 0) throw new Error(`Invalid build inputs:\n  - ${problems.join('\n  - ')}`);
  return { engineArchiveDir, tokenizersDir, caBundle };
}

function isDir(p: string): boolean {
  return existsSync(p) && statSync(p).isDirectory();
}

export function sha256File(path: string): Promise<string> {
  return new Promise((resolve, reject) => {
    const hash = createHash('sha256');
    createReadStream(path)
      .on('data', (c) => hash.update(c))
      .on('error', reject)
      .on('end', () => resolve(hash.digest('hex')));
  });
}

/** Hub cache folder name of a repository id. */
export function hubFolder(repo: string): string {
  return `models--${repo.split('/').join('--')}`;
}

/** What went into one context, for the build log. */
export interface StagedInputs {
  engineSource: 'archive' | 'git' | 'bundled';
  tokenizers: 'local' | 'hub' | 'none';
  caBundle: boolean;
}

/** The CA bundle only (the torch image context needs nothing else). */
export async function stageCaBundle(contextDir: string, inputs: BuildInputs): Promise<boolean> {
  if (!inputs.caBundle) return false;
  await mkdir(join(contextDir, 'build-ca'), { recursive: true });
  await copyFile(inputs.caBundle, join(contextDir, 'build-ca', 'ca.crt'));
  return true;
}

/**
 * Copies the inputs one recipe needs into its generated context. The archive
 * is checked against the recipe's sha256 here, before any build starts (the
 * Dockerfile checks it again). Tokenizers: all of the recipe's or none, so a
 * partial folder fails here rather than half-downloading from the Hub.
 */
export async function stageBuildInputs(recipe: BuildableRecipe, contextDir: string, inputs: BuildInputs): Promise<StagedInputs> {
  const spec = recipe.image;
  const staged: StagedInputs = { engineSource: spec.engineSource.kind === 'git' ? 'git' : 'bundled', tokenizers: 'none', caBundle: await stageCaBundle(contextDir, inputs) };
  if (spec.engineSource.kind === 'git' && inputs.engineArchiveDir) {
    const a = spec.engineSource.archive;
    const src = join(inputs.engineArchiveDir, a.fileName);
    if (!existsSync(src)) throw new Error(`${recipe.id}: engine archive ${src} not found (the recipe pins ${recipe.engine.name} ${recipe.engine.commit} as ${a.fileName})`);
    const actual = await sha256File(src);
    if (actual !== a.sha256) {
      throw new Error(`${recipe.id}: ${src} has sha256 ${actual}, but the recipe pins ${a.sha256} for ${recipe.engine.name} ${recipe.engine.commit}; use the archive of exactly that commit`);
    }
    await mkdir(join(contextDir, 'engine-archive'), { recursive: true });
    await copyFile(src, join(contextDir, 'engine-archive', a.fileName));
    staged.engineSource = 'archive';
  }
  const tokenizers = spec.tokenizers ?? [];
  if (tokenizers.length > 0) {
    staged.tokenizers = 'hub';
    if (inputs.tokenizersDir) {
      const dir = inputs.tokenizersDir;
      const missing = tokenizers.filter((t) => !isDir(join(dir, 'hub', hubFolder(t.repo))));
      if (missing.length > 0) {
        throw new Error(`${recipe.id}: the tokenizers folder ${dir} lacks ${missing.map((t) => `hub/${hubFolder(t.repo)} (${t.repo})`).join(', ')}`);
      }
      for (const t of tokenizers) {
        await cp(join(dir, 'hub', hubFolder(t.repo)), join(contextDir, 'hf-home', 'hub', hubFolder(t.repo)), { recursive: true, verbatimSymlinks: true });
      }
      staged.tokenizers = 'local';
    }
  }
  return staged;
}
