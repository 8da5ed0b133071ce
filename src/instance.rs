//! One `vbd` back-end: the connection life cycle and the request path.
//!
//! An [`Instance`] ties together the pieces of the core for one virtual
//! block device. Its life cycle follows the state diagram of `io/blkif.h`
//! over the `io/xenbus.h` states: open the store once the root file system
//! is mounted, publish the offer, InitWait; on the front-end's Initialised
//! (or Connected, from front-ends that skip a state) read and vet its
//! transport parameters, map one ring and bind one event channel per queue
//! (`multi-queue-num-queues`), publish the medium and the features,
//! Connected; on Closing drain every I/O in flight, release, Closing; on
//! Closed, Closed — and an `online` back-end keeps its store for the next
//! front-end.
//!
//! The request path ([`Instance::event`], [`Instance::run`] and
//! [`Instance::complete`]) follows DESIGN.md's walk of one request, per
//! queue: read `req_prod` once, copy each slot once (and an indirect
//! request's descriptor pages once, `BLKIF_OP_INDIRECT`), validate, bind
//! its grants to the persistent-grant cache when `feature-persistent` was
//! negotiated, coalesce into the open reqlist, give each closed reqlist one
//! contiguous range of the queue's mapping window for the grants not
//! already mapped, map them in one batch, submit one I/O; on completion
//! unmap the transient grants, free the range, answer every request of the
//! reqlist (all with an error if any part failed), and notify the
//! front-end only when it asked.
//!
//! Every pool is allocated, fallibly, when the connection is made; nothing on
//! the request path allocates.

use alloc::string::String;
use alloc::vec::Vec;

use crate::abi::{
    BlkifRequest, BlkifResponse, Segment, BLKIF_MAX_INDIRECT_PAGES_PER_REQUEST,
    BLKIF_MAX_SEGMENTS_PER_REQUEST, BLKIF_RSP_ERROR, BLKIF_RSP_OKAY, SECTOR_SHIFT,
};
use crate::coalesce::{self, Budget, OpenRun};
use crate::connect::{self, BackendNodes, ConnectError, Features, Offer};
use crate::host::{
    DomId, GrantError, GrantHandle, GrantMapOp, GrantUnmapOp, Host, IoError, IoOp, IoTag, IoVec,
    MediumInfo, OpenParams, QueueId, XenbusState, PAGE_SIZE,
};
use crate::kva::KvaAllocator;
use crate::pgrant::{GrantCache, Insert, Lookup};
use crate::request::{self, Header, Limits, Op, Parsed};
use crate::ring::BackRing;
use crate::stats::{Stat, Stats, Tunable, Tunables};

/// Why an instance could not be created.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InstanceError {
    /// A fallible allocation failed.
    NoMemory,
}

const NONE: u16 = u16::MAX;

/// Consecutive spurious kicks tolerated before the event channel is
/// re-enabled late (a kick can legitimately find its requests already
/// taken by the previous pass's final check).
const SPURIOUS_GRACE: u32 = 2;

/// The largest mapping window (per queue) sized automatically: 64 MiB.
/// `hw.xbb.kva_pages` sets any size.
const AUTO_KVA_MAX_PAGES: usize = 16384;

/// The longest late-EOI delay, in milliseconds.
const MAX_EOI_DELAY_MS: u32 = 64;

/// The late-EOI delay after `consecutive` spurious kicks: none within the
/// grace, then 1, 2, 4 ... [`MAX_EOI_DELAY_MS`] milliseconds.
fn eoi_delay(consecutive: u32) -> u32 {
    match consecutive.checked_sub(SPURIOUS_GRACE + 1) {
        None => 0,
        Some(n) => (1u32 << n.min(6)).min(MAX_EOI_DELAY_MS),
    }
}

/// One consumed, validated request waiting for or in service. Its segments
/// live in the queue's segment array at `slot * max_segs`.
#[derive(Clone, Copy, Debug)]
struct ReqSlot {
    id: u64,
    operation: u8,
    nsegs: u16,
    /// Next request of the same reqlist, or `NONE`.
    next: u16,
}

const EMPTY_SLOT: ReqSlot = ReqSlot {
    id: 0,
    operation: 0,
    nsegs: 0,
    next: NONE,
};

/// Where a segment's page is (or will be) in the data window.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum SegPage {
    /// Not bound: gets a transient page of the reqlist's range.
    Unassigned,
    /// A transient mapping at this window page, unmapped on completion.
    Transient(u32),
    /// A persistent-grant cache entry at this page, not mapped yet.
    Pending(u32),
    /// A mapped persistent-grant cache entry at this page.
    Cached(u32),
}

/// One step of serving a reqlist.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    Data,
    Flush,
    Discard,
}

/// The steps for an operation: a barrier makes everything before it durable
/// before its own data, and its data durable before it completes; a flush
/// writes its data (if any) and then makes everything durable.
fn plan(op: Op, has_data: bool) -> &'static [Phase] {
    match (op, has_data) {
        (Op::Read | Op::Write, _) => &[Phase::Data],
        (Op::Flush, true) => &[Phase::Data, Phase::Flush],
        (Op::Barrier, true) => &[Phase::Flush, Phase::Data, Phase::Flush],
        (Op::Flush | Op::Barrier, false) => &[Phase::Flush],
        (Op::Discard { .. }, _) => &[Phase::Discard],
    }
}

/// Requests served by one I/O.
#[derive(Clone, Copy, Debug)]
struct Reqlist {
    op: Op,
    head: u16,
    tail: u16,
    sector: u64,
    nr_sectors: u64,
    /// Segments of all its requests.
    pages: u32,
    /// First page of its transient range (relative to the queue's KVA
    /// region), valid when `kva_pages > 0`.
    kva_first: u32,
    /// Pages of its transient range.
    kva_pages: u32,
    phase: u8,
    error: bool,
    in_flight: bool,
}

const EMPTY_LIST: Reqlist = Reqlist {
    op: Op::Read,
    head: NONE,
    tail: NONE,
    sector: 0,
    nr_sectors: 0,
    pages: 0,
    kva_first: 0,
    kva_pages: 0,
    phase: 0,
    error: false,
    in_flight: false,
};

fn try_vec<T: Clone>(n: usize, v: T) -> Result<Vec<T>, ConnectError> {
    let mut out = Vec::new();
    out.try_reserve_exact(n)
        .map_err(|_| ConnectError::NoMemory)?;
    out.resize(n, v);
    Ok(out)
}

fn try_stack(n: usize) -> Result<Vec<u16>, ConnectError> {
    let mut out = Vec::new();
    out.try_reserve_exact(n)
        .map_err(|_| ConnectError::NoMemory)?;
    // Pop order hands out low indices first.
    out.extend((0..n as u16).rev());
    Ok(out)
}

/// An [`IoTag`]: the connection's generation, the queue and the reqlist.
fn make_tag(generation: u8, queue: QueueId, list: u16) -> IoTag {
    IoTag(u32::from(generation) << 24 | (queue & 0xff) << 16 | u32::from(list))
}

/// The sizes every queue of a connection shares.
#[derive(Clone, Copy, Debug)]
struct QueueShape {
    nreq: usize,
    max_segs: usize,
    max_pages: usize,
    kva_pages: u32,
    cache_pages: u32,
    indirect_bytes: usize,
}

