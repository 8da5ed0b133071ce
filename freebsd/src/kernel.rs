//! The services of the C shim (`struct xbb_shim_ops` of
//! `sys-glue/xbb_shim.h`) as the core's platform traits: [`KernelHost`]
//! implements the control part's [`xbb::host::Host`] and
//! [`KernelQueueHost`] one queue's [`xbb::host::QueueHost`], by calling
//! through the ops table; [`QueueCell`] is where a queue lives while it is
//! lent to its task; and [`KernelAllocator`] / [`kernel_panic`] give the
//! kernel library crate its `#[global_allocator]` and `#[panic_handler]` on
//! top of `malloc(9)` and `panic(9)`.
//!
//! The table is installed once, at module load (`xbb_rs_load`), into an
//! atomic pointer; every call through it is `unsafe` and lives in this
//! module, each with its `// SAFETY:` reason.

#![allow(unsafe_code)]

use alloc::string::String;
use core::alloc::{GlobalAlloc, Layout};
use core::cell::UnsafeCell;
use core::ffi::{c_char, c_int, c_void};
use core::fmt::{self, Write};
use core::ptr::{self, NonNull};
use core::sync::atomic::{AtomicPtr, AtomicU8, Ordering};

use crate::errno::{self, Error};
use crate::ffi;
use xbb::handoff::{Gate, Post, Work};
use xbb::host::{
    ConnEvent, DomId, Event, EvtchnError, GrantError, GrantHandle, GrantMapOp, GrantUnmapOp,
    Granted, Host, IoError, IoKind, IoOp, IoTag, IoVec, MapResult, MediumInfo, OpenError,
    OpenParams, QueueHost, QueueId, RemotePort, XenStore, XsError, XsTxn, PAGE_SIZE,
};
use xbb::queue::{Outcome, Queue};
use xbb::shmem::SharedMem;
use xbb::units::Sectors;

/// The ops table of the loaded module, or null.
static OPS: AtomicPtr<ffi::xbb_shim_ops> = AtomicPtr::new(ptr::null_mut());

/// Whether every member of `ops` is set and the table is of our layout.
fn table_is_complete(ops: &ffi::xbb_shim_ops) -> bool {
    ops.version == ffi::XBB_SHIM_VERSION
        && ops.size as usize == core::mem::size_of::<ffi::xbb_shim_ops>()
        && ops.xs_read.is_some()
        && ops.xs_write.is_some()
        && ops.xs_remove.is_some()
        && ops.xs_transaction_start.is_some()
        && ops.xs_transaction_end.is_some()
        && ops.window_reserve.is_some()
        && ops.window_release.is_some()
        && ops.map_grants.is_some()
        && ops.unmap_grants.is_some()
        && ops.ring_map.is_some()
        && ops.ring_unmap.is_some()
        && ops.copy_in.is_some()
        && ops.evtchn_bind.is_some()
        && ops.evtchn_notify.is_some()
        && ops.evtchn_eoi.is_some()
        && ops.evtchn_unbind.is_some()
        && ops.queue_kick.is_some()
        && ops.control_kick.is_some()
        && ops.now_ms.is_some()
        && ops.store_open.is_some()
        && ops.store_info.is_some()
        && ops.store_submit.is_some()
        && ops.io_done.is_some()
        && ops.store_close.is_some()
        && ops.root_mounted.is_some()
        && ops.mem_alloc.is_some()
        && ops.mem_free.is_some()
        && ops.panic.is_some()
        && ops.log.is_some()
        && ops.stat_attach.is_some()
        && ops.stat_detach.is_some()
        && ops.stat_start.is_some()
        && ops.stat_end.is_some()
        && ops.probe.is_some()
}

/// Installs the module's ops table (MOD_LOAD).
///
/// # Safety
/// `ops` must be null or point to a table that stays valid and unchanged
/// until [`uninstall`] returns, whose functions behave as
/// `sys-glue/xbb_shim.h` documents.
pub(super) unsafe fn install(ops: *const ffi::xbb_shim_ops) -> Result<(), Error> {
    if ops.is_null() {
        return Err(Error::Invalid);
    }
    // SAFETY: non-null (checked), valid for reads by the caller's contract;
    // only the version and size are read before they are known to match.
    let (version, size) = unsafe { ((*ops).version, (*ops).size) };
    if version != ffi::XBB_SHIM_VERSION
        || size as usize != core::mem::size_of::<ffi::xbb_shim_ops>()
    {
        return Err(Error::Invalid);
    }
    // SAFETY: as above, and the size matches ours, so the whole table is
    // readable.
    if !table_is_complete(unsafe { &*ops }) {
        return Err(Error::Invalid);
    }
    OPS.compare_exchange(
        ptr::null_mut(),
        ops.cast_mut(),
        Ordering::AcqRel,
        Ordering::Acquire,
    )
    .map(|_| ())
    .map_err(|_| Error::Exists)
}

/// Forgets the ops table (MOD_UNLOAD).
pub(super) fn uninstall() {
    OPS.store(ptr::null_mut(), Ordering::Release);
}

/// Whether an ops table is installed (the module is loaded).
pub fn ops_installed() -> bool {
    !OPS.load(Ordering::Acquire).is_null()
}

/// The installed table.
pub(crate) fn ops() -> Option<&'static ffi::xbb_shim_ops> {
    let p = OPS.load(Ordering::Acquire);
    // SAFETY: a non-null pointer was installed by `install`, whose contract
    // keeps the table valid and unchanged until `uninstall`; the C side
    // unloads only after every instance is gone and no call is running.
    unsafe { p.as_ref() }
}

