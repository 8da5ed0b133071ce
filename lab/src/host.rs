//! The simulated host's side of one back-end instance: [`SimHost`]
//! implements the core's control [`Host`] over the simulated Xen of this
//! module's siblings, and [`SimQueueHost`] the [`QueueHost`]: of one lent
//! queue, on a thread of its own, or (inline) of every queue, as the
//! control host's queue part.
//!
//! - XenStore (`xs_wire.h`): the shared [`Xenstored`]; the core's paths are
//!   absolute.
//! - Grants (`grant_table.h`, `GNTTABOP_map_grant_ref` /
//!   `GNTTABOP_unmap_grant_ref`): the data window is address space reserved
//!   `PROT_NONE`; each granted guest frame is really mapped at its window
//!   page (`MAP_FIXED` from the guest's memfd), read-only when the grant or
//!   the operation is, so a reqlist's pages form one contiguous buffer and a
//!   write through a read-only mapping faults. Each queue maps into its own
//!   share of the window from its own thread (the page table is atomic, each
//!   page's record has its own lock, never contended). Each ring gets its
//!   own reservation. That is [`GrantMapping::Faulting`], the default of
//!   every scenario and test. For benchmarks, [`GrantMapping::Premapped`]
//!   maps the guest's whole RAM into the back-end once and makes a grant
//!   map only the grant table's checks and a note of where the frame lies:
//!   each `mmap` takes the process's one mmap lock and shoots down the
//!   other threads' TLBs, which serializes the queues' threads here as
//!   Xen's grant table would not. I/O over unmapped or (for a store that
//!   writes into guest memory) read-only pages is refused in both modes.
//! - Event channels (`event_channel.h`): the shared [`EventHub`]; a kick
//!   from the front-end is posted to its queue's [`Gate`]
//!   ([`Work::EVENT`]), late EOI kept per channel ([`EoiState`]).
//! - Deferred runs: [`Work::RUN`] on the queue's own gate.
//! - The store: a [`super::store`] store shared by the queues
//!   ([`StoreHandle`]); window offsets become process addresses; each
//!   completion goes to the queue its tag names ([`Work::IO`]).
//!
//! The hand-off (DESIGN.md, "Concurrency"): [`Host::lend`] starts a thread
//! for the queue (`xbb-qN`) that owns the queue and its [`SimQueueHost`]
//! and sleeps until its gate wakes it; [`Host::recall`] posts
//! [`Work::RECALL`]; once `Queue::recall` answers `true` the thread gives
//! the queue back through its [`QueueBox`] and tells the control thread
//! ([`TaskEvent::QueueHome`]), which hands it to `Instance::give_back`. An
//! outcome that ends the connection goes to the control thread as
//! [`TaskEvent::QueueFailed`].
//!
//! With [`SimHostConfig::inline`] the host lends nothing and serves every
//! queue from the instance's task thread, as the core's test double does:
//! events, runs and completions then arrive there as [`TaskEvent`]s.
//!
//! With [`SimHostConfig::journal_dir`] the host keeps the core's in-flight
//! journals as files there ([`JournalFiles`], as xbb-serve does), and
//! [`SimHost::die`] does what a back-end process's death does, so that a
//! new instance can take its vbd over (issue 16).

use std::collections::{HashMap, VecDeque};
use std::io;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::Sender;
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::thread::{JoinHandle, Thread};

use super::evtchn::EventHub;
use super::ffi::{PageState, Reservation, SharedMapping};
use super::gnttab::GrantTable;
use super::memory::GuestMemory;
use super::store::{
    self, locked, HostStore, InstanceJournals, JournalFiles, RawIoVec, StoreHandle, StoreOptions,
};
use super::toolstack;
use super::xenstore::Xenstored;
use super::TaskEvent;
use xbb::handoff::{Gate, Post, Work};
use xbb::host::{
    DomId, EvtchnError, EvtchnPort, GrantError, GrantHandle, GrantMapOp, GrantUnmapOp, Granted,
    Host, IoError, IoOp, IoTag, IoVec, JournalOpen, MapResult, MediumInfo, NodeKind, OpenError,
    OpenParams, QueueHost, QueueId, RemotePort, XenStore, XsError, XsTxn, PAGE_SIZE,
};
use xbb::journal::JournalId;
use xbb::queue::Queue;
use xbb::shmem::SharedMem;
use xbb::stats::Tunable;

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
        locked(&self.inner)
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
        let mut w = locked(&self.root_waiters);
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
        let mut w = locked(&self.root_waiters);
        // Under the lock: a mount that set the flag before we looked sends
        // to nobody after; one that did not yet will send to us.
        if !self.root_mounted.load(Ordering::Acquire) {
            w.push(tx);
        }
    }
}

