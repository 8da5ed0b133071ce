//! The queues of one instance served in parallel (DESIGN.md,
//! "Concurrency"): through the public path — guest rings in shared guest
//! memory → each queue's own back-end thread → the store → responses, the
//! data checked byte for byte — with four queues and several guests at
//! once; closing, reconnecting and detaching with I/O in flight on every
//! queue; one queue's ring broken while the others run; the medium resized
//! while the queues run.

mod support;

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use support::rig::{
    check_clean, mixed, mixed_in, Rig, TempDir, DISK_BYTES, GUEST_FRAMES, HANG_GUARD,
};
use xbb::abi::{BLKIF_RSP_ERROR, BLKIF_RSP_OKAY};
use xbb::connect::ConnectError;
use xbb::host::{StoreKind, XenbusState};
use xbb::stats::Stat;
use xbb_lab::frontend::{
    run_workload, run_workload_per_queue, FeatureRequest, Frontend, ManualRequest, Profile,
};
use xbb_lab::host::GrantMapping;
use xbb_lab::world::{VbdConfig, World};

/// Queues of the multi-queue profile.
const QUEUES: u32 = 4;

/// `n` writes of `pages` pages on every queue, `byte` each, at distinct
/// sectors from `at`: submitted and published at once, not waited for.
fn writes_on_every_queue(fe: &mut Frontend, at: u64, n: u64, pages: usize, byte: u8) -> Vec<u64> {
    let reqs: Vec<FeatureRequest> = (0..QUEUES)
        .flat_map(|q| {
            (0..n).map(move |k| {
                let sector = at + (u64::from(q) * n + k) * 64;
                FeatureRequest::from(ManualRequest::write(sector, pages, byte)).on_queue(q)
            })
        })
        .collect();
    fe.submit_features(&reqs).expect("submit")
}

#[test]
fn four_queues_of_several_guests_run_at_once_and_verify() {
    let world = World::new();
    let dir = TempDir::new("parallel-guests");
    let mut vbds = Vec::new();
    for g in 1..=3u16 {
        world.add_guest(g, GUEST_FRAMES).expect("guest");
        let img = dir.image(&format!("g{g}.img"), 8 << 20);
        vbds.push(world.create_vbd(&VbdConfig::file(g, &img)).expect("vbd"));
    }
    let world = Arc::new(world);
    let runs: Vec<_> = vbds
        .iter()
        .enumerate()
        .map(|(i, vbd)| {
            let (world, vbd) = (Arc::clone(&world), vbd.clone());
            thread::spawn(move || {
                let mut fe =
                    Frontend::new(&world, &vbd, Profile::by_name("multiqueue").unwrap()).unwrap();
                assert_eq!(fe.connect().expect("connect").queues, QUEUES);
                let r =
                    xbb_lab::frontend::run_workload(&mut fe, &mixed(1500, 8192, i as u64, 8192))
                        .expect("workload");
                fe.disconnect().expect("disconnect");
                r
            })
        })
        .collect();
    for (run, vbd) in runs.into_iter().zip(&vbds) {
        let r = run.join().expect("guest thread");
        check_clean(&r);
        assert!(
            r.requests_per_queue.iter().all(|&n| n > 0),
            "every queue carried requests: {:?}",
            r.requests_per_queue
        );
        let snap = world.backend(vbd).expect("snapshot");
        assert_eq!(snap.host.queue_threads, u64::from(QUEUES), "{snap:?}");
        assert!(snap.host.queue_wakes > 0, "{snap:?}");
        let st = snap.stats.expect("stats");
        assert_eq!(st.get(Stat::ReqsReceived), st.get(Stat::ReqsCompleted));
    }
    for s in world.shutdown() {
        assert!(s.error.is_none(), "{s:?}");
        assert_eq!(s.host.window_mapped, 0, "{s:?}");
        assert_eq!(s.host.bad_unmaps + s.host.bad_iovecs, 0, "{s:?}");
    }
}

