//! [`XenHost`]: the core's platform traits over a real dom0's user-space
//! interfaces, for one `vbd`: the control part's [`Host`] on the instance's
//! thread, and each queue's [`QueueHost`] ([`XenQueueHost`]) on a thread of
//! the queue's own.
//!
//! - [`XenStore`]: libxenstore, on the instance's own connection (which also
//!   carries its watches);
//! - grants: libxengnttab. Rings are mapped whole by the control part.
//!   Each queue has its own gntdev handle and its own table for its share
//!   of the data window ([`Queue::window_share`]): data pages are mapped one
//!   contiguous range per run of consecutive window pages of a batch (see
//!   [`super::window`]), or, in copy mode, copied with `GNTTABOP_copy`
//!   through a bounce window of the queue's own (see [`super::bounce`]).
//!   Indirect pages are copied;
//! - event channels: libxenevtchn, one handle (one descriptor) per queue,
//!   polled by the queue's thread. A port that fired stays masked until
//!   [`QueueHost::evtchn_eoi`] unmasks it, at once or when its timer
//!   expires;
//! - deferred runs, completions and recalls: the queue's [`Gate`], and an
//!   eventfd that wakes its thread only when the gate says so (once per
//!   sleep, not once per completion);
//! - the store: [`xbb_ustore`]'s file, device and NBD stores, shared by
//!   the queues. A file or device store is served through io_uring by
//!   default (`io = uring`): each queue's thread submits everything one
//!   pass gathered in one `io_uring_enter` at the end of the pass
//!   ([`StoreHandle::kick`]), polls the ring's descriptor beside its event
//!   channel, and reaps the completions itself at the start of its next
//!   pass, so a completion for its own queue needs no wake-up; one for
//!   another queue goes to that queue's box. With `io = pool`, or when
//!   io_uring cannot be set up, the pool's worker threads (the NBD
//!   store's one I/O thread) hand each completion to the queue its tag
//!   names through the box and its eventfd;
//! - in-flight journals: [`JournalFiles`] in the configured directory
//!   (`/run/xbb-serve`), one file per queue mapped shared, so that the next
//!   xbb-serve takes the vbd over if this one dies or hands it over.
//!
//! The hand-off: [`Host::lend`] starts the queue's thread with the queue
//! and its [`XenQueueHost`]; [`Host::recall`] posts [`Work::RECALL`]; when
//! `Queue::recall` answers `true` the thread gives both back over a channel
//! and wakes the instance's thread, which hands the
//! queue to `Instance::give_back` ([`XenHost::take_reports`]).

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::bounce::Bounce;
use super::ffi::{self, AnonPages, CopyDir, CopyOp, Evtchn, Gnttab, Mapping, Wakeup, Xs};
use super::window::{Range, Window};
use xbb::handoff::{Gate, Post, Work};
use xbb::host::{
    DomId, EvtchnError, EvtchnPort, GrantError, GrantHandle, GrantMapOp, GrantRef, GrantUnmapOp,
    Granted, Host, IoError, IoOp, IoTag, JournalOpen, MapResult, MediumInfo, OpenError, OpenParams,
    QueueHost, QueueId, RemotePort, XenStore, XsError, XsTxn, PAGE_SIZE,
};
use xbb::journal::JournalId;
use xbb::queue::{Outcome, Queue};
use xbb::shmem::SharedMem;
use xbb::stats::Tunable;
use xbb_ustore::{
    locked, spawn_queue, HostStore, InstanceJournals, IoEngine, JournalFiles, StoreHandle,
    StoreOptions,
};

impl Range for Mapping {
    fn addr(&self) -> usize {
        Mapping::addr(self)
    }
}

/// Grants one queue's gntdev handle may hold mapped: the largest share the
/// core gives a queue (16 Ki pages).
const MAX_GRANTS: u32 = 16384;

/// Rings the control part's handle maps (16 queues of 16 pages).
const MAX_RING_GRANTS: u32 = 16 * 16;

/// Completions one queue keeps without growing (a queue has at most
/// `hw.xbb.max_requests` I/Os in flight).
const COMPLETIONS: usize = 1024;

/// Counters of the platform side, printed with the instance's table.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct XenHostStats {
    /// `xengnttab_map_domain_grant_refs` calls for data pages.
    pub map_calls: u64,
    /// Data pages mapped.
    pub pages_mapped: u64,
    /// Grant mappings that failed.
    pub map_failures: u64,
    /// `xengnttab_unmap` calls for data ranges.
    pub unmap_calls: u64,
    /// Unmaps the core asked for that named no mapping.
    pub bad_unmaps: u64,
    /// Pages (or parts of pages) copied with `GNTTABOP_copy`.
    pub pages_copied: u64,
    /// `GNTTABOP_copy` segments Xen refused (a bad or read-only grant).
    pub copy_failures: u64,
    /// Events sent to the front-end.
    pub notifies: u64,
    /// EOIs that waited on a timer.
    pub delayed_eois: u64,
    /// I/Os handed to the store.
    pub ios_submitted: u64,
    /// I/Os whose window pieces did not resolve.
    pub bad_iovecs: u64,
    /// Times a queue's thread was woken through its eventfd.
    pub queue_wakes: u64,
}

