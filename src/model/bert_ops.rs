//! The encoder's layers as candle custom ops, each running one of our kernels
//! (`crate::kernels`) on the tensors `bert.rs` passes between layers.
//!
//! Why not candle's stock ops: at the sizes an embedding server sees (a few to a few hundred
//! tokens per batch) a transformer layer is dominated not by its matmuls but by what surrounds
//! them: a fresh tensor per element-wise op, scalar `erf` in GELU, transposes to split heads and
//! an additive attention mask that computes scores for padding only to throw them away. Here:
//! - `Linear` is one kernel call with the bias folded into the destination (no broadcast add),
//!   with intra-op parallelism chosen per call by the worker (see `embed/worker.rs`);
//! - `ProjectAddNorm` runs a layer's attention output (projection, residual, norm) and its
//!   feed-forward half (two products with GELU fused into the first's store, residual, norm)
//!   a block of rows at a time, so the activations stay in cache;
//! - `AddLayerNorm` adds the residual and normalises in one pass over the row;
//! - `Attention` reads heads straight out of the fused QKV projection, the sequences' rows
//!   back to back (`bert.rs` pads nothing), each attending over its own tokens only, which is
//!   exact masking at no cost.
//!
//! Every op checks every size (without overflow) and returns a candle error rather than let a
//! kernel assert.

use candle_core::{CpuStorage, CustomOp1, CustomOp2, Layout, Result, Shape};

use crate::kernels::{
    self, add_layer_norm, attention_with, AttentionShape, Epilogue, KernelLevel, PackedLinear,
    Products,
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

/// A linear layer as a candle op: `x[m×k] → [m × Σn]`, see [`linear`] and
/// [`PackedLinear::forward`].
pub struct Linear<'a> {
    pub weights: &'a PackedLinear,
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
fn run_linear(
    weights: &PackedLinear,
    x: &[f32],
    m: usize,
    out: &mut [f32],
    threads: usize,
    gelu: bool,
    level: KernelLevel,
) {
    let epilogue = if gelu {
        Epilogue::BiasGelu
    } else {
        Epilogue::Bias
    };
    weights.forward(x, m, out, level, threads, epilogue)
}

/// The output width of `weights`, if `k` inputs fit them.
fn linear_width(weights: &PackedLinear, k: usize) -> Option<usize> {
    (weights.k() == k).then(|| weights.n())
}

/// Rows of one block of [`ProjectAddNorm`]: a feed-forward block's `rows × intermediate`
/// activations (f32, and their bf16 copy for the second product) fit in a core's L2 beside
/// the block's input. Weights that ask for more rows per call ([`PackedLinear::block_rows`]:
/// bf16 on AMX tiles) get blocks of their height.
pub const BLOCK_ROWS: usize = 96;

/// The rows of a block for `weights` on `level` (see [`BLOCK_ROWS`]).
fn block_rows(weights: &PackedLinear, level: KernelLevel) -> usize {
    weights.block_rows(level).max(BLOCK_ROWS)
}

/// `(x, residual) → LayerNorm(second(first(x)) + residual)`, one block of [`BLOCK_ROWS`] rows
/// at a time: a layer's attention output (`first` the output projection, no `second`,
/// `residual` the layer's input) and its feed-forward half (`first` the up projection with
/// GELU, `second` the down projection, `residual` = `x`).
///
/// Why one op rather than linear ops and a norm: as separate ops the whole batch's
/// activations (42 MB of intermediate ones for 64 passages of 107 tokens) were written to
/// freshly mapped memory, read back, and each output copied once more for the norm; per block
/// they stay in cache, and one buffer per thread serves every block. Large batches give each
/// thread its own blocks (no synchronisation inside a block); a batch of one or two blocks
/// splits each product over the threads instead.
pub struct ProjectAddNorm<'a> {
    pub first: &'a PackedLinear,
    /// Whether GELU follows the first product (fused into its store).
    pub gelu: bool,
    pub second: Option<&'a PackedLinear>,
    pub norm: AddLayerNorm<'a>,
    pub threads: usize,
    /// The kernel path of packed layers, and the widest vectors of GELU.
    pub level: KernelLevel,
}

thread_local! {
    /// The feed-forward half's activations between its two products, one block of them, kept
    /// for this thread's next block (a fresh zeroed buffer per call was a memset and page
    /// faults per layer): at most a block's rows × the widest intermediate size this thread ran.
    static BETWEEN: std::cell::Cell<Vec<f32>> = const { std::cell::Cell::new(Vec::new()) };
}

/// A run of rows: (input rows, residual rows), output rows.
type BlockRun<'a> = ((&'a [f32], &'a [f32]), &'a mut [f32]);

