//! The front-end half of the XenBus handshake: connect, publish the
//! transport parameters, read what the back-end offers, disconnect.

use super::*;

impl Frontend {
    /// The front-end side of the XenBus handshake: waits for the back-end's
    /// InitWait, sets up and grants the rings (one per queue), allocates
    /// their event channels, publishes the transport parameters (with the
    /// overrides), enters Initialised (or Connected when the profile skips
    /// it), waits for the back-end's Connected and reads what it offers
    /// (the features of the profile are used only when offered). A back-end
    /// that goes to Closing or Closed instead gives
    /// [`FrontendError::Refused`] with its error node.
    ///
    /// With several queues, `multi-queue-num-queues` is written and each
    /// queue's `ring-ref` (or `ring-ref%u`) and `event-channel` go under
    /// `queue-N/`; `ring-page-order` stays at the top. With one queue, the
    /// legacy top-level keys (and `multi-queue-num-queues` = 1 when the
    /// profile wanted more but the back-end offers one).
    pub fn connect(&mut self) -> Result<BackendInfo, FrontendError> {
        if self.conn.is_some() {
            return Err(FrontendError::Invalid(
                "connect: a ring is already set up; disconnect first".into(),
            ));
        }
        // A fresh start: clear what an earlier front-end left, then
        // Initialising (which also restarts an online back-end in Closed).
        self.clear_transport();
        self.write_state(XenbusState::Initialising)?;
        self.wait_backend(
            "back-end InitWait",
            |s| s == XenbusState::InitWait,
            |s| s == XenbusState::Closing,
        )?;

        let max_order = self
            .read_num(&format!("{}/{}", self.be_path, keys::MAX_RING_PAGE_ORDER))?
            .unwrap_or(0);
        let order = u64::from(self.profile.ring_page_order)
            .min(max_order)
            .min(5) as u32;
        let pages = 1u32 << order;
        let max_queues = self.read_num(&format!(
            "{}/{}",
            self.be_path,
            keys::MULTI_QUEUE_MAX_QUEUES
        ))?;
        let nqueues = match max_queues {
            Some(m) if self.profile.queues > 1 => {
                u32::try_from(m.clamp(1, u64::from(self.profile.queues))).unwrap_or(1)
            }
            _ => 1,
        };

        self.info = BackendInfo {
            max_ring_page_order: max_order as u32,
            ring_pages: pages,
            queues: nqueues,
            ..BackendInfo::default()
        };
        let mut queues = Vec::new();
        for _ in 0..nqueues {
            match self.setup_queue(pages) {
                Ok(q) => queues.push(q),
                Err(e) => {
                    self.conn = Some(Conn { queues });
                    let _ = self.release_connection();
                    return Err(e);
                }
            }
        }
        self.info.ring_size = queues
            .first()
            .and_then(|q| q.ring.as_ref())
            .map_or(0, |r| r.size());
        self.conn = Some(Conn { queues });

        let nodes = match self.transport_nodes(order, nqueues, max_queues.is_some()) {
            Ok(n) => n,
            Err(e) => {
                let _ = self.release_connection();
                return Err(e);
            }
        };
        let state = if self.profile.skip_initialised {
            XenbusState::Connected
        } else {
            XenbusState::Initialised
        };
        self.publish_transport(&nodes, state)?;

        self.wait_backend(
            "back-end Connected",
            |s| s == XenbusState::Connected,
            |s| matches!(s, XenbusState::Closing | XenbusState::Closed),
        )?;
        if !self.profile.skip_initialised {
            self.write_state(XenbusState::Connected)?;
        }
        self.read_backend_info()?;
        Ok(self.info.clone())
    }

