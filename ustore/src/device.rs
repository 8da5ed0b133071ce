//! A block device as a medium: a `phy` store (FreeBSD: a GEOM provider or
//! zvol). Its size and sector sizes are the device's (a larger logical
//! sector than the one emulated wins); it discards with `BLKDISCARD` and
//! erases with `BLKSECDISCARD`.

use std::fs::File;
use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;

use crate::medium::{sysfs_u64, DiscardCaps, Node};
use crate::sys;

/// A block device.
#[derive(Debug)]
pub(crate) struct BlockDevice;

impl Node for BlockDevice {
    fn size(&self, file: &File) -> Result<u64, i32> {
        sys::blk_size(file)
    }

    fn sector_sizes(&self, file: &File, emulated: u32) -> Result<(u32, u32), i32> {
        let (lss, pss) = sys::blk_sector_sizes(file)?;
        let logical = emulated.max(lss);
        Ok((logical, logical.max(pss)))
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
    fn discard_caps(&self, file: &File, _size: u64, ss: u32) -> DiscardCaps {
        let Ok(meta) = file.metadata() else {
            return DiscardCaps::default();
        };
        let rdev = meta.rdev();
        let dir = PathBuf::from(format!(
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
        DiscardCaps::new(true, secure, granularity, alignment, ss)
    }

    fn discard(&self, file: &File, offset: u64, len: u64, secure: bool) -> Result<(), i32> {
        sys::blk_discard(file, offset, len, secure)
    }
}
