//! Multi-head self-attention over the fused QKV projection, for the encoder: heads are read
//! straight out of the `[rows, 3·hidden]` QKV output (no transposes to split them), and each
//! sequence attends only over its real tokens, which is exact masking at no cost (no scores
//! computed for padding only to be thrown away).
//!
//! One (sequence, head) pair is a unit of work; units are split across threads. The portable
//! version is plain loops in register tiles; the AVX2 and AVX-512 versions are written with
//! intrinsics (explicit FMAs: the portable body compiled for AVX2 kept its multiplies and
//! adds apart and took a fifth of a reranker's time, four times its share of the arithmetic).

use super::dispatch::{variant, Variant};
use super::math::{exp_neg, lane_sum, max_or_nan};
use super::team::{parallel_for, SharedOut};
use super::KernelLevel;

#[derive(Debug, Clone)]
pub struct AttentionShape {
    pub seq_len: usize,
    pub heads: usize,
    pub head_dim: usize,
    /// Real (unpadded) length of each sequence of the batch.
    pub lengths: Vec<usize>,
    /// How the sequences' rows lie: `false`, sequence `b` at rows `b·seq_len..` (padded to
    /// `seq_len` each, the padding rows' output zero); `true`, back to back (`Σ lengths`
    /// rows, no padding: an encoder whose linear layers skip the padding rows).
    pub unpadded: bool,
}

/// Sizes an attention call works with, computed without overflow.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AttentionSizes {
    /// `heads × head_dim`.
    pub hidden: usize,
    /// `batch × seq_len`, or `Σ lengths` unpadded.
    pub rows: usize,
    /// `rows × 3·hidden`, the length of the fused QKV input.
    pub qkv: usize,
    /// `rows × hidden`, the length of the output.
    pub out: usize,
    /// `batch × heads`, the (sequence, head) pairs.
    pub units: usize,
}

impl AttentionShape {
    /// The sizes of this shape; `None` when one overflows usize (including the scratch
    /// buffer of `head_dim × seq_len` transposed keys).
    pub fn sizes(&self) -> Option<AttentionSizes> {
        let hidden = self.heads.checked_mul(self.head_dim)?;
        let rows = if self.unpadded {
            self.lengths
                .iter()
                .try_fold(0usize, |sum, &len| sum.checked_add(len))?
        } else {
            self.lengths.len().checked_mul(self.seq_len)?
        };
        let out = rows.checked_mul(hidden)?;
        let qkv = out.checked_mul(3)?;
        let units = self.lengths.len().checked_mul(self.heads)?;
        self.head_dim.checked_mul(self.seq_len)?;
        Some(AttentionSizes {
            hidden,
            rows,
            qkv,
            out,
            units,
        })
    }

    /// Whether every length is within `1..=seq_len`.
    pub fn lengths_fit(&self) -> bool {
        self.lengths.iter().all(|&l| l >= 1 && l <= self.seq_len)
    }

    /// The first row of sequence `b` (see [`Self::unpadded`]); in range when the sizes are.
    pub fn first_row(&self, b: usize) -> usize {
        if self.unpadded {
            self.lengths[..b].iter().sum()
        } else {
            b * self.seq_len
        }
    }
}

/// One (sequence, head) pair of an attention call.
struct AttentionUnit {
    /// The sequence's real length.
    len: usize,
    /// `len` rounded up to whole tiles of keys.
    padded: usize,
    /// The sequence's first row.
    base: usize,
    /// The head's first column inside each of q, k and v.
    off: usize,
}

impl AttentionUnit {
    /// Unit `unit` (sequence `unit / heads`, head `unit % heads`) with key tiles of `tile`.
    #[inline(always)]
    fn new(s: &AttentionShape, unit: usize, tile: usize) -> Self {
        let (b, head) = (unit / s.heads, unit % s.heads);
        let len = s.lengths[b];
        Self {
            len,
            padded: len.div_ceil(tile) * tile,
            base: s.first_row(b),
            off: head * s.head_dim,
        }
    }
}

/// Writes a unit's `len` key rows (`d` values each) into `keys_t` transposed (`d × padded`)
/// and multiplied by `scale`, zero past the sequence: so that a tile of scores is a sweep over
/// dimensions with contiguous loads.
#[inline(always)]
fn transpose_keys<'a>(
    keys: impl Iterator<Item = &'a [f32]>,
    d: usize,
    len: usize,
    padded: usize,
    scale: f32,
    keys_t: &mut [f32],
) {
    for c in 0..d {
        keys_t[c * padded + len..(c + 1) * padded].fill(0.0);
    }
    for (j, k) in keys.enumerate() {
        for (c, kc) in k.iter().enumerate() {
            keys_t[c * padded + j] = kc * scale;
        }
    }
}

