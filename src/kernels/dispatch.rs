//! Run-time dispatch over instruction sets, shared by the f32 kernels (linear, activations,
//! attention).
//!
//! Element-wise and attention loops are written plainly so that LLVM vectorises them, and
//! compiled several times from one body: a baseline version, an AVX2+FMA version and (for
//! `dispatch512!`) an AVX-512 version, chosen at run time by CPU feature detection, so the
//! shipped binary needs no `-C target-cpu=native`. Macros rather than generics because
//! `#[target_feature]` applies to a function, and the body must be inlined into each compiled
//! copy to be vectorised for its features.

use super::KernelLevel;

/// Defines `$generic`, compiled for the baseline target, and `$avx2`, the same body compiled
/// for AVX2+FMA. The `unsafe` form is for bodies with a caller's contract (raw pointers): both
/// functions are then `unsafe fn` and the contract is written at the invocation.
macro_rules! dispatch {
    ($generic:ident, $avx2:ident, ($($arg:ident : $ty:ty),*) -> $ret:ty $body:block) => {
        #[inline(always)]
        fn $generic($($arg: $ty),*) -> $ret $body

        /// The same function compiled for AVX2 and FMA.
        ///
        /// # Safety
        ///
        /// The CPU must support AVX2 and FMA (see `dispatch::has_avx2_fma`).
        #[cfg(target_arch = "x86_64")]
        #[target_feature(enable = "avx2,fma")]
        unsafe fn $avx2($($arg: $ty),*) -> $ret { $generic($($arg),*) }
    };
    ($generic:ident, $avx2:ident, ($($arg:ident : $ty:ty),*) $body:block) => {
        #[inline(always)]
        fn $generic($($arg: $ty),*) $body

        /// The same function compiled for AVX2 and FMA.
        ///
        /// # Safety
        ///
        /// The CPU must support AVX2 and FMA (see `dispatch::has_avx2_fma`).
        #[cfg(target_arch = "x86_64")]
        #[target_feature(enable = "avx2,fma")]
        unsafe fn $avx2($($arg: $ty),*) { $generic($($arg),*) }
    };
    ($(#[$attr:meta])* unsafe $generic:ident, $avx2:ident, ($($arg:ident : $ty:ty),*) $body:block) => {
        $(#[$attr])*
        #[inline(always)]
        unsafe fn $generic($($arg: $ty),*) $body

        $(#[$attr])*
        ///
        /// Compiled for AVX2 and FMA: the CPU must also support them (see
        /// `dispatch::has_avx2_fma`).
        #[cfg(target_arch = "x86_64")]
        #[target_feature(enable = "avx2,fma")]
        unsafe fn $avx2($($arg: $ty),*) { unsafe { $generic($($arg),*) } }
    };
}

/// [`dispatch!`] plus `$avx512`, the same body compiled for AVX-512 (F/BW/VL/DQ), where LLVM
/// uses 16-lane vectors: for the element-wise and attention loops that dominate once the
/// linear layers run in bf16.
macro_rules! dispatch512 {
    ($(#[$attr:meta])* $generic:ident, $avx2:ident, $avx512:ident, ($($arg:ident : $ty:ty),*) $body:block) => {
        $crate::kernels::dispatch::dispatch!($generic, $avx2, ($($arg: $ty),*) $body);

        /// The same function compiled for AVX-512.
        ///
        /// # Safety
        ///
        /// The CPU must support AVX-512 F/BW/VL/DQ, AVX2 and FMA (level `avx512-vnni` or up).
        #[cfg(target_arch = "x86_64")]
        #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq,avx2,fma")]
        unsafe fn $avx512($($arg: $ty),*) { $generic($($arg),*) }
    };
    ($(#[$attr:meta])* unsafe $generic:ident, $avx2:ident, $avx512:ident, ($($arg:ident : $ty:ty),*) $body:block) => {
        $crate::kernels::dispatch::dispatch!($(#[$attr])* unsafe $generic, $avx2, ($($arg: $ty),*) $body);

        $(#[$attr])*
        ///
        /// Compiled for AVX-512: the CPU must also support AVX-512 F/BW/VL/DQ, AVX2 and FMA
        /// (level `avx512-vnni` or up).
        #[cfg(target_arch = "x86_64")]
        #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq,avx2,fma")]
        unsafe fn $avx512($($arg: $ty),*) { unsafe { $generic($($arg),*) } }
    };
}

/// Which compiled version of a `dispatch512!` function runs at `level` (never above what the
/// CPU has).
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Variant {
    Generic,
    #[cfg(target_arch = "x86_64")]
    Avx2,
    #[cfg(target_arch = "x86_64")]
    Avx512,
}

pub(crate) fn variant(level: KernelLevel) -> Variant {
    let level = level.min(KernelLevel::detected());
    #[cfg(target_arch = "x86_64")]
    {
        if level >= KernelLevel::Avx512Vnni {
            return Variant::Avx512;
        }
        if level >= KernelLevel::Avx2 {
            return Variant::Avx2;
        }
    }
    let _ = level;
    Variant::Generic
}

/// Whether the AVX2+FMA versions may run: the CPU has both. Always false under miri, which
/// checks the portable versions (scripts/miri.sh).
#[cfg(target_arch = "x86_64")]
pub(crate) fn has_avx2_fma() -> bool {
    if cfg!(miri) {
        return false;
    }
    use std::sync::OnceLock;
    static HAS: OnceLock<bool> = OnceLock::new();
    *HAS.get_or_init(|| is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma"))
}

/// Calls the AVX2+FMA version of a safe `dispatch!` function when the CPU has the features,
/// else the baseline version.
macro_rules! call {
    ($generic:ident, $avx2:ident, $($arg:expr),*) => {{
        #[cfg(target_arch = "x86_64")]
        {
            if $crate::kernels::dispatch::has_avx2_fma() {
                // SAFETY: the CPU supports the features the function was compiled for.
                return unsafe { $avx2($($arg),*) };
            }
        }
        $generic($($arg),*)
    }};
}

pub(crate) use {call, dispatch, dispatch512};
