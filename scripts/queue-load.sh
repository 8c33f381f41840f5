#!/usr/bin/env bash
# Queue drain benchmark: enqueues N short embedding jobs in a Redis stream (a redis-server
# started here on a free loopback port), or with --azure in an Azure storage queue (Azurite,
# Microsoft's emulator, started here), then drains them with 1 replica process and, after
# enqueueing them again, with 2 replica processes, and prints the drain time and jobs/s of
# each run (docs/benchmarks.md, "Queue drain").
#
#   scripts/queue-load.sh                     # 100,000 jobs, models/all-MiniLM-L6-v2
#   JOBS=20000 TEXT="A man is eating food." scripts/queue-load.sh
#   PIN=1 scripts/queue-load.sh               # 2 replicas pinned to cores 0 and 1 (taskset)
#   JOBS=20000 scripts/queue-load.sh --azure  # Azure Storage Queues on Azurite
#   REPLICAS=1 BIN=/tmp/zerobatch scripts/queue-load.sh
#                                             # one run, 1 replica, of another build
#   SWEEP="64 128 256 512" JOBS=40000 scripts/queue-load.sh
#                                             # 1 replica per --queue-max-jobs value, side by
#                                             # side in one run, each with its HTTP ratio
#
# Needs python3, and redis-server and redis-cli (Redis >= 7), or with --azure npm (Azurite,
# via scripts/fetch-azurite.sh) and the Python Azure SDK (azure-storage-queue and
# azure-storage-blob, pinned, in a venv under target/ made here) as the producer. Builds the
# release binary. The replicas use --workers 2 (one replica) and --workers 1 each (two
# replicas), so both runs use the same two inference threads in all.
set -euo pipefail
cd "$(dirname "$0")/.."

broker=redis
if [ "${1:-}" = --azure ]; then broker=azure; fi

jobs="${JOBS:-100000}"
text="${TEXT:-A man is eating food.}"
model="${MODEL_DIR:-models/all-MiniLM-L6-v2}"
# BIN: another build to measure (scripts/compare-builds.sh); by default the release build,
# built here.
bin="${BIN:-target/release/zerobatch}"

if [ "$broker" = redis ]; then needed=(redis-server redis-cli python3); else needed=(npm python3); fi
for tool in "${needed[@]}"; do
  command -v "$tool" >/dev/null 2>&1 || { echo "error: $tool is not installed (apt-get install redis-server npm python3)" >&2; exit 1; }
done
[ -f "$model/model.safetensors" ] || model=$(scripts/fetch-model.sh | tail -n 1)
[ -n "${BIN:-}" ] || cargo build --release --locked >&2

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }

work=$(mktemp -d)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

if [ "$broker" = redis ]; then
  redis_port=$(free_port)
  redis-server --port "$redis_port" --bind 127.0.0.1 --save "" --appendonly no >"$work/redis.log" 2>&1 &
  pids+=($!)
  r() { redis-cli -p "$redis_port" "$@"; }
  for _ in $(seq 100); do r ping >/dev/null 2>&1 && break; sleep 0.05; done
  queue_url="redis://127.0.0.1:$redis_port/jobs"
  broker_version="redis $(redis-server --version | sed -n 's/.* v=\([^ ]*\).*/\1/p')"
