#!/usr/bin/env python3
r"""Write a cross-encoder of ms-marco-MiniLM-L-6-v2's shape with random weights, for the rerank
benchmarks when a real checkpoint cannot be downloaded (speed does not depend on the values).

    scripts/make-random-cross-encoder.py [--output DIR] [--seed N] [--tokenizer-dir DIR]

The directory (default models/cross-encoder-random, git-ignored) holds a
BertForSequenceClassification checkpoint with one label: all-MiniLM-L6-v2's config.json
(6 layers, hidden 384, 12 heads, intermediate 1536, 512 positions, vocab 30522) with
"architectures": ["BertForSequenceClassification"] and id2label {"0": "LABEL_0"}, the
weights transformers initialises with torch.manual_seed(--seed) (normal(0, 0.02) matrices,
LayerNorm 1, biases 0; pooler and classifier included), saved as model.safetensors by
save_pretrained; and all-MiniLM-L6-v2's tokenizer files (tokenizer.json, vocab.txt,
tokenizer_config.json with model_max_length 512, special_tokens_map.json) from
--tokenizer-dir (default $ZEROBATCH_MODEL_DIR, else models/all-MiniLM-L6-v2). Both zerobatch and sentence-transformers'
CrossEncoder load it as they load the real cross-encoder and truncate pairs at 512 tokens.

The files are written into a temporary directory beside DIR and renamed into place. The last
line on stdout is DIR's absolute path. Needs torch and transformers (the venv of
scripts/baseline-venv.sh); about 5 s.
"""

import argparse
import json
import os
import shutil
import sys
import tempfile

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOKENIZER_FILES = ["tokenizer.json", "vocab.txt", "tokenizer_config.json", "special_tokens_map.json"]


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--output", default=os.path.join(REPO_ROOT, "models", "cross-encoder-random"))
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument(
        "--tokenizer-dir",
        default=os.environ.get("ZEROBATCH_MODEL_DIR") or os.path.join(REPO_ROOT, "models", "all-MiniLM-L6-v2"),
    )
    args = ap.parse_args()

    import torch
    from transformers import BertConfig, BertForSequenceClassification

    with open(os.path.join(args.tokenizer_dir, "config.json")) as f:
        config = json.load(f)
    config.update(
        architectures=["BertForSequenceClassification"],
        id2label={"0": "LABEL_0"},
        label2id={"LABEL_0": 0},
    )
    torch.manual_seed(args.seed)
    model = BertForSequenceClassification(BertConfig(**config)).eval()

    out = os.path.abspath(args.output)
    parent = os.path.dirname(out)
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=".cross-encoder-", dir=parent)
    try:
        model.save_pretrained(tmp, safe_serialization=True)
        for name in TOKENIZER_FILES:
            shutil.copy(os.path.join(args.tokenizer_dir, name), os.path.join(tmp, name))
        if os.path.exists(out):
            shutil.rmtree(out)
        os.rename(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    print(f"wrote a random cross-encoder ({sum(p.numel() for p in model.parameters())} parameters)", file=sys.stderr)
    print(out)


if __name__ == "__main__":
    main()
