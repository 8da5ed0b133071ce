//! The simulated front-end's newer blkif features, through the public
//! path (a `World`, a back-end instance on a sparse file, a guest
//! front-end): indirect requests (`feature-max-indirect-segments`),
//! persistent grants (`feature-persistent`), multi-queue
//! (`multi-queue-max-queues`), discard (`feature-discard`) and a
//! 4 KiB-sector-aware front-end.
//!
//! Two kinds of tests: fallback tests, which configure the back-end not to
//! offer a feature and check that the front-end does without it exactly as
//! `xen-blkfront` does (and that the data still verifies); and negotiation
//! tests, in which the back-end offers the feature and the front-end uses it.

use xbb::abi::{
    BLKIF_DISCARD_SECURE, BLKIF_OP_DISCARD, BLKIF_OP_FLUSH_DISKCACHE, BLKIF_OP_INDIRECT,
    BLKIF_OP_READ, BLKIF_OP_WRITE, BLKIF_RSP_EOPNOTSUPP, BLKIF_RSP_ERROR, BLKIF_RSP_OKAY,
};
use xbb::stats::{Stat, Tunable};
use xbb_lab::frontend::{
    run_workload, FeatureRequest, Frontend, FrontendError, ManualRequest, Profile, SegmentGrant,
    Workload, WorkloadReport, MAX_INDIRECT_SEGMENTS,
};
use xbb_lab::world::VbdConfig;

mod support;

use support::rig::{check_clean, wait_one, Rig, GUEST, HANG_GUARD};

/// The profiles this file is about: the ones of the newer features, which
/// `Profile::NAMES` lists from `indirect` on.
fn new_profiles() -> impl Iterator<Item = &'static str> {
    Profile::NAMES.into_iter().skip_while(|n| *n != "indirect")
}

/// The profiles before them, which use none of those features.
fn old_profiles() -> impl Iterator<Item = &'static str> {
    Profile::NAMES.into_iter().take_while(|n| *n != "indirect")
}

/// A back-end told (by its `hw.xbb.*` tunables) to offer neither indirect
/// requests, nor persistent grants, nor more than one queue.
fn plain(tag: &str, tweak: impl FnOnce(&mut VbdConfig)) -> Rig {
    Rig::new(tag, |c| {
        c.tunables
            .set(Tunable::MaxIndirectSegments, 0)
            .expect("tunable");
        c.tunables
            .set(Tunable::MaxPersistentGrants, 0)
            .expect("tunable");
        c.tunables.set(Tunable::MaxQueues, 1).expect("tunable");
        tweak(c);
    })
}

/// A back-end node as a number (0 when absent).
fn be_num(rig: &Rig, key: &str) -> u64 {
    rig.be_node(key)
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0)
}

/// Shuts down, checks as every rig does, and that no grant is left active.
fn finish(rig: Rig) {
    let g = rig.finish();
    assert_eq!(g.active_grants, 0, "grants left active: {g:?}");
}

fn mixed(ops: u64, io_size: u32, seed: u64) -> Workload {
    support::rig::mixed(ops, io_size, seed, 8192)
}

fn one(fe: &mut Frontend, req: &FeatureRequest) -> (u64, i16) {
    let id = fe.submit_feature(req).expect("submit");
    (id, wait_one(fe, id).status)
}

/// 4-KiB pages of data the workload moved (one segment each).
fn segments_moved(r: &WorkloadReport) -> u64 {
    (r.bytes_read + r.bytes_written) / 4096
}

// ---------------------------------------------------------------------------
// Profiles
// ---------------------------------------------------------------------------

/// A rig named after `profile` whose back-end offers at least `min` in
/// its node `key`, and a front-end of `profile` connected to it.
fn offering(profile: &str, key: &str, min: u64) -> (Rig, Frontend) {
    let (rig, fe) = Rig::with_frontend(profile, profile);
    assert!(be_num(&rig, key) >= min, "{key}: {:?}", rig.be_node(key));
    (rig, fe)
}

