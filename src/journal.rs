//! The in-flight journal of one queue, and the ring that keeps it: what a
//! back-end process leaves behind so that another process can take over
//! its live ring (`io/ring.h`) without the front-end seeing more than a
//! pause.
//!
//! A front-end such as Linux's `xen-blkfront` cannot reconnect to a
//! back-end that went away while connected, so a new back-end process must
//! serve the same shared ring: map the same pages, bind a new channel to
//! the front-end's port, and answer exactly once every request the old
//! process consumed but had not answered. The ring alone cannot say which
//! those are: responses go out in completion order into the slots requests
//! came in, so a request's slot may already hold another request's
//! response. The journal keeps what the ring forgets, in memory the
//! platform provides and that survives the process (`xbb-serve`: a file on
//! a tmpfs, mapped shared; [`crate::host::Host::journal_open`]). A
//! platform that provides none (the kernel, the lab by default) keeps no
//! journal, and nothing here costs it anything.
//!
//! # Format (native endianness, every field a 32-bit word)
//!
//! | bytes | header |
//! |---|---|
//! | 0 | magic `xbbJ`, written last when the journal is made |
//! | 4 | version ([`VERSION`]) |
//! | 8, 12, 16 | the vbd: front-end domain, device id, queue |
//! | 20, 24 | the ring: ABI (32 or 64), pages |
//! | 28, 32 | entries (the ring's size) and the entry size ([`ENTRY_SIZE`]) |
//! | 36 | `req_cons`: every request below it was consumed and recorded |
//! | 64..192 | the ring's grant references (unused ones 0) |
//!
//! Then one entry per ring slot, [`ENTRY_SIZE`] bytes each: its state
//! (free, live, answered), the ring index the request was consumed at, the
//! ring index its response was written at (when answered), the length of
//! the request, and the request's bytes as the ring copied them once
//! ([`RawRequest`]).
//!
//! # Ordering (one writer per queue)
//!
//! 1. A request consumed at index `i`: its entry is written, then marked
//!    live, then the header's `req_cons` moves to `i + 1`
//!    ([`Journal::record`]).
//! 2. Its response: written into ring slot `j`, then the entry records `j`
//!    and is marked answered ([`Journal::answered`]), then (with others)
//!    published by storing the ring's `rsp_prod`; entries are freed only
//!    after that store ([`Journal::published`]).
//!
//! Each step is a release store after the writes it covers, which orders
//! them for the compiler and the processor alike; a process that dies
//! between any two leaves a journal [`JournaledRing::take_over`] reads
//! right. With `C` the header's `req_cons` and `P` the ring's `rsp_prod`:
//! a live entry for index `C` was never consumed (the ring hands that
//! request out again); an answered entry with `j < P` was answered (its
//! response is visible); every other entry is re-executed — the front-end
//! has not seen its completion, so serving a read, write, flush or discard
//! again is a retry — and there must be exactly `C - P` of them. Responses
//! resume at `P` ([`BackRing::attach`]), overwriting any the old process
//! wrote but never published.
//!
//! Everything read back is vetted: the header against the connection it
//! must describe, every entry's state, length and indices, the count, the
//! indices of the ring itself (a front-end may have written anything
//! meanwhile). A replayed request is decoded from its bytes and goes
//! through the queue's ordinary validation. Any inconsistency refuses the
//! takeover ([`TakeoverError`]); nothing here panics or loops beyond one
//! pass over the entries.

use alloc::vec::Vec;
use core::sync::atomic::Ordering;

use crate::abi::{Abi, BlkifRequest, BlkifResponse, MAX_SLOT_SIZE};
use crate::coalesce::NONE;
use crate::host::{DomId, GrantRef, QueueId};
use crate::ring::{BackRing, RawRequest, RingError};
use crate::shmem::{RingMem, SharedMem};

/// The first word of a journal: `xbbJ`.
pub const MAGIC: u32 = u32::from_le_bytes(*b"xbbJ");
/// The version of the format described above.
pub const VERSION: u32 = 1;
/// Bytes before the first entry.
pub const HEADER_SIZE: usize = 192;
/// Bytes of one entry.
pub const ENTRY_SIZE: usize = 128;
/// The most grant references a ring has ([`crate::abi::MAX_RING_PAGES`]).
const MAX_REFS: usize = 32;

const H_MAGIC: usize = 0;
const H_VERSION: usize = 4;
const H_DOM: usize = 8;
const H_DEVID: usize = 12;
const H_QUEUE: usize = 16;
const H_ABI: usize = 20;
const H_PAGES: usize = 24;
const H_ENTRIES: usize = 28;
const H_ENTRY_SIZE: usize = 32;
const H_REQ_CONS: usize = 36;
const H_REFS: usize = 64;

const E_STATE: usize = 0;
const E_REQ: usize = 4;
const E_RSP: usize = 8;
const E_LEN: usize = 12;
const E_BYTES: usize = 16;

/// Entry states.
const FREE: u32 = 0;
const LIVE: u32 = 1;
const ANSWERED: u32 = 2;

// An entry holds the largest request of either ABI.
const _: () = assert!(E_BYTES + MAX_SLOT_SIZE <= ENTRY_SIZE);
const _: () = assert!(H_REFS + 4 * MAX_REFS <= HEADER_SIZE);

