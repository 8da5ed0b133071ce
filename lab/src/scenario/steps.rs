//! The steps a guest plays, and the expectations checked on it.

use super::*;
use std::sync::atomic::{AtomicBool, Ordering as AtomicOrdering};

/// One step on one guest.
pub(super) fn guest_step(run: &mut Run<'_>, n: usize, step: &Step, t: usize) {
    let action = step.action();
    let name = run.guests[t].name.clone();
    match step {
        Step::Xenstore { .. } => xenstore_step(run, n, step, t),
        Step::Connect(ConnectSpec {
            expect,
            error_contains,
            ring_start,
            ..
        }) => {
            let start = ring_start.map_or(0, |s| s.0 as u32);
            if start != 0 {
                run.progress(format_args!(
                    "step {n}: {name}: ring indices start at {start:#x}"
                ));
            }
            run.guests[t].fe.set_ring_start(start);
            connect_step(run, n, t, expect, error_contains.as_deref());
            run.guests[t].fe.set_ring_start(0);
        }
        Step::Disconnect { .. } => {
            run.progress(format_args!("step {n}: {name}: disconnect"));
            let g = &mut run.guests[t];
            g.pending.clear();
            g.responses.clear();
            if let Err(e) = g.fe.disconnect() {
                run.fail(n, action, Some(&name), format!("disconnect failed: {e}"));
            }
        }
        Step::Request(spec) => request_step(run, n, t, spec),
        Step::Batch { requests, wait, .. } => batch_step(run, n, t, requests, *wait),
        Step::KickStorm {
            count, queue, each, ..
        } => kick_storm(run, n, t, *count, *queue, *each),
        Step::StateStorm { count, states, .. } => state_storm(run, n, t, *count, states),
        Step::Resize { size, .. } => {
            run.progress(format_args!(
                "step {n}: {name}: resize the medium to {}",
                human_bytes(size.0)
            ));
            let g = &run.guests[t];
            match run.world.resize_vbd(&g.vbd, size.0) {
                Ok(got) => run.check(n, action, Some(&name), got == size.0, || {
                    format!("resized to {got} bytes instead of {}", size.0)
                }),
                Err(e) => run.fail(n, action, Some(&name), format!("resize failed: {e}")),
            }
        }
        Step::RawSlot { slot, hex, .. } => {
            let bytes = parse_hex(hex).unwrap_or_default();
            run.progress(format_args!(
                "step {n}: {name}: raw slot {slot}: {} byte(s)",
                bytes.len()
            ));
            run.guests[t].fe.write_raw_slot_at(*slot, &bytes);
        }
        Step::ReqProd { value, .. } => {
            run.progress(format_args!("step {n}: {name}: req_prod = {}", value.0));
            // The index is 32 bits on the wire; larger values wrap as a
            // guest's arithmetic would.
            run.guests[t].fe.set_req_prod_raw(value.0 as u32);
        }
        Step::Kick { queue, .. } => {
            run.progress(format_args!("step {n}: {name}: kick queue {queue}"));
            run.guests[t].fe.kick_queue(*queue as usize);
        }
        Step::Wait {
            count,
            expect_status,
            expect_status_in,
            expect_id,
            expect_broken_backend,
            ..
        } => {
            let want = WaitExpect {
                status: expect_status.as_ref(),
                status_in: expect_status_in,
                id: expect_id.as_ref(),
                broken: *expect_broken_backend,
            };
            wait_step(run, n, t, *count, &want)
        }
        Step::InjectIo(_) | Step::InjectGrant(_) => inject(run, n, t, step),
        Step::BackendRestart { how, .. } => {
            // The back-end alone: the front-end may be a workload's.
            run.progress(format_args!("step {n}: {name}: back-end restart ({how:?})"));
            let how = match how {
                RestartHow::Crash => Restart::Crash,
                RestartHow::HandOver => Restart::HandOver,
            };
            let vbd = run.guests[t].vbd.clone();
            match run.world.restart_backend(&vbd, how) {
                Ok(last) if last.error.is_some() => run.fail(
                    n,
                    action,
                    Some(&name),
                    format!("the old back-end ended badly: {:?}", last.error),
                ),
                Ok(_) => {}
                Err(e) => run.fail(n, action, Some(&name), format!("restart failed: {e}")),
            }
        }
        Step::Crash(spec) => crash_step(run, n, spec, t),
        Step::NbdServer { action: a, .. } => {
            run.progress(format_args!("step {n}: {name}: NBD server: {a:?}"));
            let r = match run.guests[t].nbd.as_mut() {
                Some(srv) => srv.act(*a),
                None => Err(String::from("no NBD server")),
            };
            if let Err(e) = r {
                run.fail(n, action, Some(&name), e);
            }
        }
        Step::Expect(spec) => expect_step(run, n, spec, t),
        Step::MountRoot {} | Step::Workload(_) => {}
    }
}