/// Configuration of one [`SimHost`].
#[derive(Clone, Debug, Default)]
pub struct SimHostConfig {
    /// The domain the back-end runs in.
    pub backend_dom: DomId,
    /// What the store emulates (its sector size) and suffers (faults, a
    /// write cache the scenario cuts the power of).
    pub store: StoreOptions,
    /// The vbd's image stands for a disk device node: the lab has no block
    /// devices, so a raw-device store is a regular file the toolstack made
    /// as one, served the way a device is (`O_DIRECT`, aligned buffers).
    pub image_is_disk: bool,
    /// Serve every queue inline, from the instance's task thread (lend
    /// none), instead of a thread per queue.
    pub inline: bool,
    /// Keep in-flight journals as files in this directory, as xbb-serve
    /// does in `/run/xbb-serve` (none: no journal, as the kernel).
    pub journal_dir: Option<std::path::PathBuf>,
    /// How grants are mapped into the data window (rings are always
    /// mapped the faulting way).
    pub grant_mapping: GrantMapping,
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
    /// Queue threads started (one per lent queue and connection).
    pub queue_threads: u64,
    /// Times a queue's thread was woken by its gate.
    pub queue_wakes: u64,
    /// Passes the queues' threads began, summed over the queues.
    pub queue_passes: u64,
    /// Every lent queue's thread is asleep with nothing to do and its
    /// queue idle (`true` when none is lent).
    pub queues_asleep: bool,
}

/// The counters the control thread and the queue threads add to.
#[derive(Debug, Default)]
struct Counters {
    map_ops: AtomicU64,
    map_failures: AtomicU64,
    unmap_ops: AtomicU64,
    bad_unmaps: AtomicU64,
    leaked_at_release: AtomicU64,
    notifies: AtomicU64,
    runs_scheduled: AtomicU64,
    delayed_eois: AtomicU64,
    /// Delayed-EOI timers not done yet ([`SimHostStats::eoi_timers`]).
    eoi_timers: AtomicU64,
    pages_copied: AtomicU64,
    window_mapped: AtomicU64,
    queue_threads: AtomicU64,
    queue_wakes: AtomicU64,
}

fn bump(c: &AtomicU64, n: u64) {
    c.fetch_add(n, Ordering::Relaxed);
}

fn read(c: &AtomicU64) -> u64 {
    c.load(Ordering::Relaxed)
}

/// Late-EOI delivery state of one bound channel: while the queue handles
/// an event, further kicks are kept pending, not delivered.
#[derive(Debug, Default)]
pub struct EoiState {
    inner: Mutex<EoiInner>,
}

#[derive(Debug, Default)]
struct EoiInner {
    /// An event was delivered and its EOI has not come yet.
    in_service: bool,
    /// A kick arrived while in service.
    pending: bool,
    /// The channel was unbound: deliver nothing more.
    closed: bool,
}

impl EoiState {
    /// The channel is unbound: nothing more is delivered.
    fn close(&self) {
        locked(&self.inner).closed = true;
    }

    /// A kick from the front-end: whether to deliver it now.
    fn kick(&self) -> bool {
        let mut g = locked(&self.inner);
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
        let mut g = locked(&self.inner);
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

/// How the data window makes a granted frame reachable: the simulated
/// `GNTTABOP_map_grant_ref` (`grant_table.h`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum GrantMapping {
    /// Each map really maps the guest frame at its window page (`mmap`
    /// with `MAP_FIXED` of one page of the guest's memfd into a `PROT_NONE`
    /// reservation, read-only when the grant or the operation is) and each
    /// unmap puts `PROT_NONE` back, so a back-end that touches a window
    /// page outside a live mapping, or writes through a read-only one,
    /// faults. The default, for every scenario and test.
    #[default]
    Faulting,
    /// For benchmarks: the guest's whole RAM is mapped into the back-end
    /// once (at the first map), and a map only does the grant table's
    /// checks (the grant exists, is granted to this domain, is not
    /// read-only for a writable map, names a frame of the guest's RAM;
    /// injected failures too) and records where the frame lies in that
    /// view; an I/O over the window is still refused unless every page is
    /// mapped, and writable when the store writes into it. What is lost is
    /// only the fault of a stray touch. The reason: each `mmap` of
    /// [`GrantMapping::Faulting`] takes the process's one mmap lock for
    /// writing and shoots down the TLBs of every CPU running its threads,
    /// which serializes the queues' threads in the simulator, where Xen's
    /// grant table would not.
    Premapped,
}

impl GrantMapping {
    /// `faulting` or `premapped`.
    pub fn name(self) -> &'static str {
        match self {
            GrantMapping::Faulting => "faulting",
            GrantMapping::Premapped => "premapped",
        }
    }

    /// The mode named `name` ([`GrantMapping::name`]).
    pub fn by_name(name: &str) -> Option<GrantMapping> {
        match name {
            "faulting" => Some(GrantMapping::Faulting),
            "premapped" => Some(GrantMapping::Premapped),
            _ => None,
        }
    }
}

/// A premapped window page's state: 0 when unmapped, else the frame
/// (plus one) shifted left by one, and whether it is mapped writable.
fn premapped_code(gfn: u64, writable: bool) -> Option<u64> {
    let v = gfn.checked_add(1)?.checked_mul(2)?;
    Some(v | u64::from(writable))
}

/// The frame and writability a premapped page's state says, `None` when
/// unmapped.
fn premapped_page(code: u64) -> Option<(u64, bool)> {
    let gfn_plus_1 = code >> 1;
    (gfn_plus_1 > 0).then(|| (gfn_plus_1 - 1, code & 1 == 1))
}

