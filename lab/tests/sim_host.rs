//! Integration tests of the simulated Xen host's pieces: guest memory, grant
//! table, real grant mappings into the data window, ring mapping, event
//! channels, XenStore, toolstack, store I/O through `SimHost`, and the
//! back-end task runner.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use xbb::host::{
    DomId, GrantError, GrantHandle, GrantMapOp, GrantRef, GrantUnmapOp, Granted, Host, IoOp, IoTag,
    IoVec, OpenParams, QueueHost, RemotePort, XenStore, XenbusState, XsError, XsTxn, PAGE_SIZE,
};
use xbb::units::{Bytes, Sectors, WindowPage};
use xbb_lab::backend::{BackendRunner, Start};
use xbb_lab::evtchn::{EventHandler, EventHub};
use xbb_lab::ffi::{read_window, write_window};
use xbb_lab::gnttab::{GrantBusy, MapFault};
use xbb_lab::host::{Domain, GrantMapping, SimHost, SimHostConfig, SimXen};
use xbb_lab::memory::MemError;
use xbb_lab::toolstack::{create_vbd, destroy_vbd, remove_vbd, vdev_name, VbdSpec};
use xbb_lab::world::{VbdConfig, VbdHandle, World};
use xbb_lab::xenstore::{WatchEvent, WatchId, Xenstored, WATCH_PENDING_MAX};
use xbb_lab::TaskEvent;

const GUEST: DomId = 1;
const WAIT: Duration = Duration::from_secs(30);

/// The host's queue part (every host here serves its queues inline).
fn q(host: &mut SimHost) -> &mut dyn QueueHost {
    host.inline().expect("an inline host")
}

fn setup(frames: u64) -> (SimXen, Domain, SimHost, Receiver<TaskEvent>) {
    setup_mapped(frames, GrantMapping::Faulting)
}

/// Both ways of mapping grants: what the back-end depends on (which maps
/// succeed and fail, with which error; what I/O is refused) must not
/// differ between them.
const MAPPINGS: [GrantMapping; 2] = [GrantMapping::Faulting, GrantMapping::Premapped];

/// [`setup`] with grants mapped the `mapping` way.
fn setup_mapped(
    frames: u64,
    mapping: GrantMapping,
) -> (SimXen, Domain, SimHost, Receiver<TaskEvent>) {
    let xen = SimXen::new();
    let d = xen
        .create_guest(GUEST, frames, "guest")
        .expect("create guest");
    let (tx, rx) = mpsc::channel();
    // Inline: the host's events, runs and completions come to `tx`, where
    // these tests look at them (lent queues are driven through World).
    let cfg = SimHostConfig {
        inline: true,
        grant_mapping: mapping,
        ..SimHostConfig::default()
    };
    let host = SimHost::new(&xen, cfg, tx);
    (xen, d, host, rx)
}

/// A counter and an event-channel handler that counts into it.
fn counting_handler() -> (Arc<AtomicU64>, EventHandler) {
    let hits = Arc::new(AtomicU64::new(0));
    let h = Arc::clone(&hits);
    let handler = Box::new(move || {
        h.fetch_add(1, Ordering::SeqCst);
    });
    (hits, handler)
}

fn pattern(seed: u8) -> Vec<u8> {
    (0..PAGE_SIZE)
        .map(|i| (i as u8).wrapping_mul(7).wrapping_add(seed))
        .collect()
}

fn map1(host: &mut SimHost, gref: u32, page: u32, ro: bool) -> Result<GrantHandle, GrantError> {
    let mut r = [Err(GrantError::General)];
    q(host).map_batch(
        GUEST,
        &[GrantMapOp {
            gref,
            window_page: WindowPage(page),
            readonly: ro,
        }],
        &mut r,
    );
    r[0]
}

#[test]
fn guest_memory_bounds_and_allocator() {
    let (_xen, d, _host, _rx) = setup(4);
    let m = &d.memory;
    assert_eq!(m.frames(), 4);
    let mut b = [0u8; 8];
    assert_eq!(m.read(4, 0, &mut b), Err(MemError::OutOfRange));
    assert_eq!(m.write(0, PAGE_SIZE - 4, &b), Err(MemError::OutOfRange));
    m.write(3, PAGE_SIZE - 8, b"abcdefgh").unwrap();
    m.read(3, PAGE_SIZE - 8, &mut b).unwrap();
    assert_eq!(&b, b"abcdefgh");
    m.fill(3, 0, PAGE_SIZE, 0x5a).unwrap();
    m.read(3, 100, &mut b).unwrap();
    assert_eq!(b, [0x5a; 8]);

    let mut got = Vec::new();
    while let Some(g) = m.alloc_frame() {
        got.push(g);
    }
    got.sort();
    assert_eq!(got, vec![0, 1, 2, 3]);
    assert_eq!(m.free_frames(), 0);
    m.free_frame(1).unwrap();
    m.free_frame(2).unwrap();
    assert_eq!(m.free_frame(2), Err(MemError::NotAllocated));
    assert_eq!(m.alloc_contiguous(2), Some(1));
    assert_eq!(m.alloc_frame(), None);
}

#[test]
fn mapped_grant_shows_guest_bytes_in_window() {
    let (_xen, d, mut host, _rx) = setup(8);
    let data = pattern(3);
    d.memory.write(5, 0, &data).unwrap();
    let gref = d.grants.grant(5, 0, true);
    host.window_reserve(4).unwrap();
    let h = map1(&mut host, gref, 2, true).expect("map");
    let addr = host.window_addr(2 * PAGE_SIZE).unwrap();
    let mut seen = vec![0u8; PAGE_SIZE];
    read_window(addr, &mut seen).unwrap();
    assert_eq!(seen, data);
    // The guest changes its page: the mapping is the page itself, not a copy.
    d.memory.write(5, 10, b"live").unwrap();
    let mut four = [0u8; 4];
    read_window(addr + 10, &mut four).unwrap();
    assert_eq!(&four, b"live");
    // Unmapped window pages are inaccessible.
    let other = host.window_addr(PAGE_SIZE).unwrap();
    assert!(read_window(other, &mut four).is_err());
    q(&mut host).unmap_batch(&[GrantUnmapOp {
        window_page: WindowPage(2),
        handle: h,
    }]);
    assert!(read_window(addr, &mut four).is_err());
    let s = d.grants.stats();
    assert_eq!((s.maps, s.unmaps, s.mapped), (1, 1, 0));
}

