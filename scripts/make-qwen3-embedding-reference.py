#!/usr/bin/env python3
r"""Write tests/data/tiny_qwen3_embedding_reference.json: sentence-transformers' own
embeddings (SentenceTransformer.encode) of a tiny Qwen3-Embedding-style model with
seeded random weights and GPT-2's real byte-level BPE tokenizer, so that zerobatch's
Qwen3 encoder (src/model/qwen3.rs: a Qwen3 decoder run as an encoder, last-token
pooling, Normalize, prompts) is checked against the reference implementation
(tests/tiny_qwen3_embedding_reference.rs).

Not part of the build or CI; run by hand when the reference must be redone.

How it was run (a throwaway venv with sentence-transformers 6.2.0, transformers
5.24.0, tokenizers 0.23.3, torch 2.15.0 on the CPU, numpy 2.4.6: the pins of
scripts/make-reranker-reference.py):

    tok_dir=$(scripts/fetch-gpt2-tokenizer.sh | tail -n 1)
    HF_HUB_OFFLINE=1 nice -n 15 /tmp/qwen-venv/bin/python \
        scripts/make-qwen3-embedding-reference.py "$tok_dir"

Usage: make-qwen3-embedding-reference.py [GPT2_TOKENIZER_DIR] [--output PATH]
[--model-dir DIR]

GPT2_TOKENIZER_DIR (default models/gpt2-tokenizer) holds GPT-2's vocab.json and
merges.txt (scripts/fetch-gpt2-tokenizer.sh); --output defaults to
tests/data/tiny_qwen3_embedding_reference.json; with --model-dir the model
directory is kept there (else it is written to a temporary directory and removed).

Why the weights and the tokenizer are not committed: GPT-2's vocabulary has 50257
entries, so even a hidden size of 32 makes a 6.4 MB embedding table, and its
tokenizer.json is 1.4 MB. Instead the JSON holds everything needed to write the
model again: its config.json and sentence-transformers files verbatim, its
tokenizer.json with the vocabulary and merges left out ("tokenizer_json": they
are GPT-2's vocab.json and merges.txt, whose sha256 digests are recorded, with the
merges in file order as "a b" strings), and the list of its tensors with the rule
that fills them (scripts/reference_common.py's fill_tensor, which the Rust test
implements too; "weight_fnv1a64" fingerprints every tensor). tests/common/
qwen3_embedding_model.rs writes the same directory under the temporary directory.

The tokenizer is laid out as Qwen3-Embedding's: GPT-2's BPE with a ByteLevel
pre-tokenizer and decoder, <|endoftext|> (id 50256) a special added token, and a
TemplateProcessing post-processor that appends <|endoftext|> to every text (the
token whose hidden state last-token pooling reads); tokenizer_config.json pads on
the left with <|endoftext|>, as Qwen3-Embedding's does.

The model (Qwen3Config, architectures ["Qwen3ForCausalLM"] as Qwen3-Embedding's
config.json says; its weights saved without the "model." prefix, as the released
checkpoints hold them): vocabulary 50257, hidden 32, 2 layers, 4 query heads and 2
key/value heads of 16 values (so Q is 64 wide over a hidden of 32), FF 64, RMS
epsilon 1e-6, RoPE theta 1e6, 64 positions, tied embeddings. sentence-transformers
modules: Transformer (max_seq_length 24), Pooling (pooling_mode_lasttoken,
include_prompt), Normalize; prompts "query" (Qwen3-Embedding's instruction form)
and "document" (empty), no default prompt.

Recorded per text: the ids sentence-transformers' tokenizer gives (truncated at
max_seq_length: the text is cut and <|endoftext|> still appended), the untruncated
count, encode(texts) and encode(texts, prompt_name="query"), both in one batch of
all texts (left-padded) and each text alone: the script checks the two agree within
1e-5 and records the batched embeddings. Floats are rounded to 7 significant digits.
"""

import argparse
import json
import os
import shutil
import sys
import tempfile

from reference_common import fill_tensor, fnv1a64, round7, sha256_of

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EOT = "<|endoftext|>"
EOT_ID = 50256
MAX_SEQ_LENGTH = 24
HIDDEN = 32
SHAPE = {
    "vocab_size": 50257,
    "hidden_size": HIDDEN,
    "intermediate_size": 64,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "head_dim": 16,
    "max_position_embeddings": 64,
}
PROMPTS = {
    "query": "Instruct: Given a web search query, retrieve relevant passages that answer the query\nQuery:",
    "document": "",
}
SEED_BASE = 700_000

LONG = (
    "Decoder embedders read the text once, left to right, and the hidden state of the last "
    "token, the end-of-text marker the tokenizer appends, becomes the sentence's vector; "
    "causal attention means padding on the left changes nothing."
)
TEXTS = [
    "A man is eating food.",
    "how do decoder embedders pool a sentence",
    "Café crème brûlée à Paris — où?",
    "東京の夜景は美しい。 Ёжик в тумане 🎉",
    LONG,
    "",
]


