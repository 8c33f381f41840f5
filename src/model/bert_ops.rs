//! The encoder's layers as candle custom ops, each running one of our kernels
//! (`crate::kernels`) on the tensors `bert.rs` passes between layers.
//!
//! Why not candle's stock ops: at the sizes an embedding server sees (a few to a few hundred
//! tokens per batch) a transformer layer is dominated not by its matmuls but by what surrounds
//! them: a fresh tensor per element-wise op, scalar `erf` in GELU, transposes to split heads and
//! an additive attention mask that computes scores for padding only to throw them away. Here:
//! - `Linear` is one kernel call with the bias folded into the destination (no broadcast add),
//!   with intra-op parallelism chosen per call by the worker (see `embed/worker.rs`);
//! - `FeedForward` runs a layer's two feed-forward products, GELU (fused into the first's
//!   store) and the norm a block of rows at a time, so the wide activations stay in cache;
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
    /// The kernel path of packed layers, and the widest vectors of GELU.
    pub level: KernelLevel,
}

impl CustomOp1 for Linear<'_> {
    fn name(&self) -> &'static str {
        "zerobatch-linear"
    }

    fn cpu_fwd(&self, xs: &CpuStorage, xl: &Layout) -> Result<(CpuStorage, Shape)> {
        let (m, k) = xl.shape().dims2()?;
        let Some(n) = linear_width(self.weights, k) else {
            candle_core::bail!("linear: input {:?} does not fit the weights", xl.shape())
        };
        let x = contiguous(xs, xl, "linear input")?;
        if m.checked_mul(k) != Some(x.len()) {
            candle_core::bail!("linear: input {:?} has {} values", xl.shape(), x.len());
        }
        let Some(size) = m.checked_mul(n) else {
            candle_core::bail!("linear: output {m}×{n} overflows usize")
        };
        let mut out = vec![0.0f32; size];
        run_linear(
            self.weights,
            x,
            m,
            k,
            &mut out,
            self.threads,
            false,
            self.level,
        );
        Ok((CpuStorage::F32(out), Shape::from((m, n))))
    }
}

/// Runs `weights` on `m × k` values of `x` into `out` (`m × n`, sizes checked by the
/// caller), GELU fused when `gelu`.
#[allow(clippy::too_many_arguments)]
fn run_linear(
    weights: LinearWeights<'_>,
    x: &[f32],
    m: usize,
    k: usize,
    out: &mut [f32],
    threads: usize,
    gelu: bool,
    level: KernelLevel,
) {
    match weights {
        LinearWeights::F32(parts) => {
            linear(x, m, k, parts, out, threads);
            if gelu {
                gelu_at(out, level);
            }
        }
        LinearWeights::Packed(p) => {
            let epilogue = if gelu {
                Epilogue::BiasGelu
            } else {
                Epilogue::Bias
            };
            p.forward(x, m, out, level, threads, epilogue)
        }
    }
}

/// The output width of `weights`, if `k` inputs fit them.
fn linear_width(weights: LinearWeights<'_>, k: usize) -> Option<usize> {
    match weights {
        LinearWeights::F32(parts) => {
            let fits = parts
                .iter()
                .all(|p| p.b.len().checked_mul(k) == Some(p.w.len()));
            kernels::linear_f32::output_width(parts).filter(|_| fits)
        }
        LinearWeights::Packed(p) => (p.k() == k).then(|| p.n()),
    }
}

/// Rows of one block of the feed-forward: its `rows × intermediate` activations (f32, and
/// their bf16 copy for the second product) fit in a core's L2 beside the block's input.
pub const FEED_FORWARD_ROWS: usize = 96;