/// Which connection's queue a journal belongs to: a journal that names
/// another (a stale file, a guest that reconnected since) is refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct JournalId {
    /// The front-end's domain.
    pub dom: DomId,
    /// The virtual device (the last component of the back-end's path).
    pub devid: u32,
    /// The queue.
    pub queue: QueueId,
    /// The ring's slot layout.
    pub abi: Abi,
    /// Pages of the ring.
    pub ring_pages: u32,
    /// The ring's grant references; the first `ring_pages` count.
    pub ring_refs: [GrantRef; MAX_REFS],
}

impl JournalId {
    /// Entries the journal has: the ring's size. `None` for an impossible
    /// ring.
    pub fn entries(&self) -> Option<u32> {
        self.abi.ring_size(self.ring_pages)
    }

    /// Bytes of memory the journal needs.
    pub fn bytes(&self) -> Option<usize> {
        let n = usize::try_from(self.entries()?).ok()?;
        n.checked_mul(ENTRY_SIZE)?.checked_add(HEADER_SIZE)
    }

    fn abi_word(&self) -> u32 {
        match self.abi {
            Abi::X86_32 => 32,
            Abi::X86_64 => 64,
        }
    }
}

/// Why a journal cannot be made, or a ring cannot be taken over.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TakeoverError {
    /// The platform has no journal for the queue.
    NoJournal,
    /// The memory is shorter than the journal needs.
    TooSmall,
    /// An allocation failed.
    NoMemory,
    /// Not a journal of this format: magic, version or sizes.
    Format,
    /// A journal of another connection (domain, device, queue, ring).
    OtherConnection,
    /// The ring cannot resume at the journal's `req_cons` (see
    /// [`BackRing::attach`]).
    Ring(RingError),
    /// An entry no writer of this format leaves: an unknown state, a
    /// wrong length, an answered request that was never consumed, a
    /// response index outside the ring's window.
    Entry {
        /// The entry.
        entry: u32,
    },
    /// Two entries name the same request.
    Duplicate {
        /// The ring index they name.
        index: u32,
    },
    /// The entries left to answer are not the `req_cons - rsp_prod`
    /// requests the ring says are outstanding.
    Outstanding {
        /// What the ring says.
        expected: u32,
        /// What the journal holds.
        found: u32,
    },
    /// The front-end is not Connected: there is no live ring to take.
    FrontendState,
    /// This back-end would publish a node of the connection otherwise than
    /// the front-end was told (other tunables, another medium).
    Changed {
        /// The node.
        key: &'static str,
    },
}

impl core::fmt::Display for TakeoverError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match *self {
            TakeoverError::NoJournal => f.write_str("no in-flight journal"),
            TakeoverError::TooSmall => f.write_str("journal memory too small"),
            TakeoverError::NoMemory => f.write_str("out of memory"),
            TakeoverError::Format => f.write_str("not an in-flight journal of this version"),
            TakeoverError::OtherConnection => f.write_str("journal of another connection"),
            TakeoverError::Ring(e) => write!(f, "ring indices do not fit: {e:?}"),
            TakeoverError::Entry { entry } => write!(f, "journal entry {entry} is impossible"),
            TakeoverError::Duplicate { index } => {
                write!(f, "two journal entries for request index {index}")
            }
            TakeoverError::Outstanding { expected, found } => write!(
                f,
                "ring has {expected} requests outstanding, journal {found}"
            ),
            TakeoverError::FrontendState => f.write_str("the front-end is not connected"),
            TakeoverError::Changed { key } => write!(
                f,
                "{key} would be published otherwise than the front-end was told \
                 (other tunables or medium)"
            ),
        }
    }
}

/// A vector of `n` elements' capacity, empty, allocated fallibly.
fn with_capacity<T>(n: usize) -> Result<Vec<T>, TakeoverError> {
    let mut v = Vec::new();
    v.try_reserve_exact(n)
        .map_err(|_| TakeoverError::NoMemory)?;
    Ok(v)
}

/// One queue's journal over memory `M` (see the module's documentation).
/// Its bookkeeping (free entries, entries answered since the last publish,
/// entries to replay) is allocated when it is made; recording, answering
/// and publishing allocate nothing.
#[derive(Debug)]
pub struct Journal<M: RingMem = SharedMem> {
    mem: M,
    abi: Abi,
    entries: u32,
    /// Free entries, a stack.
    free: Vec<u16>,
    /// Entries answered since the last publish.
    answered: Vec<u16>,
    /// Entries to re-execute, oldest request first, from `replay_at`.
    replay: Vec<u16>,
    replay_at: usize,
}

impl<M: RingMem> Journal<M> {
    fn entry_off(entry: u16) -> usize {
        HEADER_SIZE + usize::from(entry) * ENTRY_SIZE
    }

    fn empty(mem: M, id: &JournalId) -> Result<Journal<M>, (TakeoverError, M)> {
        let (Some(entries), Some(bytes)) = (id.entries(), id.bytes()) else {
            return Err((TakeoverError::Format, mem));
        };
        if mem.len() < bytes {
            return Err((TakeoverError::TooSmall, mem));
        }
        let n = entries as usize;
        let lists = (|| Ok((with_capacity(n)?, with_capacity(n)?, with_capacity(n)?)))();
        let (free, answered, replay) = match lists {
            Ok(l) => l,
            Err(e) => return Err((e, mem)),
        };
        Ok(Journal {
            mem,
            abi: id.abi,
            entries,
            free,
            answered,
            replay,
            replay_at: 0,
        })
    }

