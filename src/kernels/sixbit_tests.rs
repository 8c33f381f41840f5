//! Tests of the Q6_K linear layer (`sixbit.rs`): the blocks read as ggml dequantizes them,
//! every kernel path against the naive arithmetic (including the extremes, where a
//! saturating pair sum would show), bad shapes refused.

use super::*;
use crate::kernels::test_util::{relative_error, test_values as values};
use candle_core::quantized::{GgmlDType, QStorage, QTensor};
use candle_core::Device;

/// `n` rows of `k` values in Q6_K, quantized by candle from cubed random values (every
/// level of `q` and a spread of scales occur).
fn random_blocks(n: usize, k: usize, seed: u64) -> Vec<u8> {
    let v: Vec<f32> = values(seed, n * k).iter().map(|x| x * x * x).collect();
    let t = candle_core::Tensor::from_vec(v, (n, k), &Device::Cpu).unwrap();
    let q = QTensor::quantize(&t, GgmlDType::Q6K).unwrap();
    q.data().unwrap().into_owned()
}

/// candle's (ggml's) dequantization of Q6_K bytes.
fn candle_dequantize(bytes: &[u8], n: usize, k: usize) -> Vec<f32> {
    let storage = QStorage::from_data(
        std::borrow::Cow::Borrowed(bytes),
        &Device::Cpu,
        GgmlDType::Q6K,
    )
    .unwrap();
    QTensor::new(storage, (n, k))
        .unwrap()
        .dequantize(&Device::Cpu)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap()
}

#[test]
fn rows_read_back_as_ggml_dequantizes_them() {
    let (n, k) = (37, 512);
    let bytes = random_blocks(n, k, 5);
    let layer = SixBitLinear::from_parts(&[&bytes], &vec![0.0; n], k).unwrap();
    let theirs = candle_dequantize(&bytes, n, k);
    for c in 0..n {
        let ours = layer.weight_row(c).unwrap();
        assert_eq!(ours, theirs[c * k..][..k], "row {c}");
    }
    assert!(layer.weight_row(n).is_none());
    // Every six-bit level occurs, so every bit of the layout was exercised.
    let row_bytes = k / SUPER * BLOCK_BYTES;
    let levels: std::collections::BTreeSet<u8> = bytes
        .chunks(BLOCK_BYTES)
        .flat_map(|b| (0..SUPER).map(|v| q6k_value(b, v)))
        .collect();
    assert_eq!(levels.len(), 64);
    assert_eq!(bytes.len(), n * row_bytes);
}

/// Value `v` (0..256) of a Q6_K super-block as its six bits, one at a time, as ggml's
/// `dequantize_row_q6_K` indexes them: the reference the loader's run-at-a-time reading and
/// the naive product below are checked against.
fn q6k_value(block: &[u8], v: usize) -> u8 {
    let (half, l) = (v / 128, v % 128);
    let (run, i) = (l / 32, l % 32);
    let ql = block[64 * half + 32 * (run % 2) + i];
    let nibble = if run < 2 { ql & 0x0F } else { ql >> 4 };
    let high = (block[128 + 32 * half + i] >> (2 * run)) & 3;
    nibble | (high << 4)
}

#[test]
fn a_run_reads_the_values_one_at_a_time_reading_gives() {
    let bytes = random_blocks(1, 4 * SUPER, 11);
    for block in bytes.chunks_exact(BLOCK_BYTES) {
        let arr: &[u8; BLOCK_BYTES] = block.try_into().unwrap();
        for bb in 0..SUPER_BLOCKS {
            let want: Vec<u8> = (0..BLOCK).map(|i| q6k_value(block, 32 * bb + i)).collect();
            assert_eq!(q6k_run(arr, bb).to_vec(), want, "run {bb}");
        }
    }
}

/// The documented arithmetic, naively, from the GGUF bytes.
fn naive(bytes: &[u8], x: &[f32], m: usize, n: usize, k: usize, b: &[f32]) -> Vec<f32> {
    let row_bytes = k / SUPER * BLOCK_BYTES;
    let mut out = vec![0.0; m * n];
    for i in 0..m {
        let mut xq = vec![0i8; k];
        let mut sx = vec![0.0f32; k / BLOCK];
        quantize_activations(
            &x[i * k..][..k],
            k,
            k,
            false,
            &mut xq,
            &mut sx,
            KernelLevel::Scalar,
        );
        for c in 0..n {
            let row = &bytes[c * row_bytes..][..row_bytes];
            let mut s = 0.0f32;
            for blk in 0..k / BLOCK {
                let block = &row[blk / SUPER_BLOCKS * BLOCK_BYTES..][..BLOCK_BYTES];
                let mut dot = 0i32;
                for v in 0..BLOCK {
                    let at = (blk % SUPER_BLOCKS) * BLOCK + v;
                    let q = q6k_value(block, at) as i32 - 32;
                    dot += q6k_scale(block, at / 16) as i32 * q * xq[blk * BLOCK + v] as i32;
                }
                s = (dot as f32).mul_add(sx[blk] * q6k_d(block), s);
            }
            out[i * n + c] = s + b[c];
        }
    }
    out
}