/// A unit's keys and values gathered out of the fused QKV rows, for the intrinsic versions:
/// the rows of the fused input are 3·hidden apart, and in a large batch not in cache; whole-
/// row copies keep many loads in flight, and the scalar transpose then reads from L1.
struct Gathered {
    /// Key rows of `d` values.
    keys: Vec<f32>,
    /// Value rows of `stride ≥ d` values (zero past `d`).
    values: Vec<f32>,
    stride: usize,
    /// The keys transposed (`d × padded`), pre-scaled, zero past the sequence.
    keys_t: Vec<f32>,
}

impl Gathered {
    /// Room for any unit of `s` with key tiles of `tile` and value rows of `stride`.
    fn new(s: &AttentionShape, tile: usize, stride: usize) -> Self {
        let d = s.head_dim;
        Self {
            keys: vec![0.0; d * s.seq_len],
            values: vec![0.0; stride * s.seq_len],
            stride,
            keys_t: vec![0.0; d * s.seq_len.div_ceil(tile) * tile],
        }
    }

    /// Gathers unit `unit` (see [`AttentionUnit::new`]) and returns it.
    #[inline(always)]
    fn unit(&mut self, qkv: &[f32], s: &AttentionShape, unit: usize, tile: usize) -> AttentionUnit {
        let u = AttentionUnit::new(s, unit, tile);
        let (h, d, stride) = (s.heads * s.head_dim, s.head_dim, self.stride);
        for j in 0..u.len {
            let row = &qkv[(u.base + j) * 3 * h..][..3 * h];
            self.keys[j * d..][..d].copy_from_slice(&row[h + u.off..][..d]);
            self.values[j * stride..][..d].copy_from_slice(&row[2 * h + u.off..][..d]);
        }
        let scale = 1.0 / (d as f32).sqrt();
        let keys = self.keys.chunks_exact(d).take(u.len);
        transpose_keys(keys, d, u.len, u.padded, scale, &mut self.keys_t);
        u
    }
}

/// Softmax of one row of attention scores, in place. NaN wins (f32::max would skip it and
/// turn a corrupt score into a tiny weight): a NaN or infinite score makes the whole row NaN,
/// which `embed` reports.
#[inline(always)]
fn softmax_row(row: &mut [f32]) {
    let max = max_or_nan(row);
    for score in row.iter_mut() {
        *score = exp_neg(*score - max);
    }
    let inv = 1.0 / lane_sum(row, |v| v);
    for score in row.iter_mut() {
        *score *= inv;
    }
}

