//! One conformance suite run over every back-end store of the simulated host:
//! file stores and device stores, with 512-byte and 4096-byte logical
//! sectors, each kind with a volatile write cache in front (power on), and
//! NBD stores over nbdkit's memory plugin and over qemu-nbd serving a qcow2
//! image, and file and device stores served through io_uring. Each
//! property is a function over `&dyn UserStore` (plus the
//! fixture that can reopen it) and is checked on every case.

mod support;

use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;

use support::{Buf, Collector, NbdServer, PAGE};

use xbb::host::{IoError, IoTag, OpenError};
use xbb::units::Sectors;
use xbb_ustore::{
    open_nbd_store, open_store, resize_medium, CompletionFn, IoEngine, IoFaults, NbdSpec, RawIoVec,
    StoreIo, StoreKind, StoreSpec, UserStore, WriteCache,
};

/// Size of every test medium.
const MEDIUM: u64 = 1 << 20;

#[derive(Clone, Copy, Debug)]
struct Case {
    kind: StoreKind,
    sector_size: u32,
    /// A volatile write cache in front ([`WriteCache`]): with the power on
    /// it must be a store like any other.
    cached: bool,
    /// Served through io_uring ([`IoEngine::Uring`]), driven as a
    /// platform's queue thread drives it ([`Driven`]).
    uring: bool,
    /// Opened as the toolstack's `direct-io-safe` asks (`O_DIRECT` for a
    /// file store too, where the file system takes it).
    direct: bool,
}

const CASES: [Case; 10] = [
    Case {
        kind: StoreKind::File,
        sector_size: 512,
        cached: false,
        uring: false,
        direct: false,
    },
    Case {
        kind: StoreKind::File,
        sector_size: 4096,
        cached: false,
        uring: false,
        direct: false,
    },
    Case {
        kind: StoreKind::Device,
        sector_size: 512,
        cached: false,
        uring: false,
        direct: false,
    },
    Case {
        kind: StoreKind::Device,
        sector_size: 4096,
        cached: false,
        uring: false,
        direct: false,
    },
    Case {
        kind: StoreKind::File,
        sector_size: 512,
        cached: true,
        uring: false,
        direct: false,
    },
    Case {
        kind: StoreKind::Device,
        sector_size: 4096,
        cached: true,
        uring: false,
        direct: false,
    },
    Case {
        kind: StoreKind::File,
        sector_size: 512,
        cached: false,
        uring: true,
        direct: false,
    },
    Case {
        kind: StoreKind::Device,
        sector_size: 4096,
        cached: false,
        uring: true,
        direct: false,
    },
    Case {
        kind: StoreKind::File,
        sector_size: 512,
        cached: false,
        uring: false,
        direct: true,
    },
    Case {
        kind: StoreKind::File,
        sector_size: 4096,
        cached: false,
        uring: true,
        direct: true,
    },
];

// ---------------------------------------------------------------------------
// Driven: an io_uring store with a thread that plays the platform's queue
// thread (kick after submitting, reap what completed)

/// An io_uring store, kicked after each submission and reaped by a thread
/// of its own, so that the properties (written for stores that deliver on
/// their own threads) hold over it unchanged.
struct Driven {
    inner: Arc<dyn UserStore>,
    stop: Arc<std::sync::atomic::AtomicBool>,
    reaper: Option<std::thread::JoinHandle<()>>,
}

impl Driven {
    fn new(inner: Box<dyn UserStore>) -> Driven {
        let inner: Arc<dyn UserStore> = Arc::from(inner);
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (s, st) = (Arc::clone(&inner), Arc::clone(&stop));
        let reaper = std::thread::spawn(move || {
            while !st.load(Ordering::Acquire) {
                // Kicks too: I/O released from a hold is submitted here.
                s.kick();
                s.reap();
                std::thread::sleep(std::time::Duration::from_micros(200));
            }
        });
        Driven {
            inner,
            stop,
            reaper: Some(reaper),
        }
    }
}

impl UserStore for Driven {
    fn info(&self) -> xbb::host::MediumInfo {
        self.inner.info()
    }
    fn submit(&self, tag: IoTag, io: StoreIo) -> Result<(), IoError> {
        self.inner.submit(tag, io)?;
        self.inner.kick();
        Ok(())
    }
    fn close(&self) {
        self.inner.close();
    }
    fn direct_io(&self) -> bool {
        self.inner.direct_io()
    }
    fn engine(&self) -> IoEngine {
        self.inner.engine()
    }
}

impl Drop for Driven {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        if let Some(t) = self.reaper.take() {
            let _ = t.join();
        }
        self.inner.close();
    }
}

// ---------------------------------------------------------------------------
// Fixture: a backing file plus the spec and collector for one case

static UNIQUE: AtomicU32 = AtomicU32::new(0);

struct Fixture {
    case: Case,
    spec: StoreSpec,
    col: Arc<Collector>,
    next_tag: AtomicU32,
    /// The backing file was made by the fixture (and is removed with it).
    owned: bool,
    /// An NBD case: the export (then `spec.path` names nothing).
    nbd: Option<(NbdSpec, NbdServer)>,
    /// A discarded range reads back as zeros (NBD's trim promises nothing
    /// of the kind; nbdkit's memory plugin does it, qcow2 only for whole
    /// clusters).
    discard_zeroes: bool,
}

impl Fixture {
    fn new(case: Case, what: &str) -> Self {
        Self::with_faults(case, what, None)
    }

    fn with_faults(case: Case, what: &str, faults: Option<Arc<IoFaults>>) -> Self {
        let n = UNIQUE.fetch_add(1, Ordering::Relaxed);
        let path = std::env::temp_dir().join(format!(
            "xbb-store-{}-{}-{:?}-{}-{}{}",
            std::process::id(),
            what,
            case.kind,
            case.sector_size,
            n,
            if case.cached { "-cached" } else { "" }
        ));
        let f = std::fs::File::create(&path).unwrap();
        f.set_len(MEDIUM).unwrap();
        Fixture {
            case,
            spec: StoreSpec {
                kind: case.kind,
                path,
                writable: true,
                sector_size: case.sector_size,
                faults,
                cache: case.cached.then(|| Arc::new(WriteCache::new(u64::from(n)))),
                engine: if case.uring {
                    IoEngine::Uring
                } else {
                    IoEngine::Pool
                },
                direct: case.direct,
            },
            col: Arc::new(Collector::default()),
            next_tag: AtomicU32::new(1),
            owned: true,
            nbd: None,
            discard_zeroes: true,
        }
    }

