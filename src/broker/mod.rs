//! The queue broker's clients: Redis Streams or Azure Storage Queues, behind one interface
//! ([`Broker`]) that the queue ingress (`crate::ingress`, the second front end) and the HTTP job
//! routes (`/v1/jobs`) use. Jobs pulled from it run through the same validation, the same
//! bounded queue and the same micro-batches as HTTP requests.
//!
//! ```text
//! producer ─XADD / Put Message─▶ broker ─read (only as many as free job slots)─▶ ingress
//!   ingress: envelope {id, route, body} ─▶ api::json_routes::JsonRequest (parse, answer)
//!            (the services' path: tokenize, queue, micro-batcher, workers)
//!   answer ─▶ Redis: one Lua script: HSET result (idempotent per job id) + PEXPIRE + XACK + XDEL
//!             Azure: conditional write of the job's record blob, then Delete Message
//! ```
//!
//! Why it is built this way (docs/queue.md has the whole design):
//! - **One request path.** A job is the body of an HTTP route plus an id. It is parsed and
//!   answered by [`crate::api::json_routes::JsonRequest`], as the HTTP route's body is, so a
//!   job's result is byte for byte the HTTP answer, and a job joins the same batches as HTTP
//!   traffic.
//! - **Backpressure.** The ingress holds at most `--queue-max-jobs` jobs; it reads from the
//!   broker only when a slot is free and asks for no more than the free slots. What it does
//!   not hold stays in the broker, where any replica (or a new one started by KEDA) can take it.
//! - **At least once.** A job is acknowledged only in the script that writes its result; a
//!   replica that dies leaves its jobs pending, and they are reclaimed (`XAUTOCLAIM`) after
//!   `--queue-visibility-timeout-ms` of idleness. Running jobs reset their idle time, so they
//!   are not reclaimed while they run.
//! - **Nothing loops forever.** A job that fails validation, or has been delivered more than
//!   `--queue-max-deliveries` times, goes to the dead-letter stream (or queue) with the reason.
//!
//! The two brokers differ in how they hand out work (Redis blocks in `XREADGROUP` and needs
//! idle entries claimed; Azure hides a received message for a visibility timeout and has no
//! blocking read) and in where job state lives (a Redis hash; a blob per job). [`Broker`] is
//! the one interface the ingress and `/v1/jobs` use.

mod azure_auth;
pub mod azure_queue;
mod idle_polling;
pub mod job;
pub mod redis_streams;
pub mod shared_key;

use std::time::Duration;

use azure_queue::AzureQueue;
use redis_streams::RedisStreams;

pub use job::{
    valid_job_id, Backlog, BrokerError, Cancel, Delivery, Health, JobEnvelope, JobRecord, Lease,
    Start,
};

use crate::config::{AzureCredentials, QueueUrl};

/// The queue broker this replica uses: one interface over both kinds.
pub enum Broker {
    /// Redis Streams with a consumer group.
    Redis(RedisStreams),
    /// Azure Storage Queues, with job records in Blob Storage.
    Azure(AzureQueue),
}

impl Broker {
    /// Clients for `url` (nothing is contacted yet). Fails when an Azure credential in the
    /// environment is unusable.
    pub fn new(
        url: &QueueUrl,
        consumer: String,
        result_ttl: Duration,
        azure: &AzureCredentials,
        tls_ca_file: Option<&std::path::Path>,
    ) -> Result<Self, BrokerError> {
        Ok(match url {
            QueueUrl::Redis(t) => Broker::Redis(RedisStreams::new(
                (**t).clone(),
                tls_ca_file,
                consumer,
                result_ttl,
            )?),
            QueueUrl::Azure(t) => {
                Broker::Azure(AzureQueue::new(t.clone(), consumer, result_ttl, azure)?)
            }
        })
    }

    /// The broker's URL without secrets.
    pub fn display(&self) -> &str {
        match self {
            Broker::Redis(b) => b.display(),
            Broker::Azure(b) => b.display(),
        }
    }

    /// This replica's name at the broker.
    pub fn consumer(&self) -> &str {
        match self {
            Broker::Redis(b) => b.consumer(),
            Broker::Azure(b) => b.consumer(),
        }
    }

    /// The largest job text this broker can deliver, in bytes, or None when only the
    /// producer bounds it (a Redis entry). What a read reserves per entry is the smaller of
    /// this and `--max-body-bytes`.
    pub fn largest_job(&self) -> Option<usize> {
        match self {
            Broker::Redis(_) => None,
            Broker::Azure(_) => Some(azure_queue::MAX_MESSAGE),
        }
    }

