//! The modern blkif features through the instance's public entry points,
//! on the deterministic fake platform: requests go on a real shared ring,
//! the instance maps the grants the fake guest gave, the fake store copies
//! between those pages and its medium, and the responses come back on the
//! ring. Each test checks the data as well as the statuses.
//!
//! Covered: indirect segments (`feature-max-indirect-segments`), persistent
//! grants (`feature-persistent`), discard (`feature-discard`), resize while
//! connected, spurious-event backoff (late EOI), the store vanishing, and
//! the refusal of every hostile variant of each.

use xbb::abi::{
    encode_segment, Abi, BlkifRequest, BlkifResponse, RequestBody, Segment, BLKIF_DISCARD_SECURE,
    BLKIF_MAX_SEGMENTS_PER_REQUEST, BLKIF_OP_DISCARD, BLKIF_OP_FLUSH_DISKCACHE, BLKIF_OP_INDIRECT,
    BLKIF_OP_READ, BLKIF_OP_WRITE, BLKIF_RSP_EOPNOTSUPP, BLKIF_RSP_ERROR, BLKIF_RSP_OKAY,
    SEGMENT_SIZE,
};
use xbb::host::{GrantRef, IoError, MediumInfo, XenbusState, PAGE_SIZE};
use xbb::instance::Instance;
use xbb::ring::FrontRing;
use xbb::stats::{Stat, Tunable, Tunables};
use xbb::units::Sectors;
use xbb_testing::guest::status_of;
use xbb_testing::{FakeConfig, FakeHost, BE_PATH, FE_PATH};

struct Guest {
    host: FakeHost,
    inst: Instance,
    front: FrontRing,
    next_id: u64,
}

fn medium(sectors: u64, discard: bool, secure: bool) -> MediumInfo {
    MediumInfo {
        sectors: Sectors(sectors),
        sector_size: 512,
        physical_sector_size: 512,
        can_flush: true,
        can_discard: discard,
        can_secure_discard: secure,
        discard_granularity: 4096,
        ..MediumInfo::default()
    }
}

/// A connected guest; `fe` writes extra front-end nodes before it says
/// Initialised.
fn connect_with(t: Tunables, m: MediumInfo, fe: &[(&str, &str)]) -> Guest {
    let mut host = FakeHost::new(FakeConfig {
        medium: m,
        max_grants: 1200,
        ..FakeConfig::default()
    });
    host.standard_nodes(true, false);
    let front = host.frontend_ring(Abi::X86_64, 1);
    for (k, v) in fe {
        host.xs_set(&format!("{FE_PATH}/{k}"), v);
    }
    host.set_frontend_state(XenbusState::Initialised);
    let inst = host.attach_connected(&t);
    Guest {
        host,
        inst,
        front,
        next_id: 1,
    }
}

fn connect(fe: &[(&str, &str)]) -> Guest {
    connect_with(Tunables::default(), medium(8192, true, false), fe)
}

fn be(g: &Guest, key: &str) -> Option<String> {
    g.host
        .xs_get(&format!("{BE_PATH}/{key}"))
        .map(str::to_owned)
}

impl Guest {
    fn id(&mut self) -> u64 {
        self.next_id += 1;
        self.next_id
    }

    fn push(&mut self, r: &BlkifRequest) -> u64 {
        assert!(self.front.push_request(r), "ring full");
        r.id
    }

    /// Publishes and kicks, without completing any I/O.
    fn kick(&mut self) {
        self.front.publish_requests();
        self.inst.event(&mut self.host, 0);
    }

    /// Publishes, kicks, completes everything; returns the responses.
    fn serve(&mut self) -> Vec<BlkifResponse> {
        self.kick();
        loop {
            self.host.complete_all(&mut self.inst);
            if self.host.run_deferred(&mut self.inst) == 0 {
                break;
            }
        }
        self.responses()
    }

    fn responses(&mut self) -> Vec<BlkifResponse> {
        let mut out = Vec::new();
        while let Some(r) = self.front.take_response().expect("back-end broke the ring") {
            out.push(r);
        }
        out
    }

    fn direct(&mut self, op: u8, sector: u64, segs: &[Segment]) -> BlkifRequest {
        let mut seg = [Segment::default(); BLKIF_MAX_SEGMENTS_PER_REQUEST];
        seg[..segs.len()].copy_from_slice(segs);
        BlkifRequest {
            operation: op,
            id: self.id(),
            body: RequestBody::Rw {
                nr_segments: segs.len() as u8,
                handle: 0,
                sector_number: sector,
                seg,
            },
        }
    }

