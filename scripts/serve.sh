#!/usr/bin/env bash
# Starts zerobatch with the default model (all-MiniLM-L6-v2) from a fresh clone: builds the
# release binary, fetches and verifies the model, and serves on $PORT (default 8080, so no
# root is needed; the container uses 80). `./scripts/serve.sh generate` serves the default
# text-generation model instead (SmolLM2-135M-Instruct Q4_1). Every other option can be set
# by its env var or passed as flags, e.g. `./scripts/serve.sh --workers 1`.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v cargo >/dev/null 2>&1; then
  echo "error: cargo is not installed; install Rust from https://rustup.rs" >&2
  exit 1
fi

cargo build --release --locked >&2
if [ "${1:-}" = generate ]; then
  # Text generation: SmolLM2-135M-Instruct (Q4_1 GGUF), fetched and verified.
  shift
  model_dir=$(scripts/fetch-model.sh --generation | tail -n 1)
else
  model_dir=$(scripts/fetch-model.sh | tail -n 1)
fi
export PORT="${PORT:-8080}"
export MODEL="${MODEL:-$model_dir}"
echo "serving $MODEL on http://localhost:$PORT (Ctrl-C to stop)" >&2
exec target/release/zerobatch "$@"
