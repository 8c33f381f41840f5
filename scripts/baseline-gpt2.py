#!/usr/bin/env python3
r"""The application zerobatch's generation replaces, for side-by-side benchmarks: GPT-2
served the way the usual tutorial serves it, FastAPI + transformers.pipeline under uvicorn,
one worker.

    POST /generate  {"text": "Once upon a time"}
                    -> {"generated_text": "Once upon a time<continuation>"}
                    max_length=35 tokens in all (prompt included), sampled
    GET  /health    200 once the pipeline is loaded (it is loaded before the port opens);
                    not part of the upstream app, only for the benchmark's readiness probe

Not part of the build or CI. It needs torch, transformers, fastapi and uvicorn: the venv
of scripts/baseline-venv.sh, or /tmp/refvenv (the pins of scripts/make-reference.py's
docstring plus fastapi and uvicorn). The model is a directory in Hugging Face layout; with
the hub out of reach, scripts/make-random-gpt2.py writes GPT-2 small with random weights
(same shapes, same speed). From the repository root:

    HF_HUB_OFFLINE=1 /tmp/refvenv/bin/python scripts/baseline-gpt2.py \
        --model-dir models/gpt2-random --port 8082

    curl -s localhost:8082/generate -H 'Content-Type: application/json' \
        -d '{"text": "Once upon a time"}'

The handler is the tutorial's, kept as it is on purpose:

    generator = pipeline("text-generation", model="gpt2")

    @app.post("/generate")
    def generate(item: Item):
        result = generator(item.text, max_length=35)
        return {"generated_text": result[0]["generated_text"]}

  - a synchronous `def` handler: FastAPI runs it in its thread pool (anyio's, 40 threads),
    so concurrent requests each run their own generate() at the same time, a batch of one
    each, every forward pass with torch's default intra-op threads (one per core); nothing
    batches requests together. (The other common version, `async def`, runs generate() on
    the event loop and so serves strictly one request at a time.)
  - the pipeline's defaults: transformers 5.x no longer reads config.json's
    task_specific_params; the text-generation pipeline samples (do_sample=True) with its
    own temperature 0.7 and generate()'s top-k 50, stops at EOS (50256), and max_length=35
    counts the prompt ("Once upon a time" is 4 tokens, so 31 new tokens). GPT-2 has no pad
    token; nothing is padded with one prompt per call.
  - one uvicorn worker (the app object is passed, not an import string, so one process
    holds the model), uvicorn's own loop and HTTP parser; access log off (--access-log
    turns it on), as in scripts/baseline-fastapi.py.
It prints, to stderr, how long the imports and pipeline(...) took.

Checked on 2026-11-27 with Python 3.11.7, fastapi 0.165.0, uvicorn 0.54.0, transformers
5.24.0, torch 2.15.0 (CPU), on the checkpoint of scripts/make-random-gpt2.py.
"""

import argparse
import os
import sys
import time

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def log(msg):
    print(f"baseline-gpt2: {msg}", file=sys.stderr, flush=True)


def build_app(model_dir):
    t0 = time.perf_counter()
    from fastapi import FastAPI
    from pydantic import BaseModel
    from transformers import pipeline

    t1 = time.perf_counter()
    generator = pipeline("text-generation", model=model_dir)
    t2 = time.perf_counter()
    log(f"imports {(t1 - t0) * 1e3:.0f} ms, pipeline(...) {(t2 - t1) * 1e3:.0f} ms")

    app = FastAPI(title="GPT-2 (FastAPI + transformers pipeline baseline)")

    class Item(BaseModel):
        text: str

    @app.post("/generate")
    def generate(item: Item):
        result = generator(item.text, max_length=35)
        return {"generated_text": result[0]["generated_text"]}

    @app.get("/health")
    def health():
        return {"status": "ok"}

    return app


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument(
        "--model-dir",
        default=os.path.join(REPO_ROOT, "models", "gpt2-random"),
        help="GPT-2 checkpoint in Hugging Face layout (default: models/gpt2-random, from "
        "scripts/make-random-gpt2.py)",
    )
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=8082)
    ap.add_argument("--access-log", action="store_true", help="log every request, as uvicorn does by default")
    args = ap.parse_args()

    if not os.path.isfile(os.path.join(args.model_dir, "model.safetensors")):
        sys.exit(f"no model.safetensors in {args.model_dir} (scripts/make-random-gpt2.py writes one)")

    app = build_app(args.model_dir)

    import uvicorn

    # Passing the app object (not an import string) is what keeps it to one process.
    uvicorn.run(app, host=args.host, port=args.port, workers=1, access_log=args.access_log, log_level="info")


if __name__ == "__main__":
    main()
