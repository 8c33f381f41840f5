//! Metric names (a contract with dashboards and the KEDA autoscaler: they live here and
//! nowhere else) and the Prometheus exporter that renders them for `GET /metrics`.
//!
//! Every stage records through the `metrics` facade. Histograms have explicit buckets so they
//! render as Prometheus histograms (quantiles computable across replicas), not summaries.
//! The exporter's housekeeping runs when metrics are rendered and every few seconds of
//! activity, never on an idle timer, so an idle server stays asleep.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

pub const REQUESTS_TOTAL: &str = "zerobatch_requests_total";
pub const REQUEST_DURATION: &str = "zerobatch_request_duration_seconds";
pub const QUEUE_DEPTH: &str = "zerobatch_queue_depth";
pub const INFLIGHT: &str = "zerobatch_inflight_requests";
pub const BATCH_SIZE: &str = "zerobatch_batch_size";
pub const BATCH_TOKENS: &str = "zerobatch_batch_tokens";
pub const QUEUE_WAIT: &str = "zerobatch_queue_wait_seconds";
pub const INFERENCE: &str = "zerobatch_inference_seconds";
pub const REJECTED_TOTAL: &str = "zerobatch_rejected_total";
pub const STARTUP: &str = "zerobatch_startup_seconds";
pub const READY: &str = "zerobatch_ready";
pub const COLD_START_HELD: &str = "zerobatch_cold_start_held_requests_total";
pub const OPEN_CONNECTIONS: &str = "zerobatch_open_connections";
pub const CONNECTIONS_LIMITED: &str = "zerobatch_connections_limited_total";
pub const ACCEPT_ERRORS: &str = "zerobatch_accept_errors_total";
pub const INFLIGHT_BODY_BYTES: &str = "zerobatch_inflight_body_bytes";
pub const BROKER_JOBS: &str = "zerobatch_broker_jobs_total";
pub const BROKER_REDELIVERIES: &str = "zerobatch_broker_redeliveries_total";
pub const BROKER_WAIT: &str = "zerobatch_broker_wait_seconds";
pub const BROKER_BACKLOG: &str = "zerobatch_broker_backlog";
pub const BROKER_PENDING: &str = "zerobatch_broker_pending";
pub const BROKER_HELD: &str = "zerobatch_broker_held_jobs";
pub const BROKER_UP: &str = "zerobatch_broker_up";
pub const GENERATED_TOKENS: &str = "zerobatch_generated_tokens_total";
pub const TIME_TO_FIRST_TOKEN: &str = "zerobatch_time_to_first_token_seconds";
pub const INTER_TOKEN: &str = "zerobatch_inter_token_seconds";
pub const RUNNING_SEQUENCES: &str = "zerobatch_running_sequences";
pub const KV_CACHE_TOKENS: &str = "zerobatch_kv_cache_tokens";
pub const KV_CACHE_BUDGET: &str = "zerobatch_kv_cache_budget_tokens";
pub const GRAMMAR_COMPILE: &str = "zerobatch_grammar_compile_seconds";
pub const GRAMMAR_MASK: &str = "zerobatch_grammar_mask_seconds";
pub const GRAMMAR_CACHE: &str = "zerobatch_grammar_cache_total";
pub const GRAMMAR_CACHE_BYTES: &str = "zerobatch_grammar_cache_bytes";
pub const PREFIX_CACHE_TOKENS: &str = "zerobatch_prefix_cache_tokens_total";
pub const PREFIX_CACHE_BYTES: &str = "zerobatch_prefix_cache_bytes";
pub const PREFIX_CACHE_BLOCKS: &str = "zerobatch_prefix_cache_blocks";
pub const PREFIX_CACHE_BUDGET: &str = "zerobatch_prefix_cache_budget_bytes";

