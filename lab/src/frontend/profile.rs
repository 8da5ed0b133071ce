//! Front-end profiles: what a guest's front-end asks for, modelled on the
//! front-ends in use.

use super::*;

/// How a simulated front-end behaves: which of the front-ends in the field
/// it stands for.
///
/// Every feature a profile asks for is used only when the back-end offers
/// it, exactly as Linux's `xen-blkfront` falls back: without
/// `feature-max-indirect-segments` requests carry at most
/// [`max_segments`](Self::max_segments) inline segments; without
/// `multi-queue-max-queues` one ring with the legacy top-level keys; without
/// the back-end's `feature-persistent` = 1 fresh grants per request; without
/// `feature-discard` no discard is ever sent.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Profile {
    /// A name for reports.
    pub name: String,
    /// The request layout, written to `protocol`.
    pub abi: Abi,
    /// The ring size wanted, as `log2(pages)`; the front-end takes the
    /// lesser of this and the back-end's `max-ring-page-order`.
    pub ring_page_order: u32,
    /// Publish a multi-page ring with the deprecated `num-ring-pages` key
    /// instead of `ring-page-order`.
    pub legacy_num_ring_pages: bool,
    /// Segments per request, at most 11.
    pub max_segments: u8,
    /// Requests kept in flight by [`run_workload`], per queue.
    pub queue_depth: u32,
    /// Write state Connected directly, skipping Initialised.
    pub skip_initialised: bool,
    /// Issue a `BLKIF_OP_FLUSH_DISKCACHE` after every N writes, if offered
    /// (0 = never).
    pub flush_every: u32,
    /// Issue a `BLKIF_OP_WRITE_BARRIER` after every N writes, if offered
    /// (0 = never).
    pub barrier_every: u32,
    /// Segments per request this front-end can describe with
    /// `BLKIF_OP_INDIRECT` (0 = never use indirect requests; at most
    /// [`MAX_INDIRECT_SEGMENTS`]). The front-end uses the lesser of this and
    /// the back-end's `feature-max-indirect-segments`, and sends an indirect
    /// request only for a request of more than
    /// [`max_segments`](Self::max_segments) segments (as `xen-blkfront`
    /// does for more than 11).
    pub max_indirect_segments: u32,
    /// Write `feature-persistent` = 1, and reuse a pool of grants when the
    /// back-end's `feature-persistent` is 1 too.
    pub persistent: bool,
    /// Queues (rings) wanted; 1 = one ring, legacy keys. The front-end
    /// writes `multi-queue-num-queues` = min(this, `multi-queue-max-queues`)
    /// when this is above 1 and the back-end publishes the latter.
    pub queues: u32,
    /// Issue a `BLKIF_OP_DISCARD` over an area written earlier after every
    /// N writes, if `feature-discard` is offered (0 = never).
    pub discard_every: u32,
    /// Set `BLKIF_DISCARD_SECURE` on those discards when `discard-secure` is
    /// offered.
    pub discard_secure: bool,
    /// A front-end aware of large logical sectors: [`run_workload`] rounds
    /// each I/O size up to a multiple of the back-end's `sector-size`
    /// instead of refusing a workload whose size is not one.
    pub sector_aware: bool,
}

impl Profile {
    fn base(name: &str) -> Profile {
        Profile {
            name: name.to_string(),
            abi: Abi::X86_64,
            ring_page_order: 0,
            legacy_num_ring_pages: false,
            max_segments: BLKIF_MAX_SEGMENTS_PER_REQUEST as u8,
            queue_depth: 16,
            skip_initialised: false,
            flush_every: 0,
            barrier_every: 0,
            max_indirect_segments: 0,
            persistent: false,
            queues: 1,
            discard_every: 0,
            discard_secure: false,
            sector_aware: false,
        }
    }

    /// A profile by name: `linux` (x86_64 layout, 4-page ring, queue depth
    /// 32), `legacy` (one-page ring, no `ring-page-order` nor
    /// `num-ring-pages`, queue depth 8), `x86_32` (the i386 layout),
    /// `multipage` (32-page ring), `skipper` (goes straight to Connected),
    /// `flusher` (flush and barrier traffic), `indirect` (256 indirect
    /// segments), `persistent` (persistent grants), `multiqueue` (4 queues),
    /// `discard` (a discard every 16 writes), `foursector` (I/O sized to the
    /// logical sector) and `modern` (what a current Linux guest does:
    /// indirect 256, persistent, 4 queues, a discard every 32 writes and a
    /// flush every 64, sector-aware). `None` for other names.
    pub fn by_name(name: &str) -> Option<Profile> {
        let b = Profile::base(name);
        Some(match name {
            "linux" => Profile {
                ring_page_order: 2,
                queue_depth: 32,
                ..b
            },
            "legacy" => Profile {
                queue_depth: 8,
                ..b
            },
            "x86_32" => Profile {
                abi: Abi::X86_32,
                ring_page_order: 1,
                ..b
            },
            "multipage" => Profile {
                ring_page_order: 5,
                queue_depth: 64,
                ..b
            },
            "skipper" => Profile {
                skip_initialised: true,
                ..b
            },
            "flusher" => Profile {
                ring_page_order: 1,
                flush_every: 8,
                barrier_every: 32,
                ..b
            },
            "indirect" => Profile {
                ring_page_order: 1,
                max_indirect_segments: 256,
                ..b
            },
            "persistent" => Profile {
                ring_page_order: 1,
                persistent: true,
                ..b
            },
            "multiqueue" => Profile {
                ring_page_order: 1,
                queues: 4,
                ..b
            },
            "discard" => Profile {
                discard_every: 16,
                ..b
            },
            "foursector" => Profile {
                ring_page_order: 1,
                sector_aware: true,
                ..b
            },
            "modern" => Profile {
                ring_page_order: 1,
                queue_depth: 32,
                max_indirect_segments: 256,
                persistent: true,
                queues: 4,
                discard_every: 32,
                flush_every: 64,
                sector_aware: true,
                ..b
            },
            _ => return None,
        })
    }

    /// Every name [`Profile::by_name`] knows.
    pub const NAMES: [&'static str; 12] = [
        "linux",
        "legacy",
        "x86_32",
        "multipage",
        "skipper",
        "flusher",
        "indirect",
        "persistent",
        "multiqueue",
        "discard",
        "foursector",
        "modern",
    ];
}