#[test]
fn writable_mapping_writes_guest_memory_and_readonly_refuses_writes() {
    let (_xen, d, mut host, _rx) = setup(8);
    host.window_reserve(4).unwrap();
    let w = d.grants.grant(1, 0, false);
    let hw = map1(&mut host, w, 0, false).expect("map writable");
    write_window(host.window_addr(100).unwrap(), b"from the back-end").unwrap();
    let mut b = [0u8; 17];
    d.memory.read(1, 100, &mut b).unwrap();
    assert_eq!(&b, b"from the back-end");

    // A read-only grant mapped writable is refused, and nothing is mapped.
    let r = d.grants.grant(2, 0, true);
    assert_eq!(map1(&mut host, r, 1, false), Err(GrantError::Denied));
    assert_eq!(d.grants.map_count(r), 0);
    // Mapped read-only, a write through the window fails and the guest page
    // is unchanged.
    let hr = map1(&mut host, r, 1, true).expect("map read-only");
    assert!(write_window(host.window_addr(PAGE_SIZE).unwrap(), b"x").is_err());
    let mut one = [9u8; 1];
    d.memory.read(2, 0, &mut one).unwrap();
    assert_eq!(one, [0]);
    q(&mut host).unmap_batch(&[
        GrantUnmapOp {
            window_page: WindowPage(0),
            handle: hw,
        },
        GrantUnmapOp {
            window_page: WindowPage(1),
            handle: hr,
        },
    ]);
    assert_eq!(d.grants.stats().mapped, 0);
    assert_eq!(host.stats().window_mapped, 0);
}

#[test]
fn adjacent_window_pages_form_one_buffer() {
    let (_xen, d, mut host, _rx) = setup(16);
    // Frames far apart in the guest, adjacent in the window.
    d.memory.write(9, 0, &pattern(1)).unwrap();
    d.memory.write(2, 0, &pattern(2)).unwrap();
    let g1 = d.grants.grant(9, 0, false);
    let g2 = d.grants.grant(2, 0, false);
    host.window_reserve(8).unwrap();
    let mut res = [Err(GrantError::General); 2];
    q(&mut host).map_batch(
        GUEST,
        &[
            GrantMapOp {
                gref: g1,
                window_page: WindowPage(4),
                readonly: false,
            },
            GrantMapOp {
                gref: g2,
                window_page: WindowPage(5),
                readonly: false,
            },
        ],
        &mut res,
    );
    assert!(res.iter().all(|r| r.is_ok()));
    let mut buf = vec![0u8; 2 * PAGE_SIZE];
    read_window(host.window_addr(4 * PAGE_SIZE).unwrap(), &mut buf).unwrap();
    let mut want = pattern(1);
    want.extend(pattern(2));
    assert_eq!(buf, want);
    // A write spanning the page boundary lands in both guest frames.
    write_window(host.window_addr(5 * PAGE_SIZE - 2).unwrap(), b"ABCD").unwrap();
    let mut a = [0u8; 2];
    d.memory.read(9, PAGE_SIZE - 2, &mut a).unwrap();
    assert_eq!(&a, b"AB");
    d.memory.read(2, 0, &mut a).unwrap();
    assert_eq!(&a, b"CD");
}

#[test]
fn window_page_outside_window_or_busy_is_refused() {
    for mapping in MAPPINGS {
        let (_xen, d, mut host, _rx) = setup_mapped(8, mapping);
        let g = d.grants.grant(0, 0, false);
        // No window yet.
        assert!(map1(&mut host, g, 0, false).is_err());
        host.window_reserve(2).unwrap();
        assert!(map1(&mut host, g, 2, false).is_err());
        let h = map1(&mut host, g, 1, false).unwrap();
        assert!(map1(&mut host, g, 1, false).is_err());
        assert_eq!(d.grants.map_count(g), 1);
        // A wrong handle is not unmapped.
        q(&mut host).unmap_batch(&[GrantUnmapOp {
            window_page: WindowPage(1),
            handle: GrantHandle(h.0.wrapping_add(100)),
        }]);
        assert_eq!(host.stats().bad_unmaps, 1);
        assert_eq!(d.grants.map_count(g), 1);
        // Releasing the window with a page mapped unmaps it and says so.
        host.window_release();
        assert_eq!(host.stats().leaked_at_release, 1);
        assert_eq!(d.grants.map_count(g), 0);
    }
}

#[test]
fn end_access_fails_while_mapped_and_revoked_grant_cannot_be_mapped() {
    for mapping in MAPPINGS {
        let (_xen, d, mut host, _rx) = setup_mapped(8, mapping);
        host.window_reserve(2).unwrap();
        let g = d.grants.grant(3, 0, false);
        let h = map1(&mut host, g, 0, false).unwrap();
        assert_eq!(d.grants.end_access(g), Err(GrantBusy));
        assert!(d.grants.is_granted(g));
        q(&mut host).unmap_batch(&[GrantUnmapOp {
            window_page: WindowPage(0),
            handle: h,
        }]);
        assert_eq!(d.grants.end_access(g), Ok(()));
        assert!(!d.grants.is_granted(g));
        assert_eq!(map1(&mut host, g, 0, false), Err(GrantError::BadRef));
        // A grant to another domain is not ours to map either.
        let other = d.grants.grant(3, 7, false);
        assert_eq!(map1(&mut host, other, 0, false), Err(GrantError::BadRef));
        // Nor are reserved references.
        assert_eq!(map1(&mut host, 0, 0, false), Err(GrantError::BadRef));
        assert_eq!(d.grants.stats().mapped, 0);
    }
}

#[test]
fn injected_map_failures_are_reported_per_entry() {
    for mapping in MAPPINGS {
        let (_xen, d, mut host, _rx) = setup_mapped(8, mapping);
        host.window_reserve(8).unwrap();
        let g: Vec<u32> = (0..3).map(|f| d.grants.grant(f, 0, false)).collect();
        d.grants.inject_map_failures(MapFault::Gref {
            gref: g[1],
            error: GrantError::NoSpace,
        });
        let ops: Vec<GrantMapOp> = g
            .iter()
            .enumerate()
            .map(|(i, &gref)| GrantMapOp {
                gref,
                window_page: WindowPage(i as u32),
                readonly: false,
            })
            .collect();
        let mut res = [Err(GrantError::General); 3];
        q(&mut host).map_batch(GUEST, &ops, &mut res);
        assert!(res[0].is_ok());
        assert_eq!(res[1], Err(GrantError::NoSpace));
        assert!(res[2].is_ok());
        assert_eq!(host.stats().window_mapped, 2);
        if mapping == GrantMapping::Faulting {
            // The failed entry's page is not mapped: touching it faults.
            let mut b = [0u8; 1];
            assert!(read_window(host.window_addr(PAGE_SIZE).unwrap(), &mut b).is_err());
        }
        let unmaps: Vec<GrantUnmapOp> = [0usize, 2]
            .iter()
            .map(|&i| GrantUnmapOp {
                window_page: WindowPage(i as u32),
                handle: res[i].unwrap(),
            })
            .collect();
        q(&mut host).unmap_batch(&unmaps);

        d.grants.clear_map_failures();
        d.grants.inject_map_failures(MapFault::Next {
            count: 1,
            error: GrantError::General,
        });
        let mut res = [Err(GrantError::General); 3];
        q(&mut host).map_batch(GUEST, &ops, &mut res);
        assert_eq!(res[0], Err(GrantError::General));
        assert!(res[1].is_ok() && res[2].is_ok());
        let s = d.grants.stats();
        assert_eq!(s.injected_failures, 2);
        assert_eq!(s.mapped, 2);
        assert_eq!(host.stats().map_failures, 2);
    }
}

