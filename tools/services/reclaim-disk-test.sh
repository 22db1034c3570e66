#!/usr/bin/env bash
# What tools/services/reclaim-disk.sh removes and what it keeps, on tags of the small
# base image (no layer is written): commit tags of other commits go, HEAD's stays;
# older version tags go, the newest stays; a hex tag git does not know as a commit
# (the torch base images' input hashes, the engine images' build cache) stays.
# Needs docker and the base image (services.sh up). Usage: bash tools/services/reclaim-disk-test.sh
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
eval "$(bash "$ROOT/tools/services/services.sh" env)"
REPO="127.0.0.1:5000/stationthis/reclaim-probe"
head=$(git -C "$ROOT" rev-parse --short HEAD)
older=$(git -C "$ROOT" rev-parse --short HEAD~1 2>/dev/null || echo "")
failures=0
check() { # check <description> <command...>
  local what=$1; shift
  if "$@"; then echo "  ok    $what"; else echo "  FAIL  $what"; failures=$((failures + 1)); fi
}
present() { docker image inspect "$REPO:$1" >/dev/null 2>&1; }
absent() { ! present "$1"; }
base_present() { docker image inspect "$STATIONTHIS_BASE_IMAGE" >/dev/null 2>&1; }
cleanup() { docker images "$REPO" --format '{{.Repository}}:{{.Tag}}' | xargs -r docker rmi >/dev/null 2>&1 || true; }
trap cleanup EXIT

echo "[reclaim] tags of $STATIONTHIS_BASE_IMAGE as $REPO"
tags=("$head" 0.1.0 0.2.0 0123456789abcdef)
[[ -n "$older" ]] && tags+=("$older")
for t in "${tags[@]}"; do docker tag "$STATIONTHIS_BASE_IMAGE" "$REPO:$t"; done
bash "$ROOT/tools/services/reclaim-disk.sh" 2>&1 | sed 's/^/  /'
check "HEAD's commit tag is kept" present "$head"
if [[ -n "$older" ]]; then check "another commit's tag is removed" absent "$older"; fi
check "the newest version tag is kept" present 0.2.0
check "an older version tag is removed" absent 0.1.0
check "a hex tag that is no commit (a torch input hash) is kept" present 0123456789abcdef
check "the base image itself is untouched" base_present
if ((failures)); then echo "[reclaim] $failures check(s) failed"; exit 1; fi
echo "[reclaim] all checks passed"
