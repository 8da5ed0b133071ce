//! Crash consistency from the guest's side: what a front-end may count on
//! after its disk lost power, and the check that it got it.
//!
//! `io/blkif.h` gives a front-end two ways to make writes durable on a
//! disk with a volatile write cache (`feature-flush-cache`,
//! `feature-barrier`) and no FUA:
//!
//! - `BLKIF_OP_FLUSH_DISKCACHE`: once it completes, every write whose
//!   response came before the flush was issued is on the medium. Writes
//!   answered while it ran may or may not be.
//! - `BLKIF_OP_WRITE_BARRIER`: the requests of its ring issued before it
//!   complete before it, the requests after it start after it, and once it
//!   completes it and everything before it is on the medium (the core
//!   makes it drain, flush, data, flush).
//!
//! A [`Journal`] records, in the order the front-end saw them, every write,
//! flush and barrier it made visible on a ring and every response. After
//! a cut, the front-end reads its region back ([`read_region`]) and
//! [`Journal::check`] holds what it found against what was promised:
//!
//! 1. no sector holds anything that was never written to it (every
//!    written sector carries [`sector_pattern`], naming its sector and the
//!    write's generation);
//! 2. a sector holds its last durable write or a later one (or, when no
//!    write to it is durable, what it held before the round or any write
//!    of the round): a durable write is one answered before a flush or
//!    barrier that completed was issued, a completed barrier, or a write
//!    of a completed barrier's ring issued before it;
//! 3. a barrier's order held: when any write issued after a barrier on its
//!    ring is on the medium, the barrier (unless it failed) and every
//!    successful write issued before it on that ring are on the medium (or
//!    overwritten by later writes).
//!
//! A sector is the 512-byte unit of `sector_number`; a disk writes whole
//! logical sectors atomically, so a write may be torn between them, which
//! the per-sector rules allow.
//!
//! [`run_crash_writes`] is the front-end that fills the journal: writes of
//! one pattern each at random places of its region, never two in flight
//! over the same sector, with flushes or barriers as its [`SyncMode`]
//! says, until the disk stops answering (the first error response) or its
//! writes are done.

use std::fmt;

use super::workload::splitmix;
use super::*;

/// How a crash workload makes its writes durable.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SyncMode {
    /// A `BLKIF_OP_FLUSH_DISKCACHE` after every `every` writes, while
    /// writes keep flowing: how a front-end without barriers emulates FUA
    /// (write, then flush), as Linux's `xen-blkfront` does.
    Flush,
    /// Every `every`-th write is a `BLKIF_OP_WRITE_BARRIER` carrying its
    /// data: a journal's commit record.
    Barrier,
    /// Neither: a front-end that assumes its disk writes through. Nothing
    /// is durable; the check is that nothing was invented.
    None,
}

impl SyncMode {
    /// `flush`, `barrier` or `none`.
    pub fn name(self) -> &'static str {
        match self {
            SyncMode::Flush => "flush",
            SyncMode::Barrier => "barrier",
            SyncMode::None => "none",
        }
    }
}

/// A crash workload for [`run_crash_writes`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CrashWorkload {
    /// Writes to issue (fewer when the disk stops answering).
    pub ops: u64,
    /// 512-byte sectors per write: rounded up to the medium's logical
    /// sector, at most the profile's inline segments.
    pub io_sectors: u64,
    /// Flushes, barriers or neither.
    pub sync: SyncMode,
    /// A flush after, or a barrier as, every `every`-th write (at least 1).
    pub every: u32,
    /// `(first sector, sectors)` the writes stay in: the journal's region.
    pub region_sectors: (u64, u64),
    /// Seed of the places written.
    pub seed: u64,
}

/// What a sector held when read back.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Found {
    /// All zero: never written (or discarded).
    Zero,
    /// [`sector_pattern`] of this sector, generation `n`.
    Gen(u64),
    /// Anything else: bytes no write put there.
    Garbage,
}

impl Found {
    /// What the 512 bytes of `sector` are.
    pub fn decode(sector: u64, bytes: &[u8; SECTOR]) -> Found {
        if bytes.iter().all(|&b| b == 0) {
            return Found::Zero;
        }
        let mut word = [0u8; 8];
        word.copy_from_slice(&bytes[..8]);
        let at = u64::from_le_bytes(word);
        word.copy_from_slice(&bytes[8..16]);
        let gen = u64::from_le_bytes(word);
        if at != sector || gen == 0 {
            return Found::Garbage;
        }
        let mut want = [0u8; SECTOR];
        sector_pattern(sector, gen, &mut want);
        if &want == bytes {
            Found::Gen(gen)
        } else {
            Found::Garbage
        }
    }
}

