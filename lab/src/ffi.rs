//! The simulator's only contact with the operating system's memory
//! primitives: `memfd_create(2)`, `ftruncate(2)`, `mmap(2)` / `munmap(2)`,
//! and `preadv(2)` / `pwritev(2)` into grant-mapping windows; and the C
//! allocator's own count of the live heap (`mallinfo2(3)`) for the soak.
//!
//! Guest RAM is a memfd; the guest reaches its pages through one shared
//! mapping ([`SharedMapping`], made by `xbb_ustore::mmap_shared` as the
//! stores' journal mappings are); a back-end maps single guest frames into an
//! address range it reserved ([`Reservation`]) with `MAP_FIXED`, exactly as
//! `GNTTABOP_map_grant_ref` (`grant_table.h`) places a foreign frame at a host
//! virtual address. Every `unsafe` block of the simulator lives in this file
//! and carries a `// SAFETY:` comment; everything above it is safe Rust.

#![allow(unsafe_code)]

use std::ffi::CString;
use std::io;
use std::ops::Deref;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, RwLock};

use xbb::host::PAGE_SIZE;
use xbb::shmem::SharedMem;

/// Bytes of heap the C allocator has handed out and not had back: glibc's
/// `mallinfo2(3)`, `uordblks` (in its arenas) plus `hblkhd` (in blocks
/// of their own mapping). Unlike the resident set it does not count free
/// memory the allocator keeps, so it grows with what is held, not with
/// fragmentation. `None` where the C library is not glibc.
pub fn heap_in_use() -> Option<u64> {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        // SAFETY: mallinfo2 takes nothing and returns a struct by value; it
        // reads the allocator's counters under the allocator's own locks.
        let m = unsafe { libc::mallinfo2() };
        Some(m.uordblks.saturating_add(m.hblkhd) as u64)
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    {
        None
    }
}

/// An anonymous memory file (`memfd_create(2)`) of a fixed size.
#[derive(Debug)]
pub struct Memfd {
    fd: OwnedFd,
    len: u64,
}

impl Memfd {
    /// Creates a memfd named `name` (for `/proc/self/fd`) of `len` bytes,
    /// zero-filled.
    pub fn create(name: &str, len: u64) -> io::Result<Memfd> {
        let cname = CString::new(name).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
        let off: libc::off_t =
            libc::off_t::try_from(len).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
        // SAFETY: `cname` is a valid NUL-terminated string that outlives the call.
        let raw = unsafe { libc::memfd_create(cname.as_ptr(), libc::MFD_CLOEXEC) };
        if raw < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `raw` is a freshly created descriptor that nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        // SAFETY: plain syscall on a descriptor we own.
        if unsafe { libc::ftruncate(fd.as_raw_fd(), off) } != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(Memfd { fd, len })
    }

    /// The size in bytes.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// Whether the file is empty.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Maps the whole file shared, readable and writable.
    pub fn map_all(&self) -> io::Result<SharedMapping> {
        let len =
            usize::try_from(self.len).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
        let base = xbb_ustore::mmap_shared(self.fd.as_fd(), len)?;
        Ok(SharedMapping { base, len })
    }
}

