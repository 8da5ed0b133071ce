//! "No allocation on the I/O path" for the io_uring engine: a queue's
//! submissions through [`StoreHandle::submit_into`], its kick and its reap
//! (completions delivered on the same thread) allocate nothing once the
//! store is open — the window pieces resolve into the handle's buffer, the
//! store copies them into its slots' preallocated arrays. The worker pool
//! is the contrast: each I/O there is an owned job.

mod support;

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;

use support::{Buf, PAGE};

use xbb::host::{IoOp, IoTag, IoVec, OpenParams};
use xbb::units::Bytes;
use xbb_testing::alloc::{allocations_in, Counting};
use xbb_ustore::{HostStore, IoEngine, RawIoVec, StoreHandle, StoreOptions};

#[global_allocator]
static ALLOCATOR: Counting = Counting;

/// The test's "window": one buffer, pieces named by offset into it.
fn resolve(base: usize, iov: &[IoVec], out: &mut Vec<RawIoVec>) -> Option<()> {
    for v in iov {
        out.push(RawIoVec {
            addr: base + v.window_offset,
            len: v.len,
        });
    }
    Some(())
}

/// One pass of `n` one-page I/Os (writes, then reads back), kicked once
/// and reaped until `done` counted them all.
fn pass(h: &mut StoreHandle, base: usize, n: usize, done: &AtomicU32, write: bool) {
    let before = done.load(Ordering::Acquire);
    for i in 0..n {
        let iov = [IoVec {
            window_offset: i * PAGE,
            len: PAGE,
        }];
        let offset = Bytes((i * PAGE) as u64);
        let op = if write {
            IoOp::Write { offset, iov: &iov }
        } else {
            IoOp::Read { offset, iov: &iov }
        };
        h.submit_into(IoTag(i as u32), op, |iov, _, out| resolve(base, iov, out))
            .unwrap();
    }
    h.kick();
    while done.load(Ordering::Acquire) < before + n as u32 {
        h.reap();
        std::thread::yield_now();
    }
}

#[test]
fn uring_io_path_allocates_nothing() {
    let path = std::env::temp_dir().join(format!("xbb-uring-alloc-{}", std::process::id()));
    std::fs::File::create(&path)
        .unwrap()
        .set_len(1 << 20)
        .unwrap();
    let mut hs = HostStore::new(StoreOptions {
        engine: IoEngine::Uring,
        ..StoreOptions::default()
    });
    let done = Arc::new(AtomicU32::new(0));
    let d = Arc::clone(&done);
    let params = OpenParams {
        path: path.to_str().unwrap(),
        kind: "file",
        writable: true,
        direct_io_safe: false,
    };
    hs.open(params, xbb_ustore::probe, move |_, r| {
        assert_eq!(r, Ok(()));
        d.fetch_add(1, Ordering::AcqRel);
    })
    .unwrap();
    assert_eq!(hs.engine(), Some(IoEngine::Uring));
    let mut h = hs.handle().unwrap();
    let n = 32;
    let mut src = Buf::filled(n * PAGE, 77);
    let base = src.iov(0, 0).addr;
    let ((), writes) = allocations_in(|| pass(&mut h, base, n, &done, true));
    let mut dst = Buf::new(n * PAGE);
    let base = dst.iov(0, 0).addr;
    let ((), reads) = allocations_in(|| pass(&mut h, base, n, &done, false));
    assert_eq!(dst.bytes(), src.bytes());
    assert_eq!((writes, reads), (0, 0), "allocations on the I/O path");
    drop(h);
    hs.close();
    let _ = std::fs::remove_file(&path);
}
