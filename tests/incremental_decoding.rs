//! Streaming generated text: the incremental decoder gives, step for step, the pieces of the
//! algorithm it replaced (which decoded every held-back id again at each step), on random id
//! streams full of the ids that add no text (end-of-text, control tokens) or split a
//! character (byte tokens, invalid byte runs), for both GGUF tokenizer kinds; and a long run
//! of such ids costs each step a constant, not the length of the run.
//!
//! The vocabularies are small GGUF files written here: every byte, some multi-byte pieces,
//! pieces that are themselves U+FFFD, control tokens.

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use candle_core::quantized::gguf_file::Value;
use common::decoding::{assert_same_pieces, byte_chars, random_streams};
use zerobatch::generate::gguf::GgufFile;
use zerobatch::generate::incremental::IncrementalDecoder;
use zerobatch::generate::tokenizer::GenTokenizer;

fn strings(v: &[String]) -> Value {
    Value::Array(v.iter().cloned().map(Value::String).collect())
}

fn ints(v: &[i32]) -> Value {
    Value::Array(v.iter().copied().map(Value::I32).collect())
}

fn build(name: &str, metadata: Vec<(&str, Value)>) -> GenTokenizer {
    // Tests run at once: each file its own name.
    static FILES: AtomicUsize = AtomicUsize::new(0);
    let path = std::env::temp_dir().join(format!(
        "zb-incremental-{}-{name}-{}.gguf",
        std::process::id(),
        FILES.fetch_add(1, Ordering::Relaxed)
    ));
    let metadata: Vec<(String, Value)> = metadata
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
    common::gguf::write(&path, &metadata, &[]);
    let tokenizer = GenTokenizer::from_gguf(&GgufFile::open(&path).unwrap()).unwrap();
    std::fs::remove_file(&path).unwrap();
    tokenizer
}

/// A byte-level BPE vocabulary: the 256 byte characters (id = byte), then `Ġthe` (256), `€`
/// (3 bytes, 257), the bytes of U+FFFD (258), the first two bytes of `€` (259), `a b` (260,
/// user-defined: its space is no byte character, so its own UTF-8 is decoded), then
/// `<|endoftext|>` (261, EOS) and `<|im_end|>` (262), control tokens. Returns the tokenizer
/// and the ids to favour.
fn byte_level() -> (GenTokenizer, Vec<u32>) {
    let chars = byte_chars();
    let mut tokens: Vec<String> = chars.iter().map(|c| c.to_string()).collect();
    let spell = |bytes: &[u8]| bytes.iter().map(|&b| chars[b as usize]).collect::<String>();
    tokens.push(spell(b" the"));
    tokens.push(spell("€".as_bytes()));
    tokens.push(spell("\u{FFFD}".as_bytes()));
    tokens.push(spell(&"€".as_bytes()[..2]));
    tokens.extend(["a b", "<|endoftext|>", "<|im_end|>"].map(String::from));
    let mut types = vec![1; tokens.len()];
    types[260] = 4;
    types[261] = 3;
    types[262] = 3;
    let tok = build(
        "byte-level",
        vec![
            ("tokenizer.ggml.model", Value::String("gpt2".into())),
            ("tokenizer.ggml.pre", Value::String("default".into())),
            ("tokenizer.ggml.tokens", strings(&tokens)),
            ("tokenizer.ggml.merges", strings(&[])),
            ("tokenizer.ggml.token_type", ints(&types)),
            ("tokenizer.ggml.eos_token_id", Value::U32(261)),
        ],
    );
    // Ends, lead and continuation bytes, U+FFFD itself, half a character, the user-defined
    // token, an id past the vocabulary.
    let favoured = vec![
        261, 262, 0xE2, 0x82, 0xAC, 0x80, 0xF0, 0x9F, 258, 259, 260, 300,
    ];
    (tok, favoured)
}

