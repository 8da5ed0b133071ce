//! Regression tests of `src/instance.rs`: the life cycle and the request
//! path driven through the fake host (no threads, no simulator), for bugs a
//! review of the instance found and for the requirements it checked.
//!
//! Every test ends with the fake's contract log clean (a double map, I/O
//! on an unmapped page, release of a window with pages still mapped, a
//! second ring mapping, ... would be in it) and, where the connection is
//! gone, everything it held released.
//!
//! Every bug found by a review comes with its fix; none of these tests is
//! ignored.

use xbb::abi::{
    Abi, BlkifRequest, BlkifResponse, RequestBody, BLKIF_OP_FLUSH_DISKCACHE, BLKIF_OP_READ,
    BLKIF_OP_WRITE, BLKIF_OP_WRITE_BARRIER, BLKIF_RSP_ERROR, BLKIF_RSP_OKAY,
};
use xbb::connect::ConnectError;
use xbb::host::{GrantRef, IoError, IoTag, XenbusState};
use xbb::instance::Instance;
use xbb::ring::FrontRing;
use xbb::stats::{Stat, Tunable, Tunables};
use xbb::units::Sectors;
use xbb_testing::alloc::{allocations_in, Counting};
use xbb_testing::guest::{assert_answered_once, request as req, responses, status_of};
use xbb_testing::host::IoKind as Kind;
use xbb_testing::rng::XorShift;
use xbb_testing::{FakeConfig, FakeHost, BAD_GREF, BE_PATH};

#[global_allocator]
static ALLOCATOR: Counting = Counting;

const SECTORS: u64 = 1 << 16;
/// Data pages the guest grants.
const DATA_PAGES: usize = 256;

// ---------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------

fn tunables(f: impl FnOnce(&mut Tunables)) -> Tunables {
    let mut t = Tunables::default();
    f(&mut t);
    t
}

/// Tunables with `tunable` set to `value`, the rest at their defaults.
fn with(tunable: Tunable, value: u64) -> Tunables {
    tunables(|t| t.set(tunable, value).unwrap())
}

/// `n` one-page requests of operation `op`, ids `0..n`, `stride` sectors
/// apart, each on its own data page.
fn one_page_each(op: u8, n: u64, stride: u64) -> Vec<BlkifRequest> {
    (0..n)
        .map(|k| req(op, k, k * stride, &grefs(1, k as u32)))
        .collect()
}

/// The toolstack's nodes and [`DATA_PAGES`] granted pages, nothing
/// attached; `online` back-end when asked.
fn host(online: bool) -> FakeHost {
    let mut h = FakeHost::new(FakeConfig {
        max_grants: DATA_PAGES,
        ..FakeConfig::with_sectors(SECTORS)
    });
    h.standard_nodes(true, online);
    h.grant_pages(DATA_PAGES);
    h
}

/// Attaches an instance and leaves it in InitWait.
fn attached(t: &Tunables) -> (Instance, FakeHost) {
    let mut h = host(false);
    let mut i = Instance::new(BE_PATH, t).unwrap();
    i.attach(&mut h);
    assert_eq!(i.state(), XenbusState::InitWait);
    (i, h)
}

/// The front-end publishes a one-page ring and says Initialised.
fn fe_connect(i: &mut Instance, h: &mut FakeHost) -> FrontRing {
    let fr = h.frontend_ring(Abi::native(), 1);
    fe_state(i, h, "3");
    fr
}

fn connected(t: &Tunables) -> (Instance, FakeHost, FrontRing) {
    let (mut i, mut h) = attached(t);
    let fr = fe_connect(&mut i, &mut h);
    assert_eq!(i.state(), XenbusState::Connected, "{:?}", i.last_error());
    (i, h, fr)
}

/// A connection with the default tunables and `reqs` produced on its ring.
fn connected_with(reqs: &[BlkifRequest]) -> (Instance, FakeHost, FrontRing) {
    let (mut i, mut h, mut fr) = connected(&Tunables::default());
    produce(&mut i, &mut h, &mut fr, reqs);
    (i, h, fr)
}

/// [`connected_with`], each of `reqs` one store I/O in flight.
fn in_flight(reqs: &[BlkifRequest]) -> (Instance, FakeHost, FrontRing) {
    let (i, h, fr) = connected_with(reqs);
    assert_eq!(h.pending(), reqs.len());
    (i, h, fr)
}

/// The kinds of the store I/Os submitted, in order.
fn kinds(h: &FakeHost) -> Vec<Kind> {
    h.log.iter().map(|l| l.kind).collect()
}

fn fe_state(i: &mut Instance, h: &mut FakeHost, s: &str) {
    h.fe_set("state", s);
    i.frontend_changed(h);
}

/// `n` granted pages from data page `from`.
fn grefs(n: u32, from: u32) -> Vec<GrantRef> {
    (0..n).map(|k| data_gref(from + k)).collect()
}

/// The grant reference of data page `k` (granted first, consecutively).
fn data_gref(k: u32) -> GrantRef {
    BAD_GREF + 1 + k
}

/// Pushes and publishes; kicks the back-end when the ring says so (as a
/// platform's event channel would).
fn produce(i: &mut Instance, h: &mut FakeHost, fr: &mut FrontRing, reqs: &[BlkifRequest]) {
    for r in reqs {
        assert!(fr.push_request(r));
    }
    if fr.publish_requests() {
        i.run(h, 0);
    }
}

/// Runs the platform's deferred work until there is none (bounded).
fn pump(i: &mut Instance, h: &mut FakeHost) {
    for _ in 0..10_000 {
        if h.schedule_runs == 0 {
            return;
        }
        h.schedule_runs = 0;
        i.run(h, 0);
    }
    panic!("schedule_run never stops");
}

/// Completes the oldest pending I/O with `r` (performing it when `Ok`);
/// returns its tag, `None` when nothing was pending.
fn complete_one(i: &mut Instance, h: &mut FakeHost, r: Result<(), IoError>) -> Option<IoTag> {
    let tag = h.pending_tag(0)?;
    h.complete_at(i, 0, r);
    pump(i, h);
    Some(tag)
}

/// Completes every I/O (including ones submitted on the way) successfully.
fn complete_all(i: &mut Instance, h: &mut FakeHost) {
    for _ in 0..100_000 {
        if complete_one(i, h, Ok(())).is_none() {
            return;
        }
    }
    panic!("I/O never stops");
}