const SECONDS: &[f64] = &[
    0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 120.0,
];
/// A token mask takes tens of microseconds to a few milliseconds.
const MASK_SECONDS: &[f64] = &[
    0.00002, 0.00005, 0.0001, 0.0002, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.05,
];
const SIZES: &[f64] = &[1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0];
const TOKENS: &[f64] = &[
    8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0, 2048.0, 4096.0, 8192.0, 16384.0, 65536.0,
];

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
static LAST_UPKEEP: AtomicU64 = AtomicU64::new(0);
/// Start-up phases recorded before the recorder was installed (replayed by [`install`]);
/// `None` once it is.
static PENDING_PHASES: parking_lot::Mutex<Option<Vec<(&'static str, Duration)>>> =
    parking_lot::const_mutex(Some(Vec::new()));

/// Installs the recorder on a thread of its own, at a lower CPU priority, and resolves when
/// it is installed.
///
/// Building the exporter calibrates `quanta`'s TSC clock, which on a noisy virtual machine
/// spins for up to 200 ms: the server starts loading the model first and installs the
/// recorder meanwhile (the model's loader waits for it with [`wait_installed`] before it
/// records anything else), so that time is not added to the cold start.
pub async fn install_in_background() {
    if HANDLE.get().is_some() {
        return;
    }
    let (tx, rx) = tokio::sync::oneshot::channel();
    let spawned = std::thread::Builder::new()
        .name("zerobatch-metrics".into())
        .spawn(move || {
            #[cfg(target_os = "linux")]
            // SAFETY: on Linux, setpriority on a thread id changes that thread's nice value
            // only (this short-lived thread's).
            unsafe {
                let tid = libc::syscall(libc::SYS_gettid) as libc::id_t;
                libc::setpriority(libc::PRIO_PROCESS, tid, 10);
            }
            install();
            let _ = tx.send(());
        });
    match spawned {
        Ok(_) => {
            let _ = rx.await;
        }
        Err(_) => {
            install();
        }
    }
}

/// Blocks until the recorder is installed (see [`install_in_background`]).
pub fn wait_installed() {
    HANDLE.wait();
}

/// Installs the global recorder (once per process; later calls reuse it) and describes the
/// metrics so `/metrics` lists them with help text from the first scrape.
pub fn install() -> &'static PrometheusHandle {
    let handle = HANDLE.get_or_init(|| {
        let handle = PrometheusBuilder::new()
            .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), SECONDS)
            .and_then(|b| b.set_buckets_for_metric(Matcher::Full(BATCH_SIZE.into()), SIZES))
            .and_then(|b| b.set_buckets_for_metric(Matcher::Full(BATCH_TOKENS.into()), TOKENS))
            .and_then(|b| {
                b.set_buckets_for_metric(Matcher::Full(GRAMMAR_MASK.into()), MASK_SECONDS)
            })
            .expect("bucket lists are non-empty")
            .install_recorder()
            .expect("no other metrics recorder is installed in this process");
        describe();
        handle
    });
    // Phases recorded before: exported now.
    let pending = PENDING_PHASES.lock().take();
    for (phase, elapsed) in pending.into_iter().flatten() {
        metrics::gauge!(STARTUP, "phase" => phase).set(elapsed.as_secs_f64());
    }
    handle
}