    /// Makes a new journal for `id` in `mem`, every entry free, its
    /// `req_cons` `req_cons` (where the ring starts). The magic is written
    /// last: a process that dies before leaves no journal.
    pub fn create(mem: M, id: &JournalId, req_cons: u32) -> Result<Journal<M>, (TakeoverError, M)> {
        let mut j = Journal::empty(mem, id)?;
        // Release: whatever this memory held before is not a journal any
        // more before anything else changes.
        j.mem.store_u32(H_MAGIC, 0, Ordering::Release);
        for e in 0..j.entries {
            j.mem
                .store_u32(Self::entry_off(e as u16) + E_STATE, FREE, Ordering::Relaxed);
        }
        let words = [
            (H_VERSION, VERSION),
            (H_DOM, u32::from(id.dom)),
            (H_DEVID, id.devid),
            (H_QUEUE, id.queue),
            (H_ABI, id.abi_word()),
            (H_PAGES, id.ring_pages),
            (H_ENTRIES, j.entries),
            (H_ENTRY_SIZE, ENTRY_SIZE as u32),
            (H_REQ_CONS, req_cons),
        ];
        for (off, v) in words {
            j.mem.store_u32(off, v, Ordering::Relaxed);
        }
        for (i, r) in id.ring_refs.iter().enumerate() {
            let r = if i < id.ring_pages as usize { *r } else { 0 };
            j.mem.store_u32(H_REFS + 4 * i, r, Ordering::Relaxed);
        }
        // Release: every word above is in place before the magic says so.
        j.mem.store_u32(H_MAGIC, MAGIC, Ordering::Release);
        // Entries are handed out from the top of the stack: 0 first.
        j.free.extend((0..j.entries as u16).rev());
        Ok(j)
    }

    /// Opens the journal `mem` holds, which must be one of this format for
    /// `id`: the header's `req_cons` comes back with it. The entries are
    /// read by [`Journal::recover`].
    pub fn open(mem: M, id: &JournalId) -> Result<(Journal<M>, u32), (TakeoverError, M)> {
        let j = Journal::empty(mem, id)?;
        let w = |off| j.mem.load_u32(off, Ordering::Acquire);
        if w(H_MAGIC) != MAGIC
            || w(H_VERSION) != VERSION
            || w(H_ENTRIES) != j.entries
            || w(H_ENTRY_SIZE) != ENTRY_SIZE as u32
        {
            return Err((TakeoverError::Format, j.mem));
        }
        let refs_match = (0..MAX_REFS).all(|i| {
            let want = if i < id.ring_pages as usize {
                id.ring_refs[i]
            } else {
                0
            };
            w(H_REFS + 4 * i) == want
        });
        if w(H_DOM) != u32::from(id.dom)
            || w(H_DEVID) != id.devid
            || w(H_QUEUE) != id.queue
            || w(H_ABI) != id.abi_word()
            || w(H_PAGES) != id.ring_pages
            || !refs_match
        {
            return Err((TakeoverError::OtherConnection, j.mem));
        }
        let req_cons = w(H_REQ_CONS);
        Ok((j, req_cons))
    }

    /// Reads every entry of a journal [`Journal::open`] opened, for a ring
    /// resumed at `req_cons` (the header's) and `rsp_prod` (the ring's):
    /// frees what needs no more work, keeps the requests to re-execute, in
    /// the order they were consumed, and returns how many. Refuses (see
    /// the module's documentation) anything no writer of this format
    /// leaves, before it writes anything: a refused journal is as it was.
    pub fn recover(&mut self, req_cons: u32, rsp_prod: u32) -> Result<u32, TakeoverError> {
        let outstanding = req_cons.wrapping_sub(rsp_prod);
        let size = self.entries;
        if outstanding > size {
            return Err(TakeoverError::Ring(RingError::BadResume {
                req_cons,
                rsp_prod,
            }));
        }
        self.free.clear();
        self.replay.clear();
        self.replay_at = 0;
        // First every entry is read and judged; `answered` (empty until
        // the ring serves) holds the entries to free.
        let to_free = &mut self.answered;
        to_free.clear();
        for e in 0..size as u16 {
            let at = Self::entry_off(e);
            let w = |off| self.mem.load_u32(at + off, Ordering::Acquire);
            let state = w(E_STATE);
            if state == FREE {
                self.free.push(e);
                continue;
            }
            let bad = TakeoverError::Entry {
                entry: u32::from(e),
            };
            if state != LIVE && state != ANSWERED {
                return Err(bad);
            }
            if w(E_REQ) == req_cons {
                // Recorded but never consumed (the process died before the
                // header moved): the ring hands this request out again.
                if state != LIVE {
                    return Err(bad);
                }
                to_free.push(e);
                continue;
            }
            if w(E_LEN) as usize != self.abi.request_size() {
                return Err(bad);
            }
            if state == ANSWERED {
                let j = w(E_RSP);
                if rsp_prod.wrapping_sub(j).wrapping_sub(1) < size {
                    // Below rsp_prod: the front-end sees its response.
                    to_free.push(e);
                    continue;
                }
                if j.wrapping_sub(rsp_prod) >= outstanding {
                    return Err(bad);
                }
                // Written but never published: answered again.
            }
            self.replay.push(e);
        }
        let found = self.replay.len() as u32;
        if found != outstanding {
            return Err(TakeoverError::Outstanding {
                expected: outstanding,
                found,
            });
        }
        // Oldest first: the furthest behind req_cons. The sort is in place
        // (no allocation) and bounded by the ring's size.
        let mem = &self.mem;
        let index = |e: u16| mem.load_u32(Self::entry_off(e) + E_REQ, Ordering::Relaxed);
        self.replay
            .sort_unstable_by_key(|&e| core::cmp::Reverse(req_cons.wrapping_sub(index(e))));
        if let Some(w) = self.replay.windows(2).find(|w| index(w[0]) == index(w[1])) {
            return Err(TakeoverError::Duplicate { index: index(w[0]) });
        }
        // Judged: now the journal changes. The requests to re-execute are
        // live again (their old response indices mean nothing now).
        for &e in &self.replay {
            mem.store_u32(Self::entry_off(e) + E_STATE, LIVE, Ordering::Release);
        }
        while let Some(e) = self.answered.pop() {
            self.free_entry(e);
        }
        Ok(found)
    }

