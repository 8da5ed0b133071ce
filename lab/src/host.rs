//! The simulated host's side of one back-end instance: [`SimHost`]
//! implements every trait of [`xbb::host`] over the simulated Xen of this
//! module's siblings.
//!
//! - `XenStore` (`xs_wire.h`): the shared [`Xenstored`]; the core's paths are
//!   absolute.
//! - `Grants` (`grant_table.h`, `GNTTABOP_map_grant_ref` /
//!   `GNTTABOP_unmap_grant_ref`): the data window is address space reserved
//!   `PROT_NONE`; each granted guest frame is really mapped at its window
//!   page (`MAP_FIXED` from the guest's memfd), read-only when the grant or
//!   the operation is, so a reqlist's pages form one contiguous buffer and a
//!   write through a read-only mapping faults. The ring gets its own
//!   reservation.
//! - `EventChannel` (`event_channel.h`): the shared [`EventHub`]; an event
//!   from the front-end becomes [`TaskEvent::Evtchn`] on the instance's
//!   channel.
//! - `Deferred`: [`TaskEvent::Run`].
//! - `Store`: a [`super::store`] store; window offsets become process
//!   addresses, completions become [`TaskEvent::Io`].

use std::collections::HashMap;
use std::io;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::mpsc::Sender;
use std::sync::{Arc, Mutex, MutexGuard};

use super::evtchn::EventHub;
use super::ffi::{PageState, Reservation};
use super::gnttab::GrantTable;
use super::memory::GuestMemory;
use super::store::{self, HostStore, IoFaults, RawIoVec, WriteCache};
use super::toolstack;
use super::xenstore::Xenstored;
use super::TaskEvent;
use xbb::host::{
    Deferred, DomId, EventChannel, EvtchnError, EvtchnPort, GrantError, GrantHandle, GrantMapOp,
    GrantUnmapOp, Granted, Grants, Host, IoError, IoOp, IoTag, IoVec, MapResult, MediumInfo,
    NodeKind, OpenError, OpenParams, QueueId, RemotePort, Store, XenStore, XsError, XsTxn,
    PAGE_SIZE,
};
use xbb::shmem::SharedMem;

/// One simulated guest domain: its RAM and its grant table.
#[derive(Clone, Debug)]
pub struct Domain {
    /// The domain's RAM.
    pub memory: GuestMemory,
    /// The domain's grant table.
    pub grants: GrantTable,
}

/// The registry of guest domains, by domid. Cheap to clone (shared).
#[derive(Clone, Debug, Default)]
pub struct Domains {
    inner: Arc<Mutex<HashMap<DomId, Domain>>>,
}

impl Domains {
    /// An empty registry.
    pub fn new() -> Domains {
        Domains::default()
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<DomId, Domain>> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Creates domain `dom` with `frames` frames of RAM and an empty grant
    /// table. `EEXIST` when it already exists.
    pub fn create(&self, dom: DomId, frames: u64) -> io::Result<Domain> {
        let mut m = self.lock();
        if m.contains_key(&dom) {
            return Err(io::Error::from_raw_os_error(libc::EEXIST));
        }
        let d = Domain {
            memory: GuestMemory::new(dom, frames)?,
            grants: GrantTable::new(dom, frames),
        };
        m.insert(dom, d.clone());
        Ok(d)
    }

    /// Domain `dom`, if it exists.
    pub fn get(&self, dom: DomId) -> Option<Domain> {
        self.lock().get(&dom).cloned()
    }

    /// Removes domain `dom` from the registry (its memory lives on while
    /// mapped or referenced).
    pub fn remove(&self, dom: DomId) -> Option<Domain> {
        self.lock().remove(&dom)
    }
}

/// The whole simulated Xen host: XenStore, event channels, guest domains and
/// the back-end domain's "root file system mounted" flag. Cheap to clone
/// (every part is shared).
#[derive(Clone, Debug, Default)]
pub struct SimXen {
    /// The XenStore.
    pub xenstore: Xenstored,
    /// The event-channel hub.
    pub evtchn: EventHub,
    /// The guest domains.
    pub domains: Domains,
    root_mounted: Arc<AtomicBool>,
    root_waiters: Arc<Mutex<Vec<Sender<TaskEvent>>>>,
}

impl SimXen {
    /// A host with an empty XenStore, no domains, root not mounted.
    pub fn new() -> SimXen {
        SimXen::default()
    }

