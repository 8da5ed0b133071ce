//! The io_uring store ([`UringStore`]): a file or device store whose I/O
//! is carried out by the kernel through one io_uring, with no thread of its
//! own. The platform's queue thread drives it in its own loop:
//!
//! - [`UserStore::submit`] checks an I/O and puts it in a free slot (no
//!   system call);
//! - [`UserStore::kick`], once at the end of a pass, pushes every slot made
//!   ready since into the submission queue and submits them all in one
//!   `io_uring_enter(2)`;
//! - the thread polls [`UserStore::completion_fd`] (the ring's descriptor,
//!   readable while a completion waits) beside its event channel, and
//!   [`UserStore::reap`] delivers the completions on the thread that reaps
//!   them, through the store's [`CompletionFn`].
//!
//! Each slot owns an iovec array allocated when the store opens (room for
//! [`SEGMENTS`] pieces), its medium offset and how far its transfer has
//! come; a short read or write is submitted again for the rest, a read
//! that meets the end of the file reads zeros for the rest (as `sys.rs`
//! does), a write that makes no progress fails with `EIO`. A flush is
//! `IORING_OP_FSYNC` with `IORING_FSYNC_DATASYNC` (`fdatasync`). A discard
//! is carried out at submission the way the worker pool does it (hole
//! punch or `BLKDISCARD`; io_uring has no operation for the latter), and
//! its outcome, like that of an I/O refused at submission or hit by an
//! injected fault, travels through the ring as an `IORING_OP_NOP`, so that
//! every completion arrives the same way.
//!
//! Bounds: at most [`SLOTS`] entries are ever in the kernel (one per slot,
//! a slot submits again only after its completion was reaped); the
//! submission queue holds [`SLOTS`] and the completion queue twice that, so
//! the completion queue cannot overflow. I/O beyond [`SLOTS`] waits in
//! submission order for a slot.
//!
//! Teardown: [`UserStore::close`] refuses new I/O and, until every
//! accepted I/O has completed, submits what waits and waits in the kernel
//! for completions; only then does the ring (and with it every reference
//! to the submitters' buffers) go away, so a platform that waits for
//! `close` (or for its own in-flight count) before it unmaps its window
//! never unmaps memory the kernel still writes.

use std::collections::VecDeque;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::Duration;

use xbb::host::{IoError, IoTag, MediumInfo, OpenError};

use crate::medium::{io_error, Medium};
use crate::uring_sys::{self, IoVecs, Op, Ring};
use crate::{locked, CompletionFn, IoEngine, IoFaults, StoreIo, StoreIoRef, StoreSpec, UserStore};

/// I/Os one store has in the kernel at once: its slots, and the size of
/// its submission queue.
pub const SLOTS: usize = 128;

/// Pieces each slot has room for without allocating: those of a
/// `hw.xbb.max_request_size` (1 MiB) I/O of 4 KiB pages. A larger I/O
/// grows its slot once (fallibly), and the slot keeps the room.
pub const SEGMENTS: usize = 256;

/// I/Os accepted beyond [`SLOTS`] that the store keeps without growing.
const WAITING: usize = 1024;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Read,
    Write,
    Flush,
    /// The outcome was decided at submission; the slot's entry is a NOP.
    Decided(Result<(), IoError>),
}

/// One I/O in the ring.
struct Slot {
    tag: IoTag,
    kind: Kind,
    /// Medium offset of the next byte to transfer.
    offset: u64,
    /// The buffer; `iov[next..]` is still to transfer. Never touched while
    /// the slot's entry is in the kernel.
    iov: IoVecs,
    next: usize,
    /// Submit only this many pieces the first time (an injected short
    /// transfer); 0: all.
    first_cnt: usize,
}

impl Slot {
    fn new() -> Result<Slot, OpenError> {
        let mut iov = Vec::new();
        iov.try_reserve_exact(SEGMENTS)
            .map_err(|_| OpenError::Other(libc::ENOMEM))?;
        Ok(Slot {
            tag: IoTag(0),
            kind: Kind::Flush,
            offset: 0,
            iov: IoVecs(iov),
            next: 0,
            first_cnt: 0,
        })
    }

