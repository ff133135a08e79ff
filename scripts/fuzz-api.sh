#!/usr/bin/env bash
# Schema-based fuzzing of the HTTP API: schemathesis (installed by .ci/run with pip) runs against
# a live `imgclass serve` with the OpenAPI document that server serves, with every check on
# (--checks all) and every phase (examples, coverage, fuzzing, stateful).
#   scripts/fuzz-api.sh                  # uses target/debug/imgclass (built if missing)
#   FUZZ_MAX_EXAMPLES=200 scripts/fuzz-api.sh
# What it finds is fixed in the server or the document, not excluded; the settings in
# scripts/schemathesis.toml say why each exists.
# Nothing is downloaded here: schemathesis only talks to the local server.
set -euo pipefail
cd "$(dirname "$0")/.."
command -v schemathesis >/dev/null || { echo "schemathesis is not installed (pip install schemathesis)" >&2; exit 1; }
BIN="${IMGCLASS_BIN:-target/debug/imgclass}"
[ -x "$BIN" ] || cargo build -p imgclass
WORK="$(mktemp -d)"
PORT_FILE="$WORK/serve.log"
"$BIN" serve --listen 127.0.0.1:0 --database "sqlite://$WORK/fuzz.db" --workers 1 >"$PORT_FILE" 2>&1 &
SERVER=$!
trap 'kill $SERVER 2>/dev/null; wait $SERVER 2>/dev/null; rm -rf "$WORK"' EXIT
BASE=""
for _ in $(seq 1 300); do
  BASE="$(grep -o 'listening on http://[0-9.:]*' "$PORT_FILE" | sed 's/listening on //' || true)"
  [ -n "$BASE" ] && break
  kill -0 $SERVER 2>/dev/null || { cat "$PORT_FILE" >&2; exit 1; }
  sleep 0.1
done
[ -n "$BASE" ] || { echo "imgclass serve did not start" >&2; cat "$PORT_FILE" >&2; exit 1; }
echo "== schemathesis against $BASE"
schemathesis --config-file scripts/schemathesis.toml run "$BASE/api/openapi.json" \
  --checks all \
  --max-examples "${FUZZ_MAX_EXAMPLES:-100}" \
  --generation-database none \
  --no-color \
  --seed "${FUZZ_SEED:-$RANDOM}"
