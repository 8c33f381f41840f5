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

/// Plain f32 weights: what the tight (1e-4) comparisons check.
fn f32_options() -> zerobatch::model::LoadOptions {
    zerobatch::model::LoadOptions {
        dtype: zerobatch::model::DtypeChoice::Fixed(zerobatch::kernels::Dtype::F32),
        kernel_cap: None,
    }
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
    let loaded = zerobatch::model::load_with(
        model_dir().to_str().unwrap(),
        "main",
        f32_options(),
        |_, _| {},
    )
    .unwrap();
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
    // All at once: one batch of mixed lengths (8 to 256 tokens).
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
    config.dtype = f32_options().dtype;
    let s = zerobatch::server::BackgroundServer::start(config).unwrap();
    wait_ready(s.addr);
    let texts: Vec<&str> = r.cases.iter().map(|c| c.text.as_str()).collect();
    let got = vectors(&post_json(s.addr, "/embed", &json!({ "inputs": texts })));
    for (c, v) in r.cases.iter().zip(&got) {
        assert_close(&c.name, v, &c.embedding);
    }
    // /embed_all: one 384-wide vector per token sentence-transformers feeds the model (cut at
    // 256), and their mean is its unnormalised sentence vector (MiniLM pools by mean).
    let r_all = post_json(s.addr, "/embed_all", &json!({ "inputs": texts }));
    assert_eq!(r_all.status, 200, "{}", r_all.text());
    let all: Vec<Vec<Vec<f32>>> = serde_json::from_value(r_all.json()).unwrap();
    for (c, tokens) in r.cases.iter().zip(&all) {
        assert_eq!(tokens.len(), c.token_ids.len(), "{}", c.name);
        assert!(tokens.iter().all(|t| t.len() == 384), "{}", c.name);
        let mean: Vec<f32> = (0..384)
            .map(|d| tokens.iter().map(|t| t[d]).sum::<f32>() / tokens.len() as f32)
            .collect();
        assert_close(
            &format!("{} (/embed_all)", c.name),
            &mean,
            &c.embedding_unnormalized,
        );
    }
    let info = get(s.addr, "/info").json();
    assert_eq!(info["dimensions"], 384);
    assert_eq!(info["max_input_length"], 256);
    assert_eq!(info["dtype"], "f32");
    assert_eq!(info["weight_formats"], json!({"linear": "f32"}));
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

/// Embeds every reference case with `options` (alone, then all in one batch) and
/// returns the lowest cosine against sentence-transformers, with its case.
fn worst_cosine(options: zerobatch::model::LoadOptions) -> (f64, String) {
    let r = reference();
    let loaded =
        zerobatch::model::load_with(model_dir().to_str().unwrap(), "main", options, |_, _| {})
            .unwrap();
    let ids: Vec<Vec<u32>> = r
        .cases
        .iter()
        .map(|c| loaded.tokenizer.encode(0, &c.text, true).unwrap())
        .collect();
    let seqs: Vec<&[u32]> = ids.iter().map(|v| v.as_slice()).collect();
    let batched = loaded.model.embed(&seqs, 2).unwrap();
    let mut worst = (f64::INFINITY, String::new());
    for ((c, ids), b) in r.cases.iter().zip(&ids).zip(&batched) {
        let alone = &loaded.model.embed(&[ids], 1).unwrap()[0];
        for (how, v) in [("alone", alone), ("batched", b)] {
            let cos = cosine(v, &c.embedding_unnormalized);
            if cos < worst.0 {
                worst = (cos, format!("{} ({how})", c.name));
            }
        }
    }
    worst
}

/// bf16 keeps cosine ≥ 0.9999 and int8 ≥ 0.999 against sentence-transformers for every
/// reference case (8 to 256 tokens, alone and batched). Checked on the best kernel path this
/// CPU has and, for bf16, on the AVX2 path too (it keeps f32 activations, the AVX-512 BF16
/// and AMX paths round them) and on AVX-512 BF16 where the best is AMX. int8's integer sums are identical on every path and the scalar path
/// runs the same arithmetic as the others (both proved by the kernels' unit tests against
/// naive references), so one path covers them all.
#[test]
fn bf16_and_int8_keep_the_reference_accuracy() {
    use zerobatch::kernels::{Dtype, KernelLevel};
    use zerobatch::model::{DtypeChoice, LoadOptions};
    let best = KernelLevel::detected();
    let mut runs = vec![
        (Dtype::Bf16, best, 0.9999),
        (Dtype::Int16, best, 0.9999),
        (Dtype::Int8, best, 0.999),
    ];
    if best > KernelLevel::Avx2 {
        runs.push((Dtype::Bf16, KernelLevel::Avx2, 0.9999));
    }
    // On a CPU with AMX the best path is the tiles: the AVX-512 BF16 path stays checked too.
    if best > KernelLevel::Avx512Bf16 {
        runs.push((Dtype::Bf16, KernelLevel::Avx512Bf16, 0.9999));
    }
    {
        for (dtype, level, bar) in runs {
            let options = LoadOptions {
                dtype: DtypeChoice::Fixed(dtype),
                kernel_cap: Some(level),
            };
            let (cos, case) = worst_cosine(options);
            eprintln!("{dtype} on {level}: lowest cosine {cos:.6} ({case})");
            assert!(cos >= bar, "{dtype} on {level}: cosine {cos} for {case}");
        }
    }
}

#[derive(Deserialize)]
struct RetrievalSet {
    queries: Vec<String>,
    passages: Vec<String>,
    reference_top10: Vec<Vec<usize>>,
}

/// The ten passages closest to each query (cosine), best first.
fn top10(options: zerobatch::model::LoadOptions, set: &RetrievalSet) -> Vec<Vec<usize>> {
    let loaded =
        zerobatch::model::load_with(model_dir().to_str().unwrap(), "main", options, |_, _| {})
            .unwrap();
    let embed = |texts: &[String]| -> Vec<Vec<f32>> {
        texts
            .chunks(16)
            .flat_map(|chunk| {
                let ids: Vec<Vec<u32>> = chunk
                    .iter()
                    .map(|t| loaded.tokenizer.encode(0, t, true).unwrap())
                    .collect();
                let seqs: Vec<&[u32]> = ids.iter().map(|v| v.as_slice()).collect();
                loaded.model.embed(&seqs, 2).unwrap()
            })
            .collect()
    };
    let (queries, passages) = (embed(&set.queries), embed(&set.passages));
    queries
        .iter()
        .map(|q| {
            let mut ranked: Vec<(f64, usize)> = passages
                .iter()
                .enumerate()
                .map(|(i, p)| (cosine(q, p), i))
                .collect();
            ranked.sort_by(|a, b| b.0.total_cmp(&a.0));
            ranked.iter().take(10).map(|&(_, i)| i).collect()
        })
        .collect()
}

/// Mean size of the intersection of two lists of top-10 sets.
fn mean_overlap(a: &[Vec<usize>], b: &[Vec<usize>]) -> f64 {
    let total: usize = a
        .iter()
        .zip(b)
        .map(|(x, y)| x.iter().filter(|i| y.contains(i)).count())
        .sum();
    total as f64 / a.len() as f64
}

/// The retrieval effect of the dtypes on a generated set of 20 queries × 100 passages
/// (tests/data/retrieval_set.json, scripts/make-retrieval-set.py): top-10 overlap between
/// f32 and each dtype, and between f32 and sentence-transformers' own ranking.
#[test]
fn retrieval_rankings_survive_bf16_and_int8() {
    use zerobatch::kernels::Dtype;
    use zerobatch::model::{DtypeChoice, LoadOptions};
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/retrieval_set.json");
    let set: RetrievalSet = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    assert_eq!((set.queries.len(), set.passages.len()), (20, 100));
    let options = |dtype| LoadOptions {
        dtype: DtypeChoice::Fixed(dtype),
        kernel_cap: None,
    };
    let f32_top = top10(options(Dtype::F32), &set);
    let vs_reference = mean_overlap(&f32_top, &set.reference_top10);
    eprintln!("f32 vs sentence-transformers: mean top-10 overlap {vs_reference:.2}");
    assert!(
        vs_reference >= 9.9,
        "f32 overlap with the reference {vs_reference}"
    );
    for (dtype, floor) in [(Dtype::Bf16, 9.5), (Dtype::Int8, 9.0)] {
        let top = top10(options(dtype), &set);
        let overlap = mean_overlap(&f32_top, &top);
        let same_first = f32_top
            .iter()
            .zip(&top)
            .filter(|(a, b)| a[0] == b[0])
            .count();
        eprintln!(
            "{dtype} vs f32: mean top-10 overlap {overlap:.2}, same best passage for {same_first}/20 queries"
        );
        assert!(overlap >= floor, "{dtype}: mean top-10 overlap {overlap}");
    }
}
