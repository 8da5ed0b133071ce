//! The NBD store as its process sees it, in a test binary of its own: the
//! binary's global allocator counts, and the watcher of store memory is
//! one per process.
//!
//! - No allocation on the I/O path (DESIGN.md, "Rules every room keeps"):
//!   after a warm-up, a batch of reads and writes (single and scattered
//!   buffers, bounced or not), writes of zeros, flushes and discards is
//!   submitted and completed while the submitting thread and the store's
//!   I/O thread count their allocations; both counts must be zero. libnbd's
//!   own record per command comes from the C allocator and is not counted
//!   (no caller can avoid it).
//! - The memory the store copies guest data through is reported to the
//!   process's watcher while the store is open (xbb-serve lists it in its
//!   fatal-signal report).
//!
//! Skipped with a message where libnbd or nbdkit is missing, unless
//! `XBB_REQUIRE_NBD` is set.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use xbb::host::{IoTag, OpenError};
use xbb_testing::alloc::{allocations_in, counted, start_counting, Counting};
use xbb_ustore::{open_nbd_store, NbdSpec, RawIoVec, StoreIo, UserStore};

mod support;
use support::{read, write, NbdServer};

#[global_allocator]
static ALLOCATOR: Counting = Counting;

/// The tests share the process's watcher: one at a time.
static SERIAL: Mutex<()> = Mutex::new(());

const MEDIUM: u64 = 16 << 20;
const HANG_GUARD: Duration = Duration::from_secs(120);

/// What the completions of the store report, without allocating.
#[derive(Default)]
struct Probe {
    done: AtomicU64,
    failed: AtomicU64,
    /// The next completion switches counting on in the I/O thread.
    arm: AtomicBool,
    armed: AtomicBool,
    /// The next completion stores the I/O thread's count in `measured`.
    read_out: AtomicBool,
    measured: AtomicU64,
}

impl Probe {
    fn wait(&self, n: u64) {
        let t = Instant::now();
        while self.done.load(Ordering::Acquire) < n {
            assert!(t.elapsed() < HANG_GUARD, "completions stopped coming");
            std::thread::sleep(Duration::from_millis(2));
        }
    }
}

fn open(srv: &NbdServer, probe: &Arc<Probe>) -> Result<Box<dyn UserStore>, OpenError> {
    let p = Arc::clone(probe);
    open_nbd_store(
        &NbdSpec::new(&srv.uri),
        Arc::new(move |_tag: IoTag, r| {
            if r.is_err() {
                p.failed.fetch_add(1, Ordering::AcqRel);
            }
            if p.arm.load(Ordering::Acquire) && !p.armed.swap(true, Ordering::AcqRel) {
                start_counting();
            }
            if p.read_out.load(Ordering::Acquire) {
                p.measured.store(counted(), Ordering::Release);
            }
            p.done.fetch_add(1, Ordering::AcqRel);
        }),
    )
}

/// Memory for the I/Os' buffers, made before anything is counted.
struct Mem(Vec<u8>);

impl Mem {
    fn piece(&mut self, off: usize, len: usize) -> RawIoVec {
        assert!(off + len <= self.0.len());
        RawIoVec {
            addr: self.0.as_mut_ptr() as usize + off,
            len,
        }
    }
}

/// One round of every kind of I/O the store serves, over its own region of
/// the medium: `round` picks the region; the buffers are `data` (a
/// pattern) and `zeros`.
fn batch(round: u64, data: &mut Mem, zeros: &mut Mem) -> Vec<StoreIo> {
    let base = round * (1 << 20);
    let mut v = Vec::new();
    for i in 0..8u64 {
        let at = base + i * 65536;
        // One piece: sent as it is.
        v.push(write(at, vec![data.piece(0, 16384)]));
        // Scattered pieces, back to front: bounced.
        v.push(write(
            at + 16384,
            vec![data.piece(8192, 4096), data.piece(0, 4096)],
        ));
        // Zeros: write-zeroes.
        v.push(write(
            at + 32768,
            vec![zeros.piece(4096, 4096), zeros.piece(0, 4096)],
        ));
        v.push(read(at, vec![data.piece(32768, 16384)]));
        v.push(read(
            at + 16384,
            vec![data.piece(65536, 4096), data.piece(49152, 4096)],
        ));
        v.push(StoreIo::Discard {
            offset: at + 49152,
            len: 8192,
            secure: false,
        });
    }
    v.push(StoreIo::Flush);
    v
}

