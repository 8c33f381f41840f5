//! The encoder service: everything between a checked request and its answer, whichever front
//! end (HTTP or the queue broker) brought it, for the encoder models: embeddings, and the
//! scores of a sequence classifier (a cross-encoder reranker, a text classifier, [`score`]).
//!
//! ```text
//! EmbedService::embed / rerank / predict ─ tokenize (offloaded when long)
//!     ─▶ queue (bounded, all or nothing) ─▶ batcher (dynamic micro-batches)
//!     ─▶ worker pool (one thread per core) ─▶ model
//!     ◀─ one reply per input (a text, or a pair of texts), awaited until --request-timeout-ms
//! ```
//!
//! - [`queue`]: the bounded channel and its entries (503 `queue_full` when full);
//! - [`batcher`]: when a worker is free, which waiting inputs form its batch;
//! - [`worker`]: the fixed pool of inference threads;
//! - [`score`]: reranking and classification on this pipeline (each pair one entry).
//!
//! The service owns the admission rules of its task (input lengths, the queue's capacity, the
//! deadline, the `dimensions` and prompts a request may ask for), so that no front end can skip
//! them.

pub mod batcher;
pub mod queue;
pub mod score;
pub mod worker;

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::oneshot;

use crate::error::ServiceError;
use crate::model::pooling::l2_normalize;
use crate::model::{LoadedModel, ModelInfo, TextTokenizer, TokenInfo};
use crate::offload::Offload;
use batcher::{BatchLimits, Batcher};
use queue::{Arrival, Entry, InferError, Job, Output, Queue, QueueError};
use worker::WorkerPool;

/// How the embedding service runs (from the options).
#[derive(Debug, Clone, Copy)]
pub struct EmbedSettings {
    /// Inference threads.
    pub workers: usize,
    /// Cores the intra-op sections may use.
    pub cores: usize,
    pub batch: BatchLimits,
    /// How long a free worker may wait for a fuller batch.
    pub batch_delay: Duration,
    /// Most inputs waiting for a worker.
    pub queue_capacity: usize,
    /// Longest wait for a worker's answer, counted from when the request is queued.
    pub request_timeout: Duration,
}

/// What an embedding request asks for besides its texts.
#[derive(Debug, Clone)]
pub struct EmbedOptions {
    /// Cut inputs longer than the model's maximum instead of refusing them.
    pub truncate: bool,
    /// Scale every vector to unit length.
    pub normalize: bool,
    /// The vector size the client expects (OpenAI's `dimensions`): it must be the model's.
    pub dimensions: Option<usize>,
    /// One of the model's named prompts, put before every text (TEI's `prompt_name`).
    pub prompt_name: Option<String>,
}

/// Vectors of a request, in input order.
#[derive(Debug)]
pub struct Embedded {
    pub vectors: Vec<Vec<f32>>,
    /// Tokens the model read, over all inputs.
    pub tokens: usize,
}

/// Every token's vector of each text of a request, in input order.
#[derive(Debug)]
pub struct TokenEmbedded {
    /// Per text, its tokens' vectors one after the other (`len × hidden` values).
    pub rows: Vec<Vec<f32>>,
    /// The vector size.
    pub hidden: usize,
}

/// The embedding model's service.
pub struct EmbedService {
    info: ModelInfo,
    tokenizer: Arc<TextTokenizer>,
    queue: Queue,
    offload: Offload,
    request_timeout: Duration,
}