/// A member of the table; `install` refused tables with an empty member.
fn f<T>(member: Option<T>) -> T {
    match member {
        Some(f) => f,
        None => unreachable!("xbb: incomplete ops table"),
    }
}

// --- Module-wide services --------------------------------------------------

/// Allocates for `layout` with `malloc(9)` and the given
/// `XBB_SHIM_M_*` flags; null on failure, when the module is not loaded, or
/// for alignments above a page.
pub fn kernel_alloc_flags(layout: Layout, flags: u32) -> *mut u8 {
    let Some(ops) = ops() else {
        return ptr::null_mut();
    };
    if layout.align() > PAGE_SIZE || layout.size() == 0 {
        return ptr::null_mut();
    }
    // SAFETY: mem_alloc is set (install checked) and takes any size and a
    // power-of-two alignment up to a page; a null ctx is allowed.
    unsafe { f(ops.mem_alloc)(ptr::null_mut(), layout.size(), layout.align(), flags).cast::<u8>() }
}

/// Allocates for `layout` with `M_NOWAIT`: what the global allocator uses,
/// since Rust code runs from the instance's task, where sleeping for memory
/// is not allowed. Null on failure.
pub fn kernel_alloc(layout: Layout) -> *mut u8 {
    kernel_alloc_flags(layout, ffi::XBB_SHIM_M_NOWAIT)
}

/// Frees what [`kernel_alloc`] or [`kernel_alloc_flags`] returned.
///
/// # Safety
/// `ptr` must come from one of them with this same `layout`, and not have
/// been freed; the module must still be loaded.
pub unsafe fn kernel_dealloc(ptr: *mut u8, layout: Layout) {
    if let Some(ops) = ops() {
        // SAFETY: by the caller's contract ptr is a live mem_alloc block of
        // this size and alignment.
        unsafe { f(ops.mem_free)(ptr::null_mut(), ptr.cast(), layout.size(), layout.align()) }
    }
}

/// A `GlobalAlloc` over `malloc(9)` (`M_NOWAIT`, the driver's malloc type)
/// for the kernel library crate:
///
/// ```ignore
/// #[global_allocator]
/// static ALLOC: xbb_freebsd::KernelAllocator = xbb_freebsd::KernelAllocator;
/// ```
///
/// Every allocation of the core is fallible (`try_reserve`), so a null
/// return is an error the front-end sees, not a panic.
#[derive(Clone, Copy, Debug, Default)]
pub struct KernelAllocator;

// SAFETY: `alloc` returns null or a block of at least `layout.size()`
// bytes aligned to `layout.align()` (mem_alloc's contract), `dealloc` hands
// the block back with the same layout.
unsafe impl GlobalAlloc for KernelAllocator {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        kernel_alloc(layout)
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        kernel_alloc_flags(layout, ffi::XBB_SHIM_M_NOWAIT | ffi::XBB_SHIM_M_ZERO)
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: GlobalAlloc's contract: ptr came from `alloc` with layout.
        unsafe { kernel_dealloc(ptr, layout) }
    }
}

/// A `fmt::Write` into a fixed buffer that drops what does not fit.
pub(super) struct Truncating<'a> {
    buf: &'a mut [u8],
    len: usize,
}

impl<'a> Truncating<'a> {
    pub(super) fn new(buf: &'a mut [u8]) -> Self {
        Truncating { buf, len: 0 }
    }

    pub(super) fn len(&self) -> usize {
        self.len
    }
}

impl Write for Truncating<'_> {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        let room = self.buf.len() - self.len;
        let n = s.len().min(room);
        self.buf[self.len..self.len + n].copy_from_slice(&s.as_bytes()[..n]);
        self.len += n;
        Ok(())
    }
}

/// Formats `args` into `buf`, truncating, and returns the length used: the
/// message [`kernel_panic`] and [`kernel_log`] hand to C.
pub fn format_truncated(buf: &mut [u8], args: fmt::Arguments<'_>) -> usize {
    let mut w = Truncating::new(buf);
    // Truncating::write_str never fails.
    let _ = w.write_fmt(args);
    w.len()
}

/// Logs a formatted message through the shim's `printf`. At most 256 bytes
/// are kept.
pub fn kernel_log(args: fmt::Arguments<'_>) {
    log_for(ptr::null_mut(), args)
}

/// Logs for the softc `ctx` (`device_printf`), or as [`kernel_log`] for
/// null.
pub(super) fn log_for(ctx: *mut c_void, args: fmt::Arguments<'_>) {
    let Some(ops) = ops() else {
        return;
    };
    let mut buf = [0u8; 256];
    let n = format_truncated(&mut buf, args);
    // SAFETY: log is set; buf[..n] is initialised and readable for the call;
    // ctx is a softc or null, as the header allows.
    unsafe { f(ops.log)(ctx, buf.as_ptr().cast::<c_char>(), n) }
}

/// The body of the kernel library's `#[panic_handler]`: formats the panic
/// message (truncated to 256 bytes) and ends in `panic(9)`:
///
/// ```ignore
/// #[panic_handler]
/// fn panic(info: &core::panic::PanicInfo<'_>) -> ! {
///     xbb_freebsd::kernel_panic(info)
/// }
/// ```
///
/// Without a loaded module (no ops table) it spins: there is nobody to tell.
pub fn kernel_panic(info: &core::panic::PanicInfo<'_>) -> ! {
    if let Some(ops) = ops() {
        let mut buf = [0u8; 256];
        let n = format_truncated(&mut buf, format_args!("{info}"));
        // SAFETY: panic is set; buf[..n] is readable for the call; a null
        // ctx is allowed.
        unsafe { f(ops.panic)(ptr::null_mut(), buf.as_ptr().cast::<c_char>(), n) }
    }
    loop {
        core::hint::spin_loop();
    }
}

