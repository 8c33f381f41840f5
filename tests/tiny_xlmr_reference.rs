//! XLM-RoBERTa encoders, embedders and cross-encoders, against sentence-transformers on the
//! tiny seeded models of scripts/make-xlmr-reference.py (rewritten by `common::xlmr_models`,
//! with the SentencePiece Unigram tokenizer that script trained, in XLM-R's tokenizer.json
//! layout: Precompiled normalizer, Metaspace, `<s> A </s></s> B </s>`):
//!
//! - token ids of texts and pairs exactly as sentence-transformers feeds them: non-ASCII and
//!   CJK text, a literal `<pad>` inside a text (the padding id, which XLM-R's positions skip),
//!   long texts truncated at the model's limit (2 less than its positions), pairs
//!   `longest_first`; every token of type 0;
//! - `CrossEncoder.predict` scores within 1e-4 in the default dtype (f32 for a classifier),
//!   `CrossEncoder.rank`'s order, a pair the same alone as in a batch; bf16 printed and held
//!   to the loose bound of the BERT reranker test;
//! - `SentenceTransformer.encode` of the mean-pooling embedder with e5's prompts and of the CLS
//!   embedder: within 1e-4 in f32, cosine ≥ 0.9999 in the default dtype (bf16 or int16), alone = batched;
//! - over HTTP against the real binary: `/rerank`, `/v1/rerank`, `/predict`, `/embed` (with
//!   `prompt_name`), `/v1/embeddings`, `/info`.

mod common;

use common::reranker_models::EmbedCase;
use common::scoring_checks::{check_rerank_routes, check_reranker, tolerance_for, SCORE_BAR};
use common::xlmr_models::{model_dirs, reference};
use common::*;
use serde_json::{json, Value};
use zerobatch::kernels::Dtype;
use zerobatch::model::{DtypeChoice, LoadedModel, Task};

/// Largest |difference| of a score or an embedding's value in f32.
const F32_TOLERANCE: f32 = 1e-4;
/// The reranker's scores with `--dtype bf16`, which the default avoids for classifiers (as
/// tests/tiny_reranker_reference.rs: this bound only catches a broken bf16 path; the largest
/// difference is printed).
const BF16_TOLERANCE: f32 = 2e-2;

const PAD: u32 = 1;

#[test]
fn the_unigram_tokenizer_gives_sentence_transformers_ids() {
    let r = reference();
    let (reranker, embedder, cls_embedder) = model_dirs();
    let m = load_encoder(reranker, DtypeChoice::Auto);
    assert_eq!(m.info.max_input_length, r.reranker.max_input_length);
    let (mut truncated, mut pads) = (0, 0);
    for c in &r.reranker.cases {
        let pairs = m
            .tokenizer
            .encode_pairs(&c.query, &c.passages, true)
            .unwrap();
        for (i, (p, want)) in pairs.iter().zip(&c.pairs).enumerate() {
            assert_eq!(p.ids, want.token_ids, "{} pair {i}", c.name);
            // XLM-R's pair template gives every token type 0.
            assert_eq!(p.second_from, p.ids.len(), "{} pair {i}", c.name);
            assert!(want.type_ids.iter().all(|&t| t == 0));
            truncated += (want.untruncated_token_count > p.ids.len()) as usize;
            pads += p.ids.contains(&PAD) as usize;
        }
    }
    assert!(truncated >= 3 && pads >= 1, "{truncated} truncated, {pads}");
    for (dir, section) in [(embedder, &r.embedder), (cls_embedder, &r.cls_embedder)] {
        let m = load_encoder(dir, DtypeChoice::Auto);
        assert_eq!(m.info.max_input_length, section.max_input_length);
        for c in &section.cases {
            let ids = m.tokenizer.encode(0, &c.text, true).unwrap();
            assert_eq!(ids, c.token_ids, "{:?}", c.text);
            if c.untruncated_token_count > section.max_input_length {
                assert!(
                    m.tokenizer.encode(0, &c.text, false).is_err(),
                    "{:?}",
                    c.text
                );
            }
        }
    }
}

#[test]
fn cross_encoder_scores_and_rank_order_match_sentence_transformers() {
    let r = reference();
    let (dir, _, _) = model_dirs();
    for (dtype, tolerance) in [
        (DtypeChoice::Auto, F32_TOLERANCE),
        (DtypeChoice::Fixed(Dtype::Bf16), BF16_TOLERANCE),
        (DtypeChoice::Fixed(Dtype::Int16), SCORE_BAR),
    ] {
        let m = load_encoder(dir, dtype);
        let tolerance = tolerance_for(&m, dtype, tolerance);
        assert_eq!(m.info.task, Task::Reranking);
        let (worst, _) = check_reranker(&m, &r.reranker, tolerance, dtype == DtypeChoice::Auto);
        eprintln!("xlm-r reranker {dtype:?}: largest score difference {worst:e}");
    }
}

/// The model's vector for `text` (with `prompt`), l2-normalised as the Normalize module does.
fn embed(m: &LoadedModel, text: &str) -> Vec<f32> {
    let ids = m.tokenizer.encode(0, text, true).unwrap();
    let mut v = m.model.embed(&[&ids], 1).unwrap().remove(0);
    zerobatch::model::pooling::l2_normalize(&mut v);
    v
}

