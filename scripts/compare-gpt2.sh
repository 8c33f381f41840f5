#!/usr/bin/env bash
# Side-by-side GPT-2 benchmark: zerobatch against the application it replaces (FastAPI +
# transformers.pipeline("text-generation"), scripts/baseline-gpt2.py), on the same GPT-2 small
# checkpoint in Hugging Face layout, in one run, the servers taking turns at each concurrency
# so that machine drift hits both.
#
#   scripts/compare-gpt2.sh                        # writes docs/bench-data/gpt2.csv (+ .raw)
#   ROUNDS=3 DURATION=15 CONCURRENCY="1 8 32" OUT=/tmp/gpt2.csv scripts/compare-gpt2.sh
#
# Two workloads, each measurement on a fresh server process:
#   upstream  the upstream shape, both servers: oha, POST /generate {"text": "Once upon a
#             time"} (35 tokens in all, prompt included; sampled) from C connections for
#             DURATION seconds, then the requests in flight finish (oha -w). One request,
#             not measured, warms each server first. req/s counts the 200s over the whole
#             time; p50/p99 are oha's latencies; generated tokens/s is req/s × (35 − prompt
#             tokens), the prompt's tokens counted by zerobatch's /tokenize (4). A sampled
#             continuation stops early if it draws EOS: for zerobatch, mean_new_tokens is the
#             real mean from its /metrics (generated tokens / answered /generate requests);
#             the baseline has no such counter.
#   stream    zerobatch alone: scripts/gen-load.py (streamed OpenAI completions of the same
#             prompt, 64 new tokens, EOS ignored, greedy, 2 s warm-up): aggregate tokens/s,
#             time to first token, inter-token latency, as docs/benchmarks.md reports for
#             SmolLM2.
# Per round and concurrency the order is: zerobatch upstream, baseline upstream, zerobatch
# stream. Every start records exec → ready (first 200 from /readyz, or from the baseline's
# /health: it opens its port once the pipeline is loaded), polled every 2 ms by one Python
# process, and the server's own account of it (zerobatch's "total" start-up phase; the
# baseline's time in pipeline(...) and in its imports). Peak RSS is VmHWM of the process
# that listens on the port (for uvicorn, the worker process: here the same process, as the
# baseline passes the app object with one worker), read after the load.
#
# Environment:
#   ROUNDS           rounds (default 3); medians over them go to OUT
#   DURATION         seconds of load per measurement (default 15)
#   CONCURRENCY      (default "1 8 32")
#   WORKLOADS        (default "upstream stream")
#   OUT              (default docs/bench-data/gpt2.csv; the per-round rows go to OUT.raw)
#   MODEL_DIR        GPT-2 checkpoint (default models/gpt2-random; written by
#                    scripts/make-random-gpt2.py when missing)
#   BASELINE_PYTHON  interpreter with torch, transformers, fastapi, uvicorn (default
#                    /tmp/refvenv/bin/python; scripts/baseline-venv.sh builds such a venv)
#
# It does not build zerobatch: it needs target/release/zerobatch (cargo build --release)
# and warns when a source file is newer. Needs oha, python3, and curl. Run it on an
# otherwise idle machine: the load generator shares the cores with the server.
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
cd "$(dirname "$0")/.."

rounds="${ROUNDS:-3}"
duration="${DURATION:-15}"
concurrency="${CONCURRENCY:-1 8 32}"
workloads="${WORKLOADS:-upstream stream}"
out="${OUT:-docs/bench-data/gpt2.csv}"
model="${MODEL_DIR:-models/gpt2-random}"
python="${BASELINE_PYTHON:-/tmp/refvenv/bin/python}"
bin=target/release/zerobatch
prompt="Once upon a time"
body='{"text": "Once upon a time"}'
max_length=35
port=18800

[ -x "$bin" ] || die "$bin missing: cargo build --release"
if [ -n "$(find src Cargo.toml Cargo.lock -newer "$bin" 2>/dev/null | head -n 1)" ]; then
  echo "warning: sources newer than $bin; it may be stale (cargo build --release)" >&2
fi
command -v oha >/dev/null || die "oha missing: cargo install oha --locked"
command -v curl >/dev/null || die "curl missing"
[ -x "$python" ] || die "no $python: set BASELINE_PYTHON (scripts/baseline-venv.sh builds a venv)"
"$python" -c 'import fastapi, torch, transformers, uvicorn' || die "$python cannot import the baseline's packages"
if [ ! -f "$model/model.safetensors" ]; then
  echo "no checkpoint in $model: writing one with scripts/make-random-gpt2.py" >&2
  "$python" scripts/make-random-gpt2.py --output "$model" >&2
