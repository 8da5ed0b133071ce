//! `xbb-lab bench`: the same workload served through xbb (a simulated
//! front-end, the shared ring of `io/ring.h`, `io/blkif.h` requests, grant
//! mapping, coalescing, the file store) and issued directly on the backing
//! file (`pread`/`pwrite` from a pool of threads at the same queue depth),
//! in the same run, on the same kind of file; it prints MiB/s and IOPS for
//! both and the ratio xbb/raw.
//!
//! Some cases come in pairs that show what a negotiated feature buys: the
//! same front-end and workload with the feature offered and with the
//! back-end's tunable turning it off (indirect segments of `io/blkif.h`'s
//! `feature-max-indirect-segments`, `feature-persistent` grants,
//! `multi-queue-max-queues`); the feature-on case also prints on/off, its
//! throughput over the feature-off case's. The two cases of a pair take
//! turns repetition by repetition, so that the machine's moods fall on
//! both alike.
//!
//! The guest drives each queue from a thread of its own
//! ([`run_workload_per_queue`]). Grants are mapped the faulting way
//! ([`GrantMapping::Faulting`]), as in every scenario and test, except in
//! the multi-queue pairs, which are [`GrantMapping::Premapped`] so that
//! they measure the back-end's queues and not the simulator's mmap lock;
//! the report names each case's mode, and [`BenchOptions::grant_mapping`]
//! sets one for every case.
//!
//! A benchmark, not a test: nothing here asserts a number.

use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use std::{eprintln, format, vec};

use super::frontend::{run_workload_per_queue, Frontend, Profile, Workload};
use super::host::GrantMapping;
use super::scenario::create_sparse_image;
use super::store::StoreKind;
use super::world::{VbdConfig, World};
use xbb::stats::{Stat, Tunable, Tunables};

/// Options of a benchmark run.
#[derive(Clone, Debug, Default)]
pub struct BenchOptions {
    /// I/Os per case (each case has its own default).
    pub ops: Option<u64>,
    /// Run each side of each case for about this long instead.
    pub duration: Option<Duration>,
    /// Where the image goes (a temporary directory on the default temporary
    /// file system otherwise). Use a real disk, not tmpfs.
    pub dir: Option<PathBuf>,
    /// Progress on stderr.
    pub progress: bool,
    /// Only the cases whose name contains one of these (and the cases
    /// they are compared with); every case when empty.
    pub cases: Vec<String>,
    /// Repetitions of each case, the xbb and raw sides interleaved
    /// (xbb, raw, xbb, raw, ...); each side's median is reported.
    /// [`DEFAULT_REPS`] when `None`.
    pub reps: Option<usize>,
    /// How every case maps grants, instead of its own choice (faulting,
    /// except the multi-queue cases: premapped).
    pub grant_mapping: Option<GrantMapping>,
}

/// Repetitions of each case unless [`BenchOptions::reps`] says otherwise.
pub const DEFAULT_REPS: usize = 3;

/// One measured side of a case.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Measure {
    /// I/Os completed.
    pub ios: u64,
    /// Bytes moved.
    pub bytes: u64,
    /// Wall time, seconds.
    pub seconds: f64,
}

impl Measure {
    /// MiB per second.
    pub fn mib_s(&self) -> f64 {
        if self.seconds > 0.0 {
            self.bytes as f64 / self.seconds / (1024.0 * 1024.0)
        } else {
            0.0
        }
    }

    /// I/Os per second.
    pub fn iops(&self) -> f64 {
        if self.seconds > 0.0 {
            self.ios as f64 / self.seconds
        } else {
            0.0
        }
    }
}

/// One case's result.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct CaseResult {
    /// Short name.
    pub name: String,
    /// What it does.
    pub what: String,
    /// Queue depth of both sides.
    pub queue_depth: u32,
    /// Through xbb: the repetition of median throughput.
    pub xbb: Measure,
    /// Directly on the file: the repetition of median throughput.
    pub raw: Measure,
    /// Every repetition's MiB/s through xbb, in the order run.
    pub xbb_runs: Vec<f64>,
    /// Every repetition's MiB/s on the file, in the order run.
    pub raw_runs: Vec<f64>,
    /// The back-end's `total_dispatch` divided by `reqs_received`.
    pub dispatch_per_request: f64,
    /// Requests the back-end received.
    pub requests: u64,
    /// What the front-end and the back-end negotiated (queues, indirect
    /// segments, persistent grants).
    pub negotiated: String,
    /// The case run with the feature off, for a feature-on case.
    pub baseline: Option<String>,
    /// Throughput of this case over its `baseline`'s (xbb side).
    pub feature_ratio: Option<f64>,
    /// How the simulated host mapped grants ([`GrantMapping::name`]).
    pub grant_mapping: String,
    /// Threads the guest drove its queues from (one per queue).
    pub frontend_threads: u32,
    /// Why the xbb side failed, if it did.
    pub error: Option<String>,
}

