//! Tests of the 4- and 5-bit linear layers (`lowbit.rs`): the blocks of every format read as ggml
//! dequantizes them, every kernel path against the naive arithmetic, bad shapes refused.

use super::*;
use crate::kernels::test_util::{levels, relative_error, test_values as values};

const FORMATS: [LowBitFormat; 6] = [
    LowBitFormat::Q4_0,
    LowBitFormat::Q4_1,
    LowBitFormat::Q4K,
    LowBitFormat::Q5_0,
    LowBitFormat::Q5_1,
    LowBitFormat::Q5K,
];

/// The ggml type of each format.
fn ggml_type(format: LowBitFormat) -> GgmlDType {
    match format {
        LowBitFormat::Q4_0 => GgmlDType::Q4_0,
        LowBitFormat::Q4_1 => GgmlDType::Q4_1,
        LowBitFormat::Q4K => GgmlDType::Q4K,
        LowBitFormat::Q5_0 => GgmlDType::Q5_0,
        LowBitFormat::Q5_1 => GgmlDType::Q5_1,
        LowBitFormat::Q5K => GgmlDType::Q5K,
    }
}

/// GGUF blocks of `n` rows of `k` values with random nibbles, fifth bits and scales (Q4_K and
/// Q5_K: random values quantized by candle, which uses every scale and min bit).
fn random_blocks(format: LowBitFormat, n: usize, k: usize, seed: u64) -> Vec<u8> {
    if matches!(format, LowBitFormat::Q4K | LowBitFormat::Q5K) {
        let v: Vec<f32> = values(seed, n * k).iter().map(|x| x * x * x).collect();
        let t = candle_core::Tensor::from_vec(v, (n, k), &candle_core::Device::Cpu).unwrap();
        let q = candle_core::quantized::QTensor::quantize(&t, ggml_type(format)).unwrap();
        return q.data().unwrap().into_owned();
    }
    let v = values(seed, n * k / BLOCK * format.block_bytes());
    let mut out = Vec::new();
    for chunk in v.chunks(format.block_bytes()) {
        let d = half::f16::from_f32(0.01 + 0.02 * chunk[0].abs());
        out.extend_from_slice(&d.to_le_bytes());
        let mut header = 2;
        if matches!(format, LowBitFormat::Q4_1 | LowBitFormat::Q5_1) {
            out.extend_from_slice(&half::f16::from_f32(-0.1 * chunk[1]).to_le_bytes());
            header = 4;
        }
        // The fifth bits (Q5_0, Q5_1) and the nibbles.
        for &x in &chunk[header..] {
            out.push(((x + 1.0) * 127.9) as u8);
        }
    }
    out
}

use candle_core::quantized::GgmlDType;

/// Every block of 32 of `n` rows of `k` values: `(d, m, q)`, as `LowBitFormat::block` reads it.
fn decode(format: LowBitFormat, bytes: &[u8], n: usize, k: usize) -> Vec<(f32, f32, [u8; 32])> {
    let row_bytes = k / format.block_values() * format.block_bytes();
    let mut out = Vec::new();
    for row in bytes.chunks(row_bytes).take(n) {
        for b in 0..k / BLOCK {
            let (d, m, nibbles, high) = format.block(row, b);
            // The kernels' chunk layout, read back: chunk j holds 8j..8j+4 low, 8j+4.. high.
            let mut q = [0u8; 32];
            for (j, chunk) in nibbles.chunks().iter().enumerate() {
                for (t, byte) in chunk.to_le_bytes().iter().enumerate() {
                    q[8 * j + t] = byte & 15;
                    q[8 * j + 4 + t] = byte >> 4;
                }
            }
            for (i, v) in q.iter_mut().enumerate() {
                *v |= (((high >> i) & 1) as u8) << 4;
            }
            out.push((d, m, q));
        }
    }
    out
}

/// The weights as f32: `d·q + m` per value.
fn dequantize(format: LowBitFormat, bytes: &[u8], n: usize, k: usize) -> Vec<f32> {
    decode(format, bytes, n, k)
        .iter()
        .flat_map(|(d, m, q)| q.map(|q| d * q as f32 + m))
        .collect()
}

/// The values as read are ggml's: candle's dequantization of the same bytes, bit for bit.
#[test]
fn blocks_are_read_as_ggml_dequantizes_them() {
    for format in FORMATS {
        let dtype = ggml_type(format);
        let (n, k) = (5, 512);
        let bytes = random_blocks(format, n, k, 11);
        let ours = dequantize(format, &bytes, n, k);
        let q = candle_core::quantized::QTensor::new(
            candle_core::quantized::QStorage::from_data(
                std::borrow::Cow::Borrowed(&bytes),
                &candle_core::Device::Cpu,
                dtype,
            )
            .unwrap(),
            (n, k),
        )
        .unwrap();
        let theirs: Vec<f32> = q
            .dequantize(&candle_core::Device::Cpu)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        let differ = ours.iter().zip(&theirs).filter(|(a, b)| a != b).count();
        assert_eq!(differ, 0, "{format:?}: {differ} of {} values differ", n * k);
        // Every value (every nibble, with and without the fifth bit) and both halves of a
        // group occur.
        let qs: std::collections::BTreeSet<u8> = decode(format, &bytes, n, k)
            .iter()
            .flat_map(|b| b.2)
            .collect();
        let levels = if format.five_bits() { 32 } else { 16 };
        assert_eq!(qs.len(), levels, "{format:?}");
    }
}

