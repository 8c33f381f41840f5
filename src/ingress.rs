//! The queue ingress, the second front end beside HTTP: pulls jobs from the broker while this
//! replica has room for them, runs each as its route's HTTP request would run
//! ([`JsonRequest`]: the same checks, the same service, the same batches), writes its result and
//! acknowledges it.
//!
//! - **Pull what can run.** A job slot (`--queue-max-jobs`) is taken before reading; a read
//!   asks for as many entries as there are free slots, never more. A job that meets a full
//!   internal queue (HTTP traffic took the room) waits and is submitted again: it stays held
//!   (and its visibility extended) rather than going back to the broker.
//! - **Bounded memory.** Beside the slots, the text of the jobs held is bounded by bytes
//!   (`--max-inflight-body-bytes`, a budget of its own beside HTTP's): a read first reserves
//!   `--max-body-bytes` (on Azure at most a message's 64 KiB) for each entry it asks for, and
//!   each job keeps only its own size of that reservation until it ends. So many small jobs
//!   fill every slot, while large ones are held a few at a time.
//! - **Busy is not broken.** A job that meets a full queue (HTTP traffic took the room) or
//!   times out waiting for a worker is still ours: it is submitted again after a pause that
//!   grows from 20 ms to 1 s. A job that has timed out `--queue-max-deliveries` times here is
//!   dead-lettered with the timeout (the heartbeat that keeps it from being redelivered would
//!   otherwise keep it for ever). Every other error decides from its kind: the job's fault
//!   (invalid, too large) goes to the dead letters with the error its HTTP request would get;
//!   anything else (the model failed, the replica is going away) leaves it for redelivery.
//! - **No busy polling when idle.** Redis: `XREADGROUP ... BLOCK` waits in Redis; the loop
//!   wakes once per [`BLOCK`] to reclaim idle entries and refresh the backlog gauge. Azure
//!   has no blocking read: an empty queue is asked again after a pause growing to 1 s.
//! - **Visibility.** Jobs of a replica that died come back after
//!   `--queue-visibility-timeout-ms` (Redis: claimed by `XAUTOCLAIM`; Azure: the message turns
//!   visible again); while a job runs here its hold is renewed every third of the timeout, so
//!   it is not taken over while it runs.
//! - **Stopping.** At SIGTERM the loop stops reading at once (a read under way returns within
//!   [`BLOCK`] and what it brought is run), finishes and acknowledges every job it holds, and
//!   leaves the rest of the stream to the other replicas.
//! - **Broker down.** Reads fail, the loop waits with exponential backoff (100 ms to 5 s) and
//!   logs each failure with the reason; `/readyz` shows it; HTTP traffic is untouched.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use tokio::sync::{watch, OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinSet;

use crate::api::json_routes::JsonRequest;
use crate::broker::{valid_job_id, Broker, BrokerError, Delivery, JobEnvelope, Start};
use crate::error::ServiceError;
use crate::lifecycle::Lifecycle;
use crate::metrics;

/// Longest wait of one blocking read; also how often an idle loop reclaims and measures.
pub const BLOCK: Duration = Duration::from_secs(2);
/// Backoff bounds while the broker cannot be reached.
const BACKOFF_MIN: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(5);
/// Pauses before submitting again a job that met a busy replica: the first, and the longest.
const RETRY_PAUSE_FIRST: Duration = Duration::from_millis(20);
const RETRY_PAUSE_MAX: Duration = Duration::from_secs(1);
/// How often the backlog gauges are refreshed at most.
const BACKLOG_EVERY: Duration = Duration::from_secs(5);

/// How the ingress runs (from the `--queue-*` options).
#[derive(Debug, Clone)]
pub struct IngressConfig {
    /// Most jobs held at once (pulled and not yet acknowledged).
    pub max_jobs: usize,
    /// Idle time after which another replica's entry is claimed.
    pub visibility_timeout: Duration,
    /// Deliveries after which an entry goes to the dead letters instead of running.
    pub max_deliveries: u64,
    /// Most bytes of job text held at once (`--max-inflight-body-bytes`); also the largest
    /// result a job may leave in the broker, as for an HTTP answer.
    pub max_held_bytes: usize,
    /// Largest job accepted (`--max-body-bytes`): what a read reserves per entry.
    pub max_job_bytes: usize,
    /// Most inputs in one job (`--max-client-batch`).
    pub max_client_batch: usize,
}

