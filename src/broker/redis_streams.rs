//! Redis Streams as the job broker: every command zerobatch sends to Redis, in one place.
//!
//! Keys, for a stream `S` (`--queue redis://host:port/S`):
//! - `S`: the jobs, one entry each with one field `job` (the JSON envelope);
//! - `S:job:ID`: a hash per job id with its state, and its result once finished, expiring
//!   `--queue-result-ttl-ms` after its last write;
//! - `S:dead`: the dead-letter stream (`job`, `error`, `entry`, `deliveries`);
//! - `R`, with `results=R`: a notification per ended job (`id`, `route`, `state`, `status`,
//!   `result`), written in the same script as the result, so exactly once per job id.
//!
//! State changes that must not interleave (start, finish + acknowledge, cancel, dead-letter)
//! are Lua scripts, which Redis runs atomically: a result is written at most once per job id
//! (a redelivered job that already has a result is acknowledged without a second write), and
//! a job is acknowledged in the same step that writes its result. The keys a script touches
//! are derived from the stream's name, so a Redis Cluster would need the stream name to carry
//! a hash tag (`{jobs}`); a single Redis server, as ACA and KEDA examples use, needs nothing.
//!
//! Two connections: one that blocks in `XREADGROUP ... BLOCK` (owned by the ingress loop), and
//! one multiplexed connection for everything else (acknowledgements, results, the HTTP job
//! routes), re-opened on the next command after it breaks.

use std::collections::HashMap;
use std::time::Duration;

use redis::aio::MultiplexedConnection;
use redis::streams::{StreamAutoClaimReply, StreamId, StreamInfoGroupsReply, StreamReadReply};
use redis::{AsyncConnectionConfig, Script, Value};

use super::job::{prefix_within, Backlog, BrokerError, Cancel, Delivery, Health, Start};
use crate::config::RedisTarget;

/// The results stream (`results=STREAM`) and the dead-letter stream are trimmed to about
/// this many entries (`XADD … MAXLEN ~`), and of entries older than `--queue-result-ttl-ms`
/// (`XTRIM … MINID`, exact), so that streams nobody reads cannot exhaust Redis's memory.
pub const STREAM_MAXLEN: u64 = 10_000;
/// A result larger than this is not copied into the results stream (its entry says where it
/// is: `result_key`, the job's hash), so the stream holds at most `STREAM_MAXLEN` × this.
pub const STREAM_RESULT_MAX: usize = 64 * 1024;
/// A job text larger than this is cut in its dead letter (with `job_truncated`), so the
/// dead-letter stream holds at most `STREAM_MAXLEN` × this and an error body.
pub const DEAD_JOB_MAX: usize = 32 * 1024;
/// Longest wait for a connection to open.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// Longest wait for the answer to a command that does not block.
const RESPONSE_TIMEOUT: Duration = Duration::from_secs(5);

/// Lua helpers shared by the scripts: whether state `s` has ended (`succeeded`, `failed` or
/// `cancelled`); and appending to a bounded stream: at most about `maxlen` entries, none older
/// than `ttl` ms by Redis's clock.
const ENDED_LUA: &str =
    "local function ended(s) return s == 'succeeded' or s == 'failed' or s == 'cancelled' end
local function bounded_xadd(key, maxlen, ttl, fields)
  redis.call('XADD', key, 'MAXLEN', '~', maxlen, '*', unpack(fields))
  local t = redis.call('TIME')
  local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
  redis.call('XTRIM', key, 'MINID', now - tonumber(ttl))
end
";

/// A Redis stream with a consumer group, and this replica's name in it.
pub struct RedisStreams {
    target: RedisTarget,
    /// The client for the server (no connection is made until it is used).
    client: redis::Client,
    consumer: String,
    result_ttl_ms: u64,
    shared: tokio::sync::Mutex<Option<MultiplexedConnection>>,
    /// Why the broker is not usable now (None: it answered the last command).
    health: Health,
    create: Script,
    start: Script,
    finish: Script,
    dead: Script,
    cancel: Script,
    /// The ingress's reading state (one reader at a time).
    puller: tokio::sync::Mutex<Puller>,
}

