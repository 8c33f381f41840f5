//! Function calling under `tool_choice` "auto" and "none" and a whole agent loop, through
//! the real binary, real HTTP and the real clients: tests/clients/check_tools.py drives
//! SmolLM2-135M-Instruct (whose template knows no tools: the generic JSON format) with the
//! `openai` SDK (the loop call → tool result → answer, auto answers, parallel_tool_calls,
//! streaming) and `huggingface_hub`'s `InferenceClient.chat_completion(tools=...)`, and
//! validates every call's arguments with `jsonschema`. The grammars are driven token by
//! token in tests/tool_syntax_grammar.rs.
//!
//! The Hermes lazy grammar runs end to end through the binary on the tiny Qwen3 GGUF
//! (Qwen3's own template, whose `<tool_call>` is a text token), its context raised from 256
//! to 4,096 in a copy written here so the template's tool list fits. Its random weights make
//! `<tool_call>` unlikely (scripts/make-qwen-reference.py), so OpenAI's `logit_bias` steers
//! it: +100 on `<tool_call>` (the call begins), −100 on the whitespace tokens (after the
//! call, the end of the turn is then the grammar's only likely token); the answer must be a
//! call whose arguments validate, whole and streamed. Without the bias the same request
//! answers free text: the grammar does not force a call.
//!
//! Mistral v11's syntax runs the same way on a tiny random Llama written here whose
//! vocabulary has `[TOOL_CALLS]`, `[ARGS]` and `[CALL_ID]` as control tokens and whose
//! template writes calls as Mistral Small 3.2's does: steered into `[TOOL_CALLS]`, the answer
//! (whose text keeps the control tokens for the parser) is a call with a Mistral id.

mod common;

use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::Duration;

use candle_core::quantized::gguf_file::{self, Value as GgufValue};
use candle_core::quantized::QTensor;
use candle_core::Device;
use serde_json::{json, Value};
use zerobatch::generate::gguf::GgufFile;
use zerobatch::generate::tokenizer::GenTokenizer;

use common::*;

/// The interpreter with `jsonschema`, `openai` and `huggingface_hub`, or None (after saying
/// SKIPPED) when there is none; under CI a missing one fails.
fn python() -> Option<PathBuf> {
    test_python("tool_calls", "jsonschema, openai, huggingface_hub")
}

#[test]
fn an_agent_loop_and_auto_tool_calls_work_with_the_real_clients_on_smollm2() {
    let Some(python) = python() else { return };
    let server = Proc::spawn(smollm2_path().to_str().unwrap(), &[]);
    connect_until_up(server.addr);
    wait_ready(server.addr);
    let (status, output) = run_client_script(
        &python,
        "check_tools.py",
        &format!("http://{}", server.addr),
        &[],
        Duration::from_secs(600),
    );
    match status {
        Some(s) if s.success() => {
            eprintln!("{output}");
            for check in [
                "ok   an agent loop through the openai SDK",
                "ok   tool_choice auto answers text or valid calls",
                "ok   streamed auto answers equal the whole ones",
                "ok   huggingface_hub chat_completion with tools",
                "0 tool checks failed",
            ] {
                assert!(output.contains(check), "{check}\n{output}");
            }
        }
        _ => panic!(
            "check_tools.py failed ({status:?}):\n{output}\nserver log:\n{}",
            server.log()
        ),
    }
}

