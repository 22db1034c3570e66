/**
 * Checks a recipe's image spec before anything is rendered. Every value that
 * ends up inside a Dockerfile or a shell line is checked against a strict
 * pattern here, so the renderer can interpolate without surprises (no shell
 * injection through a package name, no `latest`, no credentials in a URL).
 */
import type { BaseImageRef, BuildableRecipe } from './recipe-types';

export interface ParsedImageRef {
  /** Repository including any registry host, e.g. 'nvidia/cuda'. */
  repository: string;
  tag?: string;
  digest?: string;
}

/** Splits 'registry:port/repo:tag@sha256:…' into its parts. */
export function parseImageRef(ref: string): ParsedImageRef {
  let rest = ref;
  let digest: string | undefined;
  const at = rest.indexOf('@');
  if (at >= 0) {
    digest = rest.slice(at + 1);
    rest = rest.slice(0, at);
  }
  const colon = rest.lastIndexOf(':');
  if (colon > rest.lastIndexOf('/')) {
    return { repository: rest.slice(0, colon), tag: rest.slice(colon + 1), digest };
  }
  return { repository: rest, digest };
}

/** The reference written into FROM: 'image:tag' or 'image:tag@sha256:…'. */
export function baseImageReference(base: BaseImageRef): string {
  return base.digest ? `${base.image}@${base.digest}` : base.image;
}

