//! Model loading from corrupt files: one file of a valid tiny model replaced by arbitrary
//! bytes (libFuzzer mutates the valid file: flipped and inserted bytes, truncation, spliced
//! pieces), then `zerobatch::model::load` on the directory, and a forward pass when it loads.
//!
//! Input: byte 0 picks the file (modulo 6: config.json, tokenizer.json, model.safetensors,
//! modules.json, 1_Pooling/config.json, sentence_bert_config.json); the rest is its content.
//!
//! Invariants: never panics, never aborts or runs out of memory, never dies of a signal
//! (SIGBUS from a short memory-mapped file): `load` returns Ok or Err; a model that loads
//! tokenizes and embeds a short text (Ok or Err) without panicking.
//!
//! `ZB_FUZZ_WRITE_SEEDS=DIR` also writes the seed inputs (the valid files) to DIR at start-up
//! (run it with `-runs=1`).
//!
//! Each process has its own directory on /dev/shm; the corrupt file is written beside its
//! target and renamed over it, and the valid file is put back the same way after each run.

#![no_main]

use std::path::{Path, PathBuf};
use std::sync::LazyLock;

use libfuzzer_sys::fuzz_target;

const FILES: [&str; 6] = [
    "config.json",
    "tokenizer.json",
    "model.safetensors",
    "modules.json",
    "1_Pooling/config.json",
    "sentence_bert_config.json",
];

struct Fixture {
    dir: PathBuf,
    dir_str: String,
    /// The valid content of each of `FILES`.
    valid: Vec<Vec<u8>>,
}

static FIXTURE: LazyLock<Fixture> = LazyLock::new(|| {
    // The directory always exists, so `load` never asks the hub; this makes sure of it.
    std::env::set_var("HF_HUB_OFFLINE", "1");
    let dir = zerobatch_fuzz::tiny_model("load", &zerobatch_fuzz::small_spec());
    let valid: Vec<Vec<u8>> = FILES
        .iter()
        .map(|f| std::fs::read(dir.join(f)).expect("reading the tiny model"))
        .collect();
    let dir_str = dir.to_str().expect("a UTF-8 temp path").to_string();
    if let Some(out) = std::env::var_os("ZB_FUZZ_WRITE_SEEDS") {
        write_seeds(Path::new(&out), &valid);
    }
    Fixture {
        dir,
        dir_str,
        valid,
    }
});

/// Seed inputs: each valid file, and the weights cut short (inside the tensor data, and
/// right after the header).
fn write_seeds(out: &Path, valid: &[Vec<u8>]) {
    std::fs::create_dir_all(out).expect("creating the seed directory");
    let mut seeds: Vec<(usize, &[u8])> = valid.iter().map(|v| &v[..]).enumerate().collect();
    let weights = &valid[2];
    let header = 8 + u64::from_le_bytes(weights[..8].try_into().expect("8 bytes")) as usize;
    seeds.push((2, &weights[..weights.len() / 2]));
    seeds.push((2, &weights[..header]));
    for (n, (which, bytes)) in seeds.into_iter().enumerate() {
        let mut input = vec![which as u8];
        input.extend_from_slice(bytes);
        std::fs::write(out.join(format!("seed-{n:02}-{which}")), input).expect("writing a seed");
    }
}

/// Replaces `dir/name` with `bytes` atomically (write beside it, then rename).
fn replace(dir: &Path, name: &str, bytes: &[u8]) {
    let tmp = dir.join(".replacing");
    std::fs::write(&tmp, bytes).expect("writing the fuzzed file");
    std::fs::rename(&tmp, dir.join(name)).expect("renaming the fuzzed file");
}

fuzz_target!(|data: &[u8]| {
    let f = &*FIXTURE;
    let Some((&selector, content)) = data.split_first() else {
        return;
    };
    let which = usize::from(selector) % FILES.len();
    replace(&f.dir, FILES[which], content);

    if let Ok(loaded) = zerobatch::model::load(&f.dir_str, "main", |_, _| {}) {
        let ids = loaded.tokenizer.encode(0, "the quick brown fox", true);
        if let Ok(ids) = ids {
            let _ = loaded.model.embed(&[&ids], 1);
        }
    }

    replace(&f.dir, FILES[which], &f.valid[which]);
});
