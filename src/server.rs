//! Wires the boxes together in the order the lifecycle needs: listener (already bound) and
//! HTTP first, then the model loads on its own thread while requests are held (`load`), then
//! its service takes them; the queue ingress pulls jobs once the model is warm; on the
//! shutdown signal, the drain.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::net::TcpListener;
use tokio::sync::{watch, Semaphore};

use crate::broker::Broker;
use crate::config::{available_cores, QueueUrl, ServeConfig};
use crate::http::{self, AppState};
use crate::ingress::{Ingress, IngressConfig};
use crate::lifecycle::{Lifecycle, Readiness, Serving};
use crate::load;
use crate::metrics;
use crate::offload::Offload;

/// How the server ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Drained after a shutdown signal.
    Drained,
    /// The model could not be loaded, or the queue broker cannot be used (the process should
    /// exit non-zero).
    LoadFailed,
}

/// Binds `host:port` with a deep accept backlog, so a burst of connections at a cold start
/// waits in the kernel instead of being refused.
pub fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(1024)
}

/// Signals that end the server: `first` starts the drain; `second` (resolving on a further
/// signal, e.g. a second Ctrl-C) skips what is left of the shutdown delay.
pub struct ShutdownSignals<F, S> {
    pub first: F,
    pub second: S,
}

