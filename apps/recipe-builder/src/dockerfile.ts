/**
 * Renders one recipe into a multi-stage Dockerfile. Pure: same recipe in,
 * same bytes out (no timestamps, sorted maps).
 *
 * Layer order follows how often things change: apt packages, the venv and
 * pinned pip installs (slow, rarely change) come first; the engine checkout
 * next; environment, labels and the files under rootfs/ (entry script,
 * provenance, bundled engine files) last, so a config-only change rebuilds in
 * seconds.
 *
 * Engines on the shared PyTorch layer (ImageSpec.torchBase) get two
 * Dockerfiles: one for the torch image (renderTorchBaseDockerfile, tagged by a
 * hash of its inputs) and one for the engine whose stages start FROM it.
 *
 * Nothing is stubbed: every image is the real one. Three optional inputs make
 * the same Dockerfile build on a host that reaches only the package registries
 * (they are put in the context by build-images, see build-inputs.ts):
 *   engine-archive/  the engine's source archive (sha256 checked), else git
 *   hf-home/         tokenizers in Hugging Face cache layout, else the Hub
 *   build-ca/        the host's CA bundle for PyPI behind a TLS proxy, used
 *                    in builder stages only, so no runtime image carries it.
 *
 * The Dockerfile works with the classic builder and with BuildKit. Build
 * arguments carry only non-secret values (mirror URLs, package lists);
 * credentials never enter a build.
 */
import { createHash } from 'node:crypto';
import { baseImageReference, checkBuildableRecipe } from './image-spec-check';
import type { BuildableRecipe, FlagCheck } from './recipe-types';

/** Where the venv lives in both stages. */
export const VENV_DIR = '/opt/venv';
/** Entry script, provenance file and other image-owned files. */
export const STATIONTHIS_DIR = '/opt/stationthis';
/** Non-root identity of the runtime stage. */
export const RUNTIME_UID = 1000;
export const RUNTIME_GID = 1000;

/** Where engines on the torch layer get their own pinned dependencies (pip --target). */
export const ENGINE_SITE_DIR = '/opt/engine-site';
/** Builder-stage folders of the optional build inputs. */
export const BUILD_CA_DIR = '/opt/build-ca';
export const ENGINE_ARCHIVE_DIR = '/tmp/engine-archive';

/** The build arguments the generated Dockerfiles declare. None may ever carry a secret. */
export const DOCKERFILE_BUILD_ARGS = [
  'BUILDER_BASE',
  'RUNTIME_BASE',
  'TORCH_BASE',
  'BUILDER_APT_PACKAGES',
  'RUNTIME_APT_PACKAGES',
  'APT_HTTP_PROXY',
  'PYTHON',
  'PIP_MIRROR_URL',
  'PIP_EXTRA_INDEX_URLS',
  'GIT_SHA',
  'DEBIAN_FRONTEND',
] as const;
export type DockerfileBuildArg = (typeof DOCKERFILE_BUILD_ARGS)[number];

/** Double-quoted Dockerfile word: escapes what the builder would otherwise interpret. */
export function dockerQuote(value: string): string {
  return `"${value.replace(/\\/g, '\\\\').replace(/"/g, '\\"').replace(/\$/g, '\\$').replace(/[\r\n]+/g, ' ')}"`;
}

