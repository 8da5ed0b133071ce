//! One simulated guest domain's RAM: `N` 4 KiB frames (gfns) in a memfd.
//!
//! The guest (a simulated front-end) reads and writes its own frames through
//! copies and builds the front-end side of the shared ring of `io/ring.h`
//! over contiguous frames ([`GuestMemory::shared`]); a back-end reaches the
//! same frames only by mapping grants (see [`super::gnttab`] and
//! [`super::host`]), the way `grant_table.h` lets one domain map another's
//! page.

use std::io;
use std::sync::{Arc, Mutex};

use super::ffi::{KeptSharedMem, Memfd, SharedMapping};
use crate::store::locked;
use xbb::host::{DomId, PAGE_SIZE};

/// A guest frame number: the index of a 4 KiB page of a guest's RAM.
pub type Gfn = u64;

/// Why a guest memory access was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MemError {
    /// The frame is not part of the guest's RAM, or `off + len` leaves the
    /// frame (or, for [`GuestMemory::shared`], the RAM).
    OutOfRange,
    /// [`GuestMemory::free_frame`] of a frame that is not allocated.
    NotAllocated,
    /// The operating system failed (e.g. out of memory).
    Os(i32),
}

impl From<io::Error> for MemError {
    fn from(e: io::Error) -> Self {
        MemError::Os(e.raw_os_error().unwrap_or(libc::EIO))
    }
}

#[derive(Debug)]
struct Allocator {
    used: Vec<bool>,
    free: u64,
    hint: usize,
}

#[derive(Debug)]
struct Inner {
    dom: DomId,
    frames: u64,
    fd: Memfd,
    map: Arc<SharedMapping>,
    alloc: Mutex<Allocator>,
}

/// A guest domain's RAM. Cheap to clone (shared).
#[derive(Clone, Debug)]
pub struct GuestMemory {
    inner: Arc<Inner>,
}

impl GuestMemory {
    /// Creates `frames` zeroed frames of RAM for domain `dom`.
    pub fn new(dom: DomId, frames: u64) -> io::Result<GuestMemory> {
        let len = frames
            .checked_mul(PAGE_SIZE as u64)
            .filter(|&l| l > 0)
            .ok_or_else(|| io::Error::from_raw_os_error(libc::EINVAL))?;
        let n = usize::try_from(frames).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
        let mut name = String::from("xbb-guest-");
        name.push_str(&std::format!("{dom}"));
        let fd = Memfd::create(&name, len)?;
        let map = Arc::new(fd.map_all()?);
        let mut used = Vec::new();
        used.try_reserve_exact(n)
            .map_err(|_| io::Error::from_raw_os_error(libc::ENOMEM))?;
        used.resize(n, false);
        Ok(GuestMemory {
            inner: Arc::new(Inner {
                dom,
                frames,
                fd,
                map,
                alloc: Mutex::new(Allocator {
                    used,
                    free: frames,
                    hint: 0,
                }),
            }),
        })
    }

    /// The domain this RAM belongs to.
    pub fn domid(&self) -> DomId {
        self.inner.dom
    }

    /// The number of frames.
    pub fn frames(&self) -> u64 {
        self.inner.frames
    }

    /// The memfd behind the RAM, for a back-end that maps granted frames.
    pub fn memfd(&self) -> &Memfd {
        &self.inner.fd
    }

    /// A mapping of the whole RAM of its own, shared and writable: what a
    /// back-end sees when the guest's memory is mapped into its address
    /// space at once (the bench's premapped grant mode,
    /// [`super::host::GrantMapping::Premapped`]), rather than frame by
    /// frame as grants are mapped.
    pub fn backend_view(&self) -> io::Result<SharedMapping> {
        self.inner.fd.map_all()
    }

