//! xbb-ustore: the user-space stores of xbb — the file or raw device behind
//! a `vbd` — for the lab's simulated host and for xbb-serve in a real dom0.
//!
//! They carry out the medium side of `io/blkif.h`'s operations —
//! `BLKIF_OP_READ`, `BLKIF_OP_WRITE`, `BLKIF_OP_FLUSH_DISKCACHE` and
//! `BLKIF_OP_DISCARD` — and report the medium's `sectors`, `sector-size` and
//! `physical-sector-size` as [`MediumInfo`].
//!
//! - [`HostStore`] is what a platform's `Host` delegates to: it opens an
//!   instance's store by the one file-or-device rule of the core
//!   ([`StoreKind::for_node`]), turns the core's [`IoOp`](xbb::host::IoOp)s
//!   (offsets in the data window) into [`StoreIo`]s (addresses in this
//!   process) and counts what is in flight.
//! - A store ([`UserStore`], opened by [`open_store`]) serves I/O with one
//!   of two engines ([`IoEngine`]): through an io_uring driven by the
//!   platform's queue thread ([`UringStore`]: submitted in one system call
//!   per pass, reaped in the thread's own poll loop, completions delivered
//!   on it), or from a pool of worker threads ([`BackingStore`]) with
//!   `preadv` / `pwritev`, reporting each completion through a
//!   [`CompletionFn`] called on the worker thread. The pool is the
//!   fallback when io_uring cannot be set up. It emulates a
//!   medium whose logical sector size is the spec's `sector_size` and
//!   refuses I/O that is not aligned to it, as a disk would; a device store
//!   also refuses buffers not aligned to it, as `O_DIRECT` does.
//! - The medium's node decides its size, sectors and discard: a regular
//!   file (hole punching; `file.rs`) or a block device (`BLKDISCARD`,
//!   `BLKSECDISCARD`; `device.rs`). A new kind of medium is one such file
//!   plus its case in the conformance suite.
//! - A target that is an NBD URI ([`is_nbd_uri`]) is served by an
//!   [`NbdStore`] instead (`nbd.rs`): an NBD export through libnbd, loaded
//!   at run time (`nbd_sys.rs`), with one I/O thread per store that
//!   pipelines the commands and reports through the same [`CompletionFn`].
//!   Memory a store sets aside for guest data is reported to the process's
//!   watcher, if it installed one ([`watch_store_memory`]).
//! - [`JournalFiles`] keeps the core's in-flight journals as files mapped
//!   shared, so that a back-end process that dies leaves its rings to the
//!   next one (issue 16).
//! - [`IoFaults`] injects failures for tests; [`resize_medium`] grows or
//!   shrinks a medium under an open store, which sees the new size in its
//!   next [`UserStore::info`].
//! - [`WriteCache`] puts a disk's volatile write cache in front of a store
//!   ([`StoreSpec::cache`]): writes acknowledged before they are durable,
//!   flushes that make them so, power cuts that lose what is not (and
//!   keep any part of it), for crash-consistency tests.

#![deny(unsafe_code)]
#![deny(missing_docs)]
#![deny(clippy::undocumented_unsafe_blocks)]

use std::path::PathBuf;
use std::sync::Arc;

use xbb::host::{IoError, IoTag, MediumInfo, OpenError};

mod cache;
mod device;
mod faults;
mod file;
mod host_store;
mod io;
mod jobs;
mod journal;
mod lend;
mod medium;
mod nbd;
#[allow(unsafe_code)]
mod nbd_sys;
mod pool;
#[allow(unsafe_code)]
mod sys;
mod uring;
#[allow(unsafe_code)]
mod uring_sys;
mod watch;

pub use cache::{CacheStats, CachedStore, WriteCache, DEFAULT_CAPACITY};
pub use faults::{FaultCounters, IoFaults};
pub use host_store::{probe, HostStore, StoreHandle};
pub use io::{submit_counted, submit_counted_ref, RawIoVec, StoreIo, StoreIoRef};
pub use journal::{
    close_journal, journal_name, parse_journal_name, InstanceJournals, JournalFiles,
};
pub use lend::{locked, spawn_queue};
pub use medium::resize_medium;
pub use nbd::{
    is_nbd_uri, libnbd_available, NbdSpec, NbdStore, CLOSE_GRACE, OPEN_TIMEOUT, QUEUE_CAPACITY,
    SLOTS as NBD_SLOTS,
};
/// libnbd's declarations as C text, for the test that compiles them
/// against `<libnbd.h>` (`ustore/tests/nbd.rs`).
#[doc(hidden)]
pub use nbd_sys::{C_CONSTANTS as NBD_C_CONSTANTS, C_PROTOTYPES as NBD_C_PROTOTYPES};
pub use pool::BackingStore;
pub use sys::{mmap_shared, monotonic_coarse_ms};
pub use uring::{UringStore, SEGMENTS as URING_SEGMENTS, SLOTS as URING_SLOTS};
pub use watch::{watch_store_memory, MemoryWatch};
pub use xbb::host::StoreKind;

/// Called once per successfully submitted I/O, with the I/O's tag and
/// outcome: on a worker thread (the pool, NBD), or on the thread that
/// reaps the io_uring store ([`UserStore::reap`], [`UserStore::close`]).
pub type CompletionFn = Arc<dyn Fn(IoTag, Result<(), IoError>) + Send + Sync>;

/// Number of worker threads serving one store.
pub const WORKERS: usize = 4;