    /// Grants the descriptor pages of `segs` (read-only, as blkfront does)
    /// and builds the indirect request.
    fn indirect(&mut self, op: u8, sector: u64, segs: &[Segment]) -> BlkifRequest {
        let mut bytes = vec![0u8; segs.len() * SEGMENT_SIZE];
        for (s, out) in segs.iter().zip(bytes.chunks_mut(SEGMENT_SIZE)) {
            encode_segment(s, out);
        }
        let mut grefs = [0u32; 8];
        for (g, page) in grefs.iter_mut().zip(bytes.chunks(PAGE_SIZE)) {
            *g = self.host.grant(page, true);
        }
        BlkifRequest {
            operation: BLKIF_OP_INDIRECT,
            id: self.id(),
            body: RequestBody::Indirect {
                indirect_op: op,
                nr_segments: segs.len() as u16,
                handle: 0,
                sector_number: sector,
                indirect_grefs: grefs,
            },
        }
    }

    fn discard(&mut self, sector: u64, nr: u64, flag: u8) -> BlkifRequest {
        BlkifRequest {
            operation: BLKIF_OP_DISCARD,
            id: self.id(),
            body: RequestBody::Discard {
                flag,
                handle: 0,
                sector_number: sector,
                nr_sectors: nr,
            },
        }
    }

    /// `n` fresh pages filled with a pattern of `seed`.
    fn pages(&mut self, n: usize, seed: u8, readonly: bool) -> Vec<GrantRef> {
        (0..n)
            .map(|i| {
                let fill: Vec<u8> = (0..PAGE_SIZE)
                    .map(|o| seed ^ (i as u8).wrapping_mul(13) ^ (o as u8))
                    .collect();
                self.host.grant(&fill, readonly)
            })
            .collect()
    }

    /// Pushes `r`, serves it and returns the status of its response.
    fn answer(&mut self, r: &BlkifRequest) -> i16 {
        let id = self.push(r);
        let rsps = self.serve();
        status_of(&rsps, id)
    }
}

#[test]
fn indirect_requests_carry_data_and_coalesce() {
    let mut g = connect(&[]);
    assert_eq!(
        be(&g, "feature-max-indirect-segments").as_deref(),
        Some("256")
    );
    assert_eq!(g.inst.stats().get(Stat::MaxIndirectSegments), 256);

    // Two back-to-back 40-page indirect writes, then one 80-page read.
    let src = g.pages(80, 0x3c, true);
    let segs: Vec<Segment> = src.iter().copied().map(Segment::whole_page).collect();
    let w1 = g.indirect(BLKIF_OP_WRITE, 64, &segs[..40]);
    let w2 = g.indirect(BLKIF_OP_WRITE, 64 + 320, &segs[40..]);
    let (a, b) = (g.push(&w1), g.push(&w2));
    let rsps = g.serve();
    assert_eq!(status_of(&rsps, a), BLKIF_RSP_OKAY);
    assert_eq!(status_of(&rsps, b), BLKIF_RSP_OKAY);
    // Answered with the indirect_op, as xen-blkfront insists.
    assert!(
        rsps.iter().all(|r| r.operation == BLKIF_OP_WRITE),
        "{rsps:?}"
    );
    assert_eq!(g.inst.stats().get(Stat::ReqsCoalesced), 1);
    for (i, &r) in src.iter().enumerate() {
        let at = (64 * 512) + i * PAGE_SIZE;
        assert_eq!(
            &g.host.medium[at..at + PAGE_SIZE],
            g.host.page(r),
            "page {i}"
        );
    }

    let dst = g.pages(80, 0, false);
    let segs: Vec<Segment> = dst.iter().copied().map(Segment::whole_page).collect();
    let rd = g.indirect(BLKIF_OP_READ, 64, &segs);
    assert_eq!(g.answer(&rd), BLKIF_RSP_OKAY);
    for (s, d) in src.iter().zip(&dst) {
        assert_eq!(g.host.page(*s), g.host.page(*d));
    }
    assert_eq!(g.inst.stats().get(Stat::IndirectReqs), 3);
    // The descriptors were copied once per page, never mapped.
    assert_eq!(g.host.pages_copied, 3);
    assert_eq!(g.host.live_mappings, 0);
}

