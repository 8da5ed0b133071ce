//! The file or device behind a store, as its workers use it: how it is
//! opened for a [`StoreKind`], its size and sector sizes, what it can
//! discard, the checks every I/O passes, and the system calls that carry it
//! out.
//!
//! What depends on the node (a regular file or a block device) is a
//! [`Node`]: [`crate::file`] and [`crate::device`]. A new kind of medium is
//! one more file implementing [`Node`], chosen in [`Medium::open`], plus
//! its case in the conformance suite (`ustore/tests/store_conformance.rs`).

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
use std::sync::atomic::{AtomicU64, Ordering};

use xbb::host::{IoError, MediumInfo, OpenError, StoreKind};
use xbb::units::{Bytes, Sectors};

use crate::{sys, StoreIo, StoreIoRef, StoreSpec};

/// What differs between the nodes a medium can be.
pub(crate) trait Node: Send + Sync + std::fmt::Debug {
    /// The size in bytes.
    fn size(&self, file: &File) -> Result<u64, i32>;
    /// The (logical, physical) sector sizes when `emulated` is asked for.
    fn sector_sizes(&self, file: &File, emulated: u32) -> Result<(u32, u32), i32>;
    /// What a writable medium of `size` bytes with `ss`-byte sectors can
    /// discard.
    fn discard_caps(&self, file: &File, size: u64, ss: u32) -> DiscardCaps;
    /// Discards `len` bytes at `offset` (securely when `secure`).
    fn discard(&self, file: &File, offset: u64, len: u64, secure: bool) -> Result<(), i32>;
}

/// The file or device behind a store.
#[derive(Debug)]
pub(crate) struct Medium {
    pub(crate) file: File,
    pub(crate) kind: StoreKind,
    node: Box<dyn Node>,
    pub(crate) direct: bool,
    /// Buffers must start on a sector: a device, or a file opened as
    /// direct-I/O safe (whether or not its file system took `O_DIRECT`,
    /// so that what is refused does not depend on the file system).
    aligned_buffers: bool,
    pub(crate) read_only: bool,
    /// What the medium can discard, decided once at open.
    pub(crate) discard: DiscardCaps,
    pub(crate) sector_size: u32,
    pub(crate) physical_sector_size: u32,
    /// Current size in bytes, a multiple of `sector_size`.
    pub(crate) size: AtomicU64,
}

/// What a medium can discard and how finely, as a front-end is told in
/// `discard-granularity` / `discard-alignment` / `discard-secure`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct DiscardCaps {
    /// `BLKIF_OP_DISCARD` can be served.
    pub(crate) discard: bool,
    /// `BLKIF_DISCARD_SECURE` can be served (only with `discard`).
    pub(crate) secure: bool,
    /// Bytes; a multiple of the logical sector size.
    pub(crate) granularity: u32,
    /// Bytes, less than `granularity`, a multiple of the sector size.
    pub(crate) alignment: u32,
}