/// The counters every context adds to.
#[derive(Debug, Default)]
struct Counters {
    map_calls: AtomicU64,
    pages_mapped: AtomicU64,
    map_failures: AtomicU64,
    unmap_calls: AtomicU64,
    bad_unmaps: AtomicU64,
    pages_copied: AtomicU64,
    copy_failures: AtomicU64,
    notifies: AtomicU64,
    delayed_eois: AtomicU64,
    queue_wakes: AtomicU64,
}

fn bump(c: &AtomicU64, n: u64) {
    c.fetch_add(n, Ordering::Relaxed);
}

/// A completion waiting for its queue's thread.
type Completion = (IoTag, Result<(), IoError>);

/// One queue's inbox: its gate, its completions, the eventfd that wakes
/// its thread.
#[derive(Debug)]
pub struct QueueBox {
    gate: Gate,
    done: Mutex<VecDeque<Completion>>,
    wake: Wakeup,
}

impl QueueBox {
    fn new() -> std::io::Result<QueueBox> {
        Ok(QueueBox {
            gate: Gate::new(),
            done: Mutex::new(VecDeque::new()),
            wake: Wakeup::new()?,
        })
    }

    /// Posts work; writes the eventfd only when the gate says so.
    fn post(&self, work: Work) {
        if self.gate.post(work) == Post::Wake {
            self.wake.wake();
        }
    }
}

/// What a queue's thread tells the instance's thread.
// Sent once per queue and connection: boxing would only add an allocation.
#[allow(clippy::large_enum_variant)]
enum Report {
    /// Recalled and drained: the queue and its host, home.
    Home(Queue, XenQueueHost),
    /// An outcome that ends the connection.
    Failed(Outcome),
}

/// The platform of one instance in a dom0 user-space back-end: the control
/// part.
#[derive(Debug)]
pub struct XenHost {
    xs: Xs,
    /// The control part's gntdev handle: the rings.
    gnt: Gnttab,
    /// Data pages are copied, not mapped.
    copy: bool,
    rings: Vec<(QueueId, Mapping)>,
    /// Each queue's host while it is home (created at its first bind).
    queues: Vec<Option<XenQueueHost>>,
    /// Each queue's thread while it is lent.
    threads: Vec<Option<JoinHandle<()>>>,
    boxes: Arc<Vec<Arc<QueueBox>>>,
    reports: (Sender<Report>, Receiver<Report>),
    window_pages: u32,
    store: HostStore,
    /// The engine asked for.
    io: IoEngine,
    wake: Arc<Wakeup>,
    counters: Arc<Counters>,
    removed: bool,
    /// Where journals are kept, and which queue's each open one is.
    journals: Option<InstanceJournals>,
}

fn xs_err(e: i32) -> XsError {
    match e {
        libc::ENOENT => XsError::NotFound,
        libc::EAGAIN => XsError::Again,
        libc::EACCES | libc::EPERM => XsError::Denied,
        e => XsError::Other(e),
    }
}

impl XenHost {
    /// Opens the instance's XenStore connection and grant device. Queue
    /// reports wake `wake`. With `copy`, data pages go through a bounce
    /// window with `GNTTABOP_copy` instead of being mapped (see
    /// [`super::bounce`]). Stores emulate `sector_size`-byte logical
    /// sectors (512 or 4096; a medium with larger ones imposes its own).
    /// File and device I/O is carried out by `io` (io_uring falls back
    /// to the worker pool when it cannot be set up). In-flight journals
    /// are kept in `journal_dir` (none: no journal).
    pub fn new(
        wake: Arc<Wakeup>,
        copy: bool,
        sector_size: u32,
        io: IoEngine,
        journal_dir: Option<std::path::PathBuf>,
    ) -> std::io::Result<XenHost> {
        let n = Tunable::MaxQueues.desc().max as usize;
        let mut boxes = Vec::with_capacity(n);
        for _ in 0..n {
            boxes.push(Arc::new(QueueBox::new()?));
        }
        Ok(XenHost {
            xs: Xs::open()?,
            gnt: Gnttab::open(MAX_RING_GRANTS)?,
            copy,
            rings: Vec::new(),
            queues: (0..n).map(|_| None).collect(),
            threads: (0..n).map(|_| None).collect(),
            boxes: Arc::new(boxes),
            reports: mpsc::channel(),
            window_pages: 0,
            store: HostStore::new(StoreOptions {
                sector_size,
                engine: io,
                ..StoreOptions::default()
            }),
            io,
            wake,
            counters: Arc::new(Counters::default()),
            removed: false,
            journals: journal_dir.map(|d| InstanceJournals::new(JournalFiles::new(d))),
        })
    }

