//! Runs the built `xbb-serve` for what needs no Xen: its version, its
//! usage, the refusal of a bad argument, and its configuration file (read
//! before the options; a bad one stops it with its file and line).

use std::process::Command;

fn serve(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_xbb-serve"))
        .args(args)
        .output()
        .expect("xbb-serve runs")
}

#[test]
fn version_usage_and_bad_arguments() {
    let o = serve(&["--version"]);
    assert!(o.status.success());
    assert_eq!(
        String::from_utf8_lossy(&o.stdout),
        format!(
            "xbb-serve {} (xbb core {})\n",
            env!("CARGO_PKG_VERSION"),
            xbb::VERSION
        )
    );
    let o = serve(&["--help"]);
    assert!(o.status.success());
    assert!(String::from_utf8_lossy(&o.stdout).contains("xbb-serve --version"));
    let o = serve(&["--set", "no_such_tunable=1"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stdout).is_empty());
    // The I/O engine is uring or pool.
    assert!(String::from_utf8_lossy(&serve(&["--help"]).stdout).contains("--io uring|pool"));
    let o = serve(&["--io", "aio"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("io: uring or pool"));
}

#[test]
fn the_configuration_file_is_read_first_and_a_bad_one_stops_it() {
    let dir = std::env::temp_dir().join(format!("xbb-serve-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let stderr = |o: &std::process::Output| String::from_utf8_lossy(&o.stderr).into_owned();
    // The shipped file, as the unit passes it.
    let shipped = concat!(env!("CARGO_MANIFEST_DIR"), "/dist/xbb-serve.conf");
    let o = serve(&["--config", shipped, "--help"]);
    assert!(o.status.success(), "{}", stderr(&o));
    // A file that is not there.
    let missing = dir.join("missing.conf");
    let o = serve(&["--config", missing.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("missing.conf"), "{}", stderr(&o));
    // A bad line: refused with its file and line, before anything starts.
    let bad = dir.join("bad.conf");
    std::fs::write(&bad, "script = block-xbb\nsector-size = 1000\n").unwrap();
    let o = serve(&["--config", bad.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(2));
    assert!(
        stderr(&o).contains("bad.conf:2: sector-size"),
        "{}",
        stderr(&o)
    );
    // Options are checked after the file, wherever they stand.
    let good = dir.join("good.conf");
    std::fs::write(&good, "sector-size = 4096\n").unwrap();
    let o = serve(&["--sector-size", "1000", "--config", good.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("sector-size"), "{}", stderr(&o));
    let _ = std::fs::remove_dir_all(&dir);
}