fn describe() {
    use metrics::{describe_counter, describe_gauge, describe_histogram, Unit};
    describe_counter!(
        REQUESTS_TOTAL,
        "HTTP requests answered, by route and status code"
    );
    describe_histogram!(
        REQUEST_DURATION,
        Unit::Seconds,
        "Time from request received to response ready, by route"
    );
    describe_gauge!(QUEUE_DEPTH, "Inputs waiting for an inference worker");
    describe_counter!(GENERATED_TOKENS, "Tokens generated, over all sequences");
    describe_histogram!(
        TIME_TO_FIRST_TOKEN,
        Unit::Seconds,
        "Time from a generation request queued to its first token"
    );
    describe_histogram!(
        INTER_TOKEN,
        Unit::Seconds,
        "Time between two tokens of one sequence"
    );
    describe_gauge!(
        RUNNING_SEQUENCES,
        "Sequences in the running generation batch"
    );
    describe_gauge!(
        KV_CACHE_TOKENS,
        "Tokens held in the KV cache, over all running sequences"
    );
    describe_gauge!(
        KV_CACHE_BUDGET,
        "The KV-cache budget in tokens (--max-batch-total-tokens)"
    );
    describe_counter!(
        PREFIX_CACHE_TOKENS,
        "Prompt tokens restored from the prefix cache (result=hit) or prefilled (result=miss)"
    );
    describe_gauge!(
        PREFIX_CACHE_BYTES,
        Unit::Bytes,
        "Bytes of keys and values held by the prefix cache"
    );
    describe_gauge!(PREFIX_CACHE_BLOCKS, "Blocks held by the prefix cache");
    describe_gauge!(
        PREFIX_CACHE_BUDGET,
        Unit::Bytes,
        "The prefix cache's budget (--prefix-cache-bytes; 0: off)"
    );
    describe_histogram!(
        GRAMMAR_COMPILE,
        Unit::Seconds,
        "Time to compile a request's grammar (JSON schema, regex, Lark) that was not cached"
    );
    describe_histogram!(
        GRAMMAR_MASK,
        Unit::Seconds,
        "Time to compute one constrained sequence's token mask (overlapped with the forward pass)"
    );
    describe_counter!(
        GRAMMAR_CACHE,
        "Grammar compilations asked for, by result (hit: reused from the cache, miss: compiled)"
    );
    describe_gauge!(INFLIGHT, "HTTP requests being handled now");
    describe_histogram!(BATCH_SIZE, "Inputs per batch");
    describe_histogram!(BATCH_TOKENS, "Tokens per forward pass");
    describe_histogram!(
        QUEUE_WAIT,
        Unit::Seconds,
        "Time from an input entering the queue to its batch starting"
    );
    describe_histogram!(
        INFERENCE,
        Unit::Seconds,
        "Time of one forward pass (a batch, or one length group of it)"
    );
    describe_counter!(
        REJECTED_TOTAL,
        "Requests refused (4xx other than 404/405, and 503), by reason"
    );
    describe_gauge!(STARTUP, Unit::Seconds, "Duration of each start-up phase");
    describe_gauge!(
        READY,
        "1 when the model is loaded and warm and the server is not draining"
    );
    describe_counter!(
        COLD_START_HELD,
        "Requests that arrived while the model was loading and were held for it"
    );
    describe_gauge!(OPEN_CONNECTIONS, "Client connections open now");
    describe_counter!(
        CONNECTIONS_LIMITED,
        "Connections accepted past --max-connections: served for the probes only, or closed at once"
    );
    describe_counter!(
        ACCEPT_ERRORS,
        "Failed accept calls (out of file descriptors and the like)"
    );
    describe_gauge!(
        INFLIGHT_BODY_BYTES,
        Unit::Bytes,
        "Bytes of request bodies held now (bounded by --max-inflight-body-bytes)"
    );
    describe_counter!(
        BROKER_JOBS,
        "Queue broker jobs handled by this replica, by outcome (succeeded, invalid, dead_lettered, skipped, released)"
    );
    describe_counter!(
        BROKER_REDELIVERIES,
        "Queue broker entries claimed after another delivery left them idle past the visibility timeout"
    );
    describe_histogram!(
        BROKER_WAIT,
        Unit::Seconds,
        "Pull latency: time from a job entering the broker to this replica taking it"
    );
    describe_gauge!(
        BROKER_BACKLOG,
        "Jobs in the queue broker not yet delivered to any replica (the stream group's lag)"
    );
    describe_gauge!(
        BROKER_PENDING,
        "Jobs delivered to some replica and not yet acknowledged"
    );
    describe_gauge!(BROKER_HELD, "Queue broker jobs this replica holds now");
    describe_gauge!(
        BROKER_UP,
        "1 when the queue broker answered the last command"
    );
    metrics::gauge!(QUEUE_DEPTH).set(0.0);
    metrics::gauge!(INFLIGHT).set(0.0);
    metrics::gauge!(READY).set(0.0);
    metrics::counter!(COLD_START_HELD).absolute(0);
}

