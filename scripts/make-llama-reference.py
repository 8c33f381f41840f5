#!/usr/bin/env python3
r"""Write tests/data/tiny_llama_reference.json: Hugging Face transformers'
LlamaForCausalLM logits for a tiny Llama whose weights both this script and
tests/tiny_llama_reference.rs generate from the same rule, so that zerobatch's
GGUF Llama forward pass (src/generate/llama.rs) can be checked against the
reference implementation without downloading any model.

Not part of the build or CI; run by hand when the reference must be redone.

How it was run (the venv of scripts/make-reference.py: torch 2.15.0 and
transformers 5.24.0 on CPU; nothing else is needed besides numpy):

    HF_HUB_OFFLINE=1 nice -n 15 /tmp/refvenv/bin/python scripts/make-llama-reference.py

Usage: make-llama-reference.py [--output PATH]   (default
tests/data/tiny_llama_reference.json, relative to the repository root).

The model (CONFIG below): vocab 100, hidden 64, 4 heads of 16, 2 KV heads
(grouped-query attention, 2 query heads per KV head), intermediate 128, 2
layers, RMS epsilon 1e-5, RoPE theta 50000 (not the 10000 default, so a loader
that ignored llama.rope.freq_base would fail), context 64, tied embeddings (the
LM head is the embedding table; the GGUF has no output.weight), no biases, SiLU.

The weights (GENERATOR below; the rule's code is scripts/reference_common.py,
which make-gpt2-reference.py shares, and the Rust test implements the same
rule):

* Tensors are numbered in this order, the index being the seed:
  0 token_embd [vocab, hidden]; then for layer l, 1 + 9*l + j with j =
  0 attn_norm [hidden], 1 attn_q [heads*head_dim, hidden],
  2 attn_k [kv_heads*head_dim, hidden], 3 attn_v [kv_heads*head_dim, hidden],
  4 attn_output [hidden, heads*head_dim], 5 ffn_norm [hidden],
  6 ffn_gate [ff, hidden], 7 ffn_up [ff, hidden], 8 ffn_down [hidden, ff];
  last, 1 + 9*layers: output_norm [hidden]. Shapes are PyTorch's [out, in],
  in Hugging Face's layout (attn_q/attn_k not permuted).
* Each tensor is filled in row-major order from splitmix64 seeded with its
  index: state += 0x9E3779B97F4A7C15; z = state;
  z = (z ^ z>>30) * 0xBF58476D1CE4E5B9; z = (z ^ z>>27) * 0x94D049BB133111EB;
  z ^= z>>31 (all mod 2^64). With u = f32(z >> 40) / 2^24 (exact, in [0, 1))
  and r = u*2 - 1 (exact), in float32: a 2-D weight is r * scale
  (token_embd 1.0, attention and gate/up 0.25, ffn_down 0.15), a norm is
  1 + r * 0.1.

The GGUF side (done by the Rust test, described here for the record): the
converter's permutation of attn_q and attn_k rows for llama.cpp's adjacent-pair
RoPE, W.reshape(n, 2, head_dim/2, hidden).swapaxes(1, 2).reshape(W.shape) with
n = heads for Q and kv_heads for K, is applied before writing. Two files: every
tensor F32 ("f32"), and every 2-D tensor Q8_0 with the norms F32 ("q8_0").

For "q8_0" the reference runs transformers on the weights as Q8_0 stores them:
ggml's (and candle's) quantize_row_q8_0 replicated in float32 here (blocks of 32
along a row: d = amax/127, id = 1/d or 0, q = round-half-away(x*id) as i8,
d stored as f16; value = q * f32(d16)), then dequantized. Because the Q/K
permutation moves whole rows, quantizing before or after it gives the same
values. "weight_fnv1a64" holds, per variant and tensor (Hugging Face layout),
FNV-1a 64 of the float32 values' little-endian bytes: the Rust test checks its
own generated (and, for q8_0, candle-quantized) weights against them first, so
a mismatch there is told apart from a forward-pass difference.

Prompts: PROMPT_LENGTHS sequences, prompt i of n ids drawn from splitmix64
seeded with 1000 + i, id = z % vocab.

Recorded per prompt and variant: "logits", the logits of every position of one
causal forward pass over the whole prompt (float32, eager attention). The
script also runs transformers step by step with its KV cache (the first
ceil(n/2) tokens, then one token at a time) and checks that it gives the same
logits within 5e-5 (float32 summation order: the logits reach about 22); the
largest difference is kept in "hf_incremental_max_diff".
Floats are rounded to 7 significant digits.
"""

import argparse
import json
import os

from reference_common import fill_tensor, fnv1a64, prompt_ids, round7

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

