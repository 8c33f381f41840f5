//! The model's own function-call syntax, for `tool_choice: "auto"`: which one a chat template
//! teaches ([`ToolSyntax::detect`]), how to find the calls in what the model wrote
//! ([`ToolSyntax::parse`]), where a streamed answer must start holding text back because a
//! call may be beginning ([`ToolSyntax::hold_from`]), and the grammar an answer follows.
//!
//! - [`hermes`]: `<tool_call>{"name", "arguments"}</tool_call>` blocks (Hermes, Qwen 2.5 / 3,
//!   SmolLM3 templates), text before them is content; the grammar is lazy: free text, and
//!   once `<tool_call>` is written, a call whose arguments validate;
//! - [`llama3`]: Llama 3.x's `{"name", "parameters"}` as the whole answer, after an optional
//!   `<|python_tag|>`;
//! - [`mistral`]: `[TOOL_CALLS][{"name", "arguments"}, ...]` (the v3 tokenizers' templates),
//!   and `[TOOL_CALLS]name[ARGS]{...}` once per call, with an optional `[CALL_ID]id` after the
//!   name (v11 and later: Mistral Small 3.1 / 3.2, Magistral, Devstral);
//! - [`json`]: templates that know no tools: the tools are described in a system message and
//!   the answer is JSON, `{"tool_calls": [...]}` or `{"response": "..."}` (llama.cpp's generic
//!   format), constrained by a JSON schema.
//!
//! Every grammar but the generic format's is lazy: free text, and once the call's opener is
//! written, a call whose arguments validate. Openers that are control tokens of the model's
//! vocabulary (`<|python_tag|>`, `[TOOL_CALLS]`, `[ARGS]`, …) are named in the grammar by id
//! (llguidance's `<[id]>`); openers that are text are a lazy lexeme ending at the opener.
//! Control tokens are left out of decoded text, so a syntax's markers
//! ([`ToolSyntax::markers`]) are kept in the answer's text when the request may call (as
//! llama.cpp's `preserved_tokens`): the parsers read them there.

pub mod hermes;
pub mod json;
pub mod llama3;
pub mod mistral;
pub mod partial;

pub use partial::{CallText, PartialCall};

use serde_json::value::RawValue;
use serde_json::{json, Value};

use super::chat_message::ChatMessage;
use super::grammar::Grammar;

/// A function the model may call.
#[derive(Debug, Clone, PartialEq)]
pub struct FunctionSpec {
    pub name: String,
    pub description: Option<String>,
    /// Its arguments' JSON schema (`{"type": "object"}` when the request gave none).
    pub parameters: Value,
}

impl FunctionSpec {
    /// The schema of one call, `{"name": NAME, "arguments": {...}}`.
    pub fn call_schema(&self) -> Value {
        json!({
            "type": "object",
            "properties": {"name": {"const": self.name}, "arguments": self.parameters},
            "required": ["name", "arguments"],
            "additionalProperties": false,
        })
    }
}

/// The schema of one call to any of `functions`.
pub fn any_call_schema(functions: &[FunctionSpec]) -> Value {
    any_call_schema_keyed(functions, "arguments")
}

/// The schema of one call to any of `functions`, its arguments under `key` (Llama 3.x
/// writes `parameters`).
pub fn any_call_schema_keyed(functions: &[FunctionSpec], key: &str) -> Value {
    let one = |f: &FunctionSpec| {
        let mut s = f.call_schema();
        if key != "arguments" {
            let args = s["properties"]["arguments"].take();
            s["properties"] = json!({"name": {"const": f.name}, key: args});
            s["required"] = json!(["name", key]);
        }
        s
    };
    match functions {
        [f] => one(f),
        _ => json!({"anyOf": functions.iter().map(one).collect::<Vec<_>>()}),
    }
}

