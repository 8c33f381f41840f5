//! A fixed amount of embedding work for profilers (`perf record`, `perf stat`): criterion's
//! adaptive iteration counts make two profiles hard to compare, this runs exactly `--passes`
//! forward passes of `--batch` sequences of `--tokens` tokens and prints each pass's time.
//!
//! `cargo run --release --example profile_embed -- models/all-MiniLM-L6-v2 --batch 64
//! --tokens 107 --passes 10 --threads 2 [--kernel-cap amx] [--dtype bf16]`

use std::time::Instant;

use zerobatch::kernels::{Dtype, KernelLevel};
use zerobatch::model::{DtypeChoice, LoadOptions};

fn arg<T: std::str::FromStr>(args: &[String], name: &str, default: T) -> T {
    args.windows(2)
        .find(|w| w[0] == name)
        .map(|w| {
            w[1].parse()
                .unwrap_or_else(|_| panic!("{name}: cannot read {:?}", w[1]))
        })
        .unwrap_or(default)
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let dir = args
        .first()
        .expect("usage: profile_embed MODEL_DIR [options]");
    let batch = arg(&args, "--batch", 64usize);
    let tokens = arg(&args, "--tokens", 107usize);
    let passes = arg(&args, "--passes", 10usize);
    let threads = arg(&args, "--threads", 1usize);
    let cap: Option<KernelLevel> = args
        .windows(2)
        .find(|w| w[0] == "--kernel-cap")
        .map(|w| w[1].parse().expect("--kernel-cap: a kernel level"));
    let dtype: Dtype = arg(&args, "--dtype", Dtype::Bf16);
    let options = LoadOptions {
        dtype: DtypeChoice::Fixed(dtype),
        kernel_cap: cap,
    };
    let loaded = zerobatch::model::load_with(dir, "main", options, |_, _| {}).expect("load");
    // [CLS] then word pieces from the middle of the vocabulary, then [SEP].
    let seqs: Vec<Vec<u32>> = (0..batch)
        .map(|b| {
            let mut s = vec![101u32];
            s.extend((1..tokens - 1).map(|t| 2000 + ((b * 131 + t * 17) % 20000) as u32));
            s.push(102);
            s
        })
        .collect();
    let refs: Vec<&[u32]> = seqs.iter().map(|s| s.as_slice()).collect();
    let team = zerobatch::kernels::team::Team::new(threads).expect("team");
    let mut times = Vec::new();
    team.install(|| {
        for _ in 0..passes {
            let t = Instant::now();
            loaded.model.embed(&refs, threads).expect("forward");
            times.push(t.elapsed().as_secs_f64() * 1e3);
        }
    });
    let mut sorted = times.clone();
    sorted.sort_by(f64::total_cmp);
    println!(
        "{batch}×{tokens} on {threads} thread(s), {}: median {:.1} ms, min {:.1} ms ({:?})",
        loaded.info.kernel,
        sorted[sorted.len() / 2],
        sorted[0],
        times.iter().map(|t| format!("{t:.0}")).collect::<Vec<_>>()
    );
}