/// The pools of one queue, allocated (fallibly) when it is built.
struct Pools {
    /// The queue's KVA region: transient grant mappings.
    kva: KvaAllocator,
    /// Persistent grants (capacity 0 when not negotiated).
    cache: GrantCache,
    reqs: Vec<ReqSlot>,
    /// Each slot's segments, `max_segs` per slot.
    segs: Vec<Segment>,
    /// Where each segment's page is in the window.
    seg_page: Vec<SegPage>,
    free_reqs: Vec<u16>,
    lists: Vec<Reqlist>,
    free_lists: Vec<u16>,
    /// Grant handle of each KVA page.
    handles: Vec<GrantHandle>,
    map_ops: Vec<GrantMapOp>,
    map_results: Vec<Result<GrantHandle, GrantError>>,
    unmap_ops: Vec<GrantUnmapOp>,
    purged: Vec<(u32, GrantHandle)>,
    iov: Vec<IoVec>,
    /// The private copy of an indirect request's descriptor pages.
    indirect: Vec<u8>,
    /// Sorted copy of one request's grant references (duplicate check).
    grefs: Vec<u32>,
    waitq: Vec<u16>,
}

/// One ring of a connection with everything that serves it.
struct Queue {
    id: QueueId,
    dom: DomId,
    generation: u8,
    ring: BackRing,
    limits: Limits,
    budget: Budget,
    /// Window page of the queue's KVA region's page 0.
    kva_base: u32,
    /// The pools, allocated at connect: KVA region, grant cache, request
    /// slots and segments, reqlists, grant batches, iovecs, wait queue.
    p: Pools,
    persistent: bool,
    /// Segment capacity of each request slot.
    max_segs: usize,
    /// The reqlist requests are being appended to.
    open: u16,
    /// Reqlists waiting, in order, for room in the window: a ring buffer
    /// over `p.waitq` (which has room for every reqlist) from `waitq_head`.
    /// Consumption pauses while any waits.
    waitq_head: usize,
    waitq_len: usize,
    /// A barrier waiting for everything before it to finish.
    barrier: u16,
    /// The request pool ran dry; consumption waits for a completion.
    starved: bool,
    /// Reqlists with I/O outstanding.
    in_flight: u32,
    /// Responses queued on the ring but not yet published.
    unpublished: u64,
    /// The front-end broke the ring protocol: answer nothing more.
    broken: bool,
    /// Consecutive kicks that found nothing to do.
    spurious: u32,
    stats: Stats,
}

/// Everything that exists only while connected.
struct Connection {
    queues: Vec<Queue>,
}

impl Connection {
    fn idle(&self) -> bool {
        self.queues.iter().all(Queue::idle)
    }
}

/// One back-end device instance.
pub struct Instance {
    be_path: String,
    tunables: Tunables,
    /// Limits, switches and instance-wide counters; the queues' counters
    /// are added by [`Instance::stats`] and folded in at disconnect.
    stats: Stats,
    state: XenbusState,
    nodes: Option<BackendNodes>,
    medium: Option<MediumInfo>,
    conn: Option<Connection>,
    /// Counts connections: completions of an earlier one are recognised.
    generation: u8,
    /// The front-end asked to close (Closing or Closed).
    closing: bool,
    /// The front-end reached Closed (or vanished).
    frontend_closed: bool,
    detaching: bool,
    detached: bool,
    last_error: Option<ConnectError>,
}

impl core::fmt::Debug for Instance {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Instance")
            .field("backend", &self.be_path)
            .field("state", &self.state)
            .field("connected", &self.conn.is_some())
            .finish()
    }
}

impl Instance {
    /// Creates the instance for the back-end XenStore directory `backend_path`
    /// (the platform's spelling: absolute in the simulator, relative to the
    /// domain's home in the kernel).
    pub fn new(backend_path: &str, tunables: &Tunables) -> Result<Instance, InstanceError> {
        let mut be_path = String::new();
        be_path
            .try_reserve_exact(backend_path.len())
            .map_err(|_| InstanceError::NoMemory)?;
        be_path.push_str(backend_path);
        let mut stats = Stats::default();
        stats.set(Stat::NoCoalesceReqs, tunables.get(Tunable::NoCoalesceReqs));
        Ok(Instance {
            be_path,
            tunables: *tunables,
            stats,
            state: XenbusState::Initialising,
            nodes: None,
            medium: None,
            conn: None,
            generation: 0,
            closing: false,
            frontend_closed: false,
            detaching: false,
            detached: false,
            last_error: None,
        })
    }

    /// The back-end's XenStore directory.
    pub fn backend_path(&self) -> &str {
        &self.be_path
    }

    /// The front-end's XenStore directory, once `attach` has read it.
    pub fn frontend_path(&self) -> Option<&str> {
        self.nodes.as_ref().map(|n| n.frontend.as_str())
    }

    /// Current back-end XenBus state.
    pub fn state(&self) -> XenbusState {
        self.state
    }

    /// The statistics and negotiated limits: counters and gauges summed
    /// over the queues.
    pub fn stats(&self) -> Stats {
        let mut s = self.stats.clone();
        if let Some(c) = self.conn.as_ref() {
            for q in &c.queues {
                s.accumulate(&q.stats);
            }
        }
        s
    }

    /// Queues of the current connection (0 when not connected).
    pub fn num_queues(&self) -> u32 {
        self.conn.as_ref().map_or(0, |c| c.queues.len() as u32)
    }

    /// One queue's counters and gauges (`dev.xbb.N.queue.Q.*`).
    pub fn queue_stats(&self, queue: QueueId) -> Option<&Stats> {
        let c = self.conn.as_ref()?;
        c.queues.get(queue as usize).map(|q| &q.stats)
    }

    /// The reason the connection last failed, if it did.
    pub fn last_error(&self) -> Option<ConnectError> {
        self.last_error
    }

    /// The open store's description.
    pub fn medium(&self) -> Option<MediumInfo> {
        self.medium
    }

    /// Sets a read-write sysctl node (a [`crate::stats::SysctlKind::Switch`]).
    /// Returns `false` for read-only nodes or out-of-range values.
    pub fn sysctl_set(&mut self, stat: Stat, value: u64) -> bool {
        match stat {
            Stat::NoCoalesceReqs if value <= 1 => {
                self.stats.set(stat, value);
                true
            }
            _ => false,
        }
    }

    /// Whether no I/O is in flight and nothing waits to be served.
    pub fn is_idle(&self) -> bool {
        self.conn.as_ref().is_none_or(Connection::idle)
    }

    /// Whether `detach` has finished: everything released, the platform may
    /// free the instance.
    pub fn is_detached(&self) -> bool {
        self.detached
    }

    fn set_state<H: Host>(&mut self, host: &mut H, state: XenbusState) {
        // Only transitions are written. A back-end watches its own
        // directory (the toolstack writes there too), so re-writing an
        // unchanged state from a watch handler would fire the watch again,
        // forever: xenstored fires on every write, even of the same value.
        if state == self.state {
            return;
        }
        if let Err(e) = connect::write_state(host, &self.be_path, state) {
            self.last_error = Some(e);
        }
        self.state = state;
    }

    fn fail<H: Host>(&mut self, host: &mut H, err: ConnectError) {
        connect::report_fatal(host, &self.be_path, &err);
        self.last_error = Some(err);
        self.state = XenbusState::Closing;
    }

