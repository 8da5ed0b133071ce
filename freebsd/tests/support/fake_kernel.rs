//! A user-space "fake kernel": the services of `sys-glue/xbb_shim.h`
//! (`struct xbb_shim_ops`) implemented in Rust as `extern "C"` functions,
//! so that tests drive the FreeBSD platform (`xbb_freebsd`) through the
//! very `xbb_rs_*` entry points the C shim calls.
//!
//! - One [`FakeKernel`] is one device's softc: the `ctx` of every op. Its
//!   state sits in a `RefCell`, borrowed only inside an op or inside a
//!   helper the test calls between entry points, never across an entry
//!   point call (entry points call back into the ops).
//! - XenStore is a map; a path not starting with `/` is relative to the
//!   back-end domain's home `/local/domain/0`, as in the kernel.
//! - Guest memory: data pages granted by the test's front-end, and the
//!   shared ring from `SharedMem::leak_pair`. `map_grants` records which
//!   grant each window page shows; store I/O is performed when the test
//!   completes it, through those mappings, straight into the guest pages, so
//!   an I/O touching an unmapped window page is caught.
//! - Event channels mask on delivery and unmask on EOI (late EOI); a kick
//!   sets the queue's event flag and enqueues its task; finished I/O goes
//!   on its queue's list (`io_done` takes it back) and enqueues that
//!   queue's task; `control_kick` enqueues the control task. The tasks wait
//!   in one queue that [`FakeKernel::pump`] delivers in order: per queue
//!   (`xbb_rs_queue_task`) and for the control part (`xbb_rs_control`), as
//!   the queues' taskqueues and the control taskqueue would, one at a time
//!   (the kernel runs them at once; the loom model covers that).
//! - `mem_alloc` / `mem_free` use the system allocator, check that every
//!   call names exactly one of `M_WAITOK` / `M_NOWAIT` and that `M_WAITOK`
//!   is never used from the task, and can be told to fail `M_NOWAIT`
//!   allocations ([`fail_nowait_from`]).
//!
//! Contract breaches by the Rust side (a double mapping, I/O through an
//! unmapped page, a store closed with I/O in flight, a store opened before
//! the root file system is mounted, ...) cannot panic inside an
//! `extern "C"` function; they are recorded in [`State::violations`], which
//! every test checks.

#![allow(unsafe_code)]
#![allow(clippy::missing_safety_doc)]

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::{Cell, RefCell};
use std::collections::{BTreeMap, VecDeque};
use std::ffi::{c_char, c_int, c_void, CStr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

use xbb::abi::{Abi, BlkifRequest, BlkifResponse};
use xbb::host::{XenbusState, PAGE_SIZE};
use xbb::ring::FrontRing;
use xbb::shmem::SharedMem;
use xbb_freebsd::errno::{self, EACCES, EINVAL, ENOENT, ENXIO, ERANGE};
use xbb_freebsd::ffi;

/// The back-end directory, relative to the domain's home as
/// `xenbus_get_node()` gives it.
pub const BE_NODE: &str = "backend/vbd/1/51712";
/// The same directory, absolute.
pub const BE_PATH: &str = "/local/domain/0/backend/vbd/1/51712";
/// The front-end's directory.
pub const FE_PATH: &str = "/local/domain/1/device/vbd/51712";
/// The front-end's domain.
pub const FE_DOM: u16 = 1;
/// The front-end's unbound event-channel port.
pub const FE_PORT: u32 = 9;
/// The store's path in the `params` node.
pub const DISK: &str = "/fake/disk";
/// Sectors of the medium.
pub const SECTORS: u64 = 2048;

// --- Allocation accounting (module-wide, ctx may be null) -------------------

thread_local! {
    /// Inside an op of the fake itself: its own allocations never fail.
    static IN_FAKE: Cell<u32> = const { Cell::new(0) };
    /// Inside a task-context entry point (event, run, complete).
    static IN_TASK: Cell<bool> = const { Cell::new(false) };
    /// `M_NOWAIT` allocations of at least this size fail.
    static FAIL_NOWAIT_FROM: Cell<usize> = const { Cell::new(usize::MAX) };
}

/// Allocations made with `M_WAITOK`.
pub static WAITOK_ALLOCS: AtomicUsize = AtomicUsize::new(0);
/// Allocations made with `M_NOWAIT`.
pub static NOWAIT_ALLOCS: AtomicUsize = AtomicUsize::new(0);
/// `M_NOWAIT` allocations refused on purpose.
pub static NOWAIT_FAILED: AtomicUsize = AtomicUsize::new(0);
/// Calls with neither or both of `M_WAITOK` / `M_NOWAIT`, or `M_WAITOK`
/// from the task.
pub static BAD_FLAGS: AtomicUsize = AtomicUsize::new(0);
/// Messages passed to `log`.
pub static LOG: Mutex<Vec<String>> = Mutex::new(Vec::new());

/// Makes this thread's `M_NOWAIT` allocations of `size` bytes or more fail
/// (`usize::MAX`: none).
pub fn fail_nowait_from(size: usize) {
    FAIL_NOWAIT_FROM.with(|c| c.set(size));
}

struct FakeScope;

impl FakeScope {
    fn enter() -> FakeScope {
        IN_FAKE.with(|c| c.set(c.get() + 1));
        FakeScope
    }
}

impl Drop for FakeScope {
    fn drop(&mut self) {
        IN_FAKE.with(|c| c.set(c.get() - 1));
    }
}

/// The test binary's allocator: the kernel allocator of `xbb_freebsd`
/// (through the fake `mem_alloc`) while a module is loaded, the system
/// allocator otherwise.
pub struct TestAllocator;

// SAFETY: both paths end in the system allocator with the caller's layout;
// KernelAllocator only adds the fake's accounting.
unsafe impl GlobalAlloc for TestAllocator {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if xbb_freebsd::ops_installed() && layout.align() <= PAGE_SIZE {
            // SAFETY: forwarded GlobalAlloc contract.
            unsafe { xbb_freebsd::KernelAllocator.alloc(layout) }
        } else {
            // SAFETY: forwarded GlobalAlloc contract.
            unsafe { System.alloc(layout) }
        }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        if xbb_freebsd::ops_installed() && layout.align() <= PAGE_SIZE {
            // SAFETY: forwarded GlobalAlloc contract.
            unsafe { xbb_freebsd::KernelAllocator.alloc_zeroed(layout) }
        } else {
            // SAFETY: forwarded GlobalAlloc contract.
            unsafe { System.alloc_zeroed(layout) }
        }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // The fake's mem_alloc is the system allocator: either path may
        // free the block.
        // SAFETY: forwarded GlobalAlloc contract.
        unsafe { System.dealloc(ptr, layout) }
    }
}

