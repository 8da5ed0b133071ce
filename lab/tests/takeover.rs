//! Issue 16 end to end: a back-end that dies with requests in flight, or
//! is handed over, is replaced by a new one that takes the vbd over from
//! its in-flight journals (files, as xbb-serve keeps them): the front-end
//! sees every request answered exactly once (a second answer would be an
//! id not in flight, which it reports as a broken back-end), the data is
//! on the medium, the event channel works again, and nothing the dead
//! back-end held is left mapped.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use xbb::abi::BLKIF_RSP_OKAY;
use xbb::host::XenbusState;
use xbb::stats::Stat;
use xbb_lab::frontend::{run_workload, run_workload_until, ManualRequest};
use xbb_lab::world::{Restart, VbdConfig};
use xbb_ustore::IoFaults;

mod support;

use support::rig::{check_clean, mixed, mixed_in, Rig, TempDir, HANG_GUARD};

/// A rig whose back-end keeps journals in `dir` and whose store can be
/// held.
fn rig(tag: &str, dir: &TempDir, faults: &Arc<IoFaults>) -> Rig {
    let journals = dir.0.join("journals");
    let faults = Arc::clone(faults);
    Rig::new(tag, move |c: &mut VbdConfig| {
        c.journal_dir = Some(journals);
        c.store.faults = Some(faults);
    })
}

/// Releases a store's hold when dropped, so that a failing test does not
/// leave the store's workers waiting (and the world's shutdown with them).
struct Unhold(Arc<IoFaults>);

impl Drop for Unhold {
    fn drop(&mut self) {
        self.0.release();
    }
}

/// Journal files left in `dir`.
fn journals(dir: &TempDir) -> usize {
    std::fs::read_dir(dir.0.join("journals")).map_or(0, |d| d.count())
}

#[test]
fn a_crashed_backend_is_taken_over_with_requests_in_flight() {
    for profile in ["linux", "persistent", "multiqueue"] {
        let dir = TempDir::new("takeover-j");
        let faults = Arc::new(IoFaults::new());
        let rig = rig(&format!("takeover-{profile}"), &dir, &faults);
        let _unhold = Unhold(Arc::clone(&faults));
        let mut fe = rig.connected(profile);
        assert!(journals(&dir) > 0, "{profile}: journals made at connect");
        // Consumed and submitted, held in the store: in flight when the
        // back-end dies.
        faults.hold();
        let reqs: Vec<ManualRequest> = (0..6)
            .map(|k| ManualRequest::write(k * 64, 2, 0x10 + k as u8))
            .collect();
        let ids = fe.submit_many(&reqs).unwrap();
        rig.wait_stat(Stat::ReqsReceived, 6);
        let events = fe.events_received();
        let last = rig.world.restart_backend(&rig.vbd, Restart::Crash).unwrap();
        assert!(last.error.is_none(), "{profile}: {last:?}");
        assert_eq!(last.host.window_mapped, 0, "{profile}: data pages unmapped");
        assert_eq!(last.host.rings_mapped, 0, "{profile}: rings unmapped");
        assert!(!faults.is_held(), "the dead back-end's I/O finished");
        rig.wait_state(XenbusState::Connected);
        let got = fe.wait_responses(6).unwrap();
        let mut answered: Vec<u64> = got.iter().map(|r| r.id).collect();
        answered.sort_unstable();
        assert_eq!(answered, ids, "{profile}: each answered once");
        assert!(got.iter().all(|r| r.status == BLKIF_RSP_OKAY), "{profile}");
        assert!(fe.events_received() > events, "{profile}: the new channel");
        assert_eq!(rig.stat(Stat::ReqsReplayed), 6, "{profile}");
        for k in 0..6u64 {
            let bytes = rig.file_bytes(k * 64 * 512, 8192);
            assert!(bytes.iter().all(|&b| b == 0x10 + k as u8), "{profile}: {k}");
        }
        // Nothing more comes: no request is answered twice.
        assert!(fe
            .poll_responses(std::time::Duration::from_millis(100))
            .unwrap()
            .is_empty());
        // The new back-end serves on (clear of the sectors written above,
        // which the workload's shadow does not know).
        let r = run_workload(&mut fe, &mixed_in((1024, 4096), 200, 8192, 7)).unwrap();
        check_clean(&r);
        // A clean close removes the journals.
        fe.disconnect().unwrap();
        assert_eq!(journals(&dir), 0, "{profile}: journals removed at close");
        drop(fe);
        rig.finish();
    }
}

/// A verified workload on four queues (persistent grants, indirect
/// requests) runs on while its back-end crashes, is handed over, crashes
/// again: before each crash the store is held so that requests are surely
/// in flight, and the next back-end re-executes them.
#[test]
fn a_backend_restarted_under_a_workload_loses_nothing() {
    let dir = TempDir::new("takeover-w");
    let faults = Arc::new(IoFaults::new());
    let rig = rig("takeover-workload", &dir, &faults);
    let _unhold = Unhold(Arc::clone(&faults));
    let mut fe = rig.connected("modern");
    // The workload keeps going until every restart is done.
    let done = AtomicBool::new(false);
    std::thread::scope(|s| {
        let wl = s.spawn(|| run_workload_until(&mut fe, &mixed(300, 16384, 11, 8192), &done));
        for how in [Restart::Crash, Restart::HandOver, Restart::Crash] {
            // The workload under way on this back-end; for a crash, some
            // of its requests held in the store.
            let at = rig.stat(Stat::ReqsReceived);
            if how == Restart::Crash {
                faults.hold();
            }
            rig.world
                .wait_backend(&rig.vbd, HANG_GUARD, |s| {
                    s.state == XenbusState::Connected
                        && s.stats
                            .as_ref()
                            .is_some_and(|st| st.get(Stat::ReqsReceived) > at + 4)
                })
                .unwrap();
            let last = rig.world.restart_backend(&rig.vbd, how).unwrap();
            assert!(last.error.is_none(), "{how:?}: {last:?}");
            if how == Restart::Crash {
                let unanswered = last.stats.as_ref().map_or(0, |st| {
                    st.get(Stat::ReqsReceived) - st.get(Stat::ReqsCompleted)
                });
                assert!(unanswered > 0, "{last:?}");
                rig.wait_stat(Stat::ReqsReplayed, unanswered);
            }
        }
        done.store(true, Ordering::Release);
        let r = wl.join().unwrap().unwrap();
        check_clean(&r);
    });
    rig.wait_state(XenbusState::Connected);
    fe.disconnect().unwrap();
    drop(fe);
    rig.finish();
}

#[test]
fn without_journals_a_restart_is_refused_cleanly() {
    let (rig, mut fe) = Rig::with_frontend("takeover-none", "linux");
    let last = rig.world.restart_backend(&rig.vbd, Restart::Crash).unwrap();
    assert!(last.error.is_none(), "{last:?}");
    rig.wait_state(XenbusState::Closing);
    let err = fe.backend_error().unwrap_or_default();
    assert!(err.contains("no in-flight journal"), "error node: {err:?}");
    // The front-end closes and connects again: served as ever.
    fe.disconnect().unwrap();
    fe.connect().unwrap();
    let r = run_workload(&mut fe, &mixed(100, 4096, 3, 2048)).unwrap();
    check_clean(&r);
    fe.disconnect().unwrap();
    drop(fe);
    rig.finish();
}
