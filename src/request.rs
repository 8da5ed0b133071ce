//! Validation of one request, from the private copy the ring made.
//!
//! Implements the request rules of `io/blkif.h`: the operation codes
//! (`BLKIF_OP_*`), `nr_segments` against the negotiated maximum (eleven
//! inline, `feature-max-indirect-segments` for `BLKIF_OP_INDIRECT`, never
//! more than `BLKIF_MAX_INDIRECT_PAGES_PER_REQUEST` pages of descriptors),
//! `indirect_op` limited to READ and WRITE, each segment's
//! `first_sect <= last_sect` inside its page, the sector range inside the
//! medium, alignment to the medium's logical sector size, writes and
//! discards to read-only media, and `BLKIF_OP_DISCARD` only when
//! `feature-discard` was offered (its secure flag only with
//! `discard-secure`). `sector_number`, `first_sect`, `last_sect` and
//! `nr_sectors` are 512-byte units whatever the medium's `sector-size`.
//!
//! Nothing here touches shared memory: the input is the [`BlkifRequest`]
//! the ring already copied out once, and for indirect requests the private
//! copy of the descriptor pages the caller made once
//! ([`parse_indirect`]). A request that fails any rule gets an error
//! response and never reaches the store; nothing here panics.

use crate::abi::{
    decode_segment, BlkifRequest, RequestBody, Segment, BLKIF_DISCARD_SECURE,
    BLKIF_MAX_INDIRECT_PAGES_PER_REQUEST, BLKIF_MAX_SEGMENTS_PER_REQUEST, BLKIF_OP_DISCARD,
    BLKIF_OP_FLUSH_DISKCACHE, BLKIF_OP_INDIRECT, BLKIF_OP_READ, BLKIF_OP_WRITE,
    BLKIF_OP_WRITE_BARRIER, BLKIF_RSP_EOPNOTSUPP, BLKIF_RSP_ERROR, SECTORS_PER_PAGE, SEGMENT_SIZE,
};
use crate::host::{GrantRef, PAGE_SIZE};
use crate::units::{SectorSize, Sectors};

/// Segment descriptors one indirect page holds.
pub const SEGMENTS_PER_INDIRECT_PAGE: usize = PAGE_SIZE / SEGMENT_SIZE;

/// The protocol's ceiling on segments of one indirect request.
pub const MAX_INDIRECT_SEGMENTS: u32 =
    (BLKIF_MAX_INDIRECT_PAGES_PER_REQUEST * SEGMENTS_PER_INDIRECT_PAGE) as u32;

/// What the back-end does for a request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Op {
    /// `BLKIF_OP_READ`: medium → guest pages.
    Read,
    /// `BLKIF_OP_WRITE`: guest pages → medium.
    Write,
    /// `BLKIF_OP_FLUSH_DISKCACHE`: optional data, then make it all durable.
    Flush,
    /// `BLKIF_OP_WRITE_BARRIER`: drain, make durable, optional data, make durable.
    Barrier,
    /// `BLKIF_OP_DISCARD`: forget a range (securely erase it when `secure`).
    Discard {
        /// `BLKIF_DISCARD_SECURE` was set.
        secure: bool,
    },
}

impl Op {
    /// Whether the request's data goes from the guest to the medium.
    pub fn writes(self) -> bool {
        !matches!(self, Op::Read)
    }
}

/// The limits a request is checked against, fixed for a connection (but
/// for `medium_sectors`, which follows a resize).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Segments of a request without indirect descriptors (at most 11).
    pub max_segments: u32,
    /// `feature-max-indirect-segments` offered (0: indirect requests are
    /// not offered).
    pub max_indirect_segments: u32,
    /// Medium size in 512-byte sectors.
    pub medium_sectors: Sectors,
    /// Medium logical sector size.
    pub sector_size: SectorSize,
    /// The medium is read-only.
    pub read_only: bool,
    /// `feature-flush-cache` was offered.
    pub flush: bool,
    /// `feature-barrier` was offered.
    pub barrier: bool,
    /// `feature-discard` was offered.
    pub discard: bool,
    /// `discard-secure` was offered.
    pub secure_discard: bool,
}

