//! The fixed pool of inference threads. Each thread loops: take the next batch from the shared
//! [`Batcher`], split it into passes of similar length, run the model, reply to each entry.
//!
//! Intra-op threads: the pool adapts to how much is waiting. A thread that runs a batch while
//! the other workers are idle lets the matmuls use all cores (lowest latency for a lone
//! request); when several batches run at once each uses one core (no oversubscription, and two
//! one-core passes outrun one two-core pass on throughput). See docs/benchmarks.md.
//!
//! A panic inside a forward pass fails that batch's requests with 500; the thread survives and
//! keeps serving.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Instant;

use super::batcher::{group_by_length, Batcher};
use super::queue::{Entry, InferError, Job, Output};
use crate::error::panic_message;
use crate::kernels::team::with_new_team;
use crate::metrics;
use crate::model::Model;

/// Fixed cost of one forward pass, in tokens, used to decide when splitting a batch by length
/// pays (see [`group_by_length`]). The encoders run unpadded, so a split saves no arithmetic;
/// what it buys is latency: short inputs answered by their own pass instead of waiting for the
/// long ones' (measured: one pass for every batch cut the queries' rate of a mixed load by 60%
/// at the same tokens/s; docs/benchmarks.md).
pub const PASS_COST_TOKENS: usize = 16;

/// Handles of the pool's threads.
pub struct WorkerPool {
    handles: Vec<JoinHandle<()>>,
}

impl WorkerPool {
    /// Starts `workers` threads. Each first runs `warmup` through the model (so the first real
    /// request does not pay for lazy initialisation), then calls `on_warm` with how it went,
    /// then serves (unless the warm-up failed).
    pub fn start(
        workers: usize,
        cores: usize,
        batcher: Arc<Batcher<Entry>>,
        model: Arc<dyn Model>,
        warmup: Vec<u32>,
        on_warm: Arc<dyn Fn(Result<(), String>) + Send + Sync>,
    ) -> std::io::Result<Self> {
        let busy = Arc::new(AtomicUsize::new(0));
        let mut handles = Vec::with_capacity(workers);
        for i in 0..workers {
            let worker = Worker {
                batcher: batcher.clone(),
                model: model.clone(),
                busy: busy.clone(),
                cores,
                workers,
            };
            let warmup = warmup.clone();
            let on_warm = on_warm.clone();
            handles.push(
                std::thread::Builder::new()
                    .name(format!("zerobatch-worker-{i}"))
                    .spawn(move || {
                        let serve = || {
                            let warm = match catch_unwind(AssertUnwindSafe(|| {
                                worker.model.embed(&[&warmup], 1)
                            })) {
                                Ok(Ok(_)) => Ok(()),
                                Ok(Err(e)) => Err(format!("the warm-up forward pass failed: {e}")),
                                Err(p) => Err(format!(
                                    "the warm-up forward pass panicked (a bug: please report it with the model's files): {}",
                                    panic_message(&p)
                                )),
                            };
                            let warmed = warm.is_ok();
                            on_warm(warm);
                            // A worker whose model cannot run serves nothing: the load failed.
                            if warmed {
                                worker.run();
                            }
                        };
                        // The worker's own team for its intra-op sections: a section starts
                        // in nanoseconds on spinning threads, where rayon wakes sleeping ones
                        // through the kernel (tens of microseconds, dozens of sections per
                        // forward pass). Its threads sleep after 2 ms without work.
                        with_new_team(cores, "intra-op", serve)
                    })?,
            );
        }
        Ok(Self { handles })
    }

    /// Waits for every thread to finish (they do once the queue is closed and empty).
    pub fn join(self) {
        for h in self.handles {
            let _ = h.join();
        }
    }
}

struct Worker {
    batcher: Arc<Batcher<Entry>>,
    model: Arc<dyn Model>,
    busy: Arc<AtomicUsize>,
    cores: usize,
    workers: usize,
}

