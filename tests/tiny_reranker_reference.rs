//! Cross-encoders, classifiers, CLS pooling and prompts against sentence-transformers, on the
//! tiny seeded models of scripts/make-reranker-reference.py (rewritten by
//! `common::reranker_models`, with all-MiniLM-L6-v2's real WordPiece tokenizer):
//!
//! - token ids and token types of every pair exactly as `CrossEncoder` feeds them, long pairs
//!   truncated `longest_first` at the model's limit, non-ASCII text included;
//! - `CrossEncoder.predict` scores in the default dtype within 1e-4 where it is f32, within
//!   the 1e-3 where it is int16 (AVX2 and up; `--dtype int16` is checked on every
//!   CPU; bf16 misses the bar, by the bound measured here), the same rank order as
//!   `CrossEncoder.rank`, and a pair's score the same alone as in a batch;
//! - the three-label classifier's logits and softmax, texts and pairs;
//! - the CLS-pooling embedder's `SentenceTransformer.encode`, with and without `prompt_name`,
//!   at cosine ≥ 0.9999;
//! - over HTTP against the real binary: TEI's `/rerank` and `/predict`, Cohere's `/v1/rerank`,
//!   `POST /` following the task, `/embed` with `prompt_name`, `/info`, and the errors (no
//!   texts 400, too many 413, unknown prompt 400, another task's route 404 naming the task).

mod common;

use common::reranker_models::{model_dirs, reference};
use common::scoring_checks::{
    check_classifier, check_predict_routes, check_rerank_routes, check_reranker, tolerance_for,
    SCORE_BAR,
};
use common::*;
use serde_json::{json, Value};
use zerobatch::kernels::Dtype;
use zerobatch::model::{DtypeChoice, Task};

/// Largest |difference| of a score (sigmoid, softmax) in f32 (the bar, `SCORE_BAR`,
/// 1e-3, holds int16).
const SCORE_TOLERANCE: f32 = 1e-4;
/// The same with `--dtype bf16`, which the default avoids for classifiers: the largest
/// difference measured on these models is printed (7.1e-3 for the reranker's sigmoid scores
/// on avx512-bf16, docs/benchmarks.md); this bound only catches a broken bf16 path.
const BF16_TOLERANCE: f32 = 2e-2;

fn bf16_dtype() -> DtypeChoice {
    DtypeChoice::Fixed(Dtype::Bf16)
}

#[test]
fn cross_encoder_scores_and_rank_order_match_sentence_transformers() {
    let r = reference();
    let (dir, _, _) = model_dirs();
    for (dtype, tolerance) in [
        (DtypeChoice::Auto, SCORE_TOLERANCE),
        (bf16_dtype(), BF16_TOLERANCE),
        (DtypeChoice::Fixed(Dtype::Int16), SCORE_BAR),
    ] {
        let m = load_encoder(dir, dtype);
        let tolerance = tolerance_for(&m, dtype, tolerance);
        assert_eq!(m.info.task, Task::Reranking);
        assert_eq!(m.info.max_input_length, r.reranker.max_input_length);
        let classifier = m.info.classifier.as_ref().unwrap();
        assert_eq!(classifier.labels, vec!["LABEL_0"]);
        let (worst, truncated) =
            check_reranker(&m, &r.reranker, tolerance, dtype == DtypeChoice::Auto);
        assert!(truncated >= 4, "the reference truncates long pairs");
        eprintln!("reranker {dtype:?}: largest score difference {worst:e}");
    }
}

#[test]
fn classifier_logits_and_softmax_match_sentence_transformers() {
    let r = reference();
    let (_, dir, _) = model_dirs();
    for (dtype, tolerance) in [
        (DtypeChoice::Auto, SCORE_TOLERANCE),
        (bf16_dtype(), BF16_TOLERANCE),
        (DtypeChoice::Fixed(Dtype::Int16), SCORE_BAR),
    ] {
        let m = load_encoder(dir, dtype);
        let tolerance = tolerance_for(&m, dtype, tolerance);
        assert_eq!(m.info.task, Task::TextClassification);
        assert_eq!(
            m.info.classifier.as_ref().unwrap().score_function,
            zerobatch::model::ScoreFunction::Softmax
        );
        let worst = check_classifier(&m, &r.classifier, tolerance, dtype == DtypeChoice::Auto);
        eprintln!("classifier {dtype:?}: largest softmax difference {worst:e}");
    }
}