// --- Device state -------------------------------------------------------------

#[derive(Clone, Copy, Debug)]
enum Grant {
    /// A data page: index into `State::pages`.
    Data { page: usize, readonly: bool },
    /// A page of the shared ring, at this address.
    Ring { addr: usize },
}

#[derive(Clone, Copy, Debug)]
struct Mapped {
    gref: u32,
    readonly: bool,
    handle: u32,
}

#[derive(Clone, Copy, Debug, Default)]
struct Chan {
    masked: bool,
    pending: bool,
}

/// Work for the instance's "taskqueues".
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Task {
    /// Queue `q`'s task: `xbb_rs_queue_task(q, event)`.
    Queue(u32),
    /// The control task: `xbb_rs_control`.
    Control,
}

/// One submitted store I/O, copied out of `struct xbb_shim_io`.
#[derive(Clone, Debug)]
pub struct PendingIo {
    /// The queue that submitted it.
    pub queue: u32,
    /// The tag to complete.
    pub tag: u32,
    /// `XBB_SHIM_IO_*`.
    pub op: u32,
    /// `XBB_SHIM_IO_SECURE`.
    #[allow(dead_code)]
    pub flags: u32,
    /// Medium byte offset.
    pub offset: u64,
    /// Length in bytes.
    pub length: u64,
    /// `(window_offset, len)` pieces.
    pub iov: Vec<(usize, usize)>,
}

/// Faults to inject.
#[derive(Clone, Copy, Debug, Default)]
pub struct Faults {
    /// `ring_map` fails with `GNTST_bad_gntref`.
    pub ring_map: bool,
    /// `map_grants` fails every entry with `GNTST_permission_denied`.
    pub map_grants: bool,
    /// The medium is gone: completions report `ENXIO`.
    pub store_gone: bool,
    /// XenStore's permissions as a driver domain meets them: the parents
    /// of the back-end directory and of the front-end directory are not
    /// the back-end's. Once the toolstack removed the back-end directory
    /// (its `state` node is absent), a write below it is refused with
    /// `EACCES` (the back-end may not create it again); and a read of a
    /// missing node below either directory once that directory is gone is
    /// refused with `EACCES`, not `ENOENT` (xenstored answers so when the
    /// nearest existing parent is not readable by the caller).
    pub driver_domain_acl: bool,
}

/// Everything one fake device holds.
#[derive(Default)]
pub struct State {
    /// XenStore, absolute paths.
    pub xs: BTreeMap<String, String>,
    txn_next: u32,
    grants: Vec<Grant>,
    pages: Vec<Box<[u8; PAGE_SIZE]>>,
    ring_backs: Vec<SharedMem>,
    window: Option<Vec<Option<Mapped>>>,
    next_handle: u32,
    /// Ring mappings per queue: `(address, length)`.
    rings: BTreeMap<u32, (usize, usize)>,
    chans: BTreeMap<u32, Chan>,
    /// Ports the front-end offered (`EVTCHNOP_alloc_unbound`).
    offered_ports: Vec<u32>,
    /// Events sent to the front-end, per queue.
    pub notifies: BTreeMap<u32, u64>,
    /// EOIs with a delay.
    pub delayed_eois: u64,
    tasks: VecDeque<Task>,
    /// Queues whose filter saw an event (`q_ev`).
    events: BTreeMap<u32, bool>,
    /// Submitted I/O not yet completed.
    pub ios: VecDeque<PendingIo>,
    /// Finished I/O per queue, not yet taken back (`io_done`).
    done: BTreeMap<u32, VecDeque<(u32, c_int)>>,
    /// Queue task runs, per queue.
    pub queue_tasks: BTreeMap<u32, u64>,
    /// Control task runs.
    pub control_tasks: u64,
    /// The medium's bytes.
    pub medium: Vec<u8>,
    /// The store is open.
    pub open: bool,
    /// `store_open` calls.
    pub opens: u32,
    /// `store_close` calls.
    pub closes: u32,
    /// What `root_mounted` answers.
    pub root_mounted: bool,
    /// The fake clock.
    pub now_ms: u64,
    /// Faults to inject.
    pub faults: Faults,
    /// Contract breaches seen.
    pub violations: Vec<String>,
    /// Window pages mapped now.
    pub mapped_pages: usize,
    /// `xs_write` calls that reached the kernel.
    pub writes: u64,
    /// The devstat(9) entries exist (`stat_attach` .. `stat_detach`).
    pub stat_entries: bool,
    /// `stat_attach` calls.
    pub stat_attaches: u32,
    /// devstat counts per view (`XBB_SHIM_VIEW_*`).
    pub devstat: [DevStat; 2],
    /// Probes fired: `(probe, queue, [a0, a1, a2, a3])`.
    pub probes: Vec<(u32, u32, [u64; 4])>,
}

/// One fake devstat(9) entry.
#[derive(Clone, Copy, Debug, Default)]
pub struct DevStat {
    /// Transactions started.
    pub started: u64,
    /// Transactions ended.
    pub ended: u64,
    /// Ended transactions per `XBB_SHIM_KIND_*`.
    pub ops: [u64; 4],
    /// Bytes per `XBB_SHIM_KIND_*`.
    pub bytes: [u64; 4],
    /// Ended with an error.
    pub errors: u64,
}

/// One device: the softc handed to `xbb_rs_attach` as `ctx`.
pub struct FakeKernel {
    st: RefCell<State>,
    /// The instance handle, once attached.
    pub inst: Cell<*mut ffi::xbb_rs_instance>,
}

fn abs(path: &str) -> String {
    if path.starts_with('/') {
        path.to_owned()
    } else {
        format!("/local/domain/0/{path}")
    }
}

