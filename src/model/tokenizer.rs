//! Text → token ids with the model's own `tokenizer.json` (the `tokenizers` crate), truncated
//! at the model's maximum input length exactly as the Python libraries truncate.
//!
//! Runs before a request is queued (on the async threads for short texts, through
//! `crate::offload` for long ones), so a batch reaches the workers as ready-made ids and a bad
//! input is refused before it takes a place in the queue.
//!
//! **Cost bounded by what is kept, not by what was sent.** The `tokenizers` crate truncates
//! only after encoding the whole text: a 2 MB text becomes ~380k tokens with strings and
//! offsets (hundreds of MB) only to keep 256 of them. Here a long text is encoded a prefix at a
//! time: the prefix ends just before a space, its last word is not trusted, and
//! once the trusted tokens are more than the model keeps, the answer is exactly the one the
//! whole text would give (the same ids: `encode_unbounded` is the reference, and the tests and
//! the fuzz target compare the two). This is only sound when tokenization never joins text
//! across whitespace, so the fast path is enabled only for tokenizers whose normalizer and
//! pre-tokenizer are on an allow-list of per-character normalizers and whitespace-splitting
//! pre-tokenizers ([`prefix_safe`]); others encode the whole text (still bounded by the body
//! limit and by the front end's limit on concurrent large tokenizations).

use std::path::Path;

use tokenizers::{Encoding, Tokenizer, TruncationDirection, TruncationParams, TruncationStrategy};

use super::ModelError;

/// Why an input could not be tokenized.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TokenizeError {
    #[error("input {index} has {tokens} tokens or more, over the model's maximum of {max}; send \"truncate\": true to cut it")]
    TooLong {
        index: usize,
        /// Tokens counted before giving up: the input has at least this many.
        tokens: usize,
        max: usize,
    },
    #[error("input {index} could not be tokenized: {reason}")]
    Failed { index: usize, reason: String },
}

/// The ids of a pair of texts, as the model reads them: `[CLS] first [SEP] second [SEP]` for
/// BERT.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PairIds {
    pub ids: Vec<u32>,
    /// The first token of the second text (token type 1).
    pub second_from: usize,
}

/// One token as `/tokenize` reports it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct TokenInfo {
    pub id: u32,
    pub text: String,
    pub special: bool,
    /// Byte offsets of the token in the input (`start..stop`).
    pub start: usize,
    pub stop: usize,
}

/// The model's tokenizer, in a truncating and a non-truncating configuration.
pub struct TextTokenizer {
    truncating: Tokenizer,
    whole: Tokenizer,
    max_len: usize,
    /// Special tokens the post-processor adds to one sequence (`[CLS]` and `[SEP]` for BERT).
    added: usize,
    /// Special tokens it adds to a pair (`[CLS]` and two `[SEP]` for BERT).
    added_pair: usize,
    /// Where a long text may be cut to be encoded a prefix at a time (see the module docs);
    /// `None`: always encode the whole text.
    cuts: Option<Cuts>,
    /// Held while a long text that could not be cut is encoded whole: such an encoding takes
    /// ~70 bytes per byte of text (136 MB for a 1.9 MB word), so only one runs at a time.
    whole_text: parking_lot::Mutex<()>,
}

/// Whole-text encodings of texts longer than this take [`TextTokenizer::whole_text`].
const WHOLE_TEXT_SERIAL_BYTES: usize = 64 * 1024;

/// The first prefix tried for a long text is this many bytes per token kept (English averages
/// 4–5 bytes per token); each retry takes four times more.
const PREFIX_BYTES_PER_TOKEN: usize = 8;
/// Texts up to this many bytes are encoded whole: the prefix machinery would not save anything.
const PREFIX_MIN_BYTES: usize = 4096;

impl TextTokenizer {
    /// Loads `tokenizer.json`; `max_len` counts special tokens, as `max_seq_length` does.
    pub fn load(path: &Path, max_len: usize) -> Result<Self, ModelError> {
        let whole = Tokenizer::from_file(path)
            .map_err(|e| ModelError::Tokenizer(format!("{}: {e}", path.display())))?;
        Self::from_tokenizer(whole, max_len)
            .map_err(|e| ModelError::Tokenizer(format!("{}: {e}", path.display())))
    }