    /// Where dead letters go.
    pub fn dead_key(&self) -> String {
        match self {
            Broker::Redis(b) => b.dead_key(),
            Broker::Azure(b) => b.dead_key(),
        }
    }

    /// Whether the broker answers.
    pub fn health(&self) -> &Health {
        match self {
            Broker::Redis(b) => b.health(),
            Broker::Azure(b) => b.health(),
        }
    }

    /// Takes up to `count` jobs, waiting at most about `wait` for the first; each is held
    /// for `visibility` before another replica may take it.
    pub async fn pull(
        &self,
        count: usize,
        wait: Duration,
        visibility: Duration,
    ) -> Result<Vec<Delivery>, BrokerError> {
        match self {
            Broker::Redis(b) => b.pull(count, wait, visibility).await,
            Broker::Azure(b) => b.pull(count, wait, visibility).await,
        }
    }

    /// Keeps jobs running here from being taken by another replica for `visibility` more.
    pub async fn extend(&self, held: &[Delivery], visibility: Duration) -> Result<(), BrokerError> {
        match self {
            Broker::Redis(b) => {
                let entries: Vec<String> = held.iter().map(|d| d.entry.clone()).collect();
                b.extend(&entries).await
            }
            Broker::Azure(b) => b.extend(held, visibility).await,
        }
    }

    /// Marks job `id` running, unless it has ended.
    pub async fn start(&self, id: &str, route: &str, d: &Delivery) -> Result<Start, BrokerError> {
        match self {
            Broker::Redis(b) => b.start(id, route, &d.entry).await,
            Broker::Azure(b) => b.start(id, route, d).await,
        }
    }

    /// Writes job `id`'s answer (once per job id) and acknowledges the delivery.
    pub async fn finish(
        &self,
        id: &str,
        route: &str,
        d: &Delivery,
        status: u16,
        result: &[u8],
    ) -> Result<bool, BrokerError> {
        match self {
            Broker::Redis(b) => b.finish(id, &d.entry, "succeeded", status, result).await,
            Broker::Azure(b) => b.finish(id, route, d, status, result).await,
        }
    }

    /// Acknowledges a delivery whose job already ended, writing nothing.
    pub async fn acknowledge(&self, id: &str, d: &Delivery) -> Result<(), BrokerError> {
        match self {
            Broker::Redis(b) => b.finish(id, &d.entry, "", 0, b"").await.map(|_| ()),
            Broker::Azure(b) => b.acknowledge(d).await,
        }
    }

    /// Moves a delivery to the dead letters with `error` (an HTTP error body and status).
    pub async fn dead_letter(
        &self,
        id: Option<&str>,
        d: &Delivery,
        error: &[u8],
        status: u16,
    ) -> Result<(), BrokerError> {
        match self {
            Broker::Redis(b) => b.dead_letter(id, d, error, status).await,
            Broker::Azure(b) => b.dead_letter(id, d, error, status).await,
        }
    }

    /// Adds a job for `POST /v1/jobs`; returns its id (random: it cannot be guessed from
    /// another job's).
    pub async fn create(
        &self,
        route: &str,
        body: &serde_json::Value,
    ) -> Result<String, BrokerError> {
        match self {
            Broker::Redis(b) => b.create(route, body).await,
            Broker::Azure(b) => b.create(route, body).await,
        }
    }

    /// Whether job `id` may be read or cancelled over HTTP: not when it is a Redis stream entry
    /// id (a job written without an id of its own is kept under its entry's id, and entry ids,
    /// the time and a counter, can be walked by anyone holding the API key). Such a job's record
    /// is read in Redis itself, by the producer that wrote it.
    pub fn serves_over_http(&self, id: &str) -> bool {
        match self {
            Broker::Redis(_) => !redis_streams::is_entry_id(id),
            Broker::Azure(_) => true,
        }
    }

    /// Job `id`'s record, or None when there is no such job.
    pub async fn job(&self, id: &str) -> Result<Option<JobRecord>, BrokerError> {
        match self {
            Broker::Redis(b) => Ok(b.job(id).await?.and_then(JobRecord::from_fields)),
            Broker::Azure(b) => b.job(id).await,
        }
    }

    /// Cancels job `id` if it has not started.
    pub async fn cancel(&self, id: &str) -> Result<Cancel, BrokerError> {
        match self {
            Broker::Redis(b) => b.cancel(id).await,
            Broker::Azure(b) => b.cancel(id).await,
        }
    }

    /// The backlog as the broker reports it.
    pub async fn backlog(&self) -> Result<Backlog, BrokerError> {
        match self {
            Broker::Redis(b) => b.backlog().await,
            Broker::Azure(b) => b.backlog().await,
        }
    }
}
