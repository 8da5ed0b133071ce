//! A disk's volatile write cache and its power supply, as a wrapper
//! around any store ([`StoreSpec::cache`]): what makes `io/blkif.h`'s
//! `BLKIF_OP_FLUSH_DISKCACHE` and `BLKIF_OP_WRITE_BARRIER` mean something
//! in the lab.
//!
//! The model is a disk with a write-back cache (`feature-flush-cache`):
//!
//! - A write is acknowledged when it reached the cache, before it is
//!   durable. Reads see every acknowledged write.
//! - A flush, once it completes, has made every write acknowledged before
//!   it was submitted durable. Writes acknowledged while it ran may or may
//!   not be. There is no FUA: blkif has no way to ask for it.
//! - The cache holds [`WriteCache::capacity`] bytes; when more are dirty,
//!   the oldest writes are destaged (made durable) on their own, as a
//!   disk does.
//! - A power cut ([`WriteCache::cut_now`], or [`WriteCache::arm_cut`]: at
//!   a seeded-random store I/O) loses what is not durable — but, as a disk
//!   destages in any order behind the host's back, any subset of the
//!   acknowledged, not-yet-durable writes may have reached the medium, some
//!   of them only partly (whole logical sectors: a sector is written
//!   atomically), in any order. From the cut on the disk answers nothing:
//!   I/O in flight completes with [`IoError::Io`] (it was never
//!   acknowledged), new I/O is refused ([`IoError::Gone`]), until
//!   [`WriteCache::power_on`].
//!
//! A barrier is not the cache's business: the core turns it into a drain
//! and flushes around its data (DESIGN.md, "One request's walk").
//!
//! How: the store below writes through to the image file as always (what
//! the host sees, cache and medium together). The wrapper keeps the
//! medium itself (the durable content) in a second file beside the image,
//! `<image>.medium`, and in memory the data of every acknowledged write
//! not yet durable, read back from the image as the write completes. A
//! flush's completion moves the writes it covers to the medium file; a cut
//! writes the chosen subset there and copies the medium file over the
//! image once the I/O in flight has drained. Overlapping writes in flight
//! at once (which no front-end may rely on) leave the write-back data of
//! either.

use std::collections::{HashMap, VecDeque};
use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::Duration;

use xbb::host::{IoError, IoTag, MediumInfo, OpenError};

use crate::locked;
use crate::{BackingStore, CompletionFn, StoreIo, StoreSpec, UserStore};

/// Dirty bytes the cache holds before it destages the oldest writes.
pub const DEFAULT_CAPACITY: usize = 8 << 20;

/// Bytes copied at a time between the image and the medium file.
const CHUNK: usize = 1 << 20;

/// What a [`WriteCache`] did, for reports and tests.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CacheStats {
    /// Writes (and discards) acknowledged while not durable.
    pub acknowledged: u64,
    /// Flushes completed.
    pub flushes: u64,
    /// Writes made durable by a flush.
    pub flushed: u64,
    /// Writes made durable because the cache was full.
    pub destaged: u64,
    /// Power cuts.
    pub cuts: u64,
    /// The store I/O (counted from the cache's creation, 1 the first) at
    /// which the last cut happened; `None` for a cut at a quiet moment.
    pub cut_at: Option<u64>,
    /// Acknowledged, not durable writes that reached the medium anyway at
    /// the last cut, whole.
    pub persisted: u64,
    /// Of those, written only in part (some of their sectors).
    pub torn: u64,
    /// Acknowledged, not durable writes lost at the last cut.
    pub lost: u64,
    /// I/Os submitted while the power was off (refused).
    pub refused: u64,
    /// File errors while moving data to or from the medium file.
    pub errors: u64,
}

/// Whether the disk has power.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Power {
    On,
    /// Cut; the image is restored once nothing is in flight.
    Cut,
    /// Cut and restored: the image is what survived.
    Off,
}

/// One acknowledged write not yet durable.
#[derive(Debug)]
struct Dirty {
    offset: u64,
    data: Vec<u8>,
}