impl CaseResult {
    /// Throughput of xbb relative to the raw file.
    pub fn ratio(&self) -> f64 {
        let raw = self.raw.mib_s();
        if raw > 0.0 {
            self.xbb.mib_s() / raw
        } else {
            0.0
        }
    }
}

/// What the report says of a case run with [`GrantMapping::Faulting`].
const FAULTING_NOTE: &str = "\
grants faulting: each grant map is an mmap of the guest's frame into the back-end's window
  and each unmap a PROT_NONE mmap over it, so a stray touch faults (as in every scenario
  and test); each takes the process's one mmap lock and shoots down the other threads' TLBs.";

/// What the report says of a case run with [`GrantMapping::Premapped`].
const PREMAPPED_NOTE: &str = "\
grants premapped: the guest's RAM is mapped into the back-end once and a grant map only
  does the grant table's checks (granted, to this domain, writable, frame in RAM) and
  records the frame, so that queues are measured and not the simulator's mmap lock,
  which serializes them where Xen's grant table would not (--grant-mapping: every case).";

/// What the report says when a guest drove queues from several threads.
const THREADS_NOTE: &str = "\
A multi-queue guest drives each queue from a thread of its own, as blk-mq on a
  multi-vCPU guest does, each over its own slice of the image.";

/// Every case's result.
#[derive(Clone, Debug, Default)]
pub struct BenchReport {
    /// Where the image was.
    pub dir: String,
    /// The cases, in order.
    pub cases: Vec<CaseResult>,
}

impl BenchReport {
    /// The readable table.
    pub fn render_text(&self) -> String {
        use std::fmt::Write as _;
        let mut o = String::new();
        let reps = self
            .cases
            .iter()
            .map(|c| c.xbb_runs.len())
            .max()
            .unwrap_or(0);
        let _ = writeln!(
            o,
            "xbb-lab bench: image in {}; medians of {reps} repetitions, xbb and raw (and a pair's two cases) interleaved",
            self.dir
        );
        let _ = writeln!(
            o,
            "{:<26} {:>3} {:>10} {:>10} {:>10} {:>10} {:>8} {:>7} {:>9}  total_dispatch per request",
            "case",
            "QD",
            "xbb MiB/s",
            "xbb IOPS",
            "raw MiB/s",
            "raw IOPS",
            "xbb/raw",
            "on/off",
            "grants"
        );
        for c in &self.cases {
            let _ = writeln!(
                o,
                "{:<26} {:>3} {:>10.1} {:>10.0} {:>10.1} {:>10.0} {:>8.2} {:>7} {:>9}  {:.3} ({} requests)",
                c.name,
                c.queue_depth,
                c.xbb.mib_s(),
                c.xbb.iops(),
                c.raw.mib_s(),
                c.raw.iops(),
                c.ratio(),
                c.feature_ratio
                    .map_or_else(|| String::from("-"), |r| format!("{r:.2}")),
                c.grant_mapping,
                c.dispatch_per_request,
                c.requests
            );
            if let Some(e) = &c.error {
                let _ = writeln!(o, "  xbb side failed: {e}");
            }
        }
        let pairs: Vec<&CaseResult> = self.cases.iter().filter(|c| c.baseline.is_some()).collect();
        if !pairs.is_empty() {
            let _ = writeln!(o);
            let _ = writeln!(
                o,
                "on/off: xbb throughput with the feature over the same case without it"
            );
            for c in pairs {
                let base = c.baseline.as_deref().unwrap_or_default();
                let base_neg = self
                    .cases
                    .iter()
                    .find(|b| b.name == base)
                    .map_or("", |b| b.negotiated.as_str());
                let _ = writeln!(
                    o,
                    "  {:<24} vs {:<24} {:>6}   ({} / {})",
                    c.name,
                    base,
                    c.feature_ratio
                        .map_or_else(|| String::from("-"), |r| format!("{r:.2}x")),
                    c.negotiated,
                    base_neg
                );
            }
        }
        let _ = writeln!(o);
        let used = |m: GrantMapping| self.cases.iter().any(|c| c.grant_mapping == m.name());
        if used(GrantMapping::Faulting) {
            let _ = writeln!(o, "{FAULTING_NOTE}");
        }
        if used(GrantMapping::Premapped) {
            let _ = writeln!(o, "{PREMAPPED_NOTE}");
        }
        if self.cases.iter().any(|c| c.frontend_threads > 1) {
            let _ = writeln!(o, "{THREADS_NOTE}");
        }
        o
    }

