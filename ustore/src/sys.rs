//! The system calls behind the stores: the only `unsafe` of this crate.
//!
//! The buffer functions are safe to call only because every [`RawIoVec`]
//! reaching them comes from a [`StoreIo`] whose submitter took on the
//! obligation written at [`RawIoVec`]: the ranges are mapped, with the right
//! access, and nobody holds Rust references into them until the completion.

use crate::io::RawIoVec;
use std::fs::File;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd};
use std::ptr::NonNull;

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
pub(crate) const IOV_MAX: usize = 1024;

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
pub(crate) fn advance(vecs: &mut [libc::iovec], idx: &mut usize, mut n: usize) {
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
pub(crate) fn read_all(file: &File, iov: &[RawIoVec], offset: u64) -> Result<(), i32> {
    transfer(file, iov, offset, false)
}

/// Writes the whole of `iov` at `offset`, looping over short writes.
pub(crate) fn write_all(file: &File, iov: &[RawIoVec], offset: u64) -> Result<(), i32> {
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
pub(crate) fn fdatasync(file: &File) -> Result<(), i32> {
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
pub(crate) fn punch_hole(file: &File, offset: u64, len: u64) -> Result<(), i32> {
    fallocate_punch(file, offset, len)
}

/// Whether the file's filesystem can punch holes: punches one byte just
/// past the end of the file, which holds no data and keeps the size.
pub(crate) fn punch_hole_probe(file: &File, size: u64) -> bool {
    fallocate_punch(file, size, 1).is_ok()
}

/// `BLKDISCARD` (or, when `secure`, `BLKSECDISCARD`) of `len` bytes at
/// `offset`.
pub(crate) fn blk_discard(file: &File, offset: u64, len: u64, secure: bool) -> Result<(), i32> {
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
pub(crate) fn blk_discard_probe(file: &File, secure: bool) -> bool {
    let req = if secure { BLKSECDISCARD } else { BLKDISCARD };
    let none: *const u64 = core::ptr::null();
    // SAFETY: the kernel validates the user pointer it is given; a null
    // one makes the copy of the range fail with EFAULT, so no memory of
    // this process is read or written.
    let r = unsafe { libc::ioctl(file.as_raw_fd(), req, none) };
    r != 0 && errno() == libc::EFAULT
}

/// `LOOP_SET_CAPACITY`: a loop device re-reads its backing file's size.
pub(crate) fn loop_set_capacity(dev: &File) -> Result<(), i32> {
    // SAFETY: LOOP_SET_CAPACITY takes no argument and touches no memory
    // of this process.
    let r = unsafe { libc::ioctl(dev.as_raw_fd(), LOOP_SET_CAPACITY, 0 as libc::c_ulong) };
    if r == 0 {
        Ok(())
    } else {
        Err(errno())
    }
}

/// `ioctl(2)` on `file` with a `request` that stores one `T` through its
/// argument.
///
/// # Safety
/// `request` must write at most one `T` through its pointer argument.
unsafe fn ioctl_out<T>(file: &File, request: libc::Ioctl, out: &mut T) -> Result<(), i32> {
    // SAFETY: `out` is a valid, exclusive `T`, and the caller promises that
    // `request` writes no more than one `T` through it.
    let r = unsafe { libc::ioctl(file.as_raw_fd(), request, out as *mut T) };
    if r == 0 {
        Ok(())
    } else {
        Err(errno())
    }
}

/// `BLKGETSIZE64`: a block device's size in bytes.
pub(crate) fn blk_size(file: &File) -> Result<u64, i32> {
    let mut size: u64 = 0;
    // SAFETY: BLKGETSIZE64 stores one u64 (size_t on 64-bit Linux; the
    // request number encodes size_t).
    unsafe { ioctl_out(file, BLKGETSIZE64, &mut size) }?;
    Ok(size)
}

/// `BLKSSZGET` and `BLKPBSZGET`: logical and physical sector sizes.
pub(crate) fn blk_sector_sizes(file: &File) -> Result<(u32, u32), i32> {
    let mut logical: libc::c_int = 0;
    let mut physical: libc::c_uint = 0;
    // SAFETY: BLKSSZGET stores one int.
    unsafe { ioctl_out(file, libc::BLKSSZGET, &mut logical) }?;
    // SAFETY: BLKPBSZGET stores one unsigned int.
    unsafe { ioctl_out(file, libc::BLKPBSZGET, &mut physical) }?;
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
pub(crate) fn dio_alignment(file: &File) -> Option<(u32, u32)> {
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

/// Maps the first `len` bytes of `fd` shared, readable and writable
/// (`mmap(2)`, `MAP_SHARED`), where the kernel chooses: the memory of a
/// file several parties map (the lab's guest RAM, an in-flight journal).
/// The caller owns the mapping and unmaps it (`munmap(2)`); touching it
/// beyond the end of the file faults. `EINVAL` for `len` 0.
pub fn mmap_shared(fd: BorrowedFd<'_>, len: usize) -> io::Result<NonNull<u8>> {
    if len == 0 {
        return Err(io::Error::from_raw_os_error(libc::EINVAL));
    }
    // SAFETY: a fresh mapping the kernel places (no fixed address), of a
    // descriptor the caller lends us, touching no memory of ours.
    let p = unsafe {
        libc::mmap(
            core::ptr::null_mut(),
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_SHARED,
            fd.as_raw_fd(),
            0,
        )
    };
    if p == libc::MAP_FAILED {
        return Err(io::Error::last_os_error());
    }
    NonNull::new(p.cast::<u8>()).ok_or_else(|| io::Error::from_raw_os_error(libc::ENOMEM))
}

/// Maps the first `len` bytes of `file` as [`mmap_shared`] does: an
/// in-flight journal's memory ([`crate::journal`]). The file must be at
/// least `len` bytes long (the caller checked): a mapping beyond its end
/// would fault when touched.
pub(crate) fn map_shared(file: &File, len: usize) -> io::Result<xbb::shmem::SharedMem> {
    let base = mmap_shared(file.as_fd(), len)?;
    // SAFETY: `len` bytes at `base` are mapped readable and writable,
    // page-aligned, backed by a file at least that long, and stay mapped
    // until `unmap` consumes this value; another process (the next
    // back-end) may map the same file, and nobody makes Rust references
    // into it: SharedMem only copies and uses atomics.
    Ok(unsafe { xbb::shmem::SharedMem::new(base, len) })
}

/// Unmaps memory [`map_shared`] mapped.
pub(crate) fn unmap(mem: xbb::shmem::SharedMem) {
    // SAFETY: `mem` came from `map_shared` (its whole mapping) and is
    // consumed: nothing refers to the range any more.
    unsafe { libc::munmap(mem.as_ptr().cast(), mem.len()) };
}

/// A monotonic clock in milliseconds (any origin), from
/// `CLOCK_MONOTONIC_COARSE`: the last timer tick, which the vDSO reads
/// without a system call whatever the clock source. A Xen PV domain's
/// clock source (`xen`) has no vDSO mode, so `CLOCK_MONOTONIC`
/// (`Instant::now`) is a system call there and a pvclock read.
pub fn monotonic_coarse_ms() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: ts is a valid, writable timespec; the clock id is constant.
    let r = unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC_COARSE, &mut ts) };
    debug_assert_eq!(r, 0);
    let secs = u64::try_from(ts.tv_sec).unwrap_or(0);
    let ms = u64::try_from(ts.tv_nsec / 1_000_000).unwrap_or(0);
    secs.saturating_mul(1000).saturating_add(ms)
}

#[cfg(test)]
mod tests {
    use super::monotonic_coarse_ms;

    #[test]
    fn coarse_clock_is_monotonic_and_counts_milliseconds() {
        let t0 = monotonic_coarse_ms();
        let mut last = t0;
        for _ in 0..1000 {
            let t = monotonic_coarse_ms();
            assert!(t >= last, "went back from {last} to {t}");
            last = t;
        }
        std::thread::sleep(std::time::Duration::from_millis(120));
        let t1 = monotonic_coarse_ms();
        // At most one timer tick (HZ >= 100: 10 ms) of lag at each end.
        assert!(t1 >= t0 + 100, "{t0} -> {t1} over a 120 ms sleep");
        assert!(t1 < t0 + 60_000, "{t0} -> {t1}: not milliseconds");
    }
}
