//! Queue ingress: jobs pulled from a real broker (Redis Streams) run through the same
//! validation, the same bounded queue and the same micro-batches as HTTP requests.
//!
//! ```text
//! producer ─XADD─▶ Redis stream ─XREADGROUP (only as many as free job slots)─▶ ingress
//!   ingress: envelope {id, route, body} ─▶ http::api::parse_request ─▶ routes::run_parsed
//!            (the HTTP handlers: tokenize, queue::submit, micro-batcher, workers)
//!   answer ─▶ one Lua script: HSET result (idempotent per job id) + PEXPIRE + XACK + XDEL
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
//!   `--queue-max-deliveries` times, goes to the dead-letter stream with the reason.

pub mod ingress;
pub mod redis_streams;

use serde::Deserialize;

/// Where jobs come from: the value of `--queue`, checked when the options are parsed.
#[derive(Debug, Clone)]
pub enum QueueUrl {
    /// `redis://[user:pass@]host:port/STREAM?group=GROUP`: a Redis stream read by a consumer group.
    Redis(RedisTarget),
}

impl QueueUrl {
    /// The URL with any password replaced by `***`, for logs, `/info` and `/readyz`.
    pub fn display(&self) -> &str {
        match self {
            QueueUrl::Redis(t) => &t.display,
        }
    }
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
            return Err(bad("expected redis://host:port/STREAM?group=GROUP"));
        };
        match scheme {
            "redis" => {}
            "rediss" => {
                return Err(bad(
                    "TLS connections (rediss://) are not supported by this build; use redis://",
                ))
            }
            "azure-queue" => return Err(bad(
                "Azure Storage Queues are not implemented yet; only Redis Streams (redis://) are",
            )),
            _ => return Err(bad("the scheme must be redis://")),
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
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            match pair.split_once('=') {
                Some(("group", g)) if !g.is_empty() => group = g.to_string(),
                _ => {
                    return Err(bad(&format!(
                        "unknown query parameter {pair:?}; only group=NAME"
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
        Ok(QueueUrl::Redis(RedisTarget {
            client,
            stream: stream.to_string(),
            display: format!("redis://{shown_authority}/{stream}?group={group}"),
            group,
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
        let QueueUrl::Redis(t) = "redis://user:secret@cache:6380/jobs?group=embedders"
            .parse::<QueueUrl>()
            .unwrap();
        assert_eq!((t.stream.as_str(), t.group.as_str()), ("jobs", "embedders"));
        assert_eq!(
            t.display,
            "redis://user:***@cache:6380/jobs?group=embedders"
        );
        let QueueUrl::Redis(t) = "redis://127.0.0.1:6379/jobs".parse::<QueueUrl>().unwrap();
        assert_eq!(t.group, DEFAULT_GROUP);
        for bad in [
            "redis://127.0.0.1:6379",
            "redis://127.0.0.1:6379/",
            "redis://127.0.0.1:6379/a/b",
            "redis:///jobs",
            "redis://h:1/jobs?grp=x",
            "rediss://h:1/jobs",
            "azure-queue://account/queue",
            "http://h/jobs",
            "jobs",
        ] {
            let e = bad.parse::<QueueUrl>().unwrap_err().to_string();
            assert!(e.starts_with("--queue"), "{bad}: {e}");
        }
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
