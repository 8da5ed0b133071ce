//! Validation of one request, from the private copy the ring made.
//!
//! Implements the request rules of `io/blkif.h`: the operation codes
//! (`BLKIF_OP_*`), `nr_segments` against the negotiated maximum, each
//! segment's `first_sect <= last_sect` inside its page, the sector range
//! inside the medium, alignment to the medium's logical sector size, and
//! writes to read-only media. `sector_number`, `first_sect` and `last_sect`
//! are 512-byte units whatever the medium's `sector-size` (the current
//! reading of the spec, and what every front-end in use sends).
//!
//! Nothing here touches shared memory: the input is the [`BlkifRequest`]
//! the ring already copied out once. A request that fails any rule gets an
//! error response and never reaches the store; nothing here panics.

use crate::abi::{
    BlkifRequest, RequestBody, Segment, BLKIF_MAX_SEGMENTS_PER_REQUEST, BLKIF_OP_FLUSH_DISKCACHE,
    BLKIF_OP_READ, BLKIF_OP_WRITE, BLKIF_OP_WRITE_BARRIER, BLKIF_RSP_EOPNOTSUPP, BLKIF_RSP_ERROR,
    SECTORS_PER_PAGE, SECTOR_SHIFT,
};

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
}

impl Op {
    /// Whether the request's data goes from the guest to the medium.
    pub fn writes(self) -> bool {
        !matches!(self, Op::Read)
    }
}

/// The limits a request is checked against, fixed for a connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Negotiated segments per request (11 without indirect descriptors).
    pub max_segments: u32,
    /// Medium size in 512-byte sectors.
    pub medium_sectors: u64,
    /// Medium logical sector size in bytes (a power of two, >= 512).
    pub sector_size: u32,
    /// The medium is read-only.
    pub read_only: bool,
    /// `feature-flush-cache` was offered.
    pub flush: bool,
    /// `feature-barrier` was offered.
    pub barrier: bool,
}

/// A request that passed every rule.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Parsed {
    /// The front-end's id, echoed in the response.
    pub id: u64,
    /// The wire operation, echoed in the response.
    pub operation: u8,
    /// What to do.
    pub op: Op,
    /// First 512-byte sector on the medium.
    pub sector: u64,
    /// Total 512-byte sectors of data (0 for a data-less flush or barrier).
    pub nr_sectors: u64,
    /// Number of valid entries in `seg`.
    pub nsegs: u8,
    /// The segments, `seg[..nsegs]`.
    pub seg: [Segment; BLKIF_MAX_SEGMENTS_PER_REQUEST],
}

impl Parsed {
    /// The valid segments.
    pub fn segments(&self) -> &[Segment] {
        &self.seg[..self.nsegs as usize]
    }

    /// The sector right after the request's data.
    pub fn end_sector(&self) -> u64 {
        // Cannot overflow: validation checked sector + nr_sectors <= medium.
        self.sector + self.nr_sectors
    }
}

/// Why a request was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RequestError {
    /// Unknown or not offered operation (`BLKIF_RSP_EOPNOTSUPP`).
    NotSupported,
    /// `nr_segments` is 0 for a read/write, or above the negotiated maximum.
    BadSegmentCount,
    /// A segment with `first_sect > last_sect` or `last_sect` beyond its page.
    BadSegment,
    /// The sector range leaves the medium (or overflows).
    OutOfRange,
    /// Not aligned to the medium's logical sector size.
    Misaligned,
    /// A write to a read-only medium.
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