/// A `xenstore` step: an override of what the front-end publishes.
fn xenstore_step(run: &mut Run<'_>, n: usize, step: &Step, t: usize) {
    let Step::Xenstore {
        key,
        value,
        delete,
        queue,
        same_as,
        reset,
        ..
    } = step
    else {
        return;
    };
    let name = run.guests[t].name.clone();
    let key = match queue {
        Some(q) => format!("{}{q}/{key}", keys::QUEUE_DIR_PREFIX),
        None => key.clone(),
    };
    let fe = &mut run.guests[t].fe;
    let what = if *reset && key == "*" {
        format!("undoes its {} override(s)", fe.clear_xenstore_overrides())
    } else if *reset {
        fe.clear_xenstore_override(&key);
        format!("publishes {key} as its profile computes it")
    } else if let Some(other) = same_as {
        fe.set_xenstore_same_as(&key, other);
        format!("will publish {key} = the value of {other}")
    } else {
        let v = if *delete { None } else { value.as_deref() };
        fe.set_xenstore_override(&key, v);
        format!(
            "will publish {key} = {}",
            v.map_or_else(|| String::from("(nothing)"), |v| format!("{v:?}"))
        )
    };
    run.progress(format_args!("step {n}: {name}: front-end {what}"));
}

/// A `connect` step: the front-end connects; the outcome and the
/// back-end's error node are checked.
fn connect_step(
    run: &mut Run<'_>,
    n: usize,
    t: usize,
    expect: &ConnectOutcome,
    error_contains: Option<&str>,
) {
    let action = "connect";
    let name = run.guests[t].name.clone();
    let gname = Some(name.as_str());
    let r = run.guests[t].fe.connect();
    let (connected, text) = match &r {
        Ok(info) => {
            run.progress(format_args!(
                "step {n}: {name}: connected: {} sectors of 512 B, sector-size {}, {} queue(s) of {} ring page(s), flush {}, barrier {}, indirect {}, persistent {}, discard {}",
                info.sectors, info.sector_size, info.queues, info.ring_pages, info.flush, info.barrier,
                info.max_indirect_segments, info.persistent, info.discard
            ));
            (true, run.guests[t].fe.backend_error())
        }
        Err(FrontendError::Refused { state, error }) => {
            run.progress(format_args!(
                "step {n}: {name}: refused: back-end {state:?}: {}",
                error.as_deref().unwrap_or("(no error node)")
            ));
            (
                false,
                error.clone().or_else(|| run.guests[t].fe.backend_error()),
            )
        }
        Err(e) => {
            run.progress(format_args!("step {n}: {name}: connect failed: {e}"));
            (false, Some(e.to_string()))
        }
    };
    match expect {
        ConnectOutcome::Connected => run.check(n, action, gname, connected, || {
            format!(
                "expected Connected, got: {}",
                match &r {
                    Err(e) => e.to_string(),
                    Ok(_) => String::new(),
                }
            )
        }),
        ConnectOutcome::Refused => {
            let refused = matches!(r, Err(FrontendError::Refused { .. }));
            run.check(n, action, gname, refused, || match &r {
                Ok(_) => String::from("expected a refusal, but the back-end connected"),
                Err(e) => format!("expected a refusal, got: {e}"),
            })
        }
        ConnectOutcome::Any => {}
    }
    if let Some(want) = error_contains {
        // The error node is written just before the state changes;
        // give the back-end a moment to finish writing it.
        let deadline = Instant::now() + run.opts.settle;
        let mut found = error_text(run, t, text.as_deref());
        while !found.iter().any(|e| e.contains(want)) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
            found = error_text(run, t, text.as_deref());
        }
        run.check(
            n,
            action,
            gname,
            found.iter().any(|e| e.contains(want)),
            || format!("the back-end's error should contain {want:?}; found {found:?}"),
        );
    }
}

