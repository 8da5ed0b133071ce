//! A guest's block front-end, written from the front-end's side of the
//! protocol: the front-end half of the XenBus handshake of `io/xenbus.h`
//! and `io/blkif.h` ("Front-end Request Transport Parameters": `ring-ref`,
//! `ring-ref%u`, `ring-page-order`, `num-ring-pages`, `event-channel`,
//! `protocol`, `feature-persistent`, `multi-queue-num-queues` with its
//! `queue-%u/` directories), the front ring of `io/ring.h`
//! (`FRONT_RING_INIT`, `RING_PUSH_REQUESTS_AND_CHECK_NOTIFY`,
//! `RING_FINAL_CHECK_FOR_RESPONSES`), the request kinds of `io/blkif.h`
//! (`blkif_request`, `blkif_request_indirect` with its pages of
//! `blkif_request_segment`, `blkif_request_discard`), and grant handling
//! both ways: a non-persistent front-end (`gnttab_grant_foreign_access`
//! before a request, `gnttab_end_foreign_access_ref` after its response)
//! and a persistent one (a pool of pages granted once, reused, ended only
//! after the connection closed).
//!
//! Each feature a [`Profile`] asks for is used only when the back-end
//! offers it (`feature-max-indirect-segments`, `feature-persistent`,
//! `multi-queue-max-queues`, `feature-discard`); otherwise the front-end
//! falls back as Linux's `xen-blkfront` does. [`BackendInfo`] says what was
//! negotiated.
//!
//! A [`Frontend`] is synchronous: a test or a thread drives it. It offers
//! manual requests (for scenarios and validation tests, including hostile
//! ones: raw slots, impossible producer indices, odd XenStore values, and
//! through [`FeatureRequest`] indirect requests of any shape, discards,
//! chosen queues and reused or never-granted grants) and [`run_workload`],
//! which keeps requests in flight on every queue, writes a deterministic
//! pattern, and checks every byte read against a per-sector shadow of what
//! the medium must hold.
//!
//! Every wait has a hang guard ([`DEFAULT_HANG_GUARD`]); it exists so that a
//! broken back-end fails a test instead of hanging it, never to measure time.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use super::ffi::Reservation;
use super::host::Domain;
use super::memory::Gfn;
use super::world::{VbdHandle, World};
use super::xenstore::{WatchId, Xenstored};
use crate::evtchn::EventHub;
use xbb::abi::{
    encode_segment, Abi, BlkifRequest, BlkifResponse, RequestBody, Segment, BLKIF_DISCARD_SECURE,
    BLKIF_MAX_INDIRECT_PAGES_PER_REQUEST, BLKIF_MAX_SEGMENTS_PER_REQUEST, BLKIF_OP_DISCARD,
    BLKIF_OP_FLUSH_DISKCACHE, BLKIF_OP_INDIRECT, BLKIF_OP_READ, BLKIF_OP_WRITE,
    BLKIF_OP_WRITE_BARRIER, BLKIF_RSP_OKAY, SEGMENT_SIZE, XEN_IO_PROTO_ABI_X86_32,
    XEN_IO_PROTO_ABI_X86_64,
};
use xbb::host::{DomId, EvtchnPort, GrantRef, XenbusState, XsError, PAGE_SIZE};
use xbb::keys;
use xbb::ring::FrontRing;

/// The most queues a [`Profile`] may ask for.
pub const MAX_QUEUES: u32 = 64;

/// The default bound on every wait: a guard against hangs only.
pub const DEFAULT_HANG_GUARD: Duration = Duration::from_secs(10);

const SECTOR: usize = 512;
const SECTORS_PER_PAGE: u64 = (PAGE_SIZE / SECTOR) as u64;

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

/// The protocol's ceiling on the segments of one indirect request:
/// `BLKIF_MAX_INDIRECT_PAGES_PER_REQUEST` pages of 8-byte descriptors.
pub const MAX_INDIRECT_SEGMENTS: u32 =
    (BLKIF_MAX_INDIRECT_PAGES_PER_REQUEST * SEGMENTS_PER_INDIRECT_PAGE) as u32;

/// Segment descriptors one indirect page holds.
const SEGMENTS_PER_INDIRECT_PAGE: usize = PAGE_SIZE / SEGMENT_SIZE;

/// What the back-end published, as the front-end read it after Connected,
/// and what the two ends negotiated.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct BackendInfo {
    /// `sectors`: medium size in 512-byte units.
    pub sectors: u64,
    /// `sector-size`.
    pub sector_size: u32,
    /// `physical-sector-size` (`sector_size` when absent).
    pub physical_sector_size: u32,
    /// `info` (`VDISK_*` flags).
    pub info: u32,
    /// `feature-flush-cache`.
    pub flush: bool,
    /// `feature-barrier`.
    pub barrier: bool,
    /// `max-ring-page-order` the back-end offered (0 when absent).
    pub max_ring_page_order: u32,
    /// Pages of each ring this front-end set up.
    pub ring_pages: u32,
    /// Slots of each ring.
    pub ring_size: u32,
    /// Indirect segments per request in use: the lesser of the profile's
    /// and the back-end's `feature-max-indirect-segments` (0: no indirect
    /// requests).
    pub max_indirect_segments: u32,
    /// Persistent grants in use (both ends wrote `feature-persistent` = 1).
    pub persistent: bool,
    /// Queues (rings) set up: 1 unless both ends do multi-queue.
    pub queues: u32,
    /// `feature-discard`.
    pub discard: bool,
    /// `discard-granularity` in bytes (0 when absent).
    pub discard_granularity: u32,
    /// `discard-alignment` in bytes (0 when absent).
    pub discard_alignment: u32,
    /// `discard-secure`.
    pub discard_secure: bool,
}

/// Why a front-end operation failed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FrontendError {
    /// The guest domain does not exist in the world.
    NoGuest(DomId),
    /// The guest ran out of frames.
    NoMemory,
    /// A wait exceeded the hang guard.
    Timeout {
        /// What was awaited.
        what: String,
    },
    /// The back-end went to Closing or Closed instead of connecting.
    Refused {
        /// The back-end state seen.
        state: XenbusState,
        /// The text of the back-end's `error` node, if any.
        error: Option<String>,
    },
    /// A XenStore operation failed.
    Xs {
        /// The path.
        path: String,
        /// The error.
        err: XsError,
    },
    /// A back-end node held something unreadable.
    BadNode {
        /// The path.
        path: String,
    },
    /// The operation needs a connection.
    NotConnected,
    /// The ring has no free slot.
    RingFull,
    /// Ending a grant failed: the back-end still has it mapped.
    GrantBusy {
        /// The grant.
        gref: GrantRef,
    },
    /// A response for an id that is not in flight.
    UnknownResponse {
        /// The id.
        id: u64,
    },
    /// A request or workload that cannot be built.
    Invalid(String),
    /// The simulated platform failed.
    Os(String),
}

impl std::fmt::Display for FrontendError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            FrontendError::NoGuest(d) => write!(f, "no guest domain {d}"),
            FrontendError::NoMemory => f.write_str("guest out of frames"),
            FrontendError::Timeout { what } => write!(f, "timed out waiting for {what}"),
            FrontendError::Refused { state, error } => {
                write!(f, "back-end went to {state:?}")?;
                match error {
                    Some(e) => write!(f, ": {e}"),
                    None => Ok(()),
                }
            }
            FrontendError::Xs { path, err } => write!(f, "XenStore {path}: {err:?}"),
            FrontendError::BadNode { path } => write!(f, "unreadable node {path}"),
            FrontendError::NotConnected => f.write_str("not connected"),
            FrontendError::RingFull => f.write_str("ring full"),
            FrontendError::GrantBusy { gref } => write!(f, "grant {gref} still mapped"),
            FrontendError::UnknownResponse { id } => write!(f, "response for unknown id {id}"),
            FrontendError::Invalid(s) => write!(f, "invalid: {s}"),
            FrontendError::Os(s) => write!(f, "platform: {s}"),
        }
    }
}

impl std::error::Error for FrontendError {}

/// A request built by hand (scenarios, validation tests).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ManualRequest {
    /// `operation` (any byte, valid or not).
    pub operation: u8,
    /// `sector_number`.
    pub sector: u64,
    /// One `(first_sect, last_sect)` per segment; a granted page each (at
    /// most 11 are written into the slot).
    pub segs: Vec<(u8, u8)>,
    /// Writes this `nr_segments` instead of `segs.len()`.
    pub nr_segments_override: Option<u8>,
    /// Grants the pages read-only (the back-end cannot write them).
    pub readonly_grants: bool,
    /// Fills each segment's sectors with this byte before submitting.
    pub fill: Option<u8>,
}

impl ManualRequest {
    /// A read of `pages` full pages at `sector`.
    pub fn read(sector: u64, pages: usize) -> ManualRequest {
        ManualRequest {
            operation: BLKIF_OP_READ,
            sector,
            segs: std::vec![(0, 7); pages],
            ..ManualRequest::default()
        }
    }

    /// A write of `pages` full pages of `byte` at `sector`.
    pub fn write(sector: u64, pages: usize, byte: u8) -> ManualRequest {
        ManualRequest {
            operation: BLKIF_OP_WRITE,
            sector,
            segs: std::vec![(0, 7); pages],
            fill: Some(byte),
            ..ManualRequest::default()
        }
    }

    /// This request as a [`FeatureRequest`] sent as `BLKIF_OP_INDIRECT`
    /// with `indirect_op` (any byte): `segs` (up to [`MAX_INDIRECT_SEGMENTS`],
    /// a granted page each) are described in descriptor pages granted
    /// read-only; `operation` and `nr_segments_override` are ignored (see
    /// [`FeatureRequest::nr_segments`]).
    pub fn indirect(self, indirect_op: u8) -> FeatureRequest {
        FeatureRequest {
            indirect: Some(IndirectShape {
                indirect_op,
                ..IndirectShape::default()
            }),
            ..FeatureRequest::from(self)
        }
    }
}

/// How a [`FeatureRequest`] is sent as `BLKIF_OP_INDIRECT`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct IndirectShape {
    /// `indirect_op` (any byte, valid or not).
    pub indirect_op: u8,
    /// Writes this `nr_segments` instead of the number of segments.
    pub nr_segments: Option<u16>,
    /// Grants this many descriptor pages (the first ones named in
    /// `indirect_grefs`, at most `BLKIF_MAX_INDIRECT_PAGES_PER_REQUEST`)
    /// instead of as many as the segments need; descriptors that do not fit
    /// are left out.
    pub pages: Option<u8>,
    /// `indirect_grefs[i]` replaced by a raw reference (e.g. one the guest
    /// never granted), whatever was granted.
    pub raw_grefs: [Option<GrantRef>; BLKIF_MAX_INDIRECT_PAGES_PER_REQUEST],
}