/// The window pages of [`GrantMapping::Premapped`]: what each holds, and
/// the guest RAM they point into.
#[derive(Debug)]
struct Premap {
    /// The guest whose RAM the window maps (bound at its first map: an
    /// instance serves one front-end) and the back-end's view of all of it.
    view: OnceLock<(DomId, SharedMapping)>,
    /// Each page's [`premapped_code`].
    pages: Vec<AtomicU64>,
}

impl Premap {
    /// The back-end's view of `d`'s RAM, made at the first call; `None`
    /// when the window is bound to another domain or the view cannot be
    /// made.
    fn view_of(&self, d: &Domain) -> Option<&SharedMapping> {
        let dom = d.memory.domid();
        if self.view.get().is_none() {
            let m = d.memory.backend_view().ok()?;
            // A racing first map may have set it: one of the two wins,
            // the other view goes unused.
            let _ = self.view.set((dom, m));
        }
        self.view.get().filter(|(d, _)| *d == dom).map(|(_, m)| m)
    }
}

/// What backs the window's pages, by [`GrantMapping`].
#[derive(Debug)]
enum Frames {
    /// [`GrantMapping::Faulting`]: address space of its own, each grant
    /// mapped at its page.
    Faulting(Reservation),
    /// [`GrantMapping::Premapped`].
    Premapped(Premap),
}

/// The data window: its pages, and the grant behind each mapped page.
/// Queue threads map and unmap pages of their own shares concurrently.
#[derive(Debug)]
struct Window {
    frames: Frames,
    maps: Vec<Mutex<Option<WindowMap>>>,
}

impl Window {
    /// A window of `n` pages, mapped the `how` way.
    fn new(n: usize, how: GrantMapping) -> io::Result<Window> {
        let mut maps = Vec::new();
        maps.try_reserve_exact(n)
            .map_err(|_| io::Error::from_raw_os_error(libc::ENOMEM))?;
        maps.resize_with(n, || Mutex::new(None));
        let frames = match how {
            GrantMapping::Faulting => Frames::Faulting(Reservation::new(n)?),
            GrantMapping::Premapped => {
                let mut pages = Vec::new();
                pages
                    .try_reserve_exact(n)
                    .map_err(|_| io::Error::from_raw_os_error(libc::ENOMEM))?;
                pages.resize_with(n, || AtomicU64::new(0));
                Frames::Premapped(Premap {
                    view: OnceLock::new(),
                    pages,
                })
            }
        };
        Ok(Window { frames, maps })
    }

    /// The number of pages.
    fn pages(&self) -> usize {
        self.maps.len()
    }

    /// The reservation of a faulting window.
    fn reservation(&self) -> Option<&Reservation> {
        match &self.frames {
            Frames::Faulting(r) => Some(r),
            Frames::Premapped(_) => None,
        }
    }