    /// The results as JSON.
    pub fn to_json(&self) -> serde_json::Value {
        let side = |m: &Measure| {
            serde_json::json!({
                "mib_s": m.mib_s(),
                "iops": m.iops(),
                "ios": m.ios,
                "bytes": m.bytes,
                "seconds": m.seconds,
            })
        };
        serde_json::json!({
            "dir": self.dir,
            "cases": self.cases.iter().map(|c| serde_json::json!({
                "name": c.name,
                "what": c.what,
                "queue_depth": c.queue_depth,
                "xbb": side(&c.xbb),
                "raw": side(&c.raw),
                "ratio": c.ratio(),
                "xbb_mib_s_runs": c.xbb_runs,
                "raw_mib_s_runs": c.raw_runs,
                "total_dispatch_per_request": c.dispatch_per_request,
                "requests": c.requests,
                "baseline": c.baseline,
                "negotiated": c.negotiated,
                "grant_mapping": c.grant_mapping,
                "frontend_threads": c.frontend_threads,
                "feature_ratio": c.feature_ratio,
                "error": c.error,
            })).collect::<Vec<_>>(),
        })
    }

    /// The ratios to draw ([`crate::chart`]): every case's xbb/raw, and
    /// each feature case's on/off.
    pub fn chart_bars(&self) -> Vec<crate::chart::Bar> {
        let mut bars = Vec::new();
        for c in self.cases.iter().filter(|c| c.error.is_none()) {
            bars.push(crate::chart::Bar {
                group: c.name.clone(),
                series: String::from("xbb / raw file"),
                value: c.ratio(),
            });
            if let Some(f) = c.feature_ratio {
                bars.push(crate::chart::Bar {
                    group: c.name.clone(),
                    series: String::from("feature on / off"),
                    value: f,
                });
            }
        }
        bars
    }

    /// Whether every case ran.
    pub fn ok(&self) -> bool {
        self.cases.iter().all(|c| c.error.is_none())
    }
}

/// One benchmark case.
struct Case {
    name: &'static str,
    what: &'static str,
    profile: &'static str,
    /// Requests in flight in all (the raw side's threads).
    queue_depth: u32,
    /// Requests the front-end keeps in flight per queue.
    fe_queue_depth: u32,
    io_size: u32,
    random: bool,
    read: bool,
    /// `hw.xbb.*` tunables of the back-end instance.
    tunables: &'static [(Tunable, u64)],
    /// The same case with the feature off (an earlier case's name).
    baseline: Option<&'static str>,
    default_ops: u64,
    /// The front-end uses persistent grants (whatever its profile says).
    persistent: Option<bool>,
    /// How the simulated host maps grants.
    grants: GrantMapping,
}

const PLAIN: Case = Case {
    name: "",
    what: "",
    profile: "linux",
    queue_depth: 32,
    fe_queue_depth: 32,
    io_size: 4096,
    random: true,
    read: true,
    tunables: &[],
    baseline: None,
    default_ops: 20000,
    persistent: None,
    grants: GrantMapping::Faulting,
};

/// 44 KiB sequential writes from a legacy front-end: the coalescing pair.
const LEGACY_44K: Case = Case {
    profile: "legacy",
    queue_depth: 8,
    fe_queue_depth: 8,
    io_size: 45056,
    random: false,
    read: false,
    default_ops: 4000,
    ..PLAIN
};

/// The indirect front-end's 1 MiB sequential reads (the write cases set
/// `read: false`).
const INDIRECT_1M: Case = Case {
    profile: "indirect",
    queue_depth: 8,
    fe_queue_depth: 8,
    io_size: 1 << 20,
    random: false,
    default_ops: 1024,
    ..PLAIN
};

