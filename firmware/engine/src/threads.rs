//! How many threads one inference uses: a process-wide tract-linalg executor.
//!
//! tract-linalg's `multithread-mm` feature splits matrix products, packing and large
//! element-wise ops over a rayon pool, but only when an [`Executor`] is in scope. The engine
//! keeps one executor for the process and installs it around every [`crate::Model::run`], so
//! the setting reaches the thread that runs the plan whatever thread that is.
//!
//! One thread means no pool at all. `Executor::multithread(1)` is not single-threaded in
//! tract 0.23.9 (sonos/tract#2894): the matmul dispatcher treats a one-thread pool like "no
//! pool" and hands the work to rayon's global pool, which has a thread per core.
//! `Executor::SingleThread` runs every tile inline on the caller and never touches rayon.

use std::cell::Cell;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, PoisonError};

use rayon::prelude::*;
use tract_onnx::prelude::multithread::{self, multithread_tract_scope, Executor};
use tract_onnx::prelude::TractResult;

use crate::EngineError;

/// Largest thread count [`set_threads`] accepts (the board profiles' limit too).
pub const MAX_THREADS: usize = 64;

/// The executor [`crate::Model::run`] installs, and the thread count it was built for.
static CURRENT: Mutex<(usize, Executor)> = Mutex::new((1, Executor::SingleThread));

/// Sets how many threads each inference uses, for every model of this process, from the
/// next [`crate::Model::run`] on. `1` (the default) keeps inference strictly on the calling
/// thread; `n > 1` starts a pool of `n` threads that the calling thread waits on.
///
/// Meant to be called once at start-up, before loading; calling it again replaces the pool
/// (runs already under way finish on the old one). Outputs do not depend on the setting:
/// tract splits work along output tiles and rows, never inside a sum.
pub fn set_threads(n: usize) -> Result<(), EngineError> {
    let executor = executor_for(n)?;
    *CURRENT.lock().unwrap_or_else(PoisonError::into_inner) = (n, executor);
    Ok(())
}

/// The thread count set by [`set_threads`] (1 until it is called).
pub fn threads() -> usize {
    CURRENT.lock().unwrap_or_else(PoisonError::into_inner).0
}

pub(crate) fn current() -> Executor {
    CURRENT
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .1
        .clone()
}

/// Runs `f` with `executor` as its tract executor. Always installed, even for
/// `SingleThread`, so a default executor set elsewhere in the process cannot leak in.
///
/// With a pool, `f` runs on one of the pool's threads, and the calling thread waits: the
/// operators that stay on one thread run there, and the pool's other threads join in where
/// work is split. Run on the caller instead, an inference set to n threads kept n + 1 busy
/// or spinning (the caller and the whole pool), more threads than cores.
///
/// While `f` runs, the pool's other threads wait for its split operators spinning
/// ([`stay_ready`]) rather than asleep: woken from sleep for each split operator, they
/// came too late for most of them (on the 2-core development VM, MobileNetV2's 1x1 layers
/// of 5-10 M multiply-adds took 1.4-2.6 times their one-thread time at two threads, and
/// the whole inference longer than on one thread).
pub(crate) fn scope<R: Send>(executor: Executor, f: impl FnOnce() -> R + Send) -> R {
    match &executor {
        Executor::MultiThread(pool) => {
            let pool = pool.clone();
            let helpers = pool.current_num_threads().saturating_sub(1);
            pool.install(|| {
                let done = AtomicBool::new(false);
                rayon::scope(|s| {
                    for _ in 0..helpers {
                        s.spawn(|_| stay_ready(&done));
                    }
                    // Set however `f` ends (a panic too), or the scope would wait on the
                    // helpers for ever.
                    let _finished = Finished(&done);
                    let _busy = Busy::enter();
                    multithread_tract_scope(executor, f)
                })
            })
        }
        _ => multithread_tract_scope(executor, f),
    }
}

thread_local! {
    /// This thread runs a plan or waits for split work ([`stay_ready`]).
    static BUSY: Cell<bool> = const { Cell::new(false) };
}

/// Marks this thread [`BUSY`] until dropped (restoring what it was: a plan may run inside
/// another's wait, as a job the pool had pending).
struct Busy(bool);

impl Busy {
    fn enter() -> Busy {
        Busy(BUSY.replace(true))
    }
}

impl Drop for Busy {
    fn drop(&mut self) {
        BUSY.set(self.0);
    }
}

/// Sets its flag when dropped.
struct Finished<'a>(&'a AtomicBool);

impl Drop for Finished<'_> {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Release);
    }
}

/// A pool thread's wait for split work until `done`: it runs what the pool has pending
/// as soon as it is there, between spins (a yield to the OS every few hundred, so that a
/// busy machine still runs its other threads). A thread already busy returns at once: the
/// thread running the plan pops this job while it waits inside a split of its own (or
/// when the plan is over), and would never return to the plan; a thread waiting for
/// another plan would only wait longer.
fn stay_ready(done: &AtomicBool) {
    if BUSY.get() {
        return;
    }
    let _busy = Busy::enter();
    let mut idle = 0u32;
    while !done.load(Ordering::Acquire) {
        match rayon::yield_now() {
            Some(rayon::Yield::Executed) => idle = 0,
            Some(rayon::Yield::Idle) => {
                idle += 1;
                if idle.is_multiple_of(256) {
                    std::thread::yield_now();
                } else {
                    std::hint::spin_loop();
                }
            }
            None => return,
        }
    }
}

