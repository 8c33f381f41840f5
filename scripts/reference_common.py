"""What the reference generators in scripts/ share, one copy each.

The make-*-reference.py scripts and make-retrieval-set.py write the JSON files under
tests/data/ that the Rust tests check zerobatch against. This module holds the parts they
wrote identically:

* the weight rule of the tiny test models (make-llama-reference.py, make-gpt2-reference.py):
  splitmix64, the float32 tensor filled from it, the prompts drawn from it, and the FNV-1a 64
  fingerprint of the weights; tests/common/mod.rs implements the same rule in Rust, so a
  change here must be made there too, and the references written again;
* small helpers: floats rounded to 7 significant digits for the JSON files, a file's sha256,
  the last line a command prints (the fetch and build scripts print the path they made last).

Standard library only: numpy is passed in by the caller, which imports it once it knows it
needs it. Imported by file name from the scripts beside it (Python puts a script's directory
on sys.path), so this file keeps an importable name.
"""

import hashlib
import math
import subprocess

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
