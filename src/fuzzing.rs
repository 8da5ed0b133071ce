//! Fuzz bodies, shared by the cargo-fuzz targets of `fuzz/` and by
//! `tests/fuzz_seeds.rs`, which runs them over a fixed set of inputs on every
//! `cargo test`.
//!
//! - [`fuzz_ring`] plays a hostile front-end against a real
//!   [`Instance`] over a deterministic in-memory platform: it writes
//!   arbitrary bytes into the slots of the shared ring of `io/ring.h`,
//!   publishes any `req_prod`, kicks, completes store I/O in any order with
//!   any result, injects platform failures and moves the front-end through
//!   the states of `io/xenbus.h`.
//! - [`fuzz_request`] decodes arbitrary slot bytes as `io/blkif.h` requests
//!   of both ABIs and validates them against arbitrary limits.
//! - [`fuzz_xenstore`] feeds arbitrary front-end transport parameters
//!   (`io/blkif.h`, "Front-end Request Transport Parameters") to
//!   [`connect::read_frontend`].
//!
//! Each body asserts its invariants; a panic is a finding. This is test
//! support, not a platform: it allocates freely and is hidden from the
//! documentation. It is `no_std` like the rest of the library so that the
//! targets build with `default-features = false`.

#![doc(hidden)]

use alloc::collections::{BTreeMap, BTreeSet};
use alloc::string::String;
use alloc::vec;
use alloc::vec::Vec;

use crate::abi::{
    Abi, BlkifRequest, RequestBody, Segment, BLKIF_MAX_SEGMENTS_PER_REQUEST, BLKIF_OP_DISCARD,
    BLKIF_OP_FLUSH_DISKCACHE, BLKIF_OP_INDIRECT, BLKIF_OP_READ, BLKIF_OP_WRITE,
    BLKIF_OP_WRITE_BARRIER, BLKIF_RSP_EOPNOTSUPP, BLKIF_RSP_ERROR, BLKIF_RSP_OKAY,
    MAX_RING_PAGE_ORDER, MAX_SLOT_SIZE, SECTORS_PER_PAGE, SECTOR_SHIFT, XEN_IO_PROTO_ABI_ARM,
    XEN_IO_PROTO_ABI_X86_32, XEN_IO_PROTO_ABI_X86_64,
};
use crate::coalesce;
use crate::connect::{self, ConnectError, XS_TXN_RETRIES};
use crate::host::{
    Deferred, DomId, EventChannel, EvtchnError, EvtchnPort, GrantError, GrantHandle, GrantMapOp,
    GrantRef, GrantUnmapOp, Grants, Host, IoError, IoOp, IoTag, IoVec, MediumInfo, OpenError,
    OpenParams, QueueId, Store, XenStore, XenbusState, XsError, XsTxn, PAGE_SIZE,
};
use crate::instance::Instance;
use crate::request::{self, Limits, Op};
use crate::ring::FrontRing;
use crate::shmem::SharedMem;
use crate::stats::{Stat, Tunable, Tunables};

// ---------------------------------------------------------------------------
// Reading fuzz input
// ---------------------------------------------------------------------------

/// A cursor over fuzz input; reads past the end give zeros.
struct Input<'a> {
    data: &'a [u8],
}

impl<'a> Input<'a> {
    fn new(data: &'a [u8]) -> Self {
        Input { data }
    }

    fn is_empty(&self) -> bool {
        self.data.is_empty()
    }

    fn u8(&mut self) -> u8 {
        match self.data.split_first() {
            Some((&b, rest)) => {
                self.data = rest;
                b
            }
            None => 0,
        }
    }

    fn bytes(&mut self, n: usize) -> &'a [u8] {
        let n = n.min(self.data.len());
        let (head, rest) = self.data.split_at(n);
        self.data = rest;
        head
    }

    fn le<const N: usize>(&mut self) -> [u8; N] {
        let mut out = [0u8; N];
        let b = self.bytes(N);
        out[..b.len()].copy_from_slice(b);
        out
    }

    fn u16(&mut self) -> u16 {
        u16::from_le_bytes(self.le())
    }

    fn u32(&mut self) -> u32 {
        u32::from_le_bytes(self.le())
    }

    fn u64(&mut self) -> u64 {
        u64::from_le_bytes(self.le())
    }
}

// ---------------------------------------------------------------------------
// A XenStore over a map
// ---------------------------------------------------------------------------

/// XenStore as a map of raw values; transactions apply at once, commits
/// can be made to conflict, and one read can be made to fail.
#[derive(Default)]
struct MapStore {
    nodes: BTreeMap<String, Vec<u8>>,
    /// Commits that still end with [`XsError::Again`].
    conflicts: u32,
    /// Reads done so far.
    reads: u32,
    /// The read (by number, from 1) that fails, if any.
    fail_read: Option<u32>,
}

impl MapStore {
    fn set(&mut self, path: &str, value: &[u8]) {
        self.nodes.insert(String::from(path), Vec::from(value));
    }

    fn get(&self, path: &str) -> Option<&[u8]> {
        self.nodes.get(path).map(Vec::as_slice)
    }

    fn remove(&mut self, path: &str) {
        self.nodes.remove(path);
    }
}

impl XenStore for MapStore {
    fn xs_read(&mut self, _txn: XsTxn, path: &str, buf: &mut [u8]) -> Result<usize, XsError> {
        self.reads += 1;
        if self.fail_read == Some(self.reads) {
            return Err(XsError::Other(5));
        }
        let v = self.nodes.get(path).ok_or(XsError::NotFound)?;
        let out = buf.get_mut(..v.len()).ok_or(XsError::TooLong)?;
        out.copy_from_slice(v);
        Ok(v.len())
    }

    fn xs_write(&mut self, _txn: XsTxn, path: &str, value: &str) -> Result<(), XsError> {
        self.set(path, value.as_bytes());
        Ok(())
    }

    fn xs_remove(&mut self, _txn: XsTxn, path: &str) -> Result<(), XsError> {
        let prefix = alloc::format!("{path}/");
        self.nodes
            .retain(|k, _| k.as_str() != path && !k.starts_with(prefix.as_str()));
        Ok(())
    }

    fn xs_transaction_start(&mut self) -> Result<XsTxn, XsError> {
        Ok(XsTxn(1))
    }

    fn xs_transaction_end(&mut self, _txn: XsTxn, commit: bool) -> Result<(), XsError> {
        if commit && self.conflicts > 0 {
            self.conflicts -= 1;
            return Err(XsError::Again);
        }
        Ok(())
    }
}

// ---------------------------------------------------------------------------
// The platform of fuzz_ring
// ---------------------------------------------------------------------------

const FRONT_DOM: DomId = 1;
const EVTCHN_PORT: EvtchnPort = 7;
const BE_PATH: &str = "/local/domain/0/backend/vbd/1/51712";
const FE_PATH: &str = "/local/domain/1/device/vbd/51712";
/// Granted data pages: grant references `DATA_GREF_BASE..+DATA_PAGES`.
const DATA_PAGES: usize = 16;
const DATA_GREF_BASE: GrantRef = 0x100;
/// The ring's grant references: `RING_GREF_BASE + page`.
const RING_GREF_BASE: GrantRef = 0x800;
/// The largest ring the fuzzer builds, as log2(pages).
const MAX_FUZZ_ORDER: u32 = 2;
const RING_BYTES: usize = PAGE_SIZE << MAX_FUZZ_ORDER;
/// Bound on the actions of one input, and on the steps of settling.
const MAX_ACTIONS: usize = 4096;
const MAX_SETTLE_STEPS: usize = 1 << 16;

/// The shared memory of the fuzzed ring, reused across inputs.
///
/// Shared memory outside a platform can only be had from
/// [`SharedMem::leak_pair`], which never frees; a fuzzer running millions
/// of inputs keeps one of these (e.g. in a `static Mutex`) and passes it to
/// [`fuzz_ring_in`]. It is zeroed at the start of every input.
#[derive(Debug)]
pub struct RingMemory {
    pair: Option<(SharedMem, SharedMem)>,
}

impl RingMemory {
    /// Leaks the largest ring the fuzzer builds (4 pages). `None` when
    /// the allocation fails.
    pub fn new() -> Option<RingMemory> {
        Some(RingMemory {
            pair: Some(SharedMem::leak_pair(RING_BYTES)?),
        })
    }

