//! The real all-MiniLM-L6-v2 against sentence-transformers: token ids identical, embeddings
//! with cosine ≥ 0.9999 and max |diff| ≤ 1e-4 for every committed case, alone and batched,
//! directly and through HTTP. The reference file is made by scripts/make-reference.py.
//!
//! The model comes from scripts/fetch-model.sh (the README's test command runs it first).

mod common;

use common::*;
use serde::Deserialize;
use serde_json::json;

#[derive(Deserialize)]
struct Reference {
    max_seq_length: usize,
    dimensions: usize,
    cases: Vec<Case>,
}

#[derive(Deserialize)]
struct Case {
    name: String,
    text: String,
    token_ids: Vec<u32>,
    untruncated_token_count: usize,
    embedding: Vec<f32>,
    embedding_unnormalized: Vec<f32>,
}

fn reference() -> Reference {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/data/minilm_reference.json"
    );
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

fn model_dir() -> std::path::PathBuf {
    minilm_dir().expect(
        "all-MiniLM-L6-v2 is not in models/all-MiniLM-L6-v2 (or $ZEROBATCH_MODEL_DIR): run scripts/fetch-model.sh, \
         or use the README's test command, which does",
    )
}

fn cosine(a: &[f32], b: &[f32]) -> f64 {
    let dot: f64 = a.iter().zip(b).map(|(x, y)| *x as f64 * *y as f64).sum();
    let na: f64 = a.iter().map(|x| (*x as f64).powi(2)).sum::<f64>().sqrt();
    let nb: f64 = b.iter().map(|x| (*x as f64).powi(2)).sum::<f64>().sqrt();
    dot / (na * nb)
}

fn assert_close(name: &str, got: &[f32], want: &[f32]) {
    let c = cosine(got, want);
    let d = max_abs_diff(got, want);
    assert!(
        c >= 0.9999 && d <= 1e-4,
        "{name}: cosine {c}, max abs diff {d}"
    );
}

#[test]
fn tokens_and_embeddings_match_sentence_transformers() {
    let r = reference();
    assert!(r.cases.len() >= 20);
    let loaded = zerobatch::model::load(model_dir().to_str().unwrap(), "main", |_, _| {}).unwrap();
    assert_eq!(loaded.info.max_input_length, r.max_seq_length);
    assert_eq!(loaded.info.dimensions, r.dimensions);
    assert!(loaded.info.normalized_by_model);
    assert!(
        r.cases.iter().any(|c| c.untruncated_token_count > 256),
        "the reference covers truncation"
    );

    let ids: Vec<Vec<u32>> = r
        .cases
        .iter()
        .map(|c| {
            let ids = loaded.tokenizer.encode(0, &c.text, true).unwrap();
            assert_eq!(
                ids, c.token_ids,
                "{}: token ids differ from the reference tokenizer",
                c.name
            );
            ids
        })
        .collect();

    // Alone, on one thread and on two.
    for threads in [1, 2] {
        for (c, ids) in r.cases.iter().zip(&ids) {
            let v = &loaded.model.embed(&[ids], threads).unwrap()[0];
            assert_close(&c.name, v, &c.embedding_unnormalized);
            let mut n = v.clone();
            zerobatch::model::pooling::l2_normalize(&mut n);
            assert_close(&c.name, &n, &c.embedding);
        }
    }
    // All at once: one padded batch of mixed lengths (8 to 256 tokens).
    let seqs: Vec<&[u32]> = ids.iter().map(|v| v.as_slice()).collect();
    let batched = loaded.model.embed(&seqs, 2).unwrap();
    for (c, v) in r.cases.iter().zip(&batched) {
        assert_close(
            &format!("{} (batched)", c.name),
            v,
            &c.embedding_unnormalized,
        );
    }
}

