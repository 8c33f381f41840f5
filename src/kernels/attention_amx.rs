//! The encoder's attention on AMX tiles, for the models whose linear layers are bf16 or int8
//! (`--dtype f32` keeps the exact f32 kernels of `attention.rs`): per (sequence, head), the
//! scores `Q·Kᵀ` and the weighted values `P·V` with bf16 operands and f32 sums
//! (`tdpbf16ps`), the softmax between them in f32, as torch's bf16 attention does.
//!
//! Why: once the linear layers ran on tiles, attention's two f32 products were the largest
//! part of MiniLM's pass at 107 tokens (18%); on tiles a (sequence, head) pair of 107 tokens
//! is ~100 tile products instead of ~1.5 MFLOP of FMAs.
//!
//! Per (sequence, head), with `d` the head size and `len` the sequence's real length:
//! - `q`: the queries (scaled by 1/√d) in bf16, one row per query, `d` padded with zeros to
//!   whole tiles of 32 values; rows past `len` zero. An activation tile is 16 of these rows.
//! - `k`: for each tile of 16 keys and each 32 dimensions, a weight tile: row `r` holds, for
//!   each of the 16 keys, the pair of dimensions `2r, 2r + 1` (the layout `tdpbf16ps` reads:
//!   a 16×16 transpose of the keys' pairs).
//! - `v`: for each 16 dimensions and each 32 keys, a weight tile: row `r` holds, for each of
//!   the 16 dimensions, the values of keys `2r` and `2r + 1` side by side.
//! - a tile of 16 queries: scores against every key tile (two accumulators at a time), the
//!   softmax of its rows over the real keys, rounded to bf16 into `p` (zero past `len`), then
//!   `p` against `v`, 16 dimensions per accumulator.

use super::aligned::AlignedVec;
use super::amx::{load, store, Tiles, ROW_BYTES, TILE_ROWS};
use super::math::exp_neg_avx512;
use std::arch::asm;
use std::arch::x86_64::*;

/// bf16 values in a tile row (16 pairs).
const ROW_VALUES: usize = ROW_BYTES / 2;
/// bf16 values in a tile.
const TILE_VALUES: usize = TILE_ROWS * ROW_VALUES;

/// The shape of an attention call (`attention.rs`'s `AttentionShape`, borrowed, so this file
/// needs nothing from there).
pub(super) struct Shape<'a> {
    pub seq_len: usize,
    pub heads: usize,
    pub head_dim: usize,
    /// Real (unpadded) length of each sequence of the batch.
    pub lengths: &'a [usize],
    /// The first row of each sequence (`AttentionShape::first_row`).
    pub first_rows: &'a [usize],
}

/// The first `n` of 16 lanes.
#[inline(always)]
fn lanes(n: usize) -> __mmask16 {
    if n >= 16 {
        u16::MAX
    } else {
        (1u16 << n) - 1
    }
}

/// Loads up to 32 values of `row` from `from` (zeros past its end), times `scale`, as 32
/// bf16 in one register.
///
/// # Safety
///
/// The CPU has AVX-512 F/BW and BF16.
#[inline(always)]
unsafe fn bf16_32(row: &[f32], from: usize, scale: f32) -> __m512i {
    let n = row.len().saturating_sub(from);
    // SAFETY: the masks keep both loads inside row[from..].
    unsafe {
        let p = row.as_ptr().add(from.min(row.len()));
        let lo = _mm512_maskz_loadu_ps(lanes(n), p);
        let hi = _mm512_maskz_loadu_ps(lanes(n.saturating_sub(16)), p.add(16.min(n)));
        let s = _mm512_set1_ps(scale);
        std::mem::transmute::<__m512bh, __m512i>(_mm512_cvtne2ps_pbh(
            _mm512_mul_ps(hi, s),
            _mm512_mul_ps(lo, s),
        ))
    }
}

