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

/// The width of the loads and stores that copy slots in and out.
const WORD: usize = core::mem::size_of::<u64>();

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
        let mut v = SharedMem::leak_views(len, 2)?;
        Some((v.swap_remove(0), v.swap_remove(0)))
    }

    /// [`SharedMem::leak_pair`] with `views` views of the memory: for a
    /// test double that hands the same memory to one back-end after
    /// another (a process that died, the next one taking over).
    pub fn leak_views(len: usize, views: usize) -> Option<alloc::vec::Vec<SharedMem>> {
        let layout = core::alloc::Layout::from_size_align(len, 4096).ok()?;
        if len == 0 {
            return None;
        }
        let mut out = alloc::vec::Vec::new();
        out.try_reserve_exact(views).ok()?;
        // SAFETY: the layout has a non-zero size (checked above).
        let p = unsafe { alloc::alloc::alloc_zeroed(layout) };
        let base = NonNull::new(p)?;
        // The memory is never freed, so every view stays valid forever; all
        // access through them is atomic or volatile, so they may alias.
        out.resize_with(views, || SharedMem { base, len });
        Some(out)
    }

    /// The length of the mapping in bytes.
    #[inline]
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

    /// The address of the `bytes` bytes at `off`, which must be inside the
    /// mapping (a panic otherwise: a bug in the core, as for
    /// [`SharedMem::load_u32`]).
    #[inline]
    fn range(&self, off: usize, bytes: usize) -> *mut u8 {
        assert!(off.checked_add(bytes).is_some_and(|end| end <= self.len));
        // SAFETY: `off <= len` by the assertion: the result is inside the
        // mapping or one past its end.
        unsafe { self.base.as_ptr().add(off) }
    }

    #[inline]
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
    #[inline]
    pub fn load_u32(&self, off: usize, order: Ordering) -> u32 {
        self.atomic_u32(off).load(order)
    }

    /// Stores the 32-bit index at byte offset `off` with `order`.
    #[inline]
    pub fn store_u32(&self, off: usize, value: u32, order: Ordering) {
        self.atomic_u32(off).store(value, order)
    }

    /// Copies `out.len()` bytes at `off` out of shared memory, once: each
    /// byte is read exactly once, eight at a time where the memory is
    /// 8-byte aligned (a request slot is 14 such loads, not 112).
    #[inline]
    pub fn read(&self, off: usize, out: &mut [u8]) {
        let src = self.range(off, out.len());
        if (src as usize | out.len()) % WORD == 0 {
            // Whole aligned words (an x86_64 slot's parts): no head or
            // tail to copy a byte at a time.
            for (i, w) in out.chunks_exact_mut(WORD).enumerate() {
                // SAFETY: the 8 bytes at `off + i * 8` are inside the
                // mapping (`off + out.len() <= len`) and 8-aligned (`src`
                // is).
                let v = unsafe { core::ptr::read_volatile(src.add(i * WORD).cast::<u64>()) };
                w.copy_from_slice(&v.to_ne_bytes());
            }
            return;
        }
        let head = src.align_offset(WORD).min(out.len());
        let (head_out, rest) = out.split_at_mut(head);
        for (i, b) in head_out.iter_mut().enumerate() {
            // SAFETY: `off + i < off + out.len() <= len`: inside the
            // mapping; a volatile read tolerates the guest changing it.
            *b = unsafe { core::ptr::read_volatile(src.add(i)) };
        }
        let mut words = rest.chunks_exact_mut(WORD);
        let mut at = head;
        for w in &mut words {
            // SAFETY: the 8 bytes at `off + at` are inside the mapping
            // (they are copied to `out[at..at + 8]`, and `off + out.len()
            // <= len`) and 8-aligned (`head` aligned `src + head`, `at`
            // moves in words).
            let v = unsafe { core::ptr::read_volatile(src.add(at).cast::<u64>()) };
            w.copy_from_slice(&v.to_ne_bytes());
            at += WORD;
        }
        for (i, b) in words.into_remainder().iter_mut().enumerate() {
            // SAFETY: as for the head: `off + at + i < off + out.len()`.
            *b = unsafe { core::ptr::read_volatile(src.add(at + i)) };
        }
    }

    /// Copies `data` into shared memory at `off`: each byte written once,
    /// eight at a time where the memory is 8-byte aligned.
    #[inline]
    pub fn write(&self, off: usize, data: &[u8]) {
        let dst = self.range(off, data.len());
        if (dst as usize | data.len()) % WORD == 0 {
            // Whole aligned words (an x86_64 response): no head or tail.
            for (i, w) in data.chunks_exact(WORD).enumerate() {
                let mut v = [0u8; WORD];
                v.copy_from_slice(w);
                // SAFETY: inside the mapping (`off + data.len() <= len`)
                // and 8-aligned (`dst` is); writable by `new`'s contract.
                unsafe {
                    core::ptr::write_volatile(
                        dst.add(i * WORD).cast::<u64>(),
                        u64::from_ne_bytes(v),
                    )
                };
            }
            return;
        }
        let head = dst.align_offset(WORD).min(data.len());
        let (head_in, rest) = data.split_at(head);
        for (i, b) in head_in.iter().enumerate() {
            // SAFETY: `off + i < off + data.len() <= len`; the mapping is
            // writable by `new`'s contract.
            unsafe { core::ptr::write_volatile(dst.add(i), *b) };
        }
        let mut words = rest.chunks_exact(WORD);
        let mut at = head;
        for w in &mut words {
            let mut v = [0u8; WORD];
            v.copy_from_slice(w);
            // SAFETY: inside the mapping and 8-aligned, as in `read`.
            unsafe { core::ptr::write_volatile(dst.add(at).cast::<u64>(), u64::from_ne_bytes(v)) };
            at += WORD;
        }
        for (i, b) in words.remainder().iter().enumerate() {
            // SAFETY: as for the head.
            unsafe { core::ptr::write_volatile(dst.add(at + i), *b) };
        }
    }

    /// A full memory barrier (`xen_mb()`), ordering shared-memory stores
    /// before later shared-memory loads.
    #[inline]
    pub fn full_fence(&self) {
        fence(Ordering::SeqCst);
    }
}

