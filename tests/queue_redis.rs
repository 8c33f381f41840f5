//! Queue ingress from Redis Streams against a real `redis-server` started by each test on an
//! ephemeral port: jobs of every JSON route answered as HTTP answers them (alongside HTTP
//! load), invalid and poison jobs dead-lettered, entries of a replica that died reclaimed by
//! another, SIGTERM finishing what a replica holds, a broker that comes up late or restarts
//! mid-run, and the `/v1/jobs` routes on two replicas sharing one broker.
//!
//! Needs `redis-server` (Redis >= 7) on PATH; without it each test fails saying so, unless
//! `ZEROBATCH_SKIP_REDIS=1` says to skip them knowingly (scripts/test.sh sets it only then).

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use common::redis_server::*;
use common::*;
use serde_json::{json, Value};

#[test]
fn jobs_of_every_route_are_answered_as_http_answers_them_alongside_http_load() {
    let Some(redis) = Redis::start() else { return };
    let server = replica(&format!("{}?results=done", redis.url("jobs")), &[]);
    let addr = server.addr;
    let mut con = redis.conn();
    let bodies = [
        (
            "/embed",
            json!({ "inputs": ["A man is eating food.", "A man rides a horse."] }),
        ),
        ("/", json!({ "inputs": "hello there", "normalize": false })),
        (
            "/v1/embeddings",
            json!({ "input": ["one", "two", "three"], "model": "m" }),
        ),
        (
            "/tokenize",
            json!({ "inputs": "Café au lait!", "add_special_tokens": false }),
        ),
    ];
    // HTTP traffic at the same time, through the same queue and batches.
    let http_load = std::thread::spawn(move || {
        for i in 0..60 {
            let r = post_json(
                addr,
                "/embed",
                &json!({ "inputs": format!("http text {i}") }),
            );
            assert_eq!(r.status, 200, "{}", r.text());
        }
    });
    let mut ids = Vec::new();
    for i in 0..40 {
        let (route, body) = &bodies[i % bodies.len()];
        let id = format!("job-{i}");
        xadd(
            &mut con,
            "jobs",
            &json!({ "id": id, "route": route, "body": body }),
        );
        ids.push(id);
    }
    // A job without an id is known by its entry id.
    let entry = xadd(
        &mut con,
        "jobs",
        &json!({ "route": "/embed", "body": { "inputs": "x" } }),
    );
    ids.push(entry);
    wait_ended(&mut con, "jobs", &ids, Duration::from_secs(30));
    http_load.join().unwrap();
    for (i, id) in ids.iter().take(40).enumerate() {
        let (route, body) = &bodies[i % bodies.len()];
        let (status, job_answer) = result_of(&mut con, "jobs", id);
        let http = post_json(addr, route, body);
        assert_eq!((status, "succeeded"), (http.status, "succeeded"), "{id}");
        assert_same_answer(&job_answer, &http.json(), &format!("{id} {route}"));
    }
    // One notification per job on the results stream, with its answer.
    let notes: redis::streams::StreamRangeReply = redis::cmd("XRANGE")
        .arg("done")
        .arg("-")
        .arg("+")
        .query(&mut con)
        .unwrap();
    let mut noted: Vec<String> = notes
        .ids
        .iter()
        .map(|e| {
            let field = |f: &str| -> String { e.get(f).unwrap() };
            assert_eq!(
                (field("state"), field("status")),
                ("succeeded".into(), "200".into())
            );
            let id = field("id");
            let (_, answer) = result_of(&mut con, "jobs", &id);
            assert_eq!(
                serde_json::from_str::<Value>(&field("result")).unwrap(),
                answer
            );
            id
        })
        .collect();
    noted.sort();
    let mut expected = ids.clone();
    expected.sort();
    assert_eq!(noted, expected);
    // Everything acknowledged and removed: nothing left pending or in the stream.
    assert_eq!(pending(&mut con, "jobs"), 0);
    assert_eq!(xlen(&mut con, "jobs"), 0);
    assert_eq!(xlen(&mut con, "jobs:dead"), 0);
    let m = get(addr, "/metrics").text();
    assert_eq!(
        metric(&m, "zerobatch_broker_jobs_total{outcome=\"succeeded\"}"),
        41.0
    );
    let ready = get(addr, "/readyz").json();
    assert_eq!(ready["queue"]["status"], "up", "{ready}");
}

