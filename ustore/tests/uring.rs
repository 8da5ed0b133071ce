//! The io_uring engine through the public path ([`open_store`] with
//! [`IoEngine::Uring`]): the test thread plays the platform's queue thread
//! (submit, [`UserStore::kick`] once per pass, [`UserStore::reap`]), and
//! every check is on the data the medium and the buffers hold: whole
//! transfers after injected short ones, errors as errors, close waiting for
//! I/O in flight (held or in the kernel), and the fallback to the worker
//! pool when io_uring setup is refused.

mod support;

use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Instant;

use support::{pattern, read, write, Buf, Collector, HANG_GUARD, PAGE};

use xbb::host::{IoError, IoTag};
use xbb_ustore::{open_store, IoEngine, IoFaults, StoreIo, StoreKind, StoreSpec, UserStore};

const MEDIUM: u64 = 1 << 20;

static UNIQUE: AtomicU32 = AtomicU32::new(0);

struct Rig {
    path: std::path::PathBuf,
    col: Arc<Collector>,
    store: Box<dyn UserStore>,
    _faults: Arc<IoFaults>,
}

impl Drop for Rig {
    fn drop(&mut self) {
        self.store.close();
        let _ = std::fs::remove_file(&self.path);
    }
}

fn rig(kind: StoreKind, sector_size: u32, faults: Arc<IoFaults>) -> Rig {
    let n = UNIQUE.fetch_add(1, Ordering::Relaxed);
    let path = std::env::temp_dir().join(format!(
        "xbb-uring-{}-{kind:?}-{sector_size}-{n}",
        std::process::id()
    ));
    std::fs::File::create(&path)
        .unwrap()
        .set_len(MEDIUM)
        .unwrap();
    let spec = StoreSpec {
        kind,
        path: path.clone(),
        writable: true,
        sector_size,
        faults: Some(Arc::clone(&faults)),
        cache: None,
        engine: IoEngine::Uring,
        direct: false,
    };
    let col = Arc::new(Collector::default());
    let store = open_store(&spec, col.completion()).unwrap();
    Rig {
        path,
        col,
        store,
        _faults: faults,
    }
}

impl Rig {
    /// One pass: submits `ios` (tags from `first`), kicks once, then reaps
    /// until every one has completed; their outcomes in order.
    fn pass(&self, first: u32, ios: Vec<StoreIo>) -> Vec<Result<(), IoError>> {
        let n = ios.len() as u32;
        for (i, io) in ios.into_iter().enumerate() {
            self.store.submit(IoTag(first + i as u32), io).unwrap();
        }
        self.store.kick();
        let t0 = Instant::now();
        let mut out = vec![None; n as usize];
        while out.iter().any(Option::is_none) {
            assert!(t0.elapsed() < HANG_GUARD, "store hung");
            self.store.reap();
            for (i, o) in out.iter_mut().enumerate() {
                if o.is_none() {
                    *o = self.col.take_now(IoTag(first + i as u32));
                }
            }
            std::thread::yield_now();
        }
        out.into_iter().map(Option::unwrap).collect()
    }

    fn file_bytes(&self, at: u64, len: usize) -> Vec<u8> {
        use std::os::unix::fs::FileExt;
        let mut v = vec![0u8; len];
        std::fs::File::open(&self.path)
            .unwrap()
            .read_exact_at(&mut v, at)
            .unwrap();
        v
    }
}

/// `pieces` pieces of one page each, of `buf`.
fn pieces(buf: &mut Buf, pieces: usize) -> Vec<xbb_ustore::RawIoVec> {
    (0..pieces).map(|i| buf.iov(i * PAGE, PAGE)).collect()
}

