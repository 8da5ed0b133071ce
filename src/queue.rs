//! One queue: the request path of one ring (`io/ring.h`), from the
//! front-end's kick to the last response.
//!
//! A [`Queue`] owns everything its ring needs and shares nothing with the
//! other queues of its instance: the mapped ring, the request slots and
//! reqlists ([`Reqlists`]), its share of the data window ([`KvaAllocator`]),
//! its grants and persistent-grant cache ([`QueueGrants`]), the iovec and
//! indirect-page buffers, its wait queue and its counters. It follows
//! DESIGN.md's walk of one request: read `req_prod` once, copy each slot
//! once (and an indirect request's descriptor pages once,
//! `BLKIF_OP_INDIRECT`), validate, bind its grants to the persistent-grant
//! cache when `feature-persistent` was negotiated, coalesce into the open
//! reqlist, give each closed reqlist one contiguous range of the window
//! share for the grants not already mapped, map them in one batch, submit
//! one I/O; on completion unmap the transient grants, free the range,
//! answer every request of the reqlist, and notify the front-end only when
//! it asked. A request whose own grant cannot be mapped is answered with an
//! error and the rest of its reqlist is still served: the back-to-back
//! requests around it are runs, each one I/O, submitted one after the
//! other under the reqlist's one tag (no allocation, and the reqlist stays
//! in flight until its last run, so barriers still wait for all of it).
//! An I/O error fails the requests of its run.
//!
//! Every pool is allocated, fallibly, when the queue is built; nothing on
//! the request path allocates. The instance ([`crate::instance`]) builds
//! the queues at connect and lends each to a context of its own
//! ([`crate::host::Host::lend`]), where the platform calls
//! [`Queue::event`], [`Queue::run`] and [`Queue::complete`] with the
//! queue's [`QueueHost`], concurrently with the other queues. What the
//! queue shares with the control part is [`Shared`]: its counters, which
//! anyone may read at any time, and the connection's switches (the medium's
//! size after a resize, `no_coalesce_reqs`), read at the start of each
//! pass. To close, the control part recalls the queue: [`Queue::recall`] stops
//! consuming, and once nothing is in flight unmaps its persistent grants;
//! the queue then goes home ([`crate::instance::Instance::give_back`]).
//!
//! When the platform keeps an in-flight journal ([`crate::journal`]), the
//! queue consumes, answers and publishes through it, so that another
//! process can take the ring over; a queue built on a ring taken over
//! serves the requests the journal hands back before the ring's, and
//! sends the front-end one event at its first run.

use alloc::sync::Arc;
use alloc::vec::Vec;
use core::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use crate::abi::{self, BlkifRequest, BlkifResponse, BLKIF_RSP_ERROR, BLKIF_RSP_OKAY};
use crate::coalesce::{self, try_vec, Budget, ListTag, NoMemory, Reqlists, ToMap, NONE};
use crate::grants::{GrantShape, QueueGrants};
use crate::handoff::Work;
use crate::host::{
    DomId, Event, Granted, Host, IoError, IoKind, IoOp, IoTag, IoVec, QueueHost, QueueId, PAGE_SIZE,
};
use crate::journal::JournaledRing;
use crate::kva::KvaAllocator;
use crate::request::{self, Header, Limits, Op, Parsed};
use crate::stats::{QueueCounters, Stat, Stats};
use crate::units::{Bytes, Sectors, WindowPage};

/// Consecutive spurious kicks tolerated before the event channel is
/// re-enabled late (a kick can legitimately find its requests already
/// taken by the previous pass's final check).
const SPURIOUS_GRACE: u32 = 2;

/// The longest late-EOI delay, in milliseconds.
const MAX_EOI_DELAY_MS: u32 = 64;

/// The late-EOI delay after `consecutive` spurious kicks: none within the
/// grace, then 1, 2, 4 ... [`MAX_EOI_DELAY_MS`] milliseconds.
/// The observers' kind and bytes of a request answered with wire
/// operation `operation` (an indirect request's inner one).
fn kind_bytes(operation: u8, nr_sectors: Sectors) -> (IoKind, u64) {
    let bytes = nr_sectors.0.saturating_mul(512);
    let kind = match operation {
        abi::BLKIF_OP_READ => IoKind::Read,
        abi::BLKIF_OP_DISCARD => IoKind::Discard,
        abi::BLKIF_OP_FLUSH_DISKCACHE => IoKind::Flush,
        abi::BLKIF_OP_WRITE_BARRIER if bytes == 0 => IoKind::Flush,
        _ => IoKind::Write,
    };
    (kind, if kind == IoKind::Flush { 0 } else { bytes })
}

fn eoi_delay(consecutive: u32) -> u32 {
    match consecutive.checked_sub(SPURIOUS_GRACE + 1) {
        None => 0,
        Some(n) => (1u32 << n.min(6)).min(MAX_EOI_DELAY_MS),
    }
}

/// One step of serving a reqlist.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    Data,
    Flush,
    Discard,
}

/// The steps for an operation: a barrier makes everything before it durable
/// before its own data, and its data durable before it completes; a flush
/// writes its data (if any) and then makes everything durable.
fn plan(op: Op, has_data: bool) -> &'static [Phase] {
    match (op, has_data) {
        (Op::Read | Op::Write, _) => &[Phase::Data],
        (Op::Flush, true) => &[Phase::Data, Phase::Flush],
        (Op::Barrier, true) => &[Phase::Flush, Phase::Data, Phase::Flush],
        (Op::Flush | Op::Barrier, false) => &[Phase::Flush],
        (Op::Discard { .. }, _) => &[Phase::Discard],
    }
}

/// The step of its plan reqlist `list` serves now (`None` past the
/// last): a read or write has one, its data, and is decided before the
/// plans are looked at.
#[inline]
fn current_phase(list: &coalesce::Reqlist) -> Option<Phase> {
    if matches!(list.op, Op::Read | Op::Write) {
        return (list.phase == 0).then_some(Phase::Data);
    }
    plan(list.op, list.pages > 0)
        .get(usize::from(list.phase))
        .copied()
}

