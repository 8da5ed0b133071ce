//! xbb: the Xen block back-end ("blkback") for FreeBSD, as a portable Rust
//! core.
//!
//! This crate is the core: `#![no_std]` + `alloc`, no floating point, and
//! `unsafe` only in [`shmem`]. It serves the block protocol of Xen's
//! `io/blkif.h` over the shared ring of `io/ring.h`, negotiated over
//! XenStore as `io/xenbus.h` describes. Platforms implement the traits of
//! [`host`] and drive an [`instance::Instance`] per `vbd`.
//!
//! The platforms live in the workspace's other crates: `xbb-lab` (the
//! simulated Xen host and the `xbb-lab` program), `xbb-serve` (a user-space
//! back-end in a real dom0), `xbb-freebsd` (the kernel module's Rust side),
//! with `xbb-ustore` (user-space file and device stores) and `xbb-testing`
//! (the one fake host and the fuzz bodies) beside them.

#![no_std]
#![deny(unsafe_code)]
#![deny(missing_docs)]
#![deny(clippy::undocumented_unsafe_blocks)]

extern crate alloc;

pub mod abi;
pub mod coalesce;
pub mod connect;
pub mod grants;
pub mod handoff;
pub mod host;
pub mod instance;
pub mod journal;
pub mod keys;
pub mod kva;
pub mod negotiate;
pub mod queue;
pub mod request;
pub mod ring;
pub mod shmem;
pub mod stats;
pub mod units;

/// The version of the core, as its package names it; the programs built on
/// it print it with their own (`--version`).
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