impl fmt::Display for Found {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Found::Zero => f.write_str("zeros"),
            Found::Gen(g) => write!(f, "generation {g}"),
            Found::Garbage => f.write_str("bytes no write put there"),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Write,
    Barrier,
    Flush,
}

/// One request the front-end made visible.
#[derive(Clone, Copy, Debug)]
struct Entry {
    kind: Kind,
    queue: usize,
    sector: u64,
    nsect: u64,
    gen: u64,
    /// When it was made visible (the journal's clock).
    issued: u64,
    /// When its response came, and whether it said `BLKIF_RSP_OKAY`.
    answered: Option<(u64, bool)>,
}

impl Entry {
    fn ok(&self) -> bool {
        matches!(self.answered, Some((_, true)))
    }

    fn carries_data(&self) -> bool {
        self.kind != Kind::Flush
    }
}

/// The outcome of [`Journal::check`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CrashCheck {
    /// Sectors of the region compared.
    pub sectors: u64,
    /// Writes (barriers included) of the round.
    pub writes: u64,
    /// Of those, the ones that had to be on the medium.
    pub durable: u64,
    /// Barriers whose order was checked (a later write of their ring was
    /// on the medium).
    pub barriers_checked: u64,
    /// Rules broken, counted per sector (per write for barrier order).
    pub violations: u64,
    /// The first few, described.
    pub first: Vec<String>,
}

/// How many violations a [`CrashCheck`] describes.
const DESCRIBED: usize = 8;

impl CrashCheck {
    fn violation(&mut self, what: impl FnOnce() -> String) {
        self.violations += 1;
        if self.first.len() < DESCRIBED {
            self.first.push(what());
        }
    }
}

/// What a front-end wrote to its region since the last power cut, what
/// the back-end answered, and what the region held before: see the
/// module documentation.
#[derive(Clone, Debug)]
pub struct Journal {
    region: (u64, u64),
    /// What each sector of the region held when the round started.
    base: Vec<Found>,
    entries: Vec<Entry>,
    clock: u64,
    next_gen: u64,
}

/// Generations of crash writes start here, far from those of ordinary
/// workloads (which count from 1), so a sector a workload wrote before is
/// never taken for a crash write.
const FIRST_GEN: u64 = 1 << 40;

impl Journal {
    /// A journal of the `(first sector, sectors)` region, which holds
    /// zeros (a fresh sparse image).
    pub fn new(region: (u64, u64)) -> Journal {
        Journal::with_base(region, std::vec![Found::Zero; region.1 as usize])
    }

    /// A journal of a region that holds `base` (one entry per sector).
    pub fn with_base(region: (u64, u64), base: Vec<Found>) -> Journal {
        Journal {
            region,
            base,
            entries: Vec::new(),
            clock: 0,
            next_gen: FIRST_GEN,
        }
    }

    /// The region, `(first sector, sectors)`.
    pub fn region(&self) -> (u64, u64) {
        self.region
    }

    /// A new round after a cut: the region holds `found` (as read back);
    /// the requests of the last round are forgotten, generations go on.
    pub fn next_round(&mut self, found: Vec<Found>) {
        self.base = found;
        self.entries.clear();
    }

    /// Records a write (a barrier when `barrier`) of `nsect` sectors at
    /// `sector` made visible on `queue`; returns its entry and the
    /// generation its data must carry.
    pub fn write(&mut self, queue: usize, sector: u64, nsect: u64, barrier: bool) -> (usize, u64) {
        let gen = self.next_gen;
        self.next_gen += 1;
        let kind = if barrier { Kind::Barrier } else { Kind::Write };
        (self.push(kind, queue, sector, nsect, gen), gen)
    }

    /// Records a flush made visible on `queue`; returns its entry.
    pub fn flush(&mut self, queue: usize) -> usize {
        self.push(Kind::Flush, queue, 0, 0, 0)
    }

    fn push(&mut self, kind: Kind, queue: usize, sector: u64, nsect: u64, gen: u64) -> usize {
        self.clock += 1;
        self.entries.push(Entry {
            kind,
            queue,
            sector,
            nsect,
            gen,
            issued: self.clock,
            answered: None,
        });
        self.entries.len() - 1
    }

    /// Records the response to entry `e`.
    pub fn answered(&mut self, e: usize, ok: bool) {
        self.clock += 1;
        if let Some(x) = self.entries.get_mut(e) {
            x.answered = Some((self.clock, ok));
        }
    }

    /// Requests recorded this round, and of them those answered.
    pub fn counts(&self) -> (u64, u64) {
        let answered = self.entries.iter().filter(|e| e.answered.is_some());
        (self.entries.len() as u64, answered.count() as u64)
    }

