//! The checks every cross-encoder and classifier reference test makes, whatever the encoder
//! (BERT, XLM-RoBERTa, ModernBERT): the model's scores against sentence-transformers'
//! `CrossEncoder`, in process and over HTTP against the real binary.

use std::net::SocketAddr;

use serde_json::{json, Value};
use zerobatch::kernels::KernelLevel;
use zerobatch::model::{DtypeChoice, EncoderInput, LoadedModel, PairIds};

use super::reranker_models::{ClassifyCase, PairFeatures, RerankCase, Section};
use super::{get, max_abs_diff, post_json};

/// The logits of a cross-encoder's default dtype are held to this in f32 (scores to the
/// caller's tolerance).
const LOGIT_TOLERANCE: f32 = 1e-3;
/// The same in int16, the default where AVX2 or better runs: a sigmoid's slope is at most 1/4,
/// so the scores' bar of 1e-3 allows logits ~4e-3 apart; held to 5e-3.
const INT16_LOGIT_TOLERANCE: f32 = 5e-3;
/// The bar for a score (sigmoid or softmax) against sentence-transformers.
pub const SCORE_BAR: f32 = 1e-3;
/// A score alone and in a batch.
const BATCH_TOLERANCE: f32 = 1e-5;

/// The score tolerance of a classifier that runs `dtype` (as `/info` names it) by default:
/// `f32_tolerance` in f32, the bar in int16 (the default where AVX2 or better runs:
/// `DtypeChoice::resolve_for_classifier`; each test prints the largest difference it saw).
fn default_score_tolerance(dtype: &str, f32_tolerance: f32) -> f32 {
    if dtype == "f32" {
        f32_tolerance
    } else {
        SCORE_BAR
    }
}

/// The logits' tolerance of a default dtype (see [`LOGIT_TOLERANCE`]).
fn logit_tolerance(dtype: &str) -> f32 {
    if dtype == "f32" {
        LOGIT_TOLERANCE
    } else {
        INT16_LOGIT_TOLERANCE
    }
}

/// The score tolerance for `m`, loaded as `choice` asked: the given `tolerance` for a fixed
/// dtype; for `auto`, after checking that `m` runs the dtype auto picks for a classifier on
/// this CPU, `f32_tolerance` in f32 and the bar in int16 ([`default_score_tolerance`]).
pub fn tolerance_for(m: &LoadedModel, choice: DtypeChoice, tolerance: f32) -> f32 {
    if choice != DtypeChoice::Auto {
        return tolerance;
    }
    let auto = DtypeChoice::Auto.resolve_for_classifier(KernelLevel::detected());
    assert_eq!(m.info.dtype, auto, "auto's dtype for a classifier");
    default_score_tolerance(auto.name(), tolerance)
}

/// The score and logit tolerances of the server at `addr`, from the dtype its `/info` names.
fn server_tolerances(addr: SocketAddr, f32_tolerance: f32) -> (f32, f32) {
    let info = get(addr, "/info").json();
    let dtype = info["dtype"].as_str().unwrap();
    (
        default_score_tolerance(dtype, f32_tolerance),
        logit_tolerance(dtype),
    )
}

pub fn sigmoid(x: f32) -> f32 {
    1.0 / (1.0 + (-x).exp())
}

/// Indices by decreasing score.
pub fn order(scores: &[f32]) -> Vec<usize> {
    let mut o: Vec<usize> = (0..scores.len()).collect();
    o.sort_by(|&a, &b| scores[b].total_cmp(&scores[a]));
    o
}

/// Checks that `ids`, split at `second_from`, are the reference's ids and token types (where
/// the reference has types: XLM-R's tokenizer gives every token type 0).
pub fn assert_pair(name: &str, ids: &[u32], second_from: usize, want: &PairFeatures) {
    assert_eq!(ids, want.token_ids, "{name}: token ids");
    if want.type_ids.contains(&1) {
        let types: Vec<u32> = (0..ids.len()).map(|i| (i >= second_from) as u32).collect();
        assert_eq!(types, want.type_ids, "{name}: token types");
    }
}

