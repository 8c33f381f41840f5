//! The HTTP contract, against a real server on an ephemeral port speaking real HTTP, with the
//! tiny generated model: every route, every error code, auth on and off, and many concurrent
//! requests each getting its own answer.

mod common;

use common::*;
use serde_json::json;

const LONG: &str = "the quick brown fox jumps over the lazy dog and the cat runs in the park with the man and the woman \
the quick brown fox jumps over the lazy dog and the cat runs in the park with the man and the woman \
the quick brown fox jumps over the lazy dog";

#[test]
fn probes_info_docs_and_metrics() {
    let s = start(|_| {});
    let r = get(s.addr, "/healthz");
    assert_eq!((r.status, r.json()["status"].as_str()), (200, Some("ok")));
    let r = get(s.addr, "/readyz");
    assert_eq!(
        (r.status, r.json()["status"].as_str()),
        (200, Some("ready"))
    );
    // TEI's and TGI's name for it.
    let r = get(s.addr, "/health");
    assert_eq!(
        (r.status, r.json()["status"].as_str()),
        (200, Some("ready"))
    );

    let info = get(s.addr, "/info").json();
    // OpenAI's model list: the one model, named as /info names it.
    let models = get(s.addr, "/v1/models").json();
    assert_eq!(models["object"], "list", "{models}");
    assert_eq!(models["data"][0]["id"], info["model_id"], "{models}");
    assert_eq!(models["data"].as_array().unwrap().len(), 1, "{models}");
    assert_eq!(info["dimensions"], 32);
    assert_eq!(info["max_input_length"], 48);
    assert_eq!(info["task"], "embedding");
    assert_eq!(info["pooling"], "mean");
    assert_eq!(info["workers"], 2);
    assert!(info["version"].is_string() && info["max_batch_size"].is_number());

    let spec = get(s.addr, "/openapi.json").json();
    assert_eq!(spec["openapi"], "3.0.3");
    for p in [
        "/embed",
        "/embed_all",
        "/v1/embeddings",
        "/tokenize",
        "/decode",
        "/info",
        "/healthz",
        "/readyz",
        "/metrics",
        "/openapi.json",
        "/",
    ] {
        assert!(spec["paths"].get(p).is_some(), "{p} missing from the spec");
    }

    let page = get(s.addr, "/");
    assert_eq!(page.status, 200);
    assert!(page
        .header("content-type")
        .unwrap()
        .starts_with("text/html"));
    let html = page.text();
    for p in ["/embed", "/v1/embeddings", "/tokenize", "/metrics", "curl"] {
        assert!(html.contains(p), "index page lacks {p}");
    }

    // One embedding so the histograms have samples.
    assert_eq!(
        post_json(s.addr, "/embed", &json!({"inputs": "hello world"})).status,
        200
    );
    let m = get(s.addr, "/metrics");
    assert_eq!(m.status, 200);
    let text = m.text();
    for name in [
        "zerobatch_requests_total{",
        "zerobatch_request_duration_seconds_bucket{",
        "zerobatch_queue_depth",
        "zerobatch_inflight_requests",
        "zerobatch_batch_size_bucket",
        "zerobatch_batch_tokens_bucket",
        "zerobatch_queue_wait_seconds_bucket",
        "zerobatch_inference_seconds_bucket",
        "zerobatch_ready 1",
        "zerobatch_startup_seconds{phase=\"weights\"}",
    ] {
        assert!(text.contains(name), "/metrics lacks {name}:\n{text}");
    }
    assert!(
        metric(
            &text,
            "zerobatch_requests_total{route=\"/embed\",status=\"200\"}"
        ) >= 1.0
    );

    // HEAD works wherever GET does, without a body.
    for p in [
        "/healthz",
        "/readyz",
        "/info",
        "/metrics",
        "/openapi.json",
        "/",
    ] {
        let r = request(s.addr, "HEAD", p, &[], None);
        assert_eq!(r.status, 200, "HEAD {p}");
        assert!(r.body.is_empty());
    }
}

