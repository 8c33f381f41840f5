//! The SentencePiece tokenizer of a GGUF file (`tokenizer.ggml.model = "llama"`: Llama 2,
//! TinyLlama, Mistral…) as the server builds it, against llama.cpp's own tokenizer on the same
//! vocabulary (tests/data/spm_tokenizer_reference.json, made by scripts/make-spm-reference.py:
//! a 1,000-piece SentencePiece BPE trained for the test, with byte fallback, run through
//! `llama-tokenize`): the space prefix (at the start and after every special token), merges by
//! score, byte fallback for characters outside the vocabulary, BOS, and special tokens written
//! in the text. Decoding gives the text back, whole and streamed.

use std::path::PathBuf;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use candle_core::quantized::gguf_file::{self, Value};
use serde::Deserialize;
use zerobatch::generate::gguf::GgufFile;
use zerobatch::generate::incremental::IncrementalDecoder;
use zerobatch::generate::tokenizer::GenTokenizer;

#[derive(Deserialize)]
struct Reference {
    gguf_kv: serde_json::Map<String, serde_json::Value>,
    vocab: Vocab,
    cases: Vec<Case>,
}

#[derive(Deserialize)]
struct Vocab {
    tokens: Vec<String>,
    scores: Vec<f32>,
    token_type: Vec<i32>,
    bos_token_id: u32,
    eos_token_id: u32,
    unk_token_id: u32,
    add_bos_token: bool,
    add_space_prefix: bool,
}

#[derive(Deserialize)]
struct Case {
    text: String,
    /// llama.cpp's ids, BOS included, special tokens in the text parsed.
    ids: Vec<u32>,
}

fn reference() -> Reference {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/data/spm_tokenizer_reference.json"
    );
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

/// The vocabulary-only GGUF file llama.cpp tokenized with (its metadata; no tensors), as
/// `name` in the temporary directory.
fn write_gguf(r: &Reference, name: &str) -> PathBuf {
    let v = &r.vocab;
    let path = std::env::temp_dir().join(format!("zb-spm-{}-{name}.gguf", std::process::id()));
    let mut meta: Vec<(String, Value)> = vec![
        (
            "tokenizer.ggml.tokens".into(),
            Value::Array(v.tokens.iter().cloned().map(Value::String).collect()),
        ),
        (
            "tokenizer.ggml.scores".into(),
            Value::Array(v.scores.iter().copied().map(Value::F32).collect()),
        ),
        (
            "tokenizer.ggml.token_type".into(),
            Value::Array(v.token_type.iter().copied().map(Value::I32).collect()),
        ),
        (
            "tokenizer.ggml.bos_token_id".into(),
            Value::U32(v.bos_token_id),
        ),
        (
            "tokenizer.ggml.eos_token_id".into(),
            Value::U32(v.eos_token_id),
        ),
        (
            "tokenizer.ggml.unknown_token_id".into(),
            Value::U32(v.unk_token_id),
        ),
        (
            "tokenizer.ggml.add_bos_token".into(),
            Value::Bool(v.add_bos_token),
        ),
        (
            "tokenizer.ggml.add_space_prefix".into(),
            Value::Bool(v.add_space_prefix),
        ),
    ];
    for key in [
        "general.architecture",
        "tokenizer.ggml.model",
        "tokenizer.ggml.pre",
    ] {
        let value = r.gguf_kv[key].as_str().unwrap().to_string();
        meta.push((key.into(), Value::String(value)));
    }
    let refs: Vec<(&str, &Value)> = meta.iter().map(|(k, v)| (k.as_str(), v)).collect();
    gguf_file::write(&mut std::fs::File::create(&path).unwrap(), &refs, &[]).unwrap();
    path
}

#[test]
fn sentencepiece_gguf_tokenizer_gives_llama_cpp_ids_and_decodes_back() {
    let r = reference();
    assert!(r.cases.len() >= 20);
    let path = write_gguf(&r, "reference");
    let file = GgufFile::open(&path).unwrap();
    let tok = GenTokenizer::from_gguf(&file).unwrap();
    std::fs::remove_file(&path).unwrap();
    assert_eq!(tok.vocab_size(), r.vocab.tokens.len());
    assert!(tok.is_end(r.vocab.eos_token_id));
    let mut failures = Vec::new();
    for case in &r.cases {
        let ids = tok.encode(&case.text, true).unwrap();
        if ids != case.ids {
            failures.push(format!("{:?}: got {ids:?}, want {:?}", case.text, case.ids));
            continue;
        }
        // Without special tokens written in it, the text comes back after the space prefix
        // (a `▁` written in the text is a space to SentencePiece: it comes back as one).
        let has_special = ["<s>", "</s>", "<unk>"]
            .iter()
            .any(|s| case.text.contains(s));
        if has_special || case.text.is_empty() || case.text.contains('\u{2581}') {
            continue;
        }
        let want = format!(" {}", case.text);
        assert_eq!(tok.decode(&ids), want, "decoding {:?}", case.text);
        let mut stream = IncrementalDecoder::new();
        let streamed: String = ids.iter().map(|&id| stream.push(&tok, id)).collect();
        assert_eq!(streamed, want, "streaming {:?}", case.text);
    }
    assert!(
        failures.is_empty(),
        "{} of {} strings differ from llama.cpp:\n{}",
        failures.len(),
        r.cases.len(),
        failures.join("\n")
    );
}

#[test]
fn a_two_mib_piece_does_not_hold_the_load() {
    // The merges used to be found by hashing both halves of every split of every piece: for
    // one 2 MiB piece, 2 Mi splits of 2 MiB each, minutes to hours of work. The bound below
    // is what a hang looks like, not a speed claim: the build takes milliseconds.
    const LIMIT: Duration = Duration::from_secs(10);
    let mut r = reference();
    r.vocab
        .tokens
        .push(format!("\u{2581}{}", "ab".repeat(1 << 20)));
    r.vocab.scores.push(-1e6);
    r.vocab.token_type.push(1);
    let path = write_gguf(&r, "long-piece");
    let (tx, rx) = mpsc::channel();
    let built = path.clone();
    std::thread::spawn(move || {
        let t = Instant::now();
        let file = GgufFile::open(&built).unwrap();
        let _ = tx.send((GenTokenizer::from_gguf(&file).unwrap(), t.elapsed()));
    });
    let (tok, took) = rx
        .recv_timeout(LIMIT)
        .unwrap_or_else(|_| panic!("building the tokenizer took more than {LIMIT:?}"));
    std::fs::remove_file(&path).unwrap();
    eprintln!("built a tokenizer with a 2 MiB piece in {took:?}");
    // The long piece changes nothing for the reference texts.
    for case in &r.cases {
        assert_eq!(
            tok.encode(&case.text, true).unwrap(),
            case.ids,
            "{:?}",
            case.text
        );
    }
}
