//! The persistent-grant cache of one ring: the back-end side of `io/blkif.h`
//! `feature-persistent`.
//!
//! When both ends advertise `feature-persistent`, the front-end promises to
//! reuse the same set of grants for all its requests (keeping them in a LIFO
//! queue so that a small subset is used most), and lets the back-end map
//! every grant writable even when a request only needs read access (blkif.h
//! note 8). The back-end may then keep those grants mapped across requests
//! and copy data from and to the mapped pages, saving a map/unmap (and the TLB
//! shootdown of the unmap) per segment. blkif.h leaves the number of grants
//! kept mapped to the back-end, suggests `RING_SIZE *
//! BLKIF_MAX_SEGMENTS_PER_REQUEST`, and asks a back-end that keeps fewer to
//! discard the least recently used ones.
//!
//! [`GrantCache`] is that bookkeeping for one ring (one queue), with the
//! policy:
//!
//! - **Bounded.** The cache owns `capacity` pages of the back-end's data
//!   window, `first_page .. first_page + capacity`; entry `i` is always mapped
//!   at window page `first_page + i`, so an entry is named by its page. All
//!   memory is allocated (fallibly) by [`GrantCache::try_new`] at connect
//!   time; no later call allocates.
//! - **LRU.** Mapped entries that no request is using are kept in a
//!   least-recently-released list. When a new grant is inserted and no entry
//!   is free, the head of that list is evicted and the caller unmaps it.
//!   Entries in use by an in-flight request are never evicted; when all are,
//!   the insert reports [`Insert::Full`] and the caller maps that segment for
//!   one request only (the non-persistent path).
//! - **Idle purge.** [`GrantCache::purge_idle`] unmaps entries nobody used
//!   for a while, so a front-end that stopped reusing its grants does not pin
//!   back-end mappings forever; [`GrantCache::drain`] empties the cache at
//!   disconnect.
//!
//! The cache never calls the host: it tells the caller which window pages to
//! map ([`Insert::New`]) and which `(page, handle)` pairs to unmap. Grant
//! references are hostile front-end input; here they are only keys (hashed
//! and compared), never indexes. Lookup is an open-addressing hash table with
//! linear probing and backward-shift deletion, sized to at least twice the
//! capacity, so a lookup is O(1) expected and O(capacity) at worst (a
//! front-end choosing colliding references only slows its own lookups, within
//! that bound). No call panics: a page outside the cache's range, or an
//! entry in the wrong state for the call, is ignored.

use alloc::vec::Vec;

use crate::host::{GrantHandle, GrantRef};
use crate::units::WindowPage;

/// The "no entry" index of the linked lists and the empty hash-table slot.
const NONE: u32 = u32::MAX;

/// The largest capacity accepted, so that the hash table (at most twice as
/// many slots, rounded up to a power of two) has at most 2^31 slots and every
/// entry index stays below the `u32::MAX` used as "no entry".
pub const MAX_CAPACITY: u32 = 1 << 30;

/// The odd multiplier of the Fibonacci hash (2^64 / golden ratio).
const HASH_MULTIPLIER: u64 = 0x9E37_79B9_7F4A_7C15;

/// Why a [`GrantCache`] could not be built.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CacheError {
    /// Allocating the entries or the hash table failed.
    NoMemory,
    /// `capacity` exceeds [`MAX_CAPACITY`], or `first_page + capacity`
    /// overflows a `u32`.
    BadRange,
}

/// The result of [`GrantCache::acquire`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Lookup {
    /// The grant is cached and mapped at window page `page`; the caller now
    /// holds the entry until [`GrantCache::release`] or
    /// [`GrantCache::unacquire`].
    Hit {
        /// The window page where the grant is mapped.
        page: WindowPage,
    },
    /// The grant is cached but already held by an in-flight request (or
    /// earlier in the same request). The caller refuses the request.
    Busy,
    /// The grant is not cached; the caller may [`GrantCache::insert`] it.
    Miss,
}

/// The result of [`GrantCache::insert`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Insert {
    /// A new entry, `Pending` and held by the caller, at window page `page`.
    /// The caller maps the grant there, then calls
    /// [`GrantCache::set_mapped`] (or [`GrantCache::forget`] if that failed).
    New {
        /// The window page where the grant must be mapped.
        page: WindowPage,
        /// The least-recently-used entry that was evicted to make room, as
        /// `(window page, handle)`: the caller unmaps it (before mapping the
        /// new grant, since it is the same page when the cache was full).
        evicted: Option<(WindowPage, GrantHandle)>,
    },
    /// No entry can be had: every entry is in use or pending (or the cache
    /// is disabled, or the grant is already cached, which means the caller
    /// skipped [`GrantCache::acquire`]). The caller maps the segment for
    /// this request only.
    Full,
}

/// The state of one entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    /// Unused; linked in the free list.
    Free,
    /// Inserted and held, the grant not mapped yet.
    Pending,
    /// The grant is mapped with this handle.
    Mapped(GrantHandle),
}

/// One cache entry, at window page `first_page + its index`.
#[derive(Clone, Copy, Debug)]
struct Entry {
    state: State,
    /// The front-end's grant reference (meaningless when free).
    gref: GrantRef,
    /// In-flight uses; a `Pending` entry always has `users > 0`.
    users: u16,
    /// When the last user released the entry (milliseconds, caller's clock),
    /// non-decreasing along the LRU list.
    last_used_ms: u64,
    /// LRU neighbours while mapped and unused ([`NONE`] otherwise).
    prev: u32,
    /// LRU successor, or the next free entry while free.
    next: u32,
}

const FREE_ENTRY: Entry = Entry {
    state: State::Free,
    gref: 0,
    users: 0,
    last_used_ms: 0,
    prev: NONE,
    next: NONE,
};

