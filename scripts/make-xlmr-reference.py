#!/usr/bin/env python3
r"""Write tests/data/tiny_xlmr_reference.json: sentence-transformers' own answers
(SentenceTransformer.encode, CrossEncoder.predict and rank) for three tiny XLM-RoBERTa
models with seeded random weights and a SentencePiece Unigram tokenizer trained here on a
small multilingual text, so that zerobatch's XLM-R encoder (positions after the padding
id, one token type, RobertaClassificationHead) and its tokenizer can be checked against the
reference implementation (tests/tiny_xlmr_reference.rs).

Not part of the build or CI; run by hand when the reference must be redone.

How it was run (the throwaway venv of scripts/baseline-venv.sh, whose pins are
make-reference.py's: sentence-transformers 6.2.0, transformers 5.24.0, tokenizers 0.23.3,
torch 2.15.0 on the CPU, numpy 2.4.6; plus sentencepiece 0.2.3 and protobuf 7.36.2 to
train and convert the tokenizer):

    venv_python=$(scripts/baseline-venv.sh | tail -n 1)
    "$venv_python" -m pip install sentencepiece==0.2.3 protobuf==7.36.2
    HF_HUB_OFFLINE=1 nice -n 15 "$venv_python" scripts/make-xlmr-reference.py

Usage: make-xlmr-reference.py [--train-tokenizer] [--output PATH] [--models-dir DIR]

The tokenizer (tests/data/tiny_xlmr_tokenizer.json, committed): SentencePiece trains a
Unigram model on CORPUS below (vocab_size 1000 asked, as many pieces as the text gives,
character coverage 1.0, one thread), and transformers' XLMRobertaConverter turns it into
the tokenizer.json every XLM-R checkpoint carries: the fairseq ids (<s> 0, <pad> 1, </s> 2,
<unk> 3, <mask> last), SentencePiece's Precompiled normalizer, Metaspace, and the pair
template `<s> A </s></s> B </s>`. It is trained only when missing or with
--train-tokenizer; otherwise the committed file is used, so the references can be redone
on the same tokenizer.

Why the weights are not committed: as for make-reranker-reference.py, the JSON holds
what is needed to write each model again (files verbatim, the tensors with the seeded
rule of reference_common.fill_tensor and their FNV-1a 64), and the Rust test writes the
same directories with the committed tokenizer.json (whose sha256 is recorded).

The models (hidden 32, 2 layers, 4 heads, intermediate 64, GELU, type_vocab_size 1,
layer_norm_eps 1e-5, pad_token_id 1; each tokenizer_config.json's model_max_length is
its positions less 2, as XLM-R checkpoints have 514 positions and 512 tokens):

* "reranker": XLMRobertaForSequenceClassification with one label, as bge-reranker-base
  and bge-reranker-v2-m3 are: max_position_embeddings 50, so 48 tokens.
  CrossEncoder.predict applies its default activation, the sigmoid.
* "embedder": XLMRobertaModel with mean pooling, a Normalize module, max_seq_length 32
  and e5's prompts in config_sentence_transformers.json ("query": "query: ",
  "passage": "passage: "), as multilingual-e5 is. Recorded: encode(texts) and
  encode(texts, prompt_name=...).
* "cls_embedder": XLMRobertaModel with CLS pooling and Normalize, as bge-m3's dense
  vectors are; max_position_embeddings 66 but max_seq_length 24.

Texts include a literal "<pad>" (the tokenizer gives the padding id inside the text,
where transformers' create_position_ids_from_input_ids does not count it), non-ASCII
text, and texts and pairs longer than the limit (truncated; "longest_first" for pairs).
The "<pad>" follows a word without a space: transformers 5 does not run tokenizer.json as
saved but rebuilds XLM-R's pipeline (WhitespaceSplit before Metaspace, no Strip or
Replace), which drops the lone "▁" that tokenizer.json gives before a special token
preceded by a space ("a <pad>"); zerobatch, like TEI and transformers 4, runs
tokenizer.json. The script checks that every input's ids are the same both ways, so the
reference holds no such case.
Every input is run alone (batch_size=1) and batched; the script checks the two agree and
records the batched answer. A query's scores are at least MIN_GAP apart (the reranker's
seed is the first of base, base + 1000, ... that gives no near-tie). Floats are rounded to
7 significant digits.
"""

