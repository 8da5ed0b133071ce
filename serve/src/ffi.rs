//! Xen's user-space libraries, as a dom0 back-end uses them: the only
//! `unsafe` of the `xen` platform.
//!
//! - libxengnttab (`/dev/xen/gntdev`): `GNTTABOP_map_grant_ref` /
//!   `GNTTABOP_unmap_grant_ref` for several grant references at once into
//!   one contiguous range of this process, and `GNTTABOP_copy`;
//! - libxenevtchn (`/dev/xen/evtchn`): `EVTCHNOP_bind_interdomain`,
//!   `EVTCHNOP_send`, and delivery through a descriptor: a port that fired
//!   stays masked until it is unmasked, which is the "late EOI" discipline
//!   of [`xbb::host::QueueHost`];
//! - libxenstore: reads, writes, transactions and watches (`xs_wire.h`).
//!
//! Each handle type owns its C handle and closes it on drop. Every function
//! here copies what C returns into Rust values before returning, so nothing
//! above this module holds a C pointer except the mapped ranges, which
//! [`Mapping`] owns.

#![allow(unsafe_code)]

use core::ffi::{c_char, c_int, c_uint, c_void};
use core::ptr::NonNull;
use std::ffi::{CStr, CString};
use std::io;

use super::fault::{Kind, Tracked};
use xbb::host::{DomId, EvtchnPort, GrantRef, PAGE_SIZE};
use xbb::shmem::SharedMem;

#[repr(C)]
struct XengnttabHandle {
    _opaque: [u8; 0],
}
#[repr(C)]
struct XenevtchnHandle {
    _opaque: [u8; 0],
}
#[repr(C)]
struct XsHandle {
    _opaque: [u8; 0],
}

/// `struct xengnttab_grant_copy_segment`'s `foreign` member.
#[repr(C)]
#[derive(Clone, Copy)]
struct CopyForeign {
    gref: u32,
    offset: u16,
    domid: u16,
}

/// `union xengnttab_copy_ptr`.
#[repr(C)]
#[derive(Clone, Copy)]
union CopyPtr {
    virt: *mut c_void,
    foreign: CopyForeign,
}

/// `struct xengnttab_grant_copy_segment` (`xengnttab.h`).
#[repr(C)]
#[derive(Clone, Copy)]
struct CopySegment {
    source: CopyPtr,
    dest: CopyPtr,
    len: u16,
    flags: u16,
    status: i16,
}

/// `GNTCOPY_source_gref` (`grant_table.h`): the source is a grant reference.
const GNTCOPY_SOURCE_GREF: u16 = 1;
/// `GNTCOPY_dest_gref`: the destination is a grant reference.
const GNTCOPY_DEST_GREF: u16 = 2;
/// `GNTST_okay`.
const GNTST_OKAY: i16 = 0;

#[link(name = "xengnttab")]
extern "C" {
    fn xengnttab_open(logger: *mut c_void, flags: c_uint) -> *mut XengnttabHandle;
    fn xengnttab_close(h: *mut XengnttabHandle) -> c_int;
    fn xengnttab_map_domain_grant_refs(
        h: *mut XengnttabHandle,
        count: u32,
        domid: u32,
        refs: *mut u32,
        prot: c_int,
    ) -> *mut c_void;
    fn xengnttab_unmap(h: *mut XengnttabHandle, start: *mut c_void, count: u32) -> c_int;
    fn xengnttab_set_max_grants(h: *mut XengnttabHandle, n: u32) -> c_int;
    fn xengnttab_grant_copy(h: *mut XengnttabHandle, count: u32, segs: *mut CopySegment) -> c_int;
}

#[link(name = "xenevtchn")]
extern "C" {
    fn xenevtchn_open(logger: *mut c_void, flags: c_uint) -> *mut XenevtchnHandle;
    fn xenevtchn_close(h: *mut XenevtchnHandle) -> c_int;
    fn xenevtchn_fd(h: *mut XenevtchnHandle) -> c_int;
    fn xenevtchn_notify(h: *mut XenevtchnHandle, port: u32) -> c_int;
    fn xenevtchn_bind_interdomain(h: *mut XenevtchnHandle, domid: u32, remote: u32) -> c_int;
    fn xenevtchn_unbind(h: *mut XenevtchnHandle, port: u32) -> c_int;
    fn xenevtchn_pending(h: *mut XenevtchnHandle) -> c_int;
    fn xenevtchn_unmask(h: *mut XenevtchnHandle, port: u32) -> c_int;
}

