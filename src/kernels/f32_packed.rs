//! The f32 linear layer on weights packed once at load: `y = x · Wᵀ + b` in full f32, with
//! the loop nest and epilogues of the bf16 and int8 layers ([`super::tiles`]).
//!
//! Why packed: an encoder's feed-forward half runs in blocks of 96 rows
//! (`model::bert_ops::BLOCK_ROWS`), and a general matmul (`gemm`) packs its right operand
//! again at every call, 2.4 MB of MiniLM's up projection for 96 rows of work: with the
//! weights in panels from the start, the products run straight from them (the rerank
//! workload's profile had 27% of its time in gemm's code around its microkernel;
//! docs/benchmarks.md).
//!
//! Packed layout: panels of 16 output columns (one AVX-512 register, two AVX2 ones), in groups
//! of 4 panels (the last group may hold fewer); in a group, for each reduction index, its
//! panels' 16 weights side by side: a tile's weights for one reduction index are one
//! contiguous run of 256 bytes. (Panels laid out one after the other put a tile's four weight
//! streams `k × 64` bytes apart, a multiple of 4 KiB for every width a model has, all in the
//! same L1 sets.) Activations are read in place (f32, row-major): nothing is converted per
//! call.
//!
//! Kernels: AVX-512 F (6 rows × 4 panels = 24 accumulators of 16 lanes), AVX2 + FMA (6 rows
//! × 1 panel: 12 accumulators of 8 lanes), portable Rust. All sum in f32 in the order of the
//! reduction, so they agree to rounding.

use super::aligned::AlignedVec;
use super::cpu::KernelLevel;
#[cfg(target_arch = "x86_64")]
use super::dispatch::{variant, Variant};
use super::tiles::{for_each_tile, in_row_blocks, store_tile, Epilogue, SharedOut, PANEL};

/// Rows of a tile (every path).
const TILE_ROWS: usize = 6;
/// Panels per group, the columns of a tile: on AVX-512, 6 × 4 accumulators + 4 weight
/// vectors fit its 32 registers (AVX2 and the portable path run a group's panels one by one).
const GROUP: usize = 4;

/// A linear layer `y = x · Wᵀ + b` with f32 weights packed in panels.
pub struct F32Linear {
    n: usize,
    k: usize,
    panels: usize,
    /// `panels × k × 16` values in groups (see the module doc), on a cache line; columns past
    /// `n` are zero.
    weights: AlignedVec<f32>,
    /// Padded to whole panels with 0.
    bias: Vec<f32>,
}

impl F32Linear {
    /// Packs `w` (`n×k`, PyTorch layout, `n = bias.len()`) in panels.
    ///
    /// # Errors
    ///
    /// When `w` is not `n×k` or `k` is 0.
    pub fn pack(w: &[f32], bias: &[f32], k: usize) -> Result<Self, String> {
        let n = bias.len();
        if n.checked_mul(k) != Some(w.len()) || k == 0 {
            return Err(format!(
                "f32: a weight of {} values is not {n}×{k}",
                w.len()
            ));
        }
        let panels = n.div_ceil(PANEL);
        let mut weights = AlignedVec::zeroed(panels * k * PANEL);
        for (c, row) in w.chunks_exact(k).enumerate() {
            let (panel, lane) = (c / PANEL, c % PANEL);
            let (first, width) = group_of(panel, panels);
            let dst = &mut weights[first * k * PANEL..][..width * k * PANEL];
            let at = (panel - first) * PANEL + lane;
            for (i, &v) in row.iter().enumerate() {
                dst[i * width * PANEL + at] = v;
            }
        }
        let mut padded_bias = vec![0.0f32; panels * PANEL];
        padded_bias[..n].copy_from_slice(bias);
        Ok(Self {
            n,
            k,
            panels,
            weights,
            bias: padded_bias,
        })
    }

    /// Output columns.
    pub fn n(&self) -> usize {
        self.n
    }

    /// Input columns (the reduction length).
    pub fn k(&self) -> usize {
        self.k
    }

    /// Bytes held (weights and bias).
    pub fn bytes(&self) -> usize {
        4 * (self.weights.len() + self.bias.len())
    }

    /// `out[m×n] = x[m×k] · Wᵀ + b`, then the `epilogue`, with the widest vectors `level`
    /// allows, using up to `threads` threads.
    ///
    /// # Panics
    ///
    /// When `x` is not `m×k` or `out` not `m×n`.
    pub fn forward(
        &self,
        x: &[f32],
        m: usize,
        out: &mut [f32],
        level: KernelLevel,
        threads: usize,
        epilogue: Epilogue,
    ) {
        in_row_blocks("f32", (x, m, self.k), (out, self.n), |x, m, out| {
            self.forward_block(x, m, out, level, threads, epilogue)
        });
    }