CONFIG = {
    "vocab": 100,
    "hidden": 64,
    "heads": 4,
    "kv_heads": 2,
    "head_dim": 16,
    "ff": 128,
    "layers": 2,
    "rms_eps": 1e-5,
    "rope_theta": 50000.0,
    "context": 64,
}

SCALE_EMBD = 1.0
SCALE_ATTN = 0.25
SCALE_FFN_IN = 0.25
SCALE_FFN_DOWN = 0.15
NORM_SPREAD = 0.1

PROMPT_LENGTHS = [1, 7, 20, 33]
PROMPT_SEED = 1000

GENERATOR = (
    "splitmix64 per tensor, seed = tensor index (0 token_embd; 1+9l+j for layer l with "
    "j = attn_norm, attn_q, attn_k, attn_v, attn_output, ffn_norm, ffn_gate, ffn_up, "
    "ffn_down; last output_norm), row-major in Hugging Face layout; r = f32(z>>40)/2^24*2-1; "
    f"weight = r*scale (token_embd {SCALE_EMBD}, attention {SCALE_ATTN}, gate/up "
    f"{SCALE_FFN_IN}, ffn_down {SCALE_FFN_DOWN}); norm = 1 + r*{NORM_SPREAD}; all float32. "
    f"Prompt i: splitmix64 seeded {PROMPT_SEED}+i, id = z % vocab. See scripts/make-llama-reference.py."
)

LAYER_PARTS = [
    "attn_norm",
    "attn_q",
    "attn_k",
    "attn_v",
    "attn_output",
    "ffn_norm",
    "ffn_gate",
    "ffn_up",
    "ffn_down",
]


def tensor_specs():
    """(GGUF name, seed, shape, kind, scale) in seed order."""
    c = CONFIG
    d, hd, ff = c["hidden"], c["head_dim"], c["ff"]
    qw, kvw = c["heads"] * hd, c["kv_heads"] * hd
    specs = [("token_embd.weight", 0, (c["vocab"], d), "weight", SCALE_EMBD)]
    for l in range(c["layers"]):
        shapes = {
            "attn_norm": ((d,), "norm", NORM_SPREAD),
            "attn_q": ((qw, d), "weight", SCALE_ATTN),
            "attn_k": ((kvw, d), "weight", SCALE_ATTN),
            "attn_v": ((kvw, d), "weight", SCALE_ATTN),
            "attn_output": ((d, qw), "weight", SCALE_ATTN),
            "ffn_norm": ((d,), "norm", NORM_SPREAD),
            "ffn_gate": ((ff, d), "weight", SCALE_FFN_IN),
            "ffn_up": ((ff, d), "weight", SCALE_FFN_IN),
            "ffn_down": ((d, ff), "weight", SCALE_FFN_DOWN),
        }
        for j, part in enumerate(LAYER_PARTS):
            shape, kind, scale = shapes[part]
            specs.append((f"blk.{l}.{part}.weight", 1 + 9 * l + j, shape, kind, scale))
    specs.append(("output_norm.weight", 1 + 9 * c["layers"], (d,), "norm", NORM_SPREAD))
    return specs


def q8_0_roundtrip(np, w):
    """ggml's quantize_row_q8_0 then dequantize_row_q8_0, in float32 (candle-core 0.11.1,
    quantized/k_quants.rs, BlockQ8_0::from_float and to_float)."""
    blocks = w.reshape(-1, 32).astype(np.float32)
    amax = np.abs(blocks).max(axis=1)
    d = (amax / np.float32(127)).astype(np.float32)
    safe = np.where(d != 0, d, np.float32(1))
    inv = np.where(d != 0, np.float32(1) / safe, np.float32(0)).astype(np.float32)
    x = (blocks * inv[:, None]).astype(np.float32)
    # Rust's f32::round rounds half away from zero; in float64 the +0.5 is exact.
    q = np.sign(x) * np.floor(np.abs(x).astype(np.float64) + 0.5)
    # `as i8` saturates; and an i8 has no -0 (the + 0.0 turns -0.0 into +0.0, which the
    # weight hashes see).
    q = np.clip(q, -128, 127).astype(np.float32) + np.float32(0)
    d16 = d.astype(np.float16).astype(np.float32)
    return (q * d16[:, None]).astype(np.float32).reshape(w.shape)