/// The sizes every queue of a connection shares (see
/// [`crate::negotiate`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct QueueShape {
    /// Request slots (and reqlists).
    pub nreq: usize,
    /// Segments of the largest request.
    pub max_segs: usize,
    /// Pages of the largest reqlist.
    pub max_pages: usize,
    /// The queue's transient range of the window, in pages.
    pub kva_pages: u32,
    /// Its persistent-grant cache, in pages (0: not negotiated).
    pub cache_pages: u32,
    /// The buffer for one indirect request's descriptor pages, in bytes.
    pub indirect_bytes: usize,
}

impl QueueShape {
    /// Window pages one queue uses: its transient range and its cache.
    pub fn window_pages(&self) -> Option<u32> {
        self.kva_pages.checked_add(self.cache_pages)
    }
}

/// What the queues of an instance share with its control part: each
/// queue's counters (written by that queue's context alone, read by anyone)
/// and the connection's switches (written by the control part, read by the
/// queues at the start of each pass). Made once per instance, for
/// `hw.xbb.max_queues` queues.
#[derive(Debug)]
pub struct Shared {
    /// Each queue's counters, behind an `Arc` of their own so that a
    /// queue reaches its counters with one load ([`QueueStats`]).
    queues: Vec<Arc<QueueCounters>>,
    medium_sectors: AtomicU64,
    no_coalesce: AtomicBool,
    stopped: AtomicBool,
}

impl Shared {
    /// Room for `queues` queues; `None` when the allocation fails.
    pub fn try_new(queues: usize) -> Option<Shared> {
        let mut v = Vec::new();
        v.try_reserve_exact(queues).ok()?;
        for _ in 0..queues {
            v.push(Arc::new(QueueCounters::default()));
        }
        Some(Shared {
            queues: v,
            medium_sectors: AtomicU64::new(0),
            no_coalesce: AtomicBool::new(false),
            stopped: AtomicBool::new(false),
        })
    }

    /// The counters of queue `queue`, if the instance has room for it.
    pub fn counters(&self, queue: QueueId) -> Option<&QueueCounters> {
        self.queues.get(queue as usize).map(|c| &**c)
    }

    /// Queue `queue`'s counters and gauges now, as a [`Stats`].
    pub fn queue_stats(&self, queue: QueueId) -> Option<Stats> {
        self.counters(queue).map(QueueCounters::snapshot)
    }

    /// Adds the counters and gauges of queues `0..queues` to `into`.
    pub fn sum_into(&self, into: &mut Stats, queues: u32) {
        for c in self.queues.iter().take(queues as usize) {
            into.accumulate(&c.snapshot());
        }
    }

    /// The medium's size requests are checked against.
    #[inline]
    pub fn medium_sectors(&self) -> Sectors {
        Sectors(self.medium_sectors.load(Ordering::Relaxed))
    }

    /// The control part publishes a new medium size; queues check the
    /// requests they accept from now on against it.
    pub fn set_medium_sectors(&self, sectors: Sectors) {
        self.medium_sectors.store(sectors.0, Ordering::Relaxed);
    }

    /// Whether back-to-back requests are coalesced (`no_coalesce_reqs` 0).
    #[inline]
    pub fn coalesce(&self) -> bool {
        !self.no_coalesce.load(Ordering::Relaxed)
    }

    /// Sets `no_coalesce_reqs`.
    pub fn set_no_coalesce(&self, off: bool) {
        self.no_coalesce.store(off, Ordering::Relaxed);
    }

    /// The control part stops every queue of the connection from consuming
    /// (it is failing or closing), before it tells the front-end so (the
    /// Closing state): a queue takes nothing from a `req_prod` it read
    /// after this, however late its recall reaches it. `false` again at
    /// the next connect, before the queues are lent.
    pub fn set_stopped(&self, stopped: bool) {
        // Release: pairs with the acquire in `stopped`, through the
        // front-end's req_prod (see Queue::consume).
        self.stopped.store(stopped, Ordering::Release);
    }

    /// Whether the control part stopped the queues.
    #[inline]
    pub fn stopped(&self) -> bool {
        self.stopped.load(Ordering::Acquire)
    }
}

/// A queue's view of its counters in [`Shared`], held directly: the
/// request path updates several counters per request.
#[derive(Debug)]
struct QueueStats {
    shared: Arc<Shared>,
    counters: Arc<QueueCounters>,
}

impl core::ops::Deref for QueueStats {
    type Target = QueueCounters;
    #[inline]
    fn deref(&self) -> &QueueCounters {
        &self.counters
    }
}

/// The tunables a queue keeps for its whole connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RunParams {
    /// Requests consumed before yielding (`hw.xbb.requests_per_pass`).
    pub per_pass: u32,
    /// Persistent grants idle this long are unmapped.
    pub idle_ms: u64,
}

/// How a call into the queue ended, for the instance's life cycle.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Nothing the life cycle must act on.
    Served,
    /// The front-end broke the ring protocol (an impossible `req_prod`):
    /// the queue answers nothing more; the connection must fail.
    RingBroken,
    /// The store reported itself gone: the connection must close.
    StoreGone,
}

/// How one pass of a lent queue ended ([`Queue::pass`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PassEnd {
    /// An outcome that ends the connection, for the control part
    /// (`Instance::queue_failed`); `None` when the pass served.
    pub failed: Option<Outcome>,
    /// Recalled and retired: the context gives the queue back
    /// ([`Gate::give_back`](crate::handoff::Gate::give_back)) and sends it home
    /// (`Instance::give_back`).
    pub home: bool,
}

