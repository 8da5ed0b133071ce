//! The one fake platform: every trait of [`xbb::host`] in memory, single
//! threaded and deterministic, with a log of contract violations and
//! failures to inject. Every integration test of the core and every fuzz
//! body drives an [`Instance`] over it.
//!
//! - XenStore is an [`XsMap`] (transactions buffered until commit).
//! - Guest memory is a set of 4 KiB pages, one per grant reference
//!   ([`FakeHost::grant`]); references start at 8, so [`BAD_GREF`] and
//!   everything below are never granted. The shared ring is offered with
//!   [`FakeHost::frontend_ring`] (fresh memory) or
//!   [`FakeHost::offer_ring`] (memory the caller keeps across runs); the
//!   rings of a multi-queue front-end with [`FakeHost::offer_queue_ring`].
//!   `map_ring` maps the offered ring whose pages a queue names, each
//!   ring once; `evtchn_bind` binds an offered port that no other queue
//!   holds, as Xen binds only an unbound port.
//! - `map_batch` records which grant each window page shows (refusing a
//!   writable mapping of a read-only grant); I/O then copies between the
//!   medium and the guest pages those window pages map.
//! - The medium is a `Vec<u8>`. `store_submit` only queues; the test
//!   performs queued I/O with [`FakeHost::complete_next`],
//!   [`FakeHost::complete_at`] or [`FakeHost::complete_all`], which call
//!   `Instance::complete`, or takes it with [`FakeHost::take_done`] and
//!   calls `Instance::complete` itself.
//! - With [`FakeHost::journals`] it keeps in-flight journals as a
//!   platform whose memory outlives the process does; with
//!   [`FakeHost::process_died`] the back-end process dies, and a new
//!   instance over the same host can take its vbd over.
//!
//! Every call is checked against the contract of [`xbb::host`]: a window
//! reserved twice, a page mapped twice, I/O over an unmapped or read-only
//! page or outside the medium, a tag reused while in flight, a notify on an
//! unbound channel, a store closed with I/O in flight, ... Each violation
//! is logged in [`FakeHost::violations`]; with [`FakeHost::strict`] (the
//! default) it also panics at once, where the core made the call.
//!
//! The I/O path of the fake does not allocate: its I/O slots and their
//! iovec buffers are sized when it is built and the window table at
//! reserve time, and its logs grow under [`Quiet`], so that a counting
//! allocator sees only the core.
//!
//! With [`FakeConfig::null`] the same host is a null platform, for
//! measuring the core's own cost (`testing/benches/core_cost.rs`): its
//! request path does as little as a platform can. Every grant mapping
//! succeeds at once with nothing recorded, unmapping does nothing,
//! `store_submit` only queues the tag, a completion touches no data, and
//! nothing on that path is checked or logged. The control part
//! (XenStore, rings, channels, the window) is the same as ever.

use std::collections::VecDeque;

use std::sync::atomic::Ordering;

use xbb::abi::{
    Abi, SRING_HEADER_SIZE, SRING_RSP_PROD, XEN_IO_PROTO_ABI_X86_32, XEN_IO_PROTO_ABI_X86_64,
};
use xbb::host::{
    DomId, EvtchnError, EvtchnPort, GrantError, GrantHandle, GrantMapOp, GrantRef, GrantUnmapOp,
    Granted, Host, IoError, IoOp, IoTag, IoVec, JournalOpen, MapResult, MediumInfo, OpenError,
    OpenParams, QueueHost, QueueId, RemotePort, XenStore, XenbusState, XsError, XsTxn, PAGE_SIZE,
};
use xbb::instance::Instance;
use xbb::journal::JournalId;
use xbb::keys;
use xbb::ring::FrontRing;
use xbb::shmem::SharedMem;
use xbb::stats::Tunables;
use xbb::units::Sectors;

use crate::alloc::Quiet;
use crate::xenstore::XsMap;

/// The back-end directory [`FakeHost::standard_nodes`] writes.
pub const BE_PATH: &str = "/local/domain/0/backend/vbd/1/51712";
/// The front-end directory [`FakeHost::standard_nodes`] writes.
pub const FE_PATH: &str = "/local/domain/1/device/vbd/51712";
/// The front-end's domain.
pub const FE_DOM: DomId = 1;
/// The front-end's event-channel port.
pub const FE_PORT: EvtchnPort = 9;
/// A grant reference the fake never hands out.
pub const BAD_GREF: GrantRef = 7;
/// The bytes of a medium of `sectors`.
fn medium_bytes(sectors: Sectors) -> usize {
    let bytes = sectors.bytes().expect("medium size");
    usize::try_from(bytes.0).expect("medium size")
}

/// The first grant reference the fake hands out.
const FIRST_GREF: GrantRef = 8;

/// Sizes and behaviour of a [`FakeHost`].
#[derive(Clone, Copy, Debug)]
pub struct FakeConfig {
    /// What `store_open` reports (and the medium's size).
    pub medium: MediumInfo,
    /// Data pages the test may grant without the host reallocating.
    pub max_grants: usize,
    /// I/Os that may be queued at once; more are refused with `Busy`.
    pub max_in_flight: usize,
    /// The longest iovec list one I/O may carry.
    pub max_iov: usize,
    /// The largest window the instance may reserve.
    pub max_window_pages: usize,
    /// A null platform on the request path (see the module's doc): no
    /// contract checks there, no grant bookkeeping, no data moved.
    pub null: bool,
}

impl Default for FakeConfig {
    fn default() -> Self {
        FakeConfig {
            medium: MediumInfo {
                sectors: Sectors(4096),
                sector_size: 512,
                physical_sector_size: 512,
                read_only: false,
                can_flush: true,
                can_discard: false,
                is_device: false,
                ..MediumInfo::default()
            },
            max_grants: 256,
            max_in_flight: 1024,
            max_iov: 256,
            max_window_pages: 1 << 14,
            null: false,
        }
    }
}

