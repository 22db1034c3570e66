#!/usr/bin/env bash
# Local stand-ins for the platform's infrastructure, for development, tests and CI:
#   docker    Debian's docker.io engine            (unix:///var/run/docker.sock)
#   mongo     FerretDB v1.24 on SQLite, embedded   (mongodb://127.0.0.1:27017)
#   s3        MinIO, built from the Go proxy       (http://127.0.0.1:9000)
#   registry  Debian's docker-registry             (127.0.0.1:5000)
#   base      debootstrap bookworm minbase image   (stationthis-local/bookworm-minbase:1)
# Usage: tools/services/services.sh up|down|status|env [service...]
# Idempotent: `up` starts only what is not already healthy. Setting MONGO_URL or
# S3_ENDPOINT makes the script use that server and start nothing for it.
set -euo pipefail

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
STATE_DIR="${STATIONTHIS_STATE_DIR:-$REPO_ROOT/.state}"
CACHE_DIR="${STATIONTHIS_CACHE_DIR:-$HOME/.cache/stationthis}"
BIN_DIR="$CACHE_DIR/bin"
LOG_DIR="$STATE_DIR/logs"
RUN_DIR="$STATE_DIR/run"

FERRETDB_VERSION="v1.24.2"
# MinIO tags (RELEASE.*) are not semver; this is the Go pseudo-version of the last
# community commit (2026-02-12), pinned so every machine builds the same server.
MINIO_VERSION="v0.0.0-20260212201848-7aac2a2c5b7c"
BASE_IMAGE="${STATIONTHIS_BASE_IMAGE:-stationthis-local/bookworm-minbase:1}"
DEBIAN_MIRROR="${STATIONTHIS_DEBIAN_MIRROR:-http://deb.debian.org/debian}"

MONGO_ADDR="127.0.0.1:27017"
S3_ADDR="127.0.0.1:9000"
S3_ACCESS_KEY="${S3_ACCESS_KEY_ID:-stationthis}"
S3_SECRET_KEY="${S3_SECRET_ACCESS_KEY:-stationthis-local-secret}"
REGISTRY_ADDR="127.0.0.1:5000"
BUCKETS=(datasets models uploads)

mkdir -p "$LOG_DIR" "$RUN_DIR" "$BIN_DIR"

say()  { printf '[services] %s\n' "$*" >&2; }
fail() { printf '[services] ERROR: %s\n' "$*" >&2; exit 1; }

port_open() { (exec 3<>"/dev/tcp/${1%:*}/${1#*:}") 2>/dev/null; }
wait_for() { # wait_for <what> <seconds> <command...>
  local what=$1 secs=$2 i; shift 2
  for ((i = 0; i < secs * 4; i++)); do "$@" && return 0; sleep 0.25; done
  return 1
}
pid_alive() { [[ -f "$RUN_DIR/$1.pid" ]] && kill -0 "$(cat "$RUN_DIR/$1.pid")" 2>/dev/null; }
start_bg() { # start_bg <name> <command...>: detached, logs under the state folder
  local name=$1; shift
  say "starting $name (log: $LOG_DIR/$name.log)"
  setsid nohup "$@" >>"$LOG_DIR/$name.log" 2>&1 </dev/null &
  echo $! >"$RUN_DIR/$name.pid"
}
stop_pid() {
  local name=$1
  if pid_alive "$name"; then
    local pid; pid=$(cat "$RUN_DIR/$name.pid")
    kill "$pid" 2>/dev/null || true
    wait_for "$name exit" 15 bash -c "! kill -0 $pid 2>/dev/null" || kill -9 "$pid" 2>/dev/null || true
    say "stopped $name"
  fi
  rm -f "$RUN_DIR/$name.pid"
}
apt_install() {
  say "installing Debian packages: $*"
  if [[ ! -f "$STATE_DIR/.apt-updated" ]]; then apt-get update -qq >>"$LOG_DIR/apt.log" 2>&1 && touch "$STATE_DIR/.apt-updated"; fi
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >>"$LOG_DIR/apt.log" 2>&1 \
    || fail "apt-get install $* failed; see $LOG_DIR/apt.log (needs root and Debian's package mirror)"
}