/// Attention of the (sequence, head) pairs `units`; see [`attention`].
///
/// # Safety
///
/// `s.sizes()` is `Some`, `s.lengths` are within `1..=seq_len`, `qkv` holds `sizes.qkv`
/// values, and `out` is valid for writes of `sizes.out` values. For each unit (sequence
/// `b`, head) in `units`, the elements of rows `first_row(b)..first_row(b) + lengths[b]`, columns
/// `head·head_dim..(head+1)·head_dim` are written and nothing else accesses them during
/// the call.
unsafe fn attention_generic(
    qkv: &[f32],
    out: *mut f32,
    s: &AttentionShape,
    units: std::ops::Range<usize>,
) {
    // Register tiles: QB queries at a time against KB keys (scores), and QB queries × DB
    // dimensions of the output (weighted values). The fixed-size loops below are what LLVM
    // keeps in vector registers; a plain query-by-query loop instead streams the scores
    // through memory once per dimension.
    const QB: usize = 4;
    const KB: usize = 16;
    const DB: usize = 16;
    let h = s.heads * s.head_dim;
    let d = s.head_dim;
    let scale = 1.0 / (d as f32).sqrt();
    let padded = s.seq_len.div_ceil(KB) * KB;
    // Keys of one head transposed (`d × padded`, pre-scaled, zero past the sequence), so a
    // tile of scores is a sweep over dimensions with contiguous loads.
    let mut keys_t = vec![0.0f32; d * padded];
    let mut scores = vec![0.0f32; QB * padded];
    for unit in units {
        let AttentionUnit {
            len,
            padded: lp,
            base,
            off,
        } = AttentionUnit::new(s, unit, KB);
        let keys = (0..len).map(|j| &qkv[(base + j) * 3 * h + h + off..][..d]);
        transpose_keys(keys, d, len, lp, scale, &mut keys_t);
        let value = |j: usize| &qkv[(base + j) * 3 * h + 2 * h + off..][..d];
        for i0 in (0..len).step_by(QB) {
            let qn = QB.min(len - i0);
            // Rows past the sequence repeat its last query; their results are not stored.
            let q: [&[f32]; QB] =
                std::array::from_fn(|qi| &qkv[(base + i0 + qi.min(qn - 1)) * 3 * h + off..][..d]);
            for j0 in (0..lp).step_by(KB) {
                let mut acc = [[0.0f32; KB]; QB];
                for c in 0..d {
                    let kv: &[f32; KB] = keys_t[c * lp + j0..][..KB].try_into().unwrap();
                    for (a, qr) in acc.iter_mut().zip(&q) {
                        let qc = qr[c];
                        for (a, k) in a.iter_mut().zip(kv) {
                            *a += qc * k;
                        }
                    }
                }
                for (qi, a) in acc.iter().enumerate() {
                    scores[qi * lp + j0..][..KB].copy_from_slice(a);
                }
            }
            for qi in 0..qn {
                softmax_row(&mut scores[qi * lp..][..len]);
            }
            // Weighted values, DB dimensions at a time, then the remaining dimensions.
            let whole = d / DB * DB;
            for dc in (0..whole).step_by(DB) {
                let mut acc = [[0.0f32; DB]; QB];
                for j in 0..len {
                    let v: &[f32; DB] = value(j)[dc..dc + DB].try_into().unwrap();
                    for (qi, a) in acc.iter_mut().enumerate() {
                        let p = scores[qi * lp + j];
                        for (a, v) in a.iter_mut().zip(v) {
                            *a += p * v;
                        }
                    }
                }
                for (qi, a) in acc.iter().enumerate().take(qn) {
                    // SAFETY: row base+i0+qi (< base+len), columns off+dc..off+dc+DB (inside
                    // the head) are inside `out` and belong to this unit alone (the
                    // function's contract).
                    let o = unsafe {
                        std::slice::from_raw_parts_mut(out.add((base + i0 + qi) * h + off + dc), DB)
                    };
                    o.copy_from_slice(a);
                }
            }
            for qi in 0..qn {
                // SAFETY: as above, for columns off+whole..off+d.
                let o = unsafe {
                    std::slice::from_raw_parts_mut(
                        out.add((base + i0 + qi) * h + off + whole),
                        d - whole,
                    )
                };
                o.fill(0.0);
                for j in 0..len {
                    let p = scores[qi * lp + j];
                    for (o, v) in o.iter_mut().zip(&value(j)[whole..]) {
                        *o += p * v;
                    }
                }
            }
        }
    }
}

