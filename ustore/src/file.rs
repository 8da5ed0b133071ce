//! A regular file as a medium: a `file` store (FreeBSD: a vnode), or a
//! device store emulated on a file (`O_DIRECT`, aligned buffers). Its size
//! is the file's; its sectors are the ones the store emulates; it discards
//! by punching holes.

use std::fs::File;
use std::os::unix::fs::MetadataExt;

use crate::medium::{DiscardCaps, Node};
use crate::sys;

/// A regular file.
#[derive(Debug)]
pub(crate) struct RegularFile;

impl Node for RegularFile {
    fn size(&self, file: &File) -> Result<u64, i32> {
        file.metadata()
            .map(|m| m.len())
            .map_err(|e| e.raw_os_error().unwrap_or(libc::EIO))
    }

    fn sector_sizes(&self, _file: &File, emulated: u32) -> Result<(u32, u32), i32> {
        Ok((emulated, emulated))
    }

    /// A writable regular file can discard when its file system punches
    /// holes: probed by punching one byte just past the end of the file
    /// with `FALLOC_FL_KEEP_SIZE`, a range that holds no data, so the probe
    /// changes neither contents nor size. The granule is the file system's
    /// block (`st_blksize`): a hole is only ever made of whole blocks, a
    /// partial block is zeroed instead. Holes are not secure erasure (the
    /// freed blocks keep their bytes), so `secure` is never offered.
    fn discard_caps(&self, file: &File, size: u64, ss: u32) -> DiscardCaps {
        let Ok(meta) = file.metadata() else {
            return DiscardCaps::default();
        };
        if !sys::punch_hole_probe(file, size) {
            return DiscardCaps::default();
        }
        DiscardCaps::new(true, false, meta.blksize(), 0, ss)
    }

    /// A punched hole; a file never takes a secure discard (the store
    /// refuses it before it gets here).
    fn discard(&self, file: &File, offset: u64, len: u64, _secure: bool) -> Result<(), i32> {
        sys::punch_hole(file, offset, len)
    }
}
