//! What [`fuzz_ring`](super::fuzz_ring) and
//! [`fuzz_instance`](super::fuzz_instance) share of a hostile front-end and
//! a faulty platform: a front ring of `io/ring.h` with the front-end's
//! shadow of its slots, the decoding of structured `io/blkif.h` requests,
//! the front-end's `state` node (`io/xenbus.h`), the guest's data pages,
//! injected platform failures, and the checks that nothing is held.

use std::collections::BTreeSet;

use xbb::abi::{
    Abi, BlkifRequest, BlkifResponse, Segment, BLKIF_MAX_SEGMENTS_PER_REQUEST, MAX_SLOT_SIZE,
};
use xbb::host::{GrantRef, IoError, XenbusState, PAGE_SIZE};
use xbb::instance::Instance;
use xbb::keys;
use xbb::ring::FrontRing;
use xbb::shmem::SharedMem;

use super::builder::Code;
use super::input::Input;
use crate::host::{FakeHost, FE_PATH};

/// Granted data pages of the fuzzed guest.
pub(crate) const DATA_PAGES: usize = 16;
/// The largest ring the fuzzers build, as log2(pages).
pub(crate) const MAX_FUZZ_ORDER: u32 = 2;
/// The bytes of the largest ring.
pub(crate) const RING_BYTES: usize = PAGE_SIZE << MAX_FUZZ_ORDER;
/// Slots of the largest ring of either ABI.
const MAX_SLOTS: usize = 256;

/// Bound on the steps of settling.
pub(crate) const MAX_SETTLE_STEPS: usize = 1 << 16;

/// The shared memory of `N` fuzzed rings of the largest size, reused
/// across inputs.
///
/// Shared memory outside a platform can only be had from
/// [`SharedMem::leak_pair`], which never frees; a fuzzer running millions
/// of inputs keeps one of these (e.g. in a `static Mutex`) and passes it to
/// the body's `_in` function. A ring's pages are zeroed when it is laid
/// out.
#[derive(Debug)]
pub struct RingsMemory<const N: usize> {
    rings: [Option<(SharedMem, SharedMem)>; N],
}

impl<const N: usize> RingsMemory<N> {
    /// Leaks `N` rings of the largest size (16 KiB each). `None` when an
    /// allocation fails.
    pub fn new() -> Option<Self> {
        let rings: [_; N] = std::array::from_fn(|_| SharedMem::leak_pair(RING_BYTES));
        rings
            .iter()
            .all(Option::is_some)
            .then_some(RingsMemory { rings })
    }

    /// The two views of ring `i`'s memory (a new leaked pair when a
    /// previous input panicked while holding them).
    pub(crate) fn take(&mut self, i: usize) -> (SharedMem, SharedMem) {
        match self.rings[i].take() {
            Some(p) => p,
            None => SharedMem::leak_pair(RING_BYTES).expect("ring memory"),
        }
    }

    /// Hands ring `i`'s memory back for the next input.
    pub(crate) fn give_back(&mut self, i: usize, front: FrontRing, back: SharedMem) {
        self.rings[i] = Some((front.into_mem(), back));
    }
}

/// A fuzz driver that lets the instance settle: what it does for each
/// step, and the bounded loop of steps.
pub(crate) trait Settle {
    /// The platform.
    fn host(&self) -> &FakeHost;
    /// Completes the oldest pending I/O with `result`.
    fn complete_oldest(&mut self, result: Result<(), IoError>);
    /// Honours the deferred runs the instance asked for.
    fn run_scheduled(&mut self);
    /// Takes and checks every response published.
    fn drain(&mut self);

    /// Completes every pending I/O and honours deferred runs until
    /// nothing is left, draining responses as a front-end would.
    fn settle(&mut self, result: Result<(), IoError>) {
        for _ in 0..MAX_SETTLE_STEPS {
            if self.host().pending() > 0 {
                self.complete_oldest(result);
            } else if self.host().schedule_runs > 0 {
                self.run_scheduled();
            } else {
                self.drain();
                return;
            }
            self.drain();
        }
        panic!("the instance did not settle");
    }
}

/// Grants the guest's [`DATA_PAGES`] data pages (a pattern), first of all
/// grants; bit `p` of `readonly` grants page `p` read-only. Returns the
/// first page's reference (the others follow).
pub(crate) fn grant_data_pages(host: &mut FakeHost, readonly: u16) -> GrantRef {
    let grefs: Vec<GrantRef> = (0..DATA_PAGES)
        .map(|p| {
            let page: Vec<u8> = (p * PAGE_SIZE..(p + 1) * PAGE_SIZE)
                .map(|i| (i as u8).wrapping_mul(7) ^ (i >> 12) as u8)
                .collect();
            host.grant(&page, readonly & (1 << p) != 0)
        })
        .collect();
    debug_assert!(grefs.windows(2).all(|w| w[1] == w[0] + 1));
    grefs[0]
}