// --- Strings for C -----------------------------------------------------------

/// A NUL-terminated copy of a `&str` for one shim call: on the stack when
/// short (every path the core builds is), else in `malloc(9)` memory taken
/// with `M_NOWAIT` (callers run in the instance's task). The size
/// difference is the point: no allocation for the usual case.
#[allow(clippy::large_enum_variant)]
enum CString {
    Stack {
        buf: [u8; CString::STACK],
        len: usize,
    },
    Heap {
        ptr: NonNull<u8>,
        size: usize,
    },
}

impl CString {
    const STACK: usize = 256;

    fn new(s: &str) -> Result<CString, c_int> {
        let bytes = s.as_bytes();
        if bytes.contains(&0) {
            return Err(errno::EINVAL);
        }
        if bytes.len() < Self::STACK {
            let mut buf = [0u8; Self::STACK];
            buf[..bytes.len()].copy_from_slice(bytes);
            return Ok(CString::Stack {
                buf,
                len: bytes.len(),
            });
        }
        let size = bytes.len().checked_add(1).ok_or(errno::ENAMETOOLONG)?;
        let layout = Layout::from_size_align(size, 1).map_err(|_| errno::ENAMETOOLONG)?;
        let ptr = NonNull::new(kernel_alloc_flags(layout, ffi::XBB_SHIM_M_NOWAIT))
            .ok_or(errno::ENOMEM)?;
        // SAFETY: ptr is a fresh block of size = len + 1 bytes; bytes does
        // not overlap it.
        unsafe {
            ptr::copy_nonoverlapping(bytes.as_ptr(), ptr.as_ptr(), bytes.len());
            ptr.as_ptr().add(bytes.len()).write(0);
        }
        Ok(CString::Heap { ptr, size })
    }

    fn as_ptr(&self) -> *const c_char {
        match self {
            CString::Stack { buf, len } => {
                debug_assert!(*len < Self::STACK);
                buf.as_ptr().cast()
            }
            CString::Heap { ptr, .. } => ptr.as_ptr().cast_const().cast(),
        }
    }
}

impl Drop for CString {
    fn drop(&mut self) {
        if let CString::Heap { ptr, size } = *self {
            // Layout::from_size_align(size, 1) succeeded in `new`.
            if let Ok(layout) = Layout::from_size_align(size, 1) {
                // SAFETY: allocated in `new` with exactly this layout, freed
                // once here.
                unsafe { kernel_dealloc(ptr.as_ptr(), layout) }
            }
        }
    }
}

// --- The platform ------------------------------------------------------------

/// The core's control platform on FreeBSD: one per instance, calling the
/// shim with the instance's softc, and lending the queues to their tasks
/// through the instance's [`QueueCell`]s.
#[derive(Debug)]
pub struct KernelHost {
    ctx: *mut c_void,
    ops: &'static ffi::xbb_shim_ops,
    cells: &'static [QueueCell],
    /// The back-end directory (as `xbb_rs_attach` got it).
    be_path: String,
    /// The toolstack removed the back-end directory: every write fails
    /// with [`XsError::NotFound`] without reaching XenStore.
    removed: bool,
}

// Layout facts that let `store_submit` hand the core's iovec array to C
// without copying it (`struct xbb_shim_iovec` is two size_t).
const _: () = {
    assert!(core::mem::size_of::<IoVec>() == core::mem::size_of::<ffi::xbb_shim_iovec>());
    assert!(core::mem::align_of::<IoVec>() == core::mem::align_of::<ffi::xbb_shim_iovec>());
    assert!(
        core::mem::offset_of!(IoVec, window_offset)
            == core::mem::offset_of!(ffi::xbb_shim_iovec, window_offset)
    );
    assert!(core::mem::offset_of!(IoVec, len) == core::mem::offset_of!(ffi::xbb_shim_iovec, len));
};

impl KernelHost {
    /// The platform for the softc `ctx`, over the installed table, lending
    /// queue `q` through `cells[q]`.
    pub(super) fn new(
        ctx: *mut c_void,
        cells: &'static [QueueCell],
        be_path: &str,
    ) -> Option<KernelHost> {
        Some(KernelHost {
            ctx,
            ops: ops()?,
            cells,
            be_path: String::from(be_path),
            removed: false,
        })
    }

    /// Creates the instance's devstat(9) entries (attach thread).
    pub(super) fn stat_attach(&mut self) -> Result<(), Error> {
        // SAFETY: stat_attach is set; plain values only.
        match unsafe { f(self.ops.stat_attach)(self.ctx) } {
            0 => Ok(()),
            _ => Err(Error::NoMemory),
        }
    }

    /// Removes the instance's devstat(9) entries (detach finished).
    pub(super) fn stat_detach(&mut self) {
        // SAFETY: stat_detach is set; plain values only.
        unsafe { f(self.ops.stat_detach)(self.ctx) }
    }

    /// Whether the toolstack removed the back-end directory (seen by
    /// [`KernelHost::check_removed`]).
    pub(super) fn removed(&self) -> bool {
        self.removed
    }

    /// Looks whether the toolstack removed the back-end directory and, if
    /// so, stops every write into it from now on (as xbb-serve does): the
    /// instance is about to be detached, and a write would either make
    /// the directory again (xenstored creates missing parents) or be
    /// refused (`EACCES` in a driver domain), only to be logged. Returns
    /// whether it is removed.
    pub(super) fn check_removed(&mut self) -> bool {
        if !self.removed {
            let dir = core::mem::take(&mut self.be_path);
            self.removed = xbb::connect::backend_removed(self, &dir);
            self.be_path = dir;
        }
        self.removed
    }