/// `xs_read` and `xs_directory`: a malloc'd block and, through the last
/// argument, how many bytes or strings it holds; null on failure.
type XsQuery<T> = unsafe extern "C" fn(*mut XsHandle, u32, *const c_char, *mut c_uint) -> *mut T;

#[link(name = "xenstore")]
extern "C" {
    fn xs_open(flags: core::ffi::c_ulong) -> *mut XsHandle;
    fn xs_close(h: *mut XsHandle);
    fn xs_read(h: *mut XsHandle, t: u32, path: *const c_char, len: *mut c_uint) -> *mut c_void;
    fn xs_write(
        h: *mut XsHandle,
        t: u32,
        path: *const c_char,
        data: *const c_void,
        len: c_uint,
    ) -> bool;
    fn xs_rm(h: *mut XsHandle, t: u32, path: *const c_char) -> bool;
    fn xs_directory(
        h: *mut XsHandle,
        t: u32,
        path: *const c_char,
        num: *mut c_uint,
    ) -> *mut *mut c_char;
    fn xs_transaction_start(h: *mut XsHandle) -> u32;
    fn xs_transaction_end(h: *mut XsHandle, t: u32, abort: bool) -> bool;
    fn xs_watch(h: *mut XsHandle, path: *const c_char, token: *const c_char) -> bool;
    fn xs_unwatch(h: *mut XsHandle, path: *const c_char, token: *const c_char) -> bool;
    fn xs_fileno(h: *mut XsHandle) -> c_int;
    fn xs_check_watch(h: *mut XsHandle) -> *mut *mut c_char;
}

extern "C" {
    fn free(p: *mut c_void);
}

fn last_errno() -> i32 {
    io::Error::last_os_error().raw_os_error().unwrap_or(5)
}

fn cpath(path: &str) -> Result<CString, i32> {
    // A path with a NUL in it cannot name a node; EINVAL like xenstored.
    CString::new(path).map_err(|_| 22)
}

/// Which way a [`CopyOp`] copies.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CopyDir {
    /// From the front-end's granted page into [`AnonPages`].
    FromGuest,
    /// From [`AnonPages`] into the front-end's page (granted writable).
    ToGuest,
}

/// One `GNTTABOP_copy` segment between a front-end's granted page and a
/// range of an [`AnonPages`], for [`Gnttab::copy_pages`]. Holds no
/// pointer: the local side is an offset, checked against the memory when
/// the batch runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CopyOp {
    /// Direction.
    pub dir: CopyDir,
    /// The front-end's domain.
    pub dom: DomId,
    /// Its grant reference.
    pub gref: GrantRef,
    /// Byte offset in the granted page.
    pub guest_offset: u16,
    /// Byte offset in the [`AnonPages`].
    pub local: usize,
    /// Bytes to copy; `guest_offset + len` at most a page.
    pub len: u16,
    /// Xen's `GNTST_*` outcome once run (`GNTST_general_error` for an op
    /// that did not fit its page or the memory).
    pub status: i16,
}

impl CopyOp {
    /// Whether Xen copied this segment (`GNTST_okay`).
    pub fn ok(&self) -> bool {
        self.status == GNTST_OKAY
    }
}

/// `GNTST_general_error`.
const GNTST_GENERAL_ERROR: i16 = -1;

/// Page-aligned anonymous memory of this process (`mmap`), unmapped on
/// drop: the bounce buffers of the copying data window.
#[derive(Debug)]
pub struct AnonPages {
    addr: NonNull<u8>,
    len: usize,
    _tracked: Tracked,
}

// SAFETY: plain process memory, owned by this value.
unsafe impl Send for AnonPages {}

