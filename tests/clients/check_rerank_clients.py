"""Drives a running zerobatch server on the tiny XLM-R cross-encoder of
tests/data/tiny_xlmr_reference.json with LlamaIndex's TEI reranker
(llama-index-postprocessor-tei-rerank's TextEmbeddingInference, which posts TEI's
{"query", "texts"} to BASE_URL/rerank), and checks its answers against
sentence-transformers' CrossEncoder.

    python check_rerank_clients.py BASE_URL REFERENCE_JSON [--api-key KEY]

For each query of the reference: postprocess_nodes over the passages as TextNodes keeps the
top_n best, in CrossEncoder.rank's order, each node's score CrossEncoder.predict's within
1e-4 (1e-3 when the server runs int16, see tolerances()); with top_n past the passages, all of them. With --api-key the client sends it as its
auth_token ("Bearer KEY"); without, a server that wants a key would refuse.

Nothing is fetched from the network: every proxy variable points at a closed port, so any
request that is not to the local server fails (LlamaIndex's optional downloads, NLTK's and
tiktoken's, are never reached on this path).

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

os.environ["NO_PROXY"] = os.environ["no_proxy"] = "127.0.0.1,localhost,::1"
for var in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy"):
    os.environ[var] = "http://127.0.0.1:9"
# LlamaIndex keeps its caches (NLTK data, tiktoken) here; a fresh empty one proves none is used.
os.environ["LLAMA_INDEX_CACHE_DIR"] = tempfile.mkdtemp(prefix="zerobatch-llama-index-")
atexit.register(shutil.rmtree, os.environ["LLAMA_INDEX_CACHE_DIR"], ignore_errors=True)

from llama_index.core.schema import NodeWithScore, QueryBundle, TextNode  # noqa: E402
from llama_index.postprocessor.tei_rerank import TextEmbeddingInference  # noqa: E402
from score_tolerances import tolerances  # noqa: E402

failures = []


def check(name, fn):
    try:
        fn()
    except Exception as e:  # noqa: BLE001 - every failure is reported, then the next check runs
        failures.append(name)
        print(f"FAIL {name}: {type(e).__name__}: {e}", flush=True)
        if not isinstance(e, AssertionError):
            traceback.print_exc(file=sys.stdout)
    else:
        print(f"ok   {name}", flush=True)


def main():
    args = sys.argv[1:]
    api_key = None
    if "--api-key" in args:
        i = args.index("--api-key")
        api_key = args[i + 1]
        del args[i : i + 2]
    base_url, reference = args
    tolerance, _ = tolerances(base_url, api_key)
    with open(reference) as f:
        cases = json.load(f)["reranker"]["cases"]

    def rerank(case, top_n):
        client = TextEmbeddingInference(
            base_url=base_url,
            top_n=top_n,
            auth_token=None if api_key is None else f"Bearer {api_key}",
            timeout=60.0,
        )
        nodes = [NodeWithScore(node=TextNode(text=p, id_=str(i)), score=0.0) for i, p in enumerate(case["passages"])]
        return client.postprocess_nodes(nodes, query_bundle=QueryBundle(query_str=case["query"]))

    for case in cases:

        def best_three(case=case):
            kept = rerank(case, 3)
            got = [int(n.node.id_) for n in kept]
            assert got == case["order"][:3], f"order {got}, want {case['order'][:3]}"
            for n in kept:
                i = int(n.node.id_)
                assert n.node.text == case["passages"][i]
                d = abs(n.score - case["scores"][i])
                assert d <= tolerance, f"passage {i}: score {n.score}, want {case['scores'][i]}"

        def all_of_them(case=case):
            kept = rerank(case, len(case["passages"]) + 5)
            got = [int(n.node.id_) for n in kept]
            assert got == case["order"], f"order {got}, want {case['order']}"

        check(f"llama-index TEI rerank, {case['name']}: the best 3, scores", best_three)
        check(f"llama-index TEI rerank, {case['name']}: every passage in order", all_of_them)

    if failures:
        print(f"{len(failures)} check(s) failed", flush=True)
        sys.exit(1)


if __name__ == "__main__":
    main()
