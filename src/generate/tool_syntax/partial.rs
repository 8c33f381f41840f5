//! Calls read from an answer that is still being written, so a stream can send each call
//! as OpenAI does: its id and name as soon as the name is known, then its arguments as the
//! model writes them ([`CallText::partial`]).
//!
//! [`CallText::partial`] is a function of the text so far and nothing else, so what it
//! reads does not depend on how the text was split into tokens. A call's arguments so far
//! are [`super::compact`] of the text written since the arguments' `{`, which is a prefix of
//! the finished arguments' text; once a call's object (or Mistral's `[ARGS]` object) is
//! complete, its arguments are what the whole-answer parser reads from the same text
//! ([`super::read_call`]). The pieces a stream sends therefore add up to the `arguments` the
//! whole answer gives. Arguments are held while the name is not yet known (a model may write
//! the arguments first) and when they are written as a JSON string (they are then sent
//! whole once the call is complete).
//!
//! Whether the answer makes calls at all is decided at its end by [`CallText::parse`], the
//! parser of the whole answer: a stream reads ahead, it never decides differently.

use super::{compact, hermes, llama3, mistral, non_empty, read_call, Parsed, ToolSyntax};

/// How an answer's calls are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CallText {
    /// A forced call (`tool_choice` "required" or named): the whole answer is one
    /// `{"name": ..., "arguments": {...}}` (a JSON schema grammar writes it).
    Forced,
    /// The model's own syntax (`tool_choice: "auto"`).
    Auto(ToolSyntax),
}

/// A call as far as the text shows it.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct PartialCall {
    /// Known once the name is complete.
    pub name: Option<String>,
    /// The id the model gave (Mistral's `[CALL_ID]`).
    pub id: Option<String>,
    /// The arguments' text so far (compacted); once `complete`, the call's
    /// [`ParsedCall::arguments`].
    pub arguments: String,
    pub complete: bool,
}

impl CallText {
    /// The calls `text` shows so far, in order; the last may be incomplete. Reading stops at
    /// anything the syntax does not expect (the end of the answer decides what it was).
    pub fn partial(self, text: &str) -> Vec<PartialCall> {
        let mut c = Cursor { s: text, i: 0 };
        let mut calls = Vec::new();
        let _ = match self {
            CallText::Forced => {
                c.ws();
                one(&mut c, "arguments", &mut calls)
            }
            CallText::Auto(ToolSyntax::Hermes) => hermes_calls(&mut c, &mut calls),
            CallText::Auto(ToolSyntax::Llama3) => llama3_calls(&mut c, &mut calls),
            CallText::Auto(ToolSyntax::Mistral) => mistral_list(&mut c, &mut calls),
            CallText::Auto(ToolSyntax::MistralArgs) => mistral_args(&mut c, &mut calls),
            CallText::Auto(ToolSyntax::Json) => json_calls(&mut c, &mut calls),
        };
        calls
    }

    /// The calls of the whole answer: a forced call's text must be one call object (a call
    /// cut short is text); the others are [`ToolSyntax::parse`].
    pub fn parse(self, text: &str) -> Parsed {
        match self {
            CallText::Forced => match read_call(text.trim(), "arguments") {
                Some(call) => Parsed {
                    content: None,
                    content_end: 0,
                    calls: vec![call],
                },
                None => Parsed {
                    content: non_empty(text),
                    content_end: text.len(),
                    calls: Vec::new(),
                },
            },
            CallText::Auto(syntax) => syntax.parse(text),
        }
    }

    /// A fresh id for a call the model gave none ([`ToolSyntax::new_call_id`]).
    pub fn new_call_id(self, random: u64) -> String {
        match self {
            CallText::Forced => ToolSyntax::Hermes.new_call_id(random),
            CallText::Auto(syntax) => syntax.new_call_id(random),
        }
    }
}

/// A position in the text being read.
struct Cursor<'a> {
    s: &'a str,
    i: usize,
}

impl Cursor<'_> {
    fn rest(&self) -> &str {
        &self.s[self.i..]
    }

    /// Past JSON's whitespace.
    fn ws(&mut self) {
        let skipped = self.rest().len()
            - self
                .rest()
                .trim_start_matches([' ', '\t', '\n', '\r'])
                .len();
        self.i += skipped;
    }

    /// Past `lit` if the text goes on with it.
    fn eat(&mut self, lit: &str) -> Option<()> {
        self.rest().starts_with(lit).then(|| self.i += lit.len())
    }

    /// Past the complete JSON value that starts here; `None` (not moved) if it is not
    /// complete yet or not a value.
    fn value(&mut self) -> Option<usize> {
        let start = self.i;
        self.i = value_end(self.s.as_bytes(), start)?;
        Some(start)
    }
}