#[test]
fn embeddings_tei_openai_and_tokenize() {
    let s = start(|_| {});
    let one = vectors(&post_json(
        s.addr,
        "/embed",
        &json!({"inputs": "a man is eating food"}),
    ));
    assert_eq!(one.len(), 1);
    assert_eq!(one[0].len(), 32);
    let norm: f32 = one[0].iter().map(|x| x * x).sum::<f32>().sqrt();
    assert!((norm - 1.0).abs() < 1e-5, "normalised by default: {norm}");

    let raw = vectors(&post_json(
        s.addr,
        "/embed",
        &json!({"inputs": ["a man is eating food"], "normalize": false}),
    ));
    let raw_norm: f32 = raw[0].iter().map(|x| x * x).sum::<f32>().sqrt();
    assert!(
        (raw_norm - 1.0).abs() > 1e-3,
        "normalize false keeps the pooled vector ({raw_norm})"
    );
    let rescaled: Vec<f32> = raw[0].iter().map(|x| x / raw_norm).collect();
    assert!(max_abs_diff(&rescaled, &one[0]) < 1e-5);

    // POST / is TEI's root route (what huggingface_hub's InferenceClient posts): as /embed.
    let root = vectors(&post_json(
        s.addr,
        "/",
        &json!({"inputs": "a man is eating food"}),
    ));
    assert!(max_abs_diff(&root[0], &one[0]) < 1e-6);
    // The model is named by its directory, never by its path.
    let info = get(s.addr, "/info").json();
    let id = info["model_id"].as_str().unwrap();
    assert!(
        !id.contains('/') && id.starts_with("zerobatch-tiny"),
        "{id}"
    );
    let openai_model = post_json(s.addr, "/v1/embeddings", &json!({"input": "x"})).json();
    assert_eq!(openai_model["model"], id);
    assert!(!get(s.addr, "/")
        .text()
        .contains(&*std::env::temp_dir().to_string_lossy()));

    let many = vectors(&post_json(
        s.addr,
        "/embed",
        &json!({"inputs": ["hello world", "a man is eating food", "the dog runs"]}),
    ));
    assert_eq!(many.len(), 3);
    assert!(
        max_abs_diff(&many[1], &one[0]) < 1e-5,
        "batched answer equals the lone answer"
    );

    let r = post_json(
        s.addr,
        "/v1/embeddings",
        &json!({"input": ["a man is eating food", "hello"], "model": "tiny"}),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let body = r.json();
    assert_eq!(body["object"], "list");
    assert_eq!(body["model"], "tiny");
    assert_eq!(body["data"][1]["index"], 1);
    assert_eq!(body["data"][0]["object"], "embedding");
    // [CLS] a man is eating food [SEP] = 7, [CLS] hello [SEP] = 3
    assert_eq!(body["usage"]["prompt_tokens"], 10);
    assert_eq!(body["usage"]["total_tokens"], 10);
    let float: Vec<f32> = serde_json::from_value(body["data"][0]["embedding"].clone()).unwrap();
    assert!(max_abs_diff(&float, &one[0]) < 1e-5);

    let r = post_json(
        s.addr,
        "/v1/embeddings",
        &json!({"input": "a man is eating food", "encoding_format": "base64"}),
    );
    let b64 = r.json()["data"][0]["embedding"]
        .as_str()
        .unwrap()
        .to_string();
    use base64::Engine;
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(b64)
        .unwrap();
    let decoded: Vec<f32> = bytes
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
        .collect();
    // Another request, maybe another batch composition and thread count: equal to rounding.
    assert!(max_abs_diff(&decoded, &float) < 1e-6);

    let r = post_json(s.addr, "/tokenize", &json!({"inputs": "Hello, world!"}));
    assert_eq!(r.status, 200, "{}", r.text());
    let toks = r.json();
    let texts: Vec<&str> = toks[0]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["text"].as_str().unwrap())
        .collect();
    assert_eq!(texts, vec!["[CLS]", "hello", ",", "world", "!", "[SEP]"]);
    assert_eq!(toks[0][0]["special"], true);
    assert_eq!(toks[0][1]["special"], false);
    assert_eq!(
        (toks[0][1]["start"].as_u64(), toks[0][1]["stop"].as_u64()),
        (Some(0), Some(5))
    );
    let r = post_json(
        s.addr,
        "/tokenize",
        &json!({"inputs": ["hello"], "add_special_tokens": false}),
    );
    assert_eq!(r.json()[0].as_array().unwrap().len(), 1);

    // /decode: /tokenize's ids back to text (WordPiece's decoder joins the pieces), special
    // tokens left out by default, one list or several.
    let ids: Vec<u64> = toks[0]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["id"].as_u64().unwrap())
        .collect();
    let r = post_json(s.addr, "/decode", &json!({"ids": ids}));
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json(), json!(["hello, world!"]));
    let (cls, sep) = (ids[0], ids[ids.len() - 1]);
    let r = post_json(
        s.addr,
        "/decode",
        &json!({"ids": [ids, [cls, sep]], "skip_special_tokens": false}),
    );
    assert_eq!(
        r.json(),
        json!(["[CLS] hello, world! [SEP]", "[CLS] [SEP]"])
    );
    for (body, status, says) in [
        (
            json!({"ids": [cls, 1_000_000]}),
            400,
            "token id 1000000 is outside the vocabulary of",
        ),
        (json!({"ids": []}), 400, "empty"),
        (json!({"ids": [[1], 2]}), 400, "mixes"),
        (json!({"ids": "101"}), 400, "list of token ids"),
    ] {
        let r = post_json(s.addr, "/decode", &body);
        assert_eq!(r.status, status, "{body}: {}", r.text());
        assert!(r.text().contains(says), "{body}: {}", r.text());
    }

    // /embed_all: every token's vector, special tokens included ([CLS] a man is eating food
    // [SEP] = 7, [CLS] hello [SEP] = 3), unpooled and unnormalised: this mean-pooling
    // model's /embed vector (normalize false) is their mean.
    let r = post_json(
        s.addr,
        "/embed_all",
        &json!({"inputs": ["a man is eating food", "hello"]}),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let all: Vec<Vec<Vec<f32>>> = serde_json::from_value(r.json()).unwrap();
    assert_eq!(all.iter().map(Vec::len).collect::<Vec<_>>(), vec![7, 3]);
    assert!(all.iter().flatten().all(|token| token.len() == 32));
    let mean: Vec<f32> = (0..32)
        .map(|d| all[0].iter().map(|token| token[d]).sum::<f32>() / 7.0)
        .collect();
    assert!(
        max_abs_diff(&mean, &raw[0]) < 1e-5,
        "{mean:?} against {:?}",
        raw[0]
    );
    assert!(
        all[0][0] != all[1][0] && all[0][1] != all[0][2],
        "each token has its own vector"
    );
    let alone: Vec<Vec<Vec<f32>>> =
        serde_json::from_value(post_json(s.addr, "/embed_all", &json!({"inputs": "hello"})).json())
            .unwrap();
    assert!(max_abs_diff(&alone[0].concat(), &all[1].concat()) < 1e-5);
    for (body, status, says) in [
        (json!({"inputs": "a", "normalize": true}), 400, "normalize"),
        (json!({"inputs": []}), 400, "empty"),
        (json!({"inputs": "a", "prompt_name": "nope"}), 400, "nope"),
        (
            json!({"inputs": "the ".repeat(60), "truncate": false}),
            413,
            "48",
        ),
    ] {
        let r = post_json(s.addr, "/embed_all", &body);
        assert_eq!(r.status, status, "{body}: {}", r.text());
        assert!(r.text().contains(says), "{body}: {}", r.text());
    }
    let cut: Vec<Vec<Vec<f32>>> = serde_json::from_value(
        post_json(s.addr, "/embed_all", &json!({"inputs": "the ".repeat(60)})).json(),
    )
    .unwrap();
    assert_eq!(cut[0].len(), 48, "truncated at the model's maximum");
}

