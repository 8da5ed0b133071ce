//! The scenario file, as serde reads it (`lab/scenarios/README.md`).

use super::*;

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

pub(super) fn yes() -> bool {
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
    /// Store kind: `file` (a vnode), `device` (a raw device, `O_DIRECT`)
    /// or `nbd` (an NBD export: `nbdkit memory` of the guest's size).
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
    /// The toolstack's `direct-io-safe` node (xl's disk option; default
    /// false): a `file` store is then opened with `O_DIRECT` where the
    /// file system takes it, as a `device` store always is.
    #[serde(default)]
    pub direct_io_safe: bool,
    /// The back-end keeps in-flight journals (as xbb-serve does), so that
    /// a `backend_restart` takes the vbd over (default false: none, as the
    /// kernel; a restart is then refused).
    #[serde(default)]
    pub journal: bool,
    /// A volatile write cache in front of the disk, whose power `crash`
    /// steps cut: `true`, or `{ capacity = "8M", seed = N, ignore_flushes
    /// = false }`. None by default: a completed write is durable.
    #[serde(default)]
    pub write_cache: Option<WriteCacheSpec>,
}

/// A guest's `write_cache`: `true` / `false`, or a table of options.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(untagged)]
pub enum WriteCacheSpec {
    /// A cache with the default options (`true`), or none (`false`).
    On(bool),
    /// A cache with these options.
    With(WriteCacheOptions),
}

/// The options of a guest's write cache.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct WriteCacheOptions {
    /// Dirty bytes the cache holds before it destages its oldest writes
    /// (default 8 MiB).
    pub capacity: Option<Size>,
    /// Seed of where an armed cut falls and of what survives it (default:
    /// the guest's index).
    pub seed: Option<u64>,
    /// A disk that lies about flushes: they complete and make nothing
    /// durable. For showing that the crash check catches it.
    pub ignore_flushes: bool,
}

impl WriteCacheSpec {
    /// The options, when there is a cache.
    pub fn options(&self) -> Option<WriteCacheOptions> {
        match *self {
            WriteCacheSpec::On(true) => Some(WriteCacheOptions::default()),
            WriteCacheSpec::On(false) => None,
            WriteCacheSpec::With(o) => Some(o),
        }
    }
}

/// How a `crash` step's writes are made durable.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SyncSpec {
    /// `BLKIF_OP_FLUSH_DISKCACHE` after every `every` writes.
    #[default]
    Flush,
    /// Every `every`-th write a `BLKIF_OP_WRITE_BARRIER`.
    Barrier,
    /// Neither.
    None,
}

/// What a `crash` step expects of its checks.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CrashExpect {
    /// No rule broken in any round.
    #[default]
    Consistent,
    /// At least one rule broken (a disk that ignores flushes).
    Violated,
}

pub(super) fn default_profile() -> String {
    String::from("linux")
}

pub(super) fn default_sector_size() -> u32 {
    512
}

