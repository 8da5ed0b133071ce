//! One guest domain's grant table, after `grant_table.h`.
//!
//! The guest grants a frame to another domain (`gnttab_grant_foreign_access`),
//! read-only or writable, and ends the grant (`gnttab_end_foreign_access_ref`),
//! which fails while the other domain still has the frame mapped, as Xen's
//! does. The other domain maps a grant (`GNTTABOP_map_grant_ref`) and unmaps
//! it by handle (`GNTTABOP_unmap_grant_ref`). Map failures can be injected
//! for test scenarios, and counters let tests check that everything mapped
//! was unmapped.

use std::collections::{HashMap, VecDeque};
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

#[derive(Debug, Default)]
struct Table {
    entries: HashMap<GrantRef, Entry>,
    free_refs: Vec<GrantRef>,
    next_ref: GrantRef,
    maps: HashMap<u32, MapRec>,
    next_handle: u32,
    fail_next: VecDeque<GrantError>,
    fail_gref: HashMap<GrantRef, GrantError>,
    stats: GrantStats,
}

/// The grant table of one guest domain. Cheap to clone (shared); `Send + Sync`.
#[derive(Clone, Debug)]
pub struct GrantTable {
    dom: DomId,
    frames: u64,
    inner: Arc<Mutex<Table>>,
}

impl GrantTable {
    /// An empty grant table for domain `dom`, whose RAM has `frames` frames.
    pub fn new(dom: DomId, frames: u64) -> GrantTable {
        GrantTable {
            dom,
            frames,
            inner: Arc::new(Mutex::new(Table {
                next_ref: FIRST_GREF,
                next_handle: 1,
                ..Table::default()
            })),
        }
    }

    /// The granting domain.
    pub fn domid(&self) -> DomId {
        self.dom
    }

    fn lock(&self) -> MutexGuard<'_, Table> {
        locked(&self.inner)
    }

    /// Grants `frame` to domain `to_dom`, read-only when `readonly`. Freed
    /// references are reused, as guests do.
    pub fn grant(&self, frame: Gfn, to_dom: DomId, readonly: bool) -> GrantRef {
        let mut t = self.lock();
        let gref = match t.free_refs.pop() {
            Some(r) => r,
            None => {
                let mut r = t.next_ref;
                while r < FIRST_GREF || t.entries.contains_key(&r) {
                    r = r.wrapping_add(1);
                }
                t.next_ref = r.wrapping_add(1);
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
        let mut t = self.lock();
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
        self.lock().entries.contains_key(&gref)
    }

    /// How many mappings of `gref` are held.
    pub fn map_count(&self, gref: GrantRef) -> u32 {
        self.lock().entries.get(&gref).map_or(0, |e| e.maps)
    }

    /// Maps grant `gref` for domain `by_dom` (writable unless `readonly`),
    /// returning the granted frame and the handle to unmap it with.
    pub fn map(
        &self,
        gref: GrantRef,
        by_dom: DomId,
        readonly: bool,
    ) -> Result<(Gfn, GrantHandle), GrantError> {
        let mut t = self.lock();
        let r = Self::map_locked(&mut t, self.frames, gref, by_dom, readonly);
        if r.is_err() {
            t.stats.failed_maps += 1;
        }
        r
    }

    fn map_locked(
        t: &mut Table,
        frames: u64,
        gref: GrantRef,
        by_dom: DomId,
        readonly: bool,
    ) -> Result<(Gfn, GrantHandle), GrantError> {
        if let Some(err) = t.fail_next.pop_front() {
            t.stats.injected_failures += 1;
            return Err(err);
        }
        if let Some(&err) = t.fail_gref.get(&gref) {
            t.stats.injected_failures += 1;
            return Err(err);
        }
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
        let mut h = t.next_handle;
        while h == 0 || t.maps.contains_key(&h) {
            h = h.wrapping_add(1);
        }
        t.next_handle = h.wrapping_add(1);
        t.maps.insert(h, MapRec { gref });
        t.stats.maps += 1;
        t.stats.mapped += 1;
        Ok((frame, GrantHandle(h)))
    }

    /// Unmaps the mapping `handle`; [`GrantError::BadRef`] for an unknown
    /// handle.
    pub fn unmap(&self, handle: GrantHandle) -> Result<(), GrantError> {
        let mut t = self.lock();
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
        let mut t = self.lock();
        match fault {
            MapFault::Next { count, error } => {
                for _ in 0..count {
                    t.fail_next.push_back(error);
                }
            }
            MapFault::Gref { gref, error } => {
                t.fail_gref.insert(gref, error);
            }
        }
    }

    /// Removes every injected failure not yet consumed.
    pub fn clear_map_failures(&self) {
        let mut t = self.lock();
        t.fail_next.clear();
        t.fail_gref.clear();
    }

    /// The counters.
    pub fn stats(&self) -> GrantStats {
        self.lock().stats
    }
}
