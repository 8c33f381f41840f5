//! `--model owner/name:QUANT` (`zerobatch::model::gguf_hub`): the GGUF file of a quantization
//! picked from a hub repository as llama.cpp's `-hf` picks it, split files included, in the
//! standard Hugging Face cache. The hub is unreachable here, so the HTTP side is a local
//! server that answers like it (tests/common/fake_hub.rs, requiring a token), and the offline
//! side a cache directory laid out as the hub client lays it out. The files are the tiny Qwen3
//! of tests/qwen_reference.rs (F32, Q4_0, and Q8_0 in three parts), under the names a GGUF
//! repository gives them, beside a projector file and a README that must not be chosen.

mod common;

use std::path::{Path, PathBuf};

use common::fake_hub::{etag, FakeHub, FakeRepo};
use common::*;
use zerobatch::generate::gguf::GgufFile;
use zerobatch::model::gguf_hub::{resolve, GgufRef};
use zerobatch::model::hub::Hub;

const REPO: &str = "test-owner/tiny-qwen3-GGUF";
const COMMIT: &str = "0123456789abcdef0123456789abcdef01234567";
const TOKEN: &str = "hf_testtokenthatisnotrealbutlongenough0";

/// (name in the repository, file in tests/data/gguf).
fn repo_files() -> Vec<(String, Vec<u8>)> {
    let data = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/gguf");
    let mut files = vec![
        ("README.md".to_string(), b"# tiny".to_vec()),
        (
            "mmproj-tiny-qwen3-Q8_0.gguf".to_string(),
            b"not a model".to_vec(),
        ),
    ];
    for (name, file) in [
        ("tiny-qwen3-F32.gguf", "tiny-qwen3-f32.gguf"),
        ("tiny-qwen3-Q4_0.gguf", "tiny-qwen3-q4_0.gguf"),
        (
            "Q8_0/tiny-qwen3-Q8_0-00001-of-00003.gguf",
            "tiny-qwen3-q8_0-00001-of-00003.gguf",
        ),
        (
            "Q8_0/tiny-qwen3-Q8_0-00002-of-00003.gguf",
            "tiny-qwen3-q8_0-00002-of-00003.gguf",
        ),
        (
            "Q8_0/tiny-qwen3-Q8_0-00003-of-00003.gguf",
            "tiny-qwen3-q8_0-00003-of-00003.gguf",
        ),
    ] {
        files.push((name.to_string(), std::fs::read(data.join(file)).unwrap()));
    }
    files
}

fn fake_hub() -> FakeHub {
    FakeHub::start(
        vec![FakeRepo {
            id: REPO.into(),
            commit: COMMIT.into(),
            files: repo_files(),
        }],
        Some(TOKEN.into()),
    )
}

fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("zerobatch-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn hub(cache: &Path, endpoint: Option<String>, token: Option<&str>, offline: bool) -> Hub {
    Hub {
        cache: cache.to_path_buf(),
        endpoint,
        token: token.map(String::from),
        offline,
    }
}

fn gguf(quant: &str) -> GgufRef {
    GgufRef::parse(&format!("{REPO}:{quant}")).unwrap().unwrap()
}

fn error(r: Result<PathBuf, zerobatch::model::ModelError>) -> String {
    match r {
        Ok(p) => panic!("resolved to {}", p.display()),
        Err(e) => e.to_string(),
    }
}

