//! OpenAI's bodies: `POST /v1/embeddings`, `POST /v1/completions` and
//! `POST /v1/chat/completions` (streamed with `"stream": true`), and their answers.
//!
//! Settings OpenAI has and this server does not implement are refused by name, never ignored;
//! the model's own sampling settings fill what a request leaves out (as vLLM does).

use std::collections::HashMap;

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use super::chat_messages::{read_messages, ChatMessageIn};
use super::generation::{
    bad, positive, stops, AnswerContext, Collected, Format, GenerateCall, Sampling, StringOrList,
};
use super::structured::{openai_grammar, ResponseFormat, StructuredOutputs};
use super::tools::{openai_calls, plan, Tool, ToolChoice};
use super::{check_count, from_json, Inputs};
use crate::error::ServiceError;
use crate::generate::chat::{check_kwargs, TemplateKwargs};
use crate::generate::engine::FinishReason;
use crate::generate::grammar::Grammar;
use crate::generate::reasoning::{split_tokens, ReasoningFormat};
use crate::generate::sampling::SamplingDefaults;
use crate::generate::service::{GenerateRequest, Length, Prompt};
use crate::generate::tool_syntax::CallText;

/// OpenAI's default `max_tokens` for completions.
pub const COMPLETIONS_MAX_TOKENS: usize = 16;

/// What `/v1/embeddings` expects.
pub const EMBEDDINGS_EXPECTS: &str = r#"e.g. {"input": "a text", "model": "all-MiniLM-L6-v2"}"#;
/// What `/v1/completions` expects.
pub const COMPLETIONS_EXPECTS: &str = r#"e.g. {"prompt": "Once upon a time", "max_tokens": 20}"#;
/// What `/v1/chat/completions` expects.
pub const CHAT_EXPECTS: &str = r#"e.g. {"messages": [{"role": "user", "content": "Hello!"}]}"#;

// ---------------------------------------------------------------------------------------------
// Embeddings
// ---------------------------------------------------------------------------------------------

/// `encoding_format` of the embeddings route.
#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum EncodingFormat {
    #[default]
    Float,
    Base64,
}

/// `POST /v1/embeddings`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EmbeddingsRequest {
    pub input: Inputs,
    #[serde(default)]
    pub model: Option<String>,
    #[serde(default)]
    pub encoding_format: EncodingFormat,
    /// Accepted when equal to the model's dimensions (vectors cannot be shortened).
    #[serde(default)]
    pub dimensions: Option<usize>,
    #[serde(default)]
    pub user: Option<String>,
}

impl EmbeddingsRequest {
    /// Parses and checks a body.
    pub fn parse(body: &[u8], max_client_batch: usize) -> Result<Self, ServiceError> {
        let r: Self = from_json(body, EMBEDDINGS_EXPECTS)?;
        check_count(r.input.0.len(), max_client_batch)?;
        Ok(r)
    }
}

#[derive(Debug, Serialize)]
struct EmbeddingsResponse {
    object: &'static str,
    data: Vec<Embedding>,
    model: String,
    usage: EmbeddingsUsage,
}

#[derive(Debug, Serialize)]
struct Embedding {
    object: &'static str,
    index: usize,
    embedding: EmbeddingData,
}

/// A vector as numbers or as base64 of its little-endian f32 bytes.
#[derive(Debug, Serialize)]
#[serde(untagged)]
enum EmbeddingData {
    Float(Vec<f32>),
    Base64(String),
}

#[derive(Debug, Serialize)]
struct EmbeddingsUsage {
    prompt_tokens: usize,
    total_tokens: usize,
}

/// The embeddings answer.
pub fn embeddings_answer(
    vectors: Vec<Vec<f32>>,
    tokens: usize,
    model: String,
    format: EncodingFormat,
) -> Vec<u8> {
    let data = vectors
        .into_iter()
        .enumerate()
        .map(|(index, v)| Embedding {
            object: "embedding",
            index,
            embedding: match format {
                EncodingFormat::Float => EmbeddingData::Float(v),
                EncodingFormat::Base64 => EmbeddingData::Base64(base64_f32(&v)),
            },
        })
        .collect();
    let body = EmbeddingsResponse {
        object: "list",
        data,
        model,
        usage: EmbeddingsUsage {
            prompt_tokens: tokens,
            total_tokens: tokens,
        },
    };
    serde_json::to_vec(&body).expect("an embeddings answer serializes")
}

