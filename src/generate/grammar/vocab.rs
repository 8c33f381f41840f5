//! The model's vocabulary as llguidance reads it: a [`TokTrie`] of every token's bytes, and a
//! [`TokenizerEnv`] over our own tokenizer.
//!
//! Built from [`GenTokenizer`] rather than with `toktrie_hf_tokenizers`: our GGUF tokenizers
//! are made in-process from the file's metadata (there is no `tokenizer.json` to read), and the
//! bytes must be exactly what the incremental decoder streams to the client, so they come from
//! the same rules ([`incremental::token_bytes`]): byte-level BPE characters → their bytes,
//! SentencePiece `▁` → space and `<0xNN>` → the byte. Special tokens are
//! [`TokTrie::SPECIAL_TOKEN_MARKER`] followed by their text (llguidance's convention: no text
//! can spell them, a Lark grammar can name them as `<|im_end|>`); the tokens that end
//! generation are the trie's EOS set.
//!
//! The trie has the model's logit width (`vocab`): ids past the tokenizer's vocabulary (padding
//! rows of the output layer) have no bytes, so no grammar ever allows them.

use std::sync::Arc;

use toktrie::{TokEnv, TokRxInfo, TokTrie, TokenId, TokenizerEnv};

use crate::generate::incremental;
use crate::generate::tokenizer::GenTokenizer;

/// The bytes of every id below `vocab`, as the trie holds them.
pub fn token_words(tokenizer: &GenTokenizer, vocab: usize) -> Vec<Vec<u8>> {
    let kind = tokenizer.decoder_kind();
    (0..vocab as u32)
        .map(|id| match tokenizer.token_text(id) {
            None | Some("") => Vec::new(),
            Some(text) if tokenizer.is_special(id) => {
                let mut w = vec![TokTrie::SPECIAL_TOKEN_MARKER];
                w.extend_from_slice(text.as_bytes());
                w
            }
            Some(text) => incremental::token_bytes(kind, text),
        })
        .collect()
}

/// llguidance's view of the tokenizer: the trie, and tokenization of bytes (which llguidance
/// only uses for forced tokens and grammar literals given as token ids; the trie's greedy
/// tokenization, declared non-canonical, is enough for that).
struct Env {
    trie: TokTrie,
}

impl TokenizerEnv for Env {
    fn tok_trie(&self) -> &TokTrie {
        &self.trie
    }

    fn tokenize_bytes(&self, s: &[u8]) -> Vec<TokenId> {
        self.trie.greedy_tokenize(s)
    }

    fn tokenize_is_canonical(&self) -> bool {
        false
    }
}

/// The environment for a model whose logits have `vocab` entries.
///
/// # Errors
///
/// When the model has no token that ends generation inside `vocab` (a grammar could never
/// finish), or `vocab` is 0.
pub fn tok_env(tokenizer: &GenTokenizer, vocab: usize) -> Result<TokEnv, String> {
    let ends: Vec<TokenId> = tokenizer
        .end_ids()
        .into_iter()
        .filter(|&id| (id as usize) < vocab)
        .collect();
    let Some(&eos) = ends.first() else {
        return Err("the model has no end-of-sequence token, so a grammar could never end".into());
    };
    let words = token_words(tokenizer, vocab);
    let info = TokRxInfo::new(vocab as u32, eos);
    let trie = TokTrie::from(&info, &words).with_eos_tokens(&ends);
    Ok(Arc::new(Env { trie }))
}