/// Produces `reqs`, runs the deferred work, completes every I/O and
/// returns the responses.
fn serve(
    i: &mut Instance,
    h: &mut FakeHost,
    fr: &mut FrontRing,
    reqs: &[BlkifRequest],
) -> Vec<BlkifResponse> {
    produce(i, h, fr, reqs);
    pump(i, h);
    complete_all(i, h);
    responses(fr)
}

/// An 11-page window and 11-page I/Os: the smallest the tunables allow.
fn small_window(t: &mut Tunables) {
    t.set(Tunable::MaxRequestSize, 11 * 4096).unwrap();
    t.set(Tunable::KvaPages, 11).unwrap();
}

// ---------------------------------------------------------------------------
// Bugs
// ---------------------------------------------------------------------------

/// Regression for a bug found by this review and fixed meanwhile (commit
/// 6340cbb, the ordered `waitq`): a reqlist waiting for the window used to be
/// overwritten (`stalled = l`) when the end-of-pass forced dispatch also
/// found no room, so the first one was never answered.
#[test]
fn kva_stall_is_not_overwritten_by_forced_dispatch() {
    let t = tunables(small_window);
    let (mut i, mut h, mut fr) = connected(&t);
    let a = req(BLKIF_OP_WRITE, 1, 0, &grefs(11, 0)); // fills the window
    let b = req(BLKIF_OP_WRITE, 2, 1000, &grefs(1, 20)); // stalls
    let c = req(BLKIF_OP_WRITE, 3, 2000, &grefs(11, 40)); // stalls too
    let r = serve(&mut i, &mut h, &mut fr, &[a, b, c]);
    assert_answered_once(&r, &[1, 2, 3]);
    assert!(i.is_idle());
    h.assert_clean();
}

/// BUG 1 (instance.rs:686-689, 704-705, 711; 865-873, 912-915): the pass
/// stops because the request pool is empty (`starved`); the forced dispatch
/// at the end of the same pass then fails synchronously (grant map failure
/// or store refusal), which answers the list and clears `starved`. Nothing
/// restarts consumption: no `schedule_run`, no final check (so `req_event`
/// is stale and the front-end will never kick again). The requests left in
/// the ring are never seen.
#[test]
fn pool_shortage_then_sync_grant_failure_does_not_strand_ring() {
    let (mut i, mut h, mut fr) = connected(&with(Tunable::MaxRequests, 1));
    let r1 = req(BLKIF_OP_READ, 1, 0, &[BAD_GREF]);
    let r2 = req(BLKIF_OP_READ, 2, 100, &grefs(1, 0));
    let rs = serve(&mut i, &mut h, &mut fr, &[r1, r2]);
    assert_answered_once(&rs, &[1, 2]);
    assert_eq!(status_of(&rs, 1), BLKIF_RSP_ERROR);
    assert_eq!(status_of(&rs, 2), BLKIF_RSP_OKAY);
}

/// BUG 1, second trigger: the store refuses the forced dispatch.
#[test]
fn pool_shortage_then_store_refusal_does_not_strand_ring() {
    let (mut i, mut h, mut fr) = connected(&with(Tunable::MaxRequests, 1));
    h.faults.submits = 1;
    let r1 = req(BLKIF_OP_READ, 1, 0, &grefs(1, 0));
    let r2 = req(BLKIF_OP_READ, 2, 100, &grefs(1, 1));
    let rs = serve(&mut i, &mut h, &mut fr, &[r1, r2]);
    assert_answered_once(&rs, &[1, 2]);
    assert_eq!(status_of(&rs, 1), BLKIF_RSP_ERROR);
}

/// BUG 3 (instance.rs:487-495): when the platform returns a ring mapping
/// shorter than asked, `BackRing::new` fails and drops the `SharedMem`
/// without `unmap_ring`: the mapping leaks. (Needs `BackRing::new` to give
/// the memory back on error.)
#[test]
fn short_ring_mapping_is_unmapped() {
    let (_, h) = failed_connect(|h| h.faults.short_ring = true);
    h.assert_released();
}

/// A queue a lending platform could not lend (its thread or its tables
/// could not be made) and that nobody serves inline: the connection fails
/// with an error node, and closing releases its rings, channels and
/// window, rather than leaving the front-end waiting on a ring nobody
/// reads.
#[test]
fn a_queue_that_cannot_be_lent_fails_the_connection() {
    let (i, h) = failed_connect(|h| h.faults.no_inline = true);
    assert_eq!(i.last_error(), Some(ConnectError::NoMemory));
    let node = format!("error/{}/error", BE_PATH.trim_start_matches('/'));
    let error = h.xs_get(&node).unwrap_or_default();
    assert!(error.starts_with("12 "), "{error:?}");
    h.assert_released();
    h.assert_clean();
}

/// BUG 2 (instance.rs:381-398, 562-584): an `online` back-end draining I/O
/// after the front-end went Closed ignores the front-end's Initialising /
/// Initialised (state is not yet Closed); when the drain finishes it
/// enters Closed and never looks at the front-end again, so a front-end
/// that already re-initialised (reboot during slow I/O) waits forever.
#[test]
fn online_reconnect_noticed_after_drain() {
    let mut h = host(true);
    let mut i = Instance::new(BE_PATH, &Tunables::default()).unwrap();
    i.attach(&mut h);
    let mut fr = fe_connect(&mut i, &mut h);
    let r = req(BLKIF_OP_READ, 1, 0, &grefs(1, 0));
    produce(&mut i, &mut h, &mut fr, &[r]);
    assert_eq!(h.pending(), 1);
    fe_state(&mut i, &mut h, "5");
    fe_state(&mut i, &mut h, "6");
    // The guest reboots and its new front-end is ready before the I/O ends.
    let _fr2 = h.frontend_ring(Abi::native(), 1);
    fe_state(&mut i, &mut h, "1");
    fe_state(&mut i, &mut h, "3");
    complete_all(&mut i, &mut h);
    assert_eq!(i.state(), XenbusState::Connected);
}

/// A connection whose small window ([`small_window`]) a write `a` of 11
/// pages (id 1, at sector 0) fills, with `later` produced behind it.
fn window_filled(later: &[BlkifRequest]) -> (Instance, FakeHost, FrontRing) {
    let (mut i, mut h, mut fr) = connected(&tunables(small_window));
    let mut reqs = vec![req(BLKIF_OP_WRITE, 1, 0, &grefs(11, 0))];
    reqs.extend_from_slice(later);
    produce(&mut i, &mut h, &mut fr, &reqs);
    (i, h, fr)
}

