//! The generation service: everything between a checked generation request and the engine's
//! stream of tokens, whichever front end brought it. It owns the task's admission rules, so no
//! front end can skip them:
//!
//! - the prompt is rendered (chat) and tokenized off the async threads when long;
//! - an empty prompt is refused; a prompt that leaves no room for one new token is `TooLarge`;
//! - `max_new_tokens` is checked (or, for a default, clamped) against the room the prompt
//!   leaves in the model's context and in `--max-batch-total-tokens`;
//! - a request waits for a place in the running batch until `--request-timeout-ms`, then is
//!   answered `TimedOut` (the engine checks every waiting request at every step);
//! - the engine's queue holds at most `--queue-capacity` requests (`QueueFull` past it);
//! - a grammar (structured output) is compiled here, off the async threads, before anything
//!   is queued: an invalid or unsupported one is `Invalid`, naming the problem;
//! - a reasoning model's chat answer is read for its thinking text ([`super::reasoning`]),
//!   and a grammar then applies to what follows the reasoning
//!   ([`Grammar::AfterReasoning`]), as vLLM applies it.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::mpsc::{unbounded_channel, UnboundedReceiver};

use super::chat::{ChatMessage, ChatTemplate, TemplateKwargs};
use super::engine::{EngineHandle, Event, GenerationRequest, SubmitError};
use super::grammar::{Grammar, GrammarCompiler};
use super::prompt::chat_prompt;
use super::reasoning::ReasoningParsing;
use super::sampling::{SamplingDefaults, SamplingParams};
use super::tokenizer::GenTokenizer;
use super::tool_syntax::{AutoTools, ToolParsing};
use crate::error::ServiceError;
use crate::model::{ModelInfo, TokenInfo};
use crate::offload::Offload;

/// What the prompt is.
#[derive(Debug, Clone)]
pub enum Prompt {
    /// Raw text, tokenized as it is (control tokens written in it are parsed, as TGI and
    /// OpenAI's completions do).
    Text(String),
    /// A conversation, rendered through the model's chat template with `kwargs` as further
    /// variables (checked by [`super::chat::check_kwargs`]).
    Chat {
        messages: Vec<ChatMessage>,
        kwargs: TemplateKwargs,
    },
}

impl Prompt {
    /// Bytes of text the prompt holds.
    pub fn text_bytes(&self) -> usize {
        match self {
            Prompt::Text(t) => t.len(),
            Prompt::Chat { messages, .. } => messages
                .iter()
                .map(|m| m.role.len() + m.content.len())
                .sum(),
        }
    }
}

/// How many new tokens a request may produce.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Length {
    /// At most `n`, as the request asked in its field `field`: more than the prompt leaves
    /// room for is `TooLarge`, naming the field.
    Asked { n: usize, field: &'static str },
    /// The route's default (`None`: `--default-max-new-tokens`), cut to the room the prompt
    /// leaves.
    Default(Option<usize>),
    /// This many tokens in all, prompt included (the upstream `{"text"}` application's
    /// `max_length`), at least one new token.
    Total(usize),
}

/// A checked generation request, not yet tokenized.
#[derive(Debug, Clone)]
pub struct GenerateRequest {
    pub prompt: Prompt,
    pub params: SamplingParams,
    pub length: Length,
    /// Stop sequences (checked by the front end: at most 8, each at most 256 bytes).
    pub stop: Vec<String>,
    /// Keep generating past end-of-sequence tokens (load tests).
    pub ignore_eos: bool,
    /// What the output must follow (structured output), if anything.
    pub grammar: Option<Grammar>,
    /// Functions the model may call or not (`tool_choice: "auto"`; chat prompts only): the
    /// answer follows the template's call syntax ([`super::tool_syntax`]).
    pub tools: Option<AutoTools>,
    /// Tell a reasoning model's thinking text apart from its answer (chat prompts whose
    /// template has thinking tags; [`super::reasoning`]): `Some(false)` keeps it inline,
    /// `None` is the server's `--reasoning-format`.
    pub split_reasoning: Option<bool>,
    /// Added to these tokens' logits before the grammar's mask and sampling (OpenAI's
    /// `logit_bias`: token id, −100 to 100).
    pub logit_bias: Vec<(u32, f32)>,
}

