#!/usr/bin/env bash
# The test suite: unit and integration tests of every crate (real SQLite, real model, real HTTP
# on loopback, real processes), the store suite and the multi-process tests again on PostgreSQL,
# schema-based fuzzing of the HTTP API (schemathesis), clients generated from the API's OpenAPI
# document (openapi-python-client, openapi-typescript), then the browser end-to-end test of the
# web page in headless Chromium.
# Times on 2 cores (2026-12-06): after ./run.sh has built, the first test result comes 8 min 21 s
# later (this script builds the test binaries in the debug profile, dependencies optimised);
# CI's .ci/run (this script, the fuzzers, the benchmark's smoke mode) took 25 min from a fresh clone.
#   scripts/test.sh            # everything
#   SKIP_E2E=1 scripts/test.sh # without the browser test
# PostgreSQL: IMGCLASS_TEST_POSTGRES (default postgres://postgres@127.0.0.1:5432/test). When no
# server answers, its tests are reported as skipped (in CI, where one must run, that fails).
set -euo pipefail
cd "$(dirname "$0")/.."
export ORT_DYLIB_PATH="${ORT_DYLIB_PATH:-$(scripts/setup-onnxruntime.sh)}"
export IMGCLASS_TEST_POSTGRES="${IMGCLASS_TEST_POSTGRES:-postgres://postgres@127.0.0.1:5432/test}"

# Build every test binary once, with one profile and one feature set; each step below runs
# those same binaries. (`cargo test -p X` or `cargo build -p imgclass` would resolve other
# features and compile much of the workspace again.) The feature set is run.sh's: with
# libjpeg-turbo's SIMD code when nasm is there (scripts/jpeg-simd.sh installs it when it can,
# and otherwise warns here, before the build, what is lost).
simd="$(scripts/jpeg-simd.sh scripts/test.sh)"
echo "== building the tests${simd:+ (features: $simd)}"
mkdir -p target
cargo test --workspace --all-targets --no-run ${simd:+--features "$simd"} \
  --message-format=json-render-diagnostics >target/test-artifacts.json
# One line per test binary: package directory, target name, executable; then the imgclass binary.
artifacts="$(python3 - target/test-artifacts.json <<'PY'
import json, os, sys
seen, binary = set(), None
for line in open(sys.argv[1]):
    if not line.startswith("{"):
        continue
    m = json.loads(line)
    if m.get("reason") != "compiler-artifact" or not m.get("executable"):
        continue
    exe, target = m["executable"], m["target"]
    if m["profile"]["test"] and exe not in seen:
        seen.add(exe)
        print("test\t%s\t%s\t%s" % (os.path.dirname(m["manifest_path"]), target["name"], exe))
    elif target["name"] == "imgclass" and "bin" in target["kind"]:
        binary = exe
print("bin\t-\t-\t%s" % binary)
PY
)"

# Runs the test binaries of PACKAGE_DIR_SUFFIX/TARGET (`*` for all) with the given arguments,
# from the package's directory, as cargo test does.
run_tests() {
  local want_dir="$1" want_target="$2"
  shift 2
  local kind dir target exe ran=0
  while IFS=$'\t' read -r kind dir target exe; do
    [ "$kind" = test ] || continue
    case "$dir" in */$want_dir | $want_dir) ;; *) continue ;; esac
    [ "$want_target" = "*" ] || [ "$target" = "$want_target" ] || continue
    echo "     Running ${dir#"$PWD"/}: $target (${exe#"$PWD"/})"
    # A test that hangs fails its binary after TEST_BINARY_TIMEOUT seconds instead of holding
    # the whole run.
    (cd "$dir" && timeout --kill-after=10 "${TEST_BINARY_TIMEOUT:-900}" "$exe" "$@")
    ran=$((ran + 1))
  done <<<"$artifacts"
  if [ "$ran" -eq 0 ]; then
    echo "no test binary matches $want_dir/$want_target" >&2
    return 1
  fi
}

# Everything on SQLite (the PostgreSQL cluster tests run below).
run_tests "*" "*" --skip pg_cluster::

if psql "$IMGCLASS_TEST_POSTGRES" -qAtc 'select 1' >/dev/null 2>&1; then
  echo "== store suite on PostgreSQL"
  IMGCLASS_TEST_DATABASE="$IMGCLASS_TEST_POSTGRES" run_tests crates/store it
  echo "== API and worker processes on PostgreSQL"
  run_tests crates/cli it pg_cluster::
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

# The browser test and the interop test use the imgclass binary built above.
IMGCLASS_BIN="$(awk -F'\t' '$1 == "bin" { print $4 }' <<<"$artifacts")"
export IMGCLASS_BIN

# Clients generated from the live server's /api/openapi.json drive it (a missing generator is
# reported as skipped; in CI it fails).
scripts/interop.sh
if [ "${SKIP_E2E:-}" != "1" ] && [ -x tests/e2e/run.sh ]; then
  tests/e2e/run.sh
fi
