//! Structured outputs (constrained decoding with llguidance) through the real binary and real
//! HTTP:
//!
//! - tests/clients/check_structured.py, with `jsonschema` and the real `openai` SDK, on the tiny
//!   random-weight Qwen2 GGUF (tests/data/gguf: it wants to write garbage, so every valid
//!   character is the grammar's doing) and on SmolLM2-135M-Instruct: 32 JSON schemas greedy and
//!   sampled over chat, completions and /generate, every output parsed and validated; regexes,
//!   choice, Lark, json_object, streaming, invalid grammars, `chat.completions.parse`; on
//!   SmolLM2 also forced function calls (`tools` with `tool_choice` "required" and named,
//!   whole and streamed: arguments validated against the function's parameters);
//! - without Python: a grammar's text is exact, stops, max tokens and stop sequences still
//!   apply, invalid grammars are 400 before anything is queued, the compile cache is used,
//!   the grammar metrics are exported, and constrained and unconstrained sequences share a
//!   batch without the unconstrained ones changing.

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use common::*;
use serde_json::{json, Value};

fn tiny_qwen() -> String {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data/gguf/tiny-qwen2-f32.gguf")
        .to_string_lossy()
        .into_owned()
}

/// The interpreter with `jsonschema`, `openai` and `pydantic`, or None (after saying SKIPPED)
/// when there is none; under CI a missing one fails.
fn python() -> Option<PathBuf> {
    test_python("structured_outputs", "jsonschema, openai, pydantic")
}

/// Runs check_structured.py against `server`; panics with its output unless every check passed.
fn run_checks(python: &Path, server: &Proc, args: &[&str]) {
    let (status, output) = run_client_script(
        python,
        "check_structured.py",
        &format!("http://{}", server.addr),
        args,
        Duration::from_secs(900),
    );
    match status {
        Some(s) if s.success() => {
            eprintln!("{output}");
            assert!(
                output.contains("64 schema outputs parsed and validated; 0 checks failed"),
                "{output}"
            );
            if !args.contains(&"--small") {
                assert!(
                    output.contains("ok   tool_choice required and named"),
                    "{output}"
                );
            }
        }
        _ => panic!(
            "check_structured.py {args:?} failed ({status:?}):\n{output}\nserver log:\n{}",
            server.log()
        ),
    }
}

#[test]
fn every_output_of_the_tiny_random_model_validates() {
    let Some(python) = python() else { return };
    let server = Proc::spawn(&tiny_qwen(), &[]);
    connect_until_up(server.addr);
    wait_ready(server.addr);
    run_checks(&python, &server, &["--small"]);
}

#[test]
fn every_output_of_smollm2_validates() {
    let Some(python) = python() else { return };
    let server = Proc::spawn(smollm2_path().to_str().unwrap(), &[]);
    connect_until_up(server.addr);
    wait_ready(server.addr);
    run_checks(&python, &server, &[]);
}

