//! The tiny XLM-RoBERTa models of tests/data/tiny_xlmr_reference.json (a one-label
//! cross-encoder, a mean-pooling embedder with e5's prompts, a CLS-pooling embedder), written
//! again from what the reference holds: each model's files verbatim, the SentencePiece
//! Unigram tokenizer scripts/make-xlmr-reference.py trained (tests/data/tiny_xlmr_tokenizer.json)
//! and the weights from the seeded rule, checked bit for bit against the script's
//! fingerprints. Written once under the temporary directory, named by the reference's
//! fingerprint, and reused (each directory is written beside its place and renamed into it).

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use serde::Deserialize;

use super::reranker_models::{sha256_hex, write_files_and_weights, EmbedCase, RerankCase, Section};

const REFERENCE: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/tests/data/tiny_xlmr_reference.json"
);
const TOKENIZER: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/tests/data/tiny_xlmr_tokenizer.json"
);

#[derive(Deserialize)]
pub struct Reference {
    pub generator_versions: String,
    pub tokenizer_sha256: String,
    pub vocab_size: usize,
    pub reranker: Section<RerankCase>,
    /// Mean pooling, Normalize, e5's prompts (multilingual-e5's layout).
    pub embedder: Section<EmbedCase>,
    /// CLS pooling, Normalize (bge-m3's dense vectors).
    pub cls_embedder: Section<EmbedCase>,
}

pub fn reference() -> &'static Reference {
    static R: OnceLock<Reference> = OnceLock::new();
    R.get_or_init(|| serde_json::from_str(&std::fs::read_to_string(REFERENCE).unwrap()).unwrap())
}

/// The model directories, written once: (reranker, embedder, cls_embedder).
pub fn model_dirs() -> &'static (PathBuf, PathBuf, PathBuf) {
    static DIRS: OnceLock<(PathBuf, PathBuf, PathBuf)> = OnceLock::new();
    DIRS.get_or_init(|| {
        let r = reference();
        assert_eq!(
            sha256_hex(Path::new(TOKENIZER)),
            r.tokenizer_sha256,
            "tests/data/tiny_xlmr_tokenizer.json is not the tokenizer the reference was made with"
        );
        let mut h = 0xCBF2_9CE4_8422_2325u64;
        for b in std::fs::read(REFERENCE)
            .unwrap()
            .into_iter()
            .chain(std::fs::read(TOKENIZER).unwrap())
        {
            h = (h ^ b as u64).wrapping_mul(0x0100_0000_01B3);
        }
        let root = std::env::temp_dir().join(format!("zerobatch-xlmr-{h:016x}"));
        let write = |name: &str, section: &dyn SectionFiles| {
            let dir = root.join(name);
            if !dir.join("model.safetensors").is_file() {
                let tmp = root.join(format!(".{name}-{}", std::process::id()));
                let _ = std::fs::remove_dir_all(&tmp);
                section.write(&tmp);
                std::fs::copy(TOKENIZER, tmp.join("tokenizer.json")).unwrap();
                // Another test binary may have put it there first: then its copy is used.
                if std::fs::rename(&tmp, &dir).is_err() {
                    let _ = std::fs::remove_dir_all(&tmp);
                }
            }
            dir
        };
        (
            write("reranker", &r.reranker),
            write("embedder", &r.embedder),
            write("cls_embedder", &r.cls_embedder),
        )
    })
}

/// A section's files and weights, whatever its cases.
trait SectionFiles {
    fn write(&self, dir: &Path);
}

impl<C> SectionFiles for Section<C> {
    fn write(&self, dir: &Path) {
        write_files_and_weights(dir, &self.files, &self.tensors, &self.weight_fnv1a64);
    }
}
