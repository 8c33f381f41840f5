//! CPU kernels of the encoder's forward pass, and the candle custom ops that run them.
//!
//! Why not candle's stock ops: at the sizes an embedding server sees (a few to a few hundred
//! tokens per batch) a transformer layer is dominated not by its matmuls but by what surrounds
//! them: a fresh tensor per element-wise op, scalar `erf` in GELU, transposes to split heads and
//! an additive attention mask that computes scores for padding only to throw them away. Here:
//! - `Linear` is one `gemm` call with the bias folded into the destination (no broadcast add),
//!   with intra-op parallelism chosen per call by the worker (see `worker.rs`);
//! - `AddLayerNorm` adds the residual and normalises in one pass over the row;
//! - `Attention` reads heads straight out of the fused QKV projection and only visits the real
//!   (unpadded) tokens of each sequence, which is exact masking at no cost;
//! - `Gelu` is exact-erf GELU with a vectorisable erf (|error| < 2e-7), applied in place.
//!
//! Element-wise loops are written plainly so that LLVM vectorises them, and compiled twice: a
//! baseline version and an AVX2+FMA version chosen at run time by CPU feature detection, so the
//! shipped binary needs no `-C target-cpu=native`.

use candle_core::{CpuStorage, CustomOp1, CustomOp2, InplaceOp1, Layout, Result, Shape};

use super::{Epilogue, KernelLevel, PackedLinear};

/// Defines `$generic`, compiled for the baseline target, and `$avx2`, the same body compiled
/// for AVX2+FMA. The `unsafe` form is for bodies with a caller's contract (raw pointers): both
/// functions are then `unsafe fn` and the contract is written at the invocation.
macro_rules! dispatch {
    ($generic:ident, $avx2:ident, ($($arg:ident : $ty:ty),*) $body:block) => {
        #[inline(always)]
        fn $generic($($arg: $ty),*) $body

        /// The same function compiled for AVX2 and FMA.
        ///
        /// # Safety
        ///
        /// The CPU must support AVX2 and FMA (see [`has_avx2_fma`]).
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
        /// Compiled for AVX2 and FMA: the CPU must also support them (see [`has_avx2_fma`]).
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
        dispatch!($generic, $avx2, ($($arg: $ty),*) $body);

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
        dispatch!($(#[$attr])* unsafe $generic, $avx2, ($($arg: $ty),*) $body);

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
enum Variant {
    Generic,
    #[cfg(target_arch = "x86_64")]
    Avx2,
    #[cfg(target_arch = "x86_64")]
    Avx512,
}

fn variant(level: KernelLevel) -> Variant {
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
fn has_avx2_fma() -> bool {
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
            if has_avx2_fma() {
                // SAFETY: the CPU supports the features the function was compiled for.
                return unsafe { $avx2($($arg),*) };
            }
        }
        $generic($($arg),*)
    }};
}

// ---------------------------------------------------------------------------------------------
// Plain kernels on slices (unit-tested against naive versions below).
// ---------------------------------------------------------------------------------------------

/// Up to this many rows, a linear layer runs the dot-product kernel that reads each weight
/// once in place; above it, `gemm`, whose packing pays off. Measured in `benches/forward.rs`
/// (`linear/*` rows) and docs/benchmarks.md.
pub const SMALL_M: usize = 24;

/// One block of output columns of a linear layer: weight rows `w` (`n×k`, PyTorch layout)
/// and bias `b` (`n`). A layer may have several (the Q, K and V projections side by side).
#[derive(Clone, Copy)]
pub struct LinearPart<'a> {
    pub w: &'a [f32],
    pub b: &'a [f32],
}

/// Which matmul a linear layer uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MatmulKernel {
    /// The in-place dot kernel up to [`SMALL_M`] rows (when the CPU has AVX2+FMA), else gemm.
    Auto,
    /// Always gemm (for benchmarks).
    Gemm,
}

/// Σn, the output width of a linear layer with these parts; `None` if it overflows.
fn output_width(parts: &[LinearPart]) -> Option<usize> {
    parts
        .iter()
        .try_fold(0usize, |n, p| n.checked_add(p.b.len()))
}

/// `out[m × Σn] = [bias_p + x[m×k] · w_pᵀ for each part p]`, parts side by side. With `k = 0`
/// the product is empty and `out` is the biases.
///
/// # Panics
///
/// When a size does not match (`x` is not `m×k`, `out` not `m×Σn`, a weight not `n×k`),
/// computed without overflow.
pub fn linear(
    x: &[f32],
    m: usize,
    k: usize,
    parts: &[LinearPart],
    out: &mut [f32],
    threads: usize,
) {
    linear_with(x, m, k, parts, out, threads, MatmulKernel::Auto)
}

/// [`linear`] with the kernel chosen by the caller.
pub fn linear_with(
    x: &[f32],
    m: usize,
    k: usize,
    parts: &[LinearPart],
    out: &mut [f32],
    threads: usize,
    kernel: MatmulKernel,
) {
    let total = output_width(parts).expect("linear: output width overflows usize");
    assert_eq!(Some(x.len()), m.checked_mul(k), "linear: input size");
    assert_eq!(Some(out.len()), m.checked_mul(total), "linear: output size");
    for p in parts {
        assert_eq!(
            Some(p.w.len()),
            p.b.len().checked_mul(k),
            "linear: weight size"
        );
    }
    // Nothing to compute, and the pointer arithmetic below needs a non-empty output.
    if m == 0 || total == 0 {
        return;
    }
    for row in out.chunks_exact_mut(total) {
        let mut col = 0;
        for p in parts {
            row[col..col + p.b.len()].copy_from_slice(p.b);
            col += p.b.len();
        }
    }
    if k == 0 {
        return;
    }
    let mut col = 0;
    for p in parts {
        let n = p.b.len();
        if n == 0 {
            continue;
        }
        #[cfg(target_arch = "x86_64")]
        if kernel == MatmulKernel::Auto && m <= SMALL_M && has_avx2_fma() {
            // SAFETY: the CPU has AVX2 and FMA (checked just above).
            unsafe { small_m_parallel(x, m, k, p.w, n, out, total, col, threads) };
            col += n;
            continue;
        }
        let parallelism = if threads > 1 {
            gemm::Parallelism::Rayon(threads)
        } else {
            gemm::Parallelism::None
        };
        // SAFETY: dst is the m×n column block starting at `col` of the m×total row-major
        // output (col + n ≤ total, m ≥ 1, so `add(col)` stays inside `out`); lhs is m×k
        // row-major; rhs = wᵀ (k×n) read from w (n×k row-major); all sizes checked above, so
        // they fit in isize (they are lengths of slices).
        unsafe {
            gemm::gemm(
                m,
                n,
                k,
                out.as_mut_ptr().add(col),
                1,
                total as isize,
                true,
                x.as_ptr(),
                1,
                k as isize,
                p.w.as_ptr(),
                k as isize,
                1,
                1.0,
                1.0,
                false,
                false,
                false,
                parallelism,
            )
        }
        col += n;
    }
}

/// A raw output pointer that tasks writing disjoint parts of one buffer may share.
#[derive(Clone, Copy)]
struct SharedPtr(*mut f32);
// SAFETY: only used by `small_m_parallel` and `attention`, whose tasks write disjoint parts.
unsafe impl Send for SharedPtr {}
unsafe impl Sync for SharedPtr {}

