//! xbb: the Xen block back-end ("blkback") for FreeBSD, as a portable Rust
//! core plus the platforms that run it.
//!
//! The core (everything not behind a feature) is `#![no_std]` + `alloc`,
//! uses no floating point, and has `unsafe` only in [`shmem`]. It serves the
//! block protocol of Xen's `io/blkif.h` over the shared ring of `io/ring.h`,
//! negotiated over XenStore as `io/xenbus.h` describes. Platforms implement
//! the traits of [`host`] and drive an [`instance::Instance`] per `vbd`.
//!
//! With the `sim` feature the crate also carries `sim`, a simulated Xen
//! host (guest memory, grant table, event channels, XenStore, toolstack,
//! guest front-ends) used by `xbb-lab` and the tests. With the `xen`
//! feature it carries `xen`, the platform of a user-space back-end in a
//! real dom0 (the `xbb-serve` program) over Xen's libxengnttab,
//! libxenevtchn and libxenstore. Both serve I/O from `ustore`, the
//! user-space file and device stores.

#![no_std]
#![deny(unsafe_code)]
#![deny(missing_docs)]
#![deny(clippy::undocumented_unsafe_blocks)]

extern crate alloc;
#[cfg(feature = "std")]
extern crate std;

pub mod abi;
pub mod coalesce;
pub mod connect;
pub mod fuzzing;
pub mod host;
pub mod instance;
pub mod kva;
pub mod pgrant;
pub mod request;
pub mod ring;
pub mod shmem;
pub mod stats;

#[cfg(feature = "sim")]
pub mod sim;
#[cfg(feature = "ustore")]
pub mod ustore;
#[cfg(feature = "xen")]
pub mod xen;
