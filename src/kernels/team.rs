//! A team of threads that run many small parallel sections in a row with little overhead:
//! what a generation step needs (hundreds of matmuls of a few microseconds each per token).
//!
//! Why not rayon: each `rayon::scope` wakes sleeping pool threads through the kernel and puts
//! them back to sleep, tens of microseconds a section; profiled at a third of a one-stream
//! decode step. The team's threads spin between sections (a section starts within
//! nanoseconds) and sleep on a condition variable only after [`SPIN`] without work, so an
//! idle server burns no CPU.
//!
//! A thread installs its team with [`Team::install`]; the kernels' parallel loops
//! ([`parallel_for`]) then run on it instead of rayon.

use std::cell::Cell;
use std::panic::{catch_unwind, resume_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use parking_lot::{Condvar, Mutex};

/// How long an idle team thread spins before it sleeps.
const SPIN: Duration = Duration::from_millis(2);

type Job = *const (dyn Fn(usize) + Sync);

struct Shared {
    threads: usize,
    /// Bumped for every section, to wake the workers.
    epoch: AtomicU64,
    /// The section's function and task count (valid while the section is open).
    job: Mutex<Option<(SendJob, usize)>>,
    /// The next task to take.
    next: AtomicUsize,
    /// The section takes no more helpers (its caller is finishing it).
    closed: AtomicBool,
    /// Workers inside the section.
    active: AtomicUsize,
    /// A worker's task panicked in the current section.
    panicked: Mutex<Option<Box<dyn std::any::Any + Send>>>,
    stop: AtomicBool,
    sleeping: Mutex<usize>,
    wake: Condvar,
}

#[derive(Clone, Copy)]
struct SendJob(Job);
// SAFETY: the pointee is `Sync` and outlives every use (see `Team::run`).
unsafe impl Send for SendJob {}

/// A raw output pointer that the tasks of one parallel section may share, each writing its
/// own disjoint part of the buffer (tiles of a matmul, units of attention).
#[derive(Clone, Copy)]
pub(crate) struct SharedOut(pub *mut f32);
// SAFETY: a pointer is only data; every user writes through it only in the part of the buffer
// its task owns, while the buffer stays mutably borrowed by the section's caller.
unsafe impl Send for SharedOut {}
unsafe impl Sync for SharedOut {}

impl SharedOut {
    /// The pointer (a method, so that closures capture the whole `Sync` wrapper).
    pub(crate) fn ptr(self) -> *mut f32 {
        self.0
    }
}

/// A fixed set of threads (the caller counts as one).
pub struct Team {
    shared: Arc<Shared>,
    handles: Vec<JoinHandle<()>>,
}

thread_local! {
    static CURRENT: Cell<Option<*const Team>> = const { Cell::new(None) };
    /// This thread is running a section's task: nested parallel loops run inline (the other
    /// threads are busy with the section).
    static IN_SECTION: Cell<bool> = const { Cell::new(false) };
}

/// Runs `f` with a new team of `threads` threads installed on the calling thread; when the
/// team's threads cannot be started, runs it on rayon instead and says so (`what` names the
/// threads in the warning).
pub fn with_new_team<R>(threads: usize, what: &str, f: impl FnOnce() -> R) -> R {
    match Team::new(threads) {
        Ok(team) => team.install(f),
        Err(e) => {
            tracing::warn!("cannot start the {what} threads ({e}): running on rayon");
            f()
        }
    }
}

impl Team {
    /// A team of `threads` threads in all (`threads − 1` are spawned).
    pub fn new(threads: usize) -> std::io::Result<Self> {
        let threads = threads.max(1);
        let shared = Arc::new(Shared {
            threads,
            epoch: AtomicU64::new(0),
            job: Mutex::new(None),
            next: AtomicUsize::new(0),
            closed: AtomicBool::new(true),
            active: AtomicUsize::new(0),
            panicked: Mutex::new(None),
            stop: AtomicBool::new(false),
            sleeping: Mutex::new(0),
            wake: Condvar::new(),
        });
        let mut handles = Vec::with_capacity(threads - 1);
        for tid in 1..threads {
            let shared = shared.clone();
            handles.push(
                std::thread::Builder::new()
                    .name(format!("zerobatch-team-{tid}"))
                    .spawn(move || worker(&shared))?,
            );
        }
        Ok(Self { shared, handles })
    }

    /// Threads in the team.
    pub fn threads(&self) -> usize {
        self.shared.threads
    }

    /// Makes `self` the team of the calling thread for the duration of `f`.
    pub fn install<R>(&self, f: impl FnOnce() -> R) -> R {
        let previous = CURRENT.with(|c| c.replace(Some(self as *const Team)));
        struct Restore(Option<*const Team>);
        impl Drop for Restore {
            fn drop(&mut self) {
                CURRENT.with(|c| c.set(self.0));
            }
        }
        let _restore = Restore(previous);
        f()
    }

    /// Runs `f(i)` for every `i` in `0..tasks`; returns when all are done. Tasks are taken
    /// one at a time by whichever thread is free, the caller included, so a worker that the
    /// OS has not scheduled (a busy machine) delays nothing: the caller does its share. A
    /// panic in a task is resumed here.
    pub fn run(&self, tasks: usize, f: &(dyn Fn(usize) + Sync)) {
        let s = &*self.shared;
        if s.threads == 1 || tasks <= 1 {
            (0..tasks).for_each(f);
            return;
        }
        // SAFETY: workers use the pointer only inside the open section, and this function
        // waits for every worker to leave it before returning: `f` outlives every use.
        let job: Job = unsafe { std::mem::transmute::<&(dyn Fn(usize) + Sync), Job>(f) };
        *s.job.lock() = Some((SendJob(job), tasks));
        s.next.store(0, Ordering::SeqCst);
        s.closed.store(false, Ordering::SeqCst);
        s.epoch.fetch_add(1, Ordering::SeqCst);
        if *s.sleeping.lock() > 0 {
            s.wake.notify_all();
        }
        IN_SECTION.with(|c| c.set(true));
        let mine = catch_unwind(AssertUnwindSafe(|| loop {
            let i = s.next.fetch_add(1, Ordering::SeqCst);
            if i >= tasks {
                break;
            }
            f(i);
        }));
        IN_SECTION.with(|c| c.set(false));
        // No worker may join from now on; wait for those inside to finish their tasks.
        s.closed.store(true, Ordering::SeqCst);
        let mut spins = 0u32;
        while s.active.load(Ordering::SeqCst) != 0 {
            spins += 1;
            if spins.is_multiple_of(64) {
                std::thread::yield_now();
            } else {
                std::hint::spin_loop();
            }
        }
        if let Err(p) = mine {
            resume_unwind(p);
        }
        if let Some(p) = s.panicked.lock().take() {
            resume_unwind(p);
        }
    }
}

impl Drop for Team {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        self.shared.epoch.fetch_add(1, Ordering::SeqCst);
        {
            let _sleeping = self.shared.sleeping.lock();
            self.shared.wake.notify_all();
        }
        for h in self.handles.drain(..) {
            let _ = h.join();
        }
    }
}

