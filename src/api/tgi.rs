//! Hugging Face TGI's generation bodies: `POST /generate` and `POST /generate_stream`
//! (`{"inputs", "parameters"}`), `POST /` on a generation model (what `huggingface_hub`'s
//! `InferenceClient.text_generation` sends, streamed when it says `"stream": true`), and the
//! answers: `{"generated_text", "details"?}` whole, one event per token streamed.

use serde::Deserialize;
use serde_json::{json, Value};

use super::generation::{
    positive, stops, AnswerContext, Collected, Format, GenerateCall, Sampling,
};
use super::structured::TgiGrammar;
use crate::error::ServiceError;
use crate::generate::engine::{FinishReason, TokenEvent};
use crate::generate::service::{GenerateRequest, Length, Prompt};

/// What the TGI routes expect.
pub const EXPECTS: &str = r#"e.g. {"inputs": "a prompt", "parameters": {"max_new_tokens": 20}}"#;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TgiRequest {
    inputs: String,
    #[serde(default)]
    parameters: TgiParameters,
    /// Streams the answer on `POST /` (TGI's `/` dispatches on it); `/generate` ignores it, as
    /// TGI does, and `/generate_stream` always streams.
    #[serde(default)]
    stream: Option<bool>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct TgiParameters {
    max_new_tokens: Option<i64>,
    temperature: Option<f32>,
    top_k: Option<i64>,
    top_p: Option<f32>,
    typical_p: Option<f32>,
    min_p: Option<f32>,
    repetition_penalty: Option<f32>,
    seed: Option<u64>,
    stop: Option<Vec<String>>,
    do_sample: Option<bool>,
    return_full_text: Option<bool>,
    details: Option<bool>,
    /// Not TGI's: keep generating past end-of-sequence tokens (for load tests).
    ignore_eos: Option<bool>,
    /// Structured output: `{"type": "json" | "regex" | "lark", "value": ...}`.
    grammar: Option<TgiGrammar>,
}

/// Which route a TGI body came to: it decides whether the answer streams.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TgiRoute {
    /// `/generate`: a whole answer.
    Generate,
    /// `/generate_stream`: always Server-Sent Events.
    GenerateStream,
    /// `/`: streamed when the body says `"stream": true`.
    Root,
}

/// Parses a body of `/generate`, `/generate_stream` or `POST /` on a generation model: TGI's
/// shape, or (on `/generate` only) the upstream application's `{"text"}`.
pub fn parse_generate(
    body: &[u8],
    route: TgiRoute,
    defaults: &crate::generate::sampling::SamplingDefaults,
) -> Result<GenerateCall, ServiceError> {
    let value: Value = super::from_json(body, EXPECTS)?;
    if route == TgiRoute::Generate && super::upstream::is_upstream(&value) {
        return super::upstream::parse(value, defaults);
    }
    parse(value, route)
}

/// Parses a TGI body. TGI keeps its own meaning for sampling: greedy unless the request asks
/// for sampling (`do_sample`, or any sampling setting); the model's defaults do not apply.
pub fn parse(value: Value, route: TgiRoute) -> Result<GenerateCall, ServiceError> {
    let r: TgiRequest = serde_json::from_value(value)
        .map_err(|e| ServiceError::Invalid(format!("invalid JSON body: {e}")))?;
    let p = r.parameters;
    let params = Sampling {
        do_sample: p.do_sample,
        temperature: p.temperature,
        top_k: p.top_k,
        top_p: p.top_p,
        typical_p: p.typical_p,
        min_p: p.min_p,
        repetition_penalty: p.repetition_penalty,
        seed: p.seed,
    }
    .checked(false)?;
    let length = match positive("max_new_tokens", p.max_new_tokens)? {
        Some(n) => Length::Asked {
            n,
            field: "max_new_tokens",
        },
        None => Length::Default(None),
    };
    let stream = match route {
        TgiRoute::Generate => false,
        TgiRoute::GenerateStream => true,
        TgiRoute::Root => r.stream.unwrap_or(false),
    };
    Ok(GenerateCall {
        request: GenerateRequest {
            prompt: Prompt::Text(r.inputs),
            params,
            length,
            stop: stops(p.stop)?,
            ignore_eos: p.ignore_eos.unwrap_or(false),
            grammar: p.grammar.map(TgiGrammar::grammar).transpose()?,
            tools: None,
            split_reasoning: None,
            logit_bias: Vec::new(),
        },
        format: Format::Tgi {
            details: p.details.unwrap_or(false),
            return_full_text: p.return_full_text.unwrap_or(false),
        },
        stream,
    })
}

