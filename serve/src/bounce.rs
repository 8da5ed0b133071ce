//! The copying data window of a dom0 user-space back-end.
//!
//! [`super::window`] maps the front-end's pages into this process through
//! `/dev/xen/gntdev`. Copy mode (`xbb-serve --copy-grants`) maps nothing:
//! like QEMU's qdisk, it copies with `GNTTABOP_copy`. Each request then
//! costs a copy per page, but no grant mapping outlives a request, the
//! dom0 kernel's gntdev mapping paths are not used for data, and a guest
//! that revokes a grant mid-request can only lose its own data.
//!
//! The window is plain memory of this process, one page per window page.
//! "Mapping" a grant records which grant the page stands for and copies the
//! guest's page in (so a guest WRITE reads current data, and a guest READ
//! that fails hands back the guest's own bytes, never another request's).
//! The store reads and writes the window as it would mapped grants. When
//! the core unmaps a page the store wrote into, the bytes the store wrote
//! (the span recorded when the I/O was submitted) are copied out to the
//! grant, before the core answers the request. Persistent grants make no
//! sense here (a cached page would need the same copies) and are not
//! offered.
//!
//! The tables are allocated at [`Bounce::reserve`], fallibly; afterwards
//! only [`Bounce::resolve`]'s result allocates.

use xbb::host::{DomId, GrantHandle, GrantRef, IoVec, PAGE_SIZE};
use xbb_ustore::RawIoVec;

/// What one window page stands for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Entry {
    /// The front-end's domain.
    pub dom: DomId,
    /// Its grant reference.
    pub gref: GrantRef,
    /// The store may write into the page (a guest READ).
    pub writable: bool,
    /// Bytes `lo..hi` of the page were named by a read from the store:
    /// what is copied out to the grant at unmap. Empty when `lo >= hi`.
    pub lo: u16,
    /// End of the span, exclusive.
    pub hi: u16,
}

impl Entry {
    /// The span to copy out to the front-end: `(offset, len)`, if any.
    pub fn dirty(&self) -> Option<(u16, u16)> {
        (self.writable && self.hi > self.lo).then(|| (self.lo, self.hi - self.lo))
    }
}

/// Why a page could not be entered or removed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BounceError {
    /// Outside the reserved window.
    OutOfRange,
    /// The page already stands for a grant.
    Busy,
    /// The page does not stand for a grant with that handle.
    NotMapped,
    /// The table could not be allocated.
    NoMemory,
}

/// The table of one instance's copying window. The memory itself (one
/// contiguous range of `pages` pages at `base`) is owned by the caller.
#[derive(Debug, Default)]
pub struct Bounce {
    base: usize,
    slots: Vec<Option<Entry>>,
    used: u32,
}

impl Bounce {
    /// A table of `pages` pages over memory at `base`; `Err` when the
    /// table cannot be allocated.
    pub fn reserve(base: usize, pages: u32) -> Result<Bounce, BounceError> {
        let mut slots = Vec::new();
        slots
            .try_reserve_exact(pages as usize)
            .map_err(|_| BounceError::NoMemory)?;
        slots.resize(pages as usize, None);
        Ok(Bounce {
            base,
            slots,
            used: 0,
        })
    }

    /// Pages in the window.
    pub fn pages(&self) -> u32 {
        self.slots.len() as u32
    }

    /// Pages that currently stand for a grant.
    pub fn used(&self) -> u32 {
        self.used
    }

    /// The address of window page `page`, if inside the window.
    pub fn page_addr(&self, page: u32) -> Option<usize> {
        ((page as usize) < self.slots.len()).then(|| self.base + page as usize * PAGE_SIZE)
    }

    /// Whether window page `page` is inside the window and stands for no
    /// grant.
    pub fn is_free(&self, page: u32) -> bool {
        matches!(self.slots.get(page as usize), Some(None))
    }

