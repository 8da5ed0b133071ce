//! The core's own cost (issue 12, item 4): instructions per request and
//! per 4 KiB, and requests per second on one core, for each case of
//! [`xbb_testing::cost`], with the core driven over the fake host as a
//! null platform (grants mapped without work, the store completing at
//! once without touching data).
//!
//! `make bench-core`, or `cargo bench -p xbb-testing --bench core_cost
//! [-- OPTIONS]`:
//!
//! - Instructions: each case runs again in a child process under
//!   `valgrind --tool=callgrind` (deterministic, whatever else the
//!   machine runs), counting only inside the core's entry points and not
//!   inside the platform's methods (`--toggle-collect`), from the end of
//!   the warm-up on (`--zero-before`). A second run counts the platform's
//!   methods as well: the difference is the null platform's own cost.
//!   The functions that cost the core most are listed under the table
//!   (their own instructions per request, inlined callees included); the
//!   profiles stay in the target directory for `callgrind_annotate`.
//!   Without valgrind the columns say so and the timing still runs.
//! - Requests per second: the same rounds timed natively, single thread,
//!   wall clock; the median of three runs. That loop includes the
//!   guest's side (writing requests, taking responses) and the null
//!   platform: it is the whole round trip, not the core alone.
//!
//! A benchmark, not a test: nothing here asserts a number.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use xbb_testing::cost::{measure_from_here, Case, CostBench, MAX_DEPTH};

/// Rounds before anything is measured: the persistent-grant cache fills,
/// every pool and page is touched once.
const WARMUP_ROUNDS: u64 = 10;

/// What callgrind counts inside: the core's entry points.
const CORE_ENTRY: &str = "xbb_testing::cost::core_*";
/// What it does not: the platform's request-path methods.
const PLATFORM: &str = "<xbb_testing::host::FakeHost as xbb::host::QueueHost>::*";
/// Where counting starts (zeroed on entry).
const MARK: &str = "xbb_testing::cost::measure_from_here";

const USAGE: &str = "\
usage: core_cost [--case NAME]... [--depth N] [--rounds N] [--seconds S] [--top N]
                 [--no-callgrind]

  --case NAME      only this case (read-4k, write-11seg-coalesced,
                   indirect-1m, persistent-hit-4k); every case by default
  --depth N        requests per kick, 1 to 32 (default 32: a full
                   one-page ring)
  --rounds N       measured rounds under callgrind (default 100)
  --seconds S      length of each of the three timed runs (default 1)
  --top N          the core's N costliest functions per case (default 6)
  --no-callgrind   timing only";

#[derive(Debug)]
struct Options {
    cases: Vec<Case>,
    depth: usize,
    rounds: u64,
    seconds: f64,
    top: usize,
    callgrind: bool,
    /// Internal: be the child that callgrind runs, for this case.
    child: Option<Case>,
}

fn parse_args() -> Result<Options, String> {
    let mut o = Options {
        cases: Vec::new(),
        depth: MAX_DEPTH,
        rounds: 100,
        seconds: 1.0,
        top: 6,
        callgrind: true,
        child: None,
    };
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut value = |what: &str| args.next().ok_or(format!("{a} needs {what}"));
        let case = |name: String| Case::by_name(&name).ok_or(format!("no case {name}"));
        match a.as_str() {
            // What `cargo bench` passes to a harness-less bench.
            "--bench" => {}
            "--case" => o.cases.push(case(value("a case")?)?),
            "--child" => o.child = Some(case(value("a case")?)?),
            "--depth" => {
                o.depth = value("a number")?.parse().map_err(|e| format!("{e}"))?;
                if !(1..=MAX_DEPTH).contains(&o.depth) {
                    return Err(format!("--depth: 1 to {MAX_DEPTH}"));
                }
            }
            "--rounds" => o.rounds = value("a number")?.parse().map_err(|e| format!("{e}"))?,
            "--seconds" => o.seconds = value("seconds")?.parse().map_err(|e| format!("{e}"))?,
            "--top" => o.top = value("a number")?.parse().map_err(|e| format!("{e}"))?,
            "--no-callgrind" => o.callgrind = false,
            "-h" | "--help" => return Err(String::new()),
            other => return Err(format!("unknown argument {other}")),
        }
    }
    if o.cases.is_empty() {
        o.cases = Case::ALL.to_vec();
    }
    Ok(o)
}