/// What reading remembers between calls: the blocking connection, whether the group is known
/// to exist, and where the scan for idle entries goes on.
struct Puller {
    reader: Option<MultiplexedConnection>,
    group_ready: bool,
    last_claim: Option<std::time::Instant>,
    /// The last claim found idle entries: more may be waiting, so the next pull claims again
    /// rather than waiting for the next quarter of the visibility timeout.
    claim_again: bool,
    claim_cursor: String,
}

impl RedisStreams {
    /// A client for `target` under the consumer name `consumer`; connects on first use. Over
    /// TLS (`rediss://`) it trusts the system's roots, or the CA certificates in the PEM file
    /// `tls_ca_file` (a Redis whose certificate a private CA signed).
    pub fn new(
        target: RedisTarget,
        tls_ca_file: Option<&std::path::Path>,
        consumer: String,
        result_ttl: Duration,
    ) -> Result<Self, BrokerError> {
        let bad = |why: String| BrokerError::BadUrl(format!("{}: {why}", target.display));
        if target.tls() {
            // The TLS client asks rustls for the process's default crypto provider; with two
            // compiled in (ring for the hub downloads, aws-lc-rs for the Azure SDK) there is
            // none until one is chosen. An error means one was chosen already: fine.
            let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
        }
        let client = match tls_ca_file {
            None => redis::Client::open(target.server.as_str()).map_err(|e| bad(e.to_string()))?,
            Some(_) if !target.tls() => {
                return Err(bad(
                    "--queue-tls-ca-file is for TLS connections: the URL must be rediss://".into(),
                ))
            }
            Some(path) => {
                let pem = std::fs::read(path)
                    .map_err(|e| bad(format!("--queue-tls-ca-file {}: {e}", path.display())))?;
                let certificates = redis::TlsCertificates {
                    client_tls: None,
                    root_cert: Some(pem),
                };
                redis::Client::build_with_tls(target.server.as_str(), certificates)
                    .map_err(|e| bad(format!("--queue-tls-ca-file {}: {e}", path.display())))?
            }
        };
        let lua = |body: &str| Script::new(&format!("{ENDED_LUA}{body}"));
        Ok(Self {
            target,
            client,
            consumer,
            result_ttl_ms: result_ttl.as_millis().max(1) as u64,
            shared: tokio::sync::Mutex::new(None),
            health: Health::default(),
            puller: tokio::sync::Mutex::new(Puller {
                reader: None,
                group_ready: false,
                last_claim: None,
                claim_again: false,
                claim_cursor: "0-0".into(),
            }),
            // KEYS: stream, job hash. ARGV: job JSON, route, ttl ms. Returns the entry id.
            create: lua(
                "local entry = redis.call('XADD', KEYS[1], '*', 'job', ARGV[1])
                 redis.call('HSET', KEYS[2], 'state', 'queued', 'route', ARGV[2], 'entry', entry)
                 redis.call('PEXPIRE', KEYS[2], ARGV[3])
                 return entry",
            ),
            // KEYS: job hash. ARGV: route, entry id, ttl ms. Returns 'running' or the ended state.
            start: lua(
                "local s = redis.call('HGET', KEYS[1], 'state')
                 if ended(s) then return s end
                 redis.call('HSET', KEYS[1], 'state', 'running', 'route', ARGV[1], 'entry', ARGV[2])
                 redis.call('PEXPIRE', KEYS[1], ARGV[3])
                 return 'running'",
            ),
            // KEYS: job hash, stream, results stream (or ''). ARGV: group, entry id, state,
            // status, result, ttl ms, job id, stream cap, '1' when the result goes into the
            // results stream. Returns 1 when it wrote the result, 0 when the job already had one.
            finish: lua(
                "local wrote = 0
                 if ARGV[3] ~= '' and not ended(redis.call('HGET', KEYS[1], 'state')) then
                   redis.call('HSET', KEYS[1], 'state', ARGV[3], 'status', ARGV[4], 'result', ARGV[5])
                   redis.call('PEXPIRE', KEYS[1], ARGV[6])
                   wrote = 1
                   if KEYS[3] ~= '' then
                     local fields = {'id', ARGV[7], 'route', redis.call('HGET', KEYS[1], 'route') or '',
                       'state', ARGV[3], 'status', ARGV[4]}
                     if ARGV[9] == '1' then
                       table.insert(fields, 'result'); table.insert(fields, ARGV[5])
                     else
                       table.insert(fields, 'result_key'); table.insert(fields, KEYS[1])
                     end
                     bounded_xadd(KEYS[3], ARGV[8], ARGV[6], fields)
                   end
                 end
                 redis.call('XACK', KEYS[2], ARGV[1], ARGV[2])
                 redis.call('XDEL', KEYS[2], ARGV[2])
                 return wrote",
            ),
            // KEYS: job hash (or '' when the id is unknown), stream, dead-letter stream, results
            // stream (or ''). ARGV: group, entry id, job text (cut), error JSON, deliveries,
            // status, ttl ms, job id, stream cap, '1' when the job text was cut.
            dead: lua(
                "local letter = {'job', ARGV[3], 'error', ARGV[4], 'entry', ARGV[2], 'deliveries', ARGV[5]}
                 if ARGV[10] == '1' then
                   table.insert(letter, 'job_truncated'); table.insert(letter, '1')
                 end
                 bounded_xadd(KEYS[3], ARGV[9], ARGV[7], letter)
                 if KEYS[1] ~= '' and not ended(redis.call('HGET', KEYS[1], 'state')) then
                   redis.call('HSET', KEYS[1], 'state', 'failed', 'status', ARGV[6], 'result', ARGV[4])
                   redis.call('PEXPIRE', KEYS[1], ARGV[7])
                   if KEYS[4] ~= '' then
                     bounded_xadd(KEYS[4], ARGV[9], ARGV[7], {'id', ARGV[8],
                       'route', redis.call('HGET', KEYS[1], 'route') or '', 'state', 'failed',
                       'status', ARGV[6], 'result', ARGV[4]})
                   end
                 end
                 redis.call('XACK', KEYS[2], ARGV[1], ARGV[2])
                 redis.call('XDEL', KEYS[2], ARGV[2])
                 return 1",
            ),
            // KEYS: job hash. ARGV: ttl ms. Returns 'now cancelled', the state, or 'unknown'.
            cancel: lua(
                "local s = redis.call('HGET', KEYS[1], 'state')
                 if not s then return 'unknown' end
                 if s ~= 'queued' then return s end
                 redis.call('HSET', KEYS[1], 'state', 'cancelled')
                 redis.call('PEXPIRE', KEYS[1], ARGV[1])
                 return 'now cancelled'",
            ),
        })
    }

