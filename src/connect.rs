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
use crate::journal::TakeoverError;
use crate::keys;
use crate::units::Sectors;

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
    /// A numeric node holds nothing.
    Empty {
        /// The node.
        key: &'static str,
    },
    /// A numeric node is not plain decimal: signed, spaced, hex, ...
    NotANumber {
        /// The node.
        key: &'static str,
    },
    /// A decimal number beyond `u64::MAX`: out of range of every node.
    TooLarge {
        /// The node.
        key: &'static str,
    },
    /// A number outside what is allowed, or too big for the node's type.
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
    /// A value that must be unique is named twice: a grant reference of
    /// the rings (within one ring or across queues) or an event channel
    /// (across queues). Two queues on one ring would serve every request
    /// twice.
    Duplicate {
        /// The node holding the second occurrence.
        key: &'static str,
        /// The value named twice.
        value: u64,
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
    /// A connection another back-end served cannot be taken over
    /// ([`crate::journal`]).
    Takeover(TakeoverError),
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
            ConnectError::Empty { .. }
            | ConnectError::NotANumber { .. }
            | ConnectError::TooLarge { .. }
            | ConnectError::OutOfRange { .. }
            | ConnectError::BadValue { .. }
            | ConnectError::Duplicate { .. }
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
            ConnectError::Takeover(t) => match t {
                TakeoverError::NoJournal => ENOENT,
                TakeoverError::NoMemory => ENOMEM,
                _ => EINVAL,
            },
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
            ConnectError::Empty { key } => write!(f, "{key}: empty, not a number"),
            ConnectError::NotANumber { key } => write!(f, "{key}: not a decimal number"),
            ConnectError::TooLarge { key } => {
                write!(f, "{key}: out of range (above {})", u64::MAX)
            }
            ConnectError::OutOfRange { key, value } => {
                write!(f, "{key}: {value} is out of range")
            }
            ConnectError::BadValue { key } => write!(f, "{key}: value not accepted"),
            ConnectError::Duplicate { key, value } => {
                write!(f, "{key}: {value} is named twice; each must be distinct")
            }
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
            ConnectError::Takeover(t) => write!(f, "takeover: {t}"),
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

/// Why a value is not a strict decimal number.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NumError {
    /// Nothing at all.
    Empty,
    /// Something other than ASCII digits: a sign, a space, `0x`, a NUL, ...
    NotDecimal,
    /// Digits only, but more than `u64::MAX`.
    TooLarge,
}

/// Parses a strict decimal `u64`: one or more ASCII digits and nothing else
/// (no sign, no spaces, no `0x`, no empty string, no overflow). Leading
/// zeros are decimal, not octal. The error says which rule was broken.
pub fn parse_decimal(v: &[u8]) -> Result<u64, NumError> {
    if v.is_empty() {
        return Err(NumError::Empty);
    }
    if !v.iter().all(u8::is_ascii_digit) {
        return Err(NumError::NotDecimal);
    }
    v.iter().try_fold(0u64, |n, &c| {
        n.checked_mul(10)
            .and_then(|n| n.checked_add(u64::from(c - b'0')))
            .ok_or(NumError::TooLarge)
    })
}

/// [`parse_decimal`], `None` for any error.
pub fn parse_u64(v: &[u8]) -> Option<u64> {
    parse_decimal(v).ok()
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

/// Reads `dir/node` as a strict decimal of type `T`, naming it `key` in
/// errors; `None` if absent. A number too big for `T` is
/// [`ConnectError::OutOfRange`] (it does not fit the node's type).
fn read_num_as<T: TryFrom<u64>, X: XenStore>(
    xs: &mut X,
    txn: XsTxn,
    dir: &str,
    node: &str,
    key: &'static str,
) -> Result<Option<T>, ConnectError> {
    match read_u64_as(xs, txn, dir, node, key)? {
        None => Ok(None),
        Some(n) => T::try_from(n)
            .map(Some)
            .map_err(|_| ConnectError::OutOfRange { key, value: n }),
    }
}

/// [`read_num_as`]'s one reader, whatever the type: `dir/node` as a strict
/// decimal `u64`. Every number the back-end reads from XenStore goes
/// through here, so each says the same: [`ConnectError::Empty`],
/// [`ConnectError::NotANumber`] or [`ConnectError::TooLarge`].
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
        Some(v) => parse_decimal(v).map(Some).map_err(|e| num_error(key, e)),
    }
}

