//! The shared ring of Xen's `io/ring.h` as `blkif.h` instantiates it
//! (`DEFINE_RING_TYPES(blkif, ...)`): the back ring a back-end serves
//! (`BACK_RING_INIT`, `RING_COPY_REQUEST`, `RING_PUSH_RESPONSES_AND_CHECK_NOTIFY`,
//! `RING_FINAL_CHECK_FOR_REQUESTS`) and, for simulated guests, tests and
//! fuzzing, the front ring a guest drives (`SHARED_RING_INIT`,
//! `FRONT_RING_INIT`, `RING_PUSH_REQUESTS_AND_CHECK_NOTIFY`,
//! `RING_FINAL_CHECK_FOR_RESPONSES`).
//!
//! All shared access goes through [`RingMem`] ([`SharedMem`] on every
//! platform; loom's atomics in the model of `tests/loom.rs`, which runs this
//! very code): indices are atomics with a
//! named [`Ordering`], slots are copied in or out, never referenced. The
//! back ring reads `req_prod` once per snapshot, refuses an impossible
//! value, and copies each byte of a request slot the request uses exactly
//! once (its head, then what the head's copy says it uses) before decoding
//! the private copy.
//! Its own indices (`req_cons`, `rsp_prod_pvt`, and the last published
//! `rsp_prod`) are private, so a guest scribbling on the header can only
//! make it refuse work or send a spurious event, never make it touch memory
//! outside the ring.

use core::sync::atomic::Ordering;

use crate::abi::{
    Abi, BlkifRequest, BlkifResponse, MAX_SLOT_SIZE, SRING_HEADER_SIZE, SRING_REQ_EVENT,
    SRING_REQ_PROD, SRING_RSP_EVENT, SRING_RSP_PROD,
};
use crate::host::PAGE_SIZE;
use crate::shmem::{RingMem, SharedMem};

/// Why a ring cannot be used.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RingError {
    /// The page count is not a power of two from 1 to
    /// [`MAX_RING_PAGES`](crate::abi::MAX_RING_PAGES), or the mapping is
    /// shorter than `pages * 4096` bytes.
    TooSmall,
    /// The front-end published a `req_prod` no well-behaved front-end can:
    /// more requests outstanding than the ring holds, or an index behind
    /// requests already consumed. The connection must be shut down.
    BadProducer {
        /// The value read from the shared ring.
        req_prod: u32,
        /// The back-end's consumer index at the time.
        req_cons: u32,
        /// The back-end's private response producer at the time.
        rsp_prod_pvt: u32,
    },
    /// The back-end published an `rsp_prod` no well-behaved back-end can:
    /// more unconsumed responses than the ring holds, or than requests
    /// the front-end made visible and has not seen answered (an index
    /// moved backwards looks like about 2^32 of them). The front-end must
    /// stop taking responses and report the back-end broken.
    BadResponseProducer {
        /// The value read from the shared ring.
        rsp_prod: u32,
        /// The front-end's consumer index at the time.
        rsp_cons: u32,
        /// How many responses the front-end could be owed at most.
        owed: u32,
    },
    /// A back-end resuming a ring ([`BackRing::attach`]) would have more
    /// requests consumed and unanswered than the ring holds: its
    /// `req_cons` and the ring's `rsp_prod` cannot both be right.
    BadResume {
        /// The consumer index the back-end resumes at.
        req_cons: u32,
        /// The ring's `rsp_prod`, read once.
        rsp_prod: u32,
    },
}

/// Checks a ring geometry: the slot count, given the mapping is long enough.
fn ring_geometry<M: RingMem>(mem: &M, abi: Abi, pages: u32) -> Result<u32, RingError> {
    let size = abi.ring_size(pages).ok_or(RingError::TooSmall)?;
    let bytes = (pages as usize)
        .checked_mul(PAGE_SIZE)
        .ok_or(RingError::TooSmall)?;
    if mem.len() < bytes {
        return Err(RingError::TooSmall);
    }
    Ok(size)
}

/// Byte offset of slot `index` (masked to the ring). With `size` from
/// [`Abi::ring_size`], the whole entry lies inside `pages * 4096` bytes.
fn slot_offset(abi: Abi, size: u32, index: u32) -> usize {
    SRING_HEADER_SIZE + (index & (size - 1)) as usize * abi.entry_size()
}

/// A copy of the first `len` bytes of slot `index`: the one read of that
/// slot (the copy, never the shared page, is decoded and checked).
fn read_slot<M: RingMem>(
    mem: &M,
    abi: Abi,
    size: u32,
    index: u32,
    len: usize,
) -> [u8; MAX_SLOT_SIZE] {
    let mut buf = [0u8; MAX_SLOT_SIZE];
    mem.read(slot_offset(abi, size, index), &mut buf[..len]);
    buf
}

/// One request slot as the back ring copied it: the one read of the slot
/// (`RING_COPY_REQUEST`) and the ring index it was consumed at. Only the
/// bytes the request uses ([`Abi::request_used_size`]) were read; the rest
/// of the copy is zero.
/// The copy, not the shared page, is what is decoded and checked, and what
/// an in-flight journal keeps ([`crate::journal`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RawRequest {
    /// The ring index (`req_cons` before it moved past the slot).
    pub index: u32,
    /// The slot's bytes.
    pub bytes: [u8; MAX_SLOT_SIZE],
}

impl RawRequest {
    /// The request the bytes hold, in `abi`'s layout, decoded where the
    /// copy is ([`Abi::decode_request`] of a whole slot's copy).
    #[inline]
    pub fn decode(&self, abi: Abi) -> BlkifRequest {
        abi.decode_request(&self.bytes)
    }
}

/// Encodes one request of `len` bytes with `encode` into a zeroed copy
/// (padding and unused bytes stay zero) and writes it to byte `at` of the
/// ring (the front ring's side).
fn put_request<M: RingMem>(mem: &mut M, at: usize, len: usize, encode: impl FnOnce(&mut [u8])) {
    let mut buf = [0u8; MAX_SLOT_SIZE];
    let len = len.min(MAX_SLOT_SIZE);
    encode(&mut buf[..len]);
    mem.write(at, &buf[..len]);
}

/// The back-end's side of a shared ring (`struct blkif_back_ring`).
#[derive(Debug)]
pub struct BackRing<M: RingMem = SharedMem> {
    mem: M,
    abi: Abi,
    size: u32,
    req_cons: u32,
    rsp_prod_pvt: u32,
    /// The `rsp_prod` value last stored: the "old" of the notify check,
    /// kept privately so the guest cannot influence it.
    rsp_prod_pub: u32,
}

