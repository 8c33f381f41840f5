//! Queue ingress: jobs pulled from a real broker (Redis Streams or Azure Storage Queues) run
//! through the same validation, the same bounded queue and the same micro-batches as HTTP
//! requests.
//!
//! ```text
//! producer ─XADD / Put Message─▶ broker ─read (only as many as free job slots)─▶ ingress
//!   ingress: envelope {id, route, body} ─▶ http::api::parse_request ─▶ routes::run_parsed
//!            (the HTTP handlers: tokenize, queue::submit, micro-batcher, workers)
//!   answer ─▶ Redis: one Lua script: HSET result (idempotent per job id) + PEXPIRE + XACK + XDEL
//!             Azure: conditional write of the job's record blob, then Delete Message
//! ```
//!
//! Why it is built this way (docs/queue.md has the whole design):
//! - **One request path.** A job is the body of an HTTP route plus an id. It is parsed by
//!   [`crate::http::api::parse_request`] and answered by [`crate::http::routes::run_parsed`],
//!   so a job's result is byte for byte the HTTP answer, and a job joins the same batches as
//!   HTTP traffic.
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

pub mod azure_queue;
pub mod ingress;
pub mod redis_streams;
pub mod shared_key;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use serde::Deserialize;

use azure_queue::AzureQueue;
use redis_streams::RedisStreams;

/// Where jobs come from: the value of `--queue`, checked when the options are parsed.
#[derive(Debug, Clone)]
pub enum QueueUrl {
    /// `redis://[user:pass@]host:port/STREAM?group=GROUP`: a Redis stream read by a consumer group.
    Redis(RedisTarget),
    /// `azure-queue://ACCOUNT/QUEUE[?endpoint=URL&blob_endpoint=URL&results=QUEUE]`: an Azure
    /// storage queue.
    Azure(AzureTarget),
}

impl QueueUrl {
    /// The URL with any password replaced by `***`, for logs, `/info` and `/readyz`.
    pub fn display(&self) -> &str {
        match self {
            QueueUrl::Redis(t) => &t.display,
            QueueUrl::Azure(t) => &t.display,
        }
    }
}

/// An Azure storage queue, and where the account's queue and blob services answer.
#[derive(Debug, Clone)]
pub struct AzureTarget {
    /// The storage account's name.
    pub account: String,
    /// The jobs' queue (also the name of the container holding the job records).
    pub queue: String,
    /// The queue service, e.g. `https://ACCOUNT.queue.core.windows.net` or Azurite's
    /// `http://127.0.0.1:10001/devstoreaccount1`.
    pub queue_endpoint: String,
    /// The blob service (job records).
    pub blob_endpoint: String,
    /// The queue that gets a notification per finished job, when set.
    pub results: Option<String>,
    /// The URL as given (it holds no secret: credentials come from the environment).
    pub display: String,
}

/// How a replica signs in to an Azure storage account, from the options (the first that is
/// set wins; with none, the platform's identity).
#[derive(Clone, Default)]
pub struct AzureCredentials {
    /// `--azure-storage-key`: Shared Key signing.
    pub account_key: Option<String>,
    /// `--azure-storage-sas-token`: a SAS appended to every URL.
    pub sas_token: Option<String>,
    /// `--azure-client-id`: a user-assigned managed identity.
    pub client_id: Option<String>,
}

impl std::fmt::Debug for AzureCredentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the secrets.
        f.debug_struct("AzureCredentials")
            .field("account_key", &self.account_key.as_ref().map(|_| "***"))
            .field("sas_token", &self.sas_token.as_ref().map(|_| "***"))
            .field("client_id", &self.client_id)
            .finish()
    }
}

impl AzureTarget {
    /// The dead-letter queue's name.
    pub fn dead_queue(&self) -> String {
        format!("{}-dead", self.queue)
    }
}

/// Whether `name` can name a queue (and its records container) with room for the `-dead`
/// suffix: 3 to 58 lower-case letters, digits and single hyphens, starting and ending with a
/// letter or digit.
fn valid_azure_queue_name(name: &str) -> bool {
    (3..=58).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !name.starts_with('-')
        && !name.ends_with('-')
        && !name.contains("--")
}

