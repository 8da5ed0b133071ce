//! One `vbd` back-end: the connection life cycle and the request path.
//!
//! An [`Instance`] ties together the pieces of the core for one virtual
//! block device. Its life cycle follows the state diagram of `io/blkif.h`
//! over the `io/xenbus.h` states: open the store once the root file system
//! is mounted, publish the offer, InitWait; on the front-end's Initialised
//! (or Connected, from front-ends that skip a state) read and vet its
//! transport parameters, map the ring, bind the event channel, publish the
//! medium, Connected; on Closing drain every I/O in flight, release, Closing;
//! on Closed, Closed — and an `online` back-end keeps its store for the next
//! front-end.
//!
//! The request path ([`Instance::run`] and [`Instance::complete`]) follows
//! DESIGN.md's walk of one request: read `req_prod` once, copy each slot
//! once, validate, coalesce into the open reqlist, give each closed reqlist
//! one contiguous range of the mapping window, map its grants in one batch,
//! submit one I/O; on completion unmap, free the range, answer every request
//! of the reqlist (all with an error if any part failed), and notify the
//! front-end only when it asked.
//!
//! Every pool is allocated, fallibly, when the connection is made; nothing on
//! the request path allocates.

use alloc::string::String;
use alloc::vec::Vec;

use crate::abi::{
    BlkifResponse, Segment, BLKIF_MAX_SEGMENTS_PER_REQUEST, BLKIF_RSP_ERROR, BLKIF_RSP_OKAY,
    SECTOR_SHIFT,
};
use crate::coalesce::{self, Budget, OpenRun};
use crate::connect::{self, BackendNodes, ConnectError, Offer};
use crate::host::{
    DomId, GrantError, GrantHandle, GrantMapOp, GrantUnmapOp, Host, IoError, IoOp, IoTag, IoVec,
    MediumInfo, OpenParams, QueueId, XenbusState, PAGE_SIZE,
};
use crate::kva::KvaAllocator;
use crate::request::{self, Limits, Op, Parsed};
use crate::ring::BackRing;
use crate::stats::{Stat, Stats, Tunable, Tunables};

/// Why an instance could not be created.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InstanceError {
    /// A fallible allocation failed.
    NoMemory,
}

const NONE: u16 = u16::MAX;

/// One consumed, validated request waiting for or in service.
#[derive(Clone, Copy, Debug)]
struct ReqSlot {
    id: u64,
    operation: u8,
    nsegs: u8,
    seg: [Segment; BLKIF_MAX_SEGMENTS_PER_REQUEST],
    /// Next request of the same reqlist, or `NONE`.
    next: u16,
}

const EMPTY_SLOT: ReqSlot = ReqSlot {
    id: 0,
    operation: 0,
    nsegs: 0,
    seg: [Segment {
        gref: 0,
        first_sect: 0,
        last_sect: 0,
    }; BLKIF_MAX_SEGMENTS_PER_REQUEST],
    next: NONE,
};

/// One step of serving a reqlist.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    Data,
    Flush,
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
    pages: u32,
    /// First window page, valid when `mapped`.
    kva_first: u32,
    mapped: bool,
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
    mapped: false,
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

/// Everything that exists only while connected.
struct Connection {
    dom: DomId,
    ring: BackRing,
    limits: Limits,
    budget: Budget,
    kva: KvaAllocator,
    reqs: Vec<ReqSlot>,
    free_reqs: Vec<u16>,
    lists: Vec<Reqlist>,
    free_lists: Vec<u16>,
    /// Grant handle of each window page.
    handles: Vec<GrantHandle>,
    map_ops: Vec<GrantMapOp>,
    map_results: Vec<Result<GrantHandle, GrantError>>,
    unmap_ops: Vec<GrantUnmapOp>,
    iov: Vec<IoVec>,
    /// The reqlist requests are being appended to.
    open: u16,
    /// Reqlists waiting, in order, for room in the window (a ring buffer
    /// over `waitq`, which has room for every reqlist). Consumption pauses
    /// while any waits.
    waitq: Vec<u16>,
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
}

impl Connection {
    fn paused(&self) -> bool {
        self.waitq_len > 0 || self.barrier != NONE || self.starved
    }

