//! Shared test helpers: a tiny generated model, a server on an ephemeral port, and a small
//! blocking HTTP/1.1 client (raw sockets, so tests see exactly what crosses the wire); in
//! `gguf`, a tiny Llama GGUF file and ways to vary it; in `decoding`, the reference for
//! incremental decoding; in `decoder_reference`, the checks of the tiny decoder references
//! against transformers; in `fake_hub`, a local server that answers like the Hugging Face hub;
//! the tiny reference models of the embedding and reranking tests in `reranker_models`,
//! `xlmr_models`, `qwen3_embedding_model` and `modernbert_model`.
#![allow(dead_code)]

pub mod decoder_reference;
pub mod decoding;
pub mod fake_hub;
pub mod gguf;
pub mod modernbert_model;
pub mod qwen3_embedding_model;
pub mod redis_server;
pub mod reranker_models;
pub mod scoring_checks;
pub mod xlmr_models;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Once, OnceLock};
use std::time::{Duration, Instant};

use zerobatch::config::ServeConfig;
use zerobatch::model::tiny::{write_tiny_bert, TinySpec};
use zerobatch::server::BackgroundServer;

/// Loads the encoder model in `dir` in `dtype`, on the best kernels the CPU has.
pub fn load_encoder(
    dir: &std::path::Path,
    dtype: zerobatch::model::DtypeChoice,
) -> zerobatch::model::LoadedModel {
    zerobatch::model::load_with(
        dir.to_str().unwrap(),
        "main",
        zerobatch::model::LoadOptions {
            dtype,
            kernel_cap: None,
        },
        |_, _| {},
    )
    .unwrap()
}

/// A directory for this test process's files: `NAME-PID` in the system's temporary
/// directory. The directories of earlier test processes of that name whose process has ended
/// are removed first, so repeated runs leave one at most (they used to pile up: tens of MB per
/// run of the suite).
pub fn scratch_dir(name: &str) -> PathBuf {
    let root = std::env::temp_dir();
    let prefix = format!("{name}-");
    if let Ok(entries) = std::fs::read_dir(&root) {
        for entry in entries.flatten() {
            let file_name = entry.file_name();
            let Some(pid) = file_name
                .to_str()
                .and_then(|n| n.strip_prefix(&prefix))
                .and_then(|p| p.parse::<u32>().ok())
            else {
                continue;
            };
            let ended = !PathBuf::from(format!("/proc/{pid}")).exists();
            if ended && pid != std::process::id() {
                let _ = std::fs::remove_dir_all(entry.path());
            }
        }
    }
    let dir = root.join(format!("{prefix}{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("creating a scratch directory");
    dir
}

/// The tiny model's directory, generated once per test binary.
pub fn tiny_model() -> &'static str {
    static DIR: OnceLock<String> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir = scratch_dir("zerobatch-tiny");
        write_tiny_bert(&dir, &TinySpec::default()).expect("writing the tiny model");
        dir.to_string_lossy().into_owned()
    })
}

/// The real all-MiniLM-L6-v2 directory (fetched by scripts/fetch-model.sh), if present.
pub fn minilm_dir() -> Option<PathBuf> {
    let dir = std::env::var("ZEROBATCH_MODEL_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|_| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("models/all-MiniLM-L6-v2")
        });
    dir.join("model.safetensors").is_file().then_some(dir)
}

/// The real SmolLM2-135M-Instruct Q4_1 GGUF (fetched by scripts/fetch-model.sh --generation).
pub fn smollm2_path() -> PathBuf {
    let path = std::env::var("ZEROBATCH_GENERATION_MODEL")
        .map(PathBuf::from)
        .unwrap_or_else(|_| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR"))
                .join("models/SmolLM2-135M-Instruct/SmolLM2-135M-Instruct.Q4_1.gguf")
        });
    assert!(
        path.is_file(),
        "{} is missing: run scripts/fetch-model.sh --generation, or use the README's test command, which does",
        path.display()
    );
    path
}

/// Starts a server on the tiny model with the test configuration, changed by `tweak`, and
/// waits until it is ready.
pub fn start(tweak: impl FnOnce(&mut ServeConfig)) -> BackgroundServer {
    start_model(tiny_model(), tweak)
}

/// [`start`] on the real SmolLM2-135M-Instruct ([`smollm2_path`]).
pub fn smollm2_server(tweak: impl FnOnce(&mut ServeConfig)) -> BackgroundServer {
    start_model(smollm2_path().to_str().expect("a UTF-8 path"), tweak)
}

