//! The `qwen3` GGUF architecture (Qwen3 dense models): the Llama family's shared model
//! ([`super::llama_family`]) with rotate-half RoPE, heads of `qwen3.attention.key_length`
//! values (wider than `n_embd / n_head`: Qwen3-0.6B has 16 heads of 128 over 1024), and, as
//! llama.cpp's `qwen3` graph does, an RMSNorm over every query head and every key head
//! (`blk.N.attn_q_norm`, `blk.N.attn_k_norm`, one weight per value of a head, the model's RMS
//! epsilon) before RoPE. No Q/K/V biases in the released models (read when present, as for
//! the whole family).

use super::gguf::{GgufError, GgufFile};
use super::llama_family::{rms_norm_in_place, Arch, Hparams, Model, Rope, RopeStyle};

/// What the `qwen3` architecture adds: its RoPE, and the per-head norms of each layer.
pub struct Qwen3Arch {
    /// One per rotary pair: Qwen3 has no frequency factors.
    ones: Vec<f32>,
}

/// One layer's query and key head norms (`head_dim` weights each).
pub struct QkNorms {
    q: Vec<f32>,
    k: Vec<f32>,
}

impl Arch for Qwen3Arch {
    const NAME: &'static str = "qwen3";
    const ROPE: RopeStyle = RopeStyle::Halves;
    type Layer = QkNorms;

    fn load(_: &GgufFile, hp: &Hparams) -> Result<Self, GgufError> {
        Ok(Self {
            ones: vec![1.0; hp.n_rot / 2],
        })
    }

    fn load_layer(&self, file: &GgufFile, hp: &Hparams, i: usize) -> Result<QkNorms, GgufError> {
        Ok(QkNorms {
            q: file.f32(&format!("blk.{i}.attn_q_norm.weight"), &[hp.head_dim])?,
            k: file.f32(&format!("blk.{i}.attn_k_norm.weight"), &[hp.head_dim])?,
        })
    }

    fn layer_bytes(layer: &QkNorms) -> usize {
        4 * (layer.q.len() + layer.k.len())
    }

    fn rope_freq_factors(&self) -> &[f32] {
        &self.ones
    }

    fn prepare_qk(
        &self,
        norms: &QkNorms,
        hp: &Hparams,
        rope: &Rope,
        r: usize,
        q: &mut [f32],
        k: &mut [f32],
    ) {
        rms_norm_in_place(q, &norms.q, hp.rms_eps);
        rms_norm_in_place(k, &norms.k, hp.rms_eps);
        rope.apply(r, q);
        rope.apply(r, k);
    }
}

/// A Qwen3-architecture model ready to run.
pub type Qwen3 = Model<Qwen3Arch>;
