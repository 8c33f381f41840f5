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

/// The Lark rule `WS` of the grammars this server writes (whitespace around a tool call's
/// opener, between and after calls, after a reasoning block), bounded: once such a grammar
/// leaves a model nothing but whitespace or the next piece of syntax, a small model that
/// prefers whitespace would otherwise pad until `max_tokens` (llama.cpp bounds the `space`
/// of its grammars the same way; JSON inside is compact, [`compile`]).
pub const LARK_WS: &str = "WS: /[ \\t\\n]{1,20}/\n";

/// The kinds of grammar a generation request may give (`/info` lists them).
pub const KINDS: &[&str] = &["json_schema", "json_object", "regex", "lark"];
pub use mask::Constraint;
