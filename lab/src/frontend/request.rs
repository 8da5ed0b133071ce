//! Hand-made requests: the shapes a scenario or a test asks for, hostile
//! ones included, and how the front-end writes them to its ring.

use super::*;

/// A request built by hand (scenarios, validation tests).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ManualRequest {
    /// `operation` (any byte, valid or not).
    pub operation: u8,
    /// `sector_number`.
    pub sector: u64,
    /// One `(first_sect, last_sect)` per segment; a granted page each (at
    /// most 11 are written into the slot).
    pub segs: Vec<(u8, u8)>,
    /// Writes this `nr_segments` instead of `segs.len()`.
    pub nr_segments_override: Option<u8>,
    /// Grants the pages read-only (the back-end cannot write them).
    pub readonly_grants: bool,
    /// Fills each segment's sectors with this byte before submitting.
    pub fill: Option<u8>,
}

impl ManualRequest {
    /// A read of `pages` full pages at `sector`.
    pub fn read(sector: u64, pages: usize) -> ManualRequest {
        ManualRequest {
            operation: BLKIF_OP_READ,
            sector,
            segs: std::vec![(0, 7); pages],
            ..ManualRequest::default()
        }
    }

    /// A write of `pages` full pages of `byte` at `sector`.
    pub fn write(sector: u64, pages: usize, byte: u8) -> ManualRequest {
        ManualRequest {
            operation: BLKIF_OP_WRITE,
            sector,
            segs: std::vec![(0, 7); pages],
            fill: Some(byte),
            ..ManualRequest::default()
        }
    }

    /// This request as a [`FeatureRequest`] sent as `BLKIF_OP_INDIRECT`
    /// with `indirect_op` (any byte): `segs` (up to [`MAX_INDIRECT_SEGMENTS`],
    /// a granted page each) are described in descriptor pages granted
    /// read-only; `operation` and `nr_segments_override` are ignored (see
    /// [`FeatureRequest::nr_segments`]).
    pub fn indirect(self, indirect_op: u8) -> FeatureRequest {
        FeatureRequest {
            indirect: Some(IndirectShape {
                indirect_op,
                ..IndirectShape::default()
            }),
            ..FeatureRequest::from(self)
        }
    }
}

/// How a [`FeatureRequest`] is sent as `BLKIF_OP_INDIRECT`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct IndirectShape {
    /// `indirect_op` (any byte, valid or not).
    pub indirect_op: u8,
    /// Writes this `nr_segments` instead of the number of segments.
    pub nr_segments: Option<u16>,
    /// Grants this many descriptor pages (the first ones named in
    /// `indirect_grefs`, at most `BLKIF_MAX_INDIRECT_PAGES_PER_REQUEST`)
    /// instead of as many as the segments need; descriptors that do not fit
    /// are left out.
    pub pages: Option<u8>,
    /// `indirect_grefs[i]` replaced by a raw reference (e.g. one the guest
    /// never granted), whatever was granted.
    pub raw_grefs: [Option<GrantRef>; BLKIF_MAX_INDIRECT_PAGES_PER_REQUEST],
}

/// What a segment substitution ([`FeatureRequest::segment_grant`]) puts
/// in a segment's `gref`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SegmentGrant {
    /// The grant of another segment of the same request (a duplicate
    /// reference in one request).
    SameAs(usize),
    /// The grant of segment `seg` of manual request `id`, which must still
    /// be in flight, i.e. not reaped yet (a grant used by two in-flight
    /// requests). The page stays granted until the last request naming it
    /// has been answered.
    InFlight {
        /// The other request.
        id: u64,
        /// Its segment.
        seg: usize,
    },
    /// A raw reference (e.g. one the guest never granted).
    Raw(GrantRef),
}

