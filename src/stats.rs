//! The tables of every per-instance sysctl node and every loader tunable.
//!
//! FreeBSD renders [`SYSCTLS`] as `dev.xbb.N.<name>` nodes and [`TUNABLES`] as
//! `hw.xbb.<name>` loader tunables; `xbb-lab` renders the same tables in its
//! report and JSON. Nobody else spells these names: adding a row here is all
//! it takes for a counter or a limit to appear everywhere.
//!
//! The first fourteen sysctl names are those of FreeBSD's C back-end
//! (`sys/dev/xen/blkback`), so scripts written for `dev.xbbd.N` keep working.

use core::sync::atomic::{AtomicU64, Ordering};

/// The prefix of every loader tunable.
pub const TUNABLE_PREFIX: &str = "hw.xbb.";

/// What kind of value a sysctl node carries.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SysctlKind {
    /// A negotiated or configured limit; read-only, fixed while connected.
    Limit,
    /// An event counter; read-only, only grows while connected.
    Counter,
    /// A behaviour switch; read-write.
    Switch,
    /// A current level (e.g. grants mapped now); read-only, goes up and down.
    Gauge,
}

macro_rules! sysctl_table {
    ($( $variant:ident => $name:literal, $kind:ident, $descr:literal; )*) => {
        /// Every per-instance sysctl node.
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
        #[repr(usize)]
        pub enum Stat {
            $(
                #[doc = $descr]
                $variant,
            )*
        }

        /// The table of sysctl nodes, in [`Stat`] order.
        pub static SYSCTLS: &[SysctlDesc] = &[
            $( SysctlDesc { stat: Stat::$variant, name: $name, kind: SysctlKind::$kind, descr: $descr }, )*
        ];

        impl Stat {
            /// The number of sysctl nodes: every row of the table, so that
            /// a row added last is counted.
            pub const COUNT: usize = [$( Stat::$variant ),*].len();
        }
    };
}

/// One row of [`SYSCTLS`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SysctlDesc {
    /// Which value.
    pub stat: Stat,
    /// The sysctl leaf name: `dev.xbb.N.<name>`.
    pub name: &'static str,
    /// Limit, counter or switch.
    pub kind: SysctlKind,
    /// The description shown by `sysctl -d`.
    pub descr: &'static str,
}

sysctl_table! {
    MaxRequests => "max_requests", Limit,
        "Maximum outstanding requests (negotiated)";
    MaxRequestSegments => "max_request_segments", Limit,
        "Maximum number of segments per request (negotiated)";
    MaxRequestSize => "max_request_size", Limit,
        "Maximum size in bytes of one dispatched I/O";
    RingPages => "ring_pages", Limit,
        "Number of pages of the shared request ring (negotiated)";
    ReqsReceived => "reqs_received", Counter,
        "Requests received from the front-end";
    ReqsCompleted => "reqs_completed", Counter,
        "Requests completed: responses made visible to the front-end";
    ReqsQueuedForCompletion => "reqs_queued_for_completion", Counter,
        "Requests whose response was queued on the ring";
    ReqsCompletedWithError => "reqs_completed_with_error", Counter,
        "Requests completed with an error status";
    ForcedDispatch => "forced_dispatch", Counter,
        "I/Os dispatched because no further request could join them yet";
    NormalDispatch => "normal_dispatch", Counter,
        "I/Os dispatched because the next request did not continue them";
    TotalDispatch => "total_dispatch", Counter,
        "I/Os dispatched to the back-end store";
    KvaShortages => "kva_shortages", Counter,
        "Times the mapping window was too full to dispatch";
    RequestShortages => "request_shortages", Counter,
        "Times the request pool was empty";
    NoCoalesceReqs => "no_coalesce_reqs", Switch,
        "Do not coalesce contiguous requests (1) or do (0)";
    RingOrder => "ring_order", Limit,
        "Negotiated ring page order";
    ReqsRefused => "reqs_refused", Counter,
        "Requests refused by validation without any I/O";
    ReqsCoalesced => "reqs_coalesced", Counter,
        "Requests that joined an earlier request's I/O";
    FlushReqs => "flush_reqs", Counter,
        "Cache-flush and barrier requests received";
    BytesRead => "bytes_read", Counter,
        "Bytes read from the back-end store for the front-end";
    BytesWritten => "bytes_written", Counter,
        "Bytes written to the back-end store for the front-end";
    GrantMapFailures => "grant_map_failures", Counter,
        "Grant references the hypervisor refused to map";
    NumQueues => "num_queues", Limit,
        "Rings (queues) of the connection (negotiated)";
    MaxIndirectSegments => "max_indirect_segments", Limit,
        "Segments per indirect request (negotiated; 0: not offered)";
    PersistentGrants => "persistent_grants", Limit,
        "Persistent grants in use on this connection (1) or not (0)";
    MaxPersistentGrants => "max_persistent_grants", Limit,
        "Persistent grants kept mapped per queue at most";
    Discard => "discard", Limit,
        "Discard offered to the front-end (1) or not (0)";
    MediumSectors => "sectors", Limit,
        "Size of the medium in 512-byte sectors, as published";
    IndirectReqs => "indirect_reqs", Counter,
        "Indirect requests received";
    DiscardReqs => "discard_reqs", Counter,
        "Discard requests received";
    PersistentGrantHits => "persistent_grant_hits", Counter,
        "Segments served by an already mapped persistent grant";
    PersistentGrantsMapped => "persistent_grants_mapped", Gauge,
        "Persistent grants mapped now";
    PersistentGrantsPurged => "persistent_grants_purged", Counter,
        "Persistent grants unmapped as least recently used or idle";
    GrantsRefused => "grants_refused", Counter,
        "Requests refused for naming a grant twice or one already in flight";
    SpuriousEvents => "spurious_events", Counter,
        "Event-channel kicks that found no new request";
    DelayedEois => "delayed_eois", Counter,
        "Times the event channel was re-enabled late to throttle spurious kicks";
    Resizes => "resizes", Counter,
        "Medium size changes published to the front-end";
    ReqsReplayed => "reqs_replayed", Counter,
        "Requests a previous back-end consumed and never answered, served again after taking over its ring";
}

