//! Our GPT-2 forward pass (`zerobatch::generate::gpt2`) against Hugging Face transformers'
//! `GPT2LMHeadModel`, on a tiny model both sides generate from the same rule; and the whole
//! server serving that model, over real HTTP, against transformers' greedy continuations.
//!
//! The test writes the model as a Hugging Face directory: `config.json` and a
//! `model.safetensors` with the checkpoint's own names and `Conv1D` `[in, out]` layout, tied
//! head, as openai-community/gpt2 has them (plus the `attn.bias` mask buffers old checkpoints
//! carry, which must be ignored). The reference (tests/data/tiny_gpt2_reference.json) is made
//! by scripts/make-gpt2-reference.py, which documents the weight rule. The weights are first
//! checked bit for bit against the script's (FNV-1a of every tensor).
//!
//! Checked in f32 within 1e-4: whole prompts and every prefix, chunked prefill then one token
//! at a time through the KV cache, and all prompts batched in one step while at different
//! points. int8 and bf16 are held to cosine ≥ 0.99. The HTTP part gives the model a word-level
//! `tokenizer.json` (word `tN` is id N) so a prompt's ids are known, and compares greedy
//! generation with the reference's.

mod common;

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use candle_core::{Device, Tensor};
use common::{cosine, fnv1a64, max_abs_diff, SplitMix64};
use serde::Deserialize;
use serde_json::json;
use zerobatch::generate::decoder::StepInput;
use zerobatch::generate::gpt2::{Gpt2, Gpt2Config};
use zerobatch::generate::kv_cache::KvCache;
use zerobatch::kernels::{Dtype, KernelLevel};

const TOLERANCE: f32 = 1e-4;
const LOW_PRECISION_MIN_COSINE: f64 = 0.99;

#[derive(Deserialize)]
struct Reference {
    config: serde_json::Value,
    tensors: Vec<TensorSpec>,
    weight_fnv1a64: BTreeMap<String, String>,
    prompts: Vec<Prompt>,
}

#[derive(Deserialize)]
struct TensorSpec {
    name: String,
    seed: u64,
    shape: Vec<usize>,
}

#[derive(Deserialize)]
struct Prompt {
    ids: Vec<u32>,
    /// The 8 ids transformers' greedy decoding appends.
    greedy: Vec<u32>,
    /// The logits after each position.
    logits: Vec<Vec<f32>>,
}

const VOCAB: usize = 96;
const CONTEXT: usize = 48;
const PROMPT_SEED: u64 = 1000;

fn reference() -> &'static Reference {
    static R: OnceLock<Reference> = OnceLock::new();
    R.get_or_init(|| {
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/data/tiny_gpt2_reference.json"
        );
        serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
    })
}

/// The values of tensor `name` (seed `seed`), by the script's rule.
fn generate(name: &str, seed: u64, count: usize) -> Vec<f32> {
    let mut rng = SplitMix64(seed);
    let leaf = name.rsplit_once('.').map_or(name, |(head, _)| head);
    let is_norm = leaf.ends_with("ln_1") || leaf.ends_with("ln_2") || leaf == "ln_f";
    let is_bias = name.ends_with(".bias");
    let scale = match leaf {
        "wte" => 0.5,
        "wpe" => 0.1,
        l if l.ends_with("mlp.c_proj") => 0.15,
        _ => 0.25,
    };
    (0..count)
        .map(|_| {
            let r = (rng.next() >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0;
            if is_bias {
                r * 0.05
            } else if is_norm {
                1.0 + r * 0.1
            } else {
                r * scale
            }
        })
        .collect()
}

fn prompt_ids(i: usize, n: usize) -> Vec<u32> {
    let mut rng = SplitMix64(PROMPT_SEED + i as u64);
    (0..n).map(|_| (rng.next() % VOCAB as u64) as u32).collect()
}

/// A word-level tokenizer.json: word `tN` is id N, `<|endoftext|>` is the last id.
fn tokenizer_json() -> serde_json::Value {
    let mut vocab = serde_json::Map::new();
    for i in 0..VOCAB - 1 {
        vocab.insert(format!("t{i}"), json!(i));
    }
    vocab.insert("<|endoftext|>".into(), json!(VOCAB - 1));
    json!({
        "version": "1.0",
        "truncation": null,
        "padding": null,
        "added_tokens": [{"id": VOCAB - 1, "content": "<|endoftext|>", "single_word": false,
            "lstrip": false, "rstrip": false, "normalized": false, "special": true}],
        "normalizer": null,
        "pre_tokenizer": {"type": "WhitespaceSplit"},
        "post_processor": null,
        "decoder": {"type": "WordPiece", "prefix": "##", "cleanup": false},
        "model": {"type": "WordLevel", "vocab": vocab, "unk_token": "<|endoftext|>"}
    })
}

/// The model directory, written once per test process.
fn model_dir() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let r = reference();
        let dir = common::scratch_dir("zb-tiny-gpt2");
        let mut tensors = HashMap::new();
        for spec in &r.tensors {
            let count = spec.shape.iter().product();
            let values = generate(&spec.name, spec.seed, count);
            let want = &r.weight_fnv1a64[&spec.name];
            assert_eq!(
                &format!("{:016x}", fnv1a64(&values)),
                want,
                "{}: generated weights differ from the script's",
                spec.name
            );
            let t = Tensor::from_vec(values, spec.shape.as_slice(), &Device::Cpu).unwrap();
            tensors.insert(spec.name.clone(), t);
        }
        // The causal-mask buffers of older checkpoints: present, and to be ignored.
        for l in 0..2 {
            let mask = Tensor::ones(
                (1, 1, CONTEXT, CONTEXT),
                candle_core::DType::F32,
                &Device::Cpu,
            )
            .unwrap();
            tensors.insert(format!("h.{l}.attn.bias"), mask);
        }
        candle_core::safetensors::save(&tensors, dir.join("model.safetensors")).unwrap();
        let mut config = r.config.clone();
        config["model_type"] = json!("gpt2");
        config["bos_token_id"] = json!(VOCAB - 1);
        config["eos_token_id"] = json!(VOCAB - 1);
        // As openai-community/gpt2 has them.
        config["task_specific_params"] =
            json!({"text-generation": {"do_sample": true, "max_length": 50}});
        std::fs::write(dir.join("config.json"), config.to_string()).unwrap();
        let generation = json!({"bos_token_id": VOCAB - 1, "eos_token_id": VOCAB - 1});
        std::fs::write(dir.join("generation_config.json"), generation.to_string()).unwrap();
        std::fs::write(dir.join("tokenizer.json"), tokenizer_json().to_string()).unwrap();
        dir
    })
}

