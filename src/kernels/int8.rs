//! int8 linear layers: weights quantized per output column at load, activations quantized per
//! block of 32 values of a row at each call, integer dot products, f32 dequantization.
//!
//! Why blocks: transformer activations have a few outlier channels, tens of times larger than
//! the rest. With one scale per row they flatten every other channel to a handful of levels
//! (MiniLM: cosine 0.990 against f32 on short inputs); with one scale per 32 values an outlier
//! only coarsens its own block (the same block size as GGML's Q8_0).
//!
//! Both sides are symmetric (`q = round(v / s)`, `|q| ≤ 127`, `s = max|v| / 127`), so each
//! block's i32 sum is exactly `Σ qx·qw` on every kernel path; it is scaled by the block's
//! activation scale into an f32 sum, which the epilogue scales by the column's weight scale and
//! adds to the bias. The paths differ only in speed and are tested for identical results. Per
//! path:
//! - **AVX-512 VNNI** (`vpdpbusd`, 64 multiply-adds per instruction): it multiplies *unsigned*
//!   bytes by signed ones, so activations are stored as `qx + 128` and each block's sum starts
//!   from `−128 · Σ qw` over the block (precomputed at load);
//! - **AVX2** (`vpmaddubsw` + `vpmaddwd`): unsigned × signed bytes too, with the sign moved
//!   from the activation onto the weight (`|qx| · sign(qx)·qw`), which cannot saturate since
//!   `2 · 127 · 127 < 2¹⁵`;
//! - **scalar**: plain i32 arithmetic.
//!
//! Weights are packed once in the layout the SIMD kernels read with one load per step: panels
//! of 16 columns; in a panel, for each group of 4 reduction indices, 16 × 4 bytes (column-major
//! groups, as `vpdpbusd` consumes them).

use super::cpu::KernelLevel;
use super::team::{available_threads, parallel_for_each};
use super::tiles::{
    for_each_tile, in_row_blocks, prefetch_share, store_tile, Epilogue, SharedOut, PANEL,
};

/// Reduction indices per group: the 4 bytes one i32 lane of `vpdpbusd` sums.
const GROUP: usize = 4;
/// Bytes of one panel's group: 16 columns × 4 bytes, one AVX-512 register.
const GROUP_BYTES: usize = PANEL * GROUP;
/// Reduction indices per activation scale.
pub const BLOCK: usize = 32;
/// Groups per block.
const BLOCK_GROUPS: usize = BLOCK / GROUP;

/// A linear layer `y = x · Wᵀ + b` with int8 weights.
pub struct Int8Linear {
    n: usize,
    k: usize,
    groups: usize,
    panels: usize,
    /// `panels × groups × 16 × 4` bytes.
    weights: Vec<i8>,
    /// Per panel, block and lane: the weight scale (`panels × blocks × 16`, 0 in padding).
    scales: Vec<f32>,
    /// Per panel, block and lane: `−128 · Σ qw` over the block, where the VNNI form's sums
    /// start (`panels × blocks × 16`).
    offsets: Vec<i32>,
    blocks: usize,
    bias: Vec<f32>,
}

/// Quantizes `v` into `out` (same length) and returns the scale; NaN when `v` holds a
/// non-finite value, so that the layer's output is NaN too rather than silently finite.
///
/// Rounding is to nearest even by the float trick (`x + 1.5·2²³` holds `round(x)` in its low
/// mantissa bits for `|x| < 2²²`), which vectorizes on every x86-64 (SSE2 has no rounding
/// instruction, and `round_ties_even` would be a libm call per value).
#[inline(always)]
fn quantize_row(v: &[f32], out: &mut [i8]) -> f32 {
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
    let inv = 127.0 / amax;
    for (q, &x) in out.iter_mut().zip(v) {
        // |x · inv| ≤ 127 (plus rounding), so the result is in -127..=127.
        let r = (x * inv + MAGIC).to_bits() as i32 - MAGIC.to_bits() as i32;
        *q = r.clamp(-127, 127) as i8;
    }
    amax / 127.0
}

