#!/usr/bin/env python3
r"""Write a GPT-2 small checkpoint with random weights in Hugging Face layout, for
benchmarks when the real weights cannot be downloaded (speed does not depend on the values).

    scripts/make-random-gpt2.py [--output DIR] [--seed N] [--tokenizer-dir DIR] [--check]

The directory (default models/gpt2-random, git-ignored) holds what openai-community/gpt2
holds, with the same shapes and names:
  - config.json: openai-community/gpt2's, field for field (12 layers, n_embd 768, 12 heads,
    n_positions 1024, vocab 50257, gelu_new, layer_norm_epsilon 1e-5, bos/eos 50256,
    task_specific_params {"text-generation": {"do_sample": true, "max_length": 50}});
  - generation_config.json: {"bos_token_id": 50256, "eos_token_id": 50256};
  - model.safetensors: the checkpoint's own tensor names, without the "transformer." prefix
    (wte.weight [50257, 768], wpe.weight [1024, 768], h.{l}.ln_1.weight/bias,
    h.{l}.attn.c_attn.weight [768, 2304] (Conv1D: [in, out]) / bias [2304],
    h.{l}.attn.c_proj.weight [768, 768] / bias, h.{l}.ln_2.weight/bias,
    h.{l}.mlp.c_fc.weight [768, 3072] / bias, h.{l}.mlp.c_proj.weight [3072, 768] / bias,
    ln_f.weight/bias; no lm_head.weight: the head is tied to wte), all f32, 124,439,808
    parameters (498 MB). Matrices and embeddings are normal(0, 0.02) from numpy's PCG64 with
    --seed (default 0), LayerNorm weights 1, every bias 0. The real file also carries the
    old attention-mask buffers (h.{l}.attn.bias); they are not weights, transformers 5 does
    not expect them, and they are left out;
  - vocab.json and merges.txt: GPT-2's real tokenizer, copied from --tokenizer-dir (default:
    the directory scripts/fetch-gpt2-tokenizer.sh prints, which it fetches if needed).

The files are written into a temporary directory beside DIR and renamed into place, so an
interrupted run never leaves a half-written checkpoint. The last line on stdout is DIR's
absolute path. Needs numpy and safetensors; --check also needs torch and transformers.

--check loads the result with transformers, as the baseline does
(AutoModelForCausalLM.from_pretrained(DIR, output_loading_info=True): no missing,
unexpected or mismatched weights; pipeline("text-generation", model=DIR): no warning about
weights), checks that "Once upon a time" is 4 tokens, and generates 35 tokens in all.

How it was run (2026-11-27, /tmp/refvenv: Python 3.11.7, numpy 2.4.6, safetensors 0.8.0,
torch 2.15.0, transformers 5.24.0; about 10 s to write, 5 s to check):

    HF_HUB_OFFLINE=1 /tmp/refvenv/bin/python scripts/make-random-gpt2.py --check
"""

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# openai-community/gpt2's config.json, as published (key order kept).
CONFIG = {
    "activation_function": "gelu_new",
    "architectures": ["GPT2LMHeadModel"],
    "attn_pdrop": 0.1,
    "bos_token_id": 50256,
    "embd_pdrop": 0.1,
    "eos_token_id": 50256,
    "initializer_range": 0.02,
    "layer_norm_epsilon": 1e-05,
    "model_type": "gpt2",
    "n_ctx": 1024,
    "n_embd": 768,
    "n_head": 12,
    "n_layer": 12,
    "n_positions": 1024,
    "resid_pdrop": 0.1,
    "summary_activation": None,
    "summary_first_dropout": 0.1,
    "summary_proj_to_labels": True,
    "summary_type": "cls_index",
    "summary_use_proj": True,
    "task_specific_params": {"text-generation": {"do_sample": True, "max_length": 50}},
    "vocab_size": 50257,
}
GENERATION_CONFIG = {"bos_token_id": 50256, "eos_token_id": 50256}
PARAMETERS = 124_439_808


def tensor_shapes(c):
    """(name, shape, kind) of every tensor, in the checkpoint's order; kind is how it is
    filled: "normal", "ones" (LayerNorm weights) or "zeros" (biases)."""
    d, inner = c["n_embd"], 4 * c["n_embd"]
    out = [
        ("wte.weight", (c["vocab_size"], d), "normal"),
        ("wpe.weight", (c["n_positions"], d), "normal"),
    ]
    for l in range(c["n_layer"]):
        h = f"h.{l}."
        out += [
            (h + "ln_1.weight", (d,), "ones"),
            (h + "ln_1.bias", (d,), "zeros"),
            (h + "attn.c_attn.weight", (d, 3 * d), "normal"),
            (h + "attn.c_attn.bias", (3 * d,), "zeros"),
            (h + "attn.c_proj.weight", (d, d), "normal"),
            (h + "attn.c_proj.bias", (d,), "zeros"),
            (h + "ln_2.weight", (d,), "ones"),
            (h + "ln_2.bias", (d,), "zeros"),
            (h + "mlp.c_fc.weight", (d, inner), "normal"),
            (h + "mlp.c_fc.bias", (inner,), "zeros"),
            (h + "mlp.c_proj.weight", (inner, d), "normal"),
            (h + "mlp.c_proj.bias", (d,), "zeros"),
        ]
    out += [("ln_f.weight", (d,), "ones"), ("ln_f.bias", (d,), "zeros")]
    return out