    fn free_entry(&mut self, e: u16) {
        self.mem
            .store_u32(Self::entry_off(e) + E_STATE, FREE, Ordering::Release);
        if self.free.len() < self.free.capacity() {
            self.free.push(e);
        }
    }

    /// Whether an entry is free for the next request. When none is, every
    /// entry holds a request consumed and not yet published: publishing
    /// frees the answered ones.
    pub fn has_free(&self) -> bool {
        !self.free.is_empty()
    }

    /// Ordering point 1: records the request the ring copied at
    /// `raw.index` in a free entry, marks it live, then moves the header's
    /// `req_cons` past it. The entry, or [`NONE`] when none is free
    /// (nothing is written then; see [`Journal::has_free`]).
    pub fn record(&mut self, raw: &RawRequest) -> u16 {
        let Some(e) = self.free.pop() else {
            return NONE;
        };
        let at = Self::entry_off(e);
        let len = self.abi.request_size();
        self.mem.write(at + E_BYTES, &raw.bytes[..len]);
        self.mem
            .store_u32(at + E_LEN, len as u32, Ordering::Relaxed);
        self.mem.store_u32(at + E_REQ, raw.index, Ordering::Relaxed);
        // Release: the bytes and index above are in place before the entry
        // is live.
        self.mem.store_u32(at + E_STATE, LIVE, Ordering::Release);
        // Release: the entry is live before req_cons moves past it.
        self.mem
            .store_u32(H_REQ_CONS, raw.index.wrapping_add(1), Ordering::Release);
        e
    }

    /// Ordering point 2, its middle: the response to entry `e`'s request
    /// was written into ring slot `rsp_index` (not yet published): the
    /// entry records it. An entry outside the journal is ignored.
    pub fn answered(&mut self, e: u16, rsp_index: u32) {
        if u32::from(e) >= self.entries || self.answered.len() >= self.answered.capacity() {
            return;
        }
        let at = Self::entry_off(e);
        self.mem.store_u32(at + E_RSP, rsp_index, Ordering::Relaxed);
        // Release: the index is in place before the entry says answered.
        self.mem
            .store_u32(at + E_STATE, ANSWERED, Ordering::Release);
        self.answered.push(e);
    }

    /// Ordering point 2, its end: the ring's `rsp_prod` was stored past
    /// every response answered since the last call: their entries are
    /// free.
    pub fn published(&mut self) {
        while let Some(e) = self.answered.pop() {
            self.free_entry(e);
        }
    }

    /// Whether requests taken over remain to be re-executed.
    pub fn replay_pending(&self) -> bool {
        self.replay_at < self.replay.len()
    }

    /// The next request to re-execute and its entry: its bytes copied
    /// once out of the journal and decoded (the queue validates it as any
    /// request).
    pub fn next_replay(&mut self) -> Option<(BlkifRequest, u16)> {
        let &e = self.replay.get(self.replay_at)?;
        self.replay_at += 1;
        let at = Self::entry_off(e);
        let mut raw = RawRequest {
            index: self.mem.load_u32(at + E_REQ, Ordering::Acquire),
            bytes: [0; MAX_SLOT_SIZE],
        };
        let len = self.abi.request_size();
        self.mem.read(at + E_BYTES, &mut raw.bytes[..len]);
        Some((raw.decode(self.abi), e))
    }

    /// Gives the memory back, for the platform to keep or remove.
    pub fn into_mem(self) -> M {
        self.mem
    }
}

/// A back ring and, when the platform keeps one, its queue's journal: the
/// queue consumes, answers and publishes through this, so that the
/// journal's ordering points are kept in one place whatever calls it.
/// Without a journal every method is the ring's own.
#[derive(Debug)]
pub struct JournaledRing<M: RingMem = SharedMem> {
    ring: BackRing<M>,
    journal: Option<Journal<M>>,
}

impl<M: RingMem> JournaledRing<M> {
    /// A ring without a journal.
    pub fn plain(ring: BackRing<M>) -> JournaledRing<M> {
        JournaledRing {
            ring,
            journal: None,
        }
    }

