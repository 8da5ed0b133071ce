//! The io_uring system calls behind [`crate::uring`]: one ring, its
//! submission and completion queues (`io_uring_setup(2)`,
//! `io_uring_enter(2)`), through the `io-uring` crate. With `sys.rs`, the
//! only `unsafe` of the stores.
//!
//! What makes [`Ring::push`] sound is the crate's own obligation, the same
//! as `sys.rs`'s: every [`libc::iovec`] handed to it names memory of a
//! [`RawIoVec`](crate::RawIoVec) whose submitter keeps it mapped, with the
//! right access and unreferenced by Rust code, until the completion; and
//! the caller ([`crate::uring`]) keeps the iovec array itself in place and
//! unchanged until the ring has answered the entry (it reaps every entry
//! before it lets go of a slot, and closes the store only when none is in
//! the kernel).

use std::io;
use std::os::fd::RawFd;

use io_uring::{opcode, squeue, types, IoUring};

/// One operation for [`Ring::push`].
#[derive(Clone, Copy, Debug)]
pub(crate) enum Op {
    /// `IORING_OP_READV` of `iov` at `offset` of `fd`.
    Readv {
        fd: RawFd,
        iov: *const libc::iovec,
        cnt: u32,
        offset: u64,
    },
    /// `IORING_OP_WRITEV` of `iov` at `offset` of `fd`.
    Writev {
        fd: RawFd,
        iov: *const libc::iovec,
        cnt: u32,
        offset: u64,
    },
    /// `IORING_OP_FSYNC` with `IORING_FSYNC_DATASYNC`: `fdatasync(2)`.
    Fdatasync { fd: RawFd },
    /// `IORING_OP_NOP`: completes at once, carrying an outcome decided
    /// before submission.
    Nop,
}

/// The iovec array of one slot: owned by the slot, allocated once, handed
/// to the kernel by address while the slot's entry is in flight.
#[derive(Debug, Default)]
pub(crate) struct IoVecs(pub(crate) Vec<libc::iovec>);

// SAFETY: the raw pointers name memory of this process that the
// submitter lent for the I/O (RawIoVec's contract); nothing here reads or
// writes through them but the kernel and `zero`, from whichever thread
// holds the store's lock, so moving the array between threads is sound.
unsafe impl Send for IoVecs {}

/// One io_uring instance.
pub(crate) struct Ring {
    ring: IoUring,
    /// Entries pushed and not yet completed (in the kernel or pending).
    in_kernel: usize,
}

impl std::fmt::Debug for Ring {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ring")
            .field("in_kernel", &self.in_kernel)
            .finish()
    }
}

impl Ring {
    /// A ring of `entries` submission entries and twice as many completion
    /// entries (`IORING_SETUP_CQSIZE`); the errno of `io_uring_setup(2)`
    /// (`ENOSYS` on an old kernel, `EPERM` under seccomp or with
    /// `kernel.io_uring_disabled`) when refused.
    pub(crate) fn new(entries: u32) -> Result<Ring, i32> {
        let ring = IoUring::builder()
            .setup_cqsize(entries.saturating_mul(2))
            .build(entries)
            .map_err(|e| e.raw_os_error().unwrap_or(libc::ENOSYS))?;
        Ok(Ring { ring, in_kernel: 0 })
    }

    /// The ring's descriptor: readable (`poll(2)`) while a completion
    /// waits in its completion queue.
    pub(crate) fn fd(&self) -> RawFd {
        use std::os::fd::AsRawFd;
        self.ring.as_raw_fd()
    }

    /// Submission entries the ring holds.
    pub(crate) fn sq_entries(&self) -> usize {
        self.ring.params().sq_entries() as usize
    }

    /// Completion entries the ring holds.
    pub(crate) fn cq_entries(&self) -> usize {
        self.ring.params().cq_entries() as usize
    }

    /// Entries pushed whose completion has not been reaped.
    pub(crate) fn in_kernel(&self) -> usize {
        self.in_kernel
    }

    /// Queues `op` tagged `user_data` in the submission queue (no system
    /// call); `false` when the queue is full. See the module documentation
    /// for what the iovec pointers promise.
    pub(crate) fn push(&mut self, op: Op, user_data: u64) -> bool {
        let entry: squeue::Entry = match op {
            Op::Readv {
                fd,
                iov,
                cnt,
                offset,
            } => opcode::Readv::new(types::Fd(fd), iov, cnt)
                .offset(offset)
                .build(),
            Op::Writev {
                fd,
                iov,
                cnt,
                offset,
            } => opcode::Writev::new(types::Fd(fd), iov, cnt)
                .offset(offset)
                .build(),
            Op::Fdatasync { fd } => opcode::Fsync::new(types::Fd(fd))
                .flags(types::FsyncFlags::DATASYNC)
                .build(),
            Op::Nop => opcode::Nop::new().build(),
        };
        let entry = entry.user_data(user_data);
        // SAFETY: the entry's buffers are the iovec array and the memory it
        // names; the caller keeps both valid and in place until it reaps
        // this entry's completion, and the descriptor open until then (the
        // module documentation and RawIoVec's contract).
        let pushed = unsafe { self.ring.submission().push(&entry) }.is_ok();
        if pushed {
            self.in_kernel += 1;
        }
        pushed
    }

    /// Submits what was pushed in one `io_uring_enter(2)`, waiting for
    /// `wait` completions too; nothing when there is nothing to submit or
    /// wait for (no system call).
    pub(crate) fn enter(&mut self, wait: usize) -> io::Result<()> {
        if wait == 0 && self.ring.submission().is_empty() {
            return Ok(());
        }
        loop {
            match self.ring.submit_and_wait(wait) {
                Ok(_) => return Ok(()),
                Err(e) if e.raw_os_error() == Some(libc::EINTR) => continue,
                // The completion queue is being drained by the caller next.
                Err(e) if e.raw_os_error() == Some(libc::EBUSY) => return Ok(()),
                Err(e) => return Err(e),
            }
        }
    }

    /// Hands every completion waiting in the queue to `f` as
    /// `(user_data, result)` (no system call).
    pub(crate) fn reap(&mut self, mut f: impl FnMut(u64, i32)) {
        let mut n = 0;
        for cqe in self.ring.completion() {
            n += 1;
            f(cqe.user_data(), cqe.result());
        }
        self.in_kernel -= n;
    }
}

/// Fills the memory `iov` names with zeros: the part of a read past the
/// end of the file.
pub(crate) fn zero(iov: &[libc::iovec]) {
    for v in iov {
        // SAFETY: `v` is (the remainder of) one of the submitter's
        // writable buffers, mapped and unreferenced until the completion
        // by RawIoVec's contract, and the kernel is done with it (its
        // entry was reaped).
        unsafe { core::ptr::write_bytes(v.iov_base.cast::<u8>(), 0, v.iov_len) };
    }
}
