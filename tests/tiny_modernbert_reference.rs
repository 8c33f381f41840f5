//! ModernBERT embedders against sentence-transformers on the tiny seeded models of
//! scripts/make-modernbert-reference.py (rewritten by `common::modernbert_model` with GPT-2's
//! real BPE in ModernBERT's tokenizer.json layout, `[CLS] … [SEP]`): 4 layers, layers 0 and 3
//! global and 1 and 2 local with a window of ±4 tokens, so every text of more than 5 tokens
//! is masked on the local layers; one model with mean pooling, Normalize and prompts (as
//! modernbert-embed), one with CLS pooling (as gte-modernbert):
//!
//! - token ids exactly as sentence-transformers feeds them: non-ASCII text, long texts cut at
//!   max_seq_length with `[SEP]` still last, an empty text;
//! - `SentenceTransformer.encode` (and with `prompt_name` "query" for the mean model): within
//!   1e-5 and cosine ≥ 0.99999 in f32, cosine ≥ 0.9999 in the default dtype (bf16 or int16
//!   on a SIMD path); every text the same alone as in one batch with texts of other lengths (the
//!   reference's batch was padded);
//! - over HTTP against the real binary: `/info`, `/embed` (413 without truncation,
//!   `prompt_name`, `truncate`), `/v1/embeddings`, one text per request = all in one request;
//! - a ModernBertForMaskedLM checkpoint (tensors under `model.`, a head beside them) gives
//!   the same vectors; a ModernBertForSequenceClassification config without its head's
//!   tensors is refused naming the one missing.

mod common;

use std::path::Path;

use common::modernbert_model::{model_dirs, reference};
use common::reranker_models::{EmbedCase, Section};
use common::*;
use serde_json::{json, Value};
use zerobatch::kernels::Dtype;
use zerobatch::model::{DtypeChoice, LoadedModel, Pooling, Task};

/// Largest |difference| of an embedding's value in f32.
const F32_TOLERANCE: f32 = 1e-5;
const F32_COSINE: f64 = 0.999_99;
/// The accuracy bar of every embedding model in its default dtype.
const DEFAULT_COSINE: f64 = 0.9999;
/// `--dtype int8`'s bar, all-MiniLM-L6-v2's (tests/minilm_reference.rs).
const INT8_COSINE: f64 = 0.999;
const CLS: u32 = 50258;
const SEP: u32 = 50259;

/// The two models: (directory, reference section, pooling, normalized by the model).
fn models() -> [(&'static Path, &'static Section<EmbedCase>, Pooling, bool); 2] {
    let (mean, cls) = model_dirs();
    let r = reference();
    [
        (mean.as_path(), &r.mean, Pooling::Mean, true),
        (cls.as_path(), &r.cls, Pooling::Cls, false),
    ]
}

/// The model's vector for `text`, l2-normalised when the model ends in Normalize.
fn embed(m: &LoadedModel, text: &str) -> Vec<f32> {
    let ids = m.tokenizer.encode(0, text, true).unwrap();
    let mut v = m.model.embed(&[&ids], 1).unwrap().remove(0);
    if m.info.normalized_by_model {
        zerobatch::model::pooling::l2_normalize(&mut v);
    }
    v
}

/// Every case's text with each of its prompts: (prompt name, text, reference vector).
fn prompted_texts<'a>(
    m: &LoadedModel,
    s: &'a Section<EmbedCase>,
) -> Vec<(Option<String>, String, &'a Vec<f32>)> {
    let mut out = Vec::new();
    for c in &s.cases {
        out.push((None, c.text.clone(), &c.embedding));
        for (name, want) in &c.prompted {
            let prompt = m.info.prompts.get(name).unwrap();
            out.push((Some(name.clone()), format!("{prompt}{}", c.text), want));
        }
    }
    out
}

#[test]
fn the_tokenizer_gives_sentence_transformers_ids_between_cls_and_sep() {
    for (dir, s, pooling, normalized) in models() {
        let m = load_encoder(dir, DtypeChoice::Auto);
        assert_eq!(m.info.model_type, "modernbert");
        assert_eq!(m.info.task, Task::Embedding);
        assert_eq!(m.info.pooling, pooling);
        assert_eq!(m.info.normalized_by_model, normalized);
        assert_eq!(m.info.dimensions, 64);
        assert_eq!(m.info.max_input_length, s.max_input_length);
        let names: Vec<&str> = s.prompts.keys().map(String::as_str).collect();
        assert_eq!(m.info.prompts.names(), names);
        let mut truncated = 0;
        for c in &s.cases {
            let ids = m.tokenizer.encode(0, &c.text, true).unwrap();
            assert_eq!(ids, c.token_ids, "{:?}", c.text);
            assert_eq!((ids[0], ids.last()), (CLS, Some(&SEP)), "{:?}", c.text);
            if c.untruncated_token_count > s.max_input_length {
                truncated += 1;
                assert!(
                    m.tokenizer.encode(0, &c.text, false).is_err(),
                    "{:?}",
                    c.text
                );
            }
        }
        assert!(truncated >= 2);
    }
}

