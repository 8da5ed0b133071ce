//! The runner: a simulated Xen host, the scenario's guests, its steps in
//! order.

use super::*;

/// How a scenario is run.
#[derive(Clone, Debug)]
pub struct RunOptions {
    /// Print a line per phase and guest on stderr.
    pub progress: bool,
    /// Where the disk images go; a fresh temporary directory (removed at the
    /// end) when `None`.
    pub dir: Option<PathBuf>,
    /// Bound on every wait (a guard against hangs, never a timing check).
    pub hang_guard: Duration,
    /// How long a `wait` step with `count = 0` watches for responses that
    /// must not come.
    pub quiet_period: Duration,
    /// How long an `expect` step waits for the back-end to get where it is
    /// expected before reporting a mismatch.
    pub settle: Duration,
}

impl Default for RunOptions {
    fn default() -> Self {
        RunOptions {
            progress: false,
            dir: None,
            hang_guard: Duration::from_secs(20),
            quiet_period: Duration::from_millis(200),
            settle: Duration::from_secs(5),
        }
    }
}

/// A directory removed when dropped (unless it was given by the user).
pub(super) struct WorkDir {
    pub(super) path: PathBuf,
    pub(super) remove: bool,
}

impl WorkDir {
    pub(super) fn new(given: Option<&Path>) -> std::io::Result<WorkDir> {
        if let Some(p) = given {
            std::fs::create_dir_all(p)?;
            return Ok(WorkDir {
                path: p.to_path_buf(),
                remove: false,
            });
        }
        let base = std::env::temp_dir();
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        for attempt in 0..100u32 {
            let p = base.join(format!(
                "xbb-lab-{}-{nanos:x}-{attempt}",
                std::process::id()
            ));
            match std::fs::create_dir(&p) {
                Ok(()) => {
                    return Ok(WorkDir {
                        path: p,
                        remove: true,
                    })
                }
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
                Err(e) => return Err(e),
            }
        }
        Err(std::io::Error::from(std::io::ErrorKind::AlreadyExists))
    }
}

impl Drop for WorkDir {
    fn drop(&mut self) {
        if self.remove {
            let _ = std::fs::remove_dir_all(&self.path);
        }
    }
}

/// Creates a sparse image of `size` bytes (an existing file is truncated).
pub fn create_sparse_image(path: &Path, size: u64) -> std::io::Result<()> {
    let f = std::fs::File::create(path)?;
    f.set_len(size)
}

/// A manual request awaiting its response.
#[derive(Clone, Debug)]
pub(super) struct Pending {
    pub(super) step: usize,
    pub(super) expect: Option<Status>,
    /// Statuses any of which the response may have (empty: any).
    pub(super) expect_in: Vec<Status>,
    pub(super) expect_data: Option<u8>,
}

/// A guest's front-end, or nothing while a workload thread has it
/// ([`FeSlot::take`], [`FeSlot::put`]). Steps reach it through `Deref`:
/// validation keeps steps played during a workload off its guests.
pub(super) struct FeSlot(Option<Frontend>);

impl FeSlot {
    pub(super) fn take(&mut self) -> Option<Frontend> {
        self.0.take()
    }

    pub(super) fn put(&mut self, fe: Frontend) {
        self.0 = Some(fe);
    }
}

impl std::ops::Deref for FeSlot {
    type Target = Frontend;
    fn deref(&self) -> &Frontend {
        self.0
            .as_ref()
            .expect("a step reached a front-end a workload thread has (validation lets none)")
    }
}

impl std::ops::DerefMut for FeSlot {
    fn deref_mut(&mut self) -> &mut Frontend {
        self.0
            .as_mut()
            .expect("a step reached a front-end a workload thread has (validation lets none)")
    }
}

/// One guest while the scenario runs.
pub(super) struct GuestRt {
    pub(super) name: String,
    pub(super) spec: GuestSpec,
    pub(super) vbd: VbdHandle,
    pub(super) fe: FeSlot,
    pub(super) faults: Arc<IoFaults>,
    pub(super) io: IoTotals,
    /// Manual requests in flight, by id.
    pub(super) pending: BTreeMap<u64, Pending>,
    /// Responses taken from the ring and not yet consumed by a step.
    pub(super) responses: std::collections::VecDeque<BlkifResponse>,
    /// The id the front-end gives its next request, when known (it numbers
    /// requests in order; a workload's requests make it unknown).
    pub(super) next_id: Option<u64>,
    /// The NBD server of an `nbd` store.
    pub(super) nbd: Option<NbdKit>,
}