impl<M: RingMem> BackRing<M> {
    /// Attaches to a ring the front-end initialised (`BACK_RING_ATTACH` at
    /// the ring's `rsp_prod`, read once): `req_cons = rsp_prod_pvt =
    /// rsp_prod`. That is `BACK_RING_INIT`'s 0 for a ring
    /// `SHARED_RING_INIT` just made, and any index a front-end started its
    /// ring at otherwise (every index is compared in wrapping arithmetic,
    /// so a start near 2^32 wraps like any other). Does not write the
    /// shared header.
    pub fn new(mem: M, abi: Abi, pages: u32) -> Result<BackRing<M>, RingError> {
        let size = ring_geometry(&mem, abi, pages)?;
        // Acquire: the front-end initialised the header before granting
        // the pages; pairs with its release stores of the indices.
        let start = mem.load_u32(SRING_RSP_PROD, Ordering::Acquire);
        Ok(BackRing {
            mem,
            abi,
            size,
            req_cons: start,
            rsp_prod_pvt: start,
            rsp_prod_pub: start,
        })
    }

    /// Resumes serving a ring another back-end served until it went away
    /// (`BACK_RING_ATTACH` at chosen indices): `req_cons` is where that
    /// back-end's in-flight journal says it stopped consuming
    /// ([`crate::journal`]), and responses resume at the ring's
    /// `rsp_prod`, read once (`rsp_prod_pvt = rsp_prod`: whatever that
    /// back-end wrote beyond it was never published). The front-end may
    /// have written anything meanwhile, so both are checked:
    /// [`RingError::BadResume`] when `req_cons` is more than a ring ahead
    /// of (or behind) `rsp_prod`, [`RingError::BadProducer`] when
    /// `req_prod` is behind `req_cons` or claims more than the ring holds.
    /// Does not write the shared header. On any error the mapping comes
    /// back with it, for the platform to unmap.
    pub fn attach(
        mem: M,
        abi: Abi,
        pages: u32,
        req_cons: u32,
    ) -> Result<BackRing<M>, (RingError, M)> {
        let size = match ring_geometry(&mem, abi, pages) {
            Ok(size) => size,
            Err(e) => return Err((e, mem)),
        };
        // Acquire: pairs with the release store of rsp_prod by the
        // back-end that published it (the slots below it were written).
        let rsp_prod = mem.load_u32(SRING_RSP_PROD, Ordering::Acquire);
        if req_cons.wrapping_sub(rsp_prod) > size {
            return Err((RingError::BadResume { req_cons, rsp_prod }, mem));
        }
        let ring = BackRing {
            mem,
            abi,
            size,
            req_cons,
            rsp_prod_pvt: rsp_prod,
            rsp_prod_pub: rsp_prod,
        };
        match ring.snapshot_req_prod() {
            Ok(_) => Ok(ring),
            Err(e) => Err((e, ring.mem)),
        }
    }

    /// The number of slots (`RING_SIZE`).
    pub fn size(&self) -> u32 {
        self.size
    }

    /// The guest ABI of the slots.
    pub fn abi(&self) -> Abi {
        self.abi
    }

    /// The index of the next request to consume.
    pub fn req_cons(&self) -> u32 {
        self.req_cons
    }

    /// The index of the next response to produce.
    pub fn rsp_prod_pvt(&self) -> u32 {
        self.rsp_prod_pvt
    }

    /// Checks a `req_prod` value read from the ring against the private
    /// indices (`RING_REQUEST_PROD_OVERFLOW`, plus a producer that went
    /// back behind `req_cons`).
    fn check_prod(&self, req_prod: u32) -> Result<u32, RingError> {
        let produced = req_prod.wrapping_sub(self.rsp_prod_pvt);
        let consumed = self.req_cons.wrapping_sub(self.rsp_prod_pvt);
        if produced > self.size || produced < consumed {
            return Err(RingError::BadProducer {
                req_prod,
                req_cons: self.req_cons,
                rsp_prod_pvt: self.rsp_prod_pvt,
            });
        }
        Ok(req_prod)
    }

    /// Reads `req_prod` once and validates it. `Err` when the front-end
    /// claims more unconsumed plus unanswered requests than the ring holds,
    /// or moved `req_prod` back behind `req_cons`.
    pub fn snapshot_req_prod(&self) -> Result<u32, RingError> {
        // Acquire pairs with the front-end's write barrier before its
        // req_prod store: the slots below req_prod are visible to the
        // copies `take_request` makes after this load.
        let req_prod = self.mem.load_u32(SRING_REQ_PROD, Ordering::Acquire);
        self.check_prod(req_prod)
    }

    /// Consumes the request at `req_cons` if `req_prod` (from
    /// [`snapshot_req_prod`](Self::snapshot_req_prod)) says there is one:
    /// copies the slot's bytes the request uses once into a private buffer
    /// ([`Abi::request_used_size`]: its head, then — sized from the private
    /// copy of the head — the rest of its form or the segments it names),
    /// decodes the copy and advances `req_cons`. `None` when caught up,
    /// and also when `req_prod` is not a value `snapshot_req_prod` accepts
    /// or no response slot is free (`RING_REQUEST_CONS_OVERFLOW`), so a
    /// loop over this method ends after at most `size` requests whatever
    /// the caller passes.
    #[inline]
    pub fn take_request(&mut self, req_prod: u32) -> Option<BlkifRequest> {
        let abi = self.abi;
        self.take_raw(req_prod).map(|raw| raw.decode(abi))
    }

    /// [`take_request`](Self::take_request) without the decoding: the
    /// slot's private copy and its index, for a caller that keeps the
    /// bytes (an in-flight journal) and decodes them itself.
    #[inline]
    pub fn take_raw(&mut self, req_prod: u32) -> Option<RawRequest> {
        if req_prod == self.req_cons || self.check_prod(req_prod).is_err() {
            return None;
        }
        if self.req_cons.wrapping_sub(self.rsp_prod_pvt) >= self.size {
            return None;
        }
        let abi = self.abi;
        let at = slot_offset(abi, self.size, self.req_cons);
        // The one read of each byte of this slot the request uses: the
        // head, then the bytes after it that the head's copy (never the
        // ring) says are used. Everything after looks at the copy only.
        let mut bytes = [0u8; MAX_SLOT_SIZE];
        let head = abi.request_head_size();
        self.mem.read(at, &mut bytes[..head]);
        let used = abi.request_used_size(&bytes[..head]);
        if let Some(rest) = bytes.get_mut(head..used) {
            self.mem.read(at + head, rest);
        }
        let index = self.req_cons;
        self.req_cons = self.req_cons.wrapping_add(1);
        Some(RawRequest { index, bytes })
    }

