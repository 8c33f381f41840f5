//! # zerobatch
//!
//! An inference worker for serverless containers. Data flows one way, each layer in its own
//! modules, none importing a layer above it:
//!
//! ```text
//! front ends   http (hyper: routes, auth, one file per API style, SSE)   ingress (queue jobs)
//!                     \                                                  /
//! wire format          api: request and answer bodies of every API style, checked and rendered
//!                                           │
//! services      embed::EmbedService                  generate::service::GenerateService
//!               (tokenize, queue → batcher → workers)   (admission → engine step loop)
//!                      │                                      │
//! models        model (BERT encoder, tokenizer)       generate (Llama, GPT-2 decoders, KV cache)
//!                        \                                   /
//! kernels                 kernels (f32, bf16, int16, int8, 4/5-bit; dispatch; thread team)
//! ```
//!
//! Beside the flow: `lifecycle` (bind-first cold start, readiness, drain; it holds the loaded
//! service), `load` (loads the model and starts its service), `server` (wires everything in
//! the order the lifecycle needs), `broker` (the queue broker's clients, which the ingress and
//! `/v1/jobs` use), `config` (every option, plain values), `error` (the services' error),
//! `offload` (request work off the async threads), `metrics`, `alloc`, `redact`.

pub mod alloc;
pub mod api;
pub mod broker;
pub mod config;
pub mod embed;
pub mod error;
pub mod generate;
pub mod http;
pub mod ingress;
pub mod kernels;
pub mod lifecycle;
pub mod load;
pub mod metrics;
pub mod model;
pub mod offload;
pub mod redact;
pub mod server;
