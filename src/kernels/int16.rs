//! int16 linear layers: weights and activations quantized per block of 64 values to integers
//! of at most ±5,792 (13.5 bits), integer dot products, f32 dequantization.
//!
//! Why: on AVX-512 VNNI without AVX-512 BF16 (Ice Lake and Cascade Lake Xeons, common cloud
//! hosts) `vpdpwssd` does 32 multiply-adds of 16-bit integers per instruction at the f32 FMA's
//! issue rate, twice f32's arithmetic, at an error far below bf16's: a value's step is
//! 1/5,792 of its block's largest, against bf16's 2⁻⁸ of itself. That keeps a reranker's
//! scores within 1e-3 of f32 where bf16 does not (docs/benchmarks.md, "int16 for
//! rerankers").
//!
//! Both sides are symmetric (`q = round(v / s)`, `|q| ≤ 5792`, `s = max|v| / 5792`): 64
//! products of at most 5,792² sum to at most 2,147,024,896 < 2³¹, so each block's i32 sum is
//! exactly `Σ qx·qw` on every kernel path. It is scaled by the block's activation and weight
//! scales into the f32 sum, block after block; the epilogue adds the bias. The paths differ
//! only in speed and are tested for identical results:
//! - **AVX-512 VNNI** (`vpdpwssd`): 8 rows × 3 panels of i32 sums per tile;
//! - **AVX2** (`vpmaddwd` + `vpaddd`): the same pair products, exactly;
//! - **scalar**: plain i32 arithmetic.
//!
//! Packed layout (as the f32 layer's, for the same reason: a tile's weights for one step are
//! one contiguous run, not streams a multiple of 4 KiB apart in the same L1 sets): panels of
//! 16 output columns in groups; in a group, for each pair of reduction indices, each panel's
//! 16 columns × 2 values (one AVX-512 register), the group's panels side by side. A group is
//! the panels one tile reads at each step, so its width follows the CPU ([`layout_group`]):
//! 3 where the VNNI kernel runs, 1 on AVX2, whose kernel reads a panel at a time and would
//! otherwise read 64 bytes of every 192 (a lone short sentence ran 25% slower so). Every path
//! runs on either layout, with the same results.
//! Blocks of 64 rather than int8's 32 halve the per-block rescaling, which took ~15% of a
//! micro-kernel's time at 32 (measured; docs/benchmarks.md, "int16 for rerankers").

use super::aligned::AlignedVec;
use super::cpu::KernelLevel;
use super::team::{available_threads, parallel_for_each};
use super::tiles::{for_each_tile, in_row_blocks, store_tile, Epilogue, SharedOut, PANEL};

/// Reduction indices per activation and weight scale.
pub const BLOCK: usize = 64;
/// The largest quantized magnitude: a block's 64 products stay below 2³¹.
pub const QMAX: i32 = 5792;
/// Reduction indices per pair: the 2 values one i32 lane of `vpdpwssd` sums.
const PAIR: usize = 2;
/// Values of one panel's pair: 16 columns × 2, one AVX-512 register.
const PAIR_VALUES: usize = PANEL * PAIR;
/// Pairs per block.
const BLOCK_PAIRS: usize = BLOCK / PAIR;
/// The widest group, the VNNI tile's columns: 8 rows × 3 panels = 24 i32 accumulators, with
/// the 3 weight vectors and a broadcast, fit the 32 AVX-512 registers (the f32 sums live in
/// the tile's buffer, touched once per block).
const GROUP: usize = 3;

/// Panels per group of the packed layout for a CPU whose best path is `level`: [`GROUP`]
/// where the VNNI kernel runs (its tile reads 3 panels at each step), else 1 (the AVX2 and
/// scalar kernels read a panel at a time, so each panel's weights are one sequential run).
fn layout_group(level: KernelLevel) -> usize {
    if level >= KernelLevel::Avx512Vnni {
        GROUP
    } else {
        1
    }
}
/// Rows of a tile on the VNNI and scalar paths (a divisor of the loop nest's chunk of 96
/// rows), and the most on any path: the size of a tile's f32 sums.
const TILE_ROWS: usize = 8;
/// Rows of a tile on the AVX2 path: 6 rows × 2 vectors of i32 sums, the two weight vectors
/// and a broadcast take 15 of its 16 registers.
const AVX2_ROWS: usize = 6;

