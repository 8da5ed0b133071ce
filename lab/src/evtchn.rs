//! Interdomain event channels shared by every simulated domain, after
//! `event_channel.h`: `EVTCHNOP_alloc_unbound`, `EVTCHNOP_bind_interdomain`,
//! `EVTCHNOP_send`, `EVTCHNOP_close`.
//!
//! Ports are numbered per domain from 1 (port 0 is never valid). A notify
//! on one end runs the handler registered on the other end, in the
//! notifying thread, with no lock held; an event arriving before a handler
//! is set stays pending and is delivered when the handler is set.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};

use crate::store::locked;
use xbb::host::{DomId, EvtchnError, EvtchnPort};

/// What runs when an event arrives at a port.
pub type EventHandler = Box<dyn Fn() + Send + Sync>;

/// What a port is connected to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PortState {
    /// Allocated, offered to `remote_dom`, not bound yet.
    Unbound {
        /// The domain that may bind to it.
        remote_dom: DomId,
    },
    /// Connected to `remote_port` of `remote_dom`.
    Interdomain {
        /// The peer domain.
        remote_dom: DomId,
        /// The peer's port.
        remote_port: EvtchnPort,
    },
}

/// Counters and state of one port.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PortInfo {
    /// What the port is connected to.
    pub state: PortState,
    /// Events this end sent (successful notifies).
    pub sent: u64,
    /// Events delivered to this end by its peer.
    pub received: u64,
    /// An event arrived while no handler was set.
    pub pending: bool,
}

struct Port {
    info: PortInfo,
    handler: Option<Arc<dyn Fn() + Send + Sync>>,
}

#[derive(Default)]
struct Hub {
    ports: HashMap<(DomId, EvtchnPort), Port>,
    next_port: HashMap<DomId, EvtchnPort>,
}

impl Hub {
    fn alloc_port(&mut self, dom: DomId) -> EvtchnPort {
        let next = self.next_port.entry(dom).or_insert(1);
        let mut p = *next;
        while p == 0 || self.ports.contains_key(&(dom, p)) {
            p = p.wrapping_add(1);
        }
        *self.next_port.get_mut(&dom).expect("inserted above") = p.wrapping_add(1);
        p
    }
}

/// The event-channel hub of the simulated host. Cheap to clone (shared).
#[derive(Clone, Default)]
pub struct EventHub {
    inner: Arc<Mutex<Hub>>,
}

impl std::fmt::Debug for EventHub {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EventHub")
            .field("ports", &self.lock().ports.len())
            .finish()
    }
}

impl EventHub {
    /// An empty hub.
    pub fn new() -> EventHub {
        EventHub::default()
    }

