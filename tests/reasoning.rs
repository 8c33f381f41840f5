//! A reasoning model's answers (`reasoning_content`), through the real server, on the tiny
//! Qwen3 GGUF (tests/data/gguf, made by scripts/make-qwen-reference.py: `<think>` and
//! `</think>` are its text tokens, which its random weights make unlikely) written again
//! with a thinking model's template: Qwen3's, whose generation prompt opens `<think>\n`
//! unless `enable_thinking` is false (as Qwen3 thinking models', QwQ's and DeepSeek-R1's
//! do). The model's answer thus starts inside the reasoning, and never closes it.
//!
//! - the answer with `reasoning_format: "none"` is the text as the model wrote it; split (the
//!   default) it is all `reasoning_content`, trimmed, with `reasoning_tokens` all the tokens;
//! - `enable_thinking: false` closes the block in the prompt: the answer is content, the
//!   same text as the reference test's (tests/qwen_reference.rs), with no reasoning;
//! - a grammar applies after the reasoning: a JSON schema leaves the reasoning as the model
//!   writes it without one (token for token), where a grammar from the first token would
//!   have forced `{`; the wrapped grammars, driven over the model's vocabulary, take
//!   reasoning, the end tag and then only the request's grammar;
//! - the real `openai` SDK reads `reasoning_content` streamed and whole, and the
//!   stream adds up to the whole answer (tests/clients/check_reasoning.py).

mod common;

use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use candle_core::quantized::gguf_file::{self, Value as GgufValue};
use candle_core::quantized::QTensor;
use candle_core::Device;
use serde_json::{json, Value};
use zerobatch::config::ServeConfig;
use zerobatch::generate::gguf::GgufFile;
use zerobatch::generate::grammar::{Constraint, Grammar, GrammarCompiler};
use zerobatch::generate::reasoning::ReasoningFormat;
use zerobatch::generate::tokenizer::GenTokenizer;
use zerobatch::kernels::Dtype;
use zerobatch::model::DtypeChoice;
use zerobatch::server::BackgroundServer;

use common::{post_json, run_client_script, test_python, wait_ready};

/// The tiny Qwen3 file.
fn qwen3() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/gguf/tiny-qwen3-f32.gguf")
}

/// Qwen3's generation prompt, and the thinking models' (the block opened unless thinking
/// is off).
const QWEN3_PROMPT: &str = "    {%- if enable_thinking is defined and enable_thinking is false %}\n        {{- '<think>\\n\\n</think>\\n\\n' }}\n    {%- endif %}";
const THINKING_PROMPT: &str = "    {%- if enable_thinking is defined and enable_thinking is false %}\n        {{- '<think>\\n\\n</think>\\n\\n' }}\n    {%- else %}\n        {{- '<think>\\n' }}\n    {%- endif %}";

/// The tiny Qwen3 file with the thinking template, written once per test binary.
fn thinking_model() -> &'static Path {
    static PATH: OnceLock<PathBuf> = OnceLock::new();
    PATH.get_or_init(|| {
        let mut file = std::fs::File::open(qwen3()).unwrap();
        let content = gguf_file::Content::read(&mut file).unwrap();
        let mut metadata: Vec<(String, GgufValue)> = content
            .metadata
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        metadata.sort_by(|a, b| a.0.cmp(&b.0));
        for (key, value) in &mut metadata {
            if key == "tokenizer.chat_template" {
                let template = value.to_string().unwrap().clone();
                assert!(template.contains(QWEN3_PROMPT), "Qwen3's template changed");
                *value = GgufValue::String(template.replace(QWEN3_PROMPT, THINKING_PROMPT));
            }
        }
        let mut names: Vec<&String> = content.tensor_infos.keys().collect();
        names.sort();
        let tensors: Vec<(String, QTensor)> = names
            .into_iter()
            .map(|n| {
                let t = content.tensor(&mut file, n, &Device::Cpu).unwrap();
                (n.clone(), t)
            })
            .collect();
        let dir = common::scratch_dir("zerobatch-reasoning");
        let path = dir.join("tiny-qwen3-thinking.gguf");
        let meta: Vec<(&str, &GgufValue)> = metadata.iter().map(|(k, v)| (k.as_str(), v)).collect();
        let tensors: Vec<(&str, &QTensor)> = tensors.iter().map(|(k, v)| (k.as_str(), v)).collect();
        gguf_file::write(&mut std::fs::File::create(&path).unwrap(), &meta, &tensors).unwrap();
        path
    })
}

fn serve(path: &Path) -> BackgroundServer {
    let mut config = ServeConfig::for_tests(path.to_str().unwrap());
    config.dtype = DtypeChoice::Fixed(Dtype::F32);
    let server = BackgroundServer::start(config).expect("server starts");
    wait_ready(server.addr);
    server
}