/// # Safety
/// `ctx` is a `FakeKernel` handed to `xbb_rs_attach`, alive for the call.
unsafe fn dev<'a>(ctx: *mut c_void) -> &'a FakeKernel {
    // SAFETY: by the contract.
    unsafe { &*(ctx as *const FakeKernel) }
}

/// # Safety
/// `p` is a NUL-terminated string alive for the call.
unsafe fn s<'a>(p: *const c_char) -> &'a str {
    // SAFETY: by the contract.
    unsafe { CStr::from_ptr(p) }
        .to_str()
        .unwrap_or("<bad utf-8>")
}

impl FakeKernel {
    /// A device whose toolstack wrote the usual back-end nodes.
    pub fn new(writable: bool, online: bool) -> Box<FakeKernel> {
        let fk = Box::new(FakeKernel {
            st: RefCell::new(State {
                txn_next: 1,
                next_handle: 1,
                medium: vec![0; (SECTORS * 512) as usize],
                root_mounted: true,
                ..State::default()
            }),
            inst: Cell::new(std::ptr::null_mut()),
        });
        {
            let mut st = fk.st.borrow_mut();
            let be = |k: &str| format!("{BE_PATH}/{k}");
            st.xs.insert(be("frontend"), FE_PATH.into());
            st.xs.insert(be("frontend-id"), FE_DOM.to_string());
            st.xs.insert(be("params"), DISK.into());
            st.xs.insert(be("type"), "file".into());
            st.xs
                .insert(be("mode"), if writable { "w" } else { "r" }.into());
            st.xs
                .insert(be("online"), if online { "1" } else { "0" }.into());
            st.xs.insert(format!("{FE_PATH}/state"), "1".into());
        }
        fk
    }

    /// The `ctx` pointer of this device.
    pub fn ctx(&self) -> *mut c_void {
        self as *const FakeKernel as *mut c_void
    }