fn load(dtype: Dtype, threads: usize) -> Gpt2 {
    let dir = model_dir();
    let config =
        Gpt2Config::from_json(&std::fs::read_to_string(dir.join("config.json")).unwrap()).unwrap();
    Gpt2::load(
        config,
        &dir.join("model.safetensors"),
        dtype,
        KernelLevel::detected(),
        threads,
    )
    .unwrap()
}

fn new_cache(model: &Gpt2) -> KvCache {
    KvCache::with_capacity(model.config().cache_shape(), CONTEXT)
}

/// Compares logits: within TOLERANCE for f32, cosine above the floor otherwise. Returns the
/// largest difference.
fn check(what: &str, got: &[f32], want: &[f32], exact: bool) -> f32 {
    let d = max_abs_diff(got, want);
    let c = cosine(got, want);
    if exact {
        assert!(
            d <= TOLERANCE,
            "{what}: logits differ by up to {d} (cosine {c})"
        );
    } else {
        assert!(
            c >= LOW_PRECISION_MIN_COSINE,
            "{what}: cosine {c} (max abs diff {d})"
        );
    }
    d
}

/// Whole prompts and every prefix; chunked prefill then single tokens; all prompts batched.
fn check_model(dtype: Dtype, threads: usize) {
    let r = reference();
    let model = load(dtype, threads);
    let exact = dtype == Dtype::F32;
    let label = format!("{dtype}, {threads} thread(s)");
    let mut worst = 0.0f32;
    for (i, p) in r.prompts.iter().enumerate() {
        assert_eq!(p.ids, prompt_ids(i, p.ids.len()), "prompt {i}'s ids");
        let n = p.ids.len();
        for len in 1..=n {
            let mut cache = new_cache(&model);
            let got = model
                .step(&mut [StepInput {
                    cache: &mut cache,
                    tokens: &p.ids[..len],
                    want_logits: true,
                }])
                .remove(0);
            let what = format!("{label}: prompt {i}, prefix {len} in one step");
            worst = worst.max(check(&what, &got, &p.logits[len - 1], exact));
        }
        // The first half in one chunk without logits, then one token at a time.
        let mut cache = new_cache(&model);
        let half = n.div_ceil(2);
        let out = model.step(&mut [StepInput {
            cache: &mut cache,
            tokens: &p.ids[..half],
            want_logits: half == n,
        }]);
        assert_eq!(out.len(), usize::from(half == n));
        for pos in half..n {
            let got = model
                .step(&mut [StepInput {
                    cache: &mut cache,
                    tokens: &p.ids[pos..pos + 1],
                    want_logits: true,
                }])
                .remove(0);
            assert_eq!(cache.len(), pos + 1);
            let what = format!("{label}: prompt {i}, token {pos} through the cache");
            worst = worst.max(check(&what, &got, &p.logits[pos], exact));
        }
    }
    // Batched: every prompt's first third in one step, then each sequence's rest in chunks of
    // different sizes, all in the same steps.
    let mut caches: Vec<KvCache> = r.prompts.iter().map(|_| new_cache(&model)).collect();
    let mut done: Vec<usize> = r.prompts.iter().map(|p| p.ids.len().div_ceil(3)).collect();
    {
        let mut inputs: Vec<StepInput> = caches
            .iter_mut()
            .zip(&r.prompts)
            .zip(&done)
            .map(|((cache, p), &d)| StepInput {
                cache,
                tokens: &p.ids[..d],
                want_logits: true,
            })
            .collect();
        let out = model.step(&mut inputs);
        for (i, (p, logits)) in r.prompts.iter().zip(&out).enumerate() {
            let what = format!("{label}: batched prefill of prompt {i}");
            worst = worst.max(check(&what, logits, &p.logits[done[i] - 1], exact));
        }
    }
    while done.iter().zip(&r.prompts).any(|(d, p)| *d < p.ids.len()) {
        let mut inputs = Vec::new();
        let mut which = Vec::new();
        for (i, (cache, p)) in caches.iter_mut().zip(&r.prompts).enumerate() {
            let n = p.ids.len();
            if done[i] == n {
                continue;
            }
            let take = (1 + i % 3).min(n - done[i]);
            inputs.push(StepInput {
                cache,
                tokens: &p.ids[done[i]..done[i] + take],
                want_logits: true,
            });
            which.push((i, done[i] + take));
        }
        let out = model.step(&mut inputs);
        for ((i, end), logits) in which.into_iter().zip(&out) {
            let what = format!("{label}: batched step of prompt {i} up to {end}");
            worst = worst.max(check(&what, logits, &r.prompts[i].logits[end - 1], exact));
            done[i] = end;
        }
    }
    eprintln!("{label}: largest logit difference from transformers {worst:.3e}");
}