    /// The instance's XenStore connection (its watches too).
    pub fn xs(&mut self) -> &mut Xs {
        &mut self.xs
    }

    /// The toolstack removed the device's directory: from now on writes
    /// fail as if the nodes were gone, so that detaching does not create
    /// the directory again (xenstored makes missing parents on a write).
    pub fn set_removed(&mut self) {
        self.removed = true;
    }

    /// What the queues' threads reported since the last call: queues that
    /// came home (with their hosts taken back and their threads joined) and
    /// outcomes that end the connection.
    pub fn take_reports(&mut self) -> (Vec<Queue>, Vec<Outcome>) {
        let (mut home, mut failed) = (Vec::new(), Vec::new());
        while let Ok(r) = self.reports.1.try_recv() {
            match r {
                Report::Home(q, qh) => {
                    let id = q.id() as usize;
                    if let Some(t) = self.threads.get_mut(id).and_then(Option::take) {
                        let _ = t.join();
                    }
                    if let Some(slot) = self.queues.get_mut(id) {
                        *slot = Some(qh);
                    }
                    home.push(q);
                }
                Report::Failed(o) => failed.push(o),
            }
        }
        (home, failed)
    }

    /// I/Os the store has not completed yet.
    pub fn in_flight(&self) -> u64 {
        self.store.in_flight()
    }

    /// The platform's counters.
    pub fn stats(&self) -> XenHostStats {
        let c = &self.counters;
        let r = |a: &AtomicU64| a.load(Ordering::Relaxed);
        XenHostStats {
            map_calls: r(&c.map_calls),
            pages_mapped: r(&c.pages_mapped),
            map_failures: r(&c.map_failures),
            unmap_calls: r(&c.unmap_calls),
            bad_unmaps: r(&c.bad_unmaps),
            pages_copied: r(&c.pages_copied),
            copy_failures: r(&c.copy_failures),
            notifies: r(&c.notifies),
            delayed_eois: r(&c.delayed_eois),
            ios_submitted: self.store.submitted(),
            bad_iovecs: self.store.bad_iovecs(),
            queue_wakes: r(&c.queue_wakes),
        }
    }

    /// The host of queue `queue`, made at its first bind.
    fn queue_host(&mut self, queue: QueueId) -> Result<&mut XenQueueHost, EvtchnError> {
        let slot = self
            .queues
            .get_mut(queue as usize)
            .ok_or(EvtchnError::General)?;
        if slot.is_none() {
            let qbox = Arc::clone(&self.boxes[queue as usize]);
            *slot = Some(
                XenQueueHost::open(queue, self.copy, qbox, Arc::clone(&self.counters))
                    .map_err(|_| EvtchnError::General)?,
            );
        }
        slot.as_mut().ok_or(EvtchnError::General)
    }
}

impl XenStore for XenHost {
    fn xs_read(&mut self, txn: XsTxn, path: &str, buf: &mut [u8]) -> Result<usize, XsError> {
        let v = self.xs.read(txn.0, path).map_err(xs_err)?;
        let dst = buf.get_mut(..v.len()).ok_or(XsError::TooLong)?;
        dst.copy_from_slice(&v);
        Ok(v.len())
    }

    fn xs_write(&mut self, txn: XsTxn, path: &str, value: &str) -> Result<(), XsError> {
        if self.removed {
            return Err(XsError::NotFound);
        }
        self.xs.write(txn.0, path, value.as_bytes()).map_err(xs_err)
    }

    fn xs_remove(&mut self, txn: XsTxn, path: &str) -> Result<(), XsError> {
        match self.xs.rm(txn.0, path) {
            Ok(()) | Err(libc::ENOENT) => Ok(()),
            Err(e) => Err(xs_err(e)),
        }
    }

    fn xs_transaction_start(&mut self) -> Result<XsTxn, XsError> {
        self.xs.transaction_start().map(XsTxn).map_err(xs_err)
    }

    fn xs_transaction_end(&mut self, txn: XsTxn, commit: bool) -> Result<(), XsError> {
        self.xs.transaction_end(txn.0, commit).map_err(xs_err)
    }
}

/// A `GNTST_*` status of a refused copy, as the core sees it.
fn copy_status(st: i16) -> GrantError {
    match st {
        // GNTST_bad_domain, GNTST_bad_gntref
        -2 | -3 => GrantError::BadRef,
        // GNTST_permission_denied
        -8 => GrantError::Denied,
        // GNTST_no_device_space, GNTST_no_space
        -7 | -13 => GrantError::NoSpace,
        // GNTST_general_error, GNTST_bad_page, GNTST_bad_copy_arg, ...
        _ => GrantError::General,
    }
}