#[test]
fn the_quant_is_downloaded_into_the_cache_layout() {
    let server = fake_hub();
    let cache = temp_dir("hub-gguf-online").join("hub");
    let online = hub(&cache, Some(server.endpoint()), Some(TOKEN), false);
    let repo_dir = cache.join("models--test-owner--tiny-qwen3-GGUF");
    let snapshot = repo_dir.join("snapshots").join(COMMIT);

    // Q8_0 is split in three: all parts come, the first is returned, and it loads.
    let path = resolve(&gguf("Q8_0"), "main", &online).unwrap();
    assert_eq!(
        path,
        snapshot.join("Q8_0/tiny-qwen3-Q8_0-00001-of-00003.gguf")
    );
    let file = GgufFile::open(&path).unwrap();
    assert!(file.has_tensor("blk.1.ffn_down.weight"));
    // The standard layout: refs/main names the commit, the snapshot's files point into
    // blobs/, named by their hash.
    assert_eq!(
        std::fs::read_to_string(repo_dir.join("refs/main")).unwrap(),
        COMMIT
    );
    for (name, bytes) in repo_files().iter().filter(|(n, _)| n.starts_with("Q8_0/")) {
        assert_eq!(
            &std::fs::read(snapshot.join(name)).unwrap(),
            bytes,
            "{name}"
        );
        assert!(repo_dir.join("blobs").join(etag(bytes)).is_file(), "{name}");
    }
    assert!(!snapshot.join("tiny-qwen3-F32.gguf").exists());
    assert!(!snapshot.join("mmproj-tiny-qwen3-Q8_0.gguf").exists());
    // Every request carried the token.
    let seen = server.seen();
    assert!(!seen.is_empty());
    for s in &seen {
        assert_eq!(
            s.authorization.as_deref(),
            Some(format!("Bearer {TOKEN}").as_str()),
            "{}",
            s.path
        );
    }

    // Case-insensitive; the cached file is not fetched again.
    let before = server.seen().len();
    let again = resolve(&gguf("q8_0"), "main", &online).unwrap();
    assert_eq!(again, path);
    let new: Vec<_> = server.seen()[before..]
        .iter()
        .map(|s| s.path.clone())
        .collect();
    assert!(new.iter().all(|p| p.starts_with("/api/")), "{new:?}");
    let q4 = resolve(&gguf("Q4_0"), "main", &online).unwrap();
    assert_eq!(q4, snapshot.join("tiny-qwen3-Q4_0.gguf"));

    // A quant the repository does not have: the ones it has are listed.
    let err = error(resolve(&gguf("Q5_K_M"), "main", &online));
    assert!(err.contains("F32, Q4_0, Q8_0"), "{err}");
    assert!(err.contains("Q5_K_M"), "{err}");
    // A repository that does not exist, and a wrong token: the hub's answer is in the error.
    let missing = GgufRef::parse("test-owner/absent-GGUF:Q8_0")
        .unwrap()
        .unwrap();
    let err = error(resolve(&missing, "main", &online));
    assert!(err.contains("404"), "{err}");
    // (With nothing cached: a cached model is used when the hub refuses the listing, as
    // when it cannot be reached.)
    let empty = temp_dir("hub-gguf-online-empty");
    let bad_token = hub(&empty, Some(server.endpoint()), Some("hf_wrong"), false);
    let err = error(resolve(&gguf("Q8_0"), "main", &bad_token));
    assert!(err.contains("401"), "{err}");
    assert_eq!(
        resolve(
            &gguf("Q8_0"),
            "main",
            &hub(&cache, Some(server.endpoint()), Some("hf_wrong"), false)
        )
        .unwrap(),
        path
    );
    std::fs::remove_dir_all(cache.parent().unwrap()).unwrap();
    std::fs::remove_dir_all(&empty).unwrap();
}