/// Runs [`small_m_avx2`] with the weight rows split into `threads` column ranges (each a
/// multiple of 4 rows), so a lone small batch can use every core. Adds `x · wᵀ` to columns
/// `col..col + n` of the `m` rows of `out` (row stride `stride`).
///
/// # Panics
///
/// When `x` is not `m×k`, `w` not `n×k`, or `out` does not hold `m` rows of `stride` values
/// with `col + n ≤ stride`.
///
/// # Safety
///
/// The CPU must support AVX2 and FMA (see [`has_avx2_fma`]).
#[cfg(target_arch = "x86_64")]
#[allow(clippy::too_many_arguments)]
unsafe fn small_m_parallel(
    x: &[f32],
    m: usize,
    k: usize,
    w: &[f32],
    n: usize,
    out: &mut [f32],
    stride: usize,
    col: usize,
    threads: usize,
) {
    assert_eq!(Some(x.len()), m.checked_mul(k), "small_m: input size");
    assert_eq!(Some(w.len()), n.checked_mul(k), "small_m: weight size");
    assert!(
        col.checked_add(n).is_some_and(|end| end <= stride)
            && m.checked_mul(stride).is_some_and(|len| len <= out.len()),
        "small_m: output size"
    );
    let threads = threads.min(n / 64).max(1);
    if threads == 1 {
        // SAFETY: sizes checked above (every row i < m has columns col..col+n inside `out`,
        // which we borrow mutably); the caller guarantees AVX2 and FMA.
        unsafe { small_m_avx2(x, m, k, w, n, out.as_mut_ptr(), stride, col) };
        return;
    }
    let chunk = n.div_ceil(threads).div_ceil(4) * 4;
    let shared = SharedPtr(out.as_mut_ptr());
    rayon::scope(|scope| {
        for start in (0..n).step_by(chunk) {
            let len = chunk.min(n - start);
            scope.spawn(move |_| {
                let shared = shared;
                // SAFETY: each task writes only columns col+start..col+start+len of every
                // row, disjoint from the others, inside `out` (checked above), which stays
                // mutably borrowed until the scope ends; the weight rows it reads are in
                // bounds (slice indexing); the caller guarantees AVX2 and FMA.
                unsafe {
                    small_m_avx2(
                        x,
                        m,
                        k,
                        &w[start * k..(start + len) * k],
                        len,
                        shared.0,
                        stride,
                        col + start,
                    )
                };
            });
        }
    });
}

/// `out[i·stride + col + j] += x[i] · w[j]` for a few rows: each weight row is read once,
/// straight from where it lies, and dotted with every input row while it sits in L1.
/// Register blocking: 3 input rows × 4 weight rows = 12 accumulators of 8 lanes.
///
/// # Safety
///
/// The CPU must support AVX2 and FMA; `x` holds at least `m×k` values and `w` at least `n×k`;
/// `out` is valid for reads and writes of `out[i·stride + col + j]` for every `i < m`,
/// `j < n`, and nothing else accesses those elements during the call.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
#[allow(clippy::too_many_arguments)]
unsafe fn small_m_avx2(
    x: &[f32],
    m: usize,
    k: usize,
    w: &[f32],
    n: usize,
    out: *mut f32,
    stride: usize,
    col: usize,
) {
    let (x, w, o) = (x.as_ptr(), w.as_ptr(), out.add(col));
    let mut j = 0;
    while j + 4 <= n {
        let mut i = 0;
        while i + 3 <= m {
            block::<3, 4>(x, w, o, k, stride, i, j);
            i += 3;
        }
        while i < m {
            block::<1, 4>(x, w, o, k, stride, i, j);
            i += 1;
        }
        j += 4;
    }
    while j < n {
        for i in 0..m {
            block::<1, 1>(x, w, o, k, stride, i, j);
        }
        j += 1;
    }
}

/// `o[(i+r)·stride + j+c] += x[i+r] · w[j+c]` for `r < R`, `c < C` (rows of `k` values).
///
/// # Safety
///
/// The CPU must support AVX2 and FMA; `x` holds rows `i..i+R` and `w` rows `j..j+C` of `k`
/// values each; `o` is valid for reads and writes of the `R×C` elements above, which nothing
/// else accesses during the call.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
#[inline]
unsafe fn block<const R: usize, const C: usize>(
    x: *const f32,
    w: *const f32,
    o: *mut f32,
    k: usize,
    stride: usize,
    i: usize,
    j: usize,
) {
    use std::arch::x86_64::*;
    let k8 = k / 8 * 8;
    let mut acc = [[_mm256_setzero_ps(); C]; R];
    let mut kk = 0;
    while kk < k8 {
        let mut wv = [_mm256_setzero_ps(); C];
        for (c, v) in wv.iter_mut().enumerate() {
            *v = _mm256_loadu_ps(w.add((j + c) * k + kk));
        }
        for (r, row) in acc.iter_mut().enumerate() {
            let xv = _mm256_loadu_ps(x.add((i + r) * k + kk));
            for (a, wc) in row.iter_mut().zip(&wv) {
                *a = _mm256_fmadd_ps(xv, *wc, *a);
            }
        }
        kk += 8;
    }
    for (r, row) in acc.iter().enumerate() {
        for (c, a) in row.iter().enumerate() {
            let v = *a;
            let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
            let s = _mm_hadd_ps(s, s);
            let s = _mm_hadd_ps(s, s);
            let mut sum = _mm_cvtss_f32(s);
            for t in k8..k {
                sum += *x.add((i + r) * k + t) * *w.add((j + c) * k + t);
            }
            *o.add((i + r) * stride + j + c) += sum;
        }
    }
}

/// Lanes of the reductions below: independent partial results, so that the loops vectorise
/// (a single running f32 sum is a serial dependency LLVM must keep in order).
const LANES: usize = 16;

/// `Σ f(v)` over lanes of partial sums.
#[inline(always)]
fn lane_sum(v: &[f32], f: impl Fn(f32) -> f32) -> f32 {
    let mut acc = [0.0f32; LANES];
    let chunks = v.chunks_exact(LANES);
    let tail = chunks.remainder();
    for c in chunks {
        for (a, x) in acc.iter_mut().zip(c) {
            *a += f(*x);
        }
    }
    acc.iter().sum::<f32>() + tail.iter().map(|x| f(*x)).sum::<f32>()
}

/// The maximum of `v`, NaN if any value is NaN (`f32::max` would skip it); −∞ when empty.
#[inline(always)]
fn max_or_nan(v: &[f32]) -> f32 {
    let pick = |m: f32, x: f32| if x > m || x.is_nan() { x } else { m };
    let mut acc = [f32::NEG_INFINITY; LANES];
    let chunks = v.chunks_exact(LANES);
    let tail = chunks.remainder();
    for c in chunks {
        for (a, x) in acc.iter_mut().zip(c) {
            *a = pick(*a, *x);
        }
    }
    // A NaN lane must win the final fold too: fold NaN-first.
    acc.iter().chain(tail).fold(
        f32::NEG_INFINITY,
        |m, &x| {
            if m.is_nan() {
                m
            } else {
                pick(m, x)
            }
        },
    )
}

dispatch!(add_layer_norm_generic, add_layer_norm_avx2, (x: &mut [f32], residual: &[f32], gamma: &[f32], beta: &[f32], eps: f32) {
    let h = gamma.len();
    let residual_rows = residual.len() / h;
    for (i, row) in x.chunks_exact_mut(h).enumerate() {
        let r = &residual[(i % residual_rows) * h..][..h];
        for (v, r) in row.iter_mut().zip(r) {
            *v += *r;
        }
        let mean = lane_sum(row, |v| v) / h as f32;
        let var = lane_sum(row, |v| (v - mean) * (v - mean));
        let inv = 1.0 / (var / h as f32 + eps).sqrt();
        for ((v, g), b) in row.iter_mut().zip(gamma).zip(beta) {
            *v = (*v - mean) * inv * g + b;
        }
    }
});

