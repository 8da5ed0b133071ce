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
//! - A transaction works on a snapshot taken at its start; its writes are
//!   invisible to others until commit. Commit fails with [`XsError::Again`]
//!   when any node the transaction read, listed, wrote or removed was changed
//!   by someone else meanwhile (adding or removing a child changes the
//!   parent).
//!
//! Permissions are not modelled.

use std::boxed::Box;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::string::{String, ToString};
use std::sync::{Arc, Mutex, MutexGuard};
use std::vec::Vec;

use crate::host::{XsError, XsTxn};

/// Longest value (`XENSTORE_PAYLOAD_MAX`).
pub const XENSTORE_PAYLOAD_MAX: usize = 4096;
/// Longest absolute path (`XENSTORE_ABS_PATH_MAX`).
pub const XENSTORE_ABS_PATH_MAX: usize = 3072;

/// A watch callback; receives the path that fired.
pub type WatchFn = Box<dyn Fn(&str) + Send + Sync>;

/// Identifies a registered watch.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct WatchId(pub u64);

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

struct Watch {
    path: String,
    cb: Arc<dyn Fn(&str) + Send + Sync>,
}

type Fired = Vec<(Arc<dyn Fn(&str) + Send + Sync>, String)>;

struct Store {
    gen: u64,
    tree: Tree,
    tombstones: HashMap<String, u64>,
    txns: HashMap<u32, Txn>,
    next_txn: u32,
    watches: BTreeMap<u64, Watch>,
    next_watch: u64,
}

impl Store {
    fn version(&self, path: &str) -> u64 {
        match self.tree.nodes.get(path) {
            Some(n) => n.changed,
            None => self.tombstones.get(path).copied().unwrap_or(0),
        }
    }

    fn collect_write(&self, path: &str, out: &mut Fired) {
        for w in self.watches.values() {
            if at_or_under(path, &w.path) {
                out.push((Arc::clone(&w.cb), path.to_string()));
            }
        }
    }

    fn collect_remove(&self, path: &str, out: &mut Fired) {
        for w in self.watches.values() {
            if at_or_under(path, &w.path) {
                out.push((Arc::clone(&w.cb), path.to_string()));
            } else if at_or_under(&w.path, path) {
                out.push((Arc::clone(&w.cb), w.path.clone()));
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
    for (cb, path) in fired {
        cb(&path);
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
            })),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Store> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
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
        let cb: Arc<dyn Fn(&str) + Send + Sync> = Arc::from(cb);
        let id = {
            let mut s = self.lock();
            let id = s.next_watch;
            s.next_watch += 1;
            s.watches.insert(
                id,
                Watch {
                    path: path.to_string(),
                    cb: Arc::clone(&cb),
                },
            );
            id
        };
        cb(path);
        Ok(WatchId(id))
    }

    /// Removes a watch; `false` when it was not registered.
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