impl ProjectAddNorm<'_> {
    /// Rows per block: the most either product asks for.
    fn block_rows(&self) -> usize {
        let second = self.second.map_or(0, |w| block_rows(w, self.level));
        block_rows(self.first, self.level).max(second)
    }

    /// Runs the blocks of `x` (`k` values a row) and `residual` into `out` (`h` a row), with
    /// `threads` threads per product; `inner` is the first product's width when a second
    /// follows.
    #[allow(clippy::too_many_arguments)]
    fn blocks(
        &self,
        x: &[f32],
        residual: &[f32],
        out: &mut [f32],
        k: usize,
        h: usize,
        inner: usize,
        threads: usize,
    ) {
        let rows = out.len() / h;
        let block = self.block_rows();
        let mut between = BETWEEN.take();
        if self.second.is_some() && between.len() < block.min(rows) * inner {
            between = vec![0.0f32; block.min(rows) * inner];
        }
        let blocks = x
            .chunks(block * k)
            .zip(residual.chunks(block * h))
            .zip(out.chunks_mut(block * h));
        for ((x, residual), out) in blocks {
            let m = out.len() / h;
            match self.second {
                Some(second) => {
                    let between = &mut between[..m * inner];
                    run_linear(self.first, x, m, between, threads, self.gelu, self.level);
                    run_linear(second, between, m, out, threads, false, self.level);
                }
                None => run_linear(self.first, x, m, out, threads, self.gelu, self.level),
            }
            add_layer_norm(
                out,
                residual,
                self.norm.gamma,
                self.norm.beta,
                self.norm.eps,
            );
        }
        BETWEEN.set(between);
    }
}

