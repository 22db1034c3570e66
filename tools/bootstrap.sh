#!/usr/bin/env bash
# Shared set-up for the README's two commands: Node dependencies, local
# services, and the variables every test and app reads. Source it.
set -euo pipefail
REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$REPO_ROOT"

log() { printf '\n==> %s\n' "$*" >&2; }

# Install Node dependencies when missing or when the lockfile changed since the last install.
stamp=node_modules/.stationthis-lock.sha
want=$(sha256sum package-lock.json | cut -d' ' -f1)
if [[ ! -f "$stamp" || "$(cat "$stamp")" != "$want" ]]; then
  log "npm ci (install scripts approved in package.json allowScripts)"
  npm ci --no-audit --no-fund
  echo "$want" >"$stamp"
fi

log "local services up (docker, mongo, s3, registry, base image)"
tools/services/services.sh up
eval "$(tools/services/services.sh env)"