impl EmbedService {
    /// Starts the worker pool for `loaded` and returns the service with the pool's handle
    /// (joined when the queue is closed and drained). Each worker warms up first, then calls
    /// `on_warm` with how it went.
    pub fn start(
        loaded: LoadedModel,
        settings: EmbedSettings,
        offload: Offload,
        on_warm: Arc<dyn Fn(Result<(), String>) + Send + Sync>,
    ) -> std::io::Result<(Arc<Self>, WorkerPool)> {
        let (queue, receiver) = Queue::new(settings.queue_capacity);
        let batcher = Arc::new(Batcher::for_queue(
            receiver,
            settings.batch,
            settings.batch_delay,
        ));
        let warmup = loaded
            .tokenizer
            .encode(0, "warm up", true)
            .unwrap_or_else(|_| vec![0]);
        let pool = WorkerPool::start(
            settings.workers,
            settings.cores,
            batcher,
            loaded.model,
            warmup,
            on_warm,
        )?;
        let service = Self {
            info: loaded.info,
            tokenizer: loaded.tokenizer,
            queue,
            offload,
            request_timeout: settings.request_timeout,
        };
        Ok((Arc::new(service), pool))
    }

    /// Facts about the model.
    pub fn info(&self) -> &ModelInfo {
        &self.info
    }

    /// The model's tokenizer.
    pub fn tokenizer(&self) -> &TextTokenizer {
        &self.tokenizer
    }

    /// Where this service's request work runs off the async threads (shared by the services).
    pub fn offload(&self) -> &Offload {
        &self.offload
    }

    /// Inputs waiting for a worker.
    pub fn waiting(&self) -> usize {
        self.queue.depth()
    }

    /// Refuses new inputs; the workers finish those queued, then end.
    pub fn close(&self) {
        self.queue.close();
    }

    /// Embeds `texts` (which arrived at `arrival`): tokenizes them, queues one entry per text
    /// (all or none), and awaits every vector until the request timeout.
    pub async fn embed(
        &self,
        arrival: Arrival,
        texts: Vec<String>,
        options: EmbedOptions,
    ) -> Result<Embedded, ServiceError> {
        if let Some(want) = options.dimensions {
            if want != self.info.dimensions {
                return Err(ServiceError::Invalid(format!(
                    "dimensions {want} is not available: this model gives {} dimensions",
                    self.info.dimensions
                )));
            }
        }
        let ids = self
            .encode_texts(texts, options.truncate, options.prompt_name.as_deref())
            .await?;
        let tokens = ids.iter().map(Vec::len).sum();
        let outputs = self
            .run(arrival, ids.into_iter().map(|ids| Job::Embed { ids }))
            .await?;
        let vectors = outputs
            .into_iter()
            .map(|output| match output {
                Output::Embedding(mut v) => {
                    if options.normalize {
                        l2_normalize(&mut v);
                    }
                    Ok(v)
                }
                Output::Logits(_) => Err(ServiceError::Failed(
                    "the model answered an embedding with logits".into(),
                )),
            })
            .collect::<Result<_, _>>()?;
        Ok(Embedded { vectors, tokens })
    }

    /// Every token's vector of each text (TEI's `/embed_all`): the model's last hidden state,
    /// neither pooled nor normalised, special tokens included; `truncate` and `prompt_name`
    /// as for [`EmbedService::embed`]. The texts batch with `/embed`'s (one entry each).
    pub async fn embed_tokens(
        &self,
        arrival: Arrival,
        texts: Vec<String>,
        truncate: bool,
        prompt_name: Option<&str>,
    ) -> Result<TokenEmbedded, ServiceError> {
        let ids = self.encode_texts(texts, truncate, prompt_name).await?;
        let outputs = self
            .run(arrival, ids.into_iter().map(|ids| Job::EmbedTokens { ids }))
            .await?;
        let hidden = self.info.dimensions;
        let rows = outputs
            .into_iter()
            .map(|output| match output {
                Output::Embedding(v) if v.len() % hidden == 0 => Ok(v),
                Output::Embedding(v) => Err(ServiceError::Failed(format!(
                    "the model answered {} values for tokens of {hidden}",
                    v.len()
                ))),
                Output::Logits(_) => Err(ServiceError::Failed(
                    "the model answered token vectors with logits".into(),
                )),
            })
            .collect::<Result<_, _>>()?;
        Ok(TokenEmbedded { rows, hidden })
    }

