//! xbb-lab: the simulated Xen host that runs the xbb back-end core.
//!
//! Runs the default scenario (several guests with different front-ends,
//! mixed I/O, every byte verified), a scenario file, or the benchmark
//! against the raw backing file. See `xbb-lab --help`.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use xbb::stats::{SYSCTLS, TUNABLES, TUNABLE_PREFIX};
use xbb_lab::bench::{self, BenchOptions, BenchReport};
use xbb_lab::chart;
use xbb_lab::host::GrantMapping;
use xbb_lab::scenario::{self, Report, RunOptions, Scenario};
use xbb_lab::soak::{self, SoakOptions, SoakReport};

const USAGE: &str = "\
usage: xbb-lab [--json] [--quiet] [--dir DIR]
       xbb-lab scenario FILE... [--json] [--quiet] [--dir DIR]
       xbb-lab bench [--ops N | --seconds S] [--reps N] [--case NAME]... [--json] [--quiet]
                     [--dir DIR] [--svg FILE] [--grant-mapping faulting|premapped]
       xbb-lab soak [--minutes N | --seconds S] [--guests N] [--seed N] [--json] [--quiet] [--dir DIR]
       xbb-lab chart --tsv FILE --svg FILE [--title TEXT]
       xbb-lab default-scenario
       xbb-lab tables
       xbb-lab [COMMAND] --help | xbb-lab help [COMMAND]
       xbb-lab --version";

/// The commands, as `help.txt`'s COMMANDS section names them ("(none)" for
/// the default run), with the options each takes.
const COMMANDS: [(&str, &[&str]); 7] = [
    ("(none)", &["--json", "--quiet", "--dir"]),
    ("scenario", &["--json", "--quiet", "--dir"]),
    (
        "bench",
        &[
            "--json",
            "--quiet",
            "--dir",
            "--ops",
            "--seconds",
            "--reps",
            "--case",
            "--svg",
            "--grant-mapping",
        ],
    ),
    (
        "soak",
        &[
            "--minutes",
            "--seconds",
            "--guests",
            "--seed",
            "--json",
            "--quiet",
            "--dir",
        ],
    ),
    ("chart", &["--tsv", "--svg", "--title"]),
    ("default-scenario", &[]),
    ("tables", &[]),
];

/// The entries of section `title` of the help text (an entry starts on a
/// line indented by two spaces, its continuation lines by more) for which
/// `keep` holds of their first word.
fn help_entries(text: &str, title: &str, keep: impl Fn(&str) -> bool) -> String {
    let mut out = String::new();
    let mut in_section = false;
    let mut keeping = false;
    for line in text.lines() {
        if !line.starts_with(' ') && !line.is_empty() {
            in_section = line == title;
            continue;
        }
        if !in_section {
            continue;
        }
        if let Some(rest) = line.strip_prefix("  ").filter(|r| !r.starts_with(' ')) {
            keeping = keep(rest.split_whitespace().next().unwrap_or(""));
        }
        if keeping {
            out.push_str(line);
            out.push('\n');
        }
    }
    out
}

/// `xbb-lab COMMAND --help`: the command's usage, what it does, its
/// options (and for `scenario` the file format), from the one help text.
fn command_help(command: &str) -> Option<String> {
    let name = if command == "default" {
        "(none)"
    } else {
        command
    };
    let (_, options) = COMMANDS.iter().find(|(c, _)| *c == name)?;
    let text = help();
    let usage: Vec<&str> = USAGE
        .lines()
        .map(|l| l.trim_start_matches("usage:").trim())
        .filter(|l| match name {
            "(none)" => l.starts_with("xbb-lab [--json]"),
            _ => l.starts_with(&format!("xbb-lab {name}")),
        })
        .collect();
    let mut out = format!("usage: {}\n\n", usage.join("\n       "));
    out.push_str(&help_entries(&text, "COMMANDS", |w| w == name));
    let opts = help_entries(&text, "OPTIONS", |w| options.contains(&w));
    if !opts.is_empty() {
        out.push_str("\nOPTIONS\n");
        out.push_str(&opts);
    }
    if name == "scenario" {
        out.push_str("\nSCENARIO FILES\n");
        out.push_str(&help_entries(&text, "SCENARIO FILES", |_| true));
    }
    out.push_str("\nxbb-lab --help describes every command, the exit status and the tables.\n");
    Some(out)
}

/// The `--help` text: `help.txt` with the usage and the tables filled in.
fn help() -> String {
    let mut tunables = String::new();
    for t in TUNABLES {
        tunables.push_str(&format!(
            "  {TUNABLE_PREFIX}{:<22} default {:<8} {}..={}  {}\n",
            t.name, t.default, t.min, t.max, t.descr
        ));
    }
    let sysctls: Vec<&str> = SYSCTLS.iter().map(|d| d.name).collect();
    include_str!("help.txt")
        .replace("@USAGE@", USAGE)
        .replace("@TUNABLES@", &tunables)
        .replace("@SYSCTLS@", &sysctls.join(", "))
}

