//! Writes a generation's answer in the style its call asked for: whole, from everything the
//! sequence produced, or streamed, one JSON payload per Server-Sent Event as the engine's
//! events come (the front end adds the SSE framing).

use serde_json::{json, Value};

use super::generation::{AnswerContext, Collected, Format};
use super::tools::CallStream;
use super::{openai, tgi, upstream};
use crate::generate::engine::{Event, FinishReason, TokenEvent};
use crate::generate::reasoning::ReasoningSplit;
use crate::generate::tool_syntax::{CallText, Parsed, ToolSyntax};

/// The whole answer of a finished sequence.
pub fn whole(a: &AnswerContext, c: &Collected) -> Value {
    match a.format {
        Format::Upstream => upstream::whole(a, c),
        Format::Tgi {
            details,
            return_full_text,
        } => tgi::whole(a, c, details, return_full_text),
        Format::Completion { echo, .. } => openai::whole_completion(a, c, echo),
        Format::Chat { .. } => openai::whole_chat(a, c),
    }
}

/// One Server-Sent Event's payload.
#[derive(Debug, Clone, PartialEq)]
pub enum Payload {
    Json(Value),
    /// OpenAI's end of stream: `data: [DONE]`.
    Done,
}

/// Turns a sequence's events into the payloads of its stream, in the call's style.
pub struct StreamWriter {
    answer: AnswerContext,
    /// TGI's last token waits for the end, which it carries.
    held: Option<TokenEvent>,
    index: usize,
    text: String,
    /// OpenAI: text not yet sent because it may begin a stop sequence.
    pending: String,
    stopped: bool,
    opened: bool,
    /// A chat answer's calls (forced, or the model's own under `tool_choice: "auto"`), how
    /// they are written and streamed.
    calls: Option<(CallText, CallStream)>,
    /// Bytes of `text` sent as content (an answer that may call).
    sent: usize,
    /// A reasoning model's chat answer: its thinking is sent as `reasoning_content`, the
    /// rest goes on as the content the other paths send.
    reasoning: Option<ReasoningSplit>,
    /// Generated text not yet split, because it may begin a stop sequence.
    raw: String,
    raw_stopped: bool,
    /// Prompt tokens restored from the prefix cache (known at the end).
    cached_tokens: usize,
}

impl StreamWriter {
    pub fn new(answer: AnswerContext) -> Self {
        let reasoning = match answer.format {
            Format::Chat { .. } => answer.reasoning.map(ReasoningSplit::new),
            _ => None,
        };
        let calls = match (answer.format, answer.tool_parsing) {
            (
                Format::Chat {
                    tool_call: true, ..
                },
                _,
            ) => Some((CallText::Forced, false)),
            (Format::Chat { .. }, Some(tp)) => Some((CallText::Auto(tp.syntax), tp.parallel)),
            _ => None,
        }
        .map(|(text, parallel)| (text, CallStream::new(text, parallel)));
        Self {
            answer,
            held: None,
            index: 0,
            text: String::new(),
            pending: String::new(),
            stopped: false,
            opened: false,
            calls,
            sent: 0,
            reasoning,
            raw: String::new(),
            raw_stopped: false,
            cached_tokens: 0,
        }
    }

    /// Appends the payloads `ev` produces to `out`.
    pub fn event(&mut self, ev: Event, out: &mut Vec<Payload>) {
        if let Event::Done { cached_tokens, .. } = &ev {
            self.cached_tokens = *cached_tokens;
        }
        if let Event::Failed(failure) = &ev {
            // The stream is already 200: the error goes in the stream, as TGI does.
            out.push(Payload::Json(json!({
                "error": failure.to_string(),
                "error_type": "generation",
            })));
            if !matches!(self.answer.format, Format::Tgi { .. }) {
                out.push(Payload::Done);
            }
            return;
        }
        let full_text = match self.answer.format {
            Format::Tgi {
                return_full_text, ..
            } => return_full_text,
            Format::Upstream => true,
            _ => return self.openai(ev, out),
        };
        match ev {
            Event::Token(t) => {
                if let Some(prev) = self.held.replace(t) {
                    self.tgi_token(prev, None, out);
                }
            }
            Event::Done { reason, .. } => {
                if let Some(last) = self.held.take() {
                    self.tgi_token(last, Some((reason, full_text)), out);
                }
            }
            Event::Failed(_) => {}
        }
    }