    /// The entry for the rest of this slot's I/O.
    fn op(&mut self, fd: RawFd) -> Op {
        let rest = &self.iov.0[self.next..];
        let mut cnt = rest.len().min(crate::sys::IOV_MAX);
        if self.first_cnt != 0 {
            cnt = cnt.min(self.first_cnt);
            self.first_cnt = 0;
        }
        match self.kind {
            Kind::Read => Op::Readv {
                fd,
                iov: rest.as_ptr(),
                cnt: cnt as u32,
                offset: self.offset,
            },
            Kind::Write => Op::Writev {
                fd,
                iov: rest.as_ptr(),
                cnt: cnt as u32,
                offset: self.offset,
            },
            Kind::Flush => Op::Fdatasync { fd },
            Kind::Decided(_) => Op::Nop,
        }
    }

    /// Accounts `n` bytes transferred; `true` when the I/O is whole.
    fn advance(&mut self, n: usize) -> bool {
        self.offset += n as u64;
        let mut idx = self.next;
        crate::sys::advance(&mut self.iov.0, &mut idx, n);
        self.next = idx;
        self.next >= self.iov.0.len()
    }
}

/// An accepted I/O waiting for a slot: its tag, the I/O, its outcome when
/// decided at submission.
type Waiting = (IoTag, StoreIo, Option<Result<(), IoError>>);

/// What the store keeps under its lock.
struct State {
    ring: Ring,
    slots: Vec<Slot>,
    /// Slots not in use.
    free: Vec<usize>,
    /// Slots whose entry is to be pushed at the next kick.
    ready: Vec<usize>,
    /// Accepted I/Os waiting for a slot, in order.
    waiting: VecDeque<Waiting>,
    /// Accepted I/Os whose completion has not returned yet.
    in_flight: usize,
    closing: bool,
    /// Completions reaped, to deliver once the lock is released.
    finished: Vec<(IoTag, Result<(), IoError>)>,
}

/// A file or device store served through io_uring; see the module
/// documentation.
pub struct UringStore {
    medium: Medium,
    state: Mutex<State>,
    /// `close` waits here for completions delivered on other threads.
    idle: Condvar,
    ring_fd: RawFd,
    faults: Option<Arc<IoFaults>>,
    done: CompletionFn,
}

impl std::fmt::Debug for UringStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UringStore")
            .field("kind", &self.medium.kind)
            .field("direct", &self.medium.direct)
            .finish()
    }
}

/// Sets the ring up: the errno of `io_uring_setup(2)` when refused, or the
/// refusal injected by `faults` ([`IoFaults::refuse_uring`]).
pub(crate) fn setup(faults: Option<&IoFaults>) -> Result<Ring, i32> {
    if let Some(e) = faults.and_then(IoFaults::uring_refused) {
        return Err(e);
    }
    let ring = Ring::new(SLOTS as u32)?;
    // The bound of the module documentation: the kernel may round up,
    // never down.
    if ring.sq_entries() < SLOTS || ring.cq_entries() < SLOTS {
        return Err(libc::EINVAL);
    }
    Ok(ring)
}

impl UringStore {
    /// Opens the store `spec` describes over `ring` (from [`setup`]).
    pub(crate) fn open(
        spec: &StoreSpec,
        ring: Ring,
        done: CompletionFn,
    ) -> Result<Self, OpenError> {
        let medium = Medium::open(spec)?;
        let mut slots = Vec::new();
        slots
            .try_reserve_exact(SLOTS)
            .map_err(|_| OpenError::Other(libc::ENOMEM))?;
        for _ in 0..SLOTS {
            slots.push(Slot::new()?);
        }
        let mut waiting = VecDeque::new();
        let mut finished = Vec::new();
        let (mut free, mut ready) = (Vec::new(), Vec::new());
        let nomem = |_| OpenError::Other(libc::ENOMEM);
        waiting.try_reserve_exact(WAITING).map_err(nomem)?;
        finished.try_reserve_exact(SLOTS).map_err(nomem)?;
        free.try_reserve_exact(SLOTS).map_err(nomem)?;
        ready.try_reserve_exact(SLOTS).map_err(nomem)?;
        free.extend((0..SLOTS).rev());
        Ok(UringStore {
            ring_fd: ring.fd(),
            medium,
            state: Mutex::new(State {
                ring,
                slots,
                free,
                ready,
                waiting,
                in_flight: 0,
                closing: false,
                finished,
            }),
            idle: Condvar::new(),
            faults: spec.faults.clone(),
            done,
        })
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        locked(&self.state)
    }