    fn slot(&self, page: usize) -> Option<MutexGuard<'_, Option<WindowMap>>> {
        self.maps.get(page).map(locked)
    }

    fn map_one(
        &self,
        dom: Option<&Domain>,
        backend_dom: DomId,
        op: &GrantMapOp,
        counters: &Counters,
    ) -> Result<GrantHandle, GrantError> {
        let d = dom.ok_or(GrantError::BadRef)?;
        let page = op.window_page.0 as usize;
        let mut slot = self.slot(page).ok_or(GrantError::General)?;
        if slot.is_some() {
            return Err(GrantError::General);
        }
        // The grant table's checks, in either mode.
        let (gfn, handle) = d.grants.map(op.gref, backend_dom, op.readonly)?;
        let placed = match &self.frames {
            Frames::Faulting(res) => res
                .map_frame_at(page, d.memory.memfd(), gfn, !op.readonly)
                .is_ok(),
            Frames::Premapped(pm) => {
                match (pm.view_of(d), premapped_code(gfn, !op.readonly)) {
                    (Some(_), Some(code)) => {
                        // Release: whoever sees the page mapped sees the
                        // view bound.
                        pm.pages[page].store(code, Ordering::Release);
                        true
                    }
                    _ => false,
                }
            }
        };
        if !placed {
            let _ = d.grants.unmap(handle);
            return Err(GrantError::General);
        }
        bump(&counters.window_mapped, 1);
        *slot = Some(WindowMap {
            table: d.grants.clone(),
            handle,
        });
        Ok(handle)
    }

    /// Unmaps page `page` when it is mapped with `handle` (any handle when
    /// `None`); whether it was.
    fn unmap_one(&self, page: usize, handle: Option<GrantHandle>, counters: &Counters) -> bool {
        let Some(mut slot) = self.slot(page) else {
            return false;
        };
        match slot.as_ref() {
            Some(m) if handle.is_none_or(|h| h == m.handle) => {}
            _ => return false,
        }
        if let Some(m) = slot.take() {
            match &self.frames {
                Frames::Faulting(res) => {
                    let _ = res.unmap_frame_at(page);
                }
                Frames::Premapped(pm) => pm.pages[page].store(0, Ordering::Release),
            }
            let _ = m.table.unmap(m.handle);
            counters.window_mapped.fetch_sub(1, Ordering::Relaxed);
        }
        true
    }

    /// The process addresses of window pieces `iov`, when each lies on
    /// pages mapped as the I/O needs them (`writes_memory`: the store
    /// writes into them, a guest READ). A faulting window's piece is one
    /// range of its reservation; a premapped window's is cut at page
    /// boundaries into ranges of the guest's RAM, contiguous ones merged.
    fn resolve(&self, iov: &[IoVec], writes_memory: bool) -> Option<Vec<RawIoVec>> {
        let mut out = Vec::new();
        out.try_reserve_exact(iov.len()).ok()?;
        for v in iov {
            let end = v.window_offset.checked_add(v.len)?;
            if end > self.pages() * PAGE_SIZE {
                return None;
            }
            match &self.frames {
                Frames::Faulting(res) => {
                    if v.len > 0 {
                        let first = v.window_offset / PAGE_SIZE;
                        let last = (end - 1) / PAGE_SIZE;
                        for p in first..=last {
                            match res.page_state(p) {
                                Some(PageState::Writable) => {}
                                Some(PageState::ReadOnly) if !writes_memory => {}
                                _ => return None,
                            }
                        }
                    }
                    out.push(RawIoVec {
                        addr: res.base() + v.window_offset,
                        len: v.len,
                    });
                }
                Frames::Premapped(pm) => {
                    let mut off = v.window_offset;
                    while off < end {
                        let page = off / PAGE_SIZE;
                        let in_page = off % PAGE_SIZE;
                        let n = (PAGE_SIZE - in_page).min(end - off);
                        // Acquire: pairs with the map's release.
                        let code = pm.pages[page].load(Ordering::Acquire);
                        let (gfn, writable) = premapped_page(code)?;
                        if writes_memory && !writable {
                            return None;
                        }
                        let (_, view) = pm.view.get()?;
                        let at = usize::try_from(gfn)
                            .ok()?
                            .checked_mul(PAGE_SIZE)?
                            .checked_add(in_page)?;
                        if at.checked_add(n)? > view.len() {
                            return None;
                        }
                        let addr = view.base() + at;
                        match out.last_mut() {
                            Some(last) if last.addr + last.len == addr => last.len += n,
                            _ => out.push(RawIoVec { addr, len: n }),
                        }
                        off += n;
                    }
                }
            }
        }
        Some(out)
    }
}

/// A completion waiting for its queue's thread.
type Completion = (IoTag, Result<(), IoError>);

/// Completions one queue's box keeps without growing (a queue has at most
/// `hw.xbb.max_requests` I/Os in flight).
const COMPLETIONS: usize = 1024;

/// The inbox of one queue's context: its [`Gate`], its completions, the
/// thread to wake, and the queue once it comes home.
#[derive(Debug, Default)]
pub struct QueueBox {
    gate: Gate,
    /// Passes begun, ever (written by the queue's thread alone).
    passes: AtomicU64,
    /// The queue was idle when its thread ended its last pass.
    idle: AtomicBool,
    done: Mutex<VecDeque<Completion>>,
    thread: Mutex<Option<Thread>>,
    home: Mutex<Option<(Queue, SimQueueHost)>>,
    join: Mutex<Option<JoinHandle<()>>>,
    /// The back-end process died ([`SimHost::die`]): the thread stops
    /// where it is and leaves the queue, unanswered, in `home`.
    dead: AtomicBool,
}

impl QueueBox {
    /// Posts work; wakes the thread when the gate says so.
    fn post(&self, work: Work) {
        if self.gate.post(work) == Post::Wake {
            if let Some(t) = locked(&self.thread).as_ref() {
                t.unpark();
            }
        }
    }

    /// A store completion for this queue.
    fn complete(&self, tag: IoTag, r: Result<(), IoError>) {
        locked(&self.done).push_back((tag, r));
        self.post(Work::IO);
    }

    /// Whether the queue is lent and nothing can make its thread run but
    /// someone outside: the thread asleep with nothing posted to its gate,
    /// the queue idle after its last pass (nothing in flight, nothing
    /// waiting), no completion waiting for it. `None` when not lent.
    fn asleep(&self) -> Option<bool> {
        if !self.gate.is_lent() {
            return None;
        }
        // The gate first: its acquire makes the last pass's `idle` visible.
        Some(
            self.gate.is_asleep()
                && self.idle.load(Ordering::Relaxed)
                && locked(&self.done).is_empty(),
        )
    }
}

/// Where events and completions go: the queues' boxes, or (inline) the
/// instance's task thread.
#[derive(Debug)]
struct Router {
    inline: bool,
    tx: Mutex<Sender<TaskEvent>>,
    boxes: Vec<Arc<QueueBox>>,
}

impl Router {
    fn to_task(&self, ev: TaskEvent) {
        let _ = locked(&self.tx).send(ev);
    }

    fn complete(&self, tag: IoTag, r: Result<(), IoError>) {
        if self.inline {
            return self.to_task(TaskEvent::Io(tag, r));
        }
        match self.boxes.get(Queue::of_tag(tag) as usize) {
            Some(b) => b.complete(tag, r),
            None => self.to_task(TaskEvent::Io(tag, r)),
        }
    }