#[test]
fn a_thread_per_queue_drives_its_own_ring_and_verifies_in_either_grant_mapping() {
    for mapping in [GrantMapping::Faulting, GrantMapping::Premapped] {
        // Without and with persistent grants (the modern profile: 4
        // queues, indirect segments, discards and flushes too).
        for profile in ["multiqueue", "modern"] {
            let what = format!("{} grants, {profile}", mapping.name());
            let rig = Rig::new("per-queue", |c| c.grant_mapping = mapping);
            let mut fe = rig.connected(profile);
            assert_eq!(fe.info().queues, QUEUES, "{what}");
            let events = fe.events_received();
            // Twice, on fresh ground each time (a workload expects zeros
            // where it did not write): the second run reuses what the
            // first gave back (free frames, persistent pools) after the
            // queues came home.
            for (seed, region) in [(3, (0, 6144)), (4, (6144, 6144))] {
                let r = run_workload_per_queue(&mut fe, &mixed_in(region, 400, 8192, seed))
                    .unwrap_or_else(|e| panic!("{what}: {e}"));
                check_clean(&r);
                assert_eq!(r.requests_per_queue.len(), QUEUES as usize, "{what}");
                assert!(r.requests_per_queue.iter().all(|&n| n > 0), "{what}: {r:?}");
                assert_eq!(
                    r.requests_per_queue.iter().sum::<u64>(),
                    r.requests,
                    "{what}"
                );
            }
            assert!(fe.events_received() > events, "{what}");
            // The queues are back in their places: a request on queue 3
            // is answered there, and a one-thread workload runs on all.
            let id = fe
                .submit_feature(&FeatureRequest::from(ManualRequest::read(0, 1)).on_queue(3))
                .expect("submit");
            let r = fe.wait_responses(1).expect("response");
            assert_eq!((r[0].id, r[0].status), (id, BLKIF_RSP_OKAY), "{what}");
            check_clean(&run_workload(&mut fe, &mixed_in((12288, 4096), 200, 4096, 5)).unwrap());
            fe.disconnect().expect("disconnect");
            let g = rig.finish();
            assert_eq!(g.active_grants, 0, "{what}: every grant ended: {g:?}");
        }
    }
}

#[test]
fn close_reconnect_and_detach_with_io_in_flight_on_every_queue() {
    let rig = Rig::new("parallel-cycles", |_| {});
    for cycle in 0..3u8 {
        let mut fe = rig.connected("multiqueue");
        assert_eq!(fe.info().queues, QUEUES);
        // What every earlier cycle left in flight landed whole or not at
        // all, on every queue.
        if cycle > 0 {
            for q in 0..QUEUES {
                let sector = 2048 + u64::from(q) * 16 * 64;
                let id = fe
                    .submit_feature(
                        &FeatureRequest::from(ManualRequest::read(sector, 4)).on_queue(q),
                    )
                    .unwrap();
                let r = fe.wait_responses(1).unwrap();
                assert_eq!((r[0].id, r[0].status), (id, BLKIF_RSP_OKAY));
                let got = fe.page_data(id);
                assert!(got.iter().all(|&b| b == got[0]), "cycle {cycle} queue {q}");
            }
        }
        writes_on_every_queue(&mut fe, 2048, 16, 4, 0x80 + cycle);
        // Straight to Closing: each queue drains on its own thread, then
        // comes home; the back-end answers Closing only then.
        fe.disconnect().expect("disconnect with I/O in flight");
        rig.wait_state(XenbusState::Closed);
        let snap = rig.world.backend(&rig.vbd).unwrap();
        let st = snap.stats.as_ref().unwrap();
        assert_eq!(
            st.get(Stat::ReqsReceived),
            st.get(Stat::ReqsQueuedForCompletion),
            "cycle {cycle}: every request taken was answered"
        );
        assert_eq!(
            (snap.host.window_mapped, snap.host.rings_mapped),
            (0, 0),
            "cycle {cycle}: {:?}",
            snap.host
        );
    }
    // Detach (xl block-detach) with I/O in flight on every queue.
    let mut fe = rig.connected("multiqueue");
    writes_on_every_queue(&mut fe, 4096, 16, 4, 0x55);
    let snap = rig.world.destroy_vbd(&rig.vbd).expect("final snapshot");
    assert!(snap.detached && snap.error.is_none(), "{snap:?}");
    assert_eq!(snap.state, XenbusState::Closed);
    assert_eq!(
        (
            snap.host.window_mapped,
            snap.host.rings_mapped,
            snap.host.io_in_flight
        ),
        (0, 0, 0),
        "{:?}",
        snap.host
    );
    assert!(!snap.host.store_open);
    assert_eq!(rig.world.grant_stats(1).unwrap().mapped, 0);
}

