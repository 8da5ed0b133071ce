//! The simulated Xen host as one object: the XenStore, the event channels,
//! the guest domains (RAM and grant table each), the back-end domain's
//! root-mounted flag, and one running back-end instance per `vbd`.
//!
//! A [`World`] composes the pieces of this module's siblings: creating a
//! `vbd` writes the toolstack's nodes (`io/blkif.h` "Backend Device
//! Identification", as `xl block-attach` does) and starts the instance's
//! task thread ([`BackendRunner`]) with a [`SimHost`](super::host::SimHost)
//! under it. Guest front-ends ([`super::frontend`]) then meet the back-end
//! through the XenStore exactly as `io/xenbus.h` describes.

use std::collections::BTreeMap;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use super::backend::{BackendRunner, InstanceSnapshot, Start};
use super::gnttab::GrantStats;
use super::host::{Domain, GrantMapping, SimHostConfig, SimXen};
use super::store::{self, StoreKind, StoreOptions};
use super::toolstack::{self, VbdPaths, VbdSpec};
use super::TaskEvent;
use crate::store::locked;
use xbb::connect::ConnectError;
use xbb::host::{DomId, XenbusState};
use xbb::stats::{Stat, Stats, Tunables};

/// What a `vbd` is made of: the toolstack's view plus the simulated
/// medium's properties.
#[derive(Clone, Debug)]
pub struct VbdConfig {
    /// The guest.
    pub frontend_dom: DomId,
    /// The virtual device number (51712 = `xvda`).
    pub devid: u32,
    /// The backing file or device.
    pub path: PathBuf,
    /// File (`type` = "file") or raw device (`type` = "phy", `O_DIRECT`).
    pub kind: StoreKind,
    /// `mode`: "w" or "r".
    pub mode: String,
    /// `online`: the back-end survives its front-end closing.
    pub online: bool,
    /// The toolstack's `direct-io-safe`: an image file is opened with
    /// `O_DIRECT` where its file system takes it.
    pub direct_io_safe: bool,
    /// What the store emulates (512- or 4096-byte sectors) and suffers
    /// (faults, a write cache whose power the caller may cut).
    pub store: StoreOptions,
    /// The `hw.xbb.*` tunables of the instance.
    pub tunables: Tunables,
    /// Serve every queue from the instance's task thread instead of a
    /// thread per queue (for comparison).
    pub inline: bool,
    /// Keep the back-end's in-flight journals as files in this directory,
    /// so that it can be restarted and taken over
    /// ([`World::restart_backend`]); none by default, as the kernel.
    pub journal_dir: Option<PathBuf>,
    /// How the back-end's grant mappings are simulated: faulting (the
    /// default) or, for benchmarks, premapped.
    pub grant_mapping: GrantMapping,
}

impl VbdConfig {
    /// A writable, online, file-backed `xvda` of `frontend_dom` on `path`,
    /// 512-byte sectors, default tunables.
    pub fn file(frontend_dom: DomId, path: &Path) -> VbdConfig {
        VbdConfig {
            frontend_dom,
            devid: 51712,
            path: path.to_path_buf(),
            kind: StoreKind::File,
            mode: String::from("w"),
            online: true,
            direct_io_safe: false,
            store: StoreOptions::default(),
            tunables: Tunables::default(),
            inline: false,
            journal_dir: None,
            grant_mapping: GrantMapping::Faulting,
        }
    }

    /// The platform's configuration of the back-end serving this vbd.
    fn host_config(&self, backend_dom: DomId) -> SimHostConfig {
        SimHostConfig {
            backend_dom,
            store: self.store.clone(),
            image_is_disk: self.kind == StoreKind::Device,
            inline: self.inline,
            journal_dir: self.journal_dir.clone(),
            grant_mapping: self.grant_mapping,
        }
    }
}

/// How [`World::restart_backend`] ends the running back-end.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Restart {
    /// The process dies: nothing more is answered, the kernel takes back
    /// its mappings and channels ([`TaskEvent::Crash`]).
    Crash,
    /// The service stops for a restart: it drains, answers what is in
    /// flight and leaves the vbd Connected ([`TaskEvent::HandOver`]).
    HandOver,
}

