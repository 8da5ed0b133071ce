//! Coalescing of back-to-back requests into one I/O ("reqlist").
//!
//! Front-ends split large transfers into requests of at most
//! `BLKIF_MAX_SEGMENTS_PER_REQUEST` pages (44 KiB with 4 KiB pages). When
//! request *n+1* starts on the medium exactly where request *n* ends and does
//! the same thing, the back-end serves both with one I/O: their segments get
//! consecutive pages of the mapping window ([`crate::kva`]), so the I/O is one
//! buffer.
//!
//! This module owns the reqlists of one queue ([`Reqlists`]): the request
//! slots and their segments, the reqlists chaining them, the open reqlist
//! requests are appended to, and the one walk over a reqlist's requests
//! ([`Reqlists::chain`]). It also holds the two pure decisions — whether a
//! request may join the open reqlist ([`may_join`]) and how a reqlist's
//! segments become iovecs ([`append_iovecs`]) — and the tag that names a
//! reqlist's I/O to the platform ([`ListTag`]). Every pool is allocated,
//! fallibly, when the queue is built; nothing here allocates afterwards.

use alloc::vec::Vec;
use core::ops::Range;

use crate::abi::{Segment, SECTOR_SHIFT};
use crate::host::{IoTag, IoVec, QueueId, PAGE_SIZE};
use crate::request::{Op, Parsed};
use crate::units::{Bytes, Sectors, WindowPage};

/// What the open reqlist looks like, for the append decision.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OpenRun {
    /// Its operation.
    pub op: Op,
    /// The sector right after its data.
    pub next_sector: Sectors,
    /// Pages (segments) it holds.
    pub pages: u32,
    /// Bytes of data it holds.
    pub bytes: Bytes,
}

/// The bounds of one reqlist.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Budget {
    /// Most pages (segments) in one reqlist.
    pub max_pages: u32,
    /// Most bytes in one reqlist.
    pub max_bytes: Bytes,
}

/// Whether `next` may join `open`: both plain reads or both plain writes,
/// `next` starts where `open` ends, and the result stays within `budget`.
/// Flushes and barriers never coalesce: they are ordering points.
pub fn may_join(open: &OpenRun, next: &Parsed, budget: &Budget) -> bool {
    matches!(open.op, Op::Read | Op::Write)
        && open.op == next.op
        && open.next_sector == next.sector
        && open.pages + u32::from(next.nsegs) <= budget.max_pages
        && next
            .nr_sectors
            .bytes()
            .and_then(|b| open.bytes.0.checked_add(b.0))
            .is_some_and(|total| total <= budget.max_bytes.0)
}

/// Appends the iovecs of `segments`, each paired with the window page
/// holding it, to `out[..n]`, returning the new length. A segment that
/// continues exactly where the previous iovec ends (the previous page's
/// data ran to its end and this one starts at its page's beginning, on the
/// next window page) extends that iovec, so a reqlist mapped on
/// consecutive pages is one buffer. `None` when a segment has no page or
/// `out` is full (neither happens for a reqlist within its budget).
pub fn append_iovecs<'a>(
    segments: impl Iterator<Item = (&'a Segment, Option<WindowPage>)>,
    out: &mut [IoVec],
    mut n: usize,
) -> Option<usize> {
    for (s, page) in segments {
        let start = page?.0 as usize * PAGE_SIZE + ((s.first_sect as usize) << SECTOR_SHIFT);
        let len = ((s.last_sect - s.first_sect) as usize + 1) << SECTOR_SHIFT;
        match n.checked_sub(1).and_then(|i| out.get_mut(i)) {
            Some(prev) if prev.window_offset + prev.len == start => prev.len += len,
            _ => {
                *out.get_mut(n)? = IoVec {
                    window_offset: start,
                    len,
                };
                n += 1;
            }
        }
    }
    Some(n)
}

/// "No request" / "no reqlist" in the chains and slots.
pub const NONE: u16 = u16::MAX;

/// The most request slots (and reqlists) one queue can have: their indices
/// are `u16`s below [`NONE`].
pub const MAX_SLOTS: usize = NONE as usize;