/// A JSON schema with the separators the templates write (`| tojson`: `", "` and `": "`)
/// and no free whitespace (a model could pad forever).
pub(crate) fn as_templates_write(mut schema: Value) -> Value {
    schema["x-guidance"] = json!({
        "whitespace_flexible": false,
        "item_separator": ", ",
        "key_separator": ": ",
        "coerce_one_of": true,
    });
    schema
}

/// How a syntax's marker is written in the model's vocabulary.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Marker {
    /// A control token, by id (it has no text the grammar could match).
    Token(u32),
    /// Text.
    Text(&'static str),
}

impl Marker {
    /// `text` as `special` (a control token's id by its text) finds it.
    pub fn of(text: &'static str, special: &dyn Fn(&str) -> Option<u32>) -> Self {
        special(text).map_or(Marker::Text(text), Marker::Token)
    }

    /// The marker as an item of a Lark rule.
    pub(crate) fn lark(self) -> String {
        match self {
            Marker::Token(id) => format!("<[{id}]>"),
            Marker::Text(t) => Value::from(t).to_string(),
        }
    }
}

/// A lazy grammar's start: free text (that never writes `opener`), or text, then `opener`,
/// then `rest` (Lark items). With a text opener, the text before it and the opener are one
/// lazy lexeme (it ends at the first opener) and text alone cannot hold it: a call, once
/// begun, is always the grammar's. A control-token opener has no text, so free text cannot
/// spell it, and the token ends the text.
pub(crate) fn lazy_start(opener: Marker, rest: &str) -> String {
    match opener {
        Marker::Text(t) => {
            let rx = crate::generate::grammar::lark_regex(t);
            format!(
                "start: TEXT | open {rest}\nopen[lazy]: /(?s:.*){rx}/\nTEXT: /(?s:.*)/ & ~/(?s:.*){rx}(?s:.*)/\n"
            )
        }
        Marker::Token(id) => {
            format!("start: TEXT? | TEXT? <[{id}]> {rest}\nTEXT: /(?s:.+)/\n")
        }
    }
}

/// A request's tools under `tool_choice: "auto"`: the model may answer text or calls.
#[derive(Debug, Clone, PartialEq)]
pub struct AutoTools {
    pub functions: Vec<FunctionSpec>,
    /// `parallel_tool_calls`: several calls in one answer (default true).
    pub parallel: bool,
}

/// The call syntaxes recognised.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ToolSyntax {
    Hermes,
    Llama3,
    /// `[TOOL_CALLS]` and a JSON list of calls.
    Mistral,
    /// `[TOOL_CALLS]name[ARGS]{...}` per call.
    MistralArgs,
    Json,
}

/// How an answer's calls are read: the syntax, and whether several are kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ToolParsing {
    pub syntax: ToolSyntax,
    pub parallel: bool,
}

/// A call found in an answer.
#[derive(Debug, Clone, PartialEq)]
pub struct ParsedCall {
    pub name: String,
    /// The text of a JSON object: the arguments as the model wrote them, whitespace outside
    /// strings taken out ([`compact`]), so a streamed call's pieces add up to it exactly
    /// ([`partial`]).
    pub arguments: String,
    /// The id the model gave the call (Mistral's `[CALL_ID]`), if it gave one.
    pub id: Option<String>,
}

/// An answer read for calls.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Parsed {
    /// The text for `message.content`: before the calls, or the whole answer when it holds
    /// none; `None` when empty.
    pub content: Option<String>,
    /// Where the calls begin in the text (its length when there are none); for [`json`],
    /// whose content is inside the JSON, 0.
    pub content_end: usize,
    pub calls: Vec<ParsedCall>,
}

impl Parsed {
    /// No calls: the whole text is the content.
    pub fn text(text: &str) -> Self {
        Self {
            content: non_empty(text),
            content_end: text.len(),
            calls: Vec::new(),
        }
    }
}

fn non_empty(text: &str) -> Option<String> {
    (!text.trim().is_empty()).then(|| text.to_string())
}

/// A call object's members as written.
#[derive(serde::Deserialize)]
struct RawCall<'a> {
    name: String,
    #[serde(borrow, default)]
    arguments: Option<&'a RawValue>,
    #[serde(borrow, default)]
    parameters: Option<&'a RawValue>,
}

