//! Runs one back-end instance the way the FreeBSD kernel module runs it: a
//! task thread, the control context, owns the [`Instance`] and its
//! [`SimHost`] and feeds it, one at a time, the events of `io/xenbus.h`
//! (watches on the front-end's `state` and the back-end directory), resizes
//! and the queues' hand-off (a queue coming home, a queue failing); the
//! queues themselves run on threads of their own ([`SimHost`]'s
//! `Host::lend`), which serve the event channel (`io/ring.h`
//! notifications) and the store's completions.

use std::io;
use std::sync::atomic::{AtomicU64, Ordering as AtomicOrdering};
use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use super::host::{SimHost, SimHostConfig, SimHostStats, SimXen};
use super::xenstore::WatchId;
use super::TaskEvent;
use crate::store::locked;
use xbb::connect::ConnectError;
use xbb::host::{MediumInfo, XenbusState};
use xbb::instance::Instance;
use xbb::keys;
use xbb::queue::Shared as QueueShared;
use xbb::stats::{Stats, Tunables};

/// How long detach waits for in-flight I/O to complete before giving up
/// (a guard against a hung store, not a timing requirement).
const DRAIN_LIMIT: Duration = Duration::from_secs(60);

/// What the task thread publishes after every event it handled.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InstanceSnapshot {
    /// The back-end's XenBus state.
    pub state: XenbusState,
    /// The front-end's directory, once the instance knows it.
    pub frontend_path: Option<String>,
    /// `Instance::is_idle`: every queue home, no I/O in flight (false
    /// while queues are lent to their threads).
    pub idle: bool,
    /// `Instance::lent_queues`: queues served by threads of their own.
    pub lent_queues: u32,
    /// The open store's description (`Instance::medium`).
    pub medium: Option<MediumInfo>,
    /// Why the connection last failed (`Instance::last_error`).
    pub last_error: Option<ConnectError>,
    /// `Instance::is_detached`.
    pub detached: bool,
    /// The instance's statistics and negotiated limits (`Instance::stats`).
    pub stats: Option<Stats>,
    /// Each queue's counters (`Instance::queue_stats`), while connected.
    pub queues: Vec<Stats>,
    /// `Instance::instance_stats`: what `stats` is without the queues'
    /// counters, which [`BackendRunner::snapshot`] adds as they are now.
    base: Option<Stats>,
    // What the task thread itself reports.
    /// Task events handled so far.
    pub events: u64,
    /// The platform side's counters.
    pub host: SimHostStats,
    /// The task thread has ended (after `Shutdown`, or a failed creation).
    pub finished: bool,
    /// Why the thread ended early or detached uncleanly, if it did.
    pub error: Option<String>,
    /// The last [`TaskEvent::Sync`] handled (0: none).
    pub synced: u64,
    // EXTEND HERE: further instance getters go with the ones at the top;
    // fill them in `fill_instance_fields` below.
}

impl InstanceSnapshot {
    fn initial() -> InstanceSnapshot {
        InstanceSnapshot {
            state: XenbusState::Unknown,
            frontend_path: None,
            idle: true,
            events: 0,
            host: SimHostStats::default(),
            finished: false,
            error: None,
            medium: None,
            last_error: None,
            detached: false,
            stats: None,
            queues: Vec::new(),
            base: None,
            lent_queues: 0,
            synced: 0,
        }
    }

    /// Replaces the counters with those the queues hold now (they run on
    /// threads of their own, between the task thread's publications).
    fn refresh(&mut self, live: &QueueShared) {
        let Some(base) = self.base.as_ref() else {
            return;
        };
        let n = self.queues.len() as u32;
        let mut s = base.clone();
        live.sum_into(&mut s, n);
        self.stats = Some(s);
        self.queues = (0..n).filter_map(|q| live.queue_stats(q)).collect();
    }

    /// Nothing will change unless someone outside acts: nothing in flight
    /// or waiting to be served, neither at the control part (every queue
    /// home and idle, or every queue lent) nor at any lent queue's thread
    /// (asleep, its queue idle, no completion waiting for it), and no
    /// delayed EOI that may still deliver a kick.
    fn quiet(&self) -> bool {
        let control = self.idle || self.lent_queues as usize == self.queues.len();
        control && self.host.queues_asleep && self.host.eoi_timers == 0
    }
}

