//! Continuous (iteration-level) batching: one thread owns the running batch and loops over
//! steps. Each step admits waiting requests while the KV-cache budget allows, runs one forward
//! pass over every running sequence (a chunk of its prompt while it prefills, else its last
//! token), samples one token for each sequence that produced logits, streams it to its client,
//! and retires sequences that finished or whose client went away, freeing their cache at once.
//!
//! Why one loop for both cores rather than one per worker: a step's linear layers read every
//! weight once whatever the batch size, so one batch of 32 costs far less than two of 16; the
//! matmuls split their output columns over the cores (`crate::kernels`), attention splits its
//! sequences. Measured in docs/benchmarks.md.
//!
//! Requests wait in a bounded channel (the queue: full means 503 at the front end) until the
//! budget has room for their prompt plus `max_new_tokens`, reserved at admission so a running
//! sequence never has to be evicted. Every step the engine takes in what was submitted and
//! looks at every waiting request: one whose client left is dropped, one that waited past its
//! deadline (`--request-timeout-ms`) is answered [`Failure::TimedOut`]; then it admits from
//! the front, in order.
//!
//! A sequence with a grammar ([`super::grammar`]) has its token mask computed on a thread of
//! its own while the step's forward pass runs on this one (the mask needs only the tokens
//! committed so far, the forward only the caches), then applied to its logits before sampling;
//! sequences without one pay nothing, and a step without any spawns nothing.

use std::collections::VecDeque;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Instant;

use crossbeam_channel::{Receiver, Sender, TrySendError};
use tokio::sync::mpsc::UnboundedSender;

use super::decoder::{Decoder, StepInput};
use super::grammar::mask::Masked;
use super::grammar::Constraint;
use super::incremental::IncrementalDecoder;
use super::kv_cache::KvCache;
use super::prefix_cache::PrefixCache;
use super::sampling::{Choice, Sampler, SamplingParams};
use super::tokenizer::GenTokenizer;
use crate::metrics;

/// Why a sequence ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FinishReason {
    /// `max_new_tokens` reached (or the context is full).
    Length,
    /// The model produced an end-of-sequence token.
    EosToken,
    /// The text reached one of the request's stop sequences.
    StopSequence,
    /// The request's grammar allows no further token (or failed) before it was complete.
    GrammarError,
}

impl FinishReason {
    /// TGI's name.
    pub fn tgi(self) -> &'static str {
        match self {
            FinishReason::Length => "length",
            FinishReason::EosToken => "eos_token",
            FinishReason::StopSequence => "stop_sequence",
            FinishReason::GrammarError => "grammar_error",
        }
    }

    /// OpenAI's name.
    pub fn openai(self) -> &'static str {
        match self {
            FinishReason::Length => "length",
            FinishReason::EosToken | FinishReason::StopSequence => "stop",
            FinishReason::GrammarError => "grammar_error",
        }
    }
}

/// One generated token as streamed to the client.
#[derive(Debug, Clone)]
pub struct TokenEvent {
    pub id: u32,
    /// The text this token adds (empty for special tokens, or while a character is split).
    pub text: String,
    pub logprob: f32,
    pub special: bool,
}

/// What the engine sends a request's client, in order: tokens, then one `Done` (or `Failed`).
#[derive(Debug, Clone)]
pub enum Event {
    Token(TokenEvent),
    Done {
        reason: FinishReason,
        generated_tokens: usize,
        prompt_tokens: usize,
        /// Prompt tokens restored from the prefix cache rather than prefilled.
        cached_tokens: usize,
    },
    Failed(Failure),
}

/// Why a sequence ended without finishing.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Failure {
    /// It waited past its deadline for a place in the running batch (it never started).
    #[error("the request waited longer than the request timeout for a place in the running batch")]
    TimedOut,
    /// The step that ran it failed (a bug).
    #[error("{0}")]
    Step(String),
}

