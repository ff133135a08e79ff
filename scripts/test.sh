#!/usr/bin/env bash
# The test suite: unit and integration tests of every crate (real SQLite, real model, real HTTP
# on loopback, real processes), the store suite and the multi-process tests again on PostgreSQL,
# schema-based fuzzing of the HTTP API (schemathesis), then the browser end-to-end test of the
# web page in headless Chromium.
#   scripts/test.sh            # everything
#   SKIP_E2E=1 scripts/test.sh # without the browser test
# PostgreSQL: IMGCLASS_TEST_POSTGRES (default postgres://postgres@127.0.0.1:5432/test). When no
# server answers, its tests are reported as skipped (in CI, where one must run, that fails).
set -euo pipefail
cd "$(dirname "$0")/.."
export ORT_DYLIB_PATH="${ORT_DYLIB_PATH:-$(scripts/setup-onnxruntime.sh)}"
export IMGCLASS_TEST_POSTGRES="${IMGCLASS_TEST_POSTGRES:-postgres://postgres@127.0.0.1:5432/test}"

# Everything on SQLite (the PostgreSQL cluster tests run below).
cargo test --workspace --all-targets -- --skip pg_cluster::

if psql "$IMGCLASS_TEST_POSTGRES" -qAtc 'select 1' >/dev/null 2>&1; then
  echo "== store suite on PostgreSQL"
  IMGCLASS_TEST_DATABASE="$IMGCLASS_TEST_POSTGRES" cargo test -p imgclass-store --test it
  echo "== API and worker processes on PostgreSQL"
  cargo test -p imgclass --test it -- pg_cluster::
elif [ "${CI:-}" = "true" ]; then
  echo "PostgreSQL does not answer at $IMGCLASS_TEST_POSTGRES; in CI its tests must run" >&2
  exit 1
else
  echo "SKIPPED: PostgreSQL tests (no server answers at $IMGCLASS_TEST_POSTGRES; set IMGCLASS_TEST_POSTGRES)"
fi

# Schema-based fuzzing of the HTTP API against a live server (schemathesis, from PyPI).
if command -v schemathesis >/dev/null; then
  scripts/fuzz-api.sh
elif [ "${CI:-}" = "true" ]; then
  echo "schemathesis is not installed; in CI the API fuzzing must run" >&2
  exit 1
else
  echo "SKIPPED: API fuzzing (pip install schemathesis to run it)"
fi

if [ "${SKIP_E2E:-}" != "1" ] && [ -x tests/e2e/run.sh ]; then
  tests/e2e/run.sh
fi