/// What carries out a file or device store's I/O.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum IoEngine {
    /// [`WORKERS`] threads with `preadv` / `pwritev` ([`BackingStore`]).
    #[default]
    Pool,
    /// One io_uring driven by the platform's queue threads
    /// ([`UringStore`]); the store falls back to the pool when the ring
    /// cannot be set up (`ENOSYS`, `EPERM`, ...). The platform promises to
    /// call [`UserStore::kick`] after it submitted and [`UserStore::reap`]
    /// when [`UserStore::completion_fd`] is readable.
    Uring,
}

impl IoEngine {
    /// The name in configuration files and logs: `pool` or `uring`.
    pub fn name(self) -> &'static str {
        match self {
            IoEngine::Pool => "pool",
            IoEngine::Uring => "uring",
        }
    }

    /// The engine `name` ([`IoEngine::name`]) names.
    pub fn from_name(name: &str) -> Option<IoEngine> {
        match name {
            "pool" => Some(IoEngine::Pool),
            "uring" => Some(IoEngine::Uring),
            _ => None,
        }
    }
}

/// A user-space back-end store.
pub trait UserStore: Send + Sync {
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

    /// Queues one I/O whose buffer list is borrowed, as
    /// [`UserStore::submit`] does; a store that keeps the list in room of
    /// its own (the io_uring store's slots) allocates nothing. By default
    /// the list is copied (`Busy` when that memory cannot be had).
    fn submit_ref(&self, tag: IoTag, io: StoreIoRef<'_>) -> Result<(), IoError> {
        let io = io.to_owned_io().ok_or(IoError::Busy)?;
        self.submit(tag, io)
    }

    /// Stops taking I/O, waits until every queued I/O has completed (its
    /// completion has returned), and stops the workers. Idempotent. Must not
    /// be called from inside the [`CompletionFn`].
    fn close(&self);

    /// Whether the store bypasses the page cache (`O_DIRECT`).
    fn direct_io(&self) -> bool {
        false
    }

    /// What carries out the I/O.
    fn engine(&self) -> IoEngine {
        IoEngine::Pool
    }

    /// Starts the I/O submitted since the last kick, all in one system
    /// call: called by the platform once per pass. Nothing for stores with
    /// threads of their own.
    fn kick(&self) {}

    /// A descriptor that is readable while completions wait for
    /// [`UserStore::reap`]; `None` for stores that deliver on threads of
    /// their own.
    fn completion_fd(&self) -> Option<std::os::fd::RawFd> {
        None
    }

    /// Delivers the completions that are ready, on the calling thread,
    /// through the store's [`CompletionFn`], and submits what they leave
    /// to do. Must not be called from inside the [`CompletionFn`].
    fn reap(&self) {}
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
    /// A volatile write cache in front of the medium (a regular file),
    /// shared with whoever cuts its power; none: every completed write is
    /// as durable as the file system makes it.
    pub cache: Option<Arc<WriteCache>>,
    /// The engine asked for ([`IoEngine::Uring`] falls back to the pool
    /// when the ring cannot be set up; a store with a write cache is
    /// served by the pool).
    pub engine: IoEngine,
    /// Open a regular file with `O_DIRECT` too (the toolstack's
    /// `direct-io-safe`), where its file system takes it; a device store
    /// always tries. Buffers must then start on a sector.
    pub direct: bool,
}

/// What a platform's stores emulate and suffer beyond their medium: the
/// same for every store of one `vbd` ([`HostStore`] opens them so).
#[derive(Clone, Debug)]
pub struct StoreOptions {
    /// The logical sector size to emulate: a power of two from 512 to
    /// 65536 (512 unless a test asks for more). A block device whose own
    /// logical sector size is larger imposes its own.
    pub sector_size: u32,
    /// Fault injection shared with the scenario, if any.
    pub faults: Option<Arc<IoFaults>>,
    /// A volatile write cache in front of a local medium, shared with
    /// whoever cuts its power; none: every completed write is as durable
    /// as the file system makes it.
    pub cache: Option<Arc<WriteCache>>,
    /// The engine of file and device stores; [`IoEngine::Uring`] only for
    /// a platform that kicks and reaps its stores (xbb-serve).
    pub engine: IoEngine,
}

impl Default for StoreOptions {
    /// 512-byte sectors, no faults, no write cache, the worker pool.
    fn default() -> Self {
        StoreOptions {
            sector_size: 512,
            faults: None,
            cache: None,
            engine: IoEngine::Pool,
        }
    }
}

/// Opens the store `spec` describes; completions go to `done`. With
/// [`IoEngine::Uring`] asked for, a store whose ring cannot be set up is
/// served by the pool instead ([`UserStore::engine`] tells which).
pub fn open_store(spec: &StoreSpec, done: CompletionFn) -> Result<Box<dyn UserStore>, OpenError> {
    if let Some(c) = &spec.cache {
        return Ok(Box::new(CachedStore::open(spec, Arc::clone(c), done)?));
    }
    if spec.engine == IoEngine::Uring {
        if let Ok(ring) = uring::setup(spec.faults.as_deref()) {
            return Ok(Box::new(UringStore::open(spec, ring, done)?));
        }
    }
    Ok(Box::new(BackingStore::open(spec, done)?))
}

/// Opens the NBD store `spec` describes; completions go to `done`.
pub fn open_nbd_store(spec: &NbdSpec, done: CompletionFn) -> Result<Box<dyn UserStore>, OpenError> {
    Ok(Box::new(NbdStore::open(spec, done)?))
}