/// An I/O in flight through the cache.
#[derive(Clone, Copy, Debug)]
enum Pending {
    Read,
    /// A write or discard of `len` bytes at `offset`.
    Write {
        offset: u64,
        len: u64,
    },
    /// A flush: covers the dirty writes with a sequence number below this.
    Flush {
        upto: u64,
    },
}

/// The image and the medium file.
#[derive(Debug)]
struct Files {
    image: File,
    medium: File,
    medium_path: PathBuf,
}

#[derive(Debug)]
struct State {
    files: Option<Files>,
    sector_size: u64,
    capacity: usize,
    /// Acknowledged, not durable writes, oldest first, with their
    /// sequence numbers.
    dirty: VecDeque<(u64, Dirty)>,
    dirty_bytes: usize,
    next_seq: u64,
    pending: HashMap<u32, Pending>,
    in_flight: usize,
    power: Power,
    /// Store I/Os submitted so far.
    submitted: u64,
    /// A cut armed at this submission.
    cut_at: Option<u64>,
    rng: u64,
    stats: CacheStats,
    /// A broken disk (tests only): flushes complete and make nothing
    /// durable.
    ignore_flushes: bool,
}

/// A disk's volatile write cache and power supply, shared between the
/// store it wraps and whoever cuts the power (a scenario, a test).
#[derive(Debug)]
pub struct WriteCache {
    state: Mutex<State>,
    /// Signalled when a cut has been restored.
    restored: Condvar,
}

impl WriteCache {
    /// A cache of [`DEFAULT_CAPACITY`] bytes whose random choices (where an
    /// armed cut falls, what survives it) follow `seed`.
    pub fn new(seed: u64) -> WriteCache {
        WriteCache {
            state: Mutex::new(State {
                files: None,
                sector_size: 512,
                capacity: DEFAULT_CAPACITY,
                dirty: VecDeque::new(),
                dirty_bytes: 0,
                next_seq: 0,
                pending: HashMap::new(),
                in_flight: 0,
                power: Power::On,
                submitted: 0,
                cut_at: None,
                rng: seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1,
                stats: CacheStats::default(),
                ignore_flushes: false,
            }),
            restored: Condvar::new(),
        }
    }

    /// The same, holding at most `bytes` dirty bytes.
    pub fn with_capacity(seed: u64, bytes: usize) -> WriteCache {
        let c = WriteCache::new(seed);
        c.lock().capacity = bytes;
        c
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        locked(&self.state)
    }

    /// Dirty bytes the cache holds before it destages.
    pub fn capacity(&self) -> usize {
        self.lock().capacity
    }

    /// Makes this a disk that lies about flushes (`true`): a flush
    /// completes successfully and makes nothing durable, as some consumer
    /// disks do. Only for tests that must see a crash-consistency check
    /// fail; a full cache still destages its oldest writes.
    pub fn set_ignore_flushes(&self, ignore: bool) {
        self.lock().ignore_flushes = ignore;
    }

    /// What the cache did so far.
    pub fn stats(&self) -> CacheStats {
        self.lock().stats
    }

    /// Bytes acknowledged and not yet durable.
    pub fn dirty_bytes(&self) -> usize {
        self.lock().dirty_bytes
    }

    /// Arms a power cut at a random store I/O among the next `within`
    /// (at least 1), chosen by the cache's seed; it replaces one armed
    /// before.
    pub fn arm_cut(&self, within: u64) {
        let mut s = self.lock();
        let k = s.next_random() % within.max(1) + 1;
        s.cut_at = Some(s.submitted + k);
    }

    /// Whether an armed cut has not happened yet.
    pub fn cut_armed(&self) -> bool {
        self.lock().cut_at.is_some()
    }

    /// Cuts the power now (if it is on) and waits, at most `guard`, until
    /// the I/O in flight has drained and the image holds what survived.
    /// `false` when that did not happen in time.
    pub fn cut_now(&self, guard: Duration) -> bool {
        {
            let mut s = self.lock();
            if s.power == Power::On {
                s.cut(None);
                self.restore_if_idle(&mut s);
            }
        }
        self.wait_restored(guard)
    }

