#!/usr/bin/env python3
"""Load generator for a retrieval stack's embedding traffic: short queries and long passages
at once. N concurrent clients post TEI's /embed body ({"inputs": text}) one request after
another on a keep-alive connection for a fixed time; every --passage-every'th client sends the
107-token passage of scripts/loadtest.sh (INPUT=passage), the others its 8-token query. So the
server's batches mix lengths, as a RAG pipeline's do (queries embedded while documents are
indexed), which one-text loads (scripts/loadtest.sh) never show.

    scripts/embed-mix-load.py URL --concurrency 16 --duration 15 [--passage-every 2]
                              [--pid PID] [--json]

Prints, for each kind and in all: requests/s over the measured window (after --warmup
seconds), latency p50/p99 (ms) of the requests that started in it; errors; the server's peak
RSS (VmHWM of --pid). Every answer is checked: one finite vector. Standard library only.
Only point it at servers you run (loopback or your own test hosts).
"""

import argparse
import http.client
import json
import math
import sys
import threading
import time
import urllib.parse

from load_stats import peak_rss_mb, percentile

QUERY = "A man is eating food."
PASSAGE = (
    "The quick brown fox jumps over the lazy dog while the committee debated the budget for "
    "next year's infrastructure projects, including bridges, tunnels and a new light-rail line. "
) * 3


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("url", nargs="?", default="http://127.0.0.1:8080")
    ap.add_argument("--concurrency", type=int, default=16)
    ap.add_argument("--duration", type=float, default=15.0)
    ap.add_argument("--warmup", type=float, default=2.0)
    ap.add_argument("--passage-every", type=int, default=2,
                    help="every Nth client sends the passage (default 2: half of them)")
    ap.add_argument("--pid", type=int)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    if args.concurrency < 1 or args.passage_every < 1:
        sys.exit("--concurrency and --passage-every must be at least 1")

    url = urllib.parse.urlparse(args.url)
    bodies = {kind: json.dumps({"inputs": text}).encode()
              for kind, text in (("query", QUERY), ("passage", PASSAGE))}
    start = time.monotonic() + args.warmup
    stop = start + args.duration
    lock = threading.Lock()
    done = {"query": [], "passage": []}
    errors = []

    def client(i):
        kind = "passage" if i % args.passage_every == 0 else "query"
        conn = http.client.HTTPConnection(url.hostname, url.port or 80, timeout=60)
        while True:
            t0 = time.monotonic()
            if t0 >= stop:
                return
            try:
                conn.request("POST", "/embed", bodies[kind], {"content-type": "application/json"})
                resp = conn.getresponse()
                data = resp.read()
                if resp.status != 200:
                    raise RuntimeError(f"HTTP {resp.status}: {data[:200]!r}")
                vectors = json.loads(data)
                if len(vectors) != 1 or not all(math.isfinite(v) for v in vectors[0]):
                    raise RuntimeError(f"not one finite vector: {data[:200]!r}")
            except Exception as e:  # noqa: BLE001 (reported, the client goes on)
                with lock:
                    errors.append(str(e))
                conn.close()
                conn = http.client.HTTPConnection(url.hostname, url.port or 80, timeout=60)
                continue
            t1 = time.monotonic()
            if start <= t0 and t1 <= stop:
                with lock:
                    done[kind].append(t1 - t0)

    threads = [threading.Thread(target=client, args=(i,), daemon=True)
               for i in range(args.concurrency)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()

    result = {"concurrency": args.concurrency, "passage_every": args.passage_every}
    every = done["query"] + done["passage"]
    for kind, lat in (("query", done["query"]), ("passage", done["passage"]), ("all", every)):
        result[f"{kind}_per_s"] = round(len(lat) / args.duration, 1)
        result[f"{kind}_p50_ms"] = round(percentile(lat, 50) * 1000, 1)
        result[f"{kind}_p99_ms"] = round(percentile(lat, 99) * 1000, 1)
    result["errors"] = len(errors)
    if args.pid:
        result["peak_rss_mb"] = round(peak_rss_mb(args.pid), 1)
    if args.json:
        print(json.dumps(result))
    else:
        for key, value in result.items():
            print(f"{key:>16}: {value}")
    if errors:
        print(f"first error: {errors[0]}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
