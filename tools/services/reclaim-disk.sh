#!/usr/bin/env bash
# Gives back the disk that earlier builds and test runs left behind, and says how much
# is free. The engine images are ~6.8 GB each (CUDA torch wheels), and every build tags
# them with its commit as well as its version: without this, each CI run on a machine
# keeps one more set of layers alive until the disk fills mid-push (what failed stop 21).
#
# Removes only what this project made and no run still needs:
#   - image tags <registry>/stationthis/<name>:<commit> of commits other than HEAD (only
#     tags git knows as commits: the torch base images' input-hash tags stay, they are
#     the engine images' build cache), and version tags older than each image's newest
#     (all of them stay in the registry);
#   - superseded images (dangling, once pushed: a rebuild moved their tag) and stopped
#     containers of stationthis images (a killed test can leave one behind);
#   - build-stage results and build cache made over a week ago (younger ones are the next
#     build's cache).
# The local registry's blobs and the random-weight models are shared, content-addressed
# caches (~/.cache/stationthis): kept.
#
# Usage: tools/services/reclaim-disk.sh [--need-gb N]
#   --need-gb N  warn (loudly, with what to delete) when less than N GB is free after reclaiming
set -euo pipefail
REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
NEED_GB=0
while (($#)); do
  case "$1" in
    --need-gb) NEED_GB="$2"; shift 2 ;;
    *) echo "usage: $0 [--need-gb N]" >&2; exit 2 ;;
  esac
done
say() { printf '[reclaim] %s\n' "$*" >&2; }
free_gb() { df -Pk "${1:-/}" | awk 'NR==2 { printf "%.1f", $4 / 1048576 }'; }

docker_root=$(docker info --format '{{.DockerRootDir}}' 2>/dev/null) || { say "docker is not running; nothing reclaimed"; exit 0; }
before=$(free_gb "$docker_root")
head=$(git -C "$REPO_ROOT" rev-parse --short HEAD 2>/dev/null || echo none)

# Stopped containers of our images first (never a running or just-created one: a live job may own it);
# an image a stopped container still uses cannot be untagged.
stopped=$(docker ps -a --filter status=exited --filter status=dead --format '{{.ID}} {{.Image}}' \
  | awk '$2 ~ /stationthis|recipe-builder-test/ { print $1 }')
n_ctrs=0
if [[ -n "$stopped" ]]; then n_ctrs=$(wc -l <<<"$stopped"); xargs -r docker rm -f >/dev/null 2>&1 <<<"$stopped" || true; fi

# Stale tags, per repository: commit tags (hex, 7-40) other than HEAD's, and version tags
# older than the repository's newest (the registry keeps every pushed version; the worker
# pulls by digest from there, never from this engine's tags).
stale=""
for repo in $(docker images --format '{{.Repository}}' | grep -E '/stationthis/|^([^/]+/)?recipe-builder-test/' | sort -u); do
  tags=$(docker images "$repo" --format '{{.Tag}}')
  newest=$(grep -E '^[0-9]+\.[0-9]+\.[0-9]+' <<<"$tags" | sort -V | tail -1 || true)
  while read -r tag; do
    [[ -z "$tag" || "$tag" == "$head" || "$tag" == "$newest" ]] && continue
    # A hex tag is a commit tag only when git knows it as a commit: the shared torch
    # images are tagged with a 16-hex hash of their inputs, and removing one throws away
    # the build cache of every engine image on it (a ~6 GB pip install and rebuild).
    if [[ "$tag" =~ ^[0-9a-f]{7,40}$ ]]; then
      git -C "$REPO_ROOT" rev-parse -q --verify "$tag^{commit}" >/dev/null 2>&1 && stale+="$repo:$tag"$'\n'
    elif [[ "$tag" =~ ^[0-9]+\.[0-9]+\.[0-9]+ ]]; then
      stale+="$repo:$tag"$'\n'
    fi
  done <<<"$tags"
done
stale=$(sed '/^$/d' <<<"$stale")
n_tags=0
if [[ -n "$stale" ]]; then
  n_tags=$(wc -l <<<"$stale")
  # rmi of a tag only untags when another tag holds the image; layers go when the last does.
  xargs -r -n 20 docker rmi >/dev/null 2>&1 <<<"$stale" || true
fi

# Dangling images: a rebuild moved their tag away. Pushed ones (their RepoDigests name our
# namespace) are superseded engine images: removed. Unpushed ones are mostly the classic
# builder's stage results (`FROM … AS builder`), which are the next build's cache: pruning
# them made every run reinstall the 6 GB torch layer and rebuild every engine image. Those
# go only once made over a week ago.
n_dangling=0
for id in $(docker images -q --filter dangling=true | sort -u); do
  if docker image inspect "$id" --format '{{join .RepoDigests " "}}' 2>/dev/null | grep -q '/stationthis/'; then
    docker rmi "$id" >/dev/null 2>&1 && n_dangling=$((n_dangling + 1)) || true
  fi
done
docker image prune -f --filter until=168h >/dev/null 2>&1 || true
docker builder prune -f --filter until=168h >/dev/null 2>&1 || true

after=$(free_gb "$docker_root")
say "removed $n_tags stale tag(s), $n_dangling superseded image(s), $n_ctrs stopped container(s); free on $docker_root: ${before} GB -> ${after} GB"
if [[ "$NEED_GB" != 0 ]] && awk -v a="$after" -v n="$NEED_GB" 'BEGIN { exit !(a < n) }'; then
  cache="${STATIONTHIS_CACHE_DIR:-$HOME/.cache/stationthis}"
  say "WARNING: only ${after} GB free; this run needs about ${NEED_GB} GB (engine image builds and pushes, training outputs)."
  say "  the largest things this project keeps: $(du -sh "$docker_root" 2>/dev/null | cut -f1) docker ($docker_root),"
  say "  $(du -sh "$cache/conformance/models" 2>/dev/null | cut -f1) random-weight models ($cache/conformance/models, rebuilt on demand),"
  say "  $(du -sh "$cache/registry" 2>/dev/null | cut -f1) local registry blobs ($cache/registry, refilled by the next push)."
  say "  Free space elsewhere on the disk, or delete one of those, then run again."
fi
