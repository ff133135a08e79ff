#!/usr/bin/env bash
# End-to-end tests of the web page: builds imgclass, starts it, drives a headless Chromium.
# Usage: tests/e2e/run.sh [extra node --test arguments]
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/../.." && pwd)"
chromium="${CHROMIUM:-/usr/bin/chromium}"

if [ ! -x "$chromium" ]; then
  echo "e2e: $chromium is missing; install it with:" >&2
  echo "  apt-get update && apt-get install -y chromium" >&2
  exit 1
fi

if [ ! -d "$here/node_modules/playwright-core" ]; then
  (cd "$here" && npm ci --no-audit --no-fund)
fi

cd "$root"
if [ -z "${IMGCLASS_BIN:-}" ]; then
  cargo build -p imgclass
fi

mkdir -p target/e2e
# The test files, expanded by the shell (node versions differ in how they read a directory).
exec node --test "$@" tests/e2e/*.test.mjs