/** POSIX shell single-quoting, skipped for words that need none. */
export function shellQuote(value: string): string {
  return /^[A-Za-z0-9_@%+=:,./-]+$/.test(value) ? value : `'${value.replace(/'/g, `'\\''`)}'`;
}

function oneLine(text: string): string {
  return text.replace(/[\r\n]+/g, ' ').trim();
}

/** Joins shell fragments into one RUN with readable continuation lines. */
function run(lines: string[]): string {
  return `RUN ${lines.join(' \\\n    ')}`;
}

/** Absolute path inside the image of a bundled engine file (relative keys live under workdir). */
export function bundledFileTarget(workdir: string, file: string): string {
  return file.startsWith('/') ? file : `${workdir.replace(/\/+$/, '')}/${file}`;
}

/** apt-get install in one layer, through an optional non-secret proxy that is removed afterwards. */
function aptInstall(packagesArg: string): string {
  return run([
    'set -eu;',
    `if [ -z "\${${packagesArg}}" ]; then echo "no ${packagesArg}"; exit 0; fi;`,
    'if [ -n "${APT_HTTP_PROXY}" ]; then printf \'Acquire::http::Proxy "%s";\\n\' "${APT_HTTP_PROXY}" > /etc/apt/apt.conf.d/99stationthis-proxy; fi;',
    'apt-get update;',
    `apt-get install -y --no-install-recommends \${${packagesArg}};`,
    'rm -f /etc/apt/apt.conf.d/99stationthis-proxy;',
    'apt-get clean;',
    'rm -rf /var/lib/apt/lists/*',
  ]);
}

/** Whether the venv is built in the builder stage (something gets pip-installed or run there) or created in the runtime stage. */
export function venvInBuilder(recipe: BuildableRecipe): boolean {
  const spec = recipe.image;
  return spec.engineSource.kind === 'git' || spec.pipRequirements.length > 0 || (spec.buildSteps ?? []).length > 0;
}

function flagCheckRun(check: FlagCheck, engineCommit: string): string {
  const cmd = check.argv.map(shellQuote).join(' ');
  return run([
    'set -eu;',
    `out="$(${cmd} 2>&1)" || { printf '%s\\n' "$out"; echo ${shellQuote(`flag check: '${check.argv.join(' ')}' failed`)}; exit 1; };`,
    'missing="";',
    `for flag in ${check.flags.join(' ')}; do`,
    '  printf \'%s\\n\' "$out" | grep -qE -e "(^|[^A-Za-z0-9_-])${flag}([^A-Za-z0-9_-]|$)" || missing="$missing $flag";',
    'done;',
    `if [ -n "$missing" ]; then echo ${shellQuote(`flag check: the pinned engine (${engineCommit}) does not accept:`)}"$missing"; exit 1; fi`,
  ]);
}

/** `. use.sh` in a RUN: exports the host CA bundle to pip, requests and git when the build was given one. */
const USE_BUILD_CA = `. ${BUILD_CA_DIR}/use.sh;`;

/** The `use.sh` shipped in build-ca/ (see buildCaFiles). */
export const BUILD_CA_USE_SCRIPT = [
  '# Sourced by builder-stage RUN lines. ca.crt is the host CA bundle when build-images was given one',
  '# (hosts that reach PyPI through a TLS-intercepting proxy); it never reaches a runtime stage.',
  `if [ -s ${BUILD_CA_DIR}/ca.crt ]; then`,
  `  export PIP_CERT=${BUILD_CA_DIR}/ca.crt SSL_CERT_FILE=${BUILD_CA_DIR}/ca.crt REQUESTS_CA_BUNDLE=${BUILD_CA_DIR}/ca.crt CURL_CA_BUNDLE=${BUILD_CA_DIR}/ca.crt GIT_SSL_CAINFO=${BUILD_CA_DIR}/ca.crt`,
  'fi',
  '',
].join('\n');

/** The pip install line, with the optional mirror and extra indexes from build args. */
function pipInstall(args: string): string[] {
  return [
    '  set --; for url in ${PIP_EXTRA_INDEX_URLS}; do set -- "$@" --extra-index-url "$url"; done;',
    `  pip install \${PIP_MIRROR_URL:+--index-url "\${PIP_MIRROR_URL}"} "$@" ${args};`,
  ];
}

function pipArgs(spec: BuildableRecipe['image']): string[] {
  return ['ARG PIP_MIRROR_URL=', `ARG PIP_EXTRA_INDEX_URLS=${dockerQuote((spec.pipExtraIndexUrls ?? []).join(' '))}`];
}

/** Runtime stage user: uid/gid 1000 may already exist (ubuntu:24.04 ships 'ubuntu'); reuse it then. */
function runtimeUser(gitSafeDir?: string): string {
  return run([
    'set -eu;',
    `getent group ${RUNTIME_GID} >/dev/null || groupadd --gid ${RUNTIME_GID} trainer;`,
    `getent passwd ${RUNTIME_UID} >/dev/null || useradd --uid ${RUNTIME_UID} --gid ${RUNTIME_GID} --no-create-home --home-dir /tmp --shell /usr/sbin/nologin trainer${gitSafeDir ? ';' : ''}`,
    ...(gitSafeDir ? [`printf '[safe]\\n\\tdirectory = ${gitSafeDir}\\n' >> /etc/gitconfig`] : []),
  ]);
}

function envLine(env: Record<string, string>): string {
  return `ENV ${Object.keys(env)
    .sort()
    .map((k) => `${k}=${k === 'PATH' ? env[k] : dockerQuote(env[k])}`)
    .join(' \\\n    ')}`;
}

/** Default TORCH_BASE of an engine Dockerfile; build-images passes the registry reference it built. */
export function torchBaseLocalRef(recipe: BuildableRecipe): string {
  const t = recipe.image.torchBase;
  if (!t) throw new Error(`recipe ${recipe.id} has no torchBase`);
  return `stationthis/${t.name}:${torchBaseTag(recipe)}`;
}

/**
 * Content tag of the torch image: a hash of exactly what goes into it (its
 * Dockerfile, which holds bases, apt packages and interpreter, and its
 * requirements), so recipes with the same inputs share one image and a
 * recipe-only change never rebuilds it. Build-arg overrides of the bases are
 * added by build-images (they change the content).
 */
export function torchBaseTag(recipe: BuildableRecipe, overrides: Record<string, string> = {}): string {
  const hash = createHash('sha256').update(renderTorchBaseDockerfile(recipe)).update('\0').update(torchRequirementsFile(recipe));
  for (const k of Object.keys(overrides).sort()) hash.update(`\0${k}=${overrides[k]}`);
  return hash.digest('hex').slice(0, 16);
}

export function torchRequirementsFile(recipe: BuildableRecipe): string {
  const t = recipe.image.torchBase;
  if (!t) throw new Error(`recipe ${recipe.id} has no torchBase`);
  return [`# Pinned PyTorch layer ${t.name}: installed with --no-deps, in this order.`, ...t.pipRequirements, ''].join('\n');
}

