#!/usr/bin/env bash
# Runs the whole test suite from a fresh clone: fetches and verifies the default model
# (all-MiniLM-L6-v2, for the reference test), then runs every test.
#
#   ./scripts/test.sh            # all tests
#   ./scripts/test.sh -- NAME    # extra arguments go to `cargo test`
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v cargo >/dev/null 2>&1; then
  echo "error: cargo is not installed; install Rust from https://rustup.rs" >&2
  exit 1
fi

# tests/manifests.rs runs shellcheck on scripts/; install it where we can.
if ! command -v shellcheck >/dev/null 2>&1 && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
  (apt-get update -qq && apt-get install -y -qq shellcheck >/dev/null) ||
    echo "warning: could not install shellcheck; tests/manifests.rs will say so" >&2
fi

model_dir=$(scripts/fetch-model.sh | tail -n 1)
export ZEROBATCH_MODEL_DIR="$model_dir"

cargo test --locked --all-targets "$@"