pub(crate) fn executor_for(n: usize) -> Result<Executor, EngineError> {
    if !(1..=MAX_THREADS).contains(&n) {
        return Err(EngineError::BadOptions(format!(
            "{n} inference threads is outside 1..={MAX_THREADS}"
        )));
    }
    if n == 1 {
        // Not `Executor::multithread(1)`: see the module comment (tract#2894).
        return Ok(Executor::SingleThread);
    }
    // tract panics when rayon cannot start the threads (RLIMIT_NPROC, memory limits);
    // that is a configuration problem of this process, not a reason to abort it.
    catch_unwind(AssertUnwindSafe(|| {
        Executor::multithread_with_name(n, "edgedx-infer")
    }))
    .map_err(|payload| {
        let why = payload
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| payload.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "unknown panic payload".into());
        EngineError::BadOptions(format!("cannot start {n} inference threads: {why}"))
    })
}

/// `work(first, chunk)` over `out` cut into one run of whole `unit`s per thread of the
/// pool running the plan (`first`: the chunk's first unit; the last chunk may end inside a
/// unit when `out` does), when the caller finds the operator `worth` waking the pool;
/// `work(0, out)` on the calling thread otherwise. Operators split their outputs here.
pub(crate) fn per_thread<T: Send>(
    out: &mut [T],
    unit: usize,
    worth: bool,
    work: impl Fn(usize, &mut [T]) -> TractResult<()> + Sync + Send,
) -> TractResult<()> {
    let units = out.len().div_ceil(unit.max(1));
    match multithread::current_tract_executor() {
        Executor::MultiThread(pool) if worth && units > 1 => {
            let per_task = units.div_ceil(pool.current_num_threads().max(1));
            pool.install(|| {
                out.par_chunks_mut(per_task * unit)
                    .enumerate()
                    .try_for_each(|(t, chunk)| work(t * per_task, chunk))
            })
        }
        _ => work(0, out),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_outside_the_range_are_refused() {
        for n in [0, MAX_THREADS + 1] {
            let e = executor_for(n).unwrap_err();
            assert_eq!(e.kind(), crate::ErrorKind::Options);
            assert!(e.to_string().contains("1..=64"), "{e}");
        }
    }

    /// With a pool, the work runs on one of the pool's threads (the caller only waits), so
    /// an inference on n threads keeps n threads busy, not n + 1; without one, on the
    /// caller.
    #[test]
    fn a_pool_runs_the_work_on_its_own_threads() {
        let caller = std::thread::current().id();
        let (thread, index) = scope(executor_for(2).unwrap(), || {
            (std::thread::current().id(), rayon::current_thread_index())
        });
        assert_ne!(thread, caller);
        assert!(index.is_some_and(|i| i < 2), "{index:?}");
        let (thread, index) = scope(executor_for(1).unwrap(), || {
            (std::thread::current().id(), rayon::current_thread_index())
        });
        assert_eq!((thread, index), (caller, None));
    }

    /// The helpers that wait spinning during a run stop however the run ends: a panic in
    /// it reaches the caller instead of leaving the scope waiting on them.
    #[test]
    fn a_panicking_run_releases_the_helpers() {
        let executor = executor_for(2).unwrap();
        let panicked = catch_unwind(AssertUnwindSafe(|| {
            scope(executor.clone(), || -> usize { panic!("inside the run") })
        }));
        assert!(panicked.is_err());
        // The pool still serves runs (its helper came back).
        assert_eq!(scope(executor, || 7), 7);
    }

    /// Runs that split their work, from several callers at once on one pool (a helper of
    /// one may pick up another's plan or split work): every one completes with its own
    /// sums. (Which thread picks up what is up to the pool: this exercises the mixes, it
    /// cannot force a given one.)
    #[test]
    fn concurrent_runs_on_one_pool_complete() {
        let executor = executor_for(2).unwrap();
        std::thread::scope(|s| {
            let runs: Vec<_> = (0..4u64)
                .map(|k| {
                    let executor = executor.clone();
                    s.spawn(move || {
                        (0..50)
                            .map(|_| {
                                scope(executor.clone(), || {
                                    let mut out = vec![0u64; 4096];
                                    per_thread(&mut out, 64, true, |first, chunk| {
                                        for (i, v) in chunk.iter_mut().enumerate() {
                                            *v = k * (first * 64 + i) as u64;
                                        }
                                        Ok(())
                                    })
                                    .unwrap();
                                    out.iter().sum::<u64>()
                                })
                            })
                            .collect::<Vec<u64>>()
                    })
                })
                .collect();
            for (k, run) in runs.into_iter().enumerate() {
                let sums = run.join().unwrap();
                assert!(sums.iter().all(|&v| v == k as u64 * 4095 * 4096 / 2), "{k}");
            }
        });
    }

    #[test]
    fn one_thread_is_no_pool_at_all() {
        // tract#2894: a one-thread pool would fall through to rayon's global pool.
        assert!(matches!(executor_for(1).unwrap(), Executor::SingleThread));
        match executor_for(3).unwrap() {
            Executor::MultiThread(pool) => assert_eq!(pool.current_num_threads(), 3),
            other => panic!("expected a 3-thread pool, got {other:?}"),
        }
    }
}