    fn take(&mut self) -> (SharedMem, SharedMem) {
        match self.pair.take() {
            Some(p) => p,
            // A previous input panicked while holding the memory.
            None => SharedMem::leak_pair(RING_BYTES).expect("ring memory"),
        }
    }
}

#[derive(Clone, Copy, Debug)]
struct Mapping {
    gref: GrantRef,
    readonly: bool,
    handle: u32,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum PendingKind {
    Read,
    Write,
    Flush,
    Discard(u64),
}

#[derive(Debug)]
struct Pending {
    tag: IoTag,
    kind: PendingKind,
    offset: u64,
    iov: Vec<IoVec>,
}

/// A platform that checks every call the core makes against what it was
/// granted: a violation of the contract of [`crate::host`] panics.
struct FuzzHost {
    xs: MapStore,
    /// Connections made: writes of Connected to the back-end's `state`
    /// outside a transaction (only `Instance::connect` does that).
    connects: u64,
    /// Fatal errors reported (writes to an `error` node).
    fatals: u64,
    root: bool,
    /// Guest data pages, `DATA_PAGES * PAGE_SIZE` bytes.
    guest: Vec<u8>,
    /// Bit `i`: data page `i` is granted read-only.
    readonly_grants: u16,
    ring_pages: u32,
    /// The back view while the ring is not mapped.
    ring_back: Option<SharedMem>,
    ring_ptr: *mut u8,
    window: Option<Vec<Option<Mapping>>>,
    next_handle: u32,
    live_maps: usize,
    bound: bool,
    notifications: u64,
    submits: u64,
    run_scheduled: bool,
    medium: Vec<u8>,
    info: MediumInfo,
    store_open: bool,
    pending: Vec<Pending>,
    fail_submits: u32,
    fail_maps: u32,
    fail_ring_map: bool,
    fail_bind: bool,
    fail_window: bool,
    fail_open: bool,
}

fn data_page(gref: GrantRef) -> Option<usize> {
    let i = gref.checked_sub(DATA_GREF_BASE)? as usize;
    (i < DATA_PAGES).then_some(i)
}

impl FuzzHost {
    fn ring_mapped(&self) -> bool {
        self.ring_back.is_none()
    }

    /// Checks one I/O's buffer: inside the window, every page mapped (and
    /// writable when the store writes into it), sector-granular.
    fn check_iov(&self, iov: &[IoVec], store_writes_guest: bool) -> u64 {
        let window = self.window.as_ref().expect("I/O without a window");
        assert!(!iov.is_empty(), "data I/O without a buffer");
        let mut total = 0u64;
        for v in iov {
            assert!(v.len > 0, "empty iovec");
            assert!(
                v.window_offset % 512 == 0 && v.len % 512 == 0,
                "iovec not sector-granular: {v:?}"
            );
            let end = v.window_offset.checked_add(v.len).expect("iovec overflow");
            assert!(end <= window.len() * PAGE_SIZE, "iovec outside the window");
            let pages = &window[v.window_offset / PAGE_SIZE..end.div_ceil(PAGE_SIZE)];
            for m in pages {
                let m = m.expect("I/O over an unmapped window page");
                assert!(
                    !(store_writes_guest && m.readonly),
                    "read into a read-only mapping"
                );
            }
            total += v.len as u64;
        }
        total
    }

    /// Copies between the medium and the guest pages the window maps.
    fn copy(&mut self, iov: &[IoVec], mut medium_off: usize, to_guest: bool) {
        let window = self.window.as_ref().expect("I/O without a window");
        for v in iov {
            let (mut wo, mut left) = (v.window_offset, v.len);
            while left > 0 {
                let in_page = wo % PAGE_SIZE;
                let n = left.min(PAGE_SIZE - in_page);
                let m = window[wo / PAGE_SIZE].expect("I/O over an unmapped window page");
                let g =
                    data_page(m.gref).expect("mapping of a non-data page") * PAGE_SIZE + in_page;
                let guest = &mut self.guest[g..g + n];
                let med = &mut self.medium[medium_off..medium_off + n];
                if to_guest {
                    guest.copy_from_slice(med);
                } else {
                    med.copy_from_slice(guest);
                }
                wo += n;
                left -= n;
                medium_off += n;
            }
        }
    }

    /// Completes pending I/O number `idx`, performing it when `result` is Ok.
    fn complete_at(&mut self, inst: &mut Instance, idx: usize, result: Result<(), IoError>) {
        let p = self.pending.remove(idx);
        if result.is_ok() {
            let off = p.offset as usize;
            match p.kind {
                PendingKind::Read => self.copy(&p.iov, off, true),
                PendingKind::Write => self.copy(&p.iov, off, false),
                PendingKind::Flush => {}
                PendingKind::Discard(len) => self.medium[off..off + len as usize].fill(0),
            }
        }
        inst.complete(self, p.tag, result);
    }
}

impl XenStore for FuzzHost {
    fn xs_read(&mut self, txn: XsTxn, path: &str, buf: &mut [u8]) -> Result<usize, XsError> {
        self.xs.xs_read(txn, path, buf)
    }
    fn xs_write(&mut self, txn: XsTxn, path: &str, value: &str) -> Result<(), XsError> {
        if txn == XsTxn::NONE
            && value == XenbusState::Connected.as_str()
            && path.strip_prefix(BE_PATH) == Some("/state")
        {
            self.connects += 1;
        }
        if path.starts_with("error/") {
            self.fatals += 1;
        }
        self.xs.xs_write(txn, path, value)
    }
    fn xs_remove(&mut self, txn: XsTxn, path: &str) -> Result<(), XsError> {
        self.xs.xs_remove(txn, path)
    }
    fn xs_transaction_start(&mut self) -> Result<XsTxn, XsError> {
        self.xs.xs_transaction_start()
    }
    fn xs_transaction_end(&mut self, txn: XsTxn, commit: bool) -> Result<(), XsError> {
        self.xs.xs_transaction_end(txn, commit)
    }
}

impl Grants for FuzzHost {
    fn window_reserve(&mut self, pages: u32) -> Result<(), GrantError> {
        assert!(self.window.is_none(), "window reserved twice");
        if core::mem::take(&mut self.fail_window) {
            return Err(GrantError::NoSpace);
        }
        self.window = Some(vec![None; pages as usize]);
        Ok(())
    }

    fn window_release(&mut self) {
        let w = self.window.take().expect("window released twice");
        assert!(
            w.iter().all(Option::is_none),
            "window released while mapped"
        );
        assert_eq!(self.live_maps, 0);
    }

    fn map_batch(
        &mut self,
        dom: DomId,
        ops: &[GrantMapOp],
        results: &mut [Result<GrantHandle, GrantError>],
    ) {
        assert_eq!(dom, FRONT_DOM);
        assert_eq!(ops.len(), results.len());
        let window = self.window.as_mut().expect("map_batch without a window");
        for (op, res) in ops.iter().zip(results.iter_mut()) {
            let slot = window
                .get_mut(op.window_page as usize)
                .expect("map outside the window");
            assert!(slot.is_none(), "window page mapped twice");
            *res = if self.fail_maps > 0 {
                self.fail_maps -= 1;
                Err(GrantError::NoSpace)
            } else {
                match data_page(op.gref) {
                    None => Err(GrantError::BadRef),
                    Some(i) if !op.readonly && self.readonly_grants & (1 << i) != 0 => {
                        Err(GrantError::Denied)
                    }
                    Some(_) => {
                        self.next_handle = self.next_handle.wrapping_add(1);
                        *slot = Some(Mapping {
                            gref: op.gref,
                            readonly: op.readonly,
                            handle: self.next_handle,
                        });
                        self.live_maps += 1;
                        Ok(GrantHandle(self.next_handle))
                    }
                }
            };
        }
    }

    fn unmap_batch(&mut self, ops: &[GrantUnmapOp]) {
        let window = self.window.as_mut().expect("unmap_batch without a window");
        for op in ops {
            let slot = window
                .get_mut(op.window_page as usize)
                .expect("unmap outside the window");
            let m = slot.take().expect("unmap of an unmapped page");
            assert_eq!(m.handle, op.handle.0, "unmap with a wrong handle");
            self.live_maps -= 1;
        }
    }

