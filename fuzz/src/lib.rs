//! Helpers shared by the fuzz targets: a tiny model written once per process to a private
//! directory on /dev/shm (memory, so the load target's file writes cost no disk I/O), removed
//! when the fuzzer exits.

use std::path::{Path, PathBuf};
use std::sync::Mutex;

use zerobatch::model::tiny::{write_tiny_bert, TinySpec};

/// Directories to remove at exit.
static CLEANUP: Mutex<Vec<PathBuf>> = Mutex::new(Vec::new());

extern "C" fn remove_dirs() {
    if let Ok(dirs) = CLEANUP.lock() {
        for d in dirs.iter() {
            let _ = std::fs::remove_dir_all(d);
        }
    }
}

/// A fresh directory `/dev/shm/zb-fuzz-<tag>-<pid>` (or under the temp dir where there is no
/// /dev/shm), removed when the process exits normally (libFuzzer ends a `-runs`/
/// `-max_total_time` run with `exit`; after a crash the directory stays, for inspection).
pub fn private_dir(tag: &str) -> PathBuf {
    let base = Path::new("/dev/shm");
    let base = if base.is_dir() {
        base.to_path_buf()
    } else {
        std::env::temp_dir()
    };
    let dir = base.join(format!("zb-fuzz-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("creating the fuzzer's directory");
    let mut dirs = CLEANUP.lock().expect("cleanup list");
    if dirs.is_empty() {
        // SAFETY: registers a plain extern "C" function with no arguments.
        unsafe { libc::atexit(remove_dirs) };
    }
    dirs.push(dir.clone());
    dir
}

/// The model the load target corrupts: the tiny BERT made smaller still (every file a few KB,
/// so libFuzzer's mutations land on structure more often than on weight values).
pub fn small_spec() -> TinySpec {
    TinySpec {
        hidden: 8,
        layers: 1,
        heads: 2,
        intermediate: 16,
        max_positions: 16,
        max_seq_length: 12,
        seed: 7,
    }
}

/// Writes a tiny model with `spec` into a new private directory and returns it.
pub fn tiny_model(tag: &str, spec: &TinySpec) -> PathBuf {
    let dir = private_dir(tag);
    write_tiny_bert(&dir, spec).expect("writing the tiny model");
    dir
}
