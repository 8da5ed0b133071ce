//! Fault injection for stores ([`IoFaults`]), shared between a scenario
//! and the stores it opened.

use std::sync::{Condvar, Mutex, MutexGuard};

use xbb::host::IoError;

use crate::locked;
use crate::StoreIoRef;

/// Counts of failures injected by an [`IoFaults`], by cause.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FaultCounters {
    /// Failures from [`IoFaults::fail_nth`].
    pub nth: u64,
    /// Failures from [`IoFaults::fail_range`].
    pub range: u64,
    /// Failures from [`IoFaults::fail_writes`].
    pub writes: u64,
    /// Failures from [`IoFaults::fail_flush`].
    pub flush: u64,
    /// I/Os cut short by [`IoFaults::shorten`] (not failures: not in
    /// [`FaultCounters::total`]).
    pub short: u64,
}

impl FaultCounters {
    /// All injected failures.
    pub fn total(&self) -> u64 {
        self.nth + self.range + self.writes + self.flush
    }
}

#[derive(Debug, Default)]
struct FaultState {
    /// Data I/Os (reads and writes) accepted so far.
    data_ios: u64,
    /// Armed `fail_nth` faults: (value of `data_ios` that fails, error).
    nth: Vec<(u64, IoError)>,
    /// Armed `fail_range` faults: (start, end, error), bytes, end exclusive.
    ranges: Vec<(u64, u64, IoError)>,
    writes: Option<IoError>,
    flush: Option<IoError>,
    /// Every I/O waits before it is performed ([`IoFaults::hold`]).
    held: bool,
    /// Data I/Os still to be cut short ([`IoFaults::shorten`]).
    short: u64,
    /// io_uring setup is refused with this errno ([`IoFaults::refuse_uring`]).
    uring_refused: Option<i32>,
    counters: FaultCounters,
}

/// Fault injection for stores, shared between a scenario and the stores it
/// opened (interior mutability; `Send + Sync`).
///
/// Faults are decided when an I/O is submitted, in submission order, and
/// only for I/Os that are otherwise valid (aligned, in range). An I/O hit by
/// a fault is not performed: the medium is left as it was and the completion
/// carries the fault's error. When several faults match, the first of
/// `nth`, `range`, `writes`, `flush` wins and only it is counted.
///
/// A store can also be held ([`IoFaults::hold`]): its I/O is taken but
/// neither performed nor completed until released, so that a test has
/// requests in flight for as long as it needs (a back-end process that dies
/// with I/O in flight). Only the file and device stores honour it (the
/// io_uring store submits nothing while held).
#[derive(Debug, Default)]
pub struct IoFaults {
    state: Mutex<FaultState>,
    released: Condvar,
}

impl IoFaults {
    /// No fault armed.
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> MutexGuard<'_, FaultState> {
        locked(&self.state)
    }

    /// Fails the `n`-th data I/O (read or write) submitted from now on with
    /// `err`: `n == 1` is the next one (`0` counts as `1`). One-shot; several
    /// may be armed at once.
    pub fn fail_nth(&self, n: u64, err: IoError) {
        let mut s = self.lock();
        let target = s.data_ios.saturating_add(n.max(1));
        s.nth.push((target, err));
    }

    /// Fails every read, write or discard touching bytes
    /// `byte_start..byte_end` of the medium with `err`, until [`Self::clear`].
    pub fn fail_range(&self, byte_start: u64, byte_end: u64, err: IoError) {
        self.lock().ranges.push((byte_start, byte_end, err));
    }

    /// Fails every write with `err`, until [`Self::clear`].
    pub fn fail_writes(&self, err: IoError) {
        self.lock().writes = Some(err);
    }

    /// Fails every flush with `err`, until [`Self::clear`].
    pub fn fail_flush(&self, err: IoError) {
        self.lock().flush = Some(err);
    }

    /// Cuts the next `n` data I/Os of two or more pieces short on the
    /// io_uring store: each is first submitted with only the first half of
    /// its pieces, so the kernel transfers part of it and the store must
    /// submit the rest. The I/O still completes whole; the worker pool
    /// ignores this (its `preadv` loop has no first submission to cut).
    pub fn shorten(&self, n: u64) {
        self.lock().short = n;
    }

    /// Refuses io_uring setup with `errno` (as `ENOSYS` from an old kernel
    /// or `EPERM` under seccomp would), for stores opened from now on:
    /// they fall back to the worker pool. Not disarmed by [`Self::clear`].
    pub fn refuse_uring(&self, errno: i32) {
        self.lock().uring_refused = Some(errno);
    }

    /// The refusal [`Self::refuse_uring`] armed.
    pub(crate) fn uring_refused(&self) -> Option<i32> {
        self.lock().uring_refused
    }

    /// Whether to cut this I/O short (one [`Self::shorten`] used up).
    pub(crate) fn take_short(&self) -> bool {
        let mut s = self.lock();
        if s.short == 0 {
            return false;
        }
        s.short -= 1;
        s.counters.short += 1;
        true
    }

    /// Disarms every fault and releases a hold. Counters are kept.
    pub fn clear(&self) {
        let mut s = self.lock();
        s.nth.clear();
        s.ranges.clear();
        s.writes = None;
        s.flush = None;
        s.short = 0;
        s.held = false;
        self.released.notify_all();
    }

    /// Holds every I/O not yet performed: each waits, neither performed nor
    /// completed, until [`IoFaults::release`] (or [`IoFaults::clear`]).
    pub fn hold(&self) {
        self.lock().held = true;
    }

    /// Ends a hold: the I/O held is performed and completed.
    pub fn release(&self) {
        self.lock().held = false;
        self.released.notify_all();
    }

    /// Whether I/O is held.
    pub fn is_held(&self) -> bool {
        self.lock().held
    }

    /// Waits while I/O is held (a worker, before it performs an I/O).
    pub(crate) fn wait_while_held(&self) {
        let mut s = self.lock();
        while s.held {
            s = self.released.wait(s).unwrap_or_else(|e| e.into_inner());
        }
    }

    /// The failures injected so far.
    pub fn counters(&self) -> FaultCounters {
        self.lock().counters
    }

    /// Decides the fate of one accepted I/O.
    pub(crate) fn check(&self, io: StoreIoRef<'_>, span: Option<(u64, u64)>) -> Option<IoError> {
        let mut s = self.lock();
        let is_data = matches!(io, StoreIoRef::Read { .. } | StoreIoRef::Write { .. });
        if is_data {
            s.data_ios = s.data_ios.saturating_add(1);
            let now = s.data_ios;
            let hit = s.nth.iter().find(|&&(at, _)| at == now).map(|&(_, e)| e);
            // Faults armed for the same I/O fire together, once.
            s.nth.retain(|&(at, _)| at > now);
            if let Some(err) = hit {
                s.counters.nth += 1;
                return Some(err);
            }
        }
        if let Some((start, end)) = span {
            let hit = s
                .ranges
                .iter()
                .find(|&&(a, b, _)| start < b && a < end)
                .map(|&(_, _, e)| e);
            if let Some(err) = hit {
                s.counters.range += 1;
                return Some(err);
            }
        }
        match io {
            StoreIoRef::Write { .. } => {
                let err = s.writes?;
                s.counters.writes += 1;
                Some(err)
            }
            StoreIoRef::Flush => {
                let err = s.flush?;
                s.counters.flush += 1;
                Some(err)
            }
            _ => None,
        }
    }
}
