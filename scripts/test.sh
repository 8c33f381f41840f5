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

# ---- Python clients (tests/python_clients.rs) ----
# The real huggingface_hub and openai clients run against the server from a venv under
# target/ (scripts/test-venv.sh; built once, reused). Without the venv that test skips, and a
# skipped client test is how a client-compatibility regression would slip through CI, so a
# venv that cannot be built fails this script (Python 3 with pip is needed above already)
# unless ZEROBATCH_SKIP_PYTHON_CLIENTS=1 says to run without it knowingly.
if test_python=$(scripts/test-venv.sh | tail -n 1); then
  export ZEROBATCH_TEST_PYTHON="$test_python"
elif [ "${ZEROBATCH_SKIP_PYTHON_CLIENTS:-}" = 1 ]; then
  echo "WARNING: no Python test venv: tests/python_clients.rs will be SKIPPED (ZEROBATCH_SKIP_PYTHON_CLIENTS=1)" >&2
else
  echo "WARNING: could not build the Python test venv (see above); set ZEROBATCH_SKIP_PYTHON_CLIENTS=1 to run the tests without the client test" >&2
  exit 1
fi
# ---- end Python clients ----

cargo test --locked --all-targets "$@"
