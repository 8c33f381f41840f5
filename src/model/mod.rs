//! Models: the `Model` trait the worker pool calls, and loading a model with its tokenizer.
//!
//! The pool knows nothing of BERT: it hands a model groups of token sequences (single texts or
//! pairs) and gets one vector back per sequence: a pooled embedding, or a classifier's logits.
//! Loading reads each file once (config, tokenizer, memory-mapped weights, pooling, prompts)
//! and reports how long each phase took, for the start-up log and metrics.

pub mod bert;
pub mod bert_config;
pub mod bert_ops;
pub mod classifier_config;
mod embedding_table;
pub mod files;
pub mod gguf_hub;
pub mod heads;
pub mod hub;
pub mod modernbert;
pub mod modernbert_config;
pub mod modernbert_head;
pub mod pooling;
mod proj;
pub mod prompts;
pub mod qwen3;
pub mod tiny;
pub mod tokenizer;
mod unpadded;
pub mod weights;

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::kernels::{Dtype, KernelLevel};

pub use classifier_config::Head;
pub use heads::ScoreFunction;
pub use pooling::Pooling;
pub use prompts::Prompts;
pub use tokenizer::{decode_lists, PairIds, TextTokenizer, TokenInfo, TokenizeError};

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

/// What a model computes; it follows from the model loaded (one model per process).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Task {
    /// Sentence embeddings (a BERT, XLM-RoBERTa or ModernBERT encoder, or a Qwen3 decoder run
    /// as one, in Hugging Face layout).
    Embedding,
    /// Relevance scores of (query, passage) pairs: a cross-encoder, a sequence classifier with
    /// one label.
    Reranking,
    /// Label scores of texts and pairs: a sequence classifier with several labels.
    TextClassification,
    /// Text generation (a Llama-family decoder in a GGUF file).
    TextGeneration,
}

impl Task {
    /// The name `/info` and error messages use.
    pub fn name(self) -> &'static str {
        match self {
            Task::Embedding => "embedding",
            Task::Reranking => "reranking",
            Task::TextClassification => "text-classification",
            Task::TextGeneration => "text-generation",
        }
    }

    /// The task of an encoder with `classifier` (`None`: an embedder): one label reranks,
    /// several classify.
    pub fn of(classifier: Option<&ClassifierInfo>) -> Task {
        match classifier {
            None => Task::Embedding,
            Some(c) if c.labels.len() == 1 => Task::Reranking,
            Some(_) => Task::TextClassification,
        }
    }
}

/// A sequence classifier's facts: its labels and how its logits become scores.
#[derive(Debug, Clone, Serialize)]
pub struct ClassifierInfo {
    /// The label names, in the order of the logits (`id2label`).
    pub labels: Vec<String>,
    /// What `raw_scores: false` applies to the logits.
    pub score_function: ScoreFunction,
}

/// One input of a forward pass: token ids, where the second text of a pair starts, and
/// whether an embedding model answers every token's vector instead of the pooled one.
#[derive(Debug, Clone, Copy)]
pub struct EncoderInput<'a> {
    pub ids: &'a [u32],
    /// The first token of the second text (token type 1); `ids.len()` for a single text.
    pub second_from: usize,
    /// An embedding model answers the last hidden state of every token (`len × hidden`
    /// values, token by token; TEI's `/embed_all`) instead of the pooled vector. A classifier
    /// ignores it (the services never ask one).
    pub every_token: bool,
}

impl<'a> EncoderInput<'a> {
    /// A single text's ids (every token of type 0), pooled.
    pub fn single(ids: &'a [u32]) -> Self {
        Self {
            ids,
            second_from: ids.len(),
            every_token: false,
        }
    }

    /// A pair of texts, the second from token `second_from` on.
    pub fn pair(ids: &'a [u32], second_from: usize) -> Self {
        Self {
            ids,
            second_from,
            every_token: false,
        }
    }
}

