#!/usr/bin/env bash
# Runs each fuzz target of the upload path and the decoder briefly (cargo-fuzz + libFuzzer,
# AddressSanitizer); exits non-zero on the first crash, leak or timeout.
#   fuzz/run.sh                 # every target, 60 s each
#   FUZZ_SECONDS=600 fuzz/run.sh image_check
# Needs cargo-fuzz (`cargo install cargo-fuzz --locked`; FUZZ_INSTALL=1 installs it). cargo-fuzz
# passes unstable compiler flags (-Zsanitizer=address, coverage instrumentation): the stable
# compiler takes them with RUSTC_BOOTSTRAP=1 (it ships the sanitizer runtimes), so no nightly
# toolchain is needed. Seeds come from tests/fixtures and are generated here; crashes land in
# fuzz/artifacts/.
set -euo pipefail
cd "$(dirname "$0")"
seconds="${FUZZ_SECONDS:-60}"
targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=(part_headers upload_request image_check decode)

if ! cargo fuzz --version >/dev/null 2>&1; then
  if [ "${FUZZ_INSTALL:-}" = 1 ]; then
    cargo install cargo-fuzz --locked
  else
    echo "fuzz/run.sh: needs cargo-fuzz: cargo install cargo-fuzz --locked (or FUZZ_INSTALL=1)" >&2
    exit 1
  fi
fi
# The project's own (stable) compiler, allowed the -Z flags cargo-fuzz passes. FUZZ_TOOLCHAIN
# picks another (e.g. nightly).
if [ -n "${FUZZ_TOOLCHAIN:-}" ]; then
  fuzz=(cargo "+$FUZZ_TOOLCHAIN" fuzz)
else
  export RUSTC_BOOTSTRAP=1
  fuzz=(cargo fuzz)
fi
export ORT_DYLIB_PATH="${ORT_DYLIB_PATH:-$(../scripts/setup-onnxruntime.sh)}"

# Seed corpora (kept out of git): real images, multipart bodies around a small one, odd
# Content-Disposition values.
seed() {
  local dir=corpus/$1
  mkdir -p "$dir"
  case "$1" in
    image_check|decode)
      cp ../tests/fixtures/* "$dir"/
      ;;
    upload_request)
      python3 - "$dir" ../tests/fixtures/grace_hopper.jpg <<'PY'
import sys
out, image = sys.argv[1], open(sys.argv[2], "rb").read()
def part(headers, body):
    return b"--B\r\n" + headers + b"\r\n\r\n" + body + b"\r\n"
seeds = {
    "plain": part(b'Content-Disposition: form-data; name="file"; filename="a.jpg"', image),
    "ext": part(b"Content-Disposition: form-data; name=\"file\"; filename*=UTF-8''%E2%82%AC.jpg", image),
    "latin1": part(b'Content-Disposition: form-data; name="file"; filename="caf\xe9.jpg"', image),
    "typed": part(b'Content-Disposition: form-data; name="photo"\r\nContent-Type: image/jpeg', image),
    "field": part(b'Content-Disposition: form-data; name="note"', b"hello"),
}
for name, body in seeds.items():
    # First byte 0: multipart/form-data; boundary=B.
    open(f"{out}/{name}", "wb").write(b"\x00" + body + b"--B--\r\n")
open(f"{out}/raw", "wb").write(b"\x02" + image)
PY
      ;;
    part_headers)
      printf 'form-data; name="file"; filename="a.png"' >"$dir/plain"
      printf "form-data; name=file; filename*=UTF-8''%%E2%%82%%AC.png\nimage/png" >"$dir/ext"
      printf 'form-data; name="x"; filename="a;b \\"c\\".png"' >"$dir/quoted"
      printf 'form-data; name="photo"\nimage/jpeg' >"$dir/typed"
      ;;
  esac
}

for target in "${targets[@]}"; do
  seed "$target"
  echo "== fuzzing $target for ${seconds}s"
  "${fuzz[@]}" run "$target" "corpus/$target" -- \
    -max_total_time="$seconds" -max_len=300000 -timeout=10 -rss_limit_mb=4096 -print_final_stats=1
done
echo "fuzz/run.sh: no crash in ${targets[*]}"
