//! The data window of a dom0 user-space back-end.
//!
//! In the kernel the window is a reserved range of KVA and each grant is
//! mapped at the exact page the core chose (`GNTTABOP_map_grant_ref` with a
//! host address). `/dev/xen/gntdev` cannot map at a chosen address; it maps
//! several grant references as one contiguous range wherever it likes. So
//! here the window is a table: each of its pages names the range
//! (a *group*, one `xengnttab_map_domain_grant_refs` call) that holds it
//! and where in that range it is. A run of consecutive window pages the core
//! maps in one batch becomes one group, so a reqlist's buffer is still one
//! contiguous piece of memory and reaches `preadv`/`pwritev` as one iovec.
//!
//! A group is unmapped (one `xengnttab_unmap`) when the last of its pages is
//! released: gntdev can only unmap a range whole. Pages released early stay
//! mapped until then; the core may reuse their window slots at once, since a
//! slot only names memory. All tables are allocated at
//! [`Window::reserve`], fallibly; nothing allocates afterwards except
//! [`Window::resolve`]'s result.

use xbb::host::{GrantHandle, IoVec, PAGE_SIZE};
use xbb_ustore::RawIoVec;

/// A mapped range as the window sees it.
pub trait Range {
    /// Address of its first byte in this process.
    fn addr(&self) -> usize;
}

#[derive(Clone, Copy, Debug)]
struct Slot {
    group: u32,
    index: u32,
}

#[derive(Debug)]
struct Group<M> {
    mapping: Option<M>,
    writable: bool,
    live: u32,
}

/// Why a range could not be entered into the window.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WindowError {
    /// Outside the reserved window, or empty.
    OutOfRange,
    /// A page of the run is still in use by another mapping.
    Busy,
    /// No window reserved.
    NotReserved,
    /// The page is not mapped with that handle.
    NotMapped,
    /// The tables could not be allocated.
    NoMemory,
}

/// The table of one instance's data window.
#[derive(Debug)]
pub struct Window<M> {
    slots: Vec<Option<Slot>>,
    groups: Vec<Group<M>>,
    free: Vec<u32>,
    mapped_pages: u32,
}

impl<M: Range> Default for Window<M> {
    fn default() -> Self {
        Window {
            slots: Vec::new(),
            groups: Vec::new(),
            free: Vec::new(),
            mapped_pages: 0,
        }
    }
}

impl<M: Range> Window<M> {
    /// Reserves a window of `pages` pages: every table, once. Returns the
    /// mappings of an earlier window still alive (to be unmapped).
    pub fn reserve(&mut self, pages: u32) -> Result<Vec<M>, WindowError> {
        let old = self.release();
        let n = pages as usize;
        let mut slots = Vec::new();
        slots
            .try_reserve_exact(n)
            .map_err(|_| WindowError::NoMemory)?;
        slots.resize(n, None);
        let mut groups = Vec::new();
        groups
            .try_reserve_exact(n)
            .map_err(|_| WindowError::NoMemory)?;
        let mut free = Vec::new();
        free.try_reserve_exact(n)
            .map_err(|_| WindowError::NoMemory)?;
        for g in (0..pages).rev() {
            groups.push(Group {
                mapping: None,
                writable: false,
                live: 0,
            });
            free.push(g);
        }
        self.slots = slots;
        self.groups = groups;
        self.free = free;
        Ok(old)
    }

    /// Forgets the window, returning every mapping still alive.
    pub fn release(&mut self) -> Vec<M> {
        let mut out = Vec::new();
        for g in self.groups.iter_mut() {
            if let Some(m) = g.mapping.take() {
                out.push(m);
            }
        }
        *self = Window {
            slots: Vec::new(),
            groups: Vec::new(),
            free: Vec::new(),
            mapped_pages: 0,
        };
        out
    }

    /// Pages of the window.
    pub fn pages(&self) -> u32 {
        self.slots.len() as u32
    }

    /// Window pages that currently name a mapped page.
    pub fn mapped_pages(&self) -> u32 {
        self.mapped_pages
    }

    /// Groups (contiguous ranges) still mapped, including ranges kept for a
    /// page not yet released.
    pub fn live_groups(&self) -> usize {
        self.groups.iter().filter(|g| g.mapping.is_some()).count()
    }

    /// Whether `pages` consecutive window pages from `first` are free.
    pub fn can_insert(&self, first: u32, pages: u32) -> Result<(), WindowError> {
        if self.slots.is_empty() {
            return Err(WindowError::NotReserved);
        }
        let end = first.checked_add(pages).ok_or(WindowError::OutOfRange)? as usize;
        if pages == 0 || end > self.slots.len() {
            return Err(WindowError::OutOfRange);
        }
        if self.slots[first as usize..end].iter().any(Option::is_some) {
            return Err(WindowError::Busy);
        }
        Ok(())
    }