/// `x = LayerNorm(x + residual)` row by row. `residual` has as many rows as `x`, or fewer, in
/// which case row `i` of `x` takes row `i % rows` (position embeddings over a batch).
///
/// # Panics
///
/// When `gamma` is empty or `beta` differs in length, when `x` or `residual` is not a whole
/// number of rows, or when `x` has rows and `residual` none.
pub fn add_layer_norm(x: &mut [f32], residual: &[f32], gamma: &[f32], beta: &[f32], eps: f32) {
    assert_eq!(gamma.len(), beta.len(), "layer norm: gamma and beta sizes");
    let h = gamma.len();
    assert!(
        h > 0 && x.len().is_multiple_of(h) && residual.len().is_multiple_of(h),
        "layer norm: sizes"
    );
    if x.is_empty() {
        return;
    }
    assert!(!residual.is_empty(), "layer norm: empty residual");
    call!(
        add_layer_norm_generic,
        add_layer_norm_avx2,
        x,
        residual,
        gamma,
        beta,
        eps
    )
}

/// exp(x) for x ≤ 0 (as softmax and erf need), written to vectorise: Cephes' expf (Cody-Waite
/// range reduction and a degree-5 minimax polynomial), relative error about 1e-7. NaN stays
/// NaN (softmax relies on it to report a corrupt row rather than hide it).
#[inline(always)]
fn exp_neg(x: f32) -> f32 {
    // Not `x.max(-87.0)`, which would turn NaN into -87.
    let x = if x < -87.0 { -87.0 } else { x };
    // Ties to even, not `round()`: LLVM has one vector instruction for it, while `round()`'s
    // ties away from zero made it take every lane apart.
    let n = (x * std::f32::consts::LOG2_E).round_ties_even();
    let r = x - n * 0.693_359_4 + n * 2.121_944_4e-4;
    let z = r * r;
    let p = ((((1.987_569_1e-4 * r + 1.398_199_9e-3) * r + 8.333_452e-3) * r + 4.166_579_6e-2) * r
        + 1.666_666_5e-1)
        * r
        + 0.5;
    let e = p * z + r + 1.0;
    // 2^n built from its bits: n + 127 (1..=127 for -87 ≤ x ≤ 0) is the biased exponent,
    // read from the low bits of n + 127 + 2^23 (a float that holds it as its mantissa's low
    // bits), without the saturating float-to-integer cast that does not vectorise. A NaN n
    // gives some scale, and NaN × anything is NaN.
    let biased = (n + (127.0 + 8_388_608.0)).to_bits() & 0xff;
    let scale = f32::from_bits(biased << 23);
    e * scale
}

/// erf(x) (Abramowitz & Stegun 7.1.26, |error| ≤ 1.5e-7).
#[inline(always)]
fn erf(x: f32) -> f32 {
    let a = x.abs();
    let t = 1.0 / (1.0 + 0.327_591_1 * a);
    let poly = t
        * (0.254_829_6
            + t * (-0.284_496_74 + t * (1.421_413_8 + t * (-1.453_152_1 + t * 1.061_405_4))));
    let y = 1.0 - poly * exp_neg(-a * a);
    y.copysign(x)
}

dispatch512!(gelu_generic, gelu_avx2, gelu_avx512, (x: &mut [f32]) {
    for v in x.iter_mut() {
        *v = 0.5 * *v * (1.0 + erf(*v * std::f32::consts::FRAC_1_SQRT_2));
    }
});

/// GELU with the exact erf form BERT uses (`hidden_act: "gelu"`), in place, with the best
/// vectors the CPU has.
pub fn gelu(x: &mut [f32]) {
    gelu_at(x, KernelLevel::detected())
}

/// [`gelu`] with vectors no wider than `level` allows.
pub fn gelu_at(x: &mut [f32], level: KernelLevel) {
    match variant(level) {
        // SAFETY: `variant` never picks a version the CPU lacks the features of.
        #[cfg(target_arch = "x86_64")]
        Variant::Avx512 => unsafe { gelu_avx512(x) },
        // SAFETY: as above.
        #[cfg(target_arch = "x86_64")]
        Variant::Avx2 => unsafe { gelu_avx2(x) },
        Variant::Generic => gelu_generic(x),
    }
}

/// tanh(x), written to vectorise with [`exp_neg`]: `(1 - e^{-2|x|}) / (1 + e^{-2|x|})`, sign
/// restored.
#[inline(always)]
fn tanh(x: f32) -> f32 {
    let e = exp_neg(-2.0 * x.abs());
    ((1.0 - e) / (1.0 + e)).copysign(x)
}

dispatch512!(gelu_tanh_generic, gelu_tanh_avx2, gelu_tanh_avx512, (x: &mut [f32]) {
    const C: f32 = 0.797_884_6; // sqrt(2/π)
    for v in x.iter_mut() {
        let u = *v;
        *v = 0.5 * u * (1.0 + tanh(C * (u + 0.044_715 * u * u * u)));
    }
});

/// GELU with the tanh approximation GPT-2 uses (`activation_function: "gelu_new"`), in place,
/// with vectors no wider than `level` allows.
pub fn gelu_tanh_at(x: &mut [f32], level: KernelLevel) {
    match variant(level) {
        // SAFETY: `variant` never picks a version the CPU lacks the features of.
        #[cfg(target_arch = "x86_64")]
        Variant::Avx512 => unsafe { gelu_tanh_avx512(x) },
        // SAFETY: as above.
        #[cfg(target_arch = "x86_64")]
        Variant::Avx2 => unsafe { gelu_tanh_avx2(x) },
        Variant::Generic => gelu_tanh_generic(x),
    }
}

/// Shape of one attention call.
#[derive(Debug, Clone)]
pub struct AttentionShape {
    pub seq_len: usize,
    pub heads: usize,
    pub head_dim: usize,
    /// Real (unpadded) length of each sequence of the batch.
    pub lengths: Vec<usize>,
}

/// Sizes an attention call works with, computed without overflow.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct AttentionSizes {
    /// `heads × head_dim`.
    hidden: usize,
    /// `batch × seq_len`.
    rows: usize,
    /// `rows × 3·hidden`, the length of the fused QKV input.
    qkv: usize,
    /// `rows × hidden`, the length of the output.
    out: usize,
    /// `batch × heads`, the (sequence, head) pairs.
    units: usize,
}