    /// Builds from the JSON text of a `tokenizer.json` (for fuzzing and tests).
    pub fn from_json(json: &[u8], max_len: usize) -> Result<Self, ModelError> {
        let whole =
            Tokenizer::from_bytes(json).map_err(|e| ModelError::Tokenizer(e.to_string()))?;
        Self::from_tokenizer(whole, max_len).map_err(ModelError::Tokenizer)
    }

    fn from_tokenizer(mut whole: Tokenizer, max_len: usize) -> Result<Self, String> {
        whole.with_padding(None);
        whole.with_truncation(None).map_err(|e| e.to_string())?;
        let added = whole
            .get_post_processor()
            .map_or(0, |p| tokenizers::PostProcessor::added_tokens(p, false));
        let added_pair = whole
            .get_post_processor()
            .map_or(0, |p| tokenizers::PostProcessor::added_tokens(p, true));
        if max_len <= added {
            return Err(format!(
                "the maximum input length ({max_len} tokens) leaves no room for text after the {added} special tokens"
            ));
        }
        let mut truncating = whole.clone();
        truncating
            .with_truncation(Some(TruncationParams {
                max_length: max_len,
                strategy: TruncationStrategy::LongestFirst,
                stride: 0,
                direction: TruncationDirection::Right,
            }))
            .map_err(|e| e.to_string())?;
        let cuts = prefix_cuts(&whole);
        Ok(Self {
            truncating,
            whole,
            max_len,
            added,
            added_pair,
            cuts,
            whole_text: parking_lot::Mutex::new(()),
        })
    }

    /// Most tokens per input, special tokens included.
    pub fn max_len(&self) -> usize {
        self.max_len
    }

    /// Whether long texts are encoded a prefix at a time (see the module docs).
    pub fn bounded(&self) -> bool {
        self.cuts.is_some()
    }

    /// Refuses a maximum length that leaves no room for a pair's texts after its special
    /// tokens (a cross-encoder's inputs are pairs).
    pub fn check_pairs_fit(&self) -> Result<(), String> {
        if self.max_len <= self.added_pair {
            return Err(format!(
                "the maximum input length ({} tokens) leaves no room for a pair of texts after the {} special tokens",
                self.max_len, self.added_pair
            ));
        }
        Ok(())
    }

    /// The ids of the pairs (`first`, `seconds[i]`), truncated as a cross-encoder's tokenizer
    /// call truncates them (`longest_first` at the maximum length: the longer text loses a
    /// token until the pair fits), or `TooLong` for pair `i` over the maximum when not
    /// `truncate`. `first` is encoded once, whole; each second text costs what is kept of it
    /// (see the module docs), which gives the same ids as encoding it whole: truncation only
    /// compares lengths with the limit and with the first text's, so any second text longer
    /// than both is cut the same way once it is known to be longer.
    pub fn encode_pairs(
        &self,
        first: &str,
        seconds: &[String],
        truncate: bool,
    ) -> Result<Vec<PairIds>, TokenizeError> {
        let first_raw = self.raw_whole(0, first)?;
        seconds
            .iter()
            .enumerate()
            .map(|(i, second)| self.encode_pair_with(i, &first_raw, second, truncate))
            .collect()
    }

    /// One pair's ids ([`TextTokenizer::encode_pairs`]); `index` labels errors.
    pub fn encode_pair(
        &self,
        index: usize,
        first: &str,
        second: &str,
        truncate: bool,
    ) -> Result<PairIds, TokenizeError> {
        let first_raw = self.raw_whole(index, first)?;
        self.encode_pair_with(index, &first_raw, second, truncate)
    }

    /// [`TextTokenizer::encode_pair`] by encoding both texts whole: the reference the bounded
    /// path is tested against.
    pub fn encode_pair_unbounded(
        &self,
        index: usize,
        first: &str,
        second: &str,
        truncate: bool,
    ) -> Result<PairIds, TokenizeError> {
        self.check_pairs_fit().map_err(|e| failed(index, e))?;
        let encoding = self.encode_within(index, (first, second), truncate)?;
        pair_ids(index, &encoding)
    }

