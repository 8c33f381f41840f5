//! The encoder's layers as candle custom ops, each running one of our kernels
//! (`crate::kernels`) on the tensors `bert.rs` passes between layers.
//!
//! Why not candle's stock ops: at the sizes an embedding server sees (a few to a few hundred
//! tokens per batch) a transformer layer is dominated not by its matmuls but by what surrounds
//! them: a fresh tensor per element-wise op, scalar `erf` in GELU, transposes to split heads and
//! an additive attention mask that computes scores for padding only to throw them away. Here:
//! - `Linear` is one kernel call with the bias folded into the destination (no broadcast add)
//!   and GELU optionally fused, with intra-op parallelism chosen per call by the worker (see
//!   `embed/worker.rs`);
//! - `AddLayerNorm` adds the residual and normalises in one pass over the row;
//! - `Attention` reads heads straight out of the fused QKV projection and only visits the real
//!   (unpadded) tokens of each sequence, which is exact masking at no cost.
//!
//! Every op checks every size (without overflow) and returns a candle error rather than let a
//! kernel assert.

use candle_core::{CpuStorage, CustomOp1, CustomOp2, Layout, Result, Shape};

use crate::kernels::{
    self, add_layer_norm, attention_with, gelu_at, linear, AttentionShape, Epilogue, KernelLevel,
    LinearPart, PackedLinear, Products,
};

/// The f32 values of a contiguous tensor (`what` names it in errors).
fn contiguous<'a>(s: &'a CpuStorage, l: &Layout, what: &str) -> Result<&'a [f32]> {
    let data = s.as_slice::<f32>()?;
    match l.contiguous_offsets() {
        Some((start, end)) => match data.get(start..end) {
            Some(data) => Ok(data),
            None => candle_core::bail!("{what}: layout {l:?} outside its storage"),
        },
        None => candle_core::bail!("{what}: expected a contiguous f32 tensor"),
    }
}

/// The weights of a [`Linear`] op: f32 parts read in place, or one packed layer (bf16 or
/// int8) run on the given kernel path.
#[derive(Clone, Copy)]
pub enum LinearWeights<'a> {
    F32(&'a [LinearPart<'a>]),
    Packed(&'a PackedLinear),
}

/// A linear layer as a candle op: `x[m×k] → [m × Σn]`, see [`linear`] and
/// [`PackedLinear::forward`].
pub struct Linear<'a> {
    pub weights: LinearWeights<'a>,
    /// Threads the matmul may use for this call (1: run on the calling thread only).
    pub threads: usize,
    /// Whether GELU follows (fused into the packed layers' store; a pass after f32 ones).
    pub gelu: bool,
    /// The kernel path of packed layers, and the widest vectors of GELU.
    pub level: KernelLevel,
}

impl CustomOp1 for Linear<'_> {
    fn name(&self) -> &'static str {
        "zerobatch-linear"
    }

    fn cpu_fwd(&self, xs: &CpuStorage, xl: &Layout) -> Result<(CpuStorage, Shape)> {
        let (m, k) = xl.shape().dims2()?;
        let n = match self.weights {
            LinearWeights::F32(parts) => {
                let Some(n) = kernels::linear_f32::output_width(parts) else {
                    candle_core::bail!("linear: the output width overflows usize")
                };
                if parts
                    .iter()
                    .any(|p| p.b.len().checked_mul(k) != Some(p.w.len()))
                {
                    candle_core::bail!("linear: input {:?} does not fit the weights", xl.shape());
                }
                n
            }
            LinearWeights::Packed(p) => {
                if p.k() != k {
                    candle_core::bail!("linear: input {:?} does not fit the weights", xl.shape());
                }
                p.n()
            }
        };
        let x = contiguous(xs, xl, "linear input")?;
        if m.checked_mul(k) != Some(x.len()) {
            candle_core::bail!("linear: input {:?} has {} values", xl.shape(), x.len());
        }
        let Some(size) = m.checked_mul(n) else {
            candle_core::bail!("linear: output {m}×{n} overflows usize")
        };
        let mut out = vec![0.0f32; size];
        match self.weights {
            LinearWeights::F32(parts) => {
                linear(x, m, k, parts, &mut out, self.threads);
                if self.gelu {
                    gelu_at(&mut out, self.level);
                }
            }
            LinearWeights::Packed(p) => {
                let epilogue = if self.gelu {
                    Epilogue::BiasGelu
                } else {
                    Epilogue::Bias
                };
                p.forward(x, m, &mut out, self.level, self.threads, epilogue)
            }
        }
        Ok((CpuStorage::F32(out), Shape::from((m, n))))
    }
}

/// `(x, residual) → LayerNorm(x + residual)` with the given weights.
pub struct AddLayerNorm<'a> {
    pub gamma: &'a [f32],
    pub beta: &'a [f32],
    pub eps: f32,
}

