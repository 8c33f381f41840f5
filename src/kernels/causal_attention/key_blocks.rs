//! Moving a key or value block into L1 in the form the attention layouts read: in place
//! (f32) or widened (f16), asked for ahead of use, and the narrow layout's keys transposed.

use super::{KvValue, KEY_BLOCK};

/// Keys (or values) `t0..t0 + n` (rows of the slice) of KV head `kvh`, row `j` at `j·stride` of the slice: the
/// cache in place when it is f32, else widened into `scratch`.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
pub(super) fn block<'a, T: KvValue, const AVX: bool>(
    src: &'a [T],
    kvw: usize,
    hd: usize,
    kvh: usize,
    t0: usize,
    n: usize,
    scratch: &'a mut Vec<f32>,
) -> (&'a [f32], usize) {
    let at = t0 * kvw + kvh * hd;
    if let Some(f) = T::as_f32(src) {
        return (&f[at..at + (n - 1) * kvw + hd], kvw);
    }
    scratch.resize(n * hd, 0.0);
    for j in 0..n {
        let (from, to) = (&src[at + j * kvw..][..hd], &mut scratch[j * hd..][..hd]);
        if AVX {
            // SAFETY: the AVX builds run where the CPU has F16C (`KernelLevel::Avx2` and up).
            unsafe { T::widen_f16c(from, to) }
        } else {
            T::widen(from, to)
        }
    }
    (&scratch[..n * hd], hd)
}

