//! Reading a request body: the one place where bytes from a client are taken in, and so where
//! three limits meet. `--max-body-bytes` bounds one body (413, checked on `Content-Length` and
//! while reading); `--client-timeout-ms` is one deadline over the whole body, however slowly it
//! trickles (408, and the connection closes); `--max-inflight-body-bytes` is a budget over all
//! bodies held at once, counted as bytes arrive, so a slow client holds only what it has sent
//! and nothing is allocated for a size that was only declared (503 when no room comes).

use std::time::Duration;

use bytes::Bytes;
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::header::{CONTENT_LENGTH, CONTENT_TYPE};
use hyper::Request;
use tokio::sync::OwnedSemaphorePermit;

use super::error::ApiError;
use super::state::AppState;
use crate::error::ServiceError;

pub fn is_json(content_type: &str) -> bool {
    let essence = content_type
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    essence == "application/json"
        || (essence.starts_with("application/") && essence.ends_with("+json"))
}

/// A request body read whole, and its share of the in-flight body budget.
pub struct Body {
    pub bytes: Bytes,
    permit: Option<OwnedSemaphorePermit>,
}

/// What a request keeps of its body's share of the budget once the body is parsed: the bytes
/// of text it still holds. Released when dropped, i.e. when the request is answered.
pub struct Kept(#[allow(dead_code)] Option<OwnedSemaphorePermit>);

impl Body {
    /// Frees the body, keeping `held` bytes of its share of the budget for what the parsed
    /// request holds (its texts) until the answer: a body padded with whitespace, or whose
    /// JSON is mostly syntax, does not hold the budget while the request waits for the model.
    pub fn parsed(self, held: usize) -> Kept {
        let Some(mut permit) = self.permit else {
            return Kept(None);
        };
        let held = u32::try_from(held).unwrap_or(u32::MAX) as usize;
        if held >= permit.num_permits() {
            return Kept(Some(permit));
        }
        // `split` takes `held` permits out; dropping `permit` returns the rest.
        Kept(permit.split(held))
    }
}

/// How long a body waits for room in `--max-inflight-body-bytes` before the request gets 503.
const BODY_BUDGET_WAIT: Duration = Duration::from_secs(2);

/// Reads the body of a JSON request: 415 unless JSON, 413 over `--max-body-bytes` (declared or
/// sent), 408 unless the whole body arrives within `--client-timeout-ms` (however it
/// trickles), 503 when the bodies already held fill `--max-inflight-body-bytes` for too long.
/// Bytes are counted against the budget as they arrive, so a slow client holds only what it
/// has sent, and nothing is allocated for a size that was only declared.
pub async fn read_body(state: &AppState, req: Request<Incoming>) -> Result<Body, ApiError> {
    let limit = state.config.max_body_bytes;
    let content_type = req
        .headers()
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if !is_json(content_type) {
        let shown = if content_type.is_empty() {
            "none".to_string()
        } else {
            content_type.to_string()
        };
        return Err(ApiError::UnsupportedMediaType(format!(
            "the body must be JSON: send `Content-Type: application/json` (got {shown})"
        )));
    }
    let too_large = || {
        ApiError::BodyTooLarge(format!(
            "the body is larger than the limit of {limit} bytes (--max-body-bytes)"
        ))
    };
    let declared = req
        .headers()
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit as u64) {
        return Err(too_large());
    }
    let deadline = tokio::time::Instant::now() + state.config.client_timeout();
    let mut body = req.into_body();
    let mut chunks: Vec<Bytes> = Vec::new();
    let mut received = 0usize;
    let mut permit: Option<OwnedSemaphorePermit> = None;
    loop {
        let frame = match tokio::time::timeout_at(deadline, body.frame()).await {
            Err(_) => return Err(ApiError::RequestTimeout(state.config.client_timeout_ms)),
            Ok(None) => break,
            Ok(Some(Err(e))) => {
                return Err(ApiError::Service(ServiceError::Invalid(format!(
                    "could not read the request body: {e}"
                ))))
            }
            Ok(Some(Ok(frame))) => frame,
        };
        let Ok(data) = frame.into_data() else {
            continue;
        };
        if data.is_empty() {
            continue;
        }
        received += data.len();
        if received > limit {
            return Err(too_large());
        }
        // `data.len()` ≤ `limit` < 4 GiB (checked at start-up).
        let n = data.len() as u32;
        let more = match state.body_budget.clone().try_acquire_many_owned(n) {
            Ok(p) => p,
            Err(_) => {
                let wait_until = deadline.min(tokio::time::Instant::now() + BODY_BUDGET_WAIT);
                match tokio::time::timeout_at(
                    wait_until,
                    state.body_budget.clone().acquire_many_owned(n),
                )
                .await
                {
                    Ok(Ok(p)) => p,
                    _ => return Err(ApiError::BodyBudget(state.config.max_inflight_body_bytes)),
                }
            }
        };
        match &mut permit {
            Some(p) => p.merge(more),
            None => permit = Some(more),
        }
        chunks.push(data);
    }
    let bytes = match chunks.len() {
        0 => Bytes::new(),
        1 => chunks.pop().expect("one chunk"),
        _ => {
            let mut all = Vec::with_capacity(received);
            for c in &chunks {
                all.extend_from_slice(c);
            }
            Bytes::from(all)
        }
    };
    Ok(Body { bytes, permit })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_content_types() {
        assert!(is_json("application/json"));
        assert!(is_json("Application/JSON; charset=utf-8"));
        assert!(is_json("application/vnd.api+json"));
        assert!(!is_json("text/plain"));
        assert!(!is_json(""));
        assert!(!is_json("application/x-www-form-urlencoded"));
    }
}
