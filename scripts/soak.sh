#!/usr/bin/env bash
# Saturation soak: DURATION seconds (default 600) of small requests at saturation (oha, c=64,
# in consecutive SEGMENT-second runs so the first and last minute can be compared) while
# scripts/soak_clients.py runs max-size bodies, invalid bodies, slow-header and slow-body
# clients, mid-request disconnects and bursts above the queue capacity. Samples the server's
# VmRSS/VmHWM and open file descriptors every SAMPLE_EVERY seconds, then prints a Markdown
# summary (pass/fail per criterion) and exits 1 when a criterion fails:
#   - every answer is 200, a documented 4xx (400 401 404 405 408 413 415) or 503 with
#     Retry-After; no resets, no missing answers for well-behaved clients; no 500;
#   - RSS at the end of the load ≤ 1.10 × RSS after the first minute (medians of 30 s windows:
#     [60 s, 90 s) of the load and its last 30 s);
#   - open fds back to the pre-load baseline within FD_SETTLE_MAX seconds after the load;
#   - small-request p99 in the last segment ≤ 1.5 × the first segment's;
#   - slow headers closed after the server's header timeout, slow bodies answered 408 after its
#     body deadline (when the binary has one), bursts overflowed the queue.
#
#   scripts/soak.sh                 # starts target/release/zerobatch on 127.0.0.1:18090
#   DURATION=90 SEGMENT=30 scripts/soak.sh
#   scripts/soak.sh http://127.0.0.1:8080    # a server you started (SERVER_PID=... for RSS/fds)
#
# Environment (defaults in brackets):
#   DURATION [600]  SEGMENT [60]  CONCURRENCY [64]  TEXT ["A man is eating food."]
#   BIN [target/release/zerobatch]  MODEL [models/all-MiniLM-L6-v2]  PORT [18090]
#   QUEUE_CAPACITY [256]  SERVER_ARGS [] (more server flags, split on spaces)
#   RESULTS_DIR [target/soak/<UTC time>]  WARMUP [5] s  SAMPLE_EVERY [2] s  FD_SETTLE_MAX [40] s
#   HEADER_TIMEOUT_S, BODY_DEADLINE_S: the server's header timeout and body read deadline in
#     seconds (0: none); by default read from /info, else from `BIN --help`, else 30 and 0.
#   PEAK_RSS_LIMIT_MB: when set, also fail if the server's VmHWM exceeds it (MB = 10^6 bytes).
#   CLIENT_ARGS: more options for soak_clients.py run (see its --help), e.g. "--burst-size 200"
#   API_KEY: sent as a bearer token (and given to the server this script starts).
#
# Only point it at servers you run (loopback). The raw data stays in RESULTS_DIR.
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
die_status=2

script_dir="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo_root="$(cd "$script_dir/.." && pwd)"

duration="${DURATION:-600}"
segment="${SEGMENT:-60}"
concurrency="${CONCURRENCY:-64}"
text="${TEXT:-A man is eating food.}"
bin="${BIN:-$repo_root/target/release/zerobatch}"
model="${MODEL:-$repo_root/models/all-MiniLM-L6-v2}"
port="${PORT:-18090}"
queue_capacity="${QUEUE_CAPACITY:-256}"
results="${RESULTS_DIR:-$repo_root/target/soak/$(date -u +%Y%m%dT%H%M%SZ)}"
warmup="${WARMUP:-5}"
sample_every="${SAMPLE_EVERY:-2}"
fd_settle_max="${FD_SETTLE_MAX:-40}"
url="${1:-}"

for cmd in oha curl python3; do
  command -v "$cmd" >/dev/null 2>&1 || die "$cmd not found (oha: cargo install oha --locked)"
done
[[ "$duration" =~ ^[0-9]+$ && "$segment" =~ ^[0-9]+$ && "$segment" -gt 0 ]] \
  || die "DURATION and SEGMENT must be whole seconds"
mkdir -p "$results"
results="$(cd "$results" && pwd)"
meta="$results/meta.env"
: >"$meta"
put() { printf '%s=%s\n' "$1" "$2" >>"$meta"; }

auth=()
server_pid="${SERVER_PID:-}"
started_server=""
bg_pids=()

