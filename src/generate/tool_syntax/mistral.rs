//! Mistral calls, text before the first `[TOOL_CALLS]` being content:
//! - [`parse`]: `[TOOL_CALLS][{"name": ..., "arguments": {...}}, ...]` (the v3 tokenizers'
//!   templates: Mistral 7B v0.3, Nemo, Small 3.1 as llama.cpp ships it);
//! - [`parse_args`]: `[TOOL_CALLS]name[ARGS]{...}`, once per call, with `[CALL_ID]id` after
//!   the name where the model writes ids (the v11 and later tokenizers': Mistral Small 3.2,
//!   Magistral, Devstral, as vLLM's and llama.cpp's Mistral parsers read them).
//!
//! All four markers are control tokens in Mistral's vocabularies; the answer's text keeps
//! them ([`super::ToolSyntax::markers`]).

use serde_json::value::RawValue;
use serde_json::{json, Value};

use super::{
    any_call_schema, as_templates_write, lazy_start, read_call, AutoTools, Marker, Parsed,
    ParsedCall,
};
use crate::generate::grammar::{Grammar, LARK_WS};

pub const OPENER: &str = "[TOOL_CALLS]";
pub const ARGS: &str = "[ARGS]";
pub const CALL_ID: &str = "[CALL_ID]";

/// The calls in `text`; an answer whose calls are not a well-formed list is text.
pub fn parse(text: &str) -> Parsed {
    let Some(start) = text.find(OPENER) else {
        return Parsed::text(text);
    };
    let body = text[start + OPENER.len()..].trim();
    let calls = if body.starts_with('[') {
        match serde_json::from_str::<Vec<&RawValue>>(body) {
            Ok(items) if !items.is_empty() => items
                .iter()
                .map(|c| read_call(c.get(), "arguments"))
                .collect::<Option<Vec<_>>>(),
            _ => None,
        }
    } else {
        read_call(body, "arguments").map(|c| vec![c])
    };
    match calls {
        Some(calls) => Parsed {
            content: super::non_empty(text[..start].trim_end()),
            content_end: start,
            calls,
        },
        None => Parsed::text(text),
    }
}

/// The calls in `text` written `[TOOL_CALLS]name[ARGS]{...}` (or
/// `[TOOL_CALLS]name[CALL_ID]id[ARGS]{...}`), one after another; anything else after the
/// first opener (a malformed call, text after the calls) makes the whole answer text.
pub fn parse_args(text: &str) -> Parsed {
    let Some(start) = text.find(OPENER) else {
        return Parsed::text(text);
    };
    let mut calls = Vec::new();
    let mut rest = &text[start..];
    while let Some(body) = rest.strip_prefix(OPENER) {
        let Some((call, after)) = args_call(body) else {
            return Parsed::text(text);
        };
        calls.push(call);
        rest = after.trim_start();
    }
    if !rest.is_empty() {
        return Parsed::text(text);
    }
    Parsed {
        content: super::non_empty(text[..start].trim_end()),
        content_end: start,
        calls,
    }
}

/// The call at the start of `body` (`name[ARGS]{...}`, the opener taken off) and the text
/// after its arguments.
pub(super) fn args_call(body: &str) -> Option<(ParsedCall, &str)> {
    let (head, after) = body.split_once(ARGS)?;
    let (name, id) = match head.split_once(CALL_ID) {
        Some((name, id)) => (name, Some(id.trim())),
        None => (head, None),
    };
    let name = name.trim();
    let word = |s: &str| {
        !s.is_empty()
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-' || b == b'.')
    };
    if !word(name) || id.is_some_and(|id| !word(id)) {
        return None;
    }
    let mut stream = serde_json::Deserializer::from_str(after).into_iter::<&RawValue>();
    let arguments = match stream.next() {
        Some(Ok(v)) if v.get().starts_with('{') => super::compact(v.get()),
        _ => return None,
    };
    let rest = &after[stream.byte_offset()..];
    Some((
        ParsedCall {
            name: name.to_string(),
            arguments,
            id: id.map(str::to_string),
        },
        rest,
    ))
}