/// A linear layer `y = x · Wᵀ + b` with int16 weights.
pub struct Int16Linear {
    n: usize,
    k: usize,
    /// `k` rounded up to whole blocks: the quantized rows' length.
    kpad: usize,
    blocks: usize,
    panels: usize,
    /// Panels per group of the layout (1 to [`GROUP`], see [`layout_group`]).
    group: usize,
    /// `panels × kpad × 16` values in groups (see the module doc), on a cache line; columns
    /// past `n` and reduction indices past `k` are zero.
    weights: AlignedVec<i16>,
    /// Per group, block and panel: the 16 columns' weight scales (0 in padding).
    scales: Vec<f32>,
    /// Padded to whole panels with 0.
    bias: Vec<f32>,
}

/// The first panel and the width of the group that holds `panel`, of `panels` in all, in
/// groups of `group`.
fn group_of(panel: usize, panels: usize, group: usize) -> (usize, usize) {
    let first = panel / group * group;
    (first, group.min(panels - first))
}

/// Quantizes `v` into `out` (same length) and returns the scale; NaN when `v` holds a
/// non-finite value, so that the layer's output is NaN too rather than silently finite.
/// Rounding is to nearest even by the float trick of the int8 layers (`x + 1.5·2²³`).
#[inline(always)]
fn quantize_block(v: &[f32], out: &mut [i16]) -> f32 {
    const MAGIC: f32 = 12_582_912.0;
    let mut amax = 0.0f32;
    let mut finite = true;
    for &x in v {
        amax = amax.max(x.abs());
        finite &= x.is_finite();
    }
    if !finite {
        out.fill(0);
        return f32::NAN;
    }
    if amax == 0.0 {
        out.fill(0);
        return 0.0;
    }
    let inv = QMAX as f32 / amax;
    for (q, &x) in out.iter_mut().zip(v) {
        // |x · inv| ≤ 5792 (plus rounding), so the result is in -5792..=5792.
        let r = (x * inv + MAGIC).to_bits() as i32 - MAGIC.to_bits() as i32;
        *q = r.clamp(-QMAX, QMAX) as i16;
    }
    amax / QMAX as f32
}

/// Quantizes `m` rows of `k` activations per block into `xq` (`m × kpad`, padding left as
/// is) and `scales` (`m × blocks`).
#[inline(always)]
fn quantize_activations_generic(
    x: &[f32],
    k: usize,
    kpad: usize,
    xq: &mut [i16],
    scales: &mut [f32],
) {
    let blocks = k.div_ceil(BLOCK);
    for ((row, q), s) in x
        .chunks_exact(k)
        .zip(xq.chunks_exact_mut(kpad))
        .zip(scales.chunks_exact_mut(blocks))
    {
        for ((v, q), s) in row.chunks(BLOCK).zip(q.chunks_mut(BLOCK)).zip(s) {
            *s = quantize_block(v, &mut q[..v.len()]);
        }
    }
}