const CASES: [Case; 11] = [
    Case {
        name: "4k-randread-qd32",
        what: "4 KiB random reads, queue depth 32",
        ..PLAIN
    },
    Case {
        name: "1m-seqread",
        what: "1 MiB sequential reads",
        io_size: 1 << 20,
        random: false,
        default_ops: 256,
        ..PLAIN
    },
    Case {
        name: "1m-seqwrite",
        what: "1 MiB sequential writes",
        io_size: 1 << 20,
        random: false,
        read: false,
        default_ops: 256,
        ..PLAIN
    },
    Case {
        name: "44k-seqwrite-nocoalesce",
        what: "44 KiB sequential writes, legacy front-end, coalescing off",
        tunables: &[(Tunable::NoCoalesceReqs, 1)],
        ..LEGACY_44K
    },
    Case {
        name: "44k-seqwrite-coalesce",
        what: "44 KiB sequential writes, legacy front-end, coalescing on",
        baseline: Some("44k-seqwrite-nocoalesce"),
        ..LEGACY_44K
    },
    Case {
        name: "1m-seqwrite-11seg",
        what: "1 MiB sequential writes, indirect front-end, hw.xbb.max_indirect_segments = 0: 11-segment requests",
        read: false,
        tunables: &[(Tunable::MaxIndirectSegments, 0)],
        ..INDIRECT_1M
    },
    Case {
        name: "1m-seqwrite-indirect256",
        what: "1 MiB sequential writes, indirect front-end, 256 indirect segments: one request per I/O",
        read: false,
        baseline: Some("1m-seqwrite-11seg"),
        ..INDIRECT_1M
    },
    Case {
        name: "1m-seqread-11seg",
        what: "1 MiB sequential reads, indirect front-end, hw.xbb.max_indirect_segments = 0: 11-segment requests",
        tunables: &[(Tunable::MaxIndirectSegments, 0)],
        ..INDIRECT_1M
    },
    Case {
        name: "1m-seqread-indirect256",
        what: "1 MiB sequential reads, indirect front-end, 256 indirect segments: one request per I/O",
        baseline: Some("1m-seqread-11seg"),
        ..INDIRECT_1M
    },
    Case {
        name: "4k-randread-nopersistent",
        what: "4 KiB random reads QD 32, persistent front-end, hw.xbb.max_persistent_grants = 0: a grant map and unmap per request",
        profile: "persistent",
        tunables: &[(Tunable::MaxPersistentGrants, 0)],
        default_ops: 100_000,
        ..PLAIN
    },
    Case {
        name: "4k-randread-persistent",
        what: "4 KiB random reads QD 32, persistent grants: pages mapped once and reused",
        profile: "persistent",
        baseline: Some("4k-randread-nopersistent"),
        default_ops: 100_000,
        ..PLAIN
    },
];

/// The multi-queue pairs (a separate table: the two sides differ in their
/// front-end's per-queue depth), without and with persistent grants.
/// They measure whether the back-end's queues serve in parallel, so the
/// simulator's own serial parts are kept out of them:
///
/// - The guest drives each queue from a thread of its own, as blk-mq on a
///   multi-vCPU Linux guest does, each over its own slice of the image
///   (one guest thread for four rings made every request cross it).
/// - Grants are [`GrantMapping::Premapped`]: the guest's RAM is mapped
///   into the back-end once and a grant map is the grant table's checks
///   and a note of the frame. With [`GrantMapping::Faulting`] each map is
///   an `mmap` of the guest's memory file and each unmap another, each
///   taking the process's one mmap lock for writing and shooting down
///   the TLBs of the CPUs running its other threads, so that the queues'
///   threads mostly waited for each other in the simulated grant table
///   (half of all samples without persistent grants), where xbb.ko maps
///   with a hypercall per batch and no such lock. What the premapped mode
///   gives up is only the fault of a stray touch outside a live mapping,
///   which every scenario and test still catch; `--grant-mapping
///   faulting` measures the pairs the old way.
const QUEUE_CASES: [Case; 4] = [
    Case {
        name: "4k-randread-1queue",
        what: "4 KiB random reads QD 32, multi-queue front-end, hw.xbb.max_queues = 1: one ring",
        profile: "multiqueue",
        tunables: &[(Tunable::MaxQueues, 1)],
        default_ops: 100_000,
        grants: GrantMapping::Premapped,
        ..PLAIN
    },
    Case {
        name: "4k-randread-4queues",
        what: "4 KiB random reads QD 32, 4 queues of 8: four rings, four event channels",
        profile: "multiqueue",
        fe_queue_depth: 8,
        baseline: Some("4k-randread-1queue"),
        default_ops: 100_000,
        grants: GrantMapping::Premapped,
        ..PLAIN
    },
    Case {
        name: "4k-randread-persistent-1queue",
        what: "4 KiB random reads QD 32, multi-queue front-end with persistent grants, hw.xbb.max_queues = 1",
        profile: "multiqueue",
        tunables: &[(Tunable::MaxQueues, 1)],
        default_ops: 100_000,
        persistent: Some(true),
        grants: GrantMapping::Premapped,
        ..PLAIN
    },
    Case {
        name: "4k-randread-persistent-4queues",
        what: "4 KiB random reads QD 32, 4 queues of 8, persistent grants",
        profile: "multiqueue",
        fe_queue_depth: 8,
        baseline: Some("4k-randread-persistent-1queue"),
        default_ops: 100_000,
        persistent: Some(true),
        grants: GrantMapping::Premapped,
        ..PLAIN
    },
];