#[test]
fn the_server_serves_the_reference_embeddings() {
    let r = reference();
    let mut config = zerobatch::config::ServeConfig::for_tests(model_dir().to_str().unwrap());
    config.max_client_batch = 64;
    let s = zerobatch::server::BackgroundServer::start(config).unwrap();
    wait_ready(s.addr);
    let texts: Vec<&str> = r.cases.iter().map(|c| c.text.as_str()).collect();
    let got = vectors(&post_json(s.addr, "/embed", &json!({ "inputs": texts })));
    for (c, v) in r.cases.iter().zip(&got) {
        assert_close(&c.name, v, &c.embedding);
    }
    let info = get(s.addr, "/info").json();
    assert_eq!(info["dimensions"], 384);
    assert_eq!(info["max_input_length"], 256);
    // A long input with truncation off is refused with its length.
    let long = r
        .cases
        .iter()
        .find(|c| c.untruncated_token_count > 256)
        .unwrap();
    let resp = post_json(
        s.addr,
        "/embed",
        &json!({ "inputs": long.text, "truncate": false }),
    );
    assert_eq!(resp.status, 413);
    assert!(
        resp.text()
            .contains(&long.untruncated_token_count.to_string()),
        "{}",
        resp.text()
    );
}

/// A request still waiting at its deadline gets 503 with Retry-After (8 inputs of 256 tokens
/// take far longer than the 1 ms allowed), and the server keeps serving.
#[test]
fn a_request_that_outlives_its_timeout_gets_503() {
    let r = reference();
    let mut config = zerobatch::config::ServeConfig::for_tests(model_dir().to_str().unwrap());
    config.request_timeout_ms = 1;
    let s = zerobatch::server::BackgroundServer::start(config).unwrap();
    wait_ready(s.addr);
    let long = &r
        .cases
        .iter()
        .find(|c| c.untruncated_token_count > 256)
        .unwrap()
        .text;
    let inputs: Vec<&str> = (0..8).map(|_| long.as_str()).collect();
    let resp = post_json(s.addr, "/embed", &json!({ "inputs": inputs }));
    assert_eq!(resp.status, 503, "{}", resp.text());
    assert_eq!(resp.json()["error_type"], "timeout");
    assert_eq!(resp.header("retry-after"), Some("1"));
    assert_eq!(get(s.addr, "/healthz").status, 200);
}

/// The bounded tokenization of long inputs gives MiniLM's real tokenizer the same ids as
/// encoding the whole text, on long texts of mixed scripts, punctuation and whitespace.
#[test]
fn bounded_tokenization_matches_the_whole_text_on_the_real_tokenizer() {
    let tokenizer =
        zerobatch::model::TextTokenizer::load(&model_dir().join("tokenizer.json"), 256).unwrap();
    assert!(tokenizer.bounded());
    const PIECES: &[&str] = &[
        "The",
        "committee",
        "debated",
        "naïve",
        "café",
        "東京",
        "₂₀₂₆",
        "e-mail",
        "U.S.A.",
        "don't",
        "🙂",
        "x,y",
        "1234567",
        "[SEP]",
        "[MASK]",
        "Ünïcödé",
        "supercalifragilistic",
        "(parenthesised)",
        "مرحبا",
        "—",
    ];
    const SPACES: &[&str] = &[" ", "  ", "\n", "\t", "\u{3000}", "\r\n", "\u{a0}", ""];
    let mut state = 7u64;
    let mut next = |n: usize| {
        state = state
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (state >> 33) as usize % n
    };
    for case in 0..40 {
        let words = [300, 2_000, 20_000][case % 3];
        let mut text = String::new();
        for _ in 0..words {
            text.push_str(PIECES[next(PIECES.len())]);
            text.push_str(SPACES[next(SPACES.len())]);
        }
        assert_eq!(
            tokenizer.encode(case, &text, true),
            tokenizer.encode_unbounded(case, &text, true),
            "case {case}"
        );
        assert_eq!(
            tokenizer.encode(case, &text, false).is_err(),
            tokenizer.encode_unbounded(case, &text, false).is_err(),
            "case {case}"
        );
    }
}
