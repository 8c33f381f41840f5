//! Mistral calls: `[TOOL_CALLS][{"name": ..., "arguments": {...}}, ...]` (the v3 tokenizers'
//! templates); text before `[TOOL_CALLS]` is content.

use super::{read_call, Parsed};

pub const OPENER: &str = "[TOOL_CALLS]";

/// The calls in `text`; an answer whose calls are not a well-formed list is text.
pub fn parse(text: &str) -> Parsed {
    let Some(start) = text.find(OPENER) else {
        return Parsed::text(text);
    };
    let body = text[start + OPENER.len()..].trim();
    let calls = match serde_json::from_str::<serde_json::Value>(body) {
        Ok(serde_json::Value::Array(items)) if !items.is_empty() => {
            items.iter().map(read_call).collect::<Option<Vec<_>>>()
        }
        Ok(v @ serde_json::Value::Object(_)) => read_call(&v).map(|c| vec![c]),
        _ => None,
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
}
