//! The bounds of the Redis queue ingress and what it keeps in Redis (issue 17, defects 12-16),
//! against a real `redis-server` and the real binary:
//!
//! - a replica that died holding many jobs leaves them to a survivor that takes them all back
//!   within the visibility timeout and the time to run them, not one read per quarter of it;
//! - `/v1/jobs` ids cannot be guessed, and stream entry ids are not served over HTTP;
//! - a job that keeps timing out is dead-lettered after `--queue-max-deliveries` attempts;
//! - the dead-letter and results streams are bounded in entries, entry size and age;
//! - no password reaches a log line, an error message or the probe.
//!
//! Needs `redis-server` (Redis >= 7), as tests/queue_redis.rs.

mod common;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::redis_server::*;
use common::*;
use serde_json::json;

/// Jobs taken by a replica ("ghost") that died before answering any: pending, idle.
fn strand(con: &mut redis::Connection, count: usize) {
    let _: redis::Value = redis::cmd("XREADGROUP")
        .arg(&["GROUP", "zerobatch", "ghost", "COUNT"][..])
        .arg(count)
        .arg(&["STREAMS", "jobs", ">"][..])
        .query(con)
        .unwrap();
}

fn create_group(con: &mut redis::Connection) {
    redis::cmd("XGROUP")
        .arg(&["CREATE", "jobs", "zerobatch", "0", "MKSTREAM"][..])
        .exec(con)
        .unwrap();
}

#[test]
fn a_survivor_takes_back_every_stranded_job_within_the_visibility_timeout_and_their_run() {
    let Some(redis) = Redis::start() else { return };
    let mut con = redis.conn();
    create_group(&mut con);
    let ids: Vec<String> = (0..256).map(|i| format!("s{i}")).collect();
    xadd_embed_jobs(&mut con, "jobs", &ids);
    strand(&mut con, ids.len());
    assert_eq!(pending(&mut con, "jobs"), 256);
    let visibility = Duration::from_secs(4);
    let started = Instant::now();
    // A survivor that holds 32 jobs at a time: eight takes to get them all back.
    let _survivor = replica(
        &redis.url("jobs"),
        &[
            "--queue-visibility-timeout-ms",
            &visibility.as_millis().to_string(),
            "--queue-max-jobs",
            "32",
        ],
    );
    wait_ended(&mut con, "jobs", &ids, Duration::from_secs(60));
    let took = started.elapsed();
    eprintln!("256 stranded jobs answered {took:?} after the survivor started");
    assert!(took >= visibility, "claimed before the visibility timeout");
    // The tiny model answers 256 jobs in well under a second; one take per blocking read
    // (2 s) would need 16 s more.
    assert!(
        took < visibility + Duration::from_secs(4),
        "the last stranded job was answered {took:?} after the survivor started (visibility {visibility:?})"
    );
    assert_eq!(pending(&mut con, "jobs"), 0);
}

#[test]
fn job_ids_cannot_be_guessed_and_stream_entry_ids_are_not_served_over_http() {
    let Some(redis) = Redis::start() else { return };
    let mut con = redis.conn();
    let server = replica(&redis.url("jobs"), &[]);
    let create = || {
        let r = post_json(
            server.addr,
            "/v1/jobs",
            &json!({"route": "/embed", "body": {"inputs": "hello"}}),
        );
        assert_eq!(r.status, 202, "{}", r.text());
        r.json()["id"].as_str().unwrap().to_string()
    };
    let (a, b) = (create(), create());
    for id in [&a, &b] {
        assert!(
            id.len() == 32 && id.bytes().all(|c| c.is_ascii_hexdigit()),
            "{id}: not a random id"
        );
    }
    assert_ne!(a, b);
    wait_ended(
        &mut con,
        "jobs",
        &[a.clone(), b.clone()],
        Duration::from_secs(20),
    );
    assert_eq!(get(server.addr, &format!("/v1/jobs/{a}")).status, 200);
    // A job written straight to the stream without an id is kept under its entry id, which a
    // client could guess: it is read in Redis, not over HTTP.
    let entry = xadd(
        &mut con,
        "jobs",
        &json!({"route": "/embed", "body": {"inputs": "no id"}}),
    );
    wait_ended(
        &mut con,
        "jobs",
        std::slice::from_ref(&entry),
        Duration::from_secs(20),
    );
    assert_eq!(
        hget(&mut con, &format!("jobs:job:{entry}"), "state").as_deref(),
        Some("succeeded")
    );
    for method in ["GET", "DELETE"] {
        let r = request(server.addr, method, &format!("/v1/jobs/{entry}"), &[], None);
        assert_eq!(r.status, 404, "{method} {entry}: {}", r.text());
    }
}