/// A request that passed every rule. Its segments are where the caller's
/// buffer received them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Parsed {
    /// The front-end's id, echoed in the response.
    pub id: u64,
    /// The operation echoed in the response: the wire operation, or for an
    /// indirect request its `indirect_op` (see [`response_operation`]).
    pub operation: u8,
    /// What to do.
    pub op: Op,
    /// First 512-byte sector on the medium.
    pub sector: Sectors,
    /// Total 512-byte sectors (0 for a data-less flush or barrier).
    pub nr_sectors: Sectors,
    /// Number of segments written to the caller's buffer.
    pub nsegs: u16,
}

impl Parsed {
    /// The sector right after the request's data.
    pub fn end_sector(&self) -> Sectors {
        // Cannot overflow: validation checked sector + nr_sectors <= medium.
        Sectors(self.sector.0 + self.nr_sectors.0)
    }
}

/// The header of a valid-looking indirect request: the caller copies its
/// descriptor pages once and finishes with [`parse_indirect`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Indirect {
    /// The front-end's id.
    pub id: u64,
    /// `Read` or `Write`.
    pub op: Op,
    /// First 512-byte sector.
    pub sector: Sectors,
    /// Segments, `1..=` the negotiated maximum.
    pub nsegs: u16,
    /// The descriptor pages' grants; the first [`Indirect::pages`] count.
    pub grefs: [GrantRef; BLKIF_MAX_INDIRECT_PAGES_PER_REQUEST],
}

impl Indirect {
    /// Descriptor pages the segments occupy.
    pub fn pages(&self) -> usize {
        usize::from(self.nsegs).div_ceil(SEGMENTS_PER_INDIRECT_PAGE)
    }

    /// Bytes of descriptors to copy.
    pub fn descriptor_bytes(&self) -> usize {
        usize::from(self.nsegs) * SEGMENT_SIZE
    }

    /// The descriptor pages' grants.
    pub fn page_grefs(&self) -> &[GrantRef] {
        &self.grefs[..self.pages().min(BLKIF_MAX_INDIRECT_PAGES_PER_REQUEST)]
    }
}

/// The first stage of validation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Header {
    /// Fully validated; inline segments are in the caller's buffer.
    Ready(Parsed),
    /// An indirect request whose descriptors must be copied first.
    Indirect(Indirect),
}

/// Why a request was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RequestError {
    /// Unknown or not offered operation (`BLKIF_RSP_EOPNOTSUPP`).
    NotSupported,
    /// `indirect_op` is not READ or WRITE.
    BadIndirectOp,
    /// `nr_segments` is 0 for a read/write, or above the negotiated maximum.
    BadSegmentCount,
    /// A segment with `first_sect > last_sect` or `last_sect` beyond its page.
    BadSegment,
    /// The sector range leaves the medium (or overflows).
    OutOfRange,
    /// Not aligned to the medium's logical sector size.
    Misaligned,
    /// A write or discard to a read-only medium.
    ReadOnly,
}

impl RequestError {
    /// The response status the front-end sees.
    pub fn status(self) -> i16 {
        match self {
            RequestError::NotSupported => BLKIF_RSP_EOPNOTSUPP,
            _ => BLKIF_RSP_ERROR,
        }
    }
}

/// Checks `sector .. sector + nr_sectors` against the medium.
fn check_range(sector: Sectors, nr_sectors: Sectors, limits: &Limits) -> Result<(), RequestError> {
    let ss = limits.sector_size;
    if !sector.is_aligned(ss) || !nr_sectors.is_aligned(ss) {
        return Err(RequestError::Misaligned);
    }
    match sector.checked_add(nr_sectors) {
        Some(end) if end <= limits.medium_sectors => Ok(()),
        _ => Err(RequestError::OutOfRange),
    }
}

