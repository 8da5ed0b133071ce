//! The report `xbb-lab` prints: every instance's limits and counters,
//! the workloads' totals, and every mismatch.

use super::*;

/// What the workloads of one guest did, summed over the scenario.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct IoTotals {
    /// Workload steps run.
    pub workloads: u64,
    /// Successful read requests.
    pub reads: u64,
    /// Successful write requests.
    pub writes: u64,
    /// Successful flush and barrier requests.
    pub flushes: u64,
    /// Bytes read.
    pub bytes_read: u64,
    /// Bytes written.
    pub bytes_written: u64,
    /// Bytes compared against what the guest wrote.
    pub bytes_checked: u64,
    /// 512-byte sectors that differed.
    pub mismatches: u64,
    /// The first mismatch, described.
    pub first_mismatch: Option<String>,
    /// Responses with an error status.
    pub error_responses: u64,
    /// Seconds spent in workloads.
    pub seconds: f64,
    /// A workload that could not run to its end, and why.
    pub failure: Option<String>,
    /// Power cuts of `crash` steps.
    pub power_cuts: u64,
    /// Writes that had to survive a cut (answered before a completed
    /// flush or barrier was issued, or ordered before a completed barrier).
    pub crash_durable: u64,
    /// Sectors checked after cuts.
    pub crash_sectors_checked: u64,
    /// Crash-consistency rules found broken.
    pub crash_violations: u64,
    /// The first one, described.
    pub first_crash_violation: Option<String>,
}

impl IoTotals {
    /// Requests per second over the workloads.
    pub fn iops(&self) -> f64 {
        if self.seconds > 0.0 {
            (self.reads + self.writes + self.flushes) as f64 / self.seconds
        } else {
            0.0
        }
    }

    /// MiB/s read plus written over the workloads.
    pub fn mib_per_s(&self) -> f64 {
        if self.seconds > 0.0 {
            (self.bytes_read + self.bytes_written) as f64 / self.seconds / MIB
        } else {
            0.0
        }
    }

    /// Whether every byte read back was what had been written.
    pub fn verify_ok(&self) -> bool {
        self.mismatches == 0 && self.failure.is_none()
    }
}

pub(super) const MIB: f64 = 1024.0 * 1024.0;

/// One instance in the report.
#[derive(Clone, Debug)]
pub struct InstanceReport {
    /// The guest's name.
    pub name: String,
    /// `N` of `dev.xbb.N`.
    pub unit: usize,
    /// The front-end profile.
    pub profile: String,
    /// `file` or `device`.
    pub store: &'static str,
    /// Medium size in bytes.
    pub size: u64,
    /// Logical sector size.
    pub sector_size: u32,
    /// Read-only medium.
    pub read_only: bool,
    /// The back-end's XenBus state at the end.
    pub state: XenbusState,
    /// The back-end's `error` node, if any.
    pub error: Option<String>,
    /// Every `dev.xbb.N` node, in [`SYSCTLS`] order.
    pub sysctl: Vec<(&'static str, u64)>,
    /// Per queue of the connection at the end (none when not connected):
    /// every per-queue node (`dev.xbb.N.queue.Q.<leaf>`), in [`SYSCTLS`]
    /// order.
    pub queues: Vec<Vec<(&'static str, u64)>>,
    /// The workloads' totals.
    pub io: IoTotals,
}

/// An expectation that did not hold.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Mismatch {
    /// 1-based step number (0: setup or teardown).
    pub step: usize,
    /// The step's `do`.
    pub action: String,
    /// The guest concerned, if one.
    pub guest: Option<String>,
    /// What was expected and what was found.
    pub what: String,
}

impl fmt::Display for Mismatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.step == 0 {
            write!(f, "setup")?;
        } else {
            write!(f, "step {} ({})", self.step, self.action)?;
        }
        if let Some(g) = &self.guest {
            write!(f, " guest {g}")?;
        }
        write!(f, ": {}", self.what)
    }
}

/// The outcome of one scenario.
#[derive(Clone, Debug)]
pub struct Report {
    /// The scenario's name.
    pub scenario: String,
    /// Every instance, in guest order.
    pub instances: Vec<InstanceReport>,
    /// Every expectation that did not hold.
    pub mismatches: Vec<Mismatch>,
    /// Expectations checked.
    pub checks: u64,
    /// Wall time of the whole scenario, seconds.
    pub seconds: f64,
}

impl Report {
    /// Whether every guest's data verified.
    pub fn verify_ok(&self) -> bool {
        self.instances.iter().all(|i| i.io.verify_ok())
    }

    /// Bytes verified over every guest.
    pub fn bytes_checked(&self) -> u64 {
        self.instances.iter().map(|i| i.io.bytes_checked).sum()
    }

    /// Whether the scenario passed: every expectation held and every byte
    /// verified.
    pub fn passed(&self) -> bool {
        self.mismatches.is_empty() && self.verify_ok()
    }