#[test]
fn a_grant_is_checked_alike_in_either_mapping() {
    for mapping in MAPPINGS {
        let (xen, d, mut host, _rx) = setup_mapped(8, mapping);
        host.window_reserve(4).unwrap();
        // A read-only grant mapped writable is denied; read-only it maps.
        let ro = d.grants.grant(2, 0, true);
        assert_eq!(map1(&mut host, ro, 0, false), Err(GrantError::Denied));
        let h = map1(&mut host, ro, 0, true).expect("read-only map");
        // A grant naming a frame beyond the guest's RAM is refused.
        let beyond = d.grants.grant(8, 0, false);
        assert_eq!(map1(&mut host, beyond, 1, false), Err(GrantError::General));
        // An unknown reference, and one granted to another domain.
        assert_eq!(map1(&mut host, 4000, 1, false), Err(GrantError::BadRef));
        let other = d.grants.grant(3, 9, false);
        assert_eq!(map1(&mut host, other, 1, false), Err(GrantError::BadRef));
        // A page of another domain through the same window: a premapped
        // window serves the one domain it first mapped.
        let d2 = xen.create_guest(2, 8, "other").expect("second guest");
        let g2 = d2.grants.grant(1, 0, false);
        let mut r = [Err(GrantError::General)];
        q(&mut host).map_batch(
            2,
            &[GrantMapOp {
                gref: g2,
                window_page: WindowPage(2),
                readonly: false,
            }],
            &mut r,
        );
        match mapping {
            GrantMapping::Faulting => {
                let h2 = r[0].expect("another domain's grant");
                q(&mut host).unmap_batch(&[GrantUnmapOp {
                    window_page: WindowPage(2),
                    handle: h2,
                }]);
                assert!(host.window_addr(0).is_some());
            }
            GrantMapping::Premapped => {
                assert_eq!(r[0], Err(GrantError::General));
                assert_eq!(host.window_addr(0), None);
            }
        }
        assert_eq!(d2.grants.stats().mapped, 0, "{mapping:?}");
        q(&mut host).unmap_batch(&[GrantUnmapOp {
            window_page: WindowPage(0),
            handle: h,
        }]);
        let s = host.stats();
        assert_eq!((s.window_mapped, s.bad_unmaps), (0, 0), "{mapping:?}");
        assert_eq!(d.grants.stats().mapped, 0, "{mapping:?}");
        assert_eq!(
            s.map_failures,
            4 + u64::from(mapping == GrantMapping::Premapped)
        );
    }
}

#[test]
fn the_grant_table_serves_threads_at_once() {
    let (_xen, d, _host, _rx) = setup(64);
    let per_thread = 2000u32;
    let threads: Vec<_> = (0..4u64)
        .map(|t| {
            let g = d.grants.clone();
            std::thread::spawn(move || {
                let mut live = std::collections::HashSet::new();
                for i in 0..per_thread {
                    let gref = g.grant(t * 16 + u64::from(i % 16), 0, false);
                    assert!(live.insert(gref), "reference {gref} handed out twice");
                    let (_, h) = g.map(gref, 0, false).expect("map");
                    assert_eq!(g.end_access(gref), Err(GrantBusy));
                    g.unmap(h).expect("unmap");
                    if i % 3 != 0 {
                        g.end_access(gref).expect("end");
                        live.remove(&gref);
                    }
                }
                live
            })
        })
        .collect();
    let mut all = std::collections::HashSet::new();
    for t in threads {
        for gref in t.join().expect("thread") {
            assert!(all.insert(gref), "reference {gref} live in two threads");
        }
    }
    let s = d.grants.stats();
    assert_eq!(s.maps, 4 * u64::from(per_thread));
    assert_eq!((s.unmaps, s.mapped, s.bad_unmaps), (s.maps, 0, 0));
    assert_eq!(s.active_grants, all.len() as u64);
    for gref in all {
        assert!(d.grants.is_granted(gref));
        d.grants.end_access(gref).expect("end");
    }
    assert_eq!(d.grants.stats().active_grants, 0);
}

#[test]
fn ring_mapping_is_the_guest_pages() {
    let (_xen, d, mut host, _rx) = setup(8);
    let first = d.memory.alloc_contiguous(2).unwrap();
    d.memory.write(first, 0, &pattern(4)).unwrap();
    d.memory.write(first + 1, 0, &pattern(5)).unwrap();
    let grefs = [
        d.grants.grant(first, 0, false),
        d.grants.grant(first + 1, 0, false),
    ];
    let ring = host
        .map_ring(
            0,
            Granted {
                dom: GUEST,
                grefs: &grefs,
            },
        )
        .expect("map ring");
    assert_eq!(ring.len(), 2 * PAGE_SIZE);
    let mut buf = vec![0u8; 2 * PAGE_SIZE];
    ring.read(0, &mut buf);
    let mut want = pattern(4);
    want.extend(pattern(5));
    assert_eq!(buf, want);
    // Both sides see each other's index stores.
    let guest = d.memory.shared(first, 2).unwrap();
    guest.store_u32(0, 1234, Ordering::Release);
    assert_eq!(ring.load_u32(0, Ordering::Acquire), 1234);
    ring.store_u32(PAGE_SIZE + 4, 99, Ordering::Release);
    assert_eq!(guest.load_u32(PAGE_SIZE + 4, Ordering::Acquire), 99);
    // A second ring is refused while one is mapped.
    assert!(host
        .map_ring(
            0,
            Granted {
                dom: GUEST,
                grefs: &grefs
            }
        )
        .is_err());
    assert_eq!(d.grants.stats().mapped, 2);
    host.unmap_ring(0, ring);
    assert_eq!(d.grants.stats().mapped, 0);
    assert_eq!(host.stats().ring_pages, 0);
    assert!(grefs.iter().all(|&g| d.grants.end_access(g).is_ok()));
}