    /// Borrows the state (never across an entry point call).
    pub fn st(&self) -> std::cell::RefMut<'_, State> {
        self.st.borrow_mut()
    }

    /// A XenStore node, absolute or relative to the home.
    pub fn xs(&self, path: &str) -> Option<String> {
        self.st().xs.get(&abs(path)).cloned()
    }

    /// The back-end's `state` node as a number.
    pub fn backend_state(&self) -> Option<u32> {
        self.xs(&format!("{BE_PATH}/state"))?.parse().ok()
    }

    /// Writes the front-end's state.
    pub fn set_frontend_state(&self, s: XenbusState) {
        self.st()
            .xs
            .insert(format!("{FE_PATH}/state"), s.as_str().into());
    }

    /// Grants one data page holding `bytes`.
    pub fn grant(&self, bytes: &[u8], readonly: bool) -> u32 {
        let mut st = self.st();
        let mut page = Box::new([0u8; PAGE_SIZE]);
        page[..bytes.len()].copy_from_slice(bytes);
        st.pages.push(page);
        let page = st.pages.len() - 1;
        st.grants.push(Grant::Data { page, readonly });
        (st.grants.len() + 7) as u32
    }

    /// A granted data page's bytes.
    pub fn page(&self, gref: u32) -> Vec<u8> {
        let st = self.st();
        match st.grants[gref as usize - 8] {
            Grant::Data { page, .. } => st.pages[page].to_vec(),
            Grant::Ring { .. } => panic!("not a data page"),
        }
    }

    /// Sets up a one-queue front-end ring of `pages` pages, as a front-end
    /// does, and moves the front-end to Initialised.
    pub fn frontend_connect(&self, pages: u32) -> FrontRing {
        self.frontend_connect_queues(1, pages)
            .pop()
            .expect("one ring")
    }

    /// Sets up `queues` rings of `pages` pages each (`queues` > 1: the
    /// `multi-queue-num-queues` layout, `queue-N/ring-ref...`,
    /// `queue-N/event-channel`, port `FE_PORT + N`), and moves the
    /// front-end to Initialised.
    pub fn frontend_connect_queues(&self, queues: u32, pages: u32) -> Vec<FrontRing> {
        let mut st = self.st();
        let mut rings = Vec::new();
        let fe = |k: &str| format!("{FE_PATH}/{k}");
        if queues > 1 {
            st.xs
                .insert(fe("multi-queue-num-queues"), queues.to_string());
        }
        if pages > 1 {
            st.xs
                .insert(fe("ring-page-order"), pages.trailing_zeros().to_string());
        }
        for q in 0..queues {
            let (front, back) = SharedMem::leak_pair(pages as usize * PAGE_SIZE).expect("ring");
            let base = back.as_ptr() as usize;
            let mut refs = Vec::new();
            for i in 0..pages as usize {
                st.grants.push(Grant::Ring {
                    addr: base + i * PAGE_SIZE,
                });
                refs.push((st.grants.len() + 7) as u32);
            }
            // Keep the back views alive (ring_map hands out addresses).
            st.ring_backs.push(back);
            let dir = if queues > 1 {
                format!("queue-{q}/")
            } else {
                String::new()
            };
            if pages == 1 {
                st.xs
                    .insert(fe(&format!("{dir}ring-ref")), refs[0].to_string());
            } else {
                for (i, r) in refs.iter().enumerate() {
                    st.xs
                        .insert(fe(&format!("{dir}ring-ref{i}")), r.to_string());
                }
            }
            let port = FE_PORT + q;
            st.xs
                .insert(fe(&format!("{dir}event-channel")), port.to_string());
            st.offered_ports.push(port);
            rings.push(FrontRing::init(front, Abi::X86_64, pages).expect("ring init"));
        }
        st.xs.insert(
            fe("protocol"),
            xbb::abi::XEN_IO_PROTO_ABI_X86_64.to_string(),
        );
        st.xs
            .insert(fe("state"), XenbusState::Initialised.as_str().to_string());
        rings
    }

    /// The front-end kicks queue `q`'s channel: the filter masks it and
    /// enqueues the task, or leaves the event pending while masked.
    pub fn kick(&self, q: u32) {
        let mut st = self.st();
        let Some(c) = st.chans.get_mut(&q) else {
            return;
        };
        if c.masked {
            c.pending = true;
        } else {
            c.masked = true;
            st.events.insert(q, true);
            push_task(&mut st, Task::Queue(q));
        }
    }

    /// Whether any ring is mapped, channel bound or window reserved.
    pub fn holds_anything(&self) -> bool {
        let st = self.st();
        !st.rings.is_empty() || !st.chans.is_empty() || st.window.is_some() || st.mapped_pages > 0
    }

    /// Delivers queued tasks (not I/O completions) until none is left;
    /// returns how many ran.
    pub fn run_tasks(&self) -> usize {
        let mut n = 0;
        loop {
            let t = self.st().tasks.pop_front();
            let Some(t) = t else {
                return n;
            };
            n += 1;
            assert!(n < 100_000, "task storm");
            self.run_task(t);
        }
    }

    /// Delivers queued tasks in order until the control task has run,
    /// leaving the ones queued after it; whether it ran.
    pub fn run_tasks_through_control(&self) -> bool {
        loop {
            let t = self.st().tasks.pop_front();
            let Some(t) = t else {
                return false;
            };
            self.run_task(t);
            if t == Task::Control {
                return true;
            }
        }
    }

    fn run_task(&self, t: Task) {
        let inst = self.inst.get();
        IN_TASK.with(|c| c.set(true));
        match t {
            Task::Queue(q) => {
                let event = {
                    let mut st = self.st();
                    *st.queue_tasks.entry(q).or_default() += 1;
                    st.events.insert(q, false).unwrap_or(false)
                };
                // SAFETY: inst is the live handle of this device; calls are
                // serialized on this thread.
                let h = unsafe { ffi::xbb_rs_queue(inst, q) };
                assert!(!h.is_null(), "queue {q} has no handle");
                // SAFETY: a live queue handle; this thread is its task.
                unsafe { ffi::xbb_rs_queue_task(h, c_int::from(event)) };
            }
            Task::Control => {
                self.st().control_tasks += 1;
                // SAFETY: as above.
                unsafe { ffi::xbb_rs_control(inst) };
            }
        }
        IN_TASK.with(|c| c.set(false));
    }

    /// Performs the oldest submitted I/O and puts it on its queue's list
    /// of finished I/O, enqueueing the queue's task (as a bio completion
    /// or a file worker does); false if none.
    pub fn complete_one(&self) -> bool {
        let io = self.st().ios.pop_front();
        self.finish_io(io)
    }

    /// Performs the oldest submitted I/O of queue `q` only; false if none.
    pub fn complete_one_of(&self, q: u32) -> bool {
        let io = {
            let mut st = self.st();
            let at = st.ios.iter().position(|io| io.queue == q);
            at.and_then(|i| st.ios.remove(i))
        };
        self.finish_io(io)
    }

    /// Performs `io` and puts it on its queue's list of finished I/O,
    /// enqueueing the queue's task; false for none.
    fn finish_io(&self, io: Option<PendingIo>) -> bool {
        let Some(io) = io else {
            return false;
        };
        let err = self.perform(&io);
        let mut st = self.st();
        st.done
            .entry(io.queue)
            .or_default()
            .push_back((io.tag, err));
        push_task(&mut st, Task::Queue(io.queue));
        true
    }

    /// Runs tasks and completes I/O until nothing is left.
    pub fn pump(&self) {
        loop {
            self.run_tasks();
            if !self.complete_one() {
                break;
            }
        }
    }

    fn perform(&self, io: &PendingIo) -> c_int {
        let mut st = self.st();
        if st.faults.store_gone {
            return ENXIO;
        }
        match io.op {
            ffi::XBB_SHIM_IO_FLUSH => 0,
            ffi::XBB_SHIM_IO_DISCARD => {
                let (a, n) = (io.offset as usize, io.length as usize);
                match st.medium.get_mut(a..a + n) {
                    Some(r) => {
                        r.fill(0);
                        0
                    }
                    None => {
                        st.violations.push(format!("discard past the end: {io:?}"));
                        errno::EIO
                    }
                }
            }
            op @ (ffi::XBB_SHIM_IO_READ | ffi::XBB_SHIM_IO_WRITE) => {
                let mut pos = io.offset as usize;
                for &(off, len) in &io.iov {
                    let mut done = 0;
                    while done < len {
                        let woff = off + done;
                        let (wp, in_page) = (woff / PAGE_SIZE, woff % PAGE_SIZE);
                        let n = (PAGE_SIZE - in_page).min(len - done);
                        let m = st
                            .window
                            .as_ref()
                            .and_then(|w| w.get(wp).copied().flatten());
                        let Some(m) = m else {
                            st.violations
                                .push(format!("I/O through unmapped window page {wp}"));
                            return errno::EIO;
                        };
                        let Grant::Data { page, .. } = st.grants[m.gref as usize - 8] else {
                            st.violations.push("I/O into a ring page".into());
                            return errno::EIO;
                        };
                        if pos + n > st.medium.len() {
                            st.violations.push(format!("I/O past the end: {io:?}"));
                            return errno::EIO;
                        }
                        let st = &mut *st;
                        if op == ffi::XBB_SHIM_IO_READ {
                            if m.readonly {
                                st.violations.push("READ into a read-only mapping".into());
                            }
                            st.pages[page][in_page..in_page + n]
                                .copy_from_slice(&st.medium[pos..pos + n]);
                        } else {
                            st.medium[pos..pos + n]
                                .copy_from_slice(&st.pages[page][in_page..in_page + n]);
                        }
                        pos += n;
                        done += n;
                    }
                }
                0
            }
            _ => {
                st.violations.push(format!("unknown op {io:?}"));
                EINVAL
            }
        }
    }
}

// --- A front-end over FrontRing ---------------------------------------------

/// Pushes `req`, publishes, and kicks queue 0 if the back-end asked.
pub fn submit(fk: &FakeKernel, ring: &mut FrontRing, req: &BlkifRequest) {
    submit_on(fk, ring, 0, req);
}

/// Pushes `req` on queue `q`'s ring, publishes, and kicks if asked.
pub fn submit_on(fk: &FakeKernel, ring: &mut FrontRing, q: u32, req: &BlkifRequest) {
    assert!(ring.push_request(req), "ring full");
    if ring.publish_requests() {
        fk.kick(q);
    }
}