/** The shared torch image: Debian + python3 venv with the pinned torch set. Pure. */
export function renderTorchBaseDockerfile(recipe: BuildableRecipe): string {
  const spec = recipe.image;
  const t = spec.torchBase;
  if (!t) throw new Error(`recipe ${recipe.id} has no torchBase`);
  return [
    `# Generated by apps/recipe-builder: the shared PyTorch layer ${t.name}, used by every engine image`,
    '# whose recipe names it. Tagged by a hash of this file and torch-requirements.txt. Do not edit.',
    '',
    `ARG BUILDER_BASE=${baseImageReference(spec.builderBase)}`,
    `ARG RUNTIME_BASE=${baseImageReference(spec.runtimeBase)}`,
    '',
    'FROM ${BUILDER_BASE} AS builder',
    'ARG DEBIAN_FRONTEND=noninteractive',
    'ARG APT_HTTP_PROXY=',
    `ARG BUILDER_APT_PACKAGES=${dockerQuote(spec.builderAptPackages.join(' '))}`,
    aptInstall('BUILDER_APT_PACKAGES'),
    `COPY build-ca/ ${BUILD_CA_DIR}/`,
    'ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1',
    `ARG PYTHON=${spec.python}`,
    `RUN "\${PYTHON}" -m venv ${VENV_DIR}`,
    `ENV VIRTUAL_ENV=${VENV_DIR} PATH=${VENV_DIR}/bin:\${PATH}`,
    ...pipArgs(spec),
    'COPY torch-requirements.txt /tmp/stationthis/torch-requirements.txt',
    run(['set -eu;', USE_BUILD_CA, ...pipInstall('--no-deps -r /tmp/stationthis/torch-requirements.txt'), 'rm -rf /tmp/stationthis']),
    '',
    'FROM ${RUNTIME_BASE} AS runtime',
    'ARG DEBIAN_FRONTEND=noninteractive',
    'ARG APT_HTTP_PROXY=',
    `ARG RUNTIME_APT_PACKAGES=${dockerQuote(spec.runtimeAptPackages.join(' '))}`,
    aptInstall('RUNTIME_APT_PACKAGES'),
    runtimeUser(),
    `COPY --from=builder ${VENV_DIR} ${VENV_DIR}`,
    envLine({ HOME: '/tmp', PATH: `${VENV_DIR}/bin:\${PATH}`, PYTHONDONTWRITEBYTECODE: '1', PYTHONUNBUFFERED: '1', VIRTUAL_ENV: VENV_DIR }),
    `LABEL org.opencontainers.image.title=${dockerQuote(`StationThis PyTorch layer ${t.name}`)} org.opencontainers.image.vendor="StationThis"`,
    'ARG RUNTIME_BASE',
    'LABEL org.opencontainers.image.base.name=${RUNTIME_BASE}',
    '',
  ].join('\n');
}