/// Checks one segment against a logical sector size of `lss` 512-byte
/// sectors; returns its 512-byte sectors.
#[inline]
fn check_segment(s: &Segment, lss: u64) -> Result<u64, RequestError> {
    if s.first_sect > s.last_sect || u32::from(s.last_sect) >= SECTORS_PER_PAGE {
        return Err(RequestError::BadSegment);
    }
    // `lss` is a power of two (SectorSize): a mask, not a division.
    let mask = lss - 1;
    if u64::from(s.first_sect) & mask != 0 || (u64::from(s.last_sect) + 1) & mask != 0 {
        return Err(RequestError::Misaligned);
    }
    Ok(u64::from(s.last_sect - s.first_sect) + 1)
}

/// Checks segments; returns their total 512-byte sectors.
fn check_segments(segs: &[Segment], limits: &Limits) -> Result<Sectors, RequestError> {
    let lss = limits.sector_size.in_sectors();
    let mut nr_sectors: u64 = 0;
    for s in segs {
        nr_sectors += check_segment(s, lss)?;
    }
    Ok(Sectors(nr_sectors))
}

/// The `operation` a response to `req` carries. `blkif_response_t` copies
/// the request's, except that an indirect request is answered with its
/// `indirect_op`: Linux's `xen-blkfront` refuses a response to a
/// `BLKIF_OP_INDIRECT` request that says `BLKIF_OP_INDIRECT` ("wrong
/// operation") and disables the disk, and every back-end answers this way.
pub fn response_operation(req: &BlkifRequest) -> u8 {
    match req.body {
        RequestBody::Indirect { indirect_op, .. } if req.operation == BLKIF_OP_INDIRECT => {
            indirect_op
        }
        _ => req.operation,
    }
}