/// Platform failures to inject; each fires once per unit and is used up.
#[derive(Clone, Copy, Debug, Default)]
pub struct Faults {
    /// Refuse the next N `store_submit` calls with `Busy`.
    pub submits: u32,
    /// Fail the next N grant mappings with `NoSpace`.
    pub maps: u32,
    /// Complete the next N I/Os with [`Faults::io_error`] instead of
    /// performing them ([`FakeHost::complete_next`]).
    pub ios: u32,
    /// The error of [`Faults::ios`].
    pub io_error: Option<IoError>,
    /// The next ring mapping fails.
    pub ring_map: bool,
    /// The next ring mapping is half a page long (shorter than asked).
    pub short_ring: bool,
    /// The next event-channel bind fails.
    pub bind: bool,
    /// The next window reservation fails.
    pub window: bool,
    /// The next store open fails.
    pub open: bool,
    /// Behave as a platform that lends its queues and could not lend
    /// them: [`Host::inline`] answers `None` while set (and `lend` keeps
    /// refusing, its default).
    pub no_inline: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Grant {
    /// Data page `index` of `FakeHost::guest`.
    Data { index: usize, readonly: bool },
    /// A page of the shared ring.
    Ring,
}

#[derive(Clone, Copy, Debug)]
struct Mapping {
    gref: GrantRef,
    readonly: bool,
    handle: u32,
}

/// A shared ring the front-end offers: its pages' grants, its port and,
/// while no queue maps it, the back-end's view of its memory.
#[derive(Debug, Default)]
struct RingOffer {
    grefs: Vec<GrantRef>,
    port: EvtchnPort,
    back: Option<SharedMem>,
    /// The address of the back view (to know it again when unmapped).
    addr: usize,
    /// More back views of the ring's memory, for the back-ends that take
    /// it over after one died ([`FakeHost::frontend_ring`] makes them).
    spares: Vec<SharedMem>,
}

/// One queue's in-flight journal, as the platform keeps it between
/// processes.
#[derive(Debug, Default)]
struct KeptJournal {
    /// Views of its memory not handed out.
    spares: Vec<SharedMem>,
    /// The address of the view handed out, while one is.
    out: Option<usize>,
}

/// A ring a queue has mapped.
#[derive(Clone, Copy, Debug)]
struct MappedRing {
    queue: QueueId,
    addr: usize,
    /// The slot of the offer mapped.
    slot: usize,
}

/// What a store I/O does: the core's own kind, as its observers get it.
pub use xbb::host::IoKind;

/// One `store_submit` call, as [`FakeHost::log`] keeps it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Submission {
    /// The core's tag.
    pub tag: IoTag,
    /// What it does.
    pub kind: IoKind,
    /// Medium byte offset (0 for a flush).
    pub offset: u64,
    /// Whether the fake queued it (else it refused it).
    pub accepted: bool,
}

/// One queued I/O; its iovec buffer is allocated once, at construction.
#[derive(Debug)]
struct IoSlot {
    tag: IoTag,
    kind: IoKind,
    offset: u64,
    len: u64,
    iov: Vec<IoVec>,
}

/// The fake platform. Public fields are counters for the test to read and
/// switches for it to set.
#[derive(Debug)]
pub struct FakeHost {
    /// The XenStore.
    pub xs: XsMap,
    /// Whether the root file system is mounted.
    pub root: bool,
    /// [`Host::waits_for_hotplug`].
    pub hotplug_gate: bool,
    /// Failures to inject.
    pub faults: Faults,
    /// Panic at the first contract violation (else only log it).
    pub strict: bool,
    /// Keep in-flight journals ([`Host::journal_open`]); off by default,
    /// as a platform without memory that outlives it.
    pub journals: bool,
    /// Every contract violation seen, in order.
    pub violations: Vec<String>,
    cfg: FakeConfig,
    grants: Vec<Grant>,
    guest: Vec<u8>,
    /// Rings on offer by slot: slot 0 is [`FakeHost::offer_ring`]'s,
    /// slot `q` also [`FakeHost::offer_queue_ring`]`(q)`'s.
    rings: Vec<RingOffer>,
    /// Rings mapped now, by queue.
    mapped: Vec<MappedRing>,
    /// Event channels bound now: (queue, the front-end's port).
    bound: Vec<(QueueId, EvtchnPort)>,
    window: Vec<Option<Mapping>>,
    window_reserved: bool,
    next_handle: u32,
    /// Grant mappings currently in place in the window.
    pub live_mappings: usize,
    /// Grant mappings made and removed, in all.
    pub grants_mapped: u64,
    /// See [`FakeHost::grants_mapped`].
    pub grants_unmapped: u64,
    /// Ring mappings made and removed.
    pub ring_maps: u32,
    /// See [`FakeHost::ring_maps`].
    pub ring_unmaps: u32,
    /// The ring's `rsp_prod` when it was last mapped: where the back ring
    /// attached (responses below it belong to earlier connections).
    pub rsp_prod_at_map: u32,
    /// Window reservations made and released.
    pub window_reserves: u32,
    /// See [`FakeHost::window_reserves`].
    pub window_releases: u32,
    /// The medium's bytes.
    pub medium: Vec<u8>,
    store_open: bool,
    /// Store opens and closes.
    pub store_opens: u32,
    /// See [`FakeHost::store_opens`].
    pub store_closes: u32,
    slots: Vec<IoSlot>,
    free_slots: Vec<usize>,
    queue: VecDeque<usize>,
    /// Every `store_submit` call, refused ones included.
    pub log: Vec<Submission>,
    /// Binds and unbinds.
    pub binds: u32,
    /// See [`FakeHost::binds`].
    pub unbinds: u32,
    /// Events sent to the front-end.
    pub notifications: u64,
    /// `schedule_run` calls not yet honoured by [`FakeHost::run_deferred`].
    pub schedule_runs: u64,
    /// The queues those runs are for, one bit per queue (a queue above 63
    /// sets bit 63).
    pub scheduled_queues: u64,
    /// I/Os queued so far.
    pub submitted: u64,
    /// I/Os completed so far.
    pub completed: u64,
    /// What `now_ms` reports; the test moves the clock.
    pub now_ms: u64,
    /// `evtchn_eoi` calls, the last delay asked for, the largest.
    pub eois: u64,
    /// See [`FakeHost::eois`].
    pub last_eoi_delay: u32,
    /// See [`FakeHost::eois`].
    pub max_eoi_delay: u32,
    /// Pages `copy_in` copied (indirect descriptor pages).
    pub pages_copied: u64,
    /// Connections made: writes of Connected to the back-end's `state`
    /// outside a transaction.
    pub connects: u64,
    /// Fatal errors reported: writes below `error/`.
    pub fatals: u64,
    /// Each queue's journal, by queue.
    kept: Vec<KeptJournal>,
    /// The identity the journal of the queue was last opened for.
    pub journal_id: Option<JournalId>,
    /// Journals made for new connections.
    pub journals_created: u32,
    /// Journals opened for a takeover (found or not).
    pub journal_lookups: u32,
    /// Journals kept at close (handed over) and removed.
    pub journals_kept: u32,
    /// See [`FakeHost::journals_kept`].
    pub journals_removed: u32,
    /// Back-end processes that died ([`FakeHost::process_died`]).
    pub deaths: u32,
}