/// Size of the benchmark image.
const IMAGE_SIZE: u64 = 256 << 20;

/// Runs every case.
pub fn run(opts: &BenchOptions) -> Result<BenchReport, String> {
    let (dir, remove) = match &opts.dir {
        Some(d) => (d.clone(), false),
        None => (
            std::env::temp_dir().join(format!("xbb-bench-{}", std::process::id())),
            true,
        ),
    };
    std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let image = dir.join("bench.img");
    let result = run_in(opts, &dir, &image);
    let _ = std::fs::remove_file(&image);
    if remove {
        let _ = std::fs::remove_dir(&dir);
    }
    result
}

fn run_in(opts: &BenchOptions, dir: &Path, image: &Path) -> Result<BenchReport, String> {
    // Written (not sparse) zeros, so that both sides read allocated blocks
    // and the front-end's check of read data (zeros expected) holds.
    create_sparse_image(image, 0).map_err(|e| format!("{}: {e}", image.display()))?;
    fill_zeros(image, IMAGE_SIZE).map_err(|e| format!("{}: {e}", image.display()))?;
    let mut report = BenchReport {
        dir: dir.display().to_string(),
        cases: Vec::new(),
    };
    let reps = opts.reps.unwrap_or(DEFAULT_REPS).max(1);
    let all: Vec<&Case> = CASES.iter().chain(QUEUE_CASES.iter()).collect();
    let picked = |c: &Case| opts.cases.is_empty() || opts.cases.iter().any(|w| c.name.contains(w));
    let wanted =
        |c: &Case| picked(c) || all.iter().any(|o| picked(o) && o.baseline == Some(c.name));
    let chosen: Vec<&Case> = all.iter().copied().filter(|c| wanted(c)).collect();
    let mut zeros = Zeros {
        image,
        dirty: false,
    };
    let mut i = 0;
    while i < chosen.len() {
        // A feature case follows its baseline: the two run as one unit.
        let n = if chosen
            .get(i + 1)
            .is_some_and(|c| c.baseline == Some(chosen[i].name))
        {
            2
        } else {
            1
        };
        for mut r in run_unit(&chosen[i..i + n], opts, reps, &mut zeros)? {
            if let Some(b) = r.baseline.as_deref() {
                r.feature_ratio = report
                    .cases
                    .iter()
                    .find(|c| c.name == b && c.error.is_none())
                    .filter(|c| c.xbb.mib_s() > 0.0 && r.error.is_none())
                    .map(|c| r.xbb.mib_s() / c.xbb.mib_s());
            }
            if opts.progress {
                eprintln!(
                    "[xbb-lab bench] {}: xbb {:.1} MiB/s, raw {:.1} MiB/s, ratio {:.2}",
                    r.name,
                    r.xbb.mib_s(),
                    r.raw.mib_s(),
                    r.ratio()
                );
            }
            report.cases.push(r);
        }
        i += n;
    }
    Ok(report)
}

/// The image's zeros: reads check that the data is zero, so what a write
/// case wrote is zeroed again before the next read case.
struct Zeros<'a> {
    image: &'a Path,
    dirty: bool,
}

