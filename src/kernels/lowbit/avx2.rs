//! The AVX2 kernel of the 4- and 5-bit layers: `vpmaddubsw` on the unsigned nibbles and the
//! signed int8 activations (31 · 127 · 2 fits in i16, so it never saturates), the fifth bit
//! shifted out of its plane (or expanded from its mask), and a K-quant's 6-bit scales kept as
//! bytes that multiply each block's integer sum in `vpmaddwd`. One or two rows take a whole
//! panel per pass; larger batches half a panel for four rows.

use super::PANEL;
use super::{LowBitLayout, Tile, BLOCK, BLOCK_CHUNKS, BLOCK_MASKS, CHUNK_BYTES, K_BLOCKS};
use std::arch::x86_64::*;

/// The kernel's fifth bits: none (4-bit formats), masks, planes.
const NONE: u8 = 0;
const MASKS: u8 = 1;
const PLANES: u8 = 2;

/// AVX2 tile of `mr ≤ 4` rows × 1 panel. One or two rows take both halves of the panel
/// at once ([`kernel`]: one pass over the weights, as decode's lone rows need); more take
/// one half (8 columns) at a time ([`half`]), so that four rows share each unpacking of
/// the nibbles and fifth bits.
///
/// # Safety
///
/// As [`kernel`].
pub(super) unsafe fn tile(mr: usize, t: &Tile, acc: *mut f32) {
    let fifth = match (t.fifth_bits.is_empty(), t.layout) {
        (true, _) => NONE,
        (false, LowBitLayout::Vnni) => MASKS,
        (false, LowBitLayout::Avx2) => PLANES,
    };
    // K-quants in the AVX2 layout (4-bit, or 5-bit with planes) keep integer scales.
    unsafe {
        match (fifth, t.sub_scales.is_empty()) {
            (NONE, true) => rows::<NONE, false>(mr, t, acc),
            (MASKS, true) => rows::<MASKS, false>(mr, t, acc),
            (_, true) => rows::<PLANES, false>(mr, t, acc),
            (NONE, false) => rows::<NONE, true>(mr, t, acc),
            (MASKS, false) => rows::<MASKS, true>(mr, t, acc),
            (_, false) => rows::<PLANES, true>(mr, t, acc),
        }
    }
}

/// [`tile`] for one layout of the fifth bits and the scales (`INT`: a K-quant's 6-bit
/// scales and mins as integers).
///
/// # Safety
///
/// As [`kernel`].
unsafe fn rows<const FIFTH: u8, const INT: bool>(mr: usize, t: &Tile, acc: *mut f32) {
    unsafe {
        match mr {
            1 => kernel::<1, FIFTH, INT>(t, acc),
            2 => kernel::<2, FIFTH, INT>(t, acc),
            3 => {
                half::<3, 0, FIFTH, INT>(t, acc);
                half::<3, 1, FIFTH, INT>(t, acc);
            }
            4 => {
                half::<4, 0, FIFTH, INT>(t, acc);
                half::<4, 1, FIFTH, INT>(t, acc);
            }
            _ => unreachable!("tile rows"),
        }
    }
}

/// The 8 signed bytes at `at` as 16 i16, each twice (`vpmaddwd` pairs them with the
/// pairs of `vpmaddubsw`, both of one column): a K-quant's 6-bit scales (0..=63 read the
/// same signed), Q6_K's signed ones (`super::super::sixbit`).
///
/// # Safety
///
/// The CPU must support AVX2; `at` must be valid for reading 8 bytes.
#[target_feature(enable = "avx2")]
pub(in crate::kernels) unsafe fn doubled(at: *const i8) -> __m256i {
    unsafe {
        let s = _mm_loadl_epi64(at.cast());
        _mm256_cvtepi8_epi16(_mm_unpacklo_epi8(s, s))
    }
}

