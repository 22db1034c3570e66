#!/usr/bin/env bash
# What anyone without credentials can read from the local MinIO, checked over plain
# HTTP as a browser would: an object of the `models` bucket by its URL (200, the
# object's bytes), nothing else (listing `models`, objects of `datasets` and
# `uploads`: 403). The same as a public R2 bucket for models and private ones for
# the rest. Needs the services up (tools/services/services.sh up s3); leaves
# nothing behind. Usage: bash tools/services/public-read-test.sh
set -euo pipefail
SVC="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/services.sh"
eval "$(bash "$SVC" env)"
ENDPOINT=${S3_ENDPOINT%/}
KEY="public-read-test/probe-$$-$RANDOM.txt"
BODY="public-read probe $(date +%s%N)"
source "$(dirname "${BASH_SOURCE[0]}")/checks.sh"
signed() { # signed <curl args...>: a request with the local root credentials
  curl -s --aws-sigv4 "aws:amz:us-east-1:s3" --user "$S3_ACCESS_KEY_ID:$S3_SECRET_ACCESS_KEY" "$@"
}
put_probe() { # put_probe <bucket>: HTTP status of a signed PUT of the probe
  local sha; sha=$(printf '%s' "$BODY" | sha256sum | cut -d' ' -f1)
  signed -o /dev/null -w '%{http_code}' -X PUT -H "x-amz-content-sha256: $sha" --data-binary "$BODY" "$ENDPOINT/$1/$KEY"
}
anon_code() { curl -s -o /dev/null -w '%{http_code}' "$1"; }
cleanup() { for b in models datasets uploads; do signed -o /dev/null -X DELETE "$ENDPOINT/$b/$KEY" || true; done; }
trap cleanup EXIT

echo "[public-read] $ENDPOINT"
for b in models datasets uploads; do
  code=$(put_probe "$b")
  [[ $code == 200 ]] || { echo "  FAIL  could not write the probe to $b (HTTP $code); are the services up?"; exit 1; }
done
check "anonymous GET of a models object: 200" test "$(anon_code "$ENDPOINT/models/$KEY")" = 200
check "anonymous GET of a models object returns its bytes" test "$(curl -s "$ENDPOINT/models/$KEY")" = "$BODY"
check "anonymous listing of models is refused (403)" test "$(anon_code "$ENDPOINT/models/?list-type=2")" = 403
check "anonymous listing of models (v1) is refused (403)" test "$(anon_code "$ENDPOINT/models/")" = 403
check "anonymous PUT into models is refused (403)" test "$(curl -s -o /dev/null -w '%{http_code}' -X PUT --data-binary x "$ENDPOINT/models/$KEY.anon")" = 403
check "anonymous GET of a datasets object is refused (403)" test "$(anon_code "$ENDPOINT/datasets/$KEY")" = 403
check "anonymous GET of an uploads object is refused (403)" test "$(anon_code "$ENDPOINT/uploads/$KEY")" = 403

checks_done public-read
