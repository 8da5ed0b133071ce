//! The `xbb_rs_*` entry points of `sys-glue/xbb_shim.h`: what the C shim
//! calls from its module event handler, newbus methods, XenBus watch,
//! control and queue tasks, and sysctl handlers.
//!
//! Each is a thin trampoline: check the pointers it was given, turn them
//! into a `&mut` [`Instance`] and its [`KernelHost`] (control entry points,
//! the instance's lock held) or a `&` [`QueueCell`] (a queue's task), call
//! one method of the core, and turn the outcome into an errno with
//! [`errno::result_to_errno`]. Instances and their queue cells live in
//! `malloc(9)` memory taken with `M_WAITOK` in the attach thread and are
//! handed to C as opaque `struct xbb_rs_instance *` and `struct
//! xbb_rs_queue *`; the cells are a separate block, so a queue's task
//! never touches memory the control part holds `&mut`.

#![allow(unsafe_code)]

use core::alloc::Layout;
use core::ffi::{c_char, c_int, c_void, CStr};
use core::ptr::{self, NonNull};
use core::sync::atomic::{AtomicUsize, Ordering};

use crate::errno::{self, Error};
use crate::ffi;
use crate::kernel::{self, KernelHost, QueueCell};
use crate::tables;
use xbb::connect::ConnectError;
use xbb::host::QueueId;
use xbb::instance::Instance;
use xbb::stats::{SysctlKind, Tunables, SYSCTLS, TUNABLES};

/// Instances attached and not yet freed; unload waits for 0.
static LIVE: AtomicUsize = AtomicUsize::new(0);

// The C side sizes its arrays with these.
const _: () = assert!(TUNABLES.len() <= ffi::XBB_SHIM_MAX_TUNABLES as usize);
const _: () = assert!(
    TUNABLES[xbb::stats::Tunable::MaxQueues as usize].max <= ffi::XBB_SHIM_MAX_QUEUES as u64
);

/// Queue cells per instance: one per possible queue.
const CELLS: usize = ffi::XBB_SHIM_MAX_QUEUES as usize;

/// What `struct xbb_rs_instance *` points to.
struct Slot {
    host: KernelHost,
    inst: Instance,
    /// The last connection error already logged.
    logged: Option<ConnectError>,
}

impl Slot {
    /// Takes back the queues that came home and acts on the failures the
    /// queues' tasks reported (the control task's work).
    fn control(&mut self) {
        for cell in self.host.cells() {
            if let Some(o) = cell.take_failure() {
                self.inst.queue_failed(&mut self.host, o);
            }
        }
        for cell in self.host.cells() {
            if let Some(q) = cell.take_home() {
                self.inst.give_back(&mut self.host, q);
            }
        }
    }

    /// A node of the back-end directory changed (`path` relative to it,
    /// `""` when the directory itself was removed): notes a removal, and
    /// hands a `hotplug-status` or `physical-device-path` change to the
    /// instance (it may be waiting for the hotplug script to connect).
    fn localend_changed(&mut self, path: &str) {
        match path {
            "" | "/state" => {
                self.host.check_removed();
            }
            "/hotplug-status" | "/physical-device-path" if !self.host.removed() => {
                self.inst.frontend_changed(&mut self.host);
            }
            _ => {}
        }
    }

    /// Logs a connection failure the first time it is seen; says nothing
    /// once the back-end directory is gone (the writes that failed were
    /// into a directory the toolstack removed, and the instance is about to
    /// be detached).
    fn note_error(&mut self) {
        let e = self.inst.last_error();
        if self.host.removed() {
            self.logged = e;
            return;
        }
        if e.is_some() && e != self.logged {
            self.logged = e;
            if let Some(e) = e {
                kernel::log_for(
                    self.host.ctx(),
                    format_args!("{}: {}", self.inst.backend_path(), e),
                );
            }
        }
    }
}

/// The instance behind a C handle, or `None` for null.
///
/// # Safety
/// `inst` is null or a handle from [`xbb_rs_attach`] not yet freed, and no
/// other call for it is running (the C side holds the instance's lock).
unsafe fn slot<'a>(inst: *mut ffi::xbb_rs_instance) -> Option<&'a mut Slot> {
    // SAFETY: by the contract above the pointer is null or a live,
    // exclusively used Slot written by xbb_rs_attach.
    unsafe { inst.cast::<Slot>().as_mut() }
}

