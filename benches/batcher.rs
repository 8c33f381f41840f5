//! Overhead of the queue and batcher per request, without a model: submit an input, form a
//! batch, split it by length, reply. `cargo bench --bench batcher`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use tokio::sync::oneshot;
use zerobatch::embed::batcher::{group_by_length, BatchLimits, Batcher};
use zerobatch::embed::queue::{Arrival, Entry, Job, Output, Queue};

fn bench_batcher(c: &mut Criterion) {
    let mut group = c.benchmark_group("batcher");
    for batch in [1usize, 8, 64] {
        let (queue, receiver) = Queue::new(4096);
        let batcher = Arc::new(Batcher::for_queue(
            receiver,
            BatchLimits {
                max_size: batch,
                max_tokens: 1 << 20,
            },
            Duration::ZERO,
        ));
        group.throughput(Throughput::Elements(batch as u64));
        group.bench_with_input(
            BenchmarkId::new("submit-batch-reply", batch),
            &batch,
            |b, &batch| {
                b.iter(|| {
                    let mut receivers = Vec::with_capacity(batch);
                    let now = Instant::now();
                    let entries: Vec<Entry> = (0..batch)
                        .map(|i| {
                            let (reply, r) = oneshot::channel();
                            receivers.push(r);
                            Entry {
                                seq: Arrival::now(1).seq(0),
                                arrived: now,
                                deadline: now + Duration::from_secs(5),
                                job: Job::Embed {
                                    ids: vec![101; 8 + i % 5],
                                },
                                reply,
                            }
                        })
                        .collect();
                    queue.submit(entries).unwrap();
                    let taken = batcher.next_batch().unwrap().entries;
                    let lengths: Vec<usize> = taken.iter().map(Entry::tokens).collect();
                    for g in group_by_length(&lengths, 16) {
                        std::hint::black_box(g);
                    }
                    for e in taken {
                        let _ = e.reply.send(Ok(Output::Embedding(Vec::new())));
                    }
                    receivers
                })
            },
        );
    }
    group.finish();
}

criterion_group!(benches, bench_batcher);
criterion_main!(benches);