#[test]
fn truncation_and_length_limits() {
    let s = start(|_| {});
    // Truncated by default: the long text and its first 48 tokens give the same vector.
    let long = vectors(&post_json(s.addr, "/embed", &json!({"inputs": LONG})));
    let r = post_json(
        s.addr,
        "/embed",
        &json!({"inputs": LONG, "truncate": false}),
    );
    assert_eq!(r.status, 413, "{}", r.text());
    assert_eq!(r.json()["error_type"], "payload_too_large");
    assert!(r.json()["error"].as_str().unwrap().contains("48"));
    let words: Vec<&str> = LONG.split(' ').collect();
    let cut = words[..46].join(" "); // 46 words + [CLS] + [SEP] = 48 tokens
                                     // A large input (tokenized off the I/O threads) is truncated the same way.
    let huge = "the ".repeat(25_000);
    let huge_v = vectors(&post_json(s.addr, "/embed", &json!({ "inputs": huge })));
    let cut_v = vectors(&post_json(
        s.addr,
        "/embed",
        &json!({ "inputs": "the ".repeat(46) }),
    ));
    assert!(max_abs_diff(&huge_v[0], &cut_v[0]) < 1e-6);
    let first = vectors(&post_json(
        s.addr,
        "/embed",
        &json!({"inputs": cut, "truncate": false}),
    ));
    assert!(max_abs_diff(&long[0], &first[0]) < 1e-6);
    // /tokenize shows the tokens the model sees: cut at 48, or 413 when asked not to cut.
    let toks = post_json(s.addr, "/tokenize", &json!({ "inputs": LONG })).json();
    assert_eq!(toks[0].as_array().unwrap().len(), 48);
    let r = post_json(
        s.addr,
        "/tokenize",
        &json!({ "inputs": LONG, "truncate": false }),
    );
    assert_eq!(r.status, 413, "{}", r.text());
}

