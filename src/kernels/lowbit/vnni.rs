//! The AVX-512 VNNI kernel of the 4- and 5-bit layers: `vpdpbusd` multiplies the unsigned
//! nibbles by the signed int8 activations directly, and the fifth bit (a 64-bit mask per 64
//! bytes) is a masked byte add. Tiles of up to 4 rows × 3 panels.

use super::super::int8::tile_shapes;
use super::{Tile, BLOCK, BLOCK_CHUNKS, BLOCK_MASKS, CHUNK_BYTES, PANEL};
use std::arch::x86_64::*;

/// VNNI tile of `mr ≤ 4` rows × `np ≤ 3` panels (see [`kernel`]).
///
/// # Safety
///
/// As [`kernel`].
pub unsafe fn tile(mr: usize, np: usize, t: &Tile, acc: *mut f32) {
    unsafe {
        if t.fifth_bits.is_empty() {
            tile_shapes!(four_bits, mr, np, (t, acc))
        } else {
            tile_shapes!(five_bits, mr, np, (t, acc))
        }
    }
}

/// # Safety
///
/// As [`kernel`].
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq,avx512vnni")]
unsafe fn four_bits<const MR: usize, const NP: usize>(t: &Tile, acc: *mut f32) {
    unsafe { kernel::<MR, NP, false>(t, acc) }
}

/// # Safety
///
/// As [`kernel`].
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq,avx512vnni")]
unsafe fn five_bits<const MR: usize, const NP: usize>(t: &Tile, acc: *mut f32) {
    unsafe { kernel::<MR, NP, true>(t, acc) }
}

/// # Safety
///
/// The CPU must support AVX-512 F/BW/VL/DQ/VNNI; `t` holds at least `MR` rows and `NP`
/// panels (and their fifth-bit masks when `FIVE`); `acc` is valid for writing
/// `MR × NP × 16` values.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq,avx512vnni")]
unsafe fn kernel<const MR: usize, const NP: usize, const FIVE: bool>(t: &Tile, acc: *mut f32) {
    let panel_bytes = t.blocks * BLOCK_CHUNKS * CHUNK_BYTES;
    let (x, w, k) = (t.x.as_ptr(), t.w.as_ptr(), t.k);
    let nibble = _mm512_set1_epi8(0x0F);
    let sixteen = _mm512_set1_epi8(0x10);
    let mut sums = [[_mm512_setzero_ps(); NP]; MR];
    for b in 0..t.blocks {
        let mut dots = [[_mm512_setzero_si512(); NP]; MR];
        for j in 0..BLOCK_CHUNKS {
            let mut lo = [_mm512_setzero_si512(); NP];
            let mut hi = [_mm512_setzero_si512(); NP];
            for p in 0..NP {
                let raw = _mm512_loadu_si512(
                    w.add(p * panel_bytes + (b * BLOCK_CHUNKS + j) * CHUNK_BYTES)
                        .cast(),
                );
                lo[p] = _mm512_and_si512(raw, nibble);
                hi[p] = _mm512_and_si512(_mm512_srli_epi16(raw, 4), nibble);
                if FIVE {
                    let masks = t
                        .fifth_bits
                        .as_ptr()
                        .add((p * t.blocks + b) * BLOCK_MASKS + 2 * j);
                    lo[p] = _mm512_mask_add_epi8(lo[p], *masks, lo[p], sixteen);
                    hi[p] = _mm512_mask_add_epi8(hi[p], *masks.add(1), hi[p], sixteen);
                }
            }
            for (r, row) in dots.iter_mut().enumerate() {
                let at = x.add(r * k + b * BLOCK + 8 * j);
                let a_lo = _mm512_set1_epi32(at.cast::<i32>().read_unaligned());
                let a_hi = _mm512_set1_epi32(at.add(4).cast::<i32>().read_unaligned());
                for p in 0..NP {
                    row[p] = _mm512_dpbusd_epi32(row[p], lo[p], a_lo);
                    row[p] = _mm512_dpbusd_epi32(row[p], hi[p], a_hi);
                }
            }
        }
        let mut d = [_mm512_setzero_ps(); NP];
        let mut m = [_mm512_setzero_ps(); NP];
        for p in 0..NP {
            let at = (p * t.blocks + b) * PANEL;
            d[p] = _mm512_loadu_ps(t.scales.as_ptr().add(at));
            m[p] = _mm512_loadu_ps(t.mins.as_ptr().add(at));
        }
        for (r, (row, dots)) in sums.iter_mut().zip(&dots).enumerate() {
            let sx = _mm512_set1_ps(*t.x_scales.get_unchecked(r * t.blocks + b));
            let xs = _mm512_set1_ps(*t.x_sums.get_unchecked(r * t.blocks + b));
            for p in 0..NP {
                let s =
                    _mm512_fmadd_ps(_mm512_cvtepi32_ps(dots[p]), _mm512_mul_ps(sx, d[p]), row[p]);
                row[p] = _mm512_fmadd_ps(m[p], xs, s);
            }
        }
    }
    for (r, row) in sums.iter().enumerate() {
        for (p, s) in row.iter().enumerate() {
            _mm512_storeu_ps(acc.add((r * NP + p) * PANEL), *s);
        }
    }
}