/// Where the JSON value at `i` ends, if it is complete. Brackets are counted, not matched
/// (the whole-answer parser checks the finished text).
fn value_end(b: &[u8], i: usize) -> Option<usize> {
    match *b.get(i)? {
        b'{' | b'[' => {
            let (mut depth, mut in_string, mut escaped) = (0usize, false, false);
            for (j, &c) in b.iter().enumerate().skip(i) {
                if in_string {
                    if escaped {
                        escaped = false;
                    } else if c == b'\\' {
                        escaped = true;
                    } else if c == b'"' {
                        in_string = false;
                    }
                    continue;
                }
                match c {
                    b'"' => in_string = true,
                    b'{' | b'[' => depth += 1,
                    b'}' | b']' => {
                        depth -= 1;
                        if depth == 0 {
                            return Some(j + 1);
                        }
                    }
                    _ => {}
                }
            }
            None
        }
        b'"' => {
            let mut j = i + 1;
            while j < b.len() {
                match b[j] {
                    b'\\' => j += 2,
                    b'"' => return Some(j + 1),
                    _ => j += 1,
                }
            }
            None
        }
        _ => {
            let end = i + b[i..]
                .iter()
                .take_while(|c| c.is_ascii_alphanumeric() || matches!(c, b'+' | b'-' | b'.'))
                .count();
            // A scalar that reaches the end of the text may go on.
            (end > i && end < b.len()).then_some(end)
        }
    }
}

/// Reads the call object at the cursor (its arguments under `key`) as a new call of
/// `calls`; `Some` when it is complete and reads as a call, the cursor past it.
fn one(c: &mut Cursor, key: &str, calls: &mut Vec<PartialCall>) -> Option<()> {
    calls.push(PartialCall::default());
    let call = calls.last_mut()?;
    let start = c.i;
    c.eat("{")?;
    let mut seen_arguments = false;
    loop {
        c.ws();
        if c.eat("}").is_some() {
            break;
        }
        if c.eat(",").is_some() {
            c.ws();
        }
        let k = c.value()?;
        let member: String = serde_json::from_str(&c.s[k..c.i]).ok()?;
        c.ws();
        c.eat(":")?;
        c.ws();
        let v = c.i;
        let streamed = member == key && !seen_arguments && c.rest().starts_with('{');
        seen_arguments |= member == key;
        if c.value().is_none() {
            if streamed {
                call.arguments = compact(c.rest());
            }
            return None;
        }
        let value = &c.s[v..c.i];
        if streamed {
            call.arguments = compact(value);
        } else if member == "name" && call.name.is_none() {
            call.name = Some(serde_json::from_str(value).ok()?);
        }
    }
    let read = read_call(&c.s[start..c.i], key)?;
    call.name = Some(read.name);
    call.arguments = read.arguments;
    call.complete = true;
    Some(())
}

/// `<tool_call>` blocks ([`hermes::parse`]).
fn hermes_calls(c: &mut Cursor, calls: &mut Vec<PartialCall>) -> Option<()> {
    c.i = c.s.find(hermes::OPENER)?;
    while c.eat(hermes::OPENER).is_some() {
        c.ws();
        one(c, "arguments", calls)?;
        c.ws();
        c.eat(hermes::CLOSER)?;
        c.ws();
    }
    Some(())
}

/// Llama 3.x: the whole answer is calls, after an optional `<|python_tag|>`
/// ([`llama3::parse`]).
fn llama3_calls(c: &mut Cursor, calls: &mut Vec<PartialCall>) -> Option<()> {
    c.ws();
    if c.eat(llama3::PYTHON_TAG).is_some() {
        c.ws();
    }
    while c.rest().starts_with('{') {
        one(c, "parameters", calls)?;
        c.ws();
        if c.eat(";").is_some() {
            c.ws();
        }
    }
    Some(())
}

