//! `xbb-lab soak`: many guests, every front-end profile, for a long time,
//! with reconnects, detach and attach, resizes under I/O and injected
//! faults mixed in; no unexpected error, every byte verified, and the
//! process's resources flat.
//!
//! Each guest runs in its own thread, cycle after cycle, on one disk: a
//! workload whose reads are checked against everything written to that
//! disk since the soak began ([`Shadow`]), sometimes with a store I/O
//! error or a grant-map failure injected, or the medium grown and shrunk
//! back while it runs; then, sometimes, a reconnect (Closing, Closed,
//! Initialising: the online back-end keeps its store) or a detach and
//! attach (`xl block-detach` / `block-attach`: a new instance on the same
//! image). An error response is expected only for an injected fault: at
//! least one per fault that fired (the request whose grant failed, the
//! requests of the store I/O that failed) and no more than the requests in
//! flight; anything else is unexpected. At the end every guest reads its
//! whole disk back.
//!
//! At every sample (each minute; four times in a run shorter than four
//! minutes) every guest stops between two cycles — connected, nothing in
//! flight — and the process's resident memory, open descriptors (and of
//! them the stores' image files) and threads are read from `/proc/self`.
//! The back-ends, their stores, the simulated guests and host share one
//! process. Resident memory is printed split as the kernel counts it:
//! `RssAnon`, the heap's pages (the back-ends', their stores', and the
//! guests' own bookkeeping, which is sized to their disks at the start),
//! and `RssShmem`, the guests' RAM (a memfd per guest, whose frame
//! allocator hands out frames in rotation, so it fills up toward the
//! guests' RAM whatever the back-end does) with the grant mappings the
//! back-ends hold. With glibc the heap's pages also keep what was freed
//! into each thread's arena, which grows with the number of threads
//! allocating rather than with what is held; so what is held to a bound
//! is the live heap, the bytes the allocator handed out and did not get
//! back (`mallinfo2`; `RssAnon` where that is unknown). The soak fails
//! when the last sample's descriptors or threads differ from the first's
//! (threads counted without the EOI timers: a delayed end-of-interrupt
//! runs one for its delay, idle guests or not), or its live heap exceeds
//! the first's by more than
//! [`HEAP_GROWTH_PERCENT`] % or [`HEAP_GROWTH_MIB`] MiB, whichever is
//! more.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use xbb::host::{DomId, GrantError, IoError};
use xbb::stats::Stat;

use crate::frontend::{run_workload_shadowed, Frontend, Profile, Shadow, Workload, WorkloadReport};
use crate::gnttab::MapFault;
use crate::store::locked;
use crate::store::{IoFaults, StoreKind, StoreOptions};
use crate::world::{VbdConfig, VbdHandle, World};

/// Guests a soak runs at least.
pub const MIN_GUESTS: usize = 16;
/// The live heap may grow by this much (percent of the first sample)...
pub const HEAP_GROWTH_PERCENT: u64 = 25;
/// ... or by this many MiB, whichever is more.
pub const HEAP_GROWTH_MIB: u64 = 16;
/// Each guest's disk.
const DISK_BYTES: u64 = 16 << 20;
/// RAM of each guest, in 4 KiB frames.
const GUEST_FRAMES: u64 = 8192;
/// Guest domain ids start here.
const FIRST_DOM: DomId = 1;

/// How a soak is run.
#[derive(Clone, Debug)]
pub struct SoakOptions {
    /// How long.
    pub duration: Duration,
    /// Guests (at least [`MIN_GUESTS`]).
    pub guests: usize,
    /// Seed of every guest's choices.
    pub seed: u64,
    /// Where the images go (kept); a temporary directory when `None`.
    pub dir: Option<PathBuf>,
    /// A line per sample on stderr.
    pub progress: bool,
    /// Bound on every wait (a hang guard, never a timing check).
    pub hang_guard: Duration,
}

impl Default for SoakOptions {
    fn default() -> Self {
        SoakOptions {
            duration: Duration::from_secs(60),
            guests: MIN_GUESTS,
            seed: 1,
            dir: None,
            progress: false,
            hang_guard: Duration::from_secs(60),
        }
    }
}