/// Asks the CPU to load the keys and values of rows `r0..r0 + n` (rows of the slices) of KV
/// head `kvh` into L1 ahead of use. Why: in decode a sequence's cache is read once per token,
/// after the layer's weights have pushed it out of every cache, and its rows for one head are
/// `head_dim` values every `n_head_kv·head_dim`, a pattern the hardware prefetchers did not
/// follow: widening the f16 keys and values waited on memory for over half of decode
/// attention's time (perf, Qwen3-0.6B, one stream, Zen 3). Rows past the slices are skipped.
#[inline(always)]
pub(super) fn prefetch_block<T>(
    k: &[T],
    v: &[T],
    kvw: usize,
    hd: usize,
    kvh: usize,
    r0: usize,
    n: usize,
) {
    #[cfg(target_arch = "x86_64")]
    {
        use crate::kernels::tiles::LINE;
        use std::arch::x86_64::{_mm_prefetch, _MM_HINT_T0};
        let bytes = hd * std::mem::size_of::<T>();
        for src in [k, v] {
            for r in r0..r0 + n {
                let at = r * kvw + kvh * hd;
                if at + hd > src.len() {
                    break;
                }
                let row = src[at..].as_ptr().cast::<i8>();
                // Every line the row touches: from its start a line apart, and its last byte
                // (a row need not start on a line).
                for off in (0..bytes).step_by(LINE).chain([bytes.saturating_sub(1)]) {
                    // SAFETY: `off < bytes` (or 0), so the address is inside row `r`'s `hd`
                    // values, which are in bounds (checked above); a prefetch reads nothing.
                    unsafe { _mm_prefetch::<_MM_HINT_T0>(row.add(off)) };
                }
            }
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = (k, v, kvw, hd, kvh, r0, n);
}

/// Key block `kb` (`nb` rows of `hd`, row `j` at `j·ks`) transposed into `kt` (`hd ×
/// KEY_BLOCK`, key `j` of dimension `d` at `d·KEY_BLOCK + j`; columns from `nb` on keep what
/// they held, and are not read). A plain copy: the same values whichever way it runs. With
/// `AVX` (the caller is compiled with AVX), 8×8 tiles go through registers: the scalar loop
/// cost more than the scores it feeds in decode (one row, three heads per key block).
#[inline(always)]
pub(super) fn transpose_keys<const AVX: bool>(
    kb: &[f32],
    ks: usize,
    nb: usize,
    hd: usize,
    kt: &mut [f32],
) {
    assert!(nb <= KEY_BLOCK && kt.len() >= hd * KEY_BLOCK);
    assert!(nb == 0 || kb.len() >= (nb - 1) * ks + hd);
    let (mut j0, mut d_tiles) = (0, 0);
    #[cfg(target_arch = "x86_64")]
    if AVX {
        d_tiles = hd / 8 * 8;
        while j0 + 8 <= nb {
            for d0 in (0..d_tiles).step_by(8) {
                // SAFETY: the caller runs with AVX (`AVX`); rows `j0..j0 + 8` of `kb` hold
                // columns `d0..d0 + 8` (`d0 + 8 <= hd`, asserted lengths above), and `kt`
                // holds rows `d0..d0 + 8` of `KEY_BLOCK` from column `j0 + 8 <= nb`.
                unsafe {
                    transpose8x8(
                        kb.as_ptr().add(j0 * ks + d0),
                        ks,
                        kt.as_mut_ptr().add(d0 * KEY_BLOCK + j0),
                        KEY_BLOCK,
                    )
                };
            }
            j0 += 8;
        }
    }
    // What the tiles did not cover: the last rows (fewer than 8), the last columns (`hd` not
    // a multiple of 8), or everything (no AVX).
    for j in 0..nb {
        let from = if j < j0 { d_tiles } else { 0 };
        for d in from..hd {
            kt[d * KEY_BLOCK + j] = kb[j * ks + d];
        }
    }
}

/// The 8×8 block at `src` (rows `src_stride` apart) transposed to `dst` (rows `dst_stride`
/// apart), in registers.
///
/// # Safety
///
/// The CPU has AVX; `src` and `dst` point at 8 rows of 8 readable (writable) f32 each.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx")]
#[inline]
unsafe fn transpose8x8(src: *const f32, src_stride: usize, dst: *mut f32, dst_stride: usize) {
    use std::arch::x86_64::*;
    // SAFETY: the caller's contract.
    unsafe {
        let r0 = _mm256_loadu_ps(src);
        let r1 = _mm256_loadu_ps(src.add(src_stride));
        let r2 = _mm256_loadu_ps(src.add(2 * src_stride));
        let r3 = _mm256_loadu_ps(src.add(3 * src_stride));
        let r4 = _mm256_loadu_ps(src.add(4 * src_stride));
        let r5 = _mm256_loadu_ps(src.add(5 * src_stride));
        let r6 = _mm256_loadu_ps(src.add(6 * src_stride));
        let r7 = _mm256_loadu_ps(src.add(7 * src_stride));
        // Pairs of rows interleaved: t0 = [a00 a10 a01 a11 | a04 a14 a05 a15], ...
        let t0 = _mm256_unpacklo_ps(r0, r1);
        let t1 = _mm256_unpackhi_ps(r0, r1);
        let t2 = _mm256_unpacklo_ps(r2, r3);
        let t3 = _mm256_unpackhi_ps(r2, r3);
        let t4 = _mm256_unpacklo_ps(r4, r5);
        let t5 = _mm256_unpackhi_ps(r4, r5);
        let t6 = _mm256_unpacklo_ps(r6, r7);
        let t7 = _mm256_unpackhi_ps(r6, r7);
        // Four rows' column pieces: s0 = [a00 a10 a20 a30 | a04 a14 a24 a34], ...
        let s0 = _mm256_shuffle_ps::<0x44>(t0, t2);
        let s1 = _mm256_shuffle_ps::<0xEE>(t0, t2);
        let s2 = _mm256_shuffle_ps::<0x44>(t1, t3);
        let s3 = _mm256_shuffle_ps::<0xEE>(t1, t3);
        let s4 = _mm256_shuffle_ps::<0x44>(t4, t6);
        let s5 = _mm256_shuffle_ps::<0xEE>(t4, t6);
        let s6 = _mm256_shuffle_ps::<0x44>(t5, t7);
        let s7 = _mm256_shuffle_ps::<0xEE>(t5, t7);
        // Halves joined: column c of the source is row c of the result.
        let d = |i: usize| dst.add(i * dst_stride);
        _mm256_storeu_ps(d(0), _mm256_permute2f128_ps::<0x20>(s0, s4));
        _mm256_storeu_ps(d(1), _mm256_permute2f128_ps::<0x20>(s1, s5));
        _mm256_storeu_ps(d(2), _mm256_permute2f128_ps::<0x20>(s2, s6));
        _mm256_storeu_ps(d(3), _mm256_permute2f128_ps::<0x20>(s3, s7));
        _mm256_storeu_ps(d(4), _mm256_permute2f128_ps::<0x31>(s0, s4));
        _mm256_storeu_ps(d(5), _mm256_permute2f128_ps::<0x31>(s1, s5));
        _mm256_storeu_ps(d(6), _mm256_permute2f128_ps::<0x31>(s2, s6));
        _mm256_storeu_ps(d(7), _mm256_permute2f128_ps::<0x31>(s3, s7));
    }
}