/// The Prometheus text of every metric.
pub fn render() -> String {
    let handle = install();
    handle.run_upkeep();
    handle.render()
}

/// Drains the exporter's histogram buffers if a few seconds have passed; called on activity
/// (after each batch) so memory stays bounded even if nothing scrapes `/metrics`.
pub fn upkeep_if_due() {
    static START: OnceLock<Instant> = OnceLock::new();
    let now = START.get_or_init(Instant::now).elapsed().as_millis() as u64;
    let last = LAST_UPKEEP.load(Ordering::Relaxed);
    if now.saturating_sub(last) >= 5_000
        && LAST_UPKEEP
            .compare_exchange(last, now, Ordering::AcqRel, Ordering::Relaxed)
            .is_ok()
    {
        if let Some(h) = HANDLE.get() {
            h.run_upkeep();
        }
    }
}

pub fn set_queue_depth(depth: usize) {
    metrics::gauge!(QUEUE_DEPTH).set(depth as f64);
}

pub fn record_request(route: &'static str, status: u16, elapsed: Duration) {
    metrics::counter!(REQUESTS_TOTAL, "route" => route, "status" => status.to_string())
        .increment(1);
    metrics::histogram!(REQUEST_DURATION, "route" => route).record(elapsed.as_secs_f64());
}

pub fn record_rejected(reason: &'static str) {
    metrics::counter!(REJECTED_TOTAL, "reason" => reason).increment(1);
}

pub fn record_batch(size: usize, queue_waits: impl Iterator<Item = Duration>) {
    metrics::histogram!(BATCH_SIZE).record(size as f64);
    let wait = metrics::histogram!(QUEUE_WAIT);
    for w in queue_waits {
        wait.record(w.as_secs_f64());
    }
}

pub fn record_forward(tokens: usize, elapsed: Duration) {
    metrics::histogram!(BATCH_TOKENS).record(tokens as f64);
    metrics::histogram!(INFERENCE).record(elapsed.as_secs_f64());
}

pub fn record_startup_phase(phase: &'static str, elapsed: Duration) {
    if let Some(pending) = PENDING_PHASES.lock().as_mut() {
        pending.push((phase, elapsed));
        return;
    }
    metrics::gauge!(STARTUP, "phase" => phase).set(elapsed.as_secs_f64());
}

pub fn set_ready(ready: bool) {
    metrics::gauge!(READY).set(if ready { 1.0 } else { 0.0 });
}

pub fn record_cold_start_hold() {
    metrics::counter!(COLD_START_HELD).increment(1);
}

pub fn inflight_delta(delta: f64) {
    metrics::gauge!(INFLIGHT).increment(delta);
}

pub fn set_open_connections(open: usize) {
    metrics::gauge!(OPEN_CONNECTIONS).set(open as f64);
}

pub fn record_connection_limited(closed: bool) {
    let action = if closed { "closed" } else { "probes_only" };
    metrics::counter!(CONNECTIONS_LIMITED, "action" => action).increment(1);
}

pub fn record_accept_error() {
    metrics::counter!(ACCEPT_ERRORS).increment(1);
}

/// Counts one broker job by how it ended here.
pub fn record_broker_job(outcome: &'static str) {
    metrics::counter!(BROKER_JOBS, "outcome" => outcome).increment(1);
}

/// Counts entries claimed from other deliveries.
pub fn record_broker_redeliveries(n: usize) {
    metrics::counter!(BROKER_REDELIVERIES).increment(n as u64);
}

/// Records how long a job waited in the broker before this replica took it.
pub fn record_broker_wait(waited: Duration) {
    metrics::histogram!(BROKER_WAIT).record(waited.as_secs_f64());
}

