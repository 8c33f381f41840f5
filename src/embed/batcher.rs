//! The dynamic micro-batcher: when an inference thread is free, it takes what is waiting.
//!
//! Policy (pure functions, unit-tested without a model):
//! - a batch always starts with the oldest waiting entry, so nothing starves, then takes the
//!   following entries in arrival order that keep it within `max_batch_size` entries and
//!   `max_batch_tokens` padded tokens (entries × longest entry); entries that do not fit are
//!   skipped, not blocking smaller ones behind them, and are first in line for the next batch;
//! - entries whose client has gone or whose deadline has passed are removed before inference;
//! - with a delay window, a free worker waits until the oldest entry is `max_batch_delay` old
//!   (or the batch is full) before it takes the batch: a little latency for fuller batches;
//! - inside a batch, [`group_by_length`] splits the entries into forward passes of similar
//!   length, choosing the split that minimises padded tokens plus a fixed cost per pass. The
//!   encoders run unpadded, so this no longer saves arithmetic; it keeps short inputs from
//!   waiting for a long one's pass.
//!
//! Free workers share one `Batcher`: the one holding its lock is the one forming the next batch
//! (blocking on the channel while nothing waits, so an idle server burns no CPU); the others
//! sleep on the lock. There is no separate batcher thread and no hand-off between threads.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::Receiver;
use parking_lot::Mutex;

/// What the batcher needs to know of an entry.
pub trait Batchable {
    /// Arrival order (smaller is older).
    fn seq(&self) -> u64;
    fn arrived(&self) -> Instant;
    fn tokens(&self) -> usize;
    /// True when nobody waits for the answer any more (client gone or deadline passed).
    fn abandoned(&self, now: Instant) -> bool;
}

impl Batchable for super::queue::Entry {
    fn seq(&self) -> u64 {
        self.seq
    }
    fn arrived(&self) -> Instant {
        self.arrived
    }
    fn tokens(&self) -> usize {
        super::queue::Entry::tokens(self)
    }
    fn abandoned(&self, now: Instant) -> bool {
        self.reply.is_closed() || now >= self.deadline
    }
}

/// Limits of one batch.
#[derive(Debug, Clone, Copy)]
pub struct BatchLimits {
    pub max_size: usize,
    /// Padded tokens: entries × the longest entry.
    pub max_tokens: usize,
}

/// Takes the next batch out of `pending` (kept in arrival order). Never empty when `pending`
/// is not: the oldest entry is always taken, even alone over the token budget.
pub fn take_batch<T: Batchable>(pending: &mut VecDeque<T>, limits: BatchLimits) -> Vec<T> {
    let Some(first) = pending.pop_front() else {
        return Vec::new();
    };
    let mut longest = first.tokens();
    let mut batch = vec![first];
    let mut i = 0;
    while i < pending.len() && batch.len() < limits.max_size {
        let candidate = pending[i].tokens().max(longest);
        if candidate * (batch.len() + 1) <= limits.max_tokens {
            longest = candidate;
            batch.push(pending.remove(i).expect("index checked"));
        } else {
            i += 1;
        }
    }
    batch
}

/// Padded tokens of a batch if run as one forward pass.
pub fn padded_tokens<T: Batchable>(batch: &[T]) -> usize {
    batch.len() * batch.iter().map(Batchable::tokens).max().unwrap_or(0)
}

/// Splits entries of the given lengths into forward passes of similar length. Returns groups
/// of indices into `lengths`, each sorted by length. Minimises Σ (entries × longest +
/// `pass_cost`) over the groups: exact, by dynamic programming over the lengths in sorted
/// order (an optimal grouping of sorted lengths is contiguous).
pub fn group_by_length(lengths: &[usize], pass_cost: usize) -> Vec<Vec<usize>> {
    let n = lengths.len();
    let mut order: Vec<usize> = (0..n).collect();
    order.sort_by_key(|&i| lengths[i]);
    // best[j]: least cost of the first j sorted entries; cut[j]: where its last group starts.
    let mut best = vec![0usize; n + 1];
    let mut cut = vec![0usize; n + 1];
    for j in 1..=n {
        let longest = lengths[order[j - 1]];
        let (cost, start) = (0..j)
            .map(|i| (best[i] + (j - i) * longest + pass_cost, i))
            .min()
            .expect("j ≥ 1");
        best[j] = cost;
        cut[j] = start;
    }
    let mut groups = Vec::new();
    let mut j = n;
    while j > 0 {
        let i = cut[j];
        groups.push(order[i..j].to_vec());
        j = i;
    }
    groups.reverse();
    groups
}

