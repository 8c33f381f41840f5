//! Writes a generation's answer in the style its call asked for: whole, from everything the
//! sequence produced, or streamed, one JSON payload per Server-Sent Event as the engine's
//! events come (the front end adds the SSE framing).

use serde_json::{json, Value};

use super::generation::{AnswerContext, Collected, Format};
use super::tools::CallStream;
use super::{openai, tgi, upstream};
use crate::generate::engine::{Event, FinishReason, TokenEvent};
use crate::generate::reasoning::ReasoningSplit;
use crate::generate::tool_syntax::json as json_format;
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
    /// Bytes of the generic JSON format's `response` sent as content.
    response_sent: usize,
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
            response_sent: 0,
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
    /// ([`CallStream`]), then `finish_reason: "tool_calls"`. The generic JSON format's answer
    /// is JSON from its first byte: its `response` string is sent as content as it is written
    /// ([`json_format::partial_response`]).
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
                    // The generic JSON format's answer in words is sent as it is written.
                    let response = match text {
                        CallText::Auto(ToolSyntax::Json) => {
                            json_format::partial_response(&self.text[..safe])
                        }
                        _ => None,
                    };
                    if let Some(piece) = response
                        .as_deref()
                        .and_then(|r| r.get(self.response_sent..))
                    {
                        if !piece.is_empty() {
                            self.response_sent += piece.len();
                            out.push(Payload::Json(openai::chunk(
                                &self.answer,
                                Some(piece),
                                None,
                                false,
                            )));
                        }
                    }
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
                        // What was streamed is a prefix of the response.
                        (CallText::Auto(ToolSyntax::Json), Some(c)) => {
                            c.get(self.response_sent..).unwrap_or_default()
                        }
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
#[path = "answer_tests.rs"]
mod tests;