/// A SentencePiece vocabulary with byte fallback: `<unk>`, `<s>`, `</s>`, the 256 byte
/// tokens, then `▁`, letters, `▁a`, `ab`, `€`, `\u{FFFD}`, `<0x+1>` (which the byte decoder
/// also reads as a byte). Returns the tokenizer and the favoured ids.
fn sentencepiece() -> (GenTokenizer, Vec<u32>) {
    let mut tokens: Vec<String> = ["<unk>", "<s>", "</s>"].map(String::from).to_vec();
    tokens.extend((0..=255u8).map(|b| format!("<0x{b:02X}>")));
    tokens.extend(
        [
            "\u{2581}",
            "a",
            "b",
            "\u{2581}a",
            "ab",
            "€",
            "\u{FFFD}",
            "<0x+1>",
        ]
        .map(String::from),
    );
    let n = tokens.len();
    let mut types = vec![1; n];
    types[0] = 2;
    types[1] = 3;
    types[2] = 3;
    for t in &mut types[3..259] {
        *t = 6;
    }
    let scores: Vec<Value> = (0..n).map(|i| Value::F32(-(i as f32))).collect();
    let tok = build(
        "sentencepiece",
        vec![
            ("tokenizer.ggml.model", Value::String("llama".into())),
            ("tokenizer.ggml.tokens", strings(&tokens)),
            ("tokenizer.ggml.scores", Value::Array(scores)),
            ("tokenizer.ggml.token_type", ints(&types)),
            ("tokenizer.ggml.bos_token_id", Value::U32(1)),
            ("tokenizer.ggml.eos_token_id", Value::U32(2)),
            ("tokenizer.ggml.unknown_token_id", Value::U32(0)),
        ],
    );
    let byte = |b: u32| 3 + b;
    let favoured = vec![
        0,
        1,
        2,
        byte(0xE2),
        byte(0x82),
        byte(0xAC),
        byte(0x80),
        byte(0xF0),
        byte(0x41),
        n as u32 - 3,
        n as u32 - 2,
        n as u32 - 1,
        n as u32 + 5,
    ];
    (tok, favoured)
}

#[test]
fn pieces_equal_the_redecoding_reference_on_random_streams() {
    for (seed, (tok, favoured)) in [(0x9E37, byte_level()), (0x7F4A, sentencepiece())] {
        // Two ids past the vocabulary: decoding drops them.
        let vocab = tok.vocab_size() + 2;
        for ids in random_streams(vocab, &favoured, seed, 3_000, 40) {
            assert_same_pieces(&tok, &ids);
        }
    }
}

/// Pushes `ids`, on a thread; their text, and how long it took, if within `limit`.
fn stream_within(tok: GenTokenizer, ids: Vec<u32>, limit: Duration) -> Option<(String, Duration)> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let t = Instant::now();
        let mut decoder = IncrementalDecoder::new();
        let text: String = ids.iter().map(|&id| decoder.push(&tok, id)).collect();
        let _ = tx.send((text, t.elapsed()));
    });
    rx.recv_timeout(limit).ok()
}

#[test]
fn long_runs_of_ids_that_add_no_text_cost_a_constant_per_step() {
    // 100,000 end-of-text ids (generation with ignore_eos), then 100,000 continuation bytes
    // that never make a character: the old decoder decoded the whole run again at every step,
    // ~10^10 ids in all. The bound is what a hang looks like, not a speed claim.
    const RUN: usize = 100_000;
    const LIMIT: Duration = Duration::from_secs(10);
    let (tok, _) = byte_level();
    let eot = 261;
    // Byte-level ids are the bytes' own values.
    let mut ids = vec![b'a' as u32];
    ids.extend(std::iter::repeat_n(eot, RUN));
    ids.extend(std::iter::repeat_n(0x80, RUN));
    ids.push(b'b' as u32);
    let (text, took) = stream_within(tok, ids, LIMIT).expect("the stream took longer than 10 s");
    eprintln!("byte-level: {} ids in {took:?}", 2 * RUN + 2);
    assert_eq!(text, format!("a{}b", "\u{FFFD}".repeat(RUN)));

    let (tok, _) = sentencepiece();
    // 260 is `a`, 261 `b`, 2 `</s>`, 3 + 0x80 `<0x80>`.
    let mut ids = vec![260u32];
    ids.extend(std::iter::repeat_n(2, RUN));
    ids.extend(std::iter::repeat_n(3 + 0x80, RUN));
    ids.push(261);
    let (text, took) = stream_within(tok, ids, LIMIT).expect("the stream took longer than 10 s");
    eprintln!("sentencepiece: {} ids in {took:?}", 2 * RUN + 2);
    assert_eq!(text, format!("a{}b", "\u{FFFD}".repeat(RUN)));
}