/// One row's step over one chunk of 8 columns: `dot` plus the unsigned `lo` and `hi`
/// values times the row's 4 + 4 activations at `at` (broadcast to every column), their
/// `vpmaddubsw` pairs weighted by `vpmaddwd` with `weight` (ones, or per-column scales).
///
/// # Safety
///
/// The CPU must support AVX2; `at` must be valid for reading 8 bytes.
#[target_feature(enable = "avx2")]
#[inline]
pub(in crate::kernels) unsafe fn row_step(
    dot: __m256i,
    at: *const i8,
    lo: __m256i,
    hi: __m256i,
    weight: __m256i,
) -> __m256i {
    unsafe {
        let a_lo = _mm256_set1_epi32(at.cast::<i32>().read_unaligned());
        let a_hi = _mm256_set1_epi32(at.add(4).cast::<i32>().read_unaligned());
        let p = _mm256_add_epi16(
            _mm256_maddubs_epi16(lo, a_lo),
            _mm256_maddubs_epi16(hi, a_hi),
        );
        _mm256_add_epi32(dot, _mm256_madd_epi16(p, weight))
    }
}

/// A block's `m = −dmin · mn` for the 8 columns whose 6-bit mins are at `at`, in f32 as
/// ggml computes it.
#[target_feature(enable = "avx2")]
unsafe fn mins(at: *const u8, neg_dmin: __m256) -> __m256 {
    unsafe {
        let mn = _mm256_cvtepu8_epi32(_mm_loadl_epi64(at.cast()));
        _mm256_mul_ps(_mm256_cvtepi32_ps(mn), neg_dmin)
    }
}

/// Bit `t` (0..8) of every byte of `plane` as that byte's bit 4 (16 or 0): one shift, one
/// mask (`t` is a constant wherever this is inlined: the loops over chunks unroll).
#[target_feature(enable = "avx2")]
fn plane_bit(plane: __m256i, t: usize) -> __m256i {
    // Bit 4 of a byte comes from bit 4 − s of the same byte after a 16-bit shift left by
    // s ≤ 4, or from bit 4 + s after a shift right by s ≤ 3: never from its neighbour.
    let moved = match t {
        0 => _mm256_slli_epi16(plane, 4),
        1 => _mm256_slli_epi16(plane, 3),
        2 => _mm256_slli_epi16(plane, 2),
        3 => _mm256_slli_epi16(plane, 1),
        4 => plane,
        5 => _mm256_srli_epi16(plane, 1),
        6 => _mm256_srli_epi16(plane, 2),
        _ => _mm256_srli_epi16(plane, 3),
    };
    _mm256_and_si256(moved, _mm256_set1_epi8(0x10))
}

/// The fifth bits of 32 bytes: byte `i` is 16 where bit `i` of `bits` is set, else 0
/// (as ggml's `bytes_from_bits_32`).
#[target_feature(enable = "avx2")]
fn fifth_bytes(bits: u32) -> __m256i {
    let spread = _mm256_shuffle_epi8(
        _mm256_set1_epi32(bits as i32),
        _mm256_set_epi64x(
            0x0303_0303_0303_0303,
            0x0202_0202_0202_0202,
            0x0101_0101_0101_0101,
            0,
        ),
    );
    let bit = _mm256_set1_epi64x(0x8040_2010_0804_0201_u64 as i64);
    let set = _mm256_cmpeq_epi8(_mm256_and_si256(spread, bit), bit);
    _mm256_and_si256(set, _mm256_set1_epi8(0x10))
}