/// A manual request of any kind, including those [`ManualRequest`] alone
/// cannot express: indirect requests ([`ManualRequest::indirect`]),
/// discards ([`FeatureRequest::discard`]), a chosen queue, and segments
/// naming chosen grants ([`FeatureRequest::segment_grant`]). Submitted with
/// [`Frontend::submit_feature`] / [`Frontend::submit_features`].
///
/// ```no_run
/// # use xbb_lab::frontend::*;
/// # use xbb::abi::*;
/// # fn f(fe: &mut Frontend) -> Result<(), FrontendError> {
/// // 20 pages in one indirect write, with segment 3 naming segment 0's grant.
/// let req = ManualRequest::write(64, 20, 0x11)
///     .indirect(BLKIF_OP_WRITE)
///     .segment_grant(3, SegmentGrant::SameAs(0));
/// let id = fe.submit_feature(&req)?;
/// // A secure discard of 16 sectors at 128, on queue 1.
/// fe.submit_feature(&FeatureRequest::discard(128, 16, BLKIF_DISCARD_SECURE).on_queue(1))?;
/// # let _ = id; Ok(()) }
/// ```
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FeatureRequest {
    /// The request: `sector`, `segs`, `fill`, `readonly_grants`, and for a
    /// request that is neither indirect nor discard, `operation` and
    /// `nr_segments_override` too (sent exactly as [`Frontend::submit`]).
    pub base: ManualRequest,
    /// The queue (ring) to push it on.
    pub queue: u32,
    /// Sent as `BLKIF_OP_INDIRECT`.
    pub indirect: Option<IndirectShape>,
    /// Sent as `BLKIF_OP_DISCARD`: `(nr_sectors, flag)`, at `base.sector`;
    /// no page is granted.
    pub discard: Option<(u64, u8)>,
    /// Segment `i`'s grant replaced: `(i, what)`. A replaced segment gets no
    /// page of its own.
    pub seg_grants: Vec<(usize, SegmentGrant)>,
}

impl From<ManualRequest> for FeatureRequest {
    fn from(base: ManualRequest) -> FeatureRequest {
        FeatureRequest {
            base,
            ..FeatureRequest::default()
        }
    }
}

impl FeatureRequest {
    /// A `BLKIF_OP_DISCARD` of `nr_sectors` at `sector` with `flag` (0 or
    /// `BLKIF_DISCARD_SECURE`, or any byte).
    pub fn discard(sector: u64, nr_sectors: u64, flag: u8) -> FeatureRequest {
        FeatureRequest {
            base: ManualRequest {
                operation: BLKIF_OP_DISCARD,
                sector,
                ..ManualRequest::default()
            },
            discard: Some((nr_sectors, flag)),
            ..FeatureRequest::default()
        }
    }

    /// On queue `q` (default 0).
    pub fn on_queue(mut self, q: u32) -> FeatureRequest {
        self.queue = q;
        self
    }

    /// An indirect request's `nr_segments` set to `n`, whatever the number
    /// of segments.
    pub fn nr_segments(mut self, n: u16) -> FeatureRequest {
        let mut shape = self.indirect.unwrap_or_default();
        shape.nr_segments = Some(n);
        self.indirect = Some(shape);
        self
    }

    /// An indirect request with `n` descriptor pages granted, whatever the
    /// segments need.
    pub fn indirect_pages(mut self, n: u8) -> FeatureRequest {
        let mut shape = self.indirect.unwrap_or_default();
        shape.pages = Some(n);
        self.indirect = Some(shape);
        self
    }

    /// An indirect request whose `indirect_grefs[i]` is `gref` (ignored for
    /// `i` beyond the array).
    pub fn indirect_gref(mut self, i: usize, gref: GrantRef) -> FeatureRequest {
        let mut shape = self.indirect.unwrap_or_default();
        if let Some(g) = shape.raw_grefs.get_mut(i) {
            *g = Some(gref);
        }
        self.indirect = Some(shape);
        self
    }

    /// Segment `seg` names `grant` instead of a page of its own.
    pub fn segment_grant(mut self, seg: usize, grant: SegmentGrant) -> FeatureRequest {
        self.seg_grants.push((seg, grant));
        self
    }
}

