//! `xbb-serve`: xbb's user-space back-end for a real Xen dom0.
//!
//! Serves every `vbd` of this domain's `backend/vbd` directory (those whose
//! `type` and hotplug `script` it is configured for, and that no other
//! back-end owns) with the same negotiation, coalescing, limits and
//! statistics as the kernel driver, from a file, a device or an NBD export.
//! Its configuration comes from `--config FILE` and the command line
//! (`xbb_serve::config`). `SIGUSR1` prints every instance's `dev.xbb.N` table on standard
//! output; `SIGTERM` hands every vbd over to the next xbb-serve (what is in
//! flight answered, the vbd left Connected with its in-flight journals in
//! `/run/xbb-serve`) and exits; `SIGINT` / `SIGHUP` detach every vbd (each
//! ends Closed) and exit. At start, a Connected vbd a previous xbb-serve
//! left is taken over from its journals. A fatal signal is reported on
//! standard error with the faulting address and every live mapping of
//! guest memory (`xbb_serve::fault`).

use std::process::ExitCode;

use xbb::stats::{TUNABLES, TUNABLE_PREFIX};
use xbb_serve::serve::{Config, Server};

const USAGE: &str = "\
usage: xbb-serve [--config FILE] [-v] [--set TUNABLE=VALUE]... [--type phy,file]
                 [--script block-xbb] [--sector-size 512|4096] [--copy-grants]
                 [--io uring|pool] [--journal-dir DIR] [--ignore-kernel-backend]
       xbb-serve --tunables
       xbb-serve --version

Serves the vbds of this Xen domain's backend/vbd directory from user space.
  --config FILE      read FILE first (key = value lines, see
                     /etc/xen/xbb-serve.conf); options given here override it
  --set NAME=VALUE   an hw.xbb.* tunable (NAME with or without the prefix)
  --type LIST        take only vbds whose `type` node is in LIST (default phy,file)
  --script LIST      take only vbds whose hotplug script is named in LIST (the
                     disk line's script=block-xbb); the other vbds are left to
                     xen-blkback and qdisk (default: any script)
  --sector-size N    logical sector size the stores emulate (default 512)
  --tunables         list the tunables with their defaults and bounds
  --copy-grants      copy the guests' data pages with GNTTABOP_copy through a
                     bounce buffer instead of mapping them with gntdev, as
                     QEMU's qdisk does (no persistent grants then)
  --io ENGINE        what carries out file and device I/O: uring (default; one
                     io_uring per disk, submitted once per pass and reaped by
                     the queue threads; falls back to pool when io_uring cannot
                     be set up) or pool (preadv/pwritev worker threads)
  --journal-dir DIR  keep each connected disk's in-flight journal in DIR (default
                     /run/xbb-serve; empty: none), so that the next xbb-serve takes
                     the disk over: a guest sees a pause, not a dead disk
  -v, --verbose      log every watch, event batch and completion batch
  --ignore-kernel-backend
                     take vbds even while xen-blkback probes every vbd (it will race)
A target that is an NBD URI (nbd://host[:port]/export, nbd+unix:///export?socket=PATH)
is served from that export through libnbd (libnbd.so.0).
Signals: USR1 prints the dev.xbb.N tables; TERM leaves every vbd connected for
the next xbb-serve to take over (in-flight I/O answered first) and exits; INT/HUP
detach every vbd and exit.";

/// What the command line asks for besides serving.
enum Asked {
    Serve(Config),
    Done,
}

/// The value of option `a`.
fn value<'a>(it: &mut std::slice::Iter<'a, String>, a: &str) -> Result<&'a str, String> {
    it.next()
        .map(String::as_str)
        .ok_or_else(|| format!("{a} needs a value"))
}

fn parse(args: &[String]) -> Result<Asked, String> {
    // The file first, then every option over it, in order.
    let mut cfg = Config::default();
    let mut it = args.iter();
    while let Some(a) = it.next() {
        if a == "--config" {
            let file = value(&mut it, a)?;
            let text = std::fs::read_to_string(file).map_err(|e| format!("{file}: {e}"))?;
            cfg.apply_file(&text, file)?;
        }
    }
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "-h" | "--help" => {
                println!("{USAGE}");
                return Ok(Asked::Done);
            }
            "-V" | "--version" => {
                println!(
                    "xbb-serve {} (xbb core {})",
                    env!("CARGO_PKG_VERSION"),
                    xbb::VERSION
                );
                return Ok(Asked::Done);
            }
            "--tunables" => {
                for d in TUNABLES {
                    println!(
                        "{TUNABLE_PREFIX}{} = {} ({}..={}): {}",
                        d.name, d.default, d.min, d.max, d.descr
                    );
                }
                return Ok(Asked::Done);
            }
            "--config" => {
                value(&mut it, a)?;
            }
            "--ignore-kernel-backend" => cfg.set("ignore-kernel-backend", "yes")?,
            "-v" | "--verbose" => cfg.set("verbose", "yes")?,
            "--copy-grants" => cfg.set("copy-grants", "yes")?,
            "--type" | "--script" | "--sector-size" | "--journal-dir" | "--io" => {
                let v = value(&mut it, a)?;
                cfg.set(&a[2..], v)?;
            }
            "--set" => {
                let v = value(&mut it, a)?;
                let (k, val) = v.split_once('=').ok_or("--set needs NAME=VALUE")?;
                let k = k.strip_prefix(TUNABLE_PREFIX).unwrap_or(k);
                cfg.set(&format!("{TUNABLE_PREFIX}{k}"), val)?;
            }
            other => return Err(format!("unknown argument {other}\n{USAGE}")),
        }
    }
    Ok(Asked::Serve(cfg))
}

fn main() -> ExitCode {
    // A fatal signal is reported with every live mapping of guest memory,
    // then handled as before (core dump).
    if let Err(e) = xbb_serve::fault::install() {
        eprintln!("xbb-serve: cannot install the fatal-signal report: {e}");
    }
    // The NBD store's bounce chunks are listed with the mappings.
    xbb_serve::fault::track_store_memory();
    let args: Vec<String> = std::env::args().skip(1).collect();
    let cfg = match parse(&args) {
        Ok(Asked::Serve(c)) => c,
        Ok(Asked::Done) => return ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("xbb-serve: {e}");
            return ExitCode::from(2);
        }
    };
    let mut server = match Server::new(cfg) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("xbb-serve: {e}");
            return ExitCode::FAILURE;
        }
    };
    match server.run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("xbb-serve: {e}");
            ExitCode::FAILURE
        }
    }
}