def tensor_list():
    """The tensors in seed order: (name, shape, kind, scale, seed), unprefixed as
    Qwen3-Embedding's model.safetensors names them."""
    c = SHAPE
    d, hd, ff = c["hidden_size"], c["head_dim"], c["intermediate_size"]
    qw, kvw = c["num_attention_heads"] * hd, c["num_key_value_heads"] * hd
    names = [("embed_tokens.weight", [c["vocab_size"], d], "weight", 1.0)]
    for l in range(c["num_hidden_layers"]):
        p = f"layers.{l}."
        names += [
            (p + "input_layernorm.weight", [d], "norm", 0.1),
            (p + "self_attn.q_proj.weight", [qw, d], "weight", 0.35),
            (p + "self_attn.k_proj.weight", [kvw, d], "weight", 0.35),
            (p + "self_attn.v_proj.weight", [kvw, d], "weight", 0.35),
            (p + "self_attn.o_proj.weight", [d, qw], "weight", 0.25),
            (p + "self_attn.q_norm.weight", [hd], "norm", 0.5),
            (p + "self_attn.k_norm.weight", [hd], "norm", 0.5),
            (p + "post_attention_layernorm.weight", [d], "norm", 0.1),
            (p + "mlp.gate_proj.weight", [ff, d], "weight", 0.35),
            (p + "mlp.up_proj.weight", [ff, d], "weight", 0.35),
            (p + "mlp.down_proj.weight", [d, ff], "weight", 0.25),
        ]
    names.append(("norm.weight", [d], "norm", 0.1))
    return [
        {"name": n, "shape": s, "kind": k, "scale": sc, "seed": SEED_BASE + i}
        for i, (n, s, k, sc) in enumerate(names)
    ]


def config_json():
    return {
        "architectures": ["Qwen3ForCausalLM"],
        "model_type": "qwen3",
        "attention_bias": False,
        "attention_dropout": 0.0,
        "bos_token_id": EOT_ID,
        "eos_token_id": EOT_ID,
        "hidden_act": "silu",
        "initializer_range": 0.02,
        "rms_norm_eps": 1e-6,
        "rope_theta": 1000000.0,
        "rope_scaling": None,
        "sliding_window": None,
        "use_sliding_window": False,
        "tie_word_embeddings": True,
        "torch_dtype": "float32",
        "use_cache": True,
        **SHAPE,
    }


