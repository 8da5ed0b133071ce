//! What a connection gets: the arithmetic that turns the back-end's
//! tunables (`hw.xbb.*`), the front-end's vetted transport parameters and
//! the medium into the limits, pool sizes, window and features of the
//! connection — `io/blkif.h`'s "Feature and Parameter Negotiation" once both
//! ends have spoken.
//!
//! [`negotiate`] is a pure function: it reads nothing, maps nothing and
//! allocates nothing, so every rule here is tested on its own; the instance
//! then sets the connection up exactly as the result says.

use crate::abi::{BLKIF_MAX_INDIRECT_PAGES_PER_REQUEST, BLKIF_MAX_SEGMENTS_PER_REQUEST};
use crate::connect::{ConnectError, Discard, Features, FrontendParams};
use crate::host::{MediumInfo, PAGE_SIZE};
use crate::queue::QueueShape;
use crate::request::{self, Limits};
use crate::stats::{Stat, Stats, Tunable, Tunables};
use crate::units::SectorSize;

/// The largest mapping window (per queue) sized automatically: 64 MiB.
/// `hw.xbb.kva_pages` sets any size.
pub const AUTO_KVA_MAX_PAGES: usize = 16384;

/// The terms of one connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Terms {
    /// The sizes of every queue.
    pub shape: QueueShape,
    /// Window pages of each queue (its transient range and its cache);
    /// queue `i` starts at window page `i * per_queue`.
    pub per_queue: u32,
    /// The whole data window, every queue's share.
    pub window: u32,
    /// What requests are checked against.
    pub limits: Limits,
    /// What is published with Connected.
    pub features: Features,
}

/// Negotiates a connection: `t` the back-end's tunables, `fe` the
/// front-end's vetted parameters, `medium` the open store (its mode
/// already the toolstack's), `discard_enable` the toolstack's switch.
///
/// - Requests in service per queue: the ring's size, at most
///   `max_requests`.
/// - Indirect segments: `max_indirect_segments`, within the protocol's
///   ceiling and the largest I/O (`max_request_size`); none when that
///   leaves no more than a plain request carries.
/// - The transient window range per queue: `kva_pages`, or room for every
///   slot's largest request up to [`AUTO_KVA_MAX_PAGES`]; never less than
///   one largest I/O. Persistent grants add their cache's pages.
/// - Flush and barrier when the store can flush; discard when it can, is
///   writable and the toolstack allows it; persistent grants when both
///   ends want them.
///
/// [`ConnectError::OutOfRange`] for a ring size the ABI cannot hold,
/// [`ConnectError::NoMemory`] when the window's size overflows.
pub fn negotiate(
    t: &Tunables,
    fe: &FrontendParams,
    medium: &MediumInfo,
    discard_enable: bool,
) -> Result<Terms, ConnectError> {
    let ring_size = fe
        .abi
        .ring_size(fe.ring_pages)
        .ok_or(ConnectError::OutOfRange {
            key: "ring-page-order",
            value: u64::from(fe.ring_pages),
        })?;
    let nreq = (ring_size as usize).min(t.get(Tunable::MaxRequests) as usize);
    let request_pages = t.get(Tunable::MaxRequestSize) as usize / PAGE_SIZE;
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
    let per_queue = shape.window_pages().ok_or(ConnectError::NoMemory)?;
    let window = per_queue
        .checked_mul(fe.num_queues())
        .ok_or(ConnectError::NoMemory)?;

    let flush = medium.can_flush;
    let discard = medium.can_discard && !medium.read_only && discard_enable;
    let limits = Limits {
        max_segments: BLKIF_MAX_SEGMENTS_PER_REQUEST as u32,
        max_indirect_segments: max_indirect as u32,
        medium_sectors: medium.sectors,
        // An invalid size fails publish_connected, which checks it, before
        // any request is served.
        sector_size: SectorSize::new(medium.sector_size).unwrap_or_default(),
        read_only: medium.read_only,
        flush,
        barrier: flush,
        discard,
        secure_discard: discard && medium.can_secure_discard,
    };
    let features = Features {
        flush,
        barrier: flush,
        persistent,
        max_indirect_segments: max_indirect as u32,
        discard: discard.then_some(Discard {
            granularity: if medium.discard_granularity == 0 {
                medium.sector_size
            } else {
                medium.discard_granularity
            },
            alignment: medium.discard_alignment,
            secure: limits.secure_discard,
        }),
    };
    Ok(Terms {
        shape,
        per_queue,
        window,
        limits,
        features,
    })
}

