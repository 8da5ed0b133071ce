//! Issue 16: a back-end process that dies (or hands over) leaves its
//! Connected vbds to the next one, which takes each over from its
//! in-flight journal: the same ring, a new channel, every request the old
//! one consumed and never answered answered exactly once, the data right.
//!
//! Driven through the public path over the fake host, whose journals
//! outlive the instance and whose [`FakeHost::process_died`] does what the
//! kernel does when a process dies (its mappings, its channel, its store
//! gone; the I/O it had queued finished, never completed to it). The
//! journal's own ordering is checked store by store in `src/journal.rs`.

use xbb::abi::{Abi, BlkifRequest, BLKIF_OP_READ, BLKIF_OP_WRITE, BLKIF_RSP_OKAY, SRING_RSP_PROD};
use xbb::connect::ConnectError;
use xbb::host::{GrantRef, XenbusState, PAGE_SIZE};
use xbb::instance::Instance;
use xbb::journal::TakeoverError;
use xbb::ring::FrontRing;
use xbb::stats::{Stat, Tunable, Tunables};
use xbb::units::Sectors;
use xbb_testing::guest::{assert_answered_once, request as req, responses, status_of};
use xbb_testing::{FakeConfig, FakeHost, BE_PATH};

const SECTORS: u64 = 1 << 14;
/// Requests this far apart never coalesce: one I/O each.
const STRIDE: u64 = 64;

fn host() -> FakeHost {
    let mut h = FakeHost::new(FakeConfig::with_sectors(SECTORS));
    h.journals = true;
    h.standard_nodes(true, false);
    h
}

/// The byte request `id` writes.
fn fill(id: u64) -> u8 {
    0x40 + id as u8
}

/// A connected instance, the front-end Connected too, with its ring.
fn connected(h: &mut FakeHost, t: &Tunables) -> (Instance, FrontRing) {
    let fr = h.frontend_ring(Abi::X86_64, 1);
    h.set_frontend_state(XenbusState::Initialised);
    let mut inst = h.attach_connected(t);
    h.set_frontend_state(XenbusState::Connected);
    inst.frontend_changed(h);
    assert_eq!(h.journals_created, 1);
    (inst, fr)
}

/// Writes of one page each, ids `ids`, request `k` at sector
/// `k * STRIDE`, its page full of [`fill`]`(k)`.
fn writes(h: &mut FakeHost, ids: std::ops::Range<u64>) -> Vec<BlkifRequest> {
    ids.map(|k| {
        let g = h.grant(&[fill(k); PAGE_SIZE], true);
        req(BLKIF_OP_WRITE, k, k * STRIDE, &[g])
    })
    .collect()
}

fn produce(inst: &mut Instance, h: &mut FakeHost, fr: &mut FrontRing, reqs: &[BlkifRequest]) {
    for r in reqs {
        assert!(fr.push_request(r));
    }
    fr.publish_requests();
    inst.run(h, 0);
}

/// A [`host`] and an instance [`connected`] with the default tunables
/// (which a takeover must use too), the [`writes`] `ids` produced on its
/// ring.
fn writing(ids: std::ops::Range<u64>) -> (FakeHost, Tunables, Instance, FrontRing) {
    let mut h = host();
    let t = Tunables::default();
    let (mut inst, mut fr) = connected(&mut h, &t);
    let reqs = writes(&mut h, ids);
    produce(&mut inst, &mut h, &mut fr, &reqs);
    (h, t, inst, fr)
}

/// The medium holds request `k`'s bytes at its sector.
fn assert_written(h: &FakeHost, ids: std::ops::Range<u64>) {
    for k in ids {
        let at = (k * STRIDE * 512) as usize;
        assert!(
            h.medium[at..at + PAGE_SIZE].iter().all(|&b| b == fill(k)),
            "request {k}'s data"
        );
    }
}

/// A new process's instance taking the vbd over.
fn take_over(h: &mut FakeHost, t: &Tunables) -> Instance {
    let mut inst = Instance::new(BE_PATH, t).unwrap();
    inst.take_over(h);
    inst
}

