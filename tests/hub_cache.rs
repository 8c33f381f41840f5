//! A hub id resolved from the Hugging Face cache with `HF_HUB_OFFLINE=1`, as the container
//! image runs it: the cache layout (`hub/models--owner--name/refs/main` naming a snapshot)
//! that the hub client writes and the Dockerfile's `model-local` stage lays out by hand.
//! No network is involved. (Its own test binary: it sets process-wide env vars.)

mod common;

use common::*;

#[test]
fn a_hub_id_is_served_offline_from_the_cache() {
    let home = std::env::temp_dir().join(format!("zerobatch-hf-home-{}", std::process::id()));
    let repo = home.join("hub/models--test-owner--tiny-bert");
    let snapshot = repo.join("snapshots/0123abcd");
    std::fs::create_dir_all(repo.join("refs")).unwrap();
    std::fs::create_dir_all(snapshot.join("1_Pooling")).unwrap();
    std::fs::write(repo.join("refs/main"), "0123abcd").unwrap();
    for f in [
        "config.json",
        "model.safetensors",
        "tokenizer.json",
        "modules.json",
        "sentence_bert_config.json",
        "1_Pooling/config.json",
    ] {
        std::fs::copy(std::path::Path::new(tiny_model()).join(f), snapshot.join(f)).unwrap();
    }
    // SAFETY (env): this test binary has this one test, so no other thread reads the env.
    std::env::set_var("HF_HOME", &home);
    std::env::set_var("HF_HUB_OFFLINE", "1");

    let files = zerobatch::model::files::resolve("test-owner/tiny-bert", "main").unwrap();
    assert_eq!(files.weights, snapshot.join("model.safetensors"));
    assert!(files.pooling.is_some() && files.sentence_bert.is_some());

    // A model that is not in the cache is a clear error, not a network attempt.
    let err = zerobatch::model::files::resolve("test-owner/absent", "main")
        .unwrap_err()
        .to_string();
    assert!(err.contains("HF_HUB_OFFLINE"), "{err}");

    // And the server serves it by its hub id.
    let s = start(|c| c.model = "test-owner/tiny-bert".into());
    let r = post_json(
        s.addr,
        "/embed",
        &serde_json::json!({ "inputs": "hello world" }),
    );
    assert_eq!(vectors(&r)[0].len(), 32);
    assert_eq!(
        get(s.addr, "/info").json()["model_id"],
        "test-owner/tiny-bert"
    );
    std::fs::remove_dir_all(&home).unwrap();
}
