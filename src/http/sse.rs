//! Server-Sent Events: a streamed generation's payloads ([`crate::api::answer::StreamWriter`])
//! framed as `data: {...}\n\n` (with the space, as OpenAI and llama.cpp send it, which
//! hand-written clients match). Everything the engine has sent since the last write goes out in
//! one frame. A client that goes away drops the body, and with it the receiver: the engine sees
//! it at its next step and retires the sequence.

use std::convert::Infallible;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body_util::BodyExt;
use hyper::body::Frame;
use hyper::header::{HeaderValue, CACHE_CONTROL, CONTENT_TYPE};
use hyper::Response;
use tokio::sync::mpsc::UnboundedReceiver;

use super::body::Kept;
use super::reply::Body;
use super::state::{AppState, StreamGuard};
use crate::api::answer::{Payload, StreamWriter};
use crate::api::generation::AnswerContext;
use crate::generate::engine::{Event, Failure};

/// The streamed answer of a sequence whose `first` event has come.
pub fn response(
    state: Arc<AppState>,
    first: Event,
    events: UnboundedReceiver<Event>,
    answer: AnswerContext,
    kept: Kept,
) -> Response<Body> {
    let body = SseBody {
        first: Some(first),
        events,
        writer: StreamWriter::new(answer),
        done: false,
        _kept: kept,
        _guard: StreamGuard::new(state),
    };
    let mut r = Response::new(body.boxed_unsync());
    let h = r.headers_mut();
    h.insert(CONTENT_TYPE, HeaderValue::from_static("text/event-stream"));
    h.insert(CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    r
}

/// Appends one event's frame to `out`.
pub fn frame(payload: &Payload, out: &mut String) {
    out.push_str("data: ");
    match payload {
        Payload::Json(v) => out.push_str(&v.to_string()),
        Payload::Done => out.push_str("[DONE]"),
    }
    out.push_str("\n\n");
}

struct SseBody {
    first: Option<Event>,
    events: UnboundedReceiver<Event>,
    writer: StreamWriter,
    done: bool,
    /// The request's share of the in-flight budget, until the stream ends.
    _kept: Kept,
    /// The drain waits for the stream.
    _guard: StreamGuard,
}

impl SseBody {
    /// Writes `ev`; true when it ends the stream.
    fn write(&mut self, ev: Event, out: &mut Vec<Payload>) -> bool {
        let end = !matches!(ev, Event::Token(_));
        self.writer.event(ev, out);
        end
    }
}

impl hyper::body::Body for SseBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        if self.done {
            return Poll::Ready(None);
        }
        let mut payloads = Vec::new();
        if let Some(first) = self.first.take() {
            self.done = self.write(first, &mut payloads);
        }
        // Everything already waiting goes out in one frame.
        while !self.done {
            match self.events.poll_recv(cx) {
                Poll::Ready(Some(ev)) => self.done = self.write(ev, &mut payloads),
                Poll::Ready(None) => {
                    let gone = Failure::Step("the generation engine stopped mid-sequence".into());
                    self.write(Event::Failed(gone), &mut payloads);
                    self.done = true;
                }
                Poll::Pending => break,
            }
        }
        if payloads.is_empty() {
            return if self.done {
                Poll::Ready(None)
            } else {
                Poll::Pending
            };
        }
        let mut out = String::new();
        for p in &payloads {
            frame(p, &mut out);
        }
        Poll::Ready(Some(Ok(Frame::data(Bytes::from(out)))))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_are_framed_with_a_space_after_data() {
        let mut out = String::new();
        frame(&Payload::Json(serde_json::json!({"a": 1})), &mut out);
        frame(&Payload::Done, &mut out);
        assert_eq!(out, "data: {\"a\":1}\n\ndata: [DONE]\n\n");
    }
}