    /// Removes every transport node an earlier front-end may have left.
    fn clear_transport(&mut self) {
        for k in TRANSPORT_KEYS {
            let _ = self.xs.remove(&format!("{}/{k}", self.fe_path));
        }
        for i in 0..32 {
            let _ = self
                .xs
                .remove(&format!("{}/{}{i}", self.fe_path, keys::RING_REF));
        }
        if let Ok(children) = self.xs.directory(&self.fe_path) {
            for c in children
                .iter()
                .filter(|c| c.starts_with(keys::QUEUE_DIR_PREFIX))
            {
                let _ = self.xs.remove(&format!("{}/{c}", self.fe_path));
            }
        }
    }

    /// The transport parameters to publish for `nqueues` rings of `2^order`
    /// pages (`multi-queue-num-queues` only when the back-end offered
    /// multi-queue), with the test's overrides applied.
    fn transport_nodes(
        &self,
        order: u32,
        nqueues: u32,
        max_queues_offered: bool,
    ) -> Result<BTreeMap<String, Option<String>>, FrontendError> {
        let pages = 1u32 << order;
        let conn = self.conn.as_ref().ok_or(FrontendError::NotConnected)?;
        let mut nodes: BTreeMap<String, Option<String>> = BTreeMap::new();
        for (n, q) in conn.queues.iter().enumerate() {
            let dir = if nqueues > 1 {
                format!("{}{n}/", keys::QUEUE_DIR_PREFIX)
            } else {
                String::new()
            };
            if order == 0 {
                nodes.insert(
                    format!("{dir}{}", keys::RING_REF),
                    Some(q.ring_grefs[0].to_string()),
                );
            } else {
                for (i, g) in q.ring_grefs.iter().enumerate() {
                    nodes.insert(format!("{dir}{}{i}", keys::RING_REF), Some(g.to_string()));
                }
            }
            nodes.insert(
                format!("{dir}{}", keys::EVENT_CHANNEL),
                Some(q.port.to_string()),
            );
        }
        if max_queues_offered && self.profile.queues > 1 {
            nodes.insert(
                keys::MULTI_QUEUE_NUM_QUEUES.into(),
                Some(nqueues.to_string()),
            );
        }
        if self.profile.legacy_num_ring_pages {
            if order > 0 {
                nodes.insert(keys::NUM_RING_PAGES.into(), Some(pages.to_string()));
            }
        } else if order > 0 {
            nodes.insert(keys::RING_PAGE_ORDER.into(), Some(order.to_string()));
        }
        let proto = match self.profile.abi {
            Abi::X86_32 => XEN_IO_PROTO_ABI_X86_32,
            Abi::X86_64 => XEN_IO_PROTO_ABI_X86_64,
        };
        nodes.insert(keys::PROTOCOL.into(), Some(proto.to_string()));
        if self.profile.persistent {
            nodes.insert(keys::FEATURE_PERSISTENT.into(), Some("1".into()));
        }
        let computed = nodes.clone();
        for (k, o) in &self.overrides {
            let v = match o {
                XsOverride::Value(v) => Some(v.clone()),
                XsOverride::Absent => None,
                XsOverride::SameAs(other) => {
                    Some(computed.get(other).cloned().flatten().ok_or_else(|| {
                        FrontendError::Invalid(format!(
                            "{k}: same as {other}, which this front-end does not publish"
                        ))
                    })?)
                }
            };
            nodes.insert(k.clone(), v);
        }
        Ok(nodes)
    }

