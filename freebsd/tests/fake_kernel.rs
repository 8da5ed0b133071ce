//! The FreeBSD platform (`xbb_freebsd`) driven through its `xbb_rs_*`
//! entry points only, over a fake kernel that implements the shim's ops
//! table in user space: load → attach → front-end connects → I/O with the
//! data checked → disconnect → detach with I/O in flight → unload, and the
//! error paths (root not mounted, `M_NOWAIT` failure, grant map failure,
//! store gone, bad ops tables).

#[path = "support/fake_kernel.rs"]
mod fake_kernel;

use std::ffi::CStr;
use std::sync::atomic::Ordering;

use fake_kernel::*;
use xbb::abi::{BLKIF_OP_READ, BLKIF_OP_WRITE, BLKIF_RSP_ERROR, BLKIF_RSP_OKAY};
use xbb::host::{XenbusState, PAGE_SIZE};
use xbb::ring::FrontRing;
use xbb_freebsd::errno::{EBUSY, EEXIST, EINVAL, ENOENT, ENXIO, EPERM, ERANGE};
use xbb_freebsd::ffi;
use xbb_testing::guest::request as rw_request;

#[global_allocator]
static ALLOC: TestAllocator = TestAllocator;

/// The module, loaded for one test; unloads on drop.
struct Module {
    _serial: std::sync::MutexGuard<'static, ()>,
}

impl Module {
    fn load() -> Module {
        let (serial, poisoned) = match SERIAL.lock() {
            Ok(g) => (g, false),
            Err(e) => (e.into_inner(), true),
        };
        // SAFETY: OPS is a static, complete table.
        let e = unsafe { ffi::xbb_rs_load(&OPS) };
        // A test that failed may have left its instance (and the module)
        // behind; the others still run.
        assert!(e == 0 || (poisoned && e == EEXIST), "load: {e}");
        Module { _serial: serial }
    }
}

impl Drop for Module {
    fn drop(&mut self) {
        // SAFETY: no entry point runs concurrently (SERIAL).
        let e = unsafe { ffi::xbb_rs_unload() };
        if !std::thread::panicking() {
            assert_eq!(e, 0, "an instance was left behind");
        }
    }
}

const CONNECTED: u32 = XenbusState::Connected as u32;
const CLOSING: u32 = XenbusState::Closing as u32;
const CLOSED: u32 = XenbusState::Closed as u32;
const INITWAIT: u32 = XenbusState::InitWait as u32;

fn otherend_changed(fk: &FakeKernel) {
    // SAFETY: the live handle of fk; calls serialized on this thread.
    unsafe { ffi::xbb_rs_otherend_changed(fk.inst.get()) };
    fk.pump();
}

fn sysctl_index(name: &str) -> u32 {
    // SAFETY: plain-value entry points returning static strings.
    unsafe {
        (0..ffi::xbb_rs_sysctl_count())
            .find(|&i| CStr::from_ptr(ffi::xbb_rs_sysctl_name(i)).to_str() == Ok(name))
            .unwrap_or_else(|| panic!("no sysctl {name}"))
    }
}

fn sysctl(fk: &FakeKernel, name: &str) -> u64 {
    let mut v = u64::MAX;
    // SAFETY: live handle; v is writable.
    let e = unsafe { ffi::xbb_rs_sysctl_get(fk.inst.get(), sysctl_index(name), &mut v) };
    assert_eq!(e, 0);
    v
}

fn last_error(fk: &FakeKernel) -> String {
    let mut buf = [0u8; 128];
    // SAFETY: live handle; buf is writable for its length.
    let n = unsafe { ffi::xbb_rs_last_error(fk.inst.get(), buf.as_mut_ptr().cast(), buf.len()) };
    assert_eq!(buf[n], 0);
    String::from_utf8_lossy(&buf[..n]).into_owned()
}

/// Detaches (delivering completions while it says EBUSY) and frees.
fn detach_and_free(fk: &FakeKernel) {
    let inst = fk.inst.get();
    let mut rounds = 0;
    // SAFETY: live handle, serialized calls.
    while unsafe { ffi::xbb_rs_detach(inst) } == EBUSY {
        rounds += 1;
        assert!(rounds < 1000, "detach never finished");
        fk.pump();
    }
    fk.pump();
    // SAFETY: detach returned 0; the handle is not used afterwards.
    assert_eq!(unsafe { ffi::xbb_rs_free(inst) }, 0);
    fk.inst.set(std::ptr::null_mut());
}

