#!/usr/bin/env bash
# Side-by-side rerank benchmark (issue 20): zerobatch against the application people write
# (FastAPI + sentence-transformers' CrossEncoder, scripts/baseline-rerank-fastapi.py), on the
# same cross-encoder of ms-marco-MiniLM-L-6-v2's shape, in one run, the servers taking turns
# at each concurrency so that machine drift hits both.
#
#   scripts/compare-rerank.sh                      # 3 rounds × c=1 and c=16, 15 s each
#   ROUNDS=1 DURATION=2 CONCURRENCY="1 2" PASSAGES=3 scripts/compare-rerank.sh   # smoke run
#
# Workload: scripts/rerank-load.py, TEI's POST /rerank with one query and PASSAGES passages
# of about 100 tokens (WORDS words; the script prints the count zerobatch's /tokenize gives),
# from C keep-alive connections for DURATION seconds after a 2 s warm-up. Both servers are
# started once, loaded and idle while the other is measured; per round and concurrency the
# order is zerobatch, then the baseline. Prints one Markdown row per measurement and, at the
# end, the medians over the rounds with zerobatch's pairs/s over the baseline's (the issue's
# targets: ≥ 3× at c=16, ≥ 1.5× at c=1). The raw rows also go to OUT when it is set.
#
# Environment:
#   ROUNDS           rounds (default 3)
#   DURATION         seconds of load per measurement (default 15)
#   CONCURRENCY      (default "1 16")
#   PASSAGES         passages per request (default 20)
#   WORDS            words per passage (default 93, about 100 tokens)
#   MODEL_DIR        cross-encoder checkpoint (default models/cross-encoder-random; written
#                    by scripts/make-random-cross-encoder.py when missing)
#   BIN              zerobatch binary (default target/release/zerobatch; cargo build --release)
#   ZB_ARGS          extra zerobatch flags, e.g. "--dtype f32" (default: none; its auto dtype
#                    for a BERT cross-encoder is int16 where AVX2 or better runs, else f32)
#   BASELINE_PYTHON  interpreter with torch, sentence-transformers, fastapi, uvicorn (default:
#                    the venv scripts/baseline-venv.sh builds, built when missing)
#   OUT              file for the raw Markdown rows (default: none)
#
# Run it on an otherwise idle machine: the load generator shares the cores with the servers.
# Only loopback is used.
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
cd "$(dirname "$0")/.."

rounds="${ROUNDS:-3}"
duration="${DURATION:-15}"
concurrency="${CONCURRENCY:-1 16}"
passages="${PASSAGES:-20}"
words="${WORDS:-93}"
model="${MODEL_DIR:-models/cross-encoder-random}"
bin="${BIN:-target/release/zerobatch}"
zb_port=18810
base_port=18811

[ -x "$bin" ] || die "$bin missing: cargo build --release (or set BIN)"
if [ -n "$(find src Cargo.toml Cargo.lock -newer "$bin" 2>/dev/null | head -n 1)" ]; then
  log "warning: sources newer than $bin; it may be stale"
fi
command -v curl >/dev/null || die "curl missing"
python="${BASELINE_PYTHON:-$(scripts/baseline-venv.sh | tail -n 1)}"
"$python" -c 'import fastapi, sentence_transformers, torch, uvicorn' \
  || die "$python cannot import the baseline's packages"
export HF_HUB_OFFLINE=1
if [ ! -f "$model/model.safetensors" ]; then
  log "no checkpoint in $model: writing one with scripts/make-random-cross-encoder.py"
  "$python" scripts/make-random-cross-encoder.py --output "$model" >&2
fi

zb_pid="" base_pid=""
cleanup() {
  for p in $zb_pid $base_pid; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
}
trap cleanup EXIT

# wait_ready URL PID: until URL answers 200 (at most 300 s) while PID lives.
wait_ready() {

  for _ in $(seq 1 3000); do
    curl -fsS -o /dev/null "$1" 2>/dev/null && return 0
    kill -0 "$2" 2>/dev/null || die "the server (pid $2) exited before it was ready"
    sleep 0.1
  done
  die "$1 not ready within 300 s"
}