/// What a segment substitution ([`FeatureRequest::segment_grant`]) puts
/// in a segment's `gref`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SegmentGrant {
    /// The grant of another segment of the same request (a duplicate
    /// reference in one request).
    SameAs(usize),
    /// The grant of segment `seg` of manual request `id`, which must still
    /// be in flight, i.e. not reaped yet (a grant used by two in-flight
    /// requests). The page stays granted until the last request naming it
    /// has been answered.
    InFlight {
        /// The other request.
        id: u64,
        /// Its segment.
        seg: usize,
    },
    /// A raw reference (e.g. one the guest never granted).
    Raw(GrantRef),
}

/// A manual request of any kind, including those [`ManualRequest`] alone
/// cannot express: indirect requests ([`ManualRequest::indirect`]),
/// discards ([`FeatureRequest::discard`]), a chosen queue, and segments
/// naming chosen grants ([`FeatureRequest::segment_grant`]). Submitted with
/// [`Frontend::submit_feature`] / [`Frontend::submit_features`].
///
/// ```no_run
/// # use xbb_lab::frontend::*;
/// # use xbb::abi::*;
/// # fn f(fe: &mut Frontend) -> Result<(), FrontendError> {
/// // 20 pages in one indirect write, with segment 3 naming segment 0's grant.
/// let req = ManualRequest::write(64, 20, 0x11)
///     .indirect(BLKIF_OP_WRITE)
///     .segment_grant(3, SegmentGrant::SameAs(0));
/// let id = fe.submit_feature(&req)?;
/// // A secure discard of 16 sectors at 128, on queue 1.
/// fe.submit_feature(&FeatureRequest::discard(128, 16, BLKIF_DISCARD_SECURE).on_queue(1))?;
/// # let _ = id; Ok(()) }
/// ```
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FeatureRequest {
    /// The request: `sector`, `segs`, `fill`, `readonly_grants`, and for a
    /// request that is neither indirect nor discard, `operation` and
    /// `nr_segments_override` too (sent exactly as [`Frontend::submit`]).
    pub base: ManualRequest,
    /// The queue (ring) to push it on.
    pub queue: u32,
    /// Sent as `BLKIF_OP_INDIRECT`.
    pub indirect: Option<IndirectShape>,
    /// Sent as `BLKIF_OP_DISCARD`: `(nr_sectors, flag)`, at `base.sector`;
    /// no page is granted.
    pub discard: Option<(u64, u8)>,
    /// Segment `i`'s grant replaced: `(i, what)`. A replaced segment gets no
    /// page of its own.
    pub seg_grants: Vec<(usize, SegmentGrant)>,
}

impl From<ManualRequest> for FeatureRequest {
    fn from(base: ManualRequest) -> FeatureRequest {
        FeatureRequest {
            base,
            ..FeatureRequest::default()
        }
    }
}

impl FeatureRequest {
    /// A `BLKIF_OP_DISCARD` of `nr_sectors` at `sector` with `flag` (0 or
    /// `BLKIF_DISCARD_SECURE`, or any byte).
    pub fn discard(sector: u64, nr_sectors: u64, flag: u8) -> FeatureRequest {
        FeatureRequest {
            base: ManualRequest {
                operation: BLKIF_OP_DISCARD,
                sector,
                ..ManualRequest::default()
            },
            discard: Some((nr_sectors, flag)),
            ..FeatureRequest::default()
        }
    }

    /// On queue `q` (default 0).
    pub fn on_queue(mut self, q: u32) -> FeatureRequest {
        self.queue = q;
        self
    }

    /// An indirect request's `nr_segments` set to `n`, whatever the number
    /// of segments.
    pub fn nr_segments(mut self, n: u16) -> FeatureRequest {
        let mut shape = self.indirect.unwrap_or_default();
        shape.nr_segments = Some(n);
        self.indirect = Some(shape);
        self
    }

    /// An indirect request with `n` descriptor pages granted, whatever the
    /// segments need.
    pub fn indirect_pages(mut self, n: u8) -> FeatureRequest {
        let mut shape = self.indirect.unwrap_or_default();
        shape.pages = Some(n);
        self.indirect = Some(shape);
        self
    }

    /// An indirect request whose `indirect_grefs[i]` is `gref` (ignored for
    /// `i` beyond the array).
    pub fn indirect_gref(mut self, i: usize, gref: GrantRef) -> FeatureRequest {
        let mut shape = self.indirect.unwrap_or_default();
        if let Some(g) = shape.raw_grefs.get_mut(i) {
            *g = Some(gref);
        }
        self.indirect = Some(shape);
        self
    }

    /// Segment `seg` names `grant` instead of a page of its own.
    pub fn segment_grant(mut self, seg: usize, grant: SegmentGrant) -> FeatureRequest {
        self.seg_grants.push((seg, grant));
        self
    }
}

type Signal = Arc<(Mutex<u64>, Condvar)>;

fn lock_sig(s: &Signal) -> MutexGuard<'_, u64> {
    s.0.lock().unwrap_or_else(|e| e.into_inner())
}

fn bump(s: &Signal) {
    *lock_sig(s) += 1;
    s.1.notify_all();
}

/// Waits until the counter differs from `seen` or `deadline` passes;
/// returns the counter.
fn wait_change(s: &Signal, seen: u64, deadline: Instant) -> u64 {
    let mut g = lock_sig(s);
    while *g == seen {
        let now = Instant::now();
        if now >= deadline {
            break;
        }
        g =
            s.1.wait_timeout(g, deadline - now)
                .unwrap_or_else(|e| e.into_inner())
                .0;
    }
    *g
}

/// One granted page: a data page or an indirect descriptor page.
#[derive(Clone, Copy, Debug)]
struct Page {
    gfn: Gfn,
    gref: GrantRef,
    /// A grant of the persistent pool: back to the pool after the
    /// response, its grant kept.
    persistent: bool,
    /// Granted read-only (a descriptor page, or a write's page when not
    /// persistent).
    descriptor: bool,
}

/// A manual request in flight.
#[derive(Debug)]
struct ManualInFlight {
    queue: usize,
    /// The page of each segment; `None` for a segment whose grant was
    /// replaced.
    pages: Vec<Option<Page>>,
    /// The frame each segment's data is read from after the response
    /// (`None`: a raw reference, no data).
    data: Vec<Option<Gfn>>,
    /// Each segment's grant reference as sent.
    grefs: Vec<GrantRef>,
    segs: Vec<(u8, u8)>,
    /// Indirect descriptor pages.
    indirect: Vec<Page>,
}

/// One queue of the live connection: a ring and its event channel.
struct Queue {
    ring: Option<FrontRing>,
    res: Reservation,
    ring_frames: Vec<Gfn>,
    ring_grefs: Vec<GrantRef>,
    port: EvtchnPort,
}

/// The live connection.
struct Conn {
    queues: Vec<Queue>,
}

/// The persistent-grant pools (`feature-persistent`): granted pages kept
/// granted while connected, reused LIFO (the back-end keeps the most used
/// ones mapped).
#[derive(Debug, Default)]
struct Persistent {
    /// Free data pages, granted writable.
    data: Vec<Page>,
    /// Free descriptor pages, granted read-only.
    indirect: Vec<Page>,
    /// Every page of both pools, free or in use.
    all: Vec<Page>,
}

/// A guest's block front-end for one `vbd`.
pub struct Frontend {
    xs: Xenstored,
    hub: EventHub,
    guest: Domain,
    fe_dom: DomId,
    be_dom: DomId,
    fe_path: String,
    be_path: String,
    profile: Profile,
    overrides: BTreeMap<String, Option<String>>,
    hang_guard: Duration,
    be_watch: Option<WatchId>,
    be_changed: Signal,
    events: Signal,
    conn: Option<Conn>,
    info: BackendInfo,
    next_id: u64,
    manual: HashMap<u64, ManualInFlight>,
    done: HashMap<u64, Vec<u8>>,
    pool: Vec<Gfn>,
    persistent: Persistent,
    grants_issued: u64,
}

impl std::fmt::Debug for Frontend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Frontend")
            .field("frontend", &self.fe_path)
            .field("backend", &self.be_path)
            .field("profile", &self.profile.name)
            .field("connected", &self.conn.is_some())
            .finish()
    }
}

const TRANSPORT_KEYS: [&str; 7] = [
    keys::RING_REF,
    keys::RING_PAGE_ORDER,
    keys::NUM_RING_PAGES,
    keys::EVENT_CHANNEL,
    keys::PROTOCOL,
    keys::MULTI_QUEUE_NUM_QUEUES,
    keys::FEATURE_PERSISTENT,
];

impl Frontend {
    /// A front-end of `vbd` in its guest domain (which must exist), not
    /// connected yet. It watches the back-end's `state`.
    pub fn new(
        world: &World,
        vbd: &VbdHandle,
        profile: Profile,
    ) -> Result<Frontend, FrontendError> {
        if profile.max_segments == 0
            || usize::from(profile.max_segments) > BLKIF_MAX_SEGMENTS_PER_REQUEST
        {
            return Err(FrontendError::Invalid(format!(
                "max_segments {}",
                profile.max_segments
            )));
        }
        if profile.max_indirect_segments > MAX_INDIRECT_SEGMENTS {
            return Err(FrontendError::Invalid(format!(
                "max_indirect_segments {}",
                profile.max_indirect_segments
            )));
        }
        if profile.queues == 0 || profile.queues > MAX_QUEUES {
            return Err(FrontendError::Invalid(format!("queues {}", profile.queues)));
        }
        let xen = world.xen();
        let fe_dom = vbd.frontend_dom();
        let guest = xen
            .domains
            .get(fe_dom)
            .ok_or(FrontendError::NoGuest(fe_dom))?;
        let be_changed: Signal = Arc::new((Mutex::new(0), Condvar::new()));
        let sig = Arc::clone(&be_changed);
        let be_state = format!("{}/{}", vbd.backend_path(), keys::STATE);
        let be_watch = xen
            .xenstore
            .watch(&be_state, std::boxed::Box::new(move |_p: &str| bump(&sig)))
            .map_err(|err| FrontendError::Xs {
                path: be_state.clone(),
                err,
            })?;
        Ok(Frontend {
            xs: xen.xenstore.clone(),
            hub: xen.evtchn.clone(),
            guest,
            fe_dom,
            be_dom: vbd.backend_dom(),
            fe_path: vbd.frontend_path().to_string(),
            be_path: vbd.backend_path().to_string(),
            profile,
            overrides: BTreeMap::new(),
            hang_guard: DEFAULT_HANG_GUARD,
            be_watch: Some(be_watch),
            be_changed,
            events: Arc::new((Mutex::new(0), Condvar::new())),
            conn: None,
            info: BackendInfo::default(),
            next_id: 1,
            manual: HashMap::new(),
            done: HashMap::new(),
            pool: Vec::new(),
            persistent: Persistent::default(),
            grants_issued: 0,
        })
    }