    /// Creates guest domain `dom` with `frames` frames of RAM and writes its
    /// `/local/domain/<dom>/{name, domid}` nodes.
    pub fn create_guest(&self, dom: DomId, frames: u64, name: &str) -> io::Result<Domain> {
        let d = self.domains.create(dom, frames)?;
        toolstack::create_domain(&self.xenstore, dom, name)
            .map_err(|_| io::Error::from_raw_os_error(libc::EIO))?;
        Ok(d)
    }

    /// The shared "root file system mounted" flag.
    pub fn root_mounted_flag(&self) -> Arc<AtomicBool> {
        Arc::clone(&self.root_mounted)
    }

    /// Whether the root file system is mounted.
    pub fn is_root_mounted(&self) -> bool {
        self.root_mounted.load(Ordering::Acquire)
    }

    /// Mounts the root file system: sets the flag and sends
    /// [`TaskEvent::RootMounted`] to every subscribed instance.
    pub fn mount_root(&self) {
        self.root_mounted.store(true, Ordering::Release);
        let mut w = self.root_waiters.lock().unwrap_or_else(|e| e.into_inner());
        // A root once mounted stays mounted: nobody waits any more.
        for tx in w.drain(..) {
            let _ = tx.send(TaskEvent::RootMounted);
        }
    }

    /// Subscribes `tx` to [`SimXen::mount_root`], unless the root is
    /// mounted already: instances created after the mount see the flag
    /// through [`Host::root_mounted`] at attach, and a sender kept for
    /// them would outlive their instance (one per vbd ever created).
    pub fn subscribe_root_mounted(&self, tx: Sender<TaskEvent>) {
        let mut w = self.root_waiters.lock().unwrap_or_else(|e| e.into_inner());
        // Under the lock: a mount that set the flag before we looked sends
        // to nobody after; one that did not yet will send to us.
        if !self.root_mounted.load(Ordering::Acquire) {
            w.push(tx);
        }
    }
}

/// Configuration of one [`SimHost`].
#[derive(Clone, Debug)]
pub struct SimHostConfig {
    /// The domain the back-end runs in.
    pub backend_dom: DomId,
    /// The logical sector size the store emulates (512; 4096 for a 4K-sector
    /// medium).
    pub store_sector_size: u32,
    /// Store fault injection shared with the scenario.
    pub store_faults: Option<Arc<IoFaults>>,
    /// A volatile write cache in front of the store, shared with the
    /// scenario (which cuts its power).
    pub store_cache: Option<Arc<WriteCache>>,
    /// The vbd's image stands for a disk device node: the lab has no block
    /// devices, so a raw-device store is a regular file the toolstack made
    /// as one, served the way a device is (`O_DIRECT`, aligned buffers).
    pub image_is_disk: bool,
}

impl Default for SimHostConfig {
    fn default() -> Self {
        SimHostConfig {
            backend_dom: 0,
            store_sector_size: 512,
            store_faults: None,
            store_cache: None,
            image_is_disk: false,
        }
    }
}

/// Counters and state of one [`SimHost`], for tests and `xbb-lab`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SimHostStats {
    /// Pages of the reserved data window (0 when none).
    pub window_pages: u32,
    /// Window pages holding a grant mapping now.
    pub window_mapped: u32,
    /// Pages of the mapped ring (0 when none).
    pub ring_pages: u32,
    /// The bound local event-channel port.
    pub evtchn_port: Option<EvtchnPort>,
    /// Whether a store is open.
    pub store_open: bool,
    /// Store I/Os submitted and not yet completed.
    pub io_in_flight: u64,
    /// Grant map operations attempted (window entries).
    pub map_ops: u64,
    /// Of those, failed.
    pub map_failures: u64,
    /// Grant unmap operations done (window entries).
    pub unmap_ops: u64,
    /// Unmap entries that named a page or handle not mapped (a core bug).
    pub bad_unmaps: u64,
    /// Window pages still mapped when the window was released (a core bug).
    pub leaked_at_release: u64,
    /// I/O vectors outside the window or over unmapped pages (a core bug).
    pub bad_iovecs: u64,
    /// Store I/Os accepted.
    pub ios_submitted: u64,
    /// Events sent to the front-end.
    pub notifies: u64,
    /// `schedule_run` calls.
    pub runs_scheduled: u64,
    /// Rings mapped now (one per queue).
    pub rings_mapped: u32,
    /// `evtchn_eoi` calls that asked for a delay (spurious-event backoff).
    pub delayed_eois: u64,
    /// Delayed EOIs whose timer has not fired yet: a kick kept pending
    /// meanwhile still has to reach the task.
    pub eoi_timers: u32,
    /// Indirect-page copies (`copy_in` pages).
    pub pages_copied: u64,
}

