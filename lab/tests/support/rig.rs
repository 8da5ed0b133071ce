//! One simulated world with one guest and one `vbd` on a fresh sparse
//! image in a temporary directory: the rig the end-to-end tests drive
//! through the public path (guest front-end → back-end task → store).

use std::fs::{self, File};
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use xbb::abi::BlkifResponse;
use xbb::host::XenbusState;
use xbb::stats::Stat;
use xbb_lab::frontend::{Frontend, Profile, Workload, WorkloadReport};
use xbb_lab::gnttab::GrantStats;
use xbb_lab::world::{VbdConfig, VbdHandle, World};

/// A guard against hangs only, never a timing requirement.
pub const HANG_GUARD: Duration = Duration::from_secs(30);
/// The guest's domain id.
pub const GUEST: u16 = 1;
/// The guest's RAM in pages.
pub const GUEST_FRAMES: u64 = 8192;
/// The size of every rig's image.
pub const DISK_BYTES: u64 = 8 << 20;
/// The same in 512-byte sectors.
pub const DISK_SECTORS: u64 = DISK_BYTES / 512;

/// A directory under the system temporary directory, removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    /// A new, empty directory named after the test (`tag`).
    pub fn new(tag: &str) -> TempDir {
        static N: AtomicU32 = AtomicU32::new(0);
        let p = std::env::temp_dir().join(format!(
            "xbb-rig-{}-{}-{tag}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        fs::create_dir_all(&p).expect("create temp dir");
        TempDir(p)
    }

    /// A sparse (all-zero) image of `bytes`.
    pub fn image(&self, name: &str, bytes: u64) -> PathBuf {
        let p = self.0.join(name);
        File::create(&p)
            .and_then(|f| f.set_len(bytes))
            .expect("create image");
        p
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

/// One world with one guest and one `vbd` on a fresh sparse image.
pub struct Rig {
    /// The simulated host.
    pub world: World,
    /// The guest's disk.
    pub vbd: VbdHandle,
    /// The image behind it.
    pub image: PathBuf,
    _dir: TempDir,
}

impl Rig {
    /// A rig in a new world; `tweak` adjusts the disk's configuration.
    pub fn new(tag: &str, tweak: impl FnOnce(&mut VbdConfig)) -> Rig {
        Rig::build(World::new(), tag, tweak)
    }

    /// A rig in `world`.
    pub fn build(world: World, tag: &str, tweak: impl FnOnce(&mut VbdConfig)) -> Rig {
        let dir = TempDir::new(tag);
        let image = dir.image("disk.img", DISK_BYTES);
        world.add_guest(GUEST, GUEST_FRAMES).expect("guest");
        let mut cfg = VbdConfig::file(GUEST, &image);
        tweak(&mut cfg);
        let vbd = world.create_vbd(&cfg).expect("vbd");
        Rig {
            world,
            vbd,
            image,
            _dir: dir,
        }
    }

    /// A front-end of `profile`, not connected.
    pub fn frontend(&self, profile: Profile) -> Frontend {
        Frontend::new(&self.world, &self.vbd, profile).expect("frontend")
    }

    /// A rig named `name` with nothing changed, and a front-end of
    /// `profile` connected to it.
    pub fn with_frontend(name: &str, profile: &str) -> (Rig, Frontend) {
        let rig = Rig::new(name, |_| {});
        let fe = rig.connected(profile);
        (rig, fe)
    }

    /// A connected front-end of the profile named `profile`.
    pub fn connected(&self, profile: &str) -> Frontend {
        let mut fe = self.frontend(Profile::by_name(profile).expect("profile"));
        fe.connect().expect("connect");
        fe
    }

    /// One of the back-end's sysctl values.
    pub fn stat(&self, s: Stat) -> u64 {
        self.world.stat(&self.vbd, s)
    }

    /// Waits until the back-end has published `n` completed requests (its
    /// snapshot lags the responses by one event at most).
    pub fn wait_completed(&self, n: u64) {
        self.wait_stat(Stat::ReqsCompleted, n);
    }

    /// Waits until the back-end has published counter `s` at `n` or more.
    pub fn wait_stat(&self, s: Stat, n: u64) {
        self.world
            .wait_backend(&self.vbd, HANG_GUARD, |snap| {
                snap.stats.as_ref().is_some_and(|st| st.get(s) >= n)
            })
            .unwrap_or_else(|e| panic!("back-end's {s:?} never reached {n}: {e}"));
    }

    /// Waits until the back-end is in `state`.
    pub fn wait_state(&self, state: XenbusState) {
        self.world
            .wait_backend(&self.vbd, HANG_GUARD, |s| s.state == state)
            .unwrap_or_else(|e| panic!("back-end never reached {state:?}: {e}"));
    }

    /// A back-end node, `None` when absent.
    pub fn be_node(&self, key: &str) -> Option<String> {
        self.world
            .xen()
            .xenstore
            .read_str(&format!("{}/{key}", self.vbd.backend_path()))
            .ok()
    }

    /// A front-end node, `None` when absent.
    pub fn fe_node(&self, key: &str) -> Option<String> {
        self.world
            .xen()
            .xenstore
            .read_str(&format!("{}/{key}", self.vbd.frontend_path()))
            .ok()
    }

    /// `len` bytes of the image at `offset`.
    pub fn file_bytes(&self, offset: u64, len: usize) -> Vec<u8> {
        let mut buf = vec![0u8; len];
        File::open(&self.image)
            .and_then(|f| f.read_exact_at(&mut buf, offset))
            .expect("read image");
        buf
    }

    /// Whether the whole image is still zero.
    pub fn file_is_zero(&self) -> bool {
        fs::read(&self.image)
            .expect("read image")
            .iter()
            .all(|&b| b == 0)
    }

    /// Bytes of the image that hold allocated blocks.
    pub fn allocated_bytes(&self) -> u64 {
        fs::metadata(&self.image).expect("stat image").blocks() * 512
    }

    /// Shuts the world down, checks the platform saw no core bug and no
    /// grant is left mapped, and returns the guest's grant counters.
    pub fn finish(self) -> GrantStats {
        for s in self.world.shutdown() {
            assert!(s.error.is_none(), "{s:?}");
            assert_eq!(s.host.leaked_at_release, 0, "{s:?}");
            assert_eq!(s.host.bad_unmaps, 0, "{s:?}");
            assert_eq!(s.host.bad_iovecs, 0, "{s:?}");
            assert_eq!(s.host.window_mapped, 0, "{s:?}");
        }
        let g = self.world.grant_stats(GUEST).expect("guest");
        assert_eq!(g.mapped, 0, "grants left mapped: {g:?}");
        g
    }
}

/// A workload report without mismatches or errors that did real work.
pub fn check_clean(r: &WorkloadReport) {
    assert_eq!(r.mismatches, 0, "{r:?}");
    assert_eq!(r.error_responses, 0, "{r:?}");
    assert!(r.bytes_checked > 0, "{r:?}");
    assert!(r.writes > 0 && r.reads > 0, "{r:?}");
}

/// A random half-read, half-write workload of `ops` I/Os of `io_size`
/// bytes over the first `region_sectors` sectors, verified at the end.
pub fn mixed(ops: u64, io_size: u32, seed: u64, region_sectors: u64) -> Workload {
    Workload {
        ops,
        io_size,
        random: true,
        read_pct: 50,
        region_sectors: Some((0, region_sectors)),
        seed,
        verify_all_at_end: true,
    }
}

/// [`mixed`], over the `(first sector, sectors)` of `region` only.
pub fn mixed_in(region: (u64, u64), ops: u64, io_size: u32, seed: u64) -> Workload {
    Workload {
        region_sectors: Some(region),
        ..mixed(ops, io_size, seed, 0)
    }
}

/// `ops` writes of `io_size` bytes in order over the first
/// `region_sectors` sectors (wrapping around), verified at the end.
pub fn sequential_writes(ops: u64, io_size: u32, seed: u64, region_sectors: u64) -> Workload {
    Workload {
        random: false,
        read_pct: 0,
        ..mixed(ops, io_size, seed, region_sectors)
    }
}

/// Waits for the one response to the request `id` just submitted.
pub fn wait_one(fe: &mut Frontend, id: u64) -> BlkifResponse {
    let r = fe.wait_responses(1).expect("response");
    assert_eq!(r.len(), 1, "{r:?}");
    assert_eq!(r[0].id, id, "{r:?}");
    r[0]
}