    /// The queues' cells.
    pub(super) fn cells(&self) -> &'static [QueueCell] {
        self.cells
    }

    /// The softc.
    pub(super) fn ctx(&self) -> *mut c_void {
        self.ctx
    }

    fn medium(&self) -> MediumInfo {
        let mut m = NO_MEDIUM;
        // SAFETY: store_info is set; m is a valid, writable struct for the
        // duration of the call.
        unsafe { f(self.ops.store_info)(self.ctx, &mut m) };
        medium_from(&m)
    }
}

/// A medium description for the shim to fill in.
const NO_MEDIUM: ffi::xbb_shim_medium = ffi::xbb_shim_medium {
    sectors: 0,
    sector_size: 0,
    physical_sector_size: 0,
    discard_granularity: 0,
    discard_alignment: 0,
    flags: 0,
    _pad: 0,
};

fn medium_from(m: &ffi::xbb_shim_medium) -> MediumInfo {
    let has = |bit: u32| m.flags & bit != 0;
    MediumInfo {
        sectors: Sectors(m.sectors),
        sector_size: m.sector_size,
        physical_sector_size: m.physical_sector_size,
        read_only: has(ffi::XBB_SHIM_MEDIUM_READ_ONLY),
        can_flush: has(ffi::XBB_SHIM_MEDIUM_CAN_FLUSH),
        can_discard: has(ffi::XBB_SHIM_MEDIUM_CAN_DISCARD),
        can_secure_discard: has(ffi::XBB_SHIM_MEDIUM_SECURE_DISCARD),
        discard_granularity: m.discard_granularity,
        discard_alignment: m.discard_alignment,
        is_device: has(ffi::XBB_SHIM_MEDIUM_IS_DEVICE),
    }
}

/// The queue argument of the probes fired from the control context.
const CONTROL: u32 = u32::MAX;

/// The header's `XBB_SHIM_KIND_*` of a kind.
fn kind_code(kind: IoKind) -> u32 {
    match kind {
        IoKind::Read => ffi::XBB_SHIM_KIND_READ,
        IoKind::Write => ffi::XBB_SHIM_KIND_WRITE,
        IoKind::Flush => ffi::XBB_SHIM_KIND_FLUSH,
        IoKind::Discard => ffi::XBB_SHIM_KIND_DISCARD,
    }
}

/// The grant batch size of the header, as a `usize`.
const BATCH: usize = ffi::XBB_SHIM_GRANT_BATCH as usize;

impl XenStore for KernelHost {
    fn xs_read(&mut self, txn: XsTxn, path: &str, buf: &mut [u8]) -> Result<usize, XsError> {
        let p = CString::new(path).map_err(errno::xs_error)?;
        let mut len = 0usize;
        // SAFETY: xs_read is set; p is NUL-terminated and lives across the
        // call; buf is writable for buf.len() bytes; len is writable.
        let e = unsafe {
            f(self.ops.xs_read)(
                self.ctx,
                txn.0,
                p.as_ptr(),
                buf.as_mut_ptr().cast(),
                buf.len(),
                &mut len,
            )
        };
        if e != 0 {
            return Err(errno::xs_error(e));
        }
        if len > buf.len() {
            // The shim broke its contract; never trust the length.
            return Err(XsError::TooLong);
        }
        Ok(len)
    }

    // Every write of the instance comes here: once the back-end directory
    // is gone, none reaches XenStore. A refused write is the first sign of
    // a removal the local-end watch has not reported yet.
    fn xs_write(&mut self, txn: XsTxn, path: &str, value: &str) -> Result<(), XsError> {
        if self.removed {
            return Err(XsError::NotFound);
        }
        let p = CString::new(path).map_err(errno::xs_error)?;
        let v = CString::new(value).map_err(errno::xs_error)?;
        // SAFETY: xs_write is set; both strings are NUL-terminated and live
        // across the call.
        let e = unsafe { f(self.ops.xs_write)(self.ctx, txn.0, p.as_ptr(), v.as_ptr()) };
        match errno::xs_error(e) {
            _ if e == 0 => Ok(()),
            XsError::Denied | XsError::NotFound if self.check_removed() => Err(XsError::NotFound),
            err => Err(err),
        }
    }

    fn xs_remove(&mut self, txn: XsTxn, path: &str) -> Result<(), XsError> {
        let p = CString::new(path).map_err(errno::xs_error)?;
        // SAFETY: xs_remove is set; p is NUL-terminated and lives across the
        // call.
        let e = unsafe { f(self.ops.xs_remove)(self.ctx, txn.0, p.as_ptr()) };
        match e {
            0 | errno::ENOENT => Ok(()),
            e => Err(errno::xs_error(e)),
        }
    }

    fn xs_transaction_start(&mut self) -> Result<XsTxn, XsError> {
        let mut id = 0u32;
        // SAFETY: xs_transaction_start is set; id is writable.
        let e = unsafe { f(self.ops.xs_transaction_start)(self.ctx, &mut id) };
        if e != 0 {
            return Err(errno::xs_error(e));
        }
        if id == XsTxn::NONE.0 {
            return Err(XsError::Other(errno::EIO));
        }
        Ok(XsTxn(id))
    }

