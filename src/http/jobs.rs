//! `/v1/jobs`: asynchronous jobs over HTTP, kept in the queue broker so that any replica
//! answers for any job. `POST` validates the job as its route would (a bad job is refused at
//! once, not dead-lettered later) and adds it to the stream; a replica's ingress runs it like
//! any broker job; `GET`/`HEAD` read its hash; `DELETE` cancels it while it is queued.
//! Without `--queue` these routes answer 404 with how to enable them.

use hyper::body::Incoming;
use hyper::header::{HeaderValue, LOCATION};
use hyper::{Request, Response, StatusCode};
use serde::Deserialize;

use super::body::read_body;
use super::error::ApiError;
use super::reply::{counted_json, json_response, Body};
use super::state::AppState;
use crate::api::from_json;
use crate::api::json_routes::JsonRequest;
use crate::broker::{valid_job_id, Broker, Cancel};

/// The path prefix of one job's resource.
const JOB_PREFIX: &str = "/v1/jobs/";

/// `POST /v1/jobs`: a route and the body it takes.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct JobRequest {
    route: String,
    /// Kept as a parsed value: the broker stores it compact, whatever whitespace it came with.
    body: serde_json::Value,
}

/// The broker, or 404 saying how to enable the job routes.
fn broker(state: &AppState) -> Result<&Broker, ApiError> {
    state.broker.as_deref().ok_or_else(|| {
        ApiError::ResourceNotFound(
            "asynchronous jobs need a queue broker: start the server with --queue \
             redis://HOST:PORT/STREAM or azure-queue://ACCOUNT/QUEUE (env QUEUE_URL); \
             see docs/queue.md"
                .into(),
        )
    })
}

/// The job id a `/v1/jobs/{id}` request names.
fn job_id<B>(req: &Request<B>) -> &str {
    req.uri().path().strip_prefix(JOB_PREFIX).unwrap_or("")
}

/// `POST /v1/jobs`: checks the job as its route would check the request (a job that cannot
/// succeed is refused now, not dead-lettered later) and adds it to the broker.
pub async fn create(state: &AppState, req: Request<Incoming>) -> Result<Response<Body>, ApiError> {
    let broker = broker(state)?;
    let body = read_body(state, req).await?;
    let job: JobRequest = from_json(
        &body.bytes,
        r#"e.g. {"route": "/embed", "body": {"inputs": "a text"}}"#,
    )?;
    let route_body = serde_json::to_vec(&job.body).expect("a JSON value serializes");
    JsonRequest::parse(&job.route, &route_body, state.config.max_client_batch)?;
    let id = broker.create(&job.route, &job.body).await?;
    let location = format!("{JOB_PREFIX}{id}");
    let mut r = json_response(
        StatusCode::ACCEPTED,
        &serde_json::json!({ "id": id, "state": "queued", "location": location }),
    );
    if let Ok(v) = HeaderValue::from_str(&location) {
        r.headers_mut().insert(LOCATION, v);
    }
    Ok(r)
}

fn unknown(id: &str) -> ApiError {
    ApiError::ResourceNotFound(format!(
        "no job {id:?}: never created, or its record expired (--queue-result-ttl-ms)"
    ))
}

/// `GET /v1/jobs/{id}` (and `HEAD`): the job's state and, once it ended, its answer.
pub async fn show(state: &AppState, req: Request<Incoming>) -> Result<Response<Body>, ApiError> {
    let broker = broker(state)?;
    let id = job_id(&req);
    if !valid_job_id(id) || !broker.serves_over_http(id) {
        return Err(unknown(id));
    }
    let Some(record) = broker.job(id).await? else {
        return Err(unknown(id));
    };
    let mut body = serde_json::json!({
        "id": id,
        "state": record.state,
        "route": record.route,
    });
    if let Some(status) = record.status {
        body["status"] = status.into();
    }
    if let Some(result) = record.result {
        body["result"] = serde_json::from_str(&result).unwrap_or(serde_json::Value::String(result));
    }
    // A result can be as large as any answer: counted the same way.
    let json = serde_json::to_vec(&body).expect("a job record serializes");
    Ok(counted_json(state, json).await?)
}

/// `DELETE /v1/jobs/{id}`: cancels a job that has not started.
pub async fn cancel(state: &AppState, req: Request<Incoming>) -> Result<Response<Body>, ApiError> {
    let broker = broker(state)?;
    let id = job_id(&req);
    if !valid_job_id(id) || !broker.serves_over_http(id) {
        return Err(unknown(id));
    }
    match broker.cancel(id).await? {
        Cancel::Cancelled => Ok(json_response(
            StatusCode::OK,
            &serde_json::json!({ "id": id, "state": "cancelled" }),
        )),
        Cancel::Not(state) => Err(ApiError::Conflict(format!(
            "job {id:?} is {state}: only a queued job can be cancelled"
        ))),
        Cancel::Unknown => Err(unknown(id)),
    }
}