/// A validated generation request.
pub struct GenerationRequest {
    pub prompt: Vec<u32>,
    pub params: SamplingParams,
    pub max_new_tokens: usize,
    pub stop: Vec<String>,
    /// Keep going past end-of-sequence tokens (benchmarks; not past a grammar's end).
    pub ignore_eos: bool,
    /// The grammar the output must follow, compiled (by the service).
    pub constraint: Option<Box<Constraint>>,
    /// Control tokens whose text the answer keeps (decoding leaves the others out): a call
    /// syntax's markers, which the answer's parser reads (llama.cpp's `preserved_tokens`).
    pub keep_special: Vec<u32>,
    /// Added to these tokens' logits before the mask and sampling (ids inside the logits).
    pub logit_bias: Vec<(u32, f32)>,
    pub events: UnboundedSender<Event>,
    pub queued_at: Instant,
    /// Past this, a request still waiting for admission is answered [`Failure::TimedOut`].
    pub deadline: Instant,
}

impl GenerationRequest {
    /// Cache tokens the request may need: its prompt and every new token.
    fn reservation(&self) -> usize {
        self.prompt.len() + self.max_new_tokens
    }
}

/// The engine's limits.
#[derive(Debug, Clone, Copy)]
pub struct EngineLimits {
    /// KV-cache tokens over all running sequences (`--max-batch-total-tokens`).
    pub max_batch_total_tokens: usize,
    /// Most sequences running at once.
    pub max_running: usize,
    /// Most prompt tokens prefilled in one step, over all sequences, so that running streams
    /// keep flowing while a long prompt is read.
    pub prefill_chunk: usize,
    /// Bytes of keys and values kept for reuse by later prompts (`--prefix-cache-bytes`;
    /// 0: none).
    pub prefix_cache_bytes: usize,
}

/// Why a request could not be queued.
#[derive(Debug, PartialEq, Eq)]
pub enum SubmitError {
    /// The queue is full: try again later.
    Full,
    /// The engine has stopped.
    Closed,
}

/// What the queue carries to the engine.
enum Message {
    Request(Box<GenerationRequest>),
    /// Finish the running sequences, then end the loop (the server has drained).
    Stop,
}

/// The front end's side of the engine: submits requests to the bounded queue.
#[derive(Clone)]
pub struct EngineHandle {
    tx: Sender<Message>,
    /// Requests submitted and not yet admitted (in the channel or held by the engine).
    waiting: Arc<AtomicUsize>,
    capacity: usize,
    limits: EngineLimits,
    context: usize,
    vocab: usize,
}

impl EngineHandle {
    /// Queues `request`, or refuses at once when `capacity` requests are waiting.
    pub fn submit(&self, request: GenerationRequest) -> Result<(), SubmitError> {
        if self.waiting.fetch_add(1, Ordering::AcqRel) >= self.capacity {
            self.waiting.fetch_sub(1, Ordering::AcqRel);
            return Err(SubmitError::Full);
        }
        match self.tx.try_send(Message::Request(Box::new(request))) {
            Ok(()) => {
                metrics::set_queue_depth(self.waiting());
                Ok(())
            }
            Err(e) => {
                self.waiting.fetch_sub(1, Ordering::AcqRel);
                Err(match e {
                    TrySendError::Full(_) => SubmitError::Full,
                    TrySendError::Disconnected(_) => SubmitError::Closed,
                })
            }
        }
    }

    /// Asks the engine to end once its running sequences are done (after the drain).
    pub fn stop(&self) {
        let _ = self.tx.send(Message::Stop);
    }

    /// The limits the engine runs with.
    pub fn limits(&self) -> EngineLimits {
        self.limits
    }

    /// The model's context length.
    pub fn context(&self) -> usize {
        self.context
    }

    /// Entries in the model's logits (the grammar's token trie has as many).
    pub fn vocab(&self) -> usize {
        self.vocab
    }

