//! The Cohere / Jina rerank route that RAG tools call: `POST /v1/rerank`. Body and answer:
//! [`crate::api::cohere`].

use hyper::body::Incoming;
use hyper::{Request, Response};

use super::error::ApiError;
use super::json_routes;
use super::reply::Body;
use super::state::AppState;

/// `POST /v1/rerank`: the documents by relevance to the query, best first.
pub async fn rerank(state: &AppState, req: Request<Incoming>) -> Result<Response<Body>, ApiError> {
    json_routes::answer(state, req, "/v1/rerank").await
}