#[test]
fn cls_pooling_and_prompts_match_sentence_transformers() {
    let r = reference();
    let (_, _, dir) = model_dirs();
    let m = load_encoder(dir, DtypeChoice::Auto);
    assert_eq!(m.info.task, Task::Embedding);
    assert_eq!(m.info.pooling, zerobatch::model::Pooling::Cls);
    assert_eq!(m.info.max_input_length, r.embedder.max_input_length);
    assert!(m.info.normalized_by_model);
    assert!(r
        .embedder
        .cases
        .iter()
        .any(|c| c.untruncated_token_count > r.embedder.max_input_length));
    for c in &r.embedder.cases {
        let mut texts = vec![(None, c.text.clone(), &c.embedding)];
        for (name, want) in &c.prompted {
            let prompt = m.info.prompts.get(name).unwrap();
            assert_eq!(prompt, r.embedder.prompts[name]);
            texts.push((Some(name), format!("{prompt}{}", c.text), want));
        }
        for (name, text, want) in texts {
            let ids = m.tokenizer.encode(0, &text, true).unwrap();
            let mut v = m.model.embed(&[&ids], 1).unwrap().remove(0);
            zerobatch::model::pooling::l2_normalize(&mut v);
            let cos = cosine(&v, want);
            assert!(
                cos >= 0.9999,
                "{:?} with prompt {name:?}: cosine {cos}",
                c.text
            );
        }
    }
}

fn post(addr: std::net::SocketAddr, path: &str, body: Value) -> Resp {
    post_json(addr, path, &body)
}

/// Asserts an error answer: its status, and that its message contains `says`.
fn assert_error(r: &Resp, status: u16, says: &str) {
    assert_eq!(r.status, status, "{}", r.text());
    let error = r.json()["error"].as_str().unwrap_or_default().to_string();
    assert!(error.contains(says), "{error:?} does not say {says:?}");
}

