//! A counting global allocator: the worker's heap limit.
//!
//! `RLIMIT_DATA` (set by the supervisor before the worker runs) is the kernel's backstop,
//! but it does not see every allocation path: under qemu-user, for one, the guest heap
//! lives in memory the emulator reserved up front and merely re-protects, which the kernel
//! does not check against the limit. Counting in the allocator gives the same limit on a
//! board and under the emulator: past it an allocation fails, Rust's allocation-error
//! handler aborts the worker, and the worker exits with [`MEMORY_LIMIT_EXIT`] so that the
//! supervisor tells a memory-limit breach from any other abort.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

pub struct CountingAlloc;

static IN_USE: AtomicUsize = AtomicUsize::new(0);
static LIMIT: AtomicUsize = AtomicUsize::new(usize::MAX);
/// Set when an allocation was refused (by the limit, or by the system allocator).
static REFUSED: AtomicBool = AtomicBool::new(false);

/// The exit status of a worker that aborted after an allocation was refused.
pub const MEMORY_LIMIT_EXIT: i32 = 88;

/// Caps the heap of this process at `bytes` (the worker calls it before loading a model).
pub fn set_limit(bytes: usize) {
    LIMIT.store(bytes, Ordering::SeqCst);
}

/// Forgets earlier refusals (a refusal the caller handled, e.g. a `try_reserve` on an
/// earlier input, says nothing about a later abort).
pub fn clear_refusal() {
    REFUSED.store(false, Ordering::SeqCst);
}

/// Makes an abort that follows a refused allocation end the process with
/// [`MEMORY_LIMIT_EXIT`] instead of SIGABRT. Any other abort stays SIGABRT (a crash).
pub fn exit_distinctly_on_allocation_failure() -> std::io::Result<()> {
    extern "C" fn on_abort(_: libc::c_int) {
        if REFUSED.load(Ordering::SeqCst) {
            // SAFETY: _exit is async-signal-safe.
            unsafe { libc::_exit(MEMORY_LIMIT_EXIT) };
        }
        // Returning lets abort(3) restore the default action and raise SIGABRT again.
    }
    // SAFETY: a zeroed sigaction is a valid "no flags, empty mask" value; the handler only
    // reads an atomic and calls _exit.
    unsafe {
        let mut action: libc::sigaction = std::mem::zeroed();
        action.sa_sigaction = on_abort as extern "C" fn(libc::c_int) as libc::sighandler_t;
        libc::sigemptyset(&mut action.sa_mask);
        if libc::sigaction(libc::SIGABRT, &action, std::ptr::null_mut()) != 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(())
}

fn refused() -> *mut u8 {
    REFUSED.store(true, Ordering::SeqCst);
    std::ptr::null_mut()
}

/// Heap bytes allocated now.
#[cfg(test)]
pub fn in_use() -> usize {
    IN_USE.load(Ordering::Relaxed)
}

fn reserve(size: usize) -> bool {
    reserve_within(size, LIMIT.load(Ordering::Relaxed))
}

/// Adds `size` to the count unless that would pass `limit`.
fn reserve_within(size: usize, limit: usize) -> bool {
    let mut current = IN_USE.load(Ordering::Relaxed);
    loop {
        let Some(next) = current.checked_add(size).filter(|n| *n <= limit) else {
            return false;
        };
        match IN_USE.compare_exchange_weak(current, next, Ordering::Relaxed, Ordering::Relaxed) {
            Ok(_) => return true,
            Err(seen) => current = seen,
        }
    }
}

fn release(size: usize) {
    IN_USE.fetch_sub(size, Ordering::Relaxed);
}

// SAFETY: every method forwards to the system allocator with the caller's layout; the
// counters only decide whether to forward, never alter pointers or layouts.
unsafe impl GlobalAlloc for CountingAlloc {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if !reserve(layout.size()) {
            return refused();
        }
        let p = unsafe { System.alloc(layout) };
        if p.is_null() {
            release(layout.size());
            return refused();
        }
        p
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        if !reserve(layout.size()) {
            return refused();
        }
        let p = unsafe { System.alloc_zeroed(layout) };
        if p.is_null() {
            release(layout.size());
            return refused();
        }
        p
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) };
        release(layout.size());
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let old = layout.size();
        if new_size > old && !reserve(new_size - old) {
            return refused();
        }
        let p = unsafe { System.realloc(ptr, layout, new_size) };
        if p.is_null() {
            if new_size > old {
                release(new_size - old);
            }
            return refused();
        } else if new_size < old {
            release(old - new_size);
        }
        p
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_and_refuses_past_the_limit() {
        // The test binary runs with this allocator too, and other tests allocate and free
        // on other threads meanwhile: a free elsewhere between the two readings can hide
        // this allocation, so one of several tries must show it in full.
        let counted = (0..20).any(|_| {
            let before = in_use();
            let v = std::hint::black_box(vec![0u8; 1 << 20]);
            let during = in_use();
            drop(v);
            during >= before + (1 << 20)
        });
        assert!(counted, "a 1 MiB allocation never showed in the count");
        // A reservation past the limit is refused. The limit is passed in rather than set:
        // lowering the process-wide one would fail the other test threads' allocations.
        assert!(!reserve_within(1 << 30, in_use() + 1024));
        assert!(!reserve_within(usize::MAX, usize::MAX));
        assert!(reserve_within(16, usize::MAX));
        release(16);
    }
}