    /// [`Self::forward`] on one block of rows (see [`in_row_blocks`]).
    fn forward_block(
        &self,
        x: &[f32],
        m: usize,
        out: &mut [f32],
        level: KernelLevel,
        threads: usize,
        epilogue: Epilogue,
    ) {
        if m == 0 {
            return;
        }
        // Never above what this CPU has, whatever the caller asked for.
        let level = level.min(KernelLevel::detected());
        #[cfg(target_arch = "x86_64")]
        let path = variant(level);
        let k = self.k;
        let shared = SharedOut(out.as_mut_ptr());
        let groups = self.panels.div_ceil(GROUP);
        for_each_tile(m, groups, TILE_ROWS, 1, threads, &|r0, rows, g, _| {
            let (p0, ps) = group_of(g * GROUP, self.panels);
            let mut acc = [0.0f32; TILE_ROWS * GROUP * PANEL];
            let x = &x[r0 * k..(r0 + rows) * k];
            let w = &self.weights[p0 * k * PANEL..(p0 + ps) * k * PANEL];
            #[cfg(target_arch = "x86_64")]
            match path {
                Variant::Avx512 | Variant::Avx2 => {
                    let tile = Tile {
                        rows,
                        x: x.as_ptr(),
                        k,
                        w: w.as_ptr(),
                        acc: acc.as_mut_ptr(),
                    };
                    // SAFETY: the variant is AVX-512 only when the CPU has AVX-512 F, AVX2
                    // only with AVX2 and FMA (the level is at most the detected one); x holds
                    // `rows ≤ 6` rows of k values; w is the group's `ps ≤ 4` panels, k runs of
                    // ps × 16 values on a 64-byte boundary (whole groups of 64-byte panels
                    // into an aligned buffer); acc holds rows × ps × 16 values.
                    unsafe {
                        if path == Variant::Avx512 {
                            avx512::tile(ps, &tile)
                        } else {
                            avx2::tile(ps, &tile)
                        }
                    }
                }
                Variant::Generic => scalar_tile(rows, x, k, w, ps, &mut acc),
            }
            #[cfg(not(target_arch = "x86_64"))]
            scalar_tile(rows, x, k, w, ps, &mut acc);
            // SAFETY: `for_each_tile` gives disjoint tiles inside m rows and the layer's
            // groups; `out` (m×n) stays mutably borrowed for the call.
            unsafe {
                store_tile(
                    &mut acc,
                    &self.bias,
                    self.n,
                    (r0, rows),
                    (p0, ps),
                    shared,
                    epilogue,
                    level,
                )
            };
        });
    }
}

/// One micro-kernel call: `rows ≤ 6` rows × one group of `ps` panels over the whole
/// reduction, its sums written to `acc`, row by row, a row's panels side by side.
#[cfg(target_arch = "x86_64")]
struct Tile {
    rows: usize,
    /// The rows, `k` values each, one after the other.
    x: *const f32,
    k: usize,
    /// The group's weights, one run of `ps × 16` values per reduction index.
    w: *const f32,
    acc: *mut f32,
}

/// The first panel and the width of the group that holds `panel`, of `panels` in all.
fn group_of(panel: usize, panels: usize) -> (usize, usize) {
    let first = panel / GROUP * GROUP;
    (first, GROUP.min(panels - first))
}

/// The portable kernel: one group of `ps` panels, `rows` rows (`acc` as the AVX-512 kernel
/// writes it: row by row, a row's panels side by side).
fn scalar_tile(rows: usize, x: &[f32], k: usize, w: &[f32], ps: usize, acc: &mut [f32]) {
    let width = ps * PANEL;
    for r in 0..rows {
        let xr = &x[r * k..][..k];
        let sums = &mut acc[r * width..][..width];
        sums.fill(0.0);
        for (&xv, wk) in xr.iter().zip(w.chunks_exact(width)) {
            for (s, &wv) in sums.iter_mut().zip(wk) {
                *s += xv * wv;
            }
        }
    }
}
#[cfg(target_arch = "x86_64")]
mod avx512 {
    use super::{Tile, PANEL};
    use std::arch::x86_64::*;