impl AttentionShape {
    /// The sizes of this shape; `None` when one overflows usize (including the scratch
    /// buffer of `head_dim × seq_len` transposed keys).
    fn sizes(&self) -> Option<AttentionSizes> {
        let hidden = self.heads.checked_mul(self.head_dim)?;
        let rows = self.lengths.len().checked_mul(self.seq_len)?;
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

    fn lengths_fit(&self) -> bool {
        self.lengths.iter().all(|&l| l >= 1 && l <= self.seq_len)
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
            base: b * s.seq_len,
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

dispatch!(
    /// Attention of the (sequence, head) pairs `units`; see [`attention`].
    ///
    /// # Safety
    ///
    /// `s.sizes()` is `Some`, `s.lengths` are within `1..=seq_len`, `qkv` holds `sizes.qkv`
    /// values, and `out` is valid for writes of `sizes.out` values. For each unit (sequence
    /// `b`, head) in `units`, the elements of rows `b·seq_len..b·seq_len + lengths[b]`, columns
    /// `head·head_dim..(head+1)·head_dim` are written and nothing else accesses them during
    /// the call.
    unsafe attention_generic, attention_avx2, (qkv: &[f32], out: *mut f32, s: &AttentionShape, units: std::ops::Range<usize>) {
    // Register tiles: QB queries at a time against KB keys (scores), and QB queries × DB
    // dimensions of the output (weighted values). The fixed-size loops below are what LLVM
    // keeps in vector registers (8 accumulators of 8 lanes in the AVX2 build); a plain
    // query-by-query loop instead streams the scores through memory once per dimension.
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
                    std::slice::from_raw_parts_mut(out.add((base + i0 + qi) * h + off + whole), d - whole)
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
});

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
    let scale = 1.0 / (d as f32).sqrt();
    let padded = s.seq_len.div_ceil(KB) * KB;
    let mut keys_t = vec![0.0f32; d * padded];
    let mut scores = vec![0.0f32; QB * padded];
    // This unit's keys and values, gathered into rows of `d` first: the rows of the fused
    // QKV input are 3·hidden apart, and in a large batch not in cache. Whole-row copies keep
    // many loads in flight; the scalar transpose below then reads from L1.
    let mut keys = vec![0.0f32; d * s.seq_len];
    let mut values = vec![0.0f32; d * s.seq_len];
    for unit in units {
        let AttentionUnit {
            len,
            padded: lp,
            base,
            off,
        } = AttentionUnit::new(s, unit, KB);
        for j in 0..len {
            let row = &qkv[(base + j) * 3 * h..][..3 * h];
            keys[j * d..][..d].copy_from_slice(&row[h + off..][..d]);
            values[j * d..][..d].copy_from_slice(&row[2 * h + off..][..d]);
        }
        transpose_keys(
            keys.chunks_exact(d).take(len),
            d,
            len,
            lp,
            scale,
            &mut keys_t,
        );
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

/// [`attention_generic`] or its AVX2+FMA version, as the CPU allows.
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
) {
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
    let sizes = s.sizes().expect("attention: sizes overflow usize");
    assert_eq!(qkv.len(), sizes.qkv, "attention: qkv size");
    assert_eq!(out.len(), sizes.out, "attention: output size");
    assert!(s.lengths_fit(), "attention: lengths");
    if sizes.out == 0 {
        return;
    }
    let h = sizes.hidden;
    for (b, &len) in s.lengths.iter().enumerate() {
        out[(b * s.seq_len + len) * h..(b + 1) * s.seq_len * h].fill(0.0);
    }
    let units = sizes.units;
    let threads = threads.min(units).max(1);
    let shared = SharedPtr(out.as_mut_ptr());
    // Each unit (sequence b, head) writes only rows of b, columns of head: disjoint.
    let run = move |range: std::ops::Range<usize>| {
        let shared = shared;
        // SAFETY: sizes, lengths and buffer lengths checked above; `out` stays mutably
        // borrowed until every call returns (the scope below joins its tasks), and the unit
        // ranges given to concurrent calls are disjoint, so are the elements they write.
        unsafe { attention_units(qkv, shared.0, s, range, level) }
    };
    if threads == 1 {
        run(0..units);
        return;
    }
    let chunk = units.div_ceil(threads);
    super::team::parallel_for(units.div_ceil(chunk), threads, &|t| {
        run(t * chunk..((t + 1) * chunk).min(units))
    });
}

// ---------------------------------------------------------------------------------------------
// candle custom ops wrapping the kernels. They check every size (without overflow) and return
// a candle error rather than let a kernel assert.
// ---------------------------------------------------------------------------------------------

fn contiguous<'a>(s: &'a CpuStorage, l: &Layout, what: &str) -> Result<&'a [f32]> {
    let data = s.as_slice::<f32>()?;
    match l.contiguous_offsets() {
        Some((start, end)) => match data.get(start..end) {
            Some(data) => Ok(data),
            None => candle_core::bail!("{what}: layout {l:?} outside its storage"),
        },
        None => candle_core::bail!("{what}: expected a contiguous f32 tensor"),
    }
}

/// The weights of a [`Linear`] op: f32 parts read in place, or one packed layer (bf16 or
/// int8) run on the given kernel path.
#[derive(Clone, Copy)]
pub enum LinearWeights<'a> {
    F32(&'a [LinearPart<'a>]),
    Packed(&'a PackedLinear),
}

/// A linear layer as a candle op: `x[m×k] → [m × Σn]`, see [`linear`] and
/// [`PackedLinear::forward`].
pub struct Linear<'a> {
    pub weights: LinearWeights<'a>,
    /// Threads the matmul may use for this call (1: run on the calling thread only).
    pub threads: usize,
    /// Whether GELU follows (fused into the packed layers' store; a pass after f32 ones).
    pub gelu: bool,
    /// The kernel path of packed layers, and the widest vectors of GELU.
    pub level: KernelLevel,
}

impl CustomOp1 for Linear<'_> {
    fn name(&self) -> &'static str {
        "zerobatch-linear"
    }

    fn cpu_fwd(&self, xs: &CpuStorage, xl: &Layout) -> Result<(CpuStorage, Shape)> {
        let (m, k) = xl.shape().dims2()?;
        let n = match self.weights {
            LinearWeights::F32(parts) => {
                let Some(n) = output_width(parts) else {
                    candle_core::bail!("linear: the output width overflows usize")
                };
                if parts
                    .iter()
                    .any(|p| p.b.len().checked_mul(k) != Some(p.w.len()))
                {
                    candle_core::bail!("linear: input {:?} does not fit the weights", xl.shape());
                }
                n
            }
            LinearWeights::Packed(p) => {
                if p.k() != k {
                    candle_core::bail!("linear: input {:?} does not fit the weights", xl.shape());
                }
                p.n()
            }
        };
        let x = contiguous(xs, xl, "linear input")?;
        if m.checked_mul(k) != Some(x.len()) {
            candle_core::bail!("linear: input {:?} has {} values", xl.shape(), x.len());
        }
        let Some(size) = m.checked_mul(n) else {
            candle_core::bail!("linear: output {m}×{n} overflows usize")
        };
        let mut out = vec![0.0f32; size];
        match self.weights {
            LinearWeights::F32(parts) => {
                linear(x, m, k, parts, &mut out, self.threads);
                if self.gelu {
                    gelu_at(&mut out, self.level);
                }
            }
            LinearWeights::Packed(p) => {
                let epilogue = if self.gelu {
                    Epilogue::BiasGelu
                } else {
                    Epilogue::Bias
                };
                p.forward(x, m, &mut out, self.level, self.threads, epilogue)
            }
        }
        Ok((CpuStorage::F32(out), Shape::from((m, n))))
    }
}

/// `(x, residual) → LayerNorm(x + residual)` with the given weights.
pub struct AddLayerNorm<'a> {
    pub gamma: &'a [f32],
    pub beta: &'a [f32],
    pub eps: f32,
}