    fn xs_transaction_end(&mut self, txn: XsTxn, commit: bool) -> Result<(), XsError> {
        // SAFETY: xs_transaction_end is set; plain values only.
        let e = unsafe { f(self.ops.xs_transaction_end)(self.ctx, txn.0, c_int::from(commit)) };
        if e == 0 {
            Ok(())
        } else {
            Err(errno::xs_error(e))
        }
    }
}

/// One queue's platform on FreeBSD: the shim's ops for the queue's task.
#[derive(Debug)]
pub struct KernelQueueHost<'a> {
    ctx: *mut c_void,
    ops: &'static ffi::xbb_shim_ops,
    queue: QueueId,
    gate: &'a Gate,
}

impl QueueHost for KernelQueueHost<'_> {
    fn map_batch(&mut self, dom: DomId, ops: &[GrantMapOp], results: &mut [MapResult]) {
        let empty = ffi::xbb_shim_map {
            gref: 0,
            window_page: 0,
            readonly: 0,
            status: errno::GNTST_GENERAL_ERROR,
            handle: 0,
            _pad: 0,
        };
        for (chunk, out) in ops.chunks(BATCH).zip(results.chunks_mut(BATCH)) {
            let mut batch = [empty; BATCH];
            for (b, op) in batch.iter_mut().zip(chunk) {
                *b = ffi::xbb_shim_map {
                    gref: op.gref,
                    window_page: op.window_page.0,
                    readonly: u32::from(op.readonly),
                    ..empty
                };
            }
            // SAFETY: map_grants is set; batch holds chunk.len() <=
            // XBB_SHIM_GRANT_BATCH initialised, writable entries for the
            // duration of the call.
            unsafe {
                f(self.ops.map_grants)(self.ctx, dom, batch.as_mut_ptr(), chunk.len() as u32)
            };
            for (r, b) in out.iter_mut().zip(&batch[..chunk.len()]) {
                *r = errno::grant_status(b.status).map(|()| GrantHandle(b.handle));
            }
        }
    }

    fn unmap_batch(&mut self, ops: &[GrantUnmapOp]) {
        let empty = ffi::xbb_shim_unmap {
            window_page: 0,
            handle: 0,
        };
        for chunk in ops.chunks(BATCH) {
            let mut batch = [empty; BATCH];
            for (b, op) in batch.iter_mut().zip(chunk) {
                *b = ffi::xbb_shim_unmap {
                    window_page: op.window_page.0,
                    handle: op.handle.0,
                };
            }
            // SAFETY: unmap_grants is set; batch holds chunk.len() <=
            // XBB_SHIM_GRANT_BATCH initialised entries.
            unsafe { f(self.ops.unmap_grants)(self.ctx, batch.as_ptr(), chunk.len() as u32) };
        }
    }

    fn copy_in(&mut self, from: Granted<'_>, out: &mut [u8]) -> Result<(), GrantError> {
        let Granted { dom, grefs } = from;
        let count = u32::try_from(grefs.len()).map_err(|_| GrantError::General)?;
        if grefs
            .len()
            .checked_mul(PAGE_SIZE)
            .is_none_or(|max| out.len() > max)
        {
            return Err(GrantError::General);
        }
        // SAFETY: copy_in is set; grefs is readable for count entries and
        // out writable for out.len() <= count * PAGE_SIZE bytes.
        let s = unsafe {
            f(self.ops.copy_in)(
                self.ctx,
                dom,
                grefs.as_ptr(),
                count,
                out.as_mut_ptr().cast(),
                out.len(),
            )
        };
        errno::grant_status(s)
    }

    fn evtchn_notify(&mut self, queue: QueueId) {
        // SAFETY: evtchn_notify is set; plain values only.
        unsafe { f(self.ops.evtchn_notify)(self.ctx, queue) }
    }

    fn evtchn_eoi(&mut self, queue: QueueId, delay_ms: u32) {
        // SAFETY: evtchn_eoi is set; plain values only.
        unsafe { f(self.ops.evtchn_eoi)(self.ctx, queue, delay_ms) }
    }

    fn schedule_run(&mut self, queue: QueueId) {
        if queue == self.queue && self.gate.post(Work::RUN) == Post::Wake {
            // SAFETY: queue_kick is set; plain values only.
            unsafe { f(self.ops.queue_kick)(self.ctx, queue) }
        }
    }

    fn now_ms(&self) -> u64 {
        // SAFETY: now_ms is set.
        unsafe { f(self.ops.now_ms)(self.ctx) }
    }

    // devstat(9) and the SDT probes are always there to feed.
    fn observes(&self) -> bool {
        true
    }

    // devstat(9) and the SDT probes: each Event is at most one stat call
    // and one probe, with plain values (no allocation, no sleeping).
    fn note(&mut self, ev: Event) {
        let mut start = None;
        let mut end = None;
        let mut fire = None;
        match ev {
            Event::RequestStart {
                id,
                kind,
                sector,
                bytes,
            } => {
                start = Some(ffi::XBB_SHIM_VIEW_GUEST);
                let k = kind_code(kind).into();
                fire = Some((ffi::XBB_SHIM_PROBE_REQUEST_START, [id, k, sector, bytes]));
            }
            Event::RequestDone {
                id,
                kind,
                bytes,
                status,
            } => {
                let k = kind_code(kind);
                let error = c_int::from(status != xbb::abi::BLKIF_RSP_OKAY);
                end = Some((ffi::XBB_SHIM_VIEW_GUEST, k, bytes, error));
                let st = i64::from(status) as u64;
                fire = Some((ffi::XBB_SHIM_PROBE_REQUEST_DONE, [id, k.into(), bytes, st]));
            }
            Event::RequestRefused {
                id,
                operation,
                status,
            } => {
                let st = i64::from(status) as u64;
                let args = [id, operation.into(), st, 0];
                fire = Some((ffi::XBB_SHIM_PROBE_REQUEST_REFUSED, args));
            }
            Event::Dispatch {
                kind,
                sector,
                bytes,
            } => {
                let args = [kind_code(kind).into(), sector, bytes, 0];
                fire = Some((ffi::XBB_SHIM_PROBE_DISPATCH, args));
            }
            Event::IoStart { .. } => start = Some(ffi::XBB_SHIM_VIEW_STORE),
            Event::IoDone {
                kind,
                bytes,
                result,
            } => {
                let k = kind_code(kind);
                let e = errno::io_errno(result);
                end = Some((ffi::XBB_SHIM_VIEW_STORE, k, bytes, e));
                if e != 0 {
                    let args = [k.into(), bytes, i64::from(e) as u64, 0];
                    fire = Some((ffi::XBB_SHIM_PROBE_IO_ERROR, args));
                }
            }
        }
        if let Some(view) = start {
            // SAFETY: stat_start is set; plain values only; it neither
            // sleeps nor allocates.
            unsafe { f(self.ops.stat_start)(self.ctx, view) }
        }
        if let Some((view, kind, bytes, error)) = end {
            // SAFETY: stat_end is set; plain values only; it neither
            // sleeps nor allocates.
            unsafe { f(self.ops.stat_end)(self.ctx, view, kind, bytes, error) }
        }
        if let Some((n, [a0, a1, a2, a3])) = fire {
            // SAFETY: probe is set; plain values only; it neither sleeps
            // nor allocates.
            unsafe { f(self.ops.probe)(self.ctx, n, self.queue, a0, a1, a2, a3) }
        }
    }

    fn store_submit(&mut self, tag: IoTag, op: IoOp<'_>) -> Result<(), IoError> {
        let (code, flags, offset, length, iov): (u32, u32, u64, u64, &[IoVec]) = match op {
            IoOp::Read { offset, iov } => {
                (ffi::XBB_SHIM_IO_READ, 0, offset.0, iov_bytes(iov)?, iov)
            }
            IoOp::Write { offset, iov } => {
                (ffi::XBB_SHIM_IO_WRITE, 0, offset.0, iov_bytes(iov)?, iov)
            }
            IoOp::Flush => (ffi::XBB_SHIM_IO_FLUSH, 0, 0, 0, &[]),
            IoOp::Discard {
                offset,
                len,
                secure,
            } => (
                ffi::XBB_SHIM_IO_DISCARD,
                if secure { ffi::XBB_SHIM_IO_SECURE } else { 0 },
                offset.0,
                len.0,
                &[],
            ),
        };
        let io = ffi::xbb_shim_io {
            op: code,
            flags,
            offset,
            length,
            // IoVec has xbb_shim_iovec's layout (asserted above).
            iov: iov.as_ptr().cast::<ffi::xbb_shim_iovec>(),
            iovcnt: u32::try_from(iov.len()).map_err(|_| IoError::Io)?,
            _pad: 0,
        };
        // SAFETY: store_submit is set; io and the iovec array it points to
        // are valid for reads during the call (the header says C copies
        // what it keeps).
        let e = unsafe { f(self.ops.store_submit)(self.ctx, self.queue, tag.0, &io) };
        errno::io_result(e)
    }
}