#[test]
fn invalid_jobs_go_to_the_dead_letters_with_the_error_http_would_give() {
    let Some(redis) = Redis::start() else { return };
    let server = replica(
        &redis.url("jobs"),
        &["--max-client-batch", "2", "--max-body-bytes", "4096"],
    );
    let mut con = redis.conn();
    let cases = [
        (
            "empty",
            json!({ "id": "empty", "route": "/embed", "body": { "inputs": [] } }),
            400,
        ),
        (
            "big",
            json!({ "id": "big", "route": "/embed", "body": { "inputs": ["a", "b", "c"] } }),
            413,
        ),
        (
            "schema",
            json!({ "id": "schema", "route": "/embed", "body": { "input": "x" } }),
            400,
        ),
        (
            "route",
            json!({ "id": "route", "route": "/info", "body": {} }),
            400,
        ),
    ];
    for (_, job, _) in &cases {
        xadd(&mut con, "jobs", job);
    }
    redis::cmd("XADD")
        .arg("jobs")
        .arg("*")
        .arg("job")
        .arg("not json")
        .exec(&mut con)
        .unwrap();
    let huge = "x".repeat(5000);
    xadd(
        &mut con,
        "jobs",
        &json!({ "id": "huge", "route": "/embed", "body": { "inputs": huge } }),
    );
    xadd(
        &mut con,
        "jobs",
        &json!({ "id": "bad id/..", "route": "/embed", "body": {} }),
    );
    let ids: Vec<String> = cases.iter().map(|c| c.0.to_string()).collect();
    wait_ended(&mut con, "jobs", &ids, Duration::from_secs(10));
    for (id, _, want) in &cases {
        assert_eq!(
            hget(&mut con, &format!("jobs:job:{id}"), "state").as_deref(),
            Some("failed")
        );
        let (status, body) = result_of(&mut con, "jobs", id);
        assert_eq!(status, *want, "{id}: {body}");
        assert!(
            body["error"].is_string() && body["error_type"].is_string(),
            "{body}"
        );
    }
    let t = Instant::now();
    while xlen(&mut con, "jobs:dead") < 7 {
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "dead letters missing"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let dead = dead_letters(&mut con, "jobs");
    let errors: Vec<String> = dead
        .iter()
        .map(|e| e.get::<String>("error").unwrap())
        .collect();
    assert!(errors.iter().any(|e| e.contains("not a job")), "{errors:?}");
    assert!(
        errors.iter().any(|e| e.contains("is not valid")),
        "{errors:?}"
    );
    assert!(
        errors.iter().any(|e| e.contains("(--max-body-bytes)")),
        "{errors:?}"
    );
    assert!(
        errors.iter().any(|e| e.contains("cannot run as a job")),
        "{errors:?}"
    );
    assert_eq!(pending(&mut con, "jobs"), 0);
    assert_eq!(xlen(&mut con, "jobs"), 0);
    drop(server);
}

#[test]
fn idle_entries_are_reclaimed_and_a_poison_job_is_dead_lettered_after_max_deliveries() {
    let Some(redis) = Redis::start() else { return };
    let mut con = redis.conn();
    redis::cmd("XGROUP")
        .arg(&["CREATE", "jobs", "zerobatch", "0", "MKSTREAM"][..])
        .exec(&mut con)
        .unwrap();
    let orphan = json!({ "id": "orphan", "route": "/embed", "body": { "inputs": "left behind" } });
    let poison =
        json!({ "id": "poison", "route": "/embed", "body": { "inputs": "crashes its replica" } });
    xadd(&mut con, "jobs", &orphan);
    let poison_entry = xadd(&mut con, "jobs", &poison);
    // A replica that took both and died: both pending to "ghost"; the poison job has already
    // been delivered 3 times (its earlier replicas died too).
    let _: redis::Value = redis::cmd("XREADGROUP")
        .arg(
            &[
                "GROUP",
                "zerobatch",
                "ghost",
                "COUNT",
                "10",
                "STREAMS",
                "jobs",
                ">",
            ][..],
        )
        .query(&mut con)
        .unwrap();
    let _: redis::Value = redis::cmd("XCLAIM")
        .arg(
            &[
                "jobs",
                "zerobatch",
                "ghost",
                "0",
                poison_entry.as_str(),
                "RETRYCOUNT",
                "3",
                "JUSTID",
            ][..],
        )
        .query(&mut con)
        .unwrap();
    let started = Instant::now();
    let server = replica(
        &redis.url("jobs"),
        &[
            "--queue-visibility-timeout-ms",
            "1000",
            "--queue-max-deliveries",
            "3",
        ],
    );
    let ids = ["orphan".to_string(), "poison".to_string()];
    wait_ended(&mut con, "jobs", &ids, Duration::from_secs(10));
    assert!(
        started.elapsed() >= Duration::from_millis(900),
        "entries were claimed before the visibility timeout"
    );
    assert_eq!(
        hget(&mut con, "jobs:job:orphan", "state").as_deref(),
        Some("succeeded")
    );
    assert_eq!(
        hget(&mut con, "jobs:job:poison", "state").as_deref(),
        Some("failed")
    );
    let (status, body) = result_of(&mut con, "jobs", "poison");
    assert_eq!(status, 500);
    assert!(
        body["error"]
            .as_str()
            .unwrap()
            .contains("delivered 4 times without finishing"),
        "{body}"
    );
    let dead = dead_letters(&mut con, "jobs");
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].get::<String>("entry").unwrap(), poison_entry);
    assert_eq!(dead[0].get::<String>("deliveries").unwrap(), "4");
    assert_eq!(pending(&mut con, "jobs"), 0);
    let m = get(server.addr, "/metrics").text();
    assert_eq!(metric(&m, "zerobatch_broker_redeliveries_total"), 2.0);
    assert_eq!(
        metric(&m, "zerobatch_broker_jobs_total{outcome=\"dead_lettered\"}"),
        1.0
    );
}

