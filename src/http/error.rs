//! The front end's error type: every failure a client can see, mapped once to its status code
//! and a JSON body `{"error": "...", "error_type": "..."}`. The services' errors
//! ([`ServiceError`]) get their status here and nowhere else; the queue broker's job records
//! use the same mapping ([`service_error_answer`]), handed to it when the server is wired.

use hyper::header::{HeaderValue, ALLOW, CONNECTION, CONTENT_TYPE, RETRY_AFTER, WWW_AUTHENTICATE};
use hyper::{Response, StatusCode};

use super::reply::{json_response, AnswerRefused, Body};
use crate::broker::BrokerError;
use crate::error::ServiceError;
use crate::metrics;

/// Every error a request can end in.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// A service refused or failed the request.
    #[error("{0}")]
    Service(#[from] ServiceError),
    #[error("no route for {0}; see GET / for the list of routes")]
    NotFound(String),
    /// The route exists; what it names does not (a job), or the route is not enabled.
    #[error("{0}")]
    ResourceNotFound(String),
    /// The resource is in a state that does not allow this (a running job cannot be cancelled).
    #[error("{0}")]
    Conflict(String),
    #[error("{method} is not allowed on {path}; allowed: {allow}")]
    MethodNotAllowed {
        method: String,
        path: String,
        allow: String,
    },
    #[error("missing or wrong API key: send the header `Authorization: Bearer <key>`")]
    Unauthorized,
    #[error("{0}")]
    UnsupportedMediaType(String),
    /// The body did not arrive within `--client-timeout-ms`; the connection is closed.
    #[error("the request body did not arrive within {0} ms (--client-timeout-ms); the connection is closed")]
    RequestTimeout(u64),
    /// The body went over `--max-body-bytes` while it was read; the connection is closed.
    #[error("{0}")]
    BodyTooLarge(String),
    /// The answer alone would be larger than the in-flight budget.
    #[error("{0}")]
    AnswerTooLarge(String),
    /// The bodies (and answers) held fill `--max-inflight-body-bytes`.
    #[error("server overloaded: the request bodies and answers being handled fill --max-inflight-body-bytes ({0} bytes); retry shortly")]
    BodyBudget(usize),
    /// Past `--max-connections`: this connection answers the probes only.
    #[error("the server holds its maximum of {0} connections (--max-connections); this one answers only the probes; retry")]
    ConnectionLimit(usize),
    /// The queue broker behind `/v1/jobs` failed.
    #[error("{0}")]
    Broker(#[from] BrokerError),
    /// A bug in the front end.
    #[error("{0}")]
    Internal(String),
}

impl ApiError {
    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::Service(e) => service_status(e),
            ApiError::NotFound(_) | ApiError::ResourceNotFound(_) => StatusCode::NOT_FOUND,
            ApiError::Conflict(_) => StatusCode::CONFLICT,
            ApiError::MethodNotAllowed { .. } => StatusCode::METHOD_NOT_ALLOWED,
            ApiError::Unauthorized => StatusCode::UNAUTHORIZED,
            ApiError::UnsupportedMediaType(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ApiError::BodyTooLarge(_) | ApiError::AnswerTooLarge(_) => {
                StatusCode::PAYLOAD_TOO_LARGE
            }
            ApiError::RequestTimeout(_) => StatusCode::REQUEST_TIMEOUT,
            ApiError::BodyBudget(_) | ApiError::ConnectionLimit(_) => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            ApiError::Broker(e) => match e {
                BrokerError::Unreachable(_) => StatusCode::SERVICE_UNAVAILABLE,
                BrokerError::TooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
                BrokerError::BadUrl(_) | BrokerError::Refused(_) => {
                    StatusCode::INTERNAL_SERVER_ERROR
                }
            },
            ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// A stable machine-readable kind, also the `reason` label of `zerobatch_rejected_total`.
    pub fn error_type(&self) -> &'static str {
        match self {
            ApiError::Service(e) => e.kind(),
            ApiError::NotFound(_) | ApiError::ResourceNotFound(_) => "not_found",
            ApiError::Conflict(_) => "conflict",
            ApiError::MethodNotAllowed { .. } => "method_not_allowed",
            ApiError::Unauthorized => "unauthorized",
            ApiError::UnsupportedMediaType(_) => "unsupported_media_type",
            ApiError::BodyTooLarge(_) | ApiError::AnswerTooLarge(_) => "payload_too_large",
            ApiError::RequestTimeout(_) => "client_timeout",
            ApiError::BodyBudget(_) => "body_budget",
            ApiError::ConnectionLimit(_) => "connection_limit",
            ApiError::Broker(BrokerError::Unreachable(_)) => "queue_unavailable",
            ApiError::Broker(BrokerError::TooLarge(_)) => "payload_too_large",
            ApiError::Broker(_) | ApiError::Internal(_) => "internal",
        }
    }

    /// Seconds a client should wait before retrying (503 answers).
    fn retry_after_secs(&self) -> u32 {
        match self {
            ApiError::Service(ServiceError::StillLoading) | ApiError::Broker(_) => 5,
            ApiError::Service(ServiceError::LoadFailed(_)) => 10,
            _ => 1,
        }
    }

    /// Whether the connection must close after this answer: the rest of the body was not
    /// read, so the next bytes on the connection are not a request.
    pub fn closes_connection(&self) -> bool {
        matches!(
            self,
            ApiError::RequestTimeout(_) | ApiError::BodyTooLarge(_)
        )
    }

    /// The HTTP response for this error.
    pub fn into_response(self) -> Response<Body> {
        let status = self.status();
        if status != StatusCode::NOT_FOUND
            && status != StatusCode::METHOD_NOT_ALLOWED
            && !status.is_server_error()
            || status == StatusCode::SERVICE_UNAVAILABLE
        {
            metrics::record_rejected(self.error_type());
        }
        let body =
            serde_json::json!({ "error": self.to_string(), "error_type": self.error_type() });
        let mut response = json_response(status, &body);
        let headers = response.headers_mut();
        match &self {
            ApiError::MethodNotAllowed { allow, .. } => {
                if let Ok(v) = HeaderValue::from_str(allow) {
                    headers.insert(ALLOW, v);
                }
            }
            ApiError::Unauthorized => {
                headers.insert(WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            }
            _ if status == StatusCode::SERVICE_UNAVAILABLE => {
                headers.insert(RETRY_AFTER, HeaderValue::from(self.retry_after_secs()));
            }
            _ => {}
        }
        if self.closes_connection() {
            headers.insert(CONNECTION, HeaderValue::from_static("close"));
        }
        headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        response
    }
}

impl From<AnswerRefused> for ApiError {
    fn from(e: AnswerRefused) -> Self {
        match e {
            AnswerRefused::TooLarge { size, budget } => ApiError::AnswerTooLarge(format!(
                "the answer would be {size} bytes, more than --max-inflight-body-bytes ({budget}); ask for less in one request (fewer or shorter inputs)"
            )),
            AnswerRefused::NoRoom { budget } => ApiError::BodyBudget(budget),
        }
    }
}

/// The status of a service error.
fn service_status(e: &ServiceError) -> StatusCode {
    match e {
        ServiceError::Invalid(_) => StatusCode::BAD_REQUEST,
        ServiceError::WrongTask(_) => StatusCode::NOT_FOUND,
        ServiceError::TooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
        ServiceError::QueueFull(_)
        | ServiceError::TimedOut(..)
        | ServiceError::StillLoading
        | ServiceError::LoadFailed(_)
        | ServiceError::ShuttingDown(_) => StatusCode::SERVICE_UNAVAILABLE,
        ServiceError::Failed(_) => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

/// The status and JSON body an HTTP request would get for `e`: what a queue job's record
/// holds when the job ends in it (`broker` is given this function when the server is wired).
pub fn service_error_answer(e: &ServiceError) -> (u16, Vec<u8>) {
    let body = serde_json::json!({ "error": e.to_string(), "error_type": e.kind() });
    (
        service_status(e).as_u16(),
        serde_json::to_vec(&body).expect("an error body serializes"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::TokenizeError;

    #[test]
    fn each_error_maps_to_its_status_and_headers() {
        let cases: Vec<(ApiError, u16)> = vec![
            (ApiError::NotFound("/x".into()), 404),
            (
                ApiError::MethodNotAllowed {
                    method: "GET".into(),
                    path: "/embed".into(),
                    allow: "POST".into(),
                },
                405,
            ),
            (ApiError::Unauthorized, 401),
            (ApiError::UnsupportedMediaType("text/plain".into()), 415),
            (ApiError::RequestTimeout(30_000), 408),
            (ServiceError::QueueFull("full".into()).into(), 503),
            (
                ServiceError::from(TokenizeError::TooLong {
                    index: 0,
                    tokens: 600,
                    max: 512,
                })
                .into(),
                413,
            ),
            (
                ServiceError::from(TokenizeError::Failed {
                    index: 0,
                    reason: "x".into(),
                })
                .into(),
                400,
            ),
            (ServiceError::StillLoading.into(), 503),
            (ServiceError::TimedOut(1, "a worker").into(), 503),
            (ServiceError::Failed("boom".into()).into(), 500),
            (
                ServiceError::WrongTask("embedding model".into()).into(),
                404,
            ),
            (ApiError::ResourceNotFound("no job".into()), 404),
            (ApiError::Conflict("running".into()), 409),
            (BrokerError::Unreachable("refused".into()).into(), 503),
            (ApiError::BodyBudget(1), 503),
            (ApiError::ConnectionLimit(1), 503),
        ];
        for (e, status) in cases {
            let r = e.into_response();
            assert_eq!(r.status().as_u16(), status);
            assert_eq!(r.headers()[CONTENT_TYPE], "application/json");
            match status {
                405 => assert_eq!(r.headers()[ALLOW], "POST"),
                401 => assert_eq!(r.headers()[WWW_AUTHENTICATE], "Bearer"),
                503 => assert!(r.headers().contains_key(RETRY_AFTER)),
                _ => {}
            }
        }
        let (status, body) = service_error_answer(&ServiceError::TooLarge("big".into()));
        assert_eq!(status, 413);
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(v["error_type"], "payload_too_large");
    }
}
