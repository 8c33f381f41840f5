//! When a broker without a blocking read (Azure Storage Queues) asks an empty queue again.
//!
//! After an empty read the next one waits a pause that doubles from [`POLL_FIRST`] to
//! [`POLL_LAST`]; a read that finds work resets it. The schedule outlives one `pull`: a pull
//! whose time is up returns, and the next pull still waits out the pause, so an idle replica
//! reads about once per [`POLL_LAST`] however long each pull may wait. (Before, a pull that
//! could not fit another pause returned and the next one read at once: two reads a second.)

use std::time::Duration;

use tokio::time::Instant;

/// The pause after the first empty read.
pub const POLL_FIRST: Duration = Duration::from_millis(50);
/// The longest pause: how often an idle replica reads.
pub const POLL_LAST: Duration = Duration::from_secs(1);

/// The pause between reads of an empty queue and the time of the next read.
#[derive(Debug)]
pub struct IdlePolling {
    pause: Duration,
    next_read: Option<Instant>,
}

/// What a pull does next.
#[derive(Debug, PartialEq, Eq)]
pub enum Next {
    /// Read the queue at this time (now or later).
    ReadAt(Instant),
    /// The next read falls after the pull's deadline: wait until the deadline and return empty.
    GiveUpAt(Instant),
}

impl Default for IdlePolling {
    fn default() -> Self {
        Self {
            pause: POLL_FIRST,
            next_read: None,
        }
    }
}

impl IdlePolling {
    /// The next step of a pull that must return by `deadline`.
    pub fn next(&self, deadline: Instant) -> Next {
        match self.next_read {
            Some(at) if at > deadline => Next::GiveUpAt(deadline),
            Some(at) => Next::ReadAt(at),
            None => Next::ReadAt(Instant::now()),
        }
    }

    /// A read found work: read again at once, and start pausing from the first pause.
    pub fn found_work(&mut self) {
        *self = Self::default();
    }

    /// A read that ended at `now` found nothing: wait the pause, and a longer one next time.
    pub fn found_nothing(&mut self, now: Instant) {
        self.next_read = Some(now + self.pause);
        self.pause = (self.pause * 2).min(POLL_LAST);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Reads of an empty queue over `span`, by back-to-back pulls that may each wait `wait`
    /// (reads take no time).
    fn reads_over(span: Duration, wait: Duration) -> Vec<Duration> {
        let start = Instant::now();
        let mut polling = IdlePolling::default();
        let mut now = start;
        let mut reads = Vec::new();
        while now < start + span {
            let deadline = now + wait;
            loop {
                match polling.next(deadline) {
                    Next::GiveUpAt(at) => {
                        now = at;
                        break;
                    }
                    Next::ReadAt(at) => {
                        now = now.max(at);
                        reads.push(now - start);
                        polling.found_nothing(now);
                    }
                }
            }
        }
        reads
    }

    #[test]
    fn an_idle_replica_reads_once_per_longest_pause_across_pulls() {
        for wait in [
            Duration::from_millis(500),
            Duration::from_secs(2),
            Duration::from_millis(2500),
        ] {
            let reads = reads_over(Duration::from_secs(20), wait);
            // 50 + 100 + 200 + 400 + 800 ms to reach the longest pause, then one a second.
            let gaps: Vec<Duration> = reads.windows(2).map(|w| w[1] - w[0]).collect();
            assert_eq!(
                &gaps[..5],
                [50, 100, 200, 400, 800].map(Duration::from_millis),
                "wait {wait:?}"
            );
            assert!(
                gaps[5..].iter().all(|&g| g == POLL_LAST),
                "wait {wait:?}: {gaps:?}"
            );
            assert!(reads.len() <= 25, "wait {wait:?}: {} reads", reads.len());
        }
    }

    #[test]
    fn work_found_resets_the_pause_and_the_next_read_is_at_once() {
        let mut polling = IdlePolling::default();
        let t = Instant::now();
        for _ in 0..10 {
            polling.found_nothing(t);
        }
        assert_eq!(polling.next(t + POLL_LAST * 2), Next::ReadAt(t + POLL_LAST));
        assert_eq!(
            polling.next(t + Duration::from_millis(10)),
            Next::GiveUpAt(t + Duration::from_millis(10))
        );
        polling.found_work();
        let before = Instant::now();
        match polling.next(before + POLL_LAST) {
            Next::ReadAt(at) => assert!(at >= before && at <= Instant::now()),
            other => panic!("{other:?}"),
        }
        polling.found_nothing(t);
        assert_eq!(polling.next(t + POLL_LAST), Next::ReadAt(t + POLL_FIRST));
    }
}
