//! The lab: scenario files, the runner that plays them on a simulated Xen
//! host, and the report `xbb-lab` prints.
//!
//! A scenario (TOML, documented in `lab/scenarios/README.md`) sets
//! `hw.xbb.*` tunables, defines guests (front-end profile, store kind, sector
//! size, size, mode, `online`), and then runs steps in order: XenStore edits
//! of the front-end directory before it connects (`io/xenbus.h`
//! negotiation), the connection itself, workloads, hand-made requests of
//! `io/blkif.h` with their expected response status, raw ring slots and a
//! raw `req_prod` of `io/ring.h`, injected store I/O errors and grant-map
//! failures, the root file system's mount, disconnects and reconnects, and
//! expectations on the back-end's state, its `error` node and its
//! `dev.xbb.N.*` counters. The outcome of every expectation is collected,
//! never panicked on: a scenario passes iff none mismatched.
//!
//! Counter and tunable names are never spelled here: they come from
//! [`SYSCTLS`] and [`TUNABLES`], so the lab renders every row those tables
//! have.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};
use std::{eprintln, format, vec};

use serde::Deserialize;

use super::frontend::{
    run_workload, FeatureRequest, Frontend, FrontendError, ManualRequest, Profile, SegmentGrant,
    Workload, WorkloadReport, MAX_INDIRECT_SEGMENTS,
};
use super::gnttab::MapFault;
use super::store::{IoFaults, StoreKind};
use super::toolstack::{self, VbdSpec};
use super::world::{VbdConfig, VbdHandle, World};
use super::xenstore::WatchStats;
use xbb::abi::{
    BlkifResponse, BLKIF_DISCARD_SECURE, BLKIF_MAX_INDIRECT_PAGES_PER_REQUEST,
    BLKIF_MAX_SEGMENTS_PER_REQUEST, BLKIF_OP_DISCARD, BLKIF_OP_FLUSH_DISKCACHE, BLKIF_OP_INDIRECT,
    BLKIF_OP_READ, BLKIF_OP_RESERVED_1, BLKIF_OP_WRITE, BLKIF_OP_WRITE_BARRIER,
    BLKIF_RSP_EOPNOTSUPP, BLKIF_RSP_ERROR, BLKIF_RSP_OKAY,
};
use xbb::host::{DomId, GrantError, IoError, XenbusState};
use xbb::keys;
use xbb::stats::{Stat, Stats, Tunable, Tunables, SYSCTLS, TUNABLES, TUNABLE_PREFIX};

// ---------------------------------------------------------------------------
// The default scenario
// ---------------------------------------------------------------------------

/// The scenario `xbb-lab` runs without arguments: twelve guests at once,
/// each with its own 64 MiB sparse image and a different front-end (one per
/// negotiated feature), a mixed workload, every byte verified.
pub const DEFAULT_SCENARIO: &str = r#"name = "default"
description = """
Twelve guests at once, each on its own 64 MiB sparse image: a Linux-like
front-end with a 4-page ring, a legacy one-page-ring front-end, the i386
(x86_32) request layout, a 32-page ring on a raw-device store, a front-end
that skips Initialised on a 4 KiB-sector medium, one that sends flushes and
barriers, and one front-end per negotiated feature: indirect segments (256),
persistent grants, 4 queues, discard, I/O sized to a 4 KiB logical sector, and
a modern front-end using all of them at once. Random 4 KiB and sequential
64 KiB reads and writes (64 KiB is 16 segments: indirect where negotiated),
then every byte written is read back and checked."""

[[guest]]
name = "linux"
profile = "linux"
size = "64M"

[[guest]]
name = "legacy"
profile = "legacy"
size = "64M"

[[guest]]
name = "x86_32"
profile = "x86_32"
size = "64M"

[[guest]]
name = "multipage-dev"
profile = "multipage"
store = "device"
size = "64M"

[[guest]]
name = "skipper-4k"
profile = "skipper"
sector_size = 4096
size = "64M"

[[guest]]
name = "flusher"
profile = "flusher"
size = "64M"

[[guest]]
name = "indirect"
profile = "indirect"
size = "64M"

[[guest]]
name = "persistent"
profile = "persistent"
size = "64M"

[[guest]]
name = "multiqueue"
profile = "multiqueue"
size = "64M"

[[guest]]
name = "discard"
profile = "discard"
size = "64M"

[[guest]]
name = "foursector"
profile = "foursector"
sector_size = 4096
size = "64M"

[[guest]]
name = "modern"
profile = "modern"
size = "64M"

[[step]]
do = "connect"

[[step]]
do = "workload"
pattern = "random"
io_size = "4K"
ops = 3000
read_pct = 50
region = "16M"
seed = 1

[[step]]
do = "workload"
pattern = "sequential"
io_size = "64K"
ops = 400
read_pct = 30
offset = "16M"
seed = 2

[[step]]
do = "expect"
state = "Connected"
verify_ok = true
sysctl = { max_request_segments = 256, max_indirect_segments = 256, reqs_completed_with_error = 0, reqs_refused = 0, total_dispatch = ">= 1", grant_map_failures = 0, grants_refused = 0 }

[[step]]
do = "expect"
guest = ["linux", "legacy", "x86_32", "multipage-dev", "skipper-4k", "flusher", "foursector"]
sysctl = { num_queues = 1, persistent_grants = 0, indirect_reqs = 0, discard_reqs = 0 }

[[step]]
do = "expect"
guest = "flusher"
sysctl = { flush_reqs = ">= 1" }

[[step]]
do = "expect"
guest = "indirect"
sysctl = { num_queues = 1, indirect_reqs = ">= 1", persistent_grants = 0 }

[[step]]
do = "expect"
guest = "persistent"
sysctl = { num_queues = 1, persistent_grants = 1, persistent_grant_hits = ">= 1", indirect_reqs = 0 }

[[step]]
do = "expect"
guest = "multiqueue"
sysctl = { num_queues = 4, persistent_grants = 0 }

[[step]]
do = "expect"
guest = ["multiqueue", "modern"]
queue = 3
sysctl = { reqs_received = ">= 1" }

[[step]]
do = "expect"
guest = "discard"
sysctl = { discard = 1, discard_reqs = ">= 1" }

[[step]]
do = "expect"
guest = ["foursector", "skipper-4k"]
backend_nodes = { "sector-size" = "4096" }

[[step]]
do = "expect"
guest = "modern"
sysctl = { num_queues = 4, persistent_grants = 1, persistent_grant_hits = ">= 1", indirect_reqs = ">= 1", discard = 1, discard_reqs = ">= 1", flush_reqs = ">= 1" }
"#;

// ---------------------------------------------------------------------------
// The scenario file
// ---------------------------------------------------------------------------

/// One scenario file.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Scenario {
    /// A short title; the file name when absent.
    #[serde(default)]
    pub name: Option<String>,
    /// What the scenario shows.
    #[serde(default)]
    pub description: Option<String>,
    /// Whether the back-end domain's root file system is mounted at start
    /// (default true). Until it is, no back-end opens its store.
    #[serde(default = "yes")]
    pub root_mounted: bool,
    /// `hw.xbb.*` loader tunables, by leaf name (`max_requests`) or full name.
    #[serde(default)]
    pub tunables: BTreeMap<String, Num>,
    /// The guests, each with one `vbd`.
    #[serde(default, rename = "guest")]
    pub guests: Vec<GuestSpec>,
    /// What happens, in order.
    #[serde(default, rename = "step")]
    pub steps: Vec<Step>,
}

fn yes() -> bool {
    true
}

/// One guest and its virtual disk.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GuestSpec {
    /// How steps name it; `guest<N>` when absent.
    #[serde(default)]
    pub name: Option<String>,
    /// Front-end profile: `linux`, `legacy`, `x86_32`, `multipage`,
    /// `skipper`, `flusher`.
    #[serde(default = "default_profile")]
    pub profile: String,
    /// Store kind: `file` (a vnode) or `device` (a raw device, `O_DIRECT`).
    #[serde(default)]
    pub store: StoreKindSpec,
    /// Logical sector size of the medium, bytes.
    #[serde(default = "default_sector_size")]
    pub sector_size: u32,
    /// Medium size: bytes, or a string with a `K`/`M`/`G` suffix.
    #[serde(default = "default_size")]
    pub size: Size,
    /// `w` (read-write) or `r` (read-only).
    #[serde(default)]
    pub mode: ModeSpec,
    /// The toolstack's `online` node: the back-end survives a front-end
    /// close and serves the next one.
    #[serde(default = "yes")]
    pub online: bool,
    /// `hw.xbb.*` tunables of this guest's back-end instance, over the
    /// scenario's.
    #[serde(default)]
    pub tunables: BTreeMap<String, Num>,
    /// The toolstack's `discard-enable` node (default true): false turns
    /// discard off for this `vbd` whatever its store can do.
    #[serde(default = "yes")]
    pub discard_enable: bool,
}

fn default_profile() -> String {
    String::from("linux")
}

fn default_sector_size() -> u32 {
    512
}

fn default_size() -> Size {
    Size(16 << 20)
}

/// Store kind of a guest's disk.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StoreKindSpec {
    /// A regular file.
    #[default]
    File,
    /// A raw device (here: the image file served as one).
    Device,
}

/// Access mode of a guest's disk.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
pub enum ModeSpec {
    /// Read-write.
    #[default]
    #[serde(rename = "w")]
    ReadWrite,
    /// Read-only.
    #[serde(rename = "r")]
    ReadOnly,
}

/// A byte count: an integer, or a string such as `"64M"`, `"4K"`, `"1G"`,
/// `"512"` (binary units; an optional `iB`/`B` after the letter).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Size(pub u64);

impl Size {
    /// Parses the string form.
    pub fn parse(s: &str) -> Option<Size> {
        let t = s.trim();
        let t = t
            .strip_suffix("iB")
            .or_else(|| t.strip_suffix('B'))
            .unwrap_or(t);
        let (digits, shift) = match t.as_bytes().last()? {
            b'K' | b'k' => (&t[..t.len() - 1], 10),
            b'M' | b'm' => (&t[..t.len() - 1], 20),
            b'G' | b'g' => (&t[..t.len() - 1], 30),
            _ => (t, 0),
        };
        let n = parse_number(digits.trim())?;
        n.checked_mul(1u64 << shift).map(Size)
    }
}

/// Parses a decimal or `0x` hexadecimal number.
fn parse_number(s: &str) -> Option<u64> {
    let s = s.replace('_', "");
    if let Some(h) = s.strip_prefix("0x").or_else(|| s.strip_prefix("0X")) {
        u64::from_str_radix(h, 16).ok()
    } else {
        s.parse().ok()
    }
}

#[derive(Deserialize)]
#[serde(untagged)]
enum NumOrText {
    Num(u64),
    Text(String),
}

impl<'de> Deserialize<'de> for Size {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        match NumOrText::deserialize(d)? {
            NumOrText::Num(n) => Ok(Size(n)),
            NumOrText::Text(s) => Size::parse(&s)
                .ok_or_else(|| serde::de::Error::custom(format!("not a size: {s:?}"))),
        }
    }
}

/// A number written either as an integer or as a string (decimal, `0x`
/// hexadecimal, or a size such as `"4K"`); lets a scenario write values
/// beyond TOML's signed 64-bit integers, e.g. `"0xffffffffffffffff"`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Num(pub u64);

impl<'de> Deserialize<'de> for Num {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        match NumOrText::deserialize(d)? {
            NumOrText::Num(n) => Ok(Num(n)),
            NumOrText::Text(s) => parse_number(s.trim())
                .or_else(|| Size::parse(&s).map(|s| s.0))
                .map(Num)
                .ok_or_else(|| serde::de::Error::custom(format!("not a number: {s:?}"))),
        }
    }
}

/// A response status: `"okay"`, `"error"`, `"eopnotsupp"`, or the number.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Status(pub i16);

impl Status {
    /// The name of a status (`BLKIF_RSP_*`), or its number.
    pub fn name(self) -> String {
        match self.0 {
            BLKIF_RSP_OKAY => String::from("okay"),
            BLKIF_RSP_ERROR => String::from("error"),
            BLKIF_RSP_EOPNOTSUPP => String::from("eopnotsupp"),
            n => n.to_string(),
        }
    }

