//! OpenAI's routes: `POST /v1/embeddings`, `POST /v1/completions` and
//! `POST /v1/chat/completions` (streamed with `"stream": true`, ending in `data: [DONE]`).
//! Bodies and answers: [`crate::api::openai`].

use std::sync::Arc;

use hyper::body::Incoming;
use hyper::{Request, Response};

use super::error::ApiError;
use super::generation::respond;
use super::json_routes;
use super::reply::Body;
use super::state::AppState;
use crate::api::openai::{parse_chat, parse_completion};

/// `POST /v1/embeddings`.
pub async fn embeddings(
    state: &AppState,
    req: Request<Incoming>,
) -> Result<Response<Body>, ApiError> {
    json_routes::answer(state, req, "/v1/embeddings").await
}

/// `POST /v1/completions`.
pub async fn completions(
    state: Arc<AppState>,
    req: Request<Incoming>,
) -> Result<Response<Body>, ApiError> {
    respond(state, req, parse_completion).await
}

/// `POST /v1/chat/completions`, through the model's own chat template.
pub async fn chat_completions(
    state: Arc<AppState>,
    req: Request<Incoming>,
) -> Result<Response<Body>, ApiError> {
    respond(state, req, parse_chat).await
}
