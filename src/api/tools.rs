//! OpenAI's function calling on `/v1/chat/completions`, the part that is constrained
//! decoding: `tools` with `tool_choice: "required"` or a named function
//! (`{"type": "function", "function": {"name": ...}}`) constrain the answer to one call,
//! `{"name": ..., "arguments": {...}}` whose arguments validate against that function's
//! `parameters` (a JSON schema grammar, [`crate::generate::grammar`]), answered as
//! `message.tool_calls` with `finish_reason: "tool_calls"`, streamed name first and then the
//! arguments in pieces ([`CallStream`]). `tool_choice: "none"` generates
//! text (the template still sees the tools). The tools are given to the chat template as its `tools` variable (the Hugging Face
//! convention), so a template that renders them shows the model what it may call.
//!
//! `tool_choice: "auto"` (the default when tools are given) lets the model answer text or
//! calls in its own syntax ([`crate::generate::tool_syntax`]); the calls it made are
//! [`openai_calls`]. Conversations that carry calls and results are read in
//! [`super::chat_messages`].

use serde::Deserialize;
use serde_json::{json, Value};

use super::generation::{bad, random_seed};
use crate::error::ServiceError;
use crate::generate::grammar::Grammar;
use crate::generate::tool_syntax::{
    any_call_schema, AutoTools, FunctionSpec, ParsedCall, ToolSyntax,
};

/// One entry of `tools`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct Tool {
    #[serde(rename = "type")]
    kind: String,
    function: Function,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Function {
    name: String,
    #[serde(default)]
    description: Option<String>,
    #[serde(default)]
    parameters: Option<Value>,
    #[serde(default)]
    #[allow(dead_code)]
    strict: Option<bool>,
}

/// `tool_choice`.
#[derive(Deserialize)]
#[serde(untagged)]
pub(super) enum ToolChoice {
    Mode(String),
    Named {
        #[serde(rename = "type")]
        kind: String,
        function: NamedFunction,
    },
}

#[derive(Deserialize)]
pub(super) struct NamedFunction {
    name: String,
}

/// What a chat request's tools ask for: a forced call's grammar, or the functions the model
/// may call (`"auto"`), and the tools as the template's `tools` variable (given under every
/// `tool_choice`, `"none"` too, as OpenAI and vLLM show a model its tools).
pub(super) struct ToolPlan {
    pub forced: Option<Grammar>,
    pub auto: Option<AutoTools>,
    pub template_tools: Option<Value>,
}

/// What `tools`, `tool_choice` and `parallel_tool_calls` ask for.
///
/// # Errors
///
/// Malformed tools, an unknown named function, an unknown mode, or `tool_choice` other than
/// `"none"` without tools.
pub(super) fn plan(
    tools: Option<Vec<Tool>>,
    choice: Option<ToolChoice>,
    parallel: Option<bool>,
) -> Result<ToolPlan, ServiceError> {
    let tools = tools.unwrap_or_default();
    let mode = match &choice {
        None if tools.is_empty() => "none",
        None => "auto",
        Some(ToolChoice::Mode(m)) => m.as_str(),
        Some(ToolChoice::Named { kind, .. }) if kind == "function" => "named",
        Some(ToolChoice::Named { kind, .. }) => {
            return Err(bad(format!(
                "tool_choice.type must be \"function\" (got {kind:?})"
            )))
        }
    };
    if !matches!(mode, "none" | "auto" | "required" | "named") {
        return Err(bad(format!(
            "tool_choice must be \"none\", \"auto\", \"required\" or a named function (got {mode:?})"
        )));
    }
    if tools.is_empty() {
        if mode == "none" {
            return Ok(ToolPlan {
                forced: None,
                auto: None,
                template_tools: None,
            });
        }
        return Err(bad(format!("tool_choice {mode:?} needs tools")));
    }
    for (i, t) in tools.iter().enumerate() {
        if t.kind != "function" {
            return Err(bad(format!(
                "tools[{i}].type must be \"function\" (got {:?})",
                t.kind
            )));
        }
        // OpenAI's rule; it also means a name is its own JSON string (no escapes), which
        // the streamed call relies on.
        let name = &t.function.name;
        if name.is_empty()
            || name.len() > 64
            || !name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
        {
            return Err(bad(format!(
                "tools[{i}].function.name must be 1 to 64 letters, digits, _ or - (got {name:?})"
            )));
        }
    }
    let spec = |t: &Tool| FunctionSpec {
        name: t.function.name.clone(),
        description: t.function.description.clone(),
        parameters: t
            .function
            .parameters
            .clone()
            .unwrap_or_else(|| json!({"type": "object"})),
    };
    let chosen: Vec<FunctionSpec> = match &choice {
        Some(ToolChoice::Named { function, .. }) => {
            let found: Vec<FunctionSpec> = tools
                .iter()
                .filter(|t| t.function.name == function.name)
                .map(spec)
                .collect();
            if found.is_empty() {
                return Err(bad(format!(
                    "tool_choice names {:?}, which is not one of the tools",
                    function.name
                )));
            }
            found
        }
        _ => tools.iter().map(spec).collect(),
    };
    let template_tools = Value::Array(
        tools
            .iter()
            .map(|t| {
                json!({"type": "function", "function": {
                    "name": t.function.name,
                    "description": t.function.description,
                    "parameters": t.function.parameters,
                }})
            })
            .collect(),
    );
    let (forced, auto) = match mode {
        "none" => (None, None),
        "auto" => (
            None,
            Some(AutoTools {
                functions: chosen,
                parallel: parallel.unwrap_or(true),
            }),
        ),
        _ => (Some(Grammar::JsonSchema(any_call_schema(&chosen))), None),
    };
    Ok(ToolPlan {
        forced,
        auto,
        template_tools: Some(template_tools),
    })
}

