//! Runs every scenario file of `lab/scenarios/` through the lab's runner
//! (the same one `xbb-lab scenario` uses) and fails if any expectation does
//! not hold. Also checks that the runner can fail: a scenario with a wrong
//! expectation must report a mismatch.
//!
//! A scenario with an `nbd` store needs libnbd and nbdkit: where they are
//! missing it is skipped with a message, unless `XBB_REQUIRE_NBD` is set.

use std::path::{Path, PathBuf};

use xbb_lab::frontend::Profile;
use xbb_lab::scenario::{self, RunOptions, Scenario};

fn scenario_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("scenarios")
}

fn scenario_files() -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(scenario_dir())
        .expect("lab/scenarios exists")
        .map(|e| e.expect("readable directory").path())
        .filter(|p| p.extension().is_some_and(|e| e == "toml"))
        .collect();
    v.sort();
    v
}

#[test]
fn every_scenario_file_passes() {
    let files = scenario_files();
    assert!(files.len() >= 30, "only {} scenario files", files.len());
    let mut failures = Vec::new();
    for f in &files {
        let sc = match Scenario::load(f) {
            Ok(s) => s,
            Err(e) => {
                failures.push(format!("{}: {e}", f.display()));
                continue;
            }
        };
        if let Some(why) = scenario::nbd_unavailable(&sc) {
            let required =
                std::env::var("XBB_REQUIRE_NBD").is_ok_and(|v| !v.is_empty() && v != "0");
            if required {
                failures.push(format!("{}: XBB_REQUIRE_NBD is set but {why}", f.display()));
            } else {
                eprintln!("{}: skipped: {why}", f.display());
            }
            continue;
        }
        match scenario::run(&sc, &RunOptions::default()) {
            Ok(r) if r.passed() => {}
            Ok(r) => failures.push(format!(
                "{}:\n{}",
                f.display(),
                r.mismatches
                    .iter()
                    .map(|m| format!("    {m}"))
                    .collect::<Vec<_>>()
                    .join("\n")
            )),
            Err(e) => failures.push(format!("{}: {e}", f.display())),
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} scenarios failed:\n{}",
        failures.len(),
        files.len(),
        failures.join("\n")
    );
}

#[test]
fn every_scenario_file_is_documented() {
    let readme = std::fs::read_to_string(scenario_dir().join("README.md")).expect("README.md");
    for f in scenario_files() {
        let name = f.file_name().and_then(|n| n.to_str()).unwrap_or_default();
        assert!(
            readme.contains(name),
            "{name} is not listed in lab/scenarios/README.md"
        );
    }
}

/// A scenario of one 1 MiB guest of `profile` that connects and then
/// plays `steps` (`[[step]]` tables).
fn connected_guest(profile: &str, steps: &str) -> Scenario {
    let text = format!(
        "[[guest]]\nprofile = \"{profile}\"\nsize = \"1M\"\n\n[[step]]\ndo = \"connect\"\n{steps}"
    );
    Scenario::parse(&text).unwrap_or_else(|e| panic!("{e}\n{text}"))
}

#[test]
fn a_wrong_expectation_is_reported() {
    let sc = connected_guest(
        "legacy",
        r#"
[[step]]
do = "request"
op = "reserved"
segs = [[0, 7]]
expect_status = "okay"

[[step]]
do = "expect"
state = "Closed"
sysctl = { reqs_received = 5, total_dispatch = ">= 1" }
"#,
    );
    let opts = RunOptions {
        settle: std::time::Duration::from_millis(200),
        ..RunOptions::default()
    };
    let r = scenario::run(&sc, &opts).expect("runs");
    assert!(!r.passed());
    let what: Vec<String> = r.mismatches.iter().map(|m| m.what.clone()).collect();
    assert_eq!(r.mismatches.len(), 4, "{what:#?}");
    assert!(
        what[0].contains("expected status okay, got eopnotsupp"),
        "{what:#?}"
    );
    assert!(what.iter().any(|w| w.contains("state: expected Closed")));
    assert!(what
        .iter()
        .any(|w| w.contains("reqs_received: expected == 5, is 1")));
    assert!(what
        .iter()
        .any(|w| w.contains("total_dispatch: expected >= 1, is 0")));
}