fn start_model(model: &str, tweak: impl FnOnce(&mut ServeConfig)) -> BackgroundServer {
    let mut config = ServeConfig::for_tests(model);
    tweak(&mut config);
    let server = BackgroundServer::start(config).expect("server starts");
    wait_ready(server.addr);
    server
}

pub fn wait_ready(addr: SocketAddr) {
    let t = Instant::now();
    while t.elapsed() < Duration::from_secs(30) {
        if let Ok(r) = try_request(addr, "GET", "/readyz", &[], None) {
            if r.status == 200 {
                return;
            }
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    panic!("server at {addr} not ready after 30 s");
}

#[derive(Debug, Clone)]
pub struct Resp {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Resp {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&self.body)))
    }
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// Writes one request on `stream` (keep-alive) and reads its response.
pub fn exchange(
    stream: &mut TcpStream,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Option<&[u8]>,
) -> std::io::Result<Resp> {
    let mut req = format!("{method} {path} HTTP/1.1\r\nHost: test\r\n");
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    if let Some(b) = body {
        req.push_str(&format!("Content-Length: {}\r\n", b.len()));
    }
    req.push_str("\r\n");
    let mut bytes = req.into_bytes();
    if let Some(b) = body {
        bytes.extend_from_slice(b);
    }
    stream.write_all(&bytes)?;
    read_response(stream, method == "HEAD")
}

pub fn read_response(stream: &mut TcpStream, head: bool) -> std::io::Result<Resp> {
    let mut reader = BufReader::new(stream);
    let mut line = String::new();
    if reader.read_line(&mut line)? == 0 {
        return Err(std::io::Error::new(
            std::io::ErrorKind::UnexpectedEof,
            "connection closed before a response",
        ));
    }
    let status: u16 = line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("bad status line {line:?}")))?;
    let mut headers = Vec::new();
    loop {
        let mut h = String::new();
        reader.read_line(&mut h)?;
        let h = h.trim_end();
        if h.is_empty() {
            break;
        }
        if let Some((k, v)) = h.split_once(':') {
            headers.push((k.trim().to_string(), v.trim().to_string()));
        }
    }
    let len: usize = headers
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case("content-length"))
        .and_then(|(_, v)| v.parse().ok())
        .unwrap_or(0);
    let mut body = vec![0; if head { 0 } else { len }];
    reader.read_exact(&mut body)?;
    Ok(Resp {
        status,
        headers,
        body,
    })
}

/// One request on a fresh connection.
pub fn try_request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Option<&[u8]>,
) -> std::io::Result<Resp> {
    let mut stream = TcpStream::connect(addr)?;
    stream.set_read_timeout(Some(Duration::from_secs(60)))?;
    let mut all: Vec<(&str, &str)> = headers.to_vec();
    all.push(("Connection", "close"));
    exchange(&mut stream, method, path, &all, body)
}

pub fn request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Option<&[u8]>,
) -> Resp {
    try_request(addr, method, path, headers, body).expect("request")
}

pub fn get(addr: SocketAddr, path: &str) -> Resp {
    request(addr, "GET", path, &[], None)
}

pub fn post_json(addr: SocketAddr, path: &str, body: &serde_json::Value) -> Resp {
    request(
        addr,
        "POST",
        path,
        &[("Content-Type", "application/json")],
        Some(body.to_string().as_bytes()),
    )
}

/// Parses a `[[f32]]` body.
pub fn vectors(r: &Resp) -> Vec<Vec<f32>> {
    assert_eq!(r.status, 200, "{}", r.text());
    serde_json::from_slice(&r.body).expect("[[f32]]")
}

/// Largest |a − b| over two vectors of the same length.
pub fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

/// Cosine similarity, summed in f64.
pub fn cosine(a: &[f32], b: &[f32]) -> f64 {
    let dot: f64 = a.iter().zip(b).map(|(x, y)| *x as f64 * *y as f64).sum();
    let na: f64 = a.iter().map(|x| (*x as f64).powi(2)).sum::<f64>().sqrt();
    let nb: f64 = b.iter().map(|x| (*x as f64).powi(2)).sum::<f64>().sqrt();
    dot / (na * nb)
}

/// splitmix64 (Vigna): the generator of the reference tests' weights and prompts, which the
/// scripts that made their references (scripts/make-*-reference.py) implement too.
pub struct SplitMix64(pub u64);

impl SplitMix64 {
    pub fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
}

/// FNV-1a 64 of the values' little-endian bytes: how the reference files fingerprint the
/// weights they were made with.
pub fn fnv1a64(values: &[f32]) -> u64 {
    let mut h = 0xCBF2_9CE4_8422_2325u64;
    for b in values.iter().flat_map(|v| v.to_le_bytes()) {
        h = (h ^ b as u64).wrapping_mul(0x0100_0000_01B3);
    }
    h
}