/// A batch to run, and the entries removed because nobody waits for them any more.
pub struct Batch<T> {
    pub entries: Vec<T>,
    pub abandoned: Vec<T>,
}

/// Forms batches from the queue's receiver for the pool's workers.
pub struct Batcher<T> {
    rx: Receiver<T>,
    pending: Mutex<VecDeque<T>>,
    limits: BatchLimits,
    delay: Duration,
    depth: Arc<AtomicUsize>,
    /// Held by the producer while it sends one request's entries (see
    /// [`Self::whole_requests`]).
    sending: Option<Arc<Mutex<()>>>,
}

impl<T: Batchable> Batcher<T> {
    /// A batcher over `rx`; `depth` counts entries queued but not yet taken (shared with the
    /// producer, which increments it).
    pub fn new(
        rx: Receiver<T>,
        depth: Arc<AtomicUsize>,
        limits: BatchLimits,
        delay: Duration,
    ) -> Self {
        Self {
            rx,
            pending: Mutex::new(VecDeque::new()),
            limits,
            delay,
            depth,
            sending: None,
        }
    }

    /// Makes every drain of the channel wait while the producer holds `sending`, which it
    /// holds while it sends one request's entries: a batch then never takes the first few
    /// inputs of a request that is still arriving. Without it a worker woken by a 20-pair
    /// rerank's first pair could start on 3 of them with both cores while the other worker
    /// took the other 17 (one core each once two run): c=1 reranking swung between 35 and
    /// 50 pairs/s from run to run (docs/benchmarks.md).
    pub fn whole_requests(mut self, sending: Arc<Mutex<()>>) -> Self {
        self.sending = Some(sending);
        self
    }

    /// Entries waiting (in the channel or held here).
    pub fn depth(&self) -> usize {
        self.depth.load(Ordering::Relaxed)
    }

    /// Blocks until there is work, then returns the next batch. `None` once the queue is
    /// closed and everything in it has been handed out.
    pub fn next_batch(&self) -> Option<Batch<T>> {
        let mut pending = self.pending.lock();
        let mut abandoned = Vec::new();
        loop {
            self.drain_channel(&mut pending);
            let now = Instant::now();
            let before = pending.len();
            let mut kept = VecDeque::with_capacity(before);
            for e in pending.drain(..) {
                if e.abandoned(now) {
                    abandoned.push(e);
                } else {
                    kept.push_back(e);
                }
            }
            *pending = kept;
            self.release(before - pending.len());

            let Some(oldest) = pending.front() else {
                if !abandoned.is_empty() {
                    return Some(Batch {
                        entries: Vec::new(),
                        abandoned,
                    });
                }
                // Nothing waits: sleep on the channel (no CPU) until something arrives.
                match self.rx.recv() {
                    Ok(e) => {
                        pending.push_back(e);
                        continue;
                    }
                    Err(_) => return None,
                }
            };
            if !self.delay.is_zero() && !self.would_fill(&pending) {
                let until = oldest.arrived() + self.delay;
                if now < until {
                    // Wait for the window to close; an arrival re-checks whether the batch is
                    // full. A timeout or a closed queue ends the window.
                    if let Ok(e) = self.rx.recv_deadline(until) {
                        insert_in_order(&mut pending, e);
                        continue;
                    }
                }
            }
            let entries = take_batch(&mut pending, self.limits);
            self.release(entries.len());
            return Some(Batch { entries, abandoned });
        }
    }