    /// newbus attach / device creation: reads the toolstack's nodes and, once
    /// the root file system is mounted, opens the store and publishes the
    /// offer.
    pub fn attach<H: Host>(&mut self, host: &mut H) {
        match connect::read_backend_nodes(host, &self.be_path) {
            Ok(nodes) => self.nodes = Some(nodes),
            Err(e) => return self.fail(host, e),
        }
        if host.root_mounted() {
            self.open_and_offer(host);
        }
    }

    /// The platform's root file system is now mounted.
    pub fn root_mounted<H: Host>(&mut self, host: &mut H) {
        if self.nodes.is_some() && self.medium.is_none() && self.state == XenbusState::Initialising
        {
            self.open_and_offer(host);
        }
    }

    fn open_and_offer<H: Host>(&mut self, host: &mut H) {
        let Some(nodes) = self.nodes.as_ref() else {
            return;
        };
        if self.medium.is_none() {
            let params = OpenParams {
                path: &nodes.params,
                kind: &nodes.kind,
                writable: nodes.writable,
            };
            match host.store_open(params) {
                Ok(mut m) => {
                    // The toolstack's mode wins over what the store allows.
                    m.read_only |= !nodes.writable;
                    self.medium = Some(m);
                    self.stats.set(Stat::MediumSectors, m.sectors);
                }
                Err(e) => return self.fail(host, ConnectError::Open(e)),
            }
        }
        let offer = Offer {
            max_ring_page_order: self.tunables.get(Tunable::MaxRingPageOrder) as u32,
            max_queues: self.tunables.get(Tunable::MaxQueues) as u32,
            persistent: self.tunables.get(Tunable::MaxPersistentGrants) > 0,
        };
        if let Err(e) = connect::publish_offer(host, &self.be_path, &offer) {
            return self.fail(host, e);
        }
        self.closing = false;
        self.frontend_closed = false;
        self.set_state(host, XenbusState::InitWait);
        // The front-end may have published everything already.
        self.frontend_changed(host);
    }

    /// A watched XenStore node changed: re-reads the front-end's state and
    /// acts on it. Idempotent: a platform may coalesce watch events.
    pub fn frontend_changed<H: Host>(&mut self, host: &mut H) {
        if self.detached || self.detaching {
            return;
        }
        let Some(fe_path) = self.frontend_path() else {
            return;
        };
        let fe = match connect::read_state(host, fe_path) {
            Ok(s) => s,
            // The front-end's directory went away: as good as Closed.
            Err(ConnectError::Missing { .. }) => XenbusState::Closed,
            Err(e) => {
                self.fail(host, e);
                return self.begin_close(host);
            }
        };
        match fe {
            XenbusState::Initialised | XenbusState::Connected => match self.state {
                XenbusState::InitWait if self.hotplug_done(host) => self.connect(host),
                XenbusState::Closed if self.may_reconnect() => self.open_and_offer(host),
                _ => {}
            },
            XenbusState::Initialising => {
                if self.state == XenbusState::Closed && self.may_reconnect() {
                    self.open_and_offer(host);
                }
            }
            XenbusState::Closing => self.begin_close(host),
            XenbusState::Closed | XenbusState::Unknown => {
                self.frontend_closed = true;
                self.begin_close(host);
            }
            XenbusState::InitWait | XenbusState::Reconfiguring | XenbusState::Reconfigured => {}
        }
    }

    /// See [`Host::waits_for_hotplug`].
    fn hotplug_done<H: Host>(&self, host: &mut H) -> bool {
        !host.waits_for_hotplug()
            || !self.nodes.as_ref().is_some_and(|n| n.hotplug_script)
            || connect::hotplug_connected(host, &self.be_path)
    }

    fn may_reconnect(&self) -> bool {
        self.conn.is_none()
            && self.medium.is_some()
            && self.nodes.as_ref().is_some_and(|n| n.online)
    }

    /// The store's size may have changed (the platform saw the device or
    /// file grow or shrink): re-reads it, and while connected publishes the
    /// new `sectors` and re-writes `state` so that the front-end's watch
    /// fires. Requests beyond a shrunken end are refused from now on.
    pub fn medium_changed<H: Host>(&mut self, host: &mut H) {
        let Some(m) = self.medium.as_mut() else {
            return;
        };
        let info = host.store_info();
        if info.sectors == m.sectors {
            return;
        }
        m.sectors = info.sectors;
        self.stats.set(Stat::MediumSectors, info.sectors);
        let Some(c) = self.conn.as_mut() else {
            return;
        };
        for q in &mut c.queues {
            q.limits.medium_sectors = info.sectors;
        }
        match connect::publish_resize(host, &self.be_path, info.sectors) {
            Ok(()) => self.stats.inc(Stat::Resizes),
            Err(e) => self.last_error = Some(e),
        }
    }

    fn connect<H: Host>(&mut self, host: &mut H) {
        match self.try_connect(host) {
            Ok(()) => {
                self.stats.reset_counters();
                self.set_state(host, XenbusState::Connected);
                // Requests may already be waiting.
                for q in 0..self.num_queues() {
                    self.run(host, q);
                }
            }
            Err(e) => self.fail(host, e),
        }
    }