    fn parse(s: &str) -> Option<Status> {
        match s.trim().to_ascii_lowercase().as_str() {
            "okay" | "ok" => Some(Status(BLKIF_RSP_OKAY)),
            "error" => Some(Status(BLKIF_RSP_ERROR)),
            "eopnotsupp" => Some(Status(BLKIF_RSP_EOPNOTSUPP)),
            other => other.parse().ok().map(Status),
        }
    }
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.name())
    }
}

#[derive(Deserialize)]
#[serde(untagged)]
enum IntOrText {
    Int(i64),
    Text(String),
}

impl<'de> Deserialize<'de> for Status {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let bad = |s: &str| serde::de::Error::custom(format!("not a response status: {s}"));
        match IntOrText::deserialize(d)? {
            IntOrText::Int(n) => i16::try_from(n)
                .map(Status)
                .map_err(|_| bad(&n.to_string())),
            IntOrText::Text(s) => Status::parse(&s).ok_or_else(|| bad(&s)),
        }
    }
}

/// One expected status, or one per response in order.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(untagged)]
pub enum StatusList {
    /// Every response has this status.
    One(Status),
    /// The n-th response has the n-th status.
    Each(Vec<Status>),
}

impl StatusList {
    fn get(&self, i: usize) -> Option<Status> {
        match self {
            StatusList::One(s) => Some(*s),
            StatusList::Each(v) => v.get(i).copied(),
        }
    }
}

/// A request operation: `read`, `write`, `barrier`, `flush`, `reserved`,
/// `discard`, `indirect`, or the number (anything 0..=255).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OpCode(pub u8);

impl OpCode {
    fn parse(s: &str) -> Option<OpCode> {
        Some(OpCode(match s.trim().to_ascii_lowercase().as_str() {
            "read" => BLKIF_OP_READ,
            "write" => BLKIF_OP_WRITE,
            "barrier" | "write_barrier" => BLKIF_OP_WRITE_BARRIER,
            "flush" | "flush_diskcache" => BLKIF_OP_FLUSH_DISKCACHE,
            "reserved" | "reserved_1" => BLKIF_OP_RESERVED_1,
            "discard" => BLKIF_OP_DISCARD,
            "indirect" => BLKIF_OP_INDIRECT,
            n => {
                return parse_number(n)
                    .and_then(|n| u8::try_from(n).ok())
                    .map(OpCode)
            }
        }))
    }

    /// Whether the operation carries data from the guest to the medium.
    pub fn writes(self) -> bool {
        matches!(
            self.0,
            BLKIF_OP_WRITE | BLKIF_OP_WRITE_BARRIER | BLKIF_OP_FLUSH_DISKCACHE
        )
    }
}

impl<'de> Deserialize<'de> for OpCode {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let bad = |s: &str| serde::de::Error::custom(format!("not an operation: {s}"));
        match IntOrText::deserialize(d)? {
            IntOrText::Int(n) => u8::try_from(n).map(OpCode).map_err(|_| bad(&n.to_string())),
            IntOrText::Text(s) => OpCode::parse(&s).ok_or_else(|| bad(&s)),
        }
    }
}

/// An expectation on a counter: an exact value, or a comparison written as
/// a string: `">= 1"`, `"> 0"`, `"<= 4"`, `"< 2"`, `"== 3"`, `"!= 0"`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CounterExpect {
    /// The comparison.
    pub cmp: Cmp,
    /// The value compared with.
    pub value: u64,
}

/// A comparison of [`CounterExpect`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Cmp {
    /// `==`.
    Eq,
    /// `!=`.
    Ne,
    /// `>=`.
    Ge,
    /// `>`.
    Gt,
    /// `<=`.
    Le,
    /// `<`.
    Lt,
}

impl CounterExpect {
    /// Parses `"N"`, `">= N"`, ...
    pub fn parse(s: &str) -> Option<CounterExpect> {
        let s = s.trim();
        let (cmp, rest) = [
            (">=", Cmp::Ge),
            ("<=", Cmp::Le),
            ("==", Cmp::Eq),
            ("!=", Cmp::Ne),
            (">", Cmp::Gt),
            ("<", Cmp::Lt),
        ]
        .iter()
        .find_map(|(p, c)| s.strip_prefix(p).map(|r| (*c, r)))
        .unwrap_or((Cmp::Eq, s));
        let value = parse_number(rest.trim())?;
        Some(CounterExpect { cmp, value })
    }

    /// Whether `v` satisfies the expectation.
    pub fn holds(&self, v: u64) -> bool {
        match self.cmp {
            Cmp::Eq => v == self.value,
            Cmp::Ne => v != self.value,
            Cmp::Ge => v >= self.value,
            Cmp::Gt => v > self.value,
            Cmp::Le => v <= self.value,
            Cmp::Lt => v < self.value,
        }
    }
}

impl fmt::Display for CounterExpect {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let op = match self.cmp {
            Cmp::Eq => "==",
            Cmp::Ne => "!=",
            Cmp::Ge => ">=",
            Cmp::Gt => ">",
            Cmp::Le => "<=",
            Cmp::Lt => "<",
        };
        write!(f, "{op} {}", self.value)
    }
}

impl<'de> Deserialize<'de> for CounterExpect {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        match NumOrText::deserialize(d)? {
            NumOrText::Num(value) => Ok(CounterExpect {
                cmp: Cmp::Eq,
                value,
            }),
            NumOrText::Text(s) => CounterExpect::parse(&s).ok_or_else(|| {
                serde::de::Error::custom(format!("not a counter expectation: {s:?}"))
            }),
        }
    }
}

/// The outcome a `connect` step expects.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ConnectOutcome {
    /// Both ends reach Connected.
    #[default]
    Connected,
    /// The back-end refuses the front-end's parameters.
    Refused,
    /// Either; the outcome is checked by later steps.
    Any,
}

/// An I/O error to inject (`io`, `gone`, `not_supported`, `no_space`, `busy`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum IoErrorSpec {
    /// `EIO`.
    #[default]
    Io,
    /// `ENXIO`.
    Gone,
    /// `EOPNOTSUPP`.
    NotSupported,
    /// `ENOSPC`.
    NoSpace,
    /// `EAGAIN`.
    Busy,
}

impl IoErrorSpec {
    /// The core's error.
    pub fn error(self) -> IoError {
        match self {
            IoErrorSpec::Io => IoError::Io,
            IoErrorSpec::Gone => IoError::Gone,
            IoErrorSpec::NotSupported => IoError::NotSupported,
            IoErrorSpec::NoSpace => IoError::NoSpace,
            IoErrorSpec::Busy => IoError::Busy,
        }
    }
}

/// A grant-map failure to inject (`bad_ref`, `denied`, `no_space`, `general`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum GrantErrorSpec {
    /// `GNTST_bad_gntref`.
    BadRef,
    /// `GNTST_permission_denied`.
    Denied,
    /// `GNTST_no_space`.
    NoSpace,
    /// `GNTST_general_error`.
    #[default]
    General,
}

impl GrantErrorSpec {
    /// The core's error.
    pub fn error(self) -> GrantError {
        match self {
            GrantErrorSpec::BadRef => GrantError::BadRef,
            GrantErrorSpec::Denied => GrantError::Denied,
            GrantErrorSpec::NoSpace => GrantError::NoSpace,
            GrantErrorSpec::General => GrantError::General,
        }
    }
}

/// The access pattern of a workload.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Pattern {
    /// Uniformly random offsets, aligned to the I/O size.
    #[default]
    Random,
    /// One offset after the other, wrapping at the end of the region.
    Sequential,
}

/// Which guests a step applies to: one name, a list, or `"*"` for all.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(untagged)]
pub enum Guests {
    /// The only guest (or every guest, for steps that allow it).
    #[default]
    Default,
    /// One guest by name; `"*"` means every guest.
    One(String),
    /// Several guests by name.
    Many(Vec<String>),
}

/// One step of a scenario. `do` names the action; `guest` names the guest
/// (optional when the scenario has only one).
#[derive(Clone, Debug, Deserialize)]
#[serde(tag = "do", rename_all = "snake_case", deny_unknown_fields)]
pub enum Step {
    /// Sets (`value`) or deletes (`delete = true`) a node of the front-end's
    /// XenStore directory, as the front-end will publish it at connect.
    Xenstore {
        /// The guest(s); every guest when absent, `"*"` too.
        #[serde(default)]
        guest: Guests,
        /// The node, relative to the front-end directory (`ring-page-order`),
        /// or to `queue-<queue>/` when `queue` is given.
        key: String,
        /// The node is queue `queue`'s (`queue-N/<key>`).
        #[serde(default)]
        queue: Option<u32>,
        /// The value written instead of the profile's.
        #[serde(default)]
        value: Option<String>,
        /// Do not write the node at all.
        #[serde(default)]
        delete: bool,
    },
    /// The front-end connects.
    Connect {
        /// The guest(s); every guest when absent, `"*"` too.
        #[serde(default)]
        guest: Guests,
        /// What must happen.
        #[serde(default)]
        expect: ConnectOutcome,
        /// Text the back-end's `error` node must contain (refusals).
        #[serde(default)]
        error_contains: Option<String>,
    },
    /// The front-end closes the connection (Closing, Closed).
    Disconnect {
        /// The guest(s); every guest when absent, `"*"` too.
        #[serde(default)]
        guest: Guests,
    },
    /// Submits one hand-made request and, unless `wait = false`, waits for
    /// its response.
    Request(RequestSpec),
    /// Submits several hand-made requests at once: all are put on their
    /// rings and then published together (one `req_prod` update per ring),
    /// so the back-end sees them back to back; then, unless `wait = false`,
    /// waits for every response. A request of the batch may name a grant of
    /// an earlier one (`seg_grants = [{ seg = 0, in_flight = { request = 0,
    /// seg = 0 } }]`): that grant is then in flight twice.
    Batch {
        /// The guest(s); every guest when absent, `"*"` too.
        #[serde(default)]
        guest: Guests,
        /// The requests, in ring order (no `guest` nor `wait` of their own).
        requests: Vec<RequestSpec>,
        /// Wait for every response (default true).
        #[serde(default = "yes")]
        wait: bool,
    },
    /// Writes raw bytes (hex) into a request slot of the shared ring.
    RawSlot {
        /// The guest(s); every guest when absent, `"*"` too.
        #[serde(default)]
        guest: Guests,
        /// Slot index (taken modulo the ring size by the front-end).
        slot: u32,
        /// The bytes, in hex; spaces allowed.
        hex: String,
    },
    /// Writes the shared ring's `req_prod` directly.
    ReqProd {
        /// The guest(s); every guest when absent, `"*"` too.
        #[serde(default)]
        guest: Guests,
        /// The value.
        value: Num,
    },
    /// Notifies the back-end over the event channel.
    Kick {
        /// The guest(s); every guest when absent, `"*"` too.
        #[serde(default)]
        guest: Guests,
        /// The queue whose channel is notified (default 0).
        #[serde(default)]
        queue: u32,
    },
    /// Notifies the back-end `count` times without any new request (a
    /// front-end kicking in a loop). With `each` (default), every kick
    /// waits (bounded) until the back-end counted it as spurious before the
    /// next one is sent, so none is merged into a pending event; the back-end
    /// re-enabling its channel late is what it measures.
    KickStorm {
        /// The guest(s); every guest when absent, `"*"` too.
        #[serde(default)]
        guest: Guests,
        /// How many kicks.
        count: u32,
        /// The queue whose channel is notified (default 0).
        #[serde(default)]
        queue: u32,
        /// Wait for the back-end to count each kick (default true).
        #[serde(default = "yes")]
        each: bool,
    },
    /// The front-end writes its `state` node `count` times, cycling through
    /// `states` (default `["Connected"]`), as fast as it can.
    StateStorm {
        /// The guest(s); every guest when absent, `"*"` too.
        #[serde(default)]
        guest: Guests,
        /// How many writes.
        count: u32,
        /// The values written in turn: state names or numbers.
        #[serde(default = "default_storm_states")]
        states: Vec<String>,
    },
    /// Grows or shrinks the guest's medium to `size` while the back-end has
    /// it open, and tells the back-end (the platform's resize event).
    Resize {
        /// The guest(s); every guest when absent, `"*"` too.
        #[serde(default)]
        guest: Guests,
        /// The new size: bytes, or `"8M"`.
        size: Size,
    },
    /// Kicks and waits for `count` responses.
    Wait {
        /// The guest(s); every guest when absent, `"*"` too.
        #[serde(default)]
        guest: Guests,
        /// How many responses.
        count: usize,
        /// Their expected status: one for all, or a list in order.
        #[serde(default)]
        expect_status: Option<StatusList>,
    },
    /// Runs a workload, on several guests at once when more are named.
    Workload {
        /// The guest(s); every guest when absent, `"*"` too. Several guests
        /// run their workloads at the same time.
        #[serde(default)]
        guest: Guests,
        /// Requests to issue.
        #[serde(default = "default_ops")]
        ops: u64,
        /// Bytes per request (a multiple of 512).
        #[serde(default = "default_io_size")]
        io_size: Size,
        /// `random` or `sequential`.
        #[serde(default)]
        pattern: Pattern,
        /// Percentage of reads (the rest are writes).
        #[serde(default = "default_read_pct")]
        read_pct: u8,
        /// Where on the disk the workload's region starts, bytes.
        #[serde(default)]
        offset: Option<Size>,
        /// Bytes of the disk used from `offset` (default: up to the end).
        /// Each workload checks reads against what it wrote itself, so two
        /// workloads of one guest must use disjoint regions.
        #[serde(default)]
        region: Option<Size>,
        /// Seed of the pseudo-random choices.
        #[serde(default = "default_seed")]
        seed: u64,
        /// Check every byte read against what was written, and read the
        /// whole region back at the end (default true).
        #[serde(default = "yes")]
        verify: bool,
        /// Expected number of error responses (default 0).
        #[serde(default)]
        expect_errors: Option<CounterExpect>,
    },
    /// Arms a store I/O fault of the guest's back-end.
    InjectIo {
        /// The guest(s); every guest when absent, `"*"` too.
        #[serde(default)]
        guest: Guests,
        /// Fail the n-th data I/O from now (1 = the next one).
        #[serde(default)]
        nth: Option<u64>,
        /// Fail every I/O touching medium bytes `[start, end)`.
        #[serde(default)]
        range: Option<[Num; 2]>,
        /// Fail every write.
        #[serde(default)]
        writes: bool,
        /// Fail every flush.
        #[serde(default)]
        flush: bool,
        /// Disarm every fault first.
        #[serde(default)]
        clear: bool,
        /// The error.
        #[serde(default)]
        error: IoErrorSpec,
    },
    /// Makes grant mappings of the guest's grants fail.
    InjectGrant {
        /// The guest(s); every guest when absent, `"*"` too.
        #[serde(default)]
        guest: Guests,
        /// The next `count` map operations fail.
        #[serde(default)]
        count: Option<u32>,
        /// Every map of this grant reference fails.
        #[serde(default)]
        gref: Option<u32>,
        /// Disarm every fault first.
        #[serde(default)]
        clear: bool,
        /// The error.
        #[serde(default)]
        error: GrantErrorSpec,
    },
    /// Mounts the back-end domain's root file system.
    MountRoot {},
    /// Checks the guest's back-end; waits (bounded) for it to settle first.
    Expect {
        /// The guest(s); every guest when absent, `"*"` too.
        #[serde(default)]
        guest: Guests,
        /// Back-end XenBus state (`InitWait`, `Connected`, `Closing`, ...).
        #[serde(default)]
        state: Option<String>,
        /// Text the back-end's `error` node must contain.
        #[serde(default)]
        error_contains: Option<String>,
        /// `dev.xbb.N.<leaf>` counters.
        #[serde(default)]
        sysctl: BTreeMap<String, CounterExpect>,
        /// The guest's verification result so far.
        #[serde(default)]
        verify_ok: Option<bool>,
        /// Store faults injected so far.
        #[serde(default)]
        faults_injected: Option<CounterExpect>,
        /// Read the per-queue nodes of `sysctl` from this queue
        /// (`dev.xbb.N.queue.Q.<leaf>`) instead of the instance's sums.
        #[serde(default)]
        queue: Option<u32>,
        /// Nodes of the back-end's XenStore directory: a string is the
        /// value expected, `false` means absent, `true` present.
        #[serde(default)]
        backend_nodes: BTreeMap<String, NodeExpect>,
        /// Watch-event counters of the XenStore (the whole host):
        /// `delivered`, `coalesced`, `overflowed`, `pending`, `max_pending`.
        #[serde(default)]
        watch: BTreeMap<String, CounterExpect>,
    },
}

