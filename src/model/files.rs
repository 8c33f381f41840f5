//! Finding a model's files: a local directory in Hugging Face layout, or a hub id resolved
//! through the `hf-hub` crate into the standard Hugging Face cache.
//!
//! Hub access ([`super::hub`]) honours `HF_HOME` (cache location), `HF_ENDPOINT` (a mirror),
//! `HF_TOKEN` (private models) and `HF_HUB_OFFLINE=1` (use the cache only, never the
//! network), like the Python libraries.

use std::path::{Path, PathBuf};

use hf_hub::{Repo, RepoType};

use super::hub::{is_not_found, Hub};
use super::ModelError;

/// The name a model is reported by (`/info`, `/`, OpenAI's `model`): the hub id, or the
/// directory's own name for a local directory — never a filesystem path, which would tell
/// callers about the host.
pub fn model_id(model: &str) -> String {
    let path = Path::new(model);
    if path.is_dir() || looks_like_a_path(model) {
        path.file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .filter(|n| !n.is_empty())
            .unwrap_or_else(|| "local-model".to_string())
    } else {
        model.to_string()
    }
}

/// How to get the model when it is not where `--model` says.
const HOW_TO_FIX: &str =
    "fetch the default model with scripts/fetch-model.sh and pass --model DIR, \
point --model at a local directory in Hugging Face layout, or run `zerobatch download --model ID` \
on a machine that reaches the hub (or its mirror in HF_ENDPOINT)";

/// Files the server needs. Optional ones describe sentence-transformers pooling and length.
#[derive(Debug, Clone)]
pub struct ModelFiles {
    /// The model's id as reported to clients (see [`model_id`]).
    pub source: String,
    pub config: PathBuf,
    pub weights: PathBuf,
    /// `tokenizer.json`; a GPT-2 checkpoint may instead have only `vocab.json` and
    /// `merges.txt` (then this is `None` and both of those are set).
    pub tokenizer: Option<PathBuf>,
    pub vocab: Option<PathBuf>,
    pub merges: Option<PathBuf>,
    /// `generation_config.json`: a generation model's default settings.
    pub generation_config: Option<PathBuf>,
    /// `modules.json`: which sentence-transformers modules follow the encoder.
    pub modules: Option<PathBuf>,
    /// `1_Pooling/config.json` (or the folder `modules.json` names): the pooling mode.
    pub pooling: Option<PathBuf>,
    /// `sentence_bert_config.json`: `max_seq_length`.
    pub sentence_bert: Option<PathBuf>,
    /// `tokenizer_config.json`: `model_max_length`, the limit when the model has no
    /// `sentence_bert_config.json`.
    pub tokenizer_config: Option<PathBuf>,
    /// `config_sentence_transformers.json`: the named `prompts`.
    pub sentence_transformers: Option<PathBuf>,
}

const REQUIRED: [&str; 3] = ["config.json", "model.safetensors", "tokenizer.json"];
const OPTIONAL: [&str; 6] = [
    "modules.json",
    "1_Pooling/config.json",
    "sentence_bert_config.json",
    "generation_config.json",
    "tokenizer_config.json",
    "config_sentence_transformers.json",
];
/// GPT-2's original tokenizer files, used when there is no `tokenizer.json`.
const VOCAB_MERGES: [&str; 2] = ["vocab.json", "merges.txt"];

/// Resolves `model` (a directory, or else a hub id) to its files, downloading what is missing
/// unless `HF_HUB_OFFLINE` is set.
pub fn resolve(model: &str, revision: &str) -> Result<ModelFiles, ModelError> {
    let path = Path::new(model);
    if path.is_dir() {
        return from_directory(path);
    }
    if looks_like_a_path(model) {
        return Err(ModelError::Files(format!(
            "model directory {model} does not exist (a hub id looks like `owner/name`); {HOW_TO_FIX}"
        )));
    }
    from_hub(model, revision)
}

/// Whether `model` is meant as a filesystem path rather than a hub id (`owner/name`).
pub fn looks_like_a_path(model: &str) -> bool {
    model.starts_with('/')
        || model.starts_with('.')
        || model.starts_with('~')
        || model.matches('/').count() > 1
}

