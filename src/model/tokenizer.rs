//! Text → token ids with the model's own `tokenizer.json` (the `tokenizers` crate), truncated
//! at the model's maximum input length exactly as the Python libraries truncate.
//!
//! Runs on the HTTP threads (one input takes microseconds), so a batch reaches the workers as
//! ready-made ids and a bad input is refused before it takes a place in the queue.

use std::path::Path;

use tokenizers::{Tokenizer, TruncationDirection, TruncationParams, TruncationStrategy};

use super::ModelError;

/// Why an input could not be tokenized.
#[derive(Debug, thiserror::Error)]
pub enum TokenizeError {
    #[error("input {index} has {tokens} tokens, more than the model's maximum of {max}; send \"truncate\": true to cut it")]
    TooLong {
        index: usize,
        tokens: usize,
        max: usize,
    },
    #[error("input {index} could not be tokenized: {reason}")]
    Failed { index: usize, reason: String },
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
}

impl TextTokenizer {
    /// Loads `tokenizer.json`; `max_len` counts special tokens, as `max_seq_length` does.
    pub fn load(path: &Path, max_len: usize) -> Result<Self, ModelError> {
        let mut whole = Tokenizer::from_file(path)
            .map_err(|e| ModelError::Tokenizer(format!("{}: {e}", path.display())))?;
        whole.with_padding(None);
        whole
            .with_truncation(None)
            .map_err(|e| ModelError::Tokenizer(e.to_string()))?;
        let mut truncating = whole.clone();
        truncating
            .with_truncation(Some(TruncationParams {
                max_length: max_len,
                strategy: TruncationStrategy::LongestFirst,
                stride: 0,
                direction: TruncationDirection::Right,
            }))
            .map_err(|e| ModelError::Tokenizer(e.to_string()))?;
        Ok(Self {
            truncating,
            whole,
            max_len,
        })
    }

    /// Most tokens per input, special tokens included.
    pub fn max_len(&self) -> usize {
        self.max_len
    }

    /// Token ids of input `index` (the index only labels errors). When `truncate` is false an
    /// input longer than the maximum is an error, not silently cut.
    pub fn encode(
        &self,
        index: usize,
        text: &str,
        truncate: bool,
    ) -> Result<Vec<u32>, TokenizeError> {
        let tokenizer = if truncate {
            &self.truncating
        } else {
            &self.whole
        };
        let encoding = tokenizer
            .encode(text, true)
            .map_err(|e| TokenizeError::Failed {
                index,
                reason: e.to_string(),
            })?;
        let ids = encoding.get_ids();
        if ids.len() > self.max_len {
            return Err(TokenizeError::TooLong {
                index,
                tokens: ids.len(),
                max: self.max_len,
            });
        }
        if ids.is_empty() {
            return Err(TokenizeError::Failed {
                index,
                reason: "it gives no tokens".into(),
            });
        }
        Ok(ids.to_vec())
    }

    /// Tokens of one input with their text and offsets, for `/tokenize`.
    pub fn tokens(
        &self,
        index: usize,
        text: &str,
        add_special_tokens: bool,
    ) -> Result<Vec<TokenInfo>, TokenizeError> {
        let encoding =
            self.whole
                .encode(text, add_special_tokens)
                .map_err(|e| TokenizeError::Failed {
                    index,
                    reason: e.to_string(),
                })?;
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
}