#[test]
fn a_broker_that_is_down_is_reported_while_http_is_served_and_used_once_it_is_up() {
    if Redis::start().is_none() {
        return;
    }
    let port = free_port();
    let url = format!("redis://127.0.0.1:{port}/jobs");
    let server = replica(&url, &[]);
    let t = Instant::now();
    let ready = loop {
        let r = get(server.addr, "/readyz");
        if r.json()["queue"]["status"] == "down" {
            break r;
        }
        assert!(t.elapsed() < Duration::from_secs(10), "{}", r.text());
        std::thread::sleep(Duration::from_millis(20));
    };
    assert_eq!(
        ready.status, 200,
        "a broker outage must not stop HTTP routing"
    );
    assert!(ready.json()["queue"]["reason"]
        .as_str()
        .unwrap()
        .contains("unreachable"));
    let r = post_json(server.addr, "/embed", &json!({ "inputs": "still served" }));
    assert_eq!(r.status, 200);
    let r = post_json(
        server.addr,
        "/v1/jobs",
        &json!({ "route": "/embed", "body": { "inputs": "x" } }),
    );
    assert_eq!(r.status, 503, "{}", r.text());
    assert_eq!(r.json()["error_type"], "queue_unavailable");
    assert!(r.header("retry-after").is_some());

    let redis = Redis::start_on(port);
    let mut con = redis.conn();
    xadd(
        &mut con,
        "jobs",
        &json!({ "id": "late", "route": "/embed", "body": { "inputs": "x" } }),
    );
    // The backoff is at most 5 s.
    wait_ended(
        &mut con,
        "jobs",
        &["late".to_string()],
        Duration::from_secs(15),
    );
    assert_eq!(get(server.addr, "/readyz").json()["queue"]["status"], "up");
    let m = get(server.addr, "/metrics").text();
    assert_eq!(metric(&m, "zerobatch_broker_up"), 1.0);
}

