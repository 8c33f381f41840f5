//! OpenAI's function calling on `/v1/chat/completions`, the part that is constrained
//! decoding: `tools` with `tool_choice: "required"` or a named function
//! (`{"type": "function", "function": {"name": ...}}`) constrain the answer to one call,
//! `{"name": ..., "arguments": {...}}` whose arguments validate against that function's
//! `parameters` (a JSON schema grammar, [`crate::generate::grammar`]), answered as
//! `message.tool_calls` with `finish_reason: "tool_calls"`, streamed id and name first and
//! then the arguments in pieces ([`CallStream`], as every call is streamed). `tool_choice: "none"` generates
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
    any_call_schema, AutoTools, CallText, FunctionSpec, ParsedCall,
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

/// OpenAI's `tool_calls` for the calls an answer made, each with the id the model gave it
/// or a fresh one of the form the syntax's templates take.
pub fn openai_calls(calls: &[ParsedCall], text: CallText) -> Value {
    Value::Array(
        calls
            .iter()
            .map(|c| {
                let id =
                    c.id.clone()
                        .unwrap_or_else(|| text.new_call_id(random_seed()));
                json!({
                    "id": id,
                    "type": "function",
                    "function": {"name": c.name, "arguments": c.arguments},
                })
            })
            .collect(),
    )
}

/// An answer's calls streamed as OpenAI streams them, forced or not: call `i`'s first
/// `tool_calls` delta is `{"index": i, "id", "type": "function", "function": {"name",
/// "arguments"}}` (the arguments written so far, often `""`), sent once its name is known;
/// the next ones are `{"index": i, "function": {"arguments": PIECE}}` as the model writes
/// them ([`CallText::partial`]). The pieces of a call add up to the `arguments` the whole
/// answer gives ([`openai_calls`]): the end ([`CallStream::finish`]) sends what the text
/// showed only once complete.
pub struct CallStream {
    text: CallText,
    parallel: bool,
    /// Each call begun: its id and the arguments sent.
    begun: Vec<(String, String)>,
}

impl CallStream {
    /// Calls written as `text`; `parallel`: more than the first are sent.
    pub fn new(text: CallText, parallel: bool) -> Self {
        Self {
            text,
            parallel,
            begun: Vec::new(),
        }
    }

    /// The deltas (each a `tool_calls` array) that the answer so far, `answer`, adds to
    /// those already sent.
    pub fn update(&mut self, answer: &str) -> Vec<Value> {
        let calls = self.text.partial(answer);
        let keep = if self.parallel { calls.len() } else { 1 };
        let mut out = Vec::new();
        for (i, c) in calls.iter().take(keep).enumerate() {
            let Some(name) = &c.name else { break };
            self.send(i, name, c.id.as_deref(), &c.arguments, &mut out);
        }
        out
    }

    /// The end of the answer, whose calls are `calls` (the whole answer's reading; only the
    /// first is kept unless parallel): the deltas still to send (a call, or the part of its
    /// arguments, that was not sent yet).
    pub fn finish(&mut self, calls: &[ParsedCall]) -> Vec<Value> {
        let keep = if self.parallel { calls.len() } else { 1 };
        let mut out = Vec::new();
        for (i, c) in calls.iter().take(keep).enumerate() {
            self.send(i, &c.name, c.id.as_deref(), &c.arguments, &mut out);
        }
        out
    }

    /// Call `i`'s delta, if it adds anything: the first (id, type, name and the arguments
    /// so far) or more of the arguments.
    fn send(
        &mut self,
        i: usize,
        name: &str,
        id: Option<&str>,
        arguments: &str,
        out: &mut Vec<Value>,
    ) {
        let begun = self.begun.len();
        match self.begun.get_mut(i) {
            None if i == begun => {
                let id = id.map_or_else(|| self.text.new_call_id(random_seed()), str::to_string);
                out.push(json!([{
                    "index": i,
                    "id": id,
                    "type": "function",
                    "function": {"name": name, "arguments": arguments},
                }]));
                self.begun.push((id, arguments.to_string()));
            }
            None => {}
            Some((_, sent)) => {
                if let Some(more) = arguments.strip_prefix(sent.as_str()) {
                    if !more.is_empty() {
                        out.push(json!([{"index": i, "function": {"arguments": more}}]));
                        sent.push_str(more);
                    }
                }
            }
        }
    }