/// The feed-forward half of a layer, `x → LayerNorm(down(GELU(up(x))) + x)`, one block of
/// [`FEED_FORWARD_ROWS`] rows at a time.
///
/// Why one op rather than two linear ops and a norm: as separate ops the whole batch's
/// `rows × intermediate` activations (42 MB for 64 passages of 107 tokens) were written to
/// freshly mapped memory, read back, and the output copied once more for the norm; per block
/// they stay in cache, and one buffer per thread serves every block. Large batches give each
/// thread its own blocks (no synchronisation inside a block); a batch of one or two blocks
/// splits each product over the threads instead.
pub struct FeedForward<'a> {
    pub up: LinearWeights<'a>,
    pub down: LinearWeights<'a>,
    pub norm: AddLayerNorm<'a>,
    pub threads: usize,
    /// The kernel path of packed layers, and the widest vectors of GELU.
    pub level: KernelLevel,
}

impl FeedForward<'_> {
    /// Runs the blocks of `x` (`m × h`) into `out`, with `threads` threads per product.
    fn blocks(&self, x: &[f32], out: &mut [f32], h: usize, inter: usize, threads: usize) {
        let rows = x.len() / h;
        let mut expanded = vec![0.0f32; FEED_FORWARD_ROWS.min(rows) * inter];
        for (x, out) in x
            .chunks(FEED_FORWARD_ROWS * h)
            .zip(out.chunks_mut(FEED_FORWARD_ROWS * h))
        {
            let m = x.len() / h;
            let expanded = &mut expanded[..m * inter];
            run_linear(self.up, x, m, h, expanded, threads, true, self.level);
            run_linear(
                self.down, expanded, m, inter, out, threads, false, self.level,
            );
            add_layer_norm(out, x, self.norm.gamma, self.norm.beta, self.norm.eps);
        }
    }
}

