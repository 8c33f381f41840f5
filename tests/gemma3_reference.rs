//! The `gemma3` architecture (`zerobatch::generate::gemma3`) against Hugging Face
//! transformers' Gemma3ForCausalLM, on a tiny model with seeded random weights converted to GGUF
//! by llama.cpp's own convert_hf_to_gguf.py. The files (tests/data/gguf/tiny-gemma3-*.gguf)
//! and the reference (tests/data/tiny_gemma3_reference.json) are made by
//! scripts/make-gemma3-reference.py, which documents the model (7 layers, six sliding with a
//! window of 5 and one global, heads of 32 over a hidden size of 64, local and global RoPE
//! bases, linear scaling on the global layer, final soft-capping, tied embeddings), its
//! Gemma-like SentencePiece vocabulary and the files: f32, Q8_0, Q4_0.
//!
//! Checked:
//! - the files hold what llama.cpp's gemma3 loader reads (sandwich norms, Q/K norms stored as
//!   1 + weight, `attention.sliding_window`, `rope.freq_base_swa`, no pattern key) and our
//!   loader reads it (which layers slide, each layer kind's RoPE base and scaling, the cap);
//! - every file loaded in f32 against transformers on the values that file stores: the f32
//!   file's logits after every position of prompts longer than the window (one step, every
//!   prefix, chunked prefill then one token at a time, continuous batching), the quantized
//!   files' after each prompt, within 1e-4; the default load at cosine ≥ 0.99;
//! - the window matters: the same file with no window runs every layer globally and matches
//!   transformers' all-global model instead;
//! - the sliding layers' caches keep their window only, with the very same logits as a cache
//!   that keeps every position;
//! - the chat: Gemma 3's template rendered and tokenized by our path gives transformers' ids;
//!   greedy decoding gives transformers' ids, ending at `<end_of_turn>`; the end-of-generation
//!   set (`<eos>`, `<end_of_turn>`); the real server answers an OpenAI chat completion with
//!   that text, finish reason `stop`;
//! - Gemma's SentencePiece rules (no dummy-prefix space, byte fallback, digits split, BOS
//!   added) on hard strings, as llama.cpp's SPM tokenizer and transformers tokenize them.
//!
//! Nothing is downloaded.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use candle_core::quantized::gguf_file::{self, Value};
use candle_core::quantized::QTensor;
use candle_core::Device;
use common::decoder_reference::{
    check_llama_cpp, check_model, greedy, run_alone, Checker, LlamaCpp, Prompt, TOLERANCE,
};
use common::max_abs_diff;
use serde::Deserialize;
use sha2::{Digest, Sha256};
use zerobatch::generate::chat::{ChatMessage, TemplateKwargs};
use zerobatch::generate::decoder::{Decoder, StepInput};
use zerobatch::generate::gemma3::Gemma3;
use zerobatch::generate::gguf::GgufFile;
use zerobatch::generate::kv_cache::KvCache;
use zerobatch::generate::prompt::chat_prompt;
use zerobatch::generate::tokenizer::GenTokenizer;
use zerobatch::kernels::{Dtype, KernelLevel};

/// Steps each greedy comparison with llama.cpp must cover before a near tie, or the whole run
/// when shorter (the chat's answer is 6 tokens; llama.cpp's Q4_0 run has a near tie at its last step).
const MIN_LLAMA_CPP_STEPS: usize = 5;
/// Steps all greedy comparisons with llama.cpp must cover together (measured on an AMX
/// machine: 31; the floor leaves room for other kernel paths' rounding).
const MIN_LLAMA_CPP_TOTAL: usize = 25;
#[derive(Deserialize)]
struct Reference {
    generator_versions: String,
    config: Config,
    files: BTreeMap<String, Vec<String>>,
    file_sha256: BTreeMap<String, String>,
    stored_types: BTreeMap<String, BTreeMap<String, String>>,
    special_ids: BTreeMap<String, u32>,
    end_of_generation_ids: Vec<u32>,
    prompts: Vec<Prompt>,
    /// transformers' logits after each prompt with every layer global (f32 weights).
    no_window_f32_last: Vec<Vec<f32>>,
    chat: Chat,
    tokenization: Vec<TokenCase>,
    llama_cpp: LlamaCpp,
}