fn check_every_path(bytes: &[u8], m: usize, n: usize, k: usize, x: &[f32], what: &str) {
    let b = values(9, n);
    let layer = SixBitLinear::from_parts(&[bytes], &b, k).unwrap();
    let want = naive(bytes, x, m, n, k, &b);
    for level in KernelLevel::ALL {
        if level > KernelLevel::detected() {
            continue;
        }
        for threads in [1, 2] {
            let mut got = vec![f32::NAN; m * n];
            layer.forward(x, m, &mut got, level, threads, Epilogue::Bias);
            assert_eq!(
                got, want,
                "{what}: {m}×{n}×{k} on {level}, {threads} threads"
            );
        }
    }
}

#[test]
fn every_path_matches_the_naive_reference_exactly_and_the_f32_product_closely() {
    for (m, n, k) in [
        (1usize, 1usize, 256usize),
        (3, 17, 512),
        (2, 48, 256),
        (13, 64, 768),
        (100, 40, 256),
        (5, 33, 1024),
    ] {
        let bytes = random_blocks(n, k, 3 + n as u64);
        let x = values(1 + m as u64, m * k);
        check_every_path(&bytes, m, n, k, &x, "random");
        // Only the activations are quantized: close to the exact product.
        let w = candle_dequantize(&bytes, n, k);
        let b = values(9, n);
        let layer = SixBitLinear::from_parts(&[&bytes], &b, k).unwrap();
        let mut got = vec![0.0; m * n];
        layer.forward(&x, m, &mut got, KernelLevel::detected(), 1, Epilogue::Bias);
        let rel = relative_error(&got, &x, &w, &b, k);
        assert!(rel < 0.01, "{m}×{n}×{k}: {rel}");
    }
}

/// The largest magnitudes every sum can take: `q` at 0 and 63, scales at −128 and 127,
/// activations at ±127 (a block's maximum quantizes to 127), in the sign patterns that
/// make the pair sums of `vpmaddubsw` largest.
#[test]
fn the_extremes_neither_saturate_nor_overflow() {
    let (n, k) = (16, 256);
    for (q_byte, high, scale) in [
        (0xFFu8, 0xFFu8, -128i8),
        (0x00, 0x00, 127),
        (0xFF, 0xFF, 127),
    ] {
        let mut block = vec![q_byte; 128];
        block.extend(std::iter::repeat_n(high, 64));
        block.extend(std::iter::repeat_n(scale as u8, 16));
        block.extend_from_slice(&half::f16::from_f32(0.5).to_le_bytes());
        let bytes: Vec<u8> = (0..n).flat_map(|_| block.clone()).collect();
        for x in [vec![1.0f32; k], vec![-1.0; k]] {
            check_every_path(
                &bytes,
                1,
                n,
                k,
                &x,
                &format!("q byte {q_byte:#x}, sc {scale}"),
            );
        }
    }
}

#[test]
fn bad_shapes_are_errors() {
    let one = vec![0u8; BLOCK_BYTES];
    assert!(SixBitLinear::from_parts(&[&one], &[0.0], 256).is_ok());
    assert!(SixBitLinear::from_parts(&[&one], &[0.0], 32).is_err());
    assert!(SixBitLinear::from_parts(&[&one[1..]], &[0.0], 256).is_err());
    assert!(SixBitLinear::from_parts(&[&one, &one], &[0.0], 256).is_err());
    assert!(SixBitLinear::from_parts(&[&one, &one], &[0.0, 0.0], 256).is_ok());
    for bad in [f32::NAN, f32::INFINITY] {
        let mut block = one.clone();
        block[208..].copy_from_slice(&half::f16::from_f32(bad).to_le_bytes());
        let err = SixBitLinear::from_parts(&[&one, &block], &[0.0, 0.0], 256)
            .err()
            .unwrap();
        assert!(err.contains("NaN or infinite"), "{err}");
    }
}
