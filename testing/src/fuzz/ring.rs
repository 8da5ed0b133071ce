//! `fuzz_ring`: a hostile front-end against a real [`Instance`] over the
//! fake host. It writes arbitrary bytes into the slots of the shared ring of
//! `io/ring.h`, publishes any `req_prod`, kicks, completes store I/O in any
//! order with any result, injects platform failures and moves the
//! front-end through the states of `io/xenbus.h`.

use xbb::abi::{
    Abi, BlkifRequest, RequestBody, BLKIF_OP_DISCARD, BLKIF_OP_FLUSH_DISKCACHE, BLKIF_OP_INDIRECT,
    BLKIF_OP_READ, BLKIF_OP_WRITE, BLKIF_OP_WRITE_BARRIER, BLKIF_RSP_EOPNOTSUPP, BLKIF_RSP_ERROR,
    BLKIF_RSP_OKAY,
};
use xbb::connect::ConnectError;
use xbb::host::{GrantRef, IoError, XenbusState, PAGE_SIZE};
use xbb::instance::Instance;
use xbb::keys;
use xbb::ring::FrontRing;
use xbb::shmem::SharedMem;
use xbb::stats::Stat;

use super::builder::Body;
use super::front::*;
use super::input::Input;
use super::instance::{medium, tunables, InstanceConfig, MAX_REQS};
use super::script::*;
use crate::host::{FakeConfig, FakeHost, BE_PATH};

/// Bound on the actions of one input.
const MAX_ACTIONS: usize = 4096;

/// The shared memory of the fuzzed ring, reused across inputs (see
/// [`RingsMemory`]); [`fuzz_ring_in`] zeroes it at the start of every
/// input.
pub type RingMemory = RingsMemory<1>;

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

report_totals! { RingReport:
    sum connects okay error not_supported ios notifications;
    max max_in_flight;
    any ring_broken
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
    ring: ShadowRing,
    medium_sectors: u64,
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
}

impl Driver {
    fn front(&mut self) -> &mut FrontRing {
        self.ring.front.as_mut().expect("front ring")
    }

    /// Initialises the shared ring as a front-end does before it
    /// (re)connects.
    fn reinit_front(&mut self) {
        let r = &mut self.ring;
        let mem = r.front.take().expect("front ring").into_mem();
        r.front = Some(FrontRing::init(mem, r.abi, r.pages).expect("ring init"));
        r.cursor = 0;
        self.overran = false;
        self.reinit_since_attach = true;
        self.earlier = 0;
    }
}

impl Settle for Driver {
    fn host(&self) -> &FakeHost {
        &self.host
    }

    fn complete_oldest(&mut self, result: Result<(), IoError>) {
        self.host.complete_at(&mut self.inst, 0, result);
    }

