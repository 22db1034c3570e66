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
 * The Dockerfile works with the classic builder and with BuildKit. Build
 * arguments carry only non-secret values (mirror URLs, package lists, the
 * OFFLINE_STUBS switch); credentials never enter a build.
 */
import { baseImageReference, checkBuildableRecipe } from './image-spec-check';
import type { BuildableRecipe, FlagCheck } from './recipe-types';

/** Where the venv lives in both stages. */
export const VENV_DIR = '/opt/venv';
/** Entry script, provenance file and other image-owned files. */
export const STATIONTHIS_DIR = '/opt/stationthis';
/** Non-root identity of the runtime stage. */
export const RUNTIME_UID = 1000;
export const RUNTIME_GID = 1000;

/** The build arguments the generated Dockerfiles declare. None may ever carry a secret. */
export const DOCKERFILE_BUILD_ARGS = [
  'BUILDER_BASE',
  'RUNTIME_BASE',
  'BUILDER_APT_PACKAGES',
  'RUNTIME_APT_PACKAGES',
  'APT_HTTP_PROXY',
  'PYTHON',
  'PIP_MIRROR_URL',
  'PIP_EXTRA_INDEX_URLS',
  'OFFLINE_STUBS',
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

function flagCheckRun(check: FlagCheck, engineCommit: string, skippable: boolean): string {
  const cmd = check.argv.map(shellQuote).join(' ');
  const body = [
    `out="$(${cmd} 2>&1)" || { printf '%s\\n' "$out"; echo ${shellQuote(`flag check: '${check.argv.join(' ')}' failed`)}; exit 1; };`,
    'missing="";',
    `for flag in ${check.flags.join(' ')}; do`,
    '  printf \'%s\\n\' "$out" | grep -qE -e "(^|[^A-Za-z0-9_-])${flag}([^A-Za-z0-9_-]|$)" || missing="$missing $flag";',
    'done;',
    `if [ -n "$missing" ]; then echo ${shellQuote(`flag check: the pinned engine (${engineCommit}) does not accept:`)}"$missing"; exit 1; fi`,
  ];
  if (!skippable) return run(['set -eu;', ...body]);
  return run([
    'set -eu;',
    'if [ "${OFFLINE_STUBS}" = "1" ]; then',
    `  echo ${shellQuote(`OFFLINE_STUBS=1: skipping flag check of: ${check.argv.join(' ')}`)};`,
    'else',
    ...body.map((l, i) => `  ${l}${i === body.length - 1 ? ';' : ''}`),
    'fi',
  ]);
}

export function renderDockerfile(recipe: BuildableRecipe): string {
  const problems = checkBuildableRecipe(recipe);
  if (problems.length > 0) {
    throw new Error(`Cannot render the Dockerfile for ${recipe.id}: fix the recipe in libs/recipes:\n  - ${problems.join('\n  - ')}`);
  }
  const spec = recipe.image;
  const engine = recipe.engine;
  const workdir = spec.workdir;
  const isGit = spec.engineSource.kind === 'git';
  const hasRequirements = spec.pipRequirements.length > 0;
  const installCommand = spec.engineSource.kind === 'git' ? (spec.engineSource.installCommand ?? []) : [];
  const buildSteps = spec.buildSteps ?? [];
  const flagChecks = spec.flagChecks ?? [];
  const builderVenv = venvInBuilder(recipe);
  const hasBundledEngineFiles = bundledEngineFiles(recipe).length > 0;
  // --system-site-packages: distro-packaged Python modules (the smoke recipe's
  // python3-torch) stay importable; pinned pip installs still win inside the venv.
  const createVenv = (withPip: boolean) => `RUN "\${PYTHON}" -m venv --system-site-packages ${withPip ? '' : '--without-pip '}${VENV_DIR}`;
  const networked = spec.networkedSteps.length > 0 ? spec.networkedSteps : ['(none declared by the recipe)'];
  const out: string[] = [];
  const emit = (...lines: string[]) => out.push(...lines);

  emit(
    `# Generated by apps/recipe-builder from recipe ${recipe.id}@${recipe.version}. Do not edit:`,
    '# change the recipe in libs/recipes and run `npx nx run recipe-builder:generate`.',
    '#',
    '# Build arguments (none of them may carry a secret):',
    '#   BUILDER_BASE / RUNTIME_BASE   base images, tag pinned with an optional @sha256 digest',
    '#   BUILDER_APT_PACKAGES / RUNTIME_APT_PACKAGES / PYTHON   distro packages and venv interpreter',
    '#   APT_HTTP_PROXY                optional apt proxy URL (non-secret), removed after each install',
    '#   PIP_MIRROR_URL                optional PyPI mirror URL (non-secret)',
    '#   PIP_EXTRA_INDEX_URLS          extra wheel indexes, space separated, used at build time only',
    '#   OFFLINE_STUBS=1               skip every step that needs hosts beyond the Debian/Ubuntu and PyPI',
    '#                                 registries: the engine git fetch, the pip install of requirements.txt',
    '#                                 (the PyTorch CUDA index; also too heavy for a test build), the engine',
    '#                                 install command, networked build steps and the git engine flag checks.',
    '#                                 The recipe lists its networked steps as:',
    ...networked.map((s) => `#                                   - ${oneLine(s)}`),
    '#   GIT_SHA                       source revision recorded in org.opencontainers.image.revision',
    '',
    `ARG BUILDER_BASE=${baseImageReference(spec.builderBase)}`,
    `ARG RUNTIME_BASE=${baseImageReference(spec.runtimeBase)}`,
    '',
    `# ---- builder: compilers and dev headers; produces ${builderVenv ? `${VENV_DIR} and ` : ''}the engine in ${workdir} ----`,
    'FROM ${BUILDER_BASE} AS builder',
    'ARG DEBIAN_FRONTEND=noninteractive',
    'ARG APT_HTTP_PROXY=',
    `ARG BUILDER_APT_PACKAGES=${dockerQuote(spec.builderAptPackages.join(' '))}`,
    aptInstall('BUILDER_APT_PACKAGES'),
  );
  if (builderVenv) {
    emit(
      'ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1',
      `ARG PYTHON=${spec.python}`,
      createVenv(hasRequirements || installCommand.length > 0 || buildSteps.length > 0),
      `ENV VIRTUAL_ENV=${VENV_DIR} PATH=${VENV_DIR}/bin:\${PATH}`,
    );
  }
  if (hasRequirements || isGit || buildSteps.length > 0) emit('ARG OFFLINE_STUBS=0');

  if (hasRequirements) {
    emit(
      'ARG PIP_MIRROR_URL=',
      `ARG PIP_EXTRA_INDEX_URLS=${dockerQuote((spec.pipExtraIndexUrls ?? []).join(' '))}`,
      'COPY requirements.txt /tmp/stationthis/requirements.txt',
      run([
        'set -eu;',
        'if [ "${OFFLINE_STUBS}" = "1" ]; then',
        '  echo "OFFLINE_STUBS=1: skipping pip install -r requirements.txt";',
        'else',
        '  set --; for url in ${PIP_EXTRA_INDEX_URLS}; do set -- "$@" --extra-index-url "$url"; done;',
        '  pip install ${PIP_MIRROR_URL:+--index-url "${PIP_MIRROR_URL}"} "$@" -r /tmp/stationthis/requirements.txt;',
        'fi;',
        'rm -rf /tmp/stationthis',
      ]),
    );
  }

  if (isGit) {
    emit(
      `# Engine ${engine.name} pinned to ${engine.commit}. .git is kept: the engines record`,
      '# `git rev-parse HEAD` in the LoRA metadata.',
      run([
        'set -eu;',
        'if [ "${OFFLINE_STUBS}" = "1" ]; then',
        `  mkdir -p ${workdir};`,
        `  echo "offline stub: ${engine.repository} at ${engine.commit} was not fetched" > ${workdir}/OFFLINE_STUB;`,
        'else',
        `  git init -q ${workdir};`,
        `  cd ${workdir};`,
        `  git remote add origin ${engine.repository};`,
        `  git fetch -q --depth 1 origin ${engine.commit};`,
        '  git checkout -q FETCH_HEAD;',
        `  test "$(git rev-parse HEAD)" = "${engine.commit}";`,
        'fi',
      ]),
    );
  } else if (hasBundledEngineFiles) {
    emit(`# Engine ${engine.name} ships with the recipe (bundled files, ${engine.commit}).`, `COPY engine/ ${workdir}/`);
  }
  if (installCommand.length > 0 || buildSteps.length > 0 || (isGit && flagChecks.length > 0)) emit(`WORKDIR ${workdir}`);
  if (installCommand.length > 0) {
    emit(
      run([
        'set -eu;',
        'if [ "${OFFLINE_STUBS}" = "1" ]; then',
        '  echo "OFFLINE_STUBS=1: skipping the engine install command";',
        'else',
        `  ${installCommand.map(shellQuote).join(' ')};`,
        'fi',
      ]),
    );
  }
  const stateDirs = buildStateDirs(recipe);
  if (buildSteps.length > 0) {
    const envKeys = Object.keys(spec.env ?? {}).sort();
    if (envKeys.length > 0) {
      // Build steps see the runtime environment, so what they fetch lands where the runtime looks (HF_HOME...).
      emit(`ENV ${envKeys.map((k) => `${k}=${dockerQuote((spec.env ?? {})[k])}`).join(' \\\n    ')}`);
    }
    if (stateDirs.length > 0) emit(`# State directories filled by the build steps and copied into the runtime image.`, `RUN mkdir -p ${stateDirs.join(' ')}`);
  }
  for (const step of buildSteps) {
    emit(`# Build step: ${oneLine(step.description)}${step.networked ? ' (networked: skipped with OFFLINE_STUBS=1)' : ''}`);
    if (step.networked) {
      emit(
        run([
          'set -eu;',
          'if [ "${OFFLINE_STUBS}" = "1" ]; then',
          `  echo ${shellQuote(`OFFLINE_STUBS=1: skipping build step: ${oneLine(step.description)}`)};`,
          'else',
          `  ${step.argv.map(shellQuote).join(' ')};`,
          'fi',
        ]),
      );
    } else {
      // Exec form: no shell, so nothing in argv is interpreted.
      emit(`RUN ${JSON.stringify(step.argv)}`);
    }
  }
  if (isGit) {
    for (const check of flagChecks) {
      emit('# Flag check: every flag the recipe renders must exist in the pinned engine (needs the engine: skipped with OFFLINE_STUBS=1).', flagCheckRun(check, engine.commit, true));
    }
  }

  const env: Record<string, string> = {
    HOME: '/tmp',
    PATH: `${VENV_DIR}/bin:\${PATH}`,
    PYTHONDONTWRITEBYTECODE: '1',
    PYTHONUNBUFFERED: '1',
    VIRTUAL_ENV: VENV_DIR,
    ...(spec.env ?? {}),
  };
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

  emit(
    '',
    '# ---- runtime: runtime libraries only, non-root, read-only friendly ----',
    'FROM ${RUNTIME_BASE} AS runtime',
    'ARG DEBIAN_FRONTEND=noninteractive',
    'ARG APT_HTTP_PROXY=',
    `ARG RUNTIME_APT_PACKAGES=${dockerQuote(spec.runtimeAptPackages.join(' '))}`,
    aptInstall('RUNTIME_APT_PACKAGES'),
    `# uid/gid ${RUNTIME_UID} may already exist (ubuntu:24.04 ships 'ubuntu'); reuse it then.`,
    ...(isGit ? [`# safe.directory: the engine checkout is root-owned, and git refuses it to uid ${RUNTIME_UID} otherwise.`] : []),
    run([
      'set -eu;',
      `getent group ${RUNTIME_GID} >/dev/null || groupadd --gid ${RUNTIME_GID} trainer;`,
      `getent passwd ${RUNTIME_UID} >/dev/null || useradd --uid ${RUNTIME_UID} --gid ${RUNTIME_GID} --no-create-home --home-dir /tmp --shell /usr/sbin/nologin trainer${isGit ? ';' : ''}`,
      ...(isGit ? [`printf '[safe]\\n\\tdirectory = ${workdir}\\n' >> /etc/gitconfig`] : []),
    ]),
  );
  if (builderVenv) {
    emit(`COPY --from=builder ${VENV_DIR} ${VENV_DIR}`);
  } else {
    emit('# Nothing is pip-installed: the venv only points the interpreter at the distro packages.', `ARG PYTHON=${spec.python}`, createVenv(false));
  }
  emit(
    `ENV ${Object.keys(env)
      .sort()
      .map((k) => `${k}=${k === 'PATH' ? env[k] : dockerQuote(env[k])}`)
      .join(' \\\n    ')}`,
  );
  if (isGit || hasBundledEngineFiles) emit(`COPY --from=builder ${workdir} ${workdir}`);
  if (buildSteps.length > 0) for (const d of stateDirs) emit(`COPY --from=builder ${d} ${d}`);
  if (!isGit) {
    for (const check of flagChecks) {
      emit('# Flag check: every flag the recipe renders must exist in the bundled engine (run with the runtime interpreter).', flagCheckRun(check, engine.commit, false));
    }
  }
  emit(
    'LABEL ' +
      Object.keys(labels)
        .sort()
        .map((k) => `${k}=${dockerQuote(labels[k])}`)
        .join(' \\\n      '),
    // Build-arg labels: they record an overridden base and the source revision.
    'ARG RUNTIME_BASE',
    'ARG GIT_SHA=unknown',
    'LABEL org.opencontainers.image.base.name=${RUNTIME_BASE} org.opencontainers.image.revision=${GIT_SHA}',
    '# Fast-changing files last: entry script and provenance.',
    'COPY rootfs/ /',
    `WORKDIR ${workdir}`,
    `USER ${RUNTIME_UID}:${RUNTIME_GID}`,
    `HEALTHCHECK --interval=60s --timeout=30s --start-period=10s --retries=3 CMD ${JSON.stringify(spec.healthcheck)}`,
    `ENTRYPOINT ["${STATIONTHIS_DIR}/entrypoint.sh"]`,
    '',
  );
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
