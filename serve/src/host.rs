//! [`XenHost`]: the core's platform traits over a real dom0's user-space
//! interfaces, for one `vbd`.
//!
//! - [`XenStore`]: libxenstore, on the instance's own connection (which also
//!   carries its watches);
//! - [`Grants`]: libxengnttab. Rings are mapped whole. Data pages are
//!   mapped one contiguous range per run of consecutive window pages of a
//!   batch (see [`super::window`]), or, in copy mode, copied with
//!   `GNTTABOP_copy` through a bounce window (see [`super::bounce`]).
//!   Indirect pages are copied;
//! - [`EventChannel`]: libxenevtchn, one local port per queue. A port that
//!   fired stays masked until [`EventChannel::evtchn_eoi`] unmasks it, at
//!   once or when its timer expires ([`XenHost::expire_eois`]);
//! - [`Deferred`]: runs asked for are kept as a bitmap the instance's thread
//!   serves before it sleeps;
//! - [`Store`]: [`xbb_ustore`]'s file and device stores, whose worker
//!   threads post completions to a queue and wake the instance's thread.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::bounce::Bounce;
use super::ffi::{AnonPages, CopyDir, CopyOp, Evtchn, Gnttab, Mapping, Wakeup, Xs};
use super::window::{Range, Window};
use xbb::host::{
    Deferred, DomId, EventChannel, EvtchnError, EvtchnPort, GrantError, GrantHandle, GrantMapOp,
    GrantRef, GrantUnmapOp, Granted, Grants, Host, IoError, IoOp, IoTag, MapResult, MediumInfo,
    OpenError, OpenParams, QueueId, RemotePort, Store, XenStore, XsError, XsTxn, PAGE_SIZE,
};
use xbb::shmem::SharedMem;
use xbb_ustore::HostStore;

impl Range for Mapping {
    fn addr(&self) -> usize {
        Mapping::addr(self)
    }
}

/// Grants one gntdev handle may hold mapped: the largest window the core
/// asks for (16 queues of 16 Ki pages) plus rings.
const MAX_GRANTS: u32 = 16 * 16384 + 16 * 16;

/// Completions posted by store workers, drained by the instance's thread.
pub type Completions = Arc<Mutex<VecDeque<(IoTag, Result<(), IoError>)>>>;

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
}

struct Port {
    queue: QueueId,
    port: EvtchnPort,
    /// When the delayed EOI is due, if one is pending.
    eoi_at: Option<Instant>,
}

/// The platform of one instance in a dom0 user-space back-end.
pub struct XenHost {
    xs: Xs,
    gnt: Gnttab,
    evt: Evtchn,
    window: Window<Mapping>,
    /// Data pages are copied, not mapped.
    copy: bool,
    bounce: Bounce,
    bounce_mem: Option<AnonPages>,
    copies: Vec<CopyOp>,
    rings: Vec<(QueueId, Mapping)>,
    ports: Vec<Port>,
    runs: u32,
    store: HostStore,
    done: Completions,
    wake: Arc<Wakeup>,
    epoch: Instant,
    refs: Vec<GrantRef>,
    stats: XenHostStats,
    removed: bool,
}