impl SysctlDesc {
    /// Whether the node is kept per queue (`dev.xbb.N.queue.Q.<name>`) and
    /// summed for the instance: counters and gauges.
    pub fn per_queue(&self) -> bool {
        matches!(self.kind, SysctlKind::Counter | SysctlKind::Gauge)
    }
}

impl Stat {
    /// The node's table row.
    pub fn desc(self) -> &'static SysctlDesc {
        &SYSCTLS[self as usize]
    }

    /// Looks a node up by its leaf name.
    pub fn by_name(name: &str) -> Option<Stat> {
        SYSCTLS.iter().find(|d| d.name == name).map(|d| d.stat)
    }
}

/// The values of one instance's sysctl nodes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Stats {
    values: [u64; Stat::COUNT],
}

impl Default for Stats {
    fn default() -> Self {
        Stats {
            values: [0; Stat::COUNT],
        }
    }
}

impl Stats {
    /// Reads one value.
    pub fn get(&self, stat: Stat) -> u64 {
        self.values[stat as usize]
    }

    /// Sets one value (limits at connect, switches from sysctl).
    pub fn set(&mut self, stat: Stat, value: u64) {
        self.values[stat as usize] = value;
    }

    /// Adds to a counter, saturating.
    pub fn add(&mut self, stat: Stat, n: u64) {
        let v = &mut self.values[stat as usize];
        *v = v.saturating_add(n);
    }

    /// Adds one to a counter.
    pub fn inc(&mut self, stat: Stat) {
        self.add(stat, 1);
    }

    /// Every node with its value, in table order.
    pub fn iter(&self) -> impl Iterator<Item = (&'static SysctlDesc, u64)> + '_ {
        SYSCTLS.iter().map(move |d| (d, self.get(d.stat)))
    }

    /// Zeroes every counter and gauge (a new connection), keeping limits
    /// and switches.
    pub fn reset_counters(&mut self) {
        for d in SYSCTLS {
            if d.per_queue() {
                self.values[d.stat as usize] = 0;
            }
        }
    }

    /// Adds `other`'s counters and gauges to these (summing the queues of
    /// an instance).
    pub fn accumulate(&mut self, other: &Stats) {
        for d in SYSCTLS {
            if d.per_queue() {
                self.add(d.stat, other.get(d.stat));
            }
        }
    }
}

/// The counters and gauges of one queue as the queue's context writes
/// them and anyone reads them (sysctl handlers, `SIGUSR1` tables, the lab's
/// snapshots) while the queue runs: one atomic per node, written by that
/// context alone.
///
/// A single writer needs no read-modify-write: every update is a relaxed
/// load and a relaxed store (plain moves on x86, no `lock` prefix), and a
/// reader sees each value whole, never torn, if a little late.
#[derive(Debug)]
pub struct QueueCounters {
    values: [AtomicU64; Stat::COUNT],
}

impl Default for QueueCounters {
    fn default() -> Self {
        QueueCounters {
            values: [const { AtomicU64::new(0) }; Stat::COUNT],
        }
    }
}

impl QueueCounters {
    /// Reads one value.
    #[inline]
    pub fn get(&self, stat: Stat) -> u64 {
        self.values[stat as usize].load(Ordering::Relaxed)
    }

