//! End to end: a guest front-end's ring in shared guest memory → the
//! back-end instance on its task thread (real `SimHost` grant mappings) →
//! a real file or device store in a temporary directory → responses, with
//! the data checked byte for byte. Every operation and validation rule of
//! `io/blkif.h` goes through the public path here.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use xbb::abi::{
    BlkifResponse, BLKIF_OP_FLUSH_DISKCACHE, BLKIF_OP_READ, BLKIF_OP_RESERVED_1, BLKIF_OP_WRITE,
    BLKIF_OP_WRITE_BARRIER, BLKIF_RSP_EOPNOTSUPP, BLKIF_RSP_ERROR, BLKIF_RSP_OKAY, VDISK_READONLY,
};
use xbb::connect::ConnectError;
use xbb::host::{GrantError, IoError, XenbusState, XsTxn};
use xbb::stats::{Stat, Tunable};
use xbb_lab::frontend::{
    run_workload, Frontend, FrontendError, ManualRequest, Profile, Workload, WorkloadReport,
};
use xbb_lab::gnttab::MapFault;
use xbb_lab::world::{VbdConfig, World};
use xbb_ustore::{IoFaults, StoreKind};

mod support;

use support::rig::{
    check_clean, wait_one, Rig, TempDir, DISK_BYTES, DISK_SECTORS, GUEST, GUEST_FRAMES, HANG_GUARD,
};

fn mixed(ops: u64, io_size: u32, seed: u64) -> Workload {
    support::rig::mixed(ops, io_size, seed, 4096)
}

fn one(fe: &mut Frontend, req: &ManualRequest) -> (u64, BlkifResponse) {
    let id = fe.submit(req).expect("submit");
    (id, wait_one(fe, id))
}

fn status_of(fe: &mut Frontend, req: &ManualRequest) -> i16 {
    let (_, r) = one(fe, req);
    assert_eq!(r.operation, req.operation, "the operation is echoed");
    r.status
}

// ---------------------------------------------------------------------------
// Data path
// ---------------------------------------------------------------------------

/// Runs a [`mixed`] workload, checks it clean and waits until the
/// back-end counts every request of it completed.
fn mixed_served(rig: &Rig, fe: &mut Frontend, ops: u64, io_size: u32, seed: u64) {
    let r = run_workload(fe, &mixed(ops, io_size, seed)).unwrap();
    check_clean(&r);
    rig.wait_completed(r.requests);
}

/// A rig whose requests are at most 11 pages and whose window holds
/// `kva_pages` pages, and a Linux front-end connected to it.
fn small_window(name: &str, kva_pages: u64) -> (Rig, Frontend) {
    let rig = Rig::new(name, |c| {
        c.tunables.set(Tunable::MaxRequestSize, 11 * 4096).unwrap();
        c.tunables.set(Tunable::KvaPages, kva_pages).unwrap();
    });
    let fe = rig.connected("linux");
    (rig, fe)
}

/// The front-end disconnects; the rig shuts down with nothing left over.
fn disconnect_and_finish(mut fe: Frontend, rig: Rig) {
    fe.disconnect().unwrap();
    rig.finish();
}

#[test]
fn every_profile_round_trips_with_verified_data() {
    for name in Profile::NAMES {
        let (rig, mut fe) = Rig::with_frontend(name, name);
        let p = Profile::by_name(name).unwrap();
        assert_eq!(fe.info().ring_pages, 1 << p.ring_page_order, "{name}");
        assert_eq!(fe.info().sectors, DISK_SECTORS, "{name}");
        assert_eq!(fe.info().sector_size, 512, "{name}");
        let r = run_workload(&mut fe, &mixed(300, 8192, 7)).expect(name);
        check_clean(&r);
        rig.wait_completed(r.requests);
        assert_eq!(
            rig.stat(Stat::RingOrder),
            u64::from(p.ring_page_order),
            "{name}"
        );
        assert_eq!(rig.stat(Stat::RingPages), 1 << p.ring_page_order, "{name}");
        assert_eq!(rig.stat(Stat::ReqsReceived), r.requests, "{name}");
        assert_eq!(rig.stat(Stat::ReqsCompletedWithError), 0, "{name}");
        fe.disconnect().expect("disconnect");
        rig.finish();
    }
}

#[test]
fn manual_write_then_read_back_both_abis() {
    for name in ["linux", "x86_32"] {
        let (rig, mut fe) = Rig::with_frontend(name, name);
        let w = ManualRequest::write(80, 3, 0xC7);
        assert_eq!(status_of(&mut fe, &w), BLKIF_RSP_OKAY);
        let (id, rsp) = one(&mut fe, &ManualRequest::read(80, 3));
        assert_eq!(rsp.status, BLKIF_RSP_OKAY);
        assert_eq!(fe.page_data(id), vec![0xC7; 3 * 4096], "{name}");
        assert_eq!(rig.file_bytes(80 * 512, 3 * 4096), vec![0xC7; 3 * 4096]);
        // Partial segments: sectors 2..=5 of a page land at sector 200.
        let w = ManualRequest {
            operation: BLKIF_OP_WRITE,
            sector: 200,
            segs: vec![(2, 5)],
            fill: Some(0x3C),
            ..ManualRequest::default()
        };
        assert_eq!(status_of(&mut fe, &w), BLKIF_RSP_OKAY);
        assert_eq!(rig.file_bytes(200 * 512, 4 * 512), vec![0x3C; 4 * 512]);
        assert_eq!(rig.file_bytes(204 * 512, 512), vec![0; 512]);
        fe.disconnect().unwrap();
        rig.finish();
    }
}

