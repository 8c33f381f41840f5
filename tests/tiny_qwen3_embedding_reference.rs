//! Qwen3-Embedding (a Qwen3 decoder run as an encoder, last-token pooling, Normalize,
//! prompts by name) against sentence-transformers on the tiny seeded model of
//! scripts/make-qwen3-embedding-reference.py (rewritten by `common::qwen3_embedding_model`
//! with GPT-2's real BPE in Qwen3-Embedding's tokenizer.json layout, `<|endoftext|>`
//! appended by its post-processor, left padding in its tokenizer_config.json):
//!
//! - token ids exactly as sentence-transformers feeds them: non-ASCII text, a long text cut
//!   at max_seq_length with `<|endoftext|>` still last, an empty text;
//! - `SentenceTransformer.encode`, plain and with `prompt_name` "query" (Qwen3-Embedding's
//!   instruction form): within 1e-5 and cosine ≥ 0.999999 in f32, cosine ≥ 0.9999 in the
//!   default dtype (bf16 or int16 on a SIMD path); every text the same alone as in one batch with texts
//!   of other lengths (the reference's batch was left-padded);
//! - over HTTP against the real binary: `/info` (model type, pooling, prompts), `/embed`
//!   (with `prompt_name`, `truncate`), `/v1/embeddings`, `/tokenize`, one text per request
//!   = all in one request.

mod common;

use common::qwen3_embedding_model::{model_dir, reference};
use common::*;
use serde_json::{json, Value};
use zerobatch::kernels::Dtype;
use zerobatch::model::{DtypeChoice, LoadOptions, LoadedModel, Pooling, Task};

/// Largest |difference| of an embedding's value in f32.
const F32_TOLERANCE: f32 = 1e-5;
const F32_COSINE: f64 = 0.999_999;
/// The accuracy bar of every embedding model in its default dtype.
const DEFAULT_COSINE: f64 = 0.9999;
/// `--dtype int8`'s bar, all-MiniLM-L6-v2's (tests/minilm_reference.rs).
const INT8_COSINE: f64 = 0.999;
const EOT: u32 = 50256;

fn load(dtype: DtypeChoice) -> LoadedModel {
    zerobatch::model::load_with(
        model_dir().to_str().unwrap(),
        "main",
        LoadOptions {
            dtype,
            kernel_cap: None,
        },
        |_, _| {},
    )
    .unwrap()
}

/// The model's vector for `text`, l2-normalised as the Normalize module does.
fn embed(m: &LoadedModel, text: &str) -> Vec<f32> {
    let ids = m.tokenizer.encode(0, text, true).unwrap();
    let mut v = m.model.embed(&[&ids], 1).unwrap().remove(0);
    zerobatch::model::pooling::l2_normalize(&mut v);
    v
}

/// Every case's text with each of its prompts: (prompt name, text, reference vector).
fn prompted_texts(m: &LoadedModel) -> Vec<(Option<String>, String, &'static Vec<f32>)> {
    let mut out = Vec::new();
    for c in &reference().embedder.cases {
        out.push((None, c.text.clone(), &c.embedding));
        for (name, want) in &c.prompted {
            let prompt = m.info.prompts.get(name).unwrap();
            out.push((Some(name.clone()), format!("{prompt}{}", c.text), want));
        }
    }
    out
}

#[test]
fn the_tokenizer_gives_sentence_transformers_ids_with_endoftext_last() {
    let r = reference();
    let m = load(DtypeChoice::Auto);
    assert_eq!(m.info.model_type, "qwen3");
    assert_eq!(m.info.task, Task::Embedding);
    assert_eq!(m.info.pooling, Pooling::LastToken);
    assert!(m.info.normalized_by_model);
    assert_eq!(m.info.dimensions, 32);
    assert_eq!(m.info.max_input_length, r.embedder.max_input_length);
    assert_eq!(m.info.prompts.names(), vec!["document", "query"]);
    let mut truncated = 0;
    for c in &r.embedder.cases {
        let ids = m.tokenizer.encode(0, &c.text, true).unwrap();
        assert_eq!(ids, c.token_ids, "{:?}", c.text);
        assert_eq!(ids.last(), Some(&EOT), "{:?}", c.text);
        if c.untruncated_token_count > r.embedder.max_input_length {
            truncated += 1;
            assert!(
                m.tokenizer.encode(0, &c.text, false).is_err(),
                "{:?}",
                c.text
            );
        }
    }
    assert!(truncated >= 1);
}

#[test]
fn embeddings_match_sentence_transformers_alone_and_batched() {
    for (dtype, bar) in [
        (DtypeChoice::Fixed(Dtype::F32), F32_COSINE),
        (DtypeChoice::Auto, DEFAULT_COSINE),
        (DtypeChoice::Fixed(Dtype::Int8), INT8_COSINE),
    ] {
        let m = load(dtype);
        let texts = prompted_texts(&m);
        let (mut worst_diff, mut worst_cos) = (0f32, 1f64);
        for (name, text, want) in &texts {
            let v = embed(&m, text);
            let (d, cos) = (max_abs_diff(&v, want), cosine(&v, want));
            worst_diff = worst_diff.max(d);
            worst_cos = worst_cos.min(cos);
            if dtype == DtypeChoice::Fixed(Dtype::F32) {
                assert!(d <= F32_TOLERANCE, "{text:?} ({name:?}): differs by {d}");
                assert!(cos >= F32_COSINE, "{text:?} ({name:?}): cosine {cos}");
            }
            assert!(cos >= bar, "{text:?} ({name:?}) {dtype:?}: cosine {cos}");
        }
        // All in one batch (lengths 1 to 24): the vectors of each alone.
        let ids: Vec<Vec<u32>> = texts
            .iter()
            .map(|(_, t, _)| m.tokenizer.encode(0, t, true).unwrap())
            .collect();
        let refs: Vec<&[u32]> = ids.iter().map(Vec::as_slice).collect();
        for ((_, text, _), mut v) in texts.iter().zip(m.model.embed(&refs, 2).unwrap()) {
            zerobatch::model::pooling::l2_normalize(&mut v);
            let d = max_abs_diff(&v, &embed(&m, text));
            assert!(d <= 1e-5, "{text:?}: batched and alone differ by {d}");
        }
        eprintln!(
            "qwen3 embedder {:?}: largest difference {worst_diff:e}, lowest cosine {worst_cos}",
            m.info.dtype
        );
    }
}