    fn lock(&self) -> MutexGuard<'_, Hub> {
        locked(&self.inner)
    }

    /// `EVTCHNOP_alloc_unbound`: a new port of `dom` that `remote_dom` may bind.
    pub fn alloc_unbound(&self, dom: DomId, remote_dom: DomId) -> EvtchnPort {
        let mut h = self.lock();
        let p = h.alloc_port(dom);
        h.ports.insert(
            (dom, p),
            Port {
                info: PortInfo {
                    state: PortState::Unbound { remote_dom },
                    sent: 0,
                    received: 0,
                    pending: false,
                },
                handler: None,
            },
        );
        p
    }

    /// `EVTCHNOP_bind_interdomain`: binds a new port of `local_dom` to
    /// `remote_port` of `remote_dom`, which must be unbound and offered to
    /// `local_dom` ([`EvtchnError::BadPort`] otherwise).
    pub fn bind_interdomain(
        &self,
        local_dom: DomId,
        remote_dom: DomId,
        remote_port: EvtchnPort,
    ) -> Result<EvtchnPort, EvtchnError> {
        let mut h = self.lock();
        match h.ports.get(&(remote_dom, remote_port)) {
            Some(Port {
                info:
                    PortInfo {
                        state:
                            PortState::Unbound {
                                remote_dom: offered,
                            },
                        ..
                    },
                ..
            }) if *offered == local_dom => {}
            _ => return Err(EvtchnError::BadPort),
        }
        let p = h.alloc_port(local_dom);
        h.ports.insert(
            (local_dom, p),
            Port {
                info: PortInfo {
                    state: PortState::Interdomain {
                        remote_dom,
                        remote_port,
                    },
                    sent: 0,
                    received: 0,
                    pending: false,
                },
                handler: None,
            },
        );
        if let Some(r) = h.ports.get_mut(&(remote_dom, remote_port)) {
            r.info.state = PortState::Interdomain {
                remote_dom: local_dom,
                remote_port: p,
            };
        }
        Ok(p)
    }

    /// Sets the handler of `dom`'s `port`, replacing any previous one. A
    /// pending event is delivered to it at once (in this thread).
    pub fn set_handler(
        &self,
        dom: DomId,
        port: EvtchnPort,
        handler: EventHandler,
    ) -> Result<(), EvtchnError> {
        let handler: Arc<dyn Fn() + Send + Sync> = Arc::from(handler);
        let fire = {
            let mut h = self.lock();
            let p = h.ports.get_mut(&(dom, port)).ok_or(EvtchnError::BadPort)?;
            p.handler = Some(Arc::clone(&handler));
            std::mem::replace(&mut p.info.pending, false)
        };
        if fire {
            handler();
        }
        Ok(())
    }

    /// Removes the handler of `dom`'s `port`.
    pub fn clear_handler(&self, dom: DomId, port: EvtchnPort) {
        if let Some(p) = self.lock().ports.get_mut(&(dom, port)) {
            p.handler = None;
        }
    }

    /// `EVTCHNOP_send`: signals the peer of `dom`'s `port`, running its
    /// handler (outside the hub's lock). [`EvtchnError::BadPort`] when the
    /// port is not connected.
    pub fn notify(&self, dom: DomId, port: EvtchnPort) -> Result<(), EvtchnError> {
        let handler = {
            let mut h = self.lock();
            let (rd, rp) = match h.ports.get(&(dom, port)).map(|p| p.info.state) {
                Some(PortState::Interdomain {
                    remote_dom,
                    remote_port,
                }) => (remote_dom, remote_port),
                _ => return Err(EvtchnError::BadPort),
            };
            if let Some(p) = h.ports.get_mut(&(dom, port)) {
                p.info.sent += 1;
            }
            let peer = h.ports.get_mut(&(rd, rp)).ok_or(EvtchnError::General)?;
            peer.info.received += 1;
            match &peer.handler {
                Some(f) => Some(Arc::clone(f)),
                None => {
                    peer.info.pending = true;
                    None
                }
            }
        };
        if let Some(f) = handler {
            f();
        }
        Ok(())
    }

    /// `EVTCHNOP_close`: closes `dom`'s `port`. A connected peer goes back to
    /// unbound (offered to `dom`), as in Xen. Closing an unknown port does
    /// nothing.
    pub fn close(&self, dom: DomId, port: EvtchnPort) {
        let mut h = self.lock();
        let Some(p) = h.ports.remove(&(dom, port)) else {
            return;
        };
        if let PortState::Interdomain {
            remote_dom,
            remote_port,
        } = p.info.state
        {
            if let Some(peer) = h.ports.get_mut(&(remote_dom, remote_port)) {
                peer.info.state = PortState::Unbound { remote_dom: dom };
            }
        }
    }

    /// The state and counters of `dom`'s `port`; `None` when it does not exist.
    pub fn port_info(&self, dom: DomId, port: EvtchnPort) -> Option<PortInfo> {
        self.lock().ports.get(&(dom, port)).map(|p| p.info)
    }

    /// Events delivered to `dom`'s `port` (0 for an unknown port).
    pub fn received(&self, dom: DomId, port: EvtchnPort) -> u64 {
        self.port_info(dom, port).map_or(0, |i| i.received)
    }

    /// Events sent from `dom`'s `port` (0 for an unknown port).
    pub fn sent(&self, dom: DomId, port: EvtchnPort) -> u64 {
        self.port_info(dom, port).map_or(0, |i| i.sent)
    }

    /// How many ports `dom` has open.
    pub fn open_ports(&self, dom: DomId) -> usize {
        self.lock().ports.keys().filter(|(d, _)| *d == dom).count()
    }
}