#[test]
fn legacy_num_ring_pages_key() {
    let rig = Rig::new("numpages", |_| {});
    let profile = Profile {
        ring_page_order: 3,
        legacy_num_ring_pages: true,
        ..Profile::by_name("linux").unwrap()
    };
    let mut fe = rig.frontend(profile);
    fe.connect().unwrap();
    let xs = &rig.world.xen().xenstore;
    let fe_dir = rig.vbd.frontend_path();
    assert_eq!(
        xs.read_str(&format!("{fe_dir}/num-ring-pages")).unwrap(),
        "8"
    );
    assert!(!xs.exists(&format!("{fe_dir}/ring-page-order")));
    check_clean(&run_workload(&mut fe, &mixed(200, 4096, 3)).unwrap());
    assert_eq!(rig.stat(Stat::RingPages), 8);
    assert_eq!(rig.stat(Stat::RingOrder), 3);
    disconnect_and_finish(fe, rig);
}

#[test]
fn ring_orders_zero_and_five() {
    for (name, order) in [("legacy", 0u64), ("multipage", 5)] {
        let (rig, mut fe) = Rig::with_frontend(name, name);
        let r = run_workload(&mut fe, &mixed(400, 4096, order + 1)).unwrap();
        check_clean(&r);
        assert_eq!(rig.stat(Stat::RingOrder), order);
        assert!(fe.info().ring_size > 0);
        fe.disconnect().unwrap();
        rig.finish();
    }
}

#[test]
fn front_end_that_skips_initialised() {
    let (rig, mut fe) = Rig::with_frontend("skipper", "skipper");
    check_clean(&run_workload(&mut fe, &mixed(100, 4096, 9)).unwrap());
    disconnect_and_finish(fe, rig);
}

fn sequential_legacy(rig: &Rig) -> WorkloadReport {
    let mut fe = rig.connected("legacy");
    let wl = support::rig::sequential_writes(16, 1 << 20, 5, DISK_SECTORS);
    let r = run_workload(&mut fe, &wl).unwrap();
    assert_eq!(r.mismatches, 0, "{r:?}");
    assert_eq!(r.error_responses, 0, "{r:?}");
    assert!(r.bytes_checked >= DISK_BYTES, "{r:?}");
    rig.wait_completed(r.requests);
    fe.disconnect().unwrap();
    r
}

#[test]
fn sequential_legacy_requests_are_coalesced() {
    let rig = Rig::new("coalesce", |_| {});
    let r = sequential_legacy(&rig);
    let received = rig.stat(Stat::ReqsReceived);
    let dispatched = rig.stat(Stat::TotalDispatch);
    let coalesced = rig.stat(Stat::ReqsCoalesced);
    assert_eq!(received, r.requests);
    assert!(coalesced > 0, "no coalescing: {received} received");
    assert_eq!(dispatched + coalesced, received);
    rig.finish();
}

#[test]
fn no_coalesce_reqs_turns_coalescing_off() {
    let rig = Rig::new("nocoalesce", |c| {
        c.tunables.set(Tunable::NoCoalesceReqs, 1).unwrap();
    });
    let r = sequential_legacy(&rig);
    assert_eq!(rig.stat(Stat::NoCoalesceReqs), 1);
    assert_eq!(rig.stat(Stat::ReqsCoalesced), 0);
    assert_eq!(rig.stat(Stat::TotalDispatch), r.requests);
    rig.finish();
}

#[test]
fn flush_and_barrier_succeed_and_data_is_durable() {
    let (rig, mut fe) = Rig::with_frontend("flush", "flusher");
    assert!(fe.info().flush && fe.info().barrier);
    let r = run_workload(&mut fe, &mixed(200, 4096, 11)).unwrap();
    check_clean(&r);
    assert!(r.flushes > 0, "{r:?}");
    rig.wait_completed(r.requests);
    assert_eq!(rig.stat(Stat::FlushReqs), r.flushes);

    // Data-less flush after a write.
    assert_eq!(
        status_of(&mut fe, &ManualRequest::write(100, 2, 0x5A)),
        BLKIF_RSP_OKAY
    );
    let flush = ManualRequest {
        operation: BLKIF_OP_FLUSH_DISKCACHE,
        ..ManualRequest::default()
    };
    assert_eq!(status_of(&mut fe, &flush), BLKIF_RSP_OKAY);
    assert_eq!(rig.file_bytes(100 * 512, 8192), vec![0x5A; 8192]);
    // A barrier and a flush carrying data.
    for (op, sector, byte) in [
        (BLKIF_OP_WRITE_BARRIER, 300u64, 0x77u8),
        (BLKIF_OP_FLUSH_DISKCACHE, 400, 0x78),
    ] {
        let req = ManualRequest {
            operation: op,
            ..ManualRequest::write(sector, 2, byte)
        };
        assert_eq!(status_of(&mut fe, &req), BLKIF_RSP_OKAY, "op {op}");
        assert_eq!(rig.file_bytes(sector * 512, 8192), vec![byte; 8192]);
    }
    disconnect_and_finish(fe, rig);
}