/// Value of a metric sample line `name{labels} value` in Prometheus text (sum over matches).
pub fn metric(text: &str, name_and_labels_prefix: &str) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(name_and_labels_prefix))
        .filter_map(|l| l.rsplit(' ').next().and_then(|v| v.parse::<f64>().ok()))
        .sum()
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The real binary, started on a free loopback port (killed when dropped).
///
/// [`Proc::spawn`] writes the server's log to a file that is printed only when the test
/// fails (warnings that tests provoke on purpose stay out of a passing run's output).
pub struct Proc {
    pub child: Child,
    pub addr: SocketAddr,
    log: Option<PathBuf>,
}

impl Proc {
    pub fn spawn(model: &str, extra: &[&str]) -> Proc {
        let log = std::env::temp_dir().join(format!(
            "zerobatch-test-{}-{}.log",
            std::process::id(),
            LOG_SEQ.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        ));
        let file = std::fs::File::create(&log).expect("creating the server's log file");
        let mut proc = Self::spawn_with(model, extra, Stdio::from(file));
        proc.log = Some(log);
        proc
    }

    /// What the server wrote to its log so far ([`Proc::spawn`] only).
    pub fn log(&self) -> String {
        self.log
            .as_ref()
            .and_then(|p| std::fs::read_to_string(p).ok())
            .unwrap_or_default()
    }

    /// Like [`Proc::spawn`], with `env` set for the server.
    pub fn spawn_env(model: &str, extra: &[&str], env: &[(&str, &str)]) -> Proc {
        let log = std::env::temp_dir().join(format!(
            "zerobatch-test-{}-{}.log",
            std::process::id(),
            LOG_SEQ.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        ));
        let file = std::fs::File::create(&log).expect("creating the server's log file");
        let mut proc = Self::spawn_inner(model, extra, Stdio::from(file), env);
        proc.log = Some(log);
        proc
    }

    /// Like [`Proc::spawn`], with the server's stderr (its logs) sent to `stderr`.
    pub fn spawn_with(model: &str, extra: &[&str], stderr: Stdio) -> Proc {
        Self::spawn_inner(model, extra, stderr, &[])
    }

    fn spawn_inner(model: &str, extra: &[&str], stderr: Stdio, env: &[(&str, &str)]) -> Proc {
        let port = free_port();
        let child = Command::new(env!("CARGO_BIN_EXE_zerobatch"))
            .args([
                "--host",
                "127.0.0.1",
                "--port",
                &port.to_string(),
                "--model",
                model,
                "--workers",
                "2",
            ])
            .args(extra)
            .envs(env.iter().copied())
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn()
            .expect("starting zerobatch");
        Proc {
            child,
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
            log: None,
        }
    }

    pub fn sigterm(&self) {
        let ok = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .unwrap()
            .success();
        assert!(ok, "kill -TERM failed");
    }

    pub fn wait_exit(&mut self, limit: Duration) -> (Option<i32>, Duration) {
        let t = Instant::now();
        while t.elapsed() < limit {
            if let Some(status) = self.child.try_wait().unwrap() {
                return (status.code(), t.elapsed());
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let _ = self.child.kill();
        (None, t.elapsed())
    }

    /// CPU time the process has used, every thread's including those that have exited
    /// (the process's CPU-time clock, nanoseconds; summing `/proc/PID/task/*` would drop an
    /// exited thread's time and could run backwards).
    pub fn cpu_ns(&self) -> u64 {
        let pid = self.child.id() as libc::pid_t;
        let mut clock: libc::clockid_t = 0;
        let mut t = libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        // SAFETY: both calls only write the values they are given pointers to.
        let ok = unsafe {
            libc::clock_getcpuclockid(pid, &mut clock) == 0
                && libc::clock_gettime(clock, &mut t) == 0
        };
        assert!(ok, "cannot read the CPU clock of process {pid}");
        t.tv_sec as u64 * 1_000_000_000 + t.tv_nsec as u64
    }
}

/// Numbers the log files of one test process's servers.
static LOG_SEQ: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if let Some(path) = self.log.take() {
            if std::thread::panicking() {
                // Captured by the test harness and shown with the failure.
                eprintln!(
                    "--- the server's log ---\n{}",
                    std::fs::read_to_string(&path).unwrap_or_default()
                );
            }
            let _ = std::fs::remove_file(path);
        }
    }
}

