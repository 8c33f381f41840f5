//! The generation routes: `POST /generate` (the upstream `{"text"}` shape and TGI's
//! `{"inputs", "parameters"}`), `POST /generate_stream` (TGI's Server-Sent Events),
//! `POST /v1/completions` and `POST /v1/chat/completions` (OpenAI's shapes, streamed or not).
//!
//! Every route parses into one [`Call`]: a prompt, validated sampling parameters and limits,
//! and how to format the answer. Validation happens before the request takes a place in the
//! engine's queue; errors name the field. The engine streams [`Event`]s back; a client that
//! goes away drops the receiver, and the engine retires its sequence at the next step.

use std::convert::Infallible;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http_body_util::BodyExt;
use hyper::body::Frame;
use hyper::header::{HeaderValue, CACHE_CONTROL, CONTENT_TYPE};
use hyper::{Response, StatusCode};
use serde::Deserialize;
use serde_json::{json, Value};
use tokio::sync::mpsc::{unbounded_channel, UnboundedReceiver};

use super::error::ApiError;
use super::routes::{serving, Reply};
use super::{json_response, AppState, StreamGuard};
use crate::generate::chat::ChatMessage;
use crate::generate::engine::{Event, FinishReason, GenerationRequest, SubmitError, TokenEvent};
use crate::generate::sampling::{check_ranges, SamplingDefaults, SamplingParams};
use crate::generate::tokenizer::GenTokenizer;
use crate::generate::Generator;
use crate::lifecycle::ServingTask;
use crate::model::TokenInfo;

/// The upstream application's total length (prompt + continuation), in tokens.
const UPSTREAM_MAX_LENGTH: usize = 35;
/// The upstream application's top-k (GPT-2's `task_specific_params`).
const UPSTREAM_TOP_K: usize = 50;
/// OpenAI's default `max_tokens` for completions.
const OPENAI_COMPLETIONS_MAX_TOKENS: usize = 16;
/// The longest stop sequence accepted.
const MAX_STOP_BYTES: usize = 256;
/// Above this many bytes, a prompt is tokenized off the tokio threads.
const TOKENIZE_INLINE_BYTES: usize = 32 * 1024;

/// Whether `path` is a generation route.
pub fn is_generation_route(path: &str) -> bool {
    matches!(
        path,
        "/generate" | "/generate_stream" | "/v1/completions" | "/v1/chat/completions"
    )
}

/// What the prompt is.
enum Prompt {
    Text(String),
    Chat(Vec<ChatMessage>),
}

/// How many new tokens.
enum Length {
    /// At most this many new tokens (`None`: the route's default).
    New(Option<usize>),
    /// This many tokens in all, prompt included (the upstream shape).
    Total(usize),
}

/// How to answer.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Format {
    Upstream,
    Tgi {
        details: bool,
        return_full_text: bool,
    },
    Completion {
        echo: bool,
        include_usage: bool,
    },
    Chat {
        include_usage: bool,
    },
}

/// A parsed, not yet tokenized generation request.
struct Call {
    prompt: Prompt,
    params: SamplingParams,
    length: Length,
    default_new: usize,
    stop: Vec<String>,
    ignore_eos: bool,
    stream: bool,
    format: Format,
}