    /// Whether any call was begun.
    pub fn begun(&self) -> bool {
        !self.begun.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::generate::tool_syntax::ToolSyntax;

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

    /// The calls a stream of `pieces` sends, accumulated by index as a client does, with
    /// the number of deltas of each; every delta is checked for OpenAI's shape.
    fn streamed(text: CallText, parallel: bool, pieces: &[&str]) -> Vec<(Value, usize)> {
        let mut s = CallStream::new(text, parallel);
        let mut answer = String::new();
        let mut deltas = Vec::new();
        for p in pieces {
            answer.push_str(p);
            deltas.extend(s.update(&answer));
        }
        deltas.extend(s.finish(&text.parse(&answer).calls));
        let mut calls: Vec<(Value, usize)> = Vec::new();
        for d in deltas {
            let [one] = d.as_array().unwrap().as_slice() else {
                panic!("one call a delta: {d}")
            };
            let i = one["index"].as_u64().unwrap() as usize;
            let piece = one["function"]["arguments"].as_str().unwrap();
            if i == calls.len() {
                assert_eq!(one["type"], "function", "{one}");
                assert!(
                    one["id"].is_string() && one["function"]["name"].is_string(),
                    "{one}"
                );
                calls.push((one.clone(), 1));
            } else {
                assert_eq!(
                    one.as_object().unwrap().len(),
                    2,
                    "only index and function: {one}"
                );
                assert_eq!(one["function"].as_object().unwrap().len(), 1, "{one}");
                let (call, n) = &mut calls[i];
                let args = format!("{}{piece}", call["function"]["arguments"].as_str().unwrap());
                call["function"]["arguments"] = json!(args);
                *n += 1;
            }
        }
        calls
    }

    #[test]
    fn streamed_calls_add_up_to_the_whole_answer_s_at_every_split() {
        let cases: [(CallText, &str); 6] = [
            (CallText::Forced, r#"{"name":"get_weather","arguments":{"city":"Paris","unit":"c"}}"#),
            (
                CallText::Auto(ToolSyntax::Hermes),
                "Sure.\n<tool_call>\n{\"name\": \"weather\", \"arguments\": {\"city\": \"Paris\"}}\n</tool_call>\n<tool_call>\n{\"arguments\": {}, \"name\": \"time\"}\n</tool_call>",
            ),
            (
                CallText::Auto(ToolSyntax::Llama3),
                "{\"name\": \"weather\", \"parameters\": {\"city\": \"Oslo\"}}",
            ),
            (
                CallText::Auto(ToolSyntax::Mistral),
                "[TOOL_CALLS][{\"name\": \"a\", \"arguments\": {\"x\": 1}}]",
            ),
            (
                CallText::Auto(ToolSyntax::MistralArgs),
                "[TOOL_CALLS]weather[ARGS]{\"city\": \"Paris\"}[TOOL_CALLS]add[CALL_ID]a1B2c3D4e[ARGS]{\"a\": 1}",
            ),
            (
                CallText::Auto(ToolSyntax::Json),
                "{\"tool_calls\": [{\"name\": \"add\", \"arguments\": {\"a\": 2, \"b\": 3}}]}",
            ),
        ];
        for (text, answer) in cases {
            let parsed = text.parse(answer);
            let whole = openai_calls(&parsed.calls, text);
            let whole = whole.as_array().unwrap();
            let check = |got: &[(Value, usize)], how: &str| {
                assert_eq!(got.len(), whole.len(), "{how}: {answer}");
                for (i, ((call, _), want)) in got.iter().zip(whole).enumerate() {
                    assert_eq!(call["index"], i);
                    assert_eq!(call["function"], want["function"], "{how}: {answer}");
                    if let Some(id) = parsed.calls[i].id.as_deref() {
                        assert_eq!(call["id"], id);
                    }
                }
            };
            let chars: Vec<String> = answer.chars().map(String::from).collect();
            let chars: Vec<&str> = chars.iter().map(String::as_str).collect();
            let got = streamed(text, true, &chars);
            check(&got, "char by char");
            assert!(got[0].1 > 1, "arguments in pieces: {got:?}");
            for (at, _) in answer.char_indices().skip(1) {
                check(
                    &streamed(text, true, &[&answer[..at], &answer[at..]]),
                    "split",
                );
            }
            check(&streamed(text, true, &[answer]), "whole");
        }
        // Not parallel: only the first call.
        let two = "<tool_call>{\"name\": \"a\", \"arguments\": {}}</tool_call><tool_call>{\"name\": \"b\", \"arguments\": {}}</tool_call>";
        let got = streamed(CallText::Auto(ToolSyntax::Hermes), false, &[two]);
        assert_eq!(got.len(), 1);
        // Cut before the name: nothing is sent.
        let mut cut = CallStream::new(CallText::Forced, false);
        assert!(cut.update("{\"na").is_empty());
        assert!(!cut.begun());
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
            arguments: r#"{"city":"Paris"}"#.into(),
            id: None,
        };
        let v = openai_calls(
            std::slice::from_ref(&call),
            CallText::Auto(ToolSyntax::Hermes),
        );
        assert_eq!(v[0]["function"]["arguments"], r#"{"city":"Paris"}"#);
        assert!(v[0]["id"].as_str().unwrap().starts_with("call_"));
        let v = openai_calls(std::slice::from_ref(&call), CallText::Forced);
        assert!(v[0]["id"].as_str().unwrap().starts_with("call_"));
        // Mistral's templates take 9 letters or digits; the model's own id is kept.
        let v = openai_calls(
            std::slice::from_ref(&call),
            CallText::Auto(ToolSyntax::MistralArgs),
        );
        let id = v[0]["id"].as_str().unwrap();
        assert!(
            id.len() == 9 && id.bytes().all(|b| b.is_ascii_alphanumeric()),
            "{id}"
        );
        let own = ParsedCall {
            id: Some("a1B2c3D4e".into()),
            ..call
        };
        let v = openai_calls(&[own], CallText::Auto(ToolSyntax::MistralArgs));
        assert_eq!(v[0]["id"], "a1B2c3D4e");
    }
}
