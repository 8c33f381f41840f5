//! Models: the `Model` trait the worker pool calls, and loading a model with its tokenizer.
//!
//! The pool knows nothing of BERT: it hands a model groups of token sequences and gets vectors
//! back. Loading reads each file once (config, tokenizer, memory-mapped weights, pooling) and
//! reports how long each phase took, for the start-up log and metrics.

pub mod bert;
pub mod files;
pub mod kernels;
pub mod pooling;
pub mod tiny;
pub mod tokenizer;
pub mod weights;

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Serialize;

pub use pooling::Pooling;
pub use tokenizer::{TextTokenizer, TokenInfo, TokenizeError};

/// Why a model could not be loaded or run.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    #[error("model files: {0}")]
    Files(String),
    #[error("model configuration: {0}")]
    Config(String),
    #[error("unsupported model: {0}")]
    Unsupported(String),
    #[error("tokenizer: {0}")]
    Tokenizer(String),
    #[error("model weights: {0}")]
    Weights(String),
    #[error("invalid model input: {0}")]
    Input(String),
    #[error("forward pass failed: {0}")]
    Forward(String),
}

/// What a model computes. Only embeddings today; the queue, batcher and pool are task-agnostic.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Task {
    Embedding,
}

/// Facts about the loaded model, reported by `/info` and used to validate requests.
#[derive(Debug, Clone, Serialize)]
pub struct ModelInfo {
    pub id: String,
    pub task: Task,
    pub dimensions: usize,
    /// Most tokens per input, special tokens included.
    pub max_input_length: usize,
    pub pooling: Pooling,
    /// Whether the model's sentence-transformers pipeline ends in a `Normalize` module.
    pub normalized_by_model: bool,
}

/// A model the worker pool can run: pooled, not yet normalised vectors for each sequence.
pub trait Model: Send + Sync {
    /// Embeds `sequences` (unpadded token ids, each within the model's maximum length) in one
    /// forward pass; `threads` is the intra-op parallelism this call may use.
    fn embed(&self, sequences: &[&[u32]], threads: usize) -> Result<Vec<Vec<f32>>, ModelError>;
}

/// A sentence-transformers style encoder: BERT followed by pooling.
pub struct SentenceEncoder {
    bert: bert::Bert,
    pooling: Pooling,
}

impl Model for SentenceEncoder {
    fn embed(&self, sequences: &[&[u32]], threads: usize) -> Result<Vec<Vec<f32>>, ModelError> {
        let (hidden_state, seq_len) = self.bert.forward(sequences, threads)?;
        let h = self.bert.config().hidden_size;
        let (storage, layout) = hidden_state.storage_and_layout();
        let data = match &*storage {
            candle_core::Storage::Cpu(cpu) => cpu
                .as_slice::<f32>()
                .map_err(|e| ModelError::Forward(e.to_string()))?,
            _ => return Err(ModelError::Forward("hidden state is not on the CPU".into())),
        };
        let data = data.get(layout.start_offset()..).unwrap_or_default();
        if data.len() < sequences.len() * seq_len * h {
            return Err(ModelError::Forward(format!(
                "hidden state of {} values for {} sequences of {seq_len} × {h}",
                data.len(),
                sequences.len()
            )));
        }
        // NaN or infinity means corrupt weights (or an overflow): an error for this batch,
        // not vectors that look fine. Checked on every real token's hidden state (max pooling
        // would skip a NaN) and on the pooled vectors (a mean can overflow).
        let non_finite = || {
            ModelError::Forward(
                "the forward pass produced non-finite values (NaN or infinity): \
                 the weights may be corrupt"
                    .into(),
            )
        };
        sequences
            .iter()
            .enumerate()
            .map(|(b, s)| {
                let rows = &data[b * seq_len * h..][..s.len() * h];
                if !rows.iter().all(|v| v.is_finite()) {
                    return Err(non_finite());
                }
                let mut out = Vec::with_capacity(h);
                self.pooling.pool(rows, h, &mut out);
                if !out.iter().all(|v| v.is_finite()) {
                    return Err(non_finite());
                }
                Ok(out)
            })
            .collect()
    }
}

/// A model ready to serve: its facts, its tokenizer (for the HTTP threads) and the model
/// (for the workers).
pub struct LoadedModel {
    pub info: ModelInfo,
    pub tokenizer: Arc<TextTokenizer>,
    pub model: Arc<dyn Model>,
}

#[derive(serde::Deserialize)]
struct SentenceBertConfig {
    max_seq_length: Option<usize>,
}

#[derive(serde::Deserialize)]
struct ModuleEntry {
    #[serde(rename = "type")]
    kind: String,
}

fn read(path: &std::path::Path) -> Result<String, ModelError> {
    std::fs::read_to_string(path).map_err(|e| ModelError::Files(format!("{}: {e}", path.display())))
}

/// Loads `model` (directory or hub id), calling `phase(name, duration)` after each step.
pub fn load(
    model: &str,
    revision: &str,
    mut phase: impl FnMut(&'static str, Duration),
) -> Result<LoadedModel, ModelError> {
    let t = Instant::now();
    let files = files::resolve(model, revision)?;
    phase("resolve", t.elapsed());

    let t = Instant::now();
    let config = bert::BertConfig::from_json(&read(&files.config)?)?;
    let mut normalized_by_model = false;
    if let Some(path) = &files.modules {
        let modules: Vec<ModuleEntry> = serde_json::from_str(&read(path)?)
            .map_err(|e| ModelError::Config(format!("modules.json: {e}")))?;
        for m in &modules {
            match m.kind.rsplit('.').next().unwrap_or_default() {
                "Transformer" | "Pooling" => {}
                "Normalize" => normalized_by_model = true,
                other => {
                    return Err(ModelError::Unsupported(format!(
                        "modules.json has a {other} module; only Transformer, Pooling and Normalize are supported"
                    )))
                }
            }
        }
    }
    let pooling = match &files.pooling {
        Some(path) => Pooling::from_config_json(&read(path)?)?,
        None => Pooling::Mean,
    };
    let max_seq_length = match &files.sentence_bert {
        Some(path) => {
            serde_json::from_str::<SentenceBertConfig>(&read(path)?)
                .map_err(|e| ModelError::Config(format!("sentence_bert_config.json: {e}")))?
                .max_seq_length
        }
        None => None,
    };
    let max_input_length = max_seq_length
        .unwrap_or(config.max_position_embeddings)
        .min(config.max_position_embeddings);
    let tokenizer = TextTokenizer::load(&files.tokenizer, max_input_length)?;
    phase("tokenizer", t.elapsed());

    let t = Instant::now();
    let info = ModelInfo {
        id: files.source.clone(),
        task: Task::Embedding,
        dimensions: config.hidden_size,
        max_input_length,
        pooling,
        normalized_by_model,
    };
    let bert = bert::Bert::load(config, &files.weights)?;
    phase("weights", t.elapsed());
    Ok(LoadedModel {
        info,
        tokenizer: Arc::new(tokenizer),
        model: Arc::new(SentenceEncoder { bert, pooling }),
    })
}