    /// Which entries had to be on the medium (rule 2).
    fn durable(&self) -> Vec<bool> {
        let mut durable = std::vec![false; self.entries.len()];
        // The latest issue of a completed flush or barrier covers every
        // write answered before it.
        let last_sync = self
            .entries
            .iter()
            .filter(|e| e.kind != Kind::Write && e.ok())
            .map(|e| e.issued)
            .max();
        for (d, e) in durable.iter_mut().zip(&self.entries) {
            if let (Some(sync), Some((at, true))) = (last_sync, e.answered) {
                *d = e.carries_data() && at < sync;
            }
        }
        // A completed barrier, and every successful write of its ring
        // issued before it: the barrier waited for them.
        for b in self
            .entries
            .iter()
            .filter(|e| e.kind == Kind::Barrier && e.ok())
        {
            for (d, e) in durable.iter_mut().zip(&self.entries) {
                let before = e.queue == b.queue && e.issued <= b.issued;
                if e.carries_data() && e.ok() && before {
                    *d = true;
                }
            }
        }
        durable
    }

    /// Checks what the region holds after a cut (`found`, one entry per
    /// sector, as [`read_region`] reads it) against the journal.
    pub fn check(&self, found: &[Found]) -> CrashCheck {
        let (r0, rlen) = self.region;
        let mut c = CrashCheck {
            sectors: rlen,
            writes: self.entries.iter().filter(|e| e.carries_data()).count() as u64,
            ..CrashCheck::default()
        };
        if found.len() as u64 != rlen {
            c.violation(|| format!("{} sectors read back, not {rlen}", found.len()));
            return c;
        }
        let durable = self.durable();
        c.durable = durable.iter().filter(|&&d| d).count() as u64;
        // The writes of each sector, in the order they were issued (no two
        // were in flight at once, so also the order they completed).
        let mut by_sector: HashMap<u64, Vec<usize>> = HashMap::new();
        for (i, e) in self.entries.iter().enumerate() {
            if e.carries_data() {
                for s in e.sector..e.sector + e.nsect {
                    by_sector.entry(s).or_default().push(i);
                }
            }
        }
        let none: Vec<usize> = Vec::new();
        let (entries, base) = (&self.entries, &self.base);
        // Rules 1 and 2.
        for (off, &f) in found.iter().enumerate() {
            let s = r0 + off as u64;
            let ws = by_sector.get(&s).unwrap_or(&none);
            let floor = ws.iter().rposition(|&i| durable[i]);
            let from = floor.unwrap_or(0);
            let ok = match f {
                // What the sector held (a sector found wrong in an earlier
                // round was reported then).
                _ if floor.is_none() && f == base[off] => true,
                Found::Garbage | Found::Zero => false,
                Found::Gen(g) => ws[from..].iter().any(|&i| entries[i].gen == g),
            };
            if !ok {
                c.violation(|| match floor {
                    Some(k) => {
                        let e = &entries[ws[k]];
                        format!(
                            "sector {s}: holds {f}, but the write of generation {} ({} sector(s) \
                             at {}, queue {}) had been made durable and nothing later written \
                             there holds that",
                            e.gen, e.nsect, e.sector, e.queue
                        )
                    }
                    None => format!(
                        "sector {s}: holds {f}; it held {} and then {} write(s) of the round",
                        base[off],
                        ws.len()
                    ),
                });
            }
        }
        // Rule 3.
        let holds =
            |s: u64, g: u64| s >= r0 && s - r0 < rlen && found[(s - r0) as usize] == Found::Gen(g);
        // Whether entry `w` is on the medium or overwritten there by a
        // write issued after it.
        let kept = |w: &Entry| {
            (w.sector..w.sector + w.nsect).all(|s| {
                let later = by_sector.get(&s).unwrap_or(&none);
                later
                    .iter()
                    .any(|&i| entries[i].issued >= w.issued && holds(s, entries[i].gen))
            })
        };
        for b in entries.iter().filter(|e| e.kind == Kind::Barrier) {
            if matches!(b.answered, Some((_, false))) {
                continue;
            }
            let after = entries.iter().find(|e| {
                e.carries_data()
                    && e.queue == b.queue
                    && e.issued > b.issued
                    && (e.sector..e.sector + e.nsect).any(|s| holds(s, e.gen))
            });
            let Some(after) = after else {
                continue;
            };
            c.barriers_checked += 1;
            for w in entries
                .iter()
                .filter(|e| e.carries_data() && e.queue == b.queue && e.issued <= b.issued)
            {
                if (w.ok() || w.issued == b.issued) && !kept(w) {
                    c.violation(|| {
                        format!(
                            "barrier order: the write of generation {} (after the barrier of \
                             generation {} on queue {}) is on the medium, but the write of \
                             generation {} ({} sector(s) at {}) before it is not",
                            after.gen, b.gen, b.queue, w.gen, w.nsect, w.sector
                        )
                    });
                }
            }
        }
        c
    }
}

