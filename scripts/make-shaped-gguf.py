#!/usr/bin/env python3
r"""Write a GGUF file with the real shapes and quantization mix of a released model and random
values, for speed comparisons: a step's time depends on the shapes and the block types, not
on the values, and the real files cannot be downloaded here.

    PYTHONPATH=target/llama-cpp/src/llama.cpp/gguf-py python3 scripts/make-shaped-gguf.py \
        --shape qwen3-0.6b --quant q4_k_m --out /tmp/qwen3-0.6b-q4_k_m.gguf

Needs numpy and gguf-py (llama.cpp's, from the tree scripts/build-llama-cpp.sh unpacks).

Shapes (from the models' config.json): qwen3-0.6b (28 layers, hidden 1024, 16 query heads
and 8 KV heads of 128, FF 3072, vocabulary 151,936, tied embeddings), qwen2.5-0.5b (24
layers, hidden 896, 14 and 2 heads of 64, FF 4864, vocabulary 151,936, Q/K/V biases, tied)
and gemma3-1b (26 layers, hidden 1152, 4 query heads and 1 KV head of 256, FF 6912,
vocabulary 262,144, tied; five of six layers slide over 512 positions at RoPE base 10,000,
the sixth global at 1,000,000; Q/K norms and the post-attention and post-FFN norms).

Quantization mixes, as llama-quantize chooses them (llama.cpp's llama_tensor_get_type):
- q4_k_m: Q4_K everywhere but attn_v and ffn_down on the layers `use_more_bits` picks (the
  first and last eighth, and every third between) and the tied embedding table, which are
  Q6_K (where 256 does not divide a row, as Qwen2.5-0.5B's 896, llama-quantize's fallbacks:
  Q5_0 for Q4_K, Q8_0 for Q6_K); norms and biases F32;
- q5_k_m: the same choice with Q5_K in place of Q4_K (fallback Q5_1 where 256 does not
  divide a row);
- q8_0: every 2-D tensor Q8_0.

Gemma 3's 1152-wide rows are not a multiple of 256 either, so its Q/K/V, gate and up
projections are Q5_0 and its embedding table Q8_0 in q4_k_m, as llama-quantize writes them.

Blocks are random bytes with small, finite f16 scales, so activations stay finite. The
vocabulary is GPT-2's byte-level BPE (models/gpt2-tokenizer, or --gpt2-dir) padded with
plain-text tokens (` w123`) to the model's size, pre-tokenizer `qwen2`, `<|im_end|>` as end of turn
(for every shape: speed does not depend on the vocabulary's contents, only on its size).
"""

import argparse
import json
from pathlib import Path

import numpy as np
import gguf

SHAPES = {
    "qwen3-0.6b": dict(arch="qwen3", layers=28, hidden=1024, heads=16, kv_heads=8, head_dim=128,
                       ff=3072, vocab=151936, rope_base=1_000_000.0, eps=1e-6, qkv_bias=False,
                       qk_norm=True, context=40960),
    "qwen2.5-0.5b": dict(arch="qwen2", layers=24, hidden=896, heads=14, kv_heads=2, head_dim=64,
                         ff=4864, vocab=151936, rope_base=1_000_000.0, eps=1e-6, qkv_bias=True,
                         qk_norm=False, context=32768),
    "gemma3-1b": dict(arch="gemma3", layers=26, hidden=1152, heads=4, kv_heads=1, head_dim=256,
                      ff=6912, vocab=262144, rope_base=1_000_000.0, eps=1e-6, qkv_bias=False,
                      qk_norm=True, context=32768, sliding_window=512, sandwich_norms=True),
}

Q = gguf.GGMLQuantizationType


def use_more_bits(i, n):
    return i < n // 8 or i >= 7 * n // 8 or (i - n // 8) % 3 == 2


