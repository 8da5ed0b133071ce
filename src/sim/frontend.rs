//! A guest's block front-end, written from the front-end's side of the
//! protocol: the front-end half of the XenBus handshake of `io/xenbus.h`
//! and `io/blkif.h` ("Front-end Request Transport Parameters": `ring-ref`,
//! `ring-ref%u`, `ring-page-order`, `num-ring-pages`, `event-channel`,
//! `protocol`), the front ring of `io/ring.h` (`FRONT_RING_INIT`,
//! `RING_PUSH_REQUESTS_AND_CHECK_NOTIFY`, `RING_FINAL_CHECK_FOR_RESPONSES`)
//! and the grant handling of a non-persistent front-end
//! (`gnttab_grant_foreign_access` before a request,
//! `gnttab_end_foreign_access_ref` after its response).
//!
//! A [`Frontend`] is synchronous: a test or a thread drives it. It offers
//! manual requests (for scenarios and validation tests, including hostile
//! ones: raw slots, impossible producer indices, odd XenStore values) and
//! [`run_workload`], which keeps a queue of requests in flight, writes a
//! deterministic pattern, and checks every byte read against a per-sector
//! shadow of what the medium must hold.
//!
//! Every wait has a hang guard ([`DEFAULT_HANG_GUARD`]); it exists so that a
//! broken back-end fails a test instead of hanging it, never to measure time.

use std::collections::{BTreeMap, HashMap};
use std::format;
use std::string::{String, ToString};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};
use std::vec::Vec;

use super::ffi::Reservation;
use super::host::Domain;
use super::memory::Gfn;
use super::world::{VbdHandle, World};
use super::xenstore::{WatchId, Xenstored};
use crate::abi::{
    Abi, BlkifRequest, BlkifResponse, RequestBody, Segment, BLKIF_MAX_INDIRECT_PAGES_PER_REQUEST,
    BLKIF_MAX_SEGMENTS_PER_REQUEST, BLKIF_OP_DISCARD, BLKIF_OP_FLUSH_DISKCACHE, BLKIF_OP_INDIRECT,
    BLKIF_OP_READ, BLKIF_OP_WRITE, BLKIF_OP_WRITE_BARRIER, BLKIF_RSP_OKAY, XEN_IO_PROTO_ABI_X86_32,
    XEN_IO_PROTO_ABI_X86_64,
};
use crate::host::{DomId, EvtchnPort, GrantRef, XenbusState, XsError, PAGE_SIZE};
use crate::ring::FrontRing;
use crate::sim::evtchn::EventHub;

/// The default bound on every wait: a guard against hangs only.
pub const DEFAULT_HANG_GUARD: Duration = Duration::from_secs(10);

const SECTOR: usize = 512;
const SECTORS_PER_PAGE: u64 = (PAGE_SIZE / SECTOR) as u64;

/// How a simulated front-end behaves: which of the front-ends in the field
/// it stands for.
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
    /// Requests kept in flight by [`run_workload`].
    pub queue_depth: u32,
    /// Write state Connected directly, skipping Initialised.
    pub skip_initialised: bool,
    /// Issue a `BLKIF_OP_FLUSH_DISKCACHE` after every N writes, if offered
    /// (0 = never).
    pub flush_every: u32,
    /// Issue a `BLKIF_OP_WRITE_BARRIER` after every N writes, if offered
    /// (0 = never).
    pub barrier_every: u32,
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
        }
    }

    /// A profile by name: `linux` (x86_64 layout, 4-page ring, queue depth
    /// 32), `legacy` (one-page ring, no `ring-page-order` nor
    /// `num-ring-pages`, queue depth 8), `x86_32` (the i386 layout),
    /// `multipage` (32-page ring), `skipper` (goes straight to Connected),
    /// `flusher` (flush and barrier traffic). `None` for other names.
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
            _ => return None,
        })
    }

    /// Every name [`Profile::by_name`] knows.
    pub const NAMES: [&'static str; 6] = [
        "linux",
        "legacy",
        "x86_32",
        "multipage",
        "skipper",
        "flusher",
    ];
}

/// What the back-end published, as the front-end read it after Connected.
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
    /// Pages of the ring this front-end set up.
    pub ring_pages: u32,
    /// Slots of that ring.
    pub ring_size: u32,
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

