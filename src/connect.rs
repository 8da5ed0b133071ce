//! The XenStore side of a connection's life cycle: vetted reads of the
//! back-end's and the front-end's nodes, and the back-end's publishing.
//!
//! This implements the "Feature and Parameter Negotiation" section of Xen's
//! `io/blkif.h`, its "Multiple hardware queues/rings" section, and the node
//! side of its "STATE DIAGRAMS" section, with the state values of
//! `io/xenbus.h`:
//!
//! - read from the back-end's directory ("Backend Device Identification"
//!   and the toolstack's switches): `frontend`, `frontend-id`, `params`
//!   (or `physical-device-path`), `type`, `mode`, `online`,
//!   `discard-enable` ([`read_backend_nodes`]);
//! - published before the front-end connects (back-end "Request Transport
//!   Parameters" and "Features"): `max-ring-page-order`, `max-ring-pages`,
//!   `multi-queue-max-queues`, `feature-persistent` ([`publish_offer`]);
//! - read from the front-end's directory ("Request Transport Parameters",
//!   front-end "Features"): `ring-page-order` / `num-ring-pages`,
//!   `multi-queue-num-queues`, `ring-ref` / `ring-ref%u` and
//!   `event-channel` (top-level for one queue, in `queue-%u/` for more),
//!   `protocol`, `feature-persistent` ([`read_frontend`]);
//! - published on connection ("Backend Device Properties", back-end
//!   "Features"): `sectors`, `sector-size`, `physical-sector-size`, `info`,
//!   `feature-flush-cache`, `feature-barrier`, `feature-persistent`,
//!   `feature-max-indirect-segments`, `feature-discard`,
//!   `discard-granularity`, `discard-alignment`, `discard-secure`, then
//!   `state` ([`publish_connected`]); on a resize `sectors` and `state`
//!   again ([`publish_resize`]);
//! - `state` of either end ([`read_state`], [`write_state`]) and the
//!   per-device `error` node ([`report_fatal`]).
//!
//! *When* each step runs is decided by the state machine in
//! [`instance`](crate::instance); this module only reads, checks and
//! writes.
//!
//! Everything a front-end (or, less likely, a toolstack) wrote is hostile:
//! each value is read once into a private buffer, parsed as strict decimal,
//! range-checked, and only then used. Nothing here panics on any input.
//! Multi-node reads and writes run inside one XenStore transaction, retried
//! a bounded number of times ([`XS_TXN_RETRIES`]) when it conflicts.
//!
//! All allocation (paths, messages, strings, the queue list) is fallible
//! and happens only at connect time (and on the rare resize); a failed
//! allocation is [`ConnectError::NoMemory`].

use alloc::string::String;
use alloc::vec::Vec;
use core::fmt;

use crate::abi::{self, Abi};
use crate::host::{
    DomId, EvtchnError, EvtchnPort, GrantError, GrantRef, MediumInfo, OpenError, XenStore,
    XenbusState, XsError, XsTxn,
};

// errno values. These are the same on FreeBSD and Linux, so an `error` node
// reads the same whichever domain runs the back-end.
const ENOENT: i32 = 2;
const EIO: i32 = 5;
const ENXIO: i32 = 6;
const E2BIG: i32 = 7;
const ENOMEM: i32 = 12;
const EACCES: i32 = 13;
const EBUSY: i32 = 16;
const ENODEV: i32 = 19;
const EINVAL: i32 = 22;

/// How many times a XenStore transaction that ended with
/// [`XsError::Again`] (a conflict with another writer) is retried before
/// giving up with that error.
pub const XS_TXN_RETRIES: u32 = 8;

/// The longest `params`, `physical-device-path` or `frontend` value
/// accepted, in bytes (FreeBSD's `PATH_MAX`).
pub const MAX_PATH_LEN: usize = 1024;

/// The longest `type` value accepted, in bytes.
pub const MAX_TYPE_LEN: usize = 32;

/// The largest `frontend-id` accepted: `DOMID_FIRST_RESERVED - 1`. Ids from
/// `DOMID_FIRST_RESERVED` (0x7FF0) up name special domains (`DOMID_SELF`,
/// `DOMID_IO`, ...), never a guest.
pub const MAX_FRONTEND_ID: DomId = 0x7FEF;

/// The key named by errors about a transaction itself (start or commit).
const TXN_KEY: &str = "transaction";

/// The size of the stack buffer numbers and short strings are read into.
const VALUE_BUF: usize = 256;

/// Builds a table of `<prefix>ring-ref<N>` node names, one per page the
/// largest ring can have.
macro_rules! ring_ref_keys {
    ($prefix:literal; $($i:literal)*) => {
        [$(concat!($prefix, "ring-ref", $i)),*]
    };
}

/// The names of the per-page ring nodes of a multi-page ring (`ring-ref%u`).
const RING_REF_KEYS: [&str; 32] = ring_ref_keys!("";
    0 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15
    16 17 18 19 20 21 22 23 24 25 26 27 28 29 30 31);

/// The names errors give the same nodes when they are read below a
/// `queue-%u` directory (the node read is still `ring-ref%u`).
const QUEUE_RING_REF_KEYS: [&str; 32] = ring_ref_keys!("queue/";
    0 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15
    16 17 18 19 20 21 22 23 24 25 26 27 28 29 30 31);

// One name per page the largest ring can have, and no more.
const _: () = assert!(RING_REF_KEYS.len() == abi::MAX_RING_PAGES as usize);
const _: () = assert!(QUEUE_RING_REF_KEYS.len() == abi::MAX_RING_PAGES as usize);

/// Why a step of the connection failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConnectError {
    /// A XenStore operation on `key` failed.
    Xs {
        /// The node, or `"transaction"` when starting or committing a transaction failed.
        key: &'static str,
        /// What the store said.
        err: XsError,
    },
    /// A required node is absent.
    Missing {
        /// The node.
        key: &'static str,
    },
    /// A numeric node is not plain decimal: empty, signed, spaced, hex, or
    /// too big for its type.
    NotANumber {
        /// The node.
        key: &'static str,
    },
    /// A number outside what is allowed.
    OutOfRange {
        /// The node.
        key: &'static str,
        /// The value found.
        value: u64,
    },
    /// A string node that is not one of the accepted values (e.g. a `mode`
    /// other than `r`, `w`, `w!`), or not valid UTF-8, or holding a NUL.
    BadValue {
        /// The node.
        key: &'static str,
    },
    /// The front-end's `protocol` is not a known `XEN_IO_PROTO_ABI_*`.
    UnknownProtocol,
    /// A `state` node holds a number that is not a `XenbusState`.
    BadState {
        /// The value found.
        value: u64,
    },
    /// A value longer than accepted.
    TooLong {
        /// The node.
        key: &'static str,
    },
    /// The shared ring could not be set up.
    Ring,
    /// Mapping the ring's grants failed.
    Grant(GrantError),
    /// Binding the event channel failed.
    Evtchn(EvtchnError),
    /// Opening the back-end store failed.
    Open(OpenError),
    /// The back-end store went away (its device was removed, its medium
    /// ejected) while the connection used it.
    StoreGone,
    /// An allocation failed.
    NoMemory,
}

impl ConnectError {
    /// The errno this error is reported with (in the `error` node, to the
    /// platform). The values are those FreeBSD and Linux share.
    pub fn errno(&self) -> i32 {
        match *self {
            ConnectError::Xs { err, .. } => match err {
                XsError::NotFound => ENOENT,
                XsError::TooLong => E2BIG,
                // A transaction that kept conflicting: the store is busy.
                XsError::Again => EBUSY,
                XsError::Denied => EACCES,
                XsError::Other(e) if e > 0 => e,
                XsError::Other(_) => EIO,
            },
            ConnectError::Missing { .. } => ENOENT,
            ConnectError::NotANumber { .. }
            | ConnectError::OutOfRange { .. }
            | ConnectError::BadValue { .. }
            | ConnectError::UnknownProtocol
            | ConnectError::BadState { .. } => EINVAL,
            ConnectError::TooLong { .. } => E2BIG,
            ConnectError::Ring => EIO,
            ConnectError::Grant(g) => match g {
                GrantError::BadRef => EINVAL,
                GrantError::Denied => EACCES,
                GrantError::NoSpace => ENOMEM,
                GrantError::General => EIO,
            },
            ConnectError::Evtchn(e) => match e {
                EvtchnError::BadPort => EINVAL,
                EvtchnError::General => EIO,
            },
            ConnectError::Open(o) => match o {
                OpenError::NotFound => ENOENT,
                OpenError::Denied => EACCES,
                OpenError::Invalid => ENODEV,
                OpenError::Other(e) if e > 0 => e,
                OpenError::Other(_) => EIO,
            },
            ConnectError::StoreGone => ENXIO,
            ConnectError::NoMemory => ENOMEM,
        }
    }
}

impl fmt::Display for ConnectError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            ConnectError::Xs { key, err } => {
                write!(f, "{key}: ")?;
                match err {
                    XsError::NotFound => f.write_str("no such XenStore node"),
                    XsError::TooLong => f.write_str("XenStore value too long"),
                    XsError::Again => f.write_str("XenStore transaction kept conflicting"),
                    XsError::Denied => f.write_str("XenStore permission denied"),
                    XsError::Other(e) => write!(f, "XenStore error {e}"),
                }
            }
            ConnectError::Missing { key } => write!(f, "{key}: missing"),
            ConnectError::NotANumber { key } => write!(f, "{key}: not a decimal number"),
            ConnectError::OutOfRange { key, value } => {
                write!(f, "{key}: {value} is out of range")
            }
            ConnectError::BadValue { key } => write!(f, "{key}: value not accepted"),
            ConnectError::UnknownProtocol => f.write_str("protocol: unknown ABI"),
            ConnectError::BadState { value } => {
                write!(f, "state: {value} is not a XenbusState")
            }
            ConnectError::TooLong { key } => write!(f, "{key}: value too long"),
            ConnectError::Ring => f.write_str("ring: cannot set up the shared ring"),
            ConnectError::Grant(g) => write!(f, "ring-ref: grant mapping failed ({g:?})"),
            ConnectError::Evtchn(e) => write!(f, "event-channel: bind failed ({e:?})"),
            ConnectError::Open(o) => write!(f, "params: cannot open the backing store ({o:?})"),
            ConnectError::StoreGone => f.write_str("params: the backing store went away"),
            ConnectError::NoMemory => f.write_str("out of memory"),
        }
    }
}

// ---------------------------------------------------------------------------
// Fallible formatting and number printing
// ---------------------------------------------------------------------------

/// A `String` sink that reserves fallibly instead of aborting on OOM.
struct TryString(String);

impl fmt::Write for TryString {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        self.0.try_reserve(s.len()).map_err(|_| fmt::Error)?;
        self.0.push_str(s);
        Ok(())
    }
}

/// Formats `args` into a new `String`, or [`ConnectError::NoMemory`].
fn try_format(args: fmt::Arguments<'_>) -> Result<String, ConnectError> {
    let mut s = TryString(String::new());
    fmt::write(&mut s, args).map_err(|_| ConnectError::NoMemory)?;
    Ok(s.0)
}

/// `dir/key`.
fn join(dir: &str, key: &str) -> Result<String, ConnectError> {
    try_format(format_args!("{dir}/{key}"))
}

/// A `u64` in decimal, printed on the stack.
struct Decimal {
    buf: [u8; 20],
    start: usize,
}

impl Decimal {
    fn new(mut v: u64) -> Decimal {
        let mut buf = [b'0'; 20];
        let mut start = buf.len();
        loop {
            // `start` stays within 1..=20 here: u64::MAX has 20 digits.
            start -= 1;
            buf[start] = b'0' + (v % 10) as u8;
            v /= 10;
            if v == 0 {
                break;
            }
        }
        Decimal { buf, start }
    }

    fn as_str(&self) -> &str {
        // Only ASCII digits were written.
        core::str::from_utf8(&self.buf[self.start..]).unwrap_or("0")
    }
}

// ---------------------------------------------------------------------------
// Parsing
// ---------------------------------------------------------------------------

