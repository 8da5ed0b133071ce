//! `fuzz_ring`: a hostile front-end against a real [`Instance`] over the
//! fake host. It writes arbitrary bytes into the slots of the shared ring of
//! `io/ring.h`, publishes any `req_prod`, kicks, completes store I/O in any
//! order with any result, injects platform failures and moves the
//! front-end through the states of `io/xenbus.h`.

use std::collections::BTreeSet;

use xbb::abi::{
    Abi, BlkifRequest, RequestBody, Segment, BLKIF_MAX_SEGMENTS_PER_REQUEST, BLKIF_OP_DISCARD,
    BLKIF_OP_FLUSH_DISKCACHE, BLKIF_OP_INDIRECT, BLKIF_OP_READ, BLKIF_OP_WRITE,
    BLKIF_OP_WRITE_BARRIER, BLKIF_RSP_EOPNOTSUPP, BLKIF_RSP_ERROR, BLKIF_RSP_OKAY, MAX_SLOT_SIZE,
};
use xbb::connect::ConnectError;
use xbb::host::{GrantRef, IoError, MediumInfo, XenbusState, PAGE_SIZE};
use xbb::instance::Instance;
use xbb::keys;
use xbb::ring::FrontRing;
use xbb::shmem::SharedMem;
use xbb::stats::{Stat, Tunable, Tunables};
use xbb::units::Sectors;

use super::input::Input;
use super::script::*;
use crate::host::{FakeConfig, FakeHost, BE_PATH, FE_PATH};

/// Granted data pages of the fuzzed guest.
const DATA_PAGES: usize = 16;
/// The largest ring the fuzzer builds, as log2(pages).
const MAX_FUZZ_ORDER: u32 = 2;
const RING_BYTES: usize = PAGE_SIZE << MAX_FUZZ_ORDER;
/// Bound on the actions of one input, and on the steps of settling.
const MAX_ACTIONS: usize = 4096;
const MAX_SETTLE_STEPS: usize = 1 << 16;

/// The shared memory of the fuzzed ring, reused across inputs.
///
/// Shared memory outside a platform can only be had from
/// [`SharedMem::leak_pair`], which never frees; a fuzzer running millions
/// of inputs keeps one of these (e.g. in a `static Mutex`) and passes it to
/// [`fuzz_ring_in`]. It is zeroed at the start of every input.
#[derive(Debug)]
pub struct RingMemory {
    pair: Option<(SharedMem, SharedMem)>,
}

impl RingMemory {
    /// Leaks the largest ring the fuzzer builds (4 pages). `None` when
    /// the allocation fails.
    pub fn new() -> Option<RingMemory> {
        Some(RingMemory {
            pair: Some(SharedMem::leak_pair(RING_BYTES)?),
        })
    }

    fn take(&mut self) -> (SharedMem, SharedMem) {
        match self.pair.take() {
            Some(p) => p,
            // A previous input panicked while holding the memory.
            None => SharedMem::leak_pair(RING_BYTES).expect("ring memory"),
        }
    }
}

/// What one [`fuzz_ring_in`] input did, so seeds can check they reached
/// what they aim at.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RingReport {
    /// Connections made.
    pub connects: u64,
    /// Responses with `BLKIF_RSP_OKAY`.
    pub okay: u64,
    /// Responses with `BLKIF_RSP_ERROR`.
    pub error: u64,
    /// Responses with `BLKIF_RSP_EOPNOTSUPP`.
    pub not_supported: u64,
    /// Store I/Os submitted (flushes included).
    pub ios: u64,
    /// Events sent to the front-end.
    pub notifications: u64,
    /// A connection broke the ring protocol.
    pub ring_broken: bool,
    /// The largest number of store I/Os in flight at once.
    pub max_in_flight: usize,
}

