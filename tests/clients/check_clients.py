"""Drives a running zerobatch server with the real Python clients people point at it.

    python check_clients.py BASE_URL [--api-key KEY]

- huggingface_hub: InferenceClient(model=BASE_URL).feature_extraction(...), which posts TEI's
  body to BASE_URL itself (`POST /`), for one text and for a list, with TEI's options; and
  sentence_similarity(...), which posts TEI's `/similarity` body to `POST /` (checked against
  the cosines of `POST /embed`'s vectors, as is `POST /similarity` itself);
- openai: OpenAI(base_url=BASE_URL + "/v1").embeddings.create(...) with encoding_format
  "float" and with the client's default (base64), and models.list() (the server's one model,
  named as /info names it);
- with --api-key: the clients authenticate with it, and a wrong or missing key makes each
  client raise its own 401 error.

Every vector must have the server's dimensions, be unit-norm, and equal `POST /embed`'s answer
for the same text (fetched with the standard library) within 1e-5. Prints one line per check
and exits 1 if any failed. Run by tests/python_clients.rs with the venv from
scripts/test-venv.sh (pinned versions in requirements.txt).
"""

import argparse
import atexit
import json
import os
import shutil
import sys
import tempfile
import traceback
import urllib.request

# No token from the environment or a stored login may reach the server: the test decides
# which key each client sends. No telemetry, and loopback never goes through a proxy.
for var in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "HF_TOKEN_PATH", "OPENAI_API_KEY", "OPENAI_BASE_URL"):
    os.environ.pop(var, None)
os.environ["HF_HOME"] = tempfile.mkdtemp(prefix="zerobatch-hf-home-")
atexit.register(shutil.rmtree, os.environ["HF_HOME"], ignore_errors=True)
os.environ["HF_HUB_DISABLE_TELEMETRY"] = "1"
os.environ["NO_PROXY"] = os.environ["no_proxy"] = "127.0.0.1,localhost,::1"

import huggingface_hub  # noqa: E402
import numpy as np  # noqa: E402
import openai  # noqa: E402
from huggingface_hub import InferenceClient  # noqa: E402
from huggingface_hub.errors import HfHubHTTPError  # noqa: E402

TOLERANCE = 1e-5
ONE = "the quick brown fox jumps over the lazy dog"
MANY = ["a man is eating food", "hello world", "the cat runs in the park with a dog"]

failures = []


def check(name):
    """Runs the decorated function now as one named check, recording a failure."""

    def run(fn):
        try:
            fn()
        except Exception as e:  # noqa: BLE001 - every failure is reported, then the next check runs
            failures.append(name)
            print(f"FAIL {name}: {type(e).__name__}: {e}", flush=True)
            if not isinstance(e, (AssertionError, HfHubHTTPError, openai.APIError)):
                traceback.print_exc(file=sys.stdout)
        else:
            print(f"ok   {name}", flush=True)
        return fn

    return run


def http_json(base, method, path, key, body=None):
    headers = {"Content-Type": "application/json"}
    if key:
        headers["Authorization"] = f"Bearer {key}"
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(base + path, data=data, headers=headers, method=method)
    with urllib.request.urlopen(req, timeout=60) as r:
        return json.load(r)


def compare(name, got, want):
    """`got` (any array-like of vectors) must equal `want` within TOLERANCE and be unit-norm."""
    got = np.asarray(got, dtype=np.float64)
    want = np.asarray(want, dtype=np.float64)
    if got.shape != want.shape:
        raise AssertionError(f"{name}: shape {got.shape}, expected {want.shape}")
    norms = np.linalg.norm(got, axis=1)
    if not np.allclose(norms, 1.0, atol=TOLERANCE):
        raise AssertionError(f"{name}: norms {norms}, expected 1")
    diff = float(np.max(np.abs(got - want)))
    if diff > TOLERANCE:
        raise AssertionError(f"{name}: differs from POST /embed by {diff:.3g} (> {TOLERANCE})")