    /// One queue's ring: guest frames granted to the back-end, seen by the
    /// guest through its own mapping of them, and an unbound event channel
    /// whose events bump the front-end's event counter.
    pub(super) fn setup_queue(&mut self, pages: u32) -> Result<Queue, FrontendError> {
        let mut res =
            Reservation::new(pages as usize).map_err(|e| FrontendError::Os(e.to_string()))?;
        let mut ring_frames = Vec::new();
        for i in 0..pages as usize {
            let Some(gfn) = self.guest.memory.alloc_frame() else {
                for &f in &ring_frames {
                    let _ = self.guest.memory.free_frame(f);
                }
                return Err(FrontendError::NoMemory);
            };
            ring_frames.push(gfn);
            res.map_frame_at(i, self.guest.memory.memfd(), gfn, true)
                .map_err(|e| FrontendError::Os(e.to_string()))?;
        }
        let mem = res
            .shared_mem(0, pages as usize)
            .map_err(|e| FrontendError::Os(e.to_string()))?;
        let ring = match FrontRing::init_at(mem, self.profile.abi, pages, self.ring_start) {
            Ok(r) => r,
            Err(e) => return Err(FrontendError::Invalid(format!("ring: {e:?}"))),
        };
        let ring_grefs = ring_frames
            .iter()
            .map(|&gfn| self.guest.grants.grant(gfn, self.be_dom, false))
            .collect();
        let port = self.hub.alloc_unbound(self.fe_dom, self.be_dom);
        let ev = Arc::clone(&self.events);
        let queue = Queue {
            ring: Some(ring),
            res,
            ring_frames,
            ring_grefs,
            port,
        };
        self.hub
            .set_handler(self.fe_dom, port, std::boxed::Box::new(move || bump(&ev)))
            .map_err(|e| FrontendError::Os(format!("evtchn: {e:?}")))?;
        Ok(queue)
    }

    pub(super) fn publish_transport(
        &self,
        nodes: &BTreeMap<String, Option<String>>,
        state: XenbusState,
    ) -> Result<(), FrontendError> {
        for _ in 0..64 {
            let t = self.xs.transaction_start();
            let mut failed = None;
            for (k, v) in nodes {
                if let Some(v) = v {
                    let p = format!("{}/{k}", self.fe_path);
                    if let Err(e) = self.xs.write_in(t, &p, v.as_bytes()) {
                        failed = Some(Self::xs_err(&p, e));
                        break;
                    }
                }
            }
            if failed.is_none() {
                let p = format!("{}/{}", self.fe_path, keys::STATE);
                if let Err(e) = self.xs.write_in(t, &p, state.as_str().as_bytes()) {
                    failed = Some(Self::xs_err(&p, e));
                }
            }
            if let Some(e) = failed {
                let _ = self.xs.transaction_end(t, false);
                return Err(e);
            }
            match self.xs.transaction_end(t, true) {
                Ok(()) => return Ok(()),
                Err(XsError::Again) => continue,
                Err(e) => return Err(Self::xs_err("transaction", e)),
            }
        }
        Err(Self::xs_err("transaction", XsError::Again))
    }

    pub(super) fn read_backend_info(&mut self) -> Result<(), FrontendError> {
        let be = self.be_path.clone();
        let num = |s: &Self, k: &str| s.read_num(&format!("{be}/{k}"));
        let sectors = num(self, keys::SECTORS)?.ok_or_else(|| FrontendError::BadNode {
            path: format!("{be}/{}", keys::SECTORS),
        })?;
        let ss = num(self, keys::SECTOR_SIZE)?.unwrap_or(512);
        let pss = num(self, keys::PHYSICAL_SECTOR_SIZE)?.unwrap_or(ss);
        let info = num(self, keys::INFO)?.unwrap_or(0);
        let flush = num(self, keys::FEATURE_FLUSH_CACHE)?.unwrap_or(0) == 1;
        let barrier = num(self, keys::FEATURE_BARRIER)?.unwrap_or(0) == 1;
        let bad = |k: &str| FrontendError::BadNode {
            path: format!("{be}/{k}"),
        };
        self.info.sectors = sectors;
        self.info.sector_size = u32::try_from(ss).map_err(|_| bad(keys::SECTOR_SIZE))?;
        self.info.physical_sector_size =
            u32::try_from(pss).map_err(|_| bad(keys::PHYSICAL_SECTOR_SIZE))?;
        self.info.info = u32::try_from(info).map_err(|_| bad(keys::INFO))?;
        self.info.flush = flush;
        self.info.barrier = barrier;
        // The features the profile uses only when offered.
        let indirect = num(self, keys::FEATURE_MAX_INDIRECT_SEGMENTS)?.unwrap_or(0);
        self.info.max_indirect_segments = u32::try_from(
            indirect
                .min(u64::from(self.profile.max_indirect_segments))
                .min(u64::from(MAX_INDIRECT_SEGMENTS)),
        )
        .unwrap_or(0);
        self.info.persistent =
            self.profile.persistent && num(self, keys::FEATURE_PERSISTENT)?.unwrap_or(0) == 1;
        self.info.discard = num(self, keys::FEATURE_DISCARD)?.unwrap_or(0) == 1;
        if self.info.discard {
            self.info.discard_granularity =
                u32::try_from(num(self, keys::DISCARD_GRANULARITY)?.unwrap_or(0))
                    .map_err(|_| bad(keys::DISCARD_GRANULARITY))?;
            self.info.discard_alignment =
                u32::try_from(num(self, keys::DISCARD_ALIGNMENT)?.unwrap_or(0))
                    .map_err(|_| bad(keys::DISCARD_ALIGNMENT))?;
            self.info.discard_secure = num(self, keys::DISCARD_SECURE)?.unwrap_or(0) == 1;
        }
        Ok(())
    }