/// The hostile front-end and its bookkeeping.
struct Driver {
    report: RingReport,
    host: FakeHost,
    /// The first of the guest's data pages (their references are
    /// consecutive).
    data_gref: GrantRef,
    /// The first of the ring's pages.
    ring_gref: GrantRef,
    inst: Instance,
    front: Option<FrontRing>,
    abi: Abi,
    ring_pages: u32,
    size: u32,
    medium_sectors: u64,
    /// The index the next request is written at.
    cursor: u32,
    /// Every slot's bytes as the front-end sees them between actions.
    shadow: Vec<[u8; MAX_SLOT_SIZE]>,
    /// Every id a request slot can have held.
    ids: BTreeSet<u64>,
    /// Responses taken in the current connection.
    responses: u64,
    /// `host.connects` and `host.fatals` as last seen.
    connects_seen: u64,
    fatals_seen: u64,
    /// The current connection broke the ring protocol: it answers nothing
    /// more.
    ring_broken: bool,
    /// Responses still to take that the connection before the current one
    /// published.
    earlier: u32,
    /// This front ring published a `req_prod` more than a ring ahead of
    /// its `rsp_cons` (or behind it): only then may a correct back-end's
    /// `rsp_prod` look impossible to it.
    overran: bool,
    /// The ring of the current (or last) connection was overrun by its
    /// front-end: its responses are counted on the shared ring.
    conn_overran: bool,
    /// The front ring was re-initialised since the current (or last)
    /// connection attached: the shared ring is no longer that
    /// connection's.
    reinit_since_attach: bool,
    /// Responses the current (or last) connection published, as its
    /// shared `rsp_prod` says (from where it attached), last seen while
    /// the ring was still that connection's.
    published: u64,
    pushes: u64,
    last_end: u64,
}

impl Driver {
    fn front(&mut self) -> &mut FrontRing {
        self.front.as_mut().expect("front ring")
    }

    fn slot_of(&self, index: u32) -> usize {
        (index & (self.size - 1)) as usize
    }

    fn note_slot(&mut self, slot: usize) {
        let req = self.abi.request_size();
        let id = self.abi.decode_request(&self.shadow[slot][..req]).id;
        self.ids.insert(id);
    }

    /// Writes `bytes` into ring slot `index` and the shadow.
    fn write_slot(&mut self, index: u32, bytes: &[u8]) {
        let n = bytes.len().min(self.abi.entry_size());
        self.front().write_raw_slot(index, &bytes[..n]);
        let slot = self.slot_of(index);
        self.shadow[slot][..n].copy_from_slice(&bytes[..n]);
        self.note_slot(slot);
    }

    /// Initialises the shared ring as a front-end does before it
    /// (re)connects.
    fn reinit_front(&mut self) {
        let mem = self.front.take().expect("front ring").into_mem();
        self.front = Some(FrontRing::init(mem, self.abi, self.ring_pages).expect("ring init"));
        self.cursor = 0;
        self.overran = false;
        self.reinit_since_attach = true;
        self.earlier = 0;
    }

    /// Takes every published response; checks they answer consumed
    /// requests with ids that were written.
    fn drain(&mut self) {
        if self.host.connects != self.connects_seen {
            // A new connection: the instance reset its counters. It
            // attached where the ring's rsp_prod was: responses below that
            // an earlier connection published, and are not its own.
            self.connects_seen = self.host.connects;
            self.responses = 0;
            self.published = 0;
            self.conn_overran = self.overran;
            self.reinit_since_attach = false;
            self.ring_broken = false;
            let rsp_cons = self.front().rsp_cons();
            self.earlier = self.host.rsp_prod_at_map.wrapping_sub(rsp_cons);
        }
        if self.host.fatals != self.fatals_seen {
            self.fatals_seen = self.host.fatals;
            self.ring_broken |= self.inst.last_error() == Some(ConnectError::Ring);
        }
        let mut got = Vec::new();
        let mut earlier = 0u64;
        loop {
            let index = self.front().rsp_cons();
            let r = match self.front().take_response() {
                Ok(Some(r)) => r,
                Ok(None) => break,
                Err(e) => {
                    assert!(self.overran, "a correct rsp_prod refused: {e:?}");
                    break;
                }
            };
            // What the back-end wrote into the slot, as the shadow's bytes.
            let slot = self.slot_of(index);
            let n = self.abi.response_size();
            self.shadow[slot][..n].fill(0);
            self.abi.encode_response(&r, &mut self.shadow[slot][..n]);
            self.note_slot(slot);
            if self.earlier > 0 && self.earlier <= self.size {
                self.earlier -= 1;
                earlier += 1;
            }
            got.push(r);
            assert!(got.len() <= self.size as usize * 4, "runaway responses");
        }
        self.responses += got.len() as u64 - earlier;
        if !self.reinit_since_attach {
            let p = self.front().rsp_prod();
            self.published = u64::from(p.wrapping_sub(self.host.rsp_prod_at_map));
        }
        let received = self.inst.stats().get(Stat::ReqsReceived);
        assert!(
            self.responses <= received,
            "{} responses for {received} requests consumed",
            self.responses
        );
        self.report.ring_broken |= self.ring_broken;
        self.report.connects = self.host.connects;
        self.report.max_in_flight = self.report.max_in_flight.max(self.host.pending());
        for r in &got {
            match r.status {
                BLKIF_RSP_OKAY => self.report.okay += 1,
                BLKIF_RSP_ERROR => self.report.error += 1,
                _ => self.report.not_supported += 1,
            }
            assert!(
                self.ids.contains(&r.id),
                "response to unknown id {:#x}",
                r.id
            );
            assert!(
                matches!(
                    r.status,
                    BLKIF_RSP_OKAY | BLKIF_RSP_ERROR | BLKIF_RSP_EOPNOTSUPP
                ),
                "bad status {}",
                r.status
            );
        }
    }

