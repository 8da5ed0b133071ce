//! The `xbb-serve` service: watches the dom0's `backend/vbd` directory,
//! claims every vbd meant for it, and runs one [`Instance`] per vbd on its
//! own thread, as FreeBSD's blkback runs one per device on its taskqueue.
//!
//! A vbd is claimed (`io/xenbus.h`'s back-end side of device creation) only
//! when, inside one XenStore transaction, its `state` is still
//! `XenbusState_Initialising` — a back-end that owns a vbd moves it to
//! InitWait at once, so a later state means another back-end (the kernel's
//! xen-blkback, another xbb-serve) has it —, its `type` is one this service
//! is configured for, its hotplug `script` is one it is configured for (the
//! per-disk choice: `script=block-xbb` on the disk line), and no other
//! xbb-serve has marked it with `xbb-serve-pid`. The mark is written in the
//! same transaction, so two services racing for a vbd cannot both win.
//!
//! A vbd whose mark names an xbb-serve that is gone (it died, or stopped
//! for a restart) is claimed past Initialising too (issue 16): in InitWait
//! it is attached again (its front-end has not connected yet); Connected,
//! it is taken over (`Instance::take_over`) when that xbb-serve left its
//! in-flight journals in the journal directory (`/run/xbb-serve`), and
//! left as it is, with a line in the log, when it did not.
//!
//! On `SIGTERM` (`systemctl stop` or `restart`) every instance is handed
//! over (`Instance::hand_over`): what is in flight is finished and
//! answered, nothing is written to XenStore and the journals are kept, so
//! the guests' disks stay Connected and the next xbb-serve takes them over;
//! their front-ends see a pause. On `SIGINT`/`SIGHUP` every instance is
//! detached instead (each vbd ends Closed).
//! While the kernel's xen-blkback is loaded and probes every new vbd
//! (`/sys/bus/xen-backend/drivers_autoprobe` = 1) it takes each one itself,
//! so none is taken; with probing off, blkback gets only the vbds bound to
//! it (`xbb-dispatch`, from a udev rule), and the others are free.
//!
//! Each instance thread is the instance's control context: it polls its
//! XenStore connection (watches on the back-end directory and the
//! front-end's `state`) and a control descriptor (control messages, queues
//! coming home or failing), and feeds the instance one event at a time.
//! Each queue of a connection runs on a thread of its own (`xbb-qN`, see
//! [`super::host`]), with its own event channel and grant handles, so the
//! queues of one vbd serve their rings at once. `SIGUSR1` prints every
//! instance's `dev.xbb.N` table.

use std::collections::BTreeMap;
use std::io::Write;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::Arc;
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

pub use super::config::Config;
use super::ffi::{self, Wakeup, Xs};
use super::host::XenHost;
use xbb::connect::ConnectError;
use xbb::host::{DomId, XenbusState};
use xbb::instance::Instance;
use xbb::keys;
use xbb::stats::{Stats, Tunable, Tunables, SYSCTLS};
use xbb_ustore::JournalFiles;

/// Where the kernel's back-end shows it is loaded (Linux sysfs).
const KERNEL_BLKBACK: &str = "/sys/bus/xen-backend/drivers/vbd";
/// Whether the kernel binds every new back-end device to its driver
/// (`1`) or only the ones bound explicitly (`0`).
const AUTOPROBE: &str = "/sys/bus/xen-backend/drivers_autoprobe";
/// The node a claiming xbb-serve writes into the vbd's back-end directory.
pub const CLAIM_NODE: &str = "xbb-serve-pid";
/// How long detach waits for the store to drain.
const DRAIN_LIMIT: Duration = Duration::from_secs(60);

/// Why a vbd was not claimed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Skip {
    /// Its state is past Initialising: another back-end has it.
    Owned(String),
    /// Another xbb-serve marked it.
    OtherServer(String),
    /// Its `type` is not one configured.
    Type(String),
    /// Its hotplug `script` is not one configured.
    Script(String),
    /// The kernel's xen-blkback is loaded and probes every new vbd.
    KernelBackend,
    /// An xbb-serve that is gone left it Connected without an in-flight
    /// journal to take it over from.
    NoJournal,
    /// It went away, or XenStore failed.
    Gone,
}

/// How a claimed vbd is served.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Claim {
    /// Attached as a new vbd (`Instance::attach`).
    Attach,
    /// Taken over from the xbb-serve that left it Connected
    /// (`Instance::take_over`).
    TakeOver,
}

