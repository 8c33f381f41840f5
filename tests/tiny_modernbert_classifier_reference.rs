//! ModernBERT rerankers and classifiers (`ModernBertForSequenceClassification`) against
//! sentence-transformers' `CrossEncoder`, on the tiny seeded models of
//! scripts/make-modernbert-classifier-reference.py (rewritten by `common::modernbert_model`
//! with GPT-2's real BPE in ModernBERT's tokenizer layout, pairs `[CLS] a [SEP] b [SEP]`):
//! the embedder references' 4 layers (0 and 3 global, 1 and 2 local, ±4 tokens), then
//!
//! - a one-label reranker with mean pooling and no biases (as gte-reranker-modernbert-base):
//!   pair ids as `CrossEncoder` feeds them (long pairs cut `longest_first` at 48 tokens,
//!   non-ASCII text), `CrossEncoder.predict` scores within 1e-4 in the default dtype (f32, as
//!   for every classifier), `CrossEncoder.rank`'s order, every pair the same alone as batched;
//! - a three-label classifier with CLS pooling, a tanh-GELU head and every bias on (the
//!   encoder's bias paths too): logits and softmax of single texts and pairs;
//! - in bf16 (`--dtype bf16`), the largest difference printed, bounded to catch a broken path;
//! - over HTTP against the real binary: `/info`, TEI's `/rerank` and `/predict`, Cohere's
//!   `/v1/rerank`, and `/embed` answered 404 naming the task.

mod common;

use common::modernbert_model::{classifier_dirs, classifier_reference};
use common::scoring_checks::{
    check_classifier, check_predict_routes, check_rerank_routes, check_reranker,
};
use common::*;
use serde_json::json;
use zerobatch::kernels::Dtype;
use zerobatch::model::{DtypeChoice, Pooling, ScoreFunction, Task};

/// Largest |difference| of a score (sigmoid, softmax) in the default dtype, f32 (the issue's
/// bar is 1e-3).
const SCORE_TOLERANCE: f32 = 1e-4;
/// The same with `--dtype bf16`, which the default avoids for classifiers: this bound only
/// catches a broken bf16 path (the difference measured is printed: 1.0e-2 for the reranker's
/// sigmoid scores and 3.1e-2 for the classifier's softmax, whose logits span ±7, on an Intel
/// Xeon with AVX-512 VNNI and no BF16, 2026-12-06).
const BF16_TOLERANCE: f32 = 5e-2;
/// The same with `--dtype int16`, which the default also avoids for a ModernBERT classifier:
/// it missed the 1e-3 bar here (1.1e-3 for the reranker's scores, 5.7e-3 for the classifier's
/// softmax; printed), where BERT's and XLM-R's meet it; this bound only catches a broken path.
const INT16_TOLERANCE: f32 = 2e-2;

fn dtypes() -> [(DtypeChoice, f32); 3] {
    [
        (DtypeChoice::Auto, SCORE_TOLERANCE),
        (DtypeChoice::Fixed(Dtype::Bf16), BF16_TOLERANCE),
        (DtypeChoice::Fixed(Dtype::Int16), INT16_TOLERANCE),
    ]
}

#[test]
fn a_modernbert_reranker_matches_cross_encoder() {
    let r = classifier_reference();
    eprintln!("reference made with {}", r.generator_versions);
    let (dir, _) = classifier_dirs();
    for (dtype, tolerance) in dtypes() {
        let m = load_encoder(dir, dtype);
        if dtype == DtypeChoice::Auto {
            assert_eq!(
                m.info.dtype,
                Dtype::F32,
                "auto is f32 for a ModernBERT classifier"
            );
        }
        assert_eq!(m.info.model_type, "modernbert");
        assert_eq!(m.info.task, Task::Reranking);
        assert_eq!(m.info.pooling, Pooling::Mean);
        assert_eq!(m.info.max_input_length, r.reranker.max_input_length);
        let classifier = m.info.classifier.as_ref().unwrap();
        assert_eq!(classifier.labels, ["LABEL_0"]);
        assert_eq!(classifier.score_function, ScoreFunction::Sigmoid);
        let (worst, truncated) =
            check_reranker(&m, &r.reranker, tolerance, dtype == DtypeChoice::Auto);
        assert!(truncated >= 4, "the reference truncates long pairs");
        eprintln!("modernbert reranker {dtype:?}: largest score difference {worst:e}");
    }
}

#[test]
fn a_modernbert_classifier_with_every_bias_matches_cross_encoder() {
    let r = classifier_reference();
    let (_, dir) = classifier_dirs();
    for (dtype, tolerance) in dtypes() {
        let m = load_encoder(dir, dtype);
        if dtype == DtypeChoice::Auto {
            assert_eq!(
                m.info.dtype,
                Dtype::F32,
                "auto is f32 for a ModernBERT classifier"
            );
        }
        assert_eq!(m.info.task, Task::TextClassification);
        assert_eq!(m.info.pooling, Pooling::Cls);
        assert_eq!(m.info.max_input_length, r.classifier.max_input_length);
        assert_eq!(
            m.info.classifier.as_ref().unwrap().score_function,
            ScoreFunction::Softmax
        );
        let worst = check_classifier(&m, &r.classifier, tolerance, dtype == DtypeChoice::Auto);
        eprintln!("modernbert classifier {dtype:?}: largest softmax difference {worst:e}");
    }
}

#[test]
fn the_real_binary_serves_modernbert_rerankers_and_classifiers_over_http() {
    let r = classifier_reference();
    let (reranker, classifier) = classifier_dirs();
    let s = Proc::spawn(reranker.to_str().unwrap(), &["--max-batch-delay-ms", "2"]);
    wait_ready(s.addr);
    let info = get(s.addr, "/info").json();
    assert_eq!(info["task"], "reranking", "{info}");
    assert_eq!(info["model_type"], "modernbert", "{info}");
    assert_eq!(info["labels"], json!(["LABEL_0"]));
    assert_eq!(info["score_function"], "sigmoid");
    assert_eq!(info["max_input_length"], r.reranker.max_input_length);
    check_rerank_routes(s.addr, &r.reranker, SCORE_TOLERANCE);
    let embed = post_json(s.addr, "/embed", &json!({"inputs": "x"}));
    assert_eq!(embed.status, 404, "{}", embed.text());
    assert!(
        embed.text().contains("is a reranking model"),
        "{}",
        embed.text()
    );
    drop(s);

    let s = Proc::spawn(classifier.to_str().unwrap(), &[]);
    wait_ready(s.addr);
    let info = get(s.addr, "/info").json();
    assert_eq!(info["task"], "text-classification", "{info}");
    assert_eq!(info["labels"], json!(r.classifier.labels));
    // Pooling is an embedder's fact; a classifier's is its head's own.
    assert!(info["pooling"].is_null(), "{info}");
    check_predict_routes(s.addr, &r.classifier, SCORE_TOLERANCE);
}