    /// Enters `mapping`, `pages` long, at window pages `first..`. Returns
    /// the handle each of its pages is released with. Check
    /// [`Window::can_insert`] first; on error the mapping is handed back.
    pub fn insert(
        &mut self,
        first: u32,
        pages: u32,
        writable: bool,
        mapping: M,
    ) -> Result<GrantHandle, (WindowError, M)> {
        if let Err(e) = self.can_insert(first, pages) {
            return Err((e, mapping));
        }
        let Some(g) = self.free.pop() else {
            return Err((WindowError::Busy, mapping));
        };
        let grp = &mut self.groups[g as usize];
        grp.mapping = Some(mapping);
        grp.writable = writable;
        grp.live = pages;
        for i in 0..pages {
            self.slots[(first + i) as usize] = Some(Slot { group: g, index: i });
        }
        self.mapped_pages += pages;
        Ok(GrantHandle(g + 1))
    }

    /// Releases window page `page` mapped with `handle`. `Ok(Some(m))`
    /// when it was the last page of its range: the caller unmaps `m`.
    /// `Err` when the page is not mapped with that handle.
    pub fn remove(&mut self, page: u32, handle: GrantHandle) -> Result<Option<M>, WindowError> {
        let slot = self
            .slots
            .get_mut(page as usize)
            .ok_or(WindowError::NotMapped)?;
        match *slot {
            Some(s) if s.group + 1 == handle.0 => {
                *slot = None;
                self.mapped_pages -= 1;
                let grp = &mut self.groups[s.group as usize];
                grp.live -= 1;
                if grp.live == 0 {
                    self.free.push(s.group);
                    return Ok(grp.mapping.take());
                }
                Ok(None)
            }
            _ => Err(WindowError::NotMapped),
        }
    }

    /// The address of byte `offset` of the window and how many bytes from
    /// there lie in the same mapped range, if that page is mapped (and
    /// writable, when `write` is asked).
    fn locate(&self, offset: usize, write: bool) -> Option<(usize, usize)> {
        let page = offset / PAGE_SIZE;
        let s = (*self.slots.get(page)?)?;
        let g = &self.groups[s.group as usize];
        if write && !g.writable {
            return None;
        }
        let base = g.mapping.as_ref()?.addr();
        let in_page = offset % PAGE_SIZE;
        let addr = base + s.index as usize * PAGE_SIZE + in_page;
        // Contiguous for the rest of this page, and on through following
        // window pages of the same group at the following index.
        let mut run = PAGE_SIZE - in_page;
        let mut next = page + 1;
        let mut idx = s.index + 1;
        while let Some(Some(n)) = self.slots.get(next) {
            if n.group != s.group || n.index != idx {
                break;
            }
            run += PAGE_SIZE;
            next += 1;
            idx += 1;
        }
        Some((addr, run))
    }

    /// Turns window pieces into process addresses, merging what is
    /// contiguous. `None` when any byte lies on an unmapped page (or a
    /// read-only one when `write`, i.e. when the store writes into it).
    pub fn resolve(&self, iov: &[IoVec], write: bool) -> Option<Vec<RawIoVec>> {
        let mut out = Vec::new();
        self.resolve_into(iov, 0, write, &mut out)?;
        Some(out)
    }

    /// [`Window::resolve`] into `out` (appended to; nothing allocated while
    /// it has room), each piece's window offset first lowered by `shift`
    /// (the queue's share starts there; `None` below it).
    pub fn resolve_into(
        &self,
        iov: &[IoVec],
        shift: usize,
        write: bool,
        out: &mut Vec<RawIoVec>,
    ) -> Option<()> {
        for v in iov {
            let mut off = v.window_offset.checked_sub(shift)?;
            let mut left = v.len;
            while left > 0 {
                let (addr, run) = self.locate(off, write)?;
                let n = run.min(left);
                match out.last_mut() {
                    Some(last) if last.addr + last.len == addr => last.len += n,
                    _ => out.push(RawIoVec { addr, len: n }),
                }
                off += n;
                left -= n;
            }
        }
        Some(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, PartialEq)]
    struct Fake(usize);
    impl Range for Fake {
        fn addr(&self) -> usize {
            self.0
        }
    }

    const A: usize = 0x10_0000;
    const B: usize = 0x80_0000;

