//! The tokenizer path: `TextTokenizer::encode` and `tokens` on arbitrary text, with maximum
//! lengths of a few tokens so that truncation and the too-long refusal are hit by most inputs,
//! and texts long enough (over 4 KiB) for `encode`'s bounded prefix-at-a-time path.
//!
//! Input: byte 0 picks the maximum length (bits 0–1) and the check (bits 2–4: `encode` with
//! or without truncation, or `tokens` with one of the four option pairs), byte 1 is a repeat
//! count `r`; the rest is split at its first 0xFF byte (never valid UTF-8) into a head,
//! repeated `r²` times (up to 20 KiB of text: past the bounded path's first two prefixes),
//! and a tail, each decoded lossily as UTF-8. So short inputs make long texts: thousands of
//! words, a long run of spaces or of one unbroken word, then more text.
//!
//! Invariants: never panics, and (each run checks one)
//! - `encode(text, truncate)` equals `encode_unbounded(text, truncate)` (the whole text
//!   tokenized first) for both `truncate` values: the same ids, or the same error variant
//!   (`TooLong` with the same maximum) — the bounded path changes the cost, never the answer;
//! - `tokens(text, add_special_tokens, truncate)`, for all four combinations, equals what the
//!   `tokenizers` crate gives for the same tokenizer.json and maximum length (ids, token
//!   strings, offsets, special flags; `TooLong` exactly when the untruncated encoding is
//!   longer than the maximum), and its ids are `encode`'s when special tokens are added;
//! - ids are 1..=max_len long; `TooLong` reports more tokens than the maximum; offsets lie
//!   inside the text, on character boundaries.
//!
//! The tokenizer is the tiny model's WordPiece tokenizer (BERT normalizer and pre-tokenizer),
//! written at start-up; `ZB_FUZZ_TOKENIZER=/path/to/tokenizer.json` fuzzes another.

#![no_main]

use std::path::PathBuf;
use std::sync::LazyLock;

use libfuzzer_sys::fuzz_target;
use tokenizers::{Tokenizer, TruncationDirection, TruncationParams, TruncationStrategy};
use zerobatch::model::tiny::TinySpec;
use zerobatch::model::{TextTokenizer, TokenInfo, TokenizeError};

/// Maximum lengths (special tokens included) the input chooses from.
const MAX_LENS: [usize; 4] = [12, 8, 16, 3];
/// Longest text the repeat count builds.
const MAX_TEXT: usize = 20 * 1024;

/// The tokenizer under test and the `tokenizers` crate's own, for one maximum length.
struct Pair {
    ours: TextTokenizer,
    whole: Tokenizer,
    truncating: Tokenizer,
}

static PAIRS: LazyLock<Vec<Pair>> = LazyLock::new(|| {
    let (path, ours_only) = match std::env::var_os("ZB_FUZZ_TOKENIZER") {
        Some(p) => (PathBuf::from(p), true),
        None => (
            zerobatch_fuzz::tiny_model("tok", &TinySpec::default()).join("tokenizer.json"),
            false,
        ),
    };
    MAX_LENS
        .iter()
        .map(|&max_len| {
            let ours = TextTokenizer::load(&path, max_len).expect("loading the tokenizer");
            // The tiny tokenizer must take the bounded path, or this target would not test it.
            assert!(
                ours_only || ours.bounded(),
                "the tiny tokenizer is not prefix-safe"
            );
            let mut whole = Tokenizer::from_file(&path).expect("loading the tokenizer");
            whole.with_padding(None);
            whole.with_truncation(None).expect("no truncation");
            let mut truncating = whole.clone();
            truncating
                .with_truncation(Some(TruncationParams {
                    max_length: max_len,
                    strategy: TruncationStrategy::LongestFirst,
                    stride: 0,
                    direction: TruncationDirection::Right,
                }))
                .expect("truncation");
            Pair {
                ours,
                whole,
                truncating,
            }
        })
        .collect()
});

fn text_of(data: &[u8]) -> String {
    let r = usize::from(data.get(1).copied().unwrap_or(1));
    let rest = data.get(2..).unwrap_or_default();
    let (head, tail) = match rest.iter().position(|&b| b == 0xFF) {
        Some(i) => (&rest[..i], &rest[i + 1..]),
        None => (rest, &[][..]),
    };
    let head = String::from_utf8_lossy(head);
    let tail = String::from_utf8_lossy(tail);
    let reps = if head.is_empty() {
        1
    } else {
        (r * r).clamp(1, (MAX_TEXT / head.len()).max(1))
    };
    let mut text = head.repeat(reps);
    text.push_str(&tail);
    text
}

