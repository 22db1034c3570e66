/**
 * `build-images`: generate the contexts, build each image, tag it with the
 * recipe version and the git sha, push both tags, and record the pushed
 * digests in the image manifest the worker reads.
 */
import { execFile } from 'node:child_process';
import type Docker from 'dockerode';
import { join } from 'node:path';
import { renderTorchBaseContext, writeBuildContext } from './build-context';
import { resolveBuildInputs, stageBuildInputs, stageCaBundle, type BuildInputs } from './build-inputs';
import { buildImage, pushImage, type DockerStreamEvent } from './docker-image';
import { torchBaseTag } from './dockerfile';
import { generateBuildContexts } from './generate';
import { checkPinnedImageRef, SECRET_NAME } from './image-spec-check';
import type { ImageManifestEntry } from '@stationthis/recipes';
import { upsertImageManifest } from './image-manifest';
import type { BuildableRecipe, ImageSpec } from './recipe-types';
import { resolveRegistryAuth } from './registry-auth';

export interface BaseImageOverrides {
  builder?: string;
  runtime?: string;
}

/**
 * What `buildImages` does. Checked once, at the start of `buildImages`
 * (registry, namespace, pinned base references; build inputs when not a dry run).
 */
export interface BuildImagesOptions {
  recipes: BuildableRecipe[];
  /** Folder that receives build/<recipe-id>/ contexts. */
  outDir: string;
  /** Recipe ids to build. @default every recipe */
  only?: string[];
  registry: string;
  namespace: string;
  push: boolean;
  dryRun: boolean;
  /** Replaces the builder and/or runtime base image. @default the recipe's own bases */
  baseImages?: BaseImageOverrides;
  /** Engine archives, tokenizers and CA bundle (see build-inputs.ts); unset fields fall back to the environment. @default {} */
  inputs?: BuildInputs;
  /** Rewrites Ubuntu's versioned python3.X packages to Debian's python3 names (for a Debian base override). @default false */
  debianCompat?: boolean;
  /** Extra non-secret build args, applied last. @default {} */
  buildArgs?: Record<string, string>;
  /** Build without the layer cache. @default false */
  nocache?: boolean;
  gitSha: string;
  manifestPath: string;
  /** Per build; pushes get the same limit. */
  timeoutMs: number;
  docker: Docker;
  /** Where registry credentials and build inputs are read from. @default process.env */
  env?: NodeJS.ProcessEnv;
  /** Docker CLI config with registry credentials. @default $DOCKER_CONFIG/config.json, else ~/.docker/config.json */
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
export function buildArgsFor(spec: ImageSpec, options: Pick<BuildImagesOptions, 'baseImages' | 'debianCompat' | 'buildArgs' | 'gitSha'>, torchBaseRef?: string): Record<string, string> {
  const args: Record<string, string> = { GIT_SHA: options.gitSha };
  if (torchBaseRef) {
    // The Debian bases and packages went into the torch image; the engine stages start FROM it.
    args.TORCH_BASE = torchBaseRef;
  } else {
    if (options.baseImages?.builder) args.BUILDER_BASE = options.baseImages.builder;
    if (options.baseImages?.runtime) args.RUNTIME_BASE = options.baseImages.runtime;
  }
  if (options.debianCompat && !torchBaseRef) {
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

/** Base overrides change what goes into the torch image, so they are part of its tag. */
function torchOverrides(o: BuildImagesOptions): Record<string, string> {
  const out: Record<string, string> = {};
  if (o.baseImages?.builder) out.BUILDER_BASE = o.baseImages.builder;
  if (o.baseImages?.runtime) out.RUNTIME_BASE = o.baseImages.runtime;
  for (const [k, v] of Object.entries(o.buildArgs ?? {})) if (/^(BUILDER|RUNTIME)_APT_PACKAGES$|^PYTHON$|^PIP_/.test(k)) out[k] = v;
  return out;
}

/** Builds (and with --push, pushes) the shared torch image under `ref`. */
async function buildTorchBase(o: BuildImagesOptions, recipe: BuildableRecipe, ref: string, inputs: BuildInputs, auth: Parameters<typeof pushImage>[2]): Promise<string> {
  const context = renderTorchBaseContext(recipe);
  const dir = join(o.outDir, '_torch', context.name);
  await writeBuildContext(dir, { recipeId: context.name, recipeVersion: '', imageName: context.name, files: context.files });
  const ca = await stageCaBundle(dir, inputs);
  const prefix = `[${context.name}]`;
  const buildArgs: Record<string, string> = { ...torchOverrides(o) };
  o.log(`${prefix} building the shared torch layer ${ref} (host CA bundle in builder: ${ca ? 'yes' : 'no'})`);
  const built = await buildImage(o.docker, dir, { tags: [ref], buildArgs, timeoutMs: o.timeoutMs, nocache: o.nocache, onEvent: progressPrinter(prefix, o.log) });
  o.log(`${prefix} built ${built.imageId} in ${(built.durationMs / 1000).toFixed(1)} s (${built.cachedSteps}/${built.totalSteps} steps from cache)`);
  if (o.push) {
    o.log(`${prefix} pushing ${ref}`);
    await pushImage(o.docker, ref, auth, o.timeoutMs, progressPrinter(prefix, o.log));
  }
  return built.imageId;
}

export async function buildImages(o: BuildImagesOptions): Promise<BuildImagesResult> {
  checkOptions(o);
  checkImageNamesUnique(o.recipes, o.only);
  const generated = await generateBuildContexts(o.recipes, o.outDir, o.only);
  const auth = o.push && !o.dryRun ? await resolveRegistryAuth(o.registry, o.env ?? process.env, o.dockerConfigPath) : undefined;
  if (auth) o.log(`registry ${o.registry}: credentials from ${auth.source}`);
  const inputs = o.dryRun ? (o.inputs ?? {}) : resolveBuildInputs(o.inputs ?? {}, o.env ?? process.env);
  const results: BuiltImage[] = [];
  const torchBases = new Map<string, Promise<string>>();
  let written = 0;
  for (const { recipe, dir } of generated) {
    const image = `${o.registry}/${o.namespace}/${recipe.image.name}`;
    const tags = [`${image}:${recipe.version}`, `${image}:${o.gitSha}`];
    const prefix = `[${recipe.id}]`;
    let torchRef: string | undefined;
    if (recipe.image.torchBase) {
      const torchTag = torchBaseTag(recipe, torchOverrides(o));
      torchRef = `${o.registry}/${o.namespace}/${recipe.image.torchBase.name}:${torchTag}`;
      if (!o.dryRun) {
        const ref = torchRef;
        // One torch image per distinct input set, built once per run and shared by every engine image on it.
        if (!torchBases.has(ref)) torchBases.set(ref, buildTorchBase(o, recipe, ref, inputs, auth?.auth));
        await torchBases.get(ref);
      }
    }
    const buildArgs = buildArgsFor(recipe.image, o, torchRef);
    const result: BuiltImage = { recipeId: recipe.id, recipeVersion: recipe.version, image, tags, buildArgs };
    results.push(result);
    if (o.dryRun) {
      o.log(`${prefix} dry run: would build ${dir}`);
      o.log(`${prefix}   tags: ${tags.join(' ')}`);
      o.log(`${prefix}   build args: ${Object.entries(buildArgs).map(([k, v]) => `${k}=${v}`).join(' ')}`);
      o.log(`${prefix}   ${o.push ? `would push both tags to ${o.registry}` : 'no push'}`);
      continue;
    }
    const staged = await stageBuildInputs(recipe, dir, inputs);
    o.log(`${prefix} building ${tags[0]} from ${dir} (engine source: ${staged.engineSource}; tokenizers: ${staged.tokenizers}; host CA bundle in builder: ${staged.caBundle ? 'yes' : 'no'})`);
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