/// Parses a strict decimal `u64`: one or more ASCII digits and nothing else
/// (no sign, no spaces, no `0x`, no empty string, no overflow). Leading
/// zeros are decimal, not octal.
pub fn parse_u64(v: &[u8]) -> Option<u64> {
    if v.is_empty() {
        return None;
    }
    let mut n: u64 = 0;
    for &c in v {
        if !c.is_ascii_digit() {
            return None;
        }
        n = n.checked_mul(10)?.checked_add(u64::from(c - b'0'))?;
    }
    Some(n)
}

/// Parses a strict decimal `u32` (see [`parse_u64`]).
pub fn parse_u32(v: &[u8]) -> Option<u32> {
    u32::try_from(parse_u64(v)?).ok()
}

// ---------------------------------------------------------------------------
// Reading
// ---------------------------------------------------------------------------

/// Reads `dir/key` into `buf`: `Ok(None)` if the node is absent.
fn read_raw<'b, X: XenStore>(
    xs: &mut X,
    txn: XsTxn,
    dir: &str,
    key: &'static str,
    buf: &'b mut [u8],
) -> Result<Option<&'b [u8]>, ConnectError> {
    read_raw_as(xs, txn, dir, key, key, buf)
}

/// Reads `dir/node` into `buf`, naming the node `key` in errors:
/// `Ok(None)` if the node is absent.
fn read_raw_as<'b, X: XenStore>(
    xs: &mut X,
    txn: XsTxn,
    dir: &str,
    node: &str,
    key: &'static str,
    buf: &'b mut [u8],
) -> Result<Option<&'b [u8]>, ConnectError> {
    let path = join(dir, node)?;
    match xs.xs_read(txn, &path, buf) {
        // A store that claims more than it had room for is broken; refuse
        // rather than slice out of bounds.
        Ok(n) => buf.get(..n).map(Some).ok_or(ConnectError::TooLong { key }),
        Err(XsError::NotFound) => Ok(None),
        Err(XsError::TooLong) => Err(ConnectError::TooLong { key }),
        Err(err) => Err(ConnectError::Xs { key, err }),
    }
}

/// Reads `dir/key` as a strict decimal `u64`; `None` if absent.
fn read_u64<X: XenStore>(
    xs: &mut X,
    txn: XsTxn,
    dir: &str,
    key: &'static str,
) -> Result<Option<u64>, ConnectError> {
    read_u64_as(xs, txn, dir, key, key)
}

/// Reads `dir/node` as a strict decimal `u64`, naming it `key` in errors;
/// `None` if absent.
fn read_u64_as<X: XenStore>(
    xs: &mut X,
    txn: XsTxn,
    dir: &str,
    node: &str,
    key: &'static str,
) -> Result<Option<u64>, ConnectError> {
    let mut buf = [0u8; VALUE_BUF];
    match read_raw_as(xs, txn, dir, node, key, &mut buf)? {
        None => Ok(None),
        Some(v) => parse_u64(v)
            .map(Some)
            .ok_or(ConnectError::NotANumber { key }),
    }
}

/// Reads `dir/key` as a strict decimal `u32`; `None` if absent.
/// A number above `u32::MAX` is [`ConnectError::NotANumber`] (it does not
/// fit the node's type).
pub fn read_u32<X: XenStore>(
    xs: &mut X,
    txn: XsTxn,
    dir: &str,
    key: &'static str,
) -> Result<Option<u32>, ConnectError> {
    read_u32_as(xs, txn, dir, key, key)
}

/// Reads `dir/node` as a strict decimal `u32`, naming it `key` in errors;
/// `None` if absent.
fn read_u32_as<X: XenStore>(
    xs: &mut X,
    txn: XsTxn,
    dir: &str,
    node: &str,
    key: &'static str,
) -> Result<Option<u32>, ConnectError> {
    match read_u64_as(xs, txn, dir, node, key)? {
        None => Ok(None),
        Some(v) => u32::try_from(v)
            .map(Some)
            .map_err(|_| ConnectError::NotANumber { key }),
    }
}

/// Reads a boolean node: `"0"` or `"1"` only; `None` if absent. Another
/// number is [`ConnectError::OutOfRange`], anything else
/// [`ConnectError::NotANumber`].
pub fn read_bool<X: XenStore>(
    xs: &mut X,
    txn: XsTxn,
    dir: &str,
    key: &'static str,
) -> Result<Option<bool>, ConnectError> {
    let mut buf = [0u8; VALUE_BUF];
    let v = match read_raw(xs, txn, dir, key, &mut buf)? {
        None => return Ok(None),
        Some(v) => v,
    };
    match v {
        b"0" => Ok(Some(false)),
        b"1" => Ok(Some(true)),
        _ => match parse_u64(v) {
            Some(value) => Err(ConnectError::OutOfRange { key, value }),
            None => Err(ConnectError::NotANumber { key }),
        },
    }
}

/// Reads a string node of at most `max_len` bytes; `None` if absent. A
/// longer value is [`ConnectError::TooLong`]; one that is not UTF-8 or holds
/// a NUL byte is [`ConnectError::BadValue`].
pub fn read_string<X: XenStore>(
    xs: &mut X,
    txn: XsTxn,
    dir: &str,
    key: &'static str,
    max_len: usize,
) -> Result<Option<String>, ConnectError> {
    let mut buf: Vec<u8> = Vec::new();
    buf.try_reserve_exact(max_len)
        .map_err(|_| ConnectError::NoMemory)?;
    buf.resize(max_len, 0);
    let n = match read_raw(xs, txn, dir, key, &mut buf)? {
        None => return Ok(None),
        Some(v) => v.len(),
    };
    buf.truncate(n);
    if buf.contains(&0) {
        return Err(ConnectError::BadValue { key });
    }
    String::from_utf8(buf)
        .map(Some)
        .map_err(|_| ConnectError::BadValue { key })
}

/// Runs `f` inside one XenStore transaction and commits it; on a conflict
/// ([`XsError::Again`], from the commit or from an operation inside) starts
/// over, at most [`XS_TXN_RETRIES`] times. Any other error aborts the
/// transaction and is returned.
fn with_txn<X: XenStore, T>(
    xs: &mut X,
    mut f: impl FnMut(&mut X, XsTxn) -> Result<T, ConnectError>,
) -> Result<T, ConnectError> {
    let mut attempt = 0;
    loop {
        let txn = xs
            .xs_transaction_start()
            .map_err(|err| ConnectError::Xs { key: TXN_KEY, err })?;
        let conflict = match f(xs, txn) {
            Ok(v) => match xs.xs_transaction_end(txn, true) {
                Ok(()) => return Ok(v),
                Err(XsError::Again) => ConnectError::Xs {
                    key: TXN_KEY,
                    err: XsError::Again,
                },
                Err(err) => return Err(ConnectError::Xs { key: TXN_KEY, err }),
            },
            Err(e) => {
                // Best effort: the transaction is abandoned either way.
                let _ = xs.xs_transaction_end(txn, false);
                match e {
                    ConnectError::Xs {
                        err: XsError::Again,
                        ..
                    } => e,
                    _ => return Err(e),
                }
            }
        };
        if attempt >= XS_TXN_RETRIES {
            return Err(conflict);
        }
        attempt += 1;
    }
}

/// What the toolstack wrote in the back-end's directory (`io/blkif.h`,
/// "Backend Device Identification"), plus the nodes that steer the
/// back-end.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BackendNodes {
    /// The front-end's XenStore directory (`frontend`).
    pub frontend: String,
    /// The front-end's domain (`frontend-id`).
    pub frontend_id: DomId,
    /// What to open: `params`, or `physical-device-path` when `params` is absent.
    pub params: String,
    /// `type` ("file", "phy", ...), empty when absent.
    pub kind: String,
    /// `mode` is `"w"` (or `"w!"`, writable without sharing checks).
    pub writable: bool,
    /// `online`: keep the store open across front-end reconnections.
    pub online: bool,
    /// `discard-enable` (default true): offer discard if the store can.
    pub discard_enable: bool,
    /// The toolstack runs a hotplug `script` for this vbd.
    pub hotplug_script: bool,
}

/// Reads and vets the back-end's own nodes, in one transaction.
///
/// `frontend` and `frontend-id` are required, `frontend-id` at most
/// [`MAX_FRONTEND_ID`]; `params` is required, with `physical-device-path` as
/// its fallback; `type` is optional; `mode` is `"r"` (the default), `"w"`
/// or `"w!"`, anything else [`ConnectError::BadValue`]; `online` defaults to
/// false, `discard-enable` to true.
pub fn read_backend_nodes<X: XenStore>(
    xs: &mut X,
    be_dir: &str,
) -> Result<BackendNodes, ConnectError> {
    with_txn(xs, |xs, txn| read_backend_nodes_in(xs, txn, be_dir))
}

fn read_backend_nodes_in<X: XenStore>(
    xs: &mut X,
    txn: XsTxn,
    be_dir: &str,
) -> Result<BackendNodes, ConnectError> {
    let frontend = read_string(xs, txn, be_dir, "frontend", MAX_PATH_LEN)?
        .ok_or(ConnectError::Missing { key: "frontend" })?;

    const FRONTEND_ID: &str = "frontend-id";
    let id = read_u64(xs, txn, be_dir, FRONTEND_ID)?
        .ok_or(ConnectError::Missing { key: FRONTEND_ID })?;
    let frontend_id = match DomId::try_from(id) {
        Ok(d) if d <= MAX_FRONTEND_ID => d,
        _ => {
            return Err(ConnectError::OutOfRange {
                key: FRONTEND_ID,
                value: id,
            })
        }
    };

    let params = match read_string(xs, txn, be_dir, "params", MAX_PATH_LEN)? {
        Some(p) => p,
        None => read_string(xs, txn, be_dir, "physical-device-path", MAX_PATH_LEN)?
            .ok_or(ConnectError::Missing { key: "params" })?,
    };

    let kind = read_string(xs, txn, be_dir, "type", MAX_TYPE_LEN)?.unwrap_or_default();

    let mut buf = [0u8; VALUE_BUF];
    let writable = match read_raw(xs, txn, be_dir, "mode", &mut buf)? {
        None | Some(b"r") => false,
        Some(b"w") | Some(b"w!") => true,
        Some(_) => return Err(ConnectError::BadValue { key: "mode" }),
    };

    let online = read_bool(xs, txn, be_dir, "online")?.unwrap_or(false);
    let discard_enable = read_bool(xs, txn, be_dir, "discard-enable")?.unwrap_or(true);
    let hotplug_script = read_string(xs, txn, be_dir, "script", MAX_PATH_LEN)?.is_some();

    Ok(BackendNodes {
        frontend,
        frontend_id,
        params,
        kind,
        writable,
        online,
        discard_enable,
        hotplug_script,
    })
}

/// Whether the hotplug script finished: `hotplug-status` is `connected`.
pub fn hotplug_connected<X: XenStore>(xs: &mut X, be_dir: &str) -> bool {
    let mut buf = [0u8; VALUE_BUF];
    matches!(
        read_raw(xs, XsTxn::NONE, be_dir, "hotplug-status", &mut buf),
        Ok(Some(b"connected"))
    )
}

// ---------------------------------------------------------------------------
// Publishing before the front-end connects
// ---------------------------------------------------------------------------

/// The most queues (rings) a back-end ever offers in
/// `multi-queue-max-queues`, whatever it is configured with.
pub const MAX_QUEUES: u32 = 16;

/// The back-end's node offering multi-queue.
const MAX_QUEUES_KEY: &str = "multi-queue-max-queues";

/// What the back-end offers before the front-end connects ("Request
/// Transport Parameters" and "Features" of the back-end, and the
/// "Multiple hardware queues/rings" section).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Offer {
    /// Largest ring the back-end maps, as `log2(pages)`; at most
    /// [`abi::MAX_RING_PAGE_ORDER`].
    pub max_ring_page_order: u32,
    /// Most queues (rings) the back-end serves, `1..=`[`MAX_QUEUES`]
    /// (`multi-queue-max-queues`).
    pub max_queues: u32,
    /// The back-end can keep the front-end's grants mapped across requests
    /// (`feature-persistent`).
    pub persistent: bool,
}

