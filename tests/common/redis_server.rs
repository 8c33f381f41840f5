//! A real `redis-server` for the queue tests, and the Redis commands they check the stream with.

use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use super::*;

/// A `redis-server` on a loopback port, without persistence; killed when dropped.
pub struct Redis {
    child: Child,
    pub port: u16,
}

impl Redis {
    /// Starts one on a free port, or None when the tests are to be skipped (see the module doc).
    pub fn start() -> Option<Redis> {
        let have = Command::new("redis-server")
            .arg("--version")
            .stdout(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if !have {
            if std::env::var("ZEROBATCH_SKIP_REDIS").as_deref() == Ok("1") {
                eprintln!("SKIPPED: redis-server is not installed (ZEROBATCH_SKIP_REDIS=1)");
                return None;
            }
            panic!(
                "redis-server is not installed: apt-get install redis-server (Redis >= 7), \
                 or set ZEROBATCH_SKIP_REDIS=1 to skip the queue tests knowingly"
            );
        }
        Some(Self::start_on(free_port()))
    }

    pub fn start_on(port: u16) -> Redis {
        Self::start_with(port, &["--appendonly", "no"])
    }

    /// One on `port` with extra options (persistence: `--appendonly yes --dir DIR`).
    pub fn start_with(port: u16, options: &[&str]) -> Redis {
        let child = Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", ""])
            .args(options)
            .stdout(Stdio::null())
            .spawn()
            .expect("starting redis-server");
        let redis = Redis { child, port };
        let t = Instant::now();
        loop {
            if TcpStream::connect(("127.0.0.1", port)).is_ok() {
                let pong: Result<String, _> = redis::cmd("PING").query(&mut redis.conn());
                if pong.is_ok() {
                    return redis;
                }
            }
            assert!(
                t.elapsed() < Duration::from_secs(10),
                "redis-server did not start"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    pub fn url(&self, stream: &str) -> String {
        format!("redis://127.0.0.1:{}/{stream}", self.port)
    }

    pub fn conn(&self) -> redis::Connection {
        redis::Client::open(format!("redis://127.0.0.1:{}/", self.port))
            .unwrap()
            .get_connection()
            .expect("connecting to redis")
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A replica as its own process (so its metrics are its own), ready to serve.
pub fn replica(url: &str, extra: &[&str]) -> Proc {
    let p = Proc::spawn(tiny_model(), &[&["--queue", url][..], extra].concat());
    connect_until_up(p.addr);
    wait_ready(p.addr);
    p
}

pub fn xadd(con: &mut redis::Connection, stream: &str, job: &Value) -> String {
    redis::cmd("XADD")
        .arg(stream)
        .arg("*")
        .arg("job")
        .arg(job.to_string())
        .query(con)
        .unwrap()
}

/// Adds one `/embed` job per id, in one round trip.
pub fn xadd_embed_jobs(con: &mut redis::Connection, stream: &str, ids: &[String]) {
    let mut pipe = redis::pipe();
    for id in ids {
        let text = format!("job {id}: a sentence of a few words to embed");
        let job = json!({ "id": id, "route": "/embed", "body": { "inputs": text } });
        pipe.cmd("XADD")
            .arg(stream)
            .arg("*")
            .arg("job")
            .arg(job.to_string())
            .ignore();
    }
    pipe.exec(con).unwrap();
}

/// The state of each job, in one round trip.
pub fn states(con: &mut redis::Connection, stream: &str, ids: &[String]) -> Vec<Option<String>> {
    let mut pipe = redis::pipe();
    for id in ids {
        pipe.cmd("HGET")
            .arg(format!("{stream}:job:{id}"))
            .arg("state");
    }
    pipe.query(con).unwrap()
}

/// Waits until fewer than `below` entries are left in the stream.
pub fn wait_stream_below(con: &mut redis::Connection, stream: &str, below: u64) {
    let t = Instant::now();
    while xlen(con, stream) >= below {
        assert!(t.elapsed() < Duration::from_secs(30), "no job was taken");
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// The entries of the dead-letter stream of `stream`.
pub fn dead_letters(con: &mut redis::Connection, stream: &str) -> Vec<redis::streams::StreamId> {
    let reply: redis::streams::StreamRangeReply = redis::cmd("XRANGE")
        .arg(format!("{stream}:dead"))
        .arg("-")
        .arg("+")
        .query(con)
        .unwrap();
    reply.ids
}

pub fn hget(con: &mut redis::Connection, key: &str, field: &str) -> Option<String> {
    redis::cmd("HGET").arg(key).arg(field).query(con).unwrap()
}

pub fn xlen(con: &mut redis::Connection, stream: &str) -> u64 {
    redis::cmd("XLEN").arg(stream).query(con).unwrap()
}

/// Entries delivered to the group and not acknowledged.
pub fn pending(con: &mut redis::Connection, stream: &str) -> u64 {
    let summary: redis::Value = redis::cmd("XPENDING")
        .arg(stream)
        .arg("zerobatch")
        .query(con)
        .unwrap();
    match summary {
        redis::Value::Array(items) => match items.first() {
            Some(redis::Value::Int(n)) => *n as u64,
            other => panic!("XPENDING summary: {other:?}"),
        },
        other => panic!("XPENDING summary: {other:?}"),
    }
}

/// Waits until every job id has ended (`succeeded` or `failed`); returns the states.
pub fn wait_ended(con: &mut redis::Connection, stream: &str, ids: &[String], limit: Duration) {
    let t = Instant::now();
    loop {
        let open: Vec<&String> = ids
            .iter()
            .filter(|id| {
                let state = hget(con, &format!("{stream}:job:{id}"), "state");
                !matches!(state.as_deref(), Some("succeeded" | "failed"))
            })
            .collect();
        if open.is_empty() {
            return;
        }
        assert!(
            t.elapsed() < limit,
            "{} jobs not ended after {limit:?}, e.g. {}",
            open.len(),
            open[0]
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

pub fn result_of(con: &mut redis::Connection, stream: &str, id: &str) -> (u16, Value) {
    let key = format!("{stream}:job:{id}");
    let status = hget(con, &key, "status").expect("status").parse().unwrap();
    let body = serde_json::from_str(&hget(con, &key, "result").expect("result")).unwrap();
    (status, body)
}