/// Attaches, offers a ring, arms `fault`, and has the front-end announce
/// it: the connection fails (Closing).
fn failed_connect(fault: impl FnOnce(&mut FakeHost)) -> (Instance, FakeHost) {
    let (mut i, mut h) = attached(&Tunables::default());
    let _fr = h.frontend_ring(Abi::native(), 1);
    fault(&mut h);
    fe_state(&mut i, &mut h, "3");
    assert_eq!(i.state(), XenbusState::Closing);
    (i, h)
}

/// The front-end publishes an impossible `req_prod` (a thousand ahead)
/// and kicks: the connection fails (Closing).
fn break_ring(i: &mut Instance, h: &mut FakeHost, fr: &mut FrontRing) {
    fr.set_req_prod_raw(fr.req_prod_pvt().wrapping_add(1000));
    i.run(h, 0);
    assert_eq!(i.state(), XenbusState::Closing);
}

/// Breaks the ring with one I/O in flight: that I/O drains, nothing else
/// reaches the store, and everything is released.
fn nothing_starts_after_breaking(i: &mut Instance, h: &mut FakeHost, fr: &mut FrontRing) {
    break_ring(i, h, fr);
    complete_all(i, h);
    assert_eq!(h.log.len(), 1, "I/O started after the failure: {:?}", h.log);
    h.assert_released();
}

/// LESSER 1 (issue 13, finding 7): after an impossible `req_prod` the
/// connection is failed, but reqlists consumed in earlier passes that
/// waited for the window (`waitq`) or for the barrier drain used to be
/// mapped and submitted by later completions: guest data reached the
/// medium after the back-end declared the ring broken. Now every waiting
/// reqlist and the pending barrier are finished at once (no I/O), and
/// only what is already in flight drains.
#[test]
fn nothing_starts_after_ring_broken() {
    let waits = req(BLKIF_OP_WRITE, 2, 1000, &grefs(2, 20));
    let (mut i, mut h, mut fr) = window_filled(&[waits]);
    assert_eq!(h.log.len(), 1);
    nothing_starts_after_breaking(&mut i, &mut h, &mut fr);
}

/// Finding 7, the barrier's side: a barrier consumed while a write is in
/// flight waits for its drain; the ring breaks meanwhile. The write
/// drains, the barrier never starts (neither its flushes nor its data).
#[test]
fn no_barrier_starts_after_ring_broken() {
    let (mut i, mut h, mut fr) = connected_with(&[
        req(BLKIF_OP_WRITE, 1, 0, &grefs(2, 0)),
        req(BLKIF_OP_WRITE_BARRIER, 2, 100, &grefs(1, 10)),
    ]);
    assert_eq!(h.log.len(), 1, "the barrier waits for the write");
    nothing_starts_after_breaking(&mut i, &mut h, &mut fr);
}

// ---------------------------------------------------------------------------
// Requirements that hold (regression tests)
// ---------------------------------------------------------------------------

#[test]
fn kva_shortage_then_resume_answers_everything_once() {
    let waits = req(BLKIF_OP_WRITE, 2, 1000, &grefs(2, 20));
    let (mut i, mut h, mut fr) = window_filled(&[waits]);
    pump(&mut i, &mut h);
    assert_eq!(i.stats().get(Stat::KvaShortages), 1);
    assert_eq!(h.pending(), 1);
    // Produced while stalled: seen once the stall ends.
    fr.push_request(&req(BLKIF_OP_READ, 3, 3000, &grefs(1, 30)));
    if fr.publish_requests() {
        i.run(&mut h, 0);
    }
    complete_all(&mut i, &mut h);
    let r = responses(&mut fr);
    assert_answered_once(&r, &[1, 2, 3]);
    assert!(r.iter().all(|r| r.status == BLKIF_RSP_OKAY));
    assert!(i.is_idle());
    assert!(h.live_mappings == 0);
    h.assert_clean();
}

#[test]
fn request_pool_shortage_then_resume() {
    let (mut i, mut h, mut fr) = connected(&with(Tunable::MaxRequests, 2));
    let rs = one_page_each(BLKIF_OP_READ, 6, 100);
    produce(&mut i, &mut h, &mut fr, &rs);
    pump(&mut i, &mut h);
    assert!(i.stats().get(Stat::RequestShortages) >= 1);
    assert_eq!(i.stats().get(Stat::ReqsReceived), 2);
    complete_all(&mut i, &mut h);
    let r = responses(&mut fr);
    assert_answered_once(&r, &[0, 1, 2, 3, 4, 5]);
    h.assert_clean();
}

/// Fills data page `k` with `byte` (a write's data).
fn fill(h: &mut FakeHost, k: u32, byte: u8) {
    h.page_mut(data_gref(k)).fill(byte);
}

/// Issue 13, finding 2: three contiguous writes coalesce into one
/// reqlist, the middle one naming a grant never issued. Only the middle
/// one is answered with an error; the others are served as two runs
/// around it (two I/Os), their data on the medium, the middle one's
/// sectors untouched. (It used to fail all three.)
#[test]
fn one_bad_grant_fails_only_its_own_request() {
    let (mut i, mut h, mut fr) = connected(&Tunables::default());
    for (k, b) in [(0, 0xa1), (1, 0xa2), (5, 0xb1), (9, 0xc1)] {
        fill(&mut h, k, b);
    }
    let a = req(BLKIF_OP_WRITE, 1, 0, &grefs(2, 0));
    let b = req(BLKIF_OP_WRITE, 2, 16, &[data_gref(5), BAD_GREF]);
    let c = req(BLKIF_OP_WRITE, 3, 32, &grefs(1, 9));
    let r = serve(&mut i, &mut h, &mut fr, &[a, b, c]);
    assert_eq!(i.stats().get(Stat::ReqsCoalesced), 2);
    assert_answered_once(&r, &[1, 2, 3]);
    assert_eq!(status_of(&r, 1), BLKIF_RSP_OKAY);
    assert_eq!(status_of(&r, 2), BLKIF_RSP_ERROR);
    assert_eq!(status_of(&r, 3), BLKIF_RSP_OKAY);
    let ios: Vec<(Kind, u64)> = h.log.iter().map(|l| (l.kind, l.offset)).collect();
    assert_eq!(ios, [(Kind::Write, 0), (Kind::Write, 32 * 512)]);
    assert!(h.medium[..4096].iter().all(|&x| x == 0xa1));
    assert!(h.medium[4096..8192].iter().all(|&x| x == 0xa2));
    assert!(
        h.medium[8192..16384].iter().all(|&x| x == 0),
        "b not written"
    );
    assert!(h.medium[16384..20480].iter().all(|&x| x == 0xc1));
    assert_eq!(i.stats().get(Stat::ReqsCompletedWithError), 1);
    assert_eq!(i.stats().get(Stat::GrantMapFailures), 1);
    assert_eq!(i.stats().get(Stat::BytesWritten), 3 * 4096);
    assert_eq!(h.live_mappings, 0, "the bad request's good grant unmapped");
    h.assert_clean();
}

