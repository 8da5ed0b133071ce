//! The wire formats of Xen's `io/blkif.h` and the shared-ring header of
//! `io/ring.h`, for every guest ABI a front-end can announce in its
//! `protocol` node (`io/protocols.h`).
//!
//! `blkif.h` defines its requests with natural C alignment, so the same
//! header gives two layouts: the i386 one, where `uint64_t` is 4-aligned
//! (`x86_32-abi`), and the x86_64 one, where it is 8-aligned (`x86_64-abi`;
//! `arm-abi` has the same layout). Both are declared below from one field
//! list per struct (`blkif_struct!`: each field with its two offsets) as
//! `#[repr(C)]` structs with compile-time checks of size and field offsets; the
//! `tests/abi_headers.rs` integration test checks the same numbers against
//! the C headers themselves.
//!
//! The structs document the layout; the encoders and decoders work on byte
//! copies at offsets taken from those structs with `offset_of!`, so they
//! cannot disagree. Decoding is total: any bytes a guest writes decode to
//! some [`BlkifRequest`], which the `request` module then validates. The
//! x86_32 and x86_64 forms become one canonical form here and nowhere else.

use core::mem::{offset_of, size_of};

// ---------------------------------------------------------------------------
// Constants of blkif.h, protocols.h and ring.h
// ---------------------------------------------------------------------------

/// `BLKIF_OP_READ`: read sectors from the device into the segments.
pub const BLKIF_OP_READ: u8 = 0;
/// `BLKIF_OP_WRITE`: write sectors from the segments to the device.
pub const BLKIF_OP_WRITE: u8 = 1;
/// `BLKIF_OP_WRITE_BARRIER`: a write ordered after every earlier request
/// (`feature-barrier`).
pub const BLKIF_OP_WRITE_BARRIER: u8 = 2;
/// `BLKIF_OP_FLUSH_DISKCACHE`: flush the device's write cache, optionally
/// with data (`feature-flush-cache`).
pub const BLKIF_OP_FLUSH_DISKCACHE: u8 = 3;
/// `BLKIF_OP_RESERVED_1`: reserved (used by an old, incompatible extension).
pub const BLKIF_OP_RESERVED_1: u8 = 4;
/// `BLKIF_OP_DISCARD`: discard a sector range (`feature-discard`); the slot
/// holds a `blkif_request_discard`.
pub const BLKIF_OP_DISCARD: u8 = 5;
/// `BLKIF_OP_INDIRECT`: a read or write whose segments live in granted
/// indirect pages (`feature-max-indirect-segments`); the slot holds a
/// `blkif_request_indirect`.
pub const BLKIF_OP_INDIRECT: u8 = 6;

/// `BLKIF_MAX_SEGMENTS_PER_REQUEST`: segments in one direct request.
pub const BLKIF_MAX_SEGMENTS_PER_REQUEST: usize = 11;
/// `BLKIF_MAX_INDIRECT_PAGES_PER_REQUEST`: grant references of indirect
/// pages in one indirect request.
pub const BLKIF_MAX_INDIRECT_PAGES_PER_REQUEST: usize = 8;
/// `BLKIF_DISCARD_SECURE`: the discard must be a secure erase
/// (`discard-secure`).
pub const BLKIF_DISCARD_SECURE: u8 = 1;

/// `BLKIF_RSP_OKAY`: the operation completed successfully.
pub const BLKIF_RSP_OKAY: i16 = 0;
/// `BLKIF_RSP_ERROR`: the operation failed (`-EIO`).
pub const BLKIF_RSP_ERROR: i16 = -1;
/// `BLKIF_RSP_EOPNOTSUPP`: the operation is not supported.
pub const BLKIF_RSP_EOPNOTSUPP: i16 = -2;

/// `VDISK_CDROM`: the `info` bit of a CD-ROM.
pub const VDISK_CDROM: u32 = 1;
/// `VDISK_REMOVABLE`: the `info` bit of removable media.
pub const VDISK_REMOVABLE: u32 = 2;
/// `VDISK_READONLY`: the `info` bit of read-only media.
pub const VDISK_READONLY: u32 = 4;

/// `log2` of the 512-byte sector every `blkif` sector number counts in.
pub const SECTOR_SHIFT: u32 = 9;
/// The 512-byte `blkif` sector.
pub const SECTOR_SIZE: u32 = 1 << SECTOR_SHIFT;
/// Sectors in one 4096-byte granted page (`first_sect`/`last_sect` range).
pub const SECTORS_PER_PAGE: u32 = (crate::host::PAGE_SIZE as u32) >> SECTOR_SHIFT;

/// `XEN_IO_PROTO_ABI_X86_32`.
pub const XEN_IO_PROTO_ABI_X86_32: &str = "x86_32-abi";
/// `XEN_IO_PROTO_ABI_X86_64`.
pub const XEN_IO_PROTO_ABI_X86_64: &str = "x86_64-abi";
/// `XEN_IO_PROTO_ABI_ARM`.
pub const XEN_IO_PROTO_ABI_ARM: &str = "arm-abi";

/// Bytes of the shared-ring header before the first ring entry
/// (`offsetof(struct blkif_sring, ring)`).
pub const SRING_HEADER_SIZE: usize = 64;
/// The largest ring-page order a back-end offers (`max-ring-page-order`).
pub const MAX_RING_PAGE_ORDER: u32 = 5;
/// The largest number of ring pages (`1 << MAX_RING_PAGE_ORDER`).
pub const MAX_RING_PAGES: u32 = 1 << MAX_RING_PAGE_ORDER;
/// The largest request or response slot of any ABI, for stack buffers.
pub const MAX_SLOT_SIZE: usize = 112;
/// The largest response of any ABI (`struct blkif_response`), for the
/// stack buffer a response is encoded in.
pub const MAX_RSP_SIZE: usize = 16;
/// `sizeof(struct blkif_request_segment)`; an indirect page holds
/// `4096 / SEGMENT_SIZE` segments.
pub const SEGMENT_SIZE: usize = 8;

/// Byte offset of `req_prod` in the shared-ring header.
pub const SRING_REQ_PROD: usize = offset_of!(SringHeader, req_prod);
/// Byte offset of `req_event` in the shared-ring header.
pub const SRING_REQ_EVENT: usize = offset_of!(SringHeader, req_event);
/// Byte offset of `rsp_prod` in the shared-ring header.
pub const SRING_RSP_PROD: usize = offset_of!(SringHeader, rsp_prod);
/// Byte offset of `rsp_event` in the shared-ring header.
pub const SRING_RSP_EVENT: usize = offset_of!(SringHeader, rsp_event);

