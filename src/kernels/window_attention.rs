//! Bidirectional attention within a window of positions (ModernBERT's local layers): query
//! `i` of a sequence attends to the keys `j` with `|i − j| ≤ half_window` only, in both
//! directions, over the fused QKV rows the encoder's attention also reads (q, k and v side by
//! side, heads contiguous inside each).
//!
//! Why its own loop: [`super::attention`] attends every query to the whole sequence (its key
//! tiles are shared by all the queries of a unit) and [`super::causal_attention`] only looks
//! back. Here each query row has its own range of keys, at most `2·half_window + 1` of them,
//! so a row is a plain pass: scores, softmax, weighted sum of values. One body compiled per
//! instruction set (`dispatch.rs`); the dot products and the weighted sums run over lanes of
//! partial sums so that LLVM vectorises them. All math is f32.

use super::dispatch::{dispatch512, variant, Variant};
use super::math::{exp_neg, lane_sum, max_or_nan};
use super::KernelLevel;

/// The shape of one call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WindowShape {
    pub heads: usize,
    pub head_dim: usize,
    /// A query sees the keys at most this many positions before or after it.
    pub half_window: usize,
}

/// Partial sums of a dot product (so that it vectorises).
const LANES: usize = 16;

#[inline(always)]
fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0.0f32; LANES];
    let (ca, cb) = (a.chunks_exact(LANES), b.chunks_exact(LANES));
    let tail: f32 = ca
        .remainder()
        .iter()
        .zip(cb.remainder())
        .map(|(x, y)| x * y)
        .sum();
    for (x, y) in ca.zip(cb) {
        for ((s, x), y) in acc.iter_mut().zip(x).zip(y) {
            *s += x * y;
        }
    }
    acc.iter().sum::<f32>() + tail
}

dispatch512!(rows_generic, rows_avx2, rows_avx512, (s: &WindowShape, qkv: &[f32], start: usize, out: &mut [f32], scores: &mut [f32]) {
    let (d, half) = (s.head_dim, s.half_window);
    let h = s.heads * d;
    let stride = 3 * h;
    let len = qkv.len() / stride;
    let scale = 1.0 / (d as f32).sqrt();
    for (r, orow) in out.chunks_exact_mut(h).enumerate() {
        let i = start + r;
        let (lo, hi) = (i.saturating_sub(half), (i + half).min(len - 1));
        let keys = lo..hi + 1;
        let q = &qkv[i * stride..][..h];
        for head in 0..s.heads {
            let off = head * d;
            let qh = &q[off..off + d];
            let sc = &mut scores[..keys.len()];
            for (j, score) in keys.clone().zip(sc.iter_mut()) {
                *score = dot(qh, &qkv[j * stride + h + off..][..d]) * scale;
            }
            // A NaN score makes the whole row NaN (max_or_nan), which the model reports.
            let max = max_or_nan(sc);
            for score in sc.iter_mut() {
                *score = exp_neg(*score - max);
            }
            let inv = 1.0 / lane_sum(sc, |p| p);
            let o = &mut orow[off..off + d];
            o.fill(0.0);
            for (j, &p) in keys.clone().zip(sc.iter()) {
                for (a, v) in o.iter_mut().zip(&qkv[j * stride + 2 * h + off..][..d]) {
                    *a += p * v;
                }
            }
            for a in o.iter_mut() {
                *a *= inv;
            }
        }
    }
});

