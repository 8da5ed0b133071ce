//! No allocation on the I/O path (DESIGN.md, "Rules every room keeps").
//!
//! A counting global allocator counts the allocations made by this thread
//! while counting is switched on. An instance is connected over the fake
//! host (attach, offer, the front-end's keys, Connected) and warmed up;
//! then many rounds of reads, writes, coalesced runs, flushes, barriers,
//! invalid requests, a request-pool shortage and a window shortage go
//! through `Instance::run`, the store completions and the responses with
//! counting on. The count must be exactly zero and every byte read back
//! must be the byte written; with an in-flight journal kept (issue 16) as
//! without.

use xbb::abi::{
    encode_segment, Abi, BlkifRequest, RequestBody, Segment, BLKIF_OP_FLUSH_DISKCACHE,
    BLKIF_OP_INDIRECT, BLKIF_OP_READ, BLKIF_OP_WRITE, BLKIF_OP_WRITE_BARRIER, BLKIF_RSP_EOPNOTSUPP,
    BLKIF_RSP_ERROR, BLKIF_RSP_OKAY, SEGMENT_SIZE,
};
use xbb::host::{GrantRef, XenbusState, PAGE_SIZE};
use xbb::instance::Instance;
use xbb::ring::FrontRing;
use xbb::stats::{Stat, Tunable, Tunables};
use xbb_testing::alloc::{allocations_in, Counting};
use xbb_testing::guest::request as req;
use xbb_testing::{FakeConfig, FakeHost, FE_PATH};

// ---------------------------------------------------------------------------
// The counting allocator

#[global_allocator]
static ALLOCATOR: Counting = Counting;

// ---------------------------------------------------------------------------
// The guest

/// Ids say what response the request must get.
const EXPECT_OKAY: u64 = 0;
const EXPECT_ERROR: u64 = 1;
const EXPECT_NOTSUPP: u64 = 2;

fn id(expect: u64, seq: u64) -> u64 {
    expect << 48 | seq
}

/// The byte written at `offset` of page `page` in round `round`.
fn pattern(round: u64, page: usize, offset: usize) -> u8 {
    (round as u8).wrapping_mul(31) ^ (page as u8).wrapping_mul(7) ^ (offset as u8)
}

struct Guest {
    host: FakeHost,
    inst: Instance,
    front: FrontRing,
    /// Pages written from.
    src: [GrantRef; 32],
    /// Pages read into.
    dst: [GrantRef; 32],
    /// Granted read-only.
    ro: GrantRef,
    /// An indirect descriptor page naming `src[..16]` (granted read-only).
    ind_src: GrantRef,
    /// An indirect descriptor page naming `dst[..16]`.
    ind_dst: GrantRef,
    /// The front-end negotiated persistent grants.
    persistent: bool,
    seq: u64,
    pushed: u64,
    answered: u64,
}

impl Guest {
    fn push(&mut self, r: &BlkifRequest) {
        assert!(self.front.push_request(r), "ring full");
        self.pushed += 1;
    }

    fn next_id(&mut self, expect: u64) -> u64 {
        self.seq += 1;
        id(expect, self.seq)
    }

    /// Pushes a request over `pages` that must succeed.
    fn push_okay(&mut self, op: u8, sector: u64, pages: &[GrantRef]) {
        let id = self.next_id(EXPECT_OKAY);
        self.push(&req(op, id, sector, pages));
    }

    /// Checks that the first `n` destination pages hold round `round`'s
    /// data.
    fn check_read_back(&self, round: u64, n: usize, what: &str) {
        for p in 0..n {
            let got = self.host.page(self.dst[p]);
            for (o, &b) in got.iter().enumerate() {
                assert_eq!(
                    b,
                    pattern(round, p, o),
                    "{what}: round {round} page {p} byte {o}"
                );
            }
        }
    }

    /// Publishes, kicks, completes everything, takes every response and
    /// checks each status against its id.
    fn serve(&mut self) {
        self.front.publish_requests();
        self.inst.event(&mut self.host, 0);
        loop {
            self.host.complete_all(&mut self.inst);
            if self.host.run_deferred(&mut self.inst) == 0 {
                break;
            }
        }
        while let Some(rsp) = self.front.take_response().expect("back-end broke the ring") {
            let want = match rsp.id >> 48 {
                EXPECT_OKAY => BLKIF_RSP_OKAY,
                EXPECT_ERROR => BLKIF_RSP_ERROR,
                _ => BLKIF_RSP_EOPNOTSUPP,
            };
            assert_eq!(rsp.status, want, "response to {:#x}", rsp.id);
            self.answered += 1;
        }
        assert_eq!(self.answered, self.pushed, "every request answered");
        assert_eq!(self.host.pending(), 0);
        assert!(self.inst.is_idle());
    }