#[test]
fn an_embed_all_answer_larger_than_the_whole_body_budget_is_413() {
    let s = start(|c| {
        c.max_body_bytes = 1_000;
        c.max_inflight_body_bytes = 4_000;
    });
    // [CLS] hello [SEP]: 3 × 32 numbers, about 1 KB of JSON.
    let r = post_json(s.addr, "/embed_all", &json!({"inputs": "hello"}));
    assert_eq!(r.status, 200, "{}", r.text());
    // 48 tokens × 32 numbers: about 15 KB, over the 4 KB budget.
    let r = post_json(s.addr, "/embed_all", &json!({"inputs": "the ".repeat(60)}));
    assert_eq!(r.status, 413, "{}", r.text());
    assert!(r.text().contains("max-inflight-body-bytes"), "{}", r.text());
    let r = post_json(s.addr, "/embed_all", &json!({"inputs": "hello"}));
    assert_eq!(
        r.status,
        200,
        "the refused answer gave its budget back: {}",
        r.text()
    );
}

#[test]
fn every_error_code() {
    let s = start(|c| {
        c.max_body_bytes = 2_000;
        c.max_client_batch = 4;
    });
    let a = s.addr;
    let check = |r: Resp, status: u16, kind: &str| {
        assert_eq!(r.status, status, "{}", r.text());
        assert_eq!(r.header("content-type"), Some("application/json"));
        let body = r.json();
        assert_eq!(body["error_type"], kind, "{body}");
        assert!(body["error"].as_str().is_some_and(|e| !e.is_empty()));
        r
    };
    check(get(a, "/nope"), 404, "not_found");
    let r = check(get(a, "/embed"), 405, "method_not_allowed");
    assert_eq!(r.header("allow"), Some("POST"));
    let r = check(
        request(a, "POST", "/healthz", &[], None),
        405,
        "method_not_allowed",
    );
    assert_eq!(r.header("allow"), Some("GET, HEAD"));
    check(
        request(a, "POST", "/embed", &[], Some(br#"{"inputs":"x"}"#)),
        415,
        "unsupported_media_type",
    );
    check(
        request(
            a,
            "POST",
            "/embed",
            &[("Content-Type", "text/plain")],
            Some(br#"{"inputs":"x"}"#),
        ),
        415,
        "unsupported_media_type",
    );
    let ct = [("Content-Type", "application/json")];
    let r = check(
        request(a, "POST", "/embed", &ct, Some(b"{\"inputs\": [\"x\",")),
        400,
        "invalid_request",
    );
    assert!(
        r.json()["error"].as_str().unwrap().contains("column"),
        "says where"
    );
    let r = check(
        request(a, "POST", "/embed", &ct, Some(br#"{"inputs": 42}"#)),
        400,
        "invalid_request",
    );
    assert!(
        r.json()["error"].as_str().unwrap().contains("string"),
        "says what"
    );
    check(
        request(a, "POST", "/embed", &ct, Some(br#"{"text": "x"}"#)),
        400,
        "invalid_request",
    );
    check(
        post_json(a, "/embed", &json!({"inputs": []})),
        400,
        "invalid_request",
    );
    check(
        post_json(a, "/v1/embeddings", &json!({"input": []})),
        400,
        "invalid_request",
    );
    check(
        post_json(a, "/embed", &json!({"inputs": ["a", "b", "c", "d", "e"]})),
        413,
        "payload_too_large",
    );
    let big = json!({ "inputs": "x ".repeat(1_500) });
    check(post_json(a, "/embed", &big), 413, "payload_too_large");
    check(
        post_json(a, "/v1/embeddings", &json!({"input": "x", "dimensions": 7})),
        400,
        "invalid_request",
    );
    check(
        post_json(
            a,
            "/embed",
            &json!({"inputs": "x", "truncation_direction": "left"}),
        ),
        400,
        "invalid_request",
    );
    // Invalid UTF-8 in the body is a 400, not a crash.
    check(
        request(
            a,
            "POST",
            "/embed",
            &ct,
            Some(b"{\"inputs\": \"\xff\xfe\"}"),
        ),
        400,
        "invalid_request",
    );
    // Odd inputs that are valid are served.
    for text in ["", " ", "\u{0}", "🙂🙂", "日本語", &"é".repeat(500)] {
        let r = post_json(a, "/embed", &json!({ "inputs": text }));
        assert_eq!(r.status, 200, "{text:?}: {}", r.text());
    }
    // After all of that the server still serves.
    assert_eq!(
        vectors(&post_json(a, "/embed", &json!({"inputs": "hello"}))).len(),
        1
    );
}

#[test]
fn a_full_queue_answers_503_with_retry_after() {
    // Admission is all-or-nothing: two inputs never fit a queue of one.
    let s = start(|c| c.queue_capacity = 1);
    let r = post_json(s.addr, "/embed", &json!({"inputs": ["a", "b"]}));
    assert_eq!(r.status, 503, "{}", r.text());
    assert_eq!(r.json()["error_type"], "queue_full");
    assert_eq!(r.header("retry-after"), Some("1"));
    assert_eq!(
        post_json(s.addr, "/embed", &json!({"inputs": "a"})).status,
        200
    );
    let m = get(s.addr, "/metrics").text();
    assert!(metric(&m, "zerobatch_rejected_total{reason=\"queue_full\"}") >= 1.0);
}

#[test]
fn api_key_guards_everything_but_the_probes() {
    let s = start(|c| c.api_key = Some("s3cret".into()));
    let a = s.addr;
    let body = br#"{"inputs": "hello"}"#;
    let ct = ("Content-Type", "application/json");
    let r = request(a, "POST", "/embed", &[ct], Some(body));
    assert_eq!(r.status, 401);
    assert_eq!(r.header("www-authenticate"), Some("Bearer"));
    assert_eq!(r.json()["error_type"], "unauthorized");
    assert_eq!(
        request(
            a,
            "POST",
            "/embed",
            &[ct, ("Authorization", "Bearer nope")],
            Some(body)
        )
        .status,
        401
    );
    assert_eq!(
        request(
            a,
            "POST",
            "/embed",
            &[ct, ("Authorization", "s3cret")],
            Some(body)
        )
        .status,
        401
    );
    assert_eq!(
        request(
            a,
            "POST",
            "/embed",
            &[ct, ("Authorization", "Bearer s3cret")],
            Some(body)
        )
        .status,
        200
    );
    for p in ["/metrics", "/info", "/openapi.json", "/"] {
        assert_eq!(get(a, p).status, 401, "{p} needs the key");
        assert_eq!(
            request(a, "GET", p, &[("Authorization", "Bearer s3cret")], None).status,
            200,
            "{p} with the key"
        );
    }
    assert_eq!(get(a, "/healthz").status, 200);
    assert_eq!(get(a, "/readyz").status, 200);
}

#[test]
fn hundreds_of_concurrent_requests_each_get_their_own_answer() {
    let s = start(|c| {
        c.max_batch_delay_ms = 2;
        c.max_batch_size = 32;
    });
    let words = [
        "man", "woman", "dog", "cat", "fox", "server", "model", "batch", "park", "food",
    ];
    let texts: Vec<String> = (0..256)
        .map(|i| {
            let n = 1 + i % 17;
            (0..n)
                .map(|k| words[(i * 7 + k * 3) % words.len()])
                .collect::<Vec<_>>()
                .join(" ")
        })
        .collect();
    // The reference: each text embedded alone, one request at a time.
    let alone: Vec<Vec<f32>> = texts
        .iter()
        .map(|t| vectors(&post_json(s.addr, "/embed", &json!({"inputs": t})))[0].clone())
        .collect();
    let addr = s.addr;
    let handles: Vec<_> = texts
        .iter()
        .cloned()
        .enumerate()
        .map(|(i, t)| {
            std::thread::spawn(move || {
                (
                    i,
                    vectors(&post_json(addr, "/embed", &json!({"inputs": t})))[0].clone(),
                )
            })
        })
        .collect();
    for h in handles {
        let (i, v) = h.join().unwrap();
        let d = max_abs_diff(&v, &alone[i]);
        assert!(
            d <= 1e-5,
            "request {i}: batched answer differs from the lone one by {d}"
        );
    }
    // The load really was batched.
    let m = get(s.addr, "/metrics").text();
    let batches = metric(&m, "zerobatch_batch_size_count");
    let inputs = metric(&m, "zerobatch_batch_size_sum");
    assert!(
        inputs / batches > 1.0,
        "mean batch size {}",
        inputs / batches
    );
}

#[test]
fn keep_alive_connections_serve_many_requests() {
    let s = start(|_| {});
    let mut stream = std::net::TcpStream::connect(s.addr).unwrap();
    for i in 0..20 {
        let body = json!({"inputs": format!("hello {i}")}).to_string();
        let r = exchange(
            &mut stream,
            "POST",
            "/embed",
            &[("Content-Type", "application/json")],
            Some(body.as_bytes()),
        )
        .unwrap();
        assert_eq!(r.status, 200);
        assert_eq!(vectors(&r)[0].len(), 32);
    }
}

#[test]
fn a_model_that_fails_to_load_makes_requests_503_with_the_reason() {
    let dir = common::scratch_dir("zerobatch-broken");
    for f in [
        "config.json",
        "tokenizer.json",
        "1_Pooling/config.json",
        "modules.json",
        "sentence_bert_config.json",
    ] {
        let to = dir.join(f);
        std::fs::create_dir_all(to.parent().unwrap()).unwrap();
        std::fs::copy(std::path::Path::new(tiny_model()).join(f), to).unwrap();
    }
    std::fs::write(dir.join("model.safetensors"), b"not a safetensors file").unwrap();
    let mut config = zerobatch::config::ServeConfig::for_tests(dir.to_str().unwrap());
    // A failed load does not wait for the shutdown delay: nothing is being drained.
    config.shutdown_delay_ms = 5_000;
    config.shutdown_timeout_ms = 10_000;
    let started = std::time::Instant::now();
    let s = zerobatch::server::BackgroundServer::start(config).unwrap();
    // The load fails within milliseconds, so the request is either held and answered with
    // the reason, or arrives after the process has closed its port.
    let body = json!({"inputs": "hello"}).to_string();
    match try_request(
        s.addr,
        "POST",
        "/embed",
        &[("Content-Type", "application/json")],
        Some(body.as_bytes()),
    ) {
        Ok(r) => {
            assert_eq!(r.status, 503, "{}", r.text());
            assert!(r.header("retry-after").is_some());
            assert_eq!(r.json()["error_type"], "model_load_failed");
            let reason = r.json()["error"].as_str().unwrap().to_string();
            assert!(reason.contains("model.safetensors"), "{reason}");
        }
        Err(e) => assert_eq!(e.kind(), std::io::ErrorKind::ConnectionRefused, "{e}"),
    }
    assert_eq!(s.shutdown(), zerobatch::server::Outcome::LoadFailed);
    assert!(
        started.elapsed() < std::time::Duration::from_secs(3),
        "exited after {:?}: the shutdown delay was not skipped",
        started.elapsed()
    );
}
