//! OpenAI's routes: `POST /v1/embeddings`, `POST /v1/completions`,
//! `POST /v1/chat/completions` (streamed with `"stream": true`, ending in `data: [DONE]`) and
//! `GET /v1/models`. Bodies and answers: [`crate::api::openai`].

use std::sync::Arc;

use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use serde_json::json;

use super::error::ApiError;
use super::generation::respond;
use super::json_routes;
use super::reply::{json_response, Body};
use super::state::AppState;
use crate::api::openai::{parse_chat, parse_completion};
use crate::model::files::model_id;

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

/// `GET /v1/models`: the one model this process serves, as OpenAI lists models (what
/// `client.models.list()`, LiteLLM and chat front ends call to find a server's model), named
/// as `/info` and the answers' `model` field name it; known from `--model` while it loads.
pub fn models(state: &AppState) -> Response<Body> {
    let id = state
        .lifecycle
        .serving_now()
        .map_or_else(|| model_id(&state.config.model), |s| s.info().id.clone());
    let created = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    json_response(
        StatusCode::OK,
        &json!({
            "object": "list",
            "data": [{"id": id, "object": "model", "created": created, "owned_by": "zerobatch"}],
        }),
    )
}
