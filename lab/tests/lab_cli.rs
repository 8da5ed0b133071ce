//! Runs the built `xbb-lab` binary: the default run passes and prints every
//! sysctl row (and the per-queue rows of a multi-queue connection), `--json`
//! is one JSON document with the documented fields, a failing scenario exits
//! non-zero with its mismatch, a malformed file exits 2, and `bench` with a
//! tiny op count prints its ratios, feature on/off included.

use std::process::{Command, Output};

use xbb::stats::SYSCTLS;
use xbb_lab::scenario::{self, Scenario};

/// The unit (`dev.xbb.N`) of a guest of the default scenario.
fn default_unit(name: &str) -> usize {
    let sc = Scenario::parse(scenario::DEFAULT_SCENARIO).expect("default scenario");
    sc.guest_names()
        .iter()
        .position(|n| n == name)
        .expect("guest of the default scenario")
}

fn lab(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_xbb-lab"))
        .args(args)
        .output()
        .expect("xbb-lab runs")
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

#[test]
fn default_run_passes_and_prints_every_sysctl() {
    let o = lab(&[]);
    let out = stdout(&o);
    assert!(
        o.status.success(),
        "exit {:?}\n{out}\n{}",
        o.status,
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(out.contains("dev.xbb.0.max_request_segments: 256"), "{out}");
    for d in SYSCTLS {
        assert!(
            out.contains(&format!("dev.xbb.0.{}: ", d.name)),
            "{} missing",
            d.name
        );
    }
    // One queue: no per-queue rows. Four queues: the counters and gauges of
    // each, and nothing else.
    assert!(!out.contains("dev.xbb.0.queue."), "{out}");
    let mq = default_unit("multiqueue");
    assert!(
        out.contains(&format!("dev.xbb.{mq}.num_queues: 4")),
        "{out}"
    );
    for q in 0..4 {
        for d in SYSCTLS {
            let row = format!("dev.xbb.{mq}.queue.{q}.{}: ", d.name);
            assert_eq!(out.contains(&row), d.per_queue(), "{row}");
        }
    }
    assert!(!out.contains(&format!("dev.xbb.{mq}.queue.4.")), "{out}");
    assert!(out.contains("verification: ok"), "{out}");
    assert!(out.contains("result: PASS"), "{out}");
    // Progress goes to stderr.
    assert!(!o.stderr.is_empty());
}

#[test]
fn json_has_the_documented_fields() {
    let o = lab(&["--json", "--quiet"]);
    assert!(o.status.success(), "exit {:?}", o.status);
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).expect("one JSON document");
    let instances = v["instances"].as_array().expect("instances");
    assert!(instances.len() >= 4);
    for i in instances {
        assert!(i["name"].is_string());
        assert!(i["profile"].is_string());
        assert_eq!(i["state"], "Connected");
        assert!(i["throughput_mib_s"].is_number());
        let sysctl = i["sysctl"].as_object().expect("sysctl object");
        assert_eq!(sysctl.len(), SYSCTLS.len());
        for d in SYSCTLS {
            assert!(sysctl[d.name].is_u64(), "{}", d.name);
        }
        assert_eq!(sysctl["max_request_segments"], 256);
        // One object per queue, with exactly the per-queue nodes.
        let queues = i["queues"].as_array().expect("queues array");
        assert_eq!(
            Some(queues.len() as u64),
            sysctl["num_queues"].as_u64(),
            "{}",
            i["name"]
        );
        for q in queues {
            let q = q.as_object().expect("queue object");
            assert_eq!(q.len(), SYSCTLS.iter().filter(|d| d.per_queue()).count());
            for d in SYSCTLS.iter().filter(|d| d.per_queue()) {
                assert!(q[d.name].is_u64(), "{}", d.name);
            }
        }
    }
    let mq = &instances[default_unit("multiqueue")];
    assert_eq!(mq["queues"].as_array().map(Vec::len), Some(4));
    // The queues' counters add up to the instance's.
    let sum: u64 = mq["queues"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|q| q["reqs_received"].as_u64())
        .sum();
    assert_eq!(Some(sum), mq["sysctl"]["reqs_received"].as_u64());
    assert_eq!(v["verify"]["ok"], true);
    assert!(
        v["verify"]["bytes_checked"]
            .as_u64()
            .expect("bytes_checked")
            > 0
    );
}

fn write_temp(name: &str, text: &str) -> std::path::PathBuf {
    let p = std::env::temp_dir().join(format!("xbb-lab-cli-{}-{name}", std::process::id()));
    std::fs::write(&p, text).expect("write scenario");
    p
}

#[test]
fn a_failing_scenario_exits_1_and_says_why() {
    let p = write_temp(
        "fail.toml",
        "[[guest]]\nprofile = \"legacy\"\nsize = \"1M\"\n[[step]]\ndo = \"connect\"\n\
         [[step]]\ndo = \"request\"\nop = 200\nsegs = [[0, 7]]\nexpect_status = \"okay\"\n",
    );
    let o = lab(&["scenario", p.to_str().unwrap_or_default(), "--quiet"]);
    let _ = std::fs::remove_file(&p);
    assert_eq!(o.status.code(), Some(1));
    let out = stdout(&o);
    assert!(out.contains("MISMATCH step 2 (request)"), "{out}");
    assert!(
        out.contains("expected status okay, got eopnotsupp"),
        "{out}"
    );
}

#[test]
fn a_malformed_scenario_exits_2() {
    let p = write_temp("bad.toml", "[[guest]]\nprofile = \"nonesuch\"\n");
    let o = lab(&["scenario", p.to_str().unwrap_or_default()]);
    let _ = std::fs::remove_file(&p);
    assert_eq!(o.status.code(), Some(2));
    let o = lab(&["--no-such-option"]);
    assert_eq!(o.status.code(), Some(2));
}

#[test]
fn help_documents_the_scenario_format() {
    let o = lab(&["--help"]);
    assert!(o.status.success());
    let out = stdout(&o);
    for w in [
        "scenario FILE",
        "expect_status",
        "inject_io",
        "--json",
        "bench",
    ] {
        assert!(out.contains(w), "{w} missing from --help");
    }
}

#[test]
fn each_command_has_its_own_help_and_the_programs_their_version() {
    for (args, usage, has, lacks) in [
        (
            &["bench", "--help"][..],
            "usage: xbb-lab bench",
            "--seconds",
            "SCENARIO FILES",
        ),
        (
            &["help", "scenario"],
            "usage: xbb-lab scenario FILE",
            "expect_status",
            "--ops",
        ),
        (
            &["--help", "tables"],
            "usage: xbb-lab tables",
            "dev.xbb.N",
            "--json",
        ),
        (
            &["default", "--help"],
            "usage: xbb-lab [--json]",
            "--dir",
            "--seconds",
        ),
        (
            &["soak", "--help"],
            "usage: xbb-lab soak",
            "--minutes",
            "--svg",
        ),
    ] {
        let o = lab(args);
        let out = stdout(&o);
        assert!(o.status.success(), "{args:?}: exit {:?}", o.status);
        assert!(out.starts_with(usage), "{args:?}:\n{out}");
        assert!(out.contains(has), "{args:?}: {has} missing:\n{out}");
        assert!(!out.contains(lacks), "{args:?}: {lacks} present:\n{out}");
    }
    assert_eq!(lab(&["help", "nosuch"]).status.code(), Some(2));
    let o = lab(&["--version"]);
    assert!(o.status.success());
    assert_eq!(
        stdout(&o),
        format!(
            "xbb-lab {} (xbb core {})\n",
            env!("CARGO_PKG_VERSION"),
            xbb::VERSION
        )
    );
}

#[test]
fn soak_refuses_fewer_than_sixteen_guests_and_two_durations() {
    for args in [
        &["soak", "--guests", "3", "--seconds", "1"][..],
        &["soak", "--minutes", "1", "--seconds", "5"],
        &["soak", "--minutes", "0"],
    ] {
        let o = lab(args);
        assert_eq!(o.status.code(), Some(2), "{args:?}");
    }
}

#[test]
fn chart_draws_a_tsv_and_refuses_bad_input() {
    let tsv = write_temp(
        "ratios.tsv",
        "# test\tseries\tratio\nseqread1m\txbb-serve / xen-blkback\t1.07\n",
    );
    let svg = tsv.with_extension("svg");
    let (t, g) = (
        tsv.to_str().unwrap_or_default(),
        svg.to_str().unwrap_or_default(),
    );
    let o = lab(&["chart", "--tsv", t, "--svg", g, "--title", "peers"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let chart = std::fs::read_to_string(&svg).expect("chart written");
    for w in ["peers", "seqread1m", "xbb-serve / xen-blkback", "1.07"] {
        assert!(chart.contains(w), "{w} missing from the chart");
    }
    std::fs::write(&tsv, "seqread1m\tA\tfast\n").expect("rewrite");
    let o = lab(&["chart", "--tsv", t, "--svg", g]);
    assert_eq!(o.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&o.stderr).contains("not a number: fast"));
    assert_eq!(lab(&["chart", "--tsv", t]).status.code(), Some(2));
    let _ = std::fs::remove_file(&tsv);
    let _ = std::fs::remove_file(&svg);
}

#[test]
fn bench_with_few_ops_prints_ratios() {
    let svg = std::env::temp_dir().join(format!("xbb-lab-cli-{}-bench.svg", std::process::id()));
    let o = lab(&[
        "bench",
        "--ops",
        "64",
        "--quiet",
        "--svg",
        svg.to_str().unwrap_or_default(),
    ]);
    let out = stdout(&o);
    assert!(o.status.success(), "exit {:?}\n{out}", o.status);
    let chart = std::fs::read_to_string(&svg).expect("bench --svg wrote its chart");
    let _ = std::fs::remove_file(&svg);
    for w in ["xbb / raw file", "feature on / off", "4k-randread-4queues"] {
        assert!(chart.contains(w), "{w} missing from the chart");
    }
    assert!(out.contains("xbb/raw"), "{out}");
    assert!(out.contains("total_dispatch per request"), "{out}");
    assert!(out.contains("on/off"), "{out}");
    for pair in [
        "1m-seqwrite-indirect256",
        "4k-randread-persistent",
        "4k-randread-4queues",
    ] {
        assert!(out.contains(pair), "{pair} missing:\n{out}");
    }
    let o = lab(&["bench", "--ops", "64", "--quiet", "--json"]);
    assert!(o.status.success());
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).expect("JSON");
    let cases = v["cases"].as_array().expect("cases");
    assert!(cases.len() >= 5);
    for c in cases {
        assert!(c["ratio"].is_number(), "{c}");
        if c["baseline"].is_string() {
            assert!(c["feature_ratio"].is_number(), "{c}");
        }
    }
    assert!(cases.iter().filter(|c| c["baseline"].is_string()).count() >= 4);
}

#[test]
fn bench_names_each_cases_grant_mapping_and_takes_one_for_all() {
    let grants = |extra: &[&str]| {
        let mut args = vec!["bench", "--ops", "64", "--reps", "1", "--quiet", "--json"];
        args.extend_from_slice(&[
            "--case",
            "4k-randread-4queues",
            "--case",
            "4k-randread-qd32",
        ]);
        args.extend_from_slice(extra);
        let o = lab(&args);
        assert!(o.status.success(), "exit {:?}", o.status);
        let v: serde_json::Value = serde_json::from_slice(&o.stdout).expect("JSON");
        v["cases"]
            .as_array()
            .expect("cases")
            .iter()
            .map(|c| {
                let name = c["name"].as_str().unwrap_or_default().to_string();
                let mode = c["grant_mapping"].as_str().unwrap_or_default().to_string();
                let threads = c["frontend_threads"].as_u64().unwrap_or_default();
                (name, mode, threads)
            })
            .collect::<Vec<_>>()
    };
    let own = |m: &str| m.to_string();
    assert_eq!(
        grants(&[]),
        vec![
            (own("4k-randread-qd32"), own("faulting"), 1),
            (own("4k-randread-1queue"), own("premapped"), 1),
            (own("4k-randread-4queues"), own("premapped"), 4),
        ]
    );
    let all_faulting = grants(&["--grant-mapping", "faulting"]);
    assert!(
        all_faulting.iter().all(|(_, m, _)| m == "faulting"),
        "{all_faulting:?}"
    );
    let o = lab(&["bench", "--grant-mapping", "lazy"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("--grant-mapping"));
}