import argparse
import json
import os
import shutil
import sys
import tempfile

from reference_common import fill_tensor, fnv1a64, round7, sha256_of

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOKENIZER = os.path.join(REPO_ROOT, "tests", "data", "tiny_xlmr_tokenizer.json")
MIN_GAP = 0.002
PAD = 1

# The text the tokenizer is trained on: several scripts, accents, CJK without spaces.
CORPUS = """\
The quick brown fox jumps over the lazy dog. A reranker reads the query and the passage together.
Search engines compare embeddings by cosine similarity, then rerank the best passages.
Le café est servi avec une crème brûlée à Paris. Où est la gare? Une façade naïve et élégante.
Der schnelle braune Fuchs springt über den faulen Hund. Größe, Straße, Zürich und München.
El niño come jalapeños en la mañana. ¿Dónde está la biblioteca? Piñata, corazón, canción.
Ёжик в тумане, 1975 год. Москва — столица России. Привет, мир! Поиск и ранжирование.
Η Αθήνα είναι η πρωτεύουσα της Ελλάδας. Καλημέρα κόσμε.
東京の夜景は美しい。東京都庁舎の展望室から見る夜景。日本語の文章を検索します。
北京是中国的首都。我喜欢喝咖啡。今天天气很好。搜索引擎和重新排序。
서울과 부산은 한국의 도시입니다. 안녕하세요, 세계! 검색과 재순위.
Numbers 1, 22, 333 and 2026; symbols % & + = and an emoji 🎉.
"""

SHAPE = {
    "hidden_size": 32,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "intermediate_size": 64,
    "type_vocab_size": 1,
}
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
# RobertaClassificationHead: dense, tanh, out_proj, stored beside the encoder (no prefix).
HEAD = [
    ("classifier.dense.weight", "weight", 0.3),
    ("classifier.dense.bias", "weight", 0.1),
    ("classifier.out_proj.weight", "weight", 2.0),
    ("classifier.out_proj.bias", "weight", 0.1),
]

LONG = (
    "Rerankers read the query and the passage together, so every layer of the encoder "
    "attends across both texts; that is why they rank better than embeddings compared by cosine."
)
OTHER_LONG = "東京の夜景は美しい。北京是中国的首都。서울과 부산은 한국의 도시입니다。" * 3
QUERIES = [
    {
        "name": "english",
        "query": "how does a reranker score a passage",
        "passages": [
            "A reranker reads the query and the passage together.",
            "The weather in Lisbon is mild in winter.",
            "Embeddings are compared by cosine similarity.",
            "",
            "a passage with a literal<pad> token inside",
            LONG,
        ],
    },
    {
        "name": "multilingual",
        "query": "Où est la gare? 東京の夜景",
        "passages": [
            "東京の夜景は美しい。",
            "Le café est servi avec une crème brûlée.",
            "Ёжик в тумане, 1975 год.",
            "Der schnelle braune Fuchs, Größe, Straße",
            "서울과 北京 그리고 Zürich 🎉",
            "Η Αθήνα είναι η πρωτεύουσα",
            OTHER_LONG,
        ],
    },
    {
        "name": "long-query",
        "query": LONG + " " + LONG,
        "passages": ["short passage", LONG, OTHER_LONG, "one more"],
    },
]
EMBEDDER_TEXTS = [
    "A man is eating food.",
    "how does a reranker score a passage",
    "Café crème brûlée à Paris",
    "東京の夜景は美しい。北京是中国的首都。",
    "Ёжик в тумане и 서울",
    "text with a literal<pad> and more<pad> words",
    LONG,
    OTHER_LONG,
    "",
]
PROMPTS = {"query": "query: ", "passage": "passage: "}


