//! The embedding queue: a bounded crossbeam channel between the embedding service (producer,
//! on the async threads) and the batcher (consumer, on the workers), and the entries that
//! travel through it.
//!
//! One entry is one input sequence with its own reply channel, so a client batch of N inputs
//! becomes N entries that the batcher may place in different batches. Admission is all or
//! nothing: the N places are reserved at once or the request is refused with 503, so a request
//! is never half-queued. The depth counter covers entries in the channel and entries the
//! batcher holds but has not started, which is what `zerobatch_queue_depth` reports.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Instant;

use crossbeam_channel::{Receiver, Sender};
use parking_lot::{Mutex, RwLock};
use tokio::sync::oneshot;

use crate::metrics;

/// What an entry asks the model to do.
#[derive(Debug)]
pub enum Job {
    /// Embed one token sequence (its pooled vector).
    Embed { ids: Vec<u32> },
    /// Every token's vector of one sequence (TEI's `/embed_all`), in the same batches as
    /// [`Job::Embed`]: the forward pass is the same, only the pooling is skipped.
    EmbedTokens { ids: Vec<u32> },
    /// Score one text or one pair of texts with a classifier (a reranker's (query, passage)
    /// pair is one entry, batched with everything else); the tokens from `second_from` on
    /// are the second text's.
    Score { ids: Vec<u32>, second_from: usize },
}

impl Job {
    /// The model's input for this job.
    pub fn input(&self) -> crate::model::EncoderInput<'_> {
        match self {
            Job::Embed { ids } => crate::model::EncoderInput::single(ids),
            Job::EmbedTokens { ids } => crate::model::EncoderInput {
                every_token: true,
                ..crate::model::EncoderInput::single(ids)
            },
            Job::Score { ids, second_from } => crate::model::EncoderInput::pair(ids, *second_from),
        }
    }
}

/// What the model answers.
#[derive(Debug)]
pub enum Output {
    /// The pooled, not yet normalised vector; for [`Job::EmbedTokens`] every token's, one
    /// after the other.
    Embedding(Vec<f32>),
    /// The classifier's logits, one per label.
    Logits(Vec<f32>),
}

/// Why an entry got no output.
#[derive(Debug, Clone, thiserror::Error)]
pub enum InferError {
    #[error("the model failed on this batch: {0}")]
    Model(String),
    #[error("the inference worker crashed while running this batch: {0}")]
    WorkerPanic(String),
    #[error("the request waited longer than the request timeout")]
    TimedOut,
}

/// The reply channel of one entry.
pub type Reply = oneshot::Sender<Result<Output, InferError>>;

/// One queued input.
#[derive(Debug)]
pub struct Entry {
    /// Arrival order, taken when the HTTP request arrived (not when it was queued), so
    /// requests held during a cold start keep their order.
    pub seq: u64,
    pub arrived: Instant,
    /// After this the answer is no longer wanted (the client got 503).
    pub deadline: Instant,
    pub job: Job,
    pub reply: Reply,
}

impl Entry {
    /// Tokens this entry adds to a batch.
    pub fn tokens(&self) -> usize {
        self.job.input().ids.len()
    }
}

/// Why the queue refused entries.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum QueueError {
    #[error("the queue is full (it holds {capacity} inputs)")]
    Full { capacity: usize },
    #[error("the server is shutting down")]
    Closed,
}

/// A request's place in arrival order: the sequence number of its first input, taken when the
/// request arrives, before any wait for the model to load, so that requests held through a cold
/// start are batched in the order they came (the batcher keeps its pending entries sorted by
/// it). One clock for the process.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Arrival(u64);

impl Arrival {
    /// The places of a request of `inputs` inputs that arrives now.
    pub fn now(inputs: usize) -> Self {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        Arrival(NEXT.fetch_add(inputs.max(1) as u64, Ordering::Relaxed))
    }

    /// The sequence number of input `i` of the request.
    pub fn seq(self, i: usize) -> u64 {
        self.0 + i as u64
    }
}

/// Producer side, held by the embedding service.
pub struct Queue {
    tx: RwLock<Option<Sender<Entry>>>,
    depth: Arc<AtomicUsize>,
    /// Held while one request's entries are sent, so the batcher drains whole requests
    /// (the batcher's `whole_requests`).
    sending: Arc<Mutex<()>>,
    capacity: usize,
}

