//! A hostile front-end against a real instance: `xbb_testing::fuzz::fuzz_ring_in`.

#![no_main]

use std::sync::Mutex;

use libfuzzer_sys::fuzz_target;
use xbb_testing::fuzz::{fuzz_ring_in, RingMemory};

/// Shared memory can only be leaked outside a platform: one ring's worth
/// is reused by every input.
static MEM: Mutex<Option<RingMemory>> = Mutex::new(None);

fuzz_target!(|data: &[u8]| {
    let mut guard = MEM.lock().unwrap_or_else(|e| e.into_inner());
    let mem = guard.get_or_insert_with(|| RingMemory::new().expect("ring memory"));
    fuzz_ring_in(mem, data);
});
