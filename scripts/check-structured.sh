#!/usr/bin/env bash
# check-structured.sh: structured outputs checked end to end, outside cargo test: builds the
# server and the test venv (scripts/test-venv.sh: jsonschema, openai, pydantic), starts the
# server on each model in turn and runs tests/clients/check_structured.py against it (32 JSON
# schemas greedy and sampled over chat, completions and /generate, every output validated with
# jsonschema; regexes, choice, Lark, json_object, streaming, invalid grammars, the openai SDK's
# chat.completions.parse). Exits non-zero if any check failed.
#
# Usage:
#   scripts/check-structured.sh            # the tiny random Qwen2 GGUF, then SmolLM2
#   MODELS=tiny scripts/check-structured.sh
#   MODELS=smollm2 scripts/check-structured.sh
#
# The tiny model is committed (tests/data/gguf/tiny-qwen2-f32.gguf); SmolLM2 comes from
# scripts/fetch-model.sh --generation. tests/structured_outputs.rs runs the same checks
# under cargo test.
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
cd "$(dirname "$0")/.."

models="${MODELS:-tiny smollm2}"
port="${PORT:-18740}"
python=$(scripts/test-venv.sh | tail -n 1)
cargo build --release --locked --bin zerobatch >&2
bin="${CARGO_TARGET_DIR:-target}/release/zerobatch"

status=0
for m in $models; do
    case "$m" in
        tiny) model=tests/data/gguf/tiny-qwen2-f32.gguf; args=(--small) ;;
        smollm2) model=$(scripts/fetch-model.sh --generation | tail -n 1); args=() ;;
        *) die "unknown model $m (tiny or smollm2)" ;;
    esac
    log "$m: $model"
    RUST_LOG=warn "$bin" --host 127.0.0.1 --port "$port" --model "$model" &
    pid=$!
    for _ in $(seq 120); do
        curl -sf "http://127.0.0.1:$port/readyz" >/dev/null 2>&1 && break
        kill -0 "$pid" 2>/dev/null || die "the server on $m exited"
        sleep 0.5
    done
    "$python" tests/clients/check_structured.py "http://127.0.0.1:$port" "${args[@]}" || status=1
    kill "$pid"
    wait "$pid" || true
    port=$((port + 1))
done
exit "$status"