/// The process's resources at one quiet moment.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Resources {
    /// Seconds into the soak.
    pub at_secs: u64,
    /// Resident memory (`VmRSS`), KiB.
    pub rss_kib: u64,
    /// Of which anonymous memory, the heap (`RssAnon`), KiB.
    pub anon_kib: u64,
    /// Of which shared memory (`RssShmem`): guest RAM and grant
    /// mappings, KiB.
    pub shmem_kib: u64,
    /// The live heap: what the allocator handed out and did not get back
    /// ([`crate::ffi::heap_in_use`]), KiB; 0 where unknown.
    pub live_kib: u64,
    /// XenStore nodes.
    pub xs_nodes: u64,
    /// XenStore watches.
    pub xs_watches: u64,
    /// Open descriptors.
    pub fds: u64,
    /// Of those, the stores' image files.
    pub store_fds: u64,
    /// Threads, without the EOI timers.
    pub threads: u64,
    /// EOI timer threads alive (`xbb-eoi-timer`: the simulated callout of
    /// a delayed end-of-interrupt, each gone after its delay).
    pub timers: u64,
}

impl Resources {
    /// What the heap holds: the live heap, or `RssAnon` where that is
    /// unknown.
    pub fn held_kib(&self) -> u64 {
        if self.live_kib > 0 {
            self.live_kib
        } else {
            self.anon_kib
        }
    }

    /// Reads `/proc/self` and the XenStore's size; `dir` holds the
    /// images.
    fn now(at: Duration, dir: &Path, world: &World) -> Resources {
        let xs = &world.xen().xenstore;
        let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
        let field = |name: &str| {
            status
                .lines()
                .find_map(|l| l.strip_prefix(name))
                .and_then(|v| v.split_whitespace().next())
                .and_then(|v| v.parse().ok())
                .unwrap_or(0)
        };
        // Threads by name: a delayed EOI's timer lives for its delay,
        // whether or not every guest is idle.
        let (mut threads, mut timers) = (0u64, 0u64);
        if let Ok(rd) = std::fs::read_dir("/proc/self/task") {
            for e in rd.flatten() {
                threads += 1;
                let comm = std::fs::read_to_string(e.path().join("comm")).unwrap_or_default();
                if comm.trim_end() == "xbb-eoi-timer" {
                    timers += 1;
                }
            }
        }
        let (mut fds, mut store_fds) = (0u64, 0u64);
        if let Ok(rd) = std::fs::read_dir("/proc/self/fd") {
            for e in rd.flatten() {
                fds += 1;
                if std::fs::read_link(e.path()).is_ok_and(|t| t.starts_with(dir)) {
                    store_fds += 1;
                }
            }
        }
        Resources {
            at_secs: at.as_secs(),
            rss_kib: field("VmRSS:"),
            anon_kib: field("RssAnon:"),
            shmem_kib: field("RssShmem:"),
            live_kib: crate::ffi::heap_in_use().unwrap_or(0) / 1024,
            xs_nodes: xs.dump("/").len() as u64,
            xs_watches: xs.watch_count() as u64,
            // The directory read itself held one.
            fds: fds.saturating_sub(1),
            store_fds,
            threads: threads.saturating_sub(timers),
            timers,
        }
    }
}

/// What one guest did.
#[derive(Clone, Debug, Default)]
pub struct GuestTotals {
    /// Its front-end profile.
    pub profile: String,
    /// `file` or `device`.
    pub store: &'static str,
    /// Its medium's logical sector size.
    pub sector_size: u32,
    /// Cycles run (a workload each).
    pub cycles: u64,
    /// Requests its workloads pushed.
    pub requests: u64,
    /// Bytes written.
    pub bytes_written: u64,
    /// Bytes read and compared with what was written.
    pub bytes_verified: u64,
    /// Sectors that read back wrong.
    pub mismatches: u64,
    /// Error responses.
    pub error_responses: u64,
    /// Injected faults that fired (store I/O errors, grant-map failures).
    pub faults_fired: u64,
    /// Reconnects (Closing, Closed, Initialising, Connected).
    pub reconnects: u64,
    /// Detach and attach of its vbd.
    pub reattaches: u64,
    /// Resizes (grow and shrink back) while a workload ran.
    pub resizes: u64,
    /// What went wrong, each once.
    pub failures: Vec<String>,
}

/// What a soak found.
#[derive(Clone, Debug, Default)]
pub struct SoakReport {
    /// Wall time, seconds.
    pub seconds: f64,
    /// The seed.
    pub seed: u64,
    /// Every guest.
    pub guests: Vec<GuestTotals>,
    /// The samples, in order.
    pub samples: Vec<Resources>,
    /// Problems of the soak itself (resources that grew, guests that did
    /// not stop for a sample, leaks at detach).
    pub problems: Vec<String>,
}

