//! The routes that describe the replica rather than run the model: `/healthz` (liveness),
//! `/readyz` (readiness), `/metrics` (Prometheus) and `/info`.

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::header::CONTENT_TYPE;
use hyper::{Request, Response, StatusCode};
use serde_json::json;

use super::auth;
use super::reply::{json_response, Body};
use super::state::AppState;
use crate::lifecycle::{Readiness, Serving};
use crate::model::files::model_id;
use crate::model::Task;

/// `GET /healthz`: 200 from the moment the port is bound.
pub fn health() -> Response<Body> {
    json_response(StatusCode::OK, &json!({ "status": "ok" }))
}

/// `GET /readyz`: 200 once the model is loaded and warm; 503 while loading, draining, or after
/// a failed load. The probe needs no API key, so what it says to a caller without the key
/// (when the server has one) is only the state: no failure reason (it names files), no broker
/// address; a caller with the key (or any caller when there is none) gets the reasons too.
pub fn ready<B>(state: &AppState, req: &Request<B>) -> Response<Body> {
    let detailed = auth::authorized(state.config.api_key.as_deref(), req);
    let readiness = state.lifecycle.readiness();
    let status = match readiness {
        Readiness::Ready => StatusCode::OK,
        _ => StatusCode::SERVICE_UNAVAILABLE,
    };
    let mut body = json!({ "status": readiness.as_str() });
    if let (Readiness::Failed(reason), true) = (&readiness, detailed) {
        body["reason"] = json!(reason);
    }
    if let Some(broker) = &state.broker {
        // Said, not acted on: a broker outage must not take this replica out of HTTP rotation.
        let down = broker.health().down_reason();
        let mut queue = json!({ "status": if down.is_some() { "down" } else { "up" } });
        if detailed {
            queue["broker"] = json!(broker.display());
            if let Some(reason) = down {
                queue["reason"] = json!(reason);
            }
        }
        body["queue"] = queue;
    }
    json_response(status, &body)
}

/// `GET /metrics`: the Prometheus text, with the gauges read at scrape time brought up to date.
pub fn metrics(state: &AppState) -> Response<Body> {
    let depth = state.lifecycle.serving_now().map_or(0, |s| s.waiting());
    crate::metrics::set_queue_depth(depth);
    crate::metrics::set_inflight_body_bytes(
        state.config.max_inflight_body_bytes - state.body_budget.available_permits(),
    );
    let mut r = Response::new(Full::new(Bytes::from(crate::metrics::render())).boxed_unsync());
    r.headers_mut().insert(
        CONTENT_TYPE,
        "text/plain; version=0.0.4; charset=utf-8"
            .parse()
            .expect("static"),
    );
    r
}

/// `GET /info`: the model, its task and formats, and every limit the server runs with.
pub fn info(state: &AppState) -> Response<Body> {
    let c = &state.config;
    let serving = state.lifecycle.serving_now();
    let model = serving.as_deref().map(Serving::info);
    let generation = model.is_some_and(|m| m.task == Task::TextGeneration);
    let embedding = model.filter(|m| m.task == Task::Embedding);
    let classifier = model.and_then(|m| m.classifier.as_ref());
    let readiness = state.lifecycle.readiness();
    let reason = match &readiness {
        Readiness::Failed(r) => Some(r.clone()),
        _ => None,
    };
    let body = json!({
        "model_id": model.map_or_else(|| model_id(&c.model), |m| m.id.clone()),
        "status": readiness.as_str(),
        "status_reason": reason,
        "task": model.map(|m| m.task),
        "model_type": model.map(|m| &m.model_type),
        "dimensions": embedding.map(|m| m.dimensions),
        "max_input_length": model.map(|m| m.max_input_length),
        "pooling": embedding.map(|m| m.pooling),
        "normalized_by_model": embedding.map(|m| m.normalized_by_model),
        "prompts": embedding.map(|m| m.prompts.names()),
        "labels": classifier.map(|c| &c.labels),
        "score_function": classifier.map(|c| c.score_function),
        "max_batch_total_tokens": generation.then_some(c.max_batch_total_tokens),
        "max_prefill_tokens": generation.then_some(c.max_prefill_tokens),
        "default_max_new_tokens": generation.then_some(c.default_max_new_tokens),
        "prefix_cache_bytes": match serving.as_deref() {
            Some(Serving::Generation(g)) => Some(g.limits().prefix_cache_bytes),
            _ => None,
        },
        "structured_outputs": generation.then_some(crate::generate::grammar::KINDS),
        "dtype": model.map(|m| m.dtype),
        "weight_formats": model.map(|m| &m.weight_formats),
        "kernel": model.map(|m| m.kernel),
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
        "tokenizer_bounded": match serving.as_deref() {
            Some(Serving::Encoder(e)) => Some(e.tokenizer().bounded()),
            _ => None,
        },
        "version": env!("CARGO_PKG_VERSION"),
    });
    json_response(StatusCode::OK, &body)
}
