use super::*;
use crate::kernels::test_util::{close, lcg, levels};

/// Sequences back to back (`unpadded`) get, row for row, what the same sequences padded
/// to the longest get, bit for bit, on every path, in both precisions, on one and two
/// threads: the layout changes where rows are, never the arithmetic.
#[test]
fn unpadded_rows_attend_as_padded_rows_do() {
    let (heads, d) = (3, 40);
    let h = heads * d;
    let lengths = vec![7, 1, 33, 16, 17];
    let seq = *lengths.iter().max().unwrap();
    let padded_qkv = lcg(11, lengths.len() * seq * 3 * h);
    let mut packed_qkv = Vec::new();
    for (b, &len) in lengths.iter().enumerate() {
        packed_qkv.extend_from_slice(&padded_qkv[b * seq * 3 * h..][..len * 3 * h]);
    }
    let shape = |unpadded| AttentionShape {
        seq_len: seq,
        heads,
        head_dim: d,
        lengths: lengths.clone(),
        unpadded,
    };
    let rows: usize = lengths.iter().sum();
    assert_eq!(shape(true).sizes().unwrap().rows, rows);
    assert_eq!(shape(true).first_row(3), 7 + 1 + 33);
    for level in levels() {
        for products in [Products::F32, Products::Bf16] {
            for threads in [1, 2] {
                let mut padded = vec![f32::NAN; lengths.len() * seq * h];
                attention_with(
                    &padded_qkv,
                    &mut padded,
                    &shape(false),
                    threads,
                    level,
                    products,
                );
                let mut packed = vec![f32::NAN; rows * h];
                attention_with(
                    &packed_qkv,
                    &mut packed,
                    &shape(true),
                    threads,
                    level,
                    products,
                );
                let mut row0 = 0;
                for (b, &len) in lengths.iter().enumerate() {
                    let want = &padded[b * seq * h..][..len * h];
                    let got = &packed[row0 * h..][..len * h];
                    assert!(
                        want.iter()
                            .zip(got)
                            .all(|(w, g)| w.to_bits() == g.to_bits()),
                        "sequence {b} on {level} ({products:?}, {threads} threads)"
                    );
                    row0 += len;
                }
            }
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
        unpadded: false,
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
                        (0..d).map(|c| at(i, 0, c) * at(j, 1, c)).sum::<f64>() / (d as f64).sqrt()
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
                    unpadded: false,
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
        unpadded: false,
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
        unpadded: false,
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
#[should_panic(expected = "attention: sizes overflow")]
fn attention_refuses_sizes_that_overflow() {
    // heads × head_dim = 2⁶⁴ + 2 wraps to 2 with unchecked arithmetic.
    let shape = AttentionShape {
        seq_len: 1,
        heads: (1 << 63) + 1,
        head_dim: 2,
        lengths: vec![1],
        unpadded: false,
    };
    attention(&[0.0; 6], &mut [0.0; 2], &shape, 1);
}
