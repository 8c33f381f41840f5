//! The route table, one line per route, and the checks every request passes before its
//! handler: route (404), method (405 with `Allow`), API key (401). Everything else is the
//! handler's: each API style's file reads and parses the body and calls the loaded model's
//! service.

use std::sync::Arc;

use hyper::body::Incoming;
use hyper::{Method, Request, Response};

use super::error::ApiError;
use super::reply::Body;
use super::state::AppState;
use super::{auth, cohere, docs, jobs, openai, probes, tei, tgi};
use crate::model::Task;

/// What answers a route.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Handler {
    IndexPage,
    /// `POST /`: the loaded model's task, as TEI (embed, rerank, predict) or TGI (generate)
    /// answers it.
    RootTask,
    Embed,
    EmbedAll,
    Similarity,
    Embeddings,
    Rerank,
    CohereRerank,
    Predict,
    Tokenize,
    Decode,
    Models,
    Generate,
    GenerateStream,
    Completions,
    ChatCompletions,
    CreateJob,
    ShowJob,
    CancelJob,
    Info,
    Health,
    Ready,
    Metrics,
    OpenApi,
}

/// A route: its method, its path, and whether it needs the API key.
pub struct Route {
    /// GET routes answer HEAD too.
    pub method: Method,
    /// The exact path, or a prefix followed by `{id}`: one path segment (e.g. `/v1/jobs/{id}`).
    pub path: &'static str,
    /// Reachable without the API key (the probes).
    pub public: bool,
    handler: Handler,
}

const fn route(method: Method, path: &'static str, handler: Handler) -> Route {
    Route {
        method,
        path,
        public: false,
        handler,
    }
}

const fn probe(path: &'static str, handler: Handler) -> Route {
    Route {
        method: Method::GET,
        path,
        public: true,
        handler,
    }
}

/// Every route the server answers (also the source of the index page; `/openapi.json`
/// documents exactly these).
pub const ROUTES: &[Route] = &[
    route(Method::GET, "/", Handler::IndexPage),
    route(Method::POST, "/", Handler::RootTask),
    route(Method::POST, "/embed", Handler::Embed),
    route(Method::POST, "/embed_all", Handler::EmbedAll),
    route(Method::POST, "/similarity", Handler::Similarity),
    route(Method::POST, "/v1/embeddings", Handler::Embeddings),
    route(Method::POST, "/rerank", Handler::Rerank),
    route(Method::POST, "/v1/rerank", Handler::CohereRerank),
    route(Method::POST, "/predict", Handler::Predict),
    route(Method::POST, "/generate", Handler::Generate),
    route(Method::POST, "/generate_stream", Handler::GenerateStream),
    route(Method::POST, "/v1/completions", Handler::Completions),
    route(
        Method::POST,
        "/v1/chat/completions",
        Handler::ChatCompletions,
    ),
    route(Method::POST, "/tokenize", Handler::Tokenize),
    route(Method::POST, "/decode", Handler::Decode),
    route(Method::GET, "/v1/models", Handler::Models),
    route(Method::POST, "/v1/jobs", Handler::CreateJob),
    route(Method::GET, "/v1/jobs/{id}", Handler::ShowJob),
    route(Method::DELETE, "/v1/jobs/{id}", Handler::CancelJob),
    route(Method::GET, "/info", Handler::Info),
    probe("/healthz", Handler::Health),
    probe("/readyz", Handler::Ready),
    // TEI's and TGI's readiness route, for probes written for them.
    probe("/health", Handler::Ready),
    route(Method::GET, "/metrics", Handler::Metrics),
    route(Method::GET, "/openapi.json", Handler::OpenApi),
];

/// Routes that answer on a probe-only connection (past `--max-connections`).
pub fn is_probe(label: &str) -> bool {
    matches!(label, "/healthz" | "/readyz" | "/health" | "/metrics")
}

/// Whether `pattern` (a route's path) matches `path`.
fn matches(pattern: &str, path: &str) -> bool {
    match pattern.strip_suffix("{id}") {
        Some(prefix) => path
            .strip_prefix(prefix)
            .is_some_and(|id| !id.is_empty() && !id.contains('/')),
        None => pattern == path,
    }
}

/// The metric label for a path: the route's own path, or "unmatched" (bounded cardinality).
pub fn route_label(path: &str) -> &'static str {
    ROUTES
        .iter()
        .find(|r| matches(r.path, path))
        .map_or("unmatched", |r| r.path)
}

/// The `Allow` header of a path's routes.
fn allowed(pattern: &str) -> String {
    let mut methods: Vec<&str> = Vec::new();
    for r in ROUTES.iter().filter(|r| r.path == pattern) {
        methods.push(r.method.as_str());
        if r.method == Method::GET {
            methods.push("HEAD");
        }
    }
    methods.join(", ")
}

