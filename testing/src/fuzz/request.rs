//! `fuzz_request`: arbitrary slot bytes decoded as `io/blkif.h` requests of
//! both ABIs and validated against arbitrary limits.

use xbb::abi::{
    Abi, BlkifRequest, RequestBody, Segment, BLKIF_MAX_SEGMENTS_PER_REQUEST,
    BLKIF_OP_FLUSH_DISKCACHE, BLKIF_OP_READ, BLKIF_OP_WRITE, BLKIF_OP_WRITE_BARRIER,
    BLKIF_RSP_EOPNOTSUPP, BLKIF_RSP_ERROR, MAX_SLOT_SIZE, SECTORS_PER_PAGE, SECTOR_SHIFT,
};
use xbb::coalesce;
use xbb::host::{IoVec, PAGE_SIZE};
use xbb::request::{self, Limits, Op};
use xbb::units::{SectorSize, Sectors, WindowPage};

use super::input::Input;

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
        medium_sectors: Sectors(r.u64() >> (r.u8() % 64)),
        sector_size: SectorSize::new(512 << (flags & 3)).expect("512 to 4096"),
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
    // The oracle reasons in plain numbers, apart from the core's types.
    let (sector, nr, medium) = (p.sector.0, p.nr_sectors.0, lim.medium_sectors.0);
    let lss = u64::from(lim.sector_size.get() >> SECTOR_SHIFT);
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
            assert_eq!((sector, nr, n), (sector_number, nr_sectors, 0));
            assert_eq!(sector % lss, 0);
            assert_eq!(nr % lss, 0);
            let end = sector.checked_add(nr).expect("end overflows");
            assert!(end <= medium, "outside the medium");
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
            assert_eq!(sector, sector_number);
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
    assert_eq!(nr, sectors);
    if n == 0 {
        assert_eq!((sector, nr), (0, 0));
        return;
    }
    assert_eq!(sector % lss, 0);
    let end = sector.checked_add(nr).expect("end overflows");
    assert!(end <= medium, "outside the medium");
    assert_eq!(p.end_sector().0, end);

    // Consecutive window pages from 3 on: the iovecs cover the data exactly.
    let first_page = 3u32;
    let mut iov = [IoVec::default(); 4096];
    let pages = (0..n as u32).map(|i| Some(WindowPage(first_page + i)));
    let k = coalesce::append_iovecs(segs[..n].iter().zip(pages), &mut iov, 0).expect("room");
    let base = first_page as usize * PAGE_SIZE;
    let mut total = 0u64;
    for v in &iov[..k] {
        assert!(v.window_offset >= base && v.window_offset + v.len <= base + n * PAGE_SIZE);
        total += v.len as u64;
    }
    assert_eq!(total, nr << SECTOR_SHIFT);
}