    /// Whether the power is off (cut, restored or not).
    pub fn is_cut(&self) -> bool {
        self.lock().power != Power::On
    }

    /// Waits, at most `guard`, until a cut has been restored; `true` at
    /// once when the power is on.
    pub fn wait_restored(&self, guard: Duration) -> bool {
        let s = self.lock();
        let (s, _) = self
            .restored
            .wait_timeout_while(s, guard, |s| s.power == Power::Cut)
            .unwrap_or_else(|e| e.into_inner());
        s.power != Power::Cut
    }

    /// Power returns after a cut has been restored: the disk serves I/O
    /// again, its cache empty. `false` (nothing changed) while a cut is
    /// still draining.
    pub fn power_on(&self) -> bool {
        let mut s = self.lock();
        match s.power {
            Power::Cut => false,
            _ => {
                s.power = Power::On;
                true
            }
        }
    }

    // --- The store's side ---------------------------------------------------

    /// A store opens the image at `path`: the medium file starts as a copy
    /// of it, nothing is dirty.
    fn attach(&self, path: &Path, sector_size: u32) -> Result<(), OpenError> {
        let open = |p: &Path, create: bool| {
            OpenOptions::new()
                .read(true)
                .write(true)
                .create(create)
                .truncate(create)
                .open(p)
                .map_err(|e| crate::medium::open_error(&e))
        };
        let image = open(path, false)?;
        let mut medium_path = path.as_os_str().to_owned();
        medium_path.push(".medium");
        let medium_path = PathBuf::from(medium_path);
        let medium = open(&medium_path, true)?;
        copy_file(&image, &medium).map_err(OpenError::Other)?;
        let mut s = self.lock();
        s.files = Some(Files {
            image,
            medium,
            medium_path,
        });
        s.sector_size = u64::from(sector_size.max(512));
        s.dirty.clear();
        s.dirty_bytes = 0;
        s.pending.clear();
        s.in_flight = 0;
        Ok(())
    }

    /// The store closed (nothing in flight): an orderly shutdown writes
    /// the cache back, and the medium file goes.
    fn detach(&self) {
        let mut s = self.lock();
        if s.power == Power::On {
            s.destage_while(|_| true);
        }
        if let Some(f) = s.files.take() {
            drop(f.medium);
            let _ = std::fs::remove_file(&f.medium_path);
        }
        s.dirty.clear();
        s.dirty_bytes = 0;
    }

    /// Before `io` goes to the store below: refuses it without power (and
    /// at an armed cut), else remembers what it is.
    fn before_submit(&self, tag: IoTag, io: &StoreIo) -> Result<(), IoError> {
        let mut s = self.lock();
        s.submitted += 1;
        if s.cut_at.is_some_and(|k| s.submitted >= k) && s.power == Power::On {
            let at = s.submitted;
            s.cut(Some(at));
            self.restore_if_idle(&mut s);
        }
        if s.power != Power::On {
            s.stats.refused += 1;
            return Err(IoError::Gone);
        }
        let p = match io {
            StoreIo::Read { .. } => Pending::Read,
            StoreIo::Write { offset, iov } => Pending::Write {
                offset: *offset,
                len: iov.iter().map(|v| v.len as u64).sum(),
            },
            StoreIo::Discard { offset, len, .. } => Pending::Write {
                offset: *offset,
                len: *len,
            },
            StoreIo::Flush => Pending::Flush { upto: s.next_seq },
        };
        s.pending.insert(tag.0, p);
        s.in_flight += 1;
        Ok(())
    }

    /// The store below refused `tag` after [`WriteCache::before_submit`].
    fn cancel(&self, tag: IoTag) {
        let mut s = self.lock();
        if s.pending.remove(&tag.0).is_some() {
            self.done_one(&mut s);
        }
    }