    fn try_connect<H: Host>(&mut self, host: &mut H) -> Result<(), ConnectError> {
        let (Some(nodes), Some(medium)) = (self.nodes.as_ref(), self.medium) else {
            return Err(ConnectError::Missing { key: "params" });
        };
        let dom = nodes.frontend_id;
        let t = &self.tunables;
        let max_order = t.get(Tunable::MaxRingPageOrder) as u32;
        let max_queues = t.get(Tunable::MaxQueues) as u32;
        let fe = connect::read_frontend(host, &nodes.frontend, max_order, max_queues)?;
        let ring_size = fe
            .abi
            .ring_size(fe.ring_pages)
            .ok_or(ConnectError::OutOfRange {
                key: "ring-page-order",
                value: u64::from(fe.ring_pages),
            })?;

        let nreq = (ring_size as usize).min(t.get(Tunable::MaxRequests) as usize);
        let request_pages = t.get(Tunable::MaxRequestSize) as usize / PAGE_SIZE;
        // Indirect segments offered: the tunable, within the protocol's
        // ceiling and the largest I/O.
        let max_indirect = (t.get(Tunable::MaxIndirectSegments) as usize)
            .min(request::MAX_INDIRECT_SEGMENTS as usize)
            .min(request_pages.max(BLKIF_MAX_SEGMENTS_PER_REQUEST));
        let max_indirect = if max_indirect <= BLKIF_MAX_SEGMENTS_PER_REQUEST {
            0
        } else {
            max_indirect
        };
        let max_segs = max_indirect.max(BLKIF_MAX_SEGMENTS_PER_REQUEST);
        let max_pages = request_pages.max(max_segs);
        // Auto-sized: room for every slot's largest request (indirect ones
        // included), within AUTO_KVA_MAX_PAGES; never less than one
        // largest I/O.
        let kva_pages = match t.get(Tunable::KvaPages) as usize {
            0 => (nreq * max_segs).min(AUTO_KVA_MAX_PAGES),
            n => n,
        }
        .max(max_pages);
        let persistent = fe.persistent && t.get(Tunable::MaxPersistentGrants) > 0;
        let cache_pages = if persistent {
            t.get(Tunable::MaxPersistentGrants) as usize
        } else {
            0
        };
        let shape = QueueShape {
            nreq,
            max_segs,
            max_pages,
            kva_pages: u32::try_from(kva_pages).map_err(|_| ConnectError::NoMemory)?,
            cache_pages: u32::try_from(cache_pages).map_err(|_| ConnectError::NoMemory)?,
            indirect_bytes: if max_indirect > 0 {
                max_indirect
                    .div_ceil(request::SEGMENTS_PER_INDIRECT_PAGE)
                    .min(BLKIF_MAX_INDIRECT_PAGES_PER_REQUEST)
                    * PAGE_SIZE
            } else {
                0
            },
        };
        let per_queue = kva_pages
            .checked_add(cache_pages)
            .ok_or(ConnectError::NoMemory)?;
        let window = per_queue
            .checked_mul(fe.queues.len())
            .and_then(|w| u32::try_from(w).ok())
            .ok_or(ConnectError::NoMemory)?;

        let flush = medium.can_flush;
        let discard = medium.can_discard && !medium.read_only && nodes.discard_enable;
        let limits = Limits {
            max_segments: BLKIF_MAX_SEGMENTS_PER_REQUEST as u32,
            max_indirect_segments: max_indirect as u32,
            medium_sectors: medium.sectors,
            sector_size: medium.sector_size,
            read_only: medium.read_only,
            flush,
            barrier: flush,
            discard,
            secure_discard: discard && medium.can_secure_discard,
        };
        self.generation = self.generation.wrapping_add(1);
        let mut queues: Vec<Queue> = Vec::new();
        queues
            .try_reserve_exact(fe.queues.len())
            .map_err(|_| ConnectError::NoMemory)?;
        host.window_reserve(window).map_err(ConnectError::Grant)?;
        // Queue by queue: ring, channel, pools. Undo everything on failure.
        let mut setup = Ok(());
        for (i, qp) in fe.queues.iter().enumerate() {
            let q = i as QueueId;
            let ring = match Self::map_queue(host, q, dom, fe.refs(i), fe.abi, fe.ring_pages) {
                Ok(r) => r,
                Err(e) => {
                    setup = Err(e);
                    break;
                }
            };
            if let Err(e) = host.evtchn_bind(q, dom, qp.event_channel) {
                host.unmap_ring(q, ring.into_mem());
                setup = Err(ConnectError::Evtchn(e));
                break;
            }
            let first = (i * per_queue) as u32;
            match Queue::new(
                q,
                dom,
                self.generation,
                ring,
                &shape,
                first,
                limits,
                persistent,
            ) {
                Ok(queue) => queues.push(queue),
                Err((e, ring)) => {
                    host.evtchn_unbind(q);
                    host.unmap_ring(q, ring.into_mem());
                    setup = Err(e);
                    break;
                }
            }
        }
        let features = Features {
            flush,
            barrier: flush,
            persistent,
            max_indirect_segments: max_indirect as u32,
            discard: discard.then_some(connect::Discard {
                granularity: if medium.discard_granularity == 0 {
                    medium.sector_size
                } else {
                    medium.discard_granularity
                },
                alignment: medium.discard_alignment,
                secure: limits.secure_discard,
            }),
        };
        if setup.is_ok() {
            setup = connect::publish_connected(host, &self.be_path, &medium, &features);
        }
        if let Err(e) = setup {
            for q in queues {
                host.evtchn_unbind(q.id);
                host.unmap_ring(q.id, q.ring.into_mem());
            }
            host.window_release();
            return Err(e);
        }

        let s = &mut self.stats;
        s.set(Stat::MaxRequests, nreq as u64);
        s.set(Stat::MaxRequestSegments, max_segs as u64);
        s.set(Stat::MaxRequestSize, (max_pages * PAGE_SIZE) as u64);
        s.set(Stat::RingPages, u64::from(fe.ring_pages));
        s.set(Stat::RingOrder, u64::from(fe.ring_pages.trailing_zeros()));
        s.set(Stat::NumQueues, queues.len() as u64);
        s.set(Stat::MaxIndirectSegments, max_indirect as u64);
        s.set(Stat::PersistentGrants, u64::from(persistent));
        s.set(Stat::MaxPersistentGrants, cache_pages as u64);
        s.set(Stat::Discard, u64::from(discard));
        s.set(Stat::MediumSectors, medium.sectors);
        self.closing = false;
        self.frontend_closed = false;
        self.conn = Some(Connection { queues });
        Ok(())
    }

    /// Maps one queue's ring, handing the mapping back on any failure.
    fn map_queue<H: Host>(
        host: &mut H,
        q: QueueId,
        dom: DomId,
        refs: &[crate::host::GrantRef],
        abi: crate::abi::Abi,
        pages: u32,
    ) -> Result<BackRing, ConnectError> {
        let mem = host.map_ring(q, dom, refs).map_err(ConnectError::Grant)?;
        // BackRing::new refuses a mapping shorter than the ring; check here
        // so that such a mapping is handed back rather than dropped.
        if mem.len() < pages as usize * PAGE_SIZE {
            host.unmap_ring(q, mem);
            return Err(ConnectError::Ring);
        }
        // Cannot fail after the length check above.
        BackRing::new(mem, abi, pages).map_err(|_| ConnectError::Ring)
    }

    fn begin_close<H: Host>(&mut self, host: &mut H) {
        self.closing = true;
        if let Some(c) = self.conn.as_mut() {
            for q in &mut c.queues {
                q.close_open(host, Stat::ForcedDispatch);
                q.publish(host);
            }
        }
        self.finish_close_if_drained(host);
    }

    /// Releases the connection once nothing is in flight, then moves to
    /// Closing or Closed (and, when detaching, closes the store).
    fn finish_close_if_drained<H: Host>(&mut self, host: &mut H) {
        if !self.closing || !self.is_idle() {
            return;
        }
        if let Some(c) = self.conn.take() {
            for mut q in c.queues {
                q.publish(host);
                q.drain_cache(host);
                self.stats.accumulate(&q.stats);
                host.evtchn_unbind(q.id);
                host.unmap_ring(q.id, q.ring.into_mem());
            }
            host.window_release();
        }
        let online = self.nodes.as_ref().is_some_and(|n| n.online);
        let was = self.state;
        if (self.detaching || (self.frontend_closed && !online)) && self.medium.take().is_some() {
            host.store_close();
        }
        if self.detaching {
            self.detached = true;
            self.set_state(host, XenbusState::Closed);
        } else if self.frontend_closed {
            self.set_state(host, XenbusState::Closed);
            // An online back-end serves the next front-end, which may have
            // re-initialised while the last I/O drained.
            if was != XenbusState::Closed && online {
                let fe = self
                    .frontend_path()
                    .and_then(|p| connect::read_state(host, p).ok());
                if matches!(
                    fe,
                    Some(
                        XenbusState::Initialising
                            | XenbusState::Initialised
                            | XenbusState::Connected
                    )
                ) && self.may_reconnect()
                {
                    self.open_and_offer(host);
                }
            }
        } else if self.state != XenbusState::Closing {
            self.set_state(host, XenbusState::Closing);
        }
    }

