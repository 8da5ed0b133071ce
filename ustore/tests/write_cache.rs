//! The volatile write cache ([`WriteCache`]) and its power cuts: what a
//! flush promises, what a cut may keep and what it must, over many seeds.
//!
//! Every write here fills its own sectors with a pattern naming the write
//! and the sector, so after a cut each sector tells which write (if any)
//! it holds, and whether it holds all of it (a sector is atomic; a write
//! of several may be torn between them).

mod support;

use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use support::{Buf, Collector};
use xbb::host::{IoError, IoTag};
use xbb_ustore::{open_store, StoreIo, StoreKind, StoreSpec, UserStore, WriteCache};

const SS: usize = 512;
/// Sectors of the medium.
const SECTORS: usize = 2048;
const GUARD: Duration = Duration::from_secs(60);

static UNIQUE: AtomicU32 = AtomicU32::new(0);

/// A store over a fresh zeroed image with a cache of `seed`.
struct Rig {
    path: PathBuf,
    cache: Arc<WriteCache>,
    col: Arc<Collector>,
    store: Box<dyn UserStore>,
    next_tag: u32,
}

impl Rig {
    fn new(cache: WriteCache) -> Rig {
        let n = UNIQUE.fetch_add(1, Ordering::Relaxed);
        let path = std::env::temp_dir().join(format!("xbb-cache-{}-{n}", std::process::id()));
        std::fs::File::create(&path)
            .unwrap()
            .set_len((SECTORS * SS) as u64)
            .unwrap();
        let cache = Arc::new(cache);
        let col = Arc::new(Collector::default());
        let spec = StoreSpec {
            kind: StoreKind::File,
            path: path.clone(),
            writable: true,
            sector_size: SS as u32,
            faults: None,
            cache: Some(Arc::clone(&cache)),
            engine: Default::default(),
            direct: false,
        };
        let store = open_store(&spec, col.completion()).unwrap();
        Rig {
            path,
            cache,
            col,
            store,
            next_tag: 1,
        }
    }

    fn submit(&mut self, io: StoreIo) -> Result<IoTag, IoError> {
        let tag = IoTag(self.next_tag);
        self.next_tag += 1;
        self.store.submit(tag, io).map(|()| tag)
    }

    /// Writes write number `id` (from 1) over `n` sectors from `sector`;
    /// returns its tag without waiting.
    fn write_async(&mut self, id: u32, sector: usize, n: usize, bufs: &mut Vec<Buf>) -> IoTag {
        let mut b = Buf::new(n * SS);
        for (k, s) in b.bytes_mut().chunks_mut(SS).enumerate() {
            s.fill(0);
            s[..4].copy_from_slice(&id.to_le_bytes());
            s[4..8].copy_from_slice(&((sector + k) as u32).to_le_bytes());
        }
        let iov = vec![b.iov(0, n * SS)];
        bufs.push(b);
        self.submit(StoreIo::Write {
            offset: (sector * SS) as u64,
            iov,
        })
        .unwrap()
    }

    /// Writes and waits: acknowledged.
    fn write(&mut self, id: u32, sector: usize, n: usize) {
        let mut bufs = Vec::new();
        let tag = self.write_async(id, sector, n, &mut bufs);
        assert_eq!(self.col.wait(tag), Ok(()));
    }

    fn flush(&mut self) -> Result<(), IoError> {
        let tag = self.submit(StoreIo::Flush)?;
        self.col.wait(tag)
    }

    /// The write each sector holds after the cut (0: none), read from the
    /// image behind the store's back.
    fn holders(&self) -> Vec<u32> {
        let all = std::fs::read(&self.path).unwrap();
        all.chunks(SS)
            .enumerate()
            .map(|(i, s)| {
                let id = u32::from_le_bytes(s[..4].try_into().unwrap());
                let at = u32::from_le_bytes(s[4..8].try_into().unwrap());
                if id != 0 {
                    assert_eq!(at as usize, i, "sector {i} holds another sector's data");
                }
                id
            })
            .collect()
    }
}

