#!/usr/bin/env python3
r"""Write a Qwen3-Embedding-0.6B directory of the real shapes with random bf16 weights, for
measuring load time and memory (the hub, where the real one lives, is unreachable here; the
values do not change either). The weights are laid out as the released checkpoint stores
them (Qwen3Model tensor names, bf16 safetensors, 151,669-row embedding table tied to the
head); the sentence-transformers files and tokenizer are copied from TEMPLATE_DIR (the tiny
Qwen3 embedder the tests write, whose GPT-2 BPE has fewer tokens than the table has rows:
every id it gives is a row).

    /tmp/zerobatch-baseline-venv/bin/python scripts/make-shaped-qwen3-embedding.py \
        TEMPLATE_DIR OUT_DIR

TEMPLATE_DIR: e.g. /tmp/zerobatch-qwen3-embedding-*/embedder (written by
tests/tiny_qwen3_embedding_reference.rs). Needs torch and safetensors (the venv of
scripts/baseline-venv.sh).
"""

import json
import os
import shutil
import sys

CONFIG = {
    "architectures": ["Qwen3ForCausalLM"],
    "model_type": "qwen3",
    "attention_bias": False,
    "hidden_act": "silu",
    "rms_norm_eps": 1e-6,
    "rope_theta": 1000000.0,
    "rope_scaling": None,
    "sliding_window": None,
    "use_sliding_window": False,
    "tie_word_embeddings": True,
    "torch_dtype": "bfloat16",
    "vocab_size": 151669,
    "hidden_size": 1024,
    "intermediate_size": 3072,
    "num_hidden_layers": 28,
    "num_attention_heads": 16,
    "num_key_value_heads": 8,
    "head_dim": 128,
    "max_position_embeddings": 32768,
}


def main():
    template, out = sys.argv[1], sys.argv[2]
    import torch
    from safetensors.torch import save_file

    torch.manual_seed(0)
    shutil.rmtree(out, ignore_errors=True)
    shutil.copytree(template, out)
    os.remove(os.path.join(out, "model.safetensors"))
    with open(os.path.join(out, "config.json"), "w") as f:
        json.dump(CONFIG, f, indent=2)
    c = CONFIG
    d, ff, hd = c["hidden_size"], c["intermediate_size"], c["head_dim"]
    q, kv = c["num_attention_heads"] * hd, c["num_key_value_heads"] * hd

    def rand(*shape, scale=0.02):
        return (torch.randn(*shape) * scale).to(torch.bfloat16)

    def ones(n):
        return torch.ones(n, dtype=torch.bfloat16)

    tensors = {"embed_tokens.weight": rand(c["vocab_size"], d), "norm.weight": ones(d)}
    for layer in range(c["num_hidden_layers"]):
        p = f"layers.{layer}."
        tensors.update({
            p + "input_layernorm.weight": ones(d),
            p + "post_attention_layernorm.weight": ones(d),
            p + "self_attn.q_proj.weight": rand(q, d),
            p + "self_attn.k_proj.weight": rand(kv, d),
            p + "self_attn.v_proj.weight": rand(kv, d),
            p + "self_attn.o_proj.weight": rand(d, q),
            p + "self_attn.q_norm.weight": ones(hd),
            p + "self_attn.k_norm.weight": ones(hd),
            p + "mlp.gate_proj.weight": rand(ff, d),
            p + "mlp.up_proj.weight": rand(ff, d),
            p + "mlp.down_proj.weight": rand(d, ff),
        })
    save_file(tensors, os.path.join(out, "model.safetensors"))
    params = sum(t.numel() for t in tensors.values())
    print(f"wrote {out}: {params / 1e6:.1f} M parameters in bf16", file=sys.stderr)


if __name__ == "__main__":
    main()
