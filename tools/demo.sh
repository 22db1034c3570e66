#!/usr/bin/env bash
# The main job end to end on this machine: a real LoRA training of the CPU
# smoke recipe in a real, hardened container, from a seeded dataset to a
# registered model, with points charged, reconciled and credited.
#
# What you see: one line per stage (a bar or the current step while it runs),
# the training's live bar (`cli follow`: step, loss, ETA), then the result table
# (job, steps, final loss, model and sample URLs, points, balance). Everything
# else (npm, nx, the Docker build, the worker's JSON logs) goes to the log file
# named on the second line, .state/demo/<UTC time>.log.
#
# Usage: bash tools/demo.sh
#   DEMO_SKIP_BUILD=1  skip the project and image builds (a rerun, or the tmux
#                      test, on a checkout already built: dist/ and the image manifest)
set -euo pipefail
REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$REPO_ROOT"

DEMO_DIR_STATE="${STATIONTHIS_STATE_DIR:-$REPO_ROOT/.state}/demo"
mkdir -p "$DEMO_DIR_STATE"
DEMO_LOG="$DEMO_DIR_STATE/$(date -u +%Y%m%dT%H%M%SZ).log"
: >"$DEMO_LOG"
SHOW_LOG=${DEMO_LOG#"$REPO_ROOT"/}
STAGES=6
TTY=0
[[ -t 1 ]] && TTY=1
COLS=$( { [[ $TTY == 1 ]] && tput cols; } 2>/dev/null || echo 100)
[[ $COLS =~ ^[0-9]+$ && $COLS -ge 40 ]] || COLS=100

STAGE="" STAGE_T0=$SECONDS WORKER_PID="" FAILED_SHOWN=0

# ------------------------------------------------------------------ drawing
# The stage's line, redrawn in place on a terminal (\r, cut to the width).
draw() {
  [[ $TTY == 1 ]] || return 0
  local text="$STAGE  $1"
  printf '\r\033[2K%s' "${text:0:$((COLS - 1))}"
}
stage() { # stage <n> <label>: starts a stage (a plain line when not a terminal)
  STAGE=$(printf '[%s/%s] %-30s' "$1" "$STAGES" "$2")
  STAGE_T0=$SECONDS
  printf '\n==> stage %s/%s: %s\n' "$1" "$STAGES" "$2" >>"$DEMO_LOG"
  if [[ $TTY == 1 ]]; then printf '%s' "$STAGE"; else printf '%s ...\n' "$STAGE"; fi
}
stage_ok() { # stage_ok [detail]
  local took=$((SECONDS - STAGE_T0))
  if [[ $TTY == 1 ]]; then printf '\r\033[2K'; fi
  printf '%s ok  %s(%ss)\n' "$STAGE" "${1:+$1 }" "$took"
  STAGE=""
}
bar() { # bar <done> <total> <width>
  local w=$3 n=$(($1 * $3 / ($2 > 0 ? $2 : 1)))
  printf '[%s%s]' "$(printf '%*s' "$n" '' | tr ' ' '#')" "$(printf '%*s' "$((w - n))" '' | tr ' ' '.')"
}
SPIN='|/-\'
# follow_output: every line of a command to the log; on a terminal, the stage's
# line shows the build's "Step N/M : INSTRUCTION" as a bar, else a spinner and
# the last line (nx's "> nx run project:build", the services' own lines).
follow_output() {
  local line k=0 now
  while IFS= read -r line; do
    printf '%s\n' "$line" >>"$DEMO_LOG"
    [[ $TTY == 1 ]] || continue
    k=$((k + 1))
    now=$((SECONDS - STAGE_T0))
    if [[ $line =~ Step\ ([0-9]+)/([0-9]+)\ :\ (.*)$ ]]; then
      draw "$(bar "${BASH_REMATCH[1]}" "${BASH_REMATCH[2]}" 20) ${BASH_REMATCH[1]}/${BASH_REMATCH[2]} ${now}s  ${BASH_REMATCH[3]}"
    elif [[ $line =~ (Step\ [0-9]+/[0-9]+) ]]; then
      :
    elif [[ $line =~ ^[[:space:]]*\>\ nx\ run\ ([^[:space:]]+) ]]; then
      draw "${SPIN:$((k % 4)):1} ${now}s  nx run ${BASH_REMATCH[1]}"
    elif [[ $line =~ ^\[services\]\ (.*)$ ]]; then
      draw "${SPIN:$((k % 4)):1} ${now}s  ${BASH_REMATCH[1]}"
    elif [[ $line =~ (pushing|pushed|image manifest)(.*)$ ]]; then
      draw "${SPIN:$((k % 4)):1} ${now}s  ${BASH_REMATCH[1]}${BASH_REMATCH[2]}"
    fi
  done
}
quiet() { # quiet <command...>: runs it with its output in the log only, drawn by follow_output
  "$@" 2>&1 | follow_output
}
# The worker's last error in plain words: the `msg` (and error message) of its
# last pino line at level error or fatal in the log, never the raw JSON.
worker_error() {
  node -e 'let m = "";
    for (const l of require("fs").readFileSync(process.argv[1], "utf8").split("\n")) {
      if (!l.startsWith("{")) continue;
      try { const j = JSON.parse(l); if (j.level >= 50 || j.level === "error" || j.level === "fatal") m = `${j.msg ?? ""}${j.err?.message ? `: ${j.err.message}` : ""}`; } catch {}
    }
    console.log(m.slice(0, 300));' "$DEMO_LOG" 2>/dev/null || true
}

# ------------------------------------------------------------------ failure
# Any failing command ends the demo (set -e): say which stage, why in plain
# words (the log's last lines that say error/fail, else its last lines), and
# where the whole log is. The background worker is stopped.
on_exit() {
  local rc=$?
  if [[ -n "$WORKER_PID" ]] && kill -0 "$WORKER_PID" 2>/dev/null; then
    kill -TERM "$WORKER_PID" 2>/dev/null || true
    wait "$WORKER_PID" 2>/dev/null || true
  fi
  [[ -n "${DEMO_DATA_DIR:-}" ]] && rm -rf "$DEMO_DATA_DIR"
  if [[ $rc != 0 && $FAILED_SHOWN == 0 ]]; then
    [[ $TTY == 1 ]] && printf '\r\033[2K'
    [[ -n "$STAGE" ]] && printf '%s FAILED after %ss\n' "$STAGE" "$((SECONDS - STAGE_T0))"
    local why
    why=$(grep -iE 'error|fail|denied|refused|cannot|not found' "$DEMO_LOG" | grep -vE '^(==> stage|\{)' | tail -n 3 | cut -c1-300 || true)
    [[ -n "$why" ]] || why=$(grep -v '^{' "$DEMO_LOG" | tail -n 3 | cut -c1-300 || true)
    printf '%s\n' "$why" | sed 's/^/  /'
    printf 'The demo failed (exit %s). Full log: %s\n' "$rc" "$SHOW_LOG"
  fi
  exit "$rc"
}
trap on_exit EXIT

printf 'StationThis demo: train a LoRA on the CPU smoke recipe, end to end\n'
printf 'Full log: %s\n' "$SHOW_LOG"

# ------------------------------------------------------------------ 1. node
stage 1 "Node.js and npm dependencies"
# Sourced (PATH and the pinned node must reach this shell), so its output is
# redirected rather than drawn.
STATIONTHIS_BOOTSTRAP_SERVICES=0 source tools/bootstrap.sh >>"$DEMO_LOG" 2>&1
stage_ok "node $(node --version)"

# ------------------------------------------------------------------ 2. services
stage 2 "Local services"
# services.sh manages nothing behind a set MONGO_URL / S3_ENDPOINT (external servers);
# the local addresses, left by an earlier `eval "$(services.sh env)"`, are its own.
[[ "${MONGO_URL:-}" == "mongodb://127.0.0.1:27017" ]] && unset MONGO_URL
[[ "${S3_ENDPOINT:-}" == "http://127.0.0.1:9000" ]] && unset S3_ENDPOINT
quiet tools/services/services.sh up
eval "$(tools/services/services.sh env)"
quiet tools/services/reclaim-disk.sh --need-gb 4
stage_ok "docker, FerretDB, MinIO (models public-read), registry"

export MONGO_DB_NAME=${MONGO_DB_NAME:-noema}
export TRAINING_ENVIRONMENT=development
export CPU_SLOTS=${CPU_SLOTS:-1}
CLI=(node apps/training-worker/dist/cli/cli.js)
OWNER=${DEMO_OWNER:-64b000000000000000000001}
WALLET=${DEMO_WALLET:-0x00000000000000000000000000000000000d3m0}

# ------------------------------------------------------------------ 3, 4. builds
if [[ "${DEMO_SKIP_BUILD:-0}" == 1 ]]; then
  for f in apps/training-worker/dist/main.js apps/training-worker/dist/cli/cli.js apps/recipe-builder/build/image-manifest.json; do
    [[ -f $f ]] || { echo "DEMO_SKIP_BUILD=1 but $f is missing: run bash tools/demo.sh once without it" >&2; exit 1; }
  done
  printf '[3/%s] %-30s skipped (DEMO_SKIP_BUILD=1)\n' "$STAGES" "Build projects"
  printf '[4/%s] %-30s skipped (DEMO_SKIP_BUILD=1)\n' "$STAGES" "Training image smoke-cpu"
else
  stage 3 "Build projects"
  quiet npx nx run-many -t build --outputStyle=static
  stage_ok "$(grep -cE '^\s*> nx run [^ ]+:build' "$DEMO_LOG" || true) project builds"

  stage 4 "Training image smoke-cpu"
  # nice: the build shares the machine with whatever else runs on it.
  quiet nice -n 10 node apps/recipe-builder/dist/main.js build-images --only smoke-cpu --base-image "$STATIONTHIS_BASE_IMAGE" --push
  stage_ok "$(grep -oE 'Step [0-9]+/[0-9]+' "$DEMO_LOG" | tail -n 1 | sed 's/Step //') build steps, pushed to $REGISTRY_URL"
fi

# ------------------------------------------------------------------ 5. seed
stage 5 "Account, dataset and job"
DEMO_DATA_DIR=$(mktemp -d)
quiet "${CLI[@]}" demo-images --out "$DEMO_DATA_DIR" --count 8
quiet "${CLI[@]}" seed-account --owner "$OWNER" --wallet "$WALLET" --points 5000
JOB_ID=$("${CLI[@]}" submit --dir "$DEMO_DATA_DIR" --owner "$OWNER" --wallet "$WALLET" --model SMOKE --name "demo-shapes" --trigger "sh4pes" 2>>"$DEMO_LOG")
echo "queued job $JOB_ID" >>"$DEMO_LOG"
stage_ok "8 images, job $JOB_ID"

# ------------------------------------------------------------------ 6. train
# The worker runs in the background with its JSON logs in the file; `cli follow`
# draws the job in the foreground and stops if the worker exits first.
printf '[6/%s] Training job %s (the worker runs in the background)\n' "$STAGES" "$JOB_ID"
printf '\n==> stage 6/%s: worker\n' "$STAGES" >>"$DEMO_LOG"
STAGE_T0=$SECONDS
WORKER_EXIT_WHEN_IDLE=1 WORKER_POLL_MS=500 WORKER_PROGRESS_THROTTLE_MS=1000 WORKER_HTTP_PORT=0 LOG_LEVEL=${LOG_LEVEL:-info} \
  node apps/training-worker/dist/main.js >>"$DEMO_LOG" 2>&1 </dev/null &
WORKER_PID=$!
echo "worker pid $WORKER_PID" >>"$DEMO_LOG"
follow_rc=0
"${CLI[@]}" follow "$JOB_ID" --worker-pid "$WORKER_PID" --interval 500 2>>"$DEMO_LOG" || follow_rc=$?
# The points are settled after COMPLETED is written: the worker exits once it
# has settled and the queue is empty, so wait for it before reading the result.
worker_rc=0
if [[ $follow_rc == 4 ]]; then
  # follow could not read the job for a minute (the database is gone): the worker cannot
  # settle without it either, so stop it (it exits at its next safe point) instead of waiting.
  printf '  the database stopped answering; stopping the worker\n'
  kill -TERM "$WORKER_PID" 2>/dev/null || true
fi
wait "$WORKER_PID" || worker_rc=$?
WORKER_PID=""
echo "worker exited with $worker_rc" >>"$DEMO_LOG"
"${CLI[@]}" result "$JOB_ID" 2>>"$DEMO_LOG" || true
if [[ $follow_rc != 0 || $worker_rc != 0 ]]; then
  FAILED_SHOWN=1
  why=$(worker_error)
  [[ -z "$why" ]] || printf '  worker: %s\n' "$why"
  printf 'The demo job did not complete (follow exit %s, worker exit %s): the reason is above. Full log: %s\n' "$follow_rc" "$worker_rc" "$SHOW_LOG"
  exit 1
fi
printf 'The URLs open without credentials (models bucket: public-read, as on R2).\nFull log: %s\n' "$SHOW_LOG"