impl Terms {
    /// Records the negotiated limits in the `dev.xbb.N.*` table.
    pub fn record(&self, fe: &FrontendParams, medium: &MediumInfo, s: &mut Stats) {
        s.set(Stat::MaxRequests, self.shape.nreq as u64);
        s.set(Stat::MaxRequestSegments, self.shape.max_segs as u64);
        s.set(
            Stat::MaxRequestSize,
            (self.shape.max_pages * PAGE_SIZE) as u64,
        );
        s.set(Stat::RingPages, u64::from(fe.ring_pages));
        s.set(Stat::RingOrder, u64::from(fe.ring_pages.trailing_zeros()));
        s.set(Stat::NumQueues, u64::from(fe.num_queues()));
        s.set(
            Stat::MaxIndirectSegments,
            u64::from(self.features.max_indirect_segments),
        );
        s.set(Stat::PersistentGrants, u64::from(self.features.persistent));
        s.set(Stat::MaxPersistentGrants, u64::from(self.shape.cache_pages));
        s.set(Stat::Discard, u64::from(self.features.discard.is_some()));
        s.set(Stat::MediumSectors, medium.sectors.0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::abi::Abi;
    use crate::connect::QueueParams;
    use crate::units::Sectors;
    use alloc::vec;

    fn frontend(abi: Abi, ring_pages: u32, queues: usize, persistent: bool) -> FrontendParams {
        FrontendParams {
            ring_pages,
            abi,
            queues: vec![
                QueueParams {
                    ring_refs: [0; 32],
                    event_channel: 1,
                };
                queues
            ],
            persistent,
        }
    }

    fn medium() -> MediumInfo {
        MediumInfo {
            sectors: Sectors(1 << 20),
            sector_size: 512,
            physical_sector_size: 512,
            can_flush: true,
            can_discard: true,
            discard_granularity: 0,
            discard_alignment: 0,
            ..MediumInfo::default()
        }
    }

    fn tunables(set: &[(Tunable, u64)]) -> Tunables {
        let mut t = Tunables::default();
        for &(k, v) in set {
            t.set(k, v).unwrap();
        }
        t
    }

    #[test]
    fn defaults_size_every_slot_for_its_largest_request() {
        let fe = frontend(Abi::X86_64, 1, 1, false);
        let n = negotiate(&Tunables::default(), &fe, &medium(), true).unwrap();
        // A one-page x86_64 ring holds 32 requests; 1 MiB I/Os offer 256
        // indirect segments.
        assert_eq!(n.shape.nreq, 32);
        assert_eq!(n.shape.max_segs, 256);
        assert_eq!(n.shape.max_pages, 256);
        assert_eq!(n.shape.kva_pages, 32 * 256);
        assert_eq!(n.shape.cache_pages, 0);
        assert_eq!(n.shape.indirect_bytes, PAGE_SIZE, "512 descriptors a page");
        assert_eq!((n.per_queue, n.window), (8192, 8192));
        assert_eq!(n.features.max_indirect_segments, 256);
        assert!(n.features.flush && n.features.barrier && !n.features.persistent);
        assert_eq!(
            n.features.discard,
            Some(Discard {
                granularity: 512,
                alignment: 0,
                secure: false
            })
        );
        assert_eq!(n.limits.max_segments, 11);
        assert_eq!(n.limits.medium_sectors, Sectors(1 << 20));
    }

    #[test]
    fn the_window_is_capped_but_holds_one_largest_io() {
        let fe = frontend(Abi::X86_64, 32, 1, false);
        let n = negotiate(&Tunables::default(), &fe, &medium(), true).unwrap();
        assert_eq!(n.shape.nreq, 1024);
        assert_eq!(n.shape.kva_pages as usize, AUTO_KVA_MAX_PAGES);
        let t = tunables(&[(Tunable::KvaPages, 3), (Tunable::MaxRequestSize, 45056)]);
        let n = negotiate(&t, &fe, &medium(), true).unwrap();
        assert_eq!(n.shape.max_pages, 11, "no indirect: plain requests");
        assert_eq!(n.shape.kva_pages, 11, "raised to one largest I/O");
    }

    #[test]
    fn indirect_segments_fit_the_largest_io_or_are_not_offered() {
        let fe = frontend(Abi::X86_32, 1, 1, false);
        let t = tunables(&[(Tunable::MaxRequestSize, 65536)]);
        let n = negotiate(&t, &fe, &medium(), true).unwrap();
        assert_eq!(n.features.max_indirect_segments, 16);
        assert_eq!(n.shape.indirect_bytes, PAGE_SIZE);
        for off in [
            tunables(&[(Tunable::MaxIndirectSegments, 0)]),
            tunables(&[(Tunable::MaxIndirectSegments, 11)]),
            tunables(&[(Tunable::MaxRequestSize, 45056)]),
        ] {
            let n = negotiate(&off, &fe, &medium(), true).unwrap();
            assert_eq!(n.features.max_indirect_segments, 0);
            assert_eq!(n.limits.max_indirect_segments, 0);
            assert_eq!(n.shape.max_segs, 11);
            assert_eq!(n.shape.indirect_bytes, 0);
        }
    }

    #[test]
    fn persistent_grants_need_both_ends_and_add_their_pages() {
        let t = Tunables::default();
        let both = frontend(Abi::X86_64, 1, 4, true);
        let n = negotiate(&t, &both, &medium(), true).unwrap();
        assert!(n.features.persistent);
        assert_eq!(n.shape.cache_pages, 1056);
        assert_eq!(n.per_queue, 8192 + 1056);
        assert_eq!(n.window, 4 * (8192 + 1056));
        let off = tunables(&[(Tunable::MaxPersistentGrants, 0)]);
        let n = negotiate(&off, &both, &medium(), true).unwrap();
        assert!(!n.features.persistent);
        assert_eq!(n.shape.cache_pages, 0);
        let fe_off = frontend(Abi::X86_64, 1, 1, false);
        assert!(
            !negotiate(&t, &fe_off, &medium(), true)
                .unwrap()
                .features
                .persistent
        );
    }

    #[test]
    fn features_follow_the_medium_and_the_toolstack() {
        let fe = frontend(Abi::X86_64, 1, 1, false);
        let t = Tunables::default();
        let m = MediumInfo {
            can_flush: false,
            can_secure_discard: true,
            discard_granularity: 4096,
            discard_alignment: 512,
            ..medium()
        };
        let n = negotiate(&t, &fe, &m, true).unwrap();
        assert!(!n.features.flush && !n.limits.barrier);
        assert_eq!(
            n.features.discard,
            Some(Discard {
                granularity: 4096,
                alignment: 512,
                secure: true
            })
        );
        assert!(n.limits.secure_discard);
        let n = negotiate(&t, &fe, &m, false).unwrap();
        assert_eq!(n.features.discard, None, "toolstack's discard-enable=0");
        assert!(!n.limits.discard && !n.limits.secure_discard);
        let ro = MediumInfo {
            read_only: true,
            ..m
        };
        let n = negotiate(&t, &fe, &ro, true).unwrap();
        assert_eq!(n.features.discard, None, "read-only media never discard");
        assert!(n.limits.read_only);
    }

    #[test]
    fn impossible_sizes_are_refused() {
        let t = Tunables::default();
        let fe = frontend(Abi::X86_64, 3, 1, false);
        assert_eq!(
            negotiate(&t, &fe, &medium(), true),
            Err(ConnectError::OutOfRange {
                key: "ring-page-order",
                value: 3
            })
        );
        let huge = tunables(&[
            (Tunable::KvaPages, 1 << 20),
            (Tunable::MaxPersistentGrants, 65536),
        ]);
        let many = frontend(Abi::X86_64, 1, 16, true);
        let n = negotiate(&huge, &many, &medium(), true).unwrap();
        assert_eq!(n.window, 16 * ((1 << 20) + 65536));
        let mut fe = frontend(Abi::X86_64, 1, 1, true);
        fe.queues = vec![fe.queues[0]; 5000];
        assert_eq!(
            negotiate(&huge, &fe, &medium(), true),
            Err(ConnectError::NoMemory)
        );
    }

    #[test]
    fn terms_are_recorded_in_the_table() {
        let fe = frontend(Abi::X86_64, 2, 2, true);
        let n = negotiate(&Tunables::default(), &fe, &medium(), true).unwrap();
        let mut s = Stats::default();
        n.record(&fe, &medium(), &mut s);
        assert_eq!(s.get(Stat::MaxRequests), 64);
        assert_eq!(s.get(Stat::MaxRequestSegments), 256);
        assert_eq!(s.get(Stat::MaxRequestSize), 1 << 20);
        assert_eq!((s.get(Stat::RingPages), s.get(Stat::RingOrder)), (2, 1));
        assert_eq!(s.get(Stat::NumQueues), 2);
        assert_eq!(s.get(Stat::MaxIndirectSegments), 256);
        assert_eq!(s.get(Stat::PersistentGrants), 1);
        assert_eq!(s.get(Stat::MaxPersistentGrants), 1056);
        assert_eq!(s.get(Stat::Discard), 1);
        assert_eq!(s.get(Stat::MediumSectors), 1 << 20);
    }
}