impl CustomOp1 for FeedForward<'_> {
    fn name(&self) -> &'static str {
        "zerobatch-feed-forward"
    }

    fn cpu_fwd(&self, xs: &CpuStorage, xl: &Layout) -> Result<(CpuStorage, Shape)> {
        let (m, h) = xl.shape().dims2()?;
        let x = contiguous(xs, xl, "feed-forward input")?;
        let inter = linear_width(self.up, h);
        let fits = inter.is_some_and(|i| i > 0 && linear_width(self.down, i) == Some(h));
        if !fits || h == 0 || self.norm.gamma.len() != h || self.norm.beta.len() != h {
            candle_core::bail!(
                "feed-forward: input {:?} does not fit the weights",
                xl.shape()
            );
        }
        let inter = inter.unwrap_or(0);
        if m.checked_mul(h) != Some(x.len()) || m.checked_mul(inter).is_none() {
            candle_core::bail!(
                "feed-forward: input {:?} has {} values",
                xl.shape(),
                x.len()
            );
        }
        let mut out = vec![0.0f32; x.len()];
        let blocks = m.div_ceil(FEED_FORWARD_ROWS);
        if self.threads > 1 && blocks >= 2 * self.threads {
            // Each thread takes a run of whole blocks and runs them alone.
            let per = blocks.div_ceil(self.threads) * FEED_FORWARD_ROWS * h;
            let mut parts: Vec<(&[f32], &mut [f32])> =
                x.chunks(per).zip(out.chunks_mut(per)).collect();
            kernels::team::parallel_for_each(&mut parts, self.threads, &|_, (x, out)| {
                self.blocks(x, out, h, inter, 1)
            });
        } else {
            self.blocks(x, &mut out, h, inter, self.threads);
        }
        Ok((CpuStorage::F32(out), xl.shape().clone()))
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
            level: KernelLevel::detected(),
        };
        let y = x.apply_op1_no_bwd(&op).unwrap();
        assert_eq!(y.to_vec2::<f32>().unwrap(), vec![vec![1.5, 1.5]; 2]);
        for dtype in [crate::kernels::Dtype::Bf16, crate::kernels::Dtype::Int8] {
            let packed = PackedLinear::pack(dtype, &w, &b, 3).unwrap().unwrap();
            let op = Linear {
                weights: LinearWeights::Packed(&packed),
                threads: 1,
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

#[cfg(test)]
mod feed_forward_tests {
    use super::*;
    use crate::kernels::team::Team;
    use crate::kernels::Dtype;
    use candle_core::{Device, Tensor};

    fn values(n: usize, seed: usize) -> Vec<f32> {
        (0..n)
            .map(|i| (((i * 7919 + seed * 104_729) % 1999) as f32 / 1999.0 - 0.5) * 0.5)
            .collect()
    }

    /// The blocked op equals the three ops it replaces (up with GELU, down, add and norm), for
    /// batches below, at and across block boundaries, on one thread and on a team of two
    /// (blocks split over threads, or products split within a block), for every dtype.
    #[test]
    fn feed_forward_equals_the_ops_it_fuses() {
        let (h, inter) = (40, 72);
        let (up_w, up_b) = (values(inter * h, 1), values(inter, 2));
        let (down_w, down_b) = (values(h * inter, 3), values(h, 4));
        let (gamma, beta) = (values(h, 5), values(h, 6));
        let up_parts = [LinearPart { w: &up_w, b: &up_b }];
        let down_parts = [LinearPart {
            w: &down_w,
            b: &down_b,
        }];
        let level = KernelLevel::detected();
        let team = Team::new(2).unwrap();
        for dtype in [Dtype::F32, Dtype::Bf16, Dtype::Int8] {
            let packed = |w: &[f32], b: &[f32], k| PackedLinear::pack(dtype, w, b, k).unwrap();
            let (up_p, down_p) = (packed(&up_w, &up_b, h), packed(&down_w, &down_b, inter));
            let (up, down) = match (&up_p, &down_p) {
                (Some(u), Some(d)) => (LinearWeights::Packed(u), LinearWeights::Packed(d)),
                _ => (
                    LinearWeights::F32(&up_parts[..]),
                    LinearWeights::F32(&down_parts[..]),
                ),
            };
            for m in [1, 95, 96, 97, 300, 1000] {
                let x = Tensor::from_vec(values(m * h, m), (m, h), &Device::Cpu).unwrap();
                let norm = || AddLayerNorm {
                    gamma: &gamma,
                    beta: &beta,
                    eps: 1e-5,
                };
                let run_linear_op = |x: &Tensor, weights, gelu: bool| {
                    let k = x.dims2().unwrap().1;
                    let n = linear_width(weights, k).unwrap();
                    let xs = x.flatten_all().unwrap().to_vec1::<f32>().unwrap();
                    let mut out = vec![0.0f32; m * n];
                    run_linear(weights, &xs, m, k, &mut out, 1, gelu, level);
                    Tensor::from_vec(out, (m, n), &Device::Cpu).unwrap()
                };
                let expanded = run_linear_op(&x, up, true);
                let reduced = run_linear_op(&expanded, down, false);
                let want: Vec<f32> = reduced
                    .apply_op2_no_bwd(&x, &norm())
                    .unwrap()
                    .flatten_all()
                    .unwrap()
                    .to_vec1()
                    .unwrap();
                for threads in [1, 2] {
                    let op = FeedForward {
                        up,
                        down,
                        norm: norm(),
                        threads,
                        level,
                    };
                    let got: Vec<f32> = team.install(|| {
                        x.apply_op1_no_bwd(&op)
                            .unwrap()
                            .flatten_all()
                            .unwrap()
                            .to_vec1()
                            .unwrap()
                    });
                    let worst = want
                        .iter()
                        .zip(&got)
                        .map(|(a, b)| (a - b).abs())
                        .fold(0.0f32, f32::max);
                    assert!(worst <= 1e-5, "{dtype} m={m} threads={threads}: {worst}");
                }
            }
            // Weights that do not fit the input are an error, not a panic.
            let op = FeedForward {
                up: down,
                down: up,
                norm: norm_of(&gamma, &beta),
                threads: 1,
                level,
            };
            let x = Tensor::from_vec(values(3 * h, 0), (3, h), &Device::Cpu).unwrap();
            assert!(x.apply_op1_no_bwd(&op).is_err(), "{dtype}: swapped weights");
        }
    }

    fn norm_of<'a>(gamma: &'a [f32], beta: &'a [f32]) -> AddLayerNorm<'a> {
        AddLayerNorm {
            gamma,
            beta,
            eps: 1e-5,
        }
    }
}