/// Facts about the loaded model, reported by `/info` and used to validate requests.
#[derive(Debug, Clone, Serialize)]
pub struct ModelInfo {
    pub id: String,
    /// The architecture: `config.json`'s `model_type` (`bert`, `xlm-roberta`, `modernbert`,
    /// `qwen3`, `gpt2`), or a GGUF file's `general.architecture`.
    pub model_type: String,
    pub task: Task,
    pub dimensions: usize,
    /// Most tokens per input, special tokens included.
    pub max_input_length: usize,
    pub pooling: Pooling,
    /// Whether the model's sentence-transformers pipeline ends in a `Normalize` module.
    pub normalized_by_model: bool,
    /// The number format the linear layers are converted to at load (`--dtype`).
    pub dtype: Dtype,
    /// What each kind of weight runs in (embeddings: `linear`; generation: `attention`,
    /// `feed_forward`, `lm_head`, `token_embedding`, where 4-bit GGUF weights stay as stored).
    pub weight_formats: std::collections::BTreeMap<&'static str, String>,
    /// The kernel path (instruction set) the bf16, int16 and int8 layers run on; f32 layers use
    /// the AVX2 kernels and gemm's own dispatch.
    pub kernel: KernelLevel,
    /// A sequence classifier's labels and score function (reranking and text-classification
    /// models only).
    pub classifier: Option<ClassifierInfo>,
    /// The named prompts a request may ask for (embedding models).
    #[serde(skip)]
    pub prompts: Prompts,
}

/// What `--dtype` asks for: a fixed dtype, or `auto`, the fastest that keeps the accuracy of
/// f32 on this CPU (see [`DtypeChoice::resolve`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DtypeChoice {
    #[default]
    Auto,
    Fixed(Dtype),
}

impl DtypeChoice {
    /// The dtype to run on a CPU whose kernel path is `level`.
    ///
    /// `auto` is bf16 where the CPU multiplies bf16 (AVX-512 BF16, AMX), int16 on the other
    /// SIMD paths (AVX2, AVX-512 without BF16), f32 on the portable one. The measurements
    /// behind it are in docs/benchmarks.md ("Choosing `auto`" and "int16 for embeddings on
    /// AVX2"): int8 misses the cosine ≥ 0.9999 bar on the reference set, so it never
    /// qualifies; bf16 keeps it and is 1.6–2.7× f32 with AVX-512 BF16; without those
    /// instructions bf16 only halves the bytes read (widened to f32 in registers), where
    /// int16 also doubles the multiply-adds per instruction (`vpmaddwd`, `vpdpwssd`): on a
    /// Zen 3, 1.2–1.5× bf16 at 107 tokens and at concurrency 64, a tie for a lone short
    /// sentence, at a lowest cosine of 0.9999996 on every embedder's reference (bf16:
    /// 0.99997). The portable bf16 and int16 loops are slower than f32.
    pub fn resolve(self, level: KernelLevel) -> Dtype {
        match self {
            DtypeChoice::Fixed(d) => d,
            DtypeChoice::Auto if level >= KernelLevel::Avx512Bf16 => Dtype::Bf16,
            DtypeChoice::Auto if level >= KernelLevel::Avx2 => Dtype::Int16,
            DtypeChoice::Auto => Dtype::F32,
        }
    }

    /// The dtype of a sequence classifier (a reranker, a text classifier) on `level`: `auto`
    /// is int16 on every SIMD path, f32 on the portable one. With AVX-512 VNNI, `vpdpwssd`
    /// does twice f32's multiply-adds; on AVX2, `vpmaddwd` does 16 multiply-adds to the
    /// FMA's 8 on half the bytes, and the layer ran 1.4–1.6× the f32 one on a Zen 3
    /// (docs/benchmarks.md, "int16 for rerankers" and "int16 and attention on AVX2"). Every
    /// path gives the same values, scores within 6e-4 of sentence-transformers on the tiny
    /// rerankers. bf16 misses the scores' bar (within 1e-3 of sentence-transformers): a score
    /// reads one direction of the hidden state, scaled to logits of several units, where
    /// bf16's ~0.3% relative error of the hidden state becomes 1e-2 of a logit and up to a
    /// few 1e-3 of a sigmoid score (docs/benchmarks.md, "Rerankers: bf16 or f32").
    /// `--dtype bf16` still asks for it.
    pub fn resolve_for_classifier(self, level: KernelLevel) -> Dtype {
        match self {
            DtypeChoice::Auto if level >= KernelLevel::Avx2 => Dtype::Int16,
            DtypeChoice::Auto => Dtype::F32,
            fixed => fixed.resolve(level),
        }
    }

    /// [`DtypeChoice::resolve`] for an embedder, [`DtypeChoice::resolve_for_classifier`] for a
    /// sequence classifier.
    pub fn resolve_for(self, head: Head, level: KernelLevel) -> Dtype {
        match head {
            Head::Encoder => self.resolve(level),
            Head::SequenceClassification => self.resolve_for_classifier(level),
        }
    }
}

