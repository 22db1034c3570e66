/**
 * `build-images`: generate the contexts, build each image, tag it with the
 * recipe version and the git sha, push both tags, and record the pushed
 * digests in the image manifest the worker reads.
 */
import { execFile } from 'node:child_process';
import type Docker from 'dockerode';
import { buildImage, pushImage, type DockerStreamEvent } from './docker-image';
import { generateBuildContexts } from './generate';
import { checkPinnedImageRef, SECRET_NAME } from './image-spec-check';
import { upsertImageManifest, type ImageManifestEntry } from './image-manifest';
import type { BuildableRecipe, ImageSpec } from './recipe-types';
import { resolveRegistryAuth } from './registry-auth';

export interface BaseImageOverrides {
  builder?: string;
  runtime?: string;
}

export interface BuildImagesOptions {
  recipes: BuildableRecipe[];
  /** Folder that receives build/<recipe-id>/ contexts. */
  outDir: string;
  only?: string[];
  registry: string;
  namespace: string;
  push: boolean;
  dryRun: boolean;
  baseImages?: BaseImageOverrides;
  /** Sets OFFLINE_STUBS=1 (see the Dockerfile header and README). */
  offlineStubs?: boolean;
  /** Rewrites Ubuntu's versioned python3.X packages to Debian's python3 names (for a Debian base override). */
  debianCompat?: boolean;
  /** Extra non-secret build args, applied last. */
  buildArgs?: Record<string, string>;
  nocache?: boolean;
  gitSha: string;
  manifestPath: string;
  /** Per build; pushes get the same limit. */
  timeoutMs: number;
  docker: Docker;
  env?: NodeJS.ProcessEnv;
  dockerConfigPath?: string;
  log: (line: string) => void;
}

export interface BuiltImage {
  recipeId: string;
  recipeVersion: string;
  /** Repository without tag. */
  image: string;
  /** Full references, recipe-version tag first. */
  tags: string[];
  buildArgs: Record<string, string>;
  imageId?: string;
  digest?: string;
  buildMs?: number;
  pushMs?: number;
  totalSteps?: number;
  cachedSteps?: number;
  /** Instructions the builder had to run (not from cache). */
  rebuiltSteps?: string[];
}

export interface BuildImagesResult {
  images: BuiltImage[];
  /** Absent on dry runs. */
  manifestPath?: string;
}