/// One queue's platform: its own gntdev and event-channel handles, its
/// share of the window, the shared store. Owned by the queue's thread while
/// the queue is lent, by the control part otherwise.
#[derive(Debug)]
pub struct XenQueueHost {
    queue: QueueId,
    gnt: Gnttab,
    evt: Evtchn,
    port: Option<EvtchnPort>,
    /// When the delayed EOI is due, if one is pending.
    eoi_at: Option<Instant>,
    /// The first window page of the queue's share.
    base: u32,
    window: Window<Mapping>,
    copy: bool,
    bounce: Bounce,
    bounce_mem: Option<AnonPages>,
    copies: Vec<CopyOp>,
    refs: Vec<GrantRef>,
    store: Option<StoreHandle>,
    qbox: Arc<QueueBox>,
    counters: Arc<Counters>,
}

impl XenQueueHost {
    fn open(
        queue: QueueId,
        copy: bool,
        qbox: Arc<QueueBox>,
        counters: Arc<Counters>,
    ) -> std::io::Result<XenQueueHost> {
        Ok(XenQueueHost {
            queue,
            gnt: Gnttab::open(MAX_GRANTS)?,
            evt: Evtchn::open()?,
            port: None,
            eoi_at: None,
            base: 0,
            window: Window::default(),
            copy,
            bounce: Bounce::default(),
            bounce_mem: None,
            copies: Vec::new(),
            refs: Vec::new(),
            store: None,
            qbox,
            counters,
        })
    }

    /// Makes the tables for the share `pages` of the window (control, at
    /// lend).
    fn prepare(&mut self, share: core::ops::Range<u32>, store: Option<StoreHandle>) -> bool {
        let pages = share.end.saturating_sub(share.start);
        self.release_share(0);
        self.base = share.start;
        self.store = store;
        if let Ok(mut done) = self.qbox.done.lock() {
            done.clear();
            if done.try_reserve(COMPLETIONS).is_err() {
                return false;
            }
        }
        if self.copy {
            let Ok(mem) = AnonPages::new(pages.max(1) as usize) else {
                return false;
            };
            let Ok(b) = Bounce::reserve(mem.addr(), pages) else {
                return false;
            };
            self.bounce = b;
            self.bounce_mem = Some(mem);
            self.copies = Vec::new();
            return self.copies.try_reserve_exact(pages as usize).is_ok();
        }
        match self.window.reserve(pages) {
            Ok(old) => self.unmap_ranges(old),
            Err(_) => return false,
        }
        self.refs = Vec::new();
        self.refs.try_reserve_exact(pages as usize).is_ok()
    }

    /// Drops the share's tables (control, the queue home); leaks what the
    /// store may still touch (`in_flight` I/Os).
    fn release_share(&mut self, in_flight: u64) {
        self.store = None;
        self.bounce = Bounce::default();
        if let Some(mem) = self.bounce_mem.take() {
            if in_flight != 0 {
                core::mem::forget(mem);
            }
        }
        let left = self.window.release();
        if in_flight != 0 {
            core::mem::forget(left);
        } else {
            self.unmap_ranges(left);
        }
    }

    /// Unmasks the port when its delayed EOI is due; how long until it is
    /// (`None`: none pending).
    fn expire_eoi(&mut self) -> Option<Duration> {
        let at = self.eoi_at?;
        let now = Instant::now();
        if at <= now {
            self.eoi_at = None;
            if let Some(p) = self.port {
                self.evt.unmask(p);
            }
            return None;
        }
        Some(at - now)
    }

    /// Whether the queue's port fired (the port stays masked until the
    /// EOI); ports of no queue are unmasked and skipped. Reads the
    /// descriptor until the queue's port comes, not until it is empty: the
    /// handle has that one port bound, so one read finds it, and anything
    /// left keeps the descriptor readable for the next poll (a read that
    /// finds nothing is a system call, costly in a PV dom0, where each one
    /// passes through Xen).
    fn take_event(&mut self) -> bool {
        while let Some(p) = self.evt.pending() {
            if Some(p) == self.port {
                return true;
            }
            self.evt.unmask(p);
        }
        false
    }

    /// Runs the copies gathered in `self.copies` and counts the outcome.
    fn run_copies(&mut self) -> Result<(), i32> {
        let r = match self.bounce_mem.as_mut() {
            Some(mem) => self.gnt.copy_pages(mem, &mut self.copies),
            None => Err(libc::EINVAL),
        };
        for c in &self.copies {
            if c.ok() {
                bump(&self.counters.pages_copied, 1);
            } else {
                bump(&self.counters.copy_failures, 1);
            }
        }
        r
    }

    /// A window page as an index into the share's tables.
    fn local(&self, page: u32) -> Option<u32> {
        page.checked_sub(self.base)
    }

