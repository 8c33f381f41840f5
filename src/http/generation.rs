//! What the generation routes share, whatever their style: read the body, parse it with the
//! model's defaults, submit it to the generation service, then answer whole or as a stream.
//!
//! A streamed answer starts (status 200 and the event-stream headers) only once the first
//! event has come: a request that times out waiting for a place in the batch, or meets a full
//! queue, still gets its 503 with `Retry-After` rather than a stream that carries an error.

use std::sync::Arc;

use hyper::body::Incoming;
use hyper::{Request, Response};

use super::body::read_body;
use super::error::ApiError;
use super::reply::{counted_json, Body};
use super::sse;
use super::state::AppState;
use crate::api::answer;
use crate::api::generation::{AnswerContext, Collected, GenerateCall};
use crate::error::ServiceError;
use crate::generate::engine::{Event, Failure};
use crate::generate::sampling::SamplingDefaults;
use crate::generate::service::GenerateService;

/// Answers a generation route whose body `parse` reads (with the model's sampling defaults).
pub async fn respond(
    state: Arc<AppState>,
    req: Request<Incoming>,
    parse: impl FnOnce(&[u8], &SamplingDefaults) -> Result<GenerateCall, ServiceError>,
) -> Result<Response<Body>, ApiError> {
    let body = read_body(&state, req).await?;
    let lifecycle = &state.lifecycle;
    let serving = lifecycle.until_aborted(lifecycle.serving()).await?;
    let service = crate::api::generation(&serving)?;
    let call = parse(&body.bytes, service.defaults())?;
    // The body is freed now; its share of the budget shrinks to the prompt's text.
    let kept = body.parsed(call.request.prompt.text_bytes());
    let (format, stream) = (call.format, call.stream);
    let (params, stop) = (call.request.params.clone(), call.request.stop.clone());
    let mut generation = lifecycle
        .until_aborted(service.submit(call.request))
        .await?;
    let context = AnswerContext::new(
        format,
        &params,
        stop,
        &generation,
        service.info().id.clone(),
    );
    if stream {
        let first = lifecycle
            .until_aborted(first_event(service, &mut generation.events))
            .await?;
        return Ok(sse::response(
            state.clone(),
            first,
            generation.events,
            context,
            kept,
        ));
    }
    let collected = lifecycle
        .until_aborted(collect(service, &mut generation.events))
        .await?;
    drop(kept);
    let json =
        serde_json::to_vec(&answer::whole(&context, &collected)).expect("an answer serializes");
    Ok(counted_json(&state, json).await?)
}

/// The error a failed sequence ends the request in.
fn failed(service: &GenerateService, failure: Failure) -> ServiceError {
    match failure {
        Failure::TimedOut => service.timed_out(),
        Failure::Step(message) => ServiceError::Failed(message),
    }
}

fn engine_gone() -> ServiceError {
    ServiceError::Failed("the generation engine stopped mid-sequence".into())
}

/// Waits for a sequence's first event: a token, or the failure that ends it first.
async fn first_event(
    service: &GenerateService,
    events: &mut tokio::sync::mpsc::UnboundedReceiver<Event>,
) -> Result<Event, ServiceError> {
    match events.recv().await {
        Some(Event::Failed(f)) => Err(failed(service, f)),
        Some(ev) => Ok(ev),
        None => Err(engine_gone()),
    }
}

/// Waits for a sequence to finish.
async fn collect(
    service: &GenerateService,
    events: &mut tokio::sync::mpsc::UnboundedReceiver<Event>,
) -> Result<Collected, ServiceError> {
    let mut tokens = Vec::new();
    while let Some(ev) = events.recv().await {
        match ev {
            Event::Token(t) => tokens.push(t),
            Event::Done {
                reason,
                cached_tokens,
                ..
            } => {
                return Ok(Collected {
                    tokens,
                    reason,
                    cached_tokens,
                })
            }
            Event::Failed(f) => return Err(failed(service, f)),
        }
    }
    Err(engine_gone())
}