/// What a request's reqlist must map for it when it starts
/// ([`crate::grants::QueueGrants::map`]), known once the request is
/// accepted (and bound to the persistent-grant cache, if any): its
/// reqlist sums them ([`Reqlist::transient`], [`Reqlist::pending`]), so
/// that starting it walks no segment to count them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ToMap {
    /// Segments with no page yet: each takes a transient page (every
    /// segment without persistent grants).
    pub transient: u16,
    /// New persistent-grant entries, mapped at their cache pages.
    pub pending: u16,
}

/// One consumed, validated request waiting for or in service.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ReqSlot {
    /// The front-end's id, echoed in the response.
    pub id: u64,
    /// The operation the response carries.
    pub operation: u8,
    /// Segments it holds.
    pub nsegs: u16,
    /// Where it starts on the medium.
    pub sector: Sectors,
    /// Its length.
    pub nr_sectors: Sectors,
    /// It failed on its own (one of its grants could not be mapped, or
    /// the I/O serving it failed): it is answered with an error, and the
    /// rest of its reqlist is served without it.
    pub failed: bool,
    /// The next request of the same reqlist, or [`NONE`].
    pub next: u16,
}

const EMPTY_SLOT: ReqSlot = ReqSlot {
    id: 0,
    operation: 0,
    nsegs: 0,
    sector: Sectors(0),
    nr_sectors: Sectors(0),
    failed: false,
    next: NONE,
};

/// A run of a reqlist: back-to-back requests none of which failed, served
/// by one I/O ([`Reqlists::run`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Run {
    /// Where it starts on the medium.
    pub sector: Sectors,
    /// Its length.
    pub nr_sectors: Sectors,
    /// The first request of the next run, or [`NONE`].
    pub next: u16,
}

/// Requests served by one I/O.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Reqlist {
    /// What the I/O does.
    pub op: Op,
    /// The first and last request of the chain.
    pub head: u16,
    /// See [`Reqlist::head`].
    pub tail: u16,
    /// Where it starts on the medium.
    pub sector: Sectors,
    /// Its length.
    pub nr_sectors: Sectors,
    /// Segments of all its requests.
    pub pages: u32,
    /// Of those, the ones that take a transient page when it starts (see
    /// [`ToMap`]).
    pub transient: u32,
    /// Its new persistent-grant entries, mapped when it starts.
    pub pending: u32,
    /// First page of its transient range (relative to the queue's KVA
    /// region), valid when `kva_pages > 0`.
    pub kva_first: u32,
    /// Pages of its transient range.
    pub kva_pages: u32,
    /// The step of its plan being served.
    pub phase: u8,
    /// The first request of the run whose data step is served next
    /// ([`Reqlists::run`]), or [`NONE`] before it starts.
    pub run: u16,
    /// A step that serves every request failed: every request is
    /// answered with an error.
    pub error: bool,
    /// Some of its requests failed on their own ([`ReqSlot::failed`]):
    /// its runs are found by walking its chain. While none has, the
    /// reqlist is one run ([`Reqlists::current_run`]).
    pub failed: bool,
    /// Its I/O was submitted and has not finished.
    pub in_flight: bool,
}

const EMPTY_LIST: Reqlist = Reqlist {
    op: Op::Read,
    head: NONE,
    tail: NONE,
    sector: Sectors(0),
    nr_sectors: Sectors(0),
    pages: 0,
    transient: 0,
    pending: 0,
    kva_first: 0,
    kva_pages: 0,
    phase: 0,
    run: NONE,
    error: false,
    failed: false,
    in_flight: false,
};

/// An allocation made when the queue is built failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NoMemory;

/// A vector of `n` copies of `v`, allocated fallibly.
pub(crate) fn try_vec<T: Clone>(n: usize, v: T) -> Result<Vec<T>, NoMemory> {
    let mut out = Vec::new();
    out.try_reserve_exact(n).map_err(|_| NoMemory)?;
    out.resize(n, v);
    Ok(out)
}

/// A stack of the indices `0..n`, popping the lowest first.
fn try_stack(n: usize) -> Result<Vec<u16>, NoMemory> {
    let mut out = Vec::new();
    out.try_reserve_exact(n).map_err(|_| NoMemory)?;
    out.extend((0..n as u16).rev());
    Ok(out)
}