/// OpenAI's `tool_calls` for the calls an answer in `syntax` made, each with the id the
/// model gave it or a fresh one of the form the syntax's templates take.
pub fn openai_calls(calls: &[ParsedCall], syntax: ToolSyntax) -> Value {
    Value::Array(
        calls
            .iter()
            .map(|c| {
                let id =
                    c.id.clone()
                        .unwrap_or_else(|| syntax.new_call_id(random_seed()));
                json!({
                    "id": id,
                    "type": "function",
                    "function": {"name": c.name, "arguments": c.arguments.to_string()},
                })
            })
            .collect(),
    )
}

/// The `tool_calls` of an answer whose text is a finished call (`{"name", "arguments"}`),
/// with a fresh id; `None` when the text is not one (cut by a limit or a stop sequence).
pub fn tool_calls(text: &str) -> Option<Value> {
    let v: Value = serde_json::from_str(text).ok()?;
    let name = v.get("name")?.as_str()?;
    let arguments = v.get("arguments")?;
    Some(json!([{
        "id": format!("call_{:016x}", random_seed()),
        "type": "function",
        "function": {"name": name, "arguments": arguments.to_string()},
    }]))
}

/// A forced call streamed as OpenAI streams one: a first `tool_calls` delta with the id,
/// type and name once the text has shown the name, then the `arguments` text in pieces as it
/// comes. The grammar writes the call compact and in schema order, `{"name":"NAME",
/// "arguments":ARGS}` (no spaces), so ARGS starts right after `"arguments":` and ends before
/// the last `}`, which is held back until the next piece or the end.
#[derive(Default)]
pub struct CallStream {
    text: String,
    /// Where the arguments start, once the name has been sent.
    args_start: Option<usize>,
    /// Bytes of the arguments sent.
    sent: usize,
}

impl CallStream {
    /// Takes a piece of the answer's text; returns the deltas (each a `tool_calls` array) to
    /// send.
    pub fn push(&mut self, piece: &str) -> Vec<Value> {
        self.text.push_str(piece);
        let mut out = Vec::new();
        if self.args_start.is_none() {
            const HEAD: &str = "{\"name\":\"";
            const ARGS: &str = "\",\"arguments\":";
            if let Some(rest) = self.text.strip_prefix(HEAD) {
                if let Some(end) = rest.find(ARGS) {
                    let name = &rest[..end];
                    out.push(json!([{
                        "index": 0,
                        "id": format!("call_{:016x}", random_seed()),
                        "type": "function",
                        "function": {"name": name, "arguments": ""},
                    }]));
                    self.args_start = Some(HEAD.len() + end + ARGS.len());
                }
            }
        }
        if let Some(start) = self.args_start {
            // All but the last byte (it may be the call's closing brace): ASCII, so a char
            // boundary whenever the text ends in one.
            let upto = self.text.len().saturating_sub(1).max(start);
            if self.text.is_char_boundary(upto) && upto > start + self.sent {
                out.push(Self::arguments(&self.text[start + self.sent..upto]));
                self.sent = upto - start;
            }
        }
        out
    }

    /// The end of the answer; `complete`: the call was finished (not cut by a limit). Returns
    /// the last deltas, and whether a call was streamed at all.
    pub fn finish(&mut self, complete: bool) -> (Vec<Value>, bool) {
        let Some(start) = self.args_start else {
            return (Vec::new(), false);
        };
        let end = if complete && self.text.ends_with('}') {
            self.text.len() - 1
        } else {
            self.text.len()
        };
        let mut out = Vec::new();
        if end > start + self.sent && self.text.is_char_boundary(end) {
            out.push(Self::arguments(&self.text[start + self.sent..end]));
            self.sent = end - start;
        }
        (out, true)
    }

    /// The text so far (a call cut before its name was known is answered as text).
    pub fn text(&self) -> &str {
        &self.text
    }