/** PYTHONPATH of an engine image: its pinned dependencies, then the engine folders it names. */
function enginePythonPath(recipe: BuildableRecipe): string {
  const spec = recipe.image;
  const extra = spec.engineSource.kind === 'git' ? (spec.engineSource.pythonPath ?? []) : [];
  return [ENGINE_SITE_DIR, ...extra.map((p) => `${spec.workdir.replace(/\/+$/, '')}/${p}`)].join(':');
}

/** Engine source: the archive when the build context holds it (sha256 checked), else git at the pinned commit. */
function engineSourceRun(recipe: BuildableRecipe): string {
  const spec = recipe.image;
  const engine = recipe.engine;
  if (spec.engineSource.kind !== 'git') throw new Error('engineSourceRun: git engines only');
  const a = spec.engineSource.archive;
  const file = `${ENGINE_ARCHIVE_DIR}/${a.fileName}`;
  const workdir = spec.workdir;
  return run([
    'set -eu;',
    `if [ -f ${file} ]; then`,
    `  echo ${shellQuote(`engine source: ${a.fileName} (checking sha256 ${a.sha256})`)};`,
    `  echo "${a.sha256}  ${file}" | sha256sum -c - || { echo ${shellQuote(`the archive ${a.fileName} is not the pinned ${engine.name} source: sha256 differs from the recipe`)}; exit 1; };`,
    `  mkdir -p ${workdir};`,
    `  tar -xzf ${file} -C ${workdir} --strip-components=1 ${a.topFolder}/;`,
    'else',
    `  echo ${shellQuote(`engine source: git ${engine.repository} at ${engine.commit}`)};`,
    `  ${USE_BUILD_CA}`,
    `  git init -q ${workdir};`,
    `  cd ${workdir};`,
    `  git remote add origin ${engine.repository};`,
    `  git fetch -q --depth 1 origin ${engine.commit};`,
    '  git checkout -q FETCH_HEAD;',
    `  test "$(git rev-parse HEAD)" = "${engine.commit}";`,
    'fi;',
    `printf '%s\\n' ${engine.commit} > ${workdir}/.stationthis-engine-commit;`,
    `rm -rf ${ENGINE_ARCHIVE_DIR}`,
  ]);
}

/**
 * `sitecustomize.py` for ImageSpec.cudaFreeImports (context file
 * build/sitecustomize.py, installed in the engine site folder that leads
 * PYTHONPATH). An import hook wraps the listed modules' loaders: while no GPU
 * is present, `torch.cuda.current_device` answers 'cpu' during that module's
 * import only, so an import-time default argument does not crash CPU hosts.
 * Anything else, and every host with a GPU, sees torch unchanged.
 */
export function sitecustomizeScript(recipe: BuildableRecipe): string {
  const entries = recipe.image.cudaFreeImports ?? [];
  return [
    '"""Generated by apps/recipe-builder: CPU-safe imports of engine modules that call CUDA at import time."""',
    'import importlib.abc',
    'import sys',
    '',
    '# module -> where its import-time CUDA call is',
    `CUDA_FREE_IMPORTS = ${JSON.stringify(Object.fromEntries(entries.map((e) => [e.module, e.why])))}`,
    '',
    '',
    'class _CudaFreeLoader(importlib.abc.Loader):',
    '    def __init__(self, inner):',
    '        self._inner = inner',
    '',
    '    def create_module(self, spec):',
    '        return self._inner.create_module(spec)',
    '',
    '    def exec_module(self, module):',
    '        import torch',
    '',
    '        if torch.cuda.is_available():',
    '            return self._inner.exec_module(module)',
    '        original = torch.cuda.current_device',
    '        torch.cuda.current_device = lambda: "cpu"',
    '        try:',
    '            return self._inner.exec_module(module)',
    '        finally:',
    '            torch.cuda.current_device = original',
    '',
    '',
    'class _CudaFreeFinder(importlib.abc.MetaPathFinder):',
    '    def find_spec(self, name, path, target=None):',
    '        if name not in CUDA_FREE_IMPORTS:',
    '            return None',
    '        for finder in sys.meta_path:',
    '            if finder is self or not hasattr(finder, "find_spec"):',
    '                continue',
    '            spec = finder.find_spec(name, path, target)',
    '            if spec is not None and spec.loader is not None:',
    '                spec.loader = _CudaFreeLoader(spec.loader)',
    '                return spec',
    '        return None',
    '',
    '',
    'if CUDA_FREE_IMPORTS:',
    '    sys.meta_path.insert(0, _CudaFreeFinder())',
    '',
  ].join('\n');
}

