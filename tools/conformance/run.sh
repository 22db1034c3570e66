#!/usr/bin/env bash
# The engine conformance suite: prepare (idempotent), then run the real engines.
# Usage: tools/conformance/run.sh [recipe-id ...] [recipe-id:resume ...] [recipe-id:variant ...]   (default: every case;
#        a recipe id runs all its modes, e.g. kontext-lora = concept + kontext-lora:style_subject)
# Report: .state/conformance/report.json
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/../bootstrap.sh"
bash tools/conformance/prepare.sh "$@"
log "conformance: real engines, random weights, worker sandbox"
export CONFORMANCE_ONLY="$(IFS=,; echo "$*")"
npx jest -c tools/conformance/jest.config.js --ci
