//! The input format of `fuzz_instance` and a builder for it: an
//! [`InstanceConfig`] header (the medium, the toolstack, the tunables, the
//! front-end's first layout) followed by operations of a hostile
//! front-end, a toolstack and a faulty platform.

use xbb::abi::{BLKIF_MAX_SEGMENTS_PER_REQUEST, MAX_SLOT_SIZE};
use xbb::host::IoError;

use crate::fuzz::builder::{body, header_codec, Code, Script};
use crate::fuzz::PushReq;

/// What one operation of a `fuzz_instance` input does; its byte code is
/// the discriminant (seeds and corpora are written in these codes:
/// append, never reorder).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub(crate) enum Op {
    XsWrite,
    XsRemove,
    Layout,
    FrontState,
    Watch,
    Slot,
    Push,
    ReqProd,
    Kick,
    Run,
    Complete,
    CompleteAll,
    Inject,
    Resize,
    Detach,
    Attach,
    RootMounted,
    Sysctl,
    Clock,
    ArmRspEvent,
    PageWrite,
    Hotplug,
}

impl Op {
    /// The operation of code byte `b`: every byte is one, modulo their
    /// number.
    pub(crate) fn decode(b: u8) -> Op {
        const ALL: [Op; 22] = [
            Op::XsWrite,
            Op::XsRemove,
            Op::Layout,
            Op::FrontState,
            Op::Watch,
            Op::Slot,
            Op::Push,
            Op::ReqProd,
            Op::Kick,
            Op::Run,
            Op::Complete,
            Op::CompleteAll,
            Op::Inject,
            Op::Resize,
            Op::Detach,
            Op::Attach,
            Op::RootMounted,
            Op::Sysctl,
            Op::Clock,
            Op::ArmRspEvent,
            Op::PageWrite,
            Op::Hotplug,
        ];
        ALL[usize::from(b) % ALL.len()]
    }
}

/// The fixed header of a [`fuzz_instance`](super::fuzz_instance) input.
/// Selectors pick from small tables of interesting values
/// ([`InstanceConfig::encode`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct InstanceConfig {
    /// The front-end's first layout uses `x86_64-abi` (else `x86_32-abi`).
    pub x86_64: bool,
    /// The store can only be read.
    pub read_only_medium: bool,
    /// The store can flush (flush and barrier are offered).
    pub can_flush: bool,
    /// The store can discard (and erase securely when `secure_discard`).
    pub can_discard: bool,
    /// 4096-byte logical sectors (else 512).
    pub sector_4k: bool,
    /// The back-end node `online` is 1.
    pub online: bool,
    /// The root file system is mounted only by a later operation.
    pub root_later: bool,
    /// The toolstack's `mode` is `r`.
    pub toolstack_read_only: bool,
    /// `requests_per_pass` selector: 256, 1, 3, 16.
    pub requests_per_pass: u8,
    /// `max_requests` selector: 1024, 1, 2, 5.
    pub max_requests: u8,
    /// `kva_pages` selector: 0 (default sizing), 11, 16, 40.
    pub kva_pages: u8,
    /// `max_request_size` selector: 1 MiB, 44 KiB, 64 KiB, 128 KiB.
    pub max_request_size: u8,
    /// `max_queues` selector: 4, 1, 2, 3.
    pub max_queues: u8,
    /// `max_ring_page_order` selector: 2, 0, 1, 5.
    pub max_ring_order: u8,
    /// `max_persistent_grants` selector: 1056, 1, 3, 0.
    pub max_persistent_grants: u8,
    /// `max_indirect_segments` selector: 256, 0, 11, 32.
    pub max_indirect_segments: u8,
    /// Medium size: `(medium % 64 + 1) * 8` sectors of 512 bytes.
    pub medium: u8,
    /// The platform waits for the hotplug script (and the toolstack names
    /// one): connect only after `hotplug-status` says so.
    pub hotplug_gate: bool,
    /// `hw.xbb.no_coalesce_reqs` = 1.
    pub no_coalesce: bool,
    /// The front-end's first layout: 0 one ring with the legacy keys,
    /// 1 two queues, 2 four queues, 3 three queues.
    pub queues: u8,
    /// The first layout's ring order, 0..=2.
    pub order: u8,
    /// The front-end writes `feature-persistent = 1`.
    pub persistent: bool,
    /// The front-end is Initialised before the back-end attaches.
    pub connect_at_attach: bool,
    /// The toolstack's `discard-enable` is 0.
    pub discard_disabled: bool,
    /// The store can erase securely (with `can_discard`).
    pub secure_discard: bool,
}

pub(crate) const RPP: [u64; 4] = [256, 1, 3, 16];
pub(crate) const MAX_REQS: [u64; 4] = [1024, 1, 2, 5];
pub(crate) const KVA: [u64; 4] = [0, 11, 16, 40];
pub(crate) const MAX_RS: [u64; 4] = [1 << 20, 45056, 65536, 131072];
pub(crate) const MAX_QUEUES: [u64; 4] = [4, 1, 2, 3];
pub(crate) const MAX_ORDER: [u64; 4] = [2, 0, 1, 5];
pub(crate) const MAX_PERSISTENT: [u64; 4] = [1056, 1, 3, 0];
pub(crate) const MAX_INDIRECT: [u64; 4] = [256, 0, 11, 32];
/// The queues of a first layout, by selector (0: the legacy keys).
pub(crate) const FIRST_QUEUES: [u8; 4] = [0, 2, 4, 3];

