//! Tests of the answer writers: whole answers, streams, tool calls growing in a stream.

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
    let (content, calls, finish) = auto_stream(ToolSyntax::Hermes, true, &["a <tool", "box> b"]);
    assert_eq!(
        (content.as_str(), calls.len(), finish.as_str()),
        ("a <toolbox> b", 0, "stop")
    );
    // The generic JSON format sends its response as content.
    let (content, calls, _) = auto_stream(ToolSyntax::Json, true, &["{\"response\": ", "\"Hi!\"}"]);
    assert_eq!((content.as_str(), calls.len()), ("Hi!", 0));
}

#[test]
fn the_generic_json_format_streams_its_response_as_it_is_written() {
    let answer = || {
        chat_context(
            false,
            Some(ToolParsing {
                syntax: ToolSyntax::Json,
                parallel: false,
            }),
        )
    };
    let pieces = ["{\"response\": \"Caf", "\\u00", "e9 \\\"o", "k\\\"", "!\"}"];
    let mut deltas = Vec::new();
    for p in stream_of(answer(), &pieces) {
        let Payload::Json(v) = p else { continue };
        if let Some(c) = v["choices"][0]["delta"]["content"].as_str() {
            if !c.is_empty() {
                deltas.push(c.to_string());
            }
        }
    }
    // Sent piece by piece, an escape only once it is whole, nothing again at the end.
    assert_eq!(deltas, ["Caf", "é \"o", "k\"", "!"]);
    let whole = openai::whole_chat(&answer(), &collected(&pieces));
    assert_eq!(whole["choices"][0]["message"]["content"], deltas.concat());
    // Cut by max_tokens: the stream and the whole answer both say what was written so far.
    let cut = ["{\"response\": \"Hello", " wor"];
    let (content, calls, finish) = calls_stream(answer(), &cut, FinishReason::Length);
    assert_eq!(
        (content.as_str(), calls.len(), finish.as_str()),
        ("Hello wor", 0, "length")
    );
    let c = Collected {
        reason: FinishReason::Length,
        ..collected(&cut)
    };
    let whole = openai::whole_chat(&answer(), &c);
    assert_eq!(whole["choices"][0]["message"]["content"], "Hello wor");
    // A call is still sent as a call.
    let (content, calls, finish) = auto_stream(
        ToolSyntax::Json,
        false,
        &[
            "{\"tool_calls\": [{\"name\": \"weather\", ",
            "\"arguments\": {\"city\": \"Oslo\"}}]}",
        ],
    );
    assert_eq!(
        (content.as_str(), calls.len(), finish.as_str()),
        ("", 1, "tool_calls")
    );
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
    let (content, calls, _) = auto_stream(ToolSyntax::MistralArgs, true, &["see [TOOL", "S] list"]);
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
fn reasoning_stream(answer: AnswerContext, pieces: &[&str]) -> (String, String, Vec<Value>, Value) {
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