/// Enqueues task `t` unless it is queued already (taskqueue_enqueue).
fn push_task(st: &mut State, t: Task) {
    if !st.tasks.contains(&t) {
        st.tasks.push_back(t);
    }
}

/// Every response available now.
pub fn responses(ring: &mut FrontRing) -> Vec<BlkifResponse> {
    let mut v = Vec::new();
    loop {
        while let Some(r) = ring.take_response().expect("back-end broke the ring") {
            v.push(r);
        }
        if !ring.final_check_for_responses() {
            return v;
        }
    }
}

// --- The ops --------------------------------------------------------------

unsafe extern "C" fn xs_read(
    ctx: *mut c_void,
    _txn: u32,
    path: *const c_char,
    buf: *mut c_char,
    buflen: usize,
    lenp: *mut usize,
) -> c_int {
    let _f = FakeScope::enter();
    // SAFETY: the header's contract for xs_read.
    let (d, path) = unsafe { (dev(ctx), s(path)) };
    let st = d.st();
    let p = abs(path);
    let Some(v) = st.xs.get(&p) else {
        let gone = |dir: &str| p.starts_with(dir) && !st.xs.contains_key(&format!("{dir}/state"));
        if st.faults.driver_domain_acl && (gone(BE_PATH) || gone(FE_PATH)) {
            return EACCES;
        }
        return ENOENT;
    };
    if v.len() > buflen {
        return ERANGE;
    }
    // SAFETY: buf is writable for buflen >= v.len() bytes; lenp writable.
    unsafe {
        std::ptr::copy_nonoverlapping(v.as_ptr(), buf.cast::<u8>(), v.len());
        *lenp = v.len();
    }
    0
}

unsafe extern "C" fn xs_write(
    ctx: *mut c_void,
    _txn: u32,
    path: *const c_char,
    value: *const c_char,
) -> c_int {
    let _f = FakeScope::enter();
    // SAFETY: the header's contract for xs_write.
    let (d, path, value) = unsafe { (dev(ctx), s(path), s(value)) };
    let mut st = d.st();
    st.writes += 1;
    let p = abs(path);
    if st.faults.driver_domain_acl
        && p.starts_with(BE_PATH)
        && !st.xs.contains_key(&format!("{BE_PATH}/state"))
    {
        return EACCES;
    }
    st.xs.insert(p, value.to_owned());
    0
}

unsafe extern "C" fn xs_remove(ctx: *mut c_void, _txn: u32, path: *const c_char) -> c_int {
    let _f = FakeScope::enter();
    // SAFETY: the header's contract for xs_remove.
    let (d, path) = unsafe { (dev(ctx), s(path)) };
    let p = abs(path);
    let below = format!("{p}/");
    d.st().xs.retain(|k, _| *k != p && !k.starts_with(&below));
    0
}

unsafe extern "C" fn xs_transaction_start(ctx: *mut c_void, txnp: *mut u32) -> c_int {
    let _f = FakeScope::enter();
    // SAFETY: the header's contract.
    let d = unsafe { dev(ctx) };
    let mut st = d.st();
    // SAFETY: txnp is writable.
    unsafe { *txnp = st.txn_next };
    st.txn_next += 1;
    0
}

unsafe extern "C" fn xs_transaction_end(_ctx: *mut c_void, _txn: u32, _commit: c_int) -> c_int {
    0
}

unsafe extern "C" fn window_reserve(ctx: *mut c_void, pages: u32) -> c_int {
    let _f = FakeScope::enter();
    // SAFETY: the header's contract.
    let mut st = unsafe { dev(ctx) }.st();
    if st.window.is_some() {
        st.violations.push("second window".into());
        return EINVAL;
    }
    st.window = Some(vec![None; pages as usize]);
    0
}

unsafe extern "C" fn window_release(ctx: *mut c_void) {
    let _f = FakeScope::enter();
    // SAFETY: the header's contract.
    let mut st = unsafe { dev(ctx) }.st();
    match st.window.take() {
        None => st.violations.push("release without a window".into()),
        Some(w) if w.iter().any(Option::is_some) => st
            .violations
            .push("window released with pages mapped".into()),
        Some(_) => {}
    }
}

unsafe extern "C" fn map_grants(
    ctx: *mut c_void,
    domid: u16,
    ops: *mut ffi::xbb_shim_map,
    count: u32,
) {
    let _f = FakeScope::enter();
    // SAFETY: the header's contract: ops holds count writable entries.
    let (d, ops) = unsafe {
        (
            dev(ctx),
            std::slice::from_raw_parts_mut(ops, count as usize),
        )
    };
    let mut st = d.st();
    if count as usize > ffi::XBB_SHIM_GRANT_BATCH as usize {
        st.violations.push(format!("batch of {count}"));
    }
    for op in ops {
        op.status = map_one(&mut st, domid, op);
    }
}

fn map_one(st: &mut State, domid: u16, op: &mut ffi::xbb_shim_map) -> i32 {
    if st.faults.map_grants {
        return errno::GNTST_PERMISSION_DENIED;
    }
    if domid != FE_DOM {
        return errno::GNTST_BAD_DOMAIN;
    }
    let Some(g) = (op.gref as usize)
        .checked_sub(8)
        .and_then(|i| st.grants.get(i).copied())
    else {
        return errno::GNTST_BAD_GNTREF;
    };
    if let Grant::Data { readonly: true, .. } = g {
        if op.readonly == 0 {
            return errno::GNTST_PERMISSION_DENIED;
        }
    }
    let handle = st.next_handle;
    let Some(slot) = st
        .window
        .as_mut()
        .and_then(|w| w.get_mut(op.window_page as usize))
    else {
        st.violations
            .push(format!("map outside the window: page {}", op.window_page));
        return EINVAL;
    };
    if slot.is_some() {
        st.violations
            .push(format!("window page {} mapped twice", op.window_page));
        return errno::GNTST_GENERAL_ERROR;
    }
    *slot = Some(Mapped {
        gref: op.gref,
        readonly: op.readonly != 0,
        handle,
    });
    st.next_handle += 1;
    st.mapped_pages += 1;
    op.handle = handle;
    0
}