fn generate(server: &Proc, inputs: &str, parameters: Value) -> Value {
    let r = post_json(
        server.addr,
        "/generate",
        &json!({"inputs": inputs, "parameters": parameters}),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    r.json()
}

fn tiny_server() -> Proc {
    let server = Proc::spawn(&tiny_qwen(), &[]);
    connect_until_up(server.addr);
    wait_ready(server.addr);
    server
}

#[test]
fn grammars_fix_the_text_and_stops_and_limits_still_apply() {
    let server = tiny_server();
    let lark = json!({"type": "lark", "value": "start: \"hello world, \" /[0-9]{2}/"});
    // The grammar is complete after its last token: the sequence stops there.
    let a = generate(
        &server,
        "x",
        json!({"max_new_tokens": 50, "details": true, "grammar": lark}),
    );
    let text = a["generated_text"].as_str().unwrap();
    assert!(text.starts_with("hello world, ") && text.len() == 15, "{a}");
    assert!(text[13..].bytes().all(|b| b.is_ascii_digit()), "{a}");
    assert_eq!(a["details"]["finish_reason"], "eos_token", "{a}");
    // max_new_tokens cuts it.
    let b = generate(
        &server,
        "x",
        json!({"max_new_tokens": 3, "details": true, "grammar": lark}),
    );
    assert_eq!(b["details"]["finish_reason"], "length", "{b}");
    assert_eq!(b["details"]["generated_tokens"], 3);
    assert!(
        "hello world, ".starts_with(b["generated_text"].as_str().unwrap()),
        "{b}"
    );
    // A stop sequence inside the forced text ends it (TGI keeps the stop sequence).
    let c = generate(
        &server,
        "x",
        json!({"max_new_tokens": 50, "details": true, "stop": ["lo w"], "grammar": lark}),
    );
    assert_eq!(c["details"]["finish_reason"], "stop_sequence", "{c}");
    assert!(
        c["generated_text"].as_str().unwrap().ends_with("lo w"),
        "{c}"
    );
    // json_object on the OpenAI route: an object that parses.
    let r = post_json(
        server.addr,
        "/v1/completions",
        &json!({"prompt": "x", "max_tokens": 120, "temperature": 0,
                "response_format": {"type": "json_object"}}),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let answer = r.json();
    let choice = &answer["choices"][0];
    let text = choice["text"].as_str().unwrap();
    assert!(text.starts_with('{'), "{answer}");
    if choice["finish_reason"] == "stop" {
        let v: Value = serde_json::from_str(text).unwrap_or_else(|e| panic!("{e}: {text}"));
        assert!(v.is_object());
    }
    // A regex: the whole output matches (checked by hand: three digits, a dash, four).
    let d = generate(
        &server,
        "x",
        json!({"max_new_tokens": 20, "do_sample": true, "seed": 9,
               "grammar": {"type": "regex", "value": "[0-9]{3}-[0-9]{4}"}}),
    );
    let t = d["generated_text"].as_str().unwrap().as_bytes();
    assert_eq!(t.len(), 8, "{d}");
    assert!(
        t[..3].iter().chain(&t[4..]).all(u8::is_ascii_digit) && t[3] == b'-',
        "{d}"
    );
}

#[test]
fn invalid_grammars_are_refused_before_anything_is_queued() {
    let server = tiny_server();
    let counted = || {
        metric(
            &get(server.addr, "/metrics").text(),
            "zerobatch_time_to_first_token_seconds_count",
        )
    };
    let before = counted();
    for (path, body, word) in [
        (
            "/generate",
            json!({"inputs": "x", "parameters": {"grammar": {"type": "regex", "value": "(unclosed"}}}),
            "grammar",
        ),
        (
            "/v1/chat/completions",
            json!({"messages": [{"role": "user", "content": "x"}],
                   "response_format": {"type": "json_schema", "json_schema": {"name": "n", "schema": {"type": "object", "properties": {"a": {"type": "nonsense"}}}}}}),
            "nonsense",
        ),
        (
            "/v1/completions",
            json!({"prompt": "x", "structured_outputs": {"grammar": "start: missing"}}),
            "missing",
        ),
        (
            "/v1/completions",
            json!({"prompt": "x", "response_format": {"type": "yaml"}}),
            "yaml",
        ),
    ] {
        let r = post_json(server.addr, path, &body);
        assert_eq!(r.status, 400, "{path} {body}: {}", r.text());
        let e = r.json();
        assert_eq!(e["error_type"], "invalid_request", "{e}");
        assert!(
            e["error"].as_str().unwrap().contains(word),
            "{e} names {word}"
        );
    }
    assert_eq!(counted(), before, "nothing refused reached the engine");
}

#[test]
fn compiled_grammars_are_cached_and_metrics_exported() {
    let server = tiny_server();
    let schema = json!({"type": "object", "properties": {"k": {"enum": ["a", "b"]}}, "required": ["k"], "additionalProperties": false});
    for _ in 0..3 {
        let a = generate(
            &server,
            "x",
            json!({"max_new_tokens": 30, "grammar": {"type": "json", "value": schema}}),
        );
        let v: Value = serde_json::from_str(a["generated_text"].as_str().unwrap()).unwrap();
        assert!(v["k"] == "a" || v["k"] == "b", "{a}");
    }
    let info = get(server.addr, "/info").json();
    assert_eq!(
        info["structured_outputs"],
        json!(["json_schema", "json_object", "regex", "lark"])
    );
    let m = get(server.addr, "/metrics").text();
    assert_eq!(
        metric(&m, "zerobatch_grammar_cache_total{result=\"miss\"}"),
        1.0,
        "{m}"
    );
    assert_eq!(
        metric(&m, "zerobatch_grammar_cache_total{result=\"hit\"}"),
        2.0,
        "{m}"
    );
    assert_eq!(
        metric(&m, "zerobatch_grammar_compile_seconds_count"),
        1.0,
        "{m}"
    );
    // One mask per generated token, at least (the braces, the key, the value).
    assert!(
        metric(&m, "zerobatch_grammar_mask_seconds_count") >= 9.0,
        "{m}"
    );
}

#[test]
fn constrained_and_unconstrained_sequences_share_a_batch() {
    let server = tiny_server();
    let plain = json!({"max_new_tokens": 24, "ignore_eos": true});
    let alone = generate(&server, "once upon", plain.clone())["generated_text"].clone();
    let schema = json!({"type": "array", "items": {"type": "integer", "minimum": 0, "maximum": 9}, "minItems": 3, "maxItems": 3});
    let handles: Vec<_> = (0..6)
        .map(|i| {
            let addr = server.addr;
            let (plain, schema) = (plain.clone(), schema.clone());
            std::thread::spawn(move || {
                let params = if i % 2 == 0 {
                    plain
                } else {
                    json!({"max_new_tokens": 24, "grammar": {"type": "json", "value": schema}})
                };
                let r = post_json(
                    addr,
                    "/generate",
                    &json!({"inputs": "once upon", "parameters": params}),
                );
                assert_eq!(r.status, 200, "{}", r.text());
                (i, r.json()["generated_text"].clone())
            })
        })
        .collect();
    for h in handles {
        let (i, text) = h.join().unwrap();
        if i % 2 == 0 {
            assert_eq!(
                text, alone,
                "an unconstrained sequence is the same beside constrained ones"
            );
        } else {
            let v: Vec<u8> = serde_json::from_str(text.as_str().unwrap()).unwrap();
            assert_eq!(v.len(), 3, "{text}");
            assert!(v.iter().all(|&d| d <= 9));
        }
    }
}
