#!/usr/bin/env python3
r"""Write tests/data/tiny_modernbert_classifier_reference.json: sentence-transformers'
own answers (CrossEncoder.predict, CrossEncoder.rank) for two tiny
ModernBertForSequenceClassification models with seeded random weights and the
real byte-level BPE tokenizer of scripts/make-modernbert-reference.py (GPT-2's
vocabulary and merges in ModernBERT's layout), so that zerobatch's ModernBERT
classification head (src/model/modernbert_head.rs) is checked against the
reference implementation (tests/tiny_modernbert_classifier_reference.rs).

Not part of the build or CI; run by hand when the reference must be redone.

How it was run (the throwaway venv of scripts/baseline-venv.sh: sentence-transformers
6.2.0, transformers 5.24.0, tokenizers 0.23.3, torch 2.15.0 on the CPU, numpy 2.4.6):

    venv_python=$(scripts/baseline-venv.sh | tail -n 1)
    tok_dir=$(scripts/fetch-gpt2-tokenizer.sh | tail -n 1)
    HF_HUB_OFFLINE=1 nice -n 15 "$venv_python" \
        scripts/make-modernbert-classifier-reference.py "$tok_dir"

Usage: make-modernbert-classifier-reference.py [GPT2_TOKENIZER_DIR] [--output PATH]
[--models-dir DIR]

The encoder's shape is make-modernbert-reference.py's (hidden 64, 4 heads, 4
layers, layers 0 and 3 global, 1 and 2 local with a window of +-4 tokens), its
tensors named as ModernBertForSequenceClassification saves them (under "model."),
then the head: head.dense, head.norm and classifier. The two models:

* "reranker": one label, as gte-reranker-modernbert-base: classifier_pooling
  "mean", classifier_activation "gelu", no head bias (classifier_bias false), no
  norm, attention or MLP biases; the tokenizer's model_max_length is 48, the limit
  CrossEncoder truncates pairs at ("longest_first"). CrossEncoder.predict applies
  its default activation for one label, the sigmoid; the logits are recorded too.
  The queries and passages are make-reranker-reference.py's (English, non-ASCII,
  a long query).
* "classifier": three labels named in id2label (negative, neutral, positive),
  classifier_pooling "cls", classifier_activation "gelu_pytorch_tanh", every bias
  on (classifier_bias, norm_bias, attention_bias, mlp_bias: the encoder's bias
  paths, which the embedder references leave off), model_max_length 40. Recorded:
  the logits and their softmax (TEI's /predict default) of make-reranker-reference.py's
  single texts and pairs.

Every input is predicted alone and in one batch (padded); the two must agree
within 1e-5. As in make-reranker-reference.py, the scores of one query's passages
(and the labels' scores of one input) are at least MIN_GAP apart: the weights'
seeds are the first of base, base + 1000, ... that give no near-tie. Token ids are
CrossEncoder.preprocess's; token types (the tokenizer's, which the model does not
read: ModernBERT has none) say where the second text starts. The JSON holds the
files verbatim, the tokenizer's skeleton and the tensor rules
(scripts/reference_common.py's fill_tensor), as the embedder reference does;
tests/common/modernbert_model.rs writes the models again. Floats are rounded to 7
significant digits.
"""

import argparse
import importlib.util
import json
import os
import shutil
import sys
import tempfile

from reference_common import fill_tensor, fnv1a64, round7, sha256_of

SCRIPTS = os.path.dirname(os.path.abspath(__file__))
REPO_ROOT = os.path.dirname(SCRIPTS)