/// [`attention_generic`] written with AVX-512 intrinsics. LLVM does not fuse the generic
/// loops' multiply and add into FMAs (Rust does not allow it to), and spills their
/// accumulators; here every tile is 8 queries × 32 lanes (16 registers of accumulators): the
/// scores against 32 keys, then the weighted values over 32 dimensions, each step one
/// broadcast and two FMAs per query. Dimensions past a multiple of 16 are masked.
///
/// # Safety
///
/// As [`attention_generic`], and the CPU must support AVX-512 F/BW/VL/DQ, AVX2 and FMA.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq,avx2,fma")]
unsafe fn attention_avx512(
    qkv: &[f32],
    out: *mut f32,
    s: &AttentionShape,
    units: std::ops::Range<usize>,
) {
    use std::arch::x86_64::*;
    const QB: usize = 8;
    const KB: usize = 32;
    /// The first `n` of 16 lanes.
    fn lanes(n: usize) -> __mmask16 {
        if n >= 16 {
            0xffff
        } else {
            (1u16 << n) - 1
        }
    }
    let h = s.heads * s.head_dim;
    let d = s.head_dim;
    let padded = s.seq_len.div_ceil(KB) * KB;
    let mut scores = vec![0.0f32; QB * padded];
    let mut g = Gathered::new(s, KB, d);
    for unit in units {
        let AttentionUnit {
            len,
            padded: lp,
            base,
            off,
        } = g.unit(qkv, s, unit, KB);
        let (keys_t, values) = (&g.keys_t, &g.values);
        for i0 in (0..len).step_by(QB) {
            let qn = QB.min(len - i0);
            // Rows past the sequence repeat its last query; their results are not stored.
            let q: [&[f32]; QB] =
                std::array::from_fn(|qi| &qkv[(base + i0 + qi.min(qn - 1)) * 3 * h + off..][..d]);
            for j0 in (0..lp).step_by(KB) {
                let mut acc = [[_mm512_setzero_ps(); 2]; QB];
                for c in 0..d {
                    let k: &[f32] = &keys_t[c * lp + j0..][..KB];
                    // SAFETY: `k` holds 32 values; unaligned loads.
                    let (k0, k1) = unsafe {
                        (
                            _mm512_loadu_ps(k.as_ptr()),
                            _mm512_loadu_ps(k.as_ptr().add(16)),
                        )
                    };
                    for (a, qr) in acc.iter_mut().zip(&q) {
                        let qc = _mm512_set1_ps(qr[c]);
                        a[0] = _mm512_fmadd_ps(qc, k0, a[0]);
                        a[1] = _mm512_fmadd_ps(qc, k1, a[1]);
                    }
                }
                for (qi, a) in acc.iter().enumerate() {
                    let row: &mut [f32] = &mut scores[qi * lp + j0..][..KB];
                    // SAFETY: `row` holds 32 values.
                    unsafe {
                        _mm512_storeu_ps(row.as_mut_ptr(), a[0]);
                        _mm512_storeu_ps(row.as_mut_ptr().add(16), a[1]);
                    }
                }
            }
            for qi in 0..qn {
                softmax_row(&mut scores[qi * lp..][..len]);
            }
            for dc in (0..d).step_by(KB) {
                let (m0, m1) = (lanes(d - dc), lanes((d - dc).saturating_sub(16)));
                let mut acc = [[_mm512_setzero_ps(); 2]; QB];
                let weights: [&[f32]; QB] = std::array::from_fn(|qi| &scores[qi * lp..][..len]);
                for j in 0..len {
                    let v = &values[j * d + dc..][..(d - dc).min(KB)];
                    // SAFETY: the masks cover `v`'s lanes only (masked-off lanes are neither
                    // read nor faulted on).
                    let (v0, v1) = unsafe {
                        (
                            _mm512_maskz_loadu_ps(m0, v.as_ptr()),
                            _mm512_maskz_loadu_ps(m1, v.as_ptr().wrapping_add(16)),
                        )
                    };
                    for (a, w) in acc.iter_mut().zip(&weights) {
                        let p = _mm512_set1_ps(w[j]);
                        a[0] = _mm512_fmadd_ps(p, v0, a[0]);
                        a[1] = _mm512_fmadd_ps(p, v1, a[1]);
                    }
                }
                for (qi, a) in acc.iter().enumerate().take(qn) {
                    // SAFETY: row base+i0+qi (< base+len), columns off+dc.. off+d under the
                    // masks, are inside `out` and belong to this unit alone (the contract).
                    unsafe {
                        let o = out.add((base + i0 + qi) * h + off + dc);
                        _mm512_mask_storeu_ps(o, m0, a[0]);
                        _mm512_mask_storeu_ps(o.wrapping_add(16), m1, a[1]);
                    }
                }
            }
        }
    }
}

