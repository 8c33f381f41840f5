//! What the ingress and `/v1/jobs` exchange with a broker, whichever it is: the job envelope,
//! a delivery and its lease, a job's record, the broker's health, and its errors.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::SystemTime;

use serde::Deserialize;

use crate::redact::clean;

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
    /// The request body that route takes, as the job's own JSON text: the route parses it
    /// once, as it parses an HTTP body.
    pub body: Box<serde_json::value::RawValue>,
}

/// The longest start of `text` of at most `max` bytes that ends on a character boundary.
pub fn prefix_within(text: &str, max: usize) -> &str {
    if text.len() <= max {
        return text;
    }
    let mut cut = max;
    while !text.is_char_boundary(cut) {
        cut -= 1;
    }
    &text[..cut]
}

/// Whether `id` can name a job (it becomes part of a Redis key and of a URL path).
pub fn valid_job_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 128
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b':'))
}

/// Why the broker could not be used. Displayed with every secret hidden
/// ([`crate::redact::clean`]): the messages come from the clients' libraries, which quote
/// URLs with passwords and SAS signatures.
#[derive(Debug, Clone, thiserror::Error)]
pub enum BrokerError {
    /// `--queue` cannot be used (said before anything starts).
    #[error("--queue {}", clean(.0))]
    BadUrl(String),
    /// The broker cannot be reached (refused, reset, timed out): retried with backoff.
    #[error("the queue broker is unreachable: {}", clean(.0))]
    Unreachable(String),
    /// The broker answered with an error (a bug, or a key of the wrong type).
    #[error("the queue broker refused a command: {}", clean(.0))]
    Refused(String),
    /// The job cannot be carried by this broker (an Azure message holds 64 KiB).
    #[error("{}", clean(.0))]
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
    /// This delivery's handles without its job text (what renewing its visibility needs).
    pub fn without_job(&self) -> Self {
        Self {
            entry: self.entry.clone(),
            job: None,
            deliveries: self.deliveries,
            added: self.added,
            lease: self.lease.clone(),
        }
    }

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
    /// A record from the fields of a Redis job hash (None without a state).
    pub(crate) fn from_fields(mut fields: HashMap<String, String>) -> Option<Self> {
        Some(Self {
            state: fields.remove("state")?,
            route: fields.remove("route"),
            status: fields.get("status").and_then(|s| s.parse().ok()),
            result: fields.remove("result"),
        })
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
    fn prefixes_end_on_character_boundaries() {
        assert_eq!(prefix_within("héllo", 2), "h");
        assert_eq!(prefix_within("héllo", 3), "hé");
        assert_eq!(prefix_within("héllo", 99), "héllo");
        assert_eq!(prefix_within("", 0), "");
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