    /// Writes one response at `rsp_prod_pvt` (every byte of the response
    /// struct, padding zero) and advances `rsp_prod_pvt`. Not visible to
    /// the front-end until [`publish_responses`](Self::publish_responses).
    ///
    /// There must be a consumed, unanswered request; otherwise this is a
    /// bug in the caller (debug builds panic, release builds write
    /// nothing).
    pub fn push_response(&mut self, rsp: &BlkifResponse) {
        let unanswered = self.req_cons.wrapping_sub(self.rsp_prod_pvt);
        debug_assert!(
            unanswered != 0 && unanswered <= self.size,
            "push_response without an unanswered request"
        );
        if unanswered == 0 || unanswered > self.size {
            return;
        }
        let at = slot_offset(self.abi, self.size, self.rsp_prod_pvt);
        let bytes = self.abi.response_bytes(rsp);
        // A constant length per ABI: the copy is a few stores.
        match self.abi {
            Abi::X86_32 => self.mem.write(at, &bytes[..Abi::X86_32.response_size()]),
            Abi::X86_64 => self.mem.write(at, &bytes[..Abi::X86_64.response_size()]),
        }
        self.rsp_prod_pvt = self.rsp_prod_pvt.wrapping_add(1);
    }

    /// Publishes the pushed responses (`RING_PUSH_RESPONSES_AND_CHECK_NOTIFY`):
    /// `true` iff the front-end asked to be notified of one of them
    /// (`rsp_event` within the newly published range).
    pub fn publish_responses(&mut self) -> bool {
        let old = self.rsp_prod_pub;
        let new = self.rsp_prod_pvt;
        // Release orders the response slot writes before the index: a
        // front-end that sees the new rsp_prod sees the responses.
        self.mem.store_u32(SRING_RSP_PROD, new, Ordering::Release);
        self.rsp_prod_pub = new;
        // Store-load barrier: closes the race where the front-end sets
        // rsp_event and checks rsp_prod (seeing the old value) while we
        // read the old rsp_event; with the fence on both sides one of us
        // sees the other's store, so no event is lost.
        self.mem.full_fence();
        // Relaxed: ordered after the store by the fence above; the value is
        // only compared, never used as an index.
        let event = self.mem.load_u32(SRING_RSP_EVENT, Ordering::Relaxed);
        new.wrapping_sub(event) < new.wrapping_sub(old)
    }

    /// `RING_FINAL_CHECK_FOR_REQUESTS`: before going idle, asks for an
    /// event at the next request (`req_event = req_cons + 1`) and re-reads
    /// `req_prod`, so a request produced meanwhile is not missed. `Ok(true)`
    /// when requests remain to be consumed.
    pub fn final_check_for_requests(&mut self) -> Result<bool, RingError> {
        self.final_check_inner(|| {})
    }

    /// [`final_check_for_requests`](Self::final_check_for_requests) with a
    /// hook run between the first check and the `req_event` store, where a
    /// front-end can race with us (tests use it to produce a request there).
    fn final_check_inner(&mut self, between: impl FnOnce()) -> Result<bool, RingError> {
        if self.snapshot_req_prod()? != self.req_cons {
            return Ok(true);
        }
        between();
        // Relaxed: ordered before the re-read of req_prod by the fence
        // below; the front-end reads it after its own full fence.
        self.mem.store_u32(
            SRING_REQ_EVENT,
            self.req_cons.wrapping_add(1),
            Ordering::Relaxed,
        );
        // Store-load barrier: closes the race where the front-end publishes
        // a request and reads the old req_event (no notify) while we re-read
        // the old req_prod (no work): one of the two must see the other.
        self.mem.full_fence();
        Ok(self.snapshot_req_prod()? != self.req_cons)
    }

    /// Gives the mapping back, for the platform to unmap.
    pub fn into_mem(self) -> M {
        self.mem
    }
}

/// The front-end's side of a shared ring (`struct blkif_front_ring`), for
/// simulated guests, tests and fuzzing.
///
/// It is as wary of its back-end as the back ring is of its front-end:
/// [`take_response`](Self::take_response) reads `rsp_prod` once and
/// refuses a value that claims more unconsumed responses than the ring
/// holds or than requests this front-end made visible (the furthest
/// `req_prod` it stored that a well-behaved front-end could store, at most
/// a ring ahead of `rsp_cons`). So a loop taking responses ends after at
/// most one ring's worth, whatever the back-end writes.
#[derive(Debug)]
pub struct FrontRing<M: RingMem = SharedMem> {
    mem: M,
    abi: Abi,
    size: u32,
    req_prod_pvt: u32,
    rsp_cons: u32,
    /// The furthest `req_prod` stored, among values at most `size` ahead
    /// of `rsp_cons` when stored: requests up to it may be answered.
    req_issued: u32,
}

impl<M: RingMem> FrontRing<M> {
    /// Initialises the shared ring and attaches to it (`SHARED_RING_INIT`
    /// + `FRONT_RING_INIT`): the header zeroed, `req_event = rsp_event = 1`.
    pub fn init(mem: M, abi: Abi, pages: u32) -> Result<FrontRing<M>, RingError> {
        FrontRing::init_at(mem, abi, pages, 0)
    }

    /// [`init`](Self::init) with every index starting at `start` instead
    /// of 0 (`req_prod = rsp_prod = start`, the events at `start + 1`): a
    /// front-end that wants its indices to wrap at 2^32 soon. The back
    /// ring attaches at the ring's `rsp_prod` ([`BackRing::new`]).
    pub fn init_at(mem: M, abi: Abi, pages: u32, start: u32) -> Result<FrontRing<M>, RingError> {
        let size = ring_geometry(&mem, abi, pages)?;
        mem.write(0, &[0u8; SRING_HEADER_SIZE]);
        let event = start.wrapping_add(1);
        mem.store_u32(SRING_REQ_EVENT, event, Ordering::Relaxed);
        mem.store_u32(SRING_RSP_EVENT, event, Ordering::Relaxed);
        // Release: the initialised header is visible before anyone can see
        // a request (there is none yet; the back-end attaches later through
        // the grant, which is itself a synchronisation point).
        mem.store_u32(SRING_REQ_PROD, start, Ordering::Release);
        mem.store_u32(SRING_RSP_PROD, start, Ordering::Release);
        Ok(FrontRing {
            mem,
            abi,
            size,
            req_prod_pvt: start,
            rsp_cons: start,
            req_issued: start,
        })
    }

