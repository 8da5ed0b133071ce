//! Runs the fuzz bodies of `xbb_testing::fuzz` (the same ones the cargo-fuzz
//! targets in `fuzz/` run) over a deterministic set of inputs, so every
//! `cargo test` exercises them: a few thousand inputs from a xorshift
//! generator per body, plus hand-written seeds for each hostile case.
//!
//! The bodies assert their own invariants; a test here fails when one of
//! them panics. The seeds also assert what they reached (responses,
//! connections, I/Os), so a seed that stops exercising its case fails.
//! With `XBB_FUZZ_CORPUS=DIR` every seed is also written to
//! `DIR/<target>/`, the cargo-fuzz corpus `tests/fuzz-smoke.sh` starts
//! from.

use xbb::abi::{encode_segment, Segment, SEGMENT_SIZE};
use xbb_testing::alloc::Counting;
use xbb_testing::fuzz::{
    fuzz_instance, fuzz_instance_in, fuzz_request, fuzz_ring, fuzz_ring_in, fuzz_xenstore,
    Completion, Fault, FeKey, FeValue, InstanceConfig, InstanceMemory, InstanceReport,
    InstanceScript, Outcome, PushReq, RingConfig, RingMemory, RingReport, RingScript,
    FIRST_DATA_GREF,
};
use xbb_testing::rng::XorShift;

// `fuzz_instance` checks that the I/O path allocates nothing when the
// binary counts allocations, as the cargo-fuzz target does.
#[global_allocator]
static ALLOCATOR: Counting = Counting;

/// Runs `body` over `cases` random inputs of up to `max_len` bytes.
fn random_inputs(seed: u64, cases: usize, max_len: usize, mut body: impl FnMut(&[u8])) {
    let mut rng = XorShift(seed);
    for _ in 0..cases {
        let len = (rng.next() as usize) % (max_len + 1);
        let input = rng.bytes(len);
        body(&input);
    }
}

#[test]
fn ring_random_inputs() {
    let mut mem = RingMemory::new().unwrap();
    let mut total = RingReport::default();
    random_inputs(0x9e37_79b9_7f4a_7c15, 2000, 600, |d| {
        total.add(&fuzz_ring_in(&mut mem, d));
    });
    // The random inputs must reach the request path, not only the header.
    assert!(total.connects > 100, "{total:?}");
    assert!(
        total.okay > 0 && total.error > 0 && total.ios > 0,
        "{total:?}"
    );
    assert!(total.ring_broken, "{total:?}");
}

#[test]
fn request_random_inputs() {
    random_inputs(0x2545_f491_4f6c_dd1d, 5000, 140, fuzz_request);
}

#[test]
fn xenstore_random_inputs() {
    random_inputs(0xd1b5_4a32_d192_ed03, 5000, 400, fuzz_xenstore);
}

// ---------------------------------------------------------------------------
// Hand-written ring seeds

/// Where seeds are also written as a cargo-fuzz corpus, when set.
const CORPUS_ENV: &str = "XBB_FUZZ_CORPUS";

fn save(target: &str, name: &str, bytes: &[u8]) {
    if let Some(dir) = std::env::var_os(CORPUS_ENV) {
        let dir = std::path::Path::new(&dir).join(target);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join(name), bytes).unwrap();
    }
}

/// Runs seed `name` of fuzz target `target` through its body (saving it
/// when asked) and returns what it did.
fn run<R>(target: &str, name: &str, bytes: &[u8], body: fn(&[u8]) -> R) -> R {
    save(target, name, bytes);
    body(bytes)
}

/// Runs a ring seed.
fn ring(name: &str, s: &RingScript) -> RingReport {
    run("ring", name, s.bytes(), fuzz_ring)
}

/// A connected, writable, flushable 64-sector-page medium.
fn base() -> RingConfig {
    RingConfig {
        x86_64: true,
        can_flush: true,
        online: true,
        connect_at_attach: true,
        medium: 63,
        ..RingConfig::default()
    }
}

/// Every ABI and ring size.
fn geometries() -> impl Iterator<Item = RingConfig> {
    [false, true].into_iter().flat_map(|x86_64| {
        (0..3).map(move |order| RingConfig {
            x86_64,
            order,
            ..base()
        })
    })
}

/// [`base`] with `f` applied.
fn config(f: impl FnOnce(&mut RingConfig)) -> RingConfig {
    let mut c = base();
    f(&mut c);
    c
}

/// Runs ring seed `name`: `reqs` pushed, published, kicked and completed
/// successfully.
fn served(name: &str, cfg: &RingConfig, reqs: &[PushReq]) -> RingReport {
    ring(
        name,
        RingScript::new(cfg)
            .requests(reqs)
            .complete_all(Outcome::Ok),
    )
}

fn read(sector: u8, nsegs: u8) -> PushReq {
    PushReq {
        id: 0x10,
        op: 0,
        nsegs,
        sector,
        range: 128,
        ..PushReq::default()
    }
}

/// `r` changed by `f`.
fn with(r: PushReq, f: impl FnOnce(&mut PushReq)) -> PushReq {
    let mut r = r;
    f(&mut r);
    r
}

fn write(sector: u8, nsegs: u8) -> PushReq {
    with(read(sector, nsegs), |p| p.op = 2)
}

/// Found by the ring fuzz target: a front-end stored a `req_prod` more
/// than a ring ahead of its `rsp_cons` while one of its I/Os was still in
/// flight, so the back-end, measuring from its own `req_cons`, accepted
/// it and served 43 more requests. The front ring refuses responses it
/// cannot be owed, so the body's final check, which counted only the
/// responses taken, reported them unanswered. The back-end had answered
/// every one; the body now counts them on the shared ring's `rsp_prod`
/// when the front-end overran its own ring.
#[test]
fn regression_a_front_end_that_overran_its_ring_was_answered() {
    let data = include_bytes!("fuzz-regressions/ring-overran-front-end");
    let r = run("ring", "regression-overran-front-end", data, fuzz_ring);
    assert!(!r.ring_broken, "{r:?}");
    assert!(r.ios > 0 && r.okay + r.error > 0, "{r:?}");
}

