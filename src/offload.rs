//! Request work that takes CPU time (tokenizing long texts, rendering chat templates) runs
//! here, off the async threads: a tokenization of a long input takes milliseconds, and on the
//! async threads it would stall every other connection, `/healthz` included.
//!
//! Small jobs run inline (a thread hop costs more than they do). Larger ones go to tokio's
//! blocking pool, at most one per core at once: the rest wait their turn, so the memory they
//! hold is bounded whatever the concurrency. Both services share one `Offload`.

use std::sync::Arc;

use tokio::sync::Semaphore;

use crate::error::{panic_message, ServiceError};

/// Below this many bytes of input, work runs inline on the calling async thread.
pub const INLINE_BYTES: usize = 32 * 1024;

/// The slots for work off the async threads.
#[derive(Clone)]
pub struct Offload {
    slots: Arc<Semaphore>,
}

impl Offload {
    /// Runs at most `slots` jobs at once (one per core).
    pub fn new(slots: usize) -> Self {
        Self {
            slots: Arc::new(Semaphore::new(slots.max(1))),
        }
    }

    /// Runs `work` inline when `input_bytes` is small, else on a blocking thread once a slot
    /// is free. A panic in `work` is this request's error, never the process's.
    pub async fn run<T, F>(&self, input_bytes: usize, work: F) -> Result<T, ServiceError>
    where
        T: Send + 'static,
        F: FnOnce() -> Result<T, ServiceError> + Send + 'static,
    {
        if input_bytes <= INLINE_BYTES {
            return std::panic::catch_unwind(std::panic::AssertUnwindSafe(work))
                .unwrap_or_else(|p| Err(failed(&p)));
        }
        self.off(work).await
    }

    /// Runs `work` on a blocking thread once a slot is free, whatever its size: for work
    /// whose cost the input does not bound (a chat template from a model file).
    pub async fn off<T, F>(&self, work: F) -> Result<T, ServiceError>
    where
        T: Send + 'static,
        F: FnOnce() -> Result<T, ServiceError> + Send + 'static,
    {
        let slot = self
            .slots
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| ServiceError::ShuttingDown("the server is shutting down".into()))?;
        match tokio::task::spawn_blocking(move || {
            let _slot = slot;
            work()
        })
        .await
        {
            Ok(r) => r,
            Err(e) if e.is_panic() => Err(failed(&e.into_panic())),
            Err(e) => Err(ServiceError::ShuttingDown(format!(
                "the server is shutting down: {e}"
            ))),
        }
    }
}

fn failed(panic: &Box<dyn std::any::Any + Send>) -> ServiceError {
    let message = panic_message(panic);
    tracing::error!("request work panicked (a bug: please report it): {message}");
    ServiceError::Failed(format!(
        "the request failed (a bug: please report it): {message}"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn small_work_runs_inline_large_work_on_a_slot_and_panics_are_errors() {
        let offload = Offload::new(1);
        let here = std::thread::current().id();
        let inline = offload
            .run(10, move || Ok(std::thread::current().id() == here))
            .await;
        assert_eq!(inline, Ok(true));
        let off = offload
            .run(INLINE_BYTES + 1, move || {
                Ok(std::thread::current().id() == here)
            })
            .await;
        assert_eq!(off, Ok(false));
        let panicked: Result<(), _> = offload.run(INLINE_BYTES + 1, || panic!("bad input")).await;
        assert!(matches!(panicked, Err(ServiceError::Failed(m)) if m.contains("bad input")));
        let panicked: Result<(), _> = offload.run(1, || panic!("small bad input")).await;
        assert!(matches!(panicked, Err(ServiceError::Failed(_))));
    }
}