fn assert_clean(fk: &FakeKernel) {
    let st = fk.st();
    assert!(st.violations.is_empty(), "{:?}", st.violations);
}

/// The module loaded and a fake kernel with a writable medium.
fn loaded() -> (Module, Box<FakeKernel>) {
    (Module::load(), FakeKernel::new(true, false))
}

/// Detaches and frees the instance; the kernel saw no contract violation.
fn detach_clean(fk: &FakeKernel) {
    detach_and_free(fk);
    assert_clean(fk);
}

/// Submits request `id`: a write of one granted page of `pattern(seed)`
/// at `sector`.
fn write_page(fk: &FakeKernel, ring: &mut FrontRing, id: u64, sector: u64, seed: u8) {
    let g = fk.grant(&pattern(seed), true);
    submit(fk, ring, &rw_request(BLKIF_OP_WRITE, id, sector, &[g]));
}

/// Attaches `fk` and connects a one-queue, `pages`-page front-end.
fn connect(fk: &FakeKernel, pages: u32) -> FrontRing {
    assert_eq!(attach(fk, &default_tunables()), 0);
    assert_eq!(fk.backend_state(), Some(INITWAIT));
    let ring = fk.frontend_connect(pages);
    otherend_changed(fk);
    assert_eq!(fk.backend_state(), Some(CONNECTED), "{}", last_error(fk));
    ring
}

fn pattern(seed: u8) -> Vec<u8> {
    (0..PAGE_SIZE)
        .map(|i| (i as u8).wrapping_mul(31) ^ seed)
        .collect()
}

#[test]
fn attach_connect_io_disconnect_detach_unload() {
    let m = Module::load();
    let fk = FakeKernel::new(true, false);
    let waitok_before = WAITOK_ALLOCS.load(Ordering::Relaxed);
    let mut ring = connect(&fk, 2);
    assert!(
        WAITOK_ALLOCS.load(Ordering::Relaxed) > waitok_before,
        "the instance is allocated with M_WAITOK at attach"
    );
    assert_eq!(fk.st().opens, 1);
    assert_eq!(
        fk.xs(&format!("{BE_PATH}/sectors")),
        Some(SECTORS.to_string())
    );
    // SAFETY: live handle.
    assert_eq!(unsafe { ffi::xbb_rs_num_queues(fk.inst.get()) }, 1);
    // SAFETY: live handle.
    assert_eq!(unsafe { ffi::xbb_rs_state(fk.inst.get()) }, CONNECTED);

    // Write three pages at sector 16 in one request, then one at sector 40.
    let data: Vec<Vec<u8>> = (1..=4).map(pattern).collect();
    let w: Vec<u32> = data.iter().map(|d| fk.grant(d, true)).collect();
    submit(&fk, &mut ring, &rw_request(BLKIF_OP_WRITE, 1, 16, &w[..3]));
    submit(&fk, &mut ring, &rw_request(BLKIF_OP_WRITE, 2, 40, &w[3..]));
    fk.pump();
    let rsp = responses(&mut ring);
    assert_eq!(rsp.len(), 2);
    assert!(rsp.iter().all(|r| r.status == BLKIF_RSP_OKAY), "{rsp:?}");
    {
        let st = fk.st();
        for (i, d) in data[..3].iter().enumerate() {
            let at = 16 * 512 + i * PAGE_SIZE;
            assert_eq!(&st.medium[at..at + PAGE_SIZE], &d[..]);
        }
        assert_eq!(&st.medium[40 * 512..40 * 512 + PAGE_SIZE], &data[3][..]);
        assert!(st.notifies.get(&0).copied().unwrap_or(0) > 0);
    }

    // Read them back into fresh writable pages.
    let r: Vec<u32> = (0..4).map(|_| fk.grant(&[], false)).collect();
    submit(&fk, &mut ring, &rw_request(BLKIF_OP_READ, 3, 16, &r[..3]));
    submit(&fk, &mut ring, &rw_request(BLKIF_OP_READ, 4, 40, &r[3..]));
    fk.pump();
    let rsp = responses(&mut ring);
    assert_eq!(rsp.iter().map(|r| r.id).collect::<Vec<_>>(), [3, 4]);
    assert!(rsp.iter().all(|r| r.status == BLKIF_RSP_OKAY));
    for (g, d) in r.iter().zip(&data) {
        assert_eq!(&fk.page(*g), d);
    }
    assert_eq!(sysctl(&fk, "reqs_received"), 4);
    assert_eq!(sysctl(&fk, "bytes_written"), 4 * PAGE_SIZE as u64);
    assert_eq!(sysctl(&fk, "bytes_read"), 4 * PAGE_SIZE as u64);
    assert_eq!(sysctl(&fk, "num_queues"), 1);
    assert_eq!(sysctl(&fk, "ring_pages"), 2);
    let mut q0 = 0;
    // SAFETY: live handle; q0 writable.
    let e = unsafe {
        ffi::xbb_rs_queue_sysctl_get(fk.inst.get(), 0, sysctl_index("reqs_received"), &mut q0)
    };
    assert_eq!((e, q0), (0, 4));
    assert_eq!(fk.st().mapped_pages, 0, "transient grants are unmapped");

    // One more write, left in flight: detach must wait for it.
    write_page(&fk, &mut ring, 5, 64, 9);
    fk.run_tasks();
    assert_eq!(fk.st().ios.len(), 1);
    let inst = fk.inst.get();
    // SAFETY: live handle.
    assert_eq!(unsafe { ffi::xbb_rs_detach(inst) }, EBUSY);
    // SAFETY: live handle; refused while not detached.
    assert_eq!(unsafe { ffi::xbb_rs_free(inst) }, EBUSY);
    // SAFETY: no entry point runs concurrently.
    assert_eq!(unsafe { ffi::xbb_rs_unload() }, EBUSY);
    assert!(fk.st().open, "the store stays open while I/O drains");
    assert!(fk.complete_one());
    assert_eq!(responses(&mut ring).len(), 1);
    detach_and_free(&fk);
    assert_eq!(fk.backend_state(), Some(CLOSED));
    assert!(!fk.holds_anything());
    {
        let st = fk.st();
        assert!(!st.open);
        assert_eq!(st.closes, 1);
        assert_eq!(&st.medium[64 * 512..64 * 512 + PAGE_SIZE], &pattern(9)[..]);
    }
    assert_clean(&fk);
    assert_eq!(BAD_FLAGS.load(Ordering::Relaxed), 0);
    drop(m);
}