    /// Requests waiting for admission.
    pub fn waiting(&self) -> usize {
        self.waiting.load(Ordering::Acquire)
    }
}

/// A request being generated.
struct Running {
    req: GenerationRequest,
    cache: KvCache,
    sampler: Sampler,
    /// Prompt tokens already in the cache.
    prefilled: usize,
    /// Prompt tokens restored from the prefix cache at admission.
    restored: usize,
    generated: Vec<u32>,
    decoder: IncrementalDecoder,
    /// Text generated so far (for stop sequences).
    text: String,
    last_token_at: Option<Instant>,
}

impl Running {
    fn cached(&self) -> usize {
        self.cache.len()
    }
}

/// The step loop's state.
pub struct Engine {
    model: Arc<dyn Decoder>,
    tokenizer: Arc<GenTokenizer>,
    rx: Receiver<Message>,
    waiting: Arc<AtomicUsize>,
    /// A stop was received: no more requests come.
    stopping: bool,
    limits: EngineLimits,
    running: Vec<Running>,
    /// Requests taken from the channel and not yet admitted, oldest first.
    queue: VecDeque<GenerationRequest>,
    reserved: usize,
    /// Keys and values of earlier prompts, for the ones that start the same way (`None`
    /// when switched off).
    prefix: Option<PrefixCache>,
}

impl Engine {
    /// An engine for `model` with a queue of `capacity` requests.
    pub fn new(
        model: Arc<dyn Decoder>,
        tokenizer: Arc<GenTokenizer>,
        limits: EngineLimits,
        capacity: usize,
    ) -> (Self, EngineHandle) {
        let capacity = capacity.max(1);
        // One place more than the capacity, for the stop message.
        let (tx, rx) = crossbeam_channel::bounded(capacity + 1);
        let waiting = Arc::new(AtomicUsize::new(0));
        let context = model.shape().context;
        let vocab = model.shape().vocab;
        metrics::set_kv_cache_budget(limits.max_batch_total_tokens);
        metrics::set_prefix_cache_budget(limits.prefix_cache_bytes);
        (
            Self {
                model,
                tokenizer,
                rx,
                waiting: waiting.clone(),
                stopping: false,
                limits,
                running: Vec::new(),
                queue: VecDeque::new(),
                reserved: 0,
                prefix: (limits.prefix_cache_bytes > 0)
                    .then(|| PrefixCache::new(limits.prefix_cache_bytes)),
            },
            EngineHandle {
                tx,
                waiting,
                capacity,
                limits,
                context,
                vocab,
            },
        )
    }

    /// Runs steps until every handle is dropped and nothing is left to do, on a team of
    /// `threads` threads (this one included). Sleeps (blocked on the queue) when idle.
    pub fn run(self, threads: usize) {
        crate::kernels::team::with_new_team(threads, "generation", || self.run_steps())
    }

    fn run_steps(mut self) {
        loop {
            if self.running.is_empty() && self.queue.is_empty() {
                if self.stopping {
                    return;
                }
                match self.rx.recv() {
                    Ok(Message::Request(r)) => self.queue.push_back(*r),
                    Ok(Message::Stop) | Err(_) => self.stopping = true,
                }
            }
            self.admit();
            self.drop_cancelled();
            if self.running.is_empty() {
                continue;
            }
            self.step();
        }
    }