    /// Encodes `input` (a text or a pair) with special tokens, truncated at the model's limit
    /// or whole, and refuses an encoding longer than `max_len` tokens.
    fn encode_within<'s>(
        &self,
        index: usize,
        input: impl Into<tokenizers::EncodeInput<'s>>,
        truncate: bool,
    ) -> Result<Encoding, TokenizeError> {
        let tokenizer = if truncate {
            &self.truncating
        } else {
            &self.whole
        };
        let encoding = tokenizer
            .encode_fast(input, true)
            .map_err(|e| failed(index, e))?;
        if encoding.len() > self.max_len {
            return Err(TokenizeError::TooLong {
                index,
                tokens: encoding.len(),
                max: self.max_len,
            });
        }
        Ok(encoding)
    }

    /// A text's tokens without special tokens, from encoding it whole.
    fn raw_whole(&self, index: usize, text: &str) -> Result<Encoding, TokenizeError> {
        let _one_at_a_time = (text.len() > WHOLE_TEXT_SERIAL_BYTES).then(|| self.whole_text.lock());
        self.whole
            .encode_fast(text, false)
            .map_err(|e| failed(index, e))
    }

    fn encode_pair_with(
        &self,
        index: usize,
        first: &Encoding,
        second: &str,
        truncate: bool,
    ) -> Result<PairIds, TokenizeError> {
        self.check_pairs_fit().map_err(|e| failed(index, e))?;
        // Room for the texts; the second is needed up to one token past both this and the
        // first text's length (then it is known to be the longer, and over the limit).
        let room = self.max_len - self.added_pair;
        let keep = room.max(first.len()) + 1;
        let mut raw = self.raw_bounded(index, second, keep - 1, false)?;
        if raw.len() > keep {
            raw.truncate(keep, 0, TruncationDirection::Right);
            drop(raw.take_overflowing());
        }
        if !truncate && first.len() + raw.len() > room {
            return Err(TokenizeError::TooLong {
                index,
                tokens: first.len() + raw.len() + self.added_pair,
                max: self.max_len,
            });
        }
        let encoding = self
            .truncating
            .post_process(first.clone(), Some(raw), true)
            .map_err(|e| failed(index, e))?;
        pair_ids(index, &encoding)
    }

    /// Token ids of input `index` (the index only labels errors). When `truncate` is false an
    /// input longer than the maximum is an error, not silently cut. Costs what is kept: see
    /// the module docs.
    pub fn encode(
        &self,
        index: usize,
        text: &str,
        truncate: bool,
    ) -> Result<Vec<u32>, TokenizeError> {
        let encoding = self.bounded_encoding(index, text, true, truncate, false)?;
        ids_of(index, &encoding)
    }

    /// [`TextTokenizer::encode`] by encoding the whole text first: the reference the bounded
    /// path is tested (and fuzzed) against.
    pub fn encode_unbounded(
        &self,
        index: usize,
        text: &str,
        truncate: bool,
    ) -> Result<Vec<u32>, TokenizeError> {
        let encoding = self.encode_within(index, text, truncate)?;
        ids_of(index, &encoding)
    }

    /// Tokens of one input with their text and offsets, for `/tokenize`: the tokens the model
    /// would see (cut at the maximum length when `truncate`, else 413 for a longer input).
    pub fn tokens(
        &self,
        index: usize,
        text: &str,
        add_special_tokens: bool,
        truncate: bool,
    ) -> Result<Vec<TokenInfo>, TokenizeError> {
        let encoding = self.bounded_encoding(index, text, add_special_tokens, truncate, true)?;
        let special = encoding.get_special_tokens_mask();
        Ok(encoding
            .get_ids()
            .iter()
            .zip(encoding.get_tokens())
            .zip(encoding.get_offsets())
            .zip(special)
            .map(|(((&id, token), &(start, stop)), &special)| TokenInfo {
                id,
                text: token.clone(),
                special: special == 1,
                start,
                stop,
            })
            .collect())
    }

    /// The encoding of `text` as the truncating tokenizer gives it (or `TooLong` when not
    /// truncating and the text is longer than the maximum), encoding no more of a long text
    /// than the answer needs when the tokenizer allows it.
    fn bounded_encoding(
        &self,
        index: usize,
        text: &str,
        add_special_tokens: bool,
        truncate: bool,
        offsets: bool,
    ) -> Result<Encoding, TokenizeError> {
        // Content tokens the answer keeps.
        let kept = if add_special_tokens {
            self.max_len - self.added
        } else {
            self.max_len
        };
        let raw = self.raw_bounded(index, text, kept, offsets)?;
        if !truncate && raw.len() > kept {
            return Err(TokenizeError::TooLong {
                index,
                tokens: raw.len() + self.max_len - kept,
                max: self.max_len,
            });
        }
        self.truncating
            .post_process(raw, None, add_special_tokens)
            .map_err(|e| failed(index, e))
    }

    /// The tokens of `text` without special tokens: all of them, or, when the text has more
    /// than `kept`, at least its first `kept + 1` exactly (and possibly more, which may differ
    /// from the whole text's), encoding no more of a long text than that needs when the
    /// tokenizer allows it (see the module docs).
    fn raw_bounded(
        &self,
        index: usize,
        text: &str,
        kept: usize,
        offsets: bool,
    ) -> Result<Encoding, TokenizeError> {
        let mut budget = (kept * PREFIX_BYTES_PER_TOKEN).max(PREFIX_MIN_BYTES);
        if let Some(cuts) = self.cuts {
            while budget < text.len() {
                if let Some((cut, trusted_end)) = prefix_cut(text, budget, cuts) {
                    // With byte offsets (`encode_fast` leaves them at 0): they decide which
                    // tokens lie before the last word.
                    let raw = self
                        .whole
                        .encode(&text[..cut], false)
                        .map_err(|e| failed(index, e))?;
                    let trusted = raw
                        .get_offsets()
                        .iter()
                        .take_while(|&&(_, end)| end <= trusted_end)
                        .count();
                    // More trusted tokens than are kept: the whole text starts with the same
                    // tokens, so cutting here gives its answer (and proves it too long).
                    if trusted > kept {
                        return Ok(raw);
                    }
                }
                budget = budget.saturating_mul(4);
            }
        }
        let _one_at_a_time = (text.len() > WHOLE_TEXT_SERIAL_BYTES).then(|| self.whole_text.lock());
        let raw = if offsets {
            self.whole.encode(text, false)
        } else {
            self.whole.encode_fast(text, false)
        };
        raw.map_err(|e| failed(index, e))
    }
}