/// Runs `f` on the instance, then logs a new connection error.
///
/// # Safety
/// As [`slot`].
unsafe fn with<R>(
    inst: *mut ffi::xbb_rs_instance,
    default: R,
    f: impl FnOnce(&mut Slot) -> R,
) -> R {
    // SAFETY: forwarded contract.
    match unsafe { slot(inst) } {
        Some(s) => {
            let r = f(s);
            s.note_error();
            r
        }
        None => default,
    }
}

/// The longest string argument accepted (XenStore's absolute path limit).
const MAX_C_STR: usize = 3072;

/// A C string argument as `&str`: scanned for its NUL at most
/// [`MAX_C_STR`] bytes far (and without `strlen`, which the kernel library
/// does not import).
///
/// # Safety
/// `p` is null or a NUL-terminated string valid for `'a`.
unsafe fn c_str<'a>(p: *const c_char) -> Result<&'a str, Error> {
    if p.is_null() {
        return Err(Error::Invalid);
    }
    let mut len = 0;
    // SAFETY: every byte up to and including the NUL is readable by the
    // contract, and the scan stops at the first NUL.
    while unsafe { p.add(len).read() } != 0 {
        len += 1;
        if len > MAX_C_STR {
            return Err(Error::Invalid);
        }
    }
    // SAFETY: the len bytes before the NUL are readable and live for 'a.
    let bytes = unsafe { core::slice::from_raw_parts(p.cast::<u8>(), len) };
    core::str::from_utf8(bytes).map_err(|_| Error::Invalid)
}

// --- Module ------------------------------------------------------------------

/// MOD_LOAD: installs the shim's ops table.
///
/// # Safety
/// `ops` is null or points to a complete `struct xbb_shim_ops` that stays
/// valid and unchanged until [`xbb_rs_unload`] has returned 0, and whose
/// functions behave as `sys-glue/xbb_shim.h` documents. Called before any
/// other entry point.
#[no_mangle]
pub unsafe extern "C" fn xbb_rs_load(ops: *const ffi::xbb_shim_ops) -> c_int {
    // SAFETY: forwarded contract.
    errno::result_to_errno(unsafe { kernel::install(ops) })
}

/// MOD_UNLOAD: forgets the ops table; `EBUSY` while instances exist.
///
/// # Safety
/// No other entry point runs concurrently.
#[no_mangle]
pub unsafe extern "C" fn xbb_rs_unload() -> c_int {
    if LIVE.load(Ordering::Acquire) != 0 {
        return Error::Busy.errno();
    }
    kernel::uninstall();
    0
}

// --- Tables ------------------------------------------------------------------

/// The count, name and description exports of one table, for the shim's
/// loops over it: `$count()` entries, and for entry `index` its leaf name
/// and description (NUL-terminated and static; null for a bad index).
macro_rules! table_exports {
    ($table:ident, $what:literal, $count:ident, $name:ident, $name_of:path, $descr:ident, $descr_of:path) => {
        #[doc = concat!("Number of ", $what, ".")]
        ///
        /// # Safety
        /// None: takes and returns plain values.
        #[no_mangle]
        pub unsafe extern "C" fn $count() -> u32 {
            $table.len() as u32
        }

        #[doc = concat!("Leaf name of entry `index` of the ", $what, ", NUL-terminated and static; null for a bad index.")]
        ///
        /// # Safety
        /// None: the result points to static memory.
        #[no_mangle]
        pub unsafe extern "C" fn $name(index: u32) -> *const c_char {
            $name_of(index as usize).map_or(ptr::null(), CStr::as_ptr)
        }

        #[doc = concat!("Description of entry `index` of the ", $what, ", NUL-terminated and static; null for a bad index.")]
        ///
        /// # Safety
        /// None: the result points to static memory.
        #[no_mangle]
        pub unsafe extern "C" fn $descr(index: u32) -> *const c_char {
            $descr_of(index as usize).map_or(ptr::null(), CStr::as_ptr)
        }
    };
}

table_exports!(
    TUNABLES,
    "loader tunables (`hw.xbb.<name>`)",
    xbb_rs_tunable_count,
    xbb_rs_tunable_name,
    tables::tunable_name,
    xbb_rs_tunable_descr,
    tables::tunable_descr
);