def train_tokenizer(path):
    """Trains the SentencePiece Unigram model on CORPUS and writes XLM-R's tokenizer.json."""
    import sentencepiece as spm
    from transformers.convert_slow_tokenizer import XLMRobertaConverter

    work = tempfile.mkdtemp(prefix="zb-xlmr-spm-")
    try:
        corpus = os.path.join(work, "corpus.txt")
        with open(corpus, "w") as f:
            f.write(CORPUS * 8)
        spm.SentencePieceTrainer.train(
            input=corpus,
            model_prefix=os.path.join(work, "spm"),
            vocab_size=1000,
            hard_vocab_limit=False,
            model_type="unigram",
            character_coverage=1.0,
            num_threads=1,
            shuffle_input_sentence=False,
            minloglevel=2,
        )

        class Original:
            vocab_file = os.path.join(work, "spm.model")

            def convert_tokens_to_ids(self, token):
                return {"<s>": 0, "<pad>": 1, "</s>": 2, "<unk>": 3}[token]

        XLMRobertaConverter(Original()).converted().save(path)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def config_json(architecture, vocab, max_positions, id2label=None):
    c = {
        "architectures": [architecture],
        "model_type": "xlm-roberta",
        "hidden_act": "gelu",
        "hidden_dropout_prob": 0.0,
        "attention_probs_dropout_prob": 0.0,
        "initializer_range": 0.02,
        "layer_norm_eps": 1e-5,
        "max_position_embeddings": max_positions,
        "pad_token_id": PAD,
        "bos_token_id": 0,
        "eos_token_id": 2,
        "position_embedding_type": "absolute",
        "vocab_size": vocab,
        **SHAPE,
    }
    if id2label is not None:
        c["id2label"] = {str(i): label for i, label in enumerate(id2label)}
        c["label2id"] = {label: i for i, label in enumerate(id2label)}
    return c


def tokenizer_config(max_positions):
    return {
        "tokenizer_class": "XLMRobertaTokenizer",
        "model_max_length": max_positions - PAD - 1,
        "bos_token": "<s>",
        "eos_token": "</s>",
        "sep_token": "</s>",
        "cls_token": "<s>",
        "unk_token": "<unk>",
        "pad_token": "<pad>",
        "mask_token": "<mask>",
    }


def shape_of(name, config):
    h, i = config["hidden_size"], config["intermediate_size"]
    base = name.removeprefix("roberta.")
    if base.endswith("word_embeddings.weight"):
        return [config["vocab_size"], h]
    if base.endswith("position_embeddings.weight"):
        return [config["max_position_embeddings"], h]
    if base.endswith("token_type_embeddings.weight"):
        return [config["type_vocab_size"], h]
    if base == "classifier.out_proj.weight":
        return [len(config["id2label"]), h]
    if base == "classifier.out_proj.bias":
        return [len(config["id2label"])]
    if base.endswith("intermediate.dense.weight"):
        return [i, h]
    if base.endswith("intermediate.dense.bias"):
        return [i]
    if base.endswith("output.dense.weight") and "attention" not in base:
        return [h, i]
    if base.endswith(".weight") and "LayerNorm" in base:
        return [h]
    if base.endswith(".weight"):
        return [h, h]
    return [h]


def tensor_list(config, seed, head):
    """The model's tensors in seed order: XLMRobertaForSequenceClassification's under
    `roberta.` with the classification head (no pooler), XLMRobertaModel's with its pooler."""
    prefix = "roberta." if head else ""
    names = [(prefix + n, k, s) for n, k, s in EMBEDDINGS]
    for layer in range(config["num_hidden_layers"]):
        names += [(f"{prefix}encoder.layer.{layer}.{n}", k, s) for n, k, s in LAYER]
    names += HEAD if head else POOLER
    return [
        {"name": n, "shape": shape_of(n, config), "kind": k, "scale": s, "seed": seed + i}
        for i, (n, k, s) in enumerate(names)
    ]


def write_model(np, torch, directory, files, tensors):
    """Writes `files` verbatim, the tokenizer, and the tensors by the rule; returns their
    FNV-1a 64 fingerprints."""
    from safetensors.torch import save_file

    os.makedirs(directory, exist_ok=True)
    for rel, value in files.items():
        path = os.path.join(directory, rel)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "w") as f:
            json.dump(value, f, indent=2)
    shutil.copy(TOKENIZER, os.path.join(directory, "tokenizer.json"))
    weights, fingerprints = {}, {}
    for t in tensors:
        v = fill_tensor(np, t["seed"], t["shape"], t["kind"], t["scale"])
        fingerprints[t["name"]] = f"{fnv1a64(v.astype('<f4').tobytes()):016x}"
        weights[t["name"]] = torch.from_numpy(np.ascontiguousarray(v))
    save_file(weights, os.path.join(directory, "model.safetensors"))
    return fingerprints