/// The status and JSON body an HTTP request gets for a service error: what a job's record
/// holds when it ends in that error. The mapping is the HTTP front end's
/// (`http::error::service_error_answer`); the server hands it in, so that this front end does
/// not depend on the other.
pub type ErrorAnswer = fn(&ServiceError) -> (u16, Vec<u8>);

/// The ingress of one replica.
pub struct Ingress {
    broker: Arc<Broker>,
    lifecycle: Arc<Lifecycle>,
    /// `--max-inflight-body-bytes`, shared with HTTP: a job's text counts while it is parsed
    /// and run.
    body_budget: Arc<Semaphore>,
    error_answer: ErrorAnswer,
    config: IngressConfig,
    slots: Arc<Semaphore>,
    /// Bytes of job text that may be held at once (see the module's doc).
    held_bytes: Arc<Semaphore>,
    /// Entries running here (their visibility is extended).
    held: Mutex<HashMap<String, Delivery>>,
}

/// How one job ended here (the `outcome` label of `zerobatch_broker_jobs_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    /// Answered 2xx; result written and acknowledged.
    Succeeded,
    /// Answered 4xx (or not a job at all): result written, entry in the dead letters.
    Invalid,
    /// Delivered more than `--queue-max-deliveries` times: entry in the dead letters.
    DeadLettered,
    /// Already ended (cancelled, or a result written by another delivery): acknowledged only.
    Skipped,
    /// Not finished here (model error, shutdown, broker error): left for redelivery.
    Released,
}

impl Outcome {
    fn label(self) -> &'static str {
        match self {
            Outcome::Succeeded => "succeeded",
            Outcome::Invalid => "invalid",
            Outcome::DeadLettered => "dead_lettered",
            Outcome::Skipped => "skipped",
            Outcome::Released => "released",
        }
    }
}

impl Ingress {
    /// An ingress feeding `lifecycle`'s services from `broker`.
    pub fn new(
        broker: Arc<Broker>,
        lifecycle: Arc<Lifecycle>,
        body_budget: Arc<Semaphore>,
        error_answer: ErrorAnswer,
        config: IngressConfig,
    ) -> Self {
        Self {
            slots: Arc::new(Semaphore::new(config.max_jobs)),
            held_bytes: Arc::new(Semaphore::new(config.max_held_bytes)),
            broker,
            lifecycle,
            body_budget,
            error_answer,
            config,
            held: Mutex::new(HashMap::new()),
        }
    }

    /// Pulls and runs jobs until `stop` turns true, then finishes the jobs it holds.
    pub async fn run(self: Arc<Self>, mut stop: watch::Receiver<bool>) {
        // Nothing is pulled before the workers are warm: a job taken now would only wait.
        tokio::select! {
            _ = self.lifecycle.wait_ready() => {}
            _ = stop.wait_for(|s| *s) => return,
        }
        tracing::info!(
            broker = self.broker.display(),
            consumer = self.broker.consumer(),
            "taking jobs from the queue broker"
        );
        let heartbeat = tokio::spawn(self.clone().heartbeat());
        let mut tasks = JoinSet::new();
        let mut backoff = BACKOFF_MIN;
        let mut last_backlog: Option<Instant> = None;
        while !*stop.borrow() {
            while tasks.try_join_next().is_some() {}
            let first = tokio::select! {
                p = self.slots.clone().acquire_owned() => p.expect("the slots are never closed"),
                _ = stop.wait_for(|s| *s) => break,
            };
            let mut permits = vec![first];
            while let Ok(p) = self.slots.clone().try_acquire_owned() {
                permits.push(p);
            }
            // At least one entry's worth of bytes, then as many more as are free.
            let per_job = self.reserve_per_job();
            let mut bytes = tokio::select! {
                b = self.held_bytes.clone().acquire_many_owned(per_job) => {
                    b.expect("the byte budget is never closed")
                }
                _ = stop.wait_for(|s| *s) => break,
            };
            while bytes.num_permits() < permits.len() * per_job as usize {
                match self.held_bytes.clone().try_acquire_many_owned(per_job) {
                    Ok(more) => bytes.merge(more),
                    Err(_) => break,
                }
            }
            permits.truncate(bytes.num_permits() / per_job as usize);
            let pulled = async {
                let got = self
                    .broker
                    .pull(permits.len(), BLOCK, self.config.visibility_timeout)
                    .await?;
                for d in &got {
                    if d.deliveries > 1 {
                        metrics::record_broker_redeliveries(1);
                    } else if let Some(waited) = d.added.and_then(|a| a.elapsed().ok()) {
                        metrics::record_broker_wait(waited);
                    }
                }
                if last_backlog.is_none_or(|t| t.elapsed() >= BACKLOG_EVERY) {
                    last_backlog = Some(Instant::now());
                    let b = self.broker.backlog().await?;
                    metrics::set_broker_backlog(b.lag, b.pending);
                }
                Ok::<_, BrokerError>(got)
            }
            .await;
            match pulled {
                Ok(deliveries) => {
                    if backoff > BACKOFF_MIN {
                        tracing::info!(
                            broker = self.broker.display(),
                            "the queue broker answers again"
                        );
                    }
                    backoff = BACKOFF_MIN;
                    for d in deliveries {
                        let permit = permits.pop().expect("never more entries than slots");
                        let size = d
                            .job
                            .as_deref()
                            .map_or(0, str::len)
                            .clamp(1, per_job as usize);
                        let own = bytes.split(size).expect("a reservation per entry read");
                        tasks.spawn(self.clone().process(d, permit, own));
                    }
                }
                Err(e) => {
                    self.broker.health().mark_down(&e.to_string());
                    tracing::warn!(
                        broker = self.broker.display(),
                        "{e}; retrying in {} ms (HTTP requests are still served)",
                        backoff.as_millis()
                    );
                    tokio::select! {
                        _ = tokio::time::sleep(backoff) => {}
                        _ = stop.wait_for(|s| *s) => {}
                    }
                    backoff = (backoff * 2).min(BACKOFF_MAX);
                }
            }
        }
        let holding = tasks.len();
        if holding > 0 {
            tracing::info!(jobs = holding, "stopped pulling jobs; finishing those held");
        }
        while tasks.join_next().await.is_some() {}
        heartbeat.abort();
        tracing::info!("queue ingress stopped");
    }