/** The script that bakes and checks tokenizers (context file build/tokenizers.py). */
export function tokenizersScript(recipe: BuildableRecipe): string {
  const list = (recipe.image.tokenizers ?? []).map((t) => ({ repo: t.repo, subfolder: t.subfolder ?? null, loader: t.loader, usedBy: t.usedBy }));
  return [
    '"""Bakes the tokenizers the engine loads by repository id into HF_HOME, then proves',
    'each one loads offline exactly as the engine loads it. Generated by apps/recipe-builder."""',
    'import json, os, subprocess, sys',
    '',
    `TOKENIZERS = json.loads(${JSON.stringify(JSON.stringify(list))})`,
    '',
    'def load(t):',
    '    import transformers',
    '    cls = getattr(transformers, t["loader"])',
    '    kwargs = {"subfolder": t["subfolder"]} if t["subfolder"] else {}',
    '    return cls.from_pretrained(t["repo"], **kwargs)',
    '',
    'def cached(t):',
    '    org, name = t["repo"].split("/")',
    '    return os.path.isdir(os.path.join(os.environ["HF_HOME"], "hub", f"models--{org}--{name}"))',
    '',
    'def main(mode):',
    '    if mode == "fetch":',
    '        for t in TOKENIZERS:',
    '            if cached(t):',
    '                print(f"tokenizer {t[\'repo\']}: from the local folder given to the build")',
    '            else:',
    '                print(f"tokenizer {t[\'repo\']}: downloading from the Hugging Face Hub")',
    '                load(t)',
    '    elif mode == "verify":',
    '        env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")',
    '        for t in TOKENIZERS:',
    '            code = "import json,sys; sys.path.insert(0, %r); import tokenizers_build as b; tok = b.load(json.loads(%r)); print(type(tok).__name__, len(tok))" % (os.path.dirname(os.path.abspath(__file__)), json.dumps(t))',
    '            r = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)',
    '            if r.returncode != 0:',
    '                sys.stderr.write(r.stdout + r.stderr)',
    '                where = t["repo"] + (" subfolder " + t["subfolder"] if t["subfolder"] else "")',
    '                sys.exit(f"tokenizer {where} ({t[\'loader\']}, used by {t[\'usedBy\']}) does not load offline from HF_HOME; give build-images --tokenizers <dir> holding it in Hugging Face cache layout, or build where huggingface.co is reachable")',
    '            print(f"tokenizer {t[\'repo\']} loads offline: {r.stdout.strip()}")',
    '',
    'if __name__ == "__main__":',
    '    main(sys.argv[1])',
    '',
  ].join('\n');
}

export function renderDockerfile(recipe: BuildableRecipe): string {
  const problems = checkBuildableRecipe(recipe);
  if (problems.length > 0) {
    throw new Error(`Cannot render the Dockerfile for ${recipe.id}: fix the recipe in libs/recipes:\n  - ${problems.join('\n  - ')}`);
  }
  return recipe.image.torchBase ? renderEngineDockerfile(recipe) : renderBundledDockerfile(recipe);
}

function header(recipe: BuildableRecipe, bases: string[]): string[] {
  return [
    `# Generated by apps/recipe-builder from recipe ${recipe.id}@${recipe.version}. Do not edit:`,
    '# change the recipe in libs/recipes and run `npx nx run recipe-builder:generate`.',
    '#',
    '# Build arguments (none of them may carry a secret):',
    ...bases,
    '#   APT_HTTP_PROXY                optional apt proxy URL (non-secret), removed after each install',
    '#   PIP_MIRROR_URL                optional PyPI mirror URL (non-secret)',
    '#   GIT_SHA                       source revision recorded in org.opencontainers.image.revision',
    '',
  ];
}

function labelsOf(recipe: BuildableRecipe): string {
  const spec = recipe.image;
  const engine = recipe.engine;
  const labels: Record<string, string> = {
    'ai.stationthis.engine.commit': engine.commit,
    'ai.stationthis.engine.name': engine.name,
    'ai.stationthis.engine.repository': engine.repository,
    'ai.stationthis.recipe.family': recipe.family,
    'ai.stationthis.recipe.id': recipe.id,
    'ai.stationthis.recipe.version': recipe.version,
    'org.opencontainers.image.description': recipe.description,
    'org.opencontainers.image.title': `${recipe.displayName} (${spec.name})`,
    'org.opencontainers.image.vendor': 'StationThis',
    'org.opencontainers.image.version': recipe.version,
  };
  return (
    'LABEL ' +
    Object.keys(labels)
      .sort()
      .map((k) => `${k}=${dockerQuote(labels[k])}`)
      .join(' \\\n      ')
  );
}

