"""Drives a running zerobatch server on the tiny models of tests/data/tiny_reranker_reference.json
with huggingface_hub's InferenceClient, and checks its answers against sentence-transformers'.

    python check_scoring_clients.py BASE_URL REFERENCE_JSON classifier|SECTION

- classifier (the three-label model): InferenceClient(model=BASE_URL + "/predict")
  .text_classification(text), which posts {"inputs", "parameters"} to /predict and keeps the
  first element of the answer (TEI answers one text with a flat list, best label first): that
  label and its softmax score (CrossEncoder.predict with apply_softmax) within 1e-4 (1e-3 when
  the server runs int16, see tolerances()); with
  top_k and function_to_apply="none" (the logits); and InferenceClient(model=BASE_URL), which
  posts to POST /, which TEI (and zerobatch) route to /predict on a classifier;
- any other SECTION, an embedder (the tiny reranker reference's "embedder", CLS pooling and
  prompts; tests/data/tiny_modernbert_reference.json's "mean" and "cls";
  tests/data/tiny_qwen3_embedding_reference.json's "embedder", last-token pooling):
  InferenceClient(model=BASE_URL).feature_extraction(texts, prompt_name=..., truncate=...)
  against SentenceTransformer.encode(text, prompt_name=...), cosine >= 0.9999, and an unknown
  prompt_name raising the client's HTTP error with the server's 400.

Prints one line per check and exits 1 if any failed. Run by tests/python_clients.rs with the
venv from scripts/test-venv.sh (pinned versions in requirements.txt).
"""

import atexit
import json
import os
import shutil
import sys
import tempfile
import traceback

for var in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "HF_TOKEN_PATH"):
    os.environ.pop(var, None)
os.environ["HF_HOME"] = tempfile.mkdtemp(prefix="zerobatch-hf-home-")
atexit.register(shutil.rmtree, os.environ["HF_HOME"], ignore_errors=True)
os.environ["HF_HUB_DISABLE_TELEMETRY"] = "1"
os.environ["NO_PROXY"] = os.environ["no_proxy"] = "127.0.0.1,localhost,::1"

import huggingface_hub  # noqa: E402
import numpy as np  # noqa: E402
from huggingface_hub import InferenceClient  # noqa: E402
from huggingface_hub.errors import HfHubHTTPError  # noqa: E402
from score_tolerances import tolerances  # noqa: E402

failures = []


def check(name):
    """Runs the decorated function now as one named check, recording a failure."""

    def run(fn):
        try:
            fn()
        except Exception as e:  # noqa: BLE001 - every failure is reported, then the next check runs
            failures.append(name)
            print(f"FAIL {name}: {type(e).__name__}: {e}", flush=True)
            if not isinstance(e, (AssertionError, HfHubHTTPError)):
                traceback.print_exc(file=sys.stdout)
        else:
            print(f"ok   {name}", flush=True)
        return fn

    return run


def classifier_checks(base, ref):
    tolerance, logit_tolerance = tolerances(base)
    labels = ref["labels"]
    cases = [c for c in ref["cases"] if isinstance(c["inputs"], str) and c["inputs"]]
    assert cases, "the reference has single texts"

    def best(values):
        i = int(np.argmax(values))
        return labels[i], values[i]

    client = InferenceClient(model=base + "/predict", timeout=60)

    @check("huggingface_hub text_classification(text) -> POST /predict")
    def _():
        for c in cases:
            got = client.text_classification(c["inputs"])
            label, score = best(c["softmax"])
            assert got.label == label, f"{c['inputs']!r}: label {got.label}, expected {label}"
            assert abs(got.score - score) <= tolerance, f"{c['inputs']!r}: score {got.score}, expected {score}"

    @check("huggingface_hub text_classification(top_k=2, function_to_apply='none'): the logits")
    def _():
        c = cases[0]
        got = client.text_classification(c["inputs"], top_k=2, function_to_apply="none")
        label, logit = best(c["logits"])
        assert got.label == label and abs(got.score - logit) <= logit_tolerance, f"{got}, expected {label} {logit}"

    @check("huggingface_hub text_classification on the root URL -> POST / (predict on a classifier)")
    def _():
        c = cases[1]
        got = InferenceClient(model=base, timeout=60).text_classification(c["inputs"])
        label, score = best(c["softmax"])
        assert got.label == label and abs(got.score - score) <= tolerance, f"{got}, expected {label} {score}"


def embedder_checks(base, ref):
    client = InferenceClient(model=base, timeout=60)
    texts = [c["text"] for c in ref["cases"]]

    def compare(name, got, want):
        got = np.asarray(got, dtype=np.float64)
        want = np.asarray(want, dtype=np.float64)
        assert got.shape == want.shape, f"{name}: shape {got.shape}, expected {want.shape}"
        for g, w in zip(got, want):
            cos = float(g @ w / (np.linalg.norm(g) * np.linalg.norm(w)))
            assert cos >= 0.9999, f"{name}: cosine {cos}"

    # Texts past the model's limit are in the references truncated (sentence-transformers
    # truncates); the server answers 413 unless asked to truncate, as TEI.
    truncate = any(c.get("untruncated_token_count", 0) > len(c.get("token_ids", [])) for c in ref["cases"])
    pooling = ref.get("pooling", "cls")

    @check(f"huggingface_hub feature_extraction(texts, truncate={truncate}) with {pooling} pooling")
    def _():
        got = client.feature_extraction(texts, truncate=truncate)
        compare("no prompt", got, [c["embedding"] for c in ref["cases"]])

    # The prompts the reference has answers for (every case encoded with that prompt).
    prompted = [n for n in ref["prompts"] if all(n in c.get("prompted", {}) for c in ref["cases"])]
    for name in prompted:

        @check(f"huggingface_hub feature_extraction(texts, prompt_name={name!r})")
        def _():
            got = client.feature_extraction(texts, prompt_name=name, truncate=truncate)
            compare(name, got, [c["prompted"][name] for c in ref["cases"]])

    @check("huggingface_hub feature_extraction with an unknown prompt_name -> HfHubHTTPError (400)")
    def _():
        try:
            client.feature_extraction(texts[0], prompt_name="no-such-prompt")
        except HfHubHTTPError as e:
            assert e.response.status_code == 400, f"status {e.response.status_code}"
            assert "no-such-prompt" in e.response.text, e.response.text
            return
        raise AssertionError("no HfHubHTTPError was raised")


def main():
    base, reference, which = sys.argv[1].rstrip("/"), sys.argv[2], sys.argv[3]
    with open(reference) as f:
        ref = json.load(f)[which]
    print(f"clients: huggingface_hub {huggingface_hub.__version__}, numpy {np.__version__}; {which} at {base}", flush=True)
    # Any other section of a reference (ModernBERT's "mean" and "cls", the Qwen3 embedder's
    # "embedder") holds embedding cases in the same layout.
    (classifier_checks if which == "classifier" else embedder_checks)(base, ref)
    if failures:
        print(f"{len(failures)} client check(s) FAILED: {', '.join(failures)}", flush=True)
        return 1
    print("all client checks passed", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
