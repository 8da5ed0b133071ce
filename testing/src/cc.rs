//! The system C compiler, for tests that hold Rust declarations against C
//! headers (Xen's `blkif.h`, `<libnbd.h>`, ...) with `_Static_assert`s and
//! typed assignments.

use std::ffi::OsStr;
use std::io::Write as _;
use std::process::{Command, Stdio};

/// Checks C source `src` for syntax and types only (`-fsyntax-only
/// -Werror`) with the compiler `$CC` (default `cc`) and `args` before the
/// source (target flags, `-std=`, `-I`): `Err` holds its diagnostics.
/// Panics when no compiler runs.
pub fn check_c<I: IntoIterator<Item = S>, S: AsRef<OsStr>>(
    args: I,
    src: &str,
) -> Result<(), String> {
    let cc = std::env::var("CC").unwrap_or_else(|_| "cc".into());
    let mut child = Command::new(&cc)
        .args(args)
        .args(["-fsyntax-only", "-Werror", "-x", "c", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run the C compiler `{cc}`: {e}"));
    child
        .stdin
        .take()
        .expect("the compiler's stdin")
        .write_all(src.as_bytes())
        .expect("writing to the compiler");
    let out = child.wait_with_output().expect("the compiler's exit");
    if out.status.success() {
        Ok(())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}