fn failed(index: usize, e: impl std::fmt::Display) -> TokenizeError {
    TokenizeError::Failed {
        index,
        reason: e.to_string(),
    }
}

/// A pair's ids and where its second text starts: its token types must be 0s then 1s, as
/// BERT's pair template gives them.
fn pair_ids(index: usize, encoding: &Encoding) -> Result<PairIds, TokenizeError> {
    let ids = ids_of(index, encoding)?;
    let types = encoding.get_type_ids();
    let second_from = types.iter().position(|&t| t != 0).unwrap_or(types.len());
    if types.len() != ids.len() || types[second_from..].iter().any(|&t| t != 1) {
        return Err(TokenizeError::Failed {
            index,
            reason: "the tokenizer's pair template gives token types other than 0s then 1s".into(),
        });
    }
    Ok(PairIds { ids, second_from })
}

fn ids_of(index: usize, encoding: &Encoding) -> Result<Vec<u32>, TokenizeError> {
    let ids = encoding.get_ids();
    if ids.is_empty() {
        return Err(TokenizeError::Failed {
            index,
            reason: "it gives no tokens".into(),
        });
    }
    Ok(ids.to_vec())
}

/// Where a prefix may end: before a space, and, for tokenizers whose normalizer puts spaces
/// around CJK ideographs (BERT's `handle_chinese_chars`), before such an ideograph too, so
/// that Chinese or Japanese text, which has no spaces, is cut as cheaply as English.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Cuts {
    cjk: bool,
}

