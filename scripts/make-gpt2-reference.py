#!/usr/bin/env python3
r"""Write tests/data/gpt2_tokenizer_reference.json and
tests/data/tiny_gpt2_reference.json: Hugging Face's GPT-2 tokenizer ids for a
set of awkward strings, and transformers' GPT2LMHeadModel logits for a tiny
GPT-2 whose weights both this script and the Rust tests generate from the same
rule, so that zerobatch's GPT-2 tokenizer and forward pass can be checked
against the reference implementations without downloading any model.

Not part of the build or CI; run by hand when the references must be redone.

How it was run (the venv of scripts/make-llama-reference.py: torch 2.15.0,
transformers 5.24.0, tokenizers 0.23.3, numpy 2.4.6 and regex on CPU; the
tokenizer files from scripts/fetch-gpt2-tokenizer.sh; /tmp/slowtokvenv is a
second venv holding only transformers 4.57.1 (4.x is the last major version
with a pure-Python "slow" GPT2Tokenizer; no torch needed), made with `python3 -m venv /tmp/slowtokvenv &&
/tmp/slowtokvenv/bin/pip install transformers==4.57.1`):

    scripts/fetch-gpt2-tokenizer.sh
    HF_HUB_OFFLINE=1 nice -n 15 /tmp/refvenv/bin/python scripts/make-gpt2-reference.py \
        --tokenizer-dir models/gpt2-tokenizer --slow-python /tmp/slowtokvenv/bin/python

Usage: make-gpt2-reference.py [--tokenizer-dir DIR] [--slow-python PYTHON]
[--tokenizer-output PATH] [--model-output PATH]. DIR defaults to
$ZEROBATCH_GPT2_TOKENIZER_DIR, else models/gpt2-tokenizer; the outputs default
to the two files above, relative to the repository root.

1. Tokenizer (gpt2_tokenizer_reference.json)

vocab.json and merges.txt are OpenAI's GPT-2 encoder.json and vocab.bpe, byte
for byte Hugging Face's openai-community/gpt2 files (their sha256 is checked
against the digests pinned in scripts/fetch-gpt2-tokenizer.sh). The ids are
those of transformers' GPT2TokenizerFast (the Rust `tokenizers` BPE with the
ByteLevel pre-tokenizer, add_prefix_space=False; <|endoftext|> = 50256 is the
bos, eos and unk token and an added special token, so it is matched in the
text and comes out as the single id 50256; no bos/eos is added to the ids).

Note: in transformers 5.x there is no slow GPT-2 tokenizer any more:
GPT2Tokenizer and GPT2TokenizerFast are the same tokenizers-backed class, and
GPT2TokenizerFast(vocab_file=..., merges_file=...) silently ignores both
arguments and builds an EMPTY tokenizer (every text encodes to []). This script
therefore builds it with GPT2TokenizerFast(vocab=VOCAB_PATH, merges=MERGES_PATH)
and checks that from_pretrained(DIR) gives the same ids and that the vocab has
50257 entries.

Every string's ids are checked against two independent slow implementations:
(a) always: `openai_bpe` below, a direct rendering of OpenAI's original GPT-2
encoder.py algorithm (bytes_to_unicode, the regex
's|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+
with the `regex` module, greedy lowest-rank pair merging), with the text first
split on the literal "<|endoftext|>", as transformers' slow tokenizer did;
(b) with --slow-python: transformers 4.x's pure-Python slow GPT2Tokenizer
(vocab_file=, merges_file=), run in that interpreter in a subprocess.
The script also checks that decode(ids) gives the text back (byte-level BPE is
lossless). Each entry records "text", "ids" and "tokens" (convert_ids_to_tokens:
the byte-level strings of vocab.json, e.g. "Ġworld" for " world").

2. Tiny GPT-2 (tiny_gpt2_reference.json)

The model (CONFIG below): vocab 96, context (n_positions) 48, n_embd 64, 4
heads of 16, 2 layers, n_inner None (= 4*64 = 256), activation gelu_new
(transformers' NewGELUActivation, 0.5*x*(1 + tanh(sqrt(2/pi)*(x + 0.044715*x^3)))),
LayerNorm epsilon 1e-5 (with weight and bias), attention scaled by
1/sqrt(head_dim) (scale_attn_by_inverse_layer_idx and reorder_and_upcast_attn
off), tied embeddings (the LM head is wte, no lm_head tensor), no dropout,
eager attention, float32. Pre-LN blocks: x += attn(ln_1(x)); x += mlp(ln_2(x));
logits = ln_f(x) @ wte^T; the input is wte[id] + wpe[position].

The weights (GENERATOR below; the rule's code is scripts/reference_common.py,
which make-llama-reference.py shares, and the Rust test implements the same
rule), named as in openai-community/gpt2's model.safetensors (no "transformer."
prefix; that file also holds h.{l}.attn.bias, a [1,1,1024,1024] causal-mask
buffer that a loader should ignore):

* Tensors are numbered in this order, the index being the seed:
  0 wte.weight [vocab, embd] (scale 0.5), 1 wpe.weight [n_positions, embd]
  (scale 0.1); then for layer l, 2 + 12*l + j with j =
  0 h.l.ln_1.weight [embd] norm, 1 h.l.ln_1.bias [embd] bias,
  2 h.l.attn.c_attn.weight [embd, 3*embd] (0.25), 3 h.l.attn.c_attn.bias [3*embd],
  4 h.l.attn.c_proj.weight [embd, embd] (0.25), 5 h.l.attn.c_proj.bias [embd],
  6 h.l.ln_2.weight [embd] norm, 7 h.l.ln_2.bias [embd],
  8 h.l.mlp.c_fc.weight [embd, inner] (0.25), 9 h.l.mlp.c_fc.bias [inner],
  10 h.l.mlp.c_proj.weight [inner, embd] (0.15), 11 h.l.mlp.c_proj.bias [embd];
  last, 2 + 12*layers = 26 ln_f.weight [embd] norm and 27 ln_f.bias [embd].
  Shapes are Hugging Face's own: the Conv1D weights are [in, out] (y = x @ W + b,
  NOT PyTorch Linear's [out, in]); c_attn's 192 outputs are q | k | v, 64 each,
  each split into 4 heads of 16 consecutive columns.
* Each tensor is filled in row-major order from splitmix64 seeded with its
  index: state += 0x9E3779B97F4A7C15; z = state;
  z = (z ^ z>>30) * 0xBF58476D1CE4E5B9; z = (z ^ z>>27) * 0x94D049BB133111EB;
  z ^= z>>31 (all mod 2^64). With u = f32(z >> 40) / 2^24 (exact, in [0, 1))
  and r = u*2 - 1 (exact), in float32: a weight is r * scale, a norm (LayerNorm
  weight) is 1 + r * 0.1, a bias (every .bias, LayerNorm's included) is r * 0.05.
"weight_fnv1a64" holds, per tensor, FNV-1a 64 of the float32 values'
little-endian bytes (row-major, shape as above), so the Rust test can check its
generated weights first and tell a generator mismatch from a forward-pass one.

Prompts: PROMPT_LENGTHS sequences, prompt i of n ids drawn from splitmix64
seeded with 1000 + i, id = z % vocab.

Recorded per prompt: "ids"; "logits", the logits of every position of one
causal forward pass over the whole prompt (float32, eager attention); and
"greedy", GREEDY_STEPS ids that greedy decoding appends (argmax, the lowest id
on a tie; none was closer than the recorded "greedy_min_margin"), computed
with transformers' KV cache. The script also runs transformers step by step
with its KV cache (the first ceil(n/2) tokens, then one token at a time) and
checks that it gives the same logits within 5e-5; the largest difference is
kept in "hf_incremental_max_diff". It also runs the forward pass exactly as
described above in float64 numpy (numpy_forward) and checks it against
transformers within 5e-5 ("numpy_float64_max_diff"), so the description is
known to be what transformers computes. Floats are rounded to 7 significant
digits.
"""

