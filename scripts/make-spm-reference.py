#!/usr/bin/env python3
r"""Write tests/data/spm_tokenizer_reference.json: llama.cpp's tokenization with a
SentencePiece ("llama", SPM) vocabulary, the reference for zerobatch's GGUF
files whose tokenizer.ggml.model is "llama" (Llama 2, TinyLlama, Mistral).

Not part of the build or CI; run by hand when the reference must be redone.
Nothing is downloaded at run time: the vocabulary is trained here, from this
repository's own text.

How it was run (a throwaway venv outside the repository; gguf is not
installed: the script imports llama.cpp's own gguf-py from the source tree
that scripts/build-llama-cpp.sh unpacked):

    python3 -m venv /tmp/spmvenv
    /tmp/spmvenv/bin/pip install sentencepiece==0.2.3 numpy==2.4.6 pyyaml==6.0.4
    scripts/build-llama-cpp.sh
    nice -n 19 /tmp/spmvenv/bin/python scripts/make-spm-reference.py

Usage: make-spm-reference.py [--bin DIR] [--llama-cpp-src DIR] [--out JSON]
[--keep-dir DIR]. DIR defaults to the bin/ printed by
scripts/build-llama-cpp.sh (which builds llama.cpp only when it is missing),
the source tree to DIR/../src/llama.cpp, the output to
tests/data/spm_tokenizer_reference.json. --keep-dir also saves the corpus, the
SentencePiece model (spm.model) and the vocab-only GGUF (spm-vocab.gguf).
The whole run takes about two seconds; running it twice gives the same bytes.

1. Corpus (deterministic). The non-blank lines (trailing whitespace removed)
   of CORPUS_FILES, this repository's docs/*.md and a few source files, read
   with `git show CORPUS_COMMIT:path` so that later edits do not change it,
   then UNICODE_LINES (accented Latin, Cyrillic, Greek, a little Japanese and
   Chinese, typographic symbols, two emoji) UNICODE_REPEAT times each. Its
   sha256 is recorded.

2. Training. sentencepiece's trainer with Llama 2's tokenizer.model settings
   (TRAINER_OPTIONS: BPE, byte_fallback, split_digits, split by unicode
   script / whitespace / number, whitespace-only pieces allowed, identity
   normalization, add_dummy_prefix, remove_extra_whitespaces off, character
   coverage 0.99995, <unk> 0, <s> 1, </s> 2, no pad) at vocab_size 1000. For
   reproducibility every sentence is used in order (input_sentence_size 0,
   shuffle off), one thread, a fixed random-generator seed, and the sentences
   come from an iterator and the model goes to memory, so no temporary path is
   written into the model. The model is trained twice and the two must be the
   same bytes. Its layout: 0 <unk>, 1 <s>, 2 </s>, 3..258 the byte pieces
   <0x00>..<0xFF> (all score 0), then from 259 the merged pieces in merge
   order and after them the single characters, scored 0 (written -0.0), -1,
   -2, ... down the list.

3. Vocab-only GGUF, as llama.cpp's converter writes a Llama SentencePiece
   model (convert_hf_to_gguf.py -> conversion/base.py
   _create_vocab_sentencepiece / _set_vocab_sentencepiece and
   gguf.SpecialVocab): tokens = the pieces, scores = the piece scores,
   token_type NORMAL 1 / UNKNOWN 2 / CONTROL 3 / UNUSED 5 / BYTE 6 (IsUnknown,
   IsControl, IsUnused, IsByte; there is no USER_DEFINED 4 piece here),
   tokenizer.ggml.model "llama", tokenizer.ggml.pre "default", bos/eos/unk
   ids, add_bos_token true, add_eos_token false, add_space_prefix true, with
   general.architecture "llama" and small llama.* hyperparameters (HPARAMS;
   llama.cpp reads none of them for a vocab-only load). The key/values read
   back from the file are kept in "gguf_kv". It is written with gguf-py's
   GGUFWriter and has no tensors, like llama.cpp's models/ggml-vocab-*.gguf.

4. Tokenization. tools/tokenize/tokenize.cpp loads the GGUF with
   llama_model_params.vocab_only = true, adds BOS when the vocab's
   add_bos_token is true unless --no-bos is given, and parses special tokens
   written in the text unless --no-parse-special is given (the tokenize tool
   turns parse_special on by default; common/arg.cpp). It processes escapes
   (\n, \t, \\ ...) in its input by default, so --no-escape is passed. The
   command is
       llama-tokenize -m spm-vocab.gguf --stdin --ids --no-escape --log-disable
   with the text's UTF-8 bytes on stdin; the last line of stdout is the id
   list. That gives "ids". The same with --no-parse-special gives
   "ids_no_parse_special" (kept only where it differs from "ids"); --no-bos is
   checked to give "ids" without its first element.
   "sentencepiece_ids" is [1] + SentencePieceProcessor.encode(text) on the
   trained model. Every case is also checked against LlamaCppSpm below, a
   plain-Python port of llama.cpp's SPM tokenizer, so the behaviour described
   next is what llama-tokenize shows.

llama.cpp's SPM tokenizer (src/llama-vocab.cpp, llama_vocab::impl::tokenize):
* Special tokens first: with parse_special, every CONTROL, UNKNOWN and
  USER_DEFINED token's text (<s>, </s>, <unk> here), longest first, is cut out
  of the text wherever it occurs and becomes its id; without parse_special
  only USER_DEFINED ones are. BOS is then prepended when add_special and
  add_bos_token; EOS appended when add_eos_token (false here).
* Space prefix: each remaining text fragment gets one " " in front when
  add_space_prefix is set and the fragment is the first one or follows a
  special token (whether or not a BOS was added). So "Hello <s> world" is
  "▁Hello▁" <s> "▁▁world". The empty text gives just [BOS]; " " gives "▁▁".
  Then every " " becomes "▁" (U+2581); a literal U+2581 in the text is the
  same thing as a space. No other normalization, no pre-splitting (digits and
  words are kept apart only because the vocabulary has no pieces that join
  them).
* Merging: the fragment is split into code points; repeatedly the adjacent
  pair whose concatenation is a token with the highest score is merged (ties:
  leftmost first), until no pair is a token. Any token text counts,
  whatever its type.
* Byte fallback: a final symbol that is not a token (only a single code point
  can be one) is emitted as its UTF-8 bytes, each as the token <0xXX>. With
  byte tokens in the vocabulary, text never becomes <unk> (0): unknown
  characters are bytes.

Output: "vocab" (tokens, scores, token_type, special ids, add_* flags), and per
case "text", "ids" (llama.cpp's, BOS included: the reference),
"sentencepiece_ids", "pieces" (the token strings of "ids"), and where relevant
"ids_no_parse_special" and "disagreement" (why sentencepiece differs); the
disagreements are also listed in "summary".
"""

