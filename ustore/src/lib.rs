//! xbb-ustore: user-space back-end stores: the medium behind a `vbd`, for the simulated
//! host (`sim`) and the dom0 user-space platform (`xen`).
//!
//! They carry out the medium side of `io/blkif.h`'s operations —
//! `BLKIF_OP_READ`, `BLKIF_OP_WRITE`, `BLKIF_OP_FLUSH_DISKCACHE` and
//! `BLKIF_OP_DISCARD` — once the platform has turned the core's
//! [`IoOp`](xbb::host::IoOp)s (offsets in the data window) into
//! [`StoreIo`]s (addresses in this process), and report the medium's
//! `sectors`, `sector-size` and `physical-sector-size` as
//! [`MediumInfo`].
//!
//! Two kinds exist, as in FreeBSD's blkback: a regular file ([`StoreKind::File`],
//! a vnode there) and a raw device ([`StoreKind::Device`], a GEOM provider
//! there). Both serve I/O asynchronously from a small pool of worker threads
//! with `preadv`/`pwritev`, so many I/Os are in flight at once, and report
//! each completion through a [`CompletionFn`] called on the worker thread.
//! Both emulate a medium whose logical sector size is the spec's
//! `sector_size` and refuse I/O that is not aligned to it, as a disk would;
//! the device kind also refuses buffers whose addresses are not aligned to
//! it, as `O_DIRECT` does. [`IoFaults`] injects failures for tests.
//!
//! Discard (`BLKIF_OP_DISCARD`, with `BLKIF_DISCARD_SECURE`) is a punched
//! hole in a file and `BLKDISCARD` / `BLKSECDISCARD` on a device; what a
//! medium can do, and its `discard-granularity` / `discard-alignment`, are
//! decided once at open (see `DiscardCaps`). [`resize_medium`] grows or
//! shrinks a medium under an open store, which sees the new size in its
//! next [`SimStore::info`].

#![deny(unsafe_code)]
#![deny(missing_docs)]
#![deny(clippy::undocumented_unsafe_blocks)]

use std::collections::VecDeque;
use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
use std::panic::{self, AssertUnwindSafe};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::{self, JoinHandle};

use xbb::host::{IoError, IoTag, MediumInfo, OpenError};
use xbb::units::Sectors;

/// Called once per successfully submitted I/O, from a worker thread, with the
/// I/O's tag and outcome.
pub type CompletionFn = Arc<dyn Fn(IoTag, Result<(), IoError>) + Send + Sync>;

/// Number of worker threads serving one store.
pub const WORKERS: usize = 4;

/// The unit of [`MediumInfo::sectors`], whatever the logical sector size.
const SECTOR_UNIT: u64 = 512;

/// One piece of an I/O buffer: `len` bytes at address `addr` of this process
/// (in the simulator, a grant page mapped into the back-end's data window).
///
/// # Caller's obligation
/// Building a [`StoreIo::Read`] or [`StoreIo::Write`] out of `RawIoVec`s and
/// handing it to [`SimStore::submit`] is a promise by the submitter: every
/// range `addr..addr + len` is mapped in this process — writable for a read,
/// readable for a write — is not accessed through Rust references while the
/// I/O runs (the store writes it behind the compiler's back), and stays
/// mapped until the completion for that I/O has been delivered (or `submit`
/// returned `Err`, in which case the store never touched it). The store
/// cannot check this; it is the one condition under which the store's raw
/// `preadv`/`pwritev` calls are sound.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RawIoVec {
    /// Start address in this process.
    pub addr: usize,
    /// Length in bytes.
    pub len: usize,
}

/// One I/O for a store. Offsets and lengths are bytes on the medium.
///
/// See [`RawIoVec`] for what the submitter of a `Read` or `Write` guarantees
/// about the buffers it names.
#[derive(Debug)]
pub enum StoreIo {
    /// Read the medium at `offset` into `iov`, in order.
    Read {
        /// Medium byte offset.
        offset: u64,
        /// Destination buffers.
        iov: Vec<RawIoVec>,
    },
    /// Write `iov`, in order, to the medium at `offset`.
    Write {
        /// Medium byte offset.
        offset: u64,
        /// Source buffers.
        iov: Vec<RawIoVec>,
    },
    /// Make every completed write durable (`fdatasync`).
    Flush,
    /// Discard `len` bytes at `offset`: the range reads as zeros afterwards
    /// on a file (a punched hole); on a device, as the device's
    /// `BLKDISCARD` leaves it.
    Discard {
        /// Medium byte offset.
        offset: u64,
        /// Length in bytes.
        len: u64,
        /// Erase securely (`BLKIF_DISCARD_SECURE`, `BLKSECDISCARD`): refused
        /// with [`IoError::NotSupported`] unless
        /// [`MediumInfo::can_secure_discard`].
        secure: bool,
    },
}

impl StoreIo {
    /// The store's form of the core's `op`: `resolve` turns window pieces
    /// into process addresses (`true`: the store writes into them, a guest
    /// READ). `None` when a piece does not resolve.
    pub fn from_op(
        op: xbb::host::IoOp<'_>,
        mut resolve: impl FnMut(&[xbb::host::IoVec], bool) -> Option<Vec<RawIoVec>>,
    ) -> Option<StoreIo> {
        use xbb::host::IoOp;
        Some(match op {
            IoOp::Read { offset, iov } => StoreIo::Read {
                offset: offset.0,
                iov: resolve(iov, true)?,
            },
            IoOp::Write { offset, iov } => StoreIo::Write {
                offset: offset.0,
                iov: resolve(iov, false)?,
            },
            IoOp::Flush => StoreIo::Flush,
            IoOp::Discard {
                offset,
                len,
                secure,
            } => StoreIo::Discard {
                offset: offset.0,
                len: len.0,
                secure,
            },
        })
    }
}