    fn tgi_token(
        &mut self,
        t: TokenEvent,
        end: Option<(FinishReason, bool)>,
        out: &mut Vec<Payload>,
    ) {
        self.text.push_str(&t.text);
        self.index += 1;
        out.push(Payload::Json(tgi::stream_event(
            &self.answer,
            &t,
            self.index,
            &self.text,
            end,
        )));
    }

    fn openai(&mut self, ev: Event, out: &mut Vec<Payload>) {
        if self.reasoning.is_some() {
            return self.openai_reasoning(ev, out);
        }
        self.openai_content(ev, out)
    }

    /// A reasoning model's answer: each token's text is split ([`ReasoningSplit`]) after
    /// stop sequences are cut; its reasoning is sent as `delta.reasoning_content`, its content
    /// goes on to [`Self::openai_content`] as the token's text (so calls and content are read
    /// from the content alone). Every token goes on, its content empty or not, so each is
    /// counted once.
    fn openai_reasoning(&mut self, ev: Event, out: &mut Vec<Payload>) {
        if !self.opened {
            self.opened = true;
            out.push(Payload::Json(openai::chunk(
                &self.answer,
                Some(""),
                None,
                true,
            )));
        }
        let Some(split) = self.reasoning.as_mut() else {
            return;
        };
        match ev {
            Event::Token(mut t) => {
                let text = if self.raw_stopped {
                    String::new()
                } else {
                    self.raw.push_str(&t.text);
                    release(&mut self.raw, &self.answer.stop, &mut self.raw_stopped)
                };
                let pieces = split.push(&text);
                if !pieces.reasoning.is_empty() {
                    out.push(Payload::Json(openai::reasoning_chunk(
                        &self.answer,
                        &pieces.reasoning,
                    )));
                }
                t.text = pieces.content;
                self.openai_content(Event::Token(t), out);
            }
            Event::Done {
                reason,
                generated_tokens,
                prompt_tokens,
                cached_tokens,
            } => {
                let mut pieces = split.push_uncounted(&std::mem::take(&mut self.raw));
                let end = split.finish();
                pieces.reasoning.push_str(&end.reasoning);
                pieces.content.push_str(&end.content);
                if !pieces.reasoning.is_empty() {
                    out.push(Payload::Json(openai::reasoning_chunk(
                        &self.answer,
                        &pieces.reasoning,
                    )));
                }
                if !pieces.content.is_empty() {
                    // Held text, not a token: it is not counted.
                    self.openai_content(
                        Event::Token(TokenEvent {
                            id: 0,
                            text: pieces.content,
                            logprob: 0.0,
                            special: false,
                        }),
                        out,
                    );
                    self.index -= 1;
                }
                self.openai_content(
                    Event::Done {
                        reason,
                        generated_tokens,
                        prompt_tokens,
                        cached_tokens,
                    },
                    out,
                );
            }
            Event::Failed(_) => {}
        }
    }

    /// The answer's content (all of it but a reasoning model's thinking).
    fn openai_content(&mut self, ev: Event, out: &mut Vec<Payload>) {
        if self.calls.is_some() {
            return self.openai_calls(ev, out);
        }
        let a = &self.answer;
        if !self.opened {
            self.opened = true;
            match a.format {
                Format::Chat { .. } => {
                    out.push(Payload::Json(openai::chunk(a, Some(""), None, true)));
                }
                Format::Completion { echo: true, .. } => {
                    out.push(Payload::Json(openai::chunk(
                        a,
                        Some(&a.prompt_text),
                        None,
                        false,
                    )));
                }
                _ => {}
            }
        }
        match ev {
            Event::Token(t) => {
                self.index += 1;
                if self.stopped || t.text.is_empty() {
                    return;
                }
                self.pending.push_str(&t.text);
                let send = self.releasable();
                if !send.is_empty() {
                    out.push(Payload::Json(openai::chunk(
                        &self.answer,
                        Some(&send),
                        None,
                        false,
                    )));
                }
            }
            Event::Done { reason, .. } => {
                let a = &self.answer;
                if !self.stopped && !self.pending.is_empty() {
                    let rest = std::mem::take(&mut self.pending);
                    out.push(Payload::Json(openai::chunk(a, Some(&rest), None, false)));
                }
                out.push(Payload::Json(openai::chunk(
                    a,
                    None,
                    Some(reason.openai()),
                    false,
                )));
                self.openai_end(out);
            }
            Event::Failed(_) => {}
        }
    }