#[test]
fn four_k_sector_medium() {
    let rig = Rig::new("4k", |c| c.store.sector_size = 4096);
    let mut fe = rig.connected("linux");
    assert_eq!(fe.info().sector_size, 4096);
    assert_eq!(fe.info().sectors, DISK_SECTORS);
    check_clean(&run_workload(&mut fe, &mixed(200, 8192, 13)).unwrap());
    // Misaligned: start sector, partial first segment, partial last.
    for req in [
        ManualRequest::read(1, 1),
        ManualRequest::write(4, 1, 1),
        ManualRequest {
            segs: vec![(0, 3)],
            ..ManualRequest::read(8, 1)
        },
        ManualRequest {
            segs: vec![(1, 7)],
            ..ManualRequest::write(16, 1, 1)
        },
    ] {
        assert_eq!(status_of(&mut fe, &req), BLKIF_RSP_ERROR, "{req:?}");
    }
    assert_eq!(
        status_of(&mut fe, &ManualRequest::read(8, 2)),
        BLKIF_RSP_OKAY
    );
    disconnect_and_finish(fe, rig);
}

#[test]
fn device_store_kind() {
    let rig = Rig::new("device", |c| c.kind = StoreKind::Device);
    let mut fe = rig.connected("linux");
    // The front-end sees Connected in XenStore before the task thread has
    // published the snapshot of the event that wrote it: wait for it.
    let snap = rig
        .world
        .wait_backend(&rig.vbd, HANG_GUARD, |s| s.state == XenbusState::Connected)
        .unwrap();
    assert!(snap.medium.is_some_and(|m| m.is_device), "{snap:?}");
    check_clean(&run_workload(&mut fe, &mixed(200, 16384, 17)).unwrap());
    disconnect_and_finish(fe, rig);
}

// ---------------------------------------------------------------------------
// Validation
// ---------------------------------------------------------------------------

#[test]
fn every_validation_rule_gives_the_right_status() {
    let (rig, mut fe) = Rig::with_frontend("validate", "linux");
    let sectors = fe.info().sectors;
    let rd = |sector, segs: Vec<(u8, u8)>| ManualRequest {
        operation: BLKIF_OP_READ,
        sector,
        segs,
        ..ManualRequest::default()
    };
    let wr = |sector, segs: Vec<(u8, u8)>| ManualRequest {
        operation: BLKIF_OP_WRITE,
        sector,
        segs,
        fill: Some(0xEE),
        ..ManualRequest::default()
    };
    let cases: Vec<(&str, ManualRequest, i16)> = vec![
        (
            "reserved op",
            ManualRequest {
                operation: BLKIF_OP_RESERVED_1,
                ..wr(0, vec![(0, 7)])
            },
            BLKIF_RSP_EOPNOTSUPP,
        ),
        (
            "unknown op 200",
            ManualRequest {
                operation: 200,
                ..wr(0, vec![(0, 7)])
            },
            BLKIF_RSP_EOPNOTSUPP,
        ),
        // Discard and indirect requests are offered now: their refusal
        // paths are in tests/instance_features.rs and the scenario files.
        ("0 segments", wr(0, vec![]), BLKIF_RSP_ERROR),
        ("0 segments read", rd(0, vec![]), BLKIF_RSP_ERROR),
        (
            "12 segments",
            ManualRequest {
                nr_segments_override: Some(12),
                ..wr(0, vec![(0, 7); 11])
            },
            BLKIF_RSP_ERROR,
        ),
        ("first > last", wr(0, vec![(5, 3)]), BLKIF_RSP_ERROR),
        ("last = 8", wr(0, vec![(0, 8)]), BLKIF_RSP_ERROR),
        (
            "last = 8 read",
            rd(0, vec![(0, 7), (0, 8)]),
            BLKIF_RSP_ERROR,
        ),
        (
            "beyond the end",
            wr(sectors - 7, vec![(0, 7)]),
            BLKIF_RSP_ERROR,
        ),
        (
            "starts at the end",
            rd(sectors, vec![(0, 0)]),
            BLKIF_RSP_ERROR,
        ),
        (
            "sector overflow",
            wr(u64::MAX - 3, vec![(0, 7)]),
            BLKIF_RSP_ERROR,
        ),
        (
            "sector u64::MAX",
            rd(u64::MAX, vec![(0, 0)]),
            BLKIF_RSP_ERROR,
        ),
    ];
    for (what, req, want) in &cases {
        assert_eq!(status_of(&mut fe, req), *want, "{what}");
    }
    rig.wait_completed(cases.len() as u64);
    assert_eq!(rig.stat(Stat::ReqsRefused), cases.len() as u64);
    assert_eq!(rig.stat(Stat::TotalDispatch), 0);
    assert!(rig.file_is_zero(), "a refused request reached the store");

    // The last sectors of the medium are fine; and 11 segments are.
    assert_eq!(
        status_of(&mut fe, &rd(sectors - 8, vec![(0, 7)])),
        BLKIF_RSP_OKAY
    );
    assert_eq!(status_of(&mut fe, &wr(0, vec![(0, 7); 11])), BLKIF_RSP_OKAY);
    disconnect_and_finish(fe, rig);
}