    /// The front-end kicked `queue`'s event channel: runs the queue, then
    /// re-enables the channel ("late EOI"). A kick that finds nothing to do
    /// is counted as spurious; after a few in a row the channel is
    /// re-enabled later and later (up to 64 ms), so that a
    /// front-end kicking in a loop cannot spin the back-end. Any kick that
    /// brings a request resets the backoff.
    pub fn event<H: Host>(&mut self, host: &mut H, queue: QueueId) {
        let before = self.queue_stats(queue).map(|s| s.get(Stat::ReqsReceived));
        self.run(host, queue);
        let mut delay = 0;
        if let (Some(before), Some(c)) = (before, self.conn.as_mut()) {
            if let Some(q) = c.queues.get_mut(queue as usize) {
                if q.stats.get(Stat::ReqsReceived) != before || q.paused() {
                    q.spurious = 0;
                } else {
                    q.spurious = q.spurious.saturating_add(1);
                    q.stats.inc(Stat::SpuriousEvents);
                    delay = eoi_delay(q.spurious);
                    if delay > 0 {
                        q.stats.inc(Stat::DelayedEois);
                    }
                }
            }
        }
        host.evtchn_eoi(queue, delay);
    }

    /// A run of `queue` was scheduled (or its event fired): consumes
    /// requests, at most `hw.xbb.requests_per_pass` of them before
    /// yielding.
    pub fn run<H: Host>(&mut self, host: &mut H, queue: QueueId) {
        if self.closing {
            return;
        }
        let per_pass = self.tunables.get(Tunable::RequestsPerPass) as u32;
        let idle_ms = self.tunables.get(Tunable::PersistentGrantIdleMs);
        let coalesce = self.stats.get(Stat::NoCoalesceReqs) == 0;
        let Some(q) = self
            .conn
            .as_mut()
            .and_then(|c| c.queues.get_mut(queue as usize))
        else {
            return;
        };
        if q.broken {
            return;
        }
        let outcome = q.consume(host, per_pass, coalesce);
        if outcome.is_err() {
            // The front-end wrote an impossible producer index: answer
            // nothing more on this ring, serve nothing that came with it.
            q.broken = true;
            if q.open != NONE {
                let l = q.open;
                q.open = NONE;
                q.p.lists[l as usize].error = true;
                q.finish(host, l);
            }
            self.fail(host, ConnectError::Ring);
            self.begin_close(host);
            return;
        }
        q.purge_idle(host, idle_ms);
        q.publish(host);
    }

    /// A store I/O completed: advance its reqlist, answer the front-end,
    /// and restart whatever waited for the resources it held. A medium
    /// that has gone away (`IoError::Gone`) closes the connection.
    pub fn complete<H: Host>(&mut self, host: &mut H, tag: IoTag, result: Result<(), IoError>) {
        let idle_ms = self.tunables.get(Tunable::PersistentGrantIdleMs);
        if (tag.0 >> 24) as u8 != self.generation {
            return;
        }
        let queue = (tag.0 >> 16) & 0xff;
        let Some(q) = self
            .conn
            .as_mut()
            .and_then(|c| c.queues.get_mut(queue as usize))
        else {
            return;
        };
        let was_paused = q.paused();
        q.on_complete(host, (tag.0 & 0xffff) as u16, result);
        q.drain_waitq(host);
        q.try_start_barrier(host);
        q.purge_idle(host, idle_ms);
        q.publish(host);
        let resume = was_paused && !q.paused();
        if result == Err(IoError::Gone) && !self.closing {
            self.fail(host, ConnectError::StoreGone);
            self.begin_close(host);
        } else if self.closing {
            self.finish_close_if_drained(host);
        } else if resume {
            self.run(host, queue);
        }
    }

    /// Device removal: stops consuming, drains, releases everything. When
    /// I/O is still in flight the platform keeps delivering completions
    /// until [`Instance::is_detached`].
    pub fn detach<H: Host>(&mut self, host: &mut H) {
        if self.detached {
            return;
        }
        self.detaching = true;
        self.begin_close(host);
    }
}

impl Queue {
    /// A queue serving `ring`, with every pool allocated; on failure the
    /// ring is handed back.
    #[allow(clippy::too_many_arguments)]
    fn new(
        id: QueueId,
        dom: DomId,
        generation: u8,
        ring: BackRing,
        shape: &QueueShape,
        first_page: u32,
        limits: Limits,
        persistent: bool,
    ) -> Result<Queue, (ConnectError, BackRing)> {
        match Self::pools(shape, first_page) {
            Ok(p) => Ok(Queue {
                id,
                dom,
                generation,
                ring,
                limits,
                budget: Budget {
                    max_pages: shape.max_pages as u32,
                    max_bytes: (shape.max_pages * PAGE_SIZE) as u64,
                },
                kva_base: first_page,
                persistent,
                max_segs: shape.max_segs,
                open: NONE,
                waitq_head: 0,
                waitq_len: 0,
                barrier: NONE,
                starved: false,
                in_flight: 0,
                unpublished: 0,
                broken: false,
                spurious: 0,
                stats: Stats::default(),
                p,
            }),
            Err(e) => Err((e, ring)),
        }
    }

    fn pools(shape: &QueueShape, first_page: u32) -> Result<Pools, ConnectError> {
        let nreq = shape.nreq;
        let nsegs = nreq
            .checked_mul(shape.max_segs)
            .ok_or(ConnectError::NoMemory)?;
        let kva = KvaAllocator::try_new(shape.kva_pages).map_err(|_| ConnectError::NoMemory)?;
        let cache = GrantCache::try_new(shape.cache_pages, first_page + shape.kva_pages)
            .map_err(|_| ConnectError::NoMemory)?;
        Ok(Pools {
            kva,
            cache,
            reqs: try_vec(nreq, EMPTY_SLOT)?,
            segs: try_vec(nsegs, Segment::default())?,
            seg_page: try_vec(nsegs, SegPage::Unassigned)?,
            free_reqs: try_stack(nreq)?,
            lists: try_vec(nreq, EMPTY_LIST)?,
            free_lists: try_stack(nreq)?,
            handles: try_vec(shape.kva_pages as usize, GrantHandle::default())?,
            map_ops: try_vec(
                shape.max_pages,
                GrantMapOp {
                    gref: 0,
                    window_page: 0,
                    readonly: true,
                },
            )?,
            map_results: try_vec(shape.max_pages, Err(GrantError::General))?,
            unmap_ops: try_vec(
                shape.max_pages,
                GrantUnmapOp {
                    window_page: 0,
                    handle: GrantHandle::default(),
                },
            )?,
            purged: try_vec(shape.max_pages, (0, GrantHandle::default()))?,
            iov: try_vec(shape.max_pages, IoVec::default())?,
            indirect: try_vec(shape.indirect_bytes, 0u8)?,
            grefs: try_vec(
                if shape.cache_pages > 0 {
                    shape.max_segs
                } else {
                    0
                },
                0u32,
            )?,
            waitq: try_vec(nreq, NONE)?,
        })
    }

    fn paused(&self) -> bool {
        self.waitq_len > 0 || self.barrier != NONE || self.starved
    }

    fn idle(&self) -> bool {
        self.in_flight == 0 && self.open == NONE && self.waitq_len == 0 && self.barrier == NONE
    }

    fn tag(&self, l: u16) -> IoTag {
        make_tag(self.generation, self.id, l)
    }

