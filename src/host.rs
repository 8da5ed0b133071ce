//! What the core asks of whoever runs it.
//!
//! The core never calls an operating system. A platform (the FreeBSD kernel
//! shim, the simulated host of `xbb-lab`, a dom0 user-space back-end)
//! implements the traits below and drives one
//! [`Instance`](crate::instance::Instance) per `vbd` through its entry points.
//!
//! An instance has one control context and one context per queue (DESIGN.md,
//! "Concurrency"), and the traits follow that split:
//!
//! - [`Host`] (with [`XenStore`]) serves the control part: XenStore, the
//!   data window, the rings and event-channel bindings, the store's open and
//!   close, and the hand-off of queues ([`Host::lend`], [`Host::recall`]).
//!   Its entry points (`attach`, `frontend_changed`, `root_mounted`,
//!   `medium_changed`, `give_back`, `queue_failed`, `detach`, sysctl writes)
//!   are called from the control context, one at a time.
//! - [`QueueHost`] serves one queue's request path: grant mapping in that
//!   queue's share of the window, its event channel, store submission,
//!   deferred runs, the clock. A lent [`Queue`] calls
//!   it from the queue's own context, concurrently with the other queues
//!   and the control part.
//!
//! A platform that runs everything in one context (the test double, the
//! fuzz bodies) implements both on one object, lends nothing, returns
//! itself from [`Host::inline`], and calls `Instance::{event, run,
//! complete}`. Every method takes `&mut self`: each context owns its host
//! object, and what they share (the store, the window) is the platform's
//! to synchronise.
//!
//! The methods follow the Xen interfaces they stand for: `xs_wire.h` /
//! `xenbus.h` for [`XenStore`], `grant_table.h` (`GNTTABOP_map_grant_ref`,
//! `GNTTABOP_unmap_grant_ref`, `GNTTABOP_copy`) for the grant methods,
//! `event_channel.h` (`EVTCHNOP_bind_interdomain`, `EVTCHNOP_send`) for the
//! event-channel methods.

use crate::journal::JournalId;
use crate::queue::Queue;
use crate::shmem::SharedMem;
use crate::units::{Bytes, Sectors, WindowPage};

/// A Xen domain id (`domid_t`).
pub type DomId = u16;
/// A grant reference (`grant_ref_t`).
pub type GrantRef = u32;
/// An event-channel port number (`evtchn_port_t`).
pub type EvtchnPort = u32;
/// A queue (ring) of a multi-queue connection, `0..multi-queue-num-queues`.
pub type QueueId = u32;
/// The page size of the shared ring and of every granted data page.
pub const PAGE_SIZE: usize = 4096;
/// `log2(PAGE_SIZE)`.
pub const PAGE_SHIFT: u32 = 12;

/// XenBus device states (`enum xenbus_state` in `io/xenbus.h`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[repr(u8)]
pub enum XenbusState {
    /// `XenbusStateUnknown`.
    Unknown = 0,
    /// `XenbusStateInitialising`.
    Initialising = 1,
    /// `XenbusStateInitWait`: back-end published its limits, waits for the front-end.
    InitWait = 2,
    /// `XenbusStateInitialised`: front-end published its transport parameters.
    Initialised = 3,
    /// `XenbusStateConnected`.
    Connected = 4,
    /// `XenbusStateClosing`.
    Closing = 5,
    /// `XenbusStateClosed`.
    Closed = 6,
    /// `XenbusStateReconfiguring`.
    Reconfiguring = 7,
    /// `XenbusStateReconfigured`.
    Reconfigured = 8,
}

impl XenbusState {
    /// Decodes the numeric value stored in a `state` node; `None` for values
    /// outside the enumeration (a hostile or broken front-end).
    pub fn from_u32(v: u32) -> Option<Self> {
        Some(match v {
            0 => Self::Unknown,
            1 => Self::Initialising,
            2 => Self::InitWait,
            3 => Self::Initialised,
            4 => Self::Connected,
            5 => Self::Closing,
            6 => Self::Closed,
            7 => Self::Reconfiguring,
            8 => Self::Reconfigured,
            _ => return None,
        })
    }

    /// The decimal string written to a `state` node.
    pub fn as_str(self) -> &'static str {
        ["0", "1", "2", "3", "4", "5", "6", "7", "8"][self as usize]
    }
}

