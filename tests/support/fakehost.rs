//! A deterministic, single-threaded platform for integration tests: it
//! implements every trait of `xbb::host` in memory, with no threads and no
//! mmap.
//!
//! - XenStore is a map; transactions apply at once.
//! - Guest memory is a set of 4 KiB pages, one per grant reference
//!   ([`FakeHost::grant`]); the shared ring comes from
//!   [`SharedMem::leak_pair`] ([`FakeHost::frontend_ring`] keeps the
//!   front view for the test's `FrontRing` and hands the back view to the
//!   instance through `map_ring`).
//! - `map_batch` records which grant each window page shows (refusing a
//!   writable mapping of a read-only grant); I/O then copies between the
//!   medium and the guest pages those window pages map.
//! - The medium is a `Vec<u8>`. `store_submit` only queues; the test
//!   performs queued I/O with [`FakeHost::complete_next`] /
//!   [`FakeHost::complete_all`], which call `Instance::complete`.
//!
//! Nothing on the I/O path allocates: the I/O queue, its iovec buffers and
//! the window table are sized when the host is built (or at connect), and
//! data moves with slice copies. `tests/no_alloc.rs` relies on that.

use std::collections::{BTreeMap, VecDeque};

use xbb::abi::Abi;
use xbb::host::{
    Deferred, DomId, EventChannel, EvtchnError, EvtchnPort, GrantError, GrantHandle, GrantMapOp,
    GrantRef, GrantUnmapOp, Grants, Host, IoError, IoOp, IoTag, IoVec, MediumInfo, OpenError,
    OpenParams, QueueId, Store, XenStore, XenbusState, XsError, XsTxn, PAGE_SIZE,
};
use xbb::instance::Instance;
use xbb::ring::FrontRing;
use xbb::shmem::SharedMem;

/// The back-end directory [`FakeHost::standard_nodes`] writes.
pub const BE_PATH: &str = "/local/domain/0/backend/vbd/1/51712";
/// The front-end directory [`FakeHost::standard_nodes`] writes.
pub const FE_PATH: &str = "/local/domain/1/device/vbd/51712";
/// The front-end's domain.
pub const FE_DOM: DomId = 1;
/// The front-end's event-channel port.
pub const FE_PORT: EvtchnPort = 9;

/// Sizes and behaviour of a [`FakeHost`].
#[derive(Clone, Copy, Debug)]
pub struct FakeConfig {
    /// What `store_open` reports (and the medium's size).
    pub medium: MediumInfo,
    /// Data pages the test may grant without the host reallocating.
    pub max_grants: usize,
    /// I/Os that may be queued at once; more are refused with `Busy`.
    pub max_in_flight: usize,
    /// The longest iovec list one I/O may carry.
    pub max_iov: usize,
    /// The largest window the instance may reserve.
    pub max_window_pages: usize,
}