#[test]
fn failed_ring_mapping_leaves_nothing_mapped() {
    let (_xen, d, mut host, _rx) = setup(8);
    let g0 = d.grants.grant(0, 0, false);
    let g1 = d.grants.grant(1, 0, true); // read-only: ring maps are writable
    assert_eq!(
        host.map_ring(
            0,
            Granted {
                dom: GUEST,
                grefs: &[g0, g1]
            }
        )
        .err(),
        Some(GrantError::Denied)
    );
    assert_eq!(
        host.map_ring(
            0,
            Granted {
                dom: 9,
                grefs: &[g0]
            }
        )
        .err(),
        Some(GrantError::BadRef)
    );
    assert_eq!(d.grants.stats().mapped, 0);
    assert_eq!(host.stats().ring_pages, 0);
}

#[test]
fn xenstore_read_write_directory_remove() {
    let xs = Xenstored::new();
    xs.write("/a/b/c", "1").unwrap();
    assert_eq!(xs.read("/a/b").unwrap(), b"");
    assert_eq!(xs.read_str("/a/b/c").unwrap(), "1");
    xs.write("/a/b/d", "2").unwrap();
    xs.write("/a/bc", "3").unwrap();
    assert_eq!(xs.directory("/a/b").unwrap(), vec!["c", "d"]);
    assert_eq!(xs.directory("/a").unwrap(), vec!["b", "bc"]);
    assert_eq!(xs.read("/nope"), Err(XsError::NotFound));
    assert!(xs.write("relative", "x").is_err());
    assert!(xs.write("/bad//path", "x").is_err());
    assert!(xs.write("/a/big", vec![b'x'; 4097]).is_err());
    xs.write("/a/big", vec![b'x'; 4096]).unwrap();
    xs.remove("/a/b").unwrap();
    assert_eq!(xs.read("/a/b/c"), Err(XsError::NotFound));
    assert_eq!(xs.read_str("/a/bc").unwrap(), "3");
    assert_eq!(xs.remove("/a/b"), Err(XsError::NotFound));
}

#[test]
fn xenstore_watch_fires_on_registration_writes_and_removes() {
    let xs = Xenstored::new();
    let fired = Arc::new(Mutex::new(Vec::<String>::new()));
    let f = Arc::clone(&fired);
    let id = xs
        .watch(
            "/w/x",
            Box::new(move |p: &str| f.lock().unwrap().push(p.to_string())),
        )
        .unwrap();
    xs.write("/w/x/state", "4").unwrap();
    xs.write("/w/xy", "no").unwrap(); // sibling with a common prefix
    xs.write("/w/x", "self").unwrap();
    xs.remove("/w").unwrap(); // removal above the watch fires with the watch path
    assert!(xs.unwatch(id));
    xs.write("/w/x", "after").unwrap();
    assert_eq!(
        *fired.lock().unwrap(),
        vec!["/w/x", "/w/x/state", "/w/x", "/w/x"]
    );
}

#[test]
fn xenstore_watch_callback_may_use_the_store() {
    let xs = Xenstored::new();
    let seen = Arc::new(AtomicU32::new(0));
    let (xs2, s2) = (xs.clone(), Arc::clone(&seen));
    xs.watch(
        "/k",
        Box::new(move |_p: &str| {
            // Would deadlock if callbacks ran under the store's lock.
            if xs2.read("/k").is_ok() {
                s2.fetch_add(1, Ordering::SeqCst);
            }
        }),
    )
    .unwrap();
    xs.write("/k", "v").unwrap();
    assert_eq!(seen.load(Ordering::SeqCst), 1);
}

#[test]
fn xenstore_transactions_isolate_and_conflict() {
    let xs = Xenstored::new();
    xs.write("/t/a", "0").unwrap();
    let t = xs.transaction_start();
    assert_eq!(xs.read_in(t, "/t/a").unwrap(), b"0");
    xs.write_in(t, "/t/b", b"new").unwrap();
    assert_eq!(xs.read("/t/b"), Err(XsError::NotFound)); // invisible until commit
    assert_eq!(xs.read_in(t, "/t/b").unwrap(), b"new");
    xs.transaction_end(t, true).unwrap();
    assert_eq!(xs.read("/t/b").unwrap(), b"new");

    // Someone else changes a node the transaction read: Again, nothing applied.
    let t = xs.transaction_start();
    xs.read_in(t, "/t/a").unwrap();
    xs.write_in(t, "/t/c", b"c").unwrap();
    xs.write("/t/a", "1").unwrap();
    assert_eq!(xs.transaction_end(t, true), Err(XsError::Again));
    assert_eq!(xs.read("/t/c"), Err(XsError::NotFound));

    // A node read as absent and created meanwhile conflicts too.
    let t = xs.transaction_start();
    assert_eq!(xs.read_in(t, "/t/z"), Err(XsError::NotFound));
    xs.write("/t/z", "z").unwrap();
    assert_eq!(xs.transaction_end(t, true), Err(XsError::Again));

    // Unrelated changes do not conflict.
    let t = xs.transaction_start();
    xs.read_in(t, "/t/a").unwrap();
    xs.write_in(t, "/t/d", b"d").unwrap();
    xs.write("/other", "x").unwrap();
    xs.transaction_end(t, true).unwrap();
    assert_eq!(xs.read("/t/d").unwrap(), b"d");

    // Aborted transactions apply nothing; ended ones are gone.
    let t = xs.transaction_start();
    xs.write_in(t, "/t/e", b"e").unwrap();
    xs.transaction_end(t, false).unwrap();
    assert_eq!(xs.read("/t/e"), Err(XsError::NotFound));
    assert!(xs.transaction_end(t, true).is_err());
    assert_eq!(xs.open_transactions(), 0);
}

#[test]
fn host_xenstore_trait_refuses_values_longer_than_the_buffer() {
    let (xen, _d, mut host, _rx) = setup(1);
    xen.xenstore.write("/x", "hello").unwrap();
    let mut small = [0u8; 4];
    assert_eq!(
        host.xs_read(XsTxn::NONE, "/x", &mut small),
        Err(XsError::TooLong)
    );
    let mut buf = [0u8; 16];
    assert_eq!(host.xs_read(XsTxn::NONE, "/x", &mut buf), Ok(5));
    assert_eq!(&buf[..5], b"hello");
    assert_eq!(host.xs_remove(XsTxn::NONE, "/absent"), Ok(()));
    let t = host.xs_transaction_start().unwrap();
    host.xs_write(t, "/y", "1").unwrap();
    host.xs_transaction_end(t, true).unwrap();
    assert_eq!(xen.xenstore.read_str("/y").unwrap(), "1");
}

