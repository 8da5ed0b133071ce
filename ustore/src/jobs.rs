//! The I/O a store has accepted and not yet completed: the queue its
//! submitters fill and its serving thread(s) empty, the faults injected
//! at acceptance, the count of I/Os in flight that `close` waits on, and
//! the completions reported.

use std::collections::VecDeque;
use std::panic::{self, AssertUnwindSafe};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};

use xbb::host::{IoError, IoTag};

use crate::{locked, CompletionFn, IoFaults, StoreIo};

/// One accepted I/O.
pub(crate) struct Job {
    pub(crate) tag: IoTag,
    pub(crate) io: StoreIo,
    /// Decided at submission: refused (misaligned, ...) or an injected fault.
    pub(crate) outcome: Option<IoError>,
}

/// What [`Jobs`] keeps under its lock.
pub(crate) struct JobState {
    /// Queued, not yet taken by a serving thread.
    pub(crate) jobs: VecDeque<Job>,
    /// Queued plus running I/Os whose completion has not returned yet.
    in_flight: usize,
    /// No more I/O is accepted.
    pub(crate) closing: bool,
    /// The serving threads are to end (once the queue is empty).
    pub(crate) stop: bool,
}

/// A store's accepted I/O; see the module documentation.
pub(crate) struct Jobs {
    state: Mutex<JobState>,
    /// `drain` waits here for `in_flight` to reach zero.
    idle: Condvar,
    faults: Option<Arc<IoFaults>>,
    done: CompletionFn,
}

impl Jobs {
    /// No I/O yet, room for `capacity` queued; failures from `faults` are
    /// injected at acceptance; completions go to `done`.
    pub(crate) fn new(done: CompletionFn, faults: Option<Arc<IoFaults>>, capacity: usize) -> Jobs {
        Jobs {
            state: Mutex::new(JobState {
                jobs: VecDeque::with_capacity(capacity),
                in_flight: 0,
                closing: false,
                stop: false,
            }),
            idle: Condvar::new(),
            faults,
            done,
        }
    }

    /// Waits while the faults hold I/O ([`IoFaults::hold`]): a serving
    /// thread, before it performs the job it took.
    pub(crate) fn wait_while_held(&self) {
        if let Some(f) = &self.faults {
            f.wait_while_held();
        }
    }

    pub(crate) fn lock(&self) -> MutexGuard<'_, JobState> {
        locked(&self.state)
    }

    /// Accepts `io` unless the store is closing (`Gone`) and counts it in
    /// flight. Its outcome is decided now when `validate` refuses it or an
    /// injected fault hits the medium span `validate` found; otherwise it
    /// is to be carried out. The caller then wakes a serving thread.
    pub(crate) fn push(
        &self,
        tag: IoTag,
        io: StoreIo,
        validate: impl FnOnce(&StoreIo) -> Result<Option<(u64, u64)>, IoError>,
    ) -> Result<(), IoError> {
        let mut q = self.lock();
        if q.closing {
            return Err(IoError::Gone);
        }
        let outcome = match validate(&io) {
            Err(e) => Some(e),
            Ok(span) => self
                .faults
                .as_ref()
                .and_then(|f| f.check(io.as_ref_io(), span)),
        };
        q.jobs.push_back(Job { tag, io, outcome });
        q.in_flight += 1;
        Ok(())
    }

    /// Reports finished I/Os through the completion, then counts them out
    /// of `in_flight`. A panicking completion is reported by the panic
    /// hook; catching it keeps the serving thread serving and the count
    /// exact, so `drain` cannot hang on it.
    pub(crate) fn complete(
        &self,
        finished: impl IntoIterator<Item = (IoTag, Result<(), IoError>)>,
    ) {
        let mut n = 0;
        for (tag, r) in finished {
            let _ = panic::catch_unwind(AssertUnwindSafe(|| (self.done)(tag, r)));
            n += 1;
        }
        if n == 0 {
            return;
        }
        let mut q = self.lock();
        q.in_flight -= n;
        if q.in_flight == 0 {
            self.idle.notify_all();
        }
    }

    /// Refuses I/O from now on, tells the serving thread(s) (`wake`, under
    /// the lock) and waits until every I/O in flight has completed; the
    /// state, still locked.
    pub(crate) fn drain(&self, wake: impl FnOnce()) -> MutexGuard<'_, JobState> {
        let mut q = self.lock();
        q.closing = true;
        wake();
        while q.in_flight > 0 {
            q = self.idle.wait(q).unwrap_or_else(|e| e.into_inner());
        }
        q
    }
}
