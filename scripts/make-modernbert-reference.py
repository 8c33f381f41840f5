#!/usr/bin/env python3
r"""Write tests/data/tiny_modernbert_reference.json: sentence-transformers' own
embeddings (SentenceTransformer.encode) of a tiny ModernBERT with seeded random
weights and a real byte-level BPE tokenizer (GPT-2's vocabulary and merges in
ModernBERT's tokenizer.json layout), so that zerobatch's ModernBERT encoder
(src/model/modernbert.rs) is checked against the reference implementation
(tests/tiny_modernbert_reference.rs), in its two sentence-transformers forms:
mean pooling and Normalize with "search_query: " / "search_document: " prompts (as
modernbert-embed), and CLS pooling (as gte-modernbert).

Not part of the build or CI; run by hand when the reference must be redone.

How it was run (a throwaway venv with sentence-transformers 6.2.0, transformers
5.24.0, tokenizers 0.23.3, torch 2.15.0 on the CPU, numpy 2.4.6: the pins of
scripts/make-reranker-reference.py):

    tok_dir=$(scripts/fetch-gpt2-tokenizer.sh | tail -n 1)
    HF_HUB_OFFLINE=1 nice -n 15 /tmp/modernbert-venv/bin/python \
        scripts/make-modernbert-reference.py "$tok_dir"

Usage: make-modernbert-reference.py [GPT2_TOKENIZER_DIR] [--output PATH]
[--model-dir DIR]

GPT2_TOKENIZER_DIR (default models/gpt2-tokenizer) holds GPT-2's vocab.json and
merges.txt (scripts/fetch-gpt2-tokenizer.sh); --output defaults to
tests/data/tiny_modernbert_reference.json; with --model-dir the two model
directories are kept there (else they are written to a temporary directory and
removed).

Why the weights and the tokenizer are not committed: the vocabulary has 50k
entries, so even a hidden size of 64 makes a 13 MB embedding table, and the
tokenizer.json is 1.4 MB. The JSON holds everything needed to write the models
again: config.json and the sentence-transformers files verbatim, tokenizer.json
with the vocabulary and merges left out (they are GPT-2's vocab.json and
merges.txt, whose sha256 digests are recorded), and the list of tensors with the
rule that fills them (scripts/reference_common.py's fill_tensor, which the Rust
test implements too; "weight_fnv1a64" fingerprints every tensor).
tests/common/modernbert_model.rs writes the same directories under the temporary
directory.

The tokenizer is laid out as ModernBERT's: a byte-level BPE (ByteLevel
pre-tokenizer without a prefix space, ByteLevel decoder), the special tokens
[UNK] [CLS] [SEP] [PAD] [MASK] added after the vocabulary (ids 50257..50261 here),
and a TemplateProcessing post-processor "[CLS] $A [SEP]" (pairs "[CLS] $A [SEP] $B
[SEP]"); tokenizer_config.json names input_ids and attention_mask only (no token
types), as ModernBERT's does.

The model: config.json in the layout the released checkpoints have
(global_attn_every_n_layers, global_rope_theta, local_rope_theta, local_attention;
transformers reads them into layer_types and rope_parameters), vocabulary 50304
(the tokenizer's 50262 padded to a multiple of 64, as ModernBERT pads its own),
hidden 64, 4 heads of 16, intermediate 96 (Wi is 192 wide: input and gate), 4
layers with a global layer every 3 (layers 0 and 3 global, 1 and 2 local),
local_attention 8 (a token sees the tokens within 4 of it on local layers), GELU
(exact), no biases (norm_bias, attention_bias and mlp_bias false), 128 positions.
sentence-transformers' max_seq_length is 32. The script checks that the local
window matters: the same weights with every layer global give vectors more than
1e-2 away on the long texts.

Recorded per text: the ids sentence-transformers' tokenizer gives (truncated at
max_seq_length: the text is cut and [SEP] still appended), the untruncated count,
and per model encode(texts) (and for the mean model also with prompt_name "query"),
in one batch of all texts (right-padded with an attention mask) and each text alone:
the script checks the two agree within 1e-5 and records the batched embeddings.
Floats are rounded to 7 significant digits.
"""

import argparse
import copy
import json
import os
import shutil
import sys
import tempfile