impl FakeHost {
    /// A host with every buffer of the I/O path allocated now.
    pub fn new(cfg: FakeConfig) -> FakeHost {
        let medium_len = medium_bytes(cfg.medium.sectors);
        let slots = (0..cfg.max_in_flight)
            .map(|_| IoSlot {
                tag: IoTag(0),
                kind: IoKind::Flush,
                offset: 0,
                len: 0,
                iov: Vec::with_capacity(cfg.max_iov),
            })
            .collect();
        FakeHost {
            xs: XsMap::default(),
            root: true,
            hotplug_gate: false,
            faults: Faults::default(),
            strict: true,
            journals: false,
            violations: Vec::new(),
            cfg,
            grants: Vec::with_capacity(cfg.max_grants + 64),
            guest: Vec::with_capacity(cfg.max_grants * PAGE_SIZE),
            rings: Vec::new(),
            mapped: Vec::new(),
            bound: Vec::new(),
            window: Vec::with_capacity(cfg.max_window_pages),
            window_reserved: false,
            next_handle: 0,
            live_mappings: 0,
            grants_mapped: 0,
            grants_unmapped: 0,
            ring_maps: 0,
            ring_unmaps: 0,
            rsp_prod_at_map: 0,
            window_reserves: 0,
            window_releases: 0,
            medium: vec![0; medium_len],
            store_open: false,
            store_opens: 0,
            store_closes: 0,
            slots,
            free_slots: (0..cfg.max_in_flight).rev().collect(),
            queue: VecDeque::with_capacity(cfg.max_in_flight),
            log: Vec::with_capacity(4096),
            binds: 0,
            unbinds: 0,
            notifications: 0,
            schedule_runs: 0,
            scheduled_queues: 0,
            submitted: 0,
            completed: 0,
            now_ms: 0,
            eois: 0,
            last_eoi_delay: 0,
            max_eoi_delay: 0,
            pages_copied: 0,
            connects: 0,
            fatals: 0,
            kept: Vec::new(),
            journal_id: None,
            journals_created: 0,
            journal_lookups: 0,
            journals_kept: 0,
            journals_removed: 0,
            deaths: 0,
        }
    }

    /// The back-end process died (issue 16): the kernel takes back what
    /// it held — its grant mappings, its rings' mappings, its
    /// event-channel bindings (the front-end's ports are unbound again),
    /// its store — after the I/O it had queued finished (performed, never
    /// completed to it). The instance is gone without a word (the test
    /// drops it); memory that outlives the process (the journals, the
    /// rings) stays, and a new instance over this host may take the vbd
    /// over.
    pub fn process_died(&mut self) {
        while let Some(i) = self.queue.pop_front() {
            self.perform(i);
            self.free_slots.push(i);
        }
        self.grants_unmapped += self.live_mappings as u64;
        self.live_mappings = 0;
        self.window.iter_mut().for_each(|m| *m = None);
        if std::mem::take(&mut self.window_reserved) {
            self.window_releases += 1;
        }
        for m in std::mem::take(&mut self.mapped) {
            self.ring_unmaps += 1;
            let offer = &mut self.rings[m.slot];
            if let Some(v) = offer.spares.pop() {
                offer.addr = v.as_ptr() as usize;
                offer.back = Some(v);
            }
        }
        self.unbinds += self.bound.len() as u32;
        self.bound.clear();
        if std::mem::take(&mut self.store_open) {
            self.store_closes += 1;
        }
        for j in &mut self.kept {
            j.out = None;
        }
        self.deaths += 1;
    }

    /// Whether a journal is kept for the next process (queue 0's).
    pub fn has_journal(&self) -> bool {
        self.kept.first().is_some_and(|j| !j.spares.is_empty())
    }

    /// Grows or shrinks the medium (the test then calls
    /// `Instance::medium_changed`, as the platform would).
    pub fn resize_medium(&mut self, sectors: Sectors) {
        self.cfg.medium.sectors = sectors;
        self.medium.resize(medium_bytes(sectors), 0);
    }

    /// Sets what the store reports from now on (before attach).
    pub fn set_medium(&mut self, m: MediumInfo) {
        self.cfg.medium = m;
        self.medium.resize(medium_bytes(m.sectors), 0);
    }

    // --- Contract -------------------------------------------------------------

    /// Logs a contract violation (and panics when [`FakeHost::strict`]).
    fn violation(&mut self, what: String) {
        let _q = Quiet::new();
        if self.strict {
            panic!("contract violation: {what}");
        }
        self.violations.push(what);
    }

    /// Logs a violation unless `ok`.
    fn expect(&mut self, ok: bool, what: impl FnOnce() -> String) -> bool {
        if !ok {
            self.violation(what());
        }
        ok
    }

    /// No contract violation was seen.
    pub fn assert_clean(&self) {
        assert!(self.violations.is_empty(), "{:#?}", self.violations);
    }

    /// Nothing a connection held is still held: no grant mapped, no
    /// window, no channel bound, no ring mapped, and every reservation,
    /// mapping and bind was undone as often as it was made.
    pub fn assert_released(&self) {
        assert_eq!(self.live_mappings, 0, "grants still mapped");
        assert!(!self.window_reserved, "window not released");
        assert!(self.bound.is_empty(), "event channel still bound");
        assert!(self.mapped.is_empty(), "ring still mapped");
        assert_eq!(self.ring_maps, self.ring_unmaps, "ring maps vs unmaps");
        assert_eq!(self.binds, self.unbinds, "binds vs unbinds");
        assert_eq!(
            self.window_reserves, self.window_releases,
            "window reserves vs releases"
        );
        assert_eq!(self.grants_mapped, self.grants_unmapped);
    }

    // --- XenStore, for the test -------------------------------------------