# ---------------------------------------------------------------- docker
docker_ok() { docker info >/dev/null 2>&1; }
docker_up() {
  docker_ok && { say "docker: already running"; return; }
  command -v dockerd >/dev/null || apt_install docker.io
  command -v docker >/dev/null || apt_install docker.io
  if ! pid_alive dockerd; then start_bg dockerd dockerd --host=unix:///var/run/docker.sock; fi
  wait_for docker 60 docker_ok || fail "dockerd did not answer within 60 s; see $LOG_DIR/dockerd.log"
  say "docker: ready"
}
docker_down() { stop_pid dockerd; }

# ---------------------------------------------------------------- mongo (FerretDB)
mongo_external() { [[ -n "${MONGO_URL:-}" && "${STATIONTHIS_MANAGED_MONGO:-}" != 1 ]]; }
mongo_ok() { port_open "$MONGO_ADDR"; }
ferretdb_bin() {
  local bin="$BIN_DIR/ferretdb-$FERRETDB_VERSION"
  if [[ ! -x "$bin" ]]; then
    command -v go >/dev/null || fail "Go toolchain not found; install Go >= 1.24 to build FerretDB"
    say "building FerretDB $FERRETDB_VERSION (once; cached at $bin)"
    (cd "$REPO_ROOT/tools/ferretdb" && go build -tags ferretdb_no_postgresql -o "$bin.tmp" . ) >>"$LOG_DIR/build-ferretdb.log" 2>&1 \
      || fail "FerretDB build failed; see $LOG_DIR/build-ferretdb.log"
    mv "$bin.tmp" "$bin"
  fi
  echo "$bin"
}
mongo_up() {
  if mongo_external; then say "mongo: using MONGO_URL from the environment, starting nothing"; return; fi
  mongo_ok && { say "mongo: already listening on $MONGO_ADDR"; return; }
  local bin; bin=$(ferretdb_bin)
  mkdir -p "$STATE_DIR/ferretdb"
  start_bg ferretdb "$bin" -listen "$MONGO_ADDR" -data "$STATE_DIR/ferretdb"
  wait_for mongo 30 mongo_ok || fail "FerretDB did not listen on $MONGO_ADDR within 30 s; see $LOG_DIR/ferretdb.log"
  say "mongo: ready (FerretDB $FERRETDB_VERSION)"
}
mongo_down() { stop_pid ferretdb; }