/// The tiny Qwen3 file with a context of 4,096, written once per test binary.
fn long_context_qwen3() -> &'static Path {
    static PATH: OnceLock<PathBuf> = OnceLock::new();
    PATH.get_or_init(|| {
        let source =
            Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/gguf/tiny-qwen3-f32.gguf");
        let mut file = std::fs::File::open(&source).unwrap();
        let content = gguf_file::Content::read(&mut file).unwrap();
        let mut metadata: Vec<(String, GgufValue)> = content
            .metadata
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        metadata.sort_by(|a, b| a.0.cmp(&b.0));
        let context = metadata
            .iter_mut()
            .find(|(k, _)| k == "qwen3.context_length")
            .expect("the file names its context");
        assert_eq!(context.1.to_u32().unwrap(), 256);
        context.1 = GgufValue::U32(4096);
        let mut names: Vec<&String> = content.tensor_infos.keys().collect();
        names.sort();
        let tensors: Vec<(String, QTensor)> = names
            .into_iter()
            .map(|n| {
                (
                    n.clone(),
                    content.tensor(&mut file, n, &Device::Cpu).unwrap(),
                )
            })
            .collect();
        let dir = common::scratch_dir("zerobatch-tool-calls");
        let path = dir.join("tiny-qwen3-4k.gguf");
        let meta: Vec<(&str, &GgufValue)> = metadata.iter().map(|(k, v)| (k.as_str(), v)).collect();
        let tensors: Vec<(&str, &QTensor)> = tensors.iter().map(|(k, v)| (k.as_str(), v)).collect();
        gguf_file::write(&mut std::fs::File::create(&path).unwrap(), &meta, &tensors).unwrap();
        path
    })
}

/// The body of a streamed chat answer, asked over HTTP/1.0 (no chunked encoding: the
/// server closes the connection at the end).
fn stream_http10(addr: std::net::SocketAddr, body: &Value) -> String {
    use std::io::{Read, Write};
    let body = body.to_string();
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(120))).unwrap();
    write!(
        s,
        "POST /v1/chat/completions HTTP/1.0\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut raw = String::new();
    s.read_to_string(&mut raw).unwrap();
    let (head, rest) = raw.split_once("\r\n\r\n").expect("a response head");
    assert!(
        head.starts_with("HTTP/1.0 200") || head.starts_with("HTTP/1.1 200"),
        "{raw}"
    );
    assert!(!head.to_ascii_lowercase().contains("chunked"), "{head}");
    rest.to_string()
}

/// A chat request with one tool whose only argument is an enum (so a steered call ends).
fn weather_request(bias: Option<&Value>, stream: bool) -> Value {
    let mut body = json!({
        "messages": [{"role": "user", "content": "What is the weather in Paris?"}],
        "tools": [{"type": "function", "function": {
            "name": "weather",
            "description": "The weather now in a city",
            "parameters": {"type": "object", "properties": {"city": {"enum": ["Paris", "Oslo"]}}, "required": ["city"], "additionalProperties": false},
        }}],
        "tool_choice": "auto",
        "parallel_tool_calls": false,
        "temperature": 0,
        "max_tokens": 60,
        "stream": stream,
    });
    if let Some(b) = bias {
        body["logit_bias"] = b.clone();
    }
    body
}

/// `arguments` (OpenAI's JSON text) is `{"city": "Paris" | "Oslo"}` and nothing else.
fn assert_valid_weather_arguments(arguments: &Value) {
    let text = arguments.as_str().expect("arguments are text");
    let v: Value = serde_json::from_str(text).unwrap_or_else(|e| panic!("{text}: {e}"));
    let o = v.as_object().expect("an object");
    assert_eq!(o.len(), 1, "{text}");
    assert!(
        matches!(o["city"].as_str(), Some("Paris" | "Oslo")),
        "{text}"
    );
}

