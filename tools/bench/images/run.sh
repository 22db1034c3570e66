#!/usr/bin/env bash
# Image build benchmark: cold and warm builds of the real engine images, and their sizes.
#   tools/bench/images/run.sh            warm: rebuild from the layer cache, then a recipe-only change
#   tools/bench/images/run.sh --cold     also a cold build (--no-cache: every layer, torch wheels included)
# Inputs are the offline ones (engine archives, local tokenizers), as in CI without GitHub/Hub access.
# Prints one JSON line per measurement and writes .state/bench/images.json.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/../../bootstrap.sh"
COLD=0; [[ "${1:-}" == "--cold" ]] && COLD=1
ARCHIVES="${STATIONTHIS_ENGINE_ARCHIVES:-$REPO_ROOT/../shared/engines}"
TOK="$REPO_ROOT/.state/conformance/tokenizers"
OUT="$REPO_ROOT/.state/bench"; mkdir -p "$OUT"
python3 tools/conformance/models/make_tokenizers.py "$TOK" >/dev/null
npx nx run recipe-builder:build --outputStyle=static >/dev/null
RECIPES=sdxl-lora,flux-lora,wan-lora
build() { # build <label> [extra args]: wall seconds of one build-images run of all three
  local label=$1; shift
  local t0; t0=$(date +%s.%N)
  node apps/recipe-builder/dist/main.js build-images --only "$RECIPES" --base-image "$STATIONTHIS_BASE_IMAGE" \
    --engine-archives "$ARCHIVES" --tokenizers "$TOK" --push "$@" >"$OUT/images-$label.log" 2>&1
  local t1; t1=$(date +%s.%N)
  printf '{"measure":"%s","seconds":%.1f}\n' "$label" "$(echo "$t1 - $t0" | bc)"
}
results=()
[[ $COLD == 1 ]] && results+=("$(build cold --no-cache)")
results+=("$(build warm)")
# A recipe-only change: a new build arg changes only the labels of the engine images, never the torch layer.
results+=("$(build recipe-only-change --build-arg GIT_SHA=bench$(date +%s))")
for r in "${results[@]}"; do echo "$r"; done
sizes=$(docker images --format '{{.Repository}}:{{.Tag}} {{.Size}}' | grep -E 'stationthis/(torch-py311|sdxl-kohya|flux-kohya|musubi-tuner):' | sort -u)
echo "$sizes"
node -e '
  const [results, sizes] = [process.argv[1].split("\n").filter(Boolean).map(JSON.parse), process.argv[2]];
  require("fs").writeFileSync(process.argv[3], JSON.stringify({ at: new Date().toISOString(), results, sizes: sizes.split("\n") }, null, 2));
' "$(printf '%s\n' "${results[@]}")" "$sizes" "$OUT/images.json"
