//! `/v1/jobs`: asynchronous jobs over HTTP, kept in the queue broker so that any replica
//! answers for any job. `POST` validates the job as its route would (a bad job is refused at
//! once, not dead-lettered later) and adds it to the stream; a replica's ingress runs it like
//! any broker job; `GET`/`HEAD` read its hash; `DELETE` cancels it while it is queued.
//! Without `--queue` these routes answer 404 with how to enable them.

use std::sync::Arc;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{HeaderValue, LOCATION};
use hyper::{Method, Request, Response, StatusCode};
use serde::Deserialize;

use super::error::ApiError;
use super::{api, json_response, AppState};
use crate::broker::{valid_job_id, Broker, Cancel, JOB_ROUTES};

/// The path prefix of one job's resource.
const JOB_PREFIX: &str = "/v1/jobs/";

/// `POST /v1/jobs`: a route and the body it takes.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct JobRequest {
    route: String,
    body: serde_json::Value,
}

/// Answers the `/v1/jobs` routes (method and API key already checked).
pub(crate) async fn handle(
    state: &Arc<AppState>,
    req: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, ApiError> {
    let Some(broker) = state.broker.as_ref() else {
        return Err(ApiError::ResourceNotFound(
            "asynchronous jobs need a queue broker: start the server with --queue \
             redis://HOST:PORT/STREAM or azure-queue://ACCOUNT/QUEUE (env QUEUE_URL); \
             see docs/queue.md"
                .into(),
        ));
    };
    let path = req.uri().path().to_string();
    match (req.method().clone(), path.strip_prefix(JOB_PREFIX)) {
        (Method::POST, None) => {
            let body = super::body::read_body(state, req).await?;
            create(state, broker, &body.bytes).await
        }
        (Method::GET | Method::HEAD, Some(id)) => show(broker, id).await,
        (Method::DELETE, Some(id)) => cancel(broker, id).await,
        (method, _) => Err(ApiError::Internal(format!(
            "{method} {path} reached the job handler"
        ))),
    }
}

async fn create(
    state: &AppState,
    broker: &Broker,
    body: &[u8],
) -> Result<Response<Full<Bytes>>, ApiError> {
    let job: JobRequest = api::from_json(body)?;
    check_job_route(&job.route)?;
    // The same checks as the route's own requests, now: a job that cannot succeed is
    // refused here rather than dead-lettered later.
    let route_body = serde_json::to_vec(&job.body).expect("a JSON value serializes");
    api::parse_request(&job.route, &route_body, state.config.max_client_batch)?;
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

/// 400 unless `route` is one a job may name (the JSON POST routes).
pub(crate) fn check_job_route(route: &str) -> Result<(), ApiError> {
    if JOB_ROUTES.contains(&route) {
        Ok(())
    } else {
        Err(ApiError::BadRequest(format!(
            "route {route:?} cannot run as a job; one of {}",
            JOB_ROUTES.join(", ")
        )))
    }
}

fn unknown(id: &str) -> ApiError {
    ApiError::ResourceNotFound(format!(
        "no job {id:?}: never created, or its record expired (--queue-result-ttl-ms)"
    ))
}

async fn show(broker: &Broker, id: &str) -> Result<Response<Full<Bytes>>, ApiError> {
    if !valid_job_id(id) {
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
    Ok(json_response(StatusCode::OK, &body))
}

async fn cancel(broker: &Broker, id: &str) -> Result<Response<Full<Bytes>>, ApiError> {
    if !valid_job_id(id) {
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