/// One ring of a connection with everything that serves it.
pub struct Queue {
    id: QueueId,
    dom: DomId,
    generation: u8,
    /// The ring, and its in-flight journal when the platform keeps one
    /// ([`crate::journal`]).
    ring: JournaledRing,
    limits: Limits,
    budget: Budget,
    /// The requests and their reqlists.
    lists: Reqlists,
    /// The journal entry of each request slot's request.
    entries: Vec<u16>,
    /// Where each segment's page is, and the persistent-grant cache.
    grants: QueueGrants,
    /// The queue's transient range of the window.
    kva: KvaAllocator,
    iov: Vec<IoVec>,
    /// The private copy of an indirect request's descriptor pages.
    indirect: Vec<u8>,
    /// Reqlists waiting, in order, for room in the window: a ring buffer
    /// (with room for every reqlist) from `waitq_head`. Consumption
    /// pauses while any waits.
    waitq: Vec<u16>,
    waitq_head: usize,
    waitq_len: usize,
    /// A barrier waiting for everything before it to finish.
    barrier: u16,
    /// The request pool ran dry; consumption waits for a completion.
    starved: bool,
    /// Reqlists with I/O outstanding.
    in_flight: u32,
    /// Responses queued on the ring but not yet published.
    unpublished: u64,
    /// The front-end broke the ring protocol: answer nothing more.
    broken: bool,
    /// The connection is closing: consume nothing more.
    closing: bool,
    /// Recalled and drained: its persistent grants are unmapped.
    retired: bool,
    /// Consecutive kicks that found nothing to do.
    spurious: u32,
    /// The ring was taken over from another back-end: the front-end gets
    /// one event at the first run, whatever it asked for (that back-end
    /// may have published responses and gone before it notified).
    resumed: bool,
    /// Completions of one pass are being handled: their responses are
    /// published once, after the last ([`Queue::pass`]).
    batching: bool,
    /// The platform observes the request path ([`QueueHost::observes`]),
    /// as it said at the last entry into the queue: events are built and
    /// noted only then.
    observe: bool,
    /// The queue's share of the data window: its first page and length.
    share: (WindowPage, u32),
    params: RunParams,
    stats: QueueStats,
}

impl Queue {
    /// A queue serving `ring` for domain `dom`, its window share starting
    /// at window page `first_page`, with every pool allocated, its counters
    /// those of queue `id` in `shared` (zeroed here); on failure the ring is
    /// handed back. A ring taken over (`resumed`) re-executes the requests
    /// its journal holds before it consumes new ones.
    ///
    /// Never inlined: it would be copied, with every pool's allocation
    /// code, into the crate of each platform that instantiates the generic
    /// life cycle (2.5 KiB more in the kernel object).
    #[inline(never)]
    // The ring comes back whole on failure, once per connection and queue.
    #[allow(clippy::too_many_arguments, clippy::result_large_err)]
    pub fn new(
        id: QueueId,
        dom: DomId,
        generation: u8,
        ring: JournaledRing,
        resumed: bool,
        shape: &QueueShape,
        first_page: WindowPage,
        limits: Limits,
        params: RunParams,
        shared: &Arc<Shared>,
    ) -> Result<Queue, (NoMemory, JournaledRing)> {
        let Some(counters) = shared.queues.get(id as usize).map(Arc::clone) else {
            return Err((NoMemory, ring));
        };
        counters.reset();
        let pools = (|| {
            let lists = Reqlists::try_new(shape.nreq, shape.max_segs)?;
            let grants = QueueGrants::try_new(&GrantShape {
                dom,
                segments: lists.segments().len(),
                kva_base: first_page,
                kva_pages: shape.kva_pages,
                cache_pages: shape.cache_pages,
                max_segs: shape.max_segs,
                max_pages: shape.max_pages,
            })?;
            let kva = KvaAllocator::try_new(shape.kva_pages).map_err(|_| NoMemory)?;
            Ok((
                lists,
                grants,
                kva,
                try_vec(shape.max_pages, IoVec::default())?,
                try_vec(shape.indirect_bytes, 0u8)?,
                try_vec(shape.nreq, NONE)?,
                try_vec(shape.nreq, NONE)?,
            ))
        })();
        let (lists, grants, kva, iov, indirect, waitq, entries) = match pools {
            Ok(p) => p,
            Err(e) => return Err((e, ring)),
        };
        Ok(Queue {
            id,
            dom,
            generation,
            ring,
            limits,
            budget: Budget {
                max_pages: shape.max_pages as u32,
                max_bytes: Bytes((shape.max_pages * PAGE_SIZE) as u64),
            },
            lists,
            entries,
            grants,
            kva,
            iov,
            indirect,
            waitq,
            waitq_head: 0,
            waitq_len: 0,
            barrier: NONE,
            starved: false,
            in_flight: 0,
            unpublished: 0,
            broken: false,
            closing: false,
            retired: false,
            spurious: 0,
            resumed,
            batching: false,
            observe: false,
            share: (first_page, shape.window_pages().unwrap_or(shape.kva_pages)),
            params,
            stats: QueueStats {
                shared: Arc::clone(shared),
                counters,
            },
        })
    }

    /// The queue's number.
    pub fn id(&self) -> QueueId {
        self.id
    }

    /// The connection this queue belongs to (its generation).
    pub fn generation(&self) -> u8 {
        self.generation
    }

    /// The queue's counters and gauges (`dev.xbb.N.queue.Q.*`).
    pub fn stats(&self) -> Stats {
        self.stats.snapshot()
    }

    /// The pages of the data window this queue maps into (its transient
    /// range and its persistent-grant cache): a platform may keep a table
    /// per queue for them, touched by that queue's context alone.
    pub fn window_share(&self) -> core::ops::Range<u32> {
        let (first, pages) = self.share;
        first.0..first.0.saturating_add(pages)
    }

    /// The queue a completion's tag names: where a platform that runs its
    /// queues in contexts of their own delivers it.
    pub fn of_tag(tag: IoTag) -> QueueId {
        ListTag::decode(tag).queue
    }

    /// Whether consumption waits (for the window, a barrier's drain, or a
    /// request slot).
    pub fn paused(&self) -> bool {
        self.waitq_len > 0 || self.barrier != NONE || self.starved
    }

    /// Whether nothing is in flight, open or waiting.
    pub fn idle(&self) -> bool {
        self.in_flight == 0
            && self.lists.open().is_none()
            && self.waitq_len == 0
            && self.barrier == NONE
    }

    /// Accounts for a kick of the queue's event channel after the run it
    /// caused, given `ReqsReceived` before that run; returns the delay, in
    /// milliseconds, before the channel is re-enabled ("late EOI"). A kick
    /// that found nothing to do is counted as spurious; after a few in a
    /// row the channel is re-enabled later and later (up to 64 ms), so that
    /// a front-end kicking in a loop cannot spin the back-end. Any kick
    /// that brings a request resets the backoff.
    pub fn note_kick(&mut self, received_before: u64) -> u32 {
        if self.stats.get(Stat::ReqsReceived) != received_before || self.paused() {
            self.spurious = 0;
            return 0;
        }
        self.spurious = self.spurious.saturating_add(1);
        self.stats.inc(Stat::SpuriousEvents);
        let delay = eoi_delay(self.spurious);
        if delay > 0 {
            self.stats.inc(Stat::DelayedEois);
        }
        delay
    }