/// One token as TGI shows it.
pub fn token_json(t: &TokenEvent) -> Value {
    json!({ "id": t.id, "text": t.text, "logprob": t.logprob, "special": t.special })
}

/// The whole answer.
pub fn whole(a: &AnswerContext, c: &Collected, details: bool, return_full_text: bool) -> Value {
    let text = c.text();
    let generated_text = if return_full_text {
        format!("{}{}", a.prompt_text, text)
    } else {
        text
    };
    if !details {
        return json!({ "generated_text": generated_text });
    }
    json!({
        "generated_text": generated_text,
        "details": {
            "finish_reason": c.reason.tgi(),
            "generated_tokens": c.tokens.len(),
            "seed": a.seed,
            "prefill": [],
            "tokens": c.tokens.iter().map(token_json).collect::<Vec<_>>(),
        }
    })
}

/// One streamed token event: `index` counts from 1; the last event (`end`) carries the whole
/// text (`full_text` puts the prompt in front, as `return_full_text` asks) and the details.
pub fn stream_event(
    a: &AnswerContext,
    t: &TokenEvent,
    index: usize,
    text_so_far: &str,
    end: Option<(FinishReason, bool)>,
) -> Value {
    let (generated_text, details) = match end {
        Some((reason, full)) => (
            Value::String(if full {
                format!("{}{text_so_far}", a.prompt_text)
            } else {
                text_so_far.to_string()
            }),
            json!({
                "finish_reason": reason.tgi(),
                "generated_tokens": index,
                "seed": a.seed,
            }),
        ),
        None => (Value::Null, Value::Null),
    };
    json!({
        "index": index,
        "token": token_json(t),
        "generated_text": generated_text,
        "details": details,
        "top_tokens": null,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn call(body: &str) -> Result<GenerateCall, ServiceError> {
        parse_generate(body.as_bytes(), TgiRoute::Generate, &Default::default())
    }

    #[test]
    fn invalid_settings_are_refused_naming_the_field() {
        for (body, field) in [
            (
                r#"{"inputs":"a","parameters":{"temperature":-1}}"#,
                "temperature",
            ),
            (r#"{"inputs":"a","parameters":{"top_p":1.5}}"#, "top_p"),
            (r#"{"inputs":"a","parameters":{"top_p":0}}"#, "top_p"),
            (r#"{"inputs":"a","parameters":{"top_k":0}}"#, "top_k"),
            (
                r#"{"inputs":"a","parameters":{"max_new_tokens":0}}"#,
                "max_new_tokens",
            ),
            (
                r#"{"inputs":"a","parameters":{"repetition_penalty":0}}"#,
                "repetition_penalty",
            ),
            (r#"{"inputs":"a","parameters":{"bogus":1}}"#, "bogus"),
            (r#"{"inputs":"a","extra":1}"#, "extra"),
            (r#"{"text":"a","temperature":1}"#, "temperature"),
            (
                r#"{"inputs":"a","parameters":{"stop":["a","b","c","d","e","f","g","h","i"]}}"#,
                "stop",
            ),
        ] {
            match call(body) {
                Err(ServiceError::Invalid(m)) => assert!(m.contains(field), "{body}: {m}"),
                other => panic!("{body}: {other:?}"),
            }
        }
        let long_stop = format!(
            r#"{{"inputs":"a","parameters":{{"stop":["{}"]}}}}"#,
            "x".repeat(257)
        );
        assert!(matches!(call(&long_stop), Err(ServiceError::Invalid(m)) if m.contains("stop")));
    }

    #[test]
    fn tgi_is_greedy_unless_asked() {
        assert!(!call(r#"{"inputs":"a"}"#).unwrap().request.params.do_sample);
        assert!(
            call(r#"{"inputs":"a","parameters":{"top_k":5}}"#)
                .unwrap()
                .request
                .params
                .do_sample
        );
        assert!(
            !call(r#"{"inputs":"a","parameters":{"temperature":0}}"#)
                .unwrap()
                .request
                .params
                .do_sample
        );
    }

    #[test]
    fn the_root_route_streams_when_asked_and_generate_never_does() {
        let body = || serde_json::json!({"inputs": "a", "stream": true});
        assert!(parse(body(), TgiRoute::Root).unwrap().stream);
        assert!(!parse(body(), TgiRoute::Generate).unwrap().stream);
        assert!(
            parse(serde_json::json!({"inputs": "a"}), TgiRoute::GenerateStream)
                .unwrap()
                .stream
        );
        assert!(
            !parse(serde_json::json!({"inputs": "a"}), TgiRoute::Root)
                .unwrap()
                .stream
        );
    }
}
