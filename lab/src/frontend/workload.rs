//! The workload engine: requests in flight on every queue, a deterministic
//! data pattern, every byte read checked against a shadow of the medium.

use super::*;
use std::sync::atomic::{AtomicBool, Ordering as AtomicOrdering};

// ---------------------------------------------------------------------------
// Data patterns
// ---------------------------------------------------------------------------

pub(super) fn splitmix(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// The content of 512-byte sector `sector` after its `gen`-th write (`gen`
/// 0: never written, all zero): the sector number and generation, then
/// pseudo-random bytes derived from both.
pub fn sector_pattern(sector: u64, gen: u64, out: &mut [u8; SECTOR]) {
    if gen == 0 {
        out.fill(0);
        return;
    }
    out[..8].copy_from_slice(&sector.to_le_bytes());
    out[8..16].copy_from_slice(&gen.to_le_bytes());
    let mut st = sector.wrapping_mul(0x100_0000_01B3) ^ gen.rotate_left(32);
    for chunk in out[16..].chunks_mut(8) {
        let v = splitmix(&mut st).to_le_bytes();
        chunk.copy_from_slice(&v[..chunk.len()]);
    }
}

// ---------------------------------------------------------------------------
// Workload
// ---------------------------------------------------------------------------

/// A workload for [`run_workload`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Workload {
    /// I/Os to issue.
    pub ops: u64,
    /// Bytes per I/O: a multiple of the medium's sector size (and of 512).
    pub io_size: u32,
    /// Random offsets (else sequential, wrapping around the region).
    pub random: bool,
    /// Percentage of reads (0..=100).
    pub read_pct: u8,
    /// The region `(first sector, sectors)` the I/O stays in; the whole
    /// medium when `None`.
    pub region_sectors: Option<(u64, u64)>,
    /// Seed of the offset and read/write choices.
    pub seed: u64,
    /// Read the whole touched range back at the end and check it.
    pub verify_all_at_end: bool,
}

impl Default for Workload {
    fn default() -> Self {
        Workload {
            ops: 256,
            io_size: 4096,
            random: true,
            read_pct: 50,
            region_sectors: None,
            seed: 1,
            verify_all_at_end: true,
        }
    }
}

/// What a workload did and found.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct WorkloadReport {
    /// Requests pushed on the rings (data, flush, barrier and discard;
    /// including the final verification reads).
    pub requests: u64,
    /// Read requests completed successfully.
    pub reads: u64,
    /// Write requests completed successfully.
    pub writes: u64,
    /// Flush and barrier requests completed successfully.
    pub flushes: u64,
    /// Discard requests completed successfully.
    pub discards: u64,
    /// Bytes read.
    pub bytes_read: u64,
    /// Bytes written.
    pub bytes_written: u64,
    /// Bytes discarded (by successful discards).
    pub bytes_discarded: u64,
    /// Bytes compared against the shadow.
    pub bytes_checked: u64,
    /// 512-byte sectors whose content differed from the shadow.
    pub mismatches: u64,
    /// Responses with a status other than `BLKIF_RSP_OKAY`.
    pub error_responses: u64,
    /// Requests sent as `BLKIF_OP_INDIRECT`.
    pub indirect_requests: u64,
    /// The largest number of segments one request carried.
    pub max_segments_seen: u32,
    /// Requests pushed on each queue, by queue index.
    pub requests_per_queue: Vec<u64>,
    /// Wall time (informational only, never asserted).
    pub elapsed: Duration,
    /// A description of the first mismatch, for diagnosis.
    pub first_mismatch: Option<String>,
}

/// A request the engine plans to push.
#[derive(Clone, Debug)]
struct Planned {
    operation: u8,
    sector: u64,
    nsect: u64,
    /// A discard's flag.
    flag: u8,
}

/// A workload request in flight.
#[derive(Debug)]
struct WlInFlight {
    queue: usize,
    /// The operation done (`indirect_op` of an indirect request).
    operation: u8,
    /// The operation on the wire.
    wire_op: u8,
    sector: u64,
    nsect: u64,
    gen: u64,
    pages: Vec<Page>,
    indirect: Vec<Page>,
}

