//! The input format of `fuzz_ring` and a builder for it: a [`RingConfig`]
//! header (the guest ABI, the ring, the medium, the tunables) followed by
//! actions a hostile front-end and a faulty platform take.

use xbb::abi::{BLKIF_MAX_SEGMENTS_PER_REQUEST, MAX_SLOT_SIZE};
use xbb::host::IoError;

use super::builder::{body, header_codec, Code, Script};

/// What one step of a `fuzz_ring` input does; its byte code is the
/// discriminant, 0 for the first (the seeds and the corpus are written in
/// these codes: append, never reorder).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub(crate) enum Action {
    WriteSlot,
    Push,
    ReqProd,
    Kick,
    Complete,
    CompleteAll,
    FrontState,
    Inject,
    Deferred,
    RootMounted,
    ArmRspEvent,
    Sysctl,
}

impl Action {
    /// The action of code byte `b`: every byte is one, modulo their number.
    pub(crate) fn decode(b: u8) -> Action {
        match b % (Action::Sysctl as u8 + 1) {
            0 => Action::WriteSlot,
            1 => Action::Push,
            2 => Action::ReqProd,
            3 => Action::Kick,
            4 => Action::Complete,
            5 => Action::CompleteAll,
            6 => Action::FrontState,
            7 => Action::Inject,
            8 => Action::Deferred,
            9 => Action::RootMounted,
            10 => Action::ArmRspEvent,
            _ => Action::Sysctl,
        }
    }
}

/// The fixed header of a [`fuzz_ring`](super::fuzz_ring) input: the guest
/// ABI, the ring, the medium and the tunables. Selectors pick from small
/// tables of interesting values (those of
/// [`InstanceConfig`](super::InstanceConfig)).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RingConfig {
    /// `x86_64-abi` (else `x86_32-abi`).
    pub x86_64: bool,
    /// Ring page order, 0..=2.
    pub order: u8,
    /// The store can only be read.
    pub read_only_medium: bool,
    /// The store can flush (offers flush and barrier).
    pub can_flush: bool,
    /// 4096-byte logical sectors (else 512).
    pub sector_4k: bool,
    /// The back-end node `online` is 1.
    pub online: bool,
    /// `hw.xbb.no_coalesce_reqs` = 1.
    pub no_coalesce: bool,
    /// `requests_per_pass` selector: 256, 1, 3, 16.
    pub requests_per_pass: u8,
    /// `max_requests` selector: 1024, 1, 2, 5.
    pub max_requests: u8,
    /// `kva_pages` selector: 0 (default sizing), 11, 16, 40.
    pub kva_pages: u8,
    /// `max_request_size` selector: 1 MiB, 44 KiB, 64 KiB, 128 KiB.
    pub max_request_size: u8,
    /// Medium size: `(medium % 64 + 1) * 8` sectors of 512 bytes.
    pub medium: u8,
    /// The root file system is mounted only by a later action.
    pub root_later: bool,
    /// The front-end is Initialised before the back-end attaches.
    pub connect_at_attach: bool,
    /// Bit `i`: data page `i` is granted read-only.
    pub readonly_grants: u16,
    /// The toolstack's `mode` is `r`.
    pub toolstack_read_only: bool,
    /// `max_ring_page_order` selector: 2, 0, 1, 5.
    pub max_ring_order: u8,
    /// The front-end writes `feature-persistent = 1`.
    pub persistent: bool,
    /// The store can discard (offers `feature-discard`).
    pub can_discard: bool,
    /// `max_persistent_grants` selector: 1056, 1, 3, 0.
    pub max_persistent_grants: u8,
}

header_codec! { RingConfig [6]:
    x86_64 1, order 2 % 3, read_only_medium 1, can_flush 1, sector_4k 1, online 1, no_coalesce 1,
    requests_per_pass 2, max_requests 2, kva_pages 2, max_request_size 2,
    medium 6, root_later 1, connect_at_attach 1,
    readonly_grants 16,
    toolstack_read_only 1, max_ring_order 2, persistent 1, can_discard 1, max_persistent_grants 2,
}

/// How a completion ends, in [`RingScript`] actions.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Success: the I/O is performed.
    Ok,
    /// `EIO`.
    Io,
    /// The medium is gone.
    Gone,
    /// No space.
    NoSpace,
}

impl Code for Outcome {
    fn code(self) -> u8 {
        match self {
            Outcome::Ok => 0,
            Outcome::Io => 5,
            Outcome::Gone => 6,
            Outcome::NoSpace => 7,
        }
    }
}

impl Outcome {
    pub(crate) fn decode(b: u8) -> Result<(), IoError> {
        match b % 8 {
            5 => Err(IoError::Io),
            6 => Err(IoError::Gone),
            7 => Err(IoError::NoSpace),
            _ => Ok(()),
        }
    }
}