impl CustomOp2 for AddLayerNorm<'_> {
    fn name(&self) -> &'static str {
        "zerobatch-add-layer-norm"
    }

    fn cpu_fwd(
        &self,
        xs: &CpuStorage,
        xl: &Layout,
        rs: &CpuStorage,
        rl: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let mut x = contiguous(xs, xl, "layer norm input")?.to_vec();
        let r = contiguous(rs, rl, "layer norm residual")?;
        let h = self.gamma.len();
        if h == 0 || x.len() % h != 0 || r.len() % h != 0 || r.is_empty() || self.beta.len() != h {
            candle_core::bail!("layer norm: shapes {:?} {:?}", xl.shape(), rl.shape());
        }
        add_layer_norm(&mut x, r, self.gamma, self.beta, self.eps);
        Ok((CpuStorage::F32(x), xl.shape().clone()))
    }
}

/// `qkv[batch·seq × 3h] → [batch·seq × h]`, see [`attention`].
pub struct Attention {
    pub shape: AttentionShape,
    pub threads: usize,
    /// The widest vectors to use.
    pub level: KernelLevel,
    /// The precision of the two products (bf16 for the bf16 and int8 models).
    pub products: Products,
}

impl CustomOp1 for Attention {
    fn name(&self) -> &'static str {
        "zerobatch-attention"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let qkv = contiguous(s, l, "attention input")?;
        let shape = &self.shape;
        let Some(sizes) = shape.sizes() else {
            candle_core::bail!("attention: the sizes of {shape:?} overflow usize")
        };
        if qkv.len() != sizes.qkv {
            candle_core::bail!("attention: input {:?} does not fit {shape:?}", l.shape());
        }
        if !shape.lengths_fit() {
            candle_core::bail!("attention: lengths outside 1..=seq_len in {shape:?}");
        }
        let mut out = vec![0.0f32; sizes.out];
        attention_with(
            qkv,
            &mut out,
            shape,
            self.threads,
            self.level,
            self.products,
        );
        Ok((
            CpuStorage::F32(out),
            Shape::from((sizes.rows, sizes.hidden)),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The candle ops return errors for sizes the kernels would refuse, never write.
    #[test]
    fn the_candle_ops_return_errors_for_bad_sizes() {
        use candle_core::{Device, Tensor};
        let qkv = Tensor::from_vec(vec![0.0f32; 6], (1, 6), &Device::Cpu).unwrap();
        for (heads, head_dim, seq_len, lengths) in [
            ((1usize << 63) + 1, 2, 1, vec![1]),
            (1, 2, usize::MAX, vec![1, 1]),
            (1, 2, 1, vec![2]),
            (1, 2, 1, vec![0]),
            (1, 4, 1, vec![1]),
        ] {
            let op = Attention {
                shape: AttentionShape {
                    seq_len,
                    heads,
                    head_dim,
                    lengths,
                },
                threads: 1,
                level: KernelLevel::detected(),
                products: Products::F32,
            };
            assert!(qkv.apply_op1_no_bwd(&op).is_err(), "{:?}", op.shape);
        }
        let x = Tensor::from_vec(vec![1.0f32; 6], (2, 3), &Device::Cpu).unwrap();
        let (w, b) = (vec![0.5f32; 8], vec![0.0f32; 2]);
        let parts = [LinearPart { w: &w, b: &b }];
        let op = Linear {
            weights: LinearWeights::F32(&parts),
            threads: 1,
            gelu: false,
            level: KernelLevel::detected(),
        };
        assert!(
            x.apply_op1_no_bwd(&op).is_err(),
            "weights for k = 4, input k = 3"
        );
        let w = vec![0.5f32; 6];
        let parts = [LinearPart { w: &w, b: &b }];
        let op = Linear {
            weights: LinearWeights::F32(&parts),
            threads: 1,
            gelu: false,
            level: KernelLevel::detected(),
        };
        let y = x.apply_op1_no_bwd(&op).unwrap();
        assert_eq!(y.to_vec2::<f32>().unwrap(), vec![vec![1.5, 1.5]; 2]);
        for dtype in [crate::kernels::Dtype::Bf16, crate::kernels::Dtype::Int8] {
            let packed = PackedLinear::pack(dtype, &w, &b, 3).unwrap().unwrap();
            let op = Linear {
                weights: LinearWeights::Packed(&packed),
                threads: 1,
                gelu: false,
                level: KernelLevel::detected(),
            };
            let y = x.apply_op1_no_bwd(&op).unwrap();
            assert_eq!(
                y.to_vec2::<f32>().unwrap(),
                vec![vec![1.5, 1.5]; 2],
                "{dtype}"
            );
            let wrong = Tensor::from_vec(vec![1.0f32; 8], (2, 4), &Device::Cpu).unwrap();
            assert!(wrong.apply_op1_no_bwd(&op).is_err(), "{dtype}: input k = 4");
        }
        let norm = AddLayerNorm {
            gamma: &[1.0; 4],
            beta: &[0.0; 4],
            eps: 1e-5,
        };
        assert!(
            x.apply_op2_no_bwd(&x, &norm).is_err(),
            "6 values, gamma of 4"
        );
        let norm = AddLayerNorm {
            gamma: &[1.0; 3],
            beta: &[0.0; 2],
            eps: 1e-5,
        };
        assert!(
            x.apply_op2_no_bwd(&x, &norm).is_err(),
            "gamma of 3, beta of 2"
        );
    }
}