/// The request slots, their segments and the reqlists of one queue.
#[derive(Debug)]
pub struct Reqlists {
    slots: Vec<ReqSlot>,
    /// Each slot's segments, `max_segs` per slot.
    segs: Vec<Segment>,
    free_slots: Vec<u16>,
    /// The reqlists, each at the index of its first request's slot: a
    /// slot heads at most one reqlist, and a reqlist needs no pool of its
    /// own.
    lists: Vec<Reqlist>,
    /// The reqlist requests are being appended to, or [`NONE`].
    open: u16,
    max_segs: usize,
}

/// The requests of one reqlist, in order: each slot and the range of its
/// segments in [`Reqlists::segments`] (and in every array indexed like it).
#[derive(Clone, Copy, Debug)]
pub struct Chain<'a> {
    slots: &'a [ReqSlot],
    max_segs: usize,
    cur: u16,
    /// Ends before the first failed request (a run, [`Reqlists::run_chain`]).
    run: bool,
}

impl Iterator for Chain<'_> {
    type Item = (u16, Range<usize>);

    #[inline]
    fn next(&mut self) -> Option<Self::Item> {
        let slot = self.cur;
        let r = self.slots.get(usize::from(slot))?;
        if self.run && r.failed {
            return None;
        }
        self.cur = r.next;
        let base = usize::from(slot) * self.max_segs;
        Some((slot, base..base + usize::from(r.nsegs)))
    }
}

impl Reqlists {
    /// `n` request slots (and as many reqlists) of `max_segs` segments
    /// each, allocated now. `n` is at most [`MAX_SLOTS`].
    pub fn try_new(n: usize, max_segs: usize) -> Result<Reqlists, NoMemory> {
        if n > MAX_SLOTS {
            return Err(NoMemory);
        }
        let nsegs = n.checked_mul(max_segs).ok_or(NoMemory)?;
        Ok(Reqlists {
            slots: try_vec(n, EMPTY_SLOT)?,
            segs: try_vec(nsegs, Segment::default())?,
            free_slots: try_stack(n)?,
            lists: try_vec(n, EMPTY_LIST)?,
            open: NONE,
            max_segs,
        })
    }

    /// Segments one slot can hold.
    #[inline]
    pub fn max_segs(&self) -> usize {
        self.max_segs
    }

    /// Every slot's segments, `max_segs` per slot: what the ranges of a
    /// [`Chain`] index.
    #[inline]
    pub fn segments(&self) -> &[Segment] {
        &self.segs
    }

    /// Whether no request slot is free.
    #[inline]
    pub fn slots_exhausted(&self) -> bool {
        self.free_slots.is_empty()
    }

    /// Takes a free slot; its segments are all [`Reqlists::slot_segments`]
    /// for the caller to fill.
    #[inline]
    pub fn take_slot(&mut self) -> Option<u16> {
        self.free_slots.pop()
    }

    /// Gives back a slot that never joined a reqlist.
    #[inline]
    pub fn put_slot(&mut self, slot: u16) {
        self.free_slots.push(slot);
    }

    /// The segment range of `slot` (its full capacity).
    #[inline]
    pub fn slot_range(&self, slot: u16) -> Range<usize> {
        let base = usize::from(slot) * self.max_segs;
        base..base + self.max_segs
    }

    /// The segments of `slot` (its full capacity), to fill.
    #[inline]
    pub fn slot_segments(&mut self, slot: u16) -> &mut [Segment] {
        let r = self.slot_range(slot);
        &mut self.segs[r]
    }

    /// Records what the request in `slot` is.
    #[inline]
    pub fn set_slot(&mut self, slot: u16, p: &Parsed) {
        self.slots[usize::from(slot)] = ReqSlot {
            id: p.id,
            operation: p.operation,
            nsegs: p.nsegs,
            sector: p.sector,
            nr_sectors: p.nr_sectors,
            failed: false,
            next: NONE,
        };
    }

    /// The request in `slot`, of reqlist `l`, failed on its own; see
    /// [`ReqSlot::failed`].
    pub fn fail_slot(&mut self, l: u16, slot: u16) {
        if let Some(r) = self.slots.get_mut(usize::from(slot)) {
            r.failed = true;
            self.lists[usize::from(l)].failed = true;
        }
    }

    /// The first request of reqlist `l` that has not failed, from `from`
    /// (a request of its chain) on; [`NONE`] when every one has.
    pub fn first_unfailed(&self, from: u16) -> u16 {
        let mut cur = from;
        while let Some(r) = self.slots.get(usize::from(cur)) {
            if !r.failed {
                return cur;
            }
            cur = r.next;
        }
        NONE
    }