    /// A fresh connection's ring with a new journal in `mem` (see
    /// [`Journal::create`]); on failure the ring and the memory come back.
    pub fn with_new_journal(
        ring: BackRing<M>,
        mem: M,
        id: &JournalId,
    ) -> Result<JournaledRing<M>, (TakeoverError, BackRing<M>, M)> {
        match Journal::create(mem, id, ring.req_cons()) {
            Ok(j) => Ok(JournaledRing {
                ring,
                journal: Some(j),
            }),
            Err((e, mem)) => Err((e, ring, mem)),
        }
    }

    /// Takes over a ring another back-end served: opens its journal in
    /// `journal`, resumes the ring `ring` maps at the journal's `req_cons`
    /// and the ring's `rsp_prod` ([`BackRing::attach`]), and reads the
    /// entries ([`Journal::recover`]). Returns the ring and how many
    /// requests it will re-execute; on any refusal both mappings come
    /// back, untouched but for the entries already freed.
    pub fn take_over(
        ring: M,
        journal: M,
        id: &JournalId,
    ) -> Result<(JournaledRing<M>, u32), (TakeoverError, M, M)> {
        let (mut j, req_cons) = match Journal::open(journal, id) {
            Ok(j) => j,
            Err((e, journal)) => return Err((e, ring, journal)),
        };
        let ring = match BackRing::attach(ring, id.abi, id.ring_pages, req_cons) {
            Ok(r) => r,
            Err((e, ring)) => return Err((TakeoverError::Ring(e), ring, j.into_mem())),
        };
        match j.recover(ring.req_cons(), ring.rsp_prod_pvt()) {
            Ok(n) => Ok((
                JournaledRing {
                    ring,
                    journal: Some(j),
                },
                n,
            )),
            Err(e) => Err((e, ring.into_mem(), j.into_mem())),
        }
    }

    /// The ring.
    #[inline]
    pub fn ring(&self) -> &BackRing<M> {
        &self.ring
    }

    /// The ring, for what does not touch the journal (`req_prod`, the
    /// final check).
    #[inline]
    pub fn ring_mut(&mut self) -> &mut BackRing<M> {
        &mut self.ring
    }

    /// Whether a journal is kept.
    pub fn journaled(&self) -> bool {
        self.journal.is_some()
    }

    /// Whether the journal has no entry free for another request: the
    /// caller publishes first ([`JournaledRing::publish`]).
    #[inline]
    pub fn needs_publish(&self) -> bool {
        self.journal.as_ref().is_some_and(|j| !j.has_free())
    }

    /// Consumes the next request, as [`BackRing::take_request`], and
    /// records it; with it comes its journal entry ([`NONE`] without a
    /// journal). `None` also when the journal is full (see
    /// [`JournaledRing::needs_publish`]): nothing is consumed then.
    #[inline]
    pub fn take(&mut self, req_prod: u32) -> Option<(BlkifRequest, u16)> {
        let Some(j) = self.journal.as_mut() else {
            // No journal: the ring's own take, decoded where it was copied.
            return self.ring.take_request(req_prod).map(|r| (r, NONE));
        };
        if !j.has_free() {
            return None;
        }
        let raw = self.ring.take_raw(req_prod)?;
        let entry = j.record(&raw);
        Some((raw.decode(self.ring.abi()), entry))
    }

    /// The next request taken over to re-execute, with its entry.
    pub fn replay(&mut self) -> Option<(BlkifRequest, u16)> {
        self.journal.as_mut()?.next_replay()
    }

    /// Whether requests taken over remain to be re-executed.
    #[inline]
    pub fn replay_pending(&self) -> bool {
        self.journal.as_ref().is_some_and(Journal::replay_pending)
    }

    /// Writes the response to the request of journal entry `entry`
    /// ([`BackRing::push_response`]), then records where.
    #[inline]
    pub fn respond(&mut self, entry: u16, rsp: &BlkifResponse) {
        let at = self.ring.rsp_prod_pvt();
        self.ring.push_response(rsp);
        if self.ring.rsp_prod_pvt() == at {
            return;
        }
        if let Some(j) = self.journal.as_mut() {
            j.answered(entry, at);
        }
    }

    /// Publishes the responses written ([`BackRing::publish_responses`]),
    /// then frees their entries. `true` iff the front-end asked to be
    /// notified.
    #[inline]
    pub fn publish(&mut self) -> bool {
        let notify = self.ring.publish_responses();
        if let Some(j) = self.journal.as_mut() {
            j.published();
        }
        notify
    }