#[test]
fn a_job_that_keeps_timing_out_is_dead_lettered_after_max_deliveries() {
    let Some(redis) = Redis::start() else { return };
    let mut con = redis.conn();
    // Every job times out: a worker waits 100 ms for a fuller batch, a request only 10 ms.
    let _server = replica(
        &redis.url("jobs"),
        &[
            "--request-timeout-ms",
            "10",
            "--max-batch-delay-ms",
            "100",
            "--queue-max-deliveries",
            "3",
        ],
    );
    xadd(
        &mut con,
        "jobs",
        &json!({"id": "slow", "route": "/embed", "body": {"inputs": "never in time"}}),
    );
    wait_ended(
        &mut con,
        "jobs",
        &["slow".to_string()],
        Duration::from_secs(20),
    );
    let (status, body) = result_of(&mut con, "jobs", "slow");
    assert_eq!(status, 500, "{body}");
    let error = body["error"].as_str().unwrap();
    assert!(
        error.contains("--request-timeout-ms") && error.contains("3 times"),
        "{error}"
    );
    assert_eq!(dead_letters(&mut con, "jobs").len(), 1);
    assert_eq!(pending(&mut con, "jobs"), 0);
}

#[test]
fn the_dead_letter_and_results_streams_are_bounded_in_entries_size_and_age() {
    let Some(redis) = Redis::start() else { return };
    let mut con = redis.conn();
    let _server = replica(
        &format!("{}?results=done", redis.url("jobs")),
        &["--queue-result-ttl-ms", "3000"],
    );
    // A dead letter keeps at most 32 KiB of its job's text, and says it was cut.
    let long = "x".repeat(100_000);
    xadd(
        &mut con,
        "jobs",
        &json!({"id": "bad", "route": "/nope", "body": {"inputs": long}}),
    );
    // A result of more than 64 KiB stays in its hash; the results stream says where.
    let texts: Vec<String> = (0..64)
        .map(|i| format!("{i} {}", "word ".repeat(200)))
        .collect();
    xadd(
        &mut con,
        "jobs",
        &json!({"id": "big", "route": "/tokenize", "body": {"inputs": texts}}),
    );
    xadd(
        &mut con,
        "jobs",
        &json!({"id": "small", "route": "/embed", "body": {"inputs": "a few words"}}),
    );
    let ids = ["bad", "big", "small"].map(String::from);
    wait_ended(&mut con, "jobs", &ids, Duration::from_secs(20));
    let dead = dead_letters(&mut con, "jobs");
    assert_eq!(dead.len(), 1);
    let job: String = dead[0].get("job").unwrap();
    assert_eq!(job.len(), 32 * 1024);
    assert_eq!(dead[0].get::<String>("job_truncated").as_deref(), Some("1"));
    let results: redis::streams::StreamRangeReply = redis::cmd("XRANGE")
        .arg(&["done", "-", "+"][..])
        .query(&mut con)
        .unwrap();
    let by_id = |id: &str| {
        results
            .ids
            .iter()
            .find(|e| e.get::<String>("id").as_deref() == Some(id))
            .unwrap_or_else(|| panic!("no result entry for {id}"))
    };
    let big = by_id("big");
    assert!(
        big.get::<String>("result").is_none(),
        "a 64 KiB+ result was copied"
    );
    assert_eq!(
        big.get::<String>("result_key").as_deref(),
        Some("jobs:job:big")
    );
    assert!(hget(&mut con, "jobs:job:big", "result").unwrap().len() > 64 * 1024);
    assert!(by_id("small").get::<String>("result").is_some());
    // Entries older than --queue-result-ttl-ms go when the next one is written.
    std::thread::sleep(Duration::from_millis(3200));
    xadd(
        &mut con,
        "jobs",
        &json!({"id": "later", "route": "/nope", "body": {}}),
    );
    wait_ended(
        &mut con,
        "jobs",
        &["later".to_string()],
        Duration::from_secs(20),
    );
    assert_eq!(
        xlen(&mut con, "jobs:dead"),
        1,
        "the old dead letter was not trimmed"
    );
    assert_eq!(
        xlen(&mut con, "done"),
        1,
        "the old results were not trimmed"
    );
    // And by count: a flood of invalid jobs leaves about 10,000 dead letters, no more.
    let mut pipe = redis::pipe();
    for i in 0..12_000 {
        pipe.cmd("XADD")
            .arg(&["jobs", "*", "job"][..])
            .arg(json!({"id": format!("f{i}"), "route": "/nope", "body": {}}).to_string())
            .ignore();
    }
    pipe.exec(&mut con).unwrap();
    let t = Instant::now();
    while xlen(&mut con, "jobs") > 0 || pending(&mut con, "jobs") > 0 {
        assert!(
            t.elapsed() < Duration::from_secs(120),
            "the flood was not drained"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let dead = xlen(&mut con, "jobs:dead");
    assert!(
        (10_000..=10_200).contains(&dead),
        "{dead} dead letters kept"
    );
}

#[test]
fn a_job_whose_answer_is_over_the_body_budget_is_dead_lettered_as_too_large() {
    let Some(redis) = Redis::start() else { return };
    let mut con = redis.conn();
    // An HTTP answer is at most --max-inflight-body-bytes; a job's result is held to the same.
    let _server = replica(
        &redis.url("jobs"),
        &[
            "--max-body-bytes",
            "16384",
            "--max-inflight-body-bytes",
            "65536",
        ],
    );
    // 64 texts of ~100 bytes (a 7 kB job), each past the tiny model's maximum length:
    // /tokenize answers each token with its text and offsets, over 200 kB of JSON.
    let texts: Vec<String> = (0..64)
        .map(|i| format!("{i} {}", "word ".repeat(20)))
        .collect();
    xadd(
        &mut con,
        "jobs",
        &json!({"id": "huge", "route": "/tokenize", "body": {"inputs": texts}}),
    );
    xadd(
        &mut con,
        "jobs",
        &json!({"id": "small", "route": "/embed", "body": {"inputs": "a few words"}}),
    );
    let ids = ["huge", "small"].map(String::from);
    wait_ended(&mut con, "jobs", &ids, Duration::from_secs(20));
    let (status, body) = result_of(&mut con, "jobs", "huge");
    assert_eq!(status, 413, "{body}");
    assert_eq!(body["error_type"], "payload_too_large", "{body}");
    let (status, body) = result_of(&mut con, "jobs", "small");
    assert_eq!(status, 200, "{body}");
    let dead = dead_letters(&mut con, "jobs");
    assert_eq!(dead.len(), 1);
    let error: String = dead[0].get("error").unwrap();
    assert!(error.contains("payload_too_large"), "{error}");
    assert_eq!(pending(&mut con, "jobs"), 0);
}

#[test]
fn no_password_reaches_a_message_a_log_line_or_the_probe() {
    if Redis::start().is_none() {
        return;
    }
    // A Redis with a password (the tests' own servers have none, and then any is accepted).
    let port = free_port();
    let mut protected = Command::new("redis-server")
        .args([
            "--port",
            &port.to_string(),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
        ])
        .args(["--appendonly", "no", "--requirepass", "the-real-password"])
        .stdout(Stdio::null())
        .spawn()
        .expect("starting redis-server");
    let t = Instant::now();
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "redis-server did not start"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    // A URL that does not parse: the message shows it with the password hidden.
    let out = Command::new(env!("CARGO_BIN_EXE_zerobatch"))
        .args(["--queue", "redis://user:hunter2-secret@127.0.0.1:1"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains("hunter2"), "{stderr}");
    assert!(stderr.contains("user:***@"), "{stderr}");
    // A replica whose Redis refuses its password: it logs why, never the password; the probe
    // says the queue is down, and to a caller without the key no more than that.
    let log = std::env::temp_dir().join(format!("zerobatch-redact-{}.log", free_port()));
    let url = format!("redis://default:hunter2-secret@127.0.0.1:{port}/jobs");
    let server = Proc::spawn_with(
        tiny_model(),
        &["--queue", &url, "--api-key", "zb-key"],
        Stdio::from(std::fs::File::create(&log).unwrap()),
    );
    connect_until_up(server.addr);
    wait_ready(server.addr);
    let t = Instant::now();
    let probe = loop {
        let r = get(server.addr, "/readyz");
        if r.json()["queue"]["status"] == "down" || t.elapsed() > Duration::from_secs(10) {
            break r;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(probe.json()["queue"]["status"], "down", "{}", probe.text());
    let shown = probe.text();
    for secret in ["hunter2", "127.0.0.1", "default", "redis://"] {
        assert!(
            !shown.contains(secret),
            "/readyz without the key shows {secret:?}: {shown}"
        );
    }
    let with_key = request(
        server.addr,
        "GET",
        "/readyz",
        &[("Authorization", "Bearer zb-key")],
        None,
    );
    let detailed = with_key.text();
    assert!(detailed.contains("default:***@127.0.0.1"), "{detailed}");
    assert!(!detailed.contains("hunter2"), "{detailed}");
    let info = request(
        server.addr,
        "GET",
        "/info",
        &[("Authorization", "Bearer zb-key")],
        None,
    );
    assert!(!info.text().contains("hunter2"), "{}", info.text());
    drop(server);
    let logged = std::fs::read_to_string(&log).unwrap();
    let _ = std::fs::remove_file(&log);
    let _ = protected.kill();
    let _ = protected.wait();
    assert!(
        logged.contains("queue broker"),
        "nothing was logged: {logged}"
    );
    assert!(!logged.contains("hunter2"), "{logged}");
}