/// Copies what the instance exposes into the snapshot.
// EXTEND HERE together with the fields of `InstanceSnapshot`.
fn fill_instance_fields(inst: &Instance, snap: &mut InstanceSnapshot) {
    snap.state = inst.state();
    snap.frontend_path = inst.frontend_path().map(|s| s.to_string());
    snap.idle = inst.is_idle();
    snap.medium = inst.medium();
    snap.last_error = inst.last_error();
    snap.detached = inst.is_detached();
    snap.stats = Some(inst.stats());
    snap.queues = (0..inst.num_queues())
        .filter_map(|q| inst.queue_stats(q))
        .collect();
    snap.base = Some(inst.instance_stats());
    snap.lent_queues = inst.lent_queues();
}

/// The published snapshot, and the queues' counters to refresh it from.
#[derive(Debug)]
struct Published {
    snap: Mutex<InstanceSnapshot>,
    cond: Condvar,
    live: Mutex<Option<Arc<QueueShared>>>,
}

type Shared = Arc<Published>;

fn lock(shared: &Shared) -> MutexGuard<'_, InstanceSnapshot> {
    locked(&shared.snap)
}

fn publish(shared: &Shared, snap: InstanceSnapshot) {
    *lock(shared) = snap;
    shared.cond.notify_all();
}

/// The snapshot as published, with the queues' counters as they are now.
fn current(shared: &Shared, g: &InstanceSnapshot) -> InstanceSnapshot {
    let mut s = g.clone();
    let live = shared
        .live
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .clone();
    if let Some(live) = live {
        s.refresh(&live);
    }
    s
}

/// How long a waiter sleeps before it looks at the queues' counters again:
/// they change without the task thread publishing.
const REFRESH: Duration = Duration::from_millis(5);

/// A running back-end instance: its task thread and a handle to it.
#[derive(Debug)]
pub struct BackendRunner {
    backend_path: String,
    tx: Sender<TaskEvent>,
    shared: Shared,
    thread: Option<JoinHandle<()>>,
    /// The last [`TaskEvent::Sync`] number handed out.
    syncs: AtomicU64,
}

/// How a new back-end instance comes to its vbd.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Start {
    /// A fresh vbd: the instance attaches (`Instance::attach`).
    Attach,
    /// A vbd another back-end left Connected (it crashed or handed it
    /// over): the instance takes it over (`Instance::take_over`).
    TakeOver,
}

impl BackendRunner {
    /// Starts the task thread of the instance for back-end directory
    /// `backend_path` (absolute, e.g. `/local/domain/0/backend/vbd/1/51712`):
    /// it creates the instance, attaches it or takes it over (`start`),
    /// watches the back-end directory and the front-end's `state`, and
    /// serves events until [`TaskEvent::Shutdown`].
    pub fn spawn(
        xen: &SimXen,
        backend_path: &str,
        tunables: Tunables,
        cfg: SimHostConfig,
        start: Start,
    ) -> io::Result<BackendRunner> {
        let (tx, rx) = mpsc::channel();
        let shared: Shared = Arc::new(Published {
            snap: Mutex::new(InstanceSnapshot::initial()),
            cond: Condvar::new(),
            live: Mutex::new(None),
        });
        let task = Task {
            xen: xen.clone(),
            path: backend_path.to_string(),
            tx: tx.clone(),
            rx,
            shared: Arc::clone(&shared),
            events: 0,
            synced: 0,
        };
        // Subscribe before the thread attaches, so a mount between its
        // look at the flag and the subscription cannot be missed.
        xen.subscribe_root_mounted(tx.clone());
        let name = format!("xbb-task-{}", backend_path.rsplit('/').next().unwrap_or(""));
        let thread = thread::Builder::new()
            .name(name)
            .spawn(move || task.run(tunables, cfg, start))?;
        Ok(BackendRunner {
            backend_path: backend_path.to_string(),
            tx,
            shared,
            thread: Some(thread),
            syncs: AtomicU64::new(0),
        })
    }

    /// The back-end directory.
    pub fn backend_path(&self) -> &str {
        &self.backend_path
    }

    /// A sender of events to the task thread.
    pub fn sender(&self) -> Sender<TaskEvent> {
        self.tx.clone()
    }

    /// Sends `ev` to the task thread; `false` once the thread has ended.
    pub fn send(&self, ev: TaskEvent) -> bool {
        self.tx.send(ev).is_ok()
    }

    /// The latest published snapshot, its counters as the queues hold
    /// them now.
    pub fn snapshot(&self) -> InstanceSnapshot {
        let g = lock(&self.shared).clone();
        current(&self.shared, &g)
    }