    fn offset(&self, gfn: Gfn, off: usize, len: usize) -> Result<usize, MemError> {
        if gfn >= self.inner.frames {
            return Err(MemError::OutOfRange);
        }
        if off.checked_add(len).is_none_or(|end| end > PAGE_SIZE) {
            return Err(MemError::OutOfRange);
        }
        let base = usize::try_from(gfn)
            .ok()
            .and_then(|g| g.checked_mul(PAGE_SIZE))
            .ok_or(MemError::OutOfRange)?;
        Ok(base + off)
    }

    /// Copies `out.len()` bytes at byte `off` of frame `gfn` into `out`. The
    /// range must stay inside the frame.
    pub fn read(&self, gfn: Gfn, off: usize, out: &mut [u8]) -> Result<(), MemError> {
        let at = self.offset(gfn, off, out.len())?;
        Ok(self.inner.map.read(at, out)?)
    }

    /// Copies `data` to byte `off` of frame `gfn`. The range must stay inside
    /// the frame.
    pub fn write(&self, gfn: Gfn, off: usize, data: &[u8]) -> Result<(), MemError> {
        let at = self.offset(gfn, off, data.len())?;
        Ok(self.inner.map.write(at, data)?)
    }

    /// Sets `len` bytes at byte `off` of frame `gfn` to `byte`.
    pub fn fill(&self, gfn: Gfn, off: usize, len: usize, byte: u8) -> Result<(), MemError> {
        let at = self.offset(gfn, off, len)?;
        Ok(self.inner.map.fill(at, len, byte)?)
    }

    /// The guest's own view of the `count` contiguous frames starting at
    /// `first`, as shared memory (the front-end side of a shared ring). It
    /// keeps the RAM mapped while it exists.
    pub fn shared(&self, first: Gfn, count: u64) -> Result<KeptSharedMem, MemError> {
        first
            .checked_add(count)
            .filter(|&e| count > 0 && e <= self.inner.frames)
            .ok_or(MemError::OutOfRange)?;
        let off = usize::try_from(first)
            .ok()
            .and_then(|f| f.checked_mul(PAGE_SIZE))
            .ok_or(MemError::OutOfRange)?;
        let len = usize::try_from(count)
            .ok()
            .and_then(|c| c.checked_mul(PAGE_SIZE))
            .ok_or(MemError::OutOfRange)?;
        Ok(self.inner.map.shared_mem(off, len)?)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Allocator> {
        locked(&self.inner.alloc)
    }

    /// Allocates one free frame (the lowest free one at or after the last
    /// allocation, wrapping); `None` when RAM is exhausted. The frame's
    /// content is whatever it was.
    pub fn alloc_frame(&self) -> Option<Gfn> {
        self.alloc_contiguous(1)
    }

    /// Allocates `count` contiguous free frames, returning the first;
    /// `None` when no such run exists (or `count` is 0).
    pub fn alloc_contiguous(&self, count: u64) -> Option<Gfn> {
        let n = usize::try_from(count).ok().filter(|&n| n > 0)?;
        let mut a = self.lock();
        let total = a.used.len();
        if n > total {
            return None;
        }
        let starts = (a.hint..=total - n).chain(0..a.hint.min(total - n + 1));
        let mut found = None;
        for s in starts {
            if a.used[s..s + n].iter().all(|u| !*u) {
                found = Some(s);
                break;
            }
        }
        let s = found?;
        a.used[s..s + n].iter_mut().for_each(|u| *u = true);
        a.free -= count;
        a.hint = if s + n >= total { 0 } else { s + n };
        Some(s as Gfn)
    }

    /// Returns frame `gfn` to the allocator.
    pub fn free_frame(&self, gfn: Gfn) -> Result<(), MemError> {
        let i = usize::try_from(gfn).map_err(|_| MemError::OutOfRange)?;
        let mut a = self.lock();
        match a.used.get_mut(i) {
            None => Err(MemError::OutOfRange),
            Some(false) => Err(MemError::NotAllocated),
            Some(u) => {
                *u = false;
                a.free += 1;
                Ok(())
            }
        }
    }

    /// How many frames are free.
    pub fn free_frames(&self) -> u64 {
        self.lock().free
    }
}
