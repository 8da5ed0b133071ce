//! Coalescing of back-to-back requests into one I/O ("reqlist").
//!
//! Front-ends split large transfers into requests of at most
//! `BLKIF_MAX_SEGMENTS_PER_REQUEST` pages (44 KiB with 4 KiB pages). When
//! request *n+1* starts on the medium exactly where request *n* ends and does
//! the same thing, the back-end serves both with one I/O: their segments get
//! consecutive pages of the mapping window ([`crate::kva`]), so the I/O is one
//! buffer. This module holds the two pure decisions: whether a request may
//! join the open reqlist, and how the reqlist's segments become iovecs.

use crate::abi::{Segment, SECTORS_PER_PAGE, SECTOR_SHIFT};
use crate::host::{IoVec, PAGE_SIZE};
use crate::request::{Op, Parsed};

/// What the open reqlist looks like, for the append decision.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OpenRun {
    /// Its operation.
    pub op: Op,
    /// The sector right after its data.
    pub next_sector: u64,
    /// Pages (segments) it holds.
    pub pages: u32,
    /// Bytes of data it holds.
    pub bytes: u64,
}

/// The bounds of one reqlist.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Budget {
    /// Most pages (segments) in one reqlist.
    pub max_pages: u32,
    /// Most bytes in one reqlist.
    pub max_bytes: u64,
}

/// Whether `next` may join `open`: both plain reads or both plain writes,
/// `next` starts where `open` ends, and the result stays within `budget`.
/// Flushes and barriers never coalesce: they are ordering points.
pub fn may_join(open: &OpenRun, next: &Parsed, budget: &Budget) -> bool {
    matches!(open.op, Op::Read | Op::Write)
        && open.op == next.op
        && open.next_sector == next.sector
        && open.pages + u32::from(next.nsegs) <= budget.max_pages
        && open.bytes + (next.nr_sectors << SECTOR_SHIFT) <= budget.max_bytes
}

/// Builds the iovecs of segments that occupy consecutive window pages from
/// `first_page` on, one page per segment, in order. A segment that starts
/// at the beginning of its page extends the previous iovec when that one
/// ended at the end of the page before. Returns how many entries of `out`
/// were written; `out` must have room for one entry per segment.
pub fn build_iovecs<'a>(
    segments: impl Iterator<Item = &'a Segment>,
    first_page: u32,
    out: &mut [IoVec],
) -> usize {
    let mut n = 0usize;
    let mut prev_ends_page = false;
    for (i, s) in segments.enumerate() {
        let page_off = (first_page as usize + i) * PAGE_SIZE;
        let start = page_off + ((s.first_sect as usize) << SECTOR_SHIFT);
        let len = ((s.last_sect - s.first_sect) as usize + 1) << SECTOR_SHIFT;
        if n > 0 && prev_ends_page && s.first_sect == 0 {
            out[n - 1].len += len;
        } else {
            out[n] = IoVec {
                window_offset: start,
                len,
            };
            n += 1;
        }
        prev_ends_page = u32::from(s.last_sect) + 1 == SECTORS_PER_PAGE;
    }
    n
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::abi::BLKIF_MAX_SEGMENTS_PER_REQUEST;

    fn parsed(op: Op, sector: u64, nsegs: u8) -> Parsed {
        Parsed {
            id: 0,
            operation: 0,
            op,
            sector,
            nr_sectors: u64::from(nsegs) * 8,
            nsegs,
            seg: [Segment {
                gref: 1,
                first_sect: 0,
                last_sect: 7,
            }; BLKIF_MAX_SEGMENTS_PER_REQUEST],
        }
    }

    const B: Budget = Budget {
        max_pages: 22,
        max_bytes: 1 << 20,
    };

    #[test]
    fn joins_only_contiguous_same_op_within_budget() {
        let open = OpenRun {
            op: Op::Write,
            next_sector: 88,
            pages: 11,
            bytes: 11 * 4096,
        };
        assert!(may_join(&open, &parsed(Op::Write, 88, 11), &B));
        assert!(!may_join(&open, &parsed(Op::Write, 96, 1), &B));
        assert!(!may_join(&open, &parsed(Op::Read, 88, 1), &B));
        assert!(!may_join(
            &open,
            &parsed(Op::Write, 88, 11),
            &Budget { max_pages: 21, ..B }
        ));
        assert!(!may_join(
            &open,
            &parsed(Op::Write, 88, 1),
            &Budget {
                max_bytes: 11 * 4096,
                ..B
            }
        ));
        let flush = OpenRun {
            op: Op::Flush,
            ..open
        };
        assert!(!may_join(&flush, &parsed(Op::Flush, 88, 1), &B));
    }

    #[test]
    fn iovecs_merge_page_continuations() {
        let segs = [
            Segment {
                gref: 1,
                first_sect: 2,
                last_sect: 7,
            },
            Segment {
                gref: 2,
                first_sect: 0,
                last_sect: 7,
            },
            Segment {
                gref: 3,
                first_sect: 0,
                last_sect: 3,
            },
            Segment {
                gref: 4,
                first_sect: 0,
                last_sect: 7,
            },
            Segment {
                gref: 5,
                first_sect: 1,
                last_sect: 1,
            },
        ];
        let mut out = [IoVec::default(); 5];
        let n = build_iovecs(segs.iter(), 10, &mut out);
        assert_eq!(n, 3);
        assert_eq!(
            out[0],
            IoVec {
                window_offset: 10 * 4096 + 1024,
                len: 3072 + 4096 + 2048
            }
        );
        assert_eq!(
            out[1],
            IoVec {
                window_offset: 13 * 4096,
                len: 4096
            }
        );
        assert_eq!(
            out[2],
            IoVec {
                window_offset: 14 * 4096 + 512,
                len: 512
            }
        );
    }
}