/// A `request` step: one hand-made request, waited for unless told not to.
fn request_step(run: &mut Run<'_>, n: usize, t: usize, spec: &RequestSpec) {
    let action = "request";
    let name = run.guests[t].name.clone();
    let gname = Some(name.as_str());
    let req = match spec.build(&[]) {
        Ok(r) => r,
        Err(e) => {
            run.fail(n, action, gname, e);
            return;
        }
    };
    let g = &mut run.guests[t];
    let id = match g.fe.submit_feature(&req) {
        Ok(id) => id,
        Err(e) => {
            run.fail(n, action, gname, format!("could not submit: {e}"));
            return;
        }
    };
    g.next_id = Some(id + 1);
    g.pending.insert(
        id,
        Pending {
            step: n,
            expect: spec.expect_status,
            expect_in: spec.expect_status_in.clone(),
            expect_data: spec.expect_data,
        },
    );
    if opts_progress(run) {
        run.progress(format_args!(
            "step {n}: {name}: request id {id}: op {} sector {} {} segment(s) on queue {}{}",
            spec.op.0,
            spec.sector.0,
            req.base.segs.len(),
            spec.queue,
            if spec.wait { "" } else { " (not waited for)" }
        ));
    }
    if spec.wait {
        wait_for_id(run, n, t, id);
    }
}

/// A `state_storm` step: the front-end's state written `count` times.
fn state_storm(run: &mut Run<'_>, n: usize, t: usize, count: u32, states: &[String]) {
    let action = "state_storm";
    let name = run.guests[t].name.clone();
    let gname = Some(name.as_str());
    let values: Vec<XenbusState> = states.iter().filter_map(|s| parse_state(s)).collect();
    run.progress(format_args!(
        "step {n}: {name}: {count} writes of the front-end's state ({})",
        states.join(", ")
    ));
    let path = format!("{}/{}", run.guests[t].fe.frontend_path(), keys::STATE);
    let xs = &run.world.xen().xenstore;
    let mut failed = None;
    for i in 0..count as usize {
        let st = values[i % values.len()];
        if let Err(e) = xs.write(&path, st.as_str()) {
            failed = Some(format!("write {i} of {path}: {e:?}"));
            break;
        }
    }
    if let Some(e) = failed {
        run.fail(n, action, gname, e);
    }
}

/// An `inject_io` or `inject_grant` step: store or grant-map faults
/// armed.
fn inject(run: &mut Run<'_>, n: usize, t: usize, step: &Step) {
    let g = &run.guests[t];
    let (what, e) = match step {
        Step::InjectIo(spec) => {
            let f = &g.faults;
            if spec.clear {
                f.clear();
            }
            let e = spec.error.error();
            if let Some(k) = spec.nth {
                f.fail_nth(k, e);
            }
            if let Some([a, b]) = spec.range {
                f.fail_range(a.0, b.0, e);
            }
            if spec.writes {
                f.fail_writes(e);
            }
            if spec.flush {
                f.fail_flush(e);
            }
            let what = match spec.hold {
                Some(true) => {
                    f.hold();
                    "store hold"
                }
                Some(false) => {
                    f.release();
                    "store release"
                }
                None => "store",
            };
            (what, format!("{e:?}"))
        }
        Step::InjectGrant(spec) => {
            let grants = &g.fe.guest().grants;
            if spec.clear {
                grants.clear_map_failures();
            }
            let e = spec.error.error();
            if let Some(count) = spec.count {
                grants.inject_map_failures(MapFault::Next { count, error: e });
            }
            if let Some(gref) = spec.gref {
                grants.inject_map_failures(MapFault::Gref { gref, error: e });
            }
            ("grant-map", format!("{e:?}"))
        }
        _ => return,
    };
    let name = &g.name;
    run.progress(format_args!(
        "step {n}: {name}: {what} faults armed ({e:?})"
    ));
}