    /// Resets the idle time of the entries running here, every third of the visibility
    /// timeout, so that no other replica claims them while they run.
    async fn heartbeat(self: Arc<Self>) {
        let every = self.config.visibility_timeout / 3;
        loop {
            tokio::time::sleep(every).await;
            let held: Vec<Delivery> = self.held.lock().values().cloned().collect();
            if held.is_empty() {
                continue;
            }
            if let Err(e) = self
                .broker
                .extend(&held, self.config.visibility_timeout)
                .await
            {
                tracing::warn!(
                    "could not extend the visibility of {} jobs: {e}",
                    held.len()
                );
            }
        }
    }

    /// The bytes a read reserves per entry it asks for: the largest job accepted (or that the
    /// broker can carry), within the budget (a semaphore takes at most `u32::MAX` permits).
    fn reserve_per_job(&self) -> u32 {
        let largest = self.broker.largest_job().unwrap_or(usize::MAX);
        let bytes = self
            .config
            .max_job_bytes
            .min(largest)
            .clamp(1, self.config.max_held_bytes.max(1));
        u32::try_from(bytes).unwrap_or(u32::MAX)
    }

    /// Runs one delivery; `slot` and `bytes` (its share of the byte budget) are released when
    /// it ends.
    async fn process(
        self: Arc<Self>,
        delivery: Delivery,
        slot: OwnedSemaphorePermit,
        bytes: OwnedSemaphorePermit,
    ) {
        self.held
            .lock()
            .insert(delivery.entry.clone(), delivery.without_job());
        metrics::broker_held_delta(1.0);
        let outcome = match self.run_job(&delivery).await {
            Ok(o) => o,
            Err(e) => {
                tracing::warn!(entry = delivery.entry, "job left for redelivery: {e}");
                Outcome::Released
            }
        };
        self.held.lock().remove(&delivery.entry);
        metrics::broker_held_delta(-1.0);
        metrics::record_broker_job(outcome.label());
        drop((slot, bytes));
    }