fn chat(server: &BackgroundServer, extra: Value) -> Value {
    let mut body = json!({
        "messages": [{"role": "user", "content": "Tell me about the number 0"}],
        "temperature": 0,
        "max_tokens": 40,
    });
    for (k, v) in extra.as_object().unwrap() {
        body[k] = v.clone();
    }
    let resp = post_json(server.addr, "/v1/chat/completions", &body);
    assert_eq!(resp.status, 200, "{}", resp.text());
    resp.json()
}

/// The reference test's answer with thinking off (tests/qwen_reference.rs).
fn reference_text() -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/tiny_qwen3_reference.json");
    let r: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    r["chat"]["text"].as_str().unwrap().to_string()
}

#[test]
fn a_template_that_opens_the_block_makes_the_answer_reasoning() {
    let server = serve(thinking_model());
    let raw = chat(&server, json!({"reasoning_format": "none"}));
    let raw_message = &raw["choices"][0]["message"];
    let text = raw_message["content"].as_str().unwrap().to_string();
    assert!(raw_message.get("reasoning_content").is_none(), "{raw}");
    assert!(
        !text.trim().is_empty() && !text.contains("</think>"),
        "{text:?}"
    );
    assert!(raw["usage"].get("completion_tokens_details").is_none());

    for format in [None, Some("auto"), Some("deepseek")] {
        let extra = match format {
            Some(f) => json!({"reasoning_format": f}),
            None => json!({}),
        };
        let split = chat(&server, extra);
        let message = &split["choices"][0]["message"];
        assert_eq!(
            message["reasoning_content"],
            text.trim(),
            "{format:?}: {split}"
        );
        assert_eq!(message["content"], "", "{format:?}");
        assert_eq!(
            split["choices"][0]["finish_reason"],
            raw["choices"][0]["finish_reason"]
        );
        let usage = &split["usage"];
        assert_eq!(
            usage["completion_tokens"],
            raw["usage"]["completion_tokens"]
        );
        assert_eq!(
            usage["completion_tokens_details"]["reasoning_tokens"],
            usage["completion_tokens"]
        );
    }

    // Thinking off: the template closes the block; the answer is content.
    let off = chat(
        &server,
        json!({"chat_template_kwargs": {"enable_thinking": false}, "max_tokens": 64}),
    );
    let message = &off["choices"][0]["message"];
    assert_eq!(message["content"], reference_text().as_str(), "{off}");
    assert_eq!(message["reasoning_content"], Value::Null);
    assert_eq!(
        off["usage"]["completion_tokens_details"]["reasoning_tokens"],
        0
    );

    // llama.cpp's deepseek-legacy is refused by name, as is a typo.
    for bad in ["deepseek-legacy", "deepsek"] {
        let body =
            json!({"messages": [{"role": "user", "content": "hi"}], "reasoning_format": bad});
        let resp = post_json(server.addr, "/v1/chat/completions", &body);
        assert_eq!(resp.status, 400, "{}", resp.text());
        assert!(resp.text().contains(bad), "{}", resp.text());
    }
}

#[test]
fn the_server_default_is_reasoning_format_and_a_request_overrides_it() {
    let mut config = ServeConfig::for_tests(thinking_model().to_str().unwrap());
    config.dtype = DtypeChoice::Fixed(Dtype::F32);
    config.reasoning_format = ReasoningFormat::None;
    let server = BackgroundServer::start(config).expect("server starts");
    wait_ready(server.addr);
    let inline = chat(&server, json!({}));
    let text = inline["choices"][0]["message"]["content"].as_str().unwrap();
    assert!(inline["choices"][0]["message"]
        .get("reasoning_content")
        .is_none());
    let split = chat(&server, json!({"reasoning_format": "auto"}));
    assert_eq!(
        split["choices"][0]["message"]["reasoning_content"],
        text.trim()
    );
}

#[test]
fn a_model_without_thinking_tags_is_untouched() {
    // SmolLM2's template has no tags; the tiny Qwen2 file's neither.
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/gguf/tiny-qwen2-f32.gguf");
    let server = serve(&path);
    let v = chat(&server, json!({}));
    assert!(
        v["choices"][0]["message"]
            .get("reasoning_content")
            .is_none(),
        "{v}"
    );
    assert!(v["usage"].get("completion_tokens_details").is_none(), "{v}");
}