/// Sets the broker's backlog as last seen (lag unknown: left as it was).
pub fn set_broker_backlog(lag: Option<u64>, pending: u64) {
    if let Some(lag) = lag {
        metrics::gauge!(BROKER_BACKLOG).set(lag as f64);
    }
    metrics::gauge!(BROKER_PENDING).set(pending as f64);
}

/// Changes the number of broker jobs held.
pub fn broker_held_delta(delta: f64) {
    metrics::gauge!(BROKER_HELD).increment(delta);
}

/// Whether the broker answered the last command.
pub fn set_broker_up(up: bool) {
    metrics::gauge!(BROKER_UP).set(if up { 1.0 } else { 0.0 });
}

pub fn set_inflight_body_bytes(bytes: usize) {
    metrics::gauge!(INFLIGHT_BODY_BYTES).set(bytes as f64);
}

/// One generation step: sequences in it, tokens produced, cache use.
pub fn record_generation_step(batch: usize, tokens: u64, running: usize, kv_tokens: usize) {
    metrics::histogram!(BATCH_SIZE).record(batch as f64);
    metrics::counter!(GENERATED_TOKENS).increment(tokens);
    metrics::gauge!(RUNNING_SEQUENCES).set(running as f64);
    metrics::gauge!(KV_CACHE_TOKENS).set(kv_tokens as f64);
}

/// The running set and cache use, when they change outside a step (admission, cancel).
pub fn set_generation_state(running: usize, kv_tokens: usize) {
    metrics::gauge!(RUNNING_SEQUENCES).set(running as f64);
    metrics::gauge!(KV_CACHE_TOKENS).set(kv_tokens as f64);
}

/// The KV-cache budget, once at start.
pub fn set_kv_cache_budget(tokens: usize) {
    metrics::gauge!(KV_CACHE_BUDGET).set(tokens as f64);
}

/// A sequence's first token, `elapsed` after it was queued.
pub fn record_time_to_first_token(elapsed: Duration) {
    metrics::histogram!(TIME_TO_FIRST_TOKEN).record(elapsed.as_secs_f64());
}

/// Time to compile a grammar that was not in the cache.
pub fn record_grammar_compile(elapsed: Duration) {
    metrics::histogram!(GRAMMAR_COMPILE).record(elapsed.as_secs_f64());
}

/// A grammar asked for: found in the cache (`hit`) or compiled.
pub fn record_grammar_cache(hit: bool) {
    let result = if hit { "hit" } else { "miss" };
    metrics::counter!(GRAMMAR_CACHE, "result" => result).increment(1);
}

/// The grammar cache's estimated bytes, after it changed.
pub fn set_grammar_cache_bytes(bytes: usize) {
    metrics::gauge!(GRAMMAR_CACHE_BYTES).set(bytes as f64);
}

/// Time to compute one sequence's token mask.
pub fn record_grammar_mask(elapsed: Duration) {
    metrics::histogram!(GRAMMAR_MASK).record(elapsed.as_secs_f64());
}

/// A prompt looked up in the prefix cache: `hit` tokens restored, `miss` left to prefill.
pub fn record_prefix_cache_lookup(hit: usize, miss: usize) {
    metrics::counter!(PREFIX_CACHE_TOKENS, "result" => "hit").increment(hit as u64);
    metrics::counter!(PREFIX_CACHE_TOKENS, "result" => "miss").increment(miss as u64);
}

/// What the prefix cache holds, after it changed.
pub fn set_prefix_cache_size(bytes: usize, blocks: usize) {
    metrics::gauge!(PREFIX_CACHE_BYTES).set(bytes as f64);
    metrics::gauge!(PREFIX_CACHE_BLOCKS).set(blocks as f64);
}

/// The prefix cache's budget, once at start (0: off).
pub fn set_prefix_cache_budget(bytes: usize) {
    metrics::gauge!(PREFIX_CACHE_BUDGET).set(bytes as f64);
}

/// Time between two tokens of one sequence.
pub fn record_inter_token(elapsed: Duration) {
    metrics::histogram!(INTER_TOKEN).record(elapsed.as_secs_f64());
}
