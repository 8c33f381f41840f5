//! Text generation: a GGUF model of the Llama family (`llama`, `qwen2`, `qwen3`, `phi3`,
//! `smollm3`) or of Gemma 3 (`gemma3`), or a GPT-2 checkpoint in Hugging Face layout, served
//! with continuous batching.
//!
//! - [`gguf`]: the file's metadata and tensors (split files merged), with errors that name the
//!   key or tensor;
//! - [`decoder`]: what every architecture shares (KV caches, attention over them, a step's
//!   bookkeeping) and [`decoder::Decoder`], the interface of the model the engine runs;
//! - [`llama_family`]: the model and batched step the GGUF architectures share; [`llama`],
//!   [`qwen2`], [`qwen3`], [`phi3`], [`smollm3`]: what each of them adds; [`gemma3`]: Gemma 3 (sandwich
//!   norms, sliding-window layers), with its own step over the family's parts; [`gpt2`]: GPT-2,
//!   with its own step;
//! - [`tokenizer`]: the tokenizer (from GGUF metadata or Hugging Face files);
//!   [`pre_tokenizer`]: the split regexes `tokenizer.ggml.pre` names; [`end_tokens`]: the ids
//!   that end generation; [`spm_merges`]: a SentencePiece vocabulary's scores as BPE merges;
//!   [`incremental`]: generated ids to text pieces, a token at a time;
//! - [`chat`]: the model's Jinja chat template; [`prompt`]: a conversation to ids, its
//!   messages' contents as plain text; [`reasoning`]: a reasoning model's thinking text, told
//!   apart from its answer by the template's tags;
//! - [`sampling`]: greedy and seeded sampling; [`grammar`]: constrained decoding (structured
//!   outputs) with llguidance;
//! - [`engine`]: the step loop (continuous batching) and its bounded queue;
//! - [`service`]: the generation service the front ends call: it checks, tokenizes and queues a
//!   request, and the engine's events stream back.

pub mod chat;
pub mod chat_message;
pub mod decoder;
pub mod end_tokens;
pub mod engine;
pub mod gemma3;
pub mod gguf;
pub mod gguf_weights;
pub mod gpt2;
pub mod grammar;
pub mod incremental;
pub mod kv_cache;
pub mod llama;
pub mod llama_family;
pub mod phi3;
pub mod pre_tokenizer;
pub mod prefix_cache;
pub mod prompt;
pub mod qwen2;
pub mod qwen3;
pub mod reasoning;
pub mod sampling;
pub mod service;
pub mod smollm3;
pub mod spm_merges;
pub mod tokenizer;
pub mod tool_syntax;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::kernels::{Dtype, KernelLevel};
use crate::model::files::ModelFiles;
use crate::model::{DtypeChoice, LoadOptions, ModelError, ModelInfo, Pooling, Task};
use chat::ChatTemplate;
use decoder::Decoder;
use gemma3::Gemma3;
use gpt2::{Gpt2, Gpt2Config};
use llama::Llama;
use phi3::Phi3;
use qwen2::Qwen2;
use qwen3::Qwen3;
use sampling::SamplingDefaults;
use smollm3::SmolLm3;
use tokenizer::{GenTokenizer, HfTokenizerFiles};

/// A generation model loaded, before its engine starts.
pub struct LoadedGenerator {
    pub info: ModelInfo,
    pub model: Arc<dyn Decoder>,
    pub tokenizer: Arc<GenTokenizer>,
    pub chat: Option<ChatTemplate>,
    pub defaults: SamplingDefaults,
}

/// The GGUF file `model` names, when it names one: a `.gguf` file, or a directory holding
/// no `config.json` (a Hugging Face layout is an embedding model's) and either exactly one
/// `.gguf` file or the parts of one split model (then its first part).
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
    let found: Vec<PathBuf> = std::fs::read_dir(path)
        .ok()?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| {
            p.extension()
                .is_some_and(|e| e.eq_ignore_ascii_case("gguf"))
        })
        .collect();
    if let [one] = found.as_slice() {
        return Some(one.clone());
    }
    // Every file a part of the same split model: its first part.
    found.iter().find_map(|p| {
        let name = p.file_name()?.to_str()?;
        let count: u64 = name
            .strip_suffix(".gguf")?
            .rsplit_once("-00001-of-")?
            .1
            .parse()
            .ok()?;
        let prefix = gguf::split_prefix(p, 1, count)?;
        let parts: Vec<String> = (1..=count)
            .map(|i| gguf::split_path(&prefix, i, count))
            .collect();
        let all = found.len() as u64 == count
            && found
                .iter()
                .all(|f| f.to_str().is_some_and(|f| parts.iter().any(|p| p == f)));
        all.then(|| p.clone())
    })
}

