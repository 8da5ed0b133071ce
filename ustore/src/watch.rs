//! Who is told about memory a store sets aside for guest data.
//!
//! A store that copies guest data through memory of its own (the NBD
//! store's bounce chunks) reports that memory here when it makes it and
//! drops the report before it frees it. xbb-serve installs a watcher
//! ([`watch_store_memory`]) that enters each range into its table of live
//! guest-data mappings, so that a fatal signal's report can say whether a
//! faulting address was in one (`serve/src/fault.rs`). Without a watcher
//! nothing happens.

use std::sync::OnceLock;

/// Enters `len` bytes at `addr` into the watcher's records; the returned
/// value removes them when dropped.
pub type MemoryWatch = fn(addr: usize, len: usize) -> Box<dyn Send>;

static WATCH: OnceLock<MemoryWatch> = OnceLock::new();

/// Installs the process's watcher of store memory; only the first call
/// counts. Call before the first store opens.
pub fn watch_store_memory(w: MemoryWatch) {
    let _ = WATCH.set(w);
}

/// Reports `len` bytes at `addr`: what the watcher returned, to be dropped
/// before the memory is freed; `None` without a watcher.
pub(crate) fn watched(addr: usize, len: usize) -> Option<Box<dyn Send>> {
    WATCH.get().map(|w| w(addr, len))
}