/// Late-EOI delivery state of one bound channel: while the instance
/// handles an event, further kicks are kept pending, not queued.
#[derive(Debug, Default)]
pub struct EoiState {
    inner: Mutex<EoiInner>,
}

#[derive(Debug, Default)]
struct EoiInner {
    /// An `Evtchn` event was sent and its EOI has not come yet.
    in_service: bool,
    /// A kick arrived while in service.
    pending: bool,
    /// The channel was unbound: deliver nothing more.
    closed: bool,
}

impl EoiState {
    fn lock(&self) -> MutexGuard<'_, EoiInner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A kick from the front-end: whether to deliver it now.
    fn kick(&self) -> bool {
        let mut g = self.lock();
        if g.closed {
            return false;
        }
        if g.in_service {
            g.pending = true;
            false
        } else {
            g.in_service = true;
            true
        }
    }

    /// The EOI: whether a kept kick must be delivered now.
    fn eoi(&self) -> bool {
        let mut g = self.lock();
        if g.closed {
            return false;
        }
        if std::mem::take(&mut g.pending) {
            true
        } else {
            g.in_service = false;
            false
        }
    }
}

#[derive(Debug)]
struct WindowMap {
    table: GrantTable,
    handle: GrantHandle,
}

#[derive(Debug)]
struct RingMap {
    res: Reservation,
    table: GrantTable,
    handles: Vec<GrantHandle>,
}

/// The platform side of one back-end instance in the simulated host.
pub struct SimHost {
    xen: SimXen,
    cfg: SimHostConfig,
    tx: Sender<TaskEvent>,
    window: Option<Reservation>,
    window_maps: Vec<Option<WindowMap>>,
    /// Entries of `window_maps` that are `Some` (kept, not counted: the
    /// window can be tens of thousands of pages and stats are taken after
    /// every event).
    window_mapped: u32,
    /// The mapped ring of each queue.
    rings: Vec<(QueueId, RingMap)>,
    /// The bound channel of each queue, with its late-EOI state.
    ports: Vec<(QueueId, EvtchnPort, Arc<EoiState>)>,
    store: HostStore,
    stats: SimHostStats,
    epoch: std::time::Instant,
    /// Delayed-EOI timers not done yet ([`SimHostStats::eoi_timers`]).
    eoi_timers: Arc<AtomicU32>,
}

impl std::fmt::Debug for SimHost {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SimHost")
            .field("cfg", &self.cfg)
            .field("stats", &self.stats())
            .finish()
    }
}

