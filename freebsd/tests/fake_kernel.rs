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
    fk.run_tasks();
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
        ffi::xbb_rs_queue_task(std::ptr::null_mut(), 1);
        ffi::xbb_rs_control(std::ptr::null_mut());
        assert!(ffi::xbb_rs_queue(std::ptr::null_mut(), 0).is_null());
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

/// Attaches `fk` and connects a front-end of `queues` one-page rings.
/// The module loaded, an online kernel, and an instance connected with
/// `queues` queues: their front rings.
fn connected_queues(queues: u32) -> (Module, Box<FakeKernel>, Vec<FrontRing>) {
    let m = Module::load();
    let fk = FakeKernel::new(true, false);
    let rings = connect_queues(&fk, queues);
    (m, fk, rings)
}

fn connect_queues(fk: &FakeKernel, queues: u32) -> Vec<FrontRing> {
    assert_eq!(attach(fk, &default_tunables()), 0);
    let rings = fk.frontend_connect_queues(queues, 1);
    otherend_changed(fk);
    assert_eq!(fk.backend_state(), Some(CONNECTED), "{}", last_error(fk));
    // SAFETY: live handle.
    assert_eq!(unsafe { ffi::xbb_rs_num_queues(fk.inst.get()) }, queues);
    rings
}

fn queue_sysctl(fk: &FakeKernel, q: u32, name: &str) -> u64 {
    let mut v = u64::MAX;
    // SAFETY: live handle; v is writable.
    let e = unsafe { ffi::xbb_rs_queue_sysctl_get(fk.inst.get(), q, sysctl_index(name), &mut v) };
    assert_eq!(e, 0);
    v
}

#[test]
fn each_queue_is_served_by_its_own_task_and_gets_its_own_completions() {
    let (_m, fk, mut rings) = connected_queues(2);
    // A write on each queue: each goes out tagged with its queue.
    let (d0, d1) = (pattern(40), pattern(41));
    let (g0, g1) = (fk.grant(&d0, true), fk.grant(&d1, true));
    submit_on(
        &fk,
        &mut rings[0],
        0,
        &rw_request(BLKIF_OP_WRITE, 1, 8, &[g0]),
    );
    submit_on(
        &fk,
        &mut rings[1],
        1,
        &rw_request(BLKIF_OP_WRITE, 2, 16, &[g1]),
    );
    fk.run_tasks();
    {
        let st = fk.st();
        let queues: Vec<u32> = st.ios.iter().map(|io| io.queue).collect();
        assert_eq!(queues, [0, 1], "each I/O submitted by its own queue");
        assert!(st.queue_tasks.get(&0).copied().unwrap_or(0) > 0);
        assert!(st.queue_tasks.get(&1).copied().unwrap_or(0) > 0);
    }
    // Queue 1's completion goes to queue 1's task alone: its response is on
    // ring 1, and queue 0 still waits.
    let q0_runs = fk.st().queue_tasks[&0];
    assert!(fk.complete_one_of(1));
    fk.run_tasks();
    assert_eq!(fk.st().queue_tasks[&0], q0_runs, "queue 0's task not run");
    let r1 = responses(&mut rings[1]);
    assert_eq!(
        r1.iter().map(|r| (r.id, r.status)).collect::<Vec<_>>(),
        [(2, BLKIF_RSP_OKAY)]
    );
    assert!(responses(&mut rings[0]).is_empty());
    assert!(fk.complete_one_of(0));
    fk.run_tasks();
    let r0 = responses(&mut rings[0]);
    assert_eq!(r0.iter().map(|r| r.id).collect::<Vec<_>>(), [1]);
    {
        let st = fk.st();
        assert_eq!(&st.medium[8 * 512..8 * 512 + PAGE_SIZE], &d0[..]);
        assert_eq!(&st.medium[16 * 512..16 * 512 + PAGE_SIZE], &d1[..]);
        assert!(st.notifies.get(&0).copied().unwrap_or(0) > 0);
        assert!(st.notifies.get(&1).copied().unwrap_or(0) > 0);
    }
    // Counters are per queue, read while the queues are lent.
    assert_eq!(queue_sysctl(&fk, 0, "reqs_received"), 1);
    assert_eq!(queue_sysctl(&fk, 1, "reqs_received"), 1);
    assert_eq!(queue_sysctl(&fk, 1, "bytes_written"), PAGE_SIZE as u64);
    assert_eq!(sysctl(&fk, "reqs_received"), 2);
    detach_and_free(&fk);
    assert!(!fk.holds_anything());
    assert_clean(&fk);
}