else
  azurite=$(scripts/fetch-azurite.sh | tail -n 1)
  venv=target/queue-load-venv
  if ! "$venv/bin/python" -c 'import azure.storage.queue, azure.storage.blob' 2>/dev/null; then
    python3 -m venv "$venv"
    "$venv/bin/pip" install -q --disable-pip-version-check azure-storage-queue==12.18.1 azure-storage-blob==12.28.0
  fi
  queue_port=$(free_port)
  blob_port=$(free_port)
  "$azurite" --silent --inMemoryPersistence --disableTelemetry --skipApiVersionCheck \
    --blobHost 127.0.0.1 --queueHost 127.0.0.1 --blobPort "$blob_port" --queuePort "$queue_port" \
    --tablePort "$(free_port)" >"$work/azurite.log" 2>&1 &
  pids+=($!)
  # Azurite's development account and its published key.
  export AZURE_STORAGE_KEY='Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=='
  account=devstoreaccount1
  export AZ_CONN="DefaultEndpointsProtocol=http;AccountName=$account;AccountKey=$AZURE_STORAGE_KEY;QueueEndpoint=http://127.0.0.1:$queue_port/$account;BlobEndpoint=http://127.0.0.1:$blob_port/$account;"
  queue_url="azure-queue://$account/jobs?endpoint=http://127.0.0.1:$queue_port/$account&blob_endpoint=http://127.0.0.1:$blob_port/$account"
  broker_version="azurite $("$azurite" --version 2>/dev/null | tail -n 1)"
  for _ in $(seq 200); do (exec 3<>"/dev/tcp/127.0.0.1/$queue_port") 2>/dev/null && break; sleep 0.05; done
  # The producer and the checks, with the Python Azure SDK (what a user's producer would use).
  az() {
    "$venv/bin/python" - "$@" <<'PY'
import json, os, sys
from concurrent.futures import ThreadPoolExecutor
from azure.storage.queue import QueueClient
from azure.storage.blob import ContainerClient
conn, (cmd, *args) = os.environ["AZ_CONN"], sys.argv[1:]
queue = QueueClient.from_connection_string(conn, "jobs")
if cmd == "enqueue":  # RUN: N jobs of TEXT with ids RUN-i
    try:
        queue.create_queue()
    except Exception:
        pass
    run, n, text = args[0], int(os.environ["JOBS"]), os.environ["TEXT"]
    def send(i):
        queue.send_message(json.dumps({"id": f"{run}-{i}", "route": "/embed", "body": {"inputs": text}}))
    with ThreadPoolExecutor(32) as pool:
        list(pool.map(send, range(n)))
elif cmd == "count":  # messages not yet deleted (hidden ones included)
    try:
        print(queue.get_queue_properties().approximate_message_count)
    except Exception:
        print(0)
elif cmd == "check":  # RUN: how many of a sample of 1000 records are not succeeded
    run, n = args[0], int(os.environ["JOBS"])
    records = ContainerClient.from_connection_string(conn, "jobs")
    step = max(n // 1000, 1)
    bad = sum(json.loads(records.download_blob(f"jobs/{run}-{i}.json").readall())["state"] != "succeeded"
              for i in range(0, n, step))
    print(bad)
PY
  }
fi

# Writes the jobs in Redis's wire protocol and sends them in one pipe (seconds for 100,000).
enqueue_redis() {
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

enqueue() {
  if [ "$broker" = redis ]; then enqueue_redis "$1"; else JOBS="$jobs" TEXT="$text" az enqueue "$1"; fi
}

# Jobs not yet answered: in the stream or pending (Redis); not yet deleted (Azure).
remaining() {
  if [ "$broker" = redis ]; then
    local held
    held=$(r xpending jobs zerobatch | head -n 1)
    case "$held" in ''|*[!0-9]*) held=0 ;; esac # no group before the first replica reads
    echo $(( $(r xlen jobs) + held ))
  else
    az count
  fi
}

# Returns once no job is left. Redis: one Python process on one connection asks every 10 ms
# (a few microseconds of CPU each), so the measuring does not take CPU from the replicas, as a
# loop of redis-cli processes would (several percent of a core). Azure: every 0.5 s.
wait_drained() {
  if [ "$broker" = azure ]; then
    while [ "$(remaining)" != 0 ]; do sleep 0.5; done
    return
  fi
  REDIS_PORT="$redis_port" python3 - <<'PY'
import os, socket, time
conn = socket.create_connection(("127.0.0.1", int(os.environ["REDIS_PORT"])))
reader = conn.makefile("rb")
def reply():
    line = reader.readline()
    kind, rest = line[:1], line[1:].strip()
    if kind == b":":
        return int(rest)
    if kind == b"-":
        return None  # NOGROUP: no replica has read yet
    if kind == b"$":
        return None if int(rest) < 0 else reader.read(int(rest) + 2)[:-2]
    if kind == b"*":
        return [reply() for _ in range(max(int(rest), 0))]
    raise ValueError(line)
while True:
    conn.sendall(b"XLEN jobs\r\nXPENDING jobs zerobatch\r\n")
    length, pending = reply(), reply()
    if length == 0 and pending is not None and pending[0] == 0:
        break
    time.sleep(0.01)
PY
}

# Starts $1 replicas, waits until the stream is drained and nothing is pending, prints a row.
drain() {
  local replicas=$1 workers=$(( 2 / $1 )) started ended port i
  local run_pids=()
  enqueue "r$replicas"
  [ "$(remaining)" = "$jobs" ] || { echo "error: enqueued $(remaining) of $jobs jobs" >&2; exit 1; }
  started=$(date +%s.%N)
  for i in $(seq "$replicas"); do
    port=$(free_port)
    local pin=()
    if [ "${PIN:-0}" = 1 ] && [ "$replicas" -gt 1 ]; then pin=(taskset -c $(( i - 1 ))); fi
    RUST_LOG=warn "${pin[@]}" "$bin" --host 127.0.0.1 --port "$port" --model "$model" \
      --workers "$workers" --queue "$queue_url" \
      --shutdown-delay-ms 0 2>>"$work/replicas.log" &
    run_pids+=($!)
    pids+=($!)
  done
  wait_drained
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
echo "queue drain: $jobs jobs of \"$text\" on $(nproc) cores, $broker_version"
printf '| replicas | jobs | drain s | jobs/s |\n|---:|---:|---:|---:|\n'
# Every job of the run has a result saying succeeded (checked on a sample of 1000).
check() {
  local bad
  if [ "$broker" = azure ]; then
    bad=$(JOBS="$jobs" az check "$1")
  else
    bad=$(for i in $(seq 0 $(( jobs / 1000 > 0 ? jobs / 1000 : 1 )) $(( jobs - 1 ))); do
      r hget "jobs:job:$1-$i" state
    done | grep -vc '^succeeded$' || true)
  fi
  [ "$bad" = 0 ] || { echo "error: $bad sampled jobs of run $1 did not succeed" >&2; exit 1; }
}
if [ -n "${SWEEP:-}" ]; then
  # One replica per --queue-max-jobs value, each followed by its own HTTP measurement.
  for max_jobs in $SWEEP; do
    echo "--queue-max-jobs $max_jobs:"
    export QUEUE_MAX_JOBS=$max_jobs
    drain 1
    check r1
    if [ "$broker" = redis ]; then r flushall >/dev/null; fi
    [ -z "$http_rps" ] || echo "HTTP /embed at concurrency 64 on that process right after its drain: $http_rps req/s"
  done
  exit 0
fi
for replicas in ${REPLICAS:-1 2}; do
  drain "$replicas"
  check "r$replicas"
  if [ "$broker" = redis ]; then r flushall >/dev/null; fi
done
[ -z "$http_rps" ] || echo "HTTP /embed at concurrency 64 on the 1-replica process right after its drain: $http_rps req/s"