pub fn connect_until_up(addr: SocketAddr) {
    let t = Instant::now();
    while TcpStream::connect(addr).is_err() {
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "the port never opened"
        );
        std::thread::sleep(Duration::from_millis(1));
    }
}

impl Proc {
    /// A field of /proc/PID/status in kB (e.g. "VmRSS", "VmHWM").
    pub fn status_kb(&self, field: &str) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).unwrap();
        status
            .lines()
            .find(|l| l.starts_with(&format!("{field}:")))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no {field} in /proc status"))
    }

    /// Open file descriptors of the process.
    pub fn open_fds(&self) -> usize {
        std::fs::read_dir(format!("/proc/{}/fd", self.child.id()))
            .unwrap()
            .count()
    }
}

/// Two answers of an embedding route agree (vectors to float noise: batches may differ).
pub fn assert_same_answer(job: &serde_json::Value, http: &serde_json::Value, what: &str) {
    match (job, http) {
        (serde_json::Value::Number(a), serde_json::Value::Number(b)) => {
            let (a, b) = (a.as_f64().unwrap(), b.as_f64().unwrap());
            assert!((a - b).abs() < 1e-5, "{what}: {a} vs {b}");
        }
        (serde_json::Value::Array(a), serde_json::Value::Array(b)) => {
            assert_eq!(a.len(), b.len(), "{what}: lengths");
            for (i, (x, y)) in a.iter().zip(b).enumerate() {
                assert_same_answer(x, y, &format!("{what}[{i}]"));
            }
        }
        (serde_json::Value::Object(a), serde_json::Value::Object(b)) => {
            assert_eq!(a.len(), b.len(), "{what}: keys");
            for (k, v) in a {
                assert_same_answer(v, &b[k], &format!("{what}.{k}"));
            }
        }
        _ => assert_eq!(job, http, "{what}"),
    }
}

/// Runs the client check tests/clients/`script` with `python` against `url` (then `args`),
/// killed after `limit`: its exit status (`None`: killed) and its output, stdout then stderr.
pub fn run_client_script(
    python: &std::path::Path,
    script: &str,
    url: &str,
    args: &[&str],
    limit: Duration,
) -> (Option<std::process::ExitStatus>, String) {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/clients")
        .join(script);
    let mut child = Command::new(python)
        .arg(&path)
        .arg(url)
        .args(args)
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("starting {script}: {e}"));
    let t = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break Some(status);
        }
        if t.elapsed() > limit {
            let _ = child.kill();
            break None;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let out = child.wait_with_output().unwrap();
    let output = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (status, output)
}

/// The interpreter of the Python client checks (`ZEROBATCH_TEST_PYTHON`, which scripts/test.sh
/// sets to the pinned venv) if it can import `modules` (a comma-separated import list); else
/// None, after saying SKIPPED once for the test binary `test`. A missing or incomplete
/// interpreter fails under CI unless `ZEROBATCH_SKIP_PYTHON_CLIENTS=1` says to skip knowingly.
pub fn test_python(test: &str, modules: &str) -> Option<PathBuf> {
    let skip = |why: String| {
        let allowed = std::env::var("ZEROBATCH_SKIP_PYTHON_CLIENTS").as_deref() == Ok("1");
        assert!(
            allowed || std::env::var_os("CI").is_none(),
            "{why}: under CI the Python checks of {test} must run (scripts/test.sh builds the \
             venv); set ZEROBATCH_SKIP_PYTHON_CLIENTS=1 to skip them knowingly"
        );
        // Straight to the process's stderr: libtest captures eprintln! of passing tests.
        static SAID: Once = Once::new();
        SAID.call_once(|| {
            let _ = writeln!(
                std::io::stderr(),
                "\n**** SKIPPED {test} (Python checks): {why} ****\n**** run ./scripts/test.sh, or: \
                 ZEROBATCH_TEST_PYTHON=$(scripts/test-venv.sh | tail -n 1) cargo test --test {test} ****\n"
            );
        });
        None
    };
    let Some(python) = std::env::var_os("ZEROBATCH_TEST_PYTHON") else {
        return skip("ZEROBATCH_TEST_PYTHON is not set".into());
    };
    let python = PathBuf::from(python);
    let probe = Command::new(&python)
        .args(["-c", &format!("import {modules}")])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
    match probe {
        Ok(s) if s.success() => Some(python),
        Ok(_) => skip(format!(
            "{} cannot import {modules} (scripts/test-venv.sh installs them)",
            python.display()
        )),
        Err(e) => skip(format!("cannot run {}: {e}", python.display())),
    }
}