/// The store goes away under a write on queue 0: the connection fails, and
/// the control task publishes Closing while the recall of each queue is
/// still on its way to the queue's task. A front-end that produces
/// requests once it sees Closing, on either queue, never has them served:
/// the control part stops every queue before it tells the front-end.
#[test]
fn a_request_produced_after_closing_is_never_served() {
    let (_m, fk, mut rings) = connected_queues(2);
    fk.st().faults.store_gone = true;
    let g = fk.grant(&pattern(60), true);
    let write = rw_request(BLKIF_OP_WRITE, 1, 8, &[g]);
    submit_on(&fk, &mut rings[0], 0, &write);
    fk.run_tasks();
    assert!(fk.complete_one(), "the write went out");
    // Queue 0's task answers it with an error and reports the failure; the
    // control task publishes Closing and recalls the queues, whose tasks
    // have not run yet.
    assert!(fk.run_tasks_through_control());
    assert_eq!(fk.backend_state(), Some(CLOSING));
    let rsp = responses(&mut rings[0]);
    assert_eq!(
        rsp.iter().map(|r| (r.id, r.status)).collect::<Vec<_>>(),
        [(1, BLKIF_RSP_ERROR)]
    );
    for (q, ring) in rings.iter_mut().enumerate() {
        let q = q as u32;
        let g = fk.grant(&[0u8; PAGE_SIZE], false);
        submit_on(
            &fk,
            ring,
            q,
            &rw_request(BLKIF_OP_READ, 10 + u64::from(q), 0, &[g]),
        );
        fk.kick(q);
    }
    fk.pump();
    for ring in rings.iter_mut() {
        assert!(responses(ring).is_empty(), "served after Closing");
    }
    assert_eq!(sysctl(&fk, "reqs_received"), 1);
    assert!(fk.st().ios.is_empty(), "nothing submitted after Closing");
    detach_and_free(&fk);
    assert_clean(&fk);
}

#[test]
fn detach_waits_for_io_in_flight_on_every_queue() {
    let (_m, fk, mut rings) = connected_queues(2);
    let data: Vec<Vec<u8>> = (0..4).map(|i| pattern(50 + i)).collect();
    for (i, d) in data.iter().enumerate() {
        let q = (i % 2) as u32;
        let g = fk.grant(d, true);
        let req = rw_request(BLKIF_OP_WRITE, i as u64, 8 * i as u64, &[g]);
        submit_on(&fk, &mut rings[q as usize], q, &req);
    }
    fk.run_tasks();
    assert_eq!(fk.st().ios.len(), 4);
    let inst = fk.inst.get();
    // Both queues are recalled; each drains in its own task.
    // SAFETY: live handle.
    assert_eq!(unsafe { ffi::xbb_rs_detach(inst) }, EBUSY);
    fk.run_tasks();
    assert!(fk.complete_one_of(1) && fk.complete_one_of(1));
    fk.run_tasks();
    // Queue 1 came home; queue 0 still has I/O out.
    // SAFETY: live handle.
    assert_eq!(unsafe { ffi::xbb_rs_detach(inst) }, EBUSY);
    assert!(fk.st().open, "the store stays open while a queue drains");
    assert!(
        fk.st().control_tasks > 0,
        "a queue coming home kicks the control task"
    );
    assert_eq!(responses(&mut rings[1]).len(), 2);
    assert!(fk.complete_one_of(0) && fk.complete_one_of(0));
    fk.run_tasks();
    assert_eq!(responses(&mut rings[0]).len(), 2);
    // SAFETY: live handle.
    assert_eq!(unsafe { ffi::xbb_rs_detach(inst) }, 0);
    detach_and_free(&fk);
    assert_eq!(fk.backend_state(), Some(CLOSED));
    assert!(!fk.holds_anything());
    let st = fk.st();
    for (i, d) in data.iter().enumerate() {
        let at = 8 * 512 * i;
        assert_eq!(&st.medium[at..at + PAGE_SIZE], &d[..], "write {i}");
    }
    assert!(!st.open);
    drop(st);
    assert_clean(&fk);
}

