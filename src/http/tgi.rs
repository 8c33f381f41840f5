//! Hugging Face TGI's routes: `POST /generate` (which also takes the upstream application's
//! `{"text"}` shape, [`crate::api::upstream`]), `POST /generate_stream`, and `POST /` on a
//! generation model (what `huggingface_hub`'s `InferenceClient.text_generation` sends; it
//! streams when the body says `"stream": true`). Bodies and answers: [`crate::api::tgi`].

use std::sync::Arc;

use hyper::body::Incoming;
use hyper::{Request, Response};

use super::error::ApiError;
use super::generation::respond;
use super::reply::Body;
use super::state::AppState;
use crate::api::tgi::{parse_generate, TgiRoute};

/// `POST /generate`: a whole answer.
pub async fn generate(
    state: Arc<AppState>,
    req: Request<Incoming>,
) -> Result<Response<Body>, ApiError> {
    respond(state, req, |body, defaults| {
        parse_generate(body, TgiRoute::Generate, defaults)
    })
    .await
}

/// `POST /generate_stream`: one event per token.
pub async fn generate_stream(
    state: Arc<AppState>,
    req: Request<Incoming>,
) -> Result<Response<Body>, ApiError> {
    respond(state, req, |body, defaults| {
        parse_generate(body, TgiRoute::GenerateStream, defaults)
    })
    .await
}

/// `POST /` on a generation model: whole, or streamed with `"stream": true`.
pub async fn root(
    state: Arc<AppState>,
    req: Request<Incoming>,
) -> Result<Response<Body>, ApiError> {
    respond(state, req, |body, defaults| {
        parse_generate(body, TgiRoute::Root, defaults)
    })
    .await
}