#[test]
fn write_to_read_only_disk_is_refused() {
    let rig = Rig::new("ro", |c| c.mode = "r".into());
    let mut fe = rig.connected("linux");
    assert_ne!(fe.info().info & VDISK_READONLY, 0);
    assert_eq!(
        status_of(&mut fe, &ManualRequest::write(0, 1, 0x11)),
        BLKIF_RSP_ERROR
    );
    let barrier = ManualRequest {
        operation: BLKIF_OP_WRITE_BARRIER,
        ..ManualRequest::write(8, 1, 0x11)
    };
    let s = status_of(&mut fe, &barrier);
    assert!(s == BLKIF_RSP_ERROR || s == BLKIF_RSP_EOPNOTSUPP, "{s}");
    assert_eq!(
        status_of(&mut fe, &ManualRequest::read(0, 1)),
        BLKIF_RSP_OKAY
    );
    assert!(rig.file_is_zero());
    disconnect_and_finish(fe, rig);
}

/// Issue 13, finding 3: the lab's front-end is as wary of its back-end as
/// xbb is of guests. With the real back-end out of the way (it declared
/// the ring broken and answers nothing more), the test plays a broken
/// back-end on the ring: `rsp_prod` moved backwards (about 2^32
/// responses: the front-end once looped on that until it had 21 GB),
/// beyond the requests made visible, beyond the ring, a response to an id
/// never issued, one to an id already answered. Each is reported as a
/// broken back-end at once; nothing loops, nothing is taken.
#[test]
fn the_front_end_refuses_a_broken_back_end() {
    use xbb::abi::{SRING_HEADER_SIZE, SRING_RSP_PROD};
    // (what the broken back-end does, rsp_prod, a response it writes)
    let cases: [(&str, u32, Option<u64>); 5] = [
        ("backwards", 1, None),
        ("beyond the requests made visible", 4, None),
        ("beyond the ring", 3 + 33, None),
        ("an id never issued", 3, Some(12345)),
        ("an id already answered", 3, Some(1)),
    ];
    for (what, rsp_prod, forged) in cases {
        let (rig, mut fe) = Rig::with_frontend("brokenbe", "legacy");
        let size = fe.info().ring_size;
        assert_eq!(size, 32);
        let (first, _) = one(&mut fe, &ManualRequest::read(0, 1));
        assert_eq!(first, 1);
        one(&mut fe, &ManualRequest::read(8, 1));
        // One more request made visible, no kick; then a producer the
        // back-end refuses: it closes and never touches the ring again.
        let abi = fe.profile().abi;
        let mut slot = vec![0u8; abi.request_size()];
        let req = xbb::abi::BlkifRequest::rw(BLKIF_OP_READ, 777, 16, &[]);
        abi.encode_request(&req, &mut slot);
        fe.write_raw_slot_at(2, &slot);
        fe.set_req_prod_raw(3);
        fe.set_req_prod_raw(3 + size + 5);
        fe.kick();
        rig.wait_state(XenbusState::Closing);
        // The broken back-end writes.
        let gfn = fe.ring_frames(0)[0];
        let mem = &fe.guest().memory;
        if let Some(id) = forged {
            let rsp = BlkifResponse {
                id,
                operation: BLKIF_OP_READ,
                status: BLKIF_RSP_OKAY,
            };
            let mut b = vec![0u8; abi.response_size()];
            abi.encode_response(&rsp, &mut b);
            mem.write(gfn, SRING_HEADER_SIZE + 2 * abi.entry_size(), &b)
                .unwrap();
        }
        mem.write(gfn, SRING_RSP_PROD, &rsp_prod.to_le_bytes())
            .unwrap();
        let started = std::time::Instant::now();
        match fe.poll_responses(Duration::from_millis(50)) {
            Err(FrontendError::BrokenBackend(e)) => eprintln!("{what}: {e}"),
            other => panic!("{what}: {other:?}"),
        }
        assert!(
            started.elapsed() < HANG_GUARD,
            "{what}: took {:?}",
            started.elapsed()
        );
        fe.disconnect().unwrap();
        rig.finish();
    }
}

#[test]
fn impossible_req_prod_closes_the_connection_and_serves_nothing() {
    let (rig, mut fe) = Rig::with_frontend("reqprod", "legacy");
    let size = fe.info().ring_size;
    // Valid-looking write slots, then a producer far beyond the ring.
    let abi = fe.profile().abi;
    let mut slot = vec![0u8; abi.request_size()];
    for i in 0..size {
        let req = xbb::abi::BlkifRequest {
            operation: BLKIF_OP_WRITE,
            id: u64::from(i),
            body: xbb::abi::RequestBody::Rw {
                nr_segments: 1,
                handle: 0,
                sector_number: u64::from(i) * 8,
                seg: [xbb::abi::Segment {
                    gref: 8,
                    first_sect: 0,
                    last_sect: 7,
                }; 11],
            },
        };
        abi.encode_request(&req, &mut slot);
        fe.write_raw_slot_at(i, &slot);
    }
    fe.set_req_prod_raw(size + 5);
    fe.kick();
    rig.wait_state(XenbusState::Closing);
    assert_eq!(
        rig.world.backend_last_error(&rig.vbd),
        Some(ConnectError::Ring)
    );
    let err = fe.backend_error();
    assert!(err.as_deref().is_some_and(|e| !e.is_empty()), "{err:?}");
    let snap = rig.world.backend(&rig.vbd).unwrap();
    assert_eq!(snap.host.ios_submitted, 0, "{snap:?}");
    assert!(
        fe.poll_responses(Duration::from_millis(50))
            .unwrap()
            .is_empty(),
        "a broken ring gets no responses"
    );
    assert!(rig.file_is_zero());
    disconnect_and_finish(fe, rig);
}