    /// Gives waiting I/Os free slots, pushes every ready slot and submits
    /// them in one system call (none while the faults hold I/O).
    fn push_ready(&self, s: &mut State) {
        if self.faults.as_ref().is_some_and(|f| f.is_held()) {
            return;
        }
        while !s.free.is_empty() {
            let Some((tag, io, outcome)) = s.waiting.pop_front() else {
                break;
            };
            let filled = self.fill(s, tag, io.as_ref_io(), outcome);
            debug_assert!(filled);
        }
        let fd = self.medium.file.as_raw_fd();
        let State {
            ring, slots, ready, ..
        } = s;
        for &i in ready.iter() {
            let op = slots[i].op(fd);
            // At most SLOTS entries exist: one per slot.
            let pushed = ring.push(op, i as u64);
            debug_assert!(pushed);
        }
        ready.clear();
        if let Err(e) = ring.enter(0) {
            // The entries stay queued; the next kick (or close) submits
            // them again.
            let _ = e;
        }
    }

    /// Puts an accepted I/O into a free slot (its pieces copied into the
    /// slot's own array) and marks it ready; `false` when no slot is free.
    fn fill(
        &self,
        s: &mut State,
        tag: IoTag,
        io: StoreIoRef<'_>,
        outcome: Option<Result<(), IoError>>,
    ) -> bool {
        let Some(i) = s.free.pop() else {
            return false;
        };
        let slot = &mut s.slots[i];
        slot.tag = tag;
        slot.next = 0;
        slot.first_cnt = 0;
        slot.offset = 0;
        slot.iov.0.clear();
        slot.kind = match (outcome, io) {
            (Some(r), _) => Kind::Decided(r),
            (None, StoreIoRef::Read { offset, iov })
            | (None, StoreIoRef::Write { offset, iov }) => {
                let pieces = iov.iter().filter(|v| v.len != 0);
                if slot.iov.0.try_reserve(pieces.clone().count()).is_err() {
                    Kind::Decided(Err(IoError::Busy))
                } else {
                    slot.offset = offset;
                    slot.iov.0.extend(pieces.map(|v| libc::iovec {
                        iov_base: v.addr as *mut libc::c_void,
                        iov_len: v.len,
                    }));
                    if slot.iov.0.len() > 1 && self.faults.as_ref().is_some_and(|f| f.take_short())
                    {
                        slot.first_cnt = slot.iov.0.len() / 2;
                    }
                    if slot.iov.0.is_empty() {
                        Kind::Decided(Ok(()))
                    } else if matches!(io, StoreIoRef::Read { .. }) {
                        Kind::Read
                    } else {
                        Kind::Write
                    }
                }
            }
            (None, StoreIoRef::Flush) => Kind::Flush,
            // io_uring has no BLKDISCARD: carried out here, as the
            // worker pool does, the outcome carried by a NOP.
            (
                None,
                StoreIoRef::Discard {
                    offset,
                    len,
                    secure,
                },
            ) => Kind::Decided(self.medium.execute(&StoreIo::Discard {
                offset,
                len,
                secure,
            })),
        };
        s.ready.push(i);
        true
    }

    /// Accepts one I/O: checked, and put in a free slot (no allocation);
    /// only when every slot is taken is an owned copy (`owned`) kept in
    /// line for one.
    fn accept(
        &self,
        tag: IoTag,
        io: StoreIoRef<'_>,
        owned: impl FnOnce() -> Option<StoreIo>,
    ) -> Result<(), IoError> {
        let mut s = self.lock();
        if s.closing {
            return Err(IoError::Gone);
        }
        let outcome = match self.medium.validate(io) {
            Err(e) => Some(Err(e)),
            Ok(span) => self
                .faults
                .as_ref()
                .and_then(|f| f.check(io, span))
                .map(Err),
        };
        // Behind I/O already waiting, to keep the order.
        if !s.waiting.is_empty() || !self.fill(&mut s, tag, io, outcome) {
            let io = owned().ok_or(IoError::Busy)?;
            s.waiting.push_back((tag, io, outcome));
        }
        s.in_flight += 1;
        Ok(())
    }