    #[test]
    fn one_group_resolves_to_one_iovec() {
        let mut w = Window::<Fake>::default();
        assert!(w.reserve(16).unwrap().is_empty());
        let h = w.insert(4, 3, true, Fake(A)).unwrap();
        let iov = [
            IoVec {
                window_offset: 4 * PAGE_SIZE + 512,
                len: PAGE_SIZE - 512,
            },
            IoVec {
                window_offset: 5 * PAGE_SIZE,
                len: 2 * PAGE_SIZE,
            },
        ];
        let r = w.resolve(&iov, true).unwrap();
        assert_eq!(r.len(), 1);
        assert_eq!(r[0].addr, A + 512);
        assert_eq!(r[0].len, 3 * PAGE_SIZE - 512);
        assert_eq!(w.mapped_pages(), 3);
        // The same pieces named from a share starting 2 pages further on,
        // into a buffer with room: the same iovec, nothing allocated; a
        // piece below the share is refused.
        let shift = 2 * PAGE_SIZE;
        let shifted = iov.map(|v| IoVec {
            window_offset: v.window_offset + shift,
            len: v.len,
        });
        let mut out = Vec::with_capacity(4);
        let cap = out.capacity();
        assert_eq!(w.resolve_into(&shifted, shift, true, &mut out), Some(()));
        assert_eq!(out, r);
        assert_eq!(out.capacity(), cap);
        assert_eq!(
            w.resolve_into(&iov, 4 * PAGE_SIZE + 1024, true, &mut out),
            None
        );
        // Released page by page; the range is handed back with the last.
        assert_eq!(w.remove(5, h), Ok(None));
        assert_eq!(w.remove(5, h), Err(WindowError::NotMapped), "twice");
        assert_eq!(w.remove(4, h), Ok(None));
        assert_eq!(w.remove(6, h), Ok(Some(Fake(A))));
        assert_eq!(w.mapped_pages(), 0);
        assert_eq!(w.live_groups(), 0);
    }

    #[test]
    fn separate_groups_split_and_protection_is_checked() {
        let mut w = Window::<Fake>::default();
        w.reserve(8).unwrap();
        let h1 = w.insert(0, 1, true, Fake(A)).unwrap();
        let h2 = w.insert(1, 1, false, Fake(B)).unwrap();
        let iov = [IoVec {
            window_offset: 0,
            len: 2 * PAGE_SIZE,
        }];
        let r = w.resolve(&iov, false).unwrap();
        assert_eq!(r.len(), 2);
        assert_eq!((r[0].addr, r[1].addr), (A, B));
        // The store may not write into a read-only page.
        assert!(w.resolve(&iov, true).is_none());
        // Unmapped bytes are refused.
        let far = [IoVec {
            window_offset: 2 * PAGE_SIZE,
            len: 1,
        }];
        assert!(w.resolve(&far, false).is_none());
        // Wrong handle, busy pages, out of range.
        assert_eq!(w.remove(0, h2), Err(WindowError::NotMapped));
        assert!(matches!(
            w.insert(1, 2, true, Fake(0)),
            Err((WindowError::Busy, _))
        ));
        assert!(matches!(
            w.insert(7, 2, true, Fake(0)),
            Err((WindowError::OutOfRange, _))
        ));
        assert!(matches!(
            w.insert(u32::MAX, 2, true, Fake(0)),
            Err((WindowError::OutOfRange, _))
        ));
        assert_eq!(w.remove(0, h1), Ok(Some(Fake(A))));
        // A slot is reusable as soon as it is released.
        let h3 = w.insert(0, 1, true, Fake(A + PAGE_SIZE)).unwrap();
        assert!(w.resolve(&iov[..0], true).unwrap().is_empty());
        let mut left = w.release();
        left.sort_by_key(|f| f.0);
        assert_eq!(left, vec![Fake(A + PAGE_SIZE), Fake(B)]);
        assert_eq!(
            w.remove(0, h3),
            Err(WindowError::NotMapped),
            "released window"
        );
    }

    #[test]
    fn early_release_keeps_the_range_until_its_last_page() {
        let mut w = Window::<Fake>::default();
        w.reserve(4).unwrap();
        let h = w.insert(0, 2, true, Fake(A)).unwrap();
        assert_eq!(w.remove(0, h), Ok(None));
        // Page 0 is free for a new mapping while the old range lives on.
        let h2 = w.insert(0, 1, true, Fake(B)).unwrap();
        assert_eq!(w.live_groups(), 2);
        assert_eq!(w.remove(1, h), Ok(Some(Fake(A))));
        assert_eq!(w.remove(0, h2), Ok(Some(Fake(B))));
        assert!(w.release().is_empty());
    }
}