# shellcheck disable=SC2086 # ZB_ARGS is a list of flags
"$bin" --host 127.0.0.1 --port "$zb_port" --model "$model" ${ZB_ARGS:-} >/dev/null 2>&1 &
zb_pid=$!
"$python" scripts/baseline-rerank-fastapi.py --model-dir "$model" --port "$base_port" >/dev/null 2>&1 &
base_pid=$!
wait_ready "http://127.0.0.1:$zb_port/readyz" "$zb_pid"
wait_ready "http://127.0.0.1:$base_port/health" "$base_pid"

info=$(curl -fsS "http://127.0.0.1:$zb_port/info")
tokens=$(WORDS="$words" python3 - "http://127.0.0.1:$zb_port" <<'PY'
import importlib.util, json, os, sys, urllib.request
sys.path.insert(0, "scripts")  # rerank-load.py imports load_stats beside it
spec = importlib.util.spec_from_file_location("load", "scripts/rerank-load.py")
load = importlib.util.module_from_spec(spec)
spec.loader.exec_module(load)
text = load.passages(1, int(os.environ["WORDS"]))[0]
req = urllib.request.Request(sys.argv[1] + "/tokenize", data=json.dumps({"inputs": text}).encode(),
                             headers={"Content-Type": "application/json"})
print(len(json.load(urllib.request.urlopen(req))[0]))
PY
)
log "zerobatch: $(python3 -c 'import json,sys; i=json.loads(sys.argv[1]); print(i["task"], i["dtype"], "on", i["kernel"], "workers", i["workers"])' "$info"); a passage is $tokens tokens with [CLS]/[SEP]; $passages passages per request"

rows=$(mktemp)
header='| server | concurrency | req/s | pairs/s | p50 ms | p99 ms | errors | peak RSS MB |'
printf '%s\n|---|---:|---:|---:|---:|---:|---:|---:|\n' "$header"
for round in $(seq 1 "$rounds"); do
  for c in $concurrency; do
    for server in zerobatch baseline; do
      if [ "$server" = zerobatch ]; then port=$zb_port pid=$zb_pid; else port=$base_port pid=$base_pid; fi
      python3 scripts/rerank-load.py "http://127.0.0.1:$port" --concurrency "$c" \
        --duration "$duration" --passages "$passages" --words "$words" --pid "$pid" \
        --markdown-row "$server" | tee -a "$rows"
    done
  done
  log "round $round of $rounds done"
done
if [ -n "${OUT:-}" ]; then cp "$rows" "$OUT"; fi

echo
echo "Medians over $rounds round(s):"
python3 - "$rows" <<'PY'
import statistics, sys
by = {}
for line in open(sys.argv[1]):
    cells = [c.strip() for c in line.strip().strip("|").split("|")]
    server, c, pairs, p50 = cells[0], int(cells[1]), float(cells[3]), float(cells[4])
    by.setdefault((server, c), []).append((pairs, p50))
print("| concurrency | zerobatch pairs/s | baseline pairs/s | ratio | zerobatch p50 ms | baseline p50 ms |")
print("|---:|---:|---:|---:|---:|---:|")
for c in sorted({c for _, c in by}):
    z = by.get(("zerobatch", c), [])
    b = by.get(("baseline", c), [])
    zp = statistics.median(p for p, _ in z) if z else float("nan")
    bp = statistics.median(p for p, _ in b) if b else float("nan")
    zl = statistics.median(l for _, l in z) if z else float("nan")
    bl = statistics.median(l for _, l in b) if b else float("nan")
    ratio = zp / bp if bp else float("nan")
    print(f"| {c} | {zp:.0f} | {bp:.0f} | {ratio:.2f}× | {zl:.1f} | {bl:.1f} |")
PY
rm -f "$rows"
