//! Every code path of `causal_attention.rs` against softmax attention computed plainly in
//! f64, on the shapes where blocked code goes wrong: one row, rows and keys that are not
//! whole blocks, a cached prefix, windows shorter and longer than the span, head sizes with
//! and without a tail, groups of 1, 3 and 4 query heads per KV head, and scores large
//! enough to overflow an exponential taken without the maximum.

use half::f16;

use super::*;
use crate::kernels::test_util::lcg;

/// One test shape.
#[derive(Debug, Clone, Copy)]
struct Case {
    rows: usize,
    start: usize,
    window: Option<usize>,
    head_dim: usize,
    n_head_kv: usize,
    group: usize,
    /// Multiplies the queries (large: scores in the hundreds).
    magnitude: f32,
    /// `None`: 1/√head_dim.
    scale: Option<f32>,
}

const fn case(
    rows: usize,
    start: usize,
    window: Option<usize>,
    head_dim: usize,
    n_head_kv: usize,
    group: usize,
) -> Case {
    Case {
        rows,
        start,
        window,
        head_dim,
        n_head_kv,
        group,
        magnitude: 1.0,
        scale: None,
    }
}

const CASES: &[Case] = &[
    // Decode: one row, first token and long context, with and without a window.
    case(1, 0, None, 64, 3, 3),
    case(1, 100, None, 64, 3, 3),
    case(1, 100, Some(10), 64, 3, 3),
    case(1, 31, None, 8, 1, 4),
    // A few rows: the narrow layout with its mask.
    case(2, 5, None, 8, 2, 3),
    case(2, 0, None, 64, 1, 4),
    // Prefill tasks: the wide layout.
    case(16, 0, None, 64, 3, 3),
    case(16, 1600, None, 64, 3, 3),
    case(17, 0, None, 16, 1, 4),
    case(16, 37, None, 80, 2, 1),
    case(4, 60, None, 64, 3, 3),
    case(3, 2, None, 64, 1, 3),
    // Windows shorter and longer than the span, and of one position.
    case(5, 33, Some(7), 256, 1, 3),
    case(20, 3, Some(100), 32, 2, 4),
    case(24, 70, Some(40), 64, 3, 3),
    case(3, 0, Some(1), 8, 1, 3),
    case(1, 9, Some(1), 8, 1, 3),
    // A head size that is no whole number of 4- or 16-wide steps.
    case(33, 31, Some(40), 7, 1, 3),
    case(2, 3, None, 7, 1, 1),
    // Scores in the hundreds, and a scale that is not 1/√d (Gemma 3).
    Case {
        magnitude: 40.0,
        ..case(16, 50, None, 64, 3, 3)
    },
    Case {
        magnitude: 40.0,
        ..case(1, 50, None, 64, 3, 3)
    },
    Case {
        scale: Some(0.3),
        ..case(9, 12, Some(5), 16, 2, 2)
    },
];

/// The inputs of a case: queries (`rows × qkvw`, Q first), keys and values for every
/// position up to the last row's, NaN where the rows must not look (outside the span the
/// window and the causal mask leave), so that reading them shows.
struct Inputs {
    q: Vec<f32>,
    q_stride: usize,
    k: Vec<f32>,
    v: Vec<f32>,
}

fn inputs(c: &Case, seed: u64) -> Inputs {
    let hd = c.head_dim;
    let n_head = c.n_head_kv * c.group;
    let kvw = c.n_head_kv * hd;
    // Q, K and V side by side, as the decoder's rows are.
    let q_stride = (n_head + 2 * c.n_head_kv) * hd;
    let q = lcg(seed, c.rows * q_stride)
        .into_iter()
        .map(|x| x * c.magnitude)
        .collect();
    let span = c.start + c.rows;
    let mut k = lcg(seed + 1, (span + 2) * kvw);
    let mut v = lcg(seed + 2, (span + 2) * kvw);
    let lo = c.window.map_or(0, |w| (c.start + 1).saturating_sub(w));
    for t in (0..lo).chain(span..span + 2) {
        k[t * kvw..(t + 1) * kvw].fill(f32::NAN);
        v[t * kvw..(t + 1) * kvw].fill(f32::NAN);
    }
    Inputs { q, q_stride, k, v }
}

/// A cache that holds every position from 0.
fn held_all<'a, T>(k: &'a [T], v: &'a [T]) -> KvRows<'a, T> {
    KvRows { k, v, first: 0 }
}

