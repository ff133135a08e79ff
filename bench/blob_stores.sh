#!/usr/bin/env bash
# Where images are kept, measured: `--blob-store database` against `file://DIR` on SQLite, side
# by side in one run, alternating (A B A B ...), on
#   - the photo mix end to end (the 8 photos of bench/run.sh's throughput row, the built-in
#     model, 8 uploads in flight): images/s and the server's CPU per image;
#   - the queue (tiny distinct PNGs, --provider noop, --workers 8, 64 uploads in flight): jobs/s
#     and the server's CPU per job;
# and the bytes each leaves on disk. Prints a markdown table.
#
#   bench/blob_stores.sh [ROUNDS]     (default 2; needs the release build and the images that
#                                      bench/run.sh makes: run it once first, or --quick)
#
# BENCH_N_E2E (default 200) and BENCH_N_QUEUE (default 5000) set the sizes.
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS=${1:-2}
N_E2E=${BENCH_N_E2E:-200}
N_QUEUE=${BENCH_N_QUEUE:-5000}
BIN=target/release/imgclass
IMAGES=target/bench/images
PY=target/bench/venv/bin/python
[ -x "$BIN" ] || { echo "bench/blob_stores.sh: build $BIN first (bench/run.sh does)" >&2; exit 1; }
[ -f "$IMAGES/coffee-12mp.jpg" ] && [ -x "$PY" ] ||
  { echo "bench/blob_stores.sh: run bench/run.sh (or --quick) once first: it makes $IMAGES" >&2; exit 1; }
export ORT_DYLIB_PATH="${ORT_DYLIB_PATH:-$(scripts/setup-onnxruntime.sh)}"
RUN=$(mktemp -d "${TMPDIR:-/tmp}/imgclass-blobs.XXXXXX")
trap 'rm -rf "$RUN"' EXIT
. bench/photos.sh

# Distinct tiny PNGs for the queue, so that each job stores an image of its own.
"$PY" - "$RUN/tiny" "$N_QUEUE" <<'PY'
import os, sys
from PIL import Image
out, n = sys.argv[1], int(sys.argv[2])
os.makedirs(out, exist_ok=True)
for i in range(n):
    Image.new("RGB", (8, 8), (i % 256, (i // 256) % 256, 7)).save(f"{out}/{i:05d}.png")
PY

run() { # run STORE SECTION ROUND: one measurement, its JSON in $RUN/STORE-SECTION-ROUND.json
  local store=$1 section=$2 round=$3 tmp="$RUN/$1-$2-$3"
  mkdir -p "$tmp"
  local url=database
  [ "$store" = file ] && url="file://$tmp/images"
  if [ "$section" = e2e ]; then
    IMGCLASS_BLOB_STORE=$url node bench/imgclass.mjs e2e --bin "$BIN" --tmp "$tmp" \
      --out "$RUN/$store-e2e-$round.json" --n "$N_E2E" --concurrency 8 --repeat 1 "${PHOTOS[@]}" >&2
  else
    IMGCLASS_BLOB_STORE=$url node bench/imgclass.mjs queue --bin "$BIN" --tmp "$tmp" \
      --out "$RUN/$store-queue-$round.json" --n "$N_QUEUE" --concurrency 64 --workers 8 \
      "$RUN"/tiny/*.png >&2
  fi
  du -sb "$tmp" | cut -f1 >"$RUN/$store-$section-$round.bytes"
  rm -rf "$tmp"
}

for round in $(seq 1 "$ROUNDS"); do
  for section in e2e queue; do
    for store in database file; do
      echo "bench: round $round, $section, $store" >&2
      run "$store" "$section" "$round"
    done
  done
done

"$PY" - "$RUN" "$ROUNDS" <<'PY'
import json, os, sys
run, rounds = sys.argv[1], int(sys.argv[2])
def load(store, section, r):
    d = json.load(open(f"{run}/{store}-{section}-{r}.json"))
    d = d.get("runs", [d])[0] if "per_s" not in d else d
    d["bytes"] = int(open(f"{run}/{store}-{section}-{r}.bytes").read())
    return d
print("| section | round | database: per s | file: per s | file / database | server CPU ms per job (database, file) | on disk MiB (database, file) |")
print("| --- | --- | --- | --- | --- | --- | --- |")
for section in ("e2e", "queue"):
    for r in range(1, rounds + 1):
        a, b = load("database", section, r), load("file", section, r)
        print(f"| {section} | {r} | {a['per_s']} | {b['per_s']} | {b['per_s'] / a['per_s']:.2f} | "
              f"{a['server_cpu_ms_per_job']}, {b['server_cpu_ms_per_job']} | "
              f"{a['bytes'] / 2**20:.1f}, {b['bytes'] / 2**20:.1f} |")
PY