impl Host for KernelHost {
    fn window_reserve(&mut self, pages: u32) -> Result<(), GrantError> {
        // SAFETY: window_reserve is set; plain values only.
        let e = unsafe { f(self.ops.window_reserve)(self.ctx, pages) };
        errno::grant_status(e)
    }

    fn window_release(&mut self) {
        // SAFETY: window_release is set.
        unsafe { f(self.ops.window_release)(self.ctx) }
    }

    fn map_ring(&mut self, queue: QueueId, ring: Granted<'_>) -> Result<SharedMem, GrantError> {
        let Granted { dom, grefs } = ring;
        if queue >= ffi::XBB_SHIM_MAX_QUEUES || grefs.is_empty() {
            return Err(GrantError::General);
        }
        let count = u32::try_from(grefs.len()).map_err(|_| GrantError::General)?;
        let want = grefs
            .len()
            .checked_mul(PAGE_SIZE)
            .ok_or(GrantError::General)?;
        let mut va: *mut c_void = ptr::null_mut();
        let mut len = 0usize;
        // SAFETY: ring_map is set; grefs is readable for count entries; va
        // and len are writable.
        let s = unsafe {
            f(self.ops.ring_map)(
                self.ctx,
                queue,
                dom,
                grefs.as_ptr(),
                count,
                &mut va,
                &mut len,
            )
        };
        errno::grant_status(s)?;
        let base = NonNull::new(va.cast::<u8>());
        match base {
            Some(base) if len == want && base.as_ptr() as usize % PAGE_SIZE == 0 => {
                // SAFETY: ring_map's contract: `len` bytes at `va`, page
                // aligned (checked), mapped writable until ring_unmap(queue),
                // which only `unmap_ring` calls, consuming this value.
                Ok(unsafe { SharedMem::new(base, len) })
            }
            _ => {
                // A mapping of the wrong shape: hand it back, refuse it.
                if !va.is_null() {
                    // SAFETY: ring_unmap is set; va/len are what ring_map
                    // returned for this queue.
                    unsafe { f(self.ops.ring_unmap)(self.ctx, queue, va, len) };
                }
                Err(GrantError::General)
            }
        }
    }

