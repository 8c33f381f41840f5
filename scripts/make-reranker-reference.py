#!/usr/bin/env python3
r"""Write tests/data/tiny_reranker_reference.json: sentence-transformers' own answers
(CrossEncoder.predict, SentenceTransformer.encode) for three tiny BERT models with
seeded random weights and all-MiniLM-L6-v2's real WordPiece tokenizer, so that
zerobatch's cross-encoder, classifier, CLS pooling and prompts can be checked
against the reference implementation (tests/tiny_reranker_reference.rs).

Not part of the build or CI; run by hand when the reference must be redone.

How it was run (the throwaway venv of scripts/baseline-venv.sh, whose pins are
make-reference.py's: sentence-transformers 6.2.0, transformers 5.24.0,
tokenizers 0.23.3, torch 2.15.0 on the CPU, numpy 2.4.6):

    venv_python=$(scripts/baseline-venv.sh | tail -n 1)
    HF_HUB_OFFLINE=1 nice -n 15 "$venv_python" scripts/make-reranker-reference.py \
        /work/main/models/all-MiniLM-L6-v2

Usage: make-reranker-reference.py [MINILM_DIR] [--output PATH] [--models-dir DIR]

MINILM_DIR (default models/all-MiniLM-L6-v2) gives the tokenizer files; --output
defaults to tests/data/tiny_reranker_reference.json; with --models-dir the three
model directories are kept there (else they are written to a temporary
directory and removed).

Why the weights are not committed: the real tokenizer's vocabulary has 30522
entries, so even a hidden size of 32 makes a 3.9 MB word-embedding table per
model. Instead, the JSON holds everything needed to write each model again: its
config.json and sentence-transformers files verbatim, and the list of its tensors
with the rule that fills them; the Rust test writes the same directories, checks
every tensor bit for bit against "weight_fnv1a64" (FNV-1a 64 of the float32
little-endian bytes) and copies the tokenizer files from MiniLM's directory
(whose tokenizer.json sha256 is recorded).

The weight rule (scripts/reference_common.py's fill_tensor, which the Rust test
implements too): tensor i of a model's "tensors" list is filled in row-major
order from splitmix64 seeded with its "seed"; with r = f32(z >> 40) / 2^24 * 2 - 1
(exact), a tensor of kind "norm" is 1 + r * scale, any other r * scale.

The models (hidden 32, 2 layers, 4 heads, intermediate 64, GELU):

* "reranker": BertForSequenceClassification with one label, as the
  ms-marco-MiniLM / bge-reranker cross-encoders are; max_position_embeddings 48,
  while the tokenizer's model_max_length stays MiniLM's 512, so the limit
  CrossEncoder truncates at (the smaller of the two) comes from config.json.
  CrossEncoder.predict applies its default activation, the sigmoid.
* "classifier": BertForSequenceClassification with three labels named in
  id2label (negative, neutral, positive), max_position_embeddings 40. Recorded:
  the logits (activation_fn Identity, CrossEncoder's default for several
  labels) and their softmax (apply_softmax=True), what TEI's /predict answers
  by default.
* "embedder": BertModel with CLS pooling (1_Pooling/config.json), a Normalize
  module, max_seq_length 32, and prompts in config_sentence_transformers.json
  ("query": "query: ", "passage": "passage: "), no default prompt. Recorded:
  SentenceTransformer.encode(texts) and encode(texts, prompt_name=...).

Every pair is predicted alone (batch_size=1) and in one batch (batch_size=32);
the script checks the two agree within 1e-5 and records the batched scores. The
scores within a query (and the labels' scores of one classifier input) are at
least MIN_GAP apart: random weights put some scores within 1e-5 of each other,
so the weights' seeds are the first of base, base + 1000, ... that give no such
near-tie (the seeds used are in "tensors").
Token ids and type ids are those CrossEncoder.preprocess gives (truncated
"longest_first" at the model's limit); untruncated counts come from the
tokenizer without truncation. Floats are rounded to 7 significant digits.
"""

import argparse
import json
import os
import shutil
import sys
import tempfile

from reference_common import fill_tensor, fnv1a64, round7, sha256_of

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOKENIZER_FILES = ["tokenizer.json", "vocab.txt", "tokenizer_config.json", "special_tokens_map.json"]
# Scores of one query's passages (and one input's labels) differ by at least this much: 20
# times the 1e-4 that zerobatch's f32 scores are held to, so the rank order is not luck.
MIN_GAP = 0.002

SHAPE = {
    "hidden_size": 32,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "intermediate_size": 64,
    "type_vocab_size": 2,
    "vocab_size": 30522,
}

