//! An in-process XenStore (`xenstored`), after `xs_wire.h` and
//! `docs/misc/xenstore.txt`: a tree of nodes with byte values, watches and
//! optimistic transactions.
//!
//! - Paths are absolute (`/local/domain/0/...`), of `[A-Za-z0-9-_@/]`, at
//!   most 3072 bytes (`XENSTORE_ABS_PATH_MAX`); values are at most 4096 bytes
//!   (`XENSTORE_PAYLOAD_MAX`). Writing a node creates its missing parents
//!   with empty values; removing a node removes its subtree.
//! - A watch on `P` fires with the changed path for every write or removal at
//!   or below `P`, with `P` itself when a subtree containing `P` is removed,
//!   and once when it is registered. Callbacks run in the thread that made
//!   the change, with no lock held; a callback may still run once after
//!   [`Xenstored::unwatch`] returned if the change raced with it.
//! - A *coalescing* watch ([`Xenstored::watch_coalesced`]) keeps the
//!   events it owes its watcher bounded, however fast others write: at most
//!   one event per fired path is outstanding (delivered to the callback and
//!   not yet acknowledged with [`Xenstored::watch_ack`]); a change to a path
//!   whose event is outstanding is folded into it. Past
//!   [`WATCH_PENDING_MAX`] outstanding paths, further paths are reported as
//!   the watched path itself (which a change at or below it always
//!   concerns), so one watch never owes more than `WATCH_PENDING_MAX + 1`
//!   events. This is what keeps a front-end that rewrites its `state` in a
//!   loop from queueing unbounded work for the back-end, as `xenstored`'s
//!   per-connection watch-event quota does in Xen.
//!
//!   No change is lost: the outstanding set is tested and updated in the
//!   same critical section (under the store's lock) that applies the
//!   change, and [`Xenstored::watch_ack`] takes that lock too. A change C
//!   firing path P either finds P not outstanding — then P becomes
//!   outstanding and a new event is delivered after C — or finds an event
//!   for P outstanding, which the watcher has not acknowledged yet; its
//!   acknowledgement then comes after C in the lock's order, and the
//!   watcher reads the store only after acknowledging, so that read sees C
//!   (or later). Either way the watcher reads after the last change at
//!   least once. The watcher's side of the contract: acknowledge every
//!   event it receives, before it reads what the event is about.
//! - A transaction works on a snapshot taken at its start; its writes are
//!   invisible to others until commit. Commit fails with [`XsError::Again`]
//!   when any node the transaction read, listed, wrote or removed was changed
//!   by someone else meanwhile (adding or removing a child changes the
//!   parent).
//!
//! Permissions are not modelled.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex, MutexGuard};

use crate::store::locked;
use xbb::host::{XsError, XsTxn};

/// Longest value (`XENSTORE_PAYLOAD_MAX`).
pub const XENSTORE_PAYLOAD_MAX: usize = 4096;
/// Longest absolute path (`XENSTORE_ABS_PATH_MAX`).
pub const XENSTORE_ABS_PATH_MAX: usize = 3072;

/// A watch callback; receives the path that fired.
pub type WatchFn = Box<dyn Fn(&str) + Send + Sync>;

/// Identifies a registered watch.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct WatchId(pub u64);

/// Most distinct paths one coalescing watch keeps events outstanding for;
/// past it, changes are reported as the watched path (see the module
/// documentation), so a watch owes at most one event more than this.
pub const WATCH_PENDING_MAX: usize = 16;

/// One event of a coalescing watch ([`Xenstored::watch_coalesced`]): which
/// watch fired, for which path. The watcher hands it back to
/// [`Xenstored::watch_ack`] once it consumes it, before reading the store.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct WatchEvent {
    /// The watch that fired.
    pub watch: WatchId,
    /// The path that changed (or the watched path, for a registration, a
    /// removal above it, or a change folded past [`WATCH_PENDING_MAX`]).
    pub path: String,
}

/// A coalescing watch's callback: receives each event to deliver.
pub type WatchEventFn = Box<dyn Fn(WatchEvent) + Send + Sync>;