/// One structured request for [`RingScript::push`] and
/// [`InstanceScript::push`](super::InstanceScript::push): selectors,
/// decoded as [`fuzz_ring`](super::fuzz_ring) and
/// [`fuzz_instance`](super::fuzz_instance) decode them (alike but for the
/// operation and the segment count).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PushReq {
    /// Low 16 bits of the id (the high bits count pushes: ids are
    /// unique).
    pub id: u16,
    /// `% 8`: 0-1 read, 2-3 write, 4 flush, 5 barrier; `fuzz_ring`: 6
    /// discard or indirect, 7 the raw operation byte `raw_op`;
    /// `fuzz_instance`: 6 discard, 7 indirect.
    pub op: u8,
    /// `fuzz_ring`: the raw operation byte when `op % 8 == 7`.
    /// `fuzz_instance`: a discard's flag; an indirect request's
    /// `indirect_op`: even read, odd write, above 250 the byte itself.
    pub raw_op: u8,
    /// `nr_segments`: below 208, `% 13` (`fuzz_ring`) or `% 12`
    /// (`fuzz_instance`); from 208, as is (beyond the limit). In
    /// `fuzz_instance` an indirect request has `4 * nsegs` segments (the
    /// descriptors its pages hold); a discard `8 * nsegs` sectors.
    pub nsegs: u8,
    /// Below 128: sector `8 * sector`; below 192: where the previous push
    /// ended; below 255: `sector - 192` before the medium's end; 255: the
    /// raw `raw_sector`.
    pub sector: u8,
    /// The sector when `sector == 255`.
    pub raw_sector: u64,
    /// Per segment: below 224 data page `% 16`; below 240 a ring page;
    /// below 255 the value itself; 255 a grant reference of 0xdead_beef.
    /// In `fuzz_instance`, an indirect request's descriptor pages are
    /// data pages from this one (`% 16`) on.
    pub gref: u8,
    /// Per segment: below 64 `(b & 7, b >> 3)`; below 120 `(b & 7, 7)`;
    /// below 128 a `last_sect` beyond the page; else the whole page.
    pub range: u8,
}

/// The input format of [`fuzz_ring`](super::fuzz_ring).
#[derive(Clone, Copy, Debug)]
pub struct RingInput;

body!(RingInput: RingConfig, Action, Outcome, 7);

/// Builds [`fuzz_ring`](super::fuzz_ring) inputs by name, for seeds and
/// corpora.
pub type RingScript = Script<RingInput>;

impl Script<RingInput> {
    /// Writes raw bytes into slot `cursor + rel`; `rel == 0` also advances
    /// the cursor (the next request index).
    pub fn write_slot(&mut self, rel: i8, bytes: &[u8]) -> &mut Self {
        let n = bytes.len().min(MAX_SLOT_SIZE);
        self.op(Action::WriteSlot as u8, &[rel as u8, n as u8])
            .more(&bytes[..n])
    }

    /// Encodes a structured request at the cursor and advances it.
    pub fn push(&mut self, r: &PushReq) -> &mut Self {
        let n = if r.nsegs < 208 { r.nsegs % 13 } else { r.nsegs };
        let segments = usize::from(n).min(BLKIF_MAX_SEGMENTS_PER_REQUEST);
        self.request(Action::Push as u8, &[], r, r.op % 8 == 7, &[], segments)
    }

    /// Pushes `reqs`, publishes them and kicks.
    pub fn requests(&mut self, reqs: &[PushReq]) -> &mut Self {
        for r in reqs {
            self.push(r);
        }
        self.publish().kick()
    }

    /// Publishes `req_prod = cursor`.
    pub fn publish(&mut self) -> &mut Self {
        self.op(Action::ReqProd as u8, &[0])
    }

    /// Publishes `req_prod = cursor + ahead` (without moving the cursor).
    pub fn req_prod_ahead(&mut self, ahead: u8) -> &mut Self {
        self.op(Action::ReqProd as u8, &[1, ahead])
    }

    /// Publishes `req_prod = cursor - back`.
    pub fn req_prod_back(&mut self, back: u8) -> &mut Self {
        self.op(Action::ReqProd as u8, &[2, back])
    }

    /// Publishes any `req_prod`.
    pub fn req_prod_raw(&mut self, v: u32) -> &mut Self {
        self.op(Action::ReqProd as u8, &[3]).more(&v.to_le_bytes())
    }

    /// The event channel fires: `Instance::run`.
    pub fn kick(&mut self) -> &mut Self {
        self.op(Action::Kick as u8, &[])
    }

    /// Runs the instance if it asked for a deferred run.
    pub fn deferred(&mut self) -> &mut Self {
        self.op(Action::Deferred as u8, &[])
    }

    /// The front-end re-arms `rsp_event` (`RING_FINAL_CHECK_FOR_RESPONSES`).
    pub fn arm_rsp_event(&mut self) -> &mut Self {
        self.op(Action::ArmRspEvent as u8, &[])
    }
}
