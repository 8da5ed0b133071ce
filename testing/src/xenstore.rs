//! An in-memory XenStore (`xs_wire.h` semantics, as the core's
//! [`XenStore`] trait describes them) for tests and fuzz bodies.
//!
//! Nodes are byte strings, so a test can store what no front-end should
//! (non-UTF-8, NULs, over-long values). One transaction at a time: its
//! writes and removals are buffered until it commits, reads inside it see
//! them, and an aborted one leaves nothing behind. Failures can be armed:
//! commits that end with [`XsError::Again`], one path that fails with a
//! chosen error, the `n`-th read failing, removals of absent nodes
//! reported as [`XsError::NotFound`] (the trait allows silence; some
//! stores complain). A nested transaction, or the end of one that was
//! never started, is a contract violation and panics.

use std::collections::BTreeMap;

use xbb::host::{XenStore, XsError, XsTxn};

/// The in-memory XenStore. Public fields are failures to arm and counters
/// to read.
#[derive(Debug, Default)]
pub struct XsMap {
    nodes: BTreeMap<String, Vec<u8>>,
    /// The open transaction's writes (`Some`) and removals (`None`).
    pending: Option<BTreeMap<String, Option<Vec<u8>>>>,
    /// Transactions started.
    pub transactions: u32,
    /// Commits that still end with [`XsError::Again`] (the transaction is
    /// dropped, as xenstored drops a conflicting one).
    pub again_commits: u32,
    /// Transactions committed.
    pub commits: u32,
    /// Transactions ended without committing.
    pub aborts: u32,
    /// Reads done so far.
    pub reads: u32,
    /// The read (counted from 1 in [`XsMap::reads`]) that fails with
    /// `XsError::Other(EIO)`.
    pub fail_read: Option<u32>,
    /// Every operation on this path fails with this error.
    pub fail: Option<(String, XsError)>,
    /// Removing an absent node is [`XsError::NotFound`].
    pub remove_absent_not_found: bool,
}

impl XsMap {
    /// A store holding `nodes` (path, value).
    pub fn with(nodes: &[(&str, &str)]) -> XsMap {
        let mut s = XsMap::default();
        for (k, v) in nodes {
            s.set(k, v.as_bytes());
        }
        s
    }

    /// Writes a node outside any transaction.
    pub fn set(&mut self, path: &str, value: &[u8]) {
        self.nodes.insert(path.to_owned(), value.to_vec());
    }

    /// Removes a node (not its children) outside any transaction.
    pub fn del(&mut self, path: &str) {
        self.nodes.remove(path);
    }

    /// A committed node's bytes.
    pub fn get_bytes(&self, path: &str) -> Option<&[u8]> {
        self.nodes.get(path).map(Vec::as_slice)
    }

    /// A committed node as text (`None` also when it is not UTF-8).
    pub fn get(&self, path: &str) -> Option<&str> {
        std::str::from_utf8(self.get_bytes(path)?).ok()
    }

    /// Whether no node is committed.
    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    /// Whether a transaction is open.
    pub fn in_transaction(&self) -> bool {
        self.pending.is_some()
    }

    fn check(&self, path: &str) -> Result<(), XsError> {
        match &self.fail {
            Some((p, e)) if p == path => Err(*e),
            _ => Ok(()),
        }
    }

    fn in_txn(&mut self, txn: XsTxn) -> Option<&mut BTreeMap<String, Option<Vec<u8>>>> {
        self.pending.as_mut().filter(|_| txn != XsTxn::NONE)
    }
}

impl XenStore for XsMap {
    fn xs_read(&mut self, txn: XsTxn, path: &str, buf: &mut [u8]) -> Result<usize, XsError> {
        self.reads += 1;
        if self.fail_read == Some(self.reads) {
            return Err(XsError::Other(5));
        }
        self.check(path)?;
        let staged = match &self.pending {
            Some(p) if txn != XsTxn::NONE => p.get(path),
            _ => None,
        };
        let v = match staged {
            Some(v) => v.as_ref(),
            None => self.nodes.get(path),
        }
        .ok_or(XsError::NotFound)?;
        let out = buf.get_mut(..v.len()).ok_or(XsError::TooLong)?;
        out.copy_from_slice(v);
        Ok(v.len())
    }

    fn xs_write(&mut self, txn: XsTxn, path: &str, value: &str) -> Result<(), XsError> {
        self.check(path)?;
        let v = value.as_bytes().to_vec();
        match self.in_txn(txn) {
            Some(p) => p.insert(path.to_owned(), Some(v)),
            None => self.nodes.insert(path.to_owned(), v).map(Some),
        };
        Ok(())
    }

    fn xs_remove(&mut self, txn: XsTxn, path: &str) -> Result<(), XsError> {
        self.check(path)?;
        let prefix = format!("{path}/");
        let hit = |k: &str| k == path || k.starts_with(&prefix);
        let mut found = false;
        let committed: Vec<String> = self.nodes.keys().filter(|k| hit(k)).cloned().collect();
        match self.in_txn(txn) {
            Some(p) => {
                for v in p.iter_mut().filter(|(k, _)| hit(k)).map(|(_, v)| v) {
                    found |= v.is_some();
                    *v = None;
                }
                // Staged entries were counted above.
                for k in committed {
                    found |= !p.contains_key(&k);
                    p.insert(k, None);
                }
            }
            None => {
                found = !committed.is_empty();
                self.nodes.retain(|k, _| !hit(k));
            }
        }
        if !found && self.remove_absent_not_found {
            return Err(XsError::NotFound);
        }
        Ok(())
    }

    fn xs_transaction_start(&mut self) -> Result<XsTxn, XsError> {
        assert!(self.pending.is_none(), "nested XenStore transaction");
        self.transactions += 1;
        self.pending = Some(BTreeMap::new());
        Ok(XsTxn(self.transactions))
    }

    fn xs_transaction_end(&mut self, txn: XsTxn, commit: bool) -> Result<(), XsError> {
        assert_eq!(
            txn,
            XsTxn(self.transactions),
            "end of a transaction never started"
        );
        let staged = self.pending.take().expect("no transaction open");
        if !commit {
            self.aborts += 1;
            return Ok(());
        }
        if self.again_commits > 0 {
            self.again_commits -= 1;
            return Err(XsError::Again);
        }
        self.commits += 1;
        for (k, v) in staged {
            match v {
                Some(v) => self.nodes.insert(k, v),
                None => self.nodes.remove(&k),
            };
        }
        Ok(())
    }
}
