//! The range allocator over an instance's mapping window.
//!
//! Each dispatched reqlist needs its grant pages side by side in the
//! back-end's address space, so that a coalesced I/O is one buffer (one bio,
//! one uio). The window is reserved once at connect; this allocator hands out
//! runs of contiguous pages from it, first fit over a bitmap. The bitmap is
//! allocated fallibly at connect; `alloc` and `free` never allocate.

use alloc::vec::Vec;

/// A first-fit allocator of page runs in a window of `pages` pages.
#[derive(Debug)]
pub struct KvaAllocator {
    /// One bit per page; set = in use.
    bits: Vec<u64>,
    pages: u32,
    free: u32,
}

/// The window could not be described (the bitmap allocation failed).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KvaNoMemory;

impl KvaAllocator {
    /// An allocator for a window of `pages` pages, all free.
    pub fn try_new(pages: u32) -> Result<Self, KvaNoMemory> {
        let words = (pages as usize).div_ceil(64);
        let mut bits = Vec::new();
        bits.try_reserve_exact(words).map_err(|_| KvaNoMemory)?;
        bits.resize(words, 0);
        Ok(KvaAllocator {
            bits,
            pages,
            free: pages,
        })
    }

    /// The window's size in pages.
    pub fn pages(&self) -> u32 {
        self.pages
    }

    /// Pages not in use.
    pub fn free_pages(&self) -> u32 {
        self.free
    }

    fn is_used(&self, page: u32) -> bool {
        self.bits[(page / 64) as usize] & (1u64 << (page % 64)) != 0
    }

    fn set_range(&mut self, first: u32, n: u32, used: bool) {
        for p in first..first + n {
            let (w, b) = ((p / 64) as usize, p % 64);
            if used {
                self.bits[w] |= 1 << b;
            } else {
                self.bits[w] &= !(1 << b);
            }
        }
    }

    /// Allocates `n` contiguous pages, returning the first page's index, or
    /// `None` when no run of `n` free pages exists (a shortage).
    pub fn alloc(&mut self, n: u32) -> Option<u32> {
        if n == 0 || n > self.free {
            return None;
        }
        let mut run_start = 0u32;
        let mut run_len = 0u32;
        let mut page = 0u32;
        while page < self.pages {
            // Skip a fully used word in one step.
            if page % 64 == 0 && self.bits[(page / 64) as usize] == u64::MAX {
                run_len = 0;
                page += 64;
                continue;
            }
            if self.is_used(page) {
                run_len = 0;
            } else {
                if run_len == 0 {
                    run_start = page;
                }
                run_len += 1;
                if run_len == n {
                    self.set_range(run_start, n, true);
                    self.free -= n;
                    return Some(run_start);
                }
            }
            page += 1;
        }
        None
    }

    /// Returns `n` pages starting at `first`. The range must be one that
    /// `alloc` returned; anything else is a bug in the caller, caught in
    /// debug builds and ignored (never corrupting the map) in release.
    pub fn free(&mut self, first: u32, n: u32) {
        let valid = first.checked_add(n).is_some_and(|end| end <= self.pages)
            && (first..first + n).all(|p| self.is_used(p));
        debug_assert!(valid, "kva: freeing {n} pages at {first} not allocated");
        if valid {
            self.set_range(first, n, false);
            self.free += n;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_fit_and_reuse() {
        let mut k = KvaAllocator::try_new(130).unwrap();
        assert_eq!(k.alloc(11), Some(0));
        assert_eq!(k.alloc(11), Some(11));
        assert_eq!(k.alloc(100), Some(22));
        assert_eq!(k.free_pages(), 8);
        assert_eq!(k.alloc(9), None);
        k.free(0, 11);
        // A hole of 11 at the start, 8 at the end: first fit takes the start.
        assert_eq!(k.alloc(8), Some(0));
        assert_eq!(k.alloc(8), Some(122));
        assert_eq!(k.alloc(4), None);
        assert_eq!(k.alloc(3), Some(8));
        assert_eq!(k.free_pages(), 0);
    }

    #[test]
    fn runs_cross_word_boundaries() {
        let mut k = KvaAllocator::try_new(256).unwrap();
        assert_eq!(k.alloc(60), Some(0));
        assert_eq!(k.alloc(10), Some(60));
        k.free(0, 60);
        assert_eq!(k.alloc(70), Some(70));
        assert_eq!(k.alloc(64), Some(140));
        assert_eq!(k.alloc(60), Some(0));
    }

    #[test]
    fn fragmentation_is_a_shortage_not_an_error() {
        let mut k = KvaAllocator::try_new(8).unwrap();
        for i in 0..8 {
            assert_eq!(k.alloc(1), Some(i));
        }
        for i in (0..8).step_by(2) {
            k.free(i, 1);
        }
        assert_eq!(k.free_pages(), 4);
        assert_eq!(k.alloc(2), None);
        assert_eq!(k.alloc(0), None);
        k.free(1, 1);
        assert_eq!(k.alloc(3), Some(0));
    }
}
