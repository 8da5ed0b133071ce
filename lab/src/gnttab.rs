//! One guest domain's grant table, after `grant_table.h`.
//!
//! The guest grants a frame to another domain (`gnttab_grant_foreign_access`),
//! read-only or writable, and ends the grant (`gnttab_end_foreign_access_ref`),
//! which fails while the other domain still has the frame mapped, as Xen's
//! does. The other domain maps a grant (`GNTTABOP_map_grant_ref`) and unmaps
//! it by handle (`GNTTABOP_unmap_grant_ref`). Map failures can be injected
//! for test scenarios, and counters let tests check that everything mapped
//! was unmapped.
//!
//! The table is sharded by reference, and each thread grants from the
//! shard it was dealt (round robin), so that the queues of a multi-queue
//! guest and their back-end queues (each on a thread of its own) do not
//! all take one lock for every grant, map, unmap and end; Xen too keeps
//! the bookkeeping of mappings per vCPU.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use super::memory::Gfn;
use crate::store::locked;
use xbb::host::{DomId, GrantError, GrantHandle, GrantRef};

/// The first grant reference a guest hands out; lower ones are reserved
/// (`GNTTAB_NR_RESERVED_ENTRIES`), so a front-end that sends 0 sends a bad
/// reference.
pub const FIRST_GREF: GrantRef = 8;

/// Ending a grant failed: the grantee still has it mapped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GrantBusy;

/// A map failure to inject.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MapFault {
    /// The next `count` map operations (of any grant) fail with `error`.
    Next {
        /// How many operations fail.
        count: u32,
        /// The failure they report.
        error: GrantError,
    },
    /// Every map of `gref` fails with `error` until cleared.
    Gref {
        /// The grant whose maps fail.
        gref: GrantRef,
        /// The failure they report.
        error: GrantError,
    },
}

/// Counters of one grant table.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct GrantStats {
    /// Grants currently active (granted, not ended).
    pub active_grants: u64,
    /// Successful map operations, ever.
    pub maps: u64,
    /// Unmap operations of a valid handle, ever.
    pub unmaps: u64,
    /// Mappings currently held (`maps - unmaps`).
    pub mapped: u64,
    /// Map operations that failed for any reason, ever.
    pub failed_maps: u64,
    /// Of those, failures that were injected.
    pub injected_failures: u64,
    /// Unmap operations naming an unknown handle, ever.
    pub bad_unmaps: u64,
}

#[derive(Clone, Copy, Debug)]
struct Entry {
    frame: Gfn,
    to_dom: DomId,
    readonly: bool,
    maps: u32,
}

#[derive(Clone, Copy, Debug)]
struct MapRec {
    gref: GrantRef,
}

/// The shards a table's entries and mappings are spread over, by
/// reference (`gref % SHARDS`): the grant and map operations of different
/// queues (threads) meet on one lock only when their references share a
/// shard. A power of two, so that references stepped by it wrap around
/// within their shard.
const SHARDS: usize = 16;

/// Bits of a handle that name its shard.
const SHARD_BITS: u32 = SHARDS.trailing_zeros();

/// One shard: the grants whose reference it holds, and their mappings
/// (whose handles name the shard in their low bits).
#[derive(Debug)]
struct Shard {
    entries: HashMap<GrantRef, Entry>,
    free_refs: Vec<GrantRef>,
    next_ref: GrantRef,
    maps: HashMap<u32, MapRec>,
    /// The next handle's number within the shard (before the shard bits).
    next_handle: u32,
    stats: GrantStats,
}

/// The injected failures, apart from the shards: rarely set, looked at
/// under their lock only while `armed`.
#[derive(Debug, Default)]
struct Faults {
    fail_next: VecDeque<GrantError>,
    fail_gref: HashMap<GrantRef, GrantError>,
    injected: u64,
}

#[derive(Debug)]
struct Table {
    shards: Vec<Mutex<Shard>>,
    faults: Mutex<Faults>,
    /// Some failure is injected and not yet consumed or cleared.
    armed: AtomicBool,
}

