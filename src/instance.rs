//! One `vbd` back-end: the connection life cycle.
//!
//! An [`Instance`] ties together the pieces of the core for one virtual
//! block device. Its life cycle follows the state diagram of `io/blkif.h`
//! over the `io/xenbus.h` states: open the store once the root file system
//! is mounted, publish the offer, InitWait; on the front-end's Initialised
//! (or Connected, from front-ends that skip a state) read and vet its
//! transport parameters, negotiate ([`crate::negotiate`]), map one ring and
//! bind one event channel per queue (`multi-queue-num-queues`), publish the
//! medium and the features, Connected; on Closing drain every I/O in
//! flight, release, Closing; on Closed, Closed — and an `online` back-end
//! keeps its store for the next front-end.
//!
//! The instance is the control part of a connection: it owns the
//! [`Queue`]s, each of which serves one ring on its own
//! ([`crate::queue`]), and hands the platform's calls for a queue
//! ([`Instance::event`], [`Instance::run`], [`Instance::complete`]) to it.
//! What a queue reports back (a broken ring, a store gone) the instance
//! acts on; it stops the queues and releases them before it changes what
//! they share (the window, the store).

use alloc::string::String;
use alloc::vec::Vec;

use crate::coalesce::ListTag;
use crate::connect::{self, BackendNodes, ConnectError, FrontendParams, Offer};
use crate::host::{
    DomId, GrantRef, Granted, Host, IoError, IoTag, MediumInfo, OpenParams, QueueId, RemotePort,
    XenbusState, PAGE_SIZE,
};
use crate::negotiate::{self, Terms};
use crate::queue::{Outcome, Queue, RunParams};
use crate::ring::BackRing;
use crate::stats::{Stat, Stats, Tunable, Tunables};
use crate::units::WindowPage;