impl AnonPages {
    /// Maps `pages` zeroed pages; `Err(errno)` when the process is short.
    pub fn new(pages: usize) -> Result<AnonPages, i32> {
        let len = pages.checked_mul(PAGE_SIZE).filter(|l| *l > 0).ok_or(22)?;
        // SAFETY: a fresh private anonymous mapping; no existing memory is
        // named, and the result is checked against MAP_FAILED.
        let p = unsafe {
            libc::mmap(
                core::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(last_errno());
        }
        let addr = NonNull::new(p as *mut u8).ok_or(12)?;
        let _tracked = Tracked::new(addr.as_ptr() as usize, len, Kind::Bounce);
        Ok(AnonPages {
            addr,
            len,
            _tracked,
        })
    }

    /// Address of the first byte.
    pub fn addr(&self) -> usize {
        self.addr.as_ptr() as usize
    }

    /// Length in bytes.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the mapping is empty (never: `new` refuses zero pages).
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

impl Drop for AnonPages {
    fn drop(&mut self) {
        // (`_tracked` is dropped after this body: the table still lists the
        // range while it is unmapped, which only makes a report err on the
        // side of "inside a mapping" for a fault during this call.)
        // SAFETY: the mapping `new` made, unmapped once.
        unsafe { libc::munmap(self.addr.as_ptr() as *mut c_void, self.len) };
    }
}

/// A library handle owned by one value: the struct holding it, `Send`,
/// and `Drop`, which closes it once.
macro_rules! owned_handle {
    ($(#[$doc:meta])* $name:ident($raw:ty), $close:ident) => {
        $(#[$doc])*
        #[derive(Debug)]
        pub struct $name {
            h: NonNull<$raw>,
        }

        // SAFETY: each of the three libraries' handles is a descriptor plus
        // bookkeeping that the library shares with no other handle
        // (libxenstore also locks internally): it may move between threads,
        // and it has one owner at a time here anyway.
        unsafe impl Send for $name {}

        impl Drop for $name {
            fn drop(&mut self) {
                // SAFETY: the handle is ours and closed once.
                unsafe { $close(self.h.as_ptr()) };
            }
        }
    };
}

owned_handle!(
    /// A handle on `/dev/xen/gntdev`.
    Gnttab(XengnttabHandle),
    xengnttab_close
);

owned_handle!(
    /// A handle on `/dev/xen/evtchn`.
    Evtchn(XenevtchnHandle),
    xenevtchn_close
);

owned_handle!(
    /// A connection to xenstored.
    Xs(XsHandle),
    xs_close
);

/// A range of this process into which grants were mapped by one call;
/// unmapped by [`Gnttab::unmap`] (or leaked, never freed twice).
#[derive(Debug)]
pub struct Mapping {
    addr: NonNull<u8>,
    pages: u32,
    tracked: Tracked,
}

impl Mapping {
    /// First byte of the range.
    pub fn addr(&self) -> usize {
        self.addr.as_ptr() as usize
    }

    /// Length in pages.
    pub fn pages(&self) -> u32 {
        self.pages
    }
}

// SAFETY: the range belongs to the process, not to a thread.
unsafe impl Send for Mapping {}

impl Gnttab {
    /// Opens the grant device and raises its grant limit to `max_grants`.
    pub fn open(max_grants: u32) -> io::Result<Gnttab> {
        // SAFETY: a null logger selects the library's own; flags 0.
        let h = unsafe { xengnttab_open(core::ptr::null_mut(), 0) };
        let h = NonNull::new(h).ok_or_else(io::Error::last_os_error)?;
        // SAFETY: `h` is the open handle just returned.
        if unsafe { xengnttab_set_max_grants(h.as_ptr(), max_grants) } != 0 {
            let e = io::Error::last_os_error();
            // SAFETY: closing the handle we own exactly once.
            unsafe { xengnttab_close(h.as_ptr()) };
            return Err(e);
        }
        Ok(Gnttab { h })
    }

    /// Maps `refs` of domain `dom` as one contiguous range of data pages,
    /// read-only or writable. All or nothing: `Err(errno)` leaves nothing
    /// mapped.
    pub fn map(
        &mut self,
        dom: DomId,
        refs: &mut [GrantRef],
        writable: bool,
    ) -> Result<Mapping, i32> {
        self.map_as(dom, refs, writable, Kind::Data)
    }

    fn map_as(
        &mut self,
        dom: DomId,
        refs: &mut [GrantRef],
        writable: bool,
        kind: Kind,
    ) -> Result<Mapping, i32> {
        let n = u32::try_from(refs.len()).map_err(|_| 22)?;
        if n == 0 {
            return Err(22);
        }
        let prot = if writable {
            libc::PROT_READ | libc::PROT_WRITE
        } else {
            libc::PROT_READ
        };
        // SAFETY: `refs` holds `n` grant references and stays alive for the
        // call (the library may write to it? it does not, but takes *mut).
        let p = unsafe {
            xengnttab_map_domain_grant_refs(
                self.h.as_ptr(),
                n,
                u32::from(dom),
                refs.as_mut_ptr(),
                prot,
            )
        };
        match NonNull::new(p as *mut u8) {
            Some(addr) => Ok(Mapping {
                addr,
                pages: n,
                tracked: Tracked::new(addr.as_ptr() as usize, n as usize * PAGE_SIZE, kind),
            }),
            None => Err(last_errno()),
        }
    }

    /// Unmaps a range [`Gnttab::map`] returned. On failure the range stays
    /// mapped and is leaked rather than reused.
    pub fn unmap(&mut self, m: Mapping) -> Result<(), i32> {
        let Mapping {
            addr,
            pages,
            tracked,
        } = m;
        tracked.release();
        // SAFETY: the range came from `map` on this handle and `m` is
        // consumed here, so it is unmapped at most once and nobody refers
        // to it.
        let r = unsafe { xengnttab_unmap(self.h.as_ptr(), addr.as_ptr() as *mut c_void, pages) };
        if r == 0 {
            Ok(())
        } else {
            Err(last_errno())
        }
    }

    /// Maps `refs` writable and contiguous as a shared ring.
    pub fn map_ring(
        &mut self,
        dom: DomId,
        refs: &mut [GrantRef],
    ) -> Result<(SharedMem, Mapping), i32> {
        let m = self.map_as(dom, refs, true, Kind::Ring)?;
        let len = m.pages as usize * PAGE_SIZE;
        // SAFETY: the range is `len` bytes, mapped readable and writable,
        // and stays mapped until `unmap` consumes `m`; the caller keeps the
        // `SharedMem` and the `Mapping` together and drops the former first.
        let mem = unsafe { SharedMem::new(m.addr, len) };
        Ok((mem, m))
    }

    /// Copies the first `out.len()` bytes of the granted pages `refs` of
    /// `dom` into `out`, page `i` to `out[i * PAGE_SIZE..]`
    /// (`GNTTABOP_copy`).
    pub fn copy_in(&mut self, dom: DomId, refs: &[GrantRef], out: &mut [u8]) -> Result<(), i32> {
        // On the stack, batch by batch: nothing allocated per request (an
        // indirect request names at most 8 descriptor pages: one batch).
        const BATCH: usize = 16;
        let blank = CopySegment {
            source: CopyPtr {
                foreign: CopyForeign {
                    gref: 0,
                    offset: 0,
                    domid: dom,
                },
            },
            dest: CopyPtr {
                virt: core::ptr::null_mut(),
            },
            len: 0,
            flags: GNTCOPY_SOURCE_GREF,
            status: 0,
        };
        let mut segs = [blank; BATCH];
        let mut pages = refs.iter().zip(out.chunks_mut(PAGE_SIZE)).peekable();
        while pages.peek().is_some() {
            let mut n = 0;
            for (seg, (gref, chunk)) in segs.iter_mut().zip(pages.by_ref().take(BATCH)) {
                *seg = CopySegment {
                    source: CopyPtr {
                        foreign: CopyForeign {
                            gref: *gref,
                            offset: 0,
                            domid: dom,
                        },
                    },
                    dest: CopyPtr {
                        virt: chunk.as_mut_ptr() as *mut c_void,
                    },
                    len: chunk.len() as u16,
                    flags: GNTCOPY_SOURCE_GREF,
                    status: 0,
                };
                n += 1;
            }
            // SAFETY: `segs[..n]` holds `n` initialised segments whose
            // destinations are disjoint chunks of `out`, writable and
            // borrowed for the call.
            let r = unsafe { xengnttab_grant_copy(self.h.as_ptr(), n as u32, segs.as_mut_ptr()) };
            if r != 0 {
                return Err(last_errno());
            }
            if segs[..n].iter().any(|s| s.status != GNTST_OKAY) {
                return Err(1);
            }
        }
        Ok(())
    }
}

impl Gnttab {
    /// Runs `ops` between front-end pages and `mem` as `GNTTABOP_copy`
    /// batches. An op whose page range or local range does not fit gets
    /// `GNTST_general_error` and is not run. `Err(errno)` when a call
    /// itself failed (its ops are marked `GNTST_general_error`); either
    /// way each op's [`CopyOp::ok`] tells.
    pub fn copy_pages(&mut self, mem: &mut AnonPages, ops: &mut [CopyOp]) -> Result<(), i32> {
        const BATCH: usize = 64;
        let mut segs = [CopySegment {
            source: CopyPtr {
                virt: core::ptr::null_mut(),
            },
            dest: CopyPtr {
                virt: core::ptr::null_mut(),
            },
            len: 0,
            flags: 0,
            status: 0,
        }; BATCH];
        let base = mem.addr.as_ptr();
        let mut result = Ok(());
        for chunk in ops.chunks_mut(BATCH) {
            let mut n = 0usize;
            let mut run = [false; BATCH];
            for (i, op) in chunk.iter_mut().enumerate() {
                let fits = usize::from(op.guest_offset) + usize::from(op.len) <= PAGE_SIZE
                    && op.len > 0
                    && op
                        .local
                        .checked_add(usize::from(op.len))
                        .is_some_and(|end| end <= mem.len);
                if !fits {
                    op.status = GNTST_GENERAL_ERROR;
                    continue;
                }
                // SAFETY: `local + len` lies inside `mem`, checked above,
                // so the pointer stays within the mapping `mem` owns.
                let local = unsafe { base.add(op.local) } as *mut c_void;
                let foreign = CopyPtr {
                    foreign: CopyForeign {
                        gref: op.gref,
                        offset: op.guest_offset,
                        domid: op.dom,
                    },
                };
                let here = CopyPtr { virt: local };
                let (source, dest, flags) = match op.dir {
                    CopyDir::FromGuest => (foreign, here, GNTCOPY_SOURCE_GREF),
                    CopyDir::ToGuest => (here, foreign, GNTCOPY_DEST_GREF),
                };
                segs[n] = CopySegment {
                    source,
                    dest,
                    len: op.len,
                    flags,
                    status: 0,
                };
                run[i] = true;
                n += 1;
            }
            if n == 0 {
                continue;
            }
            // SAFETY: `segs[..n]` are initialised segments whose local
            // sides lie inside `mem`, borrowed mutably for the call, so the
            // kernel touches no other memory of this process.
            let r = unsafe { xengnttab_grant_copy(self.h.as_ptr(), n as u32, segs.as_mut_ptr()) };
            let failed = (r != 0).then(last_errno);
            let mut k = 0;
            for (i, op) in chunk.iter_mut().enumerate() {
                if run[i] {
                    op.status = if failed.is_some() {
                        GNTST_GENERAL_ERROR
                    } else {
                        segs[k].status
                    };
                    k += 1;
                }
            }
            if let Some(e) = failed {
                result = Err(e);
            }
        }
        result
    }
}

impl Evtchn {
    /// Opens the event-channel device.
    pub fn open() -> io::Result<Evtchn> {
        // SAFETY: null logger, flags 0.
        let h = unsafe { xenevtchn_open(core::ptr::null_mut(), 0) };
        let e = Evtchn {
            h: NonNull::new(h).ok_or_else(io::Error::last_os_error)?,
        };
        // `pending` reads the descriptor: it must not block once drained.
        let fd = e.fd();
        // SAFETY: fcntl on the descriptor the handle owns.
        let ok = unsafe {
            let fl = libc::fcntl(fd, libc::F_GETFL);
            fl >= 0 && libc::fcntl(fd, libc::F_SETFL, fl | libc::O_NONBLOCK) == 0
        };
        if !ok {
            return Err(io::Error::last_os_error());
        }
        Ok(e)
    }

    /// The descriptor that becomes readable when a port fired.
    pub fn fd(&self) -> i32 {
        // SAFETY: plain query on our handle.
        unsafe { xenevtchn_fd(self.h.as_ptr()) }
    }

    /// Binds to `remote` of `dom`; the local port.
    pub fn bind_interdomain(&mut self, dom: DomId, remote: EvtchnPort) -> Result<EvtchnPort, i32> {
        // SAFETY: plain call on our handle.
        let r = unsafe { xenevtchn_bind_interdomain(self.h.as_ptr(), u32::from(dom), remote) };
        u32::try_from(r).map_err(|_| last_errno())
    }

    /// `EVTCHNOP_send` on a local port.
    pub fn notify(&mut self, port: EvtchnPort) -> Result<(), i32> {
        // SAFETY: plain call on our handle.
        match unsafe { xenevtchn_notify(self.h.as_ptr(), port) } {
            0 => Ok(()),
            _ => Err(last_errno()),
        }
    }

    /// The next port that fired (it is masked until [`Evtchn::unmask`]);
    /// `None` when none is pending.
    pub fn pending(&mut self) -> Option<EvtchnPort> {
        // SAFETY: plain call on our handle; the descriptor is non-blocking.
        let r = unsafe { xenevtchn_pending(self.h.as_ptr()) };
        u32::try_from(r).ok()
    }

    /// Re-enables delivery on `port`.
    pub fn unmask(&mut self, port: EvtchnPort) {
        // SAFETY: plain call on our handle.
        unsafe { xenevtchn_unmask(self.h.as_ptr(), port) };
    }

    /// Unbinds `port`.
    pub fn unbind(&mut self, port: EvtchnPort) {
        // SAFETY: plain call on our handle.
        unsafe { xenevtchn_unbind(self.h.as_ptr(), port) };
    }
}

/// Takes ownership of a `char **` vector libxenstore allocated in one block
/// and copies its `n` strings out.
///
/// # Safety
/// `v` is null or such a vector with at least `n` valid C strings.
unsafe fn take_strings(v: *mut *mut c_char, n: usize) -> Vec<String> {
    let mut out = Vec::new();
    if v.is_null() {
        return out;
    }
    for i in 0..n {
        // SAFETY: the caller promises `n` valid entries.
        let s = unsafe { CStr::from_ptr(*v.add(i)) };
        out.push(String::from_utf8_lossy(s.to_bytes()).into_owned());
    }
    // SAFETY: one block from malloc, freed once.
    unsafe { free(v as *mut c_void) };
    out
}

impl Xs {
    /// Opens a connection (socket or `/dev/xen/xenbus`, as the library
    /// chooses).
    pub fn open() -> io::Result<Xs> {
        // SAFETY: flags 0.
        let h = unsafe { xs_open(0) };
        Ok(Xs {
            h: NonNull::new(h).ok_or_else(io::Error::last_os_error)?,
        })
    }

    /// Reads a node; `Err(errno)` (ENOENT for a missing node).
    pub fn read(&mut self, txn: u32, path: &str) -> Result<Vec<u8>, i32> {
        let (v, len) = self.query(txn, path, xs_read)?;
        // SAFETY: the library returned `len` bytes at `v` (malloc'd).
        let out = unsafe { core::slice::from_raw_parts(v as *const u8, len) }.to_vec();
        // SAFETY: freed once.
        unsafe { free(v) };
        Ok(out)
    }

    /// Writes a node.
    pub fn write(&mut self, txn: u32, path: &str, value: &[u8]) -> Result<(), i32> {
        let p = cpath(path)?;
        let len = c_uint::try_from(value.len()).map_err(|_| 22)?;
        // SAFETY: valid C string and `len` bytes of `value`.
        let ok = unsafe {
            xs_write(
                self.h.as_ptr(),
                txn,
                p.as_ptr(),
                value.as_ptr() as *const c_void,
                len,
            )
        };
        if ok {
            Ok(())
        } else {
            Err(last_errno())
        }
    }

    /// Removes a node and its children.
    pub fn rm(&mut self, txn: u32, path: &str) -> Result<(), i32> {
        let p = cpath(path)?;
        // SAFETY: valid C string.
        if unsafe { xs_rm(self.h.as_ptr(), txn, p.as_ptr()) } {
            Ok(())
        } else {
            Err(last_errno())
        }
    }

    /// The children of a node.
    pub fn directory(&mut self, txn: u32, path: &str) -> Result<Vec<String>, i32> {
        let (v, n) = self.query(txn, path, xs_directory)?;
        // SAFETY: `v` is the library's vector of `n` strings.
        Ok(unsafe { take_strings(v, n) })
    }

    /// Runs `query` (`xs_read` or `xs_directory`) on `path`: the block
    /// the library allocated and the count it returned beside it (bytes or
    /// strings); `Err(errno)` when it returned null.
    fn query<T>(
        &mut self,
        txn: u32,
        path: &str,
        query: XsQuery<T>,
    ) -> Result<(*mut T, usize), i32> {
        let p = cpath(path)?;
        let mut n: c_uint = 0;
        // SAFETY: `p` is a valid C string; `n` receives the count.
        let v = unsafe { query(self.h.as_ptr(), txn, p.as_ptr(), &mut n) };
        if v.is_null() {
            return Err(last_errno());
        }
        Ok((v, n as usize))
    }

    /// Starts a transaction.
    pub fn transaction_start(&mut self) -> Result<u32, i32> {
        // SAFETY: plain call on our handle.
        match unsafe { xs_transaction_start(self.h.as_ptr()) } {
            0 => Err(last_errno()),
            t => Ok(t),
        }
    }

    /// Ends a transaction (`EAGAIN`: conflicted, retry).
    pub fn transaction_end(&mut self, txn: u32, commit: bool) -> Result<(), i32> {
        // SAFETY: plain call on our handle.
        if unsafe { xs_transaction_end(self.h.as_ptr(), txn, !commit) } {
            Ok(())
        } else {
            Err(last_errno())
        }
    }

    /// Sets a watch on `path` (and below) reported with `token`.
    pub fn watch(&mut self, path: &str, token: &str) -> Result<(), i32> {
        let p = cpath(path)?;
        let t = cpath(token)?;
        // SAFETY: valid C strings.
        if unsafe { xs_watch(self.h.as_ptr(), p.as_ptr(), t.as_ptr()) } {
            Ok(())
        } else {
            Err(last_errno())
        }
    }

    /// Removes a watch.
    pub fn unwatch(&mut self, path: &str, token: &str) {
        if let (Ok(p), Ok(t)) = (cpath(path), cpath(token)) {
            // SAFETY: valid C strings.
            unsafe { xs_unwatch(self.h.as_ptr(), p.as_ptr(), t.as_ptr()) };
        }
    }

    /// The descriptor that becomes readable when a watch fired.
    pub fn fileno(&mut self) -> i32 {
        // SAFETY: plain call on our handle.
        unsafe { xs_fileno(self.h.as_ptr()) }
    }

    /// The next fired watch as `(path, token)`, without blocking.
    pub fn check_watch(&mut self) -> Option<(String, String)> {
        // SAFETY: plain call on our handle.
        let v = unsafe { xs_check_watch(self.h.as_ptr()) };
        // SAFETY: a watch event is a vector of 2 strings (XS_WATCH_PATH,
        // XS_WATCH_TOKEN).
        let mut s = unsafe { take_strings(v, 2) };
        if s.len() == 2 {
            let token = s.pop()?;
            let path = s.pop()?;
            Some((path, token))
        } else {
            None
        }
    }
}

/// Most descriptors [`poll_readable`] polls at once.
pub const POLL_FDS: usize = 4;

/// Waits until one of `fds` is readable or `timeout_ms` passed (-1: no
/// limit); returns which are readable.
/// At most [`POLL_FDS`] descriptors; more are not polled.
pub fn poll_readable(fds: &[i32], timeout_ms: i32, ready: &mut [bool]) -> io::Result<()> {
    let mut all = [libc::pollfd {
        fd: -1,
        events: libc::POLLIN,
        revents: 0,
    }; POLL_FDS];
    let p = &mut all[..fds.len().min(POLL_FDS)];
    for (q, &fd) in p.iter_mut().zip(fds) {
        q.fd = fd;
    }
    // SAFETY: `p` holds `p.len()` initialised pollfd entries (on the
    // stack: nothing is allocated per poll).
    let r = unsafe { libc::poll(p.as_mut_ptr(), p.len() as libc::nfds_t, timeout_ms) };
    if r < 0 {
        let e = io::Error::last_os_error();
        if e.kind() == io::ErrorKind::Interrupted {
            ready.iter_mut().for_each(|r| *r = false);
            return Ok(());
        }
        return Err(e);
    }
    for (r, q) in ready.iter_mut().zip(p.iter()) {
        *r = q.revents & (libc::POLLIN | libc::POLLHUP | libc::POLLERR) != 0;
    }
    Ok(())
}

/// A counter descriptor (`eventfd(2)`) other threads use to wake a poller.
#[derive(Debug)]
pub struct Wakeup {
    fd: i32,
}

impl Wakeup {
    /// A new non-blocking eventfd.
    pub fn new() -> io::Result<Wakeup> {
        // SAFETY: plain system call.
        let fd = unsafe { libc::eventfd(0, libc::EFD_NONBLOCK | libc::EFD_CLOEXEC) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(Wakeup { fd })
    }

    /// The descriptor to poll.
    pub fn fd(&self) -> i32 {
        self.fd
    }

    /// Wakes the poller.
    pub fn wake(&self) {
        let one: u64 = 1;
        // SAFETY: writes 8 bytes from a local to our descriptor.
        unsafe { libc::write(self.fd, &one as *const u64 as *const c_void, 8) };
    }

    /// Consumes pending wake-ups.
    pub fn clear(&self) {
        let mut v: u64 = 0;
        // SAFETY: reads at most 8 bytes into a local from our descriptor.
        unsafe { libc::read(self.fd, &mut v as *mut u64 as *mut c_void, 8) };
    }
}

impl Drop for Wakeup {
    fn drop(&mut self) {
        // SAFETY: the descriptor is ours and closed once.
        unsafe { libc::close(self.fd) };
    }
}

/// Blocks `SIGINT`, `SIGTERM`, `SIGHUP` and `SIGUSR1` in the calling thread
/// (call before starting threads, so they inherit the mask) and returns a
/// signalfd that receives them.
pub fn signal_fd() -> io::Result<i32> {
    // SAFETY: sigset manipulation on a local, then the two system calls.
    unsafe {
        let mut set: libc::sigset_t = core::mem::zeroed();
        libc::sigemptyset(&mut set);
        for s in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP, libc::SIGUSR1] {
            libc::sigaddset(&mut set, s);
        }
        if libc::pthread_sigmask(libc::SIG_BLOCK, &set, core::ptr::null_mut()) != 0 {
            return Err(io::Error::last_os_error());
        }
        let fd = libc::signalfd(-1, &set, libc::SFD_NONBLOCK | libc::SFD_CLOEXEC);
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(fd)
    }
}

/// Reads the next signal from a [`signal_fd`]; `None` when none is pending.
pub fn read_signal(fd: i32) -> Option<i32> {
    // SAFETY: reads one signalfd_siginfo into a zeroed local.
    unsafe {
        let mut info: libc::signalfd_siginfo = core::mem::zeroed();
        let n = libc::read(
            fd,
            &mut info as *mut libc::signalfd_siginfo as *mut c_void,
            core::mem::size_of::<libc::signalfd_siginfo>(),
        );
        if n == core::mem::size_of::<libc::signalfd_siginfo>() as isize {
            Some(info.ssi_signo as i32)
        } else {
            None
        }
    }
}