/// A boolean node's value.
fn flag(b: bool) -> &'static str {
    if b {
        "1"
    } else {
        "0"
    }
}

fn write_node<X: XenStore>(
    xs: &mut X,
    txn: XsTxn,
    dir: &str,
    key: &'static str,
    value: &str,
) -> Result<(), ConnectError> {
    let path = join(dir, key)?;
    xs.xs_write(txn, &path, value)
        .map_err(|err| ConnectError::Xs { key, err })
}

fn write_u64<X: XenStore>(
    xs: &mut X,
    txn: XsTxn,
    dir: &str,
    key: &'static str,
    value: u64,
) -> Result<(), ConnectError> {
    write_node(xs, txn, dir, key, Decimal::new(value).as_str())
}

/// Removes `dir/key`; a node that is already absent is not an error.
fn remove_node<X: XenStore>(
    xs: &mut X,
    txn: XsTxn,
    dir: &str,
    key: &'static str,
) -> Result<(), ConnectError> {
    let path = join(dir, key)?;
    match xs.xs_remove(txn, &path) {
        Ok(()) | Err(XsError::NotFound) => Ok(()),
        Err(err) => Err(ConnectError::Xs { key, err }),
    }
}

/// Publishes `offer` in one transaction: `max-ring-page-order` and, for
/// front-ends of the older multi-page scheme, the deprecated
/// `max-ring-pages` (`1 << order`), as `io/blkif.h` note 3 asks;
/// `multi-queue-max-queues`; `feature-persistent`. The state is left
/// alone.
///
/// `offer` is checked first: an order above [`abi::MAX_RING_PAGE_ORDER`]
/// or a queue count outside `1..=`[`MAX_QUEUES`] is
/// [`ConnectError::OutOfRange`], and nothing is written.
pub fn publish_offer<X: XenStore>(
    xs: &mut X,
    be_dir: &str,
    offer: &Offer,
) -> Result<(), ConnectError> {
    let order = offer.max_ring_page_order;
    if order > abi::MAX_RING_PAGE_ORDER {
        return Err(ConnectError::OutOfRange {
            key: "max-ring-page-order",
            value: u64::from(order),
        });
    }
    let queues = offer.max_queues;
    if queues == 0 || queues > MAX_QUEUES {
        return Err(ConnectError::OutOfRange {
            key: MAX_QUEUES_KEY,
            value: u64::from(queues),
        });
    }
    // `order` <= MAX_RING_PAGE_ORDER (5): the shift cannot overflow.
    let pages = 1u64 << order;
    with_txn(xs, |xs, txn| {
        write_u64(xs, txn, be_dir, "max-ring-page-order", u64::from(order))?;
        write_u64(xs, txn, be_dir, "max-ring-pages", pages)?;
        write_u64(xs, txn, be_dir, MAX_QUEUES_KEY, u64::from(queues))?;
        write_node(
            xs,
            txn,
            be_dir,
            "feature-persistent",
            flag(offer.persistent),
        )
    })
}

// ---------------------------------------------------------------------------
// Reading the front-end's transport parameters
// ---------------------------------------------------------------------------

/// One queue's (ring's) transport parameters, vetted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct QueueParams {
    /// The ring's grant references; the first
    /// [`ring_pages`](FrontendParams::ring_pages) are meaningful, the rest
    /// zero.
    pub ring_refs: [GrantRef; 32],
    /// The front-end's event-channel port for this ring.
    pub event_channel: EvtchnPort,
}

/// The front-end's transport parameters, vetted.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FrontendParams {
    /// Pages in each queue's shared ring: a power of two, `1..=32`.
    pub ring_pages: u32,
    /// The request/response layout (`protocol`), the same for every queue.
    pub abi: Abi,
    /// One entry per negotiated queue, in queue order: at least one, at
    /// most the `max_queues` given to [`read_frontend`].
    pub queues: Vec<QueueParams>,
    /// The front-end reuses its grants (its `feature-persistent`).
    pub persistent: bool,
}

impl FrontendParams {
    /// The grant references of queue `queue`'s ring, in page order; empty
    /// for a queue that does not exist.
    pub fn refs(&self, queue: usize) -> &[GrantRef] {
        let n = usize::try_from(self.ring_pages).unwrap_or(usize::MAX);
        match self.queues.get(queue) {
            Some(q) => &q.ring_refs[..n.min(q.ring_refs.len())],
            None => &[],
        }
    }

    /// How many queues were negotiated.
    pub fn num_queues(&self) -> u32 {
        u32::try_from(self.queues.len()).unwrap_or(u32::MAX)
    }
}

/// The names errors give one queue's nodes.
struct QueueKeys {
    /// For `ring-ref`.
    ring_ref: &'static str,
    /// For `ring-ref%u`.
    ring_refs: &'static [&'static str; 32],
    /// For `event-channel`.
    event_channel: &'static str,
}

/// The single queue of the legacy layout, in the front-end's directory.
const LEGACY_KEYS: QueueKeys = QueueKeys {
    ring_ref: "ring-ref",
    ring_refs: &RING_REF_KEYS,
    event_channel: "event-channel",
};

/// A queue of the multi-queue layout, in `queue-%u`.
const QUEUE_KEYS: QueueKeys = QueueKeys {
    ring_ref: "queue/ring-ref",
    ring_refs: &QUEUE_RING_REF_KEYS,
    event_channel: "queue/event-channel",
};

/// Reads and vets the front-end's transport parameters from `fe_dir`, in
/// one transaction.
///
/// The ring size comes from `ring-page-order` or the deprecated
/// `num-ring-pages` (a power of two); when both are present they must
/// agree; absent, the ring has one page. It must not exceed
/// `max_ring_page_order` (itself capped at [`abi::MAX_RING_PAGE_ORDER`]).
///
/// `multi-queue-num-queues` absent means one queue; present, it must be in
/// `1..=max_queues` (`max_queues` itself taken within `1..=`[`MAX_QUEUES`]:
/// one queue is always served), else [`ConnectError::OutOfRange`]. One
/// queue uses the legacy layout, in `fe_dir` itself; two or more each
/// have a `queue-<N>` directory, N from 0. In either, a one-page ring's
/// reference is `ring-ref` (or `ring-ref0`, which some front-ends write),
/// an N-page ring's are `ring-ref0` .. `ring-ref<N-1>`, and
/// `event-channel` is required. Errors about a node in a `queue-<N>`
/// directory name it `queue/<node>`.
///
/// The ring size, `protocol` (default: the native ABI) and
/// `feature-persistent` (default: false) are read from `fe_dir` and apply
/// to every queue.
pub fn read_frontend<X: XenStore>(
    xs: &mut X,
    fe_dir: &str,
    max_ring_page_order: u32,
    max_queues: u32,
) -> Result<FrontendParams, ConnectError> {
    let max_order = max_ring_page_order.min(abi::MAX_RING_PAGE_ORDER);
    let max_queues = max_queues.clamp(1, MAX_QUEUES);
    with_txn(xs, |xs, txn| {
        read_frontend_in(xs, txn, fe_dir, max_order, max_queues)
    })
}

fn read_frontend_in<X: XenStore>(
    xs: &mut X,
    txn: XsTxn,
    fe_dir: &str,
    max_order: u32,
    max_queues: u32,
) -> Result<FrontendParams, ConnectError> {
    const ORDER: &str = "ring-page-order";
    const NUM_PAGES: &str = "num-ring-pages";
    const NUM_QUEUES: &str = "multi-queue-num-queues";

    // Range checks come before any shift by a front-end value.
    let new_order = read_u32(xs, txn, fe_dir, ORDER)?;
    if let Some(o) = new_order {
        if o > max_order {
            return Err(ConnectError::OutOfRange {
                key: ORDER,
                value: u64::from(o),
            });
        }
    }
    let old_order = match read_u32(xs, txn, fe_dir, NUM_PAGES)? {
        None => None,
        Some(n) => {
            let o = n.trailing_zeros();
            if !n.is_power_of_two() || o > max_order {
                return Err(ConnectError::OutOfRange {
                    key: NUM_PAGES,
                    value: u64::from(n),
                });
            }
            Some((n, o))
        }
    };
    let order = match (new_order, old_order) {
        (Some(o), Some((n, old))) if o != old => {
            return Err(ConnectError::OutOfRange {
                key: NUM_PAGES,
                value: u64::from(n),
            })
        }
        (Some(o), _) => o,
        (None, Some((_, old))) => old,
        (None, None) => 0,
    };
    // order <= max_order <= MAX_RING_PAGE_ORDER: pages <= RING_REF_KEYS.len().
    let pages = 1u32 << order;

    // Range-checked before it sizes anything.
    let num_queues = match read_u64(xs, txn, fe_dir, NUM_QUEUES)? {
        None => 1,
        Some(n) => match u32::try_from(n) {
            Ok(q) if (1..=max_queues).contains(&q) => q,
            _ => {
                return Err(ConnectError::OutOfRange {
                    key: NUM_QUEUES,
                    value: n,
                })
            }
        },
    };
    let mut queues: Vec<QueueParams> = Vec::new();
    queues
        .try_reserve_exact(usize::try_from(num_queues).map_err(|_| ConnectError::NoMemory)?)
        .map_err(|_| ConnectError::NoMemory)?;
    // <= 32, always fits.
    let npages = usize::try_from(pages).unwrap_or(0);
    if num_queues == 1 {
        queues.push(read_queue(xs, txn, fe_dir, npages, &LEGACY_KEYS)?);
    } else {
        for n in 0..num_queues {
            let dir = try_format(format_args!("{fe_dir}/queue-{n}"))?;
            // Within the capacity reserved above: no allocation.
            queues.push(read_queue(xs, txn, &dir, npages, &QUEUE_KEYS)?);
        }
    }

    let mut buf = [0u8; VALUE_BUF];
    let abi = match read_raw(xs, txn, fe_dir, "protocol", &mut buf)? {
        None => Abi::native(),
        Some(p) => Abi::from_protocol(p).ok_or(ConnectError::UnknownProtocol)?,
    };
    let persistent = read_bool(xs, txn, fe_dir, "feature-persistent")?.unwrap_or(false);

    Ok(FrontendParams {
        ring_pages: pages,
        abi,
        queues,
        persistent,
    })
}

/// Reads one queue's ring references (`pages` of them, `1..=32`) and
/// event channel from `dir`, naming the nodes in errors after `keys`.
fn read_queue<X: XenStore>(
    xs: &mut X,
    txn: XsTxn,
    dir: &str,
    pages: usize,
    keys: &QueueKeys,
) -> Result<QueueParams, ConnectError> {
    let mut ring_refs = [0 as GrantRef; 32];
    if pages == 1 {
        ring_refs[0] = match read_u32_as(xs, txn, dir, "ring-ref", keys.ring_ref)? {
            Some(r) => r,
            None => read_u32_as(xs, txn, dir, RING_REF_KEYS[0], keys.ring_refs[0])?
                .ok_or(ConnectError::Missing { key: keys.ring_ref })?,
        };
    } else {
        for ((slot, &node), &key) in ring_refs
            .iter_mut()
            .zip(RING_REF_KEYS.iter())
            .zip(keys.ring_refs.iter())
            .take(pages)
        {
            *slot = read_u32_as(xs, txn, dir, node, key)?.ok_or(ConnectError::Missing { key })?;
        }
    }
    let key = keys.event_channel;
    let event_channel =
        read_u32_as(xs, txn, dir, "event-channel", key)?.ok_or(ConnectError::Missing { key })?;
    Ok(QueueParams {
        ring_refs,
        event_channel,
    })
}

// ---------------------------------------------------------------------------
// Publishing the connection, states, errors
// ---------------------------------------------------------------------------

/// The optional features published with the connection (the back-end's
/// "Features" in `io/blkif.h`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Features {
    /// `feature-flush-cache`: `BLKIF_OP_FLUSH_DISKCACHE` is served.
    pub flush: bool,
    /// `feature-barrier`: `BLKIF_OP_WRITE_BARRIER` is served.
    pub barrier: bool,
    /// `feature-persistent`: grants stay mapped across requests.
    pub persistent: bool,
    /// `feature-max-indirect-segments`: the most segments a
    /// `BLKIF_OP_INDIRECT` request may carry; 0 means no indirect requests,
    /// and the node is removed.
    pub max_indirect_segments: u32,
    /// `feature-discard` and its parameters; `None`: no discard, and the
    /// parameter nodes are removed.
    pub discard: Option<Discard>,
}