    /// Waits until a published snapshot satisfies `pred` (returned as `Ok`),
    /// or the thread finished, or `limit` passed (the last snapshot as `Err`).
    /// `limit` is a guard against hangs, not a timing requirement.
    pub fn wait_until(
        &self,
        limit: Duration,
        pred: impl Fn(&InstanceSnapshot) -> bool,
    ) -> Result<InstanceSnapshot, Box<InstanceSnapshot>> {
        let deadline = Instant::now() + limit;
        let mut g = lock(&self.shared);
        loop {
            let now_snap = current(&self.shared, &g);
            if pred(&now_snap) {
                return Ok(now_snap);
            }
            if g.finished {
                return Err(Box::new(now_snap));
            }
            let now = Instant::now();
            if now >= deadline {
                return Err(Box::new(now_snap));
            }
            g = self
                .shared
                .cond
                .wait_timeout(g, (deadline - now).min(REFRESH))
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }

    /// Waits until the instance is quiescent and returns its snapshot then,
    /// which is exact: every counter update the events so far cause is in
    /// it. By construction, not by sleeping: a [`TaskEvent::Sync`] barrier
    /// is sent through the task's queue until two in a row are handled
    /// with no other event between them, the snapshot quiet at both (no
    /// I/O in flight, nothing waiting, every lent queue's thread asleep
    /// with nothing posted to its gate, no delayed EOI pending: see
    /// `quiet`), and no queue thread having begun a pass between them.
    /// Then nothing was queued behind the first barrier, no queue ran
    /// since, nothing can be queued by the instance or its queues
    /// themselves, and only someone outside (a front-end's kick or
    /// XenStore write) can change it. A front-end that
    /// has taken every response it waits for and stopped is such an
    /// outside. `limit` guards against hangs; a thread that ended gives
    /// its final snapshot.
    pub fn quiesce(&self, limit: Duration) -> Result<InstanceSnapshot, Box<InstanceSnapshot>> {
        let deadline = Instant::now() + limit;
        // The events count, quietness and queue passes at the previous
        // barrier.
        let mut previous: Option<(u64, bool, u64)> = None;
        loop {
            let token = self.syncs.fetch_add(1, AtomicOrdering::Relaxed) + 1;
            if !self.send(TaskEvent::Sync(token)) {
                let last = self.snapshot();
                return if last.finished {
                    Ok(last)
                } else {
                    Err(Box::new(last))
                };
            }
            let left = deadline.saturating_duration_since(Instant::now());
            let snap = self.wait_until(left, |s| s.synced >= token || s.finished)?;
            if snap.finished {
                return Ok(snap);
            }
            let quiet = snap.quiet();
            let passes = snap.host.queue_passes;
            if quiet && previous == Some((snap.events - 1, true, passes)) {
                return Ok(snap);
            }
            previous = Some((snap.events, quiet, passes));
        }
    }

    /// Sends [`TaskEvent::Shutdown`] (detach), waits for the thread to end
    /// and returns the final snapshot.
    pub fn shutdown(mut self) -> InstanceSnapshot {
        self.stop();
        self.snapshot()
    }

    /// Ends the instance with `ev` ([`TaskEvent::Crash`],
    /// [`TaskEvent::HandOver`] or [`TaskEvent::Shutdown`]), waits for the
    /// thread and returns the final snapshot.
    pub fn end_with(mut self, ev: TaskEvent) -> InstanceSnapshot {
        self.stop_with(ev);
        self.snapshot()
    }

    fn stop(&mut self) {
        self.stop_with(TaskEvent::Shutdown);
    }

    fn stop_with(&mut self, ev: TaskEvent) {
        let _ = self.tx.send(ev);
        if let Some(t) = self.thread.take() {
            if t.join().is_err() {
                let mut g = lock(&self.shared);
                g.finished = true;
                g.error = Some(String::from("task thread panicked"));
            }
        }
    }
}

impl Drop for BackendRunner {
    fn drop(&mut self) {
        self.stop();
    }
}

struct Task {
    xen: SimXen,
    path: String,
    tx: Sender<TaskEvent>,
    rx: Receiver<TaskEvent>,
    shared: Shared,
    events: u64,
    synced: u64,
}

impl Task {
    fn watch(&self, path: &str) -> Option<WatchId> {
        let tx = self.tx.clone();
        self.xen
            .xenstore
            .watch_coalesced(
                path,
                Box::new(move |ev| {
                    let _ = tx.send(TaskEvent::Watch(ev));
                }),
            )
            .ok()
    }

    fn snapshot(&self, inst: &Instance, host: &SimHost) -> InstanceSnapshot {
        let mut s = InstanceSnapshot::initial();
        fill_instance_fields(inst, &mut s);
        s.events = self.events;
        s.synced = self.synced;
        s.host = host.stats();
        s
    }