header_codec! { InstanceConfig [5]:
    x86_64 1, read_only_medium 1, can_flush 1, can_discard 1,
    sector_4k 1, online 1, root_later 1, toolstack_read_only 1,
    requests_per_pass 2, max_requests 2, kva_pages 2, max_request_size 2,
    max_queues 2, max_ring_order 2, max_persistent_grants 2, max_indirect_segments 2,
    medium 6, hotplug_gate 1, no_coalesce 1,
    queues 2, order 2 % 3, persistent 1, connect_at_attach 1, discard_disabled 1, secure_discard 1,
}

/// How a store I/O ends, in [`InstanceScript`] operations.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Completion {
    /// Success: the I/O is performed.
    Ok,
    /// `EIO`.
    Io,
    /// The medium is gone.
    Gone,
    /// No space.
    NoSpace,
    /// The store cannot do this.
    NotSupported,
    /// The store was busy.
    Busy,
}

impl Code for Completion {
    fn code(self) -> u8 {
        match self {
            Completion::Ok => 0,
            Completion::Io => 3,
            Completion::Gone => 4,
            Completion::NoSpace => 5,
            Completion::NotSupported => 6,
            Completion::Busy => 7,
        }
    }
}

impl Completion {
    /// Half the byte values succeed.
    pub(crate) fn decode(b: u8) -> Result<(), IoError> {
        match b % 8 {
            3 => Err(IoError::Io),
            4 => Err(IoError::Gone),
            5 => Err(IoError::NoSpace),
            6 => Err(IoError::NotSupported),
            7 => Err(IoError::Busy),
            _ => Ok(()),
        }
    }
}

/// A front-end node [`InstanceScript::xs_write`] writes: its key
/// selector. Keys under a queue directory take a queue, the others
/// ignore it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FeKey {
    /// `ring-ref`.
    RingRef,
    /// `ring-ref<N>`, N from the argument.
    RingRefN,
    /// `ring-page-order`.
    RingPageOrder,
    /// `num-ring-pages`.
    NumRingPages,
    /// `event-channel`.
    EventChannel,
    /// `protocol`.
    Protocol,
    /// `feature-persistent`.
    FeaturePersistent,
    /// `multi-queue-num-queues`.
    NumQueues,
    /// `state` (without a watch event).
    State,
    /// A node nobody reads.
    Other,
}

/// A value [`InstanceScript::xs_write`] writes, by selector.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FeValue {
    /// Page `arg % 4` of the ring offered in slot `arg / 4 % 4`.
    RingGref,
    /// The port of the ring offered in slot `arg % 4`.
    Port,
    /// The number `arg`.
    Small,
    /// An empty value.
    Empty,
    /// 4294967296.
    TooBig,
    /// -1.
    Negative,
    /// `x86_32-abi`.
    Abi32,
    /// `x86_64-abi`.
    Abi64,
    /// 4294967295.
    Max32,
    /// The next `arg % 24` raw bytes of the input.
    Raw,
}

/// The segments a request carries in its slot.
fn inline_segments(r: &PushReq) -> usize {
    match r.op % 8 {
        6 | 7 => 0,
        _ if r.nsegs < 208 => usize::from(r.nsegs % 12),
        _ => usize::from(r.nsegs).min(BLKIF_MAX_SEGMENTS_PER_REQUEST),
    }
}

/// The input format of [`fuzz_instance`](super::fuzz_instance).
#[derive(Clone, Copy, Debug)]
pub struct InstanceInput;

body!(InstanceInput: InstanceConfig, Op, Completion, 8);

/// Builds [`fuzz_instance`](super::fuzz_instance) inputs by name, for
/// seeds and corpora.
pub type InstanceScript = Script<InstanceInput>;

impl Script<InstanceInput> {
    /// Writes a front-end node (`queue < 4`: under `queue-N/` where the
    /// key allows it) without a watch event; `arg` parametrises `key`
    /// (`ring-ref<arg % 32>`) and `value`; `raw` is the value of
    /// [`FeValue::Raw`].
    pub fn xs_write(
        &mut self,
        key: FeKey,
        queue: u8,
        arg: u8,
        value: FeValue,
        raw: &[u8],
    ) -> &mut Self {
        self.op(Op::XsWrite as u8, &[key as u8, queue, arg, value as u8]);
        if value == FeValue::Raw {
            let n = usize::from(arg % 24).min(raw.len());
            let mut v = raw[..n].to_vec();
            v.resize(usize::from(arg % 24), 0);
            self.more(&v);
        }
        self
    }

    /// Removes a front-end node (and its children).
    pub fn xs_remove(&mut self, key: FeKey, queue: u8, arg: u8) -> &mut Self {
        self.op(Op::XsRemove as u8, &[key as u8, queue, arg])
    }