/// The front-end disconnects; the rig shuts down with nothing left over.
fn disconnect_and_finish(mut fe: Frontend, rig: Rig) {
    fe.disconnect().unwrap();
    finish(rig);
}

#[test]
fn new_profiles_exist_and_modern_has_everything() {
    for name in new_profiles() {
        assert!(Profile::NAMES.contains(&name), "{name}");
        assert_eq!(Profile::by_name(name).unwrap().name, name);
    }
    let m = Profile::by_name("modern").unwrap();
    assert_eq!(m.max_indirect_segments, 256);
    assert!(m.persistent);
    assert_eq!(m.queues, 4);
    assert_eq!(m.discard_every, 32);
    assert_eq!(m.flush_every, 64);
    assert_eq!(Profile::by_name("indirect").unwrap().ring_page_order, 1);
    assert_eq!(Profile::by_name("multiqueue").unwrap().queues, 4);
    assert!(Profile::by_name("persistent").unwrap().persistent);
    assert_eq!(Profile::by_name("discard").unwrap().discard_every, 16);
    assert!(Profile::by_name("foursector").unwrap().sector_aware);
    // The old profiles use none of the new features.
    assert_eq!(old_profiles().count(), 6);
    assert_eq!(new_profiles().count(), 6);
    for name in old_profiles() {
        let p = Profile::by_name(name).unwrap();
        assert_eq!(p.max_indirect_segments, 0, "{name}");
        assert!(!p.persistent, "{name}");
        assert_eq!(p.queues, 1, "{name}");
        assert_eq!(p.discard_every, 0, "{name}");
        assert!(!p.sector_aware, "{name}");
    }
}

#[test]
fn impossible_profiles_are_refused() {
    let rig = plain("badprofile", |_| {});
    for p in [
        Profile {
            max_indirect_segments: MAX_INDIRECT_SEGMENTS + 1,
            ..Profile::by_name("indirect").unwrap()
        },
        Profile {
            queues: 0,
            ..Profile::by_name("multiqueue").unwrap()
        },
    ] {
        assert!(matches!(
            Frontend::new(&rig.world, &rig.vbd, p),
            Err(FrontendError::Invalid(_))
        ));
    }
    finish(rig);
}

// ---------------------------------------------------------------------------
// Fallback: the back-end offers none of the features
// ---------------------------------------------------------------------------

#[test]
fn every_new_profile_falls_back_and_verifies() {
    for name in new_profiles() {
        let rig = plain(name, |_| {});
        let mut fe = rig.connected(name);
        let p = fe.profile().clone();
        let info = fe.info().clone();
        assert_eq!(info.max_indirect_segments, 0, "{name}: {info:?}");
        assert!(!info.persistent, "{name}: {info:?}");
        assert_eq!(info.queues, 1, "{name}: {info:?}");
        // One ring, the legacy top-level keys.
        assert!(rig.fe_node("event-channel").is_some(), "{name}");
        assert!(
            rig.fe_node("ring-ref").is_some() || rig.fe_node("ring-ref0").is_some(),
            "{name}"
        );
        assert!(rig.fe_node("queue-0").is_none(), "{name}");
        assert!(
            matches!(
                rig.fe_node("multi-queue-num-queues").as_deref(),
                None | Some("1")
            ),
            "{name}"
        );
        // The front-end offers persistent grants when its profile does.
        assert_eq!(
            rig.fe_node("feature-persistent").as_deref() == Some("1"),
            p.persistent,
            "{name}"
        );
        let r = run_workload(&mut fe, &mixed(300, 64 << 10, 5)).expect(name);
        check_clean(&r);
        assert_eq!(r.indirect_requests, 0, "{name}: {r:?}");
        assert!(r.max_segments_seen <= 11, "{name}: {r:?}");
        assert_eq!(r.requests_per_queue, vec![r.requests], "{name}");
        if !info.discard {
            assert_eq!(r.discards, 0, "{name}: {r:?}");
        }
        rig.wait_completed(r.requests);
        assert_eq!(rig.stat(Stat::ReqsReceived), r.requests, "{name}");
        assert_eq!(rig.stat(Stat::ReqsCompletedWithError), 0, "{name}");
        // Without persistent grants, every data grant was ended after its
        // response: only the ring's grants remain.
        let g = rig.world.grant_stats(GUEST).unwrap();
        assert_eq!(g.active_grants, u64::from(info.ring_pages), "{name}: {g:?}");
        assert_eq!(fe.persistent_grants(), 0, "{name}");
        assert_eq!(fe.grants_issued(), segments_moved(&r), "{name}: {r:?}");
        fe.disconnect().expect("disconnect");
        finish(rig);
    }
}