/// A request the engine has queued: what the answer needs, and its events.
pub struct Generation {
    /// The prompt as the model reads it (a chat rendered through its template).
    pub prompt_text: String,
    pub prompt_tokens: usize,
    /// How to read calls in the answer (a request with `tools` under `tool_choice: "auto"`).
    pub tool_parsing: Option<ToolParsing>,
    /// How to tell the reasoning in the answer apart (a reasoning model's chat answer).
    pub reasoning: Option<ReasoningParsing>,
    /// Tokens, then one `Done` or `Failed`. Dropping it cancels the sequence (the engine
    /// retires it at its next step).
    pub events: UnboundedReceiver<Event>,
}

/// How the generation service runs (from the options).
#[derive(Debug, Clone, Copy)]
pub struct GenerateSettings {
    /// New tokens when a request does not say (`--default-max-new-tokens`).
    pub default_max_new_tokens: usize,
    /// Longest wait for a place in the running batch (`--request-timeout-ms`).
    pub request_timeout: Duration,
    /// Read control tokens spelled in chat messages as control tokens
    /// (`--parse-special-in-chat`; see [`super::prompt`]).
    pub parse_special_in_chat: bool,
    /// Split a reasoning model's thinking text from its answer when a request does not say
    /// (`--reasoning-format`, not `none`).
    pub split_reasoning: bool,
    /// The compiled grammars' cache budget (`--grammar-cache-bytes`).
    pub grammar_cache_bytes: usize,
}

/// The generation model's service.
pub struct GenerateService {
    info: ModelInfo,
    tokenizer: Arc<GenTokenizer>,
    chat: Option<Arc<ChatTemplate>>,
    defaults: SamplingDefaults,
    engine: EngineHandle,
    offload: Offload,
    settings: GenerateSettings,
    grammars: Arc<GrammarCompiler>,
}

impl GenerateService {
    /// The service over a started engine.
    pub fn new(
        info: ModelInfo,
        tokenizer: Arc<GenTokenizer>,
        chat: Option<ChatTemplate>,
        defaults: SamplingDefaults,
        engine: EngineHandle,
        offload: Offload,
        settings: GenerateSettings,
    ) -> Self {
        let grammars = Arc::new(
            GrammarCompiler::new(tokenizer.clone(), engine.vocab())
                .with_cache_bytes(settings.grammar_cache_bytes),
        );
        Self {
            info,
            tokenizer,
            grammars,
            chat: chat.map(Arc::new),
            defaults,
            engine,
            offload,
            settings,
        }
    }

    /// Facts about the model.
    pub fn info(&self) -> &ModelInfo {
        &self.info
    }

    /// The model's own sampling settings, for the routes that use them where a request is
    /// silent.
    pub fn defaults(&self) -> &SamplingDefaults {
        &self.defaults
    }

    /// Where this service's request work runs off the async threads (shared by the services).
    pub fn offload(&self) -> &Offload {
        &self.offload
    }

    /// The engine's limits (what `/info` shows).
    pub fn limits(&self) -> super::engine::EngineLimits {
        self.engine.limits()
    }

    /// Requests waiting for a place in the running batch.
    pub fn waiting(&self) -> usize {
        self.engine.waiting()
    }

    /// Lets the engine end once its running sequences are done (after the drain).
    pub fn stop(&self) {
        self.engine.stop();
    }