/// Found by the instance fuzz target (33 minutes into an hour at
/// fa8e1df): a front-end laid out a 4-page ring for the x86_32 ABI, then
/// removed its `protocol` node; the back-end connected with the native
/// ABI, served one request (read with the x86_64 layout: its id from bytes
/// 8..16) and disconnected, all within one call. The body marked the ring
/// lossy and checked the response's id against the ids it had written in
/// the x86_32 layout. The back-end was right; the body now checks a
/// connection it did not see only where the ring's ABI is the one the
/// `protocol` node gives (otherwise the ring is blind).
#[test]
fn regression_a_connection_unseen_by_the_body_used_another_abi() {
    let data = include_bytes!("fuzz-regressions/instance-unseen-connection-abi");
    let r = run(
        "instance",
        "regression-unseen-connection-abi",
        data,
        fuzz_instance,
    );
    // The one response was taken (the connection itself went unseen).
    assert!(r.error > 0, "{r:?}");
}

#[test]
fn seed_read_write_round_trip() {
    for cfg in geometries() {
        let r = ring(
            &format!("rw-{}-{}", cfg.x86_64, cfg.order),
            RingScript::new(&cfg)
                .requests(&[write(0, 2)])
                .complete_all(Outcome::Ok)
                .requests(&[read(0, 2)])
                .complete_all(Outcome::Ok),
        );
        assert_eq!(
            (r.connects, r.okay, r.error, r.ios),
            (1, 2, 0, 2),
            "{cfg:?}"
        );
        assert!(r.notifications > 0);
    }
}

#[test]
fn seed_coalesced_run() {
    for no_coalesce in [false, true] {
        let cfg = config(|c| c.no_coalesce = no_coalesce);
        let mut s = RingScript::new(&cfg);
        s.push(&read(0, 2));
        for _ in 0..3 {
            s.push(&read(128, 2));
        }
        s.publish().kick().complete_all(Outcome::Ok);
        let r = ring(&format!("coalesce-{no_coalesce}"), &s);
        assert_eq!(r.okay, 4);
        assert_eq!(r.ios, if no_coalesce { 4 } else { 1 });
    }
}

#[test]
fn seed_impossible_producers() {
    for cfg in geometries() {
        let ahead = ring(
            "prod-ahead",
            RingScript::new(&cfg)
                .push(&read(0, 1))
                .req_prod_ahead(255)
                .kick(),
        );
        let back = ring(
            "prod-back",
            RingScript::new(&cfg)
                .requests(&[read(0, 1), read(8, 1)])
                .complete_all(Outcome::Ok)
                .req_prod_back(5)
                .kick()
                .requests(&[read(0, 1)]),
        );
        let max = ring(
            "prod-max",
            RingScript::new(&cfg).req_prod_raw(u32::MAX).kick(),
        );
        for r in [ahead, back, max] {
            assert!(r.ring_broken, "{cfg:?} {r:?}");
        }
        assert_eq!(ahead.okay + ahead.error, 0);
        assert_eq!(back.okay, 2, "answered before the break, nothing after");
    }
}

#[test]
fn seed_exactly_full_ring() {
    for cfg in geometries() {
        let size = if cfg.order == 0 { 32 } else { 32 << cfg.order };
        let mut s = RingScript::new(&cfg);
        for i in 0..size {
            s.push(&read((i % 64) as u8, 1));
        }
        s.publish().kick().complete_all(Outcome::Ok);
        let r = ring("full", &s);
        assert_eq!(r.okay, size, "{cfg:?}");
        assert!(!r.ring_broken);
        // One more than the ring holds before any answer is impossible.
        let mut s = RingScript::new(&cfg);
        for i in 0..=size {
            s.push(&read((i % 64) as u8, 1));
        }
        s.publish().kick();
        assert!(ring("overfull", &s).ring_broken, "{cfg:?}");
    }
}

#[test]
fn seed_garbage_slots() {
    for cfg in geometries() {
        let mut s = RingScript::new(&cfg);
        for fill in [0xffu8, 0x07, 0x04, 0x05, 0x06] {
            s.write_slot(0, &[fill; 112]);
        }
        s.publish().kick().complete_all(Outcome::Ok);
        let r = ring("garbage", &s);
        assert_eq!(r.okay, 0, "{cfg:?}");
        assert_eq!(r.error + r.not_supported, 5, "{cfg:?}");
        assert_eq!(r.ios, 0);
    }
}

#[test]
fn seed_bad_segments() {
    let bad = [
        read(0, 0),
        with(read(0, 0), |p| p.nsegs = 255),
        with(read(0, 0), |p| p.nsegs = 12),
        with(read(0, 1), |p| p.range = 120),
        with(read(0, 1), |p| p.range = 7), // first_sect 7, last_sect 0
        PushReq {
            sector: 255,
            raw_sector: u64::MAX - 3,
            ..read(0, 1)
        },
        with(read(0, 1), |p| p.sector = 193), // one sector before the end, 8 sectors long
    ];
    for cfg in geometries() {
        let mut s = RingScript::new(&cfg);
        for b in &bad {
            s.push(b);
        }
        s.publish().kick().complete_all(Outcome::Ok);
        let r = ring("bad-segments", &s);
        assert_eq!(
            (r.okay, r.error, r.ios),
            (0, bad.len() as u64, 0),
            "{cfg:?}"
        );
    }
}