    /// Takes every completion the ring holds, submits what they leave to
    /// do (short transfers, waiting I/O), then delivers them.
    fn reap_now(&self) {
        let mut s = self.lock();
        if s.ring.in_kernel() == 0 {
            return;
        }
        let State {
            ring,
            slots,
            free,
            ready,
            finished,
            ..
        } = &mut *s;
        ring.reap(|data, res| {
            let i = data as usize;
            let Some(slot) = slots.get_mut(i) else {
                return;
            };
            let result = match slot.kind {
                Kind::Decided(r) => Some(r),
                _ if res == -libc::EINTR || res == -libc::EAGAIN => None,
                _ if res < 0 => Some(Err(io_error(-res))),
                Kind::Flush => Some(Ok(())),
                Kind::Read if res == 0 => {
                    // End of file inside the medium: the rest reads as
                    // zeros.
                    uring_sys::zero(&slot.iov.0[slot.next..]);
                    Some(Ok(()))
                }
                Kind::Write if res == 0 => Some(Err(io_error(libc::EIO))),
                Kind::Read | Kind::Write => slot.advance(res as usize).then_some(Ok(())),
            };
            match result {
                Some(r) => {
                    finished.push((slot.tag, r));
                    free.push(i);
                }
                // A short transfer: the rest goes in at the next push.
                None => ready.push(i),
            }
        });
        if !s.ready.is_empty() || !s.waiting.is_empty() {
            self.push_ready(&mut s);
        }
        let mut finished = core::mem::take(&mut s.finished);
        drop(s);
        let n = finished.len();
        for (tag, r) in finished.drain(..) {
            let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| (self.done)(tag, r)));
        }
        let mut s = self.lock();
        s.finished = finished;
        s.in_flight -= n;
        // Only close waits on `idle` (after setting `closing`, under the
        // lock): no futex call per pass otherwise.
        if s.in_flight == 0 && s.closing {
            self.idle.notify_all();
        }
    }
}

impl UserStore for UringStore {
    fn info(&self) -> MediumInfo {
        self.medium.info()
    }

    fn submit(&self, tag: IoTag, io: StoreIo) -> Result<(), IoError> {
        let r = io.as_ref_io();
        self.accept(tag, r, || r.to_owned_io())
    }

    fn submit_ref(&self, tag: IoTag, io: StoreIoRef<'_>) -> Result<(), IoError> {
        self.accept(tag, io, || io.to_owned_io())
    }

    fn kick(&self) {
        let mut s = self.lock();
        if !s.ready.is_empty() || !s.waiting.is_empty() {
            self.push_ready(&mut s);
        }
    }

    fn completion_fd(&self) -> Option<RawFd> {
        Some(self.ring_fd)
    }

    fn reap(&self) {
        self.reap_now();
    }

    fn close(&self) {
        self.lock().closing = true;
        loop {
            if let Some(f) = &self.faults {
                f.wait_while_held();
            }
            let mut s = self.lock();
            if s.in_flight == 0 {
                return;
            }
            self.push_ready(&mut s);
            if s.ring.in_kernel() > 0 {
                // Submits anything left and sleeps until one completes.
                let _ = s.ring.enter(1);
                drop(s);
                self.reap_now();
            } else {
                // Completions being delivered on another thread (or held):
                // wait for them to return.
                let _ = self.idle.wait_timeout(s, Duration::from_millis(10));
            }
        }
    }

    fn direct_io(&self) -> bool {
        self.medium.direct
    }

    fn engine(&self) -> IoEngine {
        IoEngine::Uring
    }
}

impl Drop for UringStore {
    fn drop(&mut self) {
        // The ring must not outlive an entry naming a submitter's buffer.
        self.close();
    }
}
