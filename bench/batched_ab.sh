#!/usr/bin/env bash
# The batched rows of bench/run.sh, alternated round by round: 10 000 no-op jobs, 50 files per
# POST, 4 POSTs in flight, to `imgclass serve --provider noop` with its default workers on SQLite
# and on PostgreSQL, and the same number of jobs through BullMQ's addBulk (one worker, concurrency
# 50, the local Redis). On a machine whose speed drifts by more than the gap being measured, rows
# run minutes apart compare the drift as much as the queues; here each round runs the three one
# after the other, and the medians over the rounds are compared.
#
#   bench/batched_ab.sh            # 5 rounds (BENCH_ROUNDS), after bench/run.sh has set things up
#
# bench/run.sh runs it too (3 rounds; 1 with --quick), for its side-by-side rows; BENCH_AB_OUT
# names the directory of the rounds' JSON (default target/bench/batched-ab); BENCH_BATCH_FILES,
# BENCH_BATCH_IN_FLIGHT and BENCH_BULLMQ_CONCURRENCY as for bench/run.sh.
#
# Needs what bench/run.sh installs: the release build (BENCH_BIN, default target/release/imgclass),
# bench/bullmq/node_modules and target/bench/images/tiny.png; Redis on 127.0.0.1:6379 and
# PostgreSQL at BENCH_PG_URL (the PostgreSQL rows are skipped without psql or a server).
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS=${BENCH_ROUNDS:-5}
N=${BENCH_N_QUEUE:-10000}
BIN=${BENCH_BIN:-target/release/imgclass}
TINY=target/bench/images/tiny.png
PG_URL=${BENCH_PG_URL:-postgres://postgres@127.0.0.1:5432}
PG_DB=imgclass_bench_ab
OUT=${BENCH_AB_OUT:-target/bench/batched-ab}
PER_POST=${BENCH_BATCH_FILES:-50}
IN_FLIGHT=${BENCH_BATCH_IN_FLIGHT:-4}
BULLMQ_CONCURRENCY=${BENCH_BULLMQ_CONCURRENCY:-50}
for need in "$BIN" "$TINY" bench/bullmq/node_modules; do
  [ -e "$need" ] || { echo "batched_ab: $need is missing; run bench/run.sh once first" >&2; exit 1; }
done
rm -rf "$OUT" && mkdir -p "$OUT"
tmp=$(mktemp -d)
pg=""
export PGOPTIONS="${PGOPTIONS:-} --client-min-messages=warning"
if command -v psql >/dev/null && psql "$PG_URL/postgres" -qAt -c "select 1" >/dev/null 2>&1; then
  pg=1
fi
queue="imgclass-ab-$$"
cleanup() {
  rm -rf "$tmp"
  [ -n "$pg" ] && psql "$PG_URL/postgres" -qAt -c "DROP DATABASE IF EXISTS $PG_DB WITH (FORCE)" >/dev/null 2>&1 || true
  redis-cli -h 127.0.0.1 -p 6379 --scan --pattern "bull:$queue-*" | xargs -r redis-cli -h 127.0.0.1 -p 6379 del >/dev/null 2>&1 || true
}
trap cleanup EXIT
batched=(--n "$N" --concurrency "$IN_FLIGHT" --per-post "$PER_POST")
for r in $(seq "$ROUNDS"); do
  echo "batched_ab: round $r of $ROUNDS" >&2
  node bench/imgclass.mjs queue --bin "$BIN" --tmp "$tmp/$r" --out "$OUT/sqlite-$r.json" "${batched[@]}" "$TINY" >&2
  if [ -n "$pg" ]; then
    psql "$PG_URL/postgres" -qAt -c "DROP DATABASE IF EXISTS $PG_DB WITH (FORCE)" -c "CREATE DATABASE $PG_DB" >/dev/null
    node bench/imgclass.mjs queue --bin "$BIN" --database "$PG_URL/$PG_DB" --tmp "$tmp/$r" \
      --out "$OUT/postgres-$r.json" "${batched[@]}" "$TINY" >&2
  fi
  node bench/bullmq/bench.mjs --queue "$queue-$r" --out "$OUT/bullmq-$r.json" --n "$N" --concurrency "$BULLMQ_CONCURRENCY" \
    --producer addBulk >&2
done
python3 - "$OUT" "$ROUNDS" <<'EOF'
import json, os, statistics, sys
out, rounds = sys.argv[1], int(sys.argv[2])
def rates(kind):
    files = [os.path.join(out, f"{kind}-{r}.json") for r in range(1, rounds + 1)]
    return [json.load(open(f))["per_s"] for f in files if os.path.exists(f)]
bull = rates("bullmq")
print(f"BullMQ addBulk: {' · '.join(f'{v:,.0f}' for v in bull)} jobs/s, median {statistics.median(bull):,.0f}")
for kind, name in (("sqlite", "SQLite"), ("postgres", "PostgreSQL")):
    v = rates(kind)
    if not v:
        continue
    per_round = [a / b for a, b in zip(v, bull)]
    print(f"imgclass {name}, default workers: {' · '.join(f'{x:,.0f}' for x in v)} jobs/s, median "
          f"{statistics.median(v):,.0f}; / BullMQ, median of the rounds' ratios "
          f"{statistics.median(per_round):.2f} (each round: {' · '.join(f'{x:.2f}' for x in per_round)})")
EOF
