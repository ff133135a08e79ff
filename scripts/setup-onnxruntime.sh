#!/usr/bin/env bash
# Puts the ONNX Runtime shared library that imgclass loads at run time into imgclass's cache
# (the place the binary looks by itself), and prints its path.
#
# The library comes from the official `onnxruntime` wheel on PyPI, fetched with pip at a pinned
# version for a pinned platform tag (so the same file whatever the local Python version), and is
# accepted only if the wheel's and the library's sha256 match the values below.
# Idempotent: does nothing when the library is already in place and verified.
set -euo pipefail

ORT_VERSION=1.32.0
WHEEL=onnxruntime-1.32.0-cp311-cp311-manylinux_2_28_x86_64.whl
WHEEL_SHA256=5a34fc4dfeb5a7b4a74c95dcba1e773d722abda720b474edf1b0c419dc6d163d
LIB=libonnxruntime.so.1.32.0
LIB_SHA256=6c1585d1bbf45b0712ea4a21b705c5fcb4ba04ff2e30f1fbf81a49faf658638f

if [ "$(uname -s)-$(uname -m)" != "Linux-x86_64" ]; then
  echo "setup-onnxruntime: only Linux x86_64 is pinned here; set ORT_DYLIB_PATH to an ONNX Runtime $ORT_VERSION library for $(uname -s)-$(uname -m)" >&2
  exit 1
fi

if [ -n "${IMGCLASS_CACHE_DIR:-}" ]; then cache="$IMGCLASS_CACHE_DIR"
elif [ -n "${XDG_CACHE_HOME:-}" ]; then cache="$XDG_CACHE_HOME/imgclass"
else cache="$HOME/.cache/imgclass"; fi
dest="$cache/onnxruntime-$ORT_VERSION"
target="$dest/$LIB"

sha() { sha256sum "$1" | cut -d' ' -f1; }

if [ -f "$target" ] && [ "$(sha "$target")" = "$LIB_SHA256" ]; then
  echo "$target"
  exit 0
fi

python=${PYTHON:-python3}
command -v "$python" >/dev/null || { echo "setup-onnxruntime: needs python3 with pip" >&2; exit 1; }

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
echo "setup-onnxruntime: fetching onnxruntime $ORT_VERSION with pip..." >&2
"$python" -m pip download --quiet --no-deps --only-binary=:all: \
  --python-version 3.11 --platform manylinux_2_28_x86_64 \
  "onnxruntime==$ORT_VERSION" -d "$work" >&2
[ -f "$work/$WHEEL" ] || { echo "setup-onnxruntime: pip did not produce $WHEEL" >&2; ls "$work" >&2; exit 1; }
got=$(sha "$work/$WHEEL")
if [ "$got" != "$WHEEL_SHA256" ]; then
  echo "setup-onnxruntime: sha256 mismatch for $WHEEL: got $got, want $WHEEL_SHA256" >&2
  exit 1
fi
"$python" - "$work/$WHEEL" "onnxruntime/capi/$LIB" "$work/$LIB" <<'PY'
import sys, zipfile
with zipfile.ZipFile(sys.argv[1]) as z, open(sys.argv[3], "wb") as out:
    out.write(z.read(sys.argv[2]))
PY
got=$(sha "$work/$LIB")
if [ "$got" != "$LIB_SHA256" ]; then
  echo "setup-onnxruntime: sha256 mismatch for $LIB: got $got, want $LIB_SHA256" >&2
  exit 1
fi
mkdir -p "$dest"
mv "$work/$LIB" "$target.tmp" && mv "$target.tmp" "$target"
echo "setup-onnxruntime: installed $target (sha256 verified)" >&2
echo "$target"