    /// The readable report.
    pub fn render_text(&self) -> String {
        use std::fmt::Write as _;
        let mut o = String::new();
        let _ = writeln!(
            o,
            "xbb-lab: scenario {:?}: {} instance(s), {:.1} s",
            self.scenario,
            self.instances.len(),
            self.seconds
        );
        for i in &self.instances {
            let _ = writeln!(o);
            let _ = writeln!(
                o,
                "dev.xbb.{}: guest {:?}, profile {}, {} store, {}, {}-byte sectors, {}",
                i.unit,
                i.name,
                i.profile,
                i.store,
                human_bytes(i.size),
                i.sector_size,
                if i.read_only {
                    "read-only"
                } else {
                    "read-write"
                }
            );
            let _ = writeln!(o, "  state: {}", state_name(i.state));
            if let Some(e) = &i.error {
                let _ = writeln!(o, "  error: {e}");
            }
            for (name, v) in &i.sysctl {
                let _ = writeln!(o, "  dev.xbb.{}.{name}: {v}", i.unit);
            }
            if i.queues.len() > 1 {
                for (q, nodes) in i.queues.iter().enumerate() {
                    for (name, v) in nodes {
                        let _ = writeln!(o, "  dev.xbb.{}.queue.{q}.{name}: {v}", i.unit);
                    }
                }
            }
            let io = &i.io;
            if io.workloads > 0 {
                let _ = writeln!(
                    o,
                    "  throughput: {:.1} MiB/s, {:.0} IOPS ({} read, {} written, {} flushes, in {:.2} s)",
                    io.mib_per_s(),
                    io.iops(),
                    human_bytes(io.bytes_read),
                    human_bytes(io.bytes_written),
                    io.flushes,
                    io.seconds
                );
                if io.error_responses > 0 {
                    let _ = writeln!(o, "  error responses: {}", io.error_responses);
                }
                let verdict = if io.verify_ok() { "ok" } else { "FAILED" };
                let _ = writeln!(
                    o,
                    "  verification: {verdict}, {} bytes checked, {} mismatched sectors",
                    io.bytes_checked, io.mismatches
                );
                if let Some(m) = &io.first_mismatch {
                    let _ = writeln!(o, "    first mismatch: {m}");
                }
                if let Some(f) = &io.failure {
                    let _ = writeln!(o, "    workload failed: {f}");
                }
            }
            if io.power_cuts > 0 {
                let _ = writeln!(
                    o,
                    "  crash consistency: {} power cut(s), {} durable write(s), {} sectors checked, {} violation(s)",
                    io.power_cuts, io.crash_durable, io.crash_sectors_checked, io.crash_violations
                );
                if let Some(v) = &io.first_crash_violation {
                    let _ = writeln!(o, "    first violation: {v}");
                }
            }
        }
        let _ = writeln!(o);
        let _ = writeln!(
            o,
            "verification: {}, {} bytes checked",
            if self.verify_ok() { "ok" } else { "FAILED" },
            self.bytes_checked()
        );
        if self.mismatches.is_empty() {
            let _ = writeln!(o, "expectations: all {} held", self.checks);
        } else {
            let _ = writeln!(
                o,
                "expectations: {} of {} did NOT hold:",
                self.mismatches.len(),
                self.checks
            );
            for m in &self.mismatches {
                let _ = writeln!(o, "  MISMATCH {m}");
            }
        }
        let _ = writeln!(o, "result: {}", if self.passed() { "PASS" } else { "FAIL" });
        o
    }

    /// The report as one JSON value (see `xbb-lab --help`).
    pub fn to_json(&self) -> serde_json::Value {
        use serde_json::{json, Map, Value};
        let instances: Vec<Value> = self
            .instances
            .iter()
            .map(|i| {
                let mut sysctl = Map::new();
                for (name, v) in &i.sysctl {
                    sysctl.insert((*name).to_string(), json!(v));
                }
                let queues: Vec<Value> = i
                    .queues
                    .iter()
                    .map(|nodes| {
                        Value::Object(
                            nodes
                                .iter()
                                .map(|(name, v)| ((*name).to_string(), json!(v)))
                                .collect(),
                        )
                    })
                    .collect();
                json!({
                    "name": i.name,
                    "unit": i.unit,
                    "profile": i.profile,
                    "store": i.store,
                    "size": i.size,
                    "sector_size": i.sector_size,
                    "read_only": i.read_only,
                    "state": state_name(i.state),
                    "error": i.error,
                    "sysctl": Value::Object(sysctl),
                    "queues": queues,
                    "throughput_mib_s": round2(i.io.mib_per_s()),
                    "iops": round2(i.io.iops()),
                    "io": {
                        "reads": i.io.reads,
                        "writes": i.io.writes,
                        "flushes": i.io.flushes,
                        "bytes_read": i.io.bytes_read,
                        "bytes_written": i.io.bytes_written,
                        "error_responses": i.io.error_responses,
                        "seconds": round2(i.io.seconds),
                    },
                    "crash": {
                        "power_cuts": i.io.power_cuts,
                        "durable_writes": i.io.crash_durable,
                        "sectors_checked": i.io.crash_sectors_checked,
                        "violations": i.io.crash_violations,
                        "first_violation": i.io.first_crash_violation,
                    },
                    "verify": {
                        "ok": i.io.verify_ok(),
                        "bytes_checked": i.io.bytes_checked,
                        "mismatches": i.io.mismatches,
                        "first_mismatch": i.io.first_mismatch,
                        "failure": i.io.failure,
                    },
                })
            })
            .collect();
        json!({
            "scenario": self.scenario,
            "passed": self.passed(),
            "seconds": round2(self.seconds),
            "instances": instances,
            "verify": {
                "ok": self.verify_ok(),
                "bytes_checked": self.bytes_checked(),
            },
            "checks": self.checks,
            "mismatches": self.mismatches.iter().map(|m| json!({
                "step": m.step,
                "do": m.action,
                "guest": m.guest,
                "what": m.what,
            })).collect::<Vec<_>>(),
        })
    }
}

pub(super) fn round2(v: f64) -> f64 {
    (v * 100.0).round() / 100.0
}

/// `64 MiB`, `44 KiB`, `512 B`.
pub fn human_bytes(n: u64) -> String {
    const UNITS: [(&str, u64); 3] = [("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)];
    for (u, s) in UNITS {
        if n >= s {
            return if n % s == 0 {
                format!("{} {u}", n / s)
            } else {
                format!("{:.1} {u}", n as f64 / s as f64)
            };
        }
    }
    format!("{n} B")
}
