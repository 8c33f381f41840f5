//! The `llama` GGUF architecture (Llama 2/3, SmolLM2, TinyLlama, …): the Llama family's
//! shared model ([`super::llama_family`]) with llama.cpp's adjacent-pair RoPE (its converter
//! permutes Q and K rows for it) and Llama 3.1's per-pair frequency factors
//! (`rope_freqs.weight`), when the file has them.

use super::gguf::{GgufError, GgufFile};
use super::llama_family::{Arch, Hparams, Model, RopeStyle};

/// What the `llama` architecture adds: the frequency factors.
pub struct LlamaArch {
    /// Per rotary pair: the divisor of its frequency (`rope_freqs.weight`), or 1.
    rope_freq_factors: Vec<f32>,
}

impl Arch for LlamaArch {
    const NAME: &'static str = "llama";
    const ROPE: RopeStyle = RopeStyle::Adjacent;
    type Layer = ();

    fn load(file: &GgufFile, hp: &Hparams) -> Result<Self, GgufError> {
        let pairs = hp.n_rot / 2;
        let rope_freq_factors = if file.has_tensor("rope_freqs.weight") {
            file.f32("rope_freqs.weight", &[pairs])?
        } else {
            vec![1.0; pairs]
        };
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

/// A Llama-architecture model ready to run.
pub type Llama = Model<LlamaArch>;