    fn copy_map_batch(
        &mut self,
        dom: DomId,
        ops: &[GrantMapOp],
        results: &mut [Result<GrantHandle, GrantError>],
    ) {
        let room = self.copies.capacity().max(1);
        for (ops, results) in ops.chunks(room).zip(results.chunks_mut(room)) {
            // Copy every page in (a guest WRITE reads it; a guest READ
            // that fails must hand back the guest's own bytes), then enter
            // the pages whose copy succeeded.
            self.copies.clear();
            for (op, r) in ops.iter().zip(results.iter_mut()) {
                match self.local(op.window_page.0) {
                    Some(p) if self.bounce.is_free(p) => {
                        self.copies.push(CopyOp {
                            dir: CopyDir::FromGuest,
                            dom,
                            gref: op.gref,
                            guest_offset: 0,
                            local: p as usize * PAGE_SIZE,
                            len: PAGE_SIZE as u16,
                            status: 0,
                        });
                        *r = Ok(GrantHandle(0));
                    }
                    _ => *r = Err(GrantError::General),
                }
            }
            let call = self.run_copies();
            let mut k = 0;
            for (op, r) in ops.iter().zip(results.iter_mut()) {
                if r.is_ok() {
                    let c = self.copies[k];
                    k += 1;
                    let p = op.window_page.0 - self.base;
                    *r = match call {
                        Err(libc::ENOMEM) => Err(GrantError::NoSpace),
                        _ if !c.ok() => Err(copy_status(c.status)),
                        _ => self
                            .bounce
                            .insert(p, dom, op.gref, !op.readonly)
                            .map_err(|_| GrantError::General),
                    };
                }
                if r.is_err() {
                    bump(&self.counters.map_failures, 1);
                }
            }
        }
    }

    fn copy_unmap_batch(&mut self, ops: &[GrantUnmapOp]) {
        self.copies.clear();
        for op in ops {
            let Some(p) = self.local(op.window_page.0) else {
                bump(&self.counters.bad_unmaps, 1);
                continue;
            };
            let e = match self.bounce.remove(p, op.handle) {
                Ok(e) => e,
                Err(_) => {
                    bump(&self.counters.bad_unmaps, 1);
                    continue;
                }
            };
            // Copy out what the store read into the page, before the core
            // answers the request.
            let Some((off, len)) = e.dirty() else {
                continue;
            };
            if self.copies.len() == self.copies.capacity() {
                let _ = self.run_copies();
                self.copies.clear();
            }
            self.copies.push(CopyOp {
                dir: CopyDir::ToGuest,
                dom: e.dom,
                gref: e.gref,
                guest_offset: off,
                local: p as usize * PAGE_SIZE + usize::from(off),
                len,
                status: 0,
            });
        }
        let _ = self.run_copies();
        self.copies.clear();
    }

    fn unmap_ranges(&mut self, ranges: Vec<Mapping>) {
        for m in ranges {
            bump(&self.counters.unmap_calls, 1);
            let _ = self.gnt.unmap(m);
        }
    }

    fn map_one(&mut self, dom: DomId, op: &GrantMapOp) -> Result<GrantHandle, GrantError> {
        self.refs.clear();
        self.refs.push(op.gref);
        let p = self.local(op.window_page.0).ok_or(GrantError::General)?;
        self.map_run(dom, p, 1, !op.readonly)
    }

    /// Maps `self.refs` at share pages `first..` as one range.
    fn map_run(
        &mut self,
        dom: DomId,
        first: u32,
        pages: u32,
        writable: bool,
    ) -> Result<GrantHandle, GrantError> {
        if self.window.can_insert(first, pages).is_err() {
            return Err(GrantError::General);
        }
        bump(&self.counters.map_calls, 1);
        match self.gnt.map(dom, &mut self.refs, writable) {
            Ok(m) => match self.window.insert(first, pages, writable, m) {
                Ok(h) => {
                    bump(&self.counters.pages_mapped, u64::from(pages));
                    Ok(h)
                }
                Err((_, m)) => {
                    let _ = self.gnt.unmap(m);
                    Err(GrantError::General)
                }
            },
            Err(libc::ENOMEM) | Err(libc::ENOSPC) => Err(GrantError::NoSpace),
            Err(libc::EPERM) | Err(libc::EACCES) => Err(GrantError::Denied),
            Err(_) => Err(GrantError::BadRef),
        }
    }
}