/// Submits `io` to `store`, counting it in `in_flight` until its
/// completion (whose callback decrements it); an I/O the store refused is
/// not counted. Platforms keep their window mapped while the count is not
/// zero.
pub fn submit_counted(
    store: &dyn SimStore,
    in_flight: &AtomicU64,
    tag: IoTag,
    io: StoreIo,
) -> Result<(), IoError> {
    in_flight.fetch_add(1, Ordering::AcqRel);
    store.submit(tag, io).inspect_err(|_| {
        in_flight.fetch_sub(1, Ordering::AcqRel);
    })
}

/// A user-space back-end store.
pub trait SimStore: Send + Sync {
    /// Describes the medium. The size is read again from the file or device,
    /// so a medium that grew is seen.
    fn info(&self) -> MediumInfo;

    /// Queues one I/O; its outcome arrives later through the store's
    /// [`CompletionFn`], exactly once, on a worker thread. Every failure of the I/O itself —
    /// misalignment, out of range, write to a read-only store, an error of
    /// the medium, an injected fault — arrives that way. `Err` here means the
    /// I/O was not queued and no completion will come: the store is closed
    /// ([`IoError::Gone`]).
    ///
    /// For `Read` and `Write` the caller takes on the obligation described at
    /// [`RawIoVec`].
    fn submit(&self, tag: IoTag, io: StoreIo) -> Result<(), IoError>;

    /// Stops taking I/O, waits until every queued I/O has completed (its
    /// completion has returned), and stops the workers. Idempotent. Must not
    /// be called from inside the [`CompletionFn`].
    fn close(&self);

    /// Whether the store bypasses the page cache (`O_DIRECT`).
    fn direct_io(&self) -> bool {
        false
    }
}

/// Which kind of medium a store stands for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StoreKind {
    /// A regular file (FreeBSD: a vnode).
    File,
    /// A raw device (FreeBSD: a GEOM provider or zvol): a block device, or a
    /// regular file served as one (`O_DIRECT`, aligned buffers).
    Device,
}

/// How to open a store.
#[derive(Clone, Debug)]
pub struct StoreSpec {
    /// File or device.
    pub kind: StoreKind,
    /// The file or device node.
    pub path: PathBuf,
    /// Open for writing; otherwise the store is read-only.
    pub writable: bool,
    /// The logical sector size to emulate: a power of two from 512 to 65536.
    /// A block device whose own logical sector size is larger imposes its own.
    pub sector_size: u32,
    /// Fault injection shared with the scenario, if any.
    pub faults: Option<Arc<IoFaults>>,
}

/// Counts of failures injected by an [`IoFaults`], by cause.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FaultCounters {
    /// Failures from [`IoFaults::fail_nth`].
    pub nth: u64,
    /// Failures from [`IoFaults::fail_range`].
    pub range: u64,
    /// Failures from [`IoFaults::fail_writes`].
    pub writes: u64,
    /// Failures from [`IoFaults::fail_flush`].
    pub flush: u64,
}

impl FaultCounters {
    /// All injected failures.
    pub fn total(&self) -> u64 {
        self.nth + self.range + self.writes + self.flush
    }
}

#[derive(Debug, Default)]
struct FaultState {
    /// Data I/Os (reads and writes) accepted so far.
    data_ios: u64,
    /// Armed `fail_nth` faults: (value of `data_ios` that fails, error).
    nth: Vec<(u64, IoError)>,
    /// Armed `fail_range` faults: (start, end, error), bytes, end exclusive.
    ranges: Vec<(u64, u64, IoError)>,
    writes: Option<IoError>,
    flush: Option<IoError>,
    counters: FaultCounters,
}

/// Fault injection for stores, shared between a scenario and the stores it
/// opened (interior mutability; `Send + Sync`).
///
/// Faults are decided when an I/O is submitted, in submission order, and
/// only for I/Os that are otherwise valid (aligned, in range). An I/O hit by
/// a fault is not performed: the medium is left as it was and the completion
/// carries the fault's error. When several faults match, the first of
/// `nth`, `range`, `writes`, `flush` wins and only it is counted.
#[derive(Debug, Default)]
pub struct IoFaults {
    state: Mutex<FaultState>,
}

impl IoFaults {
    /// No fault armed.
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> MutexGuard<'_, FaultState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Fails the `n`-th data I/O (read or write) submitted from now on with
    /// `err`: `n == 1` is the next one (`0` counts as `1`). One-shot; several
    /// may be armed at once.
    pub fn fail_nth(&self, n: u64, err: IoError) {
        let mut s = self.lock();
        let target = s.data_ios.saturating_add(n.max(1));
        s.nth.push((target, err));
    }

    /// Fails every read, write or discard touching bytes
    /// `byte_start..byte_end` of the medium with `err`, until [`Self::clear`].
    pub fn fail_range(&self, byte_start: u64, byte_end: u64, err: IoError) {
        self.lock().ranges.push((byte_start, byte_end, err));
    }

    /// Fails every write with `err`, until [`Self::clear`].
    pub fn fail_writes(&self, err: IoError) {
        self.lock().writes = Some(err);
    }

    /// Fails every flush with `err`, until [`Self::clear`].
    pub fn fail_flush(&self, err: IoError) {
        self.lock().flush = Some(err);
    }