#[test]
fn bad_xenstore_values_are_refused_with_an_error_node() {
    let cases: [(&str, Option<&str>, ConnectError); 6] = [
        (
            "ring-page-order",
            Some("6"),
            ConnectError::OutOfRange {
                key: "ring-page-order",
                value: 6,
            },
        ),
        (
            "ring-page-order",
            Some("4294967295"),
            ConnectError::OutOfRange {
                key: "ring-page-order",
                value: 4294967295,
            },
        ),
        (
            "ring-ref",
            Some("abc"),
            ConnectError::NotANumber { key: "ring-ref" },
        ),
        (
            "event-channel",
            None,
            ConnectError::Missing {
                key: "event-channel",
            },
        ),
        ("protocol", Some("sparc-abi"), ConnectError::UnknownProtocol),
        (
            "num-ring-pages",
            Some("3"),
            ConnectError::OutOfRange {
                key: "num-ring-pages",
                value: 3,
            },
        ),
    ];
    for (key, value, want) in cases {
        let rig = Rig::new("badxs", |_| {});
        let mut fe = rig.frontend(Profile::by_name("legacy").unwrap());
        fe.set_xenstore_override(key, value);
        match fe.connect() {
            Err(FrontendError::Refused { state, error }) => {
                assert_eq!(state, XenbusState::Closing, "{key}={value:?}");
                assert!(
                    error.as_deref().is_some_and(|e| !e.is_empty()),
                    "{key}={value:?}: no error node"
                );
            }
            other => panic!("{key}={value:?}: {other:?}"),
        }
        // The snapshot may lag the XenStore state by one event.
        rig.wait_state(XenbusState::Closing);
        assert_eq!(
            rig.world.backend_last_error(&rig.vbd),
            Some(want),
            "{key}={value:?}"
        );
        let snap = rig.world.backend(&rig.vbd).unwrap();
        assert!(!snap.finished && snap.error.is_none(), "{snap:?}");
        assert_eq!(snap.host.ring_pages, 0, "{snap:?}");
        fe.disconnect().unwrap();
        rig.finish();
    }
}

/// Issue 13, finding 1: a multi-queue front-end whose queue 1 names queue
/// 0's ring pages (or its event channel) is refused with an error node
/// saying so, before any ring is mapped; before the fix both queues served
/// the one ring and every request ran twice.
#[test]
fn queues_sharing_a_ring_or_a_channel_are_refused() {
    let cases: [(&[(&str, &str)], &str); 2] = [
        (
            &[
                ("queue-1/ring-ref0", "queue-0/ring-ref0"),
                ("queue-1/ring-ref1", "queue-0/ring-ref1"),
            ],
            "queue/ring-ref0",
        ),
        (
            &[("queue-1/event-channel", "queue-0/event-channel")],
            "queue/event-channel",
        ),
    ];
    for (same, key) in cases {
        let rig = Rig::new("sharedring", |_| {});
        let mut fe = rig.frontend(Profile::by_name("multiqueue").unwrap());
        for (k, other) in same {
            fe.set_xenstore_same_as(k, other);
        }
        match fe.connect() {
            Err(FrontendError::Refused { state, error }) => {
                assert_eq!(state, XenbusState::Closing, "{key}");
                let e = error.unwrap_or_default();
                assert!(
                    e.starts_with("22 ") && e.contains(key) && e.contains("named twice"),
                    "{key}: error node {e:?}"
                );
            }
            other => panic!("{key}: {other:?}"),
        }
        rig.wait_state(XenbusState::Closing);
        assert!(matches!(
            rig.world.backend_last_error(&rig.vbd),
            Some(ConnectError::Duplicate { .. })
        ));
        assert_eq!(rig.world.backend(&rig.vbd).unwrap().host.ring_pages, 0);
        // Undone, the same front-end connects with four rings of its own.
        assert!(fe.clear_xenstore_overrides() > 0);
        fe.disconnect().unwrap();
        let info = fe.connect().unwrap();
        assert_eq!(info.queues, 4);
        check_clean(&run_workload(&mut fe, &mixed(64, 4096, 5)).unwrap());
        fe.disconnect().unwrap();
        rig.finish();
    }
}

// ---------------------------------------------------------------------------
// Faults and shortages
// ---------------------------------------------------------------------------

