//! The grammars of `tool_choice: "auto"` (src/generate/tool_syntax/) compiled by llguidance
//! over a real vocabulary (the tiny Qwen GGUF's byte-level BPE) and driven token by token:
//! the Hermes grammar lets free text end, lets text be followed by `<tool_call>` blocks, and
//! once a block is open refuses a call that does not validate (an unknown name, arguments of
//! the wrong type, a second call when parallel calls are off); the generic JSON format's
//! schema takes a response or calls and nothing else.
//!
//! The syntaxes whose markers are control tokens (Llama 3.x's `<|python_tag|>`, Mistral's
//! `[TOOL_CALLS]`, `[ARGS]`, `[CALL_ID]`; `<tool_call>` in some Hermes vocabularies) are
//! driven over a vocabulary written here that has them as control tokens: the grammar names
//! them by id, free text cannot spell them, and once one is written the call must validate.

use std::path::Path;
use std::sync::Arc;

use serde_json::json;
use zerobatch::generate::gguf::GgufFile;
use zerobatch::generate::grammar::{Constraint, Grammar, GrammarCompiler};
use zerobatch::generate::tokenizer::GenTokenizer;
use zerobatch::generate::tool_syntax::{AutoTools, FunctionSpec, ToolSyntax};

fn tokenizer() -> Arc<GenTokenizer> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/gguf/tiny-qwen2-f32.gguf");
    Arc::new(GenTokenizer::from_gguf(&GgufFile::open(&path).unwrap()).unwrap())
}

/// Control tokens of the call syntaxes, as real vocabularies have them.
const CONTROL: [&str; 6] = [
    "[TOOL_CALLS]",
    "[ARGS]",
    "[CALL_ID]",
    "<|python_tag|>",
    "<tool_call>",
    "</tool_call>",
];