    /// The run of back-to-back requests that have not failed starting at
    /// `start` (a request of a reqlist's chain): the span of the medium it
    /// covers, and the first request of the next such run. A reqlist none
    /// of whose requests failed is one run.
    pub fn run(&self, start: u16) -> Run {
        let mut out = Run {
            sector: self
                .slots
                .get(usize::from(start))
                .map_or(Sectors(0), |r| r.sector),
            nr_sectors: Sectors(0),
            next: NONE,
        };
        let mut cur = start;
        while let Some(r) = self.slots.get(usize::from(cur)) {
            if r.failed {
                out.next = self.first_unfailed(cur);
                break;
            }
            out.nr_sectors = Sectors(out.nr_sectors.0.saturating_add(r.nr_sectors.0));
            cur = r.next;
        }
        out
    }

    /// The requests of the run starting at `start`, in order (see
    /// [`Reqlists::run`]), as [`Reqlists::chain`] gives them.
    pub fn run_chain(&self, start: u16) -> impl Iterator<Item = (u16, Range<usize>)> + '_ {
        Chain {
            slots: &self.slots,
            max_segs: self.max_segs,
            cur: start,
            run: true,
        }
    }

    /// Marks every request of the run of reqlist `l` starting at `start`
    /// failed.
    pub fn fail_run(&mut self, l: u16, start: u16) {
        let mut cur = start;
        while let Some(r) = self.slots.get_mut(usize::from(cur)) {
            if r.failed {
                break;
            }
            r.failed = true;
            cur = r.next;
        }
        self.lists[usize::from(l)].failed = true;
    }

    /// The run of reqlist `l` served next (from [`Reqlist::run`]; see
    /// [`Reqlists::run`]): while none of its requests failed, the whole
    /// reqlist, without walking its chain.
    #[inline]
    pub fn current_run(&self, l: u16) -> Run {
        let list = &self.lists[usize::from(l)];
        if !list.failed {
            debug_assert_eq!(list.run, list.head);
            return Run {
                sector: list.sector,
                nr_sectors: list.nr_sectors,
                next: NONE,
            };
        }
        self.run(list.run)
    }

    /// The request in `slot`.
    #[inline]
    pub fn slot(&self, slot: u16) -> ReqSlot {
        self.slots[usize::from(slot)]
    }

    /// Reqlist `l`, or `None` for an index no reqlist has.
    #[inline]
    pub fn get(&self, l: u16) -> Option<&Reqlist> {
        self.lists.get(usize::from(l))
    }

    /// Reqlist `l`.
    #[inline]
    pub fn list(&self, l: u16) -> &Reqlist {
        &self.lists[usize::from(l)]
    }

    /// Reqlist `l`, to change.
    #[inline]
    pub fn list_mut(&mut self, l: u16) -> &mut Reqlist {
        &mut self.lists[usize::from(l)]
    }

    /// The requests of reqlist `l`, in order.
    #[inline]
    pub fn chain(&self, l: u16) -> Chain<'_> {
        Chain {
            slots: &self.slots,
            max_segs: self.max_segs,
            cur: self.lists.get(usize::from(l)).map_or(NONE, |r| r.head),
            run: false,
        }
    }

    /// The open reqlist, if any.
    #[inline]
    pub fn open(&self) -> Option<u16> {
        (self.open != NONE).then_some(self.open)
    }

    /// Closes the open reqlist and returns it.
    #[inline]
    pub fn take_open(&mut self) -> Option<u16> {
        let l = self.open()?;
        self.open = NONE;
        Some(l)
    }

    /// Appends the request `p` in `slot`, for which `to_map` is to be
    /// mapped, to the open reqlist when [`may_join`] allows; `true` when it
    /// joined.
    #[inline(always)]
    pub fn join_open(&mut self, slot: u16, p: &Parsed, to_map: ToMap, budget: &Budget) -> bool {
        let Some(l) = self.open() else {
            return false;
        };
        let o = &self.lists[usize::from(l)];
        let (Some(next_sector), Some(bytes)) =
            (o.sector.checked_add(o.nr_sectors), o.nr_sectors.bytes())
        else {
            return false;
        };
        let run = OpenRun {
            op: o.op,
            next_sector,
            pages: o.pages,
            bytes,
        };
        if !may_join(&run, p, budget) {
            return false;
        }
        self.append(l, slot, p, to_map);
        true
    }

    /// Appends the request `p` in `slot` to reqlist `l`.
    fn append(&mut self, l: u16, slot: u16, p: &Parsed, to_map: ToMap) {
        let tail = self.lists[usize::from(l)].tail;
        self.slots[usize::from(tail)].next = slot;
        let list = &mut self.lists[usize::from(l)];
        list.tail = slot;
        list.nr_sectors = Sectors(list.nr_sectors.0 + p.nr_sectors.0);
        list.pages += u32::from(p.nsegs);
        list.transient += u32::from(to_map.transient);
        list.pending += u32::from(to_map.pending);
    }

    /// Starts a reqlist with the request `p` in `slot`, for which `to_map`
    /// is to be mapped: the open one when it is a read or write (later
    /// requests may join it). The reqlist is named by its first request's
    /// slot (`slot`). `None` for a slot no reqlist has (never: there are
    /// as many reqlists as slots).
    pub fn start(&mut self, slot: u16, p: &Parsed, to_map: ToMap) -> Option<u16> {
        let list = self.lists.get_mut(usize::from(slot))?;
        *list = Reqlist {
            op: p.op,
            head: slot,
            tail: slot,
            sector: p.sector,
            nr_sectors: p.nr_sectors,
            pages: u32::from(p.nsegs),
            transient: u32::from(to_map.transient),
            pending: u32::from(to_map.pending),
            ..EMPTY_LIST
        };
        if matches!(p.op, Op::Read | Op::Write) {
            self.open = slot;
        }
        Some(slot)
    }

    /// Frees reqlist `l` and its request slots; the caller has answered
    /// them.
    #[inline]
    pub fn free(&mut self, l: u16) {
        let mut cur = self.lists[usize::from(l)].head;
        while let Some(r) = self.slots.get(usize::from(cur)) {
            self.free_slots.push(cur);
            cur = r.next;
        }
        self.lists[usize::from(l)] = EMPTY_LIST;
    }
}

