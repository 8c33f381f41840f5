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

/// The text of each list of ids with `tokenizer`, for `/decode` (the encoders' and the
/// generation models' tokenizers alike): special tokens left out when `skip_special_tokens`.
/// An id outside the vocabulary is an error that names it and its list, not silently dropped
/// as the tokenizer's own decode drops it.
pub fn decode_lists(
    tokenizer: &Tokenizer,
    lists: &[Vec<u32>],
    skip_special_tokens: bool,
) -> Result<Vec<String>, String> {
    let vocab = tokenizer.get_vocab_size(true);
    let decode = |ids: &[u32]| {
        if let Some(id) = ids.iter().find(|&&id| id as usize >= vocab) {
            return Err(format!(
                "token id {id} is outside the vocabulary of {vocab} tokens"
            ));
        }
        tokenizer
            .decode(ids, skip_special_tokens)
            .map_err(|e| e.to_string())
    };
    lists
        .iter()
        .enumerate()
        .map(|(i, ids)| decode(ids).map_err(|e| format!("ids list {i} cannot be decoded: {e}")))
        .collect()
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
    /// path is tested against (and which the tests compare with the `tokenizers` crate's own
    /// pair truncation on pairs short enough for it, see [`TextTokenizer::pair_from_raw`]).
    pub fn encode_pair_unbounded(
        &self,
        index: usize,
        first: &str,
        second: &str,
        truncate: bool,
    ) -> Result<PairIds, TokenizeError> {
        self.check_pairs_fit().map_err(|e| failed(index, e))?;
        let first = self.raw_whole(index, first)?;
        let second = self.raw_whole(index, second)?;
        self.pair_from_raw(index, &first, &second, truncate)
    }

    /// A pair's ids from its texts' tokens (without special tokens): `TooLong` when not
    /// `truncate` and the pair is over the maximum, else cut `longest_first` to the maximum and
    /// put in the pair template.
    ///
    /// Not through the `tokenizers` crate's truncation: it keeps what it cuts as "overflowing"
    /// encodings, and a pair's are multiplied (every overflowing part of the first text with
    /// every one of the second), so a long query with a long passage took memory quadratic in
    /// their lengths (an 18 kB query and a 4 kB passage of a character-level vocabulary, 12
    /// tokens kept: more than 24 GB). The lengths are the crate's `longest_first` rule
    /// ([`longest_first`]); the tokens are the first that many of each text.
    fn pair_from_raw(
        &self,
        index: usize,
        first: &Encoding,
        second: &Encoding,
        truncate: bool,
    ) -> Result<PairIds, TokenizeError> {
        let room = self.max_len - self.added_pair;
        if !truncate && first.len() + second.len() > room {
            return Err(TokenizeError::TooLong {
                index,
                tokens: first.len() + second.len() + self.added_pair,
                max: self.max_len,
            });
        }
        let (n1, n2) = longest_first(first.len(), second.len(), room);
        let encoding = self
            .whole
            .post_process(
                first_tokens(first, n1),
                Some(first_tokens(second, n2)),
                true,
            )
            .map_err(|e| failed(index, e))?;
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
        let raw = self.raw_bounded(index, second, keep - 1, false)?;
        self.pair_from_raw(index, first, &first_tokens(&raw, keep), truncate)
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

    /// The text of each list of ids, for `/decode` (see [`decode_lists`]).
    pub fn decode_lists(
        &self,
        lists: &[Vec<u32>],
        skip_special_tokens: bool,
    ) -> Result<Vec<String>, String> {
        decode_lists(&self.whole, lists, skip_special_tokens)
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

/// The lengths the `tokenizers` crate's `longest_first` truncation keeps of a pair of `n1`
/// and `n2` tokens within `max` (its `truncate_encodings`): both when they fit; else the
/// shorter whole and the longer cut to what is left, when that leaves the longer at least as
/// long as the shorter; else `max / 2` each, the extra token of an odd `max` to the longer
/// (to the second on a tie).
fn longest_first(n1: usize, n2: usize, max: usize) -> (usize, usize) {
    if n1 + n2 <= max {
        return (n1, n2);
    }
    let swap = n1 > n2;
    let (mut short, mut long) = if swap { (n2, n1) } else { (n1, n2) };
    long = if short > max {
        short
    } else {
        long.min(short.max(max - short))
    };
    if short + long > max {
        short = max / 2;
        long = short + max % 2;
    }
    if swap {
        (long, short)
    } else {
        (short, long)
    }
}

/// The first `n` tokens of a text's encoding (without special tokens), and nothing of the
/// rest: `Encoding::truncate` would keep the rest as overflowing parts.
fn first_tokens(e: &Encoding, n: usize) -> Encoding {
    fn head<T: Clone>(v: &[T], n: usize) -> Vec<T> {
        v[..n.min(v.len())].to_vec()
    }
    Encoding::new(
        head(e.get_ids(), n),
        head(e.get_type_ids(), n),
        head(e.get_tokens(), n),
        head(e.get_word_ids(), n),
        head(e.get_offsets(), n),
        head(e.get_special_tokens_mask(), n),
        head(e.get_attention_mask(), n),
        Vec::new(),
        Default::default(),
    )
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
/// serialised configuration, so unknown or regex-driven steps (`Split`, byte-level without
/// its own regex, a `Replace` other than the one below) turn the fast path off rather than
/// risk it. CJK ideographs are cuts too when BERT's normalizer isolates them
/// (`handle_chinese_chars`).
///
/// SentencePiece's normalizers, as XLM-R's `tokenizer.json` has them, are allowed too:
/// `Precompiled` maps each grapheme cluster on its own (a cluster never spans the ASCII space
/// a prefix is cut before: a space is no extender), and `Replace` of the regex ` {2,}` (runs
/// of spaces) sees the same runs in the prefix as in the whole text, since a prefix ends
/// before its trailing spaces. What either does at the prefix's end lies in its last word,
/// which is not trusted.
fn prefix_cuts(tokenizer: &Tokenizer) -> Option<Cuts> {
    const NORMALIZERS: &[&str] = &[
        "BertNormalizer",
        "Precompiled",
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
                Some("Replace") => replaces_space_runs(map),
                Some(t) => allowed.contains(&t),
                None => true,
            };
            type_ok && map.values().all(|v| only_types(v, allowed))
        }
        serde_json::Value::Array(items) => items.iter().all(|v| only_types(v, allowed)),
        _ => true,
    }
}

/// True for SentencePiece's `Replace` of runs of two or more spaces (the regex ` {2,}`), the
/// one `Replace` that cannot join text across a cut (see [`prefix_cuts`]).
fn replaces_space_runs(map: &serde_json::Map<String, serde_json::Value>) -> bool {
    map.get("pattern")
        .and_then(|p| p.get("Regex"))
        .and_then(|r| r.as_str())
        == Some(" {2,}")
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
#[path = "tokenizer_tests.rs"]
mod tests;