#[test]
fn discard_profile_sends_no_discard_to_a_backend_without_it() {
    // A read-only medium never offers discard.
    let rig = plain("ro-discard", |c| c.mode = "r".into());
    let mut fe = rig.connected("discard");
    assert!(!fe.info().discard, "{:?}", fe.info());
    let wl = Workload {
        read_pct: 100,
        ..mixed(100, 16384, 3)
    };
    let r = run_workload(&mut fe, &wl).unwrap();
    assert_eq!(r.mismatches, 0, "{r:?}");
    assert_eq!(r.error_responses, 0, "{r:?}");
    assert_eq!(r.discards, 0, "{r:?}");
    assert!(r.bytes_checked > 0, "{r:?}");
    rig.wait_completed(r.requests);
    assert_eq!(rig.stat(Stat::DiscardReqs), 0);
    disconnect_and_finish(fe, rig);
}

#[test]
fn new_profiles_match_what_the_default_backend_offers() {
    // Whatever the back-end offers today, each feature is used exactly
    // when offered and the data verifies.
    for name in new_profiles() {
        let (rig, mut fe) = Rig::with_frontend(name, name);
        let p = fe.profile().clone();
        let info = fe.info().clone();
        let offered_ind = be_num(&rig, "feature-max-indirect-segments");
        assert_eq!(
            u64::from(info.max_indirect_segments),
            offered_ind.min(u64::from(p.max_indirect_segments)),
            "{name}"
        );
        assert_eq!(
            info.persistent,
            p.persistent && be_num(&rig, "feature-persistent") == 1,
            "{name}"
        );
        let max_q = be_num(&rig, "multi-queue-max-queues");
        let want_q = if p.queues > 1 && max_q > 0 {
            max_q.min(u64::from(p.queues))
        } else {
            1
        };
        assert_eq!(u64::from(info.queues), want_q, "{name}");
        assert_eq!(info.discard, be_num(&rig, "feature-discard") == 1, "{name}");
        let r = run_workload(&mut fe, &mixed(300, 64 << 10, 11)).expect(name);
        check_clean(&r);
        assert_eq!(r.requests_per_queue.len() as u32, info.queues, "{name}");
        if info.max_indirect_segments <= 11 {
            assert_eq!(r.indirect_requests, 0, "{name}");
        }
        if !(info.discard && p.discard_every > 0) {
            assert_eq!(r.discards, 0, "{name}");
        }
        fe.disconnect().expect("disconnect");
        finish(rig);
    }
}

// ---------------------------------------------------------------------------
// 4 KiB logical sectors
// ---------------------------------------------------------------------------

