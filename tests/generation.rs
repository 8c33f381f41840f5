//! Text generation end to end: a real server on the real SmolLM2-135M-Instruct (Q4_1 GGUF),
//! spoken to over real HTTP.
//!
//! - continuous batching changes nothing: a greedy request and a seeded sampling request give
//!   exactly the same tokens alone and while eight other requests (short, long, chat,
//!   sampled, streamed) join and leave the batch at different steps;
//! - the streams (TGI's `/generate_stream`, OpenAI's `stream: true`) carry the same tokens as
//!   the whole answers, in the documented event shapes;
//! - a client that goes away frees its sequence and its KV cache within a step or so;
//! - the answer shapes (upstream, TGI with details, OpenAI usage and stop sequences);
//! - errors: the status and a message naming the field;
//! - the generation metrics an autoscaler reads, and the queue: its 503 when full, its
//!   capacity and its gauge.
//!
//! The metrics registry is global to the process and the machine may have two cores, so the
//! tests of this binary run one at a time (`serial`).

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use common::*;
use serde_json::{json, Value};

static SERIAL: Mutex<()> = Mutex::new(());

/// Runs the tests one at a time: they read process-wide metrics.
fn serial() -> MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

const LONG_PROMPT: &str = "The history of the city goes back more than two thousand years. It was founded \
by traders on the banks of a wide river, grew into a market town in the middle ages, and became an \
industrial centre in the nineteenth century, when the railway arrived and the first factories opened \
along the water. Today the old town is";

/// TGI `/generate`, expecting 200.
fn tgi(addr: SocketAddr, inputs: &str, parameters: Value) -> Value {
    let r = post_json(
        addr,
        "/generate",
        &json!({ "inputs": inputs, "parameters": parameters }),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    r.json()
}

/// The token ids of a TGI answer with details.
fn ids(answer: &Value) -> Vec<u64> {
    answer["details"]["tokens"]
        .as_array()
        .unwrap_or_else(|| panic!("no details.tokens in {answer}"))
        .iter()
        .map(|t| t["id"].as_u64().expect("token id"))
        .collect()
}

/// The usage of a streamed answer to a prompt just answered whole: the same counts, and the
/// prompt's whole 16-token blocks (all but its last token) reused from the prefix cache.
fn assert_same_usage(streamed: &Value, whole: &Value) {
    for field in ["prompt_tokens", "completion_tokens", "total_tokens"] {
        assert_eq!(
            streamed[field], whole[field],
            "{field}: {streamed} vs {whole}"
        );
    }
    let prompt = streamed["prompt_tokens"].as_u64().unwrap();
    assert_eq!(
        streamed["prompt_tokens_details"]["cached_tokens"],
        (prompt - 1) / 16 * 16,
        "{streamed}"
    );
}

fn greedy_params() -> Value {
    json!({ "max_new_tokens": 24, "details": true, "ignore_eos": true, "do_sample": false })
}

fn sampled_params(seed: u64) -> Value {
    json!({
        "max_new_tokens": 24, "details": true, "ignore_eos": true,
        "do_sample": true, "temperature": 0.8, "top_k": 40, "seed": seed,
    })
}

const GREEDY_PROMPT: &str = "The capital of France is";
const SAMPLED_PROMPT: &str = "Write a short poem about the sea:";

/// A streamed answer: status, headers and the payload of every `data:` event.
struct Streamed {
    status: u16,
    headers: Vec<(String, String)>,
    events: Vec<String>,
    body: String,
}

impl Streamed {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// The events that are JSON (all but `[DONE]`).
    fn json_events(&self) -> Vec<Value> {
        self.events
            .iter()
            .filter(|e| e.as_str() != "[DONE]")
            .map(|e| serde_json::from_str(e).unwrap_or_else(|err| panic!("{err}: {e}")))
            .collect()
    }
}

fn write_post(stream: &mut TcpStream, path: &str, body: &Value, close: bool) {
    let body = body.to_string();
    let connection = if close { "Connection: close\r\n" } else { "" };
    let req = format!(
        "POST {path} HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\n{connection}Content-Length: {}\r\n\r\n{body}",
        body.len()
    );
    stream
        .write_all(req.as_bytes())
        .expect("writing the request");
}

/// Decodes a chunked transfer-encoded body.
fn dechunk(mut raw: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let line_end = raw
            .windows(2)
            .position(|w| w == b"\r\n")
            .expect("a chunk size line");
        let size_text = std::str::from_utf8(&raw[..line_end]).expect("ASCII chunk size");
        let size = usize::from_str_radix(size_text.split(';').next().unwrap().trim(), 16)
            .unwrap_or_else(|e| panic!("chunk size {size_text:?}: {e}"));
        raw = &raw[line_end + 2..];
        if size == 0 {
            return out;
        }
        out.extend_from_slice(&raw[..size]);
        raw = &raw[size + 2..];
    }
}

/// POSTs `body` to a streaming route and reads the whole stream (the server closes it).
fn stream(addr: SocketAddr, path: &str, body: &Value) -> Streamed {
    let mut s = TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    write_post(&mut s, path, body, true);
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).expect("reading the stream");
    let head_end = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("a response head");
    let head = String::from_utf8_lossy(&raw[..head_end]).into_owned();
    let mut lines = head.split("\r\n");
    let status: u16 = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|s| s.parse().ok())
        .expect("a status line");
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect();
    let rest = &raw[head_end + 4..];
    let chunked = headers.iter().any(|(k, v)| {
        k.eq_ignore_ascii_case("transfer-encoding") && v.eq_ignore_ascii_case("chunked")
    });
    let body = if chunked {
        dechunk(rest)
    } else {
        rest.to_vec()
    };
    let body = String::from_utf8(body).expect("a UTF-8 body");
    let events = body
        .split("\n\n")
        .filter(|e| !e.trim().is_empty())
        .map(|e| {
            e.strip_prefix("data:")
                .unwrap_or_else(|| panic!("not a data event: {e:?} in {body:?}"))
                .trim_start()
                .to_string()
        })
        .collect();
    Streamed {
        status,
        headers,
        events,
        body,
    }
}

fn metrics_text(addr: SocketAddr) -> String {
    let r = get(addr, "/metrics");
    assert_eq!(r.status, 200);
    r.text()
}

