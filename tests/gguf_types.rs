//! Every GGUF tensor type a Llama-family file may hold loads and runs: Q4_0, Q4_1, Q5_0,
//! Q5_1, Q8_0, Q2_K … Q6_K, F16, BF16 and F32, each for all weights of a file, and a mix
//! like llama.cpp's Q4_K_M (Q6_K for `attn_v` and `ffn_down`, Q4_K elsewhere).
//!
//! A tiny Llama (sizes that k-quants' blocks of 256 divide) is written once per type with
//! candle's quantizer, and once more as F32 holding exactly the values that type stores
//! (candle's dequantization). Loaded in f32, the two files must give the same logits: the
//! loader reads each type's blocks, shapes and rows (the embedding table stays as stored and
//! is dequantized row by row) as candle stores them. The default `auto` load of the quantized
//! file (4-bit blocks kept, others in int8) must stay close (cosine ≥ 0.99), prefill and
//! through the KV cache. Nothing is downloaded.

mod common;

use std::path::{Path, PathBuf};

use candle_core::quantized::gguf_file::{self, Value};
use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::{Device, Tensor};
use common::cosine;
use zerobatch::generate::decoder::{KvCache, StepInput};
use zerobatch::generate::llama::Llama;
use zerobatch::kernels::{Dtype, KernelLevel};

const HIDDEN: usize = 256;
const FF: usize = 512;
const HEADS: usize = 4;
const KV_HEADS: usize = 2;
const LAYERS: usize = 2;
const CONTEXT: usize = 64;

/// Deterministic values in [-1, 1).
fn values(seed: u64, n: usize, scale: f32) -> Vec<f32> {
    let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            ((s >> 40) as f32 / (1u64 << 23) as f32 - 1.0) * scale
        })
        .collect()
}

/// The vocabulary: 62 printable ASCII characters, `Ġ` and an end-of-text control token.
fn vocabulary() -> Vec<String> {
    let mut tokens: Vec<String> = (33u8..=94).map(|b| (b as char).to_string()).collect();
    tokens.extend(["Ġ", "<|endoftext|>"].map(String::from));
    tokens
}

/// (name, shape [rows, k], values) of every tensor.
fn weights(vocab: usize) -> Vec<(String, Vec<usize>, Vec<f32>)> {
    let hd = HIDDEN / HEADS;
    let mut w = vec![(
        "token_embd.weight".to_string(),
        vec![vocab, HIDDEN],
        values(1, vocab * HIDDEN, 1.0),
    )];
    for l in 0..LAYERS {
        let seed = 100 * (l as u64 + 1);
        let norm = |s| values(s, HIDDEN, 0.1).iter().map(|v| 1.0 + v).collect();
        let parts: [(&str, usize, usize, f32); 7] = [
            ("attn_q", HEADS * hd, HIDDEN, 0.1),
            ("attn_k", KV_HEADS * hd, HIDDEN, 0.1),
            ("attn_v", KV_HEADS * hd, HIDDEN, 0.1),
            ("attn_output", HIDDEN, HEADS * hd, 0.1),
            ("ffn_gate", FF, HIDDEN, 0.1),
            ("ffn_up", FF, HIDDEN, 0.1),
            ("ffn_down", HIDDEN, FF, 0.07),
        ];
        w.push((
            format!("blk.{l}.attn_norm.weight"),
            vec![HIDDEN],
            norm(seed),
        ));
        w.push((
            format!("blk.{l}.ffn_norm.weight"),
            vec![HIDDEN],
            norm(seed + 1),
        ));
        for (j, (name, rows, k, scale)) in parts.into_iter().enumerate() {
            w.push((
                format!("blk.{l}.{name}.weight"),
                vec![rows, k],
                values(seed + 2 + j as u64, rows * k, scale),
            ));
        }
    }
    w.push((
        "output_norm.weight".to_string(),
        vec![HIDDEN],
        values(7, HIDDEN, 0.1).iter().map(|v| 1.0 + v).collect(),
    ));
    w
}

/// The type `variant` gives tensor `name` (2-D tensors only; norms stay F32).
fn type_of(variant: &str, name: &str, all: GgmlDType) -> GgmlDType {
    if variant == "q4_k_m" {
        if name.contains("attn_v") || name.contains("ffn_down") {
            GgmlDType::Q6K
        } else {
            GgmlDType::Q4K
        }
    } else {
        all
    }
}