/// Finding 2, reads: a READ into a read-only grant cannot be mapped
/// writable; the valid contiguous READs beside it still get their data.
#[test]
fn a_read_into_a_read_only_grant_fails_only_itself() {
    let (mut i, mut h, mut fr) = connected(&Tunables::default());
    for (k, b) in h.medium[..3 * 4096]
        .chunks_mut(4096)
        .zip([0x11u8, 0x22, 0x33])
    {
        k.fill(b);
    }
    let ro = h.grant(&[0xee; 4096], true);
    let a = req(BLKIF_OP_READ, 1, 0, &grefs(1, 0));
    let b = req(BLKIF_OP_READ, 2, 8, &[ro]);
    let c = req(BLKIF_OP_READ, 3, 16, &grefs(1, 1));
    let r = serve(&mut i, &mut h, &mut fr, &[a, b, c]);
    assert_eq!(i.stats().get(Stat::ReqsCoalesced), 2);
    assert_eq!(status_of(&r, 1), BLKIF_RSP_OKAY);
    assert_eq!(status_of(&r, 2), BLKIF_RSP_ERROR);
    assert_eq!(status_of(&r, 3), BLKIF_RSP_OKAY);
    assert!(h.page(data_gref(0)).iter().all(|&x| x == 0x11));
    assert!(
        h.page(ro).iter().all(|&x| x == 0xee),
        "the guest's page kept"
    );
    assert!(h.page(data_gref(1)).iter().all(|&x| x == 0x33));
    assert_eq!(i.stats().get(Stat::BytesRead), 2 * 4096);
    h.assert_clean();
}

/// Finding 2, every position: the bad request first, last, alone in its
/// run or all of them bad. Each good request is served with its data, each
/// bad one answered with an error, nothing left mapped.
#[test]
fn bad_grants_anywhere_fail_only_their_requests() {
    // Which of five contiguous one-page writes name a bad grant.
    for bad in [
        &[0usize][..],
        &[4],
        &[0, 4],
        &[1, 3],
        &[0, 1, 2, 3, 4],
        &[2, 3],
    ] {
        let (mut i, mut h, mut fr) = connected(&Tunables::default());
        let reqs: Vec<BlkifRequest> = (0..5u32)
            .map(|k| {
                fill(&mut h, k, 0x40 + k as u8);
                let g = if bad.contains(&(k as usize)) {
                    BAD_GREF
                } else {
                    data_gref(k)
                };
                req(BLKIF_OP_WRITE, u64::from(k), u64::from(k) * 8, &[g])
            })
            .collect();
        let r = serve(&mut i, &mut h, &mut fr, &reqs);
        assert_answered_once(&r, &[0, 1, 2, 3, 4]);
        for k in 0..5usize {
            let want = if bad.contains(&k) {
                BLKIF_RSP_ERROR
            } else {
                BLKIF_RSP_OKAY
            };
            assert_eq!(status_of(&r, k as u64), want, "bad {bad:?}, request {k}");
            let page = &h.medium[k * 4096..(k + 1) * 4096];
            let byte = if bad.contains(&k) { 0 } else { 0x40 + k as u8 };
            assert!(
                page.iter().all(|&x| x == byte),
                "bad {bad:?}, sector {}",
                k * 8
            );
        }
        assert_eq!(h.live_mappings, 0);
        assert!(i.is_idle());
        h.assert_clean();
    }
}

/// Finding 2 with store faults: the runs around a bad request are I/Os of
/// their own, so a store error (or refusal) of one run fails that run's
/// requests only, and the next run is still served.
#[test]
fn a_failed_run_fails_only_its_requests() {
    for refuse in [false, true] {
        let (mut i, mut h, mut fr) = connected(&Tunables::default());
        let a = req(BLKIF_OP_WRITE, 1, 0, &grefs(1, 0));
        let b = req(BLKIF_OP_WRITE, 2, 8, &grefs(1, 1));
        let bad = req(BLKIF_OP_WRITE, 3, 16, &[BAD_GREF]);
        let c = req(BLKIF_OP_WRITE, 4, 24, &grefs(1, 3));
        fill(&mut h, 3, 0x77);
        if refuse {
            h.faults.submits = 1;
        }
        produce(&mut i, &mut h, &mut fr, &[a, b, bad, c]);
        pump(&mut i, &mut h);
        if !refuse {
            // The first run (a, b) fails in the store.
            assert!(complete_one(&mut i, &mut h, Err(IoError::Io)).is_some());
        }
        complete_all(&mut i, &mut h);
        let r = responses(&mut fr);
        assert_answered_once(&r, &[1, 2, 3, 4]);
        for (id, want) in [
            (1, BLKIF_RSP_ERROR),
            (2, BLKIF_RSP_ERROR),
            (3, BLKIF_RSP_ERROR),
            (4, BLKIF_RSP_OKAY),
        ] {
            assert_eq!(status_of(&r, id), want, "refuse {refuse}, id {id}");
        }
        assert!(h.medium[24 * 512..28 * 512].iter().all(|&x| x == 0x77));
        assert_eq!(h.live_mappings, 0);
        h.assert_clean();
    }
}