/// A sample without labels, e.g. `zerobatch_running_sequences`.
fn sample(text: &str, name: &str) -> f64 {
    let line = format!("{name} ");
    assert!(
        text.lines().any(|l| l.starts_with(&line)),
        "/metrics lacks {name}:\n{text}"
    );
    metric(text, &line)
}

/// Polls /metrics until `name` equals `want`, for at most `limit`; returns how long it took.
fn wait_for_gauge(addr: SocketAddr, name: &str, want: f64, limit: Duration) -> Duration {
    let t = Instant::now();
    loop {
        let text = metrics_text(addr);
        if sample(&text, name) == want {
            return t.elapsed();
        }
        assert!(
            t.elapsed() < limit,
            "{name} is not {want} after {limit:?}:\n{}",
            text.lines()
                .filter(|l| l.starts_with("zerobatch_running")
                    || l.starts_with("zerobatch_kv")
                    || l.starts_with("zerobatch_queue_depth"))
                .collect::<Vec<_>>()
                .join("\n")
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// The head of the answer on `s` if it comes within `limit`, else None (the request waits).
fn head_within(s: &mut TcpStream, limit: Duration) -> Option<String> {
    s.set_read_timeout(Some(Duration::from_millis(50))).unwrap();
    let t = Instant::now();
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    while t.elapsed() < limit {
        let text = String::from_utf8_lossy(&got);
        if let Some(end) = text.find("\r\n\r\n") {
            return Some(text[..end].to_string());
        }
        match s.read(&mut buf) {
            Ok(0) => panic!("connection closed: {text}"),
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(e) => panic!("reading: {e}"),
        }
    }
    assert!(
        got.is_empty(),
        "a partial answer: {}",
        String::from_utf8_lossy(&got)
    );
    None
}

/// Reads from `s` until `needle` appears (or panics after `limit`).
fn read_until(s: &mut TcpStream, needle: &str, limit: Duration) -> String {
    s.set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let t = Instant::now();
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        if String::from_utf8_lossy(&got).contains(needle) {
            return String::from_utf8_lossy(&got).into_owned();
        }
        assert!(
            t.elapsed() < limit,
            "no {needle:?} within {limit:?}: {}",
            String::from_utf8_lossy(&got)
        );
        match s.read(&mut buf) {
            Ok(0) => panic!(
                "connection closed before {needle:?}: {}",
                String::from_utf8_lossy(&got)
            ),
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(e) => panic!("reading: {e}"),
        }
    }
}

/// An error answer: its status and message.
fn error_of(r: &Resp) -> (u16, String) {
    let body = r.json();
    let message = body["error"]
        .as_str()
        .unwrap_or_else(|| panic!("no error message in {body}"))
        .to_string();
    (r.status, message)
}

fn assert_refused(addr: SocketAddr, path: &str, body: Value, status: u16, names: &str) {
    let r = post_json(addr, path, &body);
    let (got, message) = error_of(&r);
    assert_eq!(got, status, "{path} {body}: {message}");
    assert!(
        message.contains(names),
        "{path} {body}: the message should name {names:?}: {message}"
    );
}

/// A word of the greedy continuation `generated` (its `tokens`), well after its start, to use
/// as a stop sequence.
fn stop_word(tokens: &[Value], generated: &str) -> String {
    tokens[8..]
        .iter()
        .map(|t| t["text"].as_str().unwrap().trim())
        .find(|w| w.len() >= 3 && generated.find(w) > Some(generated.len() / 4))
        .unwrap_or_else(|| panic!("no word to stop at in {generated:?}"))
        .to_string()
}

// ---------------------------------------------------------------------------------------------
// 1. Batched == alone
// ---------------------------------------------------------------------------------------------

/// One request of the background load: its route and body.
fn background_load() -> Vec<(&'static str, Value)> {
    vec![
        (
            "/generate",
            json!({"inputs": "Hi", "parameters": {"max_new_tokens": 30, "ignore_eos": true}}),
        ),
        (
            "/generate",
            json!({"inputs": LONG_PROMPT, "parameters": {"max_new_tokens": 40, "ignore_eos": true}}),
        ),
        (
            "/v1/chat/completions",
            json!({"messages": [{"role": "user", "content": "Tell me about cats."}],
                   "max_tokens": 36, "seed": 3, "ignore_eos": true}),
        ),
        (
            "/generate",
            json!({"inputs": "Once upon a time", "parameters":
                   {"max_new_tokens": 44, "do_sample": true, "seed": 11, "top_p": 0.9, "ignore_eos": true}}),
        ),
        (
            "/v1/completions",
            json!({"prompt": "List three colours:", "max_tokens": 20, "temperature": 0, "ignore_eos": true}),
        ),
        (
            "/generate",
            json!({"inputs": format!("{LONG_PROMPT} {LONG_PROMPT}"),
                   "parameters": {"max_new_tokens": 16, "ignore_eos": true}}),
        ),
        ("/generate", json!({"text": "The weather today"})),
        (
            "/generate_stream",
            json!({"inputs": "1, 2, 3,", "parameters": {"max_new_tokens": 34, "ignore_eos": true}}),
        ),
    ]
}

/// The greedy and the sampled target, sent while the background load joins the batch at
/// staggered times; asserts the targets really ran among others.
fn batched_round(addr: SocketAddr) -> (Value, Value) {
    let start = Instant::now();
    let step = Duration::from_millis(35);
    let mut handles = Vec::new();
    for (i, (path, body)) in background_load().into_iter().enumerate() {
        let at = step * (i as u32);
        handles.push(std::thread::spawn(move || {
            std::thread::sleep(at);
            let began = start.elapsed();
            if path == "/generate_stream" {
                let st = stream(addr, path, &body);
                assert_eq!(st.status, 200, "{path}: {}", st.body);
                assert!(st.body.contains("\"finish_reason\""), "{}", st.body);
            } else {
                let r = post_json(addr, path, &body);
                assert_eq!(r.status, 200, "{path}: {}", r.text());
            }
            (began, start.elapsed())
        }));
    }
    let target = |at: Duration, prompt: &'static str, params: Value| {
        std::thread::spawn(move || {
            std::thread::sleep(at);
            let began = start.elapsed();
            let answer = tgi(addr, prompt, params);
            (answer, began, start.elapsed())
        })
    };
    let greedy = target(step * 3 + step / 2, GREEDY_PROMPT, greedy_params());
    let sampled = target(step * 5 + step / 3, SAMPLED_PROMPT, sampled_params(7));
    let (greedy, g_from, g_to) = greedy.join().expect("greedy target");
    let (sampled, s_from, s_to) = sampled.join().expect("sampled target");
    let spans: Vec<(Duration, Duration)> = handles
        .into_iter()
        .map(|h| h.join().expect("background request"))
        .collect();
    // The targets really ran with others, which joined and left around them.
    for (name, from, to) in [("greedy", g_from, g_to), ("sampled", s_from, s_to)] {
        let overlapping = spans.iter().filter(|(a, b)| *a < to && from < *b).count();
        assert!(
            overlapping >= 4,
            "the {name} target ran with only {overlapping} others: {spans:?} vs {from:?}..{to:?}"
        );
    }
    (greedy, sampled)
}

#[test]
fn batched_requests_give_the_tokens_they_give_alone() {
    let _serial = serial();
    let s = smollm2_server(|_| {});
    let addr = s.addr;

    let greedy_alone = tgi(addr, GREEDY_PROMPT, greedy_params());
    let sampled_alone = tgi(addr, SAMPLED_PROMPT, sampled_params(7));
    assert_eq!(ids(&greedy_alone).len(), 24);
    assert_eq!(ids(&sampled_alone).len(), 24);
    assert_eq!(greedy_alone["details"]["finish_reason"], "length");
    assert_eq!(sampled_alone["details"]["seed"], 7);

    // The same seed twice: the same text; other seeds: other texts.
    let again = tgi(addr, SAMPLED_PROMPT, sampled_params(7));
    assert_eq!(again["generated_text"], sampled_alone["generated_text"]);
    assert_eq!(ids(&again), ids(&sampled_alone));
    let mut texts: Vec<String> = [1u64, 2, 3]
        .iter()
        .map(|&seed| {
            tgi(addr, SAMPLED_PROMPT, sampled_params(seed))["generated_text"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect();
    texts.push(sampled_alone["generated_text"].as_str().unwrap().into());
    texts.sort();
    texts.dedup();
    assert!(
        texts.len() >= 3,
        "four seeds gave only {} texts: {texts:?}",
        texts.len()
    );

    let check = |what: &str, (greedy, sampled): (Value, Value)| {
        assert_eq!(
            ids(&greedy),
            ids(&greedy_alone),
            "{what}: greedy tokens changed in a batch: {:?} vs {:?} alone",
            greedy["generated_text"],
            greedy_alone["generated_text"]
        );
        assert_eq!(greedy["generated_text"], greedy_alone["generated_text"]);
        assert_eq!(
            ids(&sampled),
            ids(&sampled_alone),
            "{what}: seeded sampling changed in a batch: {:?} vs {:?} alone",
            sampled["generated_text"],
            sampled_alone["generated_text"]
        );
        assert_eq!(sampled["generated_text"], sampled_alone["generated_text"]);
    };
    check("default prefill chunk", batched_round(addr));
    drop(s);

    // Again with prompts read 16 tokens a step: long prompts are prefilled in chunks across
    // steps while the targets decode, and a target's own prompt may be split differently
    // than when it ran alone.
    let s = smollm2_server(|c| c.max_prefill_tokens = 16);
    check("16-token prefill chunks", batched_round(s.addr));
}

// ---------------------------------------------------------------------------------------------
// 2. Streams
// ---------------------------------------------------------------------------------------------

#[test]
fn streams_carry_the_same_tokens_as_whole_answers() {
    let _serial = serial();
    let s = smollm2_server(|_| {});
    let addr = s.addr;

    // TGI: one event per token, the last with the whole text and the finish reason.
    let body = json!({"inputs": GREEDY_PROMPT, "parameters": greedy_params()});
    let whole = tgi(addr, GREEDY_PROMPT, greedy_params());
    let whole_tgi = whole.clone();
    let st = stream(addr, "/generate_stream", &body);
    assert_eq!(st.status, 200, "{}", st.body);
    assert!(
        st.header("content-type")
            .is_some_and(|c| c.starts_with("text/event-stream")),
        "{:?}",
        st.headers
    );
    let events = st.json_events();
    assert_eq!(events.len(), 24, "one event per token: {}", st.body);
    assert_eq!(events.len(), st.events.len(), "no [DONE] in TGI's stream");
    let streamed_ids: Vec<u64> = events
        .iter()
        .map(|e| e["token"]["id"].as_u64().unwrap())
        .collect();
    assert_eq!(streamed_ids, ids(&whole));
    for (i, e) in events.iter().enumerate() {
        assert_eq!(e["index"], i + 1);
        assert!(e["token"]["text"].is_string() && e["token"]["logprob"].is_number());
        if i + 1 < events.len() {
            assert!(e["generated_text"].is_null(), "event {i}: {e}");
            assert!(e["details"].is_null(), "event {i}: {e}");
        }
    }
    let concatenated: String = events
        .iter()
        .map(|e| e["token"]["text"].as_str().unwrap())
        .collect();
    assert_eq!(concatenated, whole["generated_text"].as_str().unwrap());
    let last = events.last().unwrap();
    assert_eq!(last["generated_text"], whole["generated_text"]);
    assert_eq!(last["details"]["finish_reason"], "length");
    assert_eq!(last["details"]["generated_tokens"], 24);

    // OpenAI completions: text chunks, a finish reason, then [DONE].
    let completion =
        json!({"prompt": GREEDY_PROMPT, "max_tokens": 12, "temperature": 0, "ignore_eos": true});
    let r = post_json(addr, "/v1/completions", &completion);
    assert_eq!(r.status, 200, "{}", r.text());
    let whole = r.json();
    let mut streamed_req = completion.clone();
    streamed_req["stream"] = json!(true);
    streamed_req["stream_options"] = json!({"include_usage": true});
    let st = stream(addr, "/v1/completions", &streamed_req);
    assert_eq!(st.status, 200, "{}", st.body);
    assert!(st
        .header("content-type")
        .is_some_and(|c| c.starts_with("text/event-stream")));
    assert_eq!(st.events.last().map(String::as_str), Some("[DONE]"));
    let chunks = st.json_events();
    let text: String = chunks
        .iter()
        .filter_map(|c| c["choices"][0]["text"].as_str())
        .collect();
    assert_eq!(text, whole["choices"][0]["text"].as_str().unwrap());
    assert!(chunks.iter().all(|c| c["object"] == "text_completion"));
    let finishes: Vec<&Value> = chunks
        .iter()
        .map(|c| &c["choices"][0]["finish_reason"])
        .filter(|f| !f.is_null())
        .collect();
    assert_eq!(finishes, [&json!("length")]);
    let usage = &chunks.last().unwrap()["usage"];
    assert_eq!(usage["completion_tokens"], 12, "{}", st.body);
    assert_same_usage(usage, &whole["usage"]);

    // Stop sequences in streams: TGI ends with stop_sequence; OpenAI never shows the stop
    // sequence and ends with "stop", like the whole answers.
    let greedy_text = whole_tgi["generated_text"].as_str().unwrap().to_string();
    let stop = stop_word(
        whole_tgi["details"]["tokens"].as_array().unwrap(),
        &greedy_text,
    );
    let mut params = greedy_params();
    params["stop"] = json!([stop]);
    let whole_stopped = tgi(addr, GREEDY_PROMPT, params.clone());
    let st = stream(
        addr,
        "/generate_stream",
        &json!({"inputs": GREEDY_PROMPT, "parameters": params}),
    );
    let events = st.json_events();
    let last = events.last().unwrap();
    assert_eq!(
        last["details"]["finish_reason"], "stop_sequence",
        "{}",
        st.body
    );
    assert_eq!(last["generated_text"], whole_stopped["generated_text"]);
    assert_eq!(
        events.len() as u64,
        whole_stopped["details"]["generated_tokens"]
            .as_u64()
            .unwrap()
    );
    let body = json!({"prompt": GREEDY_PROMPT, "max_tokens": 24, "temperature": 0,
                      "ignore_eos": true, "stop": [stop]});
    let r = post_json(addr, "/v1/completions", &body);
    assert_eq!(r.status, 200, "{}", r.text());
    let whole = r.json();
    let cut = greedy_text.find(&stop).unwrap();
    assert_eq!(
        whole["choices"][0]["text"].as_str().unwrap(),
        &greedy_text[..cut]
    );
    let mut streamed_req = body.clone();
    streamed_req["stream"] = json!(true);
    let st = stream(addr, "/v1/completions", &streamed_req);
    let chunks = st.json_events();
    let text: String = chunks
        .iter()
        .filter_map(|c| c["choices"][0]["text"].as_str())
        .collect();
    assert_eq!(text, &greedy_text[..cut], "{}", st.body);
    assert_eq!(
        chunks.last().unwrap()["choices"][0]["finish_reason"],
        "stop"
    );
    assert_eq!(st.events.last().map(String::as_str), Some("[DONE]"));

    // OpenAI chat: the first chunk opens the assistant's message.
    let chat = json!({"messages": [{"role": "user", "content": "What is the capital of France?"}],
                      "max_tokens": 16, "temperature": 0});
    let r = post_json(addr, "/v1/chat/completions", &chat);
    assert_eq!(r.status, 200, "{}", r.text());
    let whole = r.json();
    assert_eq!(whole["object"], "chat.completion");
    assert_eq!(whole["choices"][0]["message"]["role"], "assistant");
    let mut streamed_req = chat.clone();
    streamed_req["stream"] = json!(true);
    streamed_req["stream_options"] = json!({"include_usage": true});
    let st = stream(addr, "/v1/chat/completions", &streamed_req);
    assert_eq!(st.status, 200, "{}", st.body);
    assert_eq!(st.events.last().map(String::as_str), Some("[DONE]"));
    let chunks = st.json_events();
    assert_eq!(chunks[0]["choices"][0]["delta"]["role"], "assistant");
    assert!(chunks
        .iter()
        .all(|c| c["object"] == "chat.completion.chunk"));
    assert!(chunks[1..]
        .iter()
        .all(|c| c["choices"][0]["delta"].get("role").is_none()));
    let content: String = chunks
        .iter()
        .filter_map(|c| c["choices"][0]["delta"]["content"].as_str())
        .collect();
    assert_eq!(
        content,
        whole["choices"][0]["message"]["content"].as_str().unwrap()
    );
    let usage = &chunks.last().unwrap()["usage"];
    assert_same_usage(usage, &whole["usage"]);
    let last_reason = &chunks[chunks.len() - 2]["choices"][0]["finish_reason"];
    assert_eq!(last_reason, &whole["choices"][0]["finish_reason"]);
    assert!(
        last_reason == "stop" || last_reason == "length",
        "{last_reason}"
    );
}

// ---------------------------------------------------------------------------------------------
// 3. A client that leaves frees its sequence
// ---------------------------------------------------------------------------------------------

#[test]
fn a_client_that_leaves_frees_its_sequence() {
    let _serial = serial();
    let s = smollm2_server(|_| {});
    let addr = s.addr;
    let long = json!({"inputs": "Count slowly:", "parameters": {"max_new_tokens": 4000, "ignore_eos": true}});

    // A stream dropped after its first event.
    let mut sock = TcpStream::connect(addr).unwrap();
    write_post(&mut sock, "/generate_stream", &long, false);
    let head = read_until(&mut sock, "data:", Duration::from_secs(10));
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    let text = metrics_text(addr);
    assert_eq!(sample(&text, "zerobatch_running_sequences"), 1.0);
    assert!(sample(&text, "zerobatch_kv_cache_tokens") > 0.0, "{text}");
    drop(sock);
    let took = wait_for_gauge(
        addr,
        "zerobatch_running_sequences",
        0.0,
        Duration::from_secs(3),
    );
    eprintln!("dropped stream freed in {took:?}");
    assert_eq!(
        sample(&metrics_text(addr), "zerobatch_kv_cache_tokens"),
        0.0
    );

    // A whole-answer request whose client leaves while it runs.
    let mut sock = TcpStream::connect(addr).unwrap();
    write_post(&mut sock, "/generate", &long, false);
    wait_for_gauge(
        addr,
        "zerobatch_running_sequences",
        1.0,
        Duration::from_secs(10),
    );
    let produced = |addr| sample(&metrics_text(addr), "zerobatch_generated_tokens_total");
    let before = produced(addr);
    let t = Instant::now();
    while produced(addr) <= before {
        assert!(
            t.elapsed() < Duration::from_secs(5),
            "the sequence is not generating"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    drop(sock);
    let took = wait_for_gauge(
        addr,
        "zerobatch_running_sequences",
        0.0,
        Duration::from_secs(3),
    );
    eprintln!("abandoned /generate freed in {took:?}");
    assert_eq!(
        sample(&metrics_text(addr), "zerobatch_kv_cache_tokens"),
        0.0
    );
    // Nothing generates for nobody. The step that was running when the gauge fell may still
    // count its token (CI saw one token after the gauge read 0): let the counter settle for
    // 50 ms first. A sequence still generating for nobody adds a token every few ms, so it
    // never settles and the check below fails.
    let mut idle = produced(addr);
    let settle = Instant::now();
    loop {
        std::thread::sleep(Duration::from_millis(50));
        let now = produced(addr);
        if now == idle || settle.elapsed() > Duration::from_secs(1) {
            break;
        }
        idle = now;
    }
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(produced(addr), idle);

    // The server still answers.
    let answer = tgi(
        addr,
        GREEDY_PROMPT,
        json!({"max_new_tokens": 3, "details": true}),
    );
    assert!(answer["details"]["generated_tokens"].as_u64().unwrap() >= 1);
}

// ---------------------------------------------------------------------------------------------
// 4. Answer shapes
// ---------------------------------------------------------------------------------------------

fn token_count(addr: SocketAddr, text: &str, add_special: bool) -> usize {
    let r = post_json(
        addr,
        "/tokenize",
        &json!({"inputs": text, "add_special_tokens": add_special}),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    r.json()[0].as_array().expect("one list of tokens").len()
}

#[test]
fn answer_shapes_details_stop_sequences_and_usage() {
    let _serial = serial();
    let s = smollm2_server(|_| {});
    let addr = s.addr;

    // The upstream shape: the prompt and its continuation.
    let r = post_json(addr, "/generate", &json!({"text": "Once upon a time"}));
    assert_eq!(r.status, 200, "{}", r.text());
    let body = r.json();
    let text = body["generated_text"].as_str().expect("generated_text");
    assert!(text.starts_with("Once upon a time"), "{text}");
    assert!(text.len() > "Once upon a time".len(), "{text}");
    assert_eq!(body.as_object().unwrap().len(), 1, "{body}");

    // TGI: details, and return_full_text.
    let answer = tgi(addr, GREEDY_PROMPT, greedy_params());
    let generated = answer["generated_text"].as_str().unwrap().to_string();
    let d = &answer["details"];
    assert_eq!(d["finish_reason"], "length");
    assert_eq!(d["generated_tokens"], 24);
    assert!(d["seed"].is_null(), "greedy has no seed: {d}");
    let tokens = d["tokens"].as_array().unwrap();
    assert_eq!(tokens.len(), 24);
    for t in tokens {
        assert!(t["id"].is_u64(), "{t}");
        assert!(t["text"].is_string(), "{t}");
        assert!(t["special"].is_boolean(), "{t}");
        let lp = t["logprob"].as_f64().unwrap_or_else(|| panic!("{t}"));
        assert!(lp <= 0.0 && lp.is_finite(), "{t}");
    }
    let texts: String = tokens.iter().map(|t| t["text"].as_str().unwrap()).collect();
    assert_eq!(texts, generated);
    let mut full_params = greedy_params();
    full_params["return_full_text"] = json!(true);
    let full = tgi(addr, GREEDY_PROMPT, full_params);
    assert_eq!(
        full["generated_text"].as_str().unwrap(),
        format!("{GREEDY_PROMPT}{generated}")
    );
    let plain = tgi(addr, GREEDY_PROMPT, json!({"max_new_tokens": 5}));
    assert_eq!(plain.as_object().unwrap().len(), 1, "no details: {plain}");

    // A seed is reported when sampling, given or not.
    let sampled = tgi(addr, SAMPLED_PROMPT, sampled_params(7));
    assert_eq!(sampled["details"]["seed"], 7);
    let unseeded = tgi(
        addr,
        SAMPLED_PROMPT,
        json!({"max_new_tokens": 4, "do_sample": true, "details": true}),
    );
    let seed = unseeded["details"]["seed"]
        .as_u64()
        .unwrap_or_else(|| panic!("no seed in {}", unseeded["details"]));
    // The reported seed is the one used: it gives the same tokens again.
    let replay = tgi(
        addr,
        SAMPLED_PROMPT,
        json!({"max_new_tokens": 4, "do_sample": true, "details": true, "seed": seed}),
    );
    assert_eq!(ids(&replay), ids(&unseeded), "seed {seed}");
    // Sampling from the top token only is greedy decoding.
    let mut top1 = sampled_params(99);
    top1["top_k"] = json!(1);
    let mut greedy_same = greedy_params();
    greedy_same["max_new_tokens"] = json!(24);
    assert_eq!(
        ids(&tgi(addr, SAMPLED_PROMPT, top1)),
        ids(&tgi(addr, SAMPLED_PROMPT, greedy_same))
    );
    // TGI's `stream` field on /generate is accepted and changes nothing.
    let r = post_json(
        addr,
        "/generate",
        &json!({"inputs": GREEDY_PROMPT, "stream": true, "parameters": greedy_params()}),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(ids(&r.json()), ids(&answer));

    // The model ends its turn: eos_token.
    let chat_prompt = "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n<|im_start|>user\nWhat is 2+2?<|im_end|>\n<|im_start|>assistant\n";
    let eos = tgi(
        addr,
        chat_prompt,
        json!({"max_new_tokens": 60, "details": true}),
    );
    assert_eq!(eos["details"]["finish_reason"], "eos_token", "{eos}");
    let n = eos["details"]["generated_tokens"].as_u64().unwrap();
    assert!(n < 60, "{eos}");
    let last = eos["details"]["tokens"].as_array().unwrap().last().unwrap();
    assert_eq!(last["special"], true, "{last}");

    // Stop sequences: a word from the middle of the greedy continuation.
    let stop = stop_word(tokens, &generated);
    let cut = generated.find(&stop).unwrap();
    let mut params = greedy_params();
    params["stop"] = json!([stop]);
    let stopped = tgi(addr, GREEDY_PROMPT, params);
    let stopped_text = stopped["generated_text"].as_str().unwrap();
    assert_eq!(stopped["details"]["finish_reason"], "stop_sequence");
    assert!(
        stopped_text.contains(&stop),
        "TGI keeps the stop sequence: {stopped_text:?} ({stop:?})"
    );
    assert!(generated.starts_with(stopped_text), "{stopped_text:?}");
    assert!(
        stopped["details"]["generated_tokens"].as_u64().unwrap() < 24,
        "{stopped}"
    );

    let r = post_json(
        addr,
        "/v1/completions",
        &json!({"prompt": GREEDY_PROMPT, "max_tokens": 24, "temperature": 0,
                "ignore_eos": true, "stop": stop}),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let c = r.json();
    assert_eq!(c["choices"][0]["finish_reason"], "stop", "{c}");
    assert_eq!(
        c["choices"][0]["text"].as_str().unwrap(),
        &generated[..cut],
        "OpenAI leaves the stop sequence out"
    );
    assert_eq!(c["object"], "text_completion");

    // Usage: prompt tokens as /tokenize counts them; completion tokens as asked.
    let r = post_json(
        addr,
        "/v1/completions",
        &json!({"prompt": LONG_PROMPT, "max_tokens": 9, "temperature": 0, "ignore_eos": true}),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let c = r.json();
    let prompt_tokens = token_count(addr, LONG_PROMPT, true);
    assert!(prompt_tokens >= 40, "{prompt_tokens}");
    assert_eq!(c["usage"]["prompt_tokens"], prompt_tokens);
    assert_eq!(c["usage"]["completion_tokens"], 9);
    assert_eq!(c["usage"]["total_tokens"], prompt_tokens + 9);
    assert_eq!(c["choices"][0]["finish_reason"], "length");
    let echoed = post_json(
        addr,
        "/v1/completions",
        &json!({"prompt": LONG_PROMPT, "max_tokens": 9, "temperature": 0,
                "ignore_eos": true, "echo": true}),
    )
    .json();
    assert_eq!(
        echoed["choices"][0]["text"].as_str().unwrap(),
        format!("{LONG_PROMPT}{}", c["choices"][0]["text"].as_str().unwrap())
    );

    // Chat usage counts the prompt the template made (SmolLM2's ChatML with its default
    // system message).
    let r = post_json(
        addr,
        "/v1/chat/completions",
        &json!({"messages": [{"role": "user", "content": "Hi!"}], "max_tokens": 5,
                "temperature": 0, "ignore_eos": true}),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let c = r.json();
    let rendered = "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n<|im_start|>user\nHi!<|im_end|>\n<|im_start|>assistant\n";
    assert_eq!(
        c["usage"]["prompt_tokens"],
        token_count(addr, rendered, false)
    );
    assert_eq!(c["usage"]["completion_tokens"], 5);
    assert_eq!(c["choices"][0]["finish_reason"], "length");
}

// ---------------------------------------------------------------------------------------------
// 5. Errors
// ---------------------------------------------------------------------------------------------

#[test]
fn invalid_requests_and_limits_get_the_right_status_naming_the_field() {
    let _serial = serial();
    let s = smollm2_server(|c| c.max_batch_total_tokens = 256);
    let addr = s.addr;

    let tgi_with = |parameters: Value| json!({"inputs": "Hello", "parameters": parameters});
    let cases: Vec<(&str, Value, &str)> = vec![
        (
            "/generate",
            tgi_with(json!({"temperature": -1.0})),
            "temperature",
        ),
        (
            "/generate_stream",
            tgi_with(json!({"temperature": -0.5})),
            "temperature",
        ),
        (
            "/v1/completions",
            json!({"prompt": "a", "temperature": -0.5}),
            "temperature",
        ),
        ("/generate", tgi_with(json!({"top_p": 0.0})), "top_p"),
        ("/generate", tgi_with(json!({"top_p": 1.5})), "top_p"),
        (
            "/v1/chat/completions",
            json!({"messages": [{"role": "user", "content": "x"}], "top_p": 1.5}),
            "top_p",
        ),
        ("/generate", tgi_with(json!({"top_k": 0})), "top_k"),
        (
            "/generate",
            tgi_with(json!({"max_new_tokens": 0})),
            "max_new_tokens",
        ),
        (
            "/generate",
            tgi_with(json!({"bogus_setting": 1})),
            "bogus_setting",
        ),
        (
            "/generate",
            json!({"inputs": "a", "extra_field": 1}),
            "extra_field",
        ),
        (
            "/v1/completions",
            json!({"prompt": "a", "n": 2}),
            "n must be 1",
        ),
        (
            "/v1/chat/completions",
            json!({"messages": [{"role": "user", "content": "x"}], "n": 2}),
            "n must be 1",
        ),
        (
            "/v1/chat/completions",
            json!({"messages": [{"role": "user", "content": "x"}], "foo": 1}),
            "foo",
        ),
    ];
    for (path, body, names) in cases {
        assert_refused(addr, path, body, 400, names);
    }

    // A prompt longer than the context this server allows (the budget): 413.
    let long_prompt = "word ".repeat(300);
    assert!(token_count(addr, &long_prompt, true) >= 300);
    for (path, body) in [
        ("/generate", json!({"inputs": long_prompt})),
        ("/generate_stream", json!({"inputs": long_prompt})),
        ("/v1/completions", json!({"prompt": long_prompt})),
        (
            "/v1/chat/completions",
            json!({"messages": [{"role": "user", "content": long_prompt}]}),
        ),
    ] {
        assert_refused(addr, path, body, 413, "prompt");
    }
    // More new tokens than the room the prompt leaves: 413 naming the field.
    assert_refused(
        addr,
        "/generate",
        tgi_with(json!({"max_new_tokens": 300})),
        413,
        "max_new_tokens",
    );
    assert_refused(
        addr,
        "/v1/completions",
        json!({"prompt": "Hello", "max_tokens": 300}),
        413,
        "max_tokens",
    );
    // Exactly the room the prompt leaves is fine; one more is not.
    let near_full = "word ".repeat(240);
    let room = 256 - token_count(addr, &near_full, true);
    assert!((2..=20).contains(&room), "{room}");
    let r = post_json(
        addr,
        "/generate",
        &json!({"inputs": near_full, "parameters": {"max_new_tokens": room, "ignore_eos": true, "details": true}}),
    );
    assert_eq!(r.status, 200, "max_new_tokens {room}: {}", r.text());
    assert_eq!(r.json()["details"]["generated_tokens"], room);
    assert_refused(
        addr,
        "/generate",
        json!({"inputs": near_full, "parameters": {"max_new_tokens": room + 1}}),
        413,
        "max_new_tokens",
    );

    // Encoder routes on a generation model: 404, naming the model's task and its routes.
    for (path, body) in [
        ("/embed", json!({"inputs": "x"})),
        ("/embed_all", json!({"inputs": "x"})),
        ("/v1/embeddings", json!({"input": "x"})),
        ("/rerank", json!({"query": "q", "texts": ["x"]})),
        ("/v1/rerank", json!({"query": "q", "documents": ["x"]})),
        ("/predict", json!({"inputs": "x"})),
    ] {
        assert_refused(
            addr,
            path,
            body,
            404,
            "is a text-generation model: use /generate",
        );
    }

    // /info and /tokenize on a generation model.
    let info = get(addr, "/info").json();
    assert_eq!(info["task"], "text-generation", "{info}");
    assert!(info["pooling"].is_null(), "{info}");
    assert!(info["dimensions"].is_null(), "{info}");
    assert_eq!(info["max_batch_total_tokens"], 256);
    // The Q4_1 file's 4-bit layers run as stored, whatever `dtype` (for the others) says.
    let formats = &info["weight_formats"];
    for kind in ["attention", "feed_forward"] {
        let format = formats[kind].as_str().unwrap_or_default();
        assert!(format.starts_with("q4_1"), "{kind}: {info}");
    }
    // SmolLM2's embedding table is Q8_0 and tied to the LM head: held once, read from the
    // int8 head's rows.
    assert!(
        formats["token_embedding"]
            .as_str()
            .is_some_and(|f| f.starts_with("q8_0") && f.contains("tied int8 LM head")),
        "{info}"
    );
    let input = "Hello, world! Héllo wörld 123.";
    let r = post_json(addr, "/tokenize", &json!({"inputs": input}));
    assert_eq!(r.status, 200, "{}", r.text());
    let toks = r.json()[0].as_array().expect("one list").clone();
    assert!(toks.len() >= 8, "{toks:?}");
    let mut covered = 0;
    for t in toks
        .iter()
        .filter(|t| !(t["special"] == true && t["start"] == t["stop"]))
    {
        let (start, stop) = (
            t["start"].as_u64().unwrap() as usize,
            t["stop"].as_u64().unwrap() as usize,
        );
        assert!(t["id"].is_u64(), "{t}");
        assert_eq!(start, covered, "tokens follow each other: {toks:?}");
        assert_eq!(
            &input[start..stop],
            t["text"].as_str().unwrap(),
            "the offsets slice the input: {t}"
        );
        covered = stop;
    }
    assert_eq!(covered, input.len(), "{toks:?}");
    // /decode gives the text back from /tokenize's ids (SmolLM2's byte-level BPE keeps every
    // byte), and an end-of-turn token is left out unless asked for.
    let ids: Vec<u64> = toks.iter().map(|t| t["id"].as_u64().unwrap()).collect();
    let r = post_json(addr, "/decode", &json!({"ids": ids}));
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json(), json!([input]));
    let im_end = post_json(
        addr,
        "/tokenize",
        &json!({"inputs": "<|im_end|>", "add_special_tokens": false}),
    )
    .json()[0][0]["id"]
        .as_u64()
        .unwrap();
    let r = post_json(
        addr,
        "/decode",
        &json!({"ids": [[im_end], [im_end]], "skip_special_tokens": false}),
    );
    assert_eq!(
        r.json(),
        json!(["<|im_end|>", "<|im_end|>"]),
        "{}",
        r.text()
    );
    assert_eq!(
        post_json(addr, "/decode", &json!({"ids": [im_end]})).json(),
        json!([""])
    );
    assert_refused(
        addr,
        "/decode",
        json!({"ids": [49152]}),
        400,
        "outside the vocabulary of 49152",
    );

    // Generation routes on an embedding model.
    drop(s);
    let e = start(|_| {});
    for (path, body) in [
        ("/generate", json!({"inputs": "x"})),
        ("/generate", json!({"text": "x"})),
        ("/generate_stream", json!({"inputs": "x"})),
        ("/v1/completions", json!({"prompt": "x"})),
        (
            "/v1/chat/completions",
            json!({"messages": [{"role": "user", "content": "x"}]}),
        ),
    ] {
        assert_refused(e.addr, path, body, 404, "is an embedding model: use /embed");
    }
}

#[test]
fn a_full_queue_answers_503_with_retry_after_and_recovers() {
    let _serial = serial();
    let s = smollm2_server(|c| {
        c.queue_capacity = 1;
        c.max_client_batch = 1;
        c.max_batch_size = 1;
    });
    let addr = s.addr;
    let long = json!({"inputs": "Count slowly:", "parameters": {"max_new_tokens": 4000, "ignore_eos": true}});

    // The first runs; later ones wait (one taken for admission, one in the queue) until the
    // queue refuses.
    let mut held = Vec::new();
    let mut first = TcpStream::connect(addr).unwrap();
    write_post(&mut first, "/generate_stream", &long, false);
    read_until(&mut first, "data:", Duration::from_secs(10));
    held.push(first);
    let mut refused = None;
    for _ in 0..4 {
        let mut sock = TcpStream::connect(addr).unwrap();
        write_post(&mut sock, "/generate_stream", &long, false);
        // A waiting stream has no answer yet (it starts with its first token); a refused one
        // has its 503 at once.
        match head_within(&mut sock, Duration::from_millis(700)) {
            Some(head) => {
                assert!(head.starts_with("HTTP/1.1 503"), "{head}");
                refused = Some(head);
                break;
            }
            None => held.push(sock),
        }
    }
    let head = refused.expect("a full queue answers 503");
    assert!(
        held.len() >= 2,
        "at least one request waited: {}",
        held.len()
    );
    assert!(
        head.to_ascii_lowercase().contains("retry-after: 1"),
        "{head}"
    );
    // The same through a whole-answer route.
    let r = post_json(addr, "/generate", &long);
    let (status, message) = error_of(&r);
    assert_eq!(status, 503, "{message}");
    assert!(r.header("retry-after").is_some());
    assert!(message.contains("queue"), "{message}");
    assert_eq!(r.json()["error_type"], "queue_full");
    assert_eq!(
        sample(&metrics_text(addr), "zerobatch_running_sequences"),
        1.0
    );

    // Every client leaves: nothing runs, nothing waits, and the server serves again.
    drop(held);
    wait_for_gauge(
        addr,
        "zerobatch_running_sequences",
        0.0,
        Duration::from_secs(3),
    );
    wait_for_gauge(addr, "zerobatch_queue_depth", 0.0, Duration::from_secs(3));
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(
        sample(&metrics_text(addr), "zerobatch_running_sequences"),
        0.0,
        "a request whose client left was admitted"
    );
    let answer = tgi(
        addr,
        GREEDY_PROMPT,
        json!({"max_new_tokens": 3, "details": true}),
    );
    assert_eq!(answer["details"]["generated_tokens"], 3);
}

// ---------------------------------------------------------------------------------------------
// 6. Metrics
// ---------------------------------------------------------------------------------------------

#[test]
fn generation_metrics_count_tokens_and_show_the_batch() {
    let _serial = serial();
    let s = smollm2_server(|c| c.max_batch_total_tokens = 4096);
    let addr = s.addr;

    let before = metrics_text(addr);
    assert_eq!(sample(&before, "zerobatch_kv_cache_budget_tokens"), 4096.0);
    let count_before = metric(&before, "zerobatch_generated_tokens_total");
    let answer = tgi(
        addr,
        LONG_PROMPT,
        json!({"max_new_tokens": 17, "ignore_eos": true, "details": true}),
    );
    assert_eq!(answer["details"]["generated_tokens"], 17);
    // The engine records a step's metrics just after it sends the step's tokens, so the
    // answer may arrive a moment before its last token is counted.
    wait_for_gauge(
        addr,
        "zerobatch_running_sequences",
        0.0,
        Duration::from_secs(1),
    );
    let t = Instant::now();
    let mut after = metrics_text(addr);
    while metric(&after, "zerobatch_generated_tokens_total") - count_before < 17.0
        && t.elapsed() < Duration::from_secs(1)
    {
        std::thread::sleep(Duration::from_millis(5));
        after = metrics_text(addr);
    }
    assert_eq!(
        metric(&after, "zerobatch_generated_tokens_total") - count_before,
        17.0,
        "{after}"
    );
    for name in [
        "zerobatch_generated_tokens_total",
        "zerobatch_time_to_first_token_seconds_bucket",
        "zerobatch_time_to_first_token_seconds_count",
        "zerobatch_inter_token_seconds_bucket",
        "zerobatch_inter_token_seconds_count",
        "zerobatch_batch_size_bucket",
        "zerobatch_kv_cache_tokens",
        "zerobatch_running_sequences",
        "zerobatch_kv_cache_budget_tokens",
    ] {
        assert!(after.contains(name), "/metrics lacks {name}:\n{after}");
    }
    assert!(metric(&after, "zerobatch_time_to_first_token_seconds_count") >= 1.0);
    assert!(
        metric(&after, "zerobatch_inter_token_seconds_count")
            - metric(&before, "zerobatch_inter_token_seconds_count")
            >= 16.0
    );
    assert!(
        metric(&after, "zerobatch_batch_size_count")
            - metric(&before, "zerobatch_batch_size_count")
            >= 17.0
    );
    assert_eq!(sample(&after, "zerobatch_running_sequences"), 0.0);
    assert_eq!(sample(&after, "zerobatch_kv_cache_tokens"), 0.0);
    assert!(
        metric(
            &after,
            "zerobatch_requests_total{route=\"/generate\",status=\"200\"}"
        ) >= 1.0
    );
}

/// Waits until the engine has finished `n` more steps (each makes one token here), so that it
/// has looked at its queue since.
fn wait_steps(addr: SocketAddr, n: f64) {
    let produced = || sample(&metrics_text(addr), "zerobatch_generated_tokens_total");
    let start = produced();
    let t = Instant::now();
    while produced() < start + n {
        assert!(
            t.elapsed() < Duration::from_secs(5),
            "the engine makes no progress"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}

#[test]
fn waiting_requests_show_in_the_queue_gauge_and_respect_the_capacity() {
    let _serial = serial();
    let capacity = 2;
    let s = smollm2_server(|c| {
        c.queue_capacity = capacity;
        c.max_client_batch = 1;
        c.max_batch_size = 1;
    });
    let addr = s.addr;
    let long = json!({"inputs": "Count slowly:", "parameters": {"max_new_tokens": 4000, "ignore_eos": true}});
    let mut held = Vec::new();
    let mut first = TcpStream::connect(addr).unwrap();
    write_post(&mut first, "/generate_stream", &long, false);
    read_until(&mut first, "data:", Duration::from_secs(10));
    held.push(first);
    let mut refused = false;
    for _ in 0..capacity + 3 {
        let mut sock = TcpStream::connect(addr).unwrap();
        write_post(&mut sock, "/generate_stream", &long, false);
        // A waiting stream has no answer yet (it starts with its first token).
        if let Some(head) = head_within(&mut sock, Duration::from_millis(700)) {
            assert!(head.starts_with("HTTP/1.1 503"), "{head}");
            refused = true;
            break;
        }
        held.push(sock);
        // The engine looks at its queue between steps.
        wait_steps(addr, 2.0);
    }
    assert!(refused, "the queue never filled");
    let waiting = held.len() - 1;

    let mut problems = Vec::new();
    if waiting > capacity {
        problems.push(format!(
            "--queue-capacity {capacity}, but {waiting} requests waited before one was refused"
        ));
    }
    // The autoscaler's signal: what waits shows in zerobatch_queue_depth.
    let t = Instant::now();
    let depth = loop {
        let depth = sample(&metrics_text(addr), "zerobatch_queue_depth");
        if depth == waiting as f64 || t.elapsed() > Duration::from_secs(2) {
            break depth;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    if depth != waiting as f64 {
        problems.push(format!(
            "{waiting} generation requests wait, but /metrics shows zerobatch_queue_depth {depth}"
        ));
    }
    drop(held);
    wait_for_gauge(
        addr,
        "zerobatch_running_sequences",
        0.0,
        Duration::from_secs(3),
    );
    assert!(problems.is_empty(), "{problems:#?}");
}