/// The shard the calling thread grants from: threads are dealt shards
/// round robin as they first grant, so that each of a guest's queue
/// threads mostly has its grants, and its back-end queue their maps, to
/// itself, as Xen keeps grant-table bookkeeping per vCPU (the maptrack)
/// rather than behind one lock.
fn home_shard() -> usize {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    thread_local! {
        static HOME: usize = NEXT.fetch_add(1, Ordering::Relaxed) % SHARDS;
    }
    HOME.with(|h| *h)
}

fn shard_of_ref(gref: GrantRef) -> usize {
    gref as usize % SHARDS
}

/// The grant table of one guest domain. Cheap to clone (shared); `Send + Sync`.
#[derive(Clone, Debug)]
pub struct GrantTable {
    dom: DomId,
    frames: u64,
    inner: Arc<Table>,
}

impl GrantTable {
    /// An empty grant table for domain `dom`, whose RAM has `frames` frames.
    pub fn new(dom: DomId, frames: u64) -> GrantTable {
        let shards = (0..SHARDS)
            .map(|i| {
                // The shard's first reference at or above FIRST_GREF.
                let first = FIRST_GREF + ((i + SHARDS - shard_of_ref(FIRST_GREF)) % SHARDS) as u32;
                Mutex::new(Shard {
                    entries: HashMap::new(),
                    free_refs: Vec::new(),
                    next_ref: first,
                    maps: HashMap::new(),
                    next_handle: 1,
                    stats: GrantStats::default(),
                })
            })
            .collect();
        GrantTable {
            dom,
            frames,
            inner: Arc::new(Table {
                shards,
                faults: Mutex::new(Faults::default()),
                armed: AtomicBool::new(false),
            }),
        }
    }

    /// The granting domain.
    pub fn domid(&self) -> DomId {
        self.dom
    }