#[test]
fn foursector_profile_sizes_io_to_the_logical_sector() {
    let rig = plain("4k", |c| c.store.sector_size = 4096);
    // 6 KiB is not a multiple of the 4 KiB sector: a plain front-end
    // refuses the workload...
    let odd = mixed(200, 6144, 21);
    let mut fe = rig.connected("linux");
    assert!(matches!(
        run_workload(&mut fe, &odd),
        Err(FrontendError::Invalid(_))
    ));
    fe.disconnect().unwrap();
    // ...the sector-aware one rounds it up to 8 KiB, aligned.
    let mut fe = rig.connected("foursector");
    assert_eq!(fe.info().sector_size, 4096);
    let r = run_workload(&mut fe, &odd).unwrap();
    check_clean(&r);
    assert_eq!(r.bytes_written % 8192, 0, "{r:?}");
    // Sub-sector sizes too (on a region not written yet: the shadow of a
    // workload starts all zero).
    let sub = support::rig::mixed_in((8192, 4096), 100, 512, 22);
    let r = run_workload(&mut fe, &sub).unwrap();
    check_clean(&r);
    assert_eq!(r.bytes_written % 4096, 0, "{r:?}");
    rig.wait_completed(r.requests);
    assert_eq!(rig.stat(Stat::ReqsCompletedWithError), 0);
    fe.disconnect().unwrap();
    // The modern profile is sector-aware too.
    let mut fe = rig.connected("modern");
    let modern = support::rig::mixed_in((12288, 4096), 100, 2048, 23);
    check_clean(&run_workload(&mut fe, &modern).unwrap());
    disconnect_and_finish(fe, rig);
}

// ---------------------------------------------------------------------------
// Manual requests of the new kinds, refused by a back-end without them
// ---------------------------------------------------------------------------

#[test]
fn manual_feature_requests_refused_without_the_features() {
    let rig = plain("manual", |_| {});
    let mut fe = rig.connected("modern");
    assert_eq!(fe.info().max_indirect_segments, 0);
    // An indirect request to a back-end that offered none.
    let ind = ManualRequest::write(64, 16, 0x42).indirect(BLKIF_OP_WRITE);
    let (_, st) = one(&mut fe, &ind);
    assert_ne!(st, BLKIF_RSP_OKAY);
    assert_eq!(rig.file_bytes(64 * 512, 4096), vec![0; 4096]);
    // A discard where none was offered (secure or not) changes nothing.
    if !fe.info().discard {
        for flag in [0, BLKIF_DISCARD_SECURE] {
            let (_, st) = one(&mut fe, &FeatureRequest::discard(0, 8, flag));
            assert_eq!(st, BLKIF_RSP_EOPNOTSUPP);
        }
    }
    // A segment naming a grant the guest never made.
    let bogus = FeatureRequest::from(ManualRequest::read(0, 2))
        .segment_grant(1, SegmentGrant::Raw(0x7fff_0000));
    let (_, st) = one(&mut fe, &bogus);
    assert_eq!(st, BLKIF_RSP_ERROR);
    // Requests on a queue that does not exist are not built.
    assert!(matches!(
        fe.submit_feature(&FeatureRequest::from(ManualRequest::read(0, 1)).on_queue(1)),
        Err(FrontendError::Invalid(_))
    ));
    disconnect_and_finish(fe, rig);
}

#[test]
fn manual_requests_can_share_grants() {
    let rig = plain("share", |_| {});
    let mut fe = rig.connected("persistent");
    // A write whose two segments name the same page: the page's bytes land
    // twice.
    let dup = FeatureRequest::from(ManualRequest::write(16, 2, 0x5A))
        .segment_grant(1, SegmentGrant::SameAs(0));
    let id = fe.submit_feature(&dup).unwrap();
    let grefs = fe.segment_grefs(id);
    assert_eq!(grefs.len(), 2);
    assert_eq!(grefs[0], grefs[1]);
    let r = fe.wait_responses(1).unwrap();
    assert_eq!(r[0].status, BLKIF_RSP_OKAY, "{r:?}");
    assert_eq!(rig.file_bytes(16 * 512, 8192), vec![0x5A; 8192]);
    // A read naming a grant of another request still in flight: both go
    // out together, the second reusing the first's page.
    let first = FeatureRequest::from(ManualRequest::read(16, 1));
    let ids = fe.submit_features(&[first]).unwrap();
    let second = FeatureRequest::from(ManualRequest::read(24, 1))
        .segment_grant(0, SegmentGrant::InFlight { id: ids[0], seg: 0 });
    let id2 = fe.submit_feature(&second).unwrap();
    assert_eq!(fe.segment_grefs(id2), fe.segment_grefs(ids[0]));
    let r = fe.wait_responses(2).unwrap();
    assert!(r.iter().all(|r| r.status == BLKIF_RSP_OKAY), "{r:?}");
    // An impossible substitution is refused before anything is granted.
    let issued = fe.grants_issued();
    for bad in [
        FeatureRequest::from(ManualRequest::read(0, 1)).segment_grant(0, SegmentGrant::SameAs(0)),
        FeatureRequest::from(ManualRequest::read(0, 1)).segment_grant(5, SegmentGrant::Raw(9)),
        FeatureRequest::from(ManualRequest::read(0, 1))
            .segment_grant(0, SegmentGrant::InFlight { id: 999, seg: 0 }),
    ] {
        assert!(matches!(
            fe.submit_feature(&bad),
            Err(FrontendError::Invalid(_))
        ));
    }
    assert_eq!(fe.grants_issued(), issued);
    disconnect_and_finish(fe, rig);
}

