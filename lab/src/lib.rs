//! xbb-lab: the simulated Xen host: guest memory, grant table, event channels,
//! XenStore, a toolstack, guest front-ends and back-end stores, all in one
//! process, so that the core runs the whole real data path in user space.
//!
//! Threads stand in for domains and contexts: each guest front-end runs in
//! its own thread; each back-end instance has a task thread, its control
//! context, that owns its [`Instance`](xbb::instance::Instance) and
//! receives [`TaskEvent`]s (XenStore watches, a resize, queues coming
//! home), and a thread per queue of the connection that serves that queue's
//! ring (its event channel's kicks, its I/O completions), as the FreeBSD
//! kernel module runs a taskqueue per queue.

#![deny(unsafe_code)]
#![deny(missing_docs)]
#![deny(clippy::undocumented_unsafe_blocks)]

use xbb::host::{IoError, IoTag};

/// What wakes a back-end instance's task thread.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TaskEvent {
    /// Inline: the front-end kicked the event channel of a queue.
    Evtchn(xbb::host::QueueId),
    /// Inline: a store I/O completed.
    Io(IoTag, Result<(), IoError>),
    /// A recalled queue's thread gave the queue back
    /// ([`host::SimHost::take_home`]).
    QueueHome(xbb::host::QueueId),
    /// A lent queue's thread reports an outcome that ends the connection.
    QueueFailed(xbb::host::QueueId, xbb::queue::Outcome),
    /// A watched XenStore path changed (the coalesced event; the task
    /// acknowledges it before the instance reads the store).
    Watch(xenstore::WatchEvent),
    /// Inline: the instance asked to run a queue again
    /// (`QueueHost::schedule_run`).
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
    /// Hand the vbd over to the next back-end (`Instance::hand_over`, a
    /// service restart) and end the thread.
    HandOver,
    /// The back-end process dies: the instance is dropped without a word
    /// and the host does what the kernel does at a process's death
    /// ([`host::SimHost::die`]); the thread ends.
    Crash,
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
