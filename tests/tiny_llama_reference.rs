//! Our Llama forward pass (`zerobatch::generate::llama`) against Hugging Face transformers'
//! `LlamaForCausalLM`, on a tiny model both sides generate from the same rule: logits within
//! 1e-4 in f32, for whole prompts, for every prefix, for chunked prefill followed by one token
//! at a time through the KV cache, and for many sequences batched in one step (continuous
//! batching: prefill chunks and single tokens of different sequences side by side).
//!
//! The test writes the model as GGUF files with candle's writer, the way llama.cpp's converter
//! lays a Hugging Face checkpoint out (Q and K rows permuted for its adjacent-pair RoPE, tied
//! embeddings without `output.weight`): one all F32, one with every 2-D weight Q8_0. The
//! reference (tests/data/tiny_llama_reference.json) is made by scripts/make-llama-reference.py,
//! which documents the model, the weight generator and how Q8_0 is replicated; for the Q8_0
//! file transformers ran on the dequantized weights. The generated weights are first checked
//! bit for bit against the script's (FNV-1a of every tensor), so a mismatch there is not
//! mistaken for a forward-pass difference. The packed int8 path (`Dtype::Int8`) is held to
//! cosine ≥ 0.99 on the same comparisons. Nothing is downloaded; the whole file runs in well
//! under a second.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use candle_core::quantized::gguf_file::{self, Value};
use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::{Device, Tensor};
use common::{cosine, fnv1a64, max_abs_diff, SplitMix64};
use serde::Deserialize;
use zerobatch::generate::decoder::StepInput;
use zerobatch::generate::gguf::GgufFile;
use zerobatch::generate::kv_cache::KvCache;
use zerobatch::generate::llama::Llama;
use zerobatch::generate::tokenizer::GenTokenizer;
use zerobatch::kernels::{Dtype, KernelLevel};

/// Largest |difference| accepted between our f32 logits and transformers'.
const TOLERANCE: f32 = 1e-4;
/// Lowest cosine accepted for int8 (activations quantized per block of 32) against the
/// reference.
const INT8_MIN_COSINE: f64 = 0.99;

#[derive(Deserialize)]
struct Reference {
    generator_versions: String,
    config: Config,
    weight_fnv1a64: BTreeMap<String, BTreeMap<String, String>>,
    hf_incremental_max_diff: f32,
    prompts: Vec<Prompt>,
}

#[derive(Deserialize, Debug, PartialEq)]
struct Config {
    vocab: usize,
    hidden: usize,
    heads: usize,
    kv_heads: usize,
    head_dim: usize,
    ff: usize,
    layers: usize,
    rms_eps: f32,
    rope_theta: f32,
    context: usize,
}

#[derive(Deserialize)]
struct Prompt {
    ids: Vec<u32>,
    /// Per variant ("f32", "q8_0"): the logits after each position.
    logits: BTreeMap<String, Vec<Vec<f32>>>,
}

/// The model of scripts/make-llama-reference.py (checked against the JSON's copy).
const CONFIG: Config = Config {
    vocab: 100,
    hidden: 64,
    heads: 4,
    kv_heads: 2,
    head_dim: 16,
    ff: 128,
    layers: 2,
    rms_eps: 1e-5,
    rope_theta: 50_000.0,
    context: 64,
};

const SCALE_EMBD: f32 = 1.0;
const SCALE_ATTN: f32 = 0.25;
const SCALE_FFN_IN: f32 = 0.25;
const SCALE_FFN_DOWN: f32 = 0.15;
const NORM_SPREAD: f32 = 0.1;
const PROMPT_SEED: u64 = 1000;

fn reference() -> &'static Reference {
    static R: OnceLock<Reference> = OnceLock::new();
    R.get_or_init(|| {
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/data/tiny_llama_reference.json"
        );
        let r: Reference = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
        assert_eq!(r.config, CONFIG, "the reference was made for another model");
        r
    })
}