impl SoakReport {
    /// Whether nothing went wrong.
    pub fn passed(&self) -> bool {
        self.problems.is_empty()
            && self
                .guests
                .iter()
                .all(|g| g.failures.is_empty() && g.mismatches == 0)
    }

    /// The heap bound the last sample is held to, KiB.
    pub fn heap_bound_kib(&self) -> Option<u64> {
        let first = self.samples.first()?;
        Some(heap_bound(first.held_kib()))
    }

    fn sum(&self, f: impl Fn(&GuestTotals) -> u64) -> u64 {
        self.guests.iter().map(f).sum()
    }

    /// The readable report.
    pub fn render_text(&self) -> String {
        let mut o = String::new();
        let _ = writeln!(
            o,
            "xbb-lab soak: {} guests, {:.1} s, seed {}",
            self.guests.len(),
            self.seconds,
            self.seed
        );
        self.write_guests(&mut o);
        let _ = writeln!(
            o,
            "total: {} cycles, {} requests, {} written, {} verified, {} mismatched sectors, \
             {} reconnects, {} detach/attach, {} resizes, {} faults fired, {} error responses \
             (all for those faults), {} unexpected",
            self.sum(|g| g.cycles),
            self.sum(|g| g.requests),
            mib(self.sum(|g| g.bytes_written)),
            mib(self.sum(|g| g.bytes_verified)),
            self.sum(|g| g.mismatches),
            self.sum(|g| g.reconnects),
            self.sum(|g| g.reattaches),
            self.sum(|g| g.resizes),
            self.sum(|g| g.faults_fired),
            self.sum(|g| g.error_responses),
            self.sum(|g| g.failures.len() as u64)
        );
        self.write_samples(&mut o);
        for g in self.guests.iter().enumerate() {
            for f in &g.1.failures {
                let _ = writeln!(o, "  FAILURE guest {}: {f}", g.0);
            }
        }
        for p in &self.problems {
            let _ = writeln!(o, "  PROBLEM {p}");
        }
        let _ = writeln!(o, "result: {}", if self.passed() { "PASS" } else { "FAIL" });
        o
    }

    /// Resources that grew from the first sample to the last (descriptors,
    /// threads, the live heap beyond its bound) are problems.
    fn check_growth(&mut self) {
        let (Some(f), Some(l)) = (self.samples.first(), self.samples.last()) else {
            return;
        };
        let mut grew = Vec::new();
        if l.fds != f.fds || l.store_fds != f.store_fds {
            grew.push(format!(
                "open descriptors went from {} ({} store files) to {} ({})",
                f.fds, f.store_fds, l.fds, l.store_fds
            ));
        }
        if l.threads != f.threads {
            grew.push(format!("threads went from {} to {}", f.threads, l.threads));
        }
        if l.held_kib() > heap_bound(f.held_kib()) {
            grew.push(format!(
                "the live heap grew from {} to {}, beyond {}",
                mib_kib(f.held_kib()),
                mib_kib(l.held_kib()),
                mib_kib(heap_bound(f.held_kib()))
            ));
        }
        self.problems.extend(grew);
    }

    /// The table of guests, one line each.
    fn write_guests(&self, o: &mut String) {
        let _ = writeln!(
            o,
            "{:>5} {:<10} {:>6} {:>6} {:>7} {:>9} {:>10} {:>10} {:>6} {:>6} {:>6} {:>6} {:>6}",
            "guest",
            "profile",
            "store",
            "sector",
            "cycles",
            "requests",
            "written",
            "verified",
            "recon",
            "reatt",
            "resize",
            "faults",
            "errors"
        );
        for (i, g) in self.guests.iter().enumerate() {
            let _ = writeln!(
                o,
                "{:>5} {:<10} {:>6} {:>6} {:>7} {:>9} {:>10} {:>10} {:>6} {:>6} {:>6} {:>6} {:>6}",
                i,
                g.profile,
                g.store,
                g.sector_size,
                g.cycles,
                g.requests,
                mib(g.bytes_written),
                mib(g.bytes_verified),
                g.reconnects,
                g.reattaches,
                g.resizes,
                g.faults_fired,
                g.error_responses
            );
        }
    }

