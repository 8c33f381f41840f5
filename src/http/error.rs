//! The front end's error type: every failure a client can see, mapped once to its status code
//! and a JSON body `{"error": "...", "error_type": "..."}`.

use bytes::Bytes;
use http_body_util::Full;
use hyper::header::{HeaderValue, ALLOW, CONTENT_TYPE, RETRY_AFTER, WWW_AUTHENTICATE};
use hyper::{Response, StatusCode};

use crate::broker::BrokerError;
use crate::lifecycle::NotServing;
use crate::metrics;
use crate::model::TokenizeError;
use crate::queue::{InferError, QueueError};

/// Every error a request can end in.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
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
        allow: &'static str,
    },
    #[error("missing or wrong API key: send the header `Authorization: Bearer <key>`")]
    Unauthorized,
    #[error("{0}")]
    UnsupportedMediaType(String),
    #[error("{0}")]
    PayloadTooLarge(String),
    /// The body did not arrive within `--client-timeout-ms`; the connection is closed.
    #[error("the request body did not arrive within {0} ms (--client-timeout-ms); the connection is closed")]
    RequestTimeout(u64),
    /// The body went over `--max-body-bytes` while it was read; the connection is closed.
    #[error("{0}")]
    BodyTooLarge(String),
    #[error("{0}")]
    BadRequest(String),
    #[error("{reason}")]
    Unavailable {
        reason: String,
        kind: &'static str,
        retry_after_secs: u32,
    },
    #[error("{0}")]
    Internal(String),
}

impl ApiError {
    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::NotFound(_) | ApiError::ResourceNotFound(_) => StatusCode::NOT_FOUND,
            ApiError::Conflict(_) => StatusCode::CONFLICT,
            ApiError::MethodNotAllowed { .. } => StatusCode::METHOD_NOT_ALLOWED,
            ApiError::Unauthorized => StatusCode::UNAUTHORIZED,
            ApiError::UnsupportedMediaType(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ApiError::PayloadTooLarge(_) | ApiError::BodyTooLarge(_) => {
                StatusCode::PAYLOAD_TOO_LARGE
            }
            ApiError::RequestTimeout(_) => StatusCode::REQUEST_TIMEOUT,
            ApiError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ApiError::Unavailable { .. } => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// A stable machine-readable kind, also the `reason` label of `zerobatch_rejected_total`.
    pub fn error_type(&self) -> &'static str {
        match self {
            ApiError::NotFound(_) | ApiError::ResourceNotFound(_) => "not_found",
            ApiError::Conflict(_) => "conflict",
            ApiError::MethodNotAllowed { .. } => "method_not_allowed",
            ApiError::Unauthorized => "unauthorized",
            ApiError::UnsupportedMediaType(_) => "unsupported_media_type",
            ApiError::PayloadTooLarge(_) | ApiError::BodyTooLarge(_) => "payload_too_large",
            ApiError::RequestTimeout(_) => "client_timeout",
            ApiError::BadRequest(_) => "invalid_request",
            ApiError::Unavailable { kind, .. } => kind,
            ApiError::Internal(_) => "internal",
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

    pub(crate) fn overloaded(kind: &'static str, reason: String, retry_after_secs: u32) -> Self {
        ApiError::Unavailable {
            reason,
            kind,
            retry_after_secs,
        }
    }

    /// The HTTP response for this error.
    pub fn into_response(self) -> Response<Full<Bytes>> {
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
        let mut response = super::json_response(status, &body);
        let headers = response.headers_mut();
        match &self {
            ApiError::MethodNotAllowed { allow, .. } => {
                headers.insert(ALLOW, HeaderValue::from_static(allow));
            }
            ApiError::Unauthorized => {
                headers.insert(WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            }
            ApiError::Unavailable {
                retry_after_secs, ..
            } => {
                headers.insert(RETRY_AFTER, HeaderValue::from(*retry_after_secs));
            }
            _ => {}
        }
        headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        response
    }
}

impl From<QueueError> for ApiError {
    fn from(e: QueueError) -> Self {
        match e {
            QueueError::Full { .. } => ApiError::overloaded(
                "queue_full",
                format!("server overloaded: {e}; retry shortly"),
                1,
            ),
            QueueError::Closed => ApiError::overloaded(
                "shutting_down",
                "the server is shutting down; retry on another replica".into(),
                1,
            ),
        }
    }
}

impl From<TokenizeError> for ApiError {
    fn from(e: TokenizeError) -> Self {
        match e {
            TokenizeError::TooLong { .. } => ApiError::PayloadTooLarge(e.to_string()),
            TokenizeError::Failed { .. } => ApiError::BadRequest(e.to_string()),
        }
    }
}

impl From<NotServing> for ApiError {
    fn from(e: NotServing) -> Self {
        match e {
            NotServing::StillLoading => {
                ApiError::overloaded("cold_start_timeout", e.to_string(), 5)
            }
            NotServing::LoadFailed(_) => {
                ApiError::overloaded("model_load_failed", e.to_string(), 10)
            }
        }
    }
}

impl From<InferError> for ApiError {
    fn from(e: InferError) -> Self {
        match e {
            InferError::TimedOut => ApiError::overloaded(
                "timeout",
                "the request timed out waiting for an inference worker; retry shortly".into(),
                1,
            ),
            InferError::Model(_) | InferError::WorkerPanic(_) => ApiError::Internal(e.to_string()),
        }
    }
}

impl From<BrokerError> for ApiError {
    fn from(e: BrokerError) -> Self {
        match e {
            BrokerError::Unreachable(_) => {
                ApiError::overloaded("queue_unavailable", e.to_string(), 5)
            }
            BrokerError::TooLarge(why) => ApiError::PayloadTooLarge(why),
            BrokerError::BadUrl(_) | BrokerError::Refused(_) => ApiError::Internal(e.to_string()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_error_maps_to_its_status_and_headers() {
        let cases: Vec<(ApiError, u16)> = vec![
            (ApiError::NotFound("/x".into()), 404),
            (
                ApiError::MethodNotAllowed {
                    method: "GET".into(),
                    path: "/embed".into(),
                    allow: "POST",
                },
                405,
            ),
            (ApiError::Unauthorized, 401),
            (ApiError::UnsupportedMediaType("text/plain".into()), 415),
            (ApiError::RequestTimeout(30_000), 408),
            (QueueError::Full { capacity: 1 }.into(), 503),
            (
                TokenizeError::TooLong {
                    index: 0,
                    tokens: 600,
                    max: 512,
                }
                .into(),
                413,
            ),
            (
                TokenizeError::Failed {
                    index: 0,
                    reason: "x".into(),
                }
                .into(),
                400,
            ),
            (NotServing::StillLoading.into(), 503),
            (InferError::TimedOut.into(), 503),
            (InferError::WorkerPanic("boom".into()).into(), 500),
            (ApiError::ResourceNotFound("no job".into()), 404),
            (ApiError::Conflict("running".into()), 409),
            (BrokerError::Unreachable("refused".into()).into(), 503),
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
    }
}
