//! Access to memory shared with a guest: the one place in the core with
//! `unsafe`.
//!
//! A [`SharedMem`] is a window onto pages the platform mapped from a grant
//! (the shared ring of `io/ring.h`, later indirect-segment pages). The guest
//! can change any byte at any time, so nothing here hands out a reference
//! into it: indices are read and written as atomics with an explicit
//! [`Ordering`], and everything else is copied in or out in one go, after
//! which the caller only looks at its private copy.

#![allow(unsafe_code)]

use core::ptr::NonNull;
use core::sync::atomic::{fence, AtomicU32, Ordering};

/// What the ring of `io/ring.h` needs of the memory it lives in: its
/// 32-bit indices as atomics with a named [`Ordering`], its slots copied in
/// and out whole, and a full barrier. [`SharedMem`] is the real thing; the
/// loom model of the notification protocol (`tests/loom.rs`) implements it
/// over loom's atomics, so that the model checks the very index logic of
/// [`crate::ring`].
pub trait RingMem {
    /// The length in bytes.
    fn len(&self) -> usize;
    /// Whether the memory is empty.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// Loads the 32-bit index at byte offset `off` with `order`.
    fn load_u32(&self, off: usize, order: Ordering) -> u32;
    /// Stores the 32-bit index at byte offset `off` with `order`.
    fn store_u32(&self, off: usize, value: u32, order: Ordering);
    /// Copies `out.len()` bytes at `off` out, once.
    fn read(&self, off: usize, out: &mut [u8]);
    /// Copies `data` in at `off`.
    fn write(&self, off: usize, data: &[u8]);
    /// A full memory barrier (`xen_mb()`).
    fn full_fence(&self);
}

/// A mapped range of guest-shared memory.
#[derive(Debug)]
pub struct SharedMem {
    base: NonNull<u8>,
    len: usize,
}

// SAFETY: SharedMem is a (pointer, length) pair naming memory the platform
// mapped for the owner; all access goes through atomics or volatile copies,
// so moving it to another thread is no different from using it here.
unsafe impl Send for SharedMem {}

impl SharedMem {
    /// Wraps `len` bytes at `base`.
    ///
    /// # Safety
    /// `base..base+len` must be mapped readable and writable, aligned to 4
    /// bytes, and stay mapped until this value is handed back to the
    /// platform (for a ring: [`crate::host::Host::unmap_ring`]). Other
    /// parties (the guest) may write it concurrently; nobody else may
    /// create Rust references into it.
    pub unsafe fn new(base: NonNull<u8>, len: usize) -> Self {
        debug_assert!(base.as_ptr() as usize % 4 == 0);
        SharedMem { base, len }
    }

    /// Allocates `len` zeroed, page-aligned bytes that are never freed and
    /// returns two views of them, one for each side of a ring: for tests,
    /// fuzzing and benchmarks that need shared memory without a platform.
    /// `None` when `len` is 0 or the allocation fails.
    pub fn leak_pair(len: usize) -> Option<(SharedMem, SharedMem)> {
        let layout = core::alloc::Layout::from_size_align(len, 4096).ok()?;
        if len == 0 {
            return None;
        }
        // SAFETY: the layout has a non-zero size (checked above).
        let p = unsafe { alloc::alloc::alloc_zeroed(layout) };
        let base = NonNull::new(p)?;
        // The memory is never freed, so both views stay valid forever; all
        // access through them is atomic or volatile, so they may alias.
        Some((SharedMem { base, len }, SharedMem { base, len }))
    }

    /// The length of the mapping in bytes.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the mapping is empty.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The base address, for the platform that unmaps it.
    pub fn as_ptr(&self) -> *mut u8 {
        self.base.as_ptr()
    }

    fn atomic_u32(&self, off: usize) -> &AtomicU32 {
        assert!(off % 4 == 0 && off.checked_add(4).is_some_and(|end| end <= self.len));
        // SAFETY: the assertion keeps the 4 bytes inside the mapping and
        // 4-aligned (the base is 4-aligned by `new`'s contract); AtomicU32
        // has the layout of u32 and tolerates concurrent access by the guest.
        unsafe { &*(self.base.as_ptr().add(off) as *const AtomicU32) }
    }

    /// Loads the 32-bit index at byte offset `off` with `order`.
    /// Panics only on an out-of-range offset, which is a bug in the core
    /// (offsets are never guest-derived unchecked).
    pub fn load_u32(&self, off: usize, order: Ordering) -> u32 {
        self.atomic_u32(off).load(order)
    }

    /// Stores the 32-bit index at byte offset `off` with `order`.
    pub fn store_u32(&self, off: usize, value: u32, order: Ordering) {
        self.atomic_u32(off).store(value, order)
    }

    /// Copies `out.len()` bytes at `off` out of shared memory, once.
    pub fn read(&self, off: usize, out: &mut [u8]) {
        assert!(off
            .checked_add(out.len())
            .is_some_and(|end| end <= self.len));
        for (i, b) in out.iter_mut().enumerate() {
            // SAFETY: `off + i < len` by the assertion, so the byte is inside
            // the mapping; a volatile read tolerates the guest changing it.
            *b = unsafe { core::ptr::read_volatile(self.base.as_ptr().add(off + i)) };
        }
    }

    /// Copies `data` into shared memory at `off`.
    pub fn write(&self, off: usize, data: &[u8]) {
        assert!(off
            .checked_add(data.len())
            .is_some_and(|end| end <= self.len));
        for (i, b) in data.iter().enumerate() {
            // SAFETY: `off + i < len` by the assertion; the mapping is
            // writable by `new`'s contract.
            unsafe { core::ptr::write_volatile(self.base.as_ptr().add(off + i), *b) };
        }
    }

    /// A full memory barrier (`xen_mb()`), ordering shared-memory stores
    /// before later shared-memory loads.
    pub fn full_fence(&self) {
        fence(Ordering::SeqCst);
    }
}

impl RingMem for SharedMem {
    fn len(&self) -> usize {
        SharedMem::len(self)
    }
    fn load_u32(&self, off: usize, order: Ordering) -> u32 {
        SharedMem::load_u32(self, off, order)
    }
    fn store_u32(&self, off: usize, value: u32, order: Ordering) {
        SharedMem::store_u32(self, off, value, order)
    }
    fn read(&self, off: usize, out: &mut [u8]) {
        SharedMem::read(self, off, out)
    }
    fn write(&self, off: usize, data: &[u8]) {
        SharedMem::write(self, off, data)
    }
    fn full_fence(&self) {
        SharedMem::full_fence(self)
    }
}