#[test]
fn the_real_binary_reranks_and_classifies_over_http() {
    let r = reference();
    let (reranker, classifier, embedder) = model_dirs();
    let s = Proc::spawn(
        reranker.to_str().unwrap(),
        &["--max-client-batch-size", "8", "--max-batch-delay-ms", "2"],
    );
    wait_ready(s.addr);
    let info = get(s.addr, "/info").json();
    assert_eq!(info["task"], "reranking", "{info}");
    assert_eq!(info["labels"], json!(["LABEL_0"]));
    assert_eq!(info["score_function"], "sigmoid");
    assert_eq!(info["max_input_length"], r.reranker.max_input_length);

    check_rerank_routes(s.addr, &r.reranker, SCORE_TOLERANCE);
    // POST / is /rerank on a reranker (TEI routes it so).
    let c = &r.reranker.cases[0];
    let root = post(s.addr, "/", json!({"query": c.query, "texts": c.passages}));
    assert_eq!(root.status, 200, "{}", root.text());
    assert_eq!(root.json()[0]["index"], c.order[0]);
    // Errors.
    assert_error(
        &post(s.addr, "/rerank", json!({"query": "q", "texts": []})),
        400,
        "empty",
    );
    let nine: Vec<String> = (0..9).map(|i| format!("passage {i}")).collect();
    assert_error(
        &post(s.addr, "/rerank", json!({"query": "q", "texts": nine})),
        413,
        "9 texts in one request; the limit is 8",
    );
    assert_error(
        &post(
            s.addr,
            "/v1/rerank",
            json!({"query": "q", "documents": nine}),
        ),
        413,
        "9 documents",
    );
    let long = c.passages.iter().max_by_key(|p| p.len()).unwrap();
    assert_error(
        &post(
            s.addr,
            "/rerank",
            json!({"query": c.query, "texts": [long], "truncate": false}),
        ),
        413,
        "over the model's maximum",
    );
    // A long query beside a long passage, truncated to the model's few positions: the
    // `tokenizers` crate's own pair truncation kept every cut-away part of the query times
    // every part of the passage (an 18 kB query with a 4 kB passage grew past 24 GB); the
    // pair is now cut by tokenizer.rs, and the server stays small.
    let mut rng = SplitMix64(7);
    let mut words = |n: usize| -> String {
        (0..n)
            .map(|_| {
                let len = 1 + rng.next() % 8;
                (0..len)
                    .map(|_| char::from(b'a' + (rng.next() % 26) as u8))
                    .collect::<String>()
            })
            .collect::<Vec<_>>()
            .join(" ")
    };
    let (query, passage) = (words(3600), words(800));
    let answer = post(
        s.addr,
        "/rerank",
        json!({"query": query, "texts": [passage, "short"], "truncate": true}),
    );
    assert_eq!(answer.status, 200, "{}", answer.text());
    assert_eq!(answer.json().as_array().unwrap().len(), 2);
    let peak_mb = s.status_kb("VmHWM") / 1024;
    // 1.6 GB on the build before the fix (45080f6), this request alone.
    assert!(peak_mb < 512, "peak RSS {peak_mb} MB after one long pair");
    for (path, body) in [
        ("/embed", json!({"inputs": "x"})),
        ("/embed_all", json!({"inputs": "x"})),
        (
            "/similarity",
            json!({"inputs": {"source_sentence": "x", "sentences": ["y"]}}),
        ),
        ("/v1/embeddings", json!({"input": "x"})),
        ("/generate", json!({"inputs": "x"})),
    ] {
        let r = post(s.addr, path, body);
        assert_error(
            &r,
            404,
            "is a reranking model: use /rerank, /v1/rerank or /predict",
        );
        assert_eq!(r.json()["error_type"], "not_found");
    }
    drop(s);

    // The three-label classifier.
    let s = Proc::spawn(classifier.to_str().unwrap(), &["--max-client-batch", "8"]);
    wait_ready(s.addr);
    let info = get(s.addr, "/info").json();
    assert_eq!(info["task"], "text-classification", "{info}");
    assert_eq!(info["labels"], json!(r.classifier.labels));
    check_predict_routes(s.addr, &r.classifier, SCORE_TOLERANCE);
    let c = &r.classifier.cases[0];
    let top = post(
        s.addr,
        "/",
        json!({"inputs": c.inputs, "parameters": {"top_k": 1}}),
    )
    .json();
    assert_eq!(top.as_array().unwrap().len(), 1, "{top}");
    assert_error(
        &post(s.addr, "/rerank", json!({"query": "q", "texts": ["a"]})),
        404,
        "is a text-classification model: use /predict",
    );
    assert_error(
        &post(s.addr, "/predict", json!({"inputs": ["a", "b", "c"]})),
        400,
        "three or more",
    );
    drop(s);

    // The CLS embedder with prompts.
    let s = Proc::spawn(embedder.to_str().unwrap(), &[]);
    wait_ready(s.addr);
    let info = get(s.addr, "/info").json();
    assert_eq!(info["task"], "embedding");
    assert_eq!(info["pooling"], "cls");
    assert_eq!(info["prompts"], json!(["passage", "query"]));
    assert!(info["labels"].is_null());
    let texts: Vec<&str> = r.embedder.cases.iter().map(|c| c.text.as_str()).collect();
    for name in [None, Some("query"), Some("passage")] {
        let mut body = json!({ "inputs": texts });
        if let Some(name) = name {
            body["prompt_name"] = json!(name);
        }
        let got = vectors(&post(s.addr, "/embed", body));
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
    assert_error(
        &post(
            s.addr,
            "/embed",
            json!({"inputs": "x", "prompt_name": "doc"}),
        ),
        400,
        "prompt_name \"doc\" is not one of this model's prompts: passage, query",
    );
    for (path, body) in [
        ("/rerank", json!({"query": "q", "texts": ["a"]})),
        ("/v1/rerank", json!({"query": "q", "documents": ["a"]})),
        ("/predict", json!({"inputs": "a"})),
    ] {
        assert_error(
            &post(s.addr, path, body),
            404,
            "is an embedding model: use /embed or /v1/embeddings",
        );
    }
}