fn parse_azure(s: &str, rest: &str) -> Result<QueueUrl, BrokerError> {
    let bad = |why: &str| BrokerError::BadUrl(format!("{s:?}: {why}"));
    let (location, query) = rest.split_once('?').unwrap_or((rest, ""));
    let Some((account, queue)) = location.split_once('/') else {
        return Err(bad("expected azure-queue://ACCOUNT/QUEUE"));
    };
    if !(3..=24).contains(&account.len())
        || !account
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
    {
        return Err(bad(
            "the account name must be 3 to 24 lower-case letters and digits",
        ));
    }
    if !valid_azure_queue_name(queue) {
        return Err(bad(
            "the queue name must be 3 to 58 lower-case letters, digits and single hyphens \
             (room is kept for the -dead queue)",
        ));
    }
    let mut queue_endpoint = None;
    let mut blob_endpoint = None;
    let mut results = None;
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        match pair.split_once('=') {
            Some(("endpoint", v)) if v.starts_with("http://") || v.starts_with("https://") => {
                queue_endpoint = Some(v.trim_end_matches('/').to_string())
            }
            Some(("blob_endpoint", v)) if v.starts_with("http://") || v.starts_with("https://") => {
                blob_endpoint = Some(v.trim_end_matches('/').to_string())
            }
            Some(("results", v)) if valid_azure_queue_name(v) && v != queue => {
                results = Some(v.to_string())
            }
            _ => {
                return Err(bad(&format!(
                    "unknown or invalid query parameter {pair:?}; one of endpoint=URL, \
                     blob_endpoint=URL, results=QUEUE"
                )))
            }
        }
    }
    let queue_endpoint =
        queue_endpoint.unwrap_or_else(|| format!("https://{account}.queue.core.windows.net"));
    let blob_endpoint = match blob_endpoint {
        Some(b) => b,
        None if queue_endpoint.contains(".queue.") => {
            queue_endpoint.replacen(".queue.", ".blob.", 1)
        }
        None => {
            return Err(bad(
                "with a custom endpoint= the blob service that keeps job records needs \
                 blob_endpoint=URL too",
            ))
        }
    };
    Ok(QueueUrl::Azure(AzureTarget {
        account: account.to_string(),
        queue: queue.to_string(),
        queue_endpoint,
        blob_endpoint,
        results,
        display: s.to_string(),
    }))
}

/// A Redis stream and the consumer group that reads it.
#[derive(Debug, Clone)]
pub struct RedisTarget {
    /// The client for the server (no connection is made until it is used).
    pub client: redis::Client,
    /// The stream's key.
    pub stream: String,
    /// The consumer group shared by every replica.
    pub group: String,
    /// The stream that gets a notification per ended job (`results=STREAM`), when set.
    pub results: Option<String>,
    /// The URL without its password.
    pub display: String,
}

/// The consumer group used when the URL names none.
pub const DEFAULT_GROUP: &str = "zerobatch";

impl std::str::FromStr for QueueUrl {
    type Err = BrokerError;

    fn from_str(s: &str) -> Result<Self, BrokerError> {
        let bad = |why: &str| BrokerError::BadUrl(format!("{s:?}: {why}"));
        let Some((scheme, rest)) = s.split_once("://") else {
            return Err(bad(
                "expected redis://host:port/STREAM?group=GROUP or azure-queue://ACCOUNT/QUEUE",
            ));
        };
        match scheme {
            "redis" => {}
            "azure-queue" => return parse_azure(s, rest),
            "rediss" => {
                return Err(bad(
                    "TLS connections (rediss://) are not supported by this build; use redis://",
                ))
            }
            _ => return Err(bad("the scheme must be redis:// or azure-queue://")),
        }
        let (location, query) = rest.split_once('?').unwrap_or((rest, ""));
        let Some((authority, stream)) = location.split_once('/') else {
            return Err(bad(
                "the stream name is missing: redis://host:port/STREAM?group=GROUP",
            ));
        };
        if authority.is_empty() || authority.ends_with('@') {
            return Err(bad("the host is missing"));
        }
        if stream.is_empty() || stream.contains('/') {
            return Err(bad(
                "the path must be one stream name: redis://host:port/STREAM",
            ));
        }
        let mut group = DEFAULT_GROUP.to_string();
        let mut results = None;
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            match pair.split_once('=') {
                Some(("group", g)) if !g.is_empty() => group = g.to_string(),
                Some(("results", r)) if !r.is_empty() && r != stream => {
                    results = Some(r.to_string())
                }
                _ => {
                    return Err(bad(&format!(
                        "unknown or invalid query parameter {pair:?}; one of group=NAME, \
                         results=STREAM"
                    )))
                }
            }
        }
        let client = redis::Client::open(format!("redis://{authority}/"))
            .map_err(|e| bad(&e.to_string()))?;
        let shown_authority = match authority.rsplit_once('@') {
            Some((userinfo, host)) => match userinfo.split_once(':') {
                Some((user, _)) => format!("{user}:***@{host}"),
                None => format!("{userinfo}@{host}"),
            },
            None => authority.to_string(),
        };
        let shown_results = results
            .as_deref()
            .map_or(String::new(), |r| format!("&results={r}"));
        Ok(QueueUrl::Redis(RedisTarget {
            client,
            stream: stream.to_string(),
            display: format!("redis://{shown_authority}/{stream}?group={group}{shown_results}"),
            group,
            results,
        }))
    }
}

