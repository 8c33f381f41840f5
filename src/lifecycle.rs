//! The process's life as a serverless replica: loading → ready → draining → exit.
//!
//! - The port is bound before the model loads; `/healthz` answers at once and `/readyz` says
//!   `loading` until the model is loaded and every worker has run a warm-up batch.
//! - Requests that arrive while loading are held (not refused) until the model is usable or
//!   `--cold-start-timeout-ms` passes; they keep their arrival order (see `embed::queue::Entry::seq`).
//! - If loading fails, held requests get 503 with the reason, `/readyz` reports it, and the
//!   process exits non-zero so the platform restarts it.
//! - On SIGTERM/SIGINT `/readyz` turns 503 at once; the server keeps serving for
//!   `--shutdown-delay-ms`, then stops accepting and drains (see `http::accept_loop`). At
//!   `--shutdown-timeout-ms` whatever is unfinished gets 503 and the process exits.
//!
//! Nothing here polls: state changes are pushed through `tokio::sync::watch` channels.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

use crate::embed::EmbedService;
use crate::error::ServiceError;
use crate::generate::service::GenerateService;
use crate::metrics;
use crate::model::ModelInfo;

/// The loaded model's service, which both front ends call.
pub enum Serving {
    /// An encoder model: embeddings, reranking or text classification (its `info().task`).
    Encoder(Arc<EmbedService>),
    Generation(Arc<GenerateService>),
}

impl Serving {
    /// Facts about the model.
    pub fn info(&self) -> &ModelInfo {
        match self {
            Serving::Encoder(s) => s.info(),
            Serving::Generation(s) => s.info(),
        }
    }

    /// Where request work runs off the async threads.
    pub fn offload(&self) -> &crate::offload::Offload {
        match self {
            Serving::Encoder(s) => s.offload(),
            Serving::Generation(s) => s.offload(),
        }
    }

    /// Requests (generation) or inputs (embeddings) waiting for the model.
    pub fn waiting(&self) -> usize {
        match self {
            Serving::Encoder(s) => s.waiting(),
            Serving::Generation(s) => s.waiting(),
        }
    }
}

/// Progress of model loading.
#[derive(Clone)]
pub enum LoadState {
    Loading,
    Loaded(Arc<Serving>),
    Failed(String),
}

/// What `/readyz` reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Readiness {
    Loading,
    Ready,
    Draining,
    Failed(String),
}

impl Readiness {
    /// The word `/readyz` and `/info` report.
    pub fn as_str(&self) -> &'static str {
        match self {
            Readiness::Loading => "loading",
            Readiness::Ready => "ready",
            Readiness::Draining => "draining",
            Readiness::Failed(_) => "failed",
        }
    }
}

/// Shared lifecycle state.
pub struct Lifecycle {
    load: watch::Sender<LoadState>,
    /// How long a request waits for the model to load (`--cold-start-timeout-ms`).
    cold_start_timeout: Duration,
    workers_warm: AtomicUsize,
    workers: usize,
    draining: AtomicBool,
    aborted: watch::Sender<bool>,
    /// Turns true when the last worker is warm (the queue ingress waits for it).
    warm: watch::Sender<bool>,
    /// Serialises the writes of `zerobatch_ready` with the state they are computed from, so a
    /// warm-up finishing during the start of a drain cannot write 1 after the drain wrote 0.
    ready_gauge: parking_lot::Mutex<()>,
}

impl Lifecycle {
    /// The state of a replica with `workers` inference threads to warm up, whose requests
    /// wait at most `cold_start_timeout` for the model.
    pub fn new(workers: usize, cold_start_timeout: Duration) -> Self {
        metrics::set_ready(false);
        Self {
            load: watch::Sender::new(LoadState::Loading),
            cold_start_timeout,
            workers_warm: AtomicUsize::new(0),
            workers,
            draining: AtomicBool::new(false),
            aborted: watch::Sender::new(false),
            warm: watch::Sender::new(false),
            ready_gauge: parking_lot::Mutex::new(()),
        }
    }

    /// The loaded model's serving state, if it is loaded (no waiting).
    pub fn serving_now(&self) -> Option<Arc<Serving>> {
        match &*self.load.borrow() {
            LoadState::Loaded(s) => Some(s.clone()),
            _ => None,
        }
    }

    /// The model is loaded and its service started: held and new requests go to it (unless
    /// the load failed meanwhile, e.g. in a worker's warm-up: a failure is final).
    pub fn loaded(&self, serving: Serving) {
        let serving = Arc::new(serving);
        self.load.send_if_modified(|state| {
            if matches!(state, LoadState::Loading) {
                *state = LoadState::Loaded(serving);
                true
            } else {
                false
            }
        });
    }

    /// Loading failed: held and new requests get 503 with `reason`.
    pub fn failed(&self, reason: String) {
        self.load.send_replace(LoadState::Failed(reason));
    }

    /// Facts about the model, once it is loaded.
    pub fn loaded_info(&self) -> Option<ModelInfo> {
        match &*self.load.borrow() {
            LoadState::Loaded(s) => Some(s.info().clone()),
            _ => None,
        }
    }

    /// Resolves if loading fails (never, once the model is loaded).
    pub async fn load_failed(&self) {
        let mut rx = self.load.subscribe();
        let _ = rx.wait_for(|s| matches!(s, LoadState::Failed(_))).await;
    }

    /// Every worker is warm at once: a generation server's one step loop, warmed up before
    /// it takes requests.
    pub fn all_warm(&self) {
        let _gauge = self.ready_gauge.lock();
        self.workers_warm.store(self.workers, Ordering::Release);
        metrics::set_ready(!self.is_draining());
        self.warm.send_replace(true);
    }

