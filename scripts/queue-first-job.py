#!/usr/bin/env python3
"""How soon a cold-started replica answers a job already waiting in its Redis stream, as when
KEDA starts a queue worker from zero (docs/benchmarks.md, "Queue drain").

    python3 scripts/queue-first-job.py [RUNS]     # default 5; needs redis-server and
                                                  # target/release/zerobatch (cargo build --release)

Each run: a fresh redis-server on a free loopback port with one job in the stream, then exec of
the replica; it polls /readyz and the job's hash about every millisecond and prints exec →
ready, exec → answered and ready → answered, then the medians.
"""

import json
import os
import socket
import statistics
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BINARY = os.path.join(ROOT, "target/release/zerobatch")
MODEL = os.environ.get("MODEL_DIR", os.path.join(ROOT, "models/all-MiniLM-L6-v2"))


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def redis(port, *args):
    """One command over the wire protocol; the raw reply."""
    with socket.create_connection(("127.0.0.1", port)) as s:
        parts = [b"*%d\r\n" % len(args)]
        for a in args:
            a = a.encode()
            parts.append(b"$%d\r\n%s\r\n" % (len(a), a))
        s.sendall(b"".join(parts))
        return s.recv(65536)


def ready(port):
    try:
        with socket.create_connection(("127.0.0.1", port)) as s:
            s.sendall(b"GET /readyz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            return s.recv(64).startswith(b"HTTP/1.1 200")
    except OSError:
        return False


def run_once(n):
    rport, hport = free_port(), free_port()
    server = subprocess.Popen(
        ["redis-server", "--port", str(rport), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
        stdout=subprocess.DEVNULL,
    )
    try:
        for _ in range(200):
            try:
                if b"PONG" in redis(rport, "PING"):
                    break
            except OSError:
                time.sleep(0.01)
        job = {"id": f"first{n}", "route": "/embed", "body": {"inputs": "A man is eating food."}}
        redis(rport, "XADD", "jobs", "*", "job", json.dumps(job))
        t0 = time.monotonic()
        replica = subprocess.Popen(
            [BINARY, "--host", "127.0.0.1", "--port", str(hport), "--model", MODEL,
             "--queue", f"redis://127.0.0.1:{rport}/jobs", "--shutdown-delay-ms", "0"],
            stderr=subprocess.DEVNULL,
        )
        t_ready = t_done = None
        while t_done is None:
            now = time.monotonic()
            if now - t0 > 30:
                raise SystemExit("no answer within 30 s")
            if t_ready is None and ready(hport):
                t_ready = now
            if b"succeeded" in redis(rport, "HGET", f"jobs:job:first{n}", "state"):
                t_done = now
            time.sleep(0.0005)
        replica.terminate()
        replica.wait()
        t_ready = t_ready or t_done
        return (t_ready - t0) * 1e3, (t_done - t0) * 1e3, (t_done - t_ready) * 1e3
    finally:
        server.terminate()
        server.wait()


def main():
    runs = int(sys.argv[1]) if len(sys.argv) > 1 else 5
    rows = []
    for n in range(runs):
        row = run_once(n)
        rows.append(row)
        print("exec→ready %.1f ms, exec→answered %.1f ms, ready→answered %.1f ms" % row)
    medians = [statistics.median(col) for col in zip(*rows)]
    print("median: exec→ready %.1f ms, exec→answered %.1f ms, ready→answered %.1f ms" % tuple(medians))


if __name__ == "__main__":
    main()
