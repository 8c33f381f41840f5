#!/usr/bin/env bash
# Side-by-side benchmark of two builds of zerobatch (before and after a change), in one run:
# the builds take turns in every round, so that the machine's drift hits both. Measures
#   - embeddings: POST /embed of the short text at concurrency 1 and 64 (oha), req/s and p50;
#   - generation: SmolLM2-135M-Instruct Q4_1, scripts/gen-load.py (64 streamed tokens, greedy,
#     EOS ignored) at concurrency 1 and 8, tokens/s and inter-token latency p50;
#   - queue drain: scripts/queue-load.sh with one replica on Redis, jobs/s;
# and prints one markdown table of the medians over the rounds, with the ratio new/old.
#
#   scripts/compare-builds.sh OLD_BINARY NEW_BINARY
#   ROUNDS=3 DURATION=10 JOBS=20000 scripts/compare-builds.sh /tmp/zerobatch-old target/release/zerobatch
#   SKIP_QUEUE=1 scripts/compare-builds.sh OLD NEW      # without the queue drain (no redis-server)
#
# Needs oha (scripts/loadtest.sh installs it), python3, curl, and for the drain redis-server.
# Run nothing else on the machine meanwhile: both builds use every core.
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
cd "$(dirname "$0")/.."

[ $# = 2 ] || { usage >&2; exit 2; }
old=$1
new=$2
for b in "$old" "$new"; do [ -x "$b" ] || die "$b is not an executable"; done
command -v oha >/dev/null 2>&1 || die "oha is not installed (cargo install oha --locked, or run scripts/loadtest.sh once)"
rounds="${ROUNDS:-3}"
duration="${DURATION:-10}"
jobs="${JOBS:-20000}"
embed_model=$(scripts/fetch-model.sh | tail -n 1)
gen_model=$(scripts/fetch-model.sh --generation | tail -n 1)

work=$(mktemp -d)
pid=""
cleanup() {
  [ -z "$pid" ] || kill -9 "$pid" 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }

# start BINARY MODEL: starts the server on $port and waits for /readyz.
start() {
  port=$(free_port)
  RUST_LOG=warn "$1" --host 127.0.0.1 --port "$port" --model "$2" --shutdown-delay-ms 0 \
    >>"$work/server.log" 2>&1 &
  pid=$!
  for _ in $(seq 3000); do
    curl -fs "http://127.0.0.1:$port/readyz" >/dev/null 2>&1 && return
    sleep 0.01
  done
  die "$1 did not become ready (log: $work/server.log)"
}

stop() {
  kill -9 "$pid" 2>/dev/null || true
  wait "$pid" 2>/dev/null || true
  pid=""
}

# record BUILD METRIC VALUE
record() { echo "$1,$2,$3" >>"$work/results.csv"; }

embed_body='{"inputs": "A man is eating food."}'
for round in $(seq "$rounds"); do
  for build in old new; do
    bin=$old
    [ "$build" = new ] && bin=$new
    log "round $round/$rounds: $build ($bin)"
    start "$bin" "$embed_model"
    for c in 1 64; do
      oha -z "${duration}s" -w -c "$c" --no-tui --output-format json -m POST \
        -H 'Content-Type: application/json' -d "$embed_body" "http://127.0.0.1:$port/embed" >"$work/oha.json"
      read -r rps p50 < <(python3 -c '
import json, sys
r = json.load(open(sys.argv[1]))
ok = r["statusCodeDistribution"].get("200", 0)
print(ok / r["summary"]["total"], r["latencyPercentiles"]["p50"] * 1e3)' "$work/oha.json")
      record "$build" "embed c=$c req/s" "$rps"
      record "$build" "embed c=$c p50 ms" "$p50"
    done
    stop
    start "$bin" "$gen_model"
    for c in 1 8; do
      python3 scripts/gen-load.py "http://127.0.0.1:$port" --concurrency "$c" --duration "$duration" --json >"$work/gen.json"
      read -r tps itl < <(python3 -c '
import json, sys
r = json.load(open(sys.argv[1]))
print(r["tokens_per_s"], r["itl_p50_ms"])' "$work/gen.json")
      record "$build" "generate c=$c tokens/s" "$tps"
      record "$build" "generate c=$c ITL p50 ms" "$itl"
    done
    stop
    if [ "${SKIP_QUEUE:-0}" != 1 ]; then
      row=$(BIN="$bin" REPLICAS=1 JOBS="$jobs" HTTP_DURATION=1s scripts/queue-load.sh 2>>"$work/queue.log" | grep '^| 1 |')
      record "$build" "queue drain jobs/s" "$(echo "$row" | awk -F'|' '{gsub(/ /, "", $5); print $5}')"
    fi
  done
done

echo "$(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //'); $rounds rounds of ${duration} s; medians"
python3 - "$work/results.csv" <<'PY'
import csv, statistics, sys
values = {}
for build, metric, value in csv.reader(open(sys.argv[1])):
    values.setdefault(metric, {}).setdefault(build, []).append(float(value))
print("| metric | old | new | new/old |\n|---|---:|---:|---:|")
for metric, by in values.items():
    o, n = statistics.median(by["old"]), statistics.median(by["new"])
    print(f"| {metric} | {o:.1f} | {n:.1f} | {n / o:.2f} |")
PY