    /// The profile.
    pub fn profile(&self) -> &Profile {
        &self.profile
    }

    /// The front-end's XenStore directory.
    pub fn frontend_path(&self) -> &str {
        &self.fe_path
    }

    /// The back-end's XenStore directory.
    pub fn backend_path(&self) -> &str {
        &self.be_path
    }

    /// The guest domain.
    pub fn guest(&self) -> &Domain {
        &self.guest
    }

    /// Changes the bound on every wait (a hang guard only).
    pub fn set_hang_guard(&mut self, limit: Duration) {
        self.hang_guard = limit;
    }

    /// At the next [`connect`](Self::connect), writes `value` to `key`
    /// (relative to the front-end directory) instead of the computed value;
    /// `None` leaves the key out altogether.
    pub fn set_xenstore_override(&mut self, key: &str, value: Option<&str>) {
        self.overrides
            .insert(key.to_string(), value.map(|v| v.to_string()));
    }

    /// What the back-end published at connect.
    pub fn info(&self) -> &BackendInfo {
        &self.info
    }

    /// Whether connected.
    pub fn is_connected(&self) -> bool {
        self.conn.is_some()
    }

    /// The front-end's event-channel port (of queue 0) while connected.
    pub fn port(&self) -> Option<EvtchnPort> {
        self.conn
            .as_ref()
            .and_then(|c| c.queues.first())
            .map(|q| q.port)
    }

    /// The event-channel port of every queue while connected (empty
    /// otherwise).
    pub fn ports(&self) -> Vec<EvtchnPort> {
        self.conn
            .as_ref()
            .map(|c| c.queues.iter().map(|q| q.port).collect())
            .unwrap_or_default()
    }

    /// Data and descriptor-page grants this front-end has issued so far
    /// (ring pages not counted): with persistent grants, far fewer than the
    /// segments sent.
    pub fn grants_issued(&self) -> u64 {
        self.grants_issued
    }

    /// Pages in the persistent-grant pools now (granted, kept while
    /// connected).
    pub fn persistent_grants(&self) -> usize {
        self.persistent.all.len()
    }

    fn xs_err(path: &str, err: XsError) -> FrontendError {
        FrontendError::Xs {
            path: path.to_string(),
            err,
        }
    }

    fn read_node(&self, path: &str) -> Option<String> {
        self.xs.read_str(path).ok()
    }

    fn read_num(&self, path: &str) -> Result<Option<u64>, FrontendError> {
        match self.xs.read_str(path) {
            Ok(s) => s
                .trim()
                .parse::<u64>()
                .map(Some)
                .map_err(|_| FrontendError::BadNode {
                    path: path.to_string(),
                }),
            Err(XsError::NotFound) => Ok(None),
            Err(err) => Err(Self::xs_err(path, err)),
        }
    }

    /// The back-end's XenBus state (Unknown when unreadable).
    pub fn backend_state(&self) -> XenbusState {
        self.read_num(&format!("{}/{}", self.be_path, keys::STATE))
            .ok()
            .flatten()
            .and_then(|v| u32::try_from(v).ok())
            .and_then(XenbusState::from_u32)
            .unwrap_or(XenbusState::Unknown)
    }

    /// The back-end's error node text (`error/<backend>/error`, relative to
    /// the back-end domain's home, or absolute from the root), if any.
    pub fn backend_error(&self) -> Option<String> {
        let rel = self.be_path.trim_start_matches('/');
        self.read_node(&format!("/local/domain/{}/error/{rel}/error", self.be_dom))
            .or_else(|| self.read_node(&format!("/error/{rel}/error")))
    }

    fn write_state(&self, state: XenbusState) -> Result<(), FrontendError> {
        let p = format!("{}/{}", self.fe_path, keys::STATE);
        self.xs
            .write(&p, state.as_str())
            .map_err(|e| Self::xs_err(&p, e))
    }

    /// Waits until the back-end's state satisfies `done` (returned `Ok`) or
    /// `refuse` (returned as [`FrontendError::Refused`]).
    fn wait_backend(
        &self,
        what: &str,
        done: impl Fn(XenbusState) -> bool,
        refuse: impl Fn(XenbusState) -> bool,
    ) -> Result<XenbusState, FrontendError> {
        let deadline = Instant::now() + self.hang_guard;
        let mut seen = *lock_sig(&self.be_changed);
        loop {
            let s = self.backend_state();
            if done(s) {
                return Ok(s);
            }
            if refuse(s) {
                return Err(FrontendError::Refused {
                    state: s,
                    error: self.backend_error(),
                });
            }
            if Instant::now() >= deadline {
                return Err(FrontendError::Timeout {
                    what: format!("{what} (back-end state {s:?})"),
                });
            }
            // Wake on a watch, and re-check at least every 50 ms anyway.
            let slice = (Instant::now() + Duration::from_millis(50)).min(deadline);
            seen = wait_change(&self.be_changed, seen, slice);
        }
    }

    /// The front-end side of the XenBus handshake: waits for the back-end's
    /// InitWait, sets up and grants the rings (one per queue), allocates
    /// their event channels, publishes the transport parameters (with the
    /// overrides), enters Initialised (or Connected when the profile skips
    /// it), waits for the back-end's Connected and reads what it offers
    /// (the features of the profile are used only when offered). A back-end
    /// that goes to Closing or Closed instead gives
    /// [`FrontendError::Refused`] with its error node.
    ///
    /// With several queues, `multi-queue-num-queues` is written and each
    /// queue's `ring-ref` (or `ring-ref%u`) and `event-channel` go under
    /// `queue-N/`; `ring-page-order` stays at the top. With one queue, the
    /// legacy top-level keys (and `multi-queue-num-queues` = 1 when the
    /// profile wanted more but the back-end offers one).
    pub fn connect(&mut self) -> Result<BackendInfo, FrontendError> {
        if self.conn.is_some() {
            return Err(FrontendError::Invalid(
                "connect: a ring is already set up; disconnect first".into(),
            ));
        }
        // A fresh start: clear what an earlier front-end left, then
        // Initialising (which also restarts an online back-end in Closed).
        for k in TRANSPORT_KEYS {
            let _ = self.xs.remove(&format!("{}/{k}", self.fe_path));
        }
        for i in 0..32 {
            let _ = self
                .xs
                .remove(&format!("{}/{}{i}", self.fe_path, keys::RING_REF));
        }
        if let Ok(children) = self.xs.directory(&self.fe_path) {
            for c in children.iter().filter(|c| c.starts_with("queue-")) {
                let _ = self.xs.remove(&format!("{}/{c}", self.fe_path));
            }
        }
        self.write_state(XenbusState::Initialising)?;
        self.wait_backend(
            "back-end InitWait",
            |s| s == XenbusState::InitWait,
            |s| s == XenbusState::Closing,
        )?;

        let max_order = self
            .read_num(&format!("{}/{}", self.be_path, keys::MAX_RING_PAGE_ORDER))?
            .unwrap_or(0);
        let order = u64::from(self.profile.ring_page_order)
            .min(max_order)
            .min(5) as u32;
        let pages = 1u32 << order;
        let max_queues = self.read_num(&format!(
            "{}/{}",
            self.be_path,
            keys::MULTI_QUEUE_MAX_QUEUES
        ))?;
        let nqueues = match max_queues {
            Some(m) if self.profile.queues > 1 => {
                u32::try_from(m.clamp(1, u64::from(self.profile.queues))).unwrap_or(1)
            }
            _ => 1,
        };

        self.info = BackendInfo {
            max_ring_page_order: max_order as u32,
            ring_pages: pages,
            queues: nqueues,
            ..BackendInfo::default()
        };
        let mut queues = Vec::new();
        for _ in 0..nqueues {
            match self.setup_queue(pages) {
                Ok(q) => queues.push(q),
                Err(e) => {
                    self.conn = Some(Conn { queues });
                    let _ = self.release_connection();
                    return Err(e);
                }
            }
        }
        self.info.ring_size = queues
            .first()
            .and_then(|q| q.ring.as_ref())
            .map_or(0, |r| r.size());
        self.conn = Some(Conn { queues });

        // Transport parameters.
        let conn = self.conn.as_ref().ok_or(FrontendError::NotConnected)?;
        let mut nodes: BTreeMap<String, Option<String>> = BTreeMap::new();
        for (n, q) in conn.queues.iter().enumerate() {
            let dir = if nqueues > 1 {
                format!("{}{n}/", keys::QUEUE_DIR_PREFIX)
            } else {
                String::new()
            };
            if order == 0 {
                nodes.insert(
                    format!("{dir}{}", keys::RING_REF),
                    Some(q.ring_grefs[0].to_string()),
                );
            } else {
                for (i, g) in q.ring_grefs.iter().enumerate() {
                    nodes.insert(format!("{dir}{}{i}", keys::RING_REF), Some(g.to_string()));
                }
            }
            nodes.insert(
                format!("{dir}{}", keys::EVENT_CHANNEL),
                Some(q.port.to_string()),
            );
        }
        if max_queues.is_some() && self.profile.queues > 1 {
            nodes.insert(
                keys::MULTI_QUEUE_NUM_QUEUES.into(),
                Some(nqueues.to_string()),
            );
        }
        if self.profile.legacy_num_ring_pages {
            if order > 0 {
                nodes.insert(keys::NUM_RING_PAGES.into(), Some(pages.to_string()));
            }
        } else if order > 0 {
            nodes.insert(keys::RING_PAGE_ORDER.into(), Some(order.to_string()));
        }
        let proto = match self.profile.abi {
            Abi::X86_32 => XEN_IO_PROTO_ABI_X86_32,
            Abi::X86_64 => XEN_IO_PROTO_ABI_X86_64,
        };
        nodes.insert(keys::PROTOCOL.into(), Some(proto.to_string()));
        if self.profile.persistent {
            nodes.insert(keys::FEATURE_PERSISTENT.into(), Some("1".into()));
        }
        for (k, v) in &self.overrides {
            nodes.insert(k.clone(), v.clone());
        }
        let state = if self.profile.skip_initialised {
            XenbusState::Connected
        } else {
            XenbusState::Initialised
        };
        self.publish_transport(&nodes, state)?;

        self.wait_backend(
            "back-end Connected",
            |s| s == XenbusState::Connected,
            |s| matches!(s, XenbusState::Closing | XenbusState::Closed),
        )?;
        if !self.profile.skip_initialised {
            self.write_state(XenbusState::Connected)?;
        }
        self.read_backend_info()?;
        Ok(self.info.clone())
    }