/// Quantizes `m` rows of `k` activations per block into `xq` (`m × kpad`, padding left as
/// is) and `scales` (`m × blocks`); in VNNI form (`q + 128`) when `vnni`.
#[inline(always)]
fn quantize_activations_generic(
    x: &[f32],
    k: usize,
    kpad: usize,
    vnni: bool,
    xq: &mut [i8],
    scales: &mut [f32],
) {
    let blocks = k.div_ceil(BLOCK);
    for ((row, q), s) in x
        .chunks_exact(k)
        .zip(xq.chunks_exact_mut(kpad))
        .zip(scales.chunks_exact_mut(blocks))
    {
        for ((v, q), s) in row.chunks(BLOCK).zip(q.chunks_mut(BLOCK)).zip(s) {
            *s = quantize_row(v, &mut q[..v.len()]);
        }
        if vnni {
            for q in q.iter_mut() {
                *q = (*q as u8 ^ 0x80) as i8;
            }
        }
    }
}

/// [`quantize_activations`] compiled for AVX2.
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
    vnni: bool,
    xq: &mut [i8],
    scales: &mut [f32],
) {
    quantize_activations_generic(x, k, kpad, vnni, xq, scales)
}

/// [`quantize_activations_generic`] with AVX-512 intrinsics, a block of 32 in two vectors
/// (masked at a partial last block). The portable loop's block maximum is one serial chain of
/// `maxss` (LLVM does not reassociate f32 `max`): it was ~3% of an eight-stream Qwen3-0.6B
/// Q8_0 decode step, on its serial thread (perf, Ice Lake). Same bytes and scales: the same
/// product `x · (127 / max)`, rounded to nearest even (`vcvtps2dq` under the default MXCSR,
/// as the generic path's float trick), clamped to ±127, `+ 128` in VNNI form.
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
    vnni: bool,
    xq: &mut [i8],
    scales: &mut [f32],
) {
    use std::arch::x86_64::*;
    let blocks = k.div_ceil(BLOCK);
    let inf = _mm512_set1_ps(f32::INFINITY);
    let (lo, hi) = (_mm512_set1_epi32(-127), _mm512_set1_epi32(127));
    let offset = _mm512_set1_epi32(if vnni { 128 } else { 0 });
    let lanes = |n: usize| -> __mmask16 { ((1u32 << n.min(16)) - 1) as __mmask16 };
    for ((row, q), s) in x
        .chunks_exact(k)
        .zip(xq.chunks_exact_mut(kpad))
        .zip(scales.chunks_exact_mut(blocks))
    {
        for (b, scale) in s.iter_mut().enumerate() {
            let start = b * BLOCK;
            let len = (k - start).min(BLOCK);
            let (m0, m1) = (lanes(len), lanes(len.saturating_sub(16)));
            // SAFETY: the masks keep the loads within the row's `k` values.
            let (v0, v1) = unsafe {
                let p = row.as_ptr().add(start);
                (
                    _mm512_maskz_loadu_ps(m0, p),
                    _mm512_maskz_loadu_ps(m1, p.add(16)),
                )
            };
            let (a0, a1) = (_mm512_abs_ps(v0), _mm512_abs_ps(v1));
            // NaN compares false, as ±∞ does.
            let finite = _mm512_cmp_ps_mask::<_CMP_LT_OQ>(a0, inf) == 0xffff
                && _mm512_cmp_ps_mask::<_CMP_LT_OQ>(a1, inf) == 0xffff;
            let amax = _mm512_reduce_max_ps(_mm512_max_ps(a0, a1));
            let (r0, r1) = if !finite || amax == 0.0 {
                *scale = if finite { 0.0 } else { f32::NAN };
                (offset, offset)
            } else {
                *scale = amax / 127.0;
                let inv = _mm512_set1_ps(127.0 / amax);
                let round = |v: __m512| {
                    let r = _mm512_cvtps_epi32(_mm512_mul_ps(v, inv));
                    _mm512_add_epi32(_mm512_min_epi32(_mm512_max_epi32(r, lo), hi), offset)
                };
                (round(v0), round(v1))
            };
            // The block's bytes up to the row's padded end: past `k`, the padding's 0 (128
            // in VNNI form), as the generic path leaves it.
            let bytes = (kpad - start).min(BLOCK);
            // SAFETY: the masks keep the stores within the row's `kpad` bytes.
            unsafe {
                let out = q.as_mut_ptr().add(start).cast::<i8>();
                _mm_mask_storeu_epi8(out, lanes(bytes), _mm512_cvtepi32_epi8(r0));
                _mm_mask_storeu_epi8(
                    out.add(16),
                    lanes(bytes.saturating_sub(16)),
                    _mm512_cvtepi32_epi8(r1),
                );
            }
        }
    }
}