    /// The resources sampled, one line each, and how the last compares
    /// with the first.
    fn write_samples(&self, o: &mut String) {
        let _ = writeln!(
            o,
            "resources of the xbb-lab process (back-ends and their stores, with the simulated \
             guests and host), each with every guest stopped between cycles:"
        );
        let _ = writeln!(
            o,
            "{:>7} {:>11} {:>11} {:>11} {:>11} {:>4} {:>9} {:>7} {:>6} {:>8} {:>7}",
            "at",
            "rss",
            "heap",
            "live-heap",
            "guest-ram",
            "fds",
            "store-fds",
            "threads",
            "timers",
            "xs-nodes",
            "watches"
        );
        for s in &self.samples {
            let _ = writeln!(
                o,
                "{:>7} {:>11} {:>11} {:>11} {:>11} {:>4} {:>9} {:>7} {:>6} {:>8} {:>7}",
                clock(s.at_secs),
                mib_kib(s.rss_kib),
                mib_kib(s.anon_kib),
                mib_kib(s.live_kib),
                mib_kib(s.shmem_kib),
                s.fds,
                s.store_fds,
                s.threads,
                s.timers,
                s.xs_nodes,
                s.xs_watches
            );
        }
        let _ = writeln!(
            o,
            "  (rss = heap (RssAnon) + guest RAM and grant mappings (RssShmem) + files; \
             live-heap: what the allocator handed out and did not get back (mallinfo2); \
             fds: every descriptor of the process; store-fds: the images the back-ends \
             have open; threads: without timers, the EOI timer threads a delayed \
             end-of-interrupt runs for its delay; xs-nodes, watches: the XenStore's)"
        );
        if let (Some(f), Some(l), Some(b)) = (
            self.samples.first(),
            self.samples.last(),
            self.heap_bound_kib(),
        ) {
            let _ = writeln!(
                o,
                "first sample ({}): rss {}, heap {}, live heap {}, {} fds; last sample ({}): \
                 rss {}, heap {}, live heap {}, {} fds; bound: live heap at most {} \
                 (+{HEAP_GROWTH_PERCENT} % or +{HEAP_GROWTH_MIB} MiB), fds and threads unchanged",
                clock(f.at_secs),
                mib_kib(f.rss_kib),
                mib_kib(f.anon_kib),
                mib_kib(f.live_kib),
                f.fds,
                clock(l.at_secs),
                mib_kib(l.rss_kib),
                mib_kib(l.anon_kib),
                mib_kib(l.live_kib),
                l.fds,
                mib_kib(b)
            );
        }
    }

    /// The report as one JSON value.
    pub fn to_json(&self) -> serde_json::Value {
        use serde_json::json;
        json!({
            "passed": self.passed(),
            "seconds": (self.seconds * 10.0).round() / 10.0,
            "seed": self.seed,
            "guests": self.guests.iter().map(|g| json!({
                "profile": g.profile,
                "store": g.store,
                "sector_size": g.sector_size,
                "cycles": g.cycles,
                "requests": g.requests,
                "bytes_written": g.bytes_written,
                "bytes_verified": g.bytes_verified,
                "mismatches": g.mismatches,
                "error_responses": g.error_responses,
                "faults_fired": g.faults_fired,
                "reconnects": g.reconnects,
                "reattaches": g.reattaches,
                "resizes": g.resizes,
                "failures": g.failures,
            })).collect::<Vec<_>>(),
            "samples": self.samples.iter().map(|s| json!({
                "at_secs": s.at_secs,
                "rss_kib": s.rss_kib,
                "anon_kib": s.anon_kib,
                "shmem_kib": s.shmem_kib,
                "fds": s.fds,
                "store_fds": s.store_fds,
                "threads": s.threads,
                "eoi_timers": s.timers,
            })).collect::<Vec<_>>(),
            "live_heap_bound_kib": self.heap_bound_kib(),
            "problems": self.problems,
        })
    }
}

fn heap_bound(first_kib: u64) -> u64 {
    first_kib + (first_kib * HEAP_GROWTH_PERCENT / 100).max(HEAP_GROWTH_MIB * 1024)
}

fn mib_kib(k: u64) -> String {
    format!("{:.1} MiB", k as f64 / 1024.0)
}

fn mib(b: u64) -> String {
    format!("{:.1}M", b as f64 / (1 << 20) as f64)
}

fn clock(secs: u64) -> String {
    format!("{}:{:02}", secs / 60, secs % 60)
}

// ---------------------------------------------------------------------------
// The gate: every guest stops between cycles for a sample.
// ---------------------------------------------------------------------------

#[derive(Default)]
struct GateState {
    pause: bool,
    stop: bool,
    /// Guests waiting at the gate.
    parked: usize,
    /// Guests still cycling.
    running: usize,
}

#[derive(Default)]
struct Gate {
    m: Mutex<GateState>,
    cv: Condvar,
}

