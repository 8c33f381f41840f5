#!/usr/bin/env python3
r"""Generate tests/data/minilm_reference.json: reference token ids and embeddings
for sentence-transformers/all-MiniLM-L6-v2, computed with sentence-transformers
itself, so zerobatch's Rust tokenizer and model can be checked against them.

Not part of the build or CI; run by hand when the reference must be redone.

How it was run (a throwaway venv outside the repository; CPU only):

    scripts/fetch-model.sh                      # -> models/all-MiniLM-L6-v2
    python3 -m venv /tmp/refvenv
    /tmp/refvenv/bin/pip install \
        sentence-transformers==6.2.0 transformers==5.24.0 \
        tokenizers==0.23.3 torch==2.15.0 numpy==2.4.6
    HF_HUB_OFFLINE=1 /tmp/refvenv/bin/python scripts/make-reference.py models/all-MiniLM-L6-v2

(Python 3.11.7. The default torch wheel pulls the NVIDIA CUDA packages, about
3 GB; they are not used: everything runs on the CPU, in about 10 s.
HF_HUB_OFFLINE=1 keeps the libraries from trying to reach the hub.)

Usage: make-reference.py [MODEL_DIR] [--output PATH]

MODEL_DIR defaults to models/all-MiniLM-L6-v2 and --output to
tests/data/minilm_reference.json, both relative to the repository root (this
script's ../).

Each case holds:
  name                    unique; "category/detail", the category first
  text                    the input (never empty)
  token_ids               model.tokenize([text])["input_ids"][0] (named
                          model.preprocess in sentence-transformers 6) where the
                          attention mask is 1: with [CLS]/[SEP], truncated at
                          max_seq_length (256)
  untruncated_token_count number of ids (with [CLS]/[SEP]) before truncation
  embedding               model.encode(text, normalize_embeddings=False,
                          batch_size=1): the model's own modules.json ends with
                          a Normalize module, so this is unit length
  embedding_unnormalized  the mean-pooled vector, i.e. the output of the model's
                          modules run without the final Normalize module
Floats are rounded to 7 significant digits.
"""

import argparse
import hashlib
import json
import math
import os
import sys

MODEL_ID = "sentence-transformers/all-MiniLM-L6-v2"
MODEL_SHA256 = "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db"
DIMENSIONS = 384
MAX_SEQ_LENGTH = 256

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

LONG_ENGLISH = (
    "The history of computing is a story of steadily shrinking machines and "
    "steadily growing ambitions. Early electronic computers filled entire rooms, "
    "consumed enormous amounts of power, and required teams of engineers to keep "
    "them running. Programs were entered with switches, plugboards, or punched "
    "cards, and a single calculation could take hours. Over the following decades "
    "the transistor replaced the vacuum tube, the integrated circuit replaced "
    "discrete components, and the microprocessor put a complete central processing "
    "unit on a single chip. Each step made computers cheaper, faster, and more "
    "reliable, and each step opened the door to new applications that had "
    "previously been unthinkable. Personal computers brought word processing and "
    "spreadsheets to offices and homes; networks connected those machines to one "
    "another; and the web turned the network into a vast library, marketplace, and "
    "meeting place. Today, the same basic ideas power phones that fit in a pocket "
    "and data centers that span several city blocks. Machine learning has become "
    "one of the most important workloads running on this hardware. Models that "
    "translate languages, recognize speech, describe images, and answer questions "
    "are trained on huge collections of text and pictures, and then served to "
    "millions of users. Serving such models efficiently is an engineering problem "
    "in its own right: requests arrive at unpredictable times, inputs vary in "
    "length, and latency matters as much as throughput. Batching requests "
    "together makes better use of the hardware, but waiting too long to fill a "
    "batch hurts the users who are waiting for an answer. Good inference servers "
    "balance these concerns carefully, measuring queue depth, sequence length, and "
    "memory use, and adapting their behaviour as the load changes throughout the "
    "day. The story is far from over, and the next chapter is being written now."
)