#[test]
fn the_io_path_allocates_nothing() {
    let _one = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let Some(srv) = NbdServer::nbdkit("noalloc", MEDIUM, &[], &[]) else {
        return;
    };
    let probe = Arc::new(Probe::default());
    let s = open(&srv, &probe).unwrap();
    let mut data = Mem((0..1 << 17).map(|i| (i % 251) as u8 + 1).collect());
    let mut zeros = Mem(vec![0; 8192]);
    let mut tag = 0u32;
    let mut submit_all = |ios: Vec<StoreIo>| {
        for io in ios {
            tag += 1;
            s.submit(IoTag(tag), io).unwrap();
        }
    };
    // Warm-up: every path taken once, every queue at its working size.
    let warm = batch(0, &mut data, &mut zeros);
    let n_warm = warm.len() as u64;
    submit_all(warm);
    probe.wait(n_warm);
    // Counting on in the I/O thread, from inside a completion.
    probe.arm.store(true, Ordering::Release);
    submit_all(vec![StoreIo::Flush]);
    probe.wait(n_warm + 1);
    assert!(probe.armed.load(Ordering::Acquire));
    // The batch: built first (its vectors are the submitter's, as a
    // platform builds them), then submitted and served with counting on.
    let ios = batch(1, &mut data, &mut zeros);
    let n = ios.len() as u64;
    let ((), submitter) = allocations_in(|| submit_all(ios));
    probe.wait(n_warm + 1 + n);
    // The I/O thread's count, read by one more completion.
    probe.read_out.store(true, Ordering::Release);
    submit_all(vec![StoreIo::Flush]);
    probe.wait(n_warm + n + 2);
    let io_thread = probe.measured.load(Ordering::Acquire);
    s.close();
    assert_eq!(probe.failed.load(Ordering::Acquire), 0, "an I/O failed");
    assert_eq!(submitter, 0, "submitting allocated");
    assert_eq!(io_thread, 0, "the store's I/O thread allocated");
}

/// Store memory the watcher was told about and has not seen dropped.
static LIVE: AtomicUsize = AtomicUsize::new(0);
static BYTES: AtomicUsize = AtomicUsize::new(0);

struct Report;

impl Drop for Report {
    fn drop(&mut self) {
        LIVE.fetch_sub(1, Ordering::AcqRel);
    }
}

fn watcher(_addr: usize, len: usize) -> Box<dyn Send> {
    LIVE.fetch_add(1, Ordering::AcqRel);
    BYTES.store(len, Ordering::Release);
    Box::new(Report)
}

#[test]
fn the_bounce_memory_is_reported_while_the_store_is_open() {
    let _one = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let Some(srv) = NbdServer::nbdkit("watch", MEDIUM, &[], &[]) else {
        return;
    };
    xbb_ustore::watch_store_memory(watcher);
    let probe = Arc::new(Probe::default());
    let s = open(&srv, &probe).unwrap();
    // The I/O thread makes its chunks as it starts; one I/O has gone
    // through it once its completion came.
    s.submit(IoTag(1), StoreIo::Flush).unwrap();
    probe.wait(1);
    assert_eq!(
        LIVE.load(Ordering::Acquire),
        1,
        "the chunks were not reported"
    );
    assert_eq!(BYTES.load(Ordering::Acquire), 8 << 20);
    s.close();
    assert_eq!(
        LIVE.load(Ordering::Acquire),
        0,
        "the report outlived the store"
    );
}