/// [`quantize_activations_generic`] with AVX2 intrinsics for whole blocks (eight vectors: a
/// tree of `vmaxps`, where the portable loop's maximum is one serial chain, see the AVX-512
/// version); a partial last block takes the portable path. Same values and scales: the same
/// product `x · (5792 / max)`, rounded to nearest even (`vcvtps2dq` under the default MXCSR,
/// as the float trick), clamped to ±5792.
///
/// # Safety
///
/// The CPU must support AVX2 and FMA.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn quantize_activations_avx2(
    x: &[f32],
    k: usize,
    kpad: usize,
    xq: &mut [i16],
    scales: &mut [f32],
) {
    use std::arch::x86_64::*;
    const VECTORS: usize = BLOCK / 8;
    let blocks = k.div_ceil(BLOCK);
    let abs_mask = _mm256_castsi256_ps(_mm256_set1_epi32(0x7fff_ffff));
    let inf = _mm256_set1_ps(f32::INFINITY);
    let (lo, hi) = (_mm256_set1_epi32(-QMAX), _mm256_set1_epi32(QMAX));
    for ((row, q), s) in x
        .chunks_exact(k)
        .zip(xq.chunks_exact_mut(kpad))
        .zip(scales.chunks_exact_mut(blocks))
    {
        for ((v, q), scale) in row.chunks(BLOCK).zip(q.chunks_mut(BLOCK)).zip(s) {
            if v.len() < BLOCK {
                *scale = quantize_block(v, &mut q[..v.len()]);
                continue;
            }
            let mut vs = [_mm256_setzero_ps(); VECTORS];
            let mut amax = [_mm256_setzero_ps(); 2];
            let mut finite = _mm256_castsi256_ps(_mm256_set1_epi32(-1));
            for (i, vv) in vs.iter_mut().enumerate() {
                // SAFETY: `v` holds a whole block of 64 values.
                *vv = unsafe { _mm256_loadu_ps(v.as_ptr().add(8 * i)) };
                let a = _mm256_and_ps(*vv, abs_mask);
                // NaN compares false, as ±∞ does.
                finite = _mm256_and_ps(finite, _mm256_cmp_ps::<_CMP_LT_OQ>(a, inf));
                amax[i % 2] = _mm256_max_ps(amax[i % 2], a);
            }
            let m = _mm256_max_ps(amax[0], amax[1]);
            let m = _mm_max_ps(_mm256_castps256_ps128(m), _mm256_extractf128_ps::<1>(m));
            let m = _mm_max_ps(m, _mm_movehl_ps(m, m));
            let m = _mm_max_ss(m, _mm_shuffle_ps::<1>(m, m));
            let amax = _mm_cvtss_f32(m);
            let all_finite = _mm256_movemask_ps(finite) == 0xff;
            if !all_finite || amax == 0.0 {
                q.fill(0);
                *scale = if all_finite { 0.0 } else { f32::NAN };
                continue;
            }
            *scale = amax / QMAX as f32;
            let inv = _mm256_set1_ps(QMAX as f32 / amax);
            for (i, pair) in vs.chunks_exact(2).enumerate() {
                let [a, b] = [pair[0], pair[1]].map(|v| {
                    let r = _mm256_cvtps_epi32(_mm256_mul_ps(v, inv));
                    _mm256_min_epi32(_mm256_max_epi32(r, lo), hi)
                });
                // `packs` interleaves 128-bit halves: a0-3 b0-3 a4-7 b4-7; the permute puts
                // them back in order.
                let packed = _mm256_permute4x64_epi64::<0b11_01_10_00>(_mm256_packs_epi32(a, b));
                // SAFETY: `q` holds the block's 64 values.
                unsafe { _mm256_storeu_si256(q.as_mut_ptr().add(16 * i).cast(), packed) };
            }
        }
    }
}