impl SimHost {
    /// A host for one instance of `xen`; events for the instance's task go
    /// to `tx`.
    pub fn new(xen: &SimXen, cfg: SimHostConfig, tx: Sender<TaskEvent>) -> SimHost {
        SimHost {
            xen: xen.clone(),
            store: HostStore::new(cfg.store_sector_size, cfg.store_faults.clone())
                .with_cache(cfg.store_cache.clone()),
            cfg,
            tx,
            window: None,
            window_maps: Vec::new(),
            window_mapped: 0,
            rings: Vec::new(),
            ports: Vec::new(),
            stats: SimHostStats::default(),
            epoch: std::time::Instant::now(),
            eoi_timers: Arc::new(AtomicU32::new(0)),
        }
    }

    /// The simulated Xen this host runs on.
    pub fn xen(&self) -> &SimXen {
        &self.xen
    }

    /// The configuration.
    pub fn config(&self) -> &SimHostConfig {
        &self.cfg
    }

    /// The counters and state.
    pub fn stats(&self) -> SimHostStats {
        let mut s = self.stats;
        s.window_pages = self.window.as_ref().map_or(0, |w| w.pages() as u32);
        s.window_mapped = self.window_mapped;
        s.ring_pages = self.rings.iter().map(|(_, r)| r.res.pages() as u32).sum();
        s.evtchn_port = self.ports.first().map(|p| p.1);
        s.eoi_timers = self.eoi_timers.load(Ordering::Acquire);
        s.rings_mapped = self.rings.len() as u32;
        s.store_open = self.store.is_open();
        s.io_in_flight = self.store.in_flight();
        s.bad_iovecs = self.store.bad_iovecs;
        s.ios_submitted = self.store.submitted;
        s
    }

    /// The process address of data-window page 0, while a window is reserved.
    pub fn window_base(&self) -> Option<usize> {
        self.window.as_ref().map(|w| w.base())
    }

    /// The process address of window byte `window_offset`, when inside the
    /// window.
    pub fn window_addr(&self, window_offset: usize) -> Option<usize> {
        let w = self.window.as_ref()?;
        (window_offset < w.len()).then(|| w.base() + window_offset)
    }

    fn map_one(
        &mut self,
        dom: Option<&Domain>,
        op: &GrantMapOp,
    ) -> Result<GrantHandle, GrantError> {
        let d = dom.ok_or(GrantError::BadRef)?;
        let page = op.window_page.0 as usize;
        let win = self.window.as_mut().ok_or(GrantError::General)?;
        if page >= win.pages() || self.window_maps[page].is_some() {
            return Err(GrantError::General);
        }
        let (gfn, handle) = d.grants.map(op.gref, self.cfg.backend_dom, op.readonly)?;
        if win
            .map_frame_at(page, d.memory.memfd(), gfn, !op.readonly)
            .is_err()
        {
            let _ = d.grants.unmap(handle);
            return Err(GrantError::General);
        }
        self.window_mapped += 1;
        self.window_maps[page] = Some(WindowMap {
            table: d.grants.clone(),
            handle,
        });
        Ok(handle)
    }

    fn unmap_window_page(&mut self, page: usize) {
        if let (Some(win), Some(Some(m))) = (self.window.as_mut(), self.window_maps.get_mut(page)) {
            let _ = win.unmap_frame_at(page);
            let _ = m.table.unmap(m.handle);
            self.window_maps[page] = None;
            self.window_mapped -= 1;
        }
    }
}

impl SimHost {
    /// Resolves a path the way xenstored does for a domain's connection: a
    /// relative path is relative to the domain's home, `/local/domain/<dom>`.
    fn xs_path<'p>(&self, path: &'p str) -> std::borrow::Cow<'p, str> {
        if path.starts_with('/') {
            std::borrow::Cow::Borrowed(path)
        } else {
            std::borrow::Cow::Owned(std::format!(
                "/local/domain/{}/{path}",
                self.config().backend_dom
            ))
        }
    }
}

impl XenStore for SimHost {
    fn xs_read(&mut self, txn: XsTxn, path: &str, buf: &mut [u8]) -> Result<usize, XsError> {
        let v = self.xen.xenstore.read_in(txn, &self.xs_path(path))?;
        let dst = buf.get_mut(..v.len()).ok_or(XsError::TooLong)?;
        dst.copy_from_slice(&v);
        Ok(v.len())
    }