/// A `batch` step: every request pushed, then published at once.
pub(super) fn batch_step(
    run: &mut Run<'_>,
    n: usize,
    t: usize,
    requests: &[RequestSpec],
    wait: bool,
) {
    let name = run.guests[t].name.clone();
    let gname = Some(name.as_str());
    let needs_ids = requests
        .iter()
        .any(|r| r.seg_grants.iter().any(|g| g.in_flight.is_some()));
    let first = match (run.guests[t].next_id, needs_ids) {
        (Some(id), _) => id,
        (None, false) => 0,
        (None, true) => {
            run.fail(
                n,
                "batch",
                gname,
                String::from(
                    "in_flight needs the ids the front-end will give; a workload ran since \
                     the last request: put a `request` step before this batch",
                ),
            );
            return;
        }
    };
    let predicted: Vec<u64> = (0..requests.len() as u64).map(|k| first + k).collect();
    let mut reqs = Vec::new();
    for (k, r) in requests.iter().enumerate() {
        match r.build(&predicted[..k]) {
            Ok(fr) => reqs.push(fr),
            Err(e) => {
                run.fail(n, "batch", gname, format!("request {k}: {e}"));
                return;
            }
        }
    }
    let ids = match run.guests[t].fe.submit_features(&reqs) {
        Ok(ids) => ids,
        Err(e) => {
            run.fail(n, "batch", gname, format!("could not submit: {e}"));
            return;
        }
    };
    run.progress(format_args!(
        "step {n}: {name}: batch of {} request(s), ids {ids:?}",
        ids.len()
    ));
    if let Some(&last) = ids.last() {
        run.guests[t].next_id = Some(last + 1);
    }
    if needs_ids {
        // The in_flight references were resolved with these.
        let same = ids == predicted;
        run.check(n, "batch", gname, same, || {
            format!("the front-end gave ids {ids:?}, not {predicted:?}")
        });
    }
    for (id, r) in ids.iter().zip(requests) {
        run.guests[t].pending.insert(
            *id,
            Pending {
                step: n,
                expect: r.expect_status,
                expect_in: r.expect_status_in.clone(),
                expect_data: r.expect_data,
            },
        );
    }
    if wait {
        for id in ids {
            wait_for_id(run, n, t, id);
        }
    }
}

/// A `kick_storm` step.
pub(super) fn kick_storm(
    run: &mut Run<'_>,
    n: usize,
    t: usize,
    count: u32,
    queue: u32,
    each: bool,
) {
    let name = run.guests[t].name.clone();
    run.progress(format_args!(
        "step {n}: {name}: {count} kicks of queue {queue} without requests"
    ));
    let limit = run.opts.settle;
    for i in 0..count {
        let before = run.world.stat(&run.guests[t].vbd, Stat::SpuriousEvents);
        run.guests[t].fe.kick_queue(queue as usize);
        if !each {
            continue;
        }
        let counted = run.world.wait_backend(&run.guests[t].vbd, limit, |s| {
            s.stats
                .as_ref()
                .is_some_and(|st| st.get(Stat::SpuriousEvents) > before)
        });
        if let Err(e) = counted {
            run.fail(
                n,
                "kick_storm",
                Some(&name),
                format!("kick {i}: the back-end never counted it: {e}"),
            );
            return;
        }
    }
}

/// What the back-end says went wrong: its `error` node (and the front-end's
/// view of the refusal, `seen`), else the reason the instance recorded.
pub(super) fn error_text(run: &Run<'_>, t: usize, seen: Option<&str>) -> Vec<String> {
    let g = &run.guests[t];
    let mut out: Vec<String> = seen.map(str::to_string).into_iter().collect();
    out.extend(g.fe.backend_error());
    out.extend(
        run.world
            .backend_last_error(&g.vbd)
            .map(|e| format!("{} {e}", e.errno())),
    );
    out
}

pub(super) fn opts_progress(run: &Run<'_>) -> bool {
    run.opts.progress
}

/// Waits for the response to manual request `id` and checks its status.
pub(super) fn wait_for_id(run: &mut Run<'_>, n: usize, t: usize, id: u64) {
    let name = run.guests[t].name.clone();
    loop {
        let g = &mut run.guests[t];
        if let Some(pos) = g.responses.iter().position(|r| r.id == id) {
            if let Some(rsp) = g.responses.remove(pos) {
                check_response(run, n, t, &rsp, None, &[]);
            }
            return;
        }
        let want = g.responses.len() + 1;
        if let Err(e) = collect_responses(g, want) {
            run.fail(
                n,
                "request",
                Some(&name),
                format!("no response for request id {id}: {e}"),
            );
            return;
        }
    }
}