def make_tensors(seed):
    import numpy as np

    rng = np.random.default_rng(seed)
    tensors = {}
    for name, shape, kind in tensor_shapes(CONFIG):
        if kind == "normal":
            t = rng.standard_normal(shape, dtype=np.float32)
            t *= np.float32(0.02)
        elif kind == "ones":
            t = np.ones(shape, dtype=np.float32)
        else:
            t = np.zeros(shape, dtype=np.float32)
        tensors[name] = t
    total = sum(t.size for t in tensors.values())
    assert total == PARAMETERS, f"{total} parameters, expected {PARAMETERS}"
    return tensors


def tokenizer_dir(arg):
    if arg:
        return arg
    script = os.path.join(REPO_ROOT, "scripts", "fetch-gpt2-tokenizer.sh")
    out = subprocess.run([script], check=True, stdout=subprocess.PIPE, text=True).stdout
    return out.strip().splitlines()[-1]


def write(out_dir, seed, tok_dir):
    from safetensors.numpy import save_file

    for f in ("vocab.json", "merges.txt"):
        if not os.path.isfile(os.path.join(tok_dir, f)):
            sys.exit(f"no {f} in {tok_dir}")
    parent = os.path.dirname(out_dir)
    os.makedirs(parent, exist_ok=True)
    staging = tempfile.mkdtemp(prefix="." + os.path.basename(out_dir) + ".tmp.", dir=parent)
    try:
        with open(os.path.join(staging, "config.json"), "w") as f:
            json.dump(CONFIG, f, indent=2)
            f.write("\n")
        with open(os.path.join(staging, "generation_config.json"), "w") as f:
            json.dump(GENERATION_CONFIG, f, indent=2)
            f.write("\n")
        for f in ("vocab.json", "merges.txt"):
            shutil.copyfile(os.path.join(tok_dir, f), os.path.join(staging, f))
        print(f"make-random-gpt2: drawing {PARAMETERS:,} weights (seed {seed})", file=sys.stderr)
        tensors = make_tensors(seed)
        save_file(tensors, os.path.join(staging, "model.safetensors"), metadata={"format": "pt"})
        del tensors
        for f in os.listdir(staging):
            os.chmod(os.path.join(staging, f), 0o644)
        os.chmod(staging, 0o755)
        if os.path.exists(out_dir):
            old = out_dir + f".old.{os.getpid()}"
            os.rename(out_dir, old)
            os.rename(staging, out_dir)
            shutil.rmtree(old)
        else:
            os.rename(staging, out_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def check(out_dir):
    """Loads DIR as the baseline does and fails on any weight-loading warning."""
    import logging
    import warnings

    import torch
    import transformers
    from transformers import AutoModelForCausalLM, pipeline

    records = []

    class Keep(logging.Handler):
        def emit(self, record):
            records.append(record.getMessage())

    transformers.logging.set_verbosity_warning()
    handler = Keep(level=logging.WARNING)
    transformers.logging.get_logger().addHandler(handler)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model, info = AutoModelForCausalLM.from_pretrained(out_dir, output_loading_info=True)
        for key in ("missing_keys", "unexpected_keys", "mismatched_keys", "error_msgs"):
            if info.get(key):
                sys.exit(f"check: {key}: {sorted(info[key])[:10]}")
        assert model.config.n_layer == 12 and model.lm_head.weight is model.transformer.wte.weight
        n = sum(p.numel() for p in model.parameters())
        assert n == PARAMETERS, f"{n} parameters"
        del model
        generator = pipeline("text-generation", model=out_dir)
        ids = generator.tokenizer("Once upon a time")["input_ids"]
        assert len(ids) == 4, ids
        torch.manual_seed(0)
        out = generator("Once upon a time", max_length=35)[0]["generated_text"]
    n_new = len(generator.tokenizer(out)["input_ids"]) - 4
    messages = records + [str(w.message) for w in caught]
    bad = [m for m in messages if any(s in m.lower() for s in ("missing", "unexpected", "newly initialized", "not initialized", "not used"))]
    for m in messages:
        print(f"check: warning seen: {m.splitlines()[0][:200]}", file=sys.stderr)
    if bad:
        sys.exit(f"check: weight-loading warnings: {bad}")
    print(
        f"check: transformers {transformers.__version__} loads {out_dir}: no missing, unexpected "
        f"or mismatched weights, {PARAMETERS:,} parameters, tied head; \"Once upon a time\" = "
        f"{ids}; pipeline generated {n_new} tokens (~{len(out)} chars)",
        file=sys.stderr,
    )


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--output", default=os.path.join(REPO_ROOT, "models", "gpt2-random"),
                    help="checkpoint directory (default: models/gpt2-random)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--tokenizer-dir", help="directory holding GPT-2's vocab.json and merges.txt "
                    "(default: scripts/fetch-gpt2-tokenizer.sh)")
    ap.add_argument("--check", action="store_true", help="load the result with transformers")
    args = ap.parse_args()

    out_dir = os.path.abspath(args.output)
    write(out_dir, args.seed, tokenizer_dir(args.tokenizer_dir))
    if args.check:
        check(out_dir)
    print(out_dir)


if __name__ == "__main__":
    main()