    /// An NBD store over `server`'s fresh export of [`MEDIUM`] bytes.
    fn on_nbd(server: NbdServer, sector_size: u32, faults: Option<Arc<IoFaults>>) -> Self {
        let spec = NbdSpec {
            sector_size,
            faults: faults.clone(),
            ..NbdSpec::new(&server.uri)
        };
        let discard_zeroes = server.image.is_none();
        Fixture {
            // Buffers need no alignment, as for a file.
            case: Case {
                kind: StoreKind::File,
                sector_size,
                cached: false,
                uring: false,
                direct: false,
            },
            spec: StoreSpec {
                kind: StoreKind::File,
                path: PathBuf::from("/nonexistent/xbb-nbd-case"),
                writable: true,
                sector_size,
                faults,
                cache: None,
                engine: IoEngine::Pool,
                direct: false,
            },
            col: Arc::new(Collector::default()),
            next_tag: AtomicU32::new(1),
            owned: false,
            nbd: Some((spec, server)),
            discard_zeroes,
        }
    }

    /// A device store over an existing block device of [`MEDIUM`] bytes,
    /// zeroed first.
    fn on_block_device(path: PathBuf, sector_size: u32) -> Self {
        std::fs::write(&path, vec![0u8; MEDIUM as usize]).unwrap();
        Fixture {
            case: Case {
                kind: StoreKind::Device,
                sector_size,
                cached: false,
                uring: false,
                direct: false,
            },
            spec: StoreSpec {
                kind: StoreKind::Device,
                path,
                writable: true,
                sector_size,
                faults: None,
                cache: None,
                engine: IoEngine::Pool,
                direct: false,
            },
            col: Arc::new(Collector::default()),
            next_tag: AtomicU32::new(1),
            owned: false,
            nbd: None,
            discard_zeroes: true,
        }
    }

    fn ss(&self) -> usize {
        self.case.sector_size as usize
    }

    fn open(&self) -> Box<dyn UserStore> {
        self.open_with(true, self.col.completion())
    }

    fn open_read_only(&self) -> Box<dyn UserStore> {
        self.open_with(false, self.col.completion())
    }

    fn open_with(&self, writable: bool, done: CompletionFn) -> Box<dyn UserStore> {
        let r = match &self.nbd {
            Some((spec, _)) => open_nbd_store(
                &NbdSpec {
                    writable,
                    ..spec.clone()
                },
                done,
            ),
            None => open_store(
                &StoreSpec {
                    writable,
                    ..self.spec.clone()
                },
                done,
            ),
        };
        let s = r.unwrap_or_else(|e| panic!("{:?}: open failed: {e:?}", self.case));
        if self.case.uring {
            assert_eq!(s.engine(), IoEngine::Uring, "{:?}", self.case);
            Box::new(Driven::new(s))
        } else {
            s
        }
    }

    fn tag(&self) -> IoTag {
        IoTag(self.next_tag.fetch_add(1, Ordering::Relaxed))
    }

    /// Submits `io` and waits for its completion.
    fn run(&self, s: &dyn UserStore, io: StoreIo) -> Result<(), IoError> {
        let tag = self.tag();
        s.submit(tag, io)?;
        self.col.wait(tag)
    }

    fn write(&self, s: &dyn UserStore, offset: u64, iov: Vec<RawIoVec>) -> Result<(), IoError> {
        self.run(s, StoreIo::Write { offset, iov })
    }

    fn read(&self, s: &dyn UserStore, offset: u64, iov: Vec<RawIoVec>) -> Result<(), IoError> {
        self.run(s, StoreIo::Read { offset, iov })
    }

    /// Reads `len` bytes at `offset` through the store into a fresh buffer.
    fn read_buf(&self, s: &dyn UserStore, offset: u64, len: usize) -> Buf {
        let mut b = Buf::new(len);
        b.bytes_mut().fill(0xA5);
        let iov = vec![b.iov(0, len)];
        self.read(s, offset, iov).unwrap();
        b
    }

    /// The medium's bytes, read behind the store's back: the backing file
    /// itself, or the export through a connection of its own.
    fn file_bytes(&self, offset: u64, len: usize) -> Vec<u8> {
        let Some((spec, _)) = &self.nbd else {
            let all = std::fs::read(&self.spec.path).unwrap();
            return all[offset as usize..offset as usize + len].to_vec();
        };
        let col = Arc::new(Collector::default());
        let spec = NbdSpec {
            writable: false,
            faults: None,
            ..spec.clone()
        };
        let other = open_nbd_store(&spec, col.completion()).unwrap();
        let mut b = Buf::new(len);
        let iov = vec![b.iov(0, len)];
        other
            .submit(IoTag(1), StoreIo::Read { offset, iov })
            .unwrap();
        assert_eq!(col.wait(IoTag(1)), Ok(()));
        other.close();
        b.bytes().to_vec()
    }
}

impl Drop for Fixture {
    fn drop(&mut self) {
        if self.owned {
            let _ = std::fs::remove_file(&self.spec.path);
        }
    }
}

/// One property of the suite.
type Property = fn(&Fixture, &dyn UserStore);

/// The medium sector sizes the block-device cases emulate.
const DEVICE_SECTOR_SIZES: [u32; 2] = [512, 4096];

/// The properties checked over a block device named by the environment.
const DEVICE_PROPERTIES: [(&str, Property); 13] = [
    ("info", prop_info),
    ("zeros", prop_zeros_overwrite_data),
    ("discardgeo", prop_discard_geometry),
    ("resize", prop_resize),
    ("roundtrip", prop_roundtrip_multi_iovec),
    ("persector", prop_whole_medium_sector_by_sector),
    ("inflight", prop_many_in_flight),
    ("flush", prop_flush),
    ("discard", prop_discard),
    ("misaligned", prop_misaligned),
    ("reopen", prop_persists_across_reopen),
    ("readonly", prop_read_only),
    ("close", prop_close_waits),
];

/// The properties checked over a loop device made for the test.
const LOOP_PROPERTIES: [(&str, Property); 4] = [
    ("info", prop_info),
    ("discard", prop_discard),
    ("discardgeo", prop_discard_geometry),
    ("resize", prop_resize),
];

/// Whether the file system holding `path` takes `O_DIRECT` reads of one
/// 512-byte sector into memory aligned to 512 bytes only (tmpfs before
/// Linux 6.6 refuses the flag; some file systems want more alignment):
/// then a direct-I/O-safe file store, of any sector size, must use it.
fn dio_supported(path: &std::path::Path) -> bool {
    use std::os::unix::fs::{FileExt, OpenOptionsExt};
    let Ok(f) = std::fs::File::options()
        .read(true)
        .custom_flags(libc::O_DIRECT)
        .open(path)
    else {
        return false;
    };
    let mut mem = vec![0u8; 3 * PAGE];
    let page = mem.as_ptr().align_offset(PAGE);
    let at = page + 512;
    f.read_at(&mut mem[at..at + 512], 512)
        .is_ok_and(|n| n == 512)
}