/// The routes as (method, path) pairs, for the index page.
pub fn list() -> Vec<(Method, &'static str)> {
    ROUTES.iter().map(|r| (r.method.clone(), r.path)).collect()
}

/// Answers one request.
pub async fn handle(
    state: Arc<AppState>,
    req: Request<Incoming>,
) -> Result<Response<Body>, ApiError> {
    let path = req.uri().path();
    let Some(pattern) = ROUTES
        .iter()
        .find(|r| matches(r.path, path))
        .map(|r| r.path)
    else {
        return Err(ApiError::NotFound(path.to_string()));
    };
    let method = if req.method() == Method::HEAD {
        &Method::GET
    } else {
        req.method()
    };
    let Some(route) = ROUTES
        .iter()
        .find(|r| r.path == pattern && r.method == method)
    else {
        return Err(ApiError::MethodNotAllowed {
            method: req.method().to_string(),
            path: path.to_string(),
            allow: allowed(pattern),
        });
    };
    if !route.public {
        auth::check(state.config.api_key.as_deref(), &req)?;
    }
    match route.handler {
        Handler::IndexPage => Ok(docs::index_page(&state, &list())),
        Handler::RootTask => root_task(state, req).await,
        Handler::Embed => tei::embed(&state, req).await,
        Handler::EmbedAll => tei::embed_all(&state, req).await,
        Handler::Similarity => tei::similarity(&state, req).await,
        Handler::Embeddings => openai::embeddings(&state, req).await,
        Handler::Rerank => tei::rerank(&state, req).await,
        Handler::CohereRerank => cohere::rerank(&state, req).await,
        Handler::Predict => tei::predict(&state, req).await,
        Handler::Tokenize => tei::tokenize(&state, req).await,
        Handler::Decode => tei::decode(&state, req).await,
        Handler::Models => Ok(openai::models(&state)),
        Handler::Generate => tgi::generate(state, req).await,
        Handler::GenerateStream => tgi::generate_stream(state, req).await,
        Handler::Completions => openai::completions(state, req).await,
        Handler::ChatCompletions => openai::chat_completions(state, req).await,
        Handler::CreateJob => jobs::create(&state, req).await,
        Handler::ShowJob => jobs::show(&state, req).await,
        Handler::CancelJob => jobs::cancel(&state, req).await,
        Handler::Info => Ok(probes::info(&state)),
        Handler::Health => Ok(probes::health()),
        Handler::Ready => Ok(probes::ready(&state, &req)),
        Handler::Metrics => Ok(probes::metrics(&state)),
        Handler::OpenApi => Ok(docs::openapi_response()),
    }
}

/// `POST /`: the loaded model's task as TEI (embed, rerank, predict) or TGI (generate) answers
/// it (held through a cold start to know it).
async fn root_task(
    state: Arc<AppState>,
    req: Request<Incoming>,
) -> Result<Response<Body>, ApiError> {
    let serving = state
        .lifecycle
        .until_aborted(state.lifecycle.serving())
        .await?;
    let task = serving.info().task;
    drop(serving);
    match task {
        Task::TextGeneration => tgi::root(state, req).await,
        Task::Embedding => tei::embed_or_similarity(&state, req).await,
        Task::Reranking => tei::rerank(&state, req).await,
        Task::TextClassification => tei::predict(&state, req).await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_route_has_a_label_and_unknown_paths_share_one() {
        for r in ROUTES {
            assert_eq!(route_label(r.path), r.path);
        }
        assert_eq!(route_label("/nope/123"), "unmatched");
        assert_eq!(route_label("/v1/jobs/1700000000000-0"), "/v1/jobs/{id}");
        assert_eq!(route_label("/v1/jobs/"), "unmatched");
        assert_eq!(route_label("/v1/jobs/a/b"), "unmatched");
        assert_eq!(allowed("/"), "GET, HEAD, POST");
        assert_eq!(allowed("/v1/jobs/{id}"), "GET, HEAD, DELETE");
        assert_eq!(allowed("/embed"), "POST");
    }

    #[test]
    fn the_spec_documents_every_route_and_nothing_else() {
        let paths = docs::openapi()["paths"].as_object().unwrap();
        let mut documented = 0;
        for (path, item) in paths {
            for method in item.as_object().unwrap().keys() {
                documented += 1;
                assert!(
                    ROUTES
                        .iter()
                        .any(|r| r.path == path && r.method.as_str().eq_ignore_ascii_case(method)),
                    "{method} {path} is documented but not routed"
                );
            }
        }
        assert_eq!(
            documented,
            ROUTES.len(),
            "a route is missing from openapi.json"
        );
    }
}
