"""A reasoning model's thinking (`reasoning_content`) read with the real `openai` SDK, against
a running zerobatch server whose chat template opens `<think>` in the generation prompt (the
tiny Qwen3 file with a thinking template, tests/reasoning.rs).

    python check_reasoning.py BASE_URL

The SDK keeps fields it does not declare (`reasoning_content` is vLLM's and llama.cpp's, not
OpenAI's) as pydantic extras, readable as attributes. Checked:
- whole answers: `message.reasoning_content` is the text the model wrote (the same request
  with `reasoning_format: "none"` gives it inline as `content`), trimmed, and `content` is
  the rest; `usage.completion_tokens_details.reasoning_tokens` counts the reasoning;
- streamed: deltas carry `reasoning_content` before any `content`; joined, they are the whole
  answer's, greedy and sampled with a seed;
- `reasoning_format: "none"` streamed: the raw text as content, no reasoning deltas.

Prints one line per check and a summary; exits 1 if any failed.
"""

import os
import sys

for var in ("OPENAI_API_KEY", "OPENAI_BASE_URL"):
    os.environ.pop(var, None)
os.environ["NO_PROXY"] = os.environ["no_proxy"] = "127.0.0.1,localhost,::1"

import openai  # noqa: E402

failures = []
MESSAGES = [{"role": "user", "content": "Tell me about the number 0"}]


def check(name, fn, *args):
    try:
        fn(*args)
    except Exception as e:  # noqa: BLE001 - every failure is reported, then the next check runs
        failures.append(name)
        print(f"FAIL {name}: {type(e).__name__}: {e}", flush=True)
    else:
        print(f"ok   {name}", flush=True)


def client(base):
    return openai.OpenAI(base_url=base + "/v1", api_key="unused", max_retries=0, timeout=300)


def create(base, **kw):
    return client(base).chat.completions.create(model="zerobatch", messages=MESSAGES, max_tokens=40, **kw)


def whole(base):
    raw = create(base, temperature=0, extra_body={"reasoning_format": "none"}).choices[0].message
    assert getattr(raw, "reasoning_content", None) is None, raw
    assert raw.content and raw.content.strip(), raw
    r = create(base, temperature=0)
    m = r.choices[0].message
    assert m.reasoning_content == raw.content.strip(), (m.reasoning_content, raw.content)
    assert m.content == "", m
    details = r.usage.completion_tokens_details
    assert details is not None and details.reasoning_tokens == r.usage.completion_tokens, r.usage
    print(f"     reasoning_content {m.reasoning_content!r}", flush=True)


def streamed(base):
    for kw in ({"temperature": 0}, {"temperature": 1.0, "seed": 11}):
        w = create(base, **kw).choices[0].message
        reasoning, content, content_began = "", "", False
        for chunk in create(base, stream=True, **kw):
            if not chunk.choices:
                continue
            d = chunk.choices[0].delta
            r = getattr(d, "reasoning_content", None)
            if r:
                assert not content_began, f"reasoning after content: {r!r}"
                reasoning += r
            if d.content:
                content_began = True
                content += d.content
        assert reasoning == w.reasoning_content, (kw, reasoning, w.reasoning_content)
        assert content == w.content, (kw, content, w.content)


def none_streamed(base):
    w = create(base, temperature=0, extra_body={"reasoning_format": "none"}).choices[0].message
    content = ""
    for chunk in create(base, stream=True, temperature=0, extra_body={"reasoning_format": "none"}):
        if not chunk.choices:
            continue
        d = chunk.choices[0].delta
        assert getattr(d, "reasoning_content", None) is None, d
        content += d.content or ""
    assert content == w.content, (content, w.content)


def main():
    base = sys.argv[1]
    check("whole answers carry reasoning_content", whole, base)
    check("streamed reasoning_content adds up to the whole answer", streamed, base)
    check("reasoning_format none keeps the text inline", none_streamed, base)
    print(f"{len(failures)} reasoning checks failed", flush=True)
    sys.exit(1 if failures else 0)


if __name__ == "__main__":
    main()