/// Shadow value of a sector whose content is unknown (a failed write, a
/// discard: blkif does not promise zeroes after one).
const UNKNOWN: u64 = u64::MAX;

/// What a guest knows its disk holds, sector by sector, across
/// workloads: the generation each 512-byte sector was last written with
/// (absent: never written, zeros), or unknown (a failed write, a discard,
/// a write in flight when a workload failed). Workloads run with one
/// ([`run_workload_shadowed`]) check every read against all earlier
/// workloads' writes too, so one disk can serve workload after workload,
/// over reconnects, detach and attach and resizes, and be verified
/// throughout. Bounded by the disk's sectors.
#[derive(Clone, Debug, Default)]
pub struct Shadow {
    sectors: HashMap<u64, u64>,
    next_gen: u64,
}

impl Shadow {
    /// A disk that holds zeros.
    pub fn new() -> Shadow {
        Shadow::default()
    }

    /// A disk of `sectors` 512-byte sectors that holds zeros, with room
    /// for all of them made now: the shadow does not grow later (a soak
    /// holds the heap to its size at the first minute).
    pub fn for_sectors(sectors: u64) -> Shadow {
        let mut s = Shadow::default();
        let _ = s.sectors.try_reserve(usize::try_from(sectors).unwrap_or(0));
        s
    }

    /// Sectors whose content is known to be written data.
    pub fn known_written(&self) -> usize {
        self.sectors.values().filter(|&&g| g != UNKNOWN).count()
    }

    /// Forgets what lies at or beyond `sectors` (a medium shrunk there).
    pub fn truncate(&mut self, sectors: u64) {
        self.sectors.retain(|&s, _| s < sectors);
    }
}

/// Completed writes remembered as discard candidates.
const DISCARD_CANDIDATES: usize = 64;

/// Whether a request sent every `every` writes (0: never; only when the
/// back-end offers it) is due after the writes counted in `since`; resets
/// the count when it is.
fn due(since: &mut u32, every: u32, offered: bool) -> bool {
    if every == 0 || !offered || *since < every {
        return false;
    }
    *since = 0;
    true
}

struct Engine<'a> {
    fe: &'a mut Frontend,
    /// Requests kept in flight per queue.
    qd: usize,
    /// Pages (segments) per request.
    seg_limit: u64,
    inflight: HashMap<u64, WlInFlight>,
    per_queue: Vec<usize>,
    next_queue: usize,
    pending: std::collections::VecDeque<Planned>,
    shadow: HashMap<u64, u64>,
    next_gen: u64,
    writes_since_flush: u32,
    writes_since_barrier: u32,
    writes_since_discard: u32,
    discard_due: bool,
    recent_writes: std::collections::VecDeque<(u64, u64)>,
    report: WorkloadReport,
}