#[test]
fn job_routes_on_two_replicas_sharing_one_broker_and_404_without_a_broker() {
    let Some(redis) = Redis::start() else { return };
    let url = redis.url("jobs");
    // Replica A: draining (it takes no more jobs) but still answering HTTP for a while.
    let a = Proc::spawn(
        tiny_model(),
        &[
            "--queue",
            &url,
            "--shutdown-delay-ms",
            "15000",
            "--shutdown-timeout-ms",
            "20000",
        ],
    );
    connect_until_up(a.addr);
    wait_ready(a.addr);
    a.sigterm();
    // A read under way when the signal came returns within the block time (2 s).
    std::thread::sleep(Duration::from_millis(2500));
    let job = json!({ "route": "/embed", "body": { "inputs": ["first", "second"] } });
    let created = post_json(a.addr, "/v1/jobs", &job);
    assert_eq!(created.status, 202, "{}", created.text());
    let location = created.header("location").unwrap().to_string();
    let id = created.json()["id"].as_str().unwrap().to_string();
    assert_eq!(location, format!("/v1/jobs/{id}"));
    assert_eq!(get(a.addr, &location).json()["state"], "queued");
    let r = request(a.addr, "DELETE", &location, &[], None);
    assert_eq!(
        (r.status, r.json()["state"].clone()),
        (200, json!("cancelled"))
    );
    let r = request(a.addr, "DELETE", &location, &[], None);
    assert_eq!(r.status, 409, "{}", r.text());
    let kept = post_json(a.addr, "/v1/jobs", &job);
    assert_eq!(kept.status, 202);
    let kept = kept.header("location").unwrap().to_string();
    // Refused at once, like the route would refuse it.
    let bad = post_json(
        a.addr,
        "/v1/jobs",
        &json!({ "route": "/embed", "body": { "inputs": [] } }),
    );
    assert_eq!(bad.status, 400, "{}", bad.text());
    let bad = post_json(a.addr, "/v1/jobs", &json!({ "route": "/info", "body": {} }));
    assert_eq!(bad.status, 400, "{}", bad.text());

    // Replica B takes the jobs: skips the cancelled one, runs the other; A reads its result.
    let b = replica(&url, &[]);
    let t = Instant::now();
    let done = loop {
        let r = get(a.addr, &kept);
        if r.json()["state"] == "succeeded" {
            break r.json();
        }
        assert!(t.elapsed() < Duration::from_secs(10), "{}", r.text());
        std::thread::sleep(Duration::from_millis(20));
    };
    assert_eq!(done["status"], 200);
    let http = post_json(b.addr, "/embed", &job["body"]);
    assert_same_answer(&done["result"], &http.json(), "job result");
    assert_eq!(get(b.addr, &location).json()["state"], "cancelled");
    assert_eq!(request(b.addr, "DELETE", &kept, &[], None).status, 409);
    let head = request(b.addr, "HEAD", &kept, &[], None);
    assert_eq!((head.status, head.body.len()), (200, 0));
    let head = request(b.addr, "HEAD", "/v1/jobs/no-such-job", &[], None);
    assert_eq!((head.status, head.body.len()), (404, 0));
    assert_eq!(get(b.addr, "/v1/jobs/no-such-job").status, 404);
    assert_eq!(request(b.addr, "PUT", "/v1/jobs", &[], None).status, 405);
    let m = get(b.addr, "/metrics").text();
    assert_eq!(
        metric(&m, "zerobatch_broker_jobs_total{outcome=\"skipped\"}"),
        1.0
    );
    drop(b);
    drop(a);

    // Without --queue: 404 that says how to enable the routes.
    let plain = start(|_| {});
    for (method, path) in [
        ("POST", "/v1/jobs"),
        ("GET", "/v1/jobs/x"),
        ("DELETE", "/v1/jobs/x"),
    ] {
        let body = json!({ "route": "/embed", "body": { "inputs": "x" } }).to_string();
        let r = request(
            plain.addr,
            method,
            path,
            &[("Content-Type", "application/json")],
            (method == "POST").then_some(body.as_bytes()),
        );
        assert_eq!(r.status, 404, "{method} {path}");
        assert!(
            r.json()["error"].as_str().unwrap().contains("--queue"),
            "{}",
            r.text()
        );
    }
}