    /// The usage chunk (when asked for) and `[DONE]`.
    fn openai_end(&self, out: &mut Vec<Payload>) {
        let a = &self.answer;
        let include_usage = match a.format {
            Format::Chat { include_usage, .. } | Format::Completion { include_usage, .. } => {
                include_usage
            }
            _ => false,
        };
        if include_usage {
            let mut v = openai::chunk(a, None, None, false);
            v["choices"] = json!([]);
            v["usage"] = match &self.reasoning {
                Some(split) => openai::usage_with_reasoning(
                    a,
                    self.index,
                    self.cached_tokens,
                    split.reasoning_pieces(),
                ),
                None => openai::usage(a, self.index, self.cached_tokens),
            };
            out.push(Payload::Json(v));
        }
        out.push(Payload::Done);
    }

    /// An answer that may make calls (forced, or under `tool_choice: "auto"`): text is sent
    /// as content until a call may begin ([`ToolSyntax::hold_from`]; a forced call's answer
    /// holds all of it) or a stop sequence may; from there calls are sent as they are written
    /// ([`CallStream`]), then `finish_reason: "tool_calls"`.
    ///
    /// Whether the answer made calls is decided at the end, by the parser of the whole answer
    /// ([`CallText::parse`]), so a stream ends as the same request answered whole does. When
    /// the text turns out to hold no call (cut by `max_tokens` or a stop sequence while a call
    /// was being written, or, without a grammar, malformed), the whole answer is content
    /// with the finish reason of the generation: the stream sends the rest of the text as
    /// content, so the content it sent adds up to the whole answer's, and the finish reason
    /// is not `tool_calls`. The call deltas it already sent cannot be taken back; the finish
    /// reason tells a client not to run them (OpenAI ends a call cut by `max_tokens` the
    /// same way, its deltas sent and `finish_reason: "length"`).
    fn openai_calls(&mut self, ev: Event, out: &mut Vec<Payload>) {
        if !self.opened {
            self.opened = true;
            out.push(Payload::Json(openai::chunk(
                &self.answer,
                Some(""),
                None,
                true,
            )));
        }
        let Some((text, calls)) = self.calls.as_mut() else {
            return;
        };
        let text = *text;
        match ev {
            Event::Token(t) => {
                self.index += 1;
                if self.stopped {
                    return;
                }
                self.text.push_str(&t.text);
                let stops = &self.answer.stop;
                // Text that cannot be part of a stop sequence.
                let mut safe = self.text.len();
                if let Some(cut) = stops
                    .iter()
                    .filter_map(|s| self.text.find(s.as_str()))
                    .min()
                {
                    self.text.truncate(cut);
                    self.stopped = true;
                    safe = cut;
                } else {
                    for s in stops {
                        for (i, _) in s.char_indices().skip(1) {
                            if self.text.ends_with(&s[..i]) {
                                safe = safe.min(self.text.len() - i);
                            }
                        }
                    }
                }
                let hold = match text {
                    CallText::Forced => Some(0),
                    CallText::Auto(syntax) => syntax.hold_from(&self.text),
                };
                let mut limit = hold.map_or(safe, |h| h.min(safe));
                // Whitespace before a call is not content: it waits for what follows.
                limit = self.text[..limit].trim_end().len();
                if limit > self.sent && self.text.is_char_boundary(limit) {
                    let piece = self.text[self.sent..limit].to_string();
                    self.sent = limit;
                    out.push(Payload::Json(openai::chunk(
                        &self.answer,
                        Some(&piece),
                        None,
                        false,
                    )));
                }
                if self.text.is_char_boundary(safe) {
                    for d in calls.update(&self.text[..safe]) {
                        out.push(Payload::Json(tool_delta(&self.answer, d)));
                    }
                }
            }
            Event::Done { reason, .. } => {
                let a = &self.answer;
                let parsed = match text {
                    // A forced call ends with the end of its grammar.
                    CallText::Forced if reason != FinishReason::EosToken => {
                        Parsed::text(&self.text)
                    }
                    _ => text.parse(&self.text),
                };
                let finish = if parsed.calls.is_empty() {
                    let content = parsed.content;
                    let rest = match (text, &content) {
                        (CallText::Forced, _) => &self.text[self.sent..],
                        (_, None) => "",
                        (CallText::Auto(ToolSyntax::Json), Some(c)) => c.as_str(),
                        (_, Some(_)) => &self.text[self.sent..],
                    };
                    if !rest.is_empty() {
                        out.push(Payload::Json(openai::chunk(a, Some(rest), None, false)));
                    }
                    reason.openai()
                } else {
                    let end = parsed.content_end.max(self.sent);
                    let before = self.text[self.sent..end].trim_end();
                    if !before.is_empty() {
                        out.push(Payload::Json(openai::chunk(a, Some(before), None, false)));
                    }
                    for d in calls.finish(&parsed.calls) {
                        out.push(Payload::Json(tool_delta(a, d)));
                    }
                    "tool_calls"
                };
                out.push(Payload::Json(openai::chunk(a, None, Some(finish), false)));
                self.openai_end(out);
            }
            Event::Failed(_) => {}
        }
    }