    /// Sets one value (a gauge). Only the queue's context writes.
    #[inline]
    pub fn set(&self, stat: Stat, value: u64) {
        self.values[stat as usize].store(value, Ordering::Relaxed);
    }

    /// Adds to a counter, saturating. Only the queue's context writes, so
    /// a load and a store suffice.
    #[inline]
    pub fn add(&self, stat: Stat, n: u64) {
        let v = &self.values[stat as usize];
        v.store(
            v.load(Ordering::Relaxed).saturating_add(n),
            Ordering::Relaxed,
        );
    }

    /// Adds one to a counter.
    #[inline]
    pub fn inc(&self, stat: Stat) {
        self.add(stat, 1);
    }

    /// Zeroes every value: a new connection, before its queue runs.
    pub fn reset(&self) {
        for v in &self.values {
            v.store(0, Ordering::Relaxed);
        }
    }

    /// The counters and gauges now, as a [`Stats`] (limits and switches 0).
    pub fn snapshot(&self) -> Stats {
        let mut s = Stats::default();
        for d in SYSCTLS.iter().filter(|d| d.per_queue()) {
            s.set(d.stat, self.get(d.stat));
        }
        s
    }
}

macro_rules! tunable_table {
    ($( $variant:ident => $name:literal, $default:expr, $min:expr, $max:expr, $descr:literal; )*) => {
        /// Every loader tunable.
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
        #[repr(usize)]
        pub enum Tunable {
            $(
                #[doc = $descr]
                $variant,
            )*
        }

        /// The table of loader tunables, in [`Tunable`] order.
        pub static TUNABLES: &[TunableDesc] = &[
            $( TunableDesc { tunable: Tunable::$variant, name: $name, default: $default, min: $min, max: $max, descr: $descr }, )*
        ];
    };
}

/// One row of [`TUNABLES`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TunableDesc {
    /// Which tunable.
    pub tunable: Tunable,
    /// The leaf name: the loader tunable is `hw.xbb.<name>`.
    pub name: &'static str,
    /// Value when not set.
    pub default: u64,
    /// Smallest accepted value.
    pub min: u64,
    /// Largest accepted value.
    pub max: u64,
    /// Description for the man page and `kenv`.
    pub descr: &'static str,
}

tunable_table! {
    MaxRingPageOrder => "max_ring_page_order", 5, 0, 5,
        "Largest shared ring offered to front-ends, as log2(pages)";
    MaxRequests => "max_requests", 1024, 1, 1024,
        "Largest number of requests in service at once per ring";
    MaxRequestSize => "max_request_size", 1 << 20, 45056, 1 << 24,
        "Largest I/O, in bytes, that coalescing may build";
    NoCoalesceReqs => "no_coalesce_reqs", 0, 0, 1,
        "Default of dev.xbb.N.no_coalesce_reqs: 1 turns coalescing off";
    RequestsPerPass => "requests_per_pass", 256, 1, 65536,
        "Requests consumed in one pass before yielding the taskqueue";
    KvaPages => "kva_pages", 0, 0, 1 << 20,
        "Pages of each queue's mapping window; 0 sizes it for every request, up to 64 MiB";
    MaxIndirectSegments => "max_indirect_segments", 256, 0, 4096,
        "Segments per indirect request offered; 0 turns indirect requests off";
    MaxPersistentGrants => "max_persistent_grants", 1056, 0, 65536,
        "Persistent grants kept mapped per queue; 0 turns persistent grants off";
    PersistentGrantIdleMs => "persistent_grant_idle_ms", 60000, 1, 86_400_000,
        "Milliseconds after which an unused persistent grant is unmapped";
    MaxQueues => "max_queues", 4, 1, 16,
        "Rings (queues) offered to multi-queue front-ends";
    Bounce => "bounce", 1, 0, 2,
        "Device I/O through bounce buffers: 0 never, 1 when the device rests on a Xen front-end disk (xbd), 2 always";
}

/// Why a tunable was not set.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TunableError {
    /// No tunable of that name.
    Unknown,
    /// Outside `min..=max`.
    OutOfRange,
}

/// The values of every tunable.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Tunables {
    values: [u64; TUNABLE_COUNT],
}

const TUNABLE_COUNT: usize = Tunable::Bounce as usize + 1;