impl Engine<'_> {
    /// Requests kept in flight over all queues.
    fn total_qd(&self) -> usize {
        self.qd * self.per_queue.len().max(1)
    }

    fn overlaps(&self, sector: u64, nsect: u64) -> bool {
        let end = sector + nsect;
        self.inflight
            .values()
            .any(|r| r.nsect > 0 && r.sector < end && sector < r.sector + r.nsect)
            || self
                .pending
                .iter()
                .any(|r| r.nsect > 0 && r.sector < end && sector < r.sector + r.nsect)
    }

    /// Splits an I/O into requests of at most `seg_limit` pages.
    fn plan_io(&mut self, operation: u8, sector: u64, nsect: u64) {
        let per_req = self.seg_limit * SECTORS_PER_PAGE;
        let mut s = sector;
        let end = sector + nsect;
        while s < end {
            let n = (end - s).min(per_req);
            self.pending.push_back(Planned {
                operation,
                sector: s,
                nsect: n,
                flag: 0,
            });
            s += n;
            if operation == BLKIF_OP_WRITE {
                self.writes_since_flush += 1;
                self.writes_since_barrier += 1;
                self.writes_since_discard += 1;
                let (p, info) = (&self.fe.profile, &self.fe.info);
                let flush = due(&mut self.writes_since_flush, p.flush_every, info.flush);
                let barrier = due(
                    &mut self.writes_since_barrier,
                    p.barrier_every,
                    info.barrier,
                );
                self.discard_due |= due(
                    &mut self.writes_since_discard,
                    p.discard_every,
                    info.discard,
                );
                for (now, operation) in [
                    (flush, BLKIF_OP_FLUSH_DISKCACHE),
                    (barrier, BLKIF_OP_WRITE_BARRIER),
                ] {
                    if now {
                        self.pending.push_back(Planned {
                            operation,
                            sector: 0,
                            nsect: 0,
                            flag: 0,
                        });
                    }
                }
            }
        }
    }

    /// The area a discard of `sector..sector + nsect` covers: widened to
    /// whole discard extents (`discard-granularity`, default the sector
    /// size, offset by `discard-alignment`), in whole logical sectors, and
    /// kept inside the medium; `None` when nothing is left.
    fn discard_extent(&self, sector: u64, nsect: u64) -> Option<(u64, u64)> {
        let info = &self.fe.info;
        let ss = u64::from(info.sector_size.max(512)) / 512;
        let gran_bytes = match info.discard_granularity {
            0 => u64::from(info.sector_size.max(512)),
            g => u64::from(g),
        };
        let gran = gran_bytes
            .div_ceil(512)
            .div_ceil(ss)
            .checked_mul(ss)?
            .max(1);
        let align = (u64::from(info.discard_alignment) / 512) % gran;
        let start = if sector >= align {
            align + (sector - align) / gran * gran
        } else {
            align
        };
        let end = sector.checked_add(nsect)?;
        let mut aligned_end = if end > align {
            align + (end - align).div_ceil(gran) * gran
        } else {
            return None;
        };
        if aligned_end > info.sectors {
            aligned_end = align + info.sectors.checked_sub(align)? / gran * gran;
        }
        (aligned_end > start).then(|| (start, aligned_end - start))
    }

    /// Plans the discard that is due over a recently written area that no
    /// planned or in-flight I/O touches; stays due when there is none yet.
    fn plan_discard(&mut self) {
        if !self.discard_due {
            return;
        }
        let flag = if self.fe.profile.discard_secure && self.fe.info.discard_secure {
            BLKIF_DISCARD_SECURE
        } else {
            0
        };
        for i in (0..self.recent_writes.len()).rev() {
            let (sector, nsect) = self.recent_writes[i];
            let Some((s, n)) = self.discard_extent(sector, nsect) else {
                continue;
            };
            if self.overlaps(s, n) {
                continue;
            }
            self.recent_writes.remove(i);
            self.discard_due = false;
            self.pending.push_back(Planned {
                operation: BLKIF_OP_DISCARD,
                sector: s,
                nsect: n,
                flag,
            });
            return;
        }
    }

    /// Pushes pending requests while the queue depth and the rings allow,
    /// spreading them round robin over the queues that have room, then
    /// publishes them (kicking each queue whose back-end asked).
    fn push_pending(&mut self) -> Result<(), FrontendError> {
        let nq = self.per_queue.len();
        let mut touched = std::vec![false; nq];
        while self.inflight.len() < self.total_qd() {
            let Some(p) = self.pending.front().cloned() else {
                break;
            };
            let mut chosen = None;
            for k in 0..nq {
                let q = (self.next_queue + k) % nq;
                if self.per_queue[q] < self.qd && self.fe.ring_q(q)?.free_slots() > 0 {
                    chosen = Some(q);
                    break;
                }
            }
            let Some(q) = chosen else {
                break;
            };
            self.pending.pop_front();
            self.push_one(&p, q)?;
            self.next_queue = (q + 1) % nq;
            touched[q] = true;
        }
        for (q, t) in touched.into_iter().enumerate() {
            if t {
                self.fe.publish_and_kick_q(q)?;
            }
        }
        Ok(())
    }

    /// The data pages of a read or write, one segment each: a write's
    /// filled with generation `gen`'s pattern, a read's poisoned.
    fn data_segments(
        &mut self,
        p: &Planned,
        write: bool,
        gen: u64,
    ) -> Result<(Vec<Segment>, Vec<Page>), FrontendError> {
        let mut segs = Vec::new();
        let mut pages = Vec::new();
        let mut left = p.nsect;
        let mut sector = p.sector;
        let mut buf = [0u8; SECTOR];
        while left > 0 {
            let n = left.min(SECTORS_PER_PAGE);
            // Without persistent grants, pages for writes are granted
            // read-only: the back-end only reads them. A persistent
            // page plays blkfront's bounce buffer: the data is copied
            // into it before the request and out of it after.
            let page = self.fe.data_page(write)?;
            pages.push(page);
            if write {
                for k in 0..n {
                    sector_pattern(sector + k, gen, &mut buf);
                    self.fe
                        .guest
                        .memory
                        .write(page.gfn, k as usize * SECTOR, &buf)
                        .map_err(|e| FrontendError::Os(format!("{e:?}")))?;
                }
            } else {
                // Stale bytes must not pass for data: poison the page.
                self.fe
                    .guest
                    .memory
                    .fill(page.gfn, 0, PAGE_SIZE, 0xA5)
                    .map_err(|e| FrontendError::Os(format!("{e:?}")))?;
            }
            segs.push(Segment {
                gref: page.gref,
                first_sect: 0,
                last_sect: (n - 1) as u8,
            });
            left -= n;
            sector += n;
        }
        Ok((segs, pages))
    }

    fn push_one(&mut self, p: &Planned, q: usize) -> Result<(), FrontendError> {
        let id = self.fe.new_id();
        let write = p.operation == BLKIF_OP_WRITE;
        let gen = if write {
            self.next_gen += 1;
            self.next_gen
        } else {
            0
        };
        let (segs, pages) = if p.operation == BLKIF_OP_READ || write {
            self.data_segments(p, write, gen)?
        } else {
            (Vec::new(), Vec::new())
        };
        let mut indirect = Vec::new();
        let (wire_op, body) = if p.operation == BLKIF_OP_DISCARD {
            (
                BLKIF_OP_DISCARD,
                RequestBody::Discard {
                    flag: p.flag,
                    handle: 0,
                    sector_number: p.sector,
                    nr_sectors: p.nsect,
                },
            )
        } else if segs.len() > usize::from(self.fe.profile.max_segments) {
            // More than the profile puts inline (only possible when
            // indirect requests were negotiated): descriptor pages,
            // granted read-only.
            let mut indirect_grefs = [0u32; BLKIF_MAX_INDIRECT_PAGES_PER_REQUEST];
            for (chunk, g) in segs
                .chunks(SEGMENTS_PER_INDIRECT_PAGE)
                .zip(indirect_grefs.iter_mut())
            {
                let page = self.fe.descriptor_page()?;
                indirect.push(page);
                self.fe.write_descriptors(page.gfn, chunk)?;
                *g = page.gref;
            }
            (
                BLKIF_OP_INDIRECT,
                RequestBody::Indirect {
                    indirect_op: p.operation,
                    nr_segments: segs.len() as u16,
                    handle: 0,
                    sector_number: p.sector,
                    indirect_grefs,
                },
            )
        } else {
            (
                p.operation,
                BlkifRequest::rw(p.operation, id, p.sector, &segs).body,
            )
        };
        let req = BlkifRequest {
            operation: wire_op,
            id,
            body,
        };
        if !self.fe.ring_q(q)?.push_request(&req) {
            for pg in pages.into_iter().chain(indirect) {
                self.fe.release_page(pg)?;
            }
            return Err(FrontendError::RingFull);
        }
        self.report.requests += 1;
        self.report.requests_per_queue[q] += 1;
        self.report.max_segments_seen = self.report.max_segments_seen.max(segs.len() as u32);
        if wire_op == BLKIF_OP_INDIRECT {
            self.report.indirect_requests += 1;
        }
        self.per_queue[q] += 1;
        self.inflight.insert(
            id,
            WlInFlight {
                queue: q,
                operation: p.operation,
                wire_op,
                sector: p.sector,
                nsect: p.nsect,
                gen,
                pages,
                indirect,
            },
        );
        Ok(())
    }

    /// Waits for at least one response and handles every one available, on
    /// every queue.
    fn reap(&mut self, deadline: Instant) -> Result<(), FrontendError> {
        loop {
            let mut got = false;
            for q in 0..self.per_queue.len() {
                while let Some(rsp) = take_checked(self.fe.ring_q(q)?, q)? {
                    got = true;
                    self.complete(&rsp, q)?;
                }
            }
            if got {
                return Ok(());
            }
            let seen = *lock_sig(&self.fe.events);
            if self.fe.final_check_all()? {
                continue;
            }
            if Instant::now() >= deadline {
                return Err(FrontendError::Timeout {
                    what: format!("responses ({} requests in flight)", self.inflight.len()),
                });
            }
            wait_change(&self.fe.events, seen, deadline);
        }
    }

    fn complete(&mut self, rsp: &BlkifResponse, q: usize) -> Result<(), FrontendError> {
        // A response counts only on the queue its request went to.
        if self.inflight.get(&rsp.id).map(|r| r.queue) != Some(q) {
            return Err(FrontendError::UnknownResponse { id: rsp.id });
        }
        let r = self
            .inflight
            .remove(&rsp.id)
            .ok_or(FrontendError::UnknownResponse { id: rsp.id })?;
        self.per_queue[q] -= 1;
        // `operation` is copied from the request, but an indirect request
        // is answered with its `indirect_op`: xen-blkfront disables the
        // disk on a response that says BLKIF_OP_INDIRECT.
        let op_ok = if r.wire_op == BLKIF_OP_INDIRECT {
            rsp.operation == r.operation
        } else {
            rsp.operation == r.wire_op
        };
        let ok = rsp.status == BLKIF_RSP_OKAY && op_ok;
        if !ok {
            self.report.error_responses += 1;
        }
        let bytes = r.nsect * SECTOR as u64;
        match r.operation {
            BLKIF_OP_READ if ok => {
                self.report.reads += 1;
                self.report.bytes_read += bytes;
                self.check_read(&r)?;
            }
            BLKIF_OP_WRITE => {
                for k in 0..r.nsect {
                    self.shadow
                        .insert(r.sector + k, if ok { r.gen } else { UNKNOWN });
                }
                if ok {
                    self.report.writes += 1;
                    self.report.bytes_written += bytes;
                    if self.recent_writes.len() == DISCARD_CANDIDATES {
                        self.recent_writes.pop_front();
                    }
                    self.recent_writes.push_back((r.sector, r.nsect));
                }
            }
            BLKIF_OP_DISCARD => {
                // Whatever the status, the content is no longer known.
                for k in 0..r.nsect {
                    self.shadow.insert(r.sector + k, UNKNOWN);
                }
                if ok {
                    self.report.discards += 1;
                    self.report.bytes_discarded += bytes;
                }
            }
            BLKIF_OP_FLUSH_DISKCACHE | BLKIF_OP_WRITE_BARRIER if ok => self.report.flushes += 1,
            _ => {}
        }
        for p in r.pages.into_iter().chain(r.indirect) {
            self.fe.release_page(p)?;
        }
        Ok(())
    }

    /// Compares a completed read's pages with the shadow, skipping sectors
    /// whose content is unknown.
    fn check_read(&mut self, r: &WlInFlight) -> Result<(), FrontendError> {
        let mut got = [0u8; SECTOR];
        let mut want = [0u8; SECTOR];
        for k in 0..r.nsect {
            let sector = r.sector + k;
            let gen = self.shadow.get(&sector).copied().unwrap_or(0);
            if gen == UNKNOWN {
                continue;
            }
            let page = &r.pages[(k / SECTORS_PER_PAGE) as usize];
            let off = (k % SECTORS_PER_PAGE) as usize * SECTOR;
            self.fe
                .guest
                .memory
                .read(page.gfn, off, &mut got)
                .map_err(|e| FrontendError::Os(format!("{e:?}")))?;
            sector_pattern(sector, gen, &mut want);
            self.report.bytes_checked += SECTOR as u64;
            if got != want {
                self.report.mismatches += 1;
                if self.report.first_mismatch.is_none() {
                    let seen_sector = u64::from_le_bytes(got[..8].try_into().unwrap_or_default());
                    let seen_gen = u64::from_le_bytes(got[8..16].try_into().unwrap_or_default());
                    self.report.first_mismatch = Some(format!(
                        "sector {sector}: expected generation {gen}, found bytes of \
                         sector {seen_sector} generation {seen_gen}"
                    ));
                }
            }
        }
        Ok(())
    }

    /// Runs until every planned and in-flight request has finished.
    fn drain(&mut self, guard: Duration) -> Result<(), FrontendError> {
        while !self.pending.is_empty() || !self.inflight.is_empty() {
            self.push_pending()?;
            if !self.inflight.is_empty() {
                self.reap(Instant::now() + guard)?;
            }
        }
        Ok(())
    }
}

