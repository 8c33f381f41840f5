//! The `smollm3` architecture (`zerobatch::generate::smollm3`, over `llama_family`) against
//! Hugging Face transformers' SmolLM3ForCausalLM and against llama.cpp, on a tiny model with
//! seeded random weights converted to GGUF by llama.cpp's own convert_hf_to_gguf.py. The files
//! (tests/data/gguf/tiny-smollm3-{f32,q8_0,q4_0}.gguf) and the reference
//! (tests/data/tiny_smollm3_reference.json) are made by scripts/make-smollm3-reference.py,
//! which documents the model (5 layers, the fourth without RoPE), the tokenizer and how each
//! file was written.
//!
//! Checked:
//! - every file loaded in f32 against transformers run on the values that file stores (the f32
//!   file's logits after every position of every prompt: one step, every prefix, chunked
//!   prefill then one token at a time, continuous batching; the quantized files' after each
//!   prompt), within 1e-4; the default load at cosine ≥ 0.99;
//! - that the layer without RoPE matters: RoPE on every layer moves the logits by far more
//!   than the tolerance;
//! - the chat: our template path renders SmolLM3's template (`enable_thinking: false` through
//!   `chat_template_kwargs`, and thinking on) to transformers' ids; greedy decoding gives
//!   transformers' ids, ending at `<|im_end|>`; the real server answers with that text;
//! - greedy decoding on every file, in f32 and the default load, against llama.cpp's
//!   llama-server on the same file, up to the first near tie on either side;
//! - the tokenizer (`smaug-bpe`): llama.cpp's llama-tokenize ids on hard strings, and
//!   llama.cpp's end-of-generation set.
//!
//! Nothing is downloaded.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use common::decoder_reference::{
    check_llama_cpp, check_model, greedy, run_alone, LlamaCpp, Prompt, TOLERANCE,
};
use common::max_abs_diff;
use serde::Deserialize;
use sha2::{Digest, Sha256};
use zerobatch::config::ServeConfig;
use zerobatch::generate::chat::{ChatMessage, TemplateKwargs};
use zerobatch::generate::decoder::Decoder;
use zerobatch::generate::gguf::GgufFile;
use zerobatch::generate::prompt::chat_prompt;
use zerobatch::generate::smollm3::{uses_rope, SmolLm3};
use zerobatch::generate::tokenizer::GenTokenizer;
use zerobatch::kernels::{Dtype, KernelLevel};
use zerobatch::model::DtypeChoice;
use zerobatch::server::BackgroundServer;

/// Steps each greedy comparison with llama.cpp must cover before a near tie, or the whole run
/// when shorter (the f32 chat answer is 16 tokens; llama.cpp's first near tie on a quantized
/// file comes at step 17).
const MIN_LLAMA_CPP_STEPS: usize = 16;
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
    /// transformers' logits after each prompt with RoPE on every layer (f32 weights).
    all_rope_f32_last: Vec<Vec<f32>>,
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
    no_rope_layers: Vec<u8>,
}

#[derive(Deserialize)]
struct Chat {
    messages: Vec<ChatMessage>,
    chat_template_kwargs: TemplateKwargs,
    prompt_text: String,
    prompt_ids: Vec<u32>,
    prompt_ids_thinking: Vec<u32>,
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
        let text = std::fs::read_to_string(data("tiny_smollm3_reference.json"))
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

fn load(variant: &str, dtype: Dtype, keep_low_bit: bool) -> SmolLm3 {
    SmolLm3::load(
        &model_path(variant),
        dtype,
        keep_low_bit,
        KernelLevel::detected(),
        2,
    )
    .unwrap()
    .0
}

fn check_shape(model: &SmolLm3) {
    let (c, h) = (&reference().config, model.config());
    assert_eq!(
        (h.vocab, h.n_embd, h.n_head, h.n_head_kv, h.head_dim, h.n_ff),
        (c.vocab, c.hidden, c.heads, c.kv_heads, c.head_dim, c.ff)
    );
    assert_eq!((h.n_layer, h.context), (c.layers, c.context));
    assert_eq!((h.rope_base, h.rms_eps), (c.rope_theta, c.rms_eps));
    assert_eq!(h.n_rot, c.head_dim);
}

#[test]
fn the_files_are_what_the_converter_wrote() {
    let r = reference();
    eprintln!("smollm3 reference: {}", r.generator_versions);
    // The layers transformers runs without RoPE are the ones we do.
    let ours: Vec<u8> = (0..r.config.layers)
        .map(|i| u8::from(uses_rope(i)))
        .collect();
    assert_eq!(ours, r.config.no_rope_layers);
    assert!(r.config.no_rope_layers.contains(&0));
    for variant in ["f32", "q8_0", "q4_0"] {
        let file = GgufFile::open(&model_path(variant)).unwrap();
        assert_eq!(file.string("general.architecture").unwrap(), "smollm3");
        assert_eq!(file.string("tokenizer.ggml.pre").unwrap(), "smaug-bpe");
        for (name, ty) in &r.stored_types[variant] {
            let got = format!("{:?}", file.tensor_type(name).unwrap()).to_uppercase();
            assert_eq!(&got, ty, "{variant} {name}");
        }
        // Tied embeddings; no frequency factors.
        assert!(!file.has_tensor("output.weight"));
        assert!(!file.has_tensor("rope_freqs.weight"));
    }
}

#[test]
fn f32_file_matches_transformers() {
    let model = load("f32", Dtype::F32, false);
    check_shape(&model);
    check_model("smollm3", &reference().prompts, "f32", &model, true);
}

#[test]
fn quantized_files_match_transformers_on_their_stored_values() {
    for variant in ["q8_0", "q4_0"] {
        let model = load(variant, Dtype::F32, false);
        check_shape(&model);
        check_model("smollm3", &reference().prompts, variant, &model, true);
    }
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
        check_model("smollm3", &reference().prompts, variant, &model, false);
    }
}

