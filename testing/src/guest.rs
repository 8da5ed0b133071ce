//! The guest's side of a test: requests over whole granted pages, and the
//! responses a front-end takes off its ring.

use xbb::abi::{BlkifRequest, BlkifResponse, Segment, BLKIF_MAX_SEGMENTS_PER_REQUEST};
use xbb::host::GrantRef;
use xbb::ring::FrontRing;

/// A request (`struct blkif_request`) over whole pages `grefs` (at most
/// eleven) from `sector`: a read or write, or a flush or barrier (with
/// data, or none). Builds on the stack: tests of the allocation-free I/O
/// path call it while allocations are counted.
pub fn request(operation: u8, id: u64, sector: u64, grefs: &[GrantRef]) -> BlkifRequest {
    let mut segs = [Segment::default(); BLKIF_MAX_SEGMENTS_PER_REQUEST];
    let n = grefs.len().min(segs.len());
    for (s, &g) in segs.iter_mut().zip(grefs) {
        *s = Segment::whole_page(g);
    }
    BlkifRequest::rw(operation, id, sector, &segs[..n])
}

/// Every response published so far, in ring order. Panics when the
/// back-end published an impossible `rsp_prod` (a test's failure).
pub fn responses(front: &mut FrontRing) -> Vec<BlkifResponse> {
    std::iter::from_fn(|| front.take_response().expect("back-end broke the ring")).collect()
}

/// Each id in `ids` answered exactly once, nothing else answered.
pub fn assert_answered_once(rsps: &[BlkifResponse], ids: &[u64]) {
    let mut got: Vec<u64> = rsps.iter().map(|r| r.id).collect();
    got.sort_unstable();
    let mut want = ids.to_vec();
    want.sort_unstable();
    assert_eq!(got, want, "responses: {rsps:?}");
}

/// The status of the response to `id`.
pub fn status_of(rsps: &[BlkifResponse], id: u64) -> i16 {
    rsps.iter()
        .find(|r| r.id == id)
        .unwrap_or_else(|| panic!("request {id} not answered: {rsps:?}"))
        .status
}
