#!/usr/bin/env bash
# The classification pipelines side by side, interleaved round by round so that all of them see
# the same machine (other builds and tests on a shared machine move every absolute figure):
# the competent and the naive Python pipeline (bench/ceiling.py, 2 threads x 1-thread session)
# and imgclass's raw loop (examples/raw, 2 threads x 1-thread session), optionally also the raw
# loop of an older build. Prints, per pipeline, the images/s of each round and the CPU time per
# image of the timed part (user + sys of the process, as each program reports it).
#
#   bench/compare.sh [--rounds 3] [--n 200] [--raw BIN] [--raw-before BIN] [--also NAME=BIN]...
#                    [--photos 'A B ...']
#
# With --photos, only those files (the per-photo table of bench/README.md runs it once per photo).
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS=3; N=200; RAW=target/release/examples/raw; BEFORE=""; ONLY=""; ALSO=()
while [ $# -gt 0 ]; do
  case "$1" in
    --rounds) ROUNDS=$2; shift 2 ;;
    --n) N=$2; shift 2 ;;
    --raw) RAW=$2; shift 2 ;;
    --raw-before) BEFORE=$2; shift 2 ;;
    --photos) ONLY=$2; shift 2 ;;
    --also) ALSO+=("$2"); shift 2 ;;
    *) sed -n '2,13p' "$0"; exit 2 ;;
  esac
done
export ORT_DYLIB_PATH="${ORT_DYLIB_PATH:-$(scripts/setup-onnxruntime.sh)}"
PY=target/bench/venv/bin/python
IMAGES=target/bench/images
"$PY" bench/make_images.py tests/fixtures "$IMAGES" >/dev/null
. bench/photos.sh
[ -n "$ONLY" ] && read -r -a PHOTOS <<<"$ONLY"
declare -A CMD
CMD[python-competent]="$PY bench/ceiling.py --model $MODEL --n $N --modes 2thread --pipelines competent"
CMD[python-naive]="$PY bench/ceiling.py --model $MODEL --n $N --modes 2thread --pipelines naive"
CMD[imgclass]="$RAW --n $N --mode 2x1"
ORDER=(python-competent imgclass python-naive)
if [ -n "$BEFORE" ]; then CMD[imgclass-before]="$BEFORE --n $N --mode 2x1"; ORDER+=(imgclass-before); fi
for a in "${ALSO[@]}"; do CMD[${a%%=*}]="${a#*=} --n $N --mode 2x1"; ORDER+=("${a%%=*}"); done
declare -A RATES CPUS
for r in $(seq "$ROUNDS"); do
  for k in "${ORDER[@]}"; do
    out=$(${CMD[$k]} "${PHOTOS[@]}" 2>&1 >/dev/null)
    rate=$(grep -oE '= [0-9.]+ img/s' <<<"$out" | tail -1 | grep -oE '[0-9.]+')
    cpu=$(grep -oE 'CPU [0-9.]+ ms per image' <<<"$out" | tail -1 | grep -oE '[0-9.]+')
    RATES[$k]="${RATES[$k]:-} $rate"; CPUS[$k]="${CPUS[$k]:-} $cpu"
    echo "round $r: $k: $rate img/s, $cpu ms CPU per image (load $(cut -d' ' -f1 /proc/loadavg))" >&2
  done
done
echo "| pipeline | img/s per round | median img/s | CPU ms per image (median) |"
echo "| --- | --- | --- | --- |"
for k in "${ORDER[@]}"; do
  med=$(tr ' ' '\n' <<<"${RATES[$k]}" | grep . | sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}')
  cmed=$(tr ' ' '\n' <<<"${CPUS[$k]}" | grep . | sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}')
  echo "| $k | ${RATES[$k]# } | $med | $cmed |"
done