#[test]
fn uring_reads_back_what_it_wrote_file_and_device() {
    for (kind, ss) in [
        (StoreKind::File, 512),
        (StoreKind::Device, 4096),
        (StoreKind::File, 4096),
    ] {
        let r = rig(kind, ss, Arc::new(IoFaults::new()));
        assert_eq!(r.store.engine(), IoEngine::Uring, "{kind:?}");
        assert!(r.store.completion_fd().is_some());
        let mut src = Buf::filled(8 * PAGE, 7);
        let mut dst = Buf::new(8 * PAGE);
        let outs = r.pass(
            1,
            vec![write(64 * 1024, pieces(&mut src, 8)), StoreIo::Flush],
        );
        assert_eq!(outs, vec![Ok(()), Ok(())], "{kind:?}");
        assert_eq!(r.file_bytes(64 * 1024, 8 * PAGE), src.bytes(), "{kind:?}");
        let outs = r.pass(10, vec![read(64 * 1024, pieces(&mut dst, 8))]);
        assert_eq!(outs, vec![Ok(())]);
        assert_eq!(dst.bytes(), src.bytes(), "{kind:?}");
        // Many I/Os in one pass, more than the ring's slots: they wait
        // for slots in order and all complete.
        let n = xbb_ustore::URING_SLOTS + 40;
        let mut bufs: Vec<Buf> = (0..n).map(|i| Buf::filled(PAGE, i as u64)).collect();
        let ios = bufs
            .iter_mut()
            .enumerate()
            .map(|(i, b)| write((i * PAGE) as u64, vec![b.iov(0, PAGE)]))
            .collect();
        assert!(r.pass(100, ios).iter().all(Result::is_ok));
        for (i, b) in bufs.iter().enumerate() {
            assert_eq!(r.file_bytes((i * PAGE) as u64, PAGE), b.bytes(), "{i}");
        }
    }
}

#[test]
fn uring_discard_punches_a_hole_as_the_pool_does() {
    let r = rig(StoreKind::File, 512, Arc::new(IoFaults::new()));
    if !r.store.info().can_discard {
        return; // The file system cannot punch holes.
    }
    let mut src = Buf::filled(4 * PAGE, 3);
    assert_eq!(r.pass(1, vec![write(0, pieces(&mut src, 4))]), vec![Ok(())]);
    let d = StoreIo::Discard {
        offset: PAGE as u64,
        len: 2 * PAGE as u64,
        secure: false,
    };
    assert_eq!(r.pass(2, vec![d]), vec![Ok(())]);
    let got = r.file_bytes(0, 4 * PAGE);
    assert_eq!(&got[..PAGE], &src.bytes()[..PAGE]);
    assert!(got[PAGE..3 * PAGE].iter().all(|&b| b == 0));
    assert_eq!(&got[3 * PAGE..], &src.bytes()[3 * PAGE..]);
}

#[test]
fn uring_short_transfers_are_finished_not_returned_partial() {
    let faults = Arc::new(IoFaults::new());
    let r = rig(StoreKind::File, 512, Arc::clone(&faults));
    faults.shorten(4);
    let mut a = Buf::filled(8 * PAGE, 11);
    let mut b = Buf::filled(3 * PAGE, 12);
    let outs = r.pass(
        1,
        vec![
            write(0, pieces(&mut a, 8)),
            write(0x20000, pieces(&mut b, 3)),
        ],
    );
    assert_eq!(outs, vec![Ok(()), Ok(())]);
    assert_eq!(r.file_bytes(0, 8 * PAGE), a.bytes());
    assert_eq!(r.file_bytes(0x20000, 3 * PAGE), b.bytes());
    let mut ra = Buf::new(8 * PAGE);
    let mut rb = Buf::new(3 * PAGE);
    let outs = r.pass(
        3,
        vec![
            read(0, pieces(&mut ra, 8)),
            read(0x20000, pieces(&mut rb, 3)),
        ],
    );
    assert_eq!(outs, vec![Ok(()), Ok(())]);
    assert_eq!(ra.bytes(), a.bytes());
    assert_eq!(rb.bytes(), b.bytes());
    assert_eq!(faults.counters().short, 4, "every I/O was cut short once");
}

#[test]
fn uring_errors_are_errors() {
    let faults = Arc::new(IoFaults::new());
    let r = rig(StoreKind::File, 512, Arc::clone(&faults));
    let mut src = Buf::filled(2 * PAGE, 9);
    faults.fail_nth(2, IoError::Io);
    faults.fail_flush(IoError::NoSpace);
    let outs = r.pass(
        1,
        vec![
            write(0, pieces(&mut src, 1)),
            write(PAGE as u64, vec![src.iov(PAGE, PAGE)]),
            StoreIo::Flush,
            // Out of range and misaligned: refused, through the ring.
            write(MEDIUM, pieces(&mut src, 1)),
            write(1, pieces(&mut src, 1)),
        ],
    );
    assert_eq!(
        outs,
        vec![
            Ok(()),
            Err(IoError::Io),
            Err(IoError::NoSpace),
            Err(IoError::Io),
            Err(IoError::Io)
        ]
    );
    assert_eq!(r.file_bytes(PAGE as u64, PAGE), vec![0u8; PAGE]);
    // A read-only store refuses writes at submission; the outcome still
    // arrives through the ring, and close delivers it.
    faults.clear();
    let col = Arc::new(Collector::default());
    let spec = StoreSpec {
        kind: StoreKind::File,
        path: r.path.clone(),
        writable: false,
        sector_size: 512,
        faults: None,
        cache: None,
        engine: IoEngine::Uring,
        direct: false,
    };
    let ro = open_store(&spec, col.completion()).unwrap();
    ro.submit(IoTag(1), write(0, pieces(&mut src, 1))).unwrap();
    ro.kick();
    ro.close();
    assert_eq!(col.take_now(IoTag(1)), Some(Err(IoError::Io)));
}