/// [`attention_generic`] written with AVX2 intrinsics, as [`attention_avx512`] is with 16
/// lanes: tiles of 6 queries × 16 lanes (12 registers of accumulators, two of keys or values
/// and a broadcast: 15 of the 16), the scores against 16 keys, then the weighted values over
/// 16 dimensions, each step one broadcast and two FMAs per query. The unit's values are
/// gathered into rows padded with zeros to whole 16s, so every load is whole; the stores past
/// `head_dim` are masked.
///
/// # Safety
///
/// As [`attention_generic`], and the CPU must support AVX2 and FMA.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn attention_avx2(
    qkv: &[f32],
    out: *mut f32,
    s: &AttentionShape,
    units: std::ops::Range<usize>,
) {
    use std::arch::x86_64::*;
    const QB: usize = 6;
    const KB: usize = 16;
    // The first `n` of 8 lanes, as `vmaskmovps` reads a mask.
    let lanes = |n: usize| {
        _mm256_cmpgt_epi32(
            _mm256_set1_epi32(n.min(8) as i32),
            _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7),
        )
    };
    let h = s.heads * s.head_dim;
    let d = s.head_dim;
    // A value row's length, padded with zeros to whole tiles of dimensions.
    let dp = d.div_ceil(KB) * KB;
    let padded = s.seq_len.div_ceil(KB) * KB;
    let mut scores = vec![0.0f32; QB * padded];
    let mut g = Gathered::new(s, KB, dp);
    for unit in units {
        let AttentionUnit {
            len,
            padded: lp,
            base,
            off,
        } = g.unit(qkv, s, unit, KB);
        let (keys_t, values) = (&g.keys_t, &g.values);
        for i0 in (0..len).step_by(QB) {
            let qn = QB.min(len - i0);
            // Rows past the sequence repeat its last query; their results are not stored.
            let q: [&[f32]; QB] =
                std::array::from_fn(|qi| &qkv[(base + i0 + qi.min(qn - 1)) * 3 * h + off..][..d]);
            for j0 in (0..lp).step_by(KB) {
                let mut acc = [[_mm256_setzero_ps(); 2]; QB];
                for c in 0..d {
                    let k: &[f32] = &keys_t[c * lp + j0..][..KB];
                    // SAFETY: `k` holds 16 values; unaligned loads.
                    let (k0, k1) = unsafe {
                        (
                            _mm256_loadu_ps(k.as_ptr()),
                            _mm256_loadu_ps(k.as_ptr().add(8)),
                        )
                    };
                    for (a, qr) in acc.iter_mut().zip(&q) {
                        let qc = _mm256_set1_ps(qr[c]);
                        a[0] = _mm256_fmadd_ps(qc, k0, a[0]);
                        a[1] = _mm256_fmadd_ps(qc, k1, a[1]);
                    }
                }
                for (qi, a) in acc.iter().enumerate() {
                    let row: &mut [f32] = &mut scores[qi * lp + j0..][..KB];
                    // SAFETY: `row` holds 16 values.
                    unsafe {
                        _mm256_storeu_ps(row.as_mut_ptr(), a[0]);
                        _mm256_storeu_ps(row.as_mut_ptr().add(8), a[1]);
                    }
                }
            }
            for qi in 0..qn {
                softmax_row(&mut scores[qi * lp..][..len]);
            }
            for dc in (0..d).step_by(KB) {
                let mut acc = [[_mm256_setzero_ps(); 2]; QB];
                let weights: [&[f32]; QB] = std::array::from_fn(|qi| &scores[qi * lp..][..len]);
                for j in 0..len {
                    let v = &values[j * dp + dc..][..KB];
                    // SAFETY: `v` holds 16 values (the row is padded to `dp`).
                    let (v0, v1) = unsafe {
                        (
                            _mm256_loadu_ps(v.as_ptr()),
                            _mm256_loadu_ps(v.as_ptr().add(8)),
                        )
                    };
                    for (a, w) in acc.iter_mut().zip(&weights) {
                        let p = _mm256_set1_ps(w[j]);
                        a[0] = _mm256_fmadd_ps(p, v0, a[0]);
                        a[1] = _mm256_fmadd_ps(p, v1, a[1]);
                    }
                }
                let (m0, m1) = (lanes(d - dc), lanes((d - dc).saturating_sub(8)));
                for (qi, a) in acc.iter().enumerate().take(qn) {
                    // SAFETY: row base+i0+qi (< base+len), columns off+dc..off+d under the
                    // masks, are inside `out` and belong to this unit alone (the contract);
                    // masked-off lanes are neither written nor faulted on.
                    unsafe {
                        let o = out.add((base + i0 + qi) * h + off + dc);
                        _mm256_maskstore_ps(o, m0, a[0]);
                        _mm256_maskstore_ps(o.wrapping_add(8), m1, a[1]);
                    }
                }
            }
        }
    }
}

