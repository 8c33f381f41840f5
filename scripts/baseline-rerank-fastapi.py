#!/usr/bin/env python3
r"""The Python baseline for the rerank benchmark: a cross-encoder served the way most people
serve one, FastAPI + sentence-transformers' CrossEncoder under uvicorn, one worker.

    POST /rerank  {"query": "...", "texts": ["...", ...], "raw_scores": false}
                  -> [{"index": 3, "score": 0.97}, ...]   best first, as TEI's /rerank
                  (scores: CrossEncoder.predict, the model's activation unless raw_scores)
    GET  /health  200 once the model is loaded (it is loaded before the port opens)

Not part of the build or CI. It needs the venv of scripts/baseline-venv.sh:

    python=$(scripts/baseline-venv.sh | tail -n 1)
    HF_HUB_OFFLINE=1 "$python" scripts/baseline-rerank-fastapi.py \
        --model-dir models/cross-encoder-random --port 8081

What is deliberately plain about it, as in scripts/baseline-fastapi.py: one uvicorn worker,
a synchronous handler (FastAPI runs it in its thread pool, so concurrent requests call
predict at the same time, each with torch's default intra-op threads), no batching across
requests; CrossEncoder.predict with its defaults (batch_size 32 within a request, pairs
truncated at the model's limit).
"""

import argparse
import os
import sys


def build_app(model_dir):
    from typing import List

    import torch
    from fastapi import FastAPI, HTTPException
    from pydantic import BaseModel
    from sentence_transformers import CrossEncoder

    model = CrossEncoder(model_dir, device="cpu")
    app = FastAPI(title="cross-encoder (FastAPI + sentence-transformers baseline)")

    class RerankRequest(BaseModel):
        query: str
        texts: List[str]
        raw_scores: bool = False

    @app.post("/rerank")
    def rerank(req: RerankRequest):
        if not req.texts:
            raise HTTPException(status_code=400, detail="texts is empty")
        activation = torch.nn.Identity() if req.raw_scores else None
        scores = model.predict([[req.query, t] for t in req.texts], activation_fn=activation, convert_to_numpy=True)
        order = sorted(range(len(req.texts)), key=lambda i: -float(scores[i]))
        return [{"index": i, "score": float(scores[i])} for i in order]

    @app.get("/health")
    def health():
        return {"status": "ok"}

    return app


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model-dir", required=True)
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=8081)
    args = ap.parse_args()
    import uvicorn

    app = build_app(os.path.abspath(args.model_dir))
    print(f"serving {args.model_dir} on {args.host}:{args.port}", file=sys.stderr)
    uvicorn.run(app, host=args.host, port=args.port, workers=1, access_log=False, log_level="warning")


if __name__ == "__main__":
    main()