/// Mistral v3: `[TOOL_CALLS]` and a list of calls, or one ([`mistral::parse`]).
fn mistral_list(c: &mut Cursor, calls: &mut Vec<PartialCall>) -> Option<()> {
    c.i = c.s.find(mistral::OPENER)? + mistral::OPENER.len();
    c.ws();
    if c.eat("[").is_none() {
        return one(c, "arguments", calls);
    }
    loop {
        c.ws();
        one(c, "arguments", calls)?;
        c.ws();
        c.eat(",")?;
    }
}

/// Mistral v11: `[TOOL_CALLS]name[CALL_ID]id[ARGS]{...}` per call
/// ([`mistral::parse_args`]).
fn mistral_args(c: &mut Cursor, calls: &mut Vec<PartialCall>) -> Option<()> {
    c.i = c.s.find(mistral::OPENER)?;
    while c.eat(mistral::OPENER).is_some() {
        let body = c.i;
        let head_len = c.rest().find(mistral::ARGS)?;
        let head = &c.s[c.i..c.i + head_len];
        let (name, id) = match head.split_once(mistral::CALL_ID) {
            Some((name, id)) => (name, Some(id.trim().to_string())),
            None => (head, None),
        };
        c.i += head_len + mistral::ARGS.len();
        if !c.rest().starts_with('{') {
            return None;
        }
        let mut call = PartialCall {
            name: Some(name.trim().to_string()),
            id,
            arguments: compact(c.rest()),
            complete: false,
        };
        if c.value().is_none() {
            calls.push(call);
            return None;
        }
        let (read, _) = mistral::args_call(&c.s[body..c.i])?;
        call.arguments = read.arguments;
        call.complete = true;
        calls.push(call);
        c.ws();
    }
    Some(())
}

