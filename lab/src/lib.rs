//! xbb-lab: the simulated Xen host: guest memory, grant table, event channels,
//! XenStore, a toolstack, guest front-ends and back-end stores, all in one
//! process, so that the core runs the whole real data path in user space.
//!
//! Threads stand in for domains: each guest front-end runs in its own thread
//! and each back-end instance has a task thread that owns its
//! [`Instance`](xbb::instance::Instance) and receives [`TaskEvent`]s (the
//! event channel firing, I/O completions, XenStore watches), as a FreeBSD
//! taskqueue would.

#![deny(unsafe_code)]
#![deny(missing_docs)]
#![deny(clippy::undocumented_unsafe_blocks)]

use xbb::host::{IoError, IoTag};

/// What wakes a back-end instance's task thread.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TaskEvent {
    /// The front-end kicked the event channel of a queue.
    Evtchn(xbb::host::QueueId),
    /// A store I/O completed.
    Io(IoTag, Result<(), IoError>),
    /// A watched XenStore path changed (the coalesced event; the task
    /// acknowledges it before the instance reads the store).
    Watch(xenstore::WatchEvent),
    /// The instance asked to run a queue again (`Deferred::schedule_run`).
    Run(xbb::host::QueueId),
    /// The root file system is now mounted.
    RootMounted,
    /// The store's size changed (the toolstack resized it).
    MediumChanged,
    /// A barrier through the task's queue: the task records the number
    /// in its snapshot ([`backend::InstanceSnapshot::synced`]), so that
    /// whoever sent it knows every event queued before has been handled.
    Sync(u64),
    /// Detach the instance and end the thread.
    Shutdown,
}

pub mod backend;
pub mod bench;
pub mod chart;
pub mod evtchn;
pub mod ffi;
pub mod frontend;
pub mod gnttab;
pub mod host;
pub mod memory;
pub mod scenario;
pub mod soak;
/// The stores moved to [`xbb_ustore`], shared with the dom0 platform.
pub use xbb_ustore as store;
pub mod toolstack;
pub mod world;
pub mod xenstore;
