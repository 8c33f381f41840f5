//! Forward pass of all-MiniLM-L6-v2 by batch size (1…64) and sequence length (16, 128):
//! zerobatch's encoder against candle-transformers' BERT on the same weights, side by side.
//!
//! `cargo bench --bench forward` (needs models/all-MiniLM-L6-v2: scripts/fetch-model.sh;
//! falls back to the tiny generated model so `cargo test --all-targets` runs anywhere).
//! Single-thread numbers are what one worker of the pool does; `threads2` rows show one batch
//! using both cores (what the pool does when only one batch runs), on a thread team as a
//! worker of the pool runs it. `ZEROBATCH_BENCH_DTYPE=f32` (or bf16, int8) runs zerobatch's
//! rows in that dtype instead of `auto`; its rows are then named `zerobatch-f32/...`.

use std::path::PathBuf;

use candle_core::{DType, Device, Tensor};
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};

const BATCHES: [usize; 7] = [1, 2, 4, 8, 16, 32, 64];
const LENGTHS: [usize; 3] = [8, 16, 128];

fn model_dir() -> PathBuf {
    let real = std::env::var("ZEROBATCH_MODEL_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|_| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("models/all-MiniLM-L6-v2")
        });
    if real.join("model.safetensors").is_file() {
        return real;
    }
    eprintln!(
        "models/all-MiniLM-L6-v2 missing (scripts/fetch-model.sh): benchmarking the tiny model"
    );
    let tiny = std::env::temp_dir().join("zerobatch-bench-tiny");
    let spec = zerobatch::model::tiny::TinySpec {
        max_positions: 512,
        max_seq_length: 512,
        ..Default::default()
    };
    zerobatch::model::tiny::write_tiny_bert(&tiny, &spec).unwrap();
    tiny
}

/// `batch` sequences of exactly `len` tokens: [CLS] words… [SEP].
fn sequences(batch: usize, len: usize) -> Vec<Vec<u32>> {
    (0..batch)
        .map(|b| {
            std::iter::once(101)
                .chain((0..len - 2).map(|i| 1000 + ((i * 7 + b) % 50) as u32))
                .chain(std::iter::once(102))
                .collect()
        })
        .collect()
}

