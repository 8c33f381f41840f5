//! The tiny ModernBERT models of tests/data/tiny_modernbert_reference.json (the same seeded
//! weights with mean pooling, Normalize and prompts, as modernbert-embed, and with CLS
//! pooling, as gte-modernbert) and of tests/data/tiny_modernbert_classifier_reference.json (a
//! reranker and a three-label classifier), written again from what the reference holds: their files
//! verbatim, their tokenizer.json from the reference's skeleton with GPT-2's real vocabulary
//! and merges put back (`qwen3_embedding_model::gpt2_tokenizer_json`), and the weights from
//! the seeded rule, checked bit for bit against the script's fingerprints. Written once under
//! the temporary directory, named by the reference's fingerprint, and reused.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use serde::Deserialize;

use super::qwen3_embedding_model::gpt2_tokenizer_json;
use super::reranker_models::{
    write_files_and_weights, ClassifyCase, EmbedCase, RerankCase, Section,
};

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
        let tokenizer = Tokenizer {
            skeleton: &r.tokenizer_json,
            vocab_sha256: &r.gpt2_vocab_sha256,
            merges_sha256: &r.gpt2_merges_sha256,
        };
        let root = root_for(REFERENCE, "modernbert");
        (
            write(&root, "mean", &r.mean, &tokenizer),
            write(&root, "cls", &r.cls, &tokenizer),
        )
    })
}

/// tests/data/tiny_modernbert_classifier_reference.json (scripts/make-modernbert-classifier-reference.py):
/// two `ModernBertForSequenceClassification` models with the same tokenizer.
#[derive(Deserialize)]
pub struct ClassifierReference {
    pub generator_versions: String,
    pub gpt2_vocab_sha256: String,
    pub gpt2_merges_sha256: String,
    pub tokenizer_json: serde_json::Value,
    /// One label, mean pooling, no biases (as gte-reranker-modernbert-base).
    pub reranker: Section<RerankCase>,
    /// Three labels, CLS pooling, every bias on.
    pub classifier: Section<ClassifyCase>,
}

const CLASSIFIER_REFERENCE: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/tests/data/tiny_modernbert_classifier_reference.json"
);

pub fn classifier_reference() -> &'static ClassifierReference {
    static R: OnceLock<ClassifierReference> = OnceLock::new();
    R.get_or_init(|| {
        serde_json::from_str(&std::fs::read_to_string(CLASSIFIER_REFERENCE).unwrap()).unwrap()
    })
}

/// The two classifier directories, written once: (reranker, classifier).
pub fn classifier_dirs() -> &'static (PathBuf, PathBuf) {
    static DIRS: OnceLock<(PathBuf, PathBuf)> = OnceLock::new();
    DIRS.get_or_init(|| {
        let r = classifier_reference();
        let tokenizer = Tokenizer {
            skeleton: &r.tokenizer_json,
            vocab_sha256: &r.gpt2_vocab_sha256,
            merges_sha256: &r.gpt2_merges_sha256,
        };
        let root = root_for(CLASSIFIER_REFERENCE, "modernbert-classifiers");
        (
            write(&root, "reranker", &r.reranker, &tokenizer),
            write(&root, "classifier", &r.classifier, &tokenizer),
        )
    })
}

/// A reference's tokenizer.json: its skeleton and the digests of GPT-2's files that fill it.
struct Tokenizer<'a> {
    skeleton: &'a serde_json::Value,
    vocab_sha256: &'a str,
    merges_sha256: &'a str,
}

/// `zerobatch-{name}-{fingerprint}` under the temporary directory, named by the reference
/// file's FNV-1a, so a changed reference writes new models.
fn root_for(reference: &str, name: &str) -> PathBuf {
    let mut h = 0xCBF2_9CE4_8422_2325u64;
    for b in std::fs::read(reference).unwrap() {
        h = (h ^ b as u64).wrapping_mul(0x0100_0000_01B3);
    }
    std::env::temp_dir().join(format!("zerobatch-{name}-{h:016x}"))
}

/// Writes one model of a reference under `root/name` (beside its place, then renamed into
/// it, so concurrent test binaries never see half of one), unless it is there already.
fn write<C>(root: &Path, name: &str, s: &Section<C>, tokenizer: &Tokenizer) -> PathBuf {
    let dir = root.join(name);
    if !dir.join("model.safetensors").is_file() {
        let tmp = root.join(format!(".{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&tmp);
        write_files_and_weights(&tmp, &s.files, &s.tensors, &s.weight_fnv1a64);
        let json = gpt2_tokenizer_json(
            tokenizer.skeleton,
            tokenizer.vocab_sha256,
            tokenizer.merges_sha256,
        );
        std::fs::write(
            tmp.join("tokenizer.json"),
            serde_json::to_vec(&json).unwrap(),
        )
        .unwrap();
        // Another test binary may have put it there first: then its copy is used.
        if std::fs::rename(&tmp, &dir).is_err() {
            let _ = std::fs::remove_dir_all(&tmp);
        }
    }
    dir
}
