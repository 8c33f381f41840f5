//! The `phi3` architecture (`zerobatch::generate::phi3`, over `llama_family`) against Hugging
//! Face transformers' Phi3ForCausalLM, on a tiny model with seeded random weights converted to
//! GGUF by llama.cpp's own convert_hf_to_gguf.py. The files (tests/data/gguf/tiny-phi3-*.gguf,
//! 50–290 KB) and the reference (tests/data/tiny_phi3_reference.json) are made by
//! scripts/make-phi3-reference.py, which documents the model (fused Q/K/V and gate-up, 12 of
//! each head's 16 values rotated, LongRoPE factors and attention factor, tied embeddings), its
//! Phi-4-mini-like vocabulary (byte-level BPE, pre-tokenizer `gpt-4o`) and the files: f32,
//! Q8_0, Q4_0.
//!
//! Checked:
//! - the files hold what llama.cpp's phi3 loader reads (`attn_qkv`, `ffn_up` of 2·n_ff rows,
//!   no `ffn_gate`, `rope_factors_long`/`short`, `rope.dimension_count` below the head size)
//!   and our hyperparameters read them;
//! - every file loaded in f32 against transformers on the values that file stores: the f32
//!   file's logits after every position of every prompt (one step, every prefix, chunked
//!   prefill then one token at a time, continuous batching), the quantized files' after each
//!   prompt, within 1e-4; the default load (Q4_0 kept, the rest int8) at cosine ≥ 0.99;
//! - LongRoPE's two branches: the files above (context 256 over an original 8) run with the
//!   long factors and the attention factor; tiny-phi3-short-q8_0.gguf (the same weights from a
//!   checkpoint whose original context is 256) with the short factors, within 1e-4;
//! - the chat: the Phi-3.5 template the file carries, rendered and tokenized by our path,
//!   gives transformers' ids; greedy decoding gives transformers' ids, ending at `<|end|>`;
//!   llama.cpp's end-of-generation set (`<|end|>`, `<|endoftext|>`); and the real server
//!   answers an OpenAI chat completion with that text, finish reason `stop`;
//! - the `gpt-4o` pre-tokenizer on this vocabulary, on hard strings, as llama.cpp splits them.
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
use zerobatch::config::ServeConfig;
use zerobatch::generate::chat::{ChatMessage, TemplateKwargs};
use zerobatch::generate::decoder::Decoder;
use zerobatch::generate::gguf::GgufFile;
use zerobatch::generate::phi3::Phi3;
use zerobatch::generate::prompt::chat_prompt;
use zerobatch::generate::tokenizer::GenTokenizer;
use zerobatch::kernels::{Dtype, KernelLevel};
use zerobatch::model::DtypeChoice;
use zerobatch::server::BackgroundServer;

/// Steps each greedy comparison with llama.cpp must cover before a near tie, or the whole run
/// when shorter (the chat's answer is at least 8 tokens long).
const MIN_LLAMA_CPP_STEPS: usize = 8;
/// Steps all greedy comparisons with llama.cpp must cover together (measured on an AMX
/// machine: 65; the floor leaves room for other kernel paths' rounding).
const MIN_LLAMA_CPP_TOTAL: usize = 52;
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
    /// transformers' logits after each prompt on tiny-phi3-short-q8_0.gguf (short factors).
    short_q8_0_last: Vec<Vec<f32>>,
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
    context: usize,
    original_context: usize,
    rope_dims: usize,
    long_factor: Vec<f32>,
    short_factor: Vec<f32>,
    attn_factor: f32,
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
        let text =
            std::fs::read_to_string(data("tiny_phi3_reference.json")).expect("the reference JSON");
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

fn load(variant: &str, dtype: Dtype, keep_low_bit: bool) -> Phi3 {
    Phi3::load(
        &model_path(variant),
        dtype,
        keep_low_bit,
        KernelLevel::detected(),
        2,
    )
    .unwrap()
    .0
}