#[test]
fn one_queue_breaking_its_ring_fails_the_connection_while_the_others_drain() {
    let (rig, mut fe) = Rig::with_frontend("parallel-broken", "multiqueue");
    // Work in flight on queues 0, 2 and 3 ...
    let reqs: Vec<FeatureRequest> = [0u32, 2, 3]
        .iter()
        .flat_map(|&q| {
            (0..8u64).map(move |k| {
                FeatureRequest::from(ManualRequest::write(
                    u64::from(q) * 1024 + k * 64,
                    2,
                    0x30 + q as u8,
                ))
                .on_queue(q)
            })
        })
        .collect();
    let ids = fe.submit_features(&reqs).unwrap();
    // Taken by their queues (a failing connection stops every queue from
    // consuming: what a queue had not taken yet would never be served) ...
    rig.wait_stat(Stat::ReqsReceived, ids.len() as u64);
    // ... while queue 1's front-end claims more requests than its ring holds.
    let prod = fe.req_prod_pvt_on(1).unwrap();
    fe.set_req_prod_raw_on(1, prod.wrapping_add(1000));
    rig.wait_state(XenbusState::Closing);
    assert_eq!(
        rig.world.backend_last_error(&rig.vbd),
        Some(ConnectError::Ring),
        "the broken ring failed the connection"
    );
    // Every request the healthy queues took drained and was answered.
    let got = fe
        .wait_responses(ids.len())
        .expect("responses of the other queues");
    assert_eq!(got.len(), ids.len());
    assert!(got.iter().all(|r| r.status == BLKIF_RSP_OKAY), "{got:?}");
    // Every queue comes home (the broken one too) and the connection is
    // released.
    let snap = rig
        .world
        .wait_backend(&rig.vbd, HANG_GUARD, |s| s.host.rings_mapped == 0)
        .expect("every queue came home");
    assert_eq!(snap.host.window_mapped, 0, "{:?}", snap.host);
    assert_eq!(snap.host.window_pages, 0, "{:?}", snap.host);
    drop(fe);
    rig.finish();
}

#[test]
fn the_medium_resized_while_every_queue_runs() {
    let (rig, mut fe) = Rig::with_frontend("parallel-resize", "multiqueue");
    let world_vbd = rig.vbd.clone();
    let wl = mixed(3000, 4096, 11, 8192);
    let worker = thread::spawn(move || {
        let r = xbb_lab::frontend::run_workload(&mut fe, &wl).expect("workload");
        (fe, r)
    });
    // Grow the medium three times while the queues serve.
    let mut size = 8u64 << 20;
    for _ in 0..3 {
        size += 1 << 20;
        rig.world.resize_vbd(&world_vbd, size).expect("resize");
        rig.wait_stat(Stat::MediumSectors, size / 512);
    }
    let (mut fe, r) = worker.join().expect("workload thread");
    check_clean(&r);
    assert_eq!(rig.be_node("sectors"), Some((size / 512).to_string()));
    assert_eq!(rig.stat(Stat::Resizes), 3);
    // The queues check requests against the new size: the last sector of
    // the grown medium is served, one past it is refused.
    let last = size / 512 - 8;
    let id = fe
        .submit_feature(&FeatureRequest::from(ManualRequest::write(last, 1, 0x77)).on_queue(3))
        .unwrap();
    let rsp = fe.wait_responses(1).unwrap();
    assert_eq!((rsp[0].id, rsp[0].status), (id, BLKIF_RSP_OKAY));
    let past = fe
        .submit_feature(
            &FeatureRequest::from(ManualRequest::write(size / 512, 1, 0x77)).on_queue(2),
        )
        .unwrap();
    let rsp = fe.wait_responses(1).unwrap();
    assert_eq!(rsp[0].id, past);
    assert_ne!(rsp[0].status, BLKIF_RSP_OKAY);
    fe.disconnect().unwrap();
    drop(fe);
    rig.finish();
}

/// `nbdkit memory` of the rig's size on a Unix socket, killed when
/// dropped.
struct NbdKit {
    child: Child,
    _dir: TempDir,
}

impl NbdKit {
    /// Starts it with `filter` (`--filter=...` and its parameters, or
    /// nothing) and returns it with its export's URI; `None` where libnbd
    /// or nbdkit is missing (the test is skipped), unless `XBB_REQUIRE_NBD`
    /// is set.
    fn start(tag: &str, filter: &[&str]) -> Option<(NbdKit, String)> {
        let nbdkit = Command::new("nbdkit")
            .arg("--version")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        let missing = match (xbb_ustore::libnbd_available(), nbdkit) {
            (Err(e), _) => Some(e),
            (Ok(()), Ok(st)) if st.success() => None,
            (Ok(()), _) => Some(String::from("nbdkit is not installed")),
        };
        if let Some(why) = missing {
            let required =
                std::env::var("XBB_REQUIRE_NBD").is_ok_and(|v| !v.is_empty() && v != "0");
            assert!(!required, "XBB_REQUIRE_NBD is set but {why}");
            eprintln!("{tag}: skipped: {why}");
            return None;
        }
        let dir = TempDir::new(tag);
        let sock = dir.0.join("nbd.sock");
        let pid = dir.0.join("nbdkit.pid");
        let (filters, params): (Vec<&str>, Vec<&str>) =
            filter.iter().partition(|a| a.starts_with("--filter="));
        let mut child = Command::new("nbdkit")
            .args(["-f", "--exit-with-parent", "-P"])
            .arg(&pid)
            .arg("-U")
            .arg(&sock)
            .args(filters)
            .arg("memory")
            .arg(format!("size={DISK_BYTES}"))
            .args(params)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .spawn()
            .expect("start nbdkit");
        // nbdkit writes its pid file once it accepts connections.
        let deadline = Instant::now() + HANG_GUARD;
        while !pid.exists() {
            assert!(
                child.try_wait().expect("nbdkit").is_none(),
                "nbdkit exited at once"
            );
            assert!(Instant::now() < deadline, "nbdkit not ready");
            thread::sleep(Duration::from_millis(20));
        }
        let uri = format!("nbd+unix:///?socket={}", sock.display());
        Some((NbdKit { child, _dir: dir }, uri))
    }

