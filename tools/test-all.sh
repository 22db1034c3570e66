#!/usr/bin/env bash
# Every test, unit and integration, against the real local services.
# Usage: bash tools/test-all.sh [jest args...]
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/bootstrap.sh"
mkdir -p .state

# The browser and terminal checks (dashboard in headless Chromium, the demo in tmux)
# need Debian's chromium and tmux; install them once, as services.sh does its packages.
missing=()
command -v chromium >/dev/null || missing+=(chromium)
command -v tmux >/dev/null || missing+=(tmux)
if ((${#missing[@]})); then
  log "installing Debian packages for the browser and terminal tests: ${missing[*]}"
  apt-get update -qq >/dev/null 2>&1 || true
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >.state/apt-test-tools.log 2>&1 \
    || { tail -20 .state/apt-test-tools.log; echo "apt-get install ${missing[*]} failed (needs root and Debian's mirror)" >&2; exit 1; }
fi

log "build and type-check every project"
npx nx run-many -t build --outputStyle=static
npx nx run-many -t typecheck --outputStyle=static

log "lint (module boundaries)"
npx nx run-many -t lint --outputStyle=static

mkdir -p .state
log "versioning: nx release dry run (conventional commits -> next library versions; changes nothing)"
# --first-release: no release tags exist yet; once the first release is tagged, drop it.
npx nx release version --dry-run --first-release >.state/release-dry-run.log 2>&1 || { tail -30 .state/release-dry-run.log; exit 1; }
grep -E '^\+   "version"|UPDATE libs/.*/package.json' .state/release-dry-run.log || true

log "jest: pure tests (no services; jest.unit.config.js, also npm run test:unit)"
npx jest -c jest.unit.config.js --ci --silent

log "jest: all projects (pure, *.int.spec.ts and *.e2e.spec.ts against the real services)"
mkdir -p .state
set +e
npx jest --ci --json --outputFile=.state/jest-results.json "$@"
rc=$?
set -e
node -e '
  const r = require("./.state/jest-results.json");
  const skipped = r.numPendingTests + r.numTodoTests;
  console.log(`\n${r.numPassedTests} passed, ${r.numFailedTests} failed, ${skipped} skipped`);
' || true

# The real engines (SDXL, FLUX, WAN) on random-weight models: images, models, two steps each (ADR 0005).
if [[ "${SKIP_CONFORMANCE:-0}" != 1 ]]; then
  log "engine conformance: real images, real engines, worker sandbox"
  bash tools/conformance/run.sh || rc=1
fi

# After every suite that builds or runs containers: it removes stale tags and stopped containers.
log "reclaim-disk: what it removes and what it keeps"
bash tools/services/reclaim-disk-test.sh || rc=1

# Last, because `down` stops what every suite above needs; it brings them back up.
log "services.sh lifecycle: up -> down -> status -> up"
bash tools/services/lifecycle-test.sh || rc=1
exit $rc