/// The softmax of `row` (f32, in place as scratch) into `out` as bf16, zeros past
/// `row.len()`: max, exponentials and their sum, then scale and round, in three passes of
/// 16 lanes. A NaN score makes the whole row NaN, as `attention.rs`'s softmax (an infinite
/// one does too: ∞ − ∞).
///
/// # Safety
///
/// The CPU has AVX-512 F/BW and BF16; `out` is at least as long as `row`, a multiple of 32.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
unsafe fn softmax_to_bf16(row: &mut [f32], out: &mut [u16]) {
    let n = row.len();
    debug_assert!(out.len() >= n && out.len().is_multiple_of(32));
    let p = row.as_mut_ptr();
    let mut max = _mm512_set1_ps(f32::NEG_INFINITY);
    let mut nan: __mmask16 = 0;
    for i in (0..n).step_by(16) {
        // SAFETY: the mask keeps the load inside row.
        let x = unsafe { _mm512_mask_loadu_ps(max, lanes(n - i), p.add(i)) };
        nan |= _mm512_cmp_ps_mask::<_CMP_UNORD_Q>(x, x);
        max = _mm512_max_ps(max, x);
    }
    if nan != 0 {
        out.fill(0x7fc0); // bf16 NaN
        return;
    }
    let max = _mm512_set1_ps(_mm512_reduce_max_ps(max));
    let mut sum = _mm512_setzero_ps();
    for i in (0..n).step_by(16) {
        let m = lanes(n - i);
        // SAFETY: as above.
        unsafe {
            let x = _mm512_maskz_loadu_ps(m, p.add(i));
            let e = _mm512_maskz_mov_ps(m, exp_neg_avx512(_mm512_sub_ps(x, max)));
            sum = _mm512_add_ps(sum, e);
            _mm512_mask_storeu_ps(p.add(i), m, e);
        }
    }
    let inv = _mm512_set1_ps(1.0 / _mm512_reduce_add_ps(sum));
    for i in (0..out.len()).step_by(32) {
        let rest = n.saturating_sub(i);
        // SAFETY: the masks keep the loads inside row (zeros past it), the store writes 32
        // values inside out.
        unsafe {
            let lo = _mm512_maskz_loadu_ps(lanes(rest), p.add(i.min(n)));
            let hi = _mm512_maskz_loadu_ps(lanes(rest.saturating_sub(16)), p.add((i + 16).min(n)));
            let both = _mm512_cvtne2ps_pbh(_mm512_mul_ps(hi, inv), _mm512_mul_ps(lo, inv));
            _mm512_storeu_si512(
                out[i..].as_mut_ptr().cast(),
                std::mem::transmute::<__m512bh, __m512i>(both),
            );
        }
    }
}

/// One or two tiles of f32 sums: `c0 = Σ_t A_t · B_t` and, when `two`, `c1 = Σ_t A_t ·
/// B'_t`, over `steps` reduction tiles. `A_t` is the 16-row bf16 tile at `a + 32·t` (rows
/// `a_stride` bytes apart), `B_t` the weight tile at `b + 512·t` and `B'_t` the one `b1_after`
/// values after it; the sums are stored at `c0` and `c1`, rows `c_stride` bytes apart. The
/// scores (queries × two key tiles) and the weighted values (probabilities × two tiles of
/// dimensions) are both this product.
///
/// # Safety
///
/// The tiles are configured on this thread; every tile read (`A_t`, `B_t`, and `B'_t` when
/// `two`) lies inside its buffer, and `c0` (and `c1` when `two`) is valid for writing 16 rows
/// of 16 f32 `c_stride` bytes apart.
#[inline(always)]
unsafe fn two_products(
    (a, a_stride): (*const u16, usize),
    b: *const u16,
    b1_after: usize,
    steps: usize,
    two: bool,
    (c0, c1, c_stride): (*mut f32, *mut f32, usize),
) {
    // SAFETY: the caller's contract.
    unsafe {
        asm!(
            "tilezero tmm0",
            "tilezero tmm1",
            options(nostack, nomem, preserves_flags)
        );
        for t in 0..steps {
            load!("tmm4", a.add(t * ROW_VALUES), a_stride);
            load!("tmm6", b.add(t * TILE_VALUES), ROW_BYTES);
            asm!(
                "tdpbf16ps tmm0, tmm4, tmm6",
                options(nostack, nomem, preserves_flags)
            );
            if two {
                load!("tmm7", b.add(b1_after + t * TILE_VALUES), ROW_BYTES);
                asm!(
                    "tdpbf16ps tmm1, tmm4, tmm7",
                    options(nostack, nomem, preserves_flags)
                );
            }
        }
        store!("tmm0", c0, c_stride);
        if two {
            store!("tmm1", c1, c_stride);
        }
    }
}

