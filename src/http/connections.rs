//! How many client connections the front end holds, and what happens at the limit.
//!
//! Every connection costs a file descriptor and some memory, so their number is bounded:
//! - up to `--max-connections`, a connection is served normally;
//! - past it, a small reserve ([`PROBE_RESERVE`]) of connections is still accepted and served
//!   for the probes only (`/healthz`, `/readyz`, `/metrics`; every other route answers 503
//!   with `Retry-After`), with a short header timeout and no keep-alive, so a liveness probe
//!   keeps getting its answer under a connection flood as long as the kernel lets it in;
//! - past the reserve, a new connection is closed at once (it never reaches `EMFILE`, because
//!   the default limit leaves descriptors for the model files and the runtime).
//!
//! Refusals and `accept` errors are logged at most once per [`LOG_EVERY`] with a count of
//! what was suppressed, so a flood cannot flood the log too. `zerobatch_open_connections`
//! reports the count.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;

use crate::metrics;

/// Connections accepted past `--max-connections` for the probes only.
pub const PROBE_RESERVE: usize = 32;
/// Header timeout of a probe-only connection.
pub const PROBE_HEADER_TIMEOUT: Duration = Duration::from_secs(2);
/// Descriptors left for everything but client connections (model files, the runtime's epoll
/// and eventfds, the listener, logs).
const DESCRIPTORS_KEPT: usize = 64;
/// Most connections by default, whatever the file limit: an idle keep-alive connection costs
/// ~14 KiB of memory (10,000 of them took the release build from 64 to 200 MB), so 8192 keep
/// the connections' share of the 400 MB bound near 110 MB.
const DEFAULT_MAX: usize = 8_192;
/// Shortest interval between two log lines about refused connections or accept errors.
pub const LOG_EVERY: Duration = Duration::from_secs(10);

/// Raises the soft limit on open files to the hard limit (what servers are expected to do;
/// the hard limit is what the platform grants) and returns the soft limit in force.
pub fn raise_file_limit() -> usize {
    #[cfg(unix)]
    {
        let mut limit = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: `limit` is a valid, writable rlimit.
        if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
            return 1024;
        }
        if limit.rlim_cur < limit.rlim_max {
            let raised = libc::rlimit {
                rlim_cur: limit.rlim_max,
                rlim_max: limit.rlim_max,
            };
            // SAFETY: a valid rlimit; failure leaves the old limit, which is then reported.
            if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } == 0 {
                limit = raised;
            }
        }
        usize::try_from(limit.rlim_cur).unwrap_or(usize::MAX)
    }
    #[cfg(not(unix))]
    {
        1024
    }
}

/// The default of `--max-connections` for a process allowed `file_limit` open files.
pub fn default_max_connections(file_limit: usize) -> usize {
    file_limit
        .saturating_sub(DESCRIPTORS_KEPT + PROBE_RESERVE)
        .clamp(1, DEFAULT_MAX)
}

/// How a newly accepted connection is served.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    Full,
    /// Past the limit: probes only.
    ProbesOnly,
    /// Past the reserve too: close at once.
    Refused,
}

/// Counts open connections against the limit.
pub struct ConnectionGate {
    open: AtomicUsize,
    max: usize,
    log: RateLimitedLog,
}

/// Held by a connection's task; the count drops when it ends.
pub struct ConnectionSlot {
    gate: Arc<ConnectionGate>,
}

impl Drop for ConnectionSlot {
    fn drop(&mut self) {
        let open = self.gate.open.fetch_sub(1, Ordering::AcqRel) - 1;
        metrics::set_open_connections(open);
    }
}

impl ConnectionGate {
    pub fn new(max: usize) -> Arc<Self> {
        metrics::set_open_connections(0);
        Arc::new(Self {
            open: AtomicUsize::new(0),
            max,
            log: RateLimitedLog::new(LOG_EVERY),
        })
    }

    /// Connections open now.
    pub fn open(&self) -> usize {
        self.open.load(Ordering::Acquire)
    }