fn bench_forward(c: &mut Criterion) {
    let dir = model_dir();
    let dtype: Option<zerobatch::kernels::Dtype> = std::env::var("ZEROBATCH_BENCH_DTYPE")
        .ok()
        .map(|d| d.parse().expect("ZEROBATCH_BENCH_DTYPE: f32, bf16 or int8"));
    let options = zerobatch::model::LoadOptions {
        dtype: dtype.map_or(zerobatch::model::DtypeChoice::Auto, |d| {
            zerobatch::model::DtypeChoice::Fixed(d)
        }),
        kernel_cap: None,
    };
    let ours = match dtype {
        Some(d) => format!("zerobatch-{d}"),
        None => "zerobatch".to_string(),
    };
    let loaded =
        zerobatch::model::load_with(dir.to_str().unwrap(), "main", options, |_, _| {}).unwrap();
    // The two-thread rows run on a team, as the pool's workers do (see `embed/worker.rs`).
    let team = zerobatch::kernels::team::Team::new(2).unwrap();
    let vocab_cap = 30;
    let fix = |s: Vec<Vec<u32>>, tiny: bool| -> Vec<Vec<u32>> {
        if tiny {
            s.into_iter()
                .map(|v| v.into_iter().map(|t| t % vocab_cap).collect())
                .collect()
        } else {
            s
        }
    };
    let tiny = loaded.info.dimensions != 384;

    // candle-transformers' BERT on the same file.
    let config: candle_transformers::models::bert::Config =
        serde_json::from_str(&std::fs::read_to_string(dir.join("config.json")).unwrap()).unwrap();
    let vb = unsafe {
        candle_nn::VarBuilder::from_mmaped_safetensors(
            &[dir.join("model.safetensors")],
            DType::F32,
            &Device::Cpu,
        )
        .unwrap()
    };
    let reference = candle_transformers::models::bert::BertModel::load(vb, &config).unwrap();

    let mut group = c.benchmark_group("forward");
    group
        .sample_size(10)
        .warm_up_time(std::time::Duration::from_millis(500))
        .measurement_time(std::time::Duration::from_secs(2));
    for len in LENGTHS {
        for batch in BATCHES {
            let seqs = fix(sequences(batch, len), tiny);
            let refs: Vec<&[u32]> = seqs.iter().map(|s| s.as_slice()).collect();
            group.throughput(Throughput::Elements(batch as u64));
            group.bench_with_input(
                BenchmarkId::new(format!("{ours}/len{len}"), batch),
                &refs,
                |b, refs| b.iter(|| loaded.model.embed(refs, 1).unwrap()),
            );
            let ids = Tensor::new(seqs.clone(), &Device::Cpu).unwrap();
            let types = ids.zeros_like().unwrap();
            let mask = ids.ones_like().unwrap();
            // candle reads RAYON_NUM_THREADS on every matmul: 1 = one worker's share.
            std::env::set_var("RAYON_NUM_THREADS", "1");
            group.bench_with_input(
                BenchmarkId::new(format!("candle-transformers/len{len}"), batch),
                &ids,
                |b, ids| {
                    b.iter(|| {
                        let h = reference.forward(ids, &types, Some(&mask)).unwrap();
                        // Mean pooling, as the server does (all tokens are real here).
                        h.mean(1).unwrap()
                    })
                },
            );
            std::env::remove_var("RAYON_NUM_THREADS");
        }
        let seqs = fix(sequences(1, len), tiny);
        let refs: Vec<&[u32]> = seqs.iter().map(|s| s.as_slice()).collect();
        group.bench_with_input(
            BenchmarkId::new(format!("{ours}-threads2/len{len}"), 1),
            &refs,
            |b, refs| team.install(|| b.iter(|| loaded.model.embed(refs, 2).unwrap())),
        );
    }
    // A retrieval stack's batch: 8 queries of 8 tokens beside 8 passages of 107 (the encoder
    // runs the real tokens only; padded to the longest, this batch would be 1,712 rows for 920).
    let mut mixed = fix(sequences(8, 8), tiny);
    mixed.extend(fix(sequences(8, 107), tiny));
    let refs: Vec<&[u32]> = mixed.iter().map(|s| s.as_slice()).collect();
    group.throughput(Throughput::Elements(refs.len() as u64));
    group.bench_with_input(
        BenchmarkId::new(format!("{ours}/mixed"), 16),
        &refs,
        |b, refs| b.iter(|| loaded.model.embed(refs, 1).unwrap()),
    );
    group.finish();
}