impl QueueHost for XenQueueHost {
    fn map_batch(&mut self, dom: DomId, ops: &[GrantMapOp], results: &mut [MapResult]) {
        if self.copy {
            self.copy_map_batch(dom, ops, results);
            return;
        }
        let mut i = 0;
        while i < ops.len() {
            // The longest run of consecutive window pages with one
            // protection: one contiguous range.
            let mut j = i + 1;
            while j < ops.len()
                && ops[j].readonly == ops[i].readonly
                && ops[j].window_page.0 == ops[j - 1].window_page.0.wrapping_add(1)
            {
                j += 1;
            }
            self.refs.clear();
            self.refs.extend(ops[i..j].iter().map(|o| o.gref));
            let n = (j - i) as u32;
            let first = self.local(ops[i].window_page.0);
            let r = match first {
                Some(p) => self.map_run(dom, p, n, !ops[i].readonly),
                None => Err(GrantError::General),
            };
            match r {
                Ok(h) => results[i..j].iter_mut().for_each(|r| *r = Ok(h)),
                Err(e) if n == 1 => {
                    bump(&self.counters.map_failures, 1);
                    results[i] = Err(e);
                }
                Err(_) => {
                    // All or nothing failed: find out which, one by one.
                    for k in i..j {
                        results[k] = self.map_one(dom, &ops[k]);
                        if results[k].is_err() {
                            bump(&self.counters.map_failures, 1);
                        }
                    }
                }
            }
            i = j;
        }
    }

    fn unmap_batch(&mut self, ops: &[GrantUnmapOp]) {
        if self.copy {
            self.copy_unmap_batch(ops);
            return;
        }
        for op in ops {
            let r = match self.local(op.window_page.0) {
                Some(p) => self.window.remove(p, op.handle),
                None => Err(super::window::WindowError::NotMapped),
            };
            match r {
                Ok(Some(m)) => {
                    bump(&self.counters.unmap_calls, 1);
                    let _ = self.gnt.unmap(m);
                }
                Ok(None) => {}
                Err(_) => bump(&self.counters.bad_unmaps, 1),
            }
        }
    }

    fn copy_in(&mut self, from: Granted<'_>, out: &mut [u8]) -> Result<(), GrantError> {
        let Granted { dom, grefs } = from;
        if out.len() > grefs.len().saturating_mul(PAGE_SIZE) {
            return Err(GrantError::General);
        }
        self.gnt
            .copy_in(dom, grefs, out)
            .map_err(|_| GrantError::BadRef)?;
        bump(&self.counters.pages_copied, grefs.len() as u64);
        Ok(())
    }

    fn evtchn_notify(&mut self, queue: QueueId) {
        if let Some(p) = self.port.filter(|_| queue == self.queue) {
            if self.evt.notify(p).is_ok() {
                bump(&self.counters.notifies, 1);
            }
        }
    }

    fn evtchn_eoi(&mut self, queue: QueueId, delay_ms: u32) {
        let Some(p) = self.port.filter(|_| queue == self.queue) else {
            return;
        };
        if delay_ms == 0 {
            self.eoi_at = None;
            self.evt.unmask(p);
        } else {
            bump(&self.counters.delayed_eois, 1);
            self.eoi_at = Some(Instant::now() + Duration::from_millis(u64::from(delay_ms)));
        }
    }

    fn store_submit(&mut self, tag: IoTag, op: IoOp<'_>) -> Result<(), IoError> {
        let Some(store) = self.store.as_mut() else {
            return Err(IoError::Gone);
        };
        let (window, bounce, copy) = (&self.window, &mut self.bounce, self.copy);
        let base = self.base as usize * PAGE_SIZE;
        // The RawIoVec obligation: every piece resolves to pages mapped
        // with the right protection (or to bounce pages standing for such
        // grants) in this queue's share; a range is unmapped only when the
        // core releases its last page, which it does after the completion,
        // and release_share leaks ranges (and the bounce memory) while I/O
        // is in flight. The pieces go into the handle's own buffer: nothing
        // is allocated per I/O.
        store.submit_into(tag, op, |iov, write, out| {
            if copy {
                bounce.resolve_into(iov, base, write, out)
            } else {
                window.resolve_into(iov, base, write, out)
            }
        })
    }

    fn schedule_run(&mut self, queue: QueueId) {
        if queue == self.queue {
            self.qbox.post(Work::RUN);
        }
    }

    fn now_ms(&self) -> u64 {
        // Called on the request path (persistent grants' last use): a
        // clock read that is no system call in a PV dom0.
        xbb_ustore::monotonic_coarse_ms()
    }
}

/// Logs which engine serves file and device I/O, once per process (and
/// again only if that changes, e.g. io_uring refused for a later store).
fn log_engine(asked: IoEngine, serving: IoEngine) {
    use std::sync::atomic::AtomicU8;
    static LOGGED: AtomicU8 = AtomicU8::new(0);
    let code = match serving {
        IoEngine::Pool => 1,
        IoEngine::Uring => 2,
    };
    if LOGGED.swap(code, Ordering::Relaxed) == code {
        return;
    }
    let why = if asked == IoEngine::Uring && serving == IoEngine::Pool {
        " (io = uring: io_uring could not be set up, falling back)"
    } else {
        ""
    };
    super::serve::log(&format!("store I/O engine: {}{why}", serving.name()));
}