    fn map_ring(
        &mut self,
        _queue: QueueId,
        dom: DomId,
        grefs: &[GrantRef],
    ) -> Result<SharedMem, GrantError> {
        assert_eq!(dom, FRONT_DOM);
        if core::mem::take(&mut self.fail_ring_map) {
            return Err(GrantError::General);
        }
        let expected = (0..self.ring_pages).map(|i| RING_GREF_BASE + i);
        if grefs.len() != self.ring_pages as usize || !grefs.iter().copied().eq(expected) {
            return Err(GrantError::BadRef);
        }
        Ok(self.ring_back.take().expect("ring mapped twice"))
    }

    fn unmap_ring(&mut self, _queue: QueueId, ring: SharedMem) {
        assert!(self.ring_back.is_none(), "ring unmapped twice");
        assert_eq!(ring.as_ptr(), self.ring_ptr, "unmap of a foreign ring");
        self.ring_back = Some(ring);
    }
    fn copy_in(
        &mut self,
        dom: DomId,
        grefs: &[GrantRef],
        out: &mut [u8],
    ) -> Result<(), GrantError> {
        assert_eq!(dom, FRONT_DOM);
        assert!(
            out.len() <= grefs.len() * PAGE_SIZE,
            "copy longer than its grants"
        );
        // Indirect descriptor pages are the guest's data pages (whatever
        // the fuzzer wrote there is what the back-end must survive).
        for (gref, chunk) in grefs.iter().zip(out.chunks_mut(PAGE_SIZE)) {
            let page = data_page(*gref).ok_or(GrantError::BadRef)?;
            let at = page * PAGE_SIZE;
            chunk.copy_from_slice(&self.guest[at..at + chunk.len()]);
        }
        Ok(())
    }
}

impl EventChannel for FuzzHost {
    fn evtchn_bind(
        &mut self,
        _queue: QueueId,
        dom: DomId,
        remote_port: EvtchnPort,
    ) -> Result<(), EvtchnError> {
        assert_eq!(dom, FRONT_DOM);
        assert!(!self.bound, "event channel bound twice");
        if core::mem::take(&mut self.fail_bind) {
            return Err(EvtchnError::General);
        }
        if remote_port != EVTCHN_PORT {
            return Err(EvtchnError::BadPort);
        }
        self.bound = true;
        Ok(())
    }

    fn evtchn_notify(&mut self, _queue: QueueId) {
        assert!(self.bound, "notify on an unbound event channel");
        self.notifications += 1;
    }

    fn evtchn_eoi(&mut self, _queue: QueueId, _delay_ms: u32) {}

    fn evtchn_unbind(&mut self, _queue: QueueId) {
        assert!(self.bound, "unbind of an unbound event channel");
        self.bound = false;
    }
}

impl Deferred for FuzzHost {
    fn now_ms(&self) -> u64 {
        0
    }
    fn schedule_run(&mut self, _queue: QueueId) {
        self.run_scheduled = true;
    }
}

impl Store for FuzzHost {
    fn store_open(&mut self, params: OpenParams<'_>) -> Result<MediumInfo, OpenError> {
        assert!(self.root, "store opened before the root file system");
        assert!(!self.store_open, "store opened twice");
        let _ = params;
        if core::mem::take(&mut self.fail_open) {
            return Err(OpenError::NotFound);
        }
        self.store_open = true;
        Ok(self.info)
    }

    fn store_info(&self) -> MediumInfo {
        self.info
    }

    fn store_submit(&mut self, tag: IoTag, op: IoOp<'_>) -> Result<(), IoError> {
        assert!(self.store_open, "I/O on a closed store");
        assert!(
            self.pending.iter().all(|p| p.tag != tag),
            "tag {tag:?} reused while in flight"
        );
        if self.fail_submits > 0 {
            self.fail_submits -= 1;
            return Err(IoError::Busy);
        }
        let medium = self.medium.len() as u64;
        let (kind, offset, iov, len) = match op {
            IoOp::Read { offset, iov } => {
                (PendingKind::Read, offset, iov, self.check_iov(iov, true))
            }
            IoOp::Write { offset, iov } => {
                assert!(!self.info.read_only, "write to a read-only medium");
                (PendingKind::Write, offset, iov, self.check_iov(iov, false))
            }
            IoOp::Flush => (PendingKind::Flush, 0, &[][..], 0),
            IoOp::Discard { offset, len, .. } => (PendingKind::Discard(len), offset, &[][..], len),
        };
        assert!(offset % 512 == 0, "I/O offset not sector-aligned");
        assert!(
            offset.checked_add(len).is_some_and(|end| end <= medium),
            "I/O outside the medium: {offset} + {len} > {medium}"
        );
        self.submits += 1;
        self.pending.push(Pending {
            tag,
            kind,
            offset,
            iov: Vec::from(iov),
        });
        Ok(())
    }

    fn store_close(&mut self) {
        assert!(self.store_open, "store closed twice");
        assert!(self.pending.is_empty(), "store closed with I/O in flight");
        self.store_open = false;
    }
}

impl Host for FuzzHost {
    fn root_mounted(&self) -> bool {
        self.root
    }
}

// ---------------------------------------------------------------------------
// fuzz_ring: the input format and its builder
// ---------------------------------------------------------------------------

const A_WRITE_SLOT: u8 = 0;
const A_PUSH: u8 = 1;
const A_REQ_PROD: u8 = 2;
const A_KICK: u8 = 3;
const A_COMPLETE_ONE: u8 = 4;
const A_COMPLETE_ALL: u8 = 5;
const A_FRONT_STATE: u8 = 6;
const A_INJECT: u8 = 7;
const A_DEFERRED: u8 = 8;
const A_ROOT_MOUNTED: u8 = 9;
const A_ARM_RSP_EVENT: u8 = 10;
const A_COALESCE: u8 = 11;
const N_ACTIONS: u8 = 12;

/// The fixed header of a [`fuzz_ring`] input: the guest ABI, the ring,
/// the medium and the tunables. Selectors pick from small tables of
/// interesting values (see [`RingConfig::encode`]).
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
    pub max_pgrants: u8,
}

const RPP: [u64; 4] = [256, 1, 3, 16];
const MAX_REQS: [u64; 4] = [1024, 1, 2, 5];
const KVA: [u64; 4] = [0, 11, 16, 40];
const MAX_RS: [u64; 4] = [1 << 20, 45056, 65536, 131072];
const MAX_ORDER: [u64; 4] = [2, 0, 1, 5];
const MAX_PGRANTS: [u64; 4] = [1056, 1, 3, 0];

impl RingConfig {
    /// The six header bytes.
    pub fn encode(&self) -> [u8; 6] {
        let b = |v: bool, bit: u8| u8::from(v) << bit;
        [
            b(self.x86_64, 0)
                | (self.order % 3) << 1
                | b(self.read_only_medium, 3)
                | b(self.can_flush, 4)
                | b(self.sector_4k, 5)
                | b(self.online, 6)
                | b(self.no_coalesce, 7),
            (self.requests_per_pass & 3)
                | (self.max_requests & 3) << 2
                | (self.kva_pages & 3) << 4
                | (self.max_request_size & 3) << 6,
            (self.medium & 63) | b(self.root_later, 6) | b(self.connect_at_attach, 7),
            self.readonly_grants.to_le_bytes()[0],
            self.readonly_grants.to_le_bytes()[1],
            b(self.toolstack_read_only, 0)
                | (self.max_ring_order & 3) << 1
                | b(self.persistent, 3)
                | b(self.can_discard, 4)
                | (self.max_pgrants & 3) << 5,
        ]
    }