#[test]
fn hostile_indirect_requests_are_refused_without_io() {
    let mut g = connect(&[]);
    let pages = g.pages(300, 1, false);
    let segs: Vec<Segment> = pages.iter().copied().map(Segment::whole_page).collect();
    let mut ids = Vec::new();
    // More segments than negotiated.
    let r = g.indirect(BLKIF_OP_READ, 0, &segs[..257]);
    ids.push(g.push(&r));
    // An operation that is not READ or WRITE.
    let r = g.indirect(BLKIF_OP_FLUSH_DISKCACHE, 0, &segs[..12]);
    ids.push(g.push(&r));
    // Descriptor pages that were never granted.
    let mut r = g.indirect(BLKIF_OP_READ, 0, &segs[..12]);
    if let RequestBody::Indirect { indirect_grefs, .. } = &mut r.body {
        indirect_grefs[0] = 60_000;
    }
    ids.push(g.push(&r));
    // A descriptor with first_sect > last_sect.
    let mut bad = segs[..12].to_vec();
    bad[7].first_sect = 6;
    bad[7].last_sect = 2;
    let r = g.indirect(BLKIF_OP_WRITE, 0, &bad);
    ids.push(g.push(&r));
    // Past the end of the medium.
    let r = g.indirect(BLKIF_OP_READ, 8192 - 8, &segs[..12]);
    ids.push(g.push(&r));
    // Zero segments.
    let r = g.indirect(BLKIF_OP_READ, 0, &[]);
    ids.push(g.push(&r));
    let rsps = g.serve();
    for id in ids.iter().copied() {
        assert_eq!(status_of(&rsps, id), BLKIF_RSP_ERROR, "request {id}");
    }
    // Even a refusal is answered with the indirect_op, never 6.
    let op_of = |id| rsps.iter().find(|r| r.id == id).map(|r| r.operation);
    assert_eq!(op_of(ids[0]), Some(BLKIF_OP_READ));
    assert_eq!(op_of(ids[1]), Some(BLKIF_OP_FLUSH_DISKCACHE));
    assert_eq!(op_of(ids[3]), Some(BLKIF_OP_WRITE));
    assert!(rsps.iter().all(|r| r.operation != BLKIF_OP_INDIRECT));
    assert_eq!(g.host.submitted, 0, "no I/O for refused requests");
    assert_eq!(g.inst.stats().get(Stat::ReqsRefused), 6);
    assert_eq!(g.inst.stats().get(Stat::GrantMapFailures), 1);
}

#[test]
fn indirect_off_when_the_tunable_says_so() {
    let mut t = Tunables::default();
    t.set(Tunable::MaxIndirectSegments, 0).unwrap();
    let mut g = connect_with(t, medium(8192, false, false), &[]);
    assert_eq!(be(&g, "feature-max-indirect-segments"), None);
    let pages = g.pages(12, 1, false);
    let segs: Vec<Segment> = pages.iter().copied().map(Segment::whole_page).collect();
    let r = g.indirect(BLKIF_OP_READ, 0, &segs);
    assert_eq!(g.answer(&r), BLKIF_RSP_EOPNOTSUPP);
}

