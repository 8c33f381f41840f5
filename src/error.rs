//! The services' error: every way a request can fail once it reaches a service (embedding or
//! generation), whichever front end brought it. There is no HTTP in it: `http::error` maps each
//! variant to a status code once, and the queue broker decides from the variant whether a job
//! is retried, dead-lettered or left for another replica.

use crate::model::TokenizeError;

/// Why a service could not answer a request.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ServiceError {
    /// The request is malformed, or asks for something this server does not do.
    #[error("{0}")]
    Invalid(String),
    /// The request asks for more than a limit allows (inputs, tokens, prompt length).
    #[error("{0}")]
    TooLarge(String),
    /// The route serves another task than the loaded model's (for this replica the route does
    /// not exist: 404, naming the model's task and its routes).
    #[error("{0}")]
    WrongTask(String),
    /// The service's queue is full: the request was not queued.
    #[error("{0}")]
    QueueFull(String),
    /// The request waited past `--request-timeout-ms` for a worker (embeddings) or for a place
    /// in the running batch (generation).
    #[error("the request waited longer than --request-timeout-ms ({0} ms) for {1}; retry shortly")]
    TimedOut(u64, &'static str),
    /// The model is still loading after `--cold-start-timeout-ms`.
    #[error("the model is still loading after the cold-start timeout")]
    StillLoading,
    /// The model failed to load: this replica will never answer (it exits).
    #[error("the model failed to load: {0}")]
    LoadFailed(String),
    /// The server is shutting down: its queue is closed, or the drain deadline passed.
    #[error("{0}")]
    ShuttingDown(String),
    /// The model failed on this request: a bug or corrupt weights, not the request's fault.
    #[error("{0}")]
    Failed(String),
}

impl ServiceError {
    /// A stable, machine-readable name: the `error_type` of error bodies (HTTP answers and job
    /// records alike) and the `reason` label of `zerobatch_rejected_total`.
    pub fn kind(&self) -> &'static str {
        match self {
            ServiceError::Invalid(_) => "invalid_request",
            ServiceError::WrongTask(_) => "not_found",
            ServiceError::TooLarge(_) => "payload_too_large",
            ServiceError::QueueFull(_) => "queue_full",
            ServiceError::TimedOut(..) => "timeout",
            ServiceError::StillLoading => "cold_start_timeout",
            ServiceError::LoadFailed(_) => "model_load_failed",
            ServiceError::ShuttingDown(_) => "shutting_down",
            ServiceError::Failed(_) => "internal",
        }
    }

    /// Whether the request itself is at fault, so that sending it again cannot succeed.
    pub fn is_the_requests_fault(&self) -> bool {
        matches!(
            self,
            ServiceError::Invalid(_) | ServiceError::TooLarge(_) | ServiceError::WrongTask(_)
        )
    }

    /// Whether the same replica may well succeed a moment later: it was busy, not broken.
    pub fn is_momentary(&self) -> bool {
        matches!(
            self,
            ServiceError::QueueFull(_) | ServiceError::TimedOut(..)
        )
    }

    /// The error of the drain deadline: the request was cut short by the shutdown.
    pub fn drain_deadline() -> Self {
        ServiceError::ShuttingDown(
            "the server is shutting down and its drain deadline passed; retry".into(),
        )
    }
}

impl From<TokenizeError> for ServiceError {
    fn from(e: TokenizeError) -> Self {
        match e {
            TokenizeError::TooLong { .. } => ServiceError::TooLarge(e.to_string()),
            TokenizeError::Failed { .. } => ServiceError::Invalid(e.to_string()),
        }
    }
}

/// The message of a caught panic, for logs and error answers.
pub fn panic_message(panic: &Box<dyn std::any::Any + Send>) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "unknown panic".into())
}