/// [`take_over`], which must succeed: the vbd stays Connected.
fn taken_over(h: &mut FakeHost, t: &Tunables) -> Instance {
    let inst = take_over(h, t);
    assert_eq!(
        inst.state(),
        XenbusState::Connected,
        "{:?}",
        inst.last_error()
    );
    inst
}

/// Requests in flight, answered out of order, the process dies; the next
/// takes over: the ones answered are not answered again, the others are
/// answered once each, the data of every write is on the medium, and the
/// front-end got an event although it asked for none.
#[test]
fn a_died_process_is_taken_over_every_request_answered_once() {
    let (mut h, t, mut inst, mut fr) = writing(0..6);
    assert_eq!(h.pending(), 6);
    // 2 and 0 answered (published as they completed); 1, 3, 4, 5 not.
    assert!(h.complete_at(&mut inst, 2, Ok(())));
    assert!(h.complete_at(&mut inst, 0, Ok(())));
    let mut got = responses(&mut fr);
    assert_answered_once(&got, &[0, 2]);
    let connects = h.connects;
    h.process_died();
    drop(inst);

    let notified = h.notifications;
    let mut inst = taken_over(&mut h, &t);
    assert_eq!(h.connects, connects, "state not written again");
    assert_eq!(h.journal_lookups, 1);
    assert!(h.ring_mapped());
    assert_eq!(inst.stats().get(Stat::ReqsReplayed), 4);
    assert_eq!(h.pending(), 4, "the four outstanding, served again");
    assert!(h.notifications > notified, "one event after the takeover");
    h.complete_all(&mut inst);
    got.extend(responses(&mut fr));
    assert_answered_once(&got, &[0, 1, 2, 3, 4, 5]);
    assert!(got.iter().all(|r| r.status == BLKIF_RSP_OKAY));
    assert_written(&h, 0..6);
    // And it serves on: new requests, then a clean close that removes
    // the journal.
    let more = writes(&mut h, 6..9);
    produce(&mut inst, &mut h, &mut fr, &more);
    h.complete_all(&mut inst);
    assert_answered_once(&responses(&mut fr), &[6, 7, 8]);
    assert_written(&h, 6..9);
    h.set_frontend_state(XenbusState::Closing);
    inst.frontend_changed(&mut h);
    h.set_frontend_state(XenbusState::Closed);
    inst.frontend_changed(&mut h);
    assert_eq!(inst.state(), XenbusState::Closed);
    assert_eq!((h.journals_removed, h.journals_kept), (1, 0));
    assert!(!h.has_journal());
    h.assert_clean();
}

/// Requests consumed but not yet submitted (the request pool was short)
/// and requests never consumed: the first are re-executed from the
/// journal, the others read from the ring, in order; a read re-executed
/// reads what the medium holds.
#[test]
fn consumed_but_waiting_requests_and_unconsumed_ones_are_served_once() {
    let mut h = host();
    let t = {
        let mut t = Tunables::default();
        t.set(Tunable::MaxRequests, 2).unwrap();
        t
    };
    let (mut inst, mut fr) = connected(&mut h, &t);
    let mut reqs = writes(&mut h, 0..4);
    let dst = h.grant(&[], false);
    // A read of request 0's sector: re-executed, it reads the medium.
    reqs.push(req(BLKIF_OP_READ, 9, 0, &[dst]));
    produce(&mut inst, &mut h, &mut fr, &reqs);
    // Two consumed and submitted; the pool is short for the rest.
    assert_eq!(h.pending(), 2);
    assert_eq!(inst.stats().get(Stat::ReqsReceived), 2);
    h.process_died();
    drop(inst);
    // The dead process's writes landed (the kernel finished them).
    assert_written(&h, 0..2);

    let mut inst = taken_over(&mut h, &t);
    h.complete_all(&mut inst);
    while h.schedule_runs > 0 {
        h.run_deferred(&mut inst);
        h.complete_all(&mut inst);
    }
    let got = responses(&mut fr);
    assert_answered_once(&got, &[0, 1, 2, 3, 9]);
    assert_eq!(inst.stats().get(Stat::ReqsReplayed), 2);
    assert_written(&h, 0..4);
    assert!(h.page(dst).iter().all(|&b| b == fill(0)), "the read");
    h.assert_clean();
}