// ---------------------------------------------------------------------------
// Negotiated: need the back-end to offer the features
// ---------------------------------------------------------------------------

#[test]
fn indirect_negotiated_carries_large_requests() {
    let (rig, mut fe) = offering("indirect", "feature-max-indirect-segments", 256);
    assert_eq!(fe.info().max_indirect_segments, 256);
    // 256 KiB I/Os: 64 segments each, one indirect request.
    let r = run_workload(&mut fe, &mixed(200, 256 << 10, 31)).unwrap();
    check_clean(&r);
    assert!(r.indirect_requests > 0, "{r:?}");
    assert!(r.max_segments_seen > 11, "{r:?}");
    rig.wait_completed(r.requests);
    assert_eq!(rig.stat(Stat::ReqsCompletedWithError), 0);
    assert!(rig.stat(Stat::IndirectReqs) > 0);
    // A manual indirect write of 20 pages lands byte for byte.
    let w = ManualRequest::write(512, 20, 0x6B).indirect(BLKIF_OP_WRITE);
    assert_eq!(one(&mut fe, &w).1, BLKIF_RSP_OKAY);
    assert_eq!(rig.file_bytes(512 * 512, 20 * 4096), vec![0x6B; 20 * 4096]);
    let (id, st) = one(
        &mut fe,
        &ManualRequest::read(512, 20).indirect(BLKIF_OP_READ),
    );
    assert_eq!(st, BLKIF_RSP_OKAY);
    assert_eq!(fe.page_data(id), vec![0x6B; 20 * 4096]);
    disconnect_and_finish(fe, rig);
}

#[test]
fn indirect_negotiated_refuses_hostile_requests() {
    let (rig, mut fe) = Rig::with_frontend("indirect-hostile", "indirect");
    assert_eq!(fe.info().max_indirect_segments, 256);
    let w = |pages| ManualRequest::write(2048, pages, 0x77);
    let cases: Vec<(&str, FeatureRequest)> = vec![
        (
            "more segments than negotiated",
            w(257).indirect(BLKIF_OP_WRITE),
        ),
        (
            "nr_segments above the descriptors",
            w(12).indirect(BLKIF_OP_WRITE).nr_segments(300),
        ),
        (
            "zero segments",
            w(12).indirect(BLKIF_OP_WRITE).nr_segments(0),
        ),
        (
            "indirect_op FLUSH",
            w(12).indirect(BLKIF_OP_FLUSH_DISKCACHE),
        ),
        ("indirect_op INDIRECT", w(12).indirect(BLKIF_OP_INDIRECT)),
        ("indirect_op DISCARD", w(12).indirect(BLKIF_OP_DISCARD)),
        (
            "descriptor page never granted",
            w(12).indirect(BLKIF_OP_WRITE).indirect_gref(0, 0x7fff_0000),
        ),
        (
            "data page never granted",
            w(12)
                .indirect(BLKIF_OP_WRITE)
                .segment_grant(5, SegmentGrant::Raw(0x7fff_0001)),
        ),
    ];
    for (what, req) in &cases {
        let (_, st) = one(&mut fe, req);
        assert_ne!(st, BLKIF_RSP_OKAY, "{what}");
    }
    assert_eq!(rig.file_bytes(2048 * 512, 257 * 4096), vec![0; 257 * 4096]);
    // Fewer descriptor pages than the segments need: segments past the
    // granted pages are missing, so the request must fail or only carry
    // what was described — never touch memory it was not given.
    let short = w(600).indirect(BLKIF_OP_READ).indirect_pages(1);
    let _ = one(&mut fe, &short);
    disconnect_and_finish(fe, rig);
}