/// The child under callgrind: warm up, mark, measure; prints the number
/// of requests measured.
fn child(case: Case, depth: usize, rounds: u64) {
    let mut b = CostBench::connect(case, depth);
    for _ in 0..WARMUP_ROUNDS {
        b.round();
    }
    let before = b.served();
    measure_from_here();
    for _ in 0..rounds {
        b.round();
    }
    println!("measured {}", b.served() - before);
}

/// Requests per second of one timed run of about `seconds`.
fn timed_run(case: Case, depth: usize, seconds: f64) -> f64 {
    let mut b = CostBench::connect(case, depth);
    for _ in 0..WARMUP_ROUNDS {
        b.round();
    }
    let before = b.served();
    let limit = Duration::from_secs_f64(seconds);
    let start = Instant::now();
    let mut elapsed;
    loop {
        for _ in 0..16 {
            b.round();
        }
        elapsed = start.elapsed();
        if elapsed >= limit {
            break;
        }
    }
    (b.served() - before) as f64 / elapsed.as_secs_f64()
}

/// Instructions counted by one callgrind run of `case`, and the requests
/// they were counted over.
fn callgrind(
    case: Case,
    o: &Options,
    with_platform: bool,
    out: &Path,
) -> Result<(u64, u64), String> {
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    let mut cmd = Command::new("valgrind");
    cmd.arg("--tool=callgrind")
        .arg(format!("--callgrind-out-file={}", out.display()))
        .arg("--collect-atstart=no")
        .arg(format!("--zero-before={MARK}"))
        .arg(format!("--toggle-collect={CORE_ENTRY}"));
    if !with_platform {
        cmd.arg(format!("--toggle-collect={PLATFORM}"));
    }
    cmd.arg(&exe)
        .args(["--child", case.name()])
        .args(["--depth", &o.depth.to_string()])
        .args(["--rounds", &o.rounds.to_string()]);
    let run = cmd.output().map_err(|e| format!("valgrind: {e}"))?;
    let stdout = String::from_utf8_lossy(&run.stdout);
    if !run.status.success() {
        return Err(format!(
            "valgrind failed: {}\n{}",
            run.status,
            String::from_utf8_lossy(&run.stderr)
        ));
    }
    let measured = stdout
        .lines()
        .find_map(|l| l.strip_prefix("measured "))
        .and_then(|n| n.trim().parse().ok())
        .ok_or("the child did not say what it measured")?;
    let profile = std::fs::read_to_string(out).map_err(|e| format!("{}: {e}", out.display()))?;
    let total = profile
        .lines()
        .find_map(|l| l.strip_prefix("totals:").or(l.strip_prefix("summary:")))
        .and_then(|n| n.trim().parse().ok())
        .ok_or("no totals in the profile")?;
    Ok((total, measured))
}

/// Each function's own instructions in a callgrind profile (what it and
/// the code inlined into it executed, not its calls), costliest first.
///
/// The format: `fn=(id) name` (or `fn=(id)` once the id is known) starts
/// a function's cost lines, `position cost`; a `calls=` line says the
/// cost line after it is a call's inclusive cost, not the function's own.
fn self_costs(profile: &str) -> Vec<(String, u64)> {
    let mut names = std::collections::HashMap::new();
    let mut costs: std::collections::HashMap<String, u64> = std::collections::HashMap::new();
    let mut name_of = |v: &str| -> String {
        match v.strip_prefix('(').and_then(|r| r.split_once(')')) {
            Some((id, rest)) if !rest.trim().is_empty() => {
                names.insert(id.to_string(), rest.trim().to_string());
                rest.trim().to_string()
            }
            Some((id, _)) => names.get(id).cloned().unwrap_or_default(),
            None => v.to_string(),
        }
    };
    let mut current = String::new();
    let mut call_cost_next = false;
    for line in profile.lines() {
        if let Some(v) = line.strip_prefix("fn=") {
            current = name_of(v);
        } else if let Some(v) = line.strip_prefix("cfn=") {
            name_of(v);
        } else if line.starts_with("calls=") {
            call_cost_next = true;
        } else if line.starts_with(|c: char| c.is_ascii_digit() || "+-*".contains(c)) {
            if std::mem::take(&mut call_cost_next) {
                continue;
            }
            let cost = line.split_whitespace().nth(1).and_then(|c| c.parse().ok());
            *costs.entry(current.clone()).or_default() += cost.unwrap_or(0);
        }
    }
    let mut v: Vec<_> = costs.into_iter().filter(|&(_, c)| c > 0).collect();
    v.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    v
}

