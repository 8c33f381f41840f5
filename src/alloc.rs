//! The allocator's policy: how much memory a burst of large requests leaves behind.
//!
//! glibc's malloc gives each thread that contends for the heap its own arena (up to 8 per
//! core) and rarely returns their free pages to the system, so a burst of near-limit bodies
//! parsed on many threads used to leave hundreds of MB resident. Measured with
//! `scripts/memory-burst.sh` (docs/reliability.md has the table), glibc with two arenas held
//! the lowest peak of glibc, jemalloc and mimalloc (Debian's builds, and the `mimalloc` crate's
//! v2, which was worse than glibc here), so the process keeps glibc with:
//! - at most [`ARENAS`] arenas (`M_ARENA_MAX`), set before any thread starts;
//! - `malloc_trim` on a blocking thread after a request that carried a large body, at most
//!   once per [`TRIM_EVERY`], so what a burst freed goes back to the system.
//!
//! On other C libraries both are no-ops.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// Arenas glibc may create: one per inference worker on the 2-core machines this targets.
pub const ARENAS: i32 = 2;
/// Shortest interval between two trims.
pub const TRIM_EVERY: Duration = Duration::from_secs(1);
/// A request whose body was at least this large asks for a trim when it ends.
pub const TRIM_AFTER_BODY_BYTES: usize = 256 * 1024;

/// Sets the arena limit. Call first thing in `main`, before any other thread exists.
pub fn configure() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes a tuning parameter of the allocator.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, ARENAS);
    }
}

/// Returns freed heap memory to the system soon: now (on a blocking thread) if no trim ran
/// in the last [`TRIM_EVERY`], else once that interval has passed — one pending trim at most,
/// so the last request of a burst is always followed by a trim. Needs a tokio runtime.
pub fn trim_soon() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        use std::sync::atomic::AtomicBool;
        static START: OnceLock<Instant> = OnceLock::new();
        static LAST_MS: AtomicU64 = AtomicU64::new(0);
        static PENDING: AtomicBool = AtomicBool::new(false);
        let start = *START.get_or_init(Instant::now);
        let now_ms = move || start.elapsed().as_millis() as u64 + 1;
        let trim = move || {
            LAST_MS.store(now_ms(), Ordering::Release);
            tokio::task::spawn_blocking(|| {
                // SAFETY: malloc_trim only releases free memory; it takes the arenas' locks.
                unsafe { libc::malloc_trim(0) };
            });
        };
        if PENDING.swap(true, Ordering::AcqRel) {
            return;
        }
        let since = now_ms().saturating_sub(LAST_MS.load(Ordering::Acquire));
        let every = TRIM_EVERY.as_millis() as u64;
        if since >= every {
            PENDING.store(false, Ordering::Release);
            trim();
        } else {
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_millis(every - since)).await;
                PENDING.store(false, Ordering::Release);
                trim();
            });
        }
    }
}