#[test]
fn requests_waiting_at_connect_are_served_and_a_late_queue_task_is_harmless() {
    let _m = Module::load();
    let fk = FakeKernel::new(true, false);
    assert_eq!(attach(&fk, &default_tunables()), 0);
    let mut rings = fk.frontend_connect_queues(2, 1);
    // A request and a kick before the back-end connected: nothing runs.
    let g = fk.grant(&pattern(60), true);
    assert!(rings[1].push_request(&rw_request(BLKIF_OP_WRITE, 9, 0, &[g])));
    rings[1].publish_requests();
    otherend_changed(&fk);
    assert_eq!(fk.backend_state(), Some(CONNECTED));
    // The lend's first pass found it.
    assert_eq!(responses(&mut rings[1]).len(), 1);
    let inst = fk.inst.get();
    // A queue task run after the queue went home (a late interrupt) does
    // nothing.
    fk.set_frontend_state(XenbusState::Closing);
    otherend_changed(&fk);
    assert_eq!(fk.backend_state(), Some(CLOSING));
    // SAFETY: a live queue handle; nothing else runs.
    unsafe { ffi::xbb_rs_queue_task(ffi::xbb_rs_queue(inst, 1), 1) };
    assert!(fk.st().ios.is_empty());
    detach_and_free(&fk);
    assert_clean(&fk);
}

fn localend_changed(fk: &FakeKernel, path: &str) {
    let p = std::ffi::CString::new(path).unwrap();
    // SAFETY: the live handle of fk; p is NUL-terminated and lives across
    // the call.
    unsafe { ffi::xbb_rs_localend_changed(fk.inst.get(), p.as_ptr()) };
    fk.pump();
}

/// Log lines that name the back-end directory.
fn log_lines_for_backend() -> usize {
    LOG.lock()
        .unwrap_or_else(|e| e.into_inner())
        .iter()
        .filter(|l| l.contains(BE_NODE))
        .count()
}

/// Attaches an instance whose back-end directory names a hotplug script
/// and connects a front-end: it must stay in InitWait, the script not
/// having run. Returns the front-end's ring.
fn attached_waiting_for_script(fk: &FakeKernel) -> FrontRing {
    fk.st()
        .xs
        .insert(format!("{BE_PATH}/script"), "/etc/xen/scripts/block".into());
    assert_eq!(attach(fk, &default_tunables()), 0);
    assert_eq!(fk.backend_state(), Some(INITWAIT));
    let ring = fk.frontend_connect(1);
    otherend_changed(fk);
    assert_eq!(
        fk.backend_state(),
        Some(INITWAIT),
        "no Connected before the hotplug script ran"
    );
    ring
}

#[test]
fn hotplug_script_gates_connected_until_hotplug_status() {
    let (_m, fk) = loaded();
    let _ring = attached_waiting_for_script(&fk);
    // Another node of the back-end directory changes: still waiting.
    localend_changed(&fk, "/state");
    assert_eq!(fk.backend_state(), Some(INITWAIT));
    fk.st()
        .xs
        .insert(format!("{BE_PATH}/hotplug-status"), "error".into());
    localend_changed(&fk, "/hotplug-status");
    assert_eq!(fk.backend_state(), Some(INITWAIT));
    fk.st()
        .xs
        .insert(format!("{BE_PATH}/hotplug-status"), "connected".into());
    localend_changed(&fk, "/hotplug-status");
    assert_eq!(fk.backend_state(), Some(CONNECTED), "{}", last_error(&fk));
    detach_clean(&fk);
}