    /// Checks, tokenizes and queues `request`; the answer streams from the returned events.
    pub async fn submit(&self, mut request: GenerateRequest) -> Result<Generation, ServiceError> {
        let vocab = self.engine.vocab();
        if let Some((id, _)) = request
            .logit_bias
            .iter()
            .find(|(id, _)| *id as usize >= vocab)
        {
            return Err(ServiceError::Invalid(format!(
                "logit_bias names token {id}, outside the model's vocabulary of {vocab}"
            )));
        }
        let tool_parsing = self.prepare_tools(&mut request)?;
        let is_chat = matches!(request.prompt, Prompt::Chat { .. });
        let (prompt_text, ids) = self.prompt_ids(request.prompt).await?;
        let reasoning = self.reasoning(is_chat, request.split_reasoning, &prompt_text);
        let grammar = match (request.grammar, reasoning) {
            (Some(g), Some(r)) => Some(Grammar::AfterReasoning {
                start: r.tags.start.into(),
                end: r.tags.end.into(),
                open: r.open,
                then: Box::new(g),
            }),
            (g, _) => g,
        };
        let constraint = match grammar {
            Some(grammar) => {
                let grammars = self.grammars.clone();
                let compiled = self
                    .offload
                    .off(move || Ok(grammars.compile(&grammar)))
                    .await?;
                Some(Box::new(
                    compiled.map_err(|e| ServiceError::Invalid(e.to_string()))?,
                ))
            }
            None => None,
        };
        let context = self.engine.context();
        let budget = self.engine.limits().max_batch_total_tokens;
        let limit = context.min(budget);
        if ids.is_empty() {
            return Err(ServiceError::Invalid(
                "the prompt is empty: give at least one token of text".into(),
            ));
        }
        if ids.len() >= limit {
            return Err(ServiceError::TooLarge(format!(
                "the prompt has {} tokens; this server takes at most {} (the model's context is {context}, --max-batch-total-tokens is {budget}), leaving room for one new token",
                ids.len(),
                limit - 1
            )));
        }
        let room = limit - ids.len();
        let max_new_tokens = match request.length {
            Length::Total(total) => total.saturating_sub(ids.len()).clamp(1, room),
            Length::Default(n) => n
                .unwrap_or(self.settings.default_max_new_tokens)
                .clamp(1, room),
            Length::Asked { n, .. } if n <= room => n,
            Length::Asked { n, field } => {
                return Err(ServiceError::TooLarge(format!(
                    "{field} is {n}, but the prompt's {} tokens leave room for {room} (the model's context is {context}, --max-batch-total-tokens is {budget})",
                    ids.len()
                )))
            }
        };
        let (events, rx) = unbounded_channel();
        let prompt_tokens = ids.len();
        let now = Instant::now();
        let queued = GenerationRequest {
            prompt: ids,
            params: request.params,
            max_new_tokens,
            stop: request.stop,
            ignore_eos: request.ignore_eos,
            constraint,
            keep_special: self.kept_markers(tool_parsing),
            logit_bias: request.logit_bias,
            events,
            queued_at: now,
            deadline: now + self.settings.request_timeout,
        };
        match self.engine.submit(queued) {
            Ok(()) => Ok(Generation {
                prompt_text,
                prompt_tokens,
                tool_parsing,
                reasoning,
                events: rx,
            }),
            Err(SubmitError::Full) => Err(ServiceError::QueueFull(format!(
                "the generation queue is full ({} requests waiting; --queue-capacity); retry",
                self.engine.waiting()
            ))),
            Err(SubmitError::Closed) => Err(ServiceError::ShuttingDown(
                "the generation engine has stopped; retry on another replica".into(),
            )),
        }
    }

    /// A chat request's conversation and grammar made ready for the template's call syntax:
    /// messages as the template needs them, and (under `tool_choice: "auto"`) the syntax's
    /// lazy grammar, unless the request gives its own.
    fn prepare_tools(
        &self,
        request: &mut GenerateRequest,
    ) -> Result<Option<ToolParsing>, ServiceError> {
        let (Prompt::Chat { messages, .. }, Some(template)) = (&mut request.prompt, &self.chat)
        else {
            return Ok(None);
        };
        let syntax = template.tool_syntax();
        *messages = syntax.prepare(std::mem::take(messages), request.tools.as_ref());
        let Some(tools) = &request.tools else {
            return Ok(None);
        };
        if request.grammar.is_none() {
            let tokenizer = &self.tokenizer;
            request.grammar = Some(syntax.grammar(tools, &|t| tokenizer.special_id(t)));
        }
        Ok(Some(ToolParsing {
            syntax,
            parallel: tools.parallel,
        }))
    }