table_exports!(
    SYSCTLS,
    "per-instance sysctl nodes (`dev.xbb.N.<name>`)",
    xbb_rs_sysctl_count,
    xbb_rs_sysctl_name,
    tables::sysctl_name,
    xbb_rs_sysctl_descr,
    tables::sysctl_descr
);

/// Default of tunable `index` (0 for a bad index).
///
/// # Safety
/// None: takes and returns plain values.
#[no_mangle]
pub unsafe extern "C" fn xbb_rs_tunable_default(index: u32) -> u64 {
    TUNABLES.get(index as usize).map_or(0, |d| d.default)
}

/// Smallest accepted value of tunable `index` (0 for a bad index).
///
/// # Safety
/// None: takes and returns plain values.
#[no_mangle]
pub unsafe extern "C" fn xbb_rs_tunable_min(index: u32) -> u64 {
    TUNABLES.get(index as usize).map_or(0, |d| d.min)
}

/// Largest accepted value of tunable `index` (0 for a bad index).
///
/// # Safety
/// None: takes and returns plain values.
#[no_mangle]
pub unsafe extern "C" fn xbb_rs_tunable_max(index: u32) -> u64 {
    TUNABLES.get(index as usize).map_or(0, |d| d.max)
}

/// Whether `value` is acceptable for tunable `index`: 0, `ERANGE`, or
/// `ENOENT` for a bad index.
///
/// # Safety
/// None: takes and returns plain values.
#[no_mangle]
pub unsafe extern "C" fn xbb_rs_tunable_check(index: u32, value: u64) -> c_int {
    errno::result_to_errno(match TUNABLES.get(index as usize) {
        None => Err(Error::NotFound),
        Some(d) if value < d.min || value > d.max => Err(Error::Range),
        Some(_) => Ok(()),
    })
}

/// `XBB_SHIM_SYSCTL_*` kind of node `index` (0 for a bad index).
///
/// # Safety
/// None: takes and returns plain values.
#[no_mangle]
pub unsafe extern "C" fn xbb_rs_sysctl_kind(index: u32) -> u32 {
    SYSCTLS
        .get(index as usize)
        .map_or(0, |d| tables::kind_code(d.kind))
}

/// 1 when node `index` also exists per queue (`dev.xbb.N.queue.Q.<name>`).
///
/// # Safety
/// None: takes and returns plain values.
#[no_mangle]
pub unsafe extern "C" fn xbb_rs_sysctl_per_queue(index: u32) -> c_int {
    SYSCTLS
        .get(index as usize)
        .map_or(0, |d| c_int::from(d.per_queue()))
}

// --- Instance life cycle -----------------------------------------------------

/// newbus attach: creates the instance of back-end directory
/// `backend_path`, reads the toolstack's nodes, and (root mounted) opens
/// the store and publishes the offer.
///
/// # Safety
/// `backend_path` is a NUL-terminated string; `values` points to `count`
/// readable `u64`; `instp` is writable; `ctx` is the softc every ops call
/// for this instance will get. Runs in a thread that may sleep (the
/// instance memory is allocated with `M_WAITOK`).
#[no_mangle]
pub unsafe extern "C" fn xbb_rs_attach(
    ctx: *mut c_void,
    backend_path: *const c_char,
    values: *const u64,
    count: u32,
    instp: *mut *mut ffi::xbb_rs_instance,
) -> c_int {
    // SAFETY: forwarded contract.
    errno::result_to_errno(unsafe { attach(ctx, backend_path, values, count, instp) })
}