from reference_common import fill_tensor, fnv1a64, round7, sha256_of

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SPECIALS = ["[UNK]", "[CLS]", "[SEP]", "[PAD]", "[MASK]"]
FIRST_SPECIAL = 50257
CLS_ID, SEP_ID, PAD_ID = 50258, 50259, 50260
MAX_SEQ_LENGTH = 32
HIDDEN = 64
SHAPE = {
    "vocab_size": 50304,
    "hidden_size": HIDDEN,
    "intermediate_size": 96,
    "num_hidden_layers": 4,
    "num_attention_heads": 4,
    "max_position_embeddings": 128,
    "global_attn_every_n_layers": 3,
    "local_attention": 8,
    "global_rope_theta": 160000.0,
    "local_rope_theta": 10000.0,
}
PROMPTS = {"query": "search_query: ", "document": "search_document: "}
SEED_BASE = 800_000

LONG = (
    "ModernBERT reads a long passage with rotary positions and alternating attention: every "
    "third layer sees the whole text, the others only a window of neighbouring tokens, so "
    "a text longer than the window must be masked exactly as the reference masks it."
)
TEXTS = [
    "A man is eating food.",
    "how do local attention windows change a sentence embedding",
    "Café crème brûlée à Paris — où est la gare?",
    "東京の夜景は美しい。 Ёжик в тумане 🎉",
    LONG,
    "",
]


def tensor_list():
    """The tensors in seed order: (name, shape, kind, scale, seed), unprefixed as a
    ModernBertModel saved by sentence-transformers names them. Layer 0 has no attn_norm
    (transformers makes it an Identity); no norm has a bias (norm_bias false)."""
    c = SHAPE
    d, ff = c["hidden_size"], c["intermediate_size"]
    names = [
        ("embeddings.tok_embeddings.weight", [c["vocab_size"], d], "weight", 1.0),
        ("embeddings.norm.weight", [d], "norm", 0.1),
    ]
    for l in range(c["num_hidden_layers"]):
        p = f"layers.{l}."
        if l > 0:
            names.append((p + "attn_norm.weight", [d], "norm", 0.1))
        names += [
            (p + "attn.Wqkv.weight", [3 * d, d], "weight", 0.3),
            (p + "attn.Wo.weight", [d, d], "weight", 0.2),
            (p + "mlp_norm.weight", [d], "norm", 0.1),
            (p + "mlp.Wi.weight", [2 * ff, d], "weight", 0.3),
            (p + "mlp.Wo.weight", [d, ff], "weight", 0.2),
        ]
    names.append(("final_norm.weight", [d], "norm", 0.1))
    return [
        {"name": n, "shape": s, "kind": k, "scale": sc, "seed": SEED_BASE + i}
        for i, (n, s, k, sc) in enumerate(names)
    ]


def config_json():
    """config.json as the released ModernBERT checkpoints write it (transformers 4.48)."""
    return {
        "architectures": ["ModernBertModel"],
        "model_type": "modernbert",
        "attention_bias": False,
        "attention_dropout": 0.0,
        "bos_token_id": CLS_ID,
        "cls_token_id": CLS_ID,
        "eos_token_id": SEP_ID,
        "sep_token_id": SEP_ID,
        "pad_token_id": PAD_ID,
        "classifier_activation": "gelu",
        "classifier_bias": False,
        "classifier_dropout": 0.0,
        "classifier_pooling": "mean",
        "decoder_bias": True,
        "deterministic_flash_attn": False,
        "embedding_dropout": 0.0,
        "hidden_activation": "gelu",
        "initializer_cutoff_factor": 2.0,
        "initializer_range": 0.02,
        "mlp_bias": False,
        "mlp_dropout": 0.0,
        "norm_bias": False,
        "norm_eps": 1e-5,
        "position_embedding_type": "absolute",
        "torch_dtype": "float32",
        **SHAPE,
    }