    /// The control tokens an answer read for calls keeps as text: its syntax's markers.
    fn kept_markers(&self, tool_parsing: Option<ToolParsing>) -> Vec<u32> {
        tool_parsing
            .map(|tp| tp.syntax.markers())
            .unwrap_or_default()
            .iter()
            .filter_map(|m| self.tokenizer.special_id(m))
            .collect()
    }

    /// How a chat answer's reasoning is told apart: when the request (or the server's
    /// default) splits it and the template has thinking tags; the answer starts inside the
    /// reasoning when the rendered prompt opened the block.
    fn reasoning(
        &self,
        is_chat: bool,
        split: Option<bool>,
        prompt_text: &str,
    ) -> Option<ReasoningParsing> {
        if !is_chat || !split.unwrap_or(self.settings.split_reasoning) {
            return None;
        }
        let tags = self.chat.as_ref()?.thinking()?;
        Some(ReasoningParsing {
            tags,
            open: tags.opened_by(prompt_text),
        })
    }

    /// The error a sequence that waited past its deadline ends in.
    pub fn timed_out(&self) -> ServiceError {
        ServiceError::TimedOut(
            self.settings.request_timeout.as_millis() as u64,
            "a place in the running batch",
        )
    }

    /// The tokens of each text, as a prompt of the model reads them.
    pub async fn tokenize(
        &self,
        texts: Vec<String>,
        add_special_tokens: bool,
    ) -> Result<Vec<Vec<TokenInfo>>, ServiceError> {
        let bytes = texts.iter().map(String::len).sum();
        let tokenizer = self.tokenizer.clone();
        self.offload
            .run(bytes, move || {
                texts
                    .iter()
                    .enumerate()
                    .map(|(i, text)| {
                        tokenizer.tokens(text, add_special_tokens).map_err(|e| {
                            ServiceError::Invalid(format!("input {i} cannot be tokenized: {e}"))
                        })
                    })
                    .collect()
            })
            .await
    }

    /// The text of each list of token ids (`/decode`), special tokens left out when
    /// `skip_special_tokens`.
    pub async fn decode(
        &self,
        ids: Vec<Vec<u32>>,
        skip_special_tokens: bool,
    ) -> Result<Vec<String>, ServiceError> {
        let bytes = ids.iter().map(|list| 4 * list.len()).sum();
        let tokenizer = self.tokenizer.clone();
        self.offload
            .run(bytes, move || {
                tokenizer
                    .decode_lists(&ids, skip_special_tokens)
                    .map_err(ServiceError::Invalid)
            })
            .await
    }

    /// The prompt's text as the model reads it, and its ids.
    async fn prompt_ids(&self, prompt: Prompt) -> Result<(String, Vec<u32>), ServiceError> {
        let tokenizer = self.tokenizer.clone();
        match prompt {
            Prompt::Text(text) => {
                self.offload
                    .run(text.len(), move || {
                        let ids = tokenizer.encode(&text, true).map_err(|e| {
                            ServiceError::Invalid(format!("the prompt cannot be tokenized: {e}"))
                        })?;
                        Ok((text, ids))
                    })
                    .await
            }
            Prompt::Chat { messages, kwargs } => {
                let template = self.chat.clone().ok_or_else(|| {
                    ServiceError::Invalid(
                        "the loaded model has no chat template (tokenizer.chat_template): use /v1/completions or /generate".into(),
                    )
                })?;
                let parse_special = self.settings.parse_special_in_chat;
                // Always off the async threads: a template from a model file may be slow.
                self.offload
                    .off(move || {
                        chat_prompt(&template, &tokenizer, &messages, &kwargs, parse_special)
                    })
                    .await
            }
        }
    }
}