    fn set_front_state(&mut self, v: u8) {
        let path = format!("{FE_PATH}/{}", keys::STATE);
        match v % 12 {
            s @ 0..=8 => {
                let st = XenbusState::from_u32(u32::from(s)).expect("state");
                self.host.xs.set(&path, st.as_str().as_bytes());
            }
            9 => self.host.xs.set(&path, b"connected"),
            10 => self.host.xs.set(&path, b"99"),
            _ => self.host.xs.del(&path),
        }
    }

    fn push(&mut self, r: &mut Input<'_>) {
        self.pushes += 1;
        let id = u64::from(r.u16()) | self.pushes << 16;
        let op_sel = r.u8() % 8;
        let operation = match op_sel {
            0 | 1 => BLKIF_OP_READ,
            2 | 3 => BLKIF_OP_WRITE,
            4 => BLKIF_OP_FLUSH_DISKCACHE,
            5 => BLKIF_OP_WRITE_BARRIER,
            6 if id & 1 == 0 => BLKIF_OP_DISCARD,
            6 => BLKIF_OP_INDIRECT,
            _ => r.u8(),
        };
        let nb = r.u8();
        let nsegs = if nb < 208 { nb % 13 } else { nb };
        let sel = r.u8();
        let sector = match sel {
            0..=127 => u64::from(sel) * 8,
            128..=191 => self.last_end,
            192..=254 => self.medium_sectors.saturating_sub(u64::from(sel - 192)),
            255 => r.u64(),
        };
        let mut seg = [Segment::default(); BLKIF_MAX_SEGMENTS_PER_REQUEST];
        let mut sectors = 0u64;
        for s in seg.iter_mut().take(usize::from(nsegs)) {
            let g = r.u8();
            let gref = match g {
                0..=223 => self.data_gref + u32::from(g % DATA_PAGES as u8),
                224..=239 => self.ring_gref + u32::from(g % 4),
                240..=254 => u32::from(g),
                255 => 0xdead_beef,
            };
            let b = r.u8();
            let (first_sect, last_sect) = match b {
                0..=63 => (b & 7, b >> 3),
                64..=119 => (b & 7, 7),
                120..=127 => (0, 8 + (b & 7) * 30),
                _ => (0, 7),
            };
            sectors += u64::from(last_sect.saturating_sub(first_sect)) + 1;
            *s = Segment {
                gref,
                first_sect,
                last_sect,
            };
        }
        self.last_end = sector.wrapping_add(sectors);
        let body = match operation {
            BLKIF_OP_DISCARD => RequestBody::Discard {
                flag: nsegs & 1,
                handle: 0,
                sector_number: sector,
                nr_sectors: sectors,
            },
            BLKIF_OP_INDIRECT => RequestBody::Indirect {
                indirect_op: BLKIF_OP_READ,
                nr_segments: u16::from(nsegs),
                handle: 0,
                sector_number: sector,
                indirect_grefs: [self.data_gref; 8],
            },
            _ => RequestBody::Rw {
                nr_segments: nsegs,
                handle: 0,
                sector_number: sector,
                seg,
            },
        };
        let req = BlkifRequest {
            operation,
            id,
            body,
        };
        let mut buf = [0u8; MAX_SLOT_SIZE];
        let n = self.abi.request_size();
        self.abi.encode_request(&req, &mut buf[..n]);
        let at = self.cursor;
        self.write_slot(at, &buf[..n]);
        self.cursor = self.cursor.wrapping_add(1);
    }