impl Zeros<'_> {
    /// Before a run of `case`.
    fn before(&mut self, case: &Case) -> Result<(), String> {
        if case.read && self.dirty {
            fill_zeros(self.image, IMAGE_SIZE)
                .map_err(|e| format!("{}: {e}", self.image.display()))?;
            self.dirty = false;
        }
        self.dirty |= !case.read;
        Ok(())
    }
}

/// Runs `unit` (a case, or a baseline and its feature case) `reps` times.
/// Every side of every case takes turns (xbb, raw, the next case's xbb,
/// raw, ..., then the next repetition), so that what else the machine does
/// falls on all of them alike, the on/off ratio included; each side's
/// median repetition is the result.
fn run_unit(
    unit: &[&Case],
    opts: &BenchOptions,
    reps: usize,
    zeros: &mut Zeros<'_>,
) -> Result<Vec<CaseResult>, String> {
    let mut results: Vec<(CaseResult, Vec<Measure>, Vec<Measure>)> = Vec::new();
    for case in unit {
        if opts.progress {
            eprintln!("[xbb-lab bench] {}: {} ...", case.name, case.what);
        }
        let grants = opts.grant_mapping.unwrap_or(case.grants);
        let r = CaseResult {
            name: case.name.to_string(),
            what: case.what.to_string(),
            queue_depth: case.queue_depth,
            baseline: case.baseline.map(str::to_string),
            grant_mapping: grants.name().to_string(),
            ..CaseResult::default()
        };
        results.push((r, Vec::new(), Vec::new()));
    }
    for _ in 0..reps {
        for (case, (r, xbb_runs, raw_runs)) in unit.iter().zip(results.iter_mut()) {
            if r.error.is_some() {
                continue;
            }
            let ops = opts.ops.unwrap_or(case.default_ops).max(1);
            let grants = opts.grant_mapping.unwrap_or(case.grants);
            zeros.before(case)?;
            match run_xbb(case, grants, zeros.image, ops, opts.duration) {
                Ok(x) => {
                    r.negotiated = x.negotiated;
                    r.frontend_threads = x.threads;
                    r.requests = x.received;
                    r.dispatch_per_request = if x.received > 0 {
                        x.dispatched as f64 / x.received as f64
                    } else {
                        0.0
                    };
                    xbb_runs.push(x.measure);
                }
                Err(e) => {
                    r.error = Some(e);
                    continue;
                }
            }
            raw_runs.push(
                run_raw(case, zeros.image, ops, opts.duration).map_err(|e| format!("raw: {e}"))?,
            );
        }
    }
    Ok(results
        .into_iter()
        .map(|(mut r, xbb_runs, raw_runs)| {
            r.xbb_runs = xbb_runs.iter().map(Measure::mib_s).collect();
            r.raw_runs = raw_runs.iter().map(Measure::mib_s).collect();
            r.xbb = median(xbb_runs);
            r.raw = median(raw_runs);
            r
        })
        .collect())
}

/// The run of median throughput (the lower of the two middle ones for an
/// even count); an empty measure for none.
fn median(mut runs: Vec<Measure>) -> Measure {
    runs.sort_by(|a, b| a.mib_s().total_cmp(&b.mib_s()));
    match runs.len() {
        0 => Measure::default(),
        n => runs.swap_remove((n - 1) / 2),
    }
}

fn fill_zeros(path: &Path, size: u64) -> std::io::Result<()> {
    let f = OpenOptions::new().write(true).open(path)?;
    let buf = vec![0u8; 1 << 20];
    let mut off = 0;
    while off < size {
        f.write_all_at(&buf, off)?;
        off += buf.len() as u64;
    }
    f.sync_all()
}

/// What one run of the xbb side measured and found.
struct XbbRun {
    measure: Measure,
    /// `reqs_received`.
    received: u64,
    /// `total_dispatch`.
    dispatched: u64,
    /// What the two ends negotiated.
    negotiated: String,
    /// Threads the guest drove its queues from.
    threads: u32,
}