    /// AVX-512 tile of `t.rows ≤ 6` rows × a group of `np ≤ 4` panels (see [`kernel`]).
    ///
    /// # Safety
    ///
    /// As [`kernel`].
    pub unsafe fn tile(np: usize, t: &Tile) {
        macro_rules! rows {
            ($np:literal) => {
                match t.rows {
                    1 => kernel::<1, $np>(t),
                    2 => kernel::<2, $np>(t),
                    3 => kernel::<3, $np>(t),
                    4 => kernel::<4, $np>(t),
                    5 => kernel::<5, $np>(t),
                    6 => kernel::<6, $np>(t),
                    _ => unreachable!("tile rows"),
                }
            };
        }
        unsafe {
            match np {
                1 => rows!(1),
                2 => rows!(2),
                3 => rows!(3),
                4 => rows!(4),
                _ => unreachable!("tile panels"),
            }
        }
    }

    /// `acc[r·NP·16 + p·16 + lane] = Σ_t x[r][t] · w[t][p][lane]`: per reduction index, the
    /// group's `NP` weight vectors (one run of memory) loaded once and each row's value
    /// broadcast against them.
    ///
    /// # Safety
    ///
    /// The CPU must support AVX-512 F; `t.x` holds `MR` rows of `t.k` values; `t.w` holds
    /// `t.k × NP × 16` values on a 64-byte boundary; `t.acc` is valid for writing
    /// `MR × NP × 16` values.
    #[target_feature(enable = "avx512f")]
    unsafe fn kernel<const MR: usize, const NP: usize>(t: &Tile) {
        let (x, w, acc) = (t.x, t.w, t.acc);
        let mut sums = [[_mm512_setzero_ps(); NP]; MR];
        for i in 0..t.k {
            let mut wv = [_mm512_setzero_ps(); NP];
            for (p, v) in wv.iter_mut().enumerate() {
                *v = _mm512_load_ps(w.add((i * NP + p) * PANEL));
            }
            for (r, row) in sums.iter_mut().enumerate() {
                let a = _mm512_set1_ps(*x.add(r * t.k + i));
                for (s, wp) in row.iter_mut().zip(&wv) {
                    *s = _mm512_fmadd_ps(a, *wp, *s);
                }
            }
        }
        for (r, row) in sums.iter().enumerate() {
            for (p, s) in row.iter().enumerate() {
                _mm512_storeu_ps(acc.add((r * NP + p) * PANEL), *s);
            }
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use super::{Tile, PANEL};
    use std::arch::x86_64::*;

    /// AVX2 tile of `t.rows ≤ 6` rows × a group of `ps` panels, a panel at a time (see
    /// [`kernel`]).
    ///
    /// # Safety
    ///
    /// As [`kernel`] for each panel `p < ps`.
    pub unsafe fn tile(ps: usize, t: &Tile) {
        for p in 0..ps {
            unsafe {
                match t.rows {
                    1 => kernel::<1>(t, ps, p),
                    2 => kernel::<2>(t, ps, p),
                    3 => kernel::<3>(t, ps, p),
                    4 => kernel::<4>(t, ps, p),
                    5 => kernel::<5>(t, ps, p),
                    6 => kernel::<6>(t, ps, p),
                    _ => unreachable!("tile rows"),
                }
            }
        }
    }

    /// `acc[r·ps·16 + p·16 + lane] = Σ_t x[r][t] · w[t][p][lane]` for panel `p` of a group of
    /// `ps`, two 8-lane halves.
    ///
    /// # Safety
    ///
    /// The CPU must support AVX2 and FMA; `t.x` holds `MR` rows of `t.k` values; `t.w` holds
    /// `t.k × ps × 16` values on a 32-byte boundary; `t.acc` is valid for writing
    /// `MR × ps × 16` values.
    #[target_feature(enable = "avx2,fma")]
    unsafe fn kernel<const MR: usize>(t: &Tile, ps: usize, p: usize) {
        let step = ps * PANEL;
        let (x, w, acc) = (t.x, t.w.add(p * PANEL), t.acc.add(p * PANEL));
        let mut sums = [[_mm256_setzero_ps(); 2]; MR];
        for i in 0..t.k {
            let w0 = _mm256_load_ps(w.add(i * step));
            let w1 = _mm256_load_ps(w.add(i * step + 8));
            for (r, s) in sums.iter_mut().enumerate() {
                let a = _mm256_set1_ps(*x.add(r * t.k + i));
                s[0] = _mm256_fmadd_ps(a, w0, s[0]);
                s[1] = _mm256_fmadd_ps(a, w1, s[1]);
            }
        }
        for (r, s) in sums.iter().enumerate() {
            _mm256_storeu_ps(acc.add(r * step), s[0]);
            _mm256_storeu_ps(acc.add(r * step + 8), s[1]);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::test_util::{levels, test_values as values};

    /// The naive reference in f64.
    fn naive(x: &[f32], m: usize, w: &[f32], b: &[f32], k: usize) -> Vec<f64> {
        let n = b.len();
        let mut out = vec![0.0; m * n];
        for i in 0..m {
            for c in 0..n {
                out[i * n + c] = b[c] as f64
                    + (0..k)
                        .map(|t| x[i * k + t] as f64 * w[c * k + t] as f64)
                        .sum::<f64>();
            }
        }
        out
    }

    /// Every path against the naive reference on the shapes around its tiles (rows around 6
    /// and a 96-row chunk, columns around a panel and a group of 4, reductions of 1, odd ones
    /// and across the 128-index blocks), every epilogue, one and two threads.
    #[test]
    fn every_path_matches_the_naive_reference() {
        for (m, n, k) in [
            (1, 1, 1),
            (1, 16, 2),
            (3, 17, 5),
            (7, 33, 13),
            (6, 64, 64),
            (13, 65, 31),
            (6, 384, 384),
            (7, 40, 129),
            (100, 65, 300),
            (97, 80, 37),
            (200, 96, 24),
            (1000, 20, 10),
        ] {
            let x = values(21 + m as u64, m * k);
            let w = values(27 + n as u64, n * k);
            let b = values(23, n);
            let layer = F32Linear::pack(&w, &b, k).unwrap();
            let sums = naive(&x, m, &w, &b, k);
            for level in levels() {
                for epilogue in [Epilogue::Bias, Epilogue::BiasGelu, Epilogue::BiasGeluTanh] {
                    let mut want: Vec<f32> = sums.iter().map(|&v| v as f32).collect();
                    match epilogue {
                        Epilogue::Bias => {}
                        Epilogue::BiasGelu => crate::kernels::gelu_at(&mut want, level),
                        Epilogue::BiasGeluTanh => crate::kernels::gelu_tanh_at(&mut want, level),
                    }
                    for threads in [1, 2] {
                        let mut got = vec![f32::NAN; m * n];
                        layer.forward(&x, m, &mut got, level, threads, epilogue);
                        for (i, (g, w)) in got.iter().zip(&want).enumerate() {
                            // f32 accumulation of k products of values ≤ 1 (GELU's slope is
                            // at most 1.13).
                            let tol = 1.13 * (1e-6 * (k as f64).sqrt() + 1e-6 * (*w as f64).abs());
                            assert!(
                                (*g as f64 - *w as f64).abs() <= tol + 1e-7,
                                "{m}×{n}×{k} {epilogue:?} on {level} ({threads} threads) at \
                                 {i}: {g} vs {w}"
                            );
                        }
                    }
                }
            }
        }
        // No rows: nothing to do, nothing written.
        let layer = F32Linear::pack(&values(1, 17 * 33), &values(2, 17), 33).unwrap();
        layer.forward(&[], 0, &mut [], KernelLevel::detected(), 2, Epilogue::Bias);
    }

    /// The packed layer gives what the in-place one gives, to rounding, on MiniLM's shapes.
    #[test]
    fn it_agrees_with_the_in_place_linear_layer() {
        use crate::kernels::{linear, LinearPart};
        for (m, n, k) in [(5, 1536, 384), (100, 384, 1536), (24, 1152, 384)] {
            let x = values(3 + m as u64, m * k);
            let w = values(5 + n as u64, n * k);
            let b = values(7, n);
            let mut want = vec![0.0; m * n];
            linear(&x, m, k, &[LinearPart { w: &w, b: &b }], &mut want, 2);
            let layer = F32Linear::pack(&w, &b, k).unwrap();
            let mut got = vec![f32::NAN; m * n];
            layer.forward(&x, m, &mut got, KernelLevel::detected(), 2, Epilogue::Bias);
            for (i, (g, w)) in got.iter().zip(&want).enumerate() {
                assert!((g - w).abs() <= 1e-4, "{m}×{n}×{k} at {i}: {g} vs {w}");
            }
        }
    }

    #[test]
    fn bad_shapes_are_errors() {
        assert!(F32Linear::pack(&[1.0; 6], &[0.0; 2], 4).is_err());
        assert!(F32Linear::pack(&[], &[], 0).is_err());
    }
}