/// The outcome without the parts that may differ: `TooLong`'s count is a lower bound on the
/// bounded path, and `Failed`'s reason is the tokenizer's message.
#[derive(Debug, PartialEq)]
enum Outcome<T> {
    Ok(T),
    TooLong { max: usize },
    Failed,
}

fn outcome<T>(r: Result<T, TokenizeError>, max_len: usize) -> Outcome<T> {
    match r {
        Ok(v) => Outcome::Ok(v),
        Err(TokenizeError::TooLong { tokens, max, .. }) => {
            assert!(tokens > max, "TooLong with {tokens} tokens, max {max}");
            assert_eq!(max, max_len, "TooLong with the wrong maximum");
            Outcome::TooLong { max }
        }
        Err(TokenizeError::Failed { .. }) => Outcome::Failed,
    }
}

/// What `tokens` should give, from the `tokenizers` crate alone.
fn reference_tokens(
    pair: &Pair,
    max_len: usize,
    text: &str,
    add_special_tokens: bool,
    truncate: bool,
) -> Outcome<Vec<TokenInfo>> {
    let tokenizer = if truncate {
        &pair.truncating
    } else {
        &pair.whole
    };
    let Ok(e) = tokenizer.encode(text, add_special_tokens) else {
        return Outcome::Failed;
    };
    if !truncate && e.len() > max_len {
        return Outcome::TooLong { max: max_len };
    }
    Outcome::Ok(
        e.get_ids()
            .iter()
            .zip(e.get_tokens())
            .zip(e.get_offsets())
            .zip(e.get_special_tokens_mask())
            .map(|(((&id, token), &(start, stop)), &special)| TokenInfo {
                id,
                text: token.clone(),
                special: special == 1,
                start,
                stop,
            })
            .collect(),
    )
}

fuzz_target!(|data: &[u8]| {
    let Some(&selector) = data.first() else {
        return;
    };
    let pair = &PAIRS[usize::from(selector & 3)];
    let text = text_of(data);
    // One check per run (a long text costs milliseconds to tokenize under the fuzzer's
    // instrumentation): bits 2-4 pick it.
    match (selector >> 2) & 7 {
        0 | 6 => check_encode(pair, &text, true),
        1 | 7 => check_encode(pair, &text, false),
        n => check_tokens(pair, &text, n & 1 == 0, n & 2 == 0),
    }
});

/// The bounded `encode` against the reference `encode_unbounded`.
fn check_encode(pair: &Pair, text: &str, truncate: bool) {
    let max_len = pair.ours.max_len();
    let bounded = outcome(pair.ours.encode(0, text, truncate), max_len);
    let unbounded = outcome(pair.ours.encode_unbounded(0, text, truncate), max_len);
    assert_eq!(
        bounded,
        unbounded,
        "encode differs from encode_unbounded (truncate: {truncate}, max_len {max_len}, {} bytes)",
        text.len()
    );
    if let Outcome::Ok(ids) = &bounded {
        assert!(
            (1..=max_len).contains(&ids.len()),
            "{} ids with max_len {max_len}",
            ids.len()
        );
    }
}

/// `tokens` against the `tokenizers` crate, and against `encode` when special tokens are added.
fn check_tokens(pair: &Pair, text: &str, add_special: bool, truncate: bool) {
    let max_len = pair.ours.max_len();
    let got = outcome(pair.ours.tokens(0, text, add_special, truncate), max_len);
    if let Outcome::Ok(tokens) = &got {
        for t in tokens {
            assert!(
                t.start <= t.stop && t.stop <= text.len(),
                "offsets {}..{} outside a text of {} bytes",
                t.start,
                t.stop,
                text.len()
            );
            assert!(
                text.is_char_boundary(t.start) && text.is_char_boundary(t.stop),
                "offsets {}..{} not on character boundaries",
                t.start,
                t.stop
            );
        }
    }
    let expected = reference_tokens(pair, max_len, text, add_special, truncate);
    assert_eq!(
        got,
        expected,
        "tokens differs from the tokenizers crate (add_special_tokens: {add_special}, truncate: {truncate}, max_len {max_len}, {} bytes)",
        text.len()
    );
    if add_special {
        // /tokenize shows the tokens /embed embeds.
        let ids = match got {
            Outcome::Ok(tokens) => Outcome::Ok(tokens.iter().map(|t| t.id).collect()),
            Outcome::TooLong { max } => Outcome::TooLong { max },
            Outcome::Failed => Outcome::Failed,
        };
        let encoded = outcome(pair.ours.encode(0, text, truncate), max_len);
        assert_eq!(
            ids, encoded,
            "tokens and encode disagree (truncate: {truncate})"
        );
    }
}