/// What [`run_crash_writes`] did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CrashRound {
    /// Writes (barriers included) made visible.
    pub writes: u64,
    /// Flushes made visible.
    pub flushes: u64,
    /// Requests answered `BLKIF_RSP_OKAY`.
    pub okay: u64,
    /// Requests answered with an error (the disk stopped answering).
    pub failed: u64,
    /// Requests never answered: the back-end closed the connection with
    /// them on the ring.
    pub unanswered: u64,
    /// Bytes written successfully.
    pub bytes_written: u64,
}

/// A crash workload's request in flight.
struct CrashInFlight {
    entry: usize,
    queue: usize,
    sector: u64,
    nsect: u64,
    pages: Vec<Page>,
}

/// Requests in flight over every queue of a front-end, at most the
/// profile's queue depth (and the ring's size) per queue: the crash writes'
/// and the read-back's.
struct Pipeline {
    inflight: HashMap<u64, CrashInFlight>,
    per_queue: Vec<usize>,
    /// Queues pushed to since the last publish.
    touched: Vec<bool>,
    next_q: usize,
    depth: usize,
}

impl Pipeline {
    fn new(fe: &Frontend) -> Pipeline {
        let nq = fe.nqueues().max(1);
        Pipeline {
            inflight: HashMap::new(),
            per_queue: std::vec![0; nq],
            touched: std::vec![false; nq],
            next_q: 0,
            depth: (fe.profile.queue_depth.max(1) as usize).min(fe.info.ring_size.max(1) as usize),
        }
    }

    /// The next queue in turn with room for one more request: under the
    /// depth and with a free slot on its ring; `None` when every queue is
    /// full.
    fn queue(&self, fe: &mut Frontend) -> Option<usize> {
        let nq = self.per_queue.len();
        if self.inflight.len() >= self.depth * nq {
            return None;
        }
        (0..nq).map(|k| (self.next_q + k) % nq).find(|&q| {
            self.per_queue[q] < self.depth && fe.ring_q(q).is_ok_and(|r| r.free_slots() > 0)
        })
    }

    /// Puts `req` on the ring of queue `r.queue` (not yet published); on a
    /// full ring its pages are given back.
    fn push(
        &mut self,
        fe: &mut Frontend,
        req: &BlkifRequest,
        r: CrashInFlight,
    ) -> Result<(), FrontendError> {
        let q = r.queue;
        if !fe.ring_q(q)?.push_request(req) {
            for p in r.pages {
                fe.release_page(p)?;
            }
            return Err(FrontendError::RingFull);
        }
        self.inflight.insert(req.id, r);
        self.per_queue[q] += 1;
        self.touched[q] = true;
        self.next_q = (q + 1) % self.per_queue.len();
        Ok(())
    }

    /// Publishes and kicks every queue pushed to since the last time.
    fn publish(&mut self, fe: &mut Frontend) -> Result<(), FrontendError> {
        for (q, t) in self.touched.iter_mut().enumerate() {
            if std::mem::take(t) {
                fe.publish_and_kick_q(q)?;
            }
        }
        Ok(())
    }

    /// Takes every response on every ring, each of which must answer a
    /// request in flight on its queue, and hands it to `answered`; whether
    /// any came.
    fn take(
        &mut self,
        fe: &mut Frontend,
        mut answered: impl FnMut(
            &mut Frontend,
            &BlkifResponse,
            CrashInFlight,
        ) -> Result<(), FrontendError>,
    ) -> Result<bool, FrontendError> {
        let mut got = false;
        for q in 0..self.per_queue.len() {
            while let Some(rsp) = take_checked(fe.ring_q(q)?, q)? {
                got = true;
                let r = match self.inflight.get(&rsp.id) {
                    Some(r) if r.queue == q => self.inflight.remove(&rsp.id),
                    _ => None,
                };
                let r = r.ok_or(FrontendError::UnknownResponse { id: rsp.id })?;
                self.per_queue[q] -= 1;
                answered(fe, &rsp, r)?;
            }
        }
        Ok(got)
    }
}

/// Grants the data pages of a request of `nsect` sectors (`readonly` for a
/// write), each filled by `fill(fe, page, its first sector's index in the
/// request, its sectors)`: the pages and their segments.
fn request_pages(
    fe: &mut Frontend,
    nsect: u64,
    readonly: bool,
    mut fill: impl FnMut(&mut Frontend, Page, u64, u64) -> Result<(), FrontendError>,
) -> Result<(Vec<Page>, Vec<Segment>), FrontendError> {
    let mut pages = Vec::new();
    let mut segs = Vec::new();
    let mut done = 0;
    while done < nsect {
        let n = (nsect - done).min(SECTORS_PER_PAGE);
        let page = fe.data_page(readonly)?;
        fill(fe, page, done, n)?;
        pages.push(page);
        segs.push(Segment {
            gref: page.gref,
            first_sect: 0,
            last_sect: (n - 1) as u8,
        });
        done += n;
    }
    Ok((pages, segs))
}