impl Default for Tunables {
    fn default() -> Self {
        let mut values = [0; TUNABLE_COUNT];
        for d in TUNABLES {
            values[d.tunable as usize] = d.default;
        }
        Tunables { values }
    }
}

impl Tunable {
    /// The tunable's table row.
    pub fn desc(self) -> &'static TunableDesc {
        &TUNABLES[self as usize]
    }

    /// Looks a tunable up by its leaf name, or by its full `hw.xbb.` name.
    pub fn by_name(name: &str) -> Option<Tunable> {
        let leaf = name.strip_prefix(TUNABLE_PREFIX).unwrap_or(name);
        TUNABLES.iter().find(|d| d.name == leaf).map(|d| d.tunable)
    }
}

impl Tunables {
    /// One tunable's value.
    pub fn get(&self, t: Tunable) -> u64 {
        self.values[t as usize]
    }

    /// Sets a tunable, refusing values outside its bounds.
    pub fn set(&mut self, t: Tunable, value: u64) -> Result<(), TunableError> {
        let d = t.desc();
        if value < d.min || value > d.max {
            return Err(TunableError::OutOfRange);
        }
        self.values[t as usize] = value;
        Ok(())
    }

    /// Sets a tunable by name (leaf or `hw.xbb.` name).
    pub fn set_by_name(&mut self, name: &str, value: u64) -> Result<(), TunableError> {
        let t = Tunable::by_name(name).ok_or(TunableError::Unknown)?;
        self.set(t, value)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_are_in_enum_order_with_unique_names() {
        for (i, d) in SYSCTLS.iter().enumerate() {
            assert_eq!(d.stat as usize, i);
            assert_eq!(SYSCTLS.iter().filter(|o| o.name == d.name).count(), 1);
            assert!(!d.descr.is_empty());
        }
        assert_eq!(SYSCTLS.len(), Stat::COUNT);
        for (i, d) in TUNABLES.iter().enumerate() {
            assert_eq!(d.tunable as usize, i);
            assert!(d.min <= d.default && d.default <= d.max, "{}", d.name);
        }
    }

    #[test]
    fn freebsd_names_are_present() {
        for n in [
            "max_requests",
            "max_request_segments",
            "max_request_size",
            "ring_pages",
            "reqs_received",
            "reqs_completed",
            "reqs_queued_for_completion",
            "reqs_completed_with_error",
            "forced_dispatch",
            "normal_dispatch",
            "total_dispatch",
            "kva_shortages",
            "request_shortages",
            "no_coalesce_reqs",
        ] {
            assert!(Stat::by_name(n).is_some(), "{n}");
        }
    }

    #[test]
    fn tunable_bounds_are_enforced() {
        let mut t = Tunables::default();
        assert_eq!(t.get(Tunable::MaxRingPageOrder), 5);
        assert_eq!(
            t.set_by_name("hw.xbb.max_ring_page_order", 6),
            Err(TunableError::OutOfRange)
        );
        assert_eq!(t.set_by_name("max_ring_page_order", 2), Ok(()));
        assert_eq!(t.get(Tunable::MaxRingPageOrder), 2);
        assert_eq!(t.set_by_name("hw.xbb.nope", 1), Err(TunableError::Unknown));
        assert_eq!(
            t.set(Tunable::MaxRequestSize, 4096),
            Err(TunableError::OutOfRange)
        );
    }

    #[test]
    fn queue_counters_saturate_and_snapshot_only_per_queue_nodes() {
        let c = QueueCounters::default();
        c.set(Stat::ReqsReceived, u64::MAX - 1);
        c.add(Stat::ReqsReceived, 5);
        c.inc(Stat::BytesRead);
        c.set(Stat::MaxRequests, 9);
        let s = c.snapshot();
        assert_eq!(s.get(Stat::ReqsReceived), u64::MAX);
        assert_eq!(s.get(Stat::BytesRead), 1);
        assert_eq!(s.get(Stat::MaxRequests), 0, "limits are not per queue");
        c.reset();
        assert_eq!(c.get(Stat::ReqsReceived), 0);
    }

    #[test]
    fn counters_saturate_and_reset_keeps_switches() {
        let mut s = Stats::default();
        s.set(Stat::ReqsReceived, u64::MAX);
        s.inc(Stat::ReqsReceived);
        assert_eq!(s.get(Stat::ReqsReceived), u64::MAX);
        s.set(Stat::NoCoalesceReqs, 1);
        s.reset_counters();
        assert_eq!(s.get(Stat::ReqsReceived), 0);
        assert_eq!(s.get(Stat::NoCoalesceReqs), 1);
    }
}