/// Runs `wl` on a connected front-end: keeps `queue_depth` requests in
/// flight on each queue (requests go round robin to the queues with room;
/// the queues are served interleaved by this one thread, while the
/// back-end serves them independently), splits each I/O into requests of
/// at most `max_segments` pages, or of at most the negotiated indirect
/// segments when the back-end offered indirect requests (only requests of
/// more than `max_segments` pages, 11 for every named profile, are sent as
/// `BLKIF_OP_INDIRECT`, as `xen-blkfront` does), never overlaps two
/// in-flight I/Os, writes [`sector_pattern`]s and checks every read
/// against the shadow; issues flushes, barriers and discards as the
/// profile asks and the back-end offers (a discarded area reads as
/// unknown until rewritten: it is not checked); optionally reads the whole
/// touched range back at the end. A sector-aware profile rounds `io_size`
/// up to the medium's sector size; others refuse a size that is not a
/// multiple of it. Manual requests must not be in flight.
pub fn run_workload(fe: &mut Frontend, wl: &Workload) -> Result<WorkloadReport, FrontendError> {
    run_workload_until(fe, wl, &AtomicBool::new(true))
}

/// [`run_workload`] that goes on issuing I/Os past `wl.ops`, in the same
/// pattern, until `done` is set: a workload that is sure to be running
/// while something else happens. `done` already set is [`run_workload`].
pub fn run_workload_until(
    fe: &mut Frontend,
    wl: &Workload,
    done: &AtomicBool,
) -> Result<WorkloadReport, FrontendError> {
    run_workload_shadowed(fe, wl, done, &mut Shadow::new())
}