    /// The front-end kicked the queue's event channel: runs the queue,
    /// then re-enables the channel ("late EOI"), later and later while
    /// kicks keep finding nothing to do ([`Queue::note_kick`]).
    pub fn event<H: QueueHost + ?Sized>(&mut self, host: &mut H) -> Outcome {
        let before = self.stats.get(Stat::ReqsReceived);
        let outcome = self.run(host);
        let delay = self.note_kick(before);
        host.evtchn_eoi(self.id, delay);
        outcome
    }

    /// A run was scheduled (or the event fired): consumes requests, at
    /// most `hw.xbb.requests_per_pass` of them before yielding.
    pub fn run<H: QueueHost + ?Sized>(&mut self, host: &mut H) -> Outcome {
        self.observe = host.observes();
        if self.broken || self.closing {
            return Outcome::Served;
        }
        if self.consume(host).is_err() {
            // The front-end wrote an impossible producer index: answer
            // nothing more on this ring, serve nothing that came with it.
            self.broken = true;
            self.abandon_unstarted(host);
            return Outcome::RingBroken;
        }
        self.grants
            .purge_idle(host, self.params.idle_ms, &self.stats);
        self.publish(host);
        if core::mem::take(&mut self.resumed) {
            host.evtchn_notify(self.id);
        }
        Outcome::Served
    }

    /// One of the queue's I/Os completed: advances its reqlist, answers
    /// the front-end, restarts what waited for the resources it held, and
    /// consumes again when the completion ended a pause. A tag of another
    /// queue or connection is ignored.
    pub fn complete<H: QueueHost + ?Sized>(
        &mut self,
        host: &mut H,
        tag: IoTag,
        result: Result<(), IoError>,
    ) -> Outcome {
        let t = ListTag::decode(tag);
        if t.generation != self.generation || t.queue != self.id {
            return Outcome::Served;
        }
        self.observe = host.observes();
        let was_paused = self.paused();
        self.on_complete(host, t.list, result);
        // What this completion may restart, if anything waits.
        if self.waitq_len > 0 {
            self.drain_waitq(host);
        }
        if self.barrier != NONE {
            self.try_start_barrier(host);
        }
        self.grants
            .purge_idle(host, self.params.idle_ms, &self.stats);
        if !self.batching {
            self.publish(host);
        }
        if result == Err(IoError::Gone) {
            return Outcome::StoreGone;
        }
        if was_paused && !self.paused() {
            return self.run(host);
        }
        Outcome::Served
    }

    /// Stops consuming: the open reqlist is dispatched and queued
    /// responses published (the connection is closing). Idempotent.
    pub fn close<H: QueueHost + ?Sized>(&mut self, host: &mut H) {
        if self.closing {
            return;
        }
        self.observe = host.observes();
        self.closing = true;
        self.close_open(host, Stat::ForcedDispatch);
        self.publish(host);
    }

    /// The control part wants the queue back: closes it ([`Queue::close`])
    /// and, once nothing is in flight, retires it — publishes what is left
    /// and unmaps every persistent grant. `true` once retired: the queue
    /// may go home. The queue's context calls this again after each
    /// completion until it answers `true`.
    pub fn recall<H: QueueHost + ?Sized>(&mut self, host: &mut H) -> bool {
        self.close(host);
        self.observe = host.observes();
        if !self.retired && self.idle() {
            self.publish(host);
            self.grants.drain(host, &self.stats);
            self.retired = true;
        }
        self.retired
    }

    /// Whether [`Queue::recall`] has retired the queue.
    pub fn is_retired(&self) -> bool {
        self.retired
    }

    /// One pass of a lent queue in its own context, between the gate's
    /// [`Gate::begin`](crate::handoff::Gate::begin) (which handed over
    /// `work`) and its [`Gate::end`](crate::handoff::Gate::end):
    /// the store's `completions` first (they free ring slots and window
    /// pages), then the front-end's kick ([`Work::EVENT`]:
    /// [`Queue::event`]) and a run asked for ([`Work::RUN`]:
    /// [`Queue::run`]); and once the control part recalled the queue (in
    /// this pass or an earlier one), [`Queue::recall`] until the queue is
    /// retired. Every platform's queue context is this call plus its own
    /// way of sleeping and waking.
    pub fn pass<H: QueueHost + ?Sized>(
        &mut self,
        host: &mut H,
        work: Work,
        completions: impl IntoIterator<Item = (IoTag, Result<(), IoError>)>,
    ) -> PassEnd {
        let mut outcome = Outcome::Served;
        let mut note = |o: Outcome| {
            if o != Outcome::Served {
                outcome = o;
            }
        };
        // A pass's completions are answered together: their responses are
        // published (and the front-end notified, if it asked) once, after
        // the last of them, not once each.
        self.batching = true;
        for (tag, result) in completions {
            note(self.complete(host, tag, result));
        }
        self.batching = false;
        self.publish(host);
        if work.contains(Work::EVENT) {
            note(self.event(host));
        }
        if work.contains(Work::RUN) {
            note(self.run(host));
        }
        // Only a recall closes a lent queue: `closing` remembers it.
        let home = (work.contains(Work::RECALL) || self.closing) && self.recall(host);
        PassEnd {
            failed: (outcome != Outcome::Served).then_some(outcome),
            home,
        }
    }

    /// Gives back what the control part set up for the queue: unbinds the
    /// channel, unmaps the ring, and closes the journal, which the
    /// platform keeps for the next back-end when `keep_journal` (the
    /// queue is handed over) and removes otherwise. The queue is retired
    /// (or never served). Returns the counters.
    pub fn release<H: Host + ?Sized>(self, host: &mut H, keep_journal: bool) -> Stats {
        let stats = self.stats.snapshot();
        self.stats.reset();
        host.evtchn_unbind(self.id);
        let (ring, journal) = self.ring.into_mems();
        host.unmap_ring(self.id, ring);
        if let Some(j) = journal {
            host.journal_close(self.id, j, keep_journal);
        }
        stats
    }

    /// Undoes a queue that never served: unbinds and unmaps its ring,
    /// removes its journal. It is [`Queue::release`] with nothing to
    /// publish or unmap (nothing was served), and shares its code: a
    /// second way of taking a queue apart would be a second copy of its
    /// drop code in the kernel object.
    pub fn undo<H: Host + ?Sized>(self, host: &mut H) {
        let _ = self.release(host, false);
    }

