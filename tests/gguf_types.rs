//! Every GGUF tensor type a Llama-family file may hold loads and runs: Q4_0, Q4_1, Q5_0,
//! Q5_1, Q8_0, Q2_K … Q6_K, F16, BF16 and F32, each for all weights of a file, and a mix
//! like llama.cpp's Q4_K_M (Q6_K for `attn_v` and `ffn_down`, Q4_K elsewhere).
//!
//! A tiny Llama (sizes that k-quants' blocks of 256 divide) is written once per type with
//! candle's quantizer, and once more as F32 holding exactly the values that type stores
//! (candle's dequantization). Loaded in f32, the two files must give the same logits: the
//! loader reads each type's blocks, shapes and rows (the embedding table stays as stored and
//! is dequantized row by row) as candle stores them. The default `auto` load of the quantized
//! file (Q4_0, Q4_1, Q4_K, Q5_0, Q5_1 and Q5_K blocks kept, Q6_K too on CPUs without VNNI,
//! others in int8) must stay close (cosine ≥ 0.99), prefill and through the KV cache. Nothing
//! is downloaded.

mod common;

use std::path::{Path, PathBuf};

use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::{Device, Tensor};
use common::cosine;
use common::gguf::{vocabulary, TinyLlama};
use zerobatch::generate::decoder::{Decoder, StepInput};
use zerobatch::generate::kv_cache::KvCache;
use zerobatch::generate::llama::Llama;
use zerobatch::kernels::{sixbit, Dtype, KernelLevel};

/// The model's sizes: the default tiny Llama's, which k-quants' blocks of 256 divide.
const SPEC: TinyLlama = TinyLlama::DEFAULT;

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
    let metadata = SPEC.metadata(&tokens);
    let mut quantized = Vec::new();
    let mut stored = Vec::new();
    for (name, shape, v) in SPEC.weights(tokens.len()) {
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
    let mut paths = Vec::new();
    for (suffix, tensors) in [("", &quantized), ("-stored-f32", &stored)] {
        let path = dir.join(format!("tiny-{variant}{suffix}.gguf"));
        common::gguf::write(&path, &metadata, tensors);
        paths.push(path);
    }
    (paths[0].clone(), paths[1].clone())
}

/// Logits of `ids` as one prefill, then of each of `more` through the KV cache.
fn run(model: &Llama, ids: &[u32], more: &[u32]) -> Vec<Vec<f32>> {
    let mut cache = KvCache::with_capacity(model.config().cache_shape(), SPEC.context);
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
    let dir = common::scratch_dir("zb-gguf-types");
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
        // The serving default: 4- and 5-bit blocks kept as stored, Q6_K too where its kernel
        // is preferred (CPUs without VNNI), every other type in int8.
        let (served, _) = Llama::load(&quantized, Dtype::Int8, true, level, 2).unwrap();
        let formats: std::collections::BTreeMap<_, _> =
            served.weight_formats().into_iter().collect();
        let six = if sixbit::preferred() { "q6_k" } else { "int8" };
        let kept = match variant {
            "q4_0" | "q4_1" | "q4_k" | "q5_0" | "q5_1" | "q5_k" => variant.to_string(),
            "q6_k" => six.to_string(),
            // Q6_K's attn_v and ffn_down are Q6_K (or int8); gate and up stay Q4_K.
            "q4_k_m" => format!("q4_k+{six}"),
            _ => "int8".to_string(),
        };
        assert_eq!(formats["feed_forward"], kept, "{variant}");
        if variant == "q4_k_m" {
            // Q and K stay Q4_K beside the Q6_K V: the fused QKV is stacked.
            assert_eq!(formats["attention"], format!("q4_k+{six}"));
        }
        let got = run(&served, &ids, &more);
        for (i, (g, w)) in got.iter().zip(&want).enumerate() {
            let c = cosine(g, w);
            assert!(c >= 0.99, "{variant} as served, output {i}: cosine {c}");
        }
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

/// A weight holding a NaN is refused at load with its name, whichever path converts it (int8
/// a row at a time, f32 whole), rather than running and answering NaN.
#[test]
fn a_weight_with_a_nan_is_refused_at_load() {
    let dir = common::scratch_dir("zb-gguf-nan");
    let tokens = vocabulary();
    let tensors: Vec<(String, QTensor)> = SPEC
        .weights(tokens.len())
        .into_iter()
        .map(|(name, shape, mut v)| {
            if name == "blk.0.ffn_up.weight" {
                let middle = v.len() / 2;
                v[middle] = f32::NAN;
            }
            let t = Tensor::from_vec(v, shape.as_slice(), &Device::Cpu).unwrap();
            (name, QTensor::quantize(&t, GgmlDType::F32).unwrap())
        })
        .collect();
    let path = dir.join("tiny-nan.gguf");
    common::gguf::write(&path, &SPEC.metadata(&tokens), &tensors);
    for dtype in [Dtype::Int8, Dtype::F32] {
        let err = Llama::load(&path, dtype, true, KernelLevel::detected(), 2)
            .err()
            .unwrap_or_else(|| panic!("{dtype:?}: a NaN weight loaded"))
            .to_string();
        assert!(
            err.contains("ffn_up") && err.contains("NaN"),
            "{dtype:?}: {err}"
        );
    }
    std::fs::remove_dir_all(&dir).unwrap();
}
