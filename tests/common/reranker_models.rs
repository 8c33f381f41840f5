//! The tiny models of tests/data/tiny_reranker_reference.json (a one-label cross-encoder, a
//! three-label classifier, a CLS-pooling embedder with prompts), written again from what the
//! reference holds: each model's files verbatim, all-MiniLM-L6-v2's tokenizer files, and the
//! weights from the seeded rule that scripts/make-reranker-reference.py filled them with,
//! checked bit for bit against its fingerprints. Written once under the temporary directory,
//! named by the reference's own fingerprint, and reused by later runs (each model directory is
//! written beside its place and renamed into it, so concurrent test binaries never see half of
//! one).

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use candle_core::{Device, Tensor};
use serde::Deserialize;
use sha2::{Digest, Sha256};

use super::{fnv1a64, minilm_dir, SplitMix64};

#[derive(Deserialize)]
pub struct Reference {
    pub generator_versions: String,
    pub tokenizer_sha256: String,
    pub tokenizer_files: Vec<String>,
    pub reranker: Section<RerankCase>,
    pub classifier: Section<ClassifyCase>,
    pub embedder: Section<EmbedCase>,
}

/// One model: how to write it, and what sentence-transformers answered with it.
#[derive(Deserialize)]
pub struct Section<C> {
    /// Relative path → JSON content, written verbatim.
    pub files: BTreeMap<String, serde_json::Value>,
    pub tensors: Vec<TensorSpec>,
    pub weight_fnv1a64: BTreeMap<String, String>,
    pub max_input_length: usize,
    #[serde(default)]
    pub labels: Vec<String>,
    #[serde(default)]
    pub prompts: BTreeMap<String, String>,
    pub cases: Vec<C>,
}

#[derive(Deserialize)]
pub struct TensorSpec {
    pub name: String,
    pub shape: Vec<usize>,
    pub kind: String,
    pub scale: f32,
    pub seed: u64,
}

#[derive(Deserialize)]
pub struct PairFeatures {
    pub token_ids: Vec<u32>,
    pub type_ids: Vec<u32>,
    pub untruncated_token_count: usize,
}

#[derive(Deserialize)]
pub struct RerankCase {
    pub name: String,
    pub query: String,
    pub passages: Vec<String>,
    pub pairs: Vec<PairFeatures>,
    /// CrossEncoder.predict: the sigmoid of the logit.
    pub scores: Vec<f32>,
    pub logits: Vec<f32>,
    /// CrossEncoder.rank: passage indices, best first.
    pub order: Vec<usize>,
}

#[derive(Deserialize)]
pub struct ClassifyCase {
    /// A text, or a [text, text] pair.
    pub inputs: serde_json::Value,
    pub token_ids: Vec<u32>,
    pub type_ids: Vec<u32>,
    pub logits: Vec<f32>,
    pub softmax: Vec<f32>,
}

#[derive(Deserialize)]
pub struct EmbedCase {
    pub text: String,
    /// The ids sentence-transformers' tokenizer gives, truncated (when the reference has them).
    #[serde(default)]
    pub token_ids: Vec<u32>,
    pub untruncated_token_count: usize,
    pub embedding: Vec<f32>,
    /// Prompt name → SentenceTransformer.encode(text, prompt_name=...).
    pub prompted: BTreeMap<String, Vec<f32>>,
}

pub fn reference() -> &'static Reference {
    static R: OnceLock<Reference> = OnceLock::new();
    R.get_or_init(|| {
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/data/tiny_reranker_reference.json"
        );
        serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
    })
}