impl AsFd for Memfd {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

/// Copies `dst.len()` bytes out of shared memory at `src` with volatile loads.
///
/// # Safety
/// `src..src+dst.len()` must be mapped readable for the duration of the call.
unsafe fn volatile_copy_out(src: *const u8, dst: &mut [u8]) {
    let n = dst.len();
    let mut i = 0;
    while i < n && (src as usize + i) % 8 != 0 {
        // SAFETY: `i < n`, inside the range the caller vouches for.
        dst[i] = unsafe { std::ptr::read_volatile(src.add(i)) };
        i += 1;
    }
    while i + 8 <= n {
        // SAFETY: 8 bytes inside the range, 8-aligned by the loop above.
        let w = unsafe { std::ptr::read_volatile(src.add(i).cast::<u64>()) };
        dst[i..i + 8].copy_from_slice(&w.to_ne_bytes());
        i += 8;
    }
    while i < n {
        // SAFETY: `i < n`, inside the range.
        dst[i] = unsafe { std::ptr::read_volatile(src.add(i)) };
        i += 1;
    }
}

/// Copies `src` into shared memory at `dst` with volatile stores.
///
/// # Safety
/// `dst..dst+src.len()` must be mapped writable for the duration of the call.
unsafe fn volatile_copy_in(dst: *mut u8, src: &[u8]) {
    let n = src.len();
    let mut i = 0;
    while i < n && (dst as usize + i) % 8 != 0 {
        // SAFETY: `i < n`, inside the range the caller vouches for.
        unsafe { std::ptr::write_volatile(dst.add(i), src[i]) };
        i += 1;
    }
    while i + 8 <= n {
        let mut w = [0u8; 8];
        w.copy_from_slice(&src[i..i + 8]);
        // SAFETY: 8 bytes inside the range, 8-aligned by the loop above.
        unsafe { std::ptr::write_volatile(dst.add(i).cast::<u64>(), u64::from_ne_bytes(w)) };
        i += 8;
    }
    while i < n {
        // SAFETY: `i < n`, inside the range.
        unsafe { std::ptr::write_volatile(dst.add(i), src[i]) };
        i += 1;
    }
}

/// A whole memfd mapped shared and writable: a guest's view of its own RAM.
///
/// Other parties (back-ends with the same frames mapped) write it
/// concurrently, so it never hands out references: bytes are copied in and
/// out with volatile accesses, and ring access goes through [`SharedMem`].
#[derive(Debug)]
pub struct SharedMapping {
    base: NonNull<u8>,
    len: usize,
}

// SAFETY: the mapping is plain shared memory owned by this value; all access
// is by volatile copies or through `SharedMem` (atomics), never references,
// so using it from several threads is no different from several domains
// using the same page.
unsafe impl Send for SharedMapping {}
// SAFETY: as above; `&SharedMapping` only permits volatile copies.
unsafe impl Sync for SharedMapping {}

impl SharedMapping {
    /// The length in bytes.
    pub fn len(&self) -> usize {
        self.len
    }

    /// The process address of byte 0 (for I/O into the mapping that the
    /// kernel carries out, e.g. a store's `preadv`).
    pub fn base(&self) -> usize {
        self.base.as_ptr() as usize
    }

    /// Whether the mapping is empty (never, once created).
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    fn check(&self, off: usize, len: usize) -> io::Result<()> {
        match off.checked_add(len) {
            Some(end) if end <= self.len => Ok(()),
            _ => Err(io::Error::from_raw_os_error(libc::EFAULT)),
        }
    }

    /// Copies `out.len()` bytes at `off` out of the mapping.
    pub fn read(&self, off: usize, out: &mut [u8]) -> io::Result<()> {
        self.check(off, out.len())?;
        // SAFETY: the range is inside the live mapping (checked above).
        unsafe { volatile_copy_out(self.base.as_ptr().add(off), out) };
        Ok(())
    }

    /// Copies `data` into the mapping at `off`.
    pub fn write(&self, off: usize, data: &[u8]) -> io::Result<()> {
        self.check(off, data.len())?;
        // SAFETY: the range is inside the live, writable mapping (checked above).
        unsafe { volatile_copy_in(self.base.as_ptr().add(off), data) };
        Ok(())
    }

    /// Sets `len` bytes at `off` to `byte`.
    pub fn fill(&self, off: usize, len: usize, byte: u8) -> io::Result<()> {
        self.check(off, len)?;
        let chunk = [byte; 512];
        let mut done = 0;
        while done < len {
            let n = (len - done).min(chunk.len());
            // SAFETY: `off + done + n <= off + len <= self.len` (checked above).
            unsafe { volatile_copy_in(self.base.as_ptr().add(off + done), &chunk[..n]) };
            done += n;
        }
        Ok(())
    }