#[test]
fn injected_io_error_fails_the_whole_coalesced_io_only() {
    let faults = Arc::new(IoFaults::new());
    let f2 = Arc::clone(&faults);
    let rig = Rig::new("ioerr", move |c| c.store.faults = Some(f2));
    let mut fe = rig.connected("legacy");
    // Sectors 64..72 fail; three back-to-back writes of 8 pages covering
    // 0..192 form one I/O, a fourth elsewhere is its own.
    faults.fail_range(64 * 512, 72 * 512, IoError::Io);
    let reqs = [
        ManualRequest::write(0, 8, 0xA1),
        ManualRequest::write(64, 8, 0xA2),
        ManualRequest::write(128, 8, 0xA3),
        ManualRequest::write(4096, 8, 0xA4),
    ];
    let ids = fe.submit_many(&reqs).unwrap();
    let rsps = fe.wait_responses(4).unwrap();
    let status = |id| rsps.iter().find(|r| r.id == id).unwrap().status;
    rig.wait_completed(4);
    let coalesced = rig.stat(Stat::ReqsCoalesced);
    assert_eq!(coalesced, 2, "the three contiguous writes form one I/O");
    for &id in &ids[..3] {
        assert_eq!(status(id), BLKIF_RSP_ERROR, "{rsps:?}");
    }
    assert_eq!(status(ids[3]), BLKIF_RSP_OKAY, "{rsps:?}");
    assert_eq!(rig.file_bytes(4096 * 512, 4096), vec![0xA4; 4096]);
    assert_eq!(rig.stat(Stat::ReqsCompletedWithError), 3);

    // One-shot fault on the next data I/O.
    faults.clear();
    faults.fail_nth(1, IoError::Io);
    assert_eq!(
        status_of(&mut fe, &ManualRequest::read(0, 1)),
        BLKIF_RSP_ERROR
    );
    assert_eq!(
        status_of(&mut fe, &ManualRequest::read(0, 1)),
        BLKIF_RSP_OKAY
    );
    assert!(faults.counters().total() >= 2);
    disconnect_and_finish(fe, rig);
}

#[test]
fn grant_map_failures_give_errors() {
    let (rig, mut fe) = Rig::with_frontend("mapfail", "linux");
    let grants = rig.world.guest(GUEST).unwrap().grants;
    grants.inject_map_failures(MapFault::Next {
        count: 1,
        error: GrantError::General,
    });
    assert_eq!(
        status_of(&mut fe, &ManualRequest::write(0, 4, 0x42)),
        BLKIF_RSP_ERROR
    );
    assert!(
        rig.file_is_zero(),
        "a write whose grants failed reached the store"
    );
    assert_eq!(
        status_of(&mut fe, &ManualRequest::write(0, 4, 0x42)),
        BLKIF_RSP_OKAY
    );
    // A read into read-only grants: the back-end cannot map them writable.
    let ro = ManualRequest {
        readonly_grants: true,
        ..ManualRequest::read(0, 2)
    };
    assert_eq!(status_of(&mut fe, &ro), BLKIF_RSP_ERROR);
    rig.wait_completed(3);
    assert!(rig.stat(Stat::GrantMapFailures) >= 2);
    // The workload's shadow starts from zeros: stay clear of sector 0.
    let wl = support::rig::mixed_in((8192, 4096), 100, 4096, 19);
    check_clean(&run_workload(&mut fe, &wl).unwrap());
    disconnect_and_finish(fe, rig);
}

#[test]
fn request_pool_shortage_still_verifies() {
    let rig = Rig::new("reqshort", |c| {
        c.tunables.set(Tunable::MaxRequests, 4).unwrap();
    });
    let mut fe = rig.connected("linux"); // queue depth 32
    mixed_served(&rig, &mut fe, 400, 4096, 23);
    assert_eq!(rig.stat(Stat::MaxRequests), 4);
    assert!(rig.stat(Stat::RequestShortages) > 0);
    disconnect_and_finish(fe, rig);
}

#[test]
fn kva_shortage_still_verifies() {
    let (rig, mut fe) = small_window("kvashort", 22);
    mixed_served(&rig, &mut fe, 300, 11 * 4096, 29);
    assert!(rig.stat(Stat::KvaShortages) > 0);
    disconnect_and_finish(fe, rig);
}

/// Three non-contiguous 11-page writes pushed at once into an 11-page
/// window: the first takes the whole window, the second stalls for room,
/// and the third, still the open reqlist when the pass ends, must wait its
/// turn as well. Every request must be answered.
#[test]
fn kva_stall_with_an_open_reqlist_loses_no_request() {
    let (rig, mut fe) = small_window("kvastall", 11);
    fe.set_hang_guard(Duration::from_secs(5));
    let reqs = [
        ManualRequest::write(0, 11, 0xB1),
        ManualRequest::write(1000, 11, 0xB2),
        ManualRequest::write(2000, 11, 0xB3),
    ];
    let ids = fe.submit_many(&reqs).unwrap();
    let rsps = fe.wait_responses(3).expect("every request is answered");
    for id in ids {
        let r = rsps.iter().find(|r| r.id == id).expect("answered");
        assert_eq!(r.status, BLKIF_RSP_OKAY, "{rsps:?}");
    }
    for (sector, byte) in [(0u64, 0xB1u8), (1000, 0xB2), (2000, 0xB3)] {
        assert_eq!(
            rig.file_bytes(sector * 512, 11 * 4096),
            vec![byte; 11 * 4096]
        );
    }
    assert!(rig.stat(Stat::KvaShortages) > 0);
    disconnect_and_finish(fe, rig);
}

