//! The counting allocator behind "no allocation on the I/O path"
//! (DESIGN.md, "Rules every room keeps").
//!
//! A test binary installs [`Counting`] as its global allocator:
//!
//! ```ignore
//! #[global_allocator]
//! static ALLOCATOR: xbb_testing::alloc::Counting = xbb_testing::alloc::Counting;
//! ```
//!
//! and wraps the code under test in [`allocations_in`], which counts the
//! allocations (and reallocations) this thread makes while it runs. The
//! fake host's own bookkeeping is not the core's: it runs under a
//! [`Quiet`] guard, which stops counting until it is dropped. Without
//! [`Counting`] installed nothing is counted and [`Quiet`] does nothing.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

/// The system allocator, counting what this thread allocates while
/// counting is on.
#[derive(Debug)]
pub struct Counting;

thread_local! {
    static COUNTING: Cell<bool> = const { Cell::new(false) };
    static COUNT: Cell<u64> = const { Cell::new(0) };
}

fn note_allocation() {
    // `try_with`: the thread-locals may already be gone while a thread
    // exits; those allocations are not ours to count. Const-initialised
    // thread-locals without destructors never allocate themselves.
    if COUNTING.try_with(Cell::get).unwrap_or(false) {
        let _ = COUNT.try_with(|n| n.set(n.get() + 1));
    }
}

// SAFETY: every method forwards to `System` with the caller's arguments
// unchanged, so `System`'s guarantees are ours; counting touches only
// thread-locals and never allocates.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        note_allocation();
        // SAFETY: forwarded with the caller's layout (non-zero size by
        // `GlobalAlloc::alloc`'s contract).
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        note_allocation();
        // SAFETY: as for `alloc`.
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        note_allocation();
        // SAFETY: `ptr` was allocated by this allocator (hence by `System`)
        // with `layout`, as the caller guarantees.
        unsafe { System.realloc(ptr, layout, new_size) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` was allocated by `System` with `layout`.
        unsafe { System.dealloc(ptr, layout) }
    }
}

/// Runs `f` with counting on; returns its result and the allocations this
/// thread made meanwhile (outside [`Quiet`] guards).
pub fn allocations_in<R>(f: impl FnOnce() -> R) -> (R, u64) {
    COUNT.with(|n| n.set(0));
    let was = COUNTING.with(|c| c.replace(true));
    let r = f();
    COUNTING.with(|c| c.set(was));
    (r, COUNT.with(Cell::get))
}

/// Switches counting on for this thread from now on, from zero: for a
/// thread the test does not run itself (a store's I/O thread), from inside
/// a callback that thread makes. [`counted`] reads the count there.
pub fn start_counting() {
    COUNT.with(|n| n.set(0));
    COUNTING.with(|c| c.set(true));
}

/// The allocations this thread made since [`start_counting`] (outside
/// [`Quiet`] guards); counting goes on.
pub fn counted() -> u64 {
    COUNT.with(Cell::get)
}

/// Stops counting until dropped: the fake's own bookkeeping is not the
/// code under test.
#[derive(Debug)]
pub struct Quiet(bool);

impl Quiet {
    /// Stops counting on this thread.
    pub fn new() -> Quiet {
        Quiet(COUNTING.try_with(|c| c.replace(false)).unwrap_or(false))
    }
}

impl Default for Quiet {
    fn default() -> Self {
        Quiet::new()
    }
}

impl Drop for Quiet {
    fn drop(&mut self) {
        let _ = COUNTING.try_with(|c| c.set(self.0));
    }
}