/// In a FreeBSD dom0 or driver domain the `block` script writes
/// `physical-device-path` and nothing else: the forwarded change ends the
/// wait.
#[test]
fn freebsd_block_script_ends_the_wait_with_physical_device_path() {
    let (_m, fk) = loaded();
    let _ring = attached_waiting_for_script(&fk);
    fk.st()
        .xs
        .insert(format!("{BE_PATH}/physical-device-path"), DISK.into());
    localend_changed(&fk, "/physical-device-path");
    assert_eq!(fk.backend_state(), Some(CONNECTED), "{}", last_error(&fk));
    detach_clean(&fk);
}

#[test]
fn without_a_hotplug_script_connects_at_once() {
    let (_m, fk) = loaded();
    assert!(fk.xs(&format!("{BE_PATH}/script")).is_none());
    let _ring = connect(&fk, 1);
    assert!(fk.xs(&format!("{BE_PATH}/hotplug-status")).is_none());
    detach_clean(&fk);
}

/// Removes the back-end directory as the toolstack does.
fn remove_backend_dir(fk: &FakeKernel) {
    let below = format!("{BE_PATH}/");
    fk.st().xs.retain(|k, _| !k.starts_with(&below));
}

#[test]
fn a_removed_backend_directory_gets_no_more_writes() {
    let (_m, fk) = loaded();
    let _ring = connect(&fk, 1);
    let logged = log_lines_for_backend();
    remove_backend_dir(&fk);
    localend_changed(&fk, "");
    let writes = fk.st().writes;
    // The front-end goes away; the back-end closes and detaches without
    // writing (and so without making the directory again).
    fk.set_frontend_state(XenbusState::Closed);
    otherend_changed(&fk);
    detach_and_free(&fk);
    assert_eq!(fk.st().writes, writes, "no write reached XenStore");
    assert!(
        !fk.st().xs.keys().any(|k| k.starts_with(BE_PATH)),
        "the directory was not made again"
    );
    assert_eq!(log_lines_for_backend(), logged, "nothing logged");
    assert_clean(&fk);
}

#[test]
fn a_refused_write_into_a_removed_directory_stops_the_writes_quietly() {
    let (_m, fk) = loaded();
    let _ring = connect(&fk, 1);
    let logged = log_lines_for_backend();
    // The directory goes before the watch reports it; the next write is
    // refused (EACCES, as in a driver domain), and that is the last one.
    fk.st().faults.driver_domain_acl = true;
    remove_backend_dir(&fk);
    fk.set_frontend_state(XenbusState::Closing);
    otherend_changed(&fk);
    let writes = fk.st().writes;
    fk.set_frontend_state(XenbusState::Closed);
    otherend_changed(&fk);
    localend_changed(&fk, "");
    detach_and_free(&fk);
    assert!(writes > 0);
    assert_eq!(fk.st().writes, writes, "no write after the refused one");
    assert!(!fk.st().xs.keys().any(|k| k.starts_with(BE_PATH)));
    let log = LOG.lock().unwrap_or_else(|e| e.into_inner()).clone();
    assert!(
        !log.iter().any(|l| l.contains("permission denied")),
        "{log:?}"
    );
    assert_eq!(log_lines_for_backend(), logged, "{log:?}");
    assert_clean(&fk);
}

/// The guest is destroyed: the toolstack removes the front-end's
/// directory, and the back-end's watch fires. In a driver domain the read
/// of the front-end's `state` is refused with `EACCES` (its parents are
/// gone and were never the back-end's to read); that is a front-end gone,
/// not an error to report: the back-end closes quietly, and once the
/// directory of its own goes too it writes nothing more.
#[test]
fn a_destroyed_guest_in_a_driver_domain_closes_without_an_error() {
    let (_m, fk) = loaded();
    let _ring = connect(&fk, 1);
    let logged = log_lines_for_backend();
    fk.st().faults.driver_domain_acl = true;
    let below = format!("{FE_PATH}/");
    fk.st().xs.retain(|k, _| !k.starts_with(&below));
    otherend_changed(&fk);
    let state = fk.st().xs.get(&format!("{BE_PATH}/state")).cloned();
    assert_eq!(state.as_deref(), Some(XenbusState::Closed.as_str()));
    remove_backend_dir(&fk);
    let writes = fk.st().writes;
    localend_changed(&fk, "");
    otherend_changed(&fk);
    detach_and_free(&fk);
    assert_eq!(fk.st().writes, writes, "no write after the removal");
    let log = LOG.lock().unwrap_or_else(|e| e.into_inner()).clone();
    assert!(
        !log.iter().any(|l| l.contains("permission denied")),
        "{log:?}"
    );
    assert_eq!(log_lines_for_backend(), logged, "{log:?}");
    assert_clean(&fk);
}