    /// The server dies (`SIGKILL`).
    fn kill(&mut self) {
        self.child.kill().expect("kill nbdkit");
        let _ = self.child.wait();
    }
}

impl Drop for NbdKit {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A rig whose disk is the export `uri` (libxl writes `phy` for it).
fn nbd_rig(tag: &str, uri: &str) -> Rig {
    Rig::new(tag, |cfg| {
        cfg.path = PathBuf::from(uri);
        cfg.kind = StoreKind::Device;
    })
}

#[test]
fn four_queues_share_one_nbd_connection_and_each_gets_its_own_completions() {
    let Some((_srv, uri)) = NbdKit::start("parallel-nbd", &[]) else {
        return;
    };
    let rig = nbd_rig("parallel-nbd", &uri);
    let mut fe = rig.connected("multiqueue");
    assert_eq!(fe.info().queues, QUEUES);
    // The store's one I/O thread completes the I/O of every queue: each
    // completion must reach the queue that submitted it, or its request
    // would never be answered (or be answered by the wrong ring).
    let r =
        xbb_lab::frontend::run_workload(&mut fe, &mixed(2000, 8192, 3, 8192)).expect("workload");
    check_clean(&r);
    assert!(
        r.requests_per_queue.iter().all(|&n| n > 0),
        "every queue carried requests: {:?}",
        r.requests_per_queue
    );
    // A queue counts a request completed just after it pushed the
    // response: the counters catch up with the responses.
    let snap = rig
        .world
        .wait_backend(&rig.vbd, HANG_GUARD, |s| {
            s.stats.as_ref().is_some_and(|st| {
                st.get(Stat::ReqsReceived) > 0
                    && st.get(Stat::ReqsReceived) == st.get(Stat::ReqsCompleted)
            })
        })
        .expect("every request taken was completed");
    assert_eq!(snap.host.queue_threads, u64::from(QUEUES), "{snap:?}");
    let st = snap.stats.expect("stats");
    assert_eq!(st.get(Stat::ReqsCompletedWithError), 0);
    fe.disconnect().expect("disconnect");
    drop(fe);
    rig.finish();
}

#[test]
fn the_nbd_server_dying_with_io_in_flight_on_every_queue_closes_the_vbd() {
    // Every write waits 30 s in the server: what the queues took is still
    // on the wire (or, not yet submitted, meets a dead connection) when the
    // server dies.
    let Some((mut srv, uri)) =
        NbdKit::start("parallel-nbd-death", &["--filter=delay", "wdelay=30"])
    else {
        return;
    };
    let rig = nbd_rig("parallel-nbd-death", &uri);
    let mut fe = rig.connected("multiqueue");
    let ids = writes_on_every_queue(&mut fe, 0, 4, 4, 0x6b);
    rig.wait_stat(Stat::ReqsReceived, ids.len() as u64);
    srv.kill();
    // The store fails every I/O on the wire (the medium gone), on the
    // store's I/O thread; each queue answers its own and the connection
    // closes once every queue has drained.
    rig.wait_state(XenbusState::Closing);
    assert_eq!(
        rig.world.backend_last_error(&rig.vbd),
        Some(ConnectError::StoreGone)
    );
    let got = fe
        .wait_responses(ids.len())
        .expect("every request answered");
    let mut answered: Vec<u64> = got.iter().map(|r| r.id).collect();
    answered.sort_unstable();
    let mut sent = ids.clone();
    sent.sort_unstable();
    assert_eq!(answered, sent);
    assert!(got.iter().all(|r| r.status == BLKIF_RSP_ERROR), "{got:?}");
    let snap = rig
        .world
        .wait_backend(&rig.vbd, HANG_GUARD, |s| s.host.rings_mapped == 0)
        .expect("every queue came home");
    assert_eq!(
        (snap.host.window_mapped, snap.host.io_in_flight),
        (0, 0),
        "{:?}",
        snap.host
    );
    drop(fe);
    rig.finish();
}