    /// Consumes requests until the ring is empty, a pool runs dry, or the
    /// pass budget is spent. `Err` when the front-end broke the ring.
    fn consume<H: Host>(&mut self, host: &mut H, per_pass: u32, coalesce: bool) -> Result<(), ()> {
        let mut budget = per_pass;
        let mut stopped_on_pause = false;
        'pass: loop {
            let prod = self.ring.snapshot_req_prod().map_err(|_| ())?;
            while self.ring.req_cons() != prod {
                if self.paused() {
                    stopped_on_pause = true;
                    break 'pass;
                }
                if budget == 0 {
                    // Yield the taskqueue; a hostile front-end can keep
                    // producing forever.
                    host.schedule_run(self.id);
                    break 'pass;
                }
                if self.p.free_reqs.is_empty() {
                    self.stats.inc(Stat::RequestShortages);
                    self.starved = true;
                    stopped_on_pause = true;
                    break 'pass;
                }
                let Some(raw) = self.ring.take_request(prod) else {
                    break;
                };
                budget -= 1;
                self.stats.inc(Stat::ReqsReceived);
                self.accept(host, &raw, coalesce);
            }
            if self.paused() {
                stopped_on_pause = true;
                break;
            }
            if !self.ring.final_check_for_requests().map_err(|_| ())? {
                break;
            }
        }
        self.close_open(host, Stat::ForcedDispatch);
        // The pause may already be over (the dispatch above failed at once
        // and freed everything): no completion will come to restart the
        // ring, and req_event was not re-armed, so run again.
        if stopped_on_pause && !self.paused() {
            host.schedule_run(self.id);
        }
        Ok(())
    }

    /// Validates one request into a free slot (copying an indirect
    /// request's descriptors once), binds its grants, and takes it into a
    /// reqlist; or answers it with an error.
    fn accept<H: Host>(&mut self, host: &mut H, raw: &BlkifRequest, coalesce: bool) {
        let Some(slot) = self.p.free_reqs.pop() else {
            // consume() checked; keep the invariant without panicking.
            self.respond(raw.id, request::response_operation(raw), BLKIF_RSP_ERROR);
            return;
        };
        let base = slot as usize * self.max_segs;
        let segs = &mut self.p.segs[base..base + self.max_segs];
        let parsed = match request::parse(raw, &self.limits, segs) {
            Ok(Header::Ready(p)) => Ok(p),
            Ok(Header::Indirect(h)) => {
                self.stats.inc(Stat::IndirectReqs);
                let n = h.descriptor_bytes();
                match self.p.indirect.get_mut(..n) {
                    Some(buf) => match host.copy_in(self.dom, h.page_grefs(), buf) {
                        Ok(()) => request::parse_indirect(&h, buf, &self.limits, segs)
                            .map_err(|e| e.status()),
                        Err(_) => {
                            self.stats.inc(Stat::GrantMapFailures);
                            Err(BLKIF_RSP_ERROR)
                        }
                    },
                    // parse() bounded nsegs by what `indirect` was sized for.
                    None => Err(BLKIF_RSP_ERROR),
                }
            }
            Err(e) => Err(e.status()),
        };
        let p = match parsed {
            Ok(p) => p,
            Err(status) => {
                self.stats.inc(Stat::ReqsRefused);
                self.p.free_reqs.push(slot);
                self.respond(raw.id, request::response_operation(raw), status);
                return;
            }
        };
        if self.persistent && !self.bind_grants(host, base, usize::from(p.nsegs)) {
            self.stats.inc(Stat::ReqsRefused);
            self.stats.inc(Stat::GrantsRefused);
            self.p.free_reqs.push(slot);
            self.respond(p.id, p.operation, BLKIF_RSP_ERROR);
            return;
        }
        self.p.reqs[slot as usize] = ReqSlot {
            id: p.id,
            operation: p.operation,
            nsegs: p.nsegs,
            next: NONE,
        };
        self.enlist(host, slot, &p, coalesce);
    }

    /// Binds a request's segments to the persistent-grant cache: hits take
    /// their cached page, misses take a new entry (evicting the least
    /// recently used one when full) or stay transient when every entry is
    /// in use. `false`, with nothing bound, when the request names a grant
    /// twice or one another request in flight holds.
    fn bind_grants<H: Host>(&mut self, host: &mut H, base: usize, n: usize) -> bool {
        let (Some(segs), Some(sorted)) =
            (self.p.segs.get(base..base + n), self.p.grefs.get_mut(..n))
        else {
            return false;
        };
        for (g, s) in sorted.iter_mut().zip(segs) {
            *g = s.gref;
        }
        sorted.sort_unstable();
        if sorted.windows(2).any(|w| w[0] == w[1]) {
            return false;
        }
        let mut evicted = 0usize;
        let mut ok = true;
        for i in 0..n {
            let gref = self.p.segs[base + i].gref;
            let page = match self.p.cache.acquire(gref) {
                Lookup::Hit { page } => {
                    self.stats.inc(Stat::PersistentGrantHits);
                    SegPage::Cached(page)
                }
                Lookup::Busy => {
                    self.unbind(base, i);
                    ok = false;
                    break;
                }
                Lookup::Miss => match self.p.cache.insert(gref) {
                    Insert::New { page, evicted: e } => {
                        if let Some((p, h)) = e {
                            self.p.unmap_ops[evicted] = GrantUnmapOp {
                                window_page: p,
                                handle: h,
                            };
                            evicted += 1;
                        }
                        SegPage::Pending(page)
                    }
                    Insert::Full => SegPage::Unassigned,
                },
            };
            self.p.seg_page[base + i] = page;
        }
        if evicted > 0 {
            host.unmap_batch(&self.p.unmap_ops[..evicted]);
            self.stats.add(Stat::PersistentGrantsPurged, evicted as u64);
        }
        self.stats
            .set(Stat::PersistentGrantsMapped, u64::from(self.p.cache.len()));
        ok
    }

    /// Gives back the cache entries of segments `0..n` of a request that
    /// never started.
    fn unbind(&mut self, base: usize, n: usize) {
        for sp in &mut self.p.seg_page[base..base + n] {
            if let SegPage::Cached(p) | SegPage::Pending(p) = *sp {
                self.p.cache.unacquire(p);
            }
            *sp = SegPage::Unassigned;
        }
    }

    /// Takes a validated request into the open reqlist or a new one.
    fn enlist<H: Host>(&mut self, host: &mut H, slot: u16, p: &Parsed, coalesce: bool) {
        match p.op {
            Op::Flush | Op::Barrier => self.stats.inc(Stat::FlushReqs),
            Op::Discard { .. } => self.stats.inc(Stat::DiscardReqs),
            Op::Read | Op::Write => {}
        }
        if self.open != NONE {
            let o = self.p.lists[self.open as usize];
            let run = OpenRun {
                op: o.op,
                next_sector: o.sector + o.nr_sectors,
                pages: o.pages,
                bytes: o.nr_sectors << SECTOR_SHIFT,
            };
            if coalesce && coalesce::may_join(&run, p, &self.budget) {
                let l = &mut self.p.lists[self.open as usize];
                self.p.reqs[l.tail as usize].next = slot;
                l.tail = slot;
                l.nr_sectors += p.nr_sectors;
                l.pages += u32::from(p.nsegs);
                self.stats.inc(Stat::ReqsCoalesced);
                return;
            }
            self.close_open(host, Stat::NormalDispatch);
        }
        let Some(l) = self.p.free_lists.pop() else {
            // As many reqlists as slots: unreachable; answer rather than panic.
            self.release_segments(host, slot);
            self.p.free_reqs.push(slot);
            self.respond(p.id, p.operation, BLKIF_RSP_ERROR);
            return;
        };
        self.p.lists[l as usize] = Reqlist {
            op: p.op,
            head: slot,
            tail: slot,
            sector: p.sector,
            nr_sectors: p.nr_sectors,
            pages: u32::from(p.nsegs),
            ..EMPTY_LIST
        };
        if matches!(p.op, Op::Read | Op::Write) {
            self.open = l;
        } else {
            self.stats.inc(Stat::NormalDispatch);
            self.dispatch(host, l);
        }
    }

    fn close_open<H: Host>(&mut self, host: &mut H, why: Stat) {
        if self.open != NONE {
            let l = self.open;
            self.open = NONE;
            self.stats.inc(why);
            self.dispatch(host, l);
        }
    }

    fn dispatch<H: Host>(&mut self, host: &mut H, l: u16) {
        self.stats.inc(Stat::TotalDispatch);
        if self.p.lists[l as usize].op == Op::Barrier {
            self.barrier = l;
            self.try_start_barrier(host);
        } else if self.waitq_len > 0 || !self.try_start(host, l) {
            // Behind others already waiting, or no room: wait in order.
            self.stats.inc(Stat::KvaShortages);
            let cap = self.p.waitq.len();
            self.p.waitq[(self.waitq_head + self.waitq_len) % cap] = l;
            self.waitq_len += 1;
        }
    }

    /// Starts waiting reqlists, oldest first, while the window has room.
    fn drain_waitq<H: Host>(&mut self, host: &mut H) {
        while self.waitq_len > 0 {
            let l = self.p.waitq[self.waitq_head];
            if !self.try_start(host, l) {
                break;
            }
            self.waitq_head = (self.waitq_head + 1) % self.p.waitq.len();
            self.waitq_len -= 1;
        }
    }

    /// Starts the pending barrier once everything before it has finished.
    fn try_start_barrier<H: Host>(&mut self, host: &mut H) {
        if self.barrier != NONE
            && self.in_flight == 0
            && self.waitq_len == 0
            && !self.p.lists[self.barrier as usize].in_flight
        {
            let l = self.barrier;
            // With nothing in flight the whole window is free, and it always
            // holds one request; fail the barrier rather than wait forever
            // should that ever not hold.
            if !self.try_start(host, l) {
                self.p.lists[l as usize].error = true;
                self.finish(host, l);
            }
        }
    }

    /// Calls `f(slot base index, segment count)` for each request of the
    /// chain starting at `head`, in order.
    fn chain(&self, head: u16, mut f: impl FnMut(usize, usize)) {
        let mut cur = head;
        while cur != NONE {
            let r = self.p.reqs[cur as usize];
            f(cur as usize * self.max_segs, usize::from(r.nsegs));
            cur = r.next;
        }
    }

    /// Gives a reqlist a window range for its unbound segments, maps those
    /// and its new persistent grants in one batch, and submits its first
    /// phase. `false`, with nothing changed, when the window has no room
    /// for it; otherwise the reqlist is in flight or already answered (a
    /// failed mapping or submission).
    fn try_start<H: Host>(&mut self, host: &mut H, l: u16) -> bool {
        let list = self.p.lists[l as usize];
        if list.pages > 0 {
            let mut transient = 0u32;
            self.chain(list.head, |base, n| {
                transient += self.p.seg_page[base..base + n]
                    .iter()
                    .filter(|p| **p == SegPage::Unassigned)
                    .count() as u32;
            });
            let first = if transient > 0 {
                let Some(first) = self.p.kva.alloc(transient) else {
                    return false;
                };
                first
            } else {
                0
            };
            let readonly = list.op.writes();
            let mut nops = 0usize;
            let mut next = first;
            let mut cur = list.head;
            while cur != NONE {
                let r = self.p.reqs[cur as usize];
                let base = cur as usize * self.max_segs;
                for i in base..base + usize::from(r.nsegs) {
                    let gref = self.p.segs[i].gref;
                    let (page, ro) = match self.p.seg_page[i] {
                        SegPage::Unassigned => {
                            let page = self.kva_base + next;
                            next += 1;
                            self.p.seg_page[i] = SegPage::Transient(page);
                            (page, readonly)
                        }
                        // Persistent grants serve reads and writes alike.
                        SegPage::Pending(page) => (page, false),
                        SegPage::Transient(_) | SegPage::Cached(_) => continue,
                    };
                    self.p.map_ops[nops] = GrantMapOp {
                        gref,
                        window_page: page,
                        readonly: ro,
                    };
                    nops += 1;
                }
                cur = r.next;
            }
            let lm = &mut self.p.lists[l as usize];
            lm.kva_first = first;
            lm.kva_pages = transient;
            if nops > 0 {
                host.map_batch(
                    self.dom,
                    &self.p.map_ops[..nops],
                    &mut self.p.map_results[..nops],
                );
            }
            let mut failed = 0u64;
            let mut j = 0usize;
            let mut cur = list.head;
            while cur != NONE {
                let r = self.p.reqs[cur as usize];
                let base = cur as usize * self.max_segs;
                for i in base..base + usize::from(r.nsegs) {
                    let page = self.p.seg_page[i];
                    let (SegPage::Transient(p) | SegPage::Pending(p)) = page else {
                        continue;
                    };
                    let res = self.p.map_results[j];
                    j += 1;
                    match (page, res) {
                        (SegPage::Transient(_), Ok(h)) => {
                            self.p.handles[(p - self.kva_base) as usize] = h;
                        }
                        (SegPage::Pending(_), Ok(h)) => {
                            self.p.cache.set_mapped(p, h);
                            self.p.seg_page[i] = SegPage::Cached(p);
                        }
                        (SegPage::Pending(_), Err(_)) => {
                            self.p.cache.forget(p);
                            self.p.seg_page[i] = SegPage::Unassigned;
                            failed += 1;
                        }
                        _ => {
                            self.p.seg_page[i] = SegPage::Unassigned;
                            failed += 1;
                        }
                    }
                }
                cur = r.next;
            }
            self.stats
                .set(Stat::PersistentGrantsMapped, u64::from(self.p.cache.len()));
            if failed > 0 {
                self.stats.add(Stat::GrantMapFailures, failed);
                self.p.lists[l as usize].error = true;
                self.finish(host, l);
                return true;
            }
        }
        let lm = &mut self.p.lists[l as usize];
        lm.in_flight = true;
        lm.phase = 0;
        self.in_flight += 1;
        self.submit_phase(host, l);
        true
    }

    /// Submits the reqlist's current phase; a submission the store refuses
    /// completes the reqlist with an error at once.
    fn submit_phase<H: Host>(&mut self, host: &mut H, l: u16) {
        let list = self.p.lists[l as usize];
        let steps = plan(list.op, list.pages > 0);
        let tag = self.tag(l);
        let offset = list.sector << SECTOR_SHIFT;
        let submitted = match steps.get(list.phase as usize) {
            Some(Phase::Data) => {
                let mut n = 0usize;
                let mut cur = list.head;
                let mut ok = true;
                while cur != NONE {
                    let r = self.p.reqs[cur as usize];
                    let base = cur as usize * self.max_segs;
                    let end = base + usize::from(r.nsegs);
                    let pages = self.p.seg_page[base..end].iter().map(|p| match *p {
                        SegPage::Transient(p) | SegPage::Cached(p) => Some(p),
                        SegPage::Pending(_) | SegPage::Unassigned => None,
                    });
                    match coalesce::append_iovecs(
                        self.p.segs[base..end].iter().zip(pages),
                        &mut self.p.iov,
                        n,
                    ) {
                        Some(m) => n = m,
                        None => {
                            ok = false;
                            break;
                        }
                    }
                    cur = r.next;
                }
                if !ok {
                    Err(IoError::Io)
                } else {
                    let iov = &self.p.iov[..n];
                    let op = if list.op == Op::Read {
                        IoOp::Read { offset, iov }
                    } else {
                        IoOp::Write { offset, iov }
                    };
                    host.store_submit(tag, op)
                }
            }
            Some(Phase::Flush) => host.store_submit(tag, IoOp::Flush),
            Some(Phase::Discard) => {
                let secure = matches!(list.op, Op::Discard { secure: true });
                host.store_submit(
                    tag,
                    IoOp::Discard {
                        offset,
                        len: list.nr_sectors << SECTOR_SHIFT,
                        secure,
                    },
                )
            }
            None => Err(IoError::Io),
        };
        if submitted.is_err() {
            self.p.lists[l as usize].error = true;
            self.finish(host, l);
        }
    }

    /// One phase of a reqlist finished.
    fn on_complete<H: Host>(&mut self, host: &mut H, l: u16, result: Result<(), IoError>) {
        // A tag the core did not hand out, or a duplicate completion, is a
        // platform bug; ignore it rather than answer twice.
        if usize::from(l) >= self.p.lists.len() || !self.p.lists[l as usize].in_flight {
            return;
        }
        let list = &mut self.p.lists[l as usize];
        if result.is_err() {
            list.error = true;
            return self.finish(host, l);
        }
        let steps = plan(list.op, list.pages > 0);
        if steps.get(list.phase as usize) == Some(&Phase::Data) {
            let bytes = list.nr_sectors << SECTOR_SHIFT;
            self.stats.add(
                if list.op == Op::Read {
                    Stat::BytesRead
                } else {
                    Stat::BytesWritten
                },
                bytes,
            );
        }
        list.phase += 1;
        if (list.phase as usize) < steps.len() {
            self.submit_phase(host, l);
        } else {
            self.finish(host, l);
        }
    }

    /// Unmaps a request's transient grants and gives back its persistent
    /// ones.
    fn release_segments<H: Host>(&mut self, host: &mut H, slot: u16) {
        let base = slot as usize * self.max_segs;
        let n = usize::from(self.p.reqs[slot as usize].nsegs);
        let mut nun = 0usize;
        let mut now = None;
        for i in base..base + n {
            match self.p.seg_page[i] {
                SegPage::Transient(p) => {
                    if let Some(h) = self.p.handles.get((p - self.kva_base) as usize) {
                        self.p.unmap_ops[nun] = GrantUnmapOp {
                            window_page: p,
                            handle: *h,
                        };
                        nun += 1;
                    }
                }
                SegPage::Cached(p) => {
                    let t = *now.get_or_insert_with(|| host.now_ms());
                    self.p.cache.release(p, t);
                }
                SegPage::Pending(p) => self.p.cache.unacquire(p),
                SegPage::Unassigned => {}
            }
            self.p.seg_page[i] = SegPage::Unassigned;
        }
        if nun > 0 {
            host.unmap_batch(&self.p.unmap_ops[..nun]);
        }
    }

    /// Unmaps, frees the window range, answers every request of the
    /// reqlist, and returns everything to the pools.
    fn finish<H: Host>(&mut self, host: &mut H, l: u16) {
        let list = self.p.lists[l as usize];
        let mut cur = list.head;
        while cur != NONE {
            self.release_segments(host, cur);
            cur = self.p.reqs[cur as usize].next;
        }
        if list.kva_pages > 0 {
            self.p.kva.free(list.kva_first, list.kva_pages);
        }
        if list.in_flight {
            self.in_flight -= 1;
        }
        let status = if list.error {
            BLKIF_RSP_ERROR
        } else {
            BLKIF_RSP_OKAY
        };
        let mut cur = list.head;
        while cur != NONE {
            let r = self.p.reqs[cur as usize];
            self.respond(r.id, r.operation, status);
            self.p.free_reqs.push(cur);
            cur = r.next;
        }
        self.p.lists[l as usize] = EMPTY_LIST;
        self.p.free_lists.push(l);
        if self.barrier == l {
            self.barrier = NONE;
        }
        self.starved = false;
        self.stats
            .set(Stat::PersistentGrantsMapped, u64::from(self.p.cache.len()));
    }

    /// Unmaps persistent grants unused for `idle_ms`.
    fn purge_idle<H: Host>(&mut self, host: &mut H, idle_ms: u64) {
        if self.p.cache.is_empty() {
            return;
        }
        let now = host.now_ms();
        loop {
            let n = self.p.cache.purge_idle(now, idle_ms, &mut self.p.purged);
            self.unmap_purged(host, n);
            if n < self.p.purged.len() {
                break;
            }
        }
    }

    /// Unmaps every persistent grant (disconnect; nothing is in flight).
    fn drain_cache<H: Host>(&mut self, host: &mut H) {
        loop {
            let n = self.p.cache.drain(&mut self.p.purged);
            if n == 0 {
                break;
            }
            self.unmap_purged(host, n);
        }
    }

    fn unmap_purged<H: Host>(&mut self, host: &mut H, n: usize) {
        if n == 0 {
            return;
        }
        for (op, (page, handle)) in self.p.unmap_ops.iter_mut().zip(&self.p.purged[..n]) {
            *op = GrantUnmapOp {
                window_page: *page,
                handle: *handle,
            };
        }
        host.unmap_batch(&self.p.unmap_ops[..n]);
        self.stats.add(Stat::PersistentGrantsPurged, n as u64);
        self.stats
            .set(Stat::PersistentGrantsMapped, u64::from(self.p.cache.len()));
    }

    /// Queues one response on the ring (published by [`Queue::publish`]).
    fn respond(&mut self, id: u64, operation: u8, status: i16) {
        if self.broken {
            return;
        }
        self.ring.push_response(&BlkifResponse {
            id,
            operation,
            status,
        });
        self.unpublished += 1;
        self.stats.inc(Stat::ReqsQueuedForCompletion);
        if status != BLKIF_RSP_OKAY {
            self.stats.inc(Stat::ReqsCompletedWithError);
        }
    }

    /// Makes queued responses visible; notifies the front-end only if its
    /// `rsp_event` asked for it.
    fn publish<H: Host>(&mut self, host: &mut H) {
        if self.unpublished == 0 || self.broken {
            return;
        }
        if self.ring.publish_responses() {
            host.evtchn_notify(self.id);
        }
        self.stats.add(Stat::ReqsCompleted, self.unpublished);
        self.unpublished = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn eoi_backoff_grows_and_is_capped() {
        assert_eq!(eoi_delay(0), 0);
        assert_eq!(eoi_delay(SPURIOUS_GRACE), 0);
        assert_eq!(eoi_delay(SPURIOUS_GRACE + 1), 1);
        assert_eq!(eoi_delay(SPURIOUS_GRACE + 2), 2);
        assert_eq!(eoi_delay(SPURIOUS_GRACE + 7), 64);
        assert_eq!(eoi_delay(u32::MAX), MAX_EOI_DELAY_MS);
    }

    #[test]
    fn tags_carry_generation_queue_and_list() {
        let t = make_tag(0xab, 3, 0x1234);
        assert_eq!(t.0 >> 24, 0xab);
        assert_eq!((t.0 >> 16) & 0xff, 3);
        assert_eq!(t.0 & 0xffff, 0x1234);
    }
}
