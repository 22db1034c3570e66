#!/usr/bin/env bash
# Bytes per checkpoint and per engine-state save, per recipe (issue 14).
#   tools/bench/checkpoints/run.sh
# SDXL and WAN: from the conformance resume cases' report (run them first:
#   tools/conformance/run.sh sdxl-lora:resume wan-lora:resume).
# Smoke: a 100-step run at the recipe's defaults saving every 25 steps, in the
# smoke image (this checkout's trainer mounted over the image's copy).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/../../bootstrap.sh"
OUT="$REPO_ROOT/.state/bench/checkpoints"; rm -rf "$OUT"; mkdir -p "$OUT"/{dataset,output}; chmod 777 "$OUT"/{dataset,output}
IMAGE="${SMOKE_IMAGE:-$(docker images --format '{{.Repository}}:{{.Tag}}' | grep -m1 'stationthis/smoke-cpu:')}"
[[ -n "$IMAGE" ]] || { echo "no smoke-cpu image: build it (npx nx run recipe-builder:build-images -- --only smoke-cpu)" >&2; exit 1; }
cat >"$OUT/smoke.toml" <<TOML
dataset_dir = "/data/dataset"
output_dir = "/data/output"
output_name = "bench"
[train]
steps = 100
save_every_n_steps = 25
save_state = true
sample_prompts = ["bench", "a photo of bench"]
TOML
docker run --rm --network none -u "$(id -u)" -v "$OUT/dataset:/d" "$IMAGE" python3 -c \
  "from PIL import Image, ImageDraw
for i in range(6):
  im = Image.new('RGB', (96, 80), (40*i, 90, 200-30*i)); ImageDraw.Draw(im).ellipse((10+3*i, 10, 70, 60), fill=(255, 200, 0)); im.save('/d/img%d.png' % i)"
docker run --rm --network none -u "$(id -u)" -v "$OUT/dataset:/data/dataset:ro" -v "$OUT/output:/data/output" -v "$OUT/smoke.toml:/data/job/smoke.toml:ro" \
  -v "$REPO_ROOT/libs/recipes/src/smoke/trainer.py:/opt/stationthis/train_smoke.py:ro" "$IMAGE" \
  python3 /opt/stationthis/train_smoke.py --config /data/job/smoke.toml >"$OUT/smoke.log" 2>&1
node tools/bench/checkpoints/bytes.mjs "$REPO_ROOT/.state/conformance/report.json" "$OUT/output" | tee "$OUT/bytes.jsonl"
