//! Text generation: a Llama-family GGUF model served with continuous batching.
//!
//! - [`gguf`]: the file's metadata and tensors, with errors that name the key or tensor;
//! - [`llama`]: the decoder and its batched step over many sequences' KV caches;
//! - [`tokenizer`]: the tokenizer built from the GGUF metadata, and incremental decoding;
//! - [`chat`]: the model's Jinja chat template;
//! - [`sampling`]: greedy and seeded sampling;
//! - [`engine`]: the step loop (continuous batching) and its bounded queue.
//!
//! The front end (`crate::http::generate`) validates requests against [`Generator`] and
//! streams the engine's events back.

pub mod chat;
pub mod engine;
pub mod gguf;
pub mod llama;
pub mod sampling;
pub mod tokenizer;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::kernels::{Dtype, KernelLevel};
use crate::model::{DtypeChoice, LoadOptions, ModelError, ModelInfo, Pooling, Task};
use chat::ChatTemplate;
use engine::EngineHandle;
use llama::Llama;
use tokenizer::GenTokenizer;

/// What the front end needs to serve a generation model.
pub struct Generator {
    pub tokenizer: Arc<GenTokenizer>,
    /// `None` when the model has no chat template (chat routes then answer 400).
    pub chat: Option<ChatTemplate>,
    pub engine: EngineHandle,
}

/// A generation model loaded, before its engine starts.
pub struct LoadedGenerator {
    pub info: ModelInfo,
    pub model: Arc<Llama>,
    pub tokenizer: Arc<GenTokenizer>,
    pub chat: Option<ChatTemplate>,
}

/// The GGUF file `model` names, when it names one: a `.gguf` file, or a directory holding
/// exactly one `.gguf` file and no `config.json` (a Hugging Face layout is an embedding
/// model's).
pub fn gguf_path(model: &str) -> Option<PathBuf> {
    let path = Path::new(model);
    if path.is_file() {
        return path
            .extension()
            .is_some_and(|e| e.eq_ignore_ascii_case("gguf"))
            .then(|| path.to_path_buf());
    }
    if !path.is_dir() || path.join("config.json").exists() {
        return None;
    }
    let mut found = std::fs::read_dir(path)
        .ok()?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| {
            p.extension()
                .is_some_and(|e| e.eq_ignore_ascii_case("gguf"))
        });
    let first = found.next()?;
    found.next().is_none().then_some(first)
}

/// The dtype `auto` picks for generation, and whether Q4_0/Q4_1 weights stay as stored:
/// `auto` keeps 4-bit weights as they are and runs every other weight in int8 blocks of 32
/// (exact for Q8_0); a fixed dtype converts every weight to it (for comparisons and tests).
pub fn resolve_dtype(choice: DtypeChoice) -> (Dtype, bool) {
    match choice {
        DtypeChoice::Auto => (Dtype::Int8, true),
        DtypeChoice::Fixed(d) => (d, false),
    }
}

/// Loads the GGUF model at `path`, calling `phase(name, duration)` after each step.
///
/// # Errors
///
/// When the file is not a usable Llama-family GGUF, or its tokenizer or chat template cannot
/// be built.
pub fn load(
    path: &Path,
    options: LoadOptions,
    threads: usize,
    mut phase: impl FnMut(&'static str, Duration),
) -> Result<LoadedGenerator, ModelError> {
    let t = Instant::now();
    let level = KernelLevel::capped(options.kernel_cap);
    let (dtype, keep_q4) = resolve_dtype(options.dtype);
    let (model, file) = Llama::load(path, dtype, keep_q4, level, threads)
        .map_err(|e| ModelError::Files(e.to_string()))?;
    phase("weights", t.elapsed());
    let t = Instant::now();
    let tokenizer = GenTokenizer::from_gguf(&file).map_err(|e| ModelError::Files(e.to_string()))?;
    if tokenizer.vocab_size() != model.config().vocab {
        return Err(ModelError::Files(format!(
            "{}: the tokenizer has {} tokens, the model {}",
            path.display(),
            tokenizer.vocab_size(),
            model.config().vocab
        )));
    }
    let chat = match file
        .string_opt("tokenizer.chat_template")
        .map_err(|e| ModelError::Files(e.to_string()))?
    {
        Some(source) => Some(
            ChatTemplate::new(
                source,
                tokenizer.bos_text().unwrap_or(""),
                tokenizer.eos_text().unwrap_or(""),
            )
            .map_err(|e| ModelError::Files(format!("{}: {e}", path.display())))?,
        ),
        None => None,
    };
    phase("tokenizer", t.elapsed());
    // The file's name, as the embedding path shows a directory's: `general.name` is often
    // a training-run label rather than the model's name.
    let id = path
        .file_stem()
        .map_or_else(|| "model".into(), |s| s.to_string_lossy().into_owned());
    let info = ModelInfo {
        id,
        task: Task::TextGeneration,
        dimensions: model.config().n_embd,
        max_input_length: model.config().context,
        pooling: Pooling::Mean,
        normalized_by_model: false,
        dtype,
        kernel: level,
    };
    Ok(LoadedGenerator {
        info,
        model: Arc::new(model),
        tokenizer: Arc::new(tokenizer),
        chat,
    })
}