def hf_state_dict(torch, weights):
    """Our tensors (GGUF names, Hugging Face layout) under transformers' names."""
    names = {
        "attn_norm": "input_layernorm",
        "attn_q": "self_attn.q_proj",
        "attn_k": "self_attn.k_proj",
        "attn_v": "self_attn.v_proj",
        "attn_output": "self_attn.o_proj",
        "ffn_norm": "post_attention_layernorm",
        "ffn_gate": "mlp.gate_proj",
        "ffn_up": "mlp.up_proj",
        "ffn_down": "mlp.down_proj",
    }
    sd = {
        "model.embed_tokens.weight": weights["token_embd.weight"],
        "model.norm.weight": weights["output_norm.weight"],
    }
    for l in range(CONFIG["layers"]):
        for part, hf in names.items():
            sd[f"model.layers.{l}.{hf}.weight"] = weights[f"blk.{l}.{part}.weight"]
    return {k: torch.from_numpy(v.copy()) for k, v in sd.items()}


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--output", default=os.path.join(REPO_ROOT, "tests", "data", "tiny_llama_reference.json"))
    args = ap.parse_args()

    import numpy as np
    import torch
    import transformers
    from transformers import DynamicCache, LlamaConfig, LlamaForCausalLM

    torch.set_num_threads(1)
    torch.manual_seed(0)
    c = CONFIG
    assert c["hidden"] == c["heads"] * c["head_dim"]

    specs = tensor_specs()
    base = {name: fill_tensor(np, seed, shape, kind, scale) for name, seed, shape, kind, scale in specs}
    variants = {
        "f32": base,
        "q8_0": {
            name: (q8_0_roundtrip(np, w) if w.ndim == 2 else w) for name, w in base.items()
        },
    }
    hashes = {
        v: {name: f"{fnv1a64(w.astype('<f4').tobytes()):016x}" for name, w in ws.items()}
        for v, ws in variants.items()
    }

    config = LlamaConfig(
        vocab_size=c["vocab"],
        hidden_size=c["hidden"],
        intermediate_size=c["ff"],
        num_hidden_layers=c["layers"],
        num_attention_heads=c["heads"],
        num_key_value_heads=c["kv_heads"],
        head_dim=c["head_dim"],
        hidden_act="silu",
        max_position_embeddings=c["context"],
        rms_norm_eps=c["rms_eps"],
        rope_parameters={"rope_type": "default", "rope_theta": c["rope_theta"]},
        tie_word_embeddings=True,
        attention_bias=False,
        mlp_bias=False,
        bos_token_id=None,
        eos_token_id=None,
    )
    ids_list = prompt_ids(PROMPT_LENGTHS, PROMPT_SEED, CONFIG["vocab"])
    results = {v: [] for v in variants}
    incremental_max = 0.0
    for variant, weights in variants.items():
        model = LlamaForCausalLM(config).to(torch.float32)
        model.set_attn_implementation("eager")
        assert model.model.layers[0].self_attn.config._attn_implementation == "eager"
        missing, unexpected = model.load_state_dict(hf_state_dict(torch, weights), strict=False)
        assert not unexpected, unexpected
        assert set(missing) <= {"lm_head.weight"}, missing
        model.tie_weights()
        assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()
        model.eval()
        for ids in ids_list:
            n = len(ids)
            x = torch.tensor([ids], dtype=torch.long)
            with torch.no_grad():
                full = model(input_ids=x, use_cache=False).logits[0].numpy().astype(np.float32)
                # Step by step with transformers' own KV cache.
                cache = DynamicCache(config=config)
                first = (n + 1) // 2
                steps = [model(input_ids=x[:, :first], cache=cache, use_cache=True).logits[0]]
                for t in range(first, n):
                    steps.append(model(input_ids=x[:, t : t + 1], cache=cache, use_cache=True).logits[0])
                assert cache.get_seq_length() == n
                inc = torch.cat(steps).numpy()
            assert full.shape == (n, c["vocab"]), full.shape
            diff = float(np.abs(inc - full).max())
            assert diff < 5e-5, (variant, n, diff)
            incremental_max = max(incremental_max, diff)
            results[variant].append(full)
            print(f"{variant} prompt of {n:2d}: |logits| max {np.abs(full).max():.3f}, incremental diff {diff:.2e}")

    doc = {
        "about": "transformers LlamaForCausalLM logits for a generated tiny Llama; made by scripts/make-llama-reference.py",
        "generator_versions": f"transformers {transformers.__version__}, torch {torch.__version__}, numpy {np.__version__}",
        "config": c,
        "weights": GENERATOR,
        "weight_fnv1a64": hashes,
        "hf_incremental_max_diff": float(f"{incremental_max:.3g}"),
        "prompts": [
            {
                "ids": ids,
                "logits": {v: [[round7(x) for x in row] for row in results[v][i].tolist()] for v in variants},
            }
            for i, ids in enumerate(ids_list)
        ],
    }
    os.makedirs(os.path.dirname(os.path.abspath(args.output)), exist_ok=True)
    tmp = args.output + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(doc, f, separators=(",", ":"))
        f.write("\n")
    json.load(open(tmp, encoding="utf-8"))  # must parse
    os.replace(tmp, args.output)
    print(f"wrote {args.output} ({os.path.getsize(args.output)} bytes)")


if __name__ == "__main__":
    main()