#[test]
fn frontend_disconnect_then_detach() {
    let (_m, fk) = loaded();
    let mut ring = connect(&fk, 1);
    write_page(&fk, &mut ring, 7, 0, 3);
    fk.run_tasks();
    // The front-end closes with the write in flight: the back-end drains it
    // before answering Closing.
    fk.set_frontend_state(XenbusState::Closing);
    // SAFETY: live handle.
    unsafe { ffi::xbb_rs_otherend_changed(fk.inst.get()) };
    assert_eq!(fk.backend_state(), Some(CONNECTED));
    fk.pump();
    assert_eq!(fk.backend_state(), Some(CLOSING));
    assert_eq!(responses(&mut ring).len(), 1);
    fk.set_frontend_state(XenbusState::Closed);
    otherend_changed(&fk);
    assert_eq!(fk.backend_state(), Some(CLOSED));
    assert!(!fk.holds_anything());
    assert!(!fk.st().open, "not online: the store is closed");
    // Nothing in flight: detach finishes at once.
    // SAFETY: live handle.
    assert_eq!(unsafe { ffi::xbb_rs_detach(fk.inst.get()) }, 0);
    detach_clean(&fk);
}

#[test]
fn attach_before_root_is_mounted_opens_nothing() {
    let (_m, fk) = loaded();
    fk.st().root_mounted = false;
    assert_eq!(attach(&fk, &default_tunables()), 0);
    assert_eq!(fk.st().opens, 0);
    assert_ne!(fk.backend_state(), Some(INITWAIT));
    fk.st().root_mounted = true;
    // SAFETY: live handle.
    unsafe { ffi::xbb_rs_root_mounted(fk.inst.get()) };
    assert_eq!(fk.st().opens, 1);
    assert_eq!(fk.backend_state(), Some(INITWAIT));
    detach_clean(&fk);
}