#[test]
fn f32_matches_transformers_alone_through_the_cache_and_batched() {
    check_model(Dtype::F32, 1);
    check_model(Dtype::F32, 2);
}

#[test]
fn int8_and_bf16_stay_close_to_transformers() {
    check_model(Dtype::Int8, 2);
    check_model(Dtype::Bf16, 2);
}

#[test]
fn the_config_and_files_load_through_the_server_path() {
    // The full loader: config.json's ids make `<|endoftext|>` the end of generation.
    let files = zerobatch::model::files::from_directory(model_dir()).unwrap();
    assert_eq!(
        zerobatch::model::model_type(&files).unwrap().as_deref(),
        Some("gpt2")
    );
    let loaded = zerobatch::generate::load(
        &zerobatch::generate::GenerationSource::Gpt2(Box::new(files)),
        zerobatch::model::LoadOptions::default(),
        2,
        |_, _| {},
    )
    .unwrap();
    assert_eq!(loaded.info.task, zerobatch::model::Task::TextGeneration);
    let eos = (VOCAB - 1) as u32;
    assert!(loaded.tokenizer.is_end(eos));
    assert_eq!(
        loaded
            .tokenizer
            .encode("t5 t7 <|endoftext|>", true)
            .unwrap(),
        [5, 7, eos]
    );
    assert_eq!(loaded.model.shape().context, CONTEXT);
    // task_specific_params["text-generation"] is the upstream route's sampling setting.
    assert_eq!(loaded.defaults.do_sample, Some(true));
}

#[test]
fn the_server_generates_transformers_greedy_tokens_over_http() {
    let r = reference();
    let dir = model_dir();
    let server = common::start(|c| {
        c.model = dir.to_str().unwrap().to_string();
        c.dtype = zerobatch::model::DtypeChoice::Fixed(Dtype::F32);
    });
    common::wait_ready(server.addr);
    let info = common::get(server.addr, "/info").json();
    assert_eq!(info["task"], "text-generation", "{info}");
    for p in &r.prompts {
        let text: Vec<String> = p.ids.iter().map(|i| format!("t{i}")).collect();
        let steps = p.greedy.len().min(CONTEXT - p.ids.len());
        let resp = common::post_json(
            server.addr,
            "/generate",
            &json!({"inputs": text.join(" "), "parameters": {
                "max_new_tokens": steps, "details": true, "do_sample": false}}),
        );
        assert_eq!(resp.status, 200, "{}", resp.text());
        let body = resp.json();
        let ids: Vec<u32> = body["details"]["tokens"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| t["id"].as_u64().unwrap() as u32)
            .collect();
        // Greedy stops early only at `<|endoftext|>`.
        let eos = (VOCAB - 1) as u32;
        let want: Vec<u32> = match p.greedy[..steps].iter().position(|&t| t == eos) {
            Some(at) => p.greedy[..=at].to_vec(),
            None => p.greedy[..steps].to_vec(),
        };
        assert_eq!(ids, want, "prompt {:?}: {body}", p.ids);
    }
    // The upstream shape: 35 tokens in all, sampled; the prompt comes back in front.
    let resp = common::post_json(server.addr, "/generate", &json!({"text": "t1 t2 t3"}));
    assert_eq!(resp.status, 200, "{}", resp.text());
    let text = resp.json()["generated_text"].as_str().unwrap().to_string();
    assert!(text.starts_with("t1 t2 t3"), "{text}");
}
