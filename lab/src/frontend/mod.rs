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
//! the medium must hold, from one thread that serves every queue in turn;
//! [`run_workload_per_queue`] drives each queue from a thread of its own
//! instead, as a multi-vCPU guest's blk-mq does.
//!
//! Every wait has a hang guard ([`DEFAULT_HANG_GUARD`]); it exists so that a
//! broken back-end fails a test instead of hanging it, never to measure time.

use super::ffi::Reservation;
use super::host::Domain;
use super::memory::Gfn;
use super::world::{VbdHandle, World};
use super::xenstore::{WatchId, Xenstored};
use crate::evtchn::EventHub;
use crate::store::locked;
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};
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

mod connect;
mod crash;
mod per_queue;
mod profile;
mod request;
mod workload;

pub use crash::{
    read_region, run_crash_writes, CrashCheck, CrashRound, CrashWorkload, Found, Journal, SyncMode,
};
pub use per_queue::run_workload_per_queue;
pub use profile::Profile;
pub use request::{FeatureRequest, IndirectShape, ManualRequest, SegmentGrant};
pub use workload::{
    run_workload, run_workload_shadowed, run_workload_until, sector_pattern, Shadow, Workload,
    WorkloadReport,
};

/// The most queues a [`Profile`] may ask for.
pub const MAX_QUEUES: u32 = 64;

/// The default bound on every wait: a guard against hangs only.
pub const DEFAULT_HANG_GUARD: Duration = Duration::from_secs(10);

const SECTOR: usize = 512;
const SECTORS_PER_PAGE: u64 = (PAGE_SIZE / SECTOR) as u64;

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
    /// The back-end broke the ring protocol: an impossible `rsp_prod`
    /// (more responses than requests made visible, or than the ring
    /// holds, e.g. an index moved backwards), or a response to an id this
    /// front-end never issued or already saw answered. The front-end takes
    /// nothing more from that ring.
    BrokenBackend(String),
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
            FrontendError::BrokenBackend(s) => write!(f, "broken back-end: {s}"),
            FrontendError::Invalid(s) => write!(f, "invalid: {s}"),
            FrontendError::Os(s) => write!(f, "platform: {s}"),
        }
    }
}

impl std::error::Error for FrontendError {}

type Signal = Arc<(Mutex<u64>, Condvar)>;

fn new_signal() -> Signal {
    Arc::new((Mutex::new(0), Condvar::new()))
}

fn lock_sig(s: &Signal) -> MutexGuard<'_, u64> {
    locked(&s.0)
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

/// What a front-end publishes for a transport node instead of what its
/// profile computes (a hostile or broken guest's choice).
#[derive(Clone, Debug, PartialEq, Eq)]
enum XsOverride {
    /// This value.
    Value(String),
    /// Nothing: the node is left out.
    Absent,
    /// The value computed for another node.
    SameAs(String),
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
#[derive(Debug)]
struct Queue {
    ring: Option<FrontRing>,
    res: Reservation,
    ring_frames: Vec<Gfn>,
    ring_grefs: Vec<GrantRef>,
    port: EvtchnPort,
}

/// The live connection.
#[derive(Debug)]
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
#[derive(Debug)]
pub struct Frontend {
    xs: Xenstored,
    hub: EventHub,
    guest: Domain,
    fe_dom: DomId,
    be_dom: DomId,
    fe_path: String,
    be_path: String,
    profile: Profile,
    overrides: BTreeMap<String, XsOverride>,
    /// Where the next connection's ring indices start.
    ring_start: u32,
    hang_guard: Duration,
    be_watch: Option<WatchId>,
    be_changed: Signal,
    events: Signal,
    conn: Option<Conn>,
    info: BackendInfo,
    next_id: u64,
    manual: HashMap<u64, ManualInFlight>,
    /// Ids this front-end wrote into raw slots (a hostile guest's
    /// requests), each answerable once.
    raw_ids: HashMap<u64, u32>,
    done: HashMap<u64, Vec<u8>>,
    pool: Vec<Gfn>,
    persistent: Persistent,
    grants_issued: u64,
    /// Pages of requests a workload stopped waiting for (a back-end that
    /// lost its store answers no more): given back with the connection,
    /// once the back-end has closed it.
    orphans: Vec<Page>,
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
            ring_start: 0,
            hang_guard: DEFAULT_HANG_GUARD,
            be_watch: Some(be_watch),
            be_changed,
            events: Arc::new((Mutex::new(0), Condvar::new())),
            conn: None,
            info: BackendInfo::default(),
            next_id: 1,
            manual: HashMap::new(),
            raw_ids: HashMap::new(),
            done: HashMap::new(),
            pool: Vec::new(),
            persistent: Persistent::default(),
            grants_issued: 0,
            orphans: Vec::new(),
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

