#!/usr/bin/env bash
# One command: build libs/storage, install the AWS CLI into a venv under .state/
# (once), then run the side-by-side benchmark against the local S3 server.
#   tools/bench/storage/run.sh [--size-mib 1024] [--rounds 2]
set -euo pipefail
REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../../.." && pwd)"
VENV="${STATIONTHIS_STATE_DIR:-$REPO_ROOT/.state}/bench-venv"
AWSCLI_VERSION="${AWSCLI_VERSION:-1.46.3}"
cd "$REPO_ROOT"
if [[ ! -x "$VENV/bin/aws" ]]; then
  echo "[bench] installing awscli==$AWSCLI_VERSION into $VENV" >&2
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install -q "awscli==$AWSCLI_VERSION"
fi
npx tsc -p libs/storage/tsconfig.lib.json
exec node --no-warnings tools/bench/storage/bench.mjs --aws "$VENV/bin/aws" "$@"