fi
mkdir -p "$(dirname "$out")"
export HF_HUB_OFFLINE=1

pid=""
cleanup() {
  if [ -n "$pid" ]; then kill -9 "$pid" 2>/dev/null || true; fi
}
trap cleanup EXIT

# wait_ready URL START_NS: polls URL every 2 ms until 200 while $pid lives; prints the ms
# from START_NS (date +%s%N when the server was started) to the first 200.
wait_ready() {
  python3 - "$1" "$2" "$pid" <<'EOF'
import os, sys, time, urllib.request
url, start, pid = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
deadline = time.time() + 300
while time.time() < deadline:
    try:
        with urllib.request.urlopen(url, timeout=1) as r:
            if r.status == 200:
                print(round((time.time_ns() - start) / 1e6))
                sys.exit(0)
    except OSError:
        pass
    try:
        os.kill(pid, 0)
    except OSError:
        sys.exit(f"the server (pid {pid}) exited")
    time.sleep(0.002)
sys.exit("not ready within 300 s")
EOF
}

# listener_pid: the process listening on $port (for a uvicorn with workers, the worker).
listener_pid() {
  local p
  p=$(ss -Htlnp "sport = :$port" 2>/dev/null | grep -o 'pid=[0-9]*' | head -n 1 | cut -d= -f2 || true)
  echo "${p:-$pid}"
}

# start_server NAME: starts it on $port; sets $pid, $server_pid, $ready_ms, $own_ms,
# $imports_ms.
start_server() {
  local name="$1" start probe log=/tmp/compare-gpt2-$1.log
  start=$(date +%s%N)
  case "$name" in
    zerobatch)
      "$bin" --model "$model" --port "$port" >"$log" 2>&1 &
      probe=/readyz ;;
    baseline)
      "$python" scripts/baseline-gpt2.py --model-dir "$model" --port "$port" >"$log" 2>&1 &
      probe=/health ;;
  esac
  pid=$!
  if ! ready_ms=$(wait_ready "http://127.0.0.1:$port$probe" "$start"); then
    tail -n 20 "$log" >&2
    die "$name did not become ready (log: $log)"
  fi
  server_pid=$(listener_pid)
  imports_ms=""
  case "$name" in
    zerobatch) own_ms=$(sed -n 's/.*phase="total" ms=\([0-9.]*\).*/\1/p' "$log" | head -n 1) ;;
    baseline)
      own_ms=$(sed -n 's/.*pipeline(...) \([0-9]*\) ms.*/\1/p' "$log" | head -n 1)
      imports_ms=$(sed -n 's/.*imports \([0-9]*\) ms.*/\1/p' "$log" | head -n 1) ;;
  esac
}

stop_server() {
  kill -9 "$pid" 2>/dev/null || true
  if [ "$server_pid" != "$pid" ]; then kill -9 "$server_pid" 2>/dev/null || true; fi
  wait "$pid" 2>/dev/null || true
  pid=""
  port=$((port + 1))
}

peak_rss_mb() {
  awk '/VmHWM/ {printf "%.1f", $2 / 1024}' "/proc/$server_pid/status"
}

# zb_counters: "generated_tokens answered_generate_requests" from zerobatch's /metrics.
zb_counters() {
  curl -fsS "http://127.0.0.1:$port/metrics" | awk '
    /^zerobatch_generated_tokens_total / {t = $2}
    /^zerobatch_requests_total\{route="\/generate",status="200"\} / {r = $2}
    END {print t + 0, r + 0}'
}

# The prompt's tokens, as the model counts them (zerobatch's /tokenize).
start_server zerobatch
prompt_tokens=$(curl -fsS "http://127.0.0.1:$port/tokenize" -H 'Content-Type: application/json' \
  -d "{\"inputs\": \"$prompt\"}" | python3 -c 'import json, sys; print(sum(1 for t in json.load(sys.stdin)[0] if not t["special"]))')
stop_server
new_tokens=$((max_length - prompt_tokens))
echo "\"$prompt\": $prompt_tokens tokens; $new_tokens new tokens per upstream request" >&2

machine="$(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //')"
cols="round,workload,system,concurrency,req_per_s,p50_ms,p99_ms,tokens_per_s,mean_new_tokens,ttft_p50_ms,ttft_p99_ms,itl_p50_ms,itl_p99_ms,requests,errors,peak_rss_mb,ready_ms,own_ready_ms,imports_ms"
echo "$cols" >"$out.raw"

