//! What TOML cannot check: names resolve, values are in range, steps fit
//! together.

use super::*;

impl Scenario {
    /// Checks what TOML cannot: names resolve, values are in range.
    pub(super) fn validate(&self) -> Result<(), ScenarioError> {
        self.tunables()?;
        if self.guests.is_empty() {
            return Err(ScenarioError::Invalid(String::from("no [[guest]] defined")));
        }
        self.validate_guests()?;
        let mut check = StepCheck {
            sc: self,
            names: self.guest_names(),
            used: vec![Vec::new(); self.guests.len()],
        };
        for (i, step) in self.steps.iter().enumerate() {
            let at = |m: String| {
                ScenarioError::Invalid(format!("step {} ({}): {m}", i + 1, step.action()))
            };
            for g in step_guest_names(step) {
                if g != "*" && !check.names.contains(&g) {
                    return Err(at(format!("no guest named {g:?}")));
                }
            }
            check.step(step).map_err(at)?;
        }
        Ok(())
    }

    /// Guest names are unique; profiles, sector sizes and sizes valid.
    fn validate_guests(&self) -> Result<(), ScenarioError> {
        let bad = |m: String| Err(ScenarioError::Invalid(m));
        let names = self.guest_names();
        for (i, n) in names.iter().enumerate() {
            if names[..i].contains(n) {
                return bad(format!("two guests are named {n:?}"));
            }
        }
        for (i, (g, n)) in self.guests.iter().zip(&names).enumerate() {
            self.guest_tunables(i)?;
            if Profile::by_name(&g.profile).is_none() {
                return bad(format!(
                    "guest {n}: unknown profile {:?}; known: {}",
                    g.profile,
                    Profile::NAMES.join(", ")
                ));
            }
            if !g.sector_size.is_power_of_two() || !(512..=65536).contains(&g.sector_size) {
                return bad(format!(
                    "guest {n}: sector_size {} is not a power of two in 512..=65536",
                    g.sector_size
                ));
            }
            let cached = g.write_cache.and_then(|c| c.options()).is_some();
            if cached && (g.store != StoreKindSpec::File || g.mode == ModeSpec::ReadOnly) {
                return bad(format!(
                    "guest {n}: a write cache needs a writable file store"
                ));
            }
            if g.size.0 == 0 || g.size.0 % u64::from(g.sector_size) != 0 {
                return bad(format!(
                    "guest {n}: size {} is not a positive multiple of the sector size",
                    g.size.0
                ));
            }
        }
        Ok(())
    }
}

/// What checking the steps, in order, knows: the scenario, its guest
/// names, and the disk regions workloads already took, per guest.
struct StepCheck<'a> {
    sc: &'a Scenario,
    names: Vec<String>,
    used: Vec<Vec<(u64, u64)>>,
}

