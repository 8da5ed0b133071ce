//! The store half of a user-space platform's [`Host`](xbb::host::Host):
//! the one type the lab's `SimHost` and xbb-serve's `XenHost` hand the
//! core's store calls ([`Host`](xbb::host::Host), [`QueueHost`](xbb::host::QueueHost)) to.
//!
//! A [`HostStore`] holds an instance's open store, chooses what serves the
//! target (an NBD URI: an NBD store; a path: file or device by the one rule,
//! [`StoreKind::for_node`]), turns the core's I/O into the store's through
//! the platform's window ([`HostStore::submit`]'s `resolve`), and counts
//! the I/O in flight, which the platform reads before it lets go of window
//! memory the store may still touch.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use xbb::host::{
    IoError, IoOp, IoTag, IoVec, MediumInfo, NodeKind, OpenError, OpenParams, StoreKind,
};

use crate::{
    is_nbd_uri, open_nbd_store, open_store, submit_counted, submit_counted_ref, CompletionFn,
    IoEngine, NbdSpec, RawIoVec, StoreIo, StoreIoRef, StoreOptions, StoreSpec, UserStore,
};

/// What the node at `path` is.
pub fn probe(path: &Path) -> Result<NodeKind, OpenError> {
    use std::os::unix::fs::FileTypeExt;
    let ft = std::fs::metadata(path)
        .map_err(|e| crate::medium::open_error(&e))?
        .file_type();
    Ok(if ft.is_block_device() {
        NodeKind::Disk
    } else if ft.is_file() {
        NodeKind::RegularFile
    } else {
        NodeKind::Other
    })
}

/// The open store of one instance, for its platform: the one type the
/// user-space platforms (lab and serve) delegate their store calls to.
pub struct HostStore {
    store: Option<Arc<dyn UserStore>>,
    counts: Arc<Counts>,
    options: StoreOptions,
}

/// What every handle of one [`HostStore`] counts.
#[derive(Debug, Default)]
struct Counts {
    in_flight: AtomicU64,
    bad_iovecs: AtomicU64,
    submitted: AtomicU64,
}

/// A handle on an open store for one queue's context: submits to the same
/// store, counted with the others. The store stays open while handles
/// exist only as long as the platform does not close it; the platform
/// closes it once every queue is home.
#[derive(Clone)]
pub struct StoreHandle {
    store: Arc<dyn UserStore>,
    counts: Arc<Counts>,
    /// Where [`StoreHandle::submit_into`] resolves an I/O's pieces: made
    /// with the handle, room for [`crate::URING_SEGMENTS`] pieces.
    scratch: Vec<RawIoVec>,
}

impl std::fmt::Debug for StoreHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StoreHandle")
            .field("in_flight", &self.counts.in_flight.load(Ordering::Relaxed))
            .finish()
    }
}

impl StoreHandle {
    /// Queues the core's `op` as [`HostStore::submit`] does.
    pub fn submit(
        &self,
        tag: IoTag,
        op: IoOp<'_>,
        resolve: impl FnMut(&[IoVec], bool) -> Option<Vec<RawIoVec>>,
    ) -> Result<(), IoError> {
        submit_to(self.store.as_ref(), &self.counts, tag, op, resolve)
    }

    /// Queues the core's `op` as [`StoreHandle::submit`] does, but
    /// `resolve` writes the pieces into the handle's own buffer and the
    /// store takes them borrowed ([`UserStore::submit_ref`]): with the
    /// io_uring store nothing is allocated per I/O.
    pub fn submit_into(
        &mut self,
        tag: IoTag,
        op: IoOp<'_>,
        resolve: impl FnOnce(&[IoVec], bool, &mut Vec<RawIoVec>) -> Option<()>,
    ) -> Result<(), IoError> {
        let counts = &*self.counts;
        let Some(io) = StoreIoRef::from_op(op, &mut self.scratch, resolve) else {
            counts.bad_iovecs.fetch_add(1, Ordering::Relaxed);
            return Err(IoError::Io);
        };
        submit_counted_ref(self.store.as_ref(), &counts.in_flight, tag, io)?;
        counts.submitted.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    /// Starts what was submitted since the last kick ([`UserStore::kick`]):
    /// once per pass.
    pub fn kick(&self) {
        self.store.kick();
    }

    /// The descriptor to poll for completions ([`UserStore::completion_fd`]).
    pub fn completion_fd(&self) -> Option<std::os::fd::RawFd> {
        self.store.completion_fd()
    }

    /// Delivers ready completions on this thread ([`UserStore::reap`]).
    pub fn reap(&self) {
        self.store.reap();
    }

    /// What carries out the store's I/O.
    pub fn engine(&self) -> IoEngine {
        self.store.engine()
    }
}

fn submit_to(
    store: &dyn UserStore,
    counts: &Counts,
    tag: IoTag,
    op: IoOp<'_>,
    resolve: impl FnMut(&[IoVec], bool) -> Option<Vec<RawIoVec>>,
) -> Result<(), IoError> {
    let Some(io) = StoreIo::from_op(op, resolve) else {
        counts.bad_iovecs.fetch_add(1, Ordering::Relaxed);
        return Err(IoError::Io);
    };
    submit_counted(store, &counts.in_flight, tag, io)?;
    counts.submitted.fetch_add(1, Ordering::Relaxed);
    Ok(())
}

impl std::fmt::Debug for HostStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HostStore")
            .field("open", &self.is_open())
            .field("in_flight", &self.in_flight())
            .finish()
    }
}