#[test]
fn seed_bad_grants() {
    let cfg = config(|c| c.readonly_grants = 1 << 5);
    let r = served(
        "bad-grants",
        &cfg,
        &[
            with(read(0, 1), |p| p.gref = 255), // never granted
            with(read(8, 1), |p| p.gref = 224), // the ring's own page
            with(read(16, 1), |p| p.gref = 5),  // granted read-only: a read writes into it
            with(write(24, 1), |p| p.gref = 5), // ...which a write may use
        ],
    );
    assert_eq!((r.okay, r.error, r.ios), (1, 3, 1));
}

#[test]
fn seed_read_only_media() {
    for cfg in [
        config(|c| c.read_only_medium = true),
        config(|c| c.toolstack_read_only = true),
    ] {
        let r = served(
            "read-only",
            &cfg,
            &[
                write(0, 1),
                read(0, 1),
                with(write(8, 1), |p| p.op = 4), // flush with data is a write
            ],
        );
        assert_eq!((r.okay, r.error), (1, 2), "{cfg:?}");
    }
}

#[test]
fn seed_flush_and_barrier() {
    let script = |cfg: &RingConfig| {
        let mut s = RingScript::new(cfg);
        s.requests(&[
            read(0, 1),
            write(40, 1),
            with(write(16, 1), |p| p.op = 5),
            with(read(0, 0), |p| p.op = 5),
            with(read(0, 0), |p| p.op = 4),
            with(write(24, 2), |p| p.op = 4),
        ])
        .complete(1, Outcome::Ok)
        .complete(0, Outcome::Ok)
        .complete_all(Outcome::Ok);
        s
    };
    let r = ring("flush-barrier", &script(&base()));
    assert_eq!((r.okay, r.error, r.not_supported), (6, 0, 0));
    let no_flush = config(|c| c.can_flush = false);
    let r = ring("no-flush", &script(&no_flush));
    assert_eq!((r.okay, r.not_supported), (2, 4));
}

#[test]
fn seed_persistent_grants() {
    // Every segment of a pushed request names the same data page: with
    // persistent grants two segments are a duplicate, refused; and a page
    // still held by the first read (bound when it was taken off the ring)
    // is refused to the write behind it.
    let cfg = config(|c| c.persistent = true);
    let r = served("persistent", &cfg, &[read(0, 1), read(8, 2), write(16, 1)]);
    assert_eq!((r.okay, r.error, r.not_supported), (1, 2, 0));
    // A one-entry cache: each new page evicts the last; a page held while
    // the cache is full is mapped transiently.
    let tiny = RingConfig {
        max_persistent_grants: 1,
        ..cfg
    };
    let r = ring(
        "persistent-tiny",
        RingScript::new(&tiny)
            .requests(&[read(0, 1), with(read(8, 1), |p| p.gref = 3)])
            .complete_all(Outcome::Ok)
            .requests(&[with(read(16, 1), |p| p.gref = 5)])
            .complete_all(Outcome::Ok)
            .requests(&[read(24, 1)])
            .complete_all(Outcome::Ok),
    );
    assert_eq!((r.okay, r.error), (4, 0));
}

#[test]
fn seed_unoffered_operations() {
    let r = ring(
        "unoffered",
        RingScript::new(&base())
            .push(&PushReq {
                id: 2,
                op: 6,
                ..read(0, 1)
            }) // discard
            .push(&PushReq {
                id: 3,
                op: 6,
                ..read(0, 1)
            }) // indirect
            .push(&PushReq {
                op: 7,
                raw_op: 4,
                ..read(0, 1)
            }) // reserved
            .requests(&[PushReq {
                op: 7,
                raw_op: 200,
                ..read(0, 1)
            }]),
    );
    // Discard is not offered (this medium cannot); indirect requests are,
    // and this one's indirect_op is not READ or WRITE: an error.
    assert_eq!((r.okay, r.error, r.not_supported, r.ios), (0, 1, 3, 0));
}

#[test]
fn seed_store_errors_out_of_order() {
    let r = ring(
        "store-errors",
        RingScript::new(&base())
            .requests(&[read(0, 1), write(16, 1), read(32, 1), write(48, 3)])
            .complete(2, Outcome::Io)
            .complete(0, Outcome::Ok)
            .complete(1, Outcome::Gone)
            .complete_all(Outcome::NoSpace),
    );
    assert_eq!((r.okay, r.error), (1, 3));
    assert_eq!(r.max_in_flight, 4);
}

#[test]
fn seed_close_with_io_in_flight_then_reconnect() {
    let r = ring(
        "close-in-flight",
        RingScript::new(&base())
            .requests(&[read(0, 1), write(16, 1)])
            .frontend_state(5) // Closing with two I/Os in flight
            .push(&read(32, 1))
            .publish()
            .kick() // ignored: closing
            .complete_all(Outcome::Ok)
            .frontend_state(6)
            .frontend_state(3) // reconnects: online
            .requests(&[read(0, 1)])
            .complete_all(Outcome::Ok),
    );
    assert_eq!(r.connects, 2);
    assert_eq!(r.okay, 3);
}

#[test]
fn seed_pool_shortage() {
    let cfg = config(|c| c.max_requests = 1); // one request in service at a time
    let r = served(
        "pool-shortage",
        &cfg,
        &[read(0, 1), read(16, 1), write(32, 1), read(48, 1)],
    );
    assert_eq!((r.okay, r.max_in_flight), (4, 1));
}

/// Two 11-page I/Os through an 11-page window: the second waits for the
/// first.
#[test]
fn seed_window_shortage() {
    let r = served(
        "kva-shortage",
        &small_window(),
        &[read(0, 11), read(20, 11)],
    );
    assert_eq!((r.okay, r.max_in_flight), (2, 1));
}