/// What a claim transaction read of a vbd: its `state`, `type`, `script`
/// and [`CLAIM_NODE`] nodes (`None` when absent).
#[derive(Clone, Copy, Debug, Default)]
pub struct VbdNodes<'a> {
    /// `state`.
    pub state: Option<&'a str>,
    /// `type`.
    pub kind: Option<&'a str>,
    /// `script`: the hotplug script libxl runs (an absolute path).
    pub script: Option<&'a str>,
    /// [`CLAIM_NODE`], unless it names an xbb-serve that is gone.
    pub owner: Option<&'a str>,
    /// [`CLAIM_NODE`] names an xbb-serve that is gone: the vbd was served
    /// by a previous instance of this service.
    pub previous: bool,
    /// That xbb-serve left its in-flight journals for the vbd.
    pub journal: bool,
}

/// Decides, from what a claim transaction read, whether `cfg`'s service
/// (process `me`) takes a vbd, and how.
pub fn claim_decision(nodes: VbdNodes<'_>, me: &str, cfg: &Config) -> Result<Claim, Skip> {
    let VbdNodes {
        state,
        kind,
        script,
        owner,
        previous,
        journal,
    } = nodes;
    let types = &cfg.types;
    let state = state.ok_or(Skip::Gone)?;
    match owner {
        Some(o) if o != me => return Err(Skip::OtherServer(o.to_string())),
        _ => {}
    }
    // Even our own mark does not make a vbd past Initialising ours again:
    // one we served and left Closed stays with the toolstack. One an
    // xbb-serve that is gone left before it connected is attached again,
    // one it left Connected taken over from its journals.
    let s = state.trim();
    let claim = if s == XenbusState::Initialising.as_str()
        || (previous && s == XenbusState::InitWait.as_str())
    {
        Claim::Attach
    } else if previous && s == XenbusState::Connected.as_str() {
        if !journal {
            return Err(Skip::NoJournal);
        }
        Claim::TakeOver
    } else {
        return Err(Skip::Owned(state.to_string()));
    };
    let kind = kind.unwrap_or("");
    if !types.is_empty() && !types.iter().any(|t| t == kind) {
        return Err(Skip::Type(kind.to_string()));
    }
    if !cfg.scripts.is_empty() {
        let script = script.unwrap_or("");
        let name = script.rsplit('/').next().unwrap_or("");
        if !cfg.scripts.iter().any(|s| s == name) {
            return Err(Skip::Script(script.to_string()));
        }
    }
    Ok(claim)
}

/// Whether the kernel's xen-blkback is loaded and binds every new vbd
/// itself (Linux: its driver directory exists and the bus probes
/// automatically).
pub fn kernel_backend_takes_all() -> bool {
    std::path::Path::new(KERNEL_BLKBACK).exists()
        && std::fs::read_to_string(AUTOPROBE).map_or(true, |v| v.trim() != "0")
}

fn read_str(xs: &mut Xs, txn: u32, path: &str) -> Result<Option<String>, i32> {
    match xs.read(txn, path) {
        Ok(v) => Ok(Some(String::from_utf8_lossy(&v).into_owned())),
        Err(libc::ENOENT) => Ok(None),
        Err(e) => Err(e),
    }
}

/// Whether process `pid` of this domain is an xbb-serve still running: it
/// exists and its name (when it can be read) is xbb-serve's, so that a
/// process that took a dead xbb-serve's pid does not keep its vbds.
fn xbb_serve_alive(pid: u32) -> bool {
    let dir = std::path::PathBuf::from(format!("/proc/{pid}"));
    dir.exists()
        && std::fs::read_to_string(dir.join("comm")).map_or(true, |c| c.trim() == "xbb-serve")
}