    fn decode(r: &mut Input<'_>) -> RingConfig {
        let h: [u8; 6] = r.le();
        let bit = |byte: u8, n: u8| byte & (1 << n) != 0;
        RingConfig {
            x86_64: bit(h[0], 0),
            order: (h[0] >> 1 & 3) % 3,
            read_only_medium: bit(h[0], 3),
            can_flush: bit(h[0], 4),
            sector_4k: bit(h[0], 5),
            online: bit(h[0], 6),
            no_coalesce: bit(h[0], 7),
            requests_per_pass: h[1] & 3,
            max_requests: h[1] >> 2 & 3,
            kva_pages: h[1] >> 4 & 3,
            max_request_size: h[1] >> 6 & 3,
            medium: h[2] & 63,
            root_later: bit(h[2], 6),
            connect_at_attach: bit(h[2], 7),
            readonly_grants: u16::from_le_bytes([h[3], h[4]]),
            toolstack_read_only: bit(h[5], 0),
            max_ring_order: h[5] >> 1 & 3,
            persistent: bit(h[5], 3),
            can_discard: bit(h[5], 4),
            max_pgrants: h[5] >> 5 & 3,
        }
    }
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

impl Outcome {
    fn encode(self) -> u8 {
        match self {
            Outcome::Ok => 0,
            Outcome::Io => 5,
            Outcome::Gone => 6,
            Outcome::NoSpace => 7,
        }
    }

    fn decode(b: u8) -> Result<(), IoError> {
        match b % 8 {
            5 => Err(IoError::Io),
            6 => Err(IoError::Gone),
            7 => Err(IoError::NoSpace),
            _ => Ok(()),
        }
    }
}

/// A platform failure to inject, in [`RingScript`] actions.
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
}

/// One structured request for [`RingScript::push`]: selectors, decoded as
/// [`fuzz_ring`] decodes them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PushReq {
    /// Low 16 bits of the id (the high bits count pushes).
    pub id: u16,
    /// `% 8`: 0-1 read, 2-3 write, 4 flush, 5 barrier, 6 discard or
    /// indirect, 7 the raw operation byte `raw_op`.
    pub op: u8,
    /// The raw operation byte when `op % 8 == 7`.
    pub raw_op: u8,
    /// `nr_segments`: below 208, `% 13`; from 208, as is.
    pub nsegs: u8,
    /// Below 128: sector `8 * sector`; below 192: where the previous push
    /// ended; below 255: `sector - 192` before the medium's end; 255: the
    /// raw `raw_sector`.
    pub sector: u8,
    /// The sector when `sector == 255`.
    pub raw_sector: u64,
    /// Per segment: below 224 data page `% 16`; below 240 a ring page;
    /// below 255 the value itself; 255 a grant reference of 0xdead_beef.
    pub gref: u8,
    /// Per segment: below 64 `(b & 7, b >> 3)`; below 120 `(b & 7, 7)`;
    /// below 128 a `last_sect` beyond the page; else the whole page.
    pub range: u8,
}

/// Builds [`fuzz_ring`] inputs by name, for seeds and corpora.
#[derive(Clone, Debug, Default)]
pub struct RingScript {
    bytes: Vec<u8>,
}

impl RingScript {
    /// Starts an input with `cfg` as its header.
    pub fn new(cfg: &RingConfig) -> RingScript {
        RingScript {
            bytes: Vec::from(cfg.encode()),
        }
    }

    fn op(&mut self, code: u8, args: &[u8]) -> &mut Self {
        self.bytes.push(code);
        self.bytes.extend_from_slice(args);
        self
    }

    /// Writes raw bytes into slot `cursor + rel`; `rel == 0` also advances
    /// the cursor (the next request index).
    pub fn write_slot(&mut self, rel: i8, bytes: &[u8]) -> &mut Self {
        let n = bytes.len().min(MAX_SLOT_SIZE);
        self.op(A_WRITE_SLOT, &[rel as u8, n as u8])
            .op_bytes(&bytes[..n])
    }

    fn op_bytes(&mut self, b: &[u8]) -> &mut Self {
        self.bytes.extend_from_slice(b);
        self
    }

    /// Encodes a structured request at the cursor and advances it.
    pub fn push(&mut self, r: &PushReq) -> &mut Self {
        let [lo, hi] = r.id.to_le_bytes();
        self.op(A_PUSH, &[lo, hi, r.op]);
        if r.op % 8 == 7 {
            self.op_bytes(&[r.raw_op]);
        }
        self.op_bytes(&[r.nsegs, r.sector]);
        if r.sector == 255 {
            self.op_bytes(&r.raw_sector.to_le_bytes());
        }
        let n = if r.nsegs < 208 { r.nsegs % 13 } else { r.nsegs };
        for _ in 0..usize::from(n).min(BLKIF_MAX_SEGMENTS_PER_REQUEST) {
            self.op_bytes(&[r.gref, r.range]);
        }
        self
    }

    /// Publishes `req_prod = cursor`.
    pub fn publish(&mut self) -> &mut Self {
        self.op(A_REQ_PROD, &[0])
    }

    /// Publishes `req_prod = cursor + ahead` (without moving the cursor).
    pub fn req_prod_ahead(&mut self, ahead: u8) -> &mut Self {
        self.op(A_REQ_PROD, &[1, ahead])
    }

    /// Publishes `req_prod = cursor - back`.
    pub fn req_prod_back(&mut self, back: u8) -> &mut Self {
        self.op(A_REQ_PROD, &[2, back])
    }

    /// Publishes any `req_prod`.
    pub fn req_prod_raw(&mut self, v: u32) -> &mut Self {
        let b = v.to_le_bytes();
        self.op(A_REQ_PROD, &[3, b[0], b[1], b[2], b[3]])
    }

    /// The event channel fires: `Instance::run`.
    pub fn kick(&mut self) -> &mut Self {
        self.op(A_KICK, &[])
    }

    /// Completes pending I/O number `which % pending`.
    pub fn complete_one(&mut self, which: u8, how: Outcome) -> &mut Self {
        self.op(A_COMPLETE_ONE, &[which, how.encode()])
    }

    /// Completes every pending I/O (and those they submit), in order.
    pub fn complete_all(&mut self, how: Outcome) -> &mut Self {
        self.op(A_COMPLETE_ALL, &[how.encode()])
    }

    /// Writes the front-end's `state` node and signals the watch: 0..=8 a
    /// XenbusState, 9 a non-number, 10 a number out of the enumeration,
    /// 11 no node.
    pub fn frontend_state(&mut self, v: u8) -> &mut Self {
        self.op(A_FRONT_STATE, &[v])
    }

    /// Injects a platform failure.
    pub fn inject(&mut self, fault: Fault, n: u8) -> &mut Self {
        let k = match fault {
            Fault::Submit => 0,
            Fault::Map => 1,
            Fault::RingMap => 2,
            Fault::Bind => 3,
            Fault::Window => 4,
            Fault::XsConflict => 5,
            Fault::Open => 6,
        };
        self.op(A_INJECT, &[k, n])
    }

    /// Runs the instance if it asked for a deferred run.
    pub fn deferred(&mut self) -> &mut Self {
        self.op(A_DEFERRED, &[])
    }

    /// The root file system becomes mounted.
    pub fn root_mounted(&mut self) -> &mut Self {
        self.op(A_ROOT_MOUNTED, &[])
    }

    /// The front-end re-arms `rsp_event` (`RING_FINAL_CHECK_FOR_RESPONSES`).
    pub fn arm_rsp_event(&mut self) -> &mut Self {
        self.op(A_ARM_RSP_EVENT, &[])
    }

    /// Sets the `no_coalesce_reqs` sysctl to `v % 3` (2 is refused).
    pub fn coalesce_sysctl(&mut self, v: u8) -> &mut Self {
        self.op(A_COALESCE, &[v])
    }

    /// The input built so far.
    pub fn bytes(&self) -> &[u8] {
        &self.bytes
    }
}

// ---------------------------------------------------------------------------
// fuzz_ring: the driver
// ---------------------------------------------------------------------------

/// What one [`fuzz_ring_in`] input did, so seeds can check they reached
/// what they aim at.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RingReport {
    /// Connections made.
    pub connects: u64,
    /// Responses with `BLKIF_RSP_OKAY`.
    pub okay: u64,
    /// Responses with `BLKIF_RSP_ERROR`.
    pub error: u64,
    /// Responses with `BLKIF_RSP_EOPNOTSUPP`.
    pub not_supported: u64,
    /// Store I/Os submitted (flushes included).
    pub ios: u64,
    /// Events sent to the front-end.
    pub notifications: u64,
    /// A connection broke the ring protocol.
    pub ring_broken: bool,
    /// The largest number of store I/Os in flight at once.
    pub max_in_flight: usize,
}

