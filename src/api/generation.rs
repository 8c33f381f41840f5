//! What the generation API styles share: the parsed call (the service's request and how to
//! answer it), the checks of sampling settings and stop sequences, and the facts an answer is
//! written from. Each style's own bodies are in its file ([`super::tgi`], [`super::openai`],
//! [`super::upstream`]); [`super::answer`] writes answers in the style a call asked for.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use serde::Deserialize;

use crate::error::ServiceError;
use crate::generate::engine::{FinishReason, TokenEvent};
use crate::generate::reasoning::ReasoningParsing;
use crate::generate::sampling::{check_ranges, SamplingParams};
use crate::generate::service::{GenerateRequest, Generation};
use crate::generate::tool_syntax::ToolParsing;

/// The longest stop sequence accepted.
pub const MAX_STOP_BYTES: usize = 256;
/// The most stop sequences accepted.
pub const MAX_STOPS: usize = 8;

/// How to answer a generation request.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Format {
    /// The upstream `{"text"}` application: `{"generated_text": prompt + continuation}`.
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
        /// The request forces a function call: a finished answer is `message.tool_calls`.
        tool_call: bool,
    },
}

/// A parsed generation request: what to ask the service, and how to answer.
#[derive(Debug, Clone)]
pub struct GenerateCall {
    pub request: GenerateRequest,
    pub format: Format,
    /// Answer as Server-Sent Events.
    pub stream: bool,
}

pub(super) fn bad(message: impl Into<String>) -> ServiceError {
    ServiceError::Invalid(message.into())
}

/// Checks a count that must be at least 1.
pub(super) fn positive(name: &str, v: Option<i64>) -> Result<Option<usize>, ServiceError> {
    match v {
        None => Ok(None),
        Some(n) if n >= 1 => Ok(Some(n as usize)),
        Some(n) => Err(bad(format!("{name} must be at least 1 (got {n})"))),
    }
}

/// Sampling settings as a request (or a model's defaults) gives them, before they are checked.
#[derive(Debug, Default, Clone, Copy)]
pub(super) struct Sampling {
    pub do_sample: Option<bool>,
    pub temperature: Option<f32>,
    pub top_k: Option<i64>,
    pub top_p: Option<f32>,
    pub typical_p: Option<f32>,
    pub min_p: Option<f32>,
    pub repetition_penalty: Option<f32>,
    pub seed: Option<u64>,
}

impl Sampling {
    /// The settings checked and combined. `sample_by_default` forces sampling (upstream,
    /// OpenAI's default temperature 1); otherwise (TGI) a request samples when `do_sample` or
    /// any sampling setting is given.
    pub fn checked(self, sample_by_default: bool) -> Result<SamplingParams, ServiceError> {
        check_ranges(
            self.temperature,
            self.top_p,
            self.typical_p,
            self.min_p,
            self.repetition_penalty,
        )
        .map_err(bad)?;
        let top_k = positive("top_k", self.top_k)?;
        let warpers = self.temperature.is_some_and(|t| t != 1.0)
            || top_k.is_some()
            || self.top_p.is_some_and(|p| p < 1.0)
            || self.typical_p.is_some_and(|p| p < 1.0)
            || self.min_p.is_some_and(|p| p > 0.0);
        let mut do_sample = self.do_sample.unwrap_or(sample_by_default || warpers);
        // Temperature 0 means greedy (OpenAI, llama.cpp).
        if self.temperature == Some(0.0) {
            do_sample = false;
        }
        Ok(SamplingParams {
            do_sample,
            temperature: self.temperature.filter(|&t| t > 0.0).unwrap_or(1.0),
            top_k,
            top_p: self.top_p.filter(|&p| p < 1.0),
            min_p: self.min_p.filter(|&p| p > 0.0),
            typical_p: self.typical_p.filter(|&p| p < 1.0),
            repetition_penalty: self.repetition_penalty.unwrap_or(1.0),
            seed: self.seed.unwrap_or_else(random_seed),
        })
    }
}

/// A seed for requests that give none (and the ids of answers): different every call.
pub fn random_seed() -> u64 {
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

/// Checks stop sequences: each step looks for every one of them in the new text, so their
/// number and length are bounded, and no request can make a step slow.
pub(super) fn stops(stop: Option<Vec<String>>) -> Result<Vec<String>, ServiceError> {
    let stop = stop.unwrap_or_default();
    if stop.len() > MAX_STOPS {
        return Err(bad(format!(
            "stop may hold at most {MAX_STOPS} sequences (got {})",
            stop.len()
        )));
    }
    if stop.iter().any(String::is_empty) {
        return Err(bad("stop sequences must not be empty"));
    }
    if let Some(long) = stop.iter().find(|s| s.len() > MAX_STOP_BYTES) {
        return Err(bad(format!(
            "stop sequences may be at most {MAX_STOP_BYTES} bytes (got one of {})",
            long.len()
        )));
    }
    Ok(stop)
}

/// One string or a list of strings (OpenAI's `prompt` and `stop`).
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub(super) enum StringOrList {
    One(String),
    Many(Vec<String>),
}

impl StringOrList {
    pub fn into_vec(self) -> Vec<String> {
        match self {
            StringOrList::One(s) => vec![s],
            StringOrList::Many(v) => v,
        }
    }
}

/// The facts an answer is written from: the call's format, what the service made of the
/// prompt, and the answer's identity.
#[derive(Debug, Clone)]
pub struct AnswerContext {
    pub format: Format,
    pub prompt_text: String,
    pub prompt_tokens: usize,
    /// The seed, when sampling.
    pub seed: Option<u64>,
    pub stop: Vec<String>,
    pub model: String,
    pub id: String,
    pub created: u64,
    /// How to read calls in the answer (`tool_choice: "auto"`).
    pub tool_parsing: Option<ToolParsing>,
    /// How to tell a reasoning model's thinking apart (`reasoning_content`).
    pub reasoning: Option<ReasoningParsing>,
}

impl AnswerContext {
    /// The context of an answer in `format`, for a request sampled with `params` and stopped
    /// by `stop`, once the service queued it as `generation`.
    pub fn new(
        format: Format,
        params: &SamplingParams,
        stop: Vec<String>,
        generation: &Generation,
        model: String,
    ) -> Self {
        Self {
            format,
            prompt_text: generation.prompt_text.clone(),
            prompt_tokens: generation.prompt_tokens,
            seed: params.do_sample.then_some(params.seed),
            stop,
            model,
            tool_parsing: generation.tool_parsing,
            reasoning: generation.reasoning,
            id: format!("cmpl-{:016x}", random_seed()),
            created: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_secs()),
        }
    }

    /// `text` cut before the first stop sequence (OpenAI leaves it out; TGI keeps it).
    pub fn trim_stop<'a>(&self, text: &'a str) -> &'a str {
        let cut = self
            .stop
            .iter()
            .filter_map(|s| text.find(s.as_str()))
            .min()
            .unwrap_or(text.len());
        &text[..cut]
    }
}

/// Everything a finished sequence produced.
#[derive(Debug, Clone)]
pub struct Collected {
    pub tokens: Vec<TokenEvent>,
    pub reason: FinishReason,
    /// Prompt tokens restored from the prefix cache (OpenAI's `cached_tokens`).
    pub cached_tokens: usize,
}

impl Collected {
    /// The generated text.
    pub fn text(&self) -> String {
        self.tokens.iter().map(|t| t.text.as_str()).collect()
    }
}