/// A `vbd` created in a [`World`]. Cheap to clone.
#[derive(Clone, Debug)]
pub struct VbdHandle {
    id: u64,
    backend_dom: DomId,
    frontend_dom: DomId,
    paths: VbdPaths,
    config: VbdConfig,
}

impl VbdHandle {
    /// The guest domain.
    pub fn frontend_dom(&self) -> DomId {
        self.frontend_dom
    }

    /// The back-end domain.
    pub fn backend_dom(&self) -> DomId {
        self.backend_dom
    }

    /// The back-end's XenStore directory.
    pub fn backend_path(&self) -> &str {
        &self.paths.backend
    }

    /// The front-end's XenStore directory.
    pub fn frontend_path(&self) -> &str {
        &self.paths.frontend
    }

    /// What the `vbd` was created from.
    pub fn config(&self) -> &VbdConfig {
        &self.config
    }

    /// The store's fault injection, if any.
    pub fn faults(&self) -> Option<&Arc<store::IoFaults>> {
        self.config.store.faults.as_ref()
    }

    /// The volatile write cache in front of the store, if any: what a
    /// crash-consistency test cuts the power of.
    pub fn cache(&self) -> Option<&Arc<store::WriteCache>> {
        self.config.store.cache.as_ref()
    }

    /// Grows or shrinks the backing file or loop device to `new_bytes`
    /// while the back-end may have it open (see
    /// [`store::resize_medium`]), returning the new size in bytes. The
    /// back-end is not told: [`World::resize_vbd`] does both. `EINVAL`
    /// unless `new_bytes` is a whole number of the store's logical sectors.
    pub fn resize_store(&self, new_bytes: u64) -> io::Result<u64> {
        if new_bytes % u64::from(self.config.store.sector_size.max(512)) != 0 {
            return Err(io::Error::from_raw_os_error(libc::EINVAL));
        }
        store::resize_medium(&self.config.path, new_bytes)
    }
}

/// The simulated Xen host.
#[derive(Debug)]
pub struct World {
    xen: SimXen,
    runners: Mutex<BTreeMap<u64, Arc<BackendRunner>>>,
    next_id: AtomicU64,
}

impl Default for World {
    fn default() -> Self {
        World::new()
    }
}

impl World {
    /// A host whose root file system is mounted.
    pub fn new() -> World {
        let w = World::with_root_unmounted();
        w.xen.mount_root();
        w
    }

    /// A host whose root file system is not mounted yet: back-ends open
    /// nothing until [`World::set_root_mounted`].
    pub fn with_root_unmounted() -> World {
        World {
            xen: SimXen::new(),
            runners: Mutex::new(BTreeMap::new()),
            next_id: AtomicU64::new(1),
        }
    }

    /// The simulated Xen (XenStore, event channels, domains).
    pub fn xen(&self) -> &SimXen {
        &self.xen
    }