#[test]
fn event_channels_deliver_to_the_peer_handler() {
    let hub = EventHub::new();
    let fe_port = hub.alloc_unbound(1, 0);
    // Only the domain it was offered to may bind it.
    assert!(hub.bind_interdomain(2, 1, fe_port).is_err());
    let be_port = hub.bind_interdomain(0, 1, fe_port).unwrap();
    assert!(hub.bind_interdomain(0, 1, fe_port).is_err()); // no longer unbound
    let (fe_hits, handler) = counting_handler();
    hub.set_handler(1, fe_port, handler).unwrap();
    hub.notify(0, be_port).unwrap();
    hub.notify(0, be_port).unwrap();
    assert_eq!(fe_hits.load(Ordering::SeqCst), 2);
    assert_eq!(hub.received(1, fe_port), 2);
    assert_eq!(hub.sent(0, be_port), 2);
    // An event before a handler is set is pending and delivered on set.
    hub.notify(1, fe_port).unwrap();
    let (be_hits, handler) = counting_handler();
    hub.set_handler(0, be_port, handler).unwrap();
    assert_eq!(be_hits.load(Ordering::SeqCst), 1);
    hub.close(0, be_port);
    assert!(hub.notify(1, fe_port).is_err());
}

#[test]
fn host_event_channel_reaches_the_task_and_the_guest() {
    let (xen, _d, mut host, rx) = setup(1);
    let fe_port = xen.evtchn.alloc_unbound(GUEST, 0);
    let (kicks, handler) = counting_handler();
    xen.evtchn.set_handler(GUEST, fe_port, handler).unwrap();
    assert!(host
        .evtchn_bind(
            0,
            RemotePort {
                dom: GUEST,
                port: fe_port + 1
            }
        )
        .is_err());
    host.evtchn_bind(
        0,
        RemotePort {
            dom: GUEST,
            port: fe_port,
        },
    )
    .unwrap();
    xen.evtchn.notify(GUEST, fe_port).unwrap();
    assert_eq!(rx.recv_timeout(WAIT), Ok(TaskEvent::Evtchn(0)));
    q(&mut host).evtchn_notify(0);
    assert_eq!(kicks.load(Ordering::SeqCst), 1);
    assert_eq!(host.stats().notifies, 1);
    host.evtchn_unbind(0);
    assert!(xen.evtchn.notify(GUEST, fe_port).is_err());
}

#[test]
fn toolstack_writes_the_vbd_nodes() {
    let xs = Xenstored::new();
    let mut spec = VbdSpec::new(3, 51712, "/tmp/disk.img");
    spec.mode = "r".into();
    let p = create_vbd(&xs, &spec).unwrap();
    assert_eq!(p.backend, "/local/domain/0/backend/vbd/3/51712");
    assert_eq!(p.frontend, "/local/domain/3/device/vbd/51712");
    let r = |n: &str| xs.read_str(n).unwrap();
    assert_eq!(r(&format!("{}/frontend", p.backend)), p.frontend);
    assert_eq!(r(&format!("{}/backend", p.frontend)), p.backend);
    assert_eq!(r(&format!("{}/frontend-id", p.backend)), "3");
    assert_eq!(r(&format!("{}/backend-id", p.frontend)), "0");
    assert_eq!(r(&format!("{}/params", p.backend)), "/tmp/disk.img");
    assert_eq!(r(&format!("{}/mode", p.backend)), "r");
    assert_eq!(r(&format!("{}/type", p.backend)), "file");
    assert_eq!(r(&format!("{}/dev", p.backend)), "xvda");
    assert_eq!(r(&format!("{}/online", p.backend)), "1");
    assert_eq!(r(&format!("{}/state", p.backend)), "1");
    assert_eq!(r(&format!("{}/state", p.frontend)), "1");
    assert_eq!(r(&format!("{}/virtual-device", p.frontend)), "51712");
    destroy_vbd(&xs, &p).unwrap();
    assert_eq!(r(&format!("{}/state", p.backend)), "5");
    assert_eq!(r(&format!("{}/online", p.backend)), "0");
    remove_vbd(&xs, &p).unwrap();
    assert!(!xs.exists(&p.backend) && !xs.exists(&p.frontend));
    assert_eq!(vdev_name(51728), "xvdb");
    assert_eq!(vdev_name(51713), "xvda1");
    assert_eq!(vdev_name(768), "hda");
    assert_eq!(vdev_name((1 << 28) | (26 << 8)), "xvdaa");
}

fn temp_file(tag: &str, content: &[u8]) -> std::path::PathBuf {
    static N: AtomicU32 = AtomicU32::new(0);
    let p = std::env::temp_dir().join(format!(
        "xbb-simhost-{}-{}-{}",
        std::process::id(),
        tag,
        N.fetch_add(1, Ordering::SeqCst)
    ));
    std::fs::write(&p, content).unwrap();
    p
}