    /// Gives the ring's mapping and the journal's memory back.
    pub fn into_mems(self) -> (M, Option<M>) {
        (self.ring.into_mem(), self.journal.map(Journal::into_mem))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::abi::{BLKIF_OP_READ, BLKIF_OP_WRITE, BLKIF_RSP_OKAY, SRING_RSP_PROD};
    use crate::host::PAGE_SIZE;
    use crate::ring::FrontRing;
    use alloc::rc::Rc;
    use alloc::vec;
    use core::cell::Cell;

    /// Shared memory whose stores stop taking effect once a budget shared
    /// by every view is spent: the process died there. Loads see the
    /// memory as it is.
    struct CrashMem {
        mem: SharedMem,
        budget: Rc<Cell<u64>>,
        writes: Rc<Cell<u64>>,
    }

    impl CrashMem {
        fn spend(&self) -> bool {
            self.writes.set(self.writes.get() + 1);
            let left = self.budget.get();
            if left == 0 {
                return false;
            }
            self.budget.set(left - 1);
            true
        }
    }

    impl RingMem for CrashMem {
        fn len(&self) -> usize {
            self.mem.len()
        }
        fn load_u32(&self, off: usize, order: Ordering) -> u32 {
            self.mem.load_u32(off, order)
        }
        fn store_u32(&self, off: usize, value: u32, order: Ordering) {
            if self.spend() {
                self.mem.store_u32(off, value, order)
            }
        }
        fn read(&self, off: usize, out: &mut [u8]) {
            self.mem.read(off, out)
        }
        fn write(&self, off: usize, data: &[u8]) {
            if self.spend() {
                self.mem.write(off, data)
            }
        }
        fn full_fence(&self) {
            self.mem.full_fence()
        }
    }

    const ABI: Abi = Abi::X86_64;
    const REQUESTS: u64 = 7;

    fn id() -> JournalId {
        let mut ring_refs = [0; MAX_REFS];
        ring_refs[0] = 42;
        JournalId {
            dom: 3,
            devid: 51712,
            queue: 0,
            abi: ABI,
            ring_pages: 1,
            ring_refs,
        }
    }

    fn request(id: u64) -> BlkifRequest {
        let op = if id % 2 == 0 {
            BLKIF_OP_WRITE
        } else {
            BLKIF_OP_READ
        };
        BlkifRequest::rw(op, id, id * 8, &[])
    }

    fn response(r: &BlkifRequest) -> BlkifResponse {
        BlkifResponse {
            id: r.id,
            operation: r.operation,
            status: BLKIF_RSP_OKAY,
        }
    }

    /// A guest's ring with requests `0..REQUESTS` published, the back
    /// view of it, and journal memory.
    fn setup() -> (FrontRing, SharedMem, SharedMem) {
        let (f, b) = SharedMem::leak_pair(PAGE_SIZE).unwrap();
        let mut front = FrontRing::init(f, ABI, 1).unwrap();
        for i in 0..REQUESTS {
            assert!(front.push_request(&request(i)));
        }
        front.publish_requests();
        let (j, _) = SharedMem::leak_pair(id().bytes().unwrap()).unwrap();
        (front, b, j)
    }

    /// The old back-end's life, in the order the queue calls the
    /// journaled ring: consume four, answer 2 and 0 out of order,
    /// publish, answer 3, consume two more, answer 1 and 5, publish,
    /// answer 4 (never published). Once its journal is made, its stores
    /// take effect until `budget` of them did: then it died. Returns both
    /// mappings and how many stores its life makes.
    fn old_backend(
        ring: SharedMem,
        journal: SharedMem,
        budget: u64,
    ) -> (SharedMem, SharedMem, u64) {
        let left = Rc::new(Cell::new(u64::MAX));
        let writes = Rc::new(Cell::new(0));
        let crash = |mem| CrashMem {
            mem,
            budget: Rc::clone(&left),
            writes: Rc::clone(&writes),
        };
        let ring = BackRing::new(crash(ring), ABI, 1).unwrap();
        let Ok(mut jr) = JournaledRing::with_new_journal(ring, crash(journal), &id()) else {
            panic!("journal memory")
        };
        left.set(budget);
        writes.set(0);
        let prod = jr.ring().snapshot_req_prod().unwrap();
        let mut taken = vec![];
        let answer = |jr: &mut JournaledRing<CrashMem>, (r, e): (BlkifRequest, u16)| {
            jr.respond(e, &response(&r))
        };
        // Two rounds: take some, answer two out of order, publish, answer
        // one more (left unpublished).
        for (takes, before, after) in [(4, [2, 0], 3), (2, [1, 5], 4)] {
            for _ in 0..takes {
                taken.push(jr.take(prod).unwrap());
            }
            for i in before {
                answer(&mut jr, taken[i]);
            }
            jr.publish();
            answer(&mut jr, taken[after]);
        }
        let (ring, journal) = jr.into_mems();
        (ring.mem, journal.unwrap().mem, writes.get())
    }

    /// The new back-end: takes over, re-executes what the journal says,
    /// serves the rest of the ring, publishes.
    fn new_backend(ring: SharedMem, journal: SharedMem) -> Result<u32, TakeoverError> {
        let (mut jr, n) = JournaledRing::take_over(ring, journal, &id()).map_err(|e| e.0)?;
        let mut replayed = 0;
        while let Some((r, e)) = jr.replay() {
            jr.respond(e, &response(&r));
            replayed += 1;
        }
        assert_eq!(replayed, n);
        let prod = jr.ring().snapshot_req_prod().unwrap();
        while let Some((r, e)) = jr.take(prod) {
            jr.respond(e, &response(&r));
        }
        jr.publish();
        Ok(n)
    }

    /// Every id the front-end got, sorted.
    fn answered(front: &mut FrontRing) -> vec::Vec<u64> {
        let mut ids: vec::Vec<u64> = core::iter::from_fn(|| front.take_response().unwrap())
            .map(|r| r.id)
            .collect();
        ids.sort_unstable();
        ids
    }

    /// Issue 16: the old back-end dies after each of its stores in turn —
    /// between an entry's write and `req_cons` moving past it, between a
    /// response's write and its entry recording it, between that and the
    /// `rsp_prod` store, after that store and before the entries are
    /// freed, and everywhere else — and a new one takes over: every
    /// request is answered exactly once, none lost, whatever was in
    /// flight and in whatever order it had been answered.
    #[test]
    fn a_crash_after_any_store_is_taken_over_exactly_once() {
        let (_, b, j) = setup();
        let (_, _, total) = old_backend(b, j, u64::MAX);
        assert!(total > 20, "{total} stores");
        let mut replays = vec![];
        for budget in 0..=total {
            let (mut front, b, j) = setup();
            let (b, j, _) = old_backend(b, j, budget);
            let n = new_backend(b, j)
                .unwrap_or_else(|e| panic!("died after {budget} stores: refused: {e}"));
            replays.push(n);
            let want: vec::Vec<u64> = (0..REQUESTS).collect();
            assert_eq!(answered(&mut front), want, "died after {budget} stores");
        }
        // The deaths covered nothing in flight, and up to four requests
        // consumed and unanswered at once.
        assert_eq!(replays.iter().min(), Some(&0));
        assert_eq!(replays.iter().max(), Some(&4));
    }

    /// A back-end that took over can die too: the second takeover, at any
    /// point of the first one's life, still answers everything once.
    #[test]
    fn a_takeover_can_be_taken_over() {
        for budget in [3, 9, 17, 25] {
            let (mut front, b, j) = setup();
            let (b, j, _) = old_backend(b, j, budget);
            // The second back-end re-executes nothing before it dies: it
            // only took over.
            let (jr, _) = JournaledRing::take_over(b, j, &id())
                .map_err(|e| e.0)
                .unwrap();
            let (b, j) = jr.into_mems();
            new_backend(b, j.unwrap()).unwrap();
            let want: vec::Vec<u64> = (0..REQUESTS).collect();
            assert_eq!(answered(&mut front), want, "budget {budget}");
        }
    }

    /// The stores of the old back-end's life up to its first publish
    /// (entries freed included): four records of five stores each, two
    /// answers of three (the response, its index, its state), the
    /// `rsp_prod` store and two frees. Then 2 and 0 are answered and
    /// published, 1 and 3 outstanding (entries 1 and 3), `req_cons` 4.
    const FIRST_PUBLISH: u64 = 4 * 5 + 2 * 3 + 1 + 2;

    fn taken_over(b: SharedMem, j: SharedMem) -> TakeoverError {
        match JournaledRing::take_over(b, j, &id()) {
            Ok(_) => panic!("taken over"),
            Err((e, _, _)) => e,
        }
    }

    fn word(j: &SharedMem, off: usize, v: u32) {
        j.store_u32(off, v, Ordering::Relaxed);
    }

    /// Byte offset of field `f` of entry `e`.
    const fn entry(e: usize, f: usize) -> usize {
        HEADER_SIZE + e * ENTRY_SIZE + f
    }

    /// A journal no writer of this format leaves, or one of another
    /// connection, is refused cleanly.
    #[test]
    fn hostile_journals_are_refused() {
        type Case = (&'static str, fn(&SharedMem), TakeoverError);
        let cases: [Case; 9] = [
            ("magic", |j| word(j, H_MAGIC, 7), TakeoverError::Format),
            ("version", |j| word(j, H_VERSION, 2), TakeoverError::Format),
            (
                "entry size",
                |j| word(j, H_ENTRY_SIZE, 64),
                TakeoverError::Format,
            ),
            (
                "devid",
                |j| word(j, H_DEVID, 51728),
                TakeoverError::OtherConnection,
            ),
            (
                "ring ref",
                |j| word(j, H_REFS, 43),
                TakeoverError::OtherConnection,
            ),
            (
                "unused ref",
                |j| word(j, H_REFS + 4, 43),
                TakeoverError::OtherConnection,
            ),
            (
                "state",
                |j| word(j, entry(0, E_STATE), 9),
                TakeoverError::Entry { entry: 0 },
            ),
            (
                "length",
                |j| word(j, entry(1, E_LEN), 4),
                TakeoverError::Entry { entry: 1 },
            ),
            (
                "duplicate",
                |j| word(j, entry(3, E_REQ), 1),
                TakeoverError::Duplicate { index: 1 },
            ),
        ];
        for (what, corrupt, want) in cases {
            // Four consumed (entries 0..3 for indices 0..3), 2 and 0
            // answered and published: 1 and 3 outstanding.
            let (_, b, j) = setup();
            let (b, j, _) = old_backend(b, j, FIRST_PUBLISH);
            corrupt(&j);
            assert_eq!(taken_over(b, j), want, "{what}");
        }
    }

    /// What the front-end (or a scribbler on the journal's indices) can
    /// do to the indices is refused: a `req_cons` beyond what the guest
    /// produced or a ring away, a `rsp_prod` moved, a response index
    /// outside the ring's window.
    #[test]
    fn hostile_indices_are_refused() {
        let run = |corrupt: &dyn Fn(&SharedMem, &SharedMem)| {
            let (_, b, j) = setup();
            let (b, j, _) = old_backend(b, j, FIRST_PUBLISH);
            corrupt(&b, &j);
            taken_over(b, j)
        };
        let e = run(&|_, j| word(j, H_REQ_CONS, 9));
        assert!(
            matches!(e, TakeoverError::Ring(RingError::BadProducer { .. })),
            "{e:?}"
        );
        let e = run(&|_, j| word(j, H_REQ_CONS, 1000));
        assert!(
            matches!(e, TakeoverError::Ring(RingError::BadResume { .. })),
            "{e:?}"
        );
        // The guest moved rsp_prod back: the published responses look
        // outstanding, and the count does not match.
        let e = run(&|b, _| b.store_u32(SRING_RSP_PROD, 0, Ordering::Release));
        assert_eq!(
            e,
            TakeoverError::Outstanding {
                expected: 4,
                found: 2
            }
        );
        // ... or forward past the unanswered ones.
        let e = run(&|b, _| b.store_u32(SRING_RSP_PROD, 4, Ordering::Release));
        assert!(
            matches!(
                e,
                TakeoverError::Outstanding { .. } | TakeoverError::Entry { .. }
            ),
            "{e:?}"
        );
        // An answered entry whose response index is beyond what was ever
        // consumed.
        let e = run(&|_, j| {
            word(j, entry(1, E_RSP), 3000);
            word(j, entry(1, E_STATE), ANSWERED);
        });
        assert_eq!(e, TakeoverError::Entry { entry: 1 });
        // An answered entry for the request not consumed yet.
        let e = run(&|_, j| {
            word(j, entry(1, E_REQ), 4);
            word(j, entry(1, E_STATE), ANSWERED);
        });
        assert_eq!(e, TakeoverError::Entry { entry: 1 });
    }

    /// A refusal leaves the journal as it was: once the front-end puts
    /// `rsp_prod` back, the same journal is taken over and every request
    /// answered once.
    #[test]
    fn a_refused_journal_is_unchanged() {
        let (mut front, b, j) = setup();
        let (b, j, _) = old_backend(b, j, FIRST_PUBLISH);
        b.store_u32(SRING_RSP_PROD, 0, Ordering::Release);
        let Err((_, b, j)) = JournaledRing::take_over(b, j, &id()) else {
            panic!("taken over")
        };
        b.store_u32(SRING_RSP_PROD, 2, Ordering::Release);
        assert_eq!(new_backend(b, j), Ok(2));
        let want: vec::Vec<u64> = (0..REQUESTS).collect();
        assert_eq!(answered(&mut front), want);
    }

    /// Arbitrary bytes in every entry of a journal whose header matches:
    /// the takeover ends, with a refusal or a plan, never a panic.
    #[test]
    fn arbitrary_entries_end_in_a_decision() {
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        for round in 0..200 {
            let (_, b, j) = setup();
            let (b, j, _) = old_backend(b, j, 19 + round % 13);
            let entries = id().entries().unwrap() as usize;
            for e in 0..entries {
                for w in 0..4 {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    // Small values often, so that states, lengths and
                    // indices are sometimes plausible.
                    let v = if x % 3 == 0 {
                        (x >> 32) as u32
                    } else {
                        (x >> 40) as u32 % 8
                    };
                    if (x >> 8) % 4 == 0 {
                        word(&j, HEADER_SIZE + e * ENTRY_SIZE + 4 * w, v);
                    }
                }
            }
            if let Ok((mut jr, n)) = JournaledRing::take_over(b, j, &id()) {
                let mut k = 0;
                while jr.replay().is_some() {
                    k += 1;
                }
                assert_eq!(k, n);
            }
        }
    }

    /// A journal too small for the ring is refused when it is made, the
    /// memory handed back.
    #[test]
    fn short_memory_is_refused() {
        let (ring, _) = SharedMem::leak_pair(PAGE_SIZE).unwrap();
        let (short, _) = SharedMem::leak_pair(HEADER_SIZE).unwrap();
        let ring = BackRing::new(ring, ABI, 1).unwrap();
        let Err((e, _, mem)) = JournaledRing::with_new_journal(ring, short, &id()) else {
            panic!("made")
        };
        assert_eq!((e, mem.len()), (TakeoverError::TooSmall, HEADER_SIZE));
    }

    /// A full journal takes nothing until the answered entries are
    /// published; without a journal the ring is the plain ring.
    #[test]
    fn a_full_journal_waits_for_a_publish() {
        let (f, b) = SharedMem::leak_pair(PAGE_SIZE).unwrap();
        let mut front = FrontRing::init(f, ABI, 1).unwrap();
        let size = front.size();
        let (j, _) = SharedMem::leak_pair(id().bytes().unwrap()).unwrap();
        let ring = BackRing::new(b, ABI, 1).unwrap();
        let Ok(mut jr) = JournaledRing::with_new_journal(ring, j, &id()) else {
            panic!("journal")
        };
        for i in 0..u64::from(size) {
            assert!(front.push_request(&request(i)));
        }
        front.publish_requests();
        let prod = jr.ring().snapshot_req_prod().unwrap();
        for _ in 0..size {
            let (r, e) = jr.take(prod).unwrap();
            jr.respond(e, &response(&r));
        }
        // Answered but not published: the front-end may produce again
        // only after it saw them; a hostile one that does is not consumed
        // until the entries are free.
        assert!(jr.needs_publish());
        assert_eq!(jr.take(prod), None);
        jr.publish();
        assert!(!jr.needs_publish());
        assert_eq!(answered(&mut front).len(), size as usize);
        let plain = JournaledRing::plain(
            BackRing::new(SharedMem::leak_pair(PAGE_SIZE).unwrap().0, ABI, 1).unwrap(),
        );
        assert!(!plain.journaled() && !plain.needs_publish() && !plain.replay_pending());
    }
}