import argparse
import hashlib
import heapq
import io
import json
import platform
import re
import shlex
import subprocess
import sys
import tempfile
from pathlib import Path

from reference_common import last_line

REPO = Path(__file__).resolve().parent.parent

# --- corpus -----------------------------------------------------------------
# Files of this repository, read at a pinned commit with `git show`, so the
# corpus stays the same whatever the work tree holds.
CORPUS_COMMIT = "770da21b27d62291a67effa8cdd825bb65310581"
CORPUS_FILES = [
    "docs/api.md",
    "docs/architecture.md",
    "docs/benchmarks.md",
    "docs/deploy-azure.md",
    "docs/queue.md",
    "docs/reliability.md",
    "docs/scaling.md",
    "src/config.rs",
    "src/generate/tokenizer.rs",
    "src/batcher.rs",
    "scripts/make-generation-reference.py",
]
# Fixed non-ASCII lines, each written UNICODE_REPEAT times, so that these
# letters (and their common pairs) become pieces. Characters of the test
# strings that are not here (most emoji, most CJK) fall back to bytes.
UNICODE_REPEAT = 10
UNICODE_LINES = [
    "Le café est très chaud, et la crème brûlée est délicieuse à Noël.",
    "Über die Brücke gehen Äpfel, Öl und Größe; Zürich ist schön.",
    "El niño comió piña en España; ¿qué más? ¡Olé!",
    "Ça coûte cher: naïve façade, résumé, déjà vu, Ångström, Øresund.",
    "Привет, мир! Как дела? Спасибо, хорошо.",
    "Καλημέρα κόσμε, τι κάνεις; Ελληνικά γράμματα.",
    "日本語のテキストです。東京は大きい。",
    "你好，世界。我们的服务器很快。",
    "Temperature: 25°C ± 0.5°C — “quoted” ‘text’ … • → ← ×",
    "Smile 😀 and a heart ❤",
]