LONG_MIXED = (
    "Release notes, version 2.4.1 (2024-03-15): Fixed a crash when the input "
    "contained more than 65,536 characters; improved throughput by 37% on 8-core "
    "machines; the /v1/embeddings endpoint now accepts up to 2048 inputs per "
    "request. Known issues: café, naïve, résumé, Zürich, São Paulo and Łódź are "
    "tokenized into several word pieces; 東京, 서울 and 北京 are split into single "
    "characters; emoji such as 🚀 and 🎉 become [UNK]. Configuration keys: "
    "max_batch_size=32, max_wait_ms=5, queue_capacity=1024, threads=auto. "
    "Example request: {\"model\": \"all-MiniLM-L6-v2\", \"input\": [\"hello "
    "world\", \"good morning\"]}. Example response: {\"data\": [{\"index\": 0, "
    "\"embedding\": [0.0123, -0.0456, 0.0789]}], \"usage\": {\"prompt_tokens\": "
    "8, \"total_tokens\": 8}}. Benchmarks were run on a 2.1 GHz processor with "
    "24 GiB of memory; p50 latency was 3.2 ms, p95 latency was 7.9 ms, and p99 "
    "latency was 12.4 ms at 1,500 requests per second. Contributors: Ana María "
    "García-López, Jürgen Müller, Nguyễn Văn An, 田中太郎, 김민준, and O'Brien-Smith. "
    "Thanks to everyone who reported bugs, wrote documentation, translated the "
    "user interface into Français, Deutsch, Español, Português, Tiếng Việt, 中文, "
    "日本語 and 한국어, and reviewed pull requests #1024, #1031, #1057 and #1099. "
    "The next release will add streaming responses, request priorities, and "
    "per-tenant rate limits of 100/s, 1,000/min and 50,000/day."
)

CASES = [
    ("short/eating_food", "A man is eating food."),
    ("short/eating_bread", "A man is eating a piece of bread."),
    ("short/carrying_baby", "The girl is carrying a baby."),
    ("short/riding_horse", "A man is riding a horse."),
    ("typical/pangram", "The quick brown fox jumps over the lazy dog."),
    ("typical/embeddings", "Sentence embeddings map text to dense vectors that capture its meaning."),
    ("typical/bank_ambiguity", "I went to the bank to deposit my paycheck, then walked along the river bank."),
    ("typical/question", "How do I reset my password if I no longer have access to my email account?"),
    ("long/english", LONG_ENGLISH),
    ("long/mixed", LONG_MIXED),
    # 254 words + [CLS] + [SEP] = exactly 256 ids: no truncation.
    ("long/boundary_256", " ".join(["hello"] * 254)),
    # 255 words + 2 = 257 ids: the last word is cut.
    ("long/boundary_257", " ".join(["hello"] * 255)),
    ("accents/french", "Le cœur déçu mais l'âme plutôt naïve, Louÿs rêva de crapaüter en canoë au-delà des îles."),
    ("accents/german", "Falsches Üben von Xylophonmusik quält jeden größeren Zwerg."),
    ("accents/vietnamese", "Tôi yêu tiếng Việt vì nó có nhiều dấu thanh điệu."),
    ("accents/spanish", "¿Dónde está la estación? ¡Mañana será un día increíble!"),
    ("cjk/chinese", "我喜欢在周末和朋友一起吃饭。"),
    ("cjk/japanese", "今日はいい天気ですね。東京タワーに行きましょう。"),
    ("cjk/korean", "안녕하세요, 만나서 반갑습니다."),
    ("mixed_script/four_scripts", "Hello 世界, Привет мир, Γειά σου κόσμε, مرحبا بالعالم"),
    ("emoji/in_text", "I love pizza 🍕🍕 and tacos 🌮! 😀👍🏽 ❤️"),
    ("emoji/only", "🎉🎉🎉"),
    ("whitespace/leading_trailing", "   padded sentence with spaces   "),
    ("whitespace/repeated", "many     spaces    between     the      words"),
    ("whitespace/tabs_newlines", "line one\n\tline two\r\n\n  line three\t\t"),
    ("whitespace/unicode", "no\u00a0break\u2003em\u200bzero\u00adsoft\u3000ideographic"),
    ("single_word/hello", "hello"),
    ("single_word/char", "a"),
    ("single_word/long_wordpiece", "antidisestablishmentarianism"),
    ("punctuation_only/ascii", "?!... ,;:--()[]{}"),
    ("numbers/mixed_formats", "3.14159 2,718 42 1e-9 -17 2024-06-01 $1,234.56 50% 0x1F"),
    ("mixed_case/alternating", "ThIs Is MiXeD cAsE tExT wItH iPhone, NASA and McDonald's"),
    ("url/https_query", "Visit https://example.com/path/to/page?query=embedding&lang=en#section for details."),
    ("code/rust", 'fn main() { let v: Vec<i32> = (0..10).map(|x| x * x).collect(); println!("{:?}", v); }'),
    ("code/python", "def add(a, b):\n    return a + b\n\nprint(add(2, 3))"),
    ("email/contact", "Contact me at jane.doe+test@example.org or call +1 (555) 010-9999."),
]