/// Checks a response against its request's and the step's expected
/// status (`step_expect`, or any of `step_in`).
pub(super) fn check_response(
    run: &mut Run<'_>,
    n: usize,
    t: usize,
    rsp: &BlkifResponse,
    step_expect: Option<Status>,
    step_in: &[Status],
) {
    let name = run.guests[t].name.clone();
    let pending = run.guests[t].pending.remove(&rsp.id);
    let got = Status(rsp.status);
    run.progress(format_args!(
        "step {n}: {name}: response id {} op {}: {got}",
        rsp.id, rsp.operation
    ));
    let mut wants = Vec::new();
    if let Some(p) = &pending {
        if let Some(s) = p.expect {
            wants.push((p.step, vec![s]));
        }
        if !p.expect_in.is_empty() {
            wants.push((p.step, p.expect_in.clone()));
        }
    }
    if let Some(s) = step_expect {
        wants.push((n, vec![s]));
    }
    if !step_in.is_empty() {
        wants.push((n, step_in.to_vec()));
    }
    if let Some(b) = pending.as_ref().and_then(|p| p.expect_data) {
        let data = run.guests[t].fe.page_data(rsp.id);
        let bad = data.iter().position(|&x| x != b);
        run.check(
            n,
            "request",
            Some(&name),
            !data.is_empty() && bad.is_none(),
            || match bad {
                Some(i) => format!(
                    "request id {}: byte {i} of the data is {:#04x}, expected {b:#04x}",
                    rsp.id, data[i]
                ),
                None => format!("request id {}: no data came back", rsp.id),
            },
        );
    }
    for (at, want) in wants {
        run.check(
            at.max(n),
            "request",
            Some(&name),
            want.contains(&got),
            || {
                let names: Vec<String> = want.iter().map(|s| s.name()).collect();
                format!(
                    "request id {} (step {at}): expected status {}, got {got}",
                    rsp.id,
                    names.join(" or ")
                )
            },
        );
    }
}

/// What a `wait` step expects of the responses it takes.
pub(super) struct WaitExpect<'a> {
    status: Option<&'a StatusList>,
    status_in: &'a [Status],
    id: Option<&'a IdList>,
    broken: bool,
}

/// A `wait` step.
pub(super) fn wait_step(
    run: &mut Run<'_>,
    n: usize,
    t: usize,
    count: usize,
    want: &WaitExpect<'_>,
) {
    let name = run.guests[t].name.clone();
    run.progress(format_args!(
        "step {n}: {name}: kick, wait for {count} response(s)"
    ));
    let quiet = run.opts.quiet_period;
    let g = &mut run.guests[t];
    g.fe.kick();
    if want.broken {
        // Takes what comes until the front-end finds the ring broken; each
        // round takes at least one response (what it can be owed bounds
        // them) or ends at the hang guard.
        let r = loop {
            match g.fe.wait_responses(1) {
                Ok(got) => g.responses.extend(got),
                Err(e) => break e,
            }
        };
        let broken = matches!(r, FrontendError::BrokenBackend(_));
        run.progress(format_args!("step {n}: {name}: {r}"));
        run.check(n, "wait", Some(&name), broken, || {
            format!("expected the front-end to find the ring broken, got: {r}")
        });
        return;
    }
    if count == 0 {
        match g.fe.poll_responses(quiet) {
            Ok(got) => g.responses.extend(got),
            Err(e) => {
                // Not connected any more (e.g. the back-end closed): no
                // response can come.
                run.progress(format_args!("step {n}: {name}: poll: {e}"));
            }
        }
        let g = &run.guests[t];
        let extra = g.responses.len();
        let ids: Vec<u64> = g.responses.iter().map(|r| r.id).collect();
        run.check(n, "wait", Some(&name), extra == 0, || {
            format!("expected no response, got {extra} (ids {ids:?})")
        });
        return;
    }
    if let Err(e) = collect_responses(g, count) {
        let have = g.responses.len();
        run.fail(
            n,
            "wait",
            Some(&name),
            format!("expected {count} response(s), got {have}: {e}"),
        );
    }
    let take = run.guests[t].responses.len().min(count);
    let rsps: Vec<BlkifResponse> = run.guests[t].responses.drain(..take).collect();
    for (i, rsp) in rsps.iter().enumerate() {
        if let Some(id) = want.id.and_then(|e| e.get(i)) {
            run.check(n, "wait", Some(&name), rsp.id == id, || {
                format!("response {i}: expected id {id}, got {}", rsp.id)
            });
        }
        let status = want.status.and_then(|e| e.get(i));
        check_response(run, n, t, rsp, status, want.status_in);
    }
}