def section(config, files, tensors, fingerprints, extra):
    return {"config": config, "files": files, "tensors": tensors, "weight_fnv1a64": fingerprints, **extra}


def min_gap(values):
    ordered = sorted(float(v) for v in values)
    return min(b - a for a, b in zip(ordered, ordered[1:]))


def ids_of(tokenizer, a, b=None, truncation=True, max_length=None):
    """The ids of a text or a pair, given as batches of one as CrossEncoder gives them (a
    lone empty second text would otherwise be taken for no second text)."""
    enc = tokenizer([a], None if b is None else [b], truncation=truncation, max_length=max_length)
    return enc["input_ids"][0]


def file_ids(a, b, max_length):
    """The ids tokenizer.json itself gives (the `tokenizers` library, as zerobatch and TEI
    run it), truncated `longest_first` at `max_length`."""
    import tokenizers

    t = tokenizers.Tokenizer.from_file(TOKENIZER)
    t.enable_truncation(max_length, strategy="longest_first")
    return t.encode(a, b).ids if b is not None else t.encode(a).ids


def reranker(np, torch, CrossEncoder, directory, vocab):
    positions = 50
    config = config_json("XLMRobertaForSequenceClassification", vocab, positions, id2label=["LABEL_0"])
    files = {"config.json": config, "tokenizer_config.json": tokenizer_config(positions)}
    for k in range(40):
        tensors = tensor_list(config, 400_000 + 1000 * k, head=True)
        fingerprints = write_model(np, torch, directory, files, tensors)
        model = CrossEncoder(directory, device="cpu")
        gap = min(min_gap(model.predict([[q["query"], p] for p in q["passages"]])) for q in QUERIES)
        print(f"reranker seed {400_000 + 1000 * k}: smallest gap {gap:.5f}", file=sys.stderr)
        if gap >= MIN_GAP:
            break
    else:
        raise SystemExit("no seed gives scores MIN_GAP apart")
    assert model.max_seq_length == positions - 2, model.max_seq_length
    tokenizer = model.tokenizer
    cases = []
    for q in QUERIES:
        pairs = [[q["query"], p] for p in q["passages"]]
        alone = np.array([model.predict([p], batch_size=1)[0] for p in pairs])
        scores = model.predict(pairs, batch_size=32)
        assert abs(alone - scores).max() <= 1e-5, (alone, scores)
        logits = model.predict(pairs, batch_size=32, activation_fn=torch.nn.Identity())
        order = [r["corpus_id"] for r in model.rank(q["query"], q["passages"], batch_size=32)]
        features = []
        for a, b in pairs:
            f = model.preprocess([[a, b]])
            assert "token_type_ids" not in f, "XLM-R's tokenizer gives no token types"
            ids = f["input_ids"][0].tolist()
            assert ids == file_ids(a, b, positions - 2), (a, b)
            features.append(
                {
                    "token_ids": ids,
                    "type_ids": [0] * len(ids),
                    "untruncated_token_count": len(ids_of(tokenizer, a, b, truncation=False)),
                }
            )
        cases.append(
            {
                "name": q["name"],
                "query": q["query"],
                "passages": q["passages"],
                "pairs": features,
                "scores": [round7(s) for s in scores],
                "logits": [round7(s) for s in logits],
                "order": order,
                "min_gap": round7(min_gap(scores)),
            }
        )
    all_ids = [i for c in cases for p in c["pairs"] for i in p["token_ids"]]
    assert PAD in all_ids, "no pair holds the padding id"
    assert any(p["untruncated_token_count"] > positions - 2 for c in cases for p in c["pairs"])
    return section(config, files, tensors, fingerprints, {"max_input_length": positions - 2, "cases": cases})