impl DiscardCaps {
    /// Normalizes what the medium reported to what a front-end can use: the
    /// granule is rounded up to whole logical sectors (at least one), the
    /// alignment is taken modulo the granule and rounded down to whole
    /// sectors.
    pub(crate) fn new(
        discard: bool,
        secure: bool,
        granularity: u64,
        alignment: u64,
        ss: u32,
    ) -> Self {
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
pub(crate) fn sysfs_u64(path: &std::path::Path) -> Option<u64> {
    std::fs::read_to_string(path).ok()?.trim().parse().ok()
}

pub(crate) fn open_error(e: &io::Error) -> OpenError {
    match e.raw_os_error() {
        Some(libc::ENOENT) | Some(libc::ENOTDIR) => OpenError::NotFound,
        Some(libc::EACCES) | Some(libc::EPERM) | Some(libc::EROFS) => OpenError::Denied,
        Some(libc::EISDIR) => OpenError::Invalid,
        Some(errno) => OpenError::Other(errno),
        None => OpenError::Other(libc::EIO),
    }
}

pub(crate) fn io_error(errno: i32) -> IoError {
    match errno {
        libc::ENXIO | libc::ENODEV => IoError::Gone,
        libc::EOPNOTSUPP => IoError::NotSupported,
        libc::ENOSPC | libc::EDQUOT => IoError::NoSpace,
        libc::EAGAIN | libc::ENOMEM => IoError::Busy,
        _ => IoError::Io,
    }
}

pub(crate) fn open_file(spec: &StoreSpec, direct: bool) -> io::Result<File> {
    let mut opts = OpenOptions::new();
    opts.read(true).write(spec.writable);
    if direct {
        opts.custom_flags(libc::O_DIRECT);
    }
    opts.open(&spec.path)
}

impl Medium {
    /// What the core is told of this medium, its size read afresh (a
    /// grown file or device is seen).
    pub(crate) fn info(&self) -> MediumInfo {
        let size = self
            .refresh_size()
            .unwrap_or_else(|| self.size.load(Ordering::Relaxed));
        MediumInfo {
            sectors: Sectors::from_bytes(Bytes(size)),
            sector_size: self.sector_size,
            physical_sector_size: self.physical_sector_size,
            read_only: self.read_only,
            can_flush: true,
            can_discard: self.discard.discard,
            can_secure_discard: self.discard.secure,
            discard_granularity: self.discard.granularity,
            discard_alignment: self.discard.alignment,
            is_device: self.kind == StoreKind::Device,
        }
    }

    /// Opens the medium `spec` names for its kind: a file store takes a
    /// regular file; a device store a block device, or a regular file
    /// served as one (`O_DIRECT` where the file system allows it).
    pub(crate) fn open(spec: &StoreSpec) -> Result<Medium, OpenError> {
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
        let (file, direct) = Self::open_file(spec)?;
        let meta = file.metadata().map_err(|e| open_error(&e))?;
        let node: Box<dyn Node> = if meta.file_type().is_block_device() {
            if spec.kind != StoreKind::Device {
                return Err(OpenError::Invalid);
            }
            Box::new(crate::device::BlockDevice)
        } else if meta.file_type().is_file() {
            Box::new(crate::file::RegularFile)
        } else {
            return Err(OpenError::Invalid);
        };
        let size = node.size(&file).map_err(OpenError::Other)?;
        let (sector_size, physical_sector_size) =
            node.sector_sizes(&file, ss).map_err(OpenError::Other)?;
        if size % u64::from(sector_size) != 0 {
            return Err(OpenError::Invalid);
        }
        let read_only = !spec.writable;
        let discard = if read_only {
            DiscardCaps::default()
        } else {
            node.discard_caps(&file, size, sector_size)
        };
        Ok(Medium {
            file,
            kind: spec.kind,
            node,
            direct,
            aligned_buffers: spec.kind == StoreKind::Device || spec.direct,
            read_only,
            discard,
            sector_size,
            physical_sector_size,
            size: AtomicU64::new(size),
        })
    }

    /// Opens the file, with `O_DIRECT` for a device store, or a file store
    /// the toolstack calls direct-I/O safe, when the file system takes it;
    /// returns whether it did.
    fn open_file(spec: &StoreSpec) -> Result<(File, bool), OpenError> {
        let want_direct = spec.kind == StoreKind::Device || spec.direct;
        let (file, direct) = match open_file(spec, want_direct) {
            Ok(f) => (f, want_direct),
            // The filesystem refuses O_DIRECT: serve it buffered.
            Err(e) if want_direct && e.raw_os_error() == Some(libc::EINVAL) => {
                (open_file(spec, false).map_err(|e| open_error(&e))?, false)
            }
            Err(e) => return Err(open_error(&e)),
        };
        let regular = file.metadata().is_ok_and(|m| m.file_type().is_file());
        if direct && regular {
            // O_DIRECT on a file is only usable if the filesystem's direct
            // I/O alignment divides the emulated sector size.
            let ss = spec.sector_size;
            let usable = match sys::dio_alignment(&file) {
                Some((mem, off)) => off != 0 && ss % off == 0 && mem != 0 && ss % mem == 0,
                None => true,
            };
            if !usable {
                return Ok((open_file(spec, false).map_err(|e| open_error(&e))?, false));
            }
        }
        Ok((file, direct))
    }

    pub(crate) fn execute(&self, io: &StoreIo) -> Result<(), IoError> {
        let r = match io {
            StoreIo::Read { offset, iov } => sys::read_all(&self.file, iov, *offset),
            StoreIo::Write { offset, iov } => sys::write_all(&self.file, iov, *offset),
            StoreIo::Flush => sys::fdatasync(&self.file),
            StoreIo::Discard { len: 0, .. } => Ok(()),
            StoreIo::Discard {
                offset,
                len,
                secure,
            } => self.node.discard(&self.file, *offset, *len, *secure),
        };
        r.map_err(io_error)
    }

    /// Re-reads the size from the file or device and remembers it.
    pub(crate) fn refresh_size(&self) -> Option<u64> {
        let size = self.current_size()?;
        self.size.store(size, Ordering::Relaxed);
        Some(size)
    }

    /// The current size in bytes, rounded down to whole sectors.
    fn current_size(&self) -> Option<u64> {
        let size = self.node.size(&self.file).ok()?;
        Some(size - size % u64::from(self.sector_size))
    }

    /// Checks an I/O against the medium: alignment, range, mode. Returns the
    /// byte span it touches.
    pub(crate) fn validate(&self, io: StoreIoRef<'_>) -> Result<Option<(u64, u64)>, IoError> {
        let g = Geometry {
            sector_size: self.sector_size,
            size: self.size.load(Ordering::Relaxed),
            read_only: self.read_only,
            discard: self.discard,
            aligned_buffers: self.aligned_buffers,
            can_flush: true,
        };
        // Past the size seen last: the medium may have grown since (a
        // resize the core has not asked `info` about yet).
        validate_io(io, &g, || self.refresh_size())
    }
}

/// What every store checks an I/O against.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Geometry {
    /// Logical sector size: offsets, lengths and buffer pieces are
    /// multiples of it.
    pub(crate) sector_size: u32,
    /// Size in bytes, as last seen.
    pub(crate) size: u64,
    /// Writes and discards are refused.
    pub(crate) read_only: bool,
    /// What the medium can discard.
    pub(crate) discard: DiscardCaps,
    /// Buffers must start on a sector (`O_DIRECT`).
    pub(crate) aligned_buffers: bool,
    /// Flushes can be served.
    pub(crate) can_flush: bool,
}

/// Checks `io` against `g`: alignment, range, mode, what the medium can
/// do. An I/O ending past `g.size` is still in range if `grown` reports a
/// size it fits in. Returns the byte span the I/O touches.
pub(crate) fn validate_io(
    io: StoreIoRef<'_>,
    g: &Geometry,
    grown: impl Fn() -> Option<u64>,
) -> Result<Option<(u64, u64)>, IoError> {
    let ss = u64::from(g.sector_size);
    let span = |offset: u64, len: u64| -> Result<(u64, u64), IoError> {
        if offset % ss != 0 || len % ss != 0 {
            return Err(IoError::Io);
        }
        let end = offset.checked_add(len).ok_or(IoError::Io)?;
        if end <= g.size || grown().is_some_and(|now| end <= now) {
            Ok((offset, end))
        } else {
            Err(IoError::Io)
        }
    };
    match io {
        StoreIoRef::Read { offset, iov } | StoreIoRef::Write { offset, iov } => {
            if matches!(io, StoreIoRef::Write { .. }) && g.read_only {
                return Err(IoError::Io);
            }
            let mut total: u64 = 0;
            for v in iov {
                let len = v.len as u64;
                if len % ss != 0 || (len != 0 && v.addr == 0) {
                    return Err(IoError::Io);
                }
                if g.aligned_buffers && v.addr as u64 % ss != 0 {
                    return Err(IoError::Io);
                }
                if v.addr.checked_add(v.len).is_none() {
                    return Err(IoError::Io);
                }
                total = total.checked_add(len).ok_or(IoError::Io)?;
            }
            span(offset, total).map(Some)
        }
        StoreIoRef::Flush if g.can_flush => Ok(None),
        StoreIoRef::Flush => Err(IoError::NotSupported),
        StoreIoRef::Discard {
            offset,
            len,
            secure,
        } => {
            if g.read_only {
                return Err(IoError::Io);
            }
            let s = span(offset, len)?;
            if !g.discard.discard || (secure && !g.discard.secure) {
                return Err(IoError::NotSupported);
            }
            Ok(Some(s))
        }
    }
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
/// new size the next time it is asked for its [`UserStore::info`](crate::UserStore::info) (until
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
    crate::sys::loop_set_capacity(&dev).map_err(io::Error::from_raw_os_error)?;
    sys::blk_size(&dev).map_err(io::Error::from_raw_os_error)
}