    /// The part of the pending text that can be sent ([`release`]).
    fn releasable(&mut self) -> String {
        release(&mut self.pending, &self.answer.stop, &mut self.stopped)
    }
}

/// The part of `pending` that can be sent: up to a stop sequence (then `stopped`, and
/// nothing more is sent), or all but the longest tail that could begin one.
fn release(pending: &mut String, stops: &[String], stopped: &mut bool) -> String {
    if let Some(cut) = stops.iter().filter_map(|s| pending.find(s.as_str())).min() {
        *stopped = true;
        let send = pending[..cut].to_string();
        pending.clear();
        return send;
    }
    let mut keep = 0;
    for s in stops {
        for (i, _) in s.char_indices().skip(1) {
            if pending.ends_with(&s[..i]) {
                keep = keep.max(i);
            }
        }
    }
    let at = pending.len() - keep;
    let send = pending[..at].to_string();
    pending.drain(..at);
    send
}

/// A chat chunk whose delta is `tool_calls`.
fn tool_delta(a: &AnswerContext, calls: Value) -> Value {
    let mut v = openai::chunk(a, None, None, false);
    v["choices"][0]["delta"] = json!({ "tool_calls": calls });
    v
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::generate::tool_syntax::ToolParsing;

    fn token(text: &str) -> Event {
        Event::Token(TokenEvent {
            id: 1,
            text: text.into(),
            logprob: 0.0,
            special: false,
        })
    }

    /// A client's calls after a `tool_calls` delta: a new index is a new call, a known one
    /// appends its arguments.
    fn accumulate(calls: &mut Vec<Value>, delta: &[Value]) {
        for d in delta {
            let i = d["index"].as_u64().unwrap() as usize;
            let piece = d["function"]["arguments"].as_str().unwrap();
            if i == calls.len() {
                calls.push(d.clone());
            } else {
                let args = format!(
                    "{}{piece}",
                    calls[i]["function"]["arguments"].as_str().unwrap()
                );
                calls[i]["function"]["arguments"] = json!(args);
            }
        }
    }

    /// A chat answer's context: a forced call (`tool_call`), or calls read as `tools`.
    fn chat_context(tool_call: bool, tools: Option<ToolParsing>) -> AnswerContext {
        AnswerContext {
            format: Format::Chat {
                include_usage: false,
                tool_call,
            },
            prompt_text: String::new(),
            prompt_tokens: 1,
            seed: None,
            stop: Vec::new(),
            model: "m".into(),
            id: "cmpl-1".into(),
            created: 0,
            tool_parsing: tools,
            reasoning: None,
        }
    }

    /// The content and the calls a stream of `pieces` sends under `tool_choice: "auto"`.
    fn auto_stream(
        syntax: ToolSyntax,
        parallel: bool,
        pieces: &[&str],
    ) -> (String, Vec<Value>, String) {
        let answer = chat_context(false, Some(ToolParsing { syntax, parallel }));
        calls_stream(answer, pieces, FinishReason::EosToken)
    }

    /// The content, the calls (accumulated) and the finish reason a stream of `pieces`
    /// ending for `reason` sends; content never follows a call delta.
    fn calls_stream(
        answer: AnswerContext,
        pieces: &[&str],
        reason: FinishReason,
    ) -> (String, Vec<Value>, String) {
        let out = stream_ending(answer, pieces, reason);
        let mut content_before_call = true;
        let (mut content, mut calls, mut finish) = (String::new(), Vec::new(), String::new());
        for p in &out {
            let Payload::Json(v) = p else { continue };
            let delta = &v["choices"][0]["delta"];
            if let Some(c) = delta["content"].as_str() {
                assert!(
                    content_before_call || reason != FinishReason::EosToken,
                    "content after a call"
                );
                content.push_str(c);
            }
            if let Some(t) = delta["tool_calls"].as_array() {
                content_before_call = false;
                accumulate(&mut calls, t);
            }
            if let Some(f) = v["choices"][0]["finish_reason"].as_str() {
                finish = f.into();
            }
        }
        (content, calls, finish)
    }

    #[test]
    fn a_call_cut_short_ends_as_the_whole_answer_does() {
        let hermes = Some(ToolParsing {
            syntax: ToolSyntax::Hermes,
            parallel: true,
        });
        let cases: [(bool, Option<ToolParsing>, &[&str]); 3] = [
            (
                false,
                hermes,
                &[
                    "Checking.",
                    "\n<tool_call>\n{\"name\": \"weather\", ",
                    "\"arguments\": {\"city\": \"Pa",
                ],
            ),
            (
                true,
                None,
                &["{\"name\":\"weather\",", "\"arguments\":{\"city\":", "\"Pa"],
            ),
            // Cut before the name: nothing was sent as a call.
            (true, None, &["{\"na"]),
        ];
        for (forced, tools, pieces) in cases {
            let (content, calls, finish) =
                calls_stream(chat_context(forced, tools), pieces, FinishReason::Length);
            let c = collected(pieces);
            let c = Collected {
                reason: FinishReason::Length,
                ..c
            };
            let whole = openai::whole_chat(&chat_context(forced, tools), &c);
            let choice = &whole["choices"][0];
            assert_eq!(choice["finish_reason"], "length");
            assert_eq!(finish, "length");
            assert!(choice["message"].get("tool_calls").is_none(), "{whole}");
            // The whole answer's content is all the text; so is what the stream sent.
            assert_eq!(choice["message"]["content"], pieces.concat());
            assert_eq!(content, pieces.concat());
            // The call begun was sent as written so far.
            if pieces.len() > 1 {
                assert_eq!(calls.len(), 1);
                assert_eq!(calls[0]["function"]["arguments"], "{\"city\":\"Pa");
            }
        }
    }

    #[test]
    fn a_streamed_answer_s_calls_grow_and_no_marker_is_content() {
        // One token a piece, as a model writes it; a reasoning-free Hermes answer.
        let text = "I will look.\n<tool_call>\n{\"name\": \"weather\", \"arguments\": {\"city\": \"Paris\", \"days\": 3}}\n</tool_call>";
        let chars: Vec<String> = text.chars().map(String::from).collect();
        let pieces: Vec<&str> = chars.iter().map(String::as_str).collect();
        let answer = || {
            chat_context(
                false,
                Some(ToolParsing {
                    syntax: ToolSyntax::Hermes,
                    parallel: true,
                }),
            )
        };
        let out = stream_ending(answer(), &pieces, FinishReason::EosToken);
        let (mut content, mut calls, mut argument_deltas) = (String::new(), Vec::new(), 0);
        for p in &out {
            let Payload::Json(v) = p else { continue };
            let delta = &v["choices"][0]["delta"];
            content.push_str(delta["content"].as_str().unwrap_or(""));
            if let Some(t) = delta["tool_calls"].as_array() {
                argument_deltas += 1;
                accumulate(&mut calls, t);
            }
        }
        assert_eq!(content, "I will look.");
        assert!(argument_deltas > 10, "{argument_deltas}");
        let whole = openai::whole_chat(&answer(), &collected(&pieces));
        let message = &whole["choices"][0]["message"];
        assert_eq!(message["content"], content);
        assert_eq!(calls[0]["function"], message["tool_calls"][0]["function"]);
        assert_eq!(
            calls[0]["function"]["arguments"],
            "{\"city\":\"Paris\",\"days\":3}"
        );
    }

    #[test]
    fn streamed_auto_calls_hold_text_from_the_opener_and_send_calls_as_written() {
        let pieces = ["Let me ", "check.\n<tool", "_call>\n{\"name\": \"weather\", ", "\"arguments\": {\"city\": \"Paris\"}}\n</tool_call>\n<tool_call>\n{\"name\": \"time\", \"arguments\": {}}\n</tool_call>"];
        let (content, calls, finish) = auto_stream(ToolSyntax::Hermes, true, &pieces);
        assert_eq!(content, "Let me check.");
        assert_eq!(finish, "tool_calls");
        assert_eq!(calls.len(), 2);
        assert_eq!(calls[0]["function"]["name"], "weather");
        assert_eq!(calls[0]["function"]["arguments"], "{\"city\":\"Paris\"}");
        assert_eq!(
            (calls[0]["index"].clone(), calls[1]["index"].clone()),
            (json!(0), json!(1))
        );
        assert!(calls[1]["id"].as_str().unwrap().starts_with("call_"));
        let (_, calls, _) = auto_stream(ToolSyntax::Hermes, false, &pieces);
        assert_eq!(calls.len(), 1);
        // A held partial opener that turns out to be text is sent.
        let (content, calls, finish) =
            auto_stream(ToolSyntax::Hermes, true, &["a <tool", "box> b"]);
        assert_eq!(
            (content.as_str(), calls.len(), finish.as_str()),
            ("a <toolbox> b", 0, "stop")
        );
        // The generic JSON format sends its response as content.
        let (content, calls, _) =
            auto_stream(ToolSyntax::Json, true, &["{\"response\": ", "\"Hi!\"}"]);
        assert_eq!((content.as_str(), calls.len()), ("Hi!", 0));
    }

    #[test]
    fn streamed_mistral_args_calls_hold_text_from_the_opener_and_keep_the_model_s_ids() {
        // The markers arrive as pieces of their own (control tokens kept as text).
        let pieces = [
            "Checking",
            " now.",
            "[TOOL_CALLS]",
            "weather",
            "[ARGS]",
            "{\"city\": ",
            "\"Paris\"}",
            "[TOOL_CALLS]",
            "add",
            "[CALL_ID]",
            "a1B2c3D4e",
            "[ARGS]",
            "{\"a\": 1}",
        ];
        let (content, calls, finish) = auto_stream(ToolSyntax::MistralArgs, true, &pieces);
        assert_eq!(content, "Checking now.");
        assert_eq!(finish, "tool_calls");
        assert_eq!(calls.len(), 2);
        assert_eq!(calls[0]["function"]["name"], "weather");
        assert_eq!(calls[0]["function"]["arguments"], "{\"city\":\"Paris\"}");
        let id = calls[0]["id"].as_str().unwrap();
        assert!(
            id.len() == 9 && id.bytes().all(|b| b.is_ascii_alphanumeric()),
            "{id}"
        );
        assert_eq!(calls[1]["id"], "a1B2c3D4e");
        assert_eq!(calls[1]["index"], 1);
        // A partial opener is held, then sent when it is not one.
        let (content, calls, _) =
            auto_stream(ToolSyntax::MistralArgs, true, &["see [TOOL", "S] list"]);
        assert_eq!((content.as_str(), calls.len()), ("see [TOOLS] list", 0));
    }

    /// A chat answer of a reasoning model (`<think>` tags; `open`: the prompt opened the
    /// block), with usage.
    fn reasoning_answer(open: bool, tools: Option<ToolParsing>, stop: &[&str]) -> AnswerContext {
        use crate::generate::reasoning::{ReasoningParsing, ThinkingTags};
        AnswerContext {
            format: Format::Chat {
                include_usage: true,
                tool_call: false,
            },
            prompt_text: String::new(),
            prompt_tokens: 1,
            seed: None,
            stop: stop.iter().map(|s| s.to_string()).collect(),
            model: "m".into(),
            id: "cmpl-1".into(),
            created: 0,
            tool_parsing: tools,
            reasoning: Some(ReasoningParsing {
                tags: ThinkingTags {
                    start: "<think>",
                    end: "</think>",
                },
                open,
            }),
        }
    }

    /// The payloads a stream sends for `pieces`, then the end of generation.
    fn stream_of(answer: AnswerContext, pieces: &[&str]) -> Vec<Payload> {
        stream_ending(answer, pieces, FinishReason::EosToken)
    }

    /// The payloads a stream sends for `pieces`, then the end of generation for `reason`.
    fn stream_ending(answer: AnswerContext, pieces: &[&str], reason: FinishReason) -> Vec<Payload> {
        let mut w = StreamWriter::new(answer);
        let mut out = Vec::new();
        for p in pieces {
            w.event(token(p), &mut out);
        }
        w.event(
            Event::Done {
                reason,
                generated_tokens: pieces.len(),
                prompt_tokens: 1,
                cached_tokens: 0,
            },
            &mut out,
        );
        out
    }

    /// What a stream of `pieces` sends: reasoning, content, calls, usage.
    fn reasoning_stream(
        answer: AnswerContext,
        pieces: &[&str],
    ) -> (String, String, Vec<Value>, Value) {
        let out = stream_of(answer, pieces);
        let (mut reasoning, mut content, mut calls, mut usage) =
            (String::new(), String::new(), Vec::new(), Value::Null);
        for p in &out {
            let Payload::Json(v) = p else { continue };
            let delta = &v["choices"][0]["delta"];
            if let Some(r) = delta["reasoning_content"].as_str() {
                assert!(
                    content.is_empty() && calls.is_empty(),
                    "reasoning after content"
                );
                reasoning.push_str(r);
            }
            if let Some(c) = delta["content"].as_str() {
                content.push_str(c);
            }
            if let Some(t) = delta["tool_calls"].as_array() {
                accumulate(&mut calls, t);
            }
            if !v["usage"].is_null() {
                usage = v["usage"].clone();
            }
        }
        (reasoning, content, calls, usage)
    }

    fn collected(pieces: &[&str]) -> Collected {
        let tokens = pieces
            .iter()
            .map(|p| TokenEvent {
                id: 1,
                text: p.to_string(),
                logprob: 0.0,
                special: false,
            })
            .collect();
        Collected {
            tokens,
            reason: FinishReason::EosToken,
            cached_tokens: 0,
        }
    }

    #[test]
    fn streamed_reasoning_is_sent_apart_and_adds_up_to_the_whole_answer() {
        let cases: [(bool, &[&str], &str, &str, usize); 3] = [
            (
                false,
                &[
                    "<thi",
                    "nk>\nI should",
                    " think.\n</th",
                    "ink>\n\nIt is ",
                    "4.",
                ],
                "I should think.",
                "It is 4.",
                3,
            ),
            (true, &["\nhmm", "</think>", "\n\n", "ok"], "hmm", "ok", 2),
            // Cut before the end tag: all reasoning.
            (
                true,
                &["\nstill", " going </thi"],
                "still going </thi",
                "",
                2,
            ),
        ];
        for (open, pieces, want_reasoning, want_content, n) in cases {
            let (reasoning, content, _, usage) =
                reasoning_stream(reasoning_answer(open, None, &[]), pieces);
            assert_eq!(
                (reasoning.as_str(), content.as_str()),
                (want_reasoning, want_content)
            );
            assert_eq!(usage["completion_tokens_details"]["reasoning_tokens"], n);
            assert_eq!(usage["completion_tokens"], pieces.len());
            let whole = openai::whole_chat(&reasoning_answer(open, None, &[]), &collected(pieces));
            let message = &whole["choices"][0]["message"];
            assert_eq!(message["content"], want_content);
            assert_eq!(message["reasoning_content"], json!(want_reasoning));
            assert_eq!(whole["usage"], usage);
        }
    }

    #[test]
    fn calls_and_stop_sequences_are_read_from_the_content_only() {
        let tools = Some(ToolParsing {
            syntax: ToolSyntax::Hermes,
            parallel: true,
        });
        // A call written in the reasoning is thought, not called.
        let pieces = [
            "<think>\nMaybe <tool_call>{\"name\": \"x\", \"arguments\": {}}</tool_call>?",
            "</think>\n\n",
            "<tool_call>\n{\"name\": \"weather\", \"arguments\": {\"city\": \"Paris\"}}\n</tool_call>",
        ];
        let (reasoning, content, calls, _) =
            reasoning_stream(reasoning_answer(false, tools, &[]), &pieces);
        assert!(reasoning.starts_with("Maybe <tool_call>"), "{reasoning}");
        assert_eq!(content, "");
        assert_eq!(calls.len(), 1);
        assert_eq!(calls[0]["function"]["name"], "weather");
        let whole = openai::whole_chat(&reasoning_answer(false, tools, &[]), &collected(&pieces));
        assert_eq!(whole["choices"][0]["finish_reason"], "tool_calls");
        assert_eq!(
            whole["choices"][0]["message"]["reasoning_content"],
            json!(reasoning)
        );
        let whole_calls = whole["choices"][0]["message"]["tool_calls"]
            .as_array()
            .unwrap();
        assert_eq!(whole_calls.len(), 1);
        // A stop sequence cuts the reasoning too, split across tokens or not.
        let pieces = ["<think>a b S", "TOP c</think>d"];
        let (reasoning, content, _, _) =
            reasoning_stream(reasoning_answer(false, None, &["STOP"]), &pieces);
        assert_eq!((reasoning.as_str(), content.as_str()), ("a b", ""));
        let whole = openai::whole_chat(
            &reasoning_answer(false, None, &["STOP"]),
            &collected(&pieces),
        );
        assert_eq!(whole["choices"][0]["message"]["reasoning_content"], "a b");
        assert_eq!(whole["choices"][0]["message"]["content"], "");
    }

    #[test]
    fn streamed_openai_text_never_shows_a_stop_sequence() {
        let answer = AnswerContext {
            format: Format::Completion {
                echo: false,
                include_usage: false,
            },
            prompt_text: String::new(),
            prompt_tokens: 1,
            seed: None,
            stop: vec!["END".into()],
            model: "m".into(),
            id: "cmpl-1".into(),
            created: 0,
            tool_parsing: None,
            reasoning: None,
        };
        let mut w = StreamWriter::new(answer);
        let mut out = Vec::new();
        for piece in ["hello E", "N", "D tail"] {
            w.event(
                Event::Token(TokenEvent {
                    id: 1,
                    text: piece.into(),
                    logprob: 0.0,
                    special: false,
                }),
                &mut out,
            );
        }
        w.event(
            Event::Done {
                reason: FinishReason::StopSequence,
                generated_tokens: 3,
                prompt_tokens: 1,
                cached_tokens: 0,
            },
            &mut out,
        );
        let texts: String = out
            .iter()
            .filter_map(|p| match p {
                Payload::Json(v) => v["choices"][0]["text"].as_str().map(str::to_string),
                Payload::Done => None,
            })
            .collect();
        assert_eq!(texts, "hello ");
        assert_eq!(out.last(), Some(&Payload::Done));
    }
}