    fn xs_write(&mut self, txn: XsTxn, path: &str, value: &str) -> Result<(), XsError> {
        self.xen
            .xenstore
            .write_in(txn, &self.xs_path(path), value.as_bytes())
    }

    fn xs_remove(&mut self, txn: XsTxn, path: &str) -> Result<(), XsError> {
        match self.xen.xenstore.remove_in(txn, &self.xs_path(path)) {
            Err(XsError::NotFound) => Ok(()),
            r => r,
        }
    }

    fn xs_transaction_start(&mut self) -> Result<XsTxn, XsError> {
        Ok(self.xen.xenstore.transaction_start())
    }

    fn xs_transaction_end(&mut self, txn: XsTxn, commit: bool) -> Result<(), XsError> {
        self.xen.xenstore.transaction_end(txn, commit)
    }
}

impl Grants for SimHost {
    fn window_reserve(&mut self, pages: u32) -> Result<(), GrantError> {
        if self.window.is_some() {
            self.window_release();
        }
        let n = pages as usize;
        let res = Reservation::new(n).map_err(|_| GrantError::NoSpace)?;
        let mut maps = Vec::new();
        maps.try_reserve_exact(n).map_err(|_| GrantError::NoSpace)?;
        maps.resize_with(n, || None);
        self.window = Some(res);
        self.window_maps = maps;
        Ok(())
    }

    fn window_release(&mut self) {
        for page in 0..self.window_maps.len() {
            if self.window_maps[page].is_some() {
                self.stats.leaked_at_release += 1;
                self.unmap_window_page(page);
            }
        }
        self.window_maps = Vec::new();
        if let Some(w) = self.window.take() {
            if self.store.in_flight() != 0 {
                // The store may still touch it: keep the range reserved
                // forever rather than let it be reused.
                std::mem::forget(w);
            }
        }
    }

    fn map_batch(&mut self, dom: DomId, ops: &[GrantMapOp], results: &mut [MapResult]) {
        let d = self.xen.domains.get(dom);
        for (op, r) in ops.iter().zip(results.iter_mut()) {
            self.stats.map_ops += 1;
            *r = self.map_one(d.as_ref(), op);
            if r.is_err() {
                self.stats.map_failures += 1;
            }
        }
    }

    fn unmap_batch(&mut self, ops: &[GrantUnmapOp]) {
        for op in ops {
            let page = op.window_page.0 as usize;
            let ok = matches!(self.window_maps.get(page), Some(Some(m)) if m.handle == op.handle);
            if ok {
                self.unmap_window_page(page);
                self.stats.unmap_ops += 1;
            } else {
                self.stats.bad_unmaps += 1;
            }
        }
    }

    fn map_ring(&mut self, queue: QueueId, ring: Granted<'_>) -> Result<SharedMem, GrantError> {
        let Granted { dom, grefs } = ring;
        if self.rings.iter().any(|(q, _)| *q == queue) || grefs.is_empty() {
            return Err(GrantError::General);
        }
        let d = self.xen.domains.get(dom).ok_or(GrantError::BadRef)?;
        let mut res = Reservation::new(grefs.len()).map_err(|_| GrantError::NoSpace)?;
        let mut handles = Vec::new();
        handles
            .try_reserve_exact(grefs.len())
            .map_err(|_| GrantError::NoSpace)?;
        let mut failure = None;
        for (i, &gref) in grefs.iter().enumerate() {
            match d.grants.map(gref, self.cfg.backend_dom, false) {
                Ok((gfn, h)) => {
                    if res.map_frame_at(i, d.memory.memfd(), gfn, true).is_err() {
                        let _ = d.grants.unmap(h);
                        failure = Some(GrantError::General);
                        break;
                    }
                    handles.push(h);
                }
                Err(e) => {
                    failure = Some(e);
                    break;
                }
            }
        }
        let mem = match failure {
            None => res
                .shared_mem(0, grefs.len())
                .map_err(|_| GrantError::General),
            Some(e) => Err(e),
        };
        match mem {
            Ok(mem) => {
                self.rings.push((
                    queue,
                    RingMap {
                        res,
                        table: d.grants.clone(),
                        handles,
                    },
                ));
                Ok(mem)
            }
            Err(e) => {
                for (i, h) in handles.iter().enumerate() {
                    let _ = res.unmap_frame_at(i);
                    let _ = d.grants.unmap(*h);
                }
                Err(e)
            }
        }
    }

