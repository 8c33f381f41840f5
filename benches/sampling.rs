//! Choosing one token from Qwen's 151,936 logits, as each stream does at every step:
//! greedy, and sampling the way OpenAI's clients ask by default (temperature 1, no top-k),
//! with and without a top-p cut. Sampling ranks the candidates lazily (`Ranked` in
//! `generate/sampling.rs`); it sorted all of them before.
//!
//! `cargo bench --bench sampling`.

use criterion::{criterion_group, criterion_main, Criterion};
use zerobatch::generate::sampling::{Sampler, SamplingParams};

const VOCAB: usize = 151_936;

/// Logits shaped like a language model's: most within a few units of each other, a short
/// head of much likelier tokens.
fn logits() -> Vec<f32> {
    let mut s = 0x2545_F491_4F6C_DD1Du64;
    (0..VOCAB)
        .map(|i| {
            s = s
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            let u = (s >> 40) as f32 / (1u64 << 24) as f32;
            let head = if i % 5_000 == 17 { 12.0 } else { 0.0 };
            u * 8.0 - 4.0 + head
        })
        .collect()
}

fn choose(c: &mut Criterion) {
    let logits = logits();
    let sampled = |top_p: Option<f32>| SamplingParams {
        do_sample: true,
        temperature: 1.0,
        top_p,
        ..SamplingParams::greedy()
    };
    let mut group = c.benchmark_group("choose-151936");
    for (name, params) in [
        ("greedy", SamplingParams::greedy()),
        ("temperature-1", sampled(None)),
        ("temperature-1-top-p-0.9", sampled(Some(0.9))),
    ] {
        let mut sampler = Sampler::new(params);
        let mut scratch = logits.clone();
        group.bench_function(name, |b| {
            b.iter(|| {
                scratch.copy_from_slice(&logits);
                sampler.choose(&mut scratch, &[])
            })
        });
    }
    group.finish();
}

criterion_group!(benches, choose);
criterion_main!(benches);