/// Where [`run_crash_writes`] writes: `nsect`-sector writes at `slots`
/// places `align` sectors apart from sector `start`.
struct CrashPlaces {
    start: u64,
    align: u64,
    nsect: u64,
    slots: u64,
}

impl CrashPlaces {
    /// The places of `wl` on the connected, otherwise idle front-end `fe`,
    /// once the back-end offers what `wl` needs and `j` is of its region.
    fn of(fe: &Frontend, wl: &CrashWorkload, j: &Journal) -> Result<CrashPlaces, FrontendError> {
        fe.check_idle()?;
        let info = &fe.info;
        match wl.sync {
            SyncMode::Flush if !info.flush => {
                return Err(FrontendError::Invalid(
                    "the back-end does not offer feature-flush-cache".into(),
                ))
            }
            SyncMode::Barrier if !info.barrier => {
                return Err(FrontendError::Invalid(
                    "the back-end does not offer feature-barrier".into(),
                ))
            }
            _ => {}
        }
        if j.region() != wl.region_sectors {
            return Err(FrontendError::Invalid(
                "the journal is of another region".into(),
            ));
        }
        let align = (u64::from(info.sector_size.max(512)) / 512).max(1);
        let max_sect = u64::from(fe.profile.max_segments) * SECTORS_PER_PAGE;
        let nsect = wl.io_sectors.max(1).div_ceil(align) * align;
        if nsect > max_sect {
            return Err(FrontendError::Invalid(format!(
                "writes of {nsect} sectors do not fit {} inline segments",
                fe.profile.max_segments
            )));
        }
        let (r0, rlen) = wl.region_sectors;
        let start = r0.div_ceil(align) * align;
        let end = r0 + rlen;
        if end > info.sectors || end < start + nsect {
            return Err(FrontendError::Invalid(
                "region beyond the medium or smaller than one write".into(),
            ));
        }
        Ok(CrashPlaces {
            start,
            align,
            nsect,
            slots: (end - start - nsect) / align + 1,
        })
    }

    /// A random place no write in flight touches (a few tries).
    fn pick(&self, rng: &mut u64, inflight: &HashMap<u64, CrashInFlight>) -> Option<u64> {
        (0..8)
            .map(|_| self.start + splitmix(rng) % self.slots * self.align)
            .find(|&s| {
                inflight
                    .values()
                    .all(|r| r.nsect == 0 || s + self.nsect <= r.sector || r.sector + r.nsect <= s)
            })
    }
}

/// [`run_crash_writes`] under way.
struct CrashWriter<'a> {
    wl: &'a CrashWorkload,
    places: CrashPlaces,
    rng: u64,
    round: CrashRound,
    issued: u64,
    since_sync: u64,
    /// The disk stopped answering (or the back-end left Connected): no
    /// more writes.
    stopped: bool,
}