/// One MiniLM-sized linear layer (384 → 1536) by rows, on one thread: f32 (the in-place dot
/// kernel against gemm, the measurement behind `kernels::SMALL_M`, and the packed f32 layer
/// the models run), then bf16, int16 and int8 on every kernel path this CPU has. 856 rows = 8 passages of 107 tokens. The f32 rows also
/// run on two threads of a team (`-threads2`), as a lone batch runs in the pool.
fn bench_linear(c: &mut Criterion) {
    use zerobatch::kernels::{
        linear_with, Dtype, Epilogue, KernelLevel, LinearPart, MatmulKernel, PackedLinear,
    };
    let (k, n) = (384, 1536);
    let w: Vec<f32> = (0..n * k)
        .map(|i| ((i * 31 % 97) as f32 - 48.0) / 97.0)
        .collect();
    let b = vec![0.1f32; n];
    let parts = [LinearPart { w: &w, b: &b }];
    let packed: Vec<(Dtype, PackedLinear)> = [Dtype::Bf16, Dtype::Int16, Dtype::Int8]
        .into_iter()
        .map(|d| (d, PackedLinear::pack(d, &w, &b, k).unwrap()))
        .collect();
    let levels: Vec<KernelLevel> = KernelLevel::ALL
        .into_iter()
        .filter(|&l| l <= KernelLevel::detected())
        .collect();
    let team = zerobatch::kernels::team::Team::new(2).unwrap();
    let mut group = c.benchmark_group("linear");
    group
        .sample_size(20)
        .warm_up_time(std::time::Duration::from_millis(300))
        .measurement_time(std::time::Duration::from_secs(1));
    for m in [1usize, 8, 16, 32, 64, 96, 128, 856] {
        let x: Vec<f32> = (0..m * k)
            .map(|i| ((i * 17 % 89) as f32 - 44.0) / 89.0)
            .collect();
        let mut out = vec![0.0f32; m * n];
        group.throughput(Throughput::Elements((2 * m * k * n) as u64));
        for (name, kernel) in [
            ("f32-auto", MatmulKernel::Auto),
            ("f32-gemm", MatmulKernel::Gemm),
        ] {
            group.bench_with_input(BenchmarkId::new(name, m), &m, |bch, &m| {
                bch.iter(|| linear_with(&x, m, k, &parts, &mut out, 1, kernel))
            });
            group.bench_with_input(
                BenchmarkId::new(format!("{name}-threads2"), m),
                &m,
                |bch, &m| {
                    team.install(|| bch.iter(|| linear_with(&x, m, k, &parts, &mut out, 2, kernel)))
                },
            );
        }
        let f32_packed = PackedLinear::pack(Dtype::F32, &w, &b, k).unwrap();
        group.bench_with_input(BenchmarkId::new("f32-packed", m), &m, |bch, &m| {
            bch.iter(|| {
                f32_packed.forward(&x, m, &mut out, KernelLevel::detected(), 1, Epilogue::Bias)
            })
        });
        for (dtype, layer) in &packed {
            for &level in &levels {
                group.bench_with_input(
                    BenchmarkId::new(format!("{dtype}-{level}"), m),
                    &m,
                    |bch, &m| bch.iter(|| layer.forward(&x, m, &mut out, level, 1, Epilogue::Bias)),
                );
            }
        }
    }
    group.finish();
}

/// The f32 products of a MiniLM layer as the encoder runs them on a rerank batch (20 pairs of
/// 102 tokens: 2,040 rows), one thread: the fused Q/K/V (384 → 1152) over all rows, and the
/// feed-forward's up (384 → 1536) and down (1536 → 384) in blocks of 96 rows
/// (`model::bert_ops::BLOCK_ROWS`); gemm (weights packed at every call) against the weights
/// packed at load. `cargo bench --bench forward -- f32-shapes`.
fn bench_f32_shapes(c: &mut Criterion) {
    use zerobatch::kernels::{
        linear_with, Dtype, Epilogue, KernelLevel, LinearPart, MatmulKernel, PackedLinear,
    };
    let rows = 2040;
    let mut group = c.benchmark_group("f32-shapes");
    group
        .sample_size(10)
        .warm_up_time(std::time::Duration::from_millis(500))
        .measurement_time(std::time::Duration::from_secs(2));
    // The core's f32 ceiling in the same run: 16 independent chains of FMAs on registers.
    #[cfg(target_arch = "x86_64")]
    if is_x86_feature_detected!("avx512f") {
        const ITERS: usize = 100_000;
        group.throughput(Throughput::Elements((ITERS * 16 * 32) as u64));
        group.bench_function("fma-peak", |bch| {
            // SAFETY: the CPU has AVX-512 F (checked above).
            bch.iter(|| unsafe { fma_peak(ITERS) })
        });
    }
    for (name, k, n, block) in [
        ("qkv", 384, 1152, rows),
        ("up", 384, 1536, 96),
        ("down", 1536, 384, 96),
    ] {
        let w: Vec<f32> = (0..n * k)
            .map(|i| ((i * 31 % 97) as f32 - 48.0) / 97.0)
            .collect();
        let b = vec![0.1f32; n];
        let x: Vec<f32> = (0..rows * k)
            .map(|i| ((i * 17 % 89) as f32 - 44.0) / 89.0)
            .collect();
        let mut out = vec![0.0f32; rows * n];
        let parts = [LinearPart { w: &w, b: &b }];
        let packed = PackedLinear::pack(Dtype::F32, &w, &b, k).unwrap();
        group.throughput(Throughput::Elements((2 * rows * k * n) as u64));
        group.bench_function(BenchmarkId::new("gemm", name), |bch| {
            bch.iter(|| {
                for (x, out) in x.chunks(block * k).zip(out.chunks_mut(block * n)) {
                    let m = x.len() / k;
                    linear_with(x, m, k, &parts, out, 1, MatmulKernel::Gemm)
                }
            })
        });
        group.bench_function(BenchmarkId::new("packed", name), |bch| {
            bch.iter(|| {
                for (x, out) in x.chunks(block * k).zip(out.chunks_mut(block * n)) {
                    let m = x.len() / k;
                    packed.forward(x, m, out, KernelLevel::detected(), 1, Epilogue::Bias)
                }
            })
        });
    }
    group.finish();
}