pub(super) fn default_size() -> Size {
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
    /// An NBD export: the lab starts `nbdkit memory` of the guest's size
    /// and names its Unix socket in `params` (`nbd+unix:///?socket=...`).
    Nbd,
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
pub(super) fn parse_number(s: &str) -> Option<u64> {
    let s = s.replace('_', "");
    if let Some(h) = s.strip_prefix("0x").or_else(|| s.strip_prefix("0X")) {
        u64::from_str_radix(h, 16).ok()
    } else {
        s.parse().ok()
    }
}

#[derive(Deserialize)]
#[serde(untagged)]
pub(super) enum NumOrText {
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

    pub(super) fn parse(s: &str) -> Option<Status> {
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
pub(super) enum IntOrText {
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
    pub(super) fn get(&self, i: usize) -> Option<Status> {
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
    pub(super) fn parse(s: &str) -> Option<OpCode> {
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
        /// Write the value the profile computes for this other node
        /// (relative to the front-end directory: `queue-0/ring-ref0`).
        #[serde(default)]
        same_as: Option<String>,
        /// Undo an earlier override of the node (`key = "*"`: of every
        /// node): the next connect publishes what the profile computes.
        #[serde(default)]
        reset: bool,
    },
    /// The front-end connects.
    Connect(ConnectSpec),
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
        /// Statuses any of which each response may have.
        #[serde(default)]
        expect_status_in: Vec<Status>,
        /// Their expected ids: one for all, or a list in order.
        #[serde(default)]
        expect_id: Option<IdList>,
        /// Instead of responses, the front-end must find the ring broken
        /// (an impossible `rsp_prod`, or an id not in flight) and take
        /// nothing more.
        #[serde(default)]
        expect_broken_backend: bool,
    },
    /// Runs a workload, on several guests at once when more are named.
    Workload(WorkloadSpec),
    /// Crash consistency, `rounds` times: arms a power cut of the guest's
    /// write cache at a random store I/O among the next `cut_within`,
    /// writes with flushes, barriers or neither until the disk stops
    /// answering, lets the power return, reconnects, reads the region back
    /// and checks it against what the back-end promised.
    Crash(CrashSpec),
    /// Arms a store I/O fault of the guest's back-end.
    InjectIo(InjectIoSpec),
    /// Makes grant mappings of the guest's grants fail.
    InjectGrant(InjectGrantSpec),
    /// Ends the guest's back-end (`how`: it crashes, or it is handed over
    /// as a service restart does) and starts a new one that takes the vbd
    /// over from its in-flight journals. The front-end is left alone. May
    /// be played during a workload of the same guest.
    BackendRestart {
        /// The guest(s); every guest when absent, `"*"` too.
        #[serde(default)]
        guest: Guests,
        /// How the running back-end ends (default `crash`).
        #[serde(default)]
        how: RestartHow,
    },
    /// Acts on the NBD server of the guest's `nbd` store.
    NbdServer {
        /// The guest(s); every guest when absent, `"*"` too. Each must have
        /// an `nbd` store.
        #[serde(default)]
        guest: Guests,
        /// What happens to the server.
        action: NbdServerAction,
    },
    /// Mounts the back-end domain's root file system.
    MountRoot {},
    /// Checks the guest's back-end; waits (bounded) for it to settle first.
    Expect(ExpectSpec),
}

/// How a `backend_restart` step ends the running back-end.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RestartHow {
    /// The process dies: nothing more is answered; the kernel takes its
    /// mappings and channels back.
    #[default]
    Crash,
    /// The service stops for a restart: what is in flight is answered,
    /// the vbd stays Connected.
    HandOver,
}

/// A `connect` step.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ConnectSpec {
    /// The guest(s); every guest when absent, `"*"` too.
    pub guest: Guests,
    /// What must happen.
    pub expect: ConnectOutcome,
    /// Text the back-end's `error` node must contain (refusals).
    pub error_contains: Option<String>,
    /// Start every index of the rings (`req_prod`, `rsp_prod`, the
    /// events) at this value instead of 0, e.g. just below 2^32 so that
    /// they wrap soon (32 bits).
    pub ring_start: Option<Num>,
}

/// A `workload` step.
#[derive(Clone, Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct WorkloadSpec {
    /// The guest(s); every guest when absent, `"*"` too. Several guests
    /// run their workloads at the same time.
    pub guest: Guests,
    /// Requests to issue.
    pub ops: u64,
    /// Bytes per request (a multiple of 512).
    pub io_size: Size,
    /// `random` or `sequential`.
    pub pattern: Pattern,
    /// Percentage of reads (the rest are writes).
    pub read_pct: u8,
    /// Where on the disk the workload's region starts, bytes.
    pub offset: Option<Size>,
    /// Bytes of the disk used from `offset` (default: up to the end).
    /// Each workload checks reads against what it wrote itself, so two
    /// workloads of one guest must use disjoint regions.
    pub region: Option<Size>,
    /// Seed of the pseudo-random choices.
    pub seed: u64,
    /// Check every byte read against what was written, and read the
    /// whole region back at the end (default true).
    pub verify: bool,
    /// Expected number of error responses (default 0).
    pub expect_errors: Option<CounterExpect>,
    /// Steps played on other guests while these workloads run: once
    /// every workload is under way, in order; each workload issues at
    /// least `ops` requests and keeps going until they are done.
    pub during: Vec<Step>,
}

impl Default for WorkloadSpec {
    fn default() -> Self {
        WorkloadSpec {
            guest: Guests::Default,
            ops: 256,
            io_size: Size(4096),
            pattern: Pattern::default(),
            read_pct: 50,
            offset: None,
            region: None,
            seed: DEFAULT_SEED,
            verify: true,
            expect_errors: None,
            during: Vec::new(),
        }
    }
}

/// A `crash` step.
#[derive(Clone, Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CrashSpec {
    /// The guest(s); every guest when absent, `"*"` too.
    pub guest: Guests,
    /// Power cuts (default 4).
    pub rounds: u32,
    /// Writes per round at most (default 128).
    pub ops: u64,
    /// Bytes per write (default 4K; at most 11 pages).
    pub io_size: Size,
    /// `flush` (default), `barrier` or `none`.
    pub sync: SyncSpec,
    /// A flush after, or a barrier as, every `every`-th write (default
    /// 8).
    pub every: u32,
    /// The cut falls at a random store I/O among the next this many
    /// (default twice `ops`); when the writes end first, the power is
    /// cut at that quiet moment.
    pub cut_within: Option<u64>,
    /// Where the region written starts, bytes.
    pub offset: Option<Size>,
    /// Bytes of the region (default: up to the end of the disk).
    pub region: Option<Size>,
    /// Seed of the places written (the cut's place and what survives
    /// it follow the cache's seed).
    pub seed: u64,
    /// `consistent` (default) or `violated`.
    pub expect: CrashExpect,
}