/// The generic JSON format: `{"tool_calls": [...]}` (or `{"tool_call": {...}}`); a
/// `response` is content, sent at the end ([`super::json::parse`]).
fn json_calls(c: &mut Cursor, calls: &mut Vec<PartialCall>) -> Option<()> {
    c.ws();
    c.eat("{")?;
    loop {
        c.ws();
        if c.eat("}").is_some() {
            return Some(());
        }
        if c.eat(",").is_some() {
            c.ws();
        }
        let k = c.value()?;
        let member: String = serde_json::from_str(&c.s[k..c.i]).ok()?;
        c.ws();
        c.eat(":")?;
        c.ws();
        match member.as_str() {
            "tool_calls" => {
                c.eat("[")?;
                loop {
                    c.ws();
                    if c.eat("]").is_some() {
                        break;
                    }
                    if c.eat(",").is_some() {
                        c.ws();
                    }
                    one(c, "arguments", calls)?;
                }
            }
            "tool_call" => one(c, "arguments", calls)?,
            _ => {
                c.value()?;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What the partial reading shows after each piece of `pieces`, as (name, id,
    /// arguments) of the calls whose name is known; the arguments must only grow.
    fn read_in_pieces(text: CallText, pieces: &[&str]) -> Vec<(String, Option<String>, String)> {
        let mut answer = String::new();
        let mut last: Vec<(String, Option<String>, String)> = Vec::new();
        for p in pieces {
            answer.push_str(p);
            let now: Vec<_> = text
                .partial(&answer)
                .into_iter()
                .map_while(|c| Some((c.name?, c.id, c.arguments)))
                .collect();
            assert!(now.len() >= last.len(), "calls vanished at {answer:?}");
            for (before, after) in last.iter().zip(&now) {
                assert_eq!(
                    (&before.0, &before.1),
                    (&after.0, &after.1),
                    "at {answer:?}"
                );
                assert!(
                    after.2.starts_with(&before.2),
                    "{before:?} -> {after:?} at {answer:?}"
                );
            }
            last = now;
        }
        last
    }

    /// Every split of `answer` in two at a char boundary, and one char at a time, reads
    /// the calls the whole-answer parser reads.
    fn same_at_every_split(text: CallText, answer: &str, want: usize) {
        let whole: Vec<(String, Option<String>, String)> = text
            .parse(answer)
            .calls
            .into_iter()
            .map(|c| (c.name, c.id, c.arguments))
            .collect();
        assert_eq!(whole.len(), want, "{answer}");
        let chars: Vec<String> = answer.chars().map(String::from).collect();
        let chars: Vec<&str> = chars.iter().map(String::as_str).collect();
        assert_eq!(
            read_in_pieces(text, &chars),
            whole,
            "char by char: {answer}"
        );
        for (at, _) in answer.char_indices().skip(1) {
            let got = read_in_pieces(text, &[&answer[..at], &answer[at..]]);
            assert_eq!(got, whole, "split at {at}: {answer}");
        }
    }

    #[test]
    fn every_syntax_reads_the_same_calls_however_the_text_is_split() {
        let cases: [(CallText, &str, usize); 9] = [
            (
                CallText::Forced,
                r#"{"name":"weather","arguments":{"city":"Paris","days":[1, 2],"note":"a \"b\" }"}}"#,
                1,
            ),
            (
                CallText::Auto(ToolSyntax::Hermes),
                "Let me check.\n<tool_call>\n{\"name\": \"weather\", \"arguments\": {\"city\": \"Paris\", \"n\": 1.50}}\n</tool_call>\n<tool_call>\n{\"name\": \"time\", \"arguments\": {}}\n</tool_call>",
                2,
            ),
            // Arguments before the name.
            (
                CallText::Auto(ToolSyntax::Hermes),
                "<tool_call>\n{\"arguments\": {\"q\": \"é ü\"}, \"name\": \"search\"}\n</tool_call>",
                1,
            ),
            // Arguments as a JSON string: sent whole at the end of the call.
            (
                CallText::Auto(ToolSyntax::Hermes),
                "<tool_call>{\"name\": \"f\", \"arguments\": \"{\\\"a\\\": 1}\"}</tool_call>",
                1,
            ),
            (
                CallText::Auto(ToolSyntax::Llama3),
                "<|python_tag|>{\"name\": \"weather\", \"parameters\": {\"city\": \"Oslo\"}}; {\"name\": \"time\", \"parameters\": {\"tz\": 2}}",
                2,
            ),
            (
                CallText::Auto(ToolSyntax::Mistral),
                "Sure.[TOOL_CALLS] [{\"name\": \"a\", \"arguments\": {\"x\": [1, {\"y\": null}]}}, {\"name\": \"b\", \"arguments\": {}}]",
                2,
            ),
            (
                CallText::Auto(ToolSyntax::MistralArgs),
                "Checking.[TOOL_CALLS]weather[ARGS]{\"city\": \"Paris\"}[TOOL_CALLS]add[CALL_ID]a1B2c3D4e[ARGS]{\"a\": 1, \"b\": [2]}",
                2,
            ),
            (
                CallText::Auto(ToolSyntax::Json),
                "{\"tool_calls\": [{\"name\": \"weather\", \"arguments\": {\"city\": \"Paris\"}}, {\"name\": \"add\", \"arguments\": {\"a\": 2, \"b\": 3}}]}",
                2,
            ),
            (
                CallText::Auto(ToolSyntax::Json),
                "{\"response\": \"no {calls} here\"}",
                0,
            ),
        ];
        for (text, answer, n) in cases {
            same_at_every_split(text, answer, n);
        }
    }

    #[test]
    fn arguments_grow_while_the_call_is_written() {
        let answer = "<tool_call>\n{\"name\": \"weather\", \"arguments\": {\"city\": \"Paris\"}}";
        let at = answer.find("Par").unwrap();
        let calls = CallText::Auto(ToolSyntax::Hermes).partial(&answer[..at]);
        assert_eq!(calls.len(), 1);
        assert_eq!(calls[0].name.as_deref(), Some("weather"));
        assert_eq!(calls[0].arguments, "{\"city\":\"");
        assert!(!calls[0].complete);
        // Before the name is known, nothing is.
        let early = CallText::Forced.partial("{\"arguments\": {\"a\": 1}, \"na");
        assert_eq!(early[0].name, None);
    }

    #[test]
    fn text_that_is_no_call_reads_as_no_call() {
        for (text, answer) in [
            (CallText::Auto(ToolSyntax::Hermes), "just words"),
            (CallText::Auto(ToolSyntax::Llama3), "Hello {there}"),
            (CallText::Auto(ToolSyntax::MistralArgs), "see [TOOLS] list"),
            (CallText::Auto(ToolSyntax::Json), "{\"response\": \"hi\"}"),
        ] {
            assert!(
                text.partial(answer).iter().all(|c| c.name.is_none()),
                "{answer}"
            );
        }
        // A forced call cut short is text for the whole-answer parser.
        let cut = CallText::Forced.parse("{\"name\":\"f\",\"argu");
        assert!(cut.calls.is_empty());
        assert_eq!(cut.content.as_deref(), Some("{\"name\":\"f\",\"argu"));
    }
}