    /// Takes in what was submitted, drops the waiting requests whose client left or whose
    /// deadline passed, then admits from the front, in order, while the budget and the batch
    /// size allow.
    fn admit(&mut self) {
        loop {
            match self.rx.try_recv() {
                Ok(Message::Request(r)) => self.queue.push_back(*r),
                Ok(Message::Stop) => self.stopping = true,
                Err(_) => break,
            }
        }
        let now = Instant::now();
        let before = self.queue.len();
        let mut expired = Vec::new();
        self.queue.retain(|r| {
            if r.events.is_closed() {
                return false; // Its client left while it waited.
            }
            if now >= r.deadline {
                expired.push(r.events.clone());
                return false;
            }
            true
        });
        let gone = before - self.queue.len();
        if gone > 0 {
            // Counted out before they are answered, so a client that reads the queue depth
            // right after its 503 no longer sees itself waiting.
            self.waiting.fetch_sub(gone, Ordering::AcqRel);
            metrics::set_queue_depth(self.waiting.load(Ordering::Acquire));
        }
        for events in expired {
            let _ = events.send(Event::Failed(Failure::TimedOut));
        }
        let mut left = 0;
        while let Some(req) = self.queue.front() {
            let need = req.reservation();
            let fits = self.reserved + need <= self.limits.max_batch_total_tokens
                && self.running.len() < self.limits.max_running;
            if !fits {
                break;
            }
            let req = self.queue.pop_front().expect("the front exists");
            left += 1;
            self.reserved += need;
            let mut cache = self.model.new_cache(need);
            // The prompt's longest cached prefix is copied in; only the rest is prefilled.
            let restored = match self.prefix.as_mut() {
                Some(prefix) => prefix.restore(&req.prompt, &mut cache),
                None => 0,
            };
            let sampler = Sampler::new(req.params.clone());
            self.running.push(Running {
                req,
                cache,
                sampler,
                prefilled: restored,
                restored,
                generated: Vec::new(),
                decoder: IncrementalDecoder::new(),
                text: String::new(),
                last_token_at: None,
            });
        }
        if left > 0 {
            self.waiting.fetch_sub(left, Ordering::AcqRel);
        }
        metrics::set_queue_depth(self.waiting.load(Ordering::Acquire));
        self.publish_state();
    }

    fn publish_state(&self) {
        let kv: usize = self.running.iter().map(Running::cached).sum();
        metrics::set_generation_state(self.running.len(), kv);
    }

    /// Retires sequences whose client is gone (disconnected or dropped stream).
    fn drop_cancelled(&mut self) {
        let before = self.running.len();
        let mut freed = 0;
        self.running.retain(|r| {
            let keep = !r.req.events.is_closed();
            if !keep {
                freed += r.req.reservation();
            }
            keep
        });
        self.reserved -= freed;
        if self.running.len() != before {
            self.publish_state();
        }
    }