#[test]
fn malformed_scenarios_are_refused() {
    let bad = [
        // unknown key
        "[[guest]]\nprofile = \"linux\"\ncolour = 1\n",
        // unknown step
        "[[guest]]\n[[step]]\ndo = \"dance\"\n",
        // unknown profile
        "[[guest]]\nprofile = \"windows\"\n",
        // unknown tunable
        "[tunables]\nmax_everything = 1\n[[guest]]\n",
        // tunable out of range
        "[tunables]\nmax_ring_page_order = 6\n[[guest]]\n",
        // unknown sysctl in an expectation
        "[[guest]]\n[[step]]\ndo = \"expect\"\nsysctl = { nope = 1 }\n",
        // unknown guest
        "[[guest]]\nname = \"a\"\n[[step]]\ndo = \"kick\"\nguest = \"b\"\n",
        // overlapping workloads on one guest
        "[[guest]]\n[[step]]\ndo = \"workload\"\n[[step]]\ndo = \"workload\"\n",
        // bad hex
        "[[guest]]\n[[step]]\ndo = \"raw_slot\"\nslot = 0\nhex = \"zz\"\n",
        // no guest
        "name = \"empty\"\n",
        // size not a multiple of the sector size
        "[[guest]]\nsector_size = 4096\nsize = 6144\n",
        // in_flight outside a batch
        "[[guest]]\n[[step]]\ndo = \"request\"\nop = \"read\"\npages = 1\n\
         seg_grants = [{ seg = 0, in_flight = { request = 0, seg = 0 } }]\n",
        // indirect fields on a plain read
        "[[guest]]\n[[step]]\ndo = \"request\"\nop = \"read\"\npages = 1\nindirect_op = \"write\"\n",
        // a batch request with its own guest
        "[[guest]]\nname = \"a\"\n[[step]]\ndo = \"batch\"\nrequests = [{ guest = \"a\", op = \"read\" }]\n",
        // unknown watch counter
        "[[guest]]\n[[step]]\ndo = \"expect\"\nwatch = { lost = 0 }\n",
        // resize to a size that is not whole sectors
        "[[guest]]\nsector_size = 4096\n[[step]]\ndo = \"resize\"\nsize = 6144\n",
        // unknown state in a storm
        "[[guest]]\n[[step]]\ndo = \"state_storm\"\ncount = 1\nstates = [\"Dancing\"]\n",
        // an nbd store resized (an export has one size)
        "[[guest]]\nstore = \"nbd\"\n[[step]]\ndo = \"resize\"\nsize = 8192\n",
        // an unknown store kind
        "[[guest]]\nstore = \"iscsi\"\n",
        // an nbd_server step on a guest without an nbd store, and an
        // unknown action
        "[[guest]]\n[[step]]\ndo = \"nbd_server\"\naction = \"kill\"\n",
        "[[guest]]\nstore = \"nbd\"\n[[step]]\ndo = \"nbd_server\"\naction = \"pause\"\n",
        // more descriptor pages than indirect_grefs has (issue 13, finding
        // 9: refused at load, no longer clamped to 8)
        "[[guest]]\n[[step]]\ndo = \"request\"\nop = \"indirect\"\npages = 1\nindirect_pages = 9\n",
        // an override and its undoing at once
        "[[guest]]\n[[step]]\ndo = \"xenstore\"\nkey = \"ring-ref\"\nvalue = \"1\"\nreset = true\n",
        // same_as and delete at once
        "[[guest]]\n[[step]]\ndo = \"xenstore\"\nkey = \"ring-ref\"\ndelete = true\nsame_as = \"event-channel\"\n",
        // every override only with reset
        "[[guest]]\n[[step]]\ndo = \"xenstore\"\nkey = \"*\"\nvalue = \"1\"\n",
        // a ring start beyond 32 bits
        "[[guest]]\n[[step]]\ndo = \"connect\"\nring_start = \"0x100000000\"\n",
        // one status and a set of them
        "[[guest]]\n[[step]]\ndo = \"request\"\nop = \"read\"\npages = 1\n\
         expect_status = \"okay\"\nexpect_status_in = [\"error\"]\n",
        "[[guest]]\n[[step]]\ndo = \"wait\"\ncount = 1\nexpect_status = \"okay\"\n\
         expect_status_in = [\"error\"]\n",
        // a node that is neither error, backend/, frontend/ nor absolute
        "[[guest]]\n[[step]]\ndo = \"expect\"\nnodes = { \"sectors\" = false }\n",
        // steps during a workload on the workload's own guest, on every
        // guest, without a guest, or a workload during a workload
        "[[guest]]\nname = \"a\"\n[[guest]]\nname = \"b\"\n[[step]]\ndo = \"workload\"\nguest = \"a\"\n\
         [[step.during]]\ndo = \"kick\"\nguest = \"a\"\n",
        "[[guest]]\nname = \"a\"\n[[guest]]\nname = \"b\"\n[[step]]\ndo = \"workload\"\nguest = \"a\"\n\
         [[step.during]]\ndo = \"kick\"\nguest = \"*\"\n",
        "[[guest]]\nname = \"a\"\n[[guest]]\nname = \"b\"\n[[step]]\ndo = \"workload\"\nguest = \"a\"\n\
         [[step.during]]\ndo = \"kick\"\n",
        "[[guest]]\nname = \"a\"\n[[guest]]\nname = \"b\"\n[[step]]\ndo = \"workload\"\nguest = \"a\"\n\
         [[step.during]]\ndo = \"workload\"\nguest = \"b\"\n",
        // a bad step during a workload
        "[[guest]]\nname = \"a\"\n[[guest]]\nname = \"b\"\n[[step]]\ndo = \"workload\"\nguest = \"a\"\n\
         [[step.during]]\ndo = \"raw_slot\"\nguest = \"b\"\nslot = 0\nhex = \"z\"\n",
    ];
    for text in bad {
        assert!(Scenario::parse(text).is_err(), "accepted:\n{text}");
    }
    // What those refusals border on is accepted.
    let good = [
        "[[guest]]\n[[step]]\ndo = \"request\"\nop = \"indirect\"\npages = 1\nindirect_pages = 8\n",
        "[[guest]]\n[[step]]\ndo = \"xenstore\"\nkey = \"*\"\nreset = true\n",
        "[[guest]]\n[[step]]\ndo = \"connect\"\nring_start = \"0xffffffff\"\n",
        "[[guest]]\n[[step]]\ndo = \"resize\"\nsize = 0\n",
        "[[guest]]\n[[step]]\ndo = \"expect\"\nnodes = { \"error\" = false, \"backend/sectors\" = true }\n",
    ];
    for text in good {
        if let Err(e) = Scenario::parse(text) {
            panic!("refused: {e}\n{text}");
        }
    }
}

