//! The `crash` step: power cuts at random store I/Os under a front-end
//! that writes with flushes, barriers or neither, and the check, after
//! each, that the medium holds what the back-end promised (see
//! [`Journal`]).
//!
//! Everything goes through the public path: the guest's requests cross its
//! ring to the back-end, which serves them from its store behind the
//! guest's write cache ([`WriteCache`]); the cut makes the store refuse
//! I/O (the back-end fails what is in flight and closes the connection);
//! the guest reconnects once the power is back and reads its region
//! through the ring again.

use super::*;

/// A `crash` step on guest `t`.
pub(super) fn crash_step(run: &mut Run<'_>, n: usize, spec: &CrashSpec, t: usize) {
    let CrashSpec {
        rounds,
        ops,
        io_size,
        sync,
        every,
        cut_within,
        offset,
        region,
        seed,
        expect,
        ..
    } = spec;
    let action = "crash";
    let name = run.guests[t].name.clone();
    let gname = Some(name.as_str());
    let Some(cache) = run.guests[t].vbd.cache().cloned() else {
        run.fail(
            n,
            action,
            gname,
            String::from("the guest has no write cache"),
        );
        return;
    };
    let guard = run.opts.hang_guard;
    let (a, b) = workload_region(&run.guests[t].spec, *offset, *region);
    let region = (a / 512, (b - a) / 512);
    let mode = match sync {
        SyncSpec::Flush => SyncMode::Flush,
        SyncSpec::Barrier => SyncMode::Barrier,
        SyncSpec::None => SyncMode::None,
    };
    run.progress(format_args!(
        "step {n}: {name}: {rounds} power cut(s) under writes of {} with {} every {every}, \
         region of {}",
        human_bytes(io_size.0),
        mode.name(),
        human_bytes(b - a)
    ));
    let fe = &mut run.guests[t].fe;
    if !fe.is_connected() {
        if let Err(e) = fe.connect() {
            run.fail(n, action, gname, format!("connect failed: {e}"));
            return;
        }
    }
    // What the region holds now: the journal's starting point.
    let base = match read_region(fe, region) {
        Ok(f) => f,
        Err(e) => {
            run.fail(n, action, gname, format!("reading the region failed: {e}"));
            return;
        }
    };
    let mut journal = Journal::with_base(region, base);
    let mut violations = 0u64;
    for round in 0..*rounds {
        let wl = CrashWorkload {
            ops: *ops,
            io_sectors: io_size.0 / 512,
            sync: mode,
            every: *every,
            region_sectors: region,
            seed: seed.wrapping_add(u64::from(round)),
        };
        match crash_round(
            run,
            t,
            &cache,
            &wl,
            cut_within.unwrap_or(2 * ops),
            &mut journal,
            guard,
        ) {
            Ok(r) => violations += record_round(run, n, t, round, &r),
            Err(e) => {
                run.guests[t].next_id = None;
                run.fail(n, action, gname, format!("round {}: {e}", round + 1));
                return;
            }
        }
    }
    let first = run.guests[t]
        .io
        .first_crash_violation
        .clone()
        .unwrap_or_default();
    match expect {
        CrashExpect::Consistent => run.check(n, action, gname, violations == 0, || {
            format!("{violations} crash-consistency violation(s); first: {first}")
        }),
        CrashExpect::Violated => run.check(n, action, gname, violations > 0, || {
            String::from("expected the check to find a broken promise; it found none")
        }),
    }
}

/// Round `round` of crash step `n` on guest `t`: added to the guest's
/// totals and reported; its violations.
fn record_round(run: &mut Run<'_>, n: usize, t: usize, round: u32, r: &RoundOutcome) -> u64 {
    let name = run.guests[t].name.clone();
    let c = &r.check;
    let g = &mut run.guests[t];
    g.next_id = None;
    g.io.power_cuts += 1;
    g.io.crash_durable += c.durable;
    g.io.crash_sectors_checked += c.sectors;
    g.io.crash_violations += c.violations;
    if g.io.first_crash_violation.is_none() {
        g.io.first_crash_violation = c.first.first().cloned();
    }
    let s = r.disk;
    run.progress(format_args!(
        "step {n}: {name}: round {}: cut {}; {} write(s), {} flush(es): {} okay, \
             {} failed, {} unanswered; the disk kept {} whole, {} torn, lost {}; \
             {} durable write(s), {} barrier(s) ordered, {} sectors checked, \
             {} violation(s){}",
        round + 1,
        match s.cut_at {
            Some(k) => format!("at store I/O {k}"),
            None => String::from("when the writes were done"),
        },
        r.round.writes,
        r.round.flushes,
        r.round.okay,
        r.round.failed,
        r.round.unanswered,
        s.persisted,
        s.torn,
        s.lost,
        c.durable,
        c.barriers_checked,
        c.sectors,
        c.violations,
        c.first
            .first()
            .map_or_else(String::new, |v| format!(": {v}"))
    ));
    c.violations
}

/// One round's outcome.
struct RoundOutcome {
    round: CrashRound,
    disk: CacheStats,
    check: CrashCheck,
}

/// One round: arm the cut, write until the disk stops answering (or the
/// writes are done: then cut), wait for the disk to settle, reconnect
/// with the power back, read the region and check it; the journal goes on
/// from what was read.
fn crash_round(
    run: &mut Run<'_>,
    t: usize,
    cache: &WriteCache,
    wl: &CrashWorkload,
    cut_within: u64,
    journal: &mut Journal,
    guard: Duration,
) -> Result<RoundOutcome, String> {
    let fe = &mut run.guests[t].fe;
    cache.arm_cut(cut_within);
    let round = run_crash_writes(fe, wl, journal).map_err(|e| format!("writing: {e}"))?;
    // A cut still armed falls now, at a quiet moment.
    if !cache.cut_now(guard) {
        return Err(String::from(
            "the disk's I/O in flight never drained after the cut",
        ));
    }
    let disk = cache.stats();
    // The guest starts over with the disk: the connection goes (the
    // back-end has failed what was in flight, or closed already), the
    // power returns, a new connection.
    fe.disconnect().map_err(|e| format!("disconnect: {e}"))?;
    if !cache.power_on() {
        return Err(String::from("the power did not come back"));
    }
    fe.connect().map_err(|e| format!("reconnect: {e}"))?;
    let found = read_region(fe, wl.region_sectors).map_err(|e| format!("read back: {e}"))?;
    let check = journal.check(&found);
    journal.next_round(found);
    Ok(RoundOutcome { round, disk, check })
}