import argparse
import hashlib
import json
import math
import os
import subprocess
import unicodedata

from reference_common import fill_tensor, fnv1a64, prompt_ids, round7

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# The digests pinned in scripts/fetch-gpt2-tokenizer.sh.
VOCAB_SHA256 = "196139668be63f3b5d6574427317ae82f612a97c5d1cdaf36ed2256dbf636783"
MERGES_SHA256 = "1ce1664773c50f3e0cc8842619a93edc4624525b728b188a9e0be33b7726adc5"
ENDOFTEXT = "<|endoftext|>"
ENDOFTEXT_ID = 50256
GPT2_PATTERN = r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""

# No string had to be dropped: for every one of them the fast tokenizer, the
# encoder.py port and transformers 4.57.1's slow GPT2Tokenizer gave the same ids.
STRINGS = [
    # plain English, mixed case
    "Hello world",
    "The quick brown fox jumps over the lazy dog.",
    "HeLLo WoRLD, iPhone McDonald's camelCaseIdentifier SCREAMING_SNAKE_CASE",
    "the the the the the the the the",
    # contractions (GPT-2's contraction rule is lower-case only: "'S" and "'M" are not one)
    "I'm sure we don't know what they'll do, but she's here and we've seen it; you'd agree.",
    "She'S HERE, I'M SURE THEY'LL COME",
    "'s 't ''quoted'' rock 'n' roll",
    # spaces, tabs, newlines
    " leading space",
    "trailing space ",
    "   three leading and two trailing  ",
    "runs    of     spaces          x",
    "tab\tseparated\tvalues\t",
    "\n\n",
    "a\n\n\nb",
    "  \t x",
    "line one\nline two\r\nline three\r\n",
    "end of line \n next line",
    " ",
    "a\u00a0b\u2009c\u3000d",
    # digits and numbers
    "123456789",
    "3.14159",
    "2026-11-27",
    "Numbers: 1, 22, 333, 4444, 55555, 1234567890123 and 4th, 1st, abc123def",
    "1111111111111111111111111111111111111111",
    # code
    "def fib(n):\n    if n < 2:\n        return n\n    return fib(n - 1) + fib(n - 2)\n",
    "fn main() {\n    let v: Vec<u32> = std::iter::repeat(7).take(3).collect();\n"
    "    println!(\"{:?}\", v);\n}\n",
    "if (x != 0 && y >= 1) { return a[i] << 2; } // done\n\tz ||= !w;",
    # URLs, emails
    "https://example.com/path/to/page?query=1&lang=en#section",
    "contact: jane.doe+test@example.org",
    # punctuation
    "!!!???...",
    "Wait... what?!?! (really) [yes] {no} <maybe> -- \"quoted\" 'single'",
    # unicode: accents (composed and decomposed), symbols, scripts
    "café naïve résumé façade",
    "cafe\u0301 nai\u0308ve",
    "∑ x² ≤ ∞ → λ · ½ €5",
    "Привет, мир! Γειά σου Κόσμε",
    "日本語のテキスト",
    "中文文本，还有标点。",
    "한국어 텍스트",
    "مرحبا بالعالم",
    "שלום עולם",
    # emoji, including multi-codepoint sequences (ZWJ, skin tone, flag)
    "I love 🍕 and 🚀!",
    "👩‍👩‍👧",
    "👍🏽 🇫🇷",
    # control characters
    "nul\x00byte\x01\x7f",
    # the special token
    "Hello<|endoftext|>World",
    "<|endoftext|>",
    " <|endoftext|> two <|endoftext|><|endoftext|>\n",
    "<|endoftext| is not special, nor is <|endoftext",
    # empty string
    "",
    # very long words
    "Pneumonoultramicroscopicsilicovolcanoconiosis",
    "supercalifragilisticexpialidociousantidisestablishmentarianismfloccinaucinihilipilification",
]

