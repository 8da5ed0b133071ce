//! The I/O a store carries out: the core's [`IoOp`] with its window pieces
//! turned into addresses of this process ([`RawIoVec`]).

use std::sync::atomic::{AtomicU64, Ordering};

use xbb::host::{IoError, IoOp, IoTag, IoVec};

use crate::UserStore;

/// One piece of an I/O buffer: `len` bytes at address `addr` of this process
/// (in the simulator, a grant page mapped into the back-end's data window).
///
/// # Caller's obligation
/// Building a [`StoreIo::Read`] or [`StoreIo::Write`] (or their
/// [`StoreIoRef`] forms) out of `RawIoVec`s and handing it to
/// [`UserStore::submit`] (or [`UserStore::submit_ref`]) is a promise by the
/// submitter: every
/// range `addr..addr + len` is mapped in this process — writable for a read,
/// readable for a write — is not accessed through Rust references while the
/// I/O runs (the store writes it behind the compiler's back), and stays
/// mapped until the completion for that I/O has been delivered (or `submit`
/// returned `Err`, in which case the store never touched it). The store
/// cannot check this; it is the one condition under which the store's raw
/// `preadv`/`pwritev` calls, and the io_uring entries that name the memory
/// while the kernel carries them out, are sound. A borrowed list
/// ([`StoreIoRef`]) need only live for the call: the store copies it.
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
        /// [`xbb::host::MediumInfo::can_secure_discard`].
        secure: bool,
    },
}

/// A [`StoreIo`] whose buffer is borrowed: what a platform that resolves
/// window pieces into a buffer of its own hands [`UserStore::submit_ref`]
/// (no allocation per I/O). The same obligation as [`RawIoVec`]'s.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StoreIoRef<'a> {
    /// [`StoreIo::Read`].
    Read {
        /// Medium byte offset.
        offset: u64,
        /// Destination buffers.
        iov: &'a [RawIoVec],
    },
    /// [`StoreIo::Write`].
    Write {
        /// Medium byte offset.
        offset: u64,
        /// Source buffers.
        iov: &'a [RawIoVec],
    },
    /// [`StoreIo::Flush`].
    Flush,
    /// [`StoreIo::Discard`].
    Discard {
        /// Medium byte offset.
        offset: u64,
        /// Length in bytes.
        len: u64,
        /// Erase securely.
        secure: bool,
    },
}

impl StoreIoRef<'_> {
    /// The owned form, its buffer list copied; `None` when that memory
    /// cannot be had.
    pub fn to_owned_io(self) -> Option<StoreIo> {
        let copy = |iov: &[RawIoVec]| {
            let mut v = Vec::new();
            v.try_reserve_exact(iov.len()).ok()?;
            v.extend_from_slice(iov);
            Some(v)
        };
        Some(match self {
            StoreIoRef::Read { offset, iov } => StoreIo::Read {
                offset,
                iov: copy(iov)?,
            },
            StoreIoRef::Write { offset, iov } => StoreIo::Write {
                offset,
                iov: copy(iov)?,
            },
            StoreIoRef::Flush => StoreIo::Flush,
            StoreIoRef::Discard {
                offset,
                len,
                secure,
            } => StoreIo::Discard {
                offset,
                len,
                secure,
            },
        })
    }

    /// The store's form of the core's `op`, its pieces resolved into
    /// `buf` by `resolve` (`true`: the store writes into them, a guest
    /// READ), which fails with `None`. `buf` is cleared first and is
    /// where the result borrows its pieces from.
    pub fn from_op<'b>(
        op: IoOp<'_>,
        buf: &'b mut Vec<RawIoVec>,
        resolve: impl FnOnce(&[IoVec], bool, &mut Vec<RawIoVec>) -> Option<()>,
    ) -> Option<StoreIoRef<'b>> {
        buf.clear();
        Some(match op {
            IoOp::Read { offset, iov } => {
                resolve(iov, true, buf)?;
                StoreIoRef::Read {
                    offset: offset.0,
                    iov: buf,
                }
            }
            IoOp::Write { offset, iov } => {
                resolve(iov, false, buf)?;
                StoreIoRef::Write {
                    offset: offset.0,
                    iov: buf,
                }
            }
            IoOp::Flush => StoreIoRef::Flush,
            IoOp::Discard {
                offset,
                len,
                secure,
            } => StoreIoRef::Discard {
                offset: offset.0,
                len: len.0,
                secure,
            },
        })
    }
}

impl StoreIo {
    /// The borrowed form.
    pub fn as_ref_io(&self) -> StoreIoRef<'_> {
        match self {
            StoreIo::Read { offset, iov } => StoreIoRef::Read {
                offset: *offset,
                iov,
            },
            StoreIo::Write { offset, iov } => StoreIoRef::Write {
                offset: *offset,
                iov,
            },
            StoreIo::Flush => StoreIoRef::Flush,
            StoreIo::Discard {
                offset,
                len,
                secure,
            } => StoreIoRef::Discard {
                offset: *offset,
                len: *len,
                secure: *secure,
            },
        }
    }

    /// The store's form of the core's `op`: `resolve` turns window pieces
    /// into process addresses (`true`: the store writes into them, a guest
    /// READ). `None` when a piece does not resolve.
    pub fn from_op(
        op: IoOp<'_>,
        mut resolve: impl FnMut(&[IoVec], bool) -> Option<Vec<RawIoVec>>,
    ) -> Option<StoreIo> {
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

/// Submits the borrowed `io` as [`submit_counted`] submits an owned one.
pub fn submit_counted_ref(
    store: &dyn UserStore,
    in_flight: &AtomicU64,
    tag: IoTag,
    io: StoreIoRef<'_>,
) -> Result<(), IoError> {
    in_flight.fetch_add(1, Ordering::AcqRel);
    store.submit_ref(tag, io).inspect_err(|_| {
        in_flight.fetch_sub(1, Ordering::AcqRel);
    })
}

/// Submits `io` to `store`, counting it in `in_flight` until its
/// completion (whose callback decrements it); an I/O the store refused is
/// not counted. Platforms keep their window mapped while the count is not
/// zero.
pub fn submit_counted(
    store: &dyn UserStore,
    in_flight: &AtomicU64,
    tag: IoTag,
    io: StoreIo,
) -> Result<(), IoError> {
    in_flight.fetch_add(1, Ordering::AcqRel);
    store.submit(tag, io).inspect_err(|_| {
        in_flight.fetch_sub(1, Ordering::AcqRel);
    })
}
