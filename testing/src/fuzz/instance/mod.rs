//! `fuzz_instance`: a whole [`Instance`] over the fake host, driven by a
//! hostile front-end, a toolstack and a faulty platform at once.
//!
//! Where `fuzz_ring` holds the connection still and plays with one ring,
//! this body plays the whole life of a `vbd`: the front-end writes any of
//! its XenStore nodes (`io/blkif.h`, "Front-end Request Transport
//! Parameters": ring references, ring order, event channels, protocol,
//! `multi-queue-num-queues` and the `queue-N/` directories) and moves
//! through the states of `io/xenbus.h`; it lays out up to four rings and
//! fills their slots (`io/ring.h`) with requests or raw bytes, moves
//! `req_prod` anywhere and kicks any queue; the platform completes store
//! I/O in any order with any result, fails grant maps, ring maps, binds,
//! window reservations, store opens and XenStore reads and commits, runs
//! deferred passes, moves the clock; the toolstack resizes the medium,
//! reports the hotplug script, detaches the device and attaches it again.
//!
//! After every operation the body checks the contract:
//!
//! - nothing panics, and the fake host sees no contract violation
//!   (strict: it panics at the first one);
//! - every response answers a request the back-end consumed from that
//!   ring, once, with the request's operation (an indirect request's
//!   `indirect_op`) and a status `io/blkif.h` defines;
//! - every request consumed is answered once the instance is idle, and
//!   when its connection is released — unless the front-end broke the
//!   ring (an impossible `req_prod`), after which the back-end answers
//!   nothing more;
//! - without a connection nothing is held: no grant, ring or window
//!   mapped, no channel bound; with one, exactly one ring and one channel
//!   per queue;
//! - no allocation on the I/O path: while connected, `Instance::event`,
//!   `run` and `complete` allocate nothing (counted when the binary
//!   installs [`crate::alloc::Counting`]; the fake's own bookkeeping is
//!   not counted);
//! - at the end the front-end closes, the instance detaches, and every
//!   grant, window, ring, channel and the store are given back.
//!
//! Bounded: at most [`MAX_OPS`] operations per input and bounded settling;
//! an instance that does not settle is a finding.

mod script;

use xbb::abi::{
    Abi, BlkifRequest, RequestBody, BLKIF_MAX_INDIRECT_PAGES_PER_REQUEST, BLKIF_OP_DISCARD,
    BLKIF_OP_FLUSH_DISKCACHE, BLKIF_OP_INDIRECT, BLKIF_OP_READ, BLKIF_OP_WRITE,
    BLKIF_OP_WRITE_BARRIER, BLKIF_RSP_EOPNOTSUPP, BLKIF_RSP_ERROR, BLKIF_RSP_OKAY,
    XEN_IO_PROTO_ABI_X86_32, XEN_IO_PROTO_ABI_X86_64,
};
use xbb::connect::ConnectError;
use xbb::host::{GrantRef, IoError, MediumInfo, QueueId, XenStore, XenbusState, XsTxn, PAGE_SIZE};
use xbb::instance::Instance;
use xbb::keys;
use xbb::ring::FrontRing;
use xbb::shmem::SharedMem;
use xbb::stats::{Stat, Tunable, Tunables};
use xbb::units::Sectors;

use super::builder::Body;
use super::front::*;
use super::input::Input;
use crate::alloc::allocations_in;
use crate::host::{FakeConfig, FakeHost, BE_PATH, FE_PATH};

pub(crate) use script::MAX_REQS;
use script::*;
pub use script::{Completion, FeKey, FeValue, InstanceConfig, InstanceInput, InstanceScript};

/// Front-end rings (and queues) the fuzzer lays out at most.
pub const MAX_RINGS: usize = 4;
/// Granted data pages of the fuzzed guest; the first has grant
/// reference [`FIRST_DATA_GREF`], the others follow.
pub const DATA_PAGES: usize = super::front::DATA_PAGES;
/// The grant reference of data page 0 (the data pages are granted before
/// anything else).
pub const FIRST_DATA_GREF: GrantRef = 8;
/// Bound on the operations of one input.
pub const MAX_OPS: usize = 4096;

/// The shared memory of the fuzzed rings, reused across inputs (see
/// [`RingsMemory`]).
pub type InstanceMemory = RingsMemory<MAX_RINGS>;

/// What one [`fuzz_instance_in`] input did, so seeds can check they
/// reached what they aim at.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct InstanceReport {
    /// Connections made.
    pub connects: u64,
    /// The most queues one connection had.
    pub max_queues: u32,
    /// Responses with `BLKIF_RSP_OKAY`.
    pub okay: u64,
    /// Responses with `BLKIF_RSP_ERROR`.
    pub error: u64,
    /// Responses with `BLKIF_RSP_EOPNOTSUPP`.
    pub not_supported: u64,
    /// Responses checked against the request they answer.
    pub matched: u64,
    /// Times every request consumed was found answered (an idle instance
    /// or a released connection with requests behind it).
    pub all_answered: u64,
    /// Store I/Os submitted (flushes included).
    pub ios: u64,
    /// Errors the back-end reported in its `error` node.
    pub fatals: u64,
    /// A connection broke the ring protocol.
    pub ring_broken: bool,
    /// Detaches finished (before the final one).
    pub detaches: u32,
    /// Instance calls of the I/O path whose allocations were counted
    /// (zero without [`crate::alloc::Counting`]: nothing to count).
    pub alloc_checked: u64,
    /// Resizes the instance republished while connected.
    pub resizes: u64,
}

