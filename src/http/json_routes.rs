//! The routes answered with one JSON body from one JSON body (embeddings and `/tokenize`, in
//! TEI's and OpenAI's shapes): read the body, parse it ([`JsonRequest`]), free what the parsed
//! request does not hold, answer through the loaded model's service, count the answer.

use hyper::body::Incoming;
use hyper::{Request, Response};

use super::body::read_body;
use super::error::ApiError;
use super::reply::{counted_json, Body};
use super::state::AppState;
use crate::api::json_routes::JsonRequest;

/// Answers `req` as route `route` (one of [`crate::api::json_routes::JOB_ROUTES`]).
pub async fn answer(
    state: &AppState,
    req: Request<Incoming>,
    route: &str,
) -> Result<Response<Body>, ApiError> {
    let body = read_body(state, req).await?;
    let large = body.bytes.len() >= crate::alloc::TRIM_AFTER_BODY_BYTES;
    let parsed = JsonRequest::parse(route, &body.bytes, state.config.max_client_batch)?;
    let kept = body.parsed(parsed.text_bytes());
    let answer = parsed.answer(&state.lifecycle).await;
    drop(kept);
    if large {
        // What this body and its texts took is free now: give it back to the system.
        crate::alloc::trim_soon();
    }
    Ok(counted_json(state, answer?).await?)
}