/// Runs `prop` on a freshly opened store of `fx` (described by `label`),
/// then closes it: no completion may be left unclaimed.
fn run_property(fx: &Fixture, what: &str, label: std::fmt::Arguments<'_>, prop: Property) {
    let store = fx.open();
    eprintln!(
        "{what}: {label} direct_io={} info={:?}",
        store.direct_io(),
        store.info()
    );
    prop(fx, &*store);
    store.close();
    assert_eq!(
        fx.col.pending(),
        0,
        "{what}: {label}: unclaimed completions"
    );
}

/// Runs `prop` on a freshly opened store of every case, then closes it.
fn for_every_case(what: &str, prop: Property) {
    for case in CASES {
        let fx = Fixture::new(case, what);
        run_property(&fx, what, format_args!("{case:?}"), prop);
    }
}

// ---------------------------------------------------------------------------
// Properties

fn prop_info(fx: &Fixture, s: &dyn UserStore) {
    let info = s.info();
    assert_eq!(
        info.sectors,
        Sectors(MEDIUM / 512),
        "{:?}: sectors are 512-byte units",
        fx.case
    );
    assert_eq!(info.sector_size, fx.case.sector_size);
    assert_eq!(info.physical_sector_size % info.sector_size, 0);
    assert!(!info.read_only);
    assert!(info.can_flush);
    assert_eq!(info.is_device, fx.case.kind == StoreKind::Device);
    if fx.case.kind == StoreKind::File && !fx.case.direct {
        assert!(!s.direct_io(), "a file store uses O_DIRECT only if asked");
    }
    if fx.case.direct && dio_supported(&fx.spec.path) {
        assert!(
            s.direct_io(),
            "{:?}: direct-io-safe, and the file system takes O_DIRECT",
            fx.case
        );
    }
}

fn prop_roundtrip_multi_iovec(fx: &Fixture, s: &dyn UserStore) {
    let ss = fx.ss();
    let total = 8 * ss;
    let offset = 3 * ss as u64;
    // Source: one page-aligned buffer written as pieces of 1, 3, 2 and 2
    // sectors, taken out of order from two buffers.
    let mut a = Buf::filled(5 * ss, 11);
    let mut b = Buf::filled(3 * ss, 12);
    let iov = vec![
        a.iov(0, ss),
        b.iov(0, 3 * ss),
        a.iov(ss, 2 * ss),
        a.iov(3 * ss, 2 * ss),
    ];
    let mut expect = Vec::new();
    expect.extend_from_slice(&a.bytes()[..ss]);
    expect.extend_from_slice(&b.bytes()[..3 * ss]);
    expect.extend_from_slice(&a.bytes()[ss..5 * ss]);
    assert_eq!(expect.len(), total);
    fx.write(s, offset, iov).unwrap();

    // Read back with a different split, so pieces cross the write's
    // boundaries, into separate buffers.
    let mut r1 = Buf::new(2 * ss);
    let mut r2 = Buf::new(5 * ss);
    let mut r3 = Buf::new(ss);
    let iov = vec![r1.iov(0, 2 * ss), r2.iov(0, 5 * ss), r3.iov(0, ss)];
    fx.read(s, offset, iov).unwrap();
    let mut got = Vec::new();
    got.extend_from_slice(r1.bytes());
    got.extend_from_slice(r2.bytes());
    got.extend_from_slice(r3.bytes());
    assert!(got == expect, "{:?}: multi-iovec read differs", fx.case);

    // One piece, and the file itself, agree too; the neighbours are untouched.
    let one = fx.read_buf(s, offset, total);
    assert!(one.bytes() == &expect[..]);
    assert!(fx.file_bytes(offset, total) == expect);
    assert!(fx.file_bytes(0, 3 * ss).iter().all(|&x| x == 0));
    assert!(fx
        .file_bytes(offset + total as u64, ss)
        .iter()
        .all(|&x| x == 0));

    // An empty I/O is a no-op that still completes.
    fx.read(s, 0, Vec::new()).unwrap();
}

fn prop_many_in_flight(fx: &Fixture, s: &dyn UserStore) {
    const N: usize = 32;
    let ss = fx.ss();
    let chunk = 2 * ss.max(PAGE);
    let mut srcs: Vec<Buf> = (0..N).map(|i| Buf::filled(chunk, 100 + i as u64)).collect();
    let mut tags = Vec::new();
    for (i, src) in srcs.iter_mut().enumerate() {
        let tag = fx.tag();
        let half = chunk / 2;
        let iov = vec![src.iov(0, half), src.iov(half, half)];
        s.submit(
            tag,
            StoreIo::Write {
                offset: (i * chunk) as u64,
                iov,
            },
        )
        .unwrap();
        tags.push(tag);
    }
    for tag in tags.drain(..) {
        assert_eq!(fx.col.wait(tag), Ok(()), "{:?}", fx.case);
    }
    let mut dsts: Vec<Buf> = (0..N).map(|_| Buf::new(chunk)).collect();
    for (i, dst) in dsts.iter_mut().enumerate().rev() {
        let tag = fx.tag();
        let iov = vec![dst.iov(0, chunk)];
        s.submit(
            tag,
            StoreIo::Read {
                offset: (i * chunk) as u64,
                iov,
            },
        )
        .unwrap();
        tags.push(tag);
    }
    for tag in tags {
        assert_eq!(fx.col.wait(tag), Ok(()));
    }
    for i in 0..N {
        assert!(
            dsts[i].bytes() == srcs[i].bytes(),
            "{:?}: chunk {i}",
            fx.case
        );
    }
}

fn prop_flush(fx: &Fixture, s: &dyn UserStore) {
    let ss = fx.ss();
    let mut b = Buf::filled(ss, 7);
    let iov = vec![b.iov(0, ss)];
    fx.write(s, 0, iov).unwrap();
    assert_eq!(fx.run(s, StoreIo::Flush), Ok(()));
    assert!(fx.file_bytes(0, ss) == b.bytes());
}

