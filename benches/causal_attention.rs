//! Generation's causal attention on SmolLM2-135M's shape (9 query heads, 3 KV heads,
//! head_dim 64, f16 cache), one layer, one core: the blocked kernel
//! (`kernels/causal_attention.rs`) at the AVX-512 and AVX2 levels beside the row-at-a-time
//! loop it replaced (kept below as `old`, as it ran: compiled for AVX2+FMA, the f16 cache
//! widened once per task of several rows, per key for a single row).
//!
//! `cargo bench --bench causal_attention`. Rows:
//! - `prefill-1024`: a 1,024-token prompt from position 0, in the decoder's tasks of 16 rows;
//! - `task16-at-1600`: one task of 16 rows at positions 1,600..1,616;
//! - `decode32-at-512`: 32 sequences, one new row each, 512 tokens of context each.

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use half::f16;
use half::slice::HalfFloatSliceExt;
use zerobatch::kernels::{causal_attention, CausalShape, KernelLevel, KvRows};

const N_HEAD: usize = 9;
const N_HEAD_KV: usize = 3;
const HD: usize = 64;
const QW: usize = N_HEAD * HD;
const KVW: usize = N_HEAD_KV * HD;
/// A decoder row: Q, K and V side by side.
const QKVW: usize = QW + 2 * KVW;
const TASK_ROWS: usize = 16;

fn values(seed: u64, n: usize) -> Vec<f32> {
    let mut s = seed;
    (0..n)
        .map(|_| {
            s = s
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((s >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
        })
        .collect()
}

fn f16s(v: &[f32]) -> Vec<f16> {
    v.iter().map(|&x| f16::from_f32(x)).collect()
}

/// One sequence: `rows` query rows at positions `start..` and a cache of `start + rows`.
struct Seq {
    q: Vec<f32>,
    k: Vec<f16>,
    v: Vec<f16>,
    start: usize,
    rows: usize,
}

fn seq(seed: u64, start: usize, rows: usize) -> Seq {
    Seq {
        q: values(seed, rows * QKVW),
        k: f16s(&values(seed + 1, (start + rows) * KVW)),
        v: f16s(&values(seed + 2, (start + rows) * KVW)),
        start,
        rows,
    }
}

const SHAPE: CausalShape = CausalShape {
    n_head: N_HEAD,
    n_head_kv: N_HEAD_KV,
    head_dim: HD,
    scale: 0.125,
    window: None,
};

/// The blocked kernel over a sequence's rows, in tasks of 16 as the decoder splits them.
fn new(s: &Seq, out: &mut [f32], level: KernelLevel) {
    for (c, o) in out.chunks_mut(TASK_ROWS * QW).enumerate() {
        let r0 = c * TASK_ROWS;
        let q = &s.q[r0 * QKVW..];
        let kv = KvRows {
            k: &s.k,
            v: &s.v,
            first: 0,
        };
        causal_attention(&SHAPE, q, QKVW, kv, s.start + r0, o, level);
    }
}

/// The row-at-a-time loop as it was, over the same tasks.
fn old(s: &Seq, out: &mut [f32]) {
    for (c, o) in out.chunks_mut(TASK_ROWS * QW).enumerate() {
        let r0 = c * TASK_ROWS;
        let rows = o.len() / QW;
        let q = &s.q[r0 * QKVW..(r0 + rows) * QKVW];
        let start = s.start + r0;
        // SAFETY: the CPUs this bench runs on have AVX2 and FMA (checked in `bench`).
        unsafe {
            if rows > 1 {
                let span = (start + rows) * KVW;
                let mut k = vec![0.0f32; span];
                let mut v = vec![0.0f32; span];
                s.k[..span].convert_to_f32_slice(&mut k);
                s.v[..span].convert_to_f32_slice(&mut v);
                old_avx2::<f32>(q, &k, &v, start, o)
            } else {
                old_avx2::<f16>(q, &s.k, &s.v, start, o)
            }
        }
    }
}

trait View: Copy {
    fn view<'a>(src: &'a [Self], scratch: &'a mut [f32]) -> &'a [f32];
}

impl View for f32 {
    fn view<'a>(src: &'a [Self], _: &'a mut [f32]) -> &'a [f32] {
        src
    }
}

impl View for f16 {
    fn view<'a>(src: &'a [Self], scratch: &'a mut [f32]) -> &'a [f32] {
        src.convert_to_f32_slice(scratch);
        scratch
    }
}

#[target_feature(enable = "avx2,fma")]
unsafe fn old_avx2<T: View>(q: &[f32], k: &[T], v: &[T], start: usize, out: &mut [f32]) {
    old_loop(q, k, v, start, out)
}

/// decoder.rs's `attend_portable` before the blocked kernel (no window: SmolLM2 has none).
#[inline(always)]
fn old_loop<T: View>(qkv: &[f32], k: &[T], v: &[T], start: usize, out: &mut [f32]) {
    let hd = HD;
    let group = N_HEAD / N_HEAD_KV;
    let kvw = KVW;
    let scale = SHAPE.scale;
    let rows = qkv.len() / QKVW;
    let span = start + rows;
    let mut scores = vec![0.0f32; group * span];
    let mut wide = vec![0.0f32; hd];
    let mut max = vec![0.0f32; group];
    let mut inv = vec![0.0f32; group];
    for r in 0..rows {
        let visible = start + r + 1;
        let first = 0;
        let q_row = &qkv[r * QKVW..r * QKVW + N_HEAD * hd];
        let o_row = &mut out[r * N_HEAD * hd..(r + 1) * N_HEAD * hd];
        for kvh in 0..N_HEAD_KV {
            let heads = kvh * group..(kvh + 1) * group;
            max.fill(f32::NEG_INFINITY);
            for t in first..visible {
                let key = T::view(&k[t * kvw + kvh * hd..][..hd], &mut wide);
                for (gi, h) in heads.clone().enumerate() {
                    let score = dot(&q_row[h * hd..(h + 1) * hd], key) * scale;
                    scores[gi * span + t] = score;
                    max[gi] = max[gi].max(score);
                }
            }
            for gi in 0..group {
                let mut sum = 0.0f32;
                for score in &mut scores[gi * span + first..gi * span + visible] {
                    *score = (*score - max[gi]).exp();
                    sum += *score;
                }
                inv[gi] = 1.0 / sum;
            }
            for h in heads.clone() {
                o_row[h * hd..(h + 1) * hd].fill(0.0);
            }
            for t in first..visible {
                let value = T::view(&v[t * kvw + kvh * hd..][..hd], &mut wide);
                for (gi, h) in heads.clone().enumerate() {
                    let w = scores[gi * span + t] * inv[gi];
                    for (o, &vv) in o_row[h * hd..(h + 1) * hd].iter_mut().zip(value) {
                        *o += w * vv;
                    }
                }
            }
        }
    }
}

#[inline(always)]
fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0.0f32; 16];
    let chunks = a.len() / 16;
    for c in 0..chunks {
        for l in 0..16 {
            acc[l] += a[c * 16 + l] * b[c * 16 + l];
        }
    }
    let mut sum: f32 = acc.iter().sum();
    for i in chunks * 16..a.len() {
        sum += a[i] * b[i];
    }
    sum
}