#[test]
fn persistent_negotiated_reuses_grants() {
    let (rig, mut fe) = Rig::with_frontend("persistent", "persistent");
    assert_eq!(be_num(&rig, "feature-persistent"), 1);
    assert!(fe.info().persistent);
    let r = run_workload(&mut fe, &mixed(400, 32 << 10, 41)).unwrap();
    check_clean(&r);
    // Every segment used a pool grant; the pool is far smaller than the
    // segments moved.
    assert!(fe.persistent_grants() > 0);
    assert!(
        fe.grants_issued() < segments_moved(&r),
        "{} grants for {} segments",
        fe.grants_issued(),
        segments_moved(&r)
    );
    assert_eq!(fe.grants_issued(), fe.persistent_grants() as u64);
    rig.wait_completed(r.requests);
    assert!(rig.stat(Stat::PersistentGrantHits) > 0);
    // The pool's grants stay granted while connected...
    let g = rig.world.grant_stats(GUEST).unwrap();
    assert!(g.active_grants >= fe.persistent_grants() as u64, "{g:?}");
    // ...and are all ended (the back-end unmapped them) at disconnect.
    disconnect_and_finish(fe, rig);
}

#[test]
fn persistent_negotiated_hostile_grant_reuse() {
    let (rig, mut fe) = Rig::with_frontend("persistent-hostile", "persistent");
    assert!(fe.info().persistent);
    // One grant named twice in one write, and a grant of a request still
    // in flight: the back-end must answer both without corrupting anything
    // else, and still let go of every grant at disconnect.
    let dup = FeatureRequest::from(ManualRequest::write(64, 3, 0x21))
        .segment_grant(2, SegmentGrant::SameAs(0));
    let _ = one(&mut fe, &dup);
    let ids = fe
        .submit_features(&[FeatureRequest::from(ManualRequest::write(128, 2, 0x22))])
        .unwrap();
    let _ = fe.submit_feature(
        &FeatureRequest::from(ManualRequest::write(256, 1, 0x23))
            .segment_grant(0, SegmentGrant::InFlight { id: ids[0], seg: 1 }),
    );
    let _ = fe.wait_responses(2).unwrap();
    // A clean workload afterwards (away from what the requests above
    // wrote: a workload's shadow starts all zero).
    let wl = support::rig::mixed_in((4096, 8192), 100, 16384, 43);
    check_clean(&run_workload(&mut fe, &wl).unwrap());
    disconnect_and_finish(fe, rig);
}

