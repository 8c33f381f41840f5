#!/usr/bin/env bash
# Starts zerobatch with the default model (all-MiniLM-L6-v2) from a fresh clone: builds the
# release binary, fetches and verifies the model, and serves on $PORT (default 8080, so no
# root is needed; the container uses 80). `./scripts/serve.sh generate` serves the default
# text-generation model instead (SmolLM2-135M-Instruct Q4_1). Every other option can be set
# by its env var or passed as flags, e.g. `./scripts/serve.sh --workers 1`.
#
# Ctrl-C does not stop the server at once: it first keeps serving for the shutdown delay
# (--shutdown-delay-ms, SHUTDOWN_DELAY_MS), the time a load balancer needs to stop routing to
# a replica, as on Azure Container Apps. The script says so when it starts; on a laptop, skip
# the wait with `SHUTDOWN_DELAY_MS=0 ./scripts/serve.sh`, or press Ctrl-C a second time.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v cargo >/dev/null 2>&1; then
  echo "error: cargo is not installed; install Rust from https://rustup.rs" >&2
  exit 1
fi

cargo build --release --locked >&2
task=""
if [ "${1:-}" = generate ]; then
  # Text generation: SmolLM2-135M-Instruct (Q4_1 GGUF), fetched and verified.
  task=" generate"
  shift
  model_dir=$(scripts/fetch-model.sh --generation | tail -n 1)
else
  model_dir=$(scripts/fetch-model.sh | tail -n 1)
fi
export PORT="${PORT:-8080}"
# Where cargo put the binary (CARGO_TARGET_DIR moves it).
bin="${CARGO_TARGET_DIR:-target}/release/zerobatch"
export MODEL="${MODEL:-$model_dir}"

# The shutdown delay this start will have: a --shutdown-delay-ms flag, else SHUTDOWN_DELAY_MS,
# else the binary's default (from its --help, so that this never disagrees with it).
shutdown_delay_ms="${SHUTDOWN_DELAY_MS:-}"
previous=""
for arg in "$@"; do
  case "$previous/$arg" in
    --shutdown-delay-ms/*) shutdown_delay_ms="$arg" ;;
    */--shutdown-delay-ms=*) shutdown_delay_ms="${arg#*=}" ;;
  esac
  previous="$arg"
done
if [ -z "$shutdown_delay_ms" ]; then
  shutdown_delay_ms=$("$bin" --help \
    | sed -n 's/.*\[env: SHUTDOWN_DELAY_MS=\] \[default: \([0-9]*\)\].*/\1/p') || true
fi

echo "serving $MODEL on http://localhost:$PORT (Ctrl-C to stop)" >&2
case "$shutdown_delay_ms" in
  '' | *[!0]*)
    echo "note: Ctrl-C first keeps serving for the shutdown delay (${shutdown_delay_ms:+$shutdown_delay_ms ms, }--shutdown-delay-ms) so that a load balancer, as on Azure Container Apps, can stop routing here; to stop at once press Ctrl-C again, or start with SHUTDOWN_DELAY_MS=0 ./scripts/serve.sh$task" >&2
    ;;
esac
exec "$bin" "$@"
