//! Tests of the int16 linear layers (`int16.rs`): every kernel path against the naive
//! arithmetic, the quantization error, the largest magnitudes (no i32 overflow), non-finite
//! inputs, bad shapes refused.

use super::*;
use crate::kernels::test_util::{levels, test_values as values};

/// The naive reference: quantize both sides per block of 64 exactly as documented,
/// multiply in i64, scale in the documented order.
fn naive(x: &[f32], m: usize, w: &[f32], b: &[f32], k: usize) -> Vec<f32> {
    let n = b.len();
    let quant = |v: &[f32]| {
        let amax = v.iter().fold(0.0f32, |a, x| a.max(x.abs()));
        let s = amax / QMAX as f32;
        let q: Vec<i64> = v
            .iter()
            .map(|x| {
                if amax == 0.0 {
                    0
                } else {
                    (x * (QMAX as f32 / amax)).round_ties_even() as i64
                }
            })
            .collect();
        (q, s)
    };
    let mut out = vec![0.0; m * n];
    for i in 0..m {
        let blocks: Vec<_> = x[i * k..][..k].chunks(BLOCK).map(quant).collect();
        for c in 0..n {
            let mut sum = 0.0f32;
            let w_blocks = w[c * k..][..k].chunks(BLOCK).map(quant);
            for ((qx, sx), (qw, sw)) in blocks.iter().zip(w_blocks) {
                let dot: i64 = qx.iter().zip(&qw).map(|(a, b)| a * b).sum();
                sum = (dot as f32).mul_add(sx * sw, sum);
            }
            out[i * n + c] = sum + b[c];
        }
    }
    out
}

#[test]
fn every_path_matches_the_naive_reference_exactly() {
    // Shapes around every edge: k odd and not a multiple of 64, n not a multiple of 16 or of
    // a group's 48 columns, rows not a multiple of 8 or 4, single rows and columns, several
    // row chunks and blocks.
    for (m, n, k) in [
        (1, 1, 1),
        (1, 16, 2),
        (3, 17, 5),
        (7, 33, 13),
        (13, 64, 64),
        (6, 384, 384),
        (100, 40, 37),
        (200, 96, 24),
        (5, 48, 100),
        (1000, 20, 10),
        (9, 49, 129),
        (17, 112, 64),
        (8, 96, 65),
    ] {
        let x = values(1 + m as u64, m * k);
        let w = values(7 + n as u64, n * k);
        let b = values(3, n);
        let want = naive(&x, m, &w, &b, k);
        // Every layout (a CPU's own, and each group width) on every path.
        for group in 1..=GROUP {
            let layer = Int16Linear::quantize_in_groups(&w, &b, k, group).unwrap();
            for level in levels() {
                for threads in [1, 2] {
                    let mut got = vec![f32::NAN; m * n];
                    layer.forward(&x, m, &mut got, level, threads, Epilogue::Bias);
                    assert_eq!(
                        got, want,
                        "{m}×{n}×{k} in groups of {group} on {level} with {threads} threads"
                    );
                }
            }
        }
    }
}

/// Every value at the largest magnitude with the same sign on both sides: a block's sum is
/// 64 · 5792², the most it can be, and must not wrap.
#[test]
fn the_largest_block_sum_does_not_overflow() {
    let (m, n, k) = (5, 17, 96);
    for sign in [1.0f32, -1.0] {
        let x = vec![3.0 * sign; m * k];
        let w = vec![0.5f32; n * k];
        let layer = Int16Linear::quantize(&w, &vec![0.0; n], k).unwrap();
        for level in levels() {
            let mut got = vec![0.0; m * n];
            layer.forward(&x, m, &mut got, level, 1, Epilogue::Bias);
            for v in got {
                assert!((v - 1.5 * sign * k as f32).abs() < 1e-3, "{v} on {level}");
            }
        }
    }
}