/// What an `expect` step wants of a XenStore node.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(untagged)]
pub enum NodeExpect {
    /// Present (`true`) or absent (`false`).
    Present(bool),
    /// This exact value.
    Value(String),
}

/// The watch-event counters an `expect` step can name.
pub const WATCH_COUNTERS: [&str; 5] = [
    "delivered",
    "coalesced",
    "overflowed",
    "pending",
    "max_pending",
];

fn watch_counter(st: &WatchStats, name: &str) -> Option<u64> {
    Some(match name {
        "delivered" => st.delivered,
        "coalesced" => st.coalesced,
        "overflowed" => st.overflowed,
        "pending" => st.pending as u64,
        "max_pending" => st.max_pending as u64,
        _ => return None,
    })
}

/// One hand-made request: of a `request` step, or of a `batch` step's
/// `requests`.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RequestSpec {
    /// The guest(s); every guest when absent, `"*"` too (not in a batch).
    #[serde(default)]
    pub guest: Guests,
    /// The operation.
    pub op: OpCode,
    /// `sector_number` (512-byte units).
    #[serde(default = "zero_num")]
    pub sector: Num,
    /// Segments as `[first_sect, last_sect]` pairs, one granted page each.
    #[serde(default)]
    pub segs: Vec<[u8; 2]>,
    /// Instead of `segs`: this many whole-page segments (`[0, 7]`).
    #[serde(default)]
    pub pages: Option<u16>,
    /// `nr_segments` written instead of the number of segments.
    #[serde(default)]
    pub nr_segments: Option<u16>,
    /// Grant the data pages read-only.
    #[serde(default)]
    pub readonly_grants: bool,
    /// Byte the data pages are filled with.
    #[serde(default)]
    pub fill: Option<u8>,
    /// Wait for the response (default true). With `false`, the request
    /// stays queued until a `wait` step (coalescing, shortages).
    #[serde(default = "yes")]
    pub wait: bool,
    /// The expected response status.
    #[serde(default)]
    pub expect_status: Option<Status>,
    /// Every byte the request's pages hold after the response must be
    /// this (a read's data).
    #[serde(default)]
    pub expect_data: Option<u8>,
    /// The queue (ring) it goes on (default 0).
    #[serde(default)]
    pub queue: u32,
    /// `op = "indirect"`: the `indirect_op` (default `read`).
    #[serde(default)]
    pub indirect_op: Option<OpCode>,
    /// `op = "indirect"`: grant this many descriptor pages, whatever the
    /// segments need.
    #[serde(default)]
    pub indirect_pages: Option<u8>,
    /// `op = "indirect"`: `[i, gref]` pairs: `indirect_grefs[i]` is `gref`
    /// (e.g. one the guest never granted).
    #[serde(default)]
    pub raw_indirect_grefs: Vec<[u32; 2]>,
    /// `op = "discard"`: `nr_sectors` (default: the sectors of `segs`, or 8).
    #[serde(default)]
    pub nr_sectors: Option<Num>,
    /// `op = "discard"`: set `BLKIF_DISCARD_SECURE`.
    #[serde(default)]
    pub secure: bool,
    /// Segments naming a grant other than a page of their own.
    #[serde(default)]
    pub seg_grants: Vec<SegGrantSpec>,
}

/// A segment of a [`RequestSpec`] naming another grant: exactly one of
/// `same_as`, `in_flight`, `raw`.
#[derive(Clone, Copy, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SegGrantSpec {
    /// The segment.
    pub seg: usize,
    /// The grant of another segment of the same request.
    #[serde(default)]
    pub same_as: Option<usize>,
    /// The grant of segment `seg` of request `request` (an index) of the
    /// same batch, still in flight.
    #[serde(default)]
    pub in_flight: Option<InFlightRef>,
    /// A raw grant reference.
    #[serde(default)]
    pub raw: Option<u32>,
}

/// An earlier request of the same batch and one of its segments.
#[derive(Clone, Copy, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InFlightRef {
    /// Index of the request in the batch.
    pub request: usize,
    /// Its segment.
    pub seg: usize,
}

impl RequestSpec {
    /// The segments, from `pages` or `segs`.
    fn segments(&self) -> Vec<(u8, u8)> {
        match self.pages {
            Some(n) => vec![(0, 7); usize::from(n)],
            None => self.segs.iter().map(|s| (s[0], s[1])).collect(),
        }
    }

    /// Whether data goes from the guest's pages to the medium.
    fn writes(&self) -> bool {
        if self.op.0 == BLKIF_OP_INDIRECT {
            self.indirect_op.is_some_and(|o| o.writes())
        } else {
            self.op.writes()
        }
    }

    /// Checks what TOML cannot; `in_batch` is this request's index in its
    /// batch, if it is in one.
    fn validate(&self, in_batch: Option<usize>) -> Result<(), String> {
        let indirect = self.op.0 == BLKIF_OP_INDIRECT;
        let discard = self.op.0 == BLKIF_OP_DISCARD;
        if self.pages.is_some() && !self.segs.is_empty() {
            return Err(String::from("give `segs` or `pages`, not both"));
        }
        let n = self.segments().len();
        let max = if indirect {
            MAX_INDIRECT_SEGMENTS as usize
        } else {
            BLKIF_MAX_SEGMENTS_PER_REQUEST
        };
        if n > max {
            return Err(format!("at most {max} segments for this operation"));
        }
        if !indirect
            && (self.indirect_op.is_some()
                || self.indirect_pages.is_some()
                || !self.raw_indirect_grefs.is_empty())
        {
            return Err(String::from(
                "indirect_op, indirect_pages and raw_indirect_grefs need op = \"indirect\"",
            ));
        }
        if !indirect && self.nr_segments.is_some_and(|v| v > 255) {
            return Err(String::from(
                "nr_segments is 8 bits unless op = \"indirect\"",
            ));
        }
        if !discard && (self.nr_sectors.is_some() || self.secure) {
            return Err(String::from("nr_sectors and secure need op = \"discard\""));
        }
        if self
            .raw_indirect_grefs
            .iter()
            .any(|&[i, _]| i as usize >= BLKIF_MAX_INDIRECT_PAGES_PER_REQUEST)
        {
            return Err(format!(
                "raw_indirect_grefs: index beyond {BLKIF_MAX_INDIRECT_PAGES_PER_REQUEST} pages"
            ));
        }
        for g in &self.seg_grants {
            let given = usize::from(g.same_as.is_some())
                + usize::from(g.in_flight.is_some())
                + usize::from(g.raw.is_some());
            if given != 1 {
                return Err(String::from(
                    "seg_grants: give exactly one of same_as, in_flight, raw",
                ));
            }
            if g.seg >= n || g.same_as.is_some_and(|j| j >= n) {
                return Err(format!("seg_grants: no segment {} here", g.seg));
            }
            if let Some(r) = g.in_flight {
                match in_batch {
                    Some(me) if r.request < me => {}
                    _ => {
                        return Err(String::from(
                            "seg_grants: in_flight names an earlier request of the same batch",
                        ))
                    }
                }
            }
        }
        if let Some(me) = in_batch {
            if self.guest != Guests::Default || !self.wait {
                return Err(format!(
                    "request {me} of the batch: `guest` and `wait` belong to the batch"
                ));
            }
        }
        Ok(())
    }