    fn shard(&self, i: usize) -> MutexGuard<'_, Shard> {
        locked(&self.inner.shards[i % SHARDS])
    }

    fn faults(&self) -> MutexGuard<'_, Faults> {
        locked(&self.inner.faults)
    }

    /// Grants `frame` to domain `to_dom`, read-only when `readonly`. Freed
    /// references are reused, as guests do (each thread reuses those of
    /// its own shard).
    pub fn grant(&self, frame: Gfn, to_dom: DomId, readonly: bool) -> GrantRef {
        let mut t = self.shard(home_shard());
        let gref = match t.free_refs.pop() {
            Some(r) => r,
            None => {
                let mut r = t.next_ref;
                while r < FIRST_GREF || t.entries.contains_key(&r) {
                    r = r.wrapping_add(SHARDS as u32);
                }
                t.next_ref = r.wrapping_add(SHARDS as u32);
                r
            }
        };
        t.entries.insert(
            gref,
            Entry {
                frame,
                to_dom,
                readonly,
                maps: 0,
            },
        );
        t.stats.active_grants += 1;
        gref
    }

    /// Ends grant `gref`. Fails with [`GrantBusy`] while it is mapped; ending
    /// an unknown reference does nothing.
    pub fn end_access(&self, gref: GrantRef) -> Result<(), GrantBusy> {
        let mut t = self.shard(shard_of_ref(gref));
        match t.entries.get(&gref) {
            None => Ok(()),
            Some(e) if e.maps > 0 => Err(GrantBusy),
            Some(_) => {
                t.entries.remove(&gref);
                t.free_refs.push(gref);
                t.stats.active_grants -= 1;
                Ok(())
            }
        }
    }

    /// Whether `gref` is an active grant.
    pub fn is_granted(&self, gref: GrantRef) -> bool {
        self.shard(shard_of_ref(gref)).entries.contains_key(&gref)
    }

    /// How many mappings of `gref` are held.
    pub fn map_count(&self, gref: GrantRef) -> u32 {
        self.shard(shard_of_ref(gref))
            .entries
            .get(&gref)
            .map_or(0, |e| e.maps)
    }

    /// Maps grant `gref` for domain `by_dom` (writable unless `readonly`),
    /// returning the granted frame and the handle to unmap it with.
    pub fn map(
        &self,
        gref: GrantRef,
        by_dom: DomId,
        readonly: bool,
    ) -> Result<(Gfn, GrantHandle), GrantError> {
        let i = shard_of_ref(gref);
        let injected = self.injected_failure(gref);
        let mut t = self.shard(i);
        let r = match injected {
            Some(err) => Err(err),
            None => Self::map_locked(&mut t, i, self.frames, gref, by_dom, readonly),
        };
        if r.is_err() {
            t.stats.failed_maps += 1;
        }
        r
    }

    /// The injected failure the next map of `gref` meets, taken.
    fn injected_failure(&self, gref: GrantRef) -> Option<GrantError> {
        // Acquire: pairs with the release of `inject_map_failures`.
        if !self.inner.armed.load(Ordering::Acquire) {
            return None;
        }
        let mut f = self.faults();
        let err = match f.fail_next.pop_front() {
            Some(e) => Some(e),
            None => f.fail_gref.get(&gref).copied(),
        };
        if err.is_some() {
            f.injected += 1;
        }
        if f.fail_next.is_empty() && f.fail_gref.is_empty() {
            self.inner.armed.store(false, Ordering::Relaxed);
        }
        err
    }

    fn map_locked(
        t: &mut Shard,
        shard: usize,
        frames: u64,
        gref: GrantRef,
        by_dom: DomId,
        readonly: bool,
    ) -> Result<(Gfn, GrantHandle), GrantError> {
        let e = t.entries.get_mut(&gref).ok_or(GrantError::BadRef)?;
        if e.to_dom != by_dom {
            return Err(GrantError::BadRef);
        }
        if e.readonly && !readonly {
            return Err(GrantError::Denied);
        }
        if e.frame >= frames {
            return Err(GrantError::General);
        }
        e.maps = e.maps.checked_add(1).ok_or(GrantError::NoSpace)?;
        let frame = e.frame;
        // The handle: a number within the shard, above the shard's bits.
        let limit = u32::MAX >> SHARD_BITS;
        let mut n = t.next_handle;
        let handle = loop {
            if n == 0 || n > limit {
                n = 1;
            }
            let h = (n << SHARD_BITS) | shard as u32;
            if !t.maps.contains_key(&h) {
                break h;
            }
            n += 1;
        };
        t.next_handle = n + 1;
        t.maps.insert(handle, MapRec { gref });
        t.stats.maps += 1;
        t.stats.mapped += 1;
        Ok((frame, GrantHandle(handle)))
    }

    /// Unmaps the mapping `handle`; [`GrantError::BadRef`] for an unknown
    /// handle.
    pub fn unmap(&self, handle: GrantHandle) -> Result<(), GrantError> {
        let mut t = self.shard(handle.0 as usize % SHARDS);
        let Some(rec) = t.maps.remove(&handle.0) else {
            t.stats.bad_unmaps += 1;
            return Err(GrantError::BadRef);
        };
        if let Some(e) = t.entries.get_mut(&rec.gref) {
            e.maps = e.maps.saturating_sub(1);
        }
        t.stats.unmaps += 1;
        t.stats.mapped -= 1;
        Ok(())
    }

    /// Injects map failures.
    pub fn inject_map_failures(&self, fault: MapFault) {
        let mut f = self.faults();
        match fault {
            MapFault::Next { count, error } => {
                for _ in 0..count {
                    f.fail_next.push_back(error);
                }
            }
            MapFault::Gref { gref, error } => {
                f.fail_gref.insert(gref, error);
            }
        }
        let armed = !f.fail_next.is_empty() || !f.fail_gref.is_empty();
        // Release: a map that sees the flag sees the failures (it takes
        // the lock anyway).
        self.inner.armed.store(armed, Ordering::Release);
    }

    /// Removes every injected failure not yet consumed.
    pub fn clear_map_failures(&self) {
        let mut f = self.faults();
        f.fail_next.clear();
        f.fail_gref.clear();
        self.inner.armed.store(false, Ordering::Release);
    }

    /// The counters, summed over the shards (exact when no operation runs
    /// meanwhile).
    pub fn stats(&self) -> GrantStats {
        let mut s = GrantStats::default();
        for i in 0..SHARDS {
            let t = self.shard(i).stats;
            s.active_grants += t.active_grants;
            s.maps += t.maps;
            s.unmaps += t.unmaps;
            s.mapped += t.mapped;
            s.failed_maps += t.failed_maps;
            s.bad_unmaps += t.bad_unmaps;
        }
        s.injected_failures = self.faults().injected;
        s
    }
}