    fn event(&self, queue: QueueId) {
        if self.inline {
            return self.to_task(TaskEvent::Evtchn(queue));
        }
        if let Some(b) = self.boxes.get(queue as usize) {
            b.post(Work::EVENT);
        }
    }
}

#[derive(Debug)]
struct RingMap {
    res: Reservation,
    table: GrantTable,
    handles: Vec<GrantHandle>,
}

/// The platform side of one back-end instance in the simulated host: the
/// control part's [`Host`]; its queue part (inline, every queue's
/// [`QueueHost`]) holds the window, every queue's channel and a handle on
/// the store, which lent queues' hosts take theirs from.
#[derive(Debug)]
pub struct SimHost {
    xen: SimXen,
    cfg: SimHostConfig,
    /// The mapped ring of each queue.
    rings: Vec<(QueueId, RingMap)>,
    store: HostStore,
    router: Arc<Router>,
    counters: Arc<Counters>,
    side: SimQueueHost,
    /// Where journals are kept, and which queue's each open one is.
    journals: Option<InstanceJournals>,
}

impl SimHost {
    /// A host for one instance of `xen`; events for the instance's task go
    /// to `tx`.
    pub fn new(xen: &SimXen, cfg: SimHostConfig, tx: Sender<TaskEvent>) -> SimHost {
        let nboxes = Tunable::MaxQueues.desc().max as usize;
        let router = Arc::new(Router {
            inline: cfg.inline,
            tx: Mutex::new(tx),
            boxes: (0..nboxes).map(|_| Arc::new(QueueBox::default())).collect(),
        });
        let counters = Arc::new(Counters::default());
        let journals = cfg
            .journal_dir
            .clone()
            .map(|d| InstanceJournals::new(JournalFiles::new(d)));
        SimHost {
            xen: xen.clone(),
            store: HostStore::new(cfg.store.clone()),
            side: SimQueueHost {
                xen: xen.clone(),
                backend_dom: cfg.backend_dom,
                ports: Vec::new(),
                window: None,
                store: None,
                counters: Arc::clone(&counters),
                route: Route::Task(Arc::clone(&router)),
                epoch: std::time::Instant::now(),
            },
            router,
            cfg,
            rings: Vec::new(),
            counters,
            journals,
        }
    }

    /// The back-end process dies (issue 16): its queues' threads stop
    /// where they are and answer nothing more; the I/O it queued finishes
    /// (a hold on the store is released: the kernel completes a dead
    /// process's I/O before it is gone), its completions lost; then what
    /// the kernel takes back from a dead process is taken back: each
    /// queue's channel closed (the front-end's port is unbound again), its
    /// ring unmapped, its journal's mapping dropped (the file stays), every
    /// data page unmapped. XenStore is left as it is. The instance must be
    /// dropped without a word; a new one may take the vbd over. A queue
    /// served inline dies with the instance: its ring stays mapped (the
    /// reservation is leaked). Returns the lent queues' counters as their
    /// threads stopped.
    pub fn die(&mut self) -> xbb::stats::Stats {
        let mut counters = xbb::stats::Stats::default();
        for b in &self.router.boxes {
            b.dead.store(true, Ordering::Release);
            if let Some(t) = locked(&b.thread).as_ref() {
                t.unpark();
            }
            if let Some(j) = locked(&b.join).take() {
                let _ = j.join();
            }
        }
        if let Some(f) = &self.cfg.store.faults {
            f.release();
        }
        self.store_close();
        let router = Arc::clone(&self.router);
        for b in &router.boxes {
            let home = locked(&b.home).take();
            if let Some((q, qh)) = home {
                drop(qh);
                // What a release does, without a word to the front-end:
                // unbind, unmap the ring, keep the journal.
                counters.accumulate(&q.release(self, true));
            }
        }
        while let Some(&(q, _, _)) = self.side.ports.first() {
            self.evtchn_unbind(q);
        }
        if let Some(w) = self.side.window.take() {
            for page in 0..w.maps.len() {
                w.unmap_one(page, None, &self.counters);
            }
        }
        counters
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
        let c = &self.counters;
        SimHostStats {
            window_pages: self.side.window.as_ref().map_or(0, |w| w.pages() as u32),
            window_mapped: read(&c.window_mapped) as u32,
            ring_pages: self.rings.iter().map(|(_, r)| r.res.pages() as u32).sum(),
            evtchn_port: self.side.ports.first().map(|p| p.1),
            store_open: self.store.is_open(),
            io_in_flight: self.store.in_flight(),
            map_ops: read(&c.map_ops),
            map_failures: read(&c.map_failures),
            unmap_ops: read(&c.unmap_ops),
            bad_unmaps: read(&c.bad_unmaps),
            leaked_at_release: read(&c.leaked_at_release),
            bad_iovecs: self.store.bad_iovecs(),
            ios_submitted: self.store.submitted(),
            notifies: read(&c.notifies),
            runs_scheduled: read(&c.runs_scheduled),
            rings_mapped: self.rings.len() as u32,
            delayed_eois: read(&c.delayed_eois),
            eoi_timers: read(&c.eoi_timers) as u32,
            pages_copied: read(&c.pages_copied),
            queue_threads: read(&c.queue_threads),
            queue_wakes: read(&c.queue_wakes),
            // The gates before the passes (fields evaluate in order): a
            // pass that ran before a gate was seen asleep is counted.
            queues_asleep: self.router.boxes.iter().all(|b| b.asleep() != Some(false)),
            queue_passes: self
                .router
                .boxes
                .iter()
                .map(|b| b.passes.load(Ordering::Relaxed))
                .sum(),
        }
    }