    /// Disarms every fault. Counters are kept.
    pub fn clear(&self) {
        let mut s = self.lock();
        s.nth.clear();
        s.ranges.clear();
        s.writes = None;
        s.flush = None;
    }

    /// The failures injected so far.
    pub fn counters(&self) -> FaultCounters {
        self.lock().counters
    }

    /// Decides the fate of one accepted I/O.
    fn check(&self, io: &StoreIo, span: Option<(u64, u64)>) -> Option<IoError> {
        let mut s = self.lock();
        let is_data = matches!(io, StoreIo::Read { .. } | StoreIo::Write { .. });
        if is_data {
            s.data_ios = s.data_ios.saturating_add(1);
            let now = s.data_ios;
            let hit = s.nth.iter().find(|&&(at, _)| at == now).map(|&(_, e)| e);
            // Faults armed for the same I/O fire together, once.
            s.nth.retain(|&(at, _)| at > now);
            if let Some(err) = hit {
                s.counters.nth += 1;
                return Some(err);
            }
        }
        if let Some((start, end)) = span {
            let hit = s
                .ranges
                .iter()
                .find(|&&(a, b, _)| start < b && a < end)
                .map(|&(_, _, e)| e);
            if let Some(err) = hit {
                s.counters.range += 1;
                return Some(err);
            }
        }
        match io {
            StoreIo::Write { .. } => {
                let err = s.writes?;
                s.counters.writes += 1;
                Some(err)
            }
            StoreIo::Flush => {
                let err = s.flush?;
                s.counters.flush += 1;
                Some(err)
            }
            _ => None,
        }
    }
}

/// Opens the store `spec` describes; completions go to `done`.
pub fn open_store(spec: &StoreSpec, done: CompletionFn) -> Result<Box<dyn SimStore>, OpenError> {
    Ok(Box::new(BackingStore::open(spec, done)?))
}

/// The file or device behind a store, as the workers use it.
struct Medium {
    file: File,
    kind: StoreKind,
    block_device: bool,
    direct: bool,
    read_only: bool,
    /// What the medium can discard, decided once at open.
    discard: DiscardCaps,
    sector_size: u32,
    physical_sector_size: u32,
    /// Current size in bytes, a multiple of `sector_size`.
    size: AtomicU64,
}

/// What a medium can discard and how finely, as a front-end is told in
/// `discard-granularity` / `discard-alignment` / `discard-secure`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct DiscardCaps {
    /// `BLKIF_OP_DISCARD` can be served.
    discard: bool,
    /// `BLKIF_DISCARD_SECURE` can be served (only with `discard`).
    secure: bool,
    /// Bytes; a multiple of the logical sector size.
    granularity: u32,
    /// Bytes, less than `granularity`, a multiple of the sector size.
    alignment: u32,
}

impl DiscardCaps {
    /// A writable regular file (a `file` store, or a `phy` store emulated on
    /// a file). It can discard when its file system punches holes: probed by
    /// punching one byte just past the end of the file with
    /// `FALLOC_FL_KEEP_SIZE`, a range that holds no data, so the probe
    /// changes neither contents nor size. The granule is the file system's
    /// block (`st_blksize`): a hole is only ever made of whole blocks, a
    /// partial block is zeroed instead. Holes are not secure erasure (the
    /// freed blocks keep their bytes), so `secure` is never offered.
    fn of_file(file: &File, meta: &std::fs::Metadata, size: u64, sector_size: u32) -> Self {
        use std::os::unix::fs::MetadataExt;
        if !sys::punch_hole_probe(file, size) {
            return DiscardCaps::default();
        }
        DiscardCaps::new(true, false, meta.blksize(), 0, sector_size)
    }

    /// A writable block device (FreeBSD: a GEOM provider that takes
    /// `BIO_DELETE`). Relies on the Linux block layer's sysfs attributes of
    /// `/sys/dev/block/MAJ:MIN` (`Documentation/ABI/stable/sysfs-block`):
    /// `queue/discard_max_bytes` (non-zero: the device discards),
    /// `queue/discard_granularity` (bytes) and `discard_alignment` (bytes,
    /// per partition; a partition's `queue/` is its disk's). Without sysfs,
    /// `BLKDISCARD` is probed instead. Secure erase has no sysfs attribute:
    /// `BLKSECDISCARD` is probed with no range, which since Linux 5.19
    /// answers `EOPNOTSUPP` for a device without secure erase before it
    /// looks at its argument (`EFAULT` otherwise) — on older kernels it may
    /// claim support, and a secure discard then fails with `EOPNOTSUPP`,
    /// the error a front-end expects for it.
    fn of_device(file: &File, meta: &std::fs::Metadata, sector_size: u32) -> Self {
        use std::os::unix::fs::MetadataExt;
        let rdev = meta.rdev();
        let dir = PathBuf::from(std::format!(
            "/sys/dev/block/{}:{}",
            libc::major(rdev),
            libc::minor(rdev)
        ));
        let queue = if dir.join("partition").exists() {
            dir.join("../queue")
        } else {
            dir.join("queue")
        };
        let discard = match sysfs_u64(&queue.join("discard_max_bytes")) {
            Some(max) => max > 0,
            None => sys::blk_discard_probe(file, false),
        };
        if !discard {
            return DiscardCaps::default();
        }
        let secure = sys::blk_discard_probe(file, true);
        let granularity = sysfs_u64(&queue.join("discard_granularity")).unwrap_or(0);
        let alignment = sysfs_u64(&dir.join("discard_alignment")).unwrap_or(0);
        DiscardCaps::new(true, secure, granularity, alignment, sector_size)
    }