/// One generated tensor: its GGUF name, shape (PyTorch order) and values (Hugging Face
/// layout).
struct Generated {
    name: String,
    shape: Vec<usize>,
    values: Vec<f32>,
}

/// Every tensor, seed = index in this order (see the script's docstring).
fn generate_weights() -> Vec<Generated> {
    let c = &CONFIG;
    let (d, ff) = (c.hidden, c.ff);
    let (qw, kvw) = (c.heads * c.head_dim, c.kv_heads * c.head_dim);
    // (name, shape, norm?, scale)
    let mut specs: Vec<(String, Vec<usize>, bool, f32)> = vec![(
        "token_embd.weight".into(),
        vec![c.vocab, d],
        false,
        SCALE_EMBD,
    )];
    for l in 0..c.layers {
        let t = |s: &str| format!("blk.{l}.{s}.weight");
        specs.extend([
            (t("attn_norm"), vec![d], true, NORM_SPREAD),
            (t("attn_q"), vec![qw, d], false, SCALE_ATTN),
            (t("attn_k"), vec![kvw, d], false, SCALE_ATTN),
            (t("attn_v"), vec![kvw, d], false, SCALE_ATTN),
            (t("attn_output"), vec![d, qw], false, SCALE_ATTN),
            (t("ffn_norm"), vec![d], true, NORM_SPREAD),
            (t("ffn_gate"), vec![ff, d], false, SCALE_FFN_IN),
            (t("ffn_up"), vec![ff, d], false, SCALE_FFN_IN),
            (t("ffn_down"), vec![d, ff], false, SCALE_FFN_DOWN),
        ]);
    }
    specs.push(("output_norm.weight".into(), vec![d], true, NORM_SPREAD));
    specs
        .into_iter()
        .enumerate()
        .map(|(seed, (name, shape, norm, scale))| {
            let mut rng = SplitMix64(seed as u64);
            let count: usize = shape.iter().product();
            let values = (0..count)
                .map(|_| {
                    let r = (rng.next() >> 40) as f32 / 16_777_216.0 * 2.0 - 1.0;
                    if norm {
                        1.0 + r * scale
                    } else {
                        r * scale
                    }
                })
                .collect();
            Generated {
                name,
                shape,
                values,
            }
        })
        .collect()
}

fn prompt_ids(i: usize, n: usize) -> Vec<u32> {
    let mut rng = SplitMix64(PROMPT_SEED + i as u64);
    (0..n)
        .map(|_| (rng.next() % CONFIG.vocab as u64) as u32)
        .collect()
}

/// llama.cpp's converter permutation of Q/K rows (`n_head` heads of `rows / n_head`):
/// `W.reshape(n_head, 2, hd/2, k).swapaxes(1, 2).reshape(W.shape)`, so that the halves
/// Hugging Face rotates together become adjacent pairs.
fn permute_qk(w: &[f32], n_head: usize, k: usize) -> Vec<f32> {
    let rows = w.len() / k;
    let hd = rows / n_head;
    let mut out = Vec::with_capacity(w.len());
    for h in 0..n_head {
        for i in 0..hd / 2 {
            for j in 0..2 {
                let src = h * hd + j * (hd / 2) + i;
                out.extend_from_slice(&w[src * k..(src + 1) * k]);
            }
        }
    }
    out
}

fn quantize(values: &[f32], shape: &[usize], dtype: GgmlDType) -> QTensor {
    let t = Tensor::from_slice(values, shape, &Device::Cpu).unwrap();
    QTensor::quantize(&t, dtype).unwrap()
}

/// `values` as Q8_0 stores them (quantized by candle, dequantized).
fn q8_0_roundtrip(values: &[f32], shape: &[usize]) -> Vec<f32> {
    quantize(values, shape, GgmlDType::Q8_0)
        .dequantize(&Device::Cpu)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap()
}

