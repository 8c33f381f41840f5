//! One linear layer of the slice-based encoders (the Qwen3 embedder, ModernBERT), packed at
//! load for the model's dtype from its parts side by side, with an optional bias.

use super::weights::Weight;
use super::ModelError;
use crate::kernels::{Dtype, Epilogue, KernelLevel, PackedLinear};

/// A linear layer, packed for a dtype.
pub struct Proj(PackedLinear);

impl Proj {
    /// The layer whose weight is `parts` stacked (each `rows × k`), with `biases` (one per
    /// part, of its rows) or none, packed for `dtype`.
    pub fn new(
        parts: Vec<Weight>,
        biases: Option<Vec<Weight>>,
        k: usize,
        dtype: Dtype,
    ) -> Result<Self, ModelError> {
        let b: Vec<f32> = match biases {
            Some(b) => b
                .iter()
                .flat_map(|b| b.as_slice().iter().copied())
                .collect(),
            None => vec![0.0; parts.iter().map(|w| w.shape()[0]).sum()],
        };
        let w: Vec<f32> = match parts.as_slice() {
            [one] => return Self::packed(dtype, one.as_slice(), &b, k),
            _ => parts
                .iter()
                .flat_map(|w| w.as_slice().iter().copied())
                .collect(),
        };
        Self::packed(dtype, &w, &b, k)
    }

    fn packed(dtype: Dtype, w: &[f32], b: &[f32], k: usize) -> Result<Self, ModelError> {
        PackedLinear::pack(dtype, w, b, k)
            .map(Proj)
            .map_err(ModelError::Weights)
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
        self.0.forward(x, m, out, level, threads, Epilogue::Bias)
    }
}