    /// Writes a node.
    pub fn xs_set(&mut self, path: &str, value: &str) {
        self.xs.set(path, value.as_bytes());
    }

    /// Reads a node.
    pub fn xs_get(&self, path: &str) -> Option<&str> {
        self.xs.get(path)
    }

    /// Writes node `key` of the back-end's directory.
    pub fn be_set(&mut self, key: &str, value: &str) {
        self.xs_set(&format!("{BE_PATH}/{key}"), value);
    }

    /// Writes node `key` of the front-end's directory.
    pub fn fe_set(&mut self, key: &str, value: &str) {
        self.xs_set(&format!("{FE_PATH}/{key}"), value);
    }

    /// The toolstack's back-end nodes for [`BE_PATH`] / [`FE_PATH`].
    pub fn standard_nodes(&mut self, writable: bool, online: bool) {
        self.be_set(keys::FRONTEND, FE_PATH);
        self.be_set(keys::FRONTEND_ID, &FE_DOM.to_string());
        self.be_set(keys::PARAMS, "/fake/disk");
        self.be_set(keys::TYPE, "file");
        self.be_set(keys::MODE, if writable { "w" } else { "r" });
        self.be_set(keys::ONLINE, if online { "1" } else { "0" });
        self.set_frontend_state(XenbusState::Initialising);
    }

    /// Writes the front-end's `state` node (the test then calls
    /// `Instance::frontend_changed`, as a watch would).
    pub fn set_frontend_state(&mut self, s: XenbusState) {
        self.fe_set(keys::STATE, s.as_str());
    }

    /// The back-end's published state.
    pub fn backend_state(&self) -> Option<&str> {
        self.xs_get(&format!("{BE_PATH}/{}", keys::STATE))
    }

    // --- Guest memory -------------------------------------------------------

    /// Attaches an instance of [`BE_PATH`] with tunables `t`, which must
    /// connect at once (the front-end is ready): the instance, Connected.
    pub fn attach_connected(&mut self, t: &Tunables) -> Instance {
        let mut inst = Instance::new(BE_PATH, t).expect("instance");
        inst.attach(self);
        let why = inst.last_error();
        assert_eq!(inst.state(), XenbusState::Connected, "{why:?}");
        inst
    }

    /// Grants one page holding `bytes` (zero-padded to a page).
    pub fn grant(&mut self, bytes: &[u8], readonly: bool) -> GrantRef {
        let index = self.guest.len() / PAGE_SIZE;
        let n = bytes.len().min(PAGE_SIZE);
        self.guest.extend_from_slice(&bytes[..n]);
        self.guest.resize((index + 1) * PAGE_SIZE, 0);
        self.push_grant(Grant::Data { index, readonly })
    }

    /// Grants `n` zeroed, writable pages; their references are
    /// consecutive from the one returned.
    pub fn grant_pages(&mut self, n: usize) -> GrantRef {
        let first = self.grant(&[], false);
        for _ in 1..n {
            self.grant(&[], false);
        }
        first
    }

    fn push_grant(&mut self, g: Grant) -> GrantRef {
        self.grants.push(g);
        FIRST_GREF + (self.grants.len() - 1) as GrantRef
    }

    fn lookup(&self, gref: GrantRef) -> Option<Grant> {
        let i = gref.checked_sub(FIRST_GREF)?;
        self.grants.get(i as usize).copied()
    }

    fn data_range(&self, gref: GrantRef) -> std::ops::Range<usize> {
        match self.lookup(gref) {
            Some(Grant::Data { index, .. }) => index * PAGE_SIZE..(index + 1) * PAGE_SIZE,
            other => panic!("grant {gref} is not a data page: {other:?}"),
        }
    }

    /// A granted data page.
    pub fn page(&self, gref: GrantRef) -> &[u8] {
        &self.guest[self.data_range(gref)]
    }

    /// A granted data page, for the guest to fill.
    pub fn page_mut(&mut self, gref: GrantRef) -> &mut [u8] {
        let r = self.data_range(gref);
        &mut self.guest[r]
    }

    /// Sets up a shared ring of `pages` pages in fresh memory as a
    /// front-end does; see [`FakeHost::offer_ring`]. The memory has views
    /// to spare for back-ends that take over after one died.
    pub fn frontend_ring(&mut self, abi: Abi, pages: u32) -> FrontRing {
        let mut v = SharedMem::leak_views(pages as usize * PAGE_SIZE, 8).expect("ring memory");
        let front = v.remove(0);
        let back = v.remove(0);
        let ring = self.offer_ring(front, back, abi, pages);
        self.rings[0].spares = v;
        ring
    }

    /// Sets up a shared ring of `pages` pages in `front` / `back` (two
    /// views of the same memory, at least that long) as a front-end does:
    /// grants its pages (the first time), initialises it, and writes
    /// `ring-ref*`, `ring-page-order`, `event-channel` ([`FE_PORT`]) and
    /// `protocol` under [`FE_PATH`]. The back view of the ring last
    /// offered comes back with [`FakeHost::take_ring`] once unmapped.
    pub fn offer_ring(
        &mut self,
        front: SharedMem,
        back: SharedMem,
        abi: Abi,
        pages: u32,
    ) -> FrontRing {
        self.offer_slot(0, String::new(), front, back, abi, pages)
    }

    /// The ring of queue `queue` of a multi-queue front-end, as
    /// [`FakeHost::offer_ring`] offers the only one, its nodes under
    /// `queue-N/` (`ring-ref*`, `event-channel` = [`FE_PORT`] + `queue`);
    /// `protocol` and `ring-page-order` stay top-level, and
    /// `multi-queue-num-queues` is the caller's to write. Its back view
    /// comes back with [`FakeHost::take_queue_ring`].
    pub fn offer_queue_ring(
        &mut self,
        queue: QueueId,
        front: SharedMem,
        back: SharedMem,
        abi: Abi,
        pages: u32,
    ) -> FrontRing {
        let dir = format!("queue-{queue}/");
        self.offer_slot(queue as usize, dir, front, back, abi, pages)
    }