impl CustomOp2 for AddLayerNorm<'_> {
    fn name(&self) -> &'static str {
        "zerobatch-add-layer-norm"
    }

    fn cpu_fwd(
        &self,
        xs: &CpuStorage,
        xl: &Layout,
        rs: &CpuStorage,
        rl: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let mut x = contiguous(xs, xl, "layer norm input")?.to_vec();
        let r = contiguous(rs, rl, "layer norm residual")?;
        let h = self.gamma.len();
        if h == 0 || x.len() % h != 0 || r.len() % h != 0 || r.is_empty() || self.beta.len() != h {
            candle_core::bail!("layer norm: shapes {:?} {:?}", xl.shape(), rl.shape());
        }
        add_layer_norm(&mut x, r, self.gamma, self.beta, self.eps);
        Ok((CpuStorage::F32(x), xl.shape().clone()))
    }
}

/// Exact GELU, in place.
pub struct Gelu;

impl InplaceOp1 for Gelu {
    fn name(&self) -> &'static str {
        "zerobatch-gelu"
    }

    fn cpu_fwd(&self, s: &mut CpuStorage, l: &Layout) -> Result<()> {
        let Some((start, end)) = l.contiguous_offsets() else {
            candle_core::bail!("gelu: expected a contiguous tensor")
        };
        match s {
            CpuStorage::F32(data) => match data.get_mut(start..end) {
                Some(data) => {
                    gelu(data);
                    Ok(())
                }
                None => candle_core::bail!("gelu: layout {l:?} outside its storage"),
            },
            _ => candle_core::bail!("gelu: expected f32"),
        }
    }
}

/// `qkv[batch·seq × 3h] → [batch·seq × h]`, see [`attention`].
pub struct Attention {
    pub shape: AttentionShape,
    pub threads: usize,
    /// The widest vectors to use.
    pub level: KernelLevel,
}