/// One granted data page.
#[derive(Clone, Copy, Debug)]
struct Page {
    gfn: Gfn,
    gref: GrantRef,
}

/// A manual request in flight.
#[derive(Debug)]
struct ManualInFlight {
    pages: Vec<Page>,
    segs: Vec<(u8, u8)>,
}

/// The live connection.
struct Conn {
    ring: Option<FrontRing>,
    res: Reservation,
    ring_frames: Vec<Gfn>,
    ring_grefs: Vec<GrantRef>,
    port: EvtchnPort,
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

const TRANSPORT_KEYS: [&str; 5] = [
    "ring-ref",
    "ring-page-order",
    "num-ring-pages",
    "event-channel",
    "protocol",
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
        let xen = world.xen();
        let fe_dom = vbd.frontend_dom();
        let guest = xen
            .domains
            .get(fe_dom)
            .ok_or(FrontendError::NoGuest(fe_dom))?;
        let be_changed: Signal = Arc::new((Mutex::new(0), Condvar::new()));
        let sig = Arc::clone(&be_changed);
        let be_state = format!("{}/state", vbd.backend_path());
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

    /// The front-end's event-channel port while connected.
    pub fn port(&self) -> Option<EvtchnPort> {
        self.conn.as_ref().map(|c| c.port)
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
        self.read_num(&format!("{}/state", self.be_path))
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
        let p = format!("{}/state", self.fe_path);
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
    /// InitWait, sets up and grants the ring, allocates the event channel,
    /// publishes the transport parameters (with the overrides), enters
    /// Initialised (or Connected when the profile skips it), and waits for
    /// the back-end's Connected. A back-end that goes to Closing or Closed
    /// instead gives [`FrontendError::Refused`] with its error node.
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
            let _ = self.xs.remove(&format!("{}/ring-ref{i}", self.fe_path));
        }
        self.write_state(XenbusState::Initialising)?;
        self.wait_backend(
            "back-end InitWait",
            |s| s == XenbusState::InitWait,
            |s| s == XenbusState::Closing,
        )?;

        let max_order = self
            .read_num(&format!("{}/max-ring-page-order", self.be_path))?
            .unwrap_or(0);
        let order = u64::from(self.profile.ring_page_order)
            .min(max_order)
            .min(5) as u32;
        let pages = 1u32 << order;

        // Ring pages: guest frames granted to the back-end, seen by the
        // guest through its own mapping of them.
        let mut res =
            Reservation::new(pages as usize).map_err(|e| FrontendError::Os(e.to_string()))?;
        let mut ring_frames = Vec::new();
        let mut ring_grefs = Vec::new();
        for i in 0..pages as usize {
            let gfn = self
                .guest
                .memory
                .alloc_frame()
                .ok_or(FrontendError::NoMemory)?;
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
        for &gfn in &ring_frames {
            ring_grefs.push(self.guest.grants.grant(gfn, self.be_dom, false));
        }
        let port = self.hub.alloc_unbound(self.fe_dom, self.be_dom);
        let ev = Arc::clone(&self.events);
        self.hub
            .set_handler(self.fe_dom, port, std::boxed::Box::new(move || bump(&ev)))
            .map_err(|e| FrontendError::Os(format!("evtchn: {e:?}")))?;
        self.info = BackendInfo {
            max_ring_page_order: max_order as u32,
            ring_pages: pages,
            ring_size: ring.size(),
            ..BackendInfo::default()
        };
        self.conn = Some(Conn {
            ring: Some(ring),
            res,
            ring_frames,
            ring_grefs,
            port,
        });

        // Transport parameters.
        let conn = self.conn.as_ref().ok_or(FrontendError::NotConnected)?;
        let mut nodes: BTreeMap<String, Option<String>> = BTreeMap::new();
        if order == 0 {
            nodes.insert("ring-ref".into(), Some(conn.ring_grefs[0].to_string()));
        } else {
            for (i, g) in conn.ring_grefs.iter().enumerate() {
                nodes.insert(format!("ring-ref{i}"), Some(g.to_string()));
            }
        }
        if self.profile.legacy_num_ring_pages {
            if order > 0 {
                nodes.insert("num-ring-pages".into(), Some(pages.to_string()));
            }
        } else if order > 0 {
            nodes.insert("ring-page-order".into(), Some(order.to_string()));
        }
        nodes.insert("event-channel".into(), Some(port.to_string()));
        let proto = match self.profile.abi {
            Abi::X86_32 => XEN_IO_PROTO_ABI_X86_32,
            Abi::X86_64 => XEN_IO_PROTO_ABI_X86_64,
        };
        nodes.insert("protocol".into(), Some(proto.to_string()));
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
                let p = format!("{}/state", self.fe_path);
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
        let sectors = num(self, "sectors")?.ok_or_else(|| FrontendError::BadNode {
            path: format!("{be}/sectors"),
        })?;
        let ss = num(self, "sector-size")?.unwrap_or(512);
        let pss = num(self, "physical-sector-size")?.unwrap_or(ss);
        let info = num(self, "info")?.unwrap_or(0);
        let flush = num(self, "feature-flush-cache")?.unwrap_or(0) == 1;
        let barrier = num(self, "feature-barrier")?.unwrap_or(0) == 1;
        let bad = |k: &str| FrontendError::BadNode {
            path: format!("{be}/{k}"),
        };
        self.info.sectors = sectors;
        self.info.sector_size = u32::try_from(ss).map_err(|_| bad("sector-size"))?;
        self.info.physical_sector_size =
            u32::try_from(pss).map_err(|_| bad("physical-sector-size"))?;
        self.info.info = u32::try_from(info).map_err(|_| bad("info"))?;
        self.info.flush = flush;
        self.info.barrier = barrier;
        Ok(())
    }

    fn ring(&mut self) -> Result<&mut FrontRing, FrontendError> {
        self.conn
            .as_mut()
            .and_then(|c| c.ring.as_mut())
            .ok_or(FrontendError::NotConnected)
    }

    /// Sends an event to the back-end (`notify_remote_via_evtchn`).
    pub fn kick(&mut self) {
        if let Some(c) = &self.conn {
            let _ = self.hub.notify(self.fe_dom, c.port);
        }
    }

    /// Publishes pushed requests and kicks the back-end if it asked.
    fn publish_and_kick(&mut self) -> Result<(), FrontendError> {
        if self.ring()?.publish_requests() {
            self.kick();
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

    fn grant_page(&mut self, readonly: bool) -> Result<Page, FrontendError> {
        let gfn = self.take_frame()?;
        let gref = self.guest.grants.grant(gfn, self.be_dom, readonly);
        Ok(Page { gfn, gref })
    }

    /// Ends a data page's grant (which must succeed: the back-end unmapped
    /// it before answering) and returns its frame to the pool.
    fn release_page(&mut self, p: Page) -> Result<(), FrontendError> {
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

    /// Builds, grants and submits a manual request; returns its id. Pages
    /// are allocated and granted one per segment.
    pub fn submit(&mut self, req: &ManualRequest) -> Result<u64, FrontendError> {
        let id = self.push_manual(req)?;
        self.publish_and_kick()?;
        Ok(id)
    }

    /// Pushes every request of `reqs` and then publishes them at once (one
    /// `req_prod` update, at most one kick), so the back-end sees them back
    /// to back; returns their ids in order.
    pub fn submit_many(&mut self, reqs: &[ManualRequest]) -> Result<Vec<u64>, FrontendError> {
        let mut ids = Vec::new();
        for r in reqs {
            ids.push(self.push_manual(r)?);
        }
        self.publish_and_kick()?;
        Ok(ids)
    }

    fn push_manual(&mut self, req: &ManualRequest) -> Result<u64, FrontendError> {
        if self.conn.is_none() {
            return Err(FrontendError::NotConnected);
        }
        if self.ring()?.free_slots() == 0 {
            return Err(FrontendError::RingFull);
        }
        let max_pages = BLKIF_MAX_SEGMENTS_PER_REQUEST.max(BLKIF_MAX_INDIRECT_PAGES_PER_REQUEST);
        if req.segs.len() > max_pages {
            return Err(FrontendError::Invalid(format!(
                "{} segments",
                req.segs.len()
            )));
        }
        let mut pages = Vec::new();
        for &(first, last) in &req.segs {
            let p = self.grant_page(req.readonly_grants)?;
            let (off, len) = seg_span(first, last);
            let byte = req.fill.unwrap_or(0);
            self.guest
                .memory
                .fill(p.gfn, 0, PAGE_SIZE, 0)
                .and_then(|_| self.guest.memory.fill(p.gfn, off, len, byte))
                .map_err(|e| FrontendError::Os(format!("{e:?}")))?;
            pages.push(p);
        }
        let id = self.new_id();
        let nsegs = req
            .nr_segments_override
            .unwrap_or(req.segs.len().min(255) as u8);
        let body = match req.operation {
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
                for (g, p) in indirect_grefs.iter_mut().zip(&pages) {
                    *g = p.gref;
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
                for ((s, &(first, last)), p) in seg.iter_mut().zip(&req.segs).zip(&pages) {
                    *s = Segment {
                        gref: p.gref,
                        first_sect: first,
                        last_sect: last,
                    };
                }
                RequestBody::Rw {
                    nr_segments: nsegs,
                    handle: 0,
                    sector_number: req.sector,
                    seg,
                }
            }
        };
        let wire = BlkifRequest {
            operation: req.operation,
            id,
            body,
        };
        if !self.ring()?.push_request(&wire) {
            for p in pages {
                self.release_page(p)?;
            }
            return Err(FrontendError::RingFull);
        }
        self.manual.insert(
            id,
            ManualInFlight {
                pages,
                segs: req.segs.clone(),
            },
        );
        Ok(id)
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

    /// Events the back-end has sent this front-end so far.
    pub fn events_received(&self) -> u64 {
        *lock_sig(&self.events)
    }

    /// Takes every published response; a manual request's pages are read
    /// (kept for [`page_data`](Self::page_data)), their grants ended and
    /// their frames recycled.
    fn reap(&mut self, out: &mut Vec<BlkifResponse>) -> Result<(), FrontendError> {
        while let Some(rsp) = self.ring()?.take_response() {
            if let Some(m) = self.manual.remove(&rsp.id) {
                let mut data = Vec::new();
                for (p, &(first, last)) in m.pages.iter().zip(&m.segs) {
                    let (off, len) = seg_span(first, last);
                    let mut buf = std::vec![0u8; len];
                    self.guest
                        .memory
                        .read(p.gfn, off, &mut buf)
                        .map_err(|e| FrontendError::Os(format!("{e:?}")))?;
                    data.extend_from_slice(&buf);
                }
                self.done.insert(rsp.id, data);
                for p in m.pages {
                    self.release_page(p)?;
                }
            }
            out.push(rsp);
        }
        Ok(())
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
            if self.ring()?.final_check_for_responses() {
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
            if self.ring()?.final_check_for_responses() {
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
    /// ends every grant (which must succeed: the back-end has unmapped
    /// everything), closes the event channel and frees the frames.
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
            for p in m.pages {
                if let Err(e) = self.release_page(p) {
                    result = Err(e);
                }
            }
        }
        if let Some(mut c) = self.conn.take() {
            self.hub.clear_handler(self.fe_dom, c.port);
            self.hub.close(self.fe_dom, c.port);
            if let Some(ring) = c.ring.take() {
                let _ = c.res.take_back(ring.into_mem());
            }
            for i in 0..c.ring_frames.len() {
                let _ = c.res.unmap_frame_at(i);
            }
            for &g in &c.ring_grefs {
                if self.guest.grants.end_access(g).is_err() {
                    result = Err(FrontendError::GrantBusy { gref: g });
                }
            }
            if result.is_ok() {
                for &f in &c.ring_frames {
                    let _ = self.guest.memory.free_frame(f);
                }
            }
        }
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
        if let Some(mut c) = self.conn.take() {
            self.hub.clear_handler(self.fe_dom, c.port);
            // Hand the ring mapping back so the reservation can go.
            if let Some(ring) = c.ring.take() {
                let _ = c.res.take_back(ring.into_mem());
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
    /// Requests pushed on the ring (data, flush and barrier; including the
    /// final verification reads).
    pub requests: u64,
    /// Read requests completed successfully.
    pub reads: u64,
    /// Write requests completed successfully.
    pub writes: u64,
    /// Flush and barrier requests completed successfully.
    pub flushes: u64,
    /// Bytes read.
    pub bytes_read: u64,
    /// Bytes written.
    pub bytes_written: u64,
    /// Bytes compared against the shadow.
    pub bytes_checked: u64,
    /// 512-byte sectors whose content differed from the shadow.
    pub mismatches: u64,
    /// Responses with a status other than `BLKIF_RSP_OKAY`.
    pub error_responses: u64,
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
}

/// A workload request in flight.
#[derive(Debug)]
struct WlInFlight {
    operation: u8,
    sector: u64,
    nsect: u64,
    gen: u64,
    pages: Vec<Page>,
}

/// Shadow value of a sector whose content is unknown (a failed write).
const UNKNOWN: u64 = u64::MAX;

struct Engine<'a> {
    fe: &'a mut Frontend,
    qd: usize,
    inflight: HashMap<u64, WlInFlight>,
    pending: std::collections::VecDeque<Planned>,
    shadow: HashMap<u64, u64>,
    next_gen: u64,
    writes_since_flush: u32,
    writes_since_barrier: u32,
    report: WorkloadReport,
}

impl Engine<'_> {
    fn overlaps(&self, sector: u64, nsect: u64) -> bool {
        let end = sector + nsect;
        self.inflight
            .values()
            .chain(std::iter::empty())
            .any(|r| r.nsect > 0 && r.sector < end && sector < r.sector + r.nsect)
            || self
                .pending
                .iter()
                .any(|r| r.nsect > 0 && r.sector < end && sector < r.sector + r.nsect)
    }

    /// Splits an I/O into requests of at most `max_segments` pages.
    fn plan_io(&mut self, operation: u8, sector: u64, nsect: u64) {
        let per_req = u64::from(self.fe.profile.max_segments) * SECTORS_PER_PAGE;
        let mut s = sector;
        let end = sector + nsect;
        while s < end {
            let n = (end - s).min(per_req);
            self.pending.push_back(Planned {
                operation,
                sector: s,
                nsect: n,
            });
            s += n;
            if operation == BLKIF_OP_WRITE {
                self.writes_since_flush += 1;
                self.writes_since_barrier += 1;
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
                    });
                }
            }
        }
    }

    /// Pushes pending requests while the queue depth and the ring allow,
    /// then publishes them (kicking if the back-end asked).
    fn push_pending(&mut self) -> Result<(), FrontendError> {
        let mut pushed = false;
        while self.inflight.len() < self.qd {
            let Some(p) = self.pending.front().cloned() else {
                break;
            };
            if self.fe.ring()?.free_slots() == 0 {
                break;
            }
            self.pending.pop_front();
            self.push_one(&p)?;
            pushed = true;
        }
        if pushed {
            self.fe.publish_and_kick()?;
        }
        Ok(())
    }

    fn push_one(&mut self, p: &Planned) -> Result<(), FrontendError> {
        let id = self.fe.new_id();
        let write = p.operation != BLKIF_OP_READ;
        let gen = if p.operation == BLKIF_OP_WRITE {
            self.next_gen += 1;
            self.next_gen
        } else {
            0
        };
        let mut seg = [Segment::default(); BLKIF_MAX_SEGMENTS_PER_REQUEST];
        let mut pages = Vec::new();
        let mut left = p.nsect;
        let mut sector = p.sector;
        let mut i = 0;
        let mut buf = [0u8; SECTOR];
        while left > 0 {
            let n = left.min(SECTORS_PER_PAGE);
            // Pages for writes are granted read-only: the back-end only
            // reads them.
            let page = self.fe.grant_page(write)?;
            if p.operation == BLKIF_OP_WRITE {
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
            seg[i] = Segment {
                gref: page.gref,
                first_sect: 0,
                last_sect: (n - 1) as u8,
            };
            pages.push(page);
            i += 1;
            left -= n;
            sector += n;
        }
        let req = BlkifRequest {
            operation: p.operation,
            id,
            body: RequestBody::Rw {
                nr_segments: i as u8,
                handle: 0,
                sector_number: p.sector,
                seg,
            },
        };
        if !self.fe.ring()?.push_request(&req) {
            for pg in pages {
                self.fe.release_page(pg)?;
            }
            return Err(FrontendError::RingFull);
        }
        self.report.requests += 1;
        self.inflight.insert(
            id,
            WlInFlight {
                operation: p.operation,
                sector: p.sector,
                nsect: p.nsect,
                gen,
                pages,
            },
        );
        Ok(())
    }

    /// Waits for at least one response and handles every one available.
    fn reap(&mut self, deadline: Instant) -> Result<(), FrontendError> {
        loop {
            let mut got = false;
            while let Some(rsp) = self.fe.ring()?.take_response() {
                got = true;
                self.complete(&rsp)?;
            }
            if got {
                return Ok(());
            }
            let seen = *lock_sig(&self.fe.events);
            if self.fe.ring()?.final_check_for_responses() {
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

    fn complete(&mut self, rsp: &BlkifResponse) -> Result<(), FrontendError> {
        let r = self
            .inflight
            .remove(&rsp.id)
            .ok_or(FrontendError::UnknownResponse { id: rsp.id })?;
        let ok = rsp.status == BLKIF_RSP_OKAY && rsp.operation == r.operation;
        if !ok {
            self.report.error_responses += 1;
        }
        let bytes = r.nsect * SECTOR as u64;
        match r.operation {
            BLKIF_OP_READ if ok => {
                self.report.reads += 1;
                self.report.bytes_read += bytes;
                let mut got = [0u8; SECTOR];
                let mut want = [0u8; SECTOR];
                for k in 0..r.nsect {
                    let sector = r.sector + k;
                    let page = &r.pages[(k / SECTORS_PER_PAGE) as usize];
                    let off = (k % SECTORS_PER_PAGE) as usize * SECTOR;
                    self.fe
                        .guest
                        .memory
                        .read(page.gfn, off, &mut got)
                        .map_err(|e| FrontendError::Os(format!("{e:?}")))?;
                    let gen = self.shadow.get(&sector).copied().unwrap_or(0);
                    if gen == UNKNOWN {
                        continue;
                    }
                    sector_pattern(sector, gen, &mut want);
                    self.report.bytes_checked += SECTOR as u64;
                    if got != want {
                        self.report.mismatches += 1;
                        if self.report.first_mismatch.is_none() {
                            let seen_sector =
                                u64::from_le_bytes(got[..8].try_into().unwrap_or_default());
                            let seen_gen =
                                u64::from_le_bytes(got[8..16].try_into().unwrap_or_default());
                            self.report.first_mismatch = Some(format!(
                                "sector {sector}: expected generation {gen}, found bytes of \
                                 sector {seen_sector} generation {seen_gen}"
                            ));
                        }
                    }
                }
            }
            BLKIF_OP_WRITE => {
                for k in 0..r.nsect {
                    self.shadow
                        .insert(r.sector + k, if ok { r.gen } else { UNKNOWN });
                }
                if ok {
                    self.report.writes += 1;
                    self.report.bytes_written += bytes;
                }
            }
            BLKIF_OP_FLUSH_DISKCACHE | BLKIF_OP_WRITE_BARRIER if ok => self.report.flushes += 1,
            _ => {}
        }
        for p in r.pages {
            self.fe.release_page(p)?;
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
/// flight, splits each I/O into requests of at most `max_segments` pages,
/// never overlaps two in-flight I/Os, writes [`sector_pattern`]s and checks
/// every read against the shadow; optionally reads the whole touched range
/// back at the end. Manual requests must not be in flight.
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
    let io = u64::from(wl.io_size);
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
    let mut rng = wl.seed ^ 0x5DEE_CE66_D1CE_5EED;
    let mut eng = Engine {
        fe,
        qd,
        inflight: HashMap::new(),
        pending: std::collections::VecDeque::new(),
        shadow: HashMap::new(),
        next_gen: 0,
        writes_since_flush: 0,
        writes_since_barrier: 0,
        report: WorkloadReport::default(),
    };
    let mut cursor = 0u64;
    let mut next: Option<(u8, u64)> = None;
    let mut issued = 0u64;
    let mut lo = u64::MAX;
    let mut hi = 0u64;
    while issued < wl.ops || !eng.pending.is_empty() || !eng.inflight.is_empty() {
        // Plan I/Os until the queue depth is covered: requests in flight
        // plus requests planned but not yet on the ring.
        while issued < wl.ops && eng.inflight.len() + eng.pending.len() < eng.qd {
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
        eng.push_pending()?;
        if !eng.inflight.is_empty() {
            eng.reap(Instant::now() + guard)?;
        }
    }
    if wl.verify_all_at_end && lo < hi {
        let chunk = u64::from(eng.fe.profile.max_segments) * SECTORS_PER_PAGE;
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