    /// The number of slots (`RING_SIZE`).
    pub fn size(&self) -> u32 {
        self.size
    }

    /// The guest ABI of the slots.
    pub fn abi(&self) -> Abi {
        self.abi
    }

    /// The index of the next request to produce.
    pub fn req_prod_pvt(&self) -> u32 {
        self.req_prod_pvt
    }

    /// The index of the next response to consume.
    pub fn rsp_cons(&self) -> u32 {
        self.rsp_cons
    }

    /// The back-end's `rsp_prod` as it stands in the shared ring
    /// (acquire), unchecked: how far the back-end says it answered,
    /// whether or not [`take_response`](Self::take_response) would take
    /// that many (a test that overran its own ring still counts them).
    pub fn rsp_prod(&self) -> u32 {
        self.mem.load_u32(SRING_RSP_PROD, Ordering::Acquire)
    }

    /// Slots free for new requests (`RING_FREE_REQUESTS`).
    pub fn free_slots(&self) -> u32 {
        self.size
            .saturating_sub(self.req_prod_pvt.wrapping_sub(self.rsp_cons))
    }

    /// Writes `req` into the slot at `req_prod_pvt` and advances it;
    /// `false` (nothing written) when the ring is full. Not visible to the
    /// back-end until [`publish_requests`](Self::publish_requests).
    pub fn push_request(&mut self, req: &BlkifRequest) -> bool {
        if self.free_slots() == 0 {
            return false;
        }
        let at = slot_offset(self.abi, self.size, self.req_prod_pvt);
        let abi = self.abi;
        put_request(&mut self.mem, at, abi.request_size(), |b| {
            abi.encode_request(req, b)
        });
        self.req_prod_pvt = self.req_prod_pvt.wrapping_add(1);
        true
    }

    /// A hostile front-end's write: raw bytes into slot `index` (masked to
    /// the ring), at most one entry's worth.
    pub fn write_raw_slot(&mut self, index: u32, bytes: &[u8]) {
        let n = bytes.len().min(self.abi.entry_size());
        self.mem
            .write(slot_offset(self.abi, self.size, index), &bytes[..n]);
    }

    /// The request slot `index` (masked to the ring) holds now, decoded:
    /// what a hostile front-end's raw bytes amount to.
    pub fn read_slot(&self, index: u32) -> BlkifRequest {
        let len = self.abi.request_size();
        let buf = read_slot(&self.mem, self.abi, self.size, index, len);
        self.abi.decode_request(&buf[..len])
    }

    /// A hostile front-end's write: stores any `req_prod` (release). A
    /// value ahead of `req_prod_pvt` by no more than the free slots makes
    /// the slots up to it produced (whatever was written in them), so that
    /// requests pushed afterwards follow them.
    pub fn set_req_prod_raw(&mut self, v: u32) {
        // Release: slots written before are visible with the index.
        self.mem.store_u32(SRING_REQ_PROD, v, Ordering::Release);
        self.note_issued(v);
        if v.wrapping_sub(self.req_prod_pvt) <= self.free_slots() {
            self.req_prod_pvt = v;
        }
    }

    /// Records a stored `req_prod` for the bound on responses: the
    /// furthest one at most a ring ahead of `rsp_cons`. (A value further
    /// ahead, or behind, is one no well-behaved front-end stores; the
    /// back-end refuses it, and responses beyond the bound are refused
    /// here.)
    fn note_issued(&mut self, v: u32) {
        let ahead = v.wrapping_sub(self.rsp_cons);
        if ahead <= self.size && ahead > self.req_issued.wrapping_sub(self.rsp_cons) {
            self.req_issued = v;
        }
    }

    /// Responses this front-end can be owed at most: requests it made
    /// visible and has not taken the response of, within one ring.
    fn owed(&self) -> u32 {
        self.req_issued.wrapping_sub(self.rsp_cons).min(self.size)
    }

    /// Publishes the pushed requests (`RING_PUSH_REQUESTS_AND_CHECK_NOTIFY`):
    /// `true` iff the back-end asked for an event (`req_event` within the
    /// newly published range).
    pub fn publish_requests(&mut self) -> bool {
        // Relaxed: only this side writes req_prod.
        let old = self.mem.load_u32(SRING_REQ_PROD, Ordering::Relaxed);
        let new = self.req_prod_pvt;
        // Release orders the request slot writes before the index.
        self.mem.store_u32(SRING_REQ_PROD, new, Ordering::Release);
        self.note_issued(new);
        // Store-load barrier: closes the race with the back-end's
        // RING_FINAL_CHECK_FOR_REQUESTS (it sets req_event then re-reads
        // req_prod; we set req_prod then read req_event).
        self.mem.full_fence();
        // Relaxed: ordered after the store by the fence above.
        let event = self.mem.load_u32(SRING_REQ_EVENT, Ordering::Relaxed);
        new.wrapping_sub(event) < new.wrapping_sub(old)
    }

    /// Consumes the next published response: `Ok(None)` when caught up,
    /// [`RingError::BadResponseProducer`] (nothing consumed) when the
    /// back-end's `rsp_prod` claims more responses than this front-end can
    /// be owed. The slot is copied once; its `id` is the caller's to check.
    pub fn take_response(&mut self) -> Result<Option<BlkifResponse>, RingError> {
        // Acquire pairs with the back-end's release store of rsp_prod: the
        // response slots below it are visible to the copy below.
        let rsp_prod = self.mem.load_u32(SRING_RSP_PROD, Ordering::Acquire);
        let unconsumed = rsp_prod.wrapping_sub(self.rsp_cons);
        if unconsumed == 0 {
            return Ok(None);
        }
        let owed = self.owed();
        if unconsumed > owed {
            return Err(RingError::BadResponseProducer {
                rsp_prod,
                rsp_cons: self.rsp_cons,
                owed,
            });
        }
        let len = self.abi.response_size();
        let buf = read_slot(&self.mem, self.abi, self.size, self.rsp_cons, len);
        self.rsp_cons = self.rsp_cons.wrapping_add(1);
        Ok(Some(self.abi.decode_response(&buf[..len])))
    }