impl Worker {
    fn run(&self) {
        while let Some(batch) = self.batcher.next_batch() {
            // Nobody waits for these; those that timed out already got their 503.
            drop(batch.abandoned);
            if batch.entries.is_empty() {
                continue;
            }
            let started = Instant::now();
            metrics::record_batch(
                batch.entries.len(),
                batch.entries.iter().map(|e| started - e.arrived),
            );
            let running = self.busy.fetch_add(1, Ordering::AcqRel) + 1;
            let threads = intra_op_threads(self.cores, self.workers, running, self.batcher.depth());
            self.run_batch(batch.entries, threads);
            self.busy.fetch_sub(1, Ordering::AcqRel);
            metrics::upkeep_if_due();
        }
    }

    fn run_batch(&self, entries: Vec<Entry>, threads: usize) {
        let lengths: Vec<usize> = entries.iter().map(Entry::tokens).collect();
        let mut slots: Vec<Option<Entry>> = entries.into_iter().map(Some).collect();
        for group in group_by_length(&lengths, PASS_COST_TOKENS) {
            let group: Vec<Entry> = group
                .iter()
                .map(|&i| slots[i].take().expect("each index once"))
                .collect();
            self.run_pass(group, threads);
        }
    }

    fn run_pass(&self, group: Vec<Entry>, threads: usize) {
        let inputs: Vec<_> = group.iter().map(|e| e.job.input()).collect();
        let tokens = inputs.iter().map(|s| s.ids.len()).sum();
        let started = Instant::now();
        let result = catch_unwind(AssertUnwindSafe(|| self.model.forward(&inputs, threads)));
        drop(inputs);
        metrics::record_forward(tokens, started.elapsed());
        match result {
            Ok(Ok(vectors)) if vectors.len() == group.len() => {
                for (entry, v) in group.into_iter().zip(vectors) {
                    let output = match entry.job {
                        Job::Embed { .. } | Job::EmbedTokens { .. } => Output::Embedding(v),
                        Job::Score { .. } => Output::Logits(v),
                    };
                    let _ = entry.reply.send(Ok(output));
                }
            }
            Ok(Ok(vectors)) => {
                let msg = format!(
                    "model returned {} vectors for {} inputs",
                    vectors.len(),
                    group.len()
                );
                fail(group, InferError::Model(msg))
            }
            Ok(Err(e)) => {
                tracing::error!("forward pass failed: {e}");
                fail(group, InferError::Model(e.to_string()))
            }
            Err(panic) => {
                let msg = panic_message(&panic);
                tracing::error!("forward pass panicked (the worker keeps serving): {msg}");
                fail(group, InferError::WorkerPanic(msg))
            }
        }
    }
}

/// Cores a batch may use: its share of the cores among the batches running now, or among all
/// workers when more work is waiting (they are about to be busy too). One worker alone on two
/// cores uses both; two busy workers use one each; never more threads than cores.
pub fn intra_op_threads(cores: usize, workers: usize, running: usize, waiting: usize) -> usize {
    let sharing = if waiting > 0 {
        workers.max(running)
    } else {
        running
    };
    (cores / sharing.max(1)).max(1)
}