#[test]
fn multiqueue_negotiated_uses_every_queue() {
    let (rig, mut fe) = offering("multiqueue", "multi-queue-max-queues", 4);
    assert_eq!(fe.info().queues, 4);
    assert_eq!(rig.fe_node("multi-queue-num-queues").as_deref(), Some("4"));
    assert_eq!(rig.fe_node("ring-page-order").as_deref(), Some("1"));
    assert!(rig.fe_node("event-channel").is_none());
    assert!(rig.fe_node("ring-ref0").is_none());
    for q in 0..4 {
        assert!(rig.fe_node(&format!("queue-{q}/ring-ref0")).is_some());
        assert!(rig.fe_node(&format!("queue-{q}/ring-ref1")).is_some());
        assert!(rig.fe_node(&format!("queue-{q}/event-channel")).is_some());
    }
    assert_eq!(fe.ports().len(), 4);
    let snap = rig
        .world
        .wait_backend(&rig.vbd, HANG_GUARD, |s| s.host.rings_mapped == 4)
        .expect("four rings mapped");
    assert_eq!(snap.host.ring_pages, 8);
    let r = run_workload(&mut fe, &mixed(400, 16384, 51)).unwrap();
    check_clean(&r);
    assert_eq!(r.requests_per_queue.len(), 4);
    assert!(r.requests_per_queue.iter().all(|&n| n > 0), "{r:?}");
    rig.wait_completed(r.requests);
    let snap = rig.world.backend(&rig.vbd).unwrap();
    assert_eq!(snap.queues.len(), 4, "{snap:?}");
    for (q, st) in snap.queues.iter().enumerate() {
        assert_eq!(
            st.get(Stat::ReqsReceived),
            r.requests_per_queue[q],
            "queue {q}"
        );
    }
    // A manual request on queue 3 is answered on queue 3.
    let (_, st) = one(
        &mut fe,
        &FeatureRequest::from(ManualRequest::write(40, 1, 9)).on_queue(3),
    );
    assert_eq!(st, BLKIF_RSP_OKAY);
    disconnect_and_finish(fe, rig);
}

#[test]
fn discard_negotiated_reaches_the_store() {
    let (rig, mut fe) = Rig::with_frontend("discard", "discard");
    assert!(fe.info().discard, "{:?}", fe.info());
    // Write 2 MiB once, sequentially, with a discard every 16 writes, then
    // read everything back.
    let region = 4096u64;
    let wl = support::rig::sequential_writes(region / 16, 8192, 61, region);
    let r = run_workload(&mut fe, &wl).unwrap();
    assert_eq!(r.mismatches, 0, "{r:?}");
    assert_eq!(r.error_responses, 0, "{r:?}");
    assert!(r.discards > 0 && r.bytes_discarded > 0, "{r:?}");
    // Sectors outside the discarded areas were checked.
    assert!(r.bytes_checked > 0, "{r:?}");
    assert!(r.bytes_checked + r.bytes_discarded >= region * 512, "{r:?}");
    rig.wait_completed(r.requests);
    assert!(rig.stat(Stat::DiscardReqs) >= r.discards);
    // Every byte of the region was written once; the discards punched
    // holes, so less of it is allocated.
    assert!(
        rig.allocated_bytes() < region * 512,
        "allocated {} of {}",
        rig.allocated_bytes(),
        region * 512
    );
    // A manual discard of a written area frees its blocks.
    let w = ManualRequest::write(8192, 8, 0x31);
    assert_eq!(one(&mut fe, &FeatureRequest::from(w)).1, BLKIF_RSP_OKAY);
    let before = rig.allocated_bytes();
    let (_, st) = one(&mut fe, &FeatureRequest::discard(8192, 64, 0));
    assert_eq!(st, BLKIF_RSP_OKAY);
    assert!(rig.allocated_bytes() < before);
    disconnect_and_finish(fe, rig);
}

#[test]
fn modern_negotiates_everything() {
    let (rig, mut fe) = Rig::with_frontend("modern", "modern");
    let info = fe.info().clone();
    assert_eq!(info.max_indirect_segments, 256, "{info:?}");
    assert!(info.persistent, "{info:?}");
    assert_eq!(info.queues, 4, "{info:?}");
    assert!(info.discard, "{info:?}");
    let r = run_workload(&mut fe, &mixed(600, 128 << 10, 71)).unwrap();
    check_clean(&r);
    assert!(r.indirect_requests > 0, "{r:?}");
    assert!(r.discards > 0, "{r:?}");
    assert!(r.requests_per_queue.iter().all(|&n| n > 0), "{r:?}");
    assert!(fe.grants_issued() < segments_moved(&r));
    disconnect_and_finish(fe, rig);
}