unsafe extern "C" fn unmap_grants(ctx: *mut c_void, ops: *const ffi::xbb_shim_unmap, count: u32) {
    let _f = FakeScope::enter();
    // SAFETY: the header's contract: ops holds count entries.
    let (d, ops) = unsafe { (dev(ctx), std::slice::from_raw_parts(ops, count as usize)) };
    let mut st = d.st();
    for op in ops {
        let slot = st
            .window
            .as_mut()
            .and_then(|w| w.get_mut(op.window_page as usize));
        match slot {
            Some(s @ Some(_)) if s.is_some_and(|m| m.handle == op.handle) => {
                *s = None;
                st.mapped_pages -= 1;
            }
            _ => st
                .violations
                .push(format!("bad unmap of page {}", op.window_page)),
        }
    }
}

unsafe extern "C" fn ring_map(
    ctx: *mut c_void,
    queue: u32,
    domid: u16,
    grefs: *const u32,
    count: u32,
    vap: *mut *mut c_void,
    lenp: *mut usize,
) -> i32 {
    let _f = FakeScope::enter();
    // SAFETY: the header's contract.
    let (d, grefs) = unsafe { (dev(ctx), std::slice::from_raw_parts(grefs, count as usize)) };
    let mut st = d.st();
    if st.faults.ring_map {
        return errno::GNTST_BAD_GNTREF;
    }
    if domid != FE_DOM {
        return errno::GNTST_BAD_DOMAIN;
    }
    let mut base = None;
    for (i, &g) in grefs.iter().enumerate() {
        match (g as usize).checked_sub(8).and_then(|i| st.grants.get(i)) {
            Some(&Grant::Ring { addr }) => {
                let b = *base.get_or_insert(addr);
                if addr != b + i * PAGE_SIZE {
                    return EINVAL;
                }
            }
            _ => return errno::GNTST_BAD_GNTREF,
        }
    }
    let Some(base) = base else {
        return EINVAL;
    };
    if st.rings.contains_key(&queue) {
        st.violations
            .push(format!("queue {queue} ring mapped twice"));
    }
    let len = grefs.len() * PAGE_SIZE;
    st.rings.insert(queue, (base, len));
    // SAFETY: vap and lenp are writable.
    unsafe {
        *vap = base as *mut c_void;
        *lenp = len;
    }
    0
}

unsafe extern "C" fn ring_unmap(ctx: *mut c_void, queue: u32, va: *mut c_void, len: usize) {
    let _f = FakeScope::enter();
    // SAFETY: the header's contract.
    let mut st = unsafe { dev(ctx) }.st();
    if st.rings.remove(&queue) != Some((va as usize, len)) {
        st.violations
            .push(format!("bad ring unmap of queue {queue}"));
    }
}

unsafe extern "C" fn copy_in(
    ctx: *mut c_void,
    domid: u16,
    grefs: *const u32,
    count: u32,
    out: *mut c_void,
    len: usize,
) -> i32 {
    let _f = FakeScope::enter();
    // SAFETY: the header's contract.
    let (d, grefs, out) = unsafe {
        (
            dev(ctx),
            std::slice::from_raw_parts(grefs, count as usize),
            std::slice::from_raw_parts_mut(out.cast::<u8>(), len),
        )
    };
    let st = d.st();
    if domid != FE_DOM {
        return errno::GNTST_BAD_DOMAIN;
    }
    for (i, &g) in grefs.iter().enumerate() {
        let Some(&Grant::Data { page, .. }) =
            (g as usize).checked_sub(8).and_then(|i| st.grants.get(i))
        else {
            return errno::GNTST_BAD_GNTREF;
        };
        let start = i * PAGE_SIZE;
        if start >= len {
            break;
        }
        let n = PAGE_SIZE.min(len - start);
        out[start..start + n].copy_from_slice(&st.pages[page][..n]);
    }
    0
}

unsafe extern "C" fn evtchn_bind(ctx: *mut c_void, queue: u32, domid: u16, port: u32) -> c_int {
    let _f = FakeScope::enter();
    // SAFETY: the header's contract.
    let mut st = unsafe { dev(ctx) }.st();
    if domid != FE_DOM || !st.offered_ports.contains(&port) {
        return EINVAL;
    }
    if st.chans.insert(queue, Chan::default()).is_some() {
        st.violations.push(format!("queue {queue} bound twice"));
    }
    0
}

unsafe extern "C" fn evtchn_notify(ctx: *mut c_void, queue: u32) {
    let _f = FakeScope::enter();
    // SAFETY: the header's contract.
    let mut st = unsafe { dev(ctx) }.st();
    if !st.chans.contains_key(&queue) {
        st.violations
            .push(format!("notify on unbound queue {queue}"));
    }
    *st.notifies.entry(queue).or_default() += 1;
}

unsafe extern "C" fn evtchn_eoi(ctx: *mut c_void, queue: u32, delay_ms: u32) {
    let _f = FakeScope::enter();
    // SAFETY: the header's contract.
    let mut st = unsafe { dev(ctx) }.st();
    if delay_ms > 0 {
        st.delayed_eois += 1;
    }
    let Some(c) = st.chans.get_mut(&queue) else {
        st.violations.push(format!("EOI on unbound queue {queue}"));
        return;
    };
    if c.pending {
        // Unmasked with an event pending: the filter runs again at once.
        c.pending = false;
        st.events.insert(queue, true);
        push_task(&mut st, Task::Queue(queue));
    } else {
        c.masked = false;
    }
}

unsafe extern "C" fn evtchn_unbind(ctx: *mut c_void, queue: u32) {
    let _f = FakeScope::enter();
    // SAFETY: the header's contract.
    let mut st = unsafe { dev(ctx) }.st();
    if st.chans.remove(&queue).is_none() {
        st.violations
            .push(format!("unbind of unbound queue {queue}"));
    }
    // The filter records nothing more; an event already recorded reaches
    // the queue's task, which ignores it while the queue is home.
    st.events.insert(queue, false);
}

unsafe extern "C" fn queue_kick(ctx: *mut c_void, queue: u32) {
    let _f = FakeScope::enter();
    // SAFETY: the header's contract.
    let mut st = unsafe { dev(ctx) }.st();
    if queue >= ffi::XBB_SHIM_MAX_QUEUES {
        st.violations.push(format!("kick of queue {queue}"));
        return;
    }
    push_task(&mut st, Task::Queue(queue));
}

