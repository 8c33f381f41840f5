//! How the Hugging Face hub is reached, read once from the environment as the Python
//! libraries read it: `HF_HOME` (the cache, `$HF_HOME/hub`, else `~/.cache/huggingface/hub`),
//! `HF_ENDPOINT` (a mirror), `HF_TOKEN` (else the token `huggingface-cli login` saved),
//! `HF_HUB_OFFLINE=1` (the cache only, never the network). Shared by the two ways a model
//! comes from the hub: a checkpoint's files ([`super::files`]) and a GGUF file picked by its
//! quantization ([`super::gguf_hub`]).

use std::path::{Path, PathBuf};

use hf_hub::api::sync::{Api, ApiBuilder, ApiError};
use hf_hub::{Cache, Repo, RepoType};

/// Where and how the hub is reached.
#[derive(Debug, Clone)]
pub struct Hub {
    /// The hub cache directory (`…/hub`, holding `models--owner--name`).
    pub cache: PathBuf,
    /// `HF_ENDPOINT`, when set.
    pub endpoint: Option<String>,
    /// The token sent to the hub, if any.
    pub token: Option<String>,
    /// `HF_HUB_OFFLINE`: never use the network.
    pub offline: bool,
}

impl Hub {
    /// The settings the environment gives.
    pub fn from_env() -> Self {
        let cache = Cache::from_env();
        let token = std::env::var("HF_TOKEN")
            .ok()
            .filter(|t| !t.is_empty())
            .or_else(|| cache.token());
        Self {
            cache: cache.path().clone(),
            endpoint: std::env::var("HF_ENDPOINT").ok().filter(|e| !e.is_empty()),
            token,
            offline: std::env::var("HF_HUB_OFFLINE")
                .is_ok_and(|v| matches!(v.as_str(), "1" | "true" | "TRUE" | "yes")),
        }
    }

    /// The cache, as the hub client sees it.
    pub fn cache(&self) -> Cache {
        Cache::new(self.cache.clone())
    }

    /// The hub client (downloads go to the cache; files already there are not fetched again).
    ///
    /// # Errors
    ///
    /// When the client cannot be built.
    pub fn api(&self) -> Result<Api, ApiError> {
        let mut builder = ApiBuilder::from_cache(self.cache())
            .with_token(self.token.clone())
            .with_progress(false);
        if let Some(endpoint) = &self.endpoint {
            builder = builder.with_endpoint(endpoint.clone());
        }
        builder.build()
    }

    /// The snapshot directory `revision` of model `repo` points to in the cache (a branch or
    /// tag through `refs/`, or a commit itself), if the cache has it.
    pub fn cached_snapshot(&self, repo: &str, revision: &str) -> Option<PathBuf> {
        let folder =
            Repo::with_revision(repo.into(), RepoType::Model, revision.into()).folder_name();
        let root = self.cache.join(folder);
        let commit = std::fs::read_to_string(root.join("refs").join(revision))
            .map(|c| c.trim().to_string())
            .unwrap_or_else(|_| revision.to_string());
        let snapshot = root.join("snapshots").join(commit);
        snapshot.is_dir().then_some(snapshot)
    }
}

/// The files under `dir`, as paths relative to it with `/` between parts, sorted.
pub fn files_under(dir: &Path) -> Vec<String> {
    fn walk(dir: &Path, prefix: &str, out: &mut Vec<String>) {
        let Ok(entries) = std::fs::read_dir(dir) else {
            return;
        };
        for entry in entries.filter_map(Result::ok) {
            let name = entry.file_name().to_string_lossy().into_owned();
            let path = entry.path();
            let rel = format!("{prefix}{name}");
            if path.is_dir() {
                walk(&path, &format!("{rel}/"), out);
            } else if path.is_file() {
                out.push(rel);
            }
        }
    }
    let mut out = Vec::new();
    walk(dir, "", &mut out);
    out.sort();
    out
}

/// Whether a hub client error is "no such file" (the hub's 404).
pub fn is_not_found(e: &ApiError) -> bool {
    e.to_string().contains("404")
}