impl Gate {
    fn lock(&self) -> MutexGuard<'_, GateState> {
        locked(&self.m)
    }

    /// Between two cycles: waits while a sample is taken; `false` once the
    /// soak is over.
    fn checkpoint(&self) -> bool {
        let mut g = self.lock();
        if g.pause && !g.stop {
            g.parked += 1;
            self.cv.notify_all();
            while g.pause && !g.stop {
                g = self.cv.wait(g).unwrap_or_else(|e| e.into_inner());
            }
            g.parked -= 1;
        }
        !g.stop
    }

    /// A guest is done cycling.
    fn leave(&self) {
        let mut g = self.lock();
        g.running -= 1;
        self.cv.notify_all();
    }

    /// Stops every running guest at its next checkpoint; `false` when they
    /// did not all get there within `guard`.
    fn pause_all(&self, guard: Duration) -> bool {
        let deadline = Instant::now() + guard;
        let mut g = self.lock();
        g.pause = true;
        while g.parked < g.running {
            let now = Instant::now();
            if now >= deadline {
                return false;
            }
            g = self
                .cv
                .wait_timeout(g, deadline - now)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
        true
    }

    fn resume(&self) {
        self.lock().pause = false;
        self.cv.notify_all();
    }

    fn stop(&self) {
        let mut g = self.lock();
        g.stop = true;
        g.pause = false;
        self.cv.notify_all();
    }
}

// ---------------------------------------------------------------------------
// One guest.
// ---------------------------------------------------------------------------

/// A guest's disk and front-end.
struct Guest<'w> {
    world: &'w World,
    index: usize,
    cfg: VbdConfig,
    vbd: VbdHandle,
    fe: Frontend,
    profile: Profile,
    faults: Arc<IoFaults>,
    shadow: Shadow,
    rng: u64,
    guard: Duration,
    totals: GuestTotals,
}

fn next(rng: &mut u64) -> u64 {
    // xorshift64*
    let mut x = *rng;
    x ^= x >> 12;
    x ^= x << 25;
    x ^= x >> 27;
    *rng = x;
    x.wrapping_mul(0x2545_F491_4F6C_DD1D)
}

/// The fault a cycle injects.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Fault {
    None,
    Store,
    Grant,
}