#[test]
fn uring_close_waits_for_held_io_before_it_returns() {
    // The teardown rule: close returns only once every I/O is complete,
    // so that the caller may unmap the buffers. Held I/O is in no ring
    // yet; close must neither return nor drop it.
    let faults = Arc::new(IoFaults::new());
    let r = rig(StoreKind::File, 512, Arc::clone(&faults));
    let mut src = Buf::filled(4 * PAGE, 21);
    assert_eq!(r.pass(1, vec![write(0, pieces(&mut src, 4))]), vec![Ok(())]);
    let mut dst = Buf::new(4 * PAGE);
    faults.hold();
    for i in 0..4 {
        r.store
            .submit(
                IoTag(10 + i),
                read(
                    i as u64 * PAGE as u64,
                    vec![dst.iov(i as usize * PAGE, PAGE)],
                ),
            )
            .unwrap();
    }
    r.store.kick();
    let closed = AtomicBool::new(false);
    std::thread::scope(|s| {
        s.spawn(|| {
            r.store.close();
            // Every completion has been delivered by now.
            assert_eq!(
                r.col.pending(),
                4,
                "close returned before its I/O completed"
            );
            closed.store(true, Ordering::SeqCst);
        });
        std::thread::sleep(std::time::Duration::from_millis(50));
        assert!(
            !closed.load(Ordering::SeqCst),
            "close returned with I/O held"
        );
        assert_eq!(r.col.pending(), 0, "held I/O completed");
        faults.release();
    });
    assert!(closed.load(Ordering::SeqCst));
    for i in 0..4 {
        assert_eq!(r.col.take_now(IoTag(10 + i)), Some(Ok(())));
    }
    assert_eq!(dst.bytes(), src.bytes());
    // Closed: no more I/O.
    assert_eq!(
        r.store.submit(IoTag(99), StoreIo::Flush),
        Err(IoError::Gone)
    );
}

#[test]
fn uring_close_drains_io_in_the_kernel() {
    // I/O submitted to the kernel and never reaped by the queue thread:
    // close reaps it (waiting in the kernel) before it returns, and the
    // buffers hold the data — the caller may free them right after.
    let r = rig(StoreKind::Device, 4096, Arc::new(IoFaults::new()));
    let n = 64usize;
    let mut src = Buf::new(n * PAGE);
    pattern(33, src.bytes_mut());
    assert_eq!(r.pass(1, vec![write(0, pieces(&mut src, n))]), vec![Ok(())]);
    let mut dst = Buf::new(n * PAGE);
    for i in 0..n {
        r.store
            .submit(
                IoTag(100 + i as u32),
                read((i * PAGE) as u64, vec![dst.iov(i * PAGE, PAGE)]),
            )
            .unwrap();
    }
    r.store.kick();
    r.store.close();
    assert_eq!(
        r.col.pending(),
        n,
        "close returned before its I/O completed"
    );
    assert_eq!(dst.bytes(), src.bytes());
    drop(dst);
}

#[test]
fn refused_uring_setup_falls_back_to_the_pool() {
    for errno in [libc::ENOSYS, libc::EPERM] {
        let faults = Arc::new(IoFaults::new());
        faults.refuse_uring(errno);
        let r = rig(StoreKind::File, 512, faults);
        assert_eq!(r.store.engine(), IoEngine::Pool);
        assert_eq!(r.store.completion_fd(), None);
        // The pool delivers on its own threads; kick and reap are no-ops.
        let mut src = Buf::filled(2 * PAGE, 2);
        let mut dst = Buf::new(2 * PAGE);
        r.store
            .submit(IoTag(1), write(0, pieces(&mut src, 2)))
            .unwrap();
        assert_eq!(r.col.wait(IoTag(1)), Ok(()));
        r.store
            .submit(IoTag(2), read(0, pieces(&mut dst, 2)))
            .unwrap();
        assert_eq!(r.col.wait(IoTag(2)), Ok(()));
        assert_eq!(dst.bytes(), src.bytes());
    }
}