const KIND_READ: usize = ffi::XBB_SHIM_KIND_READ as usize;
const KIND_WRITE: usize = ffi::XBB_SHIM_KIND_WRITE as usize;
const GUEST: usize = ffi::XBB_SHIM_VIEW_GUEST as usize;
const STORE: usize = ffi::XBB_SHIM_VIEW_STORE as usize;

fn probes_of(fk: &FakeKernel, probe: u32) -> Vec<(u32, [u64; 4])> {
    fk.st()
        .probes
        .iter()
        .filter(|p| p.0 == probe)
        .map(|p| (p.1, p.2))
        .collect()
}

#[test]
fn devstat_counts_every_request_and_io_in_pairs_and_goes_at_detach() {
    let (_m, fk) = loaded();
    assert!(!fk.st().stat_entries);
    let mut ring = connect(&fk, 1);
    assert!(fk.st().stat_entries, "created at attach");
    // Three pages at 16 in one request, one page at 64: two writes (not
    // contiguous: not coalesced).
    let data: Vec<Vec<u8>> = (1..=4).map(pattern).collect();
    let w: Vec<u32> = data.iter().map(|d| fk.grant(d, true)).collect();
    submit(&fk, &mut ring, &rw_request(BLKIF_OP_WRITE, 1, 16, &w[..3]));
    submit(&fk, &mut ring, &rw_request(BLKIF_OP_WRITE, 2, 64, &w[3..]));
    fk.run_tasks();
    {
        let st = fk.st();
        let (g, s) = (st.devstat[GUEST], st.devstat[STORE]);
        assert_eq!((g.started, g.ended), (2, 0), "in flight: started only");
        assert_eq!((s.started, s.ended), (2, 0));
    }
    fk.pump();
    assert_eq!(responses(&mut ring).len(), 2);
    let r: Vec<u32> = (0..4).map(|_| fk.grant(&[], false)).collect();
    submit(&fk, &mut ring, &rw_request(BLKIF_OP_READ, 3, 16, &r[..3]));
    submit(&fk, &mut ring, &rw_request(BLKIF_OP_READ, 4, 64, &r[3..]));
    fk.pump();
    assert_eq!(responses(&mut ring).len(), 2);
    let page = PAGE_SIZE as u64;
    {
        let st = fk.st();
        for view in [GUEST, STORE] {
            let d = st.devstat[view];
            assert_eq!((d.started, d.ended, d.errors), (4, 4, 0), "view {view}");
            assert_eq!(d.ops[KIND_WRITE], 2);
            assert_eq!(d.ops[KIND_READ], 2);
            assert_eq!(d.bytes[KIND_WRITE], 4 * page);
            assert_eq!(d.bytes[KIND_READ], 4 * page);
        }
    }
    // The same numbers as dev.xbb.N.
    assert_eq!(
        fk.st().devstat[GUEST].bytes[KIND_WRITE],
        sysctl(&fk, "bytes_written")
    );
    assert_eq!(
        fk.st().devstat[GUEST].bytes[KIND_READ],
        sysctl(&fk, "bytes_read")
    );
    // A request refused before it starts is not a devstat transaction.
    let g = fk.grant(&[], false);
    submit(&fk, &mut ring, &rw_request(BLKIF_OP_READ, 5, SECTORS, &[g]));
    fk.pump();
    assert_eq!(responses(&mut ring)[0].status, BLKIF_RSP_ERROR);
    assert_eq!(fk.st().devstat[GUEST].started, 4);
    detach_and_free(&fk);
    let st = fk.st();
    assert!(!st.stat_entries, "removed at detach");
    assert_eq!(st.stat_attaches, 1);
    assert!(st.violations.is_empty(), "{:?}", st.violations);
}