#[test]
fn persistent_grants_are_reused_and_guarded() {
    let mut g = connect(&[("feature-persistent", "1")]);
    assert_eq!(be(&g, "feature-persistent").as_deref(), Some("1"));
    assert_eq!(g.inst.stats().get(Stat::PersistentGrants), 1);

    // The guest's fixed pool: four pages, reused across requests.
    let pool = g.pages(4, 0, false);
    let fill = |g: &mut Guest, round: u8| {
        for (i, &p) in pool.iter().enumerate() {
            g.host.page_mut(p).fill(round ^ i as u8);
        }
    };
    for round in 0..3u8 {
        fill(&mut g, 0x10 + round);
        let segs: Vec<Segment> = pool.iter().copied().map(Segment::whole_page).collect();
        let w = g.direct(BLKIF_OP_WRITE, u64::from(round) * 32, &segs);
        let id = g.push(&w);
        assert_eq!(status_of(&g.serve(), id), BLKIF_RSP_OKAY);
        // Still mapped after completion: that is the point.
        assert_eq!(g.host.live_mappings, 4);
    }
    assert_eq!(g.inst.stats().get(Stat::PersistentGrantHits), 8);
    assert_eq!(g.inst.stats().get(Stat::PersistentGrantsMapped), 4);
    for round in 0..3u64 {
        for i in 0..4usize {
            let at = (round as usize * 32 * 512) + i * PAGE_SIZE;
            assert!(g.host.medium[at..at + PAGE_SIZE]
                .iter()
                .all(|&b| b == (0x10 + round as u8) ^ i as u8));
        }
    }
    // Reading back through the same persistent pages.
    let segs: Vec<Segment> = pool.iter().copied().map(Segment::whole_page).collect();
    let r = g.direct(BLKIF_OP_READ, 32, &segs);
    let id = g.push(&r);
    assert_eq!(status_of(&g.serve(), id), BLKIF_RSP_OKAY);
    assert!(g.host.page(pool[3]).iter().all(|&b| b == 0x11 ^ 3));

    // A grant named twice in one request.
    let dup = g.direct(
        BLKIF_OP_WRITE,
        0,
        &[Segment::whole_page(pool[0]), Segment::whole_page(pool[0])],
    );
    assert_eq!(g.answer(&dup), BLKIF_RSP_ERROR);

    // A grant held by a request still in flight.
    let first = g.direct(BLKIF_OP_WRITE, 0, &[Segment::whole_page(pool[1])]);
    let first_id = g.push(&first);
    g.kick();
    assert_eq!(g.host.pending(), 1);
    let second = g.direct(
        BLKIF_OP_READ,
        8,
        &[Segment::whole_page(pool[2]), Segment::whole_page(pool[1])],
    );
    let second_id = g.push(&second);
    g.kick();
    let early = g.responses();
    assert_eq!(status_of(&early, second_id), BLKIF_RSP_ERROR);
    let rsps = g.serve();
    assert_eq!(status_of(&rsps, first_id), BLKIF_RSP_OKAY);
    assert_eq!(g.inst.stats().get(Stat::GrantsRefused), 2);
    // The refused request gave back the grant it had taken (pool[2]).
    let again = g.direct(BLKIF_OP_READ, 8, &[Segment::whole_page(pool[2])]);
    let again_id = g.push(&again);
    assert_eq!(status_of(&g.serve(), again_id), BLKIF_RSP_OKAY);

    // Mixed: cached and fresh grants in one request. (Fresh grants join
    // the cache, which maps writable: a persistent front-end grants its
    // pages writable, as blkif.h's feature-persistent implies.)
    let fresh = g.pages(2, 0x77, false);
    let segs = [
        Segment::whole_page(pool[0]),
        Segment::whole_page(fresh[0]),
        Segment::whole_page(pool[3]),
        Segment::whole_page(fresh[1]),
    ];
    g.host.page_mut(pool[0]).fill(0xa0);
    g.host.page_mut(pool[3]).fill(0xa3);
    let w = g.direct(BLKIF_OP_WRITE, 512, &segs);
    let id = g.push(&w);
    assert_eq!(status_of(&g.serve(), id), BLKIF_RSP_OKAY);
    let at = 512 * 512;
    assert!(g.host.medium[at..at + PAGE_SIZE].iter().all(|&b| b == 0xa0));
    assert_eq!(
        &g.host.medium[at + PAGE_SIZE..at + 2 * PAGE_SIZE],
        g.host.page(fresh[0])
    );
    assert!(g.host.medium[at + 2 * PAGE_SIZE..at + 3 * PAGE_SIZE]
        .iter()
        .all(|&b| b == 0xa3));

    // Disconnect unmaps the cache.
    g.host.set_frontend_state(XenbusState::Closing);
    g.inst.frontend_changed(&mut g.host);
    assert_eq!(g.host.live_mappings, 0);
    assert!(!g.host.window_reserved());
}