# --- SentencePiece trainer (Llama 2's tokenizer.model trainer_spec and
# normalizer_spec, scaled down to a vocabulary of VOCAB_SIZE) ---------------
VOCAB_SIZE = 1000
SEED = 20240607
TRAINER_OPTIONS = {
    "model_type": "bpe",
    "vocab_size": VOCAB_SIZE,
    "character_coverage": 0.99995,
    "byte_fallback": True,
    "split_digits": True,
    "split_by_unicode_script": True,
    "split_by_whitespace": True,
    "split_by_number": True,
    "treat_whitespace_as_suffix": False,
    "allow_whitespace_only_pieces": True,
    "max_sentencepiece_length": 16,
    "max_sentence_length": 4192,
    "normalization_rule_name": "identity",
    "add_dummy_prefix": True,
    "remove_extra_whitespaces": False,
    "unk_id": 0,
    "bos_id": 1,
    "eos_id": 2,
    "pad_id": -1,
    "unk_piece": "<unk>",
    "bos_piece": "<s>",
    "eos_piece": "</s>",
    "unk_surface": " \u2047 ",
    "hard_vocab_limit": True,
    "vocabulary_output_piece_score": True,
    # reproducibility: every line is used, in file order, on one thread
    "input_sentence_size": 0,
    "shuffle_input_sentence": False,
    "num_threads": 1,
    "minloglevel": 2,
}

# SentencePiece token types as llama.cpp's converter writes them
# (gguf.TokenType / convert_hf_to_gguf.py's SentencePieceTokenTypes).
NORMAL, UNKNOWN, CONTROL, USER_DEFINED, UNUSED, BYTE = 1, 2, 3, 4, 5, 6