    /// The request for the front-end; `batch_ids` are the ids the earlier
    /// requests of the same batch will have.
    fn build(&self, batch_ids: &[u64]) -> Result<FeatureRequest, String> {
        let segs = self.segments();
        let nr_sectors_of_segs: u64 = segs
            .iter()
            .map(|&(f, l)| u64::from(l.saturating_sub(f)) + 1)
            .sum();
        let base = ManualRequest {
            operation: self.op.0,
            sector: self.sector.0,
            segs,
            nr_segments_override: self.nr_segments.map(|v| v as u8),
            readonly_grants: self.readonly_grants,
            fill: self.fill.or(if self.writes() { Some(0x5a) } else { None }),
        };
        let mut fr = match self.op.0 {
            BLKIF_OP_DISCARD => {
                let n = self.nr_sectors.map_or(
                    if nr_sectors_of_segs == 0 {
                        8
                    } else {
                        nr_sectors_of_segs
                    },
                    |n| n.0,
                );
                let flag = if self.secure { BLKIF_DISCARD_SECURE } else { 0 };
                FeatureRequest::discard(self.sector.0, n, flag)
            }
            BLKIF_OP_INDIRECT => {
                let op = self.indirect_op.unwrap_or(OpCode(BLKIF_OP_READ));
                let mut fr = base.indirect(op.0);
                if let Some(n) = self.nr_segments {
                    fr = fr.nr_segments(n);
                }
                if let Some(p) = self.indirect_pages {
                    fr = fr.indirect_pages(p);
                }
                for &[i, gref] in &self.raw_indirect_grefs {
                    fr = fr.indirect_gref(i as usize, gref);
                }
                fr
            }
            _ => FeatureRequest::from(base),
        };
        fr = fr.on_queue(self.queue);
        for g in &self.seg_grants {
            let grant = if let Some(j) = g.same_as {
                SegmentGrant::SameAs(j)
            } else if let Some(r) = g.raw {
                SegmentGrant::Raw(r)
            } else if let Some(r) = g.in_flight {
                let id = *batch_ids
                    .get(r.request)
                    .ok_or_else(|| format!("no request {} earlier in the batch", r.request))?;
                SegmentGrant::InFlight { id, seg: r.seg }
            } else {
                continue;
            };
            fr = fr.segment_grant(g.seg, grant);
        }
        Ok(fr)
    }
}

fn zero_num() -> Num {
    Num(0)
}

fn default_storm_states() -> Vec<String> {
    vec![String::from("Connected")]
}

fn default_ops() -> u64 {
    256
}

fn default_io_size() -> Size {
    Size(4096)
}

fn default_read_pct() -> u8 {
    50
}

fn default_seed() -> u64 {
    0x5eed
}

impl Step {
    /// The `do` name of the step.
    pub fn action(&self) -> &'static str {
        match self {
            Step::Xenstore { .. } => "xenstore",
            Step::Connect { .. } => "connect",
            Step::Disconnect { .. } => "disconnect",
            Step::Request(_) => "request",
            Step::Batch { .. } => "batch",
            Step::KickStorm { .. } => "kick_storm",
            Step::StateStorm { .. } => "state_storm",
            Step::Resize { .. } => "resize",
            Step::RawSlot { .. } => "raw_slot",
            Step::ReqProd { .. } => "req_prod",
            Step::Kick { .. } => "kick",
            Step::Wait { .. } => "wait",
            Step::Workload { .. } => "workload",
            Step::InjectIo { .. } => "inject_io",
            Step::InjectGrant { .. } => "inject_grant",
            Step::MountRoot {} => "mount_root",
            Step::Expect { .. } => "expect",
        }
    }
}

/// Why a scenario could not even start.
#[derive(Debug)]
pub enum ScenarioError {
    /// The file could not be read.
    Read(PathBuf, std::io::Error),
    /// The TOML is malformed or has unknown keys or values.
    Parse(String),
    /// The scenario is well-formed TOML but inconsistent.
    Invalid(String),
}

impl fmt::Display for ScenarioError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ScenarioError::Read(p, e) => write!(f, "{}: {e}", p.display()),
            ScenarioError::Parse(e) => write!(f, "scenario syntax: {e}"),
            ScenarioError::Invalid(e) => write!(f, "scenario: {e}"),
        }
    }
}

impl std::error::Error for ScenarioError {}

/// Parses a hex string (`"00 01 ff"`, `"0001ff"`) into bytes.
pub fn parse_hex(s: &str) -> Option<Vec<u8>> {
    let digits: Vec<u8> = s
        .bytes()
        .filter(|b| !b.is_ascii_whitespace() && *b != b'_' && *b != b':')
        .collect();
    if digits.len() % 2 != 0 {
        return None;
    }
    digits
        .chunks(2)
        .map(|p| {
            let hi = (p[0] as char).to_digit(16)?;
            let lo = (p[1] as char).to_digit(16)?;
            Some((hi * 16 + lo) as u8)
        })
        .collect()
}

/// Parses a state name (`Connected`, case-insensitive, or its number).
pub fn parse_state(s: &str) -> Option<XenbusState> {
    let t = s.trim();
    if let Ok(n) = t.parse::<u32>() {
        return XenbusState::from_u32(n);
    }
    (0..=8)
        .filter_map(XenbusState::from_u32)
        .find(|st| format!("{st:?}").eq_ignore_ascii_case(t))
}

/// The name of a state, as scenarios and reports write it.
pub fn state_name(s: XenbusState) -> String {
    format!("{s:?}")
}

impl Scenario {
    /// Parses scenario text.
    pub fn parse(text: &str) -> Result<Scenario, ScenarioError> {
        let sc: Scenario = toml::from_str(text).map_err(|e| ScenarioError::Parse(e.to_string()))?;
        sc.validate()?;
        Ok(sc)
    }

    /// Reads and parses a scenario file; its name defaults to the file's.
    pub fn load(path: &Path) -> Result<Scenario, ScenarioError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| ScenarioError::Read(path.to_path_buf(), e))?;
        let mut sc = Scenario::parse(&text).map_err(|e| match e {
            ScenarioError::Parse(m) => ScenarioError::Parse(format!("{}: {m}", path.display())),
            ScenarioError::Invalid(m) => ScenarioError::Invalid(format!("{}: {m}", path.display())),
            other => other,
        })?;
        if sc.name.is_none() {
            sc.name = path.file_stem().map(|s| s.to_string_lossy().into_owned());
        }
        Ok(sc)
    }

    /// The guest names, in order (`guest<N>` for unnamed ones).
    pub fn guest_names(&self) -> Vec<String> {
        self.guests
            .iter()
            .enumerate()
            .map(|(i, g)| g.name.clone().unwrap_or_else(|| format!("guest{i}")))
            .collect()
    }

    /// The tunables the scenario sets, applied over the defaults.
    pub fn tunables(&self) -> Result<Tunables, ScenarioError> {
        apply_tunables(Tunables::default(), &self.tunables)
    }

    /// The tunables of guest `i`'s instance.
    pub fn guest_tunables(&self, i: usize) -> Result<Tunables, ScenarioError> {
        let base = self.tunables()?;
        match self.guests.get(i) {
            Some(g) => apply_tunables(base, &g.tunables),
            None => Ok(base),
        }
    }
}

/// Sets `map` (tunable name → value) over `t`.
fn apply_tunables(mut t: Tunables, map: &BTreeMap<String, Num>) -> Result<Tunables, ScenarioError> {
    {
        for (name, &Num(v)) in map {
            let tun = Tunable::by_name(name).ok_or_else(|| {
                ScenarioError::Invalid(format!(
                    "unknown tunable {name:?}; known: {}",
                    TUNABLES
                        .iter()
                        .map(|d| d.name)
                        .collect::<Vec<_>>()
                        .join(", ")
                ))
            })?;
            t.set(tun, v).map_err(|_| {
                let d = tun.desc();
                ScenarioError::Invalid(format!(
                    "{TUNABLE_PREFIX}{} = {v} is outside {}..={}",
                    d.name, d.min, d.max
                ))
            })?;
        }
        Ok(t)
    }
}

impl Scenario {
    /// Checks what TOML cannot: names resolve, values are in range.
    fn validate(&self) -> Result<(), ScenarioError> {
        let bad = |m: String| Err(ScenarioError::Invalid(m));
        self.tunables()?;
        if self.guests.is_empty() {
            return bad(String::from("no [[guest]] defined"));
        }
        let names = self.guest_names();
        for (i, n) in names.iter().enumerate() {
            if names[..i].contains(n) {
                return bad(format!("two guests are named {n:?}"));
            }
        }
        for (i, (g, n)) in self.guests.iter().zip(&names).enumerate() {
            self.guest_tunables(i)?;
            if Profile::by_name(&g.profile).is_none() {
                return bad(format!(
                    "guest {n}: unknown profile {:?}; known: {}",
                    g.profile,
                    Profile::NAMES.join(", ")
                ));
            }
            if !g.sector_size.is_power_of_two() || !(512..=65536).contains(&g.sector_size) {
                return bad(format!(
                    "guest {n}: sector_size {} is not a power of two in 512..=65536",
                    g.sector_size
                ));
            }
            if g.size.0 == 0 || g.size.0 % u64::from(g.sector_size) != 0 {
                return bad(format!(
                    "guest {n}: size {} is not a positive multiple of the sector size",
                    g.size.0
                ));
            }
        }
        let mut used: Vec<Vec<(u64, u64)>> = vec![Vec::new(); self.guests.len()];
        for (i, step) in self.steps.iter().enumerate() {
            let at = |m: String| {
                ScenarioError::Invalid(format!("step {} ({}): {m}", i + 1, step.action()))
            };
            for g in step_guest_names(step) {
                if g != "*" && !names.contains(&g) {
                    return Err(at(format!("no guest named {g:?}")));
                }
            }
            match step {
                Step::Xenstore { value, delete, .. } if value.is_some() == *delete => {
                    return Err(at(String::from(
                        "give exactly one of `value` and `delete = true`",
                    )));
                }
                Step::Request(r) => r.validate(None).map_err(at)?,
                Step::Batch { requests, .. } => {
                    if requests.is_empty() {
                        return Err(at(String::from("an empty batch")));
                    }
                    for (k, r) in requests.iter().enumerate() {
                        r.validate(Some(k))
                            .map_err(|m| at(format!("request {k}: {m}")))?;
                    }
                }
                Step::StateStorm { states, .. } => {
                    for st in states {
                        if parse_state(st).is_none() {
                            return Err(at(format!("unknown state {st:?}")));
                        }
                    }
                    if states.is_empty() {
                        return Err(at(String::from("no states to write")));
                    }
                }
                Step::Resize { guest, size } => {
                    for gi in guest.resolve(&names) {
                        let ss = u64::from(self.guests[gi].sector_size);
                        if size.0 == 0 || size.0 % ss != 0 {
                            return Err(at(format!(
                                "guest {}: size {} is not a positive multiple of the sector size",
                                names[gi], size.0
                            )));
                        }
                    }
                }
                Step::RawSlot { hex, .. } if parse_hex(hex).is_none() => {
                    return Err(at(String::from(
                        "`hex` is not an even number of hex digits",
                    )));
                }
                Step::Workload {
                    io_size,
                    read_pct,
                    offset,
                    region,
                    guest,
                    ..
                } => {
                    for gi in guest.resolve(&names) {
                        let g = &self.guests[gi];
                        let (a, b) = workload_region(g, *offset, *region);
                        let ss = u64::from(g.sector_size);
                        if a >= b || a % ss != 0 || b > g.size.0 || b - a < io_size.0 {
                            return Err(at(format!(
                                "guest {}: region [{a}, {b}) does not fit the {}-byte disk, \
                                 is not sector-aligned, or is smaller than io_size",
                                names[gi], g.size.0
                            )));
                        }
                        if let Some((c, d)) = used[gi].iter().find(|(c, d)| a < *d && *c < b) {
                            return Err(at(format!(
                                "guest {}: region [{a}, {b}) overlaps an earlier workload's \
                                 [{c}, {d}); give each workload its own `offset`/`region`",
                                names[gi]
                            )));
                        }
                        used[gi].push((a, b));
                    }
                    if io_size.0 == 0 || io_size.0 % 512 != 0 || io_size.0 > (1 << 24) {
                        return Err(at(String::from(
                            "io_size must be a multiple of 512, at most 16M",
                        )));
                    }
                    if *read_pct > 100 {
                        return Err(at(String::from("read_pct is a percentage")));
                    }
                }
                Step::InjectIo {
                    nth,
                    range,
                    writes,
                    flush,
                    clear,
                    ..
                } if nth.is_none() && range.is_none() && !writes && !flush && !clear => {
                    return Err(at(String::from(
                        "nothing to inject: give nth, range, writes, flush or clear",
                    )));
                }
                Step::InjectGrant {
                    count, gref, clear, ..
                } if count.is_none() && gref.is_none() && !clear => {
                    return Err(at(String::from(
                        "nothing to inject: give count, gref or clear",
                    )));
                }
                Step::Expect {
                    state,
                    sysctl,
                    watch,
                    ..
                } => {
                    for k in watch.keys() {
                        if !WATCH_COUNTERS.contains(&k.as_str()) {
                            return Err(at(format!(
                                "unknown watch counter {k:?}; known: {}",
                                WATCH_COUNTERS.join(", ")
                            )));
                        }
                    }
                    if let Some(s) = state {
                        if parse_state(s).is_none() {
                            return Err(at(format!("unknown state {s:?}")));
                        }
                    }
                    for k in sysctl.keys() {
                        if Stat::by_name(k).is_none() {
                            return Err(at(format!(
                                "unknown sysctl {k:?}; known: {}",
                                SYSCTLS
                                    .iter()
                                    .map(|d| d.name)
                                    .collect::<Vec<_>>()
                                    .join(", ")
                            )));
                        }
                    }
                }
                _ => {}
            }
        }
        Ok(())
    }
}

