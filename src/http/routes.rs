//! Routing and handlers. Every check that can refuse a request happens here, before it takes a
//! place in the queue: route (404), method (405), API key (401), content type (415), body size
//! (413), JSON and schema (400), input count and length (413), readiness (503); then the inputs
//! are tokenized and queued (503 when full) and the handler awaits the replies.

use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::header::{AUTHORIZATION, CONTENT_TYPE};
use hyper::{Method, Request, Response, StatusCode};
use tokio::sync::oneshot;

use super::api::{
    self, EmbedRequest, EmbeddingData, EncodingFormat, OpenAiEmbedding, OpenAiRequest,
    OpenAiResponse, Parsed, TokenizeRequest, Usage,
};
use super::error::ApiError;
use super::{docs, json_response, AppState, Body};
use crate::lifecycle::{Readiness, Serving, ServingTask};
use crate::model::files::model_id;
use crate::model::pooling::l2_normalize;
use crate::model::{TextTokenizer, TokenizeError};
use crate::queue::{Entry, InferError, Job, Output};

/// A route: its path, the methods it answers, and whether it needs the API key.
pub struct Route {
    /// The exact path, or a prefix followed by `{id}`: one path segment (e.g. `/v1/jobs/{id}`).
    pub path: &'static str,
    /// Methods answered (GET implies HEAD).
    pub methods: &'static [Method],
    /// The `Allow` header for 405 answers.
    pub allow: &'static str,
    /// Reachable without the API key (probes).
    pub public: bool,
}

/// Every route the server answers (also the source of `/openapi.json` and the index page).
pub const ROUTES: &[Route] = &[
    Route {
        path: "/",
        methods: &[Method::GET, Method::POST],
        allow: "GET, HEAD, POST",
        public: false,
    },
    Route {
        path: "/embed",
        methods: &[Method::POST],
        allow: "POST",
        public: false,
    },
    Route {
        path: "/v1/embeddings",
        methods: &[Method::POST],
        allow: "POST",
        public: false,
    },
    Route {
        path: "/generate",
        methods: &[Method::POST],
        allow: "POST",
        public: false,
    },
    Route {
        path: "/generate_stream",
        methods: &[Method::POST],
        allow: "POST",
        public: false,
    },
    Route {
        path: "/v1/completions",
        methods: &[Method::POST],
        allow: "POST",
        public: false,
    },
    Route {
        path: "/v1/chat/completions",
        methods: &[Method::POST],
        allow: "POST",
        public: false,
    },
    Route {
        path: "/tokenize",
        methods: &[Method::POST],
        allow: "POST",
        public: false,
    },
    Route {
        path: "/v1/jobs",
        methods: &[Method::POST],
        allow: "POST",
        public: false,
    },
    Route {
        path: "/v1/jobs/{id}",
        methods: &[Method::GET, Method::DELETE],
        allow: "GET, HEAD, DELETE",
        public: false,
    },
    Route {
        path: "/info",
        methods: &[Method::GET],
        allow: "GET, HEAD",
        public: false,
    },
    Route {
        path: "/healthz",
        methods: &[Method::GET],
        allow: "GET, HEAD",
        public: true,
    },
    Route {
        path: "/readyz",
        methods: &[Method::GET],
        allow: "GET, HEAD",
        public: true,
    },
    Route {
        path: "/metrics",
        methods: &[Method::GET],
        allow: "GET, HEAD",
        public: false,
    },
    Route {
        path: "/openapi.json",
        methods: &[Method::GET],
        allow: "GET, HEAD",
        public: false,
    },
];

/// Routes that answer on a probe-only connection (past `--max-connections`).
pub fn is_probe(label: &str) -> bool {
    matches!(label, "/healthz" | "/readyz" | "/metrics")
}

/// The route that answers `path`.
pub fn find_route(path: &str) -> Option<&'static Route> {
    ROUTES.iter().find(|r| match r.path.strip_suffix("{id}") {
        Some(prefix) => path
            .strip_prefix(prefix)
            .is_some_and(|id| !id.is_empty() && !id.contains('/')),
        None => r.path == path,
    })
}

/// The metric label for a path: the route's own path, or "unmatched" (bounded cardinality).
pub fn route_label(path: &str) -> &'static str {
    find_route(path).map_or("unmatched", |r| r.path)
}

