//! The grammars of `tool_choice: "auto"` (src/generate/tool_syntax/) compiled by llguidance
//! over a real vocabulary (the tiny Qwen GGUF's byte-level BPE) and driven token by token:
//! the Hermes grammar lets free text end, lets text be followed by `<tool_call>` blocks, and
//! once a block is open refuses a call that does not validate (an unknown name, arguments of
//! the wrong type, a second call when parallel calls are off); the generic JSON format's
//! schema takes a response or calls and nothing else.

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
    let one = ToolSyntax::Hermes.grammar(&tools(false), false).unwrap();
    let many = ToolSyntax::Hermes.grammar(&tools(true), false).unwrap();
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
    let g = ToolSyntax::Json.grammar(&tools(false), false).unwrap();
    assert!(accepts(&compiler, &tok, &g, "{\"response\":\"Hi!\"}"));
    assert!(accepts(
        &compiler,
        &tok,
        &g,
        "{\"tool_calls\":[{\"name\":\"add\",\"arguments\":{\"a\":1}}]}"
    ));
    assert!(!accepts(&compiler, &tok, &g, "{\"tool_calls\":[{\"name\":\"add\",\"arguments\":{\"a\":1}},{\"name\":\"add\",\"arguments\":{\"a\":2}}]}"));
    assert!(!accepts(&compiler, &tok, &g, "Hi!"));
    // Llama 3.x and Mistral answers are parsed only.
    assert!(ToolSyntax::Llama3.grammar(&tools(true), false).is_none());
    assert!(ToolSyntax::Mistral.grammar(&tools(true), false).is_none());
}
