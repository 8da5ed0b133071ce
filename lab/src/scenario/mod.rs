//! Scenario files and the runner that plays them, the runner that plays them on a simulated Xen
//! host, and the report `xbb-lab` prints.
//!
//! A scenario (TOML, documented in `lab/scenarios/README.md`) sets
//! `hw.xbb.*` tunables, defines guests (front-end profile, store kind, sector
//! size, size, mode, `online`), and then runs steps in order: XenStore edits
//! of the front-end directory before it connects (`io/xenbus.h`
//! negotiation), the connection itself, workloads, hand-made requests of
//! `io/blkif.h` with their expected response status, raw ring slots and a
//! raw `req_prod` of `io/ring.h`, injected store I/O errors and grant-map
//! failures, the root file system's mount, disconnects and reconnects, and
//! expectations on the back-end's state, its `error` node and its
//! `dev.xbb.N.*` counters. The outcome of every expectation is collected,
//! never panicked on: a scenario passes iff none mismatched.
//!
//! Counter and tunable names are never spelled here: they come from
//! [`SYSCTLS`] and [`TUNABLES`], so the lab renders every row those tables
//! have.
//!
//! The pieces: [`schema`] (the file format, as serde reads it),
//! [`validate`](self) (what TOML cannot check), the runner (`run`, `steps`)
//! and the [`Report`] it fills.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};
use std::{eprintln, format, vec};

use serde::Deserialize;

use super::frontend::{
    read_region, run_crash_writes, run_workload_until, CrashCheck, CrashRound, CrashWorkload,
    FeatureRequest, Frontend, FrontendError, Journal, ManualRequest, Profile, SegmentGrant,
    SyncMode, Workload, WorkloadReport, MAX_INDIRECT_SEGMENTS,
};
use super::gnttab::MapFault;
use super::store::{CacheStats, IoFaults, StoreKind, StoreOptions, WriteCache};
use super::toolstack::{self, VbdSpec};
use super::world::{Restart, VbdConfig, VbdHandle, World};
use super::xenstore::WatchStats;
use xbb::abi::{
    BlkifResponse, BLKIF_DISCARD_SECURE, BLKIF_MAX_INDIRECT_PAGES_PER_REQUEST,
    BLKIF_MAX_SEGMENTS_PER_REQUEST, BLKIF_OP_DISCARD, BLKIF_OP_FLUSH_DISKCACHE, BLKIF_OP_INDIRECT,
    BLKIF_OP_READ, BLKIF_OP_RESERVED_1, BLKIF_OP_WRITE, BLKIF_OP_WRITE_BARRIER,
    BLKIF_RSP_EOPNOTSUPP, BLKIF_RSP_ERROR, BLKIF_RSP_OKAY,
};
use xbb::host::{DomId, GrantError, IoError, XenbusState};
use xbb::keys;
use xbb::stats::{Stat, Tunable, Tunables, SYSCTLS, TUNABLES, TUNABLE_PREFIX};

mod crash;
mod nbdkit;
mod report;
mod run;
pub mod schema;
mod steps;
mod validate;

use crash::*;
pub use nbdkit::nbd_unavailable;
use nbdkit::NbdKit;
pub use report::*;
pub use run::*;
pub use schema::*;
use steps::*;
use validate::*;

/// The scenario `xbb-lab` runs without arguments: twelve guests at once,
/// each with its own 64 MiB sparse image and a different front-end (one per
/// negotiated feature), a mixed workload, every byte verified.
pub const DEFAULT_SCENARIO: &str = include_str!("default.toml");
