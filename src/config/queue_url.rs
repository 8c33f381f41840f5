//! The value of `--queue`: which broker, where, and how it is named in logs. Checked when the
//! options are parsed, so a wrong URL stops the start with a message that says what is wrong;
//! plain values: nothing here connects to anything. A URL may hold a password: every message
//! about it shows the URL with the password hidden, never as given.

use crate::redact::redact;

/// Why `--queue` cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("--queue {0}")]
pub struct BadQueueUrl(pub String);

/// Where jobs come from: the value of `--queue`, checked when the options are parsed.
#[derive(Debug, Clone)]
pub enum QueueUrl {
    /// `redis://[user:pass@]host:port/STREAM?group=GROUP`: a Redis stream read by a consumer group.
    Redis(Box<RedisTarget>),
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

    /// The password the URL holds, if any (to be kept out of every message).
    pub fn password(&self) -> Option<&str> {
        let QueueUrl::Redis(t) = self else {
            return None;
        };
        let authority = t.server.split_once("://")?.1.split('/').next()?;
        let userinfo = authority.rsplit_once('@')?.0;
        userinfo
            .split_once(':')
            .map(|(_, p)| p)
            .filter(|p| !p.is_empty())
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

fn parse_azure(s: &str, rest: &str) -> Result<QueueUrl, BadQueueUrl> {
    let bad = |why: &str| BadQueueUrl(format!("{:?}: {why}", redact(s, &[])));
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
        display: redact(s, &[]),
    }))
}

/// A Redis stream and the consumer group that reads it.
#[derive(Clone)]
pub struct RedisTarget {
    /// The server's address as the Redis client takes it (`redis://` or `rediss://`, with the
    /// password: never shown; see `display`).
    pub server: String,
    /// The stream's key.
    pub stream: String,
    /// The consumer group shared by every replica.
    pub group: String,
    /// The stream that gets a notification per ended job (`results=STREAM`), when set.
    pub results: Option<String>,
    /// The URL without its password.
    pub display: String,
}

impl std::fmt::Debug for RedisTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the password.
        f.debug_struct("RedisTarget")
            .field("display", &self.display)
            .finish()
    }
}

impl RedisTarget {
    /// Whether the connection is over TLS (`rediss://`).
    pub fn tls(&self) -> bool {
        self.server.starts_with("rediss://")
    }
}

/// The consumer group used when the URL names none.
pub const DEFAULT_GROUP: &str = "zerobatch";

impl std::str::FromStr for QueueUrl {
    type Err = BadQueueUrl;

    fn from_str(s: &str) -> Result<Self, BadQueueUrl> {
        let bad = |why: &str| BadQueueUrl(format!("{:?}: {why}", redact(s, &[])));
        let Some((scheme, rest)) = s.split_once("://") else {
            return Err(bad(
                "expected redis://host:port/STREAM?group=GROUP or azure-queue://ACCOUNT/QUEUE",
            ));
        };
        match scheme {
            "redis" | "rediss" => {}
            "azure-queue" => return parse_azure(s, rest),
            _ => {
                return Err(bad(
                    "the scheme must be redis://, rediss:// or azure-queue://",
                ))
            }
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
        let server = format!("{scheme}://{authority}/");
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
        Ok(QueueUrl::Redis(Box::new(RedisTarget {
            server,
            stream: stream.to_string(),
            display: format!("{scheme}://{shown_authority}/{stream}?group={group}{shown_results}"),
            group,
            results,
        })))
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
        let Ok(QueueUrl::Redis(t)) = "rediss://:pw@cache:6380/jobs".parse::<QueueUrl>() else {
            panic!("not a Redis URL")
        };
        assert_eq!(t.server, "rediss://:pw@cache:6380/");
        assert_eq!(t.display, "rediss://:***@cache:6380/jobs?group=zerobatch");
        assert_eq!(t.group, DEFAULT_GROUP);
        for bad in [
            "redis://127.0.0.1:6379",
            "redis://127.0.0.1:6379/",
            "redis://127.0.0.1:6379/a/b",
            "redis:///jobs",
            "redis://h:1/jobs?grp=x",
            "redis://h:1/jobs?results=jobs",
            "redis://h:1/jobs?results=",
            "rediss://h:1",
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
    fn a_url_that_does_not_parse_is_never_echoed_with_its_password() {
        for url in [
            "redis://user:hunter2@cache:6380",
            "redis://user:hunter2@cache:6380/a/b",
            "rediss://:hunter2@cache:6380/jobs?grp=x",
            "redis://user:hunter2@cache:6380/jobs?results=jobs",
        ] {
            let e = url.parse::<QueueUrl>().unwrap_err().to_string();
            assert!(!e.contains("hunter2"), "{e}");
            assert!(e.contains("***"), "{e}");
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
}
