//! Hugging Face TEI's routes: `POST /embed` and `POST /similarity` (both also `POST /` on an
//! embedding model, told apart by the body), `POST /embed_all`,
//! `POST /rerank` and `POST /predict` (also `POST /` on a reranker and on a classifier) and
//! `POST /tokenize` and `POST /decode`. Their bodies and answers are [`crate::api::tei`]'s.

use hyper::body::Incoming;
use hyper::{Request, Response};

use super::error::ApiError;
use super::json_routes;
use super::reply::Body;
use super::state::AppState;

/// `POST /embed` (and `POST /` on an embedding model): one vector per input.
pub async fn embed(state: &AppState, req: Request<Incoming>) -> Result<Response<Body>, ApiError> {
    json_routes::answer(state, req, "/embed").await
}

/// `POST /embed_all`: every token's vector of each input.
pub async fn embed_all(
    state: &AppState,
    req: Request<Incoming>,
) -> Result<Response<Body>, ApiError> {
    json_routes::answer(state, req, "/embed_all").await
}

/// `POST /` on an embedding model: `/embed`'s body, or `/similarity`'s (as TEI takes both).
pub async fn embed_or_similarity(
    state: &AppState,
    req: Request<Incoming>,
) -> Result<Response<Body>, ApiError> {
    json_routes::answer(state, req, "/").await
}

/// `POST /similarity`: the cosine similarity of the source sentence with each other one.
pub async fn similarity(
    state: &AppState,
    req: Request<Incoming>,
) -> Result<Response<Body>, ApiError> {
    json_routes::answer(state, req, "/similarity").await
}

/// `POST /rerank` (and `POST /` on a reranker): the texts by relevance to the query.
pub async fn rerank(state: &AppState, req: Request<Incoming>) -> Result<Response<Body>, ApiError> {
    json_routes::answer(state, req, "/rerank").await
}

/// `POST /predict` (and `POST /` on a classifier): each input's labels by score.
pub async fn predict(state: &AppState, req: Request<Incoming>) -> Result<Response<Body>, ApiError> {
    json_routes::answer(state, req, "/predict").await
}

/// `POST /tokenize`: each input's tokens, ids and byte offsets, as the model sees them.
pub async fn tokenize(
    state: &AppState,
    req: Request<Incoming>,
) -> Result<Response<Body>, ApiError> {
    json_routes::answer(state, req, "/tokenize").await
}

/// `POST /decode`: the text of token ids, as the model's tokenizer writes it.
pub async fn decode(state: &AppState, req: Request<Incoming>) -> Result<Response<Body>, ApiError> {
    json_routes::answer(state, req, "/decode").await
}