/// Attention of the (sequence, head) pairs `units` on AMX tiles; see [`super::attention`].
///
/// # Safety
///
/// As `attention_generic` in `attention.rs` for the same shape; and the CPU has AMX-BF16 with the tile data
/// granted to the process (the detected level is `amx`).
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq,avx512bf16,avx2,fma")]
pub(super) unsafe fn attention_amx(
    qkv: &[f32],
    out: *mut f32,
    s: &Shape,
    units: std::ops::Range<usize>,
) {
    let h = s.heads * s.head_dim;
    let d = s.head_dim;
    let scale = 1.0 / (d as f32).sqrt();
    // Tiles of 32 dimensions (scores' reduction) and of 16 (the output's columns).
    let (dt, dv) = (d.div_ceil(32), d.div_ceil(16));
    let dq = dt * ROW_VALUES;
    // Room for the longest sequence, padded to whole pairs of 16-row tiles.
    let most = s.seq_len.div_ceil(32) * 32;
    let mut q = AlignedVec::<u16>::zeroed(most * dq);
    let mut k = AlignedVec::<u16>::zeroed(most / TILE_ROWS * dt * TILE_VALUES);
    let mut v = AlignedVec::<u16>::zeroed(dv * most / 32 * TILE_VALUES);
    let mut scores = AlignedVec::<f32>::zeroed(TILE_ROWS * most);
    let mut p = AlignedVec::<u16>::zeroed(TILE_ROWS * most);
    let mut o = AlignedVec::<f32>::zeroed(2 * TILE_ROWS * 16);
    // Row `r` of a value tile: keys 2r, 2r + 1 interleaved value by value.
    let interleave = {
        let idx: [i16; 32] = std::array::from_fn(|i| ((i % 2) * 16 + i / 2) as i16);
        // SAFETY: 64 bytes, read unaligned.
        unsafe { _mm512_loadu_si512(idx.as_ptr().cast()) }
    };
    // Offsets (in pairs) of a column's 16 cells in a tile: one row apart.
    let rows_apart = _mm512_setr_epi32(
        0, 16, 32, 48, 64, 80, 96, 112, 128, 144, 160, 176, 192, 208, 224, 240,
    );
    // SAFETY: the caller's contract (the level `amx` is detected).
    let _tiles = unsafe { Tiles::configure() };
    for unit in units {
        let (b, head) = (unit / s.heads, unit % s.heads);
        let len = s.lengths[b];
        let base = s.first_rows[b];
        let off = head * d;
        let row = |j: usize, part: usize| &qkv[(base + j) * 3 * h + part * h + off..][..d];
        let qtiles = len.div_ceil(TILE_ROWS);
        let kpairs = len.div_ceil(32);
        // Scores' row width (whole key tiles) and p's (whole pairs of them).
        let (sw, pw) = (qtiles * TILE_ROWS, kpairs * 32);

        // Queries, scaled; rows past the sequence zero.
        for j in 0..qtiles * TILE_ROWS {
            for t in 0..dt {
                let dst = q[j * dq + t * ROW_VALUES..].as_mut_ptr().cast();
                // SAFETY: 32 values inside q's row j (dq = 32·dt).
                unsafe {
                    if j < len {
                        _mm512_storeu_si512(dst, bf16_32(row(j, 0), t * 32, scale))
                    } else {
                        _mm512_storeu_si512(dst, _mm512_setzero_si512())
                    }
                }
            }
        }
        // Keys: each key's pairs of dimensions become a column of its tile (one scatter of
        // 16 pairs to the 16 rows of its tile per 32 dimensions).
        k[..qtiles * dt * TILE_VALUES].fill(0);
        for j in 0..len {
            let (tile, col) = (j / TILE_ROWS, j % TILE_ROWS);
            for t in 0..dt {
                let dst = k[(tile * dt + t) * TILE_VALUES + col * 2..].as_mut_ptr();
                // SAFETY: the scatter writes a pair (4 bytes) at rows 0..16 of tile
                // (tile, t), column col: inside k (tile < qtiles).
                unsafe {
                    _mm512_i32scatter_epi32::<4>(
                        dst.cast(),
                        rows_apart,
                        bf16_32(row(j, 1), t * 32, 1.0),
                    )
                };
            }
        }
        // Values: pairs of keys interleaved; keys past the sequence zero.
        for t in 0..kpairs {
            for r in 0..TILE_ROWS {
                let (a, b) = (t * 32 + 2 * r, t * 32 + 2 * r + 1);
                for c in 0..dv {
                    let cols = lanes(d - c * 16);
                    // SAFETY: the masks keep the loads inside the rows (c·16 < d), the store
                    // inside v's tile (c, t).
                    unsafe {
                        let va = if a < len {
                            _mm512_maskz_loadu_ps(cols, row(a, 2)[c * 16..].as_ptr())
                        } else {
                            _mm512_setzero_ps()
                        };
                        let vb = if b < len {
                            _mm512_maskz_loadu_ps(cols, row(b, 2)[c * 16..].as_ptr())
                        } else {
                            _mm512_setzero_ps()
                        };
                        let both =
                            std::mem::transmute::<__m512bh, __m512i>(_mm512_cvtne2ps_pbh(vb, va));
                        let dst = v[((c * kpairs + t) * TILE_ROWS + r) * ROW_VALUES..].as_mut_ptr();
                        _mm512_storeu_si512(dst.cast(), _mm512_permutexvar_epi16(interleave, both));
                    }
                }
            }
        }

        for i in 0..qtiles {
            let qa = q[i * TILE_ROWS * dq..].as_ptr();
            // Scores of 16 queries against two key tiles at a time.
            // SAFETY: tiles configured; every load reads whole tiles inside q (rows
            // i·16..i·16 + 16 ≤ most) and k (tiles j·dt + t < qtiles·dt), every store writes
            // 16 rows × 16 f32 inside `scores` (16 × sw, column j·16 + 16 ≤ sw).
            unsafe {
                for j in (0..qtiles).step_by(2) {
                    let sc = scores.as_mut_ptr().add(j * TILE_ROWS);
                    two_products(
                        (qa, dq * 2),
                        k.as_ptr().add(j * dt * TILE_VALUES),
                        dt * TILE_VALUES,
                        dt,
                        j + 1 < qtiles,
                        (sc, sc.wrapping_add(TILE_ROWS), sw * 4),
                    );
                }
            }
            // Softmax of the real queries' rows over the real keys, to bf16.
            let rows = TILE_ROWS.min(len - i * TILE_ROWS);
            for r in 0..TILE_ROWS {
                let pr = &mut p[r * pw..(r + 1) * pw];
                if r < rows {
                    // SAFETY: the CPU has AVX-512 F and BF16.
                    unsafe { softmax_to_bf16(&mut scores[r * sw..r * sw + len], pr) };
                } else {
                    pr.fill(0);
                }
            }
            // Weighted values, two tiles of 16 dimensions at a time.
            for c in (0..dv).step_by(2) {
                let two = c + 1 < dv;
                // SAFETY: tiles configured; the loads read p (16 rows × pw, columns
                // t·32 + 32 ≤ pw) and v's tiles (c·kpairs + t < dv·kpairs), the stores write
                // the two 16 × 16 tiles of `o`.
                unsafe {
                    two_products(
                        (p.as_ptr(), pw * 2),
                        v.as_ptr().add(c * kpairs * TILE_VALUES),
                        kpairs * TILE_VALUES,
                        kpairs,
                        two,
                        (
                            o.as_mut_ptr(),
                            o.as_mut_ptr().wrapping_add(TILE_ROWS * 16),
                            64,
                        ),
                    )
                };
                for (half, c) in [c, c + 1].into_iter().enumerate().take(1 + two as usize) {
                    let cols = 16.min(d - c * 16);
                    for r in 0..rows {
                        let src = &o[(half * TILE_ROWS + r) * 16..][..cols];
                        // SAFETY: row base + i·16 + r < base + len, columns off + c·16 ..+cols
                        // inside this unit's head: the caller's contract gives this unit
                        // these elements.
                        unsafe {
                            let dst = out.add((base + i * TILE_ROWS + r) * h + off + c * 16);
                            std::ptr::copy_nonoverlapping(src.as_ptr(), dst, cols);
                        }
                    }
                }
            }
        }
    }
}
