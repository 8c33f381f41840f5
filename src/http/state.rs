//! What every handler shares, and the count of requests in flight that the drain waits for.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use tokio::sync::{Notify, Semaphore};

use super::connections::ConnectionGate;
use crate::broker::Broker;
use crate::config::ServeConfig;
use crate::lifecycle::Lifecycle;
use crate::metrics;

/// What every handler shares.
pub struct AppState {
    pub config: ServeConfig,
    pub lifecycle: Arc<Lifecycle>,
    /// Bytes of request bodies and answers that may be held at once
    /// (`--max-inflight-body-bytes`).
    pub body_budget: Arc<Semaphore>,
    pub connections: Arc<ConnectionGate>,
    /// The queue broker (`--queue`): job state for `/v1/jobs`, health for `/readyz`.
    pub broker: Option<Arc<Broker>>,
    inflight: AtomicUsize,
    idle: Notify,
}

impl AppState {
    /// The state of a front end for `lifecycle`'s services, sharing `body_budget` with the
    /// queue ingress.
    pub fn new(
        config: ServeConfig,
        lifecycle: Arc<Lifecycle>,
        body_budget: Arc<Semaphore>,
        broker: Option<Arc<Broker>>,
    ) -> Self {
        let max_connections = config.max_connections.map_or_else(
            || super::connections::default_max_connections(super::connections::raise_file_limit()),
            std::num::NonZeroUsize::get,
        );
        Self {
            body_budget,
            connections: ConnectionGate::new(max_connections),
            config,
            lifecycle,
            broker,
            inflight: AtomicUsize::new(0),
            idle: Notify::new(),
        }
    }

    /// Waits until no request is being handled.
    pub(super) async fn wait_idle(&self) {
        loop {
            let notified = self.idle.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.inflight.load(Ordering::Acquire) == 0 {
                return;
            }
            notified.await;
        }
    }

    fn end_one(&self) {
        if self.inflight.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.idle.notify_waiters();
        }
    }
}

/// Counts a request as in flight for as long as it lives (every request, for the drain; the
/// `zerobatch_inflight_requests` gauge leaves out probes and scrapes, which are not load).
pub(super) struct InflightGuard<'a> {
    state: &'a AppState,
    in_gauge: bool,
}

impl<'a> InflightGuard<'a> {
    pub(super) fn new(state: &'a AppState, probe: bool) -> Self {
        state.inflight.fetch_add(1, Ordering::AcqRel);
        if !probe {
            metrics::inflight_delta(1.0);
        }
        Self {
            state,
            in_gauge: !probe,
        }
    }
}

impl Drop for InflightGuard<'_> {
    fn drop(&mut self) {
        if self.in_gauge {
            metrics::inflight_delta(-1.0);
        }
        self.state.end_one();
    }
}

/// Counts a streamed response as in flight until its body ends, so that the drain waits for
/// streams to finish (the request's own guard ends when the headers are sent). Not in the
/// inflight gauge: the request was counted there already.
pub struct StreamGuard {
    state: Arc<AppState>,
}

impl StreamGuard {
    /// Starts counting.
    pub fn new(state: Arc<AppState>) -> Self {
        state.inflight.fetch_add(1, Ordering::AcqRel);
        Self { state }
    }
}

impl Drop for StreamGuard {
    fn drop(&mut self) {
        self.state.end_one();
    }
}