    /// One forward pass over the running batch, then sampling and retirement.
    fn step(&mut self) {
        let mut prefill_left = self.limits.prefill_chunk.max(1);
        // Which sequences take part, and which of them want logits.
        let mut plan: Vec<(usize, usize, usize, bool)> = Vec::with_capacity(self.running.len());
        for (i, r) in self.running.iter().enumerate() {
            let prompt_len = r.req.prompt.len();
            if r.prefilled < prompt_len {
                if prefill_left == 0 {
                    continue;
                }
                let n = (prompt_len - r.prefilled).min(prefill_left);
                prefill_left -= n;
                plan.push((i, r.prefilled, n, r.prefilled + n == prompt_len));
            } else {
                plan.push((i, 0, 1, true));
            }
        }
        let result = {
            let mut inputs: Vec<StepInput> = Vec::with_capacity(plan.len());
            // The constraints of the sequences that sample this step: masked meanwhile.
            let mut masks: Vec<&mut Constraint> = Vec::new();
            let mut rest: &mut [Running] = &mut self.running;
            let mut base = 0;
            for &(i, from, n, want) in &plan {
                let (_, tail) = rest.split_at_mut(i - base);
                let (r, tail) = tail.split_first_mut().expect("planned index in range");
                rest = tail;
                base = i + 1;
                let tokens: &[u32] = if r.prefilled < r.req.prompt.len() {
                    &r.req.prompt[from..from + n]
                } else {
                    &r.generated[r.generated.len() - 1..]
                };
                inputs.push(StepInput {
                    cache: &mut r.cache,
                    tokens,
                    want_logits: want,
                });
                if let Some(c) = r.req.constraint.as_deref_mut().filter(|_| want) {
                    masks.push(c);
                }
            }
            let model = &self.model;
            let mut forward =
                || std::panic::catch_unwind(AssertUnwindSafe(|| model.step(&mut inputs)));
            if masks.is_empty() {
                forward()
            } else {
                std::thread::scope(|s| {
                    let masker = std::thread::Builder::new()
                        .name("zerobatch-grammar".into())
                        .spawn_scoped(s, move || masks.into_iter().for_each(|c| c.compute_mask()));
                    let result = forward();
                    // A mask that failed to be computed is computed again when applied.
                    if let Ok(masker) = masker {
                        let _ = masker.join();
                    }
                    result
                })
            }
        };
        let logits = match result {
            Ok(l) => l,
            Err(panic) => {
                let message = format!(
                    "generation failed (a bug: please report it): {}",
                    crate::error::panic_message(&panic)
                );
                tracing::error!("{message}");
                // The caches of this step are in an unknown state: end every sequence in it.
                let failed: Vec<usize> = plan.iter().map(|p| p.0).collect();
                for &i in failed.iter().rev() {
                    let r = self.running.swap_remove(i);
                    self.reserved -= r.req.reservation();
                    let _ = r
                        .req
                        .events
                        .send(Event::Failed(Failure::Step(message.clone())));
                }
                self.publish_state();
                return;
            }
        };
        // Each sequence's token is chosen on the team: the rows are long (Qwen's vocabulary is
        // 151,936 logits) and independent, and the other core would wait meanwhile.
        let mut choices = self.choose_all(&plan, logits).into_iter();
        let now = Instant::now();
        let mut finished = Vec::new();
        let mut produced = 0u64;
        for &(i, _, n, want) in &plan {
            let r = &mut self.running[i];
            if r.prefilled < r.req.prompt.len() {
                r.prefilled += n;
                // What is read of the prompt is stored at once: later prompts that start the
                // same way reuse it while this sequence still runs, and a sliding-window
                // layer still holds all of this chunk (it drops old positions as the next
                // chunk comes in).
                if let Some(prefix) = self.prefix.as_mut() {
                    prefix.store(&r.req.prompt[..r.prefilled], &r.cache);
                }
            }
            if !want {
                continue;
            }
            let choice = match choices
                .next()
                .expect("one choice per sequence that wants one")
            {
                Some(choice) => choice,
                None => {
                    finished.push((i, FinishReason::GrammarError));
                    continue;
                }
            };
            produced += 1;
            match r.last_token_at {
                None => metrics::record_time_to_first_token(now - r.req.queued_at),
                Some(t) => metrics::record_inter_token(now - t),
            }
            r.last_token_at = Some(now);
            r.generated.push(choice.id);
            let constrained = r.req.constraint.is_some();
            let is_end = self.tokenizer.is_end(choice.id) && (!r.req.ignore_eos || constrained);
            // The grammar takes the token; `Some(true)`: it is complete.
            let grammar = match r.req.constraint.as_deref_mut() {
                Some(c) if !is_end => Some(c.commit(choice.id).unwrap_or_else(|e| {
                    tracing::warn!("{e}");
                    false
                })),
                _ => None,
            };
            let special = self.tokenizer.is_special(choice.id);
            let text = if is_end {
                String::new()
            } else if special && r.req.keep_special.contains(&choice.id) {
                self.tokenizer
                    .token_text(choice.id)
                    .unwrap_or_default()
                    .to_string()
            } else {
                r.decoder.push(&self.tokenizer, choice.id)
            };
            r.text.push_str(&text);
            let _ = r.req.events.send(Event::Token(TokenEvent {
                id: choice.id,
                text,
                logprob: choice.logprob,
                special,
            }));
            let context_full = r.prompt_and_generated() >= self.model.shape().context;
            let reason = if is_end || grammar == Some(true) {
                Some(FinishReason::EosToken)
            } else if r
                .req
                .stop
                .iter()
                .any(|s| !s.is_empty() && r.text.contains(s.as_str()))
            {
                Some(FinishReason::StopSequence)
            } else if r.generated.len() >= r.req.max_new_tokens || context_full {
                Some(FinishReason::Length)
            } else {
                None
            };
            if let Some(reason) = reason {
                finished.push((i, reason));
            }
        }
        finished.sort_unstable_by_key(|f| std::cmp::Reverse(f.0));
        let done: Vec<(Running, FinishReason)> = finished
            .into_iter()
            .map(|(i, reason)| (self.running.swap_remove(i), reason))
            .collect();
        for (r, _) in &done {
            self.reserved -= r.req.reservation();
            // What it generated is kept too: the next turn of a conversation repeats it.
            if let Some(prefix) = self.prefix.as_mut() {
                let tokens: Vec<u32> = r.req.prompt.iter().chain(&r.generated).copied().collect();
                prefix.store(&tokens, &r.cache);
            }
        }
        // The metrics first: a client that has its answer sees its tokens counted.
        let kv: usize = self.running.iter().map(Running::cached).sum();
        metrics::record_generation_step(plan.len(), produced, self.running.len(), kv);
        for (r, reason) in done {
            let _ = r.req.events.send(Event::Done {
                reason,
                generated_tokens: r.generated.len(),
                prompt_tokens: r.req.prompt.len(),
                cached_tokens: r.restored,
            });
        }
    }
}

