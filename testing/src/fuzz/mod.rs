//! Fuzz bodies, shared by the cargo-fuzz targets of `fuzz/` and by the
//! core's `tests/fuzz_seeds.rs`, which runs them over a fixed set of inputs
//! on every `cargo test`.
//!
//! - [`fuzz_ring`] plays a hostile front-end against a real
//!   [`Instance`](xbb::instance::Instance) over the fake host: it writes
//!   arbitrary bytes into the slots of the shared ring of `io/ring.h`,
//!   publishes any `req_prod`, kicks, completes store I/O in any order with
//!   any result, injects platform failures and moves the front-end through
//!   the states of `io/xenbus.h`.
//! - [`fuzz_request`] decodes arbitrary slot bytes as `io/blkif.h` requests
//!   of both ABIs and validates them against arbitrary limits.
//! - [`fuzz_instance`] plays a whole `vbd`'s life against a real instance:
//!   a hostile front-end writing any of its XenStore nodes and up to four
//!   rings, a toolstack that resizes, detaches and attaches, a platform
//!   that fails and completes in any order; it checks the contract after
//!   every operation (every request answered once, no response without a
//!   request, nothing held without a connection, no allocation on the
//!   I/O path).
//! - [`fuzz_xenstore`] feeds arbitrary front-end transport parameters
//!   (`io/blkif.h`, "Front-end Request Transport Parameters") to
//!   [`xbb::connect::read_frontend`].
//!
//! Each body asserts its invariants; a panic is a finding.

/// `impl $report { pub fn add }`: adds another report's counts (`sum`)
/// to this one's, keeps the larger of each `max` and either of each
/// `any`, to total what many inputs reached.
macro_rules! report_totals {
    ($report:ident: sum $($s:ident)*; max $($m:ident)*; any $($a:ident)*) => {
        impl $report {
            /// Adds what `r` reached to this total.
            pub fn add(&mut self, r: &$report) {
                $(self.$s += r.$s;)*
                $(self.$m = self.$m.max(r.$m);)*
                $(self.$a |= r.$a;)*
            }
        }
    };
}

mod builder;
mod front;
mod input;
mod instance;
mod request;
mod ring;
mod script;
mod xenstore;

pub use builder::{Body, Code, Header, Script};
pub use front::{Fault, RingsMemory};
pub use instance::{
    fuzz_instance, fuzz_instance_in, Completion, FeKey, FeValue, InstanceConfig, InstanceInput,
    InstanceMemory, InstanceReport, InstanceScript, DATA_PAGES, FIRST_DATA_GREF, MAX_OPS,
    MAX_RINGS,
};
pub use request::fuzz_request;
pub use ring::{fuzz_ring, fuzz_ring_in, RingMemory, RingReport};
pub use script::{Outcome, PushReq, RingConfig, RingInput, RingScript};
pub use xenstore::fuzz_xenstore;