/// Quantizes `m` rows of `k` activations per block of [`BLOCK`] into `xq` (`m × kpad`) and
/// `scales` (`m × blocks`), in VNNI form when `vnni`, compiled for the best of `level` (the
/// same values on every path).
pub(crate) fn quantize_activations(
    x: &[f32],
    k: usize,
    kpad: usize,
    vnni: bool,
    xq: &mut [i8],
    scales: &mut [f32],
    level: KernelLevel,
) {
    match level.min(KernelLevel::detected()) {
        #[cfg(target_arch = "x86_64")]
        KernelLevel::Avx512Vnni | KernelLevel::Avx512Bf16 | KernelLevel::Amx => {
            // SAFETY: every level from AVX-512 VNNI up has AVX-512 F/BW/VL/DQ (clamped to the
            // detected one).
            unsafe { quantize_activations_avx512(x, k, kpad, vnni, xq, scales) }
        }
        #[cfg(target_arch = "x86_64")]
        KernelLevel::Avx2 => {
            // SAFETY: AVX2 and FMA at this level (clamped to the detected one).
            unsafe { quantize_activations_avx2(x, k, kpad, vnni, xq, scales) }
        }
        _ => quantize_activations_generic(x, k, kpad, vnni, xq, scales),
    }
}

/// Quantizes one column's `values` into `q` a block of 32 at a time, each block's scale into
/// `scales`.
fn quantize_column(values: &[f32], q: &mut [i8], scales: &mut [f32]) {
    for ((v, q), scale) in values.chunks(BLOCK).zip(q.chunks_mut(BLOCK)).zip(scales) {
        *scale = quantize_row(v, q);
    }
}

impl Int8Linear {
    /// Quantizes `w` (`n×k`, PyTorch layout, `n = bias.len()`) per output column.
    ///
    /// # Errors
    ///
    /// When `w` is not `n×k` or `k` is 0.
    pub fn quantize(w: &[f32], bias: &[f32], k: usize) -> Result<Self, String> {
        let n = bias.len();
        if n.checked_mul(k) != Some(w.len()) || k == 0 {
            return Err(format!(
                "int8: a weight of {} values is not {n}×{k}",
                w.len()
            ));
        }
        Ok(Self::pack(bias, k, |c, q, scales| {
            quantize_column(&w[c * k..][..k], q, scales)
        }))
    }

    /// Quantizes per output column the `n×k` weight (`n = bias.len()`) whose row `c` is
    /// `row(c)` (`k` values): as [`Self::quantize`], with one row in f32 at a time per thread
    /// instead of the whole weight (a 150k-token vocabulary's LM head is 600 MB in f32, all of
    /// it at once at the peak of loading).
    ///
    /// # Errors
    ///
    /// When `k` is 0, or a row is not `k` values.
    pub fn quantize_rows(
        bias: &[f32],
        k: usize,
        row: impl Fn(usize) -> Vec<f32> + Sync,
    ) -> Result<Self, String> {
        if k == 0 {
            return Err("int8: a weight of rows of 0 values".into());
        }
        let short = std::sync::atomic::AtomicBool::new(false);
        let layer = Self::pack(bias, k, |c, q, scales| {
            let values = row(c);
            if values.len() == k {
                quantize_column(&values, q, scales);
            } else {
                short.store(true, std::sync::atomic::Ordering::Relaxed);
            }
        });
        if short.into_inner() {
            return Err(format!("int8: a row is not {k} values"));
        }
        Ok(layer)
    }