/// [`run_workload_until`] over a disk whose earlier content `shadow`
/// knows: every read is checked against it, and it learns every write.
/// When the workload fails, the sectors its writes in flight touched
/// become unknown.
pub fn run_workload_shadowed(
    fe: &mut Frontend,
    wl: &Workload,
    done: &AtomicBool,
    shadow: &mut Shadow,
) -> Result<WorkloadReport, FrontendError> {
    fe.check_idle()?;
    let start = Instant::now();
    let info = fe.info.clone();
    let ss = u64::from(info.sector_size.max(512));
    let mut io = u64::from(wl.io_size);
    if fe.profile.sector_aware && ss % 512 == 0 {
        io = io.max(1).div_ceil(ss) * ss;
    }
    if io == 0 || io % 512 != 0 || io % ss != 0 {
        return Err(FrontendError::Invalid(format!(
            "io_size {} on a {}-byte-sector medium",
            wl.io_size, ss
        )));
    }
    let nsect = io / 512;
    let align = (ss / 512).max(1);
    let (rstart, rlen) = wl.region_sectors.unwrap_or((0, info.sectors));
    let rstart = rstart.div_ceil(align) * align;
    let rend = rstart
        .checked_add(rlen)
        .filter(|&e| e <= info.sectors)
        .ok_or_else(|| FrontendError::Invalid("region beyond the medium".into()))?;
    if rend < rstart + nsect {
        return Err(FrontendError::Invalid("region smaller than one I/O".into()));
    }
    // The number of aligned start positions.
    let slots = (rend - rstart - nsect) / align + 1;
    let guard = fe.hang_guard;
    let qd = (fe.profile.queue_depth.max(1) as usize).min(fe.info.ring_size.max(1) as usize);
    let nq = fe.nqueues().max(1);
    let seg_limit = u64::from(
        info.max_indirect_segments
            .max(u32::from(fe.profile.max_segments)),
    );
    let mut rng = wl.seed ^ 0x5DEE_CE66_D1CE_5EED;
    let mut eng = Engine {
        fe,
        qd,
        seg_limit,
        inflight: HashMap::new(),
        per_queue: std::vec![0; nq],
        next_queue: 0,
        pending: std::collections::VecDeque::new(),
        shadow: std::mem::take(&mut shadow.sectors),
        next_gen: shadow.next_gen,
        writes_since_flush: 0,
        writes_since_barrier: 0,
        writes_since_discard: 0,
        discard_due: false,
        recent_writes: std::collections::VecDeque::new(),
        report: WorkloadReport {
            requests_per_queue: std::vec![0; nq],
            ..WorkloadReport::default()
        },
    };
    let result = drive(
        &mut eng,
        wl,
        done,
        WlShape {
            slots,
            nsect,
            align,
            rstart,
            guard,
        },
        &mut rng,
    );
    if result.is_err() {
        // What the writes in flight did is not known.
        for r in eng.inflight.values() {
            if r.operation == BLKIF_OP_WRITE || r.operation == BLKIF_OP_DISCARD {
                for k in 0..r.nsect {
                    eng.shadow.insert(r.sector + k, UNKNOWN);
                }
            }
        }
    }
    shadow.sectors = std::mem::take(&mut eng.shadow);
    shadow.next_gen = eng.next_gen;
    result?;
    let mut report = eng.report;
    report.elapsed = start.elapsed();
    Ok(report)
}