impl Cuts {
    /// A character that starts a new word whatever precedes it.
    fn starts_word(self, c: char) -> bool {
        self.cjk && is_cjk_ideograph(c)
    }
}

/// The ranges BERT's normalizer isolates as Chinese characters (`_is_chinese_char`).
fn is_cjk_ideograph(c: char) -> bool {
    matches!(c as u32,
        0x4E00..=0x9FFF
        | 0x3400..=0x4DBF
        | 0x20000..=0x2A6DF
        | 0x2A700..=0x2B73F
        | 0x2B740..=0x2B81F
        | 0x2B820..=0x2CEAF
        | 0xF900..=0xFAFF
        | 0x2F800..=0x2FA1F)
}

/// Where to cut a prefix of about `budget` bytes: just before the last space (or, with
/// `cuts.cjk`, ideograph) at or before `budget`, and the end of the text that can be trusted
/// inside that prefix (the start of its last word, whose tokens might change with what
/// follows). `None` when there is no such place (one very long word: encode more).
///
/// Only the ASCII space among whitespace: it is the one that every allow-listed normalizer
/// keeps and every allow-listed pre-tokenizer splits at. Other whitespace may vanish before
/// pre-tokenization (`BertNormalizer` drops control characters, among them the form feed, the
/// vertical tab and U+0085, joining the words around them: found by the `tokenize` fuzz
/// target) or not be a split point (`Metaspace` splits at spaces only).
fn prefix_cut(text: &str, budget: usize, cuts: Cuts) -> Option<(usize, usize)> {
    let mut end = budget.min(text.len());
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    // The cut: the last space or word-starting character in the head that has text before
    // it, moved back over the spaces before it so the prefix ends in text.
    let (cut, _) = text[..end]
        .char_indices()
        .rev()
        .find(|&(i, c)| i > 0 && (c == ' ' || cuts.starts_word(c)))?;
    let cut = text[..cut].trim_end_matches(' ').len();
    if cut == 0 {
        return None;
    }
    // The start of the prefix's last word: just after its last space, or at its last
    // word-starting character.
    let last_word = text[..cut]
        .char_indices()
        .rev()
        .find_map(|(i, c)| {
            if c == ' ' {
                Some(i + 1)
            } else if cuts.starts_word(c) {
                Some(i)
            } else {
                None
            }
        })
        .unwrap_or(0);
    Some((cut, last_word))
}

/// Where long texts may be cut, if anywhere: `Some` when tokenization never joins text across
/// a space, so that the tokens of a prefix cut before a space are the first tokens of the
/// whole text — every normalizer is per-character (or only touches the ends), every
/// pre-tokenizer splits on whitespace, and no added token spans a cut. Checked on the
/// serialised configuration, so unknown or regex-driven steps (`Replace`, `Split`, byte-level
/// without its own regex) turn the fast path off rather than risk it. CJK ideographs are cuts
/// too when BERT's normalizer isolates them (`handle_chinese_chars`).
fn prefix_cuts(tokenizer: &Tokenizer) -> Option<Cuts> {
    const NORMALIZERS: &[&str] = &[
        "BertNormalizer",
        "Strip",
        "StripAccents",
        "NFC",
        "NFD",
        "NFKC",
        "NFKD",
        "Lowercase",
        "Prepend",
        "Sequence",
    ];
    const PRE_TOKENIZERS: &[&str] = &[
        "BertPreTokenizer",
        "Whitespace",
        "WhitespaceSplit",
        "Metaspace",
        "ByteLevel",
        "Punctuation",
        "Digits",
        "Sequence",
    ];
    let normalizer = tokenizer
        .get_normalizer()
        .map(serde_json::to_value)
        .transpose();
    let pre_tokenizer = tokenizer
        .get_pre_tokenizer()
        .map(serde_json::to_value)
        .transpose();
    let (Ok(normalizer), Ok(Some(pre_tokenizer))) = (normalizer, pre_tokenizer) else {
        // Without a pre-tokenizer the model sees the whole text as one word.
        return None;
    };
    let safe = normalizer
        .as_ref()
        .is_none_or(|n| only_types(n, NORMALIZERS))
        && only_types(&pre_tokenizer, PRE_TOKENIZERS)
        && splits_on_whitespace(&pre_tokenizer);
    if !safe {
        return None;
    }
    let cuts = Cuts {
        cjk: normalizer.as_ref().is_some_and(isolates_cjk),
    };
    // An added token is matched in the raw text before anything else: one that contains a
    // cut character would be split by a cut.
    let spans_a_cut = tokenizer
        .get_added_tokens_decoder()
        .values()
        .any(|t| t.content.chars().any(|c| c == ' ' || cuts.starts_word(c)));
    (!spans_a_cut).then_some(cuts)
}

