//! The real Python clients against the real binary: huggingface_hub's
//! `InferenceClient(model=URL).feature_extraction` (which posts TEI's body to `POST /`) and
//! openai's `OpenAI(base_url=URL + "/v1").embeddings.create` (float and its default base64),
//! without and with `--api-key` (tests/clients/check_clients.py); and, on SmolLM2, their
//! generation calls, whole and streamed: `text_generation(stream=True)` posts to `POST /`
//! with `"stream": true` (tests/clients/check_generation_clients.py); and, on the tiny models of
//! tests/data/tiny_reranker_reference.json, `text_classification` against `/predict` and
//! `feature_extraction(prompt_name=...)`, checked against sentence-transformers' answers
//! (tests/clients/check_scoring_clients.py), the same embedding checks on the tiny ModernBERT
//! and Qwen3-Embedding models and the classifier checks on the tiny ModernBERT classifier;
//! and, on the tiny XLM-R cross-encoder of tests/data/tiny_xlmr_reference.json (without and
//! with an API key) and the tiny ModernBERT one, LlamaIndex's TEI reranker
//! (`llama-index-postprocessor-tei-rerank`, which posts to `/rerank`;
//! tests/clients/check_rerank_clients.py). The
//! interpreter comes from `ZEROBATCH_TEST_PYTHON`, which scripts/test.sh sets to the pinned venv
//! that scripts/test-venv.sh builds. Without it the test says SKIPPED and returns, except under
//! CI (`CI` set), where a skip would hide a client regression: there it fails unless
//! `ZEROBATCH_SKIP_PYTHON_CLIENTS=1` says to skip knowingly.

mod common;

use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;

/// The interpreter to run the clients with, or None (after saying SKIPPED) when there is none.
fn python() -> Option<PathBuf> {
    test_python("python_clients", "huggingface_hub, numpy, openai")
}

struct Server {
    child: Child,
    addr: SocketAddr,
}

impl Server {
    fn spawn(extra: &[&str]) -> Server {
        Self::spawn_model(tiny_model(), extra)
    }

    fn spawn_model(model: &str, extra: &[&str]) -> Server {
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let child = Command::new(env!("CARGO_BIN_EXE_zerobatch"))
            .args(["--host", "127.0.0.1", "--port", &port.to_string()])
            .args(["--model", model, "--workers", "1"])
            .args(extra)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("starting zerobatch");
        let server = Server {
            child,
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
        };
        wait_ready(server.addr);
        server
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs check_clients.py against `server`; panics with its output unless every check passed.
fn check_clients(python: &Path, server: &Server, api_key: Option<&str>) {
    run_checks(python, "check_clients.py", server, api_key, &[])
}

/// Runs tests/clients/`script` against `server` (with `args` after the server's URL); panics
/// with its output unless every check passed.
fn run_checks(python: &Path, script: &str, server: &Server, api_key: Option<&str>, args: &[&str]) {
    let script = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/clients")
        .join(script);
    let out_path = std::env::temp_dir().join(format!(
        "zerobatch-check-clients-{}-{}.log",
        std::process::id(),
        server.addr.port()
    ));
    let out = std::fs::File::create(&out_path).unwrap();
    let mut cmd = Command::new(python);
    cmd.arg(&script)
        .arg(format!("http://{}", server.addr))
        .args(args);
    if let Some(key) = api_key {
        cmd.args(["--api-key", key]);
    }
    let mut child = cmd
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .stdin(Stdio::null())
        .stdout(out.try_clone().unwrap())
        .stderr(out)
        .spawn()
        .expect("starting the client checks");
    // Bounded: the clients have their own 60 s timeouts, and this is a handful of requests.
    let t = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break Some(status);
        }
        if t.elapsed() > Duration::from_secs(180) {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let output = std::fs::read_to_string(&out_path).unwrap_or_default();
    let _ = std::fs::remove_file(&out_path);
    match status {
        Some(s) if s.success() => eprintln!("{output}"),
        Some(s) => panic!(
            "{} ({}) failed with {s}:\n{output}",
            script.display(),
            if api_key.is_some() {
                "with an API key"
            } else {
                "without an API key"
            }
        ),
        None => panic!(
            "{} did not finish within 180 s:\n{output}",
            script.display()
        ),
    }
}

#[test]
fn huggingface_hub_and_openai_clients_without_an_api_key() {
    let Some(python) = python() else { return };
    let server = Server::spawn(&[]);
    check_clients(&python, &server, None);
}

#[test]
fn huggingface_hub_and_openai_clients_with_an_api_key() {
    let Some(python) = python() else { return };
    let server = Server::spawn(&["--api-key", "zb-test-key"]);
    check_clients(&python, &server, Some("zb-test-key"));
}

#[test]
fn huggingface_hub_and_openai_generation_clients_whole_and_streamed() {
    let Some(python) = python() else { return };
    let model = smollm2_path();
    let server = Server::spawn_model(model.to_str().expect("a UTF-8 path"), &[]);
    run_checks(&python, "check_generation_clients.py", &server, None, &[]);
}

#[test]
fn huggingface_hub_text_classification_and_prompt_names_against_sentence_transformers() {
    let Some(python) = python() else { return };
    let (_, classifier, embedder) = common::reranker_models::model_dirs();
    let reference = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/data/tiny_reranker_reference.json"
    );
    let (_, modernbert_classifier) = common::modernbert_model::classifier_dirs();
    let modernbert = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/data/tiny_modernbert_classifier_reference.json"
    );
    check_scoring(
        &python,
        &[
            (classifier, reference, "classifier"),
            (embedder, reference, "embedder"),
            (modernbert_classifier, modernbert, "classifier"),
        ],
    );
}

