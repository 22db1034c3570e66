#!/usr/bin/env bash
# Lifecycle test of services.sh on the real services: up -> down -> status -> up,
# asserting each state. Runs last in tools/test-all.sh because `down` stops the
# services every other suite needs (and `up` at the end leaves them as it found them).
set -euo pipefail
SVC="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/services.sh"
STATE_DIR="${STATIONTHIS_STATE_DIR:-$(cd "$(dirname "$SVC")/../.." && pwd)/.state}"
source "$(dirname "${BASH_SOURCE[0]}")/checks.sh"
# tools/bootstrap.sh exports the local services' own addresses (services.sh env); with
# them set, services.sh would treat mongo and s3 as external and manage neither.
[[ "${MONGO_URL:-}" == "mongodb://127.0.0.1:27017" ]] && unset MONGO_URL
[[ "${S3_ENDPOINT:-}" == "http://127.0.0.1:9000" ]] && unset S3_ENDPOINT
managed=()   # the services this script's pid files say it started; only those must stop
for name in dockerd ferretdb minio registry; do
  [[ -f "$STATE_DIR/run/$name.pid" ]] && managed+=("$name")
done

echo "[lifecycle] up"
check "up exits 0" bash "$SVC" up
check "status after up reports every service up" bash "$SVC" status
for name in dockerd ferretdb minio registry; do
  [[ -f "$STATE_DIR/run/$name.pid" ]] && { [[ " ${managed[*]} " == *" $name "* ]] || managed+=("$name"); }
done

echo "[lifecycle] down (started by this script: ${managed[*]:-none})"
check "down exits 0" bash "$SVC" down
for name in "${managed[@]}"; do
  check "$name has no pid file after down" test ! -f "$STATE_DIR/run/$name.pid"
done
out=$(bash "$SVC" status 2>&1 || true)
for pair in dockerd:docker ferretdb:mongo minio:s3 registry:registry; do
  name=${pair%%:*} svc=${pair#*:}
  if [[ " ${managed[*]} " == *" $name "* ]]; then
    check "status shows $svc DOWN after down" grep -qE "^  $svc +DOWN" <<<"$out"
  fi
done
if [[ ${#managed[@]} -gt 0 ]]; then
  check "status exits non-zero while services are down" bash -c "! bash '$SVC' status >/dev/null 2>&1"
else
  # Every service was already running, started outside this checkout (another clone's
  # services.sh, or MONGO_URL/S3_ENDPOINT servers): down must leave them all running.
  check "down left the services it did not start running" bash "$SVC" status
fi
check "down a second time exits 0" bash "$SVC" down

echo "[lifecycle] up again"
check "up after down exits 0" bash "$SVC" up
check "status after the second up reports every service up" bash "$SVC" status
# `up` gives the models bucket its public-read policy (on a fresh MinIO too): check it as anyone would.
check "after up, models is public-read and datasets/uploads private" bash "$(dirname "$SVC")/public-read-test.sh"

checks_done lifecycle