    fn unmap_ring(&mut self, queue: QueueId, ring: SharedMem) {
        let Some(at) = self.rings.iter().position(|(q, _)| *q == queue) else {
            self.stats.bad_unmaps += 1;
            return;
        };
        let (_, mut rm) = self.rings.swap_remove(at);
        match rm.res.take_back(ring) {
            Ok(()) => {
                for (i, h) in rm.handles.iter().enumerate() {
                    let _ = rm.res.unmap_frame_at(i);
                    let _ = rm.table.unmap(*h);
                }
            }
            Err(_) => {
                self.stats.bad_unmaps += 1;
                self.rings.push((queue, rm));
            }
        }
    }

    fn copy_in(&mut self, from: Granted<'_>, out: &mut [u8]) -> Result<(), GrantError> {
        let Granted { dom, grefs } = from;
        if out.len() > grefs.len().saturating_mul(PAGE_SIZE) {
            return Err(GrantError::General);
        }
        let d = self.xen.domains.get(dom).ok_or(GrantError::BadRef)?;
        for (gref, chunk) in grefs.iter().zip(out.chunks_mut(PAGE_SIZE)) {
            // GNTTABOP_copy checks the grant as a read-only mapping would.
            let (gfn, h) = d.grants.map(*gref, self.cfg.backend_dom, true)?;
            let r = d.memory.read(gfn, 0, chunk);
            let _ = d.grants.unmap(h);
            r.map_err(|_| GrantError::General)?;
            self.stats.pages_copied += 1;
        }
        Ok(())
    }
}

impl EventChannel for SimHost {
    fn evtchn_bind(&mut self, queue: QueueId, remote: RemotePort) -> Result<(), EvtchnError> {
        let (dom, remote_port) = (remote.dom, remote.port);
        if self.ports.iter().any(|p| p.0 == queue) {
            return Err(EvtchnError::General);
        }
        let hub = &self.xen.evtchn;
        let port = hub.bind_interdomain(self.cfg.backend_dom, dom, remote_port)?;
        let tx = self.tx.clone();
        let eoi = Arc::new(EoiState::default());
        let st = Arc::clone(&eoi);
        if let Err(e) = hub.set_handler(
            self.cfg.backend_dom,
            port,
            Box::new(move || {
                if st.kick() {
                    let _ = tx.send(TaskEvent::Evtchn(queue));
                }
            }),
        ) {
            hub.close(self.cfg.backend_dom, port);
            return Err(e);
        }
        self.ports.push((queue, port, eoi));
        Ok(())
    }

    fn evtchn_notify(&mut self, queue: QueueId) {
        if let Some(&(_, p, _)) = self.ports.iter().find(|p| p.0 == queue) {
            if self.xen.evtchn.notify(self.cfg.backend_dom, p).is_ok() {
                self.stats.notifies += 1;
            }
        }
    }

