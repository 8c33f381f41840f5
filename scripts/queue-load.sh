#!/usr/bin/env bash
# Queue drain benchmark: enqueues N short embedding jobs in a Redis stream (a redis-server
# started here on a free loopback port), then drains them with 1 replica process and, after
# enqueueing them again, with 2 replica processes, and prints the drain time and jobs/s of
# each run (docs/benchmarks.md, "Queue drain").
#
#   scripts/queue-load.sh                     # 100,000 jobs, models/all-MiniLM-L6-v2
#   JOBS=20000 TEXT="A man is eating food." scripts/queue-load.sh
#   PIN=1 scripts/queue-load.sh               # 2 replicas pinned to cores 0 and 1 (taskset)
#
# Needs redis-server and redis-cli (Redis >= 7) and python3; builds the release binary. The replicas use --workers 2 (one replica) and --workers 1
# each (two replicas), so both runs use the same two inference threads in all.
set -euo pipefail
cd "$(dirname "$0")/.."

jobs="${JOBS:-100000}"
text="${TEXT:-A man is eating food.}"
model="${MODEL_DIR:-models/all-MiniLM-L6-v2}"
bin=target/release/zerobatch

for tool in redis-server redis-cli python3; do
  command -v "$tool" >/dev/null 2>&1 || { echo "error: $tool is not installed (apt-get install redis-server python3)" >&2; exit 1; }
done
[ -f "$model/model.safetensors" ] || model=$(scripts/fetch-model.sh | tail -n 1)
cargo build --release --locked >&2

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }

work=$(mktemp -d)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

redis_port=$(free_port)
redis-server --port "$redis_port" --bind 127.0.0.1 --save "" --appendonly no >"$work/redis.log" 2>&1 &
pids+=($!)
r() { redis-cli -p "$redis_port" "$@"; }
for _ in $(seq 100); do r ping >/dev/null 2>&1 && break; sleep 0.05; done

# Writes the jobs in Redis's wire protocol and sends them in one pipe (seconds for 100,000).
enqueue() {
  JOBS="$jobs" TEXT="$text" RUN="$1" python3 - <<'PY' | r --pipe >/dev/null
import json, os, sys
out = sys.stdout.buffer
def bulk(b): return b"$%d\r\n%s\r\n" % (len(b), b)
for i in range(int(os.environ["JOBS"])):
    job = json.dumps({"id": f"{os.environ['RUN']}-{i}", "route": "/embed",
                      "body": {"inputs": os.environ["TEXT"]}}).encode()
    out.write(b"*5\r\n" + bulk(b"XADD") + bulk(b"jobs") + bulk(b"*") + bulk(b"job") + bulk(job))
PY
}

pending() { r xpending jobs zerobatch | head -n 1; }

# Starts $1 replicas, waits until the stream is drained and nothing is pending, prints a row.
drain() {
  local replicas=$1 workers=$(( 2 / $1 )) started ended port i
  local run_pids=()
  enqueue "r$replicas"
  [ "$(r xlen jobs)" = "$jobs" ] || { echo "error: enqueued $(r xlen jobs) of $jobs jobs" >&2; exit 1; }
  started=$(date +%s.%N)
  for i in $(seq "$replicas"); do
    port=$(free_port)
    local pin=()
    if [ "${PIN:-0}" = 1 ] && [ "$replicas" -gt 1 ]; then pin=(taskset -c $(( i - 1 ))); fi
    RUST_LOG=warn "${pin[@]}" "$bin" --host 127.0.0.1 --port "$port" --model "$model" \
      --workers "$workers" --queue "redis://127.0.0.1:$redis_port/jobs" \
      --shutdown-delay-ms 0 2>>"$work/replicas.log" &
    run_pids+=($!)
    pids+=($!)
  done
  while [ "$(r xlen jobs)" != 0 ] || [ "$(pending)" != 0 ]; do sleep 0.1; done
  ended=$(date +%s.%N)
  if [ "$replicas" = 1 ] && command -v oha >/dev/null 2>&1; then
    # The same replica's HTTP throughput right after, for the ratio (scripts/loadtest.sh's
    # measurement: concurrency 64, the same text).
    http_rps=$(oha -z "${HTTP_DURATION:-15s}" -w -c 64 --no-tui --output-format json -m POST \
      -H 'Content-Type: application/json' -d "{\"inputs\": $(TEXT="$text" python3 -c 'import json, os; print(json.dumps(os.environ["TEXT"]))')}" \
      "http://127.0.0.1:$port/embed" | python3 -c 'import json, sys; r = json.load(sys.stdin); print(round(r["statusCodeDistribution"].get("200", 0) / r["summary"]["total"]))')
  fi
  for p in "${run_pids[@]}"; do kill -TERM "$p"; wait "$p" || true; done
  python3 -c "
s, e, n, k = $started, $ended, $jobs, $replicas
print(f'| {k} | {n} | {e - s:.1f} | {n / (e - s):.0f} |')"
}

http_rps=""
echo "queue drain: $jobs jobs of \"$text\" on $(nproc) cores, redis $(redis-server --version | sed -n 's/.* v=\([^ ]*\).*/\1/p')"
printf '| replicas | jobs | drain s | jobs/s |\n|---:|---:|---:|---:|\n'
# Every job of the run has a result saying succeeded (checked on a sample of 1000).
check() {
  local bad
  bad=$(for i in $(seq 0 $(( jobs / 1000 > 0 ? jobs / 1000 : 1 )) $(( jobs - 1 ))); do
    r hget "jobs:job:$1-$i" state
  done | grep -vc '^succeeded$' || true)
  [ "$bad" = 0 ] || { echo "error: $bad sampled jobs of run $1 did not succeed" >&2; exit 1; }
}
drain 1
check r1
r flushall >/dev/null
drain 2
check r2
[ -z "$http_rps" ] || echo "HTTP /embed at concurrency 64 on the 1-replica process right after its drain: $http_rps req/s"