    /// A [`SharedMem`] over `len` bytes at `off` (4-byte aligned), keeping
    /// the mapping alive as long as it exists.
    pub fn shared_mem(self: &Arc<Self>, off: usize, len: usize) -> io::Result<KeptSharedMem> {
        self.check(off, len)?;
        if off % 4 != 0 {
            return Err(io::Error::from_raw_os_error(libc::EINVAL));
        }
        // SAFETY: the offset is 4-aligned and the mapping page-aligned, the
        // range is inside the mapping (checked above) and mapped read-write,
        // and the returned value holds an `Arc` of the mapping, so it stays
        // mapped for as long as the `SharedMem` exists. Nobody creates Rust
        // references into it.
        let mem =
            unsafe { SharedMem::new(NonNull::new_unchecked(self.base.as_ptr().add(off)), len) };
        Ok(KeptSharedMem {
            mem,
            _keep: Arc::clone(self),
        })
    }
}

impl Drop for SharedMapping {
    fn drop(&mut self) {
        // SAFETY: we own this mapping; no `SharedMem` into it survives (each
        // holds an `Arc` of us) and no references into it exist.
        unsafe { libc::munmap(self.base.as_ptr().cast(), self.len) };
    }
}

/// A [`SharedMem`] that keeps the mapping under it alive: the guest side of a
/// shared ring. Dereferences to [`SharedMem`].
#[derive(Debug)]
pub struct KeptSharedMem {
    mem: SharedMem,
    _keep: Arc<SharedMapping>,
}

impl Deref for KeptSharedMem {
    type Target = SharedMem;
    fn deref(&self) -> &SharedMem {
        &self.mem
    }
}

/// Address ranges of live [`Reservation`]s. Window I/O ([`pread_window`],
/// [`pwrite_window`]) holds the read lock across the system call; releasing
/// a reservation takes the write lock before `munmap`, so a range that was
/// checked stays ours until the I/O returns.
static RESERVATIONS: RwLock<Vec<(usize, usize)>> = RwLock::new(Vec::new());

fn reservations_read() -> std::sync::RwLockReadGuard<'static, Vec<(usize, usize)>> {
    RESERVATIONS.read().unwrap_or_else(|e| e.into_inner())
}

fn reservations_write() -> std::sync::RwLockWriteGuard<'static, Vec<(usize, usize)>> {
    RESERVATIONS.write().unwrap_or_else(|e| e.into_inner())
}

fn page_prot(writable: bool) -> libc::c_int {
    if writable {
        libc::PROT_READ | libc::PROT_WRITE
    } else {
        libc::PROT_READ
    }
}

/// What one page of a [`Reservation`] holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PageState {
    /// Inaccessible (`PROT_NONE`): any touch faults.
    Empty,
    /// A frame of a memfd, mapped read-only.
    ReadOnly,
    /// A frame of a memfd, mapped read-write.
    Writable,
}

/// A range of this process's address space reserved with `PROT_NONE`, into
/// which single frames of a memfd are mapped with `MAP_FIXED`: a grant-mapping
/// window (`xenmem_alloc` on FreeBSD) or a ring mapping.
///
/// The range only ever holds `PROT_NONE` anonymous memory or memfd frames,
/// never memory Rust has references to, which is what makes
/// [`pread_window`] / [`pwrite_window`] into it sound. If a [`SharedMem`]
/// lent by [`Reservation::shared_mem`] was not returned with
/// [`Reservation::take_back`], dropping the reservation leaks the range
/// rather than unmapping memory that may still be used.
///
/// Pages are mapped and unmapped through `&self`: the queues of an instance
/// map grants into their own shares of one window from their own threads.
/// Each page's state is an atomic, claimed (busy) for the duration of
/// its `mmap`, so two threads can never map the same page at once.
#[derive(Debug)]
pub struct Reservation {
    base: NonNull<u8>,
    pages: Vec<AtomicU8>,
    lent: Vec<(usize, usize)>,
}

/// A page's state while a thread maps or unmaps it.
const BUSY: u8 = 3;

fn state_code(s: PageState) -> u8 {
    match s {
        PageState::Empty => 0,
        PageState::ReadOnly => 1,
        PageState::Writable => 2,
    }
}

fn state_of(code: u8) -> PageState {
    match code {
        1 => PageState::ReadOnly,
        2 => PageState::Writable,
        // Busy: not usable yet (mapping) or any more (unmapping).
        _ => PageState::Empty,
    }
}

// SAFETY: the reservation owns its address range; access to the memory in it
// goes through `SharedMem` (atomics / volatile) or system calls, never Rust
// references, so moving it between threads is sound.
unsafe impl Send for Reservation {}
// SAFETY: shared use only maps and unmaps pages through `&self`, each page
// claimed by a compare-exchange on its atomic state first, so no two
// threads replace the same page; the address range itself never changes
// while the value lives.
unsafe impl Sync for Reservation {}

impl Reservation {
    /// Reserves `pages` inaccessible pages.
    pub fn new(pages: usize) -> io::Result<Reservation> {
        let len = pages
            .checked_mul(PAGE_SIZE)
            .filter(|&l| l > 0)
            .ok_or_else(|| io::Error::from_raw_os_error(libc::EINVAL))?;
        let mut table = Vec::new();
        table
            .try_reserve_exact(pages)
            .map_err(|_| io::Error::from_raw_os_error(libc::ENOMEM))?;
        table.resize_with(pages, || AtomicU8::new(0));
        // SAFETY: a fresh anonymous mapping chosen by the kernel (no
        // MAP_FIXED); it cannot replace anything.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_NONE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
                -1,
                0,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        let base = NonNull::new(p.cast::<u8>())
            .ok_or_else(|| io::Error::from_raw_os_error(libc::ENOMEM))?;
        reservations_write().push((base.as_ptr() as usize, len));
        Ok(Reservation {
            base,
            pages: table,
            lent: Vec::new(),
        })
    }