/// Answers one request.
pub async fn handle(
    state: Arc<AppState>,
    req: Request<Incoming>,
) -> Result<Response<Body>, ApiError> {
    Ok(match handle_full(state, req).await? {
        Reply::Full(r) => r.map(BodyExt::boxed_unsync),
        Reply::Stream(r) => r,
    })
}

/// A handler's answer: a whole body, or a stream (Server-Sent Events of generated tokens).
pub enum Reply {
    Full(Response<Full<Bytes>>),
    Stream(Response<Body>),
}

impl From<Response<Full<Bytes>>> for Reply {
    fn from(r: Response<Full<Bytes>>) -> Self {
        Reply::Full(r)
    }
}

async fn handle_full(state: Arc<AppState>, req: Request<Incoming>) -> Result<Reply, ApiError> {
    let path = req.uri().path().to_string();
    let Some(route) = find_route(&path) else {
        return Err(ApiError::NotFound(path));
    };
    let method_ok = route.methods.contains(req.method())
        || (route.methods.contains(&Method::GET) && req.method() == Method::HEAD);
    if !method_ok {
        return Err(ApiError::MethodNotAllowed {
            method: req.method().to_string(),
            path,
            allow: route.allow,
        });
    }
    if !route.public {
        check_api_key(&state, &req)?;
    }
    if route.path.starts_with("/v1/jobs") {
        return super::jobs::handle(&state, req).await.map(Reply::from);
    }
    if req.method() == Method::POST && route.path == "/" {
        // TGI's POST / generates; TEI's embeds: whichever task the loaded model has.
        let serving = serving(&state).await?;
        if matches!(serving.task, ServingTask::Generation(_)) {
            let body = super::body::read_body(&state, req).await?;
            let result = super::generate::handle(&state, "/generate", &body.bytes).await;
            drop(body);
            return result;
        }
    }
    if req.method() == Method::POST && super::generate::is_generation_route(route.path) {
        let body = super::body::read_body(&state, req).await?;
        let result = super::generate::handle(&state, route.path, &body.bytes).await;
        drop(body);
        return result;
    }
    if req.method() == Method::POST {
        let path = route.path;
        let body = super::body::read_body(&state, req).await?;
        let large = body.bytes.len() >= crate::alloc::TRIM_AFTER_BODY_BYTES;
        let parsed = api::parse_request(path, &body.bytes, state.config.max_client_batch);
        drop(body.bytes);
        let result = match parsed {
            Ok(p) => run_parsed(&state, p).await,
            Err(e) => Err(e),
        };
        drop(body.permit);
        if large {
            // What this body and its texts took is free now: give it back to the system.
            crate::alloc::trim_soon();
        }
        return result.map(Reply::from);
    }
    let reply = match route.path {
        "/" => Ok(docs::index_page(&state)),
        "/openapi.json" => Ok(json_response(StatusCode::OK, &docs::openapi())),
        "/healthz" => Ok(json_response(
            StatusCode::OK,
            &serde_json::json!({ "status": "ok" }),
        )),
        "/readyz" => Ok(readyz(&state)),
        "/metrics" => Ok(metrics_text(&state)),
        "/info" => Ok(info(&state)),
        _ => Err(ApiError::Internal(format!("route {path} has no handler"))),
    };
    reply.map(Reply::from)
}

/// Answers a checked request of a JSON route: the one path shared by HTTP requests and queue
/// broker jobs (`broker::ingress`), so both get the same answer from the same batches.
pub async fn run_parsed(
    state: &AppState,
    parsed: Parsed,
) -> Result<Response<Full<Bytes>>, ApiError> {
    match parsed {
        Parsed::Embed(r) => embed(state, r).await,
        Parsed::OpenAi(r) => openai(state, r).await,
        Parsed::Tokenize(r) => tokenize(state, r).await,
    }
}

/// Compares the bearer token with the key in constant time (no early exit on the first
/// differing byte, so response timing does not leak the key).
fn check_api_key(state: &AppState, req: &Request<Incoming>) -> Result<(), ApiError> {
    let Some(key) = &state.config.api_key else {
        return Ok(());
    };
    let given = req
        .headers()
        .get(AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            // The scheme is case-insensitive (RFC 9110 §11.1).
            let (scheme, token) = v.split_once(' ')?;
            scheme.eq_ignore_ascii_case("bearer").then_some(token)
        })
        .unwrap_or("");
    if constant_time_eq(given.trim().as_bytes(), key.as_bytes()) {
        Ok(())
    } else {
        Err(ApiError::Unauthorized)
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    // Length is not secret-dependent work; the byte loop always runs over the key's length.
    let mut diff = (a.len() != b.len()) as u8;
    for (i, &kb) in b.iter().enumerate() {
        diff |= a.get(i).copied().unwrap_or(!kb) ^ kb;
    }
    std::hint::black_box(diff) == 0
}