/// A cache laid out by hand, as the hub client writes it (refs/main → snapshot), used with
/// HF_HUB_OFFLINE and when the hub cannot be reached.
#[test]
fn offline_the_cache_alone_is_used() {
    let cache = temp_dir("hub-gguf-offline").join("hub");
    let repo_dir = cache.join("models--test-owner--tiny-qwen3-GGUF");
    let snapshot = repo_dir.join("snapshots").join(COMMIT);
    std::fs::create_dir_all(repo_dir.join("refs")).unwrap();
    std::fs::write(repo_dir.join("refs/main"), COMMIT).unwrap();
    for (name, bytes) in repo_files() {
        if name.contains("F32") {
            continue;
        }
        let path = snapshot.join(&name);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, bytes).unwrap();
    }
    // No endpoint is reachable: a closed port.
    let closed = format!("http://127.0.0.1:{}", free_port());
    let offline = hub(&cache, Some(closed.clone()), None, true);
    let path = resolve(&gguf("Q8_0"), "main", &offline).unwrap();
    assert_eq!(
        path,
        snapshot.join("Q8_0/tiny-qwen3-Q8_0-00001-of-00003.gguf")
    );
    // The commit itself as the revision.
    assert_eq!(
        resolve(&gguf("Q4_0"), COMMIT, &offline).unwrap(),
        snapshot.join("tiny-qwen3-Q4_0.gguf")
    );
    // What the cache lacks is named, with what it has.
    let err = error(resolve(&gguf("F32"), "main", &offline));
    assert!(err.contains("the cached copy has Q4_0, Q8_0"), "{err}");
    let absent = GgufRef::parse("test-owner/absent-GGUF:Q8_0")
        .unwrap()
        .unwrap();
    let err = error(resolve(&absent, "main", &offline));
    assert!(err.contains("HF_HUB_OFFLINE"), "{err}");
    // Online but the hub unreachable: the cached snapshot is chosen from, as llama.cpp does.
    let unreachable = hub(&cache, Some(closed), None, false);
    assert_eq!(resolve(&gguf("Q8_0"), "main", &unreachable).unwrap(), path);
    let err = error(resolve(&absent, "main", &unreachable));
    assert!(err.contains("cannot list the repository"), "{err}");
    // A split model missing a part in the cache is refused, naming the part.
    std::fs::remove_file(snapshot.join("Q8_0/tiny-qwen3-Q8_0-00003-of-00003.gguf")).unwrap();
    let err = error(resolve(&gguf("Q8_0"), "main", &offline));
    assert!(err.contains("tiny-qwen3-Q8_0-00003-of-00003.gguf"), "{err}");
    std::fs::remove_dir_all(cache.parent().unwrap()).unwrap();
}

/// The real binary with HF_ENDPOINT, HF_HOME and HF_TOKEN: `--model owner/name:F32` is
/// downloaded and served, reported by that name, and answers the reference's greedy chat.
#[test]
fn the_server_serves_a_quant_from_the_hub() {
    let server = fake_hub();
    let home = temp_dir("hub-gguf-server");
    let endpoint = server.endpoint();
    let model = format!("{REPO}:F32");
    let proc = Proc::spawn_env(
        &model,
        &["--dtype", "f32"],
        &[
            ("HF_ENDPOINT", endpoint.as_str()),
            ("HF_HOME", home.to_str().unwrap()),
            ("HF_TOKEN", TOKEN),
        ],
    );
    wait_ready(proc.addr);
    assert_eq!(get(proc.addr, "/info").json()["model_id"], model.as_str());
    let reference: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(
            Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/tiny_qwen3_reference.json"),
        )
        .unwrap(),
    )
    .unwrap();
    let chat = &reference["chat"];
    let r = post_json(
        proc.addr,
        "/v1/chat/completions",
        &serde_json::json!({
            "messages": chat["messages"],
            "chat_template_kwargs": chat["chat_template_kwargs"],
            "temperature": 0,
        }),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["choices"][0]["message"]["content"], chat["text"]);
    assert_eq!(r.json()["choices"][0]["finish_reason"], "stop");
    assert!(home
        .join("hub/models--test-owner--tiny-qwen3-GGUF/snapshots")
        .join(COMMIT)
        .join("tiny-qwen3-F32.gguf")
        .is_file());
    drop(proc);

    // A quant the repository lacks fails the load with the list, and the process exits.
    let mut proc = Proc::spawn_env(
        &format!("{REPO}:IQ2_XXS"),
        &[],
        &[
            ("HF_ENDPOINT", endpoint.as_str()),
            ("HF_HOME", home.to_str().unwrap()),
            ("HF_TOKEN", TOKEN),
        ],
    );
    let (code, _) = proc.wait_exit(std::time::Duration::from_secs(30));
    assert_ne!(code, Some(0));
    let log = proc.log();
    assert!(log.contains("F32, Q4_0, Q8_0"), "{log}");
    std::fs::remove_dir_all(&home).unwrap();
}