/// The state of a run: the world, the guests, the findings.
pub(super) struct Run<'a> {
    pub(super) opts: &'a RunOptions,
    pub(super) world: World,
    pub(super) guests: Vec<GuestRt>,
    pub(super) mismatches: Vec<Mismatch>,
    pub(super) checks: u64,
}

impl Run<'_> {
    pub(super) fn progress(&self, msg: fmt::Arguments<'_>) {
        if self.opts.progress {
            eprintln!("[xbb-lab] {msg}");
        }
    }

    /// Records one check; a mismatch when `ok` is false.
    pub(super) fn check(
        &mut self,
        step: usize,
        action: &str,
        guest: Option<&str>,
        ok: bool,
        what: impl FnOnce() -> String,
    ) {
        self.checks += 1;
        if !ok {
            let m = Mismatch {
                step,
                action: action.to_string(),
                guest: guest.map(str::to_string),
                what: what(),
            };
            self.progress(format_args!("MISMATCH {m}"));
            self.mismatches.push(m);
        }
    }

    pub(super) fn fail(&mut self, step: usize, action: &str, guest: Option<&str>, what: String) {
        self.check(step, action, guest, false, || what);
    }
}

/// Runs a scenario and reports what happened. `Err` only when the scenario
/// could not start (bad tunables, no temporary directory, ...); everything
/// that goes wrong afterwards is a [`Mismatch`] in the report.
pub fn run(sc: &Scenario, opts: &RunOptions) -> Result<Report, ScenarioError> {
    let started = Instant::now();
    let scenario = sc.name.clone().unwrap_or_else(|| String::from("scenario"));
    let tunables = sc.tunables()?;
    let names = sc.guest_names();
    let dir = WorkDir::new(opts.dir.as_deref())
        .map_err(|e| ScenarioError::Invalid(format!("cannot create a work directory: {e}")))?;
    let world = new_world(&tunables, sc.root_mounted)
        .map_err(|e| ScenarioError::Invalid(format!("cannot start the simulated host: {e}")))?;
    let mut run = Run {
        opts,
        world,
        guests: Vec::new(),
        mismatches: Vec::new(),
        checks: 0,
    };
    run.progress(format_args!(
        "scenario {scenario:?}: {} guest(s), {} step(s), images in {}",
        sc.guests.len(),
        sc.steps.len(),
        dir.path.display()
    ));
    for (i, (g, name)) in sc.guests.iter().zip(&names).enumerate() {
        let tun = sc.guest_tunables(i)?;
        match setup_guest(&run.world, i, name, g, tun, &dir.path, opts) {
            Ok(rt) => {
                run.progress(format_args!(
                    "guest {name}: profile {}, {} {} store, {}-byte sectors, {}",
                    g.profile,
                    human_bytes(g.size.0),
                    store_name(g.store),
                    g.sector_size,
                    if g.mode == ModeSpec::ReadOnly {
                        "read-only"
                    } else {
                        "read-write"
                    }
                ));
                run.guests.push(rt);
            }
            Err(e) => {
                run.fail(0, "setup", Some(name), e);
                let report = finish(run, &scenario, sc, started);
                return Ok(report);
            }
        }
    }
    for (i, step) in sc.steps.iter().enumerate() {
        let n = i + 1;
        let targets = step.guests().map(|g| g.resolve(&names)).unwrap_or_default();
        run_step(&mut run, n, step, &targets);
    }
    Ok(finish(run, &scenario, sc, started))
}

pub(super) fn store_name(k: StoreKindSpec) -> &'static str {
    match k {
        StoreKindSpec::File => "file",
        StoreKindSpec::Device => "device",
        StoreKindSpec::Nbd => "nbd",
    }
}

