//! Constrained decoding (structured outputs) with llguidance: a request's grammar (a JSON
//! schema, any JSON object, a regular expression or a Lark grammar) is compiled once by the
//! service, before the request is queued ([`compile`]); each constrained sequence then owns a
//! matcher ([`Constraint`]) whose token mask the engine computes while the step's forward pass
//! runs and applies to the logits before sampling ([`mask`]).
//!
//! - [`vocab`]: the model's vocabulary as llguidance's token trie;
//! - [`compile`]: grammar text → a compiled parser, with bounded cost and an LRU cache;
//! - [`mask`]: a sequence's matcher: mask, commit, stop;
//! - [`error`]: why a grammar was refused.

pub mod compile;
pub mod error;
pub mod mask;
pub mod vocab;

pub use compile::{lark_regex, Grammar, GrammarCompiler};
pub use error::GrammarError;

/// The kinds of grammar a generation request may give (`/info` lists them).
pub const KINDS: &[&str] = &["json_schema", "json_object", "regex", "lark"];
pub use mask::Constraint;
