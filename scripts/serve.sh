#!/usr/bin/env bash
# Starts zerobatch with the default model (all-MiniLM-L6-v2) from a fresh clone: builds the
# release binary, fetches and verifies the model, and serves on $PORT (default 8080, so no
# root is needed; the container uses 80). Every other option can be set by its env var or
# passed as flags, e.g. `./scripts/serve.sh --workers 1`.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v cargo >/dev/null 2>&1; then
  echo "error: cargo is not installed; install Rust from https://rustup.rs" >&2
  exit 1
fi

cargo build --release --locked >&2
model_dir=$(scripts/fetch-model.sh | tail -n 1)
export PORT="${PORT:-8080}"
export MODEL="${MODEL:-$model_dir}"
echo "serving $MODEL on http://localhost:$PORT (Ctrl-C to stop)" >&2
exec target/release/zerobatch "$@"