/// Multiply-adds of `QKᵀ` and `P·V` over the visible keys of every row of `seqs`.
fn flops(seqs: &[Seq]) -> u64 {
    let pairs: usize = seqs
        .iter()
        .map(|s| (0..s.rows).map(|r| s.start + r + 1).sum::<usize>())
        .sum();
    (4 * pairs * N_HEAD * HD) as u64
}

fn bench(c: &mut Criterion) {
    let cases: [(&str, Vec<Seq>); 3] = [
        ("prefill-1024", vec![seq(1, 0, 1024)]),
        ("task16-at-1600", vec![seq(2, 1600, 16)]),
        (
            "decode32-at-512",
            (0..32).map(|i| seq(10 + 3 * i, 511, 1)).collect(),
        ),
    ];
    let detected = KernelLevel::detected();
    let mut group = c.benchmark_group("causal_attention");
    group
        .sample_size(10)
        .warm_up_time(std::time::Duration::from_millis(300))
        .measurement_time(std::time::Duration::from_secs(2));
    for (name, seqs) in &cases {
        group.throughput(Throughput::Elements(flops(seqs)));
        let mut outs: Vec<Vec<f32>> = seqs.iter().map(|s| vec![0.0; s.rows * QW]).collect();
        for level in [KernelLevel::Avx2, KernelLevel::Avx512Vnni] {
            if level > detected {
                continue;
            }
            group.bench_function(BenchmarkId::new(format!("new-{level}"), name), |b| {
                b.iter(|| {
                    for (s, o) in seqs.iter().zip(&mut outs) {
                        new(s, o, level);
                    }
                })
            });
        }
        if detected >= KernelLevel::Avx2 {
            group.bench_function(BenchmarkId::new("old-avx2", name), |b| {
                b.iter(|| {
                    for (s, o) in seqs.iter().zip(&mut outs) {
                        old(s, o);
                    }
                })
            });
        }
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
