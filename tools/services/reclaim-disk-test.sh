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
source "$(dirname "${BASH_SOURCE[0]}")/checks.sh"
id_present() { docker image inspect "$1" >/dev/null 2>&1; }   # an image id or reference
id_absent() { ! id_present "$1"; }
present() { id_present "$REPO:$1"; }
absent() { ! present "$1"; }
cleanup() {
  docker images "$REPO" --format '{{.Repository}}:{{.Tag}}' | xargs -r docker rmi >/dev/null 2>&1 || true
  for id in "${stage_id:-}" "${pushed_id:-}"; do [[ -n "$id" ]] && docker rmi "$id" >/dev/null 2>&1 || true; done
}
trap cleanup EXIT

echo "[reclaim] tags of $STATIONTHIS_BASE_IMAGE as $REPO"
tags=("$head" 0.1.0 0.2.0 0123456789abcdef)
[[ -n "$older" ]] && tags+=("$older")
for t in "${tags[@]}"; do docker tag "$STATIONTHIS_BASE_IMAGE" "$REPO:$t"; done
# Two dangling images, each a label on the base image (no layer): a build stage's result
# (never pushed: the next build's cache) and a pushed image a rebuild superseded.
probe_image() { # probe_image <tag> <label>: builds FROM the base image with one label, prints its id
  printf 'FROM %s\nLABEL org.stationthis.reclaim-probe=%s\n' "$STATIONTHIS_BASE_IMAGE" "$2" \
    | DOCKER_BUILDKIT=0 docker build -q -t "$REPO:$1" - 2>/dev/null | tail -1
}
stage_id=$(probe_image stage "stage-$$")
pushed_id=$(probe_image pushed "pushed-$$")
docker push -q "$REPO:pushed" >/dev/null
docker tag "$STATIONTHIS_BASE_IMAGE" "$REPO:stage"   # both lose their tag: dangling now
docker tag "$STATIONTHIS_BASE_IMAGE" "$REPO:pushed"
bash "$ROOT/tools/services/reclaim-disk.sh" 2>&1 | sed 's/^/  /'
check "HEAD's commit tag is kept" present "$head"
if [[ -n "$older" ]]; then check "another commit's tag is removed" absent "$older"; fi
check "the newest version tag is kept" present 0.2.0
check "an older version tag is removed" absent 0.1.0
check "a hex tag that is no commit (a torch input hash) is kept" present 0123456789abcdef
check "both dangling probes were built (ids $stage_id, $pushed_id)" test -n "$stage_id" -a -n "$pushed_id"
check "a dangling build-stage result (never pushed) is kept as build cache" id_present "$stage_id"
check "a dangling pushed image (superseded by a rebuild) is removed" id_absent "$pushed_id"
check "the base image itself is untouched" id_present "$STATIONTHIS_BASE_IMAGE"
checks_done reclaim
