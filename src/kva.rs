//! The range allocator over an instance's mapping window.
//!
//! Each dispatched reqlist needs its grant pages side by side in the
//! back-end's address space, so that a coalesced I/O is one buffer (one bio,
//! one uio). The window is reserved once at connect; this allocator hands out
//! runs of contiguous pages from it, first fit over a bitmap read a word (64
//! pages) at a time. The bitmap is allocated fallibly at connect; `alloc`
//! and `free` never allocate.

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

    /// The bits of pages `first..first + n` within their word, which
    /// holds them all (`first % 64 + n <= 64`).
    fn mask(first: u32, n: u32) -> u64 {
        let bits = if n >= 64 { u64::MAX } else { (1u64 << n) - 1 };
        bits << (first % 64)
    }

    /// Calls `f(word, mask)` for each word `first..first + n` touches,
    /// with the bits of that range in the word.
    fn each_word(first: u32, n: u32, mut f: impl FnMut(usize, u64)) {
        let (mut page, end) = (first, first + n);
        while page < end {
            let k = (64 - page % 64).min(end - page);
            f((page / 64) as usize, Self::mask(page, k));
            page += k;
        }
    }

    fn set_range(&mut self, first: u32, n: u32, used: bool) {
        let bits = &mut self.bits;
        Self::each_word(first, n, |w, m| {
            if used {
                bits[w] |= m;
            } else {
                bits[w] &= !m;
            }
        });
    }

    /// Allocates `n` contiguous pages, returning the first page's index, or
    /// `None` when no run of `n` free pages exists (a shortage). First fit,
    /// a word of the bitmap at a time: used bits are skipped and free ones
    /// counted with `trailing_ones` / `trailing_zeros`, so a scan costs a
    /// few instructions per 64 pages rather than per page.
    pub fn alloc(&mut self, n: u32) -> Option<u32> {
        if n == 0 || n > self.free {
            return None;
        }
        if n == 1 {
            // A 4 KiB request: the first clear bit. Bits past the window's
            // end are clear too, but come after every page of it, and one
            // page is free.
            let w = self.bits.iter().position(|&b| b != u64::MAX)?;
            let page = w as u32 * 64 + self.bits[w].trailing_ones();
            if page >= self.pages {
                return None;
            }
            self.bits[w] |= 1 << (page % 64);
            self.free -= 1;
            return Some(page);
        }
        let mut run_start = 0u32;
        let mut run_len = 0u32;
        let mut page = 0u32;
        while page < self.pages {
            // The bitmap from `page` to the end of its word (or of the
            // window): bit 0 is `page`.
            let left = (64 - page % 64).min(self.pages - page);
            let word = self.bits[(page / 64) as usize] >> (page % 64);
            if run_len == 0 {
                // Skip used pages: the run starts at the first free one.
                let used = word.trailing_ones().min(left);
                page += used;
                if used == left {
                    continue;
                }
                run_start = page;
                let free = (word >> used).trailing_zeros().min(left - used);
                run_len = free;
                page += free;
                if free < left - used {
                    // A used page ends the run within this word.
                    if run_len >= n {
                        break;
                    }
                    run_len = 0;
                }
            } else {
                let free = word.trailing_zeros().min(left);
                run_len += free;
                page += free;
                if free < left && run_len < n {
                    run_len = 0;
                }
            }
            if run_len >= n {
                break;
            }
        }
        if run_len < n {
            return None;
        }
        self.set_range(run_start, n, true);
        self.free -= n;
        Some(run_start)
    }

    /// Returns `n` pages starting at `first`. The range must be one that
    /// `alloc` returned; anything else is a bug in the caller, caught in
    /// debug builds and ignored (never corrupting the map) in release.
    #[inline]
    pub fn free(&mut self, first: u32, n: u32) {
        let mut valid = first.checked_add(n).is_some_and(|end| end <= self.pages);
        if valid && n > 0 && first % 64 + n <= 64 {
            // Within one word (every range of up to 64 pages that does not
            // straddle one): one test, one clear.
            let (w, m) = ((first / 64) as usize, Self::mask(first, n));
            valid = self.bits[w] & m == m;
            debug_assert!(valid, "kva: freeing {n} pages at {first} not allocated");
            if valid {
                self.bits[w] &= !m;
                self.free += n;
            }
            return;
        }
        if valid {
            let bits = &self.bits;
            Self::each_word(first, n, |w, m| valid &= bits[w] & m == m);
        }
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

    /// The word-at-a-time scan finds exactly what a page-at-a-time first
    /// fit finds, over random allocations and frees in windows that do and
    /// do not end on a word.
    #[test]
    fn agrees_with_a_page_at_a_time_first_fit() {
        fn first_fit(used: &[bool], n: usize) -> Option<usize> {
            (0..=used.len().checked_sub(n)?).find(|&s| used[s..s + n].iter().all(|u| !u))
        }
        let mut seed = 0x2545_f491_4f6c_dd1du64;
        let mut rand = |below: u64| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed % below
        };
        for pages in [1u32, 63, 64, 65, 130, 200, 256, 300] {
            let mut k = KvaAllocator::try_new(pages).unwrap();
            let mut used = alloc::vec![false; pages as usize];
            let mut live: Vec<(u32, u32)> = Vec::new();
            for _ in 0..4000 {
                if live.is_empty() || rand(3) != 0 {
                    let n = 1 + rand(u64::from(pages).min(150)) as u32;
                    let want = first_fit(&used, n as usize);
                    assert_eq!(k.alloc(n).map(|p| p as usize), want, "{pages} {n}");
                    if let Some(p) = want {
                        used[p..p + n as usize].fill(true);
                        live.push((p as u32, n));
                    }
                } else {
                    let (p, n) = live.swap_remove(rand(live.len() as u64) as usize);
                    k.free(p, n);
                    used[p as usize..(p + n) as usize].fill(false);
                }
                let free = used.iter().filter(|u| !**u).count() as u32;
                assert_eq!(k.free_pages(), free);
            }
        }
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