    /// One queue's ring: guest frames granted to the back-end, seen by the
    /// guest through its own mapping of them, and an unbound event channel
    /// whose events bump the front-end's event counter.
    fn setup_queue(&mut self, pages: u32) -> Result<Queue, FrontendError> {
        let mut res =
            Reservation::new(pages as usize).map_err(|e| FrontendError::Os(e.to_string()))?;
        let mut ring_frames = Vec::new();
        for i in 0..pages as usize {
            let Some(gfn) = self.guest.memory.alloc_frame() else {
                for &f in &ring_frames {
                    let _ = self.guest.memory.free_frame(f);
                }
                return Err(FrontendError::NoMemory);
            };
            ring_frames.push(gfn);
            res.map_frame_at(i, self.guest.memory.memfd(), gfn, true)
                .map_err(|e| FrontendError::Os(e.to_string()))?;
        }
        let mem = res
            .shared_mem(0, pages as usize)
            .map_err(|e| FrontendError::Os(e.to_string()))?;
        let ring = match FrontRing::init(mem, self.profile.abi, pages) {
            Ok(r) => r,
            Err(e) => return Err(FrontendError::Invalid(format!("ring: {e:?}"))),
        };
        let ring_grefs = ring_frames
            .iter()
            .map(|&gfn| self.guest.grants.grant(gfn, self.be_dom, false))
            .collect();
        let port = self.hub.alloc_unbound(self.fe_dom, self.be_dom);
        let ev = Arc::clone(&self.events);
        let queue = Queue {
            ring: Some(ring),
            res,
            ring_frames,
            ring_grefs,
            port,
        };
        self.hub
            .set_handler(self.fe_dom, port, std::boxed::Box::new(move || bump(&ev)))
            .map_err(|e| FrontendError::Os(format!("evtchn: {e:?}")))?;
        Ok(queue)
    }

    fn publish_transport(
        &self,
        nodes: &BTreeMap<String, Option<String>>,
        state: XenbusState,
    ) -> Result<(), FrontendError> {
        for _ in 0..64 {
            let t = self.xs.transaction_start();
            let mut failed = None;
            for (k, v) in nodes {
                if let Some(v) = v {
                    let p = format!("{}/{k}", self.fe_path);
                    if let Err(e) = self.xs.write_in(t, &p, v.as_bytes()) {
                        failed = Some(Self::xs_err(&p, e));
                        break;
                    }
                }
            }
            if failed.is_none() {
                let p = format!("{}/{}", self.fe_path, keys::STATE);
                if let Err(e) = self.xs.write_in(t, &p, state.as_str().as_bytes()) {
                    failed = Some(Self::xs_err(&p, e));
                }
            }
            if let Some(e) = failed {
                let _ = self.xs.transaction_end(t, false);
                return Err(e);
            }
            match self.xs.transaction_end(t, true) {
                Ok(()) => return Ok(()),
                Err(XsError::Again) => continue,
                Err(e) => return Err(Self::xs_err("transaction", e)),
            }
        }
        Err(Self::xs_err("transaction", XsError::Again))
    }

    fn read_backend_info(&mut self) -> Result<(), FrontendError> {
        let be = self.be_path.clone();
        let num = |s: &Self, k: &str| s.read_num(&format!("{be}/{k}"));
        let sectors = num(self, keys::SECTORS)?.ok_or_else(|| FrontendError::BadNode {
            path: format!("{be}/{}", keys::SECTORS),
        })?;
        let ss = num(self, keys::SECTOR_SIZE)?.unwrap_or(512);
        let pss = num(self, keys::PHYSICAL_SECTOR_SIZE)?.unwrap_or(ss);
        let info = num(self, keys::INFO)?.unwrap_or(0);
        let flush = num(self, keys::FEATURE_FLUSH_CACHE)?.unwrap_or(0) == 1;
        let barrier = num(self, keys::FEATURE_BARRIER)?.unwrap_or(0) == 1;
        let bad = |k: &str| FrontendError::BadNode {
            path: format!("{be}/{k}"),
        };
        self.info.sectors = sectors;
        self.info.sector_size = u32::try_from(ss).map_err(|_| bad(keys::SECTOR_SIZE))?;
        self.info.physical_sector_size =
            u32::try_from(pss).map_err(|_| bad(keys::PHYSICAL_SECTOR_SIZE))?;
        self.info.info = u32::try_from(info).map_err(|_| bad(keys::INFO))?;
        self.info.flush = flush;
        self.info.barrier = barrier;
        // The features the profile uses only when offered.
        let indirect = num(self, keys::FEATURE_MAX_INDIRECT_SEGMENTS)?.unwrap_or(0);
        self.info.max_indirect_segments = u32::try_from(
            indirect
                .min(u64::from(self.profile.max_indirect_segments))
                .min(u64::from(MAX_INDIRECT_SEGMENTS)),
        )
        .unwrap_or(0);
        self.info.persistent =
            self.profile.persistent && num(self, keys::FEATURE_PERSISTENT)?.unwrap_or(0) == 1;
        self.info.discard = num(self, keys::FEATURE_DISCARD)?.unwrap_or(0) == 1;
        if self.info.discard {
            self.info.discard_granularity =
                u32::try_from(num(self, keys::DISCARD_GRANULARITY)?.unwrap_or(0))
                    .map_err(|_| bad(keys::DISCARD_GRANULARITY))?;
            self.info.discard_alignment =
                u32::try_from(num(self, keys::DISCARD_ALIGNMENT)?.unwrap_or(0))
                    .map_err(|_| bad(keys::DISCARD_ALIGNMENT))?;
            self.info.discard_secure = num(self, keys::DISCARD_SECURE)?.unwrap_or(0) == 1;
        }
        Ok(())
    }

    fn ring_q(&mut self, q: usize) -> Result<&mut FrontRing, FrontendError> {
        self.conn
            .as_mut()
            .and_then(|c| c.queues.get_mut(q))
            .and_then(|q| q.ring.as_mut())
            .ok_or(FrontendError::NotConnected)
    }

    fn ring(&mut self) -> Result<&mut FrontRing, FrontendError> {
        self.ring_q(0)
    }

    fn nqueues(&self) -> usize {
        self.conn.as_ref().map_or(0, |c| c.queues.len())
    }

    /// Sends an event to the back-end on queue 0's channel
    /// (`notify_remote_via_evtchn`).
    pub fn kick(&mut self) {
        self.kick_queue(0);
    }

    /// Sends an event to the back-end on queue `q`'s channel.
    pub fn kick_queue(&mut self, q: usize) {
        if let Some(p) = self.conn.as_ref().and_then(|c| c.queues.get(q)) {
            let _ = self.hub.notify(self.fe_dom, p.port);
        }
    }

    /// Publishes queue `q`'s pushed requests and kicks the back-end if it
    /// asked.
    fn publish_and_kick_q(&mut self, q: usize) -> Result<(), FrontendError> {
        if self.ring_q(q)?.publish_requests() {
            self.kick_queue(q);
        }
        Ok(())
    }

    /// Publishes every queue's pushed requests, kicking where asked.
    fn publish_and_kick(&mut self) -> Result<(), FrontendError> {
        for q in 0..self.nqueues() {
            self.publish_and_kick_q(q)?;
        }
        Ok(())
    }

    fn take_frame(&mut self) -> Result<Gfn, FrontendError> {
        match self.pool.pop() {
            Some(g) => Ok(g),
            None => self
                .guest
                .memory
                .alloc_frame()
                .ok_or(FrontendError::NoMemory),
        }
    }

    /// A fresh grant of a free frame (ended after the response).
    fn grant_page(&mut self, readonly: bool) -> Result<Page, FrontendError> {
        let gfn = self.take_frame()?;
        let gref = self.guest.grants.grant(gfn, self.be_dom, readonly);
        self.grants_issued += 1;
        Ok(Page {
            gfn,
            gref,
            persistent: false,
            descriptor: readonly,
        })
    }

    /// A data page for one segment: from the persistent pool (granted
    /// writable once, kept) when persistent grants are in use, else a fresh
    /// grant, read-only when `readonly`.
    fn data_page(&mut self, readonly: bool) -> Result<Page, FrontendError> {
        if !self.info.persistent {
            return self.grant_page(readonly);
        }
        if let Some(p) = self.persistent.data.pop() {
            return Ok(p);
        }
        let p = Page {
            persistent: true,
            ..self.grant_page(false)?
        };
        self.persistent.all.push(p);
        Ok(p)
    }

    /// An indirect descriptor page, granted read-only: from its persistent
    /// pool when persistent grants are in use, else fresh.
    fn descriptor_page(&mut self) -> Result<Page, FrontendError> {
        if !self.info.persistent {
            return self.grant_page(true);
        }
        if let Some(p) = self.persistent.indirect.pop() {
            return Ok(p);
        }
        let p = Page {
            persistent: true,
            ..self.grant_page(true)?
        };
        self.persistent.all.push(p);
        Ok(p)
    }

    /// Gives a page back after its request's response: a persistent page
    /// returns to its pool (its grant kept); a fresh grant is ended (which
    /// must succeed: the back-end unmapped it before answering) and its
    /// frame recycled.
    fn release_page(&mut self, p: Page) -> Result<(), FrontendError> {
        if p.persistent {
            if p.descriptor {
                self.persistent.indirect.push(p);
            } else {
                self.persistent.data.push(p);
            }
            return Ok(());
        }
        self.guest
            .grants
            .end_access(p.gref)
            .map_err(|_| FrontendError::GrantBusy { gref: p.gref })?;
        self.pool.push(p.gfn);
        Ok(())
    }

    fn new_id(&mut self) -> u64 {
        let id = self.next_id;
        self.next_id += 1;
        id
    }

    /// Builds, grants and submits a manual request on queue 0; returns its
    /// id. Pages are allocated and granted one per segment.
    pub fn submit(&mut self, req: &ManualRequest) -> Result<u64, FrontendError> {
        self.submit_feature(&FeatureRequest::from(req.clone()))
    }