    /// One round of every kind of traffic; `round` varies data and place.
    fn round(&mut self, round: u64) {
        let base = (round % 16) * 128;
        // Sixteen source pages of this round's data.
        for (p, &g) in self.src[..16].iter().enumerate() {
            for (o, b) in self.host.page_mut(g).iter_mut().enumerate() {
                *b = pattern(round, p, o);
            }
        }
        for &g in &self.dst[..16] {
            self.host.page_mut(g).fill(0);
        }

        // A coalescable run of four 2-page writes, then a flush, a
        // barrier with data, and invalid requests.
        let src = self.src;
        for k in 0..4 {
            self.push_okay(BLKIF_OP_WRITE, base + 16 * k as u64, &src[2 * k..2 * k + 2]);
        }
        let id = self.next_id(EXPECT_OKAY);
        self.push(&req(BLKIF_OP_FLUSH_DISKCACHE, id, 0, &[]));
        let id = self.next_id(EXPECT_OKAY);
        self.push(&req(BLKIF_OP_WRITE_BARRIER, id, base + 64, &src[8..9]));
        let id = self.next_id(EXPECT_ERROR);
        self.push(&req(BLKIF_OP_READ, id, 0, &[])); // no segments
        let id = self.next_id(EXPECT_ERROR);
        self.push(&req(BLKIF_OP_READ, id, u64::MAX - 7, &src[..1])); // off the end
        let id = self.next_id(EXPECT_NOTSUPP);
        self.push(&req(0xee, id, 0, &src[..1]));
        let id = self.next_id(EXPECT_ERROR);
        let ro = self.ro;
        self.push(&req(BLKIF_OP_READ, id, 0, &[ro])); // read into a read-only grant
        self.serve();

        // Read the nine pages back, coalesced: three 3-page reads.
        let dst = self.dst;
        for k in 0..3 {
            self.push_okay(BLKIF_OP_READ, base + 24 * k as u64, &dst[3 * k..3 * k + 3]);
        }
        self.serve();
        self.check_read_back(round, 9, "coalesced");

        // Coalesced again, the middle read into a read-only grant: it
        // alone fails, the two around it are served as two runs.
        for &g in &self.dst[..3] {
            self.host.page_mut(g).fill(0);
        }
        self.push_okay(BLKIF_OP_READ, base, &dst[..1]);
        let id = self.next_id(EXPECT_ERROR);
        self.push(&req(BLKIF_OP_READ, id, base + 8, &[ro]));
        self.push_okay(BLKIF_OP_READ, base + 16, &dst[2..3]);
        self.serve();
        for p in [0, 2] {
            let got = self.host.page(self.dst[p]);
            assert!(
                got.iter()
                    .enumerate()
                    .all(|(o, &b)| b == pattern(round, p, o)),
                "run around a failed request: round {round} page {p}"
            );
        }

        // More requests than the pool holds (8): non-contiguous reads.
        let shortages = self.inst.stats().get(Stat::RequestShortages);
        for k in 0..12 {
            self.push_okay(BLKIF_OP_READ, 2048 + 40 * k as u64, &dst[16 + k..17 + k]);
        }
        self.serve();
        assert!(self.inst.stats().get(Stat::RequestShortages) > shortages);

        // One indirect write of sixteen pages, and one indirect read back.
        let at = 2560 + (round % 4) * 128;
        let id = self.next_id(EXPECT_OKAY);
        self.push(&indirect(BLKIF_OP_WRITE, id, at, self.ind_src));
        self.serve();
        for &g in &self.dst[..16] {
            self.host.page_mut(g).fill(0);
        }
        let id = self.next_id(EXPECT_OKAY);
        self.push(&indirect(BLKIF_OP_READ, id, at, self.ind_dst));
        self.serve();
        self.check_read_back(round, 16, "indirect");

        // Two 16-page runs through a 24-page window: the second waits
        // (unless the pages are persistent grants, which need no window).
        let kva = self.inst.stats().get(Stat::KvaShortages);
        for k in 0..4 {
            self.push_okay(BLKIF_OP_WRITE, base + 32 * k as u64, &src[4 * k..4 * k + 4]);
        }
        for k in 0..4 {
            self.push_okay(BLKIF_OP_READ, 3072 + 32 * k as u64, &dst[4 * k..4 * k + 4]);
        }
        self.serve();
        if !self.persistent {
            assert!(self.inst.stats().get(Stat::KvaShortages) > kva);
        }
    }
}