#[test]
fn quantization_error_is_far_below_bf16s() {
    let (m, n, k) = (8, 64, 384);
    let x = values(11, m * k);
    let w = values(12, n * k);
    let b = vec![0.0; n];
    let layer = Int16Linear::quantize(&w, &b, k).unwrap();
    let mut got = vec![0.0; m * n];
    layer.forward(&x, m, &mut got, KernelLevel::detected(), 1, Epilogue::Bias);
    let mut err2 = 0.0f64;
    let mut ref2 = 0.0f64;
    for i in 0..m {
        for c in 0..n {
            let exact: f64 = (0..k)
                .map(|t| x[i * k + t] as f64 * w[c * k + t] as f64)
                .sum();
            err2 += (got[i * n + c] as f64 - exact).powi(2);
            ref2 += exact.powi(2);
        }
    }
    // bf16 rounding of both sides gives ~3e-3 on such products; blocks of ±5792 ~1e-4.
    let rel = (err2 / ref2).sqrt();
    assert!(rel < 3e-4, "relative error {rel}");
}

#[test]
fn zero_rows_and_non_finite_values() {
    let (n, k) = (16, 8);
    let w = values(5, n * k);
    let layer = Int16Linear::quantize(&w, &vec![0.5; n], k).unwrap();
    for level in levels() {
        // An all-zero row gives the bias; a row holding NaN or infinity gives NaN, not a
        // silently finite vector.
        let mut x = vec![0.0f32; 3 * k];
        x[k + 2] = f32::NAN;
        x[2 * k] = f32::INFINITY;
        let mut out = vec![0.0; 3 * n];
        layer.forward(&x, 3, &mut out, level, 1, Epilogue::Bias);
        assert!(out[..n].iter().all(|&v| v == 0.5), "{level}");
        assert!(out[n..].iter().all(|v| v.is_nan()), "{level}");
    }
    let mut bad = w.clone();
    bad[3] = f32::NAN;
    let layer = Int16Linear::quantize(&bad, &vec![0.0; n], k).unwrap();
    let mut out = vec![0.0; n];
    layer.forward(
        &values(9, k),
        1,
        &mut out,
        KernelLevel::Scalar,
        1,
        Epilogue::Bias,
    );
    assert!(out[0].is_nan() && out[1..].iter().all(|v| v.is_finite()));
}

#[test]
fn an_empty_batch_writes_nothing_and_bad_shapes_are_errors() {
    let layer = Int16Linear::quantize(&values(1, 4 * 8), &[0.0; 4], 8).unwrap();
    let mut out: Vec<f32> = Vec::new();
    layer.forward(&[], 0, &mut out, KernelLevel::detected(), 2, Epilogue::Bias);
    assert!(Int16Linear::quantize(&[1.0; 6], &[0.0; 2], 4).is_err());
    assert!(Int16Linear::quantize(&[], &[], 0).is_err());
}

#[test]
fn every_level_quantizes_activations_to_the_same_values_and_scales() {
    // Widths around the block of 64 and its vectors of 16; rows holding a zero block, a NaN, an infinity, -0.0 and
    // values that land on rounding ties.
    for k in [
        1usize, 5, 16, 17, 31, 32, 33, 48, 63, 64, 65, 100, 128, 1024,
    ] {
        let blocks = k.div_ceil(BLOCK);
        let kpad = blocks * BLOCK;
        let m = 4;
        let mut x = values(k as u64, m * k);
        x[..k.min(BLOCK)].fill(0.0);
        x[k] = -0.0;
        x[k + k / 2] = f32::NAN;
        x[2 * k + k - 1] = f32::INFINITY;
        for (i, v) in x[3 * k..].iter_mut().enumerate() {
            *v = if i % BLOCK == 0 {
                QMAX as f32
            } else {
                (i % 7) as f32 + 0.5
            };
        }
        let run = |level: KernelLevel| {
            let mut xq = vec![0i16; m * kpad];
            let mut scales = vec![0.0f32; m * blocks];
            quantize_activations(&x, k, kpad, &mut xq, &mut scales, level);
            (xq, scales.iter().map(|s| s.to_bits()).collect::<Vec<_>>())
        };
        let want = run(KernelLevel::Scalar);
        for level in levels() {
            assert_eq!(run(level), want, "k {k}, {level}");
        }
    }
}