/// Attends the query rows `start..start + rows` (`rows = out.len() / (heads·head_dim)`) of one
/// sequence, whose fused QKV rows are `qkv` (`len × 3·heads·head_dim`), each to the keys
/// within `half_window` positions of it, scaled by `1/√head_dim`, writing `out` (`rows ×
/// heads·head_dim`). With `half_window ≥ len − 1` it is full bidirectional attention.
///
/// # Panics
///
/// When `qkv` or `out` is not a whole number of rows, or the rows run past the sequence.
pub fn window_attention(
    s: &WindowShape,
    qkv: &[f32],
    start: usize,
    out: &mut [f32],
    level: KernelLevel,
) {
    let h = s.heads * s.head_dim;
    if h == 0 || out.is_empty() {
        return;
    }
    assert!(
        qkv.len().is_multiple_of(3 * h) && out.len().is_multiple_of(h),
        "window_attention: qkv or output is not a whole number of rows"
    );
    let (len, rows) = (qkv.len() / (3 * h), out.len() / h);
    assert!(
        start + rows <= len,
        "window_attention: rows past the sequence"
    );
    let mut scores = vec![0.0f32; len.min(2 * s.half_window.min(len) + 1)];
    match variant(level) {
        // SAFETY: `variant` never picks a version the CPU lacks the features of.
        #[cfg(target_arch = "x86_64")]
        Variant::Avx512 => unsafe { rows_avx512(s, qkv, start, out, &mut scores) },
        // SAFETY: as above.
        #[cfg(target_arch = "x86_64")]
        Variant::Avx2 => unsafe { rows_avx2(s, qkv, start, out, &mut scores) },
        Variant::Generic => rows_generic(s, qkv, start, out, &mut scores),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::{attention_at, AttentionShape};

    fn values(n: usize, seed: u64) -> Vec<f32> {
        let mut x = seed;
        (0..n)
            .map(|_| {
                x = x
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                ((x >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0) * 2.0
            })
            .collect()
    }

    /// The definition, in f64: softmax over the keys within the window, then the values.
    fn naive(s: &WindowShape, qkv: &[f32]) -> Vec<f32> {
        let (d, h) = (s.head_dim, s.heads * s.head_dim);
        let len = qkv.len() / (3 * h);
        let mut out = vec![0.0f32; len * h];
        for i in 0..len {
            for head in 0..s.heads {
                let keys: Vec<usize> = (0..len)
                    .filter(|j| i.abs_diff(*j) <= s.half_window)
                    .collect();
                let scores: Vec<f64> = keys
                    .iter()
                    .map(|&j| {
                        (0..d)
                            .map(|c| {
                                qkv[i * 3 * h + head * d + c] as f64
                                    * qkv[j * 3 * h + h + head * d + c] as f64
                            })
                            .sum::<f64>()
                            / (d as f64).sqrt()
                    })
                    .collect();
                let max = scores.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                let e: Vec<f64> = scores.iter().map(|x| (x - max).exp()).collect();
                let sum: f64 = e.iter().sum();
                for c in 0..d {
                    let v: f64 = keys
                        .iter()
                        .zip(&e)
                        .map(|(&j, p)| p * qkv[j * 3 * h + 2 * h + head * d + c] as f64)
                        .sum();
                    out[i * h + head * d + c] = (v / sum) as f32;
                }
            }
        }
        out
    }

    #[test]
    fn attends_within_the_window_on_every_path_in_any_row_split() {
        for (heads, head_dim, half_window, len) in
            [(2, 16, 4, 13), (3, 20, 1, 5), (1, 8, 0, 4), (2, 64, 3, 2)]
        {
            let s = WindowShape {
                heads,
                head_dim,
                half_window,
            };
            let h = heads * head_dim;
            let qkv = values(len * 3 * h, (len * h) as u64);
            let want = naive(&s, &qkv);
            for level in KernelLevel::ALL {
                let mut whole = vec![0.0f32; len * h];
                window_attention(&s, &qkv, 0, &mut whole, level);
                for (a, b) in whole.iter().zip(&want) {
                    assert!((a - b).abs() <= 1e-5, "{s:?} {level}: {a} against {b}");
                }
                // Rows 0..2 and 2..len in two calls: the same values.
                let split = 2.min(len);
                let mut parts = vec![0.0f32; len * h];
                let (first, rest) = parts.split_at_mut(split * h);
                window_attention(&s, &qkv, 0, first, level);
                window_attention(&s, &qkv, split, rest, level);
                assert_eq!(parts, whole, "{s:?} {level}");
            }
        }
    }

    #[test]
    fn a_window_over_the_whole_sequence_is_the_encoders_full_attention() {
        let (heads, head_dim, len) = (4, 16, 9);
        let h = heads * head_dim;
        let qkv = values(len * 3 * h, 7);
        let mut full = vec![0.0f32; len * h];
        let shape = AttentionShape {
            seq_len: len,
            heads,
            head_dim,
            lengths: vec![len],
            unpadded: false,
        };
        attention_at(&qkv, &mut full, &shape, 1, KernelLevel::detected());
        let mut windowed = vec![0.0f32; len * h];
        let s = WindowShape {
            heads,
            head_dim,
            half_window: len,
        };
        window_attention(&s, &qkv, 0, &mut windowed, KernelLevel::detected());
        for (a, b) in windowed.iter().zip(&full) {
            assert!((a - b).abs() <= 1e-5, "{a} against {b}");
        }
    }
}
