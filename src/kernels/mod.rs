//! CPU kernels, in one place for every model: the f32 layers (linear, LayerNorm, GELU,
//! attention), and the packed bf16, int16, int8 and 4-/5-/6-bit matmuls, with run-time dispatch over
//! instruction sets. Plain functions on slices: no model format and no tensor library here
//! (the candle ops that run them for the encoder are in `model/bert_ops.rs`).
//!
//! - [`cpu`]: which instruction sets may run ([`KernelLevel`], detected once, optionally capped);
//!   `dispatch.rs` compiles one loop body per instruction set and picks one at run time;
//! - [`linear_f32`]: the f32 linear layer on weights used in place (small heads);
//! - [`f32_packed`]: the f32 linear layer on weights packed at load (the encoders' and
//!   decoders' layers);
//! - [`activations`]: residual + LayerNorm, exact and tanh GELU (on the vectorisable math of
//!   `math.rs`);
//! - [`attention`]: multi-head attention over a fused QKV projection, padding skipped;
//! - [`causal_attention`]: generation's causal attention over a KV cache, blocked over keys
//!   with an online softmax (grouped-query heads, sliding windows, f16 or f32 caches);
//! - [`window_attention`]: bidirectional attention within a window of positions (ModernBERT's
//!   local layers);
//! - [`bf16`], [`int16`], [`int8`]: linear layers on packed low-precision weights, each with an AVX-512,
//!   an AVX2 and a portable path that give the same results (tested against naive references);
//! - [`lowbit`]: linear layers on GGUF's 4- and 5-bit blocks as stored, against int8
//!   activations;
//! - [`sixbit`]: the same for GGUF's Q6_K (AVX2 and portable paths);
//! - [`tiles`]: the loop nest and threading the packed matmuls share;
//! - [`team`]: the threads every parallel section runs on.
//!
//! [`Dtype`] names the weight format a model runs with and [`PackedLinear`] is one linear layer
//! in a packed format.

pub mod activations;
mod aligned;
#[cfg(target_arch = "x86_64")]
mod amx;
pub mod attention;
#[cfg(target_arch = "x86_64")]
mod attention_amx;
#[cfg(all(test, target_arch = "x86_64"))]
mod attention_amx_tests;
pub mod bf16;
pub mod causal_attention;
pub mod cpu;
mod dispatch;
pub mod f32_packed;
pub mod int16;
pub mod int8;
mod kv_value;
pub mod linear_f32;
pub mod lowbit;
mod math;
pub mod rope;
pub mod sixbit;
pub mod team;
#[cfg(test)]
pub(crate) mod test_util;
pub mod tiles;
pub mod window_attention;

use std::fmt;
use std::str::FromStr;

use serde::Serialize;

pub use activations::{add_layer_norm, gelu, gelu_at, gelu_tanh_at, log_sum_exp};
pub use attention::{attention, attention_at, attention_with, AttentionShape, Products};
pub use bf16::Bf16Linear;
pub use causal_attention::{
    causal_attention, causal_attention_heads, CausalShape, KvRows, KvValue,
};
pub use cpu::KernelLevel;
pub use f32_packed::F32Linear;
pub use int16::Int16Linear;
pub use int8::Int8Linear;
pub use linear_f32::{linear, linear_with, LinearPart, MatmulKernel, SMALL_M};
pub use lowbit::{LowBitFormat, LowBitLayout, LowBitLinear};
pub use sixbit::SixBitLinear;
pub use tiles::Epilogue;
pub use window_attention::{window_attention, WindowShape};

/// The number format of a model's linear-layer weights (LayerNorm, softmax, attention and the
/// residual stream always stay in f32).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Dtype {
    F32,
    Bf16,
    /// Integers of ±5,792 per block of 64 (see [`int16`]): twice f32's multiply-adds where
    /// `vpdpwssd` runs, at an error far below bf16's.
    Int16,
    Int8,
}

impl Dtype {
    /// Every dtype.
    pub const ALL: [Dtype; 4] = [Dtype::F32, Dtype::Bf16, Dtype::Int16, Dtype::Int8];

    /// The name used by `--dtype`, `/info` and the logs.
    pub fn name(self) -> &'static str {
        match self {
            Dtype::F32 => "f32",
            Dtype::Bf16 => "bf16",
            Dtype::Int16 => "int16",
            Dtype::Int8 => "int8",
        }
    }
}

impl fmt::Display for Dtype {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Dtype {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        Dtype::ALL
            .into_iter()
            .find(|d| d.name().eq_ignore_ascii_case(s.trim()))
            .ok_or_else(|| format!("unknown dtype {s:?}: expected f32, bf16, int16, int8 or auto"))
    }
}

