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
//! The instance is the control part of a connection: it builds the
//! [`Queue`]s, each of which serves one ring on its own
//! ([`crate::queue`]), and lends each to the platform
//! ([`Host::lend`]), which runs it in a context of its own, concurrently
//! with the others and with the control part. What a queue reports back
//! (a broken ring, a store gone) reaches the instance through
//! [`Instance::queue_failed`]. To close, the instance recalls every lent
//! queue ([`Host::recall`]); each comes home drained and retired
//! ([`Instance::give_back`]), and only when all are home does the instance
//! release what they shared (rings, channels, the window, the store).
//! What the queues and the control part share while they run is
//! [`Shared`]: per-queue counters and the connection's switches, as
//! atomics.
//!
//! A vbd another back-end process served and left Connected (it died, or
//! handed it over) is taken over instead of attached
//! ([`Instance::take_over`]), its rings resumed from their in-flight
//! journals ([`crate::journal`]); a process that leaves its vbds to the
//! next one hands them over instead of detaching them
//! ([`Instance::hand_over`]).
//!
//! A platform that lends nothing (the test double, the fuzz bodies) is
//! served inline: the instance keeps its queues and hands the platform's
//! calls for one ([`Instance::event`], [`Instance::run`],
//! [`Instance::complete`]) to it, from the one context.

use alloc::string::String;
use alloc::sync::Arc;
use alloc::vec::Vec;

use crate::connect::{self, BackendNodes, ConnectError, FrontendParams, Offer};
use crate::host::{
    ConnEvent, DomId, GrantRef, Granted, Host, IoError, IoTag, JournalOpen, MediumInfo, OpenParams,
    QueueHost, QueueId, RemotePort, XenbusState, PAGE_SIZE,
};
use crate::journal::{JournalId, JournaledRing, TakeoverError};
use crate::negotiate::{self, Terms};
use crate::queue::{Outcome, Queue, RunParams, Shared};
use crate::ring::BackRing;
use crate::stats::{Stat, Stats, Tunable, Tunables};
use crate::units::WindowPage;

/// Why an instance could not be created.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InstanceError {
    /// A fallible allocation failed.
    NoMemory,
}

/// Where a queue of the connection is.
// Boxing the queue would allocate per connection for nothing: a slot only
// changes at connect and at close.
#[allow(clippy::large_enum_variant)]
#[derive(Debug)]
enum Slot {
    /// With the control part: served inline, or back from its context.
    Home(Queue),
    /// Lent to the platform ([`Host::lend`]); `recalled` once
    /// [`Host::recall`] was called for it.
    Lent { recalled: bool },
}

/// How a connection starts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Start {
    /// Negotiated with the front-end now: new rings, new journals.
    Connect,
    /// Taken over from another back-end that served it: its rings resumed
    /// from its journals ([`Instance::take_over`]).
    TakeOver,
}

/// Everything that exists only while connected.
#[derive(Debug)]
struct Connection {
    queues: Vec<Slot>,
}

impl Connection {
    /// Whether every queue is home and idle.
    fn idle(&self) -> bool {
        self.queues.iter().all(|s| match s {
            Slot::Home(q) => q.idle(),
            Slot::Lent { .. } => false,
        })
    }
}