impl Frontend {
    pub(super) fn push_manual(&mut self, freq: &FeatureRequest) -> Result<u64, FrontendError> {
        if self.conn.is_none() {
            return Err(FrontendError::NotConnected);
        }
        let q = freq.queue as usize;
        if q >= self.nqueues() {
            return Err(FrontendError::Invalid(format!("no queue {q}")));
        }
        if self.ring_q(q)?.free_slots() == 0 {
            return Err(FrontendError::RingFull);
        }
        let req = &freq.base;
        let max_segs = if freq.indirect.is_some() {
            MAX_INDIRECT_SEGMENTS as usize
        } else if freq.discard.is_some() {
            0
        } else {
            BLKIF_MAX_SEGMENTS_PER_REQUEST.max(BLKIF_MAX_INDIRECT_PAGES_PER_REQUEST)
        };
        if req.segs.len() > max_segs {
            return Err(FrontendError::Invalid(format!(
                "{} segments",
                req.segs.len()
            )));
        }
        // Resolve the replaced grants first: nothing is granted if one is
        // impossible.
        let (subs, same_as) = self.resolve_seg_grants(freq)?;
        let (pages, grefs, data) = self.grant_segments(req, &subs, &same_as)?;
        let id = self.new_id();
        let segments: Vec<Segment> = req
            .segs
            .iter()
            .zip(&grefs)
            .map(|(&(first_sect, last_sect), &gref)| Segment {
                gref,
                first_sect,
                last_sect,
            })
            .collect();
        let mut indirect = Vec::new();
        let (operation, body) = if let Some((nr_sectors, flag)) = freq.discard {
            (
                BLKIF_OP_DISCARD,
                RequestBody::Discard {
                    flag,
                    handle: 0,
                    sector_number: req.sector,
                    nr_sectors,
                },
            )
        } else if let Some(shape) = freq.indirect {
            let (body, pages) = self.indirect_body(&shape, &segments, req.sector)?;
            indirect = pages;
            (BLKIF_OP_INDIRECT, body)
        } else {
            (req.operation, self.legacy_body(req, &segments))
        };
        let wire = BlkifRequest {
            operation,
            id,
            body,
        };
        if !self.ring_q(q)?.push_request(&wire) {
            for p in pages.into_iter().flatten().chain(indirect) {
                self.release_page(p)?;
            }
            return Err(FrontendError::RingFull);
        }
        self.manual.insert(
            id,
            ManualInFlight {
                queue: q,
                pages,
                data,
                grefs,
                segs: req.segs.clone(),
                indirect,
            },
        );
        Ok(id)
    }

    /// The grants a request's `seg_grants` put in place of new ones: a raw
    /// reference or an in-flight request's page per segment (`subs`), and
    /// the segments that share another's grant (`same_as`).
    #[allow(clippy::type_complexity)]
    fn resolve_seg_grants(
        &self,
        freq: &FeatureRequest,
    ) -> Result<(Vec<Option<(GrantRef, Option<Gfn>)>>, Vec<(usize, usize)>), FrontendError> {
        let req = &freq.base;
        let mut subs: Vec<Option<(GrantRef, Option<Gfn>)>> = std::vec![None; req.segs.len()];
        let mut same_as = Vec::new();
        for &(i, g) in &freq.seg_grants {
            if i >= req.segs.len() {
                return Err(FrontendError::Invalid(format!("no segment {i}")));
            }
            match g {
                SegmentGrant::Raw(gref) => subs[i] = Some((gref, None)),
                SegmentGrant::InFlight { id, seg } => {
                    let m = self.manual.get(&id).ok_or_else(|| {
                        FrontendError::Invalid(format!("request {id} not in flight"))
                    })?;
                    let (Some(&gref), Some(&gfn)) = (m.grefs.get(seg), m.data.get(seg)) else {
                        return Err(FrontendError::Invalid(format!(
                            "request {id} has no segment {seg}"
                        )));
                    };
                    subs[i] = Some((gref, gfn));
                }
                SegmentGrant::SameAs(j) => {
                    if j >= req.segs.len() || freq.seg_grants.iter().any(|&(k, _)| k == j) {
                        return Err(FrontendError::Invalid(format!(
                            "segment {i} cannot share segment {j}'s grant"
                        )));
                    }
                    same_as.push((i, j));
                }
            }
        }
        Ok((subs, same_as))
    }

    /// Grants a page for every segment not substituted, filled with the
    /// request's byte over the segment's sectors; returns the pages it
    /// granted, each segment's grant and its page's frame.
    #[allow(clippy::type_complexity)]
    fn grant_segments(
        &mut self,
        req: &ManualRequest,
        subs: &[Option<(GrantRef, Option<Gfn>)>],
        same_as: &[(usize, usize)],
    ) -> Result<(Vec<Option<Page>>, Vec<GrantRef>, Vec<Option<Gfn>>), FrontendError> {
        let mut pages: Vec<Option<Page>> = Vec::new();
        let mut grefs = Vec::new();
        let mut data = Vec::new();
        for (i, &(first, last)) in req.segs.iter().enumerate() {
            if let Some((gref, gfn)) = subs[i] {
                pages.push(None);
                grefs.push(gref);
                data.push(gfn);
                continue;
            }
            if same_as.iter().any(|&(k, _)| k == i) {
                pages.push(None);
                grefs.push(0);
                data.push(None);
                continue;
            }
            let p = if req.readonly_grants {
                self.grant_page(true)?
            } else {
                self.data_page(false)?
            };
            let (off, len) = seg_span(first, last);
            let byte = req.fill.unwrap_or(0);
            self.guest
                .memory
                .fill(p.gfn, 0, PAGE_SIZE, 0)
                .and_then(|_| self.guest.memory.fill(p.gfn, off, len, byte))
                .map_err(|e| FrontendError::Os(format!("{e:?}")))?;
            pages.push(Some(p));
            grefs.push(p.gref);
            data.push(Some(p.gfn));
        }
        for &(i, j) in same_as {
            grefs[i] = grefs[j];
            data[i] = data[j];
        }
        Ok((pages, grefs, data))
    }