# (name suffix, kind, scale): what each tensor of a BERT layer is filled with.
EMBEDDINGS = [
    ("embeddings.word_embeddings.weight", "weight", 1.0),
    ("embeddings.position_embeddings.weight", "weight", 0.5),
    ("embeddings.token_type_embeddings.weight", "weight", 0.5),
    ("embeddings.LayerNorm.weight", "norm", 0.1),
    ("embeddings.LayerNorm.bias", "weight", 0.1),
]
LAYER = [
    ("attention.self.query.weight", "weight", 0.3),
    ("attention.self.query.bias", "weight", 0.1),
    ("attention.self.key.weight", "weight", 0.3),
    ("attention.self.key.bias", "weight", 0.1),
    ("attention.self.value.weight", "weight", 0.3),
    ("attention.self.value.bias", "weight", 0.1),
    ("attention.output.dense.weight", "weight", 0.3),
    ("attention.output.dense.bias", "weight", 0.1),
    ("attention.output.LayerNorm.weight", "norm", 0.1),
    ("attention.output.LayerNorm.bias", "weight", 0.1),
    ("intermediate.dense.weight", "weight", 0.3),
    ("intermediate.dense.bias", "weight", 0.1),
    ("output.dense.weight", "weight", 0.2),
    ("output.dense.bias", "weight", 0.1),
    ("output.LayerNorm.weight", "norm", 0.1),
    ("output.LayerNorm.bias", "weight", 0.1),
]
POOLER = [("pooler.dense.weight", "weight", 0.3), ("pooler.dense.bias", "weight", 0.1)]
CLASSIFIER = [("classifier.weight", "weight", 2.0), ("classifier.bias", "weight", 0.1)]


def shape_of(name, config, labels):
    h, i = config["hidden_size"], config["intermediate_size"]
    if name.endswith("word_embeddings.weight"):
        return [config["vocab_size"], h]
    if name.endswith("position_embeddings.weight"):
        return [config["max_position_embeddings"], h]
    if name.endswith("token_type_embeddings.weight"):
        return [config["type_vocab_size"], h]
    if name == "classifier.weight":
        return [labels, h]
    if name == "classifier.bias":
        return [labels]
    if name.endswith("intermediate.dense.weight"):
        return [i, h]
    if name.endswith("intermediate.dense.bias"):
        return [i]
    if name.endswith("output.dense.weight") and "attention" not in name:
        return [h, i]
    if name.endswith(".weight") and ("LayerNorm" in name):
        return [h]
    if name.endswith(".weight"):
        return [h, h]
    return [h]


def tensor_list(config, seed, head):
    """The model's tensors in seed order: (name, shape, kind, scale, seed)."""
    prefix = "bert." if head else ""
    names = [(prefix + n, k, s) for n, k, s in EMBEDDINGS]
    for layer in range(config["num_hidden_layers"]):
        names += [(f"{prefix}encoder.layer.{layer}.{n}", k, s) for n, k, s in LAYER]
    names += [(prefix + n, k, s) for n, k, s in POOLER]
    labels = len(config.get("id2label", {}))
    if head:
        names += CLASSIFIER
    return [
        {"name": n, "shape": shape_of(n.removeprefix("bert."), config, labels), "kind": k, "scale": s, "seed": seed + i}
        for i, (n, k, s) in enumerate(names)
    ]


def write_model(np, torch, directory, minilm, files, tensors):
    """Writes a model directory: `files` (relative path -> JSON value) verbatim, the
    tokenizer files from MiniLM's directory, and the tensors by the rule. Returns the
    FNV-1a 64 of every tensor."""
    from safetensors.torch import save_file

    os.makedirs(directory, exist_ok=True)
    for rel, value in files.items():
        path = os.path.join(directory, rel)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "w") as f:
            json.dump(value, f, indent=2)
    for name in TOKENIZER_FILES:
        shutil.copy(os.path.join(minilm, name), os.path.join(directory, name))
    weights, fingerprints = {}, {}
    for t in tensors:
        kind = "norm" if t["kind"] == "norm" else "weight"
        v = fill_tensor(np, t["seed"], t["shape"], kind, t["scale"])
        fingerprints[t["name"]] = f"{fnv1a64(v.astype('<f4').tobytes()):016x}"
        weights[t["name"]] = torch.from_numpy(np.ascontiguousarray(v))
    save_file(weights, os.path.join(directory, "model.safetensors"))
    return fingerprints