    /// Packs a layer of `bias.len()` columns × `k` from `column(c, q, scales)`, which fills
    /// `q` (column `c`'s `k` values) and `scales` (one per block of 32, the last one partial).
    /// Panels pack in parallel (start-up is on the cold-start path).
    fn pack(bias: &[f32], k: usize, column: impl Fn(usize, &mut [i8], &mut [f32]) + Sync) -> Self {
        let n = bias.len();
        let blocks = k.div_ceil(BLOCK);
        let groups = blocks * BLOCK_GROUPS;
        let panels = n.div_ceil(PANEL);
        let mut weights = vec![0i8; panels * groups * GROUP_BYTES];
        let mut scales = vec![0.0f32; panels * blocks * PANEL];
        let mut offsets = vec![0i32; panels * blocks * PANEL];
        let mut padded_bias = vec![0.0f32; panels * PANEL];
        padded_bias[..n].copy_from_slice(bias);
        let mut panel_parts: Vec<_> = weights
            .chunks_mut(groups * GROUP_BYTES)
            .zip(scales.chunks_mut(blocks * PANEL))
            .zip(offsets.chunks_mut(blocks * PANEL))
            .collect();
        parallel_for_each(
            &mut panel_parts,
            available_threads(),
            &|panel, ((w, s), o)| {
                let mut q = vec![0i8; k];
                let mut scales = vec![0.0f32; blocks];
                for lane in 0..PANEL.min(n - panel * PANEL) {
                    let c = panel * PANEL + lane;
                    column(c, &mut q, &mut scales);
                    for (b, q) in q.chunks(BLOCK).enumerate() {
                        s[b * PANEL + lane] = scales[b];
                        o[b * PANEL + lane] = -128 * q.iter().map(|&v| v as i32).sum::<i32>();
                    }
                    // A group's values are consecutive in the column and in the panel: copied
                    // a group at a time (loading is on the cold-start path), whole groups as
                    // one fixed-size word (a copy of a length the compiler does not know is a
                    // `memmove` call per four bytes).
                    let whole = q.chunks_exact(GROUP);
                    let tail = whole.remainder();
                    for (g, values) in whole.enumerate() {
                        let values: &[i8; GROUP] = values.try_into().expect("a whole group");
                        w[g * GROUP_BYTES + lane * GROUP..][..GROUP].copy_from_slice(values);
                    }
                    if !tail.is_empty() {
                        let g = k / GROUP;
                        w[g * GROUP_BYTES + lane * GROUP..][..tail.len()].copy_from_slice(tail);
                    }
                }
            },
        );
        Self {
            n,
            k,
            groups,
            panels,
            weights,
            scales,
            offsets,
            blocks,
            bias: padded_bias,
        }
    }

    /// Builds the layer from `n` rows of `k` values stored as GGUF Q8_0 blocks (`{d: f16,
    /// qs: [i8; 32]}`, row after row), keeping their exact values (Q8_0 is this layer's own
    /// format: per-column blocks of 32 with one scale). Panels convert in parallel.
    ///
    /// # Errors
    ///
    /// When `k` is not a positive multiple of 32 or the bytes are not `n` rows.
    pub fn from_q8_0(rows: &[u8], bias: &[f32], k: usize) -> Result<Self, String> {
        const BB: usize = 34;
        let n = bias.len();
        if k == 0 || !k.is_multiple_of(BLOCK) {
            return Err(format!(
                "int8: a row of {k} values is not whole blocks of {BLOCK}"
            ));
        }
        let blocks = k / BLOCK;
        if Some(rows.len()) != n.checked_mul(blocks * BB) {
            return Err(format!(
                "int8: {} bytes are not {n} Q8_0 rows of {k} values",
                rows.len()
            ));
        }
        Ok(Self::pack(bias, k, |c, q, scales| {
            for (b, (q, scale)) in q.chunks_mut(BLOCK).zip(scales).enumerate() {
                let block = &rows[(c * blocks + b) * BB..][..BB];
                for (q, &byte) in q.iter_mut().zip(&block[2..]) {
                    *q = byte as i8;
                }
                *scale = half::f16::from_le_bytes([block[0], block[1]]).to_f32();
            }
        }))
    }

    /// Row `c` of the weight (`k` values; output column `c`): each int8 value times its
    /// block's scale, in f32. For a layer made by [`Self::from_q8_0`] these are the values
    /// the Q8_0 row dequantizes to, bit for bit (the same product of the same two numbers), so
    /// a tied embedding table can be read from its LM head. `None` when `c` is out of range.
    pub fn weight_row(&self, c: usize) -> Option<Vec<f32>> {
        if c >= self.n {
            return None;
        }
        let (panel, lane) = (c / PANEL, c % PANEL);
        let w = &self.weights[panel * self.groups * GROUP_BYTES..];
        let s = &self.scales[panel * self.blocks * PANEL..];
        Some(
            (0..self.k)
                .map(|i| {
                    w[(i / GROUP) * GROUP_BYTES + lane * GROUP + i % GROUP] as f32
                        * s[(i / BLOCK) * PANEL + lane]
                })
                .collect(),
        )
    }