    async fn run_job(&self, delivery: &Delivery) -> Result<Outcome, BrokerError> {
        // The limits of an HTTP body hold for a job: its size (413), and its share of the bytes
        // of bodies held at once, shared with HTTP requests, while it is parsed and run.
        let size = delivery.job.as_deref().map_or(0, str::len);
        let limit = self.config.max_job_bytes;
        if size > limit {
            let error = ServiceError::TooLarge(format!(
                "the job is {size} bytes; the limit is {limit} (--max-body-bytes)"
            ));
            return self.reject(None, delivery, error).await;
        }
        let _body_budget = self
            .body_budget
            .clone()
            .acquire_many_owned(size as u32)
            .await
            .ok();
        let envelope = match delivery
            .job
            .as_deref()
            .map(serde_json::from_str::<JobEnvelope>)
        {
            Some(Ok(e)) => e,
            Some(Err(e)) => {
                let error = ServiceError::Invalid(format!("not a job: {e}"));
                return self.reject(None, delivery, error).await;
            }
            None => {
                let error = ServiceError::Invalid(
                    "not a job: the entry has no `job` field holding {\"route\", \"body\"}".into(),
                );
                return self.reject(None, delivery, error).await;
            }
        };
        let id = envelope
            .id
            .clone()
            .unwrap_or_else(|| delivery.entry.clone());
        if !valid_job_id(&id) {
            let error = ServiceError::Invalid(format!(
                "job id {id:?} is not valid: 1 to 128 letters, digits or -_.:"
            ));
            return self.reject(None, delivery, error).await;
        }
        if delivery.deliveries > self.config.max_deliveries {
            let error = ServiceError::Failed(format!(
                "delivered {} times without finishing (--queue-max-deliveries {})",
                delivery.deliveries, self.config.max_deliveries
            ));
            tracing::warn!(job = id, "{error}: moving it to {}", self.broker.dead_key());
            self.dead_letter(Some(&id), delivery, error).await?;
            return Ok(Outcome::DeadLettered);
        }
        if let Start::Ended(_) = self.broker.start(&id, &envelope.route, delivery).await? {
            self.broker.acknowledge(&id, delivery).await?;
            return Ok(Outcome::Skipped);
        }
        let body = envelope.body.get().as_bytes();
        let mut pause = RETRY_PAUSE_FIRST;
        let mut timeouts = 0;
        loop {
            let answer =
                match JsonRequest::parse(&envelope.route, body, self.config.max_client_batch) {
                    Ok(request) => request.answer(&self.lifecycle).await,
                    Err(e) => Err(e),
                };
            let error = match answer {
                // A result is kept in the broker: it may be no larger than an HTTP answer may.
                Ok(result) if result.len() > self.config.max_held_bytes => {
                    ServiceError::TooLarge(format!(
                        "the answer would be {} bytes, more than --max-inflight-body-bytes ({}); ask for less in one job (fewer or shorter inputs)",
                        result.len(),
                        self.config.max_held_bytes
                    ))
                }
                Ok(result) => {
                    self.broker
                        .finish(&id, &envelope.route, delivery, 200, &result)
                        .await?;
                    return Ok(Outcome::Succeeded);
                }
                Err(e) => e,
            };
            if error.is_the_requests_fault() {
                return self.reject(Some(&id), delivery, error).await;
            }
            if !error.is_momentary() {
                // The model failed, or this replica is going away: another delivery may do
                // better (the delivery count bounds the attempts).
                tracing::warn!(job = id, "job not finished here: {error}");
                return Ok(Outcome::Released);
            }
            // The replica is busy: the job is still ours to run, after a pause.
            if matches!(error, ServiceError::TimedOut(..)) {
                timeouts += 1;
                if timeouts >= self.config.max_deliveries {
                    let error = ServiceError::Failed(format!(
                        "{error} ({timeouts} times here; --queue-max-deliveries {})",
                        self.config.max_deliveries
                    ));
                    tracing::warn!(job = id, "{error}: moving it to {}", self.broker.dead_key());
                    self.dead_letter(Some(&id), delivery, error).await?;
                    return Ok(Outcome::DeadLettered);
                }
            }
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(RETRY_PAUSE_MAX);
        }
    }

    /// Dead-letters a job that can never succeed, with the error its HTTP request would get.
    async fn reject(
        &self,
        id: Option<&str>,
        delivery: &Delivery,
        error: ServiceError,
    ) -> Result<Outcome, BrokerError> {
        tracing::info!(
            entry = delivery.entry,
            "invalid job, moving it to {}: {error}",
            self.broker.dead_key()
        );
        self.dead_letter(id, delivery, error).await?;
        Ok(Outcome::Invalid)
    }

    /// Moves `delivery` to the dead letters with `error`'s HTTP answer (status and body).
    async fn dead_letter(
        &self,
        id: Option<&str>,
        delivery: &Delivery,
        error: ServiceError,
    ) -> Result<(), BrokerError> {
        let (status, body) = (self.error_answer)(&error);
        self.broker.dead_letter(id, delivery, &body, status).await
    }
}