    /// The process address of data-window page 0, while a window is
    /// reserved ([`GrantMapping::Faulting`] only: a premapped window has
    /// no address range of its own).
    pub fn window_base(&self) -> Option<usize> {
        let res = self.side.window.as_ref()?.reservation()?;
        Some(res.base())
    }

    /// The process address of window byte `window_offset`, when inside the
    /// window ([`GrantMapping::Faulting`] only).
    pub fn window_addr(&self, window_offset: usize) -> Option<usize> {
        let res = self.side.window.as_ref()?.reservation()?;
        (window_offset < res.len()).then(|| res.base() + window_offset)
    }

    /// A queue that came home: its thread gave it back through its box
    /// ([`TaskEvent::QueueHome`]). The thread is joined.
    pub fn take_home(&mut self, queue: QueueId) -> Option<Queue> {
        let b = self.router.boxes.get(queue as usize)?;
        let (q, qh) = locked(&b.home).take()?;
        drop(qh);
        *locked(&b.thread) = None;
        if let Some(j) = locked(&b.join).take() {
            let _ = j.join();
        }
        Some(q)
    }

    /// The host of lent queue `queue`, for its thread: its own channel,
    /// the window and the store as they are now, its box.
    fn queue_host(&self, queue: QueueId, qbox: &Arc<QueueBox>) -> SimQueueHost {
        let side = &self.side;
        SimQueueHost {
            xen: self.xen.clone(),
            backend_dom: self.cfg.backend_dom,
            ports: side
                .ports
                .iter()
                .filter(|p| p.0 == queue)
                .cloned()
                .collect(),
            window: side.window.clone(),
            store: self.store.handle(),
            counters: Arc::clone(&self.counters),
            route: Route::Lent(queue, Arc::clone(qbox)),
            epoch: side.epoch,
        }
    }
}

/// The platform side of queues in their own context: maps into the
/// window, kicks and EOIs their channels, submits to the shared store. A
/// lent queue's host serves that queue on its thread and wakes the thread
/// through the queue's box; the inline host, part of [`SimHost`], serves
/// every queue from the instance's task thread.
pub struct SimQueueHost {
    xen: SimXen,
    backend_dom: DomId,
    /// The bound channels of the queues it serves, with their late-EOI
    /// state.
    ports: Vec<(QueueId, EvtchnPort, Arc<EoiState>)>,
    window: Option<Arc<Window>>,
    store: Option<StoreHandle>,
    counters: Arc<Counters>,
    route: Route,
    epoch: std::time::Instant,
}

/// Where a queue host posts its queues' events and deferred runs.
#[derive(Clone, Debug)]
enum Route {
    /// The box of the lent queue it serves, for the queue's thread.
    Lent(QueueId, Arc<QueueBox>),
    /// The instance's task thread (inline).
    Task(Arc<Router>),
}

impl std::fmt::Debug for SimQueueHost {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let ports: Vec<_> = self.ports.iter().map(|p| (p.0, p.1)).collect();
        f.debug_struct("SimQueueHost")
            .field("ports", &ports)
            .field("route", &self.route)
            .finish()
    }
}

