//! Inputs and comparisons the kernels' tests share.

use super::KernelLevel;

/// Every kernel level this CPU runs, from the portable one up: the paths a kernel's results
/// must agree on.
pub(crate) fn levels() -> Vec<KernelLevel> {
    KernelLevel::ALL
        .into_iter()
        .filter(|&l| l <= KernelLevel::detected())
        .collect()
}

/// A deterministic pseudo-random sequence in [-1, 1) (xorshift).
pub(crate) fn test_values(seed: u64, len: usize) -> Vec<f32> {
    let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            (s >> 40) as f32 / (1u64 << 23) as f32 - 1.0
        })
        .collect()
}

/// Another deterministic pseudo-random sequence in [-1, 1) (a linear congruential generator),
/// the one the f32 kernels' tests were written with.
pub(crate) fn lcg(seed: u64, n: usize) -> Vec<f32> {
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

/// `got` is within `tol` of `want`, relative for |want| > 1, absolute below.
pub(crate) fn close(got: f32, want: f64, tol: f64) -> bool {
    (got as f64 - want).abs() <= tol * want.abs().max(1.0)
}

/// Row counts around the kernels' blocks (3 rows, `SMALL_M` = 24); a few under miri.
pub(crate) fn edge_rows() -> Vec<usize> {
    if cfg!(miri) {
        vec![1, 2, 3]
    } else {
        vec![1, 2, 3, 4, 5, 6, 7, 23, 24, 25, 31]
    }
}

/// Widths around the kernels' 4-row blocks, 8- and 16-lane vectors and thread splits; a few
/// under miri.
pub(crate) fn edge_widths() -> Vec<usize> {
    if cfg!(miri) {
        vec![1, 3, 9]
    } else {
        vec![1, 3, 4, 5, 63, 64, 65, 129, 130]
    }
}

/// The relative error (root of summed squares over the exact result's) of `got` (`m×n`)
/// against `x · wᵀ + b` computed in f64 (`x` `m×k`, `w` `n×k`).
pub(crate) fn relative_error(got: &[f32], x: &[f32], w: &[f32], b: &[f32], k: usize) -> f64 {
    let n = b.len();
    let (mut err, mut norm) = (0.0f64, 0.0f64);
    for (i, row) in got.chunks_exact(n).enumerate() {
        for (c, &g) in row.iter().enumerate() {
            let exact: f64 = (0..k)
                .map(|t| x[i * k + t] as f64 * w[c * k + t] as f64)
                .sum::<f64>()
                + b[c] as f64;
            err += (g as f64 - exact).powi(2);
            norm += exact.powi(2);
        }
    }
    (err / norm).sqrt()
}