/// One back-end device instance.
#[derive(Debug)]
pub struct Instance {
    be_path: String,
    tunables: Tunables,
    /// Limits, switches and instance-wide counters; the queues' counters
    /// are added by [`Instance::stats`] and folded in at disconnect.
    stats: Stats,
    /// What the queues share with the control part while they run.
    shared: Arc<Shared>,
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
    /// Detaching hands the connection over to the next back-end process
    /// ([`Instance::hand_over`]): nothing is written, journals are kept.
    handing_over: bool,
    last_error: Option<ConnectError>,
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
        let shared = Shared::try_new(tunables.get(Tunable::MaxQueues) as usize)
            .ok_or(InstanceError::NoMemory)?;
        shared.set_no_coalesce(tunables.get(Tunable::NoCoalesceReqs) != 0);
        // The allocations that cannot report failure (alloc's Arc has no
        // fallible constructor on stable Rust): a few words here and each
        // queue's counters in Shared::try_new, once per instance, never on
        // a connection's or a request's path.
        let shared = Arc::new(shared);
        Ok(Instance {
            be_path,
            tunables: *tunables,
            stats,
            shared,
            state: XenbusState::Initialising,
            nodes: None,
            medium: None,
            conn: None,
            generation: 0,
            closing: false,
            frontend_closed: false,
            detaching: false,
            detached: false,
            handing_over: false,
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
    /// over the queues, as they are now (lent queues included).
    pub fn stats(&self) -> Stats {
        let mut s = self.stats.clone();
        self.shared.sum_into(&mut s, self.num_queues());
        s
    }

    /// The limits and switches, with the counters of past connections
    /// only: [`Instance::stats`] without the current queues' counters,
    /// which a reader on another thread adds from [`Instance::shared`].
    pub fn instance_stats(&self) -> Stats {
        self.stats.clone()
    }

    /// Queues of the current connection (0 when not connected).
    pub fn num_queues(&self) -> u32 {
        self.conn.as_ref().map_or(0, |c| c.queues.len() as u32)
    }

    /// How many queues are lent to the platform now.
    pub fn lent_queues(&self) -> u32 {
        self.conn.as_ref().map_or(0, |c| {
            c.queues
                .iter()
                .filter(|s| matches!(s, Slot::Lent { .. }))
                .count() as u32
        })
    }

    /// One queue's counters and gauges (`dev.xbb.N.queue.Q.*`), read now
    /// whether the queue is home or lent.
    pub fn queue_stats(&self, queue: QueueId) -> Option<Stats> {
        if queue >= self.num_queues() {
            return None;
        }
        self.shared.queue_stats(queue)
    }

    /// What the queues share with the control part: a handle another
    /// thread may keep to read the queues' counters while they run.
    pub fn shared(&self) -> &Arc<Shared> {
        &self.shared
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
                self.shared.set_no_coalesce(value != 0);
                true
            }
            _ => false,
        }
    }

    /// Whether no I/O is in flight and nothing waits to be served: every
    /// queue is home and idle.
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
        // Before Closing is published: nothing produced after it is served.
        self.shared.set_stopped(true);
        connect::report_fatal(host, &self.be_path, &err);
        host.note_connection(ConnEvent::Failed { errno: err.errno() });
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

    /// Opens the store `params` names unless it is open; `false` (the
    /// instance failed) when it cannot be.
    fn open_store<H: Host>(&mut self, host: &mut H) -> bool {
        let Some(nodes) = self.nodes.as_ref() else {
            return false;
        };
        if self.medium.is_none() {
            let params = OpenParams {
                path: &nodes.params,
                kind: &nodes.kind,
                writable: nodes.writable,
                direct_io_safe: nodes.direct_io_safe,
            };
            match host.store_open(params) {
                Ok(mut m) => {
                    // The toolstack's mode wins over what the store allows.
                    m.read_only |= !nodes.writable;
                    self.medium = Some(m);
                    self.stats.set(Stat::MediumSectors, m.sectors.0);
                }
                Err(e) => {
                    self.fail(host, ConnectError::Open(e));
                    return false;
                }
            }
        }
        true
    }

