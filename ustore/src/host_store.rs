//! The store half of a user-space platform's [`Host`](xbb::host::Host):
//! the one type the lab's `SimHost` and xbb-serve's `XenHost` hand the
//! core's [`Store`](xbb::host::Store) calls to.
//!
//! A [`HostStore`] holds an instance's open store, chooses file or device
//! by the one rule ([`StoreKind::for_node`]), turns the core's I/O into the
//! store's through the platform's window ([`HostStore::submit`]'s
//! `resolve`), and counts the I/O in flight, which the platform reads
//! before it lets go of window memory the store may still touch.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use xbb::host::{
    IoError, IoOp, IoTag, IoVec, MediumInfo, NodeKind, OpenError, OpenParams, StoreKind,
};

use crate::{
    open_store, submit_counted, IoFaults, RawIoVec, StoreIo, StoreSpec, UserStore, WriteCache,
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
    store: Option<Box<dyn UserStore>>,
    in_flight: Arc<AtomicU64>,
    sector_size: u32,
    faults: Option<Arc<IoFaults>>,
    cache: Option<Arc<WriteCache>>,
    /// I/Os refused because a piece of their buffer did not resolve to
    /// memory mapped as the I/O needs it.
    pub bad_iovecs: u64,
    /// I/Os handed to the store.
    pub submitted: u64,
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
    /// No store open yet; stores opened will emulate `sector_size`-byte
    /// logical sectors (512 unless a test asks for more) and take their
    /// failures from `faults`.
    pub fn new(sector_size: u32, faults: Option<Arc<IoFaults>>) -> HostStore {
        HostStore {
            store: None,
            in_flight: Arc::new(AtomicU64::new(0)),
            sector_size,
            faults,
            cache: None,
            bad_iovecs: 0,
            submitted: 0,
        }
    }

    /// Stores opened from now on have `cache` in front of their medium
    /// (see [`WriteCache`]).
    pub fn with_cache(mut self, cache: Option<Arc<WriteCache>>) -> HostStore {
        self.cache = cache;
        self
    }

    /// Opens the store `params` names, whose node the platform found to be
    /// `node`, as [`StoreKind::for_node`] says (closing any store open
    /// before). Each completion goes to `done` once the I/O no longer
    /// touches its buffers.
    pub fn open(
        &mut self,
        params: OpenParams<'_>,
        node: NodeKind,
        done: impl Fn(IoTag, Result<(), IoError>) + Send + Sync + 'static,
    ) -> Result<MediumInfo, OpenError> {
        self.close();
        let spec = StoreSpec {
            kind: StoreKind::for_node(node, params.kind)?,
            path: PathBuf::from(params.path),
            writable: params.writable,
            sector_size: self.sector_size,
            faults: self.faults.clone(),
            cache: self.cache.clone(),
        };
        let in_flight = Arc::clone(&self.in_flight);
        let s = open_store(
            &spec,
            Arc::new(move |tag: IoTag, r: Result<(), IoError>| {
                in_flight.fetch_sub(1, Ordering::AcqRel);
                done(tag, r);
            }),
        )?;
        let info = s.info();
        self.store = Some(s);
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
        let Some(io) = StoreIo::from_op(op, resolve) else {
            self.bad_iovecs += 1;
            return Err(IoError::Io);
        };
        submit_counted(s.as_ref(), &self.in_flight, tag, io)?;
        self.submitted += 1;
        Ok(())
    }

    /// Closes the store: waits for every queued I/O (each completion is
    /// delivered first).
    pub fn close(&mut self) {
        if let Some(s) = self.store.take() {
            s.close();
        }
    }

    /// Whether a store is open.
    pub fn is_open(&self) -> bool {
        self.store.is_some()
    }

    /// I/Os submitted whose completion has not been delivered.
    pub fn in_flight(&self) -> u64 {
        self.in_flight.load(Ordering::Acquire)
    }
}
