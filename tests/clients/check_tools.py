"""Function calling under tool_choice "auto" and "none", and a whole agent loop, against a
running zerobatch server with SmolLM2-135M-Instruct (its ChatML template knows no tools, so
the server uses the generic JSON format: the tools in the system message, the answer
`{"tool_calls": [...]}` or `{"response": "..."}` under a JSON schema).

    python check_tools.py BASE_URL

Checked with the real clients, every call validated by `jsonschema`, never by the server's word:
- an agent loop through the `openai` SDK: the user asks, the model calls a tool (auto), the
  call's result goes back as a `role: "tool"` message after the assistant's `tool_calls`, and
  the model answers in words (`tool_choice: "none"`); every message of the loop is accepted;
- auto over several prompts: each answer is either text (`finish_reason` "stop", content a
  non-empty string, no calls) or calls (`finish_reason` "tool_calls", ids `call_...`, a known
  name, arguments that validate), and at least one of each happens;
- `parallel_tool_calls: false`: at most one call;
- streaming auto with the SDK: the content and calls streamed equal the whole answer's, a
  call's arguments and an answer in words (the generic format's `response`) arriving in
  several deltas, as they are written;
- `huggingface_hub`'s `InferenceClient.chat_completion(tools=..., tool_choice=...)`;
- malformed tool messages are 400s naming the message.

Prints one line per check and a summary; exits 1 if any failed. Run by tests/tool_calls.rs.
"""

import json
import os
import sys
import urllib.error
import urllib.request

for var in ("OPENAI_API_KEY", "OPENAI_BASE_URL", "HF_TOKEN"):
    os.environ.pop(var, None)
os.environ["NO_PROXY"] = os.environ["no_proxy"] = "127.0.0.1,localhost,::1"

import jsonschema  # noqa: E402
import openai  # noqa: E402
from huggingface_hub import InferenceClient  # noqa: E402

failures = []


def check(name, fn, *args):
    try:
        fn(*args)
    except Exception as e:  # noqa: BLE001 - every failure is reported, then the next check runs
        failures.append(name)
        print(f"FAIL {name}: {type(e).__name__}: {e}", flush=True)
    else:
        print(f"ok   {name}", flush=True)