/// A handed-over vbd (the service stopped for a restart): what was in
/// flight is finished and answered, nothing is written to XenStore, the
/// journal is kept; requests the front-end makes meanwhile wait in the
/// ring; the next process takes over with nothing to re-execute.
#[test]
fn a_handed_over_vbd_is_taken_over_with_nothing_to_redo() {
    let (mut h, t, mut inst, mut fr) = writing(0..3);
    let connects = h.connects;
    inst.hand_over(&mut h);
    assert!(!inst.is_detached(), "draining");
    // Produced after the hand-over began: not consumed by this process.
    let late = writes(&mut h, 3..5);
    produce(&mut inst, &mut h, &mut fr, &late);
    assert_eq!(h.pending(), 3);
    h.complete_all(&mut inst);
    assert!(inst.is_detached());
    assert_eq!(h.backend_state(), Some(XenbusState::Connected.as_str()));
    assert_eq!(h.connects, connects);
    assert_eq!(h.fatals, 0);
    assert_eq!((h.journals_kept, h.journals_removed), (1, 0));
    h.assert_released();
    assert_answered_once(&responses(&mut fr), &[0, 1, 2]);
    drop(inst);

    let mut inst = taken_over(&mut h, &t);
    assert_eq!(inst.stats().get(Stat::ReqsReplayed), 0);
    h.complete_all(&mut inst);
    assert_answered_once(&responses(&mut fr), &[3, 4]);
    assert_written(&h, 0..5);
    h.assert_clean();
}

/// A process that took over can die too, with requests re-executed in
/// flight: the third takes over and answers them once.
#[test]
fn a_takeover_dies_and_is_taken_over() {
    let (mut h, t, mut inst, mut fr) = writing(0..4);
    assert!(h.complete_at(&mut inst, 1, Ok(())));
    h.process_died();
    drop(inst);
    let mut inst = take_over(&mut h, &t);
    assert_eq!(h.pending(), 3);
    assert!(h.complete_at(&mut inst, 0, Ok(())));
    h.process_died();
    drop(inst);
    let mut inst = taken_over(&mut h, &t);
    assert_eq!(inst.stats().get(Stat::ReqsReplayed), 2);
    h.complete_all(&mut inst);
    assert_answered_once(&responses(&mut fr), &[0, 1, 2, 3]);
    assert_written(&h, 0..4);
    h.assert_clean();
}

/// Persistent grants: the new process has an empty cache and maps each
/// grant again when a request names it; requests re-executed and new
/// ones over the same grants are served.
#[test]
fn persistent_grants_are_mapped_afresh() {
    let mut h = host();
    h.fe_set("feature-persistent", "1");
    let t = Tunables::default();
    let (mut inst, mut fr) = connected(&mut h, &t);
    assert_eq!(inst.stats().get(Stat::PersistentGrants), 1);
    let pages: Vec<GrantRef> = (0..3).map(|_| h.grant(&[0x77; PAGE_SIZE], false)).collect();
    let reqs: Vec<_> = (0..3)
        .map(|k| req(BLKIF_OP_WRITE, k, k * STRIDE, &[pages[k as usize]]))
        .collect();
    produce(&mut inst, &mut h, &mut fr, &reqs);
    assert!(h.complete_at(&mut inst, 0, Ok(())));
    assert_eq!(inst.stats().get(Stat::PersistentGrantsMapped), 3);
    h.process_died();
    drop(inst);
    let mut inst = take_over(&mut h, &t);
    assert_eq!(inst.stats().get(Stat::PersistentGrants), 1);
    h.complete_all(&mut inst);
    assert_answered_once(&responses(&mut fr), &[0, 1, 2]);
    assert_eq!(inst.stats().get(Stat::PersistentGrantsMapped), 2);
    // The same grants again: the one not re-executed is mapped now, the
    // others hit the cache.
    let again: Vec<_> = (0..3)
        .map(|k| req(BLKIF_OP_READ, 10 + k, k * STRIDE, &[pages[k as usize]]))
        .collect();
    produce(&mut inst, &mut h, &mut fr, &again);
    h.complete_all(&mut inst);
    let got = responses(&mut fr);
    assert_answered_once(&got, &[10, 11, 12]);
    assert!(got.iter().all(|r| r.status == BLKIF_RSP_OKAY));
    assert_eq!(inst.stats().get(Stat::PersistentGrantHits), 2);
    h.assert_clean();
}