def sentence_transformers_files(pooling):
    """The sentence-transformers files of the mean-pooling model (Normalize, prompts: as
    modernbert-embed) or the CLS-pooling one (as gte-modernbert)."""
    modules = [
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
    ]
    if pooling == "mean":
        modules.append({"idx": 2, "name": "2", "path": "2_Normalize",
                        "type": "sentence_transformers.models.Normalize"})
    files = {
        "modules.json": modules,
        "1_Pooling/config.json": {
            "word_embedding_dimension": HIDDEN,
            "pooling_mode_cls_token": pooling == "cls",
            "pooling_mode_mean_tokens": pooling == "mean",
            "pooling_mode_max_tokens": False,
            "pooling_mode_mean_sqrt_len_tokens": False,
            "pooling_mode_weightedmean_tokens": False,
            "pooling_mode_lasttoken": False,
            "include_prompt": True,
        },
        "sentence_bert_config.json": {"max_seq_length": MAX_SEQ_LENGTH, "do_lower_case": False},
        "tokenizer_config.json": {
            "added_tokens_decoder": {
                str(FIRST_SPECIAL + i): {"content": t, "lstrip": False, "normalized": False,
                                         "rstrip": False, "single_word": False, "special": True}
                for i, t in enumerate(SPECIALS)
            },
            "clean_up_tokenization_spaces": True,
            "cls_token": "[CLS]",
            "mask_token": "[MASK]",
            "model_input_names": ["input_ids", "attention_mask"],
            "model_max_length": 128,
            "pad_token": "[PAD]",
            "sep_token": "[SEP]",
            "unk_token": "[UNK]",
            "tokenizer_class": "PreTrainedTokenizerFast",
        },
    }
    if pooling == "mean":
        files["config_sentence_transformers.json"] = {
            "prompts": PROMPTS,
            "default_prompt_name": None,
            "similarity_fn_name": "cosine",
        }
    return files