    /// One worker finished its warm-up; the last one makes the server ready (and gets true).
    pub fn worker_warm(&self) -> bool {
        let _gauge = self.ready_gauge.lock();
        let last = self.workers_warm.fetch_add(1, Ordering::AcqRel) + 1 == self.workers;
        if last {
            metrics::set_ready(!self.is_draining());
            self.warm.send_replace(true);
        }
        last
    }

    /// Resolves once the model is loaded and every worker is warm (never if loading fails).
    pub async fn wait_ready(&self) {
        let mut rx = self.warm.subscribe();
        if rx.wait_for(|w| *w).await.is_err() {
            std::future::pending::<()>().await;
        }
    }

    pub fn readiness(&self) -> Readiness {
        if let LoadState::Failed(reason) = &*self.load.borrow() {
            return Readiness::Failed(reason.clone());
        }
        if self.is_draining() {
            return Readiness::Draining;
        }
        if self.workers_warm.load(Ordering::Acquire) >= self.workers
            && matches!(*self.load.borrow(), LoadState::Loaded(_))
        {
            Readiness::Ready
        } else {
            Readiness::Loading
        }
    }

    /// The loaded model's service, waiting for it up to `--cold-start-timeout-ms` if it is
    /// still loading (a request held through a cold start, counted in
    /// `zerobatch_cold_start_held_requests_total`).
    pub async fn serving(&self) -> Result<Arc<Serving>, ServiceError> {
        let check = |s: &LoadState| match s {
            LoadState::Loading => None,
            LoadState::Loaded(s) => Some(Ok(s.clone())),
            LoadState::Failed(r) => Some(Err(ServiceError::LoadFailed(r.clone()))),
        };
        if let Some(r) = check(&self.load.borrow()) {
            return r;
        }
        metrics::record_cold_start_hold();
        let mut rx = self.load.subscribe();
        let waited = tokio::time::timeout(self.cold_start_timeout, async {
            rx.wait_for(|s| !matches!(s, LoadState::Loading))
                .await
                .map(|s| s.clone())
        })
        .await;
        match waited {
            Ok(Ok(state)) => check(&state).expect("not loading"),
            Ok(Err(_)) | Err(_) => Err(ServiceError::StillLoading),
        }
    }

    /// Runs `work` unless the drain deadline passes first (then `ShuttingDown`): whatever a
    /// request is waiting for (the model, a queue, a worker), it gives up at the deadline.
    pub async fn until_aborted<T>(
        &self,
        work: impl std::future::Future<Output = Result<T, ServiceError>>,
    ) -> Result<T, ServiceError> {
        tokio::select! {
            r = work => r,
            _ = self.aborted() => Err(ServiceError::drain_deadline()),
        }
    }

    /// SIGTERM received: readiness off, responses ask clients to close their connections.
    pub fn start_draining(&self) {
        let _gauge = self.ready_gauge.lock();
        self.draining.store(true, Ordering::Release);
        metrics::set_ready(false);
    }

    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Acquire)
    }

    /// The shutdown deadline has passed: every request still waiting gets 503.
    pub fn abort(&self) {
        self.aborted.send_replace(true);
    }

    /// Resolves when [`Lifecycle::abort`] is called.
    pub async fn aborted(&self) {
        let mut rx = self.aborted.subscribe();
        let _ = rx.wait_for(|a| *a).await;
    }
}

/// The shutdown signals (SIGTERM, what ACA and Kubernetes send on scale-in, and SIGINT),
/// listened to from the moment this is created; each `next` resolves on one more signal and
/// says which. One listener for the whole process, so each signal is logged once.
pub struct TerminationSignals {
    #[cfg(unix)]
    term: tokio::signal::unix::Signal,
    #[cfg(unix)]
    int: tokio::signal::unix::Signal,
}

impl TerminationSignals {
    /// Installs the handlers (inside a tokio runtime).
    pub fn new() -> std::io::Result<Self> {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{signal, SignalKind};
            Ok(Self {
                term: signal(SignalKind::terminate())?,
                int: signal(SignalKind::interrupt())?,
            })
        }
        #[cfg(not(unix))]
        Ok(Self {})
    }

    /// The next signal's name.
    pub async fn next(&mut self) -> &'static str {
        #[cfg(unix)]
        {
            tokio::select! {
                _ = self.term.recv() => "SIGTERM",
                _ = self.int.recv() => "SIGINT",
            }
        }
        #[cfg(not(unix))]
        {
            let _ = tokio::signal::ctrl_c().await;
            "Ctrl-C"
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn held_requests_wake_when_loading_fails_and_readiness_says_why() {
        let l = Arc::new(Lifecycle::new(1, Duration::from_secs(5)));
        assert_eq!(l.readiness(), Readiness::Loading);
        let waiter = {
            let l = l.clone();
            tokio::spawn(async move { l.serving().await.map(|_| ()) })
        };
        tokio::task::yield_now().await;
        l.failed("no weights".into());
        let r = waiter.await.unwrap();
        assert_eq!(r, Err(ServiceError::LoadFailed("no weights".into())));
        assert_eq!(l.readiness(), Readiness::Failed("no weights".into()));
    }

    #[tokio::test]
    async fn a_cold_start_that_outlasts_the_timeout_is_reported() {
        let l = Lifecycle::new(1, Duration::from_millis(20));
        let r = l.serving().await;
        assert!(matches!(r, Err(ServiceError::StillLoading)));
    }

    #[test]
    fn draining_overrides_ready() {
        let l = Lifecycle::new(2, Duration::from_secs(1));
        l.workers_warm.store(2, Ordering::Relaxed);
        l.start_draining();
        assert_eq!(l.readiness(), Readiness::Draining);
    }
}
