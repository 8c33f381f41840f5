"""Streamed tool calls through the `openai` SDK against a running zerobatch server: the same
chat request (greedy) answered whole and streamed must give the same calls, the streamed
ones accumulated from their deltas as the SDK hands them out (by `index`), and a call's
arguments must arrive in more than one delta.

    python check_tool_deltas.py BASE_URL REQUEST_JSON

REQUEST_JSON is the body of the chat request (without `stream`; `chat_template_kwargs` and
`reasoning_format`, which the SDK does not name, go in its `extra_body`). Prints one line per check, then
`deltas N` per call (the number of deltas that carried a piece of its arguments); exits 1 if a
check failed. Run by tests/tool_calls.rs.
"""

import json
import os
import sys

for var in ("OPENAI_API_KEY", "OPENAI_BASE_URL"):
    os.environ.pop(var, None)
os.environ["NO_PROXY"] = os.environ["no_proxy"] = "127.0.0.1,localhost,::1"

import openai  # noqa: E402


def main():
    base, body = sys.argv[1].rstrip("/"), json.loads(sys.argv[2])
    c = openai.OpenAI(base_url=base + "/v1", api_key="none", max_retries=0, timeout=300)
    extra = {k: body.pop(k) for k in ("chat_template_kwargs", "reasoning_format") if k in body}
    body["extra_body"] = extra
    whole = c.chat.completions.create(**body).choices[0]
    assert whole.finish_reason == "tool_calls", whole
    content, calls, finish = "", {}, None
    for chunk in c.chat.completions.create(stream=True, **body):
        if not chunk.choices:
            continue
        delta = chunk.choices[0].delta
        content += delta.content or ""
        for tc in delta.tool_calls or []:
            if tc.index not in calls:
                # The first delta of a call: its id, type and name.
                assert tc.id and tc.type == "function" and tc.function.name, tc
                assert tc.index == len(calls), (tc.index, calls)
                calls[tc.index] = {"id": tc.id, "name": tc.function.name, "arguments": "", "deltas": 0}
            else:
                # Later ones: only a piece of the arguments.
                assert tc.id is None and tc.function.name is None, tc
            got = calls[tc.index]
            if tc.function.arguments:
                got["arguments"] += tc.function.arguments
                got["deltas"] += 1
        finish = chunk.choices[0].finish_reason or finish
    assert finish == whole.finish_reason, (finish, whole.finish_reason)
    print("ok   streamed and whole finish alike", flush=True)
    assert content == (whole.message.content or ""), (content, whole.message.content)
    print("ok   streamed content equals the whole answer's", flush=True)
    want = [(t.function.name, t.function.arguments) for t in whole.message.tool_calls]
    got = [(calls[i]["name"], calls[i]["arguments"]) for i in sorted(calls)]
    assert got == want, (got, want)
    for name, arguments in got:
        assert isinstance(json.loads(arguments), dict), arguments
    print("ok   streamed calls equal the whole answer's", flush=True)
    for i in sorted(calls):
        print(f"deltas {calls[i]['deltas']} {calls[i]['arguments']}", flush=True)


if __name__ == "__main__":
    try:
        main()
    except AssertionError as e:
        print(f"FAIL {e!r}", flush=True)
        sys.exit(1)
