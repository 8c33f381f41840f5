//! bf16 linear layers: weights stored as bfloat16 (half the bytes of f32), products
//! accumulated in f32.
//!
//! - **AVX-512 BF16** (`vdpbf16ps`: 32 multiply-adds per instruction, twice the f32 FMA rate):
//!   activations are rounded to bf16 too, pairs of reduction indices at a time;
//! - **AVX2 / AVX-512 without BF16**: weights are widened to f32 in registers (a shift and a
//!   mask) and multiplied with the f32 activations by FMA: the f32 rate with half the weight
//!   traffic;
//! - **scalar**: the same widening in portable Rust.
//!
//! - **AMX** (`tdpbf16ps` on 16×32 tiles of activations against 16 pairs × 16 columns of
//!   weights, f32 sums in tile registers): activations rounded to bf16 as for AVX-512 BF16 (see
//!   [`super::amx`]).
//!
//! Packed layout: panels of 16 output columns; in a panel, for each pair of reduction indices,
//! 16 × 2 values (`vdpbf16ps` consumes pairs). That is also the layout of an AMX weight tile
//! (16 rows of 64 bytes, one row per pair), so a panel holds whole tiles: its pairs are padded
//! with zeros to a multiple of 16 (the other paths read only the first `pairs`).

use super::aligned::AlignedVec;
#[cfg(target_arch = "x86_64")]
use super::amx;
use super::cpu::KernelLevel;
#[cfg(target_arch = "x86_64")]
use super::team::parallel_for_each;
#[cfg(target_arch = "x86_64")]
use super::tiles::CHUNK_ROWS;
use super::tiles::{for_each_tile, in_row_blocks, store_tile, Epilogue, SharedOut, PANEL};

/// Reduction indices per pair: the two bf16 one f32 lane of `vdpbf16ps` sums.
const PAIR: usize = 2;
/// Values of one panel's pair: 16 columns × 2, one AVX-512 register.
const PAIR_VALUES: usize = PANEL * PAIR;
/// Pairs per AMX tile: 16 rows of a weight tile, 32 bf16 of an activation tile's row.
const TILE_PAIRS: usize = 16;

/// Rows the AMX path multiplies per pass over the weights (a task of its split): the tiles'
/// products outrun the caches, and a layer's weights come from L3 (MiniLM's bf16 layers are
/// 21 MB). Measured with a throwaway probe on the AMX Xeon (one core, the 2 × 2 block over
/// 1536 × 384 weights, twelve layers' worth cycled): 96 rows ~1,000 GFLOP/s, 192 ~1,300, 384
/// ~1,500. 384 rows of a 1,536-wide input in bf16 are 1.2 MB: still in L2.
pub const AMX_CHUNK_ROWS: usize = 384;

/// f32 → bf16, rounding to nearest even (NaN stays NaN).
#[inline]
pub fn to_bf16(v: f32) -> u16 {
    let bits = v.to_bits();
    if v.is_nan() {
        return ((bits >> 16) as u16) | 0x40;
    }
    ((bits + 0x7FFF + ((bits >> 16) & 1)) >> 16) as u16
}

/// bf16 → f32 (exact).
#[inline]
pub fn from_bf16(v: u16) -> f32 {
    f32::from_bits((v as u32) << 16)
}

#[cfg(target_arch = "x86_64")]
thread_local! {
    /// The AMX path's bf16 copy of a block of activations, kept for the calling thread's
    /// next product: a fresh one per call was a 0.6–2.4 MB allocation zeroed and faulted in
    /// again for every layer (5% of MiniLM's pass at 64 × 107 tokens, perf). At most
    /// `BLOCK_ROWS` × the widest reduction of the models this thread runs.
    static AMX_STAGING: std::cell::Cell<AlignedVec<u16>> = Default::default();
}

/// A linear layer `y = x · Wᵀ + b` with bf16 weights.
pub struct Bf16Linear {
    n: usize,
    k: usize,
    pairs: usize,
    /// Pairs a panel holds: `pairs` rounded up to whole AMX tiles, the extra ones zero.
    pair_stride: usize,
    panels: usize,
    /// `panels × pair_stride × 16 × 2` values, on a cache line (whole AMX tile rows).
    weights: AlignedVec<u16>,
    /// Padded to whole panels with 0.
    bias: Vec<f32>,
}