def round7(x):
    x = float(x)
    if x == 0.0 or not math.isfinite(x):
        return x
    return float(f"{x:.7g}")


def sha256_of(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("model_dir", nargs="?", default=os.path.join(REPO_ROOT, "models", "all-MiniLM-L6-v2"))
    ap.add_argument("--output", default=os.path.join(REPO_ROOT, "tests", "data", "minilm_reference.json"))
    args = ap.parse_args()

    import numpy as np
    import sentence_transformers
    import torch
    import transformers
    from sentence_transformers import SentenceTransformer

    torch.set_num_threads(1)
    torch.manual_seed(0)

    sha = sha256_of(os.path.join(args.model_dir, "model.safetensors"))
    if sha != MODEL_SHA256:
        sys.exit(f"model.safetensors sha256 is {sha}, expected {MODEL_SHA256}")

    model = SentenceTransformer(args.model_dir, device="cpu")
    model.eval()
    max_seq_length = model.max_seq_length
    if max_seq_length != MAX_SEQ_LENGTH:
        print(f"warning: max_seq_length is {max_seq_length}, expected {MAX_SEQ_LENGTH}", file=sys.stderr)

    modules = list(model.children())
    names = [type(m).__name__ for m in modules]
    print(f"modules: {names}", file=sys.stderr)
    if names[-1] != "Normalize":
        sys.exit(f"expected the last module to be Normalize, got {names}")
    pre_normalize = modules[:-1]

    tokenizer = model.tokenizer
    names_seen = [n for n, _ in CASES]
    assert len(set(names_seen)) == len(names_seen), "case names must be unique"
    cases = []
    for name, text in CASES:
        assert text, "empty text"

        # model.tokenize() was renamed preprocess() in sentence-transformers 6.
        features = (model.preprocess if hasattr(model, "preprocess") else model.tokenize)([text])
        mask = features["attention_mask"][0].tolist()
        ids = [int(t) for t, m in zip(features["input_ids"][0].tolist(), mask) if m]
        untruncated = len(tokenizer(text, add_special_tokens=True, truncation=False)["input_ids"])
        assert len(ids) == min(untruncated, max_seq_length), (name, len(ids), untruncated)

        with torch.no_grad():
            emb = model.encode(
                [text],
                batch_size=1,
                normalize_embeddings=False,
                convert_to_numpy=True,
                show_progress_bar=False,
            )[0]
            feats = dict(features)  # already on the CPU; may hold non-tensors ("modality")
            for module in pre_normalize:
                feats = module(feats)
            unnorm = feats["sentence_embedding"][0].cpu().numpy()

        assert emb.shape == (DIMENSIONS,) and unnorm.shape == (DIMENSIONS,)
        norm = float(np.linalg.norm(unnorm))
        diff = float(np.max(np.abs(unnorm / norm - emb)))
        assert diff < 1e-5, (name, diff)

        cases.append(
            {
                "name": name,
                "text": text,
                "token_ids": ids,
                "untruncated_token_count": untruncated,
                "embedding": [round7(x) for x in emb.tolist()],
                "embedding_unnormalized": [round7(x) for x in unnorm.tolist()],
            }
        )
        print(f"{name:32s} tokens={len(ids):3d} (untruncated {untruncated:3d}) |unnorm|={norm:.4f}", file=sys.stderr)

    long_cases = [c for c in cases if c["untruncated_token_count"] > max_seq_length]
    if len(long_cases) < 2:
        sys.exit(f"need at least 2 cases longer than {max_seq_length} tokens, got {len(long_cases)}")

    header = {
        "model": MODEL_ID,
        "model_sha256": sha,
        "generator": (
            f"sentence-transformers {sentence_transformers.__version__}, "
            f"transformers {transformers.__version__}, torch {torch.__version__}"
        ),
        "max_seq_length": max_seq_length,
        "dimensions": DIMENSIONS,
    }
    dump = lambda v: json.dumps(v, ensure_ascii=False, separators=(",", ":"))
    lines = ["{" + ",".join(f"{dump(k)}:{dump(v)}" for k, v in header.items()) + ',"cases":[']
    lines += [dump(c) + ("," if i + 1 < len(cases) else "") for i, c in enumerate(cases)]
    lines.append("]}")
    os.makedirs(os.path.dirname(os.path.abspath(args.output)), exist_ok=True)
    tmp = args.output + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        f.write("\n".join(lines) + "\n")
    json.load(open(tmp, encoding="utf-8"))  # must parse
    os.replace(tmp, args.output)
    print(f"wrote {len(cases)} cases to {args.output}", file=sys.stderr)


if __name__ == "__main__":
    main()