/// The persistent-grant cache of one ring; see the [module](self) docs.
///
/// The usual sequence for one segment of a request: [`acquire`]; on
/// [`Lookup::Miss`], [`insert`], map the grant at the returned page (after
/// unmapping any evicted entry), then [`set_mapped`] or [`forget`]; when the
/// request completes, [`release`]; if it is refused before any I/O,
/// [`unacquire`] every entry it took.
///
/// [`acquire`]: GrantCache::acquire
/// [`insert`]: GrantCache::insert
/// [`set_mapped`]: GrantCache::set_mapped
/// [`forget`]: GrantCache::forget
/// [`release`]: GrantCache::release
/// [`unacquire`]: GrantCache::unacquire
#[derive(Debug)]
pub struct GrantCache {
    entries: Vec<Entry>,
    /// Open-addressing table of entry indexes ([`NONE`] = empty slot); its
    /// length is a power of two and more than twice `len`, or 0 when the
    /// cache is disabled.
    table: Vec<u32>,
    /// `64 - log2(table.len())`: the hash keeps the high bits of the product.
    shift: u32,
    /// The number of entries (`entries.len()`).
    capacity: u32,
    first_page: WindowPage,
    free_head: u32,
    lru_head: u32,
    lru_tail: u32,
    len: u32,
    in_use: u32,
}

impl GrantCache {
    /// A cache of `capacity` entries at window pages `first_page ..
    /// first_page + capacity`, all free. `capacity == 0` makes a disabled
    /// cache: every [`acquire`](Self::acquire) misses and every
    /// [`insert`](Self::insert) is [`Insert::Full`]. The only call that
    /// allocates, fallibly.
    pub fn try_new(capacity: u32, first_page: WindowPage) -> Result<GrantCache, CacheError> {
        if capacity > MAX_CAPACITY || first_page.0.checked_add(capacity).is_none() {
            return Err(CacheError::BadRange);
        }
        let mut entries = Vec::new();
        let mut table = Vec::new();
        let mut shift = 64;
        if capacity > 0 {
            // capacity <= 2^30, so this is at most 2^31 and fits every usize
            // of a platform we run on (checked anyway).
            let slots = usize::try_from(capacity)
                .ok()
                .and_then(|c| c.checked_mul(2))
                .and_then(usize::checked_next_power_of_two)
                .ok_or(CacheError::BadRange)?;
            shift = 64u32.saturating_sub(slots.trailing_zeros());
            entries
                .try_reserve_exact(capacity as usize)
                .map_err(|_| CacheError::NoMemory)?;
            table
                .try_reserve_exact(slots)
                .map_err(|_| CacheError::NoMemory)?;
            // Free list in index order: entry 0 is handed out first.
            entries.extend((0..capacity).map(|i| Entry {
                next: i.checked_add(1).filter(|&n| n < capacity).unwrap_or(NONE),
                ..FREE_ENTRY
            }));
            table.resize(slots, NONE);
        }
        Ok(GrantCache {
            entries,
            table,
            shift,
            capacity,
            first_page,
            free_head: if capacity > 0 { 0 } else { NONE },
            lru_head: NONE,
            lru_tail: NONE,
            len: 0,
            in_use: 0,
        })
    }

    /// The number of entries (window pages) the cache owns.
    pub fn capacity(&self) -> u32 {
        self.capacity
    }

    /// The number of entries not free (pending or mapped).
    pub fn len(&self) -> u32 {
        self.len
    }

    /// Whether every entry is free.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The number of entries held by at least one in-flight request
    /// (including every pending entry).
    pub fn in_use(&self) -> u32 {
        self.in_use
    }

    /// Whether `page` is one of this cache's window pages.
    pub fn owns(&self, page: WindowPage) -> bool {
        self.index_of(page).is_some()
    }

    /// Looks `gref` up. A hit on a mapped entry nobody holds takes it (the
    /// caller becomes its one user; it leaves the LRU list) and returns its
    /// page. A hit on an entry already held (by another in-flight request,
    /// or earlier in the same request), or still pending, is
    /// [`Lookup::Busy`]: one grant must not back two in-flight segments.
    #[inline]
    pub fn acquire(&mut self, gref: GrantRef) -> Lookup {
        let Some((_, idx)) = self.find(gref) else {
            return Lookup::Miss;
        };
        let Some(e) = self.entries.get_mut(idx as usize) else {
            return Lookup::Miss;
        };
        if e.users > 0 || !matches!(e.state, State::Mapped(_)) {
            return Lookup::Busy;
        }
        e.users = 1;
        self.in_use = self.in_use.saturating_add(1);
        self.lru_unlink(idx);
        Lookup::Hit {
            page: self.page_of(idx),
        }
    }

    /// Makes an entry for `gref` after a [`Lookup::Miss`]: a free entry if
    /// there is one, else the least recently released mapped entry, which is
    /// evicted and returned for the caller to unmap. The new entry is
    /// pending and held by the caller (one user). [`Insert::Full`] when every
    /// entry is in use or pending, when the cache is disabled, or when `gref`
    /// is already cached (the caller must [`acquire`](Self::acquire) first;
    /// a second entry for one grant is never made).
    pub fn insert(&mut self, gref: GrantRef) -> Insert {
        if self.table.is_empty() || self.find(gref).is_some() {
            return Insert::Full;
        }
        let (idx, evicted) = if let Some(idx) = self.free_pop() {
            self.len = self.len.saturating_add(1);
            (idx, None)
        } else {
            let victim = self.lru_head;
            let Some(State::Mapped(handle)) = self.entries.get(victim as usize).map(|e| e.state)
            else {
                return Insert::Full;
            };
            self.lru_unlink(victim);
            self.table_remove(victim);
            (victim, Some((self.page_of(victim), handle)))
        };
        if let Some(e) = self.entries.get_mut(idx as usize) {
            *e = Entry {
                state: State::Pending,
                gref,
                users: 1,
                ..FREE_ENTRY
            };
        }
        self.in_use = self.in_use.saturating_add(1);
        self.table_insert(idx);
        Insert::New {
            page: self.page_of(idx),
            evicted,
        }
    }

    /// Records that the grant of the pending entry at `page` is now mapped
    /// with `handle`. The entry stays held by the caller. Ignored unless the
    /// entry is pending.
    pub fn set_mapped(&mut self, page: WindowPage, handle: GrantHandle) {
        let Some(idx) = self.index_of(page) else {
            return;
        };
        if let Some(e) = self.entries.get_mut(idx as usize) {
            if e.state == State::Pending {
                e.state = State::Mapped(handle);
            }
        }
    }