impl Bf16Linear {
    /// Rounds `w` (`n×k`, PyTorch layout, `n = bias.len()`) to bf16 and packs it.
    ///
    /// # Errors
    ///
    /// When `w` is not `n×k` or `k` is 0.
    pub fn pack(w: &[f32], bias: &[f32], k: usize) -> Result<Self, String> {
        let n = bias.len();
        if n.checked_mul(k) != Some(w.len()) || k == 0 {
            return Err(format!(
                "bf16: a weight of {} values is not {n}×{k}",
                w.len()
            ));
        }
        let pairs = k.div_ceil(PAIR);
        let pair_stride = pairs.next_multiple_of(TILE_PAIRS);
        let panels = n.div_ceil(PANEL);
        let mut weights = AlignedVec::zeroed(panels * pair_stride * PAIR_VALUES);
        for (c, row) in w.chunks_exact(k).enumerate() {
            let (panel, lane) = (c / PANEL, c % PANEL);
            for (i, &v) in row.iter().enumerate() {
                let (g, j) = (i / PAIR, i % PAIR);
                weights[(panel * pair_stride + g) * PAIR_VALUES + lane * PAIR + j] = to_bf16(v);
            }
        }
        let mut padded_bias = vec![0.0f32; panels * PANEL];
        padded_bias[..n].copy_from_slice(bias);
        Ok(Self {
            n,
            k,
            pairs,
            pair_stride,
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
        2 * self.weights.len() + 4 * self.bias.len()
    }

    /// `out[m×n] = x[m×k] · Wᵀ + b`, then the `epilogue`, on the kernel path of `level`,
    /// using up to `threads` threads.
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
        in_row_blocks("bf16", (x, m, self.k), (out, self.n), |x, m, out| {
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
        let k = self.k;
        if m == 0 {
            return;
        }
        // Never above what this CPU has, whatever the caller asked for.
        let level = level.min(KernelLevel::detected());
        let kpad = self.pairs * PAIR;
        let shared = SharedOut(out.as_mut_ptr());
        #[cfg(target_arch = "x86_64")]
        if level >= KernelLevel::Amx {
            self.forward_amx(x, m, shared, threads, epilogue, level);
            return;
        }
        if level >= KernelLevel::Avx512Bf16 {
            // Activations rounded to bf16, rows padded to whole pairs with zeros.
            let mut xb = vec![0u16; m * kpad];
            for (row, b) in x.chunks_exact(k).zip(xb.chunks_exact_mut(kpad)) {
                #[cfg(target_arch = "x86_64")]
                // SAFETY: the CPU has AVX-512 BF16 (level ≤ detected); `b` is at least as
                // long as `row`.
                unsafe {
                    avx512::round_row(row, b)
                };
                #[cfg(not(target_arch = "x86_64"))]
                for (d, &v) in b.iter_mut().zip(row) {
                    *d = to_bf16(v);
                }
            }
            for_each_tile(m, self.panels, 6, 4, threads, &|r0, rows, p0, ps| {
                let mut acc = [0.0f32; 6 * 4 * PANEL];
                #[cfg(target_arch = "x86_64")]
                // SAFETY: the level is at most the detected one, so the CPU has AVX-512 BF16;
                // xb holds rows r0..r0+rows of kpad values, the weights hold panels
                // p0..p0+ps of pair_stride ≥ pairs × 32 values, acc rows × ps × 16 values.
                unsafe {
                    avx512::tile(
                        rows,
                        ps,
                        xb[r0 * kpad..].as_ptr(),
                        kpad,
                        self.weights[p0 * self.pair_stride * PAIR_VALUES..].as_ptr(),
                        self.pairs,
                        self.pair_stride,
                        acc.as_mut_ptr(),
                    )
                };
                // SAFETY: `for_each_tile` gives disjoint tiles inside m rows and the layer's
                // panels; `out` (m×n) stays mutably borrowed for the call.
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
            return;
        }
        // f32 activations; an odd k gets a zero-padded copy so that pairs are whole.
        let padded;
        let x = if kpad == k {
            x
        } else {
            let mut p = vec![0.0f32; m * kpad];
            for (row, d) in x.chunks_exact(k).zip(p.chunks_exact_mut(kpad)) {
                d[..k].copy_from_slice(row);
            }
            padded = p;
            &padded[..]
        };
        for_each_tile(m, self.panels, 4, 1, threads, &|r0, rows, p0, ps| {
            let mut acc = [0.0f32; 4 * PANEL];
            let w =
                &self.weights[p0 * self.pair_stride * PAIR_VALUES..][..self.pairs * PAIR_VALUES];
            let x = &x[r0 * kpad..(r0 + rows) * kpad];
            match level {
                #[cfg(target_arch = "x86_64")]
                KernelLevel::Avx2 | KernelLevel::Avx512Vnni => {
                    // SAFETY: the CPU has AVX2 and FMA (level ≤ detected); x holds `rows`
                    // rows of kpad values, w one panel of pairs × 32 values, acc rows × 16.
                    unsafe {
                        avx2::tile(
                            rows,
                            x.as_ptr(),
                            kpad,
                            w.as_ptr(),
                            self.pairs,
                            acc.as_mut_ptr(),
                        )
                    }
                }
                _ => scalar_tile(rows, x, kpad, w, &mut acc),
            }
            // SAFETY: `for_each_tile` gives disjoint tiles inside m rows and the layer's
            // panels; `out` (m×n) stays mutably borrowed for the call.
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

    /// [`Self::forward_block`] on AMX tiles: the activations rounded to bf16 into a staging
    /// buffer of whole tiles (rows padded with zeros to a multiple of 16, each row to the
    /// panels' `pair_stride`), then blocks of up to 32 rows × 2 panels, each summed over the
    /// whole reduction in four tile registers, stored through the same epilogue as the other
    /// paths.
    ///
    /// One task of the thread split (a chunk of up to 96 rows × a range of panels) configures
    /// the tiles once and releases them at its end, so no tile state outlives the kernel
    /// (configuring and releasing costs ~0.2 µs, measured: too much for every 32×32 block).
    #[cfg(target_arch = "x86_64")]
    fn forward_amx(
        &self,
        x: &[f32],
        m: usize,
        shared: SharedOut,
        threads: usize,
        epilogue: Epilogue,
        level: KernelLevel,
    ) {
        let k = self.k;
        let kstride = self.pair_stride * PAIR;
        let mpad = m.next_multiple_of(amx::TILE_ROWS);
        let mut staging = AMX_STAGING.take();
        if staging.len() < mpad * kstride {
            staging = AlignedVec::zeroed(mpad * kstride);
        }
        let xb = &mut staging[..mpad * kstride];
        // Rows past m (up to a whole tile) are read by the tiles: zero, not a stale value.
        xb[m * kstride..].fill(0);
        // Rounded on every thread, a chunk of rows at a time: at the tiles' speed a serial
        // conversion would be a large part of a big batch's time.
        let mut chunks: Vec<&mut [u16]> =
            xb[..m * kstride].chunks_mut(CHUNK_ROWS * kstride).collect();
        parallel_for_each(&mut chunks, threads, &|c, chunk| {
            let rows = x[c * CHUNK_ROWS * k..].chunks_exact(k);
            for (row, b) in rows.zip(chunk.chunks_exact_mut(kstride)) {
                // SAFETY: the AMX level implies AVX-512 BF16 (level ≤ detected); `b` is
                // at least as long as `row`.
                unsafe { avx512::round_row(row, b) };
                // The reduction's padding to whole tiles: zero.
                b[k..].fill(0);
            }
        });
        let ktiles = self.pair_stride / TILE_PAIRS;
        let panel_values = self.pair_stride * PAIR_VALUES;
        let (xb, weights) = (&*xb, &self.weights[..]);
        // Whole row chunks × all panels per call: one call is one task of the split; within
        // it, each pair of panels (in L1) meets every row of the chunk (in L2).
        let np = self.panels.max(1);
        for_each_tile(
            m,
            self.panels,
            AMX_CHUNK_ROWS,
            np,
            threads,
            &|r0, rows, p0, ps| {
                let mut acc = [0.0f32; amx::BLOCK_ROWS * amx::BLOCK_PANELS * PANEL];
                // SAFETY: the level is at most the detected one, so the CPU has AMX-BF16 and
                // Linux granted the tile data.
                let _tiles = unsafe { amx::Tiles::configure() };
                for p in (p0..p0 + ps).step_by(amx::BLOCK_PANELS) {
                    let pn = amx::BLOCK_PANELS.min(p0 + ps - p);
                    for r in (r0..r0 + rows).step_by(amx::BLOCK_ROWS) {
                        let rn = amx::BLOCK_ROWS.min(r0 + rows - r);
                        // SAFETY: tiles configured above; the staging buffer holds whole tiles
                        // of rows r..r + 16·⌈rn/16⌉ ≤ mpad (r is a multiple of 16), each of
                        // kstride = 32·ktiles values; panels p..p + pn ≤ panels hold
                        // ktiles tiles each, panel_values apart; acc holds 32 × 2 × 16 values.
                        unsafe {
                            amx::block(
                                rn.div_ceil(amx::TILE_ROWS),
                                pn,
                                xb[r * kstride..].as_ptr(),
                                kstride,
                                weights[p * panel_values..].as_ptr(),
                                panel_values,
                                ktiles,
                                acc.as_mut_ptr(),
                            )
                        };
                        // SAFETY: `for_each_tile` gives disjoint tiles inside m rows and the
                        // layer's panels, and this block lies in its tile; `out` (m×n) stays
                        // mutably borrowed for the call.
                        unsafe {
                            store_tile(
                                &mut acc,
                                &self.bias,
                                self.n,
                                (r, rn),
                                (p, pn),
                                shared,
                                epilogue,
                                level,
                            )
                        };
                    }
                }
            },
        );
        AMX_STAGING.set(staging);
    }
}

/// The portable kernel: one panel, `rows` rows of f32 activations.
fn scalar_tile(rows: usize, x: &[f32], kpad: usize, w: &[u16], acc: &mut [f32]) {
    for r in 0..rows {
        let xr = &x[r * kpad..][..kpad];
        let mut sums = [0.0f32; PANEL];
        for (g, wg) in w.chunks_exact(PAIR_VALUES).enumerate() {
            let (x0, x1) = (xr[g * PAIR], xr[g * PAIR + 1]);
            for (s, wl) in sums.iter_mut().zip(wg.chunks_exact(PAIR)) {
                *s += x0 * from_bf16(wl[0]) + x1 * from_bf16(wl[1]);
            }
        }
        acc[r * PANEL..][..PANEL].copy_from_slice(&sums);
    }
}

#[cfg(target_arch = "x86_64")]
pub(crate) mod avx512 {
    use super::{PAIR, PAIR_VALUES, PANEL};
    use crate::kernels::int8::tile_shapes;
    use std::arch::x86_64::*;

    /// Rounds `row` to bf16 into `out[..row.len()]` (`vcvtne2ps2bf16`: to nearest even, as
    /// [`super::to_bf16`]), 32 values per instruction.
    ///
    /// # Safety
    ///
    /// The CPU must support AVX-512 F/BW/VL/DQ and BF16; `out` is at least as long as `row`.
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq,avx512bf16")]
    pub unsafe fn round_row(row: &[f32], out: &mut [u16]) {
        assert!(out.len() >= row.len());
        let chunks = row.len() / 32;
        for c in 0..chunks {
            let lo = _mm512_loadu_ps(row.as_ptr().add(c * 32));
            let hi = _mm512_loadu_ps(row.as_ptr().add(c * 32 + 16));
            let packed: __m512i = std::mem::transmute(_mm512_cvtne2ps_pbh(hi, lo));
            _mm512_storeu_si512(out.as_mut_ptr().add(c * 32).cast(), packed);
        }
        for i in chunks * 32..row.len() {
            out[i] = super::to_bf16(row[i]);
        }
    }

    /// BF16 tile of `mr ≤ 6` rows × `np ≤ 4` panels (see [`kernel`]).
    ///
    /// # Safety
    ///
    /// As [`kernel`].
    #[allow(clippy::too_many_arguments)]
    pub unsafe fn tile(
        mr: usize,
        np: usize,
        x: *const u16,
        kpad: usize,
        w: *const u16,
        pairs: usize,
        pair_stride: usize,
        acc: *mut f32,
    ) {
        unsafe { tile_shapes!(kernel, mr, np, (x, kpad, w, pairs, pair_stride, acc)) }
    }

    /// `acc[(r·NP + p)·16 + lane] = Σ_k x[r][k] · w[p][k][lane]` with `vdpbf16ps`.
    ///
    /// # Safety
    ///
    /// The CPU must support AVX-512 F/BW/VL/DQ and BF16; `x` holds `MR` rows of
    /// `kpad = pairs·2` values; `w` holds `NP` panels of `pair_stride × 32` values
    /// (`pair_stride ≥ pairs`); `acc` is valid for writing `MR × NP × 16` values.
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq,avx512bf16")]
    unsafe fn kernel<const MR: usize, const NP: usize>(
        x: *const u16,
        kpad: usize,
        w: *const u16,
        pairs: usize,
        pair_stride: usize,
        acc: *mut f32,
    ) {
        let panel_values = pair_stride * PAIR_VALUES;
        let mut sums = [[_mm512_setzero_ps(); NP]; MR];
        for g in 0..pairs {
            let mut wv = [_mm512_setzero_si512(); NP];
            for (p, v) in wv.iter_mut().enumerate() {
                *v = _mm512_loadu_si512(w.add(p * panel_values + g * PAIR_VALUES).cast());
            }
            for (r, row) in sums.iter_mut().enumerate() {
                let a =
                    _mm512_set1_epi32(x.add(r * kpad + g * PAIR).cast::<i32>().read_unaligned());
                let a: __m512bh = std::mem::transmute(a);
                for (s, wp) in row.iter_mut().zip(&wv) {
                    *s = _mm512_dpbf16_ps(*s, a, std::mem::transmute::<__m512i, __m512bh>(*wp));
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
    use super::{PAIR, PAIR_VALUES, PANEL};
    use std::arch::x86_64::*;

    /// AVX2 tile of `mr ≤ 4` rows × 1 panel (see [`kernel`]).
    ///
    /// # Safety
    ///
    /// As [`kernel`].
    pub unsafe fn tile(
        mr: usize,
        x: *const f32,
        kpad: usize,
        w: *const u16,
        pairs: usize,
        acc: *mut f32,
    ) {
        unsafe {
            match mr {
                1 => kernel::<1>(x, kpad, w, pairs, acc),
                2 => kernel::<2>(x, kpad, w, pairs, acc),
                3 => kernel::<3>(x, kpad, w, pairs, acc),
                4 => kernel::<4>(x, kpad, w, pairs, acc),
                _ => unreachable!("tile rows"),
            }
        }
    }

    /// `acc[r·16 + lane] = Σ_k x[r][k] · w[k][lane]` for one panel: each 32-bit lane of a
    /// weight load holds the bf16 of two reduction indices, widened to f32 by a shift (low
    /// half) and a mask (high half).
    ///
    /// # Safety
    ///
    /// The CPU must support AVX2 and FMA; `x` holds `MR` rows of `kpad = pairs·2` values;
    /// `w` holds one panel of `pairs × 32` values; `acc` is valid for writing `MR × 16`.
    #[target_feature(enable = "avx2,fma")]
    unsafe fn kernel<const MR: usize>(
        x: *const f32,
        kpad: usize,
        w: *const u16,
        pairs: usize,
        acc: *mut f32,
    ) {
        let high = _mm256_set1_epi32(0xFFFF_0000u32 as i32);
        let mut sums = [[_mm256_setzero_ps(); 2]; MR];
        for g in 0..pairs {
            let v0 = _mm256_loadu_si256(w.add(g * PAIR_VALUES).cast());
            let v1 = _mm256_loadu_si256(w.add(g * PAIR_VALUES + 16).cast());
            let (w00, w01) = (
                _mm256_castsi256_ps(_mm256_slli_epi32(v0, 16)),
                _mm256_castsi256_ps(_mm256_and_si256(v0, high)),
            );
            let (w10, w11) = (
                _mm256_castsi256_ps(_mm256_slli_epi32(v1, 16)),
                _mm256_castsi256_ps(_mm256_and_si256(v1, high)),
            );
            for (r, s) in sums.iter_mut().enumerate() {
                let x0 = _mm256_set1_ps(*x.add(r * kpad + g * PAIR));
                let x1 = _mm256_set1_ps(*x.add(r * kpad + g * PAIR + 1));
                s[0] = _mm256_fmadd_ps(x1, w01, _mm256_fmadd_ps(x0, w00, s[0]));
                s[1] = _mm256_fmadd_ps(x1, w11, _mm256_fmadd_ps(x0, w10, s[1]));
            }
        }
        for (r, s) in sums.iter().enumerate() {
            _mm256_storeu_ps(acc.add(r * PANEL), s[0]);
            _mm256_storeu_ps(acc.add(r * PANEL + 8), s[1]);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::test_util::{levels, test_values as values};

    #[test]
    fn rounding_to_bf16() {
        assert_eq!(to_bf16(1.0), 0x3F80);
        assert_eq!(from_bf16(to_bf16(-2.5)), -2.5);
        // Ties go to even: 1 + 2⁻⁸ lies halfway between 1 and 1 + 2⁻⁷.
        assert_eq!(from_bf16(to_bf16(1.0 + 1.0 / 256.0)), 1.0);
        assert_eq!(from_bf16(to_bf16(1.0 + 3.0 / 256.0)), 1.0 + 4.0 / 256.0);
        assert!(from_bf16(to_bf16(f32::NAN)).is_nan());
        assert_eq!(from_bf16(to_bf16(f32::INFINITY)), f32::INFINITY);
        assert_eq!(from_bf16(to_bf16(f32::MAX)), f32::INFINITY);
    }

    /// The naive reference in f64: weights rounded to bf16, activations rounded too when the
    /// path does so (AVX-512 BF16).
    fn naive(x: &[f32], m: usize, w: &[f32], b: &[f32], k: usize, round_x: bool) -> Vec<f64> {
        let n = b.len();
        let r = |v: f32| from_bf16(to_bf16(v)) as f64;
        let mut out = vec![0.0; m * n];
        for i in 0..m {
            for c in 0..n {
                out[i * n + c] = b[c] as f64
                    + (0..k)
                        .map(|t| {
                            let xv = x[i * k + t];
                            (if round_x { r(xv) } else { xv as f64 }) * r(w[c * k + t])
                        })
                        .sum::<f64>();
            }
        }
        out
    }

    #[test]
    fn every_path_matches_the_naive_reference() {
        for (m, n, k) in [
            (1, 1, 1),
            (1, 16, 2),
            (3, 17, 5),
            (7, 33, 13),
            (13, 64, 64),
            (6, 384, 384),
            (100, 40, 37),
            (200, 96, 24),
            (1000, 20, 10),
        ] {
            let x = values(21 + m as u64, m * k);
            let w = values(27 + n as u64, n * k);
            let b = values(23, n);
            let layer = Bf16Linear::pack(&w, &b, k).unwrap();
            for level in levels() {
                let want = naive(&x, m, &w, &b, k, level >= KernelLevel::Avx512Bf16);
                for threads in [1, 2] {
                    let mut got = vec![f32::NAN; m * n];
                    layer.forward(&x, m, &mut got, level, threads, Epilogue::Bias);
                    for (i, (g, w)) in got.iter().zip(&want).enumerate() {
                        // f32 accumulation of k products of values ≤ 1.
                        let tol = 1e-5 * (k as f64).sqrt() + 1e-6 * w.abs();
                        assert!(
                            (*g as f64 - w).abs() <= tol,
                            "{m}×{n}×{k} on {level} ({threads} threads) at {i}: {g} vs {w}"
                        );
                    }
                }
            }
        }
    }

    /// Whether this CPU runs the AMX path (with the tile data granted); says the test is
    /// skipped when not.
    fn amx_here() -> bool {
        let detected = KernelLevel::detected();
        if detected < KernelLevel::Amx {
            eprintln!("skipped: no AMX here (detected {detected}), the AMX path is not tested");
        }
        detected >= KernelLevel::Amx
    }

    /// The AMX path against the naive reference (activations rounded to bf16, as it does) on
    /// the shapes around its tiles: rows around 16 and 32, columns around a panel, reductions
    /// around a 32-value tile, MiniLM's widths; every epilogue, one and two threads. Skipped
    /// (and said so) where the CPU has no AMX or Linux refused the tile data.
    #[test]
    fn the_amx_path_matches_the_naive_reference_on_edge_shapes() {
        if !amx_here() {
            return;
        }
        for k in [1, 31, 32, 33, 384] {
            for n in [1, 15, 16, 17, 384, 1536] {
                let w = values(31 + (n * k) as u64, n * k);
                let b = values(37 + n as u64, n);
                let layer = Bf16Linear::pack(&w, &b, k).unwrap();
                for m in [1, 15, 16, 17, 33, 100] {
                    let x = values(41 + (m * k) as u64, m * k);
                    let sums = naive(&x, m, &w, &b, k, true);
                    // The tolerance of the AVX-512 BF16 path (see above).
                    let tol = |v: f64| 1e-5 * (k as f64).sqrt() + 1e-6 * v.abs();
                    for epilogue in [Epilogue::Bias, Epilogue::BiasGelu, Epilogue::BiasGeluTanh] {
                        // The activation of the f32-rounded reference, by the same functions
                        // (GELU's slope is at most 1.13: the tolerance grows by that).
                        let mut want: Vec<f32> = sums.iter().map(|&v| v as f32).collect();
                        let slope = match epilogue {
                            Epilogue::Bias => 1.0,
                            Epilogue::BiasGelu => {
                                crate::kernels::gelu_at(&mut want, KernelLevel::Scalar);
                                1.13
                            }
                            Epilogue::BiasGeluTanh => {
                                crate::kernels::gelu_tanh_at(&mut want, KernelLevel::Scalar);
                                1.13
                            }
                        };
                        for threads in [1, 2] {
                            let mut got = vec![f32::NAN; m * n];
                            layer.forward(&x, m, &mut got, KernelLevel::Amx, threads, epilogue);
                            for (i, ((g, w), s)) in got.iter().zip(&want).zip(&sums).enumerate() {
                                let tol = slope * tol(*s) + 1e-6;
                                assert!(
                                    (*g as f64 - *w as f64).abs() <= tol,
                                    "{m}×{n}×{k} {epilogue:?} ({threads} threads) at {i}: \
                                     {g} vs {w}"
                                );
                            }
                        }
                    }
                }
            }
        }
        // No rows: nothing to do, nothing written.
        let layer = Bf16Linear::pack(&values(1, 17 * 33), &values(2, 17), 33).unwrap();
        layer.forward(&[], 0, &mut [], KernelLevel::Amx, 2, Epilogue::Bias);
    }

    /// The AMX path's staging buffer is kept per thread from one product to the next: a
    /// narrower reduction after a wider one, and fewer rows after more, must read zeros where
    /// the padding is, not the last product's values. Rows past one chunk (384) and one block
    /// (768) of rows too.
    #[test]
    fn the_amx_path_reuses_its_staging_without_stale_values() {
        if !amx_here() {
            return;
        }
        let n = 17;
        for (k, m) in [(384, 800), (33, 17), (384, 385), (1, 3), (31, 770)] {
            let w = values(51 + k as u64, n * k);
            let b = values(53, n);
            let layer = Bf16Linear::pack(&w, &b, k).unwrap();
            let x = values(57 + (m * k) as u64, m * k);
            let want = naive(&x, m, &w, &b, k, true);
            let mut got = vec![f32::NAN; m * n];
            layer.forward(&x, m, &mut got, KernelLevel::Amx, 1, Epilogue::Bias);
            for (i, (g, w)) in got.iter().zip(&want).enumerate() {
                let tol = 1e-5 * (k as f64).sqrt() + 1e-6 * w.abs();
                assert!(
                    (*g as f64 - w).abs() <= tol,
                    "{m}×{n}×{k} at {i}: {g} vs {w}"
                );
            }
        }
    }

    #[test]
    fn bad_shapes_are_errors() {
        assert!(Bf16Linear::pack(&[1.0; 6], &[0.0; 2], 4).is_err());
        assert!(Bf16Linear::pack(&[], &[], 0).is_err());
    }
}