#[test]
fn a_hermes_call_under_tool_choice_auto_validates_through_the_binary() {
    let path = long_context_qwen3();
    let tok = GenTokenizer::from_gguf(&GgufFile::open(path).unwrap()).unwrap();
    let open = tok.encode("<tool_call>", false).unwrap();
    assert_eq!(open.len(), 1, "<tool_call> is one token");
    assert!(!tok.is_special(open[0]), "<tool_call> is a text token");
    let mut bias = serde_json::Map::new();
    bias.insert(open[0].to_string(), json!(100));
    for id in 0..tok.vocab_size() as u32 {
        let text = tok.decode(&[id]);
        if !text.is_empty() && text.trim().is_empty() {
            bias.insert(id.to_string(), json!(-100));
        }
    }
    assert!(bias.len() > 1, "the vocabulary has whitespace tokens");
    let bias = Value::Object(bias);

    let server = Proc::spawn(path.to_str().unwrap(), &[]);
    connect_until_up(server.addr);
    wait_ready(server.addr);
    let log = || server.log();

    // Steered: a call that validates.
    let resp = post_json(
        server.addr,
        "/v1/chat/completions",
        &weather_request(Some(&bias), false),
    );
    assert_eq!(resp.status, 200, "{}\n{}", resp.text(), log());
    let v = resp.json();
    let choice = &v["choices"][0];
    assert_eq!(choice["finish_reason"], "tool_calls", "{v}");
    let calls = choice["message"]["tool_calls"]
        .as_array()
        .expect("tool_calls");
    assert_eq!(calls.len(), 1, "{v}");
    assert_eq!(calls[0]["type"], "function");
    assert_eq!(calls[0]["function"]["name"], "weather", "{v}");
    assert!(calls[0]["id"].as_str().unwrap().starts_with("call_"));
    assert_valid_weather_arguments(&calls[0]["function"]["arguments"]);
    // The prompt held the template's tool list: more than the file's own context.
    assert!(v["usage"]["prompt_tokens"].as_u64().unwrap() > 256, "{v}");

    // Streamed: the same call, its arguments in pieces, then finish_reason tool_calls.
    let body = stream_http10(server.addr, &weather_request(Some(&bias), true));
    let (streamed, finish) = streamed_tool_calls(&body);
    assert_eq!(finish, "tool_calls");
    assert_eq!(streamed.len(), 1, "{streamed:?}");
    assert_eq!(streamed[0]["index"], 0);
    assert_eq!(streamed[0]["function"]["name"], "weather");
    assert_eq!(
        streamed[0]["function"]["arguments"],
        calls[0]["function"]["arguments"]
    );
    assert!(streamed[0]["deltas"].as_u64().unwrap() > 1, "{body}");

    // Unsteered: the lazy grammar leaves the model its free text.
    let resp = post_json(
        server.addr,
        "/v1/chat/completions",
        &weather_request(None, false),
    );
    assert_eq!(resp.status, 200, "{}", resp.text());
    let v = resp.json();
    let choice = &v["choices"][0];
    assert_ne!(choice["finish_reason"], "tool_calls", "{v}");
    assert!(choice["message"].get("tool_calls").is_none(), "{v}");
    assert!(choice["message"]["content"].is_string(), "{v}");

    // A bias outside the vocabulary, or out of range, is the request's error.
    let mut bad = weather_request(None, false);
    bad["logit_bias"] = json!({ (tok.vocab_size() + 5).to_string(): 1 });
    let resp = post_json(server.addr, "/v1/chat/completions", &bad);
    assert_eq!(resp.status, 400, "{}", resp.text());
    assert!(resp.text().contains("logit_bias"), "{}", resp.text());
    bad["logit_bias"] = json!({"1": 101});
    assert_eq!(
        post_json(server.addr, "/v1/chat/completions", &bad).status,
        400
    );
}