# --- the test strings ----------------------------------------------------------
CASES = [
    # plain English
    "Hello world",
    "The quick brown fox jumps over the lazy dog.",
    "Once upon a time, there was a little girl named Alice.",
    "The batcher groups requests into micro-batches of up to 32 sequences.",
    "HELLO hello Hello hELLO",
    "snake_case camelCase PascalCase kebab-case",
    # leading / trailing spaces, runs of spaces
    " Hello world",
    "   three leading spaces",
    "trailing spaces   ",
    "a  b   c    d     e",
    # tabs, newlines
    "\tindented\twith\ttabs",
    "\t\t",
    "\n",
    "\n\n",
    "line one\nline two\n\nline four\n",
    "CRLF line\r\nnext line\r\n",
    # digits (split_digits: one token per digit)
    "12345678901234567890",
    "3.14159 and 2.71828",
    "In 2024, 42 people paid $1,999.99 each.",
    "0x1F 0b1010 1e-5 -273.15",
    # code
    'def greet(name):\n    return f"Hello, {name}!"\n',
    "fn main() {\n    let v: Vec<u32> = (0..10).collect();\n    println!(\"{:?}\", v);\n}\n",
    '{"model": "tinyllama", "max_tokens": 128, "stop": ["\\n"]}',
    "if (x != nullptr && y >= 0) { return x->y[i++]; }",
    "curl -s localhost:8080/v1/embeddings | jq '.data[0]'",
    # punctuation runs
    "e.g. i.e. etc... -- ... !!! ??? ?!?!",
    "((([[[{{{<<<>>>}}}]]])))",
    # accented letters, other scripts
    "café naïve résumé Zürich Ångström",
    "Привет, мир! Как дела?",
    "Ελληνικά και العربية",
    "日本語のテキスト、中文文本",
    "한국어 텍스트",
    "Temperature: 25°C ± 0.5°C — “quoted”",
    # emoji (byte fallback where not in the vocabulary)
    "emoji: 😀🚀👍🏽 and ❤️",
    "🦙",
    "family: 👨‍👩‍👧",
    # special tokens written in the text
    "<s>",
    "</s>",
    "<s>Hello</s>",
    "Hello <s> world </s> bye",
    "</s></s>",
    "<unk> written in text",
    "<0x41> and <0x0A> written as text",
    "\u2581 U+2581 written literally",
    "mixed: naïve 日本 😀 123 <s> end",
    # empty, whitespace only
    "",
    " ",
    "  ",
    # very long words
    "Pneumonoultramicroscopicsilicovolcanoconiosis",
    "Donaudampfschifffahrtselektrizitätenhauptbetriebswerkbauunterbeamtengesellschaft",
    "abcdefghijklmnopqrstuvwxyz" * 4,
]


def log(msg):
    print(f"make-spm-reference: {msg}", file=sys.stderr, flush=True)


def rel(p):
    try:
        return str(Path(p).resolve().relative_to(REPO))
    except ValueError:
        return str(p)


def build_corpus():
    """One sentence a line: the non-blank lines of CORPUS_FILES at
    CORPUS_COMMIT (trailing whitespace removed, leading kept), then
    UNICODE_LINES, each UNICODE_REPEAT times."""
    lines = []
    for path in CORPUS_FILES:
        text = subprocess.run(["git", "-C", str(REPO), "show", f"{CORPUS_COMMIT}:{path}"],
                              check=True, stdout=subprocess.PIPE).stdout.decode("utf-8")
        for line in text.splitlines():
            line = line.rstrip()
            if line and len(line.encode()) <= TRAINER_OPTIONS["max_sentence_length"]:
                lines.append(line)
    for _ in range(UNICODE_REPEAT):
        lines.extend(UNICODE_LINES)
    return "".join(line + "\n" for line in lines), len(lines)


def train(spm, corpus):
    """The serialized model. The sentences come from an iterator and the model
    goes to a BytesIO, so no file path is recorded in its trainer_spec and
    the model's bytes are the same on every run."""
    spm.set_random_generator_seed(SEED)
    out = io.BytesIO()
    spm.SentencePieceTrainer.train(sentence_iterator=iter(corpus.splitlines()), model_writer=out,
                                   **TRAINER_OPTIONS)
    return out.getvalue()


def vocab_from_model(sp):
    """tokens, scores, token types exactly as convert_hf_to_gguf.py's
    _create_vocab_sentencepiece makes them (no added_tokens.json, no
    tokenizer_config.json, vocab_size = the model's)."""
    tokens, scores, types = [], [], []
    for i in range(sp.vocab_size()):
        t = NORMAL
        if sp.IsUnknown(i):
            t = UNKNOWN
        elif sp.IsControl(i):
            t = CONTROL
        elif sp.IsUnused(i):
            t = UNUSED
        elif sp.IsByte(i):
            t = BYTE
        tokens.append(sp.IdToPiece(i))
        scores.append(sp.GetScore(i))
        types.append(t)
    return tokens, scores, types


# Hyperparameters for the vocab-only GGUF. llama.cpp reads none of them when
# it loads vocab_only (llama_model_base::load_hparams returns right after
# general.name), but a llama GGUF is expected to carry them; they describe a
# tiny model of no consequence.
HPARAMS = {
    "context_length": 2048,
    "embedding_length": 64,
    "feed_forward_length": 128,
    "block_count": 1,
    "head_count": 4,
    "head_count_kv": 4,
    "layer_norm_rms_eps": 1e-5,
    "rope_dimension_count": 16,
}