/// Collects the report and tears the world down.
///
/// The report is exact: each back-end is read once it is quiescent (every
/// event its guest caused handled, nothing in flight: see
/// [`World::quiesce`]), never while a counter may still move. A back-end
/// that does not get there within the hang guard is a mismatch.
pub(super) fn finish(mut run: Run<'_>, scenario: &str, sc: &Scenario, started: Instant) -> Report {
    let mut instances = Vec::new();
    let mut unsettled = Vec::new();
    for (unit, g) in run.guests.iter().enumerate() {
        let snap = match run.world.quiesce(&g.vbd, run.opts.hang_guard) {
            Ok(s) => Some(s),
            Err(e) => {
                unsettled.push((g.name.clone(), e));
                run.world.backend(&g.vbd)
            }
        };
        let stats = snap
            .as_ref()
            .and_then(|s| s.stats.clone())
            .unwrap_or_default();
        let queues = snap
            .map(|s| s.queues)
            .unwrap_or_default()
            .iter()
            .map(|qs| {
                SYSCTLS
                    .iter()
                    .filter(|d| d.per_queue())
                    .map(|d| (d.name, qs.get(d.stat)))
                    .collect()
            })
            .collect();
        instances.push(InstanceReport {
            name: g.name.clone(),
            unit,
            profile: g.spec.profile.clone(),
            store: store_name(g.spec.store),
            size: g.spec.size.0,
            sector_size: g.spec.sector_size,
            read_only: g.spec.mode == ModeSpec::ReadOnly,
            state: g.fe.backend_state(),
            error: g.fe.backend_error(),
            sysctl: SYSCTLS
                .iter()
                .map(|d| (d.name, stats.get(d.stat)))
                .collect(),
            queues,
            io: g.io.clone(),
        });
    }
    for (name, e) in unsettled {
        run.fail(sc.steps.len() + 1, "report", Some(&name), e);
    }
    // Leftover manual requests are not an error of the back-end: hostile
    // steps may leave requests that can never be answered.
    let mut guests = std::mem::take(&mut run.guests);
    // NBD servers outlive the back-ends, which close their stores as the
    // world shuts down.
    let servers: Vec<NbdKit> = guests.iter_mut().filter_map(|g| g.nbd.take()).collect();
    drop(guests);
    shutdown_world(run.world);
    drop(servers);
    let _ = sc;
    Report {
        scenario: scenario.to_string(),
        instances,
        mismatches: run.mismatches,
        checks: run.checks,
        seconds: started.elapsed().as_secs_f64(),
    }
}

/// Guest domain ids start here (dom0 runs the back-ends).
pub(super) const FIRST_GUEST_DOM: DomId = 1;
/// RAM of each guest, in 4 KiB frames: rings, and pages for every request
/// in flight.
pub(super) const GUEST_FRAMES: u64 = 8192;

pub(super) fn new_world(_tunables: &Tunables, root_mounted: bool) -> std::io::Result<World> {
    Ok(if root_mounted {
        World::new()
    } else {
        World::with_root_unmounted()
    })
}

pub(super) fn shutdown_world(world: World) {
    let _ = world.shutdown();
}