/// A tiny random Llama whose vocabulary is printable ASCII, space and newline (byte-level
/// characters), `markers` as control tokens and `</s>` (its end of sequence), with the chat
/// template `template`, written as `name` under the temporary directory.
fn tiny_llama_with_markers(name: &str, template: &str, markers: &[&str]) -> PathBuf {
    use common::gguf::{quantize, write, TinyLlama};
    let mut tokens: Vec<String> = (33u8..=126).map(|b| (b as char).to_string()).collect();
    tokens.extend(["\u{120}", "\u{10A}"].map(String::from));
    tokens.extend(markers.iter().map(|m| m.to_string()));
    tokens.push("</s>".into());
    let shape = TinyLlama {
        context: 2048,
        ..TinyLlama::DEFAULT
    };
    let mut metadata = shape.metadata(&tokens);
    for (k, v) in &mut metadata {
        if k == "tokenizer.ggml.token_type" {
            let GgufValue::Array(types) = v else {
                panic!("token types")
            };
            let n = types.len();
            for t in &mut types[n - 1 - markers.len()..] {
                *t = GgufValue::I32(3);
            }
        }
    }
    metadata.push((
        "tokenizer.chat_template".into(),
        GgufValue::String(template.into()),
    ));
    let tensors: Vec<(String, QTensor)> = shape
        .weights(tokens.len())
        .into_iter()
        .map(|(name, dims, v)| {
            (
                name,
                quantize(v, &dims, candle_core::quantized::GgmlDType::F32),
            )
        })
        .collect();
    let dir = common::scratch_dir("zerobatch-tool-calls");
    let path = dir.join(name);
    write(&path, &metadata, &tensors);
    path
}

/// The tiny Llama with Mistral's call markers and a template that writes tools, calls and
/// results as Mistral Small 3.2's does; written once.
fn tiny_mistral_v11() -> &'static Path {
    static PATH: OnceLock<PathBuf> = OnceLock::new();
    PATH.get_or_init(|| {
        const TEMPLATE: &str = r#"{{- bos_token }}{%- if tools %}{{- '[AVAILABLE_TOOLS]' + (tools | tojson) + '[/AVAILABLE_TOOLS]' }}{%- endif %}{%- for message in messages %}{%- if message['role'] == 'user' %}{{- '[INST]' + message['content'] + '[/INST]' }}{%- elif message['role'] == 'assistant' %}{{- message['content'] }}{%- for tool in message['tool_calls'] or [] %}{%- set arguments = tool['function']['arguments'] %}{%- if arguments is not string %}{%- set arguments = arguments|tojson %}{%- endif %}{{- '[TOOL_CALLS]' + tool['function']['name'] + '[ARGS]' + arguments }}{%- endfor %}{{- eos_token }}{%- elif message['role'] == 'tool' %}{{- '[TOOL_RESULTS]' + message['content']|string + '[/TOOL_RESULTS]' }}{%- endif %}{%- endfor %}"#;
        tiny_llama_with_markers(
            "tiny-mistral-v11.gguf",
            TEMPLATE,
            &["[TOOL_CALLS]", "[ARGS]", "[CALL_ID]"],
        )
    })
}

/// The tiny Llama with Llama 3.x's header, end-of-turn and `<|python_tag|>` control tokens
/// and a template that writes tools, calls (`<|python_tag|>{"name", "parameters"}`) and
/// results as Llama 3.1's does; written once.
fn tiny_llama3() -> &'static Path {
    static PATH: OnceLock<PathBuf> = OnceLock::new();
    PATH.get_or_init(|| {
        const TEMPLATE: &str = r#"{%- for message in messages %}{{- '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n' }}{%- if loop.first and tools %}{{- 'Call a function by answering {"name": function name, "parameters": its arguments}. Functions: ' + (tools | tojson) + '\n\n' }}{%- endif %}{%- if message['role'] == 'tool' %}{{- message['content'] | string }}{%- else %}{{- message['content'] or '' }}{%- endif %}{%- for tool in message['tool_calls'] or [] %}{%- set arguments = tool['function']['arguments'] %}{%- if arguments is string %}{%- set arguments = arguments | fromjson %}{%- endif %}{{- '<|python_tag|>{"name": "' + tool['function']['name'] + '", "parameters": ' + (arguments | tojson) + '}' }}{%- endfor %}{{- '<|eot_id|>' }}{%- endfor %}{%- if add_generation_prompt %}{{- '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{%- endif %}"#;
        tiny_llama_with_markers(
            "tiny-llama3.gguf",
            TEMPLATE,
            &[
                "<|python_tag|>",
                "<|start_header_id|>",
                "<|end_header_id|>",
                "<|eot_id|>",
            ],
        )
    })
}

