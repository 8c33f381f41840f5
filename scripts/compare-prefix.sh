#!/usr/bin/env bash
# Prefix reuse (issue 18): long prompts that share a system prompt of some 1,500 tokens,
# each with its own question, against the same server with the prefix cache switched off
# (--prefix-cache-bytes 0), side by side in one run on SmolLM2-135M-Instruct Q4_1: time to
# first token at one stream and tokens/s at eight, measured by scripts/gen-load.py (64
# streamed tokens per request, greedy), the servers taking turns in every round so that
# drift hits both. With SYSTEMS=N, N different system prompts take turns request by request
# (a workload where one slot's last prompt is not enough). With LLAMA_SERVER set to a
# llama-server binary (scripts/build-llama-cpp.sh), llama.cpp runs the same workload too
# (8 slots, its cache_prompt on, as it is by default; --no-repack where the CPU has AMX).
# ZB_ARGS adds options to the server with the cache on (e.g. a larger --prefix-cache-bytes
# when SYSTEMS prompts do not fit the default).
#
#   scripts/compare-prefix.sh [BINARY]          # default target/release/zerobatch
#   ROUNDS=3 DURATION=20 SYSTEMS=4 LLAMA_SERVER=target/llama-cpp/bin/llama-server \
#     scripts/compare-prefix.sh
#
# Run nothing else on the machine meanwhile.
set -euo pipefail
cd "$(dirname "$0")/.."

rounds="${ROUNDS:-3}"
duration="${DURATION:-20}"
systems="${SYSTEMS:-1}"
llama_server="${LLAMA_SERVER:-}"
binary="${1:-target/release/zerobatch}"
[ -x "$binary" ] || { echo "error: $binary is not an executable (cargo build --release)" >&2; exit 1; }
[ -z "$llama_server" ] || [ -x "$llama_server" ] || { echo "error: LLAMA_SERVER=$llama_server is not an executable" >&2; exit 1; }
model=$(scripts/fetch-model.sh --generation | tail -n 1)
work=$(mktemp -d)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  rm -rf "$work"
}
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
wait_up() { # wait_up URL PID LOG: until URL answers 200
  for _ in $(seq 1200); do
    curl -sf "$1" >/dev/null 2>&1 && return 0
    kill -0 "$2" 2>/dev/null || { cat "$3" >&2; exit 1; }
    sleep 0.1
  done
  echo "error: $1 did not come up" >&2
  exit 1
}

# The prompts: system prompt k (k = request number mod SYSTEMS), then question j.
python3 - "$systems" >"$work/prompts.json" <<'PY'
import json, random, sys
systems = int(sys.argv[1])
subjects = ["loans", "opening hours", "events", "the reading room", "printing", "the archive",
            "membership", "donations", "the children's corner", "accessibility"]
def system(k):
    rng = random.Random(k)
    lines = [f"You are assistant number {k} of the city library. Follow every rule below.\n"]
    for i in range(1, 51):
        a, b = rng.sample(subjects, 2)
        lines.append(f"Rule {i}: when asked about {a}, mention {b} only if shelf "
                     f"{rng.randint(1, 400)} is open, and keep the answer under {rng.randint(2, 9)} sentences.\n")
    return "".join(lines)
questions = [f"\nVisitor {j}: what should I know about {subjects[j % len(subjects)]} "
             f"on day {j}?\nAssistant:" for j in range(64)]
print(json.dumps([system(j % systems) + questions[j] for j in range(64)]))
PY

# Waits until process PID has used no CPU for a second: a run's leftover requests (the load
# generator's last ones, still being prefilled) must not slow the next server's run.
wait_idle() {
  local before after
  for _ in $(seq 300); do
    before=$(awk '{ print $14 + $15 }' "/proc/$1/stat")
    sleep 1
    after=$(awk '{ print $14 + $15 }' "/proc/$1/stat")
    [ $((after - before)) -le 5 ] && return 0
  done
}

