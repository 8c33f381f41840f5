//! The LM head and the token embedding table of a GGUF decoder, loaded together.
//!
//! Why together: most small models tie them (no `output.weight`: the head is the embedding
//! table), and the table is the largest tensor (Gemma 3 1B's 262,144 × 1,152). The head is
//! converted for the kernels and the table kept as stored, a row dequantized per token, so a
//! tied table would be held twice. When it is Q8_0 and the head int8, the head keeps the
//! file's int8 values and scales exactly, and a token's row is read back from the head: the
//! same f32 values bit for bit, one copy instead of two (Gemma 3 1B Q4_K_M: 321 MB less).

use candle_core::quantized::GgmlDType;

use super::decoder::Linear;
use super::gguf::{GgufError, GgufFile, RawTensor};
use super::llama_family::load_linear;
use crate::kernels::{Dtype, PackedLinear};

/// Where a token's embedding row is read from.
pub(super) enum TokenEmbeddings {
    /// The table as stored in the file, a row dequantized per token.
    Stored(RawTensor),
    /// The rows of the tied int8 LM head, made from the file's Q8_0 table as stored.
    TiedHead,
}

impl TokenEmbeddings {
    /// Token `id`'s row (`d` values); `None` when out of range.
    pub(super) fn row(&self, head: &Linear, id: usize) -> Option<Vec<f32>> {
        match (self, head) {
            (TokenEmbeddings::Stored(t), _) => t.row(id),
            (TokenEmbeddings::TiedHead, Linear::Packed(PackedLinear::Int8(l))) => l.weight_row(id),
            // `load` makes `TiedHead` only beside an int8 head.
            (TokenEmbeddings::TiedHead, _) => None,
        }
    }

    /// Bytes held beside the head.
    pub(super) fn bytes(&self) -> usize {
        match self {
            TokenEmbeddings::Stored(t) => t.bytes.len(),
            TokenEmbeddings::TiedHead => 0,
        }
    }

    /// How `/info` describes it.
    pub(super) fn describe(&self) -> String {
        match self {
            TokenEmbeddings::Stored(t) => format!(
                "{} as stored, a row dequantized per token",
                format!("{:?}", t.dtype).to_lowercase()
            ),
            TokenEmbeddings::TiedHead => {
                "q8_0, read from the tied int8 LM head's rows (the same values)".to_string()
            }
        }
    }
}

/// The LM head (`output.weight`, or the embedding table when tied) converted for `dtype`
/// and `keep_q4` as [`load_linear`] does, and the embedding table (`vocab × d`).
///
/// # Errors
///
/// A missing or malformed tensor, or a table whose last row does not dequantize (checked
/// here so that a load fails, not a step).
pub(super) fn load_head_and_embeddings(
    file: &GgufFile,
    vocab: usize,
    d: usize,
    dtype: Dtype,
    keep_q4: bool,
) -> Result<(Linear, TokenEmbeddings), GgufError> {
    const TABLE: &str = "token_embd.weight";
    let tied = !file.has_tensor("output.weight");
    let head_name = if tied { TABLE } else { "output.weight" };
    let head = load_linear(
        file,
        &[(head_name.to_string(), vocab)],
        d,
        None,
        dtype,
        keep_q4,
    )?;
    let from_head = tied
        && file.tensor_type(TABLE) == Some(GgmlDType::Q8_0)
        && matches!(head, Linear::Packed(PackedLinear::Int8(_)));
    let table = if from_head {
        TokenEmbeddings::TiedHead
    } else {
        let raw = file.raw(TABLE, &[vocab, d])?;
        // Copied: the mapping's pages are not read again.
        file.release(TABLE);
        TokenEmbeddings::Stored(raw)
    };
    // Steps dequantize the table a row at a time; the file's checks (rows of whole blocks)
    // make every row decode, and one is decoded here to fail the load, not a step, if that
    // ever stops being so.
    if vocab == 0 || table.row(&head, vocab - 1).is_none() {
        return Err(GgufError::Tensor {
            path: file.path().to_path_buf(),
            name: TABLE.into(),
            problem: "has rows that cannot be dequantized".into(),
        });
    }
    Ok((head, table))
}