def embedder(np, torch, SentenceTransformer, directory, vocab, name, pooling, positions, max_seq_length, prompts, seed):
    config = config_json("XLMRobertaModel", vocab, positions)
    tensors = tensor_list(config, seed, head=False)
    files = {
        "config.json": config,
        "tokenizer_config.json": tokenizer_config(positions),
        "modules.json": [
            {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
            {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
            {"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"},
        ],
        "1_Pooling/config.json": {
            "word_embedding_dimension": 32,
            "pooling_mode_cls_token": pooling == "cls",
            "pooling_mode_mean_tokens": pooling == "mean",
            "pooling_mode_max_tokens": False,
            "pooling_mode_mean_sqrt_len_tokens": False,
            "pooling_mode_weightedmean_tokens": False,
            "pooling_mode_lasttoken": False,
            "include_prompt": True,
        },
        "sentence_bert_config.json": {"max_seq_length": max_seq_length, "do_lower_case": False},
        "config_sentence_transformers.json": {
            "prompts": prompts,
            "default_prompt_name": None,
            "similarity_fn_name": "cosine",
        },
    }
    fingerprints = write_model(np, torch, directory, files, tensors)
    model = SentenceTransformer(directory, device="cpu")
    assert model.max_seq_length == max_seq_length, model.max_seq_length
    assert all(model.prompts[n] == t for n, t in prompts.items()), model.prompts

    def encode(texts, **kwargs):
        batched = model.encode(texts, batch_size=32, convert_to_numpy=True, **kwargs)
        alone = np.stack([model.encode([t], batch_size=1, convert_to_numpy=True, **kwargs)[0] for t in texts])
        assert abs(alone - batched).max() <= 1e-5, f"{name}: alone and batched differ"
        return batched

    plain = encode(EMBEDDER_TEXTS)
    prompted = {n: encode(EMBEDDER_TEXTS, prompt_name=n) for n in prompts}
    tokenizer = model.tokenizer
    cases = []
    for i, text in enumerate(EMBEDDER_TEXTS):
        for t in [text] + [p + text for p in prompts.values()]:
            assert ids_of(tokenizer, t, max_length=max_seq_length) == file_ids(t, None, max_seq_length), t
        cases.append(
            {
                "text": text,
                "token_ids": ids_of(tokenizer, text, max_length=max_seq_length),
                "untruncated_token_count": len(ids_of(tokenizer, text, truncation=False)),
                "embedding": [round7(v) for v in plain[i]],
                "prompted": {n: [round7(v) for v in prompted[n][i]] for n in prompts},
            }
        )
    assert any(PAD in c["token_ids"][1:-1] for c in cases), "no text holds the padding id"
    assert any(c["untruncated_token_count"] > max_seq_length for c in cases)
    extra = {"max_input_length": max_seq_length, "pooling": pooling, "prompts": prompts, "cases": cases}
    return section(config, files, tensors, fingerprints, extra)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--train-tokenizer", action="store_true")
    parser.add_argument("--output", default=os.path.join(REPO_ROOT, "tests", "data", "tiny_xlmr_reference.json"))
    parser.add_argument("--models-dir", default=None)
    args = parser.parse_args()

    import numpy as np
    import sentence_transformers
    import tokenizers
    import torch
    import transformers
    from sentence_transformers import CrossEncoder, SentenceTransformer

    if args.train_tokenizer or not os.path.exists(TOKENIZER):
        train_tokenizer(TOKENIZER)
    vocab = tokenizers.Tokenizer.from_file(TOKENIZER).get_vocab_size(with_added_tokens=True)
    torch.manual_seed(0)
    root = args.models_dir or tempfile.mkdtemp(prefix="zb-xlmr-ref-")
    out = {
        "generator": "scripts/make-xlmr-reference.py",
        "generator_versions": (
            f"sentence-transformers {sentence_transformers.__version__}, transformers {transformers.__version__}, "
            f"tokenizers {tokenizers.__version__}, torch {torch.__version__}, numpy {np.__version__}"
        ),
        "tokenizer_sha256": sha256_of(TOKENIZER),
        "vocab_size": vocab,
    }
    try:
        out["reranker"] = reranker(np, torch, CrossEncoder, os.path.join(root, "reranker"), vocab)
        out["embedder"] = embedder(
            np, torch, SentenceTransformer, os.path.join(root, "embedder"), vocab, "embedder", "mean", 34, 32, PROMPTS, 500_000
        )
        out["cls_embedder"] = embedder(
            np, torch, SentenceTransformer, os.path.join(root, "cls_embedder"), vocab, "cls_embedder", "cls", 66, 24, {}, 600_000
        )
    finally:
        if args.models_dir is None:
            shutil.rmtree(root, ignore_errors=True)
    with open(args.output, "w") as f:
        json.dump(out, f, indent=1, ensure_ascii=False)
        f.write("\n")
    print(f"wrote {args.output}", file=sys.stderr)


if __name__ == "__main__":
    main()
