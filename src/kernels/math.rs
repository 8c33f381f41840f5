//! Scalar math written to vectorise: exp for non-positive arguments, erf, tanh, and the
//! lane-split reductions (sum, NaN-preserving max) that GELU, LayerNorm and softmax use.
//!
//! Why not `f32::exp` and friends: they call libm one value at a time, which LLVM cannot
//! vectorise; these are polynomials and bit tricks that it turns into SIMD code in each
//! compiled copy of the callers (see `dispatch.rs`). Accuracy is stated per function and
//! tested below.

/// Lanes of the reductions below: independent partial results, so that the loops vectorise
/// (a single running f32 sum is a serial dependency LLVM must keep in order).
const LANES: usize = 16;

/// `Σ f(v)` over lanes of partial sums.
#[inline(always)]
pub(super) fn lane_sum(v: &[f32], f: impl Fn(f32) -> f32) -> f32 {
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
pub(super) fn max_or_nan(v: &[f32]) -> f32 {
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

/// range reduction and a degree-5 minimax polynomial), relative error about 1e-7. NaN stays
/// NaN (softmax relies on it to report a corrupt row rather than hide it).
#[inline(always)]
pub(super) fn exp_neg(x: f32) -> f32 {
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

/// [`exp_neg`] on 16 lanes with AVX-512 intrinsics (`vscalefps` for `2^n`), same
/// polynomial and accuracy; NaN stays NaN.
///
/// # Safety
///
/// The CPU has AVX-512F.
#[cfg(target_arch = "x86_64")]
#[inline]
#[target_feature(enable = "avx512f")]
pub(super) fn exp_neg_avx512(x: std::arch::x86_64::__m512) -> std::arch::x86_64::__m512 {
    use std::arch::x86_64::*;
    let set = _mm512_set1_ps;
    // `max(-87, x)` returns a NaN x (the second operand).
    let x = _mm512_max_ps(set(-87.0), x);
    let n = _mm512_roundscale_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(
        _mm512_mul_ps(x, set(std::f32::consts::LOG2_E)),
    );
    let r = _mm512_fmadd_ps(
        n,
        set(2.121_944_4e-4),
        _mm512_fnmadd_ps(n, set(0.693_359_4), x),
    );
    let mut p = _mm512_fmadd_ps(r, set(1.987_569_1e-4), set(1.398_199_9e-3));
    p = _mm512_fmadd_ps(p, r, set(8.333_452e-3));
    p = _mm512_fmadd_ps(p, r, set(4.166_579_6e-2));
    p = _mm512_fmadd_ps(p, r, set(1.666_666_5e-1));
    p = _mm512_fmadd_ps(p, r, set(0.5));
    let e = _mm512_add_ps(_mm512_fmadd_ps(p, _mm512_mul_ps(r, r), r), set(1.0));
    _mm512_scalef_ps(e, n)
}

/// erf(x) (Abramowitz & Stegun 7.1.26, |error| ≤ 1.5e-7).
#[inline(always)]
pub(super) fn erf(x: f32) -> f32 {
    let a = x.abs();
    let t = 1.0 / (1.0 + 0.327_591_1 * a);
    let poly = t
        * (0.254_829_6
            + t * (-0.284_496_74 + t * (1.421_413_8 + t * (-1.453_152_1 + t * 1.061_405_4))));
    let y = 1.0 - poly * exp_neg(-a * a);
    y.copysign(x)
}

/// restored.
#[inline(always)]
pub(super) fn tanh(x: f32) -> f32 {
    let e = exp_neg(-2.0 * x.abs());
    ((1.0 - e) / (1.0 + e)).copysign(x)
}

#[cfg(test)]
mod tests {
    use super::*;

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

    #[test]
    fn exp_keeps_nan() {
        assert!(exp_neg(f32::NAN).is_nan());
        assert_eq!(exp_neg(-1000.0), exp_neg(-87.0));
        assert_eq!(exp_neg(0.0), 1.0);
    }
}
