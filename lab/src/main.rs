//! xbb-lab: the simulated Xen host that runs the xbb back-end core.
//!
//! Runs the default scenario (several guests with different front-ends,
//! mixed I/O, every byte verified), a scenario file, or the benchmark
//! against the raw backing file. See `xbb-lab --help`.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use xbb::stats::{SYSCTLS, TUNABLES, TUNABLE_PREFIX};
use xbb_lab::bench::{self, BenchOptions};
use xbb_lab::scenario::{self, Report, RunOptions, Scenario};

const USAGE: &str = "\
usage: xbb-lab [--json] [--quiet] [--dir DIR]
       xbb-lab scenario FILE... [--json] [--quiet] [--dir DIR]
       xbb-lab bench [--ops N | --seconds S] [--json] [--dir DIR]
       xbb-lab default-scenario
       xbb-lab tables
       xbb-lab --help";

fn help() -> String {
    let mut tunables = String::new();
    for t in TUNABLES {
        tunables.push_str(&format!(
            "  {TUNABLE_PREFIX}{:<22} default {:<8} {}..={}  {}\n",
            t.name, t.default, t.min, t.max, t.descr
        ));
    }
    let sysctls: Vec<&str> = SYSCTLS.iter().map(|d| d.name).collect();
    format!(
        "\
xbb-lab runs the xbb block back-end core in a simulated Xen host: guest
front-ends, grant table, event channels, XenStore and a toolstack in one
process, with real files as the back-end stores.

{USAGE}

COMMANDS
  (none)             Run the default scenario: one sparse image per guest in a
                     temporary directory, several guests at once with different
                     front-end profiles (linux, legacy, x86_32, multipage,
                     skipper, flusher, and one per negotiated feature:
                     indirect, persistent, multiqueue, discard, foursector,
                     modern; 4 KiB-sector media; a raw-device store), a mixed
                     random/sequential read/write workload with flushes and
                     discards, and full data verification. Prints progress on
                     stderr and a report per instance: negotiated parameters
                     and counters in sysctl form (dev.xbb.N.<leaf>: value;
                     with several queues also dev.xbb.N.queue.Q.<leaf> for
                     the per-queue counters), state, throughput and the
                     verification result.
  scenario FILE...   Run scenario files (TOML). The format is described below
                     and in lab/scenarios/README.md.
  bench              Serve the same workloads through xbb and directly on the
                     backing file (pread/pwrite, same queue depth, same kind of
                     file) and print MiB/s, IOPS and the ratio xbb/raw: 4 KiB
                     random reads at QD 32, 1 MiB sequential reads and writes,
                     44 KiB sequential writes from a legacy front-end with
                     coalescing on and off (with total_dispatch per request),
                     and feature pairs, each against the same workload with
                     the back-end's tunable turning the feature off (on/off):
                     1 MiB reads and writes with 256 indirect segments vs 11
                     segments per request, 4 KiB random reads with persistent
                     grants vs without, with 4 queues vs 1.
  default-scenario   Print the default scenario as a scenario file.
  tables             Print the hw.xbb.* tunables and dev.xbb.N.* sysctls.

OPTIONS
  --json             Print the report as one JSON document on stdout:
                       {{\"scenario\": .., \"passed\": bool,
                        \"instances\": [{{\"name\": .., \"profile\": ..,
                          \"state\": \"Connected\"|.., \"sysctl\": {{<leaf>: <number>,
                          ..}}, \"queues\": [{{<per-queue leaf>: <number>, ..}}, ..],
                          \"throughput_mib_s\": .., \"iops\": .., \"io\": {{..}},
                          \"verify\": {{\"ok\": bool, \"bytes_checked\": N, ..}}, ..}}],
                        \"verify\": {{\"ok\": bool, \"bytes_checked\": N}},
                        \"checks\": N, \"mismatches\": [{{\"step\", \"do\", \"guest\",
                          \"what\"}}]}}
                     Several scenario files give {{\"passed\": bool,
                     \"scenarios\": [<report>, ..]}}. bench --json prints
                     {{\"cases\": [{{\"name\", \"xbb\": {{\"mib_s\", \"iops\", ..}},
                     \"raw\": {{..}}, \"ratio\": .., \"baseline\": name|null,
                     \"feature_ratio\": on/off|null, \"negotiated\": ..}}, ..]}}.
  --quiet            No progress lines on stderr.
  --dir DIR          Put disk images in DIR (kept) instead of a temporary
                     directory (removed). For bench: use a directory on a real
                     disk (not tmpfs) for meaningful numbers.
  --ops N            bench: requests per case.
  --seconds S        bench: run each case for about S seconds instead.

EXIT STATUS
  0 when every expectation held and every byte read back verified; 1 when
  anything failed; 2 on a usage or scenario-file error.

SCENARIO FILES
  Top level:  name, description, root_mounted (default true),
              [tunables] <leaf or hw.xbb.name> = N
  [[guest]]:  name, profile (linux|legacy|x86_32|multipage|skipper|flusher|
              indirect|persistent|multiqueue|discard|foursector|modern),
              store (file|device), sector_size (512), size (\"64M\"),
              mode (w|r), online (true), discard_enable (true),
              [guest.tunables] (over the top level)
  [[step]] with do = one of (guest = \"name\" | [\"a\",\"b\"] | \"*\"; default all):
    xenstore      key, value | delete = true, queue  front-end node at next
                  connect (queue = Q: under queue-Q/)
    connect       expect = connected|refused|any, error_contains
    disconnect
    request       op (read|write|flush|barrier|reserved|discard|indirect|N),
                  sector, segs = [[first,last],..] | pages = N, nr_segments,
                  readonly_grants, fill, wait (true), queue,
                  expect_status (okay|error|eopnotsupp|N), expect_data;
                  indirect: indirect_op, indirect_pages,
                  raw_indirect_grefs = [[i,gref],..]; discard: nr_sectors,
                  secure; seg_grants = [{{seg, same_as | raw | in_flight =
                  {{request, seg}}}}]
    batch         requests = [{{request keys}},..], wait (true): published at
                  once
    raw_slot      slot, hex = \"..\"              raw bytes into a ring slot
    req_prod      value                         raw req_prod
    kick          queue
    kick_storm    count, queue, each (true)    kicks without requests
    state_storm   count, states ([\"Connected\"])  front-end state rewrites
    resize        size                          grow/shrink the medium
    wait          count, expect_status (one, or a list in order); count = 0
                  checks that no response comes
    workload      ops, io_size, pattern (random|sequential), read_pct,
                  region, seed, verify (true), expect_errors (default 0)
    inject_io     nth | range = [start,end) | writes | flush, clear, error
    inject_grant  count | gref, clear, error
    mount_root
    expect        state, error_contains, sysctl = {{<leaf> = N | \">= N\"}},
                  queue (per-queue nodes of queue Q), backend_nodes =
                  {{node = \"value\" | true | false}}, watch = {{delivered |
                  coalesced | overflowed | pending | max_pending = N}},
                  verify_ok, faults_injected
  Counters are compared exactly, or with \">= N\", \"> N\", \"<= N\", \"< N\",
  \"!= N\".

TUNABLES
{tunables}
SYSCTLS (dev.xbb.N.<leaf>)
  {}
",
        sysctls.join(", ")
    )
}

#[derive(Default)]
struct Args {
    command: Option<String>,
    files: Vec<PathBuf>,
    json: bool,
    quiet: bool,
    dir: Option<PathBuf>,
    ops: Option<u64>,
    seconds: Option<f64>,
}

fn parse_args() -> Result<Args, String> {
    let mut a = Args::default();
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        let mut value = |name: &str| it.next().ok_or_else(|| format!("{name} needs a value"));
        match arg.as_str() {
            "-h" | "--help" | "help" => a.command = Some(String::from("help")),
            "--json" => a.json = true,
            "-q" | "--quiet" => a.quiet = true,
            "--dir" => a.dir = Some(PathBuf::from(value("--dir")?)),
            "--ops" => {
                let v = value("--ops")?;
                a.ops = Some(v.parse().map_err(|_| format!("--ops: not a number: {v}"))?);
            }
            "--seconds" => {
                let v = value("--seconds")?;
                let s: f64 = v
                    .parse()
                    .map_err(|_| format!("--seconds: not a number: {v}"))?;
                if !(s > 0.0 && s < 86400.0) {
                    return Err(format!("--seconds: out of range: {v}"));
                }
                a.seconds = Some(s);
            }
            s if s.starts_with('-') => return Err(format!("unknown option {s}")),
            s if a.command.is_none() => a.command = Some(s.to_string()),
            s if a.command.as_deref() == Some("scenario") => a.files.push(PathBuf::from(s)),
            s => return Err(format!("unexpected argument {s}")),
        }
    }
    Ok(a)
}

fn run_opts(a: &Args) -> RunOptions {
    RunOptions {
        progress: !a.quiet,
        dir: a.dir.clone(),
        ..RunOptions::default()
    }
}

fn print_report(r: &Report, json: bool) {
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&r.to_json()).unwrap_or_default()
        );
    } else {
        print!("{}", r.render_text());
    }
}

fn exit(passed: bool) -> ExitCode {
    if passed {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    }
}

/// Writes `text` to standard output; a reader that went away (`| head`)
/// is not an error.
fn emit(text: &str) -> ExitCode {
    use std::io::Write;
    match std::io::stdout().lock().write_all(text.as_bytes()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => ExitCode::SUCCESS,
        Err(_) => ExitCode::from(1),
    }
}

fn main() -> ExitCode {
    let args = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("xbb-lab: {e}\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    match args.command.as_deref() {
        None | Some("default") => {
            let sc = match Scenario::parse(scenario::DEFAULT_SCENARIO) {
                Ok(s) => s,
                Err(e) => {
                    eprintln!("xbb-lab: the default scenario: {e}");
                    return ExitCode::from(2);
                }
            };
            match scenario::run(&sc, &run_opts(&args)) {
                Ok(r) => {
                    print_report(&r, args.json);
                    exit(r.passed())
                }
                Err(e) => {
                    eprintln!("xbb-lab: {e}");
                    ExitCode::from(1)
                }
            }
        }
        Some("scenario") => {
            if args.files.is_empty() {
                eprintln!("xbb-lab: scenario needs at least one FILE\n{USAGE}");
                return ExitCode::from(2);
            }
            let mut scenarios = Vec::new();
            for f in &args.files {
                match Scenario::load(f) {
                    Ok(s) => scenarios.push(s),
                    Err(e) => {
                        eprintln!("xbb-lab: {e}");
                        return ExitCode::from(2);
                    }
                }
            }
            let mut reports = Vec::new();
            for sc in &scenarios {
                match scenario::run(sc, &run_opts(&args)) {
                    Ok(r) => reports.push(r),
                    Err(e) => {
                        eprintln!("xbb-lab: {e}");
                        return ExitCode::from(2);
                    }
                }
            }
            let passed = reports.iter().all(Report::passed);
            if reports.len() == 1 {
                print_report(&reports[0], args.json);
            } else if args.json {
                let v = serde_json::json!({
                    "passed": passed,
                    "scenarios": reports.iter().map(Report::to_json).collect::<Vec<_>>(),
                });
                println!("{}", serde_json::to_string_pretty(&v).unwrap_or_default());
            } else {
                for r in &reports {
                    print!("{}", r.render_text());
                    println!();
                }
                let failed: Vec<&str> = reports
                    .iter()
                    .filter(|r| !r.passed())
                    .map(|r| r.scenario.as_str())
                    .collect();
                println!(
                    "{} scenario(s): {} passed, {} failed{}",
                    reports.len(),
                    reports.len() - failed.len(),
                    failed.len(),
                    if failed.is_empty() {
                        String::new()
                    } else {
                        format!(" ({})", failed.join(", "))
                    }
                );
            }
            exit(passed)
        }
        Some("bench") => {
            let opts = BenchOptions {
                ops: args.ops,
                duration: args.seconds.map(Duration::from_secs_f64),
                dir: args.dir.clone(),
                progress: !args.quiet,
            };
            match bench::run(&opts) {
                Ok(r) => {
                    if args.json {
                        println!(
                            "{}",
                            serde_json::to_string_pretty(&r.to_json()).unwrap_or_default()
                        );
                    } else {
                        print!("{}", r.render_text());
                    }
                    exit(r.ok())
                }
                Err(e) => {
                    eprintln!("xbb-lab bench: {e}");
                    ExitCode::from(1)
                }
            }
        }
        Some("default-scenario") => emit(scenario::DEFAULT_SCENARIO),
        Some("tables") => {
            let mut out = String::from("# loader tunables\n");
            for t in TUNABLES {
                out.push_str(&format!(
                    "{TUNABLE_PREFIX}{}: default {}, {}..={}: {}\n",
                    t.name, t.default, t.min, t.max, t.descr
                ));
            }
            out.push_str("# sysctl nodes (dev.xbb.N.<leaf>)\n");
            for d in SYSCTLS {
                out.push_str(&format!("{} ({:?}): {}\n", d.name, d.kind, d.descr));
            }
            emit(&out)
        }
        Some("help") => {
            print!("{}", help());
            ExitCode::SUCCESS
        }
        Some(other) => {
            eprintln!("xbb-lab: unknown command {other}\n{USAGE}");
            ExitCode::from(2)
        }
    }
}