#[test]
fn store_io_goes_through_the_window() {
    for mapping in MAPPINGS {
        let (_xen, d, mut host, rx) = setup_mapped(8, mapping);
        let mut disk = vec![0u8; 64 * 1024];
        for (i, b) in disk.iter_mut().enumerate() {
            *b = (i / 512) as u8 ^ 0xa5;
        }
        let path = temp_file("io", &disk);
        let info = host
            .store_open(OpenParams {
                path: path.to_str().unwrap(),
                kind: "file",
                writable: true,
                direct_io_safe: false,
            })
            .expect("open");
        assert_eq!(info.sectors, Sectors(128));
        host.window_reserve(4).unwrap();
        // Guest READ of 2 pages at byte 8192 into two guest frames.
        let g = [d.grants.grant(6, 0, false), d.grants.grant(1, 0, false)];
        let mut res = [Err(GrantError::General); 2];
        let ops = [
            GrantMapOp {
                gref: g[0],
                window_page: WindowPage(1),
                readonly: false,
            },
            GrantMapOp {
                gref: g[1],
                window_page: WindowPage(2),
                readonly: false,
            },
        ];
        q(&mut host).map_batch(GUEST, &ops, &mut res);
        let iov = [IoVec {
            window_offset: PAGE_SIZE,
            len: 2 * PAGE_SIZE,
        }];
        q(&mut host)
            .store_submit(
                IoTag(7),
                IoOp::Read {
                    offset: Bytes(8192),
                    iov: &iov,
                },
            )
            .unwrap();
        assert_eq!(rx.recv_timeout(WAIT), Ok(TaskEvent::Io(IoTag(7), Ok(()))));
        let mut page = vec![0u8; PAGE_SIZE];
        d.memory.read(6, 0, &mut page).unwrap();
        assert_eq!(page, disk[8192..12288]);
        d.memory.read(1, 0, &mut page).unwrap();
        assert_eq!(page, disk[12288..16384]);
        q(&mut host).unmap_batch(&[
            GrantUnmapOp {
                window_page: WindowPage(1),
                handle: res[0].unwrap(),
            },
            GrantUnmapOp {
                window_page: WindowPage(2),
                handle: res[1].unwrap(),
            },
        ]);

        // Guest WRITE from a read-only mapping.
        d.memory.write(3, 0, &pattern(9)).unwrap();
        let gw = d.grants.grant(3, 0, true);
        let h = map1(&mut host, gw, 0, true).unwrap();
        let iov = [IoVec {
            window_offset: 0,
            len: PAGE_SIZE,
        }];
        // A read into a read-only page is a core bug: refused before the store.
        assert!(q(&mut host)
            .store_submit(
                IoTag(8),
                IoOp::Read {
                    offset: Bytes(0),
                    iov: &iov
                }
            )
            .is_err());
        assert_eq!(host.stats().bad_iovecs, 1);
        q(&mut host)
            .store_submit(
                IoTag(9),
                IoOp::Write {
                    offset: Bytes(0),
                    iov: &iov,
                },
            )
            .unwrap();
        assert_eq!(rx.recv_timeout(WAIT), Ok(TaskEvent::Io(IoTag(9), Ok(()))));
        q(&mut host).unmap_batch(&[GrantUnmapOp {
            window_page: WindowPage(0),
            handle: h,
        }]);
        // Beyond the window, or over unmapped pages: refused.
        let far = [IoVec {
            window_offset: 3 * PAGE_SIZE,
            len: 2 * PAGE_SIZE,
        }];
        assert!(q(&mut host)
            .store_submit(
                IoTag(10),
                IoOp::Write {
                    offset: Bytes(0),
                    iov: &far
                }
            )
            .is_err());
        host.store_close();
        assert_eq!(host.stats().io_in_flight, 0);
        let now = std::fs::read(&path).unwrap();
        assert_eq!(now[..PAGE_SIZE], pattern(9)[..]);
        assert_eq!(now[PAGE_SIZE..], disk[PAGE_SIZE..]);
        let _ = std::fs::remove_file(&path);
    }
}

#[test]
fn backend_runner_starts_and_shuts_down() {
    let xen = SimXen::new();
    xen.create_guest(GUEST, 64, "guest").unwrap();
    let path = temp_file("runner", &vec![0u8; 1 << 20]);
    let spec = VbdSpec::new(GUEST, 51712, path.to_str().unwrap());
    let p = create_vbd(&xen.xenstore, &spec).unwrap();
    let watches_before = xen.xenstore.watch_count();
    let runner = BackendRunner::spawn(
        &xen,
        &p.backend,
        xbb::stats::Tunables::default(),
        SimHostConfig::default(),
        Start::Attach,
    )
    .unwrap();
    assert_eq!(runner.backend_path(), p.backend);
    // The back-end directory watch fires once at registration: at least one
    // event gets handled.
    let snap = runner
        .wait_until(WAIT, |s| s.events >= 1)
        .expect("task thread handles events");
    assert!(!snap.finished);
    xen.mount_root();
    // Once the root is mounted the instance opens its store and publishes
    // its limits through SimHost's XenStore and Store.
    let snap = runner
        .wait_until(WAIT, |s| s.state == XenbusState::InitWait)
        .expect("back-end reaches InitWait");
    assert!(snap.host.store_open);
    assert_eq!(snap.medium.map(|m| m.sectors), Some(Sectors(2048)));
    assert_eq!(
        xen.xenstore
            .read_str(&format!("{}/state", p.backend))
            .unwrap(),
        "2"
    );
    let fin = runner.shutdown();
    assert!(fin.finished);
    assert_eq!(fin.error, None);
    assert_eq!(fin.host.window_mapped, 0);
    assert_eq!(fin.host.io_in_flight, 0);
    assert_eq!(xen.xenstore.watch_count(), watches_before);
    let _ = std::fs::remove_file(&path);
}

/// Drains what the task channel holds right now.
fn drain_now(rx: &Receiver<TaskEvent>) -> Vec<TaskEvent> {
    let mut v = Vec::new();
    while let Ok(ev) = rx.try_recv() {
        v.push(ev);
    }
    v
}

/// Binds queue `q` of `host` to a fresh unbound port of the guest; returns
/// the guest's port (what the front-end kicks).
fn bind_queue(xen: &SimXen, host: &mut SimHost, q: u32) -> u32 {
    let fe_port = xen.evtchn.alloc_unbound(GUEST, 0);
    host.evtchn_bind(
        q,
        RemotePort {
            dom: GUEST,
            port: fe_port,
        },
    )
    .unwrap();
    fe_port
}

#[test]
fn late_eoi_keeps_one_event_per_queue_until_the_eoi() {
    let (xen, _d, mut host, rx) = setup(1);
    let p0 = bind_queue(&xen, &mut host, 0);
    let p1 = bind_queue(&xen, &mut host, 1);
    // The handler runs in the kicking thread: what it queued is there when
    // notify returns.
    for _ in 0..1000 {
        xen.evtchn.notify(GUEST, p0).unwrap();
    }
    assert_eq!(drain_now(&rx), vec![TaskEvent::Evtchn(0)]);
    // Queue 1 is not held back by queue 0's outstanding EOI.
    for _ in 0..10 {
        xen.evtchn.notify(GUEST, p1).unwrap();
    }
    assert_eq!(drain_now(&rx), vec![TaskEvent::Evtchn(1)]);
    // Kicks arrived while queue 0 was in service: its EOI delivers exactly
    // one more event, and the channel stays in service.
    q(&mut host).evtchn_eoi(0, 0);
    assert_eq!(drain_now(&rx), vec![TaskEvent::Evtchn(0)]);
    xen.evtchn.notify(GUEST, p0).unwrap();
    assert_eq!(drain_now(&rx), vec![]);
    q(&mut host).evtchn_eoi(0, 0);
    assert_eq!(drain_now(&rx), vec![TaskEvent::Evtchn(0)]);
    // Nothing arrived meanwhile: the EOI delivers nothing and re-arms.
    q(&mut host).evtchn_eoi(0, 0);
    assert_eq!(drain_now(&rx), vec![]);
    xen.evtchn.notify(GUEST, p0).unwrap();
    assert_eq!(drain_now(&rx), vec![TaskEvent::Evtchn(0)]);
    // Queue 1's kicks while in service are delivered by its own EOI only.
    q(&mut host).evtchn_eoi(1, 0);
    assert_eq!(drain_now(&rx), vec![TaskEvent::Evtchn(1)]);
    q(&mut host).evtchn_eoi(1, 0);
    assert_eq!(drain_now(&rx), vec![]);
    // Every kick reached the port; only the latch held them back.
    assert_eq!(
        xen.evtchn.received(0, host.stats().evtchn_port.unwrap()),
        1002
    );
    // An EOI for an unbound queue, or after unbinding, delivers nothing.
    q(&mut host).evtchn_eoi(7, 0);
    host.evtchn_unbind(0);
    q(&mut host).evtchn_eoi(0, 0);
    assert_eq!(drain_now(&rx), vec![]);
}

