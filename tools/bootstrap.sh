#!/usr/bin/env bash
# Shared set-up for the README's two commands: the pinned Node.js, Node
# dependencies, local services, and the variables every test and app reads. Source it.
set -euo pipefail
REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$REPO_ROOT"

log() { printf '\n==> %s\n' "$*" >&2; }

# The pinned Node.js (.nvmrc; ADR 0007), installed once into the machine cache and put
# first on PATH: npm, npx, nx, tsc and jest below and in the sourcing script run on it.
source tools/node/ensure-node.sh
log "node $(node --version) ($(command -v node)), npm $(npm --version)"

# Install Node dependencies when missing, or when the lockfile or the Node version
# changed since the last install.
stamp=node_modules/.stationthis-lock.sha
want="$(sha256sum package-lock.json | cut -d' ' -f1) node-$(node --version)"
if [[ ! -f "$stamp" || "$(cat "$stamp")" != "$want" ]]; then
  log "npm ci (install scripts approved in package.json allowScripts)"
  npm ci --no-audit --no-fund
  echo "$want" >"$stamp"
fi

# STATIONTHIS_BOOTSTRAP_SERVICES=0: the sourcing script starts the services itself
# (tools/demo.sh does, to show them as their own stage).
if [[ "${STATIONTHIS_BOOTSTRAP_SERVICES:-1}" != 0 ]]; then
  log "local services up (docker, mongo, s3, registry, base image)"
  tools/services/services.sh up
  eval "$(tools/services/services.sh env)"
  # Old commit tags of the ~6.8 GB engine images pile up run after run; give them back
  # before building more, and warn with the numbers when the disk is still short.
  tools/services/reclaim-disk.sh --need-gb "${STATIONTHIS_NEED_GB:-12}"
fi