/// Reqlists of one request each — coalescing off (the requests
/// back-to-back), and on (the requests apart) — without and with
/// persistent grants. In each round a grant that cannot be mapped, a store
/// error and a store refusal each fail only their own request; the others
/// are served with their data; the window, the request slots and the
/// transient mappings all come back, so the next round is served the same.
/// With persistent grants, rounds after the first find every good grant in
/// the cache and map nothing.
#[test]
fn single_request_reqlists_fail_alone() {
    for (coalesce, persistent) in [(false, false), (true, false), (false, true), (true, true)] {
        let what = format!("coalesce {coalesce}, persistent {persistent}");
        let t = with(Tunable::NoCoalesceReqs, u64::from(!coalesce));
        let (mut i, mut h) = attached(&t);
        if persistent {
            h.fe_set("feature-persistent", "1");
        }
        let mut fr = fe_connect(&mut i, &mut h);
        assert_eq!(i.state(), XenbusState::Connected, "{what}");
        let stride = if coalesce { 16 } else { 8 };
        for round in 0..3u64 {
            let base = round * 128;
            let mapped_before = h.grants_mapped;
            // Five one-page writes: 1 names a grant never issued, 3 fails
            // in the store, 4 is refused by it.
            let reqs: Vec<BlkifRequest> = (0..5u32)
                .map(|k| {
                    fill(&mut h, k, 0x50 + round as u8 * 8 + k as u8);
                    let g = if k == 1 { BAD_GREF } else { data_gref(k) };
                    req(
                        BLKIF_OP_WRITE,
                        u64::from(k),
                        base + u64::from(k) * stride,
                        &[g],
                    )
                })
                .collect();
            produce(&mut i, &mut h, &mut fr, &reqs[..4]);
            pump(&mut i, &mut h);
            h.faults.submits = 1;
            produce(&mut i, &mut h, &mut fr, &reqs[4..]);
            pump(&mut i, &mut h);
            assert_eq!(i.stats().get(Stat::ReqsCoalesced), 0, "{what}");
            // In submission order: 0 and 2 succeed, 3 fails.
            assert!(complete_one(&mut i, &mut h, Ok(())).is_some());
            assert!(complete_one(&mut i, &mut h, Ok(())).is_some());
            assert!(complete_one(&mut i, &mut h, Err(IoError::Io)).is_some());
            assert!(complete_one(&mut i, &mut h, Ok(())).is_none(), "{what}");
            let r = responses(&mut fr);
            assert_answered_once(&r, &[0, 1, 2, 3, 4]);
            for (k, ok) in [(0u32, true), (1, false), (2, true), (3, false), (4, false)] {
                let want = if ok { BLKIF_RSP_OKAY } else { BLKIF_RSP_ERROR };
                assert_eq!(status_of(&r, k.into()), want, "{what}, round {round}, {k}");
                let at = (base + u64::from(k) * stride) as usize * 512;
                let byte = if ok {
                    0x50 + round as u8 * 8 + k as u8
                } else {
                    0
                };
                assert!(
                    h.medium[at..at + 4096].iter().all(|&x| x == byte),
                    "{what}, round {round}, request {k}"
                );
            }
            let rounds = round + 1;
            assert_eq!(i.stats().get(Stat::GrantMapFailures), rounds, "{what}");
            assert_eq!(i.stats().get(Stat::ReqsCompletedWithError), 3 * rounds);
            assert_eq!(i.stats().get(Stat::BytesWritten), 2 * 4096 * rounds);
            assert!(i.is_idle(), "{what}");
            if persistent {
                // The four good grants stay mapped in the cache; after the
                // first round they are hits, and nothing new is mapped.
                assert_eq!(h.live_mappings, 4, "{what}");
                assert_eq!(i.stats().get(Stat::PersistentGrantsMapped), 4);
                assert_eq!(i.stats().get(Stat::PersistentGrantHits), 4 * round);
                if round > 0 {
                    assert_eq!(h.grants_mapped, mapped_before, "{what}");
                }
            } else {
                assert_eq!(h.live_mappings, 0, "{what}");
                assert_eq!(h.grants_mapped, mapped_before + 4, "{what}");
            }
        }
        h.assert_clean();
    }
}

#[test]
fn store_refusal_answers_once_with_error() {
    let (mut i, mut h, mut fr) = connected(&Tunables::default());
    h.faults.submits = 1;
    let a = req(BLKIF_OP_WRITE, 1, 0, &grefs(3, 0));
    let b = req(BLKIF_OP_WRITE, 2, 24, &grefs(3, 3));
    let r = serve(&mut i, &mut h, &mut fr, &[a, b]);
    assert_answered_once(&r, &[1, 2]);
    assert!(r.iter().all(|r| r.status == BLKIF_RSP_ERROR));
    assert!(h.live_mappings == 0);
    h.assert_clean();
}

#[test]
fn io_error_in_any_phase_answers_once_with_error() {
    for fail_phase in 0..3 {
        let (mut i, mut h, mut fr) = connected(&Tunables::default());
        // A barrier with data: Flush, Data, Flush.
        let r = req(BLKIF_OP_WRITE_BARRIER, 9, 0, &grefs(2, 0));
        produce(&mut i, &mut h, &mut fr, &[r]);
        for phase in 0..3 {
            let res = if phase == fail_phase {
                Err(IoError::Io)
            } else {
                Ok(())
            };
            let p = complete_one(&mut i, &mut h, res);
            assert!(p.is_some());
            if phase == fail_phase {
                break;
            }
        }
        assert!(h.pending() == 0, "no phase after a failed one");
        let r = responses(&mut fr);
        assert_answered_once(&r, &[9]);
        assert_eq!(r[0].status, BLKIF_RSP_ERROR);
        assert!(h.live_mappings == 0);
        h.assert_clean();
    }
}

#[test]
fn flush_with_data_writes_then_flushes() {
    let (mut i, mut h, mut fr) =
        connected_with(&[req(BLKIF_OP_FLUSH_DISKCACHE, 4, 8, &grefs(1, 0))]);
    complete_all(&mut i, &mut h);
    assert_eq!(kinds(&h), [Kind::Write, Kind::Flush]);
    assert_eq!(responses(&mut fr)[0].status, BLKIF_RSP_OKAY);
}

/// A barrier starts only after every earlier I/O (including one waiting
/// for the window) has completed, and nothing after it starts before it
/// completes.
#[test]
fn barrier_orders_against_in_flight_and_stalled_requests() {
    let b = req(BLKIF_OP_WRITE, 2, 1000, &grefs(1, 20)); // stalls behind a
    let x = req(BLKIF_OP_WRITE_BARRIER, 3, 2000, &grefs(1, 30));
    let d = req(BLKIF_OP_READ, 4, 3000, &grefs(1, 40));
    let (mut i, mut h, mut fr) = window_filled(&[b, x, d]);
    pump(&mut i, &mut h);
    // Submission order must be: a | b | flush, barrier data, flush | d, and
    // each group starts only when the previous completed.
    let mut done: Vec<IoTag> = Vec::new();
    let mut guard = 0;
    while let Some(tag) = h.pending_tag(0) {
        guard += 1;
        assert!(guard < 100);
        assert_eq!(h.pending(), 1, "one thing at a time here: {:?}", h.log);
        complete_one(&mut i, &mut h, Ok(()));
        done.push(tag);
    }
    let order: Vec<(Kind, u64)> = h.log.iter().map(|l| (l.kind, l.offset)).collect();
    assert_eq!(
        order,
        [
            (Kind::Write, 0),
            (Kind::Write, 1000 * 512),
            (Kind::Flush, 0),
            (Kind::Write, 2000 * 512),
            (Kind::Flush, 0),
            (Kind::Read, 3000 * 512),
        ]
    );
    assert_answered_once(&responses(&mut fr), &[1, 2, 3, 4]);
    h.assert_clean();
}

