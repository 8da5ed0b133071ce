//! The core's own cost (issue 12, item 4): the workload that
//! `testing/benches/core_cost.rs` counts (instructions per request, under
//! callgrind) and times (requests per second on one core).
//!
//! An instance is connected through the public path: the toolstack's
//! nodes, a one-page x86_64 ring (`io/ring.h`, 32 slots) in shared memory
//! offered as a front-end offers it, the front-end's keys, XenStore
//! negotiation, Connected. Its platform is [`FakeHost`] configured as a
//! null platform ([`FakeConfig::null`]): grants are mapped without work,
//! the store completes each I/O in the next step of the loop without
//! touching a byte. Each [`CostBench::round`] is what a busy front-end
//! and its back-end do: the front-end writes a batch of `io/blkif.h`
//! requests into the ring, publishes them and kicks; the back-end's pass
//! takes them; the platform delivers every completion; the front-end
//! takes the responses and re-arms `rsp_event`.
//!
//! The core is entered only through [`core_event`], [`core_run`] and
//! [`core_complete`], which are never inlined, and calls the platform
//! only through [`FakeHost`]'s `QueueHost` methods, which are never
//! inlined either: a profile that counts inside the first and not inside
//! the second counts the core alone. [`measure_from_here`] marks where
//! warming up ends.

use xbb::abi::{
    encode_segment, Abi, BlkifRequest, RequestBody, Segment, BLKIF_OP_INDIRECT, BLKIF_OP_READ,
    BLKIF_OP_WRITE, BLKIF_RSP_OKAY, SEGMENT_SIZE,
};
use xbb::host::{GrantRef, IoError, IoTag, MediumInfo, XenbusState, PAGE_SIZE};
use xbb::instance::Instance;
use xbb::ring::FrontRing;
use xbb::stats::{Stats, Tunables};
use xbb::units::Sectors;

use crate::host::{FakeConfig, FakeHost, FE_PATH};

/// Requests one kick can carry: the slots of the one-page x86_64 ring.
pub const MAX_DEPTH: usize = 32;

/// The medium: 128 MiB, room for a full ring of 1 MiB requests 2 MiB
/// apart. The null store never touches it.
const MEDIUM_SECTORS: u64 = 1 << 18;

/// One measured workload.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Case {
    /// 4 KiB reads (one segment each), never adjacent: one I/O each.
    Read,
    /// Back-to-back 11-segment (44 KiB) writes: the core coalesces them,
    /// up to `max_request_size` (1 MiB) per I/O.
    CoalescedWrites,
    /// Indirect 1 MiB reads (256 segments on one descriptor page), never
    /// adjacent.
    Indirect,
    /// 4 KiB reads with `feature-persistent` negotiated, every grant
    /// already in the cache.
    PersistentHit,
}

impl Case {
    /// Every case, in the order of the report.
    pub const ALL: [Case; 4] = [
        Case::Read,
        Case::CoalescedWrites,
        Case::Indirect,
        Case::PersistentHit,
    ];

    /// The case's name on the command line and in the report.
    pub fn name(self) -> &'static str {
        match self {
            Case::Read => "read-4k",
            Case::CoalescedWrites => "write-11seg-coalesced",
            Case::Indirect => "indirect-1m",
            Case::PersistentHit => "persistent-hit-4k",
        }
    }

    /// The case called `name`.
    pub fn by_name(name: &str) -> Option<Case> {
        Case::ALL.into_iter().find(|c| c.name() == name)
    }

    /// Data pages (4 KiB) per request.
    pub fn pages(self) -> usize {
        match self {
            Case::Read | Case::PersistentHit => 1,
            Case::CoalescedWrites => 11,
            Case::Indirect => 256,
        }
    }

    /// Sectors from one request's start to the next one's.
    fn stride(self) -> u64 {
        match self {
            // Two pages apart: never back-to-back.
            Case::Read | Case::PersistentHit => 16,
            // Exactly adjacent: coalesced.
            Case::CoalescedWrites => 88,
            // 2 MiB apart.
            Case::Indirect => 4096,
        }
    }
}

/// A connected instance over the null platform, and the batch of requests
/// its front-end sends each round.
pub struct CostBench {
    host: FakeHost,
    inst: Instance,
    front: FrontRing,
    batch: Vec<BlkifRequest>,
    served: u64,
}

impl CostBench {
    /// Connects an instance for `case` whose front-end sends `depth`
    /// requests per kick (1 to [`MAX_DEPTH`]), each over pages of its own.
    pub fn connect(case: Case, depth: usize) -> CostBench {
        assert!((1..=MAX_DEPTH).contains(&depth), "depth {depth}");
        let indirect_pages = if case == Case::Indirect { depth } else { 0 };
        let mut host = FakeHost::new(FakeConfig {
            medium: MediumInfo {
                sectors: Sectors(MEDIUM_SECTORS),
                ..FakeConfig::default().medium
            },
            max_grants: depth * case.pages() + indirect_pages + 8,
            max_in_flight: MAX_DEPTH,
            max_iov: 1,
            null: true,
            ..FakeConfig::default()
        });
        host.standard_nodes(true, false);
        let front = host.frontend_ring(Abi::X86_64, 1);
        if case == Case::PersistentHit {
            host.xs_set(&format!("{FE_PATH}/feature-persistent"), "1");
        }
        let batch = (0..depth)
            .map(|k| {
                let id = k as u64;
                let sector = k as u64 * case.stride();
                let first = host.grant_pages(case.pages());
                let segs: Vec<Segment> = (0..case.pages())
                    .map(|i| Segment::whole_page(first + i as GrantRef))
                    .collect();
                match case {
                    Case::Read | Case::PersistentHit => {
                        BlkifRequest::rw(BLKIF_OP_READ, id, sector, &segs)
                    }
                    Case::CoalescedWrites => BlkifRequest::rw(BLKIF_OP_WRITE, id, sector, &segs),
                    Case::Indirect => indirect_read(&mut host, id, sector, &segs),
                }
            })
            .collect();
        host.set_frontend_state(XenbusState::Initialised);
        let inst = host.attach_connected(&Tunables::default());
        CostBench {
            host,
            inst,
            front,
            batch,
            served: 0,
        }
    }