    fn would_fill(&self, pending: &VecDeque<T>) -> bool {
        if pending.len() >= self.limits.max_size {
            return true;
        }
        let longest = pending.iter().map(Batchable::tokens).max().unwrap_or(0);
        (pending.len() + 1) * longest > self.limits.max_tokens
    }

    fn drain_channel(&self, pending: &mut VecDeque<T>) {
        // Whole requests only: wait for a producer that is sending (a few µs at most).
        let _sending = self.sending.as_ref().map(|s| s.lock());
        while let Ok(e) = self.rx.try_recv() {
            insert_in_order(pending, e);
        }
    }

    fn release(&self, n: usize) {
        if n > 0 {
            let before = self.depth.fetch_sub(n, Ordering::AcqRel);
            crate::metrics::set_queue_depth(before.saturating_sub(n));
        }
    }
}

impl Batcher<super::queue::Entry> {
    /// The batcher of the embedding queue `receiver` comes from: batches of whole requests
    /// ([`Self::whole_requests`]) of at most `limits`, waiting up to `delay` for one to fill.
    pub fn for_queue(
        receiver: super::queue::QueueReceiver,
        limits: BatchLimits,
        delay: Duration,
    ) -> Self {
        let (rx, depth, sending) = receiver.into_parts();
        Batcher::new(rx, depth, limits, delay).whole_requests(sending)
    }
}