/// An `expect` step: waits (bounded by [`RunOptions::settle`]) until every
/// expectation holds, then records whichever still do not.
pub(super) fn expect_step(run: &mut Run<'_>, n: usize, spec: &ExpectSpec, t: usize) {
    let ExpectSpec {
        state,
        error_contains,
        sysctl,
        verify_ok,
        faults_injected,
        queue,
        backend_nodes,
        watch,
        nodes,
        ..
    } = spec;
    let name = run.guests[t].name.clone();
    let want_state = state.as_deref().and_then(parse_state);
    let deadline = Instant::now() + run.opts.settle;
    let evaluate = |run: &Run<'_>| -> Vec<String> {
        let g = &run.guests[t];
        let mut bad = Vec::new();
        if let Some(ws) = want_state {
            let have = run.world.backend_state(&g.vbd);
            if have != ws {
                bad.push(format!(
                    "back-end state: expected {}, is {}",
                    state_name(ws),
                    state_name(have)
                ));
            }
        }
        if let Some(want) = error_contains {
            let found = error_text(run, t, None);
            if !found.iter().any(|e| e.contains(want)) {
                bad.push(format!(
                    "the back-end's error should contain {want:?}; found {found:?}"
                ));
            }
        }
        check_sysctls(run, t, *queue, sysctl, &mut bad);
        let be = g.fe.backend_path();
        let be_node = |k: &str| vec![format!("{be}/{k}")];
        let be_label = |k: &str, _: &[String]| format!("back-end node {k}");
        check_nodes(run, backend_nodes, be_node, be_label, &mut bad);
        let node = |k: &str| node_paths(g, g.vbd.backend_dom(), k);
        let label = |k: &str, p: &[String]| format!("node {k} ({})", p.join(" or "));
        check_nodes(run, nodes, node, label, &mut bad);
        if !watch.is_empty() {
            let st = run.world.xen().xenstore.watch_stats();
            for (k, e) in watch {
                if let Some(v) = watch_counter(&st, k) {
                    if !e.holds(v) {
                        bad.push(format!("XenStore watch events {k}: expected {e}, is {v}"));
                    }
                }
            }
        }
        if let Some(e) = faults_injected {
            let v = g.faults.counters().total();
            if !e.holds(v) {
                bad.push(format!("store faults injected: expected {e}, is {v}"));
            }
        }
        bad
    };
    let mut bad = evaluate(run);
    while !bad.is_empty() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
        bad = evaluate(run);
    }
    // The guest's own verification does not change while we wait.
    if let Some(w) = verify_ok {
        let have = run.guests[t].io.verify_ok();
        if have != *w {
            bad.push(format!("verification ok: expected {w}, is {have}"));
        }
    }
    let total = usize::from(want_state.is_some())
        + usize::from(error_contains.is_some())
        + sysctl.len()
        + backend_nodes.len()
        + nodes.len()
        + watch.len()
        + usize::from(verify_ok.is_some())
        + usize::from(faults_injected.is_some());
    run.progress(format_args!(
        "step {n}: {name}: {} of {total} expectation(s) hold",
        total - bad.len().min(total)
    ));
    run.checks += (total - bad.len().min(total)) as u64;
    for b in bad {
        run.fail(n, "expect", Some(&name), b);
    }
}