fn readyz(state: &AppState) -> Response<Full<Bytes>> {
    let (status, body) = match state.lifecycle.readiness() {
        Readiness::Ready => (StatusCode::OK, serde_json::json!({ "status": "ready" })),
        Readiness::Loading => (
            StatusCode::SERVICE_UNAVAILABLE,
            serde_json::json!({ "status": "loading" }),
        ),
        Readiness::Draining => (
            StatusCode::SERVICE_UNAVAILABLE,
            serde_json::json!({ "status": "draining" }),
        ),
        Readiness::Failed(reason) => (
            StatusCode::SERVICE_UNAVAILABLE,
            serde_json::json!({ "status": "failed", "reason": reason }),
        ),
    };
    let mut body = body;
    if let Some(broker) = &state.broker {
        // Said, not acted on: a broker outage must not take this replica out of HTTP rotation.
        body["queue"] = match broker.health().down_reason() {
            None => serde_json::json!({ "status": "up", "broker": broker.display() }),
            Some(reason) => {
                serde_json::json!({ "status": "down", "broker": broker.display(), "reason": reason })
            }
        };
    }
    json_response(status, &body)
}

fn metrics_text(state: &AppState) -> Response<Full<Bytes>> {
    let depth = match state.lifecycle.serving_now().as_deref().map(|s| &s.task) {
        Some(ServingTask::Generation(g)) => g.engine.waiting(),
        _ => state.queue.depth(),
    };
    crate::metrics::set_queue_depth(depth);
    crate::metrics::set_inflight_body_bytes(
        state.config.max_inflight_body_bytes - state.body_budget.available_permits(),
    );
    let mut r = Response::new(Full::new(Bytes::from(crate::metrics::render())));
    r.headers_mut().insert(
        CONTENT_TYPE,
        "text/plain; version=0.0.4; charset=utf-8"
            .parse()
            .expect("static"),
    );
    r
}

fn info(state: &AppState) -> Response<Full<Bytes>> {
    let c = &state.config;
    let model = state.lifecycle.loaded_info();
    let generation = model
        .as_ref()
        .is_some_and(|m| m.task == crate::model::Task::TextGeneration);
    let embedding = model.as_ref().filter(|_| !generation);
    let body = serde_json::json!({
        "model_id": model.as_ref().map_or_else(|| model_id(&c.model), |m| m.id.clone()),
        "status": state.lifecycle.readiness().as_str(),
        "task": model.as_ref().map(|m| m.task),
        "dimensions": embedding.map(|m| m.dimensions),
        "max_input_length": model.as_ref().map(|m| m.max_input_length),
        "pooling": embedding.map(|m| m.pooling),
        "normalized_by_model": embedding.map(|m| m.normalized_by_model),
        "max_batch_total_tokens": generation.then_some(c.max_batch_total_tokens),
        "max_prefill_tokens": generation.then_some(c.max_prefill_tokens),
        "default_max_new_tokens": generation.then_some(c.default_max_new_tokens),
        "dtype": model.as_ref().map(|m| m.dtype),
        "kernel": model.as_ref().map(|m| m.kernel),
        "workers": c.worker_count(),
        "max_batch_size": c.max_batch_size,
        "max_batch_tokens": c.max_batch_tokens,
        "max_batch_delay_ms": c.max_batch_delay_ms,
        "max_client_batch": c.max_client_batch,
        "queue_capacity": c.queue_capacity,
        "request_timeout_ms": c.request_timeout_ms,
        "max_body_bytes": c.max_body_bytes,
        "max_inflight_body_bytes": c.max_inflight_body_bytes,
        "client_timeout_ms": c.client_timeout_ms,
        "header_timeout_ms": c.header_timeout_ms,
        "max_connections": state.connections.max(),
        "queue": state.broker.as_ref().map(|b| b.display()),
        "tokenizer_bounded": state.lifecycle.serving_now().and_then(|s| match &s.task {
            ServingTask::Embedding(t) => Some(t.bounded()),
            ServingTask::Generation(_) => None,
        }),
        "version": env!("CARGO_PKG_VERSION"),
    });
    json_response(StatusCode::OK, &body)
}

