//! A workload driven by one thread per queue, as a multi-vCPU Linux guest
//! drives its rings: `xen-blkfront` gives each ring its own
//! `blkfront_ring_info` (lock, grants, interrupt) and blk-mq maps a
//! hardware context to each, so requests of different CPUs go to
//! different rings without meeting in one thread.
//!
//! [`run_workload_per_queue`] lends each queue of a connected
//! [`Frontend`] to a thread as a front-end of that queue alone (a *lane*:
//! its ring, its event channel's own wake-up, its share of the free frames
//! and of the persistent-grant pools, as Linux keeps persistent grants per
//! ring), runs [`run_workload`] on every lane at once, each over its own
//! slice of the disk, then takes the queues back.

use super::*;
use std::thread;

/// A front-end's free resources dealt out to `n` lanes, round robin.
fn deal<T>(items: Vec<T>, n: usize) -> Vec<Vec<T>> {
    let mut out: Vec<Vec<T>> = (0..n).map(|_| Vec::new()).collect();
    for (i, it) in items.into_iter().enumerate() {
        out[i % n].push(it);
    }
    out
}

impl Frontend {
    /// A front-end of `queue` alone, sharing the guest and the stores with
    /// `self`; `events` is the signal its channel's events bump (its own,
    /// so that its thread wakes only for its ring).
    fn lane(
        &self,
        queue: Queue,
        events: Signal,
        pool: Vec<Gfn>,
        persistent: Persistent,
    ) -> Frontend {
        Frontend {
            xs: self.xs.clone(),
            hub: self.hub.clone(),
            guest: self.guest.clone(),
            fe_dom: self.fe_dom,
            be_dom: self.be_dom,
            fe_path: self.fe_path.clone(),
            be_path: self.be_path.clone(),
            profile: self.profile.clone(),
            overrides: BTreeMap::new(),
            ring_start: self.ring_start,
            hang_guard: self.hang_guard,
            be_watch: None,
            be_changed: Arc::clone(&self.be_changed),
            events,
            conn: Some(Conn {
                queues: std::vec![queue],
            }),
            info: self.info.clone(),
            next_id: self.next_id,
            manual: HashMap::new(),
            raw_ids: HashMap::new(),
            done: HashMap::new(),
            pool,
            persistent,
            grants_issued: 0,
            orphans: Vec::new(),
        }
    }

    /// Lends every queue to a lane of its own (the connection is left
    /// without queues until [`rejoin`](Self::rejoin)). Must be idle.
    fn split_lanes(&mut self) -> Result<Vec<Frontend>, FrontendError> {
        self.check_idle()?;
        let queues = std::mem::take(
            &mut self
                .conn
                .as_mut()
                .ok_or(FrontendError::NotConnected)?
                .queues,
        );
        let n = queues.len().max(1);
        let mut pools = deal(std::mem::take(&mut self.pool), n).into_iter();
        let mut data = deal(std::mem::take(&mut self.persistent.data), n).into_iter();
        let mut indirect = deal(std::mem::take(&mut self.persistent.indirect), n).into_iter();
        let mut lanes = Vec::new();
        let mut failed = None;
        let mut left = Vec::new();
        for q in queues {
            if failed.is_some() {
                left.push(q);
                continue;
            }
            let events = new_signal();
            let ev = Arc::clone(&events);
            let handler = std::boxed::Box::new(move || bump(&ev));
            match self.hub.set_handler(self.fe_dom, q.port, handler) {
                Ok(()) => {
                    // Each lane's pool pages stay in `self.persistent.all`
                    // (it lists every page ever granted); the lane's `all`
                    // lists only the pages it grants.
                    let persistent = Persistent {
                        data: data.next().unwrap_or_default(),
                        indirect: indirect.next().unwrap_or_default(),
                        all: Vec::new(),
                    };
                    let pool = pools.next().unwrap_or_default();
                    lanes.push(self.lane(q, events, pool, persistent));
                }
                Err(e) => {
                    left.push(q);
                    failed = Some(FrontendError::Os(format!("evtchn: {e:?}")));
                }
            }
        }
        match failed {
            None => Ok(lanes),
            Some(e) => {
                // What was not dealt out yet comes back with the lanes.
                self.pool.extend(pools.flatten());
                self.persistent.data.extend(data.flatten());
                self.persistent.indirect.extend(indirect.flatten());
                self.rejoin(lanes.into_iter().map(Some).collect());
                if let Some(c) = self.conn.as_mut() {
                    c.queues.extend(left);
                }
                Err(e)
            }
        }
    }