impl Default for CrashSpec {
    fn default() -> Self {
        CrashSpec {
            guest: Guests::Default,
            rounds: 4,
            ops: 128,
            io_size: Size(4096),
            sync: SyncSpec::default(),
            every: 8,
            cut_within: None,
            offset: None,
            region: None,
            seed: DEFAULT_SEED,
            expect: CrashExpect::default(),
        }
    }
}

/// An `expect` step.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ExpectSpec {
    /// The guest(s); every guest when absent, `"*"` too.
    pub guest: Guests,
    /// Back-end XenBus state (`InitWait`, `Connected`, `Closing`, ...).
    pub state: Option<String>,
    /// Text the back-end's `error` node must contain.
    pub error_contains: Option<String>,
    /// `dev.xbb.N.<leaf>` counters.
    pub sysctl: BTreeMap<String, CounterExpect>,
    /// The guest's verification result so far.
    pub verify_ok: Option<bool>,
    /// Store faults injected so far.
    pub faults_injected: Option<CounterExpect>,
    /// Read the per-queue nodes of `sysctl` from this queue
    /// (`dev.xbb.N.queue.Q.<leaf>`) instead of the instance's sums.
    pub queue: Option<u32>,
    /// Nodes of the back-end's XenStore directory: a string is the
    /// value expected, `false` means absent, `true` present.
    pub backend_nodes: BTreeMap<String, NodeExpect>,
    /// Watch-event counters of the XenStore (the whole host):
    /// `delivered`, `coalesced`, `overflowed`, `pending`, `max_pending`.
    pub watch: BTreeMap<String, CounterExpect>,
    /// Any XenStore node: `error` (the back-end's error node),
    /// `backend/<key>`, `frontend/<key>`, or an absolute path; a value,
    /// `false` for absent, `true` for present.
    pub nodes: BTreeMap<String, NodeExpect>,
}

/// The seed of workloads and crash steps that name none.
const DEFAULT_SEED: u64 = 0x5eed;

/// What an `nbd_server` step does to a guest's NBD server (`nbdkit
/// memory`, behind its error filter).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NbdServerAction {
    /// Every read, write, trim and write-zeroes from now on fails with
    /// `EIO`; the connection stays up.
    Fail,
    /// The server serves again after `fail`.
    Recover,
    /// The server dies (`SIGKILL`): a crash, a host gone.
    Kill,
}

/// One expected response id, or one per response in order.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(untagged)]
pub enum IdList {
    /// Every response has this id.
    One(Num),
    /// The n-th response has the n-th id.
    Each(Vec<Num>),
}

impl IdList {
    pub(super) fn get(&self, i: usize) -> Option<u64> {
        match self {
            IdList::One(n) => Some(n.0),
            IdList::Each(v) => v.get(i).map(|n| n.0),
        }
    }
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

impl NodeExpect {
    /// What is wrong with a node whose value is `have` (`None`: absent),
    /// if anything: "expected ..., is ...".
    pub(super) fn mismatch(&self, have: Option<&str>) -> Option<String> {
        let ok = match (self, have) {
            (NodeExpect::Present(p), h) => *p == h.is_some(),
            (NodeExpect::Value(v), Some(h)) => v == h,
            (NodeExpect::Value(_), None) => false,
        };
        let want = match self {
            NodeExpect::Present(true) => String::from("present"),
            NodeExpect::Present(false) => String::from("absent"),
            NodeExpect::Value(v) => format!("{v:?}"),
        };
        let have = have.map_or_else(|| String::from("absent"), |h| format!("{h:?}"));
        (!ok).then(|| format!("expected {want}, is {have}"))
    }
}

/// The watch-event counters an `expect` step can name.
pub const WATCH_COUNTERS: [&str; 5] = [
    "delivered",
    "coalesced",
    "overflowed",
    "pending",
    "max_pending",
];

pub(super) fn watch_counter(st: &WatchStats, name: &str) -> Option<u64> {
    Some(match name {
        "delivered" => st.delivered,
        "coalesced" => st.coalesced,
        "overflowed" => st.overflowed,
        "pending" => st.pending as u64,
        "max_pending" => st.max_pending as u64,
        _ => return None,
    })
}

/// An `inject_io` step: store I/O faults of the guest's back-end. At least
/// one of `nth`, `range`, `writes`, `flush` or `clear` must be given.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct InjectIoSpec {
    /// The guest(s); every guest when absent, `"*"` too.
    pub guest: Guests,
    /// Fail the n-th data I/O from now (1 = the next one).
    pub nth: Option<u64>,
    /// Fail every I/O touching medium bytes `[start, end)`.
    pub range: Option<[Num; 2]>,
    /// Fail every write.
    pub writes: bool,
    /// Fail every flush.
    pub flush: bool,
    /// Disarm every fault first.
    pub clear: bool,
    /// `true`: hold every I/O from now (taken, neither performed nor
    /// completed: requests stay in flight); `false`: release the hold. A
    /// back-end that crashes has its held I/O finished.
    #[serde(default)]
    pub hold: Option<bool>,
    /// The error.
    pub error: IoErrorSpec,
}