#[test]
fn embeddings_match_sentence_transformers_alone_and_batched() {
    for (dir, s, pooling, _) in models() {
        for (dtype, bar) in [
            (DtypeChoice::Fixed(Dtype::F32), F32_COSINE),
            (DtypeChoice::Auto, DEFAULT_COSINE),
            (DtypeChoice::Fixed(Dtype::Int8), INT8_COSINE),
        ] {
            let m = load_encoder(dir, dtype);
            let texts = prompted_texts(&m, s);
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
                assert!(
                    cos >= bar,
                    "{text:?} ({name:?}) {pooling:?} {dtype:?}: cosine {cos}"
                );
            }
            // All in one batch (lengths 2 to 32): the vectors of each alone.
            let ids: Vec<Vec<u32>> = texts
                .iter()
                .map(|(_, t, _)| m.tokenizer.encode(0, t, true).unwrap())
                .collect();
            let refs: Vec<&[u32]> = ids.iter().map(Vec::as_slice).collect();
            for ((_, text, _), mut v) in texts.iter().zip(m.model.embed(&refs, 2).unwrap()) {
                if m.info.normalized_by_model {
                    zerobatch::model::pooling::l2_normalize(&mut v);
                }
                let d = max_abs_diff(&v, &embed(&m, text));
                assert!(d <= 1e-5, "{text:?}: batched and alone differ by {d}");
            }
            eprintln!(
                "modernbert {pooling:?} {:?}: largest difference {worst_diff:e}, lowest cosine {worst_cos}",
                m.info.dtype
            );
        }
    }
}

fn post(addr: std::net::SocketAddr, path: &str, body: Value) -> Resp {
    post_json(addr, path, &body)
}

#[test]
fn the_real_binary_serves_modernbert_over_http() {
    for (dir, s, pooling, normalized) in models() {
        let cases = &s.cases;
        let texts: Vec<&str> = cases.iter().map(|c| c.text.as_str()).collect();
        for (args, tolerance_cos) in [
            (&[][..], DEFAULT_COSINE),
            (&["--dtype", "f32"][..], F32_COSINE),
        ] {
            let mut all = vec!["--max-batch-delay-ms", "2"];
            all.extend_from_slice(args);
            let p = Proc::spawn(dir.to_str().unwrap(), &all);
            wait_ready(p.addr);
            let info = get(p.addr, "/info").json();
            assert_eq!(info["task"], "embedding", "{info}");
            assert_eq!(info["model_type"], "modernbert", "{info}");
            assert_eq!(info["pooling"], json!(pooling), "{info}");
            assert_eq!(info["normalized_by_model"], normalized);
            assert_eq!(info["max_input_length"], s.max_input_length);

            // Without truncation the long texts are refused, naming the limit.
            let refused = post(
                p.addr,
                "/embed",
                json!({ "inputs": texts, "truncate": false }),
            );
            assert_eq!(refused.status, 413, "{}", refused.text());
            assert!(refused.text().contains("truncate"), "{}", refused.text());

            let prompts: Vec<Option<&str>> = std::iter::once(None)
                .chain(s.prompts.contains_key("query").then_some(Some("query")))
                .collect();
            for name in prompts {
                // normalize false: the model's own vectors (the CLS model has no Normalize).
                let mut body = json!({ "inputs": texts, "truncate": true, "normalize": false });
                if let Some(name) = name {
                    body["prompt_name"] = json!(name);
                }
                let answer = post(p.addr, "/embed", body.clone());
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
                    let alone = vectors(&post(p.addr, "/embed", body.clone())).remove(0);
                    let d = max_abs_diff(&alone, v);
                    assert!(d <= 1e-5, "{:?}: alone and batched differ by {d}", c.text);
                }
            }

            // OpenAI's route truncates and normalises.
            let openai = post(p.addr, "/v1/embeddings", json!({ "input": texts }));
            assert_eq!(openai.status, 200, "{}", openai.text());
            let openai = openai.json();
            for (i, c) in cases.iter().enumerate() {
                let v: Vec<f32> =
                    serde_json::from_value(openai["data"][i]["embedding"].clone()).unwrap();
                let norm: f64 = v.iter().map(|x| (*x as f64).powi(2)).sum::<f64>().sqrt();
                assert!((norm - 1.0).abs() < 1e-4, "{:?}: norm {norm}", c.text);
                let cos = cosine(&v, &c.embedding);
                assert!(
                    cos >= tolerance_cos,
                    "{:?}: /v1/embeddings cosine {cos}",
                    c.text
                );
            }
        }
    }
}