/// Counters of watch-event delivery, for tests and `xbb-lab`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct WatchStats {
    /// Events handed to callbacks, by every kind of watch.
    pub delivered: u64,
    /// Firings of coalescing watches folded into an outstanding event
    /// (no callback ran for them).
    pub coalesced: u64,
    /// Firings of coalescing watches reported as the watched path because
    /// [`WATCH_PENDING_MAX`] paths were outstanding.
    pub overflowed: u64,
    /// Events of coalescing watches outstanding now (delivered, not
    /// acknowledged): for a watcher that queues its events, the depth of
    /// its queue.
    pub pending: usize,
    /// The most events one coalescing watch has had outstanding at once.
    pub max_pending: usize,
    /// Coalescing watches registered now.
    pub coalescing_watches: usize,
}

#[derive(Clone, Debug)]
struct Node {
    value: Vec<u8>,
    changed: u64,
}

#[derive(Clone, Debug)]
struct Tree {
    nodes: BTreeMap<String, Node>,
}

fn parent_of(path: &str) -> Option<&str> {
    if path == "/" {
        return None;
    }
    match path.rfind('/') {
        Some(0) => Some("/"),
        Some(i) => Some(&path[..i]),
        None => None,
    }
}

/// The key range start of `path`'s strict descendants.
fn subtree_prefix(path: &str) -> String {
    if path == "/" {
        String::from("/")
    } else {
        let mut s = String::from(path);
        s.push('/');
        s
    }
}

/// Whether `path` is `base` or below it.
fn at_or_under(path: &str, base: &str) -> bool {
    base == "/"
        || path == base
        || (path.len() > base.len()
            && path.starts_with(base)
            && path.as_bytes()[base.len()] == b'/')
}

impl Tree {
    fn new() -> Tree {
        let mut nodes = BTreeMap::new();
        nodes.insert(
            String::from("/"),
            Node {
                value: Vec::new(),
                changed: 0,
            },
        );
        Tree { nodes }
    }

    fn touch(&mut self, path: &str, gen: u64) {
        if let Some(n) = self.nodes.get_mut(path) {
            n.changed = gen;
        }
    }

    /// Writes `path`; returns the nodes it created (parents first) for the
    /// caller's bookkeeping.
    fn write(&mut self, path: &str, value: &[u8], gen: u64) -> Vec<String> {
        let mut created = Vec::new();
        let mut missing = Vec::new();
        let mut p = path;
        while !self.nodes.contains_key(p) {
            missing.push(p.to_string());
            match parent_of(p) {
                Some(q) => p = q,
                None => break,
            }
        }
        for m in missing.into_iter().rev() {
            if let Some(par) = parent_of(&m) {
                let par = par.to_string();
                self.touch(&par, gen);
            }
            self.nodes.insert(
                m.clone(),
                Node {
                    value: Vec::new(),
                    changed: gen,
                },
            );
            created.push(m);
        }
        if let Some(n) = self.nodes.get_mut(path) {
            n.value.clear();
            n.value.extend_from_slice(value);
            n.changed = gen;
        }
        created
    }

    /// The paths of `path`'s subtree (itself first), if it exists.
    fn subtree(&self, path: &str) -> Vec<String> {
        if !self.nodes.contains_key(path) {
            return Vec::new();
        }
        let mut out = std::vec![path.to_string()];
        let pre = subtree_prefix(path);
        out.extend(
            self.nodes
                .range(pre.clone()..)
                .take_while(|(k, _)| k.starts_with(&pre))
                .filter(|(k, _)| k.as_str() != "/")
                .map(|(k, _)| k.clone()),
        );
        out
    }

    /// Removes `path`'s subtree, returning the removed paths.
    fn remove(&mut self, path: &str, gen: u64) -> Vec<String> {
        let gone = self.subtree(path);
        for k in &gone {
            self.nodes.remove(k);
        }
        if !gone.is_empty() {
            if let Some(par) = parent_of(path) {
                let par = par.to_string();
                self.touch(&par, gen);
            }
        }
        gone
    }

    fn directory(&self, path: &str) -> Option<Vec<String>> {
        self.nodes.get(path)?;
        let pre = subtree_prefix(path);
        Some(
            self.nodes
                .range(pre.clone()..)
                .take_while(|(k, _)| k.starts_with(&pre))
                .map(|(k, _)| &k[pre.len()..])
                .filter(|rest| !rest.is_empty() && !rest.contains('/'))
                .map(|s| s.to_string())
                .collect(),
        )
    }
}