report_totals! { InstanceReport:
    sum connects okay error not_supported matched all_answered ios fatals detaches alloc_checked resizes;
    max max_queues;
    any ring_broken
}

/// How far responses on a front ring can be checked.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mode {
    /// Every request the back-end consumed is known: a response must
    /// answer one of them.
    Strict,
    /// Not known (a connection made and ended within one call, or whose
    /// queues' last requests cannot be told apart): a response's id must
    /// only be one this ring's slots held.
    Lossy,
    /// The two ends disagree on where the ring stands or on its layout (a
    /// ring the back-end took over without the front-end re-initialising
    /// it; a front-end that laid out its ring in one ABI and wrote the
    /// other to `protocol`): the front-end cannot read what the back-end
    /// writes; nothing is checked.
    Blind,
}

/// One front-end ring and what the back-end owes on it.
struct Ring {
    slots: ShadowRing,
    /// Requests consumed and not answered: (id, the response's
    /// operation).
    outstanding: Vec<(u64, u8)>,
    mode: Mode,
    /// Re-initialised since its last connection.
    fresh: bool,
}

impl Ring {
    fn new() -> Ring {
        Ring {
            slots: ShadowRing::new(None, Abi::X86_64, 1),
            outstanding: Vec::new(),
            mode: Mode::Lossy,
            fresh: true,
        }
    }

    /// The ring is laid out afresh, `pages` pages in `front`: cursor,
    /// shadow and debts start over.
    fn restart(&mut self, front: FrontRing, pages: u32) {
        let r = &mut self.slots;
        r.size = front.size();
        r.abi = front.abi();
        r.pages = pages;
        r.front = Some(front);
        r.cursor = 0;
        for sh in &mut r.shadow {
            sh.fill(0);
        }
        self.outstanding.clear();
        self.fresh = true;
    }
}

/// The connection the driver last saw.
struct Conn {
    /// `host.connects` when it was seen.
    connects_at: u64,
    /// The ring slot each queue mapped.
    rings: Vec<usize>,
    /// The requests of each queue accounted for.
    seen: Vec<u64>,
    abi: Abi,
    /// Every queue's consumption is known.
    strict: bool,
}

/// The hostile front-end, the toolstack and the platform, and their
/// bookkeeping.
struct Driver<'m> {
    cfg: InstanceConfig,
    mem: &'m mut InstanceMemory,
    report: InstanceReport,
    host: FakeHost,
    inst: Instance,
    rings: Vec<Ring>,
    conn: Option<Conn>,
    /// `host.connects` and `host.fatals` as last seen.
    connects_seen: u64,
    fatals_seen: u64,
    /// The connection (seen or not) broke the ring protocol.
    broken: bool,
    pushes: u64,
    medium_sectors: u64,
    /// `XBB_FUZZ_TRACE` is set: every operation and response is printed
    /// (to read a crash's input).
    trace: bool,
}

/// Runs one [`fuzz_instance`] input with ring memory of its own (leaking
/// 64 KiB). Fuzzers running many inputs use [`fuzz_instance_in`].
pub fn fuzz_instance(data: &[u8]) -> InstanceReport {
    fuzz_instance_in(&mut InstanceMemory::new().expect("ring memory"), data)
}

/// Plays `data` against a whole [`Instance`] over the fake host.
///
/// The input is an [`InstanceConfig`] header followed by operations (see
/// [`InstanceScript`]); after each, the contract of this module's
/// documentation is checked.
pub fn fuzz_instance_in(mem: &mut InstanceMemory, data: &[u8]) -> InstanceReport {
    let mut r = Input::new(data);
    let cfg = InstanceConfig::decode(&mut r);
    let mut d = Driver::new(cfg, mem);
    let queues = FIRST_QUEUES[usize::from(cfg.queues & 3)];
    d.layout(queues, cfg.order, cfg.persistent, false);
    if cfg.connect_at_attach {
        set_front_state(&mut d.host, XenbusState::Initialised as u8);
    }
    d.call(|i, h| i.attach(h));
    d.after_op();
    let mut n = 0;
    while !r.is_empty() && n < MAX_OPS {
        d.op(&mut r);
        d.after_op();
        n += 1;
    }
    d.teardown();
    d.give_back_memory();
    d.report.ios = d.host.submitted;
    d.report.fatals = d.host.fatals;
    d.report
}

