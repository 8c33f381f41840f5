//! Llama 3.x calls: the whole answer is `{"name": ..., "parameters": {...}}` (Llama 3.1's
//! and 3.2's JSON tool calling), after an optional `<|python_tag|>`; several calls are
//! separated by `;` (as llama.cpp reads them).
//!
//! The grammar cannot wait for an opener (the JSON call has none but its `{`), so it decides
//! at the answer's first character: an answer that begins with `{` (after whitespace) or
//! `<|python_tag|>` is calls whose arguments validate; any other answer is free text. A
//! Llama 3 model given tools answers in JSON only to call (llama.cpp's lazy trigger is the
//! same `{"name"` at the start), so the JSON it may want to write as content costs little.

use serde_json::value::RawValue;

use super::{any_call_schema_keyed, as_templates_write, read_call, AutoTools, Marker, Parsed};
use crate::generate::grammar::{Grammar, LARK_WS};

pub const PYTHON_TAG: &str = "<|python_tag|>";

/// The calls in `text`: only when the whole answer is calls; otherwise it is text.
pub fn parse(text: &str) -> Parsed {
    let body = text.trim_start();
    let body = body.strip_prefix(PYTHON_TAG).unwrap_or(body).trim();
    if !body.starts_with('{') {
        return Parsed::text(text);
    }
    let mut calls = Vec::new();
    let mut rest = body;
    while !rest.is_empty() {
        let mut stream = serde_json::Deserializer::from_str(rest).into_iter::<&RawValue>();
        let Some(Ok(v)) = stream.next() else {
            return Parsed::text(text);
        };
        let Some(call) = read_call(v.get(), "parameters") else {
            return Parsed::text(text);
        };
        calls.push(call);
        rest = rest[stream.byte_offset()..].trim_start();
        rest = rest.strip_prefix(';').unwrap_or(rest).trim_start();
    }
    Parsed {
        content: None,
        content_end: 0,
        calls,
    }
}

/// A call can only be the whole answer: hold everything while the answer may still be one
/// (it is empty, begins `{`, or is or begins `<|python_tag|>`).
pub fn hold_from(text: &str) -> Option<usize> {
    let t = text.trim_start();
    let may_be_call = t.is_empty()
        || t.starts_with('{')
        || t.starts_with(PYTHON_TAG)
        || PYTHON_TAG.starts_with(t);
    may_be_call.then_some(0)
}

/// The grammar of an answer: free text that does not begin with `{`, or calls (after
/// `<|python_tag|>` where it is a control token), `;`-separated when `parallel`.
pub fn grammar(tools: &AutoTools, special: &dyn Fn(&str) -> Option<u32>) -> Grammar {
    let schema = as_templates_write(any_call_schema_keyed(&tools.functions, "parameters"));
    let tag = match Marker::of(PYTHON_TAG, special) {
        Marker::Token(id) => format!("(<[{id}]> WS?)?"),
        Marker::Text(_) => String::new(),
    };
    let more = if tools.parallel {
        "(WS? \";\" WS? body)*"
    } else {
        ""
    };
    Grammar::Lark(format!(
        r#"start: TEXT? | WS? {tag} body {more} WS?
body: %json {schema}
TEXT: /[ \t\n]*[^{{ \t\n](?s:.*)/
{LARK_WS}"#
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_json_answer_is_a_call_with_or_without_the_python_tag() {
        for text in [
            "{\"name\": \"weather\", \"parameters\": {\"city\": \"Paris\"}}",
            "<|python_tag|>{\"name\": \"weather\", \"parameters\": {\"city\": \"Paris\"}}",
        ] {
            let p = parse(text);
            assert_eq!(p.calls.len(), 1, "{text}");
            assert_eq!(p.calls[0].arguments, r#"{"city":"Paris"}"#);
            assert_eq!(p.content, None);
        }
        let p =
            parse("{\"name\": \"a\", \"parameters\": {}}; {\"name\": \"b\", \"parameters\": {}}");
        assert_eq!(p.calls.len(), 2);
    }

    #[test]
    fn text_and_malformed_calls_are_text() {
        for text in [
            "Hello there",
            "{\"name\": \"a\", \"param",
            "{\"x\": 1}",
            "{\"name\": \"a\", \"parameters\": {}} trailing",
        ] {
            let p = parse(text);
            assert!(p.calls.is_empty(), "{text}");
            assert_eq!(p.content.as_deref(), Some(text));
        }
        assert_eq!(hold_from("  {\"na"), Some(0));
        assert_eq!(hold_from("<|pyt"), Some(0));
        assert_eq!(hold_from("Hi"), None);
    }
}
