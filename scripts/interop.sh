#!/usr/bin/env bash
# Clients generated from the API's own OpenAPI document, against a live `imgclass serve` on
# loopback (a temporary database; one job start per 10 minutes, so that submitted jobs stay
# queued for the cancel and retry flows):
#   - openapi-python-client (PyPI) generates a Python client from /api/openapi.json, with every
#     generator warning a failure; scripts/interop/drive.py drives the main flows with it.
#   - openapi-typescript (npm) generates TypeScript types from it, every warning a failure.
#   scripts/interop.sh          # uses target/debug/imgclass (built if missing)
# The versions are pinned in .ci/run, which installs them. In CI (CI=true) a missing tool fails;
# elsewhere its part is reported as skipped. Nothing is downloaded here.
set -euo pipefail
cd "$(dirname "$0")/.."

have_python=1 have_ts=1
command -v openapi-python-client >/dev/null || have_python=0
command -v openapi-typescript >/dev/null || have_ts=0
if [ "${CI:-}" = "true" ] && [ $((have_python * have_ts)) -eq 0 ]; then
  echo "openapi-python-client and openapi-typescript must be installed in CI (.ci/run installs them)" >&2
  exit 1
fi
[ $have_python = 1 ] || echo "SKIPPED: generated Python client (pip install openapi-python-client to run it)"
[ $have_ts = 1 ] || echo "SKIPPED: generated TypeScript types (npm install -g openapi-typescript to run it)"
[ $((have_python + have_ts)) -gt 0 ] || exit 0

BIN="${IMGCLASS_BIN:-target/debug/imgclass}"
[ -x "$BIN" ] || cargo build -p imgclass
WORK="$(mktemp -d)"
DB="sqlite://$WORK/interop.db"
TOKEN="$("$BIN" token --database "$DB" create --name interop --scope admin 2>"$WORK/token.log" | tail -n 1)" ||
  { cat "$WORK/token.log" >&2; exit 1; }
"$BIN" serve --listen 127.0.0.1:0 --database "$DB" --workers 1 --rate-limit 1/10m >"$WORK/serve.log" 2>&1 &
SERVER=$!
trap 'kill $SERVER 2>/dev/null; wait $SERVER 2>/dev/null; rm -rf "$WORK"' EXIT
BASE=""
for _ in $(seq 1 300); do
  BASE="$(grep -so 'listening on http://[0-9.:]*' "$WORK/serve.log" | sed 's/listening on //' || true)"
  [ -n "$BASE" ] && break
  kill -0 $SERVER 2>/dev/null || { cat "$WORK/serve.log" >&2; exit 1; }
  sleep 0.1
done
[ -n "$BASE" ] || { echo "imgclass serve did not start" >&2; cat "$WORK/serve.log" >&2; exit 1; }

if [ $have_ts = 1 ]; then
  echo "== openapi-typescript $(openapi-typescript --version 2>/dev/null | tail -n 1) from $BASE/api/openapi.json"
  # It reports problems of the document on stderr and still writes the types: any line on
  # stderr (it prints its banner and progress on stdout) fails.
  if ! openapi-typescript "$BASE/api/openapi.json" -o "$WORK/api.d.ts" 2>"$WORK/ts.err" ||
    [ -s "$WORK/ts.err" ]; then
    cat "$WORK/ts.err" >&2
    echo "openapi-typescript failed or warned" >&2
    exit 1
  fi
  grep -q '"/api/jobs": {' "$WORK/api.d.ts" && grep -q 'webhooks' "$WORK/api.d.ts" ||
    { echo "the TypeScript types lack the paths or the webhooks" >&2; exit 1; }
fi

if [ $have_python = 1 ]; then
  echo "== openapi-python-client $(openapi-python-client --version | awk '{print $NF}') from $BASE/api/openapi.json"
  (cd "$WORK" && openapi-python-client generate --url "$BASE/api/openapi.json" \
    --config "$OLDPWD/scripts/interop/openapi-python-client.yaml" \
    --meta none --output-path client --fail-on-warning)
  python3 scripts/interop/drive.py "$BASE" "$WORK" tests/fixtures "$TOKEN"
fi