#[test]
fn persistent_cache_is_bounded_lru_and_purged_when_idle() {
    let mut t = Tunables::default();
    t.set(Tunable::MaxPersistentGrants, 4).unwrap();
    t.set(Tunable::PersistentGrantIdleMs, 1000).unwrap();
    let mut g = connect_with(
        t,
        medium(8192, false, false),
        &[("feature-persistent", "1")],
    );
    assert_eq!(g.inst.stats().get(Stat::MaxPersistentGrants), 4);
    let pages = g.pages(6, 9, false);
    for (i, &p) in pages.iter().enumerate() {
        g.host.now_ms = i as u64;
        let r = g.direct(BLKIF_OP_WRITE, i as u64 * 8, &[Segment::whole_page(p)]);
        let id = g.push(&r);
        assert_eq!(status_of(&g.serve(), id), BLKIF_RSP_OKAY);
        assert!(g.host.live_mappings <= 4);
    }
    assert_eq!(g.host.live_mappings, 4);
    assert_eq!(g.inst.stats().get(Stat::PersistentGrantsPurged), 2);
    // The two oldest were evicted: using them again misses, the newest hit.
    let hits = g.inst.stats().get(Stat::PersistentGrantHits);
    let r = g.direct(BLKIF_OP_READ, 40, &[Segment::whole_page(pages[5])]);
    let id = g.push(&r);
    assert_eq!(status_of(&g.serve(), id), BLKIF_RSP_OKAY);
    assert_eq!(g.inst.stats().get(Stat::PersistentGrantHits), hits + 1);
    // Every byte written went to the medium.
    for (i, &p) in pages.iter().enumerate().take(5) {
        let at = i * PAGE_SIZE;
        assert_eq!(&g.host.medium[at..at + PAGE_SIZE], g.host.page(p));
    }
    // Nothing used for longer than the idle time: the next activity purges.
    g.host.now_ms = 10_000;
    g.kick();
    assert_eq!(g.host.live_mappings, 0);
    assert_eq!(g.inst.stats().get(Stat::PersistentGrantsMapped), 0);
}

#[test]
fn without_the_front_end_feature_nothing_persists() {
    let mut g = connect(&[]);
    assert_eq!(g.inst.stats().get(Stat::PersistentGrants), 0);
    let p = g.pages(2, 1, false);
    // The same grant twice in one request is legal without persistence.
    let r = g.direct(
        BLKIF_OP_READ,
        0,
        &[
            Segment::whole_page(p[0]),
            Segment::whole_page(p[0]),
            Segment::whole_page(p[1]),
        ],
    );
    let id = g.push(&r);
    assert_eq!(status_of(&g.serve(), id), BLKIF_RSP_OKAY);
    assert_eq!(g.host.live_mappings, 0);
    assert_eq!(g.inst.stats().get(Stat::PersistentGrantHits), 0);
}

#[test]
fn discard_reaches_the_store_and_is_validated() {
    let mut g = connect_with(Tunables::default(), medium(8192, true, false), &[]);
    assert_eq!(be(&g, "feature-discard").as_deref(), Some("1"));
    assert_eq!(be(&g, "discard-granularity").as_deref(), Some("4096"));
    assert_eq!(be(&g, "discard-secure").as_deref(), Some("0"));
    let src = g.pages(4, 0x5e, true);
    let segs: Vec<Segment> = src.iter().copied().map(Segment::whole_page).collect();
    let w = g.direct(BLKIF_OP_WRITE, 0, &segs);
    let wid = g.push(&w);
    let d = g.discard(8, 16, 0);
    let did = g.push(&d);
    let rsps = g.serve();
    assert_eq!(status_of(&rsps, wid), BLKIF_RSP_OKAY);
    assert_eq!(status_of(&rsps, did), BLKIF_RSP_OKAY);
    assert_eq!(
        rsps.iter().find(|r| r.id == did).unwrap().operation,
        BLKIF_OP_DISCARD
    );
    // Pages 1 and 2 were discarded (zeroed by this store), 0 and 3 kept.
    assert_eq!(&g.host.medium[..PAGE_SIZE], g.host.page(src[0]));
    assert!(g.host.medium[PAGE_SIZE..3 * PAGE_SIZE]
        .iter()
        .all(|&b| b == 0));
    assert_eq!(
        &g.host.medium[3 * PAGE_SIZE..4 * PAGE_SIZE],
        g.host.page(src[3])
    );
    assert_eq!(g.inst.stats().get(Stat::DiscardReqs), 1);

    let beyond = g.discard(8192 - 8, 16, 0);
    let beyond = g.push(&beyond);
    let secure = g.discard(0, 8, BLKIF_DISCARD_SECURE);
    let secure = g.push(&secure);
    let wrapping = g.discard(u64::MAX - 7, 16, 0);
    let wrapping = g.push(&wrapping);
    let rsps = g.serve();
    assert_eq!(status_of(&rsps, beyond), BLKIF_RSP_ERROR);
    assert_eq!(status_of(&rsps, secure), BLKIF_RSP_EOPNOTSUPP);
    assert_eq!(status_of(&rsps, wrapping), BLKIF_RSP_ERROR);
}