// ---------------------------------------------------------------------------------------------
// Request shapes
// ---------------------------------------------------------------------------------------------

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct UpstreamRequest {
    text: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TgiRequest {
    inputs: String,
    #[serde(default)]
    parameters: TgiParameters,
    /// TGI accepts `stream` on /generate and ignores it there; /generate_stream always streams.
    #[serde(default)]
    #[allow(dead_code)]
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
}

#[derive(Deserialize)]
#[serde(untagged)]
enum StringOrList {
    One(String),
    Many(Vec<String>),
}

impl StringOrList {
    fn into_vec(self) -> Vec<String> {
        match self {
            StringOrList::One(s) => vec![s],
            StringOrList::Many(v) => v,
        }
    }
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct StreamOptions {
    #[serde(default)]
    include_usage: bool,
}

/// The settings both OpenAI routes share, once checked for what is not supported.
#[derive(Default)]
struct OpenAiCommon {
    max_tokens: Option<i64>,
    temperature: Option<f32>,
    top_p: Option<f32>,
    stop: Option<StringOrList>,
    seed: Option<u64>,
    stream: bool,
    stream_options: Option<StreamOptions>,
    /// Not OpenAI's: keep generating past end-of-sequence tokens (for load tests).
    ignore_eos: Option<bool>,
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
    ignore_eos: Option<bool>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ChatRequest {
    messages: Vec<ChatMessageIn>,
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
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ChatMessageIn {
    role: String,
    content: ChatContent,
    #[serde(default)]
    #[allow(dead_code)]
    name: Option<String>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum ChatContent {
    Text(String),
    Parts(Vec<ContentPart>),
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ContentPart {
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    text: Option<String>,
}

fn bad(message: impl Into<String>) -> ApiError {
    ApiError::BadRequest(message.into())
}

fn json_error(e: serde_json::Error) -> ApiError {
    bad(format!("invalid JSON body: {e}"))
}

/// Checks a count that must be at least 1.
fn positive(name: &str, v: Option<i64>) -> Result<Option<usize>, ApiError> {
    match v {
        None => Ok(None),
        Some(n) if n >= 1 => Ok(Some(n as usize)),
        Some(n) => Err(bad(format!("{name} must be at least 1 (got {n})"))),
    }
}

/// Sampling settings checked and combined. `sample` forces sampling (upstream, OpenAI's
/// default temperature 1); TGI samples when `do_sample` or any sampling setting is given.
#[allow(clippy::too_many_arguments)]
fn sampling(
    do_sample: Option<bool>,
    temperature: Option<f32>,
    top_k: Option<i64>,
    top_p: Option<f32>,
    typical_p: Option<f32>,
    min_p: Option<f32>,
    repetition_penalty: Option<f32>,
    seed: Option<u64>,
    sample_by_default: bool,
) -> Result<SamplingParams, ApiError> {
    check_ranges(temperature, top_p, typical_p, min_p, repetition_penalty).map_err(bad)?;
    let top_k = positive("top_k", top_k)?;
    let warpers = temperature.is_some_and(|t| t != 1.0)
        || top_k.is_some()
        || top_p.is_some_and(|p| p < 1.0)
        || typical_p.is_some_and(|p| p < 1.0)
        || min_p.is_some_and(|p| p > 0.0);
    let mut do_sample = do_sample.unwrap_or(sample_by_default || warpers);
    // Temperature 0 means greedy (OpenAI, llama.cpp).
    if temperature == Some(0.0) {
        do_sample = false;
    }
    Ok(SamplingParams {
        do_sample,
        temperature: temperature.filter(|&t| t > 0.0).unwrap_or(1.0),
        top_k,
        top_p: top_p.filter(|&p| p < 1.0),
        min_p: min_p.filter(|&p| p > 0.0),
        typical_p: typical_p.filter(|&p| p < 1.0),
        repetition_penalty: repetition_penalty.unwrap_or(1.0),
        seed: seed.unwrap_or_else(random_seed),
    })
}

/// A seed for requests that give none: different per request.
fn random_seed() -> u64 {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    let mut z = nanos ^ COUNTER.fetch_add(0x9E37_79B9_7F4A_7C15, Ordering::Relaxed);
    // splitmix64's finalizer.
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

fn stops(stop: Option<Vec<String>>) -> Result<Vec<String>, ApiError> {
    let stop = stop.unwrap_or_default();
    if stop.len() > 8 {
        return Err(bad(format!(
            "stop may hold at most 8 sequences (got {})",
            stop.len()
        )));
    }
    if stop.iter().any(String::is_empty) {
        return Err(bad("stop sequences must not be empty"));
    }
    // Each step looks for every stop sequence in the new text: their length is bounded so
    // that no request can make a step slow.
    if let Some(long) = stop.iter().find(|s| s.len() > MAX_STOP_BYTES) {
        return Err(bad(format!(
            "stop sequences may be at most {MAX_STOP_BYTES} bytes (got one of {})",
            long.len()
        )));
    }
    Ok(stop)
}

/// Refuses OpenAI settings this server does not implement, naming them.
fn openai_unsupported(
    n: Option<i64>,
    presence_penalty: Option<f32>,
    frequency_penalty: Option<f32>,
) -> Result<(), ApiError> {
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

/// Parses the body of a generation route.
///
/// `defaults` are the model's own sampling settings: the upstream shape samples as the
/// text-generation pipeline did (the model's settings, else top-k 50), the OpenAI routes take
/// them where the request is silent (as vLLM does), and TGI's shape keeps TGI's meaning
/// (greedy unless the request asks for sampling).
fn parse(
    path: &str,
    body: &[u8],
    default_new: usize,
    defaults: &SamplingDefaults,
) -> Result<Call, ApiError> {
    let value: Value = serde_json::from_slice(body).map_err(json_error)?;
    match path {
        "/generate" | "/generate_stream" => {
            let is_upstream = value.get("text").is_some() && value.get("inputs").is_none();
            if is_upstream && path == "/generate" {
                let r: UpstreamRequest = serde_json::from_value(value).map_err(json_error)?;
                let d = defaults;
                let params = sampling(
                    Some(d.do_sample.unwrap_or(true)),
                    d.temperature,
                    Some(d.top_k.unwrap_or(UPSTREAM_TOP_K) as i64),
                    d.top_p,
                    d.typical_p,
                    d.min_p,
                    d.repetition_penalty,
                    None,
                    true,
                )?;
                return Ok(Call {
                    prompt: Prompt::Text(r.text),
                    params,
                    length: Length::Total(UPSTREAM_MAX_LENGTH),
                    default_new,
                    stop: Vec::new(),
                    ignore_eos: false,
                    stream: false,
                    format: Format::Upstream,
                });
            }
            let r: TgiRequest = serde_json::from_value(value).map_err(json_error)?;
            let p = r.parameters;
            let params = sampling(
                p.do_sample,
                p.temperature,
                p.top_k,
                p.top_p,
                p.typical_p,
                p.min_p,
                p.repetition_penalty,
                p.seed,
                false,
            )?;
            Ok(Call {
                prompt: Prompt::Text(r.inputs),
                params,
                length: Length::New(positive("max_new_tokens", p.max_new_tokens)?),
                default_new,
                stop: stops(p.stop)?,
                ignore_eos: p.ignore_eos.unwrap_or(false),
                stream: path == "/generate_stream",
                format: Format::Tgi {
                    details: p.details.unwrap_or(false),
                    return_full_text: p.return_full_text.unwrap_or(false),
                },
            })
        }
        "/v1/completions" => {
            let r: CompletionRequest = serde_json::from_value(value).map_err(json_error)?;
            openai_unsupported(r.n, r.presence_penalty, r.frequency_penalty)?;
            if r.logprobs.as_ref().is_some_and(|v| !v.is_null()) {
                return Err(bad("logprobs is not supported on /v1/completions; use /generate with details: true"));
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
            let common = OpenAiCommon {
                max_tokens: r.max_tokens,
                temperature: r.temperature,
                top_p: r.top_p,
                stop: r.stop,
                seed: r.seed,
                stream: r.stream,
                stream_options: r.stream_options,
                ignore_eos: r.ignore_eos,
            };
            let include_usage = common
                .stream_options
                .as_ref()
                .is_some_and(|o| o.include_usage);
            openai_call(
                Prompt::Text(prompt),
                common,
                defaults,
                OPENAI_COMPLETIONS_MAX_TOKENS,
                Format::Completion {
                    echo: r.echo,
                    include_usage,
                },
            )
        }
        "/v1/chat/completions" => {
            let r: ChatRequest = serde_json::from_value(value).map_err(json_error)?;
            openai_unsupported(r.n, r.presence_penalty, r.frequency_penalty)?;
            if r.logprobs == Some(true) {
                return Err(bad("logprobs is not supported on /v1/chat/completions"));
            }
            let _ = (r.model, r.user);
            if r.messages.is_empty() {
                return Err(bad("messages must hold at least one message"));
            }
            let messages = r
                .messages
                .into_iter()
                .enumerate()
                .map(|(i, m)| {
                    let content = match m.content {
                        ChatContent::Text(t) => t,
                        ChatContent::Parts(parts) => {
                            let mut text = String::new();
                            for p in parts {
                                if p.kind != "text" {
                                    return Err(bad(format!(
                                        "messages[{i}].content has a part of type {:?}; only text parts are supported",
                                        p.kind
                                    )));
                                }
                                text.push_str(p.text.as_deref().unwrap_or(""));
                            }
                            text
                        }
                    };
                    Ok(ChatMessage {
                        role: m.role,
                        content,
                    })
                })
                .collect::<Result<Vec<_>, _>>()?;
            let max_tokens = r.max_completion_tokens.or(r.max_tokens);
            let common = OpenAiCommon {
                max_tokens,
                temperature: r.temperature,
                top_p: r.top_p,
                stop: r.stop,
                seed: r.seed,
                stream: r.stream,
                stream_options: r.stream_options,
                ignore_eos: r.ignore_eos,
            };
            let include_usage = common
                .stream_options
                .as_ref()
                .is_some_and(|o| o.include_usage);
            openai_call(
                Prompt::Chat(messages),
                common,
                defaults,
                default_new,
                Format::Chat { include_usage },
            )
        }
        _ => Err(ApiError::Internal(format!(
            "{path} is not a generation route"
        ))),
    }
}

fn openai_call(
    prompt: Prompt,
    c: OpenAiCommon,
    d: &SamplingDefaults,
    default_new: usize,
    format: Format,
) -> Result<Call, ApiError> {
    // The model's top-k and the like apply only when sampling: a request's temperature 0
    // still means greedy.
    let params = sampling(
        None,
        c.temperature.or(d.temperature),
        d.top_k.map(|k| k as i64),
        c.top_p.or(d.top_p),
        d.typical_p,
        d.min_p,
        d.repetition_penalty,
        c.seed,
        true,
    )?;
    Ok(Call {
        prompt,
        params,
        length: Length::New(positive("max_tokens", c.max_tokens)?),
        default_new,
        stop: stops(c.stop.map(StringOrList::into_vec))?,
        ignore_eos: c.ignore_eos.unwrap_or(false),
        stream: c.stream,
        format,
    })
}

// ---------------------------------------------------------------------------------------------
// Handling
// ---------------------------------------------------------------------------------------------

/// The loaded generation model, or 400 naming the loaded model's task.
async fn generator(state: &AppState) -> Result<Arc<Generator>, ApiError> {
    let serving = serving(state).await?;
    match &serving.task {
        ServingTask::Generation(g) => Ok(g.clone()),
        ServingTask::Embedding(_) => Err(bad(format!(
            "this route generates text, but the loaded model ({}) is an {} model: use /embed or /v1/embeddings",
            serving.info.id,
            serving.info.task.name()
        ))),
    }
}

/// Runs `f(tokenizer, text)` inline for a short text, else on a blocking thread under
/// `state.tokenize_slots` (a long tokenization must not stall the tokio threads).
async fn tokenized<T: Send + 'static>(
    state: &AppState,
    g: &Arc<Generator>,
    text: String,
    f: impl FnOnce(&GenTokenizer, &str) -> Result<T, ApiError> + Send + 'static,
) -> Result<T, ApiError> {
    if text.len() <= TOKENIZE_INLINE_BYTES {
        return f(&g.tokenizer, &text);
    }
    let slot = state
        .tokenize_slots
        .clone()
        .acquire_owned()
        .await
        .map_err(|e| ApiError::Internal(format!("tokenization slots closed: {e}")))?;
    let g = g.clone();
    tokio::task::spawn_blocking(move || {
        let _slot = slot;
        f(&g.tokenizer, &text)
    })
    .await
    .map_err(|e| ApiError::Internal(format!("tokenization failed: {e}")))?
}

/// The prompt's ids.
async fn encode(
    state: &AppState,
    g: &Arc<Generator>,
    text: String,
    add_special: bool,
) -> Result<Vec<u32>, ApiError> {
    tokenized(state, g, text, move |tokenizer, text| {
        tokenizer
            .encode(text, add_special)
            .map_err(|e| bad(format!("the prompt cannot be tokenized: {e}")))
    })
    .await
}

/// `/tokenize` on a generation model.
pub async fn tokenize(
    state: &AppState,
    g: &Arc<Generator>,
    texts: Vec<String>,
    add_special: bool,
) -> Result<Response<http_body_util::Full<Bytes>>, ApiError> {
    let mut all: Vec<Vec<TokenInfo>> = Vec::with_capacity(texts.len());
    for text in texts {
        all.push(
            tokenized(state, g, text, move |tokenizer, text| {
                tokenizer
                    .tokens(text, add_special)
                    .map_err(|e| bad(format!("the input cannot be tokenized: {e}")))
            })
            .await?,
        );
    }
    Ok(json_response(StatusCode::OK, &all))
}

/// Answers a generation route.
pub async fn handle(state: &Arc<AppState>, path: &str, body: &[u8]) -> Result<Reply, ApiError> {
    let g = generator(state).await?;
    let call = parse(path, body, state.config.default_max_new_tokens, &g.defaults)?;
    let (prompt_text, ids) = match &call.prompt {
        Prompt::Text(t) => (t.clone(), encode(state, &g, t.clone(), true).await?),
        Prompt::Chat(messages) => {
            let template = g.chat.as_ref().ok_or_else(|| {
                bad("the loaded model has no chat template (tokenizer.chat_template): use /v1/completions or /generate")
            })?;
            let text = template.render(messages, true).map_err(bad)?;
            let ids = encode(state, &g, text.clone(), false).await?;
            (text, ids)
        }
    };
    let context = g.engine.context();
    let budget = g.engine.limits().max_batch_total_tokens;
    let limit = context.min(budget);
    if ids.is_empty() {
        return Err(bad("the prompt is empty: give at least one token of text"));
    }
    if ids.len() >= limit {
        return Err(ApiError::PayloadTooLarge(format!(
            "the prompt has {} tokens; this server takes at most {} (the model's context is {context}, --max-batch-total-tokens is {budget}), leaving room for one new token",
            ids.len(),
            limit - 1
        )));
    }
    let room = limit - ids.len();
    let field = match call.format {
        Format::Tgi { .. } => "max_new_tokens",
        _ => "max_tokens",
    };
    let max_new = match call.length {
        Length::Total(total) => total.saturating_sub(ids.len()).clamp(1, room),
        Length::New(None) => call.default_new.min(room),
        Length::New(Some(n)) if n <= room => n,
        Length::New(Some(n)) => {
            return Err(ApiError::PayloadTooLarge(format!(
                "{field} is {n}, but the prompt's {} tokens leave room for {room} (the model's context is {context}, --max-batch-total-tokens is {budget})",
                ids.len()
            )))
        }
    };
    let (tx, rx) = unbounded_channel();
    let prompt_tokens = ids.len();
    let request = GenerationRequest {
        prompt: ids,
        params: call.params.clone(),
        max_new_tokens: max_new,
        stop: call.stop.clone(),
        ignore_eos: call.ignore_eos,
        events: tx,
        queued_at: Instant::now(),
    };
    match g.engine.submit(request) {
        Ok(()) => {}
        Err(SubmitError::Full) => {
            return Err(ApiError::overloaded(
                "queue_full",
                format!(
                    "the generation queue is full ({} requests waiting; --queue-capacity); retry",
                    g.engine.waiting()
                ),
                1,
            ))
        }
        Err(SubmitError::Closed) => {
            return Err(ApiError::overloaded(
                "draining",
                "the generation engine has stopped; retry on another replica".into(),
                1,
            ))
        }
    }
    let answer = Answer {
        format: call.format,
        prompt_text,
        prompt_tokens,
        seed: call.params.do_sample.then_some(call.params.seed),
        stop: call.stop,
        model: model_name(state),
        id: format!("cmpl-{:016x}", random_seed()),
        created: SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs()),
    };
    if call.stream {
        return Ok(Reply::Stream(sse_response(state, rx, answer)));
    }
    let collected = collect(state, rx).await?;
    Ok(Reply::Full(json_response(
        StatusCode::OK,
        &answer.whole(&collected),
    )))
}

fn model_name(state: &AppState) -> String {
    state
        .lifecycle
        .loaded_info()
        .map_or_else(String::new, |i| i.id)
}

/// Everything a finished sequence produced.
struct Collected {
    tokens: Vec<TokenEvent>,
    reason: FinishReason,
}

/// Waits for a sequence to finish (or the shutdown deadline).
async fn collect(
    state: &AppState,
    mut rx: UnboundedReceiver<Event>,
) -> Result<Collected, ApiError> {
    let mut tokens = Vec::new();
    let wait = async {
        while let Some(ev) = rx.recv().await {
            match ev {
                Event::Token(t) => tokens.push(t),
                Event::Done { reason, .. } => return Ok(reason),
                Event::Failed(message) => return Err(ApiError::Internal(message)),
            }
        }
        Err(ApiError::Internal(
            "the generation engine stopped mid-sequence".into(),
        ))
    };
    tokio::select! {
        r = wait => r.map(|reason| Collected { tokens, reason }),
        _ = state.lifecycle.aborted() => Err(ApiError::overloaded(
            "shutdown",
            "the server is shutting down and the sequence did not finish in time; retry".into(),
            1,
        )),
    }
}

/// How to write the answer of one request.
struct Answer {
    format: Format,
    prompt_text: String,
    prompt_tokens: usize,
    /// The seed, when sampling.
    seed: Option<u64>,
    stop: Vec<String>,
    model: String,
    id: String,
    created: u64,
}

impl Answer {
    /// `text` cut before the first stop sequence (OpenAI leaves it out; TGI keeps it).
    fn trim_stop<'a>(&self, text: &'a str) -> &'a str {
        let cut = self
            .stop
            .iter()
            .filter_map(|s| text.find(s.as_str()))
            .min()
            .unwrap_or(text.len());
        &text[..cut]
    }

    fn usage(&self, completion_tokens: usize) -> Value {
        json!({
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": self.prompt_tokens + completion_tokens,
        })
    }

    /// The non-streamed body.
    fn whole(&self, c: &Collected) -> Value {
        let text: String = c.tokens.iter().map(|t| t.text.as_str()).collect();
        let n = c.tokens.len();
        match self.format {
            Format::Upstream => {
                json!({ "generated_text": format!("{}{}", self.prompt_text, text) })
            }
            Format::Tgi {
                details,
                return_full_text,
            } => {
                let generated_text = if return_full_text {
                    format!("{}{}", self.prompt_text, text)
                } else {
                    text
                };
                if details {
                    json!({
                        "generated_text": generated_text,
                        "details": {
                            "finish_reason": c.reason.tgi(),
                            "generated_tokens": n,
                            "seed": self.seed,
                            "prefill": [],
                            "tokens": c.tokens.iter().map(token_json).collect::<Vec<_>>(),
                        }
                    })
                } else {
                    json!({ "generated_text": generated_text })
                }
            }
            Format::Completion { echo, .. } => {
                let body = self.trim_stop(&text);
                let out = if echo {
                    format!("{}{}", self.prompt_text, body)
                } else {
                    body.to_string()
                };
                json!({
                    "id": self.id,
                    "object": "text_completion",
                    "created": self.created,
                    "model": self.model,
                    "choices": [{
                        "index": 0,
                        "text": out,
                        "logprobs": null,
                        "finish_reason": c.reason.openai(),
                    }],
                    "usage": self.usage(n),
                })
            }
            Format::Chat { .. } => json!({
                "id": self.id.replacen("cmpl-", "chatcmpl-", 1),
                "object": "chat.completion",
                "created": self.created,
                "model": self.model,
                "choices": [{
                    "index": 0,
                    "message": { "role": "assistant", "content": self.trim_stop(&text) },
                    "logprobs": null,
                    "finish_reason": c.reason.openai(),
                }],
                "usage": self.usage(n),
            }),
        }
    }
}

fn token_json(t: &TokenEvent) -> Value {
    json!({ "id": t.id, "text": t.text, "logprob": t.logprob, "special": t.special })
}

// ---------------------------------------------------------------------------------------------
// Streaming
// ---------------------------------------------------------------------------------------------

fn sse_response(
    state: &Arc<AppState>,
    events: UnboundedReceiver<Event>,
    answer: Answer,
) -> Response<super::Body> {
    let body = SseBody {
        events,
        writer: SseWriter::new(answer),
        done: false,
        _guard: StreamGuard::new(state.clone()),
    };
    let mut r = Response::new(body.boxed_unsync());
    let h = r.headers_mut();
    h.insert(CONTENT_TYPE, HeaderValue::from_static("text/event-stream"));
    h.insert(CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    r
}

/// A Server-Sent Events body fed by the engine's events. Dropping it (the client went away)
/// drops the receiver, which the engine sees at its next step.
struct SseBody {
    events: UnboundedReceiver<Event>,
    writer: SseWriter,
    done: bool,
    _guard: StreamGuard,
}

impl hyper::body::Body for SseBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        if self.done {
            return Poll::Ready(None);
        }
        let mut out = String::new();
        // Everything already waiting goes out in one frame.
        loop {
            match self.events.poll_recv(cx) {
                Poll::Ready(Some(ev)) => {
                    let end = !matches!(ev, Event::Token(_));
                    self.writer.event(ev, &mut out);
                    if end {
                        self.done = true;
                        break;
                    }
                }
                Poll::Ready(None) => {
                    if !self.done {
                        self.writer.event(
                            Event::Failed("the generation engine stopped mid-sequence".into()),
                            &mut out,
                        );
                    }
                    self.done = true;
                    break;
                }
                Poll::Pending => break,
            }
        }
        if out.is_empty() {
            if self.done {
                return Poll::Ready(None);
            }
            return Poll::Pending;
        }
        Poll::Ready(Some(Ok(Frame::data(Bytes::from(out)))))
    }
}

/// Formats the events of one stream.
struct SseWriter {
    answer: Answer,
    /// TGI's last token waits for the end, which it carries.
    held: Option<TokenEvent>,
    index: usize,
    text: String,
    /// OpenAI: text not yet sent because it may begin a stop sequence.
    pending: String,
    stopped: bool,
    sent_role: bool,
}

impl SseWriter {
    fn new(answer: Answer) -> Self {
        Self {
            answer,
            held: None,
            index: 0,
            text: String::new(),
            pending: String::new(),
            stopped: false,
            sent_role: false,
        }
    }

    fn data(out: &mut String, v: &Value) {
        out.push_str("data:");
        out.push_str(&v.to_string());
        out.push_str("\n\n");
    }

    fn event(&mut self, ev: Event, out: &mut String) {
        if let Event::Failed(message) = &ev {
            // The stream is already 200: the error goes in the stream, as TGI does.
            Self::data(
                out,
                &json!({ "error": message, "error_type": "generation" }),
            );
            if !matches!(self.answer.format, Format::Tgi { .. }) {
                out.push_str("data: [DONE]\n\n");
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

    fn tgi_token(&mut self, t: TokenEvent, end: Option<(FinishReason, bool)>, out: &mut String) {
        self.text.push_str(&t.text);
        self.index += 1;
        let (generated_text, details) = match end {
            Some((reason, full)) => (
                Value::String(if full {
                    format!("{}{}", self.answer.prompt_text, self.text)
                } else {
                    self.text.clone()
                }),
                json!({
                    "finish_reason": reason.tgi(),
                    "generated_tokens": self.index,
                    "seed": self.answer.seed,
                }),
            ),
            None => (Value::Null, Value::Null),
        };
        Self::data(
            out,
            &json!({
                "index": self.index,
                "token": token_json(&t),
                "generated_text": generated_text,
                "details": details,
                "top_tokens": null,
            }),
        );
    }

    fn openai_chunk(&self, piece: Option<&str>, finish: Option<&str>, role: bool) -> Value {
        let a = &self.answer;
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

    fn openai(&mut self, ev: Event, out: &mut String) {
        if !self.sent_role {
            self.sent_role = true;
            match self.answer.format {
                Format::Chat { .. } => {
                    let v = self.openai_chunk(Some(""), None, true);
                    Self::data(out, &v);
                }
                Format::Completion { echo: true, .. } => {
                    let v = self.openai_chunk(Some(&self.answer.prompt_text), None, false);
                    Self::data(out, &v);
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
                    let v = self.openai_chunk(Some(&send), None, false);
                    Self::data(out, &v);
                }
            }
            Event::Done { reason, .. } => {
                if !self.stopped && !self.pending.is_empty() {
                    let rest = std::mem::take(&mut self.pending);
                    let v = self.openai_chunk(Some(&rest), None, false);
                    Self::data(out, &v);
                }
                let v = self.openai_chunk(None, Some(reason.openai()), false);
                Self::data(out, &v);
                let include_usage = match self.answer.format {
                    Format::Chat { include_usage } | Format::Completion { include_usage, .. } => {
                        include_usage
                    }
                    _ => false,
                };
                if include_usage {
                    let mut v = self.openai_chunk(None, None, false);
                    v["choices"] = json!([]);
                    v["usage"] = self.answer.usage(self.index);
                    Self::data(out, &v);
                }
                out.push_str("data: [DONE]\n\n");
            }
            Event::Failed(_) => {}
        }
    }

    /// The part of the pending text that can be sent: up to a stop sequence (then nothing
    /// more is sent), or all but the longest tail that could begin one.
    fn releasable(&mut self) -> String {
        let stops = &self.answer.stop;
        if let Some(cut) = stops
            .iter()
            .filter_map(|s| self.pending.find(s.as_str()))
            .min()
        {
            self.stopped = true;
            let send = self.pending[..cut].to_string();
            self.pending.clear();
            return send;
        }
        let mut keep = 0;
        for s in stops {
            for (i, _) in s.char_indices().skip(1) {
                if self.pending.ends_with(&s[..i]) {
                    keep = keep.max(i);
                }
            }
        }
        let at = self.pending.len() - keep;
        let send = self.pending[..at].to_string();
        self.pending.drain(..at);
        send
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn invalid_settings_are_refused_naming_the_field() {
        let cases: &[(&str, &str, &str)] = &[
            (
                "/generate",
                r#"{"inputs":"a","parameters":{"temperature":-1}}"#,
                "temperature",
            ),
            (
                "/generate",
                r#"{"inputs":"a","parameters":{"top_p":1.5}}"#,
                "top_p",
            ),
            (
                "/generate",
                r#"{"inputs":"a","parameters":{"top_p":0}}"#,
                "top_p",
            ),
            (
                "/generate",
                r#"{"inputs":"a","parameters":{"top_k":0}}"#,
                "top_k",
            ),
            (
                "/generate",
                r#"{"inputs":"a","parameters":{"max_new_tokens":0}}"#,
                "max_new_tokens",
            ),
            (
                "/generate",
                r#"{"inputs":"a","parameters":{"repetition_penalty":0}}"#,
                "repetition_penalty",
            ),
            (
                "/generate",
                r#"{"inputs":"a","parameters":{"bogus":1}}"#,
                "bogus",
            ),
            ("/generate", r#"{"inputs":"a","extra":1}"#, "extra"),
            (
                "/generate",
                r#"{"text":"a","temperature":1}"#,
                "temperature",
            ),
            ("/v1/completions", r#"{"prompt":"a","n":2}"#, "n must be 1"),
            (
                "/generate",
                &format!(
                    r#"{{"inputs":"a","parameters":{{"stop":["{}"]}}}}"#,
                    "x".repeat(257)
                ),
                "stop",
            ),
            ("/v1/completions", r#"{"prompt":"a","foo":2}"#, "foo"),
            (
                "/v1/completions",
                r#"{"prompt":"a","temperature":-0.5}"#,
                "temperature",
            ),
            ("/v1/chat/completions", r#"{"messages":[]}"#, "messages"),
            (
                "/v1/chat/completions",
                r#"{"messages":[{"role":"user","content":"x"}],"top_p":2}"#,
                "top_p",
            ),
            (
                "/v1/chat/completions",
                r#"{"messages":[{"role":"user","content":"x"}],"max_tokens":-3}"#,
                "max_tokens",
            ),
        ];
        for (path, body, field) in cases {
            match parse(path, body.as_bytes(), 20, &SamplingDefaults::default()) {
                Err(ApiError::BadRequest(m)) => assert!(m.contains(field), "{body}: {m}"),
                Err(e) => panic!("{body}: {e}"),
                Ok(_) => panic!("{body} was accepted"),
            }
        }
    }

    #[test]
    fn upstream_shape_samples_with_top_k_50_and_35_tokens_in_all() {
        let c = parse(
            "/generate",
            br#"{"text":"Hello"}"#,
            20,
            &SamplingDefaults::default(),
        )
        .unwrap();
        assert_eq!(c.format, Format::Upstream);
        assert!(c.params.do_sample);
        assert_eq!(c.params.top_k, Some(50));
        assert!(matches!(c.length, Length::Total(35)));
    }

    #[test]
    fn the_models_sampling_settings_fill_what_a_request_leaves_out() {
        let d = SamplingDefaults {
            temperature: Some(0.7),
            top_k: Some(10),
            top_p: Some(0.9),
            ..SamplingDefaults::default()
        };
        // Upstream: the model's settings instead of top-k 50.
        let c = parse("/generate", br#"{"text":"Hello"}"#, 20, &d).unwrap();
        assert!(c.params.do_sample);
        assert_eq!(
            (c.params.temperature, c.params.top_k, c.params.top_p),
            (0.7, Some(10), Some(0.9))
        );
        // A model that says greedy is greedy on the upstream route.
        let greedy = SamplingDefaults {
            do_sample: Some(false),
            ..d.clone()
        };
        let c = parse("/generate", br#"{"text":"Hello"}"#, 20, &greedy).unwrap();
        assert!(!c.params.do_sample);
        // OpenAI: the request's values win; temperature 0 stays greedy.
        let c = parse("/v1/completions", br#"{"prompt":"a","top_p":0.5}"#, 20, &d).unwrap();
        assert_eq!((c.params.temperature, c.params.top_p), (0.7, Some(0.5)));
        let c = parse(
            "/v1/completions",
            br#"{"prompt":"a","temperature":0}"#,
            20,
            &d,
        )
        .unwrap();
        assert!(!c.params.do_sample);
        // TGI keeps its own meaning: greedy unless asked.
        let c = parse("/generate", br#"{"inputs":"a"}"#, 20, &d).unwrap();
        assert!(!c.params.do_sample);
    }

    #[test]
    fn tgi_is_greedy_unless_asked_and_temperature_zero_is_greedy() {
        let c = parse(
            "/generate",
            br#"{"inputs":"a"}"#,
            20,
            &SamplingDefaults::default(),
        )
        .unwrap();
        assert!(!c.params.do_sample);
        let c = parse(
            "/generate",
            br#"{"inputs":"a","parameters":{"top_k":5}}"#,
            20,
            &SamplingDefaults::default(),
        )
        .unwrap();
        assert!(c.params.do_sample);
        let c = parse(
            "/v1/completions",
            br#"{"prompt":"a","temperature":0}"#,
            20,
            &SamplingDefaults::default(),
        )
        .unwrap();
        assert!(!c.params.do_sample);
        let c = parse(
            "/v1/completions",
            br#"{"prompt":"a"}"#,
            20,
            &SamplingDefaults::default(),
        )
        .unwrap();
        assert!(c.params.do_sample);
        assert!(matches!(c.length, Length::New(None)));
    }

    #[test]
    fn streamed_openai_text_never_shows_a_stop_sequence() {
        let answer = Answer {
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
        };
        let mut w = SseWriter::new(answer);
        let mut out = String::new();
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
            },
            &mut out,
        );
        let texts: String = out
            .split("\n\n")
            .filter_map(|l| l.strip_prefix("data:"))
            .filter_map(|j| serde_json::from_str::<Value>(j).ok())
            .map(|v| v["choices"][0]["text"].as_str().unwrap_or("").to_string())
            .collect();
        assert_eq!(texts, "hello ");
        assert!(out.ends_with("data: [DONE]\n\n"));
    }
}