    /// The front-end (re)announces its rings: `queues` 0 one ring with the
    /// legacy keys, else that many queues (`% 5`); ring order `order % 3`;
    /// `persistent` writes `feature-persistent = 1`; `flip_abi` uses the
    /// other ABI than the header's. Rings no queue maps are
    /// re-initialised.
    pub fn layout(&mut self, queues: u8, order: u8, persistent: bool, flip_abi: bool) -> &mut Self {
        let flags = u8::from(persistent) | u8::from(flip_abi) << 1;
        self.op(Op::Layout as u8, &[queues, order, flags])
    }

    /// Fires the watch without a change.
    pub fn watch(&mut self) -> &mut Self {
        self.op(Op::Watch as u8, &[])
    }

    /// Writes raw bytes into slot `cursor + rel` of ring `ring`; `rel == 0`
    /// also advances the cursor.
    pub fn slot(&mut self, ring: u8, rel: i8, bytes: &[u8]) -> &mut Self {
        let n = bytes.len().min(MAX_SLOT_SIZE);
        self.op(Op::Slot as u8, &[ring, rel as u8, n as u8]);
        self.more(&bytes[..n]);
        self
    }

    /// Encodes a structured request at the cursor of ring `ring` (`% 4`)
    /// and advances it.
    pub fn push(&mut self, ring: u8, r: &PushReq) -> &mut Self {
        // An indirect request names its first descriptor page.
        let first_page = [r.gref];
        let indirect: &[u8] = if r.op % 8 == 7 { &first_page } else { &[] };
        let raw_op = matches!(r.op % 8, 6 | 7);
        let segments = inline_segments(r);
        self.request(Op::Push as u8, &[ring], r, raw_op, indirect, segments)
    }

    /// Pushes `reqs` on ring `ring`, publishes them there and kicks its
    /// queue.
    pub fn requests(&mut self, ring: u8, reqs: &[PushReq]) -> &mut Self {
        for r in reqs {
            self.push(ring, r);
        }
        self.publish(ring).kick(ring)
    }

    /// Publishes `req_prod = cursor` on ring `ring`.
    pub fn publish(&mut self, ring: u8) -> &mut Self {
        self.op(Op::ReqProd as u8, &[ring, 0])
    }

    /// Publishes `req_prod = cursor + ahead` on ring `ring`.
    pub fn req_prod_ahead(&mut self, ring: u8, ahead: u8) -> &mut Self {
        self.op(Op::ReqProd as u8, &[ring, 1, ahead])
    }

    /// Publishes any `req_prod` on ring `ring`.
    pub fn req_prod_raw(&mut self, ring: u8, v: u32) -> &mut Self {
        self.op(Op::ReqProd as u8, &[ring, 3]);
        self.more(&v.to_le_bytes());
        self
    }

    /// Queue `queue`'s event channel fires: `Instance::event`.
    pub fn kick(&mut self, queue: u8) -> &mut Self {
        self.op(Op::Kick as u8, &[queue])
    }

    /// Honours every deferred run the instance asked for.
    pub fn run(&mut self) -> &mut Self {
        self.op(Op::Run as u8, &[])
    }

    /// Resizes the medium to `(size % 65) * 8` sectors (0: empty) and
    /// tells the instance.
    pub fn resize(&mut self, size: u8) -> &mut Self {
        self.op(Op::Resize as u8, &[size])
    }

    /// Device removal: `Instance::detach`.
    pub fn detach(&mut self) -> &mut Self {
        self.op(Op::Detach as u8, &[])
    }

    /// Once detached, a new instance of the same vbd attaches.
    pub fn attach(&mut self) -> &mut Self {
        self.op(Op::Attach as u8, &[])
    }

    /// Advances the clock by `ms_sel` selector: 0 none, 1 a millisecond,
    /// 2 a minute and more (persistent grants go idle), else `ms_sel` ms.
    pub fn clock(&mut self, ms_sel: u8) -> &mut Self {
        self.op(Op::Clock as u8, &[ms_sel])
    }

    /// The front-end re-arms `rsp_event` on ring `ring`.
    pub fn arm_rsp_event(&mut self, ring: u8) -> &mut Self {
        self.op(Op::ArmRspEvent as u8, &[ring])
    }

    /// Writes `bytes` (at most 255) into data page `page % 16` at byte
    /// `offset`: indirect descriptors, data.
    pub fn page_write(&mut self, page: u8, offset: u16, bytes: &[u8]) -> &mut Self {
        let n = bytes.len().min(255);
        let [lo, hi] = offset.to_le_bytes();
        self.op(Op::PageWrite as u8, &[page, lo, hi, n as u8]);
        self.more(&bytes[..n]);
        self
    }

    /// The hotplug script reports: `hotplug-status` = `connected` (or
    /// `v` odd: something else), and the back-end's watch fires.
    pub fn hotplug(&mut self, v: u8) -> &mut Self {
        self.op(Op::Hotplug as u8, &[v])
    }
}