/// `iters` rounds of 16 independent AVX-512 FMAs (16 lanes, 2 FLOP each) on registers (16
/// chains cover the FMA latency on two ports; with 24, LLVM kept 9 in memory): the FMA
/// units' rate, with no memory traffic.
///
/// # Safety
///
/// The CPU must support AVX-512 F.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn fma_peak(iters: usize) -> f32 {
    use std::arch::x86_64::*;
    let mut acc = [_mm512_setzero_ps(); 16];
    let (a, b) = (_mm512_set1_ps(0.999), _mm512_set1_ps(1e-4));
    for _ in 0..iters {
        for v in acc.iter_mut() {
            *v = _mm512_fmadd_ps(*v, a, b);
        }
    }
    acc.iter().map(|v| _mm512_reduce_add_ps(*v)).sum()
}

/// The bf16 paths side by side on this CPU's two best levels (AMX against AVX-512 BF16, where
/// the CPU has AMX): MiniLM's three linear shapes (n×k = 384×384, 1536×384, 384×1536) at
/// m = 512 and 6,848 rows (64 requests of 8 and of 107 tokens), one thread and two on a team;
/// then the whole forward pass in bf16 at both levels, for 1 and 64 sequences of 8 and 107
/// tokens. `cargo bench --bench forward -- bf16-levels`.
fn bench_bf16_levels(c: &mut Criterion) {
    use zerobatch::kernels::Dtype;
    use zerobatch::kernels::{Epilogue, KernelLevel, PackedLinear};
    let levels: Vec<KernelLevel> = [KernelLevel::Avx512Bf16, KernelLevel::Amx]
        .into_iter()
        .filter(|&l| l <= KernelLevel::detected())
        .collect();
    if levels.is_empty() {
        eprintln!("bf16-levels: this CPU has no AVX-512 BF16, nothing to compare");
        return;
    }
    let team = zerobatch::kernels::team::Team::new(2).unwrap();
    let mut group = c.benchmark_group("bf16-levels-linear");
    group
        .sample_size(10)
        .warm_up_time(std::time::Duration::from_millis(300))
        .measurement_time(std::time::Duration::from_secs(1));
    for (n, k) in [(384usize, 384usize), (1536, 384), (384, 1536)] {
        let w: Vec<f32> = (0..n * k)
            .map(|i| ((i * 31 % 97) as f32 - 48.0) / 97.0)
            .collect();
        let b = vec![0.1f32; n];
        let layer = PackedLinear::pack(Dtype::Bf16, &w, &b, k).unwrap();
        for m in [512usize, 6848] {
            let x: Vec<f32> = (0..m * k)
                .map(|i| ((i * 17 % 89) as f32 - 44.0) / 89.0)
                .collect();
            let mut out = vec![0.0f32; m * n];
            group.throughput(Throughput::Elements((2 * m * k * n) as u64));
            for &level in &levels {
                group.bench_with_input(
                    BenchmarkId::new(format!("{n}x{k}/{level}"), m),
                    &m,
                    |bch, &m| bch.iter(|| layer.forward(&x, m, &mut out, level, 1, Epilogue::Bias)),
                );
                group.bench_with_input(
                    BenchmarkId::new(format!("{n}x{k}/{level}-threads2"), m),
                    &m,
                    |bch, &m| {
                        team.install(|| {
                            bch.iter(|| layer.forward(&x, m, &mut out, level, 2, Epilogue::Bias))
                        })
                    },
                );
            }
        }
    }
    group.finish();

    let dir = model_dir();
    let models: Vec<_> = levels
        .iter()
        .map(|&level| {
            let options = zerobatch::model::LoadOptions {
                dtype: zerobatch::model::DtypeChoice::Fixed(Dtype::Bf16),
                kernel_cap: Some(level),
            };
            let loaded =
                zerobatch::model::load_with(dir.to_str().unwrap(), "main", options, |_, _| {})
                    .unwrap();
            (level, loaded)
        })
        .collect();
    let tiny = models[0].1.info.dimensions != 384;
    let mut group = c.benchmark_group("bf16-levels-forward");
    group
        .sample_size(10)
        .warm_up_time(std::time::Duration::from_millis(300))
        .measurement_time(std::time::Duration::from_secs(2));
    for (batch, len) in [(1usize, 8usize), (1, 107), (64, 8), (64, 107)] {
        let seqs: Vec<Vec<u32>> = sequences(batch, len)
            .into_iter()
            .map(|v| {
                if tiny {
                    v.into_iter().map(|t| t % 30).collect()
                } else {
                    v
                }
            })
            .collect();
        let refs: Vec<&[u32]> = seqs.iter().map(|s| s.as_slice()).collect();
        group.throughput(Throughput::Elements(batch as u64));
        for (level, loaded) in &models {
            group.bench_with_input(
                BenchmarkId::new(format!("len{len}/{level}"), batch),
                &refs,
                |b, refs| b.iter(|| loaded.model.embed(refs, 1).unwrap()),
            );
            group.bench_with_input(
                BenchmarkId::new(format!("len{len}/{level}-threads2"), batch),
                &refs,
                |b, refs| team.install(|| b.iter(|| loaded.model.embed(refs, 2).unwrap())),
            );
        }
    }
    group.finish();
}