impl HostStore {
    /// No store open yet; stores opened will be as `options` say.
    pub fn new(options: StoreOptions) -> HostStore {
        HostStore {
            store: None,
            counts: Arc::new(Counts::default()),
            options,
        }
    }

    /// Opens the store `params` names (closing any store open before): an
    /// NBD store for an NBD URI ([`is_nbd_uri`]); otherwise what `node`
    /// (the platform's [`probe`], which may see a node its own way) finds
    /// at the path decides file or device, by [`StoreKind::for_node`].
    /// Each completion goes to `done` once the I/O no longer touches its
    /// buffers.
    pub fn open(
        &mut self,
        params: OpenParams<'_>,
        node: impl FnOnce(&Path) -> Result<NodeKind, OpenError>,
        done: impl Fn(IoTag, Result<(), IoError>) + Send + Sync + 'static,
    ) -> Result<MediumInfo, OpenError> {
        self.close();
        let counts = Arc::clone(&self.counts);
        let done: CompletionFn = Arc::new(move |tag: IoTag, r: Result<(), IoError>| {
            counts.in_flight.fetch_sub(1, Ordering::AcqRel);
            done(tag, r);
        });
        let s = if is_nbd_uri(params.path) {
            // The write cache models a local medium's; an NBD export's
            // caching is the server's own.
            if self.options.cache.is_some() {
                return Err(OpenError::Invalid);
            }
            let spec = NbdSpec {
                writable: params.writable,
                sector_size: self.options.sector_size,
                faults: self.options.faults.clone(),
                ..NbdSpec::new(params.path)
            };
            open_nbd_store(&spec, done)?
        } else {
            let path = PathBuf::from(params.path);
            let spec = StoreSpec {
                kind: StoreKind::for_node(node(&path)?, params.kind)?,
                path,
                writable: params.writable,
                sector_size: self.options.sector_size,
                faults: self.options.faults.clone(),
                cache: self.options.cache.clone(),
                engine: self.options.engine,
                direct: params.direct_io_safe,
            };
            open_store(&spec, done)?
        };
        let info = s.info();
        self.store = Some(Arc::from(s));
        Ok(info)
    }

    /// The open store's description; a read-only, empty medium when none is
    /// open.
    pub fn info(&self) -> MediumInfo {
        match &self.store {
            Some(s) => s.info(),
            None => MediumInfo {
                sector_size: 512,
                physical_sector_size: 512,
                read_only: true,
                ..MediumInfo::default()
            },
        }
    }

    /// Queues the core's `op`; `resolve` turns each window piece into
    /// memory of this process mapped as the I/O needs it (`true`: the store
    /// writes it, a guest READ), or `None`.
    ///
    /// The platform's part of the [`RawIoVec`] obligation: what `resolve`
    /// returns stays mapped (or at least reserved) until the completion —
    /// the platform keeps window memory while [`HostStore::in_flight`] is
    /// not zero.
    pub fn submit(
        &mut self,
        tag: IoTag,
        op: IoOp<'_>,
        resolve: impl FnMut(&[IoVec], bool) -> Option<Vec<RawIoVec>>,
    ) -> Result<(), IoError> {
        let Some(s) = self.store.as_ref() else {
            return Err(IoError::Gone);
        };
        submit_to(s.as_ref(), &self.counts, tag, op, resolve)
    }

    /// A handle for another context to submit with, while a store is open.
    /// Its buffer for [`StoreHandle::submit_into`] is made now, fallibly
    /// (empty, growing at first use, when that memory cannot be had).
    pub fn handle(&self) -> Option<StoreHandle> {
        let mut scratch = Vec::new();
        let _ = scratch.try_reserve_exact(crate::URING_SEGMENTS);
        Some(StoreHandle {
            store: Arc::clone(self.store.as_ref()?),
            counts: Arc::clone(&self.counts),
            scratch,
        })
    }

    /// I/Os refused because a piece of their buffer did not resolve to
    /// memory mapped as the I/O needs it.
    pub fn bad_iovecs(&self) -> u64 {
        self.counts.bad_iovecs.load(Ordering::Relaxed)
    }

    /// I/Os handed to the store.
    pub fn submitted(&self) -> u64 {
        self.counts.submitted.load(Ordering::Relaxed)
    }

    /// Closes the store: waits for every queued I/O (each completion is
    /// delivered first).
    pub fn close(&mut self) {
        if let Some(s) = self.store.take() {
            s.close();
        }
    }

    /// What carries out the open store's I/O (`None`: no store open).
    pub fn engine(&self) -> Option<IoEngine> {
        self.store.as_ref().map(|s| s.engine())
    }

    /// Whether the open store bypasses the page cache (`O_DIRECT`;
    /// `None`: no store open).
    pub fn direct_io(&self) -> Option<bool> {
        self.store.as_ref().map(|s| s.direct_io())
    }

    /// Whether a store is open.
    pub fn is_open(&self) -> bool {
        self.store.is_some()
    }

    /// I/Os submitted whose completion has not been delivered.
    pub fn in_flight(&self) -> u64 {
        self.counts.in_flight.load(Ordering::Acquire)
    }
}