/// Found by the whole-instance fuzz target: requests accepted before the
/// medium shrank — one waiting for the window, a barrier's data behind its
/// first flush — were submitted past the new end once they could start.
/// They fail instead, and nothing reaches the store past the end.
#[test]
fn io_accepted_before_a_shrink_is_not_submitted_past_the_end() {
    let t = tunables(small_window);
    let (mut i, mut h, mut fr) = connected(&t);
    let end = SECTORS - 64;
    let a = req(BLKIF_OP_WRITE, 1, end - 88, &grefs(11, 0)); // in flight
    let b = req(BLKIF_OP_WRITE, 2, end + 8, &grefs(1, 20)); // waits for a
    produce(&mut i, &mut h, &mut fr, &[a, b]);
    pump(&mut i, &mut h);
    assert_eq!(h.pending(), 1);
    h.resize_medium(Sectors(end));
    i.medium_changed(&mut h);
    complete_all(&mut i, &mut h);
    let rsps = responses(&mut fr);
    assert_eq!(status_of(&rsps, 1), BLKIF_RSP_OKAY);
    assert_eq!(status_of(&rsps, 2), BLKIF_RSP_ERROR);
    assert_eq!(
        h.log.len(),
        1,
        "nothing submitted past the end: {:?}",
        h.log
    );

    // A barrier's data waits for its first flush.
    let x = req(BLKIF_OP_WRITE_BARRIER, 3, end - 24, &grefs(2, 30));
    produce(&mut i, &mut h, &mut fr, &[x]);
    pump(&mut i, &mut h);
    assert_eq!(h.pending(), 1, "the barrier's first flush");
    h.resize_medium(Sectors(end - 16));
    i.medium_changed(&mut h);
    complete_all(&mut i, &mut h);
    assert_eq!(status_of(&responses(&mut fr), 3), BLKIF_RSP_ERROR);
    assert_eq!(kinds(&h), [Kind::Write, Kind::Flush], "{:?}", h.log);
    h.assert_clean();
}

#[test]
fn impossible_req_prod_fails_connection_and_answers_nothing_more() {
    // One legitimate I/O in flight.
    let (mut i, mut h, mut fr) = in_flight(&[req(BLKIF_OP_READ, 1, 0, &grefs(1, 0))]);
    // Valid-looking requests, then an impossible producer index.
    for k in 0..3 {
        assert!(fr.push_request(&req(BLKIF_OP_READ, 10 + k, 8 * k, &grefs(1, 5))));
    }
    let before_log = h.log.len();
    break_ring(&mut i, &mut h, &mut fr);
    assert_eq!(h.log.len(), before_log, "nothing dispatched");
    assert_eq!(h.backend_state(), Some("5"));
    complete_all(&mut i, &mut h);
    assert!(
        responses(&mut fr).is_empty(),
        "no responses after the failure"
    );
    // The drain released everything.
    h.assert_released();
    h.assert_clean();
    // Hostile follow-ups do nothing.
    i.run(&mut h, 0);
    fe_state(&mut i, &mut h, "4");
    fe_state(&mut i, &mut h, "6");
    assert_eq!(i.state(), XenbusState::Closed);
    h.assert_released();
    assert_eq!(h.store_closes, 1);
    h.assert_clean();
}

#[test]
fn close_with_io_in_flight_drains_then_releases() {
    let (mut i, mut h, mut fr) = in_flight(&[
        req(BLKIF_OP_WRITE, 1, 0, &grefs(2, 0)),
        req(BLKIF_OP_READ, 2, 500, &grefs(1, 9)),
    ]);
    fe_state(&mut i, &mut h, "5");
    assert!(h.evtchn_bound(0) && h.ring_mapped(), "still draining");
    fe_state(&mut i, &mut h, "5"); // repeated Closing
    complete_one(&mut i, &mut h, Ok(()));
    assert!(h.ring_mapped());
    complete_one(&mut i, &mut h, Err(IoError::Io));
    h.assert_released();
    assert_eq!(i.state(), XenbusState::Closing);
    let r = responses(&mut fr);
    assert_answered_once(&r, &[1, 2]);
    assert_eq!(status_of(&r, 2), BLKIF_RSP_ERROR);
    fe_state(&mut i, &mut h, "6");
    assert_eq!(i.state(), XenbusState::Closed);
    assert_eq!(h.store_closes, 1, "not online: store closed");
    h.assert_clean();
}

#[test]
fn detach_with_io_in_flight_and_open_reqlist() {
    let (mut i, mut h, mut fr) = connected(&with(Tunable::RequestsPerPass, 1));
    // The per-pass budget leaves the second request unconsumed.
    let a = req(BLKIF_OP_WRITE, 1, 0, &grefs(1, 0));
    let b = req(BLKIF_OP_WRITE, 2, 8, &grefs(1, 1));
    produce(&mut i, &mut h, &mut fr, &[a, b]);
    assert_eq!(h.schedule_runs, 1);
    i.detach(&mut h);
    assert!(!i.is_detached());
    complete_all(&mut i, &mut h);
    assert!(i.is_detached());
    assert_eq!(i.state(), XenbusState::Closed);
    h.assert_released();
    assert_eq!(h.store_closes, 1);
    assert_answered_once(&responses(&mut fr), &[1]);
    // Late platform calls are harmless.
    i.run(&mut h, 0);
    i.complete(&mut h, IoTag(0), Ok(()));
    i.frontend_changed(&mut h);
    i.detach(&mut h);
    assert_eq!(h.store_closes, 1);
    h.assert_clean();
}