/// The hostile front-end and its bookkeeping.
struct Driver {
    report: RingReport,
    host: FuzzHost,
    inst: Instance,
    front: Option<FrontRing>,
    abi: Abi,
    ring_pages: u32,
    size: u32,
    medium_sectors: u64,
    /// The index the next request is written at.
    cursor: u32,
    /// Every slot's bytes as the front-end sees them between actions.
    shadow: Vec<[u8; MAX_SLOT_SIZE]>,
    /// Every id a request slot can have held.
    ids: BTreeSet<u64>,
    /// Responses taken in the current connection.
    responses: u64,
    /// `host.connects` and `host.fatals` as last seen.
    connects_seen: u64,
    fatals_seen: u64,
    /// The current connection broke the ring protocol: it answers nothing
    /// more.
    ring_broken: bool,
    pushes: u64,
    last_end: u64,
}

impl Driver {
    fn front(&mut self) -> &mut FrontRing {
        self.front.as_mut().expect("front ring")
    }

    fn slot_of(&self, index: u32) -> usize {
        (index & (self.size - 1)) as usize
    }

    fn note_slot(&mut self, slot: usize) {
        let req = self.abi.request_size();
        let id = self.abi.decode_request(&self.shadow[slot][..req]).id;
        self.ids.insert(id);
    }

    /// Writes `bytes` into ring slot `index` and the shadow.
    fn write_slot(&mut self, index: u32, bytes: &[u8]) {
        let n = bytes.len().min(self.abi.entry_size());
        self.front().write_raw_slot(index, &bytes[..n]);
        let slot = self.slot_of(index);
        self.shadow[slot][..n].copy_from_slice(&bytes[..n]);
        self.note_slot(slot);
    }

    /// Initialises the shared ring as a front-end does before it
    /// (re)connects.
    fn reinit_front(&mut self) {
        let mem = self.front.take().expect("front ring").into_mem();
        self.front = Some(FrontRing::init(mem, self.abi, self.ring_pages).expect("ring init"));
        self.cursor = 0;
    }

    /// Takes every published response; checks they answer consumed
    /// requests with ids that were written.
    fn drain(&mut self) {
        if self.host.connects != self.connects_seen {
            // A new connection: the instance reset its counters.
            self.connects_seen = self.host.connects;
            self.responses = 0;
            self.ring_broken = false;
        }
        if self.host.fatals != self.fatals_seen {
            self.fatals_seen = self.host.fatals;
            self.ring_broken |= self.inst.last_error() == Some(ConnectError::Ring);
        }
        let mut got = Vec::new();
        loop {
            let index = self.front().rsp_cons();
            let Some(r) = self.front().take_response() else {
                break;
            };
            // What the back-end wrote into the slot, as the shadow's bytes.
            let slot = self.slot_of(index);
            let n = self.abi.response_size();
            self.shadow[slot][..n].fill(0);
            self.abi.encode_response(&r, &mut self.shadow[slot][..n]);
            self.note_slot(slot);
            got.push(r);
            assert!(got.len() <= self.size as usize * 4, "runaway responses");
        }
        self.responses += got.len() as u64;
        let received = self.inst.stats().get(Stat::ReqsReceived);
        assert!(
            self.responses <= received,
            "{} responses for {received} requests consumed",
            self.responses
        );
        self.report.ring_broken |= self.ring_broken;
        self.report.connects = self.host.connects;
        self.report.max_in_flight = self.report.max_in_flight.max(self.host.pending.len());
        for r in &got {
            match r.status {
                BLKIF_RSP_OKAY => self.report.okay += 1,
                BLKIF_RSP_ERROR => self.report.error += 1,
                _ => self.report.not_supported += 1,
            }
            assert!(
                self.ids.contains(&r.id),
                "response to unknown id {:#x}",
                r.id
            );
            assert!(
                matches!(
                    r.status,
                    BLKIF_RSP_OKAY | BLKIF_RSP_ERROR | BLKIF_RSP_EOPNOTSUPP
                ),
                "bad status {}",
                r.status
            );
        }
    }

    fn set_front_state(&mut self, v: u8) {
        let path = alloc::format!("{FE_PATH}/state");
        match v % 12 {
            s @ 0..=8 => {
                let st = XenbusState::from_u32(u32::from(s)).expect("state");
                self.host.xs.set(&path, st.as_str().as_bytes());
            }
            9 => self.host.xs.set(&path, b"connected"),
            10 => self.host.xs.set(&path, b"99"),
            _ => self.host.xs.remove(&path),
        }
    }

