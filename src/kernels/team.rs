//! The threads every parallel section of the kernels runs on: a team of threads that run many
//! small sections in a row with little overhead, which is what a forward pass or a generation
//! step needs (dozens to hundreds of matmuls of a few microseconds each).
//!
//! Why not rayon: each `rayon::scope` wakes sleeping pool threads through the kernel and puts
//! them back to sleep, tens of microseconds a section; profiled at a third of a one-stream
//! decode step. The team's threads spin between sections (a section starts within
//! nanoseconds) and sleep on a condition variable only after [`SPIN`] without work, so an
//! idle server burns no CPU. One scheme for every section also means no second pool whose
//! threads compete with a team's spinning ones for the same cores.
//!
//! A thread installs its team with [`Team::install`] (the embedding workers, the generation
//! loop); [`parallel_for`] then runs on it. Without a team, a section starts scoped threads
//! for itself and joins them at its end: tens of microseconds a section, right for the few
//! coarse sections of loading a model, wrong for a forward pass (which therefore installs a
//! team). A section inside a section runs inline on the thread that took the outer task.

use std::cell::Cell;
use std::num::NonZeroUsize;
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
/// team's threads cannot be started, runs it without a team (each parallel section then
/// starts its own threads, see [`parallel_for`]) and says so (`what` names the threads in the
/// warning).
pub fn with_new_team<R>(threads: usize, what: &str, f: impl FnOnce() -> R) -> R {
    match Team::new(threads) {
        Ok(team) => team.install(f),
        Err(e) => {
            tracing::warn!(
                "cannot start the {what} threads ({e}): each parallel section starts its own"
            );
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

/// Runs `f(i)` for `i` in `0..tasks` on up to `threads` threads (the caller counts as one),
/// each task once; returns when all are done, resuming a task's panic.
///
/// - With a team installed on the calling thread: on the team (at most its size).
/// - Inside a task of another section: inline, on this thread (the others are busy).
/// - Without a team: on `threads − 1` scoped threads started for this section, and the
///   caller; if the OS refuses to start some, on fewer (the caller alone at worst). Fine for
///   the few sections of loading a model; code that runs many sections installs a team.
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
        None => run_on_scoped_threads(tasks, threads.min(tasks), f),
    }
}

/// [`parallel_for`] without a team: `threads − 1` scoped threads and the caller take tasks
/// from a shared counter.
fn run_on_scoped_threads(tasks: usize, threads: usize, f: &(dyn Fn(usize) + Sync)) {
    let next = AtomicUsize::new(0);
    let take_tasks = || {
        IN_SECTION.with(|c| c.set(true));
        let result = catch_unwind(AssertUnwindSafe(|| loop {
            let i = next.fetch_add(1, Ordering::Relaxed);
            if i >= tasks {
                break;
            }
            f(i);
        }));
        IN_SECTION.with(|c| c.set(false));
        result
    };
    std::thread::scope(|scope| {
        let helpers: Vec<_> = (1..threads)
            .map_while(|_| {
                std::thread::Builder::new()
                    .name("zerobatch-section".into())
                    .spawn_scoped(scope, take_tasks)
                    .ok()
            })
            .collect();
        let mine = take_tasks();
        let theirs: Vec<_> = helpers.into_iter().map(|h| h.join()).collect();
        if let Err(p) = mine {
            resume_unwind(p);
        }
        for result in theirs {
            // A helper catches its tasks' panics, so its thread itself cannot panic.
            if let Ok(Err(p)) = result {
                resume_unwind(p);
            }
        }
    });
}

/// Runs `f(i)` for `i` in `0..tasks` as [`parallel_for`] does and returns the results in
/// order.
pub fn parallel_map<R: Send>(
    tasks: usize,
    threads: usize,
    f: &(dyn Fn(usize) -> R + Sync),
) -> Vec<R> {
    let slots: Vec<Mutex<Option<R>>> = (0..tasks).map(|_| Mutex::new(None)).collect();
    parallel_for(tasks, threads, &|i| *slots[i].lock() = Some(f(i)));
    slots
        .into_iter()
        .map(|slot| slot.into_inner().expect("parallel_for runs every task"))
        .collect()
}

/// Runs `first` and `f(i)` for `i` in `0..tasks`, all as tasks of one section (`first` is
/// taken first: give it the largest piece of work, so that it is not left for last).
/// Returns `first`'s result and the others in order.
pub fn join_map<A: Send, R: Send>(
    first: impl FnOnce() -> A + Send,
    tasks: usize,
    threads: usize,
    f: &(dyn Fn(usize) -> R + Sync),
) -> (A, Vec<R>) {
    let first = Mutex::new(Some(first));
    let first_result = Mutex::new(None);
    let results = parallel_map(tasks + 1, threads, &|i| match i {
        0 => {
            let first = first.lock().take().expect("task 0 runs once");
            *first_result.lock() = Some(first());
            None
        }
        i => Some(f(i - 1)),
    });
    let first = first_result
        .into_inner()
        .expect("parallel_for runs every task");
    (first, results.into_iter().skip(1).flatten().collect())
}

/// Runs `f(i, &mut items[i])` for every item as [`parallel_for`] does (each item is handed
/// to one task: disjoint parts of buffers being filled, for instance).
pub fn parallel_for_each<T: Send>(
    items: &mut [T],
    threads: usize,
    f: &(dyn Fn(usize, &mut T) + Sync),
) {
    let cells: Vec<Mutex<&mut T>> = items.iter_mut().map(Mutex::new).collect();
    parallel_for(cells.len(), threads, &|i| f(i, &mut cells[i].lock()));
}

/// Threads for a section whose caller has no count of its own (packing weights at load): the
/// installed team's, else every core this process may use.
pub fn available_threads() -> usize {
    current_threads()
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, NonZeroUsize::get))
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

    /// Runs `body` on a team of `threads` and without a team.
    fn on_a_team_and_without(threads: usize, body: impl Fn()) {
        let team = Team::new(threads).unwrap();
        team.install(&body);
        body();
    }

    /// Two tasks each wait for the other to start: they only both finish if they run at the
    /// same time, on a team or on the section's own threads without one (not one after the
    /// other on the caller).
    #[test]
    fn two_tasks_run_at_the_same_time_with_a_team_and_without() {
        on_a_team_and_without(2, || {
            let started = AtomicUsize::new(0);
            let saw_both = AtomicUsize::new(0);
            parallel_for(2, 2, &|_| {
                started.fetch_add(1, Ordering::SeqCst);
                let deadline = Instant::now() + Duration::from_secs(10);
                while started.load(Ordering::SeqCst) < 2 && Instant::now() < deadline {
                    std::thread::yield_now();
                }
                if started.load(Ordering::SeqCst) == 2 {
                    saw_both.fetch_add(1, Ordering::SeqCst);
                }
            });
            assert_eq!(saw_both.load(Ordering::SeqCst), 2);
        });
    }

    #[test]
    fn a_panic_in_a_task_reaches_the_caller_without_a_team() {
        for failing in [0, 3] {
            let r = std::panic::catch_unwind(AssertUnwindSafe(|| {
                parallel_for(4, 2, &|i| assert!(i != failing, "task {failing} fails"))
            }));
            let message = r
                .expect_err("the panic is resumed")
                .downcast::<String>()
                .unwrap();
            assert_eq!(*message, format!("task {failing} fails"));
            // This thread is no longer in a section: the next one runs in parallel again.
            assert!(!IN_SECTION.with(Cell::get));
        }
    }

    /// A section inside a task runs inline: every inner task once, no deadlock.
    #[test]
    fn nested_sections_run_every_task_once() {
        on_a_team_and_without(3, || {
            let seen: Vec<AtomicUsize> = (0..20).map(|_| AtomicUsize::new(0)).collect();
            parallel_for(4, 3, &|outer| {
                parallel_for(5, 3, &|inner| {
                    seen[outer * 5 + inner].fetch_add(1, Ordering::Relaxed);
                })
            });
            assert!(seen.iter().all(|s| s.load(Ordering::Relaxed) == 1));
        });
    }

    #[test]
    fn the_helpers_return_every_result_in_order() {
        on_a_team_and_without(2, || {
            for tasks in [0, 1, 7] {
                let squares = parallel_map(tasks, 2, &|i| i * i);
                assert_eq!(squares, (0..tasks).map(|i| i * i).collect::<Vec<_>>());
                let (first, rest) = join_map(|| "first", tasks, 2, &|i| i + 1);
                assert_eq!(first, "first");
                assert_eq!(rest, (1..=tasks).collect::<Vec<_>>());
                let mut items: Vec<usize> = vec![0; tasks];
                parallel_for_each(&mut items, 2, &|i, item| *item = 10 * i);
                assert_eq!(items, (0..tasks).map(|i| 10 * i).collect::<Vec<_>>());
            }
        });
    }
}