#[test]
fn delayed_eoi_delivers_a_kept_kick_later() {
    let (xen, _d, mut host, rx) = setup(1);
    let p0 = bind_queue(&xen, &mut host, 0);
    xen.evtchn.notify(GUEST, p0).unwrap();
    assert_eq!(drain_now(&rx), vec![TaskEvent::Evtchn(0)]);
    xen.evtchn.notify(GUEST, p0).unwrap();
    let delay = Duration::from_millis(200);
    let t0 = std::time::Instant::now();
    q(&mut host).evtchn_eoi(0, delay.as_millis() as u32);
    assert_eq!(host.stats().delayed_eois, 1);
    // The timer sleeps at least `delay` before re-enabling: whatever was
    // looked at before `delay` passed cannot hold the event yet.
    let early = drain_now(&rx);
    if t0.elapsed() < delay {
        assert_eq!(early, vec![]);
    }
    let ev = if early.is_empty() {
        rx.recv_timeout(WAIT).expect("the delayed EOI delivers")
    } else {
        early[0].clone()
    };
    assert_eq!(ev, TaskEvent::Evtchn(0));
    assert!(t0.elapsed() >= delay);
    assert_eq!(drain_now(&rx), vec![]);
    // A delayed EOI with nothing kept re-arms the channel, later.
    q(&mut host).evtchn_eoi(0, 1);
    xen.evtchn.notify(GUEST, p0).unwrap();
    assert_eq!(
        rx.recv_timeout(WAIT),
        Ok(TaskEvent::Evtchn(0)),
        "a kick during or after the delayed EOI is kept, not lost"
    );
}

/// Copies the guest's pages `grefs` into `out`, which must succeed.
fn copy_in(host: &mut SimHost, grefs: &[GrantRef], out: &mut [u8]) {
    q(host).copy_in(Granted { dom: GUEST, grefs }, out).unwrap();
}

#[test]
fn copy_in_copies_granted_pages_and_refuses_bad_grants() {
    let (_xen, d, mut host, _rx) = setup(8);
    let (a, b) = (pattern(11), pattern(12));
    d.memory.write(3, 0, &a).unwrap();
    d.memory.write(6, 0, &b).unwrap();
    let ga = d.grants.grant(3, 0, true);
    let gb = d.grants.grant(6, 0, false);
    let mut out = vec![0u8; 2 * PAGE_SIZE];
    copy_in(&mut host, &[ga, gb], &mut out);
    assert_eq!(out[..PAGE_SIZE], a[..]);
    assert_eq!(out[PAGE_SIZE..], b[..]);
    // A short buffer takes the start of the last page only.
    let mut short = vec![0u8; PAGE_SIZE + 100];
    copy_in(&mut host, &[gb, ga], &mut short);
    assert_eq!(short[..PAGE_SIZE], b[..]);
    assert_eq!(short[PAGE_SIZE..], a[..100]);
    assert_eq!(host.stats().pages_copied, 4);
    // Copying leaves nothing mapped.
    assert_eq!(d.grants.stats().mapped, 0);

    let mut out = vec![0u8; PAGE_SIZE];
    // No such grant.
    assert_eq!(
        q(&mut host).copy_in(
            Granted {
                dom: GUEST,
                grefs: &[0xdead]
            },
            &mut out
        ),
        Err(GrantError::BadRef)
    );
    // Granted to another domain, not to the back-end.
    let other = d.grants.grant(4, 5, true);
    assert_eq!(
        q(&mut host).copy_in(
            Granted {
                dom: GUEST,
                grefs: &[other]
            },
            &mut out
        ),
        Err(GrantError::BadRef)
    );
    // A revoked grant.
    d.grants.end_access(ga).unwrap();
    assert_eq!(
        q(&mut host).copy_in(
            Granted {
                dom: GUEST,
                grefs: &[ga]
            },
            &mut out
        ),
        Err(GrantError::BadRef)
    );
    // No such domain.
    assert!(q(&mut host)
        .copy_in(
            Granted {
                dom: GUEST + 40,
                grefs: &[gb]
            },
            &mut out
        )
        .is_err());
    // More bytes than the grants hold.
    let mut big = vec![0u8; PAGE_SIZE + 1];
    assert!(q(&mut host)
        .copy_in(
            Granted {
                dom: GUEST,
                grefs: &[gb]
            },
            &mut big
        )
        .is_err());
    assert_eq!(d.grants.stats().mapped, 0);
    assert_eq!(host.stats().pages_copied, 4);
}

/// A coalescing watch whose events go to a channel, as the back-end's task
/// gets them.
fn coalesced_watch(xs: &Xenstored, path: &str) -> (WatchId, Receiver<WatchEvent>) {
    let (tx, rx) = mpsc::channel();
    let id = xs
        .watch_coalesced(
            path,
            Box::new(move |ev| {
                let _ = tx.send(ev);
            }),
        )
        .unwrap();
    (id, rx)
}

/// A store whose `/fe/state` holds `state`, under a coalescing watch.
fn watched_state(state: &str) -> (Xenstored, WatchId, Receiver<WatchEvent>) {
    let xs = Xenstored::new();
    xs.write("/fe/state", state).unwrap();
    let (id, rx) = coalesced_watch(&xs, "/fe/state");
    (xs, id, rx)
}