def config_json(architecture, max_positions, id2label=None, extra=None):
    c = {
        "architectures": [architecture],
        "model_type": "bert",
        "hidden_act": "gelu",
        "hidden_dropout_prob": 0.0,
        "attention_probs_dropout_prob": 0.0,
        "initializer_range": 0.02,
        "layer_norm_eps": 1e-12,
        "max_position_embeddings": max_positions,
        "pad_token_id": 0,
        "position_embedding_type": "absolute",
        **SHAPE,
    }
    if id2label is not None:
        c["id2label"] = {str(i): label for i, label in enumerate(id2label)}
        c["label2id"] = {label: i for i, label in enumerate(id2label)}
    if extra:
        c.update(extra)
    return c


LONG = (
    "Rerankers read the query and the passage together, so every layer of the encoder "
    "attends across both texts; that is why they rank better than embeddings compared "
    "by cosine, and why their cost grows with the number of passages and their length. "
    "A serving system batches the pairs of many requests into one forward pass."
)
OTHER_LONG = (
    "Serverless containers start from nothing: the image is pulled, the process starts, "
    "the model's weights are mapped, and only then can the first request be answered, "
    "so a replica that binds its port before loading can hold requests instead of refusing them."
)
QUERIES = [
    {
        "name": "english",
        "query": "how do rerankers score a passage",
        "passages": [
            "A cross-encoder reads the query and the passage together and outputs one score.",
            "The weather in Lisbon is mild in winter.",
            "Embeddings are compared with cosine similarity.",
            "Rerankers are slow because they run once per passage.",
            "",
            "score passage rerank query",
            LONG,
            "Bananas are rich in potassium.",
        ],
    },
    {
        "name": "non-ascii",
        "query": "Café crème brûlée à Paris — où?",
        "passages": [
            "東京の夜景は美しい。",
            "Le café est servi avec une crème brûlée.",
            "Ёжик в тумане, 1975 год.",
            "naïve façade, jalapeño and piñata 🎉",
            "서울과 北京 그리고 Zürich",
            "ΑΒΓ αβγ δεζ",
        ],
    },
    {
        "name": "long-query",
        "query": LONG + " " + LONG,
        "passages": [
            "short passage",
            LONG,
            OTHER_LONG,
            "one more",
        ],
    },
]
# Single texts and pairs for the three-label classifier.
CLASSIFIER_INPUTS = [
    "I loved this film, it was wonderful.",
    "The service was slow and the food was cold.",
    "It is a table.",
    ["Le café est servi avec une crème brûlée.", "東京の夜景は美しい。"],
    ["what is a reranker", "A cross-encoder reads the query and the passage together."],
    LONG,
    [LONG, OTHER_LONG],
    "",
]
EMBEDDER_TEXTS = [
    "A man is eating food.",
    "how do rerankers score a passage",
    "Café crème brûlée à Paris",
    "東京の夜景は美しい。",
    LONG,
    "",
]
PROMPTS = {"query": "query: ", "passage": "passage: "}


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("minilm", nargs="?", default=os.path.join(REPO_ROOT, "models", "all-MiniLM-L6-v2"))
    parser.add_argument("--output", default=os.path.join(REPO_ROOT, "tests", "data", "tiny_reranker_reference.json"))
    parser.add_argument("--models-dir", default=None)
    args = parser.parse_args()

    import numpy as np
    import sentence_transformers
    import tokenizers
    import torch
    import transformers
    from sentence_transformers import CrossEncoder, SentenceTransformer

    torch.manual_seed(0)
    keep = args.models_dir is not None
    root = args.models_dir or tempfile.mkdtemp(prefix="zb-reranker-ref-")
    out = {
        "generator": "scripts/make-reranker-reference.py",
        "generator_versions": (
            f"sentence-transformers {sentence_transformers.__version__}, transformers {transformers.__version__}, "
            f"tokenizers {tokenizers.__version__}, torch {torch.__version__}, numpy {np.__version__}"
        ),
        "tokenizer_sha256": sha256_of(os.path.join(args.minilm, "tokenizer.json")),
        "tokenizer_files": TOKENIZER_FILES,
    }
    try:
        out["reranker"] = reranker(np, torch, CrossEncoder, os.path.join(root, "reranker"), args.minilm)
        out["classifier"] = classifier(np, torch, CrossEncoder, os.path.join(root, "classifier"), args.minilm)
        out["embedder"] = embedder(np, torch, SentenceTransformer, os.path.join(root, "embedder"), args.minilm)
    finally:
        if not keep:
            shutil.rmtree(root, ignore_errors=True)
    with open(args.output, "w") as f:
        json.dump(out, f, indent=1, ensure_ascii=False)
        f.write("\n")
    print(f"wrote {args.output}", file=sys.stderr)