/// # Safety
/// As [`xbb_rs_attach`].
unsafe fn attach(
    ctx: *mut c_void,
    backend_path: *const c_char,
    values: *const u64,
    count: u32,
    instp: *mut *mut ffi::xbb_rs_instance,
) -> Result<(), Error> {
    let ops = kernel::ops().ok_or(Error::NotLoaded)?;
    if instp.is_null() || values.is_null() || count as usize != TUNABLES.len() {
        return Err(Error::Invalid);
    }
    // SAFETY: NUL-terminated by the contract; only used during this call.
    let path = unsafe { c_str(backend_path) }?;
    if path.is_empty() {
        return Err(Error::Invalid);
    }
    // SAFETY: values is non-null and readable for count u64 by the
    // contract.
    let values = unsafe { core::slice::from_raw_parts(values, count as usize) };
    let mut tunables = Tunables::default();
    for (d, &v) in TUNABLES.iter().zip(values) {
        tunables.set(d.tunable, v).map_err(|_| Error::Invalid)?;
    }
    let inst = Instance::new(path, &tunables).map_err(|_| Error::NoMemory)?;
    let cells_layout = Layout::array::<QueueCell>(CELLS).map_err(|_| Error::NoMemory)?;
    let cells = NonNull::new(kernel::kernel_alloc_flags(
        cells_layout,
        ffi::XBB_SHIM_M_WAITOK,
    ))
    .ok_or(Error::NoMemory)?
    .cast::<QueueCell>();
    for q in 0..CELLS {
        // SAFETY: q < CELLS: inside the fresh block, aligned for QueueCell.
        unsafe {
            cells
                .as_ptr()
                .add(q)
                .write(QueueCell::new(ctx, ops, q as QueueId))
        };
    }
    // SAFETY: CELLS initialised cells; the block lives until xbb_rs_free,
    // after every task that could use it was drained, so no reference
    // outlives it in practice ('static stands for "until free").
    let cell_slice: &'static [QueueCell] =
        unsafe { core::slice::from_raw_parts(cells.as_ptr(), CELLS) };
    let Some(mut host) = KernelHost::new(ctx, cell_slice, path) else {
        // SAFETY: the cells were written above and nothing refers to them.
        unsafe { free_cells(cells) };
        return Err(Error::NotLoaded);
    };
    // The devstat(9) entries live as long as the instance (xbb_rs_free).
    if let Err(e) = host.stat_attach() {
        // SAFETY: as above.
        unsafe { free_cells(cells) };
        return Err(e);
    }
    let layout = Layout::new::<Slot>();
    let Some(mem) = NonNull::new(kernel::kernel_alloc_flags(layout, ffi::XBB_SHIM_M_WAITOK)) else {
        host.stat_detach();
        // SAFETY: the cells were written above and nothing refers to them.
        unsafe { free_cells(cells) };
        return Err(Error::NoMemory);
    };
    let mem = mem.cast::<Slot>();
    // SAFETY: mem is a fresh block with Slot's size and alignment.
    unsafe {
        mem.as_ptr().write(Slot {
            host,
            inst,
            logged: None,
        })
    };
    LIVE.fetch_add(1, Ordering::AcqRel);
    // SAFETY: just initialised; nobody else knows the pointer yet.
    let s = unsafe { &mut *mem.as_ptr() };
    s.inst.attach(&mut s.host);
    s.note_error();
    // SAFETY: instp is non-null and writable by the contract.
    unsafe { instp.write(mem.as_ptr().cast()) };
    Ok(())
}

/// Drops and frees an instance's queue cells.
///
/// # Safety
/// `cells` is the block of [`CELLS`] cells `attach` allocated, initialised,
/// and nobody uses it any more (the queue tasks are drained).
unsafe fn free_cells(cells: NonNull<QueueCell>) {
    for q in 0..CELLS {
        // SAFETY: initialised, dropped once.
        unsafe { ptr::drop_in_place(cells.as_ptr().add(q)) };
    }
    if let Ok(layout) = Layout::array::<QueueCell>(CELLS) {
        // SAFETY: allocated in attach with this layout, freed once.
        unsafe { kernel::kernel_dealloc(cells.as_ptr().cast(), layout) };
    }
}

/// The handle of queue `queue`'s cell, for its task; null for a bad index
/// or handle.
///
/// # Safety
/// `inst` is null or a live handle, used by no other call meanwhile.
#[no_mangle]
pub unsafe extern "C" fn xbb_rs_queue(
    inst: *mut ffi::xbb_rs_instance,
    queue: u32,
) -> *mut ffi::xbb_rs_queue {
    // SAFETY: forwarded contract.
    unsafe {
        with(inst, ptr::null_mut(), |s| {
            s.host
                .cells()
                .get(queue as usize)
                .map_or(ptr::null_mut(), |c| {
                    ptr::from_ref(c).cast_mut().cast::<ffi::xbb_rs_queue>()
                })
        })
    }
}