def expect_status(name, call, error_type, status):
    try:
        call()
    except error_type as e:
        got = e.status_code if isinstance(e, openai.APIStatusError) else e.response.status_code
        if got != status:
            raise AssertionError(f"{name}: {error_type.__name__} with status {got}, expected {status}") from e
        return
    raise AssertionError(f"{name}: no {error_type.__name__} was raised (expected HTTP {status})")


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("base_url", help="e.g. http://127.0.0.1:8080")
    p.add_argument("--api-key", help="the server's --api-key, when it has one")
    args = p.parse_args()
    base, key = args.base_url.rstrip("/"), args.api_key
    print(
        f"clients: huggingface_hub {huggingface_hub.__version__}, openai {openai.__version__}, "
        f"numpy {np.__version__}; server {base}{' with an API key' if key else ''}",
        flush=True,
    )

    info = http_json(base, "GET", "/info", key)
    dims, model_id = info["dimensions"], info["model_id"]
    want_one = http_json(base, "POST", "/embed", key, {"inputs": ONE})
    want_many = http_json(base, "POST", "/embed", key, {"inputs": MANY})
    want_raw = http_json(base, "POST", "/embed", key, {"inputs": MANY, "normalize": False})
    assert np.asarray(want_one).shape == (1, dims), f"POST /embed gave shape {np.asarray(want_one).shape}"

    hf = InferenceClient(model=base, token=key, timeout=60)

    @check("huggingface_hub feature_extraction(str) -> POST /")
    def _():
        got = hf.feature_extraction(ONE)
        assert isinstance(got, np.ndarray) and got.dtype == np.float32, f"{type(got)} {getattr(got, 'dtype', '')}"
        compare("feature_extraction(str)", got, want_one)

    @check("huggingface_hub feature_extraction([str]) -> POST /")
    def _():
        compare("feature_extraction([str])", hf.feature_extraction(MANY), want_many)

    @check("huggingface_hub feature_extraction with TEI's options")
    def _():
        got = hf.feature_extraction(MANY, normalize=True, truncate=True, truncation_direction="right")
        compare("feature_extraction(normalize, truncate, truncation_direction)", got, want_many)
        raw = np.asarray(hf.feature_extraction(MANY, normalize=False), dtype=np.float64)
        diff = float(np.max(np.abs(raw - np.asarray(want_raw))))
        assert raw.shape == (len(MANY), dims) and diff <= TOLERANCE, (
            f"normalize=False: shape {raw.shape}, differs from POST /embed by {diff:.3g}"
        )

    @check("huggingface_hub sentence_similarity -> POST / (TEI's /similarity body)")
    def _():
        got = hf.sentence_similarity(ONE, other_sentences=MANY)
        # The cosines of POST /embed's unit vectors, and /similarity's own answer.
        v = np.asarray(want_one, dtype=np.float64)[0]
        want = [float(np.dot(v, np.asarray(w, dtype=np.float64))) for w in want_many]
        direct = http_json(base, "POST", "/similarity", key,
                           {"inputs": {"source_sentence": ONE, "sentences": MANY}})
        for name, answer in [("sentence_similarity", got), ("POST /similarity", direct)]:
            assert len(answer) == len(MANY), f"{name}: {answer}"
            diff = max(abs(a - b) for a, b in zip(answer, want))
            assert diff <= TOLERANCE, f"{name} {answer} differs from the vectors' cosines {want} by {diff:.3g}"
        assert len(set(round(x, 4) for x in want)) > 1, f"the sentences are all alike: {want}"

    oa = openai.OpenAI(base_url=base + "/v1", api_key=key or "none", max_retries=0, timeout=60)

    @check("openai models.list() -> GET /v1/models")
    def _():
        models = oa.models.list().data
        assert [m.id for m in models] == [model_id], f"{models} is not [{model_id}]"
        assert models[0].object == "model" and models[0].owned_by == "zerobatch", models[0]

    @check("openai embeddings.create(encoding_format='float')")
    def _():
        r = oa.embeddings.create(model=model_id, input=MANY, encoding_format="float")
        assert [d.index for d in r.data] == list(range(len(MANY))), [d.index for d in r.data]
        compare("openai float", [d.embedding for d in r.data], want_many)

    @check("openai embeddings.create() (the client's default, base64)")
    def _():
        r = oa.embeddings.create(model=model_id, input=MANY)
        compare("openai base64", [d.embedding for d in r.data], want_many)
        r = oa.embeddings.create(model=model_id, input=ONE)
        compare("openai base64, one text", [d.embedding for d in r.data], want_one)

    if key:
        wrong = key + "-wrong"

        @check("openai with a wrong API key -> AuthenticationError (401)")
        def _():
            bad = openai.OpenAI(base_url=base + "/v1", api_key=wrong, max_retries=0, timeout=60)
            expect_status("openai wrong key", lambda: bad.embeddings.create(model=model_id, input=ONE),
                          openai.AuthenticationError, 401)

        @check("huggingface_hub with a wrong API key -> HfHubHTTPError (401)")
        def _():
            bad = InferenceClient(model=base, token=wrong, timeout=60)
            expect_status("huggingface_hub wrong key", lambda: bad.feature_extraction(ONE), HfHubHTTPError, 401)

        @check("huggingface_hub without an API key -> HfHubHTTPError (401)")
        def _():
            anon = InferenceClient(model=base, timeout=60)
            expect_status("huggingface_hub no key", lambda: anon.feature_extraction(ONE), HfHubHTTPError, 401)

    if failures:
        print(f"{len(failures)} client check(s) FAILED: {', '.join(failures)}", flush=True)
        return 1
    print("all client checks passed", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