fn shape(c: &Case) -> CausalShape {
    CausalShape {
        n_head: c.n_head_kv * c.group,
        n_head_kv: c.n_head_kv,
        head_dim: c.head_dim,
        scale: c.scale.unwrap_or(1.0 / (c.head_dim as f32).sqrt()),
        window: c.window,
    }
}

/// Softmax attention in f64, row by row and head by head.
fn reference(c: &Case, x: &Inputs) -> Vec<f64> {
    let s = shape(c);
    let hd = c.head_dim;
    let kvw = c.n_head_kv * hd;
    let mut out = vec![0.0f64; c.rows * s.n_head * hd];
    for r in 0..c.rows {
        let pos = c.start + r;
        let first = c.window.map_or(0, |w| (pos + 1).saturating_sub(w));
        for h in 0..s.n_head {
            let kvh = h / c.group;
            let q = &x.q[r * x.q_stride + h * hd..][..hd];
            let scores: Vec<f64> = (first..=pos)
                .map(|t| {
                    let k = &x.k[t * kvw + kvh * hd..][..hd];
                    let d: f64 = q.iter().zip(k).map(|(&a, &b)| a as f64 * b as f64).sum();
                    d * s.scale as f64
                })
                .collect();
            let max = scores.iter().copied().fold(f64::NEG_INFINITY, f64::max);
            let e: Vec<f64> = scores.iter().map(|x| (x - max).exp()).collect();
            let total: f64 = e.iter().sum();
            let o = &mut out[(r * s.n_head + h) * hd..][..hd];
            for (t, w) in (first..=pos).zip(&e) {
                let v = &x.v[t * kvw + kvh * hd..][..hd];
                for (o, &v) in o.iter_mut().zip(v) {
                    *o += w / total * v as f64;
                }
            }
        }
    }
    out
}

/// The levels whose code paths this CPU runs (each a different compiled version).
fn levels() -> Vec<KernelLevel> {
    [
        KernelLevel::Scalar,
        KernelLevel::Avx2,
        KernelLevel::Avx512Vnni,
    ]
    .into_iter()
    .filter(|&l| l <= KernelLevel::detected())
    .collect()
}

fn check(c: &Case, got: &[f32], want: &[f64], what: &str) {
    // Scores in the hundreds carry f32 rounding of ~1e-5 of their size into the weights.
    let tol = if c.magnitude > 1.0 { 2e-4 } else { 1e-5 };
    for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
        assert!(
            (g as f64 - w).abs() <= tol * w.abs().max(1.0),
            "{what} {c:?}: element {i} is {g}, want {w}"
        );
    }
}

#[test]
fn every_path_matches_softmax_attention_in_f64() {
    for (n, c) in CASES.iter().enumerate() {
        let x = inputs(c, 10 * n as u64 + 1);
        let want = reference(c, &x);
        let s = shape(c);
        for level in levels() {
            let mut got = vec![f32::NAN; want.len()];
            causal_attention(
                &s,
                &x.q,
                x.q_stride,
                held_all(&x.k, &x.v),
                c.start,
                &mut got,
                level,
            );
            check(c, &got, &want, &format!("f32 cache on {level}"));
        }
    }
}

#[test]
fn an_f16_cache_is_widened_exactly() {
    for (n, c) in CASES.iter().enumerate() {
        let mut x = inputs(c, 10 * n as u64 + 5);
        let k16: Vec<f16> = x.k.iter().map(|&y| f16::from_f32(y)).collect();
        let v16: Vec<f16> = x.v.iter().map(|&y| f16::from_f32(y)).collect();
        // The reference sees the values the f16 cache holds.
        x.k = k16.iter().map(|y| y.to_f32()).collect();
        x.v = v16.iter().map(|y| y.to_f32()).collect();
        let want = reference(c, &x);
        let s = shape(c);
        for level in levels() {
            let mut got = vec![f32::NAN; want.len()];
            causal_attention(
                &s,
                &x.q,
                x.q_stride,
                held_all(&k16, &v16),
                c.start,
                &mut got,
                level,
            );
            check(c, &got, &want, &format!("f16 cache on {level}"));
            // And exactly what the f32 cache of the same values gives.
            let mut wide = vec![f32::NAN; want.len()];
            causal_attention(
                &s,
                &x.q,
                x.q_stride,
                held_all(&x.k, &x.v),
                c.start,
                &mut wide,
                level,
            );
            assert_eq!(got, wide, "{c:?} on {level}");
        }
    }
}