/// The tunables a header selects.
pub(crate) fn tunables(cfg: &InstanceConfig) -> Tunables {
    let mut t = Tunables::default();
    let sel = |table: &[u64; 4], s: u8| table[usize::from(s & 3)];
    for (tunable, v) in [
        (Tunable::RequestsPerPass, sel(&RPP, cfg.requests_per_pass)),
        (Tunable::MaxRequests, sel(&MAX_REQS, cfg.max_requests)),
        (Tunable::KvaPages, sel(&KVA, cfg.kva_pages)),
        (Tunable::MaxRequestSize, sel(&MAX_RS, cfg.max_request_size)),
        (Tunable::MaxQueues, sel(&MAX_QUEUES, cfg.max_queues)),
        (
            Tunable::MaxRingPageOrder,
            sel(&MAX_ORDER, cfg.max_ring_order),
        ),
        (
            Tunable::MaxPersistentGrants,
            sel(&MAX_PERSISTENT, cfg.max_persistent_grants),
        ),
        (
            Tunable::MaxIndirectSegments,
            sel(&MAX_INDIRECT, cfg.max_indirect_segments),
        ),
        (Tunable::NoCoalesceReqs, u64::from(cfg.no_coalesce)),
    ] {
        t.set(tunable, v).expect("tunable in range");
    }
    t
}

/// The medium a header describes.
pub(crate) fn medium(cfg: &InstanceConfig) -> MediumInfo {
    let sector_size = if cfg.sector_4k { 4096 } else { 512 };
    MediumInfo {
        sectors: Sectors((u64::from(cfg.medium) + 1) * 8),
        sector_size,
        physical_sector_size: sector_size,
        read_only: cfg.read_only_medium,
        can_flush: cfg.can_flush,
        can_discard: cfg.can_discard,
        can_secure_discard: cfg.can_discard && cfg.secure_discard,
        is_device: false,
        ..MediumInfo::default()
    }
}

impl<'m> Driver<'m> {
    fn new(cfg: InstanceConfig, mem: &'m mut InstanceMemory) -> Driver<'m> {
        let m = medium(&cfg);
        let max_reqs = MAX_REQS[usize::from(cfg.max_requests & 3)] as usize;
        let mut host = FakeHost::new(FakeConfig {
            medium: m,
            max_grants: DATA_PAGES,
            // One I/O per reqlist at a time, at most one reqlist per
            // request, per queue.
            max_in_flight: max_reqs * MAX_RINGS,
            // Four queues of the largest automatic share (64 MiB) and a
            // full persistent-grant cache each.
            max_window_pages: 1 << 17,
            ..FakeConfig::default()
        });
        host.root = !cfg.root_later;
        host.hotplug_gate = cfg.hotplug_gate;
        let first = grant_data_pages(&mut host, 0);
        debug_assert_eq!(first, FIRST_DATA_GREF);
        host.standard_nodes(!cfg.toolstack_read_only, cfg.online);
        if cfg.hotplug_gate {
            host.be_set(keys::SCRIPT, "/etc/xen/scripts/block");
        }
        if cfg.discard_disabled {
            host.be_set(keys::DISCARD_ENABLE, "0");
        }
        Driver {
            cfg,
            mem,
            report: InstanceReport::default(),
            host,
            inst: Instance::new(BE_PATH, &tunables(&cfg)).expect("instance"),
            rings: (0..MAX_RINGS).map(|_| Ring::new()).collect(),
            conn: None,
            connects_seen: 0,
            fatals_seen: 0,
            broken: false,
            pushes: 0,
            medium_sectors: m.sectors.0,
            trace: std::env::var_os("XBB_FUZZ_TRACE").is_some(),
        }
    }

    // --- Calls into the instance -------------------------------------------

    /// Calls the instance; on the I/O path of a connection (the call
    /// leaves it connected as it found it), counts allocations, which
    /// must be none. Then accounts for what the back-end consumed.
    fn call_io(&mut self, f: impl FnOnce(&mut Instance, &mut FakeHost)) {
        let before = self.io_path_state();
        let ((), allocs) = allocations_in(|| f(&mut self.inst, &mut self.host));
        if before.is_some() && before == self.io_path_state() {
            self.report.alloc_checked += 1;
            assert_eq!(allocs, 0, "allocation on the I/O path");
        }
        self.sync();
    }

    /// What must not change for a call to count as the I/O path.
    fn io_path_state(&self) -> Option<(u32, u64, u64)> {
        (self.inst.state() == XenbusState::Connected && self.inst.num_queues() > 0).then_some((
            self.inst.num_queues(),
            self.host.connects,
            self.host.fatals,
        ))
    }

    /// A call of the control path.
    fn call(&mut self, f: impl FnOnce(&mut Instance, &mut FakeHost)) {
        f(&mut self.inst, &mut self.host);
        self.sync();
    }

    fn complete_at(&mut self, idx: usize, result: Result<(), IoError>) {
        self.call_io(|i, h| {
            h.complete_at(i, idx, result);
        });
    }
}

impl Settle for Driver<'_> {
    fn host(&self) -> &FakeHost {
        &self.host
    }