fn small_window() -> RingConfig {
    RingConfig {
        kva_pages: 1,        // 11 pages
        max_request_size: 1, // 44 KiB: 11 pages per I/O
        ..base()
    }
}

/// Three: while the second waits for window space, the third must wait
/// behind it, not replace it.
#[test]
fn seed_window_shortage_two_waiting() {
    let r = served(
        "kva-shortage-2",
        &small_window(),
        &[read(0, 11), read(20, 11), write(40, 11)],
    );
    assert_eq!((r.okay, r.max_in_flight), (3, 1));
}

#[test]
fn seed_requests_per_pass() {
    let cfg = config(|c| c.requests_per_pass = 1);
    let mut s = RingScript::new(&cfg);
    for i in 0..5 {
        s.push(&read(i * 10, 1));
    }
    s.publish().kick();
    for _ in 0..5 {
        s.deferred();
    }
    s.complete_all(Outcome::Ok);
    assert_eq!(ring("per-pass", &s).okay, 5);
}

#[test]
fn seed_injected_faults() {
    let io = |fault: Fault| {
        ring(
            "fault-io",
            RingScript::new(&base())
                .inject(fault, 1)
                .requests(&[read(0, 2)])
                .complete_all(Outcome::Ok),
        )
    };
    assert_eq!((io(Fault::Map).error, io(Fault::Submit).error), (1, 1));

    let late = config(|c| c.connect_at_attach = false);
    for fault in [Fault::RingMap, Fault::Bind, Fault::Window] {
        let r = ring(
            "fault-connect",
            RingScript::new(&late)
                .inject(fault, 0)
                .frontend_state(3)
                .requests(&[read(0, 1)]),
        );
        assert_eq!(r.connects, 0, "{fault:?}");
    }
    for (n, connects) in [(3, 1), (11, 0)] {
        let r = ring(
            "fault-xs",
            RingScript::new(&late)
                .inject(Fault::XsConflict, n)
                .frontend_state(3),
        );
        assert_eq!(r.connects, connects, "{n} conflicts");
    }
    let root_later = config(|c| c.root_later = true);
    let r = ring(
        "fault-open",
        RingScript::new(&root_later)
            .inject(Fault::Open, 0)
            .root_mounted(),
    );
    assert_eq!(r.connects, 0);
}

#[test]
fn seed_root_mounted_later() {
    let cfg = config(|c| c.root_later = true);
    let r = ring(
        "root-later",
        RingScript::new(&cfg)
            .push(&write(0, 1))
            .publish()
            .kick() // not connected yet: nothing happens
            .root_mounted()
            .complete_all(Outcome::Ok),
    );
    assert_eq!((r.connects, r.okay), (1, 1));
}

#[test]
fn seed_frontend_state_garbage() {
    for states in [[9u8, 10, 11, 3], [7, 8, 0, 4], [6, 6, 3, 5], [2, 1, 4, 6]] {
        let mut s = RingScript::new(&base());
        s.push(&read(0, 1)).publish();
        for st in states {
            s.frontend_state(st).kick();
        }
        s.complete_all(Outcome::Ok);
        ring("states", &s);
    }
}

#[test]
fn seed_ring_order_refused() {
    let cfg = RingConfig {
        order: 2,
        max_ring_order: 1, // hw.xbb.max_ring_page_order = 0
        ..base()
    };
    assert_eq!(ring("order-refused", &RingScript::new(&cfg)).connects, 0);
}

#[test]
fn seed_4k_sectors() {
    let cfg = config(|c| c.sector_4k = true);
    let r = served(
        "4k",
        &cfg,
        &[
            read(0, 2),
            with(read(8, 1), |p| p.range = 65), // sectors 1..=7: not a whole 4 KiB block
            PushReq {
                sector: 255,
                raw_sector: 3,
                ..read(0, 1)
            },
        ],
    );
    assert_eq!((r.okay, r.error), (1, 2));
}

#[test]
fn seed_slot_rewritten_after_consumption() {
    let r = ring(
        "rewrite",
        RingScript::new(&base())
            .requests(&[read(0, 1)])
            .write_slot(-1, &[0xee; 112])
            .complete_all(Outcome::Ok)
            .arm_rsp_event()
            .coalesce_sysctl(2)
            .coalesce_sysctl(1),
    );
    assert_eq!(r.okay, 1);
}

#[test]
fn seed_every_action_with_flat_arguments() {
    let mut mem = RingMemory::new().unwrap();
    for cfg in geometries() {
        for fill in [0u8, 1, 0x7f, 0x80, 0xff] {
            for action in 0u8..12 {
                let mut bytes = cfg.encode().to_vec();
                for _ in 0..40 {
                    bytes.push(action);
                    bytes.extend_from_slice(&[fill; 3]);
                }
                fuzz_ring_in(&mut mem, &bytes);
            }
        }
    }
}

// ---------------------------------------------------------------------------
// Hand-written request and XenStore seeds

#[test]
fn seed_requests() {
    let mut cases: Vec<Vec<u8>> = Vec::new();
    for flags in [0u8, 0x1f, 0x03, 0x04] {
        for seg_sel in [0u8, 11, 15, 200] {
            let mut head = vec![flags, seg_sel];
            if seg_sel >= 128 {
                head.extend_from_slice(&u32::MAX.to_le_bytes());
            }
            head.extend_from_slice(&u64::MAX.to_le_bytes());
            head.push(40); // medium: 2^24 sectors
            for op in [0u8, 1, 2, 3, 4, 5, 6, 0xff] {
                for fill in [0u8, 0x07, 0x70, 0xff] {
                    let mut slot = vec![fill; 112];
                    slot[0] = op;
                    slot[1] = 1; // nr_segments
                    cases.push([head.clone(), slot].concat());
                }
            }
        }
    }
    cases.push(Vec::new());
    cases.push(vec![0xff; 300]);
    for (i, c) in cases.iter().enumerate() {
        run("request", &format!("seed-{i}"), c, fuzz_request);
    }
}

