//! Request parsing and validation of every JSON route: `/embed`, `POST /` (the same body),
//! `/v1/embeddings`, `/rerank`, `/v1/rerank`, `/predict` and `/tokenize`, from arbitrary bytes.
//!
//! Input: one selector byte (bits 0–2: the route, modulo the 7 routes; bits 3–7:
//! `max_client_batch - 1`, 1..=32), then the request body.
//!
//! Invariants: never panics; every refusal is a client error (4xx), never a 5xx; an accepted
//! request is the route's own request type with 1..=max_client_batch inputs.

#![no_main]

use libfuzzer_sys::fuzz_target;
use zerobatch::api::json_routes::JsonRequest;
use zerobatch::http::error::ApiError;

const PATHS: [&str; 7] = [
    "/embed",
    "/",
    "/v1/embeddings",
    "/rerank",
    "/v1/rerank",
    "/predict",
    "/tokenize",
];

fuzz_target!(|data: &[u8]| {
    let Some((&selector, body)) = data.split_first() else {
        return;
    };
    let path = PATHS[usize::from(selector & 7) % PATHS.len()];
    let max_client_batch = usize::from(selector >> 3) + 1;
    match JsonRequest::parse(path, body, max_client_batch) {
        Err(e) => check_refusal(path, &ApiError::from(e)),
        Ok(parsed) => {
            let count = match (path, &parsed) {
                ("/embed" | "/", JsonRequest::Embed(r)) => {
                    assert!(
                        r.truncation_direction
                            .as_deref()
                            .is_none_or(|d| d.eq_ignore_ascii_case("right")),
                        "{path}: accepted truncation_direction {:?}",
                        r.truncation_direction
                    );
                    r.inputs.0.len()
                }
                ("/v1/embeddings", JsonRequest::Embeddings(r)) => r.input.0.len(),
                ("/rerank", JsonRequest::Rerank(r)) => r.texts.len(),
                ("/v1/rerank", JsonRequest::CohereRerank(r)) => r.documents.len(),
                ("/predict", JsonRequest::Predict(r)) => r.inputs.len(),
                ("/tokenize", JsonRequest::Tokenize(r)) => r.inputs.0.len(),
                (path, other) => panic!("{path} parsed as the wrong request type: {other:?}"),
            };
            assert!(
                (1..=max_client_batch).contains(&count),
                "{path}: accepted {count} inputs with max_client_batch {max_client_batch}"
            );
        }
    }
});

fn check_refusal(path: &str, e: &ApiError) {
    let status = e.status();
    assert!(
        status.is_client_error(),
        "{path}: refused with {status}, not a 4xx: {e}"
    );
    // The message is the response body: it must render (Display must not panic either).
    let _ = e.to_string();
    let _ = e.error_type();
}