    /// Frees the pending entry at `page` (mapping its grant failed, or the
    /// request gave it up before mapping). Ignored unless the entry is
    /// pending: a mapped entry is only ever freed with its handle returned.
    pub fn forget(&mut self, page: WindowPage) {
        let Some(idx) = self.index_of(page) else {
            return;
        };
        if self.entries.get(idx as usize).map(|e| e.state) != Some(State::Pending) {
            return;
        }
        // A pending entry always has users > 0.
        self.in_use = self.in_use.saturating_sub(1);
        self.table_remove(idx);
        self.free_push(idx);
    }

    /// A request finished with the entry at `page`. When its last user
    /// leaves, the entry becomes the most recently used of the LRU list,
    /// last used at `now_ms` (or at the previous tail's time if that is
    /// later, keeping the list ordered by age). A pending entry released
    /// without [`set_mapped`](Self::set_mapped) is forgotten. Ignored for a
    /// free entry or one nobody holds.
    pub fn release(&mut self, page: WindowPage, now_ms: u64) {
        self.put_back(page, Some(now_ms));
    }

    /// Undoes an [`acquire`](Self::acquire) or [`insert`](Self::insert) of a
    /// request refused before any I/O: like [`release`](Self::release), but
    /// the entry keeps its last-use time (raised to the LRU tail's, if older,
    /// so the list stays ordered by age). A pending entry is forgotten.
    pub fn unacquire(&mut self, page: WindowPage) {
        self.put_back(page, None);
    }

    /// When the least recently used of the unheld mapped entries (the
    /// first [`purge_idle`](Self::purge_idle) would take) was last used;
    /// `None` when no entry is unheld and mapped. No entry has been idle
    /// longer: until the clock is `idle_ms` past this, a purge finds
    /// nothing.
    #[inline]
    pub fn oldest_use_ms(&self) -> Option<u64> {
        self.entries
            .get(self.lru_head as usize)
            .map(|e| e.last_used_ms)
    }

    /// Removes the unheld mapped entries idle for at least `idle_ms` (last
    /// used at or before `now_ms - idle_ms`), oldest first, writing their
    /// `(window page, handle)` pairs to `out` for the caller to unmap. Stops
    /// at the first entry used more recently, or when `out` is full; returns
    /// how many pairs were written.
    pub fn purge_idle(
        &mut self,
        now_ms: u64,
        idle_ms: u64,
        out: &mut [(WindowPage, GrantHandle)],
    ) -> usize {
        self.pop_lru(out, |e| now_ms.saturating_sub(e.last_used_ms) >= idle_ms)
    }

    /// Removes unheld mapped entries, oldest first, writing their `(window
    /// page, handle)` pairs to `out` for the caller to unmap; returns how
    /// many. At disconnect, call until it returns 0 (and again after the
    /// in-flight requests have released their entries).
    pub fn drain(&mut self, out: &mut [(WindowPage, GrantHandle)]) -> usize {
        self.pop_lru(out, |_| true)
    }

    // ---- internals ------------------------------------------------------

    /// The entry index of window page `page`, if the cache owns it.
    fn index_of(&self, page: WindowPage) -> Option<u32> {
        page.offset_from(self.first_page)
            .filter(|&i| i < self.capacity())
    }

    /// The window page of entry `idx` (`idx < capacity`).
    fn page_of(&self, idx: u32) -> WindowPage {
        // Cannot wrap for idx < capacity: try_new checked
        // first_page + capacity.
        WindowPage(self.first_page.0.wrapping_add(idx))
    }

    /// Shared body of `release` (`now_ms` given) and `unacquire`.
    fn put_back(&mut self, page: WindowPage, now_ms: Option<u64>) {
        let Some(idx) = self.index_of(page) else {
            return;
        };
        let Some(&e) = self.entries.get(idx as usize) else {
            return;
        };
        match e.state {
            State::Free => {}
            State::Pending => self.forget(page),
            State::Mapped(_) => {
                if e.users == 0 {
                    return;
                }
                let users = e.users.saturating_sub(1);
                let tail_ms = self
                    .entries
                    .get(self.lru_tail as usize)
                    .map_or(0, |t| t.last_used_ms);
                let Some(e) = self.entries.get_mut(idx as usize) else {
                    return;
                };
                e.users = users;
                if users == 0 {
                    let own = now_ms.unwrap_or(e.last_used_ms);
                    e.last_used_ms = own.max(tail_ms);
                    self.in_use = self.in_use.saturating_sub(1);
                    self.lru_push_tail(idx);
                }
            }
        }
    }

    /// Pops LRU entries from the head while `take` accepts them and `out`
    /// has room; frees them and reports them in `out`.
    fn pop_lru(
        &mut self,
        out: &mut [(WindowPage, GrantHandle)],
        take: impl Fn(&Entry) -> bool,
    ) -> usize {
        let mut n = 0;
        while let Some(slot) = out.get_mut(n) {
            let idx = self.lru_head;
            let Some(e) = self.entries.get(idx as usize) else {
                break;
            };
            let State::Mapped(handle) = e.state else {
                break;
            };
            if !take(e) {
                break;
            }
            *slot = (self.page_of(idx), handle);
            self.lru_unlink(idx);
            self.table_remove(idx);
            self.free_push(idx);
            n = n.saturating_add(1);
        }
        n
    }

    fn free_pop(&mut self) -> Option<u32> {
        let idx = self.free_head;
        let e = self.entries.get(idx as usize)?;
        self.free_head = e.next;
        Some(idx)
    }

    /// Marks entry `idx` free (already out of the table and the LRU list).
    fn free_push(&mut self, idx: u32) {
        let head = self.free_head;
        if let Some(e) = self.entries.get_mut(idx as usize) {
            *e = Entry {
                next: head,
                ..FREE_ENTRY
            };
            self.free_head = idx;
            self.len = self.len.saturating_sub(1);
        }
    }

    fn lru_push_tail(&mut self, idx: u32) {
        let tail = self.lru_tail;
        let Some(e) = self.entries.get_mut(idx as usize) else {
            return;
        };
        e.prev = tail;
        e.next = NONE;
        match self.entries.get_mut(tail as usize) {
            Some(t) => t.next = idx,
            None => self.lru_head = idx,
        }
        self.lru_tail = idx;
    }