/// The documented arithmetic, naively: per block `sx · (d · Σ q·qx + m · Σ qx)`, where the
/// AVX2 layout of a K-quant multiplies the integer sum by the 6-bit scale first and then by
/// the super-block's `d`, and takes `m = −dmin · mn` as ggml does.
fn naive(
    layer_w: &[u8],
    (format, layout): (LowBitFormat, LowBitLayout),
    x: &[f32],
    m: usize,
    n: usize,
    k: usize,
    b: &[f32],
) -> Vec<f32> {
    let mut out = vec![0.0; m * n];
    let blocks = decode(format, layer_w, n, k);
    let row_bytes = k / format.block_values() * format.block_bytes();
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
            let mut s = 0.0f32;
            for blk in 0..k / BLOCK {
                let (d, mn, q) = &blocks[c * k / BLOCK + blk];
                let mut dot = 0i32;
                let mut sum = 0i32;
                for j in 0..32 {
                    dot += q[j] as i32 * xq[blk * 32 + j] as i32;
                    sum += xq[blk * 32 + j] as i32;
                }
                if layout == LowBitLayout::Avx2 && format.is_k() {
                    let row = &layer_w[c * row_bytes..][..row_bytes];
                    let (d, dmin, sc, min) = format.k_parts(row, blk);
                    s = ((dot * sc as i32) as f32).mul_add(sx[blk] * d, s);
                    s = (-dmin * min as f32).mul_add(sx[blk] * sum as f32, s);
                } else {
                    s = (dot as f32).mul_add(sx[blk] * d, s);
                    s = mn.mul_add(sx[blk] * sum as f32, s);
                }
            }
            out[i * n + c] = s + b[c];
        }
    }
    out
}

#[test]
fn every_path_matches_the_naive_reference_exactly_and_the_f32_product_closely() {
    for format in FORMATS {
        for (m, n, k) in [
            (1usize, 1usize, 32usize),
            (3, 17, 64),
            (7, 48, 96),
            (13, 64, 576),
            (100, 40, 32),
            (2, 3, 256),
            (5, 33, 768),
            (1, 20, 512),
            (4, 16, 256),
        ] {
            if !k.is_multiple_of(format.block_values()) {
                continue;
            }
            let bytes = random_blocks(format, n, k, 3 + n as u64);
            let b = values(9, n);
            let x = values(1 + m as u64, m * k);
            let w = dequantize(format, &bytes, n, k);
            for layout in [LowBitLayout::Vnni, LowBitLayout::Avx2] {
                let want = naive(&bytes, (format, layout), &x, m, n, k, &b);
                let layer = LowBitLinear::from_parts_in(format, &[&bytes], &b, k, layout).unwrap();
                for level in KernelLevel::ALL {
                    if level > KernelLevel::detected() {
                        continue;
                    }
                    for threads in [1, 2] {
                        let mut got = vec![f32::NAN; m * n];
                        layer.forward(&x, m, &mut got, level, threads, Epilogue::Bias);
                        assert_eq!(got, want, "{format:?} {m}×{n}×{k} on {level}, {layout:?}");
                    }
                }
                // Only the activations are quantized: close to the exact product.
                let rel = relative_error(&want, &x, &w, &b, k);
                assert!(rel < 0.01, "{format:?} {m}×{n}×{k} {layout:?}: {rel}");
            }
        }
    }
}

#[test]
fn each_fifth_bit_layout_gives_every_value_its_own_bit() {
    for layout in [LowBitLayout::Vnni, LowBitLayout::Avx2] {
        let mut seen = [false; 64 * BLOCK_MASKS];
        for j in 0..BLOCK_CHUNKS {
            for h in 0..2 {
                for byte in 0..CHUNK_BYTES {
                    let at = layout.position(j, h, byte);
                    assert!(!seen[at], "{layout:?}: bit {at} twice");
                    seen[at] = true;
                }
            }
        }
        // And `spread` sets the bit `bit` reads back, for every value of every lane.
        for lane in 0..PANEL {
            for v in 0..BLOCK {
                let mut words = [0u64; BLOCK_MASKS];
                layout.spread(1 << v, lane, &mut words);
                let (j, h, byte) = (v / 8, (v % 8) / 4, 4 * lane + v % 4);
                assert_eq!(layout.bit(&words, j, h, byte), 1, "{layout:?} {lane} {v}");
                assert_eq!(words.iter().map(|w| w.count_ones()).sum::<u32>(), 1);
            }
        }
        // And a whole block's bits at once land where each bit alone does.
        let mut state = 0x9E37_79B9_7F4A_7C15u64;
        for lane in 0..PANEL {
            for _ in 0..64 {
                state = state
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                let high = (state >> 32) as u32;
                let mut words = [0u64; BLOCK_MASKS];
                layout.spread(high, lane, &mut words);
                let mut one_by_one = [0u64; BLOCK_MASKS];
                for v in (0..BLOCK).filter(|v| (high >> v) & 1 == 1) {
                    let at = layout.position(v / 8, (v % 8) / 4, 4 * lane + v % 4);
                    one_by_one[at / 64] |= 1 << (at % 64);
                }
                assert_eq!(words, one_by_one, "{layout:?} lane {lane} high {high:#x}");
            }
        }
    }
}