/// Every case's text with each of its prompts: (prompt name, text, reference vector).
fn prompted_texts<'a>(
    m: &LoadedModel,
    cases: &'a [EmbedCase],
) -> Vec<(Option<String>, String, &'a Vec<f32>)> {
    let mut out = Vec::new();
    for c in cases {
        out.push((None, c.text.clone(), &c.embedding));
        for (name, want) in &c.prompted {
            let prompt = m.info.prompts.get(name).unwrap();
            out.push((Some(name.clone()), format!("{prompt}{}", c.text), want));
        }
    }
    out
}

#[test]
fn mean_and_cls_embedders_match_sentence_transformers() {
    let r = reference();
    let (_, embedder, cls_embedder) = model_dirs();
    for (dir, section, pooling) in [
        (embedder, &r.embedder, zerobatch::model::Pooling::Mean),
        (
            cls_embedder,
            &r.cls_embedder,
            zerobatch::model::Pooling::Cls,
        ),
    ] {
        // int8's bar is all-MiniLM-L6-v2's (tests/minilm_reference.rs).
        for (dtype, bar) in [
            (DtypeChoice::Fixed(Dtype::F32), 0.9999),
            (DtypeChoice::Auto, 0.9999),
            (DtypeChoice::Fixed(Dtype::Int8), 0.999),
        ] {
            let m = load_encoder(dir, dtype);
            assert_eq!(m.info.task, Task::Embedding);
            assert_eq!(m.info.pooling, pooling);
            assert!(m.info.normalized_by_model);
            let (mut worst_diff, mut worst_cos) = (0f32, 1f64);
            let texts = prompted_texts(&m, &section.cases);
            for (name, text, want) in &texts {
                let v = embed(&m, text);
                let (d, cos) = (max_abs_diff(&v, want), cosine(&v, want));
                worst_diff = worst_diff.max(d);
                worst_cos = worst_cos.min(cos);
                if dtype == DtypeChoice::Fixed(Dtype::F32) {
                    assert!(d <= F32_TOLERANCE, "{text:?} ({name:?}): differs by {d}");
                }
                assert!(cos >= bar, "{text:?} ({name:?}) {dtype:?}: cosine {cos}");
            }
            // All in one batch: the vectors of each alone.
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
                "xlm-r {pooling:?} embedder {:?}: largest difference {worst_diff:e}, lowest cosine {worst_cos}",
                m.info.dtype
            );
        }
    }
}

fn post(addr: std::net::SocketAddr, path: &str, body: Value) -> Resp {
    post_json(addr, path, &body)
}

#[test]
fn the_real_binary_serves_xlmr_rerankers_and_embedders_over_http() {
    let r = reference();
    let (reranker, embedder, cls_embedder) = model_dirs();
    let s = Proc::spawn(reranker.to_str().unwrap(), &["--max-batch-delay-ms", "2"]);
    wait_ready(s.addr);
    let info = get(s.addr, "/info").json();
    assert_eq!(info["task"], "reranking", "{info}");
    assert_eq!(info["score_function"], "sigmoid");
    assert_eq!(info["max_input_length"], r.reranker.max_input_length);
    check_rerank_routes(s.addr, &r.reranker, F32_TOLERANCE);
    drop(s);

    // The e5-style embedder: mean pooling, prompts by name.
    let s = Proc::spawn(embedder.to_str().unwrap(), &[]);
    wait_ready(s.addr);
    let info = get(s.addr, "/info").json();
    assert_eq!(info["task"], "embedding");
    assert_eq!(info["pooling"], "mean");
    assert_eq!(info["prompts"], json!(["passage", "query"]));
    let texts: Vec<&str> = r.embedder.cases.iter().map(|c| c.text.as_str()).collect();
    for name in [None, Some("query"), Some("passage")] {
        let mut body = json!({ "inputs": texts });
        if let Some(name) = name {
            body["prompt_name"] = json!(name);
        }
        let got = vectors(&post(s.addr, "/embed", body));
        assert_eq!(got.len(), texts.len());
        for (c, v) in r.embedder.cases.iter().zip(&got) {
            let want = name.map_or(&c.embedding, |n| &c.prompted[n]);
            let cos = cosine(v, want);
            assert!(
                cos >= 0.9999,
                "{:?} with prompt {name:?}: cosine {cos}",
                c.text
            );
        }
    }
    drop(s);

    // The bge-m3-style CLS embedder in f32, through the OpenAI route too.
    let s = Proc::spawn(cls_embedder.to_str().unwrap(), &["--dtype", "f32"]);
    wait_ready(s.addr);
    assert_eq!(get(s.addr, "/info").json()["pooling"], "cls");
    let texts: Vec<&str> = r
        .cls_embedder
        .cases
        .iter()
        .map(|c| c.text.as_str())
        .collect();
    let tei = vectors(&post(s.addr, "/embed", json!({ "inputs": texts })));
    let openai = post(s.addr, "/v1/embeddings", json!({ "input": texts }));
    assert_eq!(openai.status, 200, "{}", openai.text());
    let openai = openai.json();
    for (i, c) in r.cls_embedder.cases.iter().enumerate() {
        let d = max_abs_diff(&tei[i], &c.embedding);
        assert!(d <= F32_TOLERANCE, "{:?}: /embed differs by {d}", c.text);
        let v: Vec<f32> = serde_json::from_value(openai["data"][i]["embedding"].clone()).unwrap();
        let d = max_abs_diff(&v, &c.embedding);
        assert!(
            d <= F32_TOLERANCE,
            "{:?}: /v1/embeddings differs by {d}",
            c.text
        );
    }
}