/// A queue's task: one pass of the queue while it is lent.
///
/// # Safety
/// `q` is null or a handle from [`xbb_rs_queue`] of an instance not yet
/// freed; called from that queue's task only.
#[no_mangle]
pub unsafe extern "C" fn xbb_rs_queue_task(q: *mut ffi::xbb_rs_queue, event: c_int) {
    // SAFETY: by the contract a live cell; cells are only used through
    // shared references (their mutable parts are guarded by their gate).
    if let Some(cell) = unsafe { q.cast::<QueueCell>().as_ref() } {
        cell.run_task(event != 0);
    }
}

/// The control task: queues that came home, queues that failed.
///
/// # Safety
/// `inst` is null or a live handle, used by no other call meanwhile.
#[no_mangle]
pub unsafe extern "C" fn xbb_rs_control(inst: *mut ffi::xbb_rs_instance) {
    // SAFETY: forwarded contract.
    unsafe { with(inst, (), Slot::control) }
}

/// The root file system is now mounted.
///
/// # Safety
/// `inst` is null or a live handle, used by no other call meanwhile.
#[no_mangle]
pub unsafe extern "C" fn xbb_rs_root_mounted(inst: *mut ffi::xbb_rs_instance) {
    // SAFETY: forwarded contract.
    unsafe { with(inst, (), |s| s.inst.root_mounted(&mut s.host)) }
}

/// The front-end's XenStore state changed (xenbus_otherend_changed).
///
/// # Safety
/// `inst` is null or a live handle, used by no other call meanwhile.
#[no_mangle]
pub unsafe extern "C" fn xbb_rs_otherend_changed(inst: *mut ffi::xbb_rs_instance) {
    // SAFETY: forwarded contract.
    unsafe { with(inst, (), |s| s.inst.frontend_changed(&mut s.host)) }
}

/// A node of the back-end directory changed (xenbus_localend_changed):
/// `path` is relative to the directory (`"/state"`, `"/hotplug-status"`),
/// `""` when the directory itself was removed.
///
/// # Safety
/// `inst` is null or a live handle, used by no other call meanwhile;
/// `path` is null or NUL-terminated and alive for the call.
#[no_mangle]
pub unsafe extern "C" fn xbb_rs_localend_changed(
    inst: *mut ffi::xbb_rs_instance,
    path: *const c_char,
) {
    // SAFETY: NUL-terminated or null by the contract.
    let Ok(path) = (unsafe { c_str(path) }) else {
        return;
    };
    // SAFETY: forwarded contract.
    unsafe { with(inst, (), |s| s.localend_changed(path)) }
}

/// The store's size may have changed.
///
/// # Safety
/// `inst` is null or a live handle, used by no other call meanwhile.
#[no_mangle]
pub unsafe extern "C" fn xbb_rs_medium_changed(inst: *mut ffi::xbb_rs_instance) {
    // SAFETY: forwarded contract.
    unsafe { with(inst, (), |s| s.inst.medium_changed(&mut s.host)) }
}

/// newbus detach: 0 once everything is released, `EBUSY` while I/O
/// drains (call again after delivering completions), `EINVAL` for null.
///
/// # Safety
/// `inst` is null or a live handle, used by no other call meanwhile.
#[no_mangle]
pub unsafe extern "C" fn xbb_rs_detach(inst: *mut ffi::xbb_rs_instance) -> c_int {
    // SAFETY: forwarded contract.
    let r = unsafe {
        with(inst, Err(Error::Invalid), |s| {
            s.control();
            s.inst.detach(&mut s.host);
            if s.inst.is_detached() {
                Ok(())
            } else {
                Err(Error::Busy)
            }
        })
    };
    errno::result_to_errno(r)
}

/// newbus shutdown: as [`xbb_rs_detach`].
///
/// # Safety
/// As [`xbb_rs_detach`].
#[no_mangle]
pub unsafe extern "C" fn xbb_rs_shutdown(inst: *mut ffi::xbb_rs_instance) -> c_int {
    // SAFETY: forwarded contract.
    unsafe { xbb_rs_detach(inst) }
}