/// [`quantize_activations_generic`] with AVX-512 intrinsics, a block of 64 in four vectors
/// (masked at a partial last block): the portable loop's block maximum is one serial chain
/// of `maxss` (LLVM does not reassociate f32 `max`), which made quantizing a fifth of a
/// MiniLM FFN layer's time. Same values and scales: the same product `x · (5792 / max)`,
/// rounded to nearest even (`vcvtps2dq` under the default MXCSR, as the generic path's float
/// trick), clamped to ±5792.
///
/// # Safety
///
/// The CPU has AVX-512 F/BW/VL/DQ.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq,avx2,fma")]
unsafe fn quantize_activations_avx512(
    x: &[f32],
    k: usize,
    kpad: usize,
    xq: &mut [i16],
    scales: &mut [f32],
) {
    use std::arch::x86_64::*;
    const VECTORS: usize = BLOCK / 16;
    let blocks = k.div_ceil(BLOCK);
    let inf = _mm512_set1_ps(f32::INFINITY);
    let (lo, hi) = (_mm512_set1_epi32(-QMAX), _mm512_set1_epi32(QMAX));
    // The first `n` of 16 lanes.
    let lanes = |n: usize| -> __mmask16 { ((1u32 << n.min(16)) - 1) as __mmask16 };
    for ((row, q), s) in x
        .chunks_exact(k)
        .zip(xq.chunks_exact_mut(kpad))
        .zip(scales.chunks_exact_mut(blocks))
    {
        for (b, scale) in s.iter_mut().enumerate() {
            let start = b * BLOCK;
            let len = (k - start).min(BLOCK);
            let mut v = [_mm512_setzero_ps(); VECTORS];
            let mut finite = true;
            let mut amax = _mm512_setzero_ps();
            for (i, v) in v.iter_mut().enumerate() {
                // SAFETY: the mask keeps the load within the row's `k` values.
                *v = unsafe {
                    _mm512_maskz_loadu_ps(
                        lanes(len.saturating_sub(16 * i)),
                        row.as_ptr().add(start + 16 * i),
                    )
                };
                let a = _mm512_abs_ps(*v);
                // NaN compares false, as ±∞ does.
                finite &= _mm512_cmp_ps_mask::<_CMP_LT_OQ>(a, inf) == 0xffff;
                amax = _mm512_max_ps(amax, a);
            }
            let amax = _mm512_reduce_max_ps(amax);
            let mut r = [_mm512_setzero_si512(); VECTORS];
            if !finite || amax == 0.0 {
                *scale = if finite { 0.0 } else { f32::NAN };
            } else {
                *scale = amax / QMAX as f32;
                let inv = _mm512_set1_ps(QMAX as f32 / amax);
                for (r, v) in r.iter_mut().zip(v) {
                    let q = _mm512_cvtps_epi32(_mm512_mul_ps(v, inv));
                    *r = _mm512_min_epi32(_mm512_max_epi32(q, lo), hi);
                }
            }
            // The block's values up to the row's padded end: past `k`, the padding's 0, as
            // the generic path leaves it.
            let values = (kpad - start).min(BLOCK);
            for (i, r) in r.iter().enumerate() {
                // SAFETY: the mask keeps the store within the row's `kpad` values.
                unsafe {
                    _mm256_mask_storeu_epi16(
                        q.as_mut_ptr().add(start + 16 * i).cast(),
                        lanes(values.saturating_sub(16 * i)),
                        _mm512_cvtepi32_epi16(*r),
                    )
                };
            }
        }
    }
}

/// Quantizes `m` rows of `k` activations per block of [`BLOCK`] into `xq` (`m × kpad`) and
/// `scales` (`m × blocks`), compiled for the best of `level` (the same values on every path).
fn quantize_activations(
    x: &[f32],
    k: usize,
    kpad: usize,
    xq: &mut [i16],
    scales: &mut [f32],
    level: KernelLevel,
) {
    match level.min(KernelLevel::detected()) {
        #[cfg(target_arch = "x86_64")]
        KernelLevel::Avx512Vnni | KernelLevel::Avx512Bf16 | KernelLevel::Amx => {
            // SAFETY: every level from AVX-512 VNNI up has AVX-512 F/BW/VL/DQ (clamped to the
            // detected one).
            unsafe { quantize_activations_avx512(x, k, kpad, xq, scales) }
        }
        #[cfg(target_arch = "x86_64")]
        KernelLevel::Avx2 => {
            // SAFETY: AVX2 and FMA at this level (clamped to the detected one).
            unsafe { quantize_activations_avx2(x, k, kpad, xq, scales) }
        }
        _ => quantize_activations_generic(x, k, kpad, xq, scales),
    }
}

impl Int16Linear {
    /// Quantizes `w` (`n×k`, PyTorch layout, `n = bias.len()`) per output column, a block of
    /// 64 at a time. Groups pack in parallel (start-up is on the cold-start path).
    ///
    /// # Errors
    ///
    /// When `w` is not `n×k` or `k` is 0.
    pub fn quantize(w: &[f32], bias: &[f32], k: usize) -> Result<Self, String> {
        Self::quantize_in_groups(w, bias, k, layout_group(KernelLevel::detected()))
    }