impl RingMem for SharedMem {
    #[inline]
    fn len(&self) -> usize {
        SharedMem::len(self)
    }
    #[inline]
    fn load_u32(&self, off: usize, order: Ordering) -> u32 {
        SharedMem::load_u32(self, off, order)
    }
    #[inline]
    fn store_u32(&self, off: usize, value: u32, order: Ordering) {
        SharedMem::store_u32(self, off, value, order)
    }
    #[inline]
    fn read(&self, off: usize, out: &mut [u8]) {
        SharedMem::read(self, off, out)
    }
    #[inline]
    fn write(&self, off: usize, data: &[u8]) {
        SharedMem::write(self, off, data)
    }
    #[inline]
    fn full_fence(&self) {
        SharedMem::full_fence(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every byte lands where it belongs whatever the alignment and length
    /// of the copy (the head and tail bytes around the aligned words).
    #[test]
    fn copies_in_and_out_at_any_offset_and_length() {
        let (a, b) = SharedMem::leak_pair(256).unwrap();
        let data: [u8; 64] = core::array::from_fn(|i| i as u8 ^ 0xa5);
        for off in 0..20 {
            for len in 0..=40 {
                a.write(0, &[0u8; 256]);
                a.write(off, &data[..len]);
                let mut all = [0u8; 256];
                b.read(0, &mut all);
                assert_eq!(&all[off..off + len], &data[..len], "{off} {len}");
                assert!(all[..off].iter().all(|&x| x == 0), "{off} {len}");
                assert!(all[off + len..].iter().all(|&x| x == 0), "{off} {len}");
                let mut out = [0u8; 40];
                b.read(off, &mut out[..len]);
                assert_eq!(&out[..len], &data[..len], "{off} {len}");
            }
        }
    }
}