def write_gguf(gguf, path, tokens, scores, types, bos, eos, unk):
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_name("zerobatch-spm-test")
    w.add_context_length(HPARAMS["context_length"])
    w.add_embedding_length(HPARAMS["embedding_length"])
    w.add_feed_forward_length(HPARAMS["feed_forward_length"])
    w.add_block_count(HPARAMS["block_count"])
    w.add_head_count(HPARAMS["head_count"])
    w.add_head_count_kv(HPARAMS["head_count_kv"])
    w.add_layer_norm_rms_eps(HPARAMS["layer_norm_rms_eps"])
    w.add_vocab_size(len(tokens))
    w.add_rope_dimension_count(HPARAMS["rope_dimension_count"])
    # _set_vocab_sentencepiece
    w.add_tokenizer_model("llama")
    w.add_tokenizer_pre("default")
    w.add_token_list([t.encode("utf-8") for t in tokens])
    w.add_token_scores(scores)
    w.add_token_types(types)
    # gguf.SpecialVocab from a Llama tokenizer_config.json / config.json
    w.add_bos_token_id(bos)
    w.add_eos_token_id(eos)
    w.add_unk_token_id(unk)
    w.add_add_bos_token(True)
    w.add_add_eos_token(False)
    # LlamaModel.set_vocab: tokenizer_config.json's add_prefix_space, when set
    w.add_add_space_prefix(True)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def gguf_kv_summary(gguf, path):
    """The GGUF's scalar key/values, and the arrays' lengths, read back."""
    r = gguf.GGUFReader(str(path))
    out = {}
    for k, f in r.fields.items():
        if k.startswith("GGUF."):
            continue
        if f.types and f.types[0] == gguf.GGUFValueType.ARRAY:
            out[k] = f"array of {len(f.data)}"
        else:
            v = f.contents()
            out[k] = float(f"{v:.7g}") if isinstance(v, float) else v
    return out


def tokenize_cmd(tokenize_bin, model, *extra):
    # --stdin: the text goes through no shell or argv; --no-escape: "\n" in
    # the text stays a backslash and an n (escapes are processed by default);
    # special tokens are parsed by default (LLAMA_EXAMPLE_TOKENIZE sets
    # parse_special); BOS is added when the vocab's add_bos_token says so.
    return [str(tokenize_bin), "-m", str(model), "--stdin", "--ids", "--no-escape",
            "--log-disable", *extra]


def llama_tokenize(tokenize_bin, model, text, *extra):
    r = subprocess.run(tokenize_cmd(tokenize_bin, model, *extra), input=text.encode(),
                       stdout=subprocess.PIPE, stderr=subprocess.PIPE, check=True)
    return json.loads(r.stdout.decode().strip().splitlines()[-1])