/// Reranks every case of `section` with `m`: each pair's ids and token types as
/// `CrossEncoder` fed them, its logit the same alone as in the batch, the sigmoid scores within
/// `tolerance`; with `exact` (the default dtype) also `CrossEncoder.rank`'s order and the
/// logits within 1e-3 (f32) or 5e-3 (int16). Returns the largest score difference and how
/// many pairs were truncated.
pub fn check_reranker(
    m: &LoadedModel,
    section: &Section<RerankCase>,
    tolerance: f32,
    exact: bool,
) -> (f32, usize) {
    let mut truncated = 0;
    let mut worst = 0f32;
    for c in &section.cases {
        let pairs = m
            .tokenizer
            .encode_pairs(&c.query, &c.passages, true)
            .unwrap();
        for (i, (p, want)) in pairs.iter().zip(&c.pairs).enumerate() {
            assert_pair(&format!("{} pair {i}", c.name), &p.ids, p.second_from, want);
            truncated += (want.untruncated_token_count > p.ids.len()) as usize;
        }
        let inputs: Vec<EncoderInput> = pairs
            .iter()
            .map(|p| EncoderInput::pair(&p.ids, p.second_from))
            .collect();
        let batched: Vec<f32> = m.model.forward(&inputs, 2).unwrap().concat();
        for (i, input) in inputs.iter().enumerate() {
            let alone = m.model.forward(&[*input], 1).unwrap()[0][0];
            assert!(
                (alone - batched[i]).abs() <= BATCH_TOLERANCE,
                "{} pair {i}: alone {alone}, batched {}",
                c.name,
                batched[i]
            );
        }
        let scores: Vec<f32> = batched.iter().map(|&l| sigmoid(l)).collect();
        let d = max_abs_diff(&scores, &c.scores);
        worst = worst.max(d);
        assert!(
            d <= tolerance,
            "{}: scores {scores:?}, want {:?} (max diff {d})",
            c.name,
            c.scores
        );
        // Another dtype may swap near-ties; the default keeps the order.
        if exact {
            assert_eq!(order(&scores), c.order, "{}: rank order", c.name);
            let d = max_abs_diff(&batched, &c.logits);
            assert!(
                d <= logit_tolerance(m.info.dtype.name()),
                "{}: logits differ by {d}",
                c.name
            );
        }
    }
    (worst, truncated)
}

/// One classifier input's ids: a text (`"..."`) or a pair (`["...", "..."]`).
fn classifier_ids(m: &LoadedModel, i: usize, inputs: &Value) -> PairIds {
    match inputs {
        Value::String(text) => {
            let ids = m.tokenizer.encode(i, text, true).unwrap();
            PairIds {
                second_from: ids.len(),
                ids,
            }
        }
        Value::Array(pair) => m
            .tokenizer
            .encode_pair(
                i,
                pair[0].as_str().unwrap(),
                pair[1].as_str().unwrap(),
                true,
            )
            .unwrap(),
        other => panic!("{other}"),
    }
}

/// Classifies every case of `section` with `m`: ids and token types as `CrossEncoder` fed
/// them, the softmax of the logits within `tolerance`; with `exact` also the labels' order
/// and the logits within 1e-3 (f32) or 5e-3 (int16). Returns the largest softmax difference.
pub fn check_classifier(
    m: &LoadedModel,
    section: &Section<ClassifyCase>,
    tolerance: f32,
    exact: bool,
) -> f32 {
    let classifier = m.info.classifier.as_ref().unwrap();
    assert_eq!(classifier.labels, section.labels);
    let mut worst = 0f32;
    for (i, c) in section.cases.iter().enumerate() {
        let p = classifier_ids(m, i, &c.inputs);
        assert_eq!(p.ids, c.token_ids, "case {i}: token ids");
        let types: Vec<u32> = (0..p.ids.len())
            .map(|t| (t >= p.second_from) as u32)
            .collect();
        assert_eq!(types, c.type_ids, "case {i}: token types");
        let input = EncoderInput::pair(&p.ids, p.second_from);
        let logits = m.model.forward(&[input], 1).unwrap().remove(0);
        let mut softmax = logits.clone();
        classifier.score_function.apply(&mut softmax);
        let d = max_abs_diff(&softmax, &c.softmax);
        worst = worst.max(d);
        assert!(d <= tolerance, "case {i}: softmax differs by {d}");
        if exact {
            assert_eq!(order(&softmax), order(&c.softmax), "case {i}: label order");
            let d = max_abs_diff(&logits, &c.logits);
            assert!(
                d <= logit_tolerance(m.info.dtype.name()),
                "case {i}: logits differ by {d}"
            );
        }
    }
    worst
}

fn post(addr: SocketAddr, path: &str, body: Value) -> Value {
    let r = post_json(addr, path, &body);
    assert_eq!(r.status, 200, "{path}: {}", r.text());
    r.json()
}