#[derive(Deserialize)]
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
    rope_local_theta: f32,
    rope_linear_factor: f32,
    context: usize,
    window: usize,
    softcap: f32,
    sliding: Vec<bool>,
}

#[derive(Deserialize)]
struct Chat {
    messages: Vec<ChatMessage>,
    prompt_text: String,
    prompt_ids: Vec<u32>,
    greedy_ids: Vec<u32>,
    text: String,
}

#[derive(Deserialize)]
struct TokenCase {
    text: String,
    /// With BOS, as llama.cpp's SPM tokenizer (and transformers) give them.
    ids: Vec<u32>,
}

fn data(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data")
        .join(name)
}

fn reference() -> &'static Reference {
    static R: OnceLock<Reference> = OnceLock::new();
    R.get_or_init(|| {
        let text = std::fs::read_to_string(data("tiny_gemma3_reference.json"))
            .expect("the reference JSON");
        let r: Reference = serde_json::from_str(&text).unwrap();
        // The committed files are the ones the reference was made from.
        for (name, sha) in &r.file_sha256 {
            let bytes = std::fs::read(data("gguf").join(name)).unwrap();
            let got = format!("{:x}", Sha256::digest(&bytes));
            assert_eq!(
                &got, sha,
                "{name} is not the file the reference was made from"
            );
        }
        r
    })
}

fn model_path(variant: &str) -> PathBuf {
    data("gguf").join(&reference().files[variant][0])
}

fn load_path(path: &Path, dtype: Dtype, keep_low_bit: bool) -> Gemma3 {
    Gemma3::load(path, dtype, keep_low_bit, KernelLevel::detected(), 2)
        .unwrap()
        .0
}

fn load(variant: &str, dtype: Dtype, keep_low_bit: bool) -> Gemma3 {
    load_path(&model_path(variant), dtype, keep_low_bit)
}

#[test]
fn the_files_hold_what_llama_cpps_gemma3_loader_reads() {
    let r = reference();
    let c = &r.config;
    eprintln!("gemma3 reference: {}", r.generator_versions);
    for variant in ["f32", "q8_0", "q4_0"] {
        let file = GgufFile::open(&model_path(variant)).unwrap();
        assert_eq!(file.string("general.architecture").unwrap(), "gemma3");
        assert_eq!(file.string("tokenizer.ggml.model").unwrap(), "llama");
        assert_eq!(
            file.bool_opt("tokenizer.ggml.add_space_prefix").unwrap(),
            Some(false)
        );
        for (name, ty) in &r.stored_types[variant] {
            let got = format!("{:?}", file.tensor_type(name).unwrap()).to_uppercase();
            assert_eq!(&got, ty, "{variant} {name}");
        }
        for t in [
            "attn_norm",
            "attn_q_norm",
            "attn_k_norm",
            "post_attention_norm",
            "ffn_norm",
            "ffn_gate",
            "post_ffw_norm",
        ] {
            assert!(file.has_tensor(&format!("blk.0.{t}.weight")), "{t}");
        }
        assert!(!file.has_tensor("output.weight"), "tied embeddings");
        assert_eq!(
            file.uint_opt("gemma3.attention.sliding_window").unwrap(),
            Some(c.window as u64)
        );
        assert!(file
            .value("gemma3.attention.sliding_window_pattern")
            .is_none());
        assert_eq!(
            file.float("gemma3.rope.freq_base_swa").unwrap(),
            c.rope_local_theta
        );
    }
    // The converter wrote Gemma's norms as 1 + weight: drawn around 0, stored around 1.
    let file = GgufFile::open(&model_path("f32")).unwrap();
    let norm = file.f32("blk.0.attn_q_norm.weight", &[c.head_dim]).unwrap();
    assert!(norm.iter().all(|w| (0.85..1.15).contains(w)), "{norm:?}");

    let model = load("f32", Dtype::F32, false);
    let h = model.config();
    assert_eq!(
        (h.vocab, h.n_embd, h.n_head, h.n_head_kv, h.head_dim, h.n_ff),
        (c.vocab, c.hidden, c.heads, c.kv_heads, c.head_dim, c.ff)
    );
    assert_eq!((h.n_layer, h.context), (c.layers, c.context));
    assert_eq!((h.rope_base, h.rms_eps), (c.rope_theta, c.rms_eps));
    assert_eq!(h.rope_freq_scale, 1.0 / c.rope_linear_factor);
    assert_eq!(model.local_rope_base(), c.rope_local_theta);
    assert_eq!(model.window(), c.window);
    // llama.cpp's pattern (every sixth layer global) is transformers' default layer types.
    assert_eq!(model.sliding_layers(), c.sliding);
    assert_eq!(
        c.sliding,
        [true, true, true, true, true, false, true],
        "the model has sliding layers on both sides of a global one"
    );
    assert_eq!(model.final_softcap(), Some(c.softcap));
}