    /// Normalizes what the medium reported to what a front-end can use: the
    /// granule is rounded up to whole logical sectors (at least one), the
    /// alignment is taken modulo the granule and rounded down to whole
    /// sectors.
    fn new(discard: bool, secure: bool, granularity: u64, alignment: u64, ss: u32) -> Self {
        let ss64 = u64::from(ss);
        let granularity = granularity
            .max(ss64)
            .checked_next_multiple_of(ss64)
            .and_then(|g| u32::try_from(g).ok())
            .unwrap_or(ss);
        let g64 = u64::from(granularity);
        let alignment = alignment % g64 / ss64 * ss64;
        DiscardCaps {
            discard,
            secure: discard && secure,
            granularity,
            // Less than the granule, which is a u32.
            alignment: alignment as u32,
        }
    }
}

/// A decimal number in a sysfs attribute.
fn sysfs_u64(path: &std::path::Path) -> Option<u64> {
    std::fs::read_to_string(path).ok()?.trim().parse().ok()
}

/// Grows or shrinks the medium at `path` to `new_bytes`, as an administrator
/// does with `truncate` / `losetup -c` (FreeBSD: `truncate`, `zfs set
/// volsize`, `mdconfig -r`), while a store may have it open.
///
/// - A regular file is truncated or extended (the new part reads as zeros).
/// - A loop device has its backing file (sysfs `loop/backing_file`)
///   resized and is told to re-read it (`LOOP_SET_CAPACITY`).
/// - Any other block device cannot be resized here: `EOPNOTSUPP`.
///
/// Returns the medium's new size in bytes as the medium reports it (a loop
/// device rounds down to whole 512-byte sectors). An open store sees the
/// new size the next time it is asked for its [`SimStore::info`] (until
/// then, after a shrink, I/O between the new and the old end may still be
/// accepted, and a write there extends a file again); telling the back-end
/// (`TaskEvent::MediumChanged`, on which it asks at once) is the caller's
/// business.
pub fn resize_medium(path: &std::path::Path, new_bytes: u64) -> io::Result<u64> {
    use std::os::unix::fs::MetadataExt;
    let meta = std::fs::metadata(path)?;
    let ft = meta.file_type();
    if ft.is_file() {
        let f = OpenOptions::new().write(true).open(path)?;
        f.set_len(new_bytes)?;
        return Ok(f.metadata()?.len());
    }
    if !ft.is_block_device() {
        return Err(io::Error::from_raw_os_error(libc::EINVAL));
    }
    let rdev = meta.rdev();
    // LOOP_MAJOR in linux/major.h.
    if libc::major(rdev) != 7 {
        return Err(io::Error::from_raw_os_error(libc::EOPNOTSUPP));
    }
    let attr = std::format!(
        "/sys/dev/block/{}:{}/loop/backing_file",
        libc::major(rdev),
        libc::minor(rdev)
    );
    let backing = std::fs::read_to_string(attr)?;
    let backing = backing.trim_end_matches('\n');
    if backing.is_empty() || backing.ends_with(" (deleted)") {
        return Err(io::Error::from_raw_os_error(libc::ENXIO));
    }
    OpenOptions::new()
        .write(true)
        .open(backing)?
        .set_len(new_bytes)?;
    let dev = OpenOptions::new().read(true).write(true).open(path)?;
    sys::loop_set_capacity(&dev).map_err(io::Error::from_raw_os_error)?;
    sys::blk_size(&dev).map_err(io::Error::from_raw_os_error)
}

struct Queue {
    jobs: VecDeque<Job>,
    /// Queued plus running I/Os whose completion has not returned yet.
    in_flight: usize,
    closing: bool,
    stop: bool,
}

struct Job {
    tag: IoTag,
    io: StoreIo,
    /// Decided at submission: refused (misaligned, ...) or an injected fault.
    outcome: Option<IoError>,
}