/// int8 layers as a decode step streams them: 24 layers of Qwen3-0.6B's gate projection
/// (1024 → 3072, 3 MB each, 72 MB in all: more than this CPU's caches), each run once per
/// step at 1 to 32 rows (the streams of a continuous batch), one thread, and at 8 rows on two;
/// throughput in multiply-adds. `cargo bench --bench forward -- int8-decode`.
fn bench_int8_decode(c: &mut Criterion) {
    use zerobatch::kernels::{Dtype, PackedLinear};
    let (k, n) = (1024, 3072);
    let packed: Vec<PackedLinear> = (0..24)
        .map(|l| {
            let w: Vec<f32> = (0..n * k)
                .map(|i| ((i * 31 + l * 7) % 97) as f32 / 97.0 - 0.5)
                .collect();
            PackedLinear::pack(Dtype::Int8, &w, &vec![0.0; n], k).unwrap()
        })
        .collect();
    let series: [(&str, &[PackedLinear]); 1] = [("int8", &packed)];
    let mut shapes = DECODE_ROWS.to_vec();
    shapes.push((8, 2));
    decode_group(c, "int8-decode", (k, n), &series, &shapes);
}

/// `layers` distinct `n × k` weight matrices quantized by candle into `dtype`'s GGUF blocks.
fn ggml_layers(
    dtype: candle_core::quantized::GgmlDType,
    (n, k): (usize, usize),
    layers: usize,
) -> Vec<Vec<u8>> {
    (0..layers)
        .map(|l| {
            let w: Vec<f32> = (0..n * k)
                .map(|i| ((i * 31 + l * 7) % 97) as f32 / 97.0 - 0.5)
                .collect();
            let t = Tensor::from_vec(w, (n, k), &Device::Cpu).unwrap();
            let q = candle_core::quantized::QTensor::quantize(&t, dtype).unwrap();
            q.data().unwrap().into_owned()
        })
        .collect()
}

