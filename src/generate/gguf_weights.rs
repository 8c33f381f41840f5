//! A GGUF decoder's tensors converted for the kernels (`crate::kernels`): its linear layers
//! ([`load_linear`]: 4- and 5-bit blocks kept as stored, Q6_K too where
//! [`kernels::sixbit::preferred`], Q8_0 taken as int8 exactly, the rest dequantized a row at a
//! time and packed), and its LM head with the token embedding table. Each tensor's pages in
//! the file are dropped once converted (`GgufFile::release`).
//!
//! Why the head and the table together: most small models tie them (no `output.weight`: the
//! head is the embedding table), and the table is the largest tensor (Gemma 3 1B's 262,144 ×
//! 1,152). The head is converted for the kernels and the table kept as stored, a row
//! dequantized per token, so a tied table would be held twice. When the head keeps the
//! file's values exactly (a Q8_0 table as int8, a Q6_K table as stored), a token's row is
//! read back from the head: the same f32 values bit for bit, one copy instead of two (Gemma 3
//! 1B Q4_K_M: 321 MB less; Qwen3-0.6B Q4_K_M, whose table is Q6_K: 128 MB less).

use candle_core::quantized::GgmlDType;

use super::decoder::Linear;
use super::gguf::{GgufError, GgufFile, RawTensor};
use crate::kernels::{self, Dtype, LowBitFormat, LowBitLinear, PackedLinear, SixBitLinear};

/// Where a token's embedding row is read from.
pub(super) enum TokenEmbeddings {
    /// The table as stored in the file, a row dequantized per token.
    Stored(RawTensor),
    /// The rows of the tied LM head, which holds the file's table exactly (its Q8_0 as
    /// int8, or its Q6_K as stored); the table's type, for `/info`.
    TiedHead(GgmlDType),
}

impl TokenEmbeddings {
    /// Token `id`'s row (`d` values); `None` when out of range.
    pub(super) fn row(&self, head: &Linear, id: usize) -> Option<Vec<f32>> {
        match (self, head) {
            (TokenEmbeddings::Stored(t), _) => t.row(id),
            (TokenEmbeddings::TiedHead(_), PackedLinear::Int8(l)) => l.weight_row(id),
            (TokenEmbeddings::TiedHead(_), PackedLinear::SixBit(l)) => l.weight_row(id),
            // `load` makes `TiedHead` only beside an int8 or a Q6_K head.
            (TokenEmbeddings::TiedHead(_), _) => None,
        }
    }

    /// Bytes held beside the head.
    pub(super) fn bytes(&self) -> usize {
        match self {
            TokenEmbeddings::Stored(t) => t.bytes.len(),
            TokenEmbeddings::TiedHead(_) => 0,
        }
    }

    /// How `/info` describes it.
    pub(super) fn describe(&self) -> String {
        match self {
            TokenEmbeddings::Stored(t) => format!(
                "{} as stored, a row dequantized per token",
                format!("{:?}", t.dtype).to_lowercase()
            ),
            TokenEmbeddings::TiedHead(dtype) => {
                let (table, head) = match dtype {
                    GgmlDType::Q8_0 => ("q8_0", "int8"),
                    _ => ("q6_k", "q6_k"),
                };
                format!("{table}, read from the tied {head} LM head's rows (the same values)")
            }
        }
    }
}

/// The LM head (`output.weight`, or the embedding table when tied) converted for `dtype`
/// and `keep_low_bit` as [`load_linear`] does, and the embedding table (`vocab × d`).
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
    keep_low_bit: bool,
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
        keep_low_bit,
    )?;
    let table_type = file.tensor_type(TABLE);
    let from_head = tied
        && matches!(
            (table_type, &head),
            (Some(GgmlDType::Q8_0), PackedLinear::Int8(_))
                | (Some(GgmlDType::Q6K), PackedLinear::SixBit(_))
        );
    let table = if let (true, Some(dtype)) = (from_head, table_type) {
        TokenEmbeddings::TiedHead(dtype)
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

/// Loads the linear layer made of `parts` (tensor name, rows) stacked, each `rows × k`, with
/// `bias` (`None`: zeros): as stored when they are all of one 4- or 5-bit format (Q4_0, Q4_1,
/// Q4_K, Q5_0, Q5_1, Q5_K), or Q6_K where [`kernels::sixbit::preferred`], and
/// `keep_low_bit`; as int8 exactly when all Q8_0 and `dtype` is int8; else dequantized and
/// packed as `dtype`. Parts of different formats, some of them kept as stored, are converted
/// a run of one format at a time and stacked ([`PackedLinear::Stacked`]).
pub(super) fn load_linear(
    file: &GgufFile,
    parts: &[(String, usize)],
    k: usize,
    bias: Option<Vec<f32>>,
    dtype: Dtype,
    keep_low_bit: bool,
) -> Result<Linear, GgufError> {
    let layer = convert_linear(file, parts, k, bias, dtype, keep_low_bit);
    // Converted (or failed): its bytes in the file are not read again.
    for (name, _) in parts {
        file.release(name);
    }
    layer
}

/// A GGUF type the kernels run as stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kept {
    LowBit(LowBitFormat),
    Q6K,
}