/// A row's result does not depend on which other rows share its call, bit for bit: the wide
/// layout (a prefill task) and the narrow one (decode, a few rows) do the same arithmetic in
/// the same order, so a sequence's tokens do not depend on how its prompt was chunked.
#[test]
fn rows_attend_alike_alone_and_in_a_task_bit_for_bit() {
    let cases = [
        case(16, 40, Some(24), 64, 3, 3),
        case(16, 0, None, 64, 3, 3),
        case(9, 70, None, 256, 1, 4),
        case(12, 31, Some(5), 7, 2, 1),
        case(40, 3, None, 80, 1, 2),
    ];
    for (n, c) in cases.iter().enumerate() {
        let x = inputs(c, 99 + n as u64);
        let s = shape(c);
        let qw = s.n_head * c.head_dim;
        for level in levels() {
            let mut all = vec![0.0f32; c.rows * qw];
            causal_attention(
                &s,
                &x.q,
                x.q_stride,
                held_all(&x.k, &x.v),
                c.start,
                &mut all,
                level,
            );
            // Every row alone, and the rows in chunks of 2 and 5.
            for chunk in [1, 2, 5] {
                for r0 in (0..c.rows).step_by(chunk) {
                    let rows = chunk.min(c.rows - r0);
                    let mut part = vec![0.0f32; rows * qw];
                    let q = &x.q[r0 * x.q_stride..];
                    causal_attention(
                        &s,
                        q,
                        x.q_stride,
                        held_all(&x.k, &x.v),
                        c.start + r0,
                        &mut part,
                        level,
                    );
                    let whole = &all[r0 * qw..(r0 + rows) * qw];
                    let same = whole
                        .iter()
                        .zip(&part)
                        .all(|(a, b)| a.to_bits() == b.to_bits());
                    assert!(
                        same,
                        "{c:?} on {level}: rows {r0}.. in chunks of {chunk} differ"
                    );
                }
            }
        }
    }
}

/// A call for some KV heads writes those heads exactly as a call for every head does (how a
/// single sequence's attention is split over threads), on every path, in both layouts.
#[test]
fn some_kv_heads_attend_as_all_heads_do_bit_for_bit() {
    let cases = [
        case(1, 100, None, 64, 3, 3),
        case(1, 40, Some(10), 128, 8, 2),
        case(2, 5, None, 8, 2, 3),
        case(16, 37, None, 80, 2, 1),
        case(9, 12, Some(5), 16, 4, 2),
    ];
    for (n, c) in cases.iter().enumerate() {
        let x = inputs(c, 7 + n as u64);
        let s = shape(c);
        let (qw, hw) = (s.n_head * c.head_dim, c.group * c.head_dim);
        for level in levels() {
            let mut all = vec![f32::NAN; c.rows * qw];
            let kv = held_all(&x.k, &x.v);
            causal_attention(&s, &x.q, x.q_stride, kv, c.start, &mut all, level);
            for h0 in 0..c.n_head_kv {
                for h1 in h0 + 1..=c.n_head_kv {
                    let w = (h1 - h0) * hw;
                    let mut part = vec![f32::NAN; c.rows * w];
                    causal_attention_heads(
                        &s,
                        h0..h1,
                        &x.q,
                        x.q_stride,
                        kv,
                        c.start,
                        &mut part,
                        level,
                    );
                    for r in 0..c.rows {
                        let whole = &all[r * qw + h0 * hw..][..w];
                        let same = whole
                            .iter()
                            .zip(&part[r * w..][..w])
                            .all(|(a, b)| a.to_bits() == b.to_bits());
                        assert!(
                            same,
                            "{c:?} on {level}: KV heads {h0}..{h1}, row {r} differ"
                        );
                    }
                }
            }
        }
    }
}