struct Shared {
    medium: Medium,
    faults: Option<Arc<IoFaults>>,
    done: CompletionFn,
    queue: Mutex<Queue>,
    /// Workers wait here for jobs.
    work: Condvar,
    /// `close` waits here for `in_flight` to reach zero.
    idle: Condvar,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Queue> {
        self.queue.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// A file or device store served by [`WORKERS`] threads; what
/// [`open_store`] returns, boxed.
pub struct BackingStore {
    shared: Arc<Shared>,
    workers: Mutex<Vec<JoinHandle<()>>>,
}

impl core::fmt::Debug for BackingStore {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        let m = &self.shared.medium;
        f.debug_struct("BackingStore")
            .field("kind", &m.kind)
            .field("direct", &m.direct)
            .field("sector_size", &m.sector_size)
            .field("size", &m.size.load(Ordering::Relaxed))
            .finish()
    }
}

fn open_error(e: &io::Error) -> OpenError {
    match e.raw_os_error() {
        Some(libc::ENOENT) | Some(libc::ENOTDIR) => OpenError::NotFound,
        Some(libc::EACCES) | Some(libc::EPERM) | Some(libc::EROFS) => OpenError::Denied,
        Some(libc::EISDIR) => OpenError::Invalid,
        Some(errno) => OpenError::Other(errno),
        None => OpenError::Other(libc::EIO),
    }
}

fn io_error(errno: i32) -> IoError {
    match errno {
        libc::ENXIO | libc::ENODEV => IoError::Gone,
        libc::EOPNOTSUPP => IoError::NotSupported,
        libc::ENOSPC | libc::EDQUOT => IoError::NoSpace,
        libc::EAGAIN | libc::ENOMEM => IoError::Busy,
        _ => IoError::Io,
    }
}

fn open_file(spec: &StoreSpec, direct: bool) -> io::Result<File> {
    let mut opts = OpenOptions::new();
    opts.read(true).write(spec.writable);
    if direct {
        opts.custom_flags(libc::O_DIRECT);
    }
    opts.open(&spec.path)
}

impl BackingStore {
    /// Opens the store `spec` describes and starts its workers.
    pub fn open(spec: &StoreSpec, done: CompletionFn) -> Result<Self, OpenError> {
        let ss = spec.sector_size;
        if !ss.is_power_of_two() || !(512..=65536).contains(&ss) {
            return Err(OpenError::Invalid);
        }
        // Look before opening: opening a FIFO would block.
        let ft = std::fs::metadata(&spec.path)
            .map_err(|e| open_error(&e))?
            .file_type();
        let acceptable = match spec.kind {
            StoreKind::File => ft.is_file(),
            StoreKind::Device => ft.is_file() || ft.is_block_device(),
        };
        if !acceptable {
            return Err(OpenError::Invalid);
        }
        let want_direct = spec.kind == StoreKind::Device;
        let (mut file, mut direct) = match open_file(spec, want_direct) {
            Ok(f) => (f, want_direct),
            // The filesystem refuses O_DIRECT: serve it buffered.
            Err(e) if want_direct && e.raw_os_error() == Some(libc::EINVAL) => {
                (open_file(spec, false).map_err(|e| open_error(&e))?, false)
            }
            Err(e) => return Err(open_error(&e)),
        };
        let meta = file.metadata().map_err(|e| open_error(&e))?;
        let block_device = meta.file_type().is_block_device();
        if !(meta.file_type().is_file() || block_device && spec.kind == StoreKind::Device) {
            return Err(OpenError::Invalid);
        }
        if direct && !block_device {
            // O_DIRECT on a file is only usable if the filesystem's direct
            // I/O alignment divides the emulated sector size.
            let usable = match sys::dio_alignment(&file) {
                Some((mem, off)) => off != 0 && ss % off == 0 && mem != 0 && ss % mem == 0,
                None => true,
            };
            if !usable {
                file = open_file(spec, false).map_err(|e| open_error(&e))?;
                direct = false;
            }
        }
        let (size, sector_size, physical_sector_size) = if block_device {
            let size = sys::blk_size(&file).map_err(OpenError::Other)?;
            let (lss, pss) = sys::blk_sector_sizes(&file).map_err(OpenError::Other)?;
            let sector_size = ss.max(lss);
            (size, sector_size, sector_size.max(pss))
        } else {
            (meta.len(), ss, ss)
        };
        if size % u64::from(sector_size) != 0 {
            return Err(OpenError::Invalid);
        }
        let read_only = !spec.writable;
        let discard = if read_only {
            DiscardCaps::default()
        } else if block_device {
            DiscardCaps::of_device(&file, &meta, sector_size)
        } else {
            DiscardCaps::of_file(&file, &meta, size, sector_size)
        };
        let medium = Medium {
            file,
            kind: spec.kind,
            block_device,
            direct,
            read_only,
            discard,
            sector_size,
            physical_sector_size,
            size: AtomicU64::new(size),
        };
        let shared = Arc::new(Shared {
            medium,
            faults: spec.faults.clone(),
            done,
            queue: Mutex::new(Queue {
                jobs: VecDeque::new(),
                in_flight: 0,
                closing: false,
                stop: false,
            }),
            work: Condvar::new(),
            idle: Condvar::new(),
        });
        let mut workers = Vec::with_capacity(WORKERS);
        for i in 0..WORKERS {
            let sh = Arc::clone(&shared);
            let spawned = thread::Builder::new()
                .name(std::format!("xbb-store-{i}"))
                .spawn(move || worker(&sh));
            match spawned {
                Ok(h) => workers.push(h),
                Err(e) => {
                    let store = BackingStore {
                        shared,
                        workers: Mutex::new(workers),
                    };
                    store.close();
                    return Err(OpenError::Other(e.raw_os_error().unwrap_or(libc::EAGAIN)));
                }
            }
        }
        Ok(BackingStore {
            shared,
            workers: Mutex::new(workers),
        })
    }

    /// Whether I/O bypasses the page cache (`O_DIRECT`); always false for a
    /// file store, false for a device store whose filesystem refused it.
    pub fn direct_io(&self) -> bool {
        self.shared.medium.direct
    }

