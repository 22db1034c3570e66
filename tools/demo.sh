#!/usr/bin/env bash
# The main job end to end on this machine: a real LoRA training of the CPU
# smoke recipe in a real, hardened container, from a seeded dataset to a
# registered model, with points charged, reconciled and credited.
# Usage: bash tools/demo.sh
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/bootstrap.sh"

export MONGO_DB_NAME=${MONGO_DB_NAME:-noema}
export TRAINING_ENVIRONMENT=development
export CPU_SLOTS=${CPU_SLOTS:-1}
CLI="node apps/training-worker/dist/cli/cli.js"
OWNER=${DEMO_OWNER:-64b000000000000000000001}
WALLET=${DEMO_WALLET:-0x00000000000000000000000000000000000d3m0}

log "build all projects"
npx nx run-many -t build --outputStyle=static

log "build and push the smoke recipe's training image (on the local base image)"
npx nx run recipe-builder:build-images --outputStyle=static -- --only smoke-cpu --base-image "$STATIONTHIS_BASE_IMAGE" --push

log "seed a demo account with points and a dataset of generated images"
DEMO_DIR=$(mktemp -d)
$CLI demo-images --out "$DEMO_DIR" --count 8
$CLI seed-account --owner "$OWNER" --wallet "$WALLET" --points 5000
JOB_ID=$($CLI submit --dir "$DEMO_DIR" --owner "$OWNER" --wallet "$WALLET" --model SMOKE --name "demo-shapes" --trigger "sh4pes")
echo "queued job $JOB_ID"

log "run the worker until the queue is empty (nx serve training-worker)"
WORKER_EXIT_WHEN_IDLE=1 WORKER_POLL_MS=500 WORKER_PROGRESS_THROTTLE_MS=1000 WORKER_HTTP_PORT=0 \
  npx nx serve training-worker --outputStyle=static

log "result"
$CLI show "$JOB_ID"
URL=$($CLI show "$JOB_ID" --json | node -e 'const j=JSON.parse(require("fs").readFileSync(0));console.log(j.model?.publishedTo?.modelFileUrl ?? j.job.modelRepoUrl ?? "")')
if [[ -z "$URL" ]]; then echo "the demo job did not complete; see the job record above" >&2; exit 1; fi
echo
echo "Trained LoRA: $URL"