    fn evtchn_eoi(&mut self, queue: QueueId, delay_ms: u32) {
        let Some((_, _, st)) = self.ports.iter().find(|p| p.0 == queue) else {
            return;
        };
        let st = Arc::clone(st);
        let tx = self.tx.clone();
        let finish = move || {
            if st.eoi() {
                let _ = tx.send(TaskEvent::Evtchn(queue));
            }
        };
        if delay_ms == 0 {
            finish();
        } else {
            self.stats.delayed_eois += 1;
            // A timer standing in for the platform's callout. It counts
            // itself until the event it may owe is queued, so that the
            // back-end is not taken for quiescent meanwhile.
            let delay = std::time::Duration::from_millis(u64::from(delay_ms));
            let timers = Arc::clone(&self.eoi_timers);
            timers.fetch_add(1, Ordering::AcqRel);
            let spawned = std::thread::Builder::new()
                .name(String::from("xbb-eoi-timer"))
                .spawn(move || {
                    std::thread::sleep(delay);
                    finish();
                    timers.fetch_sub(1, Ordering::AcqRel);
                });
            if spawned.is_err() {
                self.eoi_timers.fetch_sub(1, Ordering::AcqRel);
            }
        }
    }

    fn evtchn_unbind(&mut self, queue: QueueId) {
        if let Some(at) = self.ports.iter().position(|p| p.0 == queue) {
            let (_, p, st) = self.ports.swap_remove(at);
            st.lock().closed = true;
            self.xen.evtchn.close(self.cfg.backend_dom, p);
        }
    }
}

impl Deferred for SimHost {
    fn schedule_run(&mut self, queue: QueueId) {
        self.stats.runs_scheduled += 1;
        let _ = self.tx.send(TaskEvent::Run(queue));
    }

    fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }
}

/// The process addresses of window pieces `iov`, when each lies on pages
/// of `window` mapped as the I/O needs them (`writes_memory`: the store
/// writes into them, a guest READ).
fn resolve(
    window: Option<&Reservation>,
    iov: &[IoVec],
    writes_memory: bool,
) -> Option<Vec<RawIoVec>> {
    let win = window?;
    let mut out = Vec::new();
    out.try_reserve_exact(iov.len()).ok()?;
    for v in iov {
        let end = v.window_offset.checked_add(v.len)?;
        if end > win.len() {
            return None;
        }
        if v.len > 0 {
            let first = v.window_offset / PAGE_SIZE;
            let last = (end - 1) / PAGE_SIZE;
            for p in first..=last {
                match win.page_state(p) {
                    Some(PageState::Writable) => {}
                    Some(PageState::ReadOnly) if !writes_memory => {}
                    _ => return None,
                }
            }
        }
        out.push(RawIoVec {
            addr: win.base() + v.window_offset,
            len: v.len,
        });
    }
    Some(out)
}

impl Store for SimHost {
    fn store_open(&mut self, params: OpenParams<'_>) -> Result<MediumInfo, OpenError> {
        let node = match store::probe(Path::new(params.path))? {
            NodeKind::RegularFile if self.cfg.image_is_disk => NodeKind::Disk,
            n => n,
        };
        let tx = self.tx.clone();
        self.store.open(params, node, move |tag, r| {
            let _ = tx.send(TaskEvent::Io(tag, r));
        })
    }

    fn store_info(&self) -> MediumInfo {
        self.store.info()
    }

    fn store_submit(&mut self, tag: IoTag, op: IoOp<'_>) -> Result<(), IoError> {
        let window = self.window.as_ref();
        // The RawIoVec obligation: every range is checked to lie on window
        // pages mapped with the right protection; they stay mapped (or, if
        // the core unmapped them early, at least reserved) until the
        // completion, because the window is never unmapped while I/O is in
        // flight (see window_release and Drop).
        self.store
            .submit(tag, op, |iov, write| resolve(window, iov, write))
    }

    fn store_close(&mut self) {
        self.store.close();
    }
}

impl Host for SimHost {
    fn root_mounted(&self) -> bool {
        self.xen.is_root_mounted()
    }
}

impl Drop for SimHost {
    fn drop(&mut self) {
        // The store first: `close` waits for every queued I/O, so nothing
        // touches the window once it is released.
        self.store.close();
        while let Some(&(q, _, _)) = self.ports.first() {
            self.evtchn_unbind(q);
        }
        if self.window.is_some() {
            self.window_release();
        }
        // A ring the core never handed back stays mapped (its reservation
        // leaks the range), and its grants stay mapped: visible to tests in
        // the guest's grant counters.
    }
}