declare -A url pid
start_zerobatch() { # start_zerobatch NAME ARGS...: sets url[NAME]
  local name="$1" port
  shift
  port=$(free_port)
  # A long wait for a place in the batch is the load's doing, not an error to count: both
  # servers wait up to two minutes (the default answers 503 after 30 s).
  "$binary" --port "$port" --model "$model" --request-timeout-ms 120000 "$@" >"$work/$name.log" 2>&1 &
  pids+=($!)
  pid[$name]=$!
  wait_up "http://127.0.0.1:$port/readyz" "$!" "$work/$name.log"
  url[$name]="http://127.0.0.1:$port"
}
start_zerobatch off --prefix-cache-bytes 0
# shellcheck disable=SC2086 # ZB_ARGS is a list of options
start_zerobatch on ${ZB_ARGS:-}
servers=(off on)
if [ -n "$llama_server" ]; then
  port=$(free_port)
  extra=()
  if grep -q amx_tile /proc/cpuinfo; then extra+=(--no-repack); fi
  "$llama_server" -m "$model" --port "$port" -np 8 -c 32768 -t 2 "${extra[@]}" >"$work/llama.log" 2>&1 &
  pids+=($!)
  pid[llama]=$!
  wait_up "http://127.0.0.1:$port/health" "$!" "$work/llama.log"
  url[llama]="http://127.0.0.1:$port"
  servers+=(llama)
fi
tokens=$(curl -sf "${url[on]}/tokenize" -H 'content-type: application/json' \
  -d "$(python3 -c 'import json,sys; print(json.dumps({"inputs": json.load(open(sys.argv[1]))[0]}))' "$work/prompts.json")" |
  python3 -c 'import json,sys; print(len(json.load(sys.stdin)[0]))')

for round in $(seq "$rounds"); do
  for c in 1 8; do
    for s in "${servers[@]}"; do
      python3 scripts/gen-load.py "${url[$s]}" --concurrency "$c" --duration "$duration" --warmup 8 \
        --prompts "$work/prompts.json" --json |
        python3 -c "import json,sys; d=json.load(sys.stdin); print('$s', $c, $round, d['tokens_per_s'], d['ttft_p50_ms'], d['errors'])" | tee -a "$work/runs"
      wait_idle "${pid[$s]}"
    done
  done
done
curl -sf "${url[on]}/metrics" >"$work/metrics"

python3 - "$work/runs" "$work/metrics" "$tokens" "$systems" "$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)" <<'PY'
import re, statistics, sys
runs, metrics, tokens, systems, cpu = sys.argv[1:6]
by, errs = {}, {}
for line in open(runs):
    s, c, _, tps, ttft, errors = line.split()
    by.setdefault((s, int(c)), []).append((float(tps), float(ttft)))
    errs[(s, int(c))] = errs.get((s, int(c)), 0) + int(errors)
names = {"off": "zerobatch, prefix cache off", "on": "zerobatch, prefix cache on",
         "llama": "llama.cpp (cache_prompt)"}
print(f"CPU: {cpu}; prompts of {tokens} tokens, {systems} system prompt(s) taking turns\n")
print("| server | c=1 TTFT p50 ms | c=1 tokens/s | c=8 TTFT p50 ms | c=8 tokens/s | errors |")
print("|---|---:|---:|---:|---:|---:|")
med = {}
for s in ["off", "on", "llama"]:
    if (s, 1) not in by:
        continue
    row = []
    for c in (1, 8):
        tps = statistics.median(t for t, _ in by[(s, c)])
        ttft = statistics.median(f for _, f in by[(s, c)])
        med[(s, c)] = (tps, ttft)
        row += [f"{ttft:.0f}", f"{tps:.1f}"]
    row.append(str(errs[(s, 1)] + errs[(s, 8)]))
    print(f"| {names[s]} | " + " | ".join(row) + " |")
def ratio(a, b):
    return f"{a / b:.2f}x" if b and a == a and b == b else "n/a"
print(f"\nwith the cache: c=1 TTFT {ratio(med[('off', 1)][1], med[('on', 1)][1])} lower, "
      f"c=8 tokens/s {ratio(med[('on', 8)][0], med[('off', 8)][0])}")
hit = miss = 0.0
for line in open(metrics):
    m = re.match(r'zerobatch_prefix_cache_tokens_total\{result="(hit|miss)"\} (\S+)', line)
    if m:
        hit, miss = (float(m[2]), miss) if m[1] == "hit" else (hit, float(m[2]))
if hit + miss:
    print(f"prompt tokens restored from the cache: {hit / (hit + miss):.1%}")
PY