/// newbus suspend: nothing to do (0); `EINVAL` for null.
///
/// # Safety
/// `inst` is null or a live handle.
#[no_mangle]
pub unsafe extern "C" fn xbb_rs_suspend(inst: *mut ffi::xbb_rs_instance) -> c_int {
    errno::result_to_errno(if inst.is_null() {
        Err(Error::Invalid)
    } else {
        Ok(())
    })
}

/// newbus resume: nothing to do (0); `EINVAL` for null.
///
/// # Safety
/// `inst` is null or a live handle.
#[no_mangle]
pub unsafe extern "C" fn xbb_rs_resume(inst: *mut ffi::xbb_rs_instance) -> c_int {
    // SAFETY: same contract.
    unsafe { xbb_rs_suspend(inst) }
}

/// Frees a detached instance: 0, or `EBUSY` (nothing freed) before
/// [`xbb_rs_detach`] returned 0, `EINVAL` for null.
///
/// # Safety
/// `inst` is null or a live handle, used by no other call meanwhile nor
/// ever again after 0 is returned. The taskqueue, callouts and interrupt
/// handlers of the instance are drained.
#[no_mangle]
pub unsafe extern "C" fn xbb_rs_free(inst: *mut ffi::xbb_rs_instance) -> c_int {
    // SAFETY: forwarded contract.
    let Some(s) = (unsafe { slot(inst) }) else {
        return Error::Invalid.errno();
    };
    if !s.inst.is_detached() {
        return Error::Busy.errno();
    }
    // Nothing is in flight: the devstat(9) entries go first.
    s.host.stat_detach();
    let cells = NonNull::from(s.host.cells()).cast::<QueueCell>();
    let p = inst.cast::<Slot>();
    // SAFETY: p is a live Slot written by attach and used by nobody else;
    // it is dropped once and its block freed with the layout it was
    // allocated with. Its queue cells go after it: the C side drained
    // every queue task before calling us.
    unsafe {
        ptr::drop_in_place(p);
        kernel::kernel_dealloc(p.cast(), Layout::new::<Slot>());
        free_cells(cells);
    }
    LIVE.fetch_sub(1, Ordering::AcqRel);
    0
}

// --- Sysctl handlers -------------------------------------------------------

/// Instance-wide value of node `index` (counters summed over queues).
///
/// # Safety
/// `inst` is null or a live handle, used by no other call meanwhile;
/// `valuep` is writable.
#[no_mangle]
pub unsafe extern "C" fn xbb_rs_sysctl_get(
    inst: *mut ffi::xbb_rs_instance,
    index: u32,
    valuep: *mut u64,
) -> c_int {
    // SAFETY: forwarded contract.
    let r = unsafe {
        with(inst, Err(Error::Invalid), |s| {
            let d = SYSCTLS.get(index as usize).ok_or(Error::NotFound)?;
            Ok(s.inst.stats().get(d.stat))
        })
    };
    // SAFETY: forwarded contract (valuep writable when non-null).
    errno::result_to_errno(unsafe { put(valuep, r) })
}

/// Sets switch node `index`: 0, `EPERM` for read-only nodes, `EINVAL` for a
/// refused value, `ENOENT` for a bad index.
///
/// # Safety
/// `inst` is null or a live handle, used by no other call meanwhile.
#[no_mangle]
pub unsafe extern "C" fn xbb_rs_sysctl_set(
    inst: *mut ffi::xbb_rs_instance,
    index: u32,
    value: u64,
) -> c_int {
    // SAFETY: forwarded contract.
    let r = unsafe {
        with(inst, Err(Error::Invalid), |s| {
            let d = SYSCTLS.get(index as usize).ok_or(Error::NotFound)?;
            if d.kind != SysctlKind::Switch {
                return Err(Error::ReadOnly);
            }
            if s.inst.sysctl_set(d.stat, value) {
                Ok(())
            } else {
                Err(Error::Invalid)
            }
        })
    };
    errno::result_to_errno(r)
}

