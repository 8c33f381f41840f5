//! Prefix reuse end to end, on the real SmolLM2-135M-Instruct over real HTTP: prompts that
//! share a long beginning give exactly the tokens (and the log-probabilities) they give with
//! the cache switched off, one at a time and in one batch; the hits show in the metrics; the
//! cache stays within its budget; and a conversation's next turn reuses the turns before it.
//!
//! The metrics registry is global to the process: the tests run one at a time (`serial`).

mod common;

use std::net::SocketAddr;
use std::sync::{Mutex, MutexGuard};

use common::*;
use serde_json::{json, Value};

static SERIAL: Mutex<()> = Mutex::new(());

fn serial() -> MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

/// SmolLM2-135M keeps 30 layers × 192 values of keys and as many of values, in f16.
const BYTES_PER_TOKEN: usize = 2 * 30 * 192 * 2;
const BLOCK_TOKENS: usize = 16;

/// A system prompt of some 600 tokens (longer than one prefill chunk of 512 would be with
/// `--max-prefill-tokens 256`, which the tests set, so it is read in several steps).
fn system_prompt() -> String {
    let mut s = String::from("You are the assistant of a public library. Rules:\n");
    for i in 1..=40 {
        s.push_str(&format!(
            "{i}. Answer questions about opening hours, loans and events politely; rule {i} covers shelf {}.\n",
            i * 7 % 23
        ));
    }
    s
}

const QUESTIONS: [&str; 4] = [
    "Question: when does the library open on Sunday?\nAnswer:",
    "Question: how many books may I borrow?\nAnswer:",
    "Question: is there a reading group for children?\nAnswer:",
    "Question: can I renew a loan online?\nAnswer:",
];