    fn unmap_ring(&mut self, queue: QueueId, ring: SharedMem) {
        // SAFETY: ring_unmap is set; the pointer and length are those
        // ring_map returned for this queue (SharedMem came from map_ring).
        unsafe {
            f(self.ops.ring_unmap)(self.ctx, queue, ring.as_ptr().cast::<c_void>(), ring.len())
        }
    }

    fn evtchn_bind(&mut self, queue: QueueId, remote: RemotePort) -> Result<(), EvtchnError> {
        let (dom, remote_port) = (remote.dom, remote.port);
        if queue >= ffi::XBB_SHIM_MAX_QUEUES {
            return Err(EvtchnError::General);
        }
        // SAFETY: evtchn_bind is set; plain values only.
        let e = unsafe { f(self.ops.evtchn_bind)(self.ctx, queue, dom, remote_port) };
        if e == 0 {
            Ok(())
        } else {
            Err(errno::evtchn_error(e))
        }
    }

    fn evtchn_unbind(&mut self, queue: QueueId) {
        // SAFETY: evtchn_unbind is set; plain values only.
        unsafe { f(self.ops.evtchn_unbind)(self.ctx, queue) }
    }

    fn store_open(&mut self, params: OpenParams<'_>) -> Result<MediumInfo, OpenError> {
        let path = CString::new(params.path).map_err(errno::open_error)?;
        let kind = CString::new(params.kind).map_err(errno::open_error)?;
        let mut m = NO_MEDIUM;
        // SAFETY: store_open is set; both strings are NUL-terminated and
        // live across the call; m is writable.
        let e = unsafe {
            f(self.ops.store_open)(
                self.ctx,
                path.as_ptr(),
                kind.as_ptr(),
                c_int::from(params.writable),
                &mut m,
            )
        };
        if e != 0 {
            return Err(errno::open_error(e));
        }
        let info = medium_from(&m);
        // What the core relies on (src/host.rs MediumInfo).
        let sane = info.sector_size >= 512
            && info.sector_size.is_power_of_two()
            && info.physical_sector_size >= info.sector_size
            && info.physical_sector_size % info.sector_size == 0;
        if !sane {
            self.store_close();
            return Err(OpenError::Invalid);
        }
        Ok(info)
    }

    fn store_info(&self) -> MediumInfo {
        self.medium()
    }

    fn store_close(&mut self) {
        // SAFETY: store_close is set.
        unsafe { f(self.ops.store_close)(self.ctx) }
    }

    fn root_mounted(&self) -> bool {
        // SAFETY: root_mounted is set.
        unsafe { f(self.ops.root_mounted)(self.ctx) != 0 }
    }

    fn note_connection(&mut self, ev: ConnEvent) {
        let (p, a0) = match ev {
            ConnEvent::Connected { queues } => (ffi::XBB_SHIM_PROBE_CONNECT, u64::from(queues)),
            ConnEvent::Disconnected => (ffi::XBB_SHIM_PROBE_DISCONNECT, 0),
            ConnEvent::Failed { errno } => {
                (ffi::XBB_SHIM_PROBE_CONNECT_ERROR, i64::from(errno) as u64)
            }
        };
        // SAFETY: probe is set; plain values only.
        unsafe { f(self.ops.probe)(self.ctx, p, CONTROL, a0, 0, 0, 0) }
    }

    // xbb.ko opens `params` itself; the shim forwards the back-end
    // directory's watch (`xbb_rs_localend_changed`).
    fn waits_for_hotplug(&self) -> bool {
        true
    }

    fn lend(&mut self, queue: Queue) -> Result<(), Queue> {
        match self.cells.get(queue.id() as usize) {
            Some(cell) => cell.lend(queue),
            None => Err(queue),
        }
    }

    fn recall(&mut self, queue: QueueId) {
        if let Some(cell) = self.cells.get(queue as usize) {
            cell.recall();
        }
    }
}

/// Where one queue of an instance lives while its task serves it: the
/// queue's hand-off [`Gate`], the queue itself, and what the task reports
/// to the control part. One per possible queue, allocated at attach and
/// freed with the instance.
///
/// The gate decides who owns `queue`: the control part (the
/// instance's lock held) while the queue is home ([`Gate::is_home`]), the
/// queue's task during a pass ([`Gate::begin`] to [`Gate::end`] or
/// [`Gate::give_back`]). The loom model of `tests/loom.rs` checks that the
/// two never overlap and that the release/acquire pairs of the gate make
/// each owner's writes visible to the next.
#[derive(Debug)]
pub struct QueueCell {
    gate: Gate,
    ctx: *mut c_void,
    ops: &'static ffi::xbb_shim_ops,
    id: QueueId,
    /// The lent queue; owned as the gate says.
    queue: UnsafeCell<Option<Queue>>,
    /// An outcome that ends the connection, for the control part:
    /// [`OUTCOME_NONE`] or an [`Outcome`] code.
    failed: AtomicU8,
}

// SAFETY: the cell is shared by the control part and the queue's task;
// `queue` is only touched by the owner the gate names (see
// the type's documentation), everything else is atomic or read-only, and
// the softc pointer is only passed back to the shim, which serialises
// nothing on it that the header does not allow from both contexts.
unsafe impl Sync for QueueCell {}
// SAFETY: as for Sync; the cell is created in one thread and used in others.
unsafe impl Send for QueueCell {}

const OUTCOME_NONE: u8 = 0;

fn outcome_code(o: Outcome) -> u8 {
    match o {
        Outcome::Served => OUTCOME_NONE,
        Outcome::RingBroken => 1,
        Outcome::StoreGone => 2,
    }
}