/// Checks one request against `limits`.
pub fn parse(req: &BlkifRequest, limits: &Limits) -> Result<Parsed, RequestError> {
    let op = match req.operation {
        BLKIF_OP_READ => Op::Read,
        BLKIF_OP_WRITE => Op::Write,
        BLKIF_OP_FLUSH_DISKCACHE if limits.flush => Op::Flush,
        BLKIF_OP_WRITE_BARRIER if limits.barrier => Op::Barrier,
        // Discard and indirect requests are not offered by this back-end
        // version; reserved and unknown codes are not operations at all.
        _ => return Err(RequestError::NotSupported),
    };
    let RequestBody::Rw {
        nr_segments,
        sector_number,
        seg,
        ..
    } = req.body
    else {
        return Err(RequestError::NotSupported);
    };

    let nsegs = u32::from(nr_segments);
    let min_segs = if matches!(op, Op::Read | Op::Write) {
        1
    } else {
        0
    };
    let max_segs = limits
        .max_segments
        .min(BLKIF_MAX_SEGMENTS_PER_REQUEST as u32);
    if nsegs < min_segs || nsegs > max_segs {
        return Err(RequestError::BadSegmentCount);
    }
    if op.writes() && nsegs > 0 && limits.read_only {
        return Err(RequestError::ReadOnly);
    }

    // Logical sector size in 512-byte units; a power of two >= 1.
    let lss = u64::from((limits.sector_size >> SECTOR_SHIFT).max(1));
    let mut nr_sectors: u64 = 0;
    for s in &seg[..nsegs as usize] {
        if s.first_sect > s.last_sect || u32::from(s.last_sect) >= SECTORS_PER_PAGE {
            return Err(RequestError::BadSegment);
        }
        if u64::from(s.first_sect) % lss != 0 || (u64::from(s.last_sect) + 1) % lss != 0 {
            return Err(RequestError::Misaligned);
        }
        nr_sectors += u64::from(s.last_sect - s.first_sect) + 1;
    }

    let sector = if nsegs == 0 { 0 } else { sector_number };
    if nsegs > 0 {
        if sector % lss != 0 {
            return Err(RequestError::Misaligned);
        }
        match sector.checked_add(nr_sectors) {
            Some(end) if end <= limits.medium_sectors => {}
            _ => return Err(RequestError::OutOfRange),
        }
    }

    Ok(Parsed {
        id: req.id,
        operation: req.operation,
        op,
        sector,
        nr_sectors,
        nsegs: nr_segments,
        seg,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::abi::{BLKIF_OP_DISCARD, BLKIF_OP_INDIRECT, BLKIF_OP_RESERVED_1};

    const LIM: Limits = Limits {
        max_segments: 11,
        medium_sectors: 1024,
        sector_size: 512,
        read_only: false,
        flush: true,
        barrier: true,
    };

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
        let p = parse(&rw(BLKIF_OP_READ, 8, &[(0, 7), (0, 3)]), &LIM).unwrap();
        assert_eq!(
            (p.op, p.sector, p.nr_sectors, p.nsegs),
            (Op::Read, 8, 12, 2)
        );
        assert_eq!(p.end_sector(), 20);
        assert_eq!(p.id, 0xdead_beef);
    }

    #[test]
    fn unknown_and_unoffered_operations() {
        for op in [
            BLKIF_OP_RESERVED_1,
            BLKIF_OP_DISCARD,
            BLKIF_OP_INDIRECT,
            7,
            255,
        ] {
            let e = parse(&rw(op, 0, &[(0, 7)]), &LIM).unwrap_err();
            assert_eq!(e, RequestError::NotSupported);
            assert_eq!(e.status(), BLKIF_RSP_EOPNOTSUPP);
        }
        let no_flush = Limits {
            flush: false,
            barrier: false,
            ..LIM
        };
        for op in [BLKIF_OP_FLUSH_DISKCACHE, BLKIF_OP_WRITE_BARRIER] {
            assert_eq!(
                parse(&rw(op, 0, &[]), &no_flush),
                Err(RequestError::NotSupported)
            );
        }
    }

    #[test]
    fn segment_counts() {
        assert_eq!(
            parse(&rw(BLKIF_OP_READ, 0, &[]), &LIM),
            Err(RequestError::BadSegmentCount)
        );
        let mut r = rw(BLKIF_OP_WRITE, 0, &[(0, 0)]);
        if let RequestBody::Rw { nr_segments, .. } = &mut r.body {
            *nr_segments = 12;
        }
        assert_eq!(parse(&r, &LIM), Err(RequestError::BadSegmentCount));
        let small = Limits {
            max_segments: 2,
            ..LIM
        };
        assert_eq!(
            parse(&rw(BLKIF_OP_READ, 0, &[(0, 0); 3]), &small),
            Err(RequestError::BadSegmentCount)
        );
        assert!(parse(&rw(BLKIF_OP_FLUSH_DISKCACHE, 0, &[]), &LIM).is_ok());
        assert!(parse(&rw(BLKIF_OP_WRITE_BARRIER, 0, &[]), &LIM).is_ok());
    }

    #[test]
    fn segment_bounds() {
        assert_eq!(
            parse(&rw(BLKIF_OP_READ, 0, &[(4, 3)]), &LIM),
            Err(RequestError::BadSegment)
        );
        assert_eq!(
            parse(&rw(BLKIF_OP_READ, 0, &[(0, 8)]), &LIM),
            Err(RequestError::BadSegment)
        );
        assert_eq!(
            parse(&rw(BLKIF_OP_READ, 0, &[(255, 255)]), &LIM),
            Err(RequestError::BadSegment)
        );
    }

    #[test]
    fn range_and_overflow() {
        assert!(parse(&rw(BLKIF_OP_READ, 1016, &[(0, 7)]), &LIM).is_ok());
        assert_eq!(
            parse(&rw(BLKIF_OP_READ, 1017, &[(0, 7)]), &LIM),
            Err(RequestError::OutOfRange)
        );
        assert_eq!(
            parse(&rw(BLKIF_OP_READ, u64::MAX - 3, &[(0, 7)]), &LIM),
            Err(RequestError::OutOfRange)
        );
    }

    #[test]
    fn four_k_medium_alignment() {
        let lim = Limits {
            sector_size: 4096,
            ..LIM
        };
        assert!(parse(&rw(BLKIF_OP_WRITE, 16, &[(0, 7), (0, 7)]), &lim).is_ok());
        assert_eq!(
            parse(&rw(BLKIF_OP_WRITE, 12, &[(0, 7)]), &lim),
            Err(RequestError::Misaligned)
        );
        assert_eq!(
            parse(&rw(BLKIF_OP_WRITE, 8, &[(1, 7)]), &lim),
            Err(RequestError::Misaligned)
        );
        assert_eq!(
            parse(&rw(BLKIF_OP_WRITE, 8, &[(0, 6)]), &lim),
            Err(RequestError::Misaligned)
        );
    }

    #[test]
    fn read_only_media() {
        let ro = Limits {
            read_only: true,
            ..LIM
        };
        assert!(parse(&rw(BLKIF_OP_READ, 0, &[(0, 7)]), &ro).is_ok());
        assert_eq!(
            parse(&rw(BLKIF_OP_WRITE, 0, &[(0, 7)]), &ro),
            Err(RequestError::ReadOnly)
        );
        assert_eq!(
            parse(&rw(BLKIF_OP_FLUSH_DISKCACHE, 0, &[(0, 7)]), &ro),
            Err(RequestError::ReadOnly)
        );
    }
}
