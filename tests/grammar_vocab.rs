//! The token trie the grammar engine (llguidance) masks with, built from the model's own
//! tokenizer (src/generate/grammar/vocab.rs): for a byte-level BPE (the tiny Qwen GGUF's
//! trained vocabulary) and a SentencePiece BPE with byte fallback (the 1,000-piece vocabulary
//! of tests/data/spm_tokenizer_reference.json), the trie's bytes of a text's ids are exactly
//! the text the client is sent, special tokens are marked special, the end tokens are the
//! trie's EOS set, and padding ids past the vocabulary can never be allowed.

use std::path::{Path, PathBuf};

use candle_core::quantized::gguf_file::{self, Value};
use zerobatch::generate::gguf::GgufFile;
use zerobatch::generate::grammar::vocab::{tok_env, token_words};
use zerobatch::generate::tokenizer::{DecoderKind, GenTokenizer};

const TEXTS: &[&str] = &[
    "{\"name\": \"Ada\", \"age\": 36, \"tags\": [\"x\", \"y\"]}",
    " leading space\nand a newline\ttab  two spaces",
    "héllo wörld € 😀 ∑ 日本語",
    "\u{1}\u{7f} control bytes",
];

fn qwen_tokenizer() -> GenTokenizer {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/gguf/tiny-qwen2-f32.gguf");
    GenTokenizer::from_gguf(&GgufFile::open(&path).unwrap()).unwrap()
}

/// The SentencePiece vocabulary of tests/spm_tokenizer.rs as a tensor-less GGUF file.
fn spm_tokenizer() -> GenTokenizer {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/data/spm_tokenizer_reference.json"
    );
    let r: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let v = &r["vocab"];
    let strings = |k: &str| -> Vec<Value> {
        v[k].as_array()
            .unwrap()
            .iter()
            .map(|s| Value::String(s.as_str().unwrap().into()))
            .collect()
    };
    let u32_of = |k: &str| Value::U32(v[k].as_u64().unwrap() as u32);
    let mut meta: Vec<(String, Value)> = vec![
        (
            "tokenizer.ggml.tokens".into(),
            Value::Array(strings("tokens")),
        ),
        (
            "tokenizer.ggml.scores".into(),
            Value::Array(
                v["scores"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|s| Value::F32(s.as_f64().unwrap() as f32))
                    .collect(),
            ),
        ),
        (
            "tokenizer.ggml.token_type".into(),
            Value::Array(
                v["token_type"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|s| Value::I32(s.as_i64().unwrap() as i32))
                    .collect(),
            ),
        ),
        ("tokenizer.ggml.bos_token_id".into(), u32_of("bos_token_id")),
        ("tokenizer.ggml.eos_token_id".into(), u32_of("eos_token_id")),
        (
            "tokenizer.ggml.unknown_token_id".into(),
            u32_of("unk_token_id"),
        ),
        (
            "tokenizer.ggml.add_bos_token".into(),
            Value::Bool(v["add_bos_token"].as_bool().unwrap()),
        ),
        (
            "tokenizer.ggml.add_space_prefix".into(),
            Value::Bool(v["add_space_prefix"].as_bool().unwrap()),
        ),
    ];
    for key in [
        "general.architecture",
        "tokenizer.ggml.model",
        "tokenizer.ggml.pre",
    ] {
        meta.push((
            key.into(),
            Value::String(r["gguf_kv"][key].as_str().unwrap().into()),
        ));
    }
    let file: PathBuf =
        std::env::temp_dir().join(format!("zb-grammar-spm-{}.gguf", std::process::id()));
    let refs: Vec<(&str, &Value)> = meta.iter().map(|(k, v)| (k.as_str(), v)).collect();
    gguf_file::write(&mut std::fs::File::create(&file).unwrap(), &refs, &[]).unwrap();
    let t = GenTokenizer::from_gguf(&GgufFile::open(&file).unwrap()).unwrap();
    let _ = std::fs::remove_file(&file);
    t
}

/// The trie's bytes of each text's ids are the decoded text, byte for byte; special tokens
/// and the end tokens are marked.
fn check(t: &GenTokenizer, vocab: usize) {
    let env = tok_env(t, vocab).unwrap();
    let trie = env.tok_trie();
    assert_eq!(trie.vocab_size(), vocab);
    for text in TEXTS {
        let ids = t.encode(text, false).unwrap();
        let bytes = trie.decode_raw(&ids);
        let decoded = t.decode(&ids);
        assert_eq!(bytes, decoded.as_bytes(), "{text:?} as {ids:?}");
        assert_eq!(decoded.trim_start(), text.trim_start());
        // Every id's bytes, one at a time, give the same text (the mask's view of a token).
        let joined: Vec<u8> = ids.iter().flat_map(|&id| trie.token(id).to_vec()).collect();
        assert_eq!(joined, bytes);
    }
    let ends = t.end_ids();
    assert!(!ends.is_empty());
    for &id in &ends {
        assert!(trie.is_special_token(id), "end token {id} is special");
        assert!(trie.eos_tokens().contains(&id), "end token {id} is EOS");
    }
    for id in 0..t.vocab_size() as u32 {
        if t.is_special(id) {
            assert!(trie.is_special_token(id), "{id} is special");
        }
    }
    for id in t.vocab_size()..vocab {
        assert!(
            trie.token(id as u32).is_empty(),
            "padding id {id} has no bytes"
        );
    }
}

#[test]
fn byte_level_bpe_vocabulary_round_trips_through_the_trie() {
    let t = qwen_tokenizer();
    assert_eq!(t.decoder_kind(), DecoderKind::ByteLevel);
    check(&t, t.vocab_size());
    check(&t, t.vocab_size() + 7);
    // Every one of the 256 bytes is some token's whole spelling (byte-level BPE's base).
    let words = token_words(&t, t.vocab_size());
    for b in 0..=255u8 {
        assert!(
            words.iter().any(|w| w.as_slice() == [b]),
            "byte {b:#x} has a token"
        );
    }
}

#[test]
fn sentencepiece_vocabulary_round_trips_through_the_trie() {
    let t = spm_tokenizer();
    assert_eq!(t.decoder_kind(), DecoderKind::SentencePiece);
    check(&t, t.vocab_size());
    // Byte-fallback tokens are single bytes, ▁ is a space.
    let words = token_words(&t, t.vocab_size());
    let byte_tokens = (0..t.vocab_size() as u32)
        .filter(|&id| {
            t.token_text(id)
                .is_some_and(|s| s.len() == 6 && s.starts_with("<0x"))
        })
        .count();
    assert!(byte_tokens >= 256 - 10, "{byte_tokens} byte tokens");
    assert!(words
        .iter()
        .all(|w| !w.windows(3).any(|x| x == "▁".as_bytes())));
}
