//! Response bodies.
//!
//! Small fixed answers (probes, errors, the docs) are whole buffers. The answers of the
//! request routes can be large (a `/tokenize` of 64 long texts is tens of MB of JSON), and a
//! client that does not read its answer must not pin memory without limit, so such an answer
//! holds its size in `--max-inflight-body-bytes` (the budget request bodies use) until hyper
//! has taken its last chunk: it is handed to hyper in [`CHUNK`]-sized pieces, so hyper buffers
//! only a few of them, and a connection whose client stops reading is closed after
//! `--client-timeout-ms` (see `http::stalled_writes`), which frees the rest.

use std::convert::Infallible;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Frame;
use hyper::header::{HeaderValue, CONTENT_TYPE};
use hyper::{Response, StatusCode};
use tokio::sync::OwnedSemaphorePermit;

use super::state::AppState;

/// A response body: whole, counted, or streamed (Server-Sent Events).
pub type Body = http_body_util::combinators::UnsyncBoxBody<Bytes, Infallible>;

/// The size of the pieces a counted answer is handed to hyper in.
pub const CHUNK: usize = 64 * 1024;

/// How long an answer waits for room in the budget before the request gets 503.
const BUDGET_WAIT: Duration = Duration::from_secs(2);

/// A small JSON response with the given status (probes, errors, job records).
pub fn json_response<T: serde::Serialize + ?Sized>(status: StatusCode, body: &T) -> Response<Body> {
    let bytes = serde_json::to_vec(body).expect("response types always serialize");
    let mut r = Response::new(Full::new(Bytes::from(bytes)).boxed_unsync());
    *r.status_mut() = status;
    r.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    r
}

/// Why an answer could not be sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AnswerRefused {
    /// The answer alone is larger than the whole budget (413).
    TooLarge { size: usize, budget: usize },
    /// No room came in the budget within 2 s (503 `body_budget`).
    NoRoom { budget: usize },
}

/// A 200 JSON answer of a request route, counted in the in-flight budget while it is sent.
pub async fn counted_json(
    state: &AppState,
    json: Vec<u8>,
) -> Result<Response<Body>, AnswerRefused> {
    let size = json.len();
    let budget = state.config.max_inflight_body_bytes;
    if size > budget {
        return Err(AnswerRefused::TooLarge { size, budget });
    }
    let n = u32::try_from(size.max(1)).unwrap_or(u32::MAX);
    let permit = match state.body_budget.clone().try_acquire_many_owned(n) {
        Ok(p) => p,
        Err(_) => {
            tokio::time::timeout(BUDGET_WAIT, state.body_budget.clone().acquire_many_owned(n))
                .await
                .ok()
                .and_then(Result::ok)
                .ok_or(AnswerRefused::NoRoom { budget })?
        }
    };
    let body = CountedBody {
        rest: Bytes::from(json),
        _permit: Some(permit),
    };
    let mut r = Response::new(body.boxed_unsync());
    r.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    Ok(r)
}

/// An answer handed out in pieces, holding its share of the budget until the last piece.
struct CountedBody {
    rest: Bytes,
    _permit: Option<OwnedSemaphorePermit>,
}

impl hyper::body::Body for CountedBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        if self.rest.is_empty() {
            self._permit = None;
            return Poll::Ready(None);
        }
        let n = self.rest.len().min(CHUNK);
        let piece = self.rest.split_to(n);
        if self.rest.is_empty() {
            // Hyper has the last piece: the answer no longer holds memory of its own.
            self._permit = None;
        }
        Poll::Ready(Some(Ok(Frame::data(piece))))
    }

    fn is_end_stream(&self) -> bool {
        self.rest.is_empty()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        hyper::body::SizeHint::with_exact(self.rest.len() as u64)
    }
}