#[test]
fn watch_storm_on_one_node_is_coalesced() {
    const WRITES: u64 = 100_000;
    let (xs, id, rx) = watched_state("1");
    // The registration event is outstanding, not acknowledged.
    let first: Vec<WatchEvent> = rx.try_iter().collect();
    assert_eq!(first.len(), 1);
    assert_eq!(first[0].path, "/fe/state");
    for i in 0..WRITES {
        xs.write("/fe/state", (i % 9).to_string()).unwrap();
    }
    // Nothing more was queued for the watcher.
    assert_eq!(rx.try_iter().count(), 0);
    assert_eq!(xs.watch_pending(id), Some(1));
    let st = xs.watch_stats();
    assert_eq!(st.coalesced, WRITES);
    assert_eq!(xs.watch_events_coalesced(), WRITES);
    assert_eq!(st.max_pending, 1);
    assert_eq!(st.pending, 1);
    // Consuming the event re-arms the watch: the next write is delivered.
    assert!(xs.watch_ack(&first[0]));
    assert!(!xs.watch_ack(&first[0]), "acknowledged twice");
    assert_eq!(xs.watch_pending(id), Some(0));
    xs.write("/fe/state", "4").unwrap();
    let next: Vec<WatchEvent> = rx.try_iter().collect();
    assert_eq!(
        next,
        vec![WatchEvent {
            watch: id,
            path: String::from("/fe/state")
        }]
    );
    // Plain watches are untouched by coalescing: every change fires.
    let plain = Arc::new(AtomicU64::new(0));
    let p = Arc::clone(&plain);
    let pid = xs
        .watch(
            "/fe",
            Box::new(move |_| {
                p.fetch_add(1, Ordering::SeqCst);
            }),
        )
        .unwrap();
    for _ in 0..10 {
        xs.write("/fe/state", "5").unwrap();
    }
    assert_eq!(plain.load(Ordering::SeqCst), 11);
    assert_eq!(xs.watch_pending(pid), Some(0));
    assert!(xs.unwatch(id));
    assert!(!xs.watch_ack(&next[0]), "the watch is gone");
}

#[test]
fn watch_storm_over_many_paths_stays_bounded() {
    let xs = Xenstored::new();
    let (id, rx) = coalesced_watch(&xs, "/fe");
    for round in 0..3 {
        for i in 0..1000 {
            xs.write(&format!("/fe/n{i}"), round.to_string()).unwrap();
        }
    }
    xs.remove("/fe").unwrap();
    let got: Vec<WatchEvent> = rx.try_iter().collect();
    // One event per outstanding path, and past the limit the watched path
    // itself stands for the rest.
    assert!(got.len() <= WATCH_PENDING_MAX + 1, "{} events", got.len());
    assert!(got.iter().any(|e| e.path == "/fe"));
    let st = xs.watch_stats();
    assert!(st.max_pending <= WATCH_PENDING_MAX + 1);
    assert_eq!(st.pending, got.len());
    assert!(st.overflowed > 0);
    for e in &got {
        assert!(xs.watch_ack(e));
    }
    assert_eq!(xs.watch_pending(id), Some(0));
    // After the acknowledgements the watch delivers again.
    xs.write("/fe/again", "1").unwrap();
    assert_eq!(rx.try_iter().count(), 1);
}

#[test]
fn watch_storm_never_loses_the_final_event() {
    const WRITES: u64 = 100_000;
    let (xs, _id, rx) = watched_state("start");
    let writer = {
        let xs = xs.clone();
        std::thread::spawn(move || {
            for i in 0..WRITES {
                xs.write("/fe/state", i.to_string()).unwrap();
            }
        })
    };
    // The watcher: acknowledge, then read, as the back-end does. It must
    // see the last value through some event; `WAIT` only guards a hang (a
    // lost final event would leave it waiting).
    let last = (WRITES - 1).to_string();
    let mut events = 0u64;
    loop {
        let ev = rx
            .recv_timeout(WAIT)
            .expect("an event after the last write");
        events += 1;
        assert!(xs.watch_ack(&ev));
        if xs.read_str("/fe/state").unwrap() == last {
            break;
        }
    }
    writer.join().unwrap();
    assert!(events <= WRITES + 1);
    let st = xs.watch_stats();
    assert!(st.max_pending <= 1);
    assert_eq!(st.delivered + st.coalesced, WRITES + 1);
    assert_eq!(st.delivered, events + rx.try_iter().count() as u64);
}

/// A world with one guest and a vbd over a new 1 MiB file (named after
/// `tag`).
fn world_with_vbd(tag: &str) -> (World, std::path::PathBuf, VbdHandle) {
    let world = World::new();
    world.add_guest(GUEST, 64).unwrap();
    let path = temp_file(tag, &vec![0u8; 1 << 20]);
    let vbd = world.create_vbd(&VbdConfig::file(GUEST, &path)).unwrap();
    (world, path, vbd)
}

#[test]
fn world_resize_reaches_the_back_end() {
    let (world, path, vbd) = world_with_vbd("resize");
    world
        .wait_backend(&vbd, WAIT, |s| {
            s.medium.is_some_and(|m| m.sectors == Sectors(2048))
        })
        .expect("store open");
    assert_eq!(world.resize_vbd(&vbd, 4 << 20).unwrap(), 4 << 20);
    world
        .wait_backend(&vbd, WAIT, |s| {
            s.medium.is_some_and(|m| m.sectors == Sectors(8192))
        })
        .expect("back-end sees the grown medium");
    assert_eq!(world.resize_vbd(&vbd, 1 << 19).unwrap(), 1 << 19);
    world
        .wait_backend(&vbd, WAIT, |s| {
            s.medium.is_some_and(|m| m.sectors == Sectors(1024))
        })
        .expect("back-end sees the shrunk medium");
    // Not a whole number of sectors: refused, nothing changes.
    assert!(vbd.resize_store((1 << 19) + 100).is_err());
    assert_eq!(std::fs::metadata(&path).unwrap().len(), 1 << 19);
    world.destroy_vbd(&vbd);
    let _ = std::fs::remove_file(&path);
}

/// A front-end that rewrites its `state` in a loop cannot make the
/// back-end's task queue grow without bound: the back-end's watches are
/// coalescing ones, so at most `WATCH_PENDING_MAX + 1` watch events per
/// watch are ever queued for it, however the two threads interleave.
#[test]
fn front_end_state_storm_queues_bounded_work_for_the_back_end() {
    const WRITES: u64 = 100_000;
    let (world, path, vbd) = world_with_vbd("storm");
    world
        .wait_backend(&vbd, WAIT, |s| {
            s.state == XenbusState::InitWait && s.frontend_path.is_some()
        })
        .expect("back-end in InitWait");
    let xs = &world.xen().xenstore;
    let st = xs.watch_stats();
    assert!(
        st.coalescing_watches >= 2,
        "the back-end watches its directory and the front-end's state with \
         coalescing watches: {st:?}"
    );
    let state = format!("{}/state", vbd.frontend_path());
    for _ in 0..WRITES {
        xs.write(&state, XenbusState::Initialising.as_str())
            .unwrap();
    }
    let st = xs.watch_stats();
    assert!(st.max_pending <= WATCH_PENDING_MAX + 1, "{st:?}");
    // The storm changed nothing the back-end acts on; it is still serving.
    let snap = world
        .wait_backend(&vbd, WAIT, |s| s.state == XenbusState::InitWait)
        .expect("back-end still in InitWait");
    assert!(!snap.finished);
    world.destroy_vbd(&vbd);
    let _ = std::fs::remove_file(&path);
}
