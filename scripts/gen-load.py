#!/usr/bin/env python3
"""Streaming load generator for text generation: N concurrent clients, each sending one
streamed OpenAI completion after another for a fixed time, timing every token as it arrives.

Why not oha: oha times whole responses; generation needs the time to the first token and
between tokens, which only a client reading the stream sees. It speaks the OpenAI
`/v1/completions` shape with `stream: true`, which zerobatch and llama.cpp's llama-server
both serve, so the same client measures both.

    scripts/gen-load.py URL --concurrency 8 --duration 20 [--pid PID] [--json] [--extra JSON]
                        [--prompts FILE]

Prints aggregate generated tokens/s (tokens received over the measured window), time to
first token and inter-token latency (p50/p99, ms), requests, errors, and the server's peak
RSS (VmHWM of --pid). Standard library only.
"""

import argparse
import json
import socket
import threading
import time
import urllib.parse

from load_stats import peak_rss_mb, percentile

BODY = {
    "prompt": "Once upon a time",
    "max_tokens": 64,
    "temperature": 0,
    "stream": True,
    # Both servers take it: every request generates exactly max_tokens tokens.
    "ignore_eos": True,
}


def one_request(host, port, path, payload, api_key, timeout):
    """Sends one streamed request; returns (start, [token arrival times]) or raises."""
    body = json.dumps(payload).encode()
    head = (
        f"POST {path} HTTP/1.1\r\nHost: {host}:{port}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\nConnection: close\r\n"
    )
    if api_key:
        head += f"Authorization: Bearer {api_key}\r\n"
    start = time.perf_counter()
    times = []
    with socket.create_connection((host, port), timeout=timeout) as s:
        s.sendall(head.encode() + b"\r\n" + body)
        buf = b""
        headers_done = False
        status = None
        done = False
        while not done:
            chunk = s.recv(65536)
            if not chunk:
                break
            now = time.perf_counter()
            buf += chunk
            if not headers_done:
                if b"\r\n\r\n" not in buf:
                    continue
                header, buf = buf.split(b"\r\n\r\n", 1)
                status = int(header.split(b" ", 2)[1])
                if status != 200:
                    raise RuntimeError(f"status {status}: {buf[:200]!r}")
                headers_done = True
            # Events are separated by a blank line; chunked framing lines are not "data:".
            while b"\n\n" in buf:
                event, buf = buf.split(b"\n\n", 1)
                for line in event.split(b"\n"):
                    line = line.strip()
                    if not line.startswith(b"data:"):
                        continue
                    data = line[5:].strip()
                    if data == b"[DONE]":
                        done = True
                        break
                    try:
                        obj = json.loads(data)
                    except ValueError:
                        continue
                    choices = obj.get("choices") or []
                    if choices and (choices[0].get("text") or "") != "":
                        times.append(now)
                    elif choices and choices[0].get("finish_reason"):
                        pass
    return start, times


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("url", nargs="?", default="http://127.0.0.1:8080")
    ap.add_argument("--concurrency", type=int, default=8)
    ap.add_argument("--duration", type=float, default=20.0, help="seconds of measurement")
    ap.add_argument("--warmup", type=float, default=2.0, help="seconds before measuring")
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--pid", type=int, help="server process, for its peak RSS")
    ap.add_argument("--api-key")
    ap.add_argument("--json", action="store_true", help="print one JSON object")
    ap.add_argument("--extra", type=json.loads, default={},
                    help="JSON object merged into every request body, e.g. a response_format "
                    "(scripts/compare-structured.sh)")
    ap.add_argument("--prompts",
                    help="a JSON list of prompts, sent in turn over all clients (default: one "
                    "short prompt; scripts/compare-prefix.sh sends long ones sharing a prefix)")
    ap.add_argument("--markdown-row", action="store_true",
                    help="print one Markdown table row (scripts/loadtest.sh MODE=generate)")
    args = ap.parse_args()

    u = urllib.parse.urlparse(args.url)
    host, port = u.hostname, u.port or 80
    path = (u.path.rstrip("/") or "") + "/v1/completions"
    payload = dict(BODY, max_tokens=args.max_tokens, **args.extra)
    prompts = [payload["prompt"]]
    if args.prompts:
        with open(args.prompts) as f:
            prompts = json.load(f)
    sent = 0

    t0 = time.perf_counter()
    window = (t0 + args.warmup, t0 + args.warmup + args.duration)
    lock = threading.Lock()
    tokens_in_window = 0
    ttft, itl, requests, errors = [], [], 0, []

    def client():
        nonlocal tokens_in_window, requests, sent
        while time.perf_counter() < window[1]:
            with lock:
                body = dict(payload, prompt=prompts[sent % len(prompts)])
                sent += 1
            try:
                start, times = one_request(host, port, path, body, args.api_key, 120)
            except Exception as e:  # noqa: BLE001 - counted and reported
                with lock:
                    errors.append(str(e))
                time.sleep(0.05)
                continue
            with lock:
                tokens_in_window += sum(1 for t in times if window[0] <= t < window[1])
                # Latencies of requests that started inside the window.
                if window[0] <= start < window[1] and times:
                    requests += 1
                    ttft.append(times[0] - start)
                    itl.extend(b - a for a, b in zip(times, times[1:]))

    threads = [threading.Thread(target=client, daemon=True) for _ in range(args.concurrency)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()

    rss_mb = peak_rss_mb(args.pid) if args.pid else None
    result = {
        "concurrency": args.concurrency,
        "tokens_per_s": tokens_in_window / args.duration,
        "ttft_p50_ms": percentile(ttft, 50) * 1e3,
        "ttft_p99_ms": percentile(ttft, 99) * 1e3,
        "itl_p50_ms": percentile(itl, 50) * 1e3,
        "itl_p99_ms": percentile(itl, 99) * 1e3,
        "requests": requests,
        "errors": len(errors),
        "peak_rss_mb": rss_mb,
    }
    if args.json:
        print(json.dumps(result))
        return
    if args.markdown_row:
        cells = [result["concurrency"]] + [
            "n/a" if result[k] is None else f"{result[k]:.1f}"
            for k in ["tokens_per_s", "ttft_p50_ms", "ttft_p99_ms", "itl_p50_ms", "itl_p99_ms"]
        ] + [result["requests"], result["errors"],
             "n/a" if rss_mb is None else f"{rss_mb:.0f}"]
        print("| " + " | ".join(str(c) for c in cells) + " |")
        return
    for k, v in result.items():
        print(f"{k:>14}: {v:.1f}" if isinstance(v, float) else f"{k:>14}: {v}")
    if errors:
        print("first error:", errors[0])


if __name__ == "__main__":
    main()