/// Serves the tiny model at `path`, steers it into its call opener `opener` (a control token,
/// +100 in `logit_bias`) with at most `max_tokens`, and checks the answer whole and streamed:
/// one call of `weather` whose arguments validate, no content (no control token's text leaked
/// into it), the streamed arguments the same as the whole answer's. Returns the call.
fn one_steered_call(path: &Path, opener: &str, max_tokens: u64) -> Value {
    let tok = GenTokenizer::from_gguf(&GgufFile::open(path).unwrap()).unwrap();
    let open = tok
        .special_id(opener)
        .unwrap_or_else(|| panic!("{opener} is a control token"));
    let bias = json!({ open.to_string(): 100 });
    let request = |stream: bool| {
        let mut body = weather_request(Some(&bias), stream);
        body["max_tokens"] = json!(max_tokens);
        body
    };
    let server = Proc::spawn(path.to_str().unwrap(), &[]);
    connect_until_up(server.addr);
    wait_ready(server.addr);

    let resp = post_json(server.addr, "/v1/chat/completions", &request(false));
    assert_eq!(resp.status, 200, "{}\n{}", resp.text(), server.log());
    let v = resp.json();
    let choice = &v["choices"][0];
    assert_eq!(choice["finish_reason"], "tool_calls", "{v}");
    let calls = choice["message"]["tool_calls"]
        .as_array()
        .expect("tool_calls");
    assert_eq!(calls.len(), 1, "{v}");
    assert_eq!(calls[0]["function"]["name"], "weather", "{v}");
    assert_valid_weather_arguments(&calls[0]["function"]["arguments"]);
    assert_eq!(choice["message"]["content"], Value::Null, "{v}");

    let body = stream_http10(server.addr, &request(true));
    let (streamed, finish) = streamed_tool_calls(&body);
    assert_eq!(finish, "tool_calls", "{body}");
    assert_eq!(streamed.len(), 1, "{body}");
    assert_eq!(
        streamed[0]["function"]["arguments"],
        calls[0]["function"]["arguments"]
    );
    assert!(!body.contains(opener), "{body}");
    calls[0].clone()
}

#[test]
fn a_mistral_v11_call_keeps_its_control_tokens_and_validates_through_the_binary() {
    let call = one_steered_call(tiny_mistral_v11(), "[TOOL_CALLS]", 60);
    let id = call["id"].as_str().unwrap();
    assert!(
        id.len() == 9 && id.bytes().all(|b| b.is_ascii_alphanumeric()),
        "a Mistral id: {id}"
    );
}

/// Llama 3.x's syntax end to end: a template with `<|python_tag|>` is read as Llama 3.x
/// (`{"name", "parameters"}` calls); steered into `<|python_tag|>`, the random model prefers
/// whitespace next, and the grammar's bound on it (20 characters) is what makes the call come
/// (no bias against whitespace here), its `parameters` valid. One token per character in this
/// vocabulary: up to 20 of whitespace, the call, 20 more fit in 120.
#[test]
fn a_llama3_call_after_the_python_tag_validates_through_the_binary() {
    one_steered_call(tiny_llama3(), "<|python_tag|>", 120);
}