/// The `sysctl` expectations of an `expect` step (of queue `queue`'s
/// table for per-queue counters when given); mismatches go to `bad`.
fn check_sysctls(
    run: &Run<'_>,
    t: usize,
    queue: Option<u32>,
    sysctl: &BTreeMap<String, CounterExpect>,
    bad: &mut Vec<String>,
) {
    if sysctl.is_empty() {
        return;
    }
    let g = &run.guests[t];
    let snap = run.world.backend(&g.vbd);
    let stats = snap
        .as_ref()
        .and_then(|s| s.stats.clone())
        .unwrap_or_default();
    let qstats = queue.and_then(|q| {
        snap.as_ref()
            .and_then(|s| s.queues.get(q as usize).cloned())
    });
    for (k, e) in sysctl {
        let Some(stat) = Stat::by_name(k) else {
            continue;
        };
        let (node, v) = match queue {
            Some(q) if stat.desc().per_queue() => match &qstats {
                Some(qs) => (format!("dev.xbb.{t}.queue.{q}.{k}"), qs.get(stat)),
                None => {
                    bad.push(format!(
                        "dev.xbb.{t}.queue.{q}.{k}: the connection has no queue {q}"
                    ));
                    continue;
                }
            },
            _ => (format!("dev.xbb.{t}.{k}"), stats.get(stat)),
        };
        if !e.holds(v) {
            bad.push(format!("{node}: expected {e}, is {v}"));
        }
    }
}

/// Where a node of an `expect` step's `nodes` may be: `error` (the
/// back-end's error node, relative to its domain's home or absolute),
/// `backend/<key>`, `frontend/<key>`, or an absolute path.
pub(super) fn node_paths(g: &GuestRt, be_dom: DomId, key: &str) -> Vec<String> {
    let be = g.fe.backend_path();
    if key == "error" {
        let rel = be.trim_start_matches('/');
        vec![
            format!("/local/domain/{be_dom}/error/{rel}/error"),
            format!("/error/{rel}/error"),
        ]
    } else if let Some(k) = key.strip_prefix("backend/") {
        vec![format!("{be}/{k}")]
    } else if let Some(k) = key.strip_prefix("frontend/") {
        vec![format!("{}/{k}", g.fe.frontend_path())]
    } else {
        vec![key.to_string()]
    }
}

/// Node expectations of an `expect` step (`backend_nodes`, `nodes`): each
/// holds of the first present of the nodes `paths(key)` names; mismatches
/// go to `bad`, named by `label(key, paths)`.
fn check_nodes(
    run: &Run<'_>,
    expects: &BTreeMap<String, NodeExpect>,
    paths: impl Fn(&str) -> Vec<String>,
    label: impl Fn(&str, &[String]) -> String,
    bad: &mut Vec<String>,
) {
    let xs = &run.world.xen().xenstore;
    for (k, want) in expects {
        let paths = paths(k);
        let have = paths.iter().find_map(|p| xs.read_str(p).ok());
        if let Some(m) = want.mismatch(have.as_deref()) {
            bad.push(format!("{}: {m}", label(k, &paths)));
        }
    }
}

/// A `workload` step: every target guest at the same time, one thread each.
pub(super) fn run_workloads(run: &mut Run<'_>, n: usize, spec: &WorkloadSpec, targets: &[usize]) {
    let WorkloadSpec {
        ops,
        io_size,
        pattern,
        read_pct,
        offset,
        region,
        seed,
        verify,
        expect_errors,
        during,
        ..
    } = spec;
    run.progress(format_args!(
        "step {n}: workload on {}: {ops} x {} {:?}, {read_pct}% reads",
        names_of(run, targets),
        human_bytes(io_size.0),
        pattern
    ));
    let mut results: Vec<(usize, Result<WorkloadReport, FrontendError>)> = Vec::new();
    // Set once the `during` steps are done (at once without any): until
    // then every workload keeps going past its `ops`.
    let done = AtomicBool::new(during.is_empty());
    let before: Vec<u64> = targets
        .iter()
        .map(|&i| run.world.stat(&run.guests[i].vbd, Stat::ReqsReceived))
        .collect();
    std::thread::scope(|s| {
        let mut handles = Vec::new();
        for &i in targets {
            let g = &mut run.guests[i];
            let Some(mut fe) = g.fe.take() else {
                continue;
            };
            let wl = Workload {
                ops: *ops,
                io_size: io_size.0 as u32,
                random: *pattern == Pattern::Random,
                read_pct: *read_pct,
                region_sectors: Some(workload_region(&g.spec, *offset, *region))
                    .map(|(a, b)| (a / 512, (b - a) / 512)),
                seed: seed.wrapping_add(i as u64),
                verify_all_at_end: *verify,
            };
            let done = &done;
            handles.push((
                i,
                s.spawn(move || {
                    // The front-end comes back even if the workload panics.
                    let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                        run_workload_until(&mut fe, &wl, done)
                    }))
                    .unwrap_or_else(|_| {
                        Err(FrontendError::Os(String::from("workload thread panicked")))
                    });
                    (fe, r)
                }),
            ));
        }
        if !during.is_empty() {
            play_during(run, n, targets, &before, during);
        }
        done.store(true, AtomicOrdering::Release);
        for (i, h) in handles {
            match h.join() {
                Ok((fe, r)) => {
                    run.guests[i].fe.put(fe);
                    results.push((i, r));
                }
                Err(_) => results.push((
                    i,
                    Err(FrontendError::Os(String::from("workload thread lost"))),
                )),
            }
        }
    });
    for (i, r) in results {
        record_workload(run, n, i, r, *expect_errors);
    }
}