    fn idle(&self) -> bool {
        self.in_flight == 0 && self.open == NONE && self.waitq_len == 0 && self.barrier == NONE
    }
}

/// One back-end device instance.
pub struct Instance {
    be_path: String,
    tunables: Tunables,
    stats: Stats,
    state: XenbusState,
    nodes: Option<BackendNodes>,
    medium: Option<MediumInfo>,
    conn: Option<Connection>,
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

    /// The statistics and negotiated limits.
    pub fn stats(&self) -> &Stats {
        &self.stats
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
                }
                Err(e) => return self.fail(host, ConnectError::Open(e)),
            }
        }
        let offer = Offer {
            max_ring_page_order: self.tunables.get(Tunable::MaxRingPageOrder) as u32,
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
    /// acts on it.
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
                XenbusState::InitWait => self.connect(host),
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

    fn may_reconnect(&self) -> bool {
        self.conn.is_none()
            && self.medium.is_some()
            && self.nodes.as_ref().is_some_and(|n| n.online)
    }

    fn connect<H: Host>(&mut self, host: &mut H) {
        match self.try_connect(host) {
            Ok(()) => {
                self.stats.reset_counters();
                self.set_state(host, XenbusState::Connected);
                // Requests may already be waiting.
                self.run(host, 0);
            }
            Err(e) => self.fail(host, e),
        }
    }

    fn try_connect<H: Host>(&mut self, host: &mut H) -> Result<(), ConnectError> {
        let (Some(nodes), Some(medium)) = (self.nodes.as_ref(), self.medium) else {
            return Err(ConnectError::Missing { key: "params" });
        };
        let dom = nodes.frontend_id;
        let max_order = self.tunables.get(Tunable::MaxRingPageOrder) as u32;
        let fe = connect::read_frontend(host, &nodes.frontend, max_order)?;
        let ring_size = fe
            .abi
            .ring_size(fe.ring_pages)
            .ok_or(ConnectError::OutOfRange {
                key: "ring-page-order",
                value: u64::from(fe.ring_pages),
            })?;

        let nreq = (ring_size as usize).min(self.tunables.get(Tunable::MaxRequests) as usize);
        let max_pages = (self.tunables.get(Tunable::MaxRequestSize) as usize / PAGE_SIZE)
            .max(BLKIF_MAX_SEGMENTS_PER_REQUEST);
        let window = match self.tunables.get(Tunable::KvaPages) as usize {
            0 => nreq * BLKIF_MAX_SEGMENTS_PER_REQUEST,
            n => n,
        }
        .max(max_pages);
        let window = u32::try_from(window).map_err(|_| ConnectError::NoMemory)?;

        let flush = medium.can_flush;
        let limits = Limits {
            max_segments: BLKIF_MAX_SEGMENTS_PER_REQUEST as u32,
            medium_sectors: medium.sectors,
            sector_size: medium.sector_size,
            read_only: medium.read_only,
            flush,
            barrier: flush,
        };

        // Pools first: nothing to undo if memory is short.
        let kva = KvaAllocator::try_new(window).map_err(|_| ConnectError::NoMemory)?;
        let reqs = try_vec(nreq, EMPTY_SLOT)?;
        let free_reqs = try_stack(nreq)?;
        let lists = try_vec(nreq, EMPTY_LIST)?;
        let free_lists = try_stack(nreq)?;
        let handles = try_vec(window as usize, GrantHandle::default())?;
        let map_ops = try_vec(
            max_pages,
            GrantMapOp {
                gref: 0,
                window_page: 0,
                readonly: true,
            },
        )?;
        let map_results = try_vec(max_pages, Err(GrantError::General))?;
        let unmap_ops = try_vec(
            max_pages,
            GrantUnmapOp {
                window_page: 0,
                handle: GrantHandle::default(),
            },
        )?;
        let iov = try_vec(max_pages, IoVec::default())?;

        host.window_reserve(window).map_err(ConnectError::Grant)?;
        let mem = match host.map_ring(0, dom, fe.refs()) {
            Ok(m) => m,
            Err(e) => {
                host.window_release();
                return Err(ConnectError::Grant(e));
            }
        };
        // BackRing::new refuses a mapping shorter than the ring; check here
        // so that such a mapping is handed back rather than dropped.
        if mem.len() < fe.ring_pages as usize * PAGE_SIZE {
            host.unmap_ring(0, mem);
            host.window_release();
            return Err(ConnectError::Ring);
        }
        let ring = match BackRing::new(mem, fe.abi, fe.ring_pages) {
            Ok(r) => r,
            Err(_) => {
                // Unreachable after the length check above.
                host.window_release();
                return Err(ConnectError::Ring);
            }
        };
        if let Err(e) = host.evtchn_bind(0, dom, fe.event_channel) {
            host.unmap_ring(0, ring.into_mem());
            host.window_release();
            return Err(ConnectError::Evtchn(e));
        }
        if let Err(e) = connect::publish_connected(host, &self.be_path, &medium, flush, flush) {
            host.evtchn_unbind(0);
            host.unmap_ring(0, ring.into_mem());
            host.window_release();
            return Err(e);
        }

        self.stats.set(Stat::MaxRequests, nreq as u64);
        self.stats.set(
            Stat::MaxRequestSegments,
            BLKIF_MAX_SEGMENTS_PER_REQUEST as u64,
        );
        self.stats
            .set(Stat::MaxRequestSize, (max_pages * PAGE_SIZE) as u64);
        self.stats.set(Stat::RingPages, u64::from(fe.ring_pages));
        self.stats
            .set(Stat::RingOrder, u64::from(fe.ring_pages.trailing_zeros()));
        self.closing = false;
        self.frontend_closed = false;
        self.conn = Some(Connection {
            dom,
            ring,
            limits,
            budget: Budget {
                max_pages: max_pages as u32,
                max_bytes: (max_pages * PAGE_SIZE) as u64,
            },
            kva,
            reqs,
            free_reqs,
            lists,
            free_lists,
            handles,
            map_ops,
            map_results,
            unmap_ops,
            iov,
            open: NONE,
            waitq: try_vec(nreq, NONE)?,
            waitq_head: 0,
            waitq_len: 0,
            barrier: NONE,
            starved: false,
            in_flight: 0,
            unpublished: 0,
            broken: false,
        });
        Ok(())
    }

    fn begin_close<H: Host>(&mut self, host: &mut H) {
        self.closing = true;
        if let Some(c) = self.conn.as_mut() {
            c.close_open(host, &mut self.stats, Stat::ForcedDispatch);
            c.publish(host, &mut self.stats);
        }
        self.finish_close_if_drained(host);
    }

    /// Releases the connection once nothing is in flight, then moves to
    /// Closing or Closed (and, when detaching, closes the store).
    fn finish_close_if_drained<H: Host>(&mut self, host: &mut H) {
        if !self.closing || !self.is_idle() {
            return;
        }
        if let Some(mut c) = self.conn.take() {
            c.publish(host, &mut self.stats);
            host.evtchn_unbind(0);
            host.unmap_ring(0, c.ring.into_mem());
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

    /// The event channel fired or a run was scheduled: consumes requests,
    /// at most `hw.xbb.requests_per_pass` of them before yielding.
    pub fn run<H: Host>(&mut self, host: &mut H, queue: QueueId) {
        let _ = queue;
        if self.closing {
            return;
        }
        let per_pass = self.tunables.get(Tunable::RequestsPerPass) as u32;
        let coalesce = self.stats.get(Stat::NoCoalesceReqs) == 0;
        let Some(c) = self.conn.as_mut() else {
            return;
        };
        if c.broken {
            return;
        }
        let outcome = c.consume(host, &mut self.stats, per_pass, coalesce);
        if outcome.is_err() {
            // The front-end wrote an impossible producer index: answer
            // nothing more on this ring, serve nothing that came with it.
            c.broken = true;
            if c.open != NONE {
                let l = c.open;
                c.open = NONE;
                c.lists[l as usize].error = true;
                c.finish(host, &mut self.stats, l);
            }
            self.fail(host, ConnectError::Ring);
            self.begin_close(host);
            return;
        }
        c.publish(host, &mut self.stats);
    }

    /// The front-end kicked `queue`'s event channel: runs the queue, then
    /// re-enables the channel.
    pub fn event<H: Host>(&mut self, host: &mut H, queue: QueueId) {
        self.run(host, queue);
        host.evtchn_eoi(queue, 0);
    }

    /// A store I/O completed: advance its reqlist, answer the front-end,
    /// and restart whatever waited for the resources it held.
    pub fn complete<H: Host>(&mut self, host: &mut H, tag: IoTag, result: Result<(), IoError>) {
        let Some(c) = self.conn.as_mut() else {
            return;
        };
        let was_paused = c.paused();
        c.on_complete(host, &mut self.stats, tag, result);
        c.drain_waitq(host, &mut self.stats);
        c.try_start_barrier(host, &mut self.stats);
        c.publish(host, &mut self.stats);
        let resume = was_paused && !c.paused();
        if self.closing {
            self.finish_close_if_drained(host);
        } else if resume {
            self.run(host, 0);
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

/// The walk of one chain of requests' segments, in order.
fn chain_segments(reqs: &[ReqSlot], head: u16) -> impl Iterator<Item = &Segment> {
    let mut cur = head;
    core::iter::from_fn(move || {
        if cur == NONE {
            return None;
        }
        let r = &reqs[cur as usize];
        cur = r.next;
        Some(r.seg[..r.nsegs as usize].iter())
    })
    .flatten()
}

impl Connection {
    /// Consumes requests until the ring is empty, a pool runs dry, or the
    /// pass budget is spent. `Err` when the front-end broke the ring.
    fn consume<H: Host>(
        &mut self,
        host: &mut H,
        stats: &mut Stats,
        per_pass: u32,
        coalesce: bool,
    ) -> Result<(), ()> {
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
                    host.schedule_run(0);
                    break 'pass;
                }
                if self.free_reqs.is_empty() {
                    stats.inc(Stat::RequestShortages);
                    self.starved = true;
                    stopped_on_pause = true;
                    break 'pass;
                }
                let Some(raw) = self.ring.take_request(prod) else {
                    break;
                };
                budget -= 1;
                stats.inc(Stat::ReqsReceived);
                match request::parse(&raw, &self.limits) {
                    Ok(p) => self.accept(host, stats, &p, coalesce),
                    Err(e) => {
                        stats.inc(Stat::ReqsRefused);
                        self.respond(stats, raw.id, raw.operation, e.status());
                    }
                }
            }
            if self.paused() {
                stopped_on_pause = true;
                break;
            }
            if !self.ring.final_check_for_requests().map_err(|_| ())? {
                break;
            }
        }
        self.close_open(host, stats, Stat::ForcedDispatch);
        // The pause may already be over (the dispatch above failed at once
        // and freed everything): no completion will come to restart the
        // ring, and req_event was not re-armed, so run again.
        if stopped_on_pause && !self.paused() {
            host.schedule_run(0);
        }
        Ok(())
    }

    /// Takes a validated request into a slot and into a reqlist.
    fn accept<H: Host>(&mut self, host: &mut H, stats: &mut Stats, p: &Parsed, coalesce: bool) {
        let Some(slot) = self.free_reqs.pop() else {
            // consume() checked; keep the invariant without panicking.
            self.respond(stats, p.id, p.operation, BLKIF_RSP_ERROR);
            return;
        };
        self.reqs[slot as usize] = ReqSlot {
            id: p.id,
            operation: p.operation,
            nsegs: p.nsegs,
            seg: p.seg,
            next: NONE,
        };
        if matches!(p.op, Op::Flush | Op::Barrier) {
            stats.inc(Stat::FlushReqs);
        }
        if self.open != NONE {
            let o = self.lists[self.open as usize];
            let run = OpenRun {
                op: o.op,
                next_sector: o.sector + o.nr_sectors,
                pages: o.pages,
                bytes: o.nr_sectors << SECTOR_SHIFT,
            };
            if coalesce && coalesce::may_join(&run, p, &self.budget) {
                let l = &mut self.lists[self.open as usize];
                self.reqs[l.tail as usize].next = slot;
                l.tail = slot;
                l.nr_sectors += p.nr_sectors;
                l.pages += u32::from(p.nsegs);
                stats.inc(Stat::ReqsCoalesced);
                return;
            }
            self.close_open(host, stats, Stat::NormalDispatch);
        }
        let Some(l) = self.free_lists.pop() else {
            self.free_reqs.push(slot);
            self.respond(stats, p.id, p.operation, BLKIF_RSP_ERROR);
            return;
        };
        self.lists[l as usize] = Reqlist {
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
            stats.inc(Stat::NormalDispatch);
            self.dispatch(host, stats, l);
        }
    }

    fn close_open<H: Host>(&mut self, host: &mut H, stats: &mut Stats, why: Stat) {
        if self.open != NONE {
            let l = self.open;
            self.open = NONE;
            stats.inc(why);
            self.dispatch(host, stats, l);
        }
    }

    fn dispatch<H: Host>(&mut self, host: &mut H, stats: &mut Stats, l: u16) {
        stats.inc(Stat::TotalDispatch);
        if self.lists[l as usize].op == Op::Barrier {
            self.barrier = l;
            self.try_start_barrier(host, stats);
        } else if self.waitq_len > 0 || !self.try_start(host, stats, l) {
            // Behind others already waiting, or no room: wait in order.
            stats.inc(Stat::KvaShortages);
            let cap = self.waitq.len();
            self.waitq[(self.waitq_head + self.waitq_len) % cap] = l;
            self.waitq_len += 1;
        }
    }

    /// Starts waiting reqlists, oldest first, while the window has room.
    fn drain_waitq<H: Host>(&mut self, host: &mut H, stats: &mut Stats) {
        while self.waitq_len > 0 {
            let l = self.waitq[self.waitq_head];
            if !self.try_start(host, stats, l) {
                break;
            }
            self.waitq_head = (self.waitq_head + 1) % self.waitq.len();
            self.waitq_len -= 1;
        }
    }

    /// Starts the pending barrier once everything before it has finished.
    fn try_start_barrier<H: Host>(&mut self, host: &mut H, stats: &mut Stats) {
        if self.barrier != NONE
            && self.in_flight == 0
            && self.waitq_len == 0
            && !self.lists[self.barrier as usize].in_flight
        {
            let l = self.barrier;
            // With nothing in flight the whole window is free, and it always
            // holds one request; fail the barrier rather than wait forever
            // should that ever not hold.
            if !self.try_start(host, stats, l) {
                self.lists[l as usize].error = true;
                self.finish(host, stats, l);
            }
        }
    }

    /// Gives a reqlist its window range, maps its grants in one batch and
    /// submits its first phase. `false`, with nothing changed, when the
    /// window has no room for it; otherwise the reqlist is in flight or
    /// already answered (a failed mapping or submission).
    fn try_start<H: Host>(&mut self, host: &mut H, stats: &mut Stats, l: u16) -> bool {
        let list = self.lists[l as usize];
        let pages = list.pages as usize;
        if pages > 0 {
            let Some(first) = self.kva.alloc(list.pages) else {
                return false;
            };
            let readonly = list.op.writes();
            for (i, s) in chain_segments(&self.reqs, list.head).enumerate() {
                self.map_ops[i] = GrantMapOp {
                    gref: s.gref,
                    window_page: first + i as u32,
                    readonly,
                };
            }
            host.map_batch(
                self.dom,
                &self.map_ops[..pages],
                &mut self.map_results[..pages],
            );
            let mut failed = 0u64;
            let mut n_unmap = 0usize;
            for i in 0..pages {
                match self.map_results[i] {
                    Ok(h) => {
                        self.handles[first as usize + i] = h;
                        self.unmap_ops[n_unmap] = GrantUnmapOp {
                            window_page: first + i as u32,
                            handle: h,
                        };
                        n_unmap += 1;
                    }
                    Err(_) => failed += 1,
                }
            }
            if failed > 0 {
                stats.add(Stat::GrantMapFailures, failed);
                if n_unmap > 0 {
                    host.unmap_batch(&self.unmap_ops[..n_unmap]);
                }
                self.kva.free(first, list.pages);
                self.lists[l as usize].error = true;
                self.finish(host, stats, l);
                return true;
            }
            let lm = &mut self.lists[l as usize];
            lm.kva_first = first;
            lm.mapped = true;
        }
        let lm = &mut self.lists[l as usize];
        lm.in_flight = true;
        lm.phase = 0;
        self.in_flight += 1;
        self.submit_phase(host, stats, l);
        true
    }

    /// Submits the reqlist's current phase; a submission the store refuses
    /// completes the reqlist with an error at once.
    fn submit_phase<H: Host>(&mut self, host: &mut H, stats: &mut Stats, l: u16) {
        let list = self.lists[l as usize];
        let steps = plan(list.op, list.pages > 0);
        let tag = IoTag(u32::from(l));
        let submitted = match steps.get(list.phase as usize) {
            Some(Phase::Data) => {
                let n = coalesce::build_iovecs(
                    chain_segments(&self.reqs, list.head),
                    list.kva_first,
                    &mut self.iov,
                );
                let offset = list.sector << SECTOR_SHIFT;
                let iov = &self.iov[..n];
                let op = if list.op == Op::Read {
                    IoOp::Read { offset, iov }
                } else {
                    IoOp::Write { offset, iov }
                };
                host.store_submit(tag, op)
            }
            Some(Phase::Flush) => host.store_submit(tag, IoOp::Flush),
            None => Err(IoError::Io),
        };
        if submitted.is_err() {
            self.lists[l as usize].error = true;
            self.finish(host, stats, l);
        }
    }

    /// One phase of a reqlist finished.
    fn on_complete<H: Host>(
        &mut self,
        host: &mut H,
        stats: &mut Stats,
        tag: IoTag,
        result: Result<(), IoError>,
    ) {
        // A tag the core did not hand out, or a duplicate completion, is a
        // platform bug; ignore it rather than answer twice.
        let Ok(l) = u16::try_from(tag.0) else {
            return;
        };
        if usize::from(l) >= self.lists.len() || !self.lists[l as usize].in_flight {
            return;
        }
        let list = &mut self.lists[l as usize];
        if result.is_err() {
            list.error = true;
            return self.finish(host, stats, l);
        }
        let steps = plan(list.op, list.pages > 0);
        if steps.get(list.phase as usize) == Some(&Phase::Data) {
            let bytes = list.nr_sectors << SECTOR_SHIFT;
            stats.add(
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
            self.submit_phase(host, stats, l);
        } else {
            self.finish(host, stats, l);
        }
    }

    /// Unmaps, frees the window range, answers every request of the
    /// reqlist, and returns everything to the pools.
    fn finish<H: Host>(&mut self, host: &mut H, stats: &mut Stats, l: u16) {
        let list = self.lists[l as usize];
        if list.mapped {
            let n = list.pages as usize;
            for i in 0..n {
                let page = list.kva_first + i as u32;
                self.unmap_ops[i] = GrantUnmapOp {
                    window_page: page,
                    handle: self.handles[page as usize],
                };
            }
            host.unmap_batch(&self.unmap_ops[..n]);
            self.kva.free(list.kva_first, list.pages);
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
            let r = self.reqs[cur as usize];
            self.respond(stats, r.id, r.operation, status);
            self.free_reqs.push(cur);
            cur = r.next;
        }
        self.lists[l as usize] = EMPTY_LIST;
        self.free_lists.push(l);
        if self.barrier == l {
            self.barrier = NONE;
        }
        self.starved = false;
    }

    /// Queues one response on the ring (published by [`Connection::publish`]).
    fn respond(&mut self, stats: &mut Stats, id: u64, operation: u8, status: i16) {
        if self.broken {
            return;
        }
        self.ring.push_response(&BlkifResponse {
            id,
            operation,
            status,
        });
        self.unpublished += 1;
        stats.inc(Stat::ReqsQueuedForCompletion);
        if status != BLKIF_RSP_OKAY {
            stats.inc(Stat::ReqsCompletedWithError);
        }
    }

    /// Makes queued responses visible; notifies the front-end only if its
    /// `rsp_event` asked for it.
    fn publish<H: Host>(&mut self, host: &mut H, stats: &mut Stats) {
        if self.unpublished == 0 || self.broken {
            return;
        }
        if self.ring.publish_responses() {
            host.evtchn_notify(0);
        }
        stats.add(Stat::ReqsCompleted, self.unpublished);
        self.unpublished = 0;
    }
}
