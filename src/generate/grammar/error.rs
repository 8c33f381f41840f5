//! Why a grammar was refused: the grammar layer's one error type, shared by compiling
//! (`compile.rs`) and starting a sequence's matcher (`mask.rs`).

/// Why a grammar was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GrammarError {
    /// The grammar is malformed, unsupported, or over a limit; the message names the problem.
    #[error("{0}")]
    Invalid(String),
    /// This model cannot run grammars (e.g. it has no end-of-sequence token).
    #[error("structured output is not available with this model: {0}")]
    Unavailable(String),
}