    /// [`Self::quantize`] into groups of `group` panels (1 to [`GROUP`]).
    fn quantize_in_groups(w: &[f32], bias: &[f32], k: usize, group: usize) -> Result<Self, String> {
        assert!(
            (1..=GROUP).contains(&group),
            "int16: a group of {group} panels"
        );
        let n = bias.len();
        if n.checked_mul(k) != Some(w.len()) || k == 0 {
            return Err(format!(
                "int16: a weight of {} values is not {n}×{k}",
                w.len()
            ));
        }
        let blocks = k.div_ceil(BLOCK);
        let kpad = blocks * BLOCK;
        let panels = n.div_ceil(PANEL);
        let mut weights = AlignedVec::<i16>::zeroed(panels * kpad * PANEL);
        let mut scales = vec![0.0f32; panels * blocks * PANEL];
        let mut padded_bias = vec![0.0f32; panels * PANEL];
        padded_bias[..n].copy_from_slice(bias);
        // Whole groups of `group` panels; the last may be narrower.
        let mut group_parts: Vec<_> = weights
            .chunks_mut(group * kpad * PANEL)
            .zip(scales.chunks_mut(group * blocks * PANEL))
            .collect();
        parallel_for_each(&mut group_parts, available_threads(), &|g, (wg, sg)| {
            let (first, width) = group_of(g * group, panels, group);
            let mut q = vec![0i16; kpad];
            for c in first * PANEL..((first + width) * PANEL).min(n) {
                let (p, lane) = (c / PANEL - first, c % PANEL);
                let column = &w[c * k..][..k];
                for (b, (v, q)) in column.chunks(BLOCK).zip(q.chunks_mut(BLOCK)).enumerate() {
                    sg[(b * width + p) * PANEL + lane] = quantize_block(v, &mut q[..v.len()]);
                }
                for (t, values) in q.chunks_exact(PAIR).enumerate() {
                    let at = (t * width + p) * PAIR_VALUES + lane * PAIR;
                    wg[at..at + PAIR].copy_from_slice(values);
                }
            }
        });
        Ok(Self {
            n,
            k,
            kpad,
            blocks,
            panels,
            group,
            weights,
            scales,
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

    /// Bytes held (weights, scales and bias).
    pub fn bytes(&self) -> usize {
        2 * self.weights.len() + 4 * (self.scales.len() + self.bias.len())
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
        in_row_blocks("int16", (x, m, self.k), (out, self.n), |x, m, out| {
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
        let (blocks, kpad) = (self.blocks, self.kpad);
        // Quantized activations, rows padded to whole blocks with zeros, one scale per block.
        let mut xq = vec![0i16; m * kpad];
        let mut x_scales = vec![0.0f32; m * blocks];
        quantize_activations(x, self.k, kpad, &mut xq, &mut x_scales, level);
        let shared = SharedOut(out.as_mut_ptr());
        let groups = self.panels.div_ceil(self.group);
        let tile_rows = if level == KernelLevel::Avx2 {
            AVX2_ROWS
        } else {
            TILE_ROWS
        };
        for_each_tile(m, groups, tile_rows, 1, threads, &|r0, rows, g, _| {
            let (p0, ps) = group_of(g * self.group, self.panels, self.group);
            // Left unwritten: every kernel writes the tile's `rows × ps × 16` sums before
            // reading them (zeroing all 1.5 KB per tile was ~3% of a short sentence's pass).
            let mut sums = std::mem::MaybeUninit::<TileSums>::uninit();
            let acc = sums.as_mut_ptr().cast::<f32>();
            let len = rows * ps * PANEL;
            let tile = Tile {
                x: &xq[r0 * kpad..(r0 + rows) * kpad],
                x_scales: &x_scales[r0 * blocks..(r0 + rows) * blocks],
                kpad,
                blocks,
                w: &self.weights[p0 * kpad * PANEL..(p0 + ps) * kpad * PANEL],
                w_scales: &self.scales[p0 * blocks * PANEL..(p0 + ps) * blocks * PANEL],
                panels: ps,
            };
            match level {
                #[cfg(target_arch = "x86_64")]
                KernelLevel::Avx512Vnni | KernelLevel::Avx512Bf16 | KernelLevel::Amx => {
                    // SAFETY: the level is at most the detected one (clamped above), so the
                    // CPU has AVX-512 F/BW/VL/DQ/VNNI; the tile holds `rows ≤ 8` rows and
                    // `ps ≤ 3` panels (sliced above); acc holds 8 × 3 × 16 values on a 64-byte
                    // boundary.
                    unsafe { vnni::tile(rows, &tile, acc) }
                }
                #[cfg(target_arch = "x86_64")]
                KernelLevel::Avx2 => {
                    // SAFETY: AVX2 and FMA at this level; the tile holds `rows ≤ 6` rows
                    // (`tile_rows`) and its group's panels; acc as above.
                    unsafe { avx2::tile(rows, &tile, acc) }
                }
                _ => {
                    // SAFETY: acc holds 8 × 3 × 16 ≥ len values; zeroed, they are initialized.
                    let acc = unsafe {
                        acc.write_bytes(0, len);
                        std::slice::from_raw_parts_mut(acc, len)
                    };
                    scalar_tile(rows, &tile, acc)
                }
            }
            // SAFETY: every kernel above wrote the tile's first `len` sums.
            let acc = unsafe { std::slice::from_raw_parts_mut(acc, len) };
            // SAFETY: `for_each_tile` gives disjoint tiles inside m rows and the layer's
            // groups; `out` (m×n) stays mutably borrowed for the call.
            unsafe {
                store_tile(
                    acc,
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

/// A tile's f32 sums (8 rows × 3 panels × 16), on a cache line: the AVX-512 kernel reads and
/// writes them as aligned vectors.
#[repr(C, align(64))]
struct TileSums([f32; TILE_ROWS * GROUP * PANEL]);

/// The inputs of one tile: a few rows of quantized activations against one group of panels.
struct Tile<'a> {
    /// `rows × kpad` values.
    x: &'a [i16],
    /// `rows × blocks` activation scales.
    x_scales: &'a [f32],
    kpad: usize,
    blocks: usize,
    /// The group's weights: `kpad / 2` runs of `panels × 32` values.
    w: &'a [i16],
    /// The group's scales: `blocks` runs of `panels × 16` values.
    w_scales: &'a [f32],
    /// Panels in the group (1 to 3).
    panels: usize,
}

/// The portable kernel: `acc[(r·ps + p)·16 + lane] = Σ_b sx[r][b] · sw[b][p][lane] ·
/// Σ_{k∈b} qx·qw` for `rows` rows × the group's `ps` panels, blocks in order, each added
/// with one fused multiply-add (as every path does).
fn scalar_tile(rows: usize, t: &Tile, acc: &mut [f32]) {
    let ps = t.panels;
    for r in 0..rows {
        let xr = &t.x[r * t.kpad..][..t.kpad];
        for p in 0..ps {
            let mut sums = [0.0f32; PANEL];
            for b in 0..t.blocks {
                let mut dots = [0i32; PANEL];
                for pair in b * BLOCK_PAIRS..(b + 1) * BLOCK_PAIRS {
                    let xs = &xr[pair * PAIR..][..PAIR];
                    let ws = &t.w[(pair * ps + p) * PAIR_VALUES..][..PAIR_VALUES];
                    for (d, wl) in dots.iter_mut().zip(ws.chunks_exact(PAIR)) {
                        *d += xs[0] as i32 * wl[0] as i32 + xs[1] as i32 * wl[1] as i32;
                    }
                }
                let sx = t.x_scales[r * t.blocks + b];
                let sw = &t.w_scales[(b * ps + p) * PANEL..][..PANEL];
                for ((s, d), sw) in sums.iter_mut().zip(dots).zip(sw) {
                    *s = (d as f32).mul_add(sx * sw, *s);
                }
            }
            acc[(r * ps + p) * PANEL..][..PANEL].copy_from_slice(&sums);
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod vnni {
    use super::{Tile, BLOCK_PAIRS, PAIR, PAIR_VALUES, PANEL};
    use std::arch::asm;
    use std::arch::x86_64::*;

    /// `acc + Σ pairs a·b` per i32 lane: `vpdpwssd`, written as an instruction because LLVM
    /// rewrites the intrinsic into `vpmaddwd` + `vpaddd` (two instructions, half the rate)
    /// when compiling for CPUs it does not tune as fast at it, which is every CPU reached
    /// through run-time dispatch (measured: the kernel ran at f32's speed, not twice it).
    ///
    /// # Safety
    ///
    /// The CPU must support AVX-512 F and VNNI.
    #[inline]
    #[target_feature(enable = "avx512f,avx512vnni")]
    unsafe fn dpwssd(acc: __m512i, a: __m512i, b: __m512i) -> __m512i {
        let mut acc = acc;
        // SAFETY: register operands only; the caller's CPU has the instruction.
        unsafe {
            asm!(
                "vpdpwssd {acc}, {a}, {b}",
                acc = inout(zmm_reg) acc,
                a = in(zmm_reg) a,
                b = in(zmm_reg) b,
                options(pure, nomem, nostack, preserves_flags),
            )
        };
        acc
    }

    /// VNNI tile of `rows ≤ 8` rows × the tile's `≤ 3` panels (see [`kernel`]).
    ///
    /// # Safety
    ///
    /// As [`kernel`].
    pub unsafe fn tile(rows: usize, t: &Tile, acc: *mut f32) {
        macro_rules! rows {
            ($np:literal) => {
                match rows {
                    1 => kernel::<1, $np>(t, acc),
                    2 => kernel::<2, $np>(t, acc),
                    3 => kernel::<3, $np>(t, acc),
                    4 => kernel::<4, $np>(t, acc),
                    5 => kernel::<5, $np>(t, acc),
                    6 => kernel::<6, $np>(t, acc),
                    7 => kernel::<7, $np>(t, acc),
                    8 => kernel::<8, $np>(t, acc),
                    _ => unreachable!("tile rows"),
                }
            };
        }
        unsafe {
            match t.panels {
                1 => rows!(1),
                2 => rows!(2),
                3 => rows!(3),
                _ => unreachable!("tile panels"),
            }
        }
    }

    /// `acc[(r·NP + p)·16 + lane] = Σ_b sx[r][b] · sw · Σ_{k∈b} qx·qw` with `vpdpwssd`: a
    /// block's i32 sums in registers (`MR × NP` of them), added into the f32 sums in `acc` at
    /// the block's end.
    ///
    /// # Safety
    ///
    /// The CPU must support AVX-512 F/BW/VL/DQ/VNNI; `t` holds at least `MR` rows and `NP`
    /// panels; `acc` is valid for reading and writing `MR × NP × 16` values and 64-byte
    /// aligned.
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq,avx512vnni")]
    unsafe fn kernel<const MR: usize, const NP: usize>(t: &Tile, acc: *mut f32) {
        let (x, w, kpad) = (t.x.as_ptr(), t.w.as_ptr(), t.kpad);
        unsafe {
            for i in 0..MR * NP {
                _mm512_storeu_ps(acc.add(i * PANEL), _mm512_setzero_ps());
            }
            for b in 0..t.blocks {
                let mut dots = [[_mm512_setzero_si512(); NP]; MR];
                for pair in b * BLOCK_PAIRS..(b + 1) * BLOCK_PAIRS {
                    let mut wv = [_mm512_setzero_si512(); NP];
                    for (p, v) in wv.iter_mut().enumerate() {
                        *v = _mm512_loadu_si512(w.add((pair * NP + p) * PAIR_VALUES).cast());
                    }
                    for (r, row) in dots.iter_mut().enumerate() {
                        let a = _mm512_set1_epi32(
                            x.add(r * kpad + pair * PAIR).cast::<i32>().read_unaligned(),
                        );
                        for (d, wp) in row.iter_mut().zip(&wv) {
                            *d = dpwssd(*d, a, *wp);
                        }
                    }
                }
                // Iterators only, no indexing by a loop variable: an array indexed so stays
                // in memory, and the block's loop then ran on the stack (measured: a third
                // of the issue rate).
                let mut sw = [_mm512_setzero_ps(); NP];
                for (p, v) in sw.iter_mut().enumerate() {
                    *v = _mm512_loadu_ps(t.w_scales.as_ptr().add((b * NP + p) * PANEL));
                }
                for (r, row) in dots.iter().enumerate() {
                    let sx = _mm512_set1_ps(*t.x_scales.get_unchecked(r * t.blocks + b));
                    for (p, (d, sw)) in row.iter().zip(&sw).enumerate() {
                        // Volatile: else LLVM keeps all 24 sums in registers across blocks,
                        // beside the 24 i32 sums, and spills in the inner loop.
                        let s = acc.add((r * NP + p) * PANEL).cast::<__m512>();
                        let scaled = _mm512_fmadd_ps(
                            _mm512_cvtepi32_ps(*d),
                            _mm512_mul_ps(sx, *sw),
                            s.read_volatile(),
                        );
                        s.write_volatile(scaled);
                    }
                }
            }
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use super::{Tile, AVX2_ROWS, BLOCK_PAIRS, PAIR, PAIR_VALUES, PANEL};
    use std::arch::x86_64::*;

    /// AVX2 tile of `rows ≤ 6` rows × the tile's panels, a panel at a time (see [`kernel`]).
    ///
    /// # Safety
    ///
    /// As [`kernel`] for each panel.
    pub unsafe fn tile(rows: usize, t: &Tile, acc: *mut f32) {
        for p in 0..t.panels {
            unsafe {
                match rows {
                    1 => kernel::<1>(t, p, acc),
                    2 => kernel::<2>(t, p, acc),
                    3 => kernel::<3>(t, p, acc),
                    4 => kernel::<4>(t, p, acc),
                    5 => kernel::<5>(t, p, acc),
                    AVX2_ROWS => kernel::<AVX2_ROWS>(t, p, acc),
                    _ => unreachable!("tile rows"),
                }
            }
        }
    }

    /// `acc[(r·ps + p)·16 + lane] = Σ_b sx[r][b] · sw · Σ_{k∈b} qx·qw` for `MR` rows and panel
    /// `p`, with `vpmaddwd` + `vpaddd` (each lane's pair of products, exactly, as
    /// `vpdpwssd` sums them): a block's `MR × 2` i32 sums in registers (12 at 6 rows, with the
    /// two weight vectors and a broadcast: 15 of the 16), added into the f32 sums in `acc` at
    /// the block's end.
    ///
    /// # Safety
    ///
    /// The CPU must support AVX2 and FMA; `t` holds at least `MR` rows and panel `p`; `acc`
    /// is valid for reading and writing `MR × ps × 16` values and 32-byte aligned.
    #[target_feature(enable = "avx2,fma")]
    unsafe fn kernel<const MR: usize>(t: &Tile, p: usize, acc: *mut f32) {
        let (x, w, kpad, ps) = (t.x.as_ptr(), t.w.as_ptr(), t.kpad, t.panels);
        unsafe {
            for r in 0..MR {
                let s = acc.add((r * ps + p) * PANEL);
                _mm256_store_ps(s, _mm256_setzero_ps());
                _mm256_store_ps(s.add(8), _mm256_setzero_ps());
            }
            for b in 0..t.blocks {
                let mut dots = [[_mm256_setzero_si256(); 2]; MR];
                for pair in b * BLOCK_PAIRS..(b + 1) * BLOCK_PAIRS {
                    let at = (pair * ps + p) * PAIR_VALUES;
                    let w0 = _mm256_loadu_si256(w.add(at).cast());
                    let w1 = _mm256_loadu_si256(w.add(at + PAIR_VALUES / 2).cast());
                    for (r, d) in dots.iter_mut().enumerate() {
                        let a = _mm256_set1_epi32(
                            x.add(r * kpad + pair * PAIR).cast::<i32>().read_unaligned(),
                        );
                        d[0] = _mm256_add_epi32(d[0], _mm256_madd_epi16(a, w0));
                        d[1] = _mm256_add_epi32(d[1], _mm256_madd_epi16(a, w1));
                    }
                }
                let at = (b * ps + p) * PANEL;
                let sw0 = _mm256_loadu_ps(t.w_scales.as_ptr().add(at));
                let sw1 = _mm256_loadu_ps(t.w_scales.as_ptr().add(at + 8));
                for (r, d) in dots.iter().enumerate() {
                    let sx = _mm256_set1_ps(*t.x_scales.get_unchecked(r * t.blocks + b));
                    // Volatile, as in the VNNI kernel: the f32 sums stay in `acc`, else LLVM
                    // keeps them in registers beside the i32 sums and spills.
                    let s = acc.add((r * ps + p) * PANEL).cast::<__m256>();
                    let s0 = _mm256_fmadd_ps(
                        _mm256_cvtepi32_ps(d[0]),
                        _mm256_mul_ps(sx, sw0),
                        s.read_volatile(),
                    );
                    s.write_volatile(s0);
                    let s1 = _mm256_fmadd_ps(
                        _mm256_cvtepi32_ps(d[1]),
                        _mm256_mul_ps(sx, sw1),
                        s.add(1).read_volatile(),
                    );
                    s.add(1).write_volatile(s1);
                }
            }
        }
    }
}

#[cfg(test)]
#[path = "int16_tests.rs"]
mod tests;