#[test]
fn the_default_scenario_is_well_formed() {
    let sc = Scenario::parse(scenario::DEFAULT_SCENARIO).expect("default scenario parses");
    assert!(sc.guests.len() >= 4);
    let profiles: Vec<&str> = sc.guests.iter().map(|g| g.profile.as_str()).collect();
    // Every profile but the two that only differ in their XenBus steps.
    for p in Profile::NAMES
        .into_iter()
        .filter(|p| !["skipper", "flusher"].contains(p))
    {
        assert!(profiles.contains(&p), "{p} missing");
    }
    assert!(sc.guests.iter().any(|g| g.sector_size == 4096));
    assert!(sc
        .guests
        .iter()
        .any(|g| g.profile == "foursector" && g.sector_size == 4096));
}

/// Issue 13, finding 6: a report is exact. The last step leaves a request
/// the back-end has not served yet (published, kicked, not waited for);
/// the report must still count it received, served and completed: the
/// runner reads each back-end once it is quiescent, not the snapshot of
/// the moment. (Before, `make lab` then `make test` failed the ATF case
/// `queues` with reqs_completed 624 of 626.)
#[test]
fn the_report_waits_for_the_back_end_to_settle() {
    let steps = r#"
[[step]]
do = "batch"
wait = false
requests = [
  { op = "write", sector = 0, pages = 11 },
  { op = "write", sector = 88, pages = 11, queue = 1 },
  { op = "write", sector = 176, pages = 11, queue = 2 },
  { op = "write", sector = 264, pages = 11, queue = 3 },
]
"#;
    for round in 0..5 {
        let sc = connected_guest("multiqueue", steps);
        let r = scenario::run(&sc, &RunOptions::default()).expect("runs");
        assert!(r.passed(), "{:?}", r.mismatches);
        let i = &r.instances[0];
        let get = |k: &str| i.sysctl.iter().find(|(n, _)| *n == k).map(|(_, v)| *v);
        assert_eq!(get("reqs_received"), Some(4), "round {round}");
        assert_eq!(get("reqs_completed"), Some(4), "round {round}");
        assert_eq!(get("bytes_written"), Some(4 * 11 * 4096), "round {round}");
        let per_queue: u64 = i
            .queues
            .iter()
            .map(|q| {
                q.iter()
                    .find(|(n, _)| *n == "reqs_completed")
                    .map_or(0, |(_, v)| *v)
            })
            .sum();
        assert_eq!(per_queue, 4, "round {round}");
    }
}
