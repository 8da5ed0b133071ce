//! The grants of one queue: where each segment's page is in the data
//! window, the batched map and unmap plans of `grant_table.h`
//! (`GNTTABOP_map_grant_ref`, `GNTTABOP_unmap_grant_ref`), and the
//! persistent-grant cache of `io/blkif.h` `feature-persistent`
//! ([`cache`]).
//!
//! A segment's page is either transient — mapped for one reqlist at a page
//! of the reqlist's range of the queue's window share, unmapped when it
//! completes — or an entry of the persistent-grant cache, bound when the
//! request is accepted and mapped once for as long as the cache keeps it.
//! [`QueueGrants`] plans each reqlist's mappings as one batch and each
//! release as one unmap batch, in buffers sized when the queue is built:
//! nothing here allocates on the request path.

pub mod cache;

use alloc::vec::Vec;
use core::ops::Range;

use crate::abi::Segment;
use crate::coalesce::{try_vec, NoMemory, ToMap};
use crate::host::{
    DomId, GrantError, GrantHandle, GrantMapOp, GrantRef, GrantUnmapOp, MapResult, QueueHost,
};
use crate::stats::{QueueCounters, Stat};
use crate::units::WindowPage;
pub use cache::{CacheError, GrantCache, Insert, Lookup};

/// Where a segment's page is (or will be) in the data window.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SegPage {
    /// Not bound: gets a transient page of the reqlist's range.
    Unassigned,
    /// A transient mapping at this window page, unmapped on completion.
    Transient(WindowPage),
    /// A persistent-grant cache entry at this page, not mapped yet.
    Pending(WindowPage),
    /// A mapped persistent-grant cache entry at this page.
    Cached(WindowPage),
}

impl SegPage {
    /// The window page of a mapped segment.
    pub fn mapped(self) -> Option<WindowPage> {
        match self {
            SegPage::Transient(p) | SegPage::Cached(p) => Some(p),
            SegPage::Pending(_) | SegPage::Unassigned => None,
        }
    }
}

/// The sizes [`QueueGrants`] is built for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GrantShape {
    /// The front-end's domain, whose grants these are.
    pub dom: DomId,
    /// Segments of every request slot of the queue.
    pub segments: usize,
    /// The queue's transient range: its first window page and its pages.
    pub kva_base: WindowPage,
    /// See [`GrantShape::kva_base`].
    pub kva_pages: u32,
    /// Persistent-grant cache entries (0: not negotiated); the cache
    /// owns the window pages right after the transient range.
    pub cache_pages: u32,
    /// The most segments of one request.
    pub max_segs: usize,
    /// The most pages of one reqlist: the longest batch.
    pub max_pages: usize,
}

/// The grants of one queue; see the [module](self) docs.
#[derive(Debug)]
pub struct QueueGrants {
    dom: DomId,
    /// Persistent grants (capacity 0 when not negotiated).
    cache: GrantCache,
    /// Where each segment's page is in the window.
    pages: Vec<SegPage>,
    /// Window page of the transient range's page 0.
    kva_base: WindowPage,
    /// Grant handle of each transient page.
    handles: Vec<GrantHandle>,
    map_ops: Vec<GrantMapOp>,
    /// The segment (an index of the queue's segment array) each map op
    /// is for.
    map_segs: Vec<usize>,
    map_results: Vec<MapResult>,
    unmap_ops: Vec<GrantUnmapOp>,
    purged: Vec<(WindowPage, GrantHandle)>,
    /// Sorted copy of one request's grant references (duplicate check).
    sorted: Vec<GrantRef>,
}

impl QueueGrants {
    /// Everything a queue of `shape` needs, allocated now.
    pub fn try_new(shape: &GrantShape) -> Result<QueueGrants, NoMemory> {
        let cache = GrantCache::try_new(shape.cache_pages, shape.kva_base.add(shape.kva_pages))
            .map_err(|_| NoMemory)?;
        let persistent = shape.cache_pages > 0;
        Ok(QueueGrants {
            dom: shape.dom,
            cache,
            pages: try_vec(shape.segments, SegPage::Unassigned)?,
            kva_base: shape.kva_base,
            handles: try_vec(shape.kva_pages as usize, GrantHandle::default())?,
            map_ops: try_vec(
                shape.max_pages,
                GrantMapOp {
                    gref: 0,
                    window_page: WindowPage(0),
                    readonly: true,
                },
            )?,
            map_segs: try_vec(shape.max_pages, 0)?,
            map_results: try_vec(shape.max_pages, Err(GrantError::General))?,
            unmap_ops: try_vec(
                shape.max_pages,
                GrantUnmapOp {
                    window_page: WindowPage(0),
                    handle: GrantHandle::default(),
                },
            )?,
            purged: try_vec(shape.max_pages, (WindowPage(0), GrantHandle::default()))?,
            sorted: try_vec(if persistent { shape.max_segs } else { 0 }, 0)?,
        })
    }