#[test]
fn a_grammar_applies_after_the_reasoning() {
    let server = serve(thinking_model());
    let free = chat(&server, json!({"max_tokens": 120}));
    let mut tokens = free["usage"]["completion_tokens"].as_u64().unwrap();
    if free["choices"][0]["finish_reason"] == "stop" {
        // The end token, which the grammar forbids inside the reasoning.
        tokens -= 1;
    }
    assert!(tokens > 0, "{free}");
    // The grammar lets the reasoning be: the same tokens, up to where the free answer ended.
    let schema =
        json!({"type": "object", "properties": {"n": {"type": "integer"}}, "required": ["n"]});
    let constrained = chat(
        &server,
        json!({
            "max_tokens": tokens,
            "response_format": {"type": "json_schema", "json_schema": {"name": "n", "schema": schema}},
        }),
    );
    let message = &constrained["choices"][0]["message"];
    assert_eq!(
        message["reasoning_content"], free["choices"][0]["message"]["reasoning_content"],
        "{constrained}"
    );
    assert_eq!(message["content"], "");
    assert_eq!(constrained["choices"][0]["finish_reason"], "length");
}

/// The tiny Qwen3 file's tokenizer (its vocabulary has `<think>` and `</think>` as text).
fn tokenizer() -> Arc<GenTokenizer> {
    Arc::new(GenTokenizer::from_gguf(&GgufFile::open(&qwen3()).unwrap()).unwrap())
}

/// Whether the grammar takes `text` whole and then allows the end of the sequence.
fn accepts(compiler: &GrammarCompiler, tok: &GenTokenizer, grammar: &Grammar, text: &str) -> bool {
    let mut c: Constraint = compiler.compile(grammar).expect("the grammar compiles");
    for id in tok.encode(text, false).unwrap() {
        let mut logits = vec![0.0f32; tok.vocab_size()];
        c.apply(&mut logits);
        if logits[id as usize] == f32::NEG_INFINITY || c.commit(id).is_err() {
            return false;
        }
    }
    let mut logits = vec![0.0f32; tok.vocab_size()];
    c.apply(&mut logits);
    tok.end_ids()
        .iter()
        .any(|&e| logits[e as usize] != f32::NEG_INFINITY)
}

fn after_reasoning(open: bool, then: Grammar) -> Grammar {
    Grammar::AfterReasoning {
        start: "<think>".into(),
        end: "</think>".into(),
        open,
        then: Box::new(then),
    }
}

#[test]
fn wrapped_grammars_take_free_reasoning_then_only_the_request_s_grammar() {
    let tok = tokenizer();
    assert!(
        !tok.special_texts().any(|t| t == "</think>"),
        "the test needs </think> as text"
    );
    let compiler = GrammarCompiler::new(tok.clone(), tok.vocab_size());
    let regex = Grammar::Regex("answer: [0-9]".into());
    let schema = Grammar::JsonSchema(
        json!({"type": "object", "properties": {"n": {"type": "integer"}}, "required": ["n"]}),
    );
    let open = after_reasoning(true, regex.clone());
    let closed = after_reasoning(false, regex);
    let json_open = after_reasoning(true, schema);
    let cases: [(&Grammar, &str, bool); 12] = [
        (
            &open,
            "\nI think {\"x\": 1} and <b>stuff</b>.\n</think>\n\nanswer: 7",
            true,
        ),
        (&open, "</think>answer: 7", true),
        // The reasoning must end before the answer, and the answer follow the grammar.
        (&open, "answer: 7", false),
        (&open, "hmm</think>\n\nanswer: x", false),
        (&open, "hmm</think>\n\nanswer: 7 and more", false),
        (&open, "hmm", false),
        (&closed, "answer: 7", true),
        (&closed, "<think>\nhmm\n</think>\n\nanswer: 7", true),
        (&closed, "hmm</think>answer: 7", false),
        (&json_open, "\nok\n</think>\n\n{\"n\":3}", true),
        (&json_open, "\nok\n</think>\n\n{\"n\":\"3\"}", false),
        (&json_open, "{\"n\":3}", false),
    ];
    for (grammar, text, want) in cases {
        assert_eq!(
            accepts(&compiler, &tok, grammar, text),
            want,
            "{grammar:?} on {text:?}"
        );
    }
}

#[test]
fn the_openai_sdk_reads_reasoning_content_streamed_and_whole() {
    let Some(python) = test_python("reasoning", "openai") else {
        return;
    };
    let server = serve(thinking_model());
    let (status, output) = run_client_script(
        &python,
        "check_reasoning.py",
        &format!("http://{}", server.addr),
        &[],
        Duration::from_secs(300),
    );
    assert!(
        status.is_some_and(|s| s.success()),
        "check_reasoning.py failed ({status:?}):\n{output}"
    );
    eprintln!("{output}");
    for check in [
        "ok   whole answers carry reasoning_content",
        "ok   streamed reasoning_content adds up to the whole answer",
        "ok   reasoning_format none keeps the text inline",
        "0 reasoning checks failed",
    ] {
        assert!(output.contains(check), "{check}\n{output}");
    }
}
