//! The two tiny ModernBERT models of tests/data/tiny_modernbert_reference.json (the same
//! seeded weights with mean pooling, Normalize and prompts, as modernbert-embed, and with CLS
//! pooling, as gte-modernbert), written again from what the reference holds: their files
//! verbatim, their tokenizer.json from the reference's skeleton with GPT-2's real vocabulary
//! and merges put back (`qwen3_embedding_model::gpt2_tokenizer_json`), and the weights from
//! the seeded rule, checked bit for bit against the script's fingerprints. Written once under
//! the temporary directory, named by the reference's fingerprint, and reused.

use std::path::PathBuf;
use std::sync::OnceLock;

use serde::Deserialize;

use super::qwen3_embedding_model::gpt2_tokenizer_json;
use super::reranker_models::{write_files_and_weights, EmbedCase, Section};

const REFERENCE: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/tests/data/tiny_modernbert_reference.json"
);

#[derive(Deserialize)]
pub struct Reference {
    pub generator_versions: String,
    pub gpt2_vocab_sha256: String,
    pub gpt2_merges_sha256: String,
    /// tokenizer.json with an empty vocabulary and no merges.
    pub tokenizer_json: serde_json::Value,
    /// Mean pooling, Normalize, prompts "query" and "document".
    pub mean: Section<EmbedCase>,
    /// CLS pooling, no Normalize module.
    pub cls: Section<EmbedCase>,
}

pub fn reference() -> &'static Reference {
    static R: OnceLock<Reference> = OnceLock::new();
    R.get_or_init(|| serde_json::from_str(&std::fs::read_to_string(REFERENCE).unwrap()).unwrap())
}

/// The two model directories, written once: (mean pooling, CLS pooling).
pub fn model_dirs() -> &'static (PathBuf, PathBuf) {
    static DIRS: OnceLock<(PathBuf, PathBuf)> = OnceLock::new();
    DIRS.get_or_init(|| {
        let r = reference();
        let mut h = 0xCBF2_9CE4_8422_2325u64;
        for b in std::fs::read(REFERENCE).unwrap() {
            h = (h ^ b as u64).wrapping_mul(0x0100_0000_01B3);
        }
        let root = std::env::temp_dir().join(format!("zerobatch-modernbert-{h:016x}"));
        let write = |name: &str, s: &Section<EmbedCase>| {
            let dir = root.join(name);
            if !dir.join("model.safetensors").is_file() {
                let tmp = root.join(format!(".{name}-{}", std::process::id()));
                let _ = std::fs::remove_dir_all(&tmp);
                write_files_and_weights(&tmp, &s.files, &s.tensors, &s.weight_fnv1a64);
                let tokenizer = gpt2_tokenizer_json(
                    &r.tokenizer_json,
                    &r.gpt2_vocab_sha256,
                    &r.gpt2_merges_sha256,
                );
                std::fs::write(
                    tmp.join("tokenizer.json"),
                    serde_json::to_vec(&tokenizer).unwrap(),
                )
                .unwrap();
                // Another test binary may have put it there first: then its copy is used.
                if std::fs::rename(&tmp, &dir).is_err() {
                    let _ = std::fs::remove_dir_all(&tmp);
                }
            }
            dir
        };
        (write("mean", &r.mean), write("cls", &r.cls))
    })
}