    fn run_scheduled(&mut self) {
        if self.host.schedule_runs > 0 {
            self.host.schedule_runs = 0;
            self.inst.run(&mut self.host, 0);
        }
    }

    /// Completes every pending I/O and honours deferred runs until
    /// nothing is left, draining responses as a front-end would.
    fn settle(&mut self, result: Result<(), IoError>) {
        for _ in 0..MAX_SETTLE_STEPS {
            if self.host.pending() > 0 {
                self.host.complete_at(&mut self.inst, 0, result);
            } else if self.host.schedule_runs > 0 {
                self.run_scheduled();
            } else {
                self.drain();
                return;
            }
            self.drain();
        }
        panic!("the instance did not settle");
    }

    fn action(&mut self, r: &mut Input<'_>) {
        match Action::decode(r.u8()) {
            Action::WriteSlot => {
                let rel = r.u8() as i8;
                let len = usize::from(r.u8()) % (MAX_SLOT_SIZE + 1);
                let bytes = r.bytes(len);
                let at = self.cursor.wrapping_add(rel as u32);
                self.write_slot(at, bytes);
                if rel == 0 {
                    self.cursor = self.cursor.wrapping_add(1);
                }
            }
            Action::Push => self.push(r),
            Action::ReqProd => {
                let v = match r.u8() % 4 {
                    0 => self.cursor,
                    1 => self.cursor.wrapping_add(u32::from(r.u8())),
                    2 => self.cursor.wrapping_sub(u32::from(r.u8())),
                    _ => r.u32(),
                };
                let ahead = v.wrapping_sub(self.front().rsp_cons());
                self.overran |= ahead > self.size;
                self.conn_overran |= ahead > self.size && !self.reinit_since_attach;
                self.front().set_req_prod_raw(v);
            }
            Action::Kick => self.inst.event(&mut self.host, 0),
            Action::CompleteOne => {
                let which = usize::from(r.u8());
                let result = Outcome::decode(r.u8());
                if self.host.pending() > 0 {
                    let idx = which % self.host.pending();
                    self.host.complete_at(&mut self.inst, idx, result);
                }
            }
            Action::CompleteAll => {
                let result = Outcome::decode(r.u8());
                self.settle(result);
            }
            Action::FrontState => {
                let v = r.u8();
                self.set_front_state(v);
                if matches!(v % 12, 3 | 4) && !self.host.ring_mapped() {
                    // A front-end initialises the ring before it announces
                    // it (again).
                    self.reinit_front();
                }
                self.inst.frontend_changed(&mut self.host);
            }
            Action::Inject => {
                let (k, n) = (r.u8() % 7, r.u8());
                let h = &mut self.host;
                match k {
                    0 => h.faults.submits += u32::from(n % 4),
                    1 => h.faults.maps += u32::from(n % 16),
                    2 => h.faults.ring_map = true,
                    3 => h.faults.bind = true,
                    4 => h.faults.window = true,
                    5 => h.xs.again_commits = u32::from(n % 12),
                    _ => h.faults.open = true,
                }
            }
            Action::Deferred => self.run_scheduled(),
            Action::RootMounted => {
                self.host.root = true;
                self.inst.root_mounted(&mut self.host);
            }
            Action::ArmRspEvent => {
                self.front().final_check_for_responses();
            }
            Action::Coalesce => {
                let v = u64::from(r.u8() % 3);
                let accepted = self.inst.sysctl_set(Stat::NoCoalesceReqs, v);
                assert_eq!(accepted, v <= 1);
            }
        }
        self.drain();
    }