/// Claims the vbd at `path` (`key`: its front-end domain and device) for
/// this process, atomically, and says how it is to be served.
fn claim(xs: &mut Xs, path: &str, key: (u32, u32), cfg: &Config) -> Result<Claim, Skip> {
    if !cfg.ignore_kernel_backend && kernel_backend_takes_all() {
        return Err(Skip::KernelBackend);
    }
    let me = std::process::id().to_string();
    for _ in 0..16 {
        let txn = xs.transaction_start().map_err(|_| Skip::Gone)?;
        let read = (|| {
            Ok::<_, i32>((
                read_str(xs, txn, &format!("{path}/{}", keys::STATE))?,
                read_str(xs, txn, &format!("{path}/{}", keys::TYPE))?,
                read_str(xs, txn, &format!("{path}/{}", keys::SCRIPT))?,
                read_str(xs, txn, &format!("{path}/{CLAIM_NODE}"))?,
            ))
        })();
        let Ok((state, kind, script, mut owner)) = read else {
            let _ = xs.transaction_end(txn, false);
            return Err(Skip::Gone);
        };
        // The mark of an xbb-serve that is gone (no such process in this
        // domain) binds nobody: the vbd was a previous instance's.
        let previous = owner.as_deref().is_some_and(|o| {
            o.trim()
                .parse::<u32>()
                .is_ok_and(|p| p != std::process::id() && !xbb_serve_alive(p))
        });
        if previous {
            owner = None;
        }
        let journal = cfg.journal_dir.as_ref().is_some_and(|d| {
            DomId::try_from(key.0).is_ok_and(|dom| JournalFiles::new(d).exists(dom, key.1))
        });
        let nodes = VbdNodes {
            state: state.as_deref(),
            kind: kind.as_deref(),
            script: script.as_deref(),
            owner: owner.as_deref(),
            previous,
            journal,
        };
        let how = match claim_decision(nodes, &me, cfg) {
            Ok(how) => how,
            Err(s) => {
                let _ = xs.transaction_end(txn, false);
                return Err(s);
            }
        };
        if xs
            .write(txn, &format!("{path}/{CLAIM_NODE}"), me.as_bytes())
            .is_err()
        {
            let _ = xs.transaction_end(txn, false);
            return Err(Skip::Gone);
        }
        match xs.transaction_end(txn, true) {
            Ok(()) => return Ok(how),
            Err(libc::EAGAIN) => continue,
            Err(_) => return Err(Skip::Gone),
        }
    }
    Err(Skip::Gone)
}

enum Ctl {
    Table(Sender<String>),
    /// Detach the vbd (each ends Closed).
    Shutdown,
    /// Leave the vbd to the next xbb-serve (`Instance::hand_over`).
    HandOver,
}

#[derive(Debug)]
struct Vbd {
    unit: usize,
    path: String,
    ctl: Sender<Ctl>,
    wake: Arc<Wakeup>,
    finished: Arc<AtomicBool>,
    join: Option<JoinHandle<()>>,
}

impl Vbd {
    fn send(&self, c: Ctl) {
        if self.ctl.send(c).is_ok() {
            self.wake.wake();
        }
    }
}

/// Hands the instance what its queues' threads reported: failures, then
/// queues that came home. Returns how many of each.
fn reports(inst: &mut Instance, host: &mut XenHost) -> (usize, usize) {
    let (home, failed) = host.take_reports();
    let n = (home.len(), failed.len());
    for o in failed {
        inst.queue_failed(host, o);
    }
    for q in home {
        inst.give_back(host, q);
    }
    n
}

/// Formats one instance's table: `dev.xbb.N.<leaf>: <value>` lines.
pub fn format_table(
    unit: usize,
    location: &str,
    state: XenbusState,
    inst: Option<&Instance>,
) -> String {
    let mut o = String::new();
    o.push_str(&format!("dev.xbb.{unit}.%location: {location}\n"));
    o.push_str(&format!("dev.xbb.{unit}.state: {}\n", state as u8));
    if let Some(inst) = inst {
        let s: Stats = inst.stats();
        for (d, v) in s.iter() {
            o.push_str(&format!("dev.xbb.{unit}.{}: {v}\n", d.name));
        }
        for q in 0..inst.num_queues() {
            if let Some(qs) = inst.queue_stats(q) {
                for d in SYSCTLS.iter().filter(|d| d.per_queue()) {
                    o.push_str(&format!(
                        "dev.xbb.{unit}.queue.{q}.{}: {}\n",
                        d.name,
                        qs.get(d.stat)
                    ));
                }
            }
        }
    }
    o
}

/// The service. [`Server::run`] returns when a terminating signal arrived
/// and every instance is detached.
#[derive(Debug)]
pub struct Server {
    cfg: Config,
    xs: Xs,
    dom: DomId,
    root: String,
    vbds: BTreeMap<(u32, u32), Vbd>,
    skipped: BTreeMap<(u32, u32), Skip>,
    reaped: Arc<Wakeup>,
    sigfd: i32,
}