impl CustomOp2 for ProjectAddNorm<'_> {
    fn name(&self) -> &'static str {
        "zerobatch-project-add-norm"
    }

    fn cpu_fwd(
        &self,
        xs: &CpuStorage,
        xl: &Layout,
        rs: &CpuStorage,
        rl: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (m, k) = xl.shape().dims2()?;
        let (rm, h) = rl.shape().dims2()?;
        let x = contiguous(xs, xl, "projection input")?;
        let residual = contiguous(rs, rl, "projection residual")?;
        let first = linear_width(self.first, k);
        let (inner, width) = match self.second {
            Some(second) => (
                first.unwrap_or(0),
                first.and_then(|i| linear_width(second, i)),
            ),
            None => (0, first),
        };
        let norm_fits = self.norm.gamma.len() == h && self.norm.beta.len() == h;
        if width != Some(h) || h == 0 || rm != m || !norm_fits {
            candle_core::bail!(
                "projection: input {:?} and residual {:?} do not fit the weights",
                xl.shape(),
                rl.shape()
            );
        }
        let sizes_fit = m.checked_mul(k) == Some(x.len())
            && m.checked_mul(h) == Some(residual.len())
            && m.checked_mul(inner).is_some();
        if !sizes_fit {
            candle_core::bail!(
                "projection: {} and {} values for shapes {:?} and {:?}",
                x.len(),
                residual.len(),
                xl.shape(),
                rl.shape()
            );
        }
        let mut out = vec![0.0f32; residual.len()];
        let block = self.block_rows();
        let blocks = m.div_ceil(block);
        if self.threads > 1 && blocks >= 2 * self.threads {
            // Each block is a task the threads take from a counter, run alone: on a VM one
            // core may run at half the other's speed (measured: AMX tiles at 1.1 against 2.7
            // TFLOP/s on the two vCPUs), so equal shares would wait for the slower one.
            let mut parts: Vec<BlockRun<'_>> = x
                .chunks(block * k)
                .zip(residual.chunks(block * h))
                .zip(out.chunks_mut(block * h))
                .collect();
            kernels::team::parallel_for_each(&mut parts, self.threads, &|_, ((x, r), out)| {
                self.blocks(x, r, out, k, h, inner, 1)
            });
        } else {
            self.blocks(x, residual, &mut out, k, h, inner, self.threads);
        }
        Ok((CpuStorage::F32(out), rl.shape().clone()))
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
                    unpadded: false,
                },
                threads: 1,
                level: KernelLevel::detected(),
                products: Products::F32,
            };
            assert!(qkv.apply_op1_no_bwd(&op).is_err(), "{:?}", op.shape);
        }
        let x = Tensor::from_vec(vec![1.0f32; 6], (2, 3), &Device::Cpu).unwrap();
        let b = vec![0.0f32; 2];
        for dtype in crate::kernels::Dtype::ALL {
            // Weights for k = 4 against an input of k = 3.
            let packed = PackedLinear::pack(dtype, &[0.5f32; 8], &b, 4).unwrap();
            let op = Linear {
                weights: &packed,
                threads: 1,
                level: KernelLevel::detected(),
            };
            assert!(x.apply_op1_no_bwd(&op).is_err(), "{dtype}: input k = 3");
            let packed = PackedLinear::pack(dtype, &[0.5f32; 6], &b, 3).unwrap();
            let op = Linear {
                weights: &packed,
                threads: 1,
                level: KernelLevel::detected(),
            };
            let y = x.apply_op1_no_bwd(&op).unwrap().to_vec2::<f32>().unwrap();
            // int16's scales (1/5792 of a block's largest) round the product in its last bit.
            let within = y.iter().flatten().all(|v| (v - 1.5).abs() <= 1e-6);
            assert!(within && y.len() == 2 && y[0].len() == 2, "{dtype}: {y:?}");
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
mod project_add_norm_tests {
    use super::*;
    use crate::kernels::team::Team;
    use crate::kernels::Dtype;
    use candle_core::{Device, Tensor};

    fn values(n: usize, seed: usize) -> Vec<f32> {
        (0..n)
            .map(|i| (((i * 7919 + seed * 104_729) % 1999) as f32 / 1999.0 - 0.5) * 0.5)
            .collect()
    }

    fn tensor(v: Vec<f32>, rows: usize) -> Tensor {
        let cols = v.len() / rows;
        Tensor::from_vec(v, (rows, cols), &Device::Cpu).unwrap()
    }

    fn flat(t: &Tensor) -> Vec<f32> {
        t.flatten_all().unwrap().to_vec1().unwrap()
    }

    /// The blocked op equals the ops it replaces (linear layers, then add and norm) in both
    /// of its forms — one product with a separate residual (attention output), two with GELU
    /// between and the input as residual (feed-forward) — for batches below, at and across
    /// block edges, on one thread and on a team of two (blocks split over the threads, or
    /// each product split), for every dtype.
    #[test]
    fn project_add_norm_equals_the_ops_it_fuses() {
        let (h, inter) = (40, 72);
        let (up_w, up_b) = (values(inter * h, 1), values(inter, 2));
        let (down_w, down_b) = (values(h * inter, 3), values(h, 4));
        let (gamma, beta) = (values(h, 5), values(h, 6));
        let norm = || AddLayerNorm {
            gamma: &gamma,
            beta: &beta,
            eps: 1e-5,
        };
        let level = KernelLevel::detected();
        let team = Team::new(2).unwrap();
        for dtype in [Dtype::F32, Dtype::Bf16, Dtype::Int8] {
            let packed = |w: &[f32], b: &[f32], k| PackedLinear::pack(dtype, w, b, k).unwrap();
            let (up_p, down_p) = (packed(&up_w, &up_b, h), packed(&down_w, &down_b, inter));
            let (up, down) = (&up_p, &down_p);
            // Block edges at 96 rows, and at 384 where bf16 runs on AMX tiles.
            for m in [1, 95, 96, 97, 300, 383, 384, 385, 1000, 1600] {
                let apply = |x: &Tensor, weights, gelu: bool| {
                    let (rows, k) = x.dims2().unwrap();
                    let mut out = vec![0.0f32; rows * linear_width(weights, k).unwrap()];
                    run_linear(weights, &flat(x), rows, &mut out, 1, gelu, level);
                    tensor(out, rows)
                };
                let x = tensor(values(m * h, m), m);
                let wide = tensor(values(m * inter, m + 1), m);
                // Feed-forward: LayerNorm(down(GELU(up(x))) + x).
                let reduced = apply(&apply(&x, up, true), down, false);
                let want_ffn = flat(&reduced.apply_op2_no_bwd(&x, &norm()).unwrap());
                // Attention output: LayerNorm(down(wide) + x).
                let projected = apply(&wide, down, false);
                let want_out = flat(&projected.apply_op2_no_bwd(&x, &norm()).unwrap());
                for threads in [1, 2] {
                    let ffn = ProjectAddNorm {
                        first: up,
                        gelu: true,
                        second: Some(down),
                        norm: norm(),
                        threads,
                        level,
                    };
                    let out = ProjectAddNorm {
                        first: down,
                        gelu: false,
                        second: None,
                        norm: norm(),
                        threads,
                        level,
                    };
                    let (got_ffn, got_out) = team.install(|| {
                        (
                            flat(&x.apply_op2_no_bwd(&x, &ffn).unwrap()),
                            flat(&wide.apply_op2_no_bwd(&x, &out).unwrap()),
                        )
                    });
                    for (what, want, got) in
                        [("ffn", &want_ffn, &got_ffn), ("out", &want_out, &got_out)]
                    {
                        let worst = want
                            .iter()
                            .zip(got)
                            .map(|(a, b)| (a - b).abs())
                            .fold(0.0f32, f32::max);
                        assert_eq!(want.len(), got.len());
                        assert!(
                            worst <= 1e-5,
                            "{dtype} {what} m={m} threads={threads}: {worst}"
                        );
                    }
                }
            }
            // Weights or a residual that do not fit are errors, not panics.
            let x = tensor(values(3 * h, 0), 3);
            let swapped = ProjectAddNorm {
                first: down,
                gelu: true,
                second: Some(up),
                norm: norm(),
                threads: 1,
                level,
            };
            assert!(
                x.apply_op2_no_bwd(&x, &swapped).is_err(),
                "{dtype}: swapped"
            );
            let ffn = ProjectAddNorm {
                first: up,
                gelu: true,
                second: Some(down),
                norm: norm(),
                threads: 1,
                level,
            };
            let short = tensor(values(2 * h, 0), 2);
            assert!(
                x.apply_op2_no_bwd(&short, &ffn).is_err(),
                "{dtype}: 2 residual rows"
            );
        }
    }
}