impl CrashWriter<'_> {
    /// Issues flushes and writes while the pipeline has room.
    fn issue(
        &mut self,
        fe: &mut Frontend,
        p: &mut Pipeline,
        j: &mut Journal,
    ) -> Result<(), FrontendError> {
        let every = u64::from(self.wl.every.max(1));
        while !self.stopped && self.issued < self.wl.ops {
            let Some(queue) = p.queue(fe) else {
                break;
            };
            if self.wl.sync == SyncMode::Flush && self.since_sync >= every {
                let req = BlkifRequest::rw(BLKIF_OP_FLUSH_DISKCACHE, fe.new_id(), 0, &[]);
                let entry = j.flush(queue);
                let r = CrashInFlight {
                    entry,
                    queue,
                    sector: 0,
                    nsect: 0,
                    pages: Vec::new(),
                };
                p.push(fe, &req, r)?;
                self.round.flushes += 1;
                self.since_sync = 0;
                continue;
            }
            let Some(sector) = self.places.pick(&mut self.rng, &p.inflight) else {
                break;
            };
            let barrier = self.wl.sync == SyncMode::Barrier && self.since_sync + 1 >= every;
            let nsect = self.places.nsect;
            let (entry, gen) = j.write(queue, sector, nsect, barrier);
            let mut buf = [0u8; SECTOR];
            let (pages, segs) = request_pages(fe, nsect, true, |fe, page, first, n| {
                for k in 0..n {
                    sector_pattern(sector + first + k, gen, &mut buf);
                    fe.guest
                        .memory
                        .write(page.gfn, k as usize * SECTOR, &buf)
                        .map_err(|e| FrontendError::Os(format!("{e:?}")))?;
                }
                Ok(())
            })?;
            let op = if barrier {
                BLKIF_OP_WRITE_BARRIER
            } else {
                BLKIF_OP_WRITE
            };
            let req = BlkifRequest::rw(op, fe.new_id(), sector, &segs);
            let r = CrashInFlight {
                entry,
                queue,
                sector,
                nsect,
                pages,
            };
            p.push(fe, &req, r)?;
            self.issued += 1;
            self.round.writes += 1;
            self.since_sync = if barrier { 0 } else { self.since_sync + 1 };
        }
        p.publish(fe)
    }

    /// Takes what came, waiting (bounded) when nothing did; `false` once
    /// the back-end left Connected (it has answered all it will: the
    /// requests still in flight stay unanswered, their pages orphaned).
    fn collect(
        &mut self,
        fe: &mut Frontend,
        p: &mut Pipeline,
        j: &mut Journal,
    ) -> Result<bool, FrontendError> {
        let deadline = Instant::now() + fe.hang_guard;
        loop {
            let round = &mut self.round;
            let stopped = &mut self.stopped;
            let got = p.take(fe, |fe, rsp, r| {
                let ok = rsp.status == BLKIF_RSP_OKAY;
                j.answered(r.entry, ok);
                if ok {
                    round.okay += 1;
                    round.bytes_written += r.nsect * SECTOR as u64;
                } else {
                    round.failed += 1;
                    *stopped = true;
                }
                for page in r.pages {
                    fe.release_page(page)?;
                }
                Ok(())
            })?;
            if got {
                return Ok(true);
            }
            if fe.backend_state() != XenbusState::Connected {
                self.stopped = true;
                // Anything it published before it closed is on the ring.
                if fe.final_check_all()? {
                    continue;
                }
                self.round.unanswered = p.inflight.len() as u64;
                for (_, r) in p.inflight.drain() {
                    fe.orphans.extend(r.pages);
                }
                return Ok(false);
            }
            // Wake on an event, and look at the back-end's state at least
            // every 50 ms.
            let wake = (Instant::now() + Duration::from_millis(50)).min(deadline);
            if !fe.await_event(deadline, wake)? {
                return Err(FrontendError::Timeout {
                    what: format!(
                        "responses to {} crash-workload request(s) (back-end {:?})",
                        p.inflight.len(),
                        fe.backend_state()
                    ),
                });
            }
        }
    }
}

/// Runs `wl` on a connected front-end, recording everything in `j` (whose
/// region is `wl.region_sectors`): keeps the profile's queue depth of
/// writes in flight over every queue, each one write of its own pattern;
/// stops at the first error response (the disk lost power) or when every
/// write is answered, then waits until every request is answered or the
/// back-end left Connected (it answers no more). Requests left unanswered
/// keep their pages until the front-end disconnects.
pub fn run_crash_writes(
    fe: &mut Frontend,
    wl: &CrashWorkload,
    j: &mut Journal,
) -> Result<CrashRound, FrontendError> {
    let mut w = CrashWriter {
        wl,
        places: CrashPlaces::of(fe, wl, j)?,
        rng: wl.seed ^ 0xC4A5_4C0D_E5EE_D5ED,
        round: CrashRound::default(),
        issued: 0,
        since_sync: 0,
        stopped: false,
    };
    let mut p = Pipeline::new(fe);
    loop {
        w.issue(fe, &mut p, j)?;
        if p.inflight.is_empty() && (w.stopped || w.issued >= wl.ops) {
            break;
        }
        if !w.collect(fe, &mut p, j)? {
            break;
        }
    }
    Ok(w.round)
}

/// Reads the `(first sector, sectors)` region back on a connected
/// front-end, the profile's queue depth of reads in flight over every
/// queue, and says what each sector holds. An error response is an error
/// (`Invalid`, naming the sector).
pub fn read_region(fe: &mut Frontend, region: (u64, u64)) -> Result<Vec<Found>, FrontendError> {
    if fe.conn.is_none() {
        return Err(FrontendError::NotConnected);
    }
    let info = &fe.info;
    let (r0, rlen) = region;
    if r0.checked_add(rlen).is_none_or(|e| e > info.sectors) {
        return Err(FrontendError::Invalid("region beyond the medium".into()));
    }
    let align = (u64::from(info.sector_size.max(512)) / 512).max(1);
    if r0 % align != 0 || rlen % align != 0 {
        return Err(FrontendError::Invalid(
            "region not aligned to the logical sector".into(),
        ));
    }
    let chunk = u64::from(fe.profile.max_segments) * SECTORS_PER_PAGE;
    let mut out = std::vec![Found::Garbage; rlen as usize];
    let mut p = Pipeline::new(fe);
    let mut next = r0;
    while next < r0 + rlen || !p.inflight.is_empty() {
        while next < r0 + rlen {
            let Some(queue) = p.queue(fe) else {
                break;
            };
            let n = (r0 + rlen - next).min(chunk);
            let (pages, segs) = request_pages(fe, n, false, |fe, page, _, _| {
                // Stale bytes must not pass for data.
                fe.guest
                    .memory
                    .fill(page.gfn, 0, PAGE_SIZE, 0xA5)
                    .map_err(|e| FrontendError::Os(format!("{e:?}")))
            })?;
            let req = BlkifRequest::rw(BLKIF_OP_READ, fe.new_id(), next, &segs);
            let r = CrashInFlight {
                entry: 0,
                queue,
                sector: next,
                nsect: n,
                pages,
            };
            p.push(fe, &req, r)?;
            next += n;
        }
        p.publish(fe)?;
        let deadline = Instant::now() + fe.hang_guard;
        while !p.inflight.is_empty() {
            if p.take(fe, |fe, rsp, r| read_back(fe, rsp, r, r0, &mut out))? {
                break;
            }
            if !fe.await_event(deadline, deadline)? {
                return Err(FrontendError::Timeout {
                    what: format!("{} read-back response(s)", p.inflight.len()),
                });
            }
        }
    }
    Ok(out)
}

