//! NBD servers for the store tests: nbdkit's memory plugin and qemu-nbd
//! over a qcow2 file, each on a Unix socket of its own, stopped on drop.
//!
//! Where libnbd, nbdkit or qemu-nbd is missing the NBD tests are skipped
//! with a message, unless `XBB_REQUIRE_NBD` is set (CI sets it), where
//! they fail instead.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

static UNIQUE: AtomicU32 = AtomicU32::new(0);

/// Whether a missing NBD tool fails the test rather than skipping it.
pub fn nbd_required() -> bool {
    std::env::var("XBB_REQUIRE_NBD").is_ok_and(|v| !v.is_empty() && v != "0")
}

/// Skips (returns `None` after a message) or, with `XBB_REQUIRE_NBD`,
/// fails.
pub fn unavailable<T>(what: &str) -> Option<T> {
    assert!(
        !nbd_required(),
        "XBB_REQUIRE_NBD is set but {what} (tests/deps.sh installs libnbd0, nbdkit, qemu-utils)"
    );
    eprintln!("NBD test skipped: {what} (set XBB_REQUIRE_NBD=1 to make this a failure)");
    None
}

fn have(program: &str) -> bool {
    Command::new(program)
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// A running NBD server.
pub struct NbdServer {
    child: Child,
    dir: PathBuf,
    /// The export's URI.
    pub uri: String,
    /// The image file behind it, for qemu-nbd.
    pub image: Option<PathBuf>,
}

impl NbdServer {
    fn dir(what: &str) -> PathBuf {
        let n = UNIQUE.fetch_add(1, Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("xbb-nbd-{}-{what}-{n}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    /// Starts `cmd` and waits until it wrote its pid file, which both
    /// servers do once they accept connections (the socket appears a
    /// little earlier).
    fn start(mut cmd: Command, dir: PathBuf, image: Option<PathBuf>) -> NbdServer {
        let sock = dir.join("sock");
        let ready = dir.join("pid");
        let child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {cmd:?}: {e}"));
        let mut server = NbdServer {
            child,
            uri: format!("nbd+unix:///?socket={}", sock.display()),
            dir,
            image,
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        while !ready.exists() {
            if let Ok(Some(st)) = server.child.try_wait() {
                panic!("{cmd:?} exited at once: {st}");
            }
            assert!(Instant::now() < deadline, "{cmd:?}: not ready after 30 s");
            std::thread::sleep(Duration::from_millis(20));
        }
        server
    }

    /// `nbdkit memory size=BYTES` with `extra` arguments before the
    /// plugin (`-r`, `--filter=delay`, ...) and `params` after it.
    pub fn nbdkit(what: &str, bytes: u64, extra: &[&str], params: &[&str]) -> Option<NbdServer> {
        Self::plugin(what, "memory", bytes, extra, params)
    }

    /// [`NbdServer::nbdkit`] with `params(dir)` after the plugin: they may
    /// name files in the server's own directory `dir` ([`NbdServer::file`]),
    /// which goes with the server.
    pub fn nbdkit_with(
        what: &str,
        bytes: u64,
        extra: &[&str],
        params: impl FnOnce(&Path) -> Vec<String>,
    ) -> Option<NbdServer> {
        Self::plugin_with(what, "memory", bytes, extra, params)
    }

    /// `nbdkit PLUGIN size=BYTES`, as [`NbdServer::nbdkit`].
    pub fn plugin(
        what: &str,
        plugin: &str,
        bytes: u64,
        extra: &[&str],
        params: &[&str],
    ) -> Option<NbdServer> {
        let params = params.iter().map(|p| p.to_string()).collect();
        Self::plugin_with(what, plugin, bytes, extra, |_| params)
    }

    fn plugin_with(
        what: &str,
        plugin: &str,
        bytes: u64,
        extra: &[&str],
        params: impl FnOnce(&Path) -> Vec<String>,
    ) -> Option<NbdServer> {
        if let Err(e) = xbb_ustore::libnbd_available() {
            return unavailable(&e);
        }
        if !have("nbdkit") {
            return unavailable("nbdkit is not installed");
        }
        let dir = Self::dir(what);
        let params = params(&dir);
        let mut cmd = Command::new("nbdkit");
        cmd.args(["-f", "--exit-with-parent", "-P"])
            .arg(dir.join("pid"))
            .arg("-U")
            .arg(dir.join("sock"))
            .args(extra)
            .arg(plugin)
            .arg(format!("size={bytes}"))
            .args(params);
        Some(Self::start(cmd, dir, None))
    }

    /// `qemu-nbd` over a fresh qcow2 image of `bytes`, shared by any number
    /// of clients, honouring trims (`--discard=unmap`).
    pub fn qemu_qcow2(what: &str, bytes: u64) -> Option<NbdServer> {
        if let Err(e) = xbb_ustore::libnbd_available() {
            return unavailable(&e);
        }
        if !have("qemu-nbd") || !have("qemu-img") {
            return unavailable("qemu-nbd or qemu-img is not installed");
        }
        let dir = Self::dir(what);
        let image = dir.join("disk.qcow2");
        let st = Command::new("qemu-img")
            .args(["create", "-q", "-f", "qcow2"])
            .arg(&image)
            .arg(bytes.to_string())
            .status()
            .unwrap();
        assert!(st.success(), "qemu-img create failed");
        let mut cmd = Command::new("qemu-nbd");
        cmd.args(["-f", "qcow2", "-t", "-e", "0", "--discard=unmap", "-k"])
            .arg(dir.join("sock"))
            .arg("--pid-file")
            .arg(dir.join("pid"))
            .arg(&image);
        Some(Self::start(cmd, dir, Some(image)))
    }

    /// The file `name` of the server's own directory.
    pub fn file(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    /// Kills the server at once (`SIGKILL`) and waits for it.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Stops (`SIGSTOP`) or continues (`SIGCONT`) the server.
    pub fn signal(&self, sig: &str) {
        let st = Command::new("kill")
            .arg(format!("-{sig}"))
            .arg(self.child.id().to_string())
            .status()
            .unwrap();
        assert!(st.success());
    }
}

impl Drop for NbdServer {
    fn drop(&mut self) {
        self.signal_quietly();
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

impl NbdServer {
    fn signal_quietly(&self) {
        let _ = Command::new("kill")
            .arg("-CONT")
            .arg(self.child.id().to_string())
            .stderr(Stdio::null())
            .status();
    }
}
