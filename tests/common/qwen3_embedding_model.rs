//! The tiny Qwen3-Embedding-style model of tests/data/tiny_qwen3_embedding_reference.json,
//! written again from what the reference holds: its files verbatim, its tokenizer.json from
//! the reference's skeleton with GPT-2's real vocabulary and merges put back (the files
//! scripts/fetch-gpt2-tokenizer.sh fetches, checked against the digests the script recorded),
//! and the weights from the seeded rule, checked bit for bit against the script's
//! fingerprints. Written once under the temporary directory, named by the reference's
//! fingerprint, and reused (written beside its place and renamed into it).

use std::path::PathBuf;
use std::sync::OnceLock;

use serde::Deserialize;

use super::reranker_models::{sha256_hex, write_files_and_weights, EmbedCase, Section};

const REFERENCE: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/tests/data/tiny_qwen3_embedding_reference.json"
);

#[derive(Deserialize)]
pub struct Reference {
    pub generator_versions: String,
    pub gpt2_vocab_sha256: String,
    pub gpt2_merges_sha256: String,
    /// tokenizer.json with an empty vocabulary and no merges.
    pub tokenizer_json: serde_json::Value,
    pub embedder: Section<EmbedCase>,
}

pub fn reference() -> &'static Reference {
    static R: OnceLock<Reference> = OnceLock::new();
    R.get_or_init(|| serde_json::from_str(&std::fs::read_to_string(REFERENCE).unwrap()).unwrap())
}

/// GPT-2's tokenizer files (`$ZEROBATCH_GPT2_TOKENIZER_DIR`, else models/gpt2-tokenizer).
pub fn gpt2_dir() -> PathBuf {
    let dir = std::env::var("ZEROBATCH_GPT2_TOKENIZER_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|_| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("models/gpt2-tokenizer")
        });
    assert!(
        dir.join("vocab.json").is_file() && dir.join("merges.txt").is_file(),
        "{} has no vocab.json and merges.txt: run scripts/fetch-gpt2-tokenizer.sh, or use the README's test command, which does",
        dir.display()
    );
    dir
}

/// `skeleton` (a tokenizer.json without its vocabulary and merges) with GPT-2's vocabulary
/// and merges put back, after checking GPT-2's files against the digests the reference
/// recorded.
pub fn gpt2_tokenizer_json(
    skeleton: &serde_json::Value,
    vocab_sha256: &str,
    merges_sha256: &str,
) -> serde_json::Value {
    let gpt2 = gpt2_dir();
    let (vocab, merges) = (gpt2.join("vocab.json"), gpt2.join("merges.txt"));
    assert_eq!(sha256_hex(&vocab), vocab_sha256, "GPT-2's vocab.json");
    assert_eq!(sha256_hex(&merges), merges_sha256, "GPT-2's merges.txt");
    let mut tokenizer = skeleton.clone();
    tokenizer["model"]["vocab"] = serde_json::from_slice(&std::fs::read(&vocab).unwrap()).unwrap();
    // merges.txt: a "#version" line, then one merge per line in rank order.
    let merges: Vec<String> = std::fs::read_to_string(&merges)
        .unwrap()
        .lines()
        .filter(|l| !l.is_empty() && !l.starts_with("#version"))
        .map(str::to_string)
        .collect();
    assert_eq!(merges.len(), 50_000);
    tokenizer["model"]["merges"] = serde_json::json!(merges);
    tokenizer
}

/// The model directory, written once.
pub fn model_dir() -> &'static PathBuf {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let r = reference();
        let mut h = 0xCBF2_9CE4_8422_2325u64;
        for b in std::fs::read(REFERENCE).unwrap() {
            h = (h ^ b as u64).wrapping_mul(0x0100_0000_01B3);
        }
        let root = std::env::temp_dir().join(format!("zerobatch-qwen3-embedding-{h:016x}"));
        let dir = root.join("embedder");
        if !dir.join("model.safetensors").is_file() {
            let tmp = root.join(format!(".embedder-{}", std::process::id()));
            let _ = std::fs::remove_dir_all(&tmp);
            let s = &r.embedder;
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
    })
}
