//! A generation model's tokenizer, with the `tokenizers` crate:
//!
//! - for a GGUF model, built from its metadata: the vocabulary, the token types (control
//!   tokens become special tokens, matched in the text as llama.cpp does with
//!   `parse_special`), the special ids and the tokens that end generation
//!   ([`super::end_tokens`]); for a byte-level BPE (`gpt2`: Llama 3, SmolLM2, Qwen…) the merges
//!   and the pre-tokenizer that `tokenizer.ggml.pre` names ([`super::pre_tokenizer`]); for a
//!   SentencePiece BPE (`llama`: Llama 2, TinyLlama, Mistral…) the scores, as merges, with byte
//!   fallback;
//! - for a Hugging Face checkpoint (GPT-2), read from `tokenizer.json`, or built from GPT-2's
//!   `vocab.json` and `merges.txt`.
//!
//! The incremental decoder that streams generated text is [`super::incremental`]; this
//! module tells it which decoder the tokenizer runs.

use std::collections::HashSet;
use std::ops::Range;
use std::sync::OnceLock;

use tokenizers::decoders::byte_level::ByteLevel as ByteLevelDecoder;
use tokenizers::models::bpe::{Vocab, BPE};
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::sequence::Sequence;
use tokenizers::pre_tokenizers::split::{Split, SplitPattern};
use tokenizers::pre_tokenizers::PreTokenizerWrapper;
use tokenizers::{AddedToken, SplitDelimiterBehavior, Tokenizer};

use super::end_tokens::{self, NamedIds};
use super::gguf::{GgufError, GgufFile};
use super::pre_tokenizer::{self, PreTokenizer};

/// GGUF token types (`tokenizer.ggml.token_type`).
const TYPE_NORMAL: i64 = 1;
const TYPE_UNKNOWN: i64 = 2;
const TYPE_CONTROL: i64 = 3;
const TYPE_USER_DEFINED: i64 = 4;

/// SentencePiece's word-boundary mark, which stands for a space in its pieces.
const SPM_SPACE: &str = "\u{2581}";

fn tokenizers_error(e: impl std::fmt::Display) -> GenTokenizerError {
    GenTokenizerError::Tokenizers(e.to_string())
}

/// A byte-level BPE (`tokenizer.ggml.model = "gpt2"`): the file's merges, the pre-tokenizer
/// `tokenizer.ggml.pre` names, GPT-2's byte-to-character mapping.
fn byte_level_bpe(
    file: &GgufFile,
    tokens: &[String],
) -> Result<(Tokenizer, PreTokenizer), GenTokenizerError> {
    let pre = file.string_opt("tokenizer.ggml.pre")?.unwrap_or("default");
    let known = pre_tokenizer::by_name(pre).ok_or_else(|| {
        GenTokenizerError::Unsupported(format!(
            "{}: tokenizer.ggml.pre is {pre:?}, a pre-tokenizer this server does not run (it runs llama.cpp's default, gpt-2, smollm/starcoder, llama-bpe, qwen2 and gpt-4o families)",
            file.path().display()
        ))
    })?;
    // Split at the first space after the first character, as llama.cpp does.
    let merges: Vec<(String, String)> = file
        .strings("tokenizer.ggml.merges")?
        .into_iter()
        .map(|m| {
            m.char_indices()
                .skip(1)
                .find(|&(_, c)| c == ' ')
                .map(|(at, _)| (m[..at].to_string(), m[at + 1..].to_string()))
                .ok_or_else(|| {
                    GenTokenizerError::Tokenizers(format!("merge {m:?} is not two tokens"))
                })
        })
        .collect::<Result<_, _>>()?;
    let vocab: Vocab = tokens
        .iter()
        .enumerate()
        .map(|(i, t)| (t.clone(), i as u32))
        .collect();
    let bpe = BPE::builder()
        .vocab_and_merges(vocab, merges)
        .ignore_merges(known.ignore_merges)
        .build()
        .map_err(tokenizers_error)?;
    let mut inner = Tokenizer::new(bpe);
    let mut steps: Vec<PreTokenizerWrapper> = Vec::new();
    for r in known.regexes {
        let split = Split::new(
            SplitPattern::Regex(r.to_string()),
            SplitDelimiterBehavior::Isolated,
            false,
        )
        .map_err(tokenizers_error)?;
        steps.push(split.into());
    }
    steps.push(ByteLevel::new(false, false, false).into());
    inner.with_pre_tokenizer(Some(Sequence::new(steps)));
    inner.with_decoder(Some(ByteLevelDecoder::default()));
    Ok((inner, known))
}

