//! Tests of the int8 linear layers (`int8.rs`): every kernel path against the naive
//! arithmetic, the quantization error, Q8_0 blocks and row-by-row quantization against
//! quantizing the whole weight, bad shapes refused.

use super::*;
use crate::kernels::test_util::{levels, test_values as values};

/// The naive reference: quantize both sides per block of 32 exactly as documented,
/// multiply in i64, scale in the documented order.
fn naive(x: &[f32], m: usize, w: &[f32], b: &[f32], k: usize) -> Vec<f32> {
    let n = b.len();
    let quant = |v: &[f32]| {
        let amax = v.iter().fold(0.0f32, |a, x| a.max(x.abs()));
        let s = amax / 127.0;
        let q: Vec<i64> = v
            .iter()
            .map(|x| {
                if amax == 0.0 {
                    0
                } else {
                    (x * (127.0 / amax)).round_ties_even() as i64
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
    // Shapes around every edge: k not a multiple of 4, n not a multiple of 16, rows not a
    // multiple of 6 or 4, single rows and columns, several chunks.
    for (m, n, k) in [
        (1, 1, 1),
        (1, 16, 4),
        (3, 17, 5),
        (7, 33, 13),
        (13, 64, 64),
        (6, 384, 384),
        (100, 40, 37),
        (200, 96, 24),
        (5, 48, 100),
        (8, 33, 96),
        (1000, 20, 10),
    ] {
        let x = values(1 + m as u64, m * k);
        let w = values(7 + n as u64, n * k);
        let b = values(3, n);
        let layer = Int8Linear::quantize(&w, &b, k).unwrap();
        let want = naive(&x, m, &w, &b, k);
        for level in levels() {
            for threads in [1, 2] {
                let mut got = vec![f32::NAN; m * n];
                layer.forward(&x, m, &mut got, level, threads, Epilogue::Bias);
                assert_eq!(got, want, "{m}×{n}×{k} on {level} with {threads} threads");
            }
        }
    }
}

#[test]
fn quantization_error_is_small_relative_to_the_f32_product() {
    let (m, n, k) = (8, 64, 384);
    let x = values(11, m * k);
    let w = values(12, n * k);
    let b = vec![0.0; n];
    let layer = Int8Linear::quantize(&w, &b, k).unwrap();
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
    let rel = (err2 / ref2).sqrt();
    assert!(rel < 0.02, "relative error {rel}");
}

#[test]
fn zero_rows_and_non_finite_values() {
    let (n, k) = (16, 8);
    let w = values(5, n * k);
    let layer = Int8Linear::quantize(&w, &vec![0.5; n], k).unwrap();
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
    let layer = Int8Linear::quantize(&bad, &vec![0.0; n], k).unwrap();
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
fn q8_0_blocks_load_exactly_as_quantizing_their_values_does() {
    let (n, k) = (37, 64);
    // Q8_0 blocks as ggml writes them: d = amax / 127 in f16, q = round(x / d).
    let w = values(21, n * k);
    let mut bytes = Vec::new();
    let mut dequantized = Vec::new();
    for block in w.chunks(BLOCK) {
        let amax = block.iter().fold(0.0f32, |a, x| a.max(x.abs()));
        let d = half::f16::from_f32(amax / 127.0);
        bytes.extend_from_slice(&d.to_le_bytes());
        for &x in block {
            let q = (x / d.to_f32()).round().clamp(-127.0, 127.0) as i8;
            bytes.push(q as u8);
            dequantized.push(q as f32 * d.to_f32());
        }
    }
    let b = values(4, n);
    let from_blocks = Int8Linear::from_q8_0(&bytes, &b, k).unwrap();
    let x = values(8, 3 * k);
    let mut got = vec![0.0; 3 * n];
    from_blocks.forward(&x, 3, &mut got, KernelLevel::detected(), 1, Epilogue::Bias);
    // The same weights given as f32: the int8 kernel's arithmetic on the same values.
    let mut want = vec![0.0; 3 * n];
    let naive_want = naive(&x, 3, &dequantized, &b, k);
    want.copy_from_slice(&naive_want);
    let worst = got
        .iter()
        .zip(&want)
        .map(|(a, b)| (a - b).abs())
        .fold(0.0, f32::max);
    assert!(worst < 1e-4, "{worst}");
    assert!(Int8Linear::from_q8_0(&bytes[1..], &b, k).is_err());
    // Each weight row reads back as the block dequantizes (q · d in f32), bit for bit: a
    // tied embedding table is read from its LM head.
    for c in 0..n {
        let row = from_blocks.weight_row(c).unwrap();
        assert_eq!(row, dequantized[c * k..][..k], "row {c}");
    }
    assert_eq!(from_blocks.weight_row(n), None);
}

/// A layer quantized a row at a time holds the very same bytes as one quantized whole,
/// however the panels are spread over threads, call after call.
#[test]
fn quantizing_row_by_row_gives_the_same_layer() {
    for (n, k) in [(1, 32), (37, 100), (70, 512)] {
        let w = values(21 + n as u64, n * k);
        let b = values(5, n);
        let whole = Int8Linear::quantize(&w, &b, k).unwrap();
        for _ in 0..2 {
            let rows = Int8Linear::quantize_rows(&b, k, |c| w[c * k..][..k].to_vec()).unwrap();
            assert_eq!(rows.weights, whole.weights, "{n}×{k}");
            assert_eq!(rows.scales, whole.scales, "{n}×{k}");
            assert_eq!(rows.offsets, whole.offsets, "{n}×{k}");
            assert_eq!(rows.bias, whole.bias, "{n}×{k}");
        }
    }
    assert!(Int8Linear::quantize_rows(&[0.0], 0, |_| Vec::new()).is_err());
}

#[test]
fn bad_shapes_are_errors() {
    assert!(Int8Linear::quantize(&[1.0; 6], &[0.0; 2], 4).is_err());
    assert!(Int8Linear::quantize(&[], &[], 0).is_err());
}

#[test]
fn every_level_quantizes_activations_to_the_same_bytes_and_scales() {
    // Widths around the block of 32 and its halves; rows holding a zero block, a NaN, an
    // infinity, -0.0 and values that land on rounding ties (x · 127 / max = n + 0.5).
    for k in [1usize, 5, 16, 17, 31, 32, 33, 48, 64, 100, 1024] {
        let blocks = k.div_ceil(BLOCK);
        let kpad = blocks * BLOCK;
        let m = 4;
        let mut x = values(k as u64, m * k);
        x[..k.min(32)].fill(0.0);
        x[k] = -0.0;
        x[k + k / 2] = f32::NAN;
        x[2 * k + k - 1] = f32::INFINITY;
        for (i, v) in x[3 * k..].iter_mut().enumerate() {
            *v = if i % 32 == 0 {
                127.0
            } else {
                (i % 7) as f32 + 0.5
            };
        }
        for vnni in [false, true] {
            let run = |level: KernelLevel| {
                let mut xq = vec![0i8; m * kpad];
                let mut scales = vec![0.0f32; m * blocks];
                quantize_activations(&x, k, kpad, vnni, &mut xq, &mut scales, level);
                (xq, scales.iter().map(|s| s.to_bits()).collect::<Vec<_>>())
            };
            let want = run(KernelLevel::Scalar);
            for level in levels() {
                assert_eq!(run(level), want, "k {k}, vnni {vnni}, {level}");
            }
        }
    }
}