/// Writes of zeros (a guest zeroing a range: blkif has no write-zeroes
/// operation) replace the data with zeros, whatever the store makes of
/// them (the NBD store sends write-zeroes); a write of zeros but one byte
/// keeps that byte.
fn prop_zeros_overwrite_data(fx: &Fixture, s: &dyn UserStore) {
    let ss = fx.ss();
    let len = 16 * ss;
    let mut b = Buf::filled(len, 33);
    fx.write(s, 0, vec![b.iov(0, len)]).unwrap();
    // Sectors 2..8 zeroed by pieces taken out of order.
    let mut z = Buf::new(6 * ss);
    let iov = vec![
        z.iov(4 * ss, 2 * ss),
        z.iov(0, 2 * ss),
        z.iov(2 * ss, 2 * ss),
    ];
    fx.write(s, (2 * ss) as u64, iov).unwrap();
    // Sectors 10..12: zeros but their very last byte.
    let mut almost = Buf::new(2 * ss);
    almost.bytes_mut()[2 * ss - 1] = 0x99;
    fx.write(s, (10 * ss) as u64, vec![almost.iov(0, 2 * ss)])
        .unwrap();
    let got = fx.read_buf(s, 0, len);
    let (got, want) = (got.bytes(), b.bytes());
    let case = fx.case;
    assert!(got[..2 * ss] == want[..2 * ss], "{case:?}: before");
    assert!(
        got[2 * ss..8 * ss].iter().all(|&x| x == 0),
        "{case:?}: zeroed"
    );
    assert!(
        got[8 * ss..10 * ss] == want[8 * ss..10 * ss],
        "{case:?}: between"
    );
    assert!(
        got[10 * ss..12 * ss - 1].iter().all(|&x| x == 0),
        "{case:?}: almost zero"
    );
    assert_eq!(got[12 * ss - 1], 0x99, "{case:?}: the one byte");
    assert!(got[12 * ss..] == want[12 * ss..], "{case:?}: after");
    // On the medium itself, too.
    assert!(
        fx.file_bytes((2 * ss) as u64, 6 * ss)
            .iter()
            .all(|&x| x == 0),
        "{case:?}: the medium"
    );
}

fn prop_discard(fx: &Fixture, s: &dyn UserStore) {
    let ss = fx.ss();
    let len = 16 * ss.max(PAGE);
    let mut b = Buf::filled(len, 21);
    let iov = vec![b.iov(0, len)];
    fx.write(s, 0, iov).unwrap();
    let (d_off, d_len) = (4 * ss.max(PAGE), 8 * ss.max(PAGE));
    let r = fx.run(
        s,
        StoreIo::Discard {
            offset: d_off as u64,
            len: d_len as u64,
            secure: false,
        },
    );
    if !s.info().can_discard {
        assert_eq!(r, Err(IoError::NotSupported), "{:?}", fx.case);
        return;
    }
    assert_eq!(r, Ok(()), "{:?}", fx.case);
    let got = fx.read_buf(s, 0, len);
    let got = got.bytes();
    assert!(got[..d_off] == b.bytes()[..d_off], "{:?}: before", fx.case);
    assert!(
        !fx.discard_zeroes || got[d_off..d_off + d_len].iter().all(|&x| x == 0),
        "{:?}: discarded",
        fx.case
    );
    assert!(
        got[d_off + d_len..] == b.bytes()[d_off + d_len..],
        "{:?}: after",
        fx.case
    );
    // A misaligned discard is refused and changes nothing.
    let r = fx.run(
        s,
        StoreIo::Discard {
            offset: 256,
            len: ss as u64,
            secure: false,
        },
    );
    assert_eq!(r, Err(IoError::Io));
    assert!(fx.file_bytes(0, d_off) == b.bytes()[..d_off]);
}

/// What the medium's own description says the discard granule should be,
/// read independently of the store: the file system block for a file, the
/// block layer's sysfs attributes for a block device. `None` when it cannot
/// be known here.
fn expected_discard_geometry(fx: &Fixture) -> Option<(u64, u64)> {
    use std::os::unix::fs::{FileTypeExt, MetadataExt};
    let meta = std::fs::metadata(&fx.spec.path).ok()?;
    if !meta.file_type().is_block_device() {
        return Some((meta.blksize(), 0));
    }
    // Documentation/ABI/stable/sysfs-block: a partition's queue/ is its
    // disk's.
    let (major, minor) = (libc::major(meta.rdev()), libc::minor(meta.rdev()));
    let sys = PathBuf::from(format!("/sys/dev/block/{major}:{minor}"));
    let is_partition = sys.join("partition").exists();
    let queue = sys.join(if is_partition { "../queue" } else { "queue" });
    let attr = |p: PathBuf| -> Option<u64> { std::fs::read_to_string(p).ok()?.trim().parse().ok() };
    let granularity = attr(queue.join("discard_granularity"))?;
    Some((granularity, attr(sys.join("discard_alignment"))?))
}

fn prop_discard_geometry(fx: &Fixture, s: &dyn UserStore) {
    let info = s.info();
    let ss = u64::from(info.sector_size);
    let is_block = {
        use std::os::unix::fs::FileTypeExt;
        std::fs::metadata(&fx.spec.path).is_ok_and(|m| m.file_type().is_block_device())
    };
    if !info.can_discard {
        assert!(!info.can_secure_discard, "{:?}", fx.case);
        return;
    }
    let g = u64::from(info.discard_granularity);
    let a = u64::from(info.discard_alignment);
    assert!(g >= ss && g % ss == 0, "{:?}: granularity {g}", fx.case);
    assert!(a < g && a % ss == 0, "{:?}: alignment {a}", fx.case);
    if let Some((raw_g, raw_a)) = expected_discard_geometry(fx) {
        let want_g = raw_g.max(ss).next_multiple_of(ss);
        assert_eq!(g, want_g, "{:?}: granularity from {raw_g}", fx.case);
        assert_eq!(a, raw_a % want_g / ss * ss, "{:?}: alignment", fx.case);
    }
    if !is_block {
        // A punched hole is not an erasure.
        assert!(!info.can_secure_discard, "{:?}", fx.case);
    }

    // Data the secure discard must not touch when it is refused.
    let len = 4 * g as usize;
    let mut b = Buf::filled(len, 23);
    let iov = vec![b.iov(0, len)];
    fx.write(s, 0, iov).unwrap();
    let secure = StoreIo::Discard {
        offset: g,
        len: g,
        secure: true,
    };
    let r = fx.run(s, secure);
    let got = fx.read_buf(s, 0, len);
    if info.can_secure_discard {
        assert_eq!(r, Ok(()), "{:?}", fx.case);
        assert!(got.bytes()[..g as usize] == b.bytes()[..g as usize]);
        assert!(got.bytes()[2 * g as usize..] == b.bytes()[2 * g as usize..]);
    } else {
        assert_eq!(r, Err(IoError::NotSupported), "{:?}", fx.case);
        assert!(
            got.bytes() == b.bytes(),
            "{:?}: refused but changed",
            fx.case
        );
    }
    // A plain discard of whole granules still works.
    let r = fx.run(
        s,
        StoreIo::Discard {
            offset: g,
            len: g,
            secure: false,
        },
    );
    assert_eq!(r, Ok(()), "{:?}", fx.case);
}

