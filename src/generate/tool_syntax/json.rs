//! Templates that know no tools (SmolLM2's ChatML, Llama 2's, …): llama.cpp's generic
//! format. The tools are described in the system message, and the answer is JSON, either
//! `{"tool_calls": [{"name": ..., "arguments": {...}}]}` or `{"response": "..."}`, which a
//! JSON schema constrains: a call always names a tool and its arguments validate; an answer
//! in words is the `response` string. Earlier calls in the conversation are written as that
//! JSON in the assistant's content, so the model sees its own format.

use std::collections::HashMap;

use serde_json::value::RawValue;
use serde_json::{json, Value};

use super::{any_call_schema, read_call, AutoTools, Parsed};
use crate::generate::chat_message::ChatMessage;
use crate::generate::grammar::Grammar;

/// The schema of an answer: calls (at most one unless parallel) or a response.
pub fn grammar(tools: &AutoTools) -> Grammar {
    let mut calls =
        json!({"type": "array", "items": any_call_schema(&tools.functions), "minItems": 1});
    if !tools.parallel {
        calls["maxItems"] = json!(1);
    }
    Grammar::JsonSchema(json!({"anyOf": [
        {"type": "object", "properties": {"tool_calls": calls}, "required": ["tool_calls"], "additionalProperties": false},
        {"type": "object", "properties": {"response": {"type": "string"}}, "required": ["response"], "additionalProperties": false},
    ]}))
}

/// The calls, or the response, in `text`: a response cut short (by `max_tokens` or a stop
/// sequence) is what it said so far ([`partial_response`]), as a streamed answer sends it;
/// anything else is text.
pub fn parse(text: &str) -> Parsed {
    let Ok(v) = serde_json::from_str::<HashMap<String, &RawValue>>(text.trim()) else {
        return match partial_response(text) {
            Some(response) => Parsed {
                content: super::non_empty(&response),
                content_end: 0,
                calls: Vec::new(),
            },
            None => Parsed::text(text),
        };
    };
    if let Some(Ok(response)) = v
        .get("response")
        .map(|r| serde_json::from_str::<String>(r.get()))
    {
        return Parsed {
            content: super::non_empty(&response),
            content_end: 0,
            calls: Vec::new(),
        };
    }
    let items = v
        .get("tool_calls")
        .and_then(|l| serde_json::from_str::<Vec<&RawValue>>(l.get()).ok())
        .filter(|items| !items.is_empty());
    let calls = match (items, v.get("tool_call")) {
        (Some(items), _) => items
            .iter()
            .map(|c| read_call(c.get(), "arguments"))
            .collect::<Option<Vec<_>>>(),
        (None, Some(one)) => read_call(one.get(), "arguments").map(|c| vec![c]),
        _ => None,
    };
    match calls {
        Some(calls) => Parsed {
            content: None,
            content_end: 0,
            calls,
        },
        None => Parsed::text(text),
    }
}

/// The `response` string of an answer that has begun one (`{"response": "Hello wor`): the
/// characters written so far, decoded, up to the closing quote; an escape still being written
/// (`\u00`, or the first half of a surrogate pair) waits for the rest. `None` when `text` does
/// not begin a response. A streamed answer sends this as it grows: decoding more of the same
/// text only appends, so what was sent stays a prefix of the final response.
pub fn partial_response(text: &str) -> Option<String> {
    let rest = text.trim_start().strip_prefix('{')?.trim_start();
    let rest = rest.strip_prefix("\"response\"")?.trim_start();
    let rest = rest.strip_prefix(':')?.trim_start().strip_prefix('"')?;
    let mut out = String::new();
    let mut chars = rest.chars();
    while let Some(c) = chars.next() {
        match c {
            '"' => break,
            '\\' => match chars.next() {
                None => break,
                Some('u') => {
                    let Some(unit) = hex4(&mut chars) else { break };
                    let decoded = if (0xD800..0xDC00).contains(&unit) {
                        // A high surrogate: its low half follows as another \uXXXX.
                        let low = (chars.next(), chars.next(), hex4(&mut chars));
                        let (Some('\\'), Some('u'), Some(low)) = low else {
                            break;
                        };
                        char::decode_utf16([unit, low]).next().and_then(Result::ok)
                    } else {
                        char::from_u32(u32::from(unit))
                    };
                    out.push(decoded.unwrap_or(char::REPLACEMENT_CHARACTER));
                }
                Some(e) => out.push(match e {
                    'n' => '\n',
                    't' => '\t',
                    'r' => '\r',
                    'b' => '\u{8}',
                    'f' => '\u{c}',
                    other => other,
                }),
            },
            c => out.push(c),
        }
    }
    Some(out)
}

/// Four hex digits of a `\u` escape as a UTF-16 unit; `None` when fewer are written yet.
fn hex4(chars: &mut std::str::Chars<'_>) -> Option<u16> {
    let digits: String = chars.take(4).collect();
    if digits.len() < 4 {
        return None;
    }
    u16::from_str_radix(&digits, 16).ok()
}

/// The system message that teaches the format.
fn instructions(tools: &AutoTools) -> String {
    let list: Vec<Value> = tools
        .functions
        .iter()
        .map(|f| json!({"name": f.name, "description": f.description, "parameters": f.parameters}))
        .collect();
    format!(
        "You can call these tools:\n{}\nAnswer in JSON: {{\"tool_calls\": [{{\"name\": <tool name>, \"arguments\": <its arguments>}}]}} to call tools, or {{\"response\": <your answer>}} to answer the user.",
        Value::Array(list)
    )
}

