#!/usr/bin/env bash
# The working demo of all three training types on this machine: one SDXL, one
# FLUX.1 dev and one WAN 2.1 job, submitted as the platform would (dataset
# uploaded to S3, dataset and job documents in Mongo, points deposited), taken
# by a real worker through charge -> fetch -> the real engines in their real
# images -> upload -> model registration -> settlement, to COMPLETED.
#
# No GPU here, so the worker runs with WORKER_CPU_TEST_RUNS=1: each recipe's
# testRun profile (libs/recipes) applies, two optimizer steps and the CPU dtype
# changes, and the base models are the conformance suite's random-weight files
# (WEIGHTS_LOCAL_DIR, hard-linked into the weight cache, no copy).
# Takes ~15 minutes on 2 cores once tools/conformance/prepare.sh has run once
# (it runs first; the first time it builds the images and models, ~25 minutes).
#
# Usage: bash tools/demo-engines.sh [SDXL FLUX WAN]   (default: all three)
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/bootstrap.sh"

MODELS=("$@"); [[ ${#MODELS[@]} -gt 0 ]] || MODELS=(SDXL FLUX WAN)
declare -A RECIPE=([SDXL]=sdxl-lora [FLUX]=flux-lora [WAN]=wan-lora)
# The parameters a platform user could send; small resolutions so two steps fit on a CPU.
declare -A PARAMS=(
  [SDXL]="resolution=512 samplePreview=false saveEveryNSteps=0 loraRank=8 loraAlpha=8"
  [FLUX]="resolution=512 multiResolution=false samplePreview=false saveEveryNSteps=0 loraRank=8 loraAlpha=8"
  [WAN]="task=t2v-1.3B resolution=256 videoResolution=256 frameCount=5 clipsPerVideo=2 saveEveryNSteps=0 loraRank=8 loraAlpha=8"
)
recipes=(); for m in "${MODELS[@]}"; do [[ -n "${RECIPE[$m]:-}" ]] || { echo "unknown model type $m (SDXL, FLUX or WAN)" >&2; exit 2; }; recipes+=("${RECIPE[$m]}"); done

export MONGO_DB_NAME=${MONGO_DB_NAME:-noema}
export TRAINING_ENVIRONMENT=development
CLI="node apps/training-worker/dist/cli/cli.js"
OWNER=${DEMO_OWNER:-64b000000000000000000002}
WALLET=${DEMO_WALLET:-0x00000000000000000000000000000000000e9e5}
WEIGHTS="${CONFORMANCE_MODELS_DIR:-${STATIONTHIS_CACHE_DIR:-$HOME/.cache/stationthis}/conformance/models}"

log "images, random-weight models and dataset media (tools/conformance/prepare.sh, idempotent)"
bash tools/conformance/prepare.sh "${recipes[@]}"

log "build all projects"
npx nx run-many -t build --outputStyle=static >/dev/null

log "a dataset as the platform stores it: 5 images (3 captions with the trigger word, 1 without, 1 uncaptioned), 2 clips"
DATA=$(mktemp -d)
trap 'rm -rf "$DATA"' EXIT
cp "$REPO_ROOT"/.state/conformance/dataset/* "$DATA/"
TRIGGER=sks_demo
printf 'a photo of %s, a yellow disc on blue' "$TRIGGER" > "$DATA/img_1.txt"
printf '%s standing on a dark bar' "$TRIGGER" > "$DATA/img_2.txt"
printf 'close-up of %s' "$TRIGGER" > "$DATA/img_3.txt"
printf 'a yellow disc, no trigger word here' > "$DATA/img_4.txt"
printf '%s sliding to the right' "$TRIGGER" > "$DATA/clip_1.txt"

log "seed an account and submit ${MODELS[*]}"
$CLI seed-account --owner "$OWNER" --wallet "$WALLET" --points 100000
declare -A JOB
for m in "${MODELS[@]}"; do
  args=(); for kv in ${PARAMS[$m]}; do args+=(--param "$kv"); done
  JOB[$m]=$($CLI submit --dir "$DATA" --owner "$OWNER" --wallet "$WALLET" --model "$m" --name "demo-$(echo "$m" | tr A-Z a-z)" --trigger "$TRIGGER" "${args[@]}")
  echo "queued $m job ${JOB[$m]}"
done

log "run the worker until the queue is empty (CPU test runs, local random-weight models)"
started=$(date +%s)
WORKER_CPU_TEST_RUNS=1 WEIGHTS_LOCAL_DIR="$WEIGHTS" CPU_SLOTS=1 CONTAINER_MEMORY_BYTES=$((20 * 1024 ** 3)) \
  WORKER_EXIT_WHEN_IDLE=1 WORKER_POLL_MS=500 WORKER_PROGRESS_THROTTLE_MS=2000 WORKER_HTTP_PORT=0 LOG_LEVEL=${LOG_LEVEL:-info} \
  node apps/training-worker/dist/main.js
echo "worker finished in $(( $(date +%s) - started )) s"

log "results"
failed=0
for m in "${MODELS[@]}"; do
  $CLI show "${JOB[$m]}" --json > "$DATA/$m.json"
  node -e '
    const { job, model, points } = JSON.parse(require("fs").readFileSync(process.argv[1], "utf8"));
    const p = job.pipeline ?? {};
    const runs = (p.containerRuns ?? []).map((r) => `${r.step} ${Math.round((new Date(r.endedAt) - new Date(r.startedAt)) / 1000)} s`).join(", ");
    console.log(`${process.argv[2]}: ${job.status}  charged ${job.estimatedCostPoints ?? "?"} -> used ${job.actualCostPoints ?? "?"} points  steps ${job.currentStep ?? "?"}/${job.totalSteps ?? "?"} loss ${job.currentLoss ?? "?"}`);
    console.log(`  containers: ${runs}`);
    if (model) console.log(`  model ${model.slug}: ${model.publishedTo?.modelFileUrl ?? job.modelRepoUrl}`);
    if (job.failureReason) console.log(`  reason: ${job.failureReason}`);
    process.exit(job.status === "COMPLETED" && model ? 0 : 1);
  ' "$DATA/$m.json" "$m" || failed=1
done
exit $failed