/// The byte range `[start, end)` a workload uses on a guest's disk.
fn workload_region(g: &GuestSpec, offset: Option<Size>, region: Option<Size>) -> (u64, u64) {
    let start = offset.map_or(0, |o| o.0);
    let end = match region {
        Some(r) => start.saturating_add(r.0),
        None => g.size.0,
    };
    (start, end)
}

/// The guest names a step mentions.
fn step_guest_names(step: &Step) -> Vec<String> {
    match step.guests() {
        Some(Guests::One(n)) => vec![n.clone()],
        Some(Guests::Many(v)) => v.clone(),
        Some(Guests::Default) | None => vec![],
    }
}

impl Step {
    /// The guests the step applies to, as written; `None` for steps about
    /// the host as a whole.
    pub fn guests(&self) -> Option<&Guests> {
        match self {
            Step::Xenstore { guest, .. }
            | Step::Connect { guest, .. }
            | Step::Disconnect { guest }
            | Step::Request(RequestSpec { guest, .. })
            | Step::Batch { guest, .. }
            | Step::KickStorm { guest, .. }
            | Step::StateStorm { guest, .. }
            | Step::Resize { guest, .. }
            | Step::RawSlot { guest, .. }
            | Step::ReqProd { guest, .. }
            | Step::Kick { guest, .. }
            | Step::Wait { guest, .. }
            | Step::Workload { guest, .. }
            | Step::InjectIo { guest, .. }
            | Step::InjectGrant { guest, .. }
            | Step::Expect { guest, .. } => Some(guest),
            Step::MountRoot {} => None,
        }
    }
}

impl Guests {
    /// Indices into `names` of the guests meant.
    pub fn resolve(&self, names: &[String]) -> Vec<usize> {
        let all = || (0..names.len()).collect();
        match self {
            Guests::Default => all(),
            Guests::One(n) if n == "*" => all(),
            Guests::One(n) => names.iter().position(|x| x == n).into_iter().collect(),
            Guests::Many(v) => v
                .iter()
                .filter_map(|n| names.iter().position(|x| x == n))
                .collect(),
        }
    }
}

// ---------------------------------------------------------------------------
// The report
// ---------------------------------------------------------------------------

/// What the workloads of one guest did, summed over the scenario.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct IoTotals {
    /// Workload steps run.
    pub workloads: u64,
    /// Successful read requests.
    pub reads: u64,
    /// Successful write requests.
    pub writes: u64,
    /// Successful flush and barrier requests.
    pub flushes: u64,
    /// Bytes read.
    pub bytes_read: u64,
    /// Bytes written.
    pub bytes_written: u64,
    /// Bytes compared against what the guest wrote.
    pub bytes_checked: u64,
    /// 512-byte sectors that differed.
    pub mismatches: u64,
    /// Responses with an error status.
    pub error_responses: u64,
    /// Seconds spent in workloads.
    pub seconds: f64,
    /// The first mismatch, described.
    pub first_mismatch: Option<String>,
    /// A workload that could not run to its end, and why.
    pub failure: Option<String>,
}

impl IoTotals {
    /// Requests per second over the workloads.
    pub fn iops(&self) -> f64 {
        if self.seconds > 0.0 {
            (self.reads + self.writes + self.flushes) as f64 / self.seconds
        } else {
            0.0
        }
    }

    /// MiB/s read plus written over the workloads.
    pub fn mib_per_s(&self) -> f64 {
        if self.seconds > 0.0 {
            (self.bytes_read + self.bytes_written) as f64 / self.seconds / MIB
        } else {
            0.0
        }
    }

    /// Whether every byte read back was what had been written.
    pub fn verify_ok(&self) -> bool {
        self.mismatches == 0 && self.failure.is_none()
    }
}

const MIB: f64 = 1024.0 * 1024.0;

/// One instance in the report.
#[derive(Clone, Debug)]
pub struct InstanceReport {
    /// The guest's name.
    pub name: String,
    /// `N` of `dev.xbb.N`.
    pub unit: usize,
    /// The front-end profile.
    pub profile: String,
    /// `file` or `device`.
    pub store: &'static str,
    /// Medium size in bytes.
    pub size: u64,
    /// Logical sector size.
    pub sector_size: u32,
    /// Read-only medium.
    pub read_only: bool,
    /// The back-end's XenBus state at the end.
    pub state: XenbusState,
    /// The back-end's `error` node, if any.
    pub error: Option<String>,
    /// Every `dev.xbb.N` node, in [`SYSCTLS`] order.
    pub sysctl: Vec<(&'static str, u64)>,
    /// Per queue of the connection at the end (none when not connected):
    /// every per-queue node (`dev.xbb.N.queue.Q.<leaf>`), in [`SYSCTLS`]
    /// order.
    pub queues: Vec<Vec<(&'static str, u64)>>,
    /// The workloads' totals.
    pub io: IoTotals,
}

/// An expectation that did not hold.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Mismatch {
    /// 1-based step number (0: setup or teardown).
    pub step: usize,
    /// The step's `do`.
    pub action: String,
    /// The guest concerned, if one.
    pub guest: Option<String>,
    /// What was expected and what was found.
    pub what: String,
}

impl fmt::Display for Mismatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.step == 0 {
            write!(f, "setup")?;
        } else {
            write!(f, "step {} ({})", self.step, self.action)?;
        }
        if let Some(g) = &self.guest {
            write!(f, " guest {g}")?;
        }
        write!(f, ": {}", self.what)
    }
}

/// The outcome of one scenario.
#[derive(Clone, Debug)]
pub struct Report {
    /// The scenario's name.
    pub scenario: String,
    /// Every instance, in guest order.
    pub instances: Vec<InstanceReport>,
    /// Every expectation that did not hold.
    pub mismatches: Vec<Mismatch>,
    /// Expectations checked.
    pub checks: u64,
    /// Wall time of the whole scenario, seconds.
    pub seconds: f64,
}

impl Report {
    /// Whether every guest's data verified.
    pub fn verify_ok(&self) -> bool {
        self.instances.iter().all(|i| i.io.verify_ok())
    }

    /// Bytes verified over every guest.
    pub fn bytes_checked(&self) -> u64 {
        self.instances.iter().map(|i| i.io.bytes_checked).sum()
    }

    /// Whether the scenario passed: every expectation held and every byte
    /// verified.
    pub fn passed(&self) -> bool {
        self.mismatches.is_empty() && self.verify_ok()
    }

    /// The readable report.
    pub fn render_text(&self) -> String {
        use std::fmt::Write as _;
        let mut o = String::new();
        let _ = writeln!(
            o,
            "xbb-lab: scenario {:?}: {} instance(s), {:.1} s",
            self.scenario,
            self.instances.len(),
            self.seconds
        );
        for i in &self.instances {
            let _ = writeln!(o);
            let _ = writeln!(
                o,
                "dev.xbb.{}: guest {:?}, profile {}, {} store, {}, {}-byte sectors, {}",
                i.unit,
                i.name,
                i.profile,
                i.store,
                human_bytes(i.size),
                i.sector_size,
                if i.read_only {
                    "read-only"
                } else {
                    "read-write"
                }
            );
            let _ = writeln!(o, "  state: {}", state_name(i.state));
            if let Some(e) = &i.error {
                let _ = writeln!(o, "  error: {e}");
            }
            for (name, v) in &i.sysctl {
                let _ = writeln!(o, "  dev.xbb.{}.{name}: {v}", i.unit);
            }
            if i.queues.len() > 1 {
                for (q, nodes) in i.queues.iter().enumerate() {
                    for (name, v) in nodes {
                        let _ = writeln!(o, "  dev.xbb.{}.queue.{q}.{name}: {v}", i.unit);
                    }
                }
            }
            let io = &i.io;
            if io.workloads > 0 {
                let _ = writeln!(
                    o,
                    "  throughput: {:.1} MiB/s, {:.0} IOPS ({} read, {} written, {} flushes, in {:.2} s)",
                    io.mib_per_s(),
                    io.iops(),
                    human_bytes(io.bytes_read),
                    human_bytes(io.bytes_written),
                    io.flushes,
                    io.seconds
                );
                if io.error_responses > 0 {
                    let _ = writeln!(o, "  error responses: {}", io.error_responses);
                }
                let verdict = if io.verify_ok() { "ok" } else { "FAILED" };
                let _ = writeln!(
                    o,
                    "  verification: {verdict}, {} bytes checked, {} mismatched sectors",
                    io.bytes_checked, io.mismatches
                );
                if let Some(m) = &io.first_mismatch {
                    let _ = writeln!(o, "    first mismatch: {m}");
                }
                if let Some(f) = &io.failure {
                    let _ = writeln!(o, "    workload failed: {f}");
                }
            }
        }
        let _ = writeln!(o);
        let _ = writeln!(
            o,
            "verification: {}, {} bytes checked",
            if self.verify_ok() { "ok" } else { "FAILED" },
            self.bytes_checked()
        );
        if self.mismatches.is_empty() {
            let _ = writeln!(o, "expectations: all {} held", self.checks);
        } else {
            let _ = writeln!(
                o,
                "expectations: {} of {} did NOT hold:",
                self.mismatches.len(),
                self.checks
            );
            for m in &self.mismatches {
                let _ = writeln!(o, "  MISMATCH {m}");
            }
        }
        let _ = writeln!(o, "result: {}", if self.passed() { "PASS" } else { "FAIL" });
        o
    }

    /// The report as one JSON value (see `xbb-lab --help`).
    pub fn to_json(&self) -> serde_json::Value {
        use serde_json::{json, Map, Value};
        let instances: Vec<Value> = self
            .instances
            .iter()
            .map(|i| {
                let mut sysctl = Map::new();
                for (name, v) in &i.sysctl {
                    sysctl.insert((*name).to_string(), json!(v));
                }
                let queues: Vec<Value> = i
                    .queues
                    .iter()
                    .map(|nodes| {
                        Value::Object(
                            nodes
                                .iter()
                                .map(|(name, v)| ((*name).to_string(), json!(v)))
                                .collect(),
                        )
                    })
                    .collect();
                json!({
                    "name": i.name,
                    "unit": i.unit,
                    "profile": i.profile,
                    "store": i.store,
                    "size": i.size,
                    "sector_size": i.sector_size,
                    "read_only": i.read_only,
                    "state": state_name(i.state),
                    "error": i.error,
                    "sysctl": Value::Object(sysctl),
                    "queues": queues,
                    "throughput_mib_s": round2(i.io.mib_per_s()),
                    "iops": round2(i.io.iops()),
                    "io": {
                        "reads": i.io.reads,
                        "writes": i.io.writes,
                        "flushes": i.io.flushes,
                        "bytes_read": i.io.bytes_read,
                        "bytes_written": i.io.bytes_written,
                        "error_responses": i.io.error_responses,
                        "seconds": round2(i.io.seconds),
                    },
                    "verify": {
                        "ok": i.io.verify_ok(),
                        "bytes_checked": i.io.bytes_checked,
                        "mismatches": i.io.mismatches,
                        "first_mismatch": i.io.first_mismatch,
                        "failure": i.io.failure,
                    },
                })
            })
            .collect();
        json!({
            "scenario": self.scenario,
            "passed": self.passed(),
            "seconds": round2(self.seconds),
            "instances": instances,
            "verify": {
                "ok": self.verify_ok(),
                "bytes_checked": self.bytes_checked(),
            },
            "checks": self.checks,
            "mismatches": self.mismatches.iter().map(|m| json!({
                "step": m.step,
                "do": m.action,
                "guest": m.guest,
                "what": m.what,
            })).collect::<Vec<_>>(),
        })
    }
}

fn round2(v: f64) -> f64 {
    (v * 100.0).round() / 100.0
}

