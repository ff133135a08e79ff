#!/usr/bin/env bash
# Decides whether this build gets libjpeg-turbo's SIMD code, and prints the cargo feature that
# turns it on (`imgclass-classifier/jpeg-simd`), or nothing. Used by run.sh, scripts/test.sh and
# .ci/run, so that they all build with the same features:
#   simd="$(scripts/jpeg-simd.sh run.sh)"; cargo build ${simd:+--features "$simd"}
#
# On x86 the SIMD code is assembled with nasm at build time. When nasm is missing and this runs
# as root on a machine with apt-get (Debian, Ubuntu), it installs Debian's nasm package, saying
# so. Otherwise it says on stderr, before anything is built, what the build loses and how to get
# it back, and prints nothing: the build uses libjpeg-turbo's C code (large JPEGs decode about
# 1.5 times slower). Once nasm is there the next build has the feature, hence other features
# than the build without it, so cargo builds libjpeg-turbo again (with SIMD) instead of reusing
# the C build.
#   IMGCLASS_JPEG_SIMD=0  never (the C code; no install, no warning)
#   IMGCLASS_JPEG_SIMD=1  always: fails here when nasm is missing and cannot be installed
#   unset or auto         as above
set -euo pipefail

who="${1:-jpeg-simd.sh}"
mode="${IMGCLASS_JPEG_SIMD:-auto}"
feature=imgclass-classifier/jpeg-simd

case "$mode" in
  0) exit 0 ;;
  1 | auto) ;;
  *) echo "$who: IMGCLASS_JPEG_SIMD must be 0, 1 or auto, not '$mode'" >&2; exit 2 ;;
esac

case "$(uname -m)" in
  x86_64 | amd64 | i?86) ;;
  # ARM's SIMD code is built with the C compiler's assembler: nothing to install.
  aarch64 | arm64) echo "$feature"; exit 0 ;;
  # libjpeg-turbo has no SIMD code that mozjpeg-sys builds for other processors.
  *) exit 0 ;;
esac

# mozjpeg-sys runs `nasm -v` and takes any version but 0.x.
nasm_ok() { command -v nasm >/dev/null && ! nasm -v 2>/dev/null | grep -q 'NASM version 0\.'; }

if ! nasm_ok && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
  echo "$who: installing nasm (Debian package) for libjpeg-turbo's SIMD code" >&2
  export DEBIAN_FRONTEND=noninteractive
  # Without package lists (a fresh container) the first try fails: fetch them, then again.
  apt-get install -y -qq nasm >/dev/null 2>&1 ||
    { apt-get update -qq >/dev/null 2>&1 && apt-get install -y -qq nasm >/dev/null 2>&1; } ||
    echo "$who: apt-get install nasm failed" >&2
fi

if nasm_ok; then
  echo "$feature"
  exit 0
fi

if [ "$mode" = 1 ]; then
  echo "$who: IMGCLASS_JPEG_SIMD=1, but nasm is not installed" >&2
  exit 1
fi
cat >&2 <<EOF
$who: ================================================================================
$who: WARNING: nasm is not installed, so libjpeg-turbo is built WITHOUT its SIMD code.
$who: JPEGs decode about 1.5 times slower (a 12 MP photo: ~25 ms instead of ~17 ms), and
$who: classifying is ~10 % slower end to end.
$who: To get the fast build, install nasm and run this again (the next build uses it):
$who:   Debian/Ubuntu: sudo apt-get install nasm   Fedora: sudo dnf install nasm
$who:   macOS: brew install nasm                   (IMGCLASS_JPEG_SIMD=0 hides this warning)
$who: ================================================================================
EOF
