#!/usr/bin/env bash
# Side-by-side load test of zerobatch's dtypes and kernel paths against the Python baseline
# (FastAPI + sentence-transformers) and, when given, Hugging Face TEI: one server at a time,
# the same oha load for each, in one run. Writes a CSV for scripts/plot-benchmarks.py and
# prints it as a Markdown table.
#
#   scripts/compare-dtypes.sh [OUT.csv]     # default docs/bench-data/dtypes.csv
#
# Environment:
#   DURATION        oha duration per point (default 10s)
#   CONCURRENCY     (default "1 64")
#   INPUTS          short and/or passage (default "short passage"; see scripts/loadtest.sh)
#   SYSTEMS         which rows to run (default: all of f32 bf16 int8 f32@avx2 bf16@avx2
#                   int8@avx2 f32@scalar bf16@scalar int8@scalar fastapi tei); a zerobatch
#                   row is DTYPE[@CAP]
#   MODEL_DIR       default models/all-MiniLM-L6-v2 (scripts/fetch-model.sh)
#   BASELINE_PYTHON the baseline venv's python (scripts/baseline-venv.sh); row skipped if unset
#                   and /tmp/refvenv/bin/python is missing
#   TEI_BIN         text-embeddings-router binary; the TEI row is skipped without it
#
# Peak RSS is the server's VmHWM after both concurrencies of an input (a fresh server per
# input), so the two rows of an input share it. Needs a release build (cargo build --release)
# and oha. Run it on an otherwise idle machine.
set -euo pipefail
cd "$(dirname "$0")/.."

out="${1:-docs/bench-data/dtypes.csv}"
duration="${DURATION:-10s}"
concurrency="${CONCURRENCY:-1 64}"
inputs="${INPUTS:-short passage}"
systems="${SYSTEMS:-f32 bf16 int8 f32@avx2 bf16@avx2 int8@avx2 f32@scalar bf16@scalar int8@scalar fastapi tei}"
model_dir="${MODEL_DIR:-models/all-MiniLM-L6-v2}"
baseline_python="${BASELINE_PYTHON:-/tmp/refvenv/bin/python}"
port=18190
bin=target/release/zerobatch

[ -x "$bin" ] || { echo "error: $bin missing: cargo build --release" >&2; exit 1; }
command -v oha >/dev/null || { echo "error: oha missing: cargo install oha --locked" >&2; exit 1; }
mkdir -p "$(dirname "$out")"

passage="The quick brown fox jumps over the lazy dog while the committee debated the budget for next year's infrastructure projects, including bridges, tunnels and a new light-rail line. "
text_of() {
  case "$1" in
    short) printf '%s' "A man is eating food." ;;
    passage) printf '%s' "$passage$passage$passage" ;;
  esac
}
label_of() {
  case "$1" in
    short) echo "8 tokens" ;;
    passage) echo "107 tokens" ;;
  esac
}

pid=""
stop() {
  if [ -n "$pid" ]; then
    kill "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
    pid=""
  fi
}
trap stop EXIT

wait_up() {
  for _ in $(seq 600); do
    if curl -fsS "$1" >/dev/null 2>&1; then return 0; fi
    if ! kill -0 "$pid" 2>/dev/null; then return 1; fi
    sleep 0.1
  done
  return 1
}

# Starts one system on $port; sets $pid and $name; returns 1 when it cannot run here.
start() {
  local system=$1
  case "$system" in
    fastapi)
      [ -x "$baseline_python" ] || return 1
      name="FastAPI + sentence-transformers"
      HF_HUB_OFFLINE=1 "$baseline_python" scripts/baseline-fastapi.py --model-dir "$model_dir" \
        --port "$port" >/tmp/compare-server.log 2>&1 &
      pid=$!
      wait_up "http://127.0.0.1:$port/health"
      ;;
    tei)
      [ -n "${TEI_BIN:-}" ] && [ -x "${TEI_BIN:-}" ] || return 1
      name="TEI"
      "$TEI_BIN" --model-id "$model_dir" --port "$port" >/tmp/compare-server.log 2>&1 &
      pid=$!
      wait_up "http://127.0.0.1:$port/health"
      ;;
    *)
      local dtype=${system%@*} cap=""
      [ "$system" != "$dtype" ] && cap=${system#*@}
      local args=(--model "$model_dir" --host 127.0.0.1 --port "$port" --dtype "$dtype")
      [ -n "$cap" ] && args+=(--kernel-cap "$cap")
      "$bin" "${args[@]}" >/tmp/compare-server.log 2>&1 &
      pid=$!
      wait_up "http://127.0.0.1:$port/readyz"
      local info
      info=$(curl -fsS "http://127.0.0.1:$port/info")
      # Uncapped f32 layers are gemm and the AVX2 kernels, not a kernel path: no path named.
      name="zerobatch $(INFO="$info" CAP="$cap" python3 -c 'import json, os; i = json.loads(os.environ["INFO"]); print(i["dtype"] if i["dtype"] == "f32" and not os.environ["CAP"] else i["dtype"] + " " + i["kernel"])')"
      ;;
  esac
}

echo "input,system,concurrency,req_per_s,p50_ms,p99_ms,peak_rss_mb" >"$out"
for input in $inputs; do
  body=$(TEXT="$(text_of "$input")" python3 -c 'import json, os; print(json.dumps({"inputs": os.environ["TEXT"]}))')
  for system in $systems; do
    if ! start "$system"; then
      echo "skipping $system (not available here)" >&2
      stop
      continue
    fi
    # One warm-up second, not measured.
    oha -z 1s -c 4 --no-tui -m POST -H 'Content-Type: application/json' -d "$body" \
      "http://127.0.0.1:$port/embed" >/dev/null
    rows=()
    for c in $concurrency; do
      json=$(oha -z "$duration" -w -c "$c" --no-tui --output-format json -m POST \
        -H 'Content-Type: application/json' -d "$body" "http://127.0.0.1:$port/embed")
      rows+=("$c $(OHA="$json" python3 -c '
import json, os
r = json.loads(os.environ["OHA"])
ok = r.get("statusCodeDistribution", {}).get("200", 0)
p = r["latencyPercentiles"]
rps = ok / r["summary"]["total"]
print("%.1f %.2f %.2f" % (rps, p["p50"] * 1e3, p["p99"] * 1e3))')")
    done
    rss=$(awk '/VmHWM/ {printf "%.0f", $2 / 1024}' "/proc/$pid/status")
    for row in "${rows[@]}"; do
      read -r c rps p50 p99 <<<"$row"
      echo "$(label_of "$input"),$name,$c,$rps,$p50,$p99,$rss" | tee -a "$out"
    done
    stop
  done
done
echo "wrote $out" >&2