/// Writes the quantized file and the F32 file of its stored values.
fn write_pair(dir: &Path, variant: &str, all: GgmlDType) -> (PathBuf, PathBuf) {
    let tokens = vocabulary();
    let vocab = tokens.len();
    let strings = |v: Vec<String>| Value::Array(v.into_iter().map(Value::String).collect());
    let u32v = |n: usize| Value::U32(n as u32);
    let mut types = vec![Value::I32(1); vocab];
    types[vocab - 1] = Value::I32(3);
    let metadata: Vec<(&str, Value)> = vec![
        ("general.architecture", Value::String("llama".into())),
        ("llama.block_count", u32v(LAYERS)),
        ("llama.context_length", u32v(CONTEXT)),
        ("llama.embedding_length", u32v(HIDDEN)),
        ("llama.feed_forward_length", u32v(FF)),
        ("llama.attention.head_count", u32v(HEADS)),
        ("llama.attention.head_count_kv", u32v(KV_HEADS)),
        ("llama.attention.layer_norm_rms_epsilon", Value::F32(1e-5)),
        ("tokenizer.ggml.model", Value::String("gpt2".into())),
        ("tokenizer.ggml.pre", Value::String("default".into())),
        ("tokenizer.ggml.tokens", strings(tokens)),
        ("tokenizer.ggml.merges", strings(Vec::new())),
        ("tokenizer.ggml.token_type", Value::Array(types)),
        ("tokenizer.ggml.eos_token_id", u32v(vocab - 1)),
    ];
    let mut quantized = Vec::new();
    let mut stored = Vec::new();
    for (name, shape, v) in weights(vocab) {
        let t = Tensor::from_vec(v, shape.as_slice(), &Device::Cpu).unwrap();
        let dtype = if shape.len() == 2 {
            type_of(variant, &name, all)
        } else {
            GgmlDType::F32
        };
        let q = QTensor::quantize(&t, dtype).unwrap();
        let back = q.dequantize(&Device::Cpu).unwrap();
        stored.push((
            name.clone(),
            QTensor::quantize(&back, GgmlDType::F32).unwrap(),
        ));
        quantized.push((name, q));
    }
    let meta: Vec<(&str, &Value)> = metadata.iter().map(|(k, v)| (*k, v)).collect();
    let mut paths = Vec::new();
    for (suffix, tensors) in [("", &quantized), ("-stored-f32", &stored)] {
        let path = dir.join(format!("tiny-{variant}{suffix}.gguf"));
        let refs: Vec<(&str, &QTensor)> = tensors.iter().map(|(n, t)| (n.as_str(), t)).collect();
        gguf_file::write(&mut std::fs::File::create(&path).unwrap(), &meta, &refs).unwrap();
        paths.push(path);
    }
    (paths[0].clone(), paths[1].clone())
}

/// Logits of `ids` as one prefill, then of each of `more` through the KV cache.
fn run(model: &Llama, ids: &[u32], more: &[u32]) -> Vec<Vec<f32>> {
    let mut cache = KvCache::with_capacity(model.config().cache_shape(), CONTEXT);
    let mut out = model.step(&mut [StepInput {
        cache: &mut cache,
        tokens: ids,
        want_logits: true,
    }]);
    for t in more {
        out.extend(model.step(&mut [StepInput {
            cache: &mut cache,
            tokens: std::slice::from_ref(t),
            want_logits: true,
        }]));
    }
    out
}

#[test]
fn every_gguf_tensor_type_loads_as_stored_and_runs() {
    let dir = std::env::temp_dir().join(format!("zb-gguf-types-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let ids = [3u32, 17, 40, 62, 5, 9, 33];
    let more = [12u32, 0, 50];
    let level = KernelLevel::detected();
    let variants = [
        ("q4_0", GgmlDType::Q4_0),
        ("q4_1", GgmlDType::Q4_1),
        ("q5_0", GgmlDType::Q5_0),
        ("q5_1", GgmlDType::Q5_1),
        ("q8_0", GgmlDType::Q8_0),
        ("q2_k", GgmlDType::Q2K),
        ("q3_k", GgmlDType::Q3K),
        ("q4_k", GgmlDType::Q4K),
        ("q5_k", GgmlDType::Q5K),
        ("q6_k", GgmlDType::Q6K),
        ("f16", GgmlDType::F16),
        ("bf16", GgmlDType::BF16),
        ("f32", GgmlDType::F32),
        ("q4_k_m", GgmlDType::Q4K),
    ];
    for (variant, dtype) in variants {
        let (quantized, stored) = write_pair(&dir, variant, dtype);
        let (reference, _) = Llama::load(&stored, Dtype::F32, false, level, 2).unwrap();
        let want = run(&reference, &ids, &more);
        let (exact, _) = Llama::load(&quantized, Dtype::F32, false, level, 2).unwrap();
        let got = run(&exact, &ids, &more);
        for (g, w) in got.iter().zip(&want) {
            let diff = g
                .iter()
                .zip(w)
                .map(|(a, b)| (a - b).abs())
                .fold(0.0, f32::max);
            assert!(diff <= 1e-5, "{variant} in f32: logits differ by {diff}");
        }
        // The serving default: Q4_0/Q4_1 kept as stored, every other type in int8.
        let (served, _) = Llama::load(&quantized, Dtype::Int8, true, level, 2).unwrap();
        let got = run(&served, &ids, &more);
        for (i, (g, w)) in got.iter().zip(&want).enumerate() {
            let c = cosine(g, w);
            assert!(c >= 0.99, "{variant} as served, output {i}: cosine {c}");
        }
    }
    std::fs::remove_dir_all(&dir).unwrap();
}
