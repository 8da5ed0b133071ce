//! Runs the built `xbb-serve` for what needs no Xen: its version, its
//! usage, and the refusal of a bad argument.

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
}