/// The xbb side, its grants mapped the `grants` way.
fn run_xbb(
    case: &Case,
    grants: GrantMapping,
    image: &Path,
    ops: u64,
    duration: Option<Duration>,
) -> Result<XbbRun, String> {
    let world = World::new();
    world
        .add_guest(1, 8192)
        .map_err(|e| format!("guest: {e}"))?;
    let mut tunables = Tunables::default();
    for &(t, v) in case.tunables {
        tunables
            .set(t, v)
            .map_err(|e| format!("tunable {}: {e:?}", t.desc().name))?;
    }
    let cfg = VbdConfig {
        kind: StoreKind::File,
        tunables,
        grant_mapping: grants,
        ..VbdConfig::file(1, image)
    };
    let vbd = world.create_vbd(&cfg).map_err(|e| format!("vbd: {e}"))?;
    let mut profile = Profile::by_name(case.profile).ok_or("profile")?;
    profile.queue_depth = case.fe_queue_depth;
    if let Some(p) = case.persistent {
        profile.persistent = p;
    }
    let mut fe = Frontend::new(&world, &vbd, profile).map_err(|e| e.to_string())?;
    let info = fe.connect().map_err(|e| e.to_string())?;
    let negotiated = format!(
        "{} queue(s), indirect {}, persistent {}",
        info.queues,
        info.max_indirect_segments,
        if info.persistent { "on" } else { "off" }
    );
    let wl = Workload {
        ops,
        io_size: case.io_size,
        random: case.random,
        read_pct: if case.read { 100 } else { 0 },
        region_sectors: None,
        seed: 7,
        verify_all_at_end: false,
    };
    let mut m = Measure::default();
    let start = Instant::now();
    loop {
        let r = run_workload_per_queue(&mut fe, &wl).map_err(|e| e.to_string())?;
        if r.error_responses > 0 || r.mismatches > 0 {
            return Err(format!(
                "{} error responses, {} mismatched sectors",
                r.error_responses, r.mismatches
            ));
        }
        // I/Os as the raw side counts them (a 1 MiB I/O is many requests).
        let bytes = r.bytes_read + r.bytes_written;
        m.ios += bytes / u64::from(case.io_size);
        m.bytes += bytes;
        if duration.is_none_or(|d| start.elapsed() >= d) {
            break;
        }
    }
    m.seconds = start.elapsed().as_secs_f64();
    let stats = world.backend_stats(&vbd);
    let _ = fe.disconnect();
    drop(fe);
    let _ = world.shutdown();
    Ok(XbbRun {
        measure: m,
        received: stats.get(Stat::ReqsReceived),
        dispatched: stats.get(Stat::TotalDispatch),
        negotiated,
        // run_workload_per_queue: a thread per queue.
        threads: info.queues,
    })
}

/// The raw side: `queue_depth` threads issue `pread`/`pwrite` directly on
/// the file, taking I/O numbers from a shared counter.
fn run_raw(
    case: &Case,
    image: &Path,
    ops: u64,
    duration: Option<Duration>,
) -> std::io::Result<Measure> {
    let file = Arc::new(OpenOptions::new().read(true).write(true).open(image)?);
    let slots = (IMAGE_SIZE / u64::from(case.io_size)).max(1);
    let start = Instant::now();
    let mut total = Measure::default();
    loop {
        let next = Arc::new(AtomicU64::new(0));
        let handles: Vec<_> = (0..case.queue_depth)
            .map(|t| {
                let file: Arc<File> = Arc::clone(&file);
                let next = Arc::clone(&next);
                let (io, random, read) = (case.io_size as usize, case.random, case.read);
                std::thread::spawn(move || -> std::io::Result<u64> {
                    let mut buf = vec![0u8; io];
                    let mut rng = 0x9E37_79B9_7F4A_7C15u64 ^ u64::from(t);
                    let mut done = 0;
                    loop {
                        let i = next.fetch_add(1, Ordering::Relaxed);
                        if i >= ops {
                            return Ok(done);
                        }
                        let slot = if random {
                            rng ^= rng << 13;
                            rng ^= rng >> 7;
                            rng ^= rng << 17;
                            rng % slots
                        } else {
                            i % slots
                        };
                        let off = slot * io as u64;
                        if read {
                            file.read_exact_at(&mut buf, off)?;
                        } else {
                            buf[..8].copy_from_slice(&i.to_le_bytes());
                            file.write_all_at(&buf, off)?;
                        }
                        done += 1;
                    }
                })
            })
            .collect();
        for h in handles {
            let n = h
                .join()
                .map_err(|_| std::io::Error::other("raw I/O thread panicked"))??;
            total.ios += n;
            total.bytes += n * u64::from(case.io_size);
        }
        if duration.is_none_or(|d| start.elapsed() >= d) {
            break;
        }
    }
    total.seconds = start.elapsed().as_secs_f64();
    Ok(total)
}