impl core::fmt::Debug for XenHost {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("XenHost")
            .field("window_pages", &self.window.pages())
            .field("rings", &self.rings.len())
            .field("stats", &self.stats)
            .finish()
    }
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
    /// Opens the instance's XenStore connection, grant and event-channel
    /// devices. Completions will wake `wake`. With `copy`, data pages go
    /// through a bounce window with `GNTTABOP_copy` instead of being
    /// mapped (see [`super::bounce`]). Stores emulate `sector_size`-byte
    /// logical sectors (512 or 4096; a medium with larger ones imposes
    /// its own).
    pub fn new(wake: Arc<Wakeup>, copy: bool, sector_size: u32) -> std::io::Result<XenHost> {
        Ok(XenHost {
            xs: Xs::open()?,
            gnt: Gnttab::open(MAX_GRANTS)?,
            evt: Evtchn::open()?,
            window: Window::default(),
            copy,
            bounce: Bounce::default(),
            bounce_mem: None,
            copies: Vec::new(),
            rings: Vec::new(),
            ports: Vec::new(),
            runs: 0,
            store: HostStore::new(sector_size, None),
            done: Arc::new(Mutex::new(VecDeque::new())),
            wake,
            epoch: Instant::now(),
            refs: Vec::new(),
            stats: XenHostStats::default(),
            removed: false,
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

    /// The event-channel descriptor to poll.
    pub fn evtchn_fd(&self) -> i32 {
        self.evt.fd()
    }

    /// The next queue whose channel fired, if any. A port of no queue
    /// (unbound meanwhile) is unmasked and skipped.
    pub fn next_event(&mut self) -> Option<Option<QueueId>> {
        let port = self.evt.pending()?;
        match self.ports.iter().find(|p| p.port == port) {
            Some(p) => Some(Some(p.queue)),
            None => Some(None),
        }
    }

    /// The next run asked for with `schedule_run`, if any.
    pub fn take_run(&mut self) -> Option<QueueId> {
        if self.runs == 0 {
            return None;
        }
        let q = self.runs.trailing_zeros();
        self.runs &= !(1 << q);
        Some(q)
    }

    /// The next store completion, if any.
    pub fn take_completion(&mut self) -> Option<(IoTag, Result<(), IoError>)> {
        self.done.lock().ok()?.pop_front()
    }

    /// Unmasks the ports whose delayed EOI is due; returns how long until
    /// the next one (`None`: none pending).
    pub fn expire_eois(&mut self) -> Option<Duration> {
        let now = Instant::now();
        let mut next: Option<Duration> = None;
        for p in self.ports.iter_mut() {
            if let Some(at) = p.eoi_at {
                if at <= now {
                    p.eoi_at = None;
                    self.evt.unmask(p.port);
                } else {
                    let d = at - now;
                    next = Some(next.map_or(d, |n| n.min(d)));
                }
            }
        }
        next
    }

    /// I/Os the store has not completed yet.
    pub fn in_flight(&self) -> u64 {
        self.store.in_flight()
    }

    /// The platform's counters.
    pub fn stats(&self) -> XenHostStats {
        XenHostStats {
            ios_submitted: self.store.submitted,
            bad_iovecs: self.store.bad_iovecs,
            ..self.stats
        }
    }

    /// Pages of the data window that name a mapped grant, and ranges still
    /// mapped.
    pub fn window_usage(&self) -> (u32, usize) {
        if self.copy {
            return (self.bounce.used(), usize::from(self.bounce_mem.is_some()));
        }
        (self.window.mapped_pages(), self.window.live_groups())
    }

    /// Drops the bounce window; leaks its memory while the store may still
    /// touch it.
    fn release_bounce(&mut self) {
        self.bounce = Bounce::default();
        if let Some(mem) = self.bounce_mem.take() {
            if self.in_flight() != 0 {
                core::mem::forget(mem);
            }
        }
    }

    /// Runs the copies gathered in `self.copies` and counts the outcome.
    fn run_copies(&mut self) -> Result<(), i32> {
        let r = match self.bounce_mem.as_mut() {
            Some(mem) => self.gnt.copy_pages(mem, &mut self.copies),
            None => Err(libc::EINVAL),
        };
        for c in &self.copies {
            if c.ok() {
                self.stats.pages_copied += 1;
            } else {
                self.stats.copy_failures += 1;
            }
        }
        r
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
                if self.bounce.is_free(op.window_page.0) {
                    self.copies.push(CopyOp {
                        dir: CopyDir::FromGuest,
                        dom,
                        gref: op.gref,
                        guest_offset: 0,
                        local: op.window_page.0 as usize * PAGE_SIZE,
                        len: PAGE_SIZE as u16,
                        status: 0,
                    });
                    *r = Ok(GrantHandle(0));
                } else {
                    *r = Err(GrantError::General);
                }
            }
            let call = self.run_copies();
            let mut k = 0;
            for (op, r) in ops.iter().zip(results.iter_mut()) {
                if r.is_ok() {
                    let c = self.copies[k];
                    k += 1;
                    *r = match call {
                        Err(libc::ENOMEM) => Err(GrantError::NoSpace),
                        _ if !c.ok() => Err(copy_status(c.status)),
                        _ => self
                            .bounce
                            .insert(op.window_page.0, dom, op.gref, !op.readonly)
                            .map_err(|_| GrantError::General),
                    };
                }
                if r.is_err() {
                    self.stats.map_failures += 1;
                }
            }
        }
    }

    fn copy_unmap_batch(&mut self, ops: &[GrantUnmapOp]) {
        self.copies.clear();
        for op in ops {
            let e = match self.bounce.remove(op.window_page.0, op.handle) {
                Ok(e) => e,
                Err(_) => {
                    self.stats.bad_unmaps += 1;
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
                local: op.window_page.0 as usize * PAGE_SIZE + usize::from(off),
                len,
                status: 0,
            });
        }
        let _ = self.run_copies();
        self.copies.clear();
    }

    fn unmap_ranges(&mut self, ranges: Vec<Mapping>) {
        for m in ranges {
            self.stats.unmap_calls += 1;
            let _ = self.gnt.unmap(m);
        }
    }

    fn map_one(&mut self, dom: DomId, op: &GrantMapOp) -> Result<GrantHandle, GrantError> {
        self.refs.clear();
        self.refs.push(op.gref);
        self.map_run(dom, op.window_page.0, 1, !op.readonly)
    }

    /// Maps `self.refs` at window pages `first..` as one range.
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
        self.stats.map_calls += 1;
        match self.gnt.map(dom, &mut self.refs, writable) {
            Ok(m) => match self.window.insert(first, pages, writable, m) {
                Ok(h) => {
                    self.stats.pages_mapped += u64::from(pages);
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

impl Grants for XenHost {
    fn window_reserve(&mut self, pages: u32) -> Result<(), GrantError> {
        if self.copy {
            self.release_bounce();
            let mem = AnonPages::new(pages as usize).map_err(|_| GrantError::NoSpace)?;
            self.bounce = Bounce::reserve(mem.addr(), pages).map_err(|_| GrantError::NoSpace)?;
            self.bounce_mem = Some(mem);
            self.copies = Vec::new();
            self.copies
                .try_reserve_exact(pages as usize)
                .map_err(|_| GrantError::NoSpace)?;
            return Ok(());
        }
        let old = self
            .window
            .reserve(pages)
            .map_err(|_| GrantError::NoSpace)?;
        self.unmap_ranges(old);
        self.refs = Vec::new();
        self.refs
            .try_reserve_exact(pages as usize)
            .map_err(|_| GrantError::NoSpace)?;
        Ok(())
    }

    fn window_release(&mut self) {
        if self.copy {
            self.release_bounce();
            return;
        }
        let left = self.window.release();
        if self.in_flight() != 0 {
            // The store may still touch these pages: keep them mapped
            // (leaked) rather than hand the memory back.
            core::mem::forget(left);
            return;
        }
        self.unmap_ranges(left);
    }

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
            match self.map_run(dom, ops[i].window_page.0, n, !ops[i].readonly) {
                Ok(h) => results[i..j].iter_mut().for_each(|r| *r = Ok(h)),
                Err(e) if n == 1 => {
                    self.stats.map_failures += 1;
                    results[i] = Err(e);
                }
                Err(_) => {
                    // All or nothing failed: find out which, one by one.
                    for k in i..j {
                        results[k] = self.map_one(dom, &ops[k]);
                        if results[k].is_err() {
                            self.stats.map_failures += 1;
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
            match self.window.remove(op.window_page.0, op.handle) {
                Ok(Some(m)) => {
                    self.stats.unmap_calls += 1;
                    let _ = self.gnt.unmap(m);
                }
                Ok(None) => {}
                Err(_) => self.stats.bad_unmaps += 1,
            }
        }
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
            self.stats.bad_unmaps += 1;
            return;
        };
        if self.rings[at].1.addr() != ring.as_ptr() as usize {
            self.stats.bad_unmaps += 1;
            return;
        }
        // The core hands the ring back: nothing refers to it any more.
        let _ = ring;
        let (_, m) = self.rings.swap_remove(at);
        let _ = self.gnt.unmap(m);
    }

    fn copy_in(&mut self, from: Granted<'_>, out: &mut [u8]) -> Result<(), GrantError> {
        let Granted { dom, grefs } = from;
        if out.len() > grefs.len().saturating_mul(xbb::host::PAGE_SIZE) {
            return Err(GrantError::General);
        }
        self.gnt
            .copy_in(dom, grefs, out)
            .map_err(|_| GrantError::BadRef)?;
        self.stats.pages_copied += grefs.len() as u64;
        Ok(())
    }
}

impl EventChannel for XenHost {
    fn evtchn_bind(&mut self, queue: QueueId, remote: RemotePort) -> Result<(), EvtchnError> {
        let (dom, remote_port) = (remote.dom, remote.port);
        if self.ports.iter().any(|p| p.queue == queue) {
            return Err(EvtchnError::General);
        }
        let port = self
            .evt
            .bind_interdomain(dom, remote_port)
            .map_err(|_| EvtchnError::BadPort)?;
        self.ports.push(Port {
            queue,
            port,
            eoi_at: None,
        });
        Ok(())
    }

    fn evtchn_notify(&mut self, queue: QueueId) {
        if let Some(p) = self.ports.iter().find(|p| p.queue == queue) {
            if self.evt.notify(p.port).is_ok() {
                self.stats.notifies += 1;
            }
        }
    }

    fn evtchn_eoi(&mut self, queue: QueueId, delay_ms: u32) {
        let Some(p) = self.ports.iter_mut().find(|p| p.queue == queue) else {
            return;
        };
        if delay_ms == 0 {
            p.eoi_at = None;
            self.evt.unmask(p.port);
        } else {
            self.stats.delayed_eois += 1;
            p.eoi_at = Some(Instant::now() + Duration::from_millis(u64::from(delay_ms)));
        }
    }

    fn evtchn_unbind(&mut self, queue: QueueId) {
        if let Some(at) = self.ports.iter().position(|p| p.queue == queue) {
            let p = self.ports.swap_remove(at);
            self.evt.unbind(p.port);
        }
    }
}

impl Deferred for XenHost {
    fn schedule_run(&mut self, queue: QueueId) {
        if queue < 32 {
            self.runs |= 1 << queue;
        }
    }

    fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }
}

impl Store for XenHost {
    fn store_open(&mut self, params: OpenParams<'_>) -> Result<MediumInfo, OpenError> {
        // xl's `phy` names both block devices and image files (which its
        // hotplug script would loop-mount); what the node is decides, by
        // the one rule (`StoreKind::for_node`); an NBD URI is an NBD store.
        let q = Arc::clone(&self.done);
        let wake = Arc::clone(&self.wake);
        self.store.open(params, xbb_ustore::probe, move |tag, r| {
            if let Ok(mut q) = q.lock() {
                q.push_back((tag, r));
            }
            wake.wake();
        })
    }

    fn store_info(&self) -> MediumInfo {
        self.store.info()
    }

    fn store_submit(&mut self, tag: IoTag, op: IoOp<'_>) -> Result<(), IoError> {
        let (window, bounce, copy) = (&self.window, &mut self.bounce, self.copy);
        // The RawIoVec obligation: every piece resolves to pages mapped
        // with the right protection (or to bounce pages standing for such
        // grants); a range is unmapped only when the core releases its last
        // page, which it does after the completion, and window_release
        // leaks ranges (and the bounce memory) while I/O is in flight.
        self.store.submit(tag, op, |iov, write| {
            if copy {
                bounce.resolve(iov, write)
            } else {
                window.resolve(iov, write)
            }
        })
    }

    fn store_close(&mut self) {
        // Waits for queued I/O; completions land in the queue.
        self.store.close();
    }
}

impl Host for XenHost {
    fn root_mounted(&self) -> bool {
        true
    }

    fn waits_for_hotplug(&self) -> bool {
        true
    }
}

impl Drop for XenHost {
    fn drop(&mut self) {
        self.store_close();
        while let Some(p) = self.ports.pop() {
            self.evt.unbind(p.port);
        }
        let left = self.window.release();
        self.unmap_ranges(left);
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