    /// The address of page 0.
    pub fn base(&self) -> usize {
        self.base.as_ptr() as usize
    }

    /// The number of pages.
    pub fn pages(&self) -> usize {
        self.pages.len()
    }

    /// The length in bytes.
    pub fn len(&self) -> usize {
        self.pages.len() * PAGE_SIZE
    }

    /// Whether the reservation is empty (never, once created).
    pub fn is_empty(&self) -> bool {
        self.pages.is_empty()
    }

    /// What page `page` holds; `None` when outside the reservation.
    pub fn page_state(&self, page: usize) -> Option<PageState> {
        // Acquire: pairs with the release that published the mapping.
        self.pages
            .get(page)
            .map(|s| state_of(s.load(Ordering::Acquire)))
    }

    /// How many pages hold a mapped frame.
    pub fn mapped_pages(&self) -> usize {
        self.pages
            .iter()
            .filter(|s| state_of(s.load(Ordering::Relaxed)) != PageState::Empty)
            .count()
    }

    fn is_lent(&self, page: usize) -> bool {
        self.lent
            .iter()
            .any(|&(first, n)| page >= first && page - first < n)
    }

    fn page_ptr(&self, page: usize) -> *mut libc::c_void {
        // Callers check `page < self.pages()`; the product stays inside the range.
        self.base.as_ptr().wrapping_add(page * PAGE_SIZE).cast()
    }

    /// Claims page `page` when its state is `from` (for a map or unmap).
    fn claim(&self, page: usize, from: PageState) -> io::Result<()> {
        let Some(st) = self.pages.get(page) else {
            return Err(io::Error::from_raw_os_error(libc::EINVAL));
        };
        match st.compare_exchange(state_code(from), BUSY, Ordering::Acquire, Ordering::Relaxed) {
            Ok(_) => Ok(()),
            Err(0) => Err(io::Error::from_raw_os_error(libc::ENOENT)),
            Err(_) => Err(io::Error::from_raw_os_error(libc::EBUSY)),
        }
    }

    /// Ends a claim: the page is now `to`.
    fn settle(&self, page: usize, to: PageState) {
        // Release: the mmap done under the claim is visible with the state.
        self.pages[page].store(state_code(to), Ordering::Release);
    }