    /// At every following [`connect`](Self::connect), writes `value` to
    /// `key` (relative to the front-end directory) instead of the computed
    /// value; `None` leaves the key out altogether.
    pub fn set_xenstore_override(&mut self, key: &str, value: Option<&str>) {
        let o = match value {
            Some(v) => XsOverride::Value(v.to_string()),
            None => XsOverride::Absent,
        };
        self.overrides.insert(key.to_string(), o);
    }

    /// At every following [`connect`](Self::connect), writes to `key` the
    /// value the profile computes for node `other` (both relative to the
    /// front-end directory), e.g. queue 0's `queue-0/ring-ref0` as queue
    /// 1's `queue-1/ring-ref0`. A connect whose nodes have no `other`
    /// fails with [`FrontendError::Invalid`].
    pub fn set_xenstore_same_as(&mut self, key: &str, other: &str) {
        self.overrides
            .insert(key.to_string(), XsOverride::SameAs(other.to_string()));
    }

    /// Starts every index of the rings the next [`connect`](Self::connect)
    /// sets up at `start` instead of 0 ([`FrontRing::init_at`]): a guest
    /// whose indices wrap at 2^32 soon.
    pub fn set_ring_start(&mut self, start: u32) {
        self.ring_start = start;
    }

    /// Undoes the override of `key`: the next [`connect`](Self::connect)
    /// publishes what the profile computes. `true` when there was one.
    pub fn clear_xenstore_override(&mut self, key: &str) -> bool {
        self.overrides.remove(key).is_some()
    }

    /// Undoes every override; returns how many there were.
    pub fn clear_xenstore_overrides(&mut self) -> usize {
        std::mem::take(&mut self.overrides).len()
    }

    /// What the back-end published at connect.
    pub fn info(&self) -> &BackendInfo {
        &self.info
    }

    /// Whether connected.
    pub fn is_connected(&self) -> bool {
        self.conn.is_some()
    }

    /// The guest frames of queue `q`'s shared ring while connected (empty
    /// otherwise): where a test impersonating a broken back-end writes.
    pub fn ring_frames(&self, q: usize) -> Vec<Gfn> {
        self.conn
            .as_ref()
            .and_then(|c| c.queues.get(q))
            .map(|q| q.ring_frames.clone())
            .unwrap_or_default()
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
        self.page(false, readonly)
    }

    /// An indirect descriptor page, granted read-only: from its persistent
    /// pool when persistent grants are in use, else fresh.
    fn descriptor_page(&mut self) -> Result<Page, FrontendError> {
        self.page(true, true)
    }