/// A XenStore transaction handle; [`XsTxn::NONE`] outside transactions.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct XsTxn(pub u32);

impl XsTxn {
    /// No transaction: the operation applies on its own.
    pub const NONE: XsTxn = XsTxn(0);
}

/// Errors of the XenStore service.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum XsError {
    /// `ENOENT`: the node does not exist.
    NotFound,
    /// The value is longer than the caller's buffer (the caller refuses it).
    TooLong,
    /// `EAGAIN`: the transaction conflicted and must be retried.
    Again,
    /// `EACCES`: permission denied.
    Denied,
    /// Any other failure, as an errno value.
    Other(i32),
}

/// The XenStore, as seen by a back-end.
pub trait XenStore {
    /// Reads `path` into `buf`, returning the value's length.
    /// A value that does not fit is [`XsError::TooLong`], never truncated.
    fn xs_read(&mut self, txn: XsTxn, path: &str, buf: &mut [u8]) -> Result<usize, XsError>;
    /// Writes `value` at `path`, creating the node.
    fn xs_write(&mut self, txn: XsTxn, path: &str, value: &str) -> Result<(), XsError>;
    /// Removes `path` and everything below it; absent nodes are not an error.
    fn xs_remove(&mut self, txn: XsTxn, path: &str) -> Result<(), XsError>;
    /// Starts a transaction.
    fn xs_transaction_start(&mut self) -> Result<XsTxn, XsError>;
    /// Ends a transaction, committing it when `commit`; [`XsError::Again`]
    /// when it conflicted with another writer.
    fn xs_transaction_end(&mut self, txn: XsTxn, commit: bool) -> Result<(), XsError>;
}

/// Why a grant could not be mapped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GrantError {
    /// `GNTST_bad_gntref` / `GNTST_bad_domain`: no such grant.
    BadRef,
    /// `GNTST_permission_denied`: e.g. a writable mapping of a read-only grant.
    Denied,
    /// `GNTST_no_space` / `GNTST_no_device_space`, or the platform is short.
    NoSpace,
    /// Any other `GNTST_*` failure.
    General,
}

/// An opaque handle returned by a successful grant mapping, needed to unmap it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct GrantHandle(pub u32);

/// The outcome of one grant mapping: its handle, or why it failed.
pub type MapResult = Result<GrantHandle, GrantError>;

/// Pages a front-end granted to the back-end, in order.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Granted<'a> {
    /// The granting domain.
    pub dom: DomId,
    /// Its grant references, one per page.
    pub grefs: &'a [GrantRef],
}

/// A front-end's end of an interdomain event channel.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RemotePort {
    /// The front-end's domain.
    pub dom: DomId,
    /// Its unbound port offered to the back-end.
    pub port: EvtchnPort,
}

/// One entry of a batched grant mapping into the data window.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GrantMapOp {
    /// The front-end's grant reference.
    pub gref: GrantRef,
    /// The page of the data window where the grant must appear.
    pub window_page: WindowPage,
    /// Map read-only (`GNTMAP_readonly`): the back-end only reads the page
    /// (a guest WRITE).
    pub readonly: bool,
}

/// One entry of a batched unmapping.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GrantUnmapOp {
    /// The page of the data window.
    pub window_page: WindowPage,
    /// The handle the mapping returned.
    pub handle: GrantHandle,
}

/// Errors binding an event channel.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EvtchnError {
    /// The remote port is not an unbound port offered to us.
    BadPort,
    /// Any other failure.
    General,
}

/// What the back-end store is, as the core needs to know it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MediumInfo {
    /// Size in 512-byte sectors (the unit of the `sectors` node and of
    /// `sector_number`, whatever `sector_size` is).
    pub sectors: Sectors,
    /// Logical block size in bytes: a power of two, at least 512.
    pub sector_size: u32,
    /// Physical block size in bytes: a multiple of `sector_size`.
    pub physical_sector_size: u32,
    /// The store was opened read-only (or can only be).
    pub read_only: bool,
    /// The store can make completed writes durable (flush / fsync).
    pub can_flush: bool,
    /// The store can discard ranges (hole punching in a file, TRIM/UNMAP
    /// on a device).
    pub can_discard: bool,
    /// The store can erase ranges securely (`BLKIF_DISCARD_SECURE`).
    pub can_secure_discard: bool,
    /// Discard granularity in bytes (0: the logical sector size).
    pub discard_granularity: u32,
    /// Offset in bytes of the first granule from sector 0.
    pub discard_alignment: u32,
    /// A raw device rather than a regular file (reported in `info`).
    pub is_device: bool,
}

