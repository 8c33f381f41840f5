//! Wires the boxes together in the order the lifecycle needs: listener (already bound) and
//! HTTP first, then the model loads on its own thread while requests are held, then the worker
//! pool starts; on the shutdown signal, the drain.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::batcher::{BatchLimits, Batcher};
use crate::broker::ingress::{Ingress, IngressConfig};
use crate::config::{available_cores, ServeConfig};
use crate::http::{self, AppState};
use crate::lifecycle::{Lifecycle, Serving, ServingTask};
use crate::metrics;
use crate::model;
use crate::queue::Queue;
use crate::worker::WorkerPool;

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

/// Runs the server on `listener` until `shutdown` resolves (or the model fails to load), then
/// drains. `process_start` dates the start-up phases.
/// Signals that end the server: `first` starts the drain; `second` (resolving on a further
/// signal, e.g. a second Ctrl-C) skips what is left of the shutdown delay.
pub struct ShutdownSignals<F, S> {
    pub first: F,
    pub second: S,
}

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
    // The broker's clients first: an unusable credential stops the start here, said plainly.
    let broker = match config.queue.as_ref().map(|url| {
        crate::broker::Broker::new(
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
    let workers = config.worker_count();
    let lifecycle = Arc::new(Lifecycle::new(workers));
    let (queue, receiver) = Queue::new(config.queue_capacity);
    let queue = Arc::new(queue);
    let batcher = Arc::new(Batcher::new(
        receiver.rx,
        receiver.depth,
        BatchLimits {
            max_size: config.max_batch_size,
            max_tokens: config.max_batch_tokens,
        },
        config.max_batch_delay(),
    ));
    // The model loads from here on; meanwhile the metrics recorder is installed (its clock
    // calibration can take 200 ms) before the first connection is taken.
    let loader = {
        let (lifecycle, config, batcher) = (lifecycle.clone(), config.clone(), batcher.clone());
        std::thread::Builder::new()
            .name("zerobatch-loader".into())
            .spawn(move || load_and_start(config, lifecycle, batcher, workers, process_start))
            .expect("spawning the loader thread")
    };
    metrics::install_in_background().await;
    if matches!(lifecycle.readiness(), crate::lifecycle::Readiness::Loading) {
        metrics::set_ready(false);
    }
    let mut state = AppState::new(config.clone(), lifecycle.clone(), queue.clone());
    if let Some(b) = &broker {
        state = state.with_broker(b.clone());
    }
    let state = Arc::new(state);
    // The queue ingress: pulls broker jobs once the workers are warm, until the drain starts.
    let (stop_pulling, pulling_stopped) = watch::channel(false);
    let ingress = broker.map(|broker| {
        let ingress = Arc::new(Ingress::new(
            broker,
            state.clone(),
            IngressConfig {
                max_jobs: config.queue_max_jobs,
                visibility_timeout: Duration::from_millis(config.queue_visibility_timeout_ms),
                max_deliveries: config.queue_max_deliveries,
                max_held_bytes: config.max_inflight_body_bytes,
                max_job_bytes: config.max_body_bytes,
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
        ms = millis(bound),
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
    let load_failed = matches!(
        lifecycle.readiness(),
        crate::lifecycle::Readiness::Failed(_)
    );
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
    queue.close();
    if let Some(serving) = lifecycle.serving_now() {
        if let ServingTask::Generation(g) = &serving.task {
            // Drained: the engine thread may end.
            g.engine.stop();
        }
    }
    drop(loader);
    tracing::info!(ms = millis(signalled.elapsed()), "shut down");
    if load_failed {
        Outcome::LoadFailed
    } else {
        Outcome::Drained
    }
}

/// Milliseconds rounded to hundredths, for log fields (no float noise like 1.2379559999999998).
fn millis(d: Duration) -> f64 {
    (d.as_secs_f64() * 1e5).round() / 100.0
}

/// Logs a start-up phase and exports it as `zerobatch_startup_seconds{phase}`.
fn startup_phase(name: &'static str, took: Duration) {
    metrics::record_startup_phase(name, took);
    tracing::info!(phase = name, ms = millis(took), "start-up phase done");
}

fn load_and_start(
    config: ServeConfig,
    lifecycle: Arc<Lifecycle>,
    batcher: Arc<Batcher<crate::queue::Entry>>,
    workers: usize,
    process_start: Instant,
) {
    use crate::generate::GenerationSource;
    if let Some(path) = crate::generate::gguf_path(&config.model) {
        return serve_generation(
            config,
            lifecycle,
            GenerationSource::Gguf(path),
            process_start,
        );
    }
    let t = Instant::now();
    let files = match model::files::resolve(&config.model, &config.revision) {
        Ok(files) => files,
        Err(e) => {
            tracing::error!("cannot load the model: {e}");
            lifecycle.failed(e.to_string());
            return;
        }
    };
    startup_phase("resolve", t.elapsed());
    // The task follows from the checkpoint: GPT-2 generates, every other type embeds.
    match model::model_type(&files) {
        Ok(Some(t)) if t == "gpt2" => {
            return serve_generation(
                config,
                lifecycle,
                GenerationSource::Gpt2(Box::new(files)),
                process_start,
            )
        }
        Ok(_) => {}
        Err(e) => {
            tracing::error!("cannot load the model: {e}");
            lifecycle.failed(e.to_string());
            return;
        }
    }
    // A panic while loading (a bug reached by some model file) fails the load like any other
    // error: otherwise the replica would stay "loading" forever and never be restarted.
    let loaded = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let options = model::LoadOptions {
            dtype: config.dtype,
            kernel_cap: config.kernel_cap,
        };
        model::load_files(&files, options, startup_phase)
    }))
    .unwrap_or_else(|panic| {
        Err(model::ModelError::Files(format!(
            "loading panicked (a bug: please report it with the model's files): {}",
            crate::worker::panic_message(&panic)
        )))
    });
    let loaded = match loaded {
        Ok(l) => l,
        Err(e) => {
            tracing::error!("cannot load the model: {e}");
            lifecycle.failed(e.to_string());
            return;
        }
    };
    // Nothing is recorded before the metrics recorder is in place.
    metrics::wait_installed();
    tracing::info!(
        model = %loaded.info.id,
        dtype = %loaded.info.dtype,
        kernel = %loaded.info.kernel,
        "linear layers run in {} on the {} kernels",
        loaded.info.dtype,
        loaded.info.kernel
    );
    let warmup = loaded
        .tokenizer
        .encode(0, "warm up", true)
        .unwrap_or_else(|_| vec![0]);
    lifecycle.loaded(Serving {
        info: loaded.info.clone(),
        task: ServingTask::Embedding(loaded.tokenizer.clone()),
    });
    let warm_started = Instant::now();
    let on_warm = {
        let lifecycle = lifecycle.clone();
        Arc::new(move || {
            if lifecycle.worker_warm() {
                startup_phase("warmup", warm_started.elapsed());
                startup_phase("total", process_start.elapsed());
                tracing::info!("ready to serve");
            }
        })
    };
    match WorkerPool::start(
        workers,
        available_cores(),
        batcher,
        loaded.model,
        warmup,
        on_warm,
    ) {
        Ok(pool) => pool.join(),
        Err(e) => {
            tracing::error!("cannot start the worker threads: {e}");
            lifecycle.failed(format!("cannot start the worker threads: {e}"));
        }
    }
}

/// Loads a generation model and runs its engine on this thread until the process ends.
fn serve_generation(
    config: ServeConfig,
    lifecycle: Arc<Lifecycle>,
    source: crate::generate::GenerationSource,
    process_start: Instant,
) {
    use crate::generate::{self, engine};
    let options = model::LoadOptions {
        dtype: config.dtype,
        kernel_cap: config.kernel_cap,
    };
    let loaded = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        generate::load(&source, options, available_cores(), startup_phase)
    }))
    .unwrap_or_else(|panic| {
        Err(model::ModelError::Files(format!(
            "loading panicked (a bug: please report it with the model file): {}",
            crate::worker::panic_message(&panic)
        )))
    });
    let loaded = match loaded {
        Ok(l) => l,
        Err(e) => {
            tracing::error!("cannot load the model: {e}");
            lifecycle.failed(e.to_string());
            return;
        }
    };
    // Nothing is recorded before the metrics recorder is in place.
    metrics::wait_installed();
    let c = loaded.model.shape();
    tracing::info!(
        model = %loaded.info.id,
        dtype = %loaded.info.dtype,
        kernel = %loaded.info.kernel,
        layers = c.n_layer,
        context = c.context,
        weights_mb = loaded.model.weight_bytes() / 1_000_000,
        "text generation: linear layers run in {} on the {} kernels",
        loaded.info.dtype,
        loaded.info.kernel
    );
    // Warm up before taking requests: one token through every layer faults in the weights.
    let warm_started = Instant::now();
    let mut cache = loaded.model.new_cache(1);
    let _ = loaded.model.step(&mut [generate::decoder::StepInput {
        cache: &mut cache,
        tokens: &[0],
        want_logits: true,
    }]);
    let limits = engine::EngineLimits {
        max_batch_total_tokens: config.max_batch_total_tokens,
        max_running: config.max_batch_size,
        prefill_chunk: config.max_prefill_tokens,
    };
    let (engine, handle) = engine::Engine::new(
        loaded.model.clone(),
        loaded.tokenizer.clone(),
        limits,
        config.queue_capacity,
    );
    let generator = generate::Generator {
        tokenizer: loaded.tokenizer,
        chat: loaded.chat,
        defaults: loaded.defaults,
        engine: handle,
    };
    lifecycle.loaded(Serving {
        info: loaded.info,
        task: ServingTask::Generation(Arc::new(generator)),
    });
    // One step loop serves every sequence, and it is warm.
    lifecycle.all_warm();
    startup_phase("warmup", warm_started.elapsed());
    startup_phase("total", process_start.elapsed());
    tracing::info!("ready to serve");
    engine.run(available_cores());
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