/// Holds the request through a cold start if needed, then returns the loaded model's state.
pub(super) async fn serving(state: &AppState) -> Result<Arc<Serving>, ApiError> {
    Ok(state
        .lifecycle
        .serving(state.config.cold_start_timeout())
        .await?)
}

/// The embedding model's tokenizer, or 400 naming the loaded model's task.
fn embedding_tokenizer(serving: &Serving) -> Result<Arc<TextTokenizer>, ApiError> {
    match &serving.task {
        ServingTask::Embedding(t) => Ok(t.clone()),
        ServingTask::Generation(_) => Err(ApiError::BadRequest(format!(
            "this route computes embeddings, but the loaded model ({}) is a {} model: use /generate, /generate_stream, /v1/completions or /v1/chat/completions",
            serving.info.id,
            serving.info.task.name()
        ))),
    }
}

/// Above this many bytes of text, tokenizing moves off the tokio threads (a whole-text
/// encoding of a long input takes milliseconds, which must not stall other connections), and
/// at most one such tokenization per core runs at once: the rest wait their turn, so the
/// memory they take is bounded whatever the concurrency.
const TOKENIZE_INLINE_BYTES: usize = 32 * 1024;

/// Runs `each(tokenizer, index, text)` over `texts`, inline when they are small, else on a
/// blocking thread under `state.tokenize_slots`. Takes the texts by value so a large body is
/// freed as soon as it is tokenized, not when the request ends.
async fn tokenized<T: Send + 'static>(
    state: &AppState,
    tokenizer: &Arc<TextTokenizer>,
    texts: Vec<String>,
    each: impl Fn(&TextTokenizer, usize, &str) -> Result<T, TokenizeError> + Send + 'static,
) -> Result<Vec<T>, ApiError> {
    let all = move |tokenizer: &TextTokenizer, texts: Vec<String>| {
        texts
            .iter()
            .enumerate()
            .map(|(i, t)| each(tokenizer, i, t).map_err(ApiError::from))
            .collect::<Result<Vec<T>, ApiError>>()
    };
    if texts.iter().map(String::len).sum::<usize>() <= TOKENIZE_INLINE_BYTES {
        return all(tokenizer, texts);
    }
    let slot = state
        .tokenize_slots
        .clone()
        .acquire_owned()
        .await
        .map_err(|e| ApiError::Internal(format!("tokenization slots closed: {e}")))?;
    let tokenizer = tokenizer.clone();
    tokio::task::spawn_blocking(move || {
        let _slot = slot;
        all(&tokenizer, texts)
    })
    .await
    .map_err(|e| ApiError::Internal(format!("tokenization failed: {e}")))?
}

/// Tokenizes, queues and awaits `texts`; returns pooled vectors (normalised if asked) and the
/// number of tokens used. Gives up with 503 when the shutdown deadline passes, wherever the
/// request is (held through a cold start, queued or running).
async fn embed_texts(
    state: &AppState,
    texts: Vec<String>,
    truncate: bool,
    normalize: bool,
    dimensions: Option<usize>,
) -> Result<(Vec<Vec<f32>>, usize), ApiError> {
    let work = async {
        // Arrival order is taken now, before any cold-start hold, so held requests keep it.
        let first_seq = state.queue.next_seqs(texts.len());
        let serving = serving(state).await?;
        let tokenizer = embedding_tokenizer(&serving)?;
        if let Some(want) = dimensions {
            if want != serving.info.dimensions {
                return Err(ApiError::BadRequest(format!(
                    "dimensions {want} is not available: this model gives {} dimensions",
                    serving.info.dimensions
                )));
            }
        }
        let ids = tokenized(state, &tokenizer, texts, move |tokenizer, i, t| {
            tokenizer.encode(i, t, truncate)
        })
        .await?;
        let tokens = ids.iter().map(Vec::len).sum();
        // The timeout counts from when the model could serve: a request held through a cold start
        // gets the full request timeout after it.
        let queued = Instant::now();
        let deadline = queued + state.config.request_timeout();
        let mut receivers = Vec::with_capacity(ids.len());
        let entries: Vec<Entry> = ids
            .into_iter()
            .enumerate()
            .map(|(i, ids)| {
                let (reply, rx) = oneshot::channel();
                receivers.push(rx);
                Entry {
                    seq: first_seq + i as u64,
                    arrived: queued,
                    deadline,
                    job: Job::Embed { ids },
                    reply,
                }
            })
            .collect();
        state.queue.submit(entries)?;

        let wait_all = async {
            let mut vectors = Vec::with_capacity(receivers.len());
            for rx in receivers {
                match rx.await {
                    Ok(Ok(Output::Embedding(mut v))) => {
                        if normalize {
                            l2_normalize(&mut v);
                        }
                        vectors.push(v);
                    }
                    Ok(Err(e)) => return Err(ApiError::from(e)),
                    // The worker dropped the entry: it expired in the queue.
                    Err(_) => return Err(ApiError::from(InferError::TimedOut)),
                }
            }
            Ok(vectors)
        };
        match tokio::time::timeout_at(deadline.into(), wait_all).await {
            Ok(r) => r.map(|v| (v, tokens)),
            Err(_) => Err(InferError::TimedOut.into()),
        }
    };
    tokio::select! {
        r = work => r,
        _ = state.lifecycle.aborted() => Err(ApiError::Unavailable {
            reason: "the server is shutting down and its drain deadline passed; retry".into(),
            kind: "shutting_down",
            retry_after_secs: 1,
        }),
    }
}

