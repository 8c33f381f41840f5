//! The `qwen2` GGUF architecture (Qwen2, Qwen2.5 and their fine-tunes): the Llama family's
//! shared model ([`super::llama_family`]) with biases on the Q, K and V projections (read
//! there, for every architecture of the family, as llama.cpp does) and rotate-half RoPE
//! (llama.cpp's `LLAMA_ROPE_TYPE_NEOX`: the converter stores Qwen's Q and K rows as trained,
//! unpermuted). Nothing else differs from llama.cpp's `llama` graph; no per-pair frequency
//! factors.

use super::gguf::{GgufError, GgufFile};
use super::llama_family::{Arch, Hparams, Model, RopeStyle};

/// What the `qwen2` architecture adds: only its RoPE.
pub struct Qwen2Arch {
    /// One per rotary pair: Qwen2 has no frequency factors.
    ones: Vec<f32>,
}

impl Arch for Qwen2Arch {
    const NAME: &'static str = "qwen2";
    const ROPE: RopeStyle = RopeStyle::Halves;
    type Layer = ();

    fn load(_: &GgufFile, hp: &Hparams) -> Result<Self, GgufError> {
        Ok(Self {
            ones: vec![1.0; hp.n_rot / 2],
        })
    }

    fn load_layer(&self, _: &GgufFile, _: &Hparams, _: usize) -> Result<(), GgufError> {
        Ok(())
    }

    fn layer_bytes(_: &()) -> usize {
        0
    }

    fn rope_freq_factors(&self) -> &[f32] {
        &self.ones
    }
}

/// A Qwen2-architecture model ready to run.
pub type Qwen2 = Model<Qwen2Arch>;
