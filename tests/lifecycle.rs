//! The process across a serverless replica's life, with the real binary: requests fired while
//! the model loads are held and served, SIGTERM drains without losing or resetting a request,
//! and an idle server burns no CPU.

mod common;

use std::io::ErrorKind;
use std::net::TcpStream;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Barrier, Mutex};
use std::time::{Duration, Instant};

use common::*;

#[test]
fn requests_fired_during_the_cold_start_are_held_and_all_served() {
    // The real model when present (≈ 70 ms to load), so the requests really land mid-load.
    let model = minilm_dir().map_or(tiny_model().to_string(), |d| {
        d.to_string_lossy().into_owned()
    });
    let p = Proc::spawn(&model, &[]);
    connect_until_up(p.addr);
    let healthz = get(p.addr, "/healthz");
    assert_eq!(
        healthz.status, 200,
        "liveness answers from the first moment"
    );
    let barrier = Arc::new(Barrier::new(20));
    let handles: Vec<_> = (0..20)
        .map(|i| {
            let (b, addr) = (barrier.clone(), p.addr);
            std::thread::spawn(move || {
                b.wait();
                post_json(
                    addr,
                    "/embed",
                    &serde_json::json!({ "inputs": format!("request number {i}") }),
                )
            })
        })
        .collect();
    for h in handles {
        let r = h.join().unwrap();
        assert_eq!(r.status, 200, "{}", r.text());
        assert_eq!(vectors(&r).len(), 1);
    }
    assert_eq!(get(p.addr, "/readyz").status, 200);
    let m = get(p.addr, "/metrics").text();
    eprintln!(
        "held through the cold start: {}",
        metric(&m, "zerobatch_cold_start_held_requests_total")
    );
    assert!(m.contains("zerobatch_startup_seconds{phase=\"total\"}"));
}

#[derive(Default, Debug)]
struct Tally {
    ok: u64,
    refused: u64,
    other_status: Vec<u16>,
    lost: Vec<String>,
}

#[test]
fn sigterm_drains_without_losing_or_resetting_a_request() {
    let mut p = Proc::spawn(
        tiny_model(),
        &[
            "--shutdown-delay-ms",
            "400",
            "--shutdown-timeout-ms",
            "5000",
        ],
    );
    connect_until_up(p.addr);
    wait_ready(p.addr);
    let stop = Arc::new(AtomicBool::new(false));
    let tally = Arc::new(Mutex::new(Tally::default()));
    let body = serde_json::json!({ "inputs": "the quick brown fox" }).to_string();
    let clients: Vec<_> = (0..8)
        .map(|i| {
            let (stop, tally, addr, body) = (stop.clone(), tally.clone(), p.addr, body.clone());
            let keep_alive = i % 2 == 0;
            std::thread::spawn(move || {
                let mut conn: Option<TcpStream> = None;
                let deadline = Instant::now() + Duration::from_secs(8);
                while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
                    let stream = match conn.take() {
                        Some(s) => s,
                        None => match TcpStream::connect(addr) {
                            Ok(s) => s,
                            Err(e) if e.kind() == ErrorKind::ConnectionRefused => {
                                // The listener is closed: this replica is gone, as intended.
                                tally.lock().unwrap().refused += 1;
                                return;
                            }
                            Err(e) => {
                                tally.lock().unwrap().lost.push(format!("connect: {e}"));
                                return;
                            }
                        },
                    };
                    let mut stream = stream;
                    stream
                        .set_read_timeout(Some(Duration::from_secs(10)))
                        .unwrap();
                    let mut headers = vec![("Content-Type", "application/json")];
                    if !keep_alive {
                        headers.push(("Connection", "close"));
                    }
                    match exchange(
                        &mut stream,
                        "POST",
                        "/embed",
                        &headers,
                        Some(body.as_bytes()),
                    ) {
                        Ok(r) => {
                            let mut t = tally.lock().unwrap();
                            if r.status == 200 {
                                t.ok += 1;
                            } else {
                                t.other_status.push(r.status);
                            }
                            let close = r
                                .header("connection")
                                .is_some_and(|v| v.eq_ignore_ascii_case("close"));
                            if keep_alive && !close {
                                conn = Some(stream);
                            }
                        }
                        Err(e) => tally
                            .lock()
                            .unwrap()
                            .lost
                            .push(format!("{:?}: {e}", e.kind())),
                    }
                }
            })
        })
        .collect();
    std::thread::sleep(Duration::from_millis(500));
    let before = tally.lock().unwrap().ok;
    assert!(before > 0, "load is flowing before the signal");
    let signalled = Instant::now();
    p.sigterm();
    // Readiness turns off at once while requests are still served.
    std::thread::sleep(Duration::from_millis(100));
    if let Ok(r) = try_request(p.addr, "GET", "/readyz", &[], None) {
        assert_eq!(r.status, 503);
        assert_eq!(r.json()["status"], "draining");
    }
    let (code, _) = p.wait_exit(Duration::from_secs(10));
    let took = signalled.elapsed();
    stop.store(true, Ordering::Relaxed);
    for c in clients {
        c.join().unwrap();
    }
    let t = tally.lock().unwrap();
    eprintln!("drain: {t:?}, exited {code:?} after {took:?}");
    assert_eq!(code, Some(0), "exit status 0");
    assert!(
        took < Duration::from_secs(5) + Duration::from_millis(500),
        "exited within the shutdown timeout: {took:?}"
    );
    assert!(
        t.lost.is_empty(),
        "requests lost or reset mid-flight: {:?}",
        t.lost
    );
    assert!(
        t.other_status.is_empty(),
        "non-200 answers: {:?}",
        t.other_status
    );
    assert!(
        t.ok > before,
        "requests kept being served during the shutdown delay"
    );
}