/// `64 MiB`, `44 KiB`, `512 B`.
pub fn human_bytes(n: u64) -> String {
    const UNITS: [(&str, u64); 3] = [("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)];
    for (u, s) in UNITS {
        if n >= s {
            return if n % s == 0 {
                format!("{} {u}", n / s)
            } else {
                format!("{:.1} {u}", n as f64 / s as f64)
            };
        }
    }
    format!("{n} B")
}

// ---------------------------------------------------------------------------
// The runner
// ---------------------------------------------------------------------------

/// How a scenario is run.
#[derive(Clone, Debug)]
pub struct RunOptions {
    /// Print a line per phase and guest on stderr.
    pub progress: bool,
    /// Where the disk images go; a fresh temporary directory (removed at the
    /// end) when `None`.
    pub dir: Option<PathBuf>,
    /// Bound on every wait (a guard against hangs, never a timing check).
    pub hang_guard: Duration,
    /// How long a `wait` step with `count = 0` watches for responses that
    /// must not come.
    pub quiet_period: Duration,
    /// How long an `expect` step waits for the back-end to get where it is
    /// expected before reporting a mismatch.
    pub settle: Duration,
}

impl Default for RunOptions {
    fn default() -> Self {
        RunOptions {
            progress: false,
            dir: None,
            hang_guard: Duration::from_secs(20),
            quiet_period: Duration::from_millis(200),
            settle: Duration::from_secs(5),
        }
    }
}

/// A directory removed when dropped (unless it was given by the user).
struct WorkDir {
    path: PathBuf,
    remove: bool,
}

impl WorkDir {
    fn new(given: Option<&Path>) -> std::io::Result<WorkDir> {
        if let Some(p) = given {
            std::fs::create_dir_all(p)?;
            return Ok(WorkDir {
                path: p.to_path_buf(),
                remove: false,
            });
        }
        let base = std::env::temp_dir();
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        for attempt in 0..100u32 {
            let p = base.join(format!(
                "xbb-lab-{}-{nanos:x}-{attempt}",
                std::process::id()
            ));
            match std::fs::create_dir(&p) {
                Ok(()) => {
                    return Ok(WorkDir {
                        path: p,
                        remove: true,
                    })
                }
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
                Err(e) => return Err(e),
            }
        }
        Err(std::io::Error::from(std::io::ErrorKind::AlreadyExists))
    }
}

impl Drop for WorkDir {
    fn drop(&mut self) {
        if self.remove {
            let _ = std::fs::remove_dir_all(&self.path);
        }
    }
}

/// Creates a sparse image of `size` bytes (an existing file is truncated).
pub fn create_sparse_image(path: &Path, size: u64) -> std::io::Result<()> {
    let f = std::fs::File::create(path)?;
    f.set_len(size)
}

/// A manual request awaiting its response.
#[derive(Clone, Debug)]
struct Pending {
    step: usize,
    expect: Option<Status>,
    expect_data: Option<u8>,
}

/// One guest while the scenario runs.
struct GuestRt {
    name: String,
    spec: GuestSpec,
    vbd: VbdHandle,
    fe: Frontend,
    faults: Arc<IoFaults>,
    io: IoTotals,
    /// Manual requests in flight, by id.
    pending: BTreeMap<u64, Pending>,
    /// Responses taken from the ring and not yet consumed by a step.
    responses: std::collections::VecDeque<BlkifResponse>,
    /// The id the front-end gives its next request, when known (it numbers
    /// requests in order; a workload's requests make it unknown).
    next_id: Option<u64>,
}

/// The state of a run: the world, the guests, the findings.
struct Run<'a> {
    opts: &'a RunOptions,
    world: World,
    guests: Vec<GuestRt>,
    mismatches: Vec<Mismatch>,
    checks: u64,
}

impl Run<'_> {
    fn progress(&self, msg: fmt::Arguments<'_>) {
        if self.opts.progress {
            eprintln!("[xbb-lab] {msg}");
        }
    }

    /// Records one check; a mismatch when `ok` is false.
    fn check(
        &mut self,
        step: usize,
        action: &str,
        guest: Option<&str>,
        ok: bool,
        what: impl FnOnce() -> String,
    ) {
        self.checks += 1;
        if !ok {
            let m = Mismatch {
                step,
                action: action.to_string(),
                guest: guest.map(str::to_string),
                what: what(),
            };
            self.progress(format_args!("MISMATCH {m}"));
            self.mismatches.push(m);
        }
    }

    fn fail(&mut self, step: usize, action: &str, guest: Option<&str>, what: String) {
        self.check(step, action, guest, false, || what);
    }
}

/// Runs a scenario and reports what happened. `Err` only when the scenario
/// could not start (bad tunables, no temporary directory, ...); everything
/// that goes wrong afterwards is a [`Mismatch`] in the report.
pub fn run(sc: &Scenario, opts: &RunOptions) -> Result<Report, ScenarioError> {
    let started = Instant::now();
    let scenario = sc.name.clone().unwrap_or_else(|| String::from("scenario"));
    let tunables = sc.tunables()?;
    let names = sc.guest_names();
    let dir = WorkDir::new(opts.dir.as_deref())
        .map_err(|e| ScenarioError::Invalid(format!("cannot create a work directory: {e}")))?;
    let world = new_world(&tunables, sc.root_mounted)
        .map_err(|e| ScenarioError::Invalid(format!("cannot start the simulated host: {e}")))?;
    let mut run = Run {
        opts,
        world,
        guests: Vec::new(),
        mismatches: Vec::new(),
        checks: 0,
    };
    run.progress(format_args!(
        "scenario {scenario:?}: {} guest(s), {} step(s), images in {}",
        sc.guests.len(),
        sc.steps.len(),
        dir.path.display()
    ));
    for (i, (g, name)) in sc.guests.iter().zip(&names).enumerate() {
        let tun = sc.guest_tunables(i)?;
        match setup_guest(&run.world, i, name, g, tun, &dir.path, opts) {
            Ok(rt) => {
                run.progress(format_args!(
                    "guest {name}: profile {}, {} {} store, {}-byte sectors, {}",
                    g.profile,
                    human_bytes(g.size.0),
                    store_name(g.store),
                    g.sector_size,
                    if g.mode == ModeSpec::ReadOnly {
                        "read-only"
                    } else {
                        "read-write"
                    }
                ));
                run.guests.push(rt);
            }
            Err(e) => {
                run.fail(0, "setup", Some(name), e);
                let report = finish(run, &scenario, sc, started);
                return Ok(report);
            }
        }
    }
    for (i, step) in sc.steps.iter().enumerate() {
        let n = i + 1;
        let targets = step.guests().map(|g| g.resolve(&names)).unwrap_or_default();
        run_step(&mut run, n, step, &targets);
    }
    Ok(finish(run, &scenario, sc, started))
}

fn store_name(k: StoreKindSpec) -> &'static str {
    match k {
        StoreKindSpec::File => "file",
        StoreKindSpec::Device => "device",
    }
}

/// Collects the report and tears the world down.
fn finish(mut run: Run<'_>, scenario: &str, sc: &Scenario, started: Instant) -> Report {
    let mut instances = Vec::new();
    for (unit, g) in run.guests.iter().enumerate() {
        let stats = backend_stats(&run.world, &g.vbd);
        let queues = run
            .world
            .backend(&g.vbd)
            .map(|s| s.queues)
            .unwrap_or_default()
            .iter()
            .map(|qs| {
                SYSCTLS
                    .iter()
                    .filter(|d| d.per_queue())
                    .map(|d| (d.name, qs.get(d.stat)))
                    .collect()
            })
            .collect();
        instances.push(InstanceReport {
            name: g.name.clone(),
            unit,
            profile: g.spec.profile.clone(),
            store: store_name(g.spec.store),
            size: g.spec.size.0,
            sector_size: g.spec.sector_size,
            read_only: g.spec.mode == ModeSpec::ReadOnly,
            state: g.fe.backend_state(),
            error: g.fe.backend_error(),
            sysctl: SYSCTLS
                .iter()
                .map(|d| (d.name, stats.get(d.stat)))
                .collect(),
            queues,
            io: g.io.clone(),
        });
    }
    // Leftover manual requests are not an error of the back-end: hostile
    // steps may leave requests that can never be answered.
    let guests = std::mem::take(&mut run.guests);
    drop(guests);
    shutdown_world(run.world);
    let _ = sc;
    Report {
        scenario: scenario.to_string(),
        instances,
        mismatches: run.mismatches,
        checks: run.checks,
        seconds: started.elapsed().as_secs_f64(),
    }
}

/// Guest domain ids start here (dom0 runs the back-ends).
const FIRST_GUEST_DOM: DomId = 1;
/// RAM of each guest, in 4 KiB frames: rings, and pages for every request
/// in flight.
const GUEST_FRAMES: u64 = 8192;

fn new_world(_tunables: &Tunables, root_mounted: bool) -> std::io::Result<World> {
    Ok(if root_mounted {
        World::new()
    } else {
        World::with_root_unmounted()
    })
}

fn shutdown_world(world: World) {
    let _ = world.shutdown();
}

fn backend_stats(world: &World, vbd: &VbdHandle) -> Stats {
    world.backend_stats(vbd)
}

/// Creates a guest: its image, its domain, its `vbd`, its front-end.
fn setup_guest(
    world: &World,
    index: usize,
    name: &str,
    spec: &GuestSpec,
    tunables: Tunables,
    dir: &Path,
    opts: &RunOptions,
) -> Result<GuestRt, String> {
    let image = dir.join(format!("{index}-{name}.img"));
    create_sparse_image(&image, spec.size.0)
        .map_err(|e| format!("cannot create {}: {e}", image.display()))?;
    let dom = FIRST_GUEST_DOM + index as DomId;
    world
        .add_guest(dom, GUEST_FRAMES)
        .map_err(|e| format!("cannot create guest domain {dom}: {e}"))?;
    let faults = Arc::new(IoFaults::new());
    let cfg = VbdConfig {
        kind: match spec.store {
            StoreKindSpec::File => StoreKind::File,
            StoreKindSpec::Device => StoreKind::Device,
        },
        mode: String::from(match spec.mode {
            ModeSpec::ReadWrite => "w",
            ModeSpec::ReadOnly => "r",
        }),
        online: spec.online,
        sector_size: spec.sector_size,
        faults: Some(Arc::clone(&faults)),
        tunables,
        ..VbdConfig::file(dom, &image)
    };
    // The toolstack writes `discard-enable` = 1 when it creates the vbd,
    // and the back-end reads it as it attaches. To write 0 instead, a watch
    // rewrites the node in the toolstack's own thread, as the transaction
    // that creates it commits: before the back-end's thread exists.
    let xs = world.xen().xenstore.clone();
    let discard_watch = if spec.discard_enable {
        None
    } else {
        let paths = toolstack::vbd_paths(&VbdSpec::new(dom, cfg.devid, ""));
        let node = format!("{}/discard-enable", paths.backend);
        let (xs2, node2) = (xs.clone(), node.clone());
        let w = xs
            .watch(
                &node,
                std::boxed::Box::new(move |_p: &str| {
                    if xs2.read_str(&node2).is_ok_and(|v| v != "0") {
                        let _ = xs2.write(&node2, "0");
                    }
                }),
            )
            .map_err(|e| format!("cannot watch {node}: {e:?}"))?;
        Some(w)
    };
    let vbd = world.create_vbd(&cfg);
    if let Some(w) = discard_watch {
        xs.unwatch(w);
    }
    let vbd = vbd.map_err(|e| format!("cannot create the vbd: {e}"))?;
    let profile = Profile::by_name(&spec.profile)
        .ok_or_else(|| format!("unknown profile {:?}", spec.profile))?;
    let mut fe = Frontend::new(world, &vbd, profile)
        .map_err(|e| format!("cannot create the front-end: {e}"))?;
    fe.set_hang_guard(opts.hang_guard);
    Ok(GuestRt {
        name: name.to_string(),
        spec: spec.clone(),
        vbd,
        fe,
        faults,
        io: IoTotals::default(),
        pending: BTreeMap::new(),
        responses: std::collections::VecDeque::new(),
        next_id: Some(1),
    })
}

/// Runs one step on its guests.
fn run_step(run: &mut Run<'_>, n: usize, step: &Step, targets: &[usize]) {
    let action = step.action();
    match step {
        Step::MountRoot {} => {
            run.progress(format_args!("step {n}: mount the root file system"));
            if let Err(e) = run.world.set_root_mounted(true) {
                run.fail(n, action, None, format!("mount failed: {e}"));
            }
        }
        Step::Workload { .. } => run_workloads(run, n, step, targets),
        Step::Connect { .. } if targets.len() > 1 => {
            run.progress(format_args!("step {n}: connect {}", names_of(run, targets)));
            for &t in targets {
                guest_step(run, n, step, t);
            }
        }
        _ => {
            for &t in targets {
                guest_step(run, n, step, t);
            }
        }
    }
}