    /// Replaces a claimed page with inaccessible memory and settles it
    /// empty.
    fn reset_page(&self, page: usize) -> io::Result<()> {
        // SAFETY: the page lies inside our own reservation (callers check
        // the index), which never holds memory Rust references; replacing it
        // with inaccessible anonymous memory affects nothing else.
        let p = unsafe {
            libc::mmap(
                self.page_ptr(page),
                PAGE_SIZE,
                libc::PROT_NONE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_FIXED | libc::MAP_NORESERVE,
                -1,
                0,
            )
        };
        self.settle(page, PageState::Empty);
        if p == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// Maps frame `frame` (a page index) of `fd` at page `page`, read-write
    /// when `writable`, else read-only (a write faults). The page must be
    /// empty.
    pub fn map_frame_at(
        &self,
        page: usize,
        fd: &Memfd,
        frame: u64,
        writable: bool,
    ) -> io::Result<()> {
        let off = frame
            .checked_mul(PAGE_SIZE as u64)
            .filter(|o| {
                o.checked_add(PAGE_SIZE as u64)
                    .is_some_and(|e| e <= fd.len())
            })
            .and_then(|o| libc::off_t::try_from(o).ok())
            .ok_or_else(|| io::Error::from_raw_os_error(libc::EINVAL))?;
        match self.claim(page, PageState::Empty) {
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => {
                return Err(io::Error::from_raw_os_error(libc::EBUSY))
            }
            r => r?,
        }
        // SAFETY: the target page is inside our own reservation, was empty
        // (PROT_NONE) and is claimed by this thread (above), so MAP_FIXED
        // replaces nothing any Rust code, lent `SharedMem` or other thread
        // uses.
        let p = unsafe {
            libc::mmap(
                self.page_ptr(page),
                PAGE_SIZE,
                page_prot(writable),
                libc::MAP_SHARED | libc::MAP_FIXED,
                fd.as_fd().as_raw_fd(),
                off,
            )
        };
        if p == libc::MAP_FAILED {
            let err = io::Error::last_os_error();
            // A failed MAP_FIXED may have removed the old mapping: put the
            // placeholder back.
            let _ = self.reset_page(page);
            return Err(err);
        }
        self.settle(
            page,
            if writable {
                PageState::Writable
            } else {
                PageState::ReadOnly
            },
        );
        Ok(())
    }

    /// Makes page `page` inaccessible again. Refused (`EBUSY`) while the page
    /// is part of a lent [`SharedMem`].
    pub fn unmap_frame_at(&self, page: usize) -> io::Result<()> {
        let was = match self.page_state(page) {
            None => return Err(io::Error::from_raw_os_error(libc::EINVAL)),
            Some(PageState::Empty) => return Err(io::Error::from_raw_os_error(libc::ENOENT)),
            Some(s) => s,
        };
        if self.is_lent(page) {
            return Err(io::Error::from_raw_os_error(libc::EBUSY));
        }
        self.claim(page, was)?;
        self.reset_page(page)
    }

    /// Lends a [`SharedMem`] over pages `first..first+count`, which must all
    /// be mapped writable. Those pages cannot be unmapped until the value is
    /// handed back with [`Reservation::take_back`].
    pub fn shared_mem(&mut self, first: usize, count: usize) -> io::Result<SharedMem> {
        let end = first
            .checked_add(count)
            .filter(|&e| count > 0 && e <= self.pages.len())
            .ok_or_else(|| io::Error::from_raw_os_error(libc::EINVAL))?;
        if self.pages[first..end]
            .iter()
            .any(|s| state_of(s.load(Ordering::Acquire)) != PageState::Writable)
        {
            return Err(io::Error::from_raw_os_error(libc::EACCES));
        }
        self.lent
            .try_reserve(1)
            .map_err(|_| io::Error::from_raw_os_error(libc::ENOMEM))?;
        self.lent.push((first, count));
        // SAFETY: the pages are inside our reservation, mapped read-write
        // (checked above), page-aligned; they stay mapped while lent because
        // `unmap_frame_at` refuses lent pages and `drop` leaks a reservation
        // with lent ranges instead of unmapping it.
        Ok(unsafe {
            SharedMem::new(
                NonNull::new_unchecked(self.page_ptr(first).cast::<u8>()),
                count * PAGE_SIZE,
            )
        })
    }

    /// Takes back a [`SharedMem`] lent by [`Reservation::shared_mem`]. A value
    /// this reservation did not lend is returned as the error.
    pub fn take_back(&mut self, mem: SharedMem) -> Result<(), SharedMem> {
        let addr = mem.as_ptr() as usize;
        let base = self.base();
        let pos = self
            .lent
            .iter()
            .position(|&(first, n)| base + first * PAGE_SIZE == addr && n * PAGE_SIZE == mem.len());
        match pos {
            Some(i) => {
                self.lent.swap_remove(i);
                // `mem` was taken by value and ends here: nothing can reach
                // the pages through it any more.
                Ok(())
            }
            None => Err(mem),
        }
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        if !self.lent.is_empty() {
            // A SharedMem may still point here: leak the range (it stays
            // registered, and its frames stay mapped) rather than unmap it.
            return;
        }
        let base = self.base();
        let len = self.len();
        let mut regs = reservations_write();
        regs.retain(|&(b, _)| b != base);
        // SAFETY: we own the range, nothing was lent from it, and the write
        // lock on the registry excludes window I/O into it.
        unsafe { libc::munmap(self.base.as_ptr().cast(), len) };
    }
}

/// One piece of a window I/O: `len` bytes at process address `addr`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WindowIoVec {
    /// Process address inside a live [`Reservation`].
    pub addr: usize,
    /// Length in bytes.
    pub len: usize,
}

fn window_iovecs(regs: &[(usize, usize)], iov: &[WindowIoVec]) -> io::Result<Vec<libc::iovec>> {
    let mut out = Vec::new();
    out.try_reserve_exact(iov.len())
        .map_err(|_| io::Error::from_raw_os_error(libc::ENOMEM))?;
    for v in iov {
        let end = v
            .addr
            .checked_add(v.len)
            .ok_or_else(|| io::Error::from_raw_os_error(libc::EFAULT))?;
        let inside = regs
            .iter()
            .any(|&(b, l)| v.addr >= b && end <= b.saturating_add(l));
        if !inside {
            return Err(io::Error::from_raw_os_error(libc::EFAULT));
        }
        out.push(libc::iovec {
            iov_base: v.addr as *mut libc::c_void,
            iov_len: v.len,
        });
    }
    Ok(out)
}