/// The body of a lent queue's thread: serves the queue pass by pass, as
/// its gate (in `qbox`) wakes it, until it is recalled and drained; then
/// gives it back.
fn serve_queue(mut queue: Queue, mut qh: SimQueueHost, qbox: Arc<QueueBox>, ctl: Arc<Router>) {
    // Before the first pass: a post that answers Wake from then on finds
    // this thread to wake.
    *locked(&qbox.thread) = Some(std::thread::current());
    let id = queue.id();
    let mut done: VecDeque<Completion> = VecDeque::with_capacity(COMPLETIONS);
    let mut failed = false;
    loop {
        if qbox.dead.load(Ordering::Acquire) {
            // Nothing more is served or answered: the process is gone.
            *locked(&qbox.home) = Some((queue, qh));
            return;
        }
        let Some(work) = qbox.gate.begin() else {
            // Not lent any more, or a pass is running elsewhere: neither
            // can happen to this thread; wait rather than spin.
            std::thread::park();
            continue;
        };
        bump(&qbox.passes, 1);
        std::mem::swap(&mut *locked(&qbox.done), &mut done);
        let end = queue.pass(&mut qh, work, done.drain(..));
        if let Some(outcome) = end.failed.filter(|_| !failed) {
            failed = true;
            ctl.to_task(TaskEvent::QueueFailed(id, outcome));
        }
        if end.home {
            *locked(&qbox.home) = Some((queue, qh));
            qbox.gate.give_back();
            ctl.to_task(TaskEvent::QueueHome(id));
            return;
        }
        // Before end(): whoever sees the gate asleep sees this too.
        qbox.idle.store(queue.idle(), Ordering::Relaxed);
        if !qbox.gate.end() {
            std::thread::park();
            bump(&qh.counters.queue_wakes, 1);
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

impl SimQueueHost {
    /// Whether it serves queue `queue`.
    fn serves(&self, queue: QueueId) -> bool {
        match &self.route {
            Route::Lent(q, _) => *q == queue,
            Route::Task(_) => true,
        }
    }
}

impl QueueHost for SimQueueHost {
    fn map_batch(&mut self, dom: DomId, ops: &[GrantMapOp], results: &mut [MapResult]) {
        let d = self.xen.domains.get(dom);
        for (op, r) in ops.iter().zip(results.iter_mut()) {
            bump(&self.counters.map_ops, 1);
            *r = match &self.window {
                Some(w) => w.map_one(d.as_ref(), self.backend_dom, op, &self.counters),
                None => Err(GrantError::General),
            };
            if r.is_err() {
                bump(&self.counters.map_failures, 1);
            }
        }
    }

    fn unmap_batch(&mut self, ops: &[GrantUnmapOp]) {
        for op in ops {
            let page = op.window_page.0 as usize;
            let ok = self
                .window
                .as_ref()
                .is_some_and(|w| w.unmap_one(page, Some(op.handle), &self.counters));
            if ok {
                bump(&self.counters.unmap_ops, 1);
            } else {
                bump(&self.counters.bad_unmaps, 1);
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
            let (gfn, h) = d.grants.map(*gref, self.backend_dom, true)?;
            let r = d.memory.read(gfn, 0, chunk);
            let _ = d.grants.unmap(h);
            r.map_err(|_| GrantError::General)?;
            bump(&self.counters.pages_copied, 1);
        }
        Ok(())
    }

    fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    fn evtchn_notify(&mut self, queue: QueueId) {
        let Some(&(_, port, _)) = self.ports.iter().find(|p| p.0 == queue) else {
            return;
        };
        if self.xen.evtchn.notify(self.backend_dom, port).is_ok() {
            bump(&self.counters.notifies, 1);
        }
    }

    /// The EOI of a channel; a kept kick is posted where this host routes
    /// its queues' events, at once or from a timer thread standing in for
    /// the platform's callout.
    fn evtchn_eoi(&mut self, queue: QueueId, delay_ms: u32) {
        let Some((_, _, st)) = self.ports.iter().find(|p| p.0 == queue) else {
            return;
        };
        let st = Arc::clone(st);
        let route = self.route.clone();
        let finish = move || {
            if st.eoi() {
                match &route {
                    Route::Lent(_, qbox) => qbox.post(Work::EVENT),
                    Route::Task(router) => router.to_task(TaskEvent::Evtchn(queue)),
                }
            }
        };
        if delay_ms == 0 {
            return finish();
        }
        bump(&self.counters.delayed_eois, 1);
        // A timer standing in for the platform's callout. It counts itself
        // until the event it may owe is posted, so that the back-end is not
        // taken for quiescent meanwhile.
        let delay = std::time::Duration::from_millis(u64::from(delay_ms));
        let counters = Arc::clone(&self.counters);
        counters.eoi_timers.fetch_add(1, Ordering::AcqRel);
        let spawned = std::thread::Builder::new()
            .name(String::from("xbb-eoi-timer"))
            .spawn(move || {
                std::thread::sleep(delay);
                finish();
                counters.eoi_timers.fetch_sub(1, Ordering::AcqRel);
            });
        if spawned.is_err() {
            self.counters.eoi_timers.fetch_sub(1, Ordering::AcqRel);
        }
    }

    fn store_submit(&mut self, tag: IoTag, op: IoOp<'_>) -> Result<(), IoError> {
        let Some(store) = self.store.as_ref() else {
            return Err(IoError::Gone);
        };
        let window = self.window.as_deref();
        // The RawIoVec obligation: every range is checked to lie on window
        // pages mapped with the right protection; they stay mapped (or, if
        // the core unmapped them early, at least reserved; a premapped
        // window's view of guest RAM stays mapped with the window) until
        // the completion, because the window is never released while I/O
        // is in flight (see window_release and Drop).
        store.submit(tag, op, |iov, write| window?.resolve(iov, write))
    }

    fn schedule_run(&mut self, queue: QueueId) {
        if !self.serves(queue) {
            return;
        }
        bump(&self.counters.runs_scheduled, 1);
        match &self.route {
            Route::Lent(_, qbox) => qbox.post(Work::RUN),
            Route::Task(router) => router.to_task(TaskEvent::Run(queue)),
        }
    }
}

impl Host for SimHost {
    fn window_reserve(&mut self, pages: u32) -> Result<(), GrantError> {
        if self.side.window.is_some() {
            self.window_release();
        }
        let w =
            Window::new(pages as usize, self.cfg.grant_mapping).map_err(|_| GrantError::NoSpace)?;
        self.side.window = Some(Arc::new(w));
        Ok(())
    }

    fn window_release(&mut self) {
        let Some(w) = self.side.window.take() else {
            return;
        };
        for page in 0..w.maps.len() {
            if w.unmap_one(page, None, &self.counters) {
                bump(&self.counters.leaked_at_release, 1);
            }
        }
        if self.store.in_flight() != 0 || Arc::strong_count(&w) > 1 {
            // The store, or a queue's host, may still touch it: keep the
            // range reserved forever rather than let it be reused.
            std::mem::forget(w);
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
            bump(&self.counters.bad_unmaps, 1);
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
                bump(&self.counters.bad_unmaps, 1);
                self.rings.push((queue, rm));
            }
        }
    }

    fn evtchn_bind(&mut self, queue: QueueId, remote: RemotePort) -> Result<(), EvtchnError> {
        let (dom, remote_port) = (remote.dom, remote.port);
        if self.side.ports.iter().any(|p| p.0 == queue) {
            return Err(EvtchnError::General);
        }
        let hub = &self.xen.evtchn;
        let port = hub.bind_interdomain(self.cfg.backend_dom, dom, remote_port)?;
        let router = Arc::clone(&self.router);
        let eoi = Arc::new(EoiState::default());
        let st = Arc::clone(&eoi);
        if let Err(e) = hub.set_handler(
            self.cfg.backend_dom,
            port,
            Box::new(move || {
                if st.kick() {
                    router.event(queue);
                }
            }),
        ) {
            hub.close(self.cfg.backend_dom, port);
            return Err(e);
        }
        self.side.ports.push((queue, port, eoi));
        Ok(())
    }

    fn evtchn_unbind(&mut self, queue: QueueId) {
        if let Some(at) = self.side.ports.iter().position(|p| p.0 == queue) {
            let (_, p, st) = self.side.ports.swap_remove(at);
            st.close();
            self.xen.evtchn.close(self.cfg.backend_dom, p);
        }
    }

    fn store_open(&mut self, params: OpenParams<'_>) -> Result<MediumInfo, OpenError> {
        let image_is_disk = self.cfg.image_is_disk;
        let node = |path: &Path| match store::probe(path)? {
            NodeKind::RegularFile if image_is_disk => Ok(NodeKind::Disk),
            n => Ok(n),
        };
        let router = Arc::clone(&self.router);
        self.side.store = None;
        let info = self
            .store
            .open(params, node, move |tag, r| router.complete(tag, r));
        self.side.store = self.store.handle();
        info
    }

    fn store_info(&self) -> MediumInfo {
        self.store.info()
    }

    fn store_close(&mut self) {
        self.side.store = None;
        self.store.close();
    }

    fn root_mounted(&self) -> bool {
        self.xen.is_root_mounted()
    }

    fn journal_open(&mut self, id: &JournalId, how: JournalOpen) -> Option<SharedMem> {
        self.journals.as_mut()?.open(id, how).ok()?
    }

    fn journal_close(&mut self, queue: QueueId, journal: SharedMem, keep: bool) {
        if !xbb_ustore::close_journal(self.journals.as_mut(), queue, journal, keep) {
            bump(&self.counters.bad_unmaps, 1);
        }
    }

    fn lend(&mut self, queue: Queue) -> Result<(), Queue> {
        if self.cfg.inline {
            return Err(queue);
        }
        let id = queue.id();
        let Some(qbox) = self.router.boxes.get(id as usize).map(Arc::clone) else {
            return Err(queue);
        };
        {
            let mut done = locked(&qbox.done);
            done.clear();
            if done.try_reserve(COMPLETIONS).is_err() {
                return Err(queue);
            }
        }
        let qh = self.queue_host(id, &qbox);
        if !qbox.gate.lend() {
            return Err(queue);
        }
        let ctl = Arc::clone(&self.router);
        let theirs = Arc::clone(&qbox);
        let serve = |q, qh| serve_queue(q, qh, theirs, ctl);
        match store::spawn_queue(&qbox.gate, queue, qh, serve) {
            Ok(j) => {
                *locked(&qbox.join) = Some(j);
                bump(&self.counters.queue_threads, 1);
                Ok(())
            }
            Err(Some((q, _))) => Err(q),
            Err(None) => Ok(()),
        }
    }

    fn recall(&mut self, queue: QueueId) {
        if let Some(b) = self.router.boxes.get(queue as usize) {
            b.post(Work::RECALL);
        }
    }

    fn inline(&mut self) -> Option<&mut dyn QueueHost> {
        if self.cfg.inline {
            Some(&mut self.side)
        } else {
            None
        }
    }
}

impl Drop for SimHost {
    fn drop(&mut self) {
        // The store first: `close` waits for every queued I/O, so nothing
        // touches the window once it is released.
        self.store_close();
        while let Some(&(q, _, _)) = self.side.ports.first() {
            self.evtchn_unbind(q);
        }
        if self.side.window.is_some() {
            self.window_release();
        }
        // A ring the core never handed back stays mapped (its reservation
        // leaks the range), and its grants stay mapped: visible to tests in
        // the guest's grant counters.
    }
}