fn names_of(run: &Run<'_>, targets: &[usize]) -> String {
    targets
        .iter()
        .map(|&t| run.guests[t].name.as_str())
        .collect::<Vec<_>>()
        .join(", ")
}

/// Takes responses until `want` are buffered (or the hang guard fires).
fn collect_responses(g: &mut GuestRt, want: usize) -> Result<(), FrontendError> {
    if g.responses.len() >= want {
        return Ok(());
    }
    let got = g.fe.wait_responses(want - g.responses.len())?;
    g.responses.extend(got);
    Ok(())
}

/// One step on one guest.
fn guest_step(run: &mut Run<'_>, n: usize, step: &Step, t: usize) {
    let action = step.action();
    let name = run.guests[t].name.clone();
    let gname = Some(name.as_str());
    match step {
        Step::Xenstore {
            key,
            value,
            delete,
            queue,
            ..
        } => {
            let v = if *delete { None } else { value.as_deref() };
            let key = match queue {
                Some(q) => format!("{}{q}/{key}", keys::QUEUE_DIR_PREFIX),
                None => key.clone(),
            };
            run.progress(format_args!(
                "step {n}: {name}: front-end will publish {key} = {}",
                v.map_or_else(|| String::from("(nothing)"), |v| format!("{v:?}"))
            ));
            run.guests[t].fe.set_xenstore_override(&key, v);
        }
        Step::Connect {
            expect,
            error_contains,
            ..
        } => {
            let r = run.guests[t].fe.connect();
            let (connected, text) = match &r {
                Ok(info) => {
                    run.progress(format_args!(
                        "step {n}: {name}: connected: {} sectors of 512 B, sector-size {}, {} queue(s) of {} ring page(s), flush {}, barrier {}, indirect {}, persistent {}, discard {}",
                        info.sectors, info.sector_size, info.queues, info.ring_pages, info.flush, info.barrier,
                        info.max_indirect_segments, info.persistent, info.discard
                    ));
                    (true, run.guests[t].fe.backend_error())
                }
                Err(FrontendError::Refused { state, error }) => {
                    run.progress(format_args!(
                        "step {n}: {name}: refused: back-end {state:?}: {}",
                        error.as_deref().unwrap_or("(no error node)")
                    ));
                    (
                        false,
                        error.clone().or_else(|| run.guests[t].fe.backend_error()),
                    )
                }
                Err(e) => {
                    run.progress(format_args!("step {n}: {name}: connect failed: {e}"));
                    (false, Some(e.to_string()))
                }
            };
            match expect {
                ConnectOutcome::Connected => run.check(n, action, gname, connected, || {
                    format!(
                        "expected Connected, got: {}",
                        match &r {
                            Err(e) => e.to_string(),
                            Ok(_) => String::new(),
                        }
                    )
                }),
                ConnectOutcome::Refused => {
                    let refused = matches!(r, Err(FrontendError::Refused { .. }));
                    run.check(n, action, gname, refused, || match &r {
                        Ok(_) => String::from("expected a refusal, but the back-end connected"),
                        Err(e) => format!("expected a refusal, got: {e}"),
                    })
                }
                ConnectOutcome::Any => {}
            }
            if let Some(want) = error_contains {
                // The error node is written just before the state changes;
                // give the back-end a moment to finish writing it.
                let deadline = Instant::now() + run.opts.settle;
                let mut found = error_text(run, t, text.as_deref());
                while !found.iter().any(|e| e.contains(want.as_str())) && Instant::now() < deadline
                {
                    std::thread::sleep(Duration::from_millis(10));
                    found = error_text(run, t, text.as_deref());
                }
                run.check(
                    n,
                    action,
                    gname,
                    found.iter().any(|e| e.contains(want.as_str())),
                    || format!("the back-end's error should contain {want:?}; found {found:?}"),
                );
            }
        }
        Step::Disconnect { .. } => {
            run.progress(format_args!("step {n}: {name}: disconnect"));
            let g = &mut run.guests[t];
            g.pending.clear();
            g.responses.clear();
            if let Err(e) = g.fe.disconnect() {
                run.fail(n, action, gname, format!("disconnect failed: {e}"));
            }
        }
        Step::Request(spec) => {
            let req = match spec.build(&[]) {
                Ok(r) => r,
                Err(e) => {
                    run.fail(n, action, gname, e);
                    return;
                }
            };
            let g = &mut run.guests[t];
            let id = match g.fe.submit_feature(&req) {
                Ok(id) => id,
                Err(e) => {
                    run.fail(n, action, gname, format!("could not submit: {e}"));
                    return;
                }
            };
            g.next_id = Some(id + 1);
            g.pending.insert(
                id,
                Pending {
                    step: n,
                    expect: spec.expect_status,
                    expect_data: spec.expect_data,
                },
            );
            if opts_progress(run) {
                run.progress(format_args!(
                    "step {n}: {name}: request id {id}: op {} sector {} {} segment(s) on queue {}{}",
                    spec.op.0,
                    spec.sector.0,
                    req.base.segs.len(),
                    spec.queue,
                    if spec.wait { "" } else { " (not waited for)" }
                ));
            }
            if spec.wait {
                wait_for_id(run, n, t, id);
            }
        }
        Step::Batch { requests, wait, .. } => batch_step(run, n, t, requests, *wait),
        Step::KickStorm {
            count, queue, each, ..
        } => kick_storm(run, n, t, *count, *queue, *each),
        Step::StateStorm { count, states, .. } => {
            let values: Vec<XenbusState> = states.iter().filter_map(|s| parse_state(s)).collect();
            run.progress(format_args!(
                "step {n}: {name}: {count} writes of the front-end's state ({})",
                states.join(", ")
            ));
            let path = format!("{}/{}", run.guests[t].fe.frontend_path(), keys::STATE);
            let xs = &run.world.xen().xenstore;
            let mut failed = None;
            for i in 0..*count as usize {
                let st = values[i % values.len()];
                if let Err(e) = xs.write(&path, st.as_str()) {
                    failed = Some(format!("write {i} of {path}: {e:?}"));
                    break;
                }
            }
            if let Some(e) = failed {
                run.fail(n, action, gname, e);
            }
        }
        Step::Resize { size, .. } => {
            run.progress(format_args!(
                "step {n}: {name}: resize the medium to {}",
                human_bytes(size.0)
            ));
            let g = &run.guests[t];
            match run.world.resize_vbd(&g.vbd, size.0) {
                Ok(got) => run.check(n, action, gname, got == size.0, || {
                    format!("resized to {got} bytes instead of {}", size.0)
                }),
                Err(e) => run.fail(n, action, gname, format!("resize failed: {e}")),
            }
        }
        Step::RawSlot { slot, hex, .. } => {
            let bytes = parse_hex(hex).unwrap_or_default();
            run.progress(format_args!(
                "step {n}: {name}: raw slot {slot}: {} byte(s)",
                bytes.len()
            ));
            run.guests[t].fe.write_raw_slot_at(*slot, &bytes);
        }
        Step::ReqProd { value, .. } => {
            run.progress(format_args!("step {n}: {name}: req_prod = {}", value.0));
            // The index is 32 bits on the wire; larger values wrap as a
            // guest's arithmetic would.
            run.guests[t].fe.set_req_prod_raw(value.0 as u32);
        }
        Step::Kick { queue, .. } => {
            run.progress(format_args!("step {n}: {name}: kick queue {queue}"));
            run.guests[t].fe.kick_queue(*queue as usize);
        }
        Step::Wait {
            count,
            expect_status,
            ..
        } => wait_step(run, n, t, *count, expect_status.as_ref()),
        Step::InjectIo {
            nth,
            range,
            writes,
            flush,
            clear,
            error,
            ..
        } => {
            let f = &run.guests[t].faults;
            if *clear {
                f.clear();
            }
            let e = error.error();
            if let Some(k) = nth {
                f.fail_nth(*k, e);
            }
            if let Some([a, b]) = range {
                f.fail_range(a.0, b.0, e);
            }
            if *writes {
                f.fail_writes(e);
            }
            if *flush {
                f.fail_flush(e);
            }
            run.progress(format_args!("step {n}: {name}: store faults armed ({e:?})"));
        }
        Step::InjectGrant {
            count,
            gref,
            clear,
            error,
            ..
        } => {
            let grants = &run.guests[t].fe.guest().grants;
            if *clear {
                grants.clear_map_failures();
            }
            let e = error.error();
            if let Some(c) = count {
                grants.inject_map_failures(MapFault::Next {
                    count: *c,
                    error: e,
                });
            }
            if let Some(r) = gref {
                grants.inject_map_failures(MapFault::Gref { gref: *r, error: e });
            }
            run.progress(format_args!(
                "step {n}: {name}: grant-map faults armed ({e:?})"
            ));
        }
        Step::Expect { .. } => expect_step(run, n, step, t),
        Step::MountRoot {} | Step::Workload { .. } => {}
    }
}

/// A `batch` step: every request pushed, then published at once.
fn batch_step(run: &mut Run<'_>, n: usize, t: usize, requests: &[RequestSpec], wait: bool) {
    let name = run.guests[t].name.clone();
    let gname = Some(name.as_str());
    let needs_ids = requests
        .iter()
        .any(|r| r.seg_grants.iter().any(|g| g.in_flight.is_some()));
    let first = match (run.guests[t].next_id, needs_ids) {
        (Some(id), _) => id,
        (None, false) => 0,
        (None, true) => {
            run.fail(
                n,
                "batch",
                gname,
                String::from(
                    "in_flight needs the ids the front-end will give; a workload ran since \
                     the last request: put a `request` step before this batch",
                ),
            );
            return;
        }
    };
    let predicted: Vec<u64> = (0..requests.len() as u64).map(|k| first + k).collect();
    let mut reqs = Vec::new();
    for (k, r) in requests.iter().enumerate() {
        match r.build(&predicted[..k]) {
            Ok(fr) => reqs.push(fr),
            Err(e) => {
                run.fail(n, "batch", gname, format!("request {k}: {e}"));
                return;
            }
        }
    }
    let ids = match run.guests[t].fe.submit_features(&reqs) {
        Ok(ids) => ids,
        Err(e) => {
            run.fail(n, "batch", gname, format!("could not submit: {e}"));
            return;
        }
    };
    run.progress(format_args!(
        "step {n}: {name}: batch of {} request(s), ids {ids:?}",
        ids.len()
    ));
    if let Some(&last) = ids.last() {
        run.guests[t].next_id = Some(last + 1);
    }
    if needs_ids {
        // The in_flight references were resolved with these.
        let same = ids == predicted;
        run.check(n, "batch", gname, same, || {
            format!("the front-end gave ids {ids:?}, not {predicted:?}")
        });
    }
    for (id, r) in ids.iter().zip(requests) {
        run.guests[t].pending.insert(
            *id,
            Pending {
                step: n,
                expect: r.expect_status,
                expect_data: r.expect_data,
            },
        );
    }
    if wait {
        for id in ids {
            wait_for_id(run, n, t, id);
        }
    }
}

/// A `kick_storm` step.
fn kick_storm(run: &mut Run<'_>, n: usize, t: usize, count: u32, queue: u32, each: bool) {
    let name = run.guests[t].name.clone();
    run.progress(format_args!(
        "step {n}: {name}: {count} kicks of queue {queue} without requests"
    ));
    let limit = run.opts.settle;
    for i in 0..count {
        let before = run.world.stat(&run.guests[t].vbd, Stat::SpuriousEvents);
        run.guests[t].fe.kick_queue(queue as usize);
        if !each {
            continue;
        }
        let counted = run.world.wait_backend(&run.guests[t].vbd, limit, |s| {
            s.stats
                .as_ref()
                .is_some_and(|st| st.get(Stat::SpuriousEvents) > before)
        });
        if let Err(e) = counted {
            run.fail(
                n,
                "kick_storm",
                Some(&name),
                format!("kick {i}: the back-end never counted it: {e}"),
            );
            return;
        }
    }
}