/// The name of one reqlist's I/O for the platform ([`IoTag`]): the
/// connection's generation (so completions of an earlier connection are
/// recognised), the queue and the reqlist.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ListTag {
    /// The connection's generation.
    pub generation: u8,
    /// The queue (below 256; at most [`crate::connect::MAX_QUEUES`]).
    pub queue: QueueId,
    /// The reqlist.
    pub list: u16,
}

impl ListTag {
    /// The tag handed to the platform.
    #[inline]
    pub fn encode(self) -> IoTag {
        IoTag(u32::from(self.generation) << 24 | (self.queue & 0xff) << 16 | u32::from(self.list))
    }

    /// The reqlist a tag names.
    #[inline]
    pub fn decode(tag: IoTag) -> ListTag {
        ListTag {
            generation: (tag.0 >> 24) as u8,
            queue: (tag.0 >> 16) & 0xff,
            list: (tag.0 & 0xffff) as u16,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parsed(op: Op, sector: u64, nsegs: u16) -> Parsed {
        Parsed {
            id: 0,
            operation: 0,
            op,
            sector: Sectors(sector),
            nr_sectors: Sectors(u64::from(nsegs) * 8),
            nsegs,
        }
    }

    const B: Budget = Budget {
        max_pages: 22,
        max_bytes: Bytes(1 << 20),
    };

    #[test]
    fn tags_carry_generation_queue_and_list() {
        let t = ListTag {
            generation: 0xab,
            queue: 3,
            list: 0x1234,
        };
        assert_eq!(t.encode().0 >> 24, 0xab);
        assert_eq!((t.encode().0 >> 16) & 0xff, 3);
        assert_eq!(t.encode().0 & 0xffff, 0x1234);
        assert_eq!(ListTag::decode(t.encode()), t);
    }

    #[test]
    fn reqlists_chain_join_and_free() {
        let mut r = Reqlists::try_new(4, 11).unwrap();
        let b = Budget {
            max_pages: 22,
            max_bytes: Bytes(1 << 20),
        };
        let a = r.take_slot().unwrap();
        assert_eq!(a, 0, "low indices first");
        r.set_slot(
            a,
            &Parsed {
                id: 10,
                ..parsed(Op::Write, 0, 2)
            },
        );
        // The first request's segments both transient, the second's one
        // cache hit, one new entry and one transient.
        let to_map = |transient, pending| ToMap { transient, pending };
        let l = r.start(a, &parsed(Op::Write, 0, 2), to_map(2, 0)).unwrap();
        assert_eq!(r.open(), Some(l));
        let c = r.take_slot().unwrap();
        r.set_slot(
            c,
            &Parsed {
                id: 11,
                ..parsed(Op::Write, 16, 3)
            },
        );
        assert!(r.join_open(c, &parsed(Op::Write, 16, 3), to_map(1, 1), &b));
        let d = r.take_slot().unwrap();
        r.set_slot(
            d,
            &Parsed {
                id: 12,
                ..parsed(Op::Write, 99, 1)
            },
        );
        assert!(
            !r.join_open(d, &parsed(Op::Write, 99, 1), ToMap::default(), &b),
            "not contiguous"
        );
        let chain: alloc::vec::Vec<_> = r.chain(l).collect();
        assert_eq!(chain, [(0, 0..2), (1, 11..14)]);
        assert_eq!(r.list(l).nr_sectors, Sectors(40));
        assert_eq!(r.list(l).pages, 5);
        assert_eq!((r.list(l).transient, r.list(l).pending), (3, 1));
        assert_eq!(r.take_open(), Some(l));
        assert_eq!(r.open(), None);
        r.free(l);
        r.put_slot(d);
        assert_eq!(r.chain(l).count(), 0);
        let mut again = alloc::vec::Vec::new();
        while let Some(s) = r.take_slot() {
            again.push(s);
        }
        again.sort_unstable();
        assert_eq!(again, [0, 1, 2, 3], "every slot given back once");
        assert!(r.slots_exhausted());
        // A flush never opens a reqlist for others to join.
        let f = again[0];
        r.set_slot(
            f,
            &Parsed {
                id: 13,
                ..parsed(Op::Flush, 0, 0)
            },
        );
        assert!(r
            .start(f, &parsed(Op::Flush, 0, 0), ToMap::default())
            .is_some());
        assert_eq!(r.open(), None);
        assert!(Reqlists::try_new(MAX_SLOTS + 1, 1).is_err());
    }

    /// A reqlist of four back-to-back writes, its run pointer at its head
    /// (as a dispatched reqlist has it).
    fn four_writes(r: &mut Reqlists) -> (u16, [u16; 4]) {
        let slots = [0u64, 1, 2, 3].map(|k| {
            let s = r.take_slot().unwrap();
            r.set_slot(s, &parsed(Op::Write, 16 * k, 2));
            s
        });
        let l = r
            .start(slots[0], &parsed(Op::Write, 0, 2), ToMap::default())
            .unwrap();
        for (k, &s) in (1u64..).zip(&slots[1..]) {
            assert!(r.join_open(s, &parsed(Op::Write, 16 * k, 2), ToMap::default(), &B));
        }
        r.take_open();
        r.list_mut(l).run = r.list(l).head;
        (l, slots)
    }

    /// While none of its requests failed a reqlist is one run, found
    /// without a walk and equal to the walked one; once one fails, its
    /// runs are walked around it, and a failed run ends there.
    #[test]
    fn runs_without_and_with_failed_requests() {
        let mut r = Reqlists::try_new(4, 11).unwrap();
        let (l, s) = four_writes(&mut r);
        let whole = Run {
            sector: Sectors(0),
            nr_sectors: Sectors(64),
            next: NONE,
        };
        assert_eq!(r.current_run(l), whole);
        assert_eq!(r.run(s[0]), whole, "the walk agrees");
        assert!(!r.list(l).failed);

        r.fail_slot(l, s[1]);
        assert!(r.list(l).failed);
        assert_eq!(
            r.current_run(l),
            Run {
                sector: Sectors(0),
                nr_sectors: Sectors(16),
                next: s[2],
            }
        );
        r.list_mut(l).run = s[2];
        assert_eq!(
            r.current_run(l),
            Run {
                sector: Sectors(32),
                nr_sectors: Sectors(32),
                next: NONE,
            }
        );
        assert_eq!(r.run_chain(s[2]).count(), 2);
        r.fail_run(l, s[2]);
        assert_eq!(r.first_unfailed(s[0]), s[0]);
        assert!((1..4).all(|k| r.slot(s[k]).failed));
        r.free(l);

        // A run failing in a reqlist none of whose requests had failed.
        let (l, s) = four_writes(&mut r);
        assert!(!r.list(l).failed, "a freed reqlist starts afresh");
        r.fail_run(l, s[0]);
        assert!(r.list(l).failed);
        assert_eq!(r.first_unfailed(s[0]), NONE);
    }

    #[test]
    fn joins_only_contiguous_same_op_within_budget() {
        let open = OpenRun {
            op: Op::Write,
            next_sector: Sectors(88),
            pages: 11,
            bytes: Bytes(11 * 4096),
        };
        assert!(may_join(&open, &parsed(Op::Write, 88, 11), &B));
        assert!(!may_join(&open, &parsed(Op::Write, 96, 1), &B));
        assert!(!may_join(&open, &parsed(Op::Read, 88, 1), &B));
        assert!(!may_join(
            &open,
            &parsed(Op::Write, 88, 11),
            &Budget { max_pages: 21, ..B }
        ));
        assert!(!may_join(
            &open,
            &parsed(Op::Write, 88, 1),
            &Budget {
                max_bytes: Bytes(11 * 4096),
                ..B
            }
        ));
        let flush = OpenRun {
            op: Op::Flush,
            ..open
        };
        assert!(!may_join(&flush, &parsed(Op::Flush, 88, 1), &B));
    }

    #[test]
    fn iovecs_follow_scattered_pages_and_refuse_overflow() {
        let full = Segment {
            gref: 1,
            first_sect: 0,
            last_sect: 7,
        };
        let segs = [full; 4];
        let mut out = [IoVec::default(); 4];
        // Persistent pages need not be consecutive: 7, 8 merge; 3 and 20 don't.
        let pages = [7, 8, 3, 20].map(|p| Some(WindowPage(p)));
        let n = append_iovecs(segs.iter().zip(pages), &mut out, 0).unwrap();
        assert_eq!(n, 3);
        assert_eq!(
            out[0],
            IoVec {
                window_offset: 7 * 4096,
                len: 8192
            }
        );
        assert_eq!(
            out[1],
            IoVec {
                window_offset: 3 * 4096,
                len: 4096
            }
        );
        // Appending continues after an earlier request's iovecs.
        let n2 = append_iovecs(segs[..1].iter().zip([Some(WindowPage(21))]), &mut out, n).unwrap();
        assert_eq!(n2, 3);
        assert_eq!(
            out[2],
            IoVec {
                window_offset: 20 * 4096,
                len: 8192
            }
        );
        assert_eq!(
            append_iovecs(segs[..1].iter().zip([None]), &mut out, 0),
            None
        );
        let mut tiny = [IoVec::default(); 1];
        assert_eq!(
            append_iovecs(
                segs.iter().zip([Some(WindowPage(1)), Some(WindowPage(5))]),
                &mut tiny,
                0
            ),
            None
        );
    }

    #[test]
    fn iovecs_merge_page_continuations() {
        let segs = [
            Segment {
                gref: 1,
                first_sect: 2,
                last_sect: 7,
            },
            Segment {
                gref: 2,
                first_sect: 0,
                last_sect: 7,
            },
            Segment {
                gref: 3,
                first_sect: 0,
                last_sect: 3,
            },
            Segment {
                gref: 4,
                first_sect: 0,
                last_sect: 7,
            },
            Segment {
                gref: 5,
                first_sect: 1,
                last_sect: 1,
            },
        ];
        let mut out = [IoVec::default(); 5];
        let pages = [10, 11, 12, 13, 14].map(|p| Some(WindowPage(p)));
        let n = append_iovecs(segs.iter().zip(pages), &mut out, 0).unwrap();
        assert_eq!(n, 3);
        assert_eq!(
            out[0],
            IoVec {
                window_offset: 10 * 4096 + 1024,
                len: 3072 + 4096 + 2048
            }
        );
        assert_eq!(
            out[1],
            IoVec {
                window_offset: 13 * 4096,
                len: 4096
            }
        );
        assert_eq!(
            out[2],
            IoVec {
                window_offset: 14 * 4096 + 512,
                len: 512
            }
        );
    }
}
