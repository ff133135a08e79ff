#!/usr/bin/env bash
# Hostile images through the upload check and the classifier, one fresh process each: the time
# of each step, the answer, and the process's memory (VmRSS after the model is loaded, VmHWM at
# the end). See bench/README.md, "Hardening".
#
#   bench/hardening.sh                 # this tree
#   bench/hardening.sh --before REV    # also REV (e.g. main), built from `git archive REV`
#                                      # with this tree's examples/hostile.rs, side by side
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
BEFORE=""
while [ $# -gt 0 ]; do
  case "$1" in
    --before) BEFORE=$2; shift 2 ;;
    -h|--help) sed -n '2,9p' "$0"; exit 0 ;;
    *) echo "bench/hardening.sh: unknown argument $1" >&2; exit 2 ;;
  esac
done
export ORT_DYLIB_PATH="${ORT_DYLIB_PATH:-$(scripts/setup-onnxruntime.sh)}"
OUT="$ROOT/target/bench"
VENV="$OUT/venv"
if [ ! -x "$VENV/bin/python" ]; then
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install --quiet --disable-pip-version-check -r bench/requirements.txt
fi
"$VENV/bin/python" bench/make_hostile.py "$OUT/hostile" >/dev/null
"$VENV/bin/python" bench/make_images.py tests/fixtures "$OUT/images" >/dev/null

cargo build --release --quiet -p imgclass-classifier --example hostile
BINS=("$ROOT/target/release/examples/hostile")
NAMES=("this tree ($(git rev-parse --short HEAD))")
if [ -n "$BEFORE" ]; then
  SRC="$OUT/before-src"
  rm -rf "$SRC" && mkdir -p "$SRC"
  git archive "$BEFORE" | tar -x -C "$SRC"
  cp crates/classifier/examples/hostile.rs "$SRC/crates/classifier/examples/"
  (cd "$SRC" && CARGO_TARGET_DIR="$OUT/before-target" cargo build --release --quiet -p imgclass-classifier --example hostile)
  BINS=("$OUT/before-target/release/examples/hostile" "${BINS[@]}")
  NAMES=("$BEFORE ($(git rev-parse --short "$BEFORE"))" "${NAMES[@]}")
fi

CASES=(tests/fixtures/coffee.png "$OUT/images/coffee-12mp.jpg"
       "$OUT"/hostile/thin-12000x1.png "$OUT"/hostile/thin-1x12000.png
       "$OUT"/hostile/bomb-rgba16-10000.png "$OUT"/hostile/bomb-rgb8-10000.png
       "$OUT"/hostile/bomb-rgba16-10000.tif "$OUT"/hostile/huge-12000x8000.jpg
       "$OUT"/hostile/liar-10000.jpg "$OUT"/hostile/liar-16x10000.png)
echo "| image | bytes | build | upload check | classify | RSS with model → peak |"
echo "| --- | --- | --- | --- | --- | --- |"
for f in "${CASES[@]}"; do
  for i in "${!BINS[@]}"; do
    line=$(timeout 120 "${BINS[$i]}" "$f" 2>/dev/null || echo "$f	-	(killed or crashed: exit $?)	-	-	-	-")
    IFS=$'\t' read -r _ cms cres kms kres base peak <<<"$line"
    printf '| %s | %s | %s | %s ms: %s | %s ms: %s | %s → %s MiB |\n' "$(basename "$f")" "$(stat -c %s "$f")" \
      "${NAMES[$i]}" "$cms" "${cres:0:70}" "$kms" "${kres:0:90}" "$base" "$peak"
  done
done