unsafe extern "C" fn control_kick(ctx: *mut c_void) {
    let _f = FakeScope::enter();
    // SAFETY: the header's contract.
    let mut st = unsafe { dev(ctx) }.st();
    push_task(&mut st, Task::Control);
}

unsafe extern "C" fn io_done(
    ctx: *mut c_void,
    queue: u32,
    tagp: *mut u32,
    errorp: *mut c_int,
) -> c_int {
    let _f = FakeScope::enter();
    // SAFETY: the header's contract.
    let mut st = unsafe { dev(ctx) }.st();
    let Some((tag, err)) = st.done.get_mut(&queue).and_then(VecDeque::pop_front) else {
        return 0;
    };
    // SAFETY: tagp and errorp are writable.
    unsafe {
        *tagp = tag;
        *errorp = err;
    }
    1
}

unsafe extern "C" fn now_ms(ctx: *mut c_void) -> u64 {
    // SAFETY: the header's contract.
    unsafe { dev(ctx) }.st().now_ms
}

fn fill_medium(st: &State, m: &mut ffi::xbb_shim_medium) {
    m.sectors = st.medium.len() as u64 / 512;
    m.sector_size = 512;
    m.physical_sector_size = 4096;
    m.discard_granularity = 0;
    m.discard_alignment = 0;
    m.flags = ffi::XBB_SHIM_MEDIUM_CAN_FLUSH | ffi::XBB_SHIM_MEDIUM_CAN_DISCARD;
}

unsafe extern "C" fn store_open(
    ctx: *mut c_void,
    path: *const c_char,
    kind: *const c_char,
    _writable: c_int,
    m: *mut ffi::xbb_shim_medium,
) -> c_int {
    let _f = FakeScope::enter();
    // SAFETY: the header's contract.
    let (d, path, kind, m) = unsafe { (dev(ctx), s(path), s(kind), &mut *m) };
    let mut st = d.st();
    st.opens += 1;
    if !st.root_mounted {
        st.violations.push("store opened before root mount".into());
    }
    if st.open {
        st.violations.push("store opened twice".into());
    }
    if path != DISK || kind != "file" {
        return ENOENT;
    }
    st.open = true;
    fill_medium(&st, m);
    0
}

unsafe extern "C" fn store_info(ctx: *mut c_void, m: *mut ffi::xbb_shim_medium) {
    let _f = FakeScope::enter();
    // SAFETY: the header's contract.
    let (d, m) = unsafe { (dev(ctx), &mut *m) };
    fill_medium(&d.st(), m);
}

unsafe extern "C" fn store_submit(
    ctx: *mut c_void,
    queue: u32,
    tag: u32,
    io: *const ffi::xbb_shim_io,
) -> c_int {
    let _f = FakeScope::enter();
    // SAFETY: the header's contract: io and io.iov are readable now.
    let (d, io) = unsafe { (dev(ctx), &*io) };
    let iov = if io.iovcnt == 0 {
        Vec::new()
    } else {
        // SAFETY: io.iov holds iovcnt entries.
        unsafe { std::slice::from_raw_parts(io.iov, io.iovcnt as usize) }
            .iter()
            .map(|v| (v.window_offset, v.len))
            .collect()
    };
    let mut st = d.st();
    if !st.open {
        st.violations.push("I/O to a closed store".into());
    }
    let sum: usize = iov.iter().map(|v| v.1).sum();
    if matches!(io.op, ffi::XBB_SHIM_IO_READ | ffi::XBB_SHIM_IO_WRITE) && sum as u64 != io.length {
        st.violations.push("iov does not add up to length".into());
    }
    st.ios.push_back(PendingIo {
        queue,
        tag,
        op: io.op,
        flags: io.flags,
        offset: io.offset,
        length: io.length,
        iov,
    });
    0
}

unsafe extern "C" fn store_close(ctx: *mut c_void) {
    let _f = FakeScope::enter();
    // SAFETY: the header's contract.
    let mut st = unsafe { dev(ctx) }.st();
    if !st.ios.is_empty() || st.done.values().any(|d| !d.is_empty()) {
        st.violations.push("store closed with I/O in flight".into());
    }
    if !st.open {
        st.violations.push("store closed twice".into());
    }
    st.open = false;
    st.closes += 1;
}

unsafe extern "C" fn root_mounted(ctx: *mut c_void) -> c_int {
    // SAFETY: the header's contract.
    c_int::from(unsafe { dev(ctx) }.st().root_mounted)
}

unsafe extern "C" fn mem_alloc(
    _ctx: *mut c_void,
    size: usize,
    align: usize,
    flags: u32,
) -> *mut c_void {
    let waitok = flags & ffi::XBB_SHIM_M_WAITOK != 0;
    let nowait = flags & ffi::XBB_SHIM_M_NOWAIT != 0;
    if waitok == nowait || (waitok && IN_TASK.with(Cell::get)) {
        BAD_FLAGS.fetch_add(1, Ordering::Relaxed);
    }
    if waitok {
        WAITOK_ALLOCS.fetch_add(1, Ordering::Relaxed);
    } else {
        NOWAIT_ALLOCS.fetch_add(1, Ordering::Relaxed);
        if IN_FAKE.with(Cell::get) == 0 && size >= FAIL_NOWAIT_FROM.with(Cell::get) {
            NOWAIT_FAILED.fetch_add(1, Ordering::Relaxed);
            return std::ptr::null_mut();
        }
    }
    let Ok(layout) = Layout::from_size_align(size, align) else {
        BAD_FLAGS.fetch_add(1, Ordering::Relaxed);
        return std::ptr::null_mut();
    };
    // SAFETY: size is non-zero (kernel_alloc refuses 0).
    unsafe {
        if flags & ffi::XBB_SHIM_M_ZERO != 0 {
            System.alloc_zeroed(layout).cast()
        } else {
            System.alloc(layout).cast()
        }
    }
}