#[test]
fn the_text_of_the_jobs_held_is_bounded_by_bytes_as_well_as_by_slots() {
    let Some(redis) = Redis::start() else { return };
    let url = redis.url("jobs");
    let mut con = redis.conn();
    // Jobs of ~1.6 KB (JSON padded with spaces), a read reserving 2,048 bytes per entry and
    // 6,144 bytes in all: at most 3 held at once, though 64 slots are free.
    let ids: Vec<String> = (0..300).map(|i| format!("big{i}")).collect();
    let mut pipe = redis::pipe();
    for id in &ids {
        let job = json!({ "id": id, "route": "/embed", "body": { "inputs": format!("job {id}") } });
        let padded = format!("{job}{}", " ".repeat(1600));
        pipe.cmd("XADD")
            .arg("jobs")
            .arg("*")
            .arg("job")
            .arg(padded)
            .ignore();
    }
    pipe.exec(&mut con).unwrap();
    // The group exists before the replica reads, so that XPENDING answers from the start.
    redis::cmd("XGROUP")
        .arg(&["CREATE", "jobs", "zerobatch", "0"])
        .exec(&mut con)
        .unwrap();
    let _r = replica(
        &url,
        &[
            "--queue-max-jobs",
            "64",
            "--max-body-bytes",
            "2048",
            "--max-inflight-body-bytes",
            "6144",
        ],
    );
    let t = Instant::now();
    let mut most = 0;
    while xlen(&mut con, "jobs") > 0 || pending(&mut con, "jobs") > 0 {
        most = most.max(pending(&mut con, "jobs"));
        assert!(
            t.elapsed() < Duration::from_secs(60),
            "the jobs did not drain"
        );
    }
    eprintln!("most jobs held at once: {most}");
    assert!(
        most >= 1,
        "no job was ever seen held: the test proves nothing"
    );
    assert!(
        most <= 3,
        "{most} jobs of ~1.6 KB held at once with 6,144 bytes allowed"
    );
    wait_ended(&mut con, "jobs", &ids, Duration::from_secs(10));
    let failed: Vec<_> = states(&mut con, "jobs", &ids)
        .into_iter()
        .filter(|s| s.as_deref() != Some("succeeded"))
        .collect();
    assert!(failed.is_empty(), "jobs not succeeded: {failed:?}");
}