/// Writes the front-end's `state` node: `v % 12` 0..=8 a XenbusState, 9 a
/// non-number, 10 a number out of the enumeration, 11 no node.
pub(crate) fn set_front_state(host: &mut FakeHost, v: u8) {
    let path = format!("{FE_PATH}/{}", keys::STATE);
    match v % 12 {
        s @ 0..=8 => {
            let st = XenbusState::from_u32(u32::from(s)).expect("state");
            host.xs.set(&path, st.as_str().as_bytes());
        }
        9 => host.xs.set(&path, b"connected"),
        10 => host.xs.set(&path, b"99"),
        _ => host.xs.del(&path),
    }
}

/// A platform failure to inject, in the scripts' `inject`; its code is the
/// discriminant, as the fuzz bodies decode it (append, never reorder). A
/// format knows the first [`FAULTS`](super::Body::FAULTS) of them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fault {
    /// The next `n % 4` store submissions are refused.
    Submit,
    /// The next `n % 16` grant mappings fail.
    Map,
    /// The next ring mapping fails.
    RingMap,
    /// The next event-channel bind fails.
    Bind,
    /// The next window reservation fails.
    Window,
    /// The next `n % 12` XenStore commits conflict.
    XsConflict,
    /// The next store open fails.
    Open,
    /// XenStore read number `n % 64` from now fails (`fuzz_instance`
    /// only).
    XsRead,
}

impl Code for Fault {
    fn code(self) -> u8 {
        self as u8
    }
}

/// Arms platform failure `k` (a [`Fault`]'s code) with parameter `n`.
pub(crate) fn inject(host: &mut FakeHost, k: u8, n: u8) {
    match k {
        0 => host.faults.submits += u32::from(n % 4),
        1 => host.faults.maps += u32::from(n % 16),
        2 => host.faults.ring_map = true,
        3 => host.faults.bind = true,
        4 => host.faults.window = true,
        5 => host.xs.again_commits = u32::from(n % 12),
        6 => host.faults.open = true,
        _ => host.xs.fail_read = Some(host.xs.reads + 1 + u32::from(n % 64)),
    }
}

/// Nothing a connection holds is held: no grant, window or ring mapped, no
/// channel bound, no I/O in flight (`when`: "after detach", ...).
pub(crate) fn assert_nothing_held(h: &FakeHost, when: &str) {
    assert_eq!(h.live_mappings, 0, "grants mapped {when}");
    assert!(!h.window_reserved(), "a window reserved {when}");
    assert!(!h.ring_mapped(), "a ring mapped {when}");
    assert_eq!(h.channels_bound(), 0, "a channel bound {when}");
    assert_eq!(h.pending(), 0, "I/O in flight {when}");
}

/// After the last detach: the instance is detached, nothing is held, the
/// store is closed, every reservation, mapping and bind was undone, and
/// the host saw no contract violation.
pub(crate) fn assert_given_back(inst: &Instance, h: &FakeHost) {
    assert!(inst.is_detached(), "detach did not finish");
    assert_nothing_held(h, "after detach");
    assert!(!h.store_is_open(), "store still open after detach");
    h.assert_released();
    h.assert_clean();
}

/// The sector a request's selector byte picks (the next byte of `r`):
/// below 128 `8 * sel`; below 192 where the previous push ended
/// (`last_end`); below 255 `sel - 192` before the medium's end; 255 the
/// next eight bytes.
pub(crate) fn pick_sector(r: &mut Input<'_>, last_end: u64, medium_sectors: u64) -> u64 {
    let sel = r.u8();
    match sel {
        0..=127 => u64::from(sel) * 8,
        128..=191 => last_end,
        192..=254 => medium_sectors.saturating_sub(u64::from(sel - 192)),
        255 => r.u64(),
    }
}

/// `nsegs` segments (at most a request's inline number), two bytes of `r`
/// each: a grant selector (below 224 `data(g)`, below 240 `ring(g)`,
/// below 255 the byte itself, 255 a reference of 0xdead_beef) and a
/// sector range; and the sectors they span.
pub(crate) fn pick_segments(
    r: &mut Input<'_>,
    nsegs: u8,
    data: impl Fn(u8) -> GrantRef,
    ring: impl Fn(u8) -> GrantRef,
) -> ([Segment; BLKIF_MAX_SEGMENTS_PER_REQUEST], u64) {
    let mut seg = [Segment::default(); BLKIF_MAX_SEGMENTS_PER_REQUEST];
    let mut sectors = 0u64;
    for s in seg.iter_mut().take(usize::from(nsegs)) {
        let g = r.u8();
        let gref = match g {
            0..=223 => data(g),
            224..=239 => ring(g),
            240..=254 => GrantRef::from(g),
            255 => 0xdead_beef,
        };
        let b = r.u8();
        let (first_sect, last_sect) = match b {
            0..=63 => (b & 7, b >> 3),
            64..=119 => (b & 7, 7),
            120..=127 => (0, 8 + (b & 7) * 30),
            _ => (0, 7),
        };
        sectors += u64::from(last_sect.saturating_sub(first_sect)) + 1;
        *s = Segment {
            gref,
            first_sect,
            last_sect,
        };
    }
    (seg, sectors)
}