/// The ways a takeover is refused: each ends like a refused connect, with
/// the `error` node and Closing, nothing mapped or bound left behind, and
/// nothing answered twice.
#[test]
fn refused_takeovers_close_cleanly() {
    type Spoil = fn(&mut FakeHost, &mut FrontRing) -> Tunables;
    let cases: [(&str, Spoil, TakeoverError); 4] = [
        (
            "no journal",
            |h, _| {
                h.journals = false;
                Tunables::default()
            },
            TakeoverError::NoJournal,
        ),
        (
            "other tunables",
            |_, _| {
                let mut t = Tunables::default();
                t.set(Tunable::MaxIndirectSegments, 0).unwrap();
                t
            },
            TakeoverError::Changed {
                key: "feature-max-indirect-segments",
            },
        ),
        (
            "front-end closing",
            |h, _| {
                h.set_frontend_state(XenbusState::Closing);
                Tunables::default()
            },
            TakeoverError::FrontendState,
        ),
        (
            "rsp_prod moved back",
            |h, _| {
                // The guest scribbles on the ring while nobody serves it.
                let ring = h.take_ring().expect("the ring's back view");
                ring.store_u32(SRING_RSP_PROD, 0, std::sync::atomic::Ordering::Release);
                h.give_ring(ring);
                Tunables::default()
            },
            TakeoverError::Outstanding {
                expected: 4,
                found: 3,
            },
        ),
    ];
    for (what, spoil, want) in cases {
        let (mut h, _, mut inst, mut fr) = writing(0..4);
        assert!(h.complete_at(&mut inst, 0, Ok(())));
        assert_eq!(status_of(&responses(&mut fr), 0), BLKIF_RSP_OKAY);
        h.process_died();
        drop(inst);
        let t = spoil(&mut h, &mut fr);
        let fatals = h.fatals;
        let inst = take_over(&mut h, &t);
        assert_eq!(inst.state(), XenbusState::Closing, "{what}");
        assert_eq!(
            inst.last_error(),
            Some(ConnectError::Takeover(want)),
            "{what}"
        );
        assert_eq!(h.fatals, fatals + 1, "{what}: the error node");
        assert_eq!(h.backend_state(), Some(XenbusState::Closing.as_str()));
        assert!(!h.ring_mapped() && h.channels_bound() == 0, "{what}");
        assert_eq!(h.pending(), 0, "{what}: nothing served");
        assert_eq!(inst.stats().get(Stat::ReqsReceived), 0, "{what}");
        h.assert_clean();
    }
}

/// A medium that changed size while nobody served it is published as a
/// resize after the takeover.
#[test]
fn a_medium_resized_meanwhile_is_published() {
    let mut h = host();
    let t = Tunables::default();
    let (inst, _fr) = connected(&mut h, &t);
    h.process_died();
    drop(inst);
    h.resize_medium(Sectors(SECTORS * 2));
    let inst = take_over(&mut h, &t);
    assert_eq!(
        inst.state(),
        XenbusState::Connected,
        "{:?}",
        inst.last_error()
    );
    assert_eq!(
        h.xs_get(&format!("{BE_PATH}/sectors")),
        Some((SECTORS * 2).to_string().as_str())
    );
    h.assert_clean();
}