/// The name a GGUF model is reported by: its file's name without `.gguf` and, for a split
/// model, without `-00001-of-0000N` (`general.name` is often a training-run label rather than
/// the model's name).
pub fn gguf_model_id(path: &Path) -> String {
    let stem = path
        .file_stem()
        .map_or_else(|| "model".into(), |s| s.to_string_lossy().into_owned());
    match stem.rsplit_once("-00001-of-") {
        Some((prefix, count)) if count.len() == 5 && count.bytes().all(|b| b.is_ascii_digit()) => {
            prefix.to_string()
        }
        _ => stem,
    }
}

/// The dtype `auto` picks for generation, and whether 4- and 5-bit weights (Q4_0, Q4_1, Q4_K,
/// Q5_0, Q5_1, Q5_K) stay as stored: `auto` keeps them as they are and runs every other weight in int8 blocks of 32
/// (exact for Q8_0; for GPT-2's f32 weights, the precision of Q8_0 at a quarter of the
/// bytes a step reads); a fixed dtype converts every weight to it (for comparisons and tests).
pub fn resolve_dtype(choice: DtypeChoice) -> (Dtype, bool) {
    match choice {
        DtypeChoice::Auto => (Dtype::Int8, true),
        DtypeChoice::Fixed(d) => (d, false),
    }
}

/// A GGUF file's tokenizer and chat template.
pub fn gguf_text(
    file: &gguf::GgufFile,
    path: &Path,
) -> Result<(GenTokenizer, Option<ChatTemplate>), ModelError> {
    let tokenizer = GenTokenizer::from_gguf(file).map_err(|e| ModelError::Files(e.to_string()))?;
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
            .map_err(|e| {
                ModelError::Files(format!("{}: tokenizer.chat_template: {e}", path.display()))
            })?,
        ),
        None => None,
    };
    Ok((tokenizer, chat))
}

/// Where a generation model comes from.
pub enum GenerationSource {
    /// A GGUF file of the Llama family (the first part, when the model is split), and the
    /// name the model is reported by.
    Gguf { path: PathBuf, id: String },
    /// A GPT-2 checkpoint in Hugging Face layout (a directory or a hub id, resolved).
    Gpt2(Box<ModelFiles>),
}

/// Loads a generation model, calling `phase(name, duration)` after each step.
///
/// # Errors
///
/// When the files are not a usable model, or its tokenizer or chat template cannot be built.
pub fn load(
    source: &GenerationSource,
    options: LoadOptions,
    threads: usize,
    phase: impl FnMut(&'static str, Duration),
) -> Result<LoadedGenerator, ModelError> {
    match source {
        GenerationSource::Gguf { path, id } => load_gguf(path, id, options, threads, phase),
        GenerationSource::Gpt2(files) => load_gpt2(files, options, threads, phase),
    }
}

/// `bos_token_id` and `eos_token_id` as `config.json` and `generation_config.json` give them
/// (an id or a list of ids; the latter file wins).
#[derive(serde::Deserialize, Default)]
struct SpecialIds {
    bos_token_id: Option<IdOrIds>,
    eos_token_id: Option<IdOrIds>,
}

#[derive(serde::Deserialize, Clone)]
#[serde(untagged)]
enum IdOrIds {
    One(u32),
    Many(Vec<u32>),
}

impl IdOrIds {
    fn ids(&self) -> Vec<u32> {
        match self {
            IdOrIds::One(i) => vec![*i],
            IdOrIds::Many(v) => v.clone(),
        }
    }
}

fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> Result<T, ModelError> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| ModelError::Files(format!("{}: {e}", path.display())))?;
    serde_json::from_str(&text).map_err(|e| ModelError::Config(format!("{}: {e}", path.display())))
}