impl StepCheck<'_> {
    /// Checks `f` on each guest `guest` means, with its name; the first
    /// error.
    fn each_guest(
        &self,
        guest: &Guests,
        f: impl Fn(&GuestSpec, &str) -> Result<(), String>,
    ) -> Result<(), String> {
        guest
            .resolve(&self.names)
            .into_iter()
            .try_for_each(|gi| f(&self.sc.guests[gi], &self.names[gi]))
    }

    /// One step's own values.
    fn step(&mut self, step: &Step) -> Result<(), String> {
        match step {
            Step::Xenstore { .. } => validate_xenstore(step)?,
            Step::Connect(ConnectSpec {
                ring_start: Some(s),
                ..
            }) if s.0 > u64::from(u32::MAX) => {
                return Err(format!("ring_start {} does not fit 32 bits", s.0));
            }
            Step::Wait {
                expect_status: Some(_),
                expect_status_in,
                ..
            } if !expect_status_in.is_empty() => {
                return Err(String::from(
                    "give expect_status or expect_status_in, not both",
                ));
            }
            Step::Request(r) => r.validate(None)?,
            Step::Batch { requests, .. } => {
                if requests.is_empty() {
                    return Err(String::from("an empty batch"));
                }
                for (k, r) in requests.iter().enumerate() {
                    r.validate(Some(k))
                        .map_err(|m| format!("request {k}: {m}"))?;
                }
            }
            Step::StateStorm { states, .. } => {
                for st in states {
                    if parse_state(st).is_none() {
                        return Err(format!("unknown state {st:?}"));
                    }
                }
                if states.is_empty() {
                    return Err(String::from("no states to write"));
                }
            }
            Step::Resize { guest, size } => self.each_guest(guest, |g, name| {
                if g.store == StoreKindSpec::Nbd {
                    return Err(format!(
                        "guest {name}: an nbd store cannot be resized (an export has one size)"
                    ));
                }
                if size.0 % u64::from(g.sector_size) != 0 {
                    return Err(format!(
                        "guest {name}: size {} is not a multiple of the sector size",
                        size.0
                    ));
                }
                Ok(())
            })?,
            Step::NbdServer { guest, .. } => self.each_guest(guest, |g, name| {
                if g.store != StoreKindSpec::Nbd {
                    return Err(format!("guest {name}: nbd_server needs an nbd store"));
                }
                Ok(())
            })?,
            Step::RawSlot { hex, .. } if parse_hex(hex).is_none() => {
                return Err(String::from("`hex` is not an even number of hex digits"));
            }
            Step::Workload(w) => {
                self.workload(w)?;
                self.during(&w.guest, &w.during)?;
            }
            Step::Crash(c) => self.crash(c)?,
            Step::InjectIo(spec) if spec.is_empty() => {
                return Err(String::from(
                    "nothing to inject: give nth, range, writes, flush, hold or clear",
                ));
            }
            Step::InjectIo(InjectIoSpec {
                guest,
                hold: Some(_),
                ..
            }) => self.each_guest(guest, |g, name| {
                if g.store == StoreKindSpec::Nbd {
                    return Err(format!("guest {name}: an nbd store cannot hold its I/O"));
                }
                Ok(())
            })?,
            Step::InjectGrant(spec) if spec.is_empty() => {
                return Err(String::from("nothing to inject: give count, gref or clear"));
            }
            Step::Expect(spec) => validate_expect(spec)?,
            _ => {}
        }
        Ok(())
    }

    /// The `during` steps of a workload on `guest`: each valid on its own,
    /// none a workload, each naming its guests, none of them the
    /// workload's (their front-ends are busy) but for `backend_restart`,
    /// which acts on the back-end alone.
    fn during(&mut self, guest: &Guests, during: &[Step]) -> Result<(), String> {
        let busy = guest.resolve(&self.names);
        for (k, st) in during.iter().enumerate() {
            let at = |m: String| format!("during step {} ({}): {m}", k + 1, st.action());
            if matches!(st, Step::Workload(_) | Step::Crash(_) | Step::MountRoot {}) {
                return Err(at(String::from("not allowed during a workload")));
            }
            let named = step_guest_names(st);
            if named.is_empty() || named.iter().any(|g| g == "*") {
                return Err(at(String::from(
                    "name its guests (`guest`): every guest includes the workload's",
                )));
            }
            for g in &named {
                match self.names.iter().position(|x| x == g) {
                    None => return Err(at(format!("no guest named {g:?}"))),
                    Some(i) if busy.contains(&i) && !matches!(st, Step::BackendRestart { .. }) => {
                        return Err(at(format!("guest {g:?} runs the workload")))
                    }
                    Some(_) => {}
                }
            }
            self.step(st).map_err(at)?;
        }
        Ok(())
    }

    /// A crash step's guests have a write cache and room for its region;
    /// its sizes are sane.
    fn crash(&self, c: &CrashSpec) -> Result<(), String> {
        self.each_guest(&c.guest, |g, name| {
            if g.write_cache.and_then(|c| c.options()).is_none() {
                return Err(format!(
                    "guest {name} has no write cache to cut the power of \
                     (`write_cache = true`)"
                ));
            }
            checked_region(g, name, c.offset, c.region, c.io_size, true).map(drop)
        })?;
        let max = (BLKIF_MAX_SEGMENTS_PER_REQUEST * 4096) as u64;
        if c.io_size.0 == 0 || c.io_size.0 % 512 != 0 || c.io_size.0 > max {
            return Err(format!(
                "io_size must be a multiple of 512, at most {max} (inline segments)"
            ));
        }
        if c.rounds == 0 || c.every == 0 {
            return Err(String::from("rounds and every must be at least 1"));
        }
        Ok(())
    }

    /// A workload's region fits each guest's disk and overlaps no earlier
    /// one; its sizes are sane.
    fn workload(&mut self, w: &WorkloadSpec) -> Result<(), String> {
        let WorkloadSpec {
            io_size,
            read_pct,
            offset,
            region,
            ..
        } = *w;
        for gi in w.guest.resolve(&self.names) {
            let name = &self.names[gi];
            let (a, b) = checked_region(&self.sc.guests[gi], name, offset, region, io_size, false)?;
            if let Some((c, d)) = self.used[gi].iter().find(|(c, d)| a < *d && *c < b) {
                return Err(format!(
                    "guest {name}: region [{a}, {b}) overlaps an earlier workload's \
                     [{c}, {d}); give each workload its own `offset`/`region`"
                ));
            }
            self.used[gi].push((a, b));
        }
        if io_size.0 == 0 || io_size.0 % 512 != 0 || io_size.0 > (1 << 24) {
            return Err(String::from(
                "io_size must be a multiple of 512, at most 16M",
            ));
        }
        if read_pct > 100 {
            return Err(String::from("read_pct is a percentage"));
        }
        Ok(())
    }
}

/// The byte range `[start, end)` a workload uses on a guest's disk.
pub(super) fn workload_region(
    g: &GuestSpec,
    offset: Option<Size>,
    region: Option<Size>,
) -> (u64, u64) {
    let start = offset.map_or(0, |o| o.0);
    let end = match region {
        Some(r) => start.saturating_add(r.0),
        None => g.size.0,
    };
    (start, end)
}