/// [`load_linear`] but for releasing the file's pages.
fn convert_linear(
    file: &GgufFile,
    parts: &[(String, usize)],
    k: usize,
    bias: Option<Vec<f32>>,
    dtype: Dtype,
    keep_low_bit: bool,
) -> Result<Linear, GgufError> {
    let kept = |t| match t {
        Some(GgmlDType::Q4_0) => Some(Kept::LowBit(LowBitFormat::Q4_0)),
        Some(GgmlDType::Q4_1) => Some(Kept::LowBit(LowBitFormat::Q4_1)),
        Some(GgmlDType::Q4K) => Some(Kept::LowBit(LowBitFormat::Q4K)),
        Some(GgmlDType::Q5_0) => Some(Kept::LowBit(LowBitFormat::Q5_0)),
        Some(GgmlDType::Q5_1) => Some(Kept::LowBit(LowBitFormat::Q5_1)),
        Some(GgmlDType::Q5K) => Some(Kept::LowBit(LowBitFormat::Q5K)),
        Some(GgmlDType::Q6K) if kernels::sixbit::preferred() => Some(Kept::Q6K),
        _ => None,
    };
    let types: Vec<_> = parts
        .iter()
        .map(|(name, _)| file.tensor_type(name))
        .collect();
    let formats: Vec<_> = types.iter().map(|&t| kept(t)).collect();
    let n: usize = parts.iter().map(|p| p.1).sum();
    let bias = bias.unwrap_or_else(|| vec![0.0; n]);
    let name = parts
        .iter()
        .map(|p| p.0.as_str())
        .collect::<Vec<_>>()
        .join("+");
    let error = |problem: String| GgufError::Tensor {
        path: file.path().to_path_buf(),
        name: name.clone(),
        problem,
    };
    if keep_low_bit
        && formats.iter().any(Option::is_some)
        && formats.windows(2).any(|w| w[0] != w[1])
    {
        // Parts in different formats (a `Q4_K_M` file's Q and K in Q4_K or Q5_0 beside a V in
        // Q6_K or Q8_0): each run of parts of one kept format (or of none) is converted on
        // its own, so the kept parts stay as stored, and the runs are stacked.
        let mut runs = Vec::new();
        let (mut i, mut row) = (0, 0);
        while i < parts.len() {
            let end = (i..parts.len())
                .find(|&j| formats[j] != formats[i])
                .unwrap_or(parts.len());
            let rows: usize = parts[i..end].iter().map(|p| p.1).sum();
            let run_bias = bias[row..row + rows].to_vec();
            runs.push(convert_linear(
                file,
                &parts[i..end],
                k,
                Some(run_bias),
                dtype,
                keep_low_bit,
            )?);
            (i, row) = (end, row + rows);
        }
        return Ok(PackedLinear::Stacked(runs));
    }
    if let (true, Some(Some(format))) = (keep_low_bit, formats.first()) {
        if formats.iter().all(|f| *f == Some(*format)) {
            let mut stacked = Vec::with_capacity(parts.len());
            for (name, rows) in parts {
                stacked.push(file.bytes(name, &[*rows, k])?.0);
            }
            return Ok(match *format {
                Kept::LowBit(format) => PackedLinear::LowBit(
                    LowBitLinear::from_parts(format, &stacked, &bias, k).map_err(error)?,
                ),
                Kept::Q6K => PackedLinear::SixBit(
                    SixBitLinear::from_parts(&stacked, &bias, k).map_err(error)?,
                ),
            });
        }
    }
    if dtype == Dtype::Int8 && types.iter().all(|t| *t == Some(GgmlDType::Q8_0)) {
        // Q8_0 is the int8 kernel's own format: taken as stored, exactly.
        // One tensor (the LM head, the largest) is read in place; stacked ones are joined.
        let bytes: std::borrow::Cow<[u8]> = match parts {
            [(name, rows)] => file.bytes(name, &[*rows, k])?.0.into(),
            _ => {
                let mut joined = Vec::new();
                for (name, rows) in parts {
                    joined.extend_from_slice(file.bytes(name, &[*rows, k])?.0);
                }
                joined.into()
            }
        };
        let layer = kernels::Int8Linear::from_q8_0(&bytes, &bias, k).map_err(error)?;
        return Ok(PackedLinear::Int8(layer));
    }
    if dtype == Dtype::Int8 {
        // Row by row: never the whole weight in f32 (the LM head of a 150k-token vocabulary
        // is 600 MB of it, at the peak of loading).
        let mut rows: Vec<(&[u8], GgmlDType)> = Vec::with_capacity(n);
        for (name, count) in parts {
            let (bytes, t) = file.bytes(name, &[*count, k])?;
            rows.extend(bytes.chunks_exact(bytes.len() / count).map(|r| (r, t)));
        }
        let bad = std::sync::Mutex::new(None);
        let layer = kernels::Int8Linear::quantize_rows(&bias, k, |c| {
            let (row, t) = rows[c];
            let why = match super::gguf::dequantize(t, row, k) {
                Ok(v) if v.iter().all(|x| x.is_finite()) => return v,
                Ok(_) => "holds NaN or infinite values".to_string(),
                Err(e) => format!("cannot be dequantized: {e}"),
            };
            *bad.lock().unwrap_or_else(|p| p.into_inner()) = Some(why);
            vec![0.0; k]
        })
        .map_err(&error)?;
        if let Some(why) = bad.into_inner().unwrap_or_else(|p| p.into_inner()) {
            return Err(error(why));
        }
        return Ok(PackedLinear::Int8(layer));
    }
    let mut w = Vec::with_capacity(n * k);
    for (name, rows) in parts {
        w.extend(file.f32(name, &[*rows, k])?);
    }
    PackedLinear::pack(dtype, &w, &bias, k).map_err(error)
}