impl Engine {
    /// Chooses the next token of every planned sequence that wants one (in plan order), on
    /// the team: its logit bias, its grammar's mask, then its sampler. `None`: the grammar
    /// allows no token (the sequence ends).
    fn choose_all(
        &mut self,
        plan: &[(usize, usize, usize, bool)],
        logits: Vec<Vec<f32>>,
    ) -> Vec<Option<Choice>> {
        let wants: Vec<usize> = plan.iter().filter(|p| p.3).map(|p| p.0).collect();
        let mut rows: Vec<(&mut Running, Vec<f32>, Option<Choice>)> = Vec::new();
        let mut logits = logits.into_iter();
        // Plan indices increase, so one pass hands out each sequence once.
        let mut next = wants.iter().peekable();
        for (i, r) in self.running.iter_mut().enumerate() {
            if next.peek() == Some(&&i) {
                next.next();
                let l = logits
                    .next()
                    .expect("one row of logits per sequence that wants them");
                rows.push((r, l, None));
            }
        }
        let threads = crate::kernels::team::available_threads();
        crate::kernels::team::parallel_for_each(&mut rows, threads, &|_, row| {
            let (r, l, choice) = row;
            *choice = choose(r, l);
        });
        rows.into_iter().map(|(_, _, c)| c).collect()
    }
}

/// One sequence's next token from its row of logits (see [`Engine::choose_all`]).
fn choose(r: &mut Running, l: &mut [f32]) -> Option<Choice> {
    for &(id, bias) in &r.req.logit_bias {
        if let Some(v) = l.get_mut(id as usize) {
            *v += bias;
        }
    }
    if let Some(c) = r.req.constraint.as_deref_mut() {
        if let Masked::Nothing(why) = c.apply(l) {
            tracing::debug!("a constrained sequence ends: {why}");
            return None;
        }
    }
    let history: Vec<u32> = if r.sampler.params().repetition_penalty != 1.0 {
        r.req.prompt.iter().chain(&r.generated).copied().collect()
    } else {
        Vec::new()
    };
    Some(r.sampler.choose(l, &history))
}

impl Running {
    fn prompt_and_generated(&self) -> usize {
        self.req.prompt.len() + self.generated.len()
    }
}