    fn push(&mut self, r: &mut Input<'_>) {
        self.pushes += 1;
        let id = u64::from(r.u16()) | self.pushes << 16;
        let op_sel = r.u8() % 8;
        let operation = match op_sel {
            0 | 1 => BLKIF_OP_READ,
            2 | 3 => BLKIF_OP_WRITE,
            4 => BLKIF_OP_FLUSH_DISKCACHE,
            5 => BLKIF_OP_WRITE_BARRIER,
            6 if id & 1 == 0 => BLKIF_OP_DISCARD,
            6 => BLKIF_OP_INDIRECT,
            _ => r.u8(),
        };
        let nb = r.u8();
        let nsegs = if nb < 208 { nb % 13 } else { nb };
        let sel = r.u8();
        let sector = match sel {
            0..=127 => u64::from(sel) * 8,
            128..=191 => self.last_end,
            192..=254 => self.medium_sectors.saturating_sub(u64::from(sel - 192)),
            255 => r.u64(),
        };
        let mut seg = [Segment::default(); BLKIF_MAX_SEGMENTS_PER_REQUEST];
        let mut sectors = 0u64;
        for s in seg.iter_mut().take(usize::from(nsegs)) {
            let g = r.u8();
            let gref = match g {
                0..=223 => DATA_GREF_BASE + u32::from(g % DATA_PAGES as u8),
                224..=239 => RING_GREF_BASE + u32::from(g % 4),
                240..=254 => u32::from(g),
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
        self.last_end = sector.wrapping_add(sectors);
        let body = match operation {
            BLKIF_OP_DISCARD => RequestBody::Discard {
                flag: nsegs & 1,
                handle: 0,
                sector_number: sector,
                nr_sectors: sectors,
            },
            BLKIF_OP_INDIRECT => RequestBody::Indirect {
                indirect_op: BLKIF_OP_READ,
                nr_segments: u16::from(nsegs),
                handle: 0,
                sector_number: sector,
                indirect_grefs: [DATA_GREF_BASE; 8],
            },
            _ => RequestBody::Rw {
                nr_segments: nsegs,
                handle: 0,
                sector_number: sector,
                seg,
            },
        };
        let req = BlkifRequest {
            operation,
            id,
            body,
        };
        let mut buf = [0u8; MAX_SLOT_SIZE];
        let n = self.abi.request_size();
        self.abi.encode_request(&req, &mut buf[..n]);
        let at = self.cursor;
        self.write_slot(at, &buf[..n]);
        self.cursor = self.cursor.wrapping_add(1);
    }

    fn run_scheduled(&mut self) {
        if core::mem::take(&mut self.host.run_scheduled) {
            self.inst.run(&mut self.host, 0);
        }
    }

    /// Completes every pending I/O and honours deferred runs until
    /// nothing is left, draining responses as a front-end would.
    fn settle(&mut self, result: Result<(), IoError>) {
        for _ in 0..MAX_SETTLE_STEPS {
            if !self.host.pending.is_empty() {
                self.host.complete_at(&mut self.inst, 0, result);
            } else if self.host.run_scheduled {
                self.run_scheduled();
            } else {
                self.drain();
                return;
            }
            self.drain();
        }
        panic!("the instance did not settle");
    }

    fn action(&mut self, r: &mut Input<'_>) {
        match r.u8() % N_ACTIONS {
            A_WRITE_SLOT => {
                let rel = r.u8() as i8;
                let len = usize::from(r.u8()) % (MAX_SLOT_SIZE + 1);
                let bytes = r.bytes(len);
                let at = self.cursor.wrapping_add(rel as u32);
                self.write_slot(at, bytes);
                if rel == 0 {
                    self.cursor = self.cursor.wrapping_add(1);
                }
            }
            A_PUSH => self.push(r),
            A_REQ_PROD => {
                let v = match r.u8() % 4 {
                    0 => self.cursor,
                    1 => self.cursor.wrapping_add(u32::from(r.u8())),
                    2 => self.cursor.wrapping_sub(u32::from(r.u8())),
                    _ => r.u32(),
                };
                self.front().set_req_prod_raw(v);
            }
            A_KICK => self.inst.event(&mut self.host, 0),
            A_COMPLETE_ONE => {
                let which = usize::from(r.u8());
                let result = Outcome::decode(r.u8());
                if !self.host.pending.is_empty() {
                    let idx = which % self.host.pending.len();
                    self.host.complete_at(&mut self.inst, idx, result);
                }
            }
            A_COMPLETE_ALL => {
                let result = Outcome::decode(r.u8());
                self.settle(result);
            }
            A_FRONT_STATE => {
                let v = r.u8();
                self.set_front_state(v);
                if matches!(v % 12, 3 | 4) && !self.host.ring_mapped() {
                    // A front-end initialises the ring before it announces
                    // it (again).
                    self.reinit_front();
                }
                self.inst.frontend_changed(&mut self.host);
            }
            A_INJECT => {
                let (k, n) = (r.u8() % 7, r.u8());
                let h = &mut self.host;
                match k {
                    0 => h.fail_submits += u32::from(n % 4),
                    1 => h.fail_maps += u32::from(n % 16),
                    2 => h.fail_ring_map = true,
                    3 => h.fail_bind = true,
                    4 => h.fail_window = true,
                    5 => h.xs.conflicts = u32::from(n % 12),
                    _ => h.fail_open = true,
                }
            }
            A_DEFERRED => self.run_scheduled(),
            A_ROOT_MOUNTED => {
                self.host.root = true;
                self.inst.root_mounted(&mut self.host);
            }
            A_ARM_RSP_EVENT => {
                self.front().final_check_for_responses();
            }
            _ => {
                let v = u64::from(r.u8() % 3);
                let accepted = self.inst.sysctl_set(Stat::NoCoalesceReqs, v);
                assert_eq!(accepted, v <= 1);
            }
        }
        self.drain();
    }

    /// Front-end Closed, detach, and check everything was given back.
    fn teardown(&mut self) {
        self.host.fail_submits = 0;
        self.settle(Ok(()));
        if self.inst.is_idle() && !self.ring_broken {
            let received = self.inst.stats().get(Stat::ReqsReceived);
            assert_eq!(
                self.responses, received,
                "idle with consumed requests unanswered"
            );
        }
        self.set_front_state(XenbusState::Closed as u8);
        self.inst.frontend_changed(&mut self.host);
        self.settle(Ok(()));
        self.inst.detach(&mut self.host);
        self.settle(Ok(()));

        assert!(self.inst.is_detached(), "detach did not finish");
        let h = &self.host;
        assert!(!h.ring_mapped(), "ring still mapped after detach");
        assert!(h.window.is_none(), "window still reserved after detach");
        assert_eq!(h.live_maps, 0, "grants still mapped after detach");
        assert!(!h.bound, "event channel still bound after detach");
        assert!(!h.store_open, "store still open after detach");
        assert!(h.pending.is_empty());
    }
}

/// Runs one [`fuzz_ring`] input with ring memory of its own (leaking
/// 16 KiB). Fuzzers running many inputs use [`fuzz_ring_in`].
pub fn fuzz_ring(data: &[u8]) -> RingReport {
    let mut mem = RingMemory::new().expect("ring memory");
    fuzz_ring_in(&mut mem, data)
}

/// Plays `data` as a hostile front-end against a real [`Instance`].
///
/// The input is a [`RingConfig`] header followed by actions (see
/// [`RingScript`]): write bytes into a ring slot, write a structured
/// request, set `req_prod` to anything, kick, complete one or all pending
/// I/O with success or an error, change the front-end's state, inject
/// platform failures, run a deferred pass. After each action every
/// published response is taken and checked: no more responses than
/// requests consumed, each with an id some slot held. At the end the
/// front-end closes, the instance detaches, and every grant, the window,
/// the ring, the event channel and the store must have been given back.
pub fn fuzz_ring_in(mem: &mut RingMemory, data: &[u8]) -> RingReport {
    let mut r = Input::new(data);
    let cfg = RingConfig::decode(&mut r);
    let abi = if cfg.x86_64 { Abi::X86_64 } else { Abi::X86_32 };
    let order = u32::from(cfg.order);
    let ring_pages = 1u32 << order;
    let size = abi.ring_size(ring_pages).expect("ring size");

    let (front_mem, back_mem) = mem.take();
    for page in 0..RING_BYTES / PAGE_SIZE {
        front_mem.write(page * PAGE_SIZE, &[0u8; PAGE_SIZE]);
    }
    let front = FrontRing::init(front_mem, abi, ring_pages).expect("ring init");

    let medium_sectors = (u64::from(cfg.medium) + 1) * 8;
    let sector_size = if cfg.sector_4k { 4096 } else { 512 };
    let mut guest = vec![0u8; DATA_PAGES * PAGE_SIZE];
    for (i, b) in guest.iter_mut().enumerate() {
        *b = (i as u8).wrapping_mul(7) ^ (i >> 12) as u8;
    }
    let host = FuzzHost {
        xs: MapStore::default(),
        connects: 0,
        fatals: 0,
        root: !cfg.root_later,
        guest,
        readonly_grants: cfg.readonly_grants,
        ring_pages,
        ring_ptr: back_mem.as_ptr(),
        ring_back: Some(back_mem),
        window: None,
        next_handle: 0,
        live_maps: 0,
        bound: false,
        notifications: 0,
        submits: 0,
        run_scheduled: false,
        medium: vec![0u8; (medium_sectors as usize) << SECTOR_SHIFT],
        info: MediumInfo {
            sectors: medium_sectors,
            sector_size,
            physical_sector_size: sector_size,
            read_only: cfg.read_only_medium,
            can_flush: cfg.can_flush,
            can_discard: cfg.can_discard,
            is_device: false,
            ..MediumInfo::default()
        },
        store_open: false,
        pending: Vec::new(),
        fail_submits: 0,
        fail_maps: 0,
        fail_ring_map: false,
        fail_bind: false,
        fail_window: false,
        fail_open: false,
    };

    let mut t = Tunables::default();
    let sel = |table: &[u64; 4], s: u8| table[usize::from(s & 3)];
    for (tunable, v) in [
        (Tunable::RequestsPerPass, sel(&RPP, cfg.requests_per_pass)),
        (Tunable::MaxRequests, sel(&MAX_REQS, cfg.max_requests)),
        (Tunable::KvaPages, sel(&KVA, cfg.kva_pages)),
        (Tunable::MaxRequestSize, sel(&MAX_RS, cfg.max_request_size)),
        (
            Tunable::MaxRingPageOrder,
            sel(&MAX_ORDER, cfg.max_ring_order),
        ),
        (Tunable::NoCoalesceReqs, u64::from(cfg.no_coalesce)),
        (
            Tunable::MaxPersistentGrants,
            sel(&MAX_PGRANTS, cfg.max_pgrants),
        ),
    ] {
        t.set(tunable, v).expect("tunable in range");
    }
    let inst = Instance::new(BE_PATH, &t).expect("instance");

    let mut d = Driver {
        report: RingReport::default(),
        host,
        inst,
        front: Some(front),
        abi,
        ring_pages,
        size,
        medium_sectors,
        cursor: 0,
        shadow: vec![[0u8; MAX_SLOT_SIZE]; size as usize],
        ids: BTreeSet::from([0]),
        responses: 0,
        connects_seen: 0,
        fatals_seen: 0,
        ring_broken: false,
        pushes: 0,
        last_end: 0,
    };

    let xs = &mut d.host.xs;
    let be = |k: &str| alloc::format!("{BE_PATH}/{k}");
    let fe = |k: &str| alloc::format!("{FE_PATH}/{k}");
    xs.set(&be("frontend"), FE_PATH.as_bytes());
    xs.set(&be("frontend-id"), b"1");
    xs.set(&be("params"), b"/fuzz/disk");
    xs.set(&be("type"), b"file");
    xs.set(
        &be("mode"),
        if cfg.toolstack_read_only { b"r" } else { b"w" },
    );
    xs.set(&be("online"), if cfg.online { b"1" } else { b"0" });
    if order == 0 {
        xs.set(&fe("ring-ref"), RING_GREF_BASE.to_string_bytes().as_slice());
    } else {
        xs.set(&fe("ring-page-order"), order.to_string_bytes().as_slice());
        for i in 0..ring_pages {
            let key = alloc::format!("ring-ref{i}");
            xs.set(&fe(&key), (RING_GREF_BASE + i).to_string_bytes().as_slice());
        }
    }
    xs.set(
        &fe("event-channel"),
        EVTCHN_PORT.to_string_bytes().as_slice(),
    );
    let proto = if cfg.x86_64 {
        XEN_IO_PROTO_ABI_X86_64
    } else {
        XEN_IO_PROTO_ABI_X86_32
    };
    xs.set(&fe("protocol"), proto.as_bytes());
    if cfg.persistent {
        xs.set(&fe("feature-persistent"), b"1");
    }
    let initial = if cfg.connect_at_attach {
        XenbusState::Initialised
    } else {
        XenbusState::Initialising
    };
    xs.set(&fe("state"), initial.as_str().as_bytes());

    d.inst.attach(&mut d.host);
    d.drain();
    let mut n = 0;
    while !r.is_empty() && n < MAX_ACTIONS {
        d.action(&mut r);
        n += 1;
    }
    d.teardown();

    let front_mem = d.front.take().expect("front ring").into_mem();
    let back_mem = d.host.ring_back.take().expect("ring returned");
    mem.pair = Some((front_mem, back_mem));
    d.report.ios = d.host.submits;
    d.report.notifications = d.host.notifications;
    d.report
}

/// Decimal digits of a number, for XenStore values.
trait DecimalBytes {
    fn to_string_bytes(self) -> Vec<u8>;
}

impl DecimalBytes for u32 {
    fn to_string_bytes(self) -> Vec<u8> {
        alloc::format!("{self}").into_bytes()
    }
}

// ---------------------------------------------------------------------------
// fuzz_request
// ---------------------------------------------------------------------------

/// Decodes the bytes after an 18-byte limits header as a request slot of
/// each ABI and validates it: never panics, and an accepted request obeys
/// every rule of `io/blkif.h` against those limits — inside the medium,
/// aligned, its segments inside their pages, its data covered exactly by
/// the iovecs coalescing would build.
pub fn fuzz_request(data: &[u8]) {
    let mut r = Input::new(data);
    let flags = r.u8();
    let seg_sel = r.u8();
    let ind_sel = r.u16();
    let limits = Limits {
        max_segments: if seg_sel < 128 {
            u32::from(seg_sel % 16)
        } else {
            r.u32()
        },
        max_indirect_segments: if ind_sel & 0x8000 != 0 {
            0
        } else {
            u32::from(ind_sel)
        },
        medium_sectors: r.u64() >> (r.u8() % 64),
        sector_size: 512 << (flags & 3),
        read_only: flags & 4 != 0,
        flush: flags & 8 != 0,
        barrier: flags & 16 != 0,
        discard: flags & 32 != 0,
        secure_discard: flags & 64 != 0,
    };
    let slot = r.bytes(MAX_SLOT_SIZE);
    // Whatever is left stands for the indirect descriptor pages.
    let descriptors = r.bytes(usize::MAX);
    let mut segs = [Segment::default(); 4096];
    for abi in [Abi::X86_32, Abi::X86_64] {
        let req = abi.decode_request(slot);
        // Decoding is total and canonical: re-encoding gives the same request.
        let mut buf = [0u8; MAX_SLOT_SIZE];
        abi.encode_request(&req, &mut buf[..abi.request_size()]);
        assert_eq!(abi.decode_request(&buf[..abi.request_size()]), req);
        let parsed = match request::parse(&req, &limits, &mut segs) {
            Ok(request::Header::Ready(p)) => Ok(p),
            Ok(request::Header::Indirect(h)) => {
                let RequestBody::Indirect {
                    indirect_op,
                    nr_segments,
                    ..
                } = req.body
                else {
                    panic!("indirect header from {req:?}");
                };
                assert!(matches!(indirect_op, BLKIF_OP_READ | BLKIF_OP_WRITE));
                assert!(nr_segments >= 1 && u32::from(nr_segments) <= limits.max_indirect_segments);
                assert!(u32::from(nr_segments) <= request::MAX_INDIRECT_SEGMENTS);
                assert!(h.page_grefs().len() <= 8);
                request::parse_indirect(&h, descriptors, &limits, &mut segs)
            }
            Err(e) => Err(e),
        };
        match parsed {
            Ok(p) => check_parsed(&req, &p, &segs, &limits),
            Err(e) => assert!(matches!(e.status(), BLKIF_RSP_ERROR | BLKIF_RSP_EOPNOTSUPP)),
        }
    }
}

fn check_parsed(req: &BlkifRequest, p: &request::Parsed, segs: &[Segment], lim: &Limits) {
    assert_eq!(p.id, req.id);
    let lss = u64::from(lim.sector_size >> SECTOR_SHIFT);
    let n = usize::from(p.nsegs);
    match req.body {
        RequestBody::Discard {
            flag,
            sector_number,
            nr_sectors,
            ..
        } => {
            assert!(lim.discard && !lim.read_only);
            assert_eq!(
                p.op,
                Op::Discard {
                    secure: flag & 1 != 0
                }
            );
            assert!(flag & 1 == 0 || lim.secure_discard);
            assert_eq!((p.sector, p.nr_sectors, n), (sector_number, nr_sectors, 0));
            assert_eq!(p.sector % lss, 0);
            assert_eq!(p.nr_sectors % lss, 0);
            let end = p.sector.checked_add(p.nr_sectors).expect("end overflows");
            assert!(end <= lim.medium_sectors, "outside the medium");
            return;
        }
        RequestBody::Indirect {
            indirect_op,
            nr_segments,
            sector_number,
            ..
        } => {
            assert_eq!(p.operation, indirect_op);
            assert_eq!(p.nsegs, nr_segments);
            assert_eq!(p.sector, sector_number);
            assert_eq!(
                p.op,
                if indirect_op == BLKIF_OP_READ {
                    Op::Read
                } else {
                    Op::Write
                }
            );
        }
        RequestBody::Rw {
            nr_segments, seg, ..
        } => {
            assert_eq!(p.operation, req.operation);
            let want_op = match req.operation {
                BLKIF_OP_READ => Op::Read,
                BLKIF_OP_WRITE => Op::Write,
                BLKIF_OP_FLUSH_DISKCACHE if lim.flush => Op::Flush,
                BLKIF_OP_WRITE_BARRIER if lim.barrier => Op::Barrier,
                _ => panic!("accepted operation {} under {lim:?}", req.operation),
            };
            assert_eq!(p.op, want_op);
            assert_eq!(p.nsegs, u16::from(nr_segments));
            assert!(n <= BLKIF_MAX_SEGMENTS_PER_REQUEST && n as u32 <= lim.max_segments);
            assert!(n > 0 || matches!(p.op, Op::Flush | Op::Barrier));
            assert_eq!(&segs[..n], &seg[..n]);
        }
    }
    assert!(
        !(lim.read_only && p.op.writes() && n > 0),
        "write to read-only"
    );
    let mut sectors = 0u64;
    for s in &segs[..n] {
        assert!(s.first_sect <= s.last_sect && u32::from(s.last_sect) < SECTORS_PER_PAGE);
        assert_eq!(u64::from(s.first_sect) % lss, 0);
        assert_eq!((u64::from(s.last_sect) + 1) % lss, 0);
        sectors += u64::from(s.last_sect - s.first_sect) + 1;
    }
    assert_eq!(p.nr_sectors, sectors);
    if n == 0 {
        assert_eq!((p.sector, p.nr_sectors), (0, 0));
        return;
    }
    assert_eq!(p.sector % lss, 0);
    let end = p.sector.checked_add(p.nr_sectors).expect("end overflows");
    assert!(end <= lim.medium_sectors, "outside the medium");
    assert_eq!(p.end_sector(), end);

    // Consecutive window pages from 3 on: the iovecs cover the data exactly.
    let first_page = 3u32;
    let mut iov = [IoVec::default(); 4096];
    let pages = (0..n as u32).map(|i| Some(first_page + i));
    let k = coalesce::append_iovecs(segs[..n].iter().zip(pages), &mut iov, 0).expect("room");
    let base = first_page as usize * PAGE_SIZE;
    let mut total = 0u64;
    for v in &iov[..k] {
        assert!(v.window_offset >= base && v.window_offset + v.len <= base + n * PAGE_SIZE);
        total += v.len as u64;
    }
    assert_eq!(total, p.nr_sectors << SECTOR_SHIFT);
}

// ---------------------------------------------------------------------------
// fuzz_xenstore
// ---------------------------------------------------------------------------

const XS_FE: &str = "/local/domain/3/device/vbd/768";
const XS_KEYS: [&str; 5] = [
    "ring-page-order",
    "num-ring-pages",
    "ring-ref",
    "event-channel",
    "protocol",
];

fn xs_path(key: &str) -> String {
    alloc::format!("{XS_FE}/{key}")
}

/// A strict decimal, the oracle's own reading.
/// Leading zeros are allowed (any number of them), as the core's
/// `parse_u64` allows them; only the value must fit.
fn dec(v: &[u8]) -> Option<u64> {
    if v.is_empty() || !v.iter().all(u8::is_ascii_digit) {
        return None;
    }
    v.iter().try_fold(0u64, |n, &c| {
        n.checked_mul(10)?.checked_add(u64::from(c - b'0'))
    })
}

fn dec32(v: &[u8]) -> Option<u32> {
    u32::try_from(dec(v)?).ok()
}

/// An arbitrary node value: absent, a small number, a u32, a u64, or raw
/// bytes.
fn arbitrary_value(r: &mut Input<'_>) -> Option<Vec<u8>> {
    match r.u8() % 8 {
        0 | 1 => None,
        2 => Some(alloc::format!("{}", r.u8() % 8).into_bytes()),
        3 => Some(alloc::format!("{}", r.u32()).into_bytes()),
        4 => Some(alloc::format!("{}", r.u64()).into_bytes()),
        5 => Some(alloc::format!("0{}", r.u8()).into_bytes()),
        6 => {
            let p = [
                XEN_IO_PROTO_ABI_X86_32,
                XEN_IO_PROTO_ABI_X86_64,
                XEN_IO_PROTO_ABI_ARM,
            ];
            Some(Vec::from(p[usize::from(r.u8() % 3)].as_bytes()))
        }
        _ => {
            let n = usize::from(r.u8());
            Some(Vec::from(r.bytes(n)))
        }
    }
}

/// Feeds front-end transport parameters to [`connect::read_frontend`].
///
/// Half the inputs (by the first byte) build a well-formed directory that
/// must be accepted with exactly its values; the rest write arbitrary
/// values (absent, numbers of every width, leading zeros, protocol names,
/// raw bytes) to `ring-page-order`, `num-ring-pages`, `ring-ref`,
/// `ring-ref0..31`, `event-channel` and `protocol`, with XenStore conflicts
/// and read failures. Any accepted result must satisfy every rule.
pub fn fuzz_xenstore(data: &[u8]) {
    let mut r = Input::new(data);
    let mode = r.u8();
    let mo = r.u8();
    let max_order = if mo < 200 { u32::from(mo % 8) } else { r.u32() };
    let mut xs = MapStore::default();
    let conflicts = u32::from(r.u8() % 12);
    xs.conflicts = conflicts;
    let well_formed = mode % 2 == 0;

    let mut expect = None;
    if well_formed {
        xs.conflicts = conflicts.min(XS_TXN_RETRIES);
        let cap = max_order.min(MAX_RING_PAGE_ORDER);
        let order = u32::from(r.u8()) % (cap + 1);
        let style = r.u8() % 3;
        if order > 0 || style != 0 {
            if style != 1 {
                xs.set(
                    &xs_path("ring-page-order"),
                    alloc::format!("{order}").as_bytes(),
                );
            }
            if style != 0 {
                xs.set(
                    &xs_path("num-ring-pages"),
                    alloc::format!("{}", 1u32 << order).as_bytes(),
                );
            }
        }
        let mut refs = [0u32; 32];
        for (i, slot) in refs.iter_mut().enumerate().take(1 << order) {
            *slot = r.u32();
            let key = if order == 0 && style != 2 {
                String::from("ring-ref")
            } else {
                alloc::format!("ring-ref{i}")
            };
            xs.set(&xs_path(&key), alloc::format!("{slot}").as_bytes());
        }
        let port = r.u32();
        xs.set(
            &xs_path("event-channel"),
            alloc::format!("{port}").as_bytes(),
        );
        let abi = match r.u8() % 4 {
            0 => Abi::native(),
            1 => {
                xs.set(&xs_path("protocol"), XEN_IO_PROTO_ABI_X86_32.as_bytes());
                Abi::X86_32
            }
            2 => {
                xs.set(&xs_path("protocol"), XEN_IO_PROTO_ABI_X86_64.as_bytes());
                Abi::X86_64
            }
            _ => {
                xs.set(&xs_path("protocol"), XEN_IO_PROTO_ABI_ARM.as_bytes());
                Abi::X86_64
            }
        };
        expect = Some(connect::FrontendParams {
            ring_pages: 1 << order,
            abi,
            queues: alloc::vec![connect::QueueParams {
                ring_refs: refs,
                event_channel: port,
            }],
            persistent: false,
        });
    } else {
        for key in XS_KEYS {
            if let Some(v) = arbitrary_value(&mut r) {
                xs.set(&xs_path(key), &v);
            }
        }
        let count = usize::from(r.u8() % 33);
        for i in 0..count {
            if let Some(v) = arbitrary_value(&mut r) {
                xs.set(&xs_path(&alloc::format!("ring-ref{i}")), &v);
            }
        }
        let f = r.u8();
        if f >= 200 {
            xs.fail_read = Some(u32::from(f - 199));
        }
    }

    let got = connect::read_frontend(&mut xs, XS_FE, max_order, 1);
    if let Some(want) = expect {
        assert_eq!(got, Ok(want), "well-formed parameters refused");
    }
    let Ok(p) = got else {
        return;
    };
    assert!(conflicts <= XS_TXN_RETRIES || well_formed);
    let cap = max_order.min(MAX_RING_PAGE_ORDER);
    assert!(p.ring_pages.is_power_of_two() && p.ring_pages <= 1 << cap);
    let order = p.ring_pages.trailing_zeros();
    let node = |k: &str| xs.get(&xs_path(k));
    match (node("ring-page-order"), node("num-ring-pages")) {
        (None, None) => assert_eq!(p.ring_pages, 1),
        (o, n) => {
            if let Some(o) = o {
                assert_eq!(dec32(o), Some(order), "ring-page-order disagrees");
            }
            if let Some(n) = n {
                assert_eq!(dec32(n), Some(p.ring_pages), "num-ring-pages disagrees");
            }
        }
    }
    assert_eq!(p.refs(0).len(), p.ring_pages as usize);
    assert_eq!(p.queues.len(), 1);
    if p.ring_pages == 1 {
        let want = match node("ring-ref") {
            Some(v) => dec32(v),
            None => node("ring-ref0").and_then(dec32),
        };
        assert_eq!(Some(p.queues[0].ring_refs[0]), want);
    } else {
        for (i, &g) in p.refs(0).iter().enumerate() {
            let v = node(&alloc::format!("ring-ref{i}")).expect("ring-ref node");
            assert_eq!(dec32(v), Some(g));
        }
    }
    assert!(p.queues[0].ring_refs[p.ring_pages as usize..]
        .iter()
        .all(|&g| g == 0));
    assert_eq!(
        node("event-channel").and_then(dec32),
        Some(p.queues[0].event_channel)
    );
    let want_abi = match node("protocol") {
        None => Abi::native(),
        Some(v) => Abi::from_protocol(v).expect("unknown protocol accepted"),
    };
    assert_eq!(p.abi, want_abi);
}