impl<'w> Guest<'w> {
    fn new(
        world: &'w World,
        index: usize,
        dir: &Path,
        seed: u64,
        guard: Duration,
    ) -> Result<Guest<'w>, String> {
        let name = Profile::NAMES[index % Profile::NAMES.len()];
        let profile = Profile::by_name(name).ok_or("profile")?;
        let dom = FIRST_DOM + index as DomId;
        world
            .add_guest(dom, GUEST_FRAMES)
            .map_err(|e| format!("guest domain {dom}: {e}"))?;
        let image = dir.join(format!("{index}-{name}.img"));
        std::fs::File::create(&image)
            .and_then(|f| f.set_len(DISK_BYTES))
            .map_err(|e| format!("{}: {e}", image.display()))?;
        let faults = Arc::new(IoFaults::new());
        let cfg = VbdConfig {
            // One guest of the second round of profiles is served as a raw
            // device (O_DIRECT).
            kind: if index == Profile::NAMES.len() {
                StoreKind::Device
            } else {
                StoreKind::File
            },
            store: StoreOptions {
                sector_size: if profile.sector_aware { 4096 } else { 512 },
                faults: Some(Arc::clone(&faults)),
                cache: None,
                engine: Default::default(),
            },
            ..VbdConfig::file(dom, &image)
        };
        let vbd = world
            .create_vbd(&cfg)
            .map_err(|e| format!("create the vbd: {e}"))?;
        let mut fe =
            Frontend::new(world, &vbd, profile.clone()).map_err(|e| format!("front-end: {e}"))?;
        fe.set_hang_guard(guard);
        fe.connect().map_err(|e| format!("connect: {e}"))?;
        Ok(Guest {
            world,
            index,
            totals: GuestTotals {
                profile: name.to_string(),
                store: if cfg.kind == StoreKind::Device {
                    "device"
                } else {
                    "file"
                },
                sector_size: cfg.store.sector_size,
                ..GuestTotals::default()
            },
            cfg,
            vbd,
            fe,
            profile,
            faults,
            shadow: Shadow::for_sectors(DISK_BYTES / 512),
            rng: (seed ^ (index as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15)) | 1,
            guard,
        })
    }

    fn fail(&mut self, what: String) {
        if self.totals.failures.len() < 16 {
            self.totals
                .failures
                .push(format!("cycle {}: {what}", self.totals.cycles));
        }
    }

    /// One cycle: a workload (maybe with a fault or a resize), then maybe
    /// a reconnect or a detach and attach. `Err` when the guest cannot go
    /// on.
    fn cycle(&mut self) -> Result<(), String> {
        let r = next(&mut self.rng) % 100;
        let (fault, resize) = match r {
            0..=14 => (Fault::Store, false),
            15..=24 => (Fault::Grant, false),
            25..=39 => (Fault::None, true),
            _ => (Fault::None, false),
        };
        let mut sizes = vec![4096u32, 8192, 16384, 45056];
        if self.profile.max_indirect_segments > 0 {
            sizes.push(256 << 10);
        }
        let io_size = sizes[(next(&mut self.rng) % sizes.len() as u64) as usize];
        let wl = Workload {
            ops: 48 + next(&mut self.rng) % 160,
            io_size,
            random: next(&mut self.rng) % 4 != 0,
            read_pct: (30 + next(&mut self.rng) % 41) as u8,
            // The disk as created: a resize grows it only for a while.
            region_sectors: Some((0, DISK_BYTES / 512)),
            seed: next(&mut self.rng),
            verify_all_at_end: true,
        };
        let store_before = self.faults.counters().total();
        let grants = &self.fe.guest().grants;
        let grant_before = grants.stats().injected_failures;
        match fault {
            Fault::Store => {
                let nth = 1 + next(&mut self.rng) % 64;
                self.faults.fail_nth(nth, IoError::Io);
            }
            Fault::Grant => grants.inject_map_failures(MapFault::Next {
                count: 1,
                error: GrantError::General,
            }),
            Fault::None => {}
        }
        let result = if resize {
            self.workload_with_resize(&wl)
        } else {
            run_workload_shadowed(&mut self.fe, &wl, &AtomicBool::new(true), &mut self.shadow)
                .map_err(|e| format!("workload: {e}"))
        };
        self.faults.clear();
        let grants = &self.fe.guest().grants;
        grants.clear_map_failures();
        let fired = (self.faults.counters().total() - store_before)
            + (grants.stats().injected_failures - grant_before);
        self.totals.cycles += 1;
        self.totals.faults_fired += fired;
        let rep = match result {
            Ok(rep) => rep,
            Err(e) => {
                self.fail(e);
                return self.recover();
            }
        };
        self.account(&rep, fired);
        match next(&mut self.rng) % 100 {
            0..=14 => self.reconnect(),
            15..=21 => self.reattach(),
            _ => Ok(()),
        }
    }

    fn account(&mut self, rep: &WorkloadReport, fired: u64) {
        let t = &mut self.totals;
        t.requests += rep.requests;
        t.bytes_written += rep.bytes_written;
        t.bytes_verified += rep.bytes_checked;
        t.mismatches += rep.mismatches;
        t.error_responses += rep.error_responses;
        if rep.mismatches > 0 {
            let m = rep.first_mismatch.clone().unwrap_or_default();
            self.fail(format!(
                "{} sector(s) read back wrong; first: {m}",
                rep.mismatches
            ));
        }
        // A fault that fired fails the request whose grant it was, or the
        // requests of the store I/O: at least one, at most all in flight.
        let in_flight =
            u64::from(self.profile.queue_depth) * u64::from(self.fe.info().queues.max(1));
        let (lo, hi) = (fired, fired * in_flight);
        if rep.error_responses < lo || rep.error_responses > hi {
            self.fail(format!(
                "{} error response(s) for {fired} injected fault(s) that fired",
                rep.error_responses
            ));
        }
    }

    /// The workload, while another thread grows the medium by 1 MiB and
    /// shrinks it back (beyond the region the workload uses, which the
    /// guest learnt at connect).
    fn workload_with_resize(&mut self, wl: &Workload) -> Result<WorkloadReport, String> {
        let done = AtomicBool::new(false);
        let size = DISK_BYTES;
        let (world, vbd, guard) = (self.world, &self.vbd, self.guard);
        let before = world.stat(vbd, Stat::ReqsReceived);
        let (fe, shadow) = (&mut self.fe, &mut self.shadow);
        let (wr, rr) = std::thread::scope(|s| {
            let resizer = s.spawn(|| {
                let r = (|| {
                    world
                        .wait_backend(vbd, guard, |b| {
                            b.stats
                                .as_ref()
                                .is_some_and(|st| st.get(Stat::ReqsReceived) > before)
                        })
                        .map_err(|e| format!("the workload never started: {e}"))?;
                    for bytes in [size + (1 << 20), size] {
                        world
                            .resize_vbd(vbd, bytes)
                            .map_err(|e| format!("resize to {bytes}: {e}"))?;
                        let sectors = bytes / 512;
                        world
                            .wait_backend(vbd, guard, |b| {
                                b.medium.is_some_and(|m| m.sectors.0 == sectors)
                            })
                            .map_err(|e| format!("the back-end never saw {bytes} bytes: {e}"))?;
                    }
                    Ok(())
                })();
                if r.is_err() {
                    // Whatever happened, the disk goes back to its size.
                    let _ = world.resize_vbd(vbd, size);
                }
                done.store(true, Ordering::Release);
                r
            });
            let wr = run_workload_shadowed(fe, wl, &done, shadow);
            // A workload that failed early leaves the resizer waiting for
            // its hang guard at most.
            done.store(true, Ordering::Release);
            let rr: Result<(), String> = resizer
                .join()
                .unwrap_or_else(|_| Err(String::from("the resizer panicked")));
            (wr, rr)
        });
        self.totals.resizes += u64::from(rr.is_ok());
        if let Err(e) = rr {
            self.fail(e);
        }
        wr.map_err(|e| format!("workload during a resize: {e}"))
    }

    fn reconnect(&mut self) -> Result<(), String> {
        self.fe
            .disconnect()
            .map_err(|e| format!("disconnect: {e}"))?;
        self.fe.connect().map_err(|e| format!("reconnect: {e}"))?;
        self.totals.reconnects += 1;
        Ok(())
    }

    /// `xl block-detach` then `block-attach` of the same image: the
    /// front-end unplugs first, the instance goes with nothing leaked, a
    /// new one serves a new front-end.
    fn reattach(&mut self) -> Result<(), String> {
        self.fe
            .disconnect()
            .map_err(|e| format!("disconnect: {e}"))?;
        match self.world.destroy_vbd(&self.vbd) {
            Some(s) => {
                let h = &s.host;
                if s.error.is_some()
                    || h.leaked_at_release > 0
                    || h.bad_unmaps > 0
                    || h.bad_iovecs > 0
                    || h.window_mapped > 0
                    || h.store_open
                {
                    self.fail(format!("the detached instance was not clean: {s:?}"));
                }
            }
            None => return Err(String::from("the vbd was gone")),
        }
        self.vbd = self
            .world
            .create_vbd(&self.cfg)
            .map_err(|e| format!("attach: {e}"))?;
        let mut fe = Frontend::new(self.world, &self.vbd, self.profile.clone())
            .map_err(|e| format!("front-end: {e}"))?;
        fe.set_hang_guard(self.guard);
        fe.connect()
            .map_err(|e| format!("connect after attach: {e}"))?;
        self.fe = fe;
        self.totals.reattaches += 1;
        Ok(())
    }

    /// After a failed workload: start the connection over (what the failed
    /// workload's writes did is unknown to the shadow).
    fn recover(&mut self) -> Result<(), String> {
        let _ = self.fe.disconnect();
        self.fe.connect().map_err(|e| format!("recovery: {e}"))?;
        Ok(())
    }

    /// Reads the whole disk back against everything written.
    fn verify_all(&mut self) {
        let disk = self.fe.info().sectors;
        let wl = Workload {
            ops: disk * 512 / (64 << 10),
            io_size: 64 << 10,
            random: false,
            read_pct: 100,
            region_sectors: Some((0, DISK_BYTES / 512)),
            seed: 0,
            verify_all_at_end: false,
        };
        match run_workload_shadowed(&mut self.fe, &wl, &AtomicBool::new(true), &mut self.shadow) {
            Ok(rep) => {
                let before = self.totals.mismatches;
                self.account(&rep, 0);
                if self.totals.mismatches == before {
                    return;
                }
                self.fail(String::from("the final read of the whole disk"));
            }
            Err(e) => self.fail(format!("the final read of the whole disk: {e}")),
        }
    }

    /// Unplugs and detaches, checking nothing leaked.
    fn finish(mut self) -> GuestTotals {
        if let Err(e) = self.fe.disconnect() {
            self.fail(format!("final disconnect: {e}"));
        }
        if let Some(s) = self.world.destroy_vbd(&self.vbd) {
            if s.error.is_some() || s.host.leaked_at_release > 0 || s.host.bad_unmaps > 0 {
                self.fail(format!("the detached instance was not clean: {s:?}"));
            }
        }
        let dom = FIRST_DOM + self.index as DomId;
        drop(self.fe);
        if let Some(g) = self.world.grant_stats(dom) {
            if g.mapped > 0 {
                self.totals
                    .failures
                    .push(format!("grants left mapped at the end: {g:?}"));
            }
        }
        self.totals
    }
}