/// `messages` for a template that knows no tools: the instructions (when tools are offered)
/// joined to the system message (or a new one first), and each earlier call written as the
/// answer that made it.
pub fn prepare(mut messages: Vec<ChatMessage>, tools: Option<&AutoTools>) -> Vec<ChatMessage> {
    for m in &mut messages {
        if let Some(calls) = m.tool_calls.take() {
            let calls: Vec<Value> = calls
                .iter()
                .map(|c| json!({"name": c["function"]["name"], "arguments": c["function"]["arguments"]}))
                .collect();
            m.content = json!({"tool_calls": calls}).to_string();
        }
    }
    if let Some(tools) = tools {
        let text = instructions(tools);
        match messages.first_mut() {
            Some(first) if first.role == "system" => {
                first.content = format!("{}\n\n{text}", first.content);
            }
            _ => messages.insert(0, ChatMessage::new("system", &text)),
        }
    }
    messages
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::generate::tool_syntax::FunctionSpec;

    fn tools(parallel: bool) -> AutoTools {
        AutoTools {
            functions: vec![FunctionSpec {
                name: "weather".into(),
                description: Some("Weather now".into()),
                parameters: json!({"type": "object", "properties": {"city": {"type": "string"}}}),
            }],
            parallel,
        }
    }

    #[test]
    fn calls_and_responses_parse() {
        let p = parse(
            "{\"tool_calls\": [{\"name\": \"weather\", \"arguments\": {\"city\": \"Oslo\"}}]}",
        );
        assert_eq!(p.calls[0].name, "weather");
        assert_eq!(p.content, None);
        let p = parse("{\"response\": \"Hello!\"}");
        assert!(p.calls.is_empty());
        assert_eq!(p.content.as_deref(), Some("Hello!"));
        for text in ["{\"tool_calls\": []}", "{\"tool_calls\": [{\"nam", "plain"] {
            let p = parse(text);
            assert!(p.calls.is_empty());
            assert_eq!(p.content.as_deref(), Some(text));
        }
    }

    #[test]
    fn a_response_is_decoded_as_far_as_it_is_written() {
        let full = "{ \"response\" : \"Caf\\u00e9 \\\"ok\\\"\\n\\ud83c\\udf89 /\\/ done\"}";
        let want = "Café \"ok\"\n🎉 // done";
        assert_eq!(parse(full).content.as_deref(), Some(want));
        assert_eq!(partial_response(full).as_deref(), Some(want));
        // Every prefix decodes to a prefix of the whole response: a stream only appends.
        let mut last = String::new();
        for (i, _) in full.char_indices().chain([(full.len(), ' ')]) {
            if let Some(r) = partial_response(&full[..i]) {
                assert!(
                    r.starts_with(&last),
                    "{:?}: {r:?} after {last:?}",
                    &full[..i]
                );
                assert!(want.starts_with(&r), "{:?}: {r:?}", &full[..i]);
                last = r;
            }
        }
        assert_eq!(last, want);
        // Escapes still being written wait.
        assert_eq!(
            partial_response("{\"response\": \"a\\u00").as_deref(),
            Some("a")
        );
        assert_eq!(
            partial_response("{\"response\": \"a\\ud83c\\u").as_deref(),
            Some("a")
        );
        assert_eq!(
            partial_response("{\"response\": \"a\\").as_deref(),
            Some("a")
        );
        // Cut by max_tokens: the whole answer's content is what was said so far.
        assert_eq!(
            parse("{\"response\": \"Hello wor").content.as_deref(),
            Some("Hello wor")
        );
        for not_yet in [
            "",
            "{",
            "{\"resp",
            "{\"response\": ",
            "{\"tool_calls\": [",
            "Hi",
        ] {
            assert_eq!(partial_response(not_yet), None, "{not_yet:?}");
        }
    }

    #[test]
    fn the_schema_allows_one_call_unless_parallel() {
        let Grammar::JsonSchema(s) = grammar(&tools(false)) else {
            panic!("a schema")
        };
        assert_eq!(s["anyOf"][0]["properties"]["tool_calls"]["maxItems"], 1);
        let Grammar::JsonSchema(s) = grammar(&tools(true)) else {
            panic!("a schema")
        };
        assert!(s["anyOf"][0]["properties"]["tool_calls"]
            .get("maxItems")
            .is_none());
    }

    #[test]
    fn tools_join_the_system_message_and_calls_become_content() {
        let mut call = ChatMessage::new("assistant", "");
        call.tool_calls = Some(vec![
            json!({"id": "call_1", "type": "function", "function": {"name": "weather", "arguments": {"city": "Oslo"}}}),
        ]);
        let m = prepare(
            vec![ChatMessage::new("user", "Weather?"), call],
            Some(&tools(true)),
        );
        assert_eq!(m[0].role, "system");
        assert!(m[0].content.contains("\"weather\""), "{}", m[0].content);
        assert_eq!(
            m[2].content,
            "{\"tool_calls\":[{\"name\":\"weather\",\"arguments\":{\"city\":\"Oslo\"}}]}"
        );
        assert!(m[2].tool_calls.is_none());
        let m = prepare(
            vec![
                ChatMessage::new("system", "Be brief."),
                ChatMessage::new("user", "x"),
            ],
            Some(&tools(true)),
        );
        assert!(m[0].content.starts_with("Be brief.\n\nYou can call"));
        assert_eq!(m.len(), 2);
    }
}