/// One piece of an I/O buffer inside the data window.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct IoVec {
    /// Byte offset inside the data window.
    pub window_offset: usize,
    /// Length in bytes.
    pub len: usize,
}

/// One I/O handed to the back-end store. Offsets and lengths are bytes on
/// the medium.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IoOp<'a> {
    /// Read `iov` (in order) from the medium starting at `offset`.
    Read {
        /// Medium byte offset.
        offset: Bytes,
        /// Destination pieces in the window.
        iov: &'a [IoVec],
    },
    /// Write `iov` (in order) to the medium starting at `offset`.
    Write {
        /// Medium byte offset.
        offset: Bytes,
        /// Source pieces in the window.
        iov: &'a [IoVec],
    },
    /// Make every completed write durable.
    Flush,
    /// Discard `len` bytes at `offset`.
    Discard {
        /// Medium byte offset.
        offset: Bytes,
        /// Length in bytes.
        len: Bytes,
        /// Erase securely (`BLKIF_DISCARD_SECURE`); only submitted when
        /// [`MediumInfo::can_secure_discard`].
        secure: bool,
    },
}

/// An identifier the core gives each submitted I/O; the platform hands it
/// back with the completion.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct IoTag(pub u32);

/// Why a store I/O failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IoError {
    /// `EIO`: the medium failed.
    Io,
    /// `ENXIO` / `ENODEV`: the medium is gone.
    Gone,
    /// `EOPNOTSUPP`: the store cannot do this operation.
    NotSupported,
    /// `ENOSPC`.
    NoSpace,
    /// `EAGAIN` / `ENOMEM`: the platform could not queue it now.
    Busy,
}

/// Why a store could not be opened.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OpenError {
    /// `ENOENT`: no such file or device.
    NotFound,
    /// `EACCES` / `EROFS`: not with the requested mode.
    Denied,
    /// Not a regular file nor a disk device, or an unusable size.
    Invalid,
    /// Any other errno.
    Other(i32),
}

/// How [`Host::journal_open`] finds a queue's in-flight journal.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum JournalOpen {
    /// A new connection: memory for a new journal, whatever was there.
    Create,
    /// A connection taken over: the journal the previous back-end left.
    Existing,
}

/// What a store's `params` node names, as the platform finds it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NodeKind {
    /// A disk: a block device (Linux), a disk character device (FreeBSD:
    /// a GEOM provider, zvol or md(4) device).
    Disk,
    /// A regular file.
    RegularFile,
    /// Anything else: a directory, a FIFO, a terminal, ...
    Other,
}

/// How a store is served.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StoreKind {
    /// As a file (FreeBSD: a vnode, `VOP_READ` / `VOP_WRITE`; user space:
    /// buffered `preadv` / `pwritev`, hole punching).
    File,
    /// As a raw device (FreeBSD: `d_strategy` bios on a GEOM provider;
    /// user space: `O_DIRECT` with aligned buffers, `BLKDISCARD`).
    Device,
}

impl StoreKind {
    /// The one rule for file or device, which every platform follows (the
    /// kernel's C shim in `sys-glue/xbb_io.c` too): what `params` names
    /// decides, and the toolstack's `type` (`kind`) can only refuse.
    ///
    /// - A disk is served as a raw device, unless `type` is `file`: a
    ///   device cannot be served as a file, the store is refused.
    /// - A regular file is served as a file whatever `type` says: libxl
    ///   writes `phy` for every raw disk it hands to a back-end in another
    ///   domain, and for file targets on a FreeBSD dom0.
    /// - Anything else is refused ([`OpenError::Invalid`]).
    pub fn for_node(node: NodeKind, kind: &str) -> Result<StoreKind, OpenError> {
        match node {
            NodeKind::Disk if kind != "file" => Ok(StoreKind::Device),
            NodeKind::RegularFile => Ok(StoreKind::File),
            NodeKind::Disk | NodeKind::Other => Err(OpenError::Invalid),
        }
    }
}