// ---------------------------------------------------------------------------
// Wire structs
// ---------------------------------------------------------------------------

/// `struct blkif_request_segment`: one granted page and the sectors of it
/// the request transfers. Same layout in every ABI.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BlkifRequestSegment {
    /// `gref` (offset 0): grant reference of the data page.
    pub gref: u32,
    /// `first_sect` (offset 4): first sector of the page, inclusive.
    pub first_sect: u8,
    /// `last_sect` (offset 5): last sector of the page, inclusive.
    pub last_sect: u8,
}

const _: () = {
    assert!(size_of::<BlkifRequestSegment>() == SEGMENT_SIZE);
    assert!(offset_of!(BlkifRequestSegment, gref) == 0);
    assert!(offset_of!(BlkifRequestSegment, first_sect) == 4);
    assert!(offset_of!(BlkifRequestSegment, last_sect) == 5);
};

/// Declares one wire struct with its size and field offsets, each checked
/// at compile time; every field's documentation ends with its offset.
macro_rules! wire_struct {
    (
        $(#[$attr:meta])*
        $name:ident = $size:literal {
            $( $(#[doc = $fdoc:literal])* $field:ident: $ty:ty = $off:literal, )*
        }
    ) => {
        $(#[$attr])*
        #[derive(Clone, Copy, Debug)]
        pub struct $name {
            $( $(#[doc = $fdoc])* #[doc = concat!("\n\nAt byte ", $off, ".")] pub $field: $ty, )*
        }

        const _: () = {
            assert!(size_of::<$name>() == $size);
            $( assert!(offset_of!($name, $field) == $off); )*
        };
    };
}

/// Declares a `blkif.h` struct in its two layouts from one field list:
/// `field: type = i386 offset, x86_64 offset`, then the fields only the
/// i386 form has. The i386 form is `packed(4)` (its `uint64_t` is
/// 4-aligned), the x86_64 form has natural alignment.
macro_rules! blkif_struct {
    (
        $(#[doc = $doc:literal])*
        $n32:ident = $s32:literal, $n64:ident = $s64:literal {
            $( $(#[doc = $fdoc:literal])* $field:ident: $ty:ty = $o32:literal, $o64:literal; )*
        }
        $( i386 only { $( $(#[doc = $tdoc:literal])* $tfield:ident: $tty:ty = $to:literal; )* } )?
    ) => {
        wire_struct! {
            $(#[doc = $doc])*
            #[doc = concat!("\n\nThe i386 layout: ", $s32, " bytes.")]
            #[repr(C, packed(4))]
            $n32 = $s32 {
                $( $(#[doc = $fdoc])* $field: $ty = $o32, )*
                $($( $(#[doc = $tdoc])* $tfield: $tty = $to, )*)?
            }
        }
        wire_struct! {
            $(#[doc = $doc])*
            #[doc = concat!("\n\nThe x86_64 (and ARM) layout: ", $s64, " bytes.")]
            #[repr(C)]
            $n64 = $s64 {
                $( $(#[doc = $fdoc])* $field: $ty = $o64, )*
            }
        }
    };
}

blkif_struct! {
    /// `struct blkif_request`.
    X86_32Request = 108, X86_64Request = 112 {
        /// `operation`: `BLKIF_OP_*`.
        operation: u8 = 0, 0;
        /// `nr_segments`.
        nr_segments: u8 = 1, 1;
        /// `handle`: the virtual device handle.
        handle: u16 = 2, 2;
        /// `id`: the guest's tag, echoed in the response.
        id: u64 = 4, 8;
        /// `sector_number`.
        sector_number: u64 = 12, 16;
        /// `seg`.
        seg: [BlkifRequestSegment; BLKIF_MAX_SEGMENTS_PER_REQUEST] = 20, 24;
    }
}

blkif_struct! {
    /// `struct blkif_request_discard`.
    X86_32DiscardRequest = 28, X86_64DiscardRequest = 32 {
        /// `operation`: `BLKIF_OP_DISCARD`.
        operation: u8 = 0, 0;
        /// `flag`: `BLKIF_DISCARD_SECURE` or zero.
        flag: u8 = 1, 1;
        /// `handle`.
        handle: u16 = 2, 2;
        /// `id`.
        id: u64 = 4, 8;
        /// `sector_number`.
        sector_number: u64 = 12, 16;
        /// `nr_sectors`.
        nr_sectors: u64 = 20, 24;
    }
}

blkif_struct! {
    /// `struct blkif_request_indirect`. The i386 form has the trailing
    /// `pad` that `blkif.h` adds under `__i386__`; the x86_64 form is 60
    /// bytes plus tail padding to 8-byte alignment.
    X86_32IndirectRequest = 64, X86_64IndirectRequest = 64 {
        /// `operation`: `BLKIF_OP_INDIRECT`.
        operation: u8 = 0, 0;
        /// `indirect_op`: `BLKIF_OP_READ` or `BLKIF_OP_WRITE`.
        indirect_op: u8 = 1, 1;
        /// `nr_segments`: segments in the indirect pages.
        nr_segments: u16 = 2, 2;
        /// `id`.
        id: u64 = 4, 8;
        /// `sector_number`.
        sector_number: u64 = 12, 16;
        /// `handle`.
        handle: u16 = 20, 24;
        /// `indirect_grefs`: grant references of the indirect pages.
        indirect_grefs: [u32; BLKIF_MAX_INDIRECT_PAGES_PER_REQUEST] = 24, 28;
    }
    i386 only {
        /// `pad`: makes the i386 struct 64 bytes long.
        pad: u64 = 56;
    }
}

blkif_struct! {
    /// `struct blkif_response`.
    X86_32Response = 12, X86_64Response = 16 {
        /// `id`: copied from the request.
        id: u64 = 0, 0;
        /// `operation`: copied from the request.
        operation: u8 = 8, 8;
        /// `status`: `BLKIF_RSP_*`.
        status: i16 = 10, 10;
    }
}

/// The header of `struct blkif_sring` (`DEFINE_RING_TYPES` in `ring.h`):
/// the four indices, the private union and padding up to the first entry.
/// Same layout in every ABI.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct SringHeader {
    /// `req_prod` (offset 0): written by the front-end.
    pub req_prod: u32,
    /// `req_event` (offset 4): written by the back-end; the request index
    /// at which it wants an event.
    pub req_event: u32,
    /// `rsp_prod` (offset 8): written by the back-end.
    pub rsp_prod: u32,
    /// `rsp_event` (offset 12): written by the front-end; the response
    /// index at which it wants an event.
    pub rsp_event: u32,
    /// `pvt` (offset 16): a union unused by `blkif`.
    pub pvt: [u8; 4],
    /// `__pad` (offset 20).
    pub pad: [u8; 44],
}

const _: () = {
    assert!(size_of::<SringHeader>() == SRING_HEADER_SIZE);
    assert!(offset_of!(SringHeader, req_prod) == 0);
    assert!(offset_of!(SringHeader, req_event) == 4);
    assert!(offset_of!(SringHeader, rsp_prod) == 8);
    assert!(offset_of!(SringHeader, rsp_event) == 12);
    assert!(offset_of!(SringHeader, pvt) == 16);
    assert!(offset_of!(SringHeader, pad) == 20);
};

// ---------------------------------------------------------------------------
// Byte layouts derived from the structs
// ---------------------------------------------------------------------------

/// Field offsets of one ABI, taken from its structs.
struct Layout {
    req_size: usize,
    rsp_size: usize,
    // blkif_request
    rw_nr_segments: usize,
    rw_handle: usize,
    rw_id: usize,
    rw_sector: usize,
    rw_seg: usize,
    // blkif_request_discard
    d_flag: usize,
    d_handle: usize,
    d_id: usize,
    d_sector: usize,
    d_nr_sectors: usize,
    // blkif_request_indirect
    i_op: usize,
    i_nr_segments: usize,
    i_id: usize,
    i_sector: usize,
    i_handle: usize,
    i_grefs: usize,
    // blkif_response
    r_id: usize,
    r_operation: usize,
    r_status: usize,
}

/// The [`Layout`] of one ABI's request, discard, indirect and response
/// structs.
macro_rules! layout {
    ($rw:ty, $discard:ty, $indirect:ty, $rsp:ty) => {
        Layout {
            req_size: size_of::<$rw>(),
            rsp_size: size_of::<$rsp>(),
            rw_nr_segments: offset_of!($rw, nr_segments),
            rw_handle: offset_of!($rw, handle),
            rw_id: offset_of!($rw, id),
            rw_sector: offset_of!($rw, sector_number),
            rw_seg: offset_of!($rw, seg),
            d_flag: offset_of!($discard, flag),
            d_handle: offset_of!($discard, handle),
            d_id: offset_of!($discard, id),
            d_sector: offset_of!($discard, sector_number),
            d_nr_sectors: offset_of!($discard, nr_sectors),
            i_op: offset_of!($indirect, indirect_op),
            i_nr_segments: offset_of!($indirect, nr_segments),
            i_id: offset_of!($indirect, id),
            i_sector: offset_of!($indirect, sector_number),
            i_handle: offset_of!($indirect, handle),
            i_grefs: offset_of!($indirect, indirect_grefs),
            r_id: offset_of!($rsp, id),
            r_operation: offset_of!($rsp, operation),
            r_status: offset_of!($rsp, status),
        }
    };
}

const LAYOUT_32: Layout = layout!(
    X86_32Request,
    X86_32DiscardRequest,
    X86_32IndirectRequest,
    X86_32Response
);

const LAYOUT_64: Layout = layout!(
    X86_64Request,
    X86_64DiscardRequest,
    X86_64IndirectRequest,
    X86_64Response
);

// Every struct of both ABIs fits in the stack buffers sized by MAX_SLOT_SIZE,
// and the discard and indirect forms fit inside the request slot.
const _: () = {
    assert!(LAYOUT_32.req_size <= MAX_SLOT_SIZE && LAYOUT_64.req_size <= MAX_SLOT_SIZE);
    assert!(LAYOUT_32.req_size == MAX_SLOT_SIZE || LAYOUT_64.req_size == MAX_SLOT_SIZE);
    assert!(size_of::<X86_32DiscardRequest>() <= LAYOUT_32.req_size);
    assert!(size_of::<X86_64DiscardRequest>() <= LAYOUT_64.req_size);
    assert!(size_of::<X86_32IndirectRequest>() <= LAYOUT_32.req_size);
    assert!(size_of::<X86_64IndirectRequest>() <= LAYOUT_64.req_size);
    assert!(LAYOUT_32.rsp_size <= LAYOUT_32.req_size);
    assert!(LAYOUT_64.rsp_size <= LAYOUT_64.req_size);
    assert!(LAYOUT_32.rsp_size <= MAX_RSP_SIZE && LAYOUT_64.rsp_size <= MAX_RSP_SIZE);
};

/// A private copy of one slot, whole (zero-padded when the copy it was
/// made from is short), read at constant offsets, little-endian. With the
/// layout a constant ([`Abi::with_layout`]) each field read is one load.
#[derive(Clone, Copy)]
struct Slot<'a>(&'a [u8; MAX_SLOT_SIZE]);

impl Slot<'_> {
    #[inline]
    fn bytes<const N: usize>(&self, off: usize) -> [u8; N] {
        let mut out = [0u8; N];
        if let Some(src) = self.0.get(off..off.saturating_add(N)) {
            out.copy_from_slice(src);
        }
        out
    }

    #[inline]
    fn u8(&self, off: usize) -> u8 {
        self.0.get(off).copied().unwrap_or(0)
    }
    #[inline]
    fn u16(&self, off: usize) -> u16 {
        u16::from_le_bytes(self.bytes(off))
    }
    #[inline]
    fn i16(&self, off: usize) -> i16 {
        i16::from_le_bytes(self.bytes(off))
    }
    #[inline]
    fn u32(&self, off: usize) -> u32 {
        u32::from_le_bytes(self.bytes(off))
    }
    #[inline]
    fn u64(&self, off: usize) -> u64 {
        u64::from_le_bytes(self.bytes(off))
    }
}

/// Runs `f` over `bytes` as a whole [`Slot`]: `bytes` itself when it
/// holds a whole slot (the back ring's copy: no second copy), else a copy
/// zero-padded to a whole slot, so that missing bytes read as zero. (A
/// slot of the i386 layout is 108 bytes: no field lies in the last four
/// bytes of a whole slot.)
#[inline]
fn with_slot<T>(bytes: &[u8], f: impl FnOnce(Slot<'_>) -> T) -> T {
    if let Some(whole) = bytes.first_chunk::<MAX_SLOT_SIZE>() {
        return f(Slot(whole));
    }
    let mut padded = [0u8; MAX_SLOT_SIZE];
    let n = bytes.len().min(MAX_SLOT_SIZE);
    padded[..n].copy_from_slice(&bytes[..n]);
    f(Slot(&padded))
}

/// A slot being encoded: a zeroed buffer the encoders write fields into.
struct SlotBuf([u8; MAX_SLOT_SIZE]);

impl SlotBuf {
    fn put(&mut self, off: usize, v: &[u8]) {
        put(&mut self.0, off, v);
    }
}

/// Writes `v` at `off` of `buf`; nothing when it does not fit.
fn put(buf: &mut [u8], off: usize, v: &[u8]) {
    if let Some(dst) = buf.get_mut(off..off.saturating_add(v.len())) {
        dst.copy_from_slice(v);
    }
}

/// Copies the first `n` bytes of `src` into `dst`, never past either end.
fn copy_out(src: &[u8], dst: &mut [u8], n: usize) {
    debug_assert!(dst.len() >= n, "slot shorter than the wire struct");
    let n = n.min(dst.len()).min(src.len());
    dst[..n].copy_from_slice(&src[..n]);
}

// ---------------------------------------------------------------------------
// The canonical form
// ---------------------------------------------------------------------------

/// The guest ABI of a connection: which layout its ring slots use.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Abi {
    /// `x86_32-abi`: i386 layout, `uint64_t` 4-aligned.
    X86_32,
    /// `x86_64-abi` (and `arm-abi`): natural 8-byte alignment of `uint64_t`.
    X86_64,
}

/// One segment of a request: a granted page and an inclusive sector range
/// within it. Not validated yet.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Segment {
    /// Grant reference of the data page.
    pub gref: u32,
    /// First sector of the page, inclusive.
    pub first_sect: u8,
    /// Last sector of the page, inclusive.
    pub last_sect: u8,
}

impl Segment {
    /// The segment covering all of page `gref` (sectors 0 to 7).
    pub const fn whole_page(gref: u32) -> Segment {
        Segment {
            gref,
            first_sect: 0,
            last_sect: (SECTORS_PER_PAGE - 1) as u8,
        }
    }
}

/// The operation-specific part of a request, chosen by its `operation`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RequestBody {
    /// `struct blkif_request`: read, write, barrier, flush and every
    /// unknown operation. The first `nr_segments` segments (all eleven
    /// when it says more) are decoded; the others are not part of the
    /// request and are zero.
    Rw {
        /// `nr_segments`, as written by the guest.
        nr_segments: u8,
        /// `handle`.
        handle: u16,
        /// `sector_number`.
        sector_number: u64,
        /// `seg`.
        seg: [Segment; BLKIF_MAX_SEGMENTS_PER_REQUEST],
    },
    /// `struct blkif_request_discard` (`BLKIF_OP_DISCARD`).
    Discard {
        /// `flag`: `BLKIF_DISCARD_SECURE` or zero.
        flag: u8,
        /// `handle`.
        handle: u16,
        /// `sector_number`.
        sector_number: u64,
        /// `nr_sectors`.
        nr_sectors: u64,
    },
    /// `struct blkif_request_indirect` (`BLKIF_OP_INDIRECT`).
    Indirect {
        /// `indirect_op`: the real operation.
        indirect_op: u8,
        /// `nr_segments`: segments held by the indirect pages.
        nr_segments: u16,
        /// `handle`.
        handle: u16,
        /// `sector_number`.
        sector_number: u64,
        /// `indirect_grefs`: all eight, whatever `nr_segments` says.
        indirect_grefs: [u32; BLKIF_MAX_INDIRECT_PAGES_PER_REQUEST],
    },
}

/// One request slot in canonical form, copied out of the ring, not yet
/// validated.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BlkifRequest {
    /// `operation`: `BLKIF_OP_*` (or anything a guest wrote).
    pub operation: u8,
    /// `id`: the guest's tag, echoed in the response.
    pub id: u64,
    /// The operation-specific fields.
    pub body: RequestBody,
}

impl BlkifRequest {
    /// A `struct blkif_request` (read, write, flush, barrier, or any other
    /// operation a front-end writes there) of `segments` at
    /// `sector_number`, as a front-end builds it: handle 0, at most
    /// [`BLKIF_MAX_SEGMENTS_PER_REQUEST`] segments (the rest are ignored).
    pub fn rw(operation: u8, id: u64, sector_number: u64, segments: &[Segment]) -> BlkifRequest {
        let mut seg = [Segment::default(); BLKIF_MAX_SEGMENTS_PER_REQUEST];
        let n = segments.len().min(seg.len());
        seg[..n].copy_from_slice(&segments[..n]);
        BlkifRequest {
            operation,
            id,
            body: RequestBody::Rw {
                nr_segments: n as u8,
                handle: 0,
                sector_number,
                seg,
            },
        }
    }
}

/// One response in canonical form.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BlkifResponse {
    /// `id`: copied from the request.
    pub id: u64,
    /// `operation`: copied from the request.
    pub operation: u8,
    /// `status`: `BLKIF_RSP_*`.
    pub status: i16,
}

/// Decodes one 8-byte `struct blkif_request_segment` (an entry of an
/// indirect page). Total: missing bytes read as zero.
#[inline]
pub fn decode_segment(bytes: &[u8]) -> Segment {
    if let Some(b) = bytes.first_chunk::<SEGMENT_SIZE>() {
        return segment_from(b);
    }
    let mut b = [0u8; SEGMENT_SIZE];
    let n = bytes.len().min(SEGMENT_SIZE);
    b[..n].copy_from_slice(&bytes[..n]);
    segment_from(&b)
}

/// The segment in the 8 bytes `b`.
#[inline]
fn segment_from(b: &[u8; SEGMENT_SIZE]) -> Segment {
    const GREF: usize = offset_of!(BlkifRequestSegment, gref);
    Segment {
        gref: u32::from_le_bytes([b[GREF], b[GREF + 1], b[GREF + 2], b[GREF + 3]]),
        first_sect: b[offset_of!(BlkifRequestSegment, first_sect)],
        last_sect: b[offset_of!(BlkifRequestSegment, last_sect)],
    }
}

/// Encodes one `struct blkif_request_segment` into the first
/// [`SEGMENT_SIZE`] bytes of `out` (padding zero), as a front-end filling
/// an indirect page does.
pub fn encode_segment(seg: &Segment, out: &mut [u8]) {
    let mut s = SlotBuf([0; MAX_SLOT_SIZE]);
    put_segment(&mut s, 0, seg);
    copy_out(&s.0, out, SEGMENT_SIZE);
}

fn put_segment(s: &mut SlotBuf, off: usize, seg: &Segment) {
    s.put(
        off + offset_of!(BlkifRequestSegment, gref),
        &seg.gref.to_le_bytes(),
    );
    s.put(
        off + offset_of!(BlkifRequestSegment, first_sect),
        &[seg.first_sect],
    );
    s.put(
        off + offset_of!(BlkifRequestSegment, last_sect),
        &[seg.last_sect],
    );
}

/// [`LAYOUT_32`] or [`LAYOUT_64`], chosen at compile time: in a function
/// generic over `I386` every offset is a constant (a field read is one
/// load).
const fn layout_of<const I386: bool>() -> &'static Layout {
    if I386 {
        &LAYOUT_32
    } else {
        &LAYOUT_64
    }
}

/// Encodes `rsp` with the i386 layout or the x86_64 one (see
/// [`Abi::response_bytes`]).
#[inline]
fn encode_response_in<const I386: bool>(rsp: &BlkifResponse) -> [u8; MAX_RSP_SIZE] {
    let l = layout_of::<I386>();
    let mut s = [0u8; MAX_RSP_SIZE];
    put(&mut s, l.r_id, &rsp.id.to_le_bytes());
    put(&mut s, l.r_operation, &[rsp.operation]);
    put(&mut s, l.r_status, &rsp.status.to_le_bytes());
    s
}

/// Decodes the request in `s` with the i386 layout or the x86_64 one (see
/// [`Abi::decode_request`]).
#[inline]
fn decode_in<const I386: bool>(s: Slot<'_>) -> BlkifRequest {
    let l = layout_of::<I386>();
    let operation = s.u8(0);
    match operation {
        BLKIF_OP_DISCARD => BlkifRequest {
            operation,
            id: s.u64(l.d_id),
            body: RequestBody::Discard {
                flag: s.u8(l.d_flag),
                handle: s.u16(l.d_handle),
                sector_number: s.u64(l.d_sector),
                nr_sectors: s.u64(l.d_nr_sectors),
            },
        },
        BLKIF_OP_INDIRECT => {
            let mut indirect_grefs = [0u32; BLKIF_MAX_INDIRECT_PAGES_PER_REQUEST];
            for (i, g) in indirect_grefs.iter_mut().enumerate() {
                *g = s.u32(l.i_grefs + 4 * i);
            }
            BlkifRequest {
                operation,
                id: s.u64(l.i_id),
                body: RequestBody::Indirect {
                    indirect_op: s.u8(l.i_op),
                    nr_segments: s.u16(l.i_nr_segments),
                    handle: s.u16(l.i_handle),
                    sector_number: s.u64(l.i_sector),
                    indirect_grefs,
                },
            }
        }
        _ => {
            let nr_segments = s.u8(l.rw_nr_segments);
            let used = usize::from(nr_segments).min(BLKIF_MAX_SEGMENTS_PER_REQUEST);
            let mut seg = [Segment::default(); BLKIF_MAX_SEGMENTS_PER_REQUEST];
            let wire = s.0.get(l.rw_seg..).unwrap_or(&[]);
            for (sg, b) in seg[..used].iter_mut().zip(wire.chunks_exact(SEGMENT_SIZE)) {
                *sg = decode_segment(b);
            }
            BlkifRequest {
                operation,
                id: s.u64(l.rw_id),
                body: RequestBody::Rw {
                    nr_segments,
                    handle: s.u16(l.rw_handle),
                    sector_number: s.u64(l.rw_sector),
                    seg,
                },
            }
        }
    }
}

impl Abi {
    /// The ABI of a guest of the same architecture as this build: i386
    /// layout on 32-bit x86, natural 64-bit alignment everywhere else.
    pub fn native() -> Abi {
        if cfg!(target_arch = "x86") {
            Abi::X86_32
        } else {
            Abi::X86_64
        }
    }

    /// The ABI named by a front-end's `protocol` node. Exact match only:
    /// `x86_32-abi`, `x86_64-abi`, or `arm-abi` (which has the x86_64
    /// layout); anything else, including a trailing NUL or other case, is
    /// `None`.
    pub fn from_protocol(p: &[u8]) -> Option<Abi> {
        if p == XEN_IO_PROTO_ABI_X86_32.as_bytes() {
            Some(Abi::X86_32)
        } else if p == XEN_IO_PROTO_ABI_X86_64.as_bytes() || p == XEN_IO_PROTO_ABI_ARM.as_bytes() {
            Some(Abi::X86_64)
        } else {
            None
        }
    }

    const fn layout(self) -> &'static Layout {
        match self {
            Abi::X86_32 => &LAYOUT_32,
            Abi::X86_64 => &LAYOUT_64,
        }
    }

    /// `sizeof(struct blkif_request)`: 108 or 112.
    pub const fn request_size(self) -> usize {
        self.layout().req_size
    }

    /// `sizeof(struct blkif_response)`: 12 or 16.
    pub const fn response_size(self) -> usize {
        self.layout().rsp_size
    }

    /// `sizeof(union blkif_sring_entry)`: the stride of ring slots.
    pub const fn entry_size(self) -> usize {
        let l = self.layout();
        if l.req_size > l.rsp_size {
            l.req_size
        } else {
            l.rsp_size
        }
    }

    /// `__CONST_RING_SIZE(blkif, pages * 4096)`: the number of slots of a
    /// ring of `pages` pages. `None` unless `pages` is a power of two from
    /// 1 to [`MAX_RING_PAGES`].
    pub fn ring_size(self, pages: u32) -> Option<u32> {
        if pages == 0 || pages > MAX_RING_PAGES || !pages.is_power_of_two() {
            return None;
        }
        let bytes = (pages as usize).checked_mul(crate::host::PAGE_SIZE)?;
        let entries = bytes.checked_sub(SRING_HEADER_SIZE)? / self.entry_size();
        let entries = u32::try_from(entries).ok()?;
        if entries == 0 {
            return None;
        }
        // Round down to a power of two, as __RD32 does.
        Some(1u32 << (31 - entries.leading_zeros()))
    }

    /// Bytes at the start of a request slot that every request's
    /// [`request_used_size`](Abi::request_used_size) can be told from:
    /// `struct blkif_request` up to its segments (20 or 24), which holds
    /// `operation` and `nr_segments`.
    pub const fn request_head_size(self) -> usize {
        self.layout().rw_seg
    }

    /// Bytes of a request slot the request uses, told from a copy of its
    /// first [`request_head_size`](Abi::request_head_size) bytes (`head`;
    /// missing bytes read as zero): the whole `blkif_request_discard` or
    /// `blkif_request_indirect` (up to its last grant), or the
    /// `blkif_request` header and the segments its `nr_segments` names, at
    /// most [`BLKIF_MAX_SEGMENTS_PER_REQUEST`]. Between `request_head_size`
    /// and [`request_size`](Abi::request_size); the back ring copies these
    /// bytes of a slot and no others, and [`decode_request`](Abi::decode_request)
    /// reads no others.
    #[inline]
    pub fn request_used_size(self, head: &[u8]) -> usize {
        let byte = |off: usize| head.get(off).copied().unwrap_or(0);
        let l = self.layout();
        match byte(0) {
            BLKIF_OP_DISCARD => l.d_nr_sectors + size_of::<u64>(),
            BLKIF_OP_INDIRECT => l.i_grefs + 4 * BLKIF_MAX_INDIRECT_PAGES_PER_REQUEST,
            _ => {
                let n = usize::from(byte(l.rw_nr_segments)).min(BLKIF_MAX_SEGMENTS_PER_REQUEST);
                l.rw_seg + SEGMENT_SIZE * n
            }
        }
    }

    /// Decodes a request slot copied out of the ring. Total: any bytes
    /// decode (bytes missing from a short `slot` read as zero); the body is
    /// chosen by the operation byte. Only the bytes
    /// [`request_used_size`](Abi::request_used_size) names are read: a
    /// `blkif_request`'s segments past its `nr_segments` are not part of
    /// it and decode as zero. A `slot` of [`MAX_SLOT_SIZE`] bytes or more
    /// (the back ring's copy) is decoded where it is.
    #[inline]
    pub fn decode_request(self, slot: &[u8]) -> BlkifRequest {
        // No field lies past request_size: a longer `slot` reads the same.
        with_slot(slot, |s| match self {
            Abi::X86_32 => decode_in::<true>(s),
            Abi::X86_64 => decode_in::<false>(s),
        })
    }

    /// Encodes a request as a front-end does (simulated guests, tests):
    /// writes [`request_size`](Abi::request_size) bytes of `slot`, padding
    /// and unused bytes zero. The layout follows `req.body`; a body that
    /// does not match `req.operation` is written as given (and decodes
    /// differently).
    pub fn encode_request(self, req: &BlkifRequest, slot: &mut [u8]) {
        let l = self.layout();
        let mut s = SlotBuf([0; MAX_SLOT_SIZE]);
        s.put(0, &[req.operation]);
        match req.body {
            RequestBody::Rw {
                nr_segments,
                handle,
                sector_number,
                seg,
            } => {
                s.put(l.rw_nr_segments, &[nr_segments]);
                s.put(l.rw_handle, &handle.to_le_bytes());
                s.put(l.rw_id, &req.id.to_le_bytes());
                s.put(l.rw_sector, &sector_number.to_le_bytes());
                for (i, sg) in seg.iter().enumerate() {
                    put_segment(&mut s, l.rw_seg + SEGMENT_SIZE * i, sg);
                }
            }
            RequestBody::Discard {
                flag,
                handle,
                sector_number,
                nr_sectors,
            } => {
                s.put(l.d_flag, &[flag]);
                s.put(l.d_handle, &handle.to_le_bytes());
                s.put(l.d_id, &req.id.to_le_bytes());
                s.put(l.d_sector, &sector_number.to_le_bytes());
                s.put(l.d_nr_sectors, &nr_sectors.to_le_bytes());
            }
            RequestBody::Indirect {
                indirect_op,
                nr_segments,
                handle,
                sector_number,
                indirect_grefs,
            } => {
                s.put(l.i_op, &[indirect_op]);
                s.put(l.i_nr_segments, &nr_segments.to_le_bytes());
                s.put(l.i_id, &req.id.to_le_bytes());
                s.put(l.i_sector, &sector_number.to_le_bytes());
                s.put(l.i_handle, &handle.to_le_bytes());
                for (i, g) in indirect_grefs.iter().enumerate() {
                    s.put(l.i_grefs + 4 * i, &g.to_le_bytes());
                }
            }
        }
        copy_out(&s.0, slot, l.req_size);
    }

    /// Encodes a response into exactly
    /// [`response_size`](Abi::response_size) bytes of `slot`, padding bytes
    /// zero, so no stale data reaches the guest.
    pub fn encode_response(self, rsp: &BlkifResponse, slot: &mut [u8]) {
        copy_out(&self.response_bytes(rsp), slot, self.response_size());
    }

    /// A response as the [`response_size`](Abi::response_size) bytes
    /// that go on the ring, at the start of a zeroed buffer (padding and
    /// the rest zero). The offsets are constants per ABI.
    #[inline]
    pub fn response_bytes(self, rsp: &BlkifResponse) -> [u8; MAX_RSP_SIZE] {
        match self {
            Abi::X86_32 => encode_response_in::<true>(rsp),
            Abi::X86_64 => encode_response_in::<false>(rsp),
        }
    }

    /// Decodes a response slot (front-end side). Total: missing bytes read
    /// as zero.
    pub fn decode_response(self, slot: &[u8]) -> BlkifResponse {
        let l = self.layout();
        let n = slot.len().min(l.rsp_size);
        with_slot(&slot[..n], |s| BlkifResponse {
            id: s.u64(l.r_id),
            operation: s.u8(l.r_operation),
            status: s.i16(l.r_status),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ABIS: [Abi; 2] = [Abi::X86_32, Abi::X86_64];

    fn segs(seed: u32) -> [Segment; BLKIF_MAX_SEGMENTS_PER_REQUEST] {
        let mut s = [Segment::default(); BLKIF_MAX_SEGMENTS_PER_REQUEST];
        for (i, sg) in s.iter_mut().enumerate() {
            let i = i as u32;
            *sg = Segment {
                gref: seed.wrapping_mul(0x9e37_79b9).wrapping_add(i * 0x0101_0101),
                first_sect: (i % 8) as u8,
                last_sect: (7 - i % 8) as u8 | 0x80,
            };
        }
        s
    }

    fn sample_requests() -> [BlkifRequest; 5] {
        [
            BlkifRequest {
                operation: BLKIF_OP_WRITE,
                id: 0x1122_3344_5566_7788,
                body: RequestBody::Rw {
                    nr_segments: 11,
                    handle: 0xabcd,
                    sector_number: 0x0102_0304_0506_0708,
                    seg: segs(7),
                },
            },
            BlkifRequest {
                operation: 0xee, // unknown operation: still the r/w layout
                id: u64::MAX,
                body: RequestBody::Rw {
                    nr_segments: 0xff,
                    handle: 1,
                    sector_number: 0,
                    seg: segs(99),
                },
            },
            BlkifRequest {
                operation: BLKIF_OP_DISCARD,
                id: 0xdead_beef_0bad_f00d,
                body: RequestBody::Discard {
                    flag: BLKIF_DISCARD_SECURE,
                    handle: 0x5150,
                    sector_number: 0x8000_0000_0000_0001,
                    nr_sectors: 0x7fff_ffff_ffff_fffe,
                },
            },
            BlkifRequest {
                operation: BLKIF_OP_INDIRECT,
                id: 42,
                body: RequestBody::Indirect {
                    indirect_op: BLKIF_OP_READ,
                    nr_segments: 0xfedc,
                    handle: 0x0a0b,
                    sector_number: 0x1020_3040_5060_7080,
                    indirect_grefs: [1, 0xffff_ffff, 3, 4, 5, 6, 7, 0x8000_0000],
                },
            },
            BlkifRequest {
                operation: BLKIF_OP_FLUSH_DISKCACHE,
                id: 0,
                body: RequestBody::Rw {
                    nr_segments: 0,
                    handle: 0,
                    sector_number: 0,
                    seg: [Segment::default(); BLKIF_MAX_SEGMENTS_PER_REQUEST],
                },
            },
        ]
    }

    #[test]
    fn sizes() {
        assert_eq!(Abi::X86_32.request_size(), 108);
        assert_eq!(Abi::X86_32.response_size(), 12);
        assert_eq!(Abi::X86_32.entry_size(), 108);
        assert_eq!(Abi::X86_64.request_size(), 112);
        assert_eq!(Abi::X86_64.response_size(), 16);
        assert_eq!(Abi::X86_64.entry_size(), 112);
        assert_eq!(
            MAX_SLOT_SIZE,
            Abi::X86_32.entry_size().max(Abi::X86_64.entry_size())
        );
        assert_eq!(SECTOR_SIZE, 512);
        assert_eq!(SECTORS_PER_PAGE, 8);
        assert_eq!(MAX_RING_PAGES, 32);
        assert_eq!(
            (
                SRING_REQ_PROD,
                SRING_REQ_EVENT,
                SRING_RSP_PROD,
                SRING_RSP_EVENT
            ),
            (0, 4, 8, 12)
        );
    }

    #[test]
    fn ring_sizes() {
        // (pages*4096 - 64) / entry, rounded down to a power of two:
        // x86_32: 37 -> 32, 75 -> 64, ... 1213 -> 1024
        // x86_64: 36 -> 32, 72 -> 64, ... 1169 -> 1024
        for abi in ABIS {
            let mut pages = 1;
            let mut expect = 32;
            while pages <= 32 {
                assert_eq!(abi.ring_size(pages), Some(expect), "{abi:?} {pages}");
                pages *= 2;
                expect *= 2;
            }
            for bad in [0, 3, 5, 6, 7, 12, 31, 33, 64, u32::MAX] {
                assert_eq!(abi.ring_size(bad), None, "{abi:?} {bad}");
            }
        }
    }

    #[test]
    fn protocol_names() {
        assert_eq!(Abi::from_protocol(b"x86_32-abi"), Some(Abi::X86_32));
        assert_eq!(Abi::from_protocol(b"x86_64-abi"), Some(Abi::X86_64));
        assert_eq!(Abi::from_protocol(b"arm-abi"), Some(Abi::X86_64));
        for bad in [
            &b"x86_64-abi\0"[..],
            b"X86_64-ABI",
            b"",
            b"x86_64",
            b"x86_32-abi ",
            b" x86_32-abi",
            b"x86_64-abi\n",
            b"arm",
            b"\0",
        ] {
            assert_eq!(Abi::from_protocol(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn native_matches_build() {
        let expect = if cfg!(target_arch = "x86") {
            Abi::X86_32
        } else {
            Abi::X86_64
        };
        assert_eq!(Abi::native(), expect);
    }

    #[test]
    fn request_round_trip() {
        for abi in ABIS {
            for req in sample_requests() {
                let mut slot = [0x5au8; MAX_SLOT_SIZE];
                abi.encode_request(&req, &mut slot);
                assert_eq!(abi.decode_request(&slot), req, "{abi:?}");
                // Only request_size bytes are written.
                assert!(slot[abi.request_size()..].iter().all(|&b| b == 0x5a));
            }
        }
    }

    /// The byte-offset codec agrees with the structs: encode, then look at
    /// the bytes where the struct (whose offsets are checked against C)
    /// says each field lives, with literal offsets.
    #[test]
    fn codec_agrees_with_structs() {
        let rw = sample_requests()[0];
        let mut b = [0u8; MAX_SLOT_SIZE];
        Abi::X86_32.encode_request(&rw, &mut b);
        assert_eq!(b[0], BLKIF_OP_WRITE);
        assert_eq!(b[1], 11);
        assert_eq!(&b[2..4], &0xabcdu16.to_le_bytes());
        assert_eq!(&b[4..12], &0x1122_3344_5566_7788u64.to_le_bytes());
        assert_eq!(&b[12..20], &0x0102_0304_0506_0708u64.to_le_bytes());
        let s0 = segs(7)[0];
        assert_eq!(&b[20..24], &s0.gref.to_le_bytes());
        assert_eq!(
            (b[24], b[25], b[26], b[27]),
            (s0.first_sect, s0.last_sect, 0, 0)
        );
        let s10 = segs(7)[10];
        assert_eq!(&b[100..104], &s10.gref.to_le_bytes());

        let mut b = [0u8; MAX_SLOT_SIZE];
        Abi::X86_64.encode_request(&rw, &mut b);
        assert_eq!(&b[4..8], &[0; 4]); // padding before id
        assert_eq!(&b[8..16], &0x1122_3344_5566_7788u64.to_le_bytes());
        assert_eq!(&b[16..24], &0x0102_0304_0506_0708u64.to_le_bytes());
        assert_eq!(&b[24..28], &s0.gref.to_le_bytes());
        assert_eq!(&b[104..108], &s10.gref.to_le_bytes());

        let ind = sample_requests()[3];
        let mut b = [0xffu8; MAX_SLOT_SIZE];
        Abi::X86_32.encode_request(&ind, &mut b);
        assert_eq!(&b[2..4], &0xfedcu16.to_le_bytes());
        assert_eq!(&b[4..12], &42u64.to_le_bytes());
        assert_eq!(&b[20..22], &0x0a0bu16.to_le_bytes());
        assert_eq!(&b[24..28], &1u32.to_le_bytes());
        assert_eq!(&b[52..56], &0x8000_0000u32.to_le_bytes());
        assert!(b[56..108].iter().all(|&x| x == 0), "pad and tail zero");
        let mut b = [0xffu8; MAX_SLOT_SIZE];
        Abi::X86_64.encode_request(&ind, &mut b);
        assert_eq!(&b[8..16], &42u64.to_le_bytes());
        assert_eq!(&b[24..26], &0x0a0bu16.to_le_bytes());
        assert_eq!(&b[28..32], &1u32.to_le_bytes());
        assert_eq!(&b[56..60], &0x8000_0000u32.to_le_bytes());
        assert!(b[60..112].iter().all(|&x| x == 0));

        let disc = sample_requests()[2];
        let mut b = [0u8; MAX_SLOT_SIZE];
        Abi::X86_32.encode_request(&disc, &mut b);
        assert_eq!(b[1], BLKIF_DISCARD_SECURE);
        assert_eq!(&b[20..28], &0x7fff_ffff_ffff_fffeu64.to_le_bytes());
        Abi::X86_64.encode_request(&disc, &mut b);
        assert_eq!(&b[24..32], &0x7fff_ffff_ffff_fffeu64.to_le_bytes());

        // Offsets in the private layouts are those of the structs.
        assert_eq!(LAYOUT_32.rw_id, offset_of!(X86_32Request, id));
        assert_eq!(
            LAYOUT_64.i_grefs,
            offset_of!(X86_64IndirectRequest, indirect_grefs)
        );
    }

    #[test]
    fn response_codec() {
        let rsp = BlkifResponse {
            id: 0x0123_4567_89ab_cdef,
            operation: BLKIF_OP_INDIRECT,
            status: BLKIF_RSP_EOPNOTSUPP,
        };
        for abi in ABIS {
            let mut b = [0xffu8; MAX_SLOT_SIZE];
            abi.encode_response(&rsp, &mut b);
            assert_eq!(&b[0..8], &rsp.id.to_le_bytes());
            assert_eq!(b[8], BLKIF_OP_INDIRECT);
            assert_eq!(b[9], 0, "padding byte zero");
            assert_eq!(&b[10..12], &(-2i16).to_le_bytes());
            let n = abi.response_size();
            assert!(b[12..n].iter().all(|&x| x == 0), "tail padding zero");
            assert!(
                b[n..].iter().all(|&x| x == 0xff),
                "nothing past the response"
            );
            assert_eq!(abi.decode_response(&b), rsp);
        }
    }

    #[test]
    fn decode_is_total() {
        // Arbitrary, short and empty slots decode without panicking.
        let mut b = [0u8; MAX_SLOT_SIZE + 8];
        for (i, x) in b.iter_mut().enumerate() {
            *x = (i as u8).wrapping_mul(37).wrapping_add(11);
        }
        for abi in ABIS {
            for op in 0..=255u8 {
                b[0] = op;
                for len in [0, 1, 7, 20, 60, abi.request_size() - 1, b.len()] {
                    let r = abi.decode_request(&b[..len]);
                    if len > 0 {
                        assert_eq!(r.operation, op);
                    }
                    let _ = abi.decode_response(&b[..len]);
                }
            }
        }
        assert_eq!(decode_segment(&[]), Segment::default());
        // A short slot's missing bytes read as zero: the same as zero-padded.
        let mut padded = [0u8; MAX_SLOT_SIZE];
        padded[..30].copy_from_slice(&b[..30]);
        padded[0] = BLKIF_OP_READ;
        assert_eq!(
            Abi::X86_64.decode_request(&padded[..30]),
            Abi::X86_64.decode_request(&padded)
        );
    }

    /// The back ring copies only the bytes `request_used_size` names:
    /// decoding reads no others (whatever the rest of the slot holds), and
    /// the size stays within the slot.
    #[test]
    fn decode_reads_only_the_used_bytes() {
        for abi in ABIS {
            let head = abi.request_head_size();
            for op in 0..=255u8 {
                for nr in [0u8, 1, 2, 10, 11, 12, 0xff] {
                    let mut b = [0u8; MAX_SLOT_SIZE];
                    for (i, x) in b.iter_mut().enumerate() {
                        *x = (i as u8).wrapping_mul(37).wrapping_add(op);
                    }
                    b[0] = op;
                    b[1] = nr;
                    let used = abi.request_used_size(&b[..head]);
                    assert!(
                        head <= used && used <= abi.request_size(),
                        "{abi:?} {op} {nr}"
                    );
                    let mut clean = [0u8; MAX_SLOT_SIZE];
                    clean[..used].copy_from_slice(&b[..used]);
                    let n = abi.request_size();
                    assert_eq!(
                        abi.decode_request(&b[..n]),
                        abi.decode_request(&clean[..n]),
                        "{abi:?} {op} {nr}"
                    );
                }
            }
        }
    }

    #[test]
    fn segment_codec() {
        let s = Segment {
            gref: 0xa1b2_c3d4,
            first_sect: 3,
            last_sect: 7,
        };
        let mut b = [0xffu8; 8];
        encode_segment(&s, &mut b);
        assert_eq!(b, [0xd4, 0xc3, 0xb2, 0xa1, 3, 7, 0, 0]);
        assert_eq!(decode_segment(&b), s);
    }
}