    /// Takes the queues of `lanes` back, in order, with what each lane
    /// granted, freed and counted; their events reach this front-end's
    /// signal again. A lane lost (its thread panicked) leaves its queue
    /// out of the connection.
    fn rejoin(&mut self, lanes: Vec<Option<Frontend>>) {
        for mut lane in lanes.into_iter().flatten() {
            let queues = lane.conn.take().map(|c| c.queues).unwrap_or_default();
            for q in &queues {
                let ev = Arc::clone(&self.events);
                let _ = self.hub.set_handler(
                    self.fe_dom,
                    q.port,
                    std::boxed::Box::new(move || bump(&ev)),
                );
            }
            // After the handler moved: every event the lane was sent is
            // in its count by now.
            let seen = *lock_sig(&lane.events);
            *lock_sig(&self.events) += seen;
            if let Some(c) = self.conn.as_mut() {
                c.queues.extend(queues);
            }
            self.pool.append(&mut lane.pool);
            self.persistent.data.append(&mut lane.persistent.data);
            self.persistent
                .indirect
                .append(&mut lane.persistent.indirect);
            self.persistent.all.append(&mut lane.persistent.all);
            self.orphans.append(&mut lane.orphans);
            self.grants_issued += lane.grants_issued;
            self.next_id = self.next_id.max(lane.next_id);
        }
    }
}

/// Adds a lane's report (that of queue `q`) to the whole workload's.
fn add_report(total: &mut WorkloadReport, q: usize, r: WorkloadReport) {
    total.requests += r.requests;
    total.reads += r.reads;
    total.writes += r.writes;
    total.flushes += r.flushes;
    total.discards += r.discards;
    total.bytes_read += r.bytes_read;
    total.bytes_written += r.bytes_written;
    total.bytes_discarded += r.bytes_discarded;
    total.bytes_checked += r.bytes_checked;
    total.mismatches += r.mismatches;
    total.error_responses += r.error_responses;
    total.indirect_requests += r.indirect_requests;
    total.max_segments_seen = total.max_segments_seen.max(r.max_segments_seen);
    if let Some(n) = total.requests_per_queue.get_mut(q) {
        *n += r.requests;
    }
    if total.first_mismatch.is_none() {
        total.first_mismatch = r.first_mismatch;
    }
}

/// [`run_workload`] with one thread per queue: queue `q`'s thread issues
/// its share of `wl.ops` (as even as can be) on ring `q` only, in slice
/// `q` of the region (`wl.region_sectors`, or the medium, cut into as many
/// equal slices of whole logical sectors), with a seed of its own, reaps
/// and checks its own responses, and sleeps on its own event channel. The
/// report adds the threads' up. The slices keep the lanes' I/O apart, as a
/// guest's file system keeps concurrent I/O of different CPUs apart: each
/// lane checks its reads against its own writes. With one queue, this is
/// [`run_workload`] on the calling thread.
pub fn run_workload_per_queue(
    fe: &mut Frontend,
    wl: &Workload,
) -> Result<WorkloadReport, FrontendError> {
    let n = fe.nqueues();
    if n <= 1 {
        return run_workload(fe, wl);
    }
    fe.check_idle()?;
    let start = Instant::now();
    let (rstart, rlen) = wl.region_sectors.unwrap_or((0, fe.info.sectors));
    let unit = (u64::from(fe.info.sector_size.max(512)) / 512).max(1);
    let nq = n as u64;
    let slice = rlen / nq / unit * unit;
    let lanes = fe.split_lanes()?;
    let ran: Vec<thread::Result<(Frontend, Result<WorkloadReport, FrontendError>)>> =
        thread::scope(|s| {
            let handles: Vec<_> = lanes
                .into_iter()
                .enumerate()
                .map(|(q, mut lane)| {
                    let k = q as u64;
                    let lane_wl = Workload {
                        ops: wl.ops / nq + u64::from(k < wl.ops % nq),
                        region_sectors: Some((rstart + k * slice, slice)),
                        seed: wl.seed ^ k.wrapping_mul(0x9E37_79B9_7F4A_7C15),
                        ..wl.clone()
                    };
                    let body = move || {
                        let r = run_workload(&mut lane, &lane_wl);
                        (lane, r)
                    };
                    thread::Builder::new()
                        .name(format!("fe-q{q}"))
                        .spawn_scoped(s, body)
                })
                .collect();
            handles
                .into_iter()
                .map(|h| match h {
                    Ok(h) => h.join(),
                    // A thread that could not be started took its lane
                    // (and queue) with it, as one that panicked does.
                    Err(e) => {
                        Err(std::boxed::Box::new(format!("starting a queue thread: {e}")) as _)
                    }
                })
                .collect()
        });
    let mut total = WorkloadReport {
        requests_per_queue: std::vec![0; n],
        ..WorkloadReport::default()
    };
    let mut lanes = Vec::new();
    let mut first_err = None;
    let mut panicked = None;
    for (q, r) in ran.into_iter().enumerate() {
        match r {
            Ok((lane, r)) => {
                lanes.push(Some(lane));
                match r {
                    Ok(rep) => add_report(&mut total, q, rep),
                    Err(e) => {
                        first_err.get_or_insert(e);
                    }
                }
            }
            Err(p) => {
                lanes.push(None);
                panicked.get_or_insert(p);
            }
        }
    }
    fe.rejoin(lanes);
    if let Some(p) = panicked {
        std::panic::resume_unwind(p);
    }
    if let Some(e) = first_err {
        return Err(e);
    }
    total.elapsed = start.elapsed();
    Ok(total)
}