fn prop_resize(fx: &Fixture, s: &dyn UserStore) {
    let ss = fx.ss();
    let path = &fx.spec.path;
    assert_eq!(s.info().sectors, Sectors(MEDIUM / 512));
    // Data in the last sector, which a shrink cuts off.
    let mut b = Buf::filled(ss, 61);
    let iov = vec![b.iov(0, ss)];
    fx.write(s, MEDIUM - ss as u64, iov).unwrap();

    // Grow: the new sectors are there and usable at once.
    let big = 2 * MEDIUM;
    match resize_medium(path, big) {
        Err(e) if e.raw_os_error() == Some(libc::EOPNOTSUPP) => {
            eprintln!("{:?}: this medium cannot be resized here: skipped", fx.case);
            return;
        }
        r => assert_eq!(r.unwrap(), big, "{:?}", fx.case),
    }
    assert_eq!(s.info().sectors, Sectors(big / 512), "{:?}: grown", fx.case);
    let mut c = Buf::filled(ss, 62);
    let iov = vec![c.iov(0, ss)];
    fx.write(s, big - ss as u64, iov).unwrap();
    assert!(fx.read_buf(s, big - ss as u64, ss).bytes() == c.bytes());
    let old = fx.read_buf(s, MEDIUM - ss as u64, ss);
    assert!(
        old.bytes() == b.bytes(),
        "{:?}: grow kept the data",
        fx.case
    );

    // Shrink: the medium ends earlier, I/O past the end is refused.
    let small = MEDIUM / 2;
    assert_eq!(resize_medium(path, small).unwrap(), small, "{:?}", fx.case);
    assert_eq!(
        s.info().sectors,
        Sectors(small / 512),
        "{:?}: shrunk",
        fx.case
    );
    let mut d = Buf::new(ss);
    let iov = vec![d.iov(0, ss)];
    assert_eq!(fx.read(s, small, iov), Err(IoError::Io), "{:?}", fx.case);
    let mut e = Buf::filled(ss, 63);
    let iov = vec![e.iov(0, ss)];
    assert_eq!(fx.write(s, small, iov), Err(IoError::Io), "{:?}", fx.case);
    let iov = vec![e.iov(0, ss)];
    fx.write(s, small - ss as u64, iov).unwrap();

    // Back to the original size: what was cut off is gone (zeros).
    assert_eq!(resize_medium(path, MEDIUM).unwrap(), MEDIUM);
    assert_eq!(s.info().sectors, Sectors(MEDIUM / 512));
    let back = fx.read_buf(s, MEDIUM - ss as u64, ss);
    assert!(back.bytes().iter().all(|&x| x == 0), "{:?}", fx.case);
    assert!(fx.read_buf(s, small - ss as u64, ss).bytes() == e.bytes());
}

fn prop_whole_medium_sector_by_sector(fx: &Fixture, s: &dyn UserStore) {
    // One iovec per sector over the whole medium: more pieces than one
    // preadv/pwritev call takes on the 512-byte cases.
    let ss = fx.ss();
    let len = MEDIUM as usize;
    let mut src = Buf::filled(len, 81);
    let iov: Vec<RawIoVec> = (0..len / ss).map(|i| src.iov(i * ss, ss)).collect();
    fx.write(s, 0, iov).unwrap();
    assert!(fx.file_bytes(0, len) == src.bytes(), "{:?}", fx.case);
    let mut dst = Buf::new(len);
    // Read back in reverse buffer order: piece i of the medium lands in
    // buffer slot n-1-i.
    let n = len / ss;
    let iov: Vec<RawIoVec> = (0..n).map(|i| dst.iov((n - 1 - i) * ss, ss)).collect();
    fx.read(s, 0, iov).unwrap();
    for i in 0..n {
        let got = &dst.bytes()[(n - 1 - i) * ss..(n - i) * ss];
        assert!(
            got == &src.bytes()[i * ss..(i + 1) * ss],
            "{:?}: sector {i}",
            fx.case
        );
    }
}

fn prop_short_read_at_eof_fills_zeros(fx: &Fixture, s: &dyn UserStore) {
    // The backing file shrinks behind the store's back: a read that runs
    // into its end gets the bytes that are there and zeros for the rest.
    let ss = fx.ss();
    let mut src = Buf::filled(8 * ss, 91);
    let base = MEDIUM - 8 * ss as u64;
    let iov = vec![src.iov(0, 8 * ss)];
    fx.write(s, base, iov).unwrap();
    let cut = match fx.case.kind {
        // A file may end anywhere; O_DIRECT wants the end on a sector.
        StoreKind::File if !fx.case.direct => 5 * ss + 100,
        _ => 5 * ss,
    };
    std::fs::File::options()
        .write(true)
        .open(&fx.spec.path)
        .unwrap()
        .set_len(base + cut as u64)
        .unwrap();
    let mut a = Buf::new(3 * ss);
    let mut b = Buf::new(5 * ss);
    a.bytes_mut().fill(0xA5);
    b.bytes_mut().fill(0xA5);
    let iov = vec![a.iov(0, 3 * ss), b.iov(0, 5 * ss)];
    assert_eq!(fx.read(s, base, iov), Ok(()), "{:?}", fx.case);
    let mut got = a.bytes().to_vec();
    got.extend_from_slice(b.bytes());
    assert!(
        got[..cut] == src.bytes()[..cut],
        "{:?}: data before EOF",
        fx.case
    );
    assert!(
        got[cut..].iter().all(|&x| x == 0),
        "{:?}: zeros after EOF",
        fx.case
    );
}

fn prop_persists_across_reopen(fx: &Fixture, s: &dyn UserStore) {
    let ss = fx.ss();
    let mut b = Buf::filled(4 * ss, 31);
    let iov = vec![b.iov(0, 4 * ss)];
    fx.write(s, (MEDIUM as usize - 4 * ss) as u64, iov).unwrap();
    s.close();
    let again = fx.open();
    let got = fx.read_buf(&*again, (MEDIUM as usize - 4 * ss) as u64, 4 * ss);
    assert!(got.bytes() == b.bytes(), "{:?}", fx.case);
    again.close();
}

fn prop_read_only(fx: &Fixture, s: &dyn UserStore) {
    let ss = fx.ss();
    let mut b = Buf::filled(2 * ss, 41);
    let iov = vec![b.iov(0, 2 * ss)];
    fx.write(s, ss as u64, iov).unwrap();
    s.close();

    let ro = fx.open_read_only();
    let info = ro.info();
    assert!(info.read_only, "{:?}", fx.case);
    assert!(!info.can_discard);
    let mut other = Buf::filled(2 * ss, 42);
    let iov = vec![other.iov(0, 2 * ss)];
    assert!(
        fx.write(&*ro, ss as u64, iov).is_err(),
        "{:?}: write accepted",
        fx.case
    );
    let r = fx.run(
        &*ro,
        StoreIo::Discard {
            offset: 0,
            len: ss as u64,
            secure: false,
        },
    );
    assert!(r.is_err());
    let got = fx.read_buf(&*ro, ss as u64, 2 * ss);
    assert!(got.bytes() == b.bytes());
    assert!(fx.file_bytes(ss as u64, 2 * ss) == b.bytes());
    ro.close();
}