    fn complete_oldest(&mut self, result: Result<(), IoError>) {
        self.complete_at(0, result);
    }

    /// Honours every deferred run asked for, and those they ask for.
    fn run_scheduled(&mut self) {
        for _ in 0..MAX_SETTLE_STEPS {
            if self.host.schedule_runs == 0 {
                return;
            }
            self.host.schedule_runs = 0;
            let due = std::mem::take(&mut self.host.scheduled_queues);
            for q in (0..64).filter(|q| due & 1 << q != 0) {
                self.call_io(|i, h| i.run(h, q));
            }
        }
        panic!("deferred runs never end");
    }

    /// Takes every published response of every ring and checks it.
    fn drain(&mut self) {
        if self.host.fatals != self.fatals_seen {
            self.fatals_seen = self.host.fatals;
            if self.inst.last_error() == Some(ConnectError::Ring) {
                self.broken = true;
                self.report.ring_broken = true;
            }
        }
        for s in 0..MAX_RINGS {
            self.drain_ring(s);
        }
    }
}

impl Driver<'_> {
    // --- Accounting ---------------------------------------------------------

    /// Accounts for the requests queue `q` consumed up to `received`: the
    /// slots from where it stood, as the front-end last wrote them.
    fn account(&mut self, q: usize, received: u64) {
        let Some(c) = self.conn.as_mut() else {
            return;
        };
        let slot = c.rings[q];
        let from = c.seen[q];
        c.seen[q] = received.max(from);
        let abi = c.abi;
        let ring = &mut self.rings[slot];
        if ring.mode != Mode::Strict {
            return;
        }
        for k in from..received {
            // The connection started at index 0 (the ring was fresh).
            let s = ring.slots.slot_of(k as u32);
            let req = abi.decode_request(&ring.slots.shadow[s][..abi.request_size()]);
            let op = match req.body {
                RequestBody::Indirect { indirect_op, .. } if req.operation == BLKIF_OP_INDIRECT => {
                    indirect_op
                }
                _ => req.operation,
            };
            ring.outstanding.push((req.id, op));
        }
    }

    /// Follows the connection: a new one, what its queues consumed, its
    /// release.
    fn sync(&mut self) {
        let connects = self.host.connects;
        let nq = self.inst.num_queues() as usize;
        if let Some(c) = self.conn.as_ref() {
            let replaced = connects != c.connects_at;
            if !replaced && nq == c.rings.len() {
                for q in 0..nq {
                    if let Some(st) = self.inst.queue_stats(q as QueueId) {
                        let received = st.get(Stat::ReqsReceived);
                        self.account(q, received);
                    }
                }
                return;
            }
            // Released since the last look (and maybe replaced). One
            // queue's last consumption is the instance's total (its
            // counters are folded in at release); several cannot be told
            // apart.
            let seen: u64 = c.seen.iter().sum();
            let single = c.rings.len() == 1;
            let total = self.inst.stats().get(Stat::ReqsReceived);
            if !replaced && single {
                self.account(0, total);
            } else if replaced || total != seen {
                self.lose_connection();
            }
            self.conn = None;
        }
        if connects != self.connects_seen {
            let several = connects - self.connects_seen > 1;
            self.connects_seen = connects;
            if nq > 0 {
                self.start_connection(connects, nq, several);
            } else {
                // Made and ended within one call: nothing of it is known
                // but the ABI its rings had (the front-end's nodes did not
                // change within the call). A ring laid out for another ABI
                // holds responses the front-end cannot read.
                let abi = self.protocol_abi();
                for r in &mut self.rings {
                    r.mode = if r.fresh && Some(r.slots.abi) == abi {
                        Mode::Lossy
                    } else {
                        Mode::Blind
                    };
                    r.fresh = false;
                }
            }
        }
    }

    /// The connection's consumption cannot be known: its rings go lossy.
    fn lose_connection(&mut self) {
        if let Some(c) = self.conn.as_ref() {
            for &s in &c.rings {
                let r = &mut self.rings[s];
                if r.mode == Mode::Strict {
                    r.mode = Mode::Lossy;
                }
            }
        }
    }

    /// The ABI a connection made now would have: the front-end's
    /// `protocol` node's, the native one without it; `None` for a protocol
    /// the back-end refuses.
    fn protocol_abi(&self) -> Option<Abi> {
        match self
            .host
            .xs
            .get_bytes(&format!("{FE_PATH}/{}", keys::PROTOCOL))
        {
            Some(p) => Abi::from_protocol(p),
            None => Some(Abi::native()),
        }
    }

    fn start_connection(&mut self, connects: u64, nq: usize, several: bool) {
        self.report.connects = connects;
        self.report.max_queues = self.report.max_queues.max(nq as u32);
        self.broken = false;
        let abi = self
            .protocol_abi()
            .expect("connected with a known protocol");
        let rings: Vec<usize> = (0..nq)
            .map(|q| {
                self.host
                    .ring_slot(q as QueueId)
                    .expect("a connected queue maps a ring")
            })
            .collect();
        let mut strict = !several;
        for &s in &rings {
            let r = &mut self.rings[s];
            let same_abi = r.slots.abi == abi;
            let ok = strict && r.fresh && same_abi && r.slots.front.is_some();
            r.mode = match () {
                _ if !same_abi || !r.fresh => Mode::Blind,
                _ if ok => Mode::Strict,
                _ => Mode::Lossy,
            };
            r.outstanding.clear();
            r.fresh = false;
            strict &= ok;
        }
        self.conn = Some(Conn {
            connects_at: connects,
            seen: vec![0; nq],
            rings,
            abi,
            strict,
        });
        for q in 0..nq {
            if let Some(st) = self.inst.queue_stats(q as QueueId) {
                let received = st.get(Stat::ReqsReceived);
                self.account(q, received);
            }
        }
    }

    fn drain_ring(&mut self, s: usize) {
        let r = &mut self.rings[s];
        for _ in 0..r.slots.size {
            let Some(front) = r.slots.front.as_mut() else {
                return;
            };
            let index = front.rsp_cons();
            let rsp = match front.take_response() {
                Ok(Some(rsp)) => rsp,
                Ok(None) => break,
                Err(e) => {
                    // More responses than requests could be owed.
                    assert!(r.mode != Mode::Strict, "ring {s}: {e:?}");
                    break;
                }
            };
            r.slots.took_response(index, &rsp);
            if self.trace {
                eprintln!("  ring {s} index {index}: {rsp:x?} ({:?})", r.mode);
            }
            match rsp.status {
                BLKIF_RSP_OKAY => self.report.okay += 1,
                BLKIF_RSP_ERROR => self.report.error += 1,
                BLKIF_RSP_EOPNOTSUPP => self.report.not_supported += 1,
                // A lossy ring may be read at indices the back-end did not
                // write (it took the ring over where it stood).
                other => assert!(
                    r.mode != Mode::Strict,
                    "ring {s}: response {:#x} with status {other}",
                    rsp.id
                ),
            }
            match r.mode {
                Mode::Strict => {
                    let at = r
                        .outstanding
                        .iter()
                        .position(|&(id, op)| id == rsp.id && op == rsp.operation);
                    let Some(at) = at else {
                        panic!(
                            "ring {s}: response {:#x} (op {}) answers no request consumed \
                             and unanswered: {:x?}",
                            rsp.id, rsp.operation, r.outstanding
                        );
                    };
                    r.outstanding.swap_remove(at);
                    self.report.matched += 1;
                }
                Mode::Lossy => assert!(
                    r.slots.ids.contains(&rsp.id),
                    "ring {s}: response to an id no slot held: {:#x}",
                    rsp.id
                ),
                Mode::Blind => {}
            }
        }
    }

    /// The checks after every operation.
    fn after_op(&mut self) {
        self.drain();
        let nq = self.inst.num_queues() as usize;
        let h = &self.host;
        if nq == 0 {
            assert_nothing_held(h, "without a connection");
        } else {
            assert_eq!(h.rings_mapped(), nq, "one ring per queue");
            assert_eq!(h.channels_bound(), nq, "one channel per queue");
            assert!(h.window_reserved(), "a connection without a window");
        }
        // Answered: an idle instance owes nothing; a released connection
        // neither.
        let idle = self.inst.is_idle() && self.host.pending() == 0;
        if nq > 0 && idle && !self.broken && self.conn.as_ref().is_some_and(|c| c.strict) {
            let c = self.conn.as_ref().expect("connection");
            for &s in &c.rings {
                let r = &self.rings[s];
                assert!(
                    r.outstanding.is_empty(),
                    "idle with requests of ring {s} unanswered: {:x?}",
                    r.outstanding
                );
            }
            self.report.all_answered += 1;
        }
        if nq == 0 {
            let released = self
                .rings
                .iter()
                .filter(|r| r.mode == Mode::Strict && !r.fresh);
            let mut any = false;
            for r in released {
                any = true;
                assert!(
                    self.broken || r.outstanding.is_empty(),
                    "a connection was released with requests unanswered: {:x?}",
                    r.outstanding
                );
            }
            if any {
                self.report.all_answered += 1;
            }
            // The next connection starts on fresh rings, as a front-end
            // re-initialises them before it connects again.
            for s in 0..MAX_RINGS {
                if !self.rings[s].fresh {
                    self.reinit(s);
                }
            }
        }
        if self.inst.is_detached() {
            assert!(!self.host.store_is_open(), "detached with the store open");
        }
    }

    // --- The front-end ----------------------------------------------------

    /// Re-initialises ring `s` as a front-end does before it connects
    /// (when no queue maps it): zeroes its pages and indices; its nodes
    /// stay as they are.
    fn reinit(&mut self, s: usize) {
        if self.host.slot_mapped(s) {
            return;
        }
        let r = &mut self.rings[s];
        let Some(front) = r.slots.front.take() else {
            return;
        };
        let (abi, pages) = (r.slots.abi, r.slots.pages);
        let mem = front.into_mem();
        for page in 0..pages as usize {
            mem.write(page * PAGE_SIZE, &[0u8; PAGE_SIZE]);
        }
        r.restart(FrontRing::init(mem, abi, pages).expect("ring init"), pages);
    }

    fn offer(
        &mut self,
        s: usize,
        front: SharedMem,
        back: SharedMem,
        abi: Abi,
        pages: u32,
        legacy: bool,
    ) {
        let f = if legacy {
            self.host.offer_ring(front, back, abi, pages)
        } else {
            self.host
                .offer_queue_ring(s as QueueId, front, back, abi, pages)
        };
        self.rings[s].restart(f, pages);
    }

    /// The front-end (re)announces `queues` rings (0: one with the legacy
    /// keys) of `order`: removes its transport nodes, re-initialises and
    /// offers every ring no queue maps, writes the rest.
    fn layout(&mut self, queues: u8, order: u8, persistent: bool, flip_abi: bool) {
        let n = usize::from(queues % (MAX_RINGS as u8 + 1));
        let pages = 1u32 << (u32::from(order) % (MAX_FUZZ_ORDER + 1));
        let abi = match self.cfg.x86_64 != flip_abi {
            true => Abi::X86_64,
            false => Abi::X86_32,
        };
        let nodes = [
            keys::RING_REF.to_string(),
            keys::RING_PAGE_ORDER.to_string(),
            keys::NUM_RING_PAGES.to_string(),
            keys::EVENT_CHANNEL.to_string(),
            keys::PROTOCOL.to_string(),
            keys::FEATURE_PERSISTENT.to_string(),
            keys::MULTI_QUEUE_NUM_QUEUES.to_string(),
        ]
        .into_iter()
        .chain((0..32).map(|i| format!("{}{i}", keys::RING_REF)))
        .chain((0..MAX_RINGS).map(|q| format!("{}{q}", keys::QUEUE_DIR_PREFIX)));
        for k in nodes {
            let _ = self
                .host
                .xs
                .xs_remove(XsTxn::NONE, &format!("{FE_PATH}/{k}"));
        }
        for s in 0..n.max(1) {
            let legacy = n == 0;
            let (front, back) = match self.rings[s].slots.front.take() {
                None => self.mem.take(s),
                Some(front) => match self.host.take_queue_ring(s as QueueId) {
                    Some(back) => (front.into_mem(), back),
                    None => {
                        // Mapped by a queue: its nodes are written again,
                        // its memory left alone.
                        self.rings[s].slots.front = Some(front);
                        self.rewrite_nodes(s, legacy);
                        continue;
                    }
                },
            };
            self.offer(s, front, back, abi, pages, legacy);
        }
        if n > 0 {
            let v = n.to_string();
            self.host.fe_set(keys::MULTI_QUEUE_NUM_QUEUES, &v);
        }
        if persistent {
            self.host.fe_set(keys::FEATURE_PERSISTENT, "1");
        }
    }

    /// Writes a mapped ring's nodes again, as offering it did.
    fn rewrite_nodes(&mut self, s: usize, legacy: bool) {
        let grefs = self.host.queue_ring_grefs(s as QueueId).to_vec();
        let dir = if legacy {
            String::new()
        } else {
            format!("{}{s}/", keys::QUEUE_DIR_PREFIX)
        };
        if legacy && grefs.len() == 1 {
            self.host.fe_set(keys::RING_REF, &grefs[0].to_string());
        } else {
            let order = grefs.len().trailing_zeros().to_string();
            self.host.fe_set(keys::RING_PAGE_ORDER, &order);
            for (i, g) in grefs.iter().enumerate() {
                self.host
                    .fe_set(&format!("{dir}{}{i}", keys::RING_REF), &g.to_string());
            }
        }
        let port = self.host.queue_port(s as QueueId).to_string();
        self.host
            .fe_set(&format!("{dir}{}", keys::EVENT_CHANNEL), &port);
        let proto = match self.rings[s].slots.abi {
            Abi::X86_32 => XEN_IO_PROTO_ABI_X86_32,
            Abi::X86_64 => XEN_IO_PROTO_ABI_X86_64,
        };
        self.host.fe_set(keys::PROTOCOL, proto);
    }

    /// The node an [`Op::XsWrite`] or [`Op::XsRemove`] names.
    fn node(&self, key: u8, queue: u8, arg: u8) -> String {
        let dir = if queue < MAX_RINGS as u8 {
            format!("{}{queue}/", keys::QUEUE_DIR_PREFIX)
        } else {
            String::new()
        };
        let k = match key % 10 {
            0 => format!("{dir}{}", keys::RING_REF),
            1 => format!("{dir}{}{}", keys::RING_REF, arg % 32),
            2 => keys::RING_PAGE_ORDER.to_string(),
            3 => keys::NUM_RING_PAGES.to_string(),
            4 => format!("{dir}{}", keys::EVENT_CHANNEL),
            5 => keys::PROTOCOL.to_string(),
            6 => keys::FEATURE_PERSISTENT.to_string(),
            7 => keys::MULTI_QUEUE_NUM_QUEUES.to_string(),
            8 => keys::STATE.to_string(),
            _ => format!("{dir}unknown-node"),
        };
        format!("{FE_PATH}/{k}")
    }

    fn xs_write(&mut self, r: &mut Input<'_>) {
        let (key, queue, arg, value) = (r.u8(), r.u8(), r.u8(), r.u8());
        let path = self.node(key, queue, arg);
        let v: Vec<u8> = match value % 10 {
            0 => {
                let grefs = self.host.queue_ring_grefs(QueueId::from(arg / 4 % 4));
                let g = grefs.get(usize::from(arg % 4)).copied().unwrap_or(0);
                g.to_string().into_bytes()
            }
            1 => self
                .host
                .queue_port(QueueId::from(arg % 4))
                .to_string()
                .into_bytes(),
            2 => arg.to_string().into_bytes(),
            3 => Vec::new(),
            4 => b"4294967296".to_vec(),
            5 => b"-1".to_vec(),
            6 => b"x86_32-abi".to_vec(),
            7 => b"x86_64-abi".to_vec(),
            8 => b"4294967295".to_vec(),
            _ => r.bytes(usize::from(arg % 24)).to_vec(),
        };
        self.host.xs.set(&path, &v);
    }

    fn push(&mut self, r: &mut Input<'_>) {
        let s = usize::from(r.u8()) % MAX_RINGS;
        self.pushes += 1;
        let id = u64::from(r.u16()) | self.pushes << 16;
        let op_sel = r.u8() % 8;
        let raw_op = if matches!(op_sel, 6 | 7) { r.u8() } else { 0 };
        let nb = r.u8();
        let sector = pick_sector(r, self.rings[s].slots.last_end, self.medium_sectors);
        let data_gref = |g: u8| FIRST_DATA_GREF + GrantRef::from(g) % DATA_PAGES as GrantRef;
        let (operation, body, sectors) = match op_sel {
            6 => {
                let n = u64::from(nb) * 8;
                let body = RequestBody::Discard {
                    flag: raw_op,
                    handle: 0,
                    sector_number: sector,
                    nr_sectors: n,
                };
                (BLKIF_OP_DISCARD, body, n)
            }
            7 => {
                let first = r.u8();
                let indirect_op = match raw_op {
                    251.. => raw_op,
                    _ if raw_op % 2 == 0 => BLKIF_OP_READ,
                    _ => BLKIF_OP_WRITE,
                };
                let mut indirect_grefs = [0; BLKIF_MAX_INDIRECT_PAGES_PER_REQUEST];
                for (i, g) in indirect_grefs.iter_mut().enumerate() {
                    *g = data_gref(first.wrapping_add(i as u8));
                }
                let body = RequestBody::Indirect {
                    indirect_op,
                    nr_segments: u16::from(nb) * 4,
                    handle: 0,
                    sector_number: sector,
                    indirect_grefs,
                };
                (BLKIF_OP_INDIRECT, body, u64::from(nb) * 32)
            }
            _ => {
                let operation = match op_sel {
                    0 | 1 => BLKIF_OP_READ,
                    2 | 3 => BLKIF_OP_WRITE,
                    4 => BLKIF_OP_FLUSH_DISKCACHE,
                    _ => BLKIF_OP_WRITE_BARRIER,
                };
                let nsegs = if nb < 208 { nb % 12 } else { nb };
                let host = &self.host;
                let ring_gref = |g: u8| {
                    let grefs = host.queue_ring_grefs(QueueId::from(g % 4));
                    grefs.first().copied().unwrap_or(0)
                };
                let (seg, sectors) = pick_segments(r, nsegs, data_gref, ring_gref);
                let body = RequestBody::Rw {
                    nr_segments: nsegs,
                    handle: 0,
                    sector_number: sector,
                    seg,
                };
                (operation, body, sectors)
            }
        };
        let req = BlkifRequest {
            operation,
            id,
            body,
        };
        self.rings[s].slots.write_request(&req, sector, sectors);
    }

    fn op(&mut self, r: &mut Input<'_>) {
        let op = Op::decode(r.u8());
        if self.trace {
            eprintln!(
                "op {op:?} (state {:?}, queues {}, pending {}, error {:?})",
                self.inst.state(),
                self.inst.num_queues(),
                self.host.pending(),
                self.inst.last_error()
            );
        }
        match op {
            Op::XsWrite => self.xs_write(r),
            Op::XsRemove => {
                let path = self.node(r.u8(), r.u8(), r.u8());
                let _ = self.host.xs.xs_remove(XsTxn::NONE, &path);
            }
            Op::Layout => {
                let (queues, order, flags) = (r.u8(), r.u8(), r.u8());
                self.layout(queues, order, flags & 1 != 0, flags & 2 != 0);
            }
            Op::FrontState => {
                let v = r.u8();
                set_front_state(&mut self.host, v);
                self.call(|i, h| i.frontend_changed(h));
            }
            Op::Watch => self.call(|i, h| i.frontend_changed(h)),
            Op::Slot => {
                let s = usize::from(r.u8()) % MAX_RINGS;
                self.rings[s].slots.write_raw(r);
            }
            Op::Push => self.push(r),
            Op::ReqProd => {
                let s = usize::from(r.u8()) % MAX_RINGS;
                let ring = &mut self.rings[s].slots;
                let v = ring.pick_req_prod(r);
                if let Some(f) = ring.front.as_mut() {
                    f.set_req_prod_raw(v);
                }
            }
            Op::Kick => {
                let q = QueueId::from(r.u8() % (MAX_RINGS as u8 + 1));
                self.call_io(|i, h| i.event(h, q));
            }
            Op::Run => self.run_scheduled(),
            Op::Complete => {
                let which = usize::from(r.u8());
                let result = Completion::decode(r.u8());
                if self.host.pending() > 0 {
                    let idx = which % self.host.pending();
                    self.complete_at(idx, result);
                }
            }
            Op::CompleteAll => {
                let result = Completion::decode(r.u8());
                self.settle(result);
            }
            Op::Inject => {
                let (k, n) = (r.u8() % InstanceInput::FAULTS, r.u8());
                inject(&mut self.host, k, n);
            }
            Op::Resize => self.resize(r),
            Op::Detach => self.call(|i, h| i.detach(h)),
            Op::Attach => {
                if self.inst.is_detached() {
                    self.report.detaches += 1;
                    self.inst = Instance::new(BE_PATH, &tunables(&self.cfg)).expect("instance");
                    self.conn = None;
                    self.call(|i, h| i.attach(h));
                }
            }
            Op::RootMounted => {
                self.host.root = true;
                self.call(|i, h| i.root_mounted(h));
            }
            Op::Sysctl => {
                let v = u64::from(r.u8() % 3);
                let accepted = self.inst.sysctl_set(Stat::NoCoalesceReqs, v);
                assert_eq!(accepted, v <= 1);
            }
            Op::Clock => {
                self.host.now_ms += match r.u8() {
                    0 => 0,
                    1 => 1,
                    2 => 3_600_000,
                    v => u64::from(v),
                };
            }
            Op::ArmRspEvent => {
                let s = usize::from(r.u8()) % MAX_RINGS;
                if let Some(f) = self.rings[s].slots.front.as_mut() {
                    f.final_check_for_responses();
                }
            }
            Op::PageWrite => self.page_write(r),
            Op::Hotplug => {
                let v = if r.u8() % 2 == 0 {
                    keys::HOTPLUG_CONNECTED
                } else {
                    "error"
                };
                self.host.be_set(keys::HOTPLUG_STATUS, v);
                self.call(|i, h| i.frontend_changed(h));
            }
        }
    }

    /// The toolstack resizes the medium and tells the instance.
    fn resize(&mut self, r: &mut Input<'_>) {
        let sectors = u64::from(r.u8() % 65) * 8;
        self.host.resize_medium(Sectors(sectors));
        self.medium_sectors = sectors;
        let before = self.inst.stats().get(Stat::Resizes);
        self.call(|i, h| i.medium_changed(h));
        let after = self.inst.stats().get(Stat::Resizes);
        self.report.resizes += after.saturating_sub(before);
    }

    /// The guest writes bytes into one of its data pages.
    fn page_write(&mut self, r: &mut Input<'_>) {
        let page = usize::from(r.u8()) % DATA_PAGES;
        let offset = usize::from(r.u16()) % PAGE_SIZE;
        let len = usize::from(r.u8());
        let bytes = r.bytes(len);
        let g = FIRST_DATA_GREF + page as GrantRef;
        let p = self.host.page_mut(g);
        let n = bytes.len().min(PAGE_SIZE - offset);
        p[offset..offset + n].copy_from_slice(&bytes[..n]);
    }

    /// Front-end Closed, detach, and check everything was given back.
    fn teardown(&mut self) {
        self.host.faults = Default::default();
        self.host.xs.again_commits = 0;
        self.host.xs.fail_read = None;
        self.settle(Ok(()));
        self.after_op();
        set_front_state(&mut self.host, XenbusState::Closed as u8);
        self.call(|i, h| i.frontend_changed(h));
        self.settle(Ok(()));
        self.after_op();
        self.call(|i, h| i.detach(h));
        self.settle(Ok(()));
        self.after_op();

        assert_given_back(&self.inst, &self.host);
    }

    /// Hands the rings' memory back for the next input.
    fn give_back_memory(&mut self) {
        for s in 0..MAX_RINGS {
            let Some(front) = self.rings[s].slots.front.take() else {
                continue;
            };
            let back = self.host.take_queue_ring(s as QueueId);
            self.mem.give_back(s, front, back.expect("ring returned"));
        }
    }
}