/// Creates a guest: its image, its domain, its `vbd`, its front-end.
pub(super) fn setup_guest(
    world: &World,
    index: usize,
    name: &str,
    spec: &GuestSpec,
    tunables: Tunables,
    dir: &Path,
    opts: &RunOptions,
) -> Result<GuestRt, String> {
    // A file for `file` and `device`; an NBD export for `nbd`, whose URI
    // the vbd names instead of a path.
    let (image, nbd) = if spec.store == StoreKindSpec::Nbd {
        let srv = NbdKit::start(dir, &format!("{index}-{name}"), spec.size.0)?;
        (PathBuf::from(&srv.uri), Some(srv))
    } else {
        let image = dir.join(format!("{index}-{name}.img"));
        create_sparse_image(&image, spec.size.0)
            .map_err(|e| format!("cannot create {}: {e}", image.display()))?;
        (image, None)
    };
    let dom = FIRST_GUEST_DOM + index as DomId;
    world
        .add_guest(dom, GUEST_FRAMES)
        .map_err(|e| format!("cannot create guest domain {dom}: {e}"))?;
    let faults = Arc::new(IoFaults::new());
    let cache = spec.write_cache.and_then(|c| c.options()).map(|o| {
        let seed = o.seed.unwrap_or(index as u64 + 1);
        let c = match o.capacity {
            Some(cap) => {
                WriteCache::with_capacity(seed, usize::try_from(cap.0).unwrap_or(usize::MAX))
            }
            None => WriteCache::new(seed),
        };
        c.set_ignore_flushes(o.ignore_flushes);
        Arc::new(c)
    });
    let cfg = VbdConfig {
        kind: match spec.store {
            StoreKindSpec::File => StoreKind::File,
            // libxl writes `phy` for every disk it hands to a back-end by
            // script, NBD targets included.
            StoreKindSpec::Device | StoreKindSpec::Nbd => StoreKind::Device,
        },
        mode: String::from(match spec.mode {
            ModeSpec::ReadWrite => "w",
            ModeSpec::ReadOnly => "r",
        }),
        online: spec.online,
        direct_io_safe: spec.direct_io_safe,
        store: StoreOptions {
            sector_size: spec.sector_size,
            faults: Some(Arc::clone(&faults)),
            cache,
            engine: Default::default(),
        },
        tunables,
        journal_dir: spec.journal.then(|| dir.join("journals")),
        ..VbdConfig::file(dom, &image)
    };
    // The toolstack writes `discard-enable` = 1 when it creates the vbd,
    // and the back-end reads it as it attaches. To write 0 instead, a watch
    // rewrites the node in the toolstack's own thread, as the transaction
    // that creates it commits: before the back-end's thread exists.
    let xs = world.xen().xenstore.clone();
    let discard_watch = if spec.discard_enable {
        None
    } else {
        let paths = toolstack::vbd_paths(&VbdSpec::new(dom, cfg.devid, ""));
        let node = format!("{}/discard-enable", paths.backend);
        let (xs2, node2) = (xs.clone(), node.clone());
        let w = xs
            .watch(
                &node,
                std::boxed::Box::new(move |_p: &str| {
                    if xs2.read_str(&node2).is_ok_and(|v| v != "0") {
                        let _ = xs2.write(&node2, "0");
                    }
                }),
            )
            .map_err(|e| format!("cannot watch {node}: {e:?}"))?;
        Some(w)
    };
    let vbd = world.create_vbd(&cfg);
    if let Some(w) = discard_watch {
        xs.unwatch(w);
    }
    let vbd = vbd.map_err(|e| format!("cannot create the vbd: {e}"))?;
    let profile = Profile::by_name(&spec.profile)
        .ok_or_else(|| format!("unknown profile {:?}", spec.profile))?;
    let mut fe = Frontend::new(world, &vbd, profile)
        .map_err(|e| format!("cannot create the front-end: {e}"))?;
    fe.set_hang_guard(opts.hang_guard);
    Ok(GuestRt {
        name: name.to_string(),
        spec: spec.clone(),
        vbd,
        fe: FeSlot(Some(fe)),
        faults,
        io: IoTotals::default(),
        pending: BTreeMap::new(),
        responses: std::collections::VecDeque::new(),
        next_id: Some(1),
        nbd,
    })
}

/// Runs one step on its guests.
pub(super) fn run_step(run: &mut Run<'_>, n: usize, step: &Step, targets: &[usize]) {
    let action = step.action();
    match step {
        Step::MountRoot {} => {
            run.progress(format_args!("step {n}: mount the root file system"));
            if let Err(e) = run.world.set_root_mounted(true) {
                run.fail(n, action, None, format!("mount failed: {e}"));
            }
        }
        Step::Workload(spec) => run_workloads(run, n, spec, targets),
        Step::Connect(_) if targets.len() > 1 => {
            run.progress(format_args!("step {n}: connect {}", names_of(run, targets)));
            for &t in targets {
                guest_step(run, n, step, t);
            }
        }
        _ => {
            for &t in targets {
                guest_step(run, n, step, t);
            }
        }
    }
}

pub(super) fn names_of(run: &Run<'_>, targets: &[usize]) -> String {
    targets
        .iter()
        .map(|&t| run.guests[t].name.as_str())
        .collect::<Vec<_>>()
        .join(", ")
}

/// Takes responses until `want` are buffered (or the hang guard fires).
pub(super) fn collect_responses(g: &mut GuestRt, want: usize) -> Result<(), FrontendError> {
    if g.responses.len() >= want {
        return Ok(());
    }
    let got = g.fe.wait_responses(want - g.responses.len())?;
    g.responses.extend(got);
    Ok(())
}