/// Consumer side, handed to the batcher.
pub struct QueueReceiver {
    rx: Receiver<Entry>,
    depth: Arc<AtomicUsize>,
    sending: Arc<Mutex<()>>,
}

impl QueueReceiver {
    /// What the batcher is built from: the channel, the depth counter (shared with the
    /// producer, which increments it) and the lock the producer holds while it sends one
    /// request's entries (the batcher's `for_queue`).
    pub fn into_parts(self) -> (Receiver<Entry>, Arc<AtomicUsize>, Arc<Mutex<()>>) {
        (self.rx, self.depth, self.sending)
    }
}

impl Queue {
    /// A queue that holds at most `capacity` waiting inputs.
    pub fn new(capacity: usize) -> (Queue, QueueReceiver) {
        let (tx, rx) = crossbeam_channel::bounded(capacity);
        let depth = Arc::new(AtomicUsize::new(0));
        let sending = Arc::new(Mutex::new(()));
        let queue = Queue {
            tx: RwLock::new(Some(tx)),
            depth: depth.clone(),
            sending: sending.clone(),
            capacity,
        };
        let receiver = QueueReceiver { rx, depth, sending };
        (queue, receiver)
    }

    /// Most inputs waiting at once.
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Inputs waiting now.
    pub fn depth(&self) -> usize {
        self.depth.load(Ordering::Relaxed)
    }

    /// Queues all `entries` or none of them.
    pub fn submit(&self, entries: Vec<Entry>) -> Result<(), QueueError> {
        let n = entries.len();
        let reserved = self
            .depth
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |d| {
                (d + n <= self.capacity).then_some(d + n)
            });
        let Ok(before) = reserved else {
            return Err(QueueError::Full {
                capacity: self.capacity,
            });
        };
        let tx = self.tx.read();
        let Some(tx) = tx.as_ref() else {
            self.depth.fetch_sub(n, Ordering::AcqRel);
            return Err(QueueError::Closed);
        };
        // One request's entries reach the batcher together (see `Batcher::whole_requests`).
        let _sending = self.sending.lock();
        for entry in entries {
            // Cannot fail for lack of room: the channel holds `capacity` and the depth counter
            // (which also counts what the batcher holds) has reserved a place. It fails only if
            // the receiver is gone, when the entry's dropped reply tells its request.
            if tx.try_send(entry).is_err() {
                self.depth.fetch_sub(1, Ordering::AcqRel);
            }
        }
        metrics::set_queue_depth(before + n);
        Ok(())
    }

    /// Refuses new entries; the batcher finishes those already queued, then stops.
    pub fn close(&self) {
        self.tx.write().take();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn entry(_q: &Queue) -> (Entry, oneshot::Receiver<Result<Output, InferError>>) {
        let (reply, rx) = oneshot::channel();
        let now = Instant::now();
        let e = Entry {
            seq: Arrival::now(1).seq(0),
            arrived: now,
            deadline: now + Duration::from_secs(1),
            job: Job::Embed { ids: vec![1, 2] },
            reply,
        };
        (e, rx)
    }

    #[test]
    fn admission_is_all_or_nothing() {
        let (q, r) = Queue::new(3);
        let (a, _ra) = entry(&q);
        let (b, _rb) = entry(&q);
        q.submit(vec![a, b]).unwrap();
        let (c, _rc) = entry(&q);
        let (d, _rd) = entry(&q);
        assert_eq!(q.submit(vec![c, d]), Err(QueueError::Full { capacity: 3 }));
        assert_eq!(q.depth(), 2);
        assert_eq!(r.rx.len(), 2);
        let (e, _re) = entry(&q);
        q.submit(vec![e]).unwrap();
        assert_eq!(q.depth(), 3);
    }

    #[test]
    fn a_closed_queue_refuses_and_releases_its_reservation() {
        let (q, _r) = Queue::new(3);
        q.close();
        let (a, _ra) = entry(&q);
        assert_eq!(q.submit(vec![a]), Err(QueueError::Closed));
        assert_eq!(q.depth(), 0);
    }
}