/// What guest `i`'s workload of step `n` did: added to its totals and
/// reported; a mismatch, error responses other than `expect_errors` (none
/// when absent) or a failed workload fail the step.
fn record_workload(
    run: &mut Run<'_>,
    n: usize,
    i: usize,
    r: Result<WorkloadReport, FrontendError>,
    expect_errors: Option<CounterExpect>,
) {
    let name = run.guests[i].name.clone();
    match r {
        Ok(rep) => {
            run.guests[i].next_id = None;
            let io = &mut run.guests[i].io;
            io.workloads += 1;
            io.reads += rep.reads;
            io.writes += rep.writes;
            io.flushes += rep.flushes;
            io.bytes_read += rep.bytes_read;
            io.bytes_written += rep.bytes_written;
            io.bytes_checked += rep.bytes_checked;
            io.mismatches += rep.mismatches;
            io.error_responses += rep.error_responses;
            io.seconds += rep.elapsed.as_secs_f64();
            if io.first_mismatch.is_none() {
                io.first_mismatch.clone_from(&rep.first_mismatch);
            }
            let secs = rep.elapsed.as_secs_f64();
            let mib = (rep.bytes_read + rep.bytes_written) as f64 / MIB;
            run.progress(format_args!(
                "step {n}: {name}: {} reads, {} writes, {} flushes, {:.1} MiB/s, {} bytes verified, {} mismatches, {} error responses",
                rep.reads,
                rep.writes,
                rep.flushes,
                if secs > 0.0 { mib / secs } else { 0.0 },
                rep.bytes_checked,
                rep.mismatches,
                rep.error_responses
            ));
            run.check(n, "workload", Some(&name), rep.mismatches == 0, || {
                format!(
                    "{} sector(s) read back wrong; first: {}",
                    rep.mismatches,
                    rep.first_mismatch.clone().unwrap_or_default()
                )
            });
            let want = expect_errors.unwrap_or(CounterExpect {
                cmp: Cmp::Eq,
                value: 0,
            });
            run.check(
                n,
                "workload",
                Some(&name),
                want.holds(rep.error_responses),
                || {
                    format!(
                        "error responses: expected {want}, got {}",
                        rep.error_responses
                    )
                },
            );
        }
        Err(e) => {
            run.guests[i].next_id = None;
            run.progress(format_args!("step {n}: {name}: workload failed: {e}"));
            run.guests[i].io.failure = Some(e.to_string());
            run.fail(n, "workload", Some(&name), format!("workload failed: {e}"));
        }
    }
}

/// The `during` steps of workload step `n`: once every workload of
/// `targets` is under way (its back-end received more than the `before`
/// requests it had), each step in order on its own guests (never the
/// workloads').
fn play_during(run: &mut Run<'_>, n: usize, targets: &[usize], before: &[u64], during: &[Step]) {
    let limit = run.opts.hang_guard;
    for (&i, &b) in targets.iter().zip(before) {
        let r = run.world.wait_backend(&run.guests[i].vbd, limit, |s| {
            s.stats
                .as_ref()
                .is_some_and(|st| st.get(Stat::ReqsReceived) > b)
        });
        if let Err(e) = r {
            let name = run.guests[i].name.clone();
            run.fail(n, "workload", Some(&name), format!("never under way: {e}"));
            return;
        }
    }
    run.progress(format_args!(
        "step {n}: {} step(s) while the workloads run",
        during.len()
    ));
    let names: Vec<String> = run.guests.iter().map(|g| g.name.clone()).collect();
    for step in during {
        let on = step.guests().map(|g| g.resolve(&names)).unwrap_or_default();
        run_step(run, n, step, &on);
    }
}