/// A SentencePiece BPE (`tokenizer.ggml.model = "llama"`: Llama 2, TinyLlama, Mistral, …),
/// as llama.cpp runs it: spaces become `▁`, one is put in front of the text and after every
/// special token (`tokenizer.ggml.add_space_prefix`, default on), then adjacent pieces merge
/// best score first while the merged piece is in the vocabulary, and characters left
/// without a piece fall back to their UTF-8 bytes (`<0xXX>` tokens).
///
/// The score order is expressed as BPE merges (every split of every piece into two pieces,
/// ranked by the merged piece's score: the same choice at every step), the way Hugging Face's
/// converter builds `LlamaTokenizerFast` ([`super::spm_merges`]).
fn sentencepiece_bpe(
    file: &GgufFile,
    tokens: &[String],
    types: &[i64],
) -> Result<Tokenizer, GenTokenizerError> {
    use tokenizers::decoders::byte_fallback::ByteFallback;
    use tokenizers::decoders::fuse::Fuse;
    use tokenizers::decoders::sequence::Sequence as DecoderSequence;
    use tokenizers::normalizers::{Prepend, Replace, Sequence as NormalizerSequence};
    use tokenizers::DecoderWrapper;

    let scores = file.floats_opt("tokenizer.ggml.scores")?.ok_or_else(|| {
        GenTokenizerError::Tokenizers("tokenizer.ggml.scores is missing".to_string())
    })?;
    if scores.len() != tokens.len() {
        return Err(GenTokenizerError::Tokenizers(format!(
            "{} scores for {} tokens",
            scores.len(),
            tokens.len()
        )));
    }
    let merges = super::spm_merges::merges(tokens, &scores, |id| {
        matches!(types[id], TYPE_NORMAL | TYPE_USER_DEFINED)
    })
    .map_err(|e| {
        GenTokenizerError::Tokenizers(format!(
            "{}: tokenizer.ggml.tokens: {e}",
            file.path().display()
        ))
    })?
    .into_iter()
    .map(|(l, r)| (l.to_string(), r.to_string()))
    .collect();
    let vocab: Vocab = tokens
        .iter()
        .enumerate()
        .map(|(i, t)| (t.clone(), i as u32))
        .collect();
    let mut builder = BPE::builder()
        .vocab_and_merges(vocab, merges)
        .byte_fallback(true)
        .fuse_unk(true);
    let unk = match file.uint_opt("tokenizer.ggml.unknown_token_id")? {
        Some(i) => tokens.get(i as usize).cloned(),
        None => types
            .iter()
            .position(|&t| t == TYPE_UNKNOWN)
            .map(|i| tokens[i].clone()),
    };
    if let Some(unk) = unk {
        builder = builder.unk_token(unk);
    }
    let mut inner = Tokenizer::new(builder.build().map_err(tokenizers_error)?);
    let mut normalizers = Vec::new();
    if file
        .bool_opt("tokenizer.ggml.add_space_prefix")?
        .unwrap_or(true)
    {
        normalizers.push(Prepend::new(SPM_SPACE.to_string()).into());
    }
    normalizers.push(
        Replace::new(" ", SPM_SPACE)
            .map_err(tokenizers_error)?
            .into(),
    );
    inner.with_normalizer(Some(NormalizerSequence::new(normalizers)));
    // Decoding keeps every space (no strip of the first one): generated text is decoded on
    // its own, and its first piece's space belongs to it.
    let decoders: Vec<DecoderWrapper> = vec![
        Replace::new(SPM_SPACE, " ")
            .map_err(tokenizers_error)?
            .into(),
        ByteFallback::new().into(),
        Fuse::new().into(),
    ];
    inner.with_decoder(Some(DecoderSequence::new(decoders)));
    Ok(inner)
}

