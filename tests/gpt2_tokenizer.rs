//! GPT-2's real tokenizer (byte-level BPE from OpenAI's `vocab.json` and `merges.txt`, fetched
//! by scripts/fetch-gpt2-tokenizer.sh) as the server builds it for a GPT-2 checkpoint, against
//! the reference ids in tests/data/gpt2_tokenizer_reference.json (transformers' tokenizer,
//! cross-checked by scripts/make-gpt2-reference.py with OpenAI's encoder and the old
//! pure-Python one): unicode, code, whitespace runs, digits, contractions and the special
//! `<|endoftext|>` token written in the text. Decoding gives the text back, also piece by
//! piece as a stream does.

use std::path::PathBuf;

use serde::Deserialize;
use zerobatch::generate::incremental::IncrementalDecoder;
use zerobatch::generate::tokenizer::{GenTokenizer, HfTokenizerFiles};

#[derive(Deserialize)]
struct Reference {
    endoftext_id: u32,
    vocab_size: usize,
    strings: Vec<Case>,
}

#[derive(Deserialize)]
struct Case {
    text: String,
    ids: Vec<u32>,
}

fn tokenizer_dir() -> PathBuf {
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

fn reference() -> Reference {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/data/gpt2_tokenizer_reference.json"
    );
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

#[test]
fn gpt2_tokenizer_gives_the_reference_ids_and_decodes_back() {
    let r = reference();
    assert!(r.strings.len() >= 20);
    let dir = tokenizer_dir();
    let (vocab, merges) = (dir.join("vocab.json"), dir.join("merges.txt"));
    let eos = r.endoftext_id;
    let tok = GenTokenizer::from_hf(
        HfTokenizerFiles::VocabMerges {
            vocab: &vocab,
            merges: &merges,
        },
        Some(eos),
        &[eos],
    )
    .unwrap();
    assert_eq!(tok.vocab_size(), r.vocab_size);
    assert!(tok.is_end(eos) && tok.is_special(eos));
    let mut failures = Vec::new();
    for case in &r.strings {
        let ids = tok.encode(&case.text, true).unwrap();
        if ids != case.ids {
            failures.push(format!("{:?}: got {ids:?}, want {:?}", case.text, case.ids));
            continue;
        }
        // Decoding leaves special tokens out; everything else comes back byte for byte,
        // whole and streamed.
        let want = case.text.replace("<|endoftext|>", "");
        assert_eq!(tok.decode(&ids), want, "decoding {:?}", case.text);
        let mut stream = IncrementalDecoder::new();
        let streamed: String = ids.iter().map(|&id| stream.push(&tok, id)).collect();
        assert_eq!(streamed, want, "streaming {:?}", case.text);
    }
    assert!(
        failures.is_empty(),
        "{} of {} strings differ:\n{}",
        failures.len(),
        r.strings.len(),
        failures.join("\n")
    );
}