# upstream SYSTEM C ROUND: one oha measurement of the upstream shape on a fresh server.
upstream() {
  local system="$1" c="$2" round="$3" json before after rss
  start_server "$system"
  curl -fsS "http://127.0.0.1:$port/generate" -H 'Content-Type: application/json' -d "$body" >/dev/null
  before=""
  if [ "$system" = zerobatch ]; then before=$(zb_counters); fi
  json=$(oha -z "${duration}s" -w -c "$c" --no-tui --output-format json -m POST \
    -H 'Content-Type: application/json' -d "$body" "http://127.0.0.1:$port/generate")
  after=""
  if [ "$system" = zerobatch ]; then after=$(zb_counters); fi
  rss=$(peak_rss_mb)
  stop_server
  OHA="$json" BEFORE="$before" AFTER="$after" python3 -c '
import json, os, sys
r = json.loads(os.environ["OHA"])
round_, system, c, new, rss, ready, own, imports = sys.argv[1:9]
codes = r.get("statusCodeDistribution", {})
ok = codes.get("200", 0)
errors = sum(v for k, v in codes.items() if k != "200") + sum(r.get("errorDistribution", {}).values())
rps = ok / r["summary"]["total"]
p = r["latencyPercentiles"]
mean_new = ""
if os.environ["BEFORE"]:
    t0, n0 = map(float, os.environ["BEFORE"].split())
    t1, n1 = map(float, os.environ["AFTER"].split())
    mean_new = "%.2f" % ((t1 - t0) / (n1 - n0)) if n1 > n0 else ""
row = [round_, "upstream", system, c, "%.3f" % rps, "%.1f" % (p["p50"] * 1e3), "%.1f" % (p["p99"] * 1e3),
       "%.2f" % (rps * int(new)), mean_new, "", "", "", "", str(ok), str(errors), rss, ready, own, imports]
print(",".join(row))
' "$round" "$system" "$c" "$new_tokens" "$rss" "$ready_ms" "$own_ms" "$imports_ms" >>"$out.raw"
  echo "round $round, upstream, $system, c=$c: $(tail -n 1 "$out.raw")" >&2
}

# stream C ROUND: one gen-load measurement on a fresh zerobatch.
stream() {
  local c="$1" round="$2" result
  start_server zerobatch
  result=$(python3 scripts/gen-load.py "http://127.0.0.1:$port" --concurrency "$c" --duration "$duration" \
    --pid "$server_pid" --json)
  stop_server
  RESULT="$result" python3 -c '
import json, os, sys
r = json.loads(os.environ["RESULT"])
round_, ready, own = sys.argv[1:4]
f = lambda k, d=1: ("%." + str(d) + "f") % r[k]
row = [round_, "stream", "zerobatch", str(r["concurrency"]), "", "", "", f("tokens_per_s", 2), "",
       f("ttft_p50_ms", 2), f("ttft_p99_ms", 2), f("itl_p50_ms", 2), f("itl_p99_ms", 2),
       str(r["requests"]), str(r["errors"]), f("peak_rss_mb"), ready, own, ""]
print(",".join(row))
' "$round" "$ready_ms" "$own_ms" >>"$out.raw"
  echo "round $round, stream, zerobatch, c=$c: $(tail -n 1 "$out.raw")" >&2
}

for round in $(seq "$rounds"); do
  for c in $concurrency; do
    for workload in $workloads; do
      case "$workload" in
        upstream) upstream zerobatch "$c" "$round"; upstream baseline "$c" "$round" ;;
        stream) stream "$c" "$round" ;;
        *) die "unknown workload $workload (upstream, stream)" ;;
      esac
    done
  done
done

# Medians over the rounds, one row per workload, system and concurrency; then the same as
# Markdown tables with the ratios zerobatch / baseline.
python3 - "$out.raw" "$out" "$machine" "$prompt" "$max_length" <<'EOF'
import csv, statistics, sys
raw, out, machine, prompt, max_length = sys.argv[1:6]
rows = list(csv.DictReader(open(raw)))
metrics = ["req_per_s", "p50_ms", "p99_ms", "tokens_per_s", "mean_new_tokens", "ttft_p50_ms",
           "ttft_p99_ms", "itl_p50_ms", "itl_p99_ms", "peak_rss_mb", "ready_ms", "own_ready_ms", "imports_ms"]