    /// The ids of each text with the model's prompt `prompt_name` before it (as
    /// sentence-transformers does: the prompt and the text are one text).
    async fn encode_texts(
        &self,
        texts: Vec<String>,
        truncate: bool,
        prompt_name: Option<&str>,
    ) -> Result<Vec<Vec<u32>>, ServiceError> {
        let prompt = match prompt_name {
            Some(name) => self
                .info
                .prompts
                .get(name)
                .map_err(ServiceError::Invalid)?
                .to_string(),
            None => String::new(),
        };
        self.each_text(texts, move |tokenizer, i, text| {
            if prompt.is_empty() {
                tokenizer.encode(i, text, truncate)
            } else {
                tokenizer.encode(i, &format!("{prompt}{text}"), truncate)
            }
        })
        .await
    }

    /// Queues one entry per job (all or none, in order from `arrival`) and awaits every
    /// output until the request timeout.
    async fn run(
        &self,
        arrival: Arrival,
        jobs: impl ExactSizeIterator<Item = Job>,
    ) -> Result<Vec<Output>, ServiceError> {
        // The timeout counts from when the model could serve: a request held through a cold
        // start gets the whole request timeout after it.
        let queued = Instant::now();
        let deadline = queued + self.request_timeout;
        let mut receivers = Vec::with_capacity(jobs.len());
        let entries: Vec<Entry> = jobs
            .enumerate()
            .map(|(i, job)| {
                let (reply, rx) = oneshot::channel();
                receivers.push(rx);
                Entry {
                    seq: arrival.seq(i),
                    arrived: queued,
                    deadline,
                    job,
                    reply,
                }
            })
            .collect();
        self.queue.submit(entries).map_err(|e| match e {
            QueueError::Full { .. } => {
                ServiceError::QueueFull(format!("server overloaded: {e}; retry shortly"))
            }
            QueueError::Closed => ServiceError::ShuttingDown(
                "the server is shutting down; retry on another replica".into(),
            ),
        })?;
        let timed_out =
            || ServiceError::TimedOut(self.request_timeout.as_millis() as u64, "a worker");
        let wait_all = async {
            let mut outputs = Vec::with_capacity(receivers.len());
            for rx in receivers {
                match rx.await {
                    Ok(Ok(output)) => outputs.push(output),
                    Ok(Err(InferError::TimedOut)) => return Err(timed_out()),
                    Ok(Err(e)) => return Err(ServiceError::Failed(e.to_string())),
                    // The worker dropped the entry: it expired in the queue.
                    Err(_) => return Err(timed_out()),
                }
            }
            Ok(outputs)
        };
        match tokio::time::timeout_at(deadline.into(), wait_all).await {
            Ok(outputs) => outputs,
            Err(_) => Err(timed_out()),
        }
    }

    /// The tokens of each text as the model sees them (cut at its maximum when `truncate`,
    /// else `TooLarge` for a longer text).
    pub async fn tokenize(
        &self,
        texts: Vec<String>,
        add_special_tokens: bool,
        truncate: bool,
    ) -> Result<Vec<Vec<TokenInfo>>, ServiceError> {
        self.each_text(texts, move |tokenizer, i, text| {
            tokenizer.tokens(i, text, add_special_tokens, truncate)
        })
        .await
    }

    /// The text of each list of token ids (`/decode`), special tokens left out when
    /// `skip_special_tokens`; off the async threads when the lists are long.
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

    /// Runs `each(tokenizer, index, text)` over `texts`, off the async threads when they are
    /// long. Takes the texts by value, so a large request's text is freed once tokenized.
    async fn each_text<T: Send + 'static>(
        &self,
        texts: Vec<String>,
        each: impl Fn(&TextTokenizer, usize, &str) -> Result<T, crate::model::TokenizeError>
            + Send
            + 'static,
    ) -> Result<Vec<T>, ServiceError> {
        let bytes = texts.iter().map(String::len).sum();
        let tokenizer = self.tokenizer.clone();
        self.offload
            .run(bytes, move || {
                texts
                    .iter()
                    .enumerate()
                    .map(|(i, t)| each(&tokenizer, i, t).map_err(ServiceError::from))
                    .collect()
            })
            .await
    }
}
