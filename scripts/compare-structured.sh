#!/usr/bin/env bash
# The cost of structured outputs (issue 18): generation with a JSON schema against the same
# generation unconstrained, side by side in one run on one server (SmolLM2-135M-Instruct
# Q4_1), measured by scripts/gen-load.py (prompt "Once upon a time", 64 streamed tokens,
# greedy) at each concurrency, the two taking turns in every round so that drift hits both.
# The schema's string needs at least 400 characters, so every constrained request also runs
# its 64 tokens under the mask. Then reads the server's own histograms: the mask time per
# token (zerobatch_grammar_mask_seconds, p50/p99 from the buckets) and the first compile.
#
#   scripts/compare-structured.sh [BINARY]          # default target/release/zerobatch
#   ROUNDS=3 DURATION=15 CONCURRENCY="1 8" scripts/compare-structured.sh
#
# Run nothing else on the machine meanwhile.
set -euo pipefail
cd "$(dirname "$0")/.."

rounds="${ROUNDS:-3}"
duration="${DURATION:-15}"
concurrency="${CONCURRENCY:-1 8}"
binary="${1:-target/release/zerobatch}"
[ -x "$binary" ] || { echo "error: $binary is not an executable (cargo build --release)" >&2; exit 1; }
model=$(scripts/fetch-model.sh --generation | tail -n 1)
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
url="http://127.0.0.1:$port"
work=$(mktemp -d)
pid=""
cleanup() {
  [ -z "$pid" ] || kill "$pid" 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

schema='{"type":"object","properties":{"title":{"type":"string","maxLength":60},"story":{"type":"string","minLength":400}},"required":["title","story"]}'
extra="{\"response_format\":{\"type\":\"json_schema\",\"json_schema\":{\"name\":\"story\",\"schema\":$schema}}}"

"$binary" --port "$port" --model "$model" >"$work/server.log" 2>&1 &
pid=$!
for _ in $(seq 600); do
  curl -sf "$url/readyz" >/dev/null 2>&1 && break
  kill -0 "$pid" 2>/dev/null || { cat "$work/server.log" >&2; exit 1; }
  sleep 0.1
done

# The first compile of the schema, timed by the client (a one-token request).
start=$(date +%s%N)
curl -sf "$url/v1/completions" -H 'content-type: application/json' \
  -d "{\"prompt\":\"x\",\"max_tokens\":1,$(echo "$extra" | sed 's/^{//; s/}$//')}" >/dev/null
first_ms=$(( ($(date +%s%N) - start) / 1000000 ))

for round in $(seq "$rounds"); do
  for c in $concurrency; do
    for mode in plain schema; do
      args=(--concurrency "$c" --duration "$duration" --json)
      [ "$mode" = schema ] && args+=(--extra "$extra")
      python3 scripts/gen-load.py "$url" "${args[@]}" |
        python3 -c "import json,sys; d=json.load(sys.stdin); print('$mode', $c, $round, d['tokens_per_s'], d['errors'])" >>"$work/runs"
    done
  done
done

curl -sf "$url/metrics" >"$work/metrics"
python3 - "$work/runs" "$work/metrics" "$first_ms" "$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)" <<'PY'
import re, statistics, sys
runs, metrics, first_ms, cpu = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4]
by = {}
for line in open(runs):
    mode, c, _, tps, errors = line.split()
    if int(errors):
        sys.exit(f"{mode} c={c}: {errors} errors")
    by.setdefault((mode, int(c)), []).append(float(tps))
print(f"CPU: {cpu}\n")
print("| concurrency | unconstrained tokens/s | JSON schema tokens/s | ratio |")
print("|---|---:|---:|---:|")
for c in sorted({c for _, c in by}):
    p, s = statistics.median(by[("plain", c)]), statistics.median(by[("schema", c)])
    print(f"| {c} | {p:.0f} | {s:.0f} | {s / p:.2f} |")
buckets, count, comp = [], 0, {}
for line in open(metrics):
    m = re.match(r'zerobatch_grammar_mask_seconds_bucket\{le="([^"]+)"\} (\S+)', line)
    if m:
        buckets.append((float("inf") if m[1] == "+Inf" else float(m[1]), float(m[2])))
    m = re.match(r'zerobatch_grammar_compile_seconds_(sum|count) (\S+)', line)
    if m:
        comp[m[1]] = float(m[2])
buckets.sort()
total = buckets[-1][1] if buckets else 0
def quantile(q):
    for le, n in buckets:
        if n >= q * total:
            return le
print(f"\nmask time per token (server histogram, {total:.0f} masks): p50 <= {quantile(0.5) * 1e3:.3f} ms, "
      f"p99 <= {quantile(0.99) * 1e3:.3f} ms")
if comp.get("count"):
    print(f"compile: {comp['count']:.0f} compiled, {comp['sum'] / comp['count'] * 1e3:.1f} ms mean; "
          f"first schema request (1 token, client-timed): {first_ms} ms")
PY
