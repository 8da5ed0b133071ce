//! xbb-testing: the one test double of xbb and the fuzz bodies, for every
//! integration test and fuzz target (not a platform).
//!
//! - [`host::FakeHost`]: every trait of [`xbb::host`] in memory, with a
//!   contract log and failures to inject.
//! - [`xenstore::XsMap`]: the XenStore alone, transactions included.
//! - [`guest`]: requests over granted pages and the responses they get.
//! - [`rng::XorShift`]: the deterministic generator of randomised tests.
//! - [`alloc::Counting`]: the counting allocator of the "no allocation on
//!   the I/O path" rule.
//! - [`cc::check_c`]: the system C compiler, to hold declarations against
//!   C headers.
//! - [`cost`]: the workload of the core-cost benchmark
//!   (`benches/core_cost.rs`), over the fake host as a null platform.
//! - [`fuzz`]: the bodies of the cargo-fuzz targets in `fuzz/`, which the
//!   core's tests also run over fixed seeds.
//!
//! The core's own unit tests cannot use this crate (it depends on the
//! core: its types would be another copy's); integration tests and fuzz
//! targets do.

#![deny(unsafe_code)]
#![deny(missing_docs)]
#![deny(clippy::undocumented_unsafe_blocks)]

#[allow(unsafe_code)]
pub mod alloc;
pub mod cc;
mod config;
pub mod cost;
pub mod fuzz;
pub mod guest;
pub mod host;
pub mod rng;
pub mod xenstore;

pub use host::{FakeConfig, FakeHost, Faults, BAD_GREF, BE_PATH, FE_DOM, FE_PATH, FE_PORT};
pub use xenstore::XsMap;
