//! The HTTP front end: hyper 1.x over tokio, HTTP/1.1, no framework.
//!
//! A request is checked here for what is HTTP's (route, method, API key, content type, body
//! size and arrival time), its body parsed by [`crate::api`], and handed to the loaded model's
//! service; nothing of the model runs on tokio threads. Errors of every layer become a status
//! code in one place ([`error`]).
//!
//! - [`routes`]: the route table, one line per route, and the checks before a handler;
//! - one file per API style: [`tei`], [`openai`], [`tgi`] (whose `/generate` also takes the
//!   upstream `{"text"}` shape), [`cohere`] (`/v1/rerank`); what the generation styles share in
//!   [`generation`], and Server-Sent Events in [`sse`];
//! - [`jobs`] (`/v1/jobs`), [`probes`] (`/healthz`, `/readyz`, `/metrics`, `/info`), [`docs`]
//!   (`/openapi.json` and the index page);
//! - [`json_routes`]: the routes answered with one JSON body, the same for every style;
//! - [`body`] reads request bodies, [`reply`] writes answers; both count bytes in
//!   `--max-inflight-body-bytes`;
//! - [`server`], [`connections`], [`stalled_writes`]: the connections, their limit and the
//!   drain.
//!
//! Limits that keep one client from taking the replica down for everyone: the number of
//! connections, a header timeout that also closes idle keep-alive connections, a deadline for
//! the whole body, a deadline on answers the client does not read, and a budget of body and
//! answer bytes held at once.

pub mod auth;
pub mod body;
pub mod cohere;
pub mod connections;
pub mod docs;
pub mod error;
pub mod generation;
pub mod jobs;
pub mod json_routes;
pub mod openai;
pub mod probes;
pub mod reply;
pub mod routes;
pub mod server;
pub mod sse;
pub mod stalled_writes;
pub mod state;
pub mod tei;
pub mod tgi;

pub use server::{accept_loop, Connections};
pub use state::AppState;