/// Why an instance could not be created.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InstanceError {
    /// A fallible allocation failed.
    NoMemory,
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
                s.accumulate(q.stats());
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
        c.queues.get(queue as usize).map(Queue::stats)
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
                    self.stats.set(Stat::MediumSectors, m.sectors.0);
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
        self.stats.set(Stat::MediumSectors, info.sectors.0);
        let Some(c) = self.conn.as_mut() else {
            return;
        };
        for q in &mut c.queues {
            q.set_medium_sectors(info.sectors);
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
        let t = &self.tunables;
        let fe = connect::read_frontend(
            host,
            &nodes.frontend,
            t.get(Tunable::MaxRingPageOrder) as u32,
            t.get(Tunable::MaxQueues) as u32,
        )?;
        let terms = negotiate::negotiate(t, &fe, &medium, nodes.discard_enable)?;
        let dom = nodes.frontend_id;
        self.generation = self.generation.wrapping_add(1);
        let mut queues: Vec<Queue> = Vec::new();
        queues
            .try_reserve_exact(fe.queues.len())
            .map_err(|_| ConnectError::NoMemory)?;
        host.window_reserve(terms.window)
            .map_err(ConnectError::Grant)?;
        let mut setup = self.build_queues(host, dom, &fe, &terms, &mut queues);
        if setup.is_ok() {
            setup = connect::publish_connected(host, &self.be_path, &medium, &terms.features);
        }
        if let Err(e) = setup {
            for q in queues {
                q.undo(host);
            }
            host.window_release();
            return Err(e);
        }
        terms.record(&fe, &medium, &mut self.stats);
        self.closing = false;
        self.frontend_closed = false;
        self.conn = Some(Connection { queues });
        Ok(())
    }

    /// Queue by queue: ring, channel, pools, into `queues` (which has room
    /// for all). On failure everything of the failing queue is undone; the
    /// ones built stay in `queues` for the caller to undo.
    fn build_queues<H: Host>(
        &self,
        host: &mut H,
        dom: DomId,
        fe: &FrontendParams,
        terms: &Terms,
        queues: &mut Vec<Queue>,
    ) -> Result<(), ConnectError> {
        for (i, qp) in fe.queues.iter().enumerate() {
            let q = i as QueueId;
            let ring = Self::map_queue(host, q, dom, fe.refs(i), fe.abi, fe.ring_pages)?;
            let remote = RemotePort {
                dom,
                port: qp.event_channel,
            };
            if let Err(e) = host.evtchn_bind(q, remote) {
                host.unmap_ring(q, ring.into_mem());
                return Err(ConnectError::Evtchn(e));
            }
            let first = WindowPage(q * terms.per_queue);
            match Queue::new(
                q,
                dom,
                self.generation,
                ring,
                &terms.shape,
                first,
                terms.limits,
            ) {
                // Within the capacity reserved: no allocation.
                Ok(queue) => queues.push(queue),
                Err((_, ring)) => {
                    host.evtchn_unbind(q);
                    host.unmap_ring(q, ring.into_mem());
                    return Err(ConnectError::NoMemory);
                }
            }
        }
        Ok(())
    }

    /// Maps one queue's ring, handing the mapping back on any failure.
    fn map_queue<H: Host>(
        host: &mut H,
        q: QueueId,
        dom: DomId,
        refs: &[GrantRef],
        abi: crate::abi::Abi,
        pages: u32,
    ) -> Result<BackRing, ConnectError> {
        let mem = host
            .map_ring(q, Granted { dom, grefs: refs })
            .map_err(ConnectError::Grant)?;
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
                q.close(host);
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
            for q in c.queues {
                let stats = q.release(host);
                self.stats.accumulate(&stats);
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
    /// re-enables the channel ("late EOI"), later and later while kicks
    /// keep finding nothing to do ([`Queue::note_kick`]).
    pub fn event<H: Host>(&mut self, host: &mut H, queue: QueueId) {
        let before = self.queue_stats(queue).map(|s| s.get(Stat::ReqsReceived));
        self.run(host, queue);
        let delay = match (before, self.queue_mut(queue)) {
            (Some(before), Some(q)) => q.note_kick(before),
            _ => 0,
        };
        host.evtchn_eoi(queue, delay);
    }

    /// A run of `queue` was scheduled (or its event fired): consumes
    /// requests, at most `hw.xbb.requests_per_pass` of them before
    /// yielding.
    pub fn run<H: Host>(&mut self, host: &mut H, queue: QueueId) {
        if self.closing {
            return;
        }
        let params = self.run_params();
        let Some(q) = self.queue_mut(queue) else {
            return;
        };
        let outcome = q.run(host, &params);
        self.act_on(host, outcome);
    }

    /// A store I/O completed: its queue advances its reqlist, answers the
    /// front-end and restarts whatever waited for the resources it held. A
    /// medium that has gone away (`IoError::Gone`) closes the connection.
    pub fn complete<H: Host>(&mut self, host: &mut H, tag: IoTag, result: Result<(), IoError>) {
        let t = ListTag::decode(tag);
        if t.generation != self.generation {
            return;
        }
        let params = self.run_params();
        let Some(q) = self.queue_mut(t.queue) else {
            return;
        };
        let (resume, outcome) = q.complete(host, t.list, result, &params);
        if outcome == Outcome::StoreGone && !self.closing {
            self.act_on(host, outcome);
        } else if self.closing {
            self.finish_close_if_drained(host);
        } else if resume {
            self.run(host, t.queue);
        }
    }

    /// What the connection's switches are for a pass of a queue.
    fn run_params(&self) -> RunParams {
        RunParams {
            per_pass: self.tunables.get(Tunable::RequestsPerPass) as u32,
            idle_ms: self.tunables.get(Tunable::PersistentGrantIdleMs),
            coalesce: self.stats.get(Stat::NoCoalesceReqs) == 0,
        }
    }

    fn queue_mut(&mut self, queue: QueueId) -> Option<&mut Queue> {
        self.conn
            .as_mut()
            .and_then(|c| c.queues.get_mut(queue as usize))
    }

    /// Fails the connection when a queue says it must end.
    fn act_on<H: Host>(&mut self, host: &mut H, outcome: Outcome) {
        let err = match outcome {
            Outcome::Served => return,
            Outcome::RingBroken => ConnectError::Ring,
            Outcome::StoreGone => ConnectError::StoreGone,
        };
        self.fail(host, err);
        self.begin_close(host);
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
