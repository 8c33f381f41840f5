#!/usr/bin/env python3
"""One stream with a long prompt: time to first token and the decoding rate after it, for
zerobatch builds and llama.cpp's llama-server side by side on one GGUF file.

Each server is started once; then, round after round, each gets the same streamed
completion in turn (a prompt of `--items` short sentences, different every round so that no
prefix cache answers it; 64 new tokens, greedy, EOS ignored). The decoding rate is the tokens
after the first over the time from the first to the last. llama-server runs with
`--parallel 1 -c 4096` so that the whole prompt fits its one slot.

    scripts/long-context.py --model /tmp/qwen3-0.6b-q8_0.gguf \\
        target/release/zerobatch target/llama-cpp/bin/llama-server
"""

import argparse
import http.client
import json
import os
import statistics
import subprocess
import time
import urllib.request


def start(binary, model, port):
    if "llama-server" in os.path.basename(binary):
        cmd = [binary, "-m", model, "-t", "2", "--parallel", "1", "-c", "4096",
               "--port", str(port)]
    else:
        cmd = [binary, "--model", model]
    env = dict(os.environ, PORT=str(port), SHUTDOWN_DELAY_MS="0")
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    for _ in range(1200):
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/health")
            return proc
        except Exception:
            if proc.poll() is not None:
                raise SystemExit(f"{binary} exited with {proc.returncode} while loading")
            time.sleep(0.1)
    proc.kill()
    raise SystemExit(f"{binary} was not ready after 120 s")


def one(port, items, salt, max_tokens):
    prompt = f"Run {salt}. " + " ".join(f"item {i} is {i * 7 % 13}." for i in range(items))
    body = json.dumps({"prompt": prompt, "max_tokens": max_tokens, "temperature": 0,
                       "ignore_eos": True, "stream": True,
                       "stream_options": {"include_usage": True}})
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=900)
    t0 = time.time()
    conn.request("POST", "/v1/completions", body, {"Content-Type": "application/json"})
    response = conn.getresponse()
    if response.status != 200:
        raise SystemExit(f"port {port}: HTTP {response.status}: {response.read()[:300]!r}")
    times, prompt_tokens = [], None
    for line in response:
        line = line.strip()
        if not line.startswith(b"data: ") or line == b"data: [DONE]":
            continue
        event = json.loads(line[6:])
        if event.get("usage"):
            prompt_tokens = event["usage"]["prompt_tokens"]
        if event.get("choices") and event["choices"][0].get("text"):
            times.append(time.time())
    if len(times) < 2:
        raise SystemExit(f"port {port}: fewer than two tokens streamed")
    return times[0] - t0, (len(times) - 1) / (times[-1] - times[0]), prompt_tokens


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True, help="the GGUF file every server loads")
    parser.add_argument("--items", type=int, default=300,
                        help="sentences in the prompt (300: ~2,660 Qwen tokens)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("binaries", nargs="+", help="zerobatch builds and/or llama-server")
    args = parser.parse_args()
    procs = []
    try:
        ports = []
        for i, binary in enumerate(args.binaries):
            ports.append(19700 + i)
            procs.append(start(binary, args.model, ports[-1]))
        results = [[] for _ in args.binaries]
        for r in range(args.rounds):
            for i, port in enumerate(ports):
                results[i].append(one(port, args.items, r, args.max_tokens))
    finally:
        for proc in procs:
            proc.kill()
    for binary, runs in zip(args.binaries, results):
        ttft = statistics.median(x[0] for x in runs)
        rate = statistics.median(x[1] for x in runs)
        rates = " ".join(f"{x[1]:.1f}" for x in runs)
        print(f"{binary}: prompt {runs[0][2]} tokens, time to first token {ttft:.2f} s, "
              f"decoding {rate:.1f} tokens/s (median; rounds: {rates})")


if __name__ == "__main__":
    main()