/// The body of a lent queue's thread: polls the queue's event channel and
/// its eventfd, serves the queue pass by pass, and gives it back once
/// recalled and drained.
fn serve_queue(mut queue: Queue, mut qh: XenQueueHost, reports: Sender<Report>, ctl: Arc<Wakeup>) {
    let qbox = Arc::clone(&qh.qbox);
    let mut done: VecDeque<Completion> = VecDeque::with_capacity(COMPLETIONS);
    let mut failed = false;
    // What the last poll found readable: the event channel's descriptor
    // is read only then (and at the first pass), not at every pass.
    let mut ready = [true; 3];
    loop {
        let Some(mut work) = qbox.gate.begin() else {
            return;
        };
        if let Some(s) = &qh.store {
            // The ring's completions, delivered on this thread: this
            // queue's land in its box while the pass runs (no wake-up).
            s.reap();
        }
        std::mem::swap(&mut *locked(&qbox.done), &mut done);
        if core::mem::take(&mut ready[0]) && qh.take_event() {
            work = work.union(Work::EVENT);
        }
        let end = queue.pass(&mut qh, work, done.drain(..));
        if let Some(s) = &qh.store {
            // Everything the pass submitted, in one system call; then what
            // completed during it (a read the page cache served does),
            // posted as work for the next pass, which then runs without a
            // poll in between.
            s.kick();
            s.reap();
        }
        if let Some(outcome) = end.failed.filter(|_| !failed) {
            failed = true;
            let _ = reports.send(Report::Failed(outcome));
            ctl.wake();
        }
        if end.home {
            qbox.gate.give_back();
            let _ = reports.send(Report::Home(queue, qh));
            ctl.wake();
            return;
        }
        if qbox.gate.end() {
            continue;
        }
        let timeout = qh
            .expire_eoi()
            .map_or(-1, |d| d.as_millis().clamp(1, 60_000) as i32);
        // The ring's descriptor, readable while a completion waits: the
        // next pass reaps it.
        let ring = qh.store.as_ref().and_then(StoreHandle::completion_fd);
        let fds = [qh.evt.fd(), qbox.wake.fd(), ring.unwrap_or(-1)];
        let n = if ring.is_some() { 3 } else { 2 };
        if ffi::poll_readable(&fds[..n], timeout, &mut ready[..n]).is_err() {
            ready = [true; 3];
        }
        if ready[1] {
            qbox.wake.clear();
            bump(&qh.counters.queue_wakes, 1);
        }
        let _ = qh.expire_eoi();
    }
}

impl Host for XenHost {
    fn window_reserve(&mut self, pages: u32) -> Result<(), GrantError> {
        // Each queue makes the tables of its share when it is lent.
        self.window_pages = pages;
        Ok(())
    }

    fn window_release(&mut self) {
        let in_flight = self.in_flight();
        for qh in self.queues.iter_mut().flatten() {
            qh.release_share(in_flight);
        }
        self.window_pages = 0;
    }

    fn map_ring(&mut self, queue: QueueId, ring: Granted<'_>) -> Result<SharedMem, GrantError> {
        let Granted { dom, grefs } = ring;
        if grefs.is_empty() || self.rings.iter().any(|(q, _)| *q == queue) {
            return Err(GrantError::General);
        }
        let mut refs = Vec::new();
        refs.try_reserve_exact(grefs.len())
            .map_err(|_| GrantError::NoSpace)?;
        refs.extend_from_slice(grefs);
        match self.gnt.map_ring(dom, &mut refs) {
            Ok((mem, m)) => {
                self.rings.push((queue, m));
                Ok(mem)
            }
            Err(libc::ENOMEM) => Err(GrantError::NoSpace),
            Err(_) => Err(GrantError::BadRef),
        }
    }

    fn unmap_ring(&mut self, queue: QueueId, ring: SharedMem) {
        let Some(at) = self.rings.iter().position(|(q, _)| *q == queue) else {
            bump(&self.counters.bad_unmaps, 1);
            return;
        };
        if self.rings[at].1.addr() != ring.as_ptr() as usize {
            bump(&self.counters.bad_unmaps, 1);
            return;
        }
        // The core hands the ring back: nothing refers to it any more.
        let _ = ring;
        let (_, m) = self.rings.swap_remove(at);
        let _ = self.gnt.unmap(m);
    }

    fn evtchn_bind(&mut self, queue: QueueId, remote: RemotePort) -> Result<(), EvtchnError> {
        let qh = self.queue_host(queue)?;
        if qh.port.is_some() {
            return Err(EvtchnError::General);
        }
        let port = qh
            .evt
            .bind_interdomain(remote.dom, remote.port)
            .map_err(|_| EvtchnError::BadPort)?;
        qh.port = Some(port);
        qh.eoi_at = None;
        Ok(())
    }