    /// Checks an I/O against the medium: alignment, range, mode. Returns the
    /// byte span it touches.
    fn validate(&self, io: &StoreIo) -> Result<Option<(u64, u64)>, IoError> {
        let m = &self.shared.medium;
        let ss = u64::from(m.sector_size);
        let size = m.size.load(Ordering::Relaxed);
        let span = |offset: u64, len: u64| -> Result<(u64, u64), IoError> {
            if offset % ss != 0 || len % ss != 0 {
                return Err(IoError::Io);
            }
            let end = offset.checked_add(len).ok_or(IoError::Io)?;
            // Past the size seen last: the medium may have grown since
            // (a resize the core has not asked `info` about yet).
            if end <= size || m.refresh_size().is_some_and(|now| end <= now) {
                Ok((offset, end))
            } else {
                Err(IoError::Io)
            }
        };
        match io {
            StoreIo::Read { offset, iov } | StoreIo::Write { offset, iov } => {
                if matches!(io, StoreIo::Write { .. }) && m.read_only {
                    return Err(IoError::Io);
                }
                let mut total: u64 = 0;
                for v in iov {
                    let len = v.len as u64;
                    if len % ss != 0 || (len != 0 && v.addr == 0) {
                        return Err(IoError::Io);
                    }
                    if m.kind == StoreKind::Device && v.addr as u64 % ss != 0 {
                        return Err(IoError::Io);
                    }
                    if v.addr.checked_add(v.len).is_none() {
                        return Err(IoError::Io);
                    }
                    total = total.checked_add(len).ok_or(IoError::Io)?;
                }
                span(*offset, total).map(Some)
            }
            StoreIo::Flush => Ok(None),
            StoreIo::Discard {
                offset,
                len,
                secure,
            } => {
                if m.read_only {
                    return Err(IoError::Io);
                }
                let s = span(*offset, *len)?;
                if !m.discard.discard || (*secure && !m.discard.secure) {
                    return Err(IoError::NotSupported);
                }
                Ok(Some(s))
            }
        }
    }
}

impl Medium {
    fn execute(&self, io: &StoreIo) -> Result<(), IoError> {
        let r = match io {
            StoreIo::Read { offset, iov } => sys::read_all(&self.file, iov, *offset),
            StoreIo::Write { offset, iov } => sys::write_all(&self.file, iov, *offset),
            StoreIo::Flush => sys::fdatasync(&self.file),
            StoreIo::Discard { len: 0, .. } => Ok(()),
            StoreIo::Discard {
                offset,
                len,
                secure,
            } if self.block_device => sys::blk_discard(&self.file, *offset, *len, *secure),
            // A file never takes a secure discard (`validate` refused it).
            StoreIo::Discard { offset, len, .. } => sys::punch_hole(&self.file, *offset, *len),
        };
        r.map_err(io_error)
    }

    /// Re-reads the size from the file or device and remembers it.
    fn refresh_size(&self) -> Option<u64> {
        let size = self.current_size()?;
        self.size.store(size, Ordering::Relaxed);
        Some(size)
    }

    /// The current size in bytes, rounded down to whole sectors.
    fn current_size(&self) -> Option<u64> {
        let size = if self.block_device {
            sys::blk_size(&self.file).ok()?
        } else {
            self.file.metadata().ok()?.len()
        };
        Some(size - size % u64::from(self.sector_size))
    }
}

fn worker(sh: &Shared) {
    loop {
        let job = {
            let mut q = sh.lock();
            loop {
                if let Some(job) = q.jobs.pop_front() {
                    break job;
                }
                if q.stop {
                    return;
                }
                q = sh.work.wait(q).unwrap_or_else(|e| e.into_inner());
            }
        };
        let result = match job.outcome {
            Some(err) => Err(err),
            None => sh.medium.execute(&job.io),
        };
        // The buffers are released to the submitter by the completion.
        drop(job.io);
        // A panicking completion is reported by the panic hook; catching it
        // keeps the worker serving and `in_flight` exact, so `close` cannot
        // hang on it.
        let _ = panic::catch_unwind(AssertUnwindSafe(|| (sh.done)(job.tag, result)));
        let mut q = sh.lock();
        q.in_flight -= 1;
        if q.in_flight == 0 {
            sh.idle.notify_all();
        }
    }
}

impl SimStore for BackingStore {
    fn info(&self) -> MediumInfo {
        let m = &self.shared.medium;
        let size = m
            .refresh_size()
            .unwrap_or_else(|| m.size.load(Ordering::Relaxed));
        MediumInfo {
            sectors: Sectors(size / SECTOR_UNIT),
            sector_size: m.sector_size,
            physical_sector_size: m.physical_sector_size,
            read_only: m.read_only,
            can_flush: true,
            can_discard: m.discard.discard,
            can_secure_discard: m.discard.secure,
            discard_granularity: m.discard.granularity,
            discard_alignment: m.discard.alignment,
            is_device: m.kind == StoreKind::Device,
        }
    }

    fn submit(&self, tag: IoTag, io: StoreIo) -> Result<(), IoError> {
        let sh = &*self.shared;
        let mut q = sh.lock();
        if q.closing {
            return Err(IoError::Gone);
        }
        let outcome = match self.validate(&io) {
            Err(e) => Some(e),
            Ok(span) => sh.faults.as_ref().and_then(|f| f.check(&io, span)),
        };
        q.jobs.push_back(Job { tag, io, outcome });
        q.in_flight += 1;
        drop(q);
        sh.work.notify_one();
        Ok(())
    }

    fn close(&self) {
        let sh = &*self.shared;
        {
            let mut q = sh.lock();
            q.closing = true;
            while q.in_flight > 0 {
                q = sh.idle.wait(q).unwrap_or_else(|e| e.into_inner());
            }
            q.stop = true;
        }
        sh.work.notify_all();
        let handles = core::mem::take(&mut *self.workers.lock().unwrap_or_else(|e| e.into_inner()));
        let me = thread::current().id();
        for h in handles {
            if h.thread().id() != me {
                // A worker that panicked has nothing left to clean up.
                let _ = h.join();
            }
        }
    }

    fn direct_io(&self) -> bool {
        BackingStore::direct_io(self)
    }
}

impl Drop for BackingStore {
    fn drop(&mut self) {
        self.close();
    }
}

/// The system calls behind the stores: the only `unsafe` of this module.
///
/// The buffer functions are safe to call only because every [`RawIoVec`]
/// reaching them comes from a [`StoreIo`] whose submitter took on the
/// obligation written at [`RawIoVec`]: the ranges are mapped, with the right
/// access, and nobody holds Rust references into them until the completion.
mod sys {
    #![allow(unsafe_code)]

