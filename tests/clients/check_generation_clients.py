"""Drives a running zerobatch server with a generation model through the real Python clients.

    python check_generation_clients.py BASE_URL

- huggingface_hub: InferenceClient(model=BASE_URL).text_generation(...), which posts TGI's body
  to BASE_URL itself (`POST /`), whole and with stream=True (then `"stream": true` in the
  body, and the answer must be Server-Sent Events), with and without details; and
  chat_completion(...), whole and streamed;
- openai: OpenAI(base_url=BASE_URL + "/v1").completions.create(...) and
  chat.completions.create(...), whole and with stream=True.

Greedy decoding everywhere, so each streamed text must equal the whole answer of the same
request. Prints one line per check and exits 1 if any failed. Run by tests/python_clients.rs
with the venv from scripts/test-venv.sh (pinned versions in requirements.txt).
"""

import os
import shutil
import sys
import tempfile
import traceback
import atexit

for var in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "HF_TOKEN_PATH", "OPENAI_API_KEY", "OPENAI_BASE_URL"):
    os.environ.pop(var, None)
os.environ["HF_HOME"] = tempfile.mkdtemp(prefix="zerobatch-hf-home-")
atexit.register(shutil.rmtree, os.environ["HF_HOME"], ignore_errors=True)
os.environ["HF_HUB_DISABLE_TELEMETRY"] = "1"
os.environ["NO_PROXY"] = os.environ["no_proxy"] = "127.0.0.1,localhost,::1"

import huggingface_hub  # noqa: E402
import openai  # noqa: E402
from huggingface_hub import InferenceClient  # noqa: E402

PROMPT = "The capital of France is"
MESSAGES = [{"role": "user", "content": "Name three colours."}]
NEW_TOKENS = 12

failures = []


def check(name):
    """Runs the decorated function now as one named check, recording a failure."""

    def run(fn):
        try:
            fn()
        except Exception as e:  # noqa: BLE001 - every failure is reported, then the next check runs
            failures.append(name)
            print(f"FAIL {name}: {type(e).__name__}: {e}", flush=True)
            traceback.print_exc(file=sys.stdout)
        else:
            print(f"ok   {name}", flush=True)

    return run


def main():
    base = sys.argv[1].rstrip("/")
    print(
        f"clients: huggingface_hub {huggingface_hub.__version__}, openai {openai.__version__}; server {base}",
        flush=True,
    )
    hf = InferenceClient(model=base, timeout=60)
    whole = hf.text_generation(PROMPT, max_new_tokens=NEW_TOKENS)

    @check("huggingface_hub text_generation -> POST /, whole")
    def _():
        assert isinstance(whole, str) and whole, repr(whole)

    @check("huggingface_hub text_generation(stream=True) -> POST / with stream: true")
    def _():
        pieces = list(hf.text_generation(PROMPT, max_new_tokens=NEW_TOKENS, stream=True))
        assert len(pieces) >= 2, f"{len(pieces)} pieces: a stream, not one answer ({pieces!r})"
        assert all(isinstance(p, str) for p in pieces), pieces
        assert "".join(pieces) == whole, f"{''.join(pieces)!r} != {whole!r}"

    @check("huggingface_hub text_generation(stream=True, details=True)")
    def _():
        events = list(hf.text_generation(PROMPT, max_new_tokens=NEW_TOKENS, stream=True, details=True))
        assert len(events) == NEW_TOKENS or events[-1].details.finish_reason != "length", len(events)
        assert all(isinstance(e.token.id, int) for e in events), events[:2]
        last = events[-1]
        assert last.generated_text == whole, f"{last.generated_text!r} != {whole!r}"
        assert last.details.finish_reason in ("length", "eos_token", "stop_sequence"), last.details

    chat_whole = hf.chat_completion(MESSAGES, max_tokens=NEW_TOKENS, temperature=0)

    @check("huggingface_hub chat_completion, whole and streamed")
    def _():
        text = chat_whole.choices[0].message.content
        assert isinstance(text, str) and text, chat_whole
        chunks = list(hf.chat_completion(MESSAGES, max_tokens=NEW_TOKENS, temperature=0, stream=True))
        streamed = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        assert streamed == text, f"{streamed!r} != {text!r}"

    oa = openai.OpenAI(base_url=base + "/v1", api_key="none", max_retries=0, timeout=60)

    @check("openai completions.create, whole and streamed")
    def _():
        r = oa.completions.create(model="m", prompt=PROMPT, max_tokens=NEW_TOKENS, temperature=0)
        text = r.choices[0].text
        assert text, r
        stream = oa.completions.create(model="m", prompt=PROMPT, max_tokens=NEW_TOKENS, temperature=0, stream=True)
        streamed = "".join(c.choices[0].text for c in stream if c.choices)
        assert streamed == text, f"{streamed!r} != {text!r}"

    @check("openai chat.completions.create, whole and streamed with usage")
    def _():
        r = oa.chat.completions.create(model="m", messages=MESSAGES, max_tokens=NEW_TOKENS, temperature=0)
        text = r.choices[0].message.content
        assert text and r.usage.completion_tokens >= 1, r
        stream = oa.chat.completions.create(
            model="m", messages=MESSAGES, max_tokens=NEW_TOKENS, temperature=0, stream=True,
            stream_options={"include_usage": True},
        )
        chunks = list(stream)
        streamed = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        assert streamed == text, f"{streamed!r} != {text!r}"
        assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == r.usage.completion_tokens

    if failures:
        print(f"{len(failures)} client check(s) FAILED: {', '.join(failures)}", flush=True)
        return 1
    print("all generation client checks passed", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