    /// The body of an indirect request of `shape` over `segments`, with its
    /// descriptor pages granted and written; returns those pages too.
    fn indirect_body(
        &mut self,
        shape: &IndirectShape,
        segments: &[Segment],
        sector: u64,
    ) -> Result<(RequestBody, Vec<Page>), FrontendError> {
        let mut indirect = Vec::new();
        let needed = segments.len().div_ceil(SEGMENTS_PER_INDIRECT_PAGE);
        let npages = shape
            .pages
            .map_or(needed, usize::from)
            .min(BLKIF_MAX_INDIRECT_PAGES_PER_REQUEST);
        let mut indirect_grefs = [0u32; BLKIF_MAX_INDIRECT_PAGES_PER_REQUEST];
        for (k, g) in indirect_grefs.iter_mut().enumerate().take(npages) {
            let start = k * SEGMENTS_PER_INDIRECT_PAGE;
            let end = segments.len().min(start + SEGMENTS_PER_INDIRECT_PAGE);
            let p = self.descriptor_page()?;
            self.write_descriptors(p.gfn, segments.get(start..end).unwrap_or(&[]))?;
            *g = p.gref;
            indirect.push(p);
        }
        for (g, raw) in indirect_grefs.iter_mut().zip(shape.raw_grefs) {
            if let Some(raw) = raw {
                *g = raw;
            }
        }
        Ok((
            RequestBody::Indirect {
                indirect_op: shape.indirect_op,
                nr_segments: shape
                    .nr_segments
                    .unwrap_or(segments.len().min(usize::from(u16::MAX)) as u16),
                handle: 0,
                sector_number: sector,
                indirect_grefs,
            },
            indirect,
        ))
    }

    /// The body of a plain [`ManualRequest`], whatever its operation:
    /// `BLKIF_OP_DISCARD` covers as many sectors as its segments do, and
    /// `BLKIF_OP_INDIRECT` names its data pages as descriptor pages (both
    /// only to test refusal paths; [`FeatureRequest`] builds real ones).
    pub(super) fn legacy_body(&self, req: &ManualRequest, segments: &[Segment]) -> RequestBody {
        let nsegs = req
            .nr_segments_override
            .unwrap_or(req.segs.len().min(255) as u8);
        match req.operation {
            BLKIF_OP_DISCARD => RequestBody::Discard {
                flag: 0,
                handle: 0,
                sector_number: req.sector,
                nr_sectors: req
                    .segs
                    .iter()
                    .map(|&(f, l)| u64::from(l.saturating_sub(f)) + 1)
                    .sum::<u64>()
                    .max(1),
            },
            BLKIF_OP_INDIRECT => {
                let mut indirect_grefs = [0u32; BLKIF_MAX_INDIRECT_PAGES_PER_REQUEST];
                for (g, s) in indirect_grefs.iter_mut().zip(segments) {
                    *g = s.gref;
                }
                RequestBody::Indirect {
                    indirect_op: BLKIF_OP_WRITE,
                    nr_segments: u16::from(nsegs),
                    handle: 0,
                    sector_number: req.sector,
                    indirect_grefs,
                }
            }
            _ => {
                let mut seg = [Segment::default(); BLKIF_MAX_SEGMENTS_PER_REQUEST];
                for (s, d) in seg.iter_mut().zip(segments) {
                    *s = *d;
                }
                RequestBody::Rw {
                    nr_segments: nsegs,
                    handle: 0,
                    sector_number: req.sector,
                    seg,
                }
            }
        }
    }

    /// Fills descriptor page `gfn`: `segs` as 8-byte
    /// `struct blkif_request_segment`s, the rest zero.
    pub(super) fn write_descriptors(
        &self,
        gfn: Gfn,
        segs: &[Segment],
    ) -> Result<(), FrontendError> {
        let mut page = std::vec![0u8; PAGE_SIZE];
        for (s, out) in segs.iter().zip(page.chunks_mut(SEGMENT_SIZE)) {
            encode_segment(s, out);
        }
        self.guest
            .memory
            .write(gfn, 0, &page)
            .map_err(|e| FrontendError::Os(format!("{e:?}")))
    }
}