    use super::RawIoVec;
    use std::fs::File;
    use std::io;
    use std::os::fd::AsRawFd;

    /// `BLKGETSIZE64` from `linux/fs.h`: size of a block device in bytes.
    const BLKGETSIZE64: libc::Ioctl = libc::_IOR::<libc::size_t>(0x12, 114);
    /// `BLKDISCARD` from `linux/fs.h`: discard a `[offset, len]` range.
    const BLKDISCARD: libc::Ioctl = libc::_IO(0x12, 119);
    /// `BLKSECDISCARD` from `linux/fs.h`: securely erase a `[offset, len]`
    /// range.
    const BLKSECDISCARD: libc::Ioctl = libc::_IO(0x12, 125);
    /// `LOOP_SET_CAPACITY` from `linux/loop.h`.
    const LOOP_SET_CAPACITY: libc::Ioctl = 0x4C07;
    /// Linux's `UIO_MAXIOV`: most iovecs one `preadv`/`pwritev` accepts.
    const IOV_MAX: usize = 1024;

    fn errno() -> i32 {
        io::Error::last_os_error()
            .raw_os_error()
            .unwrap_or(libc::EIO)
    }

    fn iovecs(iov: &[RawIoVec]) -> Vec<libc::iovec> {
        iov.iter()
            .filter(|v| v.len != 0)
            .map(|v| libc::iovec {
                iov_base: v.addr as *mut libc::c_void,
                iov_len: v.len,
            })
            .collect()
    }

    /// Consumes `n` transferred bytes from the front of `vecs[*idx..]`.
    fn advance(vecs: &mut [libc::iovec], idx: &mut usize, mut n: usize) {
        while n > 0 && *idx < vecs.len() {
            let v = &mut vecs[*idx];
            if n >= v.iov_len {
                n -= v.iov_len;
                *idx += 1;
            } else {
                v.iov_base = (v.iov_base as usize + n) as *mut libc::c_void;
                v.iov_len -= n;
                n = 0;
            }
        }
    }

    /// Reads the whole of `iov` from `offset`, looping over short reads. A
    /// read that hits end of file fills the rest with zeros (the caller
    /// checked the range lies inside the medium).
    pub(super) fn read_all(file: &File, iov: &[RawIoVec], offset: u64) -> Result<(), i32> {
        transfer(file, iov, offset, false)
    }

    /// Writes the whole of `iov` at `offset`, looping over short writes.
    pub(super) fn write_all(file: &File, iov: &[RawIoVec], offset: u64) -> Result<(), i32> {
        transfer(file, iov, offset, true)
    }

    fn transfer(file: &File, iov: &[RawIoVec], offset: u64, write: bool) -> Result<(), i32> {
        let fd = file.as_raw_fd();
        let mut vecs = iovecs(iov);
        let mut idx = 0;
        let mut pos = offset;
        while idx < vecs.len() {
            let rest = &vecs[idx..];
            let cnt = rest.len().min(IOV_MAX) as libc::c_int;
            let off = libc::off_t::try_from(pos).map_err(|_| libc::EINVAL)?;
            let n = if write {
                // SAFETY: `rest` holds `cnt` valid iovecs; each names memory
                // the submitter keeps mapped and readable until completion
                // (RawIoVec's contract), so the kernel only reads it.
                unsafe { libc::pwritev(fd, rest.as_ptr(), cnt, off) }
            } else {
                // SAFETY: as above, with the memory writable and not
                // referenced by Rust code while the I/O runs, so the kernel
                // may store into it.
                unsafe { libc::preadv(fd, rest.as_ptr(), cnt, off) }
            };
            if n < 0 {
                match errno() {
                    libc::EINTR => continue,
                    e => return Err(e),
                }
            }
            if n == 0 {
                if write {
                    return Err(libc::EIO);
                }
                // End of file inside the medium: the rest reads as zeros.
                for v in &vecs[idx..] {
                    // SAFETY: `v` is (the remainder of) one of the
                    // submitter's writable buffers, mapped and unreferenced
                    // until completion by RawIoVec's contract.
                    unsafe { core::ptr::write_bytes(v.iov_base as *mut u8, 0, v.iov_len) };
                }
                return Ok(());
            }
            let n = n as usize;
            advance(&mut vecs, &mut idx, n);
            pos += n as u64;
        }
        Ok(())
    }

    /// `fdatasync(2)`.
    pub(super) fn fdatasync(file: &File) -> Result<(), i32> {
        loop {
            // SAFETY: plain system call on a descriptor `file` owns.
            if unsafe { libc::fdatasync(file.as_raw_fd()) } == 0 {
                return Ok(());
            }
            match errno() {
                libc::EINTR => continue,
                e => return Err(e),
            }
        }
    }

    fn fallocate_punch(file: &File, offset: u64, len: u64) -> Result<(), i32> {
        let off = libc::off_t::try_from(offset).map_err(|_| libc::EINVAL)?;
        let len = libc::off_t::try_from(len).map_err(|_| libc::EINVAL)?;
        let mode = libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE;
        loop {
            // SAFETY: plain system call on a descriptor `file` owns; it
            // touches no memory of this process.
            if unsafe { libc::fallocate(file.as_raw_fd(), mode, off, len) } == 0 {
                return Ok(());
            }
            match errno() {
                libc::EINTR => continue,
                e => return Err(e),
            }
        }
    }