# ---------------------------------------------------------------- s3 (MinIO)
s3_external() { [[ -n "${S3_ENDPOINT:-}" && "${STATIONTHIS_MANAGED_S3:-}" != 1 ]]; }
s3_ok() { curl -sf "http://$S3_ADDR/minio/health/ready" >/dev/null 2>&1; }
minio_bin() {
  local bin="$BIN_DIR/minio-$MINIO_VERSION"
  if [[ ! -x "$bin" ]]; then
    command -v go >/dev/null || fail "Go toolchain not found; install Go >= 1.24 to build MinIO"
    say "building MinIO $MINIO_VERSION (once, several minutes; cached at $bin)"
    local gobin; gobin=$(mktemp -d)
    GOBIN="$gobin" go install "github.com/minio/minio@$MINIO_VERSION" >>"$LOG_DIR/build-minio.log" 2>&1 \
      || fail "MinIO build failed; see $LOG_DIR/build-minio.log"
    mv "$gobin/minio" "$bin"
  fi
  echo "$bin"
}
create_buckets() {
  local endpoint=$1 b
  for b in "${BUCKETS[@]}"; do
    local code
    code=$(curl -s -o /dev/null -w '%{http_code}' --aws-sigv4 "aws:amz:us-east-1:s3" \
      --user "$S3_ACCESS_KEY:$S3_SECRET_KEY" -X PUT "$endpoint/$b")
    case "$code" in
      200|409) ;;
      *) fail "could not create bucket '$b' at $endpoint (HTTP $code); check the S3 credentials" ;;
    esac
  done
  say "s3: buckets ${BUCKETS[*]} present"
  set_public_read "$endpoint" models
}
# A public R2 bucket (r2.dev or a custom domain) serves any object by its URL but lists
# nothing; the platform hands out model and sample URLs on that basis. The local models
# bucket gets the same: anonymous GetObject only (`mc anonymous set download` minus
# GetBucketLocation), via the S3 PutBucketPolicy API. datasets and uploads stay private.
set_public_read() {
  local endpoint=$1 bucket=$2 code
  local policy='{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Principal":{"AWS":["*"]},"Action":["s3:GetObject"],"Resource":["arn:aws:s3:::'"$bucket"'/*"]}]}'
  # `?policy=` (not `?policy`): curl's SigV4 signs a bare key differently from MinIO. curl
  # 7.88 signs a body only with its hash sent as x-amz-content-sha256.
  local body_sha; body_sha=$(printf '%s' "$policy" | sha256sum | cut -d' ' -f1)
  code=$(curl -s -o /dev/null -w '%{http_code}' --aws-sigv4 "aws:amz:us-east-1:s3" \
    --user "$S3_ACCESS_KEY:$S3_SECRET_KEY" -X PUT -H "x-amz-content-sha256: $body_sha" \
    --data-binary "$policy" "$endpoint/$bucket?policy=")
  case "$code" in
    200|204) say "s3: bucket '$bucket' is public-read (anonymous GET of an object; no listing)" ;;
    *) fail "could not set the public-read policy of bucket '$bucket' at $endpoint (HTTP $code); check the S3 credentials" ;;
  esac
}
s3_up() {
  if s3_external; then say "s3: using S3_ENDPOINT from the environment, starting nothing"; return; fi
  if ! s3_ok; then
    local bin; bin=$(minio_bin)
    mkdir -p "$STATE_DIR/minio"
    MINIO_ROOT_USER="$S3_ACCESS_KEY" MINIO_ROOT_PASSWORD="$S3_SECRET_KEY" MINIO_BROWSER=off \
      start_bg minio "$bin" server "$STATE_DIR/minio" --address "$S3_ADDR" --console-address 127.0.0.1:9001 --quiet
    wait_for s3 60 s3_ok || fail "MinIO did not become ready on $S3_ADDR within 60 s; see $LOG_DIR/minio.log"
    say "s3: ready (MinIO)"
  else
    say "s3: already ready on $S3_ADDR"
  fi
  create_buckets "http://$S3_ADDR"
}
s3_down() { stop_pid minio; }

# ---------------------------------------------------------------- registry
registry_ok() { curl -sf "http://$REGISTRY_ADDR/v2/" >/dev/null 2>&1; }
registry_up() {
  registry_ok && { say "registry: already answering on $REGISTRY_ADDR"; return; }
  command -v docker-registry >/dev/null || apt_install docker-registry
  # The blobs live in the machine cache, shared by every clone like the random-weight models:
  # one registry answers on $REGISTRY_ADDR whichever clone started it, and its blobs are
  # content-addressed, so a fresh clone's push of unchanged layers writes nothing (a clone
  # each holding its own 5+ GB copy is what filled the disk in stop 21's CI).
  local data="${STATIONTHIS_REGISTRY_DIR:-$CACHE_DIR/registry}"
  mkdir -p "$STATE_DIR/registry" "$(dirname "$data")"
  # Once: adopt the blobs of the per-clone location used before.
  [[ -d "$STATE_DIR/registry/data" && ! -e "$data" ]] && mv "$STATE_DIR/registry/data" "$data"
  mkdir -p "$data"
  cat >"$STATE_DIR/registry/config.yml" <<YML
version: 0.1
log: { level: warn }
storage:
  filesystem: { rootdirectory: $data }
  delete: { enabled: true }
http:
  addr: $REGISTRY_ADDR
YML
  start_bg registry docker-registry serve "$STATE_DIR/registry/config.yml"
  wait_for registry 30 registry_ok || fail "registry did not answer on $REGISTRY_ADDR within 30 s; see $LOG_DIR/registry.log"
  say "registry: ready"
}
registry_down() { stop_pid registry; }