/// Tells systemd (`$NOTIFY_SOCKET`, `sd_notify(3)`'s protocol: one datagram
/// of `KEY=VALUE` lines) about the service's state; nothing without it.
pub fn sd_notify(state: &str) {
    use std::os::unix::net::{SocketAddr, UnixDatagram};
    let Some(path) = std::env::var_os("NOTIFY_SOCKET") else {
        return;
    };
    let bytes = std::os::unix::ffi::OsStrExt::as_bytes(path.as_os_str());
    let addr = match bytes.strip_prefix(b"@") {
        Some(name) => {
            use std::os::linux::net::SocketAddrExt;
            SocketAddr::from_abstract_name(name)
        }
        None => SocketAddr::from_pathname(std::path::Path::new(&path)),
    };
    let sent = UnixDatagram::unbound().and_then(|sock| match addr {
        Ok(a) => sock.send_to_addr(state.as_bytes(), &a),
        Err(e) => Err(e),
    });
    if let Err(e) = sent {
        log(&format!("sd_notify {state}: {e}"));
    }
}

/// Writes `msg` to standard error (the journal under systemd).
pub(crate) fn log(msg: &str) {
    let mut e = std::io::stderr();
    let _ = writeln!(e, "xbb-serve: {msg}");
}

impl Server {
    /// Connects to XenStore, learns this domain's id, and blocks the
    /// signals the service handles (call before other threads start).
    pub fn new(mut cfg: Config) -> Result<Server, String> {
        if cfg.copy_grants {
            // A copied page has no persistent mapping to keep.
            if cfg.tunables.get(Tunable::MaxPersistentGrants) != 0 {
                log("copying data pages: persistent grants are not offered");
            }
            cfg.tunables
                .set(Tunable::MaxPersistentGrants, 0)
                .map_err(|e| format!("max_persistent_grants: {e:?}"))?;
        }
        let sigfd = ffi::signal_fd().map_err(|e| format!("signalfd: {e}"))?;
        let mut xs = Xs::open().map_err(|e| format!("cannot connect to xenstored: {e}"))?;
        let dom = match xs.read(0, "domid") {
            Ok(v) => String::from_utf8_lossy(&v)
                .trim()
                .parse::<DomId>()
                .map_err(|_| String::from("unreadable domid node"))?,
            // dom0's own `domid` node may be absent: a relative path
            // resolves against our home, and dom0 is 0.
            Err(_) => 0,
        };
        Ok(Server {
            cfg,
            xs,
            dom,
            root: format!("/local/domain/{dom}/backend/vbd"),
            vbds: BTreeMap::new(),
            skipped: BTreeMap::new(),
            reaped: Arc::new(Wakeup::new().map_err(|e| format!("eventfd: {e}"))?),
            sigfd,
        })
    }

    fn scan(&mut self) {
        let mut present = Vec::new();
        let doms = self.xs.directory(0, &self.root).unwrap_or_default();
        for d in doms {
            let Ok(fe) = d.parse::<u32>() else { continue };
            let devs = self
                .xs
                .directory(0, &format!("{}/{d}", self.root))
                .unwrap_or_default();
            for v in devs {
                if let Ok(dev) = v.parse::<u32>() {
                    present.push((fe, dev));
                }
            }
        }
        // Gone from XenStore: the instance notices on its own watch; make
        // sure it ends.
        let gone: Vec<_> = self
            .vbds
            .keys()
            .filter(|k| !present.contains(k))
            .copied()
            .collect();
        for k in gone {
            if let Some(v) = self.vbds.get(&k) {
                v.send(Ctl::Shutdown);
            }
        }
        self.skipped.retain(|k, _| present.contains(k));
        for k in present {
            if self.vbds.contains_key(&k) || self.skipped.contains_key(&k) {
                continue;
            }
            let path = format!("{}/{}/{}", self.root, k.0, k.1);
            match claim(&mut self.xs, &path, k, &self.cfg) {
                Ok(how) => self.start(k, path, how),
                Err(Skip::NoJournal) => {
                    log(&format!(
                        "not serving {path}: a previous xbb-serve left it Connected without an \
                         in-flight journal to take it over from; its guest's disk stays stalled \
                         until it is detached"
                    ));
                    self.skipped.insert(k, Skip::NoJournal);
                }
                Err(s) => {
                    log(&format!("not serving {path}: {s:?}"));
                    self.skipped.insert(k, s);
                }
            }
        }
    }