/// The connection error of a number that did not parse.
fn num_error(key: &'static str, e: NumError) -> ConnectError {
    match e {
        NumError::Empty => ConnectError::Empty { key },
        NumError::NotDecimal => ConnectError::NotANumber { key },
        NumError::TooLarge => ConnectError::TooLarge { key },
    }
}

/// Reads `dir/key` as a strict decimal `u32`; `None` if absent.
/// A number above `u32::MAX` is [`ConnectError::OutOfRange`] (it does not
/// fit the node's type).
pub fn read_u32<X: XenStore>(
    xs: &mut X,
    txn: XsTxn,
    dir: &str,
    key: &'static str,
) -> Result<Option<u32>, ConnectError> {
    read_num_as(xs, txn, dir, key, key)
}

/// Reads a boolean node: `"0"` or `"1"` only; `None` if absent. Another
/// number is [`ConnectError::OutOfRange`], anything else what
/// [`parse_decimal`] says of it.
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
        _ => match parse_decimal(v) {
            Ok(value) => Err(ConnectError::OutOfRange { key, value }),
            Err(e) => Err(num_error(key, e)),
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
    /// `direct-io-safe` (default false): the medium may be opened with
    /// O_DIRECT, bypassing the page cache, where the platform can.
    pub direct_io_safe: bool,
}

/// Reads and vets the back-end's own nodes, in one transaction.
///
/// `frontend` and `frontend-id` are required, `frontend-id` at most
/// [`MAX_FRONTEND_ID`]; `params` is required, with `physical-device-path` as
/// its fallback; `type` is optional; `mode` is `"r"` (the default), `"w"`
/// or `"w!"`, anything else [`ConnectError::BadValue`]; `online` defaults to
/// false, `discard-enable` to true, `direct-io-safe` to false.
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
    let frontend = read_string(xs, txn, be_dir, keys::FRONTEND, MAX_PATH_LEN)?.ok_or(
        ConnectError::Missing {
            key: keys::FRONTEND,
        },
    )?;

    const FRONTEND_ID: &str = keys::FRONTEND_ID;
    let id = read_num_as::<u64, _>(xs, txn, be_dir, FRONTEND_ID, FRONTEND_ID)?
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

    let params = match read_string(xs, txn, be_dir, keys::PARAMS, MAX_PATH_LEN)? {
        Some(p) => p,
        None => read_string(xs, txn, be_dir, keys::PHYSICAL_DEVICE_PATH, MAX_PATH_LEN)?
            .ok_or(ConnectError::Missing { key: keys::PARAMS })?,
    };

    let kind = read_string(xs, txn, be_dir, keys::TYPE, MAX_TYPE_LEN)?.unwrap_or_default();

    let mut buf = [0u8; VALUE_BUF];
    let writable = match read_raw(xs, txn, be_dir, keys::MODE, &mut buf)? {
        None | Some(b"r") => false,
        Some(b"w") | Some(b"w!") => true,
        Some(_) => return Err(ConnectError::BadValue { key: keys::MODE }),
    };

    let online = read_bool(xs, txn, be_dir, keys::ONLINE)?.unwrap_or(false);
    let discard_enable = read_bool(xs, txn, be_dir, keys::DISCARD_ENABLE)?.unwrap_or(true);
    let hotplug_script = read_string(xs, txn, be_dir, keys::SCRIPT, MAX_PATH_LEN)?.is_some();
    let direct_io_safe = read_bool(xs, txn, be_dir, keys::DIRECT_IO_SAFE)?.unwrap_or(false);

    Ok(BackendNodes {
        frontend,
        frontend_id,
        params,
        kind,
        writable,
        online,
        discard_enable,
        hotplug_script,
        direct_io_safe,
    })
}