/// True when the normalizer includes BERT's with `handle_chinese_chars` (it puts spaces
/// around every CJK ideograph before pre-tokenization).
fn isolates_cjk(value: &serde_json::Value) -> bool {
    match value {
        serde_json::Value::Object(map) => {
            (map.get("type").and_then(|t| t.as_str()) == Some("BertNormalizer")
                && map.get("handle_chinese_chars").and_then(|h| h.as_bool()) != Some(false))
                || map.values().any(isolates_cjk)
        }
        serde_json::Value::Array(items) => items.iter().any(isolates_cjk),
        _ => false,
    }
}

/// True when every object with a `type` in `value` has one of `allowed`, and byte-level steps
/// split with their own (whitespace-respecting) regex.
fn only_types(value: &serde_json::Value, allowed: &[&str]) -> bool {
    match value {
        serde_json::Value::Object(map) => {
            let type_ok = match map.get("type").and_then(|t| t.as_str()) {
                Some("ByteLevel") => map.get("use_regex").and_then(|u| u.as_bool()) != Some(false),
                Some(t) => allowed.contains(&t),
                None => true,
            };
            type_ok && map.values().all(|v| only_types(v, allowed))
        }
        serde_json::Value::Array(items) => items.iter().all(|v| only_types(v, allowed)),
        _ => true,
    }
}