/// What the back-end says went wrong: its `error` node (and the front-end's
/// view of the refusal, `seen`), else the reason the instance recorded.
fn error_text(run: &Run<'_>, t: usize, seen: Option<&str>) -> Vec<String> {
    let g = &run.guests[t];
    let mut out: Vec<String> = seen.map(str::to_string).into_iter().collect();
    out.extend(g.fe.backend_error());
    out.extend(
        run.world
            .backend_last_error(&g.vbd)
            .map(|e| format!("{} {e}", e.errno())),
    );
    out
}

fn opts_progress(run: &Run<'_>) -> bool {
    run.opts.progress
}

/// Waits for the response to manual request `id` and checks its status.
fn wait_for_id(run: &mut Run<'_>, n: usize, t: usize, id: u64) {
    let name = run.guests[t].name.clone();
    loop {
        let g = &mut run.guests[t];
        if let Some(pos) = g.responses.iter().position(|r| r.id == id) {
            if let Some(rsp) = g.responses.remove(pos) {
                check_response(run, n, t, &rsp, None);
            }
            return;
        }
        let want = g.responses.len() + 1;
        if let Err(e) = collect_responses(g, want) {
            run.fail(
                n,
                "request",
                Some(&name),
                format!("no response for request id {id}: {e}"),
            );
            return;
        }
    }
}

/// Checks a response against its request's and the step's expected status.
fn check_response(
    run: &mut Run<'_>,
    n: usize,
    t: usize,
    rsp: &BlkifResponse,
    step_expect: Option<Status>,
) {
    let name = run.guests[t].name.clone();
    let pending = run.guests[t].pending.remove(&rsp.id);
    let got = Status(rsp.status);
    run.progress(format_args!(
        "step {n}: {name}: response id {} op {}: {got}",
        rsp.id, rsp.operation
    ));
    let mut wants = Vec::new();
    if let Some(p) = &pending {
        if let Some(s) = p.expect {
            wants.push((p.step, s));
        }
    }
    if let Some(s) = step_expect {
        wants.push((n, s));
    }
    if let Some(b) = pending.as_ref().and_then(|p| p.expect_data) {
        let data = run.guests[t].fe.page_data(rsp.id);
        let bad = data.iter().position(|&x| x != b);
        run.check(
            n,
            "request",
            Some(&name),
            !data.is_empty() && bad.is_none(),
            || match bad {
                Some(i) => format!(
                    "request id {}: byte {i} of the data is {:#04x}, expected {b:#04x}",
                    rsp.id, data[i]
                ),
                None => format!("request id {}: no data came back", rsp.id),
            },
        );
    }
    for (at, want) in wants {
        run.check(at.max(n), "request", Some(&name), got == want, || {
            format!(
                "request id {} (step {at}): expected status {want}, got {got}",
                rsp.id
            )
        });
    }
}

/// A `wait` step.
fn wait_step(run: &mut Run<'_>, n: usize, t: usize, count: usize, expect: Option<&StatusList>) {
    let name = run.guests[t].name.clone();
    run.progress(format_args!(
        "step {n}: {name}: kick, wait for {count} response(s)"
    ));
    let quiet = run.opts.quiet_period;
    let g = &mut run.guests[t];
    g.fe.kick();
    if count == 0 {
        match g.fe.poll_responses(quiet) {
            Ok(got) => g.responses.extend(got),
            Err(e) => {
                // Not connected any more (e.g. the back-end closed): no
                // response can come.
                run.progress(format_args!("step {n}: {name}: poll: {e}"));
            }
        }
        let g = &run.guests[t];
        let extra = g.responses.len();
        let ids: Vec<u64> = g.responses.iter().map(|r| r.id).collect();
        run.check(n, "wait", Some(&name), extra == 0, || {
            format!("expected no response, got {extra} (ids {ids:?})")
        });
        return;
    }
    if let Err(e) = collect_responses(g, count) {
        let have = g.responses.len();
        run.fail(
            n,
            "wait",
            Some(&name),
            format!("expected {count} response(s), got {have}: {e}"),
        );
    }
    let take = run.guests[t].responses.len().min(count);
    let rsps: Vec<BlkifResponse> = run.guests[t].responses.drain(..take).collect();
    for (i, rsp) in rsps.iter().enumerate() {
        check_response(run, n, t, rsp, expect.and_then(|e| e.get(i)));
    }
}

/// An `expect` step: waits (bounded by [`RunOptions::settle`]) until every
/// expectation holds, then records whichever still do not.
fn expect_step(run: &mut Run<'_>, n: usize, step: &Step, t: usize) {
    let Step::Expect {
        state,
        error_contains,
        sysctl,
        verify_ok,
        faults_injected,
        queue,
        backend_nodes,
        watch,
        ..
    } = step
    else {
        return;
    };
    let name = run.guests[t].name.clone();
    let want_state = state.as_deref().and_then(parse_state);
    let deadline = Instant::now() + run.opts.settle;
    let evaluate = |run: &Run<'_>| -> Vec<String> {
        let g = &run.guests[t];
        let mut bad = Vec::new();
        if let Some(ws) = want_state {
            let have = run.world.backend_state(&g.vbd);
            if have != ws {
                bad.push(format!(
                    "back-end state: expected {}, is {}",
                    state_name(ws),
                    state_name(have)
                ));
            }
        }
        if let Some(want) = error_contains {
            let found = error_text(run, t, None);
            if !found.iter().any(|e| e.contains(want.as_str())) {
                bad.push(format!(
                    "the back-end's error should contain {want:?}; found {found:?}"
                ));
            }
        }
        if !sysctl.is_empty() {
            let snap = run.world.backend(&g.vbd);
            let stats = snap
                .as_ref()
                .and_then(|s| s.stats.clone())
                .unwrap_or_default();
            let qstats = queue.and_then(|q| {
                snap.as_ref()
                    .and_then(|s| s.queues.get(q as usize).cloned())
            });
            for (k, e) in sysctl {
                let Some(stat) = Stat::by_name(k) else {
                    continue;
                };
                let (node, v) = match queue {
                    Some(q) if stat.desc().per_queue() => match &qstats {
                        Some(qs) => (format!("dev.xbb.{t}.queue.{q}.{k}"), qs.get(stat)),
                        None => {
                            bad.push(format!(
                                "dev.xbb.{t}.queue.{q}.{k}: the connection has no queue {q}"
                            ));
                            continue;
                        }
                    },
                    _ => (format!("dev.xbb.{t}.{k}"), stats.get(stat)),
                };
                if !e.holds(v) {
                    bad.push(format!("{node}: expected {e}, is {v}"));
                }
            }
        }
        for (k, want) in backend_nodes {
            let path = format!("{}/{k}", g.fe.backend_path());
            let have = run.world.xen().xenstore.read_str(&path).ok();
            let ok = match (want, &have) {
                (NodeExpect::Present(p), h) => *p == h.is_some(),
                (NodeExpect::Value(v), Some(h)) => v == h,
                (NodeExpect::Value(_), None) => false,
            };
            if !ok {
                let want = match want {
                    NodeExpect::Present(true) => String::from("present"),
                    NodeExpect::Present(false) => String::from("absent"),
                    NodeExpect::Value(v) => format!("{v:?}"),
                };
                bad.push(format!(
                    "back-end node {k}: expected {want}, is {}",
                    have.map_or_else(|| String::from("absent"), |h| format!("{h:?}"))
                ));
            }
        }
        if !watch.is_empty() {
            let st = run.world.xen().xenstore.watch_stats();
            for (k, e) in watch {
                if let Some(v) = watch_counter(&st, k) {
                    if !e.holds(v) {
                        bad.push(format!("XenStore watch events {k}: expected {e}, is {v}"));
                    }
                }
            }
        }
        if let Some(e) = faults_injected {
            let v = g.faults.counters().total();
            if !e.holds(v) {
                bad.push(format!("store faults injected: expected {e}, is {v}"));
            }
        }
        bad
    };
    let mut bad = evaluate(run);
    while !bad.is_empty() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
        bad = evaluate(run);
    }
    // The guest's own verification does not change while we wait.
    if let Some(w) = verify_ok {
        let have = run.guests[t].io.verify_ok();
        if have != *w {
            bad.push(format!("verification ok: expected {w}, is {have}"));
        }
    }
    let total = usize::from(want_state.is_some())
        + usize::from(error_contains.is_some())
        + sysctl.len()
        + backend_nodes.len()
        + watch.len()
        + usize::from(verify_ok.is_some())
        + usize::from(faults_injected.is_some());
    run.progress(format_args!(
        "step {n}: {name}: {} of {total} expectation(s) hold",
        total - bad.len().min(total)
    ));
    run.checks += (total - bad.len().min(total)) as u64;
    for b in bad {
        run.fail(n, "expect", Some(&name), b);
    }
}

/// A `workload` step: every target guest at the same time, one thread each.
fn run_workloads(run: &mut Run<'_>, n: usize, step: &Step, targets: &[usize]) {
    let Step::Workload {
        ops,
        io_size,
        pattern,
        read_pct,
        offset,
        region,
        seed,
        verify,
        expect_errors,
        ..
    } = step
    else {
        return;
    };
    run.progress(format_args!(
        "step {n}: workload on {}: {ops} x {} {:?}, {read_pct}% reads",
        names_of(run, targets),
        human_bytes(io_size.0),
        pattern
    ));
    let mut results: Vec<(usize, Result<WorkloadReport, FrontendError>)> = Vec::new();
    std::thread::scope(|s| {
        let mut handles = Vec::new();
        for (i, g) in run.guests.iter_mut().enumerate() {
            if !targets.contains(&i) {
                continue;
            }
            let wl = Workload {
                ops: *ops,
                io_size: io_size.0 as u32,
                random: *pattern == Pattern::Random,
                read_pct: *read_pct,
                region_sectors: Some(workload_region(&g.spec, *offset, *region))
                    .map(|(a, b)| (a / 512, (b - a) / 512)),
                seed: seed.wrapping_add(i as u64),
                verify_all_at_end: *verify,
            };
            handles.push((i, s.spawn(move || run_workload(&mut g.fe, &wl))));
        }
        for (i, h) in handles {
            let r = h.join().unwrap_or_else(|_| {
                Err(FrontendError::Os(String::from("workload thread panicked")))
            });
            results.push((i, r));
        }
    });
    for (i, r) in results {
        let name = run.guests[i].name.clone();
        match r {
            Ok(rep) => {
                run.guests[i].next_id = None;
                let io = &mut run.guests[i].io;
                io.workloads += 1;
                io.reads += rep.reads;
                io.writes += rep.writes;
                io.flushes += rep.flushes;
                io.bytes_read += rep.bytes_read;
                io.bytes_written += rep.bytes_written;
                io.bytes_checked += rep.bytes_checked;
                io.mismatches += rep.mismatches;
                io.error_responses += rep.error_responses;
                io.seconds += rep.elapsed.as_secs_f64();
                if io.first_mismatch.is_none() {
                    io.first_mismatch.clone_from(&rep.first_mismatch);
                }
                let secs = rep.elapsed.as_secs_f64();
                let mib = (rep.bytes_read + rep.bytes_written) as f64 / MIB;
                run.progress(format_args!(
                    "step {n}: {name}: {} reads, {} writes, {} flushes, {:.1} MiB/s, {} bytes verified, {} mismatches, {} error responses",
                    rep.reads,
                    rep.writes,
                    rep.flushes,
                    if secs > 0.0 { mib / secs } else { 0.0 },
                    rep.bytes_checked,
                    rep.mismatches,
                    rep.error_responses
                ));
                run.check(n, "workload", Some(&name), rep.mismatches == 0, || {
                    format!(
                        "{} sector(s) read back wrong; first: {}",
                        rep.mismatches,
                        rep.first_mismatch.clone().unwrap_or_default()
                    )
                });
                let want = expect_errors.unwrap_or(CounterExpect {
                    cmp: Cmp::Eq,
                    value: 0,
                });
                run.check(
                    n,
                    "workload",
                    Some(&name),
                    want.holds(rep.error_responses),
                    || {
                        format!(
                            "error responses: expected {want}, got {}",
                            rep.error_responses
                        )
                    },
                );
            }
            Err(e) => {
                run.guests[i].next_id = None;
                run.progress(format_args!("step {n}: {name}: workload failed: {e}"));
                run.guests[i].io.failure = Some(e.to_string());
                run.fail(n, "workload", Some(&name), format!("workload failed: {e}"));
            }
        }
    }
}