/// The three model directories, written once: (reranker, classifier, embedder).
pub fn model_dirs() -> &'static (PathBuf, PathBuf, PathBuf) {
    static DIRS: OnceLock<(PathBuf, PathBuf, PathBuf)> = OnceLock::new();
    DIRS.get_or_init(|| {
        let r = reference();
        let json = std::fs::read(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/data/tiny_reranker_reference.json"
        ))
        .unwrap();
        let mut h = 0xCBF2_9CE4_8422_2325u64;
        for b in json {
            h = (h ^ b as u64).wrapping_mul(0x0100_0000_01B3);
        }
        let root = std::env::temp_dir().join(format!("zerobatch-rerankers-{h:016x}"));
        let write = |name: &str, files, tensors, fnv| {
            let dir = root.join(name);
            if !dir.join("model.safetensors").is_file() {
                let tmp = root.join(format!(".{name}-{}", std::process::id()));
                let _ = std::fs::remove_dir_all(&tmp);
                write_model(&tmp, files, tensors, fnv);
                // Another test binary may have put it there first: then its copy is used.
                if std::fs::rename(&tmp, &dir).is_err() {
                    let _ = std::fs::remove_dir_all(&tmp);
                }
            }
            dir
        };
        (
            write(
                "reranker",
                &r.reranker.files,
                &r.reranker.tensors,
                &r.reranker.weight_fnv1a64,
            ),
            write(
                "classifier",
                &r.classifier.files,
                &r.classifier.tensors,
                &r.classifier.weight_fnv1a64,
            ),
            write(
                "embedder",
                &r.embedder.files,
                &r.embedder.tensors,
                &r.embedder.weight_fnv1a64,
            ),
        )
    })
}

/// The values of one tensor by the rule: splitmix64 seeded with `seed`, row-major;
/// r = f32(z >> 40) / 2^24 * 2 - 1; a "norm" is 1 + r·scale, anything else r·scale.
pub fn fill(spec: &TensorSpec) -> Vec<f32> {
    let n: usize = spec.shape.iter().product();
    let mut rng = SplitMix64(spec.seed);
    (0..n)
        .map(|_| {
            let r = (rng.next() >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0;
            if spec.kind == "norm" {
                1.0 + r * spec.scale
            } else {
                r * spec.scale
            }
        })
        .collect()
}

fn write_model(
    dir: &Path,
    files: &BTreeMap<String, serde_json::Value>,
    tensors: &[TensorSpec],
    fingerprints: &BTreeMap<String, String>,
) {
    let r = reference();
    let minilm = minilm_dir().expect(
        "all-MiniLM-L6-v2's tokenizer is needed (models/all-MiniLM-L6-v2 or $ZEROBATCH_MODEL_DIR): run scripts/fetch-model.sh",
    );
    std::fs::create_dir_all(dir).unwrap();
    for name in &r.tokenizer_files {
        std::fs::copy(minilm.join(name), dir.join(name)).unwrap();
    }
    assert_eq!(
        sha256_hex(&dir.join("tokenizer.json")),
        r.tokenizer_sha256,
        "MiniLM's tokenizer.json is not the one the reference was made with"
    );
    write_files_and_weights(dir, files, tensors, fingerprints);
}

/// The sha256 of a file, in hex.
pub fn sha256_hex(path: &Path) -> String {
    Sha256::digest(std::fs::read(path).unwrap())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Writes a reference model's `files` verbatim into `dir` and its weights by the rule
/// ([`fill`]), each tensor checked against the script's fingerprint.
pub fn write_files_and_weights(
    dir: &Path,
    files: &BTreeMap<String, serde_json::Value>,
    tensors: &[TensorSpec],
    fingerprints: &BTreeMap<String, String>,
) {
    std::fs::create_dir_all(dir).unwrap();
    for (rel, value) in files {
        let path = dir.join(rel);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, serde_json::to_vec_pretty(value).unwrap()).unwrap();
    }
    let mut weights = HashMap::new();
    for spec in tensors {
        let values = fill(spec);
        assert_eq!(
            format!("{:016x}", fnv1a64(&values)),
            fingerprints[&spec.name],
            "{}: the generated weights differ from the script's",
            spec.name
        );
        weights.insert(
            spec.name.clone(),
            Tensor::from_vec(values, spec.shape.as_slice(), &Device::Cpu).unwrap(),
        );
    }
    candle_core::safetensors::save(&weights, dir.join("model.safetensors")).unwrap();
}
