//! One linear layer of the slice-based encoders (the Qwen3 embedder, ModernBERT): f32 in
//! place from the weight file's mapping (its parts side by side), or packed for the bf16 and
//! int8 kernels of `crate::kernels`, with an optional bias.

use super::weights::Weight;
use super::ModelError;
use crate::kernels::{linear, Dtype, Epilogue, KernelLevel, LinearPart, PackedLinear};

/// A linear layer: f32 weights used in place, or packed for a dtype.
pub enum Proj {
    F32 {
        parts: Vec<Weight>,
        /// Each part's bias (zeros for a layer without one).
        biases: Vec<Vec<f32>>,
    },
    Packed(PackedLinear),
}

impl Proj {
    /// The layer whose weight is `parts` stacked (each `rows × k`), with `biases` (one per
    /// part, of its rows) or none, packed for `dtype` (f32: read in place).
    pub fn new(
        parts: Vec<Weight>,
        biases: Option<Vec<Weight>>,
        k: usize,
        dtype: Dtype,
    ) -> Result<Self, ModelError> {
        let biases: Vec<Vec<f32>> = match biases {
            Some(b) => b.iter().map(|b| b.as_slice().to_vec()).collect(),
            None => parts.iter().map(|w| vec![0.0; w.shape()[0]]).collect(),
        };
        if dtype == Dtype::F32 {
            return Ok(Proj::F32 { parts, biases });
        }
        let w: Vec<f32> = parts
            .iter()
            .flat_map(|w| w.as_slice().iter().copied())
            .collect();
        let b: Vec<f32> = biases.concat();
        PackedLinear::pack(dtype, &w, &b, k)
            .map_err(ModelError::Weights)?
            .map(Proj::Packed)
            .ok_or_else(|| ModelError::Weights(format!("{dtype} packs nothing")))
    }

    /// `out[m×n] = x[m×k] · Wᵀ + b`.
    pub fn forward(
        &self,
        x: &[f32],
        m: usize,
        out: &mut [f32],
        level: KernelLevel,
        threads: usize,
    ) {
        match self {
            Proj::F32 { parts, biases } => {
                let k = x.len() / m;
                let parts: Vec<LinearPart> = parts
                    .iter()
                    .zip(biases)
                    .map(|(w, b)| LinearPart { w: w.as_slice(), b })
                    .collect();
                linear(x, m, k, &parts, out, threads);
            }
            Proj::Packed(p) => p.forward(x, m, out, level, threads, Epilogue::Bias),
        }
    }
}
