#!/usr/bin/env bash
# Runs imgclass from this source tree: fetches the ONNX Runtime library once (pinned, sha256
# checked), builds in release mode, and starts the given subcommand (default: serve).
# The build has libjpeg-turbo's SIMD code when nasm is there; scripts/jpeg-simd.sh installs it
# when it can (root with apt-get) and otherwise warns, before the build, what is lost.
#   ./run.sh                 # serve on http://127.0.0.1:8080, SQLite in ./data, built-in model
#   ./run.sh classify tests/fixtures/coffee.png
set -euo pipefail
cd "$(dirname "$0")"
export ORT_DYLIB_PATH="${ORT_DYLIB_PATH:-$(scripts/setup-onnxruntime.sh)}"
[ $# -gt 0 ] || set -- serve
simd="$(scripts/jpeg-simd.sh run.sh)"
if [ ! -x target/release/imgclass ]; then
  echo "run.sh: building imgclass in release mode (the first build takes a few minutes)" >&2
fi
# Without --quiet: cargo shows its progress while it builds.
exec cargo run --release -p imgclass ${simd:+--features "$simd"} -- "$@"