/// Why a tokenizer could not be built or used.
#[derive(Debug, thiserror::Error)]
pub enum GenTokenizerError {
    #[error(transparent)]
    Gguf(#[from] GgufError),
    #[error("{0}")]
    Unsupported(String),
    #[error("tokenizer: {0}")]
    Tokenizers(String),
}

/// Where a Hugging Face checkpoint's tokenizer is.
#[derive(Debug, Clone, Copy)]
pub enum HfTokenizerFiles<'a> {
    /// `tokenizer.json` (the `tokenizers` format).
    TokenizerJson(&'a std::path::Path),
    /// GPT-2's original files: the token → id map and the merges.
    VocabMerges {
        vocab: &'a std::path::Path,
        merges: &'a std::path::Path,
    },
}

/// The decoder a tokenizer runs, for [`super::incremental`], which does the work of the
/// first two itself, a token at a time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DecoderKind {
    /// Byte-level (GPT-2's): tokens' characters stand for bytes, read as lossy UTF-8.
    ByteLevel,
    /// This module's SentencePiece chain: `▁` to space, byte fallback, joined.
    SentencePiece,
    /// Any other (from a `tokenizer.json`).
    Other,
}

/// The non-empty texts of the tokens marked special.
fn special_texts(tokens: &[String], special: &[bool]) -> Vec<String> {
    tokens
        .iter()
        .zip(special)
        .filter(|(t, &special)| special && !t.is_empty())
        .map(|(t, _)| t.clone())
        .collect()
}

/// A generation model's tokenizer.
pub struct GenTokenizer {
    inner: Tokenizer,
    decoder: DecoderKind,
    bos: Option<u32>,
    add_bos: bool,
    /// Ids that end generation (EOS, end-of-turn, …).
    end_ids: HashSet<u32>,
    eos: Option<u32>,
    /// The text of every token (for the chat template's `bos_token`/`eos_token`).
    tokens: Vec<String>,
    special: Vec<bool>,
    /// The texts of the special tokens, listed once at load: a chat request looks for them in
    /// every message, and the vocabulary is 10⁴–10⁵ tokens long.
    special_texts: Vec<String>,
    /// `inner` with special tokens read as plain text, built the first time a chat message
    /// spells one ([`Self::encode_with_plain_spans`]).
    plain: OnceLock<Tokenizer>,
}