fn worker(s: &Shared) {
    let mut seen = 0u64;
    loop {
        // Spin for a new section (yielding now and then, so a busy machine's other threads
        // run), then sleep.
        let started = Instant::now();
        let mut spins = 0u32;
        while s.epoch.load(Ordering::SeqCst) == seen {
            spins += 1;
            if spins.is_multiple_of(256) {
                if started.elapsed() > SPIN {
                    let mut sleeping = s.sleeping.lock();
                    *sleeping += 1;
                    while s.epoch.load(Ordering::SeqCst) == seen {
                        s.wake.wait(&mut sleeping);
                    }
                    *sleeping -= 1;
                    break;
                }
                std::thread::yield_now();
            } else {
                std::hint::spin_loop();
            }
        }
        if s.stop.load(Ordering::SeqCst) {
            return;
        }
        seen = s.epoch.load(Ordering::SeqCst);
        // Join the open section, if it is still open (else the caller finished it alone).
        s.active.fetch_add(1, Ordering::SeqCst);
        if !s.closed.load(Ordering::SeqCst) {
            let (job, tasks) = s.job.lock().expect("a job is set before the section opens");
            IN_SECTION.with(|c| c.set(true));
            let result = catch_unwind(AssertUnwindSafe(|| loop {
                let i = s.next.fetch_add(1, Ordering::SeqCst);
                if i >= tasks {
                    break;
                }
                // SAFETY: the section is open, so `Team::run` is still waiting for us.
                unsafe { (*job.0)(i) };
            }));
            IN_SECTION.with(|c| c.set(false));
            if let Err(p) = result {
                *s.panicked.lock() = Some(p);
            }
        }
        s.active.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Runs `f(i)` for `i` in `0..tasks` on up to `threads` threads: on the calling thread's
/// team when it has one, else with rayon.
pub fn parallel_for(tasks: usize, threads: usize, f: &(dyn Fn(usize) + Sync)) {
    if tasks == 0 {
        return;
    }
    if tasks == 1 || threads <= 1 || IN_SECTION.with(Cell::get) {
        (0..tasks).for_each(f);
        return;
    }
    match CURRENT.with(Cell::get) {
        // SAFETY: an installed team outlives its `install` call, which is on this stack.
        Some(team) => unsafe { &*team }.run(tasks, f),
        None => rayon::scope(|scope| {
            for i in 0..tasks {
                scope.spawn(move |_| f(i));
            }
        }),
    }
}

/// The thread count of the calling thread's team, if it has one.
pub fn current_threads() -> Option<usize> {
    // SAFETY: as in `parallel_for`.
    CURRENT.with(Cell::get).map(|t| unsafe { &*t }.threads())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_task_runs_once_on_a_team_and_without() {
        let team = Team::new(3).unwrap();
        for use_team in [true, false] {
            for tasks in [0, 1, 2, 5, 100] {
                let seen: Vec<AtomicUsize> = (0..tasks).map(|_| AtomicUsize::new(0)).collect();
                let body = || {
                    parallel_for(tasks, 3, &|i| {
                        seen[i].fetch_add(1, Ordering::Relaxed);
                    })
                };
                if use_team {
                    team.install(body);
                } else {
                    body();
                }
                assert!(seen.iter().all(|s| s.load(Ordering::Relaxed) == 1));
            }
        }
    }

    #[test]
    fn a_panic_in_a_task_reaches_the_caller_and_the_team_still_works() {
        let team = Team::new(2).unwrap();
        let r = std::panic::catch_unwind(AssertUnwindSafe(|| {
            team.install(|| parallel_for(4, 2, &|i| assert!(i != 3, "task 3 fails")))
        }));
        assert!(r.is_err());
        let count = AtomicUsize::new(0);
        team.install(|| {
            parallel_for(10, 2, &|_| {
                count.fetch_add(1, Ordering::Relaxed);
            })
        });
        assert_eq!(count.load(Ordering::Relaxed), 10);
    }

    #[test]
    fn sleeping_workers_wake_up() {
        let team = Team::new(2).unwrap();
        std::thread::sleep(SPIN * 3);
        let count = AtomicUsize::new(0);
        team.install(|| {
            parallel_for(2, 2, &|_| {
                count.fetch_add(1, Ordering::Relaxed);
            })
        });
        assert_eq!(count.load(Ordering::Relaxed), 2);
    }
}
