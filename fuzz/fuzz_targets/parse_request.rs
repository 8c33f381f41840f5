//! Request parsing and validation of every JSON route: `/embed`, `POST /` (the same body),
//! `/v1/embeddings` and `/tokenize`, from arbitrary bytes.
//!
//! Input: one selector byte (bits 0–1: the route; bits 2–7: `max_client_batch - 1`, 1..=64),
//! then the request body.
//!
//! Invariants: never panics; every refusal is a client error (4xx), never a 5xx; an accepted
//! request is the route's own request type with 1..=max_client_batch inputs.

#![no_main]

use libfuzzer_sys::fuzz_target;
use zerobatch::http::error::ApiError;

// Until `api::parse_request` is on main, the shim below stands in for it (same signature,
// same `Parsed`); once it is, this line becomes
// `use zerobatch::http::api::{parse_request, Parsed};` and the shim goes.
use shim::{parse_request, Parsed};

const PATHS: [&str; 4] = ["/embed", "/", "/v1/embeddings", "/tokenize"];

fuzz_target!(|data: &[u8]| {
    let Some((&selector, body)) = data.split_first() else {
        return;
    };
    let path = PATHS[usize::from(selector & 3)];
    let max_client_batch = usize::from(selector >> 2) + 1;
    match parse_request(path, body, max_client_batch) {
        Err(e) => check_refusal(path, &e),
        Ok(parsed) => {
            let count = match (path, &parsed) {
                ("/embed" | "/", Parsed::Embed(r)) => {
                    assert!(
                        r.truncation_direction
                            .as_deref()
                            .is_none_or(|d| d.eq_ignore_ascii_case("right")),
                        "{path}: accepted truncation_direction {:?}",
                        r.truncation_direction
                    );
                    assert!(r.prompt_name.is_none(), "{path}: accepted a prompt_name");
                    r.inputs.0.len()
                }
                ("/v1/embeddings", Parsed::OpenAi(r)) => r.input.0.len(),
                ("/tokenize", Parsed::Tokenize(r)) => r.inputs.0.len(),
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

/// The parsing and model-free validation the routes do today (`routes::read_json` and the
/// checks in `embed` and `check_count`), as one function with `parse_request`'s signature.
mod shim {
    use zerobatch::http::api::{EmbedRequest, OpenAiRequest, TokenizeRequest};
    use zerobatch::http::error::ApiError;

    #[derive(Debug)]
    #[allow(dead_code)] // the fields are only read through Debug in the target
    pub enum Parsed {
        Embed(EmbedRequest),
        OpenAi(OpenAiRequest),
        Tokenize(TokenizeRequest),
    }

    fn json<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
        serde_json::from_slice(body)
            .map_err(|e| ApiError::BadRequest(format!("invalid JSON body: {e}")))
    }

    fn check_count(n: usize, max_client_batch: usize) -> Result<(), ApiError> {
        if n == 0 {
            return Err(ApiError::BadRequest("the input list is empty".into()));
        }
        if n > max_client_batch {
            return Err(ApiError::PayloadTooLarge(format!(
                "{n} inputs in one request; the limit is {max_client_batch}"
            )));
        }
        Ok(())
    }

    pub fn parse_request(
        path: &str,
        body: &[u8],
        max_client_batch: usize,
    ) -> Result<Parsed, ApiError> {
        match path {
            "/embed" | "/" => {
                let r: EmbedRequest = json(body)?;
                if let Some(d) = r.truncation_direction.as_deref() {
                    if !d.eq_ignore_ascii_case("right") {
                        return Err(ApiError::BadRequest(format!(
                            "truncation_direction {d:?} is not supported"
                        )));
                    }
                }
                if r.prompt_name.is_some() {
                    return Err(ApiError::BadRequest("prompt_name is not supported".into()));
                }
                check_count(r.inputs.0.len(), max_client_batch)?;
                Ok(Parsed::Embed(r))
            }
            "/v1/embeddings" => {
                let r: OpenAiRequest = json(body)?;
                check_count(r.input.0.len(), max_client_batch)?;
                Ok(Parsed::OpenAi(r))
            }
            "/tokenize" => {
                let r: TokenizeRequest = json(body)?;
                check_count(r.inputs.0.len(), max_client_batch)?;
                Ok(Parsed::Tokenize(r))
            }
            other => Err(ApiError::NotFound(other.to_string())),
        }
    }
}
