//! Coalescing of back-to-back requests into one I/O ("reqlist").
//!
//! Front-ends split large transfers into requests of at most
//! `BLKIF_MAX_SEGMENTS_PER_REQUEST` pages (44 KiB with 4 KiB pages). When
//! request *n+1* starts on the medium exactly where request *n* ends and does
//! the same thing, the back-end serves both with one I/O: their segments get
//! consecutive pages of the mapping window ([`crate::kva`]), so the I/O is one
//! buffer. This module holds the two pure decisions: whether a request may
//! join the open reqlist, and how the reqlist's segments become iovecs.

use crate::abi::{Segment, SECTOR_SHIFT};
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

/// Appends the iovecs of `segments`, each paired with the window page
/// holding it, to `out[..n]`, returning the new length. A segment that
/// continues exactly where the previous iovec ends (the previous page's
/// data ran to its end and this one starts at its page's beginning, on the
/// next window page) extends that iovec, so a reqlist mapped on
/// consecutive pages is one buffer. `None` when a segment has no page or
/// `out` is full (neither happens for a reqlist within its budget).
pub fn append_iovecs<'a>(
    segments: impl Iterator<Item = (&'a Segment, Option<u32>)>,
    out: &mut [IoVec],
    mut n: usize,
) -> Option<usize> {
    for (s, page) in segments {
        let start = page? as usize * PAGE_SIZE + ((s.first_sect as usize) << SECTOR_SHIFT);
        let len = ((s.last_sect - s.first_sect) as usize + 1) << SECTOR_SHIFT;
        match n.checked_sub(1).and_then(|i| out.get_mut(i)) {
            Some(prev) if prev.window_offset + prev.len == start => prev.len += len,
            _ => {
                *out.get_mut(n)? = IoVec {
                    window_offset: start,
                    len,
                };
                n += 1;
            }
        }
    }
    Some(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parsed(op: Op, sector: u64, nsegs: u16) -> Parsed {
        Parsed {
            id: 0,
            operation: 0,
            op,
            sector,
            nr_sectors: u64::from(nsegs) * 8,
            nsegs,
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
    fn iovecs_follow_scattered_pages_and_refuse_overflow() {
        let full = Segment {
            gref: 1,
            first_sect: 0,
            last_sect: 7,
        };
        let segs = [full; 4];
        let mut out = [IoVec::default(); 4];
        // Persistent pages need not be consecutive: 7, 8 merge; 3 and 20 don't.
        let pages = [Some(7), Some(8), Some(3), Some(20)];
        let n = append_iovecs(segs.iter().zip(pages), &mut out, 0).unwrap();
        assert_eq!(n, 3);
        assert_eq!(
            out[0],
            IoVec {
                window_offset: 7 * 4096,
                len: 8192
            }
        );
        assert_eq!(
            out[1],
            IoVec {
                window_offset: 3 * 4096,
                len: 4096
            }
        );
        // Appending continues after an earlier request's iovecs.
        let n2 = append_iovecs(segs[..1].iter().zip([Some(21)]), &mut out, n).unwrap();
        assert_eq!(n2, 3);
        assert_eq!(
            out[2],
            IoVec {
                window_offset: 20 * 4096,
                len: 8192
            }
        );
        assert_eq!(
            append_iovecs(segs[..1].iter().zip([None]), &mut out, 0),
            None
        );
        let mut tiny = [IoVec::default(); 1];
        assert_eq!(
            append_iovecs(segs.iter().zip([Some(1), Some(5)]), &mut tiny, 0),
            None
        );
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
        let pages = [10, 11, 12, 13, 14].map(Some);
        let n = append_iovecs(segs.iter().zip(pages), &mut out, 0).unwrap();
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