def sibling(name):
    """Another script of scripts/ as a module (their names have dashes)."""
    spec = importlib.util.spec_from_file_location(name.replace("-", "_"), os.path.join(SCRIPTS, name + ".py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


EMBEDDER = sibling("make-modernbert-reference")
RERANKERS = sibling("make-reranker-reference")
MIN_GAP = RERANKERS.MIN_GAP

MODELS = {
    "reranker": {
        "labels": ["LABEL_0"],
        "max_length": 48,
        "base_seed": 900_000,
        "config": {
            "classifier_pooling": "mean",
            "classifier_activation": "gelu",
            "classifier_bias": False,
            "norm_bias": False,
            "attention_bias": False,
            "mlp_bias": False,
        },
    },
    "classifier": {
        "labels": ["negative", "neutral", "positive"],
        "max_length": 40,
        "base_seed": 950_000,
        "config": {
            "classifier_pooling": "cls",
            "classifier_activation": "gelu_pytorch_tanh",
            "classifier_bias": True,
            "norm_bias": True,
            "attention_bias": True,
            "mlp_bias": True,
        },
    },
}


def tensor_list(spec, seed):
    """The encoder's tensors (make-modernbert-reference.py's list, under "model.", with the
    biases this model's config turns on) then the head's, seeds counting up from `seed`."""
    c = spec["config"]
    d = EMBEDDER.HIDDEN
    names = []
    for t in EMBEDDER.tensor_list():
        name, shape = t["name"], t["shape"]
        names.append(("model." + name, shape, t["kind"], t["scale"]))
        base = name[: -len(".weight")]
        bias = (
            (t["kind"] == "norm" and c["norm_bias"])
            or (".attn." in name and c["attention_bias"])
            or (".mlp." in name and c["mlp_bias"])
        )
        if bias:
            names.append(("model." + base + ".bias", [shape[0]], "weight", 0.1))
    names.append(("head.dense.weight", [d, d], "weight", 0.3))
    if c["classifier_bias"]:
        names.append(("head.dense.bias", [d], "weight", 0.1))
    names.append(("head.norm.weight", [d], "norm", 0.1))
    if c["norm_bias"]:
        names.append(("head.norm.bias", [d], "weight", 0.1))
    labels = len(spec["labels"])
    names += [
        ("classifier.weight", [labels, d], "weight", 1.0),
        ("classifier.bias", [labels], "weight", 0.1),
    ]
    return [
        {"name": n, "shape": s, "kind": k, "scale": sc, "seed": seed + i}
        for i, (n, s, k, sc) in enumerate(names)
    ]


def files_of(spec):
    """config.json (the embedder's, as a sequence classifier) and tokenizer_config.json."""
    config = EMBEDDER.config_json()
    config.update(spec["config"])
    config["architectures"] = ["ModernBertForSequenceClassification"]
    config["id2label"] = {str(i): label for i, label in enumerate(spec["labels"])}
    config["label2id"] = {label: i for i, label in enumerate(spec["labels"])}
    tokenizer_config = EMBEDDER.sentence_transformers_files("cls")["tokenizer_config.json"]
    tokenizer_config["model_max_length"] = spec["max_length"]
    return {"config.json": config, "tokenizer_config.json": tokenizer_config}


def write(np, torch, directory, tok, files, tensors):
    """Writes the model; returns the tensors' fingerprints."""
    weights, fingerprints = {}, {}
    for t in tensors:
        v = fill_tensor(np, t["seed"], t["shape"], t["kind"], t["scale"])
        fingerprints[t["name"]] = f"{fnv1a64(v.astype('<f4').tobytes()):016x}"
        weights[t["name"]] = torch.from_numpy(np.ascontiguousarray(v))
    shutil.rmtree(directory, ignore_errors=True)
    EMBEDDER.write_model(directory, files, tok, weights)
    return weights, fingerprints


def first_without_ties(np, torch, CrossEncoder, directory, tok, spec, gaps):
    """The first seed base + 1000 k whose model's scores `gaps(model)` are all MIN_GAP apart:
    (files, tensors, fingerprints, model)."""
    files = files_of(spec)
    for k in range(40):
        seed = spec["base_seed"] + 1000 * k
        tensors = tensor_list(spec, seed)
        weights, fingerprints = write(np, torch, directory, tok, files, tensors)
        model = CrossEncoder(directory, device="cpu")
        auto = model.model
        assert type(auto).__name__ == "ModernBertForSequenceClassification", type(auto)
        assert auto.config.layer_types == [
            "full_attention", "sliding_attention", "sliding_attention", "full_attention"
        ], auto.config.layer_types
        state = auto.state_dict()
        for name, w in weights.items():
            assert np.array_equal(state[name].detach().numpy(), w.numpy()), name
        gap = gaps(model)
        print(f"{directory}: seed {seed}: smallest gap {gap:.5f}", file=sys.stderr)
        if gap >= MIN_GAP:
            return files, tensors, fingerprints, model
    raise SystemExit(f"no seed from {spec['base_seed']} gives scores {MIN_GAP} apart")


def features_of(model, tok, x, max_length):
    """The ids CrossEncoder feeds the model for one text or pair, and the token types the
    tokenizer gives them (type 1 from the second text on; an empty second text is still a
    pair, as CrossEncoder encodes it)."""
    f = model.preprocess([x])
    n = int(sum(f["attention_mask"][0].tolist()))
    ids = f["input_ids"][0].tolist()[:n]
    from tokenizers import Tokenizer

    cut = Tokenizer.from_str(tok.to_str())
    cut.enable_truncation(max_length=max_length, strategy="longest_first")
    enc = cut.encode(x) if isinstance(x, str) else cut.encode(x[0], x[1])
    assert enc.ids == ids, (x, ids, enc.ids)
    return ids, enc.type_ids


def reranker(np, torch, CrossEncoder, directory, tok):
    spec = MODELS["reranker"]
    queries = RERANKERS.QUERIES

    def gaps(model):
        return min(RERANKERS.min_gap(model.predict([[q["query"], p] for p in q["passages"]])) for q in queries)

    files, tensors, fingerprints, model = first_without_ties(np, torch, CrossEncoder, directory, tok, spec, gaps)
    limit = spec["max_length"]
    assert model.max_seq_length == limit, model.max_seq_length
    cases = []
    for q in queries:
        pairs = [[q["query"], p] for p in q["passages"]]
        scores = RERANKERS.predict_both(model, pairs)
        logits = RERANKERS.predict_both(model, pairs, activation_fn=torch.nn.Identity())
        order = [r["corpus_id"] for r in model.rank(q["query"], q["passages"], batch_size=32)]
        features = []
        for p in pairs:
            ids, types = features_of(model, tok, p, limit)
            untruncated = len(model.tokenizer(p[0], p[1], truncation=False)["input_ids"])
            features.append({"token_ids": ids, "type_ids": types, "untruncated_token_count": untruncated})
        cases.append({
            "name": q["name"],
            "query": q["query"],
            "passages": q["passages"],
            "pairs": features,
            "scores": [round7(s) for s in scores],
            "logits": [round7(s) for s in logits],
            "order": order,
            "min_gap": round7(RERANKERS.min_gap(scores)),
        })
    assert any(p["untruncated_token_count"] > limit for c in cases for p in c["pairs"]), "no pair is truncated"
    return {"files": files, "tensors": tensors, "weight_fnv1a64": fingerprints,
            "labels": spec["labels"], "max_input_length": limit, "cases": cases}


def classifier(np, torch, CrossEncoder, directory, tok):
    spec = MODELS["classifier"]
    inputs = RERANKERS.CLASSIFIER_INPUTS
    softmax_of = dict(activation_fn=torch.nn.Identity(), apply_softmax=True)

    def gaps(model):
        return min(RERANKERS.min_gap(row) for row in RERANKERS.predict_mixed(model, inputs, **softmax_of))

    files, tensors, fingerprints, model = first_without_ties(np, torch, CrossEncoder, directory, tok, spec, gaps)
    limit = spec["max_length"]
    assert model.num_labels == 3 and model.max_seq_length == limit, (model.num_labels, model.max_seq_length)
    logits = RERANKERS.predict_mixed(model, inputs, activation_fn=torch.nn.Identity())
    softmax = RERANKERS.predict_mixed(model, inputs, **softmax_of)
    cases = []
    for x, lg, sm in zip(inputs, logits, softmax):
        ids, types = features_of(model, tok, x, limit)
        cases.append({
            "inputs": x,
            "token_ids": ids,
            "type_ids": types,
            "logits": [round7(v) for v in lg],
            "softmax": [round7(v) for v in sm],
        })
    assert any(len(c["token_ids"]) == limit for c in cases), "no input is truncated"
    return {"files": files, "tensors": tensors, "weight_fnv1a64": fingerprints,
            "labels": spec["labels"], "max_input_length": limit, "cases": cases}


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("gpt2", nargs="?", default=os.path.join(REPO_ROOT, "models", "gpt2-tokenizer"))
    parser.add_argument("--output", default=os.path.join(REPO_ROOT, "tests", "data",
                                                         "tiny_modernbert_classifier_reference.json"))
    parser.add_argument("--models-dir", default=None)
    args = parser.parse_args()

    import numpy as np
    import sentence_transformers
    import tokenizers
    import torch
    import transformers
    from sentence_transformers import CrossEncoder

    torch.manual_seed(0)
    torch.set_num_threads(1)
    keep = args.models_dir is not None
    root = args.models_dir or tempfile.mkdtemp(prefix="zb-modernbert-cls-ref-")
    try:
        tok = EMBEDDER.build_tokenizer(args.gpt2)
        out = {
            "generator": "scripts/make-modernbert-classifier-reference.py",
            "generator_versions": (
                f"sentence-transformers {sentence_transformers.__version__}, transformers {transformers.__version__}, "
                f"tokenizers {tokenizers.__version__}, torch {torch.__version__}, numpy {np.__version__}"
            ),
            "gpt2_vocab_sha256": sha256_of(os.path.join(args.gpt2, "vocab.json")),
            "gpt2_merges_sha256": sha256_of(os.path.join(args.gpt2, "merges.txt")),
            "tokenizer_json": EMBEDDER.skeleton(tok.to_str()),
            "reranker": reranker(np, torch, CrossEncoder, os.path.join(root, "reranker"), tok),
            "classifier": classifier(np, torch, CrossEncoder, os.path.join(root, "classifier"), tok),
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