def features_of(model, pair):
    """The ids and type ids CrossEncoder feeds the model for one pair (or one text)."""
    f = model.preprocess([pair])
    mask = f["attention_mask"][0].tolist()
    n = sum(mask)
    return f["input_ids"][0].tolist()[:n], f["token_type_ids"][0].tolist()[:n]


def predict_both(model, inputs, **kwargs):
    """CrossEncoder.predict of each input alone and of all in one batch (checked to agree);
    the batched answer. An input is one text or a [text, text] pair. sentence-transformers
    6.2 predicts one text given as a string but refuses a list of single texts, so those are
    batched through the model's own preprocess and forward, as predict's inner loop does,
    with the activation (or softmax) applied as predict applies it."""
    import torch

    alone = np_stack([model.predict(x, batch_size=1, convert_to_numpy=True, **kwargs) for x in inputs])
    if all(isinstance(x, str) for x in inputs):
        with torch.inference_mode():
            scores = model(model.preprocess(list(inputs)))["scores"].float()
            activation = kwargs.get("activation_fn") or model.activation_fn
            scores = activation(scores)
            if scores.ndim > 1 and model.num_labels == 1:
                scores = scores.squeeze(-1)
            if kwargs.get("apply_softmax") and scores.ndim > 1:
                scores = torch.nn.functional.softmax(scores, dim=1)
        batched = scores.numpy()
    else:
        batched = model.predict(inputs, batch_size=32, convert_to_numpy=True, **kwargs)
    # Within 1e-5 of the largest value (float sums of a padded batch run in another order).
    diff = float(abs(alone - batched).max())
    assert diff <= 1e-5 * max(1.0, float(abs(batched).max())), f"alone and batched differ by {diff}"
    return batched


def predict_mixed(model, inputs, **kwargs):
    """predict_both over a list of single texts and pairs, batched apart (one kind per
    batch), answers in input order."""
    singles = [i for i, x in enumerate(inputs) if isinstance(x, str)]
    pairs = [i for i, x in enumerate(inputs) if not isinstance(x, str)]
    rows = [None] * len(inputs)
    for group in (singles, pairs):
        if group:
            for i, row in zip(group, predict_both(model, [inputs[i] for i in group], **kwargs)):
                rows[i] = row
    return rows


def np_stack(rows):
    import numpy as np

    return np.stack([np.asarray(r) for r in rows])


def model_section(config, files, tensors, fingerprints, extra):
    return {"config": config, "files": files, "tensors": tensors, "weight_fnv1a64": fingerprints, **extra}


def min_gap(values):
    ordered = sorted(float(v) for v in values)
    return min(b - a for a, b in zip(ordered, ordered[1:]))


def first_without_ties(np, torch, CrossEncoder, directory, minilm, config, base_seed, gaps):
    """Writes the model with seeds base_seed + 1000 * k for k = 0, 1, ... and returns the
    first (tensors, fingerprints, model) whose scores `gaps(model)` are all at least MIN_GAP
    apart: random weights can put two scores within bf16's error of each other, and a
    reference with a near-tie would test luck, not the rank order."""
    files = {"config.json": config}
    for k in range(40):
        tensors = tensor_list(config, base_seed + 1000 * k, head=True)
        fingerprints = write_model(np, torch, directory, minilm, files, tensors)
        model = CrossEncoder(directory, device="cpu")
        gap = gaps(model)
        print(f"{directory}: seed {base_seed + 1000 * k}: smallest gap {gap:.5f}", file=sys.stderr)
        if gap >= MIN_GAP:
            return files, tensors, fingerprints, model
    raise SystemExit(f"no seed from {base_seed} gives scores {MIN_GAP} apart")


