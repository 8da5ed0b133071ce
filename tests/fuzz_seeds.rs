//! Runs the fuzz bodies of `xbb_testing::fuzz` (the same ones the cargo-fuzz
//! targets in `fuzz/` run) over a deterministic set of inputs, so every
//! `cargo test` exercises them: a few thousand inputs from a xorshift
//! generator per body, plus hand-written seeds for each hostile case.
//!
//! The bodies assert their own invariants; a test here fails when one of
//! them panics.

use xbb_testing::fuzz::{
    fuzz_request, fuzz_ring, fuzz_ring_in, fuzz_xenstore, Fault, Outcome, PushReq, RingConfig,
    RingMemory, RingReport, RingScript,
};
use xbb_testing::rng::XorShift;

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
        let r = fuzz_ring_in(&mut mem, d);
        total.connects += r.connects;
        total.okay += r.okay;
        total.error += r.error;
        total.ios += r.ios;
        total.ring_broken |= r.ring_broken;
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

/// Runs a ring seed (saving it when asked) and returns what it did.
fn ring(name: &str, s: &RingScript) -> RingReport {
    save("ring", name, s.bytes());
    fuzz_ring(s.bytes())
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

fn write(sector: u8, nsegs: u8) -> PushReq {
    PushReq {
        op: 2,
        ..read(sector, nsegs)
    }
}

#[test]
fn seed_read_write_round_trip() {
    for cfg in geometries() {
        let r = ring(
            &format!("rw-{}-{}", cfg.x86_64, cfg.order),
            RingScript::new(&cfg)
                .push(&write(0, 2))
                .publish()
                .kick()
                .complete_all(Outcome::Ok)
                .push(&read(0, 2))
                .publish()
                .kick()
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
        let cfg = RingConfig {
            no_coalesce,
            ..base()
        };
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
                .push(&read(0, 1))
                .push(&read(8, 1))
                .publish()
                .kick()
                .complete_all(Outcome::Ok)
                .req_prod_back(5)
                .kick()
                .push(&read(0, 1))
                .publish()
                .kick(),
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
        PushReq {
            nsegs: 255,
            ..read(0, 0)
        },
        PushReq {
            nsegs: 12,
            ..read(0, 0)
        },
        PushReq {
            range: 120,
            ..read(0, 1)
        },
        PushReq {
            range: 7, // first_sect 7, last_sect 0
            ..read(0, 1)
        },
        PushReq {
            sector: 255,
            raw_sector: u64::MAX - 3,
            ..read(0, 1)
        },
        PushReq {
            sector: 193, // one sector before the end, 8 sectors long
            ..read(0, 1)
        },
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
    let cfg = RingConfig {
        readonly_grants: 1 << 5,
        ..base()
    };
    let r = ring(
        "bad-grants",
        RingScript::new(&cfg)
            .push(&PushReq {
                gref: 255, // never granted
                ..read(0, 1)
            })
            .push(&PushReq {
                gref: 224, // the ring's own page
                ..read(8, 1)
            })
            .push(&PushReq {
                gref: 5, // granted read-only: a read writes into it
                ..read(16, 1)
            })
            .push(&PushReq {
                gref: 5, // ...which a write may use
                ..write(24, 1)
            })
            .publish()
            .kick()
            .complete_all(Outcome::Ok),
    );
    assert_eq!((r.okay, r.error, r.ios), (1, 3, 1));
}

#[test]
fn seed_read_only_media() {
    for cfg in [
        RingConfig {
            read_only_medium: true,
            ..base()
        },
        RingConfig {
            toolstack_read_only: true,
            ..base()
        },
    ] {
        let r = ring(
            "read-only",
            RingScript::new(&cfg)
                .push(&write(0, 1))
                .push(&read(0, 1))
                .push(&PushReq {
                    op: 4, // flush with data is a write
                    ..write(8, 1)
                })
                .publish()
                .kick()
                .complete_all(Outcome::Ok),
        );
        assert_eq!((r.okay, r.error), (1, 2), "{cfg:?}");
    }
}

#[test]
fn seed_flush_and_barrier() {
    let script = |cfg: &RingConfig| {
        let mut s = RingScript::new(cfg);
        s.push(&read(0, 1))
            .push(&write(40, 1))
            .push(&PushReq {
                op: 5,
                ..write(16, 1)
            })
            .push(&PushReq {
                op: 5,
                ..read(0, 0)
            })
            .push(&PushReq {
                op: 4,
                ..read(0, 0)
            })
            .push(&PushReq {
                op: 4,
                ..write(24, 2)
            })
            .publish()
            .kick()
            .complete_one(1, Outcome::Ok)
            .complete_one(0, Outcome::Ok)
            .complete_all(Outcome::Ok);
        s
    };
    let r = ring("flush-barrier", &script(&base()));
    assert_eq!((r.okay, r.error, r.not_supported), (6, 0, 0));
    let no_flush = RingConfig {
        can_flush: false,
        ..base()
    };
    let r = ring("no-flush", &script(&no_flush));
    assert_eq!((r.okay, r.not_supported), (2, 4));
}

#[test]
fn seed_persistent_grants() {
    // Every segment of a pushed request names the same data page: with
    // persistent grants two segments are a duplicate, refused; and a page
    // still held by the first read (bound when it was taken off the ring)
    // is refused to the write behind it.
    let cfg = RingConfig {
        persistent: true,
        ..base()
    };
    let r = ring(
        "persistent",
        RingScript::new(&cfg)
            .push(&read(0, 1))
            .push(&read(8, 2))
            .push(&write(16, 1))
            .publish()
            .kick()
            .complete_all(Outcome::Ok),
    );
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
            .push(&read(0, 1))
            .push(&PushReq {
                gref: 3,
                ..read(8, 1)
            })
            .publish()
            .kick()
            .complete_all(Outcome::Ok)
            .push(&PushReq {
                gref: 5,
                ..read(16, 1)
            })
            .publish()
            .kick()
            .complete_all(Outcome::Ok)
            .push(&read(24, 1))
            .publish()
            .kick()
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
            .push(&PushReq {
                op: 7,
                raw_op: 200,
                ..read(0, 1)
            })
            .publish()
            .kick(),
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
            .push(&read(0, 1))
            .push(&write(16, 1))
            .push(&read(32, 1))
            .push(&write(48, 3))
            .publish()
            .kick()
            .complete_one(2, Outcome::Io)
            .complete_one(0, Outcome::Ok)
            .complete_one(1, Outcome::Gone)
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
            .push(&read(0, 1))
            .push(&write(16, 1))
            .publish()
            .kick()
            .frontend_state(5) // Closing with two I/Os in flight
            .push(&read(32, 1))
            .publish()
            .kick() // ignored: closing
            .complete_all(Outcome::Ok)
            .frontend_state(6)
            .frontend_state(3) // reconnects: online
            .push(&read(0, 1))
            .publish()
            .kick()
            .complete_all(Outcome::Ok),
    );
    assert_eq!(r.connects, 2);
    assert_eq!(r.okay, 3);
}

#[test]
fn seed_pool_shortage() {
    let cfg = RingConfig {
        max_requests: 1, // one request in service at a time
        ..base()
    };
    let r = ring(
        "pool-shortage",
        RingScript::new(&cfg)
            .push(&read(0, 1))
            .push(&read(16, 1))
            .push(&write(32, 1))
            .push(&read(48, 1))
            .publish()
            .kick()
            .complete_all(Outcome::Ok),
    );
    assert_eq!((r.okay, r.max_in_flight), (4, 1));
}

/// Two 11-page I/Os through an 11-page window: the second waits for the
/// first.
#[test]
fn seed_window_shortage() {
    let r = ring(
        "kva-shortage",
        RingScript::new(&small_window())
            .push(&read(0, 11))
            .push(&read(20, 11))
            .publish()
            .kick()
            .complete_all(Outcome::Ok),
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
    let r = ring(
        "kva-shortage-2",
        RingScript::new(&small_window())
            .push(&read(0, 11))
            .push(&read(20, 11))
            .push(&write(40, 11))
            .publish()
            .kick()
            .complete_all(Outcome::Ok),
    );
    assert_eq!((r.okay, r.max_in_flight), (3, 1));
}

#[test]
fn seed_requests_per_pass() {
    let cfg = RingConfig {
        requests_per_pass: 1,
        ..base()
    };
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
                .push(&read(0, 2))
                .publish()
                .kick()
                .complete_all(Outcome::Ok),
        )
    };
    assert_eq!((io(Fault::Map).error, io(Fault::Submit).error), (1, 1));

    let late = RingConfig {
        connect_at_attach: false,
        ..base()
    };
    for fault in [Fault::RingMap, Fault::Bind, Fault::Window] {
        let r = ring(
            "fault-connect",
            RingScript::new(&late)
                .inject(fault, 0)
                .frontend_state(3)
                .push(&read(0, 1))
                .publish()
                .kick(),
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
    let root_later = RingConfig {
        root_later: true,
        ..base()
    };
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
    let cfg = RingConfig {
        root_later: true,
        ..base()
    };
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
    let cfg = RingConfig {
        sector_4k: true,
        ..base()
    };
    let r = ring(
        "4k",
        RingScript::new(&cfg)
            .push(&read(0, 2))
            .push(&PushReq {
                range: 65, // sectors 1..=7: not a whole 4 KiB block
                ..read(8, 1)
            })
            .push(&PushReq {
                sector: 255,
                raw_sector: 3,
                ..read(0, 1)
            })
            .publish()
            .kick()
            .complete_all(Outcome::Ok),
    );
    assert_eq!((r.okay, r.error), (1, 2));
}

#[test]
fn seed_slot_rewritten_after_consumption() {
    let r = ring(
        "rewrite",
        RingScript::new(&base())
            .push(&read(0, 1))
            .publish()
            .kick()
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
        save("request", &format!("seed-{i}"), c);
        fuzz_request(c);
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
        save("xenstore", &format!("seed-{i}"), c);
        fuzz_xenstore(c);
    }
}