class LlamaCppSpm:
    """A plain-Python port of llama.cpp's SPM tokenizer (src/llama-vocab.cpp:
    tokenizer_st_partition, llama_vocab::impl::tokenize's LLAMA_VOCAB_TYPE_SPM
    branch and llm_tokenizer_spm_session), to check that the behaviour the
    JSON documents is the one llama-tokenize shows."""

    def __init__(self, tokens, scores, types, bos, add_bos=True, add_space_prefix=True):
        self.tokens, self.scores, self.types = tokens, scores, types
        # like llama.cpp's token_to_id, the last id wins for a repeated text
        self.to_id = {t: i for i, t in enumerate(tokens)}
        self.bos, self.add_bos, self.add_space_prefix = bos, add_bos, add_space_prefix
        ids = [i for i, t in enumerate(types) if t in (CONTROL, USER_DEFINED, UNKNOWN)]
        self.specials = sorted(ids, key=lambda i: -len(tokens[i].encode()))

    def partition(self, text, parse_special):
        frags = [text] if text else []
        for sid in self.specials:
            if not parse_special and self.types[sid] in (CONTROL, UNKNOWN):
                continue
            st, out = self.tokens[sid], []
            for f in frags:
                if isinstance(f, int):
                    out.append(f)
                    continue
                parts = f.split(st)
                for j, p in enumerate(parts):
                    if j:
                        out.append(sid)
                    if p:
                        out.append(p)
            frags = out
        return frags

    def session(self, text, out):
        syms = list(text)  # one symbol per code point
        n = len(syms)
        prev = list(range(-1, n - 1))
        nxt = [i + 1 if i + 1 < n else -1 for i in range(n)]
        heap, rev_merge = [], {}

        def add_bigram(left, right):
            if left == -1 or right == -1:
                return
            s = syms[left] + syms[right]
            tid = self.to_id.get(s)
            if tid is None:
                return
            heapq.heappush(heap, (-self.scores[tid], left, right, len(s)))
            rev_merge[s] = (left, right)

        for i in range(1, n):
            add_bigram(i - 1, i)
        while heap:
            _, left, right, size = heapq.heappop(heap)
            if not syms[left] or not syms[right] or len(syms[left]) + len(syms[right]) != size:
                continue
            syms[left] += syms[right]
            syms[right] = ""
            nxt[left] = nxt[right]
            if nxt[right] >= 0:
                prev[nxt[right]] = left
            add_bigram(prev[left], left)
            add_bigram(left, nxt[left])

        # As in llama.cpp, rev_merge's symbols are read as they are after all
        # merges. Every merged symbol is a token, so only a single code point
        # that is not one reaches the byte fallback (rev_merge holds texts of
        # two or more code points: it is never used for valid UTF-8).
        def resegment(s):
            tid = self.to_id.get(s)
            if tid is not None:
                out.append(tid)
                return
            p = rev_merge.get(s)
            if p is None:
                for b in s.encode():
                    out.append(self.to_id[f"<0x{b:02X}>"])
                return
            resegment(syms[p[0]])
            resegment(syms[p[1]])

        i = 0 if n else -1
        while i != -1:
            resegment(syms[i])
            i = nxt[i]

    def encode(self, text, add_special=True, parse_special=True):
        out = []
        is_prev_special = True
        if add_special and self.add_bos:
            out.append(self.bos)
        for f in self.partition(text, parse_special):
            if isinstance(f, int):
                out.append(f)
                is_prev_special = True
                continue
            t = (" " if self.add_space_prefix and is_prev_special else "") + f
            self.session(t.replace(" ", "\u2581"), out)
            is_prev_special = False
        return out


def dump_compact(obj):
    """JSON with indent 1, except that token lists and the vocab arrays sit on
    one line each, which keeps the file short and diffable."""
    inline_keys = {"ids", "sentencepiece_ids", "pieces", "ids_no_parse_special",
                   "tokens", "scores", "token_type", "files"}
    inline = []

    def mark(v):
        inline.append(json.dumps(v, ensure_ascii=False))
        return f"@@inline{len(inline) - 1}@@"

    def walk(o):
        if isinstance(o, dict):
            return {k: (mark(v) if k in inline_keys else walk(v)) for k, v in o.items()}
        if isinstance(o, list):
            return [walk(v) for v in o]
        return o

    text = json.dumps(walk(obj), ensure_ascii=False, indent=1) + "\n"
    return re.sub(r'"@@inline(\d+)@@"', lambda m: inline[int(m.group(1))], text)