impl GenTokenizer {
    /// Builds the tokenizer from a GGUF file's metadata.
    ///
    /// # Errors
    ///
    /// When the metadata is missing or names a tokenizer this server does not build.
    pub fn from_gguf(file: &GgufFile) -> Result<Self, GenTokenizerError> {
        let model = file.string("tokenizer.ggml.model")?;
        let tokens: Vec<String> = file
            .strings("tokenizer.ggml.tokens")?
            .into_iter()
            .map(std::borrow::Cow::into_owned)
            .collect();
        let types = file
            .ints_opt("tokenizer.ggml.token_type")?
            .unwrap_or_else(|| vec![TYPE_NORMAL; tokens.len()]);
        if types.len() != tokens.len() {
            return Err(GenTokenizerError::Tokenizers(format!(
                "{} token types for {} tokens",
                types.len(),
                tokens.len()
            )));
        }
        // Whether BOS is added when the file does not say: llama.cpp's default per tokenizer.
        let (mut inner, decoder, add_bos_default) = match model {
            "gpt2" => {
                let (inner, pre) = byte_level_bpe(file, &tokens)?;
                (inner, DecoderKind::ByteLevel, pre.add_bos)
            }
            // (llama.cpp adds BOS by default here; converted files always say.)
            "llama" => (
                sentencepiece_bpe(file, &tokens, &types)?,
                DecoderKind::SentencePiece,
                false,
            ),
            other => {
                return Err(GenTokenizerError::Unsupported(format!(
                    "{}: tokenizer.ggml.model is {other:?}; this server builds byte-level BPE (\"gpt2\") and SentencePiece BPE (\"llama\") tokenizers",
                    file.path().display()
                )))
            }
        };
        let id = |key: &str| -> Result<Option<u32>, GenTokenizerError> {
            Ok(match file.uint_opt(key)? {
                Some(v) if (v as usize) < tokens.len() => Some(v as u32),
                Some(v) => {
                    return Err(GenTokenizerError::Tokenizers(format!(
                        "{key} is {v}, outside the vocabulary"
                    )))
                }
                None => None,
            })
        };
        let bos = id("tokenizer.ggml.bos_token_id")?;
        let eos = id("tokenizer.ggml.eos_token_id")?;
        let named = NamedIds {
            eos,
            eot: id("tokenizer.ggml.eot_token_id")?,
            eom: id("tokenizer.ggml.eom_token_id")?,
            fim_pad: id("tokenizer.ggml.fim_pad_token_id")?,
            fim_rep: id("tokenizer.ggml.fim_rep_token_id")?,
            fim_sep: id("tokenizer.ggml.fim_sep_token_id")?,
        };
        let (end_ids, by_text) = end_tokens::end_of_generation(&tokens, named);
        let mut special = vec![false; tokens.len()];
        let mut added = Vec::new();
        let mut user = Vec::new();
        for (i, (t, &ty)) in tokens.iter().zip(&types).enumerate() {
            // End tokens found by their text are control tokens, as in llama.cpp.
            if ty == TYPE_CONTROL || ty == TYPE_UNKNOWN || by_text.contains(&(i as u32)) {
                special[i] = true;
                added.push(AddedToken::from(t.clone(), true));
            } else if ty == TYPE_USER_DEFINED {
                user.push(AddedToken::from(t.clone(), false).normalized(false));
            }
        }
        inner.add_special_tokens(&added);
        inner.add_tokens(&user);
        let add_bos = file
            .bool_opt("tokenizer.ggml.add_bos_token")?
            .unwrap_or(add_bos_default)
            && bos.is_some();
        Ok(Self {
            inner,
            decoder,
            bos,
            add_bos,
            end_ids,
            eos,
            special_texts: special_texts(&tokens, &special),
            tokens,
            special,
            plain: OnceLock::new(),
        })
    }

