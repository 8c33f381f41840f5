"""Structured outputs against a running zerobatch server with a generation model.

    python check_structured.py BASE_URL [--small]

Every output is checked by an independent validator, never by the server's own word:
- 32 JSON schemas (nested objects, arrays with minItems/maxItems, enums, anyOf, numeric
  ranges, string patterns and lengths, required and optional fields, $defs references,
  const, booleans, nulls), each asked greedy and sampled (temperature 1, top_p 0.95, a seed),
  over the three routes in turn (/v1/chat/completions with response_format json_schema,
  /v1/completions with response_format, /generate with TGI's parameters.grammar); each output
  must finish with "stop" / "eos_token", parse, and validate with `jsonschema`;
- regular expressions (TGI's grammar type "regex", vLLM's structured_outputs regex and
  choice): the output must match the regex whole (Python's `re.fullmatch`);
- json_object: the output parses as a JSON object;
- a Lark grammar (TGI grammar type "lark"): the output is in its language;
- streaming with a grammar (chat and /generate_stream): the streamed text validates and
  equals the whole answer of the same greedy request;
- invalid schemas, regexes and grammars: 400 with a message that names the problem;
- the real `openai` SDK's `client.chat.completions.parse(response_format=<pydantic model>)`:
  `message.parsed` is an instance of the model;
- forced function calls through the `openai` SDK (`tools` with `tool_choice: "required"` and
  each named function, greedy and sampled, whole and streamed with the arguments in pieces):
  one call, of the named tool, whose `arguments` validate against its `parameters`
  (`tool_choice` "auto" and tool loops: check_tools.py).

`--small` is for the tiny random-weight model (context 256, a 300-token vocabulary of mostly
single bytes): schemas whose every output fits in its context (strings and arrays bounded).
A random model wants garbage, so every character of a valid output is the grammar's doing.

Prints one line per check and a summary; exits 1 if any failed. Run by
tests/structured_outputs.rs with the venv from scripts/test-venv.sh.
"""

import json
import os
import re
import sys
import traceback
import urllib.error
import urllib.request

for var in ("OPENAI_API_KEY", "OPENAI_BASE_URL"):
    os.environ.pop(var, None)
os.environ["NO_PROXY"] = os.environ["no_proxy"] = "127.0.0.1,localhost,::1"

import jsonschema  # noqa: E402
import openai  # noqa: E402
import pydantic  # noqa: E402

failures = []
checked = {"schema_outputs": 0}
SETTINGS = {"small": False}


def check(name, fn, *args):
    try:
        fn(*args)
    except Exception as e:  # noqa: BLE001 - every failure is reported, then the next check runs
        failures.append(name)
        print(f"FAIL {name}: {type(e).__name__}: {e}", flush=True)
        traceback.print_exc(file=sys.stdout)
    else:
        print(f"ok   {name}", flush=True)


def post(base, path, body):
    req = urllib.request.Request(
        base + path,
        data=json.dumps(body).encode(),
        headers={"content-type": "application/json"},
    )
    try:
        with urllib.request.urlopen(req, timeout=300) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def post_json(base, path, body):
    status, text = post(base, path, body)
    if status != 200:
        raise AssertionError(f"{path} answered {status}: {text}")
    return json.loads(text)


def sse_events(text):
    """The data of each Server-Sent Event."""
    out = []
    for line in text.splitlines():
        if line.startswith("data:"):
            data = line[5:].strip()
            if data and data != "[DONE]":
                out.append(json.loads(data))
    return out


S = {"type": "string", "maxLength": 8}
WORD = {"type": "string", "pattern": "^[a-z]{1,6}$"}


def obj(props, required=None, **extra):
    o = {"type": "object", "properties": props, "additionalProperties": False}
    o["required"] = list(props) if required is None else required
    o.update(extra)
    return o