/// The discard parameters ("Backend Device Properties" of `io/blkif.h`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Discard {
    /// `discard-granularity`: the size in bytes of a discard extent; not 0.
    pub granularity: u32,
    /// `discard-alignment`: the offset in bytes of the first whole extent.
    pub alignment: u32,
    /// `discard-secure`: `BLKIF_DISCARD_SECURE` is honoured.
    pub secure: bool,
}

/// Publishes the back-end device properties and features and enters
/// Connected, all in one transaction: `sectors` (512-byte units, whatever
/// `sector-size` is, as the current `io/blkif.h` and every front-end in use
/// read it), `sector-size`, `physical-sector-size`, `info`
/// (`VDISK_READONLY` when the medium is read-only), `feature-flush-cache`,
/// `feature-barrier`, `feature-persistent`,
/// `feature-max-indirect-segments` (removed when 0), `discard-granularity`,
/// `discard-alignment`, `discard-secure` and `feature-discard` (the three
/// parameters removed and `feature-discard` "0" without discard), then
/// `state` = Connected. Removing nodes clears what an earlier connection
/// published.
///
/// `medium` is checked first: `sector-size` must be a power of two of at
/// least 512, `physical-sector-size` a non-zero multiple of it; so is the
/// discard granularity, which must not be 0.
pub fn publish_connected<X: XenStore>(
    xs: &mut X,
    be_dir: &str,
    medium: &MediumInfo,
    features: &Features,
) -> Result<(), ConnectError> {
    const MAX_INDIRECT: &str = "feature-max-indirect-segments";
    const GRANULARITY: &str = "discard-granularity";
    const ALIGNMENT: &str = "discard-alignment";
    const SECURE: &str = "discard-secure";

    let ss = medium.sector_size;
    if ss < 512 || !ss.is_power_of_two() {
        return Err(ConnectError::OutOfRange {
            key: "sector-size",
            value: u64::from(ss),
        });
    }
    let pss = medium.physical_sector_size;
    if pss == 0 || pss % ss != 0 {
        return Err(ConnectError::OutOfRange {
            key: "physical-sector-size",
            value: u64::from(pss),
        });
    }
    if let Some(d) = features.discard {
        if d.granularity == 0 {
            return Err(ConnectError::OutOfRange {
                key: GRANULARITY,
                value: 0,
            });
        }
    }
    let info: u32 = if medium.read_only {
        abi::VDISK_READONLY
    } else {
        0
    };
    with_txn(xs, |xs, txn| {
        write_u64(xs, txn, be_dir, "sectors", medium.sectors)?;
        write_u64(xs, txn, be_dir, "sector-size", u64::from(ss))?;
        write_u64(xs, txn, be_dir, "physical-sector-size", u64::from(pss))?;
        write_u64(xs, txn, be_dir, "info", u64::from(info))?;
        write_node(xs, txn, be_dir, "feature-flush-cache", flag(features.flush))?;
        write_node(xs, txn, be_dir, "feature-barrier", flag(features.barrier))?;
        write_node(
            xs,
            txn,
            be_dir,
            "feature-persistent",
            flag(features.persistent),
        )?;
        match features.max_indirect_segments {
            0 => remove_node(xs, txn, be_dir, MAX_INDIRECT)?,
            n => write_u64(xs, txn, be_dir, MAX_INDIRECT, u64::from(n))?,
        }
        match features.discard {
            Some(d) => {
                write_u64(xs, txn, be_dir, GRANULARITY, u64::from(d.granularity))?;
                write_u64(xs, txn, be_dir, ALIGNMENT, u64::from(d.alignment))?;
                write_node(xs, txn, be_dir, SECURE, flag(d.secure))?;
                write_node(xs, txn, be_dir, "feature-discard", "1")?;
            }
            None => {
                remove_node(xs, txn, be_dir, GRANULARITY)?;
                remove_node(xs, txn, be_dir, ALIGNMENT)?;
                remove_node(xs, txn, be_dir, SECURE)?;
                write_node(xs, txn, be_dir, "feature-discard", "0")?;
            }
        }
        write_node(xs, txn, be_dir, "state", XenbusState::Connected.as_str())
    })
}

/// Publishes a new medium size while connected, in one transaction:
/// `sectors` (512-byte units), then `state` re-written as Connected. The
/// rewrite fires the front-end's watch on the back-end's `state` even
/// though the state did not change, which is what makes a front-end
/// re-read `sectors`.
pub fn publish_resize<X: XenStore>(
    xs: &mut X,
    be_dir: &str,
    sectors: u64,
) -> Result<(), ConnectError> {
    with_txn(xs, |xs, txn| {
        write_u64(xs, txn, be_dir, "sectors", sectors)?;
        write_node(xs, txn, be_dir, "state", XenbusState::Connected.as_str())
    })
}

/// Reads the `state` node of `dir` (either end). Absent is
/// [`ConnectError::Missing`], a non-number [`ConnectError::NotANumber`], a
/// number outside `enum xenbus_state` [`ConnectError::BadState`].
pub fn read_state<X: XenStore>(xs: &mut X, dir: &str) -> Result<XenbusState, ConnectError> {
    const STATE: &str = "state";
    let v = read_u64(xs, XsTxn::NONE, dir, STATE)?.ok_or(ConnectError::Missing { key: STATE })?;
    u32::try_from(v)
        .ok()
        .and_then(XenbusState::from_u32)
        .ok_or(ConnectError::BadState { value: v })
}

/// Writes the back-end's `state` node.
pub fn write_state<X: XenStore>(
    xs: &mut X,
    be_dir: &str,
    state: XenbusState,
) -> Result<(), ConnectError> {
    write_node(xs, XsTxn::NONE, be_dir, "state", state.as_str())
}