/// Appends `e`, keeping `pending` sorted by arrival (entries held during a cold start may be
/// queued slightly out of their arrival order).
fn insert_in_order<T: Batchable>(pending: &mut VecDeque<T>, e: T) {
    let at = pending
        .iter()
        .rposition(|p| p.seq() < e.seq())
        .map_or(0, |i| i + 1);
    pending.insert(at, e);
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicBool;

    #[derive(Debug)]
    struct Fake {
        seq: u64,
        tokens: usize,
        arrived: Instant,
        gone: Arc<AtomicBool>,
    }

    impl Batchable for Fake {
        fn seq(&self) -> u64 {
            self.seq
        }
        fn arrived(&self) -> Instant {
            self.arrived
        }
        fn tokens(&self) -> usize {
            self.tokens
        }
        fn abandoned(&self, _: Instant) -> bool {
            self.gone.load(Ordering::Relaxed)
        }
    }

    fn fake(seq: u64, tokens: usize) -> Fake {
        Fake {
            seq,
            tokens,
            arrived: Instant::now(),
            gone: Arc::new(AtomicBool::new(false)),
        }
    }

    fn seqs(v: &[Fake]) -> Vec<u64> {
        v.iter().map(|f| f.seq).collect()
    }

    const WIDE: BatchLimits = BatchLimits {
        max_size: 100,
        max_tokens: 1_000_000,
    };

    #[test]
    fn batch_size_is_capped_and_order_kept() {
        let mut p: VecDeque<Fake> = (0..10).map(|i| fake(i, 5)).collect();
        let b = take_batch(
            &mut p,
            BatchLimits {
                max_size: 4,
                ..WIDE
            },
        );
        assert_eq!(seqs(&b), vec![0, 1, 2, 3]);
        assert_eq!(p.len(), 6);
    }

    #[test]
    fn token_budget_counts_padding_and_skips_what_does_not_fit() {
        // Budget 40: [10, 10] = 20 padded; adding 30 → 3 × 30 = 90 > 40, skipped; 10 → 30.
        let mut p: VecDeque<Fake> = [(0, 10), (1, 10), (2, 30), (3, 10), (4, 10)]
            .iter()
            .map(|&(s, t)| fake(s, t))
            .collect();
        let b = take_batch(
            &mut p,
            BatchLimits {
                max_size: 100,
                max_tokens: 40,
            },
        );
        assert_eq!(seqs(&b), vec![0, 1, 3, 4]);
        assert!(padded_tokens(&b) <= 40);
        // The skipped long entry is now the oldest and goes next: no starvation.
        let b = take_batch(
            &mut p,
            BatchLimits {
                max_size: 100,
                max_tokens: 40,
            },
        );
        assert_eq!(seqs(&b), vec![2]);
    }

    #[test]
    fn the_oldest_entry_goes_even_when_alone_over_budget() {
        let mut p: VecDeque<Fake> = [(0, 500), (1, 1)]
            .iter()
            .map(|&(s, t)| fake(s, t))
            .collect();
        let b = take_batch(
            &mut p,
            BatchLimits {
                max_size: 100,
                max_tokens: 100,
            },
        );
        assert_eq!(seqs(&b), vec![0]);
    }

    #[test]
    fn no_entry_starves_under_a_stream_of_short_ones() {
        let limits = BatchLimits {
            max_size: 4,
            max_tokens: 64,
        };
        let mut p: VecDeque<Fake> = VecDeque::new();
        p.push_back(fake(0, 60));
        let mut next = 1;
        let mut served_long_at = None;
        for round in 0..10 {
            for _ in 0..8 {
                p.push_back(fake(next, 4));
                next += 1;
            }
            let b = take_batch(&mut p, limits);
            if b.iter().any(|f| f.seq == 0) {
                served_long_at = Some(round);
                break;
            }
        }
        assert_eq!(served_long_at, Some(0));
        // And short entries queued behind many others are served within a bounded number of batches.
        let oldest_waiting = p.front().unwrap().seq;
        let b = take_batch(&mut p, limits);
        assert_eq!(b[0].seq, oldest_waiting);
    }

    #[test]
    fn grouping_by_length_separates_short_from_long_only_when_it_pays() {
        // Equal lengths: one pass.
        assert_eq!(group_by_length(&[8, 8, 8, 8], 16).len(), 1);
        // Many short and one very long: padding the shorts to 200 costs far more than a pass.
        let lengths = [8, 9, 200, 8, 10, 9, 8, 7];
        let groups = group_by_length(&lengths, 16);
        assert_eq!(groups.len(), 2);
        assert_eq!(groups[1], vec![2]);
        let mut all: Vec<usize> = groups.concat();
        all.sort();
        assert_eq!(all, (0..lengths.len()).collect::<Vec<_>>());
        // With a huge pass cost everything stays together.
        assert_eq!(group_by_length(&lengths, 100_000).len(), 1);
        assert!(group_by_length(&[], 16).is_empty());
    }

    #[test]
    fn grouping_is_optimal_against_brute_force() {
        let lengths = [3, 17, 5, 40, 41, 6, 90, 12];
        let cost = |groups: &[Vec<usize>]| -> usize {
            groups
                .iter()
                .map(|g| g.len() * g.iter().map(|&i| lengths[i]).max().unwrap() + 10)
                .sum()
        };
        let got = cost(&group_by_length(&lengths, 10));
        // Brute force over contiguous cuts of the sorted order (2^(n-1) ways).
        let mut sorted: Vec<usize> = (0..lengths.len()).collect();
        sorted.sort_by_key(|&i| lengths[i]);
        let mut best = usize::MAX;
        for mask in 0..(1u32 << (lengths.len() - 1)) {
            let mut groups = vec![vec![sorted[0]]];
            for (k, &index) in sorted.iter().enumerate().skip(1) {
                if mask & (1 << (k - 1)) != 0 {
                    groups.push(Vec::new());
                }
                groups.last_mut().unwrap().push(index);
            }
            best = best.min(cost(&groups));
        }
        assert_eq!(got, best);
    }

    /// With `whole_requests`, a worker woken by a request's first input waits for the rest
    /// while the producer is still sending them (it holds the lock as `Queue::submit` does),
    /// so the batch holds the whole request; without it, the batch is the first input alone.
    #[test]
    fn a_batch_waits_for_the_rest_of_a_request_being_sent() {
        let limits = BatchLimits {
            max_size: 64,
            max_tokens: 1 << 20,
        };
        for whole in [true, false] {
            let (tx, batcher, _) = batcher(limits, Duration::ZERO);
            let sending = Arc::new(Mutex::new(()));
            let batcher = if whole {
                batcher.whole_requests(sending.clone())
            } else {
                batcher
            };
            let first_batch = std::thread::scope(|s| {
                let worker = s.spawn(|| batcher.next_batch().unwrap().entries.len());
                let request = sending.lock();
                for i in 0..5 {
                    tx.send(fake(i, 4)).unwrap();
                    // A slow producer: the worker wakes on the first input.
                    std::thread::sleep(Duration::from_millis(20));
                }
                drop(request);
                worker.join().unwrap()
            });
            assert_eq!(first_batch, if whole { 5 } else { 1 }, "whole: {whole}");
        }
    }

    /// A producer that counts depth as `Queue::submit` does.
    struct Tx(crossbeam_channel::Sender<Fake>, Arc<AtomicUsize>);

    impl Tx {
        fn send(&self, f: Fake) -> Result<(), ()> {
            self.1.fetch_add(1, Ordering::AcqRel);
            self.0.send(f).map_err(|_| ())
        }
    }

    fn batcher(limits: BatchLimits, delay: Duration) -> (Tx, Batcher<Fake>, Arc<AtomicUsize>) {
        let (tx, rx) = crossbeam_channel::unbounded();
        let depth = Arc::new(AtomicUsize::new(0));
        (
            Tx(tx, depth.clone()),
            Batcher::new(rx, depth.clone(), limits, delay),
            depth,
        )
    }

    #[test]
    fn abandoned_entries_are_removed_before_inference() {
        let (tx, b, depth) = batcher(WIDE, Duration::ZERO);
        let gone = fake(0, 3);
        gone.gone.store(true, Ordering::Relaxed);
        for f in [gone, fake(1, 3), fake(2, 3)] {
            tx.send(f).unwrap();
        }
        let batch = b.next_batch().unwrap();
        assert_eq!(seqs(&batch.entries), vec![1, 2]);
        assert_eq!(seqs(&batch.abandoned), vec![0]);
        assert_eq!(depth.load(Ordering::Relaxed), 0);
        drop(tx);
        assert!(b.next_batch().is_none());
    }

    #[test]
    fn without_a_delay_a_free_worker_takes_what_waits_at_once() {
        let (tx, b, _) = batcher(WIDE, Duration::ZERO);
        tx.send(fake(0, 3)).unwrap();
        let t = Instant::now();
        let batch = b.next_batch().unwrap();
        assert_eq!(batch.entries.len(), 1);
        // Generous bound for loaded CI machines; the point is "no window", not speed.
        assert!(t.elapsed() < Duration::from_millis(500));
    }

    #[test]
    fn the_delay_window_collects_late_arrivals_and_a_full_batch_ends_it() {
        let (tx, b, _) = batcher(
            BatchLimits {
                max_size: 3,
                max_tokens: 1000,
            },
            Duration::from_millis(300),
        );
        tx.send(fake(0, 3)).unwrap();
        let sender = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(30));
            tx.send(fake(1, 3)).unwrap();
            tx.send(fake(2, 3)).unwrap();
            tx
        });
        let t = Instant::now();
        let batch = b.next_batch().unwrap();
        // Full (3 of 3) long before the 300 ms window closed.
        assert_eq!(seqs(&batch.entries), vec![0, 1, 2]);
        assert!(
            t.elapsed() < Duration::from_millis(250),
            "{:?}",
            t.elapsed()
        );
        let tx = sender.join().unwrap();
        // A lone entry waits out the window, then goes alone.
        tx.send(fake(3, 3)).unwrap();
        let t = Instant::now();
        let batch = b.next_batch().unwrap();
        assert_eq!(seqs(&batch.entries), vec![3]);
        assert!(
            t.elapsed() >= Duration::from_millis(250),
            "{:?}",
            t.elapsed()
        );
    }

    #[test]
    fn entries_queued_out_of_arrival_order_are_served_in_arrival_order() {
        let (tx, b, _) = batcher(
            BatchLimits {
                max_size: 2,
                max_tokens: 1000,
            },
            Duration::ZERO,
        );
        for s in [3, 1, 2, 0] {
            tx.send(fake(s, 3)).unwrap();
        }
        assert_eq!(seqs(&b.next_batch().unwrap().entries), vec![0, 1]);
        assert_eq!(seqs(&b.next_batch().unwrap().entries), vec![2, 3]);
    }
}