const DIGEST = /^sha256:[0-9a-f]{64}$/;
const TAG = /^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$/;
const REPOSITORY = /^(?:[a-zA-Z0-9.-]+(?::[0-9]+)?\/)?[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*(?:\/[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*)*$/;

/** Problems with one image reference that must be pinned by tag (digest optional). */
export function checkPinnedImageRef(ref: string, where: string): string[] {
  const problems: string[] = [];
  const parsed = parseImageRef(ref);
  if (!REPOSITORY.test(parsed.repository)) problems.push(`${where}: '${ref}' is not a valid image repository name`);
  if (!parsed.tag) problems.push(`${where}: '${ref}' has no tag; pin an explicit version tag`);
  else if (parsed.tag === 'latest') problems.push(`${where}: '${ref}' uses the 'latest' tag; pin an explicit version tag`);
  else if (!TAG.test(parsed.tag)) problems.push(`${where}: '${ref}' has an invalid tag`);
  if (parsed.digest !== undefined && !DIGEST.test(parsed.digest)) problems.push(`${where}: '${ref}' has a digest that is not 'sha256:<64 hex>'`);
  return problems;
}

/** Names that suggest a credential. Used for ENV keys here and ARG names in the tests. */
// Matched per '_' segment so TOKENIZERS_PARALLELISM passes but HF_TOKEN does not.
export const SECRET_NAME =
  /(?:^|_)(?:SECRET|TOKEN|PASSWORD|PASSWD|PASS|CREDENTIALS?|AUTH|API_?KEY|ACCESS_?KEY(?:_ID)?|PRIVATE_?KEY)(?:_|$)|(?:SECRET|TOKEN|PASSWORD)$/i;

const APT_PACKAGE = /^[a-z0-9][a-z0-9+.-]+$/;
const PIP_PIN = /^[A-Za-z0-9][A-Za-z0-9._-]*(?:\[[A-Za-z0-9._,-]+\])?==[A-Za-z0-9.+!_-]+$/;
const PYTHON = /^python3(?:\.[0-9]+)?$/;
const ENV_KEY = /^[A-Za-z_][A-Za-z0-9_]*$/;
const SAFE_ARG = /^[A-Za-z0-9_@%+=:,./-]+$/;

/** Every problem with a recipe's identity, engine and image spec, at once. Empty means renderable. */
export function checkBuildableRecipe(recipe: BuildableRecipe): string[] {
  const p: string[] = [];
  const at = `recipe ${recipe.id}@${recipe.version}`;
  const spec = recipe.image;
  if (!/^[a-z0-9][a-z0-9-]*$/.test(recipe.id)) p.push(`${at}: id must be lower-case letters, digits and '-' (it names the build folder)`);
  if (!TAG.test(recipe.version)) p.push(`${at}: version '${recipe.version}' is not usable as an image tag`);
  if (!/^[a-z0-9]+(?:[._-][a-z0-9]+)*$/.test(spec.name)) p.push(`${at}: image.name '${spec.name}' is not a valid repository name component`);
  if (!/^[0-9a-f]{40}$/.test(recipe.engine.commit)) p.push(`${at}: engine.commit must be a full 40-hex commit, got '${recipe.engine.commit}'`);
  if (spec.engineSource.kind === 'git' && !/^https:\/\/[A-Za-z0-9.-]+\/[A-Za-z0-9._/-]+$/.test(recipe.engine.repository)) {
    p.push(`${at}: engine.repository must be a plain https URL without credentials (it is cloned), got '${recipe.engine.repository}'`);
  }
  if (spec.engineSource.kind === 'bundled' && !/^[A-Za-z0-9@:/._+-]+$/.test(recipe.engine.repository)) {
    p.push(`${at}: engine.repository '${recipe.engine.repository}' must be a plain identifier (letters, digits, @:/._+-)`);
  }
  p.push(...checkPinnedImageRef(baseImageReference(spec.builderBase), `${at}: image.builderBase`));
  p.push(...checkPinnedImageRef(baseImageReference(spec.runtimeBase), `${at}: image.runtimeBase`));
  if (spec.builderBase.image.includes('@') || spec.runtimeBase.image.includes('@')) p.push(`${at}: put base image digests in 'digest', not in 'image'`);
  for (const pkg of [...spec.builderAptPackages, ...spec.runtimeAptPackages]) {
    if (!APT_PACKAGE.test(pkg)) p.push(`${at}: apt package '${pkg}' is not a valid Debian package name`);
  }
  if (!PYTHON.test(spec.python)) p.push(`${at}: image.python must look like 'python3' or 'python3.10', got '${spec.python}'`);
  for (const req of spec.pipRequirements) {
    if (!PIP_PIN.test(req)) p.push(`${at}: pip requirement '${req}' must be pinned as 'name==version'`);
  }
  for (const url of spec.pipExtraIndexUrls ?? []) {
    if (!/^https?:\/\/[A-Za-z0-9.:-]+(\/[A-Za-z0-9._~/-]*)?$/.test(url)) {
      p.push(`${at}: extra index URL '${url}' must be a plain URL (no credentials, no query)`);
    }
  }
  if (spec.engineSource.kind === 'git') {
    const a = spec.engineSource.archive;
    if (!/^[A-Za-z0-9][A-Za-z0-9._-]*\.(tar\.gz|tgz)$/.test(a.fileName)) p.push(`${at}: engine archive '${a.fileName}' must be a plain *.tar.gz file name`);
    if (!/^[0-9a-f]{64}$/.test(a.sha256)) p.push(`${at}: engine archive sha256 must be 64 lower-case hex digits`);
    if (!/^[A-Za-z0-9][A-Za-z0-9._-]*$/.test(a.topFolder)) p.push(`${at}: engine archive topFolder '${a.topFolder}' must be one plain folder name`);
    for (const dir of spec.engineSource.pythonPath ?? []) {
      if (!SAFE_ARG.test(dir) || dir.startsWith('/') || dir.split('/').includes('..')) p.push(`${at}: pythonPath entry '${dir}' must be a plain path relative to workdir`);
    }
    if (!spec.torchBase) p.push(`${at}: git engines build on the shared torch layer: set image.torchBase`);
  } else {
    for (const file of Object.keys(spec.engineSource.files)) {
      const rel = file.replace(/^\/+/, '');
      if (rel === '' || rel.split('/').some((s) => s === '' || s === '.' || s === '..') || !/^[A-Za-z0-9._/-]+$/.test(rel)) {
        p.push(`${at}: bundled file path '${file}' must be a plain relative or absolute path without '..'`);
      }
    }
  }
  if (spec.torchBase) {
    if (!/^[a-z0-9]+(?:[._-][a-z0-9]+)*$/.test(spec.torchBase.name)) p.push(`${at}: torchBase.name '${spec.torchBase.name}' is not a valid repository name component`);
    for (const req of spec.torchBase.pipRequirements) {
      if (!PIP_PIN.test(req)) p.push(`${at}: torch requirement '${req}' must be pinned as 'name==version'`);
    }
    const engineNames = new Set(spec.pipRequirements.map((r) => r.split('==')[0].toLowerCase()));
    for (const req of spec.torchBase.pipRequirements) {
      if (engineNames.has(req.split('==')[0].toLowerCase())) p.push(`${at}: '${req.split('==')[0]}' is in both torchBase and pipRequirements; the engine list holds only what the torch layer lacks`);
    }
  }
  for (const t of spec.tokenizers ?? []) {
    if (!/^[A-Za-z0-9][A-Za-z0-9._-]*\/[A-Za-z0-9][A-Za-z0-9._-]*$/.test(t.repo)) p.push(`${at}: tokenizer repo '${t.repo}' must be '<org>/<name>'`);
    if (t.subfolder !== undefined && (!/^[A-Za-z0-9._/-]+$/.test(t.subfolder) || t.subfolder.split('/').includes('..'))) p.push(`${at}: tokenizer subfolder '${t.subfolder}' must be a plain relative path`);
  }
  for (const [i, step] of (spec.buildSteps ?? []).entries()) {
    if (step.argv.length === 0) p.push(`${at}: buildSteps[${i}] has an empty argv`);
    // A line break would end the RUN instruction in the middle of the shell line.
    if (step.argv.some((a) => /[\r\n]/.test(a)) || /[\r\n]/.test(step.description)) p.push(`${at}: buildSteps[${i}] contains a line break`);
  }
  for (const [i, check] of (spec.flagChecks ?? []).entries()) {
    if (check.argv.length === 0) p.push(`${at}: flagChecks[${i}] has an empty argv`);
    if (check.argv.some((a) => /[\r\n]/.test(a))) p.push(`${at}: flagChecks[${i}] argv contains a line break`);
    for (const flag of check.flags) {
      if (!/^--?[A-Za-z0-9][A-Za-z0-9_.-]*$/.test(flag)) p.push(`${at}: flagChecks[${i}] flag '${flag}' is not a plain --flag`);
    }
  }
  if (spec.healthcheck.some((a) => /[\r\n]/.test(a))) p.push(`${at}: image.healthcheck contains a line break`);
  if (spec.healthcheck.length === 0) p.push(`${at}: image.healthcheck must name a command`);
  if (!/^\/[A-Za-z0-9._/-]*$/.test(spec.workdir) || spec.workdir.split('/').includes('..')) p.push(`${at}: image.workdir must be an absolute path`);
  for (const [key, value] of Object.entries(spec.env ?? {})) {
    if (!ENV_KEY.test(key)) p.push(`${at}: env key '${key}' is not a valid variable name`);
    if (SECRET_NAME.test(key)) p.push(`${at}: env key '${key}' looks like a secret; images carry no secrets (the worker injects them at run time)`);
    if (/[\r\n]/.test(value)) p.push(`${at}: env value of '${key}' contains a line break`);
  }
  return p;
}