// ---------------------------------------------------------------------------
// Life cycle
// ---------------------------------------------------------------------------

#[test]
fn nothing_opens_before_the_root_is_mounted() {
    let rig = Rig::build(World::with_root_unmounted(), "noroot", |_| {});
    rig.wait_state(XenbusState::Initialising);
    let mut fe = rig.frontend(Profile::by_name("linux").unwrap());
    fe.set_hang_guard(Duration::from_millis(300));
    assert!(matches!(fe.connect(), Err(FrontendError::Timeout { .. })));
    let snap = rig.world.backend(&rig.vbd).unwrap();
    assert_eq!(snap.state, XenbusState::Initialising, "{snap:?}");
    assert!(!snap.host.store_open && snap.medium.is_none(), "{snap:?}");
    assert!(!rig
        .world
        .xen()
        .xenstore
        .exists(&format!("{}/sectors", rig.vbd.backend_path())));

    rig.world.set_root_mounted(true).unwrap();
    fe.set_hang_guard(HANG_GUARD);
    fe.connect().expect("connects once the root is mounted");
    check_clean(&run_workload(&mut fe, &mixed(100, 4096, 31)).unwrap());
    disconnect_and_finish(fe, rig);
}

#[test]
fn disconnect_unmaps_everything_and_an_online_vbd_reconnects() {
    let (rig, mut fe) = Rig::with_frontend("reconnect", "linux");
    check_clean(&run_workload(&mut fe, &mixed(100, 4096, 37)).unwrap());
    assert_eq!(
        status_of(&mut fe, &ManualRequest::write(5000, 2, 0xD4)),
        BLKIF_RSP_OKAY
    );
    fe.disconnect().unwrap();
    rig.wait_state(XenbusState::Closed);
    let snap = rig.world.backend(&rig.vbd).unwrap();
    assert_eq!(snap.host.window_mapped, 0, "{snap:?}");
    assert_eq!(snap.host.ring_pages, 0, "{snap:?}");
    assert_eq!(snap.host.window_pages, 0, "{snap:?}");
    assert!(snap.host.store_open, "an online vbd keeps its store");
    let g = rig.world.grant_stats(GUEST).unwrap();
    assert_eq!((g.mapped, g.active_grants), (0, 0), "{g:?}");
    assert_eq!(g.maps, g.unmaps, "{g:?}");
    drop(fe);

    // A new front-end (another profile) finds the data.
    let mut fe = rig.connected("multipage");
    let (id, rsp) = one(&mut fe, &ManualRequest::read(5000, 2));
    assert_eq!(rsp.status, BLKIF_RSP_OKAY);
    assert_eq!(fe.page_data(id), vec![0xD4; 8192]);
    let wl = support::rig::mixed_in((8192, 4096), 100, 4096, 41);
    check_clean(&run_workload(&mut fe, &wl).unwrap());
    disconnect_and_finish(fe, rig);
}

#[test]
fn repeated_reconnects_with_io_in_flight_lose_nothing_and_leak_nothing() {
    let rig = Rig::new("cycles", |_| {});
    let profiles = [
        "modern",
        "linux",
        "persistent",
        "multiqueue",
        "indirect",
        "legacy",
    ];
    // (sector, pages, byte) of every write acknowledged so far.
    let mut acked: Vec<(u64, usize, u8)> = Vec::new();
    // Writes left in flight at a disconnect: either all there or not at all.
    let mut in_flight: Vec<(u64, usize, u8)> = Vec::new();
    for (cycle, profile) in profiles.iter().enumerate() {
        let mut fe = rig.connected(profile);
        for &(sector, pages, byte) in &acked {
            let (id, rsp) = one(&mut fe, &ManualRequest::read(sector, pages));
            assert_eq!(rsp.status, BLKIF_RSP_OKAY);
            assert_eq!(fe.page_data(id), vec![byte; pages * 4096], "cycle {cycle}");
        }
        for &(sector, pages, byte) in &in_flight {
            let (id, rsp) = one(&mut fe, &ManualRequest::read(sector, pages));
            assert_eq!(rsp.status, BLKIF_RSP_OKAY);
            let got = fe.page_data(id);
            // Whole: this write, or an earlier one (or nothing), never a mix.
            assert!(
                got.iter().all(|&b| b == got[0])
                    && (got[0] == 0 || (0x80..=byte).contains(&got[0])),
                "cycle {cycle}: a write in flight at disconnect landed partly"
            );
        }
        in_flight.clear();
        // One acknowledged marker per cycle.
        let marker = (4096 + 64 * cycle as u64, 3, 0x40 + cycle as u8);
        assert_eq!(
            status_of(&mut fe, &ManualRequest::write(marker.0, marker.1, marker.2)),
            BLKIF_RSP_OKAY
        );
        acked.push(marker);
        // A batch left in flight: pushed and kicked, then straight to Closing.
        let batch: Vec<ManualRequest> = (0..16u64)
            .map(|k| ManualRequest::write(12288 + 64 * k, 4, 0x80 + cycle as u8))
            .collect();
        fe.submit_many(&batch).expect("submit");
        in_flight.extend((0..16u64).map(|k| (12288 + 64 * k, 4, 0x80 + cycle as u8)));
        fe.disconnect().unwrap();
        rig.wait_state(XenbusState::Closed);
        let snap = rig.world.backend(&rig.vbd).unwrap();
        let st = snap.stats.as_ref().expect("stats");
        assert_eq!(
            st.get(Stat::ReqsReceived),
            st.get(Stat::ReqsQueuedForCompletion),
            "cycle {cycle}: every request the back-end took was answered"
        );
        let h = snap.host;
        assert_eq!(
            (
                h.window_mapped,
                h.window_pages,
                h.ring_pages,
                h.rings_mapped
            ),
            (0, 0, 0, 0),
            "cycle {cycle}: {h:?}"
        );
        assert_eq!(h.evtchn_port, None, "cycle {cycle}");
        assert_eq!(h.io_in_flight, 0, "cycle {cycle}");
        assert!(h.store_open, "an online vbd keeps its store");
        let g = rig.world.grant_stats(GUEST).unwrap();
        assert_eq!((g.mapped, g.active_grants), (0, 0), "cycle {cycle}: {g:?}");
        assert_eq!(g.maps, g.unmaps, "cycle {cycle}: {g:?}");
    }
    rig.finish();
}