    /// Pushes every request of `reqs` (on queue 0) and then publishes them
    /// at once (one `req_prod` update, at most one kick), so the back-end
    /// sees them back to back; returns their ids in order.
    pub fn submit_many(&mut self, reqs: &[ManualRequest]) -> Result<Vec<u64>, FrontendError> {
        let reqs: Vec<FeatureRequest> = reqs.iter().cloned().map(FeatureRequest::from).collect();
        self.submit_features(&reqs)
    }

    /// Builds, grants and submits a request of any kind on its queue;
    /// returns its id.
    pub fn submit_feature(&mut self, req: &FeatureRequest) -> Result<u64, FrontendError> {
        let id = self.push_manual(req)?;
        self.publish_and_kick()?;
        Ok(id)
    }

    /// [`submit_many`](Self::submit_many) for requests of any kind: all are
    /// pushed, then every queue is published once.
    pub fn submit_features(&mut self, reqs: &[FeatureRequest]) -> Result<Vec<u64>, FrontendError> {
        let mut ids = Vec::new();
        for r in reqs {
            ids.push(self.push_manual(r)?);
        }
        self.publish_and_kick()?;
        Ok(ids)
    }

    /// The grant references the segments of in-flight manual request `id`
    /// were sent with (empty once it completed).
    pub fn segment_grefs(&self, id: u64) -> Vec<GrantRef> {
        self.manual
            .get(&id)
            .map(|m| m.grefs.clone())
            .unwrap_or_default()
    }

    /// The grant references of the descriptor pages of in-flight manual
    /// request `id`.
    pub fn indirect_grefs(&self, id: u64) -> Vec<GrantRef> {
        self.manual
            .get(&id)
            .map(|m| m.indirect.iter().map(|p| p.gref).collect())
            .unwrap_or_default()
    }

    fn push_manual(&mut self, freq: &FeatureRequest) -> Result<u64, FrontendError> {
        if self.conn.is_none() {
            return Err(FrontendError::NotConnected);
        }
        let q = freq.queue as usize;
        if q >= self.nqueues() {
            return Err(FrontendError::Invalid(format!("no queue {q}")));
        }
        if self.ring_q(q)?.free_slots() == 0 {
            return Err(FrontendError::RingFull);
        }
        let req = &freq.base;
        let max_segs = if freq.indirect.is_some() {
            MAX_INDIRECT_SEGMENTS as usize
        } else if freq.discard.is_some() {
            0
        } else {
            BLKIF_MAX_SEGMENTS_PER_REQUEST.max(BLKIF_MAX_INDIRECT_PAGES_PER_REQUEST)
        };
        if req.segs.len() > max_segs {
            return Err(FrontendError::Invalid(format!(
                "{} segments",
                req.segs.len()
            )));
        }
        // Resolve the replaced grants first: nothing is granted if one is
        // impossible.
        let mut subs: Vec<Option<(GrantRef, Option<Gfn>)>> = std::vec![None; req.segs.len()];
        let mut same_as = Vec::new();
        for &(i, g) in &freq.seg_grants {
            if i >= req.segs.len() {
                return Err(FrontendError::Invalid(format!("no segment {i}")));
            }
            match g {
                SegmentGrant::Raw(gref) => subs[i] = Some((gref, None)),
                SegmentGrant::InFlight { id, seg } => {
                    let m = self.manual.get(&id).ok_or_else(|| {
                        FrontendError::Invalid(format!("request {id} not in flight"))
                    })?;
                    let (Some(&gref), Some(&gfn)) = (m.grefs.get(seg), m.data.get(seg)) else {
                        return Err(FrontendError::Invalid(format!(
                            "request {id} has no segment {seg}"
                        )));
                    };
                    subs[i] = Some((gref, gfn));
                }
                SegmentGrant::SameAs(j) => {
                    if j >= req.segs.len() || freq.seg_grants.iter().any(|&(k, _)| k == j) {
                        return Err(FrontendError::Invalid(format!(
                            "segment {i} cannot share segment {j}'s grant"
                        )));
                    }
                    same_as.push((i, j));
                }
            }
        }
        let mut pages: Vec<Option<Page>> = Vec::new();
        let mut grefs = Vec::new();
        let mut data = Vec::new();
        for (i, &(first, last)) in req.segs.iter().enumerate() {
            if let Some((gref, gfn)) = subs[i] {
                pages.push(None);
                grefs.push(gref);
                data.push(gfn);
                continue;
            }
            if same_as.iter().any(|&(k, _)| k == i) {
                pages.push(None);
                grefs.push(0);
                data.push(None);
                continue;
            }
            let p = if req.readonly_grants {
                self.grant_page(true)?
            } else {
                self.data_page(false)?
            };
            let (off, len) = seg_span(first, last);
            let byte = req.fill.unwrap_or(0);
            self.guest
                .memory
                .fill(p.gfn, 0, PAGE_SIZE, 0)
                .and_then(|_| self.guest.memory.fill(p.gfn, off, len, byte))
                .map_err(|e| FrontendError::Os(format!("{e:?}")))?;
            pages.push(Some(p));
            grefs.push(p.gref);
            data.push(Some(p.gfn));
        }
        for &(i, j) in &same_as {
            grefs[i] = grefs[j];
            data[i] = data[j];
        }
        let id = self.new_id();
        let segments: Vec<Segment> = req
            .segs
            .iter()
            .zip(&grefs)
            .map(|(&(first_sect, last_sect), &gref)| Segment {
                gref,
                first_sect,
                last_sect,
            })
            .collect();
        let mut indirect = Vec::new();
        let (operation, body) = if let Some((nr_sectors, flag)) = freq.discard {
            (
                BLKIF_OP_DISCARD,
                RequestBody::Discard {
                    flag,
                    handle: 0,
                    sector_number: req.sector,
                    nr_sectors,
                },
            )
        } else if let Some(shape) = freq.indirect {
            let needed = segments.len().div_ceil(SEGMENTS_PER_INDIRECT_PAGE);
            let npages = shape
                .pages
                .map_or(needed, usize::from)
                .min(BLKIF_MAX_INDIRECT_PAGES_PER_REQUEST);
            let mut indirect_grefs = [0u32; BLKIF_MAX_INDIRECT_PAGES_PER_REQUEST];
            for (k, g) in indirect_grefs.iter_mut().enumerate().take(npages) {
                let start = k * SEGMENTS_PER_INDIRECT_PAGE;
                let end = segments.len().min(start + SEGMENTS_PER_INDIRECT_PAGE);
                let p = self.descriptor_page()?;
                self.write_descriptors(p.gfn, segments.get(start..end).unwrap_or(&[]))?;
                *g = p.gref;
                indirect.push(p);
            }
            for (g, raw) in indirect_grefs.iter_mut().zip(shape.raw_grefs) {
                if let Some(raw) = raw {
                    *g = raw;
                }
            }
            (
                BLKIF_OP_INDIRECT,
                RequestBody::Indirect {
                    indirect_op: shape.indirect_op,
                    nr_segments: shape
                        .nr_segments
                        .unwrap_or(segments.len().min(usize::from(u16::MAX)) as u16),
                    handle: 0,
                    sector_number: req.sector,
                    indirect_grefs,
                },
            )
        } else {
            (req.operation, self.legacy_body(req, &segments))
        };
        let wire = BlkifRequest {
            operation,
            id,
            body,
        };
        if !self.ring_q(q)?.push_request(&wire) {
            for p in pages.into_iter().flatten().chain(indirect) {
                self.release_page(p)?;
            }
            return Err(FrontendError::RingFull);
        }
        self.manual.insert(
            id,
            ManualInFlight {
                queue: q,
                pages,
                data,
                grefs,
                segs: req.segs.clone(),
                indirect,
            },
        );
        Ok(id)
    }

    /// The body of a plain [`ManualRequest`], whatever its operation:
    /// `BLKIF_OP_DISCARD` covers as many sectors as its segments do, and
    /// `BLKIF_OP_INDIRECT` names its data pages as descriptor pages (both
    /// only to test refusal paths; [`FeatureRequest`] builds real ones).
    fn legacy_body(&self, req: &ManualRequest, segments: &[Segment]) -> RequestBody {
        let nsegs = req
            .nr_segments_override
            .unwrap_or(req.segs.len().min(255) as u8);
        match req.operation {
            BLKIF_OP_DISCARD => RequestBody::Discard {
                flag: 0,
                handle: 0,
                sector_number: req.sector,
                nr_sectors: req
                    .segs
                    .iter()
                    .map(|&(f, l)| u64::from(l.saturating_sub(f)) + 1)
                    .sum::<u64>()
                    .max(1),
            },
            BLKIF_OP_INDIRECT => {
                let mut indirect_grefs = [0u32; BLKIF_MAX_INDIRECT_PAGES_PER_REQUEST];
                for (g, s) in indirect_grefs.iter_mut().zip(segments) {
                    *g = s.gref;
                }
                RequestBody::Indirect {
                    indirect_op: BLKIF_OP_WRITE,
                    nr_segments: u16::from(nsegs),
                    handle: 0,
                    sector_number: req.sector,
                    indirect_grefs,
                }
            }
            _ => {
                let mut seg = [Segment::default(); BLKIF_MAX_SEGMENTS_PER_REQUEST];
                for (s, d) in seg.iter_mut().zip(segments) {
                    *s = *d;
                }
                RequestBody::Rw {
                    nr_segments: nsegs,
                    handle: 0,
                    sector_number: req.sector,
                    seg,
                }
            }
        }
    }

    /// Fills descriptor page `gfn`: `segs` as 8-byte
    /// `struct blkif_request_segment`s, the rest zero.
    fn write_descriptors(&self, gfn: Gfn, segs: &[Segment]) -> Result<(), FrontendError> {
        let mut page = std::vec![0u8; PAGE_SIZE];
        for (s, out) in segs.iter().zip(page.chunks_mut(SEGMENT_SIZE)) {
            encode_segment(s, out);
        }
        self.guest
            .memory
            .write(gfn, 0, &page)
            .map_err(|e| FrontendError::Os(format!("{e:?}")))
    }

    /// A hostile write: raw bytes into the slot at the private producer
    /// index (which does not move).
    pub fn write_raw_slot(&mut self, bytes: &[u8]) {
        if let Ok(r) = self.ring() {
            let i = r.req_prod_pvt();
            r.write_raw_slot(i, bytes);
        }
    }

    /// A hostile write: raw bytes into slot `index` (masked to the ring).
    pub fn write_raw_slot_at(&mut self, index: u32, bytes: &[u8]) {
        if let Ok(r) = self.ring() {
            r.write_raw_slot(index, bytes);
        }
    }