    /// A data page (`descriptor` false) or an indirect descriptor page:
    /// taken from its persistent pool, or granted and added to it (data
    /// pages writable, descriptor pages read-only), when persistent grants
    /// are in use; else a fresh grant, read-only when `readonly`.
    fn page(&mut self, descriptor: bool, readonly: bool) -> Result<Page, FrontendError> {
        if !self.info.persistent {
            return self.grant_page(readonly);
        }
        let pool = if descriptor {
            &mut self.persistent.indirect
        } else {
            &mut self.persistent.data
        };
        if let Some(p) = pool.pop() {
            return Ok(p);
        }
        let p = Page {
            persistent: true,
            ..self.grant_page(descriptor)?
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

    /// A hostile write: raw bytes into the slot at the private producer
    /// index (which does not move).
    pub fn write_raw_slot(&mut self, bytes: &[u8]) {
        if let Ok(i) = self.ring().map(|r| r.req_prod_pvt()) {
            self.write_raw_slot_at(i, bytes);
        }
    }

    /// A hostile write: raw bytes into slot `index` (masked to the ring).
    /// The id the slot then holds is one this front-end issued: a response
    /// to it is taken (once).
    pub fn write_raw_slot_at(&mut self, index: u32, bytes: &[u8]) {
        if let Ok(r) = self.ring() {
            r.write_raw_slot(index, bytes);
            let id = r.read_slot(index).id;
            *self.raw_ids.entry(id).or_insert(0) += 1;
        }
    }

    /// A hostile write: stores any `req_prod`.
    pub fn set_req_prod_raw(&mut self, v: u32) {
        self.set_req_prod_raw_on(0, v);
    }

    /// A hostile write: stores any `req_prod` on queue `q`'s ring, and
    /// kicks that queue.
    pub fn set_req_prod_raw_on(&mut self, q: usize, v: u32) {
        if let Ok(r) = self.ring_q(q) {
            r.set_req_prod_raw(v);
        }
        if q != 0 {
            self.kick_queue(q);
        }
    }

    /// The producer index the front-end would publish next on queue `q`.
    pub fn req_prod_pvt_on(&mut self, q: usize) -> Option<u32> {
        self.ring_q(q).ok().map(|r| r.req_prod_pvt())
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
    ///
    /// The back-end is not trusted: an impossible `rsp_prod`, or a
    /// response to an id not in flight on that queue (never issued, or
    /// already answered) is [`FrontendError::BrokenBackend`], and nothing
    /// more is taken.
    fn reap(&mut self, out: &mut Vec<BlkifResponse>) -> Result<(), FrontendError> {
        for q in 0..self.nqueues() {
            while let Some(rsp) = take_checked(self.ring_q(q)?, q)? {
                if self.manual.get(&rsp.id).is_some_and(|m| m.queue == q) {
                    if let Some(m) = self.manual.remove(&rsp.id) {
                        self.finish_manual(rsp.id, m)?;
                    }
                } else if let Some(n) = self.raw_ids.get_mut(&rsp.id).filter(|n| **n > 0) {
                    *n -= 1;
                } else {
                    return Err(FrontendError::BrokenBackend(format!(
                        "queue {q}: a response to id {}, which is not in flight on it \
                         (never issued, or already answered)",
                        rsp.id
                    )));
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

    /// Connected, with no manual request in flight: free for a workload.
    fn check_idle(&self) -> Result<(), FrontendError> {
        if self.conn.is_none() {
            return Err(FrontendError::NotConnected);
        }
        if !self.manual.is_empty() {
            return Err(FrontendError::Invalid("manual requests in flight".into()));
        }
        Ok(())
    }

    /// After a last look at every ring (`RING_FINAL_CHECK_FOR_RESPONSES`),
    /// waits for the back-end's next event until `wake` (at the latest
    /// `deadline`): `false` when nothing is on the rings and `deadline`
    /// has passed, else `true` (responses may be there to take).
    fn await_event(&mut self, deadline: Instant, wake: Instant) -> Result<bool, FrontendError> {
        let seen = *lock_sig(&self.events);
        if self.final_check_all()? {
            return Ok(true);
        }
        if Instant::now() >= deadline {
            return Ok(false);
        }
        wait_change(&self.events, seen, wake);
        Ok(true)
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
            if !self.await_event(deadline, deadline)? {
                return Err(FrontendError::Timeout {
                    what: format!("{n} responses ({} arrived)", out.len()),
                });
            }
        }
    }

    /// Waits up to `limit` for responses and returns whatever arrived (for
    /// checking that nothing does).
    pub fn poll_responses(&mut self, limit: Duration) -> Result<Vec<BlkifResponse>, FrontendError> {
        let deadline = Instant::now() + limit;
        let mut out = Vec::new();
        loop {
            self.reap(&mut out)?;
            if !self.await_event(deadline, deadline)? {
                return Ok(out);
            }
        }
    }

    /// The data in a completed manual request's pages: each segment's
    /// sectors, in order. Empty for an unknown or unfinished id.
    pub fn page_data(&self, id: u64) -> Vec<u8> {
        self.done.get(&id).cloned().unwrap_or_default()
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

/// The next response on queue `q`'s ring, `None` when caught up;
/// an impossible `rsp_prod` is [`FrontendError::BrokenBackend`].
fn take_checked(ring: &mut FrontRing, q: usize) -> Result<Option<BlkifResponse>, FrontendError> {
    ring.take_response()
        .map_err(|e| FrontendError::BrokenBackend(format!("queue {q}: {e:?}")))
}

/// The byte span `(offset, len)` of segment `first..=last` in its page,
/// clamped to the page (hostile segments included).
fn seg_span(first: u8, last: u8) -> (usize, usize) {
    let off = (usize::from(first) * SECTOR).min(PAGE_SIZE);
    let end = ((usize::from(last) + 1) * SECTOR).min(PAGE_SIZE);
    (off, end.saturating_sub(off))
}