CONFIG = {
    "vocab_size": 96,
    "n_positions": 48,
    "n_embd": 64,
    "n_head": 4,
    "n_layer": 2,
    "n_inner": None,
    "activation_function": "gelu_new",
    "layer_norm_epsilon": 1e-5,
    "tie_word_embeddings": True,
}

SCALE_WTE = 0.5
SCALE_WPE = 0.1
SCALE_ATTN = 0.25
SCALE_FC = 0.25
SCALE_MLP_PROJ = 0.15
NORM_SPREAD = 0.1
BIAS_SCALE = 0.05

PROMPT_LENGTHS = [1, 6, 19, 40]
PROMPT_SEED = 1000
GREEDY_STEPS = 8

GENERATOR = (
    "splitmix64 per tensor, seed = tensor index (0 wte.weight, 1 wpe.weight; 2+12l+j for layer l with "
    "j = ln_1.weight, ln_1.bias, attn.c_attn.weight, attn.c_attn.bias, attn.c_proj.weight, "
    "attn.c_proj.bias, ln_2.weight, ln_2.bias, mlp.c_fc.weight, mlp.c_fc.bias, mlp.c_proj.weight, "
    "mlp.c_proj.bias; then 26 ln_f.weight, 27 ln_f.bias), row-major in Hugging Face layout "
    "(Conv1D weights [in, out]); r = f32(z>>40)/2^24*2-1; weight = r*scale (wte "
    f"{SCALE_WTE}, wpe {SCALE_WPE}, c_attn and attn.c_proj {SCALE_ATTN}, c_fc {SCALE_FC}, "
    f"mlp.c_proj {SCALE_MLP_PROJ}); LayerNorm weight = 1 + r*{NORM_SPREAD}; every bias = "
    f"r*{BIAS_SCALE}; all float32. Prompt i: splitmix64 seeded {PROMPT_SEED}+i, id = z % vocab. "
    "See scripts/make-gpt2-reference.py."
)