#[test]
fn seed_xenstore() {
    let mut cases: Vec<Vec<u8>> = Vec::new();
    // Well-formed directories of every order, style and protocol.
    for order in 0u8..6 {
        for style in 0u8..3 {
            for proto in 0u8..4 {
                let mut c = vec![0u8, 5, 2, order, style];
                c.extend(std::iter::repeat_n(0x31, 4 * 33));
                c.push(proto);
                cases.push(c);
            }
        }
    }
    // Hostile: every key with each kind of value, conflicts, read failures.
    for kind in 0u8..8 {
        for conflicts in [0u8, 8, 9] {
            for fail in [0u8, 200, 203] {
                let mut c = vec![1u8, 5, conflicts];
                for _ in 0..5 {
                    c.extend_from_slice(&[kind, 0xff, 0xff, 0xff, 0xff, 0, 0, 0, 1]);
                }
                c.push(32);
                for _ in 0..32 {
                    c.extend_from_slice(&[kind, 3, b'1', b'2', b'3']);
                }
                c.push(fail);
                cases.push(c);
            }
        }
    }
    cases.push(vec![1, 255, 0xff, 0xff, 0xff, 0xff]);
    cases.push(Vec::new());
    // Found by the fuzzer: a node of many leading zeros is the number 0 to
    // the core; the oracle once refused numbers longer than 20 digits.
    cases.push(include_bytes!("fuzz-regressions/xenstore-leading-zeros").to_vec());
    for (i, c) in cases.iter().enumerate() {
        run("xenstore", &format!("seed-{i}"), c, fuzz_xenstore);
    }
}

// ---------------------------------------------------------------------------
// Whole-instance seeds

/// Runs a whole-instance seed.
fn instance(name: &str, s: &InstanceScript) -> InstanceReport {
    run("instance", name, s.bytes(), fuzz_instance)
}

/// The ring seeds' [`base`] medium, discarding too, of an online vbd whose
/// front-end (one ring, legacy keys) is ready at attach.
fn inst_base() -> InstanceConfig {
    InstanceConfig {
        can_discard: true,
        connect_at_attach: true,
        ..base().as_instance()
    }
}

/// A random but well-formed operation sequence: mostly requests,
/// publishes, kicks and completions, with every other operation mixed in.
fn random_instance_script(rng: &mut XorShift) -> InstanceScript {
    let cfg = random_instance_config(rng);
    let mut s = InstanceScript::new(&cfg);
    // The rings the front-end lays out, to send most requests to.
    let mut rings = [1u8, 2, 4, 3][usize::from(cfg.queues & 3)];
    for _ in 0..rng.below(40) {
        let ring = if rng.below(8) == 0 {
            rng.below(4) as u8
        } else {
            rng.below(u64::from(rings)) as u8
        };
        match rng.below(24) {
            0..=5 => {
                let r = random_request(rng, cfg.medium);
                s.push(ring, &r);
                if rng.below(2) == 0 {
                    s.publish(ring).kick(ring);
                }
            }
            6..=8 => {
                s.publish(ring).kick(ring);
            }
            9 => {
                s.kick(rng.byte());
            }
            10 | 11 => {
                s.complete(rng.byte(), random_completion(rng));
            }
            12 => {
                s.complete_all(random_completion(rng));
            }
            13 => {
                let v = [3, 4, 5, 6, 1, 2, 7, 8, 0, 9, 10, 11][rng.below(12) as usize];
                s.frontend_state(v);
            }
            14 => {
                let queues = rng.below(5) as u8;
                rings = queues.max(1);
                s.layout(queues, rng.byte(), rng.below(2) == 0, rng.below(6) == 0);
                if rng.below(2) == 0 {
                    s.frontend_state(6).frontend_state(3);
                }
            }
            15 => {
                random_fe_node(rng, &mut s);
            }
            16 => {
                let what = random_fault(rng);
                s.inject(what, rng.byte());
            }
            17 => {
                s.resize(rng.byte());
            }
            18 => {
                s.detach().complete_all(Completion::Ok).attach();
            }
            19 => {
                s.run().watch();
            }
            20 => {
                let rel = rng.below(3) as i8 - 1;
                let n = rng.below(113) as usize;
                s.slot(ring, rel, &rng.bytes(n));
            }
            21 => {
                s.req_prod_ahead(ring, rng.byte());
            }
            22 => {
                s.clock(rng.byte())
                    .arm_rsp_event(ring)
                    .coalesce_sysctl(rng.byte());
            }
            _ => {
                s.root_mounted().hotplug(rng.byte());
                let n = rng.below(64) as usize;
                let page = rng.bytes(n);
                s.page_write(rng.byte(), rng.below(4096) as u16, &page);
            }
        }
    }
    s
}