/// A linear layer whose weights were converted at load into a packed format: f32 in panels,
/// bf16, int16, int8, or GGUF's 4-, 5- and 6-bit blocks.
pub enum PackedLinear {
    F32(F32Linear),
    Bf16(Bf16Linear),
    Int16(Int16Linear),
    Int8(Int8Linear),
    /// GGUF 4- and 5-bit weights kept as they are (generation models).
    LowBit(LowBitLinear),
    /// GGUF Q6_K weights kept as they are (generation models, where
    /// [`sixbit::preferred`]).
    SixBit(SixBitLinear),
    /// Layers of one input stacked along the output, each in its own format: a fused
    /// projection whose tensors a file stores in different types (a `Q4_K_M` file's Q and K
    /// in Q4_K or Q5_0 beside a V in Q6_K or Q8_0), each part kept as its own kernel runs
    /// it rather than all converted to the one format every part can take.
    Stacked(Vec<PackedLinear>),
}

impl PackedLinear {
    /// The number formats the layer runs in, as `/info` and the logs name them (one, or one
    /// per part of a stacked layer).
    pub fn format_names(&self) -> Vec<&'static str> {
        let name = match self {
            PackedLinear::Stacked(parts) => {
                return parts.iter().flat_map(|p| p.format_names()).collect();
            }
            PackedLinear::F32(_) => "f32",
            PackedLinear::Bf16(_) => "bf16",
            PackedLinear::Int16(_) => "int16",
            PackedLinear::Int8(_) => "int8",
            PackedLinear::LowBit(q) => match q.format() {
                LowBitFormat::Q4_0 => "q4_0",
                LowBitFormat::Q4_1 => "q4_1",
                LowBitFormat::Q4K => "q4_k",
                LowBitFormat::Q5_0 => "q5_0",
                LowBitFormat::Q5_1 => "q5_1",
                LowBitFormat::Q5K => "q5_k",
            },
            PackedLinear::SixBit(_) => "q6_k",
        };
        vec![name]
    }

    /// Packs `w` (`n×k`, PyTorch layout, `n = bias.len()`) for `dtype`.
    ///
    /// # Errors
    ///
    /// When the sizes do not fit (see [`F32Linear::pack`], [`Bf16Linear::pack`],
    /// [`Int8Linear::quantize`]).
    pub fn pack(dtype: Dtype, w: &[f32], bias: &[f32], k: usize) -> Result<Self, String> {
        Ok(match dtype {
            Dtype::F32 => PackedLinear::F32(F32Linear::pack(w, bias, k)?),
            Dtype::Bf16 => PackedLinear::Bf16(Bf16Linear::pack(w, bias, k)?),
            Dtype::Int16 => PackedLinear::Int16(Int16Linear::quantize(w, bias, k)?),
            Dtype::Int8 => PackedLinear::Int8(Int8Linear::quantize(w, bias, k)?),
        })
    }

    /// Output columns.
    pub fn n(&self) -> usize {
        match self {
            PackedLinear::F32(l) => l.n(),
            PackedLinear::Bf16(l) => l.n(),
            PackedLinear::Int16(l) => l.n(),
            PackedLinear::Int8(l) => l.n(),
            PackedLinear::LowBit(l) => l.n(),
            PackedLinear::SixBit(l) => l.n(),
            PackedLinear::Stacked(parts) => parts.iter().map(|p| p.n()).sum(),
        }
    }

    /// Input columns.
    pub fn k(&self) -> usize {
        match self {
            PackedLinear::F32(l) => l.k(),
            PackedLinear::Bf16(l) => l.k(),
            PackedLinear::Int16(l) => l.k(),
            PackedLinear::Int8(l) => l.k(),
            PackedLinear::LowBit(l) => l.k(),
            PackedLinear::SixBit(l) => l.k(),
            PackedLinear::Stacked(parts) => parts.first().map_or(0, |p| p.k()),
        }
    }

    /// Rows a caller running a large batch in blocks should pass to one [`Self::forward`] at
    /// a time: each call reads the weights once per chunk of its rows. On AMX tiles the
    /// products outrun the caches, so a chunk of [`bf16::AMX_CHUNK_ROWS`] rows reads them a
    /// quarter as often as the other paths' [`tiles::CHUNK_ROWS`].
    pub fn block_rows(&self, level: KernelLevel) -> usize {
        match self {
            PackedLinear::Bf16(_) if level.min(KernelLevel::detected()) >= KernelLevel::Amx => {
                bf16::AMX_CHUNK_ROWS
            }
            PackedLinear::Stacked(parts) => parts
                .iter()
                .map(|p| p.block_rows(level))
                .max()
                .unwrap_or(tiles::CHUNK_ROWS),
            _ => tiles::CHUNK_ROWS,
        }
    }

    /// Bytes held.
    pub fn bytes(&self) -> usize {
        match self {
            PackedLinear::F32(l) => l.bytes(),
            PackedLinear::Bf16(l) => l.bytes(),
            PackedLinear::Int16(l) => l.bytes(),
            PackedLinear::Int8(l) => l.bytes(),
            PackedLinear::LowBit(l) => l.bytes(),
            PackedLinear::SixBit(l) => l.bytes(),
            PackedLinear::Stacked(parts) => parts.iter().map(|p| p.bytes()).sum(),
        }
    }

    /// `out[m×n] = x[m×k] · Wᵀ + b`, then the epilogue (see [`F32Linear::forward`],
    /// [`Bf16Linear::forward`], [`Int8Linear::forward`]).
    pub fn forward(
        &self,
        x: &[f32],
        m: usize,
        out: &mut [f32],
        level: KernelLevel,
        threads: usize,
        epilogue: Epilogue,
    ) {
        match self {
            PackedLinear::F32(l) => l.forward(x, m, out, level, threads, epilogue),
            PackedLinear::Bf16(l) => l.forward(x, m, out, level, threads, epilogue),
            PackedLinear::Int16(l) => l.forward(x, m, out, level, threads, epilogue),
            PackedLinear::Int8(l) => l.forward(x, m, out, level, threads, epilogue),
            PackedLinear::LowBit(l) => l.forward(x, m, out, level, threads, epilogue),
            PackedLinear::SixBit(l) => l.forward(x, m, out, level, threads, epilogue),
            PackedLinear::Stacked(parts) => {
                let n = self.n();
                assert_eq!(
                    Some(out.len()),
                    m.checked_mul(n),
                    "stacked linear: output size"
                );
                let mut col = 0;
                for part in parts {
                    // Each part into its own rows, then into its columns of `out` (an epilogue
                    // is per element, so it runs alike on the parts).
                    let w = part.n();
                    let mut own = vec![0.0f32; m * w];
                    part.forward(x, m, &mut own, level, threads, epilogue);
                    for (row, from) in out.chunks_exact_mut(n).zip(own.chunks_exact(w)) {
                        row[col..col + w].copy_from_slice(from);
                    }
                    col += w;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::test_util::test_values;
    use super::*;

    /// A stacked layer's output is each part's output in its own columns, whatever the parts'
    /// formats, epilogue, rows and threads.
    #[test]
    fn a_stacked_layer_puts_each_part_in_its_columns() {
        let k = 64;
        let q5 = |n: usize, seed: u64| {
            // Q5_0 blocks: a scale, then 20 random bytes (fifth bits and nibbles).
            let v = test_values(seed, n * k / 32 * 22);
            let mut bytes = Vec::new();
            for (i, x) in v.iter().enumerate() {
                if i % 22 == 0 {
                    bytes.extend_from_slice(
                        &half::f16::from_f32(0.01 + 0.02 * x.abs()).to_le_bytes(),
                    );
                } else if i % 22 > 1 {
                    bytes.push(((x + 1.0) * 127.9) as u8);
                }
            }
            let b = test_values(seed + 1, n);
            PackedLinear::LowBit(
                LowBitLinear::from_blocks(LowBitFormat::Q5_0, &bytes, &b, k).unwrap(),
            )
        };
        let packed = |dtype, n: usize, seed: u64| {
            let (w, b) = (test_values(seed, n * k), test_values(seed + 1, n));
            PackedLinear::pack(dtype, &w, &b, k).unwrap()
        };
        let parts = || {
            vec![
                q5(40, 1),
                packed(Dtype::Int8, 17, 3),
                packed(Dtype::F32, 16, 5),
            ]
        };
        let stacked = PackedLinear::Stacked(parts());
        assert_eq!((stacked.n(), stacked.k()), (73, k));
        assert_eq!(stacked.format_names(), ["q5_0", "int8", "f32"]);
        let bytes: usize = parts().iter().map(|p| p.bytes()).sum();
        assert_eq!(stacked.bytes(), bytes);
        for m in [1, 5, 70] {
            let x = test_values(7, m * k);
            for epilogue in [Epilogue::Bias, Epilogue::BiasGelu] {
                let mut want = vec![0.0; m * 73];
                let mut col = 0;
                for part in parts() {
                    let w = part.n();
                    let mut own = vec![0.0; m * w];
                    part.forward(&x, m, &mut own, KernelLevel::detected(), 1, epilogue);
                    for r in 0..m {
                        want[r * 73 + col..][..w].copy_from_slice(&own[r * w..][..w]);
                    }
                    col += w;
                }
                for threads in [1, 2] {
                    let mut got = vec![f32::NAN; m * 73];
                    stacked.forward(&x, m, &mut got, KernelLevel::detected(), threads, epilogue);
                    assert_eq!(got, want, "{m} rows, {threads} threads");
                }
            }
        }
    }

    #[test]
    fn the_gelu_epilogue_equals_gelu_after_the_bias() {
        for dtype in Dtype::ALL {
            for (m, n, k) in [(1, 16, 8), (5, 40, 33), (100, 48, 64)] {
                let x = test_values(41, m * k);
                let w = test_values(42, n * k);
                let b = test_values(43, n);
                let layer = PackedLinear::pack(dtype, &w, &b, k).unwrap();
                for level in KernelLevel::ALL {
                    if level > KernelLevel::detected() {
                        continue;
                    }
                    let mut want = vec![0.0; m * n];
                    layer.forward(&x, m, &mut want, level, 1, Epilogue::Bias);
                    // The epilogue runs the GELU of its level (paths differ in the last bit).
                    gelu_at(&mut want, level);
                    for threads in [1, 2] {
                        let mut got = vec![f32::NAN; m * n];
                        layer.forward(&x, m, &mut got, level, threads, Epilogue::BiasGelu);
                        assert_eq!(got, want, "{dtype} {m}×{n}×{k} on {level}");
                    }
                }
            }
        }
    }
}