#[test]
fn f32_file_matches_transformers_over_prompts_longer_than_the_window() {
    let r = reference();
    assert!(r.prompts.iter().all(|p| p.ids.len() > r.config.window));
    let model = load("f32", Dtype::F32, false);
    check_model("gemma3", &r.prompts, "f32", &model, true);
}

#[test]
fn quantized_files_match_transformers_on_their_stored_values() {
    for variant in ["q8_0", "q4_0"] {
        let model = load(variant, Dtype::F32, false);
        check_model("gemma3", &reference().prompts, variant, &model, true);
    }
}

/// A sliding layer's cache keeps its window only: fed a token at a time, the model's own
/// cache stays under two windows per sliding layer (plus the global layer's every position),
/// and its logits are the very same as with a cache that keeps every position everywhere.
#[test]
fn sliding_layers_keep_only_their_window_and_change_no_logit() {
    let r = reference();
    let model = load("f32", Dtype::F32, false);
    let c = &r.config;
    let shape = model.shape();
    let mut windowed = model.new_cache(shape.context);
    let mut full = KvCache::with_capacity(shape.cache, shape.context);
    let prompt = &r.prompts.iter().max_by_key(|p| p.ids.len()).unwrap().ids;
    // The prompt, then its tokens again: a sequence many windows long.
    let tokens: Vec<u32> = prompt.iter().chain(prompt).copied().collect();
    assert!(tokens.len() > 6 * c.window);
    let per_position = shape.cache.bytes_per_token() / c.layers;
    let sliding = model.sliding_layers().iter().filter(|&&s| s).count();
    for (i, t) in tokens.iter().enumerate() {
        let step = |cache: &mut KvCache| {
            model
                .step(&mut [StepInput {
                    cache,
                    tokens: std::slice::from_ref(t),
                    want_logits: true,
                }])
                .pop()
                .unwrap()
        };
        assert_eq!(step(&mut windowed), step(&mut full), "position {i}");
        let len = i + 1;
        let bound = ((c.layers - sliding) * len + sliding * (2 * c.window)) * per_position;
        assert!(
            windowed.bytes() <= bound,
            "{} bytes held after {len} tokens, more than {bound}",
            windowed.bytes()
        );
    }
    assert_eq!(full.bytes(), tokens.len() * shape.cache.bytes_per_token());
    assert!(windowed.bytes() * 3 < full.bytes());
}

/// The default load: Q4_0 weights kept as stored, Q8_0 taken as int8 blocks, f32 quantized
/// to int8; KV cache in f16.
#[test]
fn the_default_load_stays_close_to_transformers() {
    for variant in ["f32", "q8_0", "q4_0"] {
        let model = load(variant, Dtype::Int8, true);
        let formats: BTreeMap<_, _> = model.weight_formats().into_iter().collect();
        let want = if variant == "q4_0" { "q4_0" } else { "int8" };
        assert_eq!(formats["attention"], want, "{variant}");
        assert_eq!(formats["feed_forward"], want, "{variant}");
        // The tied Q8_0 table is held once: the int8 LM head's rows are its values.
        assert_eq!(
            formats["token_embedding"].contains("tied int8 LM head"),
            variant == "q8_0",
            "{variant}: {}",
            formats["token_embedding"]
        );
        check_model("gemma3", &reference().prompts, variant, &model, false);
    }
}