    fn start(&mut self, key: (u32, u32), path: String, how: Claim) {
        let unit = (0..)
            .find(|u| !self.vbds.values().any(|v| v.unit == *u))
            .unwrap_or(0);
        let wake = match Wakeup::new() {
            Ok(w) => Arc::new(w),
            Err(e) => return log(&format!("{path}: eventfd: {e}")),
        };
        let (tx, rx) = mpsc::channel();
        let finished = Arc::new(AtomicBool::new(false));
        let t = InstanceThread {
            path: path.clone(),
            unit,
            tunables: self.cfg.tunables,
            verbose: self.cfg.verbose,
            copy: self.cfg.copy_grants,
            sector_size: self.cfg.sector_size,
            io: self.cfg.io,
            journal_dir: self.cfg.journal_dir.clone(),
            take_over: how == Claim::TakeOver,
            ctl: rx,
            wake: Arc::clone(&wake),
            finished: Arc::clone(&finished),
            reaped: Arc::clone(&self.reaped),
        };
        let join = thread::Builder::new()
            .name(format!("xbb{unit}"))
            .spawn(move || t.run());
        match join {
            Ok(j) => {
                let what = match how {
                    Claim::Attach => "serving",
                    Claim::TakeOver => "taking over",
                };
                log(&format!("dev.xbb.{unit}: {what} {path}"));
                self.vbds.insert(
                    key,
                    Vbd {
                        unit,
                        path,
                        ctl: tx,
                        wake,
                        finished,
                        join: Some(j),
                    },
                );
            }
            Err(e) => log(&format!("{path}: thread: {e}")),
        }
    }

    fn reap(&mut self) {
        let done: Vec<_> = self
            .vbds
            .iter()
            .filter(|(_, v)| v.finished.load(Ordering::Acquire))
            .map(|(k, _)| *k)
            .collect();
        for k in done {
            if let Some(mut v) = self.vbds.remove(&k) {
                if let Some(j) = v.join.take() {
                    let _ = j.join();
                }
                log(&format!("dev.xbb.{}: {} released", v.unit, v.path));
            }
        }
        // The toolstack may have created the same vbd again (xl
        // block-detach, then block-attach of the same vdev) while the old
        // instance was ending: look again. A vbd left behind Closed is not
        // Initialising, so it is not claimed twice.
        self.scan();
    }

    /// Every instance's table, in unit order, between marker lines.
    pub fn table(&mut self) -> String {
        let mut out = String::from("# xbb-serve table begin\n");
        let mut parts: Vec<(usize, Receiver<String>)> = Vec::new();
        for v in self.vbds.values() {
            let (tx, rx) = mpsc::channel();
            v.send(Ctl::Table(tx));
            parts.push((v.unit, rx));
        }
        parts.sort_by_key(|p| p.0);
        for (_, rx) in parts {
            if let Ok(s) = rx.recv_timeout(Duration::from_secs(5)) {
                out.push_str(&s);
            }
        }
        out.push_str("# xbb-serve table end\n");
        out
    }

    /// Serves until `SIGTERM`, `SIGINT` or `SIGHUP`; then hands every
    /// instance over to the next xbb-serve (`SIGTERM`) or detaches it (the
    /// others), and returns.
    pub fn run(&mut self) -> Result<(), String> {
        let root = self.root.clone();
        self.xs
            .watch(&root, "vbd")
            .map_err(|e| format!("watch {root}: errno {e}"))?;
        log(&format!("domain {}: watching {root}", self.dom));
        let xfd = self.xs.fileno();
        let mut ready = [false; 3];
        self.scan();
        self.remove_stale_journals();
        // Under systemd (Type=notify): the vbds there are claimed and new
        // ones will be seen, so guests may start now.
        sd_notify("READY=1");
        loop {
            ffi::poll_readable(&[xfd, self.sigfd, self.reaped.fd()], -1, &mut ready)
                .map_err(|e| format!("poll: {e}"))?;
            if ready[0] {
                let mut any = false;
                while self.xs.check_watch().is_some() {
                    any = true;
                }
                if any {
                    self.scan();
                }
            }
            if ready[2] {
                self.reaped.clear();
                self.reap();
            }
            if ready[1] {
                while let Some(sig) = ffi::read_signal(self.sigfd) {
                    if sig == libc::SIGUSR1 {
                        let t = self.table();
                        let mut o = std::io::stdout();
                        let _ = o.write_all(t.as_bytes());
                        let _ = o.flush();
                    } else if sig == libc::SIGTERM {
                        log(&format!(
                            "signal {sig}: handing every vbd over to the next xbb-serve"
                        ));
                        sd_notify("STOPPING=1");
                        self.shutdown(Ctl::HandOver);
                        return Ok(());
                    } else {
                        log(&format!("signal {sig}: detaching every vbd"));
                        sd_notify("STOPPING=1");
                        self.shutdown(Ctl::Shutdown);
                        return Ok(());
                    }
                }
            }
        }
    }