    /// A hostile write: stores any `req_prod`.
    pub fn set_req_prod_raw(&mut self, v: u32) {
        if let Ok(r) = self.ring() {
            r.set_req_prod_raw(v);
        }
    }

    /// Events the back-end has sent this front-end so far (on every queue).
    pub fn events_received(&self) -> u64 {
        *lock_sig(&self.events)
    }

    /// Takes every published response of every queue; a manual request's
    /// pages are read (kept for [`page_data`](Self::page_data)), and given
    /// back: fresh grants ended and their frames recycled, persistent ones
    /// returned to their pool. A response is matched to a request only on
    /// the queue the request went to.
    fn reap(&mut self, out: &mut Vec<BlkifResponse>) -> Result<(), FrontendError> {
        for q in 0..self.nqueues() {
            while let Some(rsp) = self.ring_q(q)?.take_response() {
                if self.manual.get(&rsp.id).is_some_and(|m| m.queue == q) {
                    if let Some(m) = self.manual.remove(&rsp.id) {
                        self.finish_manual(rsp.id, m)?;
                    }
                }
                out.push(rsp);
            }
        }
        Ok(())
    }

    fn finish_manual(&mut self, id: u64, m: ManualInFlight) -> Result<(), FrontendError> {
        let mut data = Vec::new();
        for (gfn, &(first, last)) in m.data.iter().zip(&m.segs) {
            let (off, len) = seg_span(first, last);
            let mut buf = std::vec![0u8; len];
            if let Some(gfn) = gfn {
                self.guest
                    .memory
                    .read(*gfn, off, &mut buf)
                    .map_err(|e| FrontendError::Os(format!("{e:?}")))?;
            }
            data.extend_from_slice(&buf);
        }
        self.done.insert(id, data);
        for p in m.pages.into_iter().flatten().chain(m.indirect) {
            // A page another in-flight request names too
            // (`SegmentGrant::InFlight`) is handed to it, not ended under it.
            let heir = self.manual.values_mut().find_map(|o| {
                let i = o
                    .grefs
                    .iter()
                    .zip(&o.pages)
                    .position(|(&g, own)| g == p.gref && own.is_none())?;
                o.pages.get_mut(i)
            });
            match heir {
                Some(slot) => *slot = Some(p),
                None => self.release_page(p)?,
            }
        }
        Ok(())
    }

    /// `RING_FINAL_CHECK_FOR_RESPONSES` on every queue: whether any has
    /// responses to take.
    fn final_check_all(&mut self) -> Result<bool, FrontendError> {
        let mut any = false;
        for q in 0..self.nqueues() {
            any |= self.ring_q(q)?.final_check_for_responses();
        }
        if self.conn.is_none() {
            return Err(FrontendError::NotConnected);
        }
        Ok(any)
    }

    /// Waits for responses until at least `n` arrived (event-driven, with
    /// `rsp_event`); returns every response taken.
    pub fn wait_responses(&mut self, n: usize) -> Result<Vec<BlkifResponse>, FrontendError> {
        let deadline = Instant::now() + self.hang_guard;
        let mut out = Vec::new();
        loop {
            self.reap(&mut out)?;
            if out.len() >= n {
                return Ok(out);
            }
            let seen = *lock_sig(&self.events);
            if self.final_check_all()? {
                continue;
            }
            if Instant::now() >= deadline {
                return Err(FrontendError::Timeout {
                    what: format!("{n} responses ({} arrived)", out.len()),
                });
            }
            wait_change(&self.events, seen, deadline);
        }
    }

    /// Waits up to `limit` for responses and returns whatever arrived (for
    /// checking that nothing does).
    pub fn poll_responses(&mut self, limit: Duration) -> Result<Vec<BlkifResponse>, FrontendError> {
        let deadline = Instant::now() + limit;
        let mut out = Vec::new();
        loop {
            self.reap(&mut out)?;
            let seen = *lock_sig(&self.events);
            if self.final_check_all()? {
                continue;
            }
            if Instant::now() >= deadline {
                return Ok(out);
            }
            wait_change(&self.events, seen, deadline);
        }
    }

    /// The data in a completed manual request's pages: each segment's
    /// sectors, in order. Empty for an unknown or unfinished id.
    pub fn page_data(&self, id: u64) -> Vec<u8> {
        self.done.get(&id).cloned().unwrap_or_default()
    }

    /// Closes the connection the XenBus way: Closing, wait for the
    /// back-end's Closing (or Closed), Closed, wait for its Closed; then
    /// ends every grant, persistent ones included (which must succeed: the
    /// back-end has unmapped everything), closes the event channels and
    /// frees the frames.
    pub fn disconnect(&mut self) -> Result<(), FrontendError> {
        self.write_state(XenbusState::Closing)?;
        self.wait_backend(
            "back-end Closing",
            |s| matches!(s, XenbusState::Closing | XenbusState::Closed),
            |_| false,
        )?;
        self.write_state(XenbusState::Closed)?;
        self.wait_backend("back-end Closed", |s| s == XenbusState::Closed, |_| false)?;
        self.release_connection()
    }

    /// Ends every grant of the connection and frees its resources.
    fn release_connection(&mut self) -> Result<(), FrontendError> {
        let mut result = Ok(());
        let manual: Vec<_> = self.manual.drain().collect();
        for (_, m) in manual {
            for p in m.pages.into_iter().flatten().chain(m.indirect) {
                if let Err(e) = self.release_page(p) {
                    result = Err(e);
                }
            }
        }
        let pooled = std::mem::take(&mut self.persistent);
        for p in pooled.all {
            if self.guest.grants.end_access(p.gref).is_err() {
                result = Err(FrontendError::GrantBusy { gref: p.gref });
            } else {
                self.pool.push(p.gfn);
            }
        }
        if let Some(c) = self.conn.take() {
            for mut q in c.queues {
                self.hub.clear_handler(self.fe_dom, q.port);
                self.hub.close(self.fe_dom, q.port);
                if let Some(ring) = q.ring.take() {
                    let _ = q.res.take_back(ring.into_mem());
                }
                for i in 0..q.ring_frames.len() {
                    let _ = q.res.unmap_frame_at(i);
                }
                let mut ended = true;
                for &g in &q.ring_grefs {
                    if self.guest.grants.end_access(g).is_err() {
                        ended = false;
                        result = Err(FrontendError::GrantBusy { gref: g });
                    }
                }
                if ended {
                    for &f in &q.ring_frames {
                        let _ = self.guest.memory.free_frame(f);
                    }
                }
            }
        }
        self.info.persistent = false;
        if result.is_ok() {
            for f in self.pool.drain(..) {
                let _ = self.guest.memory.free_frame(f);
            }
        }
        result
    }
}

impl Drop for Frontend {
    fn drop(&mut self) {
        if let Some(w) = self.be_watch.take() {
            self.xs.unwatch(w);
        }
        if let Some(c) = self.conn.take() {
            for mut q in c.queues {
                self.hub.clear_handler(self.fe_dom, q.port);
                // Hand the ring mapping back so the reservation can go.
                if let Some(ring) = q.ring.take() {
                    let _ = q.res.take_back(ring.into_mem());
                }
            }
        }
    }
}

/// The byte span `(offset, len)` of segment `first..=last` in its page,
/// clamped to the page (hostile segments included).
fn seg_span(first: u8, last: u8) -> (usize, usize) {
    let off = (usize::from(first) * SECTOR).min(PAGE_SIZE);
    let end = ((usize::from(last) + 1) * SECTOR).min(PAGE_SIZE);
    (off, end.saturating_sub(off))
}

// ---------------------------------------------------------------------------
// Data patterns
// ---------------------------------------------------------------------------

fn splitmix(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// The content of 512-byte sector `sector` after its `gen`-th write (`gen`
/// 0: never written, all zero): the sector number and generation, then
/// pseudo-random bytes derived from both.
pub fn sector_pattern(sector: u64, gen: u64, out: &mut [u8; SECTOR]) {
    if gen == 0 {
        out.fill(0);
        return;
    }
    out[..8].copy_from_slice(&sector.to_le_bytes());
    out[8..16].copy_from_slice(&gen.to_le_bytes());
    let mut st = sector.wrapping_mul(0x100_0000_01B3) ^ gen.rotate_left(32);
    for chunk in out[16..].chunks_mut(8) {
        let v = splitmix(&mut st).to_le_bytes();
        chunk.copy_from_slice(&v[..chunk.len()]);
    }
}

// ---------------------------------------------------------------------------
// Workload
// ---------------------------------------------------------------------------

/// A workload for [`run_workload`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Workload {
    /// I/Os to issue.
    pub ops: u64,
    /// Bytes per I/O: a multiple of the medium's sector size (and of 512).
    pub io_size: u32,
    /// Random offsets (else sequential, wrapping around the region).
    pub random: bool,
    /// Percentage of reads (0..=100).
    pub read_pct: u8,
    /// The region `(first sector, sectors)` the I/O stays in; the whole
    /// medium when `None`.
    pub region_sectors: Option<(u64, u64)>,
    /// Seed of the offset and read/write choices.
    pub seed: u64,
    /// Read the whole touched range back at the end and check it.
    pub verify_all_at_end: bool,
}

impl Default for Workload {
    fn default() -> Self {
        Workload {
            ops: 256,
            io_size: 4096,
            random: true,
            read_pct: 50,
            region_sectors: None,
            seed: 1,
            verify_all_at_end: true,
        }
    }
}

/// What a workload did and found.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct WorkloadReport {
    /// Requests pushed on the rings (data, flush, barrier and discard;
    /// including the final verification reads).
    pub requests: u64,
    /// Read requests completed successfully.
    pub reads: u64,
    /// Write requests completed successfully.
    pub writes: u64,
    /// Flush and barrier requests completed successfully.
    pub flushes: u64,
    /// Discard requests completed successfully.
    pub discards: u64,
    /// Bytes read.
    pub bytes_read: u64,
    /// Bytes written.
    pub bytes_written: u64,
    /// Bytes discarded (by successful discards).
    pub bytes_discarded: u64,
    /// Bytes compared against the shadow.
    pub bytes_checked: u64,
    /// 512-byte sectors whose content differed from the shadow.
    pub mismatches: u64,
    /// Responses with a status other than `BLKIF_RSP_OKAY`.
    pub error_responses: u64,
    /// Requests sent as `BLKIF_OP_INDIRECT`.
    pub indirect_requests: u64,
    /// The largest number of segments one request carried.
    pub max_segments_seen: u32,
    /// Requests pushed on each queue, by queue index.
    pub requests_per_queue: Vec<u64>,
    /// Wall time (informational only, never asserted).
    pub elapsed: Duration,
    /// A description of the first mismatch, for diagnosis.
    pub first_mismatch: Option<String>,
}