    fn arguments(piece: &str) -> Value {
        json!([{"index": 0, "function": {"arguments": piece}}])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn call(tools: Value, choice: Value) -> Result<Option<ToolPlan>, ServiceError> {
        let p = plan(
            serde_json::from_value(tools).unwrap(),
            serde_json::from_value(choice).unwrap(),
            None,
        )?;
        Ok(p.forced.is_some().then_some(p))
    }

    fn weather() -> Value {
        json!([
            {"type": "function", "function": {"name": "weather", "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}},
            {"type": "function", "function": {"name": "time", "parameters": {"type": "object", "properties": {}}}}
        ])
    }

    #[test]
    fn required_and_named_choices_are_grammars_of_one_call() {
        let Some(c) = call(weather(), json!("required")).unwrap() else {
            panic!("a call")
        };
        let Some(Grammar::JsonSchema(s)) = c.forced else {
            panic!("a schema")
        };
        assert_eq!(s["anyOf"].as_array().unwrap().len(), 2);
        assert_eq!(c.template_tools.unwrap().as_array().unwrap().len(), 2);
        let Some(c) = call(
            weather(),
            json!({"type": "function", "function": {"name": "time"}}),
        )
        .unwrap() else {
            panic!("a call")
        };
        let Some(Grammar::JsonSchema(s)) = c.forced else {
            panic!("a schema")
        };
        assert_eq!(s["properties"]["name"]["const"], "time");
        assert!(call(weather(), json!("none")).unwrap().is_none());
    }

    #[test]
    fn auto_is_the_default_with_tools_and_unknown_names_are_refused() {
        let t = |choice: Value, parallel| {
            plan(
                serde_json::from_value(weather()).unwrap(),
                serde_json::from_value(choice).unwrap(),
                parallel,
            )
            .unwrap()
        };
        let p = t(Value::Null, None);
        let auto = p.auto.unwrap();
        assert_eq!((auto.functions.len(), auto.parallel), (2, true));
        assert!(p.forced.is_none() && p.template_tools.is_some());
        assert!(!t(json!("auto"), Some(false)).auto.unwrap().parallel);
        // "none": no call, no grammar, but the template still sees the tools.
        let p = t(json!("none"), None);
        assert!(p.auto.is_none() && p.forced.is_none() && p.template_tools.is_some());
        let e = call(
            weather(),
            json!({"type": "function", "function": {"name": "nope"}}),
        )
        .err()
        .unwrap();
        assert!(e.to_string().contains("nope"), "{e}");
        assert!(call(Value::Null, json!("required")).is_err());
        assert!(call(weather(), json!("sometimes")).is_err());
    }

    #[test]
    fn a_streamed_call_sends_the_name_then_the_arguments_in_pieces() {
        let text = r#"{"name":"get_weather","arguments":{"city":"Paris","unit":"c"}}"#;
        for split in 1..8 {
            let mut s = CallStream::default();
            let mut deltas = Vec::new();
            let chars: Vec<char> = text.chars().collect();
            for piece in chars.chunks(split) {
                deltas.extend(s.push(&piece.iter().collect::<String>()));
            }
            let (last, streamed) = s.finish(true);
            assert!(streamed);
            deltas.extend(last);
            assert_eq!(deltas[0][0]["function"]["name"], "get_weather");
            assert!(deltas[0][0]["id"].as_str().unwrap().starts_with("call_"));
            let args: String = deltas
                .iter()
                .map(|d| d[0]["function"]["arguments"].as_str().unwrap())
                .collect();
            assert_eq!(args, r#"{"city":"Paris","unit":"c"}"#, "pieces of {split}");
        }
        let mut cut = CallStream::default();
        assert!(cut.push("{\"na").is_empty());
        assert_eq!(cut.finish(false), (Vec::new(), false));
        assert_eq!(cut.text(), "{\"na");
    }

    #[test]
    fn tool_names_follow_openai_s_rule() {
        let t = json!([{"type": "function", "function": {"name": "bad name"}}]);
        let e = call(t, json!("required")).err().unwrap();
        assert!(e.to_string().contains("bad name"), "{e}");
    }

    #[test]
    fn parsed_calls_become_openai_tool_calls() {
        let call = ParsedCall {
            name: "weather".into(),
            arguments: json!({"city": "Paris"}),
            id: None,
        };
        let v = openai_calls(std::slice::from_ref(&call), ToolSyntax::Hermes);
        assert_eq!(v[0]["function"]["arguments"], r#"{"city":"Paris"}"#);
        assert!(v[0]["id"].as_str().unwrap().starts_with("call_"));
        // Mistral's templates take 9 letters or digits; the model's own id is kept.
        let v = openai_calls(std::slice::from_ref(&call), ToolSyntax::MistralArgs);
        let id = v[0]["id"].as_str().unwrap();
        assert!(
            id.len() == 9 && id.bytes().all(|b| b.is_ascii_alphanumeric()),
            "{id}"
        );
        let own = ParsedCall {
            id: Some("a1B2c3D4e".into()),
            ..call
        };
        let v = openai_calls(&[own], ToolSyntax::MistralArgs);
        assert_eq!(v[0]["id"], "a1B2c3D4e");
    }

    #[test]
    fn a_finished_call_becomes_tool_calls() {
        let v = tool_calls(r#"{"name":"weather","arguments":{"city":"Paris"}}"#).unwrap();
        assert_eq!(v[0]["function"]["name"], "weather");
        assert_eq!(v[0]["function"]["arguments"], r#"{"city":"Paris"}"#);
        assert!(v[0]["id"].as_str().unwrap().starts_with("call_"));
        assert!(tool_calls(r#"{"name":"weath"#).is_none());
    }
}