keys = []
for r in rows:
    k = (r["workload"], r["system"], int(r["concurrency"]))
    if k not in keys:
        keys.append(k)
med = {}
with open(out, "w", newline="") as f:
    w = csv.writer(f)
    w.writerow(["workload", "system", "concurrency"] + metrics + ["rounds", "requests", "errors", "input", "machine"])
    for k in keys:
        sel = [r for r in rows if (r["workload"], r["system"], int(r["concurrency"])) == k]
        m = {}
        for name in metrics:
            vals = [float(r[name]) for r in sel if r[name] != ""]
            m[name] = round(statistics.median(vals), 2) if vals else ""
        med[k] = m
        desc = (f'POST /generate {{"text": "{prompt}"}}, {max_length} tokens in all, sampled' if k[0] == "upstream"
                else f"{prompt}, 64 new tokens streamed, greedy, EOS ignored")
        w.writerow(list(k) + [m[n] for n in metrics] + [len(sel), sum(int(r["requests"]) for r in sel),
                                                        sum(int(r["errors"]) for r in sel), desc, machine])
print(open(out).read())

def fmt(v, d=1):
    return "—" if v == "" else f"{v:.{d}f}"

def ratio(a, b):
    return "—" if a == "" or b == "" or b == 0 else f"{a / b:.1f}×"

cs = sorted({k[2] for k in keys if k[0] == "upstream"})
if cs:
    print(f"Upstream shape (oha), medians of the rounds; machine: {machine}\n")
    print("| concurrency | req/s zb / baseline | ratio | tokens/s zb / baseline | p50 ms zb / baseline | ratio (baseline/zb) | p99 ms zb / baseline | zb mean new tokens | peak RSS MB zb / baseline |")
    print("|---:|---|---:|---|---|---:|---|---:|---|")
    for c in cs:
        z, b = med.get(("upstream", "zerobatch", c)), med.get(("upstream", "baseline", c))
        if not z or not b:
            continue
        print(f"| {c} | {fmt(z['req_per_s'], 2)} / {fmt(b['req_per_s'], 2)} | **{ratio(z['req_per_s'], b['req_per_s'])}** "
              f"| {fmt(z['tokens_per_s'])} / {fmt(b['tokens_per_s'])} | {fmt(z['p50_ms'])} / {fmt(b['p50_ms'])} "
              f"| {ratio(b['p50_ms'], z['p50_ms'])} | {fmt(z['p99_ms'])} / {fmt(b['p99_ms'])} | {fmt(z['mean_new_tokens'], 2)} "
              f"| {fmt(z['peak_rss_mb'], 0)} / {fmt(b['peak_rss_mb'], 0)} |")
cs = sorted({k[2] for k in keys if k[0] == "stream"})
if cs:
    print("\nStreamed, zerobatch alone (gen-load.py: 64 new tokens, greedy, EOS ignored), medians\n")
    print("| concurrency | tokens/s | TTFT p50 / p99 ms | ITL p50 / p99 ms | peak RSS MB |")
    print("|---:|---:|---|---|---:|")
    for c in cs:
        z = med[("stream", "zerobatch", c)]
        print(f"| {c} | {fmt(z['tokens_per_s'])} | {fmt(z['ttft_p50_ms'])} / {fmt(z['ttft_p99_ms'])} "
              f"| {fmt(z['itl_p50_ms'])} / {fmt(z['itl_p99_ms'])} | {fmt(z['peak_rss_mb'], 0)} |")
zr = [float(r["ready_ms"]) for r in rows if r["system"] == "zerobatch"]
zo = [float(r["own_ready_ms"]) for r in rows if r["system"] == "zerobatch" and r["own_ready_ms"]]
br = [float(r["ready_ms"]) for r in rows if r["system"] == "baseline"]
bp = [float(r["own_ready_ms"]) for r in rows if r["system"] == "baseline" and r["own_ready_ms"]]
bi = [float(r["imports_ms"]) for r in rows if r["system"] == "baseline" and r["imports_ms"]]
if zr:
    print(f"\nexec → ready, median (min–max) over every start: zerobatch {statistics.median(zr):.0f} ms "
          f"({min(zr):.0f}–{max(zr):.0f}; its own total phase {statistics.median(zo):.0f} ms)", end="")
if br:
    print(f"; baseline {statistics.median(br):.0f} ms ({min(br):.0f}–{max(br):.0f}; imports "
          f"{statistics.median(bi):.0f} ms, pipeline(...) {statistics.median(bp):.0f} ms)", end="")
print()
EOF