fn fail(group: Vec<Entry>, error: InferError) {
    for entry in group {
        let _ = entry.reply.send(Err(error.clone()));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::embed::batcher::BatchLimits;
    use crate::embed::queue::{Arrival, Queue};
    use crate::model::{EncoderInput, ModelError};
    use std::time::Duration;
    use tokio::sync::oneshot;

    /// Sums each sequence; panics on a sequence containing 666.
    struct Summer;

    impl Model for Summer {
        fn forward(
            &self,
            inputs: &[EncoderInput<'_>],
            _threads: usize,
        ) -> Result<Vec<Vec<f32>>, ModelError> {
            if inputs.iter().any(|s| s.ids.contains(&666)) {
                panic!("poisoned input");
            }
            Ok(inputs
                .iter()
                .map(|s| vec![s.ids.iter().sum::<u32>() as f32])
                .collect())
        }
    }

    fn submit(q: &Queue, ids: Vec<u32>) -> oneshot::Receiver<Result<Output, InferError>> {
        let (reply, rx) = oneshot::channel();
        let now = Instant::now();
        q.submit(vec![Entry {
            seq: Arrival::now(1).seq(0),
            arrived: now,
            deadline: now + Duration::from_secs(5),
            job: Job::Embed { ids },
            reply,
        }])
        .unwrap();
        rx
    }

    #[test]
    fn intra_op_threads_never_oversubscribe() {
        // Two cores, two workers: alone and nothing waiting → both cores; otherwise one each.
        assert_eq!(intra_op_threads(2, 2, 1, 0), 2);
        assert_eq!(intra_op_threads(2, 2, 1, 5), 1);
        assert_eq!(intra_op_threads(2, 2, 2, 0), 1);
        // One worker always uses every core.
        assert_eq!(intra_op_threads(2, 1, 1, 9), 2);
        // More workers than cores: one thread each.
        assert_eq!(intra_op_threads(2, 4, 3, 1), 1);
        for cores in 1..8 {
            for workers in 1..8 {
                for running in 1..=workers {
                    for waiting in [0, 1] {
                        let t = intra_op_threads(cores, workers, running, waiting);
                        assert!(t >= 1 && (t == 1 || t * running <= cores));
                    }
                }
            }
        }
    }

    #[test]
    fn a_panicking_batch_fails_alone_and_the_worker_keeps_serving() {
        let (q, r) = Queue::new(64);
        let batcher = Arc::new(Batcher::for_queue(
            r,
            BatchLimits {
                max_size: 1,
                max_tokens: 1000,
            },
            Duration::ZERO,
        ));
        let pool =
            WorkerPool::start(1, 1, batcher, Arc::new(Summer), vec![1], Arc::new(|_| {})).unwrap();
        let bad = submit(&q, vec![666]);
        let good = submit(&q, vec![1, 2, 3]);
        assert!(
            matches!(bad.blocking_recv().unwrap(), Err(InferError::WorkerPanic(m)) if m.contains("poisoned"))
        );
        match good.blocking_recv().unwrap() {
            Ok(Output::Embedding(v)) => assert_eq!(v, vec![6.0]),
            other => panic!("{other:?}"),
        }
        q.close();
        pool.join();
    }

    #[test]
    fn mixed_lengths_each_get_their_own_answer() {
        let (q, r) = Queue::new(64);
        let batcher = Arc::new(Batcher::for_queue(
            r,
            BatchLimits {
                max_size: 64,
                max_tokens: 100_000,
            },
            Duration::from_millis(20),
        ));
        let receivers: Vec<_> = (1..40u32)
            .map(|n| (n, submit(&q, (0..n * 3).collect())))
            .collect();
        let pool =
            WorkerPool::start(2, 2, batcher, Arc::new(Summer), vec![1], Arc::new(|_| {})).unwrap();
        for (n, rx) in receivers {
            let want: u32 = (0..n * 3).sum();
            match rx.blocking_recv().unwrap() {
                Ok(Output::Embedding(v)) => assert_eq!(v, vec![want as f32]),
                other => panic!("{other:?}"),
            }
        }
        q.close();
        pool.join();
    }

    /// Second token of a stress-test entry: what the fake model does with its pass.
    const NORMAL: u32 = 1;
    const FAILS: u32 = 2;
    const PANICS: u32 = 3;

    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    enum PassOutcome {
        Answered,
        Failed,
        Panicked,
    }

    /// Answers each sequence with the sum of its tokens, unless the pass holds a FAILS entry
    /// (an error) or a PANICS entry (a panic); records each pass (first tokens: entry ids).
    #[derive(Default)]
    struct Flaky {
        passes: parking_lot::Mutex<Vec<(Vec<u32>, PassOutcome)>>,
    }

    impl Model for Flaky {
        fn forward(
            &self,
            inputs: &[EncoderInput<'_>],
            _threads: usize,
        ) -> Result<Vec<Vec<f32>>, ModelError> {
            let sequences: Vec<&[u32]> = inputs.iter().map(|s| s.ids).collect();
            let has = |kind| sequences.iter().any(|s| s[1] == kind);
            let outcome = if has(PANICS) {
                PassOutcome::Panicked
            } else if has(FAILS) {
                PassOutcome::Failed
            } else {
                PassOutcome::Answered
            };
            let ids = sequences.iter().map(|s| s[0]).collect();
            self.passes.lock().push((ids, outcome));
            std::thread::yield_now();
            match outcome {
                PassOutcome::Panicked => panic!("stress: poisoned input"),
                PassOutcome::Failed => Err(ModelError::Forward("stress: failing input".into())),
                PassOutcome::Answered => Ok(sequences
                    .iter()
                    .map(|s| vec![s.iter().sum::<u32>() as f32])
                    .collect()),
            }
        }
    }

    /// How a stress-test entry is submitted.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    enum Fate {
        /// Waits for its answer; the u32 is its kind (NORMAL, FAILS, PANICS).
        Live(u32),
        /// Its deadline has passed when it is queued.
        Expired,
        /// Its receiver is dropped before it is queued (client gone).
        GoneBefore,
        /// Its receiver is dropped just after it is queued: it may run or not.
        GoneAfter,
    }

    type Answer = oneshot::Receiver<Result<Output, InferError>>;

    /// Several producers submit concurrently (groups of 1–4 entries, retrying when the queue
    /// is full) entries that answer, fail, panic, expire or are abandoned, to a pool of three
    /// workers: every live entry gets one answer, the one of its own pass; abandoned and
    /// expired entries never run; the depth returns to 0; the pool joins after close.
    #[test]
    fn stress_concurrent_producers_with_failures_expiries_and_abandons() {
        let (q, r) = Queue::new(32);
        let q = Arc::new(q);
        let batcher = Arc::new(Batcher::for_queue(
            r,
            BatchLimits {
                max_size: 8,
                max_tokens: 48,
            },
            Duration::from_micros(300),
        ));
        let model = Arc::new(Flaky::default());
        let pool = WorkerPool::start(
            3,
            2,
            batcher,
            model.clone(),
            vec![0, NORMAL],
            Arc::new(|_| {}),
        )
        .unwrap();
        let producers: Vec<_> = (0..4u32)
            .map(|p| {
                let q = q.clone();
                std::thread::spawn(move || {
                    let mut mine: Vec<(u32, Vec<u32>, Fate, Option<Answer>)> = Vec::new();
                    let mut i = 0u32;
                    while i < 200 {
                        let group = 1 + (i % 4).min(200 - i - 1);
                        let planned: Vec<(u32, Vec<u32>, Fate)> = (i..i + group)
                            .map(|i| {
                                let id = 1 + p * 1000 + i;
                                let fate = match i % 10 {
                                    0 => Fate::Expired,
                                    1 => Fate::GoneBefore,
                                    4 => Fate::GoneAfter,
                                    2 if i % 40 == 2 => Fate::Live(FAILS),
                                    3 if i % 50 == 3 => Fate::Live(PANICS),
                                    _ => Fate::Live(NORMAL),
                                };
                                let kind = if let Fate::Live(k) = fate { k } else { NORMAL };
                                let mut ids = vec![id, kind];
                                ids.extend(std::iter::repeat_n(5, (i % 7) as usize));
                                (id, ids, fate)
                            })
                            .collect();
                        let receivers = loop {
                            let now = Instant::now();
                            let mut entries = Vec::new();
                            let mut receivers = Vec::new();
                            for (_, ids, fate) in &planned {
                                let (reply, rx) = oneshot::channel();
                                let deadline = if *fate == Fate::Expired {
                                    now
                                } else {
                                    now + Duration::from_secs(30)
                                };
                                receivers.push((*fate != Fate::GoneBefore).then_some(rx));
                                entries.push(Entry {
                                    seq: Arrival::now(1).seq(0),
                                    arrived: now,
                                    deadline,
                                    job: Job::Embed { ids: ids.clone() },
                                    reply,
                                });
                            }
                            match q.submit(entries) {
                                Ok(()) => break receivers,
                                Err(crate::embed::queue::QueueError::Full { .. }) => {
                                    std::thread::sleep(Duration::from_micros(200))
                                }
                                Err(e) => panic!("{e}"),
                            }
                        };
                        for ((id, ids, fate), rx) in planned.into_iter().zip(receivers) {
                            let rx = if fate == Fate::GoneAfter { None } else { rx };
                            mine.push((id, ids, fate, rx));
                        }
                        i += group;
                    }
                    mine
                })
            })
            .collect();
        let mut entries: Vec<_> = producers
            .into_iter()
            .flat_map(|p| p.join().unwrap())
            .collect();
        assert_eq!(entries.len(), 800);
        // Every live entry gets an answer (blocking until it comes).
        let mut answers = std::collections::HashMap::new();
        let mut expired = Vec::new();
        for (id, ids, fate, rx) in entries.iter_mut() {
            match (*fate, rx.take()) {
                (Fate::Live(_), Some(rx)) => {
                    let answer = rx.blocking_recv().expect("a live entry gets an answer");
                    answers.insert(*id, (ids.iter().sum::<u32>(), answer));
                }
                (Fate::Expired, Some(rx)) => expired.push(rx),
                _ => {}
            }
        }
        q.close();
        pool.join();
        assert_eq!(q.depth(), 0, "the depth counter returns to 0");
        for rx in expired {
            assert!(
                rx.blocking_recv().is_err(),
                "an expired entry gets no answer"
            );
        }

        let mut ran = std::collections::HashMap::new();
        for (ids, outcome) in model.passes.lock().iter() {
            for &id in ids.iter().filter(|&&id| id != 0) {
                assert!(ran.insert(id, *outcome).is_none(), "entry {id} ran twice");
            }
        }
        let (mut answered, mut failed, mut panicked) = (0, 0, 0);
        for (id, _, fate, _) in &entries {
            match fate {
                Fate::Expired | Fate::GoneBefore => {
                    assert!(!ran.contains_key(id), "{fate:?} entry {id} ran")
                }
                Fate::GoneAfter => {}
                Fate::Live(kind) => {
                    let outcome = *ran
                        .get(id)
                        .unwrap_or_else(|| panic!("live entry {id} never ran"));
                    let (sum, answer) = &answers[id];
                    match (outcome, answer) {
                        (PassOutcome::Answered, Ok(Output::Embedding(v))) => {
                            assert_eq!(*kind, NORMAL);
                            assert_eq!(v, &vec![*sum as f32], "entry {id}");
                            answered += 1;
                        }
                        (PassOutcome::Failed, Err(InferError::Model(m))) => {
                            assert!(m.contains("stress: failing input"), "{m}");
                            assert_ne!(*kind, PANICS);
                            failed += 1;
                        }
                        (PassOutcome::Panicked, Err(InferError::WorkerPanic(m))) => {
                            assert!(m.contains("stress: poisoned input"), "{m}");
                            panicked += 1;
                        }
                        (outcome, answer) => {
                            panic!("entry {id} ({kind}) ran in a pass that {outcome:?}, got {answer:?}")
                        }
                    }
                }
            }
        }
        assert!(
            answered > 200 && failed > 0 && panicked > 0,
            "{answered} {failed} {panicked}"
        );
    }
}