# Small enough for the tiny model's context; SmolLM2 gets them too, plus LARGE.
SMALL = [
    obj({"name": S}),
    obj({"age": {"type": "integer", "minimum": 0, "maximum": 120}}),
    obj({"ok": {"type": "boolean"}}),
    obj({"colour": {"enum": ["red", "green", "blue"]}}),
    obj({"n": {"type": "integer", "minimum": -5, "maximum": 5}, "s": S}),
    obj({"x": {"type": "number", "minimum": 0, "maximum": 1, "multipleOf": 0.25}}),
    obj({"tags": {"type": "array", "items": WORD, "minItems": 1, "maxItems": 3}}),
    obj({"pair": {"type": "array", "items": {"type": "integer", "minimum": 0, "maximum": 9}, "minItems": 2, "maxItems": 2}}),
    obj({"code": {"type": "string", "pattern": "^[A-Z]{2}-[0-9]{3}$"}}),
    obj({"v": {"anyOf": [{"type": "integer", "minimum": 0, "maximum": 99}, {"type": "boolean"}]}}),
    obj({"v": {"anyOf": [{"type": "null"}, {"enum": ["a", "b"]}]}}),
    obj({"kind": {"const": "point"}, "x": {"type": "integer", "minimum": 0, "maximum": 9}}),
    obj({"inner": obj({"a": {"type": "integer", "minimum": 0, "maximum": 9}})}),
    obj({"a": S, "b": {"type": "integer", "minimum": 0, "maximum": 50}}, required=["a"]),
    obj({"opt": {"type": "boolean"}}, required=[]),
    obj({"level": {"type": "integer", "enum": [1, 2, 3]}, "label": {"enum": ["lo", "hi"]}}),
    {"type": "array", "items": {"type": "integer", "minimum": 0, "maximum": 9}, "minItems": 1, "maxItems": 4},
    {"enum": ["yes", "no", "maybe"]},
    {"type": "integer", "minimum": 10, "maximum": 20},
    {"type": "string", "pattern": "^[0-9]{3}-[0-9]{4}$"},
    obj({"p": {"$ref": "#/$defs/pt"}}, **{"$defs": {"pt": obj({"x": {"type": "integer", "minimum": 0, "maximum": 9}, "y": {"type": "integer", "minimum": 0, "maximum": 9}})}}),
    obj({"items": {"type": "array", "items": obj({"id": {"type": "integer", "minimum": 0, "maximum": 9}}), "maxItems": 2}}),
    obj({"email": {"type": "string", "pattern": "^[a-z]{1,5}@[a-z]{1,5}\\.com$"}}),
    obj({"s": {"type": "string", "minLength": 2, "maxLength": 4}}),
    obj({"d": {"type": "string", "enum": ["2024-01-01", "2025-12-31"]}, "n": {"type": "null"}}),
]