/// Queue `queue`'s value of per-queue node `index` (0 for a queue the
/// connection does not have).
///
/// # Safety
/// `inst` is null or a live handle, used by no other call meanwhile;
/// `valuep` is writable.
#[no_mangle]
pub unsafe extern "C" fn xbb_rs_queue_sysctl_get(
    inst: *mut ffi::xbb_rs_instance,
    queue: u32,
    index: u32,
    valuep: *mut u64,
) -> c_int {
    // SAFETY: forwarded contract.
    let r = unsafe {
        with(inst, Err(Error::Invalid), |s| {
            let d = SYSCTLS
                .get(index as usize)
                .filter(|d| d.per_queue())
                .ok_or(Error::NotFound)?;
            Ok(s.inst.queue_stats(queue).map_or(0, |q| q.get(d.stat)))
        })
    };
    // SAFETY: forwarded contract.
    errno::result_to_errno(unsafe { put(valuep, r) })
}

/// Stores `r`'s value at `valuep`.
///
/// # Safety
/// `valuep` is null or writable.
unsafe fn put(valuep: *mut u64, r: Result<u64, Error>) -> Result<(), Error> {
    let v = r?;
    if valuep.is_null() {
        return Err(Error::Invalid);
    }
    // SAFETY: non-null and writable by the contract.
    unsafe { valuep.write(v) };
    Ok(())
}

/// Queues of the current connection (0 when not connected or null).
///
/// # Safety
/// `inst` is null or a live handle, used by no other call meanwhile.
#[no_mangle]
pub unsafe extern "C" fn xbb_rs_num_queues(inst: *mut ffi::xbb_rs_instance) -> u32 {
    // SAFETY: forwarded contract.
    unsafe { with(inst, 0, |s| s.inst.num_queues()) }
}

/// The back-end's XenBus state (0, Unknown, for null).
///
/// # Safety
/// `inst` is null or a live handle, used by no other call meanwhile.
#[no_mangle]
pub unsafe extern "C" fn xbb_rs_state(inst: *mut ffi::xbb_rs_instance) -> u32 {
    // SAFETY: forwarded contract.
    unsafe { with(inst, 0, |s| s.inst.state() as u32) }
}

/// Writes the last connection error, NUL-terminated and truncated, into
/// `buf`; returns its length without the NUL.
///
/// # Safety
/// `inst` is null or a live handle, used by no other call meanwhile; `buf`
/// is null or writable for `buflen` bytes.
#[no_mangle]
pub unsafe extern "C" fn xbb_rs_last_error(
    inst: *mut ffi::xbb_rs_instance,
    buf: *mut c_char,
    buflen: usize,
) -> usize {
    if buf.is_null() || buflen == 0 {
        return 0;
    }
    // SAFETY: buf is non-null and writable for buflen bytes.
    let out = unsafe { core::slice::from_raw_parts_mut(buf.cast::<u8>(), buflen) };
    let room = buflen - 1;
    // SAFETY: forwarded contract.
    let n = unsafe {
        with(inst, 0, |s| match s.inst.last_error() {
            Some(e) => kernel::format_truncated(&mut out[..room], format_args!("{e}")),
            None => 0,
        })
    };
    out[n] = 0;
    n
}

/// Each entry point has the signature of its prototype in the header (as
/// bindgen read it): a mismatch fails the build.
macro_rules! same_signature {
    ($($name:ident),* $(,)?) => {
        const _: () = {
            $( let _ = if true { ffi::$name } else { $name }; )*
        };
    };
}

same_signature!(
    xbb_rs_load,
    xbb_rs_unload,
    xbb_rs_tunable_count,
    xbb_rs_tunable_name,
    xbb_rs_tunable_descr,
    xbb_rs_tunable_default,
    xbb_rs_tunable_min,
    xbb_rs_tunable_max,
    xbb_rs_tunable_check,
    xbb_rs_attach,
    xbb_rs_queue,
    xbb_rs_queue_task,
    xbb_rs_control,
    xbb_rs_root_mounted,
    xbb_rs_otherend_changed,
    xbb_rs_medium_changed,
    xbb_rs_detach,
    xbb_rs_free,
    xbb_rs_shutdown,
    xbb_rs_suspend,
    xbb_rs_resume,
    xbb_rs_sysctl_count,
    xbb_rs_sysctl_name,
    xbb_rs_sysctl_descr,
    xbb_rs_sysctl_kind,
    xbb_rs_sysctl_per_queue,
    xbb_rs_sysctl_get,
    xbb_rs_sysctl_set,
    xbb_rs_queue_sysctl_get,
    xbb_rs_num_queues,
    xbb_rs_state,
    xbb_rs_last_error,
);