/// [`attention_generic`] or its AVX2 or AVX-512 version, as the CPU allows.
///
/// # Safety
///
/// As [`attention_generic`].
unsafe fn attention_units(
    qkv: &[f32],
    out: *mut f32,
    s: &AttentionShape,
    units: std::ops::Range<usize>,
    level: KernelLevel,
    products: Products,
) {
    #[cfg(target_arch = "x86_64")]
    if products == Products::Bf16 && level.min(KernelLevel::detected()) >= KernelLevel::Amx {
        // SAFETY: the level `amx` is detected; the rest is the caller's contract.
        unsafe {
            let shape = super::attention_amx::Shape {
                seq_len: s.seq_len,
                heads: s.heads,
                head_dim: s.head_dim,
                lengths: &s.lengths,
                first_rows: &(0..s.lengths.len())
                    .map(|b| s.first_row(b))
                    .collect::<Vec<_>>(),
            };
            super::attention_amx::attention_amx(qkv, out, &shape, units)
        };
        return;
    }
    let _ = products;
    match variant(level) {
        // SAFETY: `variant` never picks a version the CPU lacks the features of; the rest is
        // the caller's contract.
        #[cfg(target_arch = "x86_64")]
        Variant::Avx512 => unsafe { attention_avx512(qkv, out, s, units) },
        // SAFETY: as above.
        #[cfg(target_arch = "x86_64")]
        Variant::Avx2 => unsafe { attention_avx2(qkv, out, s, units) },
        // SAFETY: the caller's contract.
        Variant::Generic => unsafe { attention_generic(qkv, out, s, units) },
    }
}

/// Multi-head self-attention over a fused QKV projection `[batch·seq, 3·hidden]` (q, k, v
/// side by side, heads contiguous inside each), writing `[batch·seq, hidden]`. Only the first
/// `lengths[b]` tokens of sequence `b` attend or are attended to; padding rows are zero. The
/// (sequence, head) pairs are split across `threads`. A NaN or infinite attention score makes
/// its query's output row NaN.
///
/// # Panics
///
/// When a size overflows or does not match the shape, or a length is not in `1..=seq_len`.
pub fn attention(qkv: &[f32], out: &mut [f32], s: &AttentionShape, threads: usize) {
    attention_at(qkv, out, s, threads, KernelLevel::detected())
}

/// The precision of attention's two products.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Products {
    /// f32 operands, at every level (the `--dtype f32` model, and the reference).
    F32,
    /// bf16 operands with f32 sums where the level has AMX tiles (`attention_amx.rs`), f32
    /// below it: for the models whose linear layers already round to bf16 or int8.
    Bf16,
}

/// [`attention`] with vectors no wider than `level` allows.
///
/// # Panics
///
/// As [`attention`].
pub fn attention_at(
    qkv: &[f32],
    out: &mut [f32],
    s: &AttentionShape,
    threads: usize,
    level: KernelLevel,
) {
    attention_with(qkv, out, s, threads, level, Products::F32)
}

/// [`attention_at`] with the products in the given precision.
///
/// # Panics
///
/// As [`attention`].
pub fn attention_with(
    qkv: &[f32],
    out: &mut [f32],
    s: &AttentionShape,
    threads: usize,
    level: KernelLevel,
    products: Products,
) {
    let sizes = s.sizes().expect("attention: sizes overflow usize");
    assert_eq!(qkv.len(), sizes.qkv, "attention: qkv size");
    assert_eq!(out.len(), sizes.out, "attention: output size");
    assert!(s.lengths_fit(), "attention: lengths");
    if sizes.out == 0 {
        return;
    }
    let h = sizes.hidden;
    if !s.unpadded {
        for (b, &len) in s.lengths.iter().enumerate() {
            out[(b * s.seq_len + len) * h..(b + 1) * s.seq_len * h].fill(0.0);
        }
    }
    let units = sizes.units;
    let threads = threads.min(units).max(1);
    let shared = SharedOut(out.as_mut_ptr());
    // Each unit (sequence b, head) writes only rows of b, columns of head: disjoint.
    let run = move |range: std::ops::Range<usize>| {
        let shared = shared;
        // SAFETY: sizes, lengths and buffer lengths checked above; `out` stays mutably
        // borrowed until every call returns (the scope below joins its tasks), and the unit
        // ranges given to concurrent calls are disjoint, so are the elements they write.
        unsafe { attention_units(qkv, shared.ptr(), s, range, level, products) }
    };
    if threads == 1 {
        run(0..units);
        return;
    }
    // Several tasks per thread, taken from a counter: on a VM the cores may differ in speed
    // (one vCPU measured at half the other's tile rate), so equal shares would wait.
    let chunk = units.div_ceil(threads * 8);
    parallel_for(units.div_ceil(chunk), threads, &|t| {
        run(t * chunk..((t + 1) * chunk).min(units))
    });
}

#[cfg(test)]
#[path = "attention_tests.rs"]
mod tests;