    /// Takes entry `idx` out of the LRU list (it must be in it).
    fn lru_unlink(&mut self, idx: u32) {
        let Some(e) = self.entries.get_mut(idx as usize) else {
            return;
        };
        let (prev, next) = (e.prev, e.next);
        e.prev = NONE;
        e.next = NONE;
        match self.entries.get_mut(prev as usize) {
            Some(p) => p.next = next,
            None => self.lru_head = next,
        }
        match self.entries.get_mut(next as usize) {
            Some(n) => n.prev = prev,
            None => self.lru_tail = prev,
        }
    }

    /// The home slot of `gref` (the table is not empty).
    fn home(&self, gref: GrantRef) -> usize {
        // shift is in 33..=63, so the result is below table.len().
        (u64::from(gref).wrapping_mul(HASH_MULTIPLIER))
            .checked_shr(self.shift)
            .unwrap_or(0) as usize
    }

    fn mask(&self) -> usize {
        self.table.len().wrapping_sub(1)
    }

    /// The table slot and entry index of a non-free entry for `gref`.
    fn find(&self, gref: GrantRef) -> Option<(usize, u32)> {
        if self.table.is_empty() {
            return None;
        }
        let mut slot = self.home(gref);
        // The table always has an empty slot (len <= capacity < slots), so
        // the probe ends there; the bound only guards the loop.
        for _ in 0..self.table.len() {
            let idx = *self.table.get(slot)?;
            let e = self.entries.get(idx as usize)?;
            if e.gref == gref && e.state != State::Free {
                return Some((slot, idx));
            }
            slot = slot.wrapping_add(1) & self.mask();
        }
        None
    }

    /// Puts entry `idx` (not free, its gref not in the table) in the table.
    fn table_insert(&mut self, idx: u32) {
        let Some(gref) = self.entries.get(idx as usize).map(|e| e.gref) else {
            return;
        };
        let mask = self.mask();
        let mut slot = self.home(gref);
        // An empty slot exists (see `find`). Were it somehow missing, the
        // entry would just never hit; nothing else depends on the table.
        for _ in 0..self.table.len() {
            match self.table.get_mut(slot) {
                Some(s) if *s == NONE => {
                    *s = idx;
                    return;
                }
                Some(_) => slot = slot.wrapping_add(1) & mask,
                None => return,
            }
        }
    }

