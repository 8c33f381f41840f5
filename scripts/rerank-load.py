#!/usr/bin/env python3
"""Load generator for reranking: N concurrent clients, each posting TEI's /rerank body (one
query, PASSAGES passages of about WORDS words) one request after another on a keep-alive
connection, for a fixed time. The same body goes to zerobatch and to the FastAPI baseline
(scripts/baseline-rerank-fastapi.py), which both answer TEI's shape.

    scripts/rerank-load.py URL --concurrency 16 --duration 15 [--passages 20] [--words 93]
                           [--pid PID] [--json | --markdown-row LABEL]

Prints requests/s and pairs/s (answered 200s over the measured window, after --warmup
seconds), latency p50/p99 (ms) of the requests that started in the window, errors, and the
server's peak RSS (VmHWM of --pid). Every answer is checked: a list of PASSAGES ranks, best
first. Standard library only. Only point it at servers you run (loopback or your own test
hosts).

The passages: deterministic, different from each other (words drawn from a fixed list by a
seeded generator), so no server can answer from a cache; 93 words make about 100 tokens with
MiniLM's WordPiece tokenizer (scripts/compare-rerank.sh prints the count zerobatch's
/tokenize gives).
"""

import argparse
import http.client
import json
import random
import sys
import threading
import time
import urllib.parse

from load_stats import peak_rss_mb, percentile

QUERY = "how does a cross-encoder rank the passages a vector search returned"
WORDS = (
    "the model reads query and passage together so attention crosses both texts while a "
    "serving system batches pairs from many requests into one forward pass on the cpu cores "
    "latency throughput tokens memory cache replica container queue worker thread kernel "
    "vector search retrieval ranking relevance document chunk index embedding score label "
    "training evaluation benchmark dataset language english french german spanish river "
    "mountain city history science music garden kitchen window morning evening summer"
).split()


def passages(n, words, seed=0):
    rng = random.Random(seed)
    return [" ".join(rng.choice(WORDS) for _ in range(words)) + "." for _ in range(n)]


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("url", nargs="?", default="http://127.0.0.1:8080")
    ap.add_argument("--concurrency", type=int, default=16)
    ap.add_argument("--duration", type=float, default=15.0, help="seconds of measurement")
    ap.add_argument("--warmup", type=float, default=2.0, help="seconds before measuring")
    ap.add_argument("--passages", type=int, default=20)
    ap.add_argument("--words", type=int, default=93, help="words per passage (93: ~100 tokens)")
    ap.add_argument("--pid", type=int, help="server process, for its peak RSS")
    ap.add_argument("--json", action="store_true", help="print one JSON object")
    ap.add_argument("--markdown-row", metavar="LABEL", help="print one Markdown table row")
    args = ap.parse_args()

    u = urllib.parse.urlparse(args.url)
    host, port = u.hostname, u.port or 80
    path = (u.path.rstrip("/") or "") + "/rerank"
    body = json.dumps({"query": QUERY, "texts": passages(args.passages, args.words)}).encode()
    headers = {"Content-Type": "application/json"}

    t0 = time.perf_counter()
    window = (t0 + args.warmup, t0 + args.warmup + args.duration)
    lock = threading.Lock()
    done_in_window, latencies, errors = 0, [], []

    def client():
        nonlocal done_in_window
        conn = None
        while time.perf_counter() < window[1]:
            start = time.perf_counter()
            try:
                if conn is None:
                    conn = http.client.HTTPConnection(host, port, timeout=120)
                conn.request("POST", path, body=body, headers=headers)
                r = conn.getresponse()
                data = r.read()
                if r.status != 200:
                    raise RuntimeError(f"status {r.status}: {data[:200]!r}")
                ranks = json.loads(data)
                if len(ranks) != args.passages or not all("index" in x and "score" in x for x in ranks):
                    raise RuntimeError(f"not {args.passages} ranks: {data[:200]!r}")
            except Exception as e:  # noqa: BLE001 - counted and reported
                with lock:
                    errors.append(str(e))
                if conn is not None:
                    conn.close()
                conn = None
                time.sleep(0.05)
                continue
            end = time.perf_counter()
            with lock:
                if window[0] <= end < window[1]:
                    done_in_window += 1
                if window[0] <= start < window[1]:
                    latencies.append(end - start)
        if conn is not None:
            conn.close()

    threads = [threading.Thread(target=client, daemon=True) for _ in range(args.concurrency)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()

    rss_mb = peak_rss_mb(args.pid) if args.pid else None
    rps = done_in_window / args.duration
    result = {
        "concurrency": args.concurrency,
        "passages": args.passages,
        "requests_per_s": rps,
        "pairs_per_s": rps * args.passages,
        "p50_ms": percentile(latencies, 50) * 1e3,
        "p99_ms": percentile(latencies, 99) * 1e3,
        "requests": len(latencies),
        "errors": len(errors),
        "peak_rss_mb": rss_mb,
    }
    if args.json:
        print(json.dumps(result))
    elif args.markdown_row:
        cells = [args.markdown_row, args.concurrency, f"{rps:.1f}", f"{rps * args.passages:.0f}",
                 f"{result['p50_ms']:.1f}", f"{result['p99_ms']:.1f}", len(errors),
                 "n/a" if rss_mb is None else f"{rss_mb:.0f}"]
        print("| " + " | ".join(str(c) for c in cells) + " |")
    else:
        for k, v in result.items():
            print(f"{k:>15}: {v:.1f}" if isinstance(v, float) else f"{k:>15}: {v}")
    if errors:
        print("first error:", errors[0], file=sys.stderr)


if __name__ == "__main__":
    main()