    /// Records that window page `page` stands for `gref` of `dom`.
    pub fn insert(
        &mut self,
        page: u32,
        dom: DomId,
        gref: GrantRef,
        writable: bool,
    ) -> Result<GrantHandle, BounceError> {
        let slot = self
            .slots
            .get_mut(page as usize)
            .ok_or(BounceError::OutOfRange)?;
        if slot.is_some() {
            return Err(BounceError::Busy);
        }
        *slot = Some(Entry {
            dom,
            gref,
            writable,
            lo: 0,
            hi: 0,
        });
        self.used += 1;
        Ok(GrantHandle(page))
    }

    /// Forgets page `page`, returning what it stood for (whose
    /// [`Entry::dirty`] span the caller copies out first).
    pub fn remove(&mut self, page: u32, handle: GrantHandle) -> Result<Entry, BounceError> {
        if handle.0 != page {
            return Err(BounceError::NotMapped);
        }
        let slot = self
            .slots
            .get_mut(page as usize)
            .ok_or(BounceError::OutOfRange)?;
        let e = slot.take().ok_or(BounceError::NotMapped)?;
        self.used -= 1;
        Ok(e)
    }

    /// Turns window pieces into addresses, merging what is contiguous (the
    /// window is one range, so a reqlist's buffer stays one iovec). `None`
    /// when any byte lies on a page that stands for no grant, or on a
    /// read-only one when `write` (the store writes into it). With `write`,
    /// each page's span grows to cover the bytes named.
    pub fn resolve(&mut self, iov: &[IoVec], write: bool) -> Option<Vec<RawIoVec>> {
        let mut out = Vec::new();
        self.resolve_into(iov, 0, write, &mut out)?;
        Some(out)
    }