def build_tokenizer(gpt2_dir):
    """GPT-2's BPE in ModernBERT's tokenizer.json layout (see the docstring)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors

    bpe = models.BPE.from_file(os.path.join(gpt2_dir, "vocab.json"), os.path.join(gpt2_dir, "merges.txt"))
    tok = Tokenizer(bpe)
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens(SPECIALS)
    for i, t in enumerate(SPECIALS):
        assert tok.token_to_id(t) == FIRST_SPECIAL + i, t
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS]:0 $A:0 [SEP]:0",
        pair="[CLS]:0 $A:0 [SEP]:0 $B:1 [SEP]:1",
        special_tokens=[("[CLS]", CLS_ID), ("[SEP]", SEP_ID)],
    )
    return tok


def skeleton(tokenizer_json):
    """tokenizer.json without its vocabulary and merges (the test puts GPT-2's back)."""
    doc = json.loads(tokenizer_json)
    assert len(doc["model"]["vocab"]) == 50257 and len(doc["model"]["merges"]) == 50000
    doc["model"]["vocab"] = {}
    doc["model"]["merges"] = []
    return doc


def write_model(directory, files, tok, weights):
    from safetensors.torch import save_file

    os.makedirs(directory, exist_ok=True)
    for rel, value in files.items():
        path = os.path.join(directory, rel)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "w") as f:
            json.dump(value, f, indent=2)
    tok.save(os.path.join(directory, "tokenizer.json"))
    save_file(weights, os.path.join(directory, "model.safetensors"))


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("gpt2", nargs="?", default=os.path.join(REPO_ROOT, "models", "gpt2-tokenizer"))
    parser.add_argument("--output", default=os.path.join(REPO_ROOT, "tests", "data", "tiny_modernbert_reference.json"))
    parser.add_argument("--model-dir", default=None)
    args = parser.parse_args()

    import numpy as np
    import sentence_transformers
    import tokenizers
    import torch
    import transformers
    from sentence_transformers import SentenceTransformer

    torch.manual_seed(0)
    torch.set_num_threads(1)
    keep = args.model_dir is not None
    root = args.model_dir or tempfile.mkdtemp(prefix="zb-modernbert-ref-")
    try:
        tok = build_tokenizer(args.gpt2)
        tensors = tensor_list()
        weights, fingerprints = {}, {}
        for t in tensors:
            v = fill_tensor(np, t["seed"], t["shape"], t["kind"], t["scale"])
            fingerprints[t["name"]] = f"{fnv1a64(v.astype('<f4').tobytes()):016x}"
            weights[t["name"]] = torch.from_numpy(np.ascontiguousarray(v))

        sections = {}
        vectors = {}
        for pooling in ["mean", "cls"]:
            files = {"config.json": config_json(), **sentence_transformers_files(pooling)}
            directory = os.path.join(root, pooling)
            write_model(directory, files, tok, weights)
            model = SentenceTransformer(directory, device="cpu")
            assert model.max_seq_length == MAX_SEQ_LENGTH, model.max_seq_length
            auto = model[0].auto_model
            assert type(auto).__name__ == "ModernBertModel", type(auto)
            assert auto.config.layer_types == [
                "full_attention", "sliding_attention", "sliding_attention", "full_attention"
            ], auto.config.layer_types
            assert auto.config.sliding_window == 4, auto.config.sliding_window
            # The checkpoint's tensors all reached the model (none left at its random init).
            state = auto.state_dict()
            for name, w in weights.items():
                assert np.array_equal(state[name].detach().numpy(), w.numpy()), name
            prompts = [None, "query"] if pooling == "mean" else [None]
            encoded = {}
            for prompt in prompts:
                batched = model.encode(TEXTS, prompt_name=prompt, batch_size=32, convert_to_numpy=True)
                alone = np.stack([model.encode([t], prompt_name=prompt, batch_size=1, convert_to_numpy=True)[0]
                                  for t in TEXTS])
                diff = float(np.abs(batched - alone).max())
                assert diff < 1e-5, (pooling, prompt, diff)
                print(f"{pooling} prompt {prompt}: batched (padded) against alone: max diff {diff:.2e}",
                      file=sys.stderr)
                encoded[prompt] = batched
            vectors[pooling] = encoded[None]
            n = encoded[None] / np.linalg.norm(encoded[None], axis=1, keepdims=True)
            cos = n @ n.T
            off = cos[~np.eye(len(TEXTS), dtype=bool)]
            print(f"{pooling}: cosine between different texts {off.min():.3f}..{off.max():.3f}",
                  file=sys.stderr)
            assert off.max() < 0.99, "the vectors of different texts are nearly the same"

            # The local window matters: with every layer global the long texts move.
            if pooling == "mean":
                wide_dir = os.path.join(root, "all-global")
                wide_files = copy.deepcopy(files)
                wide_files["config.json"]["global_attn_every_n_layers"] = 1
                write_model(wide_dir, wide_files, tok, weights)
                wide = SentenceTransformer(wide_dir, device="cpu").encode(TEXTS, convert_to_numpy=True)
                moved = float(np.abs(wide[4] - encoded[None][4]).max())
                print(f"long text, every layer global: moves by {moved:.3f}", file=sys.stderr)
                assert moved > 1e-2, moved

            tokenizer = model.tokenizer
            cases = []
            truncated = 0
            for i, text in enumerate(TEXTS):
                ids = tokenizer(text, truncation=True, max_length=MAX_SEQ_LENGTH)["input_ids"]
                whole = tokenizer(text, truncation=False)["input_ids"]
                assert ids[0] == CLS_ID and ids[-1] == SEP_ID, (text, ids)
                assert tok.encode(text).ids == whole, text
                truncated += len(whole) > MAX_SEQ_LENGTH
                cases.append({
                    "text": text,
                    "token_ids": ids,
                    "untruncated_token_count": len(whole),
                    "embedding": [round7(v) for v in encoded[None][i]],
                    "prompted": {p: [round7(v) for v in encoded[p][i]] for p in prompts if p},
                })
            assert truncated >= 1, "no text is longer than max_seq_length"
            assert sum(len(c["token_ids"]) > 9 for c in cases) >= 3, "few texts exceed the window"
            sections[pooling] = {
                "files": files,
                "tensors": tensors,
                "weight_fnv1a64": fingerprints,
                "max_input_length": MAX_SEQ_LENGTH,
                "pooling": pooling,
                "prompts": PROMPTS if pooling == "mean" else {},
                "cases": cases,
            }
        out = {
            "generator": "scripts/make-modernbert-reference.py",
            "generator_versions": (
                f"sentence-transformers {sentence_transformers.__version__}, transformers {transformers.__version__}, "
                f"tokenizers {tokenizers.__version__}, torch {torch.__version__}, numpy {np.__version__}"
            ),
            "gpt2_vocab_sha256": sha256_of(os.path.join(args.gpt2, "vocab.json")),
            "gpt2_merges_sha256": sha256_of(os.path.join(args.gpt2, "merges.txt")),
            "tokenizer_json": skeleton(tok.to_str()),
            "mean": sections["mean"],
            "cls": sections["cls"],
        }
    finally:
        if not keep:
            shutil.rmtree(root, ignore_errors=True)
    with open(args.output, "w") as f:
        json.dump(out, f, indent=1, ensure_ascii=False)
        f.write("\n")
    print(f"wrote {args.output}", file=sys.stderr)


if __name__ == "__main__":
    main()
