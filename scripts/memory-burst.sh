#!/usr/bin/env bash
# memory-burst.sh: peak and after-burst memory of a zerobatch process under bursts of
# near-limit request bodies (the measurement behind the allocator choice and the memory bound
# in docs/reliability.md).
#
# Usage:
#   scripts/memory-burst.sh PID URL [CONCURRENCY...]
#
#   PID          the zerobatch process to watch (its /proc/PID/status)
#   URL          its base URL, e.g. http://127.0.0.1:8080 (loopback only)
#   CONCURRENCY  burst sizes, run one after the other (default: 1 10 30 100 300)
#
# Each burst sends CONCURRENCY simultaneous POST /embed requests whose body is one text of
# ~1.9 MB (just under the default --max-body-bytes of 2 MiB), waits for every answer, then
# waits 5 s and reads the resident memory again. Prints one Markdown row per burst: answers
# by status, VmHWM (peak so far) after the burst, and VmRSS 5 s after it.
#
# Example, comparing allocators without rebuilding (Debian's libjemalloc2 / libmimalloc2.0):
#   LD_PRELOAD=/usr/lib/x86_64-linux-gnu/libjemalloc.so.2 target/release/zerobatch --port 8080 --model DIR &
#   scripts/memory-burst.sh $! http://127.0.0.1:8080
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

[[ $# -ge 2 ]] || { usage >&2; exit 2; }
pid="$1"
url="$2"
shift 2
sizes=("$@")
[[ ${#sizes[@]} -gt 0 ]] || sizes=(1 10 30 100 300)

kb() { awk -v f="$1:" '$1 == f {print $2}' "/proc/$pid/status"; }

printf '| burst | answers | VmHWM after (MB) | VmRSS 5 s after (MB) |\n|---:|---|---:|---:|\n'
printf '| before | - | %d | %d |\n' "$(($(kb VmHWM) / 1024))" "$(($(kb VmRSS) / 1024))"
for n in "${sizes[@]}"; do
  answers=$(URL="$url" N="$n" python3 - <<'PY'
import collections, http.client, json, os, threading, urllib.parse

url = urllib.parse.urlparse(os.environ["URL"])
n = int(os.environ["N"])
words = ["alpha ", "beta ", "gamma ", "delta ", "épsilon ", "zeta\n", "eta, "]
text, i = [], 0
size = 0
while size < 1_900_000:
    w = words[i % len(words)]
    text.append(w)
    size += len(json.dumps(w, ensure_ascii=False).encode()) - 2
    i += 1
body = json.dumps({"inputs": "".join(text)}, ensure_ascii=False).encode()
barrier = threading.Barrier(n)
counts = collections.Counter()
lock = threading.Lock()

def one():
    barrier.wait()
    try:
        c = http.client.HTTPConnection(url.hostname, url.port, timeout=120)
        c.request("POST", "/embed", body, {"Content-Type": "application/json"})
        status = c.getresponse().status
    except Exception as e:  # a reset or a timeout is an answer worth counting too
        status = type(e).__name__
    with lock:
        counts[status] += 1

threads = [threading.Thread(target=one) for _ in range(n)]
for t in threads:
    t.start()
for t in threads:
    t.join()
print(" ".join(f"{k}×{v}" for k, v in sorted(counts.items(), key=str)))
PY
)
  hwm=$(kb VmHWM)
  sleep 5
  printf '| %d | %s | %d | %d |\n' "$n" "$answers" "$((hwm / 1024))" "$(($(kb VmRSS) / 1024))"
done