LARGE = [
    obj({
        "name": {"type": "string", "maxLength": 40},
        "age": {"type": "integer", "minimum": 0, "maximum": 150},
        "email": {"type": "string", "pattern": "^[a-z0-9.]{1,20}@[a-z]{1,12}\\.(com|org|net)$"},
    }),
    obj({
        "title": {"type": "string", "maxLength": 60},
        "authors": {"type": "array", "items": {"type": "string", "maxLength": 30}, "minItems": 1, "maxItems": 3},
        "year": {"type": "integer", "minimum": 1900, "maximum": 2030},
        "isbn": {"type": "string", "pattern": "^[0-9]{3}-[0-9]{10}$"},
    }, required=["title", "authors", "year"]),
    obj({
        "order": obj({
            "id": {"type": "integer", "minimum": 1, "maximum": 99999},
            "lines": {"type": "array", "minItems": 1, "maxItems": 3, "items": obj({
                "sku": {"type": "string", "pattern": "^[A-Z]{3}[0-9]{2}$"},
                "qty": {"type": "integer", "minimum": 1, "maximum": 10},
                "price": {"type": "number", "minimum": 0, "maximum": 1000},
            })},
        }),
        "status": {"enum": ["open", "paid", "shipped"]},
    }),
    obj({
        "answer": {"anyOf": [
            obj({"kind": {"const": "number"}, "value": {"type": "integer", "minimum": -100, "maximum": 100}}),
            obj({"kind": {"const": "text"}, "value": {"type": "string", "maxLength": 30}}),
        ]},
        "confidence": {"type": "number", "minimum": 0, "maximum": 1},
    }),
    obj({
        "city": {"type": "string", "maxLength": 30},
        "country": {"type": "string", "maxLength": 30},
        "population": {"type": "integer", "minimum": 0, "maximum": 40000000},
        "landmarks": {"type": "array", "items": {"type": "string", "maxLength": 30}, "maxItems": 3},
        "capital": {"type": "boolean"},
    }, required=["city", "country"]),
    obj({
        "steps": {"type": "array", "minItems": 2, "maxItems": 4, "items": {"type": "string", "maxLength": 50}},
        "difficulty": {"type": "integer", "enum": [1, 2, 3, 4, 5]},
    }),
    obj({
        "user": {"$ref": "#/$defs/person"},
        "friends": {"type": "array", "items": {"$ref": "#/$defs/person"}, "maxItems": 2},
    }, **{"$defs": {"person": obj({"name": {"type": "string", "maxLength": 20}, "age": {"type": "integer", "minimum": 0, "maximum": 120}})}}),
]

TINY_SCHEMAS = SMALL + [
    obj({"a": obj({"b": obj({"c": {"enum": [1, 2]}})})}),
    obj({"m": {"type": "array", "items": {"type": "array", "items": {"type": "boolean"}, "maxItems": 2}, "maxItems": 2}}),
    obj({"r": {"type": "integer", "minimum": 100, "maximum": 199}, "t": {"enum": [True, False, None]}}),
    obj({"u": {"anyOf": [obj({"k": {"const": 1}}), obj({"j": WORD})]}}),
    obj({"f": {"type": "number", "minimum": -1, "maximum": 1, "multipleOf": 0.5}, "g": {"type": "integer", "minimum": 0, "maximum": 3}}),
    obj({"z": {"type": "string", "pattern": "^(ab|cd)+$", "maxLength": 6}}),
    obj({"w": {"type": "string", "format": "date"}}),
]


def content_of(route, answer):
    if route == "chat":
        choice = answer["choices"][0]
        return choice["message"]["content"], choice["finish_reason"]
    if route == "completions":
        choice = answer["choices"][0]
        return choice["text"], choice["finish_reason"]
    return answer["generated_text"], answer["details"]["finish_reason"]


def body_for(route, kind, value, sampled, seed, max_tokens, prompt):
    """A request constraining the output to a grammar of `kind` ("schema", "regex"), on
    `route`."""
    sampling_openai = {"temperature": 1.0, "top_p": 0.95, "seed": seed} if sampled else {"temperature": 0}
    if route in ("chat", "completions"):
        if kind == "schema":
            extra = {"response_format": {"type": "json_schema", "json_schema": {"name": "s", "schema": value, "strict": True}}}
        else:
            extra = {"structured_outputs": {"regex": value}}
        body = {"max_tokens": max_tokens, **sampling_openai, **extra}
        if route == "chat":
            body["messages"] = [{"role": "user", "content": prompt}]
        else:
            body["prompt"] = prompt
        return body
    params = {"max_new_tokens": max_tokens, "details": True,
              "grammar": {"type": "json" if kind == "schema" else "regex", "value": value}}
    if sampled:
        params.update({"do_sample": True, "temperature": 1.0, "top_p": 0.95, "top_k": 50, "seed": seed})
    return {"inputs": prompt, "parameters": params}


PATH = {"chat": "/v1/chat/completions", "completions": "/v1/completions", "tgi": "/generate"}
STOPPED = {"stop", "eos_token"}