    /// Notes the event `ev` builds, if the platform observes
    /// ([`Queue::observe`]): otherwise nothing is built.
    #[inline(always)]
    fn note<H: QueueHost + ?Sized>(&self, host: &mut H, ev: impl FnOnce() -> Event) {
        if self.observe {
            host.note(ev());
        }
    }

    fn tag(&self, list: u16) -> IoTag {
        ListTag {
            generation: self.generation,
            queue: self.id,
            list,
        }
        .encode()
    }

    /// Consumes requests until the ring is empty, a pool runs dry, or the
    /// pass budget is spent. `Err` when the front-end broke the ring.
    fn consume<H: QueueHost + ?Sized>(&mut self, host: &mut H) -> Result<(), ()> {
        let per_pass = self.params.per_pass;
        let mut budget = per_pass;
        // The connection's switches, read once a pass: a resize or a
        // sysctl write applies to the requests accepted from the next pass
        // on (a shrink also to what waits: submit_step_to_store checks the
        // size again).
        self.limits.medium_sectors = self.stats.shared.medium_sectors();
        let coalesce = self.stats.shared.coalesce();
        let mut stopped_on_pause = false;
        let ring_ok = 'pass: loop {
            let Ok(prod) = self.ring.ring().snapshot_req_prod() else {
                break 'pass Err(());
            };
            // The connection is failing or closing. A front-end that saw
            // the Closing state before it produced wrote this req_prod
            // after the control part stopped the queues, so this load
            // (after req_prod's acquire) sees the stop: nothing it
            // produced after Closing is consumed, even if the queue's
            // recall has not reached it yet.
            if self.stats.shared.stopped() {
                break 'pass Ok(());
            }
            // Requests a previous back-end consumed and never answered go
            // first (a ring taken over), then the ring's.
            while self.ring.replay_pending() || self.ring.ring().req_cons() != prod {
                if self.paused() {
                    stopped_on_pause = true;
                    break 'pass Ok(());
                }
                if budget == 0 {
                    // Yield the taskqueue; a hostile front-end can keep
                    // producing forever.
                    host.schedule_run(self.id);
                    break 'pass Ok(());
                }
                if self.lists.slots_exhausted() {
                    self.stats.inc(Stat::RequestShortages);
                    self.starved = true;
                    stopped_on_pause = true;
                    break 'pass Ok(());
                }
                let taken = if self.ring.replay_pending() {
                    self.stats.inc(Stat::ReqsReplayed);
                    self.ring.replay()
                } else {
                    if self.ring.needs_publish() {
                        // Every journal entry holds a request not yet
                        // published: publishing frees the answered ones.
                        self.publish(host);
                        if self.ring.needs_publish() {
                            // A ring's worth unanswered: the ring has
                            // nothing to take either.
                            break 'pass Ok(());
                        }
                    }
                    // Journaled (when a journal is kept) before req_cons
                    // moved past it.
                    self.ring.take(prod)
                };
                // Borrowed where it was decoded: no second copy.
                let Some((raw, entry)) = &taken else {
                    break;
                };
                budget -= 1;
                self.accept(host, raw, *entry, coalesce);
            }
            if self.paused() {
                stopped_on_pause = true;
                break Ok(());
            }
            match self.ring.ring_mut().final_check_for_requests() {
                Ok(true) => {}
                Ok(false) => break Ok(()),
                Err(_) => break Err(()),
            }
        };
        // Every request taken, counted once per pass.
        self.stats
            .add(Stat::ReqsReceived, u64::from(per_pass - budget));
        ring_ok?;
        self.close_open(host, Stat::ForcedDispatch);
        // The pause may already be over (the dispatch above failed at once
        // and freed everything): no completion will come to restart the
        // ring, and req_event was not re-armed, so run again.
        if stopped_on_pause && !self.paused() {
            host.schedule_run(self.id);
        }
        Ok(())
    }

    /// Validates one request into `slot`'s segments, copying an indirect
    /// request's descriptor pages once.
    fn parse<H: QueueHost + ?Sized>(
        &mut self,
        host: &mut H,
        raw: &BlkifRequest,
        slot: u16,
    ) -> Result<Parsed, i16> {
        let segs = self.lists.slot_segments(slot);
        match request::parse(raw, &self.limits, segs) {
            Ok(Header::Ready(p)) => Ok(p),
            Ok(Header::Indirect(h)) => {
                self.stats.inc(Stat::IndirectReqs);
                // parse() bounded nsegs by what `indirect` was sized for.
                let buf = self
                    .indirect
                    .get_mut(..h.descriptor_bytes())
                    .ok_or(BLKIF_RSP_ERROR)?;
                let from = Granted {
                    dom: self.dom,
                    grefs: h.page_grefs(),
                };
                if host.copy_in(from, buf).is_err() {
                    self.stats.inc(Stat::GrantMapFailures);
                    return Err(BLKIF_RSP_ERROR);
                }
                let segs = self.lists.slot_segments(slot);
                request::parse_indirect(&h, buf, &self.limits, segs).map_err(|e| e.status())
            }
            Err(e) => Err(e.status()),
        }
    }

    /// Validates one request (journal entry `entry`) into a free slot,
    /// binds its grants, and takes it into a reqlist; or answers it with
    /// an error.
    fn accept<H: QueueHost + ?Sized>(
        &mut self,
        host: &mut H,
        raw: &BlkifRequest,
        entry: u16,
        coalesce: bool,
    ) {
        let op = request::response_operation(raw);
        let Some(slot) = self.lists.take_slot() else {
            // consume() checked; keep the invariant without panicking.
            self.refuse(host, raw.id, op, BLKIF_RSP_ERROR, entry);
            return;
        };
        let p = match self.parse(host, raw, slot) {
            Ok(p) => p,
            Err(status) => {
                self.stats.inc(Stat::ReqsRefused);
                self.lists.put_slot(slot);
                self.refuse(host, raw.id, op, status, entry);
                return;
            }
        };
        self.note(host, || {
            let (kind, bytes) = kind_bytes(p.operation, p.nr_sectors);
            Event::RequestStart {
                id: p.id,
                kind,
                sector: p.sector.0,
                bytes,
            }
        });
        let range = self.lists.slot_range(slot);
        let used = range.start..range.start + usize::from(p.nsegs);
        // Without persistent grants every segment takes a transient page.
        let mut to_map = ToMap {
            transient: p.nsegs,
            pending: 0,
        };
        if self.grants.persistent() {
            let segs = &self.lists.segments()[used.clone()];
            let Some(bound) = self.grants.bind(host, segs, used, &self.stats) else {
                self.stats.inc(Stat::ReqsRefused);
                self.stats.inc(Stat::GrantsRefused);
                self.lists.put_slot(slot);
                self.answer(
                    host,
                    p.id,
                    p.operation,
                    p.nr_sectors,
                    BLKIF_RSP_ERROR,
                    entry,
                );
                return;
            };
            to_map = bound;
        }
        self.lists.set_slot(slot, &p);
        if let Some(e) = self.entries.get_mut(usize::from(slot)) {
            *e = entry;
        }
        self.enlist(host, slot, &p, to_map, coalesce);
    }

    /// Takes a validated request into the open reqlist or a new one.
    fn enlist<H: QueueHost + ?Sized>(
        &mut self,
        host: &mut H,
        slot: u16,
        p: &Parsed,
        to_map: ToMap,
        coalesce: bool,
    ) {
        match p.op {
            Op::Flush | Op::Barrier => self.stats.inc(Stat::FlushReqs),
            Op::Discard { .. } => self.stats.inc(Stat::DiscardReqs),
            Op::Read | Op::Write => {}
        }
        if self.lists.open().is_some() {
            if coalesce && self.lists.join_open(slot, p, to_map, &self.budget) {
                self.stats.inc(Stat::ReqsCoalesced);
                return;
            }
            self.close_open(host, Stat::NormalDispatch);
        }
        let Some(l) = self.lists.start(slot, p, to_map) else {
            // As many reqlists as slots: unreachable; answer rather than panic.
            let r = self.lists.slot_range(slot);
            let used = r.start..r.start + usize::from(p.nsegs);
            self.grants
                .release(host, core::iter::once(used), &self.stats);
            self.lists.put_slot(slot);
            let entry = self.entry_of(slot);
            self.answer(
                host,
                p.id,
                p.operation,
                p.nr_sectors,
                BLKIF_RSP_ERROR,
                entry,
            );
            return;
        };
        if self.lists.open() != Some(l) {
            self.stats.inc(Stat::NormalDispatch);
            self.dispatch(host, l);
        }
    }

    fn close_open<H: QueueHost + ?Sized>(&mut self, host: &mut H, why: Stat) {
        if let Some(l) = self.lists.take_open() {
            self.stats.inc(why);
            self.dispatch(host, l);
        }
    }

    fn dispatch<H: QueueHost + ?Sized>(&mut self, host: &mut H, l: u16) {
        self.stats.inc(Stat::TotalDispatch);
        self.note(host, || {
            let list = self.lists.list(l);
            let kind = match list.op {
                Op::Read => IoKind::Read,
                Op::Write => IoKind::Write,
                Op::Flush => IoKind::Flush,
                Op::Barrier if list.nr_sectors.0 == 0 => IoKind::Flush,
                Op::Barrier => IoKind::Write,
                Op::Discard { .. } => IoKind::Discard,
            };
            Event::Dispatch {
                kind,
                sector: list.sector.0,
                bytes: list.nr_sectors.0.saturating_mul(512),
            }
        });
        if self.lists.list(l).op == Op::Barrier {
            self.barrier = l;
            self.try_start_barrier(host);
        } else if self.waitq_len > 0 || !self.try_start(host, l) {
            // Behind others already waiting, or no room: wait in order.
            self.stats.inc(Stat::KvaShortages);
            let cap = self.waitq.len();
            self.waitq[(self.waitq_head + self.waitq_len) % cap] = l;
            self.waitq_len += 1;
        }
    }

    /// The ring is broken: nothing that has not started yet ever will. The
    /// open reqlist, every reqlist waiting for the window and a barrier
    /// waiting for its drain are finished at once, without I/O (their
    /// responses are not written: the ring is broken); only what is in
    /// flight drains.
    fn abandon_unstarted<H: QueueHost + ?Sized>(&mut self, host: &mut H) {
        if let Some(l) = self.lists.take_open() {
            self.lists.list_mut(l).error = true;
            self.finish(host, l);
        }
        while self.waitq_len > 0 {
            let l = self.waitq[self.waitq_head];
            self.waitq_head = (self.waitq_head + 1) % self.waitq.len();
            self.waitq_len -= 1;
            self.lists.list_mut(l).error = true;
            self.finish(host, l);
        }
        if self.barrier != NONE && !self.lists.list(self.barrier).in_flight {
            let l = self.barrier;
            self.lists.list_mut(l).error = true;
            self.finish(host, l);
        }
    }

    /// Starts waiting reqlists, oldest first, while the window has room.
    fn drain_waitq<H: QueueHost + ?Sized>(&mut self, host: &mut H) {
        while self.waitq_len > 0 {
            let l = self.waitq[self.waitq_head];
            if !self.try_start(host, l) {
                break;
            }
            self.waitq_head = (self.waitq_head + 1) % self.waitq.len();
            self.waitq_len -= 1;
        }
    }

    /// Starts the pending barrier once everything before it has finished.
    fn try_start_barrier<H: QueueHost + ?Sized>(&mut self, host: &mut H) {
        if self.barrier != NONE
            && self.in_flight == 0
            && self.waitq_len == 0
            && !self.lists.list(self.barrier).in_flight
        {
            let l = self.barrier;
            // With nothing in flight the whole window is free, and it always
            // holds one request; fail the barrier rather than wait forever
            // should that ever not hold.
            if !self.try_start(host, l) {
                self.lists.list_mut(l).error = true;
                self.finish(host, l);
            }
        }
    }

    /// Gives a reqlist a window range for its unbound segments, maps those
    /// and its new persistent grants in one batch, and submits its first
    /// phase. `false`, with nothing changed, when the window has no room
    /// for it; otherwise the reqlist is in flight or already answered (a
    /// failed mapping or submission).
    fn try_start<H: QueueHost + ?Sized>(&mut self, host: &mut H, l: u16) -> bool {
        let list = *self.lists.list(l);
        if list.pages > 0 {
            // Known since each request was accepted: the segments the
            // persistent-grant cache did not take (every one without it).
            let transient = list.transient;
            debug_assert_eq!(
                transient,
                self.grants
                    .transient_pages(self.lists.chain(l).map(|(_, r)| r))
            );
            let first = if transient > 0 {
                let Some(first) = self.kva.alloc(transient) else {
                    return false;
                };
                first
            } else {
                0
            };
            let lm = self.lists.list_mut(l);
            lm.kva_first = first;
            lm.kva_pages = transient;
            // Every segment a cache hit: nothing to map.
            if transient + list.pending > 0 {
                let chain = self.lists.chain(l).map(|(_, r)| r);
                let failed = self.grants.map(
                    host,
                    chain,
                    self.lists.segments(),
                    first,
                    list.op.writes(),
                    &self.stats,
                );
                if failed > 0 {
                    self.stats.add(Stat::GrantMapFailures, failed);
                    self.fail_unmapped(l);
                }
            }
        }
        // Only the requests whose own grants failed are answered with an
        // error; the others are served, in runs around them.
        let run = self.lists.first_unfailed(list.head);
        if run == NONE {
            self.finish(host, l);
            return true;
        }
        let lm = self.lists.list_mut(l);
        lm.in_flight = true;
        lm.phase = 0;
        lm.run = run;
        self.in_flight += 1;
        self.submit_phase(host, l);
        true
    }

    /// Marks failed every request of reqlist `l` one of whose segments
    /// could not be mapped.
    fn fail_unmapped(&mut self, l: u16) {
        let mut cur = self.lists.list(l).head;
        while cur != NONE {
            let r = self.lists.slot(cur);
            let base = self.lists.slot_range(cur).start;
            let range = base..base + usize::from(r.nsegs);
            if self.grants.mapped_pages(range).any(|p| p.is_none()) {
                self.lists.fail_slot(l, cur);
            }
            cur = r.next;
        }
    }

    /// The iovecs of the run of reqlist `l` being served, in `self.iov`;
    /// `None` when a segment has no page or the buffer is short (neither
    /// happens for a reqlist within its budget).
    fn iovecs(&mut self, l: u16) -> Option<usize> {
        let mut n = 0usize;
        for (_, r) in self.lists.run_chain(self.lists.list(l).run) {
            let segs = &self.lists.segments()[r.clone()];
            n = coalesce::append_iovecs(
                segs.iter().zip(self.grants.mapped_pages(r)),
                &mut self.iov,
                n,
            )?;
        }
        Some(n)
    }

    /// Submits the reqlist's current step: a data step serves its current
    /// run. A submission the store refuses fails that step at once, and
    /// serving goes on with the next (one per run at most: the loop is
    /// bounded by the reqlist's requests).
    fn submit_phase<H: QueueHost + ?Sized>(&mut self, host: &mut H, l: u16) {
        loop {
            let Err(e) = self.submit_step(host, l) else {
                return;
            };
            if !self.advance(l, Err(e)) {
                return self.finish(host, l);
            }
        }
    }

    /// Hands the reqlist's current step to the store.
    fn submit_step<H: QueueHost + ?Sized>(&mut self, host: &mut H, l: u16) -> Result<(), IoError> {
        // Taken before the submission: the store may complete at once.
        let step = if self.observe { self.step(l) } else { None };
        self.submit_step_to_store(host, l)?;
        if let Some((kind, bytes)) = step {
            self.note(host, || Event::IoStart { kind, bytes });
        }
        Ok(())
    }

    /// The kind and bytes of the reqlist's current step, for the
    /// observers.
    fn step(&self, l: u16) -> Option<(IoKind, u64)> {
        let list = self.lists.list(l);
        match current_phase(list)? {
            Phase::Data => {
                let run = self.lists.current_run(l);
                let kind = if list.op == Op::Read {
                    IoKind::Read
                } else {
                    IoKind::Write
                };
                Some((kind, run.nr_sectors.0.saturating_mul(512)))
            }
            Phase::Flush => Some((IoKind::Flush, 0)),
            Phase::Discard => Some((IoKind::Discard, list.nr_sectors.0.saturating_mul(512))),
        }
    }

    fn submit_step_to_store<H: QueueHost + ?Sized>(
        &mut self,
        host: &mut H,
        l: u16,
    ) -> Result<(), IoError> {
        let list = *self.lists.list(l);
        let phase = current_phase(&list);
        let tag = self.tag(l);
        let (sector, nr_sectors) = match phase {
            Some(Phase::Data) => {
                let run = self.lists.current_run(l);
                (run.sector, run.nr_sectors)
            }
            _ => (list.sector, list.nr_sectors),
        };
        // Accepted against the medium's size then; the medium may have
        // shrunk since (a resize while it waited for the window, a
        // barrier's drain or its first flush): nothing goes past the end
        // the core now knows. The step fails instead (a data step: its
        // run's requests only).
        if matches!(phase, Some(Phase::Data | Phase::Discard)) {
            // The size now, not as of the last request accepted.
            let medium = self.stats.shared.medium_sectors();
            let end = sector.checked_add(nr_sectors);
            if end.is_none_or(|e| e > medium) {
                return Err(IoError::Io);
            }
        }
        // Within the medium, whose bytes fit a u64: the conversions hold.
        let (Some(offset), Some(len)) = (sector.bytes(), nr_sectors.bytes()) else {
            return Err(IoError::Io);
        };
        match phase {
            Some(Phase::Data) => {
                let n = self.iovecs(l).ok_or(IoError::Io)?;
                let iov = &self.iov[..n];
                let op = if list.op == Op::Read {
                    IoOp::Read { offset, iov }
                } else {
                    IoOp::Write { offset, iov }
                };
                host.store_submit(tag, op)
            }
            Some(Phase::Flush) => host.store_submit(tag, IoOp::Flush),
            Some(Phase::Discard) => host.store_submit(
                tag,
                IoOp::Discard {
                    offset,
                    len,
                    secure: matches!(list.op, Op::Discard { secure: true }),
                },
            ),
            None => Err(IoError::Io),
        }
    }

    /// One step of a reqlist finished.
    fn on_complete<H: QueueHost + ?Sized>(
        &mut self,
        host: &mut H,
        l: u16,
        result: Result<(), IoError>,
    ) {
        // A tag the core did not hand out, or a duplicate completion, is a
        // platform bug; ignore it rather than answer twice.
        if !self.lists.get(l).is_some_and(|list| list.in_flight) {
            return;
        }
        if let Some((kind, bytes)) = self.observe.then(|| self.step(l)).flatten() {
            self.note(host, || Event::IoDone {
                kind,
                bytes,
                result,
            });
        }
        if self.advance(l, result) {
            self.submit_phase(host, l);
        } else {
            self.finish(host, l);
        }
    }

    /// Records how the reqlist's current step ended and moves to the next
    /// one: the next run of a data step, else the next step of its plan.
    /// A failed data step fails its run's requests only; any other failed
    /// step fails the whole reqlist (it serves every request: a flush, a
    /// discard, a barrier's steps — each of those reqlists holds one
    /// request). `true` when there is a step to submit, `false` when the
    /// reqlist is done.
    fn advance(&mut self, l: u16, result: Result<(), IoError>) -> bool {
        let list = *self.lists.list(l);
        if current_phase(&list) == Some(Phase::Data) {
            let run = self.lists.current_run(l);
            if result.is_ok() {
                let stat = if list.op == Op::Read {
                    Stat::BytesRead
                } else {
                    Stat::BytesWritten
                };
                self.stats
                    .add(stat, run.nr_sectors.bytes().map_or(0, |b| b.0));
            } else {
                self.lists.fail_run(l, list.run);
            }
            if run.next != NONE {
                self.lists.list_mut(l).run = run.next;
                return true;
            }
            if result.is_err() {
                return false;
            }
        } else if result.is_err() {
            self.lists.list_mut(l).error = true;
            return false;
        }
        // A read or write has no step after its data.
        let more = !matches!(list.op, Op::Read | Op::Write)
            && usize::from(list.phase) + 1 < plan(list.op, list.pages > 0).len();
        self.lists.list_mut(l).phase = list.phase + 1;
        more
    }

    /// Unmaps, frees the window range, answers every request of the
    /// reqlist, and returns everything to the pools.
    fn finish<H: QueueHost + ?Sized>(&mut self, host: &mut H, l: u16) {
        let list = *self.lists.list(l);
        let chain = self.lists.chain(l).map(|(_, r)| r);
        self.grants.release(host, chain, &self.stats);
        if list.kva_pages > 0 {
            self.kva.free(list.kva_first, list.kva_pages);
        }
        if list.in_flight {
            self.in_flight -= 1;
        }
        let mut cur = list.head;
        while cur != NONE {
            let r = self.lists.slot(cur);
            let status = if list.error || r.failed {
                BLKIF_RSP_ERROR
            } else {
                BLKIF_RSP_OKAY
            };
            let entry = self.entry_of(cur);
            self.answer(host, r.id, r.operation, r.nr_sectors, status, entry);
            cur = r.next;
        }
        self.lists.free(l);
        if self.barrier == l {
            self.barrier = NONE;
        }
        self.starved = false;
    }

    /// The journal entry of the request in slot `slot`.
    fn entry_of(&self, slot: u16) -> u16 {
        self.entries.get(usize::from(slot)).copied().unwrap_or(NONE)
    }

    /// Answers a request [`Event::RequestStart`] reported.
    fn answer<H: QueueHost + ?Sized>(
        &mut self,
        host: &mut H,
        id: u64,
        operation: u8,
        nr_sectors: Sectors,
        status: i16,
        entry: u16,
    ) {
        self.note(host, || {
            let (kind, bytes) = kind_bytes(operation, nr_sectors);
            Event::RequestDone {
                id,
                kind,
                bytes,
                status,
            }
        });
        self.respond(id, operation, status, entry);
    }

    /// Answers a request that never started.
    fn refuse<H: QueueHost + ?Sized>(
        &mut self,
        host: &mut H,
        id: u64,
        operation: u8,
        status: i16,
        entry: u16,
    ) {
        self.note(host, || Event::RequestRefused {
            id,
            operation,
            status,
        });
        self.respond(id, operation, status, entry);
    }

    /// Queues the response to the request of journal entry `entry` on the
    /// ring (published by [`Queue::publish`]).
    fn respond(&mut self, id: u64, operation: u8, status: i16, entry: u16) {
        if self.broken {
            return;
        }
        let rsp = BlkifResponse {
            id,
            operation,
            status,
        };
        self.ring.respond(entry, &rsp);
        self.unpublished += 1;
        self.stats.inc(Stat::ReqsQueuedForCompletion);
        if status != BLKIF_RSP_OKAY {
            self.stats.inc(Stat::ReqsCompletedWithError);
        }
    }

    /// Makes queued responses visible; notifies the front-end only if its
    /// `rsp_event` asked for it.
    fn publish<H: QueueHost + ?Sized>(&mut self, host: &mut H) {
        if self.unpublished == 0 || self.broken {
            return;
        }
        if self.ring.publish() {
            host.evtchn_notify(self.id);
        }
        self.stats.add(Stat::ReqsCompleted, self.unpublished);
        self.unpublished = 0;
    }
}