/// The call object that is all of `text`, `{"name": ..., "arguments" (or "parameters"):
/// {...}}`, its arguments given as an object or as its JSON text; `key` (the syntax's own,
/// [`ToolSyntax::arguments_key`]) is read first. A repeated member makes it no call.
pub(crate) fn read_call(text: &str, key: &str) -> Option<ParsedCall> {
    let raw: RawCall = serde_json::from_str(text).ok()?;
    let (first, second) = if key == "parameters" {
        (raw.parameters, raw.arguments)
    } else {
        (raw.arguments, raw.parameters)
    };
    let arguments = match first.or(second) {
        None => "{}".to_string(),
        Some(a) => arguments_text(a.get())?,
    };
    Some(ParsedCall {
        name: raw.name,
        arguments,
        id: None,
    })
}

/// The arguments' text from a JSON value's text: an object compacted, or a string that
/// holds an object's text, that text compacted; anything else is no arguments.
pub(crate) fn arguments_text(raw: &str) -> Option<String> {
    let raw = raw.trim();
    if raw.starts_with('{') {
        return Some(compact(raw));
    }
    let inner: String = serde_json::from_str(raw).ok()?;
    let inner = inner.trim();
    serde_json::from_str::<serde_json::Map<String, Value>>(inner).ok()?;
    Some(compact(inner))
}

/// `json` without the whitespace outside its strings. Applied to a prefix of a text, it
/// gives a prefix of what it gives for the whole (it looks at no byte ahead), which is what
/// lets a call's arguments stream in pieces that add up to the finished text.
pub fn compact(json: &str) -> String {
    let mut out = String::with_capacity(json.len());
    let (mut in_string, mut escaped) = (false, false);
    for c in json.chars() {
        if in_string {
            if escaped {
                escaped = false;
            } else if c == '\\' {
                escaped = true;
            } else if c == '"' {
                in_string = false;
            }
        } else if c == '"' {
            in_string = true;
        } else if matches!(c, ' ' | '\t' | '\n' | '\r') {
            continue;
        }
        out.push(c);
    }
    out
}

impl ToolSyntax {
    /// The syntax a chat template's source teaches.
    pub fn detect(template: &str) -> Self {
        if template.contains("<tool_call>") {
            ToolSyntax::Hermes
        } else if template.contains(mistral::OPENER) && template.contains(mistral::ARGS) {
            ToolSyntax::MistralArgs
        } else if template.contains(mistral::OPENER) {
            ToolSyntax::Mistral
        } else if template.contains("<|python_tag|>")
            || (template.contains("<|start_header_id|>") && template.contains("tools"))
        {
            ToolSyntax::Llama3
        } else {
            ToolSyntax::Json
        }
    }

    /// The calls in `text` (all of them; the caller keeps one unless parallel). Text that
    /// holds no well-formed call is content.
    pub fn parse(self, text: &str) -> Parsed {
        match self {
            ToolSyntax::Hermes => hermes::parse(text),
            ToolSyntax::Llama3 => llama3::parse(text),
            ToolSyntax::Mistral => mistral::parse(text),
            ToolSyntax::MistralArgs => mistral::parse_args(text),
            ToolSyntax::Json => json::parse(text),
        }
    }