cleanup() {
  local p
  for p in "${bg_pids[@]}"; do
    kill "$p" 2>/dev/null || true
  done
  if [[ -n "$started_server" ]] && kill -0 "$started_server" 2>/dev/null; then
    kill -TERM "$started_server" 2>/dev/null || true
  fi
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

server_flags=()
if [[ -z "$url" ]]; then
  [[ -x "$bin" ]] || die "no server binary at $bin (cargo build --release, or BIN=...)"
  [[ -f "$model/config.json" ]] || die "no model at $model (scripts/fetch-model.sh DIR; MODEL=DIR)"
  url="http://127.0.0.1:$port"
  server_flags=(--host 127.0.0.1 --port "$port" --model "$model" --queue-capacity "$queue_capacity"
    --shutdown-delay-ms 0)
  # shellcheck disable=SC2206 # SERVER_ARGS is split on spaces on purpose
  server_flags+=(${SERVER_ARGS:-})
  if curl -fsS -o /dev/null --max-time 2 "$url/healthz" 2>/dev/null; then
    die "something already answers on $url; pick another PORT"
  fi
  log "starting $bin ${server_flags[*]}"
  "$bin" "${server_flags[@]}" >"$results/server.log" 2>&1 &
  started_server=$!
  server_pid=$started_server
fi
[[ "$url" == http://127.0.0.1:* || "$url" == http://localhost:* ]] \
  || log "warning: $url is not loopback; only point this at servers you run"
if [[ -n "${API_KEY:-}" ]]; then
  auth=(-H "Authorization: Bearer $API_KEY")
fi

log "waiting for $url/readyz"
ready=""
for _ in $(seq 1 360); do
  if curl -fsS -o /dev/null --max-time 2 "$url/readyz" 2>/dev/null; then
    ready=1
    break
  fi
  if [[ -n "$started_server" ]] && ! kill -0 "$started_server" 2>/dev/null; then
    die "the server exited; see $results/server.log"
  fi
  sleep 0.5
done
[[ -n "$ready" ]] || die "$url/readyz not 200 after 180 s"

# Limits and timeouts: /info first, then the binary's --help defaults, then what the current
# code hard-codes (30 s header timeout, no body deadline).
curl -fsS "${auth[@]}" "$url/info" >"$results/info.json"
help=""
if [[ -x "$bin" ]]; then
  help="$("$bin" --help 2>/dev/null || true)"
fi
# help_default FLAG: the [default: N] printed for FLAG in --help, empty if FLAG is missing.
help_default() {
  printf '%s\n' "$help" | awk -v flag="$1" '
    index($0, flag " ") || index($0, flag "=") { found = 1 }
    found && match($0, /\[default: [0-9]+\]/) { print substr($0, RSTART + 10, RLENGTH - 11); exit }
    found && /^ *--/ && !index($0, flag) { exit }'
}
info_value() {
  python3 -c 'import json, sys
v = json.load(open(sys.argv[1])).get(sys.argv[2])
print("" if v is None else v)' "$results/info.json" "$1"
}
max_body_bytes="$(info_value max_body_bytes)"
max_client_batch="$(info_value max_client_batch)"
info_queue="$(info_value queue_capacity)"
request_timeout_ms="$(info_value request_timeout_ms)"

header_timeout_ms="$(info_value header_timeout_ms)"
header_src="/info"
if [[ -z "$header_timeout_ms" ]]; then
  header_timeout_ms="$(help_default --header-timeout-ms)"
  header_src="--help default"
fi
if [[ -z "$header_timeout_ms" ]]; then
  header_timeout_ms=30000
  header_src="no flag: the 30 s hyper header_read_timeout in src/http/mod.rs"
fi
body_ms="$(info_value client_timeout_ms)"
body_src="/info"
if [[ -z "$body_ms" ]]; then
  body_ms="$(help_default --client-timeout-ms)"
  body_src="--help default"
fi
if [[ -z "$body_ms" ]]; then
  body_ms=0
  body_src="no --client-timeout-ms flag: no body deadline expected"
fi
# SERVER_ARGS may set them.
for f in header-timeout-ms client-timeout-ms; do
  re="[[:space:]]--${f}[=[:space:]]([0-9]+)"
  if [[ " ${SERVER_ARGS:-} " =~ $re ]]; then
    case $f in
      header-timeout-ms) header_timeout_ms="${BASH_REMATCH[1]}"; header_src="SERVER_ARGS" ;;
      client-timeout-ms) body_ms="${BASH_REMATCH[1]}"; body_src="SERVER_ARGS" ;;
    esac
  fi
done
header_timeout_s="${HEADER_TIMEOUT_S:-$(python3 -c "print($header_timeout_ms / 1000)")}"
body_deadline_s="${BODY_DEADLINE_S:-$(python3 -c "print($body_ms / 1000)")}"
[[ -n "${HEADER_TIMEOUT_S:-}" ]] && header_src="HEADER_TIMEOUT_S"
[[ -n "${BODY_DEADLINE_S:-}" ]] && body_src="BODY_DEADLINE_S"
log "header timeout ${header_timeout_s} s ($header_src); body deadline ${body_deadline_s} s ($body_src)"

nseg=$((duration / segment))
((nseg >= 1)) || nseg=1
last_seg=$((duration - (nseg - 1) * segment))

put started_utc "$(date -u +%Y-%m-%dT%H:%MZ)"
if [[ -n "$started_server" ]]; then
  put binary "${bin/#$repo_root\//}"
  put version "$("$bin" --version 2>/dev/null || echo unknown)"
else
  put binary "external server"
  put version "version $(info_value version)"
fi
put server_flags "${server_flags[*]:-external server at $url}"
put cores "$(nproc)"
put duration "$duration"
put segment "$segment"
put concurrency "$concurrency"
put peak_rss_limit_mb "${PEAK_RSS_LIMIT_MB:-}"
put header_timeout "$header_timeout_s s ($header_src)"
put body_deadline "$body_deadline_s s ($body_src)"

count_fds() {
  local entries=(/proc/"$1"/fd/*)
  echo "${#entries[@]}"
}

body=$(TEXT="$text" python3 -c 'import json, os; print(json.dumps({"inputs": os.environ["TEXT"]}))')
oha_common=(-c "$concurrency" -w --no-tui --stats-success-breakdown --output-format json -m POST
  -H 'Content-Type: application/json' "${auth[@]}" -d "$body" "$url/embed")

if ((warmup > 0)); then
  log "warming up for ${warmup} s"
  oha -z "${warmup}s" "${oha_common[@]}" >"$results/oha-warmup.json" 2>&1 || true
fi
sleep 3

if [[ -n "$server_pid" && -d "/proc/$server_pid" ]]; then
  fd_baseline="$(count_fds "$server_pid")"
  put fd_baseline "$fd_baseline"
  log "baseline: $fd_baseline open fds"
  # The sampler: bounded in time, ends with the server.
  (
    echo "epoch_s,rss_kb,hwm_kb,fds"
    stop_at=$((EPOCHSECONDS + duration + 900))
    while ((EPOCHSECONDS < stop_at)) && [[ -d "/proc/$server_pid" ]]; do
      rss="" hwm=""
      while read -r k v _; do
        case $k in
          VmRSS:) rss=$v ;;
          VmHWM:) hwm=$v ;;
        esac
      done <"/proc/$server_pid/status"
      echo "$EPOCHREALTIME,$rss,$hwm,$(count_fds "$server_pid")"
      sleep "$sample_every"
    done
  ) >"$results/samples.csv" 2>/dev/null &
  bg_pids+=($!)
else
  log "no server PID: RSS and fd criteria are not checked (set SERVER_PID)"
fi

log "load: ${duration} s, oha c=$concurrency in $nseg segment(s), clients from soak_clients.py"
put load_start "$EPOCHREALTIME"
# shellcheck disable=SC2086 # CLIENT_ARGS is split on purpose
python3 "$script_dir/soak_clients.py" run --url "$url" --duration "$duration" --out "$results" \
  --max-body-bytes "$max_body_bytes" --max-client-batch "$max_client_batch" \
  --queue-capacity "${info_queue:-$queue_capacity}" \
  --request-timeout-s "$(python3 -c "print(${request_timeout_ms:-30000} / 1000)")" \
  --header-timeout-s "$header_timeout_s" --body-deadline-s "$body_deadline_s" \
  ${CLIENT_ARGS:-} 2>"$results/clients.log" &
clients_pid=$!
bg_pids+=("$clients_pid")

for ((i = 1; i <= nseg; i++)); do
  len=$segment
  ((i < nseg)) || len=$last_seg
  out="$results/oha-seg-$(printf '%02d' "$i").json"
  if ! oha -z "${len}s" "${oha_common[@]}" >"$out" 2>"$out.err"; then
    log "oha segment $i failed (see $out.err)"
  fi
  log "segment $i/$nseg: $(python3 "$script_dir/soak_clients.py" oha-line "$out")"
done
put oha_end "$EPOCHREALTIME"
log "oha done; waiting for the clients to finish"
wait "$clients_pid" || log "soak_clients.py exited with $?"
put load_end "$EPOCHREALTIME"

if [[ -n "$server_pid" && -d "/proc/$server_pid" ]]; then
  settle=0
  fds="$(count_fds "$server_pid")"
  while ((fds > fd_baseline && settle < fd_settle_max)); do
    sleep 1
    settle=$((settle + 1))
    fds="$(count_fds "$server_pid")"
  done
  put fd_after "$fds"
  put fd_settle_s "$settle"
  log "open fds after the load: $fds (baseline $fd_baseline, after $settle s)"
  if ((fds > fd_baseline)); then
    ls -l "/proc/$server_pid/fd" >"$results/fds-after.txt" 2>&1 || true
  fi
fi

curl -fsS "${auth[@]}" "$url/metrics" >"$results/metrics.txt" 2>/dev/null || true
if [[ -n "$server_pid" ]]; then
  if kill -0 "$server_pid" 2>/dev/null; then put alive_at_end 1; else put alive_at_end 0; fi
fi
for p in "${bg_pids[@]}"; do
  kill "$p" 2>/dev/null || true
done
bg_pids=()
if [[ -n "$started_server" ]]; then
  kill -TERM "$started_server" 2>/dev/null || true
  for _ in $(seq 1 60); do
    kill -0 "$started_server" 2>/dev/null || break
    sleep 0.5
  done
  if kill -0 "$started_server" 2>/dev/null; then
    log "server still running 30 s after SIGTERM; killing it"
    kill -KILL "$started_server" 2>/dev/null || true
  fi
  rc=0
  wait "$started_server" 2>/dev/null || rc=$?
  put server_exit "$rc"
  started_server=""
  put panics "$(grep -c 'panicked' "$results/server.log" || true)"
fi

python3 "$script_dir/soak_clients.py" report "$results"