impl InjectIoSpec {
    /// True when the step would arm (or clear) nothing.
    pub fn is_empty(&self) -> bool {
        self.nth.is_none()
            && self.range.is_none()
            && !self.writes
            && !self.flush
            && !self.clear
            && self.hold.is_none()
    }
}

/// An `inject_grant` step: failures of grant mappings of the guest's
/// grants. At least one of `count`, `gref` or `clear` must be given.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct InjectGrantSpec {
    /// The guest(s); every guest when absent, `"*"` too.
    pub guest: Guests,
    /// The next `count` map operations fail.
    pub count: Option<u32>,
    /// Every map of this grant reference fails.
    pub gref: Option<u32>,
    /// Disarm every fault first.
    pub clear: bool,
    /// The error.
    pub error: GrantErrorSpec,
}

impl InjectGrantSpec {
    /// True when the step would arm (or clear) nothing.
    pub fn is_empty(&self) -> bool {
        self.count.is_none() && self.gref.is_none() && !self.clear
    }
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
    /// Statuses any of which the response may have (instead of
    /// `expect_status`).
    #[serde(default)]
    pub expect_status_in: Vec<Status>,
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
    pub(super) fn segments(&self) -> Vec<(u8, u8)> {
        match self.pages {
            Some(n) => vec![(0, 7); usize::from(n)],
            None => self.segs.iter().map(|s| (s[0], s[1])).collect(),
        }
    }

    /// Whether data goes from the guest's pages to the medium.
    pub(super) fn writes(&self) -> bool {
        if self.op.0 == BLKIF_OP_INDIRECT {
            self.indirect_op.is_some_and(|o| o.writes())
        } else {
            self.op.writes()
        }
    }

    /// Checks what TOML cannot; `in_batch` is this request's index in its
    /// batch, if it is in one.
    pub(super) fn validate(&self, in_batch: Option<usize>) -> Result<(), String> {
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
        if self
            .indirect_pages
            .is_some_and(|p| usize::from(p) > BLKIF_MAX_INDIRECT_PAGES_PER_REQUEST)
        {
            return Err(format!(
                "indirect_pages: at most {BLKIF_MAX_INDIRECT_PAGES_PER_REQUEST}, the \
                 indirect_grefs a request has"
            ));
        }
        if self.expect_status.is_some() && !self.expect_status_in.is_empty() {
            return Err(String::from(
                "give expect_status or expect_status_in, not both",
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
    pub(super) fn build(&self, batch_ids: &[u64]) -> Result<FeatureRequest, String> {
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

pub(super) fn zero_num() -> Num {
    Num(0)
}

pub(super) fn default_storm_states() -> Vec<String> {
    vec![String::from("Connected")]
}

impl Step {
    /// The `do` name of the step.
    pub fn action(&self) -> &'static str {
        match self {
            Step::Xenstore { .. } => "xenstore",
            Step::Connect(_) => "connect",
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
            Step::Workload(_) => "workload",
            Step::Crash(_) => "crash",
            Step::InjectIo(_) => "inject_io",
            Step::InjectGrant(_) => "inject_grant",
            Step::NbdServer { .. } => "nbd_server",
            Step::BackendRestart { .. } => "backend_restart",
            Step::MountRoot {} => "mount_root",
            Step::Expect(_) => "expect",
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

/// A list of the names a value may take, for an error message.
pub(super) fn known<'a>(names: impl IntoIterator<Item = &'a str>) -> String {
    names.into_iter().collect::<Vec<_>>().join(", ")
}

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
pub(super) fn apply_tunables(
    mut t: Tunables,
    map: &BTreeMap<String, Num>,
) -> Result<Tunables, ScenarioError> {
    {
        for (name, &Num(v)) in map {
            let tun = Tunable::by_name(name).ok_or_else(|| {
                ScenarioError::Invalid(format!(
                    "unknown tunable {name:?}; known: {}",
                    known(TUNABLES.iter().map(|d| d.name))
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