    fn offer_slot(
        &mut self,
        slot: usize,
        dir: String,
        front: SharedMem,
        back: SharedMem,
        abi: Abi,
        pages: u32,
    ) -> FrontRing {
        if self.rings.len() <= slot {
            self.rings.resize_with(slot + 1, RingOffer::default);
        }
        // A new ring replaces one on offer; one still mapped (draining)
        // is not handed back when unmapped.
        if self.rings[slot].grefs.len() != pages as usize {
            let grefs = (0..pages).map(|_| self.push_grant(Grant::Ring)).collect();
            self.rings[slot].grefs = grefs;
        }
        let port = FE_PORT + slot as EvtchnPort;
        let r = &mut self.rings[slot];
        r.port = port;
        r.addr = back.as_ptr() as usize;
        r.back = Some(back);
        r.spares.clear();
        let grefs = r.grefs.clone();
        if pages == 1 && dir.is_empty() {
            self.fe_set(keys::RING_REF, &grefs[0].to_string());
        } else {
            self.fe_set(keys::RING_PAGE_ORDER, &pages.trailing_zeros().to_string());
            for (i, g) in grefs.into_iter().enumerate() {
                self.fe_set(&format!("{dir}{}{i}", keys::RING_REF), &g.to_string());
            }
        }
        self.fe_set(&format!("{dir}{}", keys::EVENT_CHANNEL), &port.to_string());
        let proto = match abi {
            Abi::X86_32 => XEN_IO_PROTO_ABI_X86_32,
            Abi::X86_64 => XEN_IO_PROTO_ABI_X86_64,
        };
        self.fe_set(keys::PROTOCOL, proto);
        for page in 0..pages as usize {
            front.write(page * PAGE_SIZE, &[0u8; PAGE_SIZE]);
        }
        FrontRing::init(front, abi, pages).expect("ring init")
    }

    /// The ring's back view, once the instance no longer maps it.
    pub fn take_ring(&mut self) -> Option<SharedMem> {
        self.take_queue_ring(0)
    }

    /// The back view of queue `queue`'s ring, once no queue maps it.
    pub fn take_queue_ring(&mut self, queue: QueueId) -> Option<SharedMem> {
        self.rings.get_mut(queue as usize)?.back.take()
    }

    /// Gives back the view [`FakeHost::take_ring`] took (a test wrote
    /// through it, as a hostile guest would): the next mapping hands it
    /// out.
    pub fn give_ring(&mut self, back: SharedMem) {
        if let Some(r) = self.rings.first_mut() {
            r.addr = back.as_ptr() as usize;
            r.back = Some(back);
        }
    }

    /// The grant references of the ring's pages.
    pub fn ring_grefs(&self) -> &[GrantRef] {
        self.queue_ring_grefs(0)
    }

    /// The grant references of queue `queue`'s ring pages (none before it
    /// was offered).
    pub fn queue_ring_grefs(&self, queue: QueueId) -> &[GrantRef] {
        self.rings.get(queue as usize).map_or(&[], |r| &r.grefs)
    }

    /// The slot of the ring queue `queue` has mapped (0 for
    /// [`FakeHost::offer_ring`]'s, `q` for
    /// [`FakeHost::offer_queue_ring`]`(q)`'s).
    pub fn ring_slot(&self, queue: QueueId) -> Option<usize> {
        self.mapped
            .iter()
            .find(|m| m.queue == queue)
            .map(|m| m.slot)
    }

    /// Whether a queue maps the ring of slot `slot`.
    pub fn slot_mapped(&self, slot: usize) -> bool {
        self.mapped.iter().any(|m| m.slot == slot)
    }

    /// The front-end's port for the ring of slot `slot`.
    pub fn queue_port(&self, slot: QueueId) -> EvtchnPort {
        FE_PORT + slot
    }

    /// Whether the instance has a ring mapped.
    pub fn ring_mapped(&self) -> bool {
        !self.mapped.is_empty()
    }

    /// Rings the instance has mapped.
    pub fn rings_mapped(&self) -> usize {
        self.mapped.len()
    }

    /// Whether queue `queue` has its event channel bound.
    pub fn evtchn_bound(&self, queue: QueueId) -> bool {
        self.bound.iter().any(|&(q, _)| q == queue)
    }

    /// Event channels bound now.
    pub fn channels_bound(&self) -> usize {
        self.bound.len()
    }

    /// Whether the instance holds a data window.
    pub fn window_reserved(&self) -> bool {
        self.window_reserved
    }

    /// Whether the store is open.
    pub fn store_is_open(&self) -> bool {
        self.store_open
    }

    // --- Driving I/O ----------------------------------------------------------

    /// I/Os queued and not completed.
    pub fn pending(&self) -> usize {
        self.queue.len()
    }

    /// The tag of queued I/O number `idx` (0: the oldest).
    pub fn pending_tag(&self, idx: usize) -> Option<IoTag> {
        self.queue.get(idx).map(|&i| self.slots[i].tag)
    }

    /// Completes queued I/O number `idx` (0: the oldest) with `result`,
    /// performing it first when `result` is `Ok` (an I/O past the end of
    /// a medium shrunk meanwhile fails with [`IoError::Io`] instead).
    /// `false` when there is no such I/O.
    pub fn complete_at(
        &mut self,
        inst: &mut Instance,
        idx: usize,
        result: Result<(), IoError>,
    ) -> bool {
        let Some((tag, result)) = self.finish_at(idx, result) else {
            return false;
        };
        inst.complete(self, tag, result);
        true
    }

    /// Takes the oldest queued I/O off the queue, performed (not with
    /// [`FakeConfig::null`]) and done, for the caller to hand to the
    /// instance itself (`Instance::complete`), as a platform draining its
    /// completion queue does: its tag and result. `None` when none.
    pub fn take_done(&mut self) -> Option<(IoTag, Result<(), IoError>)> {
        self.finish_at(0, Ok(()))
    }

    /// Ends queued I/O number `idx` with `result`, performing it first
    /// when that is `Ok` (unless the medium shrank past it meanwhile, or
    /// the platform is null).
    fn finish_at(
        &mut self,
        idx: usize,
        result: Result<(), IoError>,
    ) -> Option<(IoTag, Result<(), IoError>)> {
        let i = self.queue.remove(idx)?;
        let IoSlot {
            tag, offset, len, ..
        } = self.slots[i];
        // A medium shrunk under an I/O in flight fails it, as a device
        // does past its new end.
        let inside = offset.saturating_add(len) <= self.medium.len() as u64;
        let result = match result {
            Ok(()) if !inside => Err(IoError::Io),
            r => r,
        };
        if result.is_ok() && !self.cfg.null {
            self.perform(i);
        }
        self.free_slots.push(i);
        self.completed += 1;
        Some((tag, result))
    }

