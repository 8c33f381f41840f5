//! The `messages` of an OpenAI chat body, read into the template's [`ChatMessage`]s:
//! text contents (a string or text parts), and the messages of a tool loop — an assistant's
//! `tool_calls` (`{"id", "type": "function", "function": {"name", "arguments"}}`, `arguments`
//! the JSON text OpenAI sends, or an object) and `role: "tool"` results with `tool_call_id`.
//!
//! A call's `arguments` are given to the template parsed, as a JSON object (vLLM and
//! llama.cpp do the same: Hugging Face templates write them with `| tojson`). A tool result
//! without a `name` gets the name of the call its `tool_call_id` answers, when an earlier
//! message made that call (some templates show it). Malformed messages are 400s naming the
//! message; an id no earlier call had is accepted (the template decides).

use serde::Deserialize;
use serde_json::{json, Value};

use super::generation::bad;
use crate::error::ServiceError;
use crate::generate::chat::ChatMessage;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct ChatMessageIn {
    role: String,
    #[serde(default)]
    content: Option<ChatContent>,
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    tool_calls: Option<Vec<ToolCallIn>>,
    #[serde(default)]
    tool_call_id: Option<String>,
    /// OpenAI's, on assistant messages it refused; it carries no text for the model.
    #[serde(default)]
    #[allow(dead_code)]
    refusal: Option<String>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum ChatContent {
    Text(String),
    Parts(Vec<ContentPart>),
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ContentPart {
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    text: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ToolCallIn {
    id: String,
    #[serde(rename = "type", default)]
    kind: Option<String>,
    function: FunctionCallIn,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FunctionCallIn {
    name: String,
    arguments: Value,
}

/// The messages as the template reads them.
///
/// # Errors
///
/// No messages; a content part that is not text; a message without content that is not an
/// assistant's call; `tool_calls` on a message that is not the assistant's, or a call whose
/// `arguments` are not a JSON object (or its text); a `tool` message without
/// `tool_call_id`, or `tool_call_id` on another role.
pub(super) fn read_messages(
    messages: Vec<ChatMessageIn>,
) -> Result<Vec<ChatMessage>, ServiceError> {
    if messages.is_empty() {
        return Err(bad("messages must hold at least one message"));
    }
    let mut out: Vec<ChatMessage> = Vec::with_capacity(messages.len());
    for (i, m) in messages.into_iter().enumerate() {
        let content = match m.content {
            None => None,
            Some(ChatContent::Text(t)) => Some(t),
            Some(ChatContent::Parts(parts)) => {
                let mut text = String::new();
                for p in parts {
                    if p.kind != "text" {
                        return Err(bad(format!(
                            "messages[{i}].content has a part of type {:?}; only text parts are supported",
                            p.kind
                        )));
                    }
                    text.push_str(p.text.as_deref().unwrap_or(""));
                }
                Some(text)
            }
        };
        let tool_calls = match m.tool_calls {
            Some(calls) if m.role != "assistant" => {
                let _ = calls;
                return Err(bad(format!(
                    "messages[{i}] has tool_calls but its role is {:?}; only assistant messages carry calls",
                    m.role
                )));
            }
            Some(calls) if calls.is_empty() => None,
            Some(calls) => Some(
                calls
                    .into_iter()
                    .enumerate()
                    .map(|(j, c)| call(i, j, c))
                    .collect::<Result<Vec<_>, _>>()?,
            ),
            None => None,
        };
        let content = match content {
            Some(c) => c,
            None if tool_calls.is_some() => String::new(),
            None => {
                return Err(bad(format!(
                    "messages[{i}].content is required (only an assistant message with tool_calls may leave it out)"
                )))
            }
        };
        let mut name = m.name;
        match (m.role.as_str(), &m.tool_call_id) {
            ("tool", None) => {
                return Err(bad(format!(
                    "messages[{i}] has role \"tool\" but no tool_call_id (the id of the call it answers)"
                )))
            }
            ("tool", Some(id)) if name.is_none() => {
                name = out
                    .iter()
                    .flat_map(|p| p.tool_calls.iter().flatten())
                    .find(|c| c["id"] == id.as_str())
                    .and_then(|c| c["function"]["name"].as_str())
                    .map(str::to_string);
            }
            ("tool", Some(_)) => {}
            (role, Some(_)) => {
                return Err(bad(format!(
                    "messages[{i}] has tool_call_id but its role is {role:?}; only tool messages answer calls"
                )))
            }
            _ => {}
        }
        out.push(ChatMessage {
            role: m.role,
            content,
            tool_calls,
            tool_call_id: m.tool_call_id,
            name,
        });
    }
    Ok(out)
}

/// One earlier call, its arguments parsed.
fn call(i: usize, j: usize, c: ToolCallIn) -> Result<Value, ServiceError> {
    let at = format!("messages[{i}].tool_calls[{j}]");
    if let Some(kind) = c.kind.filter(|k| k != "function") {
        return Err(bad(format!(
            "{at}.type must be \"function\" (got {kind:?})"
        )));
    }
    if c.function.name.is_empty() {
        return Err(bad(format!("{at}.function.name must not be empty")));
    }
    let arguments = match c.function.arguments {
        Value::String(text) => serde_json::from_str(&text).map_err(|e| {
            bad(format!(
                "{at}.function.arguments is not JSON ({e}): give the arguments the model produced, a JSON object as text"
            ))
        })?,
        v => v,
    };
    if !arguments.is_object() {
        return Err(bad(format!(
            "{at}.function.arguments must be a JSON object"
        )));
    }
    Ok(json!({
        "id": c.id,
        "type": "function",
        "function": {"name": c.function.name, "arguments": arguments},
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(v: Value) -> Result<Vec<ChatMessage>, ServiceError> {
        read_messages(serde_json::from_value(v).unwrap())
    }

    fn loop_messages() -> Value {
        json!([
            {"role": "user", "content": "Weather in Paris?"},
            {"role": "assistant", "content": null, "tool_calls": [
                {"id": "call_1", "type": "function", "function": {"name": "weather", "arguments": "{\"city\": \"Paris\"}"}}
            ]},
            {"role": "tool", "tool_call_id": "call_1", "content": "18 C"}
        ])
    }

    #[test]
    fn a_tool_loop_reads_with_parsed_arguments_and_named_results() {
        let m = read(loop_messages()).unwrap();
        assert_eq!(m[1].content, "");
        let calls = m[1].tool_calls.as_ref().unwrap();
        assert_eq!(calls[0]["function"]["arguments"], json!({"city": "Paris"}));
        assert_eq!(m[2].tool_call_id.as_deref(), Some("call_1"));
        assert_eq!(m[2].name.as_deref(), Some("weather"));
        // An id no call had is the template's business.
        let mut v = loop_messages();
        v[2]["tool_call_id"] = json!("call_unknown");
        assert_eq!(read(v).unwrap()[2].name, None);
    }

    #[test]
    fn malformed_tool_messages_are_refused_by_name() {
        let cases = [
            ("/2/content", Value::Null, "messages[2].content"),
            ("/2/tool_call_id", Value::Null, "tool_call_id"),
            (
                "/1/tool_calls/0/function/arguments",
                json!("{not json"),
                "not JSON",
            ),
            (
                "/1/tool_calls/0/function/arguments",
                json!("[1]"),
                "JSON object",
            ),
            ("/1/content", Value::Null, ""),
            ("/0/tool_call_id", json!("x"), "only tool messages"),
        ];
        for (path, value, says) in cases {
            let mut v = loop_messages();
            let (parent, key) = path.rsplit_once('/').unwrap();
            v.pointer_mut(parent).unwrap()[key] = value.clone();
            if path == "/1/content" {
                // Neither content nor calls.
                v[1].as_object_mut().unwrap().remove("tool_calls");
                let e = read(v).err().unwrap().to_string();
                assert!(e.contains("messages[1].content is required"), "{e}");
                continue;
            }
            let e = read(v).err().unwrap().to_string();
            assert!(e.contains(says), "{path}: {e}");
        }
        let mut v = loop_messages();
        v[0]["tool_calls"] = v[1]["tool_calls"].clone();
        let e = read(v).err().unwrap().to_string();
        assert!(e.contains("only assistant messages"), "{e}");
    }
}
