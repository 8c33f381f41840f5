//! Hermes / Qwen calls: `<tool_call>\n{"name": ..., "arguments": {...}}\n</tool_call>`, one
//! block per call, text before the first is content (Qwen 2.5 / 3's, Hermes 2 Pro's and
//! SmolLM3's templates).

use super::{
    any_call_schema, as_templates_write, lazy_start, read_call, AutoTools, Marker, Parsed,
};
use crate::generate::grammar::{Grammar, LARK_WS};

pub const OPENER: &str = "<tool_call>";
pub const CLOSER: &str = "</tool_call>";

/// The calls in `text`. A block that does not hold a well-formed call, or text after the
/// calls, makes the whole answer text (as vLLM's Hermes parser answers it). The last block
/// may lack its closer (the model may end right after the JSON).
pub fn parse(text: &str) -> Parsed {
    let Some(start) = text.find(OPENER) else {
        return Parsed::text(text);
    };
    let mut calls = Vec::new();
    let mut rest = &text[start..];
    while let Some(body) = rest.strip_prefix(OPENER) {
        let (inside, after) = match body.find(CLOSER) {
            Some(end) => (&body[..end], &body[end + CLOSER.len()..]),
            None => (body, ""),
        };
        let Some(call) = read_call(inside.trim(), "arguments") else {
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

/// The lazy grammar of an answer: free text that never writes the opener, or text, then
/// the opener, then a call whose arguments validate, closed, and (with `parallel`) more
/// calls; nothing after the last call ([`super::lazy_start`]). The opener and closer are
/// text in Qwen's vocabularies, control tokens in some others.
pub fn grammar(tools: &AutoTools, special: &dyn Fn(&str) -> Option<u32>) -> Grammar {
    let opener = Marker::of(OPENER, special);
    let closer = Marker::of(CLOSER, special).lark();
    // Written as the templates write calls (`| tojson`).
    let schema = as_templates_write(any_call_schema(&tools.functions));
    let more = if tools.parallel {
        format!("(WS {} call)*", opener.lark())
    } else {
        String::new()
    };
    let start = lazy_start(opener, &format!("call {more} WS?"));
    Grammar::Lark(format!(
        r#"{start}call: "\n"? body "\n"? {closer}
body: %json {schema}
{LARK_WS}"#
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocks_are_calls_and_text_before_them_content() {
        let p = parse("Let me check.\n<tool_call>\n{\"name\": \"weather\", \"arguments\": {\"city\": \"Paris\"}}\n</tool_call>");
        assert_eq!(p.content.as_deref(), Some("Let me check."));
        assert_eq!(p.content_end, 14);
        assert_eq!(p.calls.len(), 1);
        assert_eq!(p.calls[0].name, "weather");
        assert_eq!(p.calls[0].arguments, r#"{"city":"Paris"}"#);
    }

    #[test]
    fn several_blocks_are_several_calls_and_the_last_may_be_unclosed() {
        let p = parse("<tool_call>\n{\"name\": \"a\", \"arguments\": {}}\n</tool_call>\n<tool_call>\n{\"name\": \"b\", \"arguments\": {\"x\": 1}}");
        assert_eq!(p.content, None);
        let names: Vec<&str> = p.calls.iter().map(|c| c.name.as_str()).collect();
        assert_eq!(names, ["a", "b"]);
    }

    #[test]
    fn malformed_calls_are_text() {
        for text in [
            "<tool_call>\n{\"name\": \"a\", \"argu",
            "<tool_call>{\"arguments\": {}}</tool_call>",
            "<tool_call>{\"name\": \"a\", \"arguments\": {}}</tool_call> and more text",
            "no calls here",
        ] {
            let p = parse(text);
            assert!(p.calls.is_empty(), "{text}");
            assert_eq!(p.content.as_deref(), Some(text));
            assert_eq!(p.content_end, text.len());
        }
    }
}
