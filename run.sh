#!/usr/bin/env bash
# Runs imgclass from this source tree: fetches the ONNX Runtime library once (pinned, sha256
# checked), builds in release mode, and starts the given subcommand (default: serve).
# The first build on a fresh clone took 5 min 7 s on 2 cores (2026-12-06, crates already
# downloaded); later runs start at once.
# The build has libjpeg-turbo's SIMD code when nasm is there; scripts/jpeg-simd.sh installs it
# when it can (root with apt-get) and otherwise warns, before the build, what is lost.
#   ./run.sh                 # serve on http://127.0.0.1:8080, SQLite in ./data, built-in model
#   ./run.sh classify tests/fixtures/coffee.png
# It can be run from any directory (path/to/run.sh classify photo.jpg) and stays in yours: the
# files and folders given to it (classify FILE, submit DIR, --models DIR, a relative
# sqlite://PATH) are relative to your directory, as for any command. The default database is
# this tree's data/imgclass.db wherever you run it from (IMGCLASS_DATABASE or --database to use
# another one).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd -P)"
export ORT_DYLIB_PATH="${ORT_DYLIB_PATH:-$("$root/scripts/setup-onnxruntime.sh")}"
# A URL holds a path only without the characters that URLs read otherwise.
case "$root" in
  *[?#%]*) ;;
  *) export IMGCLASS_DATABASE="${IMGCLASS_DATABASE:-sqlite://$root/data/imgclass.db}" ;;
esac
[ $# -gt 0 ] || set -- serve
simd="$("$root/scripts/jpeg-simd.sh" run.sh)"
if [ ! -x "$root/target/release/imgclass" ]; then
  echo "run.sh: building imgclass in release mode (the first build takes about 5 minutes on 2 cores)" >&2
fi
# Without --quiet: cargo shows its progress while it builds. `cargo run` starts the program in
# this directory, the caller's.
exec cargo run --manifest-path "$root/Cargo.toml" --release -p imgclass \
  ${simd:+--features "$simd"} -- "$@"