#[test]
fn an_offline_vbd_closes_its_store_when_the_front_end_leaves() {
    let rig = Rig::new("offline", |c| c.online = false);
    let mut fe = rig.connected("legacy");
    assert_eq!(
        status_of(&mut fe, &ManualRequest::write(0, 1, 0x01)),
        BLKIF_RSP_OKAY
    );
    fe.disconnect().unwrap();
    let snap = rig
        .world
        .wait_backend(&rig.vbd, HANG_GUARD, |s| !s.host.store_open)
        .expect("store closed");
    assert_eq!(snap.state, XenbusState::Closed);
    rig.finish();
}

/// A back-end watches its own directory, and xenstored fires a watch on
/// every write, even of an unchanged value. Re-writing `state` from the
/// watch handler once closed spun forever in the real Xen host (thousands
/// of watch events a second) and starved libxl's hotplug scripts; only
/// transitions may be written.
#[test]
fn a_closed_back_end_does_not_rewrite_its_state_from_its_own_watch() {
    for online in [false, true] {
        let rig = Rig::new("quiet", |c| c.online = online);
        let mut fe = rig.connected("legacy");
        fe.disconnect().unwrap();
        rig.wait_state(XenbusState::Closed);
        // The toolstack writes into the directory (xl: `online`, hotplug).
        let node = format!("{}/hotplug-status", rig.vbd.backend_path());
        rig.world
            .xen()
            .xenstore
            .write_in(XsTxn::NONE, &node, b"connected")
            .unwrap();
        std::thread::sleep(std::time::Duration::from_millis(100));
        let before = rig.world.backend(&rig.vbd).expect("backend").events;
        std::thread::sleep(std::time::Duration::from_millis(300));
        let after = rig.world.backend(&rig.vbd).expect("backend").events;
        assert!(
            after - before <= 2,
            "online={online}: {} events while nothing happened",
            after - before
        );
        assert_eq!(rig.be_node("state").as_deref(), Some("6"));
        rig.finish();
    }
}

#[test]
fn destroy_vbd_detaches_and_removes_the_directories() {
    let (rig, mut fe) = Rig::with_frontend("destroy", "linux");
    check_clean(&run_workload(&mut fe, &mixed(50, 4096, 43)).unwrap());
    fe.disconnect().unwrap();
    let snap = rig.world.destroy_vbd(&rig.vbd).expect("existed");
    assert!(
        snap.detached && snap.finished && snap.error.is_none(),
        "{snap:?}"
    );
    assert!(!snap.host.store_open);
    let xs = &rig.world.xen().xenstore;
    assert!(!xs.exists(rig.vbd.backend_path()));
    assert!(!xs.exists(rig.vbd.frontend_path()));
    assert!(rig.world.backend(&rig.vbd).is_none());
    rig.finish();
}

#[test]
fn two_guests_share_one_world() {
    let dir = TempDir::new("two");
    let world = World::new();
    let mut fes = Vec::new();
    for dom in [3u16, 4] {
        world.add_guest(dom, GUEST_FRAMES).unwrap();
        let img = dir.image(&format!("d{dom}.img"), DISK_BYTES);
        let vbd = world.create_vbd(&VbdConfig::file(dom, &img)).unwrap();
        let mut fe = Frontend::new(&world, &vbd, Profile::by_name("linux").unwrap()).unwrap();
        fe.connect().unwrap();
        fes.push((fe, img));
    }
    let handles: Vec<_> = fes
        .into_iter()
        .enumerate()
        .map(|(i, (mut fe, _img))| {
            std::thread::spawn(move || {
                let r = run_workload(&mut fe, &mixed(200, 8192, 100 + i as u64)).unwrap();
                fe.disconnect().unwrap();
                r
            })
        })
        .collect();
    for h in handles {
        check_clean(&h.join().unwrap());
    }
    for s in world.shutdown() {
        assert!(s.error.is_none(), "{s:?}");
    }
    let _ = Path::new(&dir.0);
}