#[test]
fn an_idle_server_burns_no_cpu() {
    let p = Proc::spawn(tiny_model(), &[]);
    connect_until_up(p.addr);
    wait_ready(p.addr);
    // Some traffic first, so every lazily started thread exists and has gone back to sleep.
    for _ in 0..20 {
        assert_eq!(
            post_json(
                p.addr,
                "/embed",
                &serde_json::json!({ "inputs": "hello world" })
            )
            .status,
            200
        );
    }
    std::thread::sleep(Duration::from_millis(500));
    let before = p.cpu_ns();
    std::thread::sleep(Duration::from_secs(10));
    let used = p.cpu_ns() - before;
    eprintln!("CPU used over 10 s idle: {:.3} ms", used as f64 / 1e6);
    assert!(
        used < 10_000_000,
        "idle server used {:.3} ms of CPU in 10 s",
        used as f64 / 1e6
    );
}

#[test]
fn a_second_signal_skips_the_shutdown_delay() {
    let mut p = Proc::spawn(
        tiny_model(),
        &[
            "--shutdown-delay-ms",
            "20000",
            "--shutdown-timeout-ms",
            "25000",
        ],
    );
    connect_until_up(p.addr);
    wait_ready(p.addr);
    p.sigterm();
    std::thread::sleep(Duration::from_millis(300));
    for probe in ["/readyz", "/health"] {
        assert_eq!(
            get(p.addr, probe).status,
            503,
            "{probe}: draining, still serving during the delay"
        );
    }
    p.sigterm();
    let (code, took) = p.wait_exit(Duration::from_secs(10));
    assert_eq!(code, Some(0));
    assert!(
        took < Duration::from_secs(5),
        "exited {took:?} after the second signal, not after the 20 s delay"
    );
}

#[test]
fn a_failed_load_exits_1_at_once_naming_the_file() {
    let dir = common::scratch_dir("zerobatch-corrupt");
    for f in ["config.json", "tokenizer.json"] {
        std::fs::copy(std::path::Path::new(tiny_model()).join(f), dir.join(f)).unwrap();
    }
    // A safetensors header that promises more data than the file holds.
    let header = br#"{"embeddings.word_embeddings.weight":{"dtype":"F32","shape":[1000,1000],"data_offsets":[0,4000000]}}"#;
    let mut file = (header.len() as u64).to_le_bytes().to_vec();
    file.extend_from_slice(header);
    file.extend_from_slice(&[0u8; 64]);
    std::fs::write(dir.join("model.safetensors"), file).unwrap();
    let mut p = Proc::spawn_with(
        dir.to_str().unwrap(),
        // The default shutdown delay (5 s) must not apply: nothing is being drained.
        &[],
        std::process::Stdio::piped(),
    );
    let (code, took) = p.wait_exit(Duration::from_secs(10));
    let mut log = String::new();
    std::io::Read::read_to_string(&mut p.child.stderr.take().unwrap(), &mut log).unwrap();
    assert_eq!(code, Some(1), "{log}");
    assert!(
        took < Duration::from_secs(3),
        "exited after {took:?}\n{log}"
    );
    assert!(log.contains("model.safetensors"), "{log}");
    assert!(!log.contains("panicked"), "{log}");
}
