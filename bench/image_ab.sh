#!/usr/bin/env bash
# The image-path ratios of bench/run.sh, alternated round by round: in each round, the end-to-end
# row (200 photos of the mix over HTTP to `imgclass serve`, 8 in flight), the raw loop
# (`examples/raw`, 2 threads × 1 intra thread) and the competent Python pipeline (best of 2
# processes and 2 threads), one after the other; then the medians of the rounds' ratios. On a
# machine whose speed drifts by more than the gap being measured (a full run's rows are minutes
# apart), this is the comparison to read.
#
#   bench/image_ab.sh            # 5 rounds (BENCH_ROUNDS), after bench/run.sh has set things up
#
# bench/run.sh runs it too (3 rounds; 1 with --quick), for its side-by-side rows; BENCH_AB_OUT
# names the directory of the rounds' JSON (default target/bench/image-ab).
#
# Needs what bench/run.sh installs: the release build and its examples (BENCH_BIN_DIR, default
# target/release), the Python environment (target/bench/venv) and the photos (target/bench/images).
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS=${BENCH_ROUNDS:-5}
N=${BENCH_N_E2E:-200}
BIN_DIR=${BENCH_BIN_DIR:-target/release}
PY=target/bench/venv/bin/python
IMAGES=target/bench/images
. bench/photos.sh
for need in "$BIN_DIR/imgclass" "$BIN_DIR/examples/raw" "$PY" "$IMAGES/rocket-6mp.jpg"; do
  [ -e "$need" ] || { echo "image_ab: $need is missing; run bench/run.sh once first" >&2; exit 1; }
done
OUT=${BENCH_AB_OUT:-target/bench/image-ab}
rm -rf "$OUT" && mkdir -p "$OUT"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
for r in $(seq "$ROUNDS"); do
  echo "image_ab: round $r of $ROUNDS" >&2
  node bench/imgclass.mjs e2e --bin "$BIN_DIR/imgclass" --tmp "$tmp/$r" --out "$OUT/e2e-$r.json" \
    --n "$N" --concurrency 8 "${PHOTOS[@]}" >&2
  "$BIN_DIR/examples/raw" --n "$N" --mode 2x1 --json "$OUT/raw-$r.json" "${PHOTOS[@]}" >&2
  "$PY" bench/ceiling.py --model "$MODEL" --n "$N" --modes 2proc,2thread --pipelines competent \
    --json "$OUT/python-$r.json" "${PHOTOS[@]}" >&2
done
python3 - "$OUT" "$ROUNDS" <<'PY'
import json, os, statistics, sys
out, rounds = sys.argv[1], int(sys.argv[2])
rows = []
for r in range(1, rounds + 1):
    e2e = json.load(open(os.path.join(out, f"e2e-{r}.json")))
    raw = max(json.load(open(os.path.join(out, f"raw-{r}.json")))["runs"], key=lambda x: x["images_per_s"])
    py = max(json.load(open(os.path.join(out, f"python-{r}.json")))["runs"], key=lambda x: x["images_per_s"])
    rows.append({
        "e2e": e2e["per_s"], "raw": raw["images_per_s"], "python": py["images_per_s"],
        "e2e/python": e2e["per_s"] / py["images_per_s"],
        "cpu/raw": e2e["server_cpu_ms_per_job"] / raw["cpu_ms_per_image"],
        "cpu/python": e2e["server_cpu_ms_per_job"] / (py["cpu_ms_per_image"] or 2e3 / py["images_per_s"]),
    })
def line(key, fmt):
    v = [x[key] for x in rows]
    return f"{key}: median {fmt(statistics.median(v))} (rounds: {' · '.join(fmt(x) for x in v)})"
for key in ("e2e", "raw", "python"):
    print(line(key, lambda x: f"{x:.1f}") + " img/s")
for key in ("e2e/python", "cpu/raw", "cpu/python"):
    print(line(key, lambda x: f"{x:.2f}"))
json.dump(rows, open(os.path.join(out, "summary.json"), "w"), indent=1)
PY