/// Whether the hotplug script finished: `hotplug-status` is `connected`
/// (what Linux's scripts write, and `block-xbb`), or the script wrote
/// `physical-device-path`: FreeBSD's `block` script (run by libxl in a
/// FreeBSD dom0 and by `xl devd` in a driver domain) writes only that,
/// and FreeBSD's own blkback waits for it. libxl writes neither when it
/// creates the vbd.
pub fn hotplug_done<X: XenStore>(xs: &mut X, be_dir: &str) -> bool {
    let mut buf = [0u8; VALUE_BUF];
    if matches!(
        read_raw(xs, XsTxn::NONE, be_dir, keys::HOTPLUG_STATUS, &mut buf),
        Ok(Some(v)) if v == keys::HOTPLUG_CONNECTED.as_bytes()
    ) {
        return true;
    }
    matches!(
        read_raw(xs, XsTxn::NONE, be_dir, keys::PHYSICAL_DEVICE_PATH, &mut buf),
        Ok(Some(v)) if !v.is_empty()
    )
}

/// Whether the toolstack removed the back-end directory `be_dir`: its
/// `state` node is gone. Once it is, a platform writes nothing more there
/// (a write would make the directory again, or be refused with
/// `EACCES` where the back-end may not create it); the instance is about
/// to be detached. Only meaningful after the back-end wrote `state` once.
///
/// A back-end may always read its own directory, so a read refused with
/// `EACCES` means the directory is gone too: xenstored answers a read of
/// a missing node with `EACCES` rather than `ENOENT` when the nearest
/// parent that exists is not readable by the caller, which is what a
/// driver domain meets once the toolstack removed the guest's directory.
pub fn backend_removed<X: XenStore>(xs: &mut X, be_dir: &str) -> bool {
    let mut buf = [0u8; VALUE_BUF];
    matches!(
        read_raw(xs, XsTxn::NONE, be_dir, keys::STATE, &mut buf),
        Ok(None)
            | Err(ConnectError::Xs {
                err: XsError::Denied,
                ..
            })
    )
}

// ---------------------------------------------------------------------------
// Publishing before the front-end connects
// ---------------------------------------------------------------------------

/// The most queues (rings) a back-end ever offers in
/// `multi-queue-max-queues`, whatever it is configured with.
pub const MAX_QUEUES: u32 = 16;

/// The back-end's node offering multi-queue.
const MAX_QUEUES_KEY: &str = keys::MULTI_QUEUE_MAX_QUEUES;

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
            key: keys::MAX_RING_PAGE_ORDER,
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
        write_u64(xs, txn, be_dir, keys::MAX_RING_PAGE_ORDER, u64::from(order))?;
        write_u64(xs, txn, be_dir, keys::MAX_RING_PAGES, pages)?;
        write_u64(xs, txn, be_dir, MAX_QUEUES_KEY, u64::from(queues))?;
        write_node(
            xs,
            txn,
            be_dir,
            keys::FEATURE_PERSISTENT,
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
    ring_ref: keys::RING_REF,
    ring_refs: &keys::RING_REFS,
    event_channel: keys::EVENT_CHANNEL,
};