#[test]
fn the_files_hold_what_llama_cpps_phi3_loader_reads() {
    let r = reference();
    let c = &r.config;
    eprintln!("phi3 reference: {}", r.generator_versions);
    for variant in ["f32", "q8_0", "q4_0"] {
        let file = GgufFile::open(&model_path(variant)).unwrap();
        assert_eq!(file.string("general.architecture").unwrap(), "phi3");
        assert_eq!(file.string("tokenizer.ggml.pre").unwrap(), "gpt-4o");
        for (name, ty) in &r.stored_types[variant] {
            let got = format!("{:?}", file.tensor_type(name).unwrap()).to_uppercase();
            assert_eq!(&got, ty, "{variant} {name}");
        }
        // Fused Q/K/V and gate-up, tied embeddings, LongRoPE factors.
        assert!(file.has_tensor("blk.0.attn_qkv.weight"));
        assert!(!file.has_tensor("blk.0.attn_q.weight"));
        assert!(!file.has_tensor("blk.0.ffn_gate.weight"));
        assert_eq!(
            file.f32("blk.1.ffn_up.weight", &[2 * c.ff, c.hidden])
                .unwrap()
                .len(),
            2 * c.ff * c.hidden
        );
        assert!(!file.has_tensor("output.weight"));
        assert_eq!(
            file.f32("rope_factors_long.weight", &[c.rope_dims / 2])
                .unwrap(),
            c.long_factor
        );
        assert_eq!(
            file.f32("rope_factors_short.weight", &[c.rope_dims / 2])
                .unwrap(),
            c.short_factor
        );
        assert_eq!(
            file.uint_opt("phi3.rope.scaling.original_context_length")
                .unwrap(),
            Some(c.original_context as u64)
        );
    }
    let model = load("f32", Dtype::F32, false);
    let h = model.config();
    assert_eq!(
        (h.vocab, h.n_embd, h.n_head, h.n_head_kv, h.head_dim, h.n_ff),
        (c.vocab, c.hidden, c.heads, c.kv_heads, c.head_dim, c.ff)
    );
    assert_eq!((h.n_layer, h.context), (c.layers, c.context));
    assert_eq!((h.rope_base, h.rms_eps), (c.rope_theta, c.rms_eps));
    // Partial rotary: 12 of 16 values; LongRoPE's attention factor.
    assert_eq!(h.n_rot, c.rope_dims);
    assert!(h.n_rot < h.head_dim);
    assert!((h.rope_attn_factor - c.attn_factor).abs() < 1e-6);
    assert_eq!(h.rope_freq_scale, 1.0);
}

#[test]
fn f32_file_matches_transformers() {
    let model = load("f32", Dtype::F32, false);
    check_model("phi3", &reference().prompts, "f32", &model, true);
}

#[test]
fn quantized_files_match_transformers_on_their_stored_values() {
    for variant in ["q8_0", "q4_0"] {
        let model = load(variant, Dtype::F32, false);
        check_model("phi3", &reference().prompts, variant, &model, true);
    }
}

/// LongRoPE's other branch: a file whose original context is its whole context (the same
/// weights, converted from such a checkpoint) runs with the short factors and no attention
/// factor, as transformers and llama.cpp do; the long-factor file's logits differ from it.
#[test]
fn a_file_whose_context_is_the_original_one_uses_the_short_factors() {
    let r = reference();
    let model = load("short_q8_0", Dtype::F32, false);
    let h = model.config();
    assert_eq!(h.rope_attn_factor, 1.0);
    let long = load("q8_0", Dtype::F32, false);
    let mut ck = Checker::new("phi3 short_q8_0 as f32".into());
    for (i, (p, want)) in r.prompts.iter().zip(&r.short_q8_0_last).enumerate() {
        let got = run_alone(&model, &p.ids);
        ck.check(&format!("prompt {i}"), &got, want, Some(TOLERANCE));
        let other = run_alone(&long, &p.ids);
        assert!(
            max_abs_diff(&other, want) > 100.0 * TOLERANCE,
            "prompt {i}: the long factors should change the logits"
        );
    }
    ck.report();
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
        check_model("phi3", &reference().prompts, variant, &model, false);
    }
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
    let model = load("f32", Dtype::F32, false);
    let out = greedy(
        &model,
        |id| tokenizer.is_end(id),
        &ids,
        chat.greedy_ids.len() + 4,
    );
    assert_eq!(out, chat.greedy_ids, "greedy ids");
    assert_eq!(*out.last().unwrap(), r.special_ids["<|end|>"]);
    assert_eq!(tokenizer.decode(&out), chat.text, "the answer's text");
}

#[test]
fn the_end_of_generation_tokens_are_llama_cpps() {
    let r = reference();
    let tokenizer = GenTokenizer::from_gguf(&GgufFile::open(&model_path("f32")).unwrap()).unwrap();
    let ends: Vec<u32> = (0..r.config.vocab as u32)
        .filter(|&id| tokenizer.is_end(id))
        .collect();
    assert_eq!(ends, r.end_of_generation_ids);
    assert_eq!(
        ends,
        [r.special_ids["<|endoftext|>"], r.special_ids["<|end|>"]]
    );
    for not_end in ["<|user|>", "<|assistant|>", "<|system|>", "<|tool_call|>"] {
        assert!(!tokenizer.is_end(r.special_ids[not_end]), "{not_end}");
        // Control tokens: matched in prompts, left out of decoded text.
        assert_eq!(tokenizer.decode(&[r.special_ids[not_end]]), "");
    }
}