/// The vocabulary: GPT-2's byte-level characters for the printable ASCII bytes, space (Ġ)
/// and newline (Ċ), three merges, and an end-of-text control token (BOS and EOS).
fn vocabulary() -> (Vec<String>, Vec<String>, Vec<i32>) {
    let mut tokens: Vec<String> = (33u8..=126).map(|b| (b as char).to_string()).collect();
    tokens.extend(["Ġ", "Ċ", "Ġt", "he", "Ġthe", "<|endoftext|>"].map(String::from));
    let merges = ["Ġ t", "h e", "Ġt he"].map(String::from).to_vec();
    let mut types = vec![1; tokens.len()];
    *types.last_mut().unwrap() = 3;
    assert_eq!(tokens.len(), CONFIG.vocab);
    (tokens, merges, types)
}

/// Writes the model as GGUF: every tensor F32, or the 2-D ones Q8_0 when `q8_0`.
fn write_gguf(path: &Path, weights: &[Generated], q8_0: bool) {
    let c = &CONFIG;
    let (tokens, merges, types) = vocabulary();
    let strings = |v: Vec<String>| Value::Array(v.into_iter().map(Value::String).collect());
    let u32v = |n: usize| Value::U32(n as u32);
    let metadata: Vec<(&str, Value)> = vec![
        ("general.architecture", Value::String("llama".into())),
        ("general.name", Value::String("tiny-llama-reference".into())),
        ("llama.block_count", u32v(c.layers)),
        ("llama.context_length", u32v(c.context)),
        ("llama.embedding_length", u32v(c.hidden)),
        ("llama.feed_forward_length", u32v(c.ff)),
        ("llama.attention.head_count", u32v(c.heads)),
        ("llama.attention.head_count_kv", u32v(c.kv_heads)),
        ("llama.rope.freq_base", Value::F32(c.rope_theta)),
        (
            "llama.attention.layer_norm_rms_epsilon",
            Value::F32(c.rms_eps),
        ),
        ("llama.rope.dimension_count", u32v(c.head_dim)),
        ("llama.vocab_size", u32v(c.vocab)),
        ("tokenizer.ggml.model", Value::String("gpt2".into())),
        ("tokenizer.ggml.pre", Value::String("default".into())),
        ("tokenizer.ggml.tokens", strings(tokens)),
        ("tokenizer.ggml.merges", strings(merges)),
        (
            "tokenizer.ggml.token_type",
            Value::Array(types.into_iter().map(Value::I32).collect()),
        ),
        ("tokenizer.ggml.bos_token_id", u32v(c.vocab - 1)),
        ("tokenizer.ggml.eos_token_id", u32v(c.vocab - 1)),
        ("tokenizer.ggml.add_bos_token", Value::Bool(false)),
    ];
    let tensors: Vec<(String, QTensor)> = weights
        .iter()
        .map(|g| {
            let k = *g.shape.last().unwrap();
            let values = if g.name.ends_with("attn_q.weight") {
                permute_qk(&g.values, c.heads, k)
            } else if g.name.ends_with("attn_k.weight") {
                permute_qk(&g.values, c.kv_heads, k)
            } else {
                g.values.clone()
            };
            let dtype = if q8_0 && g.shape.len() == 2 {
                GgmlDType::Q8_0
            } else {
                GgmlDType::F32
            };
            (g.name.clone(), quantize(&values, &g.shape, dtype))
        })
        .collect();
    assert!(
        !tensors.iter().any(|(n, _)| n == "output.weight"),
        "tied embeddings"
    );
    let meta_refs: Vec<(&str, &Value)> = metadata.iter().map(|(k, v)| (*k, v)).collect();
    let tensor_refs: Vec<(&str, &QTensor)> = tensors.iter().map(|(n, t)| (n.as_str(), t)).collect();
    let mut file = std::fs::File::create(path).unwrap();
    gguf_file::write(&mut file, &meta_refs, &tensor_refs).unwrap();
}