    /// Front-end Closed, detach, and check everything was given back.
    fn teardown(&mut self) {
        self.host.faults.submits = 0;
        self.settle(Ok(()));
        if self.inst.is_idle() && !self.ring_broken {
            let received = self.inst.stats().get(Stat::ReqsReceived);
            if self.conn_overran {
                // The front-end stored a req_prod more than a ring ahead
                // of its rsp_cons, which the back-end may still accept
                // (it measures from its own req_cons): its front ring
                // then refuses responses it cannot be owed. The back-end
                // must have answered every request all the same: count
                // on the shared ring, from where this connection attached.
                assert_eq!(
                    self.published, received,
                    "idle with consumed requests unanswered (the front-end overran its ring)"
                );
            } else {
                assert_eq!(
                    self.responses, received,
                    "idle with consumed requests unanswered"
                );
            }
        }
        self.set_front_state(XenbusState::Closed as u8);
        self.inst.frontend_changed(&mut self.host);
        self.settle(Ok(()));
        self.inst.detach(&mut self.host);
        self.settle(Ok(()));

        assert!(self.inst.is_detached(), "detach did not finish");
        let h = &self.host;
        assert!(!h.ring_mapped(), "ring still mapped after detach");
        assert!(!h.window_reserved(), "window still reserved after detach");
        assert_eq!(h.live_mappings, 0, "grants still mapped after detach");
        assert_eq!(
            h.channels_bound(),
            0,
            "event channel still bound after detach"
        );
        assert!(!h.store_is_open(), "store still open after detach");
        assert_eq!(h.pending(), 0);
        h.assert_released();
        h.assert_clean();
    }
}

/// Runs one [`fuzz_ring`] input with ring memory of its own (leaking
/// 16 KiB). Fuzzers running many inputs use [`fuzz_ring_in`].
pub fn fuzz_ring(data: &[u8]) -> RingReport {
    let mut mem = RingMemory::new().expect("ring memory");
    fuzz_ring_in(&mut mem, data)
}

/// Plays `data` as a hostile front-end against a real [`Instance`].
///
/// The input is a [`RingConfig`] header followed by actions (see
/// [`RingScript`]): write bytes into a ring slot, write a structured
/// request, set `req_prod` to anything, kick, complete one or all pending
/// I/O with success or an error, change the front-end's state, inject
/// platform failures, run a deferred pass. After each action every
/// published response is taken and checked: no more responses than
/// requests consumed, each with an id some slot held. The fake host
/// checks every call against the platform contract. At the end the
/// front-end closes, the instance detaches, and every grant, the window,
/// the ring, the event channel and the store must have been given back.
pub fn fuzz_ring_in(mem: &mut RingMemory, data: &[u8]) -> RingReport {
    let mut r = Input::new(data);
    let cfg = RingConfig::decode(&mut r);
    let mut d = Driver::new(&cfg, mem.take());
    d.inst.attach(&mut d.host);
    d.drain();
    let mut n = 0;
    while !r.is_empty() && n < MAX_ACTIONS {
        d.action(&mut r);
        n += 1;
    }
    d.teardown();

    let front_mem = d.front.take().expect("front ring").into_mem();
    let back_mem = d.host.take_ring().expect("ring returned");
    mem.pair = Some((front_mem, back_mem));
    d.report.ios = d.host.submitted;
    d.report.notifications = d.host.notifications;
    d.report
}