/// True when some step of the pre-tokenizer splits on whitespace (so words never span it).
fn splits_on_whitespace(value: &serde_json::Value) -> bool {
    match value {
        serde_json::Value::Object(map) => {
            matches!(
                map.get("type").and_then(|t| t.as_str()),
                Some(
                    "BertPreTokenizer"
                        | "Whitespace"
                        | "WhitespaceSplit"
                        | "Metaspace"
                        | "ByteLevel"
                )
            ) || map.values().any(splits_on_whitespace)
        }
        serde_json::Value::Array(items) => items.iter().any(splits_on_whitespace),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tiny() -> TextTokenizer {
        let dir = std::env::temp_dir().join(format!("zb-tok-{}", std::process::id()));
        crate::model::tiny::write_tiny_bert(&dir, &crate::model::tiny::TinySpec::default())
            .unwrap();
        TextTokenizer::load(&dir.join("tokenizer.json"), 12).unwrap()
    }

    fn lcg_text(seed: u64, words: usize) -> String {
        const PIECES: &[&str] = &[
            "the", "quick", "brown", "fox", "jumps", "over", "lazy", "dog", "é", "naïve", "東京",
            "a.b", "x,y", "123", "hello", "world", "[SEP]", "[CLS]", "!!", "ü",
        ];
        const SPACES: &[&str] = &[" ", "  ", "\n", "\t", " \u{3000}", "\r\n", ""];
        let mut s = seed;
        let mut next = |n: usize| {
            s = s
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (s >> 33) as usize % n
        };
        let mut out = String::new();
        for _ in 0..words {
            out.push_str(PIECES[next(PIECES.len())]);
            out.push_str(SPACES[next(SPACES.len())]);
        }
        out
    }

    #[test]
    fn the_bounded_path_gives_the_ids_of_the_whole_text() {
        let t = tiny();
        assert!(t.bounded(), "the tiny BERT tokenizer is prefix-safe");
        // The bounded path stops counting a too-long input early: only the variant must agree.
        let norm = |r: Result<Vec<u32>, TokenizeError>| {
            r.map_err(|e| match e {
                TokenizeError::TooLong { index, max, .. } => TokenizeError::TooLong {
                    index,
                    max,
                    tokens: 0,
                },
                other => other,
            })
        };
        for seed in 0..200 {
            let words = [1, 5, 11, 12, 13, 50, 700, 3000][seed as usize % 8];
            let text = lcg_text(seed, words);
            for truncate in [true, false] {
                assert_eq!(
                    norm(t.encode(0, &text, truncate)),
                    norm(t.encode_unbounded(0, &text, truncate)),
                    "seed {seed}, truncate {truncate}: {text:?}"
                );
            }
        }
    }

    #[test]
    fn the_bounded_pair_path_gives_the_ids_of_the_whole_texts() {
        let t = tiny();
        let norm = |r: Result<PairIds, TokenizeError>| {
            r.map_err(|e| match e {
                TokenizeError::TooLong { index, max, .. } => TokenizeError::TooLong {
                    index,
                    max,
                    tokens: 0,
                },
                other => other,
            })
        };
        // 12 tokens at most: 9 for the texts, an odd room, so when both texts are cut the
        // longer one keeps the extra token, and which one is longer must be known.
        let lengths = [0, 1, 3, 4, 5, 9, 10, 11, 50, 700, 3000];
        let mut cut_both = 0;
        for seed in 0..300u64 {
            let first = lcg_text(seed, lengths[seed as usize % lengths.len()]);
            let second = lcg_text(
                seed + 1000,
                lengths[(seed as usize / lengths.len()) % lengths.len()],
            );
            for truncate in [true, false] {
                let want = t.encode_pair_unbounded(2, &first, &second, truncate);
                if let Ok(p) = &want {
                    assert!(p.ids.len() <= 12 && p.second_from < p.ids.len());
                    assert_eq!(p.ids[0], 2, "[CLS] first");
                    if truncate && p.second_from >= 5 && p.ids.len() - p.second_from >= 5 {
                        cut_both += 1;
                    }
                }
                assert_eq!(
                    norm(t.encode_pair(2, &first, &second, truncate)),
                    norm(want),
                    "seed {seed}, truncate {truncate}: {first:?} / {second:?}"
                );
            }
        }
        assert!(cut_both > 10, "both texts cut in only {cut_both} cases");
        // The query is encoded once for all its pairs, with the same ids.
        let first = lcg_text(7, 40);
        let seconds: Vec<String> = (0..20).map(|i| lcg_text(i, i as usize * 37)).collect();
        let all = t.encode_pairs(&first, &seconds, true).unwrap();
        for (i, second) in seconds.iter().enumerate() {
            assert_eq!(all[i], t.encode_pair(i, &first, second, true).unwrap());
        }
        // An over-long pair names its index when not truncated.
        let long = lcg_text(3, 500);
        match t.encode_pairs("short", &["a".into(), long], false) {
            Err(TokenizeError::TooLong {
                index: 1,
                max: 12,
                tokens,
            }) => assert!(tokens > 12),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn whitespace_the_normalizer_drops_is_not_a_cut() {
        // Found by fuzz/fuzz_targets/tokenize.rs: BertNormalizer drops the form feed (and the
        // U+FFFD after it), so the whole text is one 499-letter word, [UNK]; a prefix cut at a
        // form feed saw ~100 letters, "s ##s ##s ...", and answered with those tokens (or 413).
        let t = tiny();
        let text = format!("s\u{c}{}", "\u{fffd}".repeat(13)).repeat(499);
        assert_eq!(t.encode_unbounded(0, &text, false).unwrap(), vec![2, 1, 3]);
        for truncate in [true, false] {
            assert_eq!(
                t.encode(0, &text, truncate).unwrap(),
                vec![2, 1, 3],
                "truncate {truncate}"
            );
        }
    }

    #[test]
    fn text_without_spaces_is_cut_at_ideographs_with_the_same_ids() {
        let t = tiny();
        let text = "東京都庁舎の展望室から見る夜景は美しい。".repeat(2_000);
        for truncate in [true, false] {
            assert_eq!(
                t.encode(0, &text, truncate)
                    .map_err(|e| matches!(e, TokenizeError::TooLong { .. })),
                t.encode_unbounded(0, &text, truncate)
                    .map_err(|e| matches!(e, TokenizeError::TooLong { .. })),
                "truncate {truncate}"
            );
        }
    }

    #[test]
    fn too_long_inputs_are_refused_without_truncation() {
        let t = tiny();
        let long = "hello world ".repeat(10_000);
        match t.encode(3, &long, false) {
            Err(TokenizeError::TooLong { index, tokens, max }) => {
                assert_eq!((index, max), (3, 12));
                assert!(tokens > 12);
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(t.encode(0, &long, true).unwrap().len(), 12);
        assert_eq!(t.tokens(0, &long, true, true).unwrap().len(), 12);
        assert!(t.tokens(0, &long, true, false).is_err());
    }

    #[test]
    fn the_prefix_path_stops_early_and_trusts_only_tokens_before_the_last_word() {
        let t = tiny();
        // 12 tokens kept of 10 content tokens: a 100 kB text needs one 4 kB prefix.
        let text = "hello world ".repeat(10_000);
        assert_eq!(t.encode(0, &text, true), t.encode_unbounded(0, &text, true));
        // A last word that continues past the cut must not count: only the words that end
        // before the prefix's last whitespace are trusted (offsets, not a count of tokens).
        let prefix = "hello ".repeat(700);
        let (cut, trusted) = prefix_cut(&prefix, 4096, Cuts { cjk: true }).unwrap();
        let raw = t.whole.encode(&prefix[..cut], false).unwrap();
        let kept = raw
            .get_offsets()
            .iter()
            .take_while(|&&(_, end)| end <= trusted)
            .count();
        assert_eq!(kept + 1, raw.len(), "all but the last word's token");
    }

    #[test]
    fn prefix_cuts_fall_before_whitespace_and_distrust_the_last_word() {
        let spaces = Cuts { cjk: false };
        let cjk = Cuts { cjk: true };
        assert_eq!(prefix_cut("hello big world", 13, spaces), Some((9, 6)));
        assert_eq!(prefix_cut("hello   big world", 15, spaces), Some((11, 8)));
        assert_eq!(prefix_cut("hello world", 4, spaces), None);
        assert_eq!(prefix_cut("abcdefgh", 100, spaces), None);
        // Ideographs start words when the normalizer isolates them.
        let jp = "東京の夜景";
        assert_eq!(prefix_cut(jp, jp.len(), spaces), None);
        // Cut before 景 (byte 12); the prefix's last word is 夜 (byte 9).
        assert_eq!(prefix_cut(jp, jp.len(), cjk), Some((12, 9)));
        // With 12 bytes: before 夜 (byte 9); the prefix's last word is "京の" (byte 3).
        assert_eq!(prefix_cut(jp, 12, cjk), Some((9, 3)));
        // Never inside a character.
        let text = "aé é 東é 京 é";
        for b in 0..text.len() {
            for cuts in [spaces, cjk] {
                if let Some((cut, trusted)) = prefix_cut(text, b, cuts) {
                    assert!(text.is_char_boundary(cut) && text.is_char_boundary(trusted));
                    assert!(trusted <= cut && cut <= b);
                }
            }
        }
    }

    #[test]
    fn regex_splitting_tokenizers_are_not_prefix_safe() {
        let json = serde_json::json!({
            "version": "1.0",
            "pre_tokenizer": { "type": "Split", "pattern": { "Regex": "." }, "behavior": "Isolated", "invert": false },
            "model": { "type": "WordLevel", "vocab": { "[UNK]": 0, "a": 1 }, "unk_token": "[UNK]" }
        });
        let t = TextTokenizer::from_json(json.to_string().as_bytes(), 8).unwrap();
        assert!(!t.bounded());
    }
}