/// A streamed chat completion's calls, accumulated from their `tool_calls` deltas as a
/// client does (the first delta of an index has its id, type and name; the next ones only
/// pieces of its arguments), each with `deltas`: how many deltas carried a piece of its
/// arguments; and its finish reason.
fn streamed_tool_calls(body: &str) -> (Vec<Value>, Value) {
    let mut calls: Vec<Value> = Vec::new();
    let mut finish = Value::Null;
    for line in body.lines() {
        let Some(data) = line.strip_prefix("data: ") else {
            continue;
        };
        if data == "[DONE]" {
            continue;
        }
        let chunk: Value = serde_json::from_str(data).unwrap();
        let c = &chunk["choices"][0];
        for d in c["delta"]["tool_calls"].as_array().into_iter().flatten() {
            let i = d["index"].as_u64().unwrap() as usize;
            let piece = d["function"]["arguments"].as_str().unwrap();
            if i == calls.len() {
                assert_eq!(d["type"], "function", "{d}");
                assert!(
                    d["id"].is_string() && d["function"]["name"].is_string(),
                    "{d}"
                );
                let mut call = d.clone();
                call["deltas"] = json!(usize::from(!piece.is_empty()));
                calls.push(call);
            } else {
                assert!(
                    d.get("id").is_none() && d["function"].get("name").is_none(),
                    "{d}"
                );
                let call = &mut calls[i];
                let args = format!("{}{piece}", call["function"]["arguments"].as_str().unwrap());
                call["function"]["arguments"] = json!(args);
                call["deltas"] = json!(call["deltas"].as_u64().unwrap() + 1);
            }
        }
        if !c["finish_reason"].is_null() {
            finish = c["finish_reason"].clone();
        }
    }
    (calls, finish)
}

/// The `openai` SDK streams the tiny Qwen3's Hermes call (steered into `<tool_call>` as
/// above, greedy) and a forced call (`tool_choice: "required"`): tests/clients/check_tool_deltas.py accumulates the
/// deltas as the SDK hands them out and compares them with the whole answer's calls; a
/// call's arguments (several tokens) arrive in more than one delta.
#[test]
fn streamed_calls_add_up_to_the_whole_answer_through_the_openai_sdk() {
    let Some(python) = python() else { return };
    let path = long_context_qwen3();
    let tok = GenTokenizer::from_gguf(&GgufFile::open(path).unwrap()).unwrap();
    let open = tok.encode("<tool_call>", false).unwrap();
    let mut bias = serde_json::Map::new();
    bias.insert(open[0].to_string(), json!(100));
    for id in 0..tok.vocab_size() as u32 {
        let text = tok.decode(&[id]);
        if !text.is_empty() && text.trim().is_empty() {
            bias.insert(id.to_string(), json!(-100));
        }
    }
    // The arguments are several tokens, so a stream that sends them as written sends pieces.
    assert!(tok.encode("{\"city\":\"Paris\"}", false).unwrap().len() > 2);
    let server = Proc::spawn(path.to_str().unwrap(), &[]);
    connect_until_up(server.addr);
    wait_ready(server.addr);
    let mut auto = weather_request(Some(&Value::Object(bias)), false);
    auto.as_object_mut().unwrap().remove("stream");
    auto["model"] = json!("zerobatch");
    // Forced: the reasoning not split (the grammar then holds from the answer's first token;
    // the random model would otherwise think forever), nor steered into `<tool_call>`; the
    // bias keeps it from the whitespace a JSON answer may start with.
    let mut forced = auto.clone();
    forced["logit_bias"]
        .as_object_mut()
        .unwrap()
        .remove(&open[0].to_string());
    forced["reasoning_format"] = json!("none");
    forced["tool_choice"] = json!("required");
    forced["max_tokens"] = json!(100);
    for (what, body) in [("auto", auto), ("required", forced)] {
        let (status, output) = run_client_script(
            &python,
            "check_tool_deltas.py",
            &format!("http://{}", server.addr),
            &[&body.to_string()],
            Duration::from_secs(300),
        );
        assert!(
            status.is_some_and(|s| s.success()),
            "{what}: check_tool_deltas.py failed ({status:?}):\n{output}\nserver log:\n{}",
            server.log()
        );
        eprintln!("{what}: {output}");
        let deltas: Vec<u64> = output
            .lines()
            .filter_map(|l| l.strip_prefix("deltas "))
            .map(|l| l.split(' ').next().unwrap().parse().unwrap())
            .collect();
        assert_eq!(deltas.len(), 1, "{what}: {output}");
        assert!(deltas[0] > 1, "{what}: arguments in one piece\n{output}");
    }
}