/// Over HTTP, every case of `section`: TEI's `/rerank` (best first, sigmoid scores within
/// `tolerance`, the texts when asked; `raw_scores` gives the logits), the Cohere/Jina
/// `/v1/rerank` (documents as strings and as objects, the best `top_n`), and `/predict` of
/// one pair (one label, as TEI answers on a reranker).
pub fn check_rerank_routes(addr: SocketAddr, section: &Section<RerankCase>, f32_tolerance: f32) {
    let (tolerance, logit_tolerance) = server_tolerances(addr, f32_tolerance);
    for c in &section.cases {
        let ranks = post(
            addr,
            "/rerank",
            json!({"query": c.query, "texts": c.passages, "return_text": true}),
        );
        let ranks = ranks.as_array().unwrap();
        let got: Vec<usize> = ranks
            .iter()
            .map(|x| x["index"].as_u64().unwrap() as usize)
            .collect();
        assert_eq!(got, c.order, "{}: rank order over HTTP", c.name);
        for x in ranks {
            let i = x["index"].as_u64().unwrap() as usize;
            let score = x["score"].as_f64().unwrap() as f32;
            assert!((score - c.scores[i]).abs() <= tolerance, "{}: {x}", c.name);
            assert_eq!(x["text"], c.passages[i]);
        }
        let raw = post(
            addr,
            "/rerank",
            json!({"query": c.query, "texts": c.passages, "raw_scores": true}),
        );
        for x in raw.as_array().unwrap() {
            let i = x["index"].as_u64().unwrap() as usize;
            let logit = x["score"].as_f64().unwrap() as f32;
            assert!(
                (logit - c.logits[i]).abs() <= logit_tolerance,
                "{}: {x}",
                c.name
            );
            assert!(x.get("text").is_none());
        }
        let documents: Vec<Value> = c
            .passages
            .iter()
            .enumerate()
            .map(|(i, p)| {
                if i % 2 == 0 {
                    json!(p)
                } else {
                    json!({"text": p})
                }
            })
            .collect();
        let top_n = c.passages.len().min(3);
        let v1 = post(
            addr,
            "/v1/rerank",
            json!({"model": "my-reranker", "query": c.query, "documents": documents, "top_n": top_n}),
        );
        assert_eq!(v1["model"], "my-reranker");
        assert!(v1["usage"]["total_tokens"].as_u64().unwrap() > 0);
        let results = v1["results"].as_array().unwrap();
        assert_eq!(results.len(), top_n);
        for (x, &want) in results.iter().zip(&c.order) {
            assert_eq!(x["index"], want, "{}: {v1}", c.name);
            assert_eq!(x["document"]["text"], c.passages[want]);
            let score = x["relevance_score"].as_f64().unwrap() as f32;
            assert!((score - c.scores[want]).abs() <= tolerance, "{x}");
        }
        let p = post(
            addr,
            "/predict",
            json!({"inputs": [c.query, c.passages[0]]}),
        );
        assert_eq!(p[0]["label"], "LABEL_0");
        let score = p[0]["score"].as_f64().unwrap() as f32;
        assert!((score - c.scores[0]).abs() <= tolerance, "{p}");
    }
}

/// Over HTTP: TEI's `/predict` of every input of `section` in one request (each answer's
/// labels by score, softmax within `tolerance`), each input alone (the same as in the batch),
/// and `raw_scores` (the logits).
pub fn check_predict_routes(addr: SocketAddr, section: &Section<ClassifyCase>, f32_tolerance: f32) {
    let (tolerance, logit_tolerance) = server_tolerances(addr, f32_tolerance);
    let labels = &section.labels;
    let label_index = |x: &Value| {
        labels
            .iter()
            .position(|n| n == x["label"].as_str().unwrap())
            .unwrap()
    };
    let inputs: Vec<Value> = section
        .cases
        .iter()
        .map(|c| match &c.inputs {
            Value::String(t) => json!([t]),
            pair => pair.clone(),
        })
        .collect();
    let batch = post(addr, "/predict", json!({ "inputs": inputs }));
    for (i, c) in section.cases.iter().enumerate() {
        let answer = batch[i].as_array().unwrap();
        let got: Vec<usize> = answer.iter().map(label_index).collect();
        assert_eq!(got, order(&c.softmax), "case {i}: labels by score");
        for x in answer {
            let score = x["score"].as_f64().unwrap() as f32;
            assert!(
                (score - c.softmax[label_index(x)]).abs() <= tolerance,
                "case {i}: {x}"
            );
        }
        let one = post(addr, "/predict", json!({ "inputs": c.inputs.clone() }));
        assert_eq!(one.as_array().unwrap().len(), labels.len(), "{one}");
        assert_eq!(one[0]["label"], answer[0]["label"]);
        let d = (one[0]["score"].as_f64().unwrap() - answer[0]["score"].as_f64().unwrap()).abs();
        assert!(
            d <= BATCH_TOLERANCE as f64,
            "case {i}: alone and batched differ by {d}"
        );
        let raw = post(
            addr,
            "/predict",
            json!({"inputs": c.inputs, "raw_scores": true}),
        );
        for x in raw.as_array().unwrap() {
            let logit = x["score"].as_f64().unwrap() as f32;
            assert!(
                (logit - c.logits[label_index(x)]).abs() <= logit_tolerance,
                "case {i}: {x}"
            );
        }
    }
}