    /// Performs the oldest queued I/O and completes it (or completes it
    /// with the armed [`Faults::ios`] error). `false` when none.
    pub fn complete_next(&mut self, inst: &mut Instance) -> bool {
        let result = if self.faults.ios > 0 {
            self.faults.ios -= 1;
            Err(self.faults.io_error.unwrap_or(IoError::Io))
        } else {
            Ok(())
        };
        self.complete_at(inst, 0, result)
    }

    /// Completes queued I/O, including I/O submitted meanwhile, until none
    /// is left; returns how many.
    pub fn complete_all(&mut self, inst: &mut Instance) -> usize {
        let mut n = 0;
        while self.complete_next(inst) {
            n += 1;
        }
        n
    }

    /// Honours `schedule_run` requests: calls `Instance::run` once per
    /// request outstanding. Returns how many runs it made.
    pub fn run_deferred(&mut self, inst: &mut Instance) -> u64 {
        let mut n = 0;
        while self.schedule_runs > 0 {
            self.schedule_runs -= 1;
            // Each queue asked for at most this run (a request for a queue
            // already due is the same run).
            let due = std::mem::take(&mut self.scheduled_queues);
            for q in (0..64).filter(|q| due & 1 << q != 0) {
                inst.run(self, q);
            }
            if due == 0 {
                inst.run(self, 0);
            }
            n += 1;
        }
        n
    }

    fn perform(&mut self, slot: usize) {
        let IoSlot {
            kind, offset, len, ..
        } = self.slots[slot];
        let off = offset as usize;
        match kind {
            IoKind::Flush => {}
            IoKind::Discard => self.medium[off..off + len as usize].fill(0),
            IoKind::Read | IoKind::Write => {
                let mut med = off;
                for k in 0..self.slots[slot].iov.len() {
                    let v = self.slots[slot].iov[k];
                    let (mut wo, mut left) = (v.window_offset, v.len);
                    while left > 0 {
                        let in_page = wo % PAGE_SIZE;
                        let n = left.min(PAGE_SIZE - in_page);
                        let m = self.window[wo / PAGE_SIZE].expect("I/O over an unmapped page");
                        let g = self.data_range(m.gref).start + in_page;
                        if kind == IoKind::Read {
                            self.guest[g..g + n].copy_from_slice(&self.medium[med..med + n]);
                        } else {
                            self.medium[med..med + n].copy_from_slice(&self.guest[g..g + n]);
                        }
                        wo += n;
                        left -= n;
                        med += n;
                    }
                }
            }
        }
    }

    /// Checks one I/O's buffer: inside the window, every page mapped (and
    /// writable when the store writes into it), sector-granular. Returns
    /// its length in bytes.
    fn check_iov(&mut self, iov: &[IoVec], into_guest: bool) -> u64 {
        self.expect(self.window_reserved, || "I/O without a window".into());
        self.expect(!iov.is_empty(), || "data I/O without a buffer".into());
        let mut total = 0u64;
        for v in iov {
            let granular = v.len > 0 && v.window_offset % 512 == 0 && v.len % 512 == 0;
            self.expect(granular, || format!("iovec not sector-granular: {v:?}"));
            let end = v.window_offset.saturating_add(v.len);
            if !self.expect(end <= self.window.len() * PAGE_SIZE, || {
                format!("iovec outside the window: {v:?}")
            }) {
                continue;
            }
            for p in v.window_offset / PAGE_SIZE..end.div_ceil(PAGE_SIZE) {
                match self.window[p] {
                    None => self.violation(format!("I/O over unmapped window page {p}")),
                    Some(m) if into_guest && m.readonly => {
                        self.violation(format!("read into read-only window page {p}"));
                    }
                    Some(_) => {}
                }
            }
            total += v.len as u64;
        }
        total
    }
}

impl XenStore for FakeHost {
    fn xs_read(&mut self, txn: XsTxn, path: &str, buf: &mut [u8]) -> Result<usize, XsError> {
        let _q = Quiet::new();
        self.xs.xs_read(txn, path, buf)
    }

    fn xs_write(&mut self, txn: XsTxn, path: &str, value: &str) -> Result<(), XsError> {
        let _q = Quiet::new();
        if txn == XsTxn::NONE
            && value == XenbusState::Connected.as_str()
            && path.strip_prefix(BE_PATH).and_then(|p| p.strip_prefix('/')) == Some(keys::STATE)
        {
            self.connects += 1;
        }
        if path.starts_with(keys::ERROR) && path[keys::ERROR.len()..].starts_with('/') {
            self.fatals += 1;
        }
        self.xs.xs_write(txn, path, value)
    }

    fn xs_remove(&mut self, txn: XsTxn, path: &str) -> Result<(), XsError> {
        let _q = Quiet::new();
        self.xs.xs_remove(txn, path)
    }

    fn xs_transaction_start(&mut self) -> Result<XsTxn, XsError> {
        let _q = Quiet::new();
        self.xs.xs_transaction_start()
    }

    fn xs_transaction_end(&mut self, txn: XsTxn, commit: bool) -> Result<(), XsError> {
        let _q = Quiet::new();
        self.xs.xs_transaction_end(txn, commit)
    }
}

