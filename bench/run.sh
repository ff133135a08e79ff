#!/usr/bin/env bash
# imgclass's benchmark harness: one command, one table. See bench/README.md.
#
#   bench/run.sh            # full run (about 10 minutes on 2 cores)
#   bench/run.sh --quick    # smoke mode: small N, a couple of minutes once built; CI may run it
#
# Measures, against a release build: end-to-end throughput over HTTP; the ceiling (Python
# onnxruntime + Pillow, and imgclass's own raw decode+inference loop); queue overhead with the
# no-op provider beside BullMQ on the local Redis (and PostgreSQL when imgclass supports it);
# idle latency; memory. Prints a table and writes target/bench/results-{full,quick}.json (and
# one JSON per section under target/bench/{full,quick}/).
#
# Sizes can be overridden: BENCH_N_E2E, BENCH_N_QUEUE, BENCH_N_LATENCY, BENCH_E2E_CONCURRENCY,
# BENCH_QUEUE_CONCURRENCY, BENCH_BULLMQ_CONCURRENCY. BENCH_PG_URL (default
# postgres://postgres@127.0.0.1:5432) and BENCH_PG_DB (default imgclass_bench) for PostgreSQL;
# BENCH_SKIP_BUILD=1 uses the binaries already in target/release; BENCH_BIN_DIR=DIR uses
# DIR/imgclass and DIR/examples/raw instead and builds nothing (CI's smoke run uses the debug
# build of the tests, so that the harness is exercised without a release build: its figures
# are then not the product's).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD

MODE=full
for a in "$@"; do
  case "$a" in
    --quick) MODE=quick ;;
    -h|--help) sed -n '2,18p' "$0"; exit 0 ;;
    *) echo "bench/run.sh: unknown argument $a (try --quick)" >&2; exit 2 ;;
  esac
done

if [ "$MODE" = quick ]; then
  N_E2E=${BENCH_N_E2E:-20}; N_QUEUE=${BENCH_N_QUEUE:-500}; N_LATENCY=${BENCH_N_LATENCY:-20}
  QUEUE_WORKERS="2 8"; BATCH_WORKERS="32"; REPEAT=1
else
  N_E2E=${BENCH_N_E2E:-200}; N_QUEUE=${BENCH_N_QUEUE:-10000}; N_LATENCY=${BENCH_N_LATENCY:-100}
  QUEUE_WORKERS="2 8 32"; BATCH_WORKERS="32 0"; REPEAT=2