/// A job as producers write it (the `job` field of a stream entry): the body of an HTTP
/// route, the route, and an optional id (the stream entry's id when absent).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JobEnvelope {
    /// The job's id: where its result is written. Letters, digits and `-_.:`, at most 128.
    #[serde(default)]
    pub id: Option<String>,
    /// The JSON route that answers it: `/embed`, `/`, `/v1/embeddings` or `/tokenize`.
    pub route: String,
    /// The request body that route takes.
    pub body: serde_json::Value,
}

/// The routes a job may name: the JSON POST routes.
pub const JOB_ROUTES: &[&str] = &["/embed", "/", "/v1/embeddings", "/tokenize"];

/// Whether `id` can name a job (it becomes part of a Redis key and of a URL path).
pub fn valid_job_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 128
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b':'))
}

/// Why the broker could not be used.
#[derive(Debug, Clone, thiserror::Error)]
pub enum BrokerError {
    /// `--queue` cannot be used (said before anything starts).
    #[error("--queue {0}")]
    BadUrl(String),
    /// The broker cannot be reached (refused, reset, timed out): retried with backoff.
    #[error("the queue broker is unreachable: {0}")]
    Unreachable(String),
    /// The broker answered with an error (a bug, or a key of the wrong type).
    #[error("the queue broker refused a command: {0}")]
    Refused(String),
    /// The job cannot be carried by this broker (an Azure message holds 64 KiB).
    #[error("{0}")]
    TooLarge(String),
}

/// Whether the broker answers, as `/readyz` and `zerobatch_broker_up` say: kept by each broker
/// client from the outcome of its calls.
#[derive(Debug)]
pub struct Health {
    down: parking_lot::RwLock<Option<String>>,
}

impl Default for Health {
    fn default() -> Self {
        Self {
            down: parking_lot::RwLock::new(Some("not connected yet".into())),
        }
    }
}

impl Health {
    /// Why the broker cannot be used now, or None when it answered the last call.
    pub fn down_reason(&self) -> Option<String> {
        self.down.read().clone()
    }

    /// Records that the broker could not be reached.
    pub fn mark_down(&self, reason: &str) {
        *self.down.write() = Some(reason.to_string());
        crate::metrics::set_broker_up(false);
    }

    /// Passes on the outcome of a call, noting it: an answer (even a refusal) means the broker
    /// is up; an unreachable broker is down.
    pub fn note<T>(&self, r: Result<T, BrokerError>) -> Result<T, BrokerError> {
        match &r {
            Err(e @ BrokerError::Unreachable(_)) => self.mark_down(&e.to_string()),
            _ => {
                if self.down.read().is_some() {
                    *self.down.write() = None;
                    crate::metrics::set_broker_up(true);
                }
            }
        }
        r
    }
}

/// One job taken from the broker.
#[derive(Debug, Clone)]
pub struct Delivery {
    /// The broker's id for it: the stream entry's id, or the queue message's id.
    pub entry: String,
    /// The job's text (None when a Redis entry has no `job` field: it goes to the dead letters).
    pub job: Option<String>,
    /// How many times it has been delivered, this time included.
    pub deliveries: u64,
    /// When the producer added it, by the broker's clock.
    pub added: Option<SystemTime>,
    /// What the broker needs to go on holding it (shared by the clones of this delivery). An
    /// async lock: it is held across the call that renews the pop receipt, so a delete never
    /// goes out with a receipt that a renewal in flight is about to replace.
    pub lease: Arc<tokio::sync::Mutex<Lease>>,
}

