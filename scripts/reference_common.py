"""What the reference generators in scripts/ share, one copy each.

The make-*-reference.py scripts and make-retrieval-set.py write the JSON files under
tests/data/ that the Rust tests check zerobatch against. This module holds the parts they
wrote identically:

* the weight rule of the tiny test models (make-llama-reference.py, make-gpt2-reference.py):
  splitmix64, the float32 tensor filled from it, the prompts drawn from it, and the FNV-1a 64
  fingerprint of the weights; tests/common/mod.rs implements the same rule in Rust, so a
  change here must be made there too, and the references written again;
* small helpers: floats rounded to 7 significant digits for the JSON files, a file's sha256,
  the last line a command prints (the fetch and build scripts print the path they made last);
* llama.cpp's greedy continuation of token ids on a GGUF file (llama_cpp_greedy): its
  llama-server started on a free loopback port, asked once per prompt, stopped.

Standard library only: numpy is passed in by the caller, which imports it once it knows it
needs it. Imported by file name from the scripts beside it (Python puts a script's directory
on sys.path), so this file keeps an importable name.
"""

import hashlib
import json
import math
import socket
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

MASK = (1 << 64) - 1


def splitmix64(seed):
    """splitmix64 (Vigna) seeded with `seed`: an endless generator of 64-bit values."""
    state = seed & MASK
    while True:
        state = (state + 0x9E3779B97F4A7C15) & MASK
        z = state
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & MASK
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & MASK
        yield z ^ (z >> 31)


def fill_tensor(np, seed, shape, kind, scale):
    """The float32 tensor of `shape` the weight rule gives, in row-major order from
    splitmix64(seed): r = f32(z >> 40) / 2^24 * 2 - 1 (exact), then 1 + r * scale for
    kind "norm", else r * scale."""
    count = int(np.prod(shape))
    gen = splitmix64(seed)
    u = np.array([next(gen) >> 40 for _ in range(count)], dtype=np.float32)
    r = u / np.float32(1 << 24) * np.float32(2) - np.float32(1)
    if kind == "norm":
        v = np.float32(1) + r * np.float32(scale)
    else:
        v = r * np.float32(scale)
    assert v.dtype == np.float32
    return v.reshape(shape)


def prompt_ids(lengths, seed, vocab):
    """One prompt per length: prompt i of n ids from splitmix64(seed + i), id = z % vocab."""
    out = []
    for i, n in enumerate(lengths):
        gen = splitmix64(seed + i)
        out.append([next(gen) % vocab for _ in range(n)])
    return out


def fnv1a64(data):
    """FNV-1a 64 of the bytes `data` (the weights' fingerprint: their little-endian float32
    bytes)."""
    h = 0xCBF29CE484222325
    for b in data:
        h = ((h ^ b) * 0x100000001B3) & MASK
    return h


def round7(x):
    """x as a Python float rounded to 7 significant digits (0, inf and nan as they are)."""
    x = float(x)
    if x == 0.0 or not math.isfinite(x):
        return x
    return float(f"{x:.7g}")