/// A decode step's layers side by side: every series runs each of its layers once per step
/// (`k` inputs, `n` outputs) for each `(rows, threads)`; throughput in multiply-adds. Ids are
/// `series/rows`, or `series/{rows}x{threads}t` on more than one thread.
fn decode_group(
    c: &mut Criterion,
    name: &str,
    (k, n): (usize, usize),
    series: &[(&str, &[zerobatch::kernels::PackedLinear])],
    shapes: &[(usize, usize)],
) {
    use zerobatch::kernels::{Epilogue, KernelLevel};
    let mut group = c.benchmark_group(name);
    group
        .sample_size(20)
        .warm_up_time(std::time::Duration::from_millis(500))
        .measurement_time(std::time::Duration::from_secs(2));
    for &(m, threads) in shapes {
        let x: Vec<f32> = (0..m * k)
            .map(|i| ((i * 17 % 89) as f32 - 44.0) / 89.0)
            .collect();
        let mut out = vec![0.0f32; m * n];
        let layers = series.first().map_or(0, |s| s.1.len());
        group.throughput(Throughput::Elements((m * k * n * layers) as u64));
        for (label, packed) in series {
            let id = if threads == 1 {
                BenchmarkId::new(*label, m)
            } else {
                BenchmarkId::new(*label, format!("{m}x{threads}t"))
            };
            group.bench_with_input(id, &m, |bch, &m| {
                bch.iter(|| {
                    for layer in packed.iter() {
                        let level = KernelLevel::detected();
                        layer.forward(&x, m, &mut out, level, threads, Epilogue::Bias);
                    }
                })
            });
        }
    }
    group.finish();
}

/// One to 32 rows on one thread: decode steps of 1 to 32 streams.
const DECODE_ROWS: [(usize, usize); 6] = [(1, 1), (2, 1), (4, 1), (8, 1), (16, 1), (32, 1)];

/// Q6_K layers as a decode step streams them, kept as stored (`kernels::sixbit`) against the
/// same values requantized to int8 (what CPUs with VNNI load): 24 layers of Qwen3-0.6B's
/// FFN-down shape (3072 → 1024; 62 MB as Q6_K, 85 MB as int8), each run once per step at 1
/// to 32 rows, one thread. `cargo bench --bench forward -- q6k-decode`.
fn bench_q6k_decode(c: &mut Criterion) {
    use candle_core::quantized::GgmlDType;
    use zerobatch::kernels::{Dtype, PackedLinear, SixBitLinear};
    let (k, n) = (3072, 1024);
    let bias = vec![0.0; n];
    let six: Vec<PackedLinear> = ggml_layers(GgmlDType::Q6K, (n, k), 24)
        .iter()
        .map(|b| PackedLinear::SixBit(SixBitLinear::from_parts(&[b], &bias, k).unwrap()))
        .collect();
    let int8: Vec<PackedLinear> = six
        .iter()
        .map(|l| {
            let PackedLinear::SixBit(l) = l else {
                unreachable!()
            };
            let w: Vec<f32> = (0..n).flat_map(|c| l.weight_row(c).unwrap()).collect();
            PackedLinear::pack(Dtype::Int8, &w, &bias, k).unwrap()
        })
        .collect();
    let series: [(&str, &[PackedLinear]); 2] = [("q6_k", &six), ("int8", &int8)];
    decode_group(c, "q6k-decode", (k, n), &series, &DECODE_ROWS);
}