/// The grammar of a v3 answer: free text, or text, `[TOOL_CALLS]` and a list of calls whose
/// arguments validate (one unless `parallel`).
pub fn grammar(tools: &AutoTools, special: &dyn Fn(&str) -> Option<u32>) -> Grammar {
    let mut list =
        json!({"type": "array", "items": any_call_schema(&tools.functions), "minItems": 1});
    if !tools.parallel {
        list["maxItems"] = json!(1);
    }
    let start = lazy_start(Marker::of(OPENER, special), "WS? calls WS?");
    Grammar::Lark(format!(
        "{start}calls: %json {}\n{LARK_WS}",
        as_templates_write(list)
    ))
}

/// The grammar of a v11 answer: free text, or text and then calls, each `[TOOL_CALLS]`, a
/// function's name, `[ARGS]` and arguments that validate against its parameters (one call
/// unless `parallel`). Where the vocabulary has `[CALL_ID]`, an id of 9 letters or digits
/// may follow the name (as the models write them).
pub fn grammar_args(tools: &AutoTools, special: &dyn Fn(&str) -> Option<u32>) -> Grammar {
    let opener = Marker::of(OPENER, special);
    let args = Marker::of(ARGS, special).lark();
    let id = match Marker::of(CALL_ID, special) {
        Marker::Token(t) => format!("(<[{t}]> /[a-zA-Z0-9]{{9}}/)?"),
        Marker::Text(_) => String::new(),
    };
    let more = if tools.parallel {
        format!("({} call)*", opener.lark())
    } else {
        String::new()
    };
    let mut rules = lazy_start(opener, &format!("call {more}"));
    let names: Vec<String> = (0..tools.functions.len())
        .map(|i| format!("f{i}"))
        .collect();
    rules.push_str(&format!("call: {}\n", names.join(" | ")));
    for (rule, f) in names.iter().zip(&tools.functions) {
        let params = as_templates_write(f.parameters.clone());
        rules.push_str(&format!(
            "{rule}: {} {id} {args} %json {params}\n",
            Value::from(f.name.as_str())
        ));
    }
    Grammar::Lark(rules)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_list_after_the_opener_is_the_calls() {
        let p = parse("[TOOL_CALLS][{\"name\": \"a\", \"arguments\": {\"x\": 1}}, {\"name\": \"b\", \"arguments\": {}}]");
        assert_eq!(p.calls.len(), 2);
        assert_eq!(p.content, None);
        let p = parse("Checking. [TOOL_CALLS] [{\"name\": \"a\", \"arguments\": {}}]");
        assert_eq!(p.content.as_deref(), Some("Checking."));
        assert_eq!(p.calls.len(), 1);
    }

    #[test]
    fn malformed_lists_are_text() {
        for text in [
            "[TOOL_CALLS][{\"name\": \"a\"",
            "[TOOL_CALLS][]",
            "[TOOL_CALLS][{\"arguments\": {}}]",
        ] {
            let p = parse(text);
            assert!(p.calls.is_empty(), "{text}");
            assert_eq!(p.content.as_deref(), Some(text));
        }
    }

    #[test]
    fn args_calls_follow_one_another() {
        let p = parse_args("Let me check.[TOOL_CALLS]weather[ARGS]{\"city\": \"Paris\"}[TOOL_CALLS]add[ARGS]{\"a\": 1, \"b\": [2]}");
        assert_eq!(p.content.as_deref(), Some("Let me check."));
        assert_eq!(p.content_end, 13);
        let calls: Vec<(&str, &str)> = p
            .calls
            .iter()
            .map(|c| (c.name.as_str(), c.arguments.as_str()))
            .collect();
        assert_eq!(
            calls,
            [
                ("weather", r#"{"city":"Paris"}"#),
                ("add", r#"{"a":1,"b":[2]}"#)
            ]
        );
        assert!(p.calls.iter().all(|c| c.id.is_none()));
        // The model's own ids, and whitespace between calls.
        let p = parse_args(
            "[TOOL_CALLS]get_time[CALL_ID]a1B2c3D4e[ARGS]{}\n[TOOL_CALLS]get_time[CALL_ID]zzzzzzzz9[ARGS]{\"tz\": \"UTC\"}",
        );
        assert_eq!(p.content, None);
        let ids: Vec<Option<&str>> = p.calls.iter().map(|c| c.id.as_deref()).collect();
        assert_eq!(ids, [Some("a1B2c3D4e"), Some("zzzzzzzz9")]);
        assert_eq!(p.calls[1].arguments, r#"{"tz":"UTC"}"#);
    }

    #[test]
    fn malformed_args_calls_are_text() {
        for text in [
            "[TOOL_CALLS]weather[ARGS]{\"city\": \"Par",
            "[TOOL_CALLS]weather{\"city\": \"Paris\"}",
            "[TOOL_CALLS][ARGS]{}",
            "[TOOL_CALLS]two words[ARGS]{}",
            "[TOOL_CALLS]f[ARGS][1, 2]",
            "[TOOL_CALLS]f[ARGS]{} and then words",
            "[TOOL_CALLS][{\"name\": \"a\", \"arguments\": {}}]",
            "just text",
        ] {
            let p = parse_args(text);
            assert!(p.calls.is_empty(), "{text}");
            assert_eq!(p.content.as_deref(), Some(text));
            assert_eq!(p.content_end, text.len());
        }
    }

    /// The tool parts of Mistral Small 3.2's template (v11 tokenizer; Magistral's and
    /// Devstral's write calls and results the same way).
    const SMALL_3_2: &str = r#"{{- bos_token }}
{%- if tools is defined and tools is not none and tools|length > 0 %}
    {{- '[AVAILABLE_TOOLS]' + (tools | tojson) + '[/AVAILABLE_TOOLS]' }}
{%- endif %}
{%- for message in messages %}
    {%- if message['role'] == 'user' %}
        {{- '[INST]' + message['content'] + '[/INST]' }}
    {%- elif message['role'] == 'assistant' %}
        {%- if message['content'] is string %}
            {{- message['content'] }}
        {%- endif %}
        {%- if message['tool_calls'] is defined and message['tool_calls'] is not none %}
            {%- for tool in message['tool_calls'] %}
                {%- set arguments = tool['function']['arguments'] %}
                {%- if arguments is not string %}
                    {%- set arguments = arguments|tojson %}
                {%- elif arguments == '' %}
                    {%- set arguments = '{}' %}
                {%- endif %}
                {{- '[TOOL_CALLS]' + tool['function']['name'] + '[ARGS]' + arguments }}
            {%- endfor %}
        {%- endif %}
        {{- eos_token }}
    {%- elif message['role'] == 'tool' %}
        {{- '[TOOL_RESULTS]' + message['content']|string + '[/TOOL_RESULTS]' }}
    {%- else %}
        {{- raise_exception('Only user, assistant and tool roles are supported!') }}
    {%- endif %}
{%- endfor %}"#;

    #[test]
    fn a_v11_template_is_detected_and_renders_calls_and_results() {
        use crate::generate::chat::{ChatMessage, ChatTemplate, TemplateKwargs};
        use crate::generate::tool_syntax::ToolSyntax;
        let t = ChatTemplate::new(SMALL_3_2, "<s>", "</s>").unwrap();
        assert_eq!(t.tool_syntax(), ToolSyntax::MistralArgs);
        let mut call = ChatMessage::new("assistant", "");
        call.tool_calls = Some(vec![
            json!({"id": "a1B2c3D4e", "type": "function", "function": {"name": "weather", "arguments": {"city": "Paris"}}}),
            json!({"id": "f5G6h7I8j", "type": "function", "function": {"name": "add", "arguments": {"a": 1}}}),
        ]);
        let mut result = ChatMessage::new("tool", "{\"temp\": 21}");
        result.tool_call_id = Some("a1B2c3D4e".into());
        let messages = [
            ChatMessage::new("user", "Weather in Paris?"),
            call,
            result,
            ChatMessage::new("user", "Thanks"),
        ];
        let mut kwargs = TemplateKwargs::new();
        kwargs.insert(
            "tools".into(),
            json!([{"type": "function", "function": {"name": "weather", "parameters": {"type": "object"}}}]),
        );
        let out = t.render(&messages, true, &kwargs).unwrap();
        assert!(out.starts_with("<s>[AVAILABLE_TOOLS][{"), "{out}");
        assert!(
            out.contains("[INST]Weather in Paris?[/INST][TOOL_CALLS]weather[ARGS]{\"city\":\"Paris\"}[TOOL_CALLS]add[ARGS]{\"a\":1}</s>[TOOL_RESULTS]{\"temp\": 21}[/TOOL_RESULTS][INST]Thanks[/INST]"),
            "{out}"
        );
        // What the template writes for a call, the parser reads back.
        let answer = &out[out.find("[TOOL_CALLS]").unwrap()..out.find("</s>").unwrap()];
        let p = parse_args(answer);
        assert_eq!(p.calls.len(), 2);
        assert_eq!(p.calls[0].arguments, r#"{"city":"Paris"}"#);
    }
}
