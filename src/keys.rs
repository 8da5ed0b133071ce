//! The XenStore node names of a virtual block device, in one table for
//! the core, the lab's toolstack and guests, xbb-serve and the test double.
//!
//! The names are those of Xen's `io/blkif.h` ("Backend Device
//! Identification", "Request Transport Parameters", "Features", "Backend
//! Device Properties", "Multiple hardware queues/rings") and `io/xenbus.h`
//! (`state`), plus the nodes libxl's toolstack and hotplug scripts write.
//! Each node lives in the back-end's directory (`backend/vbd/<dom>/<dev>`),
//! the front-end's (`device/vbd/<dev>` of the guest), or, for a
//! multi-queue front-end, a [`QUEUE_DIR_PREFIX`]`<n>` directory below it.

/// Both ends: the `enum xenbus_state` of that end, in decimal.
pub const STATE: &str = "state";

// The toolstack's nodes in the back-end's directory.

/// The front-end's directory.
pub const FRONTEND: &str = "frontend";
/// The front-end's domain id.
pub const FRONTEND_ID: &str = "frontend-id";
/// The medium: a device node or file path.
pub const PARAMS: &str = "params";
/// The medium as Linux's hotplug script resolved it; read when `params` is
/// absent.
pub const PHYSICAL_DEVICE_PATH: &str = "physical-device-path";
/// The back-end type: `phy`, `file`, ...
pub const TYPE: &str = "type";
/// `r`, `w` or `w!`.
pub const MODE: &str = "mode";
/// `1`: the back-end survives its front-end (a guest reboot).
pub const ONLINE: &str = "online";
/// `0`: discard must not be offered.
pub const DISCARD_ENABLE: &str = "discard-enable";
/// `1`: O_DIRECT on the medium is safe (libxl's `direct-io-safe` disk
/// option); a back-end may then bypass its page cache for an image file.
pub const DIRECT_IO_SAFE: &str = "direct-io-safe";
/// The hotplug script the toolstack runs, if any.
pub const SCRIPT: &str = "script";
/// `connected` once that script has run.
pub const HOTPLUG_STATUS: &str = "hotplug-status";
/// The value of [`HOTPLUG_STATUS`] once the script has run.
pub const HOTPLUG_CONNECTED: &str = "connected";
/// `disk` (or `cdrom`), both ends.
pub const DEVICE_TYPE: &str = "device-type";

// The toolstack's nodes in the front-end's directory.

/// The back-end's directory.
pub const BACKEND: &str = "backend";
/// The back-end's domain id.
pub const BACKEND_ID: &str = "backend-id";
/// The device number the guest sees (`xvda` is 51712).
pub const VIRTUAL_DEVICE: &str = "virtual-device";

// The back-end's offer, before the front-end connects.

/// The largest ring the back-end maps, as log2(pages).
pub const MAX_RING_PAGE_ORDER: &str = "max-ring-page-order";
/// The same in pages (the older multi-page scheme).
pub const MAX_RING_PAGES: &str = "max-ring-pages";
/// The most queues (rings) the back-end serves.
pub const MULTI_QUEUE_MAX_QUEUES: &str = "multi-queue-max-queues";
/// Both ends: grants are kept mapped across requests.
pub const FEATURE_PERSISTENT: &str = "feature-persistent";

// The front-end's transport parameters.

/// The ring's size as log2(pages).
pub const RING_PAGE_ORDER: &str = "ring-page-order";
/// The ring's size in pages (the older scheme).
pub const NUM_RING_PAGES: &str = "num-ring-pages";
/// The queues the front-end uses.
pub const MULTI_QUEUE_NUM_QUEUES: &str = "multi-queue-num-queues";
/// The directory of queue `n` is this prefix followed by `n`.
pub const QUEUE_DIR_PREFIX: &str = "queue-";
/// A one-page ring's grant reference.
pub const RING_REF: &str = "ring-ref";
/// The event channel's port.
pub const EVENT_CHANNEL: &str = "event-channel";
/// The request layout (`XEN_IO_PROTO_ABI_*`).
pub const PROTOCOL: &str = "protocol";

/// Builds a table of `<prefix>ring-ref<N>` node names, one per page the
/// largest ring can have.
macro_rules! ring_ref_keys {
    ($prefix:literal) => {
        ring_ref_keys!($prefix; 0 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15
            16 17 18 19 20 21 22 23 24 25 26 27 28 29 30 31)
    };
    ($prefix:literal; $($i:literal)*) => {
        [$(concat!($prefix, "ring-ref", $i)),*]
    };
}

/// The grant references of an N-page ring: `ring-ref0` .. `ring-ref<N-1>`
/// (also written for a one-page ring by some front-ends).
pub const RING_REFS: [&str; 32] = ring_ref_keys!("");

/// The names errors give [`RING_REFS`] read below a queue's directory.
pub const QUEUE_RING_REFS: [&str; 32] = ring_ref_keys!("queue/");

// One name per page the largest ring can have, and no more.
const _: () = assert!(RING_REFS.len() == crate::abi::MAX_RING_PAGES as usize);

// The back-end's device properties and features, published with Connected.

/// The medium's size in 512-byte sectors.
pub const SECTORS: &str = "sectors";
/// The logical sector size in bytes.
pub const SECTOR_SIZE: &str = "sector-size";
/// The physical sector size in bytes.
pub const PHYSICAL_SECTOR_SIZE: &str = "physical-sector-size";
/// `VDISK_*` flags (read-only, removable, CD-ROM).
pub const INFO: &str = "info";
/// `BLKIF_OP_FLUSH_DISKCACHE` is served.
pub const FEATURE_FLUSH_CACHE: &str = "feature-flush-cache";
/// `BLKIF_OP_WRITE_BARRIER` is served.
pub const FEATURE_BARRIER: &str = "feature-barrier";
/// The most segments of a `BLKIF_OP_INDIRECT` request.
pub const FEATURE_MAX_INDIRECT_SEGMENTS: &str = "feature-max-indirect-segments";
/// `BLKIF_OP_DISCARD` is served.
pub const FEATURE_DISCARD: &str = "feature-discard";
/// The size in bytes of a discard extent.
pub const DISCARD_GRANULARITY: &str = "discard-granularity";
/// The offset in bytes of the first whole extent.
pub const DISCARD_ALIGNMENT: &str = "discard-alignment";
/// `BLKIF_DISCARD_SECURE` is honoured.
pub const DISCARD_SECURE: &str = "discard-secure";

/// The per-device error node, below `error/<back-end directory>/`.
pub const ERROR: &str = "error";