    /// Takes entry `idx` out of the table (backward-shift deletion: the
    /// following entries of the probe run move back into the hole when
    /// their home allows, so no tombstones are left).
    fn table_remove(&mut self, idx: u32) {
        let Some(gref) = self.entries.get(idx as usize).map(|e| e.gref) else {
            return;
        };
        let Some((mut hole, found)) = self.find(gref) else {
            return;
        };
        if found != idx {
            return;
        }
        let mask = self.mask();
        let mut slot = hole;
        for _ in 0..self.table.len() {
            slot = slot.wrapping_add(1) & mask;
            let Some(&moved) = self.table.get(slot) else {
                break;
            };
            if moved == NONE {
                break;
            }
            let Some(home) = self.entries.get(moved as usize).map(|e| self.home(e.gref)) else {
                break;
            };
            // `moved` may fill the hole if its home is not cyclically in
            // (hole, slot]: its probe from home to slot passes the hole.
            if slot.wrapping_sub(home) & mask >= slot.wrapping_sub(hole) & mask {
                if let Some(h) = self.table.get_mut(hole) {
                    *h = moved;
                }
                hole = slot;
            }
        }
        if let Some(h) = self.table.get_mut(hole) {
            *h = NONE;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::vec;

    const H0: GrantHandle = GrantHandle(0);

    /// Checks every structural invariant; used after each step of the
    /// model test.
    fn check(c: &GrantCache) {
        let cap = c.capacity() as usize;
        assert_eq!(c.entries.len(), cap);
        // Table: each occupied slot names a distinct non-free entry, findable.
        let mut in_table = vec![false; cap];
        let mut occupied = 0;
        for &idx in &c.table {
            if idx == NONE {
                continue;
            }
            occupied += 1;
            let e = &c.entries[idx as usize];
            assert_ne!(e.state, State::Free);
            assert!(!in_table[idx as usize], "entry twice in table");
            in_table[idx as usize] = true;
            assert_eq!(c.find(e.gref).map(|(_, i)| i), Some(idx));
        }
        let non_free = c.entries.iter().filter(|e| e.state != State::Free).count();
        assert_eq!(occupied, non_free);
        assert_eq!(c.len as usize, non_free);
        let held = c.entries.iter().filter(|e| e.users > 0).count();
        assert_eq!(c.in_use as usize, held);
        for e in &c.entries {
            if e.state == State::Pending {
                assert!(e.users > 0);
            }
        }
        // LRU: exactly the unheld mapped entries, linked both ways, ages
        // non-decreasing.
        let mut lru = vec![];
        let mut prev = NONE;
        let mut i = c.lru_head;
        while i != NONE {
            let e = &c.entries[i as usize];
            assert_eq!(e.prev, prev);
            assert!(matches!(e.state, State::Mapped(_)) && e.users == 0);
            if prev != NONE {
                assert!(c.entries[prev as usize].last_used_ms <= e.last_used_ms);
            }
            lru.push(i);
            assert!(lru.len() <= cap);
            prev = i;
            i = e.next;
        }
        assert_eq!(c.lru_tail, prev);
        let evictable = c
            .entries
            .iter()
            .filter(|e| matches!(e.state, State::Mapped(_)) && e.users == 0)
            .count();
        assert_eq!(lru.len(), evictable);
        // Free list: exactly the free entries.
        let mut free = 0;
        let mut i = c.free_head;
        while i != NONE {
            assert_eq!(c.entries[i as usize].state, State::Free);
            free += 1;
            assert!(free <= cap);
            i = c.entries[i as usize].next;
        }
        assert_eq!(free + non_free, cap);
    }

    /// Inserts and maps `gref`, expecting a new entry; returns its page.
    /// The lookup result of a cached, idle grant at window page `page`.
    fn hit(page: u32) -> Lookup {
        Lookup::Hit {
            page: WindowPage(page),
        }
    }

    fn add(c: &mut GrantCache, gref: GrantRef) -> (WindowPage, Option<(WindowPage, GrantHandle)>) {
        assert_eq!(c.acquire(gref), Lookup::Miss);
        match c.insert(gref) {
            Insert::New { page, evicted } => {
                c.set_mapped(page, GrantHandle(gref ^ 0x5a5a));
                (page, evicted)
            }
            Insert::Full => panic!("unexpected Full for {gref}"),
        }
    }

    /// A cache of `n` pages from window page 0, holding grants `0..n`, each
    /// mapped and in use.
    fn full_of(n: u32) -> GrantCache {
        let mut c = GrantCache::try_new(n, WindowPage(0)).unwrap();
        for g in 0..n {
            add(&mut c, g);
        }
        c
    }

    /// Inserts `gref`, which must be new: the page it is pending on.
    fn insert_new(c: &mut GrantCache, gref: GrantRef) -> WindowPage {
        let Insert::New { page, .. } = c.insert(gref) else {
            panic!("{gref} was not new")
        };
        page
    }

    #[test]
    fn hit_miss_busy() {
        let mut c = GrantCache::try_new(4, WindowPage(100)).unwrap();
        assert!(c.is_empty());
        assert_eq!(c.acquire(7), Lookup::Miss);
        let (page, ev) = add(&mut c, 7);
        assert_eq!((page, ev), (WindowPage(100), None));
        assert_eq!((c.len(), c.in_use()), (1, 1));
        // Held by the first request: a second one is refused.
        assert_eq!(c.acquire(7), Lookup::Busy);
        c.release(page, 10);
        assert_eq!((c.len(), c.in_use()), (1, 0));
        assert_eq!(c.acquire(7), hit(100));
        // Same grant twice in one request: the second acquire is Busy.
        assert_eq!(c.acquire(7), Lookup::Busy);
        assert_eq!(c.acquire(8), Lookup::Miss);
        c.release(page, 20);
        check(&c);
    }

    #[test]
    fn pending_is_busy_and_insert_of_cached_is_full() {
        let mut c = GrantCache::try_new(4, WindowPage(0)).unwrap();
        let page = insert_new(&mut c, 3);
        assert_eq!(c.acquire(3), Lookup::Busy);
        assert_eq!(c.insert(3), Insert::Full);
        c.set_mapped(page, GrantHandle(9));
        c.release(page, 1);
        // Cached and idle: insert still refuses a duplicate.
        assert_eq!(c.insert(3), Insert::Full);
        assert_eq!(c.len(), 1);
        check(&c);
    }

    #[test]
    fn fill_then_evict_in_lru_order() {
        let mut c = GrantCache::try_new(3, WindowPage(10)).unwrap();
        let pages: Vec<u32> = (1..=3).map(|g| add(&mut c, g).0 .0).collect();
        assert_eq!(pages, [10, 11, 12]);
        // Released in the order 2, 3, 1.
        c.release(WindowPage(11), 5);
        c.release(WindowPage(12), 6);
        c.release(WindowPage(10), 7);
        check(&c);
        let (p, ev) = add(&mut c, 4);
        assert_eq!(
            (p.0, ev),
            (11, Some((WindowPage(11), GrantHandle(2 ^ 0x5a5a))))
        );
        assert_eq!(c.acquire(2), Lookup::Miss);
        let (p, ev) = add(&mut c, 5);
        assert_eq!(
            (p.0, ev),
            (12, Some((WindowPage(12), GrantHandle(3 ^ 0x5a5a))))
        );
        // LRU is [10]; releasing 11 makes it [10, 11]. A hit takes 10 out,
        // and releasing it makes it the newest: [11, 10].
        c.release(WindowPage(11), 8);
        assert_eq!(c.acquire(1), hit(10));
        check(&c);
        c.release(WindowPage(10), 9);
        let (_, ev) = add(&mut c, 6);
        assert_eq!(ev, Some((WindowPage(11), GrantHandle(4 ^ 0x5a5a))));
        check(&c);
    }

    #[test]
    fn full_when_all_in_use() {
        let mut c = GrantCache::try_new(2, WindowPage(0)).unwrap();
        add(&mut c, 1);
        let page = insert_new(&mut c, 2);
        // One held mapped, one pending: nothing to evict.
        assert_eq!(c.insert(3), Insert::Full);
        c.set_mapped(page, H0);
        assert_eq!(c.insert(3), Insert::Full);
        assert_eq!((c.len(), c.in_use()), (2, 2));
        c.release(page, 1);
        assert!(matches!(
            c.insert(3),
            Insert::New {
                page: WindowPage(1),
                evicted: Some((WindowPage(1), _))
            }
        ));
        check(&c);
    }

    #[test]
    fn purge_idle_in_age_order_and_bounded_by_out() {
        let mut c = full_of(5);
        // Release times: page 3 at 10, 0 at 20, 4 at 30, 1 at 40; 2 stays held.
        for (p, t) in [(3, 10), (0, 20), (4, 30), (1, 40)] {
            c.release(WindowPage(p), t);
        }
        let mut out = [(WindowPage(0), H0); 2];
        // now 45, idle 20: pages used at or before 25 go (3, 0), oldest first.
        assert_eq!(c.oldest_use_ms(), Some(10));
        assert_eq!(c.purge_idle(45, 20, &mut out), 2);
        assert_eq!([out[0].0, out[1].0], [3, 0].map(WindowPage));
        assert_eq!(out[0].1, GrantHandle(3 ^ 0x5a5a));
        // What is left was used at 30 at the earliest: idle at 50.
        assert_eq!(c.oldest_use_ms(), Some(30));
        assert_eq!(c.purge_idle(45, 20, &mut out), 0);
        // Everything idle, but out holds one at a time.
        let mut one = [(WindowPage(0), H0); 1];
        assert_eq!(c.purge_idle(1000, 20, &mut one), 1);
        assert_eq!(one[0].0, WindowPage(4));
        assert_eq!(c.purge_idle(1000, 20, &mut one), 1);
        assert_eq!(one[0].0, WindowPage(1));
        assert_eq!(c.purge_idle(1000, 20, &mut one), 0);
        assert_eq!(c.purge_idle(1000, 20, &mut []), 0);
        // The held entry survives, and is not idle.
        assert_eq!(c.oldest_use_ms(), None);
        assert_eq!((c.len(), c.in_use()), (1, 1));
        check(&c);
    }

    #[test]
    fn purge_idle_before_the_clock_reaches_idle() {
        let mut c = GrantCache::try_new(2, WindowPage(0)).unwrap();
        add(&mut c, 1);
        c.release(WindowPage(0), 0);
        let mut out = [(WindowPage(0), H0); 2];
        assert_eq!(c.purge_idle(5, 10, &mut out), 0);
        assert_eq!(c.purge_idle(10, 10, &mut out), 1);
    }

    #[test]
    fn drain_takes_only_unheld_mapped() {
        let mut c = GrantCache::try_new(6, WindowPage(50)).unwrap();
        for g in 0..6 {
            add(&mut c, g * 1000);
        }
        for p in [50, 52, 53, 55] {
            c.release(WindowPage(p), 1);
        }
        let mut out = [(WindowPage(0), H0); 3];
        let mut pages = vec![];
        loop {
            let n = c.drain(&mut out);
            if n == 0 {
                break;
            }
            pages.extend(out[..n].iter().map(|o| o.0));
        }
        assert_eq!(pages, [50, 52, 53, 55].map(WindowPage));
        assert_eq!((c.len(), c.in_use()), (2, 2));
        c.release(WindowPage(51), 2);
        c.release(WindowPage(54), 2);
        assert_eq!(c.drain(&mut out), 2);
        assert!(c.is_empty());
        check(&c);
    }

    #[test]
    fn forget_and_unacquire_pending() {
        let mut c = GrantCache::try_new(2, WindowPage(0)).unwrap();
        let page = insert_new(&mut c, 1);
        c.forget(page);
        assert!(c.is_empty());
        assert_eq!(c.in_use(), 0);
        assert_eq!(c.acquire(1), Lookup::Miss);
        let page = insert_new(&mut c, 1);
        c.unacquire(page);
        assert!(c.is_empty());
        let page = insert_new(&mut c, 1);
        c.release(page, 3);
        assert!(c.is_empty());
        // forget of a mapped entry is ignored (its handle must come back).
        let (page, _) = add(&mut c, 1);
        c.forget(page);
        assert_eq!(c.len(), 1);
        check(&c);
    }

    #[test]
    fn unacquire_keeps_age_and_order() {
        let mut c = full_of(3);
        c.release(WindowPage(0), 10);
        c.release(WindowPage(1), 20);
        c.release(WindowPage(2), 30);
        // Entry 0 (used at 10) is taken by a request that is then refused:
        // back at the tail, its age raised to the tail's (30), not to "now".
        assert_eq!(c.acquire(0), hit(0));
        c.unacquire(WindowPage(0));
        assert_eq!(c.entries[0].last_used_ms, 30);
        // Entry 2 was used at 30; entry 1 (20) is refused after it: it
        // keeps 30 too. Entry 2 refused while newest keeps its own time.
        assert_eq!(c.acquire(2), hit(2));
        c.release(WindowPage(2), 50);
        assert_eq!(c.acquire(2), hit(2));
        c.unacquire(WindowPage(2));
        assert_eq!(c.entries[2].last_used_ms, 50);
        // LRU order is now 1 (20), 0 (30), 2 (50): the refusals did not
        // make 0 older than it was, nor 2 newer.
        let mut out = [(WindowPage(0), H0); 3];
        assert_eq!(c.purge_idle(70, 40, &mut out), 2);
        assert_eq!([out[0].0, out[1].0], [1, 0].map(WindowPage));
        assert_eq!(c.purge_idle(90, 40, &mut out), 1);
        assert_eq!(out[0].0, WindowPage(2));
        check(&c);
    }

    #[test]
    fn release_clamps_backward_clock() {
        let mut c = GrantCache::try_new(2, WindowPage(0)).unwrap();
        add(&mut c, 1);
        add(&mut c, 2);
        c.release(WindowPage(0), 100);
        c.release(WindowPage(1), 50);
        check(&c);
        let mut out = [(WindowPage(0), H0); 2];
        assert_eq!(c.purge_idle(150, 50, &mut out), 2);
        assert_eq!([out[0].0, out[1].0], [0, 1].map(WindowPage));
    }

    #[test]
    fn bad_pages_and_states_are_ignored() {
        let mut c = GrantCache::try_new(2, WindowPage(10)).unwrap();
        for p in [0, 9, 12, u32::MAX].map(WindowPage) {
            assert!(!c.owns(p));
            c.set_mapped(p, H0);
            c.forget(p);
            c.release(p, 1);
            c.unacquire(p);
        }
        assert!(c.owns(WindowPage(10)) && c.owns(WindowPage(11)));
        // Free entries.
        c.set_mapped(WindowPage(10), H0);
        c.forget(WindowPage(10));
        c.release(WindowPage(10), 1);
        c.unacquire(WindowPage(10));
        assert!(c.is_empty());
        let (p, _) = add(&mut c, 5);
        // set_mapped twice keeps the first handle.
        c.set_mapped(p, GrantHandle(77));
        c.release(p, 1);
        // Releasing an unheld entry is ignored.
        c.release(p, 2);
        c.unacquire(p);
        assert_eq!(c.in_use(), 0);
        let mut out = [(WindowPage(0), H0); 1];
        assert_eq!(c.drain(&mut out), 1);
        assert_eq!(out[0], (WindowPage(10), GrantHandle(5 ^ 0x5a5a)));
        check(&c);
    }

    #[test]
    fn capacity_zero_is_disabled() {
        let mut c = GrantCache::try_new(0, WindowPage(5)).unwrap();
        assert_eq!(c.capacity(), 0);
        assert_eq!(c.acquire(1), Lookup::Miss);
        assert_eq!(c.insert(1), Insert::Full);
        assert!(!c.owns(WindowPage(5)));
        c.release(WindowPage(5), 0);
        c.set_mapped(WindowPage(5), H0);
        assert_eq!(c.drain(&mut [(WindowPage(0), H0); 4]), 0);
        assert_eq!(c.purge_idle(9, 0, &mut [(WindowPage(0), H0); 4]), 0);
        assert!(c.is_empty());
        check(&c);
    }

    #[test]
    fn bad_ranges() {
        assert_eq!(
            GrantCache::try_new(2, WindowPage(u32::MAX - 1)).err(),
            Some(CacheError::BadRange)
        );
        assert_eq!(
            GrantCache::try_new(MAX_CAPACITY + 1, WindowPage(0)).err(),
            Some(CacheError::BadRange)
        );
        let c = GrantCache::try_new(2, WindowPage(u32::MAX - 2)).unwrap();
        assert!(c.owns(WindowPage(u32::MAX - 1)) && !c.owns(WindowPage(u32::MAX)));
    }

    #[test]
    fn deletion_keeps_colliding_keys_findable() {
        let cap = 16;
        let mut c = GrantCache::try_new(cap, WindowPage(0)).unwrap();
        // Keys sharing a home slot, and keys of the next slot, so runs
        // overlap and wrap.
        let last = c.table.len() - 1;
        let keys: Vec<GrantRef> = (0..200_000u32)
            .filter(|&g| c.home(g) == last || c.home(g) == 0 || c.home(g) == 1)
            .take(48)
            .collect();
        assert_eq!(keys.len(), 48);
        let mut rng = Lcg(0x1234_5678_9abc_def1);
        let mut page_of = vec![None::<WindowPage>; keys.len()];
        let mut now = 0;
        for round in 0..3000 {
            let k = rng.below(keys.len() as u64) as usize;
            let gref = keys[k];
            now += 1;
            match c.acquire(gref) {
                Lookup::Hit { page } => {
                    assert_eq!(page_of[k], Some(page));
                    c.release(page, now);
                }
                Lookup::Busy => panic!("nothing is held"),
                Lookup::Miss => {
                    assert_eq!(page_of[k], None);
                    let Insert::New { page, evicted } = c.insert(gref) else {
                        panic!("full")
                    };
                    if let Some((ep, _)) = evicted {
                        let j = page_of.iter().position(|&p| p == Some(ep)).unwrap();
                        page_of[j] = None;
                    }
                    page_of[k] = Some(page);
                    c.set_mapped(page, H0);
                    c.release(page, now);
                }
            }
            // Every cached key is still found.
            for (j, &g) in keys.iter().enumerate() {
                assert_eq!(
                    c.find(g).map(|(_, i)| WindowPage(i)),
                    page_of[j],
                    "round {round}"
                );
            }
            if round % 500 == 499 {
                // Drop a few of the oldest too.
                let mut out = [(WindowPage(0), H0); 5];
                let n = c.purge_idle(now, 0, &mut out);
                for &(p, _) in &out[..n] {
                    let j = page_of.iter().position(|&q| q == Some(p)).unwrap();
                    page_of[j] = None;
                }
            }
            check(&c);
        }
    }

    /// Knuth's MMIX linear congruential generator: deterministic, and the
    /// high bits serve as the numbers.
    struct Lcg(u64);

    impl Lcg {
        fn below(&mut self, n: u64) -> u64 {
            self.0 = self
                .0
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (self.0 >> 33) % n
        }
    }

    /// The naive model: one record per page, LRU order by a release stamp.
    #[derive(Clone, Copy, Debug, PartialEq)]
    enum MState {
        Free,
        Pending,
        Mapped(GrantHandle),
    }

    #[derive(Clone, Copy, Debug)]
    struct MEntry {
        state: MState,
        gref: GrantRef,
        users: u16,
        last: u64,
        /// Position in the LRU order (larger = more recently released).
        stamp: u64,
    }

    struct Model {
        first: u32,
        e: Vec<MEntry>,
        stamp: u64,
    }

    const M_FREE: MEntry = MEntry {
        state: MState::Free,
        gref: 0,
        users: 0,
        last: 0,
        stamp: 0,
    };

    impl Model {
        fn free(&mut self, i: usize) {
            self.e[i] = M_FREE;
        }

        fn find(&self, gref: GrantRef) -> Option<usize> {
            self.e
                .iter()
                .position(|m| m.state != MState::Free && m.gref == gref)
        }

        fn evictable(&self) -> Vec<usize> {
            let mut v: Vec<usize> = (0..self.e.len())
                .filter(|&i| matches!(self.e[i].state, MState::Mapped(_)) && self.e[i].users == 0)
                .collect();
            v.sort_by_key(|&i| self.e[i].stamp);
            v
        }

        fn tail_last(&self) -> u64 {
            self.evictable().last().map_or(0, |&i| self.e[i].last)
        }

        fn put_back(&mut self, i: usize, now: Option<u64>) {
            let m = self.e[i];
            match m.state {
                MState::Free => {}
                MState::Pending => self.free(i),
                MState::Mapped(_) if m.users == 0 => {}
                MState::Mapped(_) => {
                    let tail = self.tail_last();
                    self.e[i].users -= 1;
                    if self.e[i].users == 0 {
                        self.stamp += 1;
                        self.e[i].stamp = self.stamp;
                        self.e[i].last = now.unwrap_or(m.last).max(tail);
                    }
                }
            }
        }

        fn pop(
            &mut self,
            out_len: usize,
            pred: impl Fn(&MEntry) -> bool,
        ) -> Vec<(WindowPage, GrantHandle)> {
            let mut v = vec![];
            for i in self.evictable() {
                if v.len() == out_len || !pred(&self.e[i]) {
                    break;
                }
                let MState::Mapped(h) = self.e[i].state else {
                    unreachable!()
                };
                v.push((WindowPage(self.first + i as u32), h));
                self.free(i);
            }
            v
        }
    }

    #[test]
    fn randomized_against_model() {
        let mut seen = Seen::default();
        for seed in [1u64, 0xdead_beef, 0x0123_4567_89ab_cdef, 42] {
            run_model(seed, 8, 24, 6000, &mut seen);
            run_model(seed, 3, 6, 3000, &mut seen);
            run_model(seed, 32, 100, 6000, &mut seen);
        }
        // The walk reached every interesting case.
        assert!(seen.hits > 0 && seen.busy > 0 && seen.full > 0, "{seen:?}");
        assert!(
            seen.evictions > 0 && seen.purged > 0 && seen.drained > 0,
            "{seen:?}"
        );
    }

    /// How often the model test met each outcome.
    #[derive(Debug, Default)]
    struct Seen {
        hits: u32,
        busy: u32,
        full: u32,
        evictions: u32,
        purged: usize,
        drained: usize,
    }

    /// One acquire of a random grant in the model test, checked against the
    /// model; a miss inserts it (and maps it, or fails the mapping).
    #[allow(clippy::too_many_arguments)]
    fn acquire_step(
        c: &mut GrantCache,
        m: &mut Model,
        rng: &mut Lcg,
        keys: u64,
        held: &mut Vec<u32>,
        next_handle: &mut u32,
        seen: &mut Seen,
    ) {
        let first = m.first;
        let gref = rng.below(keys) as u32 * 7919;
        let got = c.acquire(gref);
        let want = match m.find(gref) {
            None => Lookup::Miss,
            Some(i) if m.e[i].users > 0 || m.e[i].state == MState::Pending => Lookup::Busy,
            Some(i) => {
                m.e[i].users = 1;
                Lookup::Hit {
                    page: WindowPage(first + i as u32),
                }
            }
        };
        assert_eq!(got, want);
        match got {
            Lookup::Hit { page } => {
                seen.hits += 1;
                held.push(page.0);
            }
            Lookup::Miss => {
                let ins = c.insert(gref);
                let free = m.e.iter().position(|e| e.state == MState::Free);
                let ev = m.evictable();
                match ins {
                    Insert::Full => {
                        seen.full += 1;
                        assert!(free.is_none() && ev.is_empty());
                    }
                    Insert::New { page, evicted } => {
                        let i = (page.0 - first) as usize;
                        if free.is_some() {
                            assert_eq!(evicted, None);
                            assert_eq!(m.e[i].state, MState::Free);
                        } else {
                            let v = ev[0];
                            let MState::Mapped(h) = m.e[v].state else {
                                unreachable!()
                            };
                            assert_eq!(evicted, Some((WindowPage(first + v as u32), h)));
                            assert_eq!(i, v);
                            seen.evictions += 1;
                        }
                        m.e[i] = MEntry {
                            state: MState::Pending,
                            gref,
                            users: 1,
                            last: 0,
                            stamp: 0,
                        };
                        held.push(page.0);
                        // Map it, or fail the mapping.
                        if rng.below(8) != 0 {
                            let h = GrantHandle(*next_handle);
                            *next_handle += 1;
                            c.set_mapped(page, h);
                            m.e[i].state = MState::Mapped(h);
                        } else if rng.below(2) == 0 {
                            c.forget(page);
                            m.free(i);
                            held.retain(|&p| p != page.0);
                        }
                    }
                }
            }
            Lookup::Busy => seen.busy += 1,
        }
    }

    fn run_model(seed: u64, cap: u32, keys: u64, ops: usize, seen: &mut Seen) {
        let first = 1000;
        let mut c = GrantCache::try_new(cap, WindowPage(first)).unwrap();
        let mut m = Model {
            first,
            e: vec![M_FREE; cap as usize],
            stamp: 0,
        };
        let mut rng = Lcg(seed);
        let mut now = 0u64;
        let mut next_handle = 1u32;
        // Pages held by simulated requests (a page at most once).
        let mut held: Vec<u32> = vec![];
        for _ in 0..ops {
            now += rng.below(4);
            match rng.below(100) {
                0..=44 => acquire_step(
                    &mut c,
                    &mut m,
                    &mut rng,
                    keys,
                    &mut held,
                    &mut next_handle,
                    seen,
                ),
                45..=79 if !held.is_empty() => {
                    let k = rng.below(held.len() as u64) as usize;
                    let page = held.swap_remove(k);
                    let i = (page - first) as usize;
                    let page = WindowPage(page);
                    if rng.below(4) == 0 {
                        c.unacquire(page);
                        m.put_back(i, None);
                    } else {
                        c.release(page, now);
                        m.put_back(i, Some(now));
                    }
                }
                80..=89 => {
                    let idle = rng.below(40);
                    let mut out = vec![(WindowPage(0), H0); rng.below(4) as usize];
                    let n = c.purge_idle(now, idle, &mut out);
                    let want = m.pop(out.len(), |e| now.saturating_sub(e.last) >= idle);
                    assert_eq!(&out[..n], &want[..]);
                    seen.purged += n;
                }
                90..=91 => {
                    let mut out = vec![(WindowPage(0), H0); rng.below(6) as usize];
                    let n = c.drain(&mut out);
                    let want = m.pop(out.len(), |_| true);
                    assert_eq!(&out[..n], &want[..]);
                    seen.drained += n;
                }
                _ => {
                    // Calls on arbitrary pages in arbitrary states must be
                    // harmless: pick a page nobody holds.
                    let page = first.wrapping_sub(2) + rng.below(u64::from(cap) + 4) as u32;
                    if held.contains(&page) {
                        continue;
                    }
                    let page = WindowPage(page);
                    c.release(page, now);
                    c.unacquire(page);
                    c.set_mapped(page, GrantHandle(0xffff));
                    c.forget(page);
                }
            }
            check(&c);
            let len = m.e.iter().filter(|e| e.state != MState::Free).count();
            assert_eq!(c.len() as usize, len);
            let busy = m.e.iter().filter(|e| e.users > 0).count();
            assert_eq!(c.in_use() as usize, busy);
            for (i, me) in m.e.iter().enumerate() {
                let ce = &c.entries[i];
                let st = match ce.state {
                    State::Free => MState::Free,
                    State::Pending => MState::Pending,
                    State::Mapped(h) => MState::Mapped(h),
                };
                assert_eq!(st, me.state);
                if me.state != MState::Free {
                    assert_eq!((ce.gref, ce.users), (me.gref, me.users));
                }
                if matches!(me.state, MState::Mapped(_)) && me.users == 0 {
                    assert_eq!(ce.last_used_ms, me.last);
                }
            }
        }
    }
}
