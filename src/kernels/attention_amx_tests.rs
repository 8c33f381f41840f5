//! Tests of the AMX attention (`attention_amx.rs`) through `attention_with`, against a
//! reference that rounds like the tiles do; skipped, saying so, where the CPU has no AMX.

use super::attention::{attention_with, AttentionShape, Products};
use super::bf16::{from_bf16, to_bf16};
use crate::kernels::test_util::lcg;
use crate::kernels::KernelLevel;

fn round(v: f32) -> f64 {
    from_bf16(to_bf16(v)) as f64
}

/// Masked attention in f64 from the operands the tiles see: queries (scaled), keys,
/// values and the softmax's weights rounded to bf16; padding rows zero.
fn rounded_reference(qkv: &[f32], s: &AttentionShape) -> Vec<f64> {
    let (heads, d, seq) = (s.heads, s.head_dim, s.seq_len);
    let h = heads * d;
    let scale = 1.0 / (d as f32).sqrt();
    let mut out = vec![0.0f64; s.lengths.len() * seq * h];
    for (b, &len) in s.lengths.iter().enumerate() {
        for head in 0..heads {
            let at = |t: usize, part: usize, c: usize| {
                qkv[(b * seq + t) * 3 * h + part * h + head * d + c]
            };
            for i in 0..len {
                let scores: Vec<f64> = (0..len)
                    .map(|j| {
                        (0..d)
                            .map(|c| round(at(i, 0, c) * scale) * round(at(j, 1, c)))
                            .sum::<f64>()
                    })
                    .collect();
                let max = scores.iter().cloned().fold(f64::MIN, f64::max);
                let e: Vec<f64> = scores.iter().map(|v| (v - max).exp()).collect();
                let z: f64 = e.iter().sum();
                for c in 0..d {
                    out[(b * seq + i) * h + head * d + c] = (0..len)
                        .map(|j| round((e[j] / z) as f32) * round(at(j, 2, c)))
                        .sum();
                }
            }
        }
    }
    out
}

fn has_amx() -> bool {
    let detected = KernelLevel::detected();
    if detected < KernelLevel::Amx {
        eprintln!("skipped: no AMX here (detected {detected}), the AMX attention is not tested");
    }
    detected >= KernelLevel::Amx
}

/// Every shape around the tiles' sizes (16 queries and keys, 32 keys per pair tile, 32
/// and 16 dimensions), padded batches, one thread and several: the tiles give the
/// rounded reference's values (within one bf16 step of a softmax weight), padding rows
/// zero, and the same bits on any thread split.
#[test]
fn amx_attention_matches_the_rounded_reference_on_edge_shapes() {
    if !has_amx() {
        return;
    }
    let mut case = 0u64;
    for seq in [1, 2, 15, 16, 17, 31, 32, 33, 70, 107] {
        for d in [1, 3, 16, 17, 31, 32, 33, 64, 65, 130] {
            for heads in [1, 3] {
                case += 1;
                let shape = AttentionShape {
                    seq_len: seq,
                    heads,
                    head_dim: d,
                    lengths: vec![seq, 1, seq.div_ceil(2)],
                    unpadded: false,
                };
                let h = heads * d;
                let rows = 3 * seq;
                let qkv: Vec<f32> = lcg(case, rows * 3 * h).iter().map(|v| v * 2.0).collect();
                let want = rounded_reference(&qkv, &shape);
                let run = |threads| {
                    let mut out = vec![f32::NAN; rows * h];
                    attention_with(
                        &qkv,
                        &mut out,
                        &shape,
                        threads,
                        KernelLevel::Amx,
                        Products::Bf16,
                    );
                    out
                };
                let got = run(1);
                assert_eq!(got, run(1 + (case % 4) as usize), "seq {seq} d {d}");
                for (e, want) in want.iter().enumerate() {
                    let padding = e % (seq * h) / h >= shape.lengths[e / (seq * h)];
                    let ok = if padding {
                        got[e] == 0.0
                    } else {
                        (got[e] as f64 - want).abs() <= 1e-2
                    };
                    assert!(
                        ok,
                        "seq {seq} d {d} heads {heads}: [{e}] {} vs {want}",
                        got[e]
                    );
                }
            }
        }
    }
}

/// Against exact f32 attention the bf16 products stay close on inputs of an encoder's
/// scale, and a NaN or infinite score still makes its query's row NaN.
#[test]
fn amx_attention_is_close_to_f32_and_keeps_nan() {
    if !has_amx() {
        return;
    }
    let shape = AttentionShape {
        seq_len: 107,
        heads: 12,
        head_dim: 32,
        lengths: vec![107, 40, 1],
        unpadded: false,
    };
    let rows = 3 * 107;
    let h = 12 * 32;
    let mut qkv = lcg(7, rows * 3 * h);
    let mut exact = vec![0.0; rows * h];
    attention_with(&qkv, &mut exact, &shape, 2, KernelLevel::Amx, Products::F32);
    let mut tiles = vec![0.0; rows * h];
    attention_with(
        &qkv,
        &mut tiles,
        &shape,
        2,
        KernelLevel::Amx,
        Products::Bf16,
    );
    let worst = exact
        .iter()
        .zip(&tiles)
        .map(|(a, b)| (a - b).abs())
        .fold(0.0f32, f32::max);
    assert!(worst < 2e-2, "largest difference {worst}");
    // A NaN key of sequence 1 (row 107 + 3), head 0: every query of that sequence and
    // head attends to it.
    qkv[(107 + 3) * 3 * h + h] = f32::NAN;
    attention_with(
        &qkv,
        &mut tiles,
        &shape,
        1,
        KernelLevel::Amx,
        Products::Bf16,
    );
    for i in 0..40 {
        assert!(
            tiles[(107 + i) * h..][..32].iter().all(|v| v.is_nan()),
            "query {i}"
        );
        assert!(tiles[(107 + i) * h + 32..][..32]
            .iter()
            .all(|v| v.is_finite()));
    }
}