/// `POST /embed` and `POST /` (TEI's API; what `huggingface_hub`'s `feature_extraction` sends).
async fn embed(state: &AppState, req: EmbedRequest) -> Result<Response<Full<Bytes>>, ApiError> {
    let (vectors, _) = embed_texts(state, req.inputs.0, req.truncate, req.normalize, None).await?;
    Ok(json_response(StatusCode::OK, &vectors))
}

async fn openai(state: &AppState, req: OpenAiRequest) -> Result<Response<Full<Bytes>>, ApiError> {
    // OpenAI's embeddings are unit vectors; so are these.
    let (vectors, tokens) = embed_texts(state, req.input.0, true, true, req.dimensions).await?;
    let model = match req.model {
        Some(m) => m,
        None => state
            .lifecycle
            .loaded_info()
            .map_or_else(|| model_id(&state.config.model), |i| i.id),
    };
    let data = vectors
        .into_iter()
        .enumerate()
        .map(|(index, v)| OpenAiEmbedding {
            object: "embedding",
            index,
            embedding: match req.encoding_format {
                EncodingFormat::Float => EmbeddingData::Float(v),
                EncodingFormat::Base64 => EmbeddingData::Base64(api::base64_f32(&v)),
            },
        })
        .collect();
    let body = OpenAiResponse {
        object: "list",
        data,
        model,
        usage: Usage {
            prompt_tokens: tokens,
            total_tokens: tokens,
        },
    };
    Ok(json_response(StatusCode::OK, &body))
}

async fn tokenize(
    state: &AppState,
    req: TokenizeRequest,
) -> Result<Response<Full<Bytes>>, ApiError> {
    let serving = serving(state).await?;
    let (add_special, truncate) = (req.add_special_tokens, req.truncate);
    if let ServingTask::Generation(g) = &serving.task {
        return super::generate::tokenize(state, g, req.inputs.0, add_special).await;
    }
    let tokenizer = embedding_tokenizer(&serving)?;
    let tokens = tokenized(state, &tokenizer, req.inputs.0, move |tokenizer, i, t| {
        tokenizer.tokens(i, t, add_special, truncate)
    })
    .await?;
    Ok(json_response(StatusCode::OK, &tokens))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn api_key_comparison() {
        assert!(constant_time_eq(b"secret", b"secret"));
        assert!(!constant_time_eq(b"secreT", b"secret"));
        assert!(!constant_time_eq(b"secret-longer", b"secret"));
        assert!(!constant_time_eq(b"", b"secret"));
    }

    #[test]
    fn every_route_has_a_label_and_unknown_paths_share_one() {
        for r in ROUTES {
            assert_eq!(route_label(r.path), r.path);
        }
        assert_eq!(route_label("/nope/123"), "unmatched");
        assert_eq!(route_label("/v1/jobs/1700000000000-0"), "/v1/jobs/{id}");
        assert_eq!(route_label("/v1/jobs/"), "unmatched");
        assert_eq!(route_label("/v1/jobs/a/b"), "unmatched");
    }
}