/// The f32 file written again with `metadata` changed (added when absent).
fn rewritten(name: &str, metadata: &[(&str, Value)]) -> PathBuf {
    let src = model_path("f32");
    let mut reader = std::fs::File::open(&src).unwrap();
    let content = gguf_file::Content::read(&mut reader).unwrap();
    let mut meta: BTreeMap<String, Value> = content.metadata.clone().into_iter().collect();
    for (k, v) in metadata {
        meta.insert(k.to_string(), v.clone());
    }
    let mut names: Vec<&String> = content.tensor_infos.keys().collect();
    names.sort();
    let tensors: Vec<(String, QTensor)> = names
        .into_iter()
        .map(|n| {
            let t = content.tensor(&mut reader, n, &Device::Cpu).unwrap();
            (n.clone(), t)
        })
        .collect();
    let dir = common::scratch_dir("zerobatch-gemma3");
    let path = dir.join(name);
    let meta: Vec<(String, Value)> = meta.into_iter().collect();
    common::gguf::write(&path, &meta, &tensors);
    path
}

/// Without a window (llama.cpp reads a window of 0 as none) every layer is global, with the
/// global RoPE: the logits are transformers' all-global model's, and not the windowed ones.
#[test]
fn the_window_matters_and_a_file_without_one_runs_every_layer_globally() {
    let r = reference();
    let path = rewritten(
        "nowindow.gguf",
        &[("gemma3.attention.sliding_window", Value::U32(0))],
    );
    let model = load_path(&path, Dtype::F32, false);
    assert_eq!(model.sliding_layers(), vec![false; r.config.layers]);
    let mut ck = Checker::new("gemma3 f32 without a window".into());
    for (i, (p, want)) in r.prompts.iter().zip(&r.no_window_f32_last).enumerate() {
        let got = run_alone(&model, &p.ids);
        ck.check(&format!("prompt {i}"), &got, want, Some(TOLERANCE));
        assert!(
            max_abs_diff(&p.f32[p.ids.len() - 1], want) > 100.0 * TOLERANCE,
            "prompt {i}: the window should change the logits"
        );
    }
    ck.report();
    // A pattern of 1 (llama.cpp: no layer slides) does the same; 0 makes every layer slide.
    let none = rewritten(
        "pattern1.gguf",
        &[("gemma3.attention.sliding_window_pattern", Value::U32(1))],
    );
    assert_eq!(
        load_path(&none, Dtype::F32, false).sliding_layers(),
        vec![false; r.config.layers]
    );
    let all = rewritten(
        "pattern0.gguf",
        &[("gemma3.attention.sliding_window_pattern", Value::U32(0))],
    );
    assert_eq!(
        load_path(&all, Dtype::F32, false).sliding_layers(),
        vec![true; r.config.layers]
    );
    std::fs::remove_dir_all(path.parent().unwrap()).unwrap();
}

/// The chat prompt through our template path, and greedy decoding on the f32 file.
#[test]
fn chat_prompt_and_greedy_decoding_match_transformers() {
    let r = reference();
    let path = model_path("f32");
    let file = GgufFile::open(&path).unwrap();
    let (tokenizer, template) = zerobatch::generate::gguf_text(&file, &path).unwrap();
    let template = template.expect("the converter wrote the chat template");
    let chat = &r.chat;
    let (text, ids) = chat_prompt(
        &template,
        &tokenizer,
        &chat.messages,
        &TemplateKwargs::new(),
        false,
    )
    .unwrap();
    assert_eq!(text, chat.prompt_text);
    assert_eq!(ids, chat.prompt_ids, "the chat prompt's ids");
    assert_eq!(ids[0], r.special_ids["<bos>"]);
    let model = load("f32", Dtype::F32, false);
    let out = greedy(
        &model,
        |id| tokenizer.is_end(id),
        &ids,
        chat.greedy_ids.len() + 4,
    );
    assert_eq!(out, chat.greedy_ids, "greedy ids");
    assert_eq!(*out.last().unwrap(), r.special_ids["<end_of_turn>"]);
    assert_eq!(tokenizer.decode(&out), chat.text, "the answer's text");
}