#[derive(Default)]
struct Args {
    command: Option<String>,
    /// `--help` was given (after a command: that command's help).
    help: bool,
    files: Vec<PathBuf>,
    json: bool,
    quiet: bool,
    dir: Option<PathBuf>,
    ops: Option<u64>,
    reps: Option<usize>,
    seconds: Option<f64>,
    svg: Option<PathBuf>,
    tsv: Option<PathBuf>,
    title: Option<String>,
    cases: Vec<String>,
    grant_mapping: Option<GrantMapping>,
    minutes: Option<f64>,
    guests: Option<usize>,
    seed: Option<u64>,
}

fn parse_args() -> Result<Args, String> {
    let mut a = Args::default();
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        let mut value = |name: &str| it.next().ok_or_else(|| format!("{name} needs a value"));
        match arg.as_str() {
            "-h" | "--help" => a.help = true,
            "-V" | "--version" => a.command = Some(String::from("version")),
            "--json" => a.json = true,
            "-q" | "--quiet" => a.quiet = true,
            "--dir" => a.dir = Some(PathBuf::from(value("--dir")?)),
            "--svg" => a.svg = Some(PathBuf::from(value("--svg")?)),
            "--tsv" => a.tsv = Some(PathBuf::from(value("--tsv")?)),
            "--title" => a.title = Some(value("--title")?),
            "--case" => a.cases.push(value("--case")?),
            "--grant-mapping" => {
                let v = value("--grant-mapping")?;
                a.grant_mapping =
                    Some(GrantMapping::by_name(&v).ok_or_else(|| {
                        format!("--grant-mapping: not faulting or premapped: {v}")
                    })?);
            }
            "--ops" => {
                let v = value("--ops")?;
                a.ops = Some(v.parse().map_err(|_| format!("--ops: not a number: {v}"))?);
            }
            "--reps" => {
                let v = value("--reps")?;
                let n: usize = v
                    .parse()
                    .map_err(|_| format!("--reps: not a number: {v}"))?;
                if !(1..=100).contains(&n) {
                    return Err(format!("--reps: out of range (1 to 100): {v}"));
                }
                a.reps = Some(n);
            }
            "--minutes" => {
                let v = value("--minutes")?;
                let m: f64 = v
                    .parse()
                    .map_err(|_| format!("--minutes: not a number: {v}"))?;
                if !(m > 0.0 && m <= 1440.0) {
                    return Err(format!("--minutes: out of range: {v}"));
                }
                a.minutes = Some(m);
            }
            "--guests" => {
                let v = value("--guests")?;
                a.guests = Some(
                    v.parse()
                        .map_err(|_| format!("--guests: not a number: {v}"))?,
                );
            }
            "--seed" => {
                let v = value("--seed")?;
                a.seed = Some(
                    v.parse()
                        .map_err(|_| format!("--seed: not a number: {v}"))?,
                );
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
            // `help COMMAND`: that command's help.
            s if a.command.as_deref() == Some("help") && a.files.is_empty() => {
                a.files.push(PathBuf::from(s))
            }
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

/// Prints a report as JSON (`--json`) or as text.
fn print_report(
    json: bool,
    to_json: impl FnOnce() -> serde_json::Value,
    render_text: impl FnOnce() -> String,
) {
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&to_json()).unwrap_or_default()
        );
    } else {
        print!("{}", render_text());
    }
}

/// Ends a command that makes a report: prints it (see [`print_report`])
/// and exits as it `passed`; or says, after `who`, why it could not make
/// it (exit status 1).
fn conclude<R, E: std::fmt::Display>(
    who: &str,
    json: bool,
    made: Result<R, E>,
    to_json: fn(&R) -> serde_json::Value,
    render_text: fn(&R) -> String,
    passed: fn(&R) -> bool,
) -> ExitCode {
    match made {
        Ok(r) => {
            print_report(json, || to_json(&r), || render_text(&r));
            exit(passed(&r))
        }
        Err(e) => {
            eprintln!("{who}: {e}");
            ExitCode::from(1)
        }
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
    if args.help || args.command.as_deref() == Some("help") {
        let topic = match (args.command.as_deref(), args.files.first()) {
            (Some("help"), Some(f)) => f.to_str().map(String::from),
            (Some("help"), None) | (None, _) => None,
            (Some(c), _) => Some(c.to_string()),
        };
        let Some(topic) = topic else {
            print!("{}", help());
            return ExitCode::SUCCESS;
        };
        return match command_help(&topic) {
            Some(h) => emit(&h),
            None => {
                eprintln!("xbb-lab: no command {topic}\n{USAGE}");
                ExitCode::from(2)
            }
        };
    }
    match args.command.as_deref() {
        None | Some("default") => run_default(&args),
        Some("scenario") => run_scenarios(&args),
        Some("bench") => run_bench(&args),
        Some("soak") => run_soak(&args),
        Some("chart") => run_chart(&args),
        Some("default-scenario") => emit(scenario::DEFAULT_SCENARIO),
        Some("tables") => tables(),
        Some("version") => emit(&format!(
            "xbb-lab {} (xbb core {})\n",
            env!("CARGO_PKG_VERSION"),
            xbb::VERSION
        )),
        Some(other) => {
            eprintln!("xbb-lab: unknown command {other}\n{USAGE}");
            ExitCode::from(2)
        }
    }
}

/// No command: the default scenario.
fn run_default(args: &Args) -> ExitCode {
    let sc = match Scenario::parse(scenario::DEFAULT_SCENARIO) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("xbb-lab: the default scenario: {e}");
            return ExitCode::from(2);
        }
    };
    let made = scenario::run(&sc, &run_opts(args));
    conclude(
        "xbb-lab",
        args.json,
        made,
        Report::to_json,
        Report::render_text,
        Report::passed,
    )
}