/// How the back-end store is opened.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OpenParams<'a> {
    /// The back-end's `params` (or `physical-device-path`) node.
    pub path: &'a str,
    /// The `type` node ("file", "phy", ...), empty when absent; see
    /// [`StoreKind::for_node`].
    pub kind: &'a str,
    /// Open for writing (`mode` is "w").
    pub writable: bool,
    /// The toolstack's `direct-io-safe`: an image file may be opened with
    /// O_DIRECT (a platform that can, and whose file system takes it).
    pub direct_io_safe: bool,
}

/// What kind of I/O a request or a store step is, as devstat(9) sorts it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IoKind {
    /// A read.
    Read,
    /// A write (a barrier with data included).
    Write,
    /// A cache flush (a barrier without data included).
    Flush,
    /// A discard (devstat's "free").
    Discard,
}

/// What happens on a queue's request path, reported to the platform's
/// observers (devstat(9), DTrace) through [`QueueHost::note`] as it
/// happens. Each request that [`Event::RequestStart`] reported ends with
/// exactly one [`Event::RequestDone`]; each store step that
/// [`Event::IoStart`] reported ends with exactly one [`Event::IoDone`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Event {
    /// A request left the ring, was validated and is now being served.
    RequestStart {
        /// The front-end's request id.
        id: u64,
        /// Its kind.
        kind: IoKind,
        /// Its first sector (512-byte units).
        sector: u64,
        /// Its bytes (0 for a flush).
        bytes: u64,
    },
    /// A started request was answered.
    RequestDone {
        /// The front-end's request id.
        id: u64,
        /// Its kind.
        kind: IoKind,
        /// Its bytes, as at the start.
        bytes: u64,
        /// The response status (`BLKIF_RSP_*`).
        status: i16,
    },
    /// A request was answered with an error without being served (it
    /// failed validation, or the back-end had no slot for it).
    RequestRefused {
        /// The front-end's request id.
        id: u64,
        /// The wire operation it is answered with.
        operation: u8,
        /// The response status (`BLKIF_RSP_*`).
        status: i16,
    },
    /// A reqlist (one or more coalesced requests) is dispatched.
    Dispatch {
        /// Its kind.
        kind: IoKind,
        /// Its first sector (512-byte units).
        sector: u64,
        /// Its bytes.
        bytes: u64,
    },
    /// A step of a reqlist went to the store.
    IoStart {
        /// Its kind.
        kind: IoKind,
        /// Its bytes.
        bytes: u64,
    },
    /// A step the store took finished.
    IoDone {
        /// Its kind.
        kind: IoKind,
        /// Its bytes, as at the start.
        bytes: u64,
        /// How it ended.
        result: Result<(), IoError>,
    },
}

/// A connection's life, reported through [`Host::note_connection`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConnEvent {
    /// The back-end published Connected with `queues` rings.
    Connected {
        /// Rings (queues) of the connection.
        queues: u32,
    },
    /// The connection's rings were released (the front-end closed, the
    /// connection failed, or the instance is detaching).
    Disconnected,
    /// A connection could not be made or was lost: the errno of the
    /// error the back-end reports (its `error` node).
    Failed {
        /// The error's errno.
        errno: i32,
    },
}