def reranker(np, torch, CrossEncoder, directory, minilm):
    config = config_json("BertForSequenceClassification", 48, id2label=["LABEL_0"])

    def gaps(model):
        return min(min_gap(model.predict([[q["query"], p] for p in q["passages"]])) for q in QUERIES)

    files, tensors, fingerprints, model = first_without_ties(
        np, torch, CrossEncoder, directory, minilm, config, 100_000, gaps
    )
    assert model.max_seq_length == 48, model.max_seq_length
    tokenizer = model.tokenizer
    cases = []
    for q in QUERIES:
        pairs = [[q["query"], p] for p in q["passages"]]
        scores = predict_both(model, pairs)
        logits = predict_both(model, pairs, activation_fn=torch.nn.Identity())
        ranked = model.rank(q["query"], q["passages"], batch_size=32)
        order = [r["corpus_id"] for r in ranked]
        pair_features = []
        for p in pairs:
            ids, types = features_of(model, p)
            untruncated = len(tokenizer(p[0], p[1], truncation=False)["input_ids"])
            pair_features.append({"token_ids": ids, "type_ids": types, "untruncated_token_count": untruncated})
        cases.append(
            {
                "name": q["name"],
                "query": q["query"],
                "passages": q["passages"],
                "pairs": pair_features,
                "scores": [round7(s) for s in scores],
                "logits": [round7(s) for s in logits],
                "order": order,
                "min_gap": round7(min_gap(scores)),
            }
        )
    assert any(p["untruncated_token_count"] > 48 for c in cases for p in c["pairs"]), "no pair is truncated"
    return model_section(config, files, tensors, fingerprints, {"max_input_length": 48, "cases": cases})


def classifier(np, torch, CrossEncoder, directory, minilm):
    labels = ["negative", "neutral", "positive"]
    config = config_json("BertForSequenceClassification", 40, id2label=labels)

    def gaps(model):
        softmax = predict_mixed(model, CLASSIFIER_INPUTS, activation_fn=torch.nn.Identity(), apply_softmax=True)
        return min(min_gap(row) for row in softmax)

    files, tensors, fingerprints, model = first_without_ties(
        np, torch, CrossEncoder, directory, minilm, config, 200_000, gaps
    )
    assert model.num_labels == 3 and model.max_seq_length == 40
    logits = predict_mixed(model, CLASSIFIER_INPUTS, activation_fn=torch.nn.Identity())
    softmax = predict_mixed(model, CLASSIFIER_INPUTS, activation_fn=torch.nn.Identity(), apply_softmax=True)
    cases = []
    for x, lg, sm in zip(CLASSIFIER_INPUTS, logits, softmax):
        ids, types = features_of(model, x)
        cases.append(
            {
                "inputs": x,
                "token_ids": ids,
                "type_ids": types,
                "logits": [round7(v) for v in lg],
                "softmax": [round7(v) for v in sm],
            }
        )
    return model_section(config, files, tensors, fingerprints, {"labels": labels, "max_input_length": 40, "cases": cases})


def embedder(np, torch, SentenceTransformer, directory, minilm):
    config = config_json("BertModel", 64)
    tensors = tensor_list(config, 300_000, head=False)
    files = {
        "config.json": config,
        "modules.json": [
            {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
            {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
            {"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"},
        ],
        "1_Pooling/config.json": {
            "word_embedding_dimension": 32,
            "pooling_mode_cls_token": True,
            "pooling_mode_mean_tokens": False,
            "pooling_mode_max_tokens": False,
            "pooling_mode_mean_sqrt_len_tokens": False,
            "pooling_mode_weightedmean_tokens": False,
            "pooling_mode_lasttoken": False,
            "include_prompt": True,
        },
        "sentence_bert_config.json": {"max_seq_length": 32, "do_lower_case": False},
        "config_sentence_transformers.json": {
            "prompts": PROMPTS,
            "default_prompt_name": None,
            "similarity_fn_name": "cosine",
        },
    }
    fingerprints = write_model(np, torch, directory, minilm, files, tensors)
    model = SentenceTransformer(directory, device="cpu")
    assert model.max_seq_length == 32, model.max_seq_length
    # sentence-transformers 6 adds an empty "document" prompt of its own; the server knows
    # the prompts of config_sentence_transformers.json only (as TEI).
    assert all(model.prompts[name] == text for name, text in PROMPTS.items()), model.prompts
    plain = model.encode(EMBEDDER_TEXTS, batch_size=32, convert_to_numpy=True)
    prompted = {
        name: model.encode(EMBEDDER_TEXTS, prompt_name=name, batch_size=32, convert_to_numpy=True) for name in PROMPTS
    }
    tokenizer = model.tokenizer
    cases = []
    for i, text in enumerate(EMBEDDER_TEXTS):
        cases.append(
            {
                "text": text,
                "untruncated_token_count": len(tokenizer(text, truncation=False)["input_ids"]),
                "embedding": [round7(v) for v in plain[i]],
                "prompted": {name: [round7(v) for v in prompted[name][i]] for name in PROMPTS},
            }
        )
    return model_section(
        config, files, tensors, fingerprints, {"max_input_length": 32, "pooling": "cls", "prompts": PROMPTS, "cases": cases}
    )


if __name__ == "__main__":
    main()