impl std::str::FromStr for DtypeChoice {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        if s.trim().eq_ignore_ascii_case("auto") {
            Ok(DtypeChoice::Auto)
        } else {
            s.parse().map(DtypeChoice::Fixed)
        }
    }
}

/// How to run a model: its dtype and the highest kernel path allowed.
#[derive(Debug, Clone, Copy, Default)]
pub struct LoadOptions {
    pub dtype: DtypeChoice,
    /// `None`: the best the CPU has.
    pub kernel_cap: Option<KernelLevel>,
}

/// A model the worker pool can run: one vector per input, the pooled, not yet normalised
/// embedding of an embedding model or the logits of a classifier.
pub trait Model: Send + Sync {
    /// Runs `inputs` (unpadded token ids, each within the model's maximum length) in one
    /// forward pass; `threads` is the intra-op parallelism this call may use.
    fn forward(
        &self,
        inputs: &[EncoderInput<'_>],
        threads: usize,
    ) -> Result<Vec<Vec<f32>>, ModelError>;

    /// [`Model::forward`] over single texts.
    fn embed(&self, sequences: &[&[u32]], threads: usize) -> Result<Vec<Vec<f32>>, ModelError> {
        let inputs: Vec<EncoderInput<'_>> =
            sequences.iter().map(|s| EncoderInput::single(s)).collect();
        self.forward(&inputs, threads)
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
struct TokenizerConfig {
    /// A float in some files (transformers writes 1e30 for "no limit").
    model_max_length: Option<f64>,
}

#[derive(serde::Deserialize)]
struct ModuleEntry {
    #[serde(rename = "type")]
    kind: String,
}

fn read(path: &std::path::Path) -> Result<String, ModelError> {
    std::fs::read_to_string(path).map_err(|e| ModelError::Files(format!("{}: {e}", path.display())))
}

/// Loads `model` (directory or hub id) with the default options (`auto` dtype, the best
/// kernels), calling `phase(name, duration)` after each step.
pub fn load(
    model: &str,
    revision: &str,
    phase: impl FnMut(&'static str, Duration),
) -> Result<LoadedModel, ModelError> {
    load_with(model, revision, LoadOptions::default(), phase)
}

/// Loads `model` (directory or hub id) as `options` say, calling `phase(name, duration)`
/// after each step.
pub fn load_with(
    model: &str,
    revision: &str,
    options: LoadOptions,
    mut phase: impl FnMut(&'static str, Duration),
) -> Result<LoadedModel, ModelError> {
    let t = Instant::now();
    let files = files::resolve(model, revision)?;
    phase("resolve", t.elapsed());
    load_files(&files, options, phase)
}

/// The `model_type` in a checkpoint's `config.json` (`None` when it has none).
///
/// # Errors
///
/// When the file cannot be read or is not a JSON object.
pub fn model_type(files: &files::ModelFiles) -> Result<Option<String>, ModelError> {
    #[derive(serde::Deserialize)]
    struct Peek {
        model_type: Option<String>,
    }
    let peek: Peek = serde_json::from_str(&read(&files.config)?)
        .map_err(|e| ModelError::Config(format!("config.json: {e}")))?;
    Ok(peek.model_type)
}

/// Loads the encoder model whose files are `files` (an embedding model, or a sequence
/// classifier: a reranker or a text classifier), as `options` say.
pub fn load_files(
    files: &files::ModelFiles,
    options: LoadOptions,
    mut phase: impl FnMut(&'static str, Duration),
) -> Result<LoadedModel, ModelError> {
    match model_type(files)?.as_deref() {
        Some("qwen3") => return load_qwen3(files, options, phase),
        Some("modernbert") => return load_modernbert(files, options, phase),
        _ => {}
    }
    let t = Instant::now();
    let config = bert::BertConfig::from_json(&read(&files.config)?)?;
    let head = config.head();
    let normalized_by_model = match &files.modules {
        Some(path) => sentence_transformers_modules(path, head)?,
        None => false,
    };
    let (pooling, prompts) = match head {
        Head::Encoder => (
            match &files.pooling {
                Some(path) => Pooling::from_config_json(&read(path)?)?,
                None => Pooling::Mean,
            },
            match &files.sentence_transformers {
                Some(path) => Prompts::from_config_json(&read(path)?)?,
                None => Prompts::default(),
            },
        ),
        // A classifier's head reads [CLS] through its pooler; sentence-transformers' pooling
        // and prompts are an embedding model's.
        Head::SequenceClassification => (Pooling::Cls, Prompts::default()),
    };
    let classifier = match head {
        Head::Encoder => None,
        Head::SequenceClassification => Some(config.classifier.info()?),
    };
    let max_input_length = max_input_length(files, config.max_positions())?;
    let tokenizer_json = files.tokenizer.as_ref().ok_or_else(|| {
        ModelError::Files(format!(
            "{}: no tokenizer.json beside config.json",
            files.source
        ))
    })?;
    let tokenizer = TextTokenizer::load(tokenizer_json, max_input_length)?;
    if classifier.is_some() {
        tokenizer.check_pairs_fit().map_err(ModelError::Tokenizer)?;
    }
    phase("tokenizer", t.elapsed());

    let t = Instant::now();
    let kernel = KernelLevel::capped(options.kernel_cap);
    let dtype = options.dtype.resolve_for(head, kernel);
    let task = Task::of(classifier.as_ref());
    let info = ModelInfo {
        id: files.source.clone(),
        model_type: config.model_type.clone().unwrap_or_else(|| "bert".into()),
        task,
        dimensions: config.hidden_size,
        max_input_length,
        pooling,
        normalized_by_model,
        dtype,
        weight_formats: [("linear", dtype.name().to_string())].into(),
        kernel,
        classifier,
        prompts,
    };
    let file = weights::WeightFile::open(&files.weights)?;
    let bert = bert::Bert::load_from(config, &file, dtype, kernel)?;
    let model: Arc<dyn Model> = match &info.classifier {
        None => Arc::new(heads::SentenceEncoder { bert, pooling }),
        Some(c) => Arc::new(heads::SequenceClassifier::load(
            bert,
            &file,
            c.labels.len(),
        )?),
    };
    phase("weights", t.elapsed());
    Ok(LoadedModel {
        info,
        tokenizer: Arc::new(tokenizer),
        model,
    })
}

/// Loads a Qwen3 checkpoint as an embedding model (Qwen3-Embedding): sentence-transformers'
/// files say how (`modules.json`: Transformer, Pooling, optionally Normalize; the pooling mode
/// of `1_Pooling/config.json`, last-token for Qwen3-Embedding; `prompts`), the decoder runs as
/// an encoder ([`qwen3::Qwen3Encoder`]) in the embedding models' dtype (`auto`: bf16 on a SIMD
/// path). A Qwen3 checkpoint without those files is a chat model, which this server generates
/// with from a GGUF file: it is refused with a message saying so.
fn load_qwen3(
    files: &files::ModelFiles,
    options: LoadOptions,
    phase: impl FnMut(&'static str, Duration),
) -> Result<LoadedModel, ModelError> {
    let t = Instant::now();
    let config = qwen3::Qwen3Config::from_json(&read(&files.config)?)?;
    let (Some(modules_path), Some(pooling_path)) = (&files.modules, &files.pooling) else {
        return Err(ModelError::Unsupported(format!(
            "{}: a Qwen3 checkpoint is served as an embedding model (Qwen3-Embedding), which needs sentence-transformers' modules.json and 1_Pooling/config.json; to generate text with Qwen3, serve a GGUF file",
            files.source
        )));
    };
    let normalized_by_model = sentence_transformers_modules(modules_path, Head::Encoder)?;
    let pooling = Pooling::from_config_json(&read(pooling_path)?)?;
    let setup = UnpaddedSetup {
        model_type: "qwen3",
        dimensions: config.hidden_size,
        max_positions: config.max_position_embeddings,
        pooling,
        normalized_by_model,
        classifier: None,
    };
    unpadded_model(files, options, setup, t, phase, |file, dtype, kernel| {
        let encoder = qwen3::Qwen3Encoder::load(config, file, dtype, kernel, pooling)?;
        Ok(Arc::new(encoder) as Arc<dyn Model>)
    })
}

/// What an unpadded encoder's loader has read before the shared part: its name, width,
/// positions (the input limit's ceiling), pooling, whether the model normalizes, and a
/// sequence classifier's labels.
struct UnpaddedSetup {
    model_type: &'static str,
    dimensions: usize,
    max_positions: usize,
    pooling: Pooling,
    normalized_by_model: bool,
    /// `None` for an embedder.
    classifier: Option<ClassifierInfo>,
}

/// The part the Qwen3 embedder's and ModernBERT's loaders share, after their config and
/// pooling: an embedder's `prompts`, the input limit and the tokenizer (checked to fit pairs
/// for a classifier; the "tokenizer" phase, timed from `t`), then the weights through `load`
/// in the dtype of an embedder or a classifier (the "weights" phase).
fn unpadded_model(
    files: &files::ModelFiles,
    options: LoadOptions,
    setup: UnpaddedSetup,
    t: Instant,
    mut phase: impl FnMut(&'static str, Duration),
    load: impl FnOnce(&weights::WeightFile, Dtype, KernelLevel) -> Result<Arc<dyn Model>, ModelError>,
) -> Result<LoadedModel, ModelError> {
    let head = match setup.classifier {
        None => Head::Encoder,
        Some(_) => Head::SequenceClassification,
    };
    let prompts = match (&files.sentence_transformers, head) {
        (Some(path), Head::Encoder) => Prompts::from_config_json(&read(path)?)?,
        _ => Prompts::default(),
    };
    let max_input_length = max_input_length(files, setup.max_positions)?;
    let tokenizer_json = files.tokenizer.as_ref().ok_or_else(|| {
        ModelError::Files(format!(
            "{}: no tokenizer.json beside config.json",
            files.source
        ))
    })?;
    let tokenizer = TextTokenizer::load(tokenizer_json, max_input_length)?;
    if head == Head::SequenceClassification {
        tokenizer.check_pairs_fit().map_err(ModelError::Tokenizer)?;
    }
    phase("tokenizer", t.elapsed());

    let t = Instant::now();
    let kernel = KernelLevel::capped(options.kernel_cap);
    let dtype = match (head, options.dtype) {
        // A ModernBERT classifier stays f32 under auto where BERT's and XLM-R's run int16:
        // on the tiny ModernBERT reranker and classifier int16 missed the scores' bar (1.1e-3
        // and 5.7e-3 against 1e-3; docs/benchmarks.md, "int16 for rerankers").
        (Head::SequenceClassification, DtypeChoice::Auto) => Dtype::F32,
        _ => options.dtype.resolve_for(head, kernel),
    };
    let info = ModelInfo {
        id: files.source.clone(),
        model_type: setup.model_type.into(),
        task: Task::of(setup.classifier.as_ref()),
        dimensions: setup.dimensions,
        max_input_length,
        pooling: setup.pooling,
        normalized_by_model: setup.normalized_by_model,
        dtype,
        weight_formats: [("linear", dtype.name().to_string())].into(),
        kernel,
        classifier: setup.classifier,
        prompts,
    };
    let file = weights::WeightFile::open(&files.weights)?;
    let model = load(&file, dtype, kernel)?;
    phase("weights", t.elapsed());
    Ok(LoadedModel {
        info,
        tokenizer: Arc::new(tokenizer),
        model,
    })
}

/// Whether sentence-transformers' `modules.json` ends the pipeline in `Normalize`; a module
/// this server does not run is refused: for an embedder any but Transformer, Pooling and
/// Normalize, for a sequence classifier any but its Transformer.
fn sentence_transformers_modules(path: &std::path::Path, head: Head) -> Result<bool, ModelError> {
    let modules: Vec<ModuleEntry> = serde_json::from_str(&read(path)?)
        .map_err(|e| ModelError::Config(format!("modules.json: {e}")))?;
    let mut normalized_by_model = false;
    for m in &modules {
        match (m.kind.rsplit('.').next().unwrap_or_default(), head) {
            ("Transformer", _) | ("Pooling", Head::Encoder) => {}
            ("Normalize", Head::Encoder) => normalized_by_model = true,
            (other, Head::Encoder) => {
                return Err(ModelError::Unsupported(format!(
                    "modules.json has a {other} module; only Transformer, Pooling and Normalize are supported"
                )))
            }
            (other, Head::SequenceClassification) => {
                return Err(ModelError::Unsupported(format!(
                    "modules.json has a {other} module after a sequence classifier; only its Transformer is supported"
                )))
            }
        }
    }
    Ok(normalized_by_model)
}

/// Loads a ModernBERT checkpoint: an embedding model (`gte-modernbert`, `modernbert-embed`)
/// as BERT's are, with sentence-transformers' `modules.json`, pooling mode
/// (`1_Pooling/config.json`; mean without one) and `prompts` when the directory has them, in
/// the embedding models' dtype (`auto`: bf16 on a SIMD path); or a
/// `ModernBertForSequenceClassification` (`gte-reranker-modernbert-base`): a reranker or
/// classifier whose pooling is `classifier_pooling`'s, in the classifiers' dtype (`auto`: f32).
fn load_modernbert(
    files: &files::ModelFiles,
    options: LoadOptions,
    phase: impl FnMut(&'static str, Duration),
) -> Result<LoadedModel, ModelError> {
    let t = Instant::now();
    let config = modernbert_config::ModernBertConfig::from_json(&read(&files.config)?)?;
    let normalized_by_model = match &files.modules {
        Some(path) => sentence_transformers_modules(path, config.head())?,
        None => false,
    };
    let (pooling, classifier) = match config.classifier_head() {
        Some((pooling, _)) => (pooling, Some(config.classifier.info()?)),
        None => match &files.pooling {
            Some(path) => (Pooling::from_config_json(&read(path)?)?, None),
            None => (Pooling::Mean, None),
        },
    };
    let labels = classifier.as_ref().map(|c| c.labels.len());
    let setup = UnpaddedSetup {
        model_type: "modernbert",
        dimensions: config.hidden_size,
        max_positions: config.max_position_embeddings,
        pooling,
        normalized_by_model,
        classifier,
    };
    unpadded_model(files, options, setup, t, phase, |file, dtype, kernel| {
        let encoder = modernbert::ModernBertEncoder::load(config, file, dtype, kernel, pooling)?;
        Ok(match labels {
            None => Arc::new(encoder) as Arc<dyn Model>,
            Some(labels) => Arc::new(modernbert_head::ModernBertClassifier::load(
                encoder, file, labels, kernel,
            )?),
        })
    })
}

/// Most tokens per input, as sentence-transformers decides it: `max_seq_length` of
/// `sentence_bert_config.json`, else the tokenizer's `model_max_length` (tokenizer_config.json)
/// capped at the model's positions; never more than the model's `positions` (for XLM-R, 2
/// fewer than `max_position_embeddings`: its positions start after the padding id).
fn max_input_length(files: &files::ModelFiles, positions: usize) -> Result<usize, ModelError> {
    if let Some(path) = &files.sentence_bert {
        let c: SentenceBertConfig = serde_json::from_str(&read(path)?)
            .map_err(|e| ModelError::Config(format!("sentence_bert_config.json: {e}")))?;
        if let Some(n) = c.max_seq_length {
            return Ok(n.min(positions));
        }
    }
    if let Some(path) = &files.tokenizer_config {
        let c: TokenizerConfig = serde_json::from_str(&read(path)?)
            .map_err(|e| ModelError::Config(format!("tokenizer_config.json: {e}")))?;
        if let Some(n) = c.model_max_length.filter(|n| *n >= 1.0) {
            // `as` saturates: transformers' 1e30 ("no limit") becomes usize::MAX.
            return Ok((n as usize).min(positions));
        }
    }
    Ok(positions)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dtype_choices_parse_and_auto_resolves_by_kernel_level() {
        assert_eq!("auto".parse::<DtypeChoice>(), Ok(DtypeChoice::Auto));
        assert_eq!(
            "BF16".parse::<DtypeChoice>(),
            Ok(DtypeChoice::Fixed(Dtype::Bf16))
        );
        let err = "fp8".parse::<DtypeChoice>().unwrap_err();
        assert!(err.contains("fp8") && err.contains("auto"), "{err}");
        assert_eq!(DtypeChoice::Auto.resolve(KernelLevel::Scalar), Dtype::F32);
        for level in [KernelLevel::Avx2, KernelLevel::Avx512Vnni] {
            assert_eq!(DtypeChoice::Auto.resolve(level), Dtype::Int16, "{level}");
        }
        for level in [KernelLevel::Avx512Bf16, KernelLevel::Amx] {
            assert_eq!(DtypeChoice::Auto.resolve(level), Dtype::Bf16, "{level}");
        }
        for level in KernelLevel::ALL {
            assert_eq!(DtypeChoice::Fixed(Dtype::Int8).resolve(level), Dtype::Int8);
            let classifier = if level >= KernelLevel::Avx2 {
                Dtype::Int16
            } else {
                Dtype::F32
            };
            assert_eq!(
                DtypeChoice::Auto.resolve_for_classifier(level),
                classifier,
                "{level}"
            );
            assert_eq!(
                DtypeChoice::Fixed(Dtype::Bf16).resolve_for_classifier(level),
                Dtype::Bf16
            );
        }
    }
}