    /// Output columns.
    pub fn n(&self) -> usize {
        self.n
    }

    /// Input columns (the reduction length).
    pub fn k(&self) -> usize {
        self.k
    }

    /// Bytes held (weights, scales, offsets and bias).
    pub fn bytes(&self) -> usize {
        self.weights.len() + 4 * (self.scales.len() + self.offsets.len() + self.bias.len())
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
        in_row_blocks("int8", (x, m, self.k), (out, self.n), |x, m, out| {
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
        let (n, k) = (self.n, self.k);
        if m == 0 {
            return;
        }
        // Never above what this CPU has, whatever the caller asked for.
        let level = level.min(KernelLevel::detected());
        let vnni = level >= KernelLevel::Avx512Vnni;
        let (blocks, kpad) = (self.blocks, self.groups * GROUP);
        // Quantized activations, rows padded to whole blocks with zeros (128 in VNNI form),
        // and one scale per block of each row.
        // (The VNNI form flips whole rows, so the zero padding becomes 128 too.)
        let mut xq = vec![0i8; m * kpad];
        let mut x_scales = vec![0.0f32; m * blocks];
        quantize_activations(x, k, kpad, vnni, &mut xq, &mut x_scales, level);
        let shared = SharedOut(out.as_mut_ptr());
        let (mr, np) = match level {
            KernelLevel::Avx512Vnni | KernelLevel::Avx512Bf16 | KernelLevel::Amx => (4, 3),
            // AVX2: decode's lone rows two at a time, batches four (see `avx2::tile`).
            KernelLevel::Avx2 if m <= 2 => (2, 1),
            KernelLevel::Avx2 => (4, 1),
            KernelLevel::Scalar => (4, 1),
        };
        let panel_bytes = self.groups * GROUP_BYTES;
        for_each_tile(m, self.panels, mr, np, threads, &|r0, rows, p0, ps| {
            // The tile's sums (every kernel writes them all before they are read), sized to
            // the path's tile: zeroing the VNNI tile's 192 on the AVX2 path was a `memset`
            // call per tile, 4% of eight Q8_0 streams' samples.
            let (mut vnni_acc, mut avx2_acc);
            let acc: &mut [f32] = if np > 1 {
                vnni_acc = [0.0f32; 4 * 3 * PANEL];
                &mut vnni_acc
            } else {
                avx2_acc = [0.0f32; 4 * PANEL];
                &mut avx2_acc
            };
            // The next panel block's weights, this tile's share of them (see
            // `prefetch_share`; empty past the last block and for decode's lone tile).
            let len = self.weights.len();
            let next = &self.weights
                [((p0 + ps) * panel_bytes).min(len)..((p0 + 2 * ps) * panel_bytes).min(len)];
            let tile = Tile {
                ahead: &next[prefetch_share(m, mr, r0, next.len())],
                x: &xq[r0 * kpad..(r0 + rows) * kpad],
                x_scales: &x_scales[r0 * blocks..(r0 + rows) * blocks],
                kpad,
                blocks,
                w: &self.weights[p0 * panel_bytes..][..ps * panel_bytes],
                offsets: &self.offsets[p0 * blocks * PANEL..][..ps * blocks * PANEL],
                w_scales: &self.scales[p0 * blocks * PANEL..][..ps * blocks * PANEL],
            };
            match level {
                #[cfg(target_arch = "x86_64")]
                KernelLevel::Avx512Vnni | KernelLevel::Avx512Bf16 | KernelLevel::Amx => {
                    // SAFETY: the level is at most the detected one (clamped above), so the
                    // CPU has AVX-512 F/BW/VL/DQ/VNNI; the tile's slices hold `rows` rows and
                    // `ps` panels (sliced above), acc rows × ps × 16 values.
                    unsafe { vnni::tile(rows, ps, &tile, acc.as_mut_ptr()) }
                }
                #[cfg(target_arch = "x86_64")]
                KernelLevel::Avx2 => {
                    // SAFETY: as above, for AVX2 (`ps` is 1, `rows` at most 4).
                    unsafe { avx2::tile(rows, &tile, acc.as_mut_ptr()) }
                }
                _ => scalar_tile(rows, ps, &tile, acc),
            }
            // SAFETY: `for_each_tile` gives disjoint tiles inside m rows and the layer's
            // panels; `out` (m×n) stays mutably borrowed for the call.
            unsafe {
                store_tile(
                    acc,
                    &self.bias,
                    n,
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

/// The inputs of one tile: a few rows of quantized activations against a few panels.
struct Tile<'a> {
    /// `rows × kpad` bytes (`qx`, or `qx + 128` in VNNI form).
    x: &'a [i8],
    /// `rows × blocks` activation scales.
    x_scales: &'a [f32],
    kpad: usize,
    blocks: usize,
    /// `panels × groups × 64` bytes.
    w: &'a [i8],
    /// `panels × blocks × 16` VNNI offsets.
    offsets: &'a [i32],
    /// `panels × blocks × 16` weight scales.
    w_scales: &'a [f32],
    /// Bytes of the next panels that the AVX2 kernel asks the cache for while it works, a
    /// line per group (see `tiles::prefetch_share`).
    ahead: &'a [i8],
}

/// The portable kernel: `acc[(r·ps + p)·16 + lane] = Σ_b sx[r][b] · Σ_{k∈b} qx·qw` for `rows`
/// rows × `ps` panels (activations in signed form).
fn scalar_tile(rows: usize, ps: usize, t: &Tile, acc: &mut [f32]) {
    let groups = t.blocks * BLOCK_GROUPS;
    for r in 0..rows {
        let xr = &t.x[r * t.kpad..][..t.kpad];
        for p in 0..ps {
            let wp = &t.w[p * groups * GROUP_BYTES..][..groups * GROUP_BYTES];
            let mut sums = [0.0f32; PANEL];
            for b in 0..t.blocks {
                let mut dots = [0i32; PANEL];
                for g in b * BLOCK_GROUPS..(b + 1) * BLOCK_GROUPS {
                    let xg = &xr[g * GROUP..][..GROUP];
                    let wg = &wp[g * GROUP_BYTES..][..GROUP_BYTES];
                    for (d, wl) in dots.iter_mut().zip(wg.chunks_exact(GROUP)) {
                        *d += xg
                            .iter()
                            .zip(wl)
                            .map(|(&a, &b)| a as i32 * b as i32)
                            .sum::<i32>();
                    }
                }
                let sx = t.x_scales[r * t.blocks + b];
                let sw = &t.w_scales[(p * t.blocks + b) * PANEL..][..PANEL];
                for ((s, d), sw) in sums.iter_mut().zip(dots).zip(sw) {
                    *s = (d as f32).mul_add(sx * sw, *s);
                }
            }
            acc[(r * ps + p) * PANEL..][..PANEL].copy_from_slice(&sums);
        }
    }
}

/// Calls `$f::<MR, NP>($args)` for run-time `mr` in 1..=6 and `np` in 1..=4.
#[cfg(target_arch = "x86_64")]
macro_rules! tile_shapes {
    ($f:ident, $mr:expr, $np:expr, $args:tt) => {
        match $mr {
            1 => tile_shapes!(@np $f, 1, $np, $args),
            2 => tile_shapes!(@np $f, 2, $np, $args),
            3 => tile_shapes!(@np $f, 3, $np, $args),
            4 => tile_shapes!(@np $f, 4, $np, $args),
            5 => tile_shapes!(@np $f, 5, $np, $args),
            6 => tile_shapes!(@np $f, 6, $np, $args),
            _ => unreachable!("tile rows"),
        }
    };
    (@np $f:ident, $m:literal, $np:expr, ($($a:expr),*)) => {
        match $np {
            1 => $f::<$m, 1>($($a),*),
            2 => $f::<$m, 2>($($a),*),
            3 => $f::<$m, 3>($($a),*),
            4 => $f::<$m, 4>($($a),*),
            _ => unreachable!("tile panels"),
        }
    };
}
#[cfg(target_arch = "x86_64")]
pub(crate) use tile_shapes;

#[cfg(target_arch = "x86_64")]
mod vnni {
    use super::{Tile, BLOCK_GROUPS, GROUP, GROUP_BYTES, PANEL};
    use std::arch::x86_64::*;

    /// VNNI tile of `mr ≤ 4` rows × `np ≤ 3` panels (see [`kernel`]).
    ///
    /// # Safety
    ///
    /// As [`kernel`].
    pub unsafe fn tile(mr: usize, np: usize, t: &Tile, acc: *mut f32) {
        unsafe { tile_shapes!(kernel, mr, np, (t, acc)) }
    }

    /// `acc[(r·NP + p)·16 + lane] = Σ_b sx[r][b] · Σ_{k∈b} qx·qw` with `vpdpbusd`, each
    /// block's i32 sums starting from the block's offsets (activations in VNNI form).
    ///
    /// # Safety
    ///
    /// The CPU must support AVX-512 F/BW/VL/DQ/VNNI; `t` holds at least `MR` rows and `NP`
    /// panels; `acc` is valid for writing `MR × NP × 16` values.
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq,avx512vnni")]
    unsafe fn kernel<const MR: usize, const NP: usize>(t: &Tile, acc: *mut f32) {
        let groups = t.blocks * BLOCK_GROUPS;
        let panel_bytes = groups * GROUP_BYTES;
        let (x, w, kpad) = (t.x.as_ptr().cast::<u8>(), t.w.as_ptr(), t.kpad);
        let mut sums = [[_mm512_setzero_ps(); NP]; MR];
        for b in 0..t.blocks {
            let mut start = [_mm512_setzero_si512(); NP];
            let mut sw = [_mm512_setzero_ps(); NP];
            for p in 0..NP {
                let at = (p * t.blocks + b) * PANEL;
                start[p] = _mm512_loadu_si512(t.offsets.as_ptr().add(at).cast());
                sw[p] = _mm512_loadu_ps(t.w_scales.as_ptr().add(at));
            }
            let mut dots = [start; MR];
            for g in b * BLOCK_GROUPS..(b + 1) * BLOCK_GROUPS {
                let mut wv = [_mm512_setzero_si512(); NP];
                for (p, v) in wv.iter_mut().enumerate() {
                    *v = _mm512_loadu_si512(w.add(p * panel_bytes + g * GROUP_BYTES).cast());
                }
                for (r, row) in dots.iter_mut().enumerate() {
                    let a = _mm512_set1_epi32(
                        x.add(r * kpad + g * GROUP).cast::<i32>().read_unaligned(),
                    );
                    for (d, wp) in row.iter_mut().zip(&wv) {
                        *d = _mm512_dpbusd_epi32(*d, a, *wp);
                    }
                }
            }
            for (r, (row, dots)) in sums.iter_mut().zip(&dots).enumerate() {
                let sx = _mm512_set1_ps(*t.x_scales.get_unchecked(r * t.blocks + b));
                for ((s, d), sw) in row.iter_mut().zip(dots).zip(&sw) {
                    *s = _mm512_fmadd_ps(_mm512_cvtepi32_ps(*d), _mm512_mul_ps(sx, *sw), *s);
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
    use super::{Tile, BLOCK_GROUPS, GROUP, GROUP_BYTES, PANEL};
    use crate::kernels::tiles::LINE;
    use std::arch::x86_64::*;

    /// AVX2 tile of `mr ≤ 4` rows × 1 panel: decode's one or two rows move each activation's
    /// sign onto the weights, three or four rows share each weight's absolute value and move
    /// its sign onto the activations instead (two fewer instructions per weight load and row
    /// than four rows moving the activations' signs would take); see [`kernel`].
    ///
    /// # Safety
    ///
    /// As [`kernel`].
    pub unsafe fn tile(mr: usize, t: &Tile, acc: *mut f32) {
        unsafe {
            match mr {
                1 => kernel::<1, false>(t, acc),
                2 => kernel::<2, false>(t, acc),
                3 => kernel::<3, true>(t, acc),
                4 => kernel::<4, true>(t, acc),
                _ => unreachable!("tile rows"),
            }
        }
    }

    /// `acc[r·16 + lane] = Σ_b sx[r][b] · Σ_{k∈b} qx·qw` for one panel, `vpmaddubsw`
    /// multiplying an unsigned operand by a signed one: with `SHARED`, `|qw|` (computed once
    /// per weight load for all the rows) by `qx · sign(qw)`, the sums per block kept in `acc`
    /// (the rows' i32 sums take the registers); else `|qx|` by `qw · sign(qx)`, the sums in
    /// registers. A line of `t.ahead` prefetched per group.
    ///
    /// # Safety
    ///
    /// The CPU must support AVX2 and FMA; `t` holds at least `MR` rows (signed form, `|qx| ≤
    /// 127`) and one panel (`|qw| ≤ 127`); `acc` is valid for writing `MR × 16` values.
    #[target_feature(enable = "avx2,fma")]
    unsafe fn kernel<const MR: usize, const SHARED: bool>(t: &Tile, acc: *mut f32) {
        let ones = _mm256_set1_epi16(1);
        let (x, w, kpad) = (t.x.as_ptr(), t.w.as_ptr(), t.kpad);
        let ahead_lines = t.ahead.len().div_ceil(LINE);
        let mut sums = [[_mm256_setzero_ps(); 2]; MR];
        if SHARED {
            for r in 0..MR {
                _mm256_storeu_ps(acc.add(r * PANEL), _mm256_setzero_ps());
                _mm256_storeu_ps(acc.add(r * PANEL + 8), _mm256_setzero_ps());
            }
        }
        for b in 0..t.blocks {
            let mut dots = [[_mm256_setzero_si256(); 2]; MR];
            for g in b * BLOCK_GROUPS..(b + 1) * BLOCK_GROUPS {
                if g < ahead_lines {
                    // `g · 64 < ahead.len()`: inside the slice. A prefetch reads nothing.
                    _mm_prefetch::<_MM_HINT_T0>(t.ahead.as_ptr().add(g * LINE).cast());
                }
                let w0 = _mm256_loadu_si256(w.add(g * GROUP_BYTES).cast());
                let w1 = _mm256_loadu_si256(w.add(g * GROUP_BYTES + 32).cast());
                let (u0, u1) = if SHARED {
                    (_mm256_abs_epi8(w0), _mm256_abs_epi8(w1))
                } else {
                    (w0, w1)
                };
                for (r, d) in dots.iter_mut().enumerate() {
                    let a = _mm256_set1_epi32(
                        x.add(r * kpad + g * GROUP).cast::<i32>().read_unaligned(),
                    );
                    let (p0, p1) = if SHARED {
                        (
                            _mm256_maddubs_epi16(u0, _mm256_sign_epi8(a, w0)),
                            _mm256_maddubs_epi16(u1, _mm256_sign_epi8(a, w1)),
                        )
                    } else {
                        let a_abs = _mm256_sign_epi8(a, a);
                        (
                            _mm256_maddubs_epi16(a_abs, _mm256_sign_epi8(w0, a)),
                            _mm256_maddubs_epi16(a_abs, _mm256_sign_epi8(w1, a)),
                        )
                    };
                    d[0] = _mm256_add_epi32(d[0], _mm256_madd_epi16(p0, ones));
                    d[1] = _mm256_add_epi32(d[1], _mm256_madd_epi16(p1, ones));
                }
            }
            let at = b * PANEL;
            let sw0 = _mm256_loadu_ps(t.w_scales.as_ptr().add(at));
            let sw1 = _mm256_loadu_ps(t.w_scales.as_ptr().add(at + 8));
            for (r, (s, d)) in sums.iter_mut().zip(&dots).enumerate() {
                let sx = _mm256_set1_ps(*t.x_scales.get_unchecked(r * t.blocks + b));
                let (f0, f1) = (_mm256_mul_ps(sx, sw0), _mm256_mul_ps(sx, sw1));
                if SHARED {
                    let (s0, s1) = (acc.add(r * PANEL), acc.add(r * PANEL + 8));
                    let v0 = _mm256_fmadd_ps(_mm256_cvtepi32_ps(d[0]), f0, _mm256_loadu_ps(s0));
                    let v1 = _mm256_fmadd_ps(_mm256_cvtepi32_ps(d[1]), f1, _mm256_loadu_ps(s1));
                    _mm256_storeu_ps(s0, v0);
                    _mm256_storeu_ps(s1, v1);
                } else {
                    s[0] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(d[0]), f0, s[0]);
                    s[1] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(d[1]), f1, s[1]);
                }
            }
        }
        if !SHARED {
            for (r, s) in sums.iter().enumerate() {
                _mm256_storeu_ps(acc.add(r * PANEL), s[0]);
                _mm256_storeu_ps(acc.add(r * PANEL + 8), s[1]);
            }
        }
    }
}

#[cfg(test)]
#[path = "int8_tests.rs"]
mod tests;
