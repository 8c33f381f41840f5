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
//! - [`mistral`]: `[TOOL_CALLS][{"name", "arguments"}, ...]`;
//! - [`json`]: templates that know no tools: the tools are described in a system message and
//!   the answer is JSON, `{"tool_calls": [...]}` or `{"response": "..."}` (llama.cpp's generic
//!   format), constrained by a JSON schema.
//!
//! Llama 3.x and Mistral answers are parsed, not constrained (their openers are control
//! tokens, which the grammar engine only sees as tokens).

pub mod hermes;
pub mod json;
pub mod llama3;
pub mod mistral;

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
    match functions {
        [one] => one.call_schema(),
        _ => json!({"anyOf": functions.iter().map(FunctionSpec::call_schema).collect::<Vec<_>>()}),
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
    Mistral,
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
    /// A JSON object.
    pub arguments: Value,
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

/// A call object `{"name": ..., "arguments" (or `parameters`): {...}}`, arguments given as an
/// object or as its JSON text.
pub(crate) fn read_call(v: &Value) -> Option<ParsedCall> {
    let name = v.get("name")?.as_str()?.to_string();
    let arguments = match v.get("arguments").or_else(|| v.get("parameters")) {
        None => json!({}),
        Some(Value::String(text)) => serde_json::from_str(text).ok()?,
        Some(a) => a.clone(),
    };
    arguments
        .is_object()
        .then_some(ParsedCall { name, arguments })
}

impl ToolSyntax {
    /// The syntax a chat template's source teaches.
    pub fn detect(template: &str) -> Self {
        if template.contains("<tool_call>") {
            ToolSyntax::Hermes
        } else if template.contains("[TOOL_CALLS]") {
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
            ToolSyntax::Json => json::parse(text),
        }
    }

    /// Where a streamed answer must hold its text back from (a call may begin there), if
    /// anywhere; the text before it is content whatever comes next.
    pub fn hold_from(self, text: &str) -> Option<usize> {
        match self {
            ToolSyntax::Hermes => opener_from(text, hermes::OPENER),
            ToolSyntax::Mistral => opener_from(text, mistral::OPENER),
            ToolSyntax::Llama3 => llama3::hold_from(text),
            ToolSyntax::Json => Some(0),
        }
    }

    /// The grammar an answer follows, if any: `opener_special` says whether the syntax's
    /// opener is a control token of the model's vocabulary.
    pub fn grammar(self, tools: &AutoTools, opener_special: bool) -> Option<Grammar> {
        match self {
            ToolSyntax::Hermes if !opener_special => Some(hermes::grammar(tools)),
            ToolSyntax::Json => Some(json::grammar(tools)),
            _ => None,
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
            ToolSyntax::detect("{{ '[TOOL_CALLS]' }}"),
            ToolSyntax::Mistral
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
        let c = read_call(&json!({"name": "f", "arguments": "{\"a\": 1}"})).unwrap();
        assert_eq!(c.arguments, json!({"a": 1}));
        let c = read_call(&json!({"name": "f", "parameters": {"a": 1}})).unwrap();
        assert_eq!(c.arguments, json!({"a": 1}));
        assert!(read_call(&json!({"name": "f", "arguments": "[1]"})).is_none());
        assert!(read_call(&json!({"arguments": {}})).is_none());
    }
}
