#!/usr/bin/env bash
# Side-by-side generation benchmark: zerobatch against llama.cpp's llama-server, on the same
# GGUF (SmolLM2-135M-Instruct Q4_1), measured by the same streaming client
# (scripts/gen-load.py: prompt "Once upon a time", 64 new tokens (MAX_TOKENS), EOS ignored, greedy) in one
# run, the two servers taking turns at each concurrency so that machine drift hits both.
#
#   scripts/compare-generation.sh                  # writes docs/bench-data/generation.csv
#   ROUNDS=3 DURATION=15 CONCURRENCY="1 8 16 32" OUT=/tmp/gen.csv scripts/compare-generation.sh
#   MODEL=/tmp/qwen3-0.6b-q4_k_m.gguf BEFORE=/tmp/zerobatch-old \
#     SYSTEMS="zerobatch zerobatch-before llama.cpp" scripts/compare-generation.sh
#
# MODEL: another GGUF (e.g. one of scripts/make-shaped-gguf.py's files of real shapes);
# SYSTEMS: which servers take turns (default "zerobatch llama.cpp"); "zerobatch-before" runs
# the binary BEFORE (another build, for a before/after in the same run); ZB_ARGS: extra flags
# for zerobatch; MAX_TOKENS: new tokens per request (default 64; longer outputs make each step
# read a longer KV cache, as an agent's answers do). On a CPU with AMX llama-server runs with --no-repack (its AMX path crashes in
# b11434 built with GGML_NATIVE).
#
# Each measurement starts a fresh server process (so its peak RSS belongs to that
# concurrency) and records how long it took from exec to ready (/readyz or /health 200).
# llama-server runs as the issue specifies: -t 2 --parallel 32 -c 8192. Its build comes from
# scripts/build-llama-cpp.sh (once, a few minutes). Then draw the plots:
#   scripts/plot-benchmarks.py --generation docs/bench-data/generation.csv --prefix generation-
set -euo pipefail
cd "$(dirname "$0")/.."

rounds="${ROUNDS:-3}"
duration="${DURATION:-15}"
concurrency="${CONCURRENCY:-1 8 16 32}"
max_tokens="${MAX_TOKENS:-64}"
out="${OUT:-docs/bench-data/generation.csv}"
port=18700

model="${MODEL:-$(scripts/fetch-model.sh --generation | tail -n 1)}"
systems="${SYSTEMS:-zerobatch llama.cpp}"
read -r -a zb_args <<<"${ZB_ARGS:-}"
llama_extra=()
if grep -q amx_tile /proc/cpuinfo; then llama_extra+=(--no-repack); fi
scripts/build-llama-cpp.sh >&2
cargo build --release --locked >&2
llama=target/llama-cpp/bin/llama-server

# start_server NAME: starts it on $port, sets $pid and $ready_ms (exec to ready).
start_server() {
  local name="$1" start probe
  start=$(date +%s%N)
  case "$name" in
    zerobatch)
      PORT=$port SHUTDOWN_DELAY_MS=0 "${CARGO_TARGET_DIR:-target}/release/zerobatch" --model "$model" "${zb_args[@]}" >/tmp/compare-zerobatch.log 2>&1 &
      probe=/readyz ;;
    zerobatch-before)
      PORT=$port SHUTDOWN_DELAY_MS=0 "${BEFORE:?BEFORE names the other build}" --model "$model" "${zb_args[@]}" >/tmp/compare-zerobatch-before.log 2>&1 &
      probe=/readyz ;;
    llama.cpp)
      "$llama" -m "$model" -t 2 --parallel 32 -c 8192 "${llama_extra[@]}" --host 127.0.0.1 --port $port --metrics >/tmp/compare-llama.log 2>&1 &
      probe=/health ;;
  esac
  pid=$!
  for _ in $(seq 3000); do
    if curl -fs "http://127.0.0.1:$port$probe" >/dev/null 2>&1; then
      ready_ms=$(( ($(date +%s%N) - start) / 1000000 ))
      return
    fi
    sleep 0.002
  done
  echo "error: $name did not become ready" >&2
  exit 1
}

stop_server() {
  kill -9 "$pid" 2>/dev/null || true
  wait "$pid" 2>/dev/null || true
  port=$((port + 1))
}

machine="$(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //')"
echo "round,system,concurrency,tokens_per_s,ttft_p50_ms,ttft_p99_ms,itl_p50_ms,itl_p99_ms,requests,errors,peak_rss_mb,ready_ms" >"$out.raw"
for round in $(seq "$rounds"); do
  for c in $concurrency; do
    for system in $systems; do
      start_server "$system"
      result=$(python3 scripts/gen-load.py "http://127.0.0.1:$port" --concurrency "$c" --duration "$duration" --max-tokens "$max_tokens" --pid "$pid" --json)
      stop_server
      echo "$result" | python3 -c '
import json, sys
r = json.load(sys.stdin)
round_, system, ready = sys.argv[1:4]
cols = ["concurrency", "tokens_per_s", "ttft_p50_ms", "ttft_p99_ms", "itl_p50_ms", "itl_p99_ms", "requests", "errors", "peak_rss_mb"]
print(",".join([round_, system] + [str(round(r[c], 2)) if isinstance(r[c], float) else str(r[c]) for c in cols] + [ready]))
' "$round" "$system" "$ready_ms" >>"$out.raw"
      echo "round $round, $system, c=$c: $(tail -n 1 "$out.raw")" >&2
    done
  done
done

# Medians over the rounds, one row per system and concurrency, in the plot script's columns.
python3 - "$out.raw" "$out" "$machine" "$(basename "$model")" "$max_tokens" <<'EOF'
import csv, statistics, sys
raw, out, machine, model, max_tokens = sys.argv[1:6]
rows = list(csv.DictReader(open(raw)))
keys = []
for r in rows:
    k = (r["system"], int(r["concurrency"]))
    if k not in keys:
        keys.append(k)
metrics = ["tokens_per_s", "ttft_p50_ms", "ttft_p99_ms", "itl_p50_ms", "itl_p99_ms", "peak_rss_mb", "ready_ms"]
with open(out, "w", newline="") as f:
    w = csv.writer(f)
    w.writerow(["input", "system", "concurrency"] + metrics + ["rounds", "errors", "machine"])
    for system, c in keys:
        sel = [r for r in rows if r["system"] == system and int(r["concurrency"]) == c]
        med = [round(statistics.median(float(r[m]) for r in sel), 2) for m in metrics]
        errors = sum(int(r["errors"]) for r in sel)
        w.writerow([f"{model}: Once upon a time, {max_tokens} new tokens", system, c] + med + [len(sel), errors, machine])
print(open(out).read())
EOF