    fn lock(&self) -> MutexGuard<'_, BTreeMap<u64, Arc<BackendRunner>>> {
        locked(&self.runners)
    }

    fn runner(&self, vbd: &VbdHandle) -> Option<Arc<BackendRunner>> {
        self.lock().get(&vbd.id).cloned()
    }

    /// Mounts the root file system (`true`), telling every back-end. A
    /// mounted root cannot be unmounted: `false` is refused with `EBUSY`
    /// unless the root was never mounted.
    pub fn set_root_mounted(&self, mounted: bool) -> io::Result<()> {
        match (mounted, self.xen.is_root_mounted()) {
            (true, false) => self.xen.mount_root(),
            (false, true) => return Err(io::Error::from_raw_os_error(libc::EBUSY)),
            _ => {}
        }
        Ok(())
    }

    /// Whether the root file system is mounted.
    pub fn root_mounted(&self) -> bool {
        self.xen.is_root_mounted()
    }

    /// Creates guest domain `dom` with `frames` 4 KiB frames of RAM.
    pub fn add_guest(&self, dom: DomId, frames: u64) -> io::Result<Domain> {
        self.xen
            .create_guest(dom, frames, &std::format!("guest{dom}"))
    }

    /// Guest domain `dom`, if it exists.
    pub fn guest(&self, dom: DomId) -> Option<Domain> {
        self.xen.domains.get(dom)
    }

    /// The grant-table counters of guest `dom`.
    pub fn grant_stats(&self, dom: DomId) -> Option<GrantStats> {
        self.guest(dom).map(|d| d.grants.stats())
    }

    /// Creates a `vbd` as `xl block-attach` does and starts its back-end
    /// instance (served by dom0).
    pub fn create_vbd(&self, cfg: &VbdConfig) -> io::Result<VbdHandle> {
        let path = cfg
            .path
            .to_str()
            .ok_or_else(|| io::Error::from_raw_os_error(libc::EINVAL))?;
        let spec = VbdSpec {
            kind: String::from(match cfg.kind {
                StoreKind::File => "file",
                StoreKind::Device => "phy",
            }),
            mode: cfg.mode.clone(),
            online: cfg.online,
            direct_io_safe: cfg.direct_io_safe,
            devid: cfg.devid,
            ..VbdSpec::new(cfg.frontend_dom, cfg.devid, path)
        };
        let paths = toolstack::create_vbd(&self.xen.xenstore, &spec)
            .map_err(|e| io::Error::other(std::format!("create_vbd: {e:?}")))?;
        let host_cfg = cfg.host_config(spec.backend_dom);
        let runner = BackendRunner::spawn(
            &self.xen,
            &paths.backend,
            cfg.tunables,
            host_cfg,
            Start::Attach,
        )?;
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        self.lock().insert(id, Arc::new(runner));
        Ok(VbdHandle {
            id,
            backend_dom: spec.backend_dom,
            frontend_dom: cfg.frontend_dom,
            paths,
            config: cfg.clone(),
        })
    }

    /// The latest snapshot of `vbd`'s back-end instance; `None` once
    /// destroyed.
    pub fn backend(&self, vbd: &VbdHandle) -> Option<InstanceSnapshot> {
        self.runner(vbd).map(|r| r.snapshot())
    }

    /// The back-end's XenBus state (Unknown once destroyed).
    pub fn backend_state(&self, vbd: &VbdHandle) -> XenbusState {
        self.backend(vbd).map_or(XenbusState::Unknown, |s| s.state)
    }

    /// The back-end's statistics (zero before it published any).
    pub fn backend_stats(&self, vbd: &VbdHandle) -> Stats {
        self.backend(vbd).and_then(|s| s.stats).unwrap_or_default()
    }

    /// One of the back-end's sysctl values.
    pub fn stat(&self, vbd: &VbdHandle, stat: Stat) -> u64 {
        self.backend_stats(vbd).get(stat)
    }

    /// Why the back-end's connection last failed, if it did.
    pub fn backend_last_error(&self, vbd: &VbdHandle) -> Option<ConnectError> {
        self.backend(vbd).and_then(|s| s.last_error)
    }

    /// Waits until `vbd`'s snapshot satisfies `pred` (a hang guard `limit`,
    /// never a timing requirement); otherwise a description of the last
    /// snapshot.
    pub fn wait_backend(
        &self,
        vbd: &VbdHandle,
        limit: Duration,
        pred: impl Fn(&InstanceSnapshot) -> bool,
    ) -> Result<InstanceSnapshot, String> {
        let r = self
            .runner(vbd)
            .ok_or_else(|| String::from("no such vbd"))?;
        r.wait_until(limit, pred)
            .map_err(|last| std::format!("back-end never got there; last snapshot: {last:?}"))
    }

    /// Waits until `vbd`'s back-end is quiescent and returns its exact
    /// snapshot ([`BackendRunner::quiesce`]); `limit` is a hang guard.
    pub fn quiesce(&self, vbd: &VbdHandle, limit: Duration) -> Result<InstanceSnapshot, String> {
        let r = self
            .runner(vbd)
            .ok_or_else(|| String::from("no such vbd"))?;
        r.quiesce(limit).map_err(|last| {
            std::format!("the back-end never became quiescent; last snapshot: {last:?}")
        })
    }

    /// Resizes `vbd`'s store ([`VbdHandle::resize_store`]) and tells its
    /// back-end ([`TaskEvent::MediumChanged`]), as a FreeBSD administrator's
    /// `truncate` / `zfs set volsize` is followed by GEOM's resize event.
    /// Returns the new size in bytes.
    pub fn resize_vbd(&self, vbd: &VbdHandle, new_bytes: u64) -> io::Result<u64> {
        let size = vbd.resize_store(new_bytes)?;
        if !self.send(vbd, TaskEvent::MediumChanged) {
            return Err(io::Error::from_raw_os_error(libc::ESRCH));
        }
        Ok(size)
    }

    /// Sends an event to `vbd`'s task thread (`false` when it is gone).
    pub fn send(&self, vbd: &VbdHandle, ev: TaskEvent) -> bool {
        self.runner(vbd).is_some_and(|r| r.send(ev))
    }

    /// Ends `vbd`'s back-end as `how` says and starts a new one that takes
    /// the vbd over (`Instance::take_over`), as a service restart or a
    /// process restarted after a crash does (issue 16). Returns the old
    /// instance's final snapshot; the new one's is [`World::backend`].
    /// The front-end is left alone: whatever it has in flight waits for
    /// the new back-end.
    pub fn restart_backend(&self, vbd: &VbdHandle, how: Restart) -> io::Result<InstanceSnapshot> {
        let old = self
            .take_runner(vbd)
            .ok_or_else(|| io::Error::from_raw_os_error(libc::ESRCH))?;
        let last = old.end_with(match how {
            Restart::Crash => TaskEvent::Crash,
            Restart::HandOver => TaskEvent::HandOver,
        });
        let cfg = &vbd.config;
        let runner = BackendRunner::spawn(
            &self.xen,
            &vbd.paths.backend,
            cfg.tunables,
            cfg.host_config(vbd.backend_dom),
            Start::TakeOver,
        )?;
        self.lock().insert(vbd.id, Arc::new(runner));
        Ok(last)
    }

    /// Removes `vbd`'s runner from the world and waits (bounded) until
    /// nobody else holds it (a reader of its snapshot, briefly).
    fn take_runner(&self, vbd: &VbdHandle) -> Option<BackendRunner> {
        let mut r = self.lock().remove(&vbd.id)?;
        for _ in 0..1000 {
            match Arc::try_unwrap(r) {
                Ok(runner) => return Some(runner),
                Err(back) => r = back,
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        // Still shared: put it back rather than lose it.
        self.lock().insert(vbd.id, r);
        None
    }

    /// Detaches `vbd`'s instance, ends its thread and removes its XenStore
    /// directories (`xl block-detach`). Returns the final snapshot.
    pub fn destroy_vbd(&self, vbd: &VbdHandle) -> Option<InstanceSnapshot> {
        let runner = self.lock().remove(&vbd.id)?;
        let _ = toolstack::destroy_vbd(&self.xen.xenstore, &vbd.paths);
        let snap = stop(runner);
        let _ = toolstack::remove_vbd(&self.xen.xenstore, &vbd.paths);
        Some(snap)
    }

    /// Detaches every instance and joins their threads; returns the final
    /// snapshots.
    pub fn shutdown(&self) -> Vec<InstanceSnapshot> {
        let runners = std::mem::take(&mut *self.lock());
        runners.into_values().map(stop).collect()
    }
}

/// Stops a runner: joins its thread when this is the last reference (else
/// asks it to stop; the last holder joins it on drop).
fn stop(r: Arc<BackendRunner>) -> InstanceSnapshot {
    match Arc::try_unwrap(r) {
        Ok(r) => r.shutdown(),
        Err(r) => {
            r.send(TaskEvent::Shutdown);
            r.snapshot()
        }
    }
}

impl Drop for World {
    fn drop(&mut self) {
        let _ = self.shutdown();
    }
}