    /// Whether persistent grants were negotiated.
    pub fn persistent(&self) -> bool {
        self.cache.capacity() > 0
    }

    /// Where segment `i` (an index of the queue's segment array) is.
    pub fn page(&self, i: usize) -> SegPage {
        self.pages[i]
    }

    /// The window pages of segments `range`, `None` for one not mapped.
    pub fn mapped_pages(
        &self,
        range: Range<usize>,
    ) -> impl Iterator<Item = Option<WindowPage>> + '_ {
        self.pages[range].iter().map(|p| p.mapped())
    }

    /// Sets the gauge of mapped persistent grants, wherever their number
    /// may have changed (an entry made, evicted, forgotten or purged).
    fn gauge(&self, stats: &QueueCounters) {
        stats.set(Stat::PersistentGrantsMapped, u64::from(self.cache.len()));
    }

    /// Binds the segments `segs` (at `range` of the segment array) of a
    /// request being accepted to the persistent-grant cache: hits take
    /// their cached page, misses take a new entry (evicting, and
    /// unmapping, the least recently used one when full) or stay
    /// transient when every entry is in use. Returns what the request's
    /// reqlist will map for it; `None`, with nothing bound, when the
    /// request names a grant twice or one another request in flight holds.
    pub fn bind<H: QueueHost + ?Sized>(
        &mut self,
        host: &mut H,
        segs: &[Segment],
        range: Range<usize>,
        stats: &QueueCounters,
    ) -> Option<ToMap> {
        let n = segs.len();
        let sorted = self.sorted.get_mut(..n)?;
        // A grant named twice: only a request of two segments or more
        // can.
        if n > 1 {
            for (g, s) in sorted.iter_mut().zip(segs) {
                *g = s.gref;
            }
            sorted.sort_unstable();
            if sorted.windows(2).any(|w| w[0] == w[1]) {
                return None;
            }
        }
        let mut evicted = 0usize;
        let mut ok = true;
        let mut to_map = ToMap::default();
        let mut made = false;
        for (k, s) in segs.iter().enumerate() {
            let page = match self.cache.acquire(s.gref) {
                Lookup::Hit { page } => {
                    stats.inc(Stat::PersistentGrantHits);
                    SegPage::Cached(page)
                }
                Lookup::Busy => {
                    self.unbind(range.start..range.start + k);
                    ok = false;
                    break;
                }
                Lookup::Miss => match self.cache.insert(s.gref) {
                    Insert::New { page, evicted: e } => {
                        if let Some((p, h)) = e {
                            self.unmap_ops[evicted] = GrantUnmapOp {
                                window_page: p,
                                handle: h,
                            };
                            evicted += 1;
                        }
                        made = true;
                        to_map.pending += 1;
                        SegPage::Pending(page)
                    }
                    Insert::Full => {
                        to_map.transient += 1;
                        SegPage::Unassigned
                    }
                },
            };
            self.pages[range.start + k] = page;
        }
        if evicted > 0 {
            host.unmap_batch(&self.unmap_ops[..evicted]);
            stats.add(Stat::PersistentGrantsPurged, evicted as u64);
        }
        if made {
            self.gauge(stats);
        }
        ok.then_some(to_map)
    }

    /// Gives back the cache entries of segments `range` of a request that
    /// never started.
    pub fn unbind(&mut self, range: Range<usize>) {
        for sp in &mut self.pages[range] {
            if let SegPage::Cached(p) | SegPage::Pending(p) = *sp {
                self.cache.unacquire(p);
            }
            *sp = SegPage::Unassigned;
        }
    }

    /// How many segments of `ranges` need a transient page.
    pub fn transient_pages(&self, ranges: impl Iterator<Item = Range<usize>>) -> u32 {
        ranges
            .map(|r| {
                self.pages[r]
                    .iter()
                    .filter(|p| **p == SegPage::Unassigned)
                    .count() as u32
            })
            .sum()
    }

    /// The map plan of one reqlist, carried out as one batch: its unbound
    /// segments (of `ranges`, whose grants are in `segs`) take the
    /// transient pages from `first` (relative to the transient range) on,
    /// mapped read-only when `readonly`; its pending persistent entries are
    /// mapped writable (they serve reads and writes alike). Returns how
    /// many mappings failed; a failed segment is left unassigned. The
    /// reqlist's segments are walked once: each map op remembers its
    /// segment for the results.
    pub fn map<H: QueueHost + ?Sized>(
        &mut self,
        host: &mut H,
        ranges: impl Iterator<Item = Range<usize>>,
        segs: &[Segment],
        first: u32,
        readonly: bool,
        stats: &QueueCounters,
    ) -> u64 {
        let mut nops = 0usize;
        let mut next = first;
        for i in ranges.flatten() {
            let (page, ro) = match self.pages[i] {
                SegPage::Unassigned => {
                    let page = self.kva_base.add(next);
                    next += 1;
                    self.pages[i] = SegPage::Transient(page);
                    (page, readonly)
                }
                SegPage::Pending(page) => (page, false),
                SegPage::Transient(_) | SegPage::Cached(_) => continue,
            };
            self.map_ops[nops] = GrantMapOp {
                gref: segs[i].gref,
                window_page: page,
                readonly: ro,
            };
            self.map_segs[nops] = i;
            nops += 1;
        }
        if nops == 0 {
            return 0;
        }
        host.map_batch(
            self.dom,
            &self.map_ops[..nops],
            &mut self.map_results[..nops],
        );
        let mut failed = 0u64;
        let mut forgot = false;
        for (&i, res) in self.map_segs[..nops].iter().zip(&self.map_results[..nops]) {
            match (self.pages[i], *res) {
                (SegPage::Transient(p), Ok(h)) => {
                    if let Some(slot) = p
                        .offset_from(self.kva_base)
                        .and_then(|k| self.handles.get_mut(k as usize))
                    {
                        *slot = h;
                    }
                }
                (SegPage::Pending(p), Ok(h)) => {
                    self.cache.set_mapped(p, h);
                    self.pages[i] = SegPage::Cached(p);
                }
                (SegPage::Pending(p), Err(_)) => {
                    self.cache.forget(p);
                    self.pages[i] = SegPage::Unassigned;
                    failed += 1;
                    forgot = true;
                }
                _ => {
                    self.pages[i] = SegPage::Unassigned;
                    failed += 1;
                }
            }
        }
        if forgot {
            self.gauge(stats);
        }
        failed
    }

    /// The release plan of one reqlist's segments (`ranges`, one per
    /// request): unmaps its transient grants in one batch and gives back
    /// its persistent ones.
    pub fn release<H: QueueHost + ?Sized>(
        &mut self,
        host: &mut H,
        ranges: impl Iterator<Item = Range<usize>>,
        stats: &QueueCounters,
    ) {
        let mut nun = 0usize;
        let mut now = None;
        let mut forgot = false;
        for i in ranges.flatten() {
            match self.pages[i] {
                SegPage::Transient(p) => {
                    let k = p.offset_from(self.kva_base);
                    if let Some(h) = k.and_then(|k| self.handles.get(k as usize)) {
                        self.unmap_ops[nun] = GrantUnmapOp {
                            window_page: p,
                            handle: *h,
                        };
                        nun += 1;
                    }
                }
                SegPage::Cached(p) => {
                    let t = *now.get_or_insert_with(|| host.now_ms());
                    self.cache.release(p, t);
                }
                SegPage::Pending(p) => {
                    self.cache.unacquire(p);
                    forgot = true;
                }
                SegPage::Unassigned => {}
            }
            self.pages[i] = SegPage::Unassigned;
        }
        if nun > 0 {
            host.unmap_batch(&self.unmap_ops[..nun]);
        }
        if forgot {
            self.gauge(stats);
        }
    }

    /// Unmaps persistent grants unused for `idle_ms`. Called after every
    /// run and completion: whether anything is unheld is decided inline.
    #[inline(always)]
    pub fn purge_idle<H: QueueHost + ?Sized>(
        &mut self,
        host: &mut H,
        idle_ms: u64,
        stats: &QueueCounters,
    ) {
        // The LRU list is ordered by last use: nothing is idle before its
        // head is, and the clock is not read while nothing is unheld.
        if let Some(oldest) = self.cache.oldest_use_ms() {
            self.purge_idle_since(host, oldest, idle_ms, stats);
        }
    }

    /// [`purge_idle`](Self::purge_idle) when the least recently used
    /// unheld entry was last used at `oldest`.
    fn purge_idle_since<H: QueueHost + ?Sized>(
        &mut self,
        host: &mut H,
        oldest: u64,
        idle_ms: u64,
        stats: &QueueCounters,
    ) {
        let now = host.now_ms();
        if now.saturating_sub(oldest) < idle_ms {
            return;
        }
        loop {
            let n = self.cache.purge_idle(now, idle_ms, &mut self.purged);
            self.unmap_purged(host, n, stats);
            if n < self.purged.len() {
                break;
            }
        }
    }

    /// Unmaps every persistent grant (disconnect; nothing is in flight).
    pub fn drain<H: QueueHost + ?Sized>(&mut self, host: &mut H, stats: &QueueCounters) {
        loop {
            let n = self.cache.drain(&mut self.purged);
            if n == 0 {
                break;
            }
            self.unmap_purged(host, n, stats);
        }
    }

    fn unmap_purged<H: QueueHost + ?Sized>(
        &mut self,
        host: &mut H,
        n: usize,
        stats: &QueueCounters,
    ) {
        if n == 0 {
            return;
        }
        for (op, (page, handle)) in self.unmap_ops.iter_mut().zip(&self.purged[..n]) {
            *op = GrantUnmapOp {
                window_page: *page,
                handle: *handle,
            };
        }
        host.unmap_batch(&self.unmap_ops[..n]);
        stats.add(Stat::PersistentGrantsPurged, n as u64);
        self.gauge(stats);
    }
}