def sentence_transformers_files():
    return {
        "modules.json": [
            {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
            {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
            {"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"},
        ],
        "1_Pooling/config.json": {
            "word_embedding_dimension": HIDDEN,
            "pooling_mode_cls_token": False,
            "pooling_mode_mean_tokens": False,
            "pooling_mode_max_tokens": False,
            "pooling_mode_mean_sqrt_len_tokens": False,
            "pooling_mode_weightedmean_tokens": False,
            "pooling_mode_lasttoken": True,
            "include_prompt": True,
        },
        "sentence_bert_config.json": {"max_seq_length": MAX_SEQ_LENGTH, "do_lower_case": False},
        "config_sentence_transformers.json": {
            "prompts": PROMPTS,
            "default_prompt_name": None,
            "similarity_fn_name": "cosine",
        },
        "tokenizer_config.json": {
            "add_prefix_space": False,
            "added_tokens_decoder": {
                str(EOT_ID): {"content": EOT, "lstrip": False, "normalized": False, "rstrip": False,
                              "single_word": False, "special": True},
            },
            "bos_token": None,
            "clean_up_tokenization_spaces": False,
            "eos_token": EOT,
            "model_max_length": 64,
            "pad_token": EOT,
            "padding_side": "left",
            "tokenizer_class": "PreTrainedTokenizerFast",
            "unk_token": None,
        },
    }


def build_tokenizer(gpt2_dir):
    """GPT-2's BPE in Qwen3-Embedding's tokenizer.json layout (see the docstring)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors

    bpe = models.BPE.from_file(os.path.join(gpt2_dir, "vocab.json"), os.path.join(gpt2_dir, "merges.txt"))
    tok = Tokenizer(bpe)
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens([EOT])
    assert tok.token_to_id(EOT) == EOT_ID
    tok.post_processor = processors.TemplateProcessing(
        single=f"$A:0 {EOT}:0",
        pair=f"$A:0 {EOT}:0 $B:1 {EOT}:1",
        special_tokens=[(EOT, EOT_ID)],
    )
    return tok


def skeleton(tokenizer_json):
    """tokenizer.json without its vocabulary and merges (the test puts GPT-2's back)."""
    doc = json.loads(tokenizer_json)
    assert len(doc["model"]["vocab"]) == 50257 and len(doc["model"]["merges"]) == 50000
    doc["model"]["vocab"] = {}
    doc["model"]["merges"] = []
    return doc


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("gpt2", nargs="?", default=os.path.join(REPO_ROOT, "models", "gpt2-tokenizer"))
    parser.add_argument("--output", default=os.path.join(REPO_ROOT, "tests", "data", "tiny_qwen3_embedding_reference.json"))
    parser.add_argument("--model-dir", default=None)
    args = parser.parse_args()

    import numpy as np
    import sentence_transformers
    import tokenizers
    import torch
    import transformers
    from safetensors.torch import save_file
    from sentence_transformers import SentenceTransformer

    torch.manual_seed(0)
    torch.set_num_threads(1)
    keep = args.model_dir is not None
    directory = args.model_dir or tempfile.mkdtemp(prefix="zb-qwen3-embedding-ref-")
    try:
        os.makedirs(directory, exist_ok=True)
        files = {"config.json": config_json(), **sentence_transformers_files()}
        for rel, value in files.items():
            path = os.path.join(directory, rel)
            os.makedirs(os.path.dirname(path), exist_ok=True)
            with open(path, "w") as f:
                json.dump(value, f, indent=2)
        tok = build_tokenizer(args.gpt2)
        tok.save(os.path.join(directory, "tokenizer.json"))
        tensors = tensor_list()
        weights, fingerprints = {}, {}
        for t in tensors:
            v = fill_tensor(np, t["seed"], t["shape"], t["kind"], t["scale"])
            fingerprints[t["name"]] = f"{fnv1a64(v.astype('<f4').tobytes()):016x}"
            weights[t["name"]] = torch.from_numpy(np.ascontiguousarray(v))
        save_file(weights, os.path.join(directory, "model.safetensors"))

        model = SentenceTransformer(directory, device="cpu")
        assert model.max_seq_length == MAX_SEQ_LENGTH, model.max_seq_length
        assert model.tokenizer.padding_side == "left", model.tokenizer.padding_side
        assert all(model.prompts[name] == text for name, text in PROMPTS.items()), model.prompts
        # The checkpoint's tensors all reached the model (none left at its random init).
        state = model[0].auto_model.state_dict()
        for name, w in weights.items():
            got = state[name].detach().numpy()
            assert np.array_equal(got, w.numpy()), name

        tokenizer = model.tokenizer
        cases = []
        encoded = {}
        for prompt in [None, "query"]:
            batched = model.encode(TEXTS, prompt_name=prompt, batch_size=32, convert_to_numpy=True)
            alone = np.stack([model.encode([t], prompt_name=prompt, batch_size=1, convert_to_numpy=True)[0]
                              for t in TEXTS])
            diff = float(np.abs(batched - alone).max())
            assert diff < 1e-5, (prompt, diff)
            print(f"prompt {prompt}: batched (left-padded) against alone: max diff {diff:.2e}", file=sys.stderr)
            encoded[prompt] = batched
        truncated = 0
        for i, text in enumerate(TEXTS):
            ids = tokenizer(text, truncation=True, max_length=MAX_SEQ_LENGTH)["input_ids"]
            whole = tokenizer(text, truncation=False)["input_ids"]
            assert ids[-1] == EOT_ID, (text, ids)
            assert tok.encode(text).ids == whole, text
            truncated += len(whole) > MAX_SEQ_LENGTH
            norm = float(np.linalg.norm(encoded[None][i]))
            assert abs(norm - 1.0) < 1e-5, norm
            cases.append({
                "text": text,
                "token_ids": ids,
                "untruncated_token_count": len(whole),
                "embedding": [round7(v) for v in encoded[None][i]],
                "prompted": {"query": [round7(v) for v in encoded["query"][i]]},
            })
        assert truncated >= 1, "no text is longer than max_seq_length"
        out = {
            "generator": "scripts/make-qwen3-embedding-reference.py",
            "generator_versions": (
                f"sentence-transformers {sentence_transformers.__version__}, transformers {transformers.__version__}, "
                f"tokenizers {tokenizers.__version__}, torch {torch.__version__}, numpy {np.__version__}"
            ),
            "gpt2_vocab_sha256": sha256_of(os.path.join(args.gpt2, "vocab.json")),
            "gpt2_merges_sha256": sha256_of(os.path.join(args.gpt2, "merges.txt")),
            "tokenizer_json": skeleton(tok.to_str()),
            "embedder": {
                "files": files,
                "tensors": tensors,
                "weight_fnv1a64": fingerprints,
                "max_input_length": MAX_SEQ_LENGTH,
                "pooling": "last_token",
                "prompts": PROMPTS,
                "cases": cases,
            },
        }
    finally:
        if not keep:
            shutil.rmtree(directory, ignore_errors=True)
    with open(args.output, "w") as f:
        json.dump(out, f, indent=1, ensure_ascii=False)
        f.write("\n")
    print(f"wrote {args.output}", file=sys.stderr)


if __name__ == "__main__":
    main()