/// `blocks` (one layer each) as `format` layers in the AVX2 layout, then in the VNNI one.
fn lowbit_layouts(
    format: zerobatch::kernels::LowBitFormat,
    blocks: &[Vec<u8>],
    (n, k): (usize, usize),
) -> [Vec<zerobatch::kernels::PackedLinear>; 2] {
    use zerobatch::kernels::{LowBitLayout, LowBitLinear, PackedLinear};
    let bias = vec![0.0; n];
    [LowBitLayout::Avx2, LowBitLayout::Vnni].map(|layout| {
        blocks
            .iter()
            .map(|b| {
                let l = LowBitLinear::from_parts_in(format, &[b], &bias, k, layout);
                PackedLinear::LowBit(l.unwrap())
            })
            .collect()
    })
}

/// Q5_0 layers as a decode step streams them, their fifth bits in each layout
/// (`kernels::LowBitLayout`: planes for AVX2, masks for VNNI): 24 layers of Qwen2.5-0.5B's
/// gate projection (896 → 4,864, which a `Q4_K_M` file stores as Q5_0; 91 MB in all), each
/// run once per step at 1 to 32 rows, one thread. `cargo bench --bench forward -- q5-decode`.
fn bench_q5_decode(c: &mut Criterion) {
    use candle_core::quantized::GgmlDType;
    use zerobatch::kernels::{LowBitFormat, PackedLinear};
    let (k, n) = (896, 4864);
    let blocks = ggml_layers(GgmlDType::Q5_0, (n, k), 24);
    let [planes, masks] = lowbit_layouts(LowBitFormat::Q5_0, &blocks, (n, k));
    let series: [(&str, &[PackedLinear]); 2] = [("planes", &planes), ("masks", &masks)];
    decode_group(c, "q5-decode", (k, n), &series, &DECODE_ROWS);
}

/// Q4_K layers as a decode step streams them, in each layout (`kernels::LowBitLayout`:
/// f32 `d` and `m` per block of 32 for the VNNI kernel, the 6-bit scales and mins as bytes
/// for AVX2): 24 layers of Qwen3-0.6B's gate projection (1,024 → 3,072; 57 MB as the VNNI
/// layout holds it, 45 MB as AVX2's), each run once per step at 1 to 32 rows on one thread,
/// and at 1 row on two (decode's lone stream shares the memory bus with the other core).
/// `cargo bench --bench forward -- q4k-decode`.
fn bench_q4k_decode(c: &mut Criterion) {
    use candle_core::quantized::GgmlDType;
    use zerobatch::kernels::{LowBitFormat, PackedLinear};
    let (k, n) = (1024, 3072);
    let blocks = ggml_layers(GgmlDType::Q4K, (n, k), 24);
    let [avx2, vnni] = lowbit_layouts(LowBitFormat::Q4K, &blocks, (n, k));
    let series: [(&str, &[PackedLinear]); 2] = [("avx2-layout", &avx2), ("vnni-layout", &vnni)];
    let mut shapes = vec![(1, 2)];
    shapes.extend(DECODE_ROWS);
    decode_group(c, "q4k-decode", (k, n), &series, &shapes);
}

criterion_group!(
    benches,
    bench_q4k_decode,
    bench_linear,
    bench_int8_decode,
    bench_q6k_decode,
    bench_q5_decode,
    bench_f32_shapes,
    bench_forward,
    bench_bf16_levels
);
criterion_main!(benches);