/// Only what tells queues apart and says whether one is busy or broken:
/// the pools and the ring are large and say nothing at a glance.
impl core::fmt::Debug for Queue {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Queue")
            .field("id", &self.id)
            .field("in_flight", &self.in_flight)
            .field("broken", &self.broken)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn eoi_backoff_grows_and_is_capped() {
        assert_eq!(eoi_delay(0), 0);
        assert_eq!(eoi_delay(SPURIOUS_GRACE), 0);
        assert_eq!(eoi_delay(SPURIOUS_GRACE + 1), 1);
        assert_eq!(eoi_delay(SPURIOUS_GRACE + 2), 2);
        assert_eq!(eoi_delay(SPURIOUS_GRACE + 7), 64);
        assert_eq!(eoi_delay(u32::MAX), MAX_EOI_DELAY_MS);
    }

    #[test]
    fn plans_order_barriers_and_flushes() {
        assert_eq!(plan(Op::Read, true), [Phase::Data]);
        assert_eq!(plan(Op::Flush, true), [Phase::Data, Phase::Flush]);
        assert_eq!(plan(Op::Flush, false), [Phase::Flush]);
        assert_eq!(
            plan(Op::Barrier, true),
            [Phase::Flush, Phase::Data, Phase::Flush]
        );
        assert_eq!(plan(Op::Barrier, false), [Phase::Flush]);
        assert_eq!(plan(Op::Discard { secure: true }, false), [Phase::Discard]);
    }
}