/// A greedy TGI answer: token ids and log-probabilities.
fn greedy(addr: SocketAddr, inputs: &str) -> (Vec<u64>, Vec<f64>) {
    let r = post_json(
        addr,
        "/generate",
        &json!({
            "inputs": inputs,
            "parameters": {"max_new_tokens": 12, "details": true, "ignore_eos": true, "do_sample": false},
        }),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let tokens = r.json()["details"]["tokens"].as_array().unwrap().clone();
    (
        tokens.iter().map(|t| t["id"].as_u64().unwrap()).collect(),
        tokens
            .iter()
            .map(|t| t["logprob"].as_f64().unwrap())
            .collect(),
    )
}

fn prompt_tokens(addr: SocketAddr, inputs: &str) -> usize {
    let r = post_json(addr, "/tokenize", &json!({ "inputs": inputs }));
    assert_eq!(r.status, 200, "{}", r.text());
    // One array of tokens per input.
    r.json()[0].as_array().unwrap().len()
}

/// Prompt tokens restored from the cache so far (the registry is the process's).
fn hits(addr: SocketAddr) -> f64 {
    metric(
        &get(addr, "/metrics").text(),
        "zerobatch_prefix_cache_tokens_total{result=\"hit\"}",
    )
}

fn assert_same(off: &(Vec<u64>, Vec<f64>), on: &(Vec<u64>, Vec<f64>), what: &str) {
    assert_eq!(
        off.0, on.0,
        "{what}: token ids differ with the prefix cache"
    );
    for (a, b) in off.1.iter().zip(&on.1) {
        assert!(
            (a - b).abs() <= 1e-4,
            "{what}: log-probabilities differ with the prefix cache: {:?} vs {:?}",
            off.1,
            on.1
        );
    }
}

fn prompts() -> Vec<String> {
    let system = system_prompt();
    QUESTIONS.iter().map(|q| format!("{system}{q}")).collect()
}

#[test]
fn a_reused_prefix_changes_no_token_alone_or_batched() {
    let _serial = serial();
    let prompts = prompts();
    let reference: Vec<_> = {
        let off = smollm2_server(|c| {
            c.prefix_cache_bytes = Some(0);
            c.max_prefill_tokens = 256;
        });
        let before = hits(off.addr);
        let answers = prompts.iter().map(|p| greedy(off.addr, p)).collect();
        assert_eq!(
            hits(off.addr),
            before,
            "a switched-off cache restored tokens"
        );
        answers
    };

    let on = smollm2_server(|c| c.max_prefill_tokens = 256);
    let system_tokens = prompt_tokens(on.addr, &system_prompt());
    assert!(
        system_tokens > 512,
        "the system prompt has {system_tokens} tokens"
    );
    let before = hits(on.addr);
    for (i, p) in prompts.iter().enumerate() {
        assert_same(
            &reference[i],
            &greedy(on.addr, p),
            &format!("prompt {i} alone"),
        );
    }
    // Each prompt after the first reuses (at least) the shared system prompt's whole blocks.
    let reused = hits(on.addr) - before;
    let shared_blocks = (system_tokens / BLOCK_TOKENS - 1) * BLOCK_TOKENS;
    assert!(
        reused >= (3 * shared_blocks) as f64,
        "{reused} tokens restored for three prompts sharing {system_tokens}"
    );

    // Again, all at once: each one restores its own whole prompt but the last token,
    // and they run in one batch.
    let before = hits(on.addr);
    let answers: Vec<_> = std::thread::scope(|s| {
        let handles: Vec<_> = prompts
            .iter()
            .map(|p| s.spawn(move || greedy(on.addr, p)))
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    for (i, a) in answers.iter().enumerate() {
        assert_same(&reference[i], a, &format!("prompt {i} in a batch"));
    }
    assert!(hits(on.addr) - before >= (4 * shared_blocks) as f64);
}

#[test]
fn the_cache_stays_within_its_budget() {
    let _serial = serial();
    // Room for 40 blocks; three different 600-token prompts need far more.
    let budget = 40 * BLOCK_TOKENS * BYTES_PER_TOKEN;
    let server = smollm2_server(|c| c.prefix_cache_bytes = Some(budget));
    let text = get(server.addr, "/metrics").text();
    assert_eq!(
        metric(&text, "zerobatch_prefix_cache_budget_bytes"),
        budget as f64
    );
    for (i, p) in prompts().iter().enumerate().take(3) {
        let other = format!("Variant {i}. {p}");
        greedy(server.addr, &other);
        let text = get(server.addr, "/metrics").text();
        let bytes = metric(&text, "zerobatch_prefix_cache_bytes");
        let blocks = metric(&text, "zerobatch_prefix_cache_blocks");
        assert!(
            bytes > 0.0 && bytes <= budget as f64,
            "{bytes} bytes held past a budget of {budget}"
        );
        assert_eq!(bytes, blocks * (BLOCK_TOKENS * BYTES_PER_TOKEN) as f64);
    }
    // The last prompt stored is the one kept: asked again, it is found.
    let before = hits(server.addr);
    greedy(server.addr, &format!("Variant 2. {}", prompts()[2]));
    assert!(hits(server.addr) - before >= (BLOCK_TOKENS * 10) as f64);
}

#[test]
fn the_next_turn_of_a_conversation_reuses_the_turns_before_it() {
    let _serial = serial();
    let server = smollm2_server(|_| {});
    // The reply, the prompt's tokens, and how many of them came from the cache (OpenAI's
    // usage.prompt_tokens_details.cached_tokens).
    let chat = |messages: &Value| -> (String, usize, usize) {
        let r = post_json(
            server.addr,
            "/v1/chat/completions",
            &json!({"messages": messages, "max_tokens": 20, "temperature": 0}),
        );
        assert_eq!(r.status, 200, "{}", r.text());
        let v = r.json();
        (
            v["choices"][0]["message"]["content"]
                .as_str()
                .unwrap()
                .to_string(),
            v["usage"]["prompt_tokens"].as_u64().unwrap() as usize,
            v["usage"]["prompt_tokens_details"]["cached_tokens"]
                .as_u64()
                .unwrap() as usize,
        )
    };
    let mut messages = json!([
        {"role": "system", "content": system_prompt()},
        {"role": "user", "content": "When does the library open on Sunday?"},
    ]);
    let (reply, first_prompt, _) = chat(&messages);
    messages
        .as_array_mut()
        .unwrap()
        .push(json!({"role": "assistant", "content": reply}));
    messages
        .as_array_mut()
        .unwrap()
        .push(json!({"role": "user", "content": "And on Monday?"}));
    let before = hits(server.addr);
    let (_, second_prompt, cached) = chat(&messages);
    let reused = hits(server.addr) - before;
    assert!(second_prompt > first_prompt);
    assert_eq!(cached as f64, reused, "usage and the metrics disagree");
    // At least the first turn's prompt, but for its last partial block.
    assert!(
        reused >= (first_prompt - BLOCK_TOKENS) as f64,
        "{reused} tokens restored of a first turn of {first_prompt}"
    );
}
