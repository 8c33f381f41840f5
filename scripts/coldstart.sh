#!/usr/bin/env bash
# coldstart.sh: measure zerobatch's cold start, from exec to the first answered embedding.
#
# Usage:
#   scripts/coldstart.sh [RUNS]
#
#   RUNS  number of cold starts to measure (default 5); the median is reported.
#
# For each run: pick a free loopback port, take a start timestamp (nanoseconds), start
# the release binary in the background with all-MiniLM-L6-v2, POST
# {"inputs":"A man is eating food."} to /embed in a tight loop (curl --max-time 5,
# connection refused ignored) until a 200 arrives, take the end timestamp, then stop
# the server (SIGTERM, wait; SIGKILL after 30 s). Prints every run and the median in
# milliseconds, then the server's own start-up phase log lines (phase=... ms=...) of
# the last run.
#
# What is measured: zerobatch binds its port before it loads the model and holds the
# requests that arrive while it loads, so the first POST that connects is usually
# accepted during the load and answered once the workers are warm. The number is
# therefore exec -> first answered embedding (not exec -> /readyz). The model files
# are in the page cache (fetch-model.sh has just checksummed them): this is a warm-disk
# cold start of the process, as when a replica restarts on the same node.
#
# Environment:
#   ZEROBATCH_BIN        binary to run (default: target/release/zerobatch, built with
#                        cargo build --release if it is missing)
#   ZEROBATCH_MODEL_DIR  where scripts/fetch-model.sh finds or puts the model
#   COLDSTART_TIMEOUT_S  give up on a run after this many seconds (default 120)
#   Server options given as environment variables (WORKERS, MAX_BATCH_SIZE, ...) apply;
#   HOST, PORT, MODEL and the shutdown delay are set here, API_KEY is cleared.
#
# Only loopback (127.0.0.1) is used. Needs bash, curl and GNU date (date +%s%N).
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

case "${1:-}" in
    -h | --help) usage >&2; exit 0 ;;
esac
[[ $# -le 1 ]] || { usage >&2; die "expected at most one argument, got $#"; }
runs="${1:-5}"
[[ "$runs" =~ ^[1-9][0-9]*$ ]] || die "RUNS must be a positive integer, got '$runs'"
timeout_s="${COLDSTART_TIMEOUT_S:-120}"
[[ "$timeout_s" =~ ^[1-9][0-9]*$ ]] || die "COLDSTART_TIMEOUT_S must be a positive integer"

command -v curl >/dev/null 2>&1 || die "curl is not installed"
[[ "$(date +%s%N)" =~ ^[0-9]+$ ]] || die "date +%s%N does not give nanoseconds (GNU date needed)"

script_dir="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo_root="$(cd "$script_dir/.." && pwd)"

bin="${ZEROBATCH_BIN:-$repo_root/target/release/zerobatch}"
if [[ ! -x "$bin" ]]; then
    [[ -z "${ZEROBATCH_BIN:-}" ]] || die "ZEROBATCH_BIN=$bin is not an executable file"
    command -v cargo >/dev/null 2>&1 || die "$bin is missing and cargo is not installed"
    log "$bin is missing: building it"
    (cd "$repo_root" && cargo build --release --locked >&2)
    [[ -x "$bin" ]] || die "the build did not produce $bin"
fi

model_dir="$("$script_dir/fetch-model.sh" | tail -n1)"
[[ -d "$model_dir" ]] || die "fetch-model.sh gave no model directory"

# The server's settings come from the flags below; a stray key would turn every POST
# into a 401. Plain-text info logs, so the phase lines can be read back.
unset API_KEY
export RUST_LOG=info LOG_FORMAT=text NO_COLOR=1

readonly url_host=127.0.0.1
readonly body='{"inputs":"A man is eating food."}'

work="$(mktemp -d "${TMPDIR:-/tmp}/zerobatch-coldstart.XXXXXX")"
server_pid=""

stop_server() {
    [[ -n "$server_pid" ]] || return 0
    local pid="$server_pid" waited=0
    server_pid=""
    kill -TERM "$pid" 2>/dev/null || true
    # bash reaps its finished children, so kill -0 fails once the server has exited.
    while kill -0 "$pid" 2>/dev/null; do
        if ((waited >= 300)); then
            log "server $pid still running 30 s after SIGTERM: SIGKILL"
            kill -KILL "$pid" 2>/dev/null || true
            break
        fi
        sleep 0.1
        waited=$((waited + 1))
    done
    wait "$pid" 2>/dev/null || true
}

cleanup() {
    stop_server
    rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# A loopback port nothing listens on (connecting to it is refused).
free_port() {
    local port _
    for _ in $(seq 1 100); do
        port=$((20000 + RANDOM % 40000))
        if ! (: <"/dev/tcp/$url_host/$port") 2>/dev/null; then
            printf '%s\n' "$port"
            return 0
        fi
    done
    return 1
}

# ns_to_ms NANOSECONDS: milliseconds with two decimals.
ns_to_ms() {
    local ns="$1"
    printf '%d.%02d' $((ns / 1000000)) $(((ns / 10000) % 100))
}

log "binary: $bin"
log "model:  $model_dir"
log "runs:   $runs"

durations=()
for ((run = 1; run <= runs; run++)); do
    port="$(free_port)" || die "found no free loopback port"
    stderr_log="$work/server-$run.log"

    start_ns="$(date +%s%N)"
    "$bin" --host "$url_host" --port "$port" --model "$model_dir" \
        --shutdown-delay-ms 0 --shutdown-timeout-ms 10000 2>"$stderr_log" &
    server_pid=$!

    attempts=0
    code=000
    deadline=$((SECONDS + timeout_s))
    while :; do
        attempts=$((attempts + 1))
        code="$(curl -s -o /dev/null -w '%{http_code}' --max-time 5 \
            -H 'Content-Type: application/json' --data-binary "$body" \
            "http://$url_host:$port/embed")" || true
        [[ "$code" == 200 ]] && break
        if ! kill -0 "$server_pid" 2>/dev/null; then
            sed 's/^/  server: /' "$stderr_log" >&2
            server_pid=""
            die "run $run: the server exited before answering (last HTTP status $code)"
        fi
        if ((SECONDS >= deadline)); then
            sed 's/^/  server: /' "$stderr_log" >&2
            die "run $run: no 200 within ${timeout_s} s (last HTTP status $code)"
        fi
    done
    end_ns="$(date +%s%N)"

    stop_server
    elapsed=$((end_ns - start_ns))
    durations+=("$elapsed")
    printf 'run %d/%d: %s ms  (port %d, %d POST attempt(s))\n' \
        "$run" "$runs" "$(ns_to_ms "$elapsed")" "$port" "$attempts"
done

mapfile -t sorted < <(printf '%s\n' "${durations[@]}" | sort -n)
n=${#sorted[@]}
if ((n % 2 == 1)); then
    median=${sorted[n / 2]}
else
    median=$(((sorted[n / 2 - 1] + sorted[n / 2]) / 2))
fi
printf 'median of %d: %s ms  (min %s, max %s)\n' \
    "$n" "$(ns_to_ms "$median")" "$(ns_to_ms "${sorted[0]}")" "$(ns_to_ms "${sorted[n - 1]}")"

printf 'server start-up phases, last run (bind and total: ms since the process started; the others: ms the phase took):\n'
# Strip colour codes in case the log was written with them anyway.
sed 's/\x1b\[[0-9;]*m//g' "$work/server-$runs.log" | grep 'phase=' | sed 's/^/  /' || true