/// The header of [`random_instance_script`]: any tunables and medium,
/// mostly a front-end ready at attach.
fn random_instance_config(rng: &mut XorShift) -> InstanceConfig {
    let header: [u8; 5] = std::array::from_fn(|_| rng.byte());
    InstanceConfig {
        connect_at_attach: rng.below(4) != 0,
        root_later: rng.below(8) == 0,
        hotplug_gate: rng.below(8) == 0,
        ..InstanceConfig {
            x86_64: header[0] & 1 != 0,
            read_only_medium: rng.below(8) == 0,
            can_flush: header[0] & 2 != 0,
            can_discard: header[0] & 4 != 0,
            sector_4k: rng.below(6) == 0,
            online: header[0] & 8 != 0,
            toolstack_read_only: rng.below(8) == 0,
            requests_per_pass: header[1] & 3,
            max_requests: header[1] >> 2 & 3,
            kva_pages: header[1] >> 4 & 3,
            max_request_size: header[1] >> 6,
            max_queues: if rng.below(2) == 0 { header[2] & 3 } else { 0 },
            max_ring_order: header[2] >> 2 & 3,
            max_persistent_grants: header[2] >> 4 & 3,
            max_indirect_segments: header[2] >> 6,
            medium: header[3],
            no_coalesce: header[3] & 64 != 0,
            queues: header[4] & 3,
            order: header[4] >> 2 & 3,
            persistent: header[4] & 16 != 0,
            discard_disabled: rng.below(8) == 0,
            secure_discard: header[4] & 32 != 0,
            ..InstanceConfig::default()
        }
    }
}

/// Mostly success, else any error.
fn random_completion(rng: &mut XorShift) -> Completion {
    [
        Completion::Ok,
        Completion::Ok,
        Completion::Ok,
        Completion::Io,
        Completion::Gone,
        Completion::NoSpace,
        Completion::NotSupported,
        Completion::Busy,
    ][rng.below(8) as usize]
}

/// A request of [`random_instance_script`]: mostly reads and writes of
/// whole pages inside the medium (of header selector `medium`).
fn random_request(rng: &mut XorShift, medium: u8) -> PushReq {
    let op = match rng.below(8) {
        0..=5 => rng.below(4) as u8,
        _ => rng.byte(),
    };
    let sector = match rng.below(8) {
        0..=5 => rng.below(u64::from(medium % 64) + 1) as u8,
        6 => 128,
        _ => rng.byte(),
    };
    PushReq {
        id: rng.below(4) as u16,
        op,
        raw_op: rng.byte(),
        nsegs: if rng.below(16) == 0 {
            rng.byte()
        } else {
            rng.below(5) as u8
        },
        sector,
        raw_sector: rng.next(),
        gref: rng.byte(),
        range: if rng.below(4) == 0 { rng.byte() } else { 128 },
    }
}

/// A front-end node written or removed by [`random_instance_script`].
fn random_fe_node(rng: &mut XorShift, s: &mut InstanceScript) {
    let key = [
        FeKey::RingRef,
        FeKey::RingRefN,
        FeKey::RingPageOrder,
        FeKey::NumRingPages,
        FeKey::EventChannel,
        FeKey::Protocol,
        FeKey::FeaturePersistent,
        FeKey::NumQueues,
        FeKey::State,
        FeKey::Other,
    ][rng.below(10) as usize];
    let value = [
        FeValue::RingGref,
        FeValue::Port,
        FeValue::Small,
        FeValue::Empty,
        FeValue::TooBig,
        FeValue::Negative,
        FeValue::Abi32,
        FeValue::Abi64,
        FeValue::Max32,
        FeValue::Raw,
    ][rng.below(10) as usize];
    if rng.below(4) == 0 {
        s.xs_remove(key, rng.below(6) as u8, rng.byte());
    } else {
        s.xs_write(key, rng.below(6) as u8, rng.byte(), value, &rng.bytes(24));
    }
}

/// Any platform failure.
fn random_fault(rng: &mut XorShift) -> Fault {
    [
        Fault::Submit,
        Fault::Map,
        Fault::RingMap,
        Fault::Bind,
        Fault::Window,
        Fault::XsConflict,
        Fault::Open,
        Fault::XsRead,
    ][rng.below(8) as usize]
}

#[test]
fn instance_random_inputs() {
    let mut mem = InstanceMemory::new().unwrap();
    // Raw bytes: only that nothing breaks.
    random_inputs(0x5851_f42d_4c95_7f2d, 500, 500, |d| {
        fuzz_instance_in(&mut mem, d);
    });
    // Random well-formed scripts must reach the request path of several
    // queues and check what they promise.
    let mut rng = XorShift::seeded(0x1405_7b7e_f767_814f);
    let mut total = InstanceReport::default();
    for i in 0..1500 {
        let s = random_instance_script(&mut rng);
        if i < 100 {
            save("instance", &format!("random-{i}"), s.bytes());
        }
        total.add(&fuzz_instance_in(&mut mem, s.bytes()));
    }
    // About half of what they reach when written.
    assert!(total.connects > 450 && total.ios > 150, "{total:?}");
    assert!(total.okay > 100 && total.error > 600, "{total:?}");
    assert!(
        total.matched > 700 && total.all_answered > 5000,
        "{total:?}"
    );
    assert_eq!(total.max_queues, 4, "{total:?}");
    assert!(total.alloc_checked > 1000, "{total:?}");
    assert!(
        total.ring_broken && total.detaches > 0 && total.resizes > 0,
        "{total:?}"
    );
}

#[test]
fn instance_seed_read_write_every_layout() {
    // Legacy keys, then 2, 4 and 3 queues; both ABIs; every ring order.
    for queues in 0..4u8 {
        for x86_64 in [false, true] {
            for order in 0..3u8 {
                let cfg = InstanceConfig {
                    x86_64,
                    queues,
                    order,
                    ..inst_base()
                };
                let n = [1u8, 2, 4, 3][usize::from(queues)];
                let mut s = InstanceScript::new(&cfg);
                for q in 0..n {
                    s.push(q, &write(q * 8, 2)).publish(q).kick(q);
                }
                s.complete_all(Completion::Ok);
                for q in 0..n {
                    s.push(q, &read(q * 8, 2)).publish(q).kick(q);
                }
                s.complete_all(Completion::Ok);
                let r = instance(&format!("rw-{queues}-{x86_64}-{order}"), &s);
                let n = u64::from(n);
                assert_eq!(
                    (r.connects, r.okay, r.matched),
                    (1, 2 * n, 2 * n),
                    "{cfg:?}"
                );
                assert_eq!(r.max_queues as u64, n, "{cfg:?}");
                assert!(r.alloc_checked > 0 && r.all_answered > 0, "{r:?}");
            }
        }
    }
}