/// A sliding layer's cache that has dropped the positions before `first` gives the very
/// same result as one that kept them (blocks are cut at absolute positions).
#[test]
fn a_cache_that_dropped_what_the_window_hides_attends_alike() {
    let c = case(6, 90, Some(40), 32, 2, 3);
    let x = inputs(&c, 7);
    let s = shape(&c);
    let kvw = c.n_head_kv * c.head_dim;
    let qw = s.n_head * c.head_dim;
    for level in levels() {
        let mut kept = vec![0.0f32; c.rows * qw];
        causal_attention(
            &s,
            &x.q,
            x.q_stride,
            held_all(&x.k, &x.v),
            c.start,
            &mut kept,
            level,
        );
        // The first row at 90 sees 51..; any first up to 51 holds what every row sees.
        for first in [1, 13, 32, 33, 50, 51] {
            let held = KvRows {
                k: &x.k[first * kvw..],
                v: &x.v[first * kvw..],
                first,
            };
            let mut got = vec![0.0f32; c.rows * qw];
            causal_attention(&s, &x.q, x.q_stride, held, c.start, &mut got, level);
            let same = kept
                .iter()
                .zip(&got)
                .all(|(a, b)| a.to_bits() == b.to_bits());
            assert!(same, "first {first} on {level}");
        }
    }
}

#[test]
#[should_panic(expected = "dropped positions")]
fn a_cache_that_dropped_a_seen_position_is_refused() {
    let c = case(2, 20, Some(8), 8, 1, 3);
    let x = inputs(&c, 3);
    let s = shape(&c);
    let mut out = vec![0.0f32; 2 * 3 * 8];
    let held = KvRows {
        k: &x.k[14 * 8..],
        v: &x.v[14 * 8..],
        first: 14,
    };
    causal_attention(
        &s,
        &x.q,
        x.q_stride,
        held,
        c.start,
        &mut out,
        KernelLevel::Scalar,
    );
}

#[test]
#[should_panic(expected = "cache shorter")]
fn a_cache_shorter_than_the_rows_is_refused() {
    let c = case(4, 10, None, 8, 1, 3);
    let x = inputs(&c, 3);
    let s = shape(&c);
    let mut out = vec![0.0f32; 4 * 3 * 8];
    causal_attention(
        &s,
        &x.q,
        x.q_stride,
        held_all(&x.k[..12 * 8], &x.v),
        c.start,
        &mut out,
        KernelLevel::Scalar,
    );
}

/// The decode layout's key-block transpose: the AVX tiles give what the scalar loop gives on
/// every ragged shape (rows and columns not multiples of 8, rows padded apart, an empty block),
/// and columns past the block's rows are left as they were.
#[test]
fn the_key_block_transposes_alike_with_and_without_avx() {
    #[cfg(target_arch = "x86_64")]
    if !std::arch::is_x86_feature_detected!("avx") {
        eprintln!("skipped: this CPU has no AVX");
        return;
    }
    #[cfg(not(target_arch = "x86_64"))]
    eprintln!("skipped: not x86_64 (the AVX transpose is not compiled)");
    for hd in [1usize, 7, 8, 13, 16, 64, 67] {
        for pad in [0usize, 3] {
            let ks = hd + pad;
            for nb in [0usize, 1, 7, 8, 9, 16, 31, 32] {
                let kb: Vec<f32> = (0..nb.max(1) * ks).map(|i| i as f32 + 0.5).collect();
                let mut scalar = vec![-1.0f32; hd * KEY_BLOCK];
                let mut tiled = scalar.clone();
                transpose_keys::<false>(&kb, ks, nb, hd, &mut scalar);
                // SAFETY: checked above that the CPU has AVX.
                unsafe { transpose_keys_with_avx(&kb, ks, nb, hd, &mut tiled) };
                assert_eq!(scalar, tiled, "hd {hd}, stride {ks}, {nb} keys");
                for d in 0..hd {
                    for j in 0..KEY_BLOCK {
                        let want = if j < nb { kb[j * ks + d] } else { -1.0 };
                        assert_eq!(scalar[d * KEY_BLOCK + j], want, "hd {hd}, {nb} keys");
                    }
                }
            }
        }
    }
}

/// `transpose_keys::<true>` compiled with AVX, as the kernel's AVX builds inline it.
///
/// # Safety
///
/// The CPU has AVX.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx")]
unsafe fn transpose_keys_with_avx(kb: &[f32], ks: usize, nb: usize, hd: usize, kt: &mut [f32]) {
    transpose_keys::<true>(kb, ks, nb, hd, kt)
}

#[cfg(not(target_arch = "x86_64"))]
unsafe fn transpose_keys_with_avx(kb: &[f32], ks: usize, nb: usize, hd: usize, kt: &mut [f32]) {
    transpose_keys::<false>(kb, ks, nb, hd, kt)
}