#[test]
fn nowait_allocation_failure_fails_the_connection_cleanly() {
    let (_m, fk) = loaded();
    assert_eq!(attach(&fk, &default_tunables()), 0);
    let _ring = fk.frontend_connect(1);
    let failed = NOWAIT_FAILED.load(Ordering::Relaxed);
    // The connection's pools are the only large allocations.
    fail_nowait_from(16 * 1024);
    otherend_changed(&fk);
    fail_nowait_from(usize::MAX);
    assert!(NOWAIT_FAILED.load(Ordering::Relaxed) > failed);
    assert_eq!(fk.backend_state(), Some(CLOSING));
    assert!(last_error(&fk).contains("memory"), "{}", last_error(&fk));
    assert!(!fk.holds_anything(), "everything set up is undone");
    assert!(LOG
        .lock()
        .unwrap()
        .iter()
        .any(|l| l.contains(BE_NODE) && l.contains("memory")));
    detach_clean(&fk);
    assert_eq!(BAD_FLAGS.load(Ordering::Relaxed), 0);
}

#[test]
fn ring_map_failure_is_reported() {
    let (_m, fk) = loaded();
    assert_eq!(attach(&fk, &default_tunables()), 0);
    let _ring = fk.frontend_connect(1);
    fk.st().faults.ring_map = true;
    otherend_changed(&fk);
    assert_eq!(fk.backend_state(), Some(CLOSING));
    assert!(last_error(&fk).contains("ring-ref"), "{}", last_error(&fk));
    // xenbus_dev_fatal's place: error/<back-end node>/error, in the home.
    let err = fk
        .xs(&format!("error/{BE_NODE}/error"))
        .expect("error node");
    assert!(err.contains("ring-ref"), "{err}");
    assert!(!fk.holds_anything());
    detach_clean(&fk);
}

#[test]
fn data_grant_map_failure_answers_an_error() {
    let (_m, fk) = loaded();
    let mut ring = connect(&fk, 1);
    // The front-end grants a page; the kernel's map of it fails.
    let g = fk.grant(&pattern(5), true);
    fk.st().faults.map_grants = true;
    submit(&fk, &mut ring, &rw_request(BLKIF_OP_WRITE, 11, 8, &[g]));
    fk.pump();
    let rsp = responses(&mut ring);
    assert_eq!(rsp.len(), 1);
    assert_eq!((rsp[0].id, rsp[0].status), (11, BLKIF_RSP_ERROR));
    assert!(sysctl(&fk, "grant_map_failures") > 0);
    assert!(fk.st().ios.is_empty(), "nothing reached the store");
    assert!(fk.st().medium[8 * 512..9 * 512].iter().all(|&b| b == 0));
    fk.st().faults.map_grants = false;
    // A read-only grant for a READ (the back-end must write it) is refused
    // by the hypervisor: an error too, not a crash.
    let ro = fk.grant(&[], true);
    submit(&fk, &mut ring, &rw_request(BLKIF_OP_READ, 12, 8, &[ro]));
    fk.pump();
    let rsp = responses(&mut ring);
    assert_eq!((rsp[0].id, rsp[0].status), (12, BLKIF_RSP_ERROR));
    assert_eq!(fk.backend_state(), Some(CONNECTED));
    detach_clean(&fk);
}

#[test]
fn store_gone_closes_the_connection() {
    let (_m, fk) = loaded();
    let mut ring = connect(&fk, 1);
    fk.st().faults.store_gone = true;
    write_page(&fk, &mut ring, 21, 0, 7);
    fk.pump();
    let rsp = responses(&mut ring);
    assert_eq!((rsp[0].id, rsp[0].status), (21, BLKIF_RSP_ERROR));
    assert_eq!(fk.backend_state(), Some(CLOSING));
    assert!(last_error(&fk).contains("went away"), "{}", last_error(&fk));
    assert!(!fk.holds_anything());
    detach_and_free(&fk);
    assert!(!fk.st().open);
    assert_clean(&fk);
}

