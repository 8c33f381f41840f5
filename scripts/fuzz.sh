#!/usr/bin/env bash
# Builds the cargo-fuzz targets in fuzz/ and runs each in turn on one core, at low priority.
#
#   scripts/fuzz.sh                 # each target for 60 s
#   scripts/fuzz.sh 600             # each target for 600 s
#   scripts/fuzz.sh --smoke         # CI: each target for 15 s
#   scripts/fuzz.sh --asan 60       # with AddressSanitizer (slower build and runs)
#   FUZZ_TARGETS="tokenize" scripts/fuzz.sh 60
#
# The committed seeds (fuzz/corpus/<target>) are read, never written: what a run finds goes
# to fuzz/target/corpus/<target>, kept between runs; a crash is saved under
# fuzz/artifacts/<target>/ and makes the script exit non-zero. See fuzz/README.md.
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
cd "$(dirname "$0")/.."

seconds=60
sanitizer=none
# The AddressSanitizer build has its own target dir: switching flags in one rebuilds it all.
target_dir=fuzz/target
while [ $# -gt 0 ]; do
  case "$1" in
    --smoke) seconds=15 ;;
    --asan)
      sanitizer=address
      target_dir=fuzz/target/asan
      ;;
    -h | --help)
      usage
      exit 0
      ;;
    *[!0-9]* | '')
      echo "usage: $0 [--smoke] [--asan] [SECONDS]" >&2
      exit 2
      ;;
    *) seconds=$1 ;;
  esac
  shift
done

if ! command -v cargo >/dev/null 2>&1; then
  echo "error: cargo is not installed; install Rust from https://rustup.rs" >&2
  exit 1
fi

# cargo-fuzz passes nightly-only flags to rustc (-Zsanitizer, and it builds libFuzzer's
# coverage instrumentation with unstable options). Only the stable toolchain is installed here
# and no other can be fetched; RUSTC_BOOTSTRAP=1 lets the stable compiler accept them, which
# gives exactly what the nightly would.
export RUSTC_BOOTSTRAP=1

if ! cargo fuzz --version >/dev/null 2>&1; then
  echo "== installing cargo-fuzz"
  nice -n 15 cargo install cargo-fuzz --locked
fi

# libFuzzer flags of each target: its dictionary, and a bound on input size for the model files.
flags_for() {
  case "$1" in
    parse_request) echo "-dict=fuzz/dict/request.dict" ;;
    tokenize) echo "-max_len=4096" ;;
    model_load) echo "-dict=fuzz/dict/model.dict -max_len=65536" ;;
  esac
}

targets=${FUZZ_TARGETS:-parse_request tokenize model_load}

echo "== building the fuzz targets (sanitizer: $sanitizer)"
start=$(date +%s)
nice -n 15 cargo fuzz build -s "$sanitizer" --target-dir "$target_dir"
echo "build: $(($(date +%s) - start)) s"

status=0
for target in $targets; do
  echo "== $target: ${seconds} s"
  mkdir -p "fuzz/target/corpus/$target"
  # shellcheck disable=SC2046 # the flags are words
  if ! nice -n 15 cargo fuzz run -s "$sanitizer" --target-dir "$target_dir" "$target" \
    "fuzz/target/corpus/$target" "fuzz/corpus/$target" -- \
    -max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 -print_final_stats=1 \
    $(flags_for "$target"); then
    echo "error: $target failed; the reproducer is in fuzz/artifacts/$target/" >&2
    status=1
  fi
done
echo "total: $(($(date +%s) - start)) s"
exit "$status"