def run_schema(base, i, schema, sampled, max_tokens):
    route = ["chat", "completions", "tgi"][i % 3]
    # The tiny model's context is 256 tokens: a short prompt (it cannot read one anyway).
    prompt = "JSON:" if SETTINGS["small"] else f"Answer in JSON matching this schema: {json.dumps(schema)}"
    body = body_for(route, "schema", schema, sampled, 1000 + i, max_tokens, prompt)
    text, reason = content_of(route, post_json(base, PATH[route], body))
    assert reason in STOPPED, f"finish_reason {reason!r} (output {text!r})"
    value = json.loads(text)
    jsonschema.validate(value, schema)
    checked["schema_outputs"] += 1
    print(f"     {route} {'sampled' if sampled else 'greedy'} #{i}: {text}", flush=True)


REGEXES = [
    r"[0-9]{3}-[0-9]{4}",
    r"(yes|no)",
    r"[a-z]{1,8}@[a-z]{1,6}\.com",
    r"#[0-9a-f]{6}",
    r"(true|false), [A-Z][a-z]{0,5}",
]


def run_regex(base, i, rx, sampled, max_tokens):
    route = ["tgi", "completions", "chat"][i % 3]
    body = body_for(route, "regex", rx, sampled, 2000 + i, max_tokens, "Write something: ")
    text, reason = content_of(route, post_json(base, PATH[route], body))
    assert reason in STOPPED, f"finish_reason {reason!r} (output {text!r})"
    assert re.fullmatch(rx, text), f"{text!r} does not match {rx!r}"


def json_object(base, max_tokens):
    for sampled in (False, True):
        body = {"messages": [{"role": "user", "content": "Give a JSON object."}],
                "response_format": {"type": "json_object"}, "max_tokens": max_tokens}
        body.update({"temperature": 1.0, "seed": 7} if sampled else {"temperature": 0})
        answer = post_json(base, "/v1/chat/completions", body)
        text = answer["choices"][0]["message"]["content"]
        finish = answer["choices"][0]["finish_reason"]
        if finish == "length":
            # Any object may be longer than the tokens allowed: then the prefix is a valid
            # start of one, which the grammar guarantees; only a finished one must parse.
            assert text.startswith("{"), text
            continue
        assert finish == "stop", finish
        assert isinstance(json.loads(text), dict), text


def choice_and_lark(base):
    answer = post_json(base, "/v1/completions", {
        "prompt": "Pick:", "max_tokens": 10, "temperature": 1.0, "seed": 3,
        "structured_outputs": {"choice": ["alpha", "beta (b)", "gamma"]}})
    assert answer["choices"][0]["text"] in ("alpha", "beta (b)", "gamma"), answer
    lark = 'start: greeting " " name\ngreeting: "hello" | "hi"\nname: /[A-Z][a-z]{1,5}/'
    answer = post_json(base, "/generate", {"inputs": "Say hi:", "parameters": {
        "max_new_tokens": 20, "details": True, "grammar": {"type": "lark", "value": lark}}})
    assert re.fullmatch(r"(hello|hi) [A-Z][a-z]{1,5}", answer["generated_text"]), answer
    assert answer["details"]["finish_reason"] == "eos_token", answer


def streaming(base, max_tokens):
    schema = SMALL[4]
    body = {"messages": [{"role": "user", "content": "JSON please"}], "temperature": 0,
            "max_tokens": max_tokens,
            "response_format": {"type": "json_schema", "json_schema": {"name": "s", "schema": schema}}}
    whole = post_json(base, "/v1/chat/completions", body)["choices"][0]["message"]["content"]
    status, text = post(base, "/v1/chat/completions", {**body, "stream": True})
    assert status == 200, text
    events = sse_events(text)
    streamed = "".join(e["choices"][0]["delta"].get("content") or "" for e in events)
    assert streamed == whole, (streamed, whole)
    assert events[-1]["choices"][0]["finish_reason"] == "stop", events[-1]
    jsonschema.validate(json.loads(streamed), schema)
    rx = REGEXES[0]
    status, text = post(base, "/generate_stream", {"inputs": "Phone:", "parameters": {
        "max_new_tokens": 20, "grammar": {"type": "regex", "value": rx}}})
    assert status == 200, text
    events = sse_events(text)
    assert re.fullmatch(rx, events[-1]["generated_text"]), events[-1]
    assert "".join(e["token"]["text"] for e in events) == events[-1]["generated_text"]