#[test]
fn instance_seed_completions_in_any_order_with_any_result() {
    let cfg = InstanceConfig {
        queues: 1, // two queues
        ..inst_base()
    };
    let mut s = InstanceScript::new(&cfg);
    for (q, sector) in [(0, 0), (1, 8), (0, 16), (1, 24)] {
        s.push(q, &write(sector, 1))
            .push(q, &read(sector + 32, 1))
            .publish(q);
    }
    s.kick(1).kick(0);
    for (which, how) in [
        (5, Completion::Io),
        (0, Completion::Ok),
        (3, Completion::NoSpace),
        (2, Completion::NotSupported),
        (1, Completion::Busy),
        (7, Completion::Ok),
    ] {
        s.complete(which, how);
    }
    s.complete_all(Completion::Ok);
    let r = instance("completions-any-order", &s);
    // Four of the eight I/Os fail, each its own request.
    assert_eq!((r.okay, r.error, r.ios), (4, 4, 8), "{r:?}");
    assert_eq!(r.matched, 8);
}

#[test]
fn instance_seed_store_gone_closes() {
    let mut s = InstanceScript::new(&inst_base());
    s.requests(0, &[write(0, 1), write(8, 1)])
        .complete(0, Completion::Gone)
        .complete_all(Completion::Ok)
        .requests(0, &[read(0, 1)]);
    let r = instance("store-gone", &s);
    // Both writes answered; the connection closed; the read never served.
    assert_eq!((r.okay, r.error, r.connects), (1, 1, 1), "{r:?}");
    assert_eq!(r.fatals, 1);
}

#[test]
fn instance_seed_grant_map_failures() {
    let mut s = InstanceScript::new(&inst_base());
    s.inject(Fault::Map, 1)
        .requests(0, &[write(0, 2)])
        .complete_all(Completion::Ok)
        .inject(Fault::Map, 3)
        .requests(0, &[read(0, 1), read(8, 1), read(16, 1)])
        .complete_all(Completion::Ok)
        .requests(0, &[read(0, 2)])
        .complete_all(Completion::Ok);
    let r = instance("grant-map-failures", &s);
    assert_eq!(r.matched, 5, "{r:?}");
    assert!(r.error >= 2 && r.okay >= 1, "{r:?}");
}

#[test]
fn instance_seed_detach_with_io_in_flight_and_attach_again() {
    let mut s = InstanceScript::new(&inst_base());
    s.requests(0, &[write(0, 3), read(32, 1)])
        .detach()
        .complete(1, Completion::Ok)
        .complete_all(Completion::Ok)
        .attach()
        .frontend_state(3)
        .requests(0, &[read(0, 3)])
        .complete_all(Completion::Ok);
    let r = instance("detach-attach", &s);
    assert_eq!((r.connects, r.detaches, r.okay), (2, 1, 3), "{r:?}");
}

#[test]
fn instance_seed_resize_under_io() {
    let mut s = InstanceScript::new(&inst_base());
    s.push(0, &write(50, 2)) // sectors 400.. of 512
        .publish(0)
        .kick(0)
        .resize(10) // 80 sectors: the write in flight now ends past the end
        .complete_all(Completion::Ok)
        .push(0, &read(50, 1)) // refused: beyond the end
        .publish(0)
        .kick(0)
        .resize(0) // empty
        .requests(0, &[read(0, 1)])
        .resize(64) // grown again
        .requests(0, &[read(50, 1)])
        .complete_all(Completion::Ok);
    let r = instance("resize", &s);
    assert_eq!(r.resizes, 3, "{r:?}");
    assert_eq!((r.okay, r.error), (1, 3), "{r:?}");
}

#[test]
fn instance_seed_close_in_flight_then_reconnect_with_more_queues() {
    let mut s = InstanceScript::new(&inst_base());
    s.requests(0, &[write(0, 1), read(8, 1)])
        .frontend_state(5) // Closing with I/O in flight
        .complete_all(Completion::Ok)
        .frontend_state(6)
        .layout(4, 1, true, false) // four queues of two pages, persistent
        .frontend_state(3);
    for q in 0..4 {
        // A page of its own: a persistent grant is named once at a time.
        let w = with(write(8 * q, 1), |p| p.gref = q);
        s.push(q, &w).publish(q).kick(q);
    }
    s.complete_all(Completion::Ok)
        .clock(2) // an hour: persistent grants go idle
        .kick(0);
    let r = instance("reconnect-four-queues", &s);
    assert_eq!((r.connects, r.max_queues, r.okay), (2, 4, 6), "{r:?}");
}

#[test]
fn instance_seed_hotplug_gate_and_root_later() {
    let cfg = InstanceConfig {
        hotplug_gate: true,
        root_later: true,
        ..inst_base()
    };
    let mut s = InstanceScript::new(&cfg);
    s.push(0, &write(0, 1))
        .publish(0)
        .watch() // nothing open yet
        .root_mounted() // InitWait, waits for the script
        .hotplug(1) // the script failed: still waiting
        .hotplug(0) // connected: the back-end connects, serves the write
        .complete_all(Completion::Ok);
    let r = instance("hotplug-root-later", &s);
    assert_eq!((r.connects, r.okay), (1, 1), "{r:?}");
}