impl Drop for Rig {
    fn drop(&mut self) {
        self.store.close();
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Flushed writes survive; writes after the last flush may each be kept
/// whole, in part or not at all; an older write never shows through a
/// newer durable one.
#[test]
fn a_cut_keeps_what_was_flushed_and_any_part_of_the_rest() {
    let (mut kept, mut lost, mut torn) = (0, 0, 0);
    for seed in 0..40 {
        let mut r = Rig::new(WriteCache::new(seed));
        // Writes 1..=8, four sectors each, the first four flushed.
        for id in 1..=8u32 {
            r.write(id, (id as usize - 1) * 8, 4);
            if id == 4 {
                assert_eq!(r.flush(), Ok(()));
            }
        }
        // Write 9 overwrites write 2 (durable) and is not flushed.
        r.write(9, 8, 4);
        assert!(r.cache.cut_now(GUARD));
        let h = r.holders();
        for id in 1..=4u32 {
            let at = (id as usize - 1) * 8;
            for (k, &got) in h[at..at + 4].iter().enumerate() {
                let ok = got == id || (id == 2 && got == 9);
                assert!(
                    ok,
                    "seed {seed}: flushed write {id} lost at sector {}",
                    at + k
                );
            }
        }
        for id in 5..=8u32 {
            let at = (id as usize - 1) * 8;
            let n = h[at..at + 4].iter().filter(|&&g| g == id).count();
            assert!(h[at..at + 4].iter().all(|&g| g == id || g == 0));
            match n {
                4 => kept += 1,
                0 => lost += 1,
                _ => torn += 1,
            }
        }
        let s = r.cache.stats();
        assert_eq!((s.cuts, s.flushes, s.flushed), (1, 1, 4), "seed {seed}");
        assert_eq!(s.persisted + s.torn + s.lost, 5, "seed {seed}: {s:?}");
    }
    // The seeds reach every outcome.
    assert!(kept > 10 && lost > 10 && torn > 3, "{kept} {lost} {torn}");
}

/// A flush covers what was acknowledged before it was submitted.
#[test]
fn a_flush_covers_what_was_acknowledged_before_it() {
    for seed in 0..20 {
        let mut r = Rig::new(WriteCache::new(seed));
        r.write(1, 0, 2);
        let flush = r.submit(StoreIo::Flush).unwrap();
        // Acknowledged while the flush may still run: not covered.
        r.write(2, 16, 2);
        assert_eq!(r.col.wait(flush), Ok(()));
        assert!(r.cache.cut_now(GUARD));
        let h = r.holders();
        assert_eq!(&h[0..2], &[1, 1], "seed {seed}");
        assert!(h[16..18].iter().all(|&g| g == 2 || g == 0), "seed {seed}");
    }
}

/// From the cut on the disk answers nothing: I/O in flight is not
/// acknowledged, new I/O is refused, until the power returns; then the
/// store serves what survived, its cache empty.
#[test]
fn nothing_is_acknowledged_after_a_cut_and_power_returns() {
    let mut r = Rig::new(WriteCache::new(7));
    r.write(1, 0, 1);
    assert_eq!(r.flush(), Ok(()));
    let mut bufs = Vec::new();
    let tags: Vec<IoTag> = (0..32)
        .map(|i| r.write_async(10 + i, 64 + 8 * i as usize, 8, &mut bufs))
        .collect();
    assert!(r.cache.cut_now(GUARD));
    let failed = tags.iter().filter(|&&t| r.col.wait(t).is_err()).count();
    assert!(r.cache.is_cut());
    assert_eq!(r.submit(StoreIo::Flush), Err(IoError::Gone));
    // What completed before the cut was acknowledged; nothing after it.
    let s = r.cache.stats();
    assert_eq!(s.acknowledged as usize + failed, 1 + 32, "{s:?}");
    assert!(r.cache.power_on());
    r.write(2, 8, 1);
    assert_eq!(r.flush(), Ok(()));
    let h = r.holders();
    assert_eq!((h[0], h[8]), (1, 2));
    assert_eq!(r.cache.dirty_bytes(), 0);
}

/// An armed cut falls on a seeded-random store I/O among the next ones,
/// which is refused; the same seed falls on the same one.
#[test]
fn an_armed_cut_falls_at_a_seeded_random_io() {
    let mut seen = Vec::new();
    for seed in [3, 3, 4, 5, 6] {
        let mut r = Rig::new(WriteCache::new(seed));
        r.cache.arm_cut(20);
        let mut refused_at = None;
        for i in 0..30u32 {
            let mut bufs = Vec::new();
            let io = StoreIo::Write {
                offset: u64::from(i) * 4096,
                iov: vec![{
                    bufs.push(Buf::new(SS));
                    bufs[0].iov(0, SS)
                }],
            };
            match r.submit(io) {
                Ok(t) => {
                    assert_eq!(r.col.wait(t), Ok(()), "seed {seed}: I/O {i}");
                }
                Err(e) => {
                    assert_eq!(e, IoError::Gone);
                    refused_at.get_or_insert(i + 1);
                }
            }
        }
        let at = refused_at.expect("the cut happened");
        assert!((1..=20).contains(&at), "seed {seed}: {at}");
        assert_eq!(r.cache.stats().cut_at, Some(u64::from(at)));
        assert!(r.cache.wait_restored(GUARD));
        seen.push(at);
    }
    assert_eq!(seen[0], seen[1], "one seed, one place");
    assert!(seen[1..].windows(2).any(|w| w[0] != w[1]), "{seen:?}");
}

/// A full cache destages its oldest writes: they survive a cut.
#[test]
fn a_full_cache_destages_its_oldest_writes() {
    let mut r = Rig::new(WriteCache::with_capacity(1, 8 * SS));
    for id in 1..=6u32 {
        r.write(id, (id as usize - 1) * 4, 4);
    }
    let s = r.cache.stats();
    assert_eq!(s.destaged, 4, "{s:?}");
    assert!(r.cache.dirty_bytes() <= r.cache.capacity());
    assert!(r.cache.cut_now(GUARD));
    let h = r.holders();
    for id in 1..=4u32 {
        let at = (id as usize - 1) * 4;
        assert!(h[at..at + 4].iter().all(|&g| g == id), "write {id}");
    }
}

/// An orderly close writes the cache back.
#[test]
fn an_orderly_close_writes_the_cache_back() {
    let mut r = Rig::new(WriteCache::new(2));
    r.write(1, 0, 8);
    r.store.close();
    assert_eq!(r.cache.dirty_bytes(), 0);
    assert!(r.holders()[..8].iter().all(|&g| g == 1));
    let mut medium = r.path.as_os_str().to_owned();
    medium.push(".medium");
    assert!(
        !PathBuf::from(medium).exists(),
        "the medium file is removed"
    );
}

/// A disk that lies about flushes (the knob crash-consistency tests use
/// to show their check can fail): its flushes complete, yet a cut loses
/// what they covered for some seed.
#[test]
fn a_disk_that_ignores_flushes_loses_flushed_writes() {
    let mut lost = 0;
    for seed in 0..20 {
        let mut r = Rig::new(WriteCache::new(seed));
        r.cache.set_ignore_flushes(true);
        for id in 1..=4u32 {
            r.write(id, (id as usize - 1) * 8, 4);
        }
        assert_eq!(r.flush(), Ok(()));
        assert!(r.cache.cut_now(GUARD));
        let h = r.holders();
        lost += (1..=4u32)
            .filter(|&id| h[(id as usize - 1) * 8] != id)
            .count();
        assert_eq!(r.cache.stats().flushed, 0, "seed {seed}");
    }
    assert!(lost > 10, "{lost}");
}