/// Runs tests/clients/check_scoring_clients.py on each (model directory, reference file,
/// section of it), one server per model.
fn check_scoring(python: &Path, models: &[(&PathBuf, &str, &str)]) {
    for (dir, reference, section) in models {
        let server = Server::spawn_model(dir.to_str().expect("a UTF-8 path"), &[]);
        run_checks(
            python,
            "check_scoring_clients.py",
            &server,
            None,
            &[*reference, *section],
        );
    }
}

/// The newer embedders through the same client: ModernBERT (mean pooling with prompts, and
/// CLS pooling) and the Qwen3 embedder (last-token pooling, an instruction prompt), each in
/// its default dtype, their overlong texts truncated as asked.
#[test]
fn huggingface_hub_feature_extraction_on_modernbert_and_the_qwen3_embedder() {
    let Some(python) = python() else { return };
    let modernbert = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/data/tiny_modernbert_reference.json"
    );
    let qwen3 = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/data/tiny_qwen3_embedding_reference.json"
    );
    let (mean, cls) = common::modernbert_model::model_dirs();
    let qwen3_dir = common::qwen3_embedding_model::model_dir();
    check_scoring(
        &python,
        &[
            (mean, modernbert, "mean"),
            (cls, modernbert, "cls"),
            (qwen3_dir, qwen3, "embedder"),
        ],
    );
}

/// LlamaIndex's TEI reranker on the tiny XLM-R cross-encoder (without and with an API key)
/// and on the tiny ModernBERT one.
#[test]
fn llama_index_tei_reranker_against_sentence_transformers() {
    let Some(python) = test_python("python_clients", "llama_index.postprocessor.tei_rerank") else {
        return;
    };
    let (reranker, _, _) = common::xlmr_models::model_dirs();
    let reference = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/data/tiny_xlmr_reference.json"
    );
    let (modernbert_reranker, _) = common::modernbert_model::classifier_dirs();
    let modernbert = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/data/tiny_modernbert_classifier_reference.json"
    );
    for (dir, reference, key) in [
        (reranker, reference, None),
        (reranker, reference, Some("zb-rerank-key")),
        (modernbert_reranker, modernbert, None),
    ] {
        let model = dir.to_str().expect("a UTF-8 path");
        let server = match key {
            Some(key) => Server::spawn_model(model, &["--api-key", key]),
            None => Server::spawn_model(model, &[]),
        };
        run_checks(
            &python,
            "check_rerank_clients.py",
            &server,
            key,
            &[reference],
        );
    }
}