fn outcome_of(code: u8) -> Option<Outcome> {
    match code {
        1 => Some(Outcome::RingBroken),
        2 => Some(Outcome::StoreGone),
        _ => None,
    }
}

impl QueueCell {
    /// The cell of queue `id` of the instance whose softc is `ctx`, home.
    pub(super) fn new(ctx: *mut c_void, ops: &'static ffi::xbb_shim_ops, id: QueueId) -> Self {
        QueueCell {
            gate: Gate::new(),
            ctx,
            ops,
            id,
            queue: UnsafeCell::new(None),
            failed: AtomicU8::new(OUTCOME_NONE),
        }
    }

    fn kick(&self) {
        // SAFETY: queue_kick is set; plain values only.
        unsafe { f(self.ops.queue_kick)(self.ctx, self.id) }
    }

    /// Control: lends `queue` to the task (the cell must be home and
    /// empty), and enqueues its first pass.
    // A queue moves once per connection each way: its size is no cost.
    #[allow(clippy::result_large_err)]
    fn lend(&self, queue: Queue) -> Result<(), Queue> {
        if !self.gate.is_home() {
            return Err(queue);
        }
        // SAFETY: home: the control part (our caller, with the instance's
        // lock) owns the cell's contents until gate.lend() below.
        unsafe {
            if (*self.queue.get()).is_some() {
                return Err(queue);
            }
            *self.queue.get() = Some(queue);
        }
        self.failed.store(OUTCOME_NONE, Ordering::Relaxed);
        if !self.gate.lend() {
            // Unreachable (checked home above, and only the control part
            // lends): take the queue back.
            // SAFETY: still home; owned by the control part.
            return match unsafe { (*self.queue.get()).take() } {
                Some(q) => Err(q),
                None => Ok(()),
            };
        }
        self.kick();
        Ok(())
    }

    /// Control: asks the task for the queue back.
    fn recall(&self) {
        if self.gate.post(Work::RECALL) == Post::Wake {
            self.kick();
        }
    }

    /// Control: the queue, once its task gave it back.
    pub(super) fn take_home(&self) -> Option<Queue> {
        if !self.gate.is_home() {
            return None;
        }
        // SAFETY: home: the control part owns the contents (is_home's
        // acquire pairs with the task's release in give_back).
        unsafe { (*self.queue.get()).take() }
    }

    /// Control: an outcome the task reported, once.
    pub(super) fn take_failure(&self) -> Option<Outcome> {
        outcome_of(self.failed.swap(OUTCOME_NONE, Ordering::AcqRel))
    }

    /// The queue's task: one pass while the queue is lent (nothing while it
    /// is home or another pass runs). `event`: the filter saw an event on
    /// the queue's channel.
    pub(super) fn run_task(&self, event: bool) {
        if event {
            // Noted even while home: the next lend's first pass sees it,
            // and EOIs the channel.
            let _ = self.gate.post(Work::EVENT);
        }
        let Some(work) = self.gate.begin() else {
            return;
        };
        // SAFETY: between begin() and end()/give_back() the task owns the
        // contents (begin's acquire pairs with lend's release).
        let slot = unsafe { &mut *self.queue.get() };
        let Some(queue) = slot.as_mut() else {
            // Lent without a queue cannot happen; end the pass.
            self.gate.end();
            return;
        };
        let mut host = KernelQueueHost {
            ctx: self.ctx,
            ops: self.ops,
            queue: self.id,
            gate: &self.gate,
        };
        // The queue's finished I/Os, taken off its list one by one.
        let (ctx, id, io_done) = (self.ctx, self.id, f(self.ops.io_done));
        let completions = core::iter::from_fn(|| {
            let (mut tag, mut error) = (0u32, 0 as c_int);
            // SAFETY: io_done is set; tag and error are writable.
            let taken = unsafe { io_done(ctx, id, &mut tag, &mut error) } != 0;
            taken.then(|| (IoTag(tag), errno::io_result(error)))
        });
        let end = queue.pass(&mut host, work, completions);
        if let Some(outcome) = end.failed {
            self.failed.store(outcome_code(outcome), Ordering::Release);
            self.control_kick();
        }
        if end.home {
            self.gate.give_back();
            self.control_kick();
            return;
        }
        if self.gate.end() {
            // Work came during the pass: run again, after the other tasks
            // of the system had their turn.
            self.kick();
        }
    }

    fn control_kick(&self) {
        // SAFETY: control_kick is set; plain values only.
        unsafe { f(self.ops.control_kick)(self.ctx) }
    }
}

fn iov_bytes(iov: &[IoVec]) -> Result<u64, IoError> {
    iov.iter()
        .try_fold(0u64, |n, v| n.checked_add(v.len as u64))
        .ok_or(IoError::Io)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn truncating_writer_keeps_a_prefix() {
        let mut buf = [0u8; 8];
        let n = format_truncated(&mut buf, format_args!("abc{}def{}", 1, "xyz"));
        assert_eq!(&buf[..n], b"abc1defx");
        let mut small = [0u8; 0];
        assert_eq!(format_truncated(&mut small, format_args!("x")), 0);
    }

    #[test]
    fn c_strings_are_terminated_and_refuse_nul() {
        let s = CString::new("backend/vbd/1/51712").unwrap();
        // SAFETY: as_ptr points to a NUL-terminated buffer owned by s.
        let c = unsafe { core::ffi::CStr::from_ptr(s.as_ptr()) };
        assert_eq!(c.to_bytes(), b"backend/vbd/1/51712");
        assert!(matches!(CString::new("a\0b"), Err(errno::EINVAL)));
    }
}