/// What read-back request `r` found, answered by `rsp`, into `out` (the
/// region's sectors from `r0`); its pages are given back.
fn read_back(
    fe: &mut Frontend,
    rsp: &BlkifResponse,
    r: CrashInFlight,
    r0: u64,
    out: &mut [Found],
) -> Result<(), FrontendError> {
    if rsp.status != BLKIF_RSP_OKAY || rsp.operation != BLKIF_OP_READ {
        for p in r.pages {
            fe.release_page(p)?;
        }
        return Err(FrontendError::Invalid(format!(
            "reading {} sector(s) at {} back: status {}",
            r.nsect, r.sector, rsp.status
        )));
    }
    let mut bytes = [0u8; SECTOR];
    for k in 0..r.nsect {
        let page = r.pages[(k / SECTORS_PER_PAGE) as usize];
        let off = (k % SECTORS_PER_PAGE) as usize * SECTOR;
        fe.guest
            .memory
            .read(page.gfn, off, &mut bytes)
            .map_err(|e| FrontendError::Os(format!("{e:?}")))?;
        let s = r.sector + k;
        out[(s - r0) as usize] = Found::decode(s, &bytes);
    }
    for p in r.pages {
        fe.release_page(p)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A write of `n` sectors at `sector` on queue `q`, answered okay:
    /// its entry and generation.
    fn answered_write(j: &mut Journal, q: usize, sector: u64, n: u64) -> (usize, u64) {
        let (e, g) = j.write(q, sector, n, false);
        j.answered(e, true);
        (e, g)
    }

    fn gen_of(j: &Journal, e: usize) -> u64 {
        j.entries[e].gen
    }

    /// The region of the tests: sectors 0..16.
    const R: (u64, u64) = (0, 16);

    fn medium(cells: &[(u64, Found)]) -> Vec<Found> {
        let mut m = std::vec![Found::Zero; 16];
        for &(s, f) in cells {
            m[s as usize] = f;
        }
        m
    }

    fn fill(m: &mut [Found], sector: u64, n: u64, g: u64) {
        for s in sector..sector + n {
            m[s as usize] = Found::Gen(g);
        }
    }

    #[test]
    fn decode_tells_patterns_zeros_and_garbage_apart() {
        let mut b = [0u8; SECTOR];
        assert_eq!(Found::decode(7, &b), Found::Zero);
        sector_pattern(7, 99, &mut b);
        assert_eq!(Found::decode(7, &b), Found::Gen(99));
        // Another sector's data at this place.
        assert_eq!(Found::decode(8, &b), Found::Garbage);
        b[300] ^= 1;
        assert_eq!(Found::decode(7, &b), Found::Garbage);
    }

    #[test]
    fn flushed_writes_must_survive_and_unflushed_ones_may_go() {
        let mut j = Journal::new(R);
        let (a, _) = answered_write(&mut j, 0, 0, 4);
        let f = j.flush(0);
        let (b, _) = answered_write(&mut j, 0, 8, 4);
        j.answered(f, true);
        // a durable, b not: b may be lost, torn or kept.
        let mut m = medium(&[]);
        fill(&mut m, 0, 4, gen_of(&j, a));
        fill(&mut m, 8, 2, gen_of(&j, b));
        let c = j.check(&m);
        assert_eq!((c.violations, c.durable, c.writes), (0, 1, 2), "{c:?}");
        // a lost: caught, once per sector.
        m[1] = Found::Zero;
        m[2] = Found::Gen(gen_of(&j, b));
        let c = j.check(&m);
        assert_eq!(c.violations, 2, "{c:?}");
        assert!(c.first[0].contains("made durable"), "{c:?}");
    }

    #[test]
    fn a_write_answered_while_the_flush_ran_is_not_covered() {
        let mut j = Journal::new(R);
        let (a, _) = j.write(0, 0, 2, false);
        let f = j.flush(1);
        j.answered(a, true);
        j.answered(f, true);
        assert_eq!(j.check(&medium(&[])).violations, 0);
    }

    #[test]
    fn a_later_write_may_hide_a_durable_one_an_earlier_may_not() {
        let mut j = Journal::new(R);
        let (_, ga) = answered_write(&mut j, 0, 0, 1);
        let f = j.flush(0);
        j.answered(f, true);
        let (b, gb) = j.write(0, 0, 1, false);
        // b in flight at the cut, never answered: it may be there.
        assert_eq!(j.check(&medium(&[(0, Found::Gen(gb))])).violations, 0);
        assert_eq!(j.check(&medium(&[(0, Found::Gen(ga))])).violations, 0);
        j.answered(b, false);
        // The base (zeros) under a durable write: lost.
        assert_eq!(j.check(&medium(&[])).violations, 1);
        // Invented data is never allowed, nor another sector's.
        assert_eq!(j.check(&medium(&[(0, Found::Garbage)])).violations, 1);
        let elsewhere = medium(&[(0, Found::Gen(ga)), (5, Found::Gen(ga))]);
        assert_eq!(j.check(&elsewhere).violations, 1);
    }

    #[test]
    fn without_flushes_nothing_is_promised_but_nothing_invented() {
        let mut j = Journal::with_base(R, medium(&[(3, Found::Gen(5))]));
        let (_, ga) = answered_write(&mut j, 0, 2, 2);
        // The old content or the write, sector by sector.
        assert_eq!(j.check(&medium(&[(3, Found::Gen(5))])).violations, 0);
        assert_eq!(
            j.check(&medium(&[(2, Found::Gen(ga)), (3, Found::Gen(5))]))
                .violations,
            0
        );
        // Sector 3 lost its old content without being written over.
        assert_eq!(j.check(&medium(&[])).violations, 1);
        // An unwritten sector changed.
        assert_eq!(
            j.check(&medium(&[(3, Found::Gen(5)), (9, Found::Gen(ga))]))
                .violations,
            1
        );
    }

    #[test]
    fn a_barrier_makes_its_ring_durable_and_orders_what_follows() {
        let mut j = Journal::new(R);
        let (a, ga) = j.write(0, 0, 2, false);
        let (b, gb) = j.write(0, 4, 2, true);
        j.answered(a, true);
        j.answered(b, true);
        let mut m = medium(&[]);
        fill(&mut m, 0, 2, ga);
        fill(&mut m, 4, 2, gb);
        assert_eq!(j.check(&m).violations, 0);
        // a was in flight when the barrier was issued, answered after it:
        // the barrier waited for it, so it is durable.
        m[0] = Found::Zero;
        assert_eq!(j.check(&m).violations, 1);
    }

    #[test]
    fn barrier_order_an_unanswered_barrier_with_a_later_write_visible() {
        let mut j = Journal::new(R);
        let (_, ga) = answered_write(&mut j, 0, 0, 2);
        let (b, gb) = j.write(0, 4, 2, true);
        let (c, gc) = j.write(0, 8, 2, false);
        let _ = (b, c);
        // Nothing durable (the barrier never completed); the later write
        // visible without the barrier's data: the order broke.
        let mut m = medium(&[]);
        fill(&mut m, 8, 2, gc);
        let r = j.check(&m);
        assert!(r.violations >= 1 && r.barriers_checked == 1, "{r:?}");
        assert!(r.first[0].contains("barrier order"), "{r:?}");
        // With everything before it there, the order held.
        fill(&mut m, 0, 2, ga);
        fill(&mut m, 4, 2, gb);
        assert_eq!(j.check(&m).violations, 0);
        // Another ring's write is not ordered by it.
        let mut j = Journal::new(R);
        answered_write(&mut j, 0, 0, 2);
        j.write(0, 4, 2, true);
        let (_, gd) = j.write(1, 8, 2, false);
        let mut m = medium(&[]);
        fill(&mut m, 8, 2, gd);
        assert_eq!(j.check(&m).violations, 0);
    }

    #[test]
    fn the_next_round_starts_from_what_was_read() {
        let mut j = Journal::new(R);
        let (_, ga) = answered_write(&mut j, 0, 0, 1);
        let m = medium(&[(0, Found::Gen(ga))]);
        assert_eq!(j.check(&m).violations, 0);
        j.next_round(m.clone());
        assert_eq!(j.counts(), (0, 0));
        assert_eq!(j.check(&m).violations, 0);
        assert_eq!(j.check(&medium(&[])).violations, 1);
        let (_, gb) = j.write(0, 0, 1, false);
        assert!(gb > ga);
    }
}