// Never inlined into the core's queue code that calls them: a profile of
// the core (testing/benches/core_cost.rs) tells the core's instructions
// from the platform's by function, as on a real platform, whose calls
// cross into the kernel or another crate.
impl QueueHost for FakeHost {
    #[inline(never)]
    fn map_batch(&mut self, dom: DomId, ops: &[GrantMapOp], results: &mut [MapResult]) {
        if self.cfg.null {
            // Every page is mapped already.
            results.fill(Ok(GrantHandle(0)));
            return;
        }
        self.expect(dom == FE_DOM, || format!("map_batch for domain {dom}"));
        self.expect(ops.len() == results.len(), || {
            "map_batch: ops and results differ in length".into()
        });
        for (op, res) in ops.iter().zip(results.iter_mut()) {
            let page = op.window_page.0 as usize;
            *res = Err(GrantError::General);
            if !self.expect(self.window_reserved && page < self.window.len(), || {
                format!("map outside the window: page {page}")
            }) || !self.expect(self.window[page].is_none(), || {
                format!("window page {page} mapped twice")
            }) {
                continue;
            }
            if self.faults.maps > 0 {
                self.faults.maps -= 1;
                *res = Err(GrantError::NoSpace);
                continue;
            }
            *res = match self.lookup(op.gref) {
                Some(Grant::Data { readonly, .. }) if readonly && !op.readonly => {
                    Err(GrantError::Denied)
                }
                Some(Grant::Data { .. }) => {
                    self.next_handle = self.next_handle.wrapping_add(1);
                    self.window[page] = Some(Mapping {
                        gref: op.gref,
                        readonly: op.readonly,
                        handle: self.next_handle,
                    });
                    self.live_mappings += 1;
                    self.grants_mapped += 1;
                    Ok(GrantHandle(self.next_handle))
                }
                _ => Err(GrantError::BadRef),
            };
        }
    }

    #[inline(never)]
    fn unmap_batch(&mut self, ops: &[GrantUnmapOp]) {
        if self.cfg.null {
            return;
        }
        for op in ops {
            let page = op.window_page.0 as usize;
            match self.window.get(page).copied().flatten() {
                Some(m) if m.handle == op.handle.0 => {
                    self.window[page] = None;
                    self.live_mappings -= 1;
                    self.grants_unmapped += 1;
                }
                other => self.violation(format!(
                    "unmap of window page {page} with {:?}: found {other:?}",
                    op.handle
                )),
            }
        }
    }

    #[inline(never)]
    fn copy_in(&mut self, from: Granted<'_>, out: &mut [u8]) -> Result<(), GrantError> {
        let Granted { dom, grefs } = from;
        self.expect(dom == FE_DOM, || format!("copy_in from domain {dom}"));
        if !self.expect(out.len() <= grefs.len() * PAGE_SIZE, || {
            "copy longer than its grants".into()
        }) {
            return Err(GrantError::General);
        }
        for (gref, chunk) in grefs.iter().zip(out.chunks_mut(PAGE_SIZE)) {
            let Some(Grant::Data { index, .. }) = self.lookup(*gref) else {
                return Err(GrantError::BadRef);
            };
            let at = index * PAGE_SIZE;
            chunk.copy_from_slice(&self.guest[at..at + chunk.len()]);
            self.pages_copied += 1;
        }
        Ok(())
    }

    #[inline(never)]
    fn evtchn_notify(&mut self, queue: QueueId) {
        if self.cfg.null {
            self.notifications += 1;
            return;
        }
        let bound = self.evtchn_bound(queue);
        self.expect(bound, || {
            format!("notify on queue {queue}'s unbound channel")
        });
        self.notifications += 1;
    }

    #[inline(never)]
    fn evtchn_eoi(&mut self, _queue: QueueId, delay_ms: u32) {
        self.eois += 1;
        self.last_eoi_delay = delay_ms;
        self.max_eoi_delay = self.max_eoi_delay.max(delay_ms);
    }

    #[inline(never)]
    fn now_ms(&self) -> u64 {
        self.now_ms
    }

    #[inline(never)]
    fn schedule_run(&mut self, queue: QueueId) {
        self.schedule_runs += 1;
        self.scheduled_queues |= 1 << queue.min(63);
    }

    #[inline(never)]
    fn store_submit(&mut self, tag: IoTag, op: IoOp<'_>) -> Result<(), IoError> {
        if self.cfg.null {
            // Queued, to complete without touching a byte.
            let Some(i) = self.free_slots.pop() else {
                return Err(IoError::Busy);
            };
            let s = &mut self.slots[i];
            (s.tag, s.offset, s.len) = (tag, 0, 0);
            self.queue.push_back(i);
            self.submitted += 1;
            return Ok(());
        }
        self.expect(self.store_open, || "I/O on a closed store".into());
        let reused = self.queue.iter().any(|&i| self.slots[i].tag == tag);
        self.expect(!reused, || format!("tag {tag:?} reused while in flight"));
        let (kind, offset, iov, len) = match op {
            IoOp::Read { offset, iov } => (IoKind::Read, offset.0, iov, self.check_iov(iov, true)),
            IoOp::Write { offset, iov } => {
                let ro = self.cfg.medium.read_only;
                self.expect(!ro, || "write to a read-only medium".into());
                (IoKind::Write, offset.0, iov, self.check_iov(iov, false))
            }
            IoOp::Flush => (IoKind::Flush, 0, &[][..], 0),
            IoOp::Discard { offset, len, .. } => (IoKind::Discard, offset.0, &[][..], len.0),
        };
        let medium = self.medium.len() as u64;
        self.expect(offset % 512 == 0, || {
            format!("I/O offset {offset} not sector-aligned")
        });
        let inside = offset.checked_add(len).is_some_and(|end| end <= medium);
        self.expect(inside, || {
            format!("I/O outside the medium: {offset} + {len} > {medium}")
        });
        let max_iov = self.cfg.max_iov;
        self.expect(iov.len() <= max_iov, || {
            format!("{} iovecs, more than FakeConfig::max_iov", iov.len())
        });
        let free = if self.faults.submits > 0 {
            self.faults.submits -= 1;
            None
        } else {
            self.free_slots.pop()
        };
        {
            let _q = Quiet::new();
            self.log.push(Submission {
                tag,
                kind,
                offset,
                accepted: free.is_some(),
            });
        }
        let Some(i) = free else {
            return Err(IoError::Busy);
        };
        let s = &mut self.slots[i];
        s.tag = tag;
        s.kind = kind;
        s.offset = offset;
        s.len = len;
        s.iov.clear();
        s.iov.extend_from_slice(&iov[..iov.len().min(max_iov)]);
        self.queue.push_back(i);
        self.submitted += 1;
        Ok(())
    }
}

impl Host for FakeHost {
    fn window_reserve(&mut self, pages: u32) -> Result<(), GrantError> {
        self.expect(!self.window_reserved, || "window reserved twice".into());
        if std::mem::take(&mut self.faults.window) || pages as usize > self.cfg.max_window_pages {
            return Err(GrantError::NoSpace);
        }
        self.window.clear();
        self.window.resize(pages as usize, None);
        self.window_reserved = true;
        self.window_reserves += 1;
        Ok(())
    }