# ---------------------------------------------------------------- base image
base_ok() { docker image inspect "$BASE_IMAGE" >/dev/null 2>&1; }
base_up() {
  docker_ok || fail "docker is not running; run: tools/services/services.sh up docker"
  base_ok && { say "base image: $BASE_IMAGE present"; return; }
  command -v debootstrap >/dev/null || apt_install debootstrap
  local dir; dir=$(mktemp -d "$STATE_DIR/rootfs.XXXXXX")
  say "base image: debootstrap bookworm minbase (about 30 s; log: $LOG_DIR/debootstrap.log)"
  debootstrap --variant=minbase bookworm "$dir" "$DEBIAN_MIRROR" >>"$LOG_DIR/debootstrap.log" 2>&1 \
    || fail "debootstrap failed; see $LOG_DIR/debootstrap.log (needs root and $DEBIAN_MIRROR)"
  # Keep apt usable inside image builds without extra configuration.
  echo "deb $DEBIAN_MIRROR bookworm main" >"$dir/etc/apt/sources.list"
  tar -C "$dir" -c . | docker import -c 'CMD ["/bin/bash"]' - "$BASE_IMAGE" >/dev/null
  rm -rf "$dir"
  say "base image: $BASE_IMAGE imported"
}
base_down() { :; } # images are cheap to keep; `docker rmi` removes it by hand

# ---------------------------------------------------------------- commands
print_env() {
  local mongo="${MONGO_URL:-mongodb://$MONGO_ADDR}"
  local s3="${S3_ENDPOINT:-http://$S3_ADDR}"
  cat <<ENV
export MONGO_URL=$mongo
export S3_ENDPOINT=$s3
export S3_ACCESS_KEY_ID=$S3_ACCESS_KEY
export S3_SECRET_ACCESS_KEY=$S3_SECRET_KEY
export S3_FORCE_PATH_STYLE=true
export DOCKER_HOST=${DOCKER_HOST:-unix:///var/run/docker.sock}
export REGISTRY_URL=${REGISTRY_URL:-$REGISTRY_ADDR}
export STATIONTHIS_BASE_IMAGE=$BASE_IMAGE
export STATIONTHIS_STATE_DIR=$STATE_DIR
ENV
}

status_line() { # name ok-func detail
  if "$2"; then printf '  %-9s up    %s\n' "$1" "$3"; else printf '  %-9s DOWN  %s\n' "$1" "$3"; return 1; fi
}
status() {
  local bad=0
  status_line docker docker_ok "docker info" || bad=1
  if mongo_external; then printf '  %-9s ext   %s\n' mongo "MONGO_URL set"; else status_line mongo mongo_ok "$MONGO_ADDR (FerretDB)" || bad=1; fi
  if s3_external; then printf '  %-9s ext   %s\n' s3 "S3_ENDPOINT set"; else status_line s3 s3_ok "$S3_ADDR (MinIO)" || bad=1; fi
  status_line registry registry_ok "$REGISTRY_ADDR" || bad=1
  status_line base base_ok "$BASE_IMAGE" || bad=1
  [[ $bad == 0 ]] || say "some services are down; run: tools/services/services.sh up"
  return $bad
}

services_up() {
  local t
  for t in "$@"; do "${t}_up"; done
  say "all requested services are up"
}
# Reverse order of `up`; each *_down stops only what this script started (its pid file),
# so a dockerd or MongoDB the machine already ran is left alone. Idempotent.
services_down() {
  local names=("$@") k
  for ((k = ${#names[@]} - 1; k >= 0; k--)); do "${names[$k]}_down"; done
  say "all requested services are down"
}

ALL=(docker mongo s3 registry base)
cmd=${1:-status}; shift || true
targets=("$@"); [[ ${#targets[@]} -gt 0 ]] || targets=("${ALL[@]}")
case "$cmd" in
  up)     services_up "${targets[@]}" ;;
  down)   services_down "${targets[@]}" ;;
  status) status ;;
  env)    print_env ;;
  *) fail "unknown command '$cmd'; use up|down|status|env [docker mongo s3 registry base]" ;;
esac