#[test]
fn a_replica_killed_mid_run_leaves_its_jobs_to_another_and_none_is_lost() {
    let Some(redis) = Redis::start() else { return };
    let url = redis.url("jobs");
    let mut con = redis.conn();
    let ids: Vec<String> = (0..2000).map(|i| format!("k{i}")).collect();
    xadd_embed_jobs(&mut con, "jobs", &ids);
    let visibility = [
        "--queue-visibility-timeout-ms",
        "1500",
        "--queue-max-jobs",
        "32",
    ];
    let args = [&["--queue", &url][..], &visibility[..]].concat();
    // Replica A is SIGKILLed while it holds jobs (started again in the rare case that it
    // held none at the moment of the kill).
    let mut held = 0;
    for _ in 0..3 {
        let mut a = Proc::spawn(tiny_model(), &args);
        let left = xlen(&mut con, "jobs");
        wait_stream_below(&mut con, "jobs", left - 100);
        let t = Instant::now();
        while pending(&mut con, "jobs") == 0 && t.elapsed() < Duration::from_secs(5) {}
        a.child.kill().unwrap(); // SIGKILL
        a.child.wait().unwrap();
        held = pending(&mut con, "jobs");
        if held > 0 {
            break;
        }
    }
    let states_at_kill = states(&mut con, "jobs", &ids);
    let done = states_at_kill
        .iter()
        .filter(|s| s.as_deref() == Some("succeeded"))
        .count();
    eprintln!("A killed after answering {done} jobs, holding {held}");
    assert!(
        held > 0,
        "A held no job when it was killed: the test proves nothing"
    );
    let b = Proc::spawn(tiny_model(), &args);
    let t = Instant::now();
    while states(&mut con, "jobs", &ids)
        .iter()
        .any(|s| s.as_deref() != Some("succeeded"))
    {
        assert!(t.elapsed() < Duration::from_secs(60), "jobs lost");
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(pending(&mut con, "jobs"), 0);
    assert_eq!(xlen(&mut con, "jobs"), 0);
    assert_eq!(xlen(&mut con, "jobs:dead"), 0);
    let m = get(b.addr, "/metrics").text();
    assert_eq!(
        metric(&m, "zerobatch_broker_redeliveries_total"),
        held as f64
    );
}

#[test]
fn sigterm_with_a_backlog_finishes_and_acknowledges_what_the_replica_holds() {
    let Some(redis) = Redis::start() else { return };
    let mut con = redis.conn();
    let ids: Vec<String> = (0..3000).map(|i| format!("t{i}")).collect();
    xadd_embed_jobs(&mut con, "jobs", &ids);
    let mut p = Proc::spawn(
        tiny_model(),
        &[
            "--queue",
            &redis.url("jobs"),
            "--queue-max-jobs",
            "8",
            "--shutdown-delay-ms",
            "100",
        ],
    );
    wait_stream_below(&mut con, "jobs", ids.len() as u64 - 10);
    p.sigterm();
    let (code, took) = p.wait_exit(Duration::from_secs(20));
    assert_eq!(code, Some(0), "exit after {took:?}");
    // Every job is either answered or still in the stream for another replica; none is held
    // by the replica that left, none half-done.
    let states = states(&mut con, "jobs", &ids);
    let succeeded = states
        .iter()
        .filter(|s| s.as_deref() == Some("succeeded"))
        .count();
    let untouched = states.iter().filter(|s| s.is_none()).count();
    eprintln!("at SIGTERM: {succeeded} answered, {untouched} left in the stream");
    assert_eq!(succeeded + untouched, ids.len(), "{states:?}");
    assert!(
        untouched > 0,
        "the backlog was drained before the signal: the test proves nothing"
    );
    assert_eq!(pending(&mut con, "jobs"), 0);
    assert_eq!(xlen(&mut con, "jobs") as usize, untouched);
}

#[test]
fn a_broker_restart_mid_run_loses_no_job() {
    if Redis::start().is_none() {
        return;
    }
    // Redis with every write on disk before it answers, so a restart keeps what it acknowledged.
    let dir = std::env::temp_dir().join(format!("zerobatch-redis-{}", free_port()));
    std::fs::create_dir_all(&dir).unwrap();
    let dir_arg = dir.to_string_lossy().into_owned();
    let options = [
        "--appendonly",
        "yes",
        "--appendfsync",
        "always",
        "--dir",
        &dir_arg,
    ];
    let port = free_port();
    let first = Redis::start_with(port, &options);
    let mut con = first.conn();
    let ids: Vec<String> = (0..2000).map(|i| format!("b{i}")).collect();
    xadd_embed_jobs(&mut con, "jobs", &ids);
    let server = replica(
        &first.url("jobs"),
        &["--queue-visibility-timeout-ms", "1500"],
    );
    wait_stream_below(&mut con, "jobs", ids.len() as u64 - 200);
    drop(first); // SIGKILL, mid-run
    std::thread::sleep(Duration::from_millis(300));
    let second = Redis::start_with(port, &options);
    let mut con = second.conn();
    let t = Instant::now();
    while states(&mut con, "jobs", &ids)
        .iter()
        .any(|s| s.as_deref() != Some("succeeded"))
    {
        assert!(
            t.elapsed() < Duration::from_secs(60),
            "jobs lost across the restart"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(pending(&mut con, "jobs"), 0);
    assert_eq!(xlen(&mut con, "jobs"), 0);
    assert_eq!(xlen(&mut con, "jobs:dead"), 0);
    assert_eq!(get(server.addr, "/readyz").json()["queue"]["status"], "up");
    drop(second);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn an_idle_replica_reading_an_empty_stream_burns_no_cpu() {
    let Some(redis) = Redis::start() else { return };
    let p = replica(&redis.url("jobs"), &[]);
    let mut con = redis.conn();
    let ids: Vec<String> = (0..50).map(|i| format!("i{i}")).collect();
    xadd_embed_jobs(&mut con, "jobs", &ids);
    wait_ended(&mut con, "jobs", &ids, Duration::from_secs(10));
    std::thread::sleep(Duration::from_millis(500));
    // Three blocking reads (2 s each) and a backlog refresh fall in the window.
    let before = p.cpu_ns();
    std::thread::sleep(Duration::from_secs(6));
    let used = p.cpu_ns() - before;
    eprintln!(
        "CPU used over 6 s idle with --queue: {:.3} ms",
        used as f64 / 1e6
    );
    assert!(
        used < 10_000_000,
        "an idle replica used {:.3} ms of CPU in 6 s",
        used as f64 / 1e6
    );
}

/// A CA and a certificate it signs for 127.0.0.1, made with the `openssl` command in `dir`:
/// `ca.pem`, `server.pem`, `server.key`.
fn make_certificates(dir: &std::path::Path) {
    let run = |args: &[&str]| {
        let out = Command::new("openssl")
            .args(args)
            .current_dir(dir)
            .output()
            .expect("the openssl command is needed to make the TLS test's certificates");
        assert!(
            out.status.success(),
            "openssl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    run(&[
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        "ca.key",
        "-out",
        "ca.pem",
        "-days",
        "2",
        "-subj",
        "/CN=zerobatch test CA",
    ]);
    run(&[
        "req",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        "server.key",
        "-out",
        "server.csr",
        "-subj",
        "/CN=127.0.0.1",
    ]);
    std::fs::write(dir.join("ext.cnf"), "subjectAltName=IP:127.0.0.1\n").unwrap();
    run(&[
        "x509",
        "-req",
        "-in",
        "server.csr",
        "-CA",
        "ca.pem",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-out",
        "server.pem",
        "-days",
        "2",
        "-extfile",
        "ext.cnf",
    ]);
}

#[test]
fn rediss_is_trusted_through_a_private_ca_and_an_unknown_certificate_is_refused() {
    if Redis::start().is_none() {
        return;
    }
    let dir = std::env::temp_dir().join(format!("zerobatch-tls-{}", free_port()));
    std::fs::create_dir_all(&dir).unwrap();
    make_certificates(&dir);
    let file = |name: &str| dir.join(name).to_string_lossy().into_owned();
    let tls_port = free_port();
    // The test talks to the plain port; the replicas to the TLS one.
    let redis = Redis::start_with(
        free_port(),
        &[
            "--tls-port",
            &tls_port.to_string(),
            "--tls-cert-file",
            &file("server.pem"),
            "--tls-key-file",
            &file("server.key"),
            "--tls-ca-cert-file",
            &file("ca.pem"),
            "--tls-auth-clients",
            "no",
        ],
    );
    let url = format!("rediss://127.0.0.1:{tls_port}/jobs");
    let server = replica(&url, &["--queue-tls-ca-file", &file("ca.pem")]);
    let mut con = redis.conn();
    xadd(
        &mut con,
        "jobs",
        &json!({ "id": "tls", "route": "/embed", "body": { "inputs": "over TLS" } }),
    );
    wait_ended(
        &mut con,
        "jobs",
        &["tls".to_string()],
        Duration::from_secs(10),
    );
    assert_eq!(result_of(&mut con, "jobs", "tls").0, 200);
    assert_eq!(get(server.addr, "/readyz").json()["queue"]["status"], "up");
    drop(server);
    // Without the CA file the server's certificate is not trusted: no job is taken, and
    // /readyz says why.
    let server = replica(&url, &[]);
    xadd(
        &mut con,
        "jobs",
        &json!({ "id": "untrusted", "route": "/embed", "body": { "inputs": "x" } }),
    );
    let t = Instant::now();
    let reason = loop {
        let ready = get(server.addr, "/readyz").json();
        if ready["queue"]["status"] == "down" && ready["queue"]["reason"] != "not connected yet" {
            break ready["queue"]["reason"].as_str().unwrap().to_string();
        }
        assert!(t.elapsed() < Duration::from_secs(10), "{ready}");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(reason.to_lowercase().contains("certificate"), "{reason}");
    assert_eq!(hget(&mut con, "jobs:job:untrusted", "state"), None);
    let _ = std::fs::remove_dir_all(&dir);
}