    /// `tag` completed below with `result`: what the host is told.
    fn complete(&self, tag: IoTag, result: Result<(), IoError>) -> Result<(), IoError> {
        let mut s = self.lock();
        let Some(p) = s.pending.remove(&tag.0) else {
            return result;
        };
        let result = if s.power != Power::On {
            // The disk lost power before it answered: not acknowledged.
            Err(IoError::Io)
        } else {
            match (p, result) {
                (Pending::Write { offset, len }, Ok(())) => s.acknowledge(offset, len),
                (Pending::Flush { upto }, Ok(())) => {
                    let n = if s.ignore_flushes {
                        0
                    } else {
                        s.destage_while(|seq| seq < upto)
                    };
                    s.stats.flushed += n;
                    s.stats.flushes += 1;
                }
                _ => {}
            }
            result
        };
        self.done_one(&mut s);
        result
    }

    fn done_one(&self, s: &mut State) {
        s.in_flight -= 1;
        self.restore_if_idle(s);
    }

    /// After a cut, once nothing is in flight: what survived becomes the
    /// image.
    fn restore_if_idle(&self, s: &mut State) {
        if s.power == Power::Cut && s.in_flight == 0 {
            s.restore();
            self.restored.notify_all();
        }
    }
}

impl State {
    fn next_random(&mut self) -> u64 {
        let mut x = self.rng;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.rng = x;
        x
    }

    /// A write of `len` bytes at `offset` completed: its data, as the image
    /// now holds it, is dirty. A full cache destages its oldest writes.
    fn acknowledge(&mut self, offset: u64, len: u64) {
        let Some(f) = self.files.as_ref() else {
            return;
        };
        let mut data = vec![0u8; usize::try_from(len).unwrap_or(0)];
        if read_fully(&f.image, &mut data, offset).is_err() {
            self.stats.errors += 1;
        }
        self.dirty_bytes += data.len();
        self.dirty
            .push_back((self.next_seq, Dirty { offset, data }));
        self.next_seq += 1;
        self.stats.acknowledged += 1;
        while self.dirty_bytes > self.capacity && self.dirty.len() > 1 {
            self.destage_oldest();
            self.stats.destaged += 1;
        }
    }

    fn destage_oldest(&mut self) {
        let Some((_, d)) = self.dirty.pop_front() else {
            return;
        };
        self.dirty_bytes -= d.data.len();
        if let Some(f) = self.files.as_ref() {
            if f.medium.write_all_at(&d.data, d.offset).is_err() {
                self.stats.errors += 1;
            }
        }
    }

    /// Makes the oldest dirty writes durable while `covered(seq)`; returns
    /// how many.
    fn destage_while(&mut self, covered: impl Fn(u64) -> bool) -> u64 {
        let mut n = 0;
        while self.dirty.front().is_some_and(|&(seq, _)| covered(seq)) {
            self.destage_oldest();
            n += 1;
        }
        n
    }

    fn cut(&mut self, at: Option<u64>) {
        self.power = Power::Cut;
        self.cut_at = None;
        self.stats.cuts += 1;
        self.stats.cut_at = at;
    }