def sha256_of(path):
    """The sha256 digest of the file at `path`, in hex."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def last_line(cmd):
    """Runs `cmd` (a list), which must succeed, and returns the last line of its stdout."""
    out = subprocess.run(cmd, check=True, stdout=subprocess.PIPE, text=True).stdout
    return out.strip().splitlines()[-1]


# How llama_cpp_greedy starts llama-server: one thread and one slot (the tiny files' answers
# do not depend on it, but the runs are then the same on every machine), the model's whole
# context, no repacking (llama.cpp b11434's AMX path crashes on CPUs that have AMX; repacking
# only reorders weights for its kernels), no warm-up run.
LLAMA_SERVER_ARGS = ["-t", "1", "--parallel", "1", "--no-repack", "--no-warmup"]
# The /completion request (the prompt and n_predict added per call): greedy (temperature 0,
# top-k 1), the two most likely tokens' log-probabilities at every step. With
# post_sampling_probs false they are log(softmax(logits)) of the raw model before any
# sampler (tools/server/server-common.cpp), so lp1 - lp2 is the gap between the two largest
# logits. The end-of-generation tokens are not suppressed: llama.cpp stops at the first.
LLAMA_CPP_REQUEST = {"temperature": 0, "top_k": 1, "n_probs": 2, "post_sampling_probs": False,
                     "cache_prompt": False, "return_tokens": True, "samplers": ["top_k"]}


def _free_port():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def llama_cpp_greedy(server_bin, model, prompts, n_predict, log_path):
    """llama.cpp's greedy continuation of each list of ids in `prompts` (no BOS added: the ids
    are sent as they are) on the GGUF file `model`, by `server_bin` (llama-server) with
    LLAMA_SERVER_ARGS, at most `n_predict` tokens, stopping after an end-of-generation token.
    Returns one {"ids": [...], "margins": [...]} per prompt, margins[i] = lp1 - lp2 at step
    i (rounded to 5 decimals). The server's log goes to `log_path`."""
    port = _free_port()
    base = f"http://127.0.0.1:{port}"
    args = [str(server_bin), "-m", str(model), *LLAMA_SERVER_ARGS, "--host", "127.0.0.1",
            "--port", str(port)]
    with open(log_path, "w") as log_file:
        proc = subprocess.Popen(args, stdout=log_file, stderr=subprocess.STDOUT)
        try:
            deadline = time.monotonic() + 120
            while True:
                if proc.poll() is not None:
                    raise RuntimeError(f"llama-server exited with {proc.returncode}; see {log_path}")
                try:
                    with urllib.request.urlopen(base + "/health", timeout=2) as r:
                        if r.status == 200:
                            break
                except (urllib.error.URLError, ConnectionError, OSError):
                    pass
                if time.monotonic() > deadline:
                    raise RuntimeError(f"llama-server not ready after 120 s; see {log_path}")
                time.sleep(0.05)
            out = []
            for ids in prompts:
                body = dict(LLAMA_CPP_REQUEST, prompt=list(ids), n_predict=n_predict)
                req = urllib.request.Request(base + "/completion", data=json.dumps(body).encode(),
                                             headers={"Content-Type": "application/json"})
                with urllib.request.urlopen(req, timeout=300) as r:
                    answer = json.load(r)
                if answer.get("tokens_evaluated") not in (None, len(ids)):
                    raise RuntimeError(f"llama-server evaluated {answer['tokens_evaluated']} prompt "
                                       f"tokens, not the {len(ids)} sent")
                gen, margins = answer["tokens"], []
                for tok, p in zip(gen, answer["completion_probabilities"], strict=True):
                    (id1, lp1), (_, lp2) = [(t["id"], t["logprob"]) for t in p["top_logprobs"][:2]]
                    if p["id"] != tok or id1 != tok:
                        raise RuntimeError(f"llama-server's greedy token {tok} is not its top-1 {id1}")
                    margins.append(round(lp1 - lp2, 5))
                out.append({"ids": gen, "margins": margins})
            return out
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def llama_cpp_version(server_bin):
    """llama-server --version's output (its build number and compiler)."""
    return subprocess.run([str(server_bin), "--version"], stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True).stdout.strip()


def llama_cpp_block(bin_dir, files, prompt, n_predict, log_path):
    """The "llama_cpp" entry of a tiny model's reference JSON: llama.cpp's greedy continuation
    of the chat prompt's ids `prompt` on each of `files` (variant -> the path llama-server is
    given: a split model's first part), with the version and the command that made it."""
    server = Path(bin_dir) / "llama-server"
    greedy = {}
    for variant, path in files.items():
        (greedy[variant],) = llama_cpp_greedy(server, path, [prompt], n_predict, log_path)
    return {
        "version": llama_cpp_version(server),
        "server_args": LLAMA_SERVER_ARGS,
        "request": dict(LLAMA_CPP_REQUEST, n_predict=n_predict),
        "greedy": greedy,
    }
