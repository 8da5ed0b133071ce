//! Crash consistency through the public path: a guest's writes cross its
//! ring to the back-end, which serves them from a store behind a volatile
//! write cache ([`WriteCache`]); the power is cut at a random store I/O;
//! the guest reconnects, reads its region back through the ring, and the
//! journal of what it was promised ([`Journal::check`]) must hold: every
//! write answered before a completed flush or barrier was issued is on
//! the medium, a barrier's order held, nothing was invented. Every
//! front-end profile, with flushes, with barriers, and with neither; and a
//! disk that ignores flushes must be caught.

use std::sync::Arc;

use xbb_lab::frontend::{
    read_region, run_crash_writes, CrashCheck, CrashWorkload, Frontend, Journal, Profile, SyncMode,
};
use xbb_lab::world::World;
use xbb_ustore::{CacheStats, WriteCache};

mod support;

use support::rig::{Rig, HANG_GUARD};

/// What some rounds of cuts found, summed.
#[derive(Debug, Default)]
struct Totals {
    durable: u64,
    violations: u64,
    first: Vec<String>,
    /// Cuts that fell on a store I/O (not after the writes ended).
    mid_io: u64,
    /// Writes the disk had acknowledged and not made durable at the cuts,
    /// lost or torn.
    lost_or_torn: u64,
    barriers_checked: u64,
}

impl Totals {
    fn add(&mut self, c: &CrashCheck, s: &CacheStats) {
        self.durable += c.durable;
        self.violations += c.violations;
        self.barriers_checked += c.barriers_checked;
        self.first.extend(c.first.iter().take(2).cloned());
        self.mid_io += u64::from(s.cut_at.is_some());
        self.lost_or_torn += s.lost + s.torn;
    }
}

/// A rig whose disk has `cache` in front, for `profile` (a 4 KiB-sector
/// medium for the sector-aware ones), and that front-end connected.
fn rig(tag: &str, profile: &str, cache: &Arc<WriteCache>) -> (Rig, Frontend) {
    let p = Profile::by_name(profile).expect("profile");
    let sector_size = if p.sector_aware { 4096 } else { 512 };
    let c = Arc::clone(cache);
    let rig = Rig::build(World::new(), tag, move |cfg| {
        cfg.store.cache = Some(c);
        cfg.store.sector_size = sector_size;
    });
    let mut fe = rig.frontend(p);
    fe.set_hang_guard(HANG_GUARD);
    fe.connect().expect("connect");
    (rig, fe)
}

/// `rounds` rounds on a connected front-end: arm a cut among the next
/// store I/Os, write, cut (if it did not fall), reconnect with the power
/// back, read the region back and check it.
fn crash_rounds(
    fe: &mut Frontend,
    cache: &WriteCache,
    sync: SyncMode,
    rounds: u32,
    seed: u64,
) -> Totals {
    let region = (64, 1024);
    let base = read_region(fe, region).expect("read the region");
    let mut j = Journal::with_base(region, base);
    let mut t = Totals::default();
    for r in 0..rounds {
        let wl = CrashWorkload {
            ops: 96,
            io_sectors: 16,
            sync,
            every: 4,
            region_sectors: region,
            seed: seed + u64::from(r),
        };
        // About 120 store I/Os a round: most cuts fall among them.
        cache.arm_cut(160);
        run_crash_writes(fe, &wl, &mut j).expect("crash writes");
        assert!(cache.cut_now(HANG_GUARD), "the disk drained after the cut");
        let stats = cache.stats();
        fe.disconnect().expect("disconnect after the cut");
        assert!(cache.power_on());
        fe.connect().expect("reconnect");
        let found = read_region(fe, region).expect("read back");
        t.add(&j.check(&found), &stats);
        j.next_round(found);
    }
    t
}

/// Every profile, each with one of the three ways (in turn), three cuts.
#[test]
fn every_profile_keeps_what_it_was_promised_across_power_cuts() {
    let mut all = Totals::default();
    let syncs = [SyncMode::Flush, SyncMode::Barrier, SyncMode::None];
    for (i, name) in Profile::NAMES.iter().enumerate() {
        {
            let sync = syncs[i % 3];
            let seed = i as u64 + 1;
            let cache = Arc::new(WriteCache::with_capacity(seed, 256 << 10));
            let (rig, mut fe) = rig(&format!("crash-{name}-{}", sync.name()), name, &cache);
            let t = crash_rounds(&mut fe, &cache, sync, 3, seed * 100);
            assert_eq!(
                t.violations,
                0,
                "{name} with {}: {:#?}",
                sync.name(),
                t.first
            );
            if sync == SyncMode::None {
                assert_eq!(t.durable, 0, "{name}: nothing promised without flushes");
            }
            all.durable += t.durable;
            all.mid_io += t.mid_io;
            all.lost_or_torn += t.lost_or_torn;
            all.barriers_checked += t.barriers_checked;
            fe.disconnect().expect("disconnect");
            drop(fe);
            rig.finish();
        }
    }
    // Not vacuous: promises were made and checked, cuts fell in the middle
    // of I/O, and the disk lost or tore what it had not made durable.
    assert!(all.durable > 500, "{all:?}");
    assert!(all.mid_io > 12, "{all:?}");
    assert!(all.lost_or_torn > 50, "{all:?}");
    assert!(all.barriers_checked > 10, "{all:?}");
}

/// The check can fail: a disk whose flushes make nothing durable loses
/// writes the front-end was promised, with flushes and with barriers.
#[test]
fn a_disk_that_ignores_flushes_is_caught() {
    for sync in [SyncMode::Flush, SyncMode::Barrier] {
        let cache = Arc::new(WriteCache::new(3));
        cache.set_ignore_flushes(true);
        let (rig, mut fe) = rig(&format!("lying-{}", sync.name()), "linux", &cache);
        let t = crash_rounds(&mut fe, &cache, sync, 4, 7);
        assert!(t.violations > 0, "{}: {t:?}", sync.name());
        assert!(
            t.first.iter().any(|v| v.contains("made durable")),
            "{:#?}",
            t.first
        );
        fe.disconnect().expect("disconnect");
        drop(fe);
        rig.finish();
    }
}
