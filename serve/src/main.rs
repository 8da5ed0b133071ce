//! `xbb-serve`: xbb's user-space back-end for a real Xen dom0.
//!
//! Serves every `vbd` of this domain's `backend/vbd` directory (those whose
//! `type` it is configured for, and that no other back-end owns) with the
//! same negotiation, coalescing, limits and statistics as the kernel
//! driver. `SIGUSR1` prints every instance's `dev.xbb.N` table on standard
//! output; `SIGTERM` / `SIGINT` detach every vbd (each ends Closed) and
//! exit. A fatal signal is reported on standard error with the faulting
//! address and every live mapping of guest memory (`xbb_serve::fault`).

use std::process::ExitCode;

use xbb::stats::{Tunables, TUNABLES, TUNABLE_PREFIX};
use xbb_serve::serve::{Config, Server};

const USAGE: &str = "\
usage: xbb-serve [-v] [--set TUNABLE=VALUE]... [--type phy,file] [--copy-grants]
                 [--ignore-kernel-backend]
       xbb-serve --tunables
       xbb-serve --version

Serves the vbds of this Xen domain's backend/vbd directory from user space.
  --set NAME=VALUE   an hw.xbb.* tunable (NAME with or without the prefix)
  --type LIST        take only vbds whose `type` node is in LIST (default phy,file)
  --tunables         list the tunables with their defaults and bounds
  --copy-grants      copy the guests' data pages with GNTTABOP_copy through a
                     bounce buffer instead of mapping them with gntdev, as
                     QEMU's qdisk does (no persistent grants then)
  -v, --verbose      log every watch, event batch and completion batch
  --ignore-kernel-backend
                     take vbds even while xen-blkback is loaded (it will race)
Signals: USR1 prints the dev.xbb.N tables; TERM/INT detach every vbd and exit.";

fn parse(args: &[String]) -> Result<Option<Config>, String> {
    let mut cfg = Config {
        tunables: Tunables::default(),
        types: vec![String::from("phy"), String::from("file")],
        ignore_kernel_backend: false,
        verbose: false,
        copy_grants: false,
    };
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "-h" | "--help" => {
                println!("{USAGE}");
                return Ok(None);
            }
            "-V" | "--version" => {
                println!(
                    "xbb-serve {} (xbb core {})",
                    env!("CARGO_PKG_VERSION"),
                    xbb::VERSION
                );
                return Ok(None);
            }
            "--tunables" => {
                for d in TUNABLES {
                    println!(
                        "{TUNABLE_PREFIX}{} = {} ({}..={}): {}",
                        d.name, d.default, d.min, d.max, d.descr
                    );
                }
                return Ok(None);
            }
            "--ignore-kernel-backend" => cfg.ignore_kernel_backend = true,
            "-v" | "--verbose" => cfg.verbose = true,
            "--copy-grants" => cfg.copy_grants = true,
            "--type" => {
                let v = it.next().ok_or("--type needs a value")?;
                cfg.types = v
                    .split(',')
                    .filter(|s| !s.is_empty())
                    .map(String::from)
                    .collect();
            }
            "--set" => {
                let v = it.next().ok_or("--set needs NAME=VALUE")?;
                let (k, val) = v.split_once('=').ok_or("--set needs NAME=VALUE")?;
                let k = k.strip_prefix(TUNABLE_PREFIX).unwrap_or(k);
                let n: u64 = val
                    .parse()
                    .map_err(|_| format!("{k}: not a number: {val}"))?;
                cfg.tunables
                    .set_by_name(k, n)
                    .map_err(|e| format!("{k}={n}: {e:?}"))?;
            }
            other => return Err(format!("unknown argument {other}\n{USAGE}")),
        }
    }
    Ok(Some(cfg))
}

fn main() -> ExitCode {
    // A fatal signal is reported with every live mapping of guest memory,
    // then handled as before (core dump).
    if let Err(e) = xbb_serve::fault::install() {
        eprintln!("xbb-serve: cannot install the fatal-signal report: {e}");
    }
    let args: Vec<String> = std::env::args().skip(1).collect();
    let cfg = match parse(&args) {
        Ok(Some(c)) => c,
        Ok(None) => return ExitCode::SUCCESS,
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