    fn evtchn_unbind(&mut self, queue: QueueId) {
        if let Some(Some(qh)) = self.queues.get_mut(queue as usize) {
            if let Some(p) = qh.port.take() {
                qh.evt.unbind(p);
            }
            qh.eoi_at = None;
        }
    }

    fn store_open(&mut self, params: OpenParams<'_>) -> Result<MediumInfo, OpenError> {
        // xl's `phy` names both block devices and image files (which its
        // hotplug script would loop-mount); what the node is decides, by
        // the one rule (`StoreKind::for_node`); an NBD URI is an NBD store.
        let boxes = Arc::clone(&self.boxes);
        let info = self.store.open(params, xbb_ustore::probe, move |tag, r| {
            if let Some(b) = boxes.get(Queue::of_tag(tag) as usize) {
                locked(&b.done).push_back((tag, r));
                b.post(Work::IO);
            }
        })?;
        if let Some(serving) = self.store.engine() {
            log_engine(self.io, serving);
        }
        if params.direct_io_safe && !info.is_device {
            let how = match self.store.direct_io() {
                Some(true) => "O_DIRECT, past the page cache",
                _ => "its file system refuses O_DIRECT: through the page cache",
            };
            super::serve::log(&format!("{}: direct-io-safe: {how}", params.path));
        }
        Ok(info)
    }

    fn store_info(&self) -> MediumInfo {
        self.store.info()
    }

    fn store_close(&mut self) {
        // Waits for queued I/O; every queue is home.
        self.store.close();
    }

    fn root_mounted(&self) -> bool {
        true
    }

    fn waits_for_hotplug(&self) -> bool {
        true
    }

    fn journal_open(&mut self, id: &JournalId, how: JournalOpen) -> Option<SharedMem> {
        let journals = self.journals.as_mut()?;
        match journals.open(id, how) {
            Ok(mem) => mem,
            Err(e) => {
                let path = journals.files().path(id);
                super::serve::log(&format!("journal {}: {e}", path.display()));
                None
            }
        }
    }

    fn journal_close(&mut self, queue: QueueId, journal: SharedMem, keep: bool) {
        if !xbb_ustore::close_journal(self.journals.as_mut(), queue, journal, keep) {
            bump(&self.counters.bad_unmaps, 1);
        }
    }

    fn lend(&mut self, queue: Queue) -> Result<(), Queue> {
        let id = queue.id() as usize;
        let store = self.store.handle();
        let Some(mut qh) = self.queues.get_mut(id).and_then(Option::take) else {
            return Err(queue);
        };
        if !qh.prepare(queue.window_share(), store) {
            self.queues[id] = Some(qh);
            return Err(queue);
        }
        let qbox = Arc::clone(&self.boxes[id]);
        if !qbox.gate.lend() {
            self.queues[id] = Some(qh);
            return Err(queue);
        }
        let reports = self.reports.0.clone();
        let ctl = Arc::clone(&self.wake);
        let serve = |q, qh| serve_queue(q, qh, reports, ctl);
        match spawn_queue(&qbox.gate, queue, qh, serve) {
            Ok(t) => {
                self.threads[id] = Some(t);
                Ok(())
            }
            Err(Some((q, qh))) => {
                self.queues[id] = Some(qh);
                Err(q)
            }
            Err(None) => Ok(()),
        }
    }

    fn recall(&mut self, queue: QueueId) {
        if let Some(b) = self.boxes.get(queue as usize) {
            b.post(Work::RECALL);
        }
    }
}

impl Drop for XenHost {
    fn drop(&mut self) {
        self.store_close();
        // Queues still out (a drain that never ended): their threads keep
        // their hosts; nothing here waits for them.
        for qh in self.queues.iter_mut().flatten() {
            if let Some(p) = qh.port.take() {
                qh.evt.unbind(p);
            }
            qh.release_share(0);
        }
        while let Some((_, m)) = self.rings.pop() {
            // A ring the core never handed back: nobody refers to it now
            // that the instance is gone.
            let _ = self.gnt.unmap(m);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refused_copies_map_to_what_the_core_answers() {
        // grant_table.h: GNTST_general_error -1, bad_domain -2,
        // bad_gntref -3, no_device_space -7, permission_denied -8,
        // bad_copy_arg -10, no_space -13.
        assert_eq!(copy_status(-2), GrantError::BadRef);
        assert_eq!(copy_status(-3), GrantError::BadRef);
        assert_eq!(copy_status(-8), GrantError::Denied);
        assert_eq!(copy_status(-13), GrantError::NoSpace);
        assert_eq!(copy_status(-7), GrantError::NoSpace);
        assert_eq!(copy_status(-1), GrantError::General);
        assert_eq!(copy_status(-10), GrantError::General);
    }
}