/// A request the engine plans to push.
#[derive(Clone, Debug)]
struct Planned {
    operation: u8,
    sector: u64,
    nsect: u64,
    /// A discard's flag.
    flag: u8,
}

/// A workload request in flight.
#[derive(Debug)]
struct WlInFlight {
    queue: usize,
    /// The operation done (`indirect_op` of an indirect request).
    operation: u8,
    /// The operation on the wire.
    wire_op: u8,
    sector: u64,
    nsect: u64,
    gen: u64,
    pages: Vec<Page>,
    indirect: Vec<Page>,
}

/// Shadow value of a sector whose content is unknown (a failed write, a
/// discard: blkif does not promise zeroes after one).
const UNKNOWN: u64 = u64::MAX;

/// Completed writes remembered as discard candidates.
const DISCARD_CANDIDATES: usize = 64;

struct Engine<'a> {
    fe: &'a mut Frontend,
    /// Requests kept in flight per queue.
    qd: usize,
    /// Pages (segments) per request.
    seg_limit: u64,
    inflight: HashMap<u64, WlInFlight>,
    per_queue: Vec<usize>,
    next_queue: usize,
    pending: std::collections::VecDeque<Planned>,
    shadow: HashMap<u64, u64>,
    next_gen: u64,
    writes_since_flush: u32,
    writes_since_barrier: u32,
    writes_since_discard: u32,
    discard_due: bool,
    recent_writes: std::collections::VecDeque<(u64, u64)>,
    report: WorkloadReport,
}

impl Engine<'_> {
    /// Requests kept in flight over all queues.
    fn total_qd(&self) -> usize {
        self.qd * self.per_queue.len().max(1)
    }

    fn overlaps(&self, sector: u64, nsect: u64) -> bool {
        let end = sector + nsect;
        self.inflight
            .values()
            .any(|r| r.nsect > 0 && r.sector < end && sector < r.sector + r.nsect)
            || self
                .pending
                .iter()
                .any(|r| r.nsect > 0 && r.sector < end && sector < r.sector + r.nsect)
    }

    /// Splits an I/O into requests of at most `seg_limit` pages.
    fn plan_io(&mut self, operation: u8, sector: u64, nsect: u64) {
        let per_req = self.seg_limit * SECTORS_PER_PAGE;
        let mut s = sector;
        let end = sector + nsect;
        while s < end {
            let n = (end - s).min(per_req);
            self.pending.push_back(Planned {
                operation,
                sector: s,
                nsect: n,
                flag: 0,
            });
            s += n;
            if operation == BLKIF_OP_WRITE {
                self.writes_since_flush += 1;
                self.writes_since_barrier += 1;
                self.writes_since_discard += 1;
                let fe = &self.fe;
                if fe.profile.flush_every > 0
                    && fe.info.flush
                    && self.writes_since_flush >= fe.profile.flush_every
                {
                    self.writes_since_flush = 0;
                    self.pending.push_back(Planned {
                        operation: BLKIF_OP_FLUSH_DISKCACHE,
                        sector: 0,
                        nsect: 0,
                        flag: 0,
                    });
                }
                if fe.profile.barrier_every > 0
                    && fe.info.barrier
                    && self.writes_since_barrier >= fe.profile.barrier_every
                {
                    self.writes_since_barrier = 0;
                    self.pending.push_back(Planned {
                        operation: BLKIF_OP_WRITE_BARRIER,
                        sector: 0,
                        nsect: 0,
                        flag: 0,
                    });
                }
                if fe.profile.discard_every > 0
                    && fe.info.discard
                    && self.writes_since_discard >= fe.profile.discard_every
                {
                    self.writes_since_discard = 0;
                    self.discard_due = true;
                }
            }
        }
    }

    /// The area a discard of `sector..sector + nsect` covers: widened to
    /// whole discard extents (`discard-granularity`, default the sector
    /// size, offset by `discard-alignment`), in whole logical sectors, and
    /// kept inside the medium; `None` when nothing is left.
    fn discard_extent(&self, sector: u64, nsect: u64) -> Option<(u64, u64)> {
        let info = &self.fe.info;
        let ss = u64::from(info.sector_size.max(512)) / 512;
        let gran_bytes = match info.discard_granularity {
            0 => u64::from(info.sector_size.max(512)),
            g => u64::from(g),
        };
        let gran = gran_bytes
            .div_ceil(512)
            .div_ceil(ss)
            .checked_mul(ss)?
            .max(1);
        let align = (u64::from(info.discard_alignment) / 512) % gran;
        let start = if sector >= align {
            align + (sector - align) / gran * gran
        } else {
            align
        };
        let end = sector.checked_add(nsect)?;
        let mut aligned_end = if end > align {
            align + (end - align).div_ceil(gran) * gran
        } else {
            return None;
        };
        if aligned_end > info.sectors {
            aligned_end = align + info.sectors.checked_sub(align)? / gran * gran;
        }
        (aligned_end > start).then(|| (start, aligned_end - start))
    }

    /// Plans the discard that is due over a recently written area that no
    /// planned or in-flight I/O touches; stays due when there is none yet.
    fn plan_discard(&mut self) {
        if !self.discard_due {
            return;
        }
        let flag = if self.fe.profile.discard_secure && self.fe.info.discard_secure {
            BLKIF_DISCARD_SECURE
        } else {
            0
        };
        for i in (0..self.recent_writes.len()).rev() {
            let (sector, nsect) = self.recent_writes[i];
            let Some((s, n)) = self.discard_extent(sector, nsect) else {
                continue;
            };
            if self.overlaps(s, n) {
                continue;
            }
            self.recent_writes.remove(i);
            self.discard_due = false;
            self.pending.push_back(Planned {
                operation: BLKIF_OP_DISCARD,
                sector: s,
                nsect: n,
                flag,
            });
            return;
        }
    }

    /// Pushes pending requests while the queue depth and the rings allow,
    /// spreading them round robin over the queues that have room, then
    /// publishes them (kicking each queue whose back-end asked).
    fn push_pending(&mut self) -> Result<(), FrontendError> {
        let nq = self.per_queue.len();
        let mut touched = std::vec![false; nq];
        while self.inflight.len() < self.total_qd() {
            let Some(p) = self.pending.front().cloned() else {
                break;
            };
            let mut chosen = None;
            for k in 0..nq {
                let q = (self.next_queue + k) % nq;
                if self.per_queue[q] < self.qd && self.fe.ring_q(q)?.free_slots() > 0 {
                    chosen = Some(q);
                    break;
                }
            }
            let Some(q) = chosen else {
                break;
            };
            self.pending.pop_front();
            self.push_one(&p, q)?;
            self.next_queue = (q + 1) % nq;
            touched[q] = true;
        }
        for (q, t) in touched.into_iter().enumerate() {
            if t {
                self.fe.publish_and_kick_q(q)?;
            }
        }
        Ok(())
    }

    fn push_one(&mut self, p: &Planned, q: usize) -> Result<(), FrontendError> {
        let id = self.fe.new_id();
        let write = p.operation == BLKIF_OP_WRITE;
        let gen = if write {
            self.next_gen += 1;
            self.next_gen
        } else {
            0
        };
        let mut segs = Vec::new();
        let mut pages = Vec::new();
        if p.operation == BLKIF_OP_READ || write {
            let mut left = p.nsect;
            let mut sector = p.sector;
            let mut buf = [0u8; SECTOR];
            while left > 0 {
                let n = left.min(SECTORS_PER_PAGE);
                // Without persistent grants, pages for writes are granted
                // read-only: the back-end only reads them. A persistent
                // page plays blkfront's bounce buffer: the data is copied
                // into it before the request and out of it after.
                let page = self.fe.data_page(write)?;
                pages.push(page);
                if write {
                    for k in 0..n {
                        sector_pattern(sector + k, gen, &mut buf);
                        self.fe
                            .guest
                            .memory
                            .write(page.gfn, k as usize * SECTOR, &buf)
                            .map_err(|e| FrontendError::Os(format!("{e:?}")))?;
                    }
                } else {
                    // Stale bytes must not pass for data: poison the page.
                    self.fe
                        .guest
                        .memory
                        .fill(page.gfn, 0, PAGE_SIZE, 0xA5)
                        .map_err(|e| FrontendError::Os(format!("{e:?}")))?;
                }
                segs.push(Segment {
                    gref: page.gref,
                    first_sect: 0,
                    last_sect: (n - 1) as u8,
                });
                left -= n;
                sector += n;
            }
        }
        let mut indirect = Vec::new();
        let (wire_op, body) = if p.operation == BLKIF_OP_DISCARD {
            (
                BLKIF_OP_DISCARD,
                RequestBody::Discard {
                    flag: p.flag,
                    handle: 0,
                    sector_number: p.sector,
                    nr_sectors: p.nsect,
                },
            )
        } else if segs.len() > usize::from(self.fe.profile.max_segments) {
            // More than the profile puts inline (only possible when
            // indirect requests were negotiated): descriptor pages,
            // granted read-only.
            let mut indirect_grefs = [0u32; BLKIF_MAX_INDIRECT_PAGES_PER_REQUEST];
            for (chunk, g) in segs
                .chunks(SEGMENTS_PER_INDIRECT_PAGE)
                .zip(indirect_grefs.iter_mut())
            {
                let page = self.fe.descriptor_page()?;
                indirect.push(page);
                self.fe.write_descriptors(page.gfn, chunk)?;
                *g = page.gref;
            }
            (
                BLKIF_OP_INDIRECT,
                RequestBody::Indirect {
                    indirect_op: p.operation,
                    nr_segments: segs.len() as u16,
                    handle: 0,
                    sector_number: p.sector,
                    indirect_grefs,
                },
            )
        } else {
            let mut seg = [Segment::default(); BLKIF_MAX_SEGMENTS_PER_REQUEST];
            seg[..segs.len()].copy_from_slice(&segs);
            (
                p.operation,
                RequestBody::Rw {
                    nr_segments: segs.len() as u8,
                    handle: 0,
                    sector_number: p.sector,
                    seg,
                },
            )
        };
        let req = BlkifRequest {
            operation: wire_op,
            id,
            body,
        };
        if !self.fe.ring_q(q)?.push_request(&req) {
            for pg in pages.into_iter().chain(indirect) {
                self.fe.release_page(pg)?;
            }
            return Err(FrontendError::RingFull);
        }
        self.report.requests += 1;
        self.report.requests_per_queue[q] += 1;
        self.report.max_segments_seen = self.report.max_segments_seen.max(segs.len() as u32);
        if wire_op == BLKIF_OP_INDIRECT {
            self.report.indirect_requests += 1;
        }
        self.per_queue[q] += 1;
        self.inflight.insert(
            id,
            WlInFlight {
                queue: q,
                operation: p.operation,
                wire_op,
                sector: p.sector,
                nsect: p.nsect,
                gen,
                pages,
                indirect,
            },
        );
        Ok(())
    }

    /// Waits for at least one response and handles every one available, on
    /// every queue.
    fn reap(&mut self, deadline: Instant) -> Result<(), FrontendError> {
        loop {
            let mut got = false;
            for q in 0..self.per_queue.len() {
                while let Some(rsp) = self.fe.ring_q(q)?.take_response() {
                    got = true;
                    self.complete(&rsp, q)?;
                }
            }
            if got {
                return Ok(());
            }
            let seen = *lock_sig(&self.fe.events);
            if self.fe.final_check_all()? {
                continue;
            }
            if Instant::now() >= deadline {
                return Err(FrontendError::Timeout {
                    what: format!("responses ({} requests in flight)", self.inflight.len()),
                });
            }
            wait_change(&self.fe.events, seen, deadline);
        }
    }

    fn complete(&mut self, rsp: &BlkifResponse, q: usize) -> Result<(), FrontendError> {
        // A response counts only on the queue its request went to.
        if self.inflight.get(&rsp.id).map(|r| r.queue) != Some(q) {
            return Err(FrontendError::UnknownResponse { id: rsp.id });
        }
        let r = self
            .inflight
            .remove(&rsp.id)
            .ok_or(FrontendError::UnknownResponse { id: rsp.id })?;
        self.per_queue[q] -= 1;
        // `operation` is copied from the request, but an indirect request
        // is answered with its `indirect_op`: xen-blkfront disables the
        // disk on a response that says BLKIF_OP_INDIRECT.
        let op_ok = if r.wire_op == BLKIF_OP_INDIRECT {
            rsp.operation == r.operation
        } else {
            rsp.operation == r.wire_op
        };
        let ok = rsp.status == BLKIF_RSP_OKAY && op_ok;
        if !ok {
            self.report.error_responses += 1;
        }
        let bytes = r.nsect * SECTOR as u64;
        match r.operation {
            BLKIF_OP_READ if ok => {
                self.report.reads += 1;
                self.report.bytes_read += bytes;
                self.check_read(&r)?;
            }
            BLKIF_OP_WRITE => {
                for k in 0..r.nsect {
                    self.shadow
                        .insert(r.sector + k, if ok { r.gen } else { UNKNOWN });
                }
                if ok {
                    self.report.writes += 1;
                    self.report.bytes_written += bytes;
                    if self.recent_writes.len() == DISCARD_CANDIDATES {
                        self.recent_writes.pop_front();
                    }
                    self.recent_writes.push_back((r.sector, r.nsect));
                }
            }
            BLKIF_OP_DISCARD => {
                // Whatever the status, the content is no longer known.
                for k in 0..r.nsect {
                    self.shadow.insert(r.sector + k, UNKNOWN);
                }
                if ok {
                    self.report.discards += 1;
                    self.report.bytes_discarded += bytes;
                }
            }
            BLKIF_OP_FLUSH_DISKCACHE | BLKIF_OP_WRITE_BARRIER if ok => self.report.flushes += 1,
            _ => {}
        }
        for p in r.pages.into_iter().chain(r.indirect) {
            self.fe.release_page(p)?;
        }
        Ok(())
    }

    /// Compares a completed read's pages with the shadow, skipping sectors
    /// whose content is unknown.
    fn check_read(&mut self, r: &WlInFlight) -> Result<(), FrontendError> {
        let mut got = [0u8; SECTOR];
        let mut want = [0u8; SECTOR];
        for k in 0..r.nsect {
            let sector = r.sector + k;
            let gen = self.shadow.get(&sector).copied().unwrap_or(0);
            if gen == UNKNOWN {
                continue;
            }
            let page = &r.pages[(k / SECTORS_PER_PAGE) as usize];
            let off = (k % SECTORS_PER_PAGE) as usize * SECTOR;
            self.fe
                .guest
                .memory
                .read(page.gfn, off, &mut got)
                .map_err(|e| FrontendError::Os(format!("{e:?}")))?;
            sector_pattern(sector, gen, &mut want);
            self.report.bytes_checked += SECTOR as u64;
            if got != want {
                self.report.mismatches += 1;
                if self.report.first_mismatch.is_none() {
                    let seen_sector = u64::from_le_bytes(got[..8].try_into().unwrap_or_default());
                    let seen_gen = u64::from_le_bytes(got[8..16].try_into().unwrap_or_default());
                    self.report.first_mismatch = Some(format!(
                        "sector {sector}: expected generation {gen}, found bytes of \
                         sector {seen_sector} generation {seen_gen}"
                    ));
                }
            }
        }
        Ok(())
    }

    /// Runs until every planned and in-flight request has finished.
    fn drain(&mut self, guard: Duration) -> Result<(), FrontendError> {
        while !self.pending.is_empty() || !self.inflight.is_empty() {
            self.push_pending()?;
            if !self.inflight.is_empty() {
                self.reap(Instant::now() + guard)?;
            }
        }
        Ok(())
    }
}