fn post(addr: std::net::SocketAddr, path: &str, body: Value) -> Resp {
    post_json(addr, path, &body)
}

#[test]
fn the_real_binary_serves_qwen3_embedding_over_http() {
    let r = reference();
    let cases = &r.embedder.cases;
    let texts: Vec<&str> = cases.iter().map(|c| c.text.as_str()).collect();
    let dir = model_dir().to_str().unwrap();
    for (args, tolerance_cos) in [
        (&[][..], DEFAULT_COSINE),
        (&["--dtype", "f32"][..], F32_COSINE),
    ] {
        let mut all = vec!["--max-batch-delay-ms", "2"];
        all.extend_from_slice(args);
        let s = Proc::spawn(dir, &all);
        wait_ready(s.addr);
        let info = get(s.addr, "/info").json();
        assert_eq!(info["task"], "embedding", "{info}");
        assert_eq!(info["model_type"], "qwen3", "{info}");
        assert_eq!(info["pooling"], "last_token", "{info}");
        assert_eq!(info["normalized_by_model"], true);
        assert_eq!(info["prompts"], json!(["document", "query"]));
        assert_eq!(info["max_input_length"], r.embedder.max_input_length);

        // Without truncation the long texts are refused, naming the limit.
        let refused = post(
            s.addr,
            "/embed",
            json!({ "inputs": texts, "truncate": false }),
        );
        assert_eq!(refused.status, 413, "{}", refused.text());
        assert!(refused.text().contains("truncate"), "{}", refused.text());

        for name in [None, Some("query")] {
            let mut body = json!({ "inputs": texts, "truncate": true });
            if let Some(name) = name {
                body["prompt_name"] = json!(name);
            }
            let answer = post(s.addr, "/embed", body.clone());
            assert_eq!(answer.status, 200, "{}", answer.text());
            let batched = vectors(&answer);
            assert_eq!(batched.len(), texts.len());
            for (i, (c, v)) in cases.iter().zip(&batched).enumerate() {
                let want = name.map_or(&c.embedding, |n| &c.prompted[n]);
                let cos = cosine(v, want);
                assert!(
                    cos >= tolerance_cos,
                    "{:?} with prompt {name:?} ({args:?}): cosine {cos}",
                    c.text
                );
                // The same text alone in its own request.
                body["inputs"] = json!(texts[i]);
                let alone = vectors(&post(s.addr, "/embed", body.clone())).remove(0);
                let d = max_abs_diff(&alone, v);
                assert!(d <= 1e-5, "{:?}: alone and batched differ by {d}", c.text);
            }
        }

        // OpenAI's route truncates and normalises.
        let openai = post(s.addr, "/v1/embeddings", json!({ "input": texts }));
        assert_eq!(openai.status, 200, "{}", openai.text());
        let openai = openai.json();
        for (i, c) in cases.iter().enumerate() {
            let v: Vec<f32> =
                serde_json::from_value(openai["data"][i]["embedding"].clone()).unwrap();
            let cos = cosine(&v, &c.embedding);
            assert!(
                cos >= tolerance_cos,
                "{:?}: /v1/embeddings cosine {cos}",
                c.text
            );
        }

        // An unknown prompt name is the client's error, naming the model's prompts.
        let bad = post(
            s.addr,
            "/embed",
            json!({ "inputs": "x", "prompt_name": "passage" }),
        );
        assert_eq!(bad.status, 400, "{}", bad.text());
        assert!(bad.text().contains("document, query"), "{}", bad.text());

        // /tokenize gives the ids the model runs on.
        let tokens = post(
            s.addr,
            "/tokenize",
            json!({ "inputs": texts, "truncate": true }),
        );
        assert_eq!(tokens.status, 200, "{}", tokens.text());
        for (c, t) in cases.iter().zip(tokens.json().as_array().unwrap()) {
            let ids: Vec<u32> = t
                .as_array()
                .unwrap()
                .iter()
                .map(|x| x["id"].as_u64().unwrap() as u32)
                .collect();
            assert_eq!(ids, c.token_ids, "{:?}", c.text);
        }
    }
}

#[test]
fn a_qwen3_checkpoint_without_sentence_transformers_files_is_refused() {
    // The same checkpoint without modules.json and 1_Pooling/: a chat model's layout.
    let dir = std::env::temp_dir().join(format!("zerobatch-qwen3-bare-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    for name in ["config.json", "tokenizer.json", "model.safetensors"] {
        std::fs::copy(model_dir().join(name), dir.join(name)).unwrap();
    }
    let err = zerobatch::model::load(dir.to_str().unwrap(), "main", |_, _| {})
        .err()
        .expect("a bare Qwen3 checkpoint loads")
        .to_string();
    std::fs::remove_dir_all(&dir).unwrap();
    assert!(
        err.contains("modules.json") && err.contains("GGUF"),
        "{err}"
    );
}