/// Reports a fatal error the way XenBus drivers do: writes
/// `"<errno> <message>"` to `error/<be_dir>/error` (the per-device error
/// node the toolstack shows; `be_dir` without its leading `/`), then enters
/// Closing. Best effort: XenStore or allocation failures are ignored.
pub fn report_fatal<X: XenStore>(xs: &mut X, be_dir: &str, err: &ConnectError) {
    let node = be_dir.trim_start_matches('/');
    if let (Ok(path), Ok(msg)) = (
        try_format(format_args!("error/{node}/error")),
        try_format(format_args!("{} {}", err.errno(), err)),
    ) {
        let _ = xs.xs_write(XsTxn::NONE, &path, &msg);
    }
    let _ = write_state(xs, be_dir, XenbusState::Closing);
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::collections::BTreeMap;
    use alloc::string::ToString;

    /// An in-memory XenStore with one transaction at a time whose writes
    /// and removals are buffered until commit (a removal as `None`), a
    /// count of commits to refuse with `Again`, one path that fails with a
    /// chosen error, and optionally removals of absent nodes reported as
    /// `NotFound` (the trait allows silence; some stores complain).
    #[derive(Default)]
    struct TestStore {
        nodes: BTreeMap<String, Vec<u8>>,
        pending: Option<BTreeMap<String, Option<Vec<u8>>>>,
        next_txn: u32,
        again_commits: u32,
        commits: u32,
        aborts: u32,
        fail: Option<(String, XsError)>,
        remove_absent_not_found: bool,
    }

    impl TestStore {
        fn with(nodes: &[(&str, &str)]) -> TestStore {
            let mut s = TestStore::default();
            for (k, v) in nodes {
                s.nodes.insert(k.to_string(), v.as_bytes().to_vec());
            }
            s
        }
        fn set(&mut self, k: &str, v: &[u8]) {
            self.nodes.insert(k.to_string(), v.to_vec());
        }
        fn del(&mut self, k: &str) {
            self.nodes.remove(k);
        }
        fn get(&self, k: &str) -> Option<&str> {
            self.nodes.get(k).map(|v| core::str::from_utf8(v).unwrap())
        }
        fn check(&self, path: &str) -> Result<(), XsError> {
            match &self.fail {
                Some((p, e)) if p == path => Err(*e),
                _ => Ok(()),
            }
        }
    }

    impl XenStore for TestStore {
        fn xs_read(&mut self, txn: XsTxn, path: &str, buf: &mut [u8]) -> Result<usize, XsError> {
            self.check(path)?;
            let v = match (&self.pending, txn) {
                (Some(p), t) if t != XsTxn::NONE => match p.get(path) {
                    Some(v) => v.as_ref(),
                    None => self.nodes.get(path),
                },
                _ => self.nodes.get(path),
            };
            let v = v.ok_or(XsError::NotFound)?;
            if v.len() > buf.len() {
                return Err(XsError::TooLong);
            }
            buf[..v.len()].copy_from_slice(v);
            Ok(v.len())
        }
        fn xs_write(&mut self, txn: XsTxn, path: &str, value: &str) -> Result<(), XsError> {
            self.check(path)?;
            let v = value.as_bytes().to_vec();
            match (&mut self.pending, txn) {
                (Some(p), t) if t != XsTxn::NONE => {
                    p.insert(path.to_string(), Some(v));
                }
                _ => {
                    self.nodes.insert(path.to_string(), v);
                }
            }
            Ok(())
        }
        fn xs_remove(&mut self, txn: XsTxn, path: &str) -> Result<(), XsError> {
            self.check(path)?;
            let prefix = alloc::format!("{path}/");
            let hit = |k: &String| k == path || k.starts_with(&prefix);
            let mut found = false;
            match (&mut self.pending, txn) {
                (Some(p), t) if t != XsTxn::NONE => {
                    for v in p.iter_mut().filter(|(k, _)| hit(k)).map(|(_, v)| v) {
                        found |= v.is_some();
                        *v = None;
                    }
                    // Entries already in `p` were counted above.
                    for k in self.nodes.keys().filter(|k| hit(k)) {
                        found |= p.get(k).is_none();
                        p.insert(k.clone(), None);
                    }
                }
                _ => {
                    let before = self.nodes.len();
                    self.nodes.retain(|k, _| !hit(k));
                    found = self.nodes.len() != before;
                }
            }
            if !found && self.remove_absent_not_found {
                return Err(XsError::NotFound);
            }
            Ok(())
        }
        fn xs_transaction_start(&mut self) -> Result<XsTxn, XsError> {
            assert!(self.pending.is_none(), "nested transaction");
            self.next_txn += 1;
            self.pending = Some(BTreeMap::new());
            Ok(XsTxn(self.next_txn))
        }
        fn xs_transaction_end(&mut self, txn: XsTxn, commit: bool) -> Result<(), XsError> {
            assert_eq!(txn, XsTxn(self.next_txn));
            let p = self.pending.take().expect("no transaction");
            if !commit {
                self.aborts += 1;
                return Ok(());
            }
            if self.again_commits > 0 {
                self.again_commits -= 1;
                return Err(XsError::Again);
            }
            self.commits += 1;
            for (k, v) in p {
                match v {
                    Some(v) => self.nodes.insert(k, v),
                    None => self.nodes.remove(&k),
                };
            }
            Ok(())
        }
    }

    const FE: &str = "/local/domain/1/device/vbd/51712";
    const BE: &str = "/local/domain/0/backend/vbd/1/51712";

    fn fe(key: &str) -> String {
        alloc::format!("{FE}/{key}")
    }
    fn be(key: &str) -> String {
        alloc::format!("{BE}/{key}")
    }

    // ---- parsing -----------------------------------------------------------

    #[test]
    fn parse_strict_decimal() {
        assert_eq!(parse_u32(b"0"), Some(0));
        assert_eq!(parse_u32(b"4294967295"), Some(u32::MAX));
        assert_eq!(parse_u32(b"007"), Some(7));
        for bad in [
            &b""[..],
            b" 1",
            b"1 ",
            b"+1",
            b"-1",
            b"0x10",
            b"4294967296",
            b"1\n",
            b"1\0",
        ] {
            assert_eq!(parse_u32(bad), None, "{bad:?}");
        }
        assert_eq!(parse_u64(b"18446744073709551615"), Some(u64::MAX));
        assert_eq!(parse_u64(b"18446744073709551616"), None);
        assert_eq!(parse_u64(b"4294967296"), Some(1 << 32));
    }

    #[test]
    fn decimal_printing() {
        for v in [0, 1, 9, 10, 512, 4096, u64::from(u32::MAX), u64::MAX] {
            assert_eq!(Decimal::new(v).as_str(), v.to_string());
        }
    }

    #[test]
    fn read_u32_rules() {
        let mut xs = TestStore::default();
        let t = XsTxn::NONE;
        assert_eq!(read_u32(&mut xs, t, FE, "event-channel"), Ok(None));
        for bad in ["", " 1", "1 ", "+1", "-1", "0x10", "4294967296"] {
            xs.set(&fe("event-channel"), bad.as_bytes());
            assert_eq!(
                read_u32(&mut xs, t, FE, "event-channel"),
                Err(ConnectError::NotANumber {
                    key: "event-channel"
                }),
                "{bad:?}"
            );
        }
        xs.set(&fe("event-channel"), b"4294967295");
        assert_eq!(
            read_u32(&mut xs, t, FE, "event-channel"),
            Ok(Some(u32::MAX))
        );
        xs.set(&fe("event-channel"), &[b'1'; 300]);
        assert_eq!(
            read_u32(&mut xs, t, FE, "event-channel"),
            Err(ConnectError::TooLong {
                key: "event-channel"
            })
        );
        xs.fail = Some((fe("event-channel"), XsError::Denied));
        assert_eq!(
            read_u32(&mut xs, t, FE, "event-channel"),
            Err(ConnectError::Xs {
                key: "event-channel",
                err: XsError::Denied
            })
        );
    }

    #[test]
    fn read_bool_rules() {
        let mut xs = TestStore::default();
        let t = XsTxn::NONE;
        assert_eq!(read_bool(&mut xs, t, BE, "online"), Ok(None));
        xs.set(&be("online"), b"1");
        assert_eq!(read_bool(&mut xs, t, BE, "online"), Ok(Some(true)));
        xs.set(&be("online"), b"0");
        assert_eq!(read_bool(&mut xs, t, BE, "online"), Ok(Some(false)));
        xs.set(&be("online"), b"2");
        assert_eq!(
            read_bool(&mut xs, t, BE, "online"),
            Err(ConnectError::OutOfRange {
                key: "online",
                value: 2
            })
        );
        xs.set(&be("online"), b"yes");
        assert_eq!(
            read_bool(&mut xs, t, BE, "online"),
            Err(ConnectError::NotANumber { key: "online" })
        );
    }

    #[test]
    fn read_string_rules() {
        let mut xs = TestStore::default();
        let t = XsTxn::NONE;
        assert_eq!(read_string(&mut xs, t, BE, "type", 4), Ok(None));
        xs.set(&be("type"), b"phy");
        assert_eq!(
            read_string(&mut xs, t, BE, "type", 4),
            Ok(Some("phy".to_string()))
        );
        xs.set(&be("type"), b"file!");
        assert_eq!(
            read_string(&mut xs, t, BE, "type", 4),
            Err(ConnectError::TooLong { key: "type" })
        );
        xs.set(&be("type"), b"\xff");
        assert_eq!(
            read_string(&mut xs, t, BE, "type", 4),
            Err(ConnectError::BadValue { key: "type" })
        );
        xs.set(&be("type"), b"a\0b");
        assert_eq!(
            read_string(&mut xs, t, BE, "type", 4),
            Err(ConnectError::BadValue { key: "type" })
        );
    }

    // ---- back-end nodes -----------------------------------------------------

    fn backend_store() -> TestStore {
        TestStore::with(&[
            (&be("frontend"), FE),
            (&be("frontend-id"), "1"),
            (&be("params"), "/dev/zvol/tank/vm1"),
            (&be("type"), "phy"),
            (&be("mode"), "w"),
        ])
    }

    #[test]
    fn backend_nodes_defaults_and_values() {
        let mut xs = backend_store();
        let n = read_backend_nodes(&mut xs, BE).unwrap();
        assert_eq!(
            n,
            BackendNodes {
                frontend: FE.to_string(),
                frontend_id: 1,
                params: "/dev/zvol/tank/vm1".to_string(),
                kind: "phy".to_string(),
                writable: true,
                online: false,
                discard_enable: true,
                hotplug_script: false,
            }
        );
        xs.del(&be("type"));
        xs.del(&be("mode"));
        xs.set(&be("online"), b"1");
        xs.set(&be("discard-enable"), b"0");
        let n = read_backend_nodes(&mut xs, BE).unwrap();
        assert_eq!(n.kind, "");
        assert!(!n.writable);
        assert!(n.online);
        assert!(!n.discard_enable);
        xs.set(&be("mode"), b"w!");
        assert!(read_backend_nodes(&mut xs, BE).unwrap().writable);
        xs.set(&be("mode"), b"r");
        assert!(!read_backend_nodes(&mut xs, BE).unwrap().writable);
    }

    #[test]
    fn backend_params_fallback_and_missing() {
        let mut xs = backend_store();
        xs.del(&be("params"));
        xs.set(&be("physical-device-path"), b"/var/vm1.img");
        assert_eq!(
            read_backend_nodes(&mut xs, BE).unwrap().params,
            "/var/vm1.img"
        );
        xs.del(&be("physical-device-path"));
        assert_eq!(
            read_backend_nodes(&mut xs, BE),
            Err(ConnectError::Missing { key: "params" })
        );
    }

    #[test]
    fn backend_required_nodes() {
        let mut xs = backend_store();
        xs.del(&be("frontend"));
        assert_eq!(
            read_backend_nodes(&mut xs, BE),
            Err(ConnectError::Missing { key: "frontend" })
        );
        let mut xs = backend_store();
        xs.del(&be("frontend-id"));
        assert_eq!(
            read_backend_nodes(&mut xs, BE),
            Err(ConnectError::Missing { key: "frontend-id" })
        );
        assert_eq!(xs.aborts, 1, "a failed read aborts its transaction");
    }

    #[test]
    fn backend_frontend_id_range() {
        let mut xs = backend_store();
        xs.set(&be("frontend-id"), b"32751"); // 0x7FEF
        assert_eq!(read_backend_nodes(&mut xs, BE).unwrap().frontend_id, 0x7FEF);
        for (v, n) in [("32752", 0x7FF0u64), ("65535", 0xFFFF), ("65536", 0x10000)] {
            xs.set(&be("frontend-id"), v.as_bytes());
            assert_eq!(
                read_backend_nodes(&mut xs, BE),
                Err(ConnectError::OutOfRange {
                    key: "frontend-id",
                    value: n
                })
            );
        }
        xs.set(&be("frontend-id"), b"-1");
        assert_eq!(
            read_backend_nodes(&mut xs, BE),
            Err(ConnectError::NotANumber { key: "frontend-id" })
        );
    }

    #[test]
    fn backend_bad_mode() {
        let mut xs = backend_store();
        for bad in ["", "rw", "W", "w ", "x"] {
            xs.set(&be("mode"), bad.as_bytes());
            assert_eq!(
                read_backend_nodes(&mut xs, BE),
                Err(ConnectError::BadValue { key: "mode" }),
                "{bad:?}"
            );
        }
    }

    // ---- offer --------------------------------------------------------------

    #[test]
    fn offer_contents_and_state_untouched() {
        let mut xs = TestStore::with(&[(&be("state"), "1")]);
        publish_offer(
            &mut xs,
            BE,
            &Offer {
                max_ring_page_order: 3,
                max_queues: 4,
                persistent: true,
            },
        )
        .unwrap();
        assert_eq!(xs.get(&be("max-ring-page-order")), Some("3"));
        assert_eq!(xs.get(&be("max-ring-pages")), Some("8"));
        assert_eq!(xs.get(&be("multi-queue-max-queues")), Some("4"));
        assert_eq!(xs.get(&be("feature-persistent")), Some("1"));
        assert_eq!(xs.get(&be("state")), Some("1"));
        assert_eq!(xs.commits, 1);

        publish_offer(
            &mut xs,
            BE,
            &Offer {
                max_ring_page_order: 0,
                max_queues: MAX_QUEUES,
                persistent: false,
            },
        )
        .unwrap();
        assert_eq!(xs.get(&be("max-ring-page-order")), Some("0"));
        assert_eq!(xs.get(&be("max-ring-pages")), Some("1"));
        assert_eq!(xs.get(&be("multi-queue-max-queues")), Some("16"));
        assert_eq!(xs.get(&be("feature-persistent")), Some("0"));
        assert_eq!(xs.commits, 2);
    }

    #[test]
    fn offer_queue_count_range() {
        for q in [0, MAX_QUEUES + 1, u32::MAX] {
            let mut xs = TestStore::default();
            assert_eq!(
                publish_offer(
                    &mut xs,
                    BE,
                    &Offer {
                        max_ring_page_order: 1,
                        max_queues: q,
                        persistent: true,
                    }
                ),
                Err(ConnectError::OutOfRange {
                    key: "multi-queue-max-queues",
                    value: u64::from(q)
                })
            );
            assert!(xs.nodes.is_empty(), "{q}: nothing written");
            assert_eq!(xs.next_txn, 0, "{q}: checked before the transaction");
        }
        for q in [1, MAX_QUEUES] {
            let mut xs = TestStore::default();
            let offer = Offer {
                max_ring_page_order: 1,
                max_queues: q,
                persistent: false,
            };
            publish_offer(&mut xs, BE, &offer).unwrap();
            let want = q.to_string();
            assert_eq!(xs.get(&be("multi-queue-max-queues")), Some(want.as_str()));
        }
    }

    #[test]
    fn offer_new_nodes_in_the_same_transaction() {
        let mut xs = TestStore {
            fail: Some((be("feature-persistent"), XsError::Denied)),
            ..TestStore::default()
        };
        let offer = Offer {
            max_ring_page_order: 2,
            max_queues: 2,
            persistent: true,
        };
        assert_eq!(
            publish_offer(&mut xs, BE, &offer),
            Err(ConnectError::Xs {
                key: "feature-persistent",
                err: XsError::Denied
            })
        );
        assert!(xs.nodes.is_empty(), "aborted transaction left nothing");
        assert_eq!((xs.commits, xs.aborts), (0, 1));
    }

    #[test]
    fn offer_order_above_maximum() {
        let mut xs = TestStore::default();
        let order = abi::MAX_RING_PAGE_ORDER + 1;
        assert_eq!(
            publish_offer(
                &mut xs,
                BE,
                &Offer {
                    max_ring_page_order: order,
                    max_queues: 4,
                    persistent: true,
                }
            ),
            Err(ConnectError::OutOfRange {
                key: "max-ring-page-order",
                value: u64::from(order)
            })
        );
        assert!(xs.nodes.is_empty());
    }

    #[test]
    fn offer_retried_on_again() {
        let mut xs = TestStore {
            again_commits: 1,
            ..TestStore::default()
        };
        publish_offer(
            &mut xs,
            BE,
            &Offer {
                max_ring_page_order: 0,
                max_queues: 4,
                persistent: true,
            },
        )
        .unwrap();
        assert_eq!(xs.get(&be("max-ring-page-order")), Some("0"));
        assert_eq!(xs.get(&be("max-ring-pages")), Some("1"));
        assert_eq!(xs.next_txn, 2, "one conflict, one retry");
    }

    #[test]
    fn retries_are_bounded() {
        let offer = Offer {
            max_ring_page_order: 1,
            max_queues: 4,
            persistent: true,
        };
        let mut xs = TestStore {
            again_commits: XS_TXN_RETRIES,
            ..TestStore::default()
        };
        publish_offer(&mut xs, BE, &offer).unwrap();
        assert_eq!(xs.next_txn, XS_TXN_RETRIES + 1);

        let mut xs = TestStore {
            again_commits: XS_TXN_RETRIES + 1,
            ..TestStore::default()
        };
        assert_eq!(
            publish_offer(&mut xs, BE, &offer),
            Err(ConnectError::Xs {
                key: "transaction",
                err: XsError::Again
            })
        );
        assert!(xs.nodes.is_empty(), "nothing committed");
        assert_eq!(xs.next_txn, XS_TXN_RETRIES + 1);
    }

    #[test]
    fn offer_write_failure() {
        let mut xs = TestStore {
            fail: Some((be("max-ring-pages"), XsError::Other(28))),
            ..TestStore::default()
        };
        let e = publish_offer(
            &mut xs,
            BE,
            &Offer {
                max_ring_page_order: 2,
                max_queues: 4,
                persistent: true,
            },
        )
        .unwrap_err();
        assert_eq!(
            e,
            ConnectError::Xs {
                key: "max-ring-pages",
                err: XsError::Other(28)
            }
        );
        assert_eq!(e.errno(), 28);
        assert!(xs.nodes.is_empty(), "aborted transaction left nothing");
    }

    // ---- front-end ----------------------------------------------------------

    fn one_page_frontend() -> TestStore {
        TestStore::with(&[(&fe("ring-ref"), "8"), (&fe("event-channel"), "17")])
    }

    fn multi_page_frontend(order: u32) -> TestStore {
        let mut xs = TestStore::with(&[(&fe("event-channel"), "17")]);
        xs.set(&fe("ring-page-order"), order.to_string().as_bytes());
        for i in 0..(1u32 << order) {
            xs.set(
                &fe(&alloc::format!("ring-ref{i}")),
                (100 + i).to_string().as_bytes(),
            );
        }
        xs
    }

    #[test]
    fn frontend_one_page_defaults() {
        let mut xs = one_page_frontend();
        let p = read_frontend(&mut xs, FE, 5, MAX_QUEUES).unwrap();
        assert_eq!(p.ring_pages, 1);
        assert_eq!(p.refs(0), &[8]);
        assert_eq!(p.queues[0].event_channel, 17);
        assert_eq!(p.abi, Abi::native());
        assert!(p.queues[0].ring_refs[1..].iter().all(|&r| r == 0));
    }

    #[test]
    fn frontend_ring_ref0_alone_for_one_page() {
        let mut xs = TestStore::with(&[
            (&fe("ring-ref0"), "4294967295"),
            (&fe("event-channel"), "0"),
        ]);
        let p = read_frontend(&mut xs, FE, 5, MAX_QUEUES).unwrap();
        assert_eq!(p.refs(0), &[u32::MAX]);
        assert_eq!(p.queues[0].event_channel, 0);
        // ring-ref wins when both exist.
        xs.set(&fe("ring-ref"), b"9");
        assert_eq!(
            read_frontend(&mut xs, FE, 5, MAX_QUEUES).unwrap().refs(0),
            &[9]
        );
    }

    #[test]
    fn frontend_ring_ref_missing() {
        let mut xs = one_page_frontend();
        xs.del(&fe("ring-ref"));
        assert_eq!(
            read_frontend(&mut xs, FE, 5, MAX_QUEUES),
            Err(ConnectError::Missing { key: "ring-ref" })
        );
    }

    #[test]
    fn frontend_ring_ref_not_a_number() {
        let mut xs = one_page_frontend();
        xs.set(&fe("ring-ref"), b"0x8");
        assert_eq!(
            read_frontend(&mut xs, FE, 5, MAX_QUEUES),
            Err(ConnectError::NotANumber { key: "ring-ref" })
        );
        let mut xs = multi_page_frontend(1);
        xs.set(&fe("ring-ref1"), b"4294967296");
        assert_eq!(
            read_frontend(&mut xs, FE, 5, MAX_QUEUES),
            Err(ConnectError::NotANumber { key: "ring-ref1" })
        );
    }

    #[test]
    fn frontend_multi_page() {
        for order in 1..=abi::MAX_RING_PAGE_ORDER {
            let mut xs = multi_page_frontend(order);
            let p = read_frontend(&mut xs, FE, abi::MAX_RING_PAGE_ORDER, MAX_QUEUES).unwrap();
            assert_eq!(p.ring_pages, 1 << order);
            let want: Vec<u32> = (0..(1u32 << order)).map(|i| 100 + i).collect();
            assert_eq!(p.refs(0), &want[..]);
        }
    }

    #[test]
    fn frontend_page_missing_of_four() {
        let mut xs = multi_page_frontend(2);
        xs.del(&fe("ring-ref2"));
        assert_eq!(
            read_frontend(&mut xs, FE, 5, MAX_QUEUES),
            Err(ConnectError::Missing { key: "ring-ref2" })
        );
    }

    #[test]
    fn frontend_order_above_maximum() {
        let mut xs = multi_page_frontend(1);
        xs.set(&fe("ring-page-order"), b"6");
        assert_eq!(
            read_frontend(&mut xs, FE, 5, MAX_QUEUES),
            Err(ConnectError::OutOfRange {
                key: "ring-page-order",
                value: 6
            })
        );
        xs.set(&fe("ring-page-order"), b"4294967295");
        assert_eq!(
            read_frontend(&mut xs, FE, 5, MAX_QUEUES),
            Err(ConnectError::OutOfRange {
                key: "ring-page-order",
                value: u64::from(u32::MAX)
            })
        );
        // The caller's own (smaller) limit applies.
        xs.set(&fe("ring-page-order"), b"1");
        assert_eq!(
            read_frontend(&mut xs, FE, 0, MAX_QUEUES),
            Err(ConnectError::OutOfRange {
                key: "ring-page-order",
                value: 1
            })
        );
        // A caller limit above the ABI's is capped to it.
        let mut xs = multi_page_frontend(5);
        xs.set(&fe("ring-page-order"), b"6");
        assert_eq!(
            read_frontend(&mut xs, FE, u32::MAX, MAX_QUEUES),
            Err(ConnectError::OutOfRange {
                key: "ring-page-order",
                value: 6
            })
        );
    }

    #[test]
    fn frontend_num_ring_pages() {
        // The old scheme alone.
        let mut xs = multi_page_frontend(2);
        xs.del(&fe("ring-page-order"));
        xs.set(&fe("num-ring-pages"), b"4");
        let p = read_frontend(&mut xs, FE, 5, MAX_QUEUES).unwrap();
        assert_eq!(p.ring_pages, 4);
        assert_eq!(p.refs(0), &[100, 101, 102, 103]);
        // num-ring-pages 1 uses ring-ref.
        let mut xs = one_page_frontend();
        xs.set(&fe("num-ring-pages"), b"1");
        assert_eq!(
            read_frontend(&mut xs, FE, 5, MAX_QUEUES).unwrap().refs(0),
            &[8]
        );

        for (v, n) in [
            ("3", 3u64),
            ("0", 0),
            ("64", 64),
            ("4294967295", 4294967295),
        ] {
            let mut xs = multi_page_frontend(2);
            xs.del(&fe("ring-page-order"));
            xs.set(&fe("num-ring-pages"), v.as_bytes());
            assert_eq!(
                read_frontend(&mut xs, FE, 5, MAX_QUEUES),
                Err(ConnectError::OutOfRange {
                    key: "num-ring-pages",
                    value: n
                }),
                "{v}"
            );
        }
        // Within 1..=32 but above the caller's limit.
        let mut xs = multi_page_frontend(2);
        xs.del(&fe("ring-page-order"));
        xs.set(&fe("num-ring-pages"), b"4");
        assert_eq!(
            read_frontend(&mut xs, FE, 1, MAX_QUEUES),
            Err(ConnectError::OutOfRange {
                key: "num-ring-pages",
                value: 4
            })
        );
    }

    #[test]
    fn frontend_both_size_keys() {
        let mut xs = multi_page_frontend(2);
        xs.set(&fe("num-ring-pages"), b"4");
        assert_eq!(
            read_frontend(&mut xs, FE, 5, MAX_QUEUES)
                .unwrap()
                .ring_pages,
            4
        );
        xs.set(&fe("num-ring-pages"), b"8");
        assert_eq!(
            read_frontend(&mut xs, FE, 5, MAX_QUEUES),
            Err(ConnectError::OutOfRange {
                key: "num-ring-pages",
                value: 8
            })
        );
    }

    #[test]
    fn frontend_event_channel() {
        let mut xs = one_page_frontend();
        xs.del(&fe("event-channel"));
        assert_eq!(
            read_frontend(&mut xs, FE, 5, MAX_QUEUES),
            Err(ConnectError::Missing {
                key: "event-channel"
            })
        );
        xs.set(&fe("event-channel"), b"-1");
        assert_eq!(
            read_frontend(&mut xs, FE, 5, MAX_QUEUES),
            Err(ConnectError::NotANumber {
                key: "event-channel"
            })
        );
    }

    #[test]
    fn frontend_protocol() {
        let mut xs = one_page_frontend();
        xs.set(&fe("protocol"), abi::XEN_IO_PROTO_ABI_X86_32.as_bytes());
        let p32 = read_frontend(&mut xs, FE, 5, MAX_QUEUES).unwrap().abi;
        assert_eq!(Some(p32), Abi::from_protocol(b"x86_32-abi"));
        xs.set(&fe("protocol"), b"x86_64-abi");
        let p64 = read_frontend(&mut xs, FE, 5, MAX_QUEUES).unwrap().abi;
        assert_eq!(Some(p64), Abi::from_protocol(b"x86_64-abi"));
        assert_ne!(p32, p64);
        for bad in [&b"x86_16-abi"[..], b"", b"x86_32-abi ", b"X86_32-ABI"] {
            xs.set(&fe("protocol"), bad);
            assert_eq!(
                read_frontend(&mut xs, FE, 5, MAX_QUEUES),
                Err(ConnectError::UnknownProtocol),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn frontend_read_retried_on_again() {
        let mut xs = multi_page_frontend(1);
        xs.again_commits = 1;
        let p = read_frontend(&mut xs, FE, 5, MAX_QUEUES).unwrap();
        assert_eq!(p.refs(0), &[100, 101]);
        assert_eq!(xs.next_txn, 2);
    }

    #[test]
    fn frontend_read_error_inside_transaction() {
        let mut xs = multi_page_frontend(1);
        xs.fail = Some((fe("ring-ref1"), XsError::Denied));
        assert_eq!(
            read_frontend(&mut xs, FE, 5, MAX_QUEUES),
            Err(ConnectError::Xs {
                key: "ring-ref1",
                err: XsError::Denied
            })
        );
        assert_eq!(xs.aborts, 1);
        assert_eq!(xs.commits, 0);
    }

    /// A front-end with `queues` queues of `1 << order` pages each in the
    /// multi-queue layout: queue N's page P has reference `1000 * N + P`,
    /// its event channel is `50 + N`. A one-page ring uses `ring-ref`.
    fn multi_queue_frontend(queues: u32, order: u32) -> TestStore {
        let mut xs = TestStore::default();
        xs.set(&fe("multi-queue-num-queues"), queues.to_string().as_bytes());
        if order > 0 {
            xs.set(&fe("ring-page-order"), order.to_string().as_bytes());
        }
        for n in 0..queues {
            let q = alloc::format!("queue-{n}");
            xs.set(&fe(&q), b"");
            if order == 0 {
                xs.set(
                    &fe(&alloc::format!("{q}/ring-ref")),
                    (1000 * n).to_string().as_bytes(),
                );
            } else {
                for i in 0..(1u32 << order) {
                    xs.set(
                        &fe(&alloc::format!("{q}/ring-ref{i}")),
                        (1000 * n + i).to_string().as_bytes(),
                    );
                }
            }
            xs.set(
                &fe(&alloc::format!("{q}/event-channel")),
                (50 + n).to_string().as_bytes(),
            );
        }
        xs
    }

    fn check_multi_queue(p: &FrontendParams, queues: u32, order: u32) {
        assert_eq!(p.num_queues(), queues);
        assert_eq!(p.queues.len(), queues as usize);
        assert_eq!(p.ring_pages, 1 << order);
        for n in 0..queues {
            let want: Vec<u32> = (0..(1u32 << order)).map(|i| 1000 * n + i).collect();
            assert_eq!(p.refs(n as usize), &want[..], "queue {n}");
            assert_eq!(p.queues[n as usize].event_channel, 50 + n, "queue {n}");
            let rest = &p.queues[n as usize].ring_refs[1usize << order..];
            assert!(rest.iter().all(|&r| r == 0), "queue {n}");
        }
        assert!(p.refs(queues as usize).is_empty());
    }

    #[test]
    fn frontend_num_queues_absent_is_one_legacy_queue() {
        let mut xs = one_page_frontend();
        let p = read_frontend(&mut xs, FE, 5, MAX_QUEUES).unwrap();
        assert_eq!(p.num_queues(), 1);
        assert_eq!(p.refs(0), &[8]);
        assert_eq!(p.queues[0].event_channel, 17);
        assert!(!p.persistent);
        // Even when the caller would allow none: one queue is always served.
        assert_eq!(read_frontend(&mut xs, FE, 5, 0).unwrap().num_queues(), 1);
    }

    #[test]
    fn frontend_num_queues_one_uses_the_legacy_layout() {
        let mut xs = multi_page_frontend(1);
        xs.set(&fe("multi-queue-num-queues"), b"1");
        // A queue-0 directory is not what one queue uses.
        xs.set(&fe("queue-0/ring-ref0"), b"555");
        xs.set(&fe("queue-0/ring-ref1"), b"556");
        xs.set(&fe("queue-0/event-channel"), b"99");
        let p = read_frontend(&mut xs, FE, 5, MAX_QUEUES).unwrap();
        assert_eq!(p.num_queues(), 1);
        assert_eq!(p.refs(0), &[100, 101]);
        assert_eq!(p.queues[0].event_channel, 17);
        // ... and errors keep the top-level names.
        xs.del(&fe("event-channel"));
        assert_eq!(
            read_frontend(&mut xs, FE, 5, 1),
            Err(ConnectError::Missing {
                key: "event-channel"
            })
        );
    }

    #[test]
    fn frontend_num_queues_two_and_max() {
        let mut xs = multi_queue_frontend(2, 0);
        // Top-level transport nodes are not used with several queues.
        xs.set(&fe("ring-ref"), b"7");
        xs.set(&fe("event-channel"), b"7");
        let p = read_frontend(&mut xs, FE, 5, 4).unwrap();
        check_multi_queue(&p, 2, 0);

        let mut xs = multi_queue_frontend(MAX_QUEUES, 0);
        let p = read_frontend(&mut xs, FE, 5, MAX_QUEUES).unwrap();
        check_multi_queue(&p, MAX_QUEUES, 0);
        assert_eq!(xs.commits, 1, "one transaction");

        // Exactly the caller's limit.
        let mut xs = multi_queue_frontend(3, 0);
        check_multi_queue(&read_frontend(&mut xs, FE, 5, 3).unwrap(), 3, 0);
    }

    #[test]
    fn frontend_num_queues_out_of_range() {
        let key = "multi-queue-num-queues";
        // (value, caller limit, reported value)
        for (v, max, n) in [
            ("0", MAX_QUEUES, 0u64),
            ("3", 2, 3),
            ("2", 1, 2),
            ("2", 0, 2),
            ("17", MAX_QUEUES, 17),
            ("17", u32::MAX, 17),
            ("4294967295", u32::MAX, u64::from(u32::MAX)),
            ("4294967296", u32::MAX, 1 << 32),
            ("18446744073709551615", MAX_QUEUES, u64::MAX),
        ] {
            let mut xs = multi_queue_frontend(2, 0);
            xs.set(&fe(key), v.as_bytes());
            assert_eq!(
                read_frontend(&mut xs, FE, 5, max),
                Err(ConnectError::OutOfRange { key, value: n }),
                "{v} with limit {max}"
            );
            assert_eq!(xs.aborts, 1);
        }
        for bad in ["", "abc", "-1", "+2", " 2", "0x2", "18446744073709551616"] {
            let mut xs = multi_queue_frontend(2, 0);
            xs.set(&fe(key), bad.as_bytes());
            assert_eq!(
                read_frontend(&mut xs, FE, 5, MAX_QUEUES),
                Err(ConnectError::NotANumber { key }),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn frontend_per_queue_keys_missing() {
        let mut xs = multi_queue_frontend(3, 0);
        xs.del(&fe("queue-1/ring-ref"));
        assert_eq!(
            read_frontend(&mut xs, FE, 5, 4),
            Err(ConnectError::Missing {
                key: "queue/ring-ref"
            })
        );
        let mut xs = multi_queue_frontend(3, 0);
        xs.del(&fe("queue-2/event-channel"));
        assert_eq!(
            read_frontend(&mut xs, FE, 5, 4),
            Err(ConnectError::Missing {
                key: "queue/event-channel"
            })
        );
        // A whole queue directory missing.
        let mut xs = multi_queue_frontend(2, 0);
        xs.set(&fe("multi-queue-num-queues"), b"3");
        assert_eq!(
            read_frontend(&mut xs, FE, 5, 4),
            Err(ConnectError::Missing {
                key: "queue/ring-ref"
            })
        );
        // One-page: ring-ref0 stands in for ring-ref, per queue too.
        let mut xs = multi_queue_frontend(2, 0);
        xs.del(&fe("queue-1/ring-ref"));
        xs.set(&fe("queue-1/ring-ref0"), b"1000");
        check_multi_queue(&read_frontend(&mut xs, FE, 5, 4).unwrap(), 2, 0);
        // Bad values are named after the queue node.
        xs.set(&fe("queue-1/event-channel"), b"x");
        assert_eq!(
            read_frontend(&mut xs, FE, 5, 4),
            Err(ConnectError::NotANumber {
                key: "queue/event-channel"
            })
        );
        xs.set(&fe("queue-1/event-channel"), b"51");
        xs.set(&fe("queue-1/ring-ref0"), b"4294967296");
        assert_eq!(
            read_frontend(&mut xs, FE, 5, 4),
            Err(ConnectError::NotANumber {
                key: "queue/ring-ref0"
            })
        );
    }

    #[test]
    fn frontend_multi_page_per_queue() {
        for order in 1..=abi::MAX_RING_PAGE_ORDER {
            let mut xs = multi_queue_frontend(4, order);
            let p = read_frontend(&mut xs, FE, abi::MAX_RING_PAGE_ORDER, 4).unwrap();
            check_multi_queue(&p, 4, order);
        }
        let mut xs = multi_queue_frontend(2, 2);
        xs.del(&fe("queue-1/ring-ref3"));
        assert_eq!(
            read_frontend(&mut xs, FE, 5, 4),
            Err(ConnectError::Missing {
                key: "queue/ring-ref3"
            })
        );
        let mut xs = multi_queue_frontend(2, 2);
        xs.set(&fe("queue-0/ring-ref1"), b"0x1");
        assert_eq!(
            read_frontend(&mut xs, FE, 5, 4),
            Err(ConnectError::NotANumber {
                key: "queue/ring-ref1"
            })
        );
        // The top-level order applies to every queue and is range-checked.
        let mut xs = multi_queue_frontend(2, 2);
        assert_eq!(
            read_frontend(&mut xs, FE, 1, 4),
            Err(ConnectError::OutOfRange {
                key: "ring-page-order",
                value: 2
            })
        );
        let mut xs = multi_queue_frontend(2, 2);
        xs.set(&fe("protocol"), b"x86_32-abi");
        let p = read_frontend(&mut xs, FE, 5, 4).unwrap();
        assert_eq!(Some(p.abi), Abi::from_protocol(b"x86_32-abi"));
    }

    #[test]
    fn frontend_read_failure_per_queue() {
        let mut xs = multi_queue_frontend(2, 1);
        xs.fail = Some((fe("queue-1/ring-ref1"), XsError::Denied));
        assert_eq!(
            read_frontend(&mut xs, FE, 5, 4),
            Err(ConnectError::Xs {
                key: "queue/ring-ref1",
                err: XsError::Denied
            })
        );
        assert_eq!((xs.commits, xs.aborts), (0, 1));
        let mut xs = multi_queue_frontend(2, 0);
        xs.fail = Some((fe("queue-0/ring-ref"), XsError::TooLong));
        assert_eq!(
            read_frontend(&mut xs, FE, 5, 4),
            Err(ConnectError::TooLong {
                key: "queue/ring-ref"
            })
        );
    }

    #[test]
    fn frontend_feature_persistent() {
        let key = "feature-persistent";
        for layout in [0, 2] {
            let store = || {
                if layout == 0 {
                    one_page_frontend()
                } else {
                    multi_queue_frontend(layout, 0)
                }
            };
            let mut xs = store();
            assert!(!read_frontend(&mut xs, FE, 5, 4).unwrap().persistent);
            xs.set(&fe(key), b"0");
            assert!(!read_frontend(&mut xs, FE, 5, 4).unwrap().persistent);
            xs.set(&fe(key), b"1");
            assert!(read_frontend(&mut xs, FE, 5, 4).unwrap().persistent);
            xs.set(&fe(key), b"2");
            assert_eq!(
                read_frontend(&mut xs, FE, 5, 4),
                Err(ConnectError::OutOfRange { key, value: 2 })
            );
            for bad in ["", "yes", "true", "1 ", "01x"] {
                xs.set(&fe(key), bad.as_bytes());
                assert_eq!(
                    read_frontend(&mut xs, FE, 5, 4),
                    Err(ConnectError::NotANumber { key }),
                    "{bad:?}"
                );
            }
        }
    }

    #[test]
    fn refs_never_panics_on_a_forged_count() {
        let q = QueueParams {
            ring_refs: [7; 32],
            event_channel: 0,
        };
        let p = FrontendParams {
            ring_pages: 1000,
            abi: Abi::native(),
            queues: alloc::vec![q, q],
            persistent: false,
        };
        assert_eq!(p.refs(0).len(), 32);
        assert_eq!(p.refs(1).len(), 32);
        assert_eq!(p.refs(2), &[] as &[GrantRef]);
        assert_eq!(p.refs(usize::MAX), &[] as &[GrantRef]);
        assert_eq!(p.num_queues(), 2);
    }

    // ---- connected, states, errors -----------------------------------------

    fn medium(read_only: bool) -> MediumInfo {
        MediumInfo {
            sectors: 1 << 33,
            sector_size: 4096,
            physical_sector_size: 8192,
            read_only,
            can_flush: true,
            can_discard: false,
            is_device: true,
            ..MediumInfo::default()
        }
    }

    fn feats(flush: bool, barrier: bool) -> Features {
        Features {
            flush,
            barrier,
            ..Features::default()
        }
    }

    #[test]
    fn connected_contents() {
        let mut xs = TestStore::with(&[(&be("state"), "2")]);
        publish_connected(&mut xs, BE, &medium(false), &feats(true, false)).unwrap();
        assert_eq!(xs.get(&be("sectors")), Some("8589934592"));
        assert_eq!(xs.get(&be("sector-size")), Some("4096"));
        assert_eq!(xs.get(&be("physical-sector-size")), Some("8192"));
        assert_eq!(xs.get(&be("info")), Some("0"));
        assert_eq!(xs.get(&be("feature-flush-cache")), Some("1"));
        assert_eq!(xs.get(&be("feature-barrier")), Some("0"));
        assert_eq!(xs.get(&be("state")), Some("4"));
        assert_eq!(xs.commits, 1);

        let mut xs = TestStore::default();
        publish_connected(&mut xs, BE, &medium(true), &feats(false, true)).unwrap();
        let ro = abi::VDISK_READONLY.to_string();
        assert_eq!(xs.get(&be("info")), Some(ro.as_str()));
        assert_eq!(xs.get(&be("feature-flush-cache")), Some("0"));
        assert_eq!(xs.get(&be("feature-barrier")), Some("1"));
    }

    #[test]
    fn connected_retried_on_again_and_atomic() {
        let mut xs = TestStore::with(&[(&be("state"), "2")]);
        xs.again_commits = 1;
        publish_connected(&mut xs, BE, &medium(false), &feats(true, true)).unwrap();
        assert_eq!(xs.get(&be("state")), Some("4"));
        assert_eq!(xs.get(&be("sectors")), Some("8589934592"));
        assert_eq!(xs.next_txn, 2);

        // A failing write leaves nothing half-published, state included.
        let mut xs = TestStore::with(&[(&be("state"), "2")]);
        xs.fail = Some((be("feature-barrier"), XsError::Denied));
        assert_eq!(
            publish_connected(&mut xs, BE, &medium(false), &feats(true, true)),
            Err(ConnectError::Xs {
                key: "feature-barrier",
                err: XsError::Denied
            })
        );
        assert_eq!(xs.get(&be("state")), Some("2"));
        assert_eq!(xs.get(&be("sectors")), None);
    }

    #[test]
    fn connected_rejects_bad_medium() {
        let mut xs = TestStore::default();
        let mut m = medium(false);
        m.sector_size = 256;
        assert_eq!(
            publish_connected(&mut xs, BE, &m, &feats(false, false)),
            Err(ConnectError::OutOfRange {
                key: "sector-size",
                value: 256
            })
        );
        m.sector_size = 1536;
        assert_eq!(
            publish_connected(&mut xs, BE, &m, &feats(false, false)),
            Err(ConnectError::OutOfRange {
                key: "sector-size",
                value: 1536
            })
        );
        m.sector_size = 4096;
        m.physical_sector_size = 512;
        assert_eq!(
            publish_connected(&mut xs, BE, &m, &feats(false, false)),
            Err(ConnectError::OutOfRange {
                key: "physical-sector-size",
                value: 512
            })
        );
        assert!(xs.nodes.is_empty());
    }

    fn all_features() -> Features {
        Features {
            flush: true,
            barrier: false,
            persistent: true,
            max_indirect_segments: 256,
            discard: Some(Discard {
                granularity: 1 << 20,
                alignment: 4096,
                secure: true,
            }),
        }
    }

    #[test]
    fn connected_features_published() {
        let mut xs = TestStore::with(&[(&be("state"), "2")]);
        publish_connected(&mut xs, BE, &medium(false), &all_features()).unwrap();
        assert_eq!(xs.get(&be("feature-flush-cache")), Some("1"));
        assert_eq!(xs.get(&be("feature-barrier")), Some("0"));
        assert_eq!(xs.get(&be("feature-persistent")), Some("1"));
        assert_eq!(xs.get(&be("feature-max-indirect-segments")), Some("256"));
        assert_eq!(xs.get(&be("feature-discard")), Some("1"));
        assert_eq!(xs.get(&be("discard-granularity")), Some("1048576"));
        assert_eq!(xs.get(&be("discard-alignment")), Some("4096"));
        assert_eq!(xs.get(&be("discard-secure")), Some("1"));
        assert_eq!(xs.get(&be("state")), Some("4"));
        assert_eq!(xs.commits, 1);

        let mut f = all_features();
        f.discard = Some(Discard {
            granularity: 512,
            alignment: 0,
            secure: false,
        });
        f.max_indirect_segments = u32::MAX;
        publish_connected(&mut xs, BE, &medium(false), &f).unwrap();
        assert_eq!(xs.get(&be("discard-granularity")), Some("512"));
        assert_eq!(xs.get(&be("discard-alignment")), Some("0"));
        assert_eq!(xs.get(&be("discard-secure")), Some("0"));
        assert_eq!(
            xs.get(&be("feature-max-indirect-segments")),
            Some("4294967295")
        );
    }

    #[test]
    fn connected_features_off_clear_a_previous_connection() {
        for not_found in [false, true] {
            // What an earlier connection left behind.
            let mut xs = TestStore::with(&[(&be("state"), "2")]);
            publish_connected(&mut xs, BE, &medium(false), &all_features()).unwrap();
            xs.set(&be("state"), b"2");
            xs.remove_absent_not_found = not_found;

            publish_connected(&mut xs, BE, &medium(false), &Features::default()).unwrap();
            assert_eq!(xs.get(&be("feature-flush-cache")), Some("0"));
            assert_eq!(xs.get(&be("feature-barrier")), Some("0"));
            assert_eq!(xs.get(&be("feature-persistent")), Some("0"));
            assert_eq!(xs.get(&be("feature-discard")), Some("0"));
            for gone in [
                "feature-max-indirect-segments",
                "discard-granularity",
                "discard-alignment",
                "discard-secure",
            ] {
                assert_eq!(xs.get(&be(gone)), None, "{gone}");
            }
            assert_eq!(xs.get(&be("state")), Some("4"));

            // Again, now with nothing left to remove: absent is fine,
            // whether the store stays silent or says NotFound.
            xs.set(&be("state"), b"2");
            publish_connected(&mut xs, BE, &medium(false), &Features::default()).unwrap();
            assert_eq!(xs.get(&be("state")), Some("4"));
            assert_eq!(xs.commits, 3);
        }
    }

    #[test]
    fn connected_removal_failure_is_atomic() {
        let mut xs = TestStore::with(&[(&be("state"), "2")]);
        publish_connected(&mut xs, BE, &medium(false), &all_features()).unwrap();
        xs.set(&be("state"), b"2");
        xs.fail = Some((be("discard-alignment"), XsError::Denied));
        let mut f = all_features();
        f.discard = None;
        f.max_indirect_segments = 0;
        assert_eq!(
            publish_connected(&mut xs, BE, &medium(false), &f),
            Err(ConnectError::Xs {
                key: "discard-alignment",
                err: XsError::Denied
            })
        );
        // Nothing of the failed attempt reached the store.
        assert_eq!(xs.get(&be("state")), Some("2"));
        assert_eq!(xs.get(&be("feature-max-indirect-segments")), Some("256"));
        assert_eq!(xs.get(&be("discard-granularity")), Some("1048576"));
        assert_eq!(xs.get(&be("feature-discard")), Some("1"));
        assert_eq!(xs.aborts, 1);
    }

    #[test]
    fn connected_rejects_zero_discard_granularity() {
        let mut xs = TestStore::default();
        let mut f = all_features();
        f.discard = Some(Discard {
            granularity: 0,
            alignment: 0,
            secure: false,
        });
        assert_eq!(
            publish_connected(&mut xs, BE, &medium(false), &f),
            Err(ConnectError::OutOfRange {
                key: "discard-granularity",
                value: 0
            })
        );
        assert!(xs.nodes.is_empty());
        assert_eq!(xs.next_txn, 0);
    }

    #[test]
    fn resize_rewrites_sectors_and_state() {
        let mut xs = TestStore::with(&[(&be("state"), "4"), (&be("sectors"), "2048")]);
        publish_resize(&mut xs, BE, 1 << 40).unwrap();
        assert_eq!(xs.get(&be("sectors")), Some("1099511627776"));
        assert_eq!(xs.get(&be("state")), Some("4"));
        assert_eq!(xs.commits, 1);

        // The state is written even where it already says Connected: the
        // write itself is the front-end's signal.
        xs.set(&be("state"), b"garbage");
        publish_resize(&mut xs, BE, 0).unwrap();
        assert_eq!(xs.get(&be("sectors")), Some("0"));
        assert_eq!(xs.get(&be("state")), Some("4"));

        xs.again_commits = 1;
        publish_resize(&mut xs, BE, u64::MAX).unwrap();
        assert_eq!(xs.get(&be("sectors")), Some("18446744073709551615"));

        // All or nothing.
        xs.fail = Some((be("state"), XsError::Denied));
        assert_eq!(
            publish_resize(&mut xs, BE, 4096),
            Err(ConnectError::Xs {
                key: "state",
                err: XsError::Denied
            })
        );
        assert_eq!(xs.get(&be("sectors")), Some("18446744073709551615"));
    }

    #[test]
    fn state_read_and_write() {
        let mut xs = TestStore::default();
        assert_eq!(
            read_state(&mut xs, FE),
            Err(ConnectError::Missing { key: "state" })
        );
        for s in 0..=8u32 {
            xs.set(&fe("state"), s.to_string().as_bytes());
            assert_eq!(read_state(&mut xs, FE).map(|s| s as u32), Ok(s));
        }
        xs.set(&fe("state"), b"9");
        assert_eq!(
            read_state(&mut xs, FE),
            Err(ConnectError::BadState { value: 9 })
        );
        xs.set(&fe("state"), b"4294967300");
        assert_eq!(
            read_state(&mut xs, FE),
            Err(ConnectError::BadState { value: 4294967300 })
        );
        xs.set(&fe("state"), b"abc");
        assert_eq!(
            read_state(&mut xs, FE),
            Err(ConnectError::NotANumber { key: "state" })
        );
        write_state(&mut xs, BE, XenbusState::InitWait).unwrap();
        assert_eq!(xs.get(&be("state")), Some("2"));
        xs.fail = Some((be("state"), XsError::Denied));
        assert_eq!(
            write_state(&mut xs, BE, XenbusState::Closed),
            Err(ConnectError::Xs {
                key: "state",
                err: XsError::Denied
            })
        );
    }

    #[test]
    fn fatal_writes_error_node_and_closing() {
        let mut xs = TestStore::with(&[(&be("state"), "2")]);
        let err = ConnectError::OutOfRange {
            key: "ring-page-order",
            value: 9,
        };
        report_fatal(&mut xs, BE, &err);
        assert_eq!(
            xs.get("error/local/domain/0/backend/vbd/1/51712/error"),
            Some("22 ring-page-order: 9 is out of range")
        );
        assert_eq!(xs.get(&be("state")), Some("5"));

        // A relative back-end path works the same.
        let mut xs = TestStore::default();
        report_fatal(
            &mut xs,
            "backend/vbd/1/51712",
            &ConnectError::Missing { key: "ring-ref" },
        );
        assert_eq!(
            xs.get("error/backend/vbd/1/51712/error"),
            Some("2 ring-ref: missing")
        );
        assert_eq!(xs.get("backend/vbd/1/51712/state"), Some("5"));
    }

    #[test]
    fn fatal_is_best_effort() {
        let mut xs = TestStore {
            fail: Some((
                "error/local/domain/0/backend/vbd/1/51712/error".to_string(),
                XsError::Denied,
            )),
            ..TestStore::default()
        };
        report_fatal(&mut xs, BE, &ConnectError::UnknownProtocol);
        assert_eq!(xs.get(&be("state")), Some("5"), "Closing even so");

        let mut xs = TestStore {
            fail: Some((be("state"), XsError::Other(5))),
            ..TestStore::default()
        };
        report_fatal(&mut xs, BE, &ConnectError::NoMemory);
        assert_eq!(
            xs.get("error/local/domain/0/backend/vbd/1/51712/error"),
            Some("12 out of memory")
        );
    }

    #[test]
    fn errno_mapping() {
        let cases = [
            (ConnectError::Missing { key: "k" }, ENOENT),
            (ConnectError::NotANumber { key: "k" }, EINVAL),
            (ConnectError::OutOfRange { key: "k", value: 1 }, EINVAL),
            (ConnectError::BadValue { key: "k" }, EINVAL),
            (ConnectError::UnknownProtocol, EINVAL),
            (ConnectError::BadState { value: 9 }, EINVAL),
            (ConnectError::TooLong { key: "k" }, E2BIG),
            (ConnectError::Ring, EIO),
            (ConnectError::Grant(GrantError::NoSpace), ENOMEM),
            (ConnectError::Evtchn(EvtchnError::BadPort), EINVAL),
            (ConnectError::Open(OpenError::NotFound), ENOENT),
            (ConnectError::Open(OpenError::Invalid), ENODEV),
            (ConnectError::Open(OpenError::Other(-3)), EIO),
            (ConnectError::NoMemory, ENOMEM),
            (ConnectError::StoreGone, ENXIO),
            (
                ConnectError::Xs {
                    key: "k",
                    err: XsError::Again,
                },
                EBUSY,
            ),
        ];
        for (e, n) in cases {
            assert_eq!(e.errno(), n, "{e:?}");
            assert!(!e.to_string().is_empty());
        }
        assert_eq!(
            ConnectError::TooLong { key: "params" }.to_string(),
            "params: value too long"
        );
        assert_eq!(ENXIO, 6);
        assert_eq!(
            ConnectError::StoreGone.to_string(),
            "params: the backing store went away"
        );
    }
}
