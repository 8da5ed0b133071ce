//! The worker pool that serves one store: I/O queued by
//! [`UserStore::submit`] is checked at once, carried out by [`WORKERS`]
//! threads with `preadv` / `pwritev` (so many I/Os are in flight at once),
//! and reported through the store's [`CompletionFn`] on the worker thread.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Condvar, Mutex};
use std::thread::{self, JoinHandle};

use xbb::host::{IoError, IoTag, MediumInfo, OpenError};

use crate::jobs::Jobs;
use crate::locked;
use crate::medium::Medium;
use crate::{CompletionFn, StoreIo, StoreSpec, UserStore, WORKERS};

struct Shared {
    medium: Medium,
    jobs: Jobs,
    /// Workers wait here for jobs.
    work: Condvar,
}

/// A file or device store served by [`WORKERS`] threads; what
/// [`open_store`](crate::open_store) returns, boxed.
pub struct BackingStore {
    shared: Arc<Shared>,
    workers: Mutex<Vec<JoinHandle<()>>>,
}

impl core::fmt::Debug for BackingStore {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        let m = &self.shared.medium;
        f.debug_struct("BackingStore")
            .field("kind", &m.kind)
            .field("direct", &m.direct)
            .field("sector_size", &m.sector_size)
            .field("size", &m.size.load(Ordering::Relaxed))
            .finish()
    }
}

impl BackingStore {
    /// Opens the store `spec` describes and starts its workers.
    pub fn open(spec: &StoreSpec, done: CompletionFn) -> Result<Self, OpenError> {
        let medium = Medium::open(spec)?;
        let shared = Arc::new(Shared {
            medium,
            jobs: Jobs::new(done, spec.faults.clone(), 0),
            work: Condvar::new(),
        });
        let mut workers = Vec::with_capacity(WORKERS);
        for i in 0..WORKERS {
            let sh = Arc::clone(&shared);
            let spawned = thread::Builder::new()
                .name(format!("xbb-store-{i}"))
                .spawn(move || worker(&sh));
            match spawned {
                Ok(h) => workers.push(h),
                Err(e) => {
                    let store = BackingStore {
                        shared,
                        workers: Mutex::new(workers),
                    };
                    store.close();
                    return Err(OpenError::Other(e.raw_os_error().unwrap_or(libc::EAGAIN)));
                }
            }
        }
        Ok(BackingStore {
            shared,
            workers: Mutex::new(workers),
        })
    }

    /// Whether I/O bypasses the page cache (`O_DIRECT`); always false for a
    /// file store, false for a device store whose filesystem refused it.
    pub fn direct_io(&self) -> bool {
        self.shared.medium.direct
    }
}

fn worker(sh: &Shared) {
    loop {
        let job = {
            let mut q = sh.jobs.lock();
            loop {
                if let Some(job) = q.jobs.pop_front() {
                    break job;
                }
                if q.stop {
                    return;
                }
                q = sh.work.wait(q).unwrap_or_else(|e| e.into_inner());
            }
        };
        sh.jobs.wait_while_held();
        let result = match job.outcome {
            Some(err) => Err(err),
            None => sh.medium.execute(&job.io),
        };
        // The buffers are released to the submitter by the completion.
        drop(job.io);
        sh.jobs.complete([(job.tag, result)]);
    }
}

impl UserStore for BackingStore {
    fn info(&self) -> MediumInfo {
        self.shared.medium.info()
    }

    fn submit(&self, tag: IoTag, io: StoreIo) -> Result<(), IoError> {
        let sh = &*self.shared;
        sh.jobs
            .push(tag, io, |io| sh.medium.validate(io.as_ref_io()))?;
        sh.work.notify_one();
        Ok(())
    }

    fn close(&self) {
        let sh = &*self.shared;
        sh.jobs.drain(|| ()).stop = true;
        sh.work.notify_all();
        let handles = core::mem::take(&mut *locked(&self.workers));
        let me = thread::current().id();
        for h in handles {
            if h.thread().id() != me {
                // A worker that panicked has nothing left to clean up.
                let _ = h.join();
            }
        }
    }

    fn direct_io(&self) -> bool {
        BackingStore::direct_io(self)
    }
}

impl Drop for BackingStore {
    fn drop(&mut self) {
        self.close();
    }
}