INVALID = [
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": "x"}], "response_format": {
        "type": "json_schema", "json_schema": {"name": "bad", "schema": {"type": "object", "properties": {"a": {"type": "nonsense"}}}}}},
     "nonsense"),
    ("/v1/completions", {"prompt": "x", "response_format": {"type": "json_schema", "json_schema": {"name": "bad", "schema": 5}}},
     "schema"),
    ("/generate", {"inputs": "x", "parameters": {"grammar": {"type": "regex", "value": "(unclosed"}}}, "grammar"),
    ("/generate", {"inputs": "x", "parameters": {"grammar": {"type": "lark", "value": "start: undefined_rule"}}}, "undefined_rule"),
    ("/generate", {"inputs": "x", "parameters": {"grammar": {"type": "xml", "value": "<a/>"}}}, "xml"),
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": "x"}], "response_format": {
        "type": "json_schema", "json_schema": {"name": "bad", "schema": {"$ref": "https://example.com/remote.json"}}}},
     "ref"),
    ("/v1/completions", {"prompt": "x", "response_format": {"type": "json_object"}, "structured_outputs": {"regex": "a"}},
     "not both"),
]


def invalid(base):
    for path, body, word in INVALID:
        status, text = post(base, path, body)
        assert status == 400, f"{path} {body} answered {status}: {text}"
        assert word.lower() in text.lower(), f"the 400 for {body} does not name {word!r}: {text}"


class Pet(pydantic.BaseModel):
    name: str = pydantic.Field(max_length=12)
    species: str = pydantic.Field(pattern="^(cat|dog|fish)$")
    age: int = pydantic.Field(ge=0, le=30)


class Household(pydantic.BaseModel):
    city: str = pydantic.Field(max_length=20)
    pets: list[Pet] = pydantic.Field(min_length=1, max_length=2)


def openai_parse(base, small):
    client = openai.OpenAI(base_url=base + "/v1", api_key="unused", max_retries=0, timeout=300)
    model = Pet if small else Household
    for temperature in (0, 1.0):
        completion = client.chat.completions.parse(
            model="zerobatch",
            messages=[{"role": "user", "content": "Describe a household with pets as JSON."}],
            response_format=model,
            max_tokens=100 if small else 300,
            temperature=temperature,
            seed=11,
        )
        parsed = completion.choices[0].message.parsed
        assert isinstance(parsed, model), completion
        print(f"     parse t={temperature}: {parsed!r}", flush=True)


TOOLS = [
    {"type": "function", "function": {"name": "get_weather", "description": "The weather in a city",
     "parameters": obj({"city": {"type": "string", "maxLength": 20}, "unit": {"enum": ["c", "f"]}})}},
    {"type": "function", "function": {"name": "get_time", "description": "The time in a time zone",
     "parameters": obj({"tz": {"type": "string", "pattern": "^[A-Z][a-z]{1,8}/[A-Z][a-z]{1,8}$"}})}},
    {"type": "function", "function": {"name": "add", "parameters": obj({
        "a": {"type": "integer", "minimum": -100, "maximum": 100}, "b": {"type": "integer", "minimum": -100, "maximum": 100}})}},
]


