#!/usr/bin/env bash
# Drives a running zerobatch with oha (installed with cargo if missing) and prints, for each
# concurrency, requests/s, p50 and p99 latency, errors, and the mean batch size the server
# formed (read from /metrics before and after).
#
#   scripts/loadtest.sh [URL]                 # default http://127.0.0.1:8080
#   DURATION=15s CONCURRENCY="1 8 32 64" TEXT="A man is eating food." scripts/loadtest.sh URL
#   INPUT=passage scripts/loadtest.sh URL      # the 107-token retrieval chunk instead
#   INPUT=short (default): "A man is eating food." (8 tokens with [CLS]/[SEP])
#   API_KEY=... scripts/loadtest.sh URL        # when the server has an API key
#   MODE=generate scripts/loadtest.sh URL      # a generation server: streamed completions of
#       "Once upon a time", 64 new tokens, EOS ignored, at CONCURRENCY (default "1 8 16 32"):
#       generated tokens/s, time to first token and inter-token latency p50/p99, peak RSS
#       (with PID=<server pid>), by scripts/gen-load.py (a streaming client: oha times whole
#       responses only). scripts/compare-generation.sh runs it beside llama.cpp.
#
# Only point it at servers you run (loopback or your own test hosts).
set -euo pipefail

url="${1:-http://127.0.0.1:8080}"

if [ "${MODE:-embed}" = generate ]; then
  seconds="${DURATION:-15}"
  seconds="${seconds%s}"
  pid_args=()
  if [ -n "${PID:-}" ]; then
    pid_args=(--pid "$PID")
  fi
  key_args=()
  if [ -n "${API_KEY:-}" ]; then
    key_args=(--api-key "$API_KEY")
  fi
  printf '| concurrency | tokens/s | TTFT p50 ms | TTFT p99 ms | ITL p50 ms | ITL p99 ms | requests | errors | peak RSS MB |\n|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n'
  for c in ${CONCURRENCY:-1 8 16 32}; do
    python3 "$(dirname "$0")/gen-load.py" "$url" --concurrency "$c" --duration "$seconds" \
      "${pid_args[@]}" "${key_args[@]}" --markdown-row
  done
  exit 0
fi

duration="${DURATION:-15s}"
concurrency="${CONCURRENCY:-1 8 32 64}"
# The 107-token body (MiniLM tokens, with [CLS]/[SEP]): a typical retrieval chunk, the
# sentence three times (tests/data/minilm_reference.json: document/retrieval_chunk_107).
passage="The quick brown fox jumps over the lazy dog while the committee debated the budget for next year's infrastructure projects, including bridges, tunnels and a new light-rail line. "
case "${INPUT:-short}" in
  short) default_text="A man is eating food." ;;
  passage) default_text="$passage$passage$passage" ;;
  *) echo "error: INPUT must be short or passage, not ${INPUT}" >&2; exit 2 ;;
esac
text="${TEXT:-$default_text}"

if ! command -v oha >/dev/null 2>&1; then
  echo "installing oha (cargo install oha --locked)..." >&2
  cargo install oha --locked >&2
  export PATH="$HOME/.cargo/bin:$PATH"
fi

auth=()
if [ -n "${API_KEY:-}" ]; then
  auth=(-H "Authorization: Bearer $API_KEY")
fi

body=$(TEXT="$text" python3 -c 'import json, os; print(json.dumps({"inputs": os.environ["TEXT"]}))')

# Prints "sum count" of zerobatch_batch_size.
batch_stats() {
  curl -fsS "${auth[@]}" "$url/metrics" | awk '
    /^zerobatch_batch_size_sum/ {s=$2} /^zerobatch_batch_size_count/ {c=$2}
    END {printf "%s %s\n", (s==""?0:s), (c==""?0:c)}'
}

curl -fsS "$url/readyz" >/dev/null || { echo "error: $url/readyz is not 200: is the server up and ready?" >&2; exit 1; }

printf '| concurrency | req/s | p50 ms | p99 ms | errors | mean batch |\n|---:|---:|---:|---:|---:|---:|\n'
for c in $concurrency; do
  read -r s0 n0 < <(batch_stats)
  out=$(oha -z "$duration" -w -c "$c" --no-tui --output-format json -m POST \
    -H 'Content-Type: application/json' "${auth[@]}" -d "$body" "$url/embed")
  read -r s1 n1 < <(batch_stats)
  OHA="$out" S0="$s0" N0="$n0" S1="$s1" N1="$n1" C="$c" python3 - <<'PY'
import json, os
r = json.loads(os.environ["OHA"])
summary = r["summary"]
pct = r.get("latencyPercentiles", {})
codes = r.get("statusCodeDistribution", {})
ok = codes.get("200", 0)
errors = sum(v for k, v in codes.items() if k != "200") + sum(r.get("errorDistribution", {}).values())
batches = float(os.environ["N1"]) - float(os.environ["N0"])
inputs = float(os.environ["S1"]) - float(os.environ["S0"])
mean_batch = inputs / batches if batches > 0 else float("nan")
rps = ok / summary["total"] if summary.get("total") else summary["requestsPerSec"]
print(f'| {os.environ["C"]} | {rps:.0f} | {pct["p50"]*1e3:.2f} | {pct["p99"]*1e3:.2f} | {errors} | {mean_batch:.1f} |')
PY
done
