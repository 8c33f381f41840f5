//! A token-embedding table read row by row, for the unpadded encoders (the Qwen3 embedder,
//! ModernBERT): f32 as [`Weight`] gives it (in place from the mapping, or converted), or a
//! bf16 table read straight from the mapping, each row widened to f32 as a batch gathers it.
//! A checkpoint stored in bf16 (Qwen3-Embedding) then never holds its table in f32: a
//! 151,669 × 1,024 table is 621 MB converted, and only the pages of the rows used are read.

use std::sync::Arc;

use memmap2::Mmap;
use safetensors::tensor::Dtype;

use super::weights::{bf16_le, Names, Weight};
use super::ModelError;

/// The rows of a `rows × cols` embedding table.
pub enum EmbeddingTable {
    F32 {
        weight: Weight,
        cols: usize,
    },
    /// bf16 values at byte `start` of the mapping.
    Bf16 {
        map: Arc<Mmap>,
        start: usize,
        rows: usize,
        cols: usize,
    },
}

impl EmbeddingTable {
    /// Table `name` of `names`, checked to be `rows × cols`: bf16 read in place, any other
    /// dtype as an f32 [`Weight`].
    pub(super) fn load(
        names: &Names<'_>,
        name: &str,
        rows: usize,
        cols: usize,
    ) -> Result<Self, ModelError> {
        let (file, full) = names.full(name);
        let raw = file.raw(&full)?;
        if raw.dtype != Dtype::BF16 {
            let weight = names.get(name, &[rows, cols])?;
            return Ok(EmbeddingTable::F32 { weight, cols });
        }
        if raw.shape != [rows, cols] {
            return Err(ModelError::Weights(format!(
                "{}: {full} has shape {:?}, config.json implies {:?}",
                file.path().display(),
                raw.shape,
                [rows, cols]
            )));
        }
        Ok(EmbeddingTable::Bf16 {
            map: file.map().clone(),
            start: raw.start,
            rows,
            cols,
        })
    }

    /// Appends row `id` (as f32) to `out`; `false` when the table has no such row.
    pub fn push_row(&self, id: usize, out: &mut Vec<f32>) -> bool {
        match self {
            EmbeddingTable::F32 { weight, cols } => {
                match weight.as_slice().get(id * cols..(id + 1) * cols) {
                    Some(row) => {
                        out.extend_from_slice(row);
                        true
                    }
                    None => false,
                }
            }
            EmbeddingTable::Bf16 {
                map,
                start,
                rows,
                cols,
            } => {
                if id >= *rows {
                    return false;
                }
                let at = start + id * cols * 2;
                out.extend(map[at..at + cols * 2].chunks_exact(2).map(bf16_le));
                true
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::weights::WeightFile;
    use safetensors::tensor::TensorView;

    /// A safetensors file of a 5 × 3 table in bf16, the same values in f16 and f32, written
    /// under the temporary directory; with the values.
    fn tables() -> (std::path::PathBuf, Vec<f32>) {
        // Values bf16 and f16 both hold exactly.
        let values: Vec<f32> = (0..15).map(|i| (i as f32 - 7.0) * 0.25).collect();
        let bf16: Vec<u8> = values
            .iter()
            .flat_map(|v| half::bf16::from_f32(*v).to_le_bytes())
            .collect();
        let f16: Vec<u8> = values
            .iter()
            .flat_map(|v| half::f16::from_f32(*v).to_le_bytes())
            .collect();
        let f32: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        let views = [
            (
                "bf16",
                TensorView::new(Dtype::BF16, vec![5, 3], &bf16).unwrap(),
            ),
            (
                "f16",
                TensorView::new(Dtype::F16, vec![5, 3], &f16).unwrap(),
            ),
            (
                "f32",
                TensorView::new(Dtype::F32, vec![5, 3], &f32).unwrap(),
            ),
        ];
        let bytes = safetensors::serialize(views, None).unwrap();
        let path = std::env::temp_dir().join(format!(
            "zerobatch-embedding-table-{}.safetensors",
            std::process::id()
        ));
        std::fs::write(&path, bytes).unwrap();
        (path, values)
    }

    #[test]
    fn rows_are_the_stored_values_in_every_dtype_and_bf16_stays_mapped() {
        let (path, values) = tables();
        let file = WeightFile::open(&path).unwrap();
        let names = Names::unprefixed(&file);
        for dtype in ["bf16", "f16", "f32"] {
            // Converted whole (the linear layers' path) ...
            assert_eq!(file.get(dtype).unwrap().as_slice(), values, "{dtype}");
            // ... and gathered row by row.
            let table = EmbeddingTable::load(&names, dtype, 5, 3).unwrap();
            assert_eq!(
                matches!(table, EmbeddingTable::Bf16 { .. }),
                dtype == "bf16",
                "{dtype}"
            );
            let mut out = Vec::new();
            for id in [4, 0, 2] {
                assert!(table.push_row(id, &mut out), "{dtype} row {id}");
            }
            let want: Vec<f32> = [4, 0, 2]
                .iter()
                .flat_map(|&r| values[r * 3..r * 3 + 3].to_vec())
                .collect();
            assert_eq!(out, want, "{dtype}");
            assert!(!table.push_row(5, &mut out), "{dtype}: a row past the end");
            let err = EmbeddingTable::load(&names, dtype, 3, 5)
                .err()
                .unwrap()
                .to_string();
            assert!(err.contains("config.json implies [3, 5]"), "{dtype}: {err}");
        }
        std::fs::remove_file(path).unwrap();
    }
}