    fn run_scheduled(&mut self) {
        if self.host.schedule_runs > 0 {
            self.host.schedule_runs = 0;
            self.inst.run(&mut self.host, 0);
        }
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
            self.ring.took_response(index, &r);
            if self.earlier > 0 && self.earlier <= self.ring.size {
                self.earlier -= 1;
                earlier += 1;
            }
            got.push(r);
            assert!(
                got.len() <= self.ring.size as usize * 4,
                "runaway responses"
            );
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
                self.ring.ids.contains(&r.id),
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
}

impl Driver {
    fn push(&mut self, r: &mut Input<'_>) {
        self.pushes += 1;
        let id = u64::from(r.u16()) | self.pushes << 16;
        let operation = match r.u8() % 8 {
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
        let sector = pick_sector(r, self.ring.last_end, self.medium_sectors);
        let (data, ring) = (self.data_gref, self.ring_gref);
        let (seg, sectors) = pick_segments(
            r,
            nsegs,
            |g| data + u32::from(g % DATA_PAGES as u8),
            |g| ring + u32::from(g % 4),
        );
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
        self.ring.write_request(&req, sector, sectors);
    }

    fn action(&mut self, r: &mut Input<'_>) {
        match Action::decode(r.u8()) {
            Action::WriteSlot => self.ring.write_raw(r),
            Action::Push => self.push(r),
            Action::ReqProd => {
                let v = self.ring.pick_req_prod(r);
                let ahead = v.wrapping_sub(self.front().rsp_cons());
                let size = self.ring.size;
                self.overran |= ahead > size;
                self.conn_overran |= ahead > size && !self.reinit_since_attach;
                self.front().set_req_prod_raw(v);
            }
            Action::Kick => self.inst.event(&mut self.host, 0),
            Action::Complete => {
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
                set_front_state(&mut self.host, v);
                if matches!(v % 12, 3 | 4) && !self.host.ring_mapped() {
                    // A front-end initialises the ring before it announces
                    // it (again).
                    self.reinit_front();
                }
                self.inst.frontend_changed(&mut self.host);
            }
            Action::Inject => {
                let (k, n) = (r.u8() % RingInput::FAULTS, r.u8());
                inject(&mut self.host, k, n);
            }
            Action::Deferred => self.run_scheduled(),
            Action::RootMounted => {
                self.host.root = true;
                self.inst.root_mounted(&mut self.host);
            }
            Action::ArmRspEvent => {
                self.front().final_check_for_responses();
            }
            Action::Sysctl => {
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
        set_front_state(&mut self.host, XenbusState::Closed as u8);
        self.inst.frontend_changed(&mut self.host);
        self.settle(Ok(()));
        self.inst.detach(&mut self.host);
        self.settle(Ok(()));

        assert_given_back(&self.inst, &self.host);
    }
}

/// Runs one [`fuzz_ring`] input with ring memory of its own (leaking
/// 16 KiB). Fuzzers running many inputs use [`fuzz_ring_in`].
pub fn fuzz_ring(data: &[u8]) -> RingReport {
    fuzz_ring_in(&mut RingMemory::new().expect("ring memory"), data)
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
    let mut d = Driver::new(&cfg, mem.take(0));
    d.inst.attach(&mut d.host);
    d.drain();
    let mut n = 0;
    while !r.is_empty() && n < MAX_ACTIONS {
        d.action(&mut r);
        n += 1;
    }
    d.teardown();

    let front = d.ring.front.take().expect("front ring");
    mem.give_back(0, front, d.host.take_ring().expect("ring returned"));
    d.report.ios = d.host.submitted;
    d.report.notifications = d.host.notifications;
    d.report
}

impl RingConfig {
    /// The instance header that selects the same medium, tunables and
    /// toolstack (the tunables only `fuzz_instance` selects at their
    /// defaults).
    pub fn as_instance(&self) -> InstanceConfig {
        InstanceConfig {
            x86_64: self.x86_64,
            read_only_medium: self.read_only_medium,
            can_flush: self.can_flush,
            can_discard: self.can_discard,
            sector_4k: self.sector_4k,
            online: self.online,
            root_later: self.root_later,
            toolstack_read_only: self.toolstack_read_only,
            requests_per_pass: self.requests_per_pass,
            max_requests: self.max_requests,
            kva_pages: self.kva_pages,
            max_request_size: self.max_request_size,
            max_ring_order: self.max_ring_order,
            max_persistent_grants: self.max_persistent_grants,
            medium: self.medium,
            no_coalesce: self.no_coalesce,
            ..InstanceConfig::default()
        }
    }
}

/// The platform a [`RingConfig`] describes: the medium, the guest's data
/// pages (a pattern; some read-only), the toolstack's nodes, and the
/// front-end's ring in `ring`, announced but not yet connected.
fn host(cfg: &RingConfig, ring: (SharedMem, SharedMem)) -> (FakeHost, FrontRing) {
    let mut host = FakeHost::new(FakeConfig {
        medium: medium(&cfg.as_instance()),
        max_grants: DATA_PAGES,
        // One I/O at a time per reqlist, at most one reqlist per request.
        max_in_flight: MAX_REQS[usize::from(cfg.max_requests & 3)] as usize,
        max_window_pages: 1 << 16,
        ..FakeConfig::default()
    });
    host.root = !cfg.root_later;
    grant_data_pages(&mut host, cfg.readonly_grants);
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
        Driver {
            report: RingReport::default(),
            // The data pages were granted first, from the first reference.
            data_gref: host.ring_grefs()[0] - DATA_PAGES as GrantRef,
            ring_gref: host.ring_grefs()[0],
            host,
            inst: Instance::new(BE_PATH, &tunables(&cfg.as_instance())).expect("instance"),
            ring: ShadowRing::new(Some(front), abi, 1 << cfg.order),
            medium_sectors: (u64::from(cfg.medium) + 1) * 8,
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
        }
    }
}