function tail(recipe: BuildableRecipe, baseArg: string): string[] {
  const spec = recipe.image;
  return [
    labelsOf(recipe),
    // Build-arg labels: they record an overridden base and the source revision.
    `ARG ${baseArg}`,
    'ARG GIT_SHA=unknown',
    `LABEL org.opencontainers.image.base.name=\${${baseArg}} org.opencontainers.image.revision=\${GIT_SHA}`,
    '# Fast-changing files last: entry script and provenance.',
    'COPY rootfs/ /',
    `WORKDIR ${spec.workdir}`,
    `USER ${RUNTIME_UID}:${RUNTIME_GID}`,
    `HEALTHCHECK --interval=60s --timeout=30s --start-period=10s --retries=3 CMD ${JSON.stringify(spec.healthcheck)}`,
    `ENTRYPOINT ["${STATIONTHIS_DIR}/entrypoint.sh"]`,
    '',
  ];
}

/** Engine image on the shared torch layer (ImageSpec.torchBase). */
function renderEngineDockerfile(recipe: BuildableRecipe): string {
  const spec = recipe.image;
  const workdir = spec.workdir;
  const runtimeEnv = spec.env ?? {};
  const pythonPath = enginePythonPath(recipe);
  const path = `${ENGINE_SITE_DIR}/bin:${VENV_DIR}/bin:\${PATH}`;
  // Build steps see the runtime environment (HF_HOME...), minus the offline switches: the tokenizer fetch needs the Hub.
  const buildEnv = Object.fromEntries(Object.entries(runtimeEnv).filter(([k]) => k !== 'HF_HUB_OFFLINE' && k !== 'TRANSFORMERS_OFFLINE'));
  const hfHome = runtimeEnv.HF_HOME;
  const tokenizers = spec.tokenizers ?? [];
  if (tokenizers.length > 0 && !hfHome) throw new Error(`recipe ${recipe.id}: tokenizers need HF_HOME in image.env`);
  const out: string[] = [
    ...header(recipe, [
      '#   TORCH_BASE                    the shared PyTorch image (recipe-builder builds it first)',
      '#   BUILDER_APT_PACKAGES          builder-stage Debian packages',
    ]),
    `ARG TORCH_BASE=${torchBaseLocalRef(recipe)}`,
    '',
    `# ---- builder: the engine's pinned dependencies in ${ENGINE_SITE_DIR}, the engine in ${workdir}${tokenizers.length > 0 ? `, tokenizers in ${hfHome}` : ''} ----`,
    'FROM ${TORCH_BASE} AS builder',
    'USER root',
    'ARG DEBIAN_FRONTEND=noninteractive',
    'ARG APT_HTTP_PROXY=',
    `ARG BUILDER_APT_PACKAGES=${dockerQuote(spec.builderAptPackages.join(' '))}`,
    aptInstall('BUILDER_APT_PACKAGES'),
    `COPY build-ca/ ${BUILD_CA_DIR}/`,
    'ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1',
    ...pipArgs(spec),
    'COPY requirements.txt /tmp/stationthis/requirements.txt',
    '# --no-deps over the torch layer: the list is the complete resolved set, so pip resolves nothing and never reinstalls torch.',
    run(['set -eu;', USE_BUILD_CA, ...pipInstall(`--no-deps --target ${ENGINE_SITE_DIR} -r /tmp/stationthis/requirements.txt`), 'rm -rf /tmp/stationthis']),
    `COPY engine-archive/ ${ENGINE_ARCHIVE_DIR}/`,
    engineSourceRun(recipe),
    ...((spec.cudaFreeImports ?? []).length > 0
      ? ['# Import hook for engine modules that call CUDA at import time (flag checks and CPU hosts have no GPU).', `COPY build/sitecustomize.py ${ENGINE_SITE_DIR}/sitecustomize.py`]
      : []),
    envLine({ ...buildEnv, PATH: path, PYTHONPATH: pythonPath }),
    `WORKDIR ${workdir}`,
  ];
  if (tokenizers.length > 0) {
    out.push(
      `COPY hf-home/ ${hfHome}/`,
      'COPY build/tokenizers_build.py /opt/stationthis-build/tokenizers_build.py',
      '# Tokenizers: the local folder given to the build, else the Hub; then each must load offline as the engine loads it.',
      run(['set -eu;', USE_BUILD_CA, 'python /opt/stationthis-build/tokenizers_build.py fetch;', 'python /opt/stationthis-build/tokenizers_build.py verify;', `rm -rf ${hfHome}/.keep`]),
    );
  }
  for (const step of spec.buildSteps ?? []) {
    out.push(`# Build step: ${oneLine(step.description)}`, `RUN ${JSON.stringify(step.argv)}`);
  }
  for (const check of spec.flagChecks ?? []) {
    out.push('# Flag check: every flag the recipe renders must exist in the pinned engine.', flagCheckRun(check, recipe.engine.commit));
  }
  out.push(
    '',
    '# ---- runtime: the torch layer plus the engine, non-root, read-only friendly ----',
    'FROM ${TORCH_BASE} AS runtime',
    `COPY --from=builder ${ENGINE_SITE_DIR} ${ENGINE_SITE_DIR}`,
    `COPY --from=builder ${workdir} ${workdir}`,
    ...(tokenizers.length > 0 ? [`COPY --from=builder ${hfHome} ${hfHome}`] : []),
    envLine({ HOME: '/tmp', PYTHONDONTWRITEBYTECODE: '1', PYTHONUNBUFFERED: '1', VIRTUAL_ENV: VENV_DIR, ...runtimeEnv, PATH: path, PYTHONPATH: pythonPath }),
    ...tail(recipe, 'TORCH_BASE'),
  );
  return out.join('\n');
}