/// A directory removed when dropped, unless given.
struct Dir {
    path: PathBuf,
    remove: bool,
}

impl Drop for Dir {
    fn drop(&mut self) {
        if self.remove {
            let _ = std::fs::remove_dir_all(&self.path);
        }
    }
}

fn work_dir(given: Option<&Path>) -> std::io::Result<Dir> {
    if let Some(p) = given {
        std::fs::create_dir_all(p)?;
        return Ok(Dir {
            path: p.canonicalize()?,
            remove: false,
        });
    }
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    let p = std::env::temp_dir().join(format!("xbb-lab-soak-{}-{nanos:x}", std::process::id()));
    std::fs::create_dir(&p)?;
    Ok(Dir {
        path: p.canonicalize()?,
        remove: true,
    })
}

/// Runs a soak.
pub fn run(opts: &SoakOptions) -> Result<SoakReport, String> {
    if opts.guests < MIN_GUESTS {
        return Err(format!("a soak runs at least {MIN_GUESTS} guests"));
    }
    let started = Instant::now();
    let dir = work_dir(opts.dir.as_deref()).map_err(|e| format!("work directory: {e}"))?;
    let world = World::new();
    let progress = |m: String| {
        if opts.progress {
            eprintln!("[xbb-lab] soak {m}");
        }
    };
    let mut guests = Vec::new();
    for i in 0..opts.guests {
        guests.push(Guest::new(
            &world,
            i,
            &dir.path,
            opts.seed,
            opts.hang_guard,
        )?);
    }
    progress(format!(
        "{} guests connected ({}), images in {}, for {} s",
        guests.len(),
        Profile::NAMES.join(", "),
        dir.path.display(),
        opts.duration.as_secs()
    ));
    // Each minute; four samples in a shorter soak.
    let every = if opts.duration >= Duration::from_secs(240) {
        Duration::from_secs(60)
    } else {
        (opts.duration / 4).max(Duration::from_millis(500))
    };
    let gate = Gate::default();
    gate.lock().running = guests.len();
    let mut report = SoakReport {
        seed: opts.seed,
        ..SoakReport::default()
    };
    let totals: Vec<GuestTotals> = std::thread::scope(|s| {
        let handles: Vec<_> = guests
            .into_iter()
            .map(|mut g| {
                let gate = &gate;
                s.spawn(move || {
                    while gate.checkpoint() {
                        if let Err(e) = g.cycle() {
                            g.fail(e);
                            break;
                        }
                    }
                    gate.leave();
                    if g.fe.is_connected() {
                        g.verify_all();
                    }
                    g.finish()
                })
            })
            .collect();
        let mut at = every.min(opts.duration);
        loop {
            let now = started.elapsed();
            if at > now {
                std::thread::sleep(at - now);
            }
            let all = gate.pause_all(opts.hang_guard);
            let r = Resources::now(started.elapsed(), &dir.path, &world);
            if !all {
                report.problems.push(format!(
                    "at {}: not every guest stopped for the sample",
                    clock(r.at_secs)
                ));
            }
            gate.resume();
            progress(format!(
                "{}: rss {} (heap {}, guest RAM {}), {} fds ({} store files), {} threads",
                clock(r.at_secs),
                mib_kib(r.rss_kib),
                mib_kib(r.anon_kib),
                mib_kib(r.shmem_kib),
                r.fds,
                r.store_fds,
                r.threads
            ));
            report.samples.push(r);
            if at >= opts.duration {
                break;
            }
            // The next whole interval still ahead (a slow stop may have
            // passed one), the end at the latest.
            let done = started.elapsed().as_millis() / every.as_millis().max(1);
            let k = u32::try_from(done + 1).unwrap_or(u32::MAX);
            at = (every * k).max(at + every).min(opts.duration);
        }
        gate.stop();
        handles
            .into_iter()
            .map(|h| {
                h.join().unwrap_or_else(|_| GuestTotals {
                    failures: vec![String::from("the guest's thread panicked")],
                    ..GuestTotals::default()
                })
            })
            .collect()
    });
    report.guests = totals;
    report.check_growth();
    let _ = world.shutdown();
    report.seconds = started.elapsed().as_secs_f64();
    Ok(report)
}