    /// Ends every instance with `how` ([`Ctl::Shutdown`] or
    /// [`Ctl::HandOver`]) and waits for each.
    fn shutdown(&mut self, how: Ctl) {
        let hand_over = matches!(how, Ctl::HandOver);
        for v in self.vbds.values() {
            v.send(if hand_over {
                Ctl::HandOver
            } else {
                Ctl::Shutdown
            });
        }
        let done = if hand_over { "handed over" } else { "detached" };
        for (_, mut v) in core::mem::take(&mut self.vbds) {
            if let Some(j) = v.join.take() {
                let _ = j.join();
            }
            log(&format!("dev.xbb.{}: {} {done}", v.unit, v.path));
        }
        let root = self.root.clone();
        self.xs.unwatch(&root, "vbd");
    }

    /// Removes the journal files of vbds that are gone from XenStore (the
    /// toolstack removed them while no xbb-serve ran): nobody will take
    /// them over.
    fn remove_stale_journals(&mut self) {
        let Some(dir) = self.cfg.journal_dir.as_ref() else {
            return;
        };
        let files = JournalFiles::new(dir);
        for (dom, devid) in files.vbds() {
            let state = format!("{}/{dom}/{devid}/{}", self.root, keys::STATE);
            if matches!(self.xs.read(0, &state), Err(libc::ENOENT)) {
                log(&format!(
                    "removing the journals of {}/{dom}/{devid}: no such vbd",
                    self.root
                ));
                files.remove_vbd(dom, devid);
            }
        }
    }
}

struct InstanceThread {
    path: String,
    unit: usize,
    tunables: Tunables,
    verbose: bool,
    copy: bool,
    sector_size: u32,
    io: xbb_ustore::IoEngine,
    journal_dir: Option<std::path::PathBuf>,
    /// Take the vbd over instead of attaching it.
    take_over: bool,
    ctl: Receiver<Ctl>,
    wake: Arc<Wakeup>,
    finished: Arc<AtomicBool>,
    reaped: Arc<Wakeup>,
}

impl InstanceThread {
    fn run(self) {
        if let Err(e) = self.serve() {
            log(&format!("dev.xbb.{}: {}: {e}", self.unit, self.path));
        }
        self.finished.store(true, Ordering::Release);
        self.reaped.wake();
    }

    fn table(&self, inst: &Instance) -> String {
        let loc = self
            .path
            .split_once("/backend/")
            .map_or(self.path.as_str(), |(_, l)| l);
        format_table(
            self.unit,
            &format!("backend/{loc}"),
            inst.state(),
            Some(inst),
        )
    }

    fn serve(&self) -> Result<(), String> {
        let mut host = XenHost::new(
            Arc::clone(&self.wake),
            self.copy,
            self.sector_size,
            self.io,
            self.journal_dir.clone(),
        )
        .map_err(|e| format!("open: {e}"))?;
        let mut inst =
            Instance::new(&self.path, &self.tunables).map_err(|e| format!("instance: {e:?}"))?;
        host.xs()
            .watch(&self.path, "be")
            .map_err(|e| format!("watch: errno {e}"))?;
        if self.take_over {
            inst.take_over(&mut host);
        } else {
            inst.attach(&mut host);
        }
        let mut fe_watch: Option<String> = None;
        let mut ready = [false; 2];
        let mut stop = false;
        let mut hand_over = false;
        let mut seen = (XenbusState::Unknown, None);
        while !stop {
            self.report(&inst, &mut seen);
            self.rewatch(&mut host, &inst, &mut fe_watch);
            let xfd = host.xs().fileno();
            let fds = [xfd, self.wake.fd()];
            ffi::poll_readable(&fds, -1, &mut ready).map_err(|e| format!("poll: {e}"))?;
            if ready[1] {
                self.wake.clear();
            }
            let (n_home, n_failed) = reports(&mut inst, &mut host);
            if self.verbose && (n_home, n_failed) != (0, 0) {
                log(&format!(
                    "dev.xbb.{}: {n_home} queues home, {n_failed} failures",
                    self.unit
                ));
            }
            if ready[0] {
                let mut fired = false;
                while let Some((path, token)) = host.xs().check_watch() {
                    if self.verbose {
                        log(&format!("dev.xbb.{}: watch {token} {path}", self.unit));
                    }
                    fired = true;
                }
                if fired {
                    // The toolstack removed the device: nothing is left to
                    // serve (the front-end was closed first, or is gone).
                    if xbb::connect::backend_removed(&mut host, &self.path) {
                        host.set_removed();
                        stop = true;
                    } else {
                        inst.frontend_changed(&mut host);
                    }
                }
            }
            while let Ok(c) = self.ctl.try_recv() {
                match c {
                    Ctl::Table(tx) => {
                        let _ = tx.send(self.table(&inst));
                    }
                    Ctl::Shutdown => stop = true,
                    Ctl::HandOver => {
                        stop = true;
                        hand_over = true;
                    }
                }
            }
        }
        host.xs().unwatch(&self.path, "be");
        if let Some(p) = fe_watch.take() {
            host.xs().unwatch(&p, "fe");
        }
        if hand_over {
            inst.hand_over(&mut host);
        } else {
            inst.detach(&mut host);
        }
        let deadline = Instant::now() + DRAIN_LIMIT;
        while !inst.is_detached() {
            if inst.is_idle() {
                return Err(String::from("detach: idle but not detached"));
            }
            if Instant::now() > deadline {
                return Err(String::from("detach: I/O still in flight"));
            }
            let _ = ffi::poll_readable(&[self.wake.fd()], 100, &mut ready[..1]);
            self.wake.clear();
            reports(&mut inst, &mut host);
        }
        drop(inst);
        drop(host);
        Ok(())
    }