    /// One round: the front-end writes its batch into the ring, publishes
    /// it and kicks; the back-end serves it (and any run it schedules),
    /// the null store completing every I/O; the front-end takes every
    /// response, each of which must be OKAY, and asks for the next event.
    pub fn round(&mut self) {
        for r in &self.batch {
            assert!(self.front.push_request(r), "ring full");
        }
        self.front.publish_requests();
        core_event(&mut self.inst, &mut self.host);
        loop {
            while let Some((tag, result)) = self.host.take_done() {
                core_complete(&mut self.inst, &mut self.host, tag, result);
            }
            if self.host.schedule_runs == 0 {
                break;
            }
            self.host.schedule_runs -= 1;
            self.host.scheduled_queues = 0;
            core_run(&mut self.inst, &mut self.host);
        }
        let mut answered = 0;
        while let Some(rsp) = self.front.take_response().expect("back-end broke the ring") {
            assert_eq!(rsp.status, BLKIF_RSP_OKAY, "response {rsp:?}");
            answered += 1;
        }
        self.front.final_check_for_responses();
        assert_eq!(answered, self.batch.len(), "every request answered");
        self.served += answered as u64;
    }

    /// Requests served so far.
    pub fn served(&self) -> u64 {
        self.served
    }

    /// The instance's counters.
    pub fn stats(&self) -> Stats {
        self.inst.stats()
    }
}

/// An indirect read of `segs` at `sector`, its descriptors on one page
/// granted read-only (as blkfront grants them).
fn indirect_read(host: &mut FakeHost, id: u64, sector: u64, segs: &[Segment]) -> BlkifRequest {
    let mut desc = vec![0u8; segs.len() * SEGMENT_SIZE];
    assert!(desc.len() <= PAGE_SIZE, "one descriptor page");
    for (s, out) in segs.iter().zip(desc.chunks_mut(SEGMENT_SIZE)) {
        encode_segment(s, out);
    }
    let mut indirect_grefs = [0; 8];
    indirect_grefs[0] = host.grant(&desc, true);
    BlkifRequest {
        operation: BLKIF_OP_INDIRECT,
        id,
        body: RequestBody::Indirect {
            indirect_op: BLKIF_OP_READ,
            nr_segments: segs.len() as u16,
            handle: 0,
            sector_number: sector,
            indirect_grefs,
        },
    }
}

/// The front-end's kick: the core's pass over the ring (`Instance::event`).
#[inline(never)]
pub fn core_event(inst: &mut Instance, host: &mut FakeHost) {
    inst.event(host, 0);
}

/// A run the core scheduled (`Instance::run`).
#[inline(never)]
pub fn core_run(inst: &mut Instance, host: &mut FakeHost) {
    inst.run(host, 0);
}

/// A completion from the store (`Instance::complete`).
#[inline(never)]
pub fn core_complete(
    inst: &mut Instance,
    host: &mut FakeHost,
    tag: IoTag,
    result: Result<(), IoError>,
) {
    inst.complete(host, tag, result);
}

/// Does nothing, visibly: a profiler zeroes its counts on entering it
/// (callgrind's `--zero-before`), after the warm-up rounds.
#[inline(never)]
pub fn measure_from_here() {
    std::hint::black_box(());
}

#[cfg(test)]
mod tests {
    use super::*;
    use xbb::stats::Stat;

    /// A few rounds of every case, served and answered, each doing what
    /// its name says. No number of instructions or of seconds is checked:
    /// speed is measured (`make bench-core`), never asserted.
    #[test]
    fn every_case_serves_what_it_says() {
        for case in Case::ALL {
            let mut b = CostBench::connect(case, 4);
            for _ in 0..3 {
                b.round();
            }
            assert_eq!(b.served(), 12, "{case:?}");
            let s = b.stats();
            assert_eq!(s.get(Stat::ReqsCompleted), 12, "{case:?}");
            assert_eq!(
                s.get(Stat::ReqsCoalesced) > 0,
                case == Case::CoalescedWrites,
                "{case:?}"
            );
            assert_eq!(s.get(Stat::IndirectReqs) > 0, case == Case::Indirect);
            // Four grants missed once, then hit twice each.
            let hits = if case == Case::PersistentHit { 8 } else { 0 };
            assert_eq!(s.get(Stat::PersistentGrantHits), hits, "{case:?}");
            assert_eq!(Case::by_name(case.name()), Some(case));
        }
    }
}