    /// Deallocates `len` bytes at `offset` of a file, keeping its size; the
    /// range then reads as zeros.
    pub(super) fn punch_hole(file: &File, offset: u64, len: u64) -> Result<(), i32> {
        fallocate_punch(file, offset, len)
    }

    /// Whether the file's filesystem can punch holes: punches one byte just
    /// past the end of the file, which holds no data and keeps the size.
    pub(super) fn punch_hole_probe(file: &File, size: u64) -> bool {
        fallocate_punch(file, size, 1).is_ok()
    }

    /// `BLKDISCARD` (or, when `secure`, `BLKSECDISCARD`) of `len` bytes at
    /// `offset`.
    pub(super) fn blk_discard(file: &File, offset: u64, len: u64, secure: bool) -> Result<(), i32> {
        let range: [u64; 2] = [offset, len];
        let req = if secure { BLKSECDISCARD } else { BLKDISCARD };
        // SAFETY: both requests read two u64 from the pointer, which points
        // to `range`, alive for the call.
        let r = unsafe { libc::ioctl(file.as_raw_fd(), req, range.as_ptr()) };
        if r == 0 {
            Ok(())
        } else {
            Err(errno())
        }
    }

    /// Whether the device takes `BLKDISCARD` (`BLKSECDISCARD` when
    /// `secure`): issues it with a null range pointer. The kernel checks
    /// that the device supports the operation before it copies the range,
    /// so the answer is `EFAULT` when it does and `EOPNOTSUPP` when it does
    /// not; nothing is discarded either way. Only meaningful on a
    /// descriptor open for writing (stores opened read-only discard
    /// nothing and are not probed).
    pub(super) fn blk_discard_probe(file: &File, secure: bool) -> bool {
        let req = if secure { BLKSECDISCARD } else { BLKDISCARD };
        let none: *const u64 = core::ptr::null();
        // SAFETY: the kernel validates the user pointer it is given; a null
        // one makes the copy of the range fail with EFAULT, so no memory of
        // this process is read or written.
        let r = unsafe { libc::ioctl(file.as_raw_fd(), req, none) };
        r != 0 && errno() == libc::EFAULT
    }

    /// `LOOP_SET_CAPACITY`: a loop device re-reads its backing file's size.
    pub(super) fn loop_set_capacity(dev: &File) -> Result<(), i32> {
        // SAFETY: LOOP_SET_CAPACITY takes no argument and touches no memory
        // of this process.
        let r = unsafe { libc::ioctl(dev.as_raw_fd(), LOOP_SET_CAPACITY, 0 as libc::c_ulong) };
        if r == 0 {
            Ok(())
        } else {
            Err(errno())
        }
    }

    /// `BLKGETSIZE64`: a block device's size in bytes.
    pub(super) fn blk_size(file: &File) -> Result<u64, i32> {
        let mut size: u64 = 0;
        // SAFETY: BLKGETSIZE64 stores one u64 (size_t on 64-bit Linux; the
        // request number encodes size_t) through the pointer to `size`.
        let r = unsafe { libc::ioctl(file.as_raw_fd(), BLKGETSIZE64, &mut size as *mut u64) };
        if r == 0 {
            Ok(size)
        } else {
            Err(errno())
        }
    }

    /// `BLKSSZGET` and `BLKPBSZGET`: logical and physical sector sizes.
    pub(super) fn blk_sector_sizes(file: &File) -> Result<(u32, u32), i32> {
        let mut logical: libc::c_int = 0;
        let mut physical: libc::c_uint = 0;
        // SAFETY: BLKSSZGET stores one int through the pointer to `logical`.
        let r = unsafe {
            libc::ioctl(
                file.as_raw_fd(),
                libc::BLKSSZGET,
                &mut logical as *mut libc::c_int,
            )
        };
        if r != 0 {
            return Err(errno());
        }
        // SAFETY: BLKPBSZGET stores one unsigned int through the pointer to
        // `physical`.
        let r = unsafe {
            libc::ioctl(
                file.as_raw_fd(),
                libc::BLKPBSZGET,
                &mut physical as *mut libc::c_uint,
            )
        };
        if r != 0 {
            return Err(errno());
        }
        let logical = u32::try_from(logical).map_err(|_| libc::EINVAL)?;
        if !logical.is_power_of_two() || logical < 512 {
            return Err(libc::EINVAL);
        }
        let physical = if physical.is_power_of_two() && physical >= logical {
            physical
        } else {
            logical
        };
        Ok((logical, physical))
    }

    /// `statx(STATX_DIOALIGN)`: the (memory, offset) alignment direct I/O on
    /// this file needs; `(0, 0)` when the file does not support direct I/O,
    /// `None` when the kernel does not say.
    pub(super) fn dio_alignment(file: &File) -> Option<(u32, u32)> {
        let mut st = core::mem::MaybeUninit::<libc::statx>::zeroed();
        // SAFETY: `st` is a writable statx buffer alive for the call; the
        // empty path with AT_EMPTY_PATH names the descriptor itself.
        let r = unsafe {
            libc::statx(
                file.as_raw_fd(),
                c"".as_ptr(),
                libc::AT_EMPTY_PATH,
                libc::STATX_DIOALIGN,
                st.as_mut_ptr(),
            )
        };
        if r != 0 {
            return None;
        }
        // SAFETY: statx succeeded and filled the buffer; it was zeroed
        // before, and every field of statx is an integer.
        let st = unsafe { st.assume_init() };
        if st.stx_mask & libc::STATX_DIOALIGN == 0 {
            return None;
        }
        Some((st.stx_dio_mem_align, st.stx_dio_offset_align))
    }
}