/// # Safety
///
/// The CPU must support AVX2 and FMA; `t` holds at least `MR` rows and one panel (and its
/// fifth bits, laid out as `FIFTH` says, unless `FIFTH` is `NONE`); `acc` is valid for
/// writing `MR × 16` values.
#[target_feature(enable = "avx2,fma")]
unsafe fn kernel<const MR: usize, const FIFTH: u8, const INT: bool>(t: &Tile, acc: *mut f32) {
    let ones = _mm256_set1_epi16(1);
    let nibble = _mm256_set1_epi8(0x0F);
    let (x, w, k) = (t.x.as_ptr(), t.w.as_ptr(), t.k);
    let mut sums = [[_mm256_setzero_ps(); 2]; MR];
    // INT: the super-block's `d` and `−dmin`, and the block's scales and mins.
    let (mut d_super, mut neg_dmin) = ([_mm256_setzero_ps(); 2], [_mm256_setzero_ps(); 2]);
    for b in 0..t.blocks {
        let subs = t.sub_scales.as_ptr().add(b * 2 * PANEL);
        let weight = if INT {
            if b % K_BLOCKS == 0 {
                let at = b / K_BLOCKS * PANEL;
                d_super = [0, 8].map(|h| _mm256_loadu_ps(t.scales.as_ptr().add(at + h)));
                neg_dmin = [0, 8].map(|h| _mm256_loadu_ps(t.mins.as_ptr().add(at + h)));
            }
            [doubled(subs.cast()), doubled(subs.add(8).cast())]
        } else {
            [ones; 2]
        };
        let mut dots = [[_mm256_setzero_si256(); 2]; MR];
        let planes = if FIFTH == PLANES {
            let at = t.fifth_bits.as_ptr().add(b * BLOCK_MASKS).cast::<__m256i>();
            [_mm256_loadu_si256(at), _mm256_loadu_si256(at.add(1))]
        } else {
            [_mm256_setzero_si256(); 2]
        };
        for j in 0..BLOCK_CHUNKS {
            let base = w.add((b * BLOCK_CHUNKS + j) * CHUNK_BYTES);
            let raw0 = _mm256_loadu_si256(base.cast());
            let raw1 = _mm256_loadu_si256(base.add(32).cast());
            let mut lo = [
                _mm256_and_si256(raw0, nibble),
                _mm256_and_si256(raw1, nibble),
            ];
            let mut hi = [
                _mm256_and_si256(_mm256_srli_epi16(raw0, 4), nibble),
                _mm256_and_si256(_mm256_srli_epi16(raw1, 4), nibble),
            ];
            if FIFTH == MASKS {
                let masks = t.fifth_bits.as_ptr().add(b * BLOCK_MASKS + 2 * j);
                let (m_lo, m_hi) = (*masks, *masks.add(1));
                for h in 0..2 {
                    let (l, u) = ((m_lo >> (32 * h)) as u32, (m_hi >> (32 * h)) as u32);
                    lo[h] = _mm256_or_si256(lo[h], fifth_bytes(l));
                    hi[h] = _mm256_or_si256(hi[h], fifth_bytes(u));
                }
            } else if FIFTH == PLANES {
                // Chunk j's vectors are bits 4·(j mod 2) + 2h + s of plane j / 2.
                let plane = planes[j / 2];
                for s in 0..2 {
                    let t = 4 * (j % 2) + s;
                    lo[s] = _mm256_or_si256(lo[s], plane_bit(plane, t));
                    hi[s] = _mm256_or_si256(hi[s], plane_bit(plane, t + 2));
                }
            }
            for (r, d) in dots.iter_mut().enumerate() {
                let at = x.add(r * k + b * BLOCK + 8 * j);
                for h in 0..2 {
                    d[h] = row_step(d[h], at, lo[h], hi[h], weight[h]);
                }
            }
        }
        let at = b * PANEL;
        let (dw, mw) = if INT {
            (
                d_super,
                [0, 8].map(|h| mins(subs.add(PANEL + h), neg_dmin[h / 8])),
            )
        } else {
            (
                [0, 8].map(|h| _mm256_loadu_ps(t.scales.as_ptr().add(at + h))),
                [0, 8].map(|h| _mm256_loadu_ps(t.mins.as_ptr().add(at + h))),
            )
        };
        for (r, (s, d)) in sums.iter_mut().zip(&dots).enumerate() {
            let sx = _mm256_set1_ps(*t.x_scales.get_unchecked(r * t.blocks + b));
            let xs = _mm256_set1_ps(*t.x_sums.get_unchecked(r * t.blocks + b));
            for h in 0..2 {
                let v = _mm256_fmadd_ps(_mm256_cvtepi32_ps(d[h]), _mm256_mul_ps(sx, dw[h]), s[h]);
                s[h] = _mm256_fmadd_ps(mw[h], xs, v);
            }
        }
    }
    for (r, s) in sums.iter().enumerate() {
        _mm256_storeu_ps(acc.add(r * PANEL), s[0]);
        _mm256_storeu_ps(acc.add(r * PANEL + 8), s[1]);
    }
}