/** Engine bundled with the recipe (the smoke trainer), on the Debian bases. */
function renderBundledDockerfile(recipe: BuildableRecipe): string {
  const spec = recipe.image;
  const workdir = spec.workdir;
  const hasRequirements = spec.pipRequirements.length > 0;
  const buildSteps = spec.buildSteps ?? [];
  const builderVenv = venvInBuilder(recipe);
  const hasBundledEngineFiles = bundledEngineFiles(recipe).length > 0;
  // --system-site-packages: distro-packaged Python modules (the smoke recipe's
  // python3-torch) stay importable; pinned pip installs still win inside the venv.
  const createVenv = (withPip: boolean) => `RUN "\${PYTHON}" -m venv --system-site-packages ${withPip ? '' : '--without-pip '}${VENV_DIR}`;
  const out: string[] = [
    ...header(recipe, [
      '#   BUILDER_BASE / RUNTIME_BASE   base images, tag pinned with an optional @sha256 digest',
      '#   BUILDER_APT_PACKAGES / RUNTIME_APT_PACKAGES / PYTHON   distro packages and venv interpreter',
    ]),
    `ARG BUILDER_BASE=${baseImageReference(spec.builderBase)}`,
    `ARG RUNTIME_BASE=${baseImageReference(spec.runtimeBase)}`,
    '',
    `# ---- builder: compilers and dev headers; produces ${builderVenv ? `${VENV_DIR} and ` : ''}the engine in ${workdir} ----`,
    'FROM ${BUILDER_BASE} AS builder',
    'ARG DEBIAN_FRONTEND=noninteractive',
    'ARG APT_HTTP_PROXY=',
    `ARG BUILDER_APT_PACKAGES=${dockerQuote(spec.builderAptPackages.join(' '))}`,
    aptInstall('BUILDER_APT_PACKAGES'),
  ];
  if (builderVenv) {
    out.push(
      'ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1',
      `ARG PYTHON=${spec.python}`,
      createVenv(hasRequirements || buildSteps.length > 0),
      `ENV VIRTUAL_ENV=${VENV_DIR} PATH=${VENV_DIR}/bin:\${PATH}`,
    );
  }
  if (hasRequirements) {
    out.push(
      `COPY build-ca/ ${BUILD_CA_DIR}/`,
      ...pipArgs(spec),
      'COPY requirements.txt /tmp/stationthis/requirements.txt',
      run(['set -eu;', USE_BUILD_CA, ...pipInstall('-r /tmp/stationthis/requirements.txt'), 'rm -rf /tmp/stationthis']),
    );
  }
  if (hasBundledEngineFiles) out.push(`# Engine ${recipe.engine.name} ships with the recipe (bundled files, ${recipe.engine.commit}).`, `COPY engine/ ${workdir}/`);
  const stateDirs = buildStateDirs(recipe);
  if (buildSteps.length > 0) {
    out.push(`WORKDIR ${workdir}`);
    const envKeys = Object.keys(spec.env ?? {}).sort();
    if (envKeys.length > 0) out.push(`ENV ${envKeys.map((k) => `${k}=${dockerQuote((spec.env ?? {})[k])}`).join(' \\\n    ')}`);
    if (stateDirs.length > 0) out.push(`# State directories filled by the build steps and copied into the runtime image.`, `RUN mkdir -p ${stateDirs.join(' ')}`);
    for (const step of buildSteps) out.push(`# Build step: ${oneLine(step.description)}`, `RUN ${JSON.stringify(step.argv)}`);
  }
  const env: Record<string, string> = {
    HOME: '/tmp',
    PATH: `${VENV_DIR}/bin:\${PATH}`,
    PYTHONDONTWRITEBYTECODE: '1',
    PYTHONUNBUFFERED: '1',
    VIRTUAL_ENV: VENV_DIR,
    ...(spec.env ?? {}),
  };
  out.push(
    '',
    '# ---- runtime: runtime libraries only, non-root, read-only friendly ----',
    'FROM ${RUNTIME_BASE} AS runtime',
    'ARG DEBIAN_FRONTEND=noninteractive',
    'ARG APT_HTTP_PROXY=',
    `ARG RUNTIME_APT_PACKAGES=${dockerQuote(spec.runtimeAptPackages.join(' '))}`,
    aptInstall('RUNTIME_APT_PACKAGES'),
    `# uid/gid ${RUNTIME_UID} may already exist (ubuntu:24.04 ships 'ubuntu'); reuse it then.`,
    runtimeUser(),
  );
  if (builderVenv) out.push(`COPY --from=builder ${VENV_DIR} ${VENV_DIR}`);
  else out.push('# Nothing is pip-installed: the venv only points the interpreter at the distro packages.', `ARG PYTHON=${spec.python}`, createVenv(false));
  out.push(envLine(env));
  if (hasBundledEngineFiles) out.push(`COPY --from=builder ${workdir} ${workdir}`);
  if (buildSteps.length > 0) for (const d of stateDirs) out.push(`COPY --from=builder ${d} ${d}`);
  for (const check of spec.flagChecks ?? []) {
    out.push('# Flag check: every flag the recipe renders must exist in the bundled engine (run with the runtime interpreter).', flagCheckRun(check, recipe.engine.commit));
  }
  out.push(...tail(recipe, 'RUNTIME_BASE'));
  return out.join('\n');
}