#[test]
fn bad_tables_and_arguments_are_refused() {
    let serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let fk = FakeKernel::new(true, false);
    // Not loaded: no ops table.
    if !xbb_freebsd::ops_installed() {
        assert_eq!(attach(&fk, &default_tunables()), ENXIO);
    }
    assert!(fk.inst.get().is_null());
    // SAFETY: null and bad tables are refused without being used beyond
    // their header.
    unsafe {
        assert_eq!(ffi::xbb_rs_load(std::ptr::null()), EINVAL);
        let mut bad = OPS;
        bad.version += 1;
        assert_eq!(ffi::xbb_rs_load(&bad), EINVAL);
        let mut bad = OPS;
        bad.log = None;
        assert_eq!(ffi::xbb_rs_load(&bad), EINVAL);
    }
    drop(serial);
    let _m = Module::load();
    // SAFETY: a second complete table is refused.
    assert_eq!(unsafe { ffi::xbb_rs_load(&OPS) }, EEXIST);
    let mut t = default_tunables();
    assert_eq!(attach(&fk, &t[..t.len() - 1]), EINVAL);
    t[0] = u64::MAX;
    assert_eq!(attach(&fk, &t), EINVAL);
    assert!(fk.inst.get().is_null());
    // SAFETY: null handles are tolerated.
    unsafe {
        assert_eq!(ffi::xbb_rs_detach(std::ptr::null_mut()), EINVAL);
        assert_eq!(ffi::xbb_rs_free(std::ptr::null_mut()), EINVAL);
        ffi::xbb_rs_event(std::ptr::null_mut(), 0);
    }
}

#[test]
fn sysctl_and_tunable_tables() {
    let _m = Module::load();
    // SAFETY: plain-value entry points returning static strings.
    unsafe {
        let n = ffi::xbb_rs_sysctl_count();
        assert_eq!(n as usize, xbb::stats::SYSCTLS.len());
        for (i, d) in xbb::stats::SYSCTLS.iter().enumerate() {
            let i = i as u32;
            assert_eq!(
                CStr::from_ptr(ffi::xbb_rs_sysctl_name(i)).to_str(),
                Ok(d.name)
            );
            assert_eq!(
                CStr::from_ptr(ffi::xbb_rs_sysctl_descr(i)).to_str(),
                Ok(d.descr)
            );
            assert_ne!(ffi::xbb_rs_sysctl_kind(i), 0);
            assert_eq!(ffi::xbb_rs_sysctl_per_queue(i) != 0, d.per_queue());
        }
        assert!(ffi::xbb_rs_sysctl_name(n).is_null());
        assert_eq!(ffi::xbb_rs_sysctl_kind(n), 0);
        let t = ffi::xbb_rs_tunable_count();
        assert!(t <= ffi::XBB_SHIM_MAX_TUNABLES);
        for (i, d) in xbb::stats::TUNABLES.iter().enumerate() {
            let i = i as u32;
            assert_eq!(
                CStr::from_ptr(ffi::xbb_rs_tunable_name(i)).to_str(),
                Ok(d.name)
            );
            assert_eq!(ffi::xbb_rs_tunable_default(i), d.default);
            assert_eq!(ffi::xbb_rs_tunable_min(i), d.min);
            assert_eq!(ffi::xbb_rs_tunable_max(i), d.max);
            assert_eq!(ffi::xbb_rs_tunable_check(i, d.default), 0);
            if d.max < u64::MAX {
                assert_eq!(ffi::xbb_rs_tunable_check(i, d.max + 1), ERANGE);
            }
        }
        assert_eq!(ffi::xbb_rs_tunable_check(t, 0), ENOENT);
        assert!(ffi::xbb_rs_tunable_name(t).is_null());
    }
    let fk = FakeKernel::new(true, false);
    assert_eq!(attach(&fk, &default_tunables()), 0);
    let inst = fk.inst.get();
    let sw = sysctl_index("no_coalesce_reqs");
    // SAFETY: live handle.
    unsafe {
        assert_eq!(ffi::xbb_rs_sysctl_kind(sw), ffi::XBB_SHIM_SYSCTL_SWITCH);
        assert_eq!(ffi::xbb_rs_sysctl_set(inst, sw, 1), 0);
        assert_eq!(ffi::xbb_rs_sysctl_set(inst, sw, 2), EINVAL);
        assert_eq!(
            ffi::xbb_rs_sysctl_set(inst, sysctl_index("reqs_received"), 1),
            EPERM
        );
        let mut v = 0;
        assert_eq!(ffi::xbb_rs_sysctl_get(inst, 10_000, &mut v), ENOENT);
        assert_eq!(
            ffi::xbb_rs_queue_sysctl_get(inst, 0, sysctl_index("max_requests"), &mut v),
            ENOENT,
            "limits are not per queue"
        );
        assert_eq!(
            ffi::xbb_rs_queue_sysctl_get(inst, 3, sysctl_index("reqs_received"), &mut v),
            0
        );
        assert_eq!(v, 0);
    }
    assert_eq!(sysctl(&fk, "no_coalesce_reqs"), 1);
    detach_clean(&fk);
}