fn prop_misaligned(fx: &Fixture, s: &dyn UserStore) {
    let ss = fx.ss();
    let mut good = Buf::filled(4 * ss, 51);
    let iov = vec![good.iov(0, 4 * ss)];
    fx.write(s, 0, iov).unwrap();

    // Sizes that are multiples of 512 but not of the sector size fail on a
    // 4096 medium; half sectors fail everywhere.
    let off_step = if ss > 512 { 512 } else { 256 };
    let mut bad = Buf::filled(4 * ss, 52);

    // Misaligned offset.
    let iov = vec![bad.iov(0, ss)];
    assert_eq!(
        fx.write(s, off_step as u64, iov),
        Err(IoError::Io),
        "{:?}",
        fx.case
    );
    // Misaligned length, alone and as one piece among aligned ones.
    let iov = vec![bad.iov(0, ss + off_step)];
    assert_eq!(fx.write(s, 0, iov), Err(IoError::Io));
    let iov = vec![bad.iov(0, ss), bad.iov(ss, off_step), bad.iov(2 * ss, ss)];
    assert_eq!(fx.write(s, 0, iov), Err(IoError::Io));
    // Out of range.
    let iov = vec![bad.iov(0, 2 * ss)];
    assert_eq!(fx.write(s, MEDIUM - ss as u64, iov), Err(IoError::Io));

    // A buffer address that is not sector-aligned: a device, or a file
    // store opened direct-I/O safe, refuses it (as O_DIRECT does); any
    // other file store accepts it.
    let iov = vec![bad.iov(off_step, ss)];
    let r = fx.write(s, 0, iov);
    match fx.case.kind {
        _ if fx.case.direct => assert_eq!(r, Err(IoError::Io), "{:?}", fx.case),
        StoreKind::Device => assert_eq!(r, Err(IoError::Io), "{:?}", fx.case),
        StoreKind::File => {
            assert_eq!(r, Ok(()));
            let iov = vec![good.iov(0, ss)];
            fx.write(s, 0, iov).unwrap();
        }
    }

    // Misaligned reads fail and leave the destination alone.
    let mut dst = Buf::new(2 * ss);
    dst.bytes_mut().fill(0xEE);
    let iov = vec![dst.iov(0, ss)];
    assert_eq!(fx.read(s, off_step as u64, iov), Err(IoError::Io));
    let iov = vec![dst.iov(0, ss + off_step)];
    assert_eq!(fx.read(s, 0, iov), Err(IoError::Io));
    assert!(dst.bytes().iter().all(|&x| x == 0xEE));

    // Nothing was corrupted.
    let got = fx.read_buf(s, 0, 4 * ss);
    assert!(
        got.bytes() == good.bytes(),
        "{:?}: medium corrupted",
        fx.case
    );
    assert!(fx.file_bytes(0, 4 * ss) == good.bytes());
}

fn prop_faults(fx: &Fixture, s: &dyn UserStore, faults: &IoFaults) {
    let ss = fx.ss();
    let mut bufs: Vec<Buf> = (0..5).map(|i| Buf::filled(ss, 60 + i)).collect();

    // The 3rd data I/O from now fails, and only it; it writes nothing.
    faults.fail_nth(3, IoError::Io);
    let mut results = Vec::new();
    for (i, b) in bufs.iter_mut().enumerate() {
        let iov = vec![b.iov(0, ss)];
        results.push(fx.write(s, (i * ss) as u64, iov));
    }
    assert_eq!(
        results,
        vec![Ok(()), Ok(()), Err(IoError::Io), Ok(()), Ok(())],
        "{:?}",
        fx.case
    );
    assert!(fx.file_bytes(2 * ss as u64, ss).iter().all(|&x| x == 0));
    assert!(fx.file_bytes(3 * ss as u64, ss) == bufs[3].bytes());
    assert_eq!(faults.counters().nth, 1);
    // Flushes do not count as data I/O; reads do.
    faults.fail_nth(2, IoError::Busy);
    assert_eq!(fx.run(s, StoreIo::Flush), Ok(()));
    let mut r = Buf::new(ss);
    let iov = vec![r.iov(0, ss)];
    assert_eq!(fx.read(s, 0, iov), Ok(()));
    let iov = vec![r.iov(0, ss)];
    assert_eq!(fx.read(s, 0, iov), Err(IoError::Busy));
    assert_eq!(faults.counters().nth, 2);
    // Several armed at once each hit their own I/O.
    faults.fail_nth(3, IoError::NoSpace);
    faults.fail_nth(1, IoError::Gone);
    let mut results = Vec::new();
    for _ in 0..4 {
        let iov = vec![r.iov(0, ss)];
        results.push(fx.read(s, 0, iov));
    }
    assert_eq!(
        results,
        vec![Err(IoError::Gone), Ok(()), Err(IoError::NoSpace), Ok(())]
    );
    assert_eq!(faults.counters().nth, 4);

    // A byte range: every I/O touching it fails, its neighbours do not.
    let lo = 10 * ss as u64;
    faults.fail_range(lo, lo + ss as u64, IoError::NoSpace);
    let iov = vec![bufs[0].iov(0, ss)];
    assert_eq!(fx.write(s, lo, iov), Err(IoError::NoSpace), "{:?}", fx.case);
    let iov = vec![bufs[0].iov(0, ss), bufs[1].iov(0, ss)];
    assert_eq!(fx.write(s, lo - ss as u64, iov), Err(IoError::NoSpace));
    let iov = vec![bufs[0].iov(0, ss)];
    assert_eq!(fx.write(s, lo - ss as u64, iov), Ok(()));
    let iov = vec![bufs[1].iov(0, ss)];
    assert_eq!(fx.write(s, lo + ss as u64, iov), Ok(()));
    let iov = vec![r.iov(0, ss)];
    assert_eq!(fx.read(s, lo, iov), Err(IoError::NoSpace));
    if s.info().can_discard {
        let d = StoreIo::Discard {
            offset: lo,
            len: ss as u64,
            secure: false,
        };
        assert_eq!(fx.run(s, d), Err(IoError::NoSpace));
    }
    assert!(fx.file_bytes(lo, ss).iter().all(|&x| x == 0));
    let range_hits = faults.counters().range;
    assert!(range_hits >= 3);

    // All writes fail; reads and flushes do not.
    faults.clear();
    faults.fail_writes(IoError::Gone);
    let iov = vec![bufs[4].iov(0, ss)];
    assert_eq!(fx.write(s, 0, iov), Err(IoError::Gone));
    let iov = vec![r.iov(0, ss)];
    assert_eq!(fx.read(s, 0, iov), Ok(()));
    assert!(
        r.bytes() == bufs[0].bytes(),
        "{:?}: failed write changed data",
        fx.case
    );
    assert_eq!(fx.run(s, StoreIo::Flush), Ok(()));
    assert_eq!(faults.counters().writes, 1);

    // Flushes fail.
    faults.clear();
    faults.fail_flush(IoError::Io);
    assert_eq!(fx.run(s, StoreIo::Flush), Err(IoError::Io));
    let iov = vec![bufs[4].iov(0, ss)];
    assert_eq!(fx.write(s, 0, iov), Ok(()));

    // Cleared: everything works; counters add up.
    faults.clear();
    assert_eq!(fx.run(s, StoreIo::Flush), Ok(()));
    let iov = vec![r.iov(0, ss)];
    assert_eq!(fx.read(s, lo, iov), Ok(()));
    let c = faults.counters();
    assert_eq!((c.nth, c.range, c.writes, c.flush), (4, range_hits, 1, 1));
    assert_eq!(c.total(), 6 + range_hits);
}