unsafe extern "C" fn mem_free(_ctx: *mut c_void, ptr: *mut c_void, size: usize, align: usize) {
    if let Ok(layout) = Layout::from_size_align(size, align) {
        // SAFETY: ptr came from mem_alloc with this layout.
        unsafe { System.dealloc(ptr.cast(), layout) }
    }
}

unsafe extern "C" fn panic(_ctx: *mut c_void, msg: *const c_char, len: usize) {
    // SAFETY: msg holds len bytes.
    let m = unsafe { std::slice::from_raw_parts(msg.cast::<u8>(), len) };
    eprintln!("fake kernel panic: {}", String::from_utf8_lossy(m));
    std::process::abort();
}

unsafe extern "C" fn log(_ctx: *mut c_void, msg: *const c_char, len: usize) {
    let _f = FakeScope::enter();
    // SAFETY: msg holds len bytes.
    let m = unsafe { std::slice::from_raw_parts(msg.cast::<u8>(), len) };
    LOG.lock()
        .unwrap_or_else(|e| e.into_inner())
        .push(String::from_utf8_lossy(m).into_owned());
}

unsafe extern "C" fn stat_attach(ctx: *mut c_void) -> c_int {
    let _f = FakeScope::enter();
    // SAFETY: the header's contract.
    let mut st = unsafe { dev(ctx) }.st();
    if st.stat_entries {
        st.violations.push("stat_attach twice".into());
    }
    st.stat_entries = true;
    st.stat_attaches += 1;
    0
}

unsafe extern "C" fn stat_detach(ctx: *mut c_void) {
    let _f = FakeScope::enter();
    // SAFETY: the header's contract.
    let mut st = unsafe { dev(ctx) }.st();
    if !st.stat_entries {
        st.violations.push("stat_detach without entries".into());
    }
    if !st.ios.is_empty() {
        st.violations.push("stat_detach with I/O in flight".into());
    }
    st.stat_entries = false;
}

unsafe extern "C" fn stat_start(ctx: *mut c_void, view: u32) {
    let _f = FakeScope::enter();
    // SAFETY: the header's contract.
    let mut st = unsafe { dev(ctx) }.st();
    if !st.stat_entries || view > 1 {
        st.violations
            .push(format!("stat_start view {view} without entries"));
        return;
    }
    st.devstat[view as usize].started += 1;
}

unsafe extern "C" fn stat_end(ctx: *mut c_void, view: u32, kind: u32, bytes: u64, error: c_int) {
    let _f = FakeScope::enter();
    // SAFETY: the header's contract.
    let mut st = unsafe { dev(ctx) }.st();
    if !st.stat_entries || view > 1 || kind > 3 {
        st.violations
            .push(format!("stat_end view {view} kind {kind}"));
        return;
    }
    let d = &mut st.devstat[view as usize];
    d.ended += 1;
    d.ops[kind as usize] += 1;
    d.bytes[kind as usize] += bytes;
    d.errors += u64::from(error != 0);
    if d.ended > d.started {
        st.violations
            .push(format!("stat_end of view {view} without a start"));
    }
}

unsafe extern "C" fn probe(
    ctx: *mut c_void,
    probe: u32,
    queue: u32,
    a0: u64,
    a1: u64,
    a2: u64,
    a3: u64,
) {
    let _f = FakeScope::enter();
    // SAFETY: the header's contract.
    let mut st = unsafe { dev(ctx) }.st();
    if probe >= ffi::XBB_SHIM_PROBES {
        st.violations.push(format!("probe {probe}"));
    }
    st.probes.push((probe, queue, [a0, a1, a2, a3]));
}

/// The fake kernel's ops table.
pub static OPS: ffi::xbb_shim_ops = ffi::xbb_shim_ops {
    version: ffi::XBB_SHIM_VERSION,
    size: std::mem::size_of::<ffi::xbb_shim_ops>() as u32,
    xs_read: Some(xs_read),
    xs_write: Some(xs_write),
    xs_remove: Some(xs_remove),
    xs_transaction_start: Some(xs_transaction_start),
    xs_transaction_end: Some(xs_transaction_end),
    window_reserve: Some(window_reserve),
    window_release: Some(window_release),
    map_grants: Some(map_grants),
    unmap_grants: Some(unmap_grants),
    ring_map: Some(ring_map),
    ring_unmap: Some(ring_unmap),
    copy_in: Some(copy_in),
    evtchn_bind: Some(evtchn_bind),
    evtchn_notify: Some(evtchn_notify),
    evtchn_eoi: Some(evtchn_eoi),
    evtchn_unbind: Some(evtchn_unbind),
    queue_kick: Some(queue_kick),
    control_kick: Some(control_kick),
    now_ms: Some(now_ms),
    store_open: Some(store_open),
    store_info: Some(store_info),
    store_submit: Some(store_submit),
    io_done: Some(io_done),
    store_close: Some(store_close),
    root_mounted: Some(root_mounted),
    mem_alloc: Some(mem_alloc),
    mem_free: Some(mem_free),
    panic: Some(panic),
    log: Some(log),
    stat_attach: Some(stat_attach),
    stat_detach: Some(stat_detach),
    stat_start: Some(stat_start),
    stat_end: Some(stat_end),
    probe: Some(probe),
};

/// Serializes the tests of a binary: the ops table is module-wide.
pub static SERIAL: Mutex<()> = Mutex::new(());

/// The tunables' defaults, as the C side fills them at load.
pub fn default_tunables() -> Vec<u64> {
    // SAFETY: plain-value entry points.
    unsafe {
        (0..ffi::xbb_rs_tunable_count())
            .map(|i| ffi::xbb_rs_tunable_default(i))
            .collect()
    }
}

/// `xbb_rs_attach` for `fk` with `tunables`; stores the handle in `fk`.
pub fn attach(fk: &FakeKernel, tunables: &[u64]) -> c_int {
    let path = std::ffi::CString::new(BE_NODE).unwrap();
    let mut inst = std::ptr::null_mut();
    // SAFETY: every pointer is valid for the call; fk outlives the instance
    // (the tests free it before dropping fk).
    let e = unsafe {
        ffi::xbb_rs_attach(
            fk.ctx(),
            path.as_ptr(),
            tunables.as_ptr(),
            tunables.len() as u32,
            &mut inst,
        )
    };
    fk.inst.set(inst);
    e
}