/// Checks one request against `limits`. Inline segments are copied into
/// `segs`, which must have room for `BLKIF_MAX_SEGMENTS_PER_REQUEST`
/// (otherwise the request is refused with `BadSegmentCount`); a refused
/// request may leave some of its segments there.
#[inline]
pub fn parse(
    req: &BlkifRequest,
    limits: &Limits,
    segs: &mut [Segment],
) -> Result<Header, RequestError> {
    match (req.operation, &req.body) {
        (
            BLKIF_OP_DISCARD,
            RequestBody::Discard {
                flag,
                sector_number,
                nr_sectors,
                ..
            },
        ) if limits.discard => {
            let secure = *flag & BLKIF_DISCARD_SECURE != 0;
            if secure && !limits.secure_discard {
                return Err(RequestError::NotSupported);
            }
            if limits.read_only {
                return Err(RequestError::ReadOnly);
            }
            let (sector, nr_sectors) = (Sectors(*sector_number), Sectors(*nr_sectors));
            check_range(sector, nr_sectors, limits)?;
            Ok(Header::Ready(Parsed {
                id: req.id,
                operation: req.operation,
                op: Op::Discard { secure },
                sector,
                nr_sectors,
                nsegs: 0,
            }))
        }
        (
            BLKIF_OP_INDIRECT,
            RequestBody::Indirect {
                indirect_op,
                nr_segments,
                sector_number,
                indirect_grefs,
                ..
            },
        ) if limits.max_indirect_segments > 0 => {
            let op = match *indirect_op {
                BLKIF_OP_READ => Op::Read,
                BLKIF_OP_WRITE => Op::Write,
                _ => return Err(RequestError::BadIndirectOp),
            };
            let max = limits.max_indirect_segments.min(MAX_INDIRECT_SEGMENTS);
            if *nr_segments == 0 || u32::from(*nr_segments) > max {
                return Err(RequestError::BadSegmentCount);
            }
            if op.writes() && limits.read_only {
                return Err(RequestError::ReadOnly);
            }
            let sector = Sectors(*sector_number);
            if !sector.is_aligned(limits.sector_size) {
                return Err(RequestError::Misaligned);
            }
            Ok(Header::Indirect(Indirect {
                id: req.id,
                op,
                sector,
                nsegs: *nr_segments,
                grefs: *indirect_grefs,
            }))
        }
        (
            op @ (BLKIF_OP_READ
            | BLKIF_OP_WRITE
            | BLKIF_OP_FLUSH_DISKCACHE
            | BLKIF_OP_WRITE_BARRIER),
            RequestBody::Rw {
                nr_segments,
                sector_number,
                seg,
                ..
            },
        ) => {
            let op = match op {
                BLKIF_OP_READ => Op::Read,
                BLKIF_OP_WRITE => Op::Write,
                BLKIF_OP_FLUSH_DISKCACHE if limits.flush => Op::Flush,
                BLKIF_OP_WRITE_BARRIER if limits.barrier => Op::Barrier,
                _ => return Err(RequestError::NotSupported),
            };
            let nsegs = usize::from(*nr_segments);
            let min_segs = usize::from(matches!(op, Op::Read | Op::Write));
            let max_segs = (limits.max_segments as usize).min(BLKIF_MAX_SEGMENTS_PER_REQUEST);
            if nsegs < min_segs || nsegs > max_segs || nsegs > segs.len() {
                return Err(RequestError::BadSegmentCount);
            }
            if op.writes() && nsegs > 0 && limits.read_only {
                return Err(RequestError::ReadOnly);
            }
            // Each segment checked and copied to the caller's buffer in
            // one pass (a refused request's copies are never used): a
            // loop, not a call to memcpy for a few bytes.
            let lss = limits.sector_size.in_sectors();
            let mut total = 0u64;
            for (out, s) in segs[..nsegs].iter_mut().zip(&seg[..nsegs]) {
                *out = *s;
                total += check_segment(s, lss)?;
            }
            let nr_sectors = Sectors(total);
            let sector = Sectors(if nsegs == 0 { 0 } else { *sector_number });
            if nsegs > 0 {
                check_range(sector, nr_sectors, limits)?;
            }
            Ok(Header::Ready(Parsed {
                id: req.id,
                operation: req.operation,
                op,
                sector,
                nr_sectors,
                nsegs: u16::from(*nr_segments),
            }))
        }
        // Discard and indirect requests when not offered, reserved and
        // unknown codes.
        _ => Err(RequestError::NotSupported),
    }
}