fn prop_close_waits(fx: &Fixture, s: &dyn UserStore) {
    const N: usize = 32;
    let ss = fx.ss();
    let mut srcs: Vec<Buf> = (0..N).map(|i| Buf::filled(4 * ss, 70 + i as u64)).collect();
    let mut tags = Vec::new();
    for (i, src) in srcs.iter_mut().enumerate() {
        let tag = fx.tag();
        let iov = vec![src.iov(0, 4 * ss)];
        s.submit(
            tag,
            StoreIo::Write {
                offset: (i * 4 * ss) as u64,
                iov,
            },
        )
        .unwrap();
        tags.push(tag);
    }
    let flush = fx.tag();
    s.submit(flush, StoreIo::Flush).unwrap();
    tags.push(flush);
    s.close();
    // Every completion has been delivered by the time close returns.
    for tag in &tags {
        assert_eq!(
            fx.col.take_now(*tag),
            Some(Ok(())),
            "{:?}: {tag:?}",
            fx.case
        );
    }
    // A closed store takes nothing more, and close is idempotent.
    assert_eq!(s.submit(fx.tag(), StoreIo::Flush), Err(IoError::Gone));
    s.close();
    for (i, src) in srcs.iter().enumerate() {
        assert!(fx.file_bytes((i * 4 * ss) as u64, 4 * ss) == src.bytes());
    }
}

// ---------------------------------------------------------------------------
// The suite

#[test]
fn info_describes_the_medium() {
    for_every_case("info", prop_info);
}

#[test]
fn write_then_read_multi_iovec() {
    for_every_case("roundtrip", prop_roundtrip_multi_iovec);
}

#[test]
fn thirty_two_in_flight() {
    for_every_case("inflight", prop_many_in_flight);
}

#[test]
fn flush_completes() {
    for_every_case("flush", prop_flush);
}

#[test]
fn written_zeros_read_back_as_zeros() {
    for_every_case("zeros", prop_zeros_overwrite_data);
}

#[test]
fn discard_reads_back_zeros() {
    for_every_case("discard", prop_discard);
}

#[test]
fn discard_geometry_and_secure_discard() {
    for_every_case("discardgeo", prop_discard_geometry);
}

#[test]
fn resize_grows_and_shrinks_the_medium() {
    for_every_case("resize", prop_resize);
}

#[test]
fn one_iovec_per_sector_over_the_whole_medium() {
    for_every_case("persector", prop_whole_medium_sector_by_sector);
}

#[test]
fn short_read_at_eof_fills_zeros() {
    for_every_case("eof", prop_short_read_at_eof_fills_zeros);
}

#[test]
fn data_persists_across_reopen() {
    for_every_case("reopen", prop_persists_across_reopen);
}

#[test]
fn read_only_store_refuses_writes() {
    for_every_case("readonly", prop_read_only);
}

#[test]
fn misaligned_io_fails_without_corruption() {
    for_every_case("misaligned", prop_misaligned);
}

#[test]
fn close_waits_for_in_flight_io() {
    for_every_case("close", prop_close_waits);
}

#[test]
fn injected_faults_hit_exactly_the_affected_io() {
    for case in CASES {
        let faults = Arc::new(IoFaults::new());
        let fx = Fixture::with_faults(case, "faults", Some(Arc::clone(&faults)));
        check_faults(&fx, &faults);
    }
}

/// The fault-injection property on a store of `fx` that takes its faults
/// from `faults`; closing leaves no completion behind.
fn check_faults(fx: &Fixture, faults: &IoFaults) {
    let store = fx.open();
    prop_faults(fx, &*store, faults);
    store.close();
    assert_eq!(fx.col.pending(), 0);
}

/// A held store takes I/O but neither performs nor completes it until
/// released (a back-end process dying with I/O in flight, issue 16).
#[test]
fn held_io_waits_for_the_release() {
    for case in CASES {
        let faults = Arc::new(IoFaults::new());
        let fx = Fixture::with_faults(case, "hold", Some(Arc::clone(&faults)));
        let store = fx.open();
        let ss = fx.ss();
        let mut b = Buf::filled(ss, 0x3c);
        faults.hold();
        assert!(faults.is_held());
        let tag = fx.tag();
        let iov = vec![b.iov(0, ss)];
        store
            .submit(tag, StoreIo::Write { offset: 0, iov })
            .unwrap();
        std::thread::sleep(std::time::Duration::from_millis(50));
        assert_eq!(fx.col.take_now(tag), None, "{case:?}: completed while held");
        assert!(fx.file_bytes(0, ss).iter().all(|&x| x == 0), "{case:?}");
        faults.release();
        assert_eq!(fx.col.wait(tag), Ok(()), "{case:?}");
        assert!(fx.file_bytes(0, ss) == b.bytes(), "{case:?}");
        // clear() releases too.
        faults.hold();
        let tag = fx.tag();
        store.submit(tag, StoreIo::Flush).unwrap();
        faults.clear();
        assert_eq!(fx.col.wait(tag), Ok(()), "{case:?}");
        store.close();
        assert_eq!(fx.col.pending(), 0);
    }
}

#[test]
fn panicking_completion_does_not_stall_the_store() {
    for case in CASES {
        let fx = Fixture::new(case, "panic");
        let col = Arc::clone(&fx.col);
        let inner = col.completion();
        let done: CompletionFn = Arc::new(move |tag: IoTag, r: Result<(), IoError>| {
            inner(tag, r);
            if tag.0 % 2 == 0 {
                panic!("completion {tag:?} panics on purpose");
            }
        });
        let store = open_store(&fx.spec, done).unwrap();
        let tags: Vec<IoTag> = (0..16).map(|_| fx.tag()).collect();
        for &tag in &tags {
            store.submit(tag, StoreIo::Flush).unwrap();
        }
        store.close();
        for tag in tags {
            assert_eq!(fx.col.take_now(tag), Some(Ok(())), "{case:?}: {tag:?}");
        }
    }
}