/// A layer of no output columns (no panels) runs and writes nothing, in every layout.
#[test]
fn a_layer_without_outputs_runs() {
    for layout in [LowBitLayout::Vnni, LowBitLayout::Avx2] {
        for (format, k) in [(LowBitFormat::Q4K, 256), (LowBitFormat::Q5_0, 32)] {
            let layer = LowBitLinear::from_parts_in(format, &[&[]], &[], k, layout).unwrap();
            let mut out = vec![];
            for level in levels() {
                layer.forward(&vec![0.5; 3 * k], 3, &mut out, level, 2, Epilogue::Bias);
            }
        }
    }
}

#[test]
fn bad_shapes_are_errors() {
    assert!(LowBitLinear::from_blocks(LowBitFormat::Q4_1, &[0; 20], &[0.0], 16).is_err());
    assert!(LowBitLinear::from_blocks(LowBitFormat::Q4_1, &[0; 19], &[0.0], 32).is_err());
    assert!(LowBitLinear::from_blocks(LowBitFormat::Q4_0, &[0; 18], &[0.0], 32).is_ok());
    // Q4_K rows are whole super-blocks of 256.
    assert!(LowBitLinear::from_blocks(LowBitFormat::Q4K, &[0; 144], &[0.0], 32).is_err());
    assert!(LowBitLinear::from_blocks(LowBitFormat::Q4K, &[0; 143], &[0.0], 256).is_err());
    assert!(LowBitLinear::from_blocks(LowBitFormat::Q4K, &[0; 144], &[0.0], 256).is_ok());
    assert!(LowBitLinear::from_blocks(LowBitFormat::Q5_0, &[0; 22], &[0.0], 32).is_ok());
    assert!(LowBitLinear::from_blocks(LowBitFormat::Q5_0, &[0; 18], &[0.0], 32).is_err());
    assert!(LowBitLinear::from_blocks(LowBitFormat::Q5_1, &[0; 24], &[0.0], 32).is_ok());
    assert!(LowBitLinear::from_blocks(LowBitFormat::Q5K, &[0; 176], &[0.0], 256).is_ok());
    assert!(LowBitLinear::from_blocks(LowBitFormat::Q5K, &[0; 144], &[0.0], 256).is_err());
    // A NaN or infinite scale (or Q4_1's offset) is refused, not run.
    for bad in [f32::NAN, f32::INFINITY] {
        let bad = half::f16::from_f32(bad).to_le_bytes();
        let mut q4_0 = [0u8; 18];
        q4_0[..2].copy_from_slice(&bad);
        let err = LowBitLinear::from_blocks(LowBitFormat::Q4_0, &q4_0, &[0.0], 32)
            .err()
            .unwrap();
        assert!(err.contains("NaN or infinite"), "{err}");
        let mut q4_1 = [0u8; 20];
        q4_1[2..4].copy_from_slice(&bad);
        assert!(LowBitLinear::from_blocks(LowBitFormat::Q4_1, &q4_1, &[0.0], 32).is_err());
    }
}

/// A Q5_K sub-block's fifth bits, gathered a word at a time, are bit `j` of `qh[l]` for value
/// `l` of sub-block `j`, as ggml's `dequantize_row_q5_K` reads them one at a time.
#[test]
fn q5_k_fifth_bits_are_read_as_ggml_reads_them() {
    let bytes = LowBitFormat::Q5K.block_bytes();
    let mut state = 0x2545_F491_4F6C_DD1Du64;
    let row: Vec<u8> = (0..2 * bytes)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state as u8
        })
        .collect();
    for b in 0..2 * 8 {
        let (sb, j) = (b / 8, b % 8);
        let qh = &row[sb * bytes + 16..][..32];
        let want = (0..BLOCK).fold(0u32, |h, l| h | u32::from((qh[l] >> j) & 1) << l);
        assert_eq!(LowBitFormat::Q5K.quants(&row, b).1, want, "sub-block {b}");
    }
}
