#!/usr/bin/env bash
# Everything the engine conformance suite needs, idempotent (a second run takes seconds):
#   1. local services (docker, MinIO, registry, base image) and npm dependencies
#   2. tiny tokenizers in Hugging Face cache layout     .state/conformance/tokenizers
#   3. the real engine images, built offline from the pinned source archives and
#      pushed to the local registry (recipe-builder build-images; layer cache reused)
#   4. random-weight base models in the exact files the loaders read, made inside
#      the engine images (no host Python packages)       ~/.cache/stationthis/conformance/models
#      (~35 GB, deterministic: one copy per machine, shared by every clone)
#   5. the dataset media (5 images, their 5 control     .state/conformance/dataset
#      images, 2 clips at 30 fps)
# Usage: tools/conformance/prepare.sh [recipe-id[:variant] ...]   (default: sdxl-lora flux-lora wan-lora kontext-lora flux2-klein-lora)
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/../bootstrap.sh"

# A resume or mode case (`sdxl-lora:resume`, `kontext-lora:style_subject`) needs what its recipe needs.
RECIPES=(); for r in "$@"; do r="${r%%:*}"; [[ " ${RECIPES[*]} " == *" $r "* ]] || RECIPES+=("$r"); done
[[ ${#RECIPES[@]} -gt 0 ]] || RECIPES=(sdxl-lora flux-lora wan-lora kontext-lora flux2-klein-lora)
CONF="$REPO_ROOT/.state/conformance"
MODELS="${CONFORMANCE_MODELS_DIR:-${STATIONTHIS_CACHE_DIR:-$HOME/.cache/stationthis}/conformance/models}"
TOOLS="$REPO_ROOT/tools/conformance/models"
# Engine source archives: the option, else the workspace's shared/engines beside the clone, else
# the machine cache (filled from the first found, so a clone anywhere, like CI's, finds them).
# recipe-builder checks each archive's sha256 against the recipe either way.
ARCHIVE_CACHE="${STATIONTHIS_CACHE_DIR:-$HOME/.cache/stationthis}/engine-archives"
ARCHIVES="${STATIONTHIS_ENGINE_ARCHIVES:-}"
if [[ -z "$ARCHIVES" ]]; then
  for d in "$REPO_ROOT/../shared/engines" /work/shared/engines "$ARCHIVE_CACHE"; do
    [[ -d "$d" ]] && ls "$d"/*.tar.gz >/dev/null 2>&1 && { ARCHIVES="$d"; break; }
  done
fi
if [[ -n "$ARCHIVES" && -d "$ARCHIVES" && "$(cd "$ARCHIVES" && pwd)" != "$ARCHIVE_CACHE" ]]; then
  mkdir -p "$ARCHIVE_CACHE" && cp -n "$ARCHIVES"/*.tar.gz "$ARCHIVE_CACHE"/ 2>/dev/null || true
fi
mkdir -p "$MODELS" "$CONF/dataset"
chmod 777 "$MODELS" "$CONF/dataset"

log "tokenizers (standard-library Python; the image build proves each loads offline)"
python3 "$TOOLS/make_tokenizers.py" "$CONF/tokenizers"

log "engine images: ${RECIPES[*]} (offline inputs: archives $ARCHIVES, tokenizers $CONF/tokenizers)"
[[ -n "$ARCHIVES" && -d "$ARCHIVES" ]] || { echo "no engine source archives found (looked in ../shared/engines, /work/shared/engines, $ARCHIVE_CACHE); set STATIONTHIS_ENGINE_ARCHIVES to the folder holding sd-scripts-*.tar.gz and musubi-tuner-*.tar.gz" >&2; exit 1; }
npx nx run recipe-builder:build --outputStyle=static >/dev/null
build_log="$CONF/build-images.log"
if ! node apps/recipe-builder/dist/main.js build-images --only "$(IFS=,; echo "${RECIPES[*]}")" \
    --base-image "$STATIONTHIS_BASE_IMAGE" --engine-archives "$ARCHIVES" --tokenizers "$CONF/tokenizers" --push >"$build_log" 2>&1; then
  tail -40 "$build_log" >&2; echo "image build failed; full log: $build_log" >&2; exit 1
fi
grep -E '^(sdxl|flux|wan|kontext|flux2-klein)-lora@' "$build_log" || true

image_of() { # the pushed digest of a recipe's image, from the manifest recipe-builder wrote
  node -e '
    const m = require(process.argv[1]); const id = process.argv[2];
    const e = Object.entries(m.images).filter(([k]) => k.startsWith(id + "@")).map(([, v]) => v).pop();
    if (!e) process.exit(1); console.log(e.repoDigest);' "$REPO_ROOT/apps/recipe-builder/build/image-manifest.json" "$1"
}
in_image() { # in_image <recipe-id> <script> [args...]: a maker inside the engine image, no network, uid 1000
  local image; image=$(image_of "$1"); shift
  docker run --rm --network none --entrypoint python -u 1000:1000 -e HOME=/tmp \
    -v "$TOOLS:/tools:ro" -v "$MODELS:/out" "$image" "/tools/$1" /out "${@:2}"
}

for r in "${RECIPES[@]}"; do
  case "$r" in
    sdxl-lora) log "random-weight SDXL checkpoint"; in_image sdxl-lora make_sd_scripts_models.py sdxl ;;
    flux-lora) log "random-weight FLUX.1 dev files"; in_image flux-lora make_sd_scripts_models.py flux ;;
    wan-lora)  log "random-weight WAN 2.1 files";    in_image wan-lora make_musubi_models.py ;;
    # The AE and both text encoders are flux-lora's files (same keys from musubi's classes): made once, whichever maker runs first.
    kontext-lora) log "random-weight FLUX.1 Kontext files (DiT at the conformance shim's depth)"; in_image kontext-lora make_kontext_models.py ;;
    # DiT and Qwen3 4B at the conformance shim's sizes (cases.ts FLUX2_KLEIN_SHIM); the FLUX.2 AE at full size.
    flux2-klein-lora) log "random-weight FLUX.2 [klein] 4B files (DiT and Qwen3 at the conformance shim's sizes)"; in_image flux2-klein-lora make_flux2_models.py ;;
  esac
done

log "dataset media"
image=$(image_of wan-lora 2>/dev/null || image_of "${RECIPES[0]}")
docker run --rm --network none --entrypoint python -u 1000:1000 -v "$TOOLS:/tools:ro" -v "$CONF/dataset:/out" "$image" /tools/make_dataset.py /out
du -sh "$MODELS" "$CONF/dataset"