/// An indirect request over sixteen whole pages listed on page `desc`.
fn indirect(op: u8, id: u64, sector: u64, desc: GrantRef) -> BlkifRequest {
    BlkifRequest {
        operation: BLKIF_OP_INDIRECT,
        id,
        body: RequestBody::Indirect {
            indirect_op: op,
            nr_segments: 16,
            handle: 0,
            sector_number: sector,
            indirect_grefs: [desc, 0, 0, 0, 0, 0, 0, 0],
        },
    }
}

/// A descriptor page naming `pages` as whole-page segments.
fn descriptors(pages: &[GrantRef]) -> Vec<u8> {
    let mut out = vec![0u8; pages.len() * SEGMENT_SIZE];
    for (&gref, chunk) in pages.iter().zip(out.chunks_mut(SEGMENT_SIZE)) {
        encode_segment(
            &Segment {
                gref,
                first_sect: 0,
                last_sect: 7,
            },
            chunk,
        );
    }
    out
}

fn connected_guest(persistent: bool, journal: bool) -> Guest {
    let mut host = FakeHost::new(FakeConfig::default());
    host.journals = journal;
    host.standard_nodes(true, false);
    let front = host.frontend_ring(Abi::X86_64, 1);
    if persistent {
        host.xs_set(&format!("{FE_PATH}/feature-persistent"), "1");
    }
    let src: [GrantRef; 32] = std::array::from_fn(|_| host.grant(&[], false));
    let dst: [GrantRef; 32] = std::array::from_fn(|_| host.grant(&[], false));
    let ro = host.grant(&[0x5a; PAGE_SIZE], true);
    let ind_src = host.grant(&descriptors(&src[..16]), true);
    let ind_dst = host.grant(&descriptors(&dst[..16]), true);
    host.set_frontend_state(XenbusState::Initialised);

    let mut t = Tunables::default();
    t.set(Tunable::MaxRequests, 8).unwrap();
    t.set(Tunable::MaxRequestSize, 16 * PAGE_SIZE as u64)
        .unwrap();
    t.set(Tunable::KvaPages, 24).unwrap();
    let inst = host.attach_connected(&t);
    assert_eq!(host.backend_state(), Some(XenbusState::Connected.as_str()));
    assert!(host.ring_mapped() && host.window_reserved());
    Guest {
        host,
        inst,
        front,
        src,
        dst,
        ro,
        ind_src,
        ind_dst,
        persistent,
        seq: 0,
        pushed: 0,
        answered: 0,
    }
}

#[test]
fn counter_counts() {
    let (_, n) = allocations_in(|| std::hint::black_box(Box::new(7u64)));
    assert_eq!(n, 1);
    let (_, n) = allocations_in(|| std::hint::black_box(1 + 1));
    assert_eq!(n, 0);
}

#[test]
fn io_path_does_not_allocate() {
    check_io_path(false, false);
}

#[test]
fn persistent_io_path_does_not_allocate() {
    check_io_path(true, false);
}

#[test]
fn journaled_io_path_does_not_allocate() {
    check_io_path(true, true);
}

fn check_io_path(persistent: bool, journal: bool) {
    let mut g = connected_guest(persistent, journal);
    assert_eq!(g.host.journals_created, u32::from(journal));
    assert_eq!(
        g.inst.stats().get(Stat::PersistentGrants),
        u64::from(persistent)
    );
    g.round(0); // warm-up: nothing is allocated lazily later
    let ((), n) = allocations_in(|| {
        for round in 1..=40 {
            g.round(round);
        }
    });
    assert_eq!(n, 0, "allocations on the I/O path");
    // The rounds did real work.
    let s = g.inst.stats();
    assert!(s.get(Stat::ReqsCoalesced) > 0 && s.get(Stat::FlushReqs) > 0);
    assert!(s.get(Stat::ReqsCompletedWithError) > 0);
    assert!(s.get(Stat::IndirectReqs) > 0);
    assert_eq!(s.get(Stat::PersistentGrantHits) > 0, persistent);
    assert!(g.host.notifications > 0);

    // Teardown gives everything back.
    g.host.set_frontend_state(XenbusState::Closed);
    g.inst.frontend_changed(&mut g.host);
    g.inst.detach(&mut g.host);
    assert!(g.inst.is_detached());
    assert_eq!(g.host.journals_removed, u32::from(journal));
    assert!(!g.host.ring_mapped() && !g.host.window_reserved());
    assert_eq!(g.host.live_mappings, 0);
    assert!(!g.host.store_is_open());
}