/// Columns `8H..8H + 8` of the panel for `MR` rows, into `acc[r·16 + 8H..]`: bytes
/// `32H..32H + 32` of every chunk, the same arithmetic in the same order as [`kernel`].
///
/// # Safety
///
/// As [`kernel`] (with `MR ≤ 4`).
#[target_feature(enable = "avx2,fma")]
unsafe fn half<const MR: usize, const H: usize, const FIFTH: u8, const INT: bool>(
    t: &Tile,
    acc: *mut f32,
) {
    let ones = _mm256_set1_epi16(1);
    let nibble = _mm256_set1_epi8(0x0F);
    let (x, w, k) = (t.x.as_ptr(), t.w.as_ptr(), t.k);
    let mut sums = [_mm256_setzero_ps(); MR];
    let (mut d_super, mut neg_dmin) = (_mm256_setzero_ps(), _mm256_setzero_ps());
    for b in 0..t.blocks {
        let subs = t.sub_scales.as_ptr().add(b * 2 * PANEL + 8 * H);
        let weight = if INT {
            if b % K_BLOCKS == 0 {
                let at = b / K_BLOCKS * PANEL + 8 * H;
                d_super = _mm256_loadu_ps(t.scales.as_ptr().add(at));
                neg_dmin = _mm256_loadu_ps(t.mins.as_ptr().add(at));
            }
            doubled(subs.cast())
        } else {
            ones
        };
        let mut dots = [_mm256_setzero_si256(); MR];
        for j in 0..BLOCK_CHUNKS {
            let raw =
                _mm256_loadu_si256(w.add((b * BLOCK_CHUNKS + j) * CHUNK_BYTES + 32 * H).cast());
            let mut lo = _mm256_and_si256(raw, nibble);
            let mut hi = _mm256_and_si256(_mm256_srli_epi16(raw, 4), nibble);
            if FIFTH == MASKS {
                let masks = t.fifth_bits.as_ptr().add(b * BLOCK_MASKS + 2 * j);
                let (m_lo, m_hi) = (*masks, *masks.add(1));
                lo = _mm256_or_si256(lo, fifth_bytes((m_lo >> (32 * H)) as u32));
                hi = _mm256_or_si256(hi, fifth_bytes((m_hi >> (32 * H)) as u32));
            } else if FIFTH == PLANES {
                let at = t.fifth_bits.as_ptr().add(b * BLOCK_MASKS).cast::<__m256i>();
                let plane = _mm256_loadu_si256(at.add(j / 2));
                let bit = 4 * (j % 2) + H;
                lo = _mm256_or_si256(lo, plane_bit(plane, bit));
                hi = _mm256_or_si256(hi, plane_bit(plane, bit + 2));
            }
            for (r, dot) in dots.iter_mut().enumerate() {
                *dot = row_step(*dot, x.add(r * k + b * BLOCK + 8 * j), lo, hi, weight);
            }
        }
        let at = b * PANEL + 8 * H;
        let (dw, mw) = if INT {
            (d_super, mins(subs.add(PANEL), neg_dmin))
        } else {
            (
                _mm256_loadu_ps(t.scales.as_ptr().add(at)),
                _mm256_loadu_ps(t.mins.as_ptr().add(at)),
            )
        };
        for (r, (s, dot)) in sums.iter_mut().zip(&dots).enumerate() {
            let sx = _mm256_set1_ps(*t.x_scales.get_unchecked(r * t.blocks + b));
            let xs = _mm256_set1_ps(*t.x_sums.get_unchecked(r * t.blocks + b));
            let v = _mm256_fmadd_ps(_mm256_cvtepi32_ps(*dot), _mm256_mul_ps(sx, dw), *s);
            *s = _mm256_fmadd_ps(mw, xs, v);
        }
    }
    for (r, s) in sums.iter().enumerate() {
        _mm256_storeu_ps(acc.add(r * PANEL + 8 * H), *s);
    }
}