#[test]
fn discard_follows_store_and_toolstack() {
    // The store cannot: not offered, refused as not supported.
    let mut g = connect_with(Tunables::default(), medium(8192, false, false), &[]);
    assert_eq!(be(&g, "feature-discard").as_deref(), Some("0"));
    let d = g.discard(0, 8, 0);
    let id = g.push(&d);
    assert_eq!(status_of(&g.serve(), id), BLKIF_RSP_EOPNOTSUPP);

    // The toolstack said discard-enable = 0.
    let mut host = FakeHost::new(FakeConfig {
        medium: medium(8192, true, true),
        ..FakeConfig::default()
    });
    host.standard_nodes(true, false);
    host.xs_set(&format!("{BE_PATH}/discard-enable"), "0");
    let _front = host.frontend_ring(Abi::X86_64, 1);
    host.set_frontend_state(XenbusState::Initialised);
    let mut inst = Instance::new(BE_PATH, &Tunables::default()).unwrap();
    inst.attach(&mut host);
    assert_eq!(inst.state(), XenbusState::Connected);
    assert_eq!(
        host.xs_get(&format!("{BE_PATH}/feature-discard")),
        Some("0")
    );

    // A store that can erase securely offers it.
    let g = connect_with(Tunables::default(), medium(8192, true, true), &[]);
    assert_eq!(be(&g, "discard-secure").as_deref(), Some("1"));
}

#[test]
fn resize_while_connected() {
    let mut g = connect(&[]);
    assert_eq!(be(&g, "sectors").as_deref(), Some("8192"));
    let p = g.pages(1, 0, false);
    // Shrink: the new size is published, state is re-written for the
    // front-end's watch, and the lost end refuses I/O.
    g.host.xs_set(&format!("{BE_PATH}/state"), "0");
    g.host.resize_medium(Sectors(4096));
    g.inst.medium_changed(&mut g.host);
    assert_eq!(be(&g, "sectors").as_deref(), Some("4096"));
    assert_eq!(be(&g, "state").as_deref(), Some("4"));
    assert_eq!(g.inst.stats().get(Stat::Resizes), 1);
    assert_eq!(g.inst.stats().get(Stat::MediumSectors), 4096);
    let r = g.direct(BLKIF_OP_READ, 4096, &[Segment::whole_page(p[0])]);
    let beyond = g.push(&r);
    let r = g.direct(BLKIF_OP_READ, 4088, &[Segment::whole_page(p[0])]);
    let inside = g.push(&r);
    let rsps = g.serve();
    assert_eq!(status_of(&rsps, beyond), BLKIF_RSP_ERROR);
    assert_eq!(status_of(&rsps, inside), BLKIF_RSP_OKAY);
    // Grow: the new end serves.
    g.host.resize_medium(Sectors(16384));
    g.inst.medium_changed(&mut g.host);
    assert_eq!(be(&g, "sectors").as_deref(), Some("16384"));
    let r = g.direct(BLKIF_OP_WRITE, 16376, &[Segment::whole_page(p[0])]);
    let id = g.push(&r);
    assert_eq!(status_of(&g.serve(), id), BLKIF_RSP_OKAY);
    // No change, no publication.
    g.inst.medium_changed(&mut g.host);
    assert_eq!(g.inst.stats().get(Stat::Resizes), 2);
}

#[test]
fn spurious_kicks_are_counted_and_throttled() {
    let mut g = connect(&[]);
    for _ in 0..20 {
        g.kick();
    }
    let s = g.inst.stats();
    assert_eq!(s.get(Stat::SpuriousEvents), 20);
    assert!(s.get(Stat::DelayedEois) >= 15);
    assert_eq!(g.host.eois, 20);
    assert_eq!(g.host.max_eoi_delay, 64);
    assert_eq!(g.host.last_eoi_delay, 64);
    // A kick with work resets the backoff.
    let p = g.pages(1, 0, false);
    let r = g.direct(BLKIF_OP_READ, 0, &[Segment::whole_page(p[0])]);
    let id = g.push(&r);
    assert_eq!(status_of(&g.serve(), id), BLKIF_RSP_OKAY);
    assert_eq!(g.host.last_eoi_delay, 0);
    g.kick();
    assert_eq!(g.host.last_eoi_delay, 0, "within the grace again");
}