#[test]
fn devstat_ends_failed_io_too() {
    let (_m, fk) = loaded();
    let mut ring = connect(&fk, 1);
    fk.st().faults.store_gone = true;
    write_page(&fk, &mut ring, 21, 0, 7);
    fk.pump();
    assert_eq!(responses(&mut ring)[0].status, BLKIF_RSP_ERROR);
    {
        let st = fk.st();
        for view in [GUEST, STORE] {
            let d = st.devstat[view];
            assert_eq!((d.started, d.ended, d.errors), (1, 1, 1), "view {view}");
        }
    }
    let io_errors = probes_of(&fk, ffi::XBB_SHIM_PROBE_IO_ERROR);
    assert_eq!(io_errors.len(), 1);
    assert_eq!(io_errors[0].1[0], u64::from(ffi::XBB_SHIM_KIND_WRITE));
    assert_eq!(io_errors[0].1[2], ENXIO as u64);
    detach_clean(&fk);
}

#[test]
fn probes_fire_at_connect_requests_dispatch_errors_and_disconnect() {
    let (_m, fk) = loaded();
    let mut ring = connect(&fk, 1);
    let connects = probes_of(&fk, ffi::XBB_SHIM_PROBE_CONNECT);
    assert_eq!(connects, [(u32::MAX, [1, 0, 0, 0])], "one queue");
    write_page(&fk, &mut ring, 9, 8, 1);
    fk.pump();
    let start = probes_of(&fk, ffi::XBB_SHIM_PROBE_REQUEST_START);
    assert_eq!(start.len(), 1);
    let (q, a) = start[0];
    assert_eq!(q, 0);
    assert_eq!(
        a,
        [9, u64::from(ffi::XBB_SHIM_KIND_WRITE), 8, PAGE_SIZE as u64]
    );
    let done = probes_of(&fk, ffi::XBB_SHIM_PROBE_REQUEST_DONE);
    assert_eq!(done.len(), 1);
    assert_eq!(
        done[0].1,
        [9, u64::from(ffi::XBB_SHIM_KIND_WRITE), PAGE_SIZE as u64, 0]
    );
    let dispatch = probes_of(&fk, ffi::XBB_SHIM_PROBE_DISPATCH);
    assert_eq!(dispatch.len(), 1);
    assert_eq!(
        dispatch[0].1[..3],
        [u64::from(ffi::XBB_SHIM_KIND_WRITE), 8, PAGE_SIZE as u64]
    );
    // A request past the end: refused, status BLKIF_RSP_ERROR (-1).
    let g = fk.grant(&[], false);
    submit(
        &fk,
        &mut ring,
        &rw_request(BLKIF_OP_READ, 10, SECTORS, &[g]),
    );
    fk.pump();
    let refused = probes_of(&fk, ffi::XBB_SHIM_PROBE_REQUEST_REFUSED);
    assert_eq!(refused.len(), 1);
    assert_eq!(
        refused[0].1[..3],
        [10, u64::from(BLKIF_OP_READ), -1i64 as u64]
    );
    fk.set_frontend_state(XenbusState::Closed);
    otherend_changed(&fk);
    assert_eq!(probes_of(&fk, ffi::XBB_SHIM_PROBE_DISCONNECT).len(), 1);
    detach_clean(&fk);
}

#[test]
fn a_failed_connection_fires_the_connect_error_probe() {
    let (_m, fk) = loaded();
    assert_eq!(attach(&fk, &default_tunables()), 0);
    let _ring = fk.frontend_connect(1);
    fk.st().faults.ring_map = true;
    otherend_changed(&fk);
    assert_eq!(fk.backend_state(), Some(CLOSING));
    let errors = probes_of(&fk, ffi::XBB_SHIM_PROBE_CONNECT_ERROR);
    assert_eq!(errors.len(), 1);
    assert_ne!(errors[0].1[0], 0, "an errno");
    assert!(probes_of(&fk, ffi::XBB_SHIM_PROBE_CONNECT).is_empty());
    detach_clean(&fk);
}
