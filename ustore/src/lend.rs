//! What both user-space platforms do alike when the core lends them a
//! queue (`Host::lend`, `xbb::handoff`): the queue goes to a thread of its
//! own; and the poison-tolerant lock their contexts share state under.

use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;

use xbb::handoff::Gate;
use xbb::queue::Queue;

/// Locks `m`, taking its data even when a thread panicked holding it: the
/// panic is reported where it happened, and the state a platform keeps
/// behind these locks stays usable for tearing down.
pub fn locked<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Serves lent queue `queue` with its platform host `qh` on a thread of its
/// own, `xbb-q<N>`, which runs `serve(queue, qh)`. `gate` is the queue's,
/// already lent.
///
/// The queue travels to its thread in a slot the thread empties first: a
/// failed spawn undoes the lend on `gate` (a pass of nobody, given back at
/// once) and hands the queue and its host back, `Err(Some(..))`.
/// `Err(None)` cannot happen (the thread never ran) but is not a reason to
/// panic.
// A queue moves once per connection each way, as in `Host::lend`: its
// size is no cost.
#[allow(clippy::result_large_err)]
pub fn spawn_queue<H: Send + 'static>(
    gate: &Gate,
    queue: Queue,
    qh: H,
    serve: impl FnOnce(Queue, H) + Send + 'static,
) -> Result<JoinHandle<()>, Option<(Queue, H)>> {
    let id = queue.id();
    let slot = Arc::new(Mutex::new(Some((queue, qh))));
    let theirs = Arc::clone(&slot);
    let spawned = std::thread::Builder::new()
        .name(format!("xbb-q{id}"))
        .spawn(move || {
            let taken = locked(&theirs).take();
            if let Some((q, qh)) = taken {
                serve(q, qh);
            }
        });
    spawned.map_err(|_| {
        if gate.begin().is_some() {
            gate.give_back();
        }
        locked(&slot).take()
    })
}