/// What one queue's request path asks of its platform, from the queue's
/// context.
///
/// Grants are mapped into the data window: a range of back-end address
/// space the control part reserved at connect ([`Host::window_reserve`];
/// `xenmem_alloc` on FreeBSD), of which each queue owns a share. The
/// core's KVA allocator decides which pages of its share each reqlist uses;
/// the platform maps grants exactly there, so a reqlist's pages form one
/// contiguous buffer. A queue only names pages of its own share.
///
/// Event channels follow the "late EOI" discipline: after the platform ran
/// the queue for an event, that channel delivers nothing more until the
/// queue calls [`QueueHost::evtchn_eoi`]. The delay the core asks for there
/// is how a front-end that kicks without producing requests is kept from
/// spinning the back-end.
///
/// The store is asynchronous: [`QueueHost::store_submit`] queues and
/// returns; the platform later hands the completion to the queue the tag
/// names (`Queue::complete`, or `Instance::complete` inline), in that
/// queue's context. Many I/Os may be in flight at once.
pub trait QueueHost {
    /// Maps `ops` in one batched operation. `results[i]` receives the outcome
    /// of `ops[i]`; entries that failed leave nothing mapped.
    /// `results.len() == ops.len()`.
    fn map_batch(&mut self, dom: DomId, ops: &[GrantMapOp], results: &mut [MapResult]);
    /// Unmaps `ops` in one batched operation.
    fn unmap_batch(&mut self, ops: &[GrantUnmapOp]);
    /// Copies the first `out.len() / grefs.len()` rounded-up bytes of each
    /// page of `from` into `out`, page `i` to `out[i * PAGE_SIZE..]`
    /// (`GNTTABOP_copy` from the front-end's frames): the private copy of
    /// indirect segment pages. `out.len()` is at most
    /// `from.grefs.len() * PAGE_SIZE`. Either everything is copied or `Err`.
    fn copy_in(&mut self, from: Granted<'_>, out: &mut [u8]) -> Result<(), GrantError>;
    /// Sends an event to the front-end on `queue`'s channel.
    fn evtchn_notify(&mut self, queue: QueueId);
    /// The event that made the platform run `queue` has been handled:
    /// re-enable delivery on its channel, after `delay_ms` milliseconds when
    /// that is not 0 (an event that arrives meanwhile is kept pending, not
    /// lost).
    fn evtchn_eoi(&mut self, queue: QueueId, delay_ms: u32);
    /// Queues one I/O. An `Err` means it was not queued and no completion
    /// will come for `tag`.
    fn store_submit(&mut self, tag: IoTag, op: IoOp<'_>) -> Result<(), IoError>;
    /// Asks the platform to run `queue` again soon, from the queue's
    /// context (used when one pass hit its budget).
    fn schedule_run(&mut self, queue: QueueId);
    /// A monotonic clock in milliseconds (any origin): persistent grants
    /// left unused for `hw.xbb.persistent_grant_idle_ms` are unmapped.
    fn now_ms(&self) -> u64;
    /// Something happened on the request path, for the platform's
    /// observers (devstat(9), DTrace). Called in the queue's context; must
    /// not allocate or block. The default does nothing. Called only while
    /// [`QueueHost::observes`] says `true`.
    fn note(&mut self, ev: Event) {
        let _ = ev;
    }
    /// Whether [`QueueHost::note`] does anything: a platform that
    /// overrides `note` says `true` here. With `false` (the default, as
    /// `note`'s) the queue neither builds the events nor calls `note`:
    /// asked once per entry into the queue, not once per event.
    fn observes(&self) -> bool {
        false
    }
}

/// What the control part of an instance asks of its platform, from the
/// control context.
pub trait Host: XenStore {
    /// Reserves a data window of `pages` pages (every queue's share).
    /// Fallible; called at connect.
    fn window_reserve(&mut self, pages: u32) -> Result<(), GrantError>;
    /// Releases the data window. Everything in it has been unmapped and
    /// every queue is home.
    fn window_release(&mut self);
    /// Maps the shared-ring pages `ring` (in order) of queue `queue`
    /// contiguously and writable, returning access to them. One ring is
    /// mapped per queue (`multi-queue-num-queues`; queue 0 alone for a
    /// single-queue front-end).
    fn map_ring(&mut self, queue: QueueId, ring: Granted<'_>) -> Result<SharedMem, GrantError>;
    /// Unmaps the ring of `queue` mapped by [`Host::map_ring`]; `ring` is
    /// consumed.
    fn unmap_ring(&mut self, queue: QueueId, ring: SharedMem);
    /// Binds queue `queue` to the front-end's port `remote`. After this the
    /// platform runs the queue whenever the front-end kicks.
    fn evtchn_bind(&mut self, queue: QueueId, remote: RemotePort) -> Result<(), EvtchnError>;
    /// Unbinds `queue`'s channel; no more events come from it.
    fn evtchn_unbind(&mut self, queue: QueueId);
    /// Opens the store. Only called once the root file system is mounted.
    fn store_open(&mut self, params: OpenParams<'_>) -> Result<MediumInfo, OpenError>;
    /// Describes the open store (size may change while connected).
    fn store_info(&self) -> MediumInfo;
    /// Closes the store. No I/O is in flight.
    fn store_close(&mut self);

    /// Whether the root file system is mounted; before it is, the back-end
    /// opens nothing.
    fn root_mounted(&self) -> bool;

    /// Whether a vbd whose toolstack names a hotplug `script` may only
    /// connect once that script is done: it wrote `hotplug-status` =
    /// `connected`, or `physical-device-path` (FreeBSD's `block` script;
    /// [`crate::connect::hotplug_done`]). libxl
    /// waits to see the back-end in InitWait before it runs the script and
    /// reports the device added; a back-end that connects a running guest
    /// at once (a hot-attach) races past InitWait and `xl block-attach`
    /// fails. Linux's blkback cannot connect before the script anyway (it
    /// needs `physical-device`); a platform that opens `params` itself
    /// waits here instead. Its back-end directory watch must then reach
    /// `Instance::frontend_changed`.
    fn waits_for_hotplug(&self) -> bool {
        false
    }

    /// A connection event, for the platform's observers (DTrace). The
    /// default does nothing.
    fn note_connection(&mut self, ev: ConnEvent) {
        let _ = ev;
    }

    /// Memory for the in-flight journal of queue `id.queue`
    /// ([`crate::journal`]), at least [`JournalId::bytes`] long (the
    /// core asks only for an `id` whose size is `Some`), that outlives this
    /// process (a file on a tmpfs, mapped shared): with
    /// [`JournalOpen::Create`] new memory for a new connection; with
    /// [`JournalOpen::Existing`] the memory a previous back-end process
    /// left for the same vbd and queue, when there is any. `None` (the
    /// default) keeps no journal: the connection is served as ever, and
    /// cannot be taken over by another process.
    fn journal_open(&mut self, id: &JournalId, how: JournalOpen) -> Option<SharedMem> {
        let _ = (id, how);
        None
    }

    /// The connection no longer uses queue `queue`'s journal `journal`:
    /// `keep` when it was handed over (the process leaves the vbd
    /// connected for the next one to take over), else the platform
    /// removes it.
    fn journal_close(&mut self, queue: QueueId, journal: SharedMem, keep: bool) {
        let _ = (queue, journal, keep);
    }

    /// A connected queue, for the platform to run in a context of its own
    /// (`Queue::{event, run, complete}` there) until [`Host::recall`] asks
    /// for it back; the queue's first run is due at once (requests may be
    /// waiting). `Err` hands the queue back: the platform serves it inline
    /// (the default, with [`Host::inline`]); a platform that lends and
    /// could not (no thread, no memory) has the connection fail
    /// ([`ConnectError::NoMemory`](crate::connect::ConnectError::NoMemory)).
    // A queue moves once per connection each way: its size is no cost.
    #[allow(clippy::result_large_err)]
    fn lend(&mut self, queue: Queue) -> Result<(), Queue> {
        Err(queue)
    }

    /// The control part wants lent queue `queue` back (the connection is
    /// closing): its context calls `Queue::recall` until it answers `true`,
    /// delivering completions meanwhile, and then hands the queue to
    /// `Instance::give_back` in the control context. Called once per lent
    /// queue and connection.
    fn recall(&mut self, queue: QueueId) {
        let _ = queue;
    }

    /// The queue part of this same object, for a platform that serves its
    /// queues inline (lends none): the control part then runs, closes and
    /// retires them itself. `None` (the default) for a platform that lends.
    fn inline(&mut self) -> Option<&mut dyn QueueHost> {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_node_decides_file_or_device_and_the_type_only_refuses() {
        use NodeKind::*;
        assert_eq!(StoreKind::for_node(Disk, "phy"), Ok(StoreKind::Device));
        assert_eq!(StoreKind::for_node(Disk, ""), Ok(StoreKind::Device));
        assert_eq!(StoreKind::for_node(Disk, "file"), Err(OpenError::Invalid));
        for kind in ["file", "phy", "", "qdisk"] {
            assert_eq!(StoreKind::for_node(RegularFile, kind), Ok(StoreKind::File));
            assert_eq!(StoreKind::for_node(Other, kind), Err(OpenError::Invalid));
        }
    }
}