/// With RoPE on every layer, transformers' logits move far past the tolerance ours meet: the
/// reference comparison would catch a layer rotated that should not be.
#[test]
fn the_layer_without_rope_changes_the_logits() {
    let r = reference();
    let model = load("f32", Dtype::F32, false);
    for (p, all_rope) in r.prompts.iter().zip(&r.all_rope_f32_last) {
        let ours = run_alone(&model, &p.ids);
        let want = p.f32.last().unwrap();
        assert!(max_abs_diff(&ours, want) <= TOLERANCE);
        let gap = max_abs_diff(&ours, all_rope);
        assert!(
            gap > 100.0 * TOLERANCE,
            "RoPE on every layer moves the logits by only {gap}"
        );
    }
}

/// The chat prompt through our template path (thinking off through chat_template_kwargs, and
/// on by default), and greedy decoding on the f32 file.
#[test]
fn chat_prompts_and_greedy_decoding_match_transformers() {
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
        &chat.chat_template_kwargs,
        false,
    )
    .unwrap();
    assert_eq!(text, chat.prompt_text);
    assert_eq!(ids, chat.prompt_ids, "the chat prompt's ids");
    let (thinking_text, thinking) = chat_prompt(
        &template,
        &tokenizer,
        &chat.messages,
        &TemplateKwargs::new(),
        false,
    )
    .unwrap();
    assert_eq!(
        thinking, chat.prompt_ids_thinking,
        "the prompt with thinking on"
    );
    assert!(thinking_text.contains("/think") && !thinking_text.contains("/no_think"));
    let model = load("f32", Dtype::F32, false);
    let out = greedy(
        &model,
        |id| tokenizer.is_end(id),
        &ids,
        chat.greedy_ids.len() + 4,
    );
    assert_eq!(out, chat.greedy_ids, "greedy ids");
    assert_eq!(*out.last().unwrap(), r.special_ids["<|im_end|>"]);
    assert_eq!(tokenizer.decode(&out), chat.text, "the answer's text");
}

#[test]
fn greedy_decoding_matches_llama_cpp_up_to_a_near_tie() {
    let r = reference();
    check_llama_cpp(
        "smollm3",
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

#[test]
fn the_tokenizer_gives_llama_cpps_ids_on_hard_strings() {
    let r = reference();
    let tokenizer = GenTokenizer::from_gguf(&GgufFile::open(&model_path("f32")).unwrap()).unwrap();
    assert!(r.tokenization.len() >= 15);
    for case in &r.tokenization {
        let ids = tokenizer.encode(&case.text, false).unwrap();
        assert_eq!(ids, case.ids, "{:?}", case.text);
        if !ids.iter().any(|&i| tokenizer.is_special(i)) {
            assert_eq!(tokenizer.decode(&ids), case.text, "{:?}", case.text);
        }
    }
}

#[test]
fn the_end_of_generation_tokens_are_llama_cpps() {
    let r = reference();
    let tokenizer = GenTokenizer::from_gguf(&GgufFile::open(&model_path("f32")).unwrap()).unwrap();
    let ends: Vec<u32> = (0..r.config.vocab as u32)
        .filter(|&id| tokenizer.is_end(id))
        .collect();
    assert_eq!(ends, r.end_of_generation_ids);
    for end in ["<|im_end|>", "<|eot_id|>", "<|end_of_text|>"] {
        assert!(tokenizer.is_end(r.special_ids[end]), "{end}");
    }
    for not_end in [
        "<|im_start|>",
        "<|begin_of_text|>",
        "<think>",
        "</tool_call>",
    ] {
        assert!(!tokenizer.is_end(r.special_ids[not_end]), "{not_end}");
    }
}

/// The real server on the f32 file: an OpenAI chat completion with thinking off is
/// transformers' greedy answer, ended by `<|im_end|>` (finish reason `stop`).
#[test]
fn the_server_answers_a_chat_completion_that_ends_at_im_end() {
    let r = reference();
    let mut config = ServeConfig::for_tests(model_path("f32").to_str().unwrap());
    config.dtype = DtypeChoice::Fixed(Dtype::F32);
    let server = BackgroundServer::start(config).expect("server starts");
    common::wait_ready(server.addr);
    let body = serde_json::json!({
        "messages": r.chat.messages,
        "temperature": 0,
        "max_tokens": 64,
        "chat_template_kwargs": r.chat.chat_template_kwargs,
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