/// Loads a GPT-2 checkpoint.
fn load_gpt2(
    files: &ModelFiles,
    options: LoadOptions,
    threads: usize,
    mut phase: impl FnMut(&'static str, Duration),
) -> Result<LoadedGenerator, ModelError> {
    let t = Instant::now();
    let config_text = std::fs::read_to_string(&files.config)
        .map_err(|e| ModelError::Files(format!("{}: {e}", files.config.display())))?;
    let config = Gpt2Config::from_json(&config_text)?;
    let mut ids: SpecialIds = serde_json::from_str(&config_text).unwrap_or_default();
    if let Some(path) = &files.generation_config {
        let g: SpecialIds = read_json(path)?;
        ids.bos_token_id = g.bos_token_id.or(ids.bos_token_id);
        ids.eos_token_id = g.eos_token_id.or(ids.eos_token_id);
    }
    let defaults = sampling_defaults(files, &config_text)?;
    let bos = ids.bos_token_id.and_then(|b| b.ids().first().copied());
    let eos = ids.eos_token_id.map(|e| e.ids()).unwrap_or_default();
    let tokenizer_files = match (&files.tokenizer, &files.vocab, &files.merges) {
        (Some(t), _, _) => HfTokenizerFiles::TokenizerJson(t),
        (None, Some(vocab), Some(merges)) => HfTokenizerFiles::VocabMerges { vocab, merges },
        _ => {
            return Err(ModelError::Files(format!(
                "{}: no tokenizer.json (nor vocab.json and merges.txt)",
                files.source
            )))
        }
    };
    let level = KernelLevel::capped(options.kernel_cap);
    let (dtype, _) = resolve_dtype(options.dtype);
    let vocab = config.vocab;
    phase("config", t.elapsed());
    // The tokenizer is built on a second thread while the weights convert.
    let (model, tokenizer) = std::thread::scope(|s| {
        let tokenizer = s.spawn(|| {
            let t = Instant::now();
            GenTokenizer::from_hf(tokenizer_files, bos, &eos)
                .map(|tok| (tok, t.elapsed()))
                .map_err(|e| ModelError::Tokenizer(e.to_string()))
        });
        let t = Instant::now();
        let model =
            Gpt2::load(config, &files.weights, dtype, level, threads).map(|m| (m, t.elapsed()));
        let joined = tokenizer.join().unwrap_or_else(|_| {
            Err(ModelError::Tokenizer(
                "building the tokenizer panicked".into(),
            ))
        });
        (model, joined)
    });
    let (model, weights_took) = model?;
    phase("weights", weights_took);
    let (tokenizer, tokenizer_took) = tokenizer?;
    phase("tokenizer", tokenizer_took);
    if tokenizer.vocab_size() > vocab {
        return Err(ModelError::Config(format!(
            "{}: the tokenizer has {} tokens, more than the model's vocab_size {vocab}",
            files.source,
            tokenizer.vocab_size(),
        )));
    }
    let c = model.config();
    let info = ModelInfo {
        id: files.source.clone(),
        model_type: "gpt2".into(),
        task: Task::TextGeneration,
        dimensions: c.n_embd,
        max_input_length: c.context,
        pooling: Pooling::Mean,
        normalized_by_model: false,
        dtype,
        weight_formats: model.weight_formats().into_iter().collect(),
        kernel: level,
        classifier: None,
        prompts: Default::default(),
    };
    Ok(LoadedGenerator {
        info,
        model: Arc::new(model),
        tokenizer: Arc::new(tokenizer),
        chat: None,
        defaults,
    })
}

/// The checkpoint's sampling settings: `generation_config.json`, overridden by
/// `config.json`'s `task_specific_params["text-generation"]`.
fn sampling_defaults(
    files: &ModelFiles,
    config_text: &str,
) -> Result<SamplingDefaults, ModelError> {
    let mut defaults = match &files.generation_config {
        Some(path) => read_json::<SamplingDefaults>(path)?,
        None => SamplingDefaults::default(),
    };
    #[derive(serde::Deserialize)]
    struct TaskParams {
        task_specific_params: Option<std::collections::HashMap<String, serde_json::Value>>,
    }
    let task: TaskParams = serde_json::from_str(config_text)
        .map_err(|e| ModelError::Config(format!("config.json: {e}")))?;
    if let Some(v) = task
        .task_specific_params
        .and_then(|mut t| t.remove("text-generation"))
    {
        let over: SamplingDefaults = serde_json::from_value(v).map_err(|e| {
            ModelError::Config(format!(
                "config.json: task_specific_params.text-generation: {e}"
            ))
        })?;
        defaults = defaults.overridden_by(over);
    }
    defaults
        .checked()
        .map_err(|e| ModelError::Config(format!("{}: sampling settings: {e}", files.source)))
}

/// The GGUF architectures this server runs (`general.architecture`), for messages.
pub const GGUF_ARCHITECTURES: &str =
    "llama (Llama 2/3, SmolLM2, TinyLlama, …), qwen2 (Qwen2, Qwen2.5), qwen3 (Qwen3), phi3 (Phi-3, Phi-3.5-mini, Phi-4-mini), smollm3 (SmolLM3) and gemma3 (Gemma 3 270M, 1B; text)";

/// The model of an open GGUF file, by its `general.architecture`.
///
/// # Errors
///
/// When the architecture is not one of [`GGUF_ARCHITECTURES`], or the file is not a usable
/// model of it.
pub fn gguf_model(
    file: &gguf::GgufFile,
    dtype: crate::kernels::Dtype,
    keep_low_bit: bool,
    level: KernelLevel,
    threads: usize,
) -> Result<Arc<dyn Decoder>, gguf::GgufError> {
    Ok(match file.string("general.architecture")? {
        "llama" => Arc::new(Llama::from_file(file, dtype, keep_low_bit, level, threads)?),
        "qwen2" => Arc::new(Qwen2::from_file(file, dtype, keep_low_bit, level, threads)?),
        "qwen3" => Arc::new(Qwen3::from_file(file, dtype, keep_low_bit, level, threads)?),
        "phi3" => Arc::new(Phi3::from_file(file, dtype, keep_low_bit, level, threads)?),
        "smollm3" => Arc::new(SmolLm3::from_file(
            file,
            dtype,
            keep_low_bit,
            level,
            threads,
        )?),
        "gemma3" => Arc::new(Gemma3::from_file(
            file,
            dtype,
            keep_low_bit,
            level,
            threads,
        )?),
        other => {
            return Err(gguf::GgufError::Metadata {
                path: file.path().to_path_buf(),
                key: "general.architecture".into(),
                problem: format!("is {other:?}; this server runs {GGUF_ARCHITECTURES}"),
            })
        }
    })
}

/// Loads the GGUF model at `path`.
fn load_gguf(
    path: &Path,
    id: &str,
    options: LoadOptions,
    threads: usize,
    mut phase: impl FnMut(&'static str, Duration),
) -> Result<LoadedGenerator, ModelError> {
    let t = Instant::now();
    let level = KernelLevel::capped(options.kernel_cap);
    let (dtype, keep_low_bit) = resolve_dtype(options.dtype);
    let files_error = |e: &dyn std::fmt::Display| ModelError::Files(e.to_string());
    let file = gguf::GgufFile::open(path).map_err(|e| files_error(&e))?;
    phase("metadata", t.elapsed());
    // The tokenizer and the chat template are built on a second thread while the weights
    // convert: both are on the cold-start path, and the conversion has serial stretches.
    let ((model, weights_took), text) = std::thread::scope(|s| {
        let text = s.spawn(|| {
            let t = Instant::now();
            gguf_text(&file, path).map(|text| (text, t.elapsed()))
        });
        let t = Instant::now();
        let model = gguf_model(&file, dtype, keep_low_bit, level, threads);
        let joined = text
            .join()
            .unwrap_or_else(|_| Err(ModelError::Files("building the tokenizer panicked".into())));
        ((model, t.elapsed()), joined)
    });
    let model = model.map_err(|e| files_error(&e))?;
    phase("weights", weights_took);
    let ((tokenizer, chat), tokenizer_took) = text?;
    phase("tokenizer", tokenizer_took);
    let shape = model.shape();
    if tokenizer.vocab_size() != shape.vocab {
        return Err(ModelError::Files(format!(
            "{}: the tokenizer has {} tokens, the model {}",
            path.display(),
            tokenizer.vocab_size(),
            shape.vocab
        )));
    }
    let id = id.to_string();
    let info = ModelInfo {
        id,
        // The architecture was read (and checked) when the model loaded.
        model_type: file
            .string("general.architecture")
            .map(|a| a.to_string())
            .unwrap_or_default(),
        task: Task::TextGeneration,
        dimensions: shape.n_embd,
        max_input_length: shape.context,
        pooling: Pooling::Mean,
        normalized_by_model: false,
        dtype,
        weight_formats: model.weight_formats().into_iter().collect(),
        kernel: level,
        classifier: None,
        prompts: Default::default(),
    };
    Ok(LoadedGenerator {
        info,
        model,
        tokenizer: Arc::new(tokenizer),
        chat,
        defaults: SamplingDefaults::default(),
    })
}