/// A copy of the mean model's directory with `config.json` edited by `edit` and its tensors
/// renamed by `rename`, plus `extra` tensors.
fn variant(
    name: &str,
    edit: impl Fn(&mut Value),
    rename: impl Fn(&str) -> String,
    extra: &[(&str, Vec<usize>)],
) -> std::path::PathBuf {
    use candle_core::{Device, Tensor};
    let src = &model_dirs().0;
    let dir = std::env::temp_dir().join(format!(
        "zerobatch-modernbert-{name}-{}",
        std::process::id()
    ));
    let _ = std::fs::remove_dir_all(&dir);
    for entry in walk(src) {
        let rel = entry.strip_prefix(src).unwrap();
        std::fs::create_dir_all(dir.join(rel).parent().unwrap()).unwrap();
        std::fs::copy(&entry, dir.join(rel)).unwrap();
    }
    let mut config: Value =
        serde_json::from_slice(&std::fs::read(dir.join("config.json")).unwrap()).unwrap();
    edit(&mut config);
    std::fs::write(dir.join("config.json"), config.to_string()).unwrap();
    let tensors =
        candle_core::safetensors::load(src.join("model.safetensors"), &Device::Cpu).unwrap();
    let mut out: std::collections::HashMap<String, Tensor> =
        tensors.into_iter().map(|(k, v)| (rename(&k), v)).collect();
    for (n, shape) in extra {
        out.insert(
            n.to_string(),
            Tensor::ones(shape.as_slice(), candle_core::DType::F32, &Device::Cpu).unwrap(),
        );
    }
    candle_core::safetensors::save(&out, dir.join("model.safetensors")).unwrap();
    dir
}

fn walk(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else {
            out.push(p);
        }
    }
    out
}

#[test]
fn a_masked_lm_checkpoint_embeds_the_same_and_a_classifier_without_its_head_is_refused() {
    // ModernBertForMaskedLM saves the encoder under "model." beside its head: the head is
    // left out, the vectors are the encoder's.
    let mlm = variant(
        "mlm",
        |c| c["architectures"] = json!(["ModernBertForMaskedLM"]),
        |n| format!("model.{n}"),
        &[
            ("head.dense.weight", vec![64, 64]),
            ("head.norm.weight", vec![64]),
            ("decoder.weight", vec![50304, 64]),
            ("decoder.bias", vec![50304]),
        ],
    );
    let f32 = DtypeChoice::Fixed(Dtype::F32);
    let (plain, prefixed) = (load_encoder(&model_dirs().0, f32), load_encoder(&mlm, f32));
    for c in &reference().mean.cases {
        assert_eq!(
            embed(&prefixed, &c.text),
            embed(&plain, &c.text),
            "{:?}",
            c.text
        );
    }
    std::fs::remove_dir_all(&mlm).unwrap();

    // A sequence classifier's config over an embedder's weights: the error names the missing
    // head tensor (tests/tiny_modernbert_classifier_reference.rs runs real classifiers).
    let classifier = variant(
        "classifier",
        |c| c["architectures"] = json!(["ModernBertForSequenceClassification"]),
        |n| n.to_string(),
        &[],
    );
    // A cross-encoder has no sentence-transformers pipeline after its Transformer.
    std::fs::remove_file(classifier.join("modules.json")).unwrap();
    let err = zerobatch::model::load(classifier.to_str().unwrap(), "main", |_, _| {})
        .err()
        .expect("a ModernBERT classifier without its head loads")
        .to_string();
    std::fs::remove_dir_all(&classifier).unwrap();
    assert!(err.contains("ModernBertForSequenceClassification"), "{err}");
    assert!(err.contains("head.dense.weight"), "{err}");
}