    /// The member of a call object that holds its arguments (Llama 3.x writes
    /// `parameters`); the other name is read when it is missing.
    pub fn arguments_key(self) -> &'static str {
        match self {
            ToolSyntax::Llama3 => "parameters",
            _ => "arguments",
        }
    }

    /// Where a streamed answer must hold its text back from (a call may begin there), if
    /// anywhere; the text before it is content whatever comes next.
    pub fn hold_from(self, text: &str) -> Option<usize> {
        match self {
            ToolSyntax::Hermes => opener_from(text, hermes::OPENER),
            ToolSyntax::Mistral | ToolSyntax::MistralArgs => opener_from(text, mistral::OPENER),
            ToolSyntax::Llama3 => llama3::hold_from(text),
            ToolSyntax::Json => Some(0),
        }
    }

    /// The texts of the syntax's markers, which the answer's text keeps where they are
    /// control tokens (decoding leaves those out; the parsers read the markers).
    pub fn markers(self) -> &'static [&'static str] {
        match self {
            ToolSyntax::Hermes => &[hermes::OPENER, hermes::CLOSER],
            ToolSyntax::Llama3 => &[llama3::PYTHON_TAG],
            ToolSyntax::Mistral => &[mistral::OPENER],
            ToolSyntax::MistralArgs => &[mistral::OPENER, mistral::ARGS, mistral::CALL_ID],
            ToolSyntax::Json => &[],
        }
    }

    /// The grammar an answer follows: `special` gives the id of a control token of the
    /// model's vocabulary by its text (markers it finds are named by id in the grammar).
    pub fn grammar(self, tools: &AutoTools, special: &dyn Fn(&str) -> Option<u32>) -> Grammar {
        match self {
            ToolSyntax::Hermes => hermes::grammar(tools, special),
            ToolSyntax::Llama3 => llama3::grammar(tools, special),
            ToolSyntax::Mistral => mistral::grammar(tools, special),
            ToolSyntax::MistralArgs => mistral::grammar_args(tools, special),
            ToolSyntax::Json => json::grammar(tools),
        }
    }

    /// A fresh id for a call the model gave none: Mistral's templates take ids of 9 letters
    /// and digits (v3's refuse any other), the others OpenAI's `call_…`.
    pub fn new_call_id(self, random: u64) -> String {
        match self {
            ToolSyntax::Mistral | ToolSyntax::MistralArgs => {
                const DIGITS: &[u8] =
                    b"0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ";
                let mut r = random;
                (0..9)
                    .map(|_| {
                        let c = DIGITS[(r % 62) as usize] as char;
                        r /= 62;
                        c
                    })
                    .collect()
            }
            _ => format!("call_{random:016x}"),
        }
    }

    /// The messages as the template needs them: for [`json`], the tools described in the
    /// system message and earlier calls written as the JSON the model answers; the others'
    /// templates render tools and calls themselves.
    pub fn prepare(
        self,
        messages: Vec<ChatMessage>,
        tools: Option<&AutoTools>,
    ) -> Vec<ChatMessage> {
        match self {
            ToolSyntax::Json => json::prepare(messages, tools),
            _ => messages,
        }
    }
}