/**
 * Directories the build steps may fill that the runtime reads: the recipe env's
 * *_HOME / *_DIR / *_CACHE / *_ROOT values that are absolute paths outside /tmp
 * (scratch at run time), the venv and the workdir (both copied anyway).
 * Example: HF_HOME=/opt/hf-home, where the tokenizers are pre-downloaded.
 */
export function buildStateDirs(recipe: BuildableRecipe): string[] {
  const spec = recipe.image;
  const skip = (p: string) => p === '/tmp' || p.startsWith('/tmp/') || p === VENV_DIR || p.startsWith(`${VENV_DIR}/`) || p === spec.workdir || p.startsWith(`${spec.workdir.replace(/\/+$/, '')}/`);
  const dirs = Object.entries(spec.env ?? {})
    .filter(([k, v]) => /(_HOME|_DIR|_CACHE|_ROOT)$/.test(k) && /^\/[A-Za-z0-9._/-]+$/.test(v) && !v.split('/').includes('..'))
    .map(([, v]) => v.replace(/\/+$/, ''))
    .filter((v) => v !== '' && !skip(v));
  return [...new Set(dirs)].sort();
}

/**
 * Bundled engine files and where they go: files inside the workdir travel
 * through the builder stage (context folder engine/), others land via rootfs/.
 */
export function bundledEngineFiles(recipe: BuildableRecipe): Array<{ key: string; target: string; contextPath: string; content: string }> {
  const spec = recipe.image;
  if (spec.engineSource.kind !== 'bundled') return [];
  const root = spec.workdir.replace(/\/+$/, '');
  return Object.entries(spec.engineSource.files).map(([key, content]) => {
    const target = bundledFileTarget(spec.workdir, key);
    const inWorkdir = target.startsWith(`${root}/`);
    return { key, target, content, contextPath: inWorkdir ? `engine/${target.slice(root.length + 1)}` : `rootfs${target}` };
  });
}
