//! The input side of the unpadded encoders (the Qwen3 embedder, ModernBERT): every sequence
//! runs as its own rows at positions `0..len`, nothing padded, so a text's vector is the same
//! alone as in any batch. Both check their batch, gather embedding rows, add residuals and pool
//! each sequence's rows the same way.

use super::embedding_table::EmbeddingTable;
use super::{EncoderInput, ModelError, Pooling};

/// Refuses pairs: an embedder (`model` names it) encodes single texts. A classifier reads a
/// pair as one sequence of ids (these encoders have no token types), so it does not call this.
pub(crate) fn refuse_pairs(inputs: &[EncoderInput<'_>], model: &str) -> Result<(), ModelError> {
    if inputs.iter().any(|s| s.second_from < s.ids.len()) {
        return Err(ModelError::Input(format!(
            "a {model} embedder encodes single texts, not pairs"
        )));
    }
    Ok(())
}

/// The rows of a batch: each token's embedding row (`Σ len × d`) and its position within its
/// own sequence (a pair is one sequence).
///
/// # Errors
///
/// [`ModelError::Input`] for an empty batch or sequence, a sequence longer than
/// `max_positions`, or a token outside the vocabulary.
pub(crate) fn embedding_rows(
    inputs: &[EncoderInput<'_>],
    embed: &EmbeddingTable,
    d: usize,
    vocab_size: usize,
    max_positions: usize,
) -> Result<(Vec<f32>, Vec<usize>), ModelError> {
    if inputs.is_empty() || inputs.iter().any(|s| s.ids.is_empty()) {
        return Err(ModelError::Input("empty batch or empty sequence".into()));
    }
    if let Some(s) = inputs.iter().find(|s| s.ids.len() > max_positions) {
        return Err(ModelError::Input(format!(
            "sequence of {} tokens is longer than the model's {max_positions} positions",
            s.ids.len(),
        )));
    }
    let m: usize = inputs.iter().map(|s| s.ids.len()).sum();
    let mut x = Vec::with_capacity(m * d);
    let mut positions = Vec::with_capacity(m);
    for s in inputs {
        for (t, &id) in s.ids.iter().enumerate() {
            if !embed.push_row(id as usize, &mut x) {
                return Err(ModelError::Input(format!(
                    "token id {id} is outside the vocabulary of {vocab_size}"
                )));
            }
            positions.push(t);
        }
    }
    Ok((x, positions))
}

/// `x += y`, element by element (a residual connection).
pub(crate) fn add(x: &mut [f32], y: &[f32]) {
    for (a, b) in x.iter_mut().zip(y) {
        *a += b;
    }
}

/// One vector per sequence: its rows of `hidden` (`Σ len × h`, in the order of `inputs`)
/// pooled, or all of them for an input that asks for every token.
///
/// # Errors
///
/// [`ModelError::Forward`] when a vector holds a non-finite value.
pub(crate) fn pool_each(
    hidden: &[f32],
    inputs: &[EncoderInput<'_>],
    h: usize,
    pooling: Pooling,
) -> Result<Vec<Vec<f32>>, ModelError> {
    let mut row0 = 0;
    inputs
        .iter()
        .map(|s| {
            let rows = &hidden[row0 * h..(row0 + s.ids.len()) * h];
            row0 += s.ids.len();
            let out = pooling.answer(rows, h, s.every_token);
            if !out.iter().all(|v| v.is_finite()) {
                return Err(ModelError::Forward(
                    "the model produced a non-finite value".into(),
                ));
            }
            Ok(out)
        })
        .collect()
}