    fn window_release(&mut self) {
        self.expect(self.window_reserved, || "window released twice".into());
        let live = self.live_mappings;
        self.expect(live == 0, || {
            format!("window released with {live} pages mapped")
        });
        self.window_reserved = false;
        self.window_releases += 1;
    }

    fn map_ring(&mut self, queue: QueueId, ring: Granted<'_>) -> Result<SharedMem, GrantError> {
        let Granted { dom, grefs } = ring;
        self.expect(dom == FE_DOM, || format!("map_ring for domain {dom}"));
        if std::mem::take(&mut self.faults.ring_map) {
            return Err(GrantError::General);
        }
        let Some(slot) = self.rings.iter().position(|r| r.grefs == grefs) else {
            return Err(GrantError::BadRef);
        };
        let twice = self.mapped.iter().any(|m| m.queue == queue);
        if !self.expect(!twice, || format!("queue {queue}'s ring mapped twice")) {
            return Err(GrantError::General);
        }
        let shared = self.mapped.iter().any(|m| m.slot == slot);
        if !self.expect(!shared, || format!("ring {grefs:?} mapped twice")) {
            return Err(GrantError::General);
        }
        let ring = if std::mem::take(&mut self.faults.short_ring) {
            SharedMem::leak_pair(PAGE_SIZE / 2).expect("ring memory").1
        } else {
            self.rings[slot].back.take().ok_or(GrantError::General)?
        };
        if ring.len() >= SRING_HEADER_SIZE {
            self.rsp_prod_at_map = ring.load_u32(SRING_RSP_PROD, Ordering::Acquire);
        }
        self.mapped.push(MappedRing {
            queue,
            addr: ring.as_ptr() as usize,
            slot,
        });
        self.ring_maps += 1;
        Ok(ring)
    }

    fn unmap_ring(&mut self, queue: QueueId, ring: SharedMem) {
        let addr = ring.as_ptr() as usize;
        match self.mapped.iter().position(|m| m.queue == queue) {
            None => self.violation(format!("queue {queue}'s ring unmapped twice")),
            Some(i) if self.mapped[i].addr != addr => {
                self.violation(format!("queue {queue} unmaps a foreign ring"))
            }
            Some(i) => {
                let m = self.mapped.swap_remove(i);
                self.ring_unmaps += 1;
                let offer = &mut self.rings[m.slot];
                if offer.addr == addr {
                    offer.back = Some(ring);
                }
            }
        }
    }

    fn evtchn_bind(&mut self, queue: QueueId, remote: RemotePort) -> Result<(), EvtchnError> {
        let (dom, port) = (remote.dom, remote.port);
        let twice = self.evtchn_bound(queue);
        self.expect(!twice, || format!("queue {queue}'s channel bound twice"));
        if std::mem::take(&mut self.faults.bind) {
            return Err(EvtchnError::General);
        }
        // Only a port the front-end offered and nobody bound yet.
        let offered = self
            .rings
            .iter()
            .any(|r| !r.grefs.is_empty() && r.port == port);
        let taken = self.bound.iter().any(|&(_, p)| p == port);
        if dom != FE_DOM || !offered || taken || twice {
            return Err(EvtchnError::BadPort);
        }
        self.bound.push((queue, port));
        self.binds += 1;
        Ok(())
    }

    fn evtchn_unbind(&mut self, queue: QueueId) {
        match self.bound.iter().position(|&(q, _)| q == queue) {
            Some(i) => {
                self.bound.swap_remove(i);
                self.unbinds += 1;
            }
            None => self.violation(format!("unbind of queue {queue}'s unbound channel")),
        }
    }

    fn store_open(&mut self, _params: OpenParams<'_>) -> Result<MediumInfo, OpenError> {
        self.expect(self.root, || {
            "store opened before the root file system".into()
        });
        self.expect(!self.store_open, || "store opened twice".into());
        if std::mem::take(&mut self.faults.open) {
            return Err(OpenError::NotFound);
        }
        self.store_open = true;
        self.store_opens += 1;
        Ok(self.cfg.medium)
    }

    fn store_info(&self) -> MediumInfo {
        self.cfg.medium
    }

    fn store_close(&mut self) {
        self.expect(self.store_open, || "store closed twice".into());
        let n = self.queue.len();
        self.expect(n == 0, || format!("store closed with {n} I/Os in flight"));
        self.store_open = false;
        self.store_closes += 1;
    }

    fn root_mounted(&self) -> bool {
        self.root
    }

    fn waits_for_hotplug(&self) -> bool {
        self.hotplug_gate
    }

    fn journal_open(&mut self, id: &JournalId, how: JournalOpen) -> Option<SharedMem> {
        if !self.journals {
            return None;
        }
        let bytes = id.bytes()?;
        let _q = Quiet::new();
        let q = id.queue as usize;
        if self.kept.len() <= q {
            self.kept.resize_with(q + 1, KeptJournal::default);
        }
        let out = self.kept[q].out.is_none();
        self.expect(out, || format!("queue {q}'s journal opened twice"));
        self.journal_id = Some(*id);
        let mem = match how {
            JournalOpen::Create => {
                self.kept[q].spares = SharedMem::leak_views(bytes, 8).expect("journal memory");
                self.journals_created += 1;
                self.kept[q].spares.pop()
            }
            JournalOpen::Existing => {
                self.journal_lookups += 1;
                self.kept[q].spares.pop()
            }
        }?;
        self.expect(mem.len() >= bytes, || "journal shorter than asked".into());
        self.kept[q].out = Some(mem.as_ptr() as usize);
        Some(mem)
    }

    fn journal_close(&mut self, queue: QueueId, journal: SharedMem, keep: bool) {
        let _q = Quiet::new();
        let addr = journal.as_ptr() as usize;
        let open = self.kept.get(queue as usize).and_then(|j| j.out) == Some(addr);
        if !self.expect(open, || format!("queue {queue}'s journal closed, not open")) {
            return;
        }
        let j = &mut self.kept[queue as usize];
        j.out = None;
        if keep {
            self.journals_kept += 1;
            j.spares.push(journal);
        } else {
            self.journals_removed += 1;
            j.spares.clear();
        }
    }

    fn inline(&mut self) -> Option<&mut dyn QueueHost> {
        if self.faults.no_inline {
            return None;
        }
        Some(self)
    }
}
