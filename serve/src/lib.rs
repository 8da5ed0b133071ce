//! xbb-serve: the dom0 user-space platform: xbb as a back-end process in a real Xen
//! host, like QEMU's `qdisk`, in any dom0 (or driver domain) that has
//! `/dev/xen/gntdev` and `/dev/xen/evtchn`.
//!
//! [`host::XenHost`] implements the core's traits ([`xbb::host`]) over
//! Xen's own libraries — libxengnttab, libxenevtchn, libxenstore — wrapped
//! in [`ffi`], the only `unsafe` here. [`window`] keeps the data window's
//! table (gntdev maps a batch of grants as one contiguous range, wherever
//! it likes), [`bounce`] the data window of copy mode (memory of this
//! process that grants are copied into and out of), [`fault`] the report of
//! a fatal signal with every live mapping of guest memory, [`config`] what
//! the service is told (file and command line), and [`serve`] is
//! the service the `xbb-serve` program runs:
//! claim each vbd of `backend/vbd`, serve it from its own thread, print the
//! `dev.xbb.N` tables, detach everything on a signal.

#![deny(unsafe_code)]
#![deny(missing_docs)]
#![deny(clippy::undocumented_unsafe_blocks)]

pub mod bounce;
pub mod config;
pub mod fault;
pub mod ffi;
pub mod host;
pub mod serve;
pub mod window;