/// Runs `wl` on a connected front-end: keeps `queue_depth` requests in
/// flight on each queue (requests go round robin to the queues with room;
/// the queues are served interleaved by this one thread, while the
/// back-end serves them independently), splits each I/O into requests of
/// at most `max_segments` pages, or of at most the negotiated indirect
/// segments when the back-end offered indirect requests (only requests of
/// more than `max_segments` pages, 11 for every named profile, are sent as
/// `BLKIF_OP_INDIRECT`, as `xen-blkfront` does), never overlaps two
/// in-flight I/Os, writes [`sector_pattern`]s and checks every read
/// against the shadow; issues flushes, barriers and discards as the
/// profile asks and the back-end offers (a discarded area reads as
/// unknown until rewritten: it is not checked); optionally reads the whole
/// touched range back at the end. A sector-aware profile rounds `io_size`
/// up to the medium's sector size; others refuse a size that is not a
/// multiple of it. Manual requests must not be in flight.
pub fn run_workload(fe: &mut Frontend, wl: &Workload) -> Result<WorkloadReport, FrontendError> {
    if fe.conn.is_none() {
        return Err(FrontendError::NotConnected);
    }
    if !fe.manual.is_empty() {
        return Err(FrontendError::Invalid("manual requests in flight".into()));
    }
    let start = Instant::now();
    let info = fe.info.clone();
    let ss = u64::from(info.sector_size.max(512));
    let mut io = u64::from(wl.io_size);
    if fe.profile.sector_aware && ss % 512 == 0 {
        io = io.max(1).div_ceil(ss) * ss;
    }
    if io == 0 || io % 512 != 0 || io % ss != 0 {
        return Err(FrontendError::Invalid(format!(
            "io_size {} on a {}-byte-sector medium",
            wl.io_size, ss
        )));
    }
    let nsect = io / 512;
    let align = (ss / 512).max(1);
    let (rstart, rlen) = wl.region_sectors.unwrap_or((0, info.sectors));
    let rstart = rstart.div_ceil(align) * align;
    let rend = rstart
        .checked_add(rlen)
        .filter(|&e| e <= info.sectors)
        .ok_or_else(|| FrontendError::Invalid("region beyond the medium".into()))?;
    if rend < rstart + nsect {
        return Err(FrontendError::Invalid("region smaller than one I/O".into()));
    }
    // The number of aligned start positions.
    let slots = (rend - rstart - nsect) / align + 1;
    let guard = fe.hang_guard;
    let qd = (fe.profile.queue_depth.max(1) as usize).min(fe.info.ring_size.max(1) as usize);
    let nq = fe.nqueues().max(1);
    let seg_limit = u64::from(
        info.max_indirect_segments
            .max(u32::from(fe.profile.max_segments)),
    );
    let mut rng = wl.seed ^ 0x5DEE_CE66_D1CE_5EED;
    let mut eng = Engine {
        fe,
        qd,
        seg_limit,
        inflight: HashMap::new(),
        per_queue: std::vec![0; nq],
        next_queue: 0,
        pending: std::collections::VecDeque::new(),
        shadow: HashMap::new(),
        next_gen: 0,
        writes_since_flush: 0,
        writes_since_barrier: 0,
        writes_since_discard: 0,
        discard_due: false,
        recent_writes: std::collections::VecDeque::new(),
        report: WorkloadReport {
            requests_per_queue: std::vec![0; nq],
            ..WorkloadReport::default()
        },
    };
    let mut cursor = 0u64;
    let mut next: Option<(u8, u64)> = None;
    let mut issued = 0u64;
    let mut lo = u64::MAX;
    let mut hi = 0u64;
    while issued < wl.ops || !eng.pending.is_empty() || !eng.inflight.is_empty() {
        // Plan I/Os until the queue depth is covered: requests in flight
        // plus requests planned but not yet on the ring.
        while issued < wl.ops && eng.inflight.len() + eng.pending.len() < eng.total_qd() {
            let (op, sector) = *next.get_or_insert_with(|| {
                let pos = if wl.random {
                    splitmix(&mut rng) % slots
                } else {
                    let p = cursor % slots;
                    cursor = cursor.wrapping_add(nsect.div_ceil(align));
                    p
                };
                let read = (splitmix(&mut rng) % 100) < u64::from(wl.read_pct);
                let op = if read { BLKIF_OP_READ } else { BLKIF_OP_WRITE };
                (op, rstart + pos * align)
            });
            if eng.overlaps(sector, nsect) {
                break;
            }
            next = None;
            lo = lo.min(sector);
            hi = hi.max(sector + nsect);
            eng.plan_io(op, sector, nsect);
            issued += 1;
        }
        eng.plan_discard();
        eng.push_pending()?;
        if !eng.inflight.is_empty() {
            eng.reap(Instant::now() + guard)?;
        }
    }
    if wl.verify_all_at_end && lo < hi {
        let chunk = eng.seg_limit * SECTORS_PER_PAGE;
        let mut s = lo;
        while s < hi {
            let n = (hi - s).min(chunk);
            eng.plan_io(BLKIF_OP_READ, s, n);
            s += n;
        }
        eng.drain(guard)?;
    }
    let mut report = eng.report;
    report.elapsed = start.elapsed();
    Ok(report)
}