#[test]
fn the_end_of_generation_tokens_are_eos_and_end_of_turn() {
    let r = reference();
    let tokenizer = GenTokenizer::from_gguf(&GgufFile::open(&model_path("f32")).unwrap()).unwrap();
    let ends: Vec<u32> = (0..r.config.vocab as u32)
        .filter(|&id| tokenizer.is_end(id))
        .collect();
    assert_eq!(ends, r.end_of_generation_ids);
    assert_eq!(
        ends,
        [r.special_ids["<eos>"], r.special_ids["<end_of_turn>"]]
    );
    for not_end in ["<bos>", "<pad>", "<start_of_turn>"] {
        assert!(!tokenizer.is_end(r.special_ids[not_end]), "{not_end}");
        // Control tokens: matched in prompts, left out of decoded text.
        assert_eq!(tokenizer.decode(&[r.special_ids[not_end]]), "");
    }
}

/// Gemma's SentencePiece rules: no space put in front of the text, byte fallback, BOS added.
#[test]
fn gemmas_sentencepiece_rules_tokenize_as_llama_cpp_and_transformers_do() {
    let r = reference();
    let tokenizer = GenTokenizer::from_gguf(&GgufFile::open(&model_path("f32")).unwrap()).unwrap();
    assert!(r.tokenization.len() > 10);
    for case in &r.tokenization {
        assert_eq!(
            tokenizer.encode(&case.text, true).unwrap(),
            case.ids,
            "{:?}",
            case.text
        );
        assert_eq!(case.ids[0], r.special_ids["<bos>"]);
        // Decoding gives the text back (no leading space added or removed).
        if !case.text.contains("<start_of_turn>") {
            assert_eq!(
                tokenizer.decode(&case.ids[1..]),
                case.text,
                "{:?}",
                case.text
            );
        }
    }
}

/// The real binary on the f32 file: an OpenAI chat completion is transformers' greedy answer,
/// ended by `<end_of_turn>` (finish reason `stop`; the end token counted, not shown).
#[test]
fn the_binary_answers_a_chat_completion_that_ends_at_end_of_turn() {
    let r = reference();
    let server = common::Proc::spawn(model_path("f32").to_str().unwrap(), &["--dtype", "f32"]);
    common::wait_ready(server.addr);
    let body = serde_json::json!({
        "messages": r.chat.messages,
        "temperature": 0,
        "max_tokens": 64,
    });
    let resp = common::post_json(server.addr, "/v1/chat/completions", &body);
    assert_eq!(resp.status, 200, "{}\n{}", resp.text(), server.log());
    let answer = resp.json();
    assert_eq!(answer["choices"][0]["message"]["content"], r.chat.text);
    assert_eq!(answer["choices"][0]["finish_reason"], "stop");
    assert_eq!(
        answer["usage"]["completion_tokens"],
        r.chat.greedy_ids.len()
    );
    assert_eq!(answer["usage"]["prompt_tokens"], r.chat.prompt_ids.len());
}

/// Greedy decoding of the chat prompt on every file, in f32 and the default load, against
/// llama.cpp's llama-server on the same file (its ids recorded by
/// scripts/make-gemma3-reference.py), up to the first near tie on either side; and
/// llama.cpp's ids on the f32 file against transformers'.
#[test]
fn greedy_decoding_matches_llama_cpp_up_to_a_near_tie() {
    let r = reference();
    check_llama_cpp(
        "gemma3",
        &r.llama_cpp,
        &r.chat.prompt_ids,
        &r.chat.greedy_ids,
        MIN_LLAMA_CPP_STEPS,
        MIN_LLAMA_CPP_TOTAL,
        |variant, dtype, keep_low_bit| -> Box<dyn Decoder> {
            Box::new(load(variant, dtype, keep_low_bit))
        },
    );
}