    fn open_and_offer<H: Host>(&mut self, host: &mut H) {
        if !self.open_store(host) {
            return;
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
            || connect::hotplug_done(host, &self.be_path)
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
        if self.conn.is_none() {
            return;
        }
        // The queues read it at the start of each pass; nothing else changes.
        self.shared.set_medium_sectors(info.sectors);
        match connect::publish_resize(host, &self.be_path, info.sectors) {
            Ok(()) => self.stats.inc(Stat::Resizes),
            Err(e) => self.last_error = Some(e),
        }
    }

    fn connect<H: Host>(&mut self, host: &mut H) {
        match self.try_connect(host, Start::Connect) {
            Ok(()) => {
                self.stats.reset_counters();
                self.set_state(host, XenbusState::Connected);
                let queues = self.conn.as_ref().map_or(0, |c| c.queues.len() as u32);
                host.note_connection(ConnEvent::Connected { queues });
                self.lend_queues(host);
            }
            Err(e) => self.fail(host, e),
        }
    }

    /// Takes over, instead of [`Instance::attach`], a vbd another back-end
    /// process served and left Connected (it died, or handed it over:
    /// [`Instance::hand_over`]). Reads the toolstack's nodes, opens the
    /// store, reads the front-end's transport parameters as a connect
    /// does, checks that this back-end would publish what the front-end
    /// was told ([`connect::check_published`]: the same tunables and
    /// medium), maps each queue's ring and resumes it from its in-flight
    /// journal ([`crate::journal`], [`Host::journal_open`]), binds a new
    /// channel to the front-end's port, and serves on without writing
    /// `state`: the front-end sees a pause and one event. The requests the
    /// other back-end consumed and never answered are served again, once
    /// each, before new ones. A medium whose size changed meanwhile is
    /// published as a resize. Whatever does not fit (no journal, a journal
    /// of another connection, impossible indices, a front-end that is not
    /// Connected) refuses the takeover as a failed connect is refused: an
    /// `error` node, Closing.
    pub fn take_over<H: Host>(&mut self, host: &mut H) {
        match connect::read_backend_nodes(host, &self.be_path) {
            Ok(nodes) => self.nodes = Some(nodes),
            Err(e) => return self.fail(host, e),
        }
        if !self.open_store(host) {
            return;
        }
        match self.try_connect(host, Start::TakeOver) {
            Ok(()) => {
                self.stats.reset_counters();
                // Connected already: written by the back-end taken over.
                self.state = XenbusState::Connected;
                self.lend_queues(host);
            }
            Err(e) => self.fail(host, e),
        }
    }

    /// The virtual device's number: the last component of the back-end's
    /// path (0 when it is not a number).
    fn devid(&self) -> u32 {
        self.be_path
            .rsplit('/')
            .next()
            .and_then(|d| connect::parse_u32(d.as_bytes()))
            .unwrap_or(0)
    }

    fn try_connect<H: Host>(&mut self, host: &mut H, start: Start) -> Result<(), ConnectError> {
        let (Some(nodes), Some(medium)) = (self.nodes.as_ref(), self.medium) else {
            return Err(ConnectError::Missing { key: "params" });
        };
        if start == Start::TakeOver
            && connect::read_state(host, &nodes.frontend)? != XenbusState::Connected
        {
            return Err(ConnectError::Takeover(TakeoverError::FrontendState));
        }
        let t = &self.tunables;
        let fe = connect::read_frontend(
            host,
            &nodes.frontend,
            t.get(Tunable::MaxRingPageOrder) as u32,
            t.get(Tunable::MaxQueues) as u32,
        )?;
        let terms = negotiate::negotiate(t, &fe, &medium, nodes.discard_enable)?;
        let published = match start {
            Start::TakeOver => Some(connect::check_published(
                host,
                &self.be_path,
                &medium,
                &terms.features,
            )?),
            Start::Connect => None,
        };
        let dom = nodes.frontend_id;
        self.generation = self.generation.wrapping_add(1);
        self.shared.set_medium_sectors(medium.sectors);
        self.shared.set_stopped(false);
        let mut queues: Vec<Slot> = Vec::new();
        queues
            .try_reserve_exact(fe.queues.len())
            .map_err(|_| ConnectError::NoMemory)?;
        host.window_reserve(terms.window)
            .map_err(ConnectError::Grant)?;
        let mut setup = self.build_queues(host, dom, &fe, &terms, &mut queues, start);
        if setup.is_ok() && start == Start::Connect {
            setup = connect::publish_connected(host, &self.be_path, &medium, &terms.features);
        }
        if let Err(e) = setup {
            for slot in queues {
                if let Slot::Home(q) = slot {
                    q.undo(host);
                }
            }
            host.window_release();
            return Err(e);
        }
        if published.is_some_and(|s| s != medium.sectors) {
            // The medium changed size while nobody served it.
            if let Err(e) = connect::publish_resize(host, &self.be_path, medium.sectors) {
                self.last_error = Some(e);
            }
        }
        terms.record(&fe, &medium, &mut self.stats);
        self.closing = false;
        self.frontend_closed = false;
        self.conn = Some(Connection { queues });
        Ok(())
    }

    /// Lends every queue to the platform; a queue it keeps inline gets its
    /// first run here. Either way requests may already be waiting. A queue
    /// that a lending platform could not lend (no thread, no memory for
    /// its tables) would never be served: the connection fails instead of
    /// leaving the front-end waiting on that ring.
    fn lend_queues<H: Host>(&mut self, host: &mut H) {
        let Some(c) = self.conn.as_mut() else {
            return;
        };
        let mut outcome = Outcome::Served;
        let mut stranded = false;
        for slot in c.queues.iter_mut() {
            let Slot::Home(_) = slot else {
                continue;
            };
            let Slot::Home(q) = core::mem::replace(slot, Slot::Lent { recalled: false }) else {
                continue;
            };
            if let Err(mut q) = host.lend(q) {
                match host.inline() {
                    Some(qh) => {
                        let o = q.run(qh);
                        if o != Outcome::Served {
                            outcome = o;
                        }
                    }
                    None => stranded = true,
                }
                *slot = Slot::Home(q);
            }
        }
        if stranded {
            self.fail(host, ConnectError::NoMemory);
            self.begin_close(host);
        } else {
            self.act_on(host, outcome);
        }
    }

    /// Queue by queue: ring (and journal), channel, pools, home in
    /// `queues` (which has room for all). On failure everything of the
    /// failing queue is undone; the ones built stay in `queues` for the
    /// caller to undo.
    fn build_queues<H: Host>(
        &self,
        host: &mut H,
        dom: DomId,
        fe: &FrontendParams,
        terms: &Terms,
        queues: &mut Vec<Slot>,
        start: Start,
    ) -> Result<(), ConnectError> {
        for (i, qp) in fe.queues.iter().enumerate() {
            let q = i as QueueId;
            let id = JournalId {
                dom,
                devid: self.devid(),
                queue: q,
                abi: fe.abi,
                ring_pages: fe.ring_pages,
                ring_refs: qp.ring_refs,
            };
            let ring = Self::map_queue(host, &id, fe.refs(i), start)?;
            let remote = RemotePort {
                dom,
                port: qp.event_channel,
            };
            if let Err(e) = host.evtchn_bind(q, remote) {
                Self::unmap_queue(host, q, ring);
                return Err(ConnectError::Evtchn(e));
            }
            let first = WindowPage(q * terms.per_queue);
            let params = RunParams {
                per_pass: self.tunables.get(Tunable::RequestsPerPass) as u32,
                idle_ms: self.tunables.get(Tunable::PersistentGrantIdleMs),
            };
            match Queue::new(
                q,
                dom,
                self.generation,
                ring,
                start == Start::TakeOver,
                &terms.shape,
                first,
                terms.limits,
                params,
                &self.shared,
            ) {
                // Within the capacity reserved: no allocation.
                Ok(queue) => queues.push(Slot::Home(queue)),
                Err((_, ring)) => {
                    host.evtchn_unbind(q);
                    Self::unmap_queue(host, q, ring);
                    return Err(ConnectError::NoMemory);
                }
            }
        }
        Ok(())
    }

    /// Maps the ring of queue `id.queue` (grants `refs`), handing the
    /// mapping back on any failure, and with it its journal: a new one
    /// when the platform keeps journals and the connection is new, the
    /// one the previous back-end left when it is taken over (then the
    /// ring resumes where that journal says).
    fn map_queue<H: Host>(
        host: &mut H,
        id: &JournalId,
        refs: &[GrantRef],
        start: Start,
    ) -> Result<JournaledRing, ConnectError> {
        let (q, abi, pages) = (id.queue, id.abi, id.ring_pages);
        let mem = host
            .map_ring(
                q,
                Granted {
                    dom: id.dom,
                    grefs: refs,
                },
            )
            .map_err(ConnectError::Grant)?;
        // BackRing::new refuses a mapping shorter than the ring (and a ring
        // of no possible journal size is impossible); check here so that
        // such a mapping is handed back rather than dropped.
        if mem.len() < pages as usize * PAGE_SIZE || id.bytes().is_none() {
            host.unmap_ring(q, mem);
            return Err(ConnectError::Ring);
        }
        if start == Start::TakeOver {
            let Some(journal) = host.journal_open(id, JournalOpen::Existing) else {
                host.unmap_ring(q, mem);
                return Err(ConnectError::Takeover(TakeoverError::NoJournal));
            };
            return match JournaledRing::take_over(mem, journal, id) {
                Ok((ring, _)) => Ok(ring),
                Err((e, mem, journal)) => {
                    host.journal_close(q, journal, false);
                    host.unmap_ring(q, mem);
                    Err(ConnectError::Takeover(e))
                }
            };
        }
        // Cannot fail after the length check above.
        let ring = BackRing::new(mem, abi, pages).map_err(|_| ConnectError::Ring)?;
        let Some(journal) = host.journal_open(id, JournalOpen::Create) else {
            return Ok(JournaledRing::plain(ring));
        };
        JournaledRing::with_new_journal(ring, journal, id).map_err(|(_, ring, journal)| {
            host.journal_close(q, journal, false);
            host.unmap_ring(q, ring.into_mem());
            ConnectError::NoMemory
        })
    }

    /// Hands back what [`Instance::map_queue`] set up: the ring's
    /// mapping, and the journal, removed.
    fn unmap_queue<H: Host>(host: &mut H, q: QueueId, ring: JournaledRing) {
        let (mem, journal) = ring.into_mems();
        host.unmap_ring(q, mem);
        if let Some(j) = journal {
            host.journal_close(q, j, false);
        }
    }

    fn begin_close<H: Host>(&mut self, host: &mut H) {
        self.closing = true;
        // Every queue stops consuming now; each recall follows.
        self.shared.set_stopped(true);
        if let Some(c) = self.conn.as_mut() {
            for (i, slot) in c.queues.iter_mut().enumerate() {
                match slot {
                    Slot::Home(q) => {
                        if let Some(qh) = host.inline() {
                            q.recall(qh);
                        }
                    }
                    Slot::Lent { recalled } => {
                        if !*recalled {
                            *recalled = true;
                            host.recall(i as QueueId);
                        }
                    }
                }
            }
        }
        self.finish_close_if_drained(host);
    }

    /// Releases the connection once every queue is home, drained and
    /// retired, then moves to Closing or Closed (and, when detaching,
    /// closes the store).
    fn finish_close_if_drained<H: Host>(&mut self, host: &mut H) {
        if !self.closing {
            return;
        }
        if let Some(c) = self.conn.as_mut() {
            for slot in c.queues.iter_mut() {
                match slot {
                    Slot::Lent { .. } => return,
                    Slot::Home(q) => {
                        if !q.is_retired() {
                            let Some(qh) = host.inline() else {
                                // Home but not retired and nobody to
                                // retire it: it never served (a platform
                                // that neither lends nor serves inline).
                                continue;
                            };
                            if !q.recall(qh) {
                                return;
                            }
                        }
                    }
                }
            }
        }
        if let Some(c) = self.conn.take() {
            for slot in c.queues {
                if let Slot::Home(q) = slot {
                    let stats = q.release(host, self.handing_over);
                    self.stats.accumulate(&stats);
                }
            }
            host.window_release();
            host.note_connection(ConnEvent::Disconnected);
        }
        let online = self.nodes.as_ref().is_some_and(|n| n.online);
        let was = self.state;
        if (self.detaching || (self.frontend_closed && !online)) && self.medium.take().is_some() {
            host.store_close();
        }
        if self.detaching {
            self.detached = true;
            if !self.handing_over {
                self.set_state(host, XenbusState::Closed);
            }
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

    /// A lent queue comes home, recalled and retired (`Queue::recall`
    /// answered `true` in its context). Once every queue is home the
    /// connection is released. A queue of another connection, or one that
    /// is not retired, is dropped after its ring and channel are released
    /// (a platform bug; the instance stays consistent).
    pub fn give_back<H: Host>(&mut self, host: &mut H, queue: Queue) {
        let id = queue.id();
        let slot = match self.conn.as_mut() {
            Some(c) if queue.generation() == self.generation && queue.is_retired() => {
                c.queues.get_mut(id as usize)
            }
            _ => None,
        };
        match slot {
            Some(slot @ Slot::Lent { .. }) => *slot = Slot::Home(queue),
            _ => {
                let _ = queue.release(host, false);
                return;
            }
        }
        self.finish_close_if_drained(host);
    }

    /// A lent queue reported, from its context, an outcome that ends the
    /// connection (its ring broke, the store went away): the connection
    /// fails and every queue is recalled.
    pub fn queue_failed<H: Host>(&mut self, host: &mut H, outcome: Outcome) {
        if !self.closing {
            self.act_on(host, outcome);
        }
    }

    /// Inline: the front-end kicked `queue`'s event channel
    /// ([`Queue::event`]).
    pub fn event<H: Host>(&mut self, host: &mut H, queue: QueueId) {
        self.serve_inline(host, queue, |q, qh| q.event(qh));
    }

    /// Inline: a run of `queue` was scheduled ([`Queue::run`]).
    pub fn run<H: Host>(&mut self, host: &mut H, queue: QueueId) {
        self.serve_inline(host, queue, |q, qh| q.run(qh));
    }

    /// Inline: a store I/O completed ([`Queue::complete`]); a completion of
    /// an earlier connection is recognised and ignored. A medium that has
    /// gone away (`IoError::Gone`) closes the connection.
    pub fn complete<H: Host>(&mut self, host: &mut H, tag: IoTag, result: Result<(), IoError>) {
        self.serve_inline(host, Queue::of_tag(tag), |q, qh| {
            q.complete(qh, tag, result)
        });
    }

    /// Serves home queue `queue` with `f` through the platform's queue part
    /// ([`Host::inline`]) and acts on the outcome; nothing when the queue
    /// is not home or the platform serves no queue inline.
    fn serve_inline<H: Host>(
        &mut self,
        host: &mut H,
        queue: QueueId,
        f: impl FnOnce(&mut Queue, &mut dyn QueueHost) -> Outcome,
    ) {
        let Some(q) = self.home_queue(queue) else {
            return;
        };
        let Some(qh) = host.inline() else {
            return;
        };
        let outcome = f(q, qh);
        self.after(host, outcome);
    }

    /// After an inline call into a queue: act on its outcome, or finish a
    /// close it may have drained. The usual case (served, not closing) is
    /// decided inline.
    #[inline]
    fn after<H: Host>(&mut self, host: &mut H, outcome: Outcome) {
        if outcome != Outcome::Served || self.closing {
            self.act_after(host, outcome);
        }
    }

    #[cold]
    fn act_after<H: Host>(&mut self, host: &mut H, outcome: Outcome) {
        if self.closing {
            self.finish_close_if_drained(host);
        } else {
            self.act_on(host, outcome);
        }
    }

    fn home_queue(&mut self, queue: QueueId) -> Option<&mut Queue> {
        match self.conn.as_mut()?.queues.get_mut(queue as usize)? {
            Slot::Home(q) => Some(q),
            Slot::Lent { .. } => None,
        }
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

    /// Leaves the vbd to the next back-end process instead of detaching
    /// it (`xbb-serve`'s `SIGTERM`, a service restart): every queue stops
    /// consuming and drains what is in flight, answering it, as for a
    /// detach; then rings, channels, window and store are released — but
    /// nothing is written to XenStore and every queue's journal is kept.
    /// A Connected vbd stays Connected, its front-end's new requests
    /// waiting in the ring for the process that takes it over
    /// ([`Instance::take_over`]); one not connected yet stays as it is.
    /// A connection already closing (the front-end asked, or it failed) is
    /// finished as [`Instance::detach`] finishes it: the front-end waits
    /// for Closed.
    /// The platform delivers completions until [`Instance::is_detached`].
    pub fn hand_over<H: Host>(&mut self, host: &mut H) {
        if self.detached {
            return;
        }
        let live = matches!(
            self.state,
            XenbusState::Initialising | XenbusState::InitWait | XenbusState::Connected
        );
        if live && !self.closing {
            self.handing_over = true;
        }
        self.detach(host);
    }
}