/// The tunables a [`RingConfig`] selects.
fn tunables(cfg: &RingConfig) -> Tunables {
    let mut t = Tunables::default();
    let sel = |table: &[u64; 4], s: u8| table[usize::from(s & 3)];
    for (tunable, v) in [
        (Tunable::RequestsPerPass, sel(&RPP, cfg.requests_per_pass)),
        (Tunable::MaxRequests, sel(&MAX_REQS, cfg.max_requests)),
        (Tunable::KvaPages, sel(&KVA, cfg.kva_pages)),
        (Tunable::MaxRequestSize, sel(&MAX_RS, cfg.max_request_size)),
        (
            Tunable::MaxRingPageOrder,
            sel(&MAX_ORDER, cfg.max_ring_order),
        ),
        (Tunable::NoCoalesceReqs, u64::from(cfg.no_coalesce)),
        (
            Tunable::MaxPersistentGrants,
            sel(&MAX_PERSISTENT_GRANTS, cfg.max_persistent_grants),
        ),
    ] {
        t.set(tunable, v).expect("tunable in range");
    }
    t
}

/// The platform a [`RingConfig`] describes: the medium, the guest's data
/// pages (a pattern; some read-only), the toolstack's nodes, and the
/// front-end's ring in `ring`, announced but not yet connected.
fn host(cfg: &RingConfig, ring: (SharedMem, SharedMem)) -> (FakeHost, FrontRing) {
    let medium_sectors = (u64::from(cfg.medium) + 1) * 8;
    let sector_size = if cfg.sector_4k { 4096 } else { 512 };
    let mut host = FakeHost::new(FakeConfig {
        medium: MediumInfo {
            sectors: Sectors(medium_sectors),
            sector_size,
            physical_sector_size: sector_size,
            read_only: cfg.read_only_medium,
            can_flush: cfg.can_flush,
            can_discard: cfg.can_discard,
            is_device: false,
            ..MediumInfo::default()
        },
        max_grants: DATA_PAGES,
        // One I/O at a time per reqlist, at most one reqlist per request.
        max_in_flight: MAX_REQS[usize::from(cfg.max_requests & 3)] as usize,
        max_window_pages: 1 << 16,
        ..FakeConfig::default()
    });
    host.root = !cfg.root_later;
    for p in 0..DATA_PAGES {
        let page: Vec<u8> = (p * PAGE_SIZE..(p + 1) * PAGE_SIZE)
            .map(|i| (i as u8).wrapping_mul(7) ^ (i >> 12) as u8)
            .collect();
        host.grant(&page, cfg.readonly_grants & (1 << p) != 0);
    }
    host.standard_nodes(!cfg.toolstack_read_only, cfg.online);
    let abi = if cfg.x86_64 { Abi::X86_64 } else { Abi::X86_32 };
    let (front_mem, back_mem) = ring;
    for page in 0..RING_BYTES / PAGE_SIZE {
        front_mem.write(page * PAGE_SIZE, &[0u8; PAGE_SIZE]);
    }
    let front = host.offer_ring(front_mem, back_mem, abi, 1 << cfg.order);
    if cfg.persistent {
        host.fe_set(keys::FEATURE_PERSISTENT, "1");
    }
    host.set_frontend_state(if cfg.connect_at_attach {
        XenbusState::Initialised
    } else {
        XenbusState::Initialising
    });
    (host, front)
}

impl Driver {
    fn new(cfg: &RingConfig, ring: (SharedMem, SharedMem)) -> Driver {
        let (host, front) = host(cfg, ring);
        let abi = if cfg.x86_64 { Abi::X86_64 } else { Abi::X86_32 };
        let ring_pages = 1u32 << cfg.order;
        let size = abi.ring_size(ring_pages).expect("ring size");
        Driver {
            report: RingReport::default(),
            // The data pages were granted first, from the first reference.
            data_gref: host.ring_grefs()[0] - DATA_PAGES as GrantRef,
            ring_gref: host.ring_grefs()[0],
            host,
            inst: Instance::new(BE_PATH, &tunables(cfg)).expect("instance"),
            front: Some(front),
            abi,
            ring_pages,
            size,
            medium_sectors: (u64::from(cfg.medium) + 1) * 8,
            cursor: 0,
            shadow: vec![[0u8; MAX_SLOT_SIZE]; size as usize],
            ids: BTreeSet::from([0]),
            responses: 0,
            connects_seen: 0,
            fatals_seen: 0,
            ring_broken: false,
            overran: false,
            conn_overran: false,
            reinit_since_attach: false,
            published: 0,
            earlier: 0,
            pushes: 0,
            last_end: 0,
        }
    }
}