/// A front ring as the hostile front-end keeps it: the ring, where it
/// writes next, a shadow of every slot's bytes as it sees them between
/// operations, and every id a slot held.
pub(crate) struct ShadowRing {
    /// `None` before the ring was first laid out.
    pub(crate) front: Option<FrontRing>,
    pub(crate) abi: Abi,
    pub(crate) pages: u32,
    pub(crate) size: u32,
    /// The index the next request is written at.
    pub(crate) cursor: u32,
    /// Every slot's bytes as the front-end sees them between operations.
    pub(crate) shadow: Vec<[u8; MAX_SLOT_SIZE]>,
    /// Every id a slot of this ring held.
    pub(crate) ids: BTreeSet<u64>,
    /// Where the previous push ended.
    pub(crate) last_end: u64,
}

impl ShadowRing {
    /// A ring of `pages` pages in `abi`, laid out in `front` (or not yet).
    pub(crate) fn new(front: Option<FrontRing>, abi: Abi, pages: u32) -> ShadowRing {
        ShadowRing {
            front,
            abi,
            pages,
            size: abi.ring_size(pages).expect("ring size"),
            cursor: 0,
            shadow: vec![[0u8; MAX_SLOT_SIZE]; MAX_SLOTS],
            ids: BTreeSet::from([0]),
            last_end: 0,
        }
    }

    /// The shadow slot of ring index `index`.
    pub(crate) fn slot_of(&self, index: u32) -> usize {
        (index & (self.size - 1)) as usize
    }

    fn note_slot(&mut self, slot: usize) {
        let n = self.abi.request_size();
        let id = self.abi.decode_request(&self.shadow[slot][..n]).id;
        self.ids.insert(id);
    }

    /// Writes `bytes` into slot `index` and the shadow.
    pub(crate) fn write_slot(&mut self, index: u32, bytes: &[u8]) {
        let Some(front) = self.front.as_mut() else {
            return;
        };
        let n = bytes.len().min(self.abi.entry_size());
        front.write_raw_slot(index, &bytes[..n]);
        let slot = self.slot_of(index);
        self.shadow[slot][..n].copy_from_slice(&bytes[..n]);
        self.note_slot(slot);
    }

    /// Writes raw bytes of `r` into slot `cursor + rel`: a signed offset,
    /// a length and the bytes; `rel == 0` also advances the cursor.
    pub(crate) fn write_raw(&mut self, r: &mut Input<'_>) {
        let rel = r.u8() as i8;
        let len = usize::from(r.u8()) % (MAX_SLOT_SIZE + 1);
        let bytes = r.bytes(len);
        self.write_slot(self.cursor.wrapping_add(rel as u32), bytes);
        if rel == 0 {
            self.cursor = self.cursor.wrapping_add(1);
        }
    }

    /// Encodes `req`, spanning `sectors` from its first, at the cursor and
    /// advances it.
    pub(crate) fn write_request(&mut self, req: &BlkifRequest, sector: u64, sectors: u64) {
        self.last_end = sector.wrapping_add(sectors);
        let mut buf = [0u8; MAX_SLOT_SIZE];
        let n = self.abi.request_size();
        self.abi.encode_request(req, &mut buf[..n]);
        self.write_slot(self.cursor, &buf[..n]);
        self.cursor = self.cursor.wrapping_add(1);
    }

    /// The `req_prod` a selector of `r` picks: the cursor, ahead of it,
    /// behind it, or any value.
    pub(crate) fn pick_req_prod(&self, r: &mut Input<'_>) -> u32 {
        match r.u8() % 4 {
            0 => self.cursor,
            1 => self.cursor.wrapping_add(u32::from(r.u8())),
            2 => self.cursor.wrapping_sub(u32::from(r.u8())),
            _ => r.u32(),
        }
    }

    /// Puts response `rsp`, taken at ring index `index`, in the shadow as
    /// the bytes the back-end wrote into the slot.
    pub(crate) fn took_response(&mut self, index: u32, rsp: &BlkifResponse) {
        let slot = self.slot_of(index);
        let n = self.abi.response_size();
        self.shadow[slot][..n].fill(0);
        self.abi.encode_response(rsp, &mut self.shadow[slot][..n]);
        self.note_slot(slot);
    }
}