    /// `RING_FINAL_CHECK_FOR_RESPONSES`: asks for an event at the next
    /// response (`rsp_event = rsp_cons + 1`) and re-reads `rsp_prod`;
    /// `true` when responses remain to be consumed.
    pub fn final_check_for_responses(&mut self) -> bool {
        // Acquire: as in take_response.
        if self.mem.load_u32(SRING_RSP_PROD, Ordering::Acquire) != self.rsp_cons {
            return true;
        }
        // Relaxed: ordered before the re-read by the fence below.
        self.mem.store_u32(
            SRING_RSP_EVENT,
            self.rsp_cons.wrapping_add(1),
            Ordering::Relaxed,
        );
        // Store-load barrier: closes the race with the back-end's
        // publish_responses (it stores rsp_prod then reads rsp_event).
        self.mem.full_fence();
        self.mem.load_u32(SRING_RSP_PROD, Ordering::Acquire) != self.rsp_cons
    }

    /// Gives the mapping back.
    pub fn into_mem(self) -> M {
        self.mem
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::abi::{
        RequestBody, Segment, BLKIF_OP_DISCARD, BLKIF_OP_INDIRECT, BLKIF_OP_READ, BLKIF_OP_WRITE,
        BLKIF_RSP_ERROR, BLKIF_RSP_OKAY,
    };

    const ABIS: [Abi; 2] = [Abi::X86_32, Abi::X86_64];

    /// A request with `nr_segments` anywhere in 0..=11, each of its
    /// segments filled (distinct grants), and a non-zero handle: every
    /// field must survive a round trip whatever it says. (Segments past
    /// `nr_segments` are not part of a request: the back ring never reads
    /// them.)
    fn rw(id: u64, op: u8) -> BlkifRequest {
        let n = (id % 12) as usize;
        let seg: alloc::vec::Vec<Segment> = (0..n as u32)
            .map(|i| Segment::whole_page((id as u32).wrapping_mul(31).wrapping_add(i)))
            .collect();
        let mut r = BlkifRequest::rw(op, id, id.wrapping_mul(8), &seg);
        if let RequestBody::Rw { handle, .. } = &mut r.body {
            *handle = 0x300;
        }
        r
    }

    /// Pushes `request(0..n)`, each of which must fit, and publishes them:
    /// the `req_prod` the back-end then sees.
    fn push_and_publish(front: &mut FrontRing, back: &BackRing, n: u64) -> u32 {
        for i in 0..n {
            assert!(front.push_request(&request(i)), "request {i} fits");
        }
        front.publish_requests();
        back.snapshot_req_prod().unwrap()
    }

    fn request(i: u64) -> BlkifRequest {
        match i % 4 {
            0 | 1 => rw(i, (i % 2) as u8),
            2 => BlkifRequest {
                operation: BLKIF_OP_DISCARD,
                id: i,
                body: RequestBody::Discard {
                    flag: 0,
                    handle: 0x300,
                    sector_number: i << 20,
                    nr_sectors: i + 1,
                },
            },
            _ => BlkifRequest {
                operation: BLKIF_OP_INDIRECT,
                id: i,
                body: RequestBody::Indirect {
                    indirect_op: BLKIF_OP_WRITE,
                    nr_segments: (i % 300) as u16,
                    handle: 0x300,
                    sector_number: i,
                    indirect_grefs: [i as u32; 8],
                },
            },
        }
    }

    fn response_for(req: &BlkifRequest) -> BlkifResponse {
        BlkifResponse {
            id: req.id,
            operation: req.operation,
            status: if req.id % 3 == 0 {
                BLKIF_RSP_ERROR
            } else {
                BLKIF_RSP_OKAY
            },
        }
    }

    /// `pages` fresh zeroed pages (leaked: tests only).
    fn pages_mem(pages: usize) -> SharedMem {
        SharedMem::leak_pair(pages * PAGE_SIZE).unwrap().0
    }

    /// A front ring and a back ring over the same fresh pages.
    fn pair(abi: Abi, pages: u32) -> (FrontRing, BackRing) {
        let (f, b) = SharedMem::leak_pair(pages as usize * PAGE_SIZE).unwrap();
        let front = FrontRing::init(f, abi, pages).unwrap();
        let back = BackRing::new(b, abi, pages).unwrap();
        (front, back)
    }

    /// Serves everything the front published; returns how many.
    fn serve_all(back: &mut BackRing) -> u32 {
        let prod = back.snapshot_req_prod().unwrap();
        let mut n = 0;
        while let Some(req) = back.take_request(prod) {
            back.push_response(&response_for(&req));
            n += 1;
        }
        back.publish_responses();
        n
    }

    #[test]
    fn geometry() {
        for abi in ABIS {
            for pages in [1, 2, 4, 8, 16, 32] {
                let b = BackRing::new(pages_mem(32), abi, pages).unwrap();
                assert_eq!(b.size(), abi.ring_size(pages).unwrap());
                assert_eq!(b.abi(), abi);
                assert_eq!((b.req_cons(), b.rsp_prod_pvt()), (0, 0));
            }
            for pages in [0, 3, 33, 64] {
                assert_eq!(
                    BackRing::new(pages_mem(32), abi, pages).unwrap_err(),
                    RingError::TooSmall
                );
            }
        }
        assert_eq!(
            BackRing::new(pages_mem(1), Abi::X86_64, 2).unwrap_err(),
            RingError::TooSmall
        );
        assert_eq!(
            FrontRing::init(pages_mem(1), Abi::X86_64, 2).unwrap_err(),
            RingError::TooSmall
        );
    }

    #[test]
    fn round_trip() {
        for abi in ABIS {
            for pages in [1, 2, 32] {
                let (mut front, mut back) = pair(abi, pages);
                let size = front.size();
                // Three laps around the ring, in batches of varying size.
                let total = 3 * u64::from(size) + 5;
                let mut sent = 0u64;
                let mut received = 0u64;
                let mut batch = 1u64;
                while received < total {
                    let mut pushed = alloc::vec::Vec::new();
                    while sent < total && (pushed.len() as u64) < batch {
                        let r = request(sent);
                        if !front.push_request(&r) {
                            break;
                        }
                        pushed.push(r);
                        sent += 1;
                    }
                    front.publish_requests();
                    let prod = back.snapshot_req_prod().unwrap();
                    for want in &pushed {
                        let got = back.take_request(prod).unwrap();
                        assert_eq!(&got, want, "{abi:?} {pages}");
                        back.push_response(&response_for(&got));
                    }
                    assert_eq!(back.take_request(prod), None);
                    back.publish_responses();
                    for want in &pushed {
                        assert_eq!(front.take_response().unwrap(), Some(response_for(want)));
                        received += 1;
                    }
                    assert_eq!(front.take_response().unwrap(), None);
                    batch = batch * 3 % u64::from(size) + 1;
                }
                assert_eq!(front.free_slots(), size);
            }
        }
    }

    /// Start every index just below u32::MAX: the ring must serve across
    /// the wrap exactly as elsewhere.
    #[test]
    fn index_wraparound() {
        for abi in ABIS {
            let start = u32::MAX - 4;
            let (f, b) = SharedMem::leak_pair(PAGE_SIZE).unwrap();
            let mut front = FrontRing::init_at(f, abi, 1, start).unwrap();
            // The back ring attaches where the front-end started.
            let mut back = BackRing::new(b, abi, 1).unwrap();
            assert_eq!((back.req_cons(), back.rsp_prod_pvt()), (start, start));
            let size = front.size();
            for i in 0..u64::from(size) {
                assert!(front.push_request(&request(i)));
            }
            assert!(!front.push_request(&request(99)), "full");
            assert_eq!(front.free_slots(), 0);
            front.publish_requests();
            assert_eq!(serve_all(&mut back), size);
            assert_eq!(back.req_cons(), start.wrapping_add(size));
            for i in 0..u64::from(size) {
                assert_eq!(
                    front.take_response().unwrap(),
                    Some(response_for(&request(i)))
                );
            }
            assert_eq!(front.take_response().unwrap(), None);
            assert_eq!(front.rsp_cons(), start.wrapping_add(size));
        }
    }

    #[test]
    fn impossible_producer_refused() {
        for abi in ABIS {
            let (mut front, mut back) = pair(abi, 1);
            // Two requests in flight, answered later: rsp_prod_pvt = 0.
            let prod = push_and_publish(&mut front, &back, 2);
            assert!(back.take_request(prod).is_some());
            assert!(back.take_request(prod).is_some());

            let bad = back.rsp_prod_pvt().wrapping_add(back.size() + 1);
            front.set_req_prod_raw(bad);
            assert_eq!(
                back.snapshot_req_prod(),
                Err(RingError::BadProducer {
                    req_prod: bad,
                    req_cons: 2,
                    rsp_prod_pvt: 0
                })
            );
            // Nothing is taken, whatever the caller passes.
            assert_eq!(back.take_request(bad), None);
            assert_eq!(back.req_cons(), 2);
            assert!(back.final_check_for_requests().is_err());

            // A producer that moved back behind req_cons is refused too.
            front.set_req_prod_raw(1);
            assert!(back.snapshot_req_prod().is_err());
            assert_eq!(back.take_request(1), None);
            front.set_req_prod_raw(u32::MAX);
            assert!(back.snapshot_req_prod().is_err());
            assert_eq!(back.take_request(u32::MAX), None);
            assert_eq!(back.req_cons(), 2);
        }
    }

    #[test]
    fn exactly_full_ring_accepted() {
        for abi in ABIS {
            let (mut front, mut back) = pair(abi, 2);
            let size = back.size();
            // Some history first so the indices are not zero.
            push_and_publish(&mut front, &back, 7);
            assert_eq!(serve_all(&mut back), 7);
            while front.take_response().unwrap().is_some() {}

            let prod = push_and_publish(&mut front, &back, u64::from(size));
            assert_eq!(prod.wrapping_sub(back.rsp_prod_pvt()), size);
            // Take all but answer none: the producer stays valid at +size.
            for i in 0..u64::from(size) {
                assert_eq!(back.take_request(prod), Some(request(i)));
            }
            assert_eq!(back.take_request(prod), None);
            assert_eq!(back.snapshot_req_prod(), Ok(prod));
            // One more than the ring holds is not.
            front.set_req_prod_raw(prod.wrapping_add(1));
            assert!(back.snapshot_req_prod().is_err());
            front.set_req_prod_raw(prod);
            for i in 0..u64::from(size) {
                back.push_response(&response_for(&request(i)));
            }
            back.publish_responses();
            for i in 0..u64::from(size) {
                assert_eq!(
                    front.take_response().unwrap(),
                    Some(response_for(&request(i)))
                );
            }
        }
    }

    #[test]
    fn notification_follows_rsp_event() {
        for abi in ABIS {
            let (mut front, mut back) = pair(abi, 1);
            let prod = push_and_publish(&mut front, &back, 4);
            let reqs: alloc::vec::Vec<_> =
                core::iter::from_fn(|| back.take_request(prod)).collect();
            assert_eq!(reqs.len(), 4);

            // rsp_event = 1 after init: the first response crosses it.
            back.push_response(&response_for(&reqs[0]));
            assert!(back.publish_responses(), "front asked at index 1");

            // The front has not re-armed (rsp_event still 1): no event.
            back.push_response(&response_for(&reqs[1]));
            assert!(!back.publish_responses(), "front did not ask");
            // Nothing new published: no event either.
            assert!(!back.publish_responses());

            // The front consumes and re-arms: rsp_event = rsp_cons + 1 = 3.
            assert!(front.take_response().unwrap().is_some());
            assert!(front.take_response().unwrap().is_some());
            assert!(!front.final_check_for_responses());
            let watch = &front.mem;
            assert_eq!(watch.load_u32(SRING_RSP_EVENT, Ordering::Relaxed), 3);
            // Event far ahead (as a front-end batching completions would
            // set): publishing index 3 only does not cross it.
            watch.store_u32(SRING_RSP_EVENT, 4, Ordering::Relaxed);
            back.push_response(&response_for(&reqs[2]));
            assert!(!back.publish_responses());
            back.push_response(&response_for(&reqs[3]));
            assert!(back.publish_responses(), "crosses rsp_event = 4");
            assert!(front.final_check_for_responses());
        }
    }

    #[test]
    fn front_notify_follows_req_event() {
        let (mut front, mut back) = pair(Abi::X86_64, 1);
        assert!(front.push_request(&request(0)));
        assert!(front.publish_requests(), "req_event = 1 after init");
        assert!(front.push_request(&request(1)));
        assert!(!front.publish_requests(), "back-end did not re-arm");
        assert_eq!(serve_all(&mut back), 2);
        assert_eq!(back.final_check_for_requests(), Ok(false));
        assert!(front.push_request(&request(2)));
        assert!(front.publish_requests(), "re-armed at req_cons + 1");
    }

    #[test]
    fn final_check_catches_late_request() {
        for abi in ABIS {
            let (mut front, mut back) = pair(abi, 1);
            assert!(front.push_request(&request(0)));
            front.publish_requests();
            assert_eq!(serve_all(&mut back), 1);

            // Work still pending: final check says so without arming.
            assert!(front.push_request(&request(1)));
            assert!(!front.publish_requests(), "req_event still 1");
            assert_eq!(back.final_check_for_requests(), Ok(true));
            assert_eq!(serve_all(&mut back), 1);

            // Idle: arms req_event = req_cons + 1.
            assert_eq!(back.final_check_for_requests(), Ok(false));
            let req_event = front.mem.load_u32(SRING_REQ_EVENT, Ordering::Relaxed);
            assert_eq!(req_event, 3);

            // A request produced between the first check and the re-read
            // (before req_event is armed): the re-read catches it.
            let caught = back.final_check_inner(|| {
                assert!(front.push_request(&request(2)));
                front.publish_requests();
            });
            assert_eq!(caught, Ok(true));
            let prod = back.snapshot_req_prod().unwrap();
            assert_eq!(back.take_request(prod), Some(request(2)));
        }
    }

    #[test]
    fn response_zeroes_padding_of_dirty_slot() {
        for abi in ABIS {
            let (mut front, mut back) = pair(abi, 1);
            assert!(front.push_request(&rw(7, BLKIF_OP_READ)));
            front.publish_requests();
            let prod = back.snapshot_req_prod().unwrap();
            let req = back.take_request(prod).unwrap();
            // The guest dirties the whole slot after we copied it.
            front.write_raw_slot(0, &[0xff; MAX_SLOT_SIZE]);
            let rsp = BlkifResponse {
                id: req.id,
                operation: req.operation,
                status: BLKIF_RSP_OKAY,
            };
            back.push_response(&rsp);
            back.publish_responses();
            let mut slot = [0u8; MAX_SLOT_SIZE];
            front.mem.read(SRING_HEADER_SIZE, &mut slot);
            let n = abi.response_size();
            let mut want = [0u8; MAX_SLOT_SIZE];
            abi.encode_response(&rsp, &mut want[..n]);
            assert_eq!(&slot[..n], &want[..n]);
            assert_eq!(slot[9], 0, "padding after operation");
            assert!(slot[12..n].iter().all(|&b| b == 0), "tail padding");
            // The rest of the entry is left alone.
            assert!(slot[n..abi.entry_size()].iter().all(|&b| b == 0xff));
            assert_eq!(front.take_response().unwrap(), Some(rsp));
        }
    }

    #[test]
    fn request_copied_once() {
        for abi in ABIS {
            let (mut front, mut back) = pair(abi, 1);
            let orig = rw(5, BLKIF_OP_WRITE);
            assert!(front.push_request(&orig));
            front.publish_requests();
            let prod = back.snapshot_req_prod().unwrap();
            let got = back.take_request(prod).unwrap();
            // The guest rewrites the slot after it was taken.
            front.write_raw_slot(0, &[0xab; MAX_SLOT_SIZE]);
            assert_eq!(got, orig);
            // And the ring does not look at it again.
            assert_eq!(back.take_request(prod), None);
        }
    }

    /// Only the bytes a request uses are taken: whatever the front-end
    /// left in the rest of its slot (the segments of an earlier, longer
    /// request) never reaches the back-end.
    #[test]
    fn unused_slot_bytes_not_taken() {
        for abi in ABIS {
            let (mut front, mut back) = pair(abi, 1);
            let want = rw(3, BLKIF_OP_WRITE);
            let mut b = [0u8; MAX_SLOT_SIZE];
            let n = abi.request_size();
            abi.encode_request(&want, &mut b[..n]);
            let used = abi.request_used_size(&b[..abi.request_head_size()]);
            assert!(used < n);
            b[used..n].fill(0xab);
            front.write_raw_slot(0, &b[..n]);
            front.set_req_prod_raw(1);
            let prod = back.snapshot_req_prod().unwrap();
            assert_eq!(back.take_request(prod), Some(want));
        }
    }

    #[test]
    fn hostile_slot_bytes_decode() {
        // Arbitrary bytes in every slot are taken and decoded, never panic.
        for abi in ABIS {
            let (mut front, mut back) = pair(abi, 1);
            let size = front.size();
            for i in 0..size {
                let mut b = [0u8; MAX_SLOT_SIZE];
                for (j, x) in b.iter_mut().enumerate() {
                    *x = (i as u8).wrapping_mul(71) ^ (j as u8).wrapping_mul(13);
                }
                front.write_raw_slot(i, &b);
            }
            front.set_req_prod_raw(size);
            let prod = back.snapshot_req_prod().unwrap();
            let mut n = 0;
            while back.take_request(prod).is_some() {
                n += 1;
            }
            assert_eq!(n, size);
        }
    }

    /// Issue 13, finding 3: the front ring bounds what it takes by what it
    /// can be owed. A back-end that moves `rsp_prod` backwards (seen as
    /// about 2^32 responses), publishes more responses than requests were
    /// made visible, or more than the ring holds, is refused at once,
    /// nothing consumed; a loop over `take_response` ends.
    #[test]
    fn impossible_rsp_prod_refused_by_the_front_ring() {
        for abi in ABIS {
            let (mut front, mut back) = pair(abi, 1);
            let size = front.size();
            for i in 0..3 {
                assert!(front.push_request(&request(i)));
            }
            front.publish_requests();
            assert_eq!(serve_all(&mut back), 3);
            assert!(front.take_response().unwrap().is_some());
            let bad = |front: &mut FrontRing, rsp_prod: u32| {
                front
                    .mem
                    .store_u32(SRING_RSP_PROD, rsp_prod, Ordering::Release);
                let before = front.rsp_cons();
                let got = front.take_response();
                assert_eq!(front.rsp_cons(), before, "nothing consumed");
                got
            };
            // Backwards: rsp_prod 0 with rsp_cons 1 reads as 2^32 - 1.
            assert_eq!(
                bad(&mut front, 0),
                Err(RingError::BadResponseProducer {
                    rsp_prod: 0,
                    rsp_cons: 1,
                    owed: 2
                })
            );
            // One more response than requests made visible.
            assert!(bad(&mut front, 4).is_err());
            // More than the ring holds.
            assert!(bad(&mut front, size + 2).is_err());
            // The real value is taken again, and no more.
            front.mem.store_u32(SRING_RSP_PROD, 3, Ordering::Release);
            let mut n = 0;
            while let Some(r) = front.take_response().unwrap() {
                assert_eq!(r, response_for(&request(n + 1)));
                n += 1;
            }
            assert_eq!(n, 2);
            assert_eq!(front.take_response(), Ok(None));
            assert!(bad(&mut front, 4).is_err(), "nothing owed any more");
            // A hostile req_prod of its own (beyond a ring ahead) does not
            // raise what the front-end is owed.
            front.set_req_prod_raw(3 + size + 1);
            assert!(bad(&mut front, 4).is_err());
            front.set_req_prod_raw(5);
            front.mem.store_u32(SRING_RSP_PROD, 5, Ordering::Release);
            assert!(front.take_response().unwrap().is_some());
        }
    }

    /// Issue 13, finding 9: a ring a front-end starts near 2^32 is served
    /// across the wrap through several rounds, the notifications included.
    #[test]
    fn rings_started_anywhere_wrap() {
        for start in [u32::MAX - 40, u32::MAX, 1 << 31, 7] {
            let (f, b) = SharedMem::leak_pair(PAGE_SIZE).unwrap();
            let mut front = FrontRing::init_at(f, Abi::X86_64, 1, start).unwrap();
            let mut back = BackRing::new(b, Abi::X86_64, 1).unwrap();
            let mut id = 0;
            for _ in 0..5 {
                for _ in 0..20 {
                    assert!(front.push_request(&request(id)));
                    id += 1;
                }
                assert!(front.publish_requests() || id > 20, "first kick asked");
                serve_all(&mut back);
                assert!(!back.final_check_for_requests().unwrap());
                let mut got = 0;
                while front.take_response().unwrap().is_some() {
                    got += 1;
                }
                assert_eq!(got, 20, "start {start}");
                assert!(!front.final_check_for_responses());
            }
            assert_eq!(front.rsp_cons(), start.wrapping_add(100));
        }
    }

    /// Issue 16: a back-end that takes over a ring resumes at the
    /// consumer index its journal kept and at the ring's `rsp_prod`;
    /// requests consumed but never answered are answered at `rsp_prod`,
    /// and the next request is read where consumption stopped.
    #[test]
    fn attach_resumes_at_the_given_indices() {
        for abi in ABIS {
            let (f, b) = SharedMem::leak_pair(PAGE_SIZE).unwrap();
            let mut front = FrontRing::init_at(f, abi, 1, u32::MAX - 2).unwrap();
            let mut old = BackRing::new(b, abi, 1).unwrap();
            for i in 0..5 {
                assert!(front.push_request(&request(i)));
            }
            front.publish_requests();
            let prod = old.snapshot_req_prod().unwrap();
            // Three consumed: the first answered and published, the third
            // answered but never published; then the back-end goes away.
            let raws: alloc::vec::Vec<_> = (0..3).map(|_| old.take_raw(prod).unwrap()).collect();
            assert_eq!(raws[1].index, (u32::MAX - 2).wrapping_add(1));
            assert_eq!(raws[2].decode(abi), request(2));
            old.push_response(&response_for(&request(0)));
            old.publish_responses();
            old.push_response(&response_for(&request(2)));
            let consumed = old.req_cons();
            let mem = old.into_mem();
            let mut new = BackRing::attach(mem, abi, 1, consumed).unwrap();
            assert_eq!(new.req_cons(), consumed);
            assert_eq!(new.rsp_prod_pvt(), (u32::MAX - 2).wrapping_add(1));
            // Requests 1 and 2 are answered again, in any order, exactly
            // once each; 3 and 4 are read from the ring.
            new.push_response(&response_for(&request(2)));
            new.push_response(&response_for(&request(1)));
            let prod = new.snapshot_req_prod().unwrap();
            assert_eq!(new.take_request(prod), Some(request(3)));
            assert_eq!(new.take_request(prod), Some(request(4)));
            assert_eq!(new.take_request(prod), None);
            new.push_response(&response_for(&request(3)));
            new.push_response(&response_for(&request(4)));
            new.publish_responses();
            let got: alloc::vec::Vec<_> =
                core::iter::from_fn(|| front.take_response().unwrap()).collect();
            let ids: alloc::vec::Vec<_> = got.iter().map(|r| r.id).collect();
            assert_eq!(ids, [0, 2, 1, 3, 4]);
        }
    }

    /// What a hostile front-end (or a stale journal) can do to the
    /// indices a back-end resumes at is refused, the mapping handed back.
    #[test]
    fn attach_refuses_impossible_indices() {
        let abi = Abi::X86_64;
        let (f, b) = SharedMem::leak_pair(PAGE_SIZE).unwrap();
        let mut front = FrontRing::init(f, abi, 1).unwrap();
        for i in 0..4 {
            assert!(front.push_request(&request(i)));
        }
        front.publish_requests();
        let size = front.size();
        // More consumed-and-unanswered than the ring holds.
        let (e, b) = BackRing::attach(b, abi, 1, size + 1).unwrap_err();
        assert_eq!(
            e,
            RingError::BadResume {
                req_cons: size + 1,
                rsp_prod: 0
            }
        );
        // Behind rsp_prod.
        let (e, b) = BackRing::attach(b, abi, 1, u32::MAX).unwrap_err();
        assert!(matches!(e, RingError::BadResume { .. }));
        // Ahead of req_prod: the front-end never produced that far.
        let (e, b) = BackRing::attach(b, abi, 1, 5).unwrap_err();
        assert!(matches!(e, RingError::BadProducer { .. }));
        // A req_prod beyond the ring.
        front.set_req_prod_raw(size + 3);
        let (e, b) = BackRing::attach(b, abi, 1, 2).unwrap_err();
        assert!(matches!(e, RingError::BadProducer { .. }));
        front.set_req_prod_raw(4);
        // A short mapping.
        let (short, _) = SharedMem::leak_pair(64).unwrap();
        let (e, _) = BackRing::attach(short, abi, 1, 0).unwrap_err();
        assert_eq!(e, RingError::TooSmall);
        // Within bounds it attaches.
        let ring = BackRing::attach(b, abi, 1, 4).unwrap();
        assert_eq!((ring.req_cons(), ring.rsp_prod_pvt()), (4, 0));
    }

    #[test]
    #[cfg(not(debug_assertions))]
    fn extra_response_ignored_in_release() {
        let (_front, mut back) = pair(Abi::X86_64, 1);
        back.push_response(&BlkifResponse {
            id: 1,
            operation: 0,
            status: 0,
        });
        assert_eq!(back.rsp_prod_pvt(), 0);
    }

    #[test]
    #[cfg(debug_assertions)]
    #[should_panic(expected = "without an unanswered request")]
    fn extra_response_caught_in_debug() {
        let (_front, mut back) = pair(Abi::X86_64, 1);
        back.push_response(&BlkifResponse {
            id: 1,
            operation: 0,
            status: 0,
        });
    }
}