    /// After a cut, nothing in flight: a random subset of the dirty writes
    /// reaches the medium (each whole, or a random subset of its sectors),
    /// in a random order; the image becomes the medium.
    fn restore(&mut self) {
        let dirty = std::mem::take(&mut self.dirty);
        self.dirty_bytes = 0;
        let (mut persisted, mut torn, mut lost) = (0, 0, 0);
        let mut pieces: Vec<(u64, Vec<u8>)> = Vec::new();
        let ss = self.sector_size as usize;
        for (_, d) in dirty {
            if self.next_random() % 2 == 0 {
                lost += 1;
                continue;
            }
            if self.next_random() % 4 != 0 || d.data.len() <= ss {
                persisted += 1;
                pieces.push((d.offset, d.data));
                continue;
            }
            torn += 1;
            for (i, sector) in d.data.chunks(ss).enumerate() {
                if self.next_random() % 2 == 0 {
                    pieces.push((d.offset + (i * ss) as u64, sector.to_vec()));
                }
            }
        }
        // Any order: a disk destages as it likes.
        for i in (1..pieces.len()).rev() {
            let j = (self.next_random() % (i as u64 + 1)) as usize;
            pieces.swap(i, j);
        }
        self.stats.persisted = persisted;
        self.stats.torn = torn;
        self.stats.lost = lost;
        let Some(f) = self.files.as_ref() else {
            self.power = Power::Off;
            return;
        };
        let mut errors = 0;
        for (offset, data) in &pieces {
            errors += u64::from(f.medium.write_all_at(data, *offset).is_err());
        }
        errors += u64::from(copy_file(&f.medium, &f.image).is_err());
        errors += u64::from(f.image.sync_data().is_err());
        self.stats.errors += errors;
        self.pending.clear();
        self.power = Power::Off;
    }
}

/// Reads `buf.len()` bytes at `offset`; zeros past the end of the file.
fn read_fully(f: &File, buf: &mut [u8], offset: u64) -> std::io::Result<()> {
    let mut done = 0;
    while done < buf.len() {
        match f.read_at(&mut buf[done..], offset + done as u64) {
            Ok(0) => {
                buf[done..].fill(0);
                return Ok(());
            }
            Ok(n) => done += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Makes `to` a copy of `from` (its size; chunks of zeros are left as
/// holes).
fn copy_file(from: &File, to: &File) -> Result<(), i32> {
    let errno = |e: std::io::Error| e.raw_os_error().unwrap_or(libc::EIO);
    let len = from.metadata().map_err(errno)?.len();
    to.set_len(0).map_err(errno)?;
    to.set_len(len).map_err(errno)?;
    let mut buf = vec![0u8; CHUNK];
    let mut at = 0u64;
    while at < len {
        let n = (len - at).min(CHUNK as u64) as usize;
        read_fully(from, &mut buf[..n], at).map_err(errno)?;
        if buf[..n].iter().any(|&b| b != 0) {
            to.write_all_at(&buf[..n], at).map_err(errno)?;
        }
        at += n as u64;
    }
    Ok(())
}

/// A store with a [`WriteCache`] in front: the store [`crate::open_store`]
/// opens when [`StoreSpec::cache`] is set.
#[derive(Debug)]
pub struct CachedStore {
    inner: BackingStore,
    cache: Arc<WriteCache>,
}

impl CachedStore {
    /// Opens the store `spec` describes (a regular file) behind `cache`;
    /// completions go to `done`.
    pub fn open(
        spec: &StoreSpec,
        cache: Arc<WriteCache>,
        done: CompletionFn,
    ) -> Result<CachedStore, OpenError> {
        let meta = std::fs::metadata(&spec.path).map_err(|e| crate::medium::open_error(&e))?;
        if !meta.file_type().is_file() {
            return Err(OpenError::Invalid);
        }
        cache.attach(&spec.path, spec.sector_size)?;
        let c = Arc::clone(&cache);
        let below: CompletionFn = Arc::new(move |tag: IoTag, r: Result<(), IoError>| {
            let r = c.complete(tag, r);
            done(tag, r);
        });
        match BackingStore::open(spec, below) {
            Ok(inner) => Ok(CachedStore { inner, cache }),
            Err(e) => {
                cache.detach();
                Err(e)
            }
        }
    }
}

impl UserStore for CachedStore {
    fn info(&self) -> MediumInfo {
        self.inner.info()
    }

    fn submit(&self, tag: IoTag, io: StoreIo) -> Result<(), IoError> {
        self.cache.before_submit(tag, &io)?;
        self.inner
            .submit(tag, io)
            .inspect_err(|_| self.cache.cancel(tag))
    }

    fn close(&self) {
        self.inner.close();
        self.cache.detach();
    }

    fn direct_io(&self) -> bool {
        self.inner.direct_io()
    }
}