const NAME_COMPONENT = /^[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*$/;
const REGISTRY = /^[a-zA-Z0-9.-]+(?::[0-9]+)?$/;

/** Short sha from GIT_SHA or `git rev-parse --short HEAD`, checked to be usable as a tag. */
export async function resolveGitSha(env: NodeJS.ProcessEnv = process.env, cwd = process.cwd()): Promise<string> {
  let sha = env.GIT_SHA?.trim();
  if (!sha) {
    sha = await new Promise<string>((resolve, reject) =>
      execFile('git', ['rev-parse', '--short', 'HEAD'], { cwd }, (err, stdout) =>
        err ? reject(new Error(`Cannot find the git sha (git rev-parse --short HEAD failed: ${err.message.split('\n')[0]}); set GIT_SHA`)) : resolve(stdout.trim()),
      ),
    );
  }
  if (!/^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$/.test(sha)) throw new Error(`GIT_SHA '${sha}' cannot be used as an image tag`);
  return sha;
}

/** Debian/Ubuntu package name with the version dropped from 'python3.X…' ('python3.10-venv' → 'python3-venv'). */
export function debianPackageName(pkg: string): string {
  return pkg.replace(/^python3\.[0-9]+(?=$|-)/, 'python3').replace(/^libpython3\.[0-9]+(?=$|-)/, 'libpython3');
}

/** Build args for one recipe under the given options. Only values that differ from the Dockerfile defaults, plus GIT_SHA. */
export function buildArgsFor(spec: ImageSpec, options: Pick<BuildImagesOptions, 'baseImages' | 'offlineStubs' | 'debianCompat' | 'buildArgs' | 'gitSha'>): Record<string, string> {
  const args: Record<string, string> = { GIT_SHA: options.gitSha };
  if (options.baseImages?.builder) args.BUILDER_BASE = options.baseImages.builder;
  if (options.baseImages?.runtime) args.RUNTIME_BASE = options.baseImages.runtime;
  if (options.offlineStubs) args.OFFLINE_STUBS = '1';
  if (options.debianCompat) {
    const python = debianPackageName(spec.python);
    if (python !== spec.python) args.PYTHON = python;
    const builder = spec.builderAptPackages.map(debianPackageName);
    const runtime = spec.runtimeAptPackages.map(debianPackageName);
    if (builder.join(' ') !== spec.builderAptPackages.join(' ')) args.BUILDER_APT_PACKAGES = [...new Set(builder)].join(' ');
    if (runtime.join(' ') !== spec.runtimeAptPackages.join(' ')) args.RUNTIME_APT_PACKAGES = [...new Set(runtime)].join(' ');
  }
  for (const [k, v] of Object.entries(options.buildArgs ?? {})) {
    if (SECRET_NAME.test(k)) throw new Error(`Build arg '${k}' looks like a secret; build args are stored in the image history, so pass no credentials`);
    args[k] = v;
  }
  return Object.fromEntries(Object.keys(args).sort().map((k) => [k, args[k]]));
}

/**
 * Each recipe needs its own image repository: tags are `<name>:<recipe-version>`
 * and `<name>:<git-sha>`, so two recipes sharing a name would overwrite each
 * other's tags (the git-sha tag on every build). Checked for the recipes about
 * to be built (`only`, default all) against every recipe.
 */
export function checkImageNamesUnique(recipes: BuildableRecipe[], only?: string[]): void {
  const byName = new Map<string, string[]>();
  for (const r of recipes) byName.set(r.image.name, [...(byName.get(r.image.name) ?? []), r.id]);
  const selected = (ids: string[]) => !only || only.length === 0 || ids.some((id) => only.includes(id));
  const clashes = [...byName.entries()].filter(([, ids]) => ids.length > 1 && selected(ids));
  if (clashes.length > 0) {
    throw new Error(
      `Recipes share an image name, so their tags would overwrite each other in the registry: ${clashes
        .map(([name, ids]) => `'${name}' (${ids.join(', ')})`)
        .join('; ')}. Give each recipe its own image.name in libs/recipes.`,
    );
  }
}

function checkOptions(o: BuildImagesOptions): void {
  const problems: string[] = [];
  if (!REGISTRY.test(o.registry)) problems.push(`--registry '${o.registry}' must be a host with optional port, e.g. 127.0.0.1:5000 or ghcr.io`);
  if (!o.namespace.split('/').every((c) => NAME_COMPONENT.test(c))) problems.push(`--namespace '${o.namespace}' must be lower-case path components`);
  if (o.baseImages?.builder) problems.push(...checkPinnedImageRef(o.baseImages.builder, '--base-image builder'));
  if (o.baseImages?.runtime) problems.push(...checkPinnedImageRef(o.baseImages.runtime, '--base-image runtime'));
  if (problems.length > 0) throw new Error(`Invalid build-images options:\n  - ${problems.join('\n  - ')}`);
}

/** Turns stream events into console lines: build output verbatim, pull/push status only when it changes. */
function progressPrinter(prefix: string, log: (line: string) => void): (e: DockerStreamEvent) => void {
  const lastStatus = new Map<string, string>();
  return (e) => {
    if (e.stream !== undefined) {
      for (const line of e.stream.split('\n')) if (line.trim() !== '') log(`${prefix} ${line.trimEnd()}`);
    } else if (e.error || e.errorDetail) {
      log(`${prefix} ERROR ${e.errorDetail?.message ?? e.error}`);
    } else if (e.status !== undefined) {
      const key = e.id ?? '';
      if (lastStatus.get(key) === e.status) return;
      lastStatus.set(key, e.status);
      log(`${prefix} ${e.id ? `${e.id}: ` : ''}${e.status}`);
    } else if (e.raw !== undefined) {
      log(`${prefix} ${e.raw}`);
    }
  };
}

export async function buildImages(o: BuildImagesOptions): Promise<BuildImagesResult> {
  checkOptions(o);
  checkImageNamesUnique(o.recipes, o.only);
  const generated = await generateBuildContexts(o.recipes, o.outDir, o.only);
  const auth = o.push && !o.dryRun ? await resolveRegistryAuth(o.registry, o.env ?? process.env, o.dockerConfigPath) : undefined;
  if (auth) o.log(`registry ${o.registry}: credentials from ${auth.source}`);
  const results: BuiltImage[] = [];
  let written = 0;
  for (const { recipe, dir } of generated) {
    const image = `${o.registry}/${o.namespace}/${recipe.image.name}`;
    const tags = [`${image}:${recipe.version}`, `${image}:${o.gitSha}`];
    const buildArgs = buildArgsFor(recipe.image, o);
    const prefix = `[${recipe.id}]`;
    const result: BuiltImage = { recipeId: recipe.id, recipeVersion: recipe.version, image, tags, buildArgs };
    results.push(result);
    if (o.dryRun) {
      o.log(`${prefix} dry run: would build ${dir}`);
      o.log(`${prefix}   tags: ${tags.join(' ')}`);
      o.log(`${prefix}   build args: ${Object.entries(buildArgs).map(([k, v]) => `${k}=${v}`).join(' ')}`);
      o.log(`${prefix}   ${o.push ? `would push both tags to ${o.registry}` : 'no push'}`);
      continue;
    }
    o.log(`${prefix} building ${tags[0]} from ${dir}`);
    const built = await buildImage(o.docker, dir, {
      tags,
      buildArgs,
      timeoutMs: o.timeoutMs,
      nocache: o.nocache,
      ...(auth?.auth ? { registryConfig: { [o.registry]: { ...auth.auth } } } : {}),
      onEvent: progressPrinter(prefix, o.log),
    });
    Object.assign(result, {
      imageId: built.imageId,
      buildMs: built.durationMs,
      totalSteps: built.totalSteps,
      cachedSteps: built.cachedSteps,
      rebuiltSteps: built.steps.filter((s) => !s.cached).map((s) => s.instruction),
    });
    o.log(`${prefix} built ${built.imageId} in ${(built.durationMs / 1000).toFixed(1)} s (${built.cachedSteps}/${built.totalSteps} steps from cache)`);
    if (o.push) {
      const started = Date.now();
      const digests: string[] = [];
      for (const ref of tags) {
        o.log(`${prefix} pushing ${ref}`);
        digests.push((await pushImage(o.docker, ref, auth?.auth, o.timeoutMs, progressPrinter(prefix, o.log))).digest);
      }
      if (new Set(digests).size !== 1) throw new Error(`${prefix} the two tags were pushed with different digests (${digests.join(', ')}); another push raced this one`);
      result.digest = digests[0];
      result.pushMs = Date.now() - started;
      o.log(`${prefix} pushed ${image}@${result.digest}`);
    }
    const entry: ImageManifestEntry = {
      recipeId: recipe.id,
      recipeVersion: recipe.version,
      image,
      tag: recipe.version,
      gitTag: o.gitSha,
      digest: result.digest ?? null,
      repoDigest: result.digest ? `${image}@${result.digest}` : null,
      imageId: built.imageId,
      engineCommit: recipe.engine.commit,
    };
    // Recorded per image, so a later failure does not lose the digests already pushed.
    await upsertImageManifest(o.manifestPath, [entry]);
    written++;
  }
  if (o.dryRun) return { images: results };
  o.log(`image manifest: ${o.manifestPath} (${written} entr${written === 1 ? 'y' : 'ies'} updated)`);
  return { images: results, manifestPath: o.manifestPath };
}
