//! # zerobatch
//!
//! An inference worker for serverless containers. The path of one request, one module each:
//!
//! ```text
//! client ─HTTP─▶ http (hyper/tokio: parse, validate, auth, tokenize) ─▶ queue (bounded)
//!        ─▶ batcher (dynamic micro-batches) ─▶ worker (fixed pool of inference threads)
//!        ─▶ model (candle forward pass) ─▶ reply through the entry's oneshot ─▶ http
//! ```
//!
//! A generation model (GGUF) takes a second path after `http`: `generate`'s engine, one step
//! loop doing continuous batching, streams tokens back through a channel per request.
//!
//! `metrics` is recorded at every stage; `lifecycle` covers the bind-first cold start, the
//! readiness state and the drain; `config` holds every option; `server` wires them together.
//! `broker` is the second way in: jobs pulled from a queue broker (Redis Streams or Azure
//! Storage Queues) take the same path from validation on.

pub mod alloc;
pub mod batcher;
pub mod broker;
pub mod config;
pub mod generate;
pub mod http;
pub mod kernels;
pub mod lifecycle;
pub mod metrics;
pub mod model;
pub mod queue;
pub mod server;
pub mod worker;