/// A queue of the multi-queue layout, in `queue-%u`.
const QUEUE_KEYS: QueueKeys = QueueKeys {
    ring_ref: "queue/ring-ref",
    ring_refs: &keys::QUEUE_RING_REFS,
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
/// `event-channel` is required. Every ring reference must be distinct,
/// within a ring and across queues, and every queue's event channel its
/// own ([`ConnectError::Duplicate`]). Errors about a node in a
/// `queue-<N>` directory name it `queue/<node>`.
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
    const ORDER: &str = keys::RING_PAGE_ORDER;
    const NUM_PAGES: &str = keys::NUM_RING_PAGES;
    const NUM_QUEUES: &str = keys::MULTI_QUEUE_NUM_QUEUES;

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
    // order <= max_order <= MAX_RING_PAGE_ORDER: pages <= keys::RING_REFS.len().
    let pages = 1u32 << order;

    // Range-checked before it sizes anything.
    let num_queues = match read_num_as::<u64, _>(xs, txn, fe_dir, NUM_QUEUES, NUM_QUEUES)? {
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

    let names = if num_queues == 1 {
        &LEGACY_KEYS
    } else {
        &QUEUE_KEYS
    };
    vet_distinct(&queues, npages, names)?;

    let mut buf = [0u8; VALUE_BUF];
    let abi = match read_raw(xs, txn, fe_dir, keys::PROTOCOL, &mut buf)? {
        None => Abi::native(),
        Some(p) => Abi::from_protocol(p).ok_or(ConnectError::UnknownProtocol)?,
    };
    let persistent = read_bool(xs, txn, fe_dir, keys::FEATURE_PERSISTENT)?.unwrap_or(false);

    Ok(FrontendParams {
        ring_pages: pages,
        abi,
        queues,
        persistent,
    })
}

/// Checks that every ring page is its own and every queue has its own
/// channel: the first `pages` grant references of all `queues` are
/// distinct (within one ring and across rings), and so are their event
/// channels. Otherwise [`ConnectError::Duplicate`], naming the node of the
/// second occurrence after `names`. Nothing is mapped before this holds: two
/// queues sharing a ring would consume every request twice. At most 16 x
/// 32 references, compared pairwise without allocating.
fn vet_distinct(
    queues: &[QueueParams],
    pages: usize,
    names: &QueueKeys,
) -> Result<(), ConnectError> {
    let n = pages.min(keys::RING_REFS.len());
    for (qi, q) in queues.iter().enumerate() {
        for (pi, &r) in q.ring_refs[..n].iter().enumerate() {
            let before = queues[..qi].iter().flat_map(|e| &e.ring_refs[..n]);
            if before.chain(&q.ring_refs[..pi]).any(|&e| e == r) {
                let key = if n == 1 {
                    names.ring_ref
                } else {
                    names.ring_refs.get(pi).copied().unwrap_or(names.ring_ref)
                };
                return Err(ConnectError::Duplicate {
                    key,
                    value: u64::from(r),
                });
            }
        }
        if queues[..qi]
            .iter()
            .any(|e| e.event_channel == q.event_channel)
        {
            return Err(ConnectError::Duplicate {
                key: names.event_channel,
                value: u64::from(q.event_channel),
            });
        }
    }
    Ok(())
}

/// Reads one queue's ring references (`pages` of them, `1..=32`) and
/// event channel from `dir`, naming the nodes in errors after `names`.
fn read_queue<X: XenStore>(
    xs: &mut X,
    txn: XsTxn,
    dir: &str,
    pages: usize,
    names: &QueueKeys,
) -> Result<QueueParams, ConnectError> {
    let mut ring_refs = [0 as GrantRef; 32];
    if pages == 1 {
        ring_refs[0] = match read_num_as(xs, txn, dir, keys::RING_REF, names.ring_ref)? {
            Some(r) => r,
            None => read_num_as(xs, txn, dir, keys::RING_REFS[0], names.ring_refs[0])?.ok_or(
                ConnectError::Missing {
                    key: names.ring_ref,
                },
            )?,
        };
    } else {
        for ((slot, &node), &key) in ring_refs
            .iter_mut()
            .zip(keys::RING_REFS.iter())
            .zip(names.ring_refs.iter())
            .take(pages)
        {
            *slot = read_num_as(xs, txn, dir, node, key)?.ok_or(ConnectError::Missing { key })?;
        }
    }
    let key = names.event_channel;
    let event_channel = read_num_as(xs, txn, dir, keys::EVENT_CHANNEL, key)?
        .ok_or(ConnectError::Missing { key })?;
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

/// A node the back-end publishes with Connected, as
/// [`publish_connected`] writes it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Published {
    /// A decimal number.
    Num(u64),
    /// A value written as is (`"0"`, `"1"`).
    Text(&'static str),
    /// Removed: what an earlier connection published no longer holds.
    Absent,
}

/// Every node [`publish_connected`] writes or removes, in order, once
/// `medium` and `features` are checked. `sectors` comes first: it is the
/// one node that may change while connected ([`publish_resize`]).
fn connected_nodes(
    medium: &MediumInfo,
    features: &Features,
) -> Result<[(&'static str, Published); 12], ConnectError> {
    use Published::{Absent, Num, Text};
    let ss = medium.sector_size;
    if ss < 512 || !ss.is_power_of_two() {
        return Err(ConnectError::OutOfRange {
            key: keys::SECTOR_SIZE,
            value: u64::from(ss),
        });
    }
    let pss = medium.physical_sector_size;
    if pss == 0 || pss % ss != 0 {
        return Err(ConnectError::OutOfRange {
            key: keys::PHYSICAL_SECTOR_SIZE,
            value: u64::from(pss),
        });
    }
    if let Some(d) = features.discard {
        if d.granularity == 0 {
            return Err(ConnectError::OutOfRange {
                key: keys::DISCARD_GRANULARITY,
                value: 0,
            });
        }
    }
    let info: u32 = if medium.read_only {
        abi::VDISK_READONLY
    } else {
        0
    };
    let indirect = match features.max_indirect_segments {
        0 => Absent,
        n => Num(u64::from(n)),
    };
    let (granularity, alignment, secure, discard) = match features.discard {
        Some(d) => (
            Num(u64::from(d.granularity)),
            Num(u64::from(d.alignment)),
            Text(flag(d.secure)),
            "1",
        ),
        None => (Absent, Absent, Absent, "0"),
    };
    Ok([
        (keys::SECTORS, Num(medium.sectors.0)),
        (keys::SECTOR_SIZE, Num(u64::from(ss))),
        (keys::PHYSICAL_SECTOR_SIZE, Num(u64::from(pss))),
        (keys::INFO, Num(u64::from(info))),
        (keys::FEATURE_FLUSH_CACHE, Text(flag(features.flush))),
        (keys::FEATURE_BARRIER, Text(flag(features.barrier))),
        (keys::FEATURE_PERSISTENT, Text(flag(features.persistent))),
        (keys::FEATURE_MAX_INDIRECT_SEGMENTS, indirect),
        (keys::DISCARD_GRANULARITY, granularity),
        (keys::DISCARD_ALIGNMENT, alignment),
        (keys::DISCARD_SECURE, secure),
        (keys::FEATURE_DISCARD, Text(discard)),
    ])
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
/// removes the per-device `error` node an earlier, refused connection left
/// ([`report_fatal`]), then `state` = Connected. Removing nodes clears what
/// an earlier connection published.
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
    let nodes = connected_nodes(medium, features)?;
    with_txn(xs, |xs, txn| {
        for (key, value) in nodes {
            match value {
                Published::Num(n) => write_u64(xs, txn, be_dir, key, n)?,
                Published::Text(t) => write_node(xs, txn, be_dir, key, t)?,
                Published::Absent => remove_node(xs, txn, be_dir, key)?,
            }
        }
        // What an earlier, refused connection reported no longer holds.
        let stale = error_node(be_dir)?;
        match xs.xs_remove(txn, &stale) {
            Ok(()) | Err(XsError::NotFound) => {}
            Err(err) => return Err(ConnectError::Xs { key: "error", err }),
        }
        write_connected(xs, txn, be_dir)
    })
}

/// Checks, for a connection taken over from another back-end, that what
/// [`publish_connected`] would publish for `medium` and `features` is what
/// the front-end was told: every node but `sectors` as it stands (a
/// medium whose size changed meanwhile is a resize, not a refusal).
/// Returns the published `sectors`. A node that differs, or is missing,
/// is [`TakeoverError::Changed`]: the front-end may already rely on it
/// (a number of indirect segments, a flush it may send).
pub fn check_published<X: XenStore>(
    xs: &mut X,
    be_dir: &str,
    medium: &MediumInfo,
    features: &Features,
) -> Result<Sectors, ConnectError> {
    let nodes = connected_nodes(medium, features)?;
    with_txn(xs, |xs, txn| {
        let mut sectors = Sectors(0);
        for (key, want) in nodes {
            let mut buf = [0u8; VALUE_BUF];
            let have = read_raw(xs, txn, be_dir, key, &mut buf)?;
            let same = match (want, have) {
                (Published::Absent, None) => true,
                (Published::Num(n), Some(v)) if key == keys::SECTORS => {
                    sectors = Sectors(parse_u64(v).unwrap_or(n));
                    true
                }
                (Published::Num(n), Some(v)) => parse_u64(v) == Some(n),
                (Published::Text(t), Some(v)) => v == t.as_bytes(),
                _ => false,
            };
            if !same {
                return Err(ConnectError::Takeover(TakeoverError::Changed { key }));
            }
        }
        Ok(sectors)
    })
}

/// Writes `state` = Connected inside transaction `txn`.
fn write_connected<X: XenStore>(xs: &mut X, txn: XsTxn, be_dir: &str) -> Result<(), ConnectError> {
    let connected = XenbusState::Connected.as_str();
    write_node(xs, txn, be_dir, keys::STATE, connected)
}

/// Publishes a new medium size while connected, in one transaction:
/// `sectors` (512-byte units), then `state` re-written as Connected. The
/// rewrite fires the front-end's watch on the back-end's `state` even
/// though the state did not change, which is what makes a front-end
/// re-read `sectors`.
pub fn publish_resize<X: XenStore>(
    xs: &mut X,
    be_dir: &str,
    sectors: Sectors,
) -> Result<(), ConnectError> {
    with_txn(xs, |xs, txn| {
        write_u64(xs, txn, be_dir, keys::SECTORS, sectors.0)?;
        write_connected(xs, txn, be_dir)
    })
}

/// Reads the `state` node of `dir` (either end). Absent is
/// [`ConnectError::Missing`], a non-number [`ConnectError::NotANumber`], a
/// number outside `enum xenbus_state` [`ConnectError::BadState`].
///
/// A read refused with `EACCES` is absent too: the toolstack lets each end
/// read the other's directory for as long as it exists, and xenstored
/// answers a read below a removed directory with `EACCES` rather than
/// `ENOENT` when the nearest parent left is not the reader's (a driver
/// domain reading the directory of a guest just destroyed).
pub fn read_state<X: XenStore>(xs: &mut X, dir: &str) -> Result<XenbusState, ConnectError> {
    const STATE: &str = keys::STATE;
    let v = match read_num_as::<u64, _>(xs, XsTxn::NONE, dir, STATE, STATE) {
        Err(ConnectError::Xs {
            err: XsError::Denied,
            ..
        }) => None,
        r => r?,
    }
    .ok_or(ConnectError::Missing { key: STATE })?;
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
    write_node(xs, XsTxn::NONE, be_dir, keys::STATE, state.as_str())
}

/// The per-device error node of the back-end at `be_dir`:
/// `error/<be_dir>/error`, `be_dir` without its leading `/`.
fn error_node(be_dir: &str) -> Result<String, ConnectError> {
    let node = be_dir.trim_start_matches('/');
    try_format(format_args!("error/{node}/error"))
}

/// Reports a fatal error the way XenBus drivers do: writes
/// `"<errno> <message>"` to `error/<be_dir>/error` (the per-device error
/// node the toolstack shows; `be_dir` without its leading `/`), then enters
/// Closing. Best effort: XenStore or allocation failures are ignored.
pub fn report_fatal<X: XenStore>(xs: &mut X, be_dir: &str, err: &ConnectError) {
    if let (Ok(path), Ok(msg)) = (
        error_node(be_dir),
        try_format(format_args!("{} {}", err.errno(), err)),
    ) {
        let _ = xs.xs_write(XsTxn::NONE, &path, &msg);
    }
    let _ = write_state(xs, be_dir, XenbusState::Closing);
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::string::ToString;

    #[test]
    fn decimal_printing() {
        for v in [0, 1, 9, 10, 512, 4096, u64::from(u32::MAX), u64::MAX] {
            assert_eq!(Decimal::new(v).as_str(), v.to_string());
        }
    }
}