def explain(text):
    specials = [t for t in ("<s>", "</s>", "<unk>") if t in text]
    if specials:
        why = (f"{' and '.join(specials)} written in the text: llama.cpp (parse_special) makes "
               "each one its single token id")
        if any(re.split("|".join(map(re.escape, specials)), text)[1:]):
            why += ", and the text after a special token gets the space prefix again"
        return why + "; sentencepiece encodes the characters as plain text"
    log(f"WARNING: llama.cpp and sentencepiece differ on {text!r} for no known reason")
    return "unexplained"


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--bin", type=Path, help="directory with llama-tokenize "
                    "(default: scripts/build-llama-cpp.sh's, which builds it when missing)")
    ap.add_argument("--llama-cpp-src", type=Path, help="llama.cpp source tree, for gguf-py "
                    "(default: BIN/../src/llama.cpp, as build-llama-cpp.sh unpacks it)")
    ap.add_argument("--out", type=Path, default=REPO / "tests/data/spm_tokenizer_reference.json")
    ap.add_argument("--keep-dir", type=Path, help="also keep corpus.txt, spm.model and "
                    "spm-vocab.gguf in this directory")
    args = ap.parse_args()

    bindir = args.bin or Path(last_line([str(REPO / "scripts/build-llama-cpp.sh")]))
    tokenize_bin = bindir / "llama-tokenize"
    src = args.llama_cpp_src or (bindir.parent / "src" / "llama.cpp")
    sys.path.insert(0, str(src / "gguf-py"))
    import gguf  # noqa: E402  (llama.cpp's gguf-py)
    import sentencepiece as spm  # noqa: E402

    llama_version = subprocess.run([str(tokenize_bin), "--version"], stdout=subprocess.PIPE,
                                   stderr=subprocess.STDOUT, text=True).stdout.strip()
    gguf_version = re.search(r'^version = "([^"]+)"', (src / "gguf-py/pyproject.toml").read_text(),
                             re.M).group(1)
    sdist = (bindir.parent / "src" / ".complete")
    sdist = sdist.read_text().strip() if sdist.is_file() else "unknown"

    with tempfile.TemporaryDirectory(prefix="zerobatch-spm-") as tmp:
        work = Path(tmp)
        corpus, n_lines = build_corpus()
        corpus_sha = hashlib.sha256(corpus.encode()).hexdigest()
        log(f"corpus: {n_lines} lines, {len(corpus.encode())} bytes, sha256 {corpus_sha}")

        model_a = train(spm, corpus)
        model_b = train(spm, corpus)
        if model_a != model_b:
            raise RuntimeError("two training runs gave different models")
        model_sha = hashlib.sha256(model_a).hexdigest()
        log(f"trained twice, identical models ({len(model_a)} bytes, sha256 {model_sha})")

        sp = spm.SentencePieceProcessor(model_proto=model_a)
        tokens, scores, types = vocab_from_model(sp)
        bos, eos, unk = sp.bos_id(), sp.eos_id(), sp.unk_id()
        if (unk, bos, eos) != (0, 1, 2) or tokens[:3] != ["<unk>", "<s>", "</s>"]:
            raise RuntimeError(f"unexpected specials {tokens[:3]} {unk} {bos} {eos}")
        if [tokens[3 + b] for b in range(256)] != [f"<0x{b:02X}>" for b in range(256)] \
                or set(types[3:259]) != {BYTE}:
            raise RuntimeError("byte pieces are not ids 3..258")

        gguf_path = work / "spm-vocab.gguf"
        write_gguf(gguf, gguf_path, tokens, scores, types, bos, eos, unk)
        kv = gguf_kv_summary(gguf, gguf_path)
        log(f"wrote vocab-only GGUF ({gguf_path.stat().st_size} bytes)")

        port = LlamaCppSpm(tokens, scores, types, bos)
        cases, disagreements = [], []
        n_no_special_agree = 0
        for text in CASES:
            ids = llama_tokenize(tokenize_bin, gguf_path, text)
            no_bos = llama_tokenize(tokenize_bin, gguf_path, text, "--no-bos")
            no_special = llama_tokenize(tokenize_bin, gguf_path, text, "--no-parse-special")
            if no_bos != ids[1:] or ids[:1] != [bos]:
                raise RuntimeError(f"--no-bos is not ids without the BOS for {text!r}")
            if port.encode(text) != ids or port.encode(text, parse_special=False) != no_special:
                raise RuntimeError(f"the Python port of llama.cpp's SPM disagrees on {text!r}")
            sp_ids = [bos] + sp.encode(text)
            case = {"text": text, "ids": ids, "sentencepiece_ids": sp_ids,
                    "pieces": [tokens[i] for i in ids]}
            if no_special != ids:
                case["ids_no_parse_special"] = no_special
            if sp_ids != ids:
                why = explain(text)
                case["disagreement"] = why
                disagreements.append({"text": text, "why": why})
            cases.append(case)
            if no_special == sp_ids:
                n_no_special_agree += 1
        log(f"tokenized {len(cases)} strings; {len(disagreements)} differ from sentencepiece")

        if args.keep_dir:
            args.keep_dir.mkdir(parents=True, exist_ok=True)
            (args.keep_dir / "corpus.txt").write_text(corpus, encoding="utf-8")
            (args.keep_dir / "spm.model").write_bytes(model_a)
            (args.keep_dir / "spm-vocab.gguf").write_bytes(gguf_path.read_bytes())

    flags = {
        "command": shlex.join(tokenize_cmd(rel(tokenize_bin), "spm-vocab.gguf")) + " < text",
        "ids": "stdin = the text's UTF-8 bytes; output is the id list on stdout's last line",
        "no_bos_check": "--no-bos (checked: gives ids without the leading BOS)",
        "ids_no_parse_special": "the same command with --no-parse-special",
        "load": "llama-tokenize loads the GGUF with llama_model_params.vocab_only = true",
    }
    byte_fallback_cases = sum(any(types[i] == BYTE for i in c["ids"]) for c in cases)
    ref = {
        "about": "llama.cpp's SentencePiece (tokenizer.ggml.model = \"llama\") tokenization of "
                 f"{len(cases)} strings with a {len(tokens)}-token BPE vocabulary trained by "
                 "sentencepiece with Llama 2's settings (byte_fallback, split_digits, "
                 "add_dummy_prefix, identity normalization). \"ids\" is llama-tokenize's output "
                 "(BOS added as the vocab says; <s>, </s>, <unk> in the text parsed as specials), "
                 "the reference; \"sentencepiece_ids\" is [bos] + SentencePieceProcessor.encode(text), "
                 "kept for comparison; \"ids_no_parse_special\" appears where --no-parse-special "
                 "gives other ids. Written by scripts/make-spm-reference.py.",
        "generator_versions": {
            "sentencepiece": spm.__version__,
            "gguf_py": gguf_version,
            "llama_cpp": f"{sdist}; {' / '.join(llama_version.splitlines())}",
            "python": platform.python_version(),
        },
        "llama_tokenize_flags": flags,
        "corpus": {
            "commit": CORPUS_COMMIT,
            "files": CORPUS_FILES,
            "unicode_lines_repeat": UNICODE_REPEAT,
            "lines": n_lines,
            "sha256": corpus_sha,
        },
        "trainer_options": dict(TRAINER_OPTIONS, random_generator_seed=SEED),
        "sentencepiece_model_sha256": model_sha,
        "gguf_kv": kv,
        "vocab": {
            "tokens": tokens,
            "scores": scores,
            "token_type": types,
            "bos_token_id": bos,
            "eos_token_id": eos,
            "unk_token_id": unk,
            "add_bos_token": True,
            "add_eos_token": False,
            "add_space_prefix": True,
        },
        "summary": {
            "cases": len(cases),
            "cases_with_byte_fallback": byte_fallback_cases,
            "no_parse_special_equals_sentencepiece": f"{n_no_special_agree} of {len(cases)}",
            "disagreements": disagreements,
        },
        "cases": cases,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    text = dump_compact(ref)
    json.loads(text)  # still valid
    args.out.write_text(text, encoding="utf-8")
    log(f"wrote {rel(args.out)} ({len(text.encode())} bytes)")


if __name__ == "__main__":
    main()