    /// The broker's URL without its password.
    pub fn display(&self) -> &str {
        &self.target.display
    }

    /// This replica's consumer name in the group.
    pub fn consumer(&self) -> &str {
        &self.consumer
    }

    /// Whether Redis answers.
    pub fn health(&self) -> &Health {
        &self.health
    }

    fn note<T>(&self, r: Result<T, redis::RedisError>) -> Result<T, BrokerError> {
        self.health.note(r.map_err(BrokerError::from))
    }

    async fn conn(&self) -> Result<MultiplexedConnection, BrokerError> {
        let mut shared = self.shared.lock().await;
        if let Some(c) = shared.as_ref() {
            return Ok(c.clone());
        }
        let config = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(CONNECT_TIMEOUT))
            .set_response_timeout(Some(RESPONSE_TIMEOUT));
        let c = self.note(
            self.client
                .get_multiplexed_async_connection_with_config(&config)
                .await,
        )?;
        *shared = Some(c.clone());
        Ok(c)
    }

    /// Runs `cmd` on the shared connection; a connection that broke is dropped so the next
    /// command opens a new one.
    async fn query<T: redis::FromRedisValue>(&self, cmd: &redis::Cmd) -> Result<T, BrokerError> {
        let mut c = self.conn().await?;
        let r = self.note(cmd.query_async(&mut c).await);
        if matches!(r, Err(BrokerError::Unreachable(_))) {
            self.shared.lock().await.take();
        }
        r
    }

    async fn invoke<T: redis::FromRedisValue>(
        &self,
        call: &mut redis::ScriptInvocation<'_>,
    ) -> Result<T, BrokerError> {
        let mut c = self.conn().await?;
        let r = self.note(call.invoke_async(&mut c).await);
        if matches!(r, Err(BrokerError::Unreachable(_))) {
            self.shared.lock().await.take();
        }
        r
    }

    fn job_key(&self, id: &str) -> String {
        format!("{}:job:{id}", self.target.stream)
    }

    /// The dead-letter stream's key.
    pub fn dead_key(&self) -> String {
        format!("{}:dead", self.target.stream)
    }

    /// A connection for [`RedisStreams::read`], whose answers may take the whole block time.
    async fn reader(&self) -> Result<MultiplexedConnection, BrokerError> {
        let config = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(CONNECT_TIMEOUT))
            .set_response_timeout(None);
        self.note(
            self.client
                .get_multiplexed_async_connection_with_config(&config)
                .await,
        )
    }

    /// Takes up to `count` entries: first entries other replicas left idle longer than
    /// `visibility` (they run at once, before any blocking read would leave them idle again),
    /// looked for every quarter of `visibility`, and at every call after a look that found
    /// some, so that a replica that died holding many jobs leaves them to a survivor that takes
    /// them back as fast as it has room; otherwise new entries, waiting up to `wait` in
    /// `XREADGROUP ... BLOCK`. After an error the next call starts afresh.
    pub async fn pull(
        &self,
        count: usize,
        wait: Duration,
        visibility: Duration,
    ) -> Result<Vec<Delivery>, BrokerError> {
        let mut p = self.puller.lock().await;
        let r = self.pull_with(&mut p, count, wait, visibility).await;
        if r.is_err() {
            p.reader = None;
            p.group_ready = false;
        }
        r
    }

    async fn pull_with(
        &self,
        p: &mut Puller,
        count: usize,
        wait: Duration,
        visibility: Duration,
    ) -> Result<Vec<Delivery>, BrokerError> {
        if !p.group_ready {
            self.ensure_group().await?;
            p.group_ready = true;
        }
        let claim_every = (visibility / 4).max(Duration::from_millis(250));
        if p.claim_again || p.last_claim.is_none_or(|t| t.elapsed() >= claim_every) {
            p.last_claim = Some(std::time::Instant::now());
            let claimed = self
                .claim_idle(visibility, count, &mut p.claim_cursor)
                .await?;
            p.claim_again = !claimed.is_empty();
            if !claimed.is_empty() {
                return Ok(claimed);
            }
        }
        if p.reader.is_none() {
            p.reader = Some(self.reader().await?);
        }
        let reader = p.reader.as_mut().expect("just opened");
        self.read(reader, count, wait).await
    }

    /// Creates the stream and the consumer group if they do not exist. The group starts at
    /// the stream's beginning, so jobs written before any replica ran are not skipped.
    async fn ensure_group(&self) -> Result<(), BrokerError> {
        let mut cmd = redis::cmd("XGROUP");
        cmd.arg("CREATE")
            .arg(&self.target.stream)
            .arg(&self.target.group)
            .arg("0")
            .arg("MKSTREAM");
        match self.query::<Value>(&cmd).await {
            Err(BrokerError::Refused(e)) if e.contains("BUSYGROUP") => Ok(()),
            r => r.map(|_| ()),
        }
    }

    /// Takes up to `count` new entries for this consumer, waiting up to `block` for the first.
    async fn read(
        &self,
        reader: &mut MultiplexedConnection,
        count: usize,
        block: Duration,
    ) -> Result<Vec<Delivery>, BrokerError> {
        let mut cmd = redis::cmd("XREADGROUP");
        cmd.arg("GROUP")
            .arg(&self.target.group)
            .arg(&self.consumer)
            .arg("COUNT")
            .arg(count)
            .arg("BLOCK")
            .arg(block.as_millis() as u64)
            .arg("STREAMS")
            .arg(&self.target.stream)
            .arg(">");
        let reply: Option<StreamReadReply> = self.note(cmd.query_async(reader).await)?;
        Ok(reply
            .into_iter()
            .flat_map(|r| r.keys)
            .flat_map(|k| k.ids)
            .map(|id| delivery(id, 1))
            .collect())
    }

    /// Claims up to `count` entries that other consumers (or a previous life of this one)
    /// took and left idle for `min_idle`, with how many times each has been delivered. The
    /// scan of the pending entries starts at `cursor` and goes on from where it stopped (the
    /// cursor is updated; `0-0` again after the end), so idle entries behind many busy ones
    /// are reached too.
    async fn claim_idle(
        &self,
        min_idle: Duration,
        count: usize,
        cursor: &mut String,
    ) -> Result<Vec<Delivery>, BrokerError> {
        let mut cmd = redis::cmd("XAUTOCLAIM");
        cmd.arg(&self.target.stream)
            .arg(&self.target.group)
            .arg(&self.consumer)
            .arg(min_idle.as_millis() as u64)
            .arg(cursor.as_str())
            .arg("COUNT")
            .arg(count);
        let reply: StreamAutoClaimReply = self.query(&cmd).await?;
        *cursor = reply.next_stream_id;
        let mut out = Vec::with_capacity(reply.claimed.len());
        for id in reply.claimed {
            let mut pending = redis::cmd("XPENDING");
            pending
                .arg(&self.target.stream)
                .arg(&self.target.group)
                .arg(&id.id)
                .arg(&id.id)
                .arg(1);
            let rows: Vec<(String, String, u64, u64)> = self.query(&pending).await?;
            let times = rows.first().map_or(1, |r| r.3);
            out.push(delivery(id, times));
        }
        Ok(out)
    }

    /// Resets the idle time of entries this replica is running, so no other replica reclaims
    /// them (does not count as a delivery).
    pub async fn extend(&self, entries: &[String]) -> Result<(), BrokerError> {
        let mut cmd = redis::cmd("XCLAIM");
        cmd.arg(&self.target.stream)
            .arg(&self.target.group)
            .arg(&self.consumer)
            .arg(0)
            .arg(entries)
            .arg("JUSTID");
        self.query::<Value>(&cmd).await.map(|_| ())
    }

    /// Marks job `id` (entry `entry`) running, unless it has already ended.
    pub async fn start(&self, id: &str, route: &str, entry: &str) -> Result<Start, BrokerError> {
        let state: String = self
            .invoke(
                self.start
                    .key(self.job_key(id))
                    .arg(route)
                    .arg(entry)
                    .arg(self.result_ttl_ms),
            )
            .await?;
        Ok(if state == "running" {
            Start::Run
        } else {
            Start::Ended(state)
        })
    }

    /// Writes the result of job `id` (unless it already has one) and acknowledges and deletes
    /// its entry, in one step. Returns whether the result was written.
    pub async fn finish(
        &self,
        id: &str,
        entry: &str,
        state: &str,
        status: u16,
        result: &[u8],
    ) -> Result<bool, BrokerError> {
        let wrote: i64 = self
            .invoke(
                self.finish
                    .key(self.job_key(id))
                    .key(&self.target.stream)
                    .key(self.target.results.as_deref().unwrap_or(""))
                    .arg(&self.target.group)
                    .arg(entry)
                    .arg(state)
                    .arg(status)
                    .arg(result)
                    .arg(self.result_ttl_ms)
                    .arg(id)
                    .arg(STREAM_MAXLEN)
                    .arg(if result.len() <= STREAM_RESULT_MAX {
                        "1"
                    } else {
                        "0"
                    }),
            )
            .await?;
        Ok(wrote == 1)
    }

    /// Moves an entry to the dead-letter stream with `error` (an error body), marks its job
    /// failed with `status` when its id is known, and acknowledges and deletes the entry.
    pub async fn dead_letter(
        &self,
        id: Option<&str>,
        delivery: &Delivery,
        error: &[u8],
        status: u16,
    ) -> Result<(), BrokerError> {
        let key = id.map_or_else(String::new, |id| self.job_key(id));
        let job = delivery.job.as_deref().unwrap_or("");
        let kept = prefix_within(job, DEAD_JOB_MAX);
        let cut = kept.len() < job.len();
        self.invoke::<i64>(
            self.dead
                .key(key)
                .key(&self.target.stream)
                .key(self.dead_key())
                .key(self.target.results.as_deref().unwrap_or(""))
                .arg(&self.target.group)
                .arg(&delivery.entry)
                .arg(kept)
                .arg(error)
                .arg(delivery.deliveries)
                .arg(status)
                .arg(self.result_ttl_ms)
                .arg(id.unwrap_or(""))
                .arg(STREAM_MAXLEN)
                .arg(if cut { "1" } else { "0" }),
        )
        .await
        .map(|_| ())
    }

    /// Adds a job (`POST /v1/jobs`) with its hash in state `queued`; returns its id: random
    /// (a UUID), so that nobody can find another client's job by guessing, as stream entry
    /// ids (the time and a counter) could be guessed.
    pub async fn create(
        &self,
        route: &str,
        body: &serde_json::Value,
    ) -> Result<String, BrokerError> {
        let id = uuid::Uuid::new_v4().simple().to_string();
        let job = serde_json::json!({ "id": id, "route": route, "body": body }).to_string();
        self.invoke::<String>(
            self.create
                .key(&self.target.stream)
                .key(self.job_key(&id))
                .arg(job)
                .arg(route)
                .arg(self.result_ttl_ms),
        )
        .await?;
        Ok(id)
    }

    /// The fields of job `id`'s hash, or None when there is no such job.
    pub async fn job(&self, id: &str) -> Result<Option<HashMap<String, String>>, BrokerError> {
        let mut cmd = redis::cmd("HGETALL");
        cmd.arg(self.job_key(id));
        let fields: HashMap<String, String> = self.query(&cmd).await?;
        Ok((!fields.is_empty()).then_some(fields))
    }

    /// Cancels job `id` if it has not started.
    pub async fn cancel(&self, id: &str) -> Result<Cancel, BrokerError> {
        let state: String = self
            .invoke(self.cancel.key(self.job_key(id)).arg(self.result_ttl_ms))
            .await?;
        Ok(match state.as_str() {
            "now cancelled" => Cancel::Cancelled,
            "unknown" => Cancel::Unknown,
            _ => Cancel::Not(state),
        })
    }

    /// The group's backlog as Redis reports it.
    pub async fn backlog(&self) -> Result<Backlog, BrokerError> {
        let mut cmd = redis::cmd("XINFO");
        cmd.arg("GROUPS").arg(&self.target.stream);
        let reply: StreamInfoGroupsReply = self.query(&cmd).await?;
        let group = reply
            .groups
            .into_iter()
            .find(|g| g.name == self.target.group);
        Ok(Backlog {
            lag: group.as_ref().and_then(|g| g.lag).map(|l| l as u64),
            pending: group.map_or(0, |g| g.pending as u64),
        })
    }
}

/// Whether `id` has the form of a stream entry id (`<ms>-<seq>`).
pub fn is_entry_id(id: &str) -> bool {
    id.split_once('-').is_some_and(|(ms, seq)| {
        !ms.is_empty()
            && !seq.is_empty()
            && ms.bytes().all(|b| b.is_ascii_digit())
            && seq.bytes().all(|b| b.is_ascii_digit())
    })
}

fn delivery(id: StreamId, deliveries: u64) -> Delivery {
    let job = id.map.get("job").and_then(|v| match v {
        Value::BulkString(b) => String::from_utf8(b.clone()).ok(),
        Value::SimpleString(s) => Some(s.clone()),
        _ => None,
    });
    // An entry's id starts with the milliseconds of Redis's clock when it was added.
    let added = id
        .id
        .split_once('-')
        .and_then(|(ms, _)| ms.parse::<u64>().ok())
        .map(|ms| std::time::UNIX_EPOCH + Duration::from_millis(ms));
    Delivery::new(id.id, job, deliveries, added)
}