impl Default for FakeConfig {
    fn default() -> Self {
        FakeConfig {
            medium: MediumInfo {
                sectors: 4096,
                sector_size: 512,
                physical_sector_size: 512,
                read_only: false,
                can_flush: true,
                can_discard: false,
                is_device: false,
                ..MediumInfo::default()
            },
            max_grants: 256,
            max_in_flight: 1024,
            max_iov: 256,
            max_window_pages: 1 << 14,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Grant {
    /// Data page `index` of `FakeHost::guest`.
    Data { index: usize, readonly: bool },
    /// A page of the shared ring.
    Ring,
}

#[derive(Clone, Copy, Debug)]
struct Mapping {
    gref: GrantRef,
    readonly: bool,
    handle: u32,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Read,
    Write,
    Flush,
    Discard,
}

/// One queued I/O; its iovec buffer is allocated once, at construction.
#[derive(Debug)]
struct IoSlot {
    tag: IoTag,
    kind: Kind,
    offset: u64,
    len: u64,
    iov: Vec<IoVec>,
}

/// The fake platform. Public counters are for the test to read.
#[derive(Debug)]
pub struct FakeHost {
    xs: BTreeMap<String, String>,
    /// Whether the root file system is mounted.
    pub root: bool,
    /// [`Host::waits_for_hotplug`].
    pub hotplug_gate: bool,
    cfg: FakeConfig,
    grants: Vec<Grant>,
    guest: Vec<u8>,
    ring_back: Option<SharedMem>,
    ring_grefs: Vec<GrantRef>,
    ring_mapped: bool,
    window: Vec<Option<Mapping>>,
    window_reserved: bool,
    next_handle: u32,
    /// Grant mappings currently in place in the window.
    pub live_mappings: usize,
    /// The medium's bytes.
    pub medium: Vec<u8>,
    store_open: bool,
    slots: Vec<IoSlot>,
    free_slots: Vec<usize>,
    queue: VecDeque<usize>,
    /// The bound event channel.
    pub evtchn: Option<(DomId, EvtchnPort)>,
    /// Events sent to the front-end.
    pub notifications: u64,
    /// `schedule_run` calls not yet honoured by [`FakeHost::run_deferred`].
    pub schedule_runs: u64,
    /// I/Os queued so far.
    pub submitted: u64,
    /// I/Os completed so far.
    pub completed: u64,
    /// Refuse the next N `store_submit` calls with `Busy`.
    pub fail_submits: u32,
    /// Fail the next N grant mappings with `NoSpace`.
    pub fail_maps: u32,
    /// Complete the next N I/Os with this error instead of performing them.
    pub fail_ios: (u32, IoError),
    /// What `now_ms` reports; the test moves the clock.
    pub now_ms: u64,
    /// `evtchn_eoi` calls, the last delay asked for, the largest.
    pub eois: u64,
    /// See [`FakeHost::eois`].
    pub last_eoi_delay: u32,
    /// See [`FakeHost::eois`].
    pub max_eoi_delay: u32,
    /// Pages `copy_in` copied (indirect descriptor pages).
    pub pages_copied: u64,
}

impl FakeHost {
    /// A host with every buffer of the I/O path allocated now.
    pub fn new(cfg: FakeConfig) -> FakeHost {
        let medium_len = usize::try_from(cfg.medium.sectors << 9).expect("medium size");
        let slots = (0..cfg.max_in_flight)
            .map(|_| IoSlot {
                tag: IoTag(0),
                kind: Kind::Flush,
                offset: 0,
                len: 0,
                iov: Vec::with_capacity(cfg.max_iov),
            })
            .collect();
        FakeHost {
            xs: BTreeMap::new(),
            root: true,
            hotplug_gate: false,
            cfg,
            grants: Vec::with_capacity(cfg.max_grants + 64),
            guest: Vec::with_capacity(cfg.max_grants * PAGE_SIZE),
            ring_back: None,
            ring_grefs: Vec::new(),
            ring_mapped: false,
            window: Vec::with_capacity(cfg.max_window_pages),
            window_reserved: false,
            next_handle: 0,
            live_mappings: 0,
            medium: vec![0; medium_len],
            store_open: false,
            slots,
            free_slots: (0..cfg.max_in_flight).rev().collect(),
            queue: VecDeque::with_capacity(cfg.max_in_flight),
            evtchn: None,
            notifications: 0,
            schedule_runs: 0,
            submitted: 0,
            completed: 0,
            fail_submits: 0,
            fail_maps: 0,
            fail_ios: (0, IoError::Io),
            now_ms: 0,
            eois: 0,
            last_eoi_delay: 0,
            max_eoi_delay: 0,
            pages_copied: 0,
        }
    }

    /// Grows or shrinks the medium (the test then calls
    /// `Instance::medium_changed`, as the platform would).
    pub fn resize_medium(&mut self, sectors: u64) {
        self.cfg.medium.sectors = sectors;
        self.medium.resize((sectors << 9) as usize, 0);
    }

    /// Lets the store report discard support from now on (before attach).
    pub fn set_medium(&mut self, m: MediumInfo) {
        self.cfg.medium = m;
        self.medium.resize((m.sectors << 9) as usize, 0);
    }

    // --- XenStore, for the test -------------------------------------------

    /// Writes a node.
    pub fn xs_set(&mut self, path: &str, value: &str) {
        self.xs.insert(path.to_owned(), value.to_owned());
    }

    /// Reads a node.
    pub fn xs_get(&self, path: &str) -> Option<&str> {
        self.xs.get(path).map(String::as_str)
    }

    /// The toolstack's back-end nodes for [`BE_PATH`] / [`FE_PATH`].
    pub fn standard_nodes(&mut self, writable: bool, online: bool) {
        self.xs_set(&format!("{BE_PATH}/frontend"), FE_PATH);
        self.xs_set(&format!("{BE_PATH}/frontend-id"), &FE_DOM.to_string());
        self.xs_set(&format!("{BE_PATH}/params"), "/fake/disk");
        self.xs_set(&format!("{BE_PATH}/type"), "file");
        self.xs_set(&format!("{BE_PATH}/mode"), if writable { "w" } else { "r" });
        self.xs_set(&format!("{BE_PATH}/online"), if online { "1" } else { "0" });
        self.set_frontend_state(XenbusState::Initialising);
    }

    /// Writes the front-end's `state` node (the test then calls
    /// `Instance::frontend_changed`, as a watch would).
    pub fn set_frontend_state(&mut self, s: XenbusState) {
        self.xs_set(&format!("{FE_PATH}/state"), s.as_str());
    }

    /// The back-end's published state.
    pub fn backend_state(&self) -> Option<&str> {
        self.xs_get(&format!("{BE_PATH}/state"))
    }

    // --- Guest memory -------------------------------------------------------

    /// Grants one page holding `bytes` (zero-padded to a page).
    pub fn grant(&mut self, bytes: &[u8], readonly: bool) -> GrantRef {
        let index = self.guest.len() / PAGE_SIZE;
        let mut page = [0u8; PAGE_SIZE];
        let n = bytes.len().min(PAGE_SIZE);
        page[..n].copy_from_slice(&bytes[..n]);
        self.guest.extend_from_slice(&page);
        self.push_grant(Grant::Data { index, readonly })
    }

    fn push_grant(&mut self, g: Grant) -> GrantRef {
        self.grants.push(g);
        // Grant reference 0 is never handed out (Xen reserves the first
        // entries); references are 8 + index.
        (self.grants.len() + 7) as GrantRef
    }

    fn lookup(&self, gref: GrantRef) -> Option<Grant> {
        let i = (gref as usize).checked_sub(8)?;
        self.grants.get(i).copied()
    }

    fn data_range(&self, gref: GrantRef) -> std::ops::Range<usize> {
        match self.lookup(gref) {
            Some(Grant::Data { index, .. }) => index * PAGE_SIZE..(index + 1) * PAGE_SIZE,
            other => panic!("grant {gref} is not a data page: {other:?}"),
        }
    }

    /// A granted data page.
    pub fn page(&self, gref: GrantRef) -> &[u8] {
        &self.guest[self.data_range(gref)]
    }

    /// A granted data page, for the guest to fill.
    pub fn page_mut(&mut self, gref: GrantRef) -> &mut [u8] {
        let r = self.data_range(gref);
        &mut self.guest[r]
    }

    /// Sets up a shared ring of `pages` pages as a front-end does: grants
    /// it, initialises it, and writes `ring-ref*`, `ring-page-order`,
    /// `event-channel` ([`FE_PORT`]) and `protocol` under [`FE_PATH`].
    pub fn frontend_ring(&mut self, abi: Abi, pages: u32) -> FrontRing {
        assert!(
            self.ring_back.is_none() && !self.ring_mapped,
            "one ring per host"
        );
        let (front, back) = SharedMem::leak_pair(pages as usize * PAGE_SIZE).expect("ring memory");
        self.ring_grefs = (0..pages).map(|_| self.push_grant(Grant::Ring)).collect();
        self.ring_back = Some(back);
        let fe = |k: &str| format!("{FE_PATH}/{k}");
        if pages == 1 {
            self.xs_set(&fe("ring-ref"), &self.ring_grefs[0].to_string());
        } else {
            self.xs_set(&fe("ring-page-order"), &pages.trailing_zeros().to_string());
            for (i, g) in self.ring_grefs.clone().into_iter().enumerate() {
                self.xs_set(&fe(&format!("ring-ref{i}")), &g.to_string());
            }
        }
        self.xs_set(&fe("event-channel"), &FE_PORT.to_string());
        let proto = match abi {
            Abi::X86_32 => xbb::abi::XEN_IO_PROTO_ABI_X86_32,
            Abi::X86_64 => xbb::abi::XEN_IO_PROTO_ABI_X86_64,
        };
        self.xs_set(&fe("protocol"), proto);
        FrontRing::init(front, abi, pages).expect("ring init")
    }

    /// Whether the instance has the ring mapped.
    pub fn ring_mapped(&self) -> bool {
        self.ring_mapped
    }

    /// Whether the instance holds a data window.
    pub fn window_reserved(&self) -> bool {
        self.window_reserved
    }

    /// Whether the store is open.
    pub fn store_is_open(&self) -> bool {
        self.store_open
    }

    // --- Driving I/O ----------------------------------------------------------

    /// I/Os queued and not completed.
    pub fn pending(&self) -> usize {
        self.queue.len()
    }

    /// Performs the oldest queued I/O and completes it. `false` when none.
    pub fn complete_next(&mut self, inst: &mut Instance) -> bool {
        let Some(i) = self.queue.pop_front() else {
            return false;
        };
        let s = &self.slots[i];
        let (tag, kind, offset, len) = (s.tag, s.kind, s.offset, s.len);
        let result = if self.fail_ios.0 > 0 {
            self.fail_ios.0 -= 1;
            Err(self.fail_ios.1)
        } else {
            self.perform(i, kind, offset, len);
            Ok(())
        };
        self.free_slots.push(i);
        self.completed += 1;
        inst.complete(self, tag, result);
        true
    }

    /// Completes queued I/O, including I/O submitted meanwhile, until none
    /// is left; returns how many.
    pub fn complete_all(&mut self, inst: &mut Instance) -> usize {
        let mut n = 0;
        while self.complete_next(inst) {
            n += 1;
        }
        n
    }

    /// Honours `schedule_run` requests: calls `Instance::run` once per
    /// request outstanding. Returns how many runs it made.
    pub fn run_deferred(&mut self, inst: &mut Instance) -> u64 {
        let mut n = 0;
        while self.schedule_runs > 0 {
            self.schedule_runs -= 1;
            inst.run(self, 0);
            n += 1;
        }
        n
    }

    fn perform(&mut self, slot: usize, kind: Kind, offset: u64, len: u64) {
        let off = offset as usize;
        match kind {
            Kind::Flush => {}
            Kind::Discard => self.medium[off..off + len as usize].fill(0),
            Kind::Read | Kind::Write => {
                let mut med = off;
                for k in 0..self.slots[slot].iov.len() {
                    let v = self.slots[slot].iov[k];
                    let (mut wo, mut left) = (v.window_offset, v.len);
                    while left > 0 {
                        let in_page = wo % PAGE_SIZE;
                        let n = left.min(PAGE_SIZE - in_page);
                        let m = self.window[wo / PAGE_SIZE].expect("I/O over an unmapped page");
                        let g = self.data_range(m.gref).start + in_page;
                        if kind == Kind::Read {
                            self.guest[g..g + n].copy_from_slice(&self.medium[med..med + n]);
                        } else {
                            self.medium[med..med + n].copy_from_slice(&self.guest[g..g + n]);
                        }
                        wo += n;
                        left -= n;
                        med += n;
                    }
                }
            }
        }
    }

    fn check_iov(&self, iov: &[IoVec], into_guest: bool) -> u64 {
        assert!(self.window_reserved, "I/O without a window");
        let mut total = 0u64;
        for v in iov {
            let end = v.window_offset + v.len;
            assert!(
                end <= self.window.len() * PAGE_SIZE,
                "iovec outside the window"
            );
            for m in &self.window[v.window_offset / PAGE_SIZE..end.div_ceil(PAGE_SIZE)] {
                let m = m.expect("I/O over an unmapped window page");
                assert!(!(into_guest && m.readonly), "read into a read-only mapping");
            }
            total += v.len as u64;
        }
        total
    }
}

impl XenStore for FakeHost {
    fn xs_read(&mut self, _txn: XsTxn, path: &str, buf: &mut [u8]) -> Result<usize, XsError> {
        let v = self.xs.get(path).ok_or(XsError::NotFound)?;
        let out = buf.get_mut(..v.len()).ok_or(XsError::TooLong)?;
        out.copy_from_slice(v.as_bytes());
        Ok(v.len())
    }

    fn xs_write(&mut self, _txn: XsTxn, path: &str, value: &str) -> Result<(), XsError> {
        self.xs_set(path, value);
        Ok(())
    }

    fn xs_remove(&mut self, _txn: XsTxn, path: &str) -> Result<(), XsError> {
        let dir = format!("{path}/");
        self.xs.retain(|k, _| k != path && !k.starts_with(&dir));
        Ok(())
    }

    fn xs_transaction_start(&mut self) -> Result<XsTxn, XsError> {
        Ok(XsTxn(1))
    }

    fn xs_transaction_end(&mut self, _txn: XsTxn, _commit: bool) -> Result<(), XsError> {
        Ok(())
    }
}

impl Grants for FakeHost {
    fn window_reserve(&mut self, pages: u32) -> Result<(), GrantError> {
        assert!(!self.window_reserved, "window reserved twice");
        if pages as usize > self.cfg.max_window_pages {
            return Err(GrantError::NoSpace);
        }
        self.window.clear();
        self.window.resize(pages as usize, None);
        self.window_reserved = true;
        Ok(())
    }

    fn window_release(&mut self) {
        assert!(self.window_reserved, "window released twice");
        assert_eq!(self.live_mappings, 0, "window released while mapped");
        self.window_reserved = false;
    }

    fn map_batch(
        &mut self,
        dom: DomId,
        ops: &[GrantMapOp],
        results: &mut [Result<GrantHandle, GrantError>],
    ) {
        assert_eq!(dom, FE_DOM);
        assert_eq!(ops.len(), results.len());
        for (op, res) in ops.iter().zip(results.iter_mut()) {
            let page = op.window_page as usize;
            assert!(page < self.window.len(), "map outside the window");
            assert!(self.window[page].is_none(), "window page mapped twice");
            *res = if self.fail_maps > 0 {
                self.fail_maps -= 1;
                Err(GrantError::NoSpace)
            } else {
                match self.lookup(op.gref) {
                    Some(Grant::Data { readonly, .. }) if readonly && !op.readonly => {
                        Err(GrantError::Denied)
                    }
                    Some(Grant::Data { .. }) => {
                        self.next_handle += 1;
                        self.window[page] = Some(Mapping {
                            gref: op.gref,
                            readonly: op.readonly,
                            handle: self.next_handle,
                        });
                        self.live_mappings += 1;
                        Ok(GrantHandle(self.next_handle))
                    }
                    _ => Err(GrantError::BadRef),
                }
            };
        }
    }

    fn unmap_batch(&mut self, ops: &[GrantUnmapOp]) {
        for op in ops {
            let m = self.window[op.window_page as usize]
                .take()
                .expect("unmap of an unmapped page");
            assert_eq!(m.handle, op.handle.0, "unmap with a wrong handle");
            self.live_mappings -= 1;
        }
    }

    fn map_ring(
        &mut self,
        _queue: QueueId,
        dom: DomId,
        grefs: &[GrantRef],
    ) -> Result<SharedMem, GrantError> {
        assert_eq!(dom, FE_DOM);
        if grefs != self.ring_grefs.as_slice() {
            return Err(GrantError::BadRef);
        }
        let ring = self.ring_back.take().ok_or(GrantError::General)?;
        self.ring_mapped = true;
        Ok(ring)
    }

    fn unmap_ring(&mut self, _queue: QueueId, ring: SharedMem) {
        assert!(self.ring_mapped, "ring unmapped twice");
        self.ring_mapped = false;
        self.ring_back = Some(ring);
    }
    fn copy_in(
        &mut self,
        dom: DomId,
        grefs: &[GrantRef],
        out: &mut [u8],
    ) -> Result<(), GrantError> {
        if dom != FE_DOM || out.len() > grefs.len() * PAGE_SIZE {
            return Err(GrantError::General);
        }
        for (gref, chunk) in grefs.iter().zip(out.chunks_mut(PAGE_SIZE)) {
            let Some(Grant::Data { index, .. }) = self.lookup(*gref) else {
                return Err(GrantError::BadRef);
            };
            let at = index * PAGE_SIZE;
            chunk.copy_from_slice(&self.guest[at..at + chunk.len()]);
            self.pages_copied += 1;
        }
        Ok(())
    }
}

impl EventChannel for FakeHost {
    fn evtchn_bind(
        &mut self,
        _queue: QueueId,
        dom: DomId,
        remote_port: EvtchnPort,
    ) -> Result<(), EvtchnError> {
        assert!(self.evtchn.is_none(), "event channel bound twice");
        if (dom, remote_port) != (FE_DOM, FE_PORT) {
            return Err(EvtchnError::BadPort);
        }
        self.evtchn = Some((dom, remote_port));
        Ok(())
    }

    fn evtchn_notify(&mut self, _queue: QueueId) {
        assert!(self.evtchn.is_some(), "notify on an unbound channel");
        self.notifications += 1;
    }

    fn evtchn_eoi(&mut self, _queue: QueueId, delay_ms: u32) {
        self.eois += 1;
        self.last_eoi_delay = delay_ms;
        self.max_eoi_delay = self.max_eoi_delay.max(delay_ms);
    }

    fn evtchn_unbind(&mut self, _queue: QueueId) {
        assert!(self.evtchn.take().is_some(), "unbind of an unbound channel");
    }
}

impl Deferred for FakeHost {
    fn now_ms(&self) -> u64 {
        self.now_ms
    }
    fn schedule_run(&mut self, _queue: QueueId) {
        self.schedule_runs += 1;
    }
}

impl Store for FakeHost {
    fn store_open(&mut self, _params: OpenParams<'_>) -> Result<MediumInfo, OpenError> {
        assert!(self.root, "store opened before the root file system");
        assert!(!self.store_open, "store opened twice");
        self.store_open = true;
        Ok(self.cfg.medium)
    }

    fn store_info(&self) -> MediumInfo {
        self.cfg.medium
    }

    fn store_submit(&mut self, tag: IoTag, op: IoOp<'_>) -> Result<(), IoError> {
        assert!(self.store_open, "I/O on a closed store");
        if self.fail_submits > 0 {
            self.fail_submits -= 1;
            return Err(IoError::Busy);
        }
        let (kind, offset, iov, len) = match op {
            IoOp::Read { offset, iov } => (Kind::Read, offset, iov, self.check_iov(iov, true)),
            IoOp::Write { offset, iov } => (Kind::Write, offset, iov, self.check_iov(iov, false)),
            IoOp::Flush => (Kind::Flush, 0, &[][..], 0),
            IoOp::Discard { offset, len, .. } => (Kind::Discard, offset, &[][..], len),
        };
        assert!(
            offset
                .checked_add(len)
                .is_some_and(|end| end <= self.medium.len() as u64),
            "I/O outside the medium"
        );
        assert!(
            iov.len() <= self.cfg.max_iov,
            "more iovecs than FakeConfig::max_iov"
        );
        let Some(i) = self.free_slots.pop() else {
            return Err(IoError::Busy);
        };
        let s = &mut self.slots[i];
        s.tag = tag;
        s.kind = kind;
        s.offset = offset;
        s.len = len;
        s.iov.clear();
        s.iov.extend_from_slice(iov);
        self.queue.push_back(i);
        self.submitted += 1;
        Ok(())
    }

    fn store_close(&mut self) {
        assert!(self.store_open, "store closed twice");
        assert!(self.queue.is_empty(), "store closed with I/O in flight");
        self.store_open = false;
    }
}

impl Host for FakeHost {
    fn root_mounted(&self) -> bool {
        self.root
    }

    fn waits_for_hotplug(&self) -> bool {
        self.hotplug_gate
    }
}