#[test]
fn a_vanished_store_closes_the_connection() {
    let mut g = connect(&[]);
    let p = g.pages(1, 0, false);
    g.host.faults.ios = 1;
    g.host.faults.io_error = Some(IoError::Gone);
    let r = g.direct(BLKIF_OP_READ, 0, &[Segment::whole_page(p[0])]);
    assert_eq!(g.answer(&r), BLKIF_RSP_ERROR);
    assert_eq!(g.inst.state(), XenbusState::Closing);
    assert_eq!(be(&g, "state").as_deref(), Some("5"));
    let err = g
        .host
        .xs_get(&format!("error{BE_PATH}/error"))
        .map(str::to_owned);
    assert!(
        err.as_deref().is_some_and(|e| e.starts_with("6 ")),
        "{err:?}"
    );
    assert!(!g.host.ring_mapped());
}

#[test]
fn bad_queue_counts_refuse_the_connection() {
    for (n, ok) in [
        ("0", false),
        ("5", false),
        ("1", true),
        ("99999999999", false),
    ] {
        let mut host = FakeHost::new(FakeConfig::default());
        host.standard_nodes(true, false);
        let _front = host.frontend_ring(Abi::X86_64, 1);
        host.xs_set(&format!("{FE_PATH}/multi-queue-num-queues"), n);
        host.set_frontend_state(XenbusState::Initialised);
        let mut inst = Instance::new(BE_PATH, &Tunables::default()).unwrap();
        inst.attach(&mut host);
        assert_eq!(
            host.xs_get(&format!("{BE_PATH}/multi-queue-max-queues")),
            Some("4")
        );
        if ok {
            assert_eq!(inst.state(), XenbusState::Connected, "{n}");
            assert_eq!(inst.stats().get(Stat::NumQueues), 1);
        } else {
            assert_eq!(inst.state(), XenbusState::Closing, "{n}");
            assert!(!host.ring_mapped() && !host.window_reserved());
        }
    }
}

/// A platform that opens `params` itself waits for the toolstack's hotplug
/// script before connecting a front-end that is already there: found with
/// `xl block-attach` in the real Xen host, where xbb-serve connected the
/// running guest before libxl saw InitWait and libxl reported failure.
#[test]
fn hotplug_script_gates_the_connection_when_the_platform_asks() {
    // What ends the wait, and a value of the same node that does not:
    // Linux's scripts (and block-xbb) write hotplug-status; FreeBSD's
    // `block` script (libxl in a FreeBSD dom0, `xl devd` in a driver
    // domain) writes physical-device-path and nothing else.
    const ENDS: [(&str, &str, &str); 2] = [
        ("hotplug-status", "error", "connected"),
        ("physical-device-path", "", "/dev/md0"),
    ];
    for (gate, script) in [(true, true), (true, false), (false, true)] {
        for (node, not_yet, done) in ENDS {
            let mut host = FakeHost::new(FakeConfig {
                medium: medium(8192, false, false),
                max_grants: 1200,
                ..FakeConfig::default()
            });
            host.hotplug_gate = gate;
            host.standard_nodes(true, false);
            if script {
                host.xs_set(&format!("{BE_PATH}/script"), "/etc/xen/scripts/block");
            }
            let _front = host.frontend_ring(Abi::X86_64, 1);
            host.set_frontend_state(XenbusState::Initialised);
            let mut inst = Instance::new(BE_PATH, &Tunables::default()).unwrap();
            inst.attach(&mut host);
            if gate && script {
                assert_eq!(inst.state(), XenbusState::InitWait, "waits for the script");
                host.xs_set(&format!("{BE_PATH}/{node}"), not_yet);
                inst.frontend_changed(&mut host);
                assert_eq!(
                    inst.state(),
                    XenbusState::InitWait,
                    "not on {node}={not_yet:?}"
                );
                host.xs_set(&format!("{BE_PATH}/{node}"), done);
                inst.frontend_changed(&mut host);
            }
            assert_eq!(
                inst.state(),
                XenbusState::Connected,
                "gate={gate} script={script} {node}: {:?}",
                inst.last_error()
            );
        }
    }
}