#[derive(Clone, Debug)]
enum Op {
    Write(String, Vec<u8>),
    Remove(String),
}

#[derive(Debug)]
struct Txn {
    start: u64,
    snapshot: Tree,
    accessed: BTreeSet<String>,
    ops: Vec<Op>,
}

type PlainFn = Arc<dyn Fn(&str) + Send + Sync>;
type EventFn = Arc<dyn Fn(WatchEvent) + Send + Sync>;

/// Where a watch's events go.
enum Sink {
    /// Every firing runs the callback.
    Plain(PlainFn),
    /// At most one outstanding event per path (the set).
    Coalescing(EventFn, BTreeSet<String>),
}

struct Watch {
    path: String,
    sink: Sink,
}

/// A callback to run once the store's lock is released.
enum Firing {
    Plain(PlainFn, String),
    Event(EventFn, WatchEvent),
}

type Fired = Vec<Firing>;

/// Decides what `w` (watch `id`) delivers for a firing at `path`, updating
/// the coalescing state and `stats`. Runs under the store's lock.
fn offer(id: u64, w: &mut Watch, path: &str, out: &mut Fired, stats: &mut WatchStats) {
    match &mut w.sink {
        Sink::Plain(cb) => {
            stats.delivered += 1;
            out.push(Firing::Plain(Arc::clone(cb), path.to_string()));
        }
        Sink::Coalescing(cb, pending) => {
            let mut path = path;
            if !pending.contains(path) && pending.len() >= WATCH_PENDING_MAX {
                stats.overflowed += 1;
                path = &w.path;
            }
            if pending.contains(path) {
                stats.coalesced += 1;
                return;
            }
            pending.insert(path.to_string());
            stats.max_pending = stats.max_pending.max(pending.len());
            stats.delivered += 1;
            out.push(Firing::Event(
                Arc::clone(cb),
                WatchEvent {
                    watch: WatchId(id),
                    path: path.to_string(),
                },
            ));
        }
    }
}

struct Store {
    gen: u64,
    tree: Tree,
    tombstones: HashMap<String, u64>,
    txns: HashMap<u32, Txn>,
    next_txn: u32,
    watches: BTreeMap<u64, Watch>,
    next_watch: u64,
    /// Delivery counters (`pending` is computed when asked).
    wstats: WatchStats,
}

impl Store {
    fn version(&self, path: &str) -> u64 {
        match self.tree.nodes.get(path) {
            Some(n) => n.changed,
            None => self.tombstones.get(path).copied().unwrap_or(0),
        }
    }

    fn collect_write(&mut self, path: &str, out: &mut Fired) {
        for (&id, w) in self.watches.iter_mut() {
            if at_or_under(path, &w.path) {
                offer(id, w, path, out, &mut self.wstats);
            }
        }
    }

    fn collect_remove(&mut self, path: &str, out: &mut Fired) {
        for (&id, w) in self.watches.iter_mut() {
            if at_or_under(path, &w.path) {
                offer(id, w, path, out, &mut self.wstats);
            } else if at_or_under(&w.path, path) {
                let wp = w.path.clone();
                offer(id, w, &wp, out, &mut self.wstats);
            }
        }
    }

    fn live_write(&mut self, path: &str, value: &[u8], gen: u64, fired: &mut Fired) {
        for c in self.tree.write(path, value, gen) {
            self.tombstones.remove(&c);
        }
        self.collect_write(path, fired);
    }

    fn live_remove(&mut self, path: &str, gen: u64, fired: &mut Fired) -> bool {
        let gone = self.tree.remove(path, gen);
        if gone.is_empty() {
            return false;
        }
        for g in gone {
            self.tombstones.insert(g, gen);
        }
        self.collect_remove(path, fired);
        true
    }

    fn prune(&mut self) {
        if self.txns.is_empty() {
            self.tombstones.clear();
        }
    }
}

