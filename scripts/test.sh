#!/usr/bin/env bash
# The test suite: unit and integration tests of every crate (real SQLite, real model, real HTTP
# on loopback), then the browser end-to-end test of the web page in headless Chromium.
#   scripts/test.sh            # everything
#   SKIP_E2E=1 scripts/test.sh # Rust tests only
set -euo pipefail
cd "$(dirname "$0")/.."
export ORT_DYLIB_PATH="${ORT_DYLIB_PATH:-$(scripts/setup-onnxruntime.sh)}"
cargo test --workspace --all-targets
if [ "${SKIP_E2E:-}" != "1" ] && [ -x tests/e2e/run.sh ]; then
  tests/e2e/run.sh
fi