    /// Closes the connection the XenBus way: Closing, wait for the
    /// back-end's Closing (or Closed), Closed, wait for its Closed; then
    /// ends every grant, persistent ones included (which must succeed: the
    /// back-end has unmapped everything), closes the event channels and
    /// frees the frames.
    pub fn disconnect(&mut self) -> Result<(), FrontendError> {
        self.write_state(XenbusState::Closing)?;
        self.wait_backend(
            "back-end Closing",
            |s| matches!(s, XenbusState::Closing | XenbusState::Closed),
            |_| false,
        )?;
        self.write_state(XenbusState::Closed)?;
        self.wait_backend("back-end Closed", |s| s == XenbusState::Closed, |_| false)?;
        self.release_connection()
    }

    /// Ends every grant of the connection and frees its resources.
    pub(super) fn release_connection(&mut self) -> Result<(), FrontendError> {
        let mut result = Ok(());
        for p in std::mem::take(&mut self.orphans) {
            if let Err(e) = self.release_page(p) {
                result = Err(e);
            }
        }
        let manual: Vec<_> = self.manual.drain().collect();
        for (_, m) in manual {
            for p in m.pages.into_iter().flatten().chain(m.indirect) {
                if let Err(e) = self.release_page(p) {
                    result = Err(e);
                }
            }
        }
        let pooled = std::mem::take(&mut self.persistent);
        for p in pooled.all {
            if self.guest.grants.end_access(p.gref).is_err() {
                result = Err(FrontendError::GrantBusy { gref: p.gref });
            } else {
                self.pool.push(p.gfn);
            }
        }
        if let Some(c) = self.conn.take() {
            for mut q in c.queues {
                self.hub.clear_handler(self.fe_dom, q.port);
                self.hub.close(self.fe_dom, q.port);
                if let Some(ring) = q.ring.take() {
                    let _ = q.res.take_back(ring.into_mem());
                }
                for i in 0..q.ring_frames.len() {
                    let _ = q.res.unmap_frame_at(i);
                }
                let mut ended = true;
                for &g in &q.ring_grefs {
                    if self.guest.grants.end_access(g).is_err() {
                        ended = false;
                        result = Err(FrontendError::GrantBusy { gref: g });
                    }
                }
                if ended {
                    for &f in &q.ring_frames {
                        let _ = self.guest.memory.free_frame(f);
                    }
                }
            }
        }
        self.info.persistent = false;
        if result.is_ok() {
            for f in self.pool.drain(..) {
                let _ = self.guest.memory.free_frame(f);
            }
        }
        result
    }
}