#[test]
fn open_errors() {
    let col = Arc::new(Collector::default());
    for case in CASES {
        let fx = Fixture::new(case, "openerr");
        let mut spec = fx.spec.clone();

        spec.path = PathBuf::from("/nonexistent/xbb/store");
        assert_eq!(
            open_store(&spec, col.completion()).err(),
            Some(OpenError::NotFound)
        );

        spec.path = std::env::temp_dir();
        assert_eq!(
            open_store(&spec, col.completion()).err(),
            Some(OpenError::Invalid)
        );

        // Not a whole number of sectors.
        spec.path = fx.spec.path.clone();
        std::fs::File::options()
            .write(true)
            .open(&spec.path)
            .unwrap()
            .set_len(MEDIUM + 256)
            .unwrap();
        assert_eq!(
            open_store(&spec, col.completion()).err(),
            Some(OpenError::Invalid)
        );

        // A sector size that is not a power of two of at least 512.
        std::fs::File::options()
            .write(true)
            .open(&spec.path)
            .unwrap()
            .set_len(MEDIUM)
            .unwrap();
        for bad in [0, 256, 1000] {
            spec.sector_size = bad;
            assert_eq!(
                open_store(&spec, col.completion()).err(),
                Some(OpenError::Invalid)
            );
        }
        spec.sector_size = case.sector_size;
        let s = open_store(&spec, col.completion()).unwrap();
        assert_eq!(s.info().sectors, Sectors(MEDIUM / 512));
        s.close();
    }
    // A 4096-byte medium whose size is a multiple of 512 only.
    let fx = Fixture::new(CASES[3], "openerr4k");
    std::fs::File::options()
        .write(true)
        .open(&fx.spec.path)
        .unwrap()
        .set_len(MEDIUM + 512)
        .unwrap();
    assert_eq!(
        open_store(&fx.spec, col.completion()).err(),
        Some(OpenError::Invalid)
    );
    assert_eq!(col.pending(), 0);
}

/// The device properties over a real block device, when one is named in
/// `XBB_STORE_BLOCKDEV` (it must be exactly 1 MiB and is overwritten), e.g.
/// `truncate -s 1M /tmp/d; XBB_STORE_BLOCKDEV=$(losetup -f --show /tmp/d)`.
#[test]
fn block_device_when_provided() {
    let Some(dev) = std::env::var_os("XBB_STORE_BLOCKDEV") else {
        eprintln!("XBB_STORE_BLOCKDEV not set: block-device case skipped");
        return;
    };
    for sector_size in DEVICE_SECTOR_SIZES {
        for (what, prop) in DEVICE_PROPERTIES {
            let fx = Fixture::on_block_device(PathBuf::from(&dev), sector_size);
            run_property(&fx, what, format_args!("block device {sector_size}"), prop);
        }
    }
}

/// A loop device over a fresh 1 MiB file, detached on drop.
struct LoopDevice {
    dev: PathBuf,
    backing: PathBuf,
}

impl LoopDevice {
    /// `None` (the test is skipped) when loop devices cannot be made here:
    /// no `losetup`, no permission, no free device.
    fn new(what: &str) -> Option<LoopDevice> {
        let n = UNIQUE.fetch_add(1, Ordering::Relaxed);
        let backing =
            std::env::temp_dir().join(format!("xbb-store-loop-{}-{what}-{n}", std::process::id()));
        std::fs::File::create(&backing)
            .and_then(|f| f.set_len(MEDIUM))
            .ok()?;
        let out = std::process::Command::new("losetup")
            .args(["-f", "--show"])
            .arg(&backing)
            .output();
        match out {
            Ok(o) if o.status.success() => {
                let dev = String::from_utf8_lossy(&o.stdout).trim().to_string();
                Some(LoopDevice {
                    dev: PathBuf::from(dev),
                    backing,
                })
            }
            _ => {
                let _ = std::fs::remove_file(&backing);
                None
            }
        }
    }
}

impl Drop for LoopDevice {
    fn drop(&mut self) {
        let _ = std::process::Command::new("losetup")
            .arg("-d")
            .arg(&self.dev)
            .status();
        let _ = std::fs::remove_file(&self.backing);
    }
}

/// Discard geometry, secure discard and resizing on a real block device: a
/// loop device made for the test. Skipped where loop devices cannot be set
/// up (not root, no `losetup`, in a container without `/dev/loop*`).
#[test]
fn loop_device_discard_and_resize() {
    for sector_size in DEVICE_SECTOR_SIZES {
        for (what, prop) in LOOP_PROPERTIES {
            let Some(lo) = LoopDevice::new(what) else {
                eprintln!("no loop device available: loop-device case skipped");
                return;
            };
            let fx = Fixture::on_block_device(lo.dev.clone(), sector_size);
            let label = format_args!("loop device {} {sector_size}", lo.dev.display());
            run_property(&fx, what, label, prop);
            drop(fx);
        }
    }
}

// ---------------------------------------------------------------------------
// NBD exports

/// The properties checked over an NBD export (resizing and a file that
/// shrinks behind the store's back do not apply: an export has one size).
const NBD_PROPERTIES: [(&str, Property); 12] = [
    ("info", prop_info),
    ("zeros", prop_zeros_overwrite_data),
    ("roundtrip", prop_roundtrip_multi_iovec),
    ("persector", prop_whole_medium_sector_by_sector),
    ("inflight", prop_many_in_flight),
    ("flush", prop_flush),
    ("discard", prop_discard),
    ("discardgeo", prop_discard_geometry),
    ("misaligned", prop_misaligned),
    ("reopen", prop_persists_across_reopen),
    ("readonly", prop_read_only),
    ("close", prop_close_waits),
];

/// Runs every NBD property on a fresh export made by `server`, with
/// 512- and 4096-byte sectors, then the fault injection.
fn for_every_nbd_property(label: &str, server: fn(&str) -> Option<NbdServer>) {
    for sector_size in DEVICE_SECTOR_SIZES {
        for (what, prop) in NBD_PROPERTIES {
            let Some(srv) = server(what) else { return };
            let fx = Fixture::on_nbd(srv, sector_size, None);
            run_property(&fx, what, format_args!("{label} {sector_size}"), prop);
        }
        let Some(srv) = server("faults") else { return };
        let faults = Arc::new(IoFaults::new());
        let fx = Fixture::on_nbd(srv, sector_size, Some(Arc::clone(&faults)));
        check_faults(&fx, &faults);
    }
}

#[test]
fn nbd_export_of_nbdkit_memory() {
    for_every_nbd_property("nbdkit memory", |what| {
        NbdServer::nbdkit(what, MEDIUM, &[], &[])
    });
}

#[test]
fn nbd_export_of_a_qcow2_image() {
    for_every_nbd_property("qemu-nbd qcow2", |what| NbdServer::qemu_qcow2(what, MEDIUM));
}