    /// Builds the tokenizer of a Hugging Face checkpoint from its `tokenizer.json`, or else
    /// from GPT-2's `vocab.json` and `merges.txt` (byte-level BPE with GPT-2's split regex).
    /// `bos` and `eos` come from the model's configuration; `eos` ends generation, and both
    /// are special tokens (matched in the text, left out of decoded text).
    ///
    /// # Errors
    ///
    /// When the files cannot be read or an id is outside the vocabulary.
    pub fn from_hf(
        files: HfTokenizerFiles<'_>,
        bos: Option<u32>,
        eos: &[u32],
    ) -> Result<Self, GenTokenizerError> {
        let err = |e: String| GenTokenizerError::Tokenizers(e);
        let mut inner = match files {
            HfTokenizerFiles::TokenizerJson(path) => {
                Tokenizer::from_file(path).map_err(|e| err(format!("{}: {e}", path.display())))?
            }
            HfTokenizerFiles::VocabMerges { vocab, merges } => {
                let to_str = |p: &std::path::Path| p.to_string_lossy().into_owned();
                let bpe = BPE::from_file(&to_str(vocab), &to_str(merges))
                    .build()
                    .map_err(|e| {
                        err(format!("{} and {}: {e}", vocab.display(), merges.display()))
                    })?;
                let mut t = Tokenizer::new(bpe);
                t.with_pre_tokenizer(Some(ByteLevel::new(false, true, true)));
                t.with_decoder(Some(ByteLevelDecoder::default()));
                t
            }
        };
        // Truncation or padding set in a tokenizer.json would change prompts silently.
        inner
            .with_truncation(None)
            .map_err(|e| err(e.to_string()))?;
        inner.with_padding(None);
        let vocab = inner.get_vocab(true);
        let size = vocab.values().map(|&i| i as usize + 1).max().unwrap_or(0);
        let mut tokens = vec![String::new(); size];
        for (t, i) in vocab {
            tokens[i as usize] = t;
        }
        let mut special = vec![false; size];
        for (id, t) in inner.get_added_tokens_decoder() {
            if t.special {
                special[id as usize] = true;
            }
        }
        for &id in bos.iter().chain(eos) {
            let Some(text) = tokens.get(id as usize).filter(|t| !t.is_empty()) else {
                return Err(err(format!(
                    "special token id {id} is outside the vocabulary"
                )));
            };
            if !special[id as usize] {
                special[id as usize] = true;
                inner.add_special_tokens(&[AddedToken::from(text.clone(), true)]);
            }
        }
        let decoder = match inner.get_decoder() {
            Some(tokenizers::DecoderWrapper::ByteLevel(_)) => DecoderKind::ByteLevel,
            _ => DecoderKind::Other,
        };
        Ok(Self {
            inner,
            decoder,
            bos,
            // tokenizer.json's post-processor adds what the model wants (GPT-2: nothing).
            add_bos: false,
            end_ids: eos.iter().copied().collect(),
            eos: eos.first().copied(),
            special_texts: special_texts(&tokens, &special),
            tokens,
            special,
            plain: OnceLock::new(),
        })
    }

    /// Ids of `text`, special tokens written in it included, with BOS first when the model
    /// asks for it and `add_special` is set.
    pub fn encode(&self, text: &str, add_special: bool) -> Result<Vec<u32>, GenTokenizerError> {
        let enc = self
            .inner
            .encode_fast(text, add_special)
            .map_err(|e| GenTokenizerError::Tokenizers(e.to_string()))?;
        let mut ids = Vec::with_capacity(enc.len() + 1);
        if add_special && self.add_bos {
            ids.extend(self.bos);
        }
        ids.extend_from_slice(enc.get_ids());
        Ok(ids)
    }

    /// The text of every special token, as [`Self::encode`] matches it in text.
    pub fn special_texts(&self) -> impl Iterator<Item = &str> {
        self.special_texts.iter().map(String::as_str)
    }

    /// The id of the special (control) token whose text is `text`, if there is one.
    pub fn special_id(&self, text: &str) -> Option<u32> {
        self.inner
            .token_to_id(text)
            .filter(|&id| self.is_special(id))
    }

    /// Ids of `text` as [`Self::encode`] gives them without BOS, except that special tokens
    /// whose text overlaps a range of `plain` (byte ranges of `text`) are tokenized as the
    /// plain text they spell: a chat message's content is what its user wrote, never the
    /// template's markup.
    ///
    /// The text is cut at the special tokens outside `plain`, as the tokenizer itself cuts
    /// it at every special token, and each piece between is tokenized with special tokens
    /// read as text; so a piece that spells none gets exactly the ids [`Self::encode`] gives.
    ///
    /// # Errors
    ///
    /// When the tokenizer fails on the text.
    pub fn encode_with_plain_spans(
        &self,
        text: &str,
        plain: &[Range<usize>],
    ) -> Result<Vec<u32>, GenTokenizerError> {
        let failed = |e: tokenizers::Error| GenTokenizerError::Tokenizers(e.to_string());
        let parsed = self.inner.encode(text, false).map_err(failed)?;
        let as_text = self.plain.get_or_init(|| {
            let mut t = self.inner.clone();
            t.set_encode_special_tokens(true);
            t
        });
        let mut ids = Vec::with_capacity(parsed.len());
        let piece = |ids: &mut Vec<u32>, piece: &str| -> Result<(), GenTokenizerError> {
            if !piece.is_empty() {
                let enc = as_text.encode_fast(piece, false).map_err(failed)?;
                ids.extend_from_slice(enc.get_ids());
            }
            Ok(())
        };
        let mut cursor = 0;
        for (&id, &(start, end)) in parsed.get_ids().iter().zip(parsed.get_offsets()) {
            let in_plain = plain.iter().any(|r| start < r.end && end > r.start);
            if self.is_special(id) && !in_plain && start >= cursor {
                piece(&mut ids, &text[cursor..start])?;
                ids.push(id);
                cursor = end;
            }
        }
        piece(&mut ids, &text[cursor..])?;
        Ok(ids)
    }