/// Runs the server on `listener` until the first signal (or the model fails to load), then
/// drains. `process_start` dates the start-up phases.
pub async fn run<F, S>(
    config: ServeConfig,
    listener: TcpListener,
    signals: ShutdownSignals<F, S>,
    process_start: Instant,
) -> Outcome
where
    F: Future<Output = ()>,
    S: Future<Output = ()> + Send + 'static,
{
    for secret in [
        config.api_key.as_deref(),
        config.azure_storage_key.as_deref(),
        config.azure_storage_sas_token.as_deref(),
        config.queue.as_ref().and_then(QueueUrl::password),
    ]
    .into_iter()
    .flatten()
    {
        crate::redact::register(secret);
    }
    // The broker's clients first: an unusable credential stops the start here, said plainly.
    let broker = match config.queue.as_ref().map(|url| {
        Broker::new(
            url,
            config.queue_consumer(),
            Duration::from_millis(config.queue_result_ttl_ms),
            &config.azure_credentials(),
            config.queue_tls_ca_file.as_deref(),
        )
    }) {
        None => None,
        Some(Ok(b)) => Some(Arc::new(b)),
        Some(Err(e)) => {
            tracing::error!("{e}");
            return Outcome::LoadFailed;
        }
    };
    // Listening for the second signal starts now, so it sees every signal from the start.
    let second = tokio::spawn(signals.second);
    let shutdown = signals.first;
    let lifecycle = Arc::new(Lifecycle::new(
        config.worker_count(),
        config.cold_start_timeout(),
    ));
    // Request work off the async threads (long tokenizations, chat templates): one slot per
    // core, shared by whichever service loads.
    let offload = Offload::new(available_cores());
    // The model loads from here on; meanwhile the metrics recorder is installed (its clock
    // calibration can take 200 ms) before the first connection is taken.
    let loader = {
        let (lifecycle, config) = (lifecycle.clone(), config.clone());
        std::thread::Builder::new()
            .name("zerobatch-loader".into())
            .spawn(move || load::load_and_serve(config, lifecycle, offload, process_start))
            .expect("spawning the loader thread")
    };
    metrics::install_in_background().await;
    if matches!(lifecycle.readiness(), Readiness::Loading) {
        metrics::set_ready(false);
    }
    let body_budget = Arc::new(Semaphore::new(config.max_inflight_body_bytes));
    let state = Arc::new(AppState::new(
        config.clone(),
        lifecycle.clone(),
        body_budget.clone(),
        broker.clone(),
    ));
    // The queue ingress: pulls broker jobs once the workers are warm, until the drain starts.
    let (stop_pulling, pulling_stopped) = watch::channel(false);
    let ingress = broker.map(|broker| {
        let ingress = Arc::new(Ingress::new(
            broker,
            lifecycle.clone(),
            body_budget,
            crate::http::error::service_error_answer,
            IngressConfig {
                max_jobs: config.queue_max_jobs,
                visibility_timeout: Duration::from_millis(config.queue_visibility_timeout_ms),
                max_deliveries: config.queue_max_deliveries,
                max_held_bytes: config.max_inflight_body_bytes,
                max_job_bytes: config.max_body_bytes,
                max_client_batch: config.max_client_batch,
            },
        ));
        tokio::spawn(ingress.run(pulling_stopped))
    });

    let local_addr = listener.local_addr();
    let (stop_tx, stop_rx) = watch::channel(false);
    let accepting = tokio::spawn(http::accept_loop(listener, state.clone(), stop_rx));
    let bound = process_start.elapsed();
    metrics::record_startup_phase("bind", bound);
    let addr = local_addr.map_or_else(|e| format!("an unknown address ({e})"), |a| a.to_string());
    tracing::info!(
        phase = "bind",
        ms = load::millis(bound),
        "listening on {addr}; loading {}",
        crate::model::files::model_id(&config.model)
    );

    tokio::select! {
        biased;
        _ = lifecycle.load_failed() => {}
        _ = shutdown => {}
    }
    // Decided by the state, not by which branch won: a failed load ends in exit 1 even when
    // a signal arrived at the same moment.
    let load_failed = matches!(lifecycle.readiness(), Readiness::Failed(_));
    let signalled = Instant::now();
    lifecycle.start_draining();
    // Stop taking broker jobs at once; those held are finished below, within the deadline.
    let _ = stop_pulling.send(true);
    if load_failed {
        // Nothing to drain: held requests already have their 503 with the reason. Exit now so
        // the platform restarts the replica.
        tracing::error!("exiting: the model could not be loaded");
    } else {
        // Keep answering for the delay so load balancers stop routing here.
        tracing::info!(
            "draining: still serving for {} ms",
            config.shutdown_delay_ms
        );
        tokio::select! {
            _ = tokio::time::sleep(config.shutdown_delay()) => {}
            _ = second => tracing::info!("second signal: skipping the rest of the shutdown delay"),
        }
    }
    let _ = stop_tx.send(true);
    let deadline = signalled + config.shutdown_timeout();
    let drained = async {
        let connections = accepting.await.expect("the accept loop does not panic");
        connections.drain().await;
        if let Some(ingress) = ingress {
            let _ = ingress.await;
        }
    };
    if tokio::time::timeout_at(deadline.into(), drained)
        .await
        .is_err()
    {
        tracing::warn!("shutdown timeout reached: answering unfinished requests with 503");
        lifecycle.abort();
        // Give the 503s a moment to be written.
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // Drained: the workers or the engine may end.
    match lifecycle.serving_now().as_deref() {
        Some(Serving::Encoder(s)) => s.close(),
        Some(Serving::Generation(s)) => s.stop(),
        None => {}
    }
    drop(loader);
    tracing::info!(ms = load::millis(signalled.elapsed()), "shut down");
    if load_failed {
        Outcome::LoadFailed
    } else {
        Outcome::Drained
    }
}

/// A server running on its own thread and runtime, for tests and benchmarks.
pub struct BackgroundServer {
    pub addr: SocketAddr,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<Outcome>>,
}

impl BackgroundServer {
    /// Starts a server with `config` (use port 0 for a free port); returns once it listens.
    pub fn start(config: ServeConfig) -> std::io::Result<Self> {
        let (addr_tx, addr_rx) = std::sync::mpsc::channel();
        let (stop, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::Builder::new()
            .name("zerobatch-test-server".into())
            .spawn(move || {
                let rt = tokio::runtime::Builder::new_multi_thread()
                    .worker_threads(2)
                    .enable_all()
                    .build()
                    .expect("runtime");
                rt.block_on(async move {
                    let listener = match bind(SocketAddr::new(config.host, config.port)) {
                        Ok(l) => l,
                        Err(e) => {
                            let _ = addr_tx.send(Err(e));
                            return Outcome::LoadFailed;
                        }
                    };
                    let _ = addr_tx.send(listener.local_addr());
                    let first = async {
                        let _ = stop_rx.await;
                    };
                    let signals = ShutdownSignals {
                        first,
                        second: std::future::pending(),
                    };
                    run(config, listener, signals, Instant::now()).await
                })
            })?;
        let addr = addr_rx.recv().map_err(std::io::Error::other)??;
        Ok(Self {
            addr,
            stop: Some(stop),
            thread: Some(thread),
        })
    }

    /// Signals shutdown (like SIGTERM) and waits for the drain to finish.
    pub fn shutdown(mut self) -> Outcome {
        self.stop.take().map(|s| s.send(()));
        self.thread
            .take()
            .expect("joined once")
            .join()
            .expect("server thread")
    }
}

impl Drop for BackgroundServer {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
    }
}