/// Azure's handles on a message being run: the pop receipt (renewed each time its
/// visibility is extended) and the ETag of the job record this delivery wrote. Unused by Redis.
#[derive(Debug, Default)]
pub struct Lease {
    /// The receipt that deletes or updates the message.
    pub pop_receipt: String,
    /// The record's version after this delivery marked it running.
    pub record_etag: Option<String>,
}

impl Delivery {
    /// A delivery with an empty lease.
    pub fn new(
        entry: String,
        job: Option<String>,
        deliveries: u64,
        added: Option<SystemTime>,
    ) -> Self {
        Self::with_receipt(entry, job, deliveries, added, String::new())
    }

    /// A delivery held by `pop_receipt`.
    pub fn with_receipt(
        entry: String,
        job: Option<String>,
        deliveries: u64,
        added: Option<SystemTime>,
        pop_receipt: String,
    ) -> Self {
        let lease = Lease {
            pop_receipt,
            record_etag: None,
        };
        Self {
            entry,
            job,
            deliveries,
            added,
            lease: Arc::new(tokio::sync::Mutex::new(lease)),
        }
    }
}

/// What starting a job found in its record.
#[derive(Debug, PartialEq, Eq)]
pub enum Start {
    /// The job is now `running`.
    Run,
    /// The job already ended (`succeeded`, `failed` or `cancelled`): acknowledge, do not run.
    Ended(String),
}

/// What `DELETE /v1/jobs/{id}` found.
#[derive(Debug, PartialEq, Eq)]
pub enum Cancel {
    /// The job was queued and is now cancelled: no replica will run it.
    Cancelled,
    /// The job is not queued any more: its state.
    Not(String),
    /// No such job (never created, or its record expired).
    Unknown,
}

/// The broker's view of the backlog.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backlog {
    /// Jobs waiting: entries not yet delivered to the group (KEDA's `lagCount`), or the
    /// queue's approximate length (KEDA's `queueLength`); None when the broker cannot tell.
    pub lag: Option<u64>,
    /// Entries delivered and not yet acknowledged (Redis; 0 for Azure, which does not say).
    pub pending: u64,
}

/// A job's state as `GET /v1/jobs/{id}` shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobRecord {
    /// `queued`, `running`, `succeeded`, `failed` or `cancelled`.
    pub state: String,
    /// The route that runs it.
    pub route: Option<String>,
    /// The HTTP status of its answer, once ended.
    pub status: Option<u16>,
    /// Its answer (the HTTP body), once ended.
    pub result: Option<String>,
}