    /// Logs state changes and new connection errors, as a kernel driver
    /// would on the console.
    fn report(&self, inst: &Instance, seen: &mut (XenbusState, Option<ConnectError>)) {
        let now = (inst.state(), inst.last_error());
        if now.0 != seen.0 {
            log(&format!(
                "dev.xbb.{}: state {:?} -> {:?}",
                self.unit, seen.0, now.0
            ));
        }
        if now.1.is_some() && now.1 != seen.1 {
            log(&format!("dev.xbb.{}: error: {:?}", self.unit, now.1));
        }
        *seen = now;
    }

    fn rewatch(&self, host: &mut XenHost, inst: &Instance, cur: &mut Option<String>) {
        let want = inst.frontend_path().map(|p| format!("{p}/{}", keys::STATE));
        if want == *cur {
            return;
        }
        if let Some(p) = cur.take() {
            host.xs().unwatch(&p, "fe");
        }
        if let Some(p) = want {
            if host.xs().watch(&p, "fe").is_ok() {
                *cur = Some(p);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nodes<'a>(
        state: Option<&'a str>,
        kind: Option<&'a str>,
        owner: Option<&'a str>,
    ) -> VbdNodes<'a> {
        VbdNodes {
            state,
            kind,
            script: Some("/etc/xen/scripts/block"),
            owner,
            previous: false,
            journal: false,
        }
    }

    #[test]
    fn claims_only_fresh_vbds_of_its_types() {
        let t = Config::default();
        let any = Config {
            types: Vec::new(),
            ..Config::default()
        };
        let d = |n, cfg: &Config| claim_decision(n, "7", cfg);
        assert_eq!(
            d(nodes(Some("1"), Some("phy"), None), &t),
            Ok(Claim::Attach)
        );
        assert_eq!(
            d(nodes(Some("1\n"), Some("file"), None), &any),
            Ok(Claim::Attach)
        );
        // Another back-end moved it on.
        assert_eq!(
            d(nodes(Some("2"), Some("phy"), None), &t),
            Err(Skip::Owned(String::from("2")))
        );
        assert_eq!(
            d(nodes(Some("4"), Some("phy"), None), &t),
            Err(Skip::Owned(String::from("4")))
        );
        // Another xbb-serve marked it, whatever its state.
        assert_eq!(
            d(nodes(Some("1"), Some("phy"), Some("8")), &t),
            Err(Skip::OtherServer(String::from("8")))
        );
        // Our own mark does not take back a vbd past Initialising.
        assert_eq!(
            d(nodes(Some("6"), Some("phy"), Some("7")), &t),
            Err(Skip::Owned(String::from("6")))
        );
        assert_eq!(
            d(nodes(Some("1"), Some("phy"), Some("7")), &t),
            Ok(Claim::Attach)
        );
        assert_eq!(
            d(nodes(Some("1"), Some("vbd3"), None), &t),
            Err(Skip::Type(String::from("vbd3")))
        );
        assert_eq!(
            d(nodes(Some("1"), None, None), &t),
            Err(Skip::Type(String::new()))
        );
        assert_eq!(d(nodes(None, Some("phy"), None), &t), Err(Skip::Gone));
    }

    /// Issue 16: the vbds an xbb-serve that is gone left behind: attached
    /// again before they connected, taken over once Connected if it left
    /// its journals, else left alone (and said so); never one it left
    /// Closing or Closed, never another live server's.
    #[test]
    fn a_previous_servers_vbds_are_taken_back() {
        let cfg = Config {
            scripts: vec![String::from("block-xbb")],
            ..Config::default()
        };
        let left = |state, journal| VbdNodes {
            state: Some(state),
            kind: Some("phy"),
            script: Some("/etc/xen/scripts/block-xbb"),
            owner: None,
            previous: true,
            journal,
        };
        let d = |n| claim_decision(n, "7", &cfg);
        assert_eq!(d(left("4", true)), Ok(Claim::TakeOver));
        assert_eq!(d(left("4\n", true)), Ok(Claim::TakeOver));
        assert_eq!(d(left("4", false)), Err(Skip::NoJournal));
        assert_eq!(d(left("2", false)), Ok(Claim::Attach));
        assert_eq!(d(left("1", false)), Ok(Claim::Attach));
        for st in ["3", "5", "6"] {
            assert_eq!(
                d(left(st, true)),
                Err(Skip::Owned(String::from(st))),
                "{st}"
            );
        }
        // Only a previous xbb-serve's: without its mark, Connected is
        // another back-end's.
        let mut theirs = left("4", true);
        theirs.previous = false;
        assert_eq!(d(theirs), Err(Skip::Owned(String::from("4"))));
        // A live server's mark wins.
        let mut live = left("4", true);
        live.owner = Some("8");
        assert_eq!(d(live), Err(Skip::OtherServer(String::from("8"))));
        // The type and script still decide.
        let mut other = left("4", true);
        other.script = Some("/etc/xen/scripts/block");
        assert_eq!(
            d(other),
            Err(Skip::Script(String::from("/etc/xen/scripts/block")))
        );
        let mut qdisk = left("4", true);
        qdisk.kind = Some("qdisk");
        assert_eq!(d(qdisk), Err(Skip::Type(String::from("qdisk"))));
    }

    #[test]
    fn with_scripts_configured_only_their_vbds_are_claimed() {
        let cfg = Config {
            scripts: vec![String::from("block-xbb")],
            ..Config::default()
        };
        let vbd = |script| VbdNodes {
            state: Some("1"),
            kind: Some("phy"),
            script,
            owner: None,
            previous: false,
            journal: false,
        };
        let d = |n| claim_decision(n, "7", &cfg);
        assert_eq!(
            d(vbd(Some("/etc/xen/scripts/block-xbb"))),
            Ok(Claim::Attach)
        );
        assert_eq!(d(vbd(Some("block-xbb"))), Ok(Claim::Attach));
        // xen-blkback's disks (Debian's `block`, a drbd script) and disks
        // with no script at all are left alone.
        for other in [
            "/etc/xen/scripts/block",
            "/etc/xen/scripts/block-drbd",
            "/x/block-xbb2",
        ] {
            assert_eq!(
                d(vbd(Some(other))),
                Err(Skip::Script(String::from(other))),
                "{other}"
            );
        }
        assert_eq!(d(vbd(None)), Err(Skip::Script(String::new())));
        // The other conditions still hold.
        let mut taken = vbd(Some("/etc/xen/scripts/block-xbb"));
        taken.state = Some("2");
        assert_eq!(d(taken), Err(Skip::Owned(String::from("2"))));
        taken.state = Some("1");
        taken.kind = Some("qdisk");
        assert_eq!(d(taken), Err(Skip::Type(String::from("qdisk"))));
        // Without scripts configured, the script does not matter.
        let plain = Config::default();
        assert_eq!(claim_decision(vbd(None), "7", &plain), Ok(Claim::Attach));
    }

    #[test]
    fn sd_notify_sends_one_datagram_to_notify_socket() {
        let dir = std::env::temp_dir().join(format!("xbb-notify-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("notify");
        let sock = std::os::unix::net::UnixDatagram::bind(&path).unwrap();
        std::env::set_var("NOTIFY_SOCKET", &path);
        sd_notify("READY=1");
        std::env::remove_var("NOTIFY_SOCKET");
        let mut buf = [0u8; 64];
        sock.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let n = sock.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"READY=1");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn table_lines_are_sysctl_shaped() {
        let inst =
            Instance::new("/local/domain/0/backend/vbd/3/51712", &Tunables::default()).unwrap();
        let t = format_table(2, "backend/vbd/3/51712", inst.state(), Some(&inst));
        assert!(t.starts_with("dev.xbb.2.%location: backend/vbd/3/51712\n"));
        for l in t.lines() {
            let (k, v) = l.split_once(": ").unwrap();
            assert!(k.starts_with("dev.xbb.2."), "{l}");
            assert!(!v.is_empty(), "{l}");
        }
        for d in SYSCTLS {
            assert!(t.contains(&format!("dev.xbb.2.{}: ", d.name)), "{}", d.name);
        }
    }
}