/// Base64 of the little-endian f32 bytes, as OpenAI encodes `encoding_format: "base64"`.
pub fn base64_f32(v: &[f32]) -> String {
    use base64::Engine;
    let bytes: Vec<u8> = v.iter().flat_map(|x| x.to_le_bytes()).collect();
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

// ---------------------------------------------------------------------------------------------
// Completions and chat
// ---------------------------------------------------------------------------------------------

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct StreamOptions {
    #[serde(default)]
    include_usage: bool,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CompletionRequest {
    prompt: StringOrList,
    #[serde(default)]
    echo: bool,
    logprobs: Option<Value>,
    best_of: Option<i64>,
    suffix: Option<String>,
    // serde's flatten does not combine with deny_unknown_fields: the shared fields are listed.
    model: Option<String>,
    max_tokens: Option<i64>,
    temperature: Option<f32>,
    top_p: Option<f32>,
    stop: Option<StringOrList>,
    seed: Option<u64>,
    n: Option<i64>,
    #[serde(default)]
    stream: bool,
    stream_options: Option<StreamOptions>,
    presence_penalty: Option<f32>,
    frequency_penalty: Option<f32>,
    user: Option<String>,
    /// Not OpenAI's: keep generating past end-of-sequence tokens (for load tests).
    ignore_eos: Option<bool>,
    response_format: Option<ResponseFormat>,
    /// vLLM's structured-output field.
    structured_outputs: Option<StructuredOutputs>,
    logit_bias: Option<HashMap<String, f32>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ChatRequest {
    messages: Vec<ChatMessageIn>,
    /// Further variables for the chat template (vLLM's and llama.cpp's field: Qwen3's
    /// `enable_thinking`).
    chat_template_kwargs: Option<TemplateKwargs>,
    max_completion_tokens: Option<i64>,
    logprobs: Option<bool>,
    model: Option<String>,
    max_tokens: Option<i64>,
    temperature: Option<f32>,
    top_p: Option<f32>,
    stop: Option<StringOrList>,
    seed: Option<u64>,
    n: Option<i64>,
    #[serde(default)]
    stream: bool,
    stream_options: Option<StreamOptions>,
    presence_penalty: Option<f32>,
    frequency_penalty: Option<f32>,
    user: Option<String>,
    ignore_eos: Option<bool>,
    response_format: Option<ResponseFormat>,
    /// vLLM's structured-output field.
    structured_outputs: Option<StructuredOutputs>,
    logit_bias: Option<HashMap<String, f32>>,
    tools: Option<Vec<Tool>>,
    tool_choice: Option<ToolChoice>,
    /// Under `tool_choice: "auto"`, false keeps at most one call; a forced call is one call.
    parallel_tool_calls: Option<bool>,
    /// llama.cpp's: `"none"` keeps a reasoning model's thinking inline in `content`;
    /// `"deepseek"` or `"auto"` answer it as `reasoning_content` (the server's default,
    /// `--reasoning-format`, when absent).
    reasoning_format: Option<String>,
}

/// The settings both routes share.
struct Common {
    max_tokens: Option<i64>,
    temperature: Option<f32>,
    top_p: Option<f32>,
    stop: Option<StringOrList>,
    seed: Option<u64>,
    stream: bool,
    include_usage: bool,
    ignore_eos: Option<bool>,
    grammar: Option<Grammar>,
    logit_bias: Option<HashMap<String, f32>>,
}

/// The most entries `logit_bias` may have (OpenAI's limit).
pub const MAX_LOGIT_BIAS: usize = 300;

/// OpenAI's `logit_bias`: token ids (as JSON object keys) to a bias from −100 to 100, added
/// to the token's logit before sampling (the vocabulary is checked by the service).
fn logit_bias(bias: Option<HashMap<String, f32>>) -> Result<Vec<(u32, f32)>, ServiceError> {
    let bias = bias.unwrap_or_default();
    if bias.len() > MAX_LOGIT_BIAS {
        return Err(bad(format!(
            "logit_bias may hold at most {MAX_LOGIT_BIAS} tokens (got {})",
            bias.len()
        )));
    }
    let mut out: Vec<(u32, f32)> = bias
        .into_iter()
        .map(|(k, v)| {
            let id = k
                .parse::<u32>()
                .map_err(|_| bad(format!("logit_bias keys are token ids (got {k:?})")))?;
            if !(-100.0..=100.0).contains(&v) {
                return Err(bad(format!(
                    "logit_bias values are from -100 to 100 (got {v} for token {id})"
                )));
            }
            Ok((id, v))
        })
        .collect::<Result<_, _>>()?;
    out.sort_unstable_by_key(|(id, _)| *id);
    Ok(out)
}

/// Refuses OpenAI settings this server does not implement, naming them.
fn unsupported(
    n: Option<i64>,
    presence_penalty: Option<f32>,
    frequency_penalty: Option<f32>,
) -> Result<(), ServiceError> {
    if let Some(n) = n {
        if n != 1 {
            return Err(bad(format!(
                "n must be 1 (got {n}): one choice per request"
            )));
        }
    }
    for (name, v) in [
        ("presence_penalty", presence_penalty),
        ("frequency_penalty", frequency_penalty),
    ] {
        if v.is_some_and(|v| v != 0.0) {
            return Err(bad(format!(
                "{name} is not supported (only 0); use repetition_penalty on /generate"
            )));
        }
    }
    Ok(())
}

/// Parses `POST /v1/completions`.
pub fn parse_completion(
    body: &[u8],
    defaults: &SamplingDefaults,
) -> Result<GenerateCall, ServiceError> {
    let r: CompletionRequest = from_json(body, COMPLETIONS_EXPECTS)?;
    unsupported(r.n, r.presence_penalty, r.frequency_penalty)?;
    if r.logprobs.as_ref().is_some_and(|v| !v.is_null()) {
        return Err(bad(
            "logprobs is not supported on /v1/completions; use /generate with details: true",
        ));
    }
    if r.best_of.is_some_and(|b| b != 1) {
        return Err(bad("best_of must be 1"));
    }
    if r.suffix.is_some() {
        return Err(bad("suffix is not supported"));
    }
    let _ = (r.model, r.user);
    let prompt = match r.prompt.into_vec() {
        v if v.len() == 1 => v.into_iter().next().unwrap_or_default(),
        v => {
            return Err(bad(format!(
                "prompt must be one string (got a list of {})",
                v.len()
            )))
        }
    };
    let common = Common {
        max_tokens: r.max_tokens,
        temperature: r.temperature,
        top_p: r.top_p,
        stop: r.stop,
        seed: r.seed,
        stream: r.stream,
        include_usage: r.stream_options.is_some_and(|o| o.include_usage),
        ignore_eos: r.ignore_eos,
        grammar: openai_grammar(r.response_format, r.structured_outputs)?,
        logit_bias: r.logit_bias,
    };
    let format = Format::Completion {
        echo: r.echo,
        include_usage: common.include_usage,
    };
    call(
        Prompt::Text(prompt),
        common,
        defaults,
        Some(COMPLETIONS_MAX_TOKENS),
        format,
    )
}

/// Parses `POST /v1/chat/completions`.
pub fn parse_chat(body: &[u8], defaults: &SamplingDefaults) -> Result<GenerateCall, ServiceError> {
    let r: ChatRequest = from_json(body, CHAT_EXPECTS)?;
    unsupported(r.n, r.presence_penalty, r.frequency_penalty)?;
    if r.logprobs == Some(true) {
        return Err(bad("logprobs is not supported on /v1/chat/completions"));
    }
    let _ = (r.model, r.user);
    let messages = read_messages(r.messages)?;
    let tools = plan(r.tools, r.tool_choice, r.parallel_tool_calls)?;
    let mut grammar = openai_grammar(r.response_format, r.structured_outputs)?;
    let mut kwargs = r.chat_template_kwargs.unwrap_or_default();
    check_kwargs(&kwargs).map_err(bad)?;
    if let Some(forced) = &tools.forced {
        if grammar.is_some() {
            return Err(bad(
                "give response_format (or structured_outputs) or a forced tool call, not both",
            ));
        }
        grammar = Some(forced.clone());
    }
    if let Some(template_tools) = tools.template_tools {
        kwargs.insert("tools".into(), template_tools);
    }
    let common = Common {
        max_tokens: r.max_completion_tokens.or(r.max_tokens),
        temperature: r.temperature,
        top_p: r.top_p,
        stop: r.stop,
        seed: r.seed,
        stream: r.stream,
        include_usage: r.stream_options.is_some_and(|o| o.include_usage),
        ignore_eos: r.ignore_eos,
        grammar,
        logit_bias: r.logit_bias,
    };
    let format = Format::Chat {
        include_usage: common.include_usage,
        tool_call: tools.forced.is_some(),
    };
    let prompt = Prompt::Chat { messages, kwargs };
    let mut c = call(prompt, common, defaults, None, format)?;
    c.request.tools = tools.auto;
    c.request.split_reasoning = match r.reasoning_format {
        Some(f) => Some(f.parse::<ReasoningFormat>().map_err(bad)?.splits()),
        None => None,
    };
    Ok(c)
}

/// The call both routes make. `default_new` is the route's default for `max_tokens` (`None`:
/// the server's `--default-max-new-tokens`).
fn call(
    prompt: Prompt,
    c: Common,
    d: &SamplingDefaults,
    default_new: Option<usize>,
    format: Format,
) -> Result<GenerateCall, ServiceError> {
    // The model's top-k and the like apply only when sampling: a request's temperature 0
    // still means greedy.
    let params = Sampling {
        do_sample: None,
        temperature: c.temperature.or(d.temperature),
        top_k: d.top_k.map(|k| k as i64),
        top_p: c.top_p.or(d.top_p),
        typical_p: d.typical_p,
        min_p: d.min_p,
        repetition_penalty: d.repetition_penalty,
        seed: c.seed,
    }
    .checked(true)?;
    let length = match positive("max_tokens", c.max_tokens)? {
        Some(n) => Length::Asked {
            n,
            field: "max_tokens",
        },
        None => Length::Default(default_new),
    };
    Ok(GenerateCall {
        request: GenerateRequest {
            prompt,
            params,
            length,
            stop: stops(c.stop.map(StringOrList::into_vec))?,
            ignore_eos: c.ignore_eos.unwrap_or(false),
            grammar: c.grammar,
            tools: None,
            split_reasoning: None,
            logit_bias: logit_bias(c.logit_bias)?,
        },
        format,
        stream: c.stream,
    })
}

/// The `usage` object.
pub fn usage(a: &AnswerContext, completion_tokens: usize, cached_tokens: usize) -> Value {
    json!({
        "prompt_tokens": a.prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": a.prompt_tokens + completion_tokens,
        "prompt_tokens_details": { "cached_tokens": cached_tokens },
    })
}

/// The whole completion answer (`echo` puts the prompt in front).
pub fn whole_completion(a: &AnswerContext, c: &Collected, echo: bool) -> Value {
    let text = c.text();
    let body = a.trim_stop(&text);
    let out = if echo {
        format!("{}{}", a.prompt_text, body)
    } else {
        body.to_string()
    };
    json!({
        "id": a.id,
        "object": "text_completion",
        "created": a.created,
        "model": a.model,
        "choices": [{
            "index": 0,
            "text": out,
            "logprobs": null,
            "finish_reason": c.reason.openai(),
        }],
        "usage": usage(a, c.tokens.len(), c.cached_tokens),
    })
}

/// The whole chat answer: a forced function call that finished, or the calls an answer
/// under `tool_choice: "auto"` made, are `message.tool_calls` (with the text before them as
/// `content`). A reasoning model's thinking is `message.reasoning_content` (null when it
/// wrote none), and the calls and content are read from the rest.
pub fn whole_chat(a: &AnswerContext, c: &Collected) -> Value {
    let Some(parsing) = a.reasoning else {
        return chat_answer(a, c, &c.text());
    };
    let text = c.text();
    let limit = a.trim_stop(&text).len();
    let (pieces, reasoning_tokens) =
        split_tokens(parsing, c.tokens.iter().map(|t| t.text.as_str()), limit);
    let mut v = chat_answer(a, c, &pieces.content);
    let reasoning = match pieces.reasoning.as_str() {
        "" => Value::Null,
        r => json!(r),
    };
    v["choices"][0]["message"]["reasoning_content"] = reasoning;
    v["usage"] = usage_with_reasoning(a, c.tokens.len(), c.cached_tokens, reasoning_tokens);
    v
}

/// The usage of an answer that had reasoning: with OpenAI's
/// `completion_tokens_details.reasoning_tokens`.
pub fn usage_with_reasoning(
    a: &AnswerContext,
    completion_tokens: usize,
    cached_tokens: usize,
    reasoning_tokens: usize,
) -> Value {
    let mut u = usage(a, completion_tokens, cached_tokens);
    u["completion_tokens_details"] = json!({ "reasoning_tokens": reasoning_tokens });
    u
}

/// The chat answer of `text` (the content part when a reasoning model's thinking is apart).
fn chat_answer(a: &AnswerContext, c: &Collected, text: &str) -> Value {
    let text = text.to_string();
    let mut content = Value::Null;
    let call = match a.format {
        Format::Chat {
            tool_call: true, ..
        } if c.reason == FinishReason::EosToken => {
            let parsed = CallText::Forced.parse(&text);
            (!parsed.calls.is_empty()).then(|| openai_calls(&parsed.calls, CallText::Forced))
        }
        _ => match &a.tool_parsing {
            Some(tp) => {
                let parsed = tp.syntax.parse(a.trim_stop(&text));
                if parsed.calls.is_empty() {
                    let content = parsed.content.unwrap_or_default();
                    return chat_text(a, c, &content);
                }
                content = parsed.content.map_or(Value::Null, Value::String);
                let keep = if tp.parallel { parsed.calls.len() } else { 1 };
                Some(openai_calls(
                    &parsed.calls[..keep],
                    CallText::Auto(tp.syntax),
                ))
            }
            None => None,
        },
    };
    if let Some(calls) = call {
        return json!({
            "id": a.id.replacen("cmpl-", "chatcmpl-", 1),
            "object": "chat.completion",
            "created": a.created,
            "model": a.model,
            "choices": [{
                "index": 0,
                "message": { "role": "assistant", "content": content, "tool_calls": calls },
                "logprobs": null,
                "finish_reason": "tool_calls",
            }],
            "usage": usage(a, c.tokens.len(), c.cached_tokens),
        });
    }
    chat_text(a, c, a.trim_stop(&text))
}

/// A chat answer in words.
fn chat_text(a: &AnswerContext, c: &Collected, content: &str) -> Value {
    json!({
        "id": a.id.replacen("cmpl-", "chatcmpl-", 1),
        "object": "chat.completion",
        "created": a.created,
        "model": a.model,
        "choices": [{
            "index": 0,
            "message": { "role": "assistant", "content": content },
            "logprobs": null,
            "finish_reason": c.reason.openai(),
        }],
        "usage": usage(a, c.tokens.len(), c.cached_tokens),
    })
}

/// A streamed chat chunk whose delta is a piece of a reasoning model's thinking.
pub fn reasoning_chunk(a: &AnswerContext, piece: &str) -> Value {
    let mut v = chunk(a, None, None, false);
    v["choices"][0]["delta"] = json!({ "reasoning_content": piece });
    v
}

/// One streamed chunk: a piece of text, a finish reason, or (chat) the opening role.
pub fn chunk(a: &AnswerContext, piece: Option<&str>, finish: Option<&str>, role: bool) -> Value {
    match a.format {
        Format::Chat { .. } => {
            let mut delta = serde_json::Map::new();
            if role {
                delta.insert("role".into(), json!("assistant"));
            }
            if let Some(p) = piece {
                delta.insert("content".into(), json!(p));
            }
            json!({
                "id": a.id.replacen("cmpl-", "chatcmpl-", 1),
                "object": "chat.completion.chunk",
                "created": a.created,
                "model": a.model,
                "choices": [{ "index": 0, "delta": delta, "logprobs": null, "finish_reason": finish }],
            })
        }
        _ => json!({
            "id": a.id,
            "object": "text_completion",
            "created": a.created,
            "model": a.model,
            "choices": [{ "index": 0, "text": piece.unwrap_or(""), "logprobs": null, "finish_reason": finish }],
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn completion(body: &str, d: &SamplingDefaults) -> Result<GenerateCall, ServiceError> {
        parse_completion(body.as_bytes(), d)
    }

    #[test]
    fn the_models_settings_fill_what_a_request_leaves_out_and_temperature_zero_is_greedy() {
        let d = SamplingDefaults {
            temperature: Some(0.7),
            top_k: Some(10),
            ..SamplingDefaults::default()
        };
        let p = completion(r#"{"prompt":"a","top_p":0.5}"#, &d)
            .unwrap()
            .request
            .params;
        assert_eq!((p.temperature, p.top_p), (0.7, Some(0.5)));
        assert!(
            !completion(r#"{"prompt":"a","temperature":0}"#, &d)
                .unwrap()
                .request
                .params
                .do_sample
        );
        let c = completion(r#"{"prompt":"a"}"#, &SamplingDefaults::default()).unwrap();
        assert!(c.request.params.do_sample);
        assert_eq!(c.request.length, Length::Default(Some(16)));
        let e = parse_chat(br#"{"messages":[]}"#, &d).unwrap_err();
        assert!(e.to_string().contains("messages"), "{e}");
    }

    #[test]
    fn base64_is_little_endian_f32() {
        // 1.0f32 = 00 00 80 3f
        assert_eq!(base64_f32(&[1.0]), "AACAPw==");
        let r = EmbeddingsRequest::parse(br#"{"input": "x", "model": "m"}"#, 4).unwrap();
        assert_eq!(r.encoding_format, EncodingFormat::Float);
        assert!(
            EmbeddingsRequest::parse(br#"{"input": "x", "encoding_format": "hex"}"#, 4).is_err()
        );
        assert!(EmbeddingsRequest::parse(br#"{"input": []}"#, 4).is_err());
    }
}