impl JobRecord {
    fn from_fields(mut fields: HashMap<String, String>) -> Option<Self> {
        Some(Self {
            state: fields.remove("state")?,
            route: fields.remove("route"),
            status: fields.get("status").and_then(|s| s.parse().ok()),
            result: fields.remove("result"),
        })
    }
}

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
    ) -> Result<Self, BrokerError> {
        Ok(match url {
            QueueUrl::Redis(t) => Broker::Redis(RedisStreams::new(t.clone(), consumer, result_ttl)),
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

    /// Adds a job for `POST /v1/jobs`; returns its id.
    pub async fn create(
        &self,
        route: &str,
        body: &serde_json::Value,
    ) -> Result<String, BrokerError> {
        match self {
            Broker::Redis(b) => {
                let text = serde_json::json!({ "route": route, "body": body }).to_string();
                b.create(route, &text).await
            }
            Broker::Azure(b) => b.create(route, body).await,
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

impl From<redis::RedisError> for BrokerError {
    fn from(e: redis::RedisError) -> Self {
        if e.is_io_error()
            || e.is_connection_dropped()
            || e.is_timeout()
            || e.is_connection_refusal()
        {
            BrokerError::Unreachable(e.to_string())
        } else {
            BrokerError::Refused(e.to_string())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queue_urls_name_a_stream_and_a_group_and_hide_the_password() {
        let Ok(QueueUrl::Redis(t)) =
            "redis://user:secret@cache:6380/jobs?group=embedders".parse::<QueueUrl>()
        else {
            panic!("not a Redis URL")
        };
        assert_eq!((t.stream.as_str(), t.group.as_str()), ("jobs", "embedders"));
        assert_eq!(
            t.display,
            "redis://user:***@cache:6380/jobs?group=embedders"
        );
        let Ok(QueueUrl::Redis(t)) = "redis://127.0.0.1:6379/jobs".parse::<QueueUrl>() else {
            panic!("not a Redis URL")
        };
        assert_eq!(t.results, None);
        let Ok(QueueUrl::Redis(t)) = "redis://h:1/jobs?results=done".parse::<QueueUrl>() else {
            panic!("not a Redis URL")
        };
        assert_eq!(t.results.as_deref(), Some("done"));
        assert_eq!(t.display, "redis://h:1/jobs?group=zerobatch&results=done");
        assert_eq!(t.group, DEFAULT_GROUP);
        for bad in [
            "redis://127.0.0.1:6379",
            "redis://127.0.0.1:6379/",
            "redis://127.0.0.1:6379/a/b",
            "redis:///jobs",
            "redis://h:1/jobs?grp=x",
            "redis://h:1/jobs?results=jobs",
            "redis://h:1/jobs?results=",
            "rediss://h:1/jobs",
            "azure-queue://account",
            "azure-queue://Account/queue",
            "azure-queue://ab/queue",
            "azure-queue://account/Queue",
            "azure-queue://account/q",
            "azure-queue://account/a--b",
            "azure-queue://account/queue-",
            &format!("azure-queue://account/{}", "q".repeat(59)),
            "azure-queue://account/queue?endpoint=ftp://x",
            "azure-queue://account/queue?endpoint=http://127.0.0.1:10001/account",
            "azure-queue://account/queue?results=queue",
            "azure-queue://account/queue?visibility=3",
            "http://h/jobs",
            "jobs",
        ] {
            let e = bad.parse::<QueueUrl>().unwrap_err().to_string();
            assert!(e.starts_with("--queue"), "{bad}: {e}");
        }
    }

    #[test]
    fn azure_urls_name_an_account_and_a_queue_with_the_public_endpoints_by_default() {
        let Ok(QueueUrl::Azure(t)) = "azure-queue://acct01/embed-jobs".parse::<QueueUrl>() else {
            panic!("not an Azure URL")
        };
        assert_eq!(
            (t.account.as_str(), t.queue.as_str()),
            ("acct01", "embed-jobs")
        );
        assert_eq!(t.queue_endpoint, "https://acct01.queue.core.windows.net");
        assert_eq!(t.blob_endpoint, "https://acct01.blob.core.windows.net");
        assert_eq!(
            (t.dead_queue().as_str(), t.results.as_deref()),
            ("embed-jobs-dead", None)
        );
        let url =
            "azure-queue://devstoreaccount1/jobs?endpoint=http://127.0.0.1:10001/devstoreaccount1/\
                   &blob_endpoint=http://127.0.0.1:10000/devstoreaccount1&results=done";
        let Ok(QueueUrl::Azure(t)) = url.parse::<QueueUrl>() else {
            panic!("not an Azure URL")
        };
        assert_eq!(t.queue_endpoint, "http://127.0.0.1:10001/devstoreaccount1");
        assert_eq!(t.blob_endpoint, "http://127.0.0.1:10000/devstoreaccount1");
        assert_eq!(t.results.as_deref(), Some("done"));
        assert_eq!(t.display, url);
        // A sovereign cloud's queue endpoint gives its blob endpoint.
        let Ok(QueueUrl::Azure(t)) =
            "azure-queue://acct/jobs?endpoint=https://acct.queue.core.chinacloudapi.cn"
                .parse::<QueueUrl>()
        else {
            panic!("not an Azure URL")
        };
        assert_eq!(t.blob_endpoint, "https://acct.blob.core.chinacloudapi.cn");
    }

    #[test]
    fn job_ids_are_safe_in_keys_and_paths() {
        assert!(valid_job_id("doc-1_a.b:c"));
        assert!(valid_job_id("1700000000000-0"));
        assert!(!valid_job_id(""));
        assert!(!valid_job_id("a/b"));
        assert!(!valid_job_id("a b"));
        assert!(!valid_job_id(&"x".repeat(129)));
    }
}