/// Where `opener` begins in `text`, or the longest tail of `text` that could begin it.
fn opener_from(text: &str, opener: &str) -> Option<usize> {
    if let Some(at) = text.find(opener) {
        return Some(at);
    }
    (1..opener.len())
        .rev()
        .find(|&n| text.ends_with(&opener[..n]))
        .map(|n| text.len() - n)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn templates_name_their_syntax() {
        assert_eq!(
            ToolSyntax::detect("{{ '<tool_call>\\n' }}{{ tool_call | tojson }}"),
            ToolSyntax::Hermes
        );
        assert_eq!(
            ToolSyntax::detect("{{ '[TOOL_CALLS] [' }}{{ tool_call.function|tojson }}"),
            ToolSyntax::Mistral
        );
        // Mistral Small 3.2's (v11 tokenizer): one `[TOOL_CALLS]name[ARGS]` per call.
        assert_eq!(
            ToolSyntax::detect("{%- for tool in message['tool_calls'] %}{{- '[TOOL_CALLS]' + tool['function']['name'] + '[ARGS]' + arguments }}{%- endfor %}"),
            ToolSyntax::MistralArgs
        );
        assert_eq!(
            ToolSyntax::detect("<|start_header_id|>ipython{% if tools %}<|python_tag|>"),
            ToolSyntax::Llama3
        );
        assert_eq!(
            ToolSyntax::detect("{{'<|im_start|>' + message['role'] }}"),
            ToolSyntax::Json
        );
    }

    #[test]
    fn a_partial_opener_at_the_end_is_held() {
        assert_eq!(opener_from("Sure <tool_", "<tool_call>"), Some(5));
        assert_eq!(opener_from("a <tool_call>{", "<tool_call>"), Some(2));
        assert_eq!(opener_from("plain text", "<tool_call>"), None);
        assert_eq!(ToolSyntax::Json.hold_from("anything"), Some(0));
    }

    #[test]
    fn calls_take_arguments_or_parameters_as_objects_or_text() {
        let c = read_call(r#"{"name": "f", "arguments": "{\"a\": 1}"}"#, "arguments").unwrap();
        assert_eq!(c.arguments, r#"{"a":1}"#);
        let c = read_call(r#"{"name": "f", "parameters": {"a": 1}}"#, "arguments").unwrap();
        assert_eq!(c.arguments, r#"{"a":1}"#);
        // The syntax's own key first.
        let both = r#"{"name": "f", "parameters": {"p": 1}, "arguments": {"a": 2}}"#;
        assert_eq!(
            read_call(both, "arguments").unwrap().arguments,
            r#"{"a":2}"#
        );
        assert_eq!(
            read_call(both, "parameters").unwrap().arguments,
            r#"{"p":1}"#
        );
        assert_eq!(
            read_call(r#"{"name": "f"}"#, "arguments")
                .unwrap()
                .arguments,
            "{}"
        );
        for bad in [
            r#"{"name": "f", "arguments": "[1]"}"#,
            r#"{"name": "f", "arguments": [1]}"#,
            r#"{"arguments": {}}"#,
            r#"{"name": "f", "name": "g", "arguments": {}}"#,
            r#"{"name": "f", "arguments": {}} tail"#,
            "[1]",
        ] {
            assert!(read_call(bad, "arguments").is_none(), "{bad}");
        }
    }

    #[test]
    fn arguments_keep_the_model_s_text_but_its_whitespace() {
        let c = read_call(
            "{\"name\": \"f\", \"arguments\": {\"b\": 1.50, \"a\": \"x \\\" \\u00e9\\n\",\n \"c\": [1, 2]}}",
            "arguments",
        )
        .unwrap();
        // Key order, numbers and escapes as written: only the whitespace goes.
        assert_eq!(
            c.arguments,
            "{\"b\":1.50,\"a\":\"x \\\" \\u00e9\\n\",\"c\":[1,2]}"
        );
        let whole = "{\"s\": \"a b\\\\\", \"t\": [ 1 , {} ]}";
        for cut in 0..=whole.len() {
            assert!(compact(whole).starts_with(&compact(&whole[..cut])), "{cut}");
        }
    }

    #[test]
    fn mistral_ids_are_nine_letters_or_digits() {
        for r in [0, 1, 61, u64::MAX, 0x1234_5678_9abc_def0] {
            let id = ToolSyntax::MistralArgs.new_call_id(r);
            assert_eq!(id.len(), 9, "{id}");
            assert!(id.bytes().all(|b| b.is_ascii_alphanumeric()), "{id}");
        }
        assert_ne!(
            ToolSyntax::Mistral.new_call_id(1),
            ToolSyntax::Mistral.new_call_id(2)
        );
        assert_eq!(ToolSyntax::Hermes.new_call_id(255), "call_00000000000000ff");
    }

    #[test]
    fn llama3_calls_put_their_arguments_under_parameters() {
        let f = FunctionSpec {
            name: "f".into(),
            description: None,
            parameters: json!({"type": "object"}),
        };
        let s = any_call_schema_keyed(std::slice::from_ref(&f), "parameters");
        assert_eq!(s["required"], json!(["name", "parameters"]));
        assert_eq!(s["properties"]["parameters"], json!({"type": "object"}));
        assert!(s["properties"].get("arguments").is_none());
        assert_eq!(any_call_schema(std::slice::from_ref(&f)), f.call_schema());
    }
}