fn iov_count(n: usize) -> io::Result<libc::c_int> {
    if n > 1024 {
        // IOV_MAX on Linux.
        return Err(io::Error::from_raw_os_error(libc::EINVAL));
    }
    libc::c_int::try_from(n).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))
}

/// `preadv(2)` from `fd` at `offset` into window memory. Every piece must lie
/// inside one live [`Reservation`] (else `EFAULT`); a piece over an empty or
/// read-only page makes the kernel return `EFAULT`. Returns the bytes read
/// (short at end of file).
pub fn pread_window(fd: BorrowedFd<'_>, iov: &[WindowIoVec], offset: u64) -> io::Result<usize> {
    window_io(iov, offset, |v, cnt, off| {
        // SAFETY: every destination lies inside a registered reservation,
        // which only ever holds guest frames or PROT_NONE pages (never
        // memory Rust references), and the registry's read lock (held by
        // `window_io` around this call) keeps each range reserved until the
        // call returns.
        unsafe { libc::preadv(fd.as_raw_fd(), v.as_ptr(), cnt, off) }
    })
}

/// `pwritev(2)` to `fd` at `offset` from window memory. Same rules as
/// [`pread_window`]. Returns the bytes written.
pub fn pwrite_window(fd: BorrowedFd<'_>, iov: &[WindowIoVec], offset: u64) -> io::Result<usize> {
    window_io(iov, offset, |v, cnt, off| {
        // SAFETY: every source lies inside a registered reservation and the
        // read lock (held by `window_io`) keeps it reserved until the call
        // returns; the kernel only reads.
        unsafe { libc::pwritev(fd.as_raw_fd(), v.as_ptr(), cnt, off) }
    })
}

/// The checks and locking of [`pread_window`] and [`pwrite_window`]:
/// `call` gets the checked iovecs, their count and the offset while the
/// reservation registry is read-locked.
fn window_io(
    iov: &[WindowIoVec],
    offset: u64,
    call: impl FnOnce(&[libc::iovec], libc::c_int, libc::off_t) -> isize,
) -> io::Result<usize> {
    let off =
        libc::off_t::try_from(offset).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
    let regs = reservations_read();
    let v = window_iovecs(&regs, iov)?;
    let cnt = iov_count(v.len())?;
    let r = call(&v, cnt, off);
    drop(regs);
    usize::try_from(r).map_err(|_| io::Error::last_os_error())
}

fn scratch_file() -> io::Result<std::fs::File> {
    let m = Memfd::create("xbb-scratch", 0)?;
    Ok(std::fs::File::from(m.fd))
}

/// Moves `len` bytes between process address `addr` and offset 0 of the
/// scratch file `f` with `io` ([`pwrite_window`]: out of the window,
/// [`pread_window`]: into it); `EFAULT` when the kernel moved fewer.
fn scratch_io(
    f: &std::fs::File,
    addr: usize,
    len: usize,
    io: fn(BorrowedFd<'_>, &[WindowIoVec], u64) -> io::Result<usize>,
) -> io::Result<()> {
    if io(f.as_fd(), &[WindowIoVec { addr, len }], 0)? != len {
        return Err(io::Error::from_raw_os_error(libc::EFAULT));
    }
    Ok(())
}

/// Copies `out.len()` bytes at process address `addr` (inside a live
/// [`Reservation`], on readable pages) into `out`; `EFAULT` when the range is
/// not inside a reservation or not entirely mapped readable. The kernel does
/// the access (through a scratch memfd), so an inaccessible page is an error,
/// not a fault. For tests and diagnostics, not the I/O path.
pub fn read_window(addr: usize, out: &mut [u8]) -> io::Result<()> {
    use std::os::unix::fs::FileExt;
    let f = scratch_file()?;
    scratch_io(&f, addr, out.len(), pwrite_window)?;
    f.read_exact_at(out, 0)
}

/// Copies `data` to process address `addr` (inside a live [`Reservation`], on
/// writable pages); `EFAULT` when not inside a reservation or not entirely
/// mapped writable (a read-only grant mapping refuses the write).
pub fn write_window(addr: usize, data: &[u8]) -> io::Result<()> {
    use std::os::unix::fs::FileExt;
    let f = scratch_file()?;
    f.write_all_at(data, 0)?;
    scratch_io(&f, addr, data.len(), pread_window)
}