def random_blocks(rng, qtype, rows, k):
    """`rows` rows of `k` values of `qtype` as random bytes with sane f16 scales."""
    block_size, type_size = gguf.GGML_QUANT_SIZES[qtype]
    assert k % block_size == 0, (qtype, k)
    blocks = rows * (k // block_size)
    data = rng.integers(0, 256, size=(blocks, type_size), dtype=np.uint8)

    def f16(values):
        return np.asarray(values, dtype=np.float16).view(np.uint8).reshape(blocks, 2)

    if qtype in (Q.Q8_0, Q.Q5_0):
        data[:, 0:2] = f16(rng.uniform(0.0005, 0.002, blocks))
    elif qtype == Q.Q5_1:
        data[:, 0:2] = f16(rng.uniform(0.0005, 0.002, blocks))  # d
        data[:, 2:4] = f16(rng.uniform(-0.02, 0.0, blocks))  # m
    elif qtype in (Q.Q4_K, Q.Q5_K):
        data[:, 0:2] = f16(rng.uniform(0.0005, 0.002, blocks))  # d
        data[:, 2:4] = f16(rng.uniform(0.0005, 0.002, blocks))  # dmin
    elif qtype == Q.Q6_K:
        data[:, 192:208] = rng.integers(-8, 8, size=(blocks, 16), dtype=np.int8).view(np.uint8)
        data[:, 208:210] = f16(rng.uniform(0.0005, 0.002, blocks))
    else:
        raise ValueError(qtype)
    return data.reshape(rows, -1)


def vocabulary(gpt2_dir, size):
    vocab = json.loads((gpt2_dir / "vocab.json").read_text(encoding="utf-8"))
    tokens = [t for t, _ in sorted(vocab.items(), key=lambda kv: kv[1])]
    merges = [line for line in (gpt2_dir / "merges.txt").read_text(encoding="utf-8").splitlines()
              if line and not line.startswith("#version")]
    types = [gguf.TokenType.NORMAL] * len(tokens)
    for special in ["<|im_start|>", "<|im_end|>"]:
        tokens.append(special)
        types.append(gguf.TokenType.CONTROL)
    # Plain text, so that whatever a random model picks streams as text (control tokens
    # would stream as nothing, and load generators count text).
    while len(tokens) < size:
        tokens.append(f"\u0120w{len(tokens)}")
        types.append(gguf.TokenType.NORMAL)
    return tokens, types, merges


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--shape", choices=sorted(SHAPES), required=True)
    ap.add_argument("--quant", choices=["q4_k_m", "q5_k_m", "q8_0"], required=True)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--gpt2-dir", type=Path,
                    default=Path(__file__).resolve().parent.parent / "models" / "gpt2-tokenizer")
    ap.add_argument("--seed", type=int, default=1)
    a = ap.parse_args()
    s = SHAPES[a.shape]
    rng = np.random.default_rng(a.seed)
    arch, n, d = s["arch"], s["layers"], s["hidden"]
    qw, kvw = s["heads"] * s["head_dim"], s["kv_heads"] * s["head_dim"]

    def qtype(name, layer=None):
        if a.quant == "q8_0":
            return Q.Q8_0
        if name == "token_embd":
            return Q.Q6_K
        if name in ("attn_v", "ffn_down") and use_more_bits(layer, n):
            return Q.Q6_K
        return Q.Q5_K if a.quant == "q5_k_m" else Q.Q4_K

    w = gguf.GGUFWriter(str(a.out), arch)
    w.add_name(f"{a.shape} ({a.quant}, random values)")
    w.add_context_length(4096)
    w.add_embedding_length(d)
    w.add_block_count(n)
    w.add_feed_forward_length(s["ff"])
    w.add_head_count(s["heads"])
    w.add_head_count_kv(s["kv_heads"])
    w.add_key_length(s["head_dim"])
    w.add_value_length(s["head_dim"])
    w.add_rope_freq_base(s["rope_base"])
    w.add_layer_norm_rms_eps(s["eps"])
    if "sliding_window" in s:
        # llama.cpp's gemma3 graph: every sixth layer global, the others sliding at base 10,000
        # (both its defaults, as in the released files).
        w.add_sliding_window(s["sliding_window"])
    w.add_file_type({"q4_k_m": gguf.LlamaFileType.MOSTLY_Q4_K_M,
                     "q5_k_m": gguf.LlamaFileType.MOSTLY_Q5_K_M,
                     "q8_0": gguf.LlamaFileType.MOSTLY_Q8_0}[a.quant])
    tokens, types, merges = vocabulary(a.gpt2_dir, s["vocab"])
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("qwen2")
    w.add_token_list(tokens)
    w.add_token_types(types)
    w.add_token_merges(merges)
    w.add_eos_token_id(tokens.index("<|im_end|>"))
    w.add_bos_token_id(tokens.index("<|endoftext|>"))
    w.add_add_bos_token(False)

    def norm(name, size):
        w.add_tensor(name, (1.0 + 0.1 * rng.standard_normal(size)).astype(np.float32))

    def linear(name, kind, layer, rows, k):
        t = qtype(kind, layer)
        if k % 256 and t in (Q.Q4_K, Q.Q5_K, Q.Q6_K):
            # llama-quantize's fallback where k-quants' 256 does not divide a row.
            t = {Q.Q4_K: Q.Q5_0, Q.Q5_K: Q.Q5_1, Q.Q6_K: Q.Q8_0}[t]
        w.add_tensor(name, random_blocks(rng, t, rows, k), raw_dtype=t)

    linear("token_embd.weight", "token_embd", None, s["vocab"], d)
    for i in range(n):
        p = f"blk.{i}."
        norm(p + "attn_norm.weight", d)
        linear(p + "attn_q.weight", "attn_q", i, qw, d)
        linear(p + "attn_k.weight", "attn_k", i, kvw, d)
        linear(p + "attn_v.weight", "attn_v", i, kvw, d)
        if s["qkv_bias"]:
            for part, size in (("q", qw), ("k", kvw), ("v", kvw)):
                w.add_tensor(p + f"attn_{part}.bias", (0.01 * rng.standard_normal(size)).astype(np.float32))
        if s["qk_norm"]:
            norm(p + "attn_q_norm.weight", s["head_dim"])
            norm(p + "attn_k_norm.weight", s["head_dim"])
        linear(p + "attn_output.weight", "attn_output", i, d, qw)
        if s.get("sandwich_norms"):
            norm(p + "post_attention_norm.weight", d)
        norm(p + "ffn_norm.weight", d)
        linear(p + "ffn_gate.weight", "ffn_gate", i, s["ff"], d)
        linear(p + "ffn_up.weight", "ffn_up", i, s["ff"], d)
        linear(p + "ffn_down.weight", "ffn_down", i, d, s["ff"])
        if s.get("sandwich_norms"):
            norm(p + "post_ffw_norm.weight", d)
    norm("output_norm.weight", d)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    print(a.out)


if __name__ == "__main__":
    main()