/// The two GGUF files, written once per test binary: ("f32", path), ("q8_0", path).
fn model_files() -> &'static [(&'static str, PathBuf); 2] {
    static FILES: OnceLock<[(&'static str, PathBuf); 2]> = OnceLock::new();
    FILES.get_or_init(|| {
        let dir = common::scratch_dir("zerobatch-tiny-llama");
        let weights = generate_weights();
        let files = [
            ("f32", dir.join("tiny-llama-f32.gguf")),
            ("q8_0", dir.join("tiny-llama-q8_0.gguf")),
        ];
        for (variant, path) in &files {
            write_gguf(path, &weights, *variant == "q8_0");
        }
        files
    })
}

/// The comparisons of one run: every one must be within the tolerance; the largest
/// difference and the lowest cosine are reported.
struct Checker {
    label: String,
    max_diff: f32,
    worst: String,
    min_cosine: f64,
    count: usize,
}

impl Checker {
    fn new(label: String) -> Self {
        Self {
            label,
            max_diff: 0.0,
            worst: String::new(),
            min_cosine: 1.0,
            count: 0,
        }
    }

    /// Compares logits to the reference; exact (f32) runs must be within TOLERANCE, int8
    /// runs above INT8_MIN_COSINE.
    fn check(&mut self, what: &str, got: &[f32], want: &[f32], exact: bool) {
        let d = max_abs_diff(got, want);
        let c = cosine(got, want);
        self.count += 1;
        if d > self.max_diff {
            self.max_diff = d;
            self.worst = what.to_string();
        }
        self.min_cosine = self.min_cosine.min(c);
        if exact {
            assert!(
                d <= TOLERANCE,
                "{}: {what}: logits differ from transformers' by up to {d} (cosine {c}); \
                 allowed {TOLERANCE}",
                self.label
            );
        } else {
            assert!(
                c >= INT8_MIN_COSINE,
                "{}: {what}: cosine {c} with transformers' logits (max abs diff {d}); \
                 need {INT8_MIN_COSINE}",
                self.label
            );
        }
    }

    fn report(&self) {
        eprintln!(
            "{}: {} comparisons, max abs diff {:.3e} ({}), lowest cosine {:.7}",
            self.label, self.count, self.max_diff, self.worst, self.min_cosine
        );
    }
}

fn new_cache(model: &Llama) -> KvCache {
    KvCache::with_capacity(model.config().cache_shape(), CONFIG.context)
}

/// One sequence alone: `tokens` from an empty cache, the last position's logits.
fn run_alone(model: &Llama, tokens: &[u32]) -> Vec<f32> {
    let mut cache = new_cache(model);
    let mut out = model.step(&mut [StepInput {
        cache: &mut cache,
        tokens,
        want_logits: true,
    }]);
    assert_eq!(out.len(), 1);
    assert_eq!(cache.len(), tokens.len());
    out.pop().unwrap()
}

/// How a prompt of `n` tokens is fed step by step: its first ceil(n/2) tokens in two chunks
/// (one when that is a single token), then one token at a time. Returns the chunk ends.
fn schedule(n: usize) -> Vec<usize> {
    let prefill = n.div_ceil(2);
    let mut ends = vec![prefill.div_ceil(2), prefill];
    ends.dedup();
    ends.extend(prefill + 1..=n);
    ends
}

/// (a), (b), (c) for one file loaded as `dtype` on `threads` threads; `exact` for f32.
fn check_model(variant: &str, path: &Path, dtype: Dtype, threads: usize) -> Checker {
    let r = reference();
    let level = KernelLevel::detected();
    let (model, _file) = Llama::load(path, dtype, false, level, threads).unwrap();
    let c = model.config();
    assert_eq!(
        (c.vocab, c.n_embd, c.n_head, c.n_head_kv, c.head_dim, c.n_ff),
        (
            CONFIG.vocab,
            CONFIG.hidden,
            CONFIG.heads,
            CONFIG.kv_heads,
            CONFIG.head_dim,
            CONFIG.ff
        )
    );
    assert_eq!((c.n_layer, c.context), (CONFIG.layers, CONFIG.context));
    assert_eq!(
        (c.rope_base, c.rms_eps),
        (CONFIG.rope_theta, CONFIG.rms_eps)
    );
    let exact = dtype == Dtype::F32;
    let mut ck = Checker::new(format!(
        "{variant} file as {dtype}, {level}, {threads} thread(s)"
    ));
    let want = |p: &Prompt, pos: usize| -> Vec<f32> { p.logits[variant][pos].clone() };

    for (i, p) in r.prompts.iter().enumerate() {
        let n = p.ids.len();
        assert_eq!(p.logits[variant].len(), n);
        // (a) The whole prompt in one step, then every shorter prefix alone (fresh caches):
        // the logits after each position of a plain prefill.
        for len in (1..=n).rev() {
            let got = run_alone(&model, &p.ids[..len]);
            ck.check(
                &format!("prompt {i} ({n} tokens), prefix of {len} in one step"),
                &got,
                &want(p, len - 1),
                exact,
            );
        }
        // (b) Chunked prefill, then one token at a time through the KV cache. The first
        // chunk asks for no logits (as the engine does for prompt chunks but the last).
        let mut cache = new_cache(&model);
        let mut start = 0;
        for (s, &end) in schedule(n).iter().enumerate() {
            let want_logits = !(s == 0 && end < n);
            let out = model.step(&mut [StepInput {
                cache: &mut cache,
                tokens: &p.ids[start..end],
                want_logits,
            }]);
            assert_eq!(cache.len(), end);
            if want_logits {
                assert_eq!(out.len(), 1);
                ck.check(
                    &format!(
                        "prompt {i} ({n} tokens), tokens {start}..{end} after a cache of {start}"
                    ),
                    &out[0],
                    &want(p, end - 1),
                    exact,
                );
            } else {
                assert!(
                    out.is_empty(),
                    "logits returned for an input that wanted none"
                );
            }
            start = end;
        }
    }

    // (c) Every prompt in one step: each gets its own logits, as alone.
    let mut caches: Vec<KvCache> = r.prompts.iter().map(|_| new_cache(&model)).collect();
    let mut inputs: Vec<StepInput> = caches
        .iter_mut()
        .zip(&r.prompts)
        .map(|(cache, p)| StepInput {
            cache,
            tokens: &p.ids,
            want_logits: true,
        })
        .collect();
    let out = model.step(&mut inputs);
    assert_eq!(out.len(), r.prompts.len());
    for (i, (got, p)) in out.iter().zip(&r.prompts).enumerate() {
        ck.check(
            &format!("prompt {i}, whole, batched with the others"),
            got,
            &want(p, p.ids.len() - 1),
            exact,
        );
    }

    // (c') Continuous batching: sequence i joins at step i and follows its schedule, so a
    // step mixes one sequence's prefill chunk with the others' single tokens. Sequence 1
    // asks for logits only every other step (outputs come in input order, skipping it).
    let schedules: Vec<Vec<usize>> = r.prompts.iter().map(|p| schedule(p.ids.len())).collect();
    let steps = (0..schedules.len())
        .map(|i| i + schedules[i].len())
        .max()
        .unwrap();
    let mut caches: Vec<KvCache> = r.prompts.iter().map(|_| new_cache(&model)).collect();
    for step in 0..steps {
        let mut inputs = Vec::new();
        let mut expected = Vec::new();
        for (i, (cache, p)) in caches.iter_mut().zip(&r.prompts).enumerate() {
            let Some(s) = step.checked_sub(i) else {
                continue;
            };
            let Some(&end) = schedules[i].get(s) else {
                continue;
            };
            let start = cache.len();
            let want_logits = i != 1 || step % 2 == 0;
            if want_logits {
                expected.push((i, start, end));
            }
            inputs.push(StepInput {
                cache,
                tokens: &p.ids[start..end],
                want_logits,
            });
        }
        let out = model.step(&mut inputs);
        assert_eq!(
            out.len(),
            expected.len(),
            "step {step}: one logits row per request"
        );
        for (got, &(i, start, end)) in out.iter().zip(&expected) {
            ck.check(
                &format!(
                    "step {step} of {} batched: prompt {i} tokens {start}..{end}",
                    inputs.len()
                ),
                got,
                &want(&r.prompts[i], end - 1),
                exact,
            );
        }
    }
    for (cache, p) in caches.iter().zip(&r.prompts) {
        assert_eq!(cache.len(), p.ids.len());
    }
    ck.report();
    ck
}

/// Our generator (and candle's Q8_0) give the script's weights bit for bit; the files are
/// complete GGUF models (tokenizer included) with the layout the loader expects.
#[test]
fn generated_weights_and_files_match_the_reference() {
    let r = reference();
    eprintln!(
        "reference: {} (transformers' own incremental run differed by {:.1e})",
        r.generator_versions, r.hf_incremental_max_diff
    );
    let weights = generate_weights();
    for variant in ["f32", "q8_0"] {
        let hashes = &r.weight_fnv1a64[variant];
        assert_eq!(hashes.len(), weights.len());
        for g in &weights {
            let values = if variant == "q8_0" && g.shape.len() == 2 {
                q8_0_roundtrip(&g.values, &g.shape)
            } else {
                g.values.clone()
            };
            assert_eq!(
                format!("{:016x}", fnv1a64(&values)),
                hashes[&g.name],
                "{variant} {}: the generated weights differ from the script's",
                g.name
            );
        }
    }
    for (i, p) in r.prompts.iter().enumerate() {
        assert_eq!(p.ids, prompt_ids(i, p.ids.len()), "prompt {i}");
    }
    for (variant, path) in model_files() {
        let file = GgufFile::open(path).unwrap();
        assert!(!file.has_tensor("output.weight"));
        let want = if *variant == "q8_0" {
            GgmlDType::Q8_0
        } else {
            GgmlDType::F32
        };
        assert_eq!(file.tensor_type("blk.0.attn_q.weight"), Some(want));
        assert_eq!(
            file.tensor_type("blk.0.attn_norm.weight"),
            Some(GgmlDType::F32)
        );
        // The embedding table, read back as stored, is the generated one.
        let embd = file
            .f32("token_embd.weight", &[CONFIG.vocab, CONFIG.hidden])
            .unwrap();
        let generated = &weights[0].values;
        let expected = if *variant == "q8_0" {
            q8_0_roundtrip(generated, &weights[0].shape)
        } else {
            generated.clone()
        };
        assert_eq!(embd, expected, "{variant}");
        let tokenizer = GenTokenizer::from_gguf(&file).unwrap();
        assert_eq!(tokenizer.vocab_size(), CONFIG.vocab);
        assert_eq!(
            tokenizer.encode(" the<|endoftext|>", true).unwrap(),
            vec![98, 99]
        );
        assert!(tokenizer.is_end(99));
    }
}

#[test]
fn f32_weights_match_transformers() {
    let (variant, path) = &model_files()[0];
    for threads in [1, 2] {
        check_model(variant, path, Dtype::F32, threads);
    }
}

#[test]
fn q8_0_weights_match_transformers_on_their_dequantized_values() {
    let (variant, path) = &model_files()[1];
    for threads in [1, 2] {
        check_model(variant, path, Dtype::F32, threads);
    }
}

/// The packed int8 path (exact for Q8_0 weights, activations quantized per block of 32)
/// stays close to the reference on both files.
#[test]
fn int8_stays_close_to_transformers() {
    for (variant, path) in model_files() {
        let ck = check_model(variant, path, Dtype::Int8, 2);
        assert!(ck.min_cosine >= INT8_MIN_COSINE);
    }
}