fn check_path(path: &str) -> Result<(), XsError> {
    let ok = path.starts_with('/')
        && path.len() <= XENSTORE_ABS_PATH_MAX
        && (path == "/" || !path.ends_with('/'))
        && !path.contains("//")
        && path
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-/_@".contains(&b));
    if ok {
        Ok(())
    } else {
        Err(XsError::Other(libc::EINVAL))
    }
}

fn fire(fired: Fired) {
    for f in fired {
        match f {
            Firing::Plain(cb, path) => cb(&path),
            Firing::Event(cb, ev) => cb(ev),
        }
    }
}

/// The in-process XenStore daemon. Cheap to clone (shared); thread-safe.
#[derive(Clone)]
pub struct Xenstored {
    inner: Arc<Mutex<Store>>,
}

impl std::fmt::Debug for Xenstored {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let s = self.lock();
        f.debug_struct("Xenstored")
            .field("nodes", &s.tree.nodes.len())
            .field("generation", &s.gen)
            .field("transactions", &s.txns.len())
            .field("watches", &s.watches.len())
            .finish()
    }
}

impl Default for Xenstored {
    fn default() -> Self {
        Xenstored::new()
    }
}

impl Xenstored {
    /// An empty store holding only `/`.
    pub fn new() -> Xenstored {
        Xenstored {
            inner: Arc::new(Mutex::new(Store {
                gen: 0,
                tree: Tree::new(),
                tombstones: HashMap::new(),
                txns: HashMap::new(),
                next_txn: 1,
                watches: BTreeMap::new(),
                next_watch: 1,
                wstats: WatchStats::default(),
            })),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Store> {
        locked(&self.inner)
    }

    /// Reads `path`.
    pub fn read(&self, path: &str) -> Result<Vec<u8>, XsError> {
        self.read_in(XsTxn::NONE, path)
    }

    /// Reads `path` as UTF-8 text (`Other(EILSEQ)` when it is not).
    pub fn read_str(&self, path: &str) -> Result<String, XsError> {
        String::from_utf8(self.read(path)?).map_err(|_| XsError::Other(libc::EILSEQ))
    }

    /// Whether `path` exists.
    pub fn exists(&self, path: &str) -> bool {
        self.read(path).is_ok()
    }

    /// Writes `value` at `path`, creating missing parents.
    pub fn write(&self, path: &str, value: impl AsRef<[u8]>) -> Result<(), XsError> {
        self.write_in(XsTxn::NONE, path, value.as_ref())
    }

    /// Removes `path` and its subtree; [`XsError::NotFound`] when absent.
    pub fn remove(&self, path: &str) -> Result<(), XsError> {
        self.remove_in(XsTxn::NONE, path)
    }

    /// The names (last components) of `path`'s children, sorted.
    pub fn directory(&self, path: &str) -> Result<Vec<String>, XsError> {
        self.directory_in(XsTxn::NONE, path)
    }

    /// Reads `path` inside transaction `txn` (or outside with [`XsTxn::NONE`]).
    pub fn read_in(&self, txn: XsTxn, path: &str) -> Result<Vec<u8>, XsError> {
        check_path(path)?;
        let mut s = self.lock();
        if txn == XsTxn::NONE {
            return s
                .tree
                .nodes
                .get(path)
                .map(|n| n.value.clone())
                .ok_or(XsError::NotFound);
        }
        let t = s.txns.get_mut(&txn.0).ok_or(XsError::NotFound)?;
        t.accessed.insert(path.to_string());
        t.snapshot
            .nodes
            .get(path)
            .map(|n| n.value.clone())
            .ok_or(XsError::NotFound)
    }

    /// Writes inside transaction `txn` (or outside with [`XsTxn::NONE`]).
    /// Values over [`XENSTORE_PAYLOAD_MAX`] bytes are refused with
    /// `Other(E2BIG)`.
    pub fn write_in(&self, txn: XsTxn, path: &str, value: &[u8]) -> Result<(), XsError> {
        check_path(path)?;
        if value.len() > XENSTORE_PAYLOAD_MAX {
            return Err(XsError::Other(libc::E2BIG));
        }
        let mut fired = Vec::new();
        {
            let mut s = self.lock();
            if txn == XsTxn::NONE {
                s.gen += 1;
                let gen = s.gen;
                s.live_write(path, value, gen, &mut fired);
            } else {
                let t = s.txns.get_mut(&txn.0).ok_or(XsError::NotFound)?;
                let gen = t.start;
                let created = t.snapshot.write(path, value, gen);
                t.accessed.insert(path.to_string());
                for c in created {
                    if let Some(p) = parent_of(&c) {
                        t.accessed.insert(p.to_string());
                    }
                    t.accessed.insert(c);
                }
                t.ops.push(Op::Write(path.to_string(), value.to_vec()));
            }
        }
        fire(fired);
        Ok(())
    }

    /// Removes inside transaction `txn` (or outside with [`XsTxn::NONE`]);
    /// [`XsError::NotFound`] when absent. `/` cannot be removed.
    pub fn remove_in(&self, txn: XsTxn, path: &str) -> Result<(), XsError> {
        check_path(path)?;
        if path == "/" {
            return Err(XsError::Other(libc::EINVAL));
        }
        let mut fired = Vec::new();
        {
            let mut s = self.lock();
            if txn == XsTxn::NONE {
                let gen = s.gen + 1;
                if !s.live_remove(path, gen, &mut fired) {
                    return Err(XsError::NotFound);
                }
                s.gen = gen;
            } else {
                let t = s.txns.get_mut(&txn.0).ok_or(XsError::NotFound)?;
                t.accessed.insert(path.to_string());
                let gen = t.start;
                let gone = t.snapshot.remove(path, gen);
                if gone.is_empty() {
                    return Err(XsError::NotFound);
                }
                if let Some(p) = parent_of(path) {
                    t.accessed.insert(p.to_string());
                }
                t.accessed.extend(gone);
                t.ops.push(Op::Remove(path.to_string()));
            }
        }
        fire(fired);
        Ok(())
    }

    /// Lists `path`'s children inside transaction `txn` (or outside).
    pub fn directory_in(&self, txn: XsTxn, path: &str) -> Result<Vec<String>, XsError> {
        check_path(path)?;
        let mut s = self.lock();
        if txn == XsTxn::NONE {
            return s.tree.directory(path).ok_or(XsError::NotFound);
        }
        let t = s.txns.get_mut(&txn.0).ok_or(XsError::NotFound)?;
        t.accessed.insert(path.to_string());
        t.snapshot.directory(path).ok_or(XsError::NotFound)
    }

    /// Starts a transaction.
    pub fn transaction_start(&self) -> XsTxn {
        let mut s = self.lock();
        let mut id = s.next_txn;
        while id == 0 || s.txns.contains_key(&id) {
            id = id.wrapping_add(1);
        }
        s.next_txn = id.wrapping_add(1);
        let t = Txn {
            start: s.gen,
            snapshot: s.tree.clone(),
            accessed: BTreeSet::new(),
            ops: Vec::new(),
        };
        s.txns.insert(id, t);
        XsTxn(id)
    }

    /// Ends transaction `txn`: commits it when `commit` ([`XsError::Again`]
    /// on a conflict, nothing applied), else discards it.
    /// [`XsError::NotFound`] for an unknown transaction.
    pub fn transaction_end(&self, txn: XsTxn, commit: bool) -> Result<(), XsError> {
        let mut fired = Vec::new();
        let result = {
            let mut s = self.lock();
            let t = s.txns.remove(&txn.0).ok_or(XsError::NotFound)?;
            let r = if !commit {
                Ok(())
            } else if t.accessed.iter().any(|p| s.version(p) > t.start) {
                Err(XsError::Again)
            } else {
                if !t.ops.is_empty() {
                    s.gen += 1;
                    let gen = s.gen;
                    for op in &t.ops {
                        match op {
                            Op::Write(p, v) => s.live_write(p, v, gen, &mut fired),
                            Op::Remove(p) => {
                                s.live_remove(p, gen, &mut fired);
                            }
                        }
                    }
                }
                Ok(())
            };
            s.prune();
            r
        };
        fire(fired);
        result
    }

    /// Registers a watch on `path` (at or below it); `cb` runs once now (in
    /// this thread) with `path`, then on every change.
    pub fn watch(&self, path: &str, cb: WatchFn) -> Result<WatchId, XsError> {
        if !path.starts_with('@') {
            check_path(path)?;
        }
        let cb: PlainFn = Arc::from(cb);
        let id = self.register(path, Sink::Plain(Arc::clone(&cb)));
        cb(path);
        Ok(WatchId(id))
    }

    /// Registers a coalescing watch on `path` (at or below it): `cb` runs
    /// once now (in this thread) with an event for `path`, then for every
    /// change, except that a change to a path whose event the watcher has
    /// not acknowledged yet is folded into that event (see the module
    /// documentation for the bound and for why no change is lost). The
    /// watcher must pass every event it receives to [`Xenstored::watch_ack`]
    /// before it reads what the event is about.
    pub fn watch_coalesced(&self, path: &str, cb: WatchEventFn) -> Result<WatchId, XsError> {
        if !path.starts_with('@') {
            check_path(path)?;
        }
        let cb: EventFn = Arc::from(cb);
        let mut pending = BTreeSet::new();
        pending.insert(path.to_string());
        let id = self.register(path, Sink::Coalescing(Arc::clone(&cb), pending));
        cb(WatchEvent {
            watch: WatchId(id),
            path: path.to_string(),
        });
        Ok(WatchId(id))
    }

    fn register(&self, path: &str, sink: Sink) -> u64 {
        let mut s = self.lock();
        let id = s.next_watch;
        s.next_watch += 1;
        // The registration event, delivered by the caller.
        s.wstats.delivered += 1;
        if let Sink::Coalescing(_, pending) = &sink {
            s.wstats.max_pending = s.wstats.max_pending.max(pending.len());
        }
        s.watches.insert(
            id,
            Watch {
                path: path.to_string(),
                sink,
            },
        );
        id
    }

    /// The watcher has consumed `ev` (and has not read the store for it
    /// yet): a further change to its path is delivered as a new event.
    /// `false` when the event was not outstanding (acknowledged already,
    /// or its watch is gone).
    pub fn watch_ack(&self, ev: &WatchEvent) -> bool {
        let mut s = self.lock();
        match s.watches.get_mut(&ev.watch.0).map(|w| &mut w.sink) {
            Some(Sink::Coalescing(_, pending)) => pending.remove(&ev.path),
            _ => false,
        }
    }

    /// How many events watch `id` has outstanding (0 for a plain watch);
    /// `None` when it is not registered.
    pub fn watch_pending(&self, id: WatchId) -> Option<usize> {
        let s = self.lock();
        s.watches.get(&id.0).map(|w| match &w.sink {
            Sink::Plain(_) => 0,
            Sink::Coalescing(_, pending) => pending.len(),
        })
    }

    /// The watch-event delivery counters.
    pub fn watch_stats(&self) -> WatchStats {
        let s = self.lock();
        let mut st = s.wstats;
        for w in s.watches.values() {
            if let Sink::Coalescing(_, pending) = &w.sink {
                st.coalescing_watches += 1;
                st.pending += pending.len();
            }
        }
        st
    }

    /// Firings of coalescing watches folded into an outstanding event so
    /// far ([`WatchStats::coalesced`]).
    pub fn watch_events_coalesced(&self) -> u64 {
        self.lock().wstats.coalesced
    }

    /// Removes a watch; `false` when it was not registered. Its outstanding
    /// events need no acknowledgement.
    pub fn unwatch(&self, id: WatchId) -> bool {
        self.lock().watches.remove(&id.0).is_some()
    }

    /// The number of committed changes so far.
    pub fn generation(&self) -> u64 {
        self.lock().gen
    }

    /// How many transactions are open.
    pub fn open_transactions(&self) -> usize {
        self.lock().txns.len()
    }

    /// How many watches are registered.
    pub fn watch_count(&self) -> usize {
        self.lock().watches.len()
    }

    /// Every node at or below `path` with its value, sorted by path.
    pub fn dump(&self, path: &str) -> Vec<(String, Vec<u8>)> {
        let s = self.lock();
        s.tree
            .subtree(path)
            .into_iter()
            .filter_map(|k| s.tree.nodes.get(&k).map(|n| (k.clone(), n.value.clone())))
            .collect()
    }
}