#[test]
fn the_gpt_4o_pre_tokenizer_splits_as_llama_cpp_does() {
    let r = reference();
    let tokenizer = GenTokenizer::from_gguf(&GgufFile::open(&model_path("f32")).unwrap()).unwrap();
    assert!(r.tokenization.len() > 10);
    for case in &r.tokenization {
        assert_eq!(
            tokenizer.encode(&case.text, false).unwrap(),
            case.ids,
            "{:?}",
            case.text
        );
    }
}

/// The real server on the f32 file: an OpenAI chat completion is transformers' greedy answer,
/// ended by `<|end|>` (finish reason `stop`; the end token counted, not shown).
#[test]
fn the_server_answers_a_chat_completion_that_ends_at_end() {
    let r = reference();
    let mut config = ServeConfig::for_tests(model_path("f32").to_str().unwrap());
    config.dtype = DtypeChoice::Fixed(Dtype::F32);
    let server = BackgroundServer::start(config).expect("server starts");
    common::wait_ready(server.addr);
    let body = serde_json::json!({
        "messages": r.chat.messages,
        "temperature": 0,
        "max_tokens": 64,
    });
    let resp = common::post_json(server.addr, "/v1/chat/completions", &body);
    assert_eq!(resp.status, 200, "{}", resp.text());
    let answer = resp.json();
    assert_eq!(answer["choices"][0]["message"]["content"], r.chat.text);
    assert_eq!(answer["choices"][0]["finish_reason"], "stop");
    assert_eq!(
        answer["usage"]["completion_tokens"],
        r.chat.greedy_ids.len()
    );
    assert_eq!(answer["usage"]["prompt_tokens"], r.chat.prompt_ids.len());
}

/// The f32 file written again with `metadata` changed (added when absent) and the tensor
/// `drop` left out.
fn rewritten(name: &str, metadata: &[(&str, Value)], drop: Option<&str>) -> PathBuf {
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
        .filter(|n| Some(n.as_str()) != drop)
        .map(|n| {
            let t = content.tensor(&mut reader, n, &Device::Cpu).unwrap();
            (n.clone(), t)
        })
        .collect();
    let dir = common::scratch_dir("zerobatch-phi3");
    let path = dir.join(name);
    let meta: Vec<(String, Value)> = meta.into_iter().collect();
    common::gguf::write(&path, &meta, &tensors);
    path
}

fn load_error(path: &Path) -> String {
    match Phi3::load(path, Dtype::F32, false, KernelLevel::detected(), 1) {
        Ok(_) => panic!("{} loaded", path.display()),
        Err(e) => e.to_string(),
    }
}

/// What the phi3 loader cannot run is refused at load, naming the key or tensor.
#[test]
fn bad_rotary_metadata_is_refused_naming_it() {
    // The rewriting itself keeps a loadable file.
    let same = rewritten("same.gguf", &[], None);
    assert_eq!(
        Phi3::load(&same, Dtype::F32, false, KernelLevel::detected(), 1)
            .unwrap()
            .0
            .config()
            .n_rot,
        reference().config.rope_dims
    );
    for (rot, name) in [(7u32, "odd.gguf"), (18, "wide.gguf"), (0, "zero.gguf")] {
        let path = rewritten(
            name,
            &[("phi3.rope.dimension_count", Value::U32(rot))],
            None,
        );
        let err = load_error(&path);
        assert!(err.contains("phi3.rope.dimension_count"), "{err}");
    }
    let path = rewritten(
        "attn.gguf",
        &[("phi3.rope.scaling.attn_factor", Value::F32(-1.0))],
        None,
    );
    assert!(load_error(&path).contains("phi3.rope.scaling.attn_factor"));
    // Rotary pairs that the factors do not cover: 8 rotated values need 4 factors, the file
    // has 6.
    let path = rewritten(
        "factors.gguf",
        &[("phi3.rope.dimension_count", Value::U32(8))],
        None,
    );
    assert!(load_error(&path).contains("rope_factors_long.weight"));
    // No factors at all: RoPE without them, as llama.cpp runs such a file.
    let path = rewritten("nofactors.gguf", &[], Some("rope_factors_long.weight"));
    Phi3::load(&path, Dtype::F32, false, KernelLevel::detected(), 1).unwrap();
    std::fs::remove_dir_all(path.parent().unwrap()).unwrap();
}

/// Greedy decoding of the chat prompt on every file, in f32 and the default load, against
/// llama.cpp's llama-server on the same file (its ids recorded by
/// scripts/make-phi3-reference.py), up to the first near tie on either side; and
/// llama.cpp's ids on the f32 file against transformers'.
#[test]
fn greedy_decoding_matches_llama_cpp_up_to_a_near_tie() {
    let r = reference();
    check_llama_cpp(
        "phi3",
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