fi
# The batched rows: files per POST and POSTs in flight (BENCH_BATCH_FILES, BENCH_BATCH_IN_FLIGHT).
BATCH_FILES=${BENCH_BATCH_FILES:-50}
BATCH_IN_FLIGHT=${BENCH_BATCH_IN_FLIGHT:-4}
E2E_CONCURRENCY=${BENCH_E2E_CONCURRENCY:-8}
QUEUE_CONCURRENCY=${BENCH_QUEUE_CONCURRENCY:-64}
BULLMQ_CONCURRENCY=${BENCH_BULLMQ_CONCURRENCY:-50}
PG_URL=${BENCH_PG_URL:-postgres://postgres@127.0.0.1:5432}
PG_DB=${BENCH_PG_DB:-imgclass_bench}

OUT="$ROOT/target/bench"
SECTIONS="$OUT/$MODE"
VENV="$OUT/venv"
IMAGES="$OUT/images"
BIN_DIR="${BENCH_BIN_DIR:-$ROOT/target/release}"
BIN="$BIN_DIR/imgclass"
RAW="$BIN_DIR/examples/raw"
mkdir -p "$OUT"
rm -rf "$SECTIONS"
mkdir -p "$SECTIONS"
RUN=$(mktemp -d "${TMPDIR:-/tmp}/imgclass-bench.XXXXXX")
SHM_RUN=""

say() { printf '\033[1mbench:\033[0m %s\n' "$*" >&2; }
[ -n "${NO_COLOR:-}" ] && say() { printf 'bench: %s\n' "$*" >&2; }

# --- clean-up: every step runs in its own process group, killed by id on exit --------------
CURRENT_PGID=""
PG_CREATED=""
BULLMQ_QUEUE=""
cleanup() {
  local rc=$?
  trap - EXIT INT TERM
  if [ -n "$CURRENT_PGID" ] && kill -0 "$CURRENT_PGID" 2>/dev/null; then
    kill -TERM -- "-$CURRENT_PGID" 2>/dev/null || true
    sleep 1
    kill -KILL -- "-$CURRENT_PGID" 2>/dev/null || true
  fi
  if [ -n "$BULLMQ_QUEUE" ] && command -v redis-cli >/dev/null; then
    # The BullMQ step obliterates its queue itself; this catches a step that was killed.
    redis-cli -h 127.0.0.1 -p 6379 --scan --pattern "bull:$BULLMQ_QUEUE:*" 2>/dev/null |
      xargs -r -n 500 redis-cli -h 127.0.0.1 -p 6379 del >/dev/null 2>&1 || true
  fi
  if [ -n "$PG_CREATED" ]; then
    psql "$PG_URL/postgres" -qAt -c "DROP DATABASE IF EXISTS $PG_DB WITH (FORCE)" >/dev/null 2>&1 || true
  fi
  rm -rf "$RUN"
  [ -n "$SHM_RUN" ] && rm -rf "$SHM_RUN"
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# step TIMEOUT_SECONDS COMMAND...: runs COMMAND under `timeout` in a process group of its own
# (so that the trap can end it and everything it started), and returns its exit code.
set -m
step() {
  local limit=$1; shift
  timeout -k 10 "$limit" "$@" &
  CURRENT_PGID=$!
  local rc=0
  wait "$CURRENT_PGID" || rc=$?
  CURRENT_PGID=""
  [ "$rc" = 124 ] && say "timed out after ${limit}s: $*"
  return "$rc"
}

# --- prerequisites -------------------------------------------------------------------------
for tool in cargo node npm python3; do
  command -v "$tool" >/dev/null || { echo "bench/run.sh: needs $tool" >&2; exit 1; }
done
export ORT_DYLIB_PATH="${ORT_DYLIB_PATH:-$(scripts/setup-onnxruntime.sh)}"

# libjpeg-turbo's SIMD code is assembled with nasm (the classifier's `jpeg-simd` feature, which
# scripts/jpeg-simd.sh selects as run.sh and scripts/test.sh do); without nasm the build uses
# its C code paths, and the figures are slower for large JPEGs.
if [ -n "${BENCH_BIN_DIR:-}" ]; then
  say "using the binaries in $BENCH_BIN_DIR (not built here)"
elif [ "${BENCH_SKIP_BUILD:-0}" != 1 ]; then
  simd="$(scripts/jpeg-simd.sh bench/run.sh)"
  SIMD_NOTE=" (no nasm: libjpeg-turbo's C code paths)"
  [ -n "$simd" ] && SIMD_NOTE=" (JPEG SIMD: features $simd)"
  say "building (release): imgclass and the raw example$SIMD_NOTE"
  step 1800 cargo build --release --quiet -p imgclass ${simd:+--features "$simd"}
  step 1800 cargo build --release --quiet -p imgclass-classifier --example raw ${simd:+--features "$simd"}
fi
[ -x "$BIN" ] && [ -x "$RAW" ] || { echo "bench/run.sh: $BIN or $RAW is missing" >&2; exit 1; }

stamp_ok() { [ -f "$1" ] && [ "$(cat "$1")" = "$2" ]; }
req_sum=$(sha256sum bench/requirements.txt | cut -d' ' -f1)
if ! stamp_ok "$VENV/.bench-stamp" "$req_sum"; then
  say "creating $VENV (pip: $(grep -v '^#' bench/requirements.txt | tr '\n' ' '))"
  rm -rf "$VENV"
  python3 -m venv "$VENV"
  step 900 "$VENV/bin/pip" install --quiet --disable-pip-version-check -r bench/requirements.txt
  echo "$req_sum" >"$VENV/.bench-stamp"
fi
PY="$VENV/bin/python"

lock_sum=$(sha256sum bench/bullmq/package-lock.json | cut -d' ' -f1)
if ! stamp_ok bench/bullmq/node_modules/.bench-stamp "$lock_sum"; then
  say "installing bench/bullmq (npm ci)"
  step 600 npm ci --prefix bench/bullmq --no-audit --no-fund --loglevel=error >&2
  echo "$lock_sum" >bench/bullmq/node_modules/.bench-stamp
fi

step 300 "$PY" bench/make_images.py tests/fixtures "$IMAGES" >"$SECTIONS/images.tsv"
. bench/photos.sh
TINY="$IMAGES/tiny.png"

# --- the machine -----------------------------------------------------------------------------
redis_version=$(redis-cli -h 127.0.0.1 -p 6379 info server 2>/dev/null | sed -n 's/^redis_version:\([^[:space:]]*\).*/\1/p' || true)
redis_persistence=$(redis-cli -h 127.0.0.1 -p 6379 config get appendonly 2>/dev/null | tail -1 || true)
redis_save=$(redis-cli -h 127.0.0.1 -p 6379 config get save 2>/dev/null | tail -1 || true)
"$PY" - "$SECTIONS/machine.json" "$MODE" "$redis_version" "$redis_persistence" "$redis_save" "$RUN" <<'PY'
import json, os, platform, subprocess, sys, datetime, time
out, mode, redis, aof, save, run = sys.argv[1:7]

def fsync_ms(directory, n=200):
    # What one durable commit costs on the disk that holds the SQLite files: rewrite 4 KiB of a
    # file and fdatasync it (a WAL commit is an append plus an fsync, no cheaper than this).
    p = os.path.join(directory, "fsync-probe")
    fd = os.open(p, os.O_RDWR | os.O_CREAT, 0o600)
    os.write(fd, b"\0" * 65536); os.fsync(fd)
    t = []
    for i in range(n):
        t0 = time.perf_counter()
        os.pwrite(fd, os.urandom(4096), (i % 16) * 4096); os.fdatasync(fd)
        t.append((time.perf_counter() - t0) * 1e3)
    os.close(fd); os.unlink(p)
    return round(sorted(t)[n // 2], 3)

def append_fsync_ms(directory, n=100):
    # The same, appending to a growing file and fsync-ing it (the file's size changes, so the
    # file system commits its journal too): what a growing WAL costs.
    p = os.path.join(directory, "fsync-probe")
    fd = os.open(p, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    t = []
    for i in range(n):
        t0 = time.perf_counter()
        os.write(fd, os.urandom(4096)); os.fsync(fd)
        t.append((time.perf_counter() - t0) * 1e3)
    os.close(fd); os.unlink(p)
    return round(sorted(t)[n // 2], 3)

cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), "?")
mem = next((int(l.split()[1]) for l in open("/proc/meminfo") if l.startswith("MemTotal")), 0)
git = lambda *a: subprocess.run(["git", *a], capture_output=True, text=True).stdout.strip()
json.dump({
    "mode": mode,
    "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
    "cpu": cpu, "cores": os.cpu_count(), "mem_gib": round(mem / 1048576, 1),
    "kernel": platform.release(),
    "git": git("rev-parse", "--short", "HEAD") + ("+dirty" if git("status", "--porcelain", "--untracked-files=no") else ""),
    "loadavg_start": open("/proc/loadavg").read().split()[:3],
    "rustc": subprocess.run(["rustc", "--version"], capture_output=True, text=True).stdout.strip(),
    "node": subprocess.run(["node", "--version"], capture_output=True, text=True).stdout.strip(),
    "redis": redis or None, "redis_appendonly": aof or None, "redis_save": save,
    "fdatasync_ms_median": fsync_ms(run),
    "append_fsync_ms_median": append_fsync_ms(run),
}, open(out, "w"), indent=2)
PY
say "mode $MODE; load average $(cut -d' ' -f1-3 /proc/loadavg)"

# --- 2. the ceiling ----------------------------------------------------------------------------
say "ceiling: Python onnxruntime + Pillow, $N_E2E images"
step 900 "$PY" bench/ceiling.py --model "$MODEL" --n "$N_E2E" --repeat "$REPEAT" --modes 1x2,2proc,2thread --breakdown \
  --json "$SECTIONS/ceiling.json" "${PHOTOS[@]}"
say "ceiling: imgclass raw loop, $N_E2E images"
step 900 "$RAW" --n "$N_E2E" --repeat "$REPEAT" --mode both --breakdown --json "$SECTIONS/raw.json" "${PHOTOS[@]}"

# --- 1. end to end ------------------------------------------------------------------------------
say "end to end: $N_E2E photos over HTTP, $E2E_CONCURRENCY in flight"
step 1200 node bench/imgclass.mjs e2e --bin "$BIN" --tmp "$RUN" --out "$SECTIONS/e2e.json" \
  --n "$N_E2E" --concurrency "$E2E_CONCURRENCY" --repeat "$REPEAT" "${PHOTOS[@]}"

# The same photos to a server without the model (`--provider noop`, as many workers as `serve`
# gives the model): the service's own work per photo (upload, SHA-256, check, store, claim,
# finish, events), apart from the inference it feeds.
say "end to end without the model: $(( 5 * N_E2E )) photos to --provider noop, $E2E_CONCURRENCY in flight"
step 600 node bench/imgclass.mjs queue --bin "$BIN" --tmp "$RUN" --out "$SECTIONS/service-photos.json" \
  --n "$(( 5 * N_E2E ))" --concurrency "$E2E_CONCURRENCY" --workers "$(( 2 * $(nproc) ))" \
  --label "the photo mix, --provider noop" "${PHOTOS[@]}"

# --- 4. latency -----------------------------------------------------------------------------------
say "latency: $N_LATENCY sequential coffee.png jobs on an idle server"
step 600 node bench/imgclass.mjs latency --bin "$BIN" --tmp "$RUN" --out "$SECTIONS/latency.json" \
  --n "$N_LATENCY" tests/fixtures/coffee.png

# --- 3. queue overhead ----------------------------------------------------------------------------
say "queue: how fast the client can submit (null server)"
capacity_args=(--out "$SECTIONS/client-capacity.json" --n "$(( N_QUEUE > 5000 ? N_QUEUE : 5000 ))" --concurrency "$QUEUE_CONCURRENCY")
[ "$MODE" = full ] && capacity_args+=(--python "$PY")
step 300 node bench/imgclass.mjs capacity "${capacity_args[@]}" "$TINY"

for w in $QUEUE_WORKERS; do
  say "queue: imgclass --provider noop --workers $w, SQLite, $N_QUEUE jobs"
  step 900 node bench/imgclass.mjs queue --bin "$BIN" --tmp "$RUN" --out "$SECTIONS/queue-sqlite-w$w.json" \
    --n "$N_QUEUE" --concurrency "$QUEUE_CONCURRENCY" --workers "$w" --label "imgclass SQLite, --workers $w" "$TINY"
done
say "queue: the two halves apart: submit to --no-workers, then drain with --workers 8 (SQLite)"
step 900 node bench/imgclass.mjs phases --bin "$BIN" --tmp "$RUN" --out "$SECTIONS/phases-sqlite.json" \
  --n "$N_QUEUE" --concurrency "$QUEUE_CONCURRENCY" --workers 8 "$TINY"
if [ "$MODE" = full ] && [ -d /dev/shm ]; then
  # Diagnostic: the same with the database on tmpfs, where fsync costs nothing (the local
  # Redis does not persist either). Not a configuration to run: it loses everything on reboot.
  SHM_RUN=$(mktemp -d /dev/shm/imgclass-bench.XXXXXX)
  say "queue: imgclass --provider noop --workers 8, SQLite on tmpfs (no fsync cost)"
  step 900 node bench/imgclass.mjs queue --bin "$BIN" --tmp "$SHM_RUN" --out "$SECTIONS/queue-sqlite-tmpfs-w8.json" \
    --n "$N_QUEUE" --concurrency "$QUEUE_CONCURRENCY" --workers 8 --label "imgclass SQLite on tmpfs (diagnostic), --workers 8" "$TINY"
  rm -rf "$SHM_RUN"; SHM_RUN=""
  say "queue: imgclass --provider noop --workers 8, SQLite, end seen by polling /api/stats instead of SSE"
  step 900 node bench/imgclass.mjs queue --bin "$BIN" --tmp "$RUN" --out "$SECTIONS/queue-sqlite-stats-w8.json" --watch stats \
    --n "$N_QUEUE" --concurrency "$QUEUE_CONCURRENCY" --workers 8 --label "imgclass SQLite, --workers 8, no SSE client (polls /api/stats)" "$TINY"
fi

# Batched submissions: many files per POST (as the CLI, the page and integrators send them),
# beside BullMQ's addBulk below. Both halves of the comparison batch.
say "batched: how fast the client can submit $BATCH_FILES files per POST, $BATCH_IN_FLIGHT in flight (null server)"
step 300 node bench/imgclass.mjs capacity --out "$SECTIONS/batched-client-capacity.json" --n "$N_QUEUE" \
  --concurrency "$BATCH_IN_FLIGHT" --per-post "$BATCH_FILES" "$TINY"
for w in $BATCH_WORKERS; do
  wname=${w/#0/default}
  say "batched: imgclass --provider noop --workers $wname, SQLite, $N_QUEUE jobs, $BATCH_FILES files per POST"
  step 900 node bench/imgclass.mjs queue --bin "$BIN" --tmp "$RUN" --out "$SECTIONS/batched-sqlite-w$wname.json" \
    --n "$N_QUEUE" --concurrency "$BATCH_IN_FLIGHT" --per-post "$BATCH_FILES" --workers "$w" \
    --label "imgclass SQLite, --workers $wname, $BATCH_FILES files per POST" "$TINY"
done

# PostgreSQL, when imgclass accepts it and a server is there.
export PGOPTIONS="${PGOPTIONS:-} --client-min-messages=warning"
pg_status=""
if ! command -v psql >/dev/null; then
  pg_status="no psql on this machine"
elif ! psql "$PG_URL/postgres" -qAt -c "select 1" >/dev/null 2>&1; then
  pg_status="no PostgreSQL server at $PG_URL"
else
  psql "$PG_URL/postgres" -qAt -c "DROP DATABASE IF EXISTS $PG_DB WITH (FORCE)" >/dev/null
  psql "$PG_URL/postgres" -qAt -c "CREATE DATABASE $PG_DB" >/dev/null
  PG_CREATED=1
  if ! migrate_err=$("$BIN" migrate --database "$PG_URL/$PG_DB" 2>&1 >/dev/null); then
    pg_status="not available yet: $(echo "$migrate_err" | tail -1)"
  else
    for w in $QUEUE_WORKERS; do
      say "queue: imgclass --provider noop --workers $w, PostgreSQL, $N_QUEUE jobs"
      psql "$PG_URL/postgres" -qAt -c "DROP DATABASE IF EXISTS $PG_DB WITH (FORCE)" -c "CREATE DATABASE $PG_DB" >/dev/null
      step 900 node bench/imgclass.mjs queue --bin "$BIN" --database "$PG_URL/$PG_DB" --tmp "$RUN" \
        --out "$SECTIONS/queue-postgres-w$w.json" --n "$N_QUEUE" --concurrency "$QUEUE_CONCURRENCY" \
        --workers "$w" --label "imgclass PostgreSQL, --workers $w" "$TINY"
    done
    for w in $BATCH_WORKERS; do
      wname=${w/#0/default}
      say "batched: imgclass --provider noop --workers $wname, PostgreSQL, $N_QUEUE jobs, $BATCH_FILES files per POST"
      psql "$PG_URL/postgres" -qAt -c "DROP DATABASE IF EXISTS $PG_DB WITH (FORCE)" -c "CREATE DATABASE $PG_DB" >/dev/null
      step 900 node bench/imgclass.mjs queue --bin "$BIN" --database "$PG_URL/$PG_DB" --tmp "$RUN" \
        --out "$SECTIONS/batched-postgres-w$wname.json" --n "$N_QUEUE" --concurrency "$BATCH_IN_FLIGHT" \
        --per-post "$BATCH_FILES" --workers "$w" \
        --label "imgclass PostgreSQL, --workers $wname, $BATCH_FILES files per POST" "$TINY"
    done
  fi
  psql "$PG_URL/postgres" -qAt -c "DROP DATABASE IF EXISTS $PG_DB WITH (FORCE)" >/dev/null
  PG_CREATED=""
fi
[ -n "$pg_status" ] && say "postgres: $pg_status"
printf '{"section": "postgres", "status": %s}\n' "$("$PY" -c 'import json,sys; print(json.dumps(sys.argv[1] or "measured"))' "$pg_status")" \
  >"$SECTIONS/postgres.json"

# BullMQ on the local Redis.
if [ -z "$redis_version" ]; then
  say "bullmq: no Redis at 127.0.0.1:6379; skipped"
  echo '{"section": "bullmq", "status": "no Redis at 127.0.0.1:6379"}' >"$SECTIONS/bullmq-skipped.json"
else
  redis_pid=$(redis-cli -h 127.0.0.1 -p 6379 info server | sed -n 's/^process_id:\([0-9]*\).*/\1/p')
  bull_runs=("addBulk:$BULLMQ_CONCURRENCY" "add:$BULLMQ_CONCURRENCY")
  [ "$MODE" = full ] && bull_runs+=("add:200")
  for r in "${bull_runs[@]}"; do
    producer=${r%%:*}; conc=${r##*:}
    BULLMQ_QUEUE="imgclass-bench-$$-$producer-$conc-$(date +%s)"
    say "queue: BullMQ, $producer, worker concurrency $conc, $N_QUEUE jobs"
    step 600 node bench/bullmq/bench.mjs --queue "$BULLMQ_QUEUE" --out "$SECTIONS/bullmq-$producer-c$conc.json" \
      --n "$N_QUEUE" --concurrency "$conc" --producer "$producer" --in-flight "$QUEUE_CONCURRENCY" --redis-pid "${redis_pid:-0}"
    left=$(redis-cli -h 127.0.0.1 -p 6379 --scan --pattern "bull:$BULLMQ_QUEUE:*" | wc -l)
    [ "$left" = 0 ] || { say "bullmq: $left keys of $BULLMQ_QUEUE were left in Redis"; exit 1; }
    BULLMQ_QUEUE=""
  done
  # addBulk again on a Redis of its own that keeps its data in an append-only file synced every
  # second, as a durable deployment of BullMQ runs (the local Redis keeps nothing): imgclass's
  # commits survive a crash of the process, and so does that file.
  if ! command -v redis-server >/dev/null; then
    say "bullmq: no redis-server here to start a Redis with an append-only file; that row is skipped"
  else
    aof_port=$("$PY" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
    mkdir -p "$RUN/redis-aof"
    redis-server --port "$aof_port" --bind 127.0.0.1 --appendonly yes --appendfsync everysec --save "" \
      --dir "$RUN/redis-aof" --daemonize no >"$RUN/redis-aof/log" 2>&1 &
    aof_pid=$!
    for _ in $(seq 100); do redis-cli -p "$aof_port" ping >/dev/null 2>&1 && break; sleep 0.1; done
    say "queue: BullMQ, addBulk, worker concurrency $BULLMQ_CONCURRENCY, Redis with an append-only file"
    step 600 node bench/bullmq/bench.mjs --queue "imgclass-bench-$$-aof" --out "$SECTIONS/bullmq-addBulk-c$BULLMQ_CONCURRENCY-aof.json" \
      --n "$N_QUEUE" --concurrency "$BULLMQ_CONCURRENCY" --producer addBulk --port "$aof_port" --redis-pid "$aof_pid" \
      --appendonly yes --appendfsync everysec
    redis-cli -p "$aof_port" shutdown nosave >/dev/null 2>&1 || kill "$aof_pid" 2>/dev/null || true
    wait "$aof_pid" 2>/dev/null || true
  fi
fi

# --- side by side: the goal ratios, alternated ------------------------------------------------
# The rows above run minutes apart; on a machine whose speed drifts by more than the gaps they
# compare, their ratios measure the drift too. Here the compared rows run one after the other in
# each round (bench/image_ab.sh, bench/batched_ab.sh), and the table gives the medians of the
# rounds' ratios beside the single-run ones.
AB_ROUNDS=${BENCH_AB_ROUNDS:-$([ "$MODE" = full ] && echo 3 || echo 1)}
say "side by side: the image path, $AB_ROUNDS alternated rounds (end to end, raw loop, competent Python)"
step 1800 env BENCH_ROUNDS="$AB_ROUNDS" BENCH_N_E2E="$N_E2E" BENCH_BIN_DIR="$BIN_DIR" \
  BENCH_AB_OUT="$SECTIONS/ab-image" bash bench/image_ab.sh >"$SECTIONS/ab-image.txt"
if [ -n "$redis_version" ]; then
  say "side by side: batched submissions, $AB_ROUNDS alternated rounds (SQLite, PostgreSQL, BullMQ addBulk)"
  step 1800 env BENCH_ROUNDS="$AB_ROUNDS" BENCH_N_QUEUE="$N_QUEUE" BENCH_BIN="$BIN" BENCH_PG_URL="$PG_URL" \
    BENCH_BATCH_FILES="$BATCH_FILES" BENCH_BATCH_IN_FLIGHT="$BATCH_IN_FLIGHT" \
    BENCH_BULLMQ_CONCURRENCY="$BULLMQ_CONCURRENCY" BENCH_AB_OUT="$SECTIONS/ab-batched" \
    bash bench/batched_ab.sh >"$SECTIONS/ab-batched.txt"
fi

# --- the table ---------------------------------------------------------------------------------------
echo "$(cut -d' ' -f1-3 /proc/loadavg)" >"$SECTIONS/loadavg-end.txt"
"$PY" bench/report.py "$SECTIONS" "$OUT/results-$MODE.json"