    pub fn max(&self) -> usize {
        self.max
    }

    /// Decides how to serve a connection just accepted; a slot when it is to be served.
    pub fn admit(self: &Arc<Self>) -> (Admission, Option<ConnectionSlot>) {
        let open = self.open.fetch_add(1, Ordering::AcqRel) + 1;
        let admission = if open <= self.max {
            Admission::Full
        } else if open <= self.max + PROBE_RESERVE {
            Admission::ProbesOnly
        } else {
            Admission::Refused
        };
        if admission == Admission::Refused {
            self.open.fetch_sub(1, Ordering::AcqRel);
        } else {
            metrics::set_open_connections(open);
        }
        if admission != Admission::Full {
            metrics::record_connection_limited(admission == Admission::Refused);
            if let Some(suppressed) = self.log.allow() {
                tracing::warn!(
                    open = open.min(self.max + PROBE_RESERVE),
                    max_connections = self.max,
                    suppressed,
                    "connection limit reached: new connections are served for the probes only, or closed; raise --max-connections or add replicas"
                );
            }
        }
        let slot = (admission != Admission::Refused).then(|| ConnectionSlot { gate: self.clone() });
        (admission, slot)
    }

    /// Logs an `accept` error (out of descriptors and the like), rate-limited.
    pub fn accept_failed(&self, error: &std::io::Error) {
        metrics::record_accept_error();
        if let Some(suppressed) = self.log.allow() {
            tracing::warn!(
                open = self.open(),
                suppressed,
                "accept failed: {error}; backing off"
            );
        }
    }
}

/// Lets one line through per interval and counts the ones it held back.
pub struct RateLimitedLog {
    every: Duration,
    state: Mutex<(Option<Instant>, u64)>,
}

impl RateLimitedLog {
    pub fn new(every: Duration) -> Self {
        Self {
            every,
            state: Mutex::new((None, 0)),
        }
    }

    /// `Some(lines suppressed since the last one)` when a line may be written now.
    pub fn allow(&self) -> Option<u64> {
        let mut state = self.state.lock();
        let now = Instant::now();
        match state.0 {
            Some(last) if now.duration_since(last) < self.every => {
                state.1 += 1;
                None
            }
            _ => {
                let suppressed = state.1;
                *state = (Some(now), 0);
                Some(suppressed)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connections_past_the_limit_are_probe_only_then_refused_and_slots_free_on_drop() {
        let gate = ConnectionGate::new(2);
        let mut slots = Vec::new();
        for want in [Admission::Full, Admission::Full] {
            let (a, s) = gate.admit();
            assert_eq!(a, want);
            slots.push(s.unwrap());
        }
        for _ in 0..PROBE_RESERVE {
            let (a, s) = gate.admit();
            assert_eq!(a, Admission::ProbesOnly);
            slots.push(s.unwrap());
        }
        let (a, s) = gate.admit();
        assert_eq!((a, s.is_none()), (Admission::Refused, true));
        assert_eq!(gate.open(), 2 + PROBE_RESERVE);
        slots.clear();
        assert_eq!(gate.open(), 0);
        assert_eq!(gate.admit().0, Admission::Full);
    }

    #[test]
    fn the_log_lets_one_line_through_per_interval_and_counts_the_rest() {
        let log = RateLimitedLog::new(Duration::from_millis(50));
        assert_eq!(log.allow(), Some(0));
        for _ in 0..5 {
            assert_eq!(log.allow(), None);
        }
        std::thread::sleep(Duration::from_millis(60));
        assert_eq!(log.allow(), Some(5));
    }

    #[test]
    fn the_default_limit_leaves_descriptors_and_is_capped() {
        assert_eq!(default_max_connections(1024), 1024 - 64 - PROBE_RESERVE);
        assert_eq!(default_max_connections(1 << 20), DEFAULT_MAX);
        assert_eq!(default_max_connections(10), 1);
    }
}