#[test]
fn per_pass_cap_and_schedule_run() {
    let (mut i, mut h, mut fr) = connected(&with(Tunable::RequestsPerPass, 2));
    let rs = one_page_each(BLKIF_OP_READ, 5, 64);
    for r in &rs {
        fr.push_request(r);
    }
    assert!(fr.publish_requests());
    i.run(&mut h, 0);
    assert_eq!(i.stats().get(Stat::ReqsReceived), 2);
    assert_eq!(h.schedule_runs, 1);
    pump(&mut i, &mut h);
    assert_eq!(i.stats().get(Stat::ReqsReceived), 5);
    complete_all(&mut i, &mut h);
    assert_answered_once(&responses(&mut fr), &[0, 1, 2, 3, 4]);
}

/// The back-end notifies only when the front-end's `rsp_event` asks.
#[test]
fn notify_only_when_asked() {
    let (mut i, mut h, mut fr) = in_flight(&[
        req(BLKIF_OP_READ, 1, 0, &grefs(1, 0)),
        req(BLKIF_OP_READ, 2, 64, &grefs(1, 1)),
    ]);
    complete_one(&mut i, &mut h, Ok(()));
    // rsp_event = 1 (ring init): the first response is notified.
    assert_eq!(h.notifications, 1);
    complete_one(&mut i, &mut h, Ok(()));
    // rsp_event not re-armed: no event for the second.
    assert_eq!(h.notifications, 1);
    assert_eq!(responses(&mut fr).len(), 2);
    assert!(!fr.final_check_for_responses());
    let r = req(BLKIF_OP_READ, 3, 0, &grefs(1, 0));
    produce(&mut i, &mut h, &mut fr, &[r]);
    complete_one(&mut i, &mut h, Ok(()));
    assert_eq!(h.notifications, 2);
}

/// A request produced while the back-end is paused (barrier draining) is
/// served once the pause ends, without another kick.
#[test]
fn request_produced_while_paused_is_seen() {
    let (mut i, mut h, mut fr) = connected_with(&[
        req(BLKIF_OP_WRITE, 1, 0, &grefs(1, 0)),
        req(BLKIF_OP_WRITE_BARRIER, 2, 0, &[]),
    ]);
    // Produced while paused; whether or not it kicks, the run sees a pause.
    fr.push_request(&req(BLKIF_OP_READ, 3, 64, &grefs(1, 1)));
    if fr.publish_requests() {
        i.run(&mut h, 0);
    }
    complete_all(&mut i, &mut h);
    assert_answered_once(&responses(&mut fr), &[1, 2, 3]);
}

#[test]
fn counters_mean_what_they_say() {
    let (mut i, mut h, mut fr) = connected(&Tunables::default());
    let rs = [
        req(BLKIF_OP_WRITE, 1, 0, &grefs(1, 0)),
        req(BLKIF_OP_WRITE, 2, 8, &grefs(1, 1)), // coalesces with 1
        req(BLKIF_OP_READ, 3, 800, &grefs(1, 2)), // closes 1+2: normal
        req(99, 4, 0, &grefs(1, 3)),             // refused
        req(BLKIF_OP_FLUSH_DISKCACHE, 5, 0, &[]), // closes 3: normal, own normal
        req(BLKIF_OP_READ, 6, 16, &[BAD_GREF]),  // forced at end of pass; map fails
    ];
    produce(&mut i, &mut h, &mut fr, &rs);
    complete_all(&mut i, &mut h);
    let s = i.stats();
    let g = |x| s.get(x);
    assert_eq!(g(Stat::ReqsReceived), 6);
    assert_eq!(g(Stat::ReqsQueuedForCompletion), 6);
    assert_eq!(g(Stat::ReqsCompleted), 6);
    assert_eq!(g(Stat::ReqsCompletedWithError), 2);
    assert_eq!(g(Stat::ReqsRefused), 1);
    assert_eq!(g(Stat::ReqsCoalesced), 1);
    assert_eq!(g(Stat::NormalDispatch), 3);
    assert_eq!(g(Stat::ForcedDispatch), 1);
    assert_eq!(
        g(Stat::TotalDispatch),
        g(Stat::NormalDispatch) + g(Stat::ForcedDispatch)
    );
    assert_eq!(g(Stat::FlushReqs), 1);
    assert_eq!(g(Stat::BytesWritten), 8192);
    assert_eq!(g(Stat::BytesRead), 4096);
    let r = responses(&mut fr);
    assert_answered_once(&r, &[1, 2, 3, 4, 5, 6]);
}

#[test]
fn no_allocation_on_the_io_path() {
    let (mut i, mut h, mut fr) = connected(&Tunables::default());
    // Warm up the fake's own vectors.
    let batch: Vec<_> = (0..8)
        .map(|k| req(BLKIF_OP_WRITE, k, k * 88, &grefs(11, k as u32 * 11)))
        .collect();
    produce(&mut i, &mut h, &mut fr, &batch);
    complete_all(&mut i, &mut h);
    responses(&mut fr);
    let mixed = [
        req(BLKIF_OP_WRITE, 1, 0, &grefs(3, 0)),
        req(BLKIF_OP_WRITE, 2, 24, &grefs(3, 3)),
        req(BLKIF_OP_READ, 3, 900, &[BAD_GREF]),
        req(77, 4, 0, &[]),
        req(BLKIF_OP_WRITE_BARRIER, 5, 100, &grefs(2, 9)),
        req(BLKIF_OP_READ, 6, 300, &grefs(1, 20)),
    ];
    for r in &mixed {
        fr.push_request(r);
    }
    fr.publish_requests();
    let ((), n) = allocations_in(|| {
        i.run(&mut h, 0);
        while h.pending() > 0 {
            h.complete_at(&mut i, 0, Ok(()));
            while h.schedule_runs > 0 {
                h.schedule_runs = 0;
                i.run(&mut h, 0);
            }
        }
    });
    assert_eq!(n, 0, "allocations on run/complete");
    assert_answered_once(&responses(&mut fr), &[1, 2, 3, 4, 5, 6]);
}