/// Finishes an indirect request from `descriptors`, the private copy of its
/// descriptor pages ([`Indirect::descriptor_bytes`] long, or the request is
/// refused), decoding the segments into `segs` (room for
/// [`Indirect::nsegs`] needed, or the request is refused).
pub fn parse_indirect(
    h: &Indirect,
    descriptors: &[u8],
    limits: &Limits,
    segs: &mut [Segment],
) -> Result<Parsed, RequestError> {
    let n = usize::from(h.nsegs);
    if n > segs.len() || descriptors.len() < h.descriptor_bytes() {
        return Err(RequestError::BadSegmentCount);
    }
    for (out, d) in segs[..n]
        .iter_mut()
        .zip(descriptors.chunks_exact(SEGMENT_SIZE))
    {
        *out = decode_segment(d);
    }
    let nr_sectors = check_segments(&segs[..n], limits)?;
    check_range(h.sector, nr_sectors, limits)?;
    Ok(Parsed {
        id: h.id,
        operation: match h.op {
            Op::Write => BLKIF_OP_WRITE,
            _ => BLKIF_OP_READ,
        },
        op: h.op,
        sector: h.sector,
        nr_sectors,
        nsegs: h.nsegs,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::abi::BLKIF_OP_RESERVED_1;

    const LIM: Limits = Limits {
        max_segments: 11,
        max_indirect_segments: 0,
        medium_sectors: Sectors(1024),
        sector_size: SectorSize::BLKIF,
        read_only: false,
        flush: true,
        barrier: true,
        discard: false,
        secure_discard: false,
    };

    /// Both stages, with descriptors for indirect requests from `DESC`.
    fn parse1(req: &BlkifRequest, lim: &Limits) -> Result<Parsed, RequestError> {
        parse_with(req, lim, &[])
    }

    fn parse_with(req: &BlkifRequest, lim: &Limits, desc: &[u8]) -> Result<Parsed, RequestError> {
        let mut segs = [Segment::default(); 600];
        match parse(req, lim, &mut segs)? {
            Header::Ready(p) => Ok(p),
            Header::Indirect(h) => parse_indirect(&h, desc, lim, &mut segs),
        }
    }

    fn indirect(op: u8, sector: u64, nsegs: u16) -> BlkifRequest {
        BlkifRequest {
            operation: BLKIF_OP_INDIRECT,
            id: 7,
            body: RequestBody::Indirect {
                indirect_op: op,
                nr_segments: nsegs,
                handle: 0,
                sector_number: sector,
                indirect_grefs: [11, 12, 13, 14, 15, 16, 17, 18],
            },
        }
    }

    fn descriptors(segs: &[(u32, u8, u8)]) -> alloc::vec::Vec<u8> {
        let mut out = alloc::vec![0u8; segs.len() * SEGMENT_SIZE];
        for (i, &(gref, f, l)) in segs.iter().enumerate() {
            crate::abi::encode_segment(
                &Segment {
                    gref,
                    first_sect: f,
                    last_sect: l,
                },
                &mut out[i * SEGMENT_SIZE..],
            );
        }
        out
    }

    const IND: Limits = Limits {
        max_indirect_segments: 256,
        ..LIM
    };

    #[test]
    fn indirect_requests() {
        // Not offered: EOPNOTSUPP.
        assert_refused(
            &indirect(BLKIF_OP_READ, 0, 12),
            &LIM,
            RequestError::NotSupported,
        );
        let segs: alloc::vec::Vec<_> = (0..20).map(|i| (100 + i, 0, 7)).collect();
        let p = parse_with(&indirect(BLKIF_OP_WRITE, 8, 20), &IND, &descriptors(&segs)).unwrap();
        assert_eq!(
            (p.op, p.sector.0, p.nr_sectors.0, p.nsegs),
            (Op::Write, 8, 160, 20)
        );
        assert_eq!(p.operation, BLKIF_OP_WRITE);
        // The header names the pages the descriptors need, no more.
        let mut buf = [Segment::default(); 600];
        let Ok(Header::Indirect(h)) = parse(&indirect(BLKIF_OP_READ, 0, 513), &IND_BIG, &mut buf)
        else {
            panic!("indirect header expected");
        };
        assert_eq!(h.page_grefs(), &[11, 12]);
        assert_eq!(h.descriptor_bytes(), 513 * 8);
    }

    const IND_BIG: Limits = Limits {
        max_indirect_segments: 4096,
        ..LIM
    };

    #[test]
    fn indirect_refusals() {
        let ok: alloc::vec::Vec<_> = (0..16).map(|i| (1 + i, 0, 7)).collect();
        let d = descriptors(&ok);
        for op in [
            BLKIF_OP_FLUSH_DISKCACHE,
            BLKIF_OP_WRITE_BARRIER,
            BLKIF_OP_INDIRECT,
            9,
        ] {
            assert_eq!(
                parse_with(&indirect(op, 0, 16), &IND, &d),
                Err(RequestError::BadIndirectOp)
            );
        }
        // The protocol ceiling holds whatever was negotiated.
        let silly = Limits {
            max_indirect_segments: u32::MAX,
            ..LIM
        };
        for (why, n, lim) in [
            ("no segment", 0, &IND),
            ("more than negotiated", 257, &IND),
            ("past the protocol's ceiling", 4097, &silly),
            ("more than the descriptors hold", 17, &IND),
        ] {
            assert_eq!(
                parse_with(&indirect(BLKIF_OP_READ, 0, n), lim, &d),
                Err(RequestError::BadSegmentCount),
                "{why}"
            );
        }
        // A caller buffer too small.
        let mut small = [Segment::default(); 4];
        let Ok(Header::Indirect(h)) = parse(&indirect(BLKIF_OP_READ, 0, 16), &IND, &mut small)
        else {
            panic!("indirect header expected");
        };
        assert_eq!(
            parse_indirect(&h, &d, &IND, &mut small),
            Err(RequestError::BadSegmentCount)
        );
        // A bad descriptor, a range past the end, a read-only medium.
        let mut bad = ok.clone();
        bad[9] = (1, 5, 4);
        assert_eq!(
            parse_with(&indirect(BLKIF_OP_READ, 0, 16), &IND, &descriptors(&bad)),
            Err(RequestError::BadSegment)
        );
        assert_eq!(
            parse_with(&indirect(BLKIF_OP_READ, 1024 - 8, 16), &IND, &d),
            Err(RequestError::OutOfRange)
        );
        let ro = Limits {
            read_only: true,
            ..IND
        };
        assert_eq!(
            parse_with(&indirect(BLKIF_OP_WRITE, 0, 16), &ro, &d),
            Err(RequestError::ReadOnly)
        );
        assert!(parse_with(&indirect(BLKIF_OP_READ, 0, 16), &ro, &d).is_ok());
    }

    fn discard(sector: u64, nr: u64, flag: u8) -> BlkifRequest {
        BlkifRequest {
            operation: BLKIF_OP_DISCARD,
            id: 3,
            body: RequestBody::Discard {
                flag,
                handle: 0,
                sector_number: sector,
                nr_sectors: nr,
            },
        }
    }

    #[test]
    fn discard_requests() {
        let d = Limits {
            discard: true,
            ..LIM
        };
        assert_refused(&discard(0, 8, 0), &LIM, RequestError::NotSupported);
        let p = parse1(&discard(16, 64, 0), &d).unwrap();
        assert_eq!(
            (p.op, p.sector.0, p.nr_sectors.0, p.nsegs),
            (Op::Discard { secure: false }, 16, 64, 0)
        );
        assert_refused(&discard(0, 8, 1), &d, RequestError::NotSupported);
        let sec = Limits {
            secure_discard: true,
            ..d
        };
        assert_eq!(
            parse1(&discard(0, 8, 1), &sec).unwrap().op,
            Op::Discard { secure: true }
        );
        assert_refused(&discard(1000, 25, 0), &d, RequestError::OutOfRange);
        assert_refused(&discard(u64::MAX, 2, 0), &d, RequestError::OutOfRange);
        let ro = Limits {
            read_only: true,
            ..d
        };
        assert_refused(&discard(0, 8, 0), &ro, RequestError::ReadOnly);
        let four_k = Limits {
            sector_size: SectorSize::new(4096).unwrap(),
            ..d
        };
        assert_refused(&discard(8, 4, 0), &four_k, RequestError::Misaligned);
        assert_refused(&discard(4, 8, 0), &four_k, RequestError::Misaligned);
        assert!(parse1(&discard(8, 16, 0), &four_k).is_ok());
    }

    /// `req` is refused under `lim`, as `why`.
    #[track_caller]
    fn assert_refused(req: &BlkifRequest, lim: &Limits, why: RequestError) {
        assert_eq!(parse1(req, lim), Err(why), "{req:?}");
    }

    fn rw(op: u8, sector: u64, segs: &[(u8, u8)]) -> BlkifRequest {
        let mut seg = [Segment::default(); BLKIF_MAX_SEGMENTS_PER_REQUEST];
        for (i, &(f, l)) in segs.iter().enumerate() {
            seg[i] = Segment {
                gref: 100 + i as u32,
                first_sect: f,
                last_sect: l,
            };
        }
        BlkifRequest {
            operation: op,
            id: 0xdead_beef,
            body: RequestBody::Rw {
                nr_segments: segs.len() as u8,
                handle: 0,
                sector_number: sector,
                seg,
            },
        }
    }

    #[test]
    fn good_read_counts_sectors() {
        let p = parse1(&rw(BLKIF_OP_READ, 8, &[(0, 7), (0, 3)]), &LIM).unwrap();
        assert_eq!(
            (p.op, p.sector.0, p.nr_sectors.0, p.nsegs),
            (Op::Read, 8, 12, 2)
        );
        assert_eq!(p.end_sector(), Sectors(20));
        assert_eq!(p.id, 0xdead_beef);
    }

    #[test]
    fn unknown_and_unoffered_operations() {
        for op in [BLKIF_OP_RESERVED_1, 7, 255] {
            let e = parse1(&rw(op, 0, &[(0, 7)]), &LIM).unwrap_err();
            assert_eq!(e, RequestError::NotSupported);
            assert_eq!(e.status(), BLKIF_RSP_EOPNOTSUPP);
        }
        let no_flush = Limits {
            flush: false,
            barrier: false,
            ..LIM
        };
        for op in [BLKIF_OP_FLUSH_DISKCACHE, BLKIF_OP_WRITE_BARRIER] {
            assert_refused(&rw(op, 0, &[]), &no_flush, RequestError::NotSupported);
        }
    }

    #[test]
    fn segment_counts() {
        assert_refused(
            &rw(BLKIF_OP_READ, 0, &[]),
            &LIM,
            RequestError::BadSegmentCount,
        );
        let mut r = rw(BLKIF_OP_WRITE, 0, &[(0, 0)]);
        if let RequestBody::Rw { nr_segments, .. } = &mut r.body {
            *nr_segments = 12;
        }
        assert_refused(&r, &LIM, RequestError::BadSegmentCount);
        let small = Limits {
            max_segments: 2,
            ..LIM
        };
        assert_refused(
            &rw(BLKIF_OP_READ, 0, &[(0, 0); 3]),
            &small,
            RequestError::BadSegmentCount,
        );
        assert!(parse1(&rw(BLKIF_OP_FLUSH_DISKCACHE, 0, &[]), &LIM).is_ok());
        assert!(parse1(&rw(BLKIF_OP_WRITE_BARRIER, 0, &[]), &LIM).is_ok());
    }

    #[test]
    fn segment_bounds() {
        // The first sector after the last, the last past the page, both.
        for seg in [(4, 3), (0, 8), (255, 255)] {
            assert_refused(
                &rw(BLKIF_OP_READ, 0, &[seg]),
                &LIM,
                RequestError::BadSegment,
            );
        }
    }

    #[test]
    fn range_and_overflow() {
        assert!(parse1(&rw(BLKIF_OP_READ, 1016, &[(0, 7)]), &LIM).is_ok());
        // One sector past the end; an end that overflows.
        for sector in [1017, u64::MAX - 3] {
            assert_refused(
                &rw(BLKIF_OP_READ, sector, &[(0, 7)]),
                &LIM,
                RequestError::OutOfRange,
            );
        }
    }

    #[test]
    fn four_k_medium_alignment() {
        let lim = Limits {
            sector_size: SectorSize::new(4096).unwrap(),
            ..LIM
        };
        assert!(parse1(&rw(BLKIF_OP_WRITE, 16, &[(0, 7), (0, 7)]), &lim).is_ok());
        // A start, a first sector or a last sector off the 4 KiB grid.
        for (sector, seg) in [(12, (0, 7)), (8, (1, 7)), (8, (0, 6))] {
            assert_refused(
                &rw(BLKIF_OP_WRITE, sector, &[seg]),
                &lim,
                RequestError::Misaligned,
            );
        }
    }

    #[test]
    fn read_only_media() {
        let ro = Limits {
            read_only: true,
            ..LIM
        };
        assert!(parse1(&rw(BLKIF_OP_READ, 0, &[(0, 7)]), &ro).is_ok());
        for op in [BLKIF_OP_WRITE, BLKIF_OP_FLUSH_DISKCACHE] {
            assert_refused(&rw(op, 0, &[(0, 7)]), &ro, RequestError::ReadOnly);
        }
    }
}
