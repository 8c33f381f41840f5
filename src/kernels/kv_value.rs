//! The element types of a KV cache as attention reads them: f32 in place, or f16 widened to
//! f32 a key block at a time (exact), with an inlined `vcvtph2ps` for the AVX builds.

use half::f16;
use half::slice::HalfFloatSliceExt;

/// An element type of a KV cache: f32, or f16 (widened a block at a time).
pub trait KvValue: Copy + Send + Sync + 'static {
    /// The values as f32 if they are (read in place), else `None`.
    fn as_f32(src: &[Self]) -> Option<&[f32]>;
    /// Widens `src` into `dst` (same length).
    fn widen(src: &[Self], dst: &mut [f32]);
    /// [`KvValue::widen`], inlined into the AVX builds.
    ///
    /// # Safety
    ///
    /// The CPU has F16C.
    #[inline(always)]
    unsafe fn widen_f16c(src: &[Self], dst: &mut [f32]) {
        Self::widen(src, dst)
    }
}

impl KvValue for f32 {
    #[inline(always)]
    fn as_f32(src: &[Self]) -> Option<&[f32]> {
        Some(src)
    }

    fn widen(src: &[Self], dst: &mut [f32]) {
        dst.copy_from_slice(src);
    }
}

impl KvValue for f16 {
    #[inline(always)]
    fn as_f32(_: &[Self]) -> Option<&[f32]> {
        None
    }

    fn widen(src: &[Self], dst: &mut [f32]) {
        src.convert_to_f32_slice(dst);
    }

    /// `vcvtph2ps` eight values at a time, inlined: `half`'s slice conversion checks the CPU
    /// and calls a function per eight values, which took ~6% of an eight-stream Qwen3-0.6B
    /// decode step (perf, Ice Lake).
    #[inline(always)]
    unsafe fn widen_f16c(src: &[Self], dst: &mut [f32]) {
        assert_eq!(src.len(), dst.len(), "widen: lengths");
        let mut done = 0;
        #[cfg(target_arch = "x86_64")]
        {
            use std::arch::x86_64::{_mm256_cvtph_ps, _mm256_storeu_ps, _mm_loadu_si128};
            while done + 8 <= src.len() {
                // SAFETY: eight values in bounds of both (same length, checked); the CPU has
                // F16C (the caller's contract).
                unsafe {
                    let h = _mm_loadu_si128(src.as_ptr().add(done).cast());
                    _mm256_storeu_ps(dst.as_mut_ptr().add(done), _mm256_cvtph_ps(h));
                }
                done += 8;
            }
        }
        Self::widen(&src[done..], &mut dst[done..]);
    }
}