def post(base, path, body):
    req = urllib.request.Request(base + path, data=json.dumps(body).encode(),
                                 headers={"content-type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=300) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def obj(props):
    return {"type": "object", "properties": props, "required": list(props), "additionalProperties": False}


TOOLS = [
    {"type": "function", "function": {"name": "get_weather", "description": "The current weather in a city",
     "parameters": obj({"city": {"type": "string", "maxLength": 30}})}},
    {"type": "function", "function": {"name": "add", "description": "Adds two integers",
     "parameters": obj({"a": {"type": "integer", "minimum": -1000, "maximum": 1000},
                        "b": {"type": "integer", "minimum": -1000, "maximum": 1000}})}},
]
PARAMS = {t["function"]["name"]: t["function"]["parameters"] for t in TOOLS}
PROMPTS = [
    "What is the weather in Paris right now?",
    "Use the add tool: what is 12 plus 30?",
    "Hello! Who are you?",
    "Write one sentence about the sea.",
    "Is it raining in London?",
    "Thank you, that is all.",
]


def client(base):
    return openai.OpenAI(base_url=base + "/v1", api_key="unused", max_retries=0, timeout=300)


def valid_call(call):
    assert call.id.startswith("call_") and call.type == "function", call
    assert call.function.name in PARAMS, call
    jsonschema.validate(json.loads(call.function.arguments), PARAMS[call.function.name])


def valid_answer(choice):
    """A choice is text or calls, never both broken: returns "text" or "calls" ("cut" for an
    answer that max_tokens ended: its text so far as content, as vLLM answers a call list it
    cannot parse, and no calls)."""
    m = choice.message
    if choice.finish_reason == "length":
        assert not m.tool_calls and isinstance(m.content, str), choice
        return "cut"
    if m.tool_calls:
        assert choice.finish_reason == "tool_calls", choice
        for call in m.tool_calls:
            valid_call(call)
        return "calls"
    assert choice.finish_reason == "stop", choice
    assert isinstance(m.content, str) and m.content.strip(), choice
    assert not m.content.lstrip().startswith('{"'), f"the JSON wrapper leaked into the content: {m.content!r}"
    return "text"


def auto_answers(base):
    c = client(base)
    kinds = []
    for i, prompt in enumerate(PROMPTS):
        for temperature in (0, 1.0):
            r = c.chat.completions.create(model="zerobatch", messages=[{"role": "user", "content": prompt}],
                                          tools=TOOLS, temperature=temperature, seed=7 + i, max_tokens=200)
            kind = valid_answer(r.choices[0])
            kinds.append(kind)
            m = r.choices[0].message
            shown = [(t.function.name, t.function.arguments) for t in m.tool_calls] if kind == "calls" else m.content
            print(f"     auto t={temperature} {prompt!r}: {kind} {shown!r}", flush=True)
    assert "calls" in kinds and "text" in kinds, kinds


def agent_loop(base):
    c = client(base)
    messages = [{"role": "user", "content": "What is the weather in Paris right now?"}]
    r = c.chat.completions.create(model="zerobatch", messages=messages, tools=TOOLS, temperature=0, max_tokens=200)
    choice = r.choices[0]
    assert valid_answer(choice) == "calls", choice
    call = choice.message.tool_calls[0]
    messages.append(choice.message.model_dump(exclude_none=True))
    args = json.loads(call.function.arguments)
    result = {"get_weather": lambda: f"Sunny and 18 C in {args.get('city', '?')}",
              "add": lambda: str(args.get("a", 0) + args.get("b", 0))}[call.function.name]()
    messages.append({"role": "tool", "tool_call_id": call.id, "content": result})
    final = c.chat.completions.create(model="zerobatch", messages=messages, tools=TOOLS, tool_choice="none",
                                      temperature=0, max_tokens=60)
    f = final.choices[0]
    assert f.message.tool_calls is None and f.finish_reason in ("stop", "length"), f
    assert f.message.content and f.message.content.strip(), f
    # The call and its result reached the prompt: more tokens than the question alone.
    alone = c.chat.completions.create(model="zerobatch", messages=messages[:1], tools=TOOLS, tool_choice="none",
                                      temperature=0, max_tokens=1)
    assert final.usage.prompt_tokens > alone.usage.prompt_tokens + 10, (final.usage, alone.usage)
    print(f"     loop: {call.function.name}({call.function.arguments}) -> {result!r} -> {f.message.content!r}", flush=True)
    # The same conversation under auto: text or a valid call.
    again = c.chat.completions.create(model="zerobatch", messages=messages, tools=TOOLS, temperature=0, max_tokens=200)
    valid_answer(again.choices[0])


def not_parallel(base):
    c = client(base)
    for i, prompt in enumerate(PROMPTS[:3]):
        r = c.chat.completions.create(model="zerobatch", messages=[{"role": "user", "content": prompt}], tools=TOOLS,
                                      parallel_tool_calls=False, temperature=1.0, seed=100 + i, max_tokens=200)
        valid_answer(r.choices[0])
        assert len(r.choices[0].message.tool_calls or []) <= 1, r.choices[0]


def streamed(base):
    c = client(base)
    texts = 0
    # Greedy and seeded sampling (a seed gives the same tokens streamed and whole): whether the
    # 135M model answers a prompt in words or calls is close to a tie, which the last bits of
    # the kernels' arithmetic can tip, so every prompt is asked both ways.
    runs = [(p, t, 7 + i) for i, p in enumerate(PROMPTS) for t in (0, 1.0)]
    for prompt, temperature, seed in runs:
        kw = dict(model="zerobatch", messages=[{"role": "user", "content": prompt}], tools=TOOLS,
                  temperature=temperature, seed=seed, max_tokens=200)
        whole = c.chat.completions.create(**kw).choices[0]
        content, calls, finish, content_deltas = "", {}, None, 0
        for chunk in c.chat.completions.create(stream=True, **kw):
            delta = chunk.choices[0].delta
            content += delta.content or ""
            content_deltas += 1 if delta.content else 0
            for tc in delta.tool_calls or []:
                got = calls.setdefault(tc.index, {"id": tc.id, "name": "", "arguments": "", "deltas": 0})
                got["name"] += tc.function.name or ""
                got["arguments"] += tc.function.arguments or ""
                got["deltas"] += 1 if tc.function.arguments else 0
            finish = chunk.choices[0].finish_reason or finish
        assert finish == whole.finish_reason, (finish, whole)
        if finish == "length":
            # Cut by max_tokens: the stream has sent the calls as they were written and cannot
            # take them back, while the whole answer, whose last call does not parse, is text.
            continue
        assert content == (whole.message.content or ""), (content, whole.message.content)
        want = [(t.function.name, t.function.arguments) for t in whole.message.tool_calls or []]
        assert [(calls[i]["name"], calls[i]["arguments"]) for i in sorted(calls)] == want, (calls, want)
        assert all(calls[i]["id"].startswith("call_") for i in calls), calls
        # Arguments of several tokens arrive in several pieces, as they are written; so does
        # an answer in words (the `response` string of the generic format).
        assert all(calls[i]["deltas"] > 1 for i in calls if len(calls[i]["arguments"]) > 8), calls
        if len(content) > 8:
            texts += 1
            assert content_deltas > 1, (content_deltas, content)
    assert texts >= 1, "no prompt was answered in words"


def hf_client(base):
    hf = InferenceClient(base_url=base)
    out = hf.chat_completion(messages=[{"role": "user", "content": "What is the weather in Paris right now?"}],
                             tools=TOOLS, tool_choice="auto", temperature=0, max_tokens=200)
    choice = out.choices[0]
    if choice.message.tool_calls:
        for call in choice.message.tool_calls:
            args = call.function.arguments
            args = json.loads(args) if isinstance(args, str) else args
            jsonschema.validate(args, PARAMS[call.function.name])
        assert choice.finish_reason == "tool_calls", choice
    else:
        assert choice.message.content, choice
    forced = hf.chat_completion(messages=[{"role": "user", "content": "Add 2 and 3."}], tools=TOOLS,
                                tool_choice="required", temperature=0, max_tokens=100).choices[0]
    (call,) = forced.message.tool_calls
    args = call.function.arguments
    jsonschema.validate(json.loads(args) if isinstance(args, str) else args, PARAMS[call.function.name])
    print(f"     huggingface_hub: {choice.message.tool_calls or choice.message.content!r}; required: "
          f"{call.function.name}({call.function.arguments})", flush=True)


def malformed(base):
    call = {"id": "call_1", "type": "function", "function": {"name": "add", "arguments": '{"a": 1, "b": 2}'}}
    good = [{"role": "user", "content": "Add 1 and 2."}, {"role": "assistant", "content": None, "tool_calls": [call]},
            {"role": "tool", "tool_call_id": "call_1", "content": "3"}]
    status, text = post(base, "/v1/chat/completions", {"messages": good, "max_tokens": 5})
    assert status == 200, (status, text)
    bad_cases = [
        ({"role": "tool", "tool_call_id": "call_1"}, "messages[2].content"),
        ({"role": "tool", "content": "3"}, "tool_call_id"),
        ({"role": "user", "content": "x", "tool_calls": [call]}, "only assistant messages"),
    ]
    for last, says in bad_cases:
        status, text = post(base, "/v1/chat/completions", {"messages": good[:2] + [last], "max_tokens": 5})
        assert status == 400 and says in text, (last, status, text)
    broken = dict(call, function={"name": "add", "arguments": "{not json"})
    status, text = post(base, "/v1/chat/completions",
                        {"messages": [good[0], {"role": "assistant", "tool_calls": [broken]}], "max_tokens": 5})
    assert status == 400 and "arguments is not JSON" in text, (status, text)


def main():
    base = sys.argv[1].rstrip("/")
    check("an agent loop through the openai SDK", agent_loop, base)
    check("tool_choice auto answers text or valid calls", auto_answers, base)
    check("parallel_tool_calls false keeps one call", not_parallel, base)
    check("streamed auto answers equal the whole ones", streamed, base)
    check("huggingface_hub chat_completion with tools", hf_client, base)
    check("malformed tool messages are 400s", malformed, base)
    print(f"{len(failures)} tool checks failed", flush=True)
    if failures:
        print("failed: " + ", ".join(failures))
        sys.exit(1)


if __name__ == "__main__":
    main()