/// `scenario FILE...`.
fn run_scenarios(args: &Args) -> ExitCode {
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
        match scenario::run(sc, &run_opts(args)) {
            Ok(r) => reports.push(r),
            Err(e) => {
                eprintln!("xbb-lab: {e}");
                return ExitCode::from(2);
            }
        }
    }
    let passed = reports.iter().all(Report::passed);
    if reports.len() == 1 {
        let r = &reports[0];
        print_report(args.json, || r.to_json(), || r.render_text());
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

/// `bench`.
fn run_bench(args: &Args) -> ExitCode {
    let opts = BenchOptions {
        ops: args.ops,
        duration: args.seconds.map(Duration::from_secs_f64),
        dir: args.dir.clone(),
        progress: !args.quiet,
        cases: args.cases.clone(),
        reps: args.reps,
        grant_mapping: args.grant_mapping,
    };
    let made = bench::run(&opts).and_then(|r| {
        if let Some(path) = &args.svg {
            chart::ratio_svg("xbb-lab bench: ratios", &r.chart_bars())
                .and_then(|svg| std::fs::write(path, svg).map_err(|e| e.to_string()))
                .map_err(|e| format!("{}: {e}", path.display()))?;
        }
        Ok(r)
    });
    let (to_json, render_text) = (BenchReport::to_json, BenchReport::render_text);
    conclude(
        "xbb-lab bench",
        args.json,
        made,
        to_json,
        render_text,
        BenchReport::ok,
    )
}

/// `soak`.
fn run_soak(args: &Args) -> ExitCode {
    let duration = match (args.minutes, args.seconds) {
        (Some(_), Some(_)) => {
            eprintln!("xbb-lab soak: give --minutes or --seconds, not both\n{USAGE}");
            return ExitCode::from(2);
        }
        (Some(m), None) => Duration::from_secs_f64(m * 60.0),
        (None, Some(s)) => Duration::from_secs_f64(s),
        (None, None) => Duration::from_secs(60),
    };
    let guests = args.guests.unwrap_or(soak::MIN_GUESTS);
    if guests < soak::MIN_GUESTS {
        eprintln!(
            "xbb-lab soak: --guests: at least {}\n{USAGE}",
            soak::MIN_GUESTS
        );
        return ExitCode::from(2);
    }
    let opts = SoakOptions {
        duration,
        guests,
        seed: args.seed.unwrap_or(1),
        dir: args.dir.clone(),
        progress: !args.quiet,
        ..SoakOptions::default()
    };
    let made = soak::run(&opts);
    let (to_json, render_text) = (SoakReport::to_json, SoakReport::render_text);
    conclude(
        "xbb-lab soak",
        args.json,
        made,
        to_json,
        render_text,
        SoakReport::passed,
    )
}

/// `chart`: an SVG bar chart of the ratios in a tab-separated file.
fn run_chart(args: &Args) -> ExitCode {
    let (Some(tsv), Some(svg)) = (&args.tsv, &args.svg) else {
        eprintln!("xbb-lab chart: needs --tsv FILE and --svg FILE\n{USAGE}");
        return ExitCode::from(2);
    };
    let drawn = std::fs::read_to_string(tsv)
        .map_err(|e| format!("{}: {e}", tsv.display()))
        .and_then(|text| chart::parse_tsv(&text).map_err(|e| format!("{}: {e}", tsv.display())))
        .and_then(|bars| chart::ratio_svg(args.title.as_deref().unwrap_or("ratios"), &bars))
        .and_then(|out| std::fs::write(svg, out).map_err(|e| format!("{}: {e}", svg.display())));
    match drawn {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("xbb-lab chart: {e}");
            ExitCode::from(1)
        }
    }
}

/// `tables`: the tunables and sysctl nodes.
fn tables() -> ExitCode {
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