impl CustomOp1 for Attention {
    fn name(&self) -> &'static str {
        "zerobatch-attention"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let qkv = contiguous(s, l, "attention input")?;
        let shape = &self.shape;
        let Some(sizes) = shape.sizes() else {
            candle_core::bail!("attention: the sizes of {shape:?} overflow usize")
        };
        if qkv.len() != sizes.qkv {
            candle_core::bail!("attention: input {:?} does not fit {shape:?}", l.shape());
        }
        if !shape.lengths_fit() {
            candle_core::bail!("attention: lengths outside 1..=seq_len in {shape:?}");
        }
        let mut out = vec![0.0f32; sizes.out];
        attention_at(qkv, &mut out, shape, self.threads, self.level);
        Ok((
            CpuStorage::F32(out),
            Shape::from((sizes.rows, sizes.hidden)),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lcg(seed: u64, n: usize) -> Vec<f32> {
        let mut s = seed;
        (0..n)
            .map(|_| {
                s = s
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                ((s >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
            })
            .collect()
    }

    #[test]
    fn tanh_gelu_matches_the_f64_formula_on_every_path() {
        let xs: Vec<f32> = (-1200..1200)
            .map(|i| i as f32 / 100.0)
            .chain([0.0, -0.0, 1e-30, -1e-30, 80.0, -80.0])
            .collect();
        let want: Vec<f64> = xs
            .iter()
            .map(|&x| {
                let x = x as f64;
                let c = (2.0 / std::f64::consts::PI).sqrt();
                0.5 * x * (1.0 + (c * (x + 0.044715 * x * x * x)).tanh())
            })
            .collect();
        for level in KernelLevel::ALL {
            let mut got = xs.clone();
            gelu_tanh_at(&mut got, level);
            for ((g, w), x) in got.iter().zip(&want).zip(&xs) {
                let err = (*g as f64 - w).abs();
                assert!(
                    err <= 2e-7 * (1.0 + w.abs()),
                    "gelu_tanh({x}) = {g}, want {w} on {level}"
                );
            }
        }
        let mut nan = [f32::NAN];
        gelu_tanh_at(&mut nan, KernelLevel::detected());
        assert!(nan[0].is_nan());
    }

    #[test]
    fn erf_and_gelu_match_the_reference_values() {
        // erf from a high-precision table.
        for (x, want) in [
            (0.0f32, 0.0f32),
            (0.5, 0.520_499_9),
            (1.0, 0.842_700_8),
            (-2.0, -0.995_322_3),
            (3.5, 0.999_999_3),
        ] {
            assert!(
                (erf(x) - want).abs() < 3e-7,
                "erf({x}) = {} want {want}",
                erf(x)
            );
        }
        let mut xs: Vec<f32> = (-500..500).map(|i| i as f32 / 100.0).collect();
        let want: Vec<f32> = xs
            .iter()
            .map(|&x| {
                let x = x as f64;
                (0.5 * x * (1.0 + libm_erf(x / std::f64::consts::SQRT_2))) as f32
            })
            .collect();
        let inputs = xs.clone();
        gelu(&mut xs);
        for ((got, want), x) in xs.iter().zip(&want).zip(&inputs) {
            assert!(
                (got - want).abs() < 1e-6 * want.abs().max(1.0),
                "gelu({x}) = {got} vs {want}"
            );
        }
    }

    /// erf in f64 by its Taylor series / continued fraction; slow but exact enough for tests.
    fn libm_erf(x: f64) -> f64 {
        if x.abs() > 6.0 {
            return x.signum();
        }
        // Taylor series converges everywhere; 200 terms are plenty for |x| ≤ 6 in f64.
        let mut sum = 0.0;
        let mut term = x;
        let mut n = 0.0;
        while n < 200.0 {
            sum += term / (2.0 * n + 1.0);
            n += 1.0;
            term *= -x * x / n;
        }
        sum * 2.0 / std::f64::consts::PI.sqrt()
    }

    #[test]
    fn exp_is_accurate_over_the_range_softmax_uses() {
        for i in 0..=8700 {
            let x = -(i as f32) / 100.0;
            let got = exp_neg(x);
            let want = (x as f64).exp() as f32;
            assert!(
                (got - want).abs() <= 4e-7 * want.max(f32::MIN_POSITIVE),
                "exp({x}) = {got} want {want}"
            );
        }
    }

    /// Both paths (the in-place dot kernel for few rows, gemm for many), odd sizes, and parts
    /// side by side, against a naive loop.
    #[test]
    fn linear_parts_match_a_naive_matmul_for_small_and_large_batches() {
        for (m, k, n1, n2) in [
            (1, 384, 12, 5),
            (7, 37, 9, 4),
            (SMALL_M, 64, 16, 8),
            (SMALL_M + 5, 40, 13, 6),
        ] {
            let x = lcg(11, m * k);
            let (w1, b1, w2, b2) = (lcg(12, n1 * k), lcg(13, n1), lcg(14, n2 * k), lcg(15, n2));
            let parts = [LinearPart { w: &w1, b: &b1 }, LinearPart { w: &w2, b: &b2 }];
            let total = n1 + n2;
            let mut out = vec![0.0; m * total];
            linear(&x, m, k, &parts, &mut out, 1);
            for i in 0..m {
                for j in 0..total {
                    let (w, b, jj) = if j < n1 {
                        (&w1, &b1, j)
                    } else {
                        (&w2, &b2, j - n1)
                    };
                    let want: f64 = b[jj] as f64
                        + (0..k)
                            .map(|t| x[i * k + t] as f64 * w[jj * k + t] as f64)
                            .sum::<f64>();
                    let got = out[i * total + j] as f64;
                    assert!(
                        (got - want).abs() < 1e-4,
                        "m{m} k{k} ({i},{j}): {got} vs {want}"
                    );
                }
            }
        }
    }

    #[test]
    fn linear_matches_a_naive_matmul_with_bias() {
        let (m, k, n) = (5, 7, 3);
        let x = lcg(1, m * k);
        let w = lcg(2, n * k);
        let b = lcg(3, n);
        for threads in [1, 2] {
            let mut out = vec![0.0; m * n];
            linear(&x, m, k, &[LinearPart { w: &w, b: &b }], &mut out, threads);
            for i in 0..m {
                for j in 0..n {
                    let want: f32 = b[j] + (0..k).map(|t| x[i * k + t] * w[j * k + t]).sum::<f32>();
                    assert!((out[i * n + j] - want).abs() < 1e-5);
                }
            }
        }
    }

    #[test]
    fn layer_norm_with_broadcast_residual() {
        let h = 8;
        let mut x = lcg(4, 3 * h);
        let r = lcg(5, h);
        let g = lcg(6, h);
        let b = lcg(7, h);
        let orig = x.clone();
        add_layer_norm(&mut x, &r, &g, &b, 1e-12);
        for row in 0..3 {
            let v: Vec<f64> = (0..h).map(|i| (orig[row * h + i] + r[i]) as f64).collect();
            let mean = v.iter().sum::<f64>() / h as f64;
            let var = v.iter().map(|a| (a - mean).powi(2)).sum::<f64>() / h as f64;
            for i in 0..h {
                let want = (v[i] - mean) / (var + 1e-12).sqrt() * g[i] as f64 + b[i] as f64;
                assert!((x[row * h + i] as f64 - want).abs() < 1e-5);
            }
        }
    }

    /// Attention of a padded batch equals attention of each sequence alone, and matches a
    /// naive masked implementation.
    #[test]
    fn attention_ignores_padding_and_matches_naive() {
        let (heads, d, seq) = (2, 4, 5);
        let h = heads * d;
        let lengths = vec![5, 2];
        let qkv = lcg(8, 2 * seq * 3 * h);
        let shape = AttentionShape {
            seq_len: seq,
            heads,
            head_dim: d,
            lengths: lengths.clone(),
        };
        let mut out = vec![f32::NAN; 2 * seq * h];
        attention(&qkv, &mut out, &shape, 1);
        let mut parallel = vec![f32::NAN; 2 * seq * h];
        attention(&qkv, &mut parallel, &shape, 2);
        assert_eq!(
            out, parallel,
            "splitting units across threads changes nothing"
        );
        for (b, &len) in lengths.iter().enumerate() {
            for head in 0..heads {
                for i in 0..len {
                    let at = |t: usize, part: usize, c: usize| {
                        qkv[(b * seq + t) * 3 * h + part * h + head * d + c]
                    };
                    let s: Vec<f64> = (0..len)
                        .map(|j| {
                            (0..d)
                                .map(|c| (at(i, 0, c) * at(j, 1, c)) as f64)
                                .sum::<f64>()
                                / (d as f64).sqrt()
                        })
                        .collect();
                    let max = s.iter().cloned().fold(f64::MIN, f64::max);
                    let e: Vec<f64> = s.iter().map(|v| (v - max).exp()).collect();
                    let z: f64 = e.iter().sum();
                    for c in 0..d {
                        let want: f64 = (0..len).map(|j| e[j] / z * at(j, 2, c) as f64).sum();
                        let got = out[(b * seq + i) * h + head * d + c] as f64;
                        assert!(
                            (got - want).abs() < 1e-5,
                            "b{b} h{head} i{i} c{c}: {got} vs {want}"
                        );
                    }
                }
            }
            for i in len..seq {
                assert!(out[(b * seq + i) * h..(b * seq + i + 1) * h]
                    .iter()
                    .all(|v| *v == 0.0));
            }
        }
    }

    // -----------------------------------------------------------------------------------------
    // Edge shapes against naive references (f64), around SMALL_M, the 8-lane and 4-row blocks
    // of the kernels, and the thread splits. Under miri, a few small shapes only.
    // -----------------------------------------------------------------------------------------

    fn edge_rows() -> Vec<usize> {
        if cfg!(miri) {
            vec![1, 2, 3]
        } else {
            vec![1, 2, 3, 4, 5, 6, 7, 23, 24, 25, 31]
        }
    }

    fn edge_widths() -> Vec<usize> {
        if cfg!(miri) {
            vec![1, 3, 9]
        } else {
            vec![1, 3, 4, 5, 63, 64, 65, 129, 130]
        }
    }

    fn close(got: f32, want: f64, tol: f64) -> bool {
        (got as f64 - want).abs() <= tol * want.abs().max(1.0)
    }

    /// Checks `linear` (both kernels) for `x[m×k]` and parts of the given widths.
    fn check_linear(m: usize, k: usize, widths: &[usize], threads: usize, seed: u64) {
        let x = lcg(seed, m * k);
        let ws: Vec<(Vec<f32>, Vec<f32>)> = widths
            .iter()
            .enumerate()
            .map(|(p, &n)| {
                (
                    lcg(seed + 10 + p as u64, n * k),
                    lcg(seed + 20 + p as u64, n),
                )
            })
            .collect();
        let parts: Vec<LinearPart> = ws.iter().map(|(w, b)| LinearPart { w, b }).collect();
        let total: usize = widths.iter().sum();
        let mut want = vec![0.0f64; m * total];
        for i in 0..m {
            let mut col = 0;
            for (w, b) in &ws {
                for j in 0..b.len() {
                    want[i * total + col + j] = b[j] as f64
                        + (0..k)
                            .map(|t| x[i * k + t] as f64 * w[j * k + t] as f64)
                            .sum::<f64>();
                }
                col += b.len();
            }
        }
        for kernel in [MatmulKernel::Auto, MatmulKernel::Gemm] {
            let mut out = vec![f32::NAN; m * total];
            linear_with(&x, m, k, &parts, &mut out, threads, kernel);
            for (e, (got, want)) in out.iter().zip(&want).enumerate() {
                assert!(
                    close(*got, *want, 1e-5 * (k as f64).sqrt().max(1.0)),
                    "{kernel:?} m{m} k{k} widths {widths:?} threads {threads}: [{e}] {got} vs {want}"
                );
            }
        }
    }

    #[test]
    fn linear_edge_shapes_match_a_naive_matmul() {
        let mut case = 0u64;
        for m in edge_rows() {
            for k in edge_widths() {
                for n in edge_widths() {
                    case += 1;
                    let threads = 1 + (case % 5) as usize;
                    check_linear(m, k, &[n], threads, case);
                    check_linear(m, k, &[n, 1 + (n % 7), 4], threads, case);
                }
            }
        }
        // Every thread count where the work is split (≥ 128 columns for the dot kernel).
        let wide = if cfg!(miri) { 9 } else { 130 };
        for threads in 1..=5 {
            for m in [1, 7, SMALL_M, SMALL_M + 1] {
                check_linear(m, 65, &[wide, 129.min(wide)], threads, 7 + threads as u64);
            }
        }
    }

    #[test]
    fn linear_with_nothing_to_compute_leaves_the_biases() {
        let (w, b) = (lcg(1, 3 * 4), lcg(2, 3));
        let (w2, b2) = (lcg(3, 2 * 4), lcg(4, 2));
        let parts = [LinearPart { w: &w, b: &b }, LinearPart { w: &w2, b: &b2 }];
        // No rows (an empty output: no pointer arithmetic on its dangling pointer).
        for kernel in [MatmulKernel::Auto, MatmulKernel::Gemm] {
            linear_with(&[], 0, 4, &parts, &mut [], 2, kernel);
        }
        // No columns at all, and one empty part among others.
        linear(&lcg(5, 2 * 4), 2, 4, &[], &mut [], 1);
        let empty = LinearPart { w: &[], b: &[] };
        let x = lcg(6, 2 * 4);
        let mut out = vec![0.0; 2 * 3];
        linear(&x, 2, 4, &[empty, parts[0], empty], &mut out, 1);
        let mut want = vec![0.0; 2 * 3];
        linear(&x, 2, 4, &parts[..1], &mut want, 1);
        assert_eq!(out, want);
        // k = 0: x·wᵀ is empty, the result is the bias of every row.
        let parts0 = [LinearPart { w: &[], b: &b }, LinearPart { w: &[], b: &b2 }];
        let mut out = vec![f32::NAN; 3 * 5];
        linear(&[], 3, 0, &parts0, &mut out, 1);
        for row in out.chunks_exact(5) {
            assert_eq!(&row[..3], &b[..]);
            assert_eq!(&row[3..], &b2[..]);
        }
    }

    #[test]
    #[should_panic(expected = "linear: input size")]
    fn linear_refuses_sizes_whose_product_wraps() {
        // m × k = 2⁶⁴ wraps to 0 = x.len() with unchecked arithmetic.
        let b = [0.0f32; 1];
        linear(
            &[],
            1 << 32,
            1 << 32,
            &[LinearPart { w: &[], b: &b }],
            &mut [],
            1,
        );
    }

    /// x = LayerNorm(x + residual) in f64.
    fn naive_layer_norm(x: &[f32], r: &[f32], g: &[f32], b: &[f32], eps: f64) -> Vec<f64> {
        let h = g.len();
        let rows = r.len() / h;
        let mut out = Vec::with_capacity(x.len());
        for (i, row) in x.chunks_exact(h).enumerate() {
            let v: Vec<f64> = (0..h)
                .map(|c| row[c] as f64 + r[(i % rows) * h + c] as f64)
                .collect();
            let mean = v.iter().sum::<f64>() / h as f64;
            let var = v.iter().map(|a| (a - mean).powi(2)).sum::<f64>() / h as f64;
            for c in 0..h {
                out.push((v[c] - mean) / (var + eps).sqrt() * g[c] as f64 + b[c] as f64);
            }
        }
        out
    }

    #[test]
    fn add_layer_norm_edge_shapes_match_naive() {
        let mut case = 0u64;
        for rows in edge_rows() {
            for h in edge_widths() {
                case += 1;
                let x = lcg(case, rows * h);
                let (g, b) = (lcg(case + 1, h), lcg(case + 2, h));
                for residual_rows in [rows, 1] {
                    let r = lcg(case + 3, residual_rows * h);
                    let want = naive_layer_norm(&x, &r, &g, &b, 1e-5);
                    let mut got = x.clone();
                    add_layer_norm(&mut got, &r, &g, &b, 1e-5);
                    let mut portable = x.clone();
                    add_layer_norm_generic(&mut portable, &r, &g, &b, 1e-5);
                    for (e, want) in want.iter().enumerate() {
                        for (path, got) in [("dispatched", got[e]), ("portable", portable[e])] {
                            assert!(
                                close(got, *want, 1e-4),
                                "{path} rows {rows} h {h} residual rows {residual_rows}: \
                                 [{e}] {got} vs {want}"
                            );
                        }
                    }
                }
            }
        }
        // No rows: nothing to do, whatever the residual.
        add_layer_norm(&mut [], &[], &[1.0], &[0.0], 1e-5);
    }

    #[test]
    fn gelu_edge_lengths_match_the_reference() {
        let lengths: Vec<usize> = if cfg!(miri) {
            vec![0, 1, 9]
        } else {
            let mut v: Vec<usize> = (0..=9).collect();
            v.extend([15, 16, 17, 31, 32, 33, 63, 64, 65, 129, 130]);
            v
        };
        for len in lengths {
            let x: Vec<f32> = lcg(len as u64, len).iter().map(|v| v * 6.0).collect();
            let mut got = x.clone();
            gelu(&mut got);
            let mut portable = x.clone();
            gelu_generic(&mut portable);
            for i in 0..len {
                let v = x[i] as f64;
                let want = 0.5 * v * (1.0 + libm_erf(v / std::f64::consts::SQRT_2));
                assert!(
                    close(got[i], want, 1e-6),
                    "len {len} [{i}] {} vs {want}",
                    got[i]
                );
                assert!(close(portable[i], want, 1e-6), "portable len {len} [{i}]");
            }
        }
    }

    /// Masked multi-head attention in f64, padding rows zero.
    fn naive_attention(qkv: &[f32], s: &AttentionShape) -> Vec<f64> {
        let (heads, d, seq) = (s.heads, s.head_dim, s.seq_len);
        let h = heads * d;
        let mut out = vec![0.0f64; s.lengths.len() * seq * h];
        for (b, &len) in s.lengths.iter().enumerate() {
            for head in 0..heads {
                let at = |t: usize, part: usize, c: usize| {
                    qkv[(b * seq + t) * 3 * h + part * h + head * d + c] as f64
                };
                for i in 0..len {
                    let scores: Vec<f64> = (0..len)
                        .map(|j| {
                            (0..d).map(|c| at(i, 0, c) * at(j, 1, c)).sum::<f64>()
                                / (d as f64).sqrt()
                        })
                        .collect();
                    let max = scores.iter().cloned().fold(f64::MIN, f64::max);
                    let e: Vec<f64> = scores.iter().map(|v| (v - max).exp()).collect();
                    let z: f64 = e.iter().sum();
                    for c in 0..d {
                        out[(b * seq + i) * h + head * d + c] =
                            (0..len).map(|j| e[j] / z * at(j, 2, c)).sum();
                    }
                }
            }
        }
        out
    }

    #[test]
    fn attention_edge_shapes_match_naive() {
        let (seqs, dims, heads_list): (Vec<usize>, Vec<usize>, Vec<usize>) = if cfg!(miri) {
            (vec![1, 3], vec![1, 3], vec![1, 2])
        } else {
            (
                vec![1, 2, 5, 7, 24, 25, 31, 33, 70],
                vec![1, 3, 4, 5, 63, 64, 65, 129, 130],
                vec![1, 3],
            )
        };
        let mut case = 0u64;
        for &seq in &seqs {
            for &d in &dims {
                for &heads in &heads_list {
                    case += 1;
                    // Full, length 1, and a middle length: padding at several places.
                    let lengths = vec![seq, 1, seq.div_ceil(2)];
                    let shape = AttentionShape {
                        seq_len: seq,
                        heads,
                        head_dim: d,
                        lengths,
                    };
                    let h = heads * d;
                    let rows = 3 * seq;
                    let qkv: Vec<f32> = lcg(case, rows * 3 * h).iter().map(|v| v * 2.0).collect();
                    let want = naive_attention(&qkv, &shape);
                    let mut single = vec![f32::NAN; rows * h];
                    attention(&qkv, &mut single, &shape, 1);
                    let threads = 1 + (case % 5) as usize;
                    let mut split = vec![f32::NAN; rows * h];
                    attention(&qkv, &mut split, &shape, threads);
                    assert_eq!(
                        single, split,
                        "seq {seq} d {d} heads {heads} threads {threads}"
                    );
                    let mut portable = vec![f32::NAN; rows * h];
                    // SAFETY: the shape's sizes fit, its lengths are within 1..=seq, and the
                    // buffers have exactly the sizes it implies; one call writes all units.
                    unsafe { attention_generic(&qkv, portable.as_mut_ptr(), &shape, 0..3 * heads) };
                    let mut avx2 = vec![f32::NAN; rows * h];
                    attention_at(&qkv, &mut avx2, &shape, 1, KernelLevel::Avx2);
                    for (path, got) in [
                        ("dispatched", &single),
                        ("portable", &portable),
                        ("avx2", &avx2),
                    ] {
                        for (e, want) in want.iter().enumerate() {
                            let ok = if e % (seq * h) / h >= shape.lengths[e / (seq * h)] {
                                // Padding rows: zero from `attention`, untouched by the units.
                                path == "portable" || got[e] == 0.0
                            } else {
                                close(got[e], *want, 1e-5)
                            };
                            assert!(
                                ok,
                                "{path} seq {seq} d {d} heads {heads}: [{e}] {} vs {want}",
                                got[e]
                            );
                        }
                    }
                }
            }
        }
        // Every thread count on one shape with more units than threads.
        let shape = AttentionShape {
            seq_len: 6,
            heads: 3,
            head_dim: 5,
            lengths: vec![6, 2, 4],
        };
        let qkv = lcg(99, 3 * 6 * 3 * 15);
        let mut first = vec![0.0; 3 * 6 * 15];
        attention(&qkv, &mut first, &shape, 1);
        for threads in 2..=5 {
            let mut out = vec![f32::NAN; 3 * 6 * 15];
            attention(&qkv, &mut out, &shape, threads);
            assert_eq!(out, first, "threads {threads}");
        }
    }

    #[test]
    fn exp_keeps_nan() {
        assert!(exp_neg(f32::NAN).is_nan());
        assert_eq!(exp_neg(-1000.0), exp_neg(-87.0));
        assert_eq!(exp_neg(0.0), 1.0);
    }

    /// A NaN (or infinite) score reaches the output as NaN instead of becoming a tiny weight;
    /// other sequences of the batch are untouched.
    #[test]
    fn attention_propagates_nan_and_infinite_scores() {
        let (heads, d, seq) = (2, 4, 3);
        let h = heads * d;
        let shape = AttentionShape {
            seq_len: seq,
            heads,
            head_dim: d,
            lengths: vec![3, 3],
        };
        for bad in [f32::NAN, f32::INFINITY] {
            let mut qkv = lcg(5, 2 * seq * 3 * h);
            // Key 1 of sequence 0, head 0, dimension 0 is bad and every query of that head
            // has a positive dimension 0: each of their rows sees a NaN or +∞ score.
            qkv[3 * h + h] = bad;
            for i in 0..seq {
                qkv[i * 3 * h] = 0.5;
            }
            for threads in [1, 2] {
                let mut out = vec![0.0; 2 * seq * h];
                attention(&qkv, &mut out, &shape, threads);
                for i in 0..seq {
                    let row = &out[i * h..(i + 1) * h];
                    assert!(
                        row[..d].iter().all(|v| v.is_nan()),
                        "{bad}: row {i} {row:?}"
                    );
                    assert!(
                        row[d..].iter().all(|v| v.is_finite()),
                        "{bad}: row {i} {row:?}"
                    );
                }
                assert!(out[seq * h..].iter().all(|v| v.is_finite()));
            }
        }
    }

    #[test]
    fn gelu_and_layer_norm_propagate_nan() {
        let mut x = vec![0.5, f32::NAN, -1.0];
        gelu(&mut x);
        assert!(x[1].is_nan() && x[0].is_finite() && x[2].is_finite());
        let mut x = vec![1.0, f32::NAN, 2.0, 3.0];
        add_layer_norm(&mut x, &[0.0, 0.0], &[1.0, 1.0], &[0.0, 0.0], 1e-5);
        assert!(x[0].is_nan() && x[1].is_nan() && x[2].is_finite());
    }

    #[test]
    #[should_panic(expected = "attention: sizes overflow")]
    fn attention_refuses_sizes_that_overflow() {
        // heads × head_dim = 2⁶⁴ + 2 wraps to 2 with unchecked arithmetic.
        let shape = AttentionShape {
            seq_len: 1,
            heads: (1 << 63) + 1,
            head_dim: 2,
            lengths: vec![1],
        };
        attention(&[0.0; 6], &mut [0.0; 2], &shape, 1);
    }

    /// The candle ops return errors for sizes the kernels would refuse, never write.
    #[test]
    fn the_candle_ops_return_errors_for_bad_sizes() {
        use candle_core::{Device, Tensor};
        let qkv = Tensor::from_vec(vec![0.0f32; 6], (1, 6), &Device::Cpu).unwrap();
        for (heads, head_dim, seq_len, lengths) in [
            ((1usize << 63) + 1, 2, 1, vec![1]),
            (1, 2, usize::MAX, vec![1, 1]),
            (1, 2, 1, vec![2]),
            (1, 2, 1, vec![0]),
            (1, 4, 1, vec![1]),
        ] {
            let op = Attention {
                shape: AttentionShape {
                    seq_len,
                    heads,
                    head_dim,
                    lengths,
                },
                threads: 1,
                level: KernelLevel::detected(),
            };
            assert!(qkv.apply_op1_no_bwd(&op).is_err(), "{:?}", op.shape);
        }
        let x = Tensor::from_vec(vec![1.0f32; 6], (2, 3), &Device::Cpu).unwrap();
        let (w, b) = (vec![0.5f32; 8], vec![0.0f32; 2]);
        let parts = [LinearPart { w: &w, b: &b }];
        let op = Linear {
            weights: LinearWeights::F32(&parts),
            threads: 1,
            gelu: false,
            level: KernelLevel::detected(),
        };
        assert!(
            x.apply_op1_no_bwd(&op).is_err(),
            "weights for k = 4, input k = 3"
        );
        let w = vec![0.5f32; 6];
        let parts = [LinearPart { w: &w, b: &b }];
        let op = Linear {
            weights: LinearWeights::F32(&parts),
            threads: 1,
            gelu: false,
            level: KernelLevel::detected(),
        };
        let y = x.apply_op1_no_bwd(&op).unwrap();
        assert_eq!(y.to_vec2::<f32>().unwrap(), vec![vec![1.5, 1.5]; 2]);
        for dtype in [crate::kernels::Dtype::Bf16, crate::kernels::Dtype::Int8] {
            let packed = PackedLinear::pack(dtype, &w, &b, 3).unwrap().unwrap();
            let op = Linear {
                weights: LinearWeights::Packed(&packed),
                threads: 1,
                gelu: false,
                level: KernelLevel::detected(),
            };
            let y = x.apply_op1_no_bwd(&op).unwrap();
            assert_eq!(
                y.to_vec2::<f32>().unwrap(),
                vec![vec![1.5, 1.5]; 2],
                "{dtype}"
            );
            let wrong = Tensor::from_vec(vec![1.0f32; 8], (2, 4), &Device::Cpu).unwrap();
            assert!(wrong.apply_op1_no_bwd(&op).is_err(), "{dtype}: input k = 4");
        }
        let norm = AddLayerNorm {
            gamma: &[1.0; 4],
            beta: &[0.0; 4],
            eps: 1e-5,
        };
        assert!(
            x.apply_op2_no_bwd(&x, &norm).is_err(),
            "6 values, gamma of 4"
        );
        let norm = AddLayerNorm {
            gamma: &[1.0; 3],
            beta: &[0.0; 2],
            eps: 1e-5,
        };
        assert!(
            x.apply_op2_no_bwd(&x, &norm).is_err(),
            "gamma of 3, beta of 2"
        );
    }
}