#[test]
fn instance_seed_hostile_nodes_refused() {
    // Each bad node refuses one connection; the good layout after it
    // connects.
    let bad: [(FeKey, u8, u8, FeValue, &[u8]); 8] = [
        (FeKey::Protocol, 9, 0, FeValue::Empty, b""),
        (FeKey::EventChannel, 9, 0, FeValue::TooBig, b""),
        (FeKey::EventChannel, 9, 0, FeValue::Negative, b""),
        (FeKey::Protocol, 9, 5, FeValue::Raw, b"arm64"),
        (FeKey::RingRef, 9, 0, FeValue::Empty, b""),
        (FeKey::RingPageOrder, 9, 9, FeValue::Small, b""),
        (FeKey::NumQueues, 9, 0, FeValue::Small, b""),
        (FeKey::NumQueues, 9, 9, FeValue::Small, b""),
    ];
    for (i, (key, queue, arg, value, raw)) in bad.into_iter().enumerate() {
        let cfg = InstanceConfig {
            connect_at_attach: false,
            ..inst_base()
        };
        let mut s = InstanceScript::new(&cfg);
        s.layout(2, 0, false, false) // rings 0 and 1 offered
            .layout(0, 0, false, false) // the front-end uses one
            .xs_write(key, queue, arg, value, raw)
            .frontend_state(3) // refused
            .frontend_state(6)
            .layout(0, 0, false, false)
            .frontend_state(3) // connects
            .requests(0, &[read(0, 1)])
            .complete_all(Completion::Ok);
        let r = instance(&format!("hostile-node-{i}"), &s);
        assert_eq!((r.connects, r.okay), (1, 1), "case {i}: {r:?}");
        assert!(r.fatals >= 1, "case {i}: {r:?}");
    }
}

#[test]
fn instance_seed_broken_ring_answers_nothing_more() {
    let mut s = InstanceScript::new(&InstanceConfig {
        queues: 1,
        ..inst_base()
    });
    s.push(0, &write(0, 1))
        .push(1, &write(8, 1))
        .publish(0)
        .publish(1)
        .kick(0)
        .kick(1)
        .complete(0, Completion::Ok)
        .req_prod_raw(1, 0x8000_0000)
        .kick(1)
        .complete_all(Completion::Ok);
    let r = instance("broken-ring", &s);
    assert!(r.ring_broken, "{r:?}");
    assert_eq!(r.connects, 1);
}

#[test]
fn instance_seed_indirect_with_crafted_descriptors() {
    let cfg = InstanceConfig {
        max_ring_order: 0,
        order: 2,
        ..inst_base()
    };
    // Data page 4 holds four descriptors naming data pages 8..11.
    let mut desc = [0u8; 4 * SEGMENT_SIZE];
    for (i, d) in desc.chunks_mut(SEGMENT_SIZE).enumerate() {
        let seg = Segment::whole_page(FIRST_DATA_GREF + 8 + i as u32);
        encode_segment(&seg, d);
    }
    let indirect = |op: u8| PushReq {
        op: 7,
        raw_op: op, // even: read, odd: write
        nsegs: 1,   // four segments
        sector: 16,
        gref: 4,
        ..PushReq::default()
    };
    let mut s = InstanceScript::new(&cfg);
    s.page_write(4, 0, &desc)
        .requests(0, &[indirect(1)])
        .complete_all(Completion::Ok)
        .requests(0, &[indirect(0)])
        .complete_all(Completion::Ok)
        .push(0, &indirect(251)) // an indirect_op that is not READ or WRITE
        .publish(0)
        .kick(0);
    let r = instance("indirect-crafted", &s);
    assert_eq!((r.okay, r.error, r.ios), (2, 1, 2), "{r:?}");
}

#[test]
fn instance_seed_platform_failures_at_connect() {
    for (i, what) in [
        Fault::RingMap,
        Fault::Bind,
        Fault::Window,
        Fault::XsConflict,
        Fault::XsRead,
    ]
    .into_iter()
    .enumerate()
    {
        let cfg = InstanceConfig {
            connect_at_attach: false,
            queues: 2, // four queues
            ..inst_base()
        };
        let mut s = InstanceScript::new(&cfg);
        s.inject(what, 11)
            .frontend_state(3)
            .frontend_state(6)
            .frontend_state(3)
            .requests(3, &[write(0, 1)])
            .complete_all(Completion::Ok);
        let r = instance(&format!("platform-failure-{i}"), &s);
        assert!(r.connects >= 1, "case {i}: {r:?}");
        assert_eq!(r.okay, 1, "case {i}: {r:?}");
    }
}

/// Found by this target: a reqlist accepted before the medium shrank (one
/// waiting for the window, a barrier's data after its first flush) was
/// submitted past the new end.
#[test]
fn instance_seed_shrink_under_waiting_io() {
    let cfg = InstanceConfig {
        kva_pages: 1,        // an 11-page window
        max_request_size: 1, // 44 KiB
        ..inst_base()
    };
    let mut s = InstanceScript::new(&cfg);
    s.push(0, &write(40, 8)) // sectors 320..384: in flight
        .push(0, &write(50, 8)) // 400..464: waits for the window
        .publish(0)
        .kick(0)
        .resize(45) // 360 sectors
        .complete_all(Completion::Ok);
    let r = instance("shrink-waiting", &s);
    assert_eq!((r.okay, r.error, r.ios), (0, 2, 1), "{r:?}");

    let barrier = with(write(50, 2), |p| p.op = 5); // a barrier with data: flush, data, flush
    let mut s = InstanceScript::new(&inst_base());
    s.requests(0, &[barrier])
        .resize(45)
        .complete_all(Completion::Ok);
    let r = instance("shrink-barrier", &s);
    assert_eq!((r.okay, r.error, r.ios), (0, 1, 1), "{r:?}");
}