    /// `/tokenize`'s view of `text`: each token's id, text and byte span, as [`Self::encode`]
    /// gives them (a BOS added in front has an empty span at 0).
    pub fn tokens(
        &self,
        text: &str,
        add_special: bool,
    ) -> Result<Vec<crate::model::TokenInfo>, GenTokenizerError> {
        let enc = self
            .inner
            .encode(text, add_special)
            .map_err(|e| GenTokenizerError::Tokenizers(e.to_string()))?;
        let bos = self.bos.filter(|_| add_special && self.add_bos);
        let info = |id: u32, (start, stop): (usize, usize)| crate::model::TokenInfo {
            id,
            text: text
                .get(start..stop)
                .unwrap_or_else(|| self.token_text(id).unwrap_or(""))
                .to_string(),
            special: self.is_special(id),
            start,
            stop,
        };
        Ok(bos
            .map(|id| info(id, (0, 0)))
            .into_iter()
            .chain(
                enc.get_ids()
                    .iter()
                    .zip(enc.get_offsets())
                    .map(|(&id, &span)| info(id, span)),
            )
            .collect())
    }

    /// The text of `ids`, special tokens left out.
    pub fn decode(&self, ids: &[u32]) -> String {
        self.inner.decode(ids, true).unwrap_or_default()
    }

    /// The text of each list of ids, for `/decode` (see [`crate::model::decode_lists`]).
    pub fn decode_lists(
        &self,
        lists: &[Vec<u32>],
        skip_special_tokens: bool,
    ) -> Result<Vec<String>, String> {
        crate::model::decode_lists(&self.inner, lists, skip_special_tokens)
    }

    /// The decoder [`Self::decode`] runs.
    pub fn decoder_kind(&self) -> DecoderKind {
        self.decoder
    }

    /// The token `id` as [`Self::decode`] hands it to its decoder; `None` for the ids it
    /// drops (special tokens, ids without a token).
    pub fn decoded_token(&self, id: u32) -> Option<String> {
        self.inner
            .id_to_token(id)
            .filter(|t| !self.inner.get_added_vocabulary().is_special_token(t))
    }

    /// The stored text of one token (special tokens included), e.g. for `/tokenize`.
    pub fn token_text(&self, id: u32) -> Option<&str> {
        self.tokens.get(id as usize).map(String::as_str)
    }

    /// Whether `id` is a control (special) token.
    pub fn is_special(&self, id: u32) -> bool {
        self.special.get(id as usize).copied().unwrap_or(false)
    }

    /// Whether `id` ends generation.
    pub fn is_end(&self, id: u32) -> bool {
        self.end_ids.contains(&id)
    }

    /// The ids that end generation, in order.
    pub fn end_ids(&self) -> Vec<u32> {
        let mut ids: Vec<u32> = self.end_ids.iter().copied().collect();
        ids.sort_unstable();
        ids
    }

    /// Tokens in the vocabulary.
    pub fn vocab_size(&self) -> usize {
        self.tokens.len()
    }

    /// The BOS token's text, if the model has one.
    pub fn bos_text(&self) -> Option<&str> {
        self.bos.and_then(|i| self.token_text(i))
    }

    /// The EOS token's text, if the model has one.
    pub fn eos_text(&self) -> Option<&str> {
        self.eos.and_then(|i| self.token_text(i))
    }
}