/// Files of a model stored as a plain directory.
pub fn from_directory(dir: &Path) -> Result<ModelFiles, ModelError> {
    let get = |name: &str| {
        let p = dir.join(name);
        p.is_file().then_some(p)
    };
    let need = |name: &str| {
        get(name).ok_or_else(|| ModelError::Files(format!("{} has no {name}", dir.display())))
    };
    let config = need(REQUIRED[0])?;
    let weights = need(REQUIRED[1])?;
    let tokenizer = get(REQUIRED[2]);
    let (vocab, merges) = (get(VOCAB_MERGES[0]), get(VOCAB_MERGES[1]));
    if tokenizer.is_none() && (vocab.is_none() || merges.is_none()) {
        need(REQUIRED[2])?;
    }
    Ok(ModelFiles {
        source: model_id(&dir.to_string_lossy()),
        config,
        weights,
        tokenizer,
        vocab,
        merges,
        generation_config: get(OPTIONAL[3]),
        modules: get(OPTIONAL[0]),
        pooling: get(OPTIONAL[1]),
        sentence_bert: get(OPTIONAL[2]),
        tokenizer_config: get(OPTIONAL[4]),
        sentence_transformers: get(OPTIONAL[5]),
    })
}

/// Fetches one file of the repository: `Ok(None)` when it does not exist.
type FetchFn = dyn Fn(&str) -> Result<Option<PathBuf>, String>;

fn from_hub(model_id: &str, revision: &str) -> Result<ModelFiles, ModelError> {
    let repo = Repo::with_revision(model_id.to_string(), RepoType::Model, revision.to_string());
    let hub = Hub::from_env();
    let offline = hub.offline;
    let fetch: Box<FetchFn> = if offline {
        let cached = hub.cache().repo(repo.clone());
        Box::new(move |name: &str| Ok(cached.get(name)))
    } else {
        let api = hub
            .api()
            .map_err(|e| ModelError::Files(format!("cannot use the Hugging Face hub: {e}")))?
            .repo(repo.clone());
        Box::new(move |name: &str| match api.get(name) {
            Ok(p) => Ok(Some(p)),
            // A missing optional file is a 404; anything else is worth reporting.
            Err(e) if is_not_found(&e) => Ok(None),
            Err(e) => Err(e.to_string()),
        })
    };
    let need = |name: &str| -> Result<PathBuf, ModelError> {
        match fetch(name) {
            Ok(Some(p)) => Ok(p),
            Ok(None) if offline => Err(ModelError::Files(format!(
                "{model_id}: {name} is not in the Hugging Face cache and HF_HUB_OFFLINE is set; {HOW_TO_FIX}"
            ))),
            Ok(None) => Err(ModelError::Files(format!(
                "{model_id} has no {name} on the hub"
            ))),
            Err(e) => Err(ModelError::Files(format!(
                "{model_id}: downloading {name} failed: {e}; {HOW_TO_FIX}"
            ))),
        }
    };
    let maybe = |name: &str| fetch(name).ok().flatten();
    let config = need(REQUIRED[0])?;
    let weights = need(REQUIRED[1])?;
    // tokenizer.json, else GPT-2's vocab.json and merges.txt.
    let (tokenizer, vocab, merges) = match maybe(REQUIRED[2]) {
        Some(t) => (Some(t), None, None),
        None => match (maybe(VOCAB_MERGES[0]), maybe(VOCAB_MERGES[1])) {
            (Some(v), Some(m)) => (None, Some(v), Some(m)),
            _ => (Some(need(REQUIRED[2])?), None, None),
        },
    };
    Ok(ModelFiles {
        source: model_id.to_string(),
        config,
        weights,
        tokenizer,
        vocab,
        merges,
        generation_config: maybe(OPTIONAL[3]),
        modules: maybe(OPTIONAL[0]),
        pooling: maybe(OPTIONAL[1]),
        sentence_bert: maybe(OPTIONAL[2]),
        tokenizer_config: maybe(OPTIONAL[4]),
        sentence_transformers: maybe(OPTIONAL[5]),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_directory_is_reported_not_sent_to_the_hub() {
        let err = resolve("/nonexistent/model/dir", "main").unwrap_err();
        assert!(err.to_string().contains("does not exist"), "{err}");
    }

    #[test]
    fn model_ids_never_show_a_path() {
        assert_eq!(
            model_id("sentence-transformers/all-MiniLM-L6-v2"),
            "sentence-transformers/all-MiniLM-L6-v2"
        );
        assert_eq!(model_id("/srv/models/all-MiniLM-L6-v2"), "all-MiniLM-L6-v2");
        assert_eq!(model_id("./models/mini/"), "mini");
        let dir = std::env::temp_dir();
        assert!(!model_id(&dir.to_string_lossy()).contains('/'));
    }

    #[test]
    fn a_missing_directory_says_how_to_fix_it() {
        let err = resolve("/nonexistent/model/dir", "main").unwrap_err();
        assert!(err.to_string().contains("scripts/fetch-model.sh"), "{err}");
    }

    #[test]
    fn a_directory_without_weights_names_the_missing_file() {
        let dir = std::env::temp_dir().join(format!("zb-files-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("config.json"), "{}").unwrap();
        let err = from_directory(&dir).unwrap_err();
        assert!(err.to_string().contains("model.safetensors"), "{err}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