    /// [`Bounce::resolve`] into `out` (appended to; nothing allocated while
    /// it has room), each piece's window offset first lowered by `shift`
    /// (the queue's share starts there; `None` below it).
    pub fn resolve_into(
        &mut self,
        iov: &[IoVec],
        shift: usize,
        write: bool,
        out: &mut Vec<RawIoVec>,
    ) -> Option<()> {
        // Check everything before marking anything.
        for v in iov {
            let off = v.window_offset.checked_sub(shift)?;
            let end = off.checked_add(v.len)?;
            if v.len == 0 {
                continue;
            }
            let (first, last) = (off / PAGE_SIZE, (end - 1) / PAGE_SIZE);
            for p in first..=last {
                let e = (*self.slots.get(p)?)?;
                if write && !e.writable {
                    return None;
                }
            }
        }
        for v in iov.iter().filter(|v| v.len > 0) {
            // Checked above.
            let start = v.window_offset - shift;
            let addr = self.base + start;
            match out.last_mut() {
                Some(last) if last.addr + last.len == addr => last.len += v.len,
                _ => out.push(RawIoVec { addr, len: v.len }),
            }
            if write {
                let end = start + v.len;
                let mut off = start;
                while off < end {
                    let p = off / PAGE_SIZE;
                    let lo = (off % PAGE_SIZE) as u16;
                    let stop = end.min((p + 1) * PAGE_SIZE);
                    let hi = (stop - p * PAGE_SIZE) as u16;
                    if let Some(Some(e)) = self.slots.get_mut(p) {
                        if e.hi <= e.lo {
                            (e.lo, e.hi) = (lo, hi);
                        } else {
                            e.lo = e.lo.min(lo);
                            e.hi = e.hi.max(hi);
                        }
                    }
                    off = stop;
                }
            }
        }
        Some(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BASE: usize = 0x10_0000;

    fn iov(window_offset: usize, len: usize) -> IoVec {
        IoVec { window_offset, len }
    }

    #[test]
    fn a_reqlist_resolves_to_one_iovec_over_the_window() {
        let mut b = Bounce::reserve(BASE, 8).unwrap();
        for p in 2..5 {
            b.insert(p, 7, 100 + p, false).unwrap();
        }
        let v = b
            .resolve(
                &[
                    iov(2 * PAGE_SIZE + 512, PAGE_SIZE - 512),
                    iov(3 * PAGE_SIZE, 2 * PAGE_SIZE),
                ],
                false,
            )
            .unwrap();
        assert_eq!(
            v,
            [RawIoVec {
                addr: BASE + 2 * PAGE_SIZE + 512,
                len: 3 * PAGE_SIZE - 512
            }]
        );
        // A page that stands for nothing, or outside the window: refused.
        assert!(b.resolve(&[iov(5 * PAGE_SIZE, 1)], false).is_none());
        assert!(b.resolve(&[iov(8 * PAGE_SIZE, 1)], false).is_none());
        assert!(b.resolve(&[iov(usize::MAX, 2)], false).is_none());
    }

    #[test]
    fn the_store_may_not_write_into_a_read_only_page() {
        let mut b = Bounce::reserve(BASE, 4).unwrap();
        b.insert(0, 7, 1, true).unwrap();
        b.insert(1, 7, 2, false).unwrap();
        assert!(b.resolve(&[iov(0, 2 * PAGE_SIZE)], true).is_none());
        // Nothing was marked by the refused I/O.
        assert_eq!(b.remove(0, GrantHandle(0)).unwrap().dirty(), None);
        assert!(b.resolve(&[iov(PAGE_SIZE, PAGE_SIZE)], false).is_some());
    }

    #[test]
    fn only_the_bytes_read_from_the_store_are_copied_out() {
        let mut b = Bounce::reserve(BASE, 4).unwrap();
        b.insert(1, 7, 11, true).unwrap();
        b.insert(2, 7, 12, true).unwrap();
        // Sectors 3..8 of page 1 and 0..2 of page 2.
        b.resolve(&[iov(PAGE_SIZE + 3 * 512, 5 * 512 + 2 * 512)], true)
            .unwrap();
        let e1 = b.remove(1, GrantHandle(1)).unwrap();
        assert_eq!((e1.gref, e1.dirty()), (11, Some((1536, 2560))));
        let e2 = b.remove(2, GrantHandle(2)).unwrap();
        assert_eq!(e2.dirty(), Some((0, 1024)));
        // A page only read from (a guest WRITE) copies nothing out.
        b.insert(3, 7, 13, false).unwrap();
        b.resolve(&[iov(3 * PAGE_SIZE, PAGE_SIZE)], false).unwrap();
        assert_eq!(b.remove(3, GrantHandle(3)).unwrap().dirty(), None);
    }

    #[test]
    fn spans_of_two_reads_on_one_page_merge() {
        let mut b = Bounce::reserve(BASE, 1).unwrap();
        b.insert(0, 7, 1, true).unwrap();
        b.resolve(&[iov(2048, 512)], true).unwrap();
        b.resolve(&[iov(512, 512)], true).unwrap();
        assert_eq!(
            b.remove(0, GrantHandle(0)).unwrap().dirty(),
            Some((512, 2048))
        );
    }

    #[test]
    fn pages_are_entered_once_and_removed_with_their_handle() {
        let mut b = Bounce::reserve(BASE, 2).unwrap();
        assert_eq!(b.page_addr(1), Some(BASE + PAGE_SIZE));
        assert_eq!(b.page_addr(2), None);
        let h = b.insert(1, 7, 5, true).unwrap();
        assert_eq!(b.insert(1, 7, 6, true), Err(BounceError::Busy));
        assert_eq!(b.insert(2, 7, 6, true), Err(BounceError::OutOfRange));
        assert_eq!(b.used(), 1);
        assert_eq!(b.remove(0, h), Err(BounceError::NotMapped));
        assert_eq!(b.remove(1, GrantHandle(0)), Err(BounceError::NotMapped));
        assert_eq!(b.remove(1, h).unwrap().gref, 5);
        assert_eq!(b.remove(1, h), Err(BounceError::NotMapped));
        assert_eq!(b.used(), 0);
    }
}
