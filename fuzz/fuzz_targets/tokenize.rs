//! The tokenizer path: `TextTokenizer::encode` (both `truncate` values) and `tokens` (with and
//! without special tokens) on arbitrary text, with maximum lengths of a few tokens so that
//! truncation and the too-long refusal are hit by most inputs.
//!
//! Input: byte 0 picks the maximum length (bits 0–1), byte 1 is a repeat count; the rest is
//! split at its first 0xFF byte (never valid UTF-8) into a head, repeated that many times (up
//! to 16 KiB), and a tail, each decoded lossily as UTF-8. So short inputs make long texts:
//! thousands of words, or a long run of spaces or of one unbroken word followed by more text.
//!
//! Invariants: never panics; the `whole` tokenizer (`tokens` with special tokens) is the
//! reference: `encode` without truncation returns exactly its ids when they fit and `TooLong`
//! when they do not; with truncation it returns them, or their first `max_len - 1` followed by
//! the final `[SEP]`; `tokens` without special tokens is the reference less `[CLS]`/`[SEP]`;
//! offsets lie inside the text on character boundaries.
//!
//! The tokenizer is the tiny model's WordPiece tokenizer, written at start-up; set
//! `ZB_FUZZ_TOKENIZER=/path/to/tokenizer.json` to fuzz another BERT tokenizer.

#![no_main]

use std::borrow::Cow;
use std::path::PathBuf;
use std::sync::LazyLock;

use libfuzzer_sys::fuzz_target;
use zerobatch::model::tiny::TinySpec;
use zerobatch::model::{TextTokenizer, TokenizeError};

/// Maximum lengths (special tokens included) the input chooses from.
const MAX_LENS: [usize; 4] = [12, 8, 16, 4];
/// Longest text the repeat count builds.
const MAX_TEXT: usize = 16 * 1024;

static TOKENIZERS: LazyLock<Vec<TextTokenizer>> = LazyLock::new(|| {
    let path = match std::env::var_os("ZB_FUZZ_TOKENIZER") {
        Some(p) => PathBuf::from(p),
        None => zerobatch_fuzz::tiny_model("tok", &TinySpec::default()).join("tokenizer.json"),
    };
    MAX_LENS
        .iter()
        .map(|&n| TextTokenizer::load(&path, n).expect("loading the tokenizer"))
        .collect()
});

fn text_of(data: &[u8]) -> String {
    let reps = usize::from(data.get(1).copied().unwrap_or(1)).max(1);
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
        reps.min(MAX_TEXT / head.len()).max(1)
    };
    let mut text = head.repeat(reps);
    text.push_str(&tail);
    text
}

fn variant(r: &Result<Vec<u32>, TokenizeError>) -> Cow<'static, str> {
    match r {
        Ok(_) => "Ok".into(),
        Err(TokenizeError::TooLong { max, .. }) => format!("TooLong(max {max})").into(),
        Err(TokenizeError::Failed { .. }) => "Failed".into(),
    }
}

fuzz_target!(|data: &[u8]| {
    let Some(&selector) = data.first() else {
        return;
    };
    let tokenizer = &TOKENIZERS[usize::from(selector & 3)];
    let max_len = tokenizer.max_len();
    let text = text_of(data);

    let cut = tokenizer.encode(0, &text, true);
    let whole = tokenizer.encode(0, &text, false);
    let with_special = tokenizer.tokens(0, &text, true);
    let plain = tokenizer.tokens(0, &text, false);

    let (Ok(with_special), Ok(plain)) = (with_special, plain) else {
        // The tokenizer refusing the text is allowed; then encode must refuse it too.
        assert!(
            matches!(cut, Err(TokenizeError::Failed { .. }))
                && matches!(whole, Err(TokenizeError::Failed { .. })),
            "tokens failed but encode gave {} / {}",
            variant(&cut),
            variant(&whole)
        );
        return;
    };
    for t in with_special.iter().chain(&plain) {
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
    let reference: Vec<u32> = with_special.iter().map(|t| t.id).collect();
    let plain: Vec<u32> = plain.iter().map(|t| t.id).collect();
    assert!(reference.len() >= 2, "no [CLS]/[SEP] in {reference:?}");
    assert_eq!(
        plain,
        reference[1..reference.len() - 1],
        "tokens without special tokens is not the reference less [CLS]/[SEP]"
    );

    if reference.len() <= max_len {
        assert_eq!(
            whole.as_deref().ok(),
            Some(&reference[..]),
            "encode(truncate: false) of a fitting text: {}",
            variant(&whole)
        );
        assert_eq!(
            cut.as_deref().ok(),
            Some(&reference[..]),
            "encode(truncate: true) of a fitting text: {}",
            variant(&cut)
        );
    } else {
        assert!(
            matches!(whole, Err(TokenizeError::TooLong { max, .. }) if max == max_len),
            "encode(truncate: false) of {} tokens with max {max_len}: {}",
            reference.len(),
            variant(&whole)
        );
        let mut expected = reference[..max_len - 1].to_vec();
        expected.push(reference[reference.len() - 1]);
        assert_eq!(
            cut.as_deref().ok(),
            Some(&expected[..]),
            "encode(truncate: true) of {} tokens with max {max_len}: {}",
            reference.len(),
            variant(&cut)
        );
    }
});