LAYER_PARTS = [
    "ln_1.weight",
    "ln_1.bias",
    "attn.c_attn.weight",
    "attn.c_attn.bias",
    "attn.c_proj.weight",
    "attn.c_proj.bias",
    "ln_2.weight",
    "ln_2.bias",
    "mlp.c_fc.weight",
    "mlp.c_fc.bias",
    "mlp.c_proj.weight",
    "mlp.c_proj.bias",
]


# ---------------------------------------------------------------- tokenizer


def sha256_file(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def bytes_to_unicode():
    """GPT-2's byte -> printable character table (encoder.py)."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, (chr(c) for c in cs)))


class OpenAIBPE:
    """OpenAI's GPT-2 encoder.py algorithm, plus the special-token split of transformers'
    slow tokenizer (the literal <|endoftext|> becomes id 50256)."""

    def __init__(self, regex, vocab_path, merges_path):
        with open(vocab_path, encoding="utf-8") as f:
            self.encoder = json.load(f)
        with open(merges_path, encoding="utf-8") as f:
            lines = f.read().split("\n")
        assert lines[0].startswith("#version"), lines[0]
        merges = [tuple(line.split(" ")) for line in lines[1:] if line]
        assert all(len(m) == 2 for m in merges)
        self.ranks = {m: i for i, m in enumerate(merges)}
        self.byte_encoder = bytes_to_unicode()
        self.pattern = regex.compile(GPT2_PATTERN)
        self.cache = {}

    def bpe(self, token):
        if token in self.cache:
            return self.cache[token]
        word = tuple(token)
        while len(word) > 1:
            pairs = set(zip(word, word[1:]))
            bigram = min(pairs, key=lambda p: self.ranks.get(p, math.inf))
            if bigram not in self.ranks:
                break
            first, second = bigram
            merged = []
            i = 0
            while i < len(word):
                if i < len(word) - 1 and word[i] == first and word[i + 1] == second:
                    merged.append(first + second)
                    i += 2
                else:
                    merged.append(word[i])
                    i += 1
            word = tuple(merged)
        self.cache[token] = word
        return word

    def encode(self, text):
        ids = []
        for k, part in enumerate(text.split(ENDOFTEXT)):
            if k:
                ids.append(ENDOFTEXT_ID)
            for piece in self.pattern.findall(part):
                mapped = "".join(self.byte_encoder[b] for b in piece.encode("utf-8"))
                ids.extend(self.encoder[t] for t in self.bpe(mapped))
        return ids


SLOW_SNIPPET = r"""
import json, sys
import transformers
from transformers import GPT2Tokenizer
req = json.load(sys.stdin)
tok = GPT2Tokenizer(vocab_file=req["vocab"], merges_file=req["merges"])
assert not tok.is_fast and len(tok) == 50257 and tok.eos_token_id == 50256, (tok.is_fast, len(tok))
json.dump({"version": transformers.__version__,
           "ids": [tok(t, add_special_tokens=False)["input_ids"] for t in req["texts"]]}, sys.stdout)
"""


def visible_json(obj):
    def esc(ch):
        if ch == " " or (ch.isprintable() and unicodedata.category(ch) not in ("Mn", "Me")):
            return ch
        b = ch.encode("utf-16-be")
        return "".join(f"\\u{int.from_bytes(b[i:i + 2], 'big'):04x}" for i in range(0, len(b), 2))

    # Outside its strings a JSON text is ASCII, so escaping every character is safe.
    return "".join(esc(ch) for ch in json.dumps(obj, ensure_ascii=False))


def slow_transformers_ids(python, vocab_path, merges_path, texts):
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_VERBOSITY="error")
    req = json.dumps({"vocab": vocab_path, "merges": merges_path, "texts": texts})
    out = subprocess.run(
        [python, "-c", SLOW_SNIPPET], input=req, capture_output=True, text=True, env=env, check=False
    )
    if out.returncode != 0:
        raise SystemExit(f"slow tokenizer subprocess failed:\n{out.stderr}")
    res = json.loads(out.stdout)
    return res["version"], res["ids"]


def make_tokenizer_reference(args):
    import regex
    import tokenizers
    import transformers
    from transformers import GPT2TokenizerFast

    vocab_path = os.path.abspath(os.path.join(args.tokenizer_dir, "vocab.json"))
    merges_path = os.path.abspath(os.path.join(args.tokenizer_dir, "merges.txt"))
    vocab_sha, merges_sha = sha256_file(vocab_path), sha256_file(merges_path)
    assert vocab_sha == VOCAB_SHA256, f"{vocab_path}: sha256 {vocab_sha}, expected {VOCAB_SHA256}"
    assert merges_sha == MERGES_SHA256, f"{merges_path}: sha256 {merges_sha}, expected {MERGES_SHA256}"

    # Not vocab_file=/merges_file=: transformers 5.x ignores them (see the docstring).
    fast = GPT2TokenizerFast(vocab=vocab_path, merges=merges_path)
    assert fast.is_fast and len(fast) == 50257 and fast.vocab_size == 50257, (len(fast), fast.vocab_size)
    for name in ("bos_token", "eos_token", "unk_token"):
        assert getattr(fast, name) == ENDOFTEXT, (name, getattr(fast, name))
    assert fast.eos_token_id == fast.bos_token_id == fast.unk_token_id == ENDOFTEXT_ID
    pretrained = GPT2TokenizerFast.from_pretrained(os.path.dirname(vocab_path), local_files_only=True)
    port = OpenAIBPE(regex, vocab_path, merges_path)

    texts = list(STRINGS)
    assert len(texts) >= 30 and len(set(texts)) == len(texts)
    slow_version, slow_ids = None, None
    if args.slow_python:
        slow_version, slow_ids = slow_transformers_ids(args.slow_python, vocab_path, merges_path, texts)
    else:
        print("warning: no --slow-python, so transformers' slow GPT2Tokenizer is not checked")

    entries = []
    for i, text in enumerate(texts):
        ids = fast(text, add_special_tokens=False)["input_ids"]
        assert ids == fast.encode(text), text
        assert ids == pretrained(text, add_special_tokens=False)["input_ids"], text
        assert ids == port.encode(text), (text, ids, port.encode(text))
        if slow_ids is not None:
            assert ids == slow_ids[i], (text, ids, slow_ids[i])
        assert fast.decode(ids, clean_up_tokenization_spaces=False) == text, text
        assert ids.count(ENDOFTEXT_ID) == text.count(ENDOFTEXT), text
        tokens = fast.convert_ids_to_tokens(ids)
        assert all(fast.convert_tokens_to_ids(t) == j for t, j in zip(tokens, ids))
        entries.append({"text": text, "ids": ids, "tokens": tokens})

    checks = ["transformers GPT2TokenizerFast.from_pretrained(dir)", "a port of OpenAI's GPT-2 encoder.py in the script"]
    if slow_version:
        checks.append(f"transformers {slow_version} slow (pure-Python) GPT2Tokenizer")
    doc = {
        "about": (
            "GPT-2 tokenizer ids (transformers GPT2TokenizerFast, no special tokens added; "
            "<|endoftext|> in the text is the single id 50256); made by scripts/make-gpt2-reference.py "
            "from the vocab.json/merges.txt of scripts/fetch-gpt2-tokenizer.sh"
        ),
        "generator_versions": (
            f"transformers {transformers.__version__}, tokenizers {tokenizers.__version__}, regex {regex.__version__}"
        ),
        "checked_against": checks,
        "vocab_sha256": vocab_sha,
        "merges_sha256": merges_sha,
        "vocab_size": len(fast),
        "endoftext_id": ENDOFTEXT_ID,
        "strings": entries,
    }
    # One string per line so that diffs stay readable; UTF-8, but with invisible characters
    # (controls, DEL, no-break and other odd spaces, ZWJ) and combining marks written as \u
    # escapes.
    body = ",\n".join(visible_json(e) for e in entries)
    head = visible_json({k: v for k, v in doc.items() if k != "strings"})
    text = head[:-1] + ',"strings":[\n' + body + "\n]}\n"
    assert json.loads(text) == doc
    write_atomic(args.tokenizer_output, text)
    print(f"{len(entries)} strings, {sum(len(e['ids']) for e in entries)} ids; checked against: {'; '.join(checks)}")


# ---------------------------------------------------------------- tiny GPT-2


def tensor_specs():
    """(safetensors name, seed, shape, kind, scale) in seed order."""
    c = CONFIG
    d, v, p = c["n_embd"], c["vocab_size"], c["n_positions"]
    inner = c["n_inner"] or 4 * d
    specs = [
        ("wte.weight", 0, (v, d), "weight", SCALE_WTE),
        ("wpe.weight", 1, (p, d), "weight", SCALE_WPE),
    ]
    shapes = {
        "ln_1.weight": ((d,), "norm", NORM_SPREAD),
        "ln_1.bias": ((d,), "bias", BIAS_SCALE),
        "attn.c_attn.weight": ((d, 3 * d), "weight", SCALE_ATTN),
        "attn.c_attn.bias": ((3 * d,), "bias", BIAS_SCALE),
        "attn.c_proj.weight": ((d, d), "weight", SCALE_ATTN),
        "attn.c_proj.bias": ((d,), "bias", BIAS_SCALE),
        "ln_2.weight": ((d,), "norm", NORM_SPREAD),
        "ln_2.bias": ((d,), "bias", BIAS_SCALE),
        "mlp.c_fc.weight": ((d, inner), "weight", SCALE_FC),
        "mlp.c_fc.bias": ((inner,), "bias", BIAS_SCALE),
        "mlp.c_proj.weight": ((inner, d), "weight", SCALE_MLP_PROJ),
        "mlp.c_proj.bias": ((d,), "bias", BIAS_SCALE),
    }
    for l in range(c["n_layer"]):
        for j, part in enumerate(LAYER_PARTS):
            shape, kind, scale = shapes[part]
            specs.append((f"h.{l}.{part}", 2 + 12 * l + j, shape, kind, scale))
    last = 2 + 12 * c["n_layer"]
    specs.append(("ln_f.weight", last, (d,), "norm", NORM_SPREAD))
    specs.append(("ln_f.bias", last + 1, (d,), "bias", BIAS_SCALE))
    return specs


def numpy_forward(np, w, ids):
    """The forward pass as the docstring describes it, in float64 numpy: a check that the
    description (Conv1D layout, q|k|v split, gelu_new, tied head) is what transformers runs."""
    c = CONFIG
    d, heads = c["n_embd"], c["n_head"]
    hd = d // heads
    n = len(ids)
    W = {k: v.astype(np.float64) for k, v in w.items()}

    def ln(x, p):
        mu = x.mean(-1, keepdims=True)
        var = ((x - mu) ** 2).mean(-1, keepdims=True)
        return (x - mu) / np.sqrt(var + c["layer_norm_epsilon"]) * W[p + ".weight"] + W[p + ".bias"]

    def gelu_new(x):
        return 0.5 * x * (1.0 + np.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x**3)))

    x = W["wte.weight"][ids] + W["wpe.weight"][:n]
    causal = np.triu(np.full((n, n), -np.inf), 1)
    for l in range(c["n_layer"]):
        p = f"h.{l}."
        qkv = ln(x, p + "ln_1") @ W[p + "attn.c_attn.weight"] + W[p + "attn.c_attn.bias"]
        q, k, v = (qkv[:, i * d : (i + 1) * d].reshape(n, heads, hd).transpose(1, 0, 2) for i in range(3))
        s = q @ k.transpose(0, 2, 1) / math.sqrt(hd) + causal
        s = np.exp(s - s.max(-1, keepdims=True))
        a = (s / s.sum(-1, keepdims=True)) @ v
        a = a.transpose(1, 0, 2).reshape(n, d)
        x = x + a @ W[p + "attn.c_proj.weight"] + W[p + "attn.c_proj.bias"]
        h = gelu_new(ln(x, p + "ln_2") @ W[p + "mlp.c_fc.weight"] + W[p + "mlp.c_fc.bias"])
        x = x + h @ W[p + "mlp.c_proj.weight"] + W[p + "mlp.c_proj.bias"]
    return ln(x, "ln_f") @ W["wte.weight"].T


def make_model_reference(args):
    import numpy as np
    import torch
    import transformers
    from transformers import DynamicCache, GPT2Config, GPT2LMHeadModel

    torch.set_num_threads(1)
    torch.manual_seed(0)
    c = CONFIG
    assert c["n_embd"] % c["n_head"] == 0
    assert max(PROMPT_LENGTHS) + GREEDY_STEPS - 1 <= c["n_positions"]

    specs = tensor_specs()
    assert [s[1] for s in specs] == list(range(len(specs)))
    weights = {name: fill_tensor(np, seed, shape, kind, scale) for name, seed, shape, kind, scale in specs}
    hashes = {name: f"{fnv1a64(w.astype('<f4').tobytes()):016x}" for name, w in weights.items()}

    config = GPT2Config(
        vocab_size=c["vocab_size"],
        n_positions=c["n_positions"],
        n_embd=c["n_embd"],
        n_layer=c["n_layer"],
        n_head=c["n_head"],
        n_inner=c["n_inner"],
        activation_function=c["activation_function"],
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
        layer_norm_epsilon=c["layer_norm_epsilon"],
        scale_attn_weights=True,
        scale_attn_by_inverse_layer_idx=False,
        reorder_and_upcast_attn=False,
        tie_word_embeddings=c["tie_word_embeddings"],
        bos_token_id=None,
        eos_token_id=None,
        pad_token_id=None,
    )
    model = GPT2LMHeadModel(config).to(torch.float32)
    model.set_attn_implementation("eager")
    assert model.transformer.h[0].attn.config._attn_implementation == "eager"
    assert type(model.transformer.h[0].mlp.act).__name__ == "NewGELUActivation"
    sd = {f"transformer.{name}": torch.from_numpy(w.copy()) for name, w in weights.items()}
    own = model.state_dict()
    for k, t in sd.items():
        assert own[k].shape == t.shape, (k, tuple(own[k].shape), tuple(t.shape))
    missing, unexpected = model.load_state_dict(sd, strict=False)
    assert not unexpected, unexpected
    assert set(missing) <= {"lm_head.weight"}, missing
    model.tie_weights()
    assert model.lm_head.weight.data_ptr() == model.transformer.wte.weight.data_ptr()
    model.eval()
    for k, t in sd.items():
        assert torch.equal(model.state_dict()[k], t), k

    ids_list = prompt_ids(PROMPT_LENGTHS, PROMPT_SEED, CONFIG["vocab_size"])
    entries = []
    incremental_max = 0.0
    numpy_max = 0.0
    min_margin = math.inf
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
            # Greedy continuation, with the cache.
            cache = DynamicCache(config=config)
            last = model(input_ids=x, cache=cache, use_cache=True).logits[0, -1]
            greedy = []
            for s in range(GREEDY_STEPS):
                top2 = torch.topk(last, 2).values
                min_margin = min(min_margin, float(top2[0] - top2[1]))
                nxt = int(torch.argmax(last))
                greedy.append(nxt)
                if s + 1 < GREEDY_STEPS:
                    last = model(input_ids=torch.tensor([[nxt]]), cache=cache, use_cache=True).logits[0, -1]
        assert full.shape == (n, c["vocab_size"]), full.shape
        assert greedy[0] == int(np.argmax(full[-1]))
        diff = float(np.abs(inc - full).max())
        assert diff < 5e-5, (n, diff)
        np_diff = float(np.abs(numpy_forward(np, weights, ids) - full).max())
        assert np_diff < 5e-5, (n, np_diff)
        numpy_max = max(numpy_max, np_diff)
        incremental_max = max(incremental_max, diff)
        entries.append({"ids": ids, "greedy": greedy, "logits": [[round7(v) for v in row] for row in full.tolist()]})
        print(f"prompt of {n:2d}: |logits| max {np.abs(full).max():.3f}, incremental diff {diff:.2e}, numpy diff {np_diff:.2e}, greedy {greedy}")
    assert min_margin > 1e-3, min_margin

    doc = {
        "about": (
            "transformers GPT2LMHeadModel logits for a generated tiny GPT-2 (tensor names as in "
            "openai-community/gpt2's model.safetensors); made by scripts/make-gpt2-reference.py"
        ),
        "generator_versions": f"transformers {transformers.__version__}, torch {torch.__version__}, numpy {np.__version__}",
        "config": c,
        "weights": GENERATOR,
        "tensors": [{"name": name, "seed": seed, "shape": list(shape)} for name, seed, shape, _, _ in specs],
        "weight_fnv1a64": hashes,
        "hf_incremental_max_diff": float(f"{incremental_max:.3g}"),
        "numpy_float64_max_diff": float(f"{numpy_max:.3g}"),
        "greedy_min_margin": float(f"{min_margin:.3g}"),
        "prompts": entries,
    }
    text = json.dumps(doc, separators=(",", ":")) + "\n"
    write_atomic(args.model_output, text)


# ---------------------------------------------------------------- main


def write_atomic(path, text):
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
    with open(tmp, encoding="utf-8") as f:
        json.load(f)  # must parse
    os.replace(tmp, path)
    print(f"wrote {path} ({os.path.getsize(path)} bytes)")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument(
        "--tokenizer-dir",
        default=os.environ.get("ZEROBATCH_GPT2_TOKENIZER_DIR") or os.path.join(REPO_ROOT, "models", "gpt2-tokenizer"),
        help="directory with vocab.json and merges.txt (scripts/fetch-gpt2-tokenizer.sh)",
    )
    ap.add_argument("--slow-python", help="python with transformers 4.x, to check its slow GPT2Tokenizer too")
    ap.add_argument(
        "--tokenizer-output", default=os.path.join(REPO_ROOT, "tests", "data", "gpt2_tokenizer_reference.json")
    )
    ap.add_argument("--model-output", default=os.path.join(REPO_ROOT, "tests", "data", "tiny_gpt2_reference.json"))
    args = ap.parse_args()
    make_tokenizer_reference(args)
    make_model_reference(args)


if __name__ == "__main__":
    main()