/// Where a workload's I/Os go.
struct WlShape {
    slots: u64,
    nsect: u64,
    align: u64,
    rstart: u64,
    guard: Duration,
}

/// The I/O of a workload: issue, reap, and the final read-back.
fn drive(
    eng: &mut Engine<'_>,
    wl: &Workload,
    done: &AtomicBool,
    shape: WlShape,
    rng: &mut u64,
) -> Result<(), FrontendError> {
    let WlShape {
        slots,
        nsect,
        align,
        rstart,
        guard,
    } = shape;
    let mut cursor = 0u64;
    let mut next: Option<(u8, u64)> = None;
    let mut issued = 0u64;
    let mut lo = u64::MAX;
    let mut hi = 0u64;
    let more = |issued: u64| issued < wl.ops || !done.load(AtomicOrdering::Acquire);
    while more(issued) || !eng.pending.is_empty() || !eng.inflight.is_empty() {
        // Plan I/Os until the queue depth is covered: requests in flight
        // plus requests planned but not yet on the ring.
        while more(issued) && eng.inflight.len() + eng.pending.len() < eng.total_qd() {
            let (op, sector) = *next.get_or_insert_with(|| {
                let pos = if wl.random {
                    splitmix(rng) % slots
                } else {
                    let p = cursor % slots;
                    cursor = cursor.wrapping_add(nsect.div_ceil(align));
                    p
                };
                let read = (splitmix(rng) % 100) < u64::from(wl.read_pct);
                let op = if read { BLKIF_OP_READ } else { BLKIF_OP_WRITE };
                (op, rstart + pos * align)
            });
            if eng.overlaps(sector, nsect) {
                break;
            }
            next = None;
            lo = lo.min(sector);
            hi = hi.max(sector + nsect);
            eng.plan_io(op, sector, nsect);
            issued += 1;
        }
        eng.plan_discard();
        eng.push_pending()?;
        if !eng.inflight.is_empty() {
            eng.reap(Instant::now() + guard)?;
        }
    }
    if wl.verify_all_at_end && lo < hi {
        let chunk = eng.seg_limit * SECTORS_PER_PAGE;
        let mut s = lo;
        while s < hi {
            let n = (hi - s).min(chunk);
            eng.plan_io(BLKIF_OP_READ, s, n);
            s += n;
        }
        eng.drain(guard)?;
    }
    Ok(())
}