/// A byte-level vocabulary of one token per printable ASCII character, space, newline and
/// tab, then [`CONTROL`] and an end-of-turn token (EOS), all control tokens: a GGUF file of
/// metadata only, written once per test binary.
fn control_tokenizer() -> Arc<GenTokenizer> {
    use candle_core::quantized::gguf_file::{self, Value};
    static PATH: std::sync::OnceLock<std::path::PathBuf> = std::sync::OnceLock::new();
    let path = PATH.get_or_init(|| {
        let mut tokens: Vec<String> = (33u8..=126).map(|b| (b as char).to_string()).collect();
        // Byte-level BPE's characters for space, newline and tab.
        tokens.extend(["\u{120}", "\u{10A}", "\u{109}"].map(String::from));
        let text = tokens.len();
        tokens.extend(CONTROL.map(String::from));
        tokens.push("<|eot_id|>".into());
        let types: Vec<Value> = (0..tokens.len())
            .map(|i| Value::I32(if i < text { 1 } else { 3 }))
            .collect();
        let strings = |v: &[String]| Value::Array(v.iter().cloned().map(Value::String).collect());
        let metadata = [
            ("general.architecture", Value::String("llama".into())),
            ("tokenizer.ggml.model", Value::String("gpt2".into())),
            ("tokenizer.ggml.pre", Value::String("default".into())),
            ("tokenizer.ggml.tokens", strings(&tokens)),
            ("tokenizer.ggml.merges", strings(&[])),
            ("tokenizer.ggml.token_type", Value::Array(types)),
            (
                "tokenizer.ggml.eos_token_id",
                Value::U32(tokens.len() as u32 - 1),
            ),
        ];
        let meta: Vec<(&str, &Value)> = metadata.iter().map(|(k, v)| (*k, v)).collect();
        let dir =
            std::env::temp_dir().join(format!("zerobatch-tool-grammar-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("control-tokens.gguf");
        gguf_file::write(&mut std::fs::File::create(&path).unwrap(), &meta, &[]).unwrap();
        path
    });
    Arc::new(GenTokenizer::from_gguf(&GgufFile::open(path).unwrap()).unwrap())
}

fn tools(parallel: bool) -> AutoTools {
    AutoTools {
        functions: vec![
            FunctionSpec {
                name: "weather".into(),
                description: None,
                parameters: json!({"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}),
            },
            FunctionSpec {
                name: "add".into(),
                description: None,
                parameters: json!({"type": "object", "properties": {"a": {"type": "integer"}}, "required": ["a"]}),
            },
        ],
        parallel,
    }
}

/// Whether the grammar takes `text` whole and then allows the end of the sequence.
fn accepts(compiler: &GrammarCompiler, tok: &GenTokenizer, grammar: &Grammar, text: &str) -> bool {
    let mut c: Constraint = compiler.compile(grammar).expect("the grammar compiles");
    for id in tok.encode(text, false).unwrap() {
        let mut logits = vec![0.0f32; tok.vocab_size()];
        c.apply(&mut logits);
        if logits[id as usize] == f32::NEG_INFINITY {
            return false;
        }
        if c.commit(id).is_err() {
            return false;
        }
    }
    let mut logits = vec![0.0f32; tok.vocab_size()];
    c.apply(&mut logits);
    tok.end_ids()
        .iter()
        .any(|&e| logits[e as usize] != f32::NEG_INFINITY)
}

#[test]
fn the_hermes_grammar_is_free_text_until_a_call_begins() {
    let tok = tokenizer();
    assert!(
        !tok.special_texts().any(|t| t == "<tool_call>"),
        "the test needs <tool_call> as text"
    );
    let compiler = GrammarCompiler::new(tok.clone(), tok.vocab_size());
    let one = ToolSyntax::Hermes.grammar(&tools(false), &|t| tok.special_id(t));
    let many = ToolSyntax::Hermes.grammar(&tools(true), &|t| tok.special_id(t));
    let call_a =
        "<tool_call>\n{\"name\": \"weather\", \"arguments\": {\"city\": \"Paris\"}}\n</tool_call>";
    let call_b = "<tool_call>\n{\"name\": \"add\", \"arguments\": {\"a\": 2}}\n</tool_call>";
    for g in [&one, &many] {
        assert!(accepts(
            &compiler,
            &tok,
            g,
            "Hello there, <b>no</b> calls {\"x\": 1}"
        ));
        assert!(accepts(
            &compiler,
            &tok,
            g,
            &format!("Let me look.\n{call_a}")
        ));
        assert!(accepts(&compiler, &tok, g, call_a));
        // Once the opener is written, the call must validate.
        assert!(!accepts(
            &compiler,
            &tok,
            g,
            "<tool_call>\n{\"name\": \"nope\", \"arguments\": {}}\n</tool_call>"
        ));
        assert!(!accepts(
            &compiler,
            &tok,
            g,
            "<tool_call>\n{\"name\": \"add\", \"arguments\": {\"a\": \"two\"}}\n</tool_call>"
        ));
        assert!(!accepts(&compiler, &tok, g, "<tool_call>\nnot json"));
        // Nothing after the calls.
        assert!(!accepts(
            &compiler,
            &tok,
            g,
            &format!("{call_a}\nand more words")
        ));
    }
    let two = format!("{call_a}\n{call_b}");
    assert!(accepts(&compiler, &tok, &many, &two));
    assert!(!accepts(&compiler, &tok, &one, &two));
}

#[test]
fn the_generic_format_takes_a_response_or_calls() {
    let tok = tokenizer();
    let compiler = GrammarCompiler::new(tok.clone(), tok.vocab_size());
    let g = ToolSyntax::Json.grammar(&tools(false), &|_| None);
    assert!(accepts(&compiler, &tok, &g, "{\"response\":\"Hi!\"}"));
    assert!(accepts(
        &compiler,
        &tok,
        &g,
        "{\"tool_calls\":[{\"name\":\"add\",\"arguments\":{\"a\":1}}]}"
    ));
    assert!(!accepts(&compiler, &tok, &g, "{\"tool_calls\":[{\"name\":\"add\",\"arguments\":{\"a\":1}},{\"name\":\"add\",\"arguments\":{\"a\":2}}]}"));
    assert!(!accepts(&compiler, &tok, &g, "Hi!"));
}

/// Each marker of [`CONTROL`] is one control token of [`control_tokenizer`].
fn check_control(tok: &GenTokenizer) {
    for m in CONTROL {
        let id = tok
            .special_id(m)
            .unwrap_or_else(|| panic!("{m} is not a control token"));
        assert_eq!(tok.encode(m, false).unwrap(), [id], "{m}");
    }
}

#[test]
fn mistral_v11_calls_are_free_text_until_the_control_token_then_valid_calls() {
    let tok = control_tokenizer();
    check_control(&tok);
    let compiler = GrammarCompiler::new(tok.clone(), tok.vocab_size());
    let special = |t: &str| tok.special_id(t);
    let one = ToolSyntax::MistralArgs.grammar(&tools(false), &special);
    let many = ToolSyntax::MistralArgs.grammar(&tools(true), &special);
    // The markers are named by id, not spelled.
    let Grammar::Lark(lark) = &one else {
        panic!("a Lark grammar")
    };
    assert!(!lark.contains("TOOL_CALLS"), "{lark}");
    let call_a = "[TOOL_CALLS]weather[ARGS]{\"city\": \"Paris\"}";
    let call_b = "[TOOL_CALLS]add[ARGS]{\"a\": 2}";
    for g in [&one, &many] {
        assert!(accepts(&compiler, &tok, g, "Hello [there] {\"x\": 1}"));
        assert!(accepts(&compiler, &tok, g, ""));
        assert!(accepts(&compiler, &tok, g, call_a));
        assert!(accepts(
            &compiler,
            &tok,
            g,
            &format!("Let me look. {call_a}")
        ));
        // The model's own call id, 9 letters or digits.
        assert!(accepts(
            &compiler,
            &tok,
            g,
            "[TOOL_CALLS]weather[CALL_ID]a1B2c3D4e[ARGS]{\"city\": \"Oslo\"}"
        ));
        assert!(!accepts(
            &compiler,
            &tok,
            g,
            "[TOOL_CALLS]weather[CALL_ID]short[ARGS]{\"city\": \"Oslo\"}"
        ));
        // Once the control token is written, the call must validate.
        for bad in [
            "[TOOL_CALLS]nope[ARGS]{}",
            "[TOOL_CALLS]add[ARGS]{\"a\": \"two\"}",
            "[TOOL_CALLS]add[ARGS]{}",
            "[TOOL_CALLS]add{\"a\": 2}",
            "[TOOL_CALLS][{\"name\": \"add\", \"arguments\": {\"a\": 2}}]",
            "[TOOL_CALLS]add[ARGS]{\"a\": 2} and more words",
        ] {
            assert!(!accepts(&compiler, &tok, g, bad), "{bad}");
        }
        // Free text cannot hold the markers' control tokens.
        assert!(!accepts(&compiler, &tok, g, "text [ARGS] text"));
    }
    let two = format!("{call_a}{call_b}");
    assert!(accepts(&compiler, &tok, &many, &two));
    assert!(!accepts(&compiler, &tok, &one, &two));
    // What the grammar takes, the parser reads.
    let p = ToolSyntax::MistralArgs.parse(&format!("Let me look. {two}"));
    assert_eq!(p.content.as_deref(), Some("Let me look."));
    assert_eq!(p.calls.len(), 2);
    assert_eq!(p.calls[1].arguments, r#"{"a":2}"#);
}

#[test]
fn mistral_v3_calls_are_a_valid_list_after_the_control_token() {
    let tok = control_tokenizer();
    let compiler = GrammarCompiler::new(tok.clone(), tok.vocab_size());
    let special = |t: &str| tok.special_id(t);
    let one = ToolSyntax::Mistral.grammar(&tools(false), &special);
    let many = ToolSyntax::Mistral.grammar(&tools(true), &special);
    let a = "{\"name\": \"weather\", \"arguments\": {\"city\": \"Paris\"}}";
    let b = "{\"name\": \"add\", \"arguments\": {\"a\": 1}}";
    for g in [&one, &many] {
        assert!(accepts(&compiler, &tok, g, "No calls today."));
        assert!(accepts(&compiler, &tok, g, &format!("[TOOL_CALLS][{a}]")));
        assert!(accepts(
            &compiler,
            &tok,
            g,
            &format!("Sure. [TOOL_CALLS] [{a}]")
        ));
        assert!(!accepts(&compiler, &tok, g, "[TOOL_CALLS][]"));
        assert!(!accepts(
            &compiler,
            &tok,
            g,
            "[TOOL_CALLS][{\"name\": \"add\", \"arguments\": {\"a\": true}}]"
        ));
        assert!(!accepts(&compiler, &tok, g, "[TOOL_CALLS]weather[ARGS]{}"));
    }
    assert!(accepts(
        &compiler,
        &tok,
        &many,
        &format!("[TOOL_CALLS][{a}, {b}]")
    ));
    assert!(!accepts(
        &compiler,
        &tok,
        &one,
        &format!("[TOOL_CALLS][{a}, {b}]")
    ));
    let p = ToolSyntax::Mistral.parse(&format!("Sure. [TOOL_CALLS] [{a}, {b}]"));
    assert_eq!((p.content.as_deref(), p.calls.len()), (Some("Sure."), 2));
}

#[test]
fn llama3_answers_are_text_or_calls_from_the_first_character() {
    let tok = control_tokenizer();
    let compiler = GrammarCompiler::new(tok.clone(), tok.vocab_size());
    let special = |t: &str| tok.special_id(t);
    let one = ToolSyntax::Llama3.grammar(&tools(false), &special);
    let many = ToolSyntax::Llama3.grammar(&tools(true), &special);
    let a = "{\"name\": \"weather\", \"parameters\": {\"city\": \"Paris\"}}";
    let b = "{\"name\": \"add\", \"parameters\": {\"a\": 1}}";
    for g in [&one, &many] {
        assert!(accepts(&compiler, &tok, g, "The weather is fine {really}."));
        assert!(accepts(&compiler, &tok, g, ""));
        assert!(accepts(&compiler, &tok, g, a));
        assert!(accepts(&compiler, &tok, g, &format!("\n{a}")));
        assert!(accepts(&compiler, &tok, g, &format!("<|python_tag|>{a}")));
        // An answer that begins `{` is a call, and must validate.
        for bad in [
            "{\"x\": 1}",
            "{\"name\": \"weather\", \"arguments\": {\"city\": \"Paris\"}}",
            "{\"name\": \"add\", \"parameters\": {\"a\": 1.5}}",
            "<|python_tag|>print(1)",
        ] {
            assert!(!accepts(&compiler, &tok, g, bad), "{bad}");
        }
        // Text cannot turn into a call.
        assert!(!accepts(
            &compiler,
            &tok,
            g,
            &format!("Sure: <|python_tag|>{a}")
        ));
    }
    assert!(accepts(&compiler, &tok, &many, &format!("{a}; {b}")));
    assert!(!accepts(&compiler, &tok, &one, &format!("{a}; {b}")));
    assert_eq!(
        ToolSyntax::Llama3
            .parse(&format!("<|python_tag|>{a}; {b}"))
            .calls
            .len(),
        2
    );
}

#[test]
fn hermes_markers_that_are_control_tokens_are_named_by_id() {
    let tok = control_tokenizer();
    let compiler = GrammarCompiler::new(tok.clone(), tok.vocab_size());
    let g = ToolSyntax::Hermes.grammar(&tools(true), &|t| tok.special_id(t));
    let call = "<tool_call>\n{\"name\": \"add\", \"arguments\": {\"a\": 2}}\n</tool_call>";
    assert!(accepts(&compiler, &tok, &g, "Just words."));
    assert!(accepts(
        &compiler,
        &tok,
        &g,
        &format!("Words first.\n{call}\n{call}")
    ));
    assert!(!accepts(
        &compiler,
        &tok,
        &g,
        "<tool_call>\n{\"name\": \"add\", \"arguments\": {}}\n</tool_call>"
    ));
}

/// Once a call has begun, whitespace is all a grammar leaves a model before the next piece of
/// syntax: it is bounded (20 characters), so a model that prefers it cannot pad until
/// `max_tokens` after the opener, between calls or after the last one.
#[test]
fn whitespace_around_calls_is_bounded() {
    let tok = control_tokenizer();
    let compiler = GrammarCompiler::new(tok.clone(), tok.vocab_size());
    let special = |t: &str| tok.special_id(t);
    let (ok, long) = (" ".repeat(20), " ".repeat(21));
    let llama3 = ToolSyntax::Llama3.grammar(&tools(true), &special);
    let mistral = ToolSyntax::Mistral.grammar(&tools(true), &special);
    let hermes = ToolSyntax::Hermes.grammar(&tools(true), &special);
    let a = "{\"name\": \"weather\", \"parameters\": {\"city\": \"Paris\"}}";
    let m = "[{\"name\": \"weather\", \"arguments\": {\"city\": \"Paris\"}}]";
    let h = "<tool_call>\n{\"name\": \"add\", \"arguments\": {\"a\": 2}}\n</tool_call>";
    for (g, text) in [
        (&llama3, format!("<|python_tag|>{{ws}}{a}")),
        (&llama3, format!("{a}{{ws}}")),
        (&llama3, format!("{a};{{ws}}{a}")),
        (&mistral, format!("[TOOL_CALLS]{{ws}}{m}")),
        (&mistral, format!("[TOOL_CALLS]{m}{{ws}}")),
        (&hermes, format!("{h}{{ws}}")),
        (&hermes, format!("{h}{{ws}}{h}")),
    ] {
        let with = |ws: &str| text.replace("{ws}", ws);
        assert!(accepts(&compiler, &tok, g, &with(&ok)), "{:?}", with(&ok));
        assert!(
            !accepts(&compiler, &tok, g, &with(&long)),
            "{:?}",
            with(&long)
        );
    }
}