fn valgrind_present() -> bool {
    Command::new("valgrind")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success())
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// Thousands separated by commas.
fn grouped(n: u64) -> String {
    let s = n.to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}

fn main() {
    let o = match parse_args() {
        Ok(o) => o,
        Err(e) => {
            if !e.is_empty() {
                eprintln!("core_cost: {e}");
            }
            eprintln!("{USAGE}");
            std::process::exit(2);
        }
    };
    if let Some(case) = o.child {
        child(case, o.depth, o.rounds);
        return;
    }
    let callgrind_on = o.callgrind && valgrind_present();
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR"));
    println!(
        "xbb core cost: one queue over the null platform (FakeConfig::null), x86_64 ring of \
         {MAX_DEPTH} slots, {} requests per kick",
        o.depth
    );
    println!(
        "instructions: callgrind, the core alone (the platform's calls excluded), {} rounds \
         after {WARMUP_ROUNDS} of warm-up; req/s: wall clock, one thread, median of 3 runs of \
         {}s, guest side and null platform included",
        o.rounds, o.seconds
    );
    if o.callgrind && !callgrind_on {
        println!("valgrind not found: no instruction counts (apt-get install valgrind)");
    }
    println!();
    println!(
        "{:<24} {:>9} {:>15} {:>15} {:>15} {:>13}",
        "case", "pages/req", "core instr/req", "core instr/4K", "platform/req", "req/s/core"
    );
    // Per case: its profile, and the requests it was counted over.
    let mut profiles = Vec::new();
    for &case in &o.cases {
        // Core per request, core per 4 KiB, platform per request.
        let mut counts = ["-".to_string(), "-".to_string(), "-".to_string()];
        if callgrind_on {
            let out = dir.join(format!("core_cost.{}.callgrind", case.name()));
            let all = dir.join(format!("core_cost.{}.with-platform.callgrind", case.name()));
            let counted = callgrind(case, &o, false, &out)
                .and_then(|core| Ok((core, callgrind(case, &o, true, &all)?)));
            counts = match counted {
                Ok(((core, n), (with, m))) if n > 0 && m > 0 => {
                    profiles.push((case, out, n));
                    let per_req = core / n;
                    [
                        grouped(per_req),
                        grouped(core / (n * case.pages() as u64)),
                        grouped((with / m).saturating_sub(per_req)),
                    ]
                }
                Ok(_) => ["nothing measured".into(), String::new(), String::new()],
                Err(e) => {
                    eprintln!("core_cost: {}: {e}", case.name());
                    ["failed".into(), String::new(), String::new()]
                }
            };
        }
        let rates = (0..3)
            .map(|_| timed_run(case, o.depth, o.seconds))
            .collect();
        println!(
            "{:<24} {:>9} {:>15} {:>15} {:>15} {:>13}",
            case.name(),
            case.pages(),
            counts[0],
            counts[1],
            counts[2],
            grouped(median(rates) as u64)
        );
    }
    for (case, path, n) in profiles {
        println!();
        println!("{}: {}", case.name(), path.display());
        let profile = std::fs::read_to_string(&path).unwrap_or_default();
        for (name, cost) in self_costs(&profile).into_iter().take(o.top) {
            println!("  {:>8}  {name}", grouped(cost / n));
        }
    }
}