#[test]
fn connect_failure_cleans_up_and_online_backend_reconnects() {
    let mut h = host(true);
    let mut i = Instance::new(BE_PATH, &Tunables::default()).unwrap();
    i.attach(&mut h);
    h.faults.bind = true;
    let _ = fe_connect(&mut i, &mut h);
    assert_eq!(i.state(), XenbusState::Closing);
    assert_eq!(h.backend_state(), Some("5"));
    h.assert_released();
    fe_state(&mut i, &mut h, "6");
    assert_eq!(i.state(), XenbusState::Closed);
    assert_eq!(h.store_closes, 0, "online keeps the store");
    h.faults.bind = false;
    fe_state(&mut i, &mut h, "1");
    assert_eq!(i.state(), XenbusState::InitWait);
    let mut fr = fe_connect(&mut i, &mut h);
    assert_eq!(i.state(), XenbusState::Connected);
    let r = req(BLKIF_OP_READ, 1, 0, &grefs(1, 0));
    produce(&mut i, &mut h, &mut fr, &[r]);
    complete_all(&mut i, &mut h);
    assert_answered_once(&responses(&mut fr), &[1]);
    // Second full cycle.
    fe_state(&mut i, &mut h, "5");
    fe_state(&mut i, &mut h, "6");
    assert_eq!(i.state(), XenbusState::Closed);
    h.assert_released();
    assert_eq!((h.store_opens, h.store_closes), (1, 0));
    i.detach(&mut h);
    assert!(i.is_detached());
    assert_eq!(h.store_closes, 1);
    h.assert_clean();
}

/// Issue 13, finding 4: a refused connection leaves its `error` node for
/// the toolstack; the next connection that succeeds removes it, in the
/// transaction that enters Connected, so a Connected back-end never shows
/// a stale error.
#[test]
fn successful_connect_removes_a_stale_error_node() {
    const ERROR_NODE: &str = "error/local/domain/0/backend/vbd/1/51712/error";
    let mut h = host(true);
    let mut i = Instance::new(BE_PATH, &Tunables::default()).unwrap();
    i.attach(&mut h);
    let _ = h.frontend_ring(Abi::native(), 1);
    h.fe_set("ring-page-order", "9");
    fe_state(&mut i, &mut h, "3");
    assert_eq!(i.state(), XenbusState::Closing);
    assert_eq!(
        h.xs_get(ERROR_NODE),
        Some("22 ring-page-order: 9 is out of range")
    );
    fe_state(&mut i, &mut h, "6");
    fe_state(&mut i, &mut h, "1");
    assert_eq!(i.state(), XenbusState::InitWait);
    h.xs.del(&format!("{}/ring-page-order", xbb_testing::FE_PATH));
    let _fr = fe_connect(&mut i, &mut h);
    assert_eq!(i.state(), XenbusState::Connected);
    assert_eq!(h.xs_get(ERROR_NODE), None, "stale error node left");
    h.assert_clean();
}

/// Hostile front-end: random state values (including garbage), random
/// ring contents and producer indices, interleaved with runs and
/// completions. No panic, no violation, everything released at the end.
#[test]
fn hostile_state_and_ring_sequences() {
    let states = [
        "0",
        "1",
        "2",
        "3",
        "4",
        "5",
        "6",
        "7",
        "8",
        "9",
        "-1",
        "abc",
        "",
        "4294967300",
        " 4",
    ];
    for seed in 1..40u64 {
        let mut rng = XorShift(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15));
        let mut rnd = move || rng.next();
        let mut h = host(seed % 2 == 0);
        let t = tunables(|t| {
            if seed % 3 == 0 {
                small_window(t);
                t.set(Tunable::MaxRequests, 4).unwrap();
                t.set(Tunable::RequestsPerPass, 3).unwrap();
            }
        });
        let mut i = Instance::new(BE_PATH, &t).unwrap();
        i.attach(&mut h);
        let mut fr: Option<FrontRing> = None;
        for _ in 0..300 {
            match rnd() % 8 {
                0 | 1 => {
                    if !h.ring_mapped() {
                        // A front-end initialises a fresh ring before it
                        // announces a state.
                        h.take_ring();
                        fr = Some(h.frontend_ring(Abi::native(), 1));
                    }
                    let s = states[(rnd() % states.len() as u64) as usize];
                    fe_state(&mut i, &mut h, s);
                }
                2 | 3 => {
                    if let Some(f) = fr.as_mut() {
                        let n = rnd() % 5;
                        for _ in 0..n {
                            let op = [0u8, 1, 2, 3, 5, 6, 200][(rnd() % 7) as usize];
                            let nseg = (rnd() % 13) as u32;
                            let g: Vec<_> = (0..nseg)
                                .map(|_| {
                                    if rnd() % 10 == 0 {
                                        BAD_GREF
                                    } else {
                                        data_gref((rnd() % 64) as u32)
                                    }
                                })
                                .collect();
                            let mut r = req(op, rnd(), rnd() % (SECTORS + 100), &g.clone());
                            if let RequestBody::Rw { nr_segments, .. } = &mut r.body {
                                *nr_segments = nseg.min(255) as u8;
                            }
                            if f.free_slots() > 0 {
                                f.push_request(&r);
                            }
                        }
                        if rnd() % 20 == 0 {
                            f.set_req_prod_raw(rnd() as u32);
                        } else {
                            f.publish_requests();
                        }
                        i.run(&mut h, 0);
                        if let Some(f) = fr.as_mut() {
                            // Its own hostile req_prod may make rsp_prod look
                            // impossible to it: it stops taking.
                            while let Ok(Some(_)) = f.take_response() {}
                            f.final_check_for_responses();
                        }
                    }
                }
                4..=6 => {
                    let r = if rnd() % 5 == 0 {
                        Err(IoError::Io)
                    } else {
                        Ok(())
                    };
                    complete_one(&mut i, &mut h, r);
                }
                _ => {
                    i.run(&mut h, 0);
                    pump(&mut i, &mut h);
                }
            }
            h.assert_clean();
        }
        // Wind down.
        h.fe_set("state", "6");
        i.frontend_changed(&mut h);
        complete_all(&mut i, &mut h);
        assert!(i.is_idle());
        assert_eq!(i.state(), XenbusState::Closed, "seed {seed}");
        h.assert_released();
        i.detach(&mut h);
        assert!(i.is_detached());
        assert!(!h.store_is_open());
        h.assert_clean();
    }
}

#[test]
fn discard_not_offered_never_reaches_store() {
    // Discard is not offered: a discard request gets EOPNOTSUPP and never
    // reaches the store.
    let (mut i, mut h, mut fr) = connected(&Tunables::default());
    let mut r = req(xbb::abi::BLKIF_OP_DISCARD, 1, 0, &[]);
    r.body = RequestBody::Discard {
        flag: 0,
        handle: 0,
        sector_number: 0,
        nr_sectors: 8,
    };
    produce(&mut i, &mut h, &mut fr, &[r]);
    assert!(h.log.iter().all(|l| l.kind != Kind::Discard));
    assert_eq!(responses(&mut fr)[0].status, xbb::abi::BLKIF_RSP_EOPNOTSUPP);
}
