//! The NBD server of a guest whose store is `nbd`: `nbdkit memory` of the
//! guest's size on a Unix socket in the run's work directory, stopped when
//! dropped. The guest's vbd then names its export (`params` =
//! `nbd+unix:///?socket=...`) and the back-end serves it with the user-space
//! NBD store, as xbb-serve does a qcow2 image behind `qemu-nbd`.
//!
//! nbdkit's error filter sits in front of the plugin: while a file of the
//! run's directory exists, every read, write, trim and write-zeroes fails
//! with `EIO` (`nbd_server` steps: `fail`, `recover`); `kill` ends the
//! server.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::{GuestSpec, NbdServerAction, Scenario, StoreKindSpec};

/// A running `nbdkit memory`.
#[derive(Debug)]
pub(super) struct NbdKit {
    child: Child,
    sock: PathBuf,
    /// While this file exists the server fails every command.
    fail: PathBuf,
    /// The export's URI.
    pub(super) uri: String,
}

impl NbdKit {
    /// Starts `nbdkit memory size=BYTES` on `dir/NAME.sock` and waits until
    /// it accepts connections (it writes its pid file then).
    pub(super) fn start(dir: &Path, name: &str, bytes: u64) -> Result<NbdKit, String> {
        let sock = dir.join(format!("{name}.sock"));
        let pid = dir.join(format!("{name}.nbdkit.pid"));
        let fail = dir.join(format!("{name}.nbdkit.fail"));
        let _ = std::fs::remove_file(&pid);
        let _ = std::fs::remove_file(&fail);
        let mut child = Command::new("nbdkit")
            .args(["-f", "--exit-with-parent", "-P"])
            .arg(&pid)
            .arg("-U")
            .arg(&sock)
            .arg("--filter=error")
            .arg("memory")
            .arg(format!("size={bytes}"))
            .args(["error=EIO", "error-rate=100%"])
            .arg(format!("error-file={}", fail.display()))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .spawn()
            .map_err(|e| format!("cannot start nbdkit (an nbd store needs it): {e}"))?;
        let deadline = Instant::now() + Duration::from_secs(30);
        while !pid.exists() {
            if let Ok(Some(st)) = child.try_wait() {
                return Err(format!("nbdkit exited at once: {st}"));
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                return Err(String::from("nbdkit not ready after 30 s"));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(NbdKit {
            uri: format!("nbd+unix:///?socket={}", sock.display()),
            child,
            sock,
            fail,
        })
    }

    /// Carries out an `nbd_server` step.
    pub(super) fn act(&mut self, action: NbdServerAction) -> Result<(), String> {
        match action {
            NbdServerAction::Fail => {
                std::fs::write(&self.fail, b"").map_err(|e| format!("{}: {e}", self.fail.display()))
            }
            NbdServerAction::Recover => std::fs::remove_file(&self.fail)
                .map_err(|e| format!("{}: {e}", self.fail.display())),
            NbdServerAction::Kill => {
                self.child.kill().map_err(|e| format!("kill nbdkit: {e}"))?;
                let _ = self.child.wait();
                Ok(())
            }
        }
    }
}

impl Drop for NbdKit {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_file(&self.sock);
        let _ = std::fs::remove_file(&self.fail);
    }
}

/// Why `sc` cannot run here, when one of its guests has an `nbd` store and
/// libnbd or nbdkit is missing; `None` when it can.
pub fn nbd_unavailable(sc: &Scenario) -> Option<String> {
    if !sc
        .guests
        .iter()
        .any(|g: &GuestSpec| g.store == StoreKindSpec::Nbd)
    {
        return None;
    }
    if let Err(e) = xbb_ustore::libnbd_available() {
        return Some(e);
    }
    let nbdkit = Command::new("nbdkit")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
    match nbdkit {
        Ok(st) if st.success() => None,
        _ => Some(String::from("nbdkit is not installed (Debian: nbdkit)")),
    }
}
