#!/usr/bin/env python3
r"""The Python baseline for side-by-side benchmarks: all-MiniLM-L6-v2 served the way
most people serve it, FastAPI + sentence-transformers under uvicorn, one worker.

    POST /embed   {"inputs": "text" | ["text", ...], "normalize": true}
                  -> [[0.0332, 0.0044, ...], ...]   one vector per input, as TEI's /embed
                  (a single string gives a list holding one vector, as TEI does)
    GET  /health  200 once the model is loaded (it is loaded before the port opens)

Not part of the build or CI. It needs a venv with the pinned libraries:
scripts/baseline-venv.sh builds one (by default in
${TMPDIR:-/tmp}/zerobatch-baseline-venv; /tmp/refvenv, built as
scripts/make-reference.py's docstring says plus fastapi and uvicorn, holds the
same pins). Then, from the repository root:

    python=$(scripts/baseline-venv.sh | tail -n 1)
    HF_HUB_OFFLINE=1 "$python" scripts/baseline-fastapi.py \
        --model-dir models/all-MiniLM-L6-v2 --port 8081

    curl -s localhost:8081/embed -H 'Content-Type: application/json' \
        -d '{"inputs": ["A man is eating food."]}'

What is deliberately plain about it, so that it stands for the usual deployment:
  - one uvicorn worker (one process holding one copy of the model), uvicorn's
    own event loop and HTTP parser (uvloop and httptools with uvicorn[standard]);
  - a synchronous handler: FastAPI runs it in its thread pool, so concurrent
    requests call model.encode at the same time from several threads, each with
    torch's default intra-op threads (one per core); no batching across requests;
  - model.encode with its defaults (batch_size 32 within one request),
    normalize_embeddings as asked (default true, as TEI), truncation at the
    model's 256 tokens.
Uvicorn's access log is off by default (--access-log turns it on): a log line
per request costs the Python stack CPU that the other servers do not spend.

Checked on 2026-11-27 with Python 3.11.7, fastapi 0.165.0, uvicorn 0.54.0
(standard extras), sentence-transformers 6.2.0, transformers 5.24.0,
torch 2.15.0: the first vector for "A man is eating food." matched
tests/data/minilm_reference.json (cosine 1.0000000).
"""

import argparse
import os
import sys

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def build_app(model_dir):
    from typing import List, Union

    from fastapi import FastAPI, HTTPException
    from pydantic import BaseModel
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(model_dir, device="cpu")
    app = FastAPI(title="all-MiniLM-L6-v2 (FastAPI + sentence-transformers baseline)")

    class EmbedRequest(BaseModel):
        inputs: Union[str, List[str]]
        normalize: bool = True

    @app.post("/embed")
    def embed(req: EmbedRequest):
        texts = [req.inputs] if isinstance(req.inputs, str) else req.inputs
        if not texts:
            raise HTTPException(status_code=400, detail="inputs is empty")
        vectors = model.encode(texts, normalize_embeddings=req.normalize, convert_to_numpy=True)
        return vectors.tolist()

    @app.get("/health")
    def health():
        return {"status": "ok"}

    return app


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument(
        "--model-dir",
        default=os.path.join(REPO_ROOT, "models", "all-MiniLM-L6-v2"),
        help="local model directory in Hugging Face layout (default: models/all-MiniLM-L6-v2)",
    )
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=8081)
    ap.add_argument("--access-log", action="store_true", help="log every request, as uvicorn does by default")
    args = ap.parse_args()

    if not os.path.isfile(os.path.join(args.model_dir, "model.safetensors")):
        sys.exit(f"no model.safetensors in {args.model_dir} (scripts/fetch-model.sh fetches it)")

    import uvicorn

    app = build_app(args.model_dir)
    # Passing the app object (not an import string) is what keeps it to one process.
    uvicorn.run(app, host=args.host, port=args.port, workers=1, access_log=args.access_log, log_level="info")


if __name__ == "__main__":
    main()