    fn run(mut self, tunables: Tunables, cfg: SimHostConfig, start: Start) {
        let mut host = SimHost::new(&self.xen, cfg, self.tx.clone());
        let mut inst = match Instance::new(&self.path, &tunables) {
            Ok(i) => i,
            Err(e) => {
                let mut s = InstanceSnapshot::initial();
                s.finished = true;
                s.error = Some(format!("Instance::new: {e:?}"));
                publish(&self.shared, s);
                return;
            }
        };
        *locked(&self.shared.live) = Some(Arc::clone(inst.shared()));
        match start {
            Start::Attach => inst.attach(&mut host),
            Start::TakeOver => inst.take_over(&mut host),
        }
        let be_watch = self.watch(&self.path);
        // (watched front-end state path, watch)
        let mut fe_watch: Option<(String, WatchId)> = None;
        self.rewatch_frontend(&inst, &mut fe_watch);
        publish(&self.shared, self.snapshot(&inst, &host));

        let end = loop {
            let ev = match self.rx.recv() {
                Ok(ev) => ev,
                Err(_) => TaskEvent::Shutdown,
            };
            match ev {
                TaskEvent::Evtchn(q) => inst.event(&mut host, q),
                TaskEvent::Run(q) => inst.run(&mut host, q),
                TaskEvent::Io(tag, r) => inst.complete(&mut host, tag, r),
                TaskEvent::Watch(ev) => {
                    // Acknowledge first: a change after this read comes
                    // back as a new event, never lost.
                    self.xen.xenstore.watch_ack(&ev);
                    inst.frontend_changed(&mut host)
                }
                TaskEvent::RootMounted => inst.root_mounted(&mut host),
                TaskEvent::MediumChanged => inst.medium_changed(&mut host),
                TaskEvent::QueueHome(q) => home(&mut inst, &mut host, q),
                TaskEvent::QueueFailed(_, outcome) => inst.queue_failed(&mut host, outcome),
                TaskEvent::Sync(token) => self.synced = token,
                end @ (TaskEvent::Shutdown | TaskEvent::HandOver | TaskEvent::Crash) => break end,
            }
            self.events += 1;
            self.rewatch_frontend(&inst, &mut fe_watch);
            publish(&self.shared, self.snapshot(&inst, &host));
        };

        if let Some(w) = be_watch {
            self.xen.xenstore.unwatch(w);
        }
        if let Some((_, w)) = fe_watch.take() {
            self.xen.xenstore.unwatch(w);
        }
        match end {
            TaskEvent::Crash => {
                let mut s = self.snapshot(&inst, &host);
                // The counters as the back-end left them once its queues'
                // threads stopped (their releases zero the live ones).
                *self.shared.live.lock().unwrap_or_else(|e| e.into_inner()) = None;
                let mut stats = inst.instance_stats();
                drop(inst);
                stats.accumulate(&host.die());
                if !host.config().inline {
                    s.stats = Some(stats);
                    s.queues.clear();
                }
                s.host = host.stats();
                drop(host);
                s.finished = true;
                publish(&self.shared, s);
                return;
            }
            TaskEvent::HandOver => inst.hand_over(&mut host),
            _ => inst.detach(&mut host),
        }
        // Detach drains: keep delivering completions until it is done.
        let mut error = None;
        let deadline = Instant::now() + DRAIN_LIMIT;
        while !inst.is_detached() {
            if inst.is_idle() {
                error = Some(String::from("detach: idle but not detached"));
                break;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            match self.rx.recv_timeout(left) {
                Ok(TaskEvent::Io(tag, r)) => inst.complete(&mut host, tag, r),
                Ok(TaskEvent::QueueHome(q)) => home(&mut inst, &mut host, q),
                Ok(TaskEvent::QueueFailed(_, outcome)) => inst.queue_failed(&mut host, outcome),
                Ok(_) => {}
                Err(_) => {
                    error = Some(String::from("detach: I/O still in flight"));
                    break;
                }
            }
        }
        let mut s = self.snapshot(&inst, &host);
        drop(inst);
        drop(host);
        s.finished = true;
        s.error = error;
        publish(&self.shared, s);
    }

    fn rewatch_frontend(&self, inst: &Instance, cur: &mut Option<(String, WatchId)>) {
        let want = inst.frontend_path().map(|p| format!("{p}/{}", keys::STATE));
        let have = cur.as_ref().map(|(p, _)| p.clone());
        if want == have {
            return;
        }
        if let Some((_, w)) = cur.take() {
            self.xen.xenstore.unwatch(w);
        }
        if let Some(p) = want {
            if let Some(w) = self.watch(&p) {
                *cur = Some((p, w));
            }
        }
    }
}

/// A queue's thread gave the queue back: hand it to the instance.
fn home(inst: &mut Instance, host: &mut SimHost, queue: xbb::host::QueueId) {
    if let Some(q) = host.take_home(queue) {
        inst.give_back(host, q);
    }
}