/// The region of guest `g` (named `name`) a workload or crash step uses,
/// checked: within the disk, starting on a sector boundary (ending on one
/// too where `whole_sectors`), at least `io_size` long.
fn checked_region(
    g: &GuestSpec,
    name: &str,
    offset: Option<Size>,
    region: Option<Size>,
    io_size: Size,
    whole_sectors: bool,
) -> Result<(u64, u64), String> {
    let (a, b) = workload_region(g, offset, region);
    let ss = u64::from(g.sector_size);
    let unaligned = a % ss != 0 || (whole_sectors && b % ss != 0);
    if a >= b || unaligned || b > g.size.0 || b - a < io_size.0 {
        return Err(format!(
            "guest {name}: region [{a}, {b}) does not fit the {}-byte disk, \
             is not sector-aligned, or is smaller than io_size",
            g.size.0
        ));
    }
    Ok((a, b))
}

/// The guest names a step mentions.
pub(super) fn step_guest_names(step: &Step) -> Vec<String> {
    match step.guests() {
        Some(Guests::One(n)) => vec![n.clone()],
        Some(Guests::Many(v)) => v.clone(),
        Some(Guests::Default) | None => vec![],
    }
}

impl Step {
    /// The guests the step applies to, as written; `None` for steps about
    /// the host as a whole.
    pub fn guests(&self) -> Option<&Guests> {
        match self {
            Step::Xenstore { guest, .. }
            | Step::Connect(ConnectSpec { guest, .. })
            | Step::Disconnect { guest }
            | Step::Request(RequestSpec { guest, .. })
            | Step::Batch { guest, .. }
            | Step::KickStorm { guest, .. }
            | Step::StateStorm { guest, .. }
            | Step::Resize { guest, .. }
            | Step::RawSlot { guest, .. }
            | Step::ReqProd { guest, .. }
            | Step::Kick { guest, .. }
            | Step::Wait { guest, .. }
            | Step::Workload(WorkloadSpec { guest, .. })
            | Step::Crash(CrashSpec { guest, .. })
            | Step::InjectIo(InjectIoSpec { guest, .. })
            | Step::InjectGrant(InjectGrantSpec { guest, .. })
            | Step::NbdServer { guest, .. }
            | Step::BackendRestart { guest, .. }
            | Step::Expect(ExpectSpec { guest, .. }) => Some(guest),
            Step::MountRoot {} => None,
        }
    }
}

impl Guests {
    /// Indices into `names` of the guests meant.
    pub fn resolve(&self, names: &[String]) -> Vec<usize> {
        let all = || (0..names.len()).collect();
        match self {
            Guests::Default => all(),
            Guests::One(n) if n == "*" => all(),
            Guests::One(n) => names.iter().position(|x| x == n).into_iter().collect(),
            Guests::Many(v) => v
                .iter()
                .filter_map(|n| names.iter().position(|x| x == n))
                .collect(),
        }
    }
}

/// A `xenstore` step: exactly one of its four actions; `"*"` only to undo
/// every override.
fn validate_xenstore(step: &Step) -> Result<(), String> {
    let Step::Xenstore {
        key,
        value,
        delete,
        same_as,
        reset,
        queue,
        ..
    } = step
    else {
        return Ok(());
    };
    let given = usize::from(value.is_some())
        + usize::from(*delete)
        + usize::from(same_as.is_some())
        + usize::from(*reset);
    if given != 1 {
        return Err(String::from(
            "give exactly one of `value`, `delete = true`, `same_as` and `reset = true`",
        ));
    }
    if key == "*" && (!*reset || queue.is_some()) {
        return Err(String::from(
            "key \"*\" (every override) only with `reset = true` and no `queue`",
        ));
    }
    Ok(())
}

/// An `expect` step: node names of a known form, known watch counters,
/// states and sysctl names.
fn validate_expect(spec: &ExpectSpec) -> Result<(), String> {
    let ExpectSpec {
        state,
        sysctl,
        watch,
        nodes,
        ..
    } = spec;
    for k in nodes.keys() {
        let ok = k == "error"
            || ["backend/", "frontend/", "/"]
                .iter()
                .any(|p| k.len() > p.len() && k.starts_with(p));
        if !ok {
            return Err(format!(
                "nodes: {k:?} is not `error`, `backend/<key>`, `frontend/<key>` \
                 nor an absolute path"
            ));
        }
    }
    for k in watch.keys() {
        if !WATCH_COUNTERS.contains(&k.as_str()) {
            return Err(format!(
                "unknown watch counter {k:?}; known: {}",
                WATCH_COUNTERS.join(", ")
            ));
        }
    }
    if let Some(s) = state {
        if parse_state(s).is_none() {
            return Err(format!("unknown state {s:?}"));
        }
    }
    for k in sysctl.keys() {
        if Stat::by_name(k).is_none() {
            return Err(format!(
                "unknown sysctl {k:?}; known: {}",
                known(SYSCTLS.iter().map(|d| d.name))
            ));
        }
    }
    Ok(())
}