def forced_tool_calls(base, small):
    """tool_choice "required" and named, greedy and sampled, whole and streamed, through the
    openai SDK: one call, of a given tool, whose arguments validate against its parameters."""
    client = openai.OpenAI(base_url=base + "/v1", api_key="unused", max_retries=0, timeout=300)
    by_name = {t["function"]["name"]: t["function"]["parameters"] for t in TOOLS}
    messages = [{"role": "user", "content": "Weather in Paris?" if small else "What is the weather in Paris, in celsius?"}]
    choices = ["required"] + [{"type": "function", "function": {"name": n}} for n in by_name]
    for i, choice in enumerate(choices):
        for temperature in (0, 1.0):
            r = client.chat.completions.create(model="zerobatch", messages=messages, tools=TOOLS, tool_choice=choice,
                                               temperature=temperature, seed=40 + i, max_tokens=100)
            c = r.choices[0]
            assert c.finish_reason == "tool_calls", c
            assert c.message.content is None, c.message
            (call,) = c.message.tool_calls
            assert call.id.startswith("call_") and call.type == "function", call
            if isinstance(choice, dict):
                assert call.function.name == choice["function"]["name"], call
            jsonschema.validate(json.loads(call.function.arguments), by_name[call.function.name])
            print(f"     tool {choice if isinstance(choice, str) else choice['function']['name']} t={temperature}: "
                  f"{call.function.name}({call.function.arguments})", flush=True)
    stream = client.chat.completions.create(model="zerobatch", messages=messages, tools=TOOLS, tool_choice="required",
                                            temperature=0, max_tokens=100, stream=True)
    name, arguments, finish, pieces = "", "", None, 0
    for chunk in stream:
        delta = chunk.choices[0].delta
        for tc in delta.tool_calls or []:
            pieces += 1
            assert tc.index == 0, tc
            name += tc.function.name or ""
            arguments += tc.function.arguments or ""
        finish = chunk.choices[0].finish_reason or finish
    assert finish == "tool_calls", finish
    assert pieces > 2, f"the arguments came in {pieces - 1} piece(s), not as they were generated"
    jsonschema.validate(json.loads(arguments), by_name[name])
    whole = client.chat.completions.create(model="zerobatch", messages=messages, tools=TOOLS, tool_choice="required",
                                           temperature=0, max_tokens=100).choices[0].message.tool_calls[0].function
    assert (name, arguments) == (whole.name, whole.arguments), (name, arguments, whole)


def main():
    base = sys.argv[1].rstrip("/")
    small = "--small" in sys.argv[2:]
    SETTINGS["small"] = small
    schemas = TINY_SCHEMAS if small else SMALL + LARGE
    max_tokens = 150 if small else 400
    assert len(schemas) >= 30, len(schemas)
    for sampled in (False, True):
        for i, schema in enumerate(schemas):
            check(f"schema {i} {'sampled' if sampled else 'greedy'}", run_schema, base, i, schema, sampled, max_tokens)
    for sampled in (False, True):
        for i, rx in enumerate(REGEXES):
            check(f"regex {rx} {'sampled' if sampled else 'greedy'}", run_regex, base, i, rx, sampled, 40)
    check("json_object", json_object, base, max_tokens)
    check("choice and lark", choice_and_lark, base)
    check("streaming with a grammar", streaming, base, max_tokens)
    check("invalid grammars are 400 naming the problem", invalid, base)
    check("openai chat.completions.parse with a pydantic model", openai_parse, base, small)
    if small:
        # Its Qwen template renders the tool list into ~530 of its tokens: more than its context.
        print("skip tool calls: the tiny model's context (256) cannot hold its template's tool list", flush=True)
    else:
        check("tool_choice required and named through the openai SDK", forced_tool_calls, base, small)
    print(f"{checked['schema_outputs']} schema outputs parsed and validated; {len(failures)} checks failed", flush=True)
    if failures:
        print("failed: " + ", ".join(failures))
        sys.exit(1)


if __name__ == "__main__":
    main()
